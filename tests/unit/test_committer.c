/*
 * test_committer.c -- unit tests for the group-commit writer (committer.h).
 *
 * Each test runs a committer on a spool in its own mkdtemp() directory,
 * removed by the teardown. Waiting is always for a real condition: done
 * batches or a change of committer_full(), signalled through committer_fd(),
 * which the tests poll(2) with a deadline (generous, so that valgrind and
 * sanitizer builds pass too); a deadline passing is a failure.
 *
 * Rows name their batch and their place in it, so that the order in which
 * they were stored can be checked against the order of submission.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "committer.h"
#include "spool.h"

#define DEADLINE_MS 20000

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

/* Done batches collected in the order they came back. */
struct done {
    struct batch *v[512];
    size_t n;
};

struct fixture {
    struct done d;          /* done batches taken so far (freed by teardown) */
    char base[64];
    char dir[128];
    struct spool *s;
    struct committer *c;
    uint32_t a, b;          /* two destinations */
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static void free_list(struct batch *b)
{
    while (b) {
        struct batch *n = b->next;
        batch_free(b);
        b = n;
    }
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->base, sizeof f->base, "/tmp/relay-test-committer-XXXXXX");
    if (!mkdtemp(f->base)) {
        free(f);
        return -1;
    }
    snprintf(f->dir, sizeof f->dir, "%s/spool", f->base);
    *state = f;
    return 0;
}

static void free_done(struct done *d);

static int teardown(void **state)
{
    struct fixture *f = *state;
    free_done(&f->d);
    if (f->c) {
        struct batch *left = NULL;
        committer_stop(f->c, &left);
        free_list(left);
    }
    spool_close(f->s);
    int rc = nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc;
}

static void start(struct fixture *f, uint64_t max_bytes, enum spool_durability d,
                  uint64_t sync_interval_ms)
{
    struct spool_opts o = { .dir = f->dir, .max_bytes = max_bytes, .durability = d };
    char err[512] = "";
    int rc = spool_open(&o, &f->s, err, sizeof err);
    if (rc != SPOOL_OK)
        fail_msg("spool_open: %s", err);
    assert_int_equal(spool_dest(f->s, "a", true, &f->a), SPOOL_OK);
    assert_int_equal(spool_dest(f->s, "b", true, &f->b), SPOOL_OK);
    struct committer_opts co = { .durability = d, .sync_interval_ms = sync_interval_ms };
    assert_int_equal(committer_start(f->s, &co, &f->c), 0);
    assert_non_null(f->c);
    assert_true(committer_fd(f->c) >= 0);
    assert_false(committer_full(f->c));
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Waits until committer_fd is readable or the deadline passes; drains it.
 * Returns false once the deadline has passed. */
static bool wait_fd(struct committer *c, uint64_t deadline)
{
    uint64_t now = now_ms();
    if (now >= deadline)
        return false;
    struct pollfd p = { .fd = committer_fd(c), .events = POLLIN };
    int r = poll(&p, 1, (int)(deadline - now));
    assert_true(r >= 0);
    if (r > 0) {
        assert_true(p.revents & POLLIN);
        committer_drain_fd(c);
    }
    return true;
}

static void take(struct committer *c, struct done *d)
{
    for (struct batch *b = committer_take_done(c); b; b = b->next) {
        assert_true(d->n < 512);
        d->v[d->n++] = b;
    }
}

/* Collects done batches until there are want of them. */
static void wait_done(struct committer *c, struct done *d, size_t want)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;
    for (;;) {
        take(c, d);
        if (d->n >= want)
            break;
        if (!wait_fd(c, deadline))
            fail_msg("waited %d ms for %zu done batches, got %zu", DEADLINE_MS, want, d->n);
    }
    assert_int_equal(d->n, want);
}

/* Waits until committer_full() is want (collecting done batches meanwhile). */
static bool wait_full_for(struct committer *c, struct done *d, bool want, int ms)
{
    uint64_t deadline = now_ms() + (uint64_t)ms;
    for (;;) {
        committer_drain_fd(c);
        take(c, d);
        if (committer_full(c) == want)
            return true;
        if (!wait_fd(c, deadline))
            return false;
    }
}

static void wait_full(struct committer *c, struct done *d, bool want)
{
    if (!wait_full_for(c, d, want, DEADLINE_MS))
        fail_msg("committer_full() did not become %s within %d ms", want ? "true" : "false",
                 DEADLINE_MS);
}

static void free_done(struct done *d)
{
    for (size_t i = 0; i < d->n; i++)
        batch_free(d->v[i]);
    d->n = 0;
}

/* Row (batch bi, record ri) of exactly len bytes (len >= 32). */
static size_t make_row(char *buf, size_t len, int bi, int ri)
{
    int n = snprintf(buf, len + 1, "{\"b\":%d,\"r\":%d,\"p\":\"", bi, ri);
    assert_true(n > 0 && (size_t)n + 2 <= len);
    for (size_t k = (size_t)n; k < len - 2; k++)
        buf[k] = (char)('a' + (size_t)(bi * 7 + ri + (int)k) % 26);
    buf[len - 2] = '"';
    buf[len - 1] = '}';
    buf[len] = 0;
    return len;
}

/* A batch of nrec rows of row_len bytes; destinations alternate a/b when
 * mixed, else all a. */
static struct batch *new_batch(const struct fixture *f, int bi, int nrec, size_t row_len,
                               bool mixed)
{
    struct batch *b = calloc(1, sizeof *b);
    assert_non_null(b);
    char *row = malloc(row_len + 1);
    assert_non_null(row);
    for (int r = 0; r < nrec; r++) {
        make_row(row, row_len, bi, r);
        uint32_t dest = mixed && (r % 2) ? f->b : f->a;
        assert_int_equal(batch_add(b, (uint32_t)bi, 1, (uint64_t)r + 1, dest, row, row_len), 0);
    }
    free(row);
    return b;
}

/* Records stored in the spool, copied. */
struct stored {
    uint64_t seq;
    uint32_t dest;
    int bi, ri;
    size_t len;
    bool ok;               /* content matches make_row(bi, ri) */
};

struct stored_list {
    struct stored *v;
    size_t n, cap;
};

static int collect(const struct spool_record *r, void *arg)
{
    struct stored_list *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        assert_non_null(l->v);
    }
    struct stored *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    s->seq = r->seq;
    s->dest = r->dest;
    s->len = r->len;
    assert_false(r->corrupt);
    char *copy = malloc(r->len + 1);
    assert_non_null(copy);
    memcpy(copy, r->row, r->len);
    copy[r->len] = 0;
    assert_int_equal(sscanf(copy, "{\"b\":%d,\"r\":%d,", &s->bi, &s->ri), 2);
    char *want = malloc(r->len + 1);
    assert_non_null(want);
    make_row(want, r->len, s->bi, s->ri);
    s->ok = memcmp(want, copy, r->len) == 0;
    free(want);
    free(copy);
    return 0;
}

static int cmp_seq(const void *x, const void *y)
{
    const struct stored *a = x, *b = y;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Every record of both destinations, in seq order. */
static void read_stored(const struct fixture *f, struct stored_list *l)
{
    memset(l, 0, sizeof *l);
    assert_int_equal(spool_read(f->s, f->a, 0, SIZE_MAX, SIZE_MAX, collect, l), SPOOL_OK);
    assert_int_equal(spool_read(f->s, f->b, 0, SIZE_MAX, SIZE_MAX, collect, l), SPOOL_OK);
    if (l->n)
        qsort(l->v, l->n, sizeof *l->v, cmp_seq);
}

/* Checks the spool holds exactly batches [0, nb) of nrec rows each, in
 * submission order (seq order follows batch then record order). */
static void check_stored(const struct fixture *f, int nb, int nrec, size_t row_len, bool mixed)
{
    struct stored_list l;
    read_stored(f, &l);
    assert_int_equal(l.n, (size_t)nb * (size_t)nrec);
    for (size_t i = 0; i < l.n; i++) {
        int bi = (int)i / nrec, ri = (int)i % nrec;
        if (l.v[i].bi != bi || l.v[i].ri != ri)
            fail_msg("record %zu in seq order is (batch %d, row %d), want (%d, %d)", i,
                     l.v[i].bi, l.v[i].ri, bi, ri);
        assert_true(l.v[i].ok);
        assert_int_equal(l.v[i].len, row_len);
        assert_int_equal(l.v[i].dest, mixed && (ri % 2) ? f->b : f->a);
        if (i)
            assert_true(l.v[i].seq > l.v[i - 1].seq);
    }
    free(l.v);
}

/* Removes every record in the spool from the test thread. */
static void drain_spool(const struct fixture *f)
{
    struct stored_list l;
    read_stored(f, &l);
    for (size_t i = 0; i < l.n; i += 16) {
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(f->s, &t), SPOOL_OK);
        for (size_t k = i; k < i + 16 && k < l.n; k++)
            assert_int_equal(spool_txn_remove(t, l.v[k].dest, l.v[k].seq), SPOOL_OK);
        assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    }
    free(l.v);
    struct spool_stats *st = malloc(sizeof *st);
    assert_non_null(st);
    assert_int_equal(spool_stats(f->s, st), SPOOL_OK);
    assert_int_equal(st->records, 0);
    free(st);
}

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

static void test_batch_add_reset_free(void **state)
{
    (void)state;
    struct batch *b = calloc(1, sizeof *b);
    assert_non_null(b);
    char row[200];
    size_t total = 0;
    for (int i = 0; i < 1000; i++) {
        size_t len = 32 + (size_t)(i % 100);
        make_row(row, len, 1, i);
        assert_int_equal(batch_add(b, 7, 3, (uint64_t)i + 10, (uint32_t)(i % 3 + 1), row, len),
                         0);
        total += len;
    }
    assert_int_equal(b->n, 1000);
    assert_int_equal(b->len, total);
    assert_true(b->cap >= b->len);
    assert_true(b->ncap >= b->n);
    size_t off = 0;
    for (int i = 0; i < 1000; i++) {
        const struct batch_rec *r = &b->recs[i];
        size_t len = 32 + (size_t)(i % 100);
        make_row(row, len, 1, i);
        assert_int_equal(r->conn, 7);
        assert_int_equal(r->gen, 3);
        assert_int_equal(r->line, (uint64_t)i + 10);
        assert_int_equal(r->dest, (uint32_t)(i % 3 + 1));
        assert_int_equal(r->len, len);
        assert_int_equal(r->off, off);
        assert_memory_equal(b->data + r->off, row, len);
        off += len;
    }
    /* the row is copied: changing the source does not change the batch */
    make_row(row, 40, 2, 0);
    assert_int_equal(batch_add(b, 1, 1, 1, 1, row, 40), 0);
    memset(row, 'Z', 40);
    assert_memory_not_equal(b->data + b->recs[1000].off, row, 40);

    b->status = SPOOL_FULL;
    b->next = b;
    batch_reset(b);
    assert_int_equal(b->n, 0);
    assert_int_equal(b->len, 0);
    assert_null(b->next);
    assert_int_equal(b->status, SPOOL_OK);
    /* usable again */
    make_row(row, 50, 3, 3);
    assert_int_equal(batch_add(b, 2, 2, 2, 2, row, 50), 0);
    assert_int_equal(b->n, 1);
    assert_int_equal(b->recs[0].off, 0);
    assert_memory_equal(b->data, row, 50);

    /* a burst larger than 4 MiB, then reset and reuse */
    char *big = malloc(1 << 20);
    assert_non_null(big);
    memset(big, 'q', 1 << 20);
    for (int i = 0; i < 6; i++)
        assert_int_equal(batch_add(b, 1, 1, 1, 1, big, 1 << 20), 0);
    assert_int_equal(b->len, 50 + (6u << 20));
    batch_reset(b);
    assert_int_equal(b->len, 0);
    assert_int_equal(batch_add(b, 1, 1, 1, 1, big, 100), 0);
    assert_memory_equal(b->data, big, 100);
    free(big);
    batch_free(b);
    batch_free(NULL);
}

/* ------------------------------------------------------------------------ */
/* Committing                                                               */
/* ------------------------------------------------------------------------ */

static void test_commit_one_batch(void **state)
{
    struct fixture *f = *state;
    start(f, 16u << 20, SPOOL_SYNC, 0);
    struct batch *b = new_batch(f, 0, 5, 100, true);
    committer_submit(f->c, b);
    struct done *d = &f->d;
    wait_done(f->c, d, 1);
    assert_ptr_equal(d->v[0], b);
    assert_int_equal(b->status, SPOOL_OK);
    assert_null(committer_take_done(f->c));
    check_stored(f, 1, 5, 100, true);

    struct committer_stats st;
    committer_get_stats(f->c, &st);
    assert_int_equal(st.commits, 1);
    assert_int_equal(st.records, 5);
    assert_int_equal(st.bytes, 500);
    assert_true(st.max_commit_us >= st.last_commit_us);
    assert_true(st.total_commit_us >= st.last_commit_us);
    assert_int_equal(st.full_events, 0);
    assert_false(committer_full(f->c));
    free_done(d);
}

static void test_submission_order_and_group_commit(void **state)
{
    struct fixture *f = *state;
    start(f, 64u << 20, SPOOL_SYNC, 0);
    enum { NB = 60, NR = 7 };
    struct batch *sent[NB];
    for (int i = 0; i < NB; i++) {
        sent[i] = new_batch(f, i, NR, 64 + (size_t)i, true);
        committer_submit(f->c, sent[i]);
    }
    struct done *d = &f->d;
    wait_done(f->c, d, NB);
    for (int i = 0; i < NB; i++) {
        assert_ptr_equal(d->v[i], sent[i]);          /* back in submission order */
        assert_int_equal(d->v[i]->status, SPOOL_OK);
    }
    /* stored in submission order */
    struct stored_list l;
    read_stored(f, &l);
    assert_int_equal(l.n, NB * NR);
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.v[i].bi, (int)i / NR);
        assert_int_equal(l.v[i].ri, (int)i % NR);
        assert_int_equal(l.v[i].len, 64 + (size_t)l.v[i].bi);
        assert_true(l.v[i].ok);
    }
    free(l.v);

    struct committer_stats st;
    committer_get_stats(f->c, &st);
    assert_true(st.commits >= 1);
    assert_true(st.commits <= NB);
    assert_int_equal(st.records, NB * NR);
    uint64_t bytes = 0;
    for (int i = 0; i < NB; i++)
        bytes += (uint64_t)NR * (64 + (uint64_t)i);
    assert_int_equal(st.bytes, bytes);
    free_done(d);
}

static void test_group_commit_shares_commits(void **state)
{
    struct fixture *f = *state;
    /* batches submitted while a commit runs are committed together: submit a
     * burst, then another while the first is still being committed */
    start(f, 64u << 20, SPOOL_SYNC, 0);
    enum { NB = 200 };
    struct batch *sent[NB];
    for (int i = 0; i < NB; i++)
        sent[i] = new_batch(f, i, 1, 48, false);
    for (int i = 0; i < NB; i++)
        committer_submit(f->c, sent[i]);
    struct done *d = &f->d;
    wait_done(f->c, d, NB);
    for (int i = 0; i < NB; i++) {
        assert_ptr_equal(d->v[i], sent[i]);
        assert_int_equal(d->v[i]->status, SPOOL_OK);
    }
    struct committer_stats st;
    committer_get_stats(f->c, &st);
    assert_true(st.commits >= 1);
    assert_true(st.commits <= NB);
    assert_int_equal(st.records, NB);
    check_stored(f, NB, 1, 48, false);
    free_done(d);
}

static void test_submit_after_take(void **state)
{
    struct fixture *f = *state;
    /* rounds of submit / wait / take; a reset batch is reused */
    start(f, 16u << 20, SPOOL_NOSYNC, 0);
    struct batch *b = calloc(1, sizeof *b);
    assert_non_null(b);
    char row[64];
    for (int round = 0; round < 10; round++) {
        batch_reset(b);
        for (int r = 0; r < 3; r++) {
            make_row(row, 60, round, r);
            assert_int_equal(batch_add(b, 0, 0, 0, f->a, row, 60), 0);
        }
        committer_submit(f->c, b);
        struct done *d = &f->d;
        wait_done(f->c, d, 1);
        assert_int_equal(d->n, 1);
        assert_ptr_equal(d->v[0], b);
        assert_int_equal(b->status, SPOOL_OK);
        d->n = 0;            /* b is ours again: reused, freed below */
    }
    batch_free(b);
    check_stored(f, 10, 3, 60, false);
}

static void test_periodic_sync_mode(void **state)
{
    struct fixture *f = *state;
    start(f, 16u << 20, SPOOL_NOSYNC_PERIODIC, 10);
    struct batch *sent[5];
    for (int i = 0; i < 5; i++) {
        sent[i] = new_batch(f, i, 4, 80, true);
        committer_submit(f->c, sent[i]);
    }
    struct done *d = &f->d;
    wait_done(f->c, d, 5);
    for (int i = 0; i < 5; i++) {
        assert_ptr_equal(d->v[i], sent[i]);
        assert_int_equal(d->v[i]->status, SPOOL_OK);
    }
    check_stored(f, 5, 4, 80, true);
    free_done(d);
    struct batch *left = (struct batch *)(uintptr_t)1;
    committer_stop(f->c, &left);
    f->c = NULL;
    assert_null(left);
    check_stored(f, 5, 4, 80, true);
}

/* ------------------------------------------------------------------------ */
/* Stopping                                                                 */
/* ------------------------------------------------------------------------ */

static void test_stop_idle(void **state)
{
    struct fixture *f = *state;
    start(f, 16u << 20, SPOOL_SYNC, 0);
    struct batch *left = (struct batch *)(uintptr_t)1;
    committer_stop(f->c, &left);
    f->c = NULL;
    assert_null(left);
}

static void test_stop_returns_leftovers(void **state)
{
    struct fixture *f = *state;
    start(f, 16u << 20, SPOOL_SYNC, 0);
    enum { NB = 12 };
    struct batch *sent[NB];
    for (int i = 0; i < NB; i++) {
        sent[i] = new_batch(f, i, 3, 70, false);
        committer_submit(f->c, sent[i]);
    }
    /* nothing taken: stop commits what is submitted and hands everything back */
    struct batch *left = NULL;
    committer_stop(f->c, &left);
    f->c = NULL;
    int i = 0;
    for (struct batch *b = left; b; b = b->next, i++) {
        assert_true(i < NB);
        assert_ptr_equal(b, sent[i]);
        assert_int_equal(b->status, SPOOL_OK);
    }
    assert_int_equal(i, NB);
    free_list(left);
    check_stored(f, NB, 3, 70, false);
}

static void test_stop_frees_without_left(void **state)
{
    struct fixture *f = *state;
    start(f, 16u << 20, SPOOL_SYNC, 0);
    for (int i = 0; i < 4; i++)
        committer_submit(f->c, new_batch(f, i, 2, 50, false));
    committer_stop(f->c, NULL);          /* frees them (valgrind checks) */
    f->c = NULL;
    check_stored(f, 4, 2, 50, false);
}

/* ------------------------------------------------------------------------ */
/* Full                                                                     */
/* ------------------------------------------------------------------------ */

#define FROW 4000         /* ~4 KiB rows */
#define FREC 8            /* rows per batch */

/* Submits batches one at a time, each waited for, until one is not
 * committed because the spool is full (committer_full() turns true); then
 * submits `extra` more. Returns how many were committed (sent[0..n)); the
 * kept ones are sent[n..n+extra]. */
static int fill_until_full(struct fixture *f, int extra, struct batch **sent, int cap,
                           struct done *d)
{
    int i;
    for (i = 0; ; i++) {
        assert_true(i + extra < cap);
        sent[i] = new_batch(f, i, FREC, FROW, false);
        committer_submit(f->c, sent[i]);
        uint64_t deadline = now_ms() + DEADLINE_MS;
        bool full = false;
        for (;;) {
            take(f->c, d);
            if (d->n == (size_t)i + 1)
                break;
            if (committer_full(f->c)) {
                full = true;
                break;
            }
            if (!wait_fd(f->c, deadline))
                fail_msg("batch %d neither committed nor reported full", i);
        }
        if (full)
            break;
        assert_ptr_equal(d->v[i], sent[i]);
        assert_int_equal(sent[i]->status, SPOOL_OK);
    }
    /* a spool of this size takes some batches, and not too many */
    assert_true(i >= 2);
    assert_int_equal(d->n, (size_t)i);
    for (int k = i + 1; k <= i + extra; k++) {
        sent[k] = new_batch(f, k, FREC, FROW, false);
        committer_submit(f->c, sent[k]);
    }
    /* still full, nothing more came back */
    assert_true(committer_full(f->c));
    take(f->c, d);
    assert_int_equal(d->n, (size_t)i);
    check_stored(f, i, FREC, FROW, false);
    struct committer_stats st;
    committer_get_stats(f->c, &st);
    assert_int_equal(st.full_events, 1);
    assert_int_equal(st.records, (uint64_t)i * FREC);
    assert_int_equal(st.commits, (uint64_t)i);
    struct spool_stats *ss = malloc(sizeof *ss);
    assert_non_null(ss);
    assert_int_equal(spool_stats(f->s, ss), SPOOL_OK);
    assert_true(ss->file_bytes <= ss->max_bytes);
    free(ss);
    return i;
}

/* Checks that the spool holds exactly batches [from, to) of FREC rows. */
static void check_stored_range(const struct fixture *f, int from, int to)
{
    struct stored_list l;
    read_stored(f, &l);
    assert_int_equal(l.n, (size_t)(to - from) * FREC);
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.v[i].bi, from + (int)i / FREC);
        assert_int_equal(l.v[i].ri, (int)i % FREC);
        assert_true(l.v[i].ok);
    }
    free(l.v);
}

static void test_full_then_reject(void **state)
{
    struct fixture *f = *state;
    start(f, 1u << 20, SPOOL_NOSYNC, 0);
    struct batch *sent[256];
    struct done *d = &f->d;
    int n = fill_until_full(f, 5, sent, 256, d);

    committer_reject(f->c);
    wait_done(f->c, d, (size_t)n + 6);
    for (int i = 0; i < n + 6; i++) {
        assert_ptr_equal(d->v[i], sent[i]);
        assert_int_equal(d->v[i]->status, i < n ? SPOOL_OK : SPOOL_FULL);
    }
    /* nothing of the refused ones was stored */
    check_stored(f, n, FREC, FROW, false);
    /* still full: no room has appeared */
    assert_true(committer_full(f->c));
    struct committer_stats st;
    committer_get_stats(f->c, &st);
    assert_int_equal(st.records, (uint64_t)n * FREC);
    free_done(d);
}

static void test_full_retries_when_room_appears(void **state)
{
    struct fixture *f = *state;
    start(f, 1u << 20, SPOOL_NOSYNC, 0);
    struct batch *sent[256];
    struct done *d = &f->d;
    int n = fill_until_full(f, 2, sent, 256, d);

    /* make room from outside: the committer retries by itself and commits
     * what it kept, in order */
    drain_spool(f);
    wait_done(f->c, d, (size_t)n + 3);
    for (int i = 0; i < n + 3; i++) {
        assert_ptr_equal(d->v[i], sent[i]);
        assert_int_equal(d->v[i]->status, SPOOL_OK);
    }
    wait_full(f->c, d, false);
    check_stored_range(f, n, n + 3);
    struct committer_stats st;
    committer_get_stats(f->c, &st);
    assert_int_equal(st.records, (uint64_t)(n + 3) * FREC);
    assert_int_equal(st.full_events, 1);
    free_done(d);
}

/* After a reject, committer_full() stays true "until room appears again":
 * with nothing submitted, only the committer's own look for room can clear
 * it, and ingest (refusing) submits nothing meanwhile. */
static void full_clears_after_reject(struct fixture *f, uint64_t max_bytes)
{
    start(f, max_bytes, SPOOL_NOSYNC, 0);
    struct batch *sent[512];
    struct done *d = &f->d;
    int n = fill_until_full(f, 1, sent, 512, d);
    committer_reject(f->c);
    wait_done(f->c, d, (size_t)n + 2);
    assert_int_equal(d->v[n]->status, SPOOL_FULL);
    assert_int_equal(d->v[n + 1]->status, SPOOL_FULL);
    assert_true(committer_full(f->c));

    drain_spool(f);
    /* the spool is empty: room has appeared */
    assert_true(spool_has_room(f->s, (uint64_t)FREC * spool_footprint(FROW)));
    if (!wait_full_for(f->c, d, false, 5000))
        fail_msg("a %llu-byte spool was drained empty after a reject, but committer_full() "
                 "stayed true for 5 s", (unsigned long long)max_bytes);
    free_done(d);

    /* and batches are committed again */
    struct batch *b = new_batch(f, 0, 2, 100, false);
    committer_submit(f->c, b);
    wait_done(f->c, d, 1);
    assert_int_equal(b->status, SPOOL_OK);
    free_done(d);
}

static void test_full_clears_after_reject_8m(void **state)
{
    full_clears_after_reject(*state, 8u << 20);
}

static void test_full_clears_after_reject_1m(void **state)
{
    /* 1 MiB is the smallest max_spool_bytes the config allows */
    full_clears_after_reject(*state, 1u << 20);
}

static void test_stop_while_full(void **state)
{
    struct fixture *f = *state;
    start(f, 1u << 20, SPOOL_NOSYNC, 0);
    struct batch *sent[256];
    struct done *d = &f->d;
    int n = fill_until_full(f, 3, sent, 256, d);
    free_done(d);
    /* the kept batches come back with status -1: not stored */
    struct batch *left = NULL;
    committer_stop(f->c, &left);
    f->c = NULL;
    int i = n;
    for (struct batch *b = left; b; b = b->next, i++) {
        assert_true(i <= n + 3);
        assert_ptr_equal(b, sent[i]);
        assert_int_equal(b->status, -1);
    }
    assert_int_equal(i, n + 4);
    free_list(left);
    check_stored(f, n, FREC, FROW, false);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_add_reset_free),
        T(test_commit_one_batch),
        T(test_submission_order_and_group_commit),
        T(test_group_commit_shares_commits),
        T(test_submit_after_take),
        T(test_periodic_sync_mode),
        T(test_stop_idle),
        T(test_stop_returns_leftovers),
        T(test_stop_frees_without_left),
        T(test_full_then_reject),
        T(test_full_retries_when_room_appears),
        T(test_full_clears_after_reject_8m),
        T(test_full_clears_after_reject_1m),
        T(test_stop_while_full),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
