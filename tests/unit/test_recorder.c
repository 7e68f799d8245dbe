/*
 * test_recorder.c -- unit tests for recorder.h: delivered rows recorded in a
 * real LMDB spool on the recorder's thread.
 *
 * Each test opens a spool in its own mkdtemp() directory, appends rows to
 * one queue, and hands removals (and meta puts) to a recorder; what the
 * spool holds afterwards is read back with spool_read and spool_get_meta.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "recorder.h"
#include "spool.h"

struct fixture {
    char base[64];
    char dir[128];
    struct spool *s;
    uint32_t dest;
    uint64_t seqs[2000];
    size_t n;
    pthread_mutex_t mu;
    uint64_t committed_rows, commits;
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static void open_spool(struct fixture *f, uint64_t max_bytes, size_t rows)
{
    struct spool_opts o = { .dir = f->dir, .max_bytes = max_bytes, .durability = SPOOL_NOSYNC };
    char err[512] = "";
    if (spool_open(&o, &f->s, err, sizeof err) != SPOOL_OK)
        fail_msg("spool_open: %s", err);
    assert_int_equal(spool_dest(f->s, "events", true, &f->dest), SPOOL_OK);
    struct spool_txn *t = NULL;
    assert_int_equal(spool_txn_begin(f->s, &t), SPOOL_OK);
    for (size_t i = 0; i < rows; i++) {
        char row[64];
        int len = snprintf(row, sizeof row, "{\"i\":%zu}", i);
        assert_int_equal(spool_txn_append(t, f->dest, row, (size_t)len, 1, &f->seqs[i]), SPOOL_OK);
    }
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    f->n = rows;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->base, sizeof f->base, "/tmp/relay-test-recorder-XXXXXX");
    if (!mkdtemp(f->base)) {
        free(f);
        return -1;
    }
    snprintf(f->dir, sizeof f->dir, "%s/spool", f->base);
    pthread_mutex_init(&f->mu, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    spool_close(f->s);
    int rc = nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return rc;
}

static void on_committed(void *arg, uint64_t rows)
{
    struct fixture *f = arg;
    pthread_mutex_lock(&f->mu);
    f->committed_rows += rows;
    f->commits++;
    pthread_mutex_unlock(&f->mu);
}

/* Commits and rows the callback counted so far are exactly these. */
static void commits_are(struct fixture *f, uint64_t commits, uint64_t rows)
{
    pthread_mutex_lock(&f->mu);
    uint64_t c = f->commits, n = f->committed_rows;
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(c, commits);
    assert_int_equal(n, rows);
}

/* Waits for the recorder's first commit without recorder_wait (which would
 * end its gathering window); the queue never holds more than max_pending
 * jobs meanwhile. Fails after 60 s, only so that a broken build cannot hang. */
static void wait_first_commit(struct fixture *f, struct recorder *r, size_t max_pending)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pthread_mutex_lock(&f->mu);
        uint64_t c = f->commits;
        pthread_mutex_unlock(&f->mu);
        if (c)
            return;
        assert_true(recorder_pending(r) <= max_pending);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 60)
            fail_msg("no commit while gathering: the window never ended");
        sched_yield();
    }
}

struct seen {
    uint64_t seqs[2000];
    size_t n;
};

static int collect(const struct spool_record *rec, void *arg)
{
    struct seen *s = arg;
    s->seqs[s->n++] = rec->seq;
    return 0;
}

static size_t queued(struct fixture *f, struct seen *s)
{
    memset(s, 0, sizeof *s);
    assert_true(spool_read(f->s, f->dest, 0, SIZE_MAX, SIZE_MAX, collect, s) >= 0);
    return s->n;
}

static void meta_is(struct fixture *f, const char *key, const char *want)
{
    char val[256];
    size_t len = 0;
    assert_int_equal(spool_get_meta(f->s, key, val, sizeof val - 1, &len), SPOOL_OK);
    val[len < sizeof val ? len : sizeof val - 1] = 0;
    assert_string_equal(val, want);
}

/* Jobs land in order: removals of all of them, the last put of a key wins,
 * and the callback counts every row once. */
static void test_jobs_commit_in_order(void **state)
{
    struct fixture *f = *state;
    open_spool(f, 64 << 20, 100);
    struct recorder *r = NULL;
    assert_int_equal(recorder_create(f->s, f->dest, "events", on_committed, f, &r), 0);
    uint64_t last = 0;
    for (int j = 0; j < 10; j++) {
        char val[32];
        int len = snprintf(val, sizeof val, "%d projects/p/streams/s", (j + 1) * 5);
        struct recorder_meta m = { "eo.0.t", val, (size_t)len };
        uint64_t t = recorder_submit(r, f->seqs + j * 5, 5, &m, 1);
        assert_true(t > last);   /* tickets only grow */
        last = t;
    }
    recorder_wait(r, last);
    assert_int_equal(recorder_pending(r), 0);
    struct seen *s = malloc(sizeof *s);
    assert_int_equal(queued(f, s), 50);
    assert_int_equal(s->seqs[0], f->seqs[50]);   /* the first 50 went, the rest stayed */
    meta_is(f, "eo.0.t", "50 projects/p/streams/s");
    pthread_mutex_lock(&f->mu);
    assert_int_equal(f->committed_rows, 50);
    assert_true(f->commits >= 1 && f->commits <= 10);
    pthread_mutex_unlock(&f->mu);
    /* ticket 0 (nothing handed over) returns at once */
    recorder_wait(r, 0);
    recorder_free(r);
    free(s);
}

/* Gathering: with a window far longer than the test, jobs stay queued until
 * someone waits; the wait ends the window at once, and everything queued
 * goes in one commit. */
static void test_wait_ends_gathering(void **state)
{
    struct fixture *f = *state;
    open_spool(f, 64 << 20, 300);
    struct recorder *r = NULL;
    assert_int_equal(recorder_create(f->s, f->dest, "events", on_committed, f, &r), 0);
    recorder_set_gather(r, 600000, 1000000);
    uint64_t t = 0;
    for (int j = 0; j < 3; j++)
        t = recorder_submit(r, f->seqs + j * 100, 100, NULL, 0);
    assert_int_equal(recorder_pending(r), 3);   /* gathering, not committed */
    commits_are(f, 0, 0);
    recorder_wait(r, t);
    commits_are(f, 1, 300);
    struct seen *s = malloc(sizeof *s);
    assert_int_equal(queued(f, s), 0);
    recorder_free(r);
    free(s);
}

/* The row bound ends the window without any waiter: 3 jobs of 100 rows
 * against a bound of 250 make one commit of 300, taken after the third. */
static void test_row_bound_ends_gathering(void **state)
{
    struct fixture *f = *state;
    open_spool(f, 64 << 20, 400);
    struct recorder *r = NULL;
    assert_int_equal(recorder_create(f->s, f->dest, "events", on_committed, f, &r), 0);
    recorder_set_gather(r, 600000, 250);
    for (int j = 0; j < 3; j++)
        recorder_submit(r, f->seqs + j * 100, 100, NULL, 0);
    wait_first_commit(f, r, 3);
    commits_are(f, 1, 300);
    /* a fourth job under the bound gathers again, until freed: free commits it */
    recorder_submit(r, f->seqs + 300, 100, NULL, 0);
    recorder_free(r);
    commits_are(f, 2, 400);
    struct seen *s = malloc(sizeof *s);
    assert_int_equal(queued(f, s), 0);
    free(s);
}

/* The time bound ends the window by itself: one job, nobody waiting, a
 * 20 ms window: it is committed. */
static void test_time_bound_ends_gathering(void **state)
{
    struct fixture *f = *state;
    open_spool(f, 64 << 20, 10);
    struct recorder *r = NULL;
    assert_int_equal(recorder_create(f->s, f->dest, "events", on_committed, f, &r), 0);
    recorder_set_gather(r, 20, 1000000);
    recorder_submit(r, f->seqs, 10, NULL, 0);
    wait_first_commit(f, r, 1);
    commits_are(f, 1, 10);
    recorder_free(r);
}

struct submitter {
    struct recorder *r;
    const uint64_t *seqs;
    size_t n;
};

static void *submit_all(void *arg)
{
    struct submitter *sb = arg;
    uint64_t last = 0;
    for (size_t i = 0; i < sb->n; i += 10) {
        uint64_t t = recorder_submit(sb->r, sb->seqs + i, 10, NULL, 0);
        if (t <= last)
            return (void *)1;
        last = t;
        if (i % 100 == 0)
            recorder_wait(sb->r, t);
    }
    recorder_wait(sb->r, last);
    return NULL;
}

/* Two lanes hand over jobs at once; each wait covers its own jobs; every
 * row is removed exactly once and counted once. */
static void test_two_threads(void **state)
{
    struct fixture *f = *state;
    open_spool(f, 64 << 20, 2000);
    struct recorder *r = NULL;
    assert_int_equal(recorder_create(f->s, f->dest, "events", on_committed, f, &r), 0);
    struct submitter a = { r, f->seqs, 1000 }, b = { r, f->seqs + 1000, 1000 };
    pthread_t ta, tb;
    void *ra, *rb;
    assert_int_equal(pthread_create(&ta, NULL, submit_all, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, submit_all, &b), 0);
    pthread_join(ta, &ra);
    pthread_join(tb, &rb);
    assert_null(ra);
    assert_null(rb);
    struct seen *s = malloc(sizeof *s);
    assert_int_equal(queued(f, s), 0);
    pthread_mutex_lock(&f->mu);
    assert_int_equal(f->committed_rows, 2000);
    pthread_mutex_unlock(&f->mu);
    recorder_free(r);
    free(s);
}

/* A commit that cannot succeed (a meta value larger than the map: MAP_FULL)
 * keeps its jobs and retries; nothing is removed meanwhile and later jobs
 * wait behind it. After recorder_cancel the failing jobs are dropped, the
 * waits return, and their rows are still queued (resent after a restart). */
static void test_failing_commit_retries_then_cancel_drops(void **state)
{
    struct fixture *f = *state;
    open_spool(f, 1 << 20, 20);
    struct recorder *r = NULL;
    assert_int_equal(recorder_create(f->s, f->dest, "events", on_committed, f, &r), 0);
    size_t big = 8 << 20;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, 'x', big);
    struct recorder_meta m = { "eo.0.t", huge, big };
    uint64_t t1 = recorder_submit(r, f->seqs, 5, &m, 1);
    uint64_t t2 = recorder_submit(r, f->seqs + 5, 5, NULL, 0);
    free(huge);
    assert_true(t1 > 0 && t2 > t1);
    struct seen *s = malloc(sizeof *s);
    /* still retrying after several retry periods: both jobs pending, nothing removed */
    for (int i = 0; i < 3; i++) {
        struct timespec ts = { 0, 250 * 1000 * 1000 };
        nanosleep(&ts, NULL);   /* the retry period is what is being observed */
        assert_int_equal(recorder_pending(r), 2);
        assert_int_equal(queued(f, s), 20);
    }
    recorder_cancel(r);
    recorder_wait(r, t2);
    assert_int_equal(recorder_pending(r), 0);
    assert_int_equal(queued(f, s), 20);
    pthread_mutex_lock(&f->mu);
    assert_int_equal(f->committed_rows, 0);
    pthread_mutex_unlock(&f->mu);
    /* after a cancel, a commit that works still commits */
    uint64_t t3 = recorder_submit(r, f->seqs + 10, 10, NULL, 0);
    recorder_wait(r, t3);
    assert_int_equal(queued(f, s), 10);
    pthread_mutex_lock(&f->mu);
    assert_int_equal(f->committed_rows, 10);
    pthread_mutex_unlock(&f->mu);
    recorder_free(r);
    free(s);
}

/* recorder_free commits what is still queued before it returns. */
static void test_free_drains(void **state)
{
    struct fixture *f = *state;
    open_spool(f, 64 << 20, 300);
    struct recorder *r = NULL;
    assert_int_equal(recorder_create(f->s, f->dest, "events", NULL, NULL, &r), 0);
    for (int j = 0; j < 30; j++)
        assert_true(recorder_submit(r, f->seqs + j * 10, 10, NULL, 0) > 0);
    recorder_free(r);
    struct seen *s = malloc(sizeof *s);
    assert_int_equal(queued(f, s), 0);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_jobs_commit_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_commit_retries_then_cancel_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_ends_gathering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_row_bound_ends_gathering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_time_bound_ends_gathering, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
