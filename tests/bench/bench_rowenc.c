/*
 * bench_rowenc.c -- how fast does rowenc_encode() turn NDJSON rows into
 * Storage Write API protobuf rows, on one core?
 *
 * Generates a fixed, pseudo-random set of realistic ~200-byte rows with 10
 * columns (a string, an integer, a float, a boolean, a TIMESTAMP string, a
 * DATE, a nested RECORD, a REPEATED string, a NUMERIC string and base64
 * BYTES; now and then non-ASCII text or an escape), checks that every row
 * encodes, then times the encoder over many passes and prints the best of
 * several rounds:
 *
 *   rowenc typical: 180 ns/row  5.5 Mrows/s  1100 MB/s in  (~150 B out/row)
 *
 * A second workload, "nested", has rows with a REPEATED RECORD of five items
 * (each over 127 bytes when encoded, so each length prefix takes the slow
 * path that moves the body), for the cost of deep records.
 *
 * Time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID): the figure is
 * what one core does, even on a shared VM whose vCPUs are time-sliced;
 * wall-clock ns/row is printed too.
 *
 * Figures only: nothing here asserts on timing. The exit status is non-zero
 * only if a row is rejected (that would be a bug, not a slow machine).
 *
 * Usage: bench_rowenc [seconds-per-round [typical|nested|log]]   (default 0.3, all)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rowenc.h"
#include "util.h"

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

static const char typical_schema[] =
    "[{\"name\":\"event\",\"type\":\"STRING\",\"mode\":\"REQUIRED\"},"
    "{\"name\":\"user_id\",\"type\":\"INT64\"},"
    "{\"name\":\"amount\",\"type\":\"FLOAT64\"},"
    "{\"name\":\"ok\",\"type\":\"BOOL\"},"
    "{\"name\":\"ts\",\"type\":\"TIMESTAMP\"},"
    "{\"name\":\"day\",\"type\":\"DATE\"},"
    "{\"name\":\"ctx\",\"type\":\"RECORD\",\"fields\":["
    "  {\"name\":\"ip\",\"type\":\"STRING\"},{\"name\":\"city\",\"type\":\"STRING\"}]},"
    "{\"name\":\"tags\",\"type\":\"STRING\",\"mode\":\"REPEATED\"},"
    "{\"name\":\"price\",\"type\":\"NUMERIC\"},"
    "{\"name\":\"blob\",\"type\":\"BYTES\"}]";

static const char nested_schema[] =
    "[{\"name\":\"order\",\"type\":\"INT64\"},"
    "{\"name\":\"items\",\"type\":\"RECORD\",\"mode\":\"REPEATED\",\"fields\":["
    "  {\"name\":\"sku\",\"type\":\"STRING\"},{\"name\":\"qty\",\"type\":\"INT64\"},"
    "  {\"name\":\"price\",\"type\":\"NUMERIC\"},{\"name\":\"note\",\"type\":\"STRING\"},"
    "  {\"name\":\"attrs\",\"type\":\"RECORD\",\"fields\":["
    "     {\"name\":\"color\",\"type\":\"STRING\"},"
    "     {\"name\":\"added\",\"type\":\"TIMESTAMP\"}]}]}]";

struct rows {
    struct buf text;
    size_t off[NROWS], len[NROWS];
};

static void make_typical(struct rows *rs)
{
    static const char *const events[] = { "page_view", "click", "purchase", "signup",
                                          "logout", "search", "add_to_cart" };
    static const char *const cities[] = { "Berlin", "M\xc3\xbcnchen", "Paris", "S\xc3\xa3o Paulo",
                                          "Tokyo", "New \\\"York\\\"", "Lyon" };
    static const char *const tags[] = { "\"web\"", "\"app\",\"beta\"", "\"promo\",\"email\",\"ab\"",
                                         "" };
    static const char *const blobs[] = { "aGVsbG8gd29ybGQ=", "AAECAwQFBgcICQ", "3q2+7w==",
                                         "c29tZS1ieXRlcw" };
    for (int i = 0; i < NROWS; i++) {
        rs->off[i] = rs->text.len;
        buf_printf(&rs->text,
                   "{\"event\":\"%s\",\"user_id\":%llu,\"amount\":%llu.%02llu,\"ok\":%s,"
                   "\"ts\":\"2024-%02llu-%02lluT%02llu:%02llu:%02llu.%06lluZ\","
                   "\"day\":\"2024-%02llu-%02llu\","
                   "\"ctx\":{\"ip\":\"10.%llu.%llu.%llu\",\"city\":\"%s\"},"
                   "\"tags\":[%s],\"price\":\"%llu.%02llu\",\"blob\":\"%s\"}",
                   pick(events, 7), (unsigned long long)(rng() % 100000000),
                   (unsigned long long)(rng() % 1000), (unsigned long long)(rng() % 100),
                   rng() % 2 ? "true" : "false", (unsigned long long)(rng() % 12 + 1),
                   (unsigned long long)(rng() % 28 + 1), (unsigned long long)(rng() % 24),
                   (unsigned long long)(rng() % 60), (unsigned long long)(rng() % 60),
                   (unsigned long long)(rng() % 1000000), (unsigned long long)(rng() % 12 + 1),
                   (unsigned long long)(rng() % 28 + 1), (unsigned long long)(rng() % 256),
                   (unsigned long long)(rng() % 256), (unsigned long long)(rng() % 256),
                   pick(cities, 7), pick(tags, 4), (unsigned long long)(rng() % 100000),
                   (unsigned long long)(rng() % 100), pick(blobs, 4));
        rs->len[i] = rs->text.len - rs->off[i];
    }
}

static void make_nested(struct rows *rs)
{
    static const char *const colors[] = { "red", "green", "blue", "\\u00e9cru" };
    for (int i = 0; i < NROWS; i++) {
        rs->off[i] = rs->text.len;
        buf_printf(&rs->text, "{\"order\":%llu,\"items\":[", (unsigned long long)(rng() % 1000000));
        for (int k = 0; k < 5; k++)
            buf_printf(&rs->text,
                       "%s{\"sku\":\"SKU-%08llu\",\"qty\":%llu,\"price\":\"%llu.%02llu\","
                       "\"note\":\"a note long enough to push this item over one hundred and "
                       "twenty-seven bytes of protobuf\",\"attrs\":{\"color\":\"%s\","
                       "\"added\":\"2024-05-06 07:08:09 UTC\"}}",
                       k ? "," : "", (unsigned long long)(rng() % 100000000),
                       (unsigned long long)(rng() % 10 + 1), (unsigned long long)(rng() % 1000),
                       (unsigned long long)(rng() % 100), pick(colors, 4));
        buf_puts(&rs->text, "]}");
        rs->len[i] = rs->text.len - rs->off[i];
    }
}

/* The row of the fast-sink benchmark (bench_fill, tests/bench/run.py): seven
 * flat columns, the shape of a log line. */
static const char log_schema[] =
    "[{\"name\":\"ts\",\"type\":\"STRING\"},{\"name\":\"host\",\"type\":\"STRING\"},"
    "{\"name\":\"service\",\"type\":\"STRING\"},{\"name\":\"level\",\"type\":\"STRING\"},"
    "{\"name\":\"seq\",\"type\":\"INT64\"},{\"name\":\"status\",\"type\":\"INT64\"},"
    "{\"name\":\"msg\",\"type\":\"STRING\"}]";

static void make_log(struct rows *rs)
{
    for (int i = 0; i < NROWS; i++) {
        rs->off[i] = rs->text.len;
        buf_printf(&rs->text,
                   "{\"ts\":\"2026-11-22T10:00:00.%06uZ\",\"host\":\"web-01.example.internal\","
                   "\"service\":\"checkout\",\"level\":\"info\",\"seq\":%d,\"status\":200,"
                   "\"msg\":\"request finished for a user of the shop\"}",
                   (unsigned)(rng() % 1000000), 1000000 + i);
        rs->len[i] = rs->text.len - rs->off[i];
    }
}

static double now_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int run(const char *label, const char *schema, void (*make)(struct rows *), double secs)
{
    struct rowenc_schema *s;
    struct rowenc_error err;
    struct rows *rs = calloc(1, sizeof *rs);
    struct buf out = { 0 };

    if (!rs || rowenc_schema_parse(schema, strlen(schema), &s, &err) != ROWENC_OK) {
        fprintf(stderr, "%s: schema: %s\n", label, rs ? err.msg : "out of memory");
        return 1;
    }
    make(rs);
    size_t in_bytes = 0, out_bytes = 0;
    for (int i = 0; i < NROWS; i++) {
        out.len = 0;
        if (rowenc_encode(s, rs->text.data + rs->off[i], rs->len[i], 0, &out, &err) != ROWENC_OK) {
            fprintf(stderr, "%s: row %d rejected: %s\n%.*s\n", label, i, err.msg, (int)rs->len[i],
                    rs->text.data + rs->off[i]);
            return 1;
        }
        in_bytes += rs->len[i];
        out_bytes += out.len;
    }

    double best = 1e30, best_wall = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        size_t n = 0;
        double t0 = now_s(CLOCK_THREAD_CPUTIME_ID), w0 = now_s(CLOCK_MONOTONIC), t;
        do {
            for (int i = 0; i < NROWS; i++) {
                out.len = 0;
                rowenc_encode(s, rs->text.data + rs->off[i], rs->len[i], 0, &out, &err);
            }
            n += NROWS;
            t = now_s(CLOCK_THREAD_CPUTIME_ID) - t0;
        } while (t < secs);
        double per = t / (double)n, wall = (now_s(CLOCK_MONOTONIC) - w0) / (double)n;
        if (per < best)
            best = per;
        if (wall < best_wall)
            best_wall = wall;
    }
    double avg_in = (double)in_bytes / NROWS;
    printf("rowenc %-8s %6.0f ns/row  %5.2f Mrows/s  %6.0f MB/s in  (%.0f B in, %.0f B out per "
           "row; wall %.0f ns/row)\n",
           label, best * 1e9, 1e-6 / best, avg_in / best / 1e6, avg_in, (double)out_bytes / NROWS,
           best_wall * 1e9);
    buf_free(&out);
    buf_free(&rs->text);
    free(rs);
    rowenc_schema_free(s);
    return 0;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.3;
    if (secs <= 0)
        secs = 0.3;
    const char *only = argc > 2 ? argv[2] : NULL;
    int bad = 0;
    if (!only || strcmp(only, "typical") == 0)
        bad |= run("typical", typical_schema, make_typical, secs);
    if (!only || strcmp(only, "nested") == 0)
        bad |= run("nested", nested_schema, make_nested, secs);
    if (!only || strcmp(only, "log") == 0)
        bad |= run("log", log_schema, make_log, secs);
    return bad;
}
