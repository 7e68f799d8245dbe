/*
 * client_check.c -- drives librelayclient against a real relayd for
 * tests/integration/test_client.py. Links librelayclient.a only.
 *
 *   client_check SOCK many N WINDOW        N rows, WINDOW rows in flight, poll loop on
 *                                          relay_client_fd; every seq acked exactly once
 *   client_check SOCK refusals             good and bad rows; refusals per row; argument errors
 *   client_check SOCK window ROWS BYTES    sends ~100-byte rows until RELAY_EAGAIN (relayd is
 *                                          stopped by the test), prints "eagain K", waits for
 *                                          a line on stdin, then flushes
 *   client_check SOCK blocking             one-row window, blocking mode, send_timeout 300 ms:
 *                                          prints what the second send returned, then flushes
 *   client_check SOCK crash N K            streams N rows {"i":0..N-1}; once K are acked, fills
 *                                          the window, prints "checkpoint", waits for a line on
 *                                          stdin (the test kills relayd), goes on: reconnects
 *                                          and resends; flushes
 *   client_check SOCK one                  one row, flush; prints the result
 *   client_check SOCK final                reconnect off: one row acked, "ready", waits for a
 *                                          line (the test kills relayd): RELAY_ELOST, sticky
 * Each mode ends with a JSON summary line on stdout; exit 0 when every check held.
 */
#include "relayclient.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, "CHECK FAILED %s:%d: ", \
    __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

struct state {
    unsigned char *acked;      /* per seq: 0, 1 acked, 2 refused */
    uint64_t n;
    uint64_t n_acked, n_refused, ack_events, disconnects, connects;
    uint64_t print_every, next_print;
    int print_refusals;
};

static void on_event(relay_client *c, const struct relay_event *ev, void *user)
{
    struct state *s = user;
    switch (ev->type) {
    case RELAY_EV_ACKED:
        CHECK(ev->first_seq >= 1 && ev->first_seq <= ev->last_seq && ev->last_seq <= s->n,
              "ack range %llu..%llu", (unsigned long long)ev->first_seq,
              (unsigned long long)ev->last_seq);
        for (uint64_t q = ev->first_seq; q <= ev->last_seq && q <= s->n; q++) {
            CHECK(s->acked[q] == 0, "seq %llu resolved twice", (unsigned long long)q);
            s->acked[q] = 1;
            s->n_acked++;
        }
        s->ack_events++;
        if (s->print_every && s->n_acked >= s->next_print) {
            printf("acked %llu\n", (unsigned long long)s->n_acked);
            fflush(stdout);
            s->next_print += s->print_every;
        }
        break;
    case RELAY_EV_REFUSED:
        CHECK(ev->first_seq == ev->last_seq && ev->first_seq <= s->n, "refused range");
        if (ev->first_seq <= s->n) {
            CHECK(s->acked[ev->first_seq] == 0, "seq %llu resolved twice",
                  (unsigned long long)ev->first_seq);
            s->acked[ev->first_seq] = 2;
        }
        s->n_refused++;
        if (s->print_refusals) {
            printf("refused %llu %s %d %s\n", (unsigned long long)ev->first_seq, ev->reason,
                   ev->retryable, ev->message);
            fflush(stdout);
        }
        break;
    case RELAY_EV_DISCONNECTED:
        s->disconnects++;
        fprintf(stderr, "disconnected: %s (%s)\n", ev->message, relay_strerror(ev->error));
        break;
    case RELAY_EV_CONNECTED:
        s->connects++;
        break;
    }
    (void)c;
}

static relay_client *open_client(const char *sock, struct state *s, uint64_t n,
                                 struct relay_client_opts *o)
{
    s->n = n;
    s->acked = calloc(n + 1, 1);
    o->callback = on_event;
    o->user = s;
    char err[512];
    relay_client *c;
    int rc = relay_client_open(&c, sock, o, err, sizeof err);
    if (rc) {
        printf("{\"open\":%d,\"error\":\"%s\"}\n", rc, err);
        exit(4);
    }
    return c;
}

static void summary(relay_client *c, struct state *s, int flush_rc, long eagain)
{
    struct relay_client_stats st;
    relay_client_stats(c, &st);
    printf("{\"sent\":%llu,\"acked\":%llu,\"refused\":%llu,\"acked_events\":%llu,"
           "\"acked_upto\":%llu,\"resent\":%llu,\"reconnects\":%llu,\"disconnects\":%llu,"
           "\"inflight\":%zu,\"eagain\":%ld,\"flush\":%d,\"flush_error\":\"%s\","
           "\"errmsg\":\"%s\",\"failures\":%d}\n",
           (unsigned long long)st.sent, (unsigned long long)st.acked,
           (unsigned long long)st.refused, (unsigned long long)s->ack_events,
           (unsigned long long)relay_client_acked(c), (unsigned long long)st.resent,
           (unsigned long long)st.reconnects, (unsigned long long)s->disconnects,
           st.inflight_rows, eagain, flush_rc, relay_strerror(flush_rc),
           relay_client_errmsg(c), failures);
    CHECK(st.acked == s->n_acked && st.refused == s->n_refused, "stats agree with events");
}

static int row(char *buf, size_t n, uint64_t i)
{
    return snprintf(buf, n, "{\"i\":%llu,\"msg\":\"client row %llu\"}", (unsigned long long)i,
                    (unsigned long long)i);
}

static void wait_stdin(void)
{
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        exit(2);
}

static int mode_many(const char *sock, uint64_t n, size_t window)
{
    struct state s = { 0 };
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.max_inflight_rows = window;
    relay_client *c = open_client(sock, &s, n, &o);
    long eagain = 0;
    char buf[128];
    for (uint64_t i = 0; i < n;) {
        int len = row(buf, sizeof buf, i);
        int64_t seq = relay_send(c, NULL, buf, (size_t)len);
        if (seq == RELAY_EAGAIN) {
            eagain++;
            struct pollfd p = { relay_client_fd(c), POLLIN, 0 };
            poll(&p, 1, 1000);
            CHECK(relay_client_process(c) == 0, "process: %s", relay_client_errmsg(c));
            continue;
        }
        CHECK(seq == (int64_t)i + 1, "seq %lld for row %llu", (long long)seq,
              (unsigned long long)i);
        if (seq < 0)
            break;
        i++;
    }
    int rc = relay_flush(c, 60000);
    CHECK(rc == 0, "flush: %s", relay_client_errmsg(c));
    CHECK(s.n_acked == n && relay_client_acked(c) == n, "acked %llu of %llu",
          (unsigned long long)s.n_acked, (unsigned long long)n);
    for (uint64_t q = 1; q <= n; q++)
        if (s.acked[q] != 1) {
            CHECK(0, "seq %llu not acked", (unsigned long long)q);
            break;
        }
    summary(c, &s, rc, eagain);
    relay_client_close(c);
    free(s.acked);
    return failures ? 1 : 0;
}

static int mode_refusals(const char *sock)
{
    struct state s = { .print_refusals = 1 };
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.max_inflight_bytes = 4096;
    relay_client *c = open_client(sock, &s, 16, &o);
    static const struct { const char *table, *json; } rows[] = {
        { NULL, "{\"i\":1}" },
        { NULL, "{\"i\": nope}" },          /* json */
        { "nosuch", "{\"i\":3}" },          /* table */
        { "other", "{\"i\":4}" },
        { NULL, "[1,2]" },                  /* not-object */
        { NULL, "{\"i\":6}" },
        { "other", "{\"i\": nope}" },     /* json: same message (byte position) as row 2 */
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        int64_t seq = relay_send(c, rows[i].table, rows[i].json, strlen(rows[i].json));
        CHECK(seq == (int64_t)i + 1, "seq %lld", (long long)seq);
    }
    /* argument errors are refused locally and take no sequence number */
    CHECK(relay_send(c, NULL, "{\"a\":\n1}", 8) == RELAY_EINVAL, "newline");
    CHECK(relay_send(c, NULL, "", 0) == RELAY_EINVAL, "empty");
    CHECK(relay_send(c, NULL, "  ", 2) == RELAY_EINVAL, "blank");
    CHECK(relay_send(c, NULL, "@x {}", 5) == RELAY_EINVAL, "@ row");
    CHECK(relay_send(c, "a b", "{}", 2) == RELAY_EINVAL, "table with a space");
    static char big[5000];
    memset(big, ' ', sizeof big);
    big[0] = '{';
    big[sizeof big - 1] = '}';
    CHECK(relay_send(c, NULL, big, sizeof big) == RELAY_ETOOBIG, "too big");
    CHECK(strlen(relay_strerror(RELAY_ETOOBIG)) > 0 && strlen(relay_client_errmsg(c)) > 0, "msgs");
    int rc = relay_flush(c, 30000);
    CHECK(rc == 0, "flush: %s", relay_client_errmsg(c));
    CHECK(s.n_acked == 3 && s.n_refused == 4, "acked %llu refused %llu",
          (unsigned long long)s.n_acked, (unsigned long long)s.n_refused);
    CHECK(s.acked[1] == 1 && s.acked[2] == 2 && s.acked[3] == 2 && s.acked[4] == 1 &&
          s.acked[5] == 2 && s.acked[6] == 1 && s.acked[7] == 2, "per-row outcomes");
    CHECK(relay_client_acked(c) == 7, "acked upto %llu", (unsigned long long)relay_client_acked(c));
    summary(c, &s, rc, 0);
    relay_client_close(c);
    free(s.acked);
    return failures ? 1 : 0;
}

static int mode_window(const char *sock, size_t rows, size_t bytes)
{
    struct state s = { 0 };
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.max_inflight_rows = rows;
    o.max_inflight_bytes = bytes;
    relay_client *c = open_client(sock, &s, 100000, &o);
    char buf[128];
    uint64_t i = 0;
    int64_t seq;
    for (;;) {
        int len = snprintf(buf, sizeof buf, "{\"i\":\"%06llu\",\"pad\":\"%076d\"}",
                           (unsigned long long)i, 0);    /* 99 bytes + newline */
        seq = relay_send(c, NULL, buf, (size_t)len);
        if (seq < 0 || i >= 100000)
            break;
        i++;
    }
    CHECK(seq == RELAY_EAGAIN, "window full gave %lld (%s)", (long long)seq,
          relay_strerror((int)seq));
    printf("eagain %llu\n", (unsigned long long)i);
    fflush(stdout);
    /* the fd must stay pollable while the window is full */
    wait_stdin();
    int rc = relay_flush(c, 60000);
    CHECK(rc == 0, "flush: %s", relay_client_errmsg(c));
    CHECK(s.n_acked == i, "acked %llu of %llu", (unsigned long long)s.n_acked,
          (unsigned long long)i);
    /* room again */
    int len = row(buf, sizeof buf, i);
    CHECK(relay_send(c, NULL, buf, (size_t)len) == (int64_t)i + 1, "send after the window drained");
    CHECK(relay_flush(c, 60000) == 0, "flush 2");
    summary(c, &s, rc, 1);
    relay_client_close(c);
    free(s.acked);
    return failures ? 1 : 0;
}

static int mode_blocking(const char *sock)
{
    struct state s = { 0 };
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.max_inflight_rows = 1;
    o.blocking = 1;
    o.send_timeout_ms = 300;
    relay_client *c = open_client(sock, &s, 10, &o);
    int64_t a = relay_send(c, NULL, "{\"i\":0}", 7);
    int64_t b = relay_send(c, NULL, "{\"i\":1}", 7);   /* relayd is stopped: times out */
    printf("first %lld second %lld\n", (long long)a, (long long)b);
    fflush(stdout);
    CHECK(a == 1 && b == RELAY_ETIMEDOUT, "blocking send");
    wait_stdin();
    int64_t c2 = relay_send(c, NULL, "{\"i\":1}", 7);  /* waits for the first ack */
    CHECK(c2 == 2, "blocking send after resume: %lld", (long long)c2);
    int rc = relay_flush(c, 60000);
    CHECK(rc == 0 && s.n_acked == 2, "flush");
    summary(c, &s, rc, 0);
    relay_client_close(c);
    free(s.acked);
    return failures ? 1 : 0;
}

static int mode_crash(const char *sock, uint64_t n, uint64_t k)
{
    struct state s = { .print_every = k, .next_print = k };
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.max_inflight_rows = 2048;
    o.reconnect_max_ms = 200;
    relay_client *c = open_client(sock, &s, n, &o);
    char buf[128];
    int checkpoint = 0;
    long eagain = 0;
    for (uint64_t i = 0; i < n;) {
        int len = row(buf, sizeof buf, i);
        int64_t seq = relay_send(c, NULL, buf, (size_t)len);
        if (seq == RELAY_EAGAIN) {
            eagain++;
            if (!checkpoint && s.n_acked >= k) {
                /* the window is full and rows are on the wire: stop reading acks */
                struct relay_client_stats st;
                relay_client_stats(c, &st);
                printf("checkpoint inflight %zu\n", st.inflight_rows);
                fflush(stdout);
                checkpoint = 1;
                wait_stdin();
            }
            int rc = relay_client_poll(c, 1000);
            CHECK(rc == 0, "poll: %s", relay_client_errmsg(c));
            if (rc)
                break;
            continue;
        }
        CHECK(seq == (int64_t)i + 1, "seq %lld (%s)", (long long)seq, relay_client_errmsg(c));
        if (seq < 0)
            break;
        i++;
    }
    int rc = relay_flush(c, 120000);
    CHECK(rc == 0, "flush: %s", relay_client_errmsg(c));
    CHECK(checkpoint, "never reached the checkpoint");
    CHECK(s.n_acked == n && s.n_refused == 0, "acked %llu refused %llu of %llu",
          (unsigned long long)s.n_acked, (unsigned long long)s.n_refused, (unsigned long long)n);
    summary(c, &s, rc, eagain);
    relay_client_close(c);
    free(s.acked);
    return failures ? 1 : 0;
}

static int mode_one(const char *sock)
{
    struct state s = { .print_refusals = 1 };
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.reconnect = 0;
    relay_client *c = open_client(sock, &s, 4, &o);
    int64_t seq = relay_send(c, NULL, "{\"i\":1}", 7);
    int rc = seq < 0 ? (int)seq : relay_flush(c, 30000);
    summary(c, &s, rc, 0);
    relay_client_close(c);
    free(s.acked);
    return rc == 0 ? 0 : 1;
}

/* reconnect off: one row acked, then (relayd killed by the test) the loss is final */
static int mode_final(const char *sock)
{
    struct state s = { 0 };
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.reconnect = 0;
    relay_client *c = open_client(sock, &s, 4, &o);
    CHECK(relay_send(c, NULL, "{\"i\":1}", 7) == 1, "first send");
    CHECK(relay_flush(c, 30000) == 0, "first flush: %s", relay_client_errmsg(c));
    printf("ready\n");
    fflush(stdout);
    wait_stdin();
    int64_t seq = relay_send(c, NULL, "{\"i\":2}", 7);
    int rc = seq < 0 ? (int)seq : relay_flush(c, 30000);
    CHECK(rc == RELAY_ELOST, "after the loss: %s", relay_strerror(rc));
    CHECK(relay_send(c, NULL, "{\"i\":3}", 7) == RELAY_ELOST, "the loss is sticky");
    summary(c, &s, rc, 0);
    relay_client_close(c);
    free(s.acked);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: client_check SOCK many|refusals|window|blocking|crash|one ...\n");
        return 2;
    }
    const char *sock = argv[1], *mode = argv[2];
    if (strcmp(mode, "many") == 0 && argc == 5)
        return mode_many(sock, strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    if (strcmp(mode, "refusals") == 0)
        return mode_refusals(sock);
    if (strcmp(mode, "window") == 0 && argc == 5)
        return mode_window(sock, strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    if (strcmp(mode, "blocking") == 0)
        return mode_blocking(sock);
    if (strcmp(mode, "crash") == 0 && argc == 5)
        return mode_crash(sock, strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    if (strcmp(mode, "one") == 0)
        return mode_one(sock);
    if (strcmp(mode, "final") == 0)
        return mode_final(sock);
    fprintf(stderr, "client_check: bad arguments\n");
    return 2;
}
