/*
 * bench_json_check.c -- how fast is jcheck_object() on typical ingest rows,
 * compared with a full parse by jansson (json_loadb + json_decref)?
 *
 * Generates a fixed, pseudo-random set of ~200-byte NDJSON-style rows with
 * 10 fields (strings, integers, floats, booleans, a null, a nested object,
 * some non-ASCII UTF-8 and an escape now and then), checks that both
 * validators accept every row, then times each over many passes and prints
 * the best of several rounds:
 *
 *   json_check: 123 ns/row  8.1 Mrows/s  1620 MB/s
 *   jansson:    ...
 *
 * Figures only: nothing here asserts on timing. The exit status is non-zero
 * only if a row is rejected (that would be a bug, not a slow machine).
 *
 * Usage: bench_json_check [seconds-per-round]   (default 0.3)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "json_check.h"

#define NROWS   4096
#define ROUNDS  5

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rng(void)
{
    /* xorshift64*: deterministic, so every run measures the same rows */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Du;
}

static const char *pick(const char *const *list, size_t n)
{
    return list[rng() % n];
}

struct rows {
    char *buf;
    size_t *off, *len;
    size_t total;
};

static void make_rows(struct rows *rs)
{
    static const char *const events[] = { "page_view", "click", "purchase", "signup",
                                          "logout", "search", "add_to_cart" };
    static const char *const countries[] = { "DE", "FR", "JP", "US", "BR", "IN" };
    /* about a third carry non-ASCII text; one has an escape */
    static const char *const cities[] = { "Berlin", "M\xc3\xbcnchen", "Paris",
                                          "S\xc3\xa3o Paulo", "\xe6\x9d\xb1\xe4\xba\xac",
                                          "New York", "Z\xc3\xbcrich", "Austin",
                                          "Lyon", "Pune" };
    static const char *const agents[] = { "Mozilla/5.0 (X11; Linux x86_64)", "curl/8.4.0",
                                          "okhttp/4.12", "Safari/17.1 \\\"mobile\\\"",
                                          "caf\xc3\xa9-bot/1.0 \xe2\x80\x93 beta" };
    size_t cap = NROWS * 320, used = 0;

    rs->buf = malloc(cap);
    rs->off = malloc(NROWS * sizeof *rs->off);
    rs->len = malloc(NROWS * sizeof *rs->len);
    if (!rs->buf || !rs->off || !rs->len) {
        perror("malloc");
        exit(2);
    }
    for (size_t i = 0; i < NROWS; i++) {
        uint64_t r = rng();
        int n = snprintf(rs->buf + used, cap - used,
                         "{\"ts\":%llu,\"event\":\"%s\",\"user_id\":\"u_%08llx\","
                         "\"amount\":%llu.%02llu,\"count\":%llu,\"active\":%s,"
                         "\"ratio\":%s%llu.%04llue-%llu,\"ref\":null,"
                         "\"geo\":{\"country\":\"%s\",\"city\":\"%s\"},\"agent\":\"%s\"}",
                         1700000000000ull + (unsigned long long)(r % 100000000000ull),
                         pick(events, sizeof events / sizeof *events),
                         (unsigned long long)(rng() & 0xffffffffu),
                         (unsigned long long)(rng() % 10000), (unsigned long long)(rng() % 100),
                         (unsigned long long)(rng() % 1000), (rng() & 1) ? "true" : "false",
                         (rng() & 1) ? "-" : "", (unsigned long long)(rng() % 10),
                         (unsigned long long)(rng() % 10000), (unsigned long long)(rng() % 12),
                         pick(countries, sizeof countries / sizeof *countries),
                         pick(cities, sizeof cities / sizeof *cities),
                         pick(agents, sizeof agents / sizeof *agents));
        if (n < 0 || (size_t)n >= cap - used) {
            fprintf(stderr, "row buffer too small\n");
            exit(2);
        }
        rs->off[i] = used;
        rs->len[i] = (size_t)n;
        used += (size_t)n;
    }
    rs->total = used;
}

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile unsigned sink;  /* keeps the work from being optimised away */

static unsigned pass_jcheck(const struct rows *rs)
{
    struct jcheck_result res;
    unsigned ok = 0;
    for (size_t i = 0; i < NROWS; i++)
        ok += jcheck_object(rs->buf + rs->off[i], rs->len[i], 0, &res) == JC_OK;
    return ok;
}

static unsigned pass_jansson(const struct rows *rs)
{
    json_error_t err;
    unsigned ok = 0;
    for (size_t i = 0; i < NROWS; i++) {
        json_t *j = json_loadb(rs->buf + rs->off[i], rs->len[i], 0, &err);
        ok += j != NULL && json_is_object(j);
        json_decref(j);
    }
    return ok;
}

/* Best ns/row over ROUNDS rounds of at least `secs` each. */
static double measure(unsigned (*pass)(const struct rows *), const struct rows *rs, double secs)
{
    double best = 1e30;

    sink += pass(rs);  /* warm caches and branch predictors */
    for (int round = 0; round < ROUNDS; round++) {
        unsigned long passes = 0;
        double t0 = now_sec(), t;
        do {
            sink += pass(rs);
            passes++;
            t = now_sec() - t0;
        } while (t < secs);
        double ns = t * 1e9 / ((double)passes * NROWS);
        if (ns < best)
            best = ns;
    }
    return best;
}

static void report(const char *name, double ns, double avg_bytes)
{
    printf("%-11s %6.1f ns/row  %6.2f Mrows/s  %6.0f MB/s\n", name, ns, 1e3 / ns,
           avg_bytes * 1e3 / ns);
}

int main(int argc, char **argv)
{
    struct rows rs;
    double secs = argc > 1 ? atof(argv[1]) : 0.3;
    double avg, ns_jc, ns_js;

    if (secs <= 0)
        secs = 0.3;
    make_rows(&rs);
    avg = (double)rs.total / NROWS;

    if (pass_jcheck(&rs) != NROWS || pass_jansson(&rs) != NROWS) {
        fprintf(stderr, "bench_json_check: a generated row was rejected\n");
        return 1;
    }
    printf("rows: %d distinct, %.1f bytes on average; best of %d rounds of %.2fs\n", NROWS,
           avg, ROUNDS, secs);
    printf("sample: %.*s\n", (int)rs.len[0], rs.buf + rs.off[0]);

    ns_jc = measure(pass_jcheck, &rs, secs);
    ns_js = measure(pass_jansson, &rs, secs);
    report("json_check:", ns_jc, avg);
    report("jansson:", ns_js, avg);
    printf("speedup:    %.1fx\n", ns_js / ns_jc);

    free(rs.buf);
    free(rs.off);
    free(rs.len);
    return 0;
}
