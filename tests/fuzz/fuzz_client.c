/*
 * fuzz_client -- libFuzzer target for librelayclient's handling of what
 * relayd answers (src/client/relayclient.c: "ok N", "err L REASON MSG",
 * line 0 refusals, junk, long lines, a close at any point).
 *
 * Each input is split at the first 0xff byte: the part before it picks how
 * many rows the client sends (and whether some carry a table); the rest is
 * written back as relayd's replies, then the server side closes. The client
 * runs with reconnect off, so the loss is final. Checks: every sequence
 * number is resolved at most once and only if it was sent, events agree
 * with the stats, relay_client_acked never passes what was sent, and the
 * client ends in a final error or with everything resolved.
 */
#include "relayclient.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int lfd = -1;
static char path[108];

struct seen {
    unsigned char st[300];
    uint64_t sent, acked, refused;
};

static void on_event(relay_client *c, const struct relay_event *ev, void *user)
{
    struct seen *s = user;
    (void)c;
    if (ev->type != RELAY_EV_ACKED && ev->type != RELAY_EV_REFUSED)
        return;
    if (ev->first_seq < 1 || ev->first_seq > ev->last_seq || ev->last_seq > s->sent)
        abort();
    if (ev->type == RELAY_EV_REFUSED && (ev->first_seq != ev->last_seq || !ev->reason ||
                                         !ev->message))
        abort();
    for (uint64_t q = ev->first_seq; q <= ev->last_seq; q++) {
        if (s->st[q])
            abort();                         /* resolved twice */
        s->st[q] = ev->type == RELAY_EV_ACKED ? 1 : 2;
    }
    if (ev->type == RELAY_EV_ACKED)
        s->acked += ev->last_seq - ev->first_seq + 1;
    else
        s->refused++;
}

static void remove_socket(void)
{
    unlink(path);
}

static void listen_once(void)
{
    snprintf(path, sizeof path, "/tmp/fuzz_client.%d.sock", (int)getpid());
    unlink(path);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) + 1);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 4))
        abort();
    atexit(remove_socket);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (lfd < 0)
        listen_once();
    const uint8_t *cut = memchr(data, 0xff, size);
    size_t head = cut ? (size_t)(cut - data) : 0;
    const uint8_t *reply = cut ? cut + 1 : data;
    size_t rlen = size - (size_t)(reply - data);
    unsigned rows = head ? data[0] % 250 + 1 : 8;

    static struct seen s;
    memset(&s, 0, sizeof s);
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.reconnect = 0;
    o.max_inflight_rows = 64;
    o.callback = on_event;
    o.user = &s;
    relay_client *c;
    if (relay_client_open(&c, path, &o, NULL, 0) != 0)
        abort();
    int sfd = accept(lfd, NULL, NULL);
    if (sfd < 0)
        abort();
    char row[64];
    for (unsigned i = 0; i < rows; i++) {
        int n = snprintf(row, sizeof row, "{\"i\":%u}", i);
        const char *table = head > 1 && (data[1 + i % (head - 1)] & 1) ? "t" : NULL;
        int64_t seq = relay_send(c, table, row, (size_t)n);
        if (seq == RELAY_EAGAIN)
            break;                            /* the window: fine, stop sending */
        if (seq < 0)
            break;                            /* a final error from replies read so far */
        if ((uint64_t)seq != s.sent + 1)
            abort();
        s.sent++;
    }
    /* relayd's side: drain what the client wrote, answer with the input, close */
    char sink[65536];
    while (recv(sfd, sink, sizeof sink, MSG_DONTWAIT) > 0)
        ;
    size_t off = 0;
    while (off < rlen) {
        ssize_t w = send(sfd, reply + off, rlen - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
        relay_client_process(c);
    }
    close(sfd);
    int rc = relay_flush(c, 2000);
    struct relay_client_stats st;
    relay_client_stats(c, &st);
    if (st.acked != s.acked || st.refused != s.refused || st.sent != s.sent)
        abort();
    if (relay_client_acked(c) > s.sent)
        abort();
    if (rc == RELAY_OK && s.acked + s.refused != s.sent)
        abort();                              /* "flushed" with rows unresolved */
    if (rc != RELAY_OK && rc != RELAY_ELOST && rc != RELAY_EDENIED && rc != RELAY_EBUSY &&
        rc != RELAY_EPROTO)
        abort();
    (void)relay_strerror(rc);
    (void)relay_client_errmsg(c);
    relay_client_close(c);
    return 0;
}
