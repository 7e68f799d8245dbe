/*
 * client_example.c -- the smallest useful librelayclient program: reads
 * NDJSON rows from stdin, streams them to relayd with many in flight, and
 * exits 0 once every row is durable (1 if relayd refused some, 3 if it could
 * not finish).
 *
 *   cc client_example.c $(pkg-config --cflags --libs relayclient) -o client_example
 *   ./client_example /run/relayd/relayd.sock < rows.ndjson
 */
#define _POSIX_C_SOURCE 200809L
#include <relayclient.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static unsigned long refused;

/* Called from inside relay_send / relay_flush as relayd answers. */
static void on_event(relay_client *c, const struct relay_event *ev, void *user)
{
    (void)c;
    (void)user;
    if (ev->type == RELAY_EV_REFUSED) {
        fprintf(stderr, "row %llu refused: %s: %s\n", (unsigned long long)ev->first_seq,
                ev->reason, ev->message);
        refused++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET < rows.ndjson\n", argv[0]);
        return 2;
    }
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.blocking = 1;                 /* relay_send waits for room in the window */
    o.callback = on_event;
    char err[256];
    relay_client *c;
    if (relay_client_open(&c, argv[1], &o, err, sizeof err) != RELAY_OK) {
        fprintf(stderr, "%s\n", err);
        return 3;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = 0;
        if (n == 0)
            continue;
        int64_t seq = relay_send(c, NULL, line, (size_t)n);   /* NULL: relayd's default table */
        if (seq < 0) {
            fprintf(stderr, "send: %s: %s\n", relay_strerror((int)seq), relay_client_errmsg(c));
            if (seq != RELAY_EINVAL && seq != RELAY_ETOOBIG)
                break;
        }
    }
    free(line);
    int rc = relay_flush(c, 60000);  /* every row sent so far is acked or refused */
    struct relay_client_stats st;
    relay_client_stats(c, &st);
    printf("%llu rows durable, %lu refused, %llu resent after reconnects\n",
           (unsigned long long)st.acked, refused, (unsigned long long)st.resent);
    if (rc != RELAY_OK)
        fprintf(stderr, "flush: %s: %s\n", relay_strerror(rc), relay_client_errmsg(c));
    relay_client_close(c);
    return rc != RELAY_OK ? 3 : refused ? 1 : 0;
}
