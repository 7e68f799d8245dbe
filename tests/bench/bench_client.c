/*
 * bench_client -- rows/s from ONE librelayclient thread to relayd, acks
 * awaited (the library's durable-ack events), with ack latency.
 *
 *   bench_client SOCKET [ROWS=1000000] [WINDOW_ROWS=16384]
 *
 * Sends ~200-byte JSON rows with relay_send as fast as the window allows
 * (RELAY_EAGAIN -> relay_client_poll), then relay_flush. Every row's send
 * time is kept by sequence number; an ACKED event gives the latency of each
 * row it covers. Prints rows/s, MB/s, ack latency p50/p99/p99.9 and the
 * client's own CPU per row. Figures only: it asserts nothing about speed.
 * (relayd's CPU is measured around it by tests/bench/run.py.)
 */
#include "relayclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

struct run {
    uint64_t *sent_at;        /* by seq */
    uint32_t *lat;            /* latency of each acked row, us */
    uint64_t n_lat, refused;
};

static void on_event(relay_client *c, const struct relay_event *ev, void *user)
{
    struct run *r = user;
    (void)c;
    if (ev->type == RELAY_EV_ACKED) {
        uint64_t now = mono_us();
        for (uint64_t q = ev->first_seq; q <= ev->last_seq; q++)
            r->lat[r->n_lat++] = (uint32_t)(now - r->sent_at[q]);
    } else if (ev->type == RELAY_EV_REFUSED) {
        if (r->refused++ < 5)
            fprintf(stderr, "bench_client: row %llu refused: %s: %s\n",
                    (unsigned long long)ev->first_seq, ev->reason, ev->message);
    }
}

static int by_value(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* A log-like row of about 200 bytes whose values change with i. */
static int row_text(char *out, size_t cap, uint64_t i)
{
    static const char *const svc[] = { "checkout", "search", "auth", "billing" };
    return snprintf(out, cap,
                    "{\"ts\":\"2026-12-06T%02u:%02u:%02u.%06uZ\",\"host\":\"node-%03u.prod\","
                    "\"service\":\"%s\",\"seq\":%llu,\"status\":%u,\"bytes\":%u,"
                    "\"path\":\"/api/v1/items/%llu\",\"msg\":\"served request in %u ms\"}",
                    (unsigned)(i / 3600 % 24), (unsigned)(i / 60 % 60), (unsigned)(i % 60),
                    (unsigned)(i * 13 % 1000000), (unsigned)(i % 512), svc[i % 4],
                    (unsigned long long)i, 200 + (unsigned)(i % 3) * 100, (unsigned)(i * 31 % 65536),
                    (unsigned long long)(i * 7919 % 1000003), (unsigned)(i % 250));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_client SOCKET [ROWS] [WINDOW_ROWS]\n");
        return 2;
    }
    uint64_t n = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000;
    size_t window = argc > 3 ? strtoull(argv[3], NULL, 10) : 16384;
    struct run r = { .sent_at = calloc(n + 1, sizeof(uint64_t)), .lat = calloc(n, sizeof(uint32_t)) };
    if (!r.sent_at || !r.lat) {
        fprintf(stderr, "bench_client: out of memory\n");
        return 1;
    }
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.max_inflight_rows = window;
    o.callback = on_event;
    o.user = &r;
    relay_client *c;
    char err[256];
    if (relay_client_open(&c, argv[1], &o, err, sizeof err)) {
        fprintf(stderr, "bench_client: %s\n", err);
        return 1;
    }
    char buf[512];
    uint64_t bytes = 0, eagain = 0, t0 = mono_us();
    for (uint64_t i = 1; i <= n;) {
        int len = row_text(buf, sizeof buf, i);
        r.sent_at[i] = mono_us();
        int64_t seq = relay_send(c, NULL, buf, (size_t)len);
        if (seq == RELAY_EAGAIN) {
            eagain++;
            if (relay_client_poll(c, 100) == 0)
                continue;
            seq = relay_client_process(c);
        }
        if (seq < 0) {
            fprintf(stderr, "bench_client: send: %s\n", relay_client_errmsg(c));
            return 1;
        }
        bytes += (uint64_t)len + 1;
        i++;
    }
    int rc = relay_flush(c, 120000);
    uint64_t dt = mono_us() - t0;
    if (rc) {
        fprintf(stderr, "bench_client: flush: %s\n", relay_client_errmsg(c));
        return 1;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    qsort(r.lat, r.n_lat, sizeof *r.lat, by_value);
    double secs = (double)dt / 1e6;
    printf("rows %llu  bytes/row %.0f  time %.2f s  window %zu rows  window-full waits %llu\n",
           (unsigned long long)n, (double)bytes / (double)n, secs, window,
           (unsigned long long)eagain);
    printf("throughput %.0f rows/s  %.1f MB/s acknowledged (one client thread)\n",
           (double)n / secs, (double)bytes / secs / 1e6);
    if (r.n_lat)
        printf("ack latency p50 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms\n",
               r.lat[r.n_lat / 2] / 1000.0, r.lat[r.n_lat * 99 / 100] / 1000.0,
               r.lat[r.n_lat * 999 / 1000] / 1000.0, r.lat[r.n_lat - 1] / 1000.0);
    printf("client cpu %.2f us/row (%.0f%% of one core)  refused %llu\n", cpu / (double)n,
           cpu / (double)dt * 100, (unsigned long long)r.refused);
    relay_client_close(c);
    free(r.sent_at);
    free(r.lat);
    return r.refused ? 1 : 0;
}
