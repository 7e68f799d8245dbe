/*
 * test_delivstate.c -- unit tests for delivstate.h: the key=value format,
 * the classification of failure messages, the lines of an episode, and the
 * rate limiter's bounds over long outages, with an injected clock (a day of
 * outage runs in microseconds) and a sink that captures the lines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivstate.h"

/* ---- the fake clock and the captured lines ---- */

static uint64_t fake_now_us;
static uint64_t fake_clock(void) { return fake_now_us; }

#define MAX_LINES 4096
static char *lines[MAX_LINES];
static enum log_level levels[MAX_LINES];
static size_t n_lines;

static void capture(enum log_level level, const char *line, void *arg)
{
    (void)arg;
    assert_true(n_lines < MAX_LINES);
    levels[n_lines] = level;
    lines[n_lines++] = strdup(line);
}

static void reset_lines(void)
{
    for (size_t i = 0; i < n_lines; i++)
        free(lines[i]);
    n_lines = 0;
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int setup(void **state)
{
    (void)state;
    unsetenv("RELAYD_LOG_TIME_SCALE");
    fake_now_us = 1000000;
    ds_set_clock(fake_clock);
    ds_set_sink(capture, NULL);
    reset_lines();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    reset_lines();
    ds_set_clock(NULL);
    ds_set_sink(NULL, NULL);
    return 0;
}

static size_t count_event(const char *event)
{
    char key[64];
    snprintf(key, sizeof key, "event=%s ", event);
    size_t n = 0;
    for (size_t i = 0; i < n_lines; i++)
        n += strncmp(lines[i], key, strlen(key)) == 0;
    return n;
}

static void assert_has(const char *line, const char *part)
{
    if (!strstr(line, part))
        fail_msg("\"%s\" not in: %s", part, line);
}

/* ---- formatting ---- */

static void test_kv_quotes_only_when_needed(void **state)
{
    (void)state;
    char line[256];
    size_t n = 0;
    line[0] = 0;
    ds_kv(line, sizeof line, &n, "event", "backoff");
    ds_kv(line, sizeof line, &n, "reason", "HTTP 503");
    ds_kv(line, sizeof line, &n, "error", "say \"hi\"\\ a=b\nnext");
    ds_kv(line, sizeof line, &n, "empty", "");
    assert_string_equal(line, "event=backoff reason=\"HTTP 503\" error=\"say \\\"hi\\\"\\\\ a=b\\nnext\" empty=\"\"");
    assert_int_equal(n, strlen(line));
    /* a small buffer truncates, never overflows */
    char small[16];
    n = 0;
    small[0] = 0;
    ds_kv(small, sizeof small, &n, "error", "a long value with spaces");
    assert_true(strlen(small) < sizeof small);
}

static void test_durations(void **state)
{
    (void)state;
    char b[32];
    assert_string_equal(ds_fmt_dur(850, b, sizeof b), "850ms");
    assert_string_equal(ds_fmt_dur(2100, b, sizeof b), "2.1s");
    assert_string_equal(ds_fmt_dur(600000, b, sizeof b), "10m0s");
    assert_string_equal(ds_fmt_dur(12000000, b, sizeof b), "3h20m");
}

static void check_class(const char *msg, const char *kind, const char *reason)
{
    char k[16], r[128];
    ds_classify(msg, k, sizeof k, r, sizeof r);
    if (strcmp(k, kind) != 0 || strcmp(r, reason) != 0)
        fail_msg("%s: got kind=%s reason=%s, want kind=%s reason=%s", msg, k, r, kind, reason);
}

static void test_classify_gives_stable_short_reasons(void **state)
{
    (void)state;
    check_class("HTTP 503 backendError: Backend Error", "http", "HTTP 503 backendError");
    check_class("HTTP 401 authError: Invalid Credentials", "auth", "HTTP 401 authError");
    check_class("Couldn't connect to server: Failed to connect to 127.0.0.1 port 40123 after 0 ms: "
                "Couldn't connect to server", "network", "Couldn't connect to server");
    check_class("token endpoint https://127.0.0.1:40123/token: HTTP 503: down", "auth",
                "token endpoint: HTTP 503");
    check_class("token endpoint https://127.0.0.1:40123/token: SSL certificate problem: unable to get "
                "local issuer certificate (is ca_file the CA ...?)", "tls",
                "token endpoint: SSL certificate problem");
    check_class("AppendRows: UNAVAILABLE: injected", "grpc", "AppendRows: UNAVAILABLE");
    check_class("append: RESOURCE_EXHAUSTED: slow down", "grpc", "append: RESOURCE_EXHAUSTED");
    check_class("table p.d.t not found (Not found: Table p:d.t): create it; retrying every 2 s",
                "not_found", "table p.d.t not found");
    /* varying numbers do not make a new reason; an HTTP status stays */
    char r1[128], r2[128], k[16];
    ds_classify("Timeout was reached after 10001 ms", k, sizeof k, r1, sizeof r1);
    ds_classify("Timeout was reached after 10437 ms", k, sizeof k, r2, sizeof r2);
    assert_string_equal(r1, r2);
    assert_string_equal(k, "network");
    ds_classify("", k, sizeof k, r1, sizeof r1);
    assert_string_equal(k, "other");
    assert_string_equal(r1, "other");
}

/* ---- an episode ---- */

static void test_episode_logs_each_change_once(void **state)
{
    (void)state;
    struct delivstate ds;
    ds_init(&ds, &lock, "events", "insertAll", "p.d.t");
    ds_ok(&ds, NULL, 0);                     /* no episode: nothing */
    assert_int_equal(n_lines, 0);

    ds_wait(&ds, DS_BACKOFF, NULL, "HTTP 503 backendError: Backend Error", 2100);
    assert_int_equal(n_lines, 1);
    assert_int_equal(levels[0], LOG_WARN);
    assert_string_equal(lines[0], "event=backoff dest=events api=insertAll table=p.d.t kind=http "
                        "reason=\"HTTP 503 backendError\" retry_in=2.1s attempt=1 "
                        "error=\"HTTP 503 backendError: Backend Error\"");
    fake_now_us += 2100000;
    ds_probe(&ds);
    assert_int_equal(n_lines, 2);
    assert_has(lines[1], "event=probing dest=events");
    assert_has(lines[1], "attempt=2");
    ds_wait(&ds, DS_BACKOFF, NULL, "HTTP 503 backendError: Backend Error (again)", 4000);
    ds_probe(&ds);                           /* same reason: neither is logged */
    assert_int_equal(n_lines, 2);

    ds_event(&ds, LOG_INFO, "token_rejected", "auth", "HTTP 401 authError: no", NULL);
    assert_int_equal(n_lines, 3);            /* events do not carry the episode's count */
    assert_string_equal(lines[2], "event=token_rejected dest=events api=insertAll table=p.d.t "
                        "kind=auth reason=\"HTTP 401 authError\" error=\"HTTP 401 authError: no\"");
    ds_wait(&ds, DS_BACKOFF, NULL, "token endpoint https://h:1/token: HTTP 500: x", 1000);
    assert_int_equal(n_lines, 4);            /* a new reason */
    assert_has(lines[3], "kind=auth reason=\"token endpoint: HTTP 500\"");
    assert_has(lines[3], "attempt=3 for=2.1s");
    assert_has(lines[3], "suppressed=1");    /* the repeated 503 */
    pthread_mutex_lock(&lock);
    assert_true(ds_in_episode(&ds));
    char why[600];
    ds_why(&ds, "backoff", NULL, why, sizeof why);
    assert_string_equal(why, "token endpoint https://h:1/token: HTTP 500: x");
    ds_why(&ds, "probing", NULL, why, sizeof why);
    assert_has(why, "trying again after 3 failed attempt(s)");
    pthread_mutex_unlock(&lock);

    ds_wait(&ds, DS_PARKED, NULL, "table p.d.t not found (x): create it", 2000);
    assert_int_equal(n_lines, 5);            /* a new state */
    assert_has(lines[4], "event=parked ");
    assert_has(lines[4], "kind=not_found reason=\"table p.d.t not found\"");

    fake_now_us += 5000000;
    ds_ok(&ds, NULL, 0);
    assert_int_equal(n_lines, 6);
    assert_int_equal(levels[5], LOG_INFO);
    assert_has(lines[5], "event=recovered dest=events api=insertAll table=p.d.t state=parked");
    assert_has(lines[5], "for=7.1s attempts=4 rows_waited=0");
    ds_ok(&ds, NULL, 0);
    assert_int_equal(n_lines, 6);
    pthread_mutex_lock(&lock);
    assert_false(ds_in_episode(&ds));
    ds_why(&ds, "idle", NULL, why, sizeof why);
    assert_string_equal(why, "");
    ds_why(&ds, "sending", "2 request(s) in flight", why, sizeof why);
    assert_string_equal(why, "2 request(s) in flight");
    ds_why(&ds, "parked", NULL, why, sizeof why);   /* never empty */
    assert_true(why[0] != 0);
    ds_why(&ds, "removed", NULL, why, sizeof why);
    assert_true(why[0] != 0);
    pthread_mutex_unlock(&lock);
}

/* Attempts every step_ms for dur_ms with one reason, then a success; returns
 * the lines written. */
static size_t outage(struct delivstate *ds, uint64_t dur_ms, uint64_t step_ms)
{
    size_t before = n_lines;
    for (uint64_t t = 0; t < dur_ms; t += step_ms) {
        ds_wait(ds, DS_BACKOFF, NULL, "Couldn't connect to server: Failed to connect after 3 ms", step_ms);
        fake_now_us += step_ms * 1000;
        ds_probe(ds);
    }
    ds_ok(ds, NULL, 0);
    return n_lines - before;
}

/* Summaries at 1, 1+2, 1+2+4, ... min, gaps capped at an hour: how many fit in m minutes. */
static size_t summaries_within(uint64_t minutes)
{
    size_t n = 0;
    uint64_t t = 0, gap = 1;
    while ((t += gap) <= minutes) {
        n++;
        gap = gap * 2 > 60 ? 60 : gap * 2;
    }
    return n;
}

static void test_ten_minute_outage_writes_few_lines(void **state)
{
    (void)state;
    struct delivstate ds;
    ds_init(&ds, &lock, "events", "insertAll", "p.d.t");
    size_t n = outage(&ds, 10 * 60000, 1000);      /* 600 attempts */
    /* backoff + probing + summaries at 1, 3, 7 min + recovered */
    assert_int_equal(summaries_within(10), 3);
    assert_int_equal(count_event("summary"), 3);
    assert_int_equal(n, 3 + summaries_within(10));
    assert_has(lines[2], "event=summary");
    assert_has(lines[2], "state=backoff");
    assert_has(lines[2], "attempt=61 for=1m0s");
    assert_has(lines[2], "suppressed=59");
    assert_has(lines[n - 1], "attempts=600");
}

static void test_day_long_outage_stays_bounded(void **state)
{
    (void)state;
    struct delivstate ds;
    ds_init(&ds, &lock, "events", "insertAll", "p.d.t");
    size_t n = outage(&ds, 24 * 3600000ull, 30000); /* 2880 attempts */
    assert_int_equal(summaries_within(24 * 60), 28);
    assert_true(count_event("summary") <= 28);
    assert_true(count_event("summary") >= 27);     /* 30 s steps may push one past the end */
    assert_true(n <= 3 + 28);
}

static void test_flapping_reasons_are_limited_by_the_bucket(void **state)
{
    (void)state;
    struct delivstate ds;
    ds_init(&ds, &lock, "events", "insertAll", "p.d.t");
    for (int i = 0; i < 3600; i++) {               /* a new reason every second for an hour */
        ds_wait(&ds, DS_BACKOFF, NULL, i % 2 ? "HTTP 503 backendError: x" : "HTTP 500 internalError: y",
                1000);
        fake_now_us += 1000000;
    }
    /* the burst, then one a minute */
    assert_true(n_lines >= DS_BURST + 55);
    assert_true(n_lines <= DS_BURST + 61);
    assert_has(lines[n_lines - 1], "suppressed=");
    /* the end of a logged episode is always logged */
    ds_ok(&ds, NULL, 0);
    assert_has(lines[n_lines - 1], "event=recovered");
}

static void test_events_are_rate_limited_too(void **state)
{
    (void)state;
    struct delivstate ds;
    ds_init(&ds, &lock, "w", "storage", "p.d.t");
    for (int i = 0; i < 1000; i++) {               /* a reconnect storm in 10 s */
        ds_event(&ds, LOG_WARN, "reconnect", NULL, "AppendRows: UNAVAILABLE: x", "next=at_once");
        fake_now_us += 10000;
    }
    assert_int_equal(n_lines, DS_BURST);
    assert_string_equal(lines[0], "event=reconnect dest=w api=storage table=p.d.t kind=grpc "
                        "reason=\"AppendRows: UNAVAILABLE\" next=at_once error=\"AppendRows: UNAVAILABLE: x\"");
    fake_now_us += 60000000;
    ds_event(&ds, LOG_WARN, "reconnect", NULL, "AppendRows: UNAVAILABLE: x", NULL);
    assert_int_equal(n_lines, DS_BURST + 1);
    assert_has(lines[DS_BURST], "suppressed=990");
}

static void test_time_scale_shortens_the_periods(void **state)
{
    (void)state;
    setenv("RELAYD_LOG_TIME_SCALE", "60", 1);
    struct delivstate ds;
    ds_init(&ds, &lock, "events", "insertAll", "p.d.t");
    unsetenv("RELAYD_LOG_TIME_SCALE");
    size_t n = outage(&ds, 10000, 100);            /* 10 s are 10 minutes at scale 60 */
    assert_int_equal(count_event("summary"), summaries_within(10));
    assert_int_equal(n, 3 + summaries_within(10));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kv_quotes_only_when_needed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_durations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_classify_gives_stable_short_reasons, setup, teardown),
        cmocka_unit_test_setup_teardown(test_episode_logs_each_change_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ten_minute_outage_writes_few_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_day_long_outage_stays_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flapping_reasons_are_limited_by_the_bucket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_are_rate_limited_too, setup, teardown),
        cmocka_unit_test_setup_teardown(test_time_scale_shortens_the_periods, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
