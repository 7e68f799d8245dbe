/*
 * test_spool.c -- unit tests for the LMDB spool (spool.h).
 *
 * Each test works in its own mkdtemp() directory (the spool itself goes in
 * a subdirectory that spool_open must create) which the teardown removes.
 * Tests that damage records or read the dead-letter store close the spool
 * first and open the environment with the raw LMDB API (one environment per
 * process at a time: LMDB forbids opening the same one twice), then reopen
 * it with spool_open.
 *
 * Rows are generated from their index so that their contents can be checked
 * byte for byte after reopening, filling, removing and so on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dlq.h"
#include "spool.h"

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

struct fixture {
    char base[64];          /* the mkdtemp directory */
    char dir[128];          /* base/spool: the spool directory */
    struct spool *s;
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->base, sizeof f->base, "/tmp/relay-test-spool-XXXXXX");
    if (!mkdtemp(f->base)) {
        free(f);
        return -1;
    }
    snprintf(f->dir, sizeof f->dir, "%s/spool", f->base);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    spool_close(f->s);
    int rc = nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc;
}

static struct spool *open_opts(const char *dir, uint64_t max_bytes, enum spool_durability d,
                               bool readonly)
{
    struct spool_opts o = { .dir = dir, .max_bytes = max_bytes, .durability = d,
                            .readonly = readonly };
    struct spool *s = NULL;
    char err[512] = "";
    int rc = spool_open(&o, &s, err, sizeof err);
    if (rc != SPOOL_OK)
        fail_msg("spool_open(%s): rc %d: %s", dir, rc, err);
    assert_non_null(s);
    return s;
}

static struct spool *open_spool(struct fixture *f, uint64_t max_bytes)
{
    f->s = open_opts(f->dir, max_bytes, SPOOL_NOSYNC, false);
    return f->s;
}

static void close_spool(struct fixture *f)
{
    spool_close(f->s);
    f->s = NULL;
}

static uint32_t dest_id(struct spool *s, const char *name)
{
    uint32_t id = 0;
    assert_int_equal(spool_dest(s, name, true, &id), SPOOL_OK);
    assert_true(id >= 1 && id <= SPOOL_MAX_DESTS);
    return id;
}

/* Row i: a JSON object of exactly len bytes (len >= 16) whose content
 * depends on i. Caller frees. */
static char *make_row(uint64_t i, size_t len)
{
    assert_true(len >= 16);
    char *r = malloc(len + 1);
    assert_non_null(r);
    int n = snprintf(r, len + 1, "{\"i\":%llu,\"p\":\"", (unsigned long long)i);
    assert_true(n > 0 && (size_t)n + 2 <= len);
    for (size_t k = (size_t)n; k < len - 2; k++)
        r[k] = (char)('a' + (i + k) % 26);
    r[len - 2] = '"';
    r[len - 1] = '}';
    r[len] = 0;
    return r;
}

/* Appends one row in its own transaction; returns its seq. */
static uint64_t append1(struct spool *s, uint32_t dest, const char *row, size_t len,
                        uint64_t time_ms)
{
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    uint64_t seq = 0;
    assert_int_equal(spool_txn_append(t, dest, row, len, time_ms, &seq), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    return seq;
}

static void remove1(struct spool *s, uint32_t dest, uint64_t seq)
{
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove(t, dest, seq), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
}

/* Records passed to a spool_read callback, copied. */
struct rec {
    uint32_t dest;
    uint64_t seq, time_ms;
    char *row;
    size_t len;
    bool corrupt;
    char problem[160];
};

struct recs {
    struct rec *v;
    size_t n, cap;
    size_t stop_after;      /* callback returns 1 after this many (0: never) */
};

static int collect(const struct spool_record *r, void *arg)
{
    struct recs *rs = arg;
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? rs->cap * 2 : 16;
        rs->v = realloc(rs->v, rs->cap * sizeof *rs->v);
        assert_non_null(rs->v);
    }
    struct rec *c = &rs->v[rs->n++];
    memset(c, 0, sizeof *c);
    c->dest = r->dest;
    c->seq = r->seq;
    c->time_ms = r->time_ms;
    c->len = r->len;
    c->row = malloc(r->len ? r->len : 1);
    assert_non_null(c->row);
    if (r->len)
        memcpy(c->row, r->row, r->len);
    c->corrupt = r->corrupt;
    if (r->corrupt) {
        assert_non_null(r->problem);
        snprintf(c->problem, sizeof c->problem, "%s", r->problem);
    }
    return rs->stop_after && rs->n >= rs->stop_after;
}

static void recs_free(struct recs *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        free(rs->v[i].row);
    free(rs->v);
    memset(rs, 0, sizeof *rs);
}

static void read_all(struct spool *s, uint32_t dest, uint64_t from, size_t max_records,
                     size_t max_bytes, struct recs *rs)
{
    assert_int_equal(spool_read(s, dest, from, max_records, max_bytes, collect, rs), SPOOL_OK);
}

static struct spool_stats *get_stats(struct spool *s)
{
    struct spool_stats *st = malloc(sizeof *st);
    assert_non_null(st);
    assert_int_equal(spool_stats(s, st), SPOOL_OK);
    return st;
}

static const struct spool_dest_stats *find_dstats(const struct spool_stats *st, uint32_t id)
{
    for (size_t i = 0; i < st->n_dests; i++)
        if (st->dests[i].id == id)
            return &st->dests[i];
    fail_msg("destination %u missing from stats", id);
    return NULL;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static void be64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (56 - 8 * i));
}

static uint64_t rd_be64(const void *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | ((const unsigned char *)p)[i];
    return v;
}

static uint32_t rd_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- raw LMDB access (only while no struct spool has the env open) ---- */

static MDB_env *raw_open(const char *dir, bool readonly)
{
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, SPOOL_MAX_DESTS + 8), 0);
    /* at least the file: LMDB keeps the larger of this and the file size */
    assert_int_equal(mdb_env_set_mapsize(env, 64u << 20), 0);
    int rc = mdb_env_open(env, dir, readonly ? MDB_RDONLY : 0, 0600);
    if (rc)
        fail_msg("mdb_env_open(%s): %s", dir, mdb_strerror(rc));
    return env;
}

/* Replaces the value of (q.<dest>, seq) with val[0..len). */
static void raw_put_record(const char *dir, uint32_t dest, uint64_t seq, const void *val,
                           size_t len)
{
    MDB_env *env = raw_open(dir, false);
    MDB_txn *txn;
    MDB_dbi dbi;
    char name[32];
    snprintf(name, sizeof name, "q.%u", dest);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
    unsigned char kb[8];
    be64(kb, seq);
    MDB_val k = { 8, kb }, v = { len, (void *)val };
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Copies out the stored value of (q.<dest>, seq). Caller frees. */
static unsigned char *raw_get_record(const char *dir, uint32_t dest, uint64_t seq, size_t *len)
{
    MDB_env *env = raw_open(dir, true);
    MDB_txn *txn;
    MDB_dbi dbi;
    char name[32];
    snprintf(name, sizeof name, "q.%u", dest);
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
    unsigned char kb[8];
    be64(kb, seq);
    MDB_val k = { 8, kb }, v;
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    unsigned char *copy = malloc(v.mv_size ? v.mv_size : 1);
    assert_non_null(copy);
    memcpy(copy, v.mv_data, v.mv_size);
    *len = v.mv_size;
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return copy;
}

/* Copies out the dead-letter entry stored under seq; NULL if absent. */
static unsigned char *raw_get_dlq(const char *dir, uint64_t seq, size_t *len)
{
    MDB_env *env = raw_open(dir, true);
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "dlq", 0, &dbi), 0);
    unsigned char kb[8];
    be64(kb, seq);
    MDB_val k = { 8, kb }, v;
    unsigned char *copy = NULL;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == 0) {
        copy = malloc(v.mv_size ? v.mv_size : 1);
        assert_non_null(copy);
        memcpy(copy, v.mv_data, v.mv_size);
        *len = v.mv_size;
    } else {
        assert_int_equal(rc, MDB_NOTFOUND);
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return copy;
}

/* ------------------------------------------------------------------------ */
/* Opening                                                                  */
/* ------------------------------------------------------------------------ */

static void test_open_creates_dir_and_files(void **state)
{
    struct fixture *f = *state;
    mode_t old = umask(022);
    struct stat st;
    assert_int_equal(stat(f->dir, &st), -1);
    struct spool *s = open_spool(f, 8u << 20);

    assert_int_equal(stat(f->dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0700);

    char path[256];
    snprintf(path, sizeof path, "%s/data.mdb", f->dir);
    assert_string_equal(spool_path(s), path);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_true(st.st_size > 0);
    snprintf(path, sizeof path, "%s/lock.mdb", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    umask(old);
}

static void test_open_existing_empty_dir(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(mkdir(f->dir, 0700), 0);
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    const char row[] = "{\"x\":1}";
    assert_int_equal(append1(s, a, row, 7, 1), 1);
}

static void test_readonly_missing_dir(void **state)
{
    struct fixture *f = *state;
    struct spool_opts o = { .dir = f->dir, .max_bytes = 8u << 20, .readonly = true };
    struct spool *s = NULL;
    char err[512] = "";
    int rc = spool_open(&o, &s, err, sizeof err);
    assert_int_not_equal(rc, SPOOL_OK);
    assert_int_equal(rc, SPOOL_NOTFOUND);
    assert_null(s);
    assert_non_null(strstr(err, f->dir));
    assert_true(strlen(err) > strlen(f->dir) + 5);
    /* nothing was created */
    struct stat st;
    assert_int_equal(stat(f->dir, &st), -1);
    assert_int_equal(errno, ENOENT);
}

static void test_open_parent_missing_fails(void **state)
{
    struct fixture *f = *state;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/no/such/parent", f->base);
    struct spool_opts o = { .dir = dir, .max_bytes = 8u << 20 };
    struct spool *s = NULL;
    char err[512] = "";
    int rc = spool_open(&o, &s, err, sizeof err);
    assert_int_not_equal(rc, SPOOL_OK);
    assert_null(s);
    assert_non_null(strstr(err, dir));
}

static void test_readonly_open(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "alpha");
    char *row = make_row(1, 40);
    uint64_t seq = append1(s, a, row, 40, 1234);
    close_spool(f);

    f->s = s = open_opts(f->dir, 8u << 20, SPOOL_SYNC, true);
    uint32_t id = 0;
    assert_int_equal(spool_dest(s, "alpha", false, &id), SPOOL_OK);
    assert_int_equal(id, a);
    /* cannot create or write */
    assert_int_equal(spool_dest(s, "beta", true, &id), SPOOL_NOTFOUND);
    struct spool_txn *t = NULL;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_INVAL);
    struct recs rs = { 0 };
    read_all(s, a, 0, 100, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.v[0].seq, seq);
    assert_int_equal(rs.v[0].time_ms, 1234);
    assert_memory_equal(rs.v[0].row, row, 40);
    recs_free(&rs);
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->records, 1);
    free(st);
    free(row);
}

/* ------------------------------------------------------------------------ */
/* Destinations                                                             */
/* ------------------------------------------------------------------------ */

static void test_destinations(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "alpha");
    uint32_t b = dest_id(s, "beta");
    assert_int_not_equal(a, b);
    /* looked up again: the same ids, with or without create */
    uint32_t id = 0;
    assert_int_equal(spool_dest(s, "alpha", false, &id), SPOOL_OK);
    assert_int_equal(id, a);
    assert_int_equal(spool_dest(s, "beta", true, &id), SPOOL_OK);
    assert_int_equal(id, b);
    /* unknown without create */
    id = 777;
    assert_int_equal(spool_dest(s, "gamma", false, &id), SPOOL_NOTFOUND);
    assert_int_equal(spool_dest(s, "alph", false, &id), SPOOL_NOTFOUND);
    assert_int_equal(spool_dest(s, "alphaa", false, &id), SPOOL_NOTFOUND);
    /* names */
    assert_string_equal(spool_dest_name(s, a), "alpha");
    assert_string_equal(spool_dest_name(s, b), "beta");
    assert_null(spool_dest_name(s, 0));
    assert_null(spool_dest_name(s, 999));
    assert_null(spool_dest_name(s, SPOOL_MAX_DESTS + 1));
    assert_null(spool_dest_name(s, UINT32_MAX));
    /* bad names */
    assert_int_equal(spool_dest(s, "", true, &id), SPOOL_INVAL);
    char name[SPOOL_DEST_MAX + 2];
    memset(name, 'n', SPOOL_DEST_MAX + 1);
    name[SPOOL_DEST_MAX + 1] = 0;
    assert_int_equal(spool_dest(s, name, true, &id), SPOOL_INVAL);
    name[SPOOL_DEST_MAX] = 0;
    uint32_t longest = dest_id(s, name);
    assert_string_equal(spool_dest_name(s, longest), name);

    /* stable across reopen; a new one gets a fresh id */
    close_spool(f);
    s = open_spool(f, 8u << 20);
    assert_int_equal(spool_dest(s, "alpha", false, &id), SPOOL_OK);
    assert_int_equal(id, a);
    assert_int_equal(spool_dest(s, "beta", false, &id), SPOOL_OK);
    assert_int_equal(id, b);
    assert_int_equal(spool_dest(s, name, false, &id), SPOOL_OK);
    assert_int_equal(id, longest);
    assert_string_equal(spool_dest_name(s, a), "alpha");
    assert_int_equal(spool_dest(s, "gamma", false, &id), SPOOL_NOTFOUND);
    uint32_t g = dest_id(s, "gamma");
    assert_int_not_equal(g, a);
    assert_int_not_equal(g, b);
    assert_int_not_equal(g, longest);
    assert_int_equal(spool_refresh_dests(s), SPOOL_OK);
    assert_string_equal(spool_dest_name(s, g), "gamma");

    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->n_dests, 4);
    assert_string_equal(find_dstats(st, a)->name, "alpha");
    assert_string_equal(find_dstats(st, g)->name, "gamma");
    free(st);
}

/* ------------------------------------------------------------------------ */
/* Appending and reading                                                    */
/* ------------------------------------------------------------------------ */

static void test_append_and_read_in_order(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a"), b = dest_id(s, "b");
    enum { N = 20 };
    uint64_t seqs[N];
    size_t lens[N];
    struct spool_txn *t;
    /* two transactions, rows alternating between two destinations */
    for (int part = 0; part < 2; part++) {
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        for (int i = part * N / 2; i < (part + 1) * N / 2; i++) {
            lens[i] = 16 + (size_t)i * 13;
            char *row = make_row((uint64_t)i, lens[i]);
            assert_int_equal(spool_txn_append(t, i % 2 ? b : a, row, lens[i],
                                              1000000 + (uint64_t)i, &seqs[i]), SPOOL_OK);
            free(row);
        }
        assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    }
    /* seqs are global and grow */
    for (int i = 1; i < N; i++)
        assert_true(seqs[i] > seqs[i - 1]);

    for (int d = 0; d < 2; d++) {
        struct recs rs = { 0 };
        read_all(s, d ? b : a, 0, 1000, SIZE_MAX, &rs);
        assert_int_equal(rs.n, N / 2);
        for (size_t k = 0; k < rs.n; k++) {
            int i = (int)k * 2 + d;
            char *row = make_row((uint64_t)i, lens[i]);
            assert_false(rs.v[k].corrupt);
            assert_int_equal(rs.v[k].dest, d ? b : a);
            assert_int_equal(rs.v[k].seq, seqs[i]);
            assert_int_equal(rs.v[k].time_ms, 1000000 + (uint64_t)i);
            assert_int_equal(rs.v[k].len, lens[i]);
            assert_memory_equal(rs.v[k].row, row, lens[i]);
            free(row);
        }
        recs_free(&rs);
    }

    /* an empty row is a row */
    uint64_t e = append1(s, a, "", 0, 5);
    struct recs rs = { 0 };
    read_all(s, a, e, 10, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.v[0].seq, e);
    assert_int_equal(rs.v[0].len, 0);
    assert_false(rs.v[0].corrupt);
    recs_free(&rs);

    /* unknown destinations */
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    uint64_t seq;
    assert_int_equal(spool_txn_append(t, 0, "{}", 2, 1, &seq), SPOOL_INVAL);
    assert_int_equal(spool_txn_append(t, 999, "{}", 2, 1, &seq), SPOOL_INVAL);
    assert_int_equal(spool_txn_remove(t, 999, 1), SPOOL_INVAL);
    spool_txn_abort(t);
    assert_int_equal(spool_read(s, 999, 0, 10, SIZE_MAX, collect, &rs), SPOOL_INVAL);
    assert_int_equal(rs.n, 0);
}

static void test_seq_persists_across_reopen(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    uint64_t last = 0;
    for (int i = 0; i < 5; i++) {
        uint64_t seq = append1(s, a, "{\"x\":1}", 7, (uint64_t)i + 1);
        assert_true(seq > last);
        last = seq;
    }
    /* removing the newest does not let its seq be used again */
    remove1(s, a, last);
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->next_seq, last + 1);
    free(st);
    close_spool(f);

    s = open_spool(f, 8u << 20);
    st = get_stats(s);
    assert_int_equal(st->next_seq, last + 1);
    assert_int_equal(st->records, 4);
    free(st);
    uint64_t seq = append1(s, a, "{\"x\":2}", 7, 9);
    assert_int_equal(seq, last + 1);
    /* the records written before are all there */
    struct recs rs = { 0 };
    read_all(s, a, 0, 100, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 5);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(rs.v[i].time_ms, i + 1);
        assert_memory_equal(rs.v[i].row, "{\"x\":1}", 7);
    }
    assert_int_equal(rs.v[4].seq, last + 1);
    recs_free(&rs);
    close_spool(f);

    s = open_spool(f, 8u << 20);
    assert_int_equal(append1(s, a, "{}", 2, 1), last + 2);
}

static void test_read_from_seq_and_limits(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    enum { N = 10 };
    uint64_t seqs[N];
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    for (int i = 0; i < N; i++) {
        char *row = make_row((uint64_t)i, 100);
        assert_int_equal(spool_txn_append(t, a, row, 100, 1, &seqs[i]), SPOOL_OK);
        free(row);
    }
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);

    struct recs rs = { 0 };
    /* from an existing seq */
    read_all(s, a, seqs[4], 1000, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 6);
    assert_int_equal(rs.v[0].seq, seqs[4]);
    assert_int_equal(rs.v[5].seq, seqs[9]);
    recs_free(&rs);
    /* from a gap: the next one */
    remove1(s, a, seqs[5]);
    read_all(s, a, seqs[5], 1000, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 4);
    assert_int_equal(rs.v[0].seq, seqs[6]);
    recs_free(&rs);
    /* past the end */
    read_all(s, a, seqs[9] + 1, 1000, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 0);
    read_all(s, a, UINT64_MAX, 1000, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 0);
    /* max_records */
    read_all(s, a, 0, 3, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 3);
    assert_int_equal(rs.v[2].seq, seqs[2]);
    recs_free(&rs);
    read_all(s, a, 0, 0, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 0);
    /* max_bytes: 250 bytes hold two 100-byte rows */
    read_all(s, a, 0, 1000, 250, &rs);
    assert_int_equal(rs.n, 2);
    recs_free(&rs);
    read_all(s, a, 0, 1000, 300, &rs);
    assert_int_equal(rs.n, 3);
    recs_free(&rs);
    read_all(s, a, 0, 1000, 299, &rs);
    assert_int_equal(rs.n, 2);
    recs_free(&rs);
    /* at least one, even when it alone is larger than max_bytes */
    read_all(s, a, 0, 1000, 50, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.v[0].seq, seqs[0]);
    recs_free(&rs);
    read_all(s, a, seqs[3], 1000, 0, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.v[0].seq, seqs[3]);
    recs_free(&rs);
    /* both limits: the tighter wins */
    read_all(s, a, 0, 2, 1000, &rs);
    assert_int_equal(rs.n, 2);
    recs_free(&rs);
    /* the callback stops it */
    rs.stop_after = 4;
    read_all(s, a, 0, 1000, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 4);
    recs_free(&rs);
    /* an empty destination */
    uint32_t b = dest_id(s, "b");
    read_all(s, b, 0, 1000, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 0);
}

/* spool_read fetches records some way ahead of its callback (READ_AHEAD in
 * spool.c, 16): whatever the limits, the callback sees exactly the records
 * it would see one at a time, in order, with their own bytes, across many
 * windows, gaps and stops. Row i is 20 + i % 37 bytes, so that rows differ
 * in size and a byte limit falls anywhere. */
static void test_read_ahead_windows(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    enum { N = 200 };
    uint64_t seqs[N];
    size_t lens[N];
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    for (int i = 0; i < N; i++) {
        lens[i] = 20 + (size_t)i % 37;
        char *row = make_row((uint64_t)i, lens[i]);
        assert_int_equal(spool_txn_append(t, a, row, lens[i], 1, &seqs[i]), SPOOL_OK);
        free(row);
    }
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    /* gaps, one at a window's edge and a run of them across one */
    bool gone[N] = { false };
    const int holes[] = { 15, 16, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 99 };
    for (size_t h = 0; h < sizeof holes / sizeof holes[0]; h++) {
        remove1(s, a, seqs[holes[h]]);
        gone[holes[h]] = true;
    }
    const size_t maxrec[] = { 1, 15, 16, 17, 31, 32, 33, 100, N, 1000 };
    const size_t maxbytes[] = { SIZE_MAX, 0, 100, 777, 2000 };
    const size_t stops[] = { 0, 1, 16, 17, 50 };
    const int froms[] = { 0, 14, 15, 40, 150, 199 };
    for (size_t fi = 0; fi < sizeof froms / sizeof froms[0]; fi++)
    for (size_t mi = 0; mi < sizeof maxrec / sizeof maxrec[0]; mi++)
    for (size_t bi = 0; bi < sizeof maxbytes / sizeof maxbytes[0]; bi++)
    for (size_t si = 0; si < sizeof stops / sizeof stops[0]; si++) {
        /* what one record at a time gives */
        int want[N];
        size_t nwant = 0, bytes = 0;
        for (int i = froms[fi]; i < N && nwant < maxrec[mi]; i++) {
            if (gone[i])
                continue;
            if (nwant > 0 && bytes + lens[i] > maxbytes[bi])
                break;
            want[nwant++] = i;
            bytes += lens[i];
            if (stops[si] && nwant >= stops[si])
                break;
        }
        struct recs rs = { .stop_after = stops[si] };
        read_all(s, a, seqs[froms[fi]], maxrec[mi], maxbytes[bi], &rs);
        assert_int_equal(rs.n, nwant);
        for (size_t k = 0; k < nwant; k++) {
            int i = want[k];
            assert_int_equal(rs.v[k].seq, seqs[i]);
            assert_false(rs.v[k].corrupt);
            char *row = make_row((uint64_t)i, lens[i]);
            assert_int_equal(rs.v[k].len, lens[i]);
            assert_memory_equal(rs.v[k].row, row, lens[i]);
            free(row);
        }
        recs_free(&rs);
    }
}

static void test_abort_leaves_nothing(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    uint64_t first = append1(s, a, "{\"k\":0}", 7, 10);
    struct spool_stats *before = get_stats(s);

    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    for (int i = 0; i < 50; i++) {
        uint64_t seq;
        assert_int_equal(spool_txn_append(t, a, "{\"k\":1}", 7, 20, &seq), SPOOL_OK);
    }
    assert_int_equal(spool_txn_remove(t, a, first), SPOOL_OK);
    spool_txn_abort(t);
    spool_txn_abort(NULL);

    struct spool_stats *after = get_stats(s);
    assert_int_equal(after->records, before->records);
    assert_int_equal(after->records, 1);
    assert_int_equal(after->bytes, 7);
    assert_int_equal(after->next_seq, before->next_seq);
    assert_int_equal(find_dstats(after, a)->bytes, 7);
    struct recs rs = { 0 };
    read_all(s, a, 0, 1000, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.v[0].seq, first);
    assert_int_equal(rs.v[0].time_ms, 10);
    recs_free(&rs);
    free(before);
    free(after);

    /* and the next seq is still larger than everything committed */
    assert_true(append1(s, a, "{}", 2, 1) > first);
}

static void test_remove_and_stats(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a"), b = dest_id(s, "b");

    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->records, 0);
    assert_int_equal(st->bytes, 0);
    assert_int_equal(st->dlq_records, 0);
    assert_int_equal(st->next_seq, 1);
    assert_int_equal(st->n_dests, 2);
    assert_int_equal(find_dstats(st, a)->oldest_ms, 0);
    assert_int_equal(st->max_bytes, 8u << 20);
    free(st);

    /* a: 3 rows of 30, 40, 50 bytes at times 111, 222, 333; b: one of 60 */
    uint64_t sa[3];
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    for (int i = 0; i < 3; i++) {
        char *row = make_row((uint64_t)i, 30 + 10 * (size_t)i);
        assert_int_equal(spool_txn_append(t, a, row, 30 + 10 * (size_t)i,
                                          111 * (uint64_t)(i + 1), &sa[i]), SPOOL_OK);
        free(row);
    }
    char *row = make_row(9, 60);
    uint64_t sb;
    assert_int_equal(spool_txn_append(t, b, row, 60, 999, &sb), SPOOL_OK);
    free(row);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);

    st = get_stats(s);
    assert_int_equal(st->records, 4);
    assert_int_equal(st->bytes, 30 + 40 + 50 + 60);
    assert_int_equal(find_dstats(st, a)->records, 3);
    assert_int_equal(find_dstats(st, a)->bytes, 120);
    assert_int_equal(find_dstats(st, a)->oldest_ms, 111);
    assert_int_equal(find_dstats(st, b)->records, 1);
    assert_int_equal(find_dstats(st, b)->bytes, 60);
    assert_int_equal(find_dstats(st, b)->oldest_ms, 999);
    assert_int_equal(st->next_seq, sb + 1);
    assert_true(st->file_bytes > 0);
    assert_true(st->used_bytes > 0);
    assert_true(st->used_bytes <= st->file_bytes);
    assert_int_equal(st->file_bytes, file_size(spool_path(s)));
    free(st);

    /* remove the oldest of a: oldest moves on */
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove(t, a, sa[0]), SPOOL_OK);
    /* a missing seq, a seq of the other destination, a removed one */
    assert_int_equal(spool_txn_remove(t, a, sb), SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_remove(t, a, sb + 100), SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_remove(t, a, sa[0]), SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_remove(t, b, sa[1]), SPOOL_NOTFOUND);
    /* the transaction is still good after NOTFOUND */
    assert_int_equal(spool_txn_remove(t, b, sb), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);

    st = get_stats(s);
    assert_int_equal(st->records, 2);
    assert_int_equal(st->bytes, 90);
    assert_int_equal(find_dstats(st, a)->records, 2);
    assert_int_equal(find_dstats(st, a)->bytes, 90);
    assert_int_equal(find_dstats(st, a)->oldest_ms, 222);
    assert_int_equal(find_dstats(st, b)->records, 0);
    assert_int_equal(find_dstats(st, b)->bytes, 0);
    assert_int_equal(find_dstats(st, b)->oldest_ms, 0);
    free(st);

    /* the byte counts survive a reopen */
    close_spool(f);
    s = open_spool(f, 8u << 20);
    st = get_stats(s);
    assert_int_equal(st->records, 2);
    assert_int_equal(find_dstats(st, a)->bytes, 90);
    free(st);

    remove1(s, a, sa[1]);
    remove1(s, a, sa[2]);
    st = get_stats(s);
    assert_int_equal(st->records, 0);
    assert_int_equal(st->bytes, 0);
    assert_int_equal(find_dstats(st, a)->oldest_ms, 0);
    assert_int_equal(st->next_seq, sb + 1);
    free(st);
}

/* spool_txn_remove_run: runs across many pages, gaps, seqs already gone or of
 * another destination, descending order; what remains and the byte counts
 * are exactly what one spool_txn_remove per seq leaves. */
static void test_remove_run(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 64u << 20);
    uint32_t a = dest_id(s, "a"), b = dest_id(s, "b");
    enum { N = 5000 };
    uint64_t *sa = malloc(N * sizeof *sa), sb[10];
    size_t *len = malloc(N * sizeof *len);
    bool *gone = calloc(N, sizeof *gone);
    assert_non_null(sa);
    assert_non_null(len);
    assert_non_null(gone);
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    for (size_t i = 0; i < N; i++) {
        len[i] = 20 + (i * 37) % 300;   /* ~ 30 rows a page: many pages */
        char *row = make_row(i, len[i]);
        assert_int_equal(spool_txn_append(t, a, row, len[i], 1000 + i, &sa[i]), SPOOL_OK);
        free(row);
        if (i % 500 == 0) {
            row = make_row(i, 50);
            assert_int_equal(spool_txn_append(t, b, row, 50, 1, &sb[i / 500]), SPOOL_OK);
            free(row);
        }
    }
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);

    /* 1: one long run [0, 2000) with b's seqs and a missing one mixed in */
    uint64_t *run = malloc((N + 20) * sizeof *run);
    assert_non_null(run);
    size_t n = 0, removed = 0;
    for (size_t i = 0; i < 2000; i++) {
        run[n++] = sa[i];
        gone[i] = true;
        if (i == 700)
            run[n++] = sb[3];            /* another destination's seq: not here */
        if (i == 1500)
            run[n++] = sa[N - 1] + 999;  /* no such seq */
    }
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove_run(t, a, run, n, &removed), SPOOL_OK);
    assert_int_equal(removed, 2000);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);

    /* 2: every third row of [2000, 4000), already removed ones again, then a
     * descending run [4500, 4600) */
    n = 0;
    for (size_t i = 2000; i < 4000; i += 3) {
        run[n++] = sa[i];
        gone[i] = true;
    }
    run[n++] = sa[10];   /* removed in step 1 */
    for (size_t i = 4600; i-- > 4500;) {
        run[n++] = sa[i];
        gone[i] = true;
    }
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove_run(t, a, run, n, &removed), SPOOL_OK);
    assert_int_equal(removed, n - 1);
    assert_int_equal(spool_txn_remove_run(t, a, run, 0, &removed), SPOOL_OK);
    assert_int_equal(removed, 0);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);

    /* what is left: exactly the rows not removed, and b untouched */
    struct recs rs = { 0 };
    read_all(s, a, 0, N, SIZE_MAX, &rs);
    size_t k = 0, bytes = 0;
    for (size_t i = 0; i < N; i++) {
        if (gone[i])
            continue;
        assert_true(k < rs.n);
        assert_int_equal(rs.v[k].seq, sa[i]);
        assert_int_equal(rs.v[k].len, len[i]);
        bytes += len[i];
        k++;
    }
    assert_int_equal(rs.n, k);
    recs_free(&rs);
    struct spool_stats *st = get_stats(s);
    assert_int_equal(find_dstats(st, a)->records, k);
    assert_int_equal(find_dstats(st, a)->bytes, bytes);
    assert_int_equal(find_dstats(st, b)->records, 10);
    assert_int_equal(find_dstats(st, b)->bytes, 500);
    free(st);

    /* the rest in one go (and an invalid destination) */
    n = 0;
    for (size_t i = 0; i < N; i++)
        if (!gone[i])
            run[n++] = sa[i];
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove_run(t, 77, run, n, &removed), SPOOL_INVAL);
    assert_int_equal(spool_txn_remove_run(t, a, run, n, NULL), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    st = get_stats(s);
    assert_int_equal(find_dstats(st, a)->records, 0);
    assert_int_equal(find_dstats(st, a)->bytes, 0);
    assert_int_equal(st->records, 10);
    free(st);
    free(run);
    free(sa);
    free(len);
    free(gone);
}

static void test_large_rows(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 32u << 20);
    uint32_t a = dest_id(s, "a");
    const size_t sizes[] = { 4080, 4096, 100 << 10, 1 << 20, 3 << 20 };
    uint64_t seqs[5];
    for (size_t i = 0; i < 5; i++) {
        char *row = make_row(i, sizes[i]);
        seqs[i] = append1(s, a, row, sizes[i], 42 + i);
        free(row);
    }
    close_spool(f);
    s = open_spool(f, 32u << 20);
    struct recs rs = { 0 };
    read_all(s, a, 0, 100, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 5);
    for (size_t i = 0; i < 5; i++) {
        char *row = make_row(i, sizes[i]);
        assert_false(rs.v[i].corrupt);
        assert_int_equal(rs.v[i].seq, seqs[i]);
        assert_int_equal(rs.v[i].time_ms, 42 + i);
        assert_int_equal(rs.v[i].len, sizes[i]);
        assert_memory_equal(rs.v[i].row, row, sizes[i]);
        free(row);
    }
    recs_free(&rs);
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->bytes, 4080 + 4096 + (100 << 10) + (1 << 20) + (3 << 20));
    assert_true(st->used_bytes >= st->bytes);
    assert_true(st->used_bytes <= st->file_bytes);
    free(st);
}

/* ------------------------------------------------------------------------ */
/* Dead letters                                                             */
/* ------------------------------------------------------------------------ */

/* The wall clock in ms, at the resolution the code under test uses. Not
 * time(): it reads the coarse clock, which can lag a few ms behind, so a
 * bound taken from it can fall just short across a second boundary. */
static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void test_dead_letter(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    uint64_t seqs[3];
    char *rows[3];
    for (int i = 0; i < 3; i++) {
        rows[i] = make_row((uint64_t)i, 50);
        seqs[i] = append1(s, a, rows[i], 50, 5000 + (uint64_t)i);
    }
    uint64_t t0 = wall_ms();
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, a, seqs[1], "invalid",
                                           "no such field: p"), SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, a, seqs[1], "invalid", "again"),
                     SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_dead_letter(t, a, seqs[2] + 10, "invalid", "x"),
                     SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_dead_letter(t, 999, seqs[0], "invalid", "x"), SPOOL_INVAL);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    uint64_t t1 = wall_ms();

    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->dlq_records, 1);
    assert_int_equal(st->records, 2);
    assert_int_equal(st->bytes, 100);
    assert_int_equal(find_dstats(st, a)->bytes, 100);
    free(st);
    struct recs rs = { 0 };
    read_all(s, a, 0, 100, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.v[0].seq, seqs[0]);
    assert_int_equal(rs.v[1].seq, seqs[2]);
    recs_free(&rs);
    close_spool(f);

    size_t len = 0;
    unsigned char *buf = raw_get_dlq(f->dir, seqs[1], &len);
    assert_non_null(buf);
    struct dlq_entry e;
    assert_int_equal(dlq_decode(buf, len, seqs[1], &e), 0);
    assert_int_equal(e.seq, seqs[1]);
    assert_int_equal(e.dest, a);
    assert_int_equal(e.reason_len, 7);
    assert_memory_equal(e.reason, "invalid", 7);
    assert_int_equal(e.detail_len, strlen("no such field: p"));
    assert_memory_equal(e.detail, "no such field: p", e.detail_len);
    assert_int_equal(e.row_len, 50);
    assert_memory_equal(e.row, rows[1], 50);
    assert_int_equal(e.enqueued_ms, 5001);
    if (!(e.dead_ms >= t0 && e.dead_ms <= t1))
        fail_msg("dead_ms %llu not in [%llu, %llu]", (unsigned long long)e.dead_ms, (unsigned long long)t0, (unsigned long long)t1);
    /* stored under its own seq only */
    assert_int_equal(dlq_decode(buf, len, seqs[0], &e), -1);
    free(buf);
    assert_null(raw_get_dlq(f->dir, seqs[0], &len));

    /* the dead letter survives a reopen */
    s = open_spool(f, 8u << 20);
    st = get_stats(s);
    assert_int_equal(st->dlq_records, 1);
    free(st);
    for (int i = 0; i < 3; i++)
        free(rows[i]);
}

/* ------------------------------------------------------------------------ */
/* Corruption                                                               */
/* ------------------------------------------------------------------------ */

static void test_corrupt_records(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    enum { N = 7 };
    uint64_t seqs[N];
    char *rows[N];
    for (int i = 0; i < N; i++) {
        rows[i] = make_row((uint64_t)i, 64);
        seqs[i] = append1(s, a, rows[i], 64, 7000 + (uint64_t)i);
    }
    close_spool(f);

    /* seq[1]: one bit of the row flipped */
    size_t len;
    unsigned char *v1 = raw_get_record(f->dir, a, seqs[1], &len);
    assert_int_equal(len, SPOOL_HDR + 64);
    v1[SPOOL_HDR + 20] ^= 0x04;
    raw_put_record(f->dir, a, seqs[1], v1, len);
    /* seq[3]: cut to 10 bytes, fewer than the header */
    unsigned char *v3 = raw_get_record(f->dir, a, seqs[3], &len);
    raw_put_record(f->dir, a, seqs[3], v3, 10);
    /* seq[4]: one bit of the enqueue time flipped */
    unsigned char *v4 = raw_get_record(f->dir, a, seqs[4], &len);
    v4[9] ^= 0x80;
    raw_put_record(f->dir, a, seqs[4], v4, len);
    /* seq[5]: a different version byte */
    unsigned char *v5 = raw_get_record(f->dir, a, seqs[5], &len);
    v5[4] = 9;
    raw_put_record(f->dir, a, seqs[5], v5, len);
    /* seq[6]: cut to 16 + 10 (the header is whole, the row is not) */
    unsigned char *v6 = raw_get_record(f->dir, a, seqs[6], &len);
    raw_put_record(f->dir, a, seqs[6], v6, SPOOL_HDR + 10);

    s = open_spool(f, 8u << 20);
    struct recs rs = { 0 };
    read_all(s, a, 0, 100, SIZE_MAX, &rs);
    assert_int_equal(rs.n, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs.v[i].seq, seqs[i]);
        assert_int_equal(rs.v[i].dest, a);
        bool bad = i == 1 || i == 3 || i == 4 || i == 5 || i == 6;
        if (rs.v[i].corrupt != bad)
            fail_msg("record %d (seq %llu): corrupt=%d, want %d", i,
                     (unsigned long long)seqs[i], rs.v[i].corrupt, bad);
        if (!bad) {
            assert_int_equal(rs.v[i].len, 64);
            assert_memory_equal(rs.v[i].row, rows[i], 64);
            assert_int_equal(rs.v[i].time_ms, 7000 + (uint64_t)i);
        } else {
            assert_true(strlen(rs.v[i].problem) > 0);
        }
    }
    /* the raw value is passed for a corrupt record */
    assert_int_equal(rs.v[1].len, SPOOL_HDR + 64);
    assert_memory_equal(rs.v[1].row, v1, SPOOL_HDR + 64);
    assert_non_null(strstr(rs.v[1].problem, "checksum"));
    assert_int_equal(rs.v[3].len, 10);
    assert_memory_equal(rs.v[3].row, v3, 10);
    assert_non_null(strstr(rs.v[3].problem, "truncated"));
    assert_non_null(strstr(rs.v[4].problem, "checksum"));
    assert_non_null(strstr(rs.v[5].problem, "version"));
    assert_int_equal(rs.v[6].len, SPOOL_HDR + 10);
    recs_free(&rs);

    /* dead-letter two of them: their raw bytes are kept */
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, a, seqs[1], "corrupt", "checksum mismatch"),
                     SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, a, seqs[3], "corrupt", NULL), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->dlq_records, 2);
    assert_int_equal(st->records, N - 2);
    free(st);
    /* and a corrupt record can be removed like any other */
    remove1(s, a, seqs[4]);
    read_all(s, a, 0, 100, SIZE_MAX, &rs);
    assert_int_equal(rs.n, N - 3);
    assert_int_equal(rs.v[0].seq, seqs[0]);
    assert_int_equal(rs.v[1].seq, seqs[2]);
    assert_int_equal(rs.v[2].seq, seqs[5]);
    recs_free(&rs);
    close_spool(f);

    unsigned char *buf = raw_get_dlq(f->dir, seqs[1], &len);
    assert_non_null(buf);
    struct dlq_entry e;
    assert_int_equal(dlq_decode(buf, len, seqs[1], &e), 0);
    assert_int_equal(e.reason_len, 7);
    assert_memory_equal(e.reason, "corrupt", 7);
    assert_int_equal(e.detail_len, strlen("checksum mismatch"));
    assert_int_equal(e.dest, a);
    assert_int_equal(e.row_len, SPOOL_HDR + 64);
    assert_memory_equal(e.row, v1, SPOOL_HDR + 64);
    free(buf);

    buf = raw_get_dlq(f->dir, seqs[3], &len);
    assert_non_null(buf);
    assert_int_equal(dlq_decode(buf, len, seqs[3], &e), 0);
    assert_memory_equal(e.reason, "corrupt", 7);
    assert_int_equal(e.detail_len, 0);
    assert_int_equal(e.row_len, 10);
    assert_memory_equal(e.row, v3, 10);
    free(buf);

    free(v1);
    free(v3);
    free(v4);
    free(v5);
    free(v6);
    for (int i = 0; i < N; i++)
        free(rows[i]);
}

static void test_record_bound_to_its_key(void **state)
{
    struct fixture *f = *state;
    /* a sound record copied under another seq or into another queue fails
     * its checksum there: the checksum covers (dest, seq) */
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a"), b = dest_id(s, "b");
    uint64_t s1 = append1(s, a, "{\"n\":1}", 7, 1);
    uint64_t s2 = append1(s, a, "{\"n\":2}", 7, 2);
    uint64_t s3 = append1(s, b, "{\"n\":3}", 7, 3);
    close_spool(f);

    size_t len;
    unsigned char *v1 = raw_get_record(f->dir, a, s1, &len);
    raw_put_record(f->dir, a, s2, v1, len);     /* s1's record under s2 */
    raw_put_record(f->dir, b, s3, v1, len);     /* a's record in b's queue */
    free(v1);

    s = open_spool(f, 8u << 20);
    struct recs rs = { 0 };
    read_all(s, a, 0, 10, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 2);
    assert_false(rs.v[0].corrupt);
    assert_true(rs.v[1].corrupt);
    recs_free(&rs);
    read_all(s, b, 0, 10, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 1);
    assert_true(rs.v[0].corrupt);
    recs_free(&rs);
}

/* ------------------------------------------------------------------------ */
/* Chunks: the records one transaction appends to a destination, one value  */
/* ------------------------------------------------------------------------ */

/* Values (records or chunks) stored in q.<dest>, and how many are chunks.
 * Checks that no chunk takes overflow pages it leaves mostly empty: a chunk
 * is small enough for a leaf page (2,000 bytes) or filled to within a
 * record of 16 KiB. */
static size_t raw_values(const char *dir, uint32_t dest, size_t *chunks)
{
    MDB_env *env = raw_open(dir, true);
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *c;
    char name[32];
    snprintf(name, sizeof name, "q.%u", dest);
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
    assert_int_equal(mdb_cursor_open(txn, dbi, &c), 0);
    MDB_val k, v;
    size_t n = 0;
    *chunks = 0;
    for (int op = MDB_FIRST; mdb_cursor_get(c, &k, &v, op) == 0; op = MDB_NEXT) {
        n++;
        if (v.mv_size >= 16 && ((const unsigned char *)v.mv_data)[4] == 2) {
            (*chunks)++;
            if (v.mv_size > 2000 && v.mv_size < 4 * 4096 - 16 - 400)
                fail_msg("a chunk of %zu bytes: neither leaf-sized nor full", v.mv_size);
        }
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return n;
}

enum { CH_N = 1000, CH_BIG = 400 };   /* rows per destination; a's row CH_BIG is large */

struct chunked {
    uint32_t a, b;
    uint64_t sa[CH_N], sb[CH_N];
    size_t la[CH_N];
    uint64_t bytes_a;
};

static size_t ch_len(size_t i) { return i == CH_BIG ? 40000 : 40 + (i * 37) % 300; }

/* Appends CH_N rows to each of a and b, interleaved, in two transactions. */
static void fill_chunked(struct spool *s, struct chunked *c)
{
    c->a = dest_id(s, "a");
    c->b = dest_id(s, "b");
    c->bytes_a = 0;
    for (int half = 0; half < 2; half++) {
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        for (size_t i = half * CH_N / 2; i < (half + 1) * (size_t)CH_N / 2; i++) {
            c->la[i] = ch_len(i);
            char *r = make_row(i, c->la[i]);
            assert_int_equal(spool_txn_append(t, c->a, r, c->la[i], 5000 + i, &c->sa[i]),
                             SPOOL_OK);
            free(r);
            r = make_row(100000 + i, 50);
            assert_int_equal(spool_txn_append(t, c->b, r, 50, 9000 + i, &c->sb[i]), SPOOL_OK);
            free(r);
            c->bytes_a += c->la[i];
        }
        assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    }
}

/* Checks that reading a from seqs[from] gives rows from.. in order, except those
 * whose gone[] is set. */
static void check_chunked(struct spool *s, const struct chunked *c, size_t from,
                          const bool *gone)
{
    struct recs rs = { 0 };
    read_all(s, c->a, c->sa[from], SIZE_MAX, SIZE_MAX, &rs);
    size_t k = 0;
    for (size_t i = from; i < CH_N; i++) {
        if (gone && gone[i])
            continue;
        if (k >= rs.n)
            fail_msg("row %zu missing: %zu read", i, rs.n);
        struct rec *r = &rs.v[k++];
        if (r->seq != c->sa[i])
            fail_msg("record %zu: seq %llu, want %llu (row %zu)", k - 1,
                     (unsigned long long)r->seq, (unsigned long long)c->sa[i], i);
        assert_false(r->corrupt);
        assert_int_equal(r->len, c->la[i]);
        char *want = make_row(i, c->la[i]);
        assert_memory_equal(r->row, want, c->la[i]);
        free(want);
        assert_int_equal(r->time_ms, 5000 + i);
    }
    assert_int_equal(rs.n, k);
    recs_free(&rs);
}

static void test_chunks_round_trip(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 64u << 20);
    static struct chunked c;
    fill_chunked(s, &c);
    check_chunked(s, &c, 0, NULL);
    check_chunked(s, &c, 137, NULL);          /* from inside a chunk */
    check_chunked(s, &c, CH_BIG, NULL);       /* from the large row */
    check_chunked(s, &c, CH_N - 1, NULL);

    /* limits, from inside a chunk */
    struct recs rs = { 0 };
    read_all(s, c.a, c.sa[301], 7, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 7);
    assert_int_equal(rs.v[0].seq, c.sa[301]);
    assert_int_equal(rs.v[6].seq, c.sa[307]);
    recs_free(&rs);
    read_all(s, c.a, c.sa[301], SIZE_MAX, c.la[301] + c.la[302], &rs);
    assert_int_equal(rs.n, 2);
    recs_free(&rs);
    rs.stop_after = 3;
    read_all(s, c.a, c.sa[10], SIZE_MAX, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 3);
    assert_int_equal(rs.v[2].seq, c.sa[12]);
    recs_free(&rs);
    /* a seq of b's, between two of a's: a's next */
    read_all(s, c.a, c.sb[500], 1, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.v[0].seq, c.sa[501]);
    recs_free(&rs);
    read_all(s, c.a, c.sa[CH_N - 1] + 1, SIZE_MAX, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 0);

    struct spool_stats *st = get_stats(s);
    assert_int_equal(find_dstats(st, c.a)->records, CH_N);
    assert_int_equal(find_dstats(st, c.b)->records, CH_N);
    assert_int_equal(find_dstats(st, c.a)->bytes, c.bytes_a);
    assert_int_equal(find_dstats(st, c.b)->bytes, 50 * CH_N);
    assert_int_equal(find_dstats(st, c.a)->oldest_ms, 5000);
    assert_int_equal(st->records, 2 * CH_N);
    free(st);
    close_spool(f);

    /* chunks, and the large row a plain record of its own */
    size_t chunks, values = raw_values(f->dir, c.a, &chunks);
    assert_true(values < CH_N / 20);
    assert_int_equal(values - chunks, 1);
    s = open_spool(f, 64u << 20);
    check_chunked(s, &c, 0, NULL);
}

static void test_chunks_remove(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 64u << 20);
    static struct chunked c;
    fill_chunked(s, &c);
    static bool gone[CH_N];
    memset(gone, 0, sizeof gone);
    uint64_t bytes = c.bytes_a, records = CH_N;
    static uint64_t seqs[CH_N];
    size_t n = 0;
    /* every third of the first 300, then 300..450 whole, then 460 ascending
     * but with b's seqs mixed in (not a's: skipped) */
    for (size_t i = 0; i < 300; i += 3)
        seqs[n++] = c.sa[i];
    for (size_t i = 300; i < 450; i++)
        seqs[n++] = c.sa[i];
    seqs[n++] = c.sb[455];
    seqs[n++] = c.sa[460];
    size_t removed = 0;
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove_run(t, c.a, seqs, n, &removed), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    assert_int_equal(removed, n - 1);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < CH_N; j++)
            if (c.sa[j] == seqs[i] && !gone[j]) {
                gone[j] = true;
                bytes -= c.la[j];
                records--;
            }
    check_chunked(s, &c, 0, gone);
    struct spool_stats *st = get_stats(s);
    assert_int_equal(find_dstats(st, c.a)->records, records);
    assert_int_equal(find_dstats(st, c.a)->bytes, bytes);
    assert_int_equal(find_dstats(st, c.b)->records, CH_N);
    free(st);

    /* descending, and again (already gone: skipped) */
    n = 0;
    for (size_t i = 900; i > 600; i -= 7)
        seqs[n++] = c.sa[i];
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove_run(t, c.a, seqs, n, &removed), SPOOL_OK);
    assert_int_equal(removed, n);
    assert_int_equal(spool_txn_remove_run(t, c.a, seqs, n, &removed), SPOOL_OK);
    assert_int_equal(removed, 0);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    for (size_t i = 900; i > 600; i -= 7) {
        gone[i] = true;
        bytes -= c.la[i];
        records--;
    }
    /* one, then the same one again */
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove(t, c.a, c.sa[777]), SPOOL_OK);
    assert_int_equal(spool_txn_remove(t, c.a, c.sa[777]), SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    gone[777] = true;
    bytes -= c.la[777];
    records--;
    check_chunked(s, &c, 0, gone);
    check_chunked(s, &c, 1, gone);            /* from a removed record inside a chunk */
    check_chunked(s, &c, 450, gone);
    st = get_stats(s);
    assert_int_equal(find_dstats(st, c.a)->records, records);
    assert_int_equal(find_dstats(st, c.a)->bytes, bytes);
    assert_int_equal(find_dstats(st, c.a)->oldest_ms, 5001);
    free(st);
    close_spool(f);
    s = open_spool(f, 64u << 20);
    check_chunked(s, &c, 0, gone);

    /* the rest: the queue ends empty, its counts zero */
    n = 0;
    for (size_t i = 0; i < CH_N; i++)
        if (!gone[i])
            seqs[n++] = c.sa[i];
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove_run(t, c.a, seqs, n, &removed), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    assert_int_equal(removed, n);
    st = get_stats(s);
    assert_int_equal(find_dstats(st, c.a)->records, 0);
    assert_int_equal(find_dstats(st, c.a)->bytes, 0);
    free(st);
    close_spool(f);
    size_t chunks;
    assert_int_equal(raw_values(f->dir, c.a, &chunks), 0);
}

static void test_chunks_dead_letter_and_damage(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 64u << 20);
    static struct chunked c;
    fill_chunked(s, &c);
    close_spool(f);

    /* a bit of row 20 flipped, inside its chunk */
    MDB_env *env = raw_open(f->dir, false);
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    char name[32];
    snprintf(name, sizeof name, "q.%u", c.a);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
    assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
    unsigned char kb[8];
    be64(kb, c.sa[20]);
    MDB_val k = { 8, kb }, v;
    assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE), 0);
    if (memcmp(k.mv_data, kb, 8) != 0)
        assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_PREV), 0);
    const unsigned char *p = v.mv_data;
    assert_int_equal(p[4], 2);
    unsigned cn = p[6] | (unsigned)p[7] << 8;
    unsigned char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    uint64_t key1 = rd_be64(k.mv_data);
    size_t data = 16 + 8 * (size_t)cn, from = 0;
    unsigned idx;
    for (idx = 0; idx < cn; idx++) {
        if (key1 + rd_le32(copy + 16 + 8 * idx) == c.sa[20])
            break;
        from = rd_le32(copy + 20 + 8 * idx);
    }
    assert_true(idx < cn);
    copy[data + from + 16 + 5] ^= 0x20;
    unsigned char nk[8];
    memcpy(nk, k.mv_data, 8);
    MDB_val kk = { 8, nk }, nv = { v.mv_size, copy };
    assert_int_equal(mdb_cursor_put(cur, &kk, &nv, MDB_CURRENT), 0);
    free(copy);
    /* the directory of the chunk holding row 600 damaged */
    be64(kb, c.sa[600]);
    k = (MDB_val){ 8, kb };
    assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE), 0);
    if (memcmp(k.mv_data, kb, 8) != 0)
        assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_PREV), 0);
    p = v.mv_data;
    assert_int_equal(p[4], 2);
    unsigned n600 = p[6] | (unsigned)p[7] << 8;
    uint64_t key600 = rd_be64(k.mv_data);
    copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[16 + 8 * (n600 - 1) + 4] ^= 0x01;
    memcpy(nk, k.mv_data, 8);
    nv = (MDB_val){ v.mv_size, copy };
    assert_int_equal(mdb_cursor_put(cur, &kk, &nv, MDB_CURRENT), 0);
    free(copy);
    mdb_cursor_close(cur);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    s = open_spool(f, 64u << 20);
    struct recs rs = { 0 };
    read_all(s, c.a, 0, SIZE_MAX, SIZE_MAX, &rs);
    assert_int_equal(rs.n, CH_N - n600 + 1);
    size_t bad = 0;
    for (size_t i = 0; i < rs.n; i++) {
        if (!rs.v[i].corrupt)
            continue;
        bad++;
        if (rs.v[i].seq == c.sa[20]) {
            assert_non_null(strstr(rs.v[i].problem, "checksum"));
        } else {
            assert_int_equal(rs.v[i].seq, key600);
            assert_non_null(strstr(rs.v[i].problem, "chunk directory"));
        }
    }
    assert_int_equal(bad, 2);
    recs_free(&rs);

    /* dead-letter both, and one sound record from the middle of a chunk */
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, c.a, c.sa[20], "corrupt", "checksum"), SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, c.a, key600, "corrupt", "directory"), SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, c.a, c.sa[33], "invalid", "no such field"),
                     SPOOL_OK);
    assert_int_equal(spool_txn_dead_letter(t, c.a, c.sa[33], "invalid", NULL), SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->dlq_records, 3);
    assert_int_equal(find_dstats(st, c.a)->records, CH_N - n600 - 2);
    free(st);
    read_all(s, c.a, 0, SIZE_MAX, SIZE_MAX, &rs);
    assert_int_equal(rs.n, CH_N - n600 - 2);
    size_t k2 = 0;
    for (size_t i = 0; i < CH_N && k2 < rs.n; i++) {
        if (rs.v[k2].seq != c.sa[i])
            continue;      /* dead-lettered, or in the damaged chunk */
        assert_false(rs.v[k2].corrupt);
        k2++;
    }
    assert_int_equal(k2, rs.n);
    recs_free(&rs);
    close_spool(f);

    size_t len;
    unsigned char *buf = raw_get_dlq(f->dir, c.sa[33], &len);
    assert_non_null(buf);
    struct dlq_entry e;
    assert_int_equal(dlq_decode(buf, len, c.sa[33], &e), 0);
    char *want = make_row(33, c.la[33]);
    assert_int_equal(e.row_len, c.la[33]);
    assert_memory_equal(e.row, want, c.la[33]);
    assert_int_equal(e.enqueued_ms, 5033);
    free(want);
    free(buf);
    buf = raw_get_dlq(f->dir, key600, &len);
    assert_non_null(buf);
    assert_int_equal(dlq_decode(buf, len, key600, &e), 0);
    assert_true(e.row_len > 16 + 8 * (size_t)n600);     /* the whole chunk, raw */
    free(buf);
}

/* Rewrites the spool as format version 1 had it: the version, and 24-byte
 * destination entries without a record count. */
static void raw_make_v1(const char *dir)
{
    MDB_env *env = raw_open(dir, false);
    MDB_txn *txn;
    MDB_dbi meta, dests;
    MDB_cursor *c;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    assert_int_equal(mdb_dbi_open(txn, "dests", 0, &dests), 0);
    uint32_t ver = 1;
    MDB_val k = { 7, "version" }, v = { 4, &ver };
    assert_int_equal(mdb_put(txn, meta, &k, &v, 0), 0);
    assert_int_equal(mdb_cursor_open(txn, dests, &c), 0);
    for (int op = MDB_FIRST; mdb_cursor_get(c, &k, &v, op) == 0; op = MDB_NEXT) {
        assert_int_equal(v.mv_size, 32);
        unsigned char val[24], key[SPOOL_DEST_MAX];
        memcpy(val, v.mv_data, 24);
        memcpy(key, k.mv_data, k.mv_size);
        MDB_val nk = { k.mv_size, key }, nv = { 24, val };
        assert_int_equal(mdb_cursor_put(c, &nk, &nv, MDB_CURRENT), 0);
    }
    mdb_cursor_close(c);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static uint32_t raw_version(const char *dir, size_t *dest_entry)
{
    MDB_env *env = raw_open(dir, true);
    MDB_txn *txn;
    MDB_dbi meta, dests;
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    assert_int_equal(mdb_dbi_open(txn, "dests", 0, &dests), 0);
    MDB_val k = { 7, "version" }, v;
    assert_int_equal(mdb_get(txn, meta, &k, &v), 0);
    uint32_t ver;
    memcpy(&ver, v.mv_data, 4);
    MDB_cursor *c;
    assert_int_equal(mdb_cursor_open(txn, dests, &c), 0);
    assert_int_equal(mdb_cursor_get(c, &k, &v, MDB_FIRST), 0);
    *dest_entry = v.mv_size;
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return ver;
}

static void test_version1_spool_is_read_and_upgraded(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    uint32_t a = dest_id(s, "a");
    uint64_t seqs[5];
    for (int i = 0; i < 5; i++)
        seqs[i] = append1(s, a, "{\"v\":1}", 7, 100 + (uint64_t)i);   /* plain records */
    close_spool(f);
    raw_make_v1(f->dir);
    size_t entry;
    assert_int_equal(raw_version(f->dir, &entry), 1);
    assert_int_equal(entry, 24);

    /* read-only: read as it is, records counted by LMDB */
    struct spool *ro = open_opts(f->dir, 8u << 20, SPOOL_NOSYNC, true);
    struct spool_stats *st = get_stats(ro);
    assert_int_equal(find_dstats(st, a)->records, 5);
    assert_int_equal(find_dstats(st, a)->bytes, 35);
    free(st);
    spool_close(ro);
    assert_int_equal(raw_version(f->dir, &entry), 1);

    /* for writing: upgraded in place, and then chunks go beside the records */
    s = open_spool(f, 8u << 20);
    assert_int_equal(raw_version(f->dir, &entry), 2);
    assert_int_equal(entry, 32);
    st = get_stats(s);
    assert_int_equal(find_dstats(st, a)->records, 5);
    free(st);
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(spool_txn_append(t, a, "{\"v\":2}", 7, 200, NULL), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    remove1(s, a, seqs[2]);
    struct recs rs = { 0 };
    read_all(s, a, 0, SIZE_MAX, SIZE_MAX, &rs);
    assert_int_equal(rs.n, 14);
    for (size_t i = 0; i < rs.n; i++) {
        assert_false(rs.v[i].corrupt);
        assert_memory_equal(rs.v[i].row, i < 4 ? "{\"v\":1}" : "{\"v\":2}", 7);
    }
    recs_free(&rs);
    st = get_stats(s);
    assert_int_equal(find_dstats(st, a)->records, 14);
    assert_int_equal(find_dstats(st, a)->bytes, 14 * 7);
    free(st);
}

/* ------------------------------------------------------------------------ */
/* Full                                                                     */
/* ------------------------------------------------------------------------ */

#define FULL_ROW 4096

/* Appends rows of FULL_ROW bytes, per transactions of `per` rows, until the
 * spool refuses; checks the file never exceeds bound. Returns how many rows
 * were committed; seqs[] gets their seqs (room for max). */
static size_t fill(struct spool *s, uint32_t dest, size_t per, uint64_t bound,
                   uint64_t *seqs, size_t max, uint64_t first_index)
{
    size_t n = 0;
    bool full = false;
    for (int round = 0; round < 10000 && !full; round++) {
        if (!spool_has_room(s, (uint64_t)per * spool_footprint(FULL_ROW))) {
            full = true;
            break;
        }
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        uint64_t got[64];
        assert_true(per <= 64);
        int rc = SPOOL_OK;
        for (size_t i = 0; i < per && rc == SPOOL_OK; i++) {
            char *row = make_row(first_index + n + i, FULL_ROW);
            rc = spool_txn_append(t, dest, row, FULL_ROW, 100 + n + i, &got[i]);
            free(row);
        }
        if (rc != SPOOL_OK) {
            assert_int_equal(rc, SPOOL_FULL);
            spool_txn_abort(t);
            full = true;
            break;
        }
        rc = spool_txn_commit(t);
        if (rc == SPOOL_FULL) {
            full = true;
            break;
        }
        assert_int_equal(rc, SPOOL_OK);
        assert_true(n + per <= max);
        memcpy(seqs + n, got, per * sizeof *got);
        n += per;
        uint64_t fs = file_size(spool_path(s));
        if (fs > bound)
            fail_msg("data file is %llu bytes after %zu rows, above the bound %llu",
                     (unsigned long long)fs, n, (unsigned long long)bound);
    }
    assert_true(full);
    return n;
}

/* Checks rows [0, n) with seqs[] are stored intact (index offset first). */
static void check_rows(struct spool *s, uint32_t dest, const uint64_t *seqs, size_t from,
                       size_t n, uint64_t first_index)
{
    struct recs rs = { 0 };
    read_all(s, dest, seqs[from], n - from, SIZE_MAX, &rs);
    assert_int_equal(rs.n, n - from);
    for (size_t i = from; i < n; i++) {
        struct rec *r = &rs.v[i - from];
        char *row = make_row(first_index + i, FULL_ROW);
        assert_false(r->corrupt);
        assert_int_equal(r->seq, seqs[i]);
        assert_int_equal(r->len, FULL_ROW);
        assert_memory_equal(r->row, row, FULL_ROW);
        free(row);
    }
    recs_free(&rs);
}

/* The reserve documented in docs/configuration.md: 1/32 of the bound,
 * 256 KiB .. 64 MiB. */
static uint64_t doc_reserve(uint64_t max)
{
    uint64_t r = max / 32;
    if (r < (256u << 10))
        r = 256u << 10;
    if (r > (64ull << 20))
        r = 64ull << 20;
    return r;
}

static void test_full_keeps_reserve(void **state)
{
    struct fixture *f = *state;
    /* appends admitted by spool_has_room stop short of the bound by the
     * reserve: the pages in use never reach into it */
    const uint64_t max = 1u << 20;
    /* 200 per transaction: full chunks (16 KiB) and a leaf-sized tail */
    const size_t row_lens[] = { 60, 300, 1000, 2000, 4000, 4096, 8000 };
    const size_t pers[] = { 1, 16, 200 };
    char *row = make_row(7, 8000);
    for (size_t ri = 0; ri < sizeof row_lens / sizeof row_lens[0]; ri++) {
        for (size_t pi = 0; pi < sizeof pers / sizeof pers[0]; pi++) {
            char sub[160];
            snprintf(sub, sizeof sub, "%s/r%zu-%zu", f->base, ri, pi);
            struct spool *s = open_opts(sub, max, SPOOL_NOSYNC, false);
            uint32_t a = dest_id(s, "a");
            size_t len = row_lens[ri], per = pers[pi], n = 0;
            while (spool_has_room(s, (uint64_t)per * spool_footprint(len))) {
                struct spool_txn *t;
                assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
                for (size_t i = 0; i < per; i++)
                    assert_int_equal(spool_txn_append(t, a, row, len, 1, NULL), SPOOL_OK);
                assert_int_equal(spool_txn_commit(t), SPOOL_OK);
                n += per;
                assert_true(n < 100000);
            }
            struct spool_stats *st = get_stats(s);
            uint64_t used = st->used_bytes;
            free(st);
            spool_close(s);
            if (used > max - doc_reserve(max)) {
                free(row);
                fail_msg("rows of %zu bytes, %zu per transaction: %zu admitted, %llu bytes in "
                         "use, beyond the bound %llu less its reserve %llu", len, per, n,
                         (unsigned long long)used, (unsigned long long)max,
                         (unsigned long long)doc_reserve(max));
            }
        }
    }
    free(row);
}

static void test_full_and_drain(void **state)
{
    struct fixture *f = *state;
    const uint64_t max = 1u << 20;
    struct spool *s = open_spool(f, max);
    uint32_t a = dest_id(s, "a");
    uint64_t seqs[1024];

    size_t n = fill(s, a, 4, max, seqs, 1024, 0);
    /* it took some rows, and far fewer than would overrun the bound */
    assert_true(n >= 16);
    assert_true(n * FULL_ROW < max);
    assert_true(file_size(spool_path(s)) <= max);
    assert_false(spool_has_room(s, (uint64_t)(4) * spool_footprint(FULL_ROW)));
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->records, n);
    assert_int_equal(st->bytes, n * FULL_ROW);
    assert_true(st->used_bytes <= st->file_bytes);
    assert_true(st->file_bytes <= max);
    free(st);
    check_rows(s, a, seqs, 0, n, 0);

    /* the reserve: a transaction removing records still commits */
    size_t removed = 0;
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    for (; removed < 8; removed++)
        assert_int_equal(spool_txn_remove(t, a, seqs[removed]), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    check_rows(s, a, seqs, removed, n, 0);

    /* remove more until there is room again, then append works again */
    while (!spool_has_room(s, (uint64_t)(4) * spool_footprint(FULL_ROW))) {
        assert_true(removed < n);
        size_t k = removed + 8 <= n ? 8 : n - removed;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        for (size_t i = 0; i < k; i++)
            assert_int_equal(spool_txn_remove(t, a, seqs[removed + i]), SPOOL_OK);
        assert_int_equal(spool_txn_commit(t), SPOOL_OK);
        removed += k;
    }
    assert_true(removed < n);
    st = get_stats(s);
    assert_int_equal(st->records, n - removed);
    free(st);

    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    uint64_t ns[4];
    for (int i = 0; i < 4; i++) {
        char *row = make_row(5000 + (uint64_t)i, FULL_ROW);
        assert_int_equal(spool_txn_append(t, a, row, FULL_ROW, 1, &ns[i]), SPOOL_OK);
        free(row);
    }
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    assert_true(ns[0] > seqs[n - 1]);
    check_rows(s, a, seqs, removed, n, 0);
    check_rows(s, a, ns, 0, 4, 5000);
    assert_true(file_size(spool_path(s)) <= max);

    /* fill it again: the space freed is reused, the bound still holds */
    uint64_t more[1024];
    size_t m = fill(s, a, 4, max, more, 1024, 10000);
    assert_true(m >= 4);
    assert_true(file_size(spool_path(s)) <= max);
    check_rows(s, a, more, 0, m, 10000);
    close_spool(f);

    /* everything is still there after a reopen */
    s = open_spool(f, max);
    check_rows(s, a, seqs, removed, n, 0);
    check_rows(s, a, more, 0, m, 10000);
}

static void test_full_drain_to_empty(void **state)
{
    struct fixture *f = *state;
    const uint64_t max = 1u << 20;
    struct spool *s = open_spool(f, max);
    uint32_t a = dest_id(s, "a");
    uint64_t seqs[1024];
    size_t n = fill(s, a, 1, max, seqs, 1024, 0);
    assert_true(n > 0);
    /* drain one record per transaction: each must commit */
    for (size_t i = 0; i < n; i++) {
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        assert_int_equal(spool_txn_remove(t, a, seqs[i]), SPOOL_OK);
        int rc = spool_txn_commit(t);
        if (rc != SPOOL_OK)
            fail_msg("removing record %zu of %zu from a full spool: %s", i, n,
                     spool_strerror(rc));
    }
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->records, 0);
    assert_int_equal(st->bytes, 0);
    free(st);
    assert_true(spool_has_room(s, (uint64_t)(4) * spool_footprint(FULL_ROW)));
    assert_true(spool_has_room(s, spool_footprint(64 << 10)));
}

static void test_full_tiny_spool_can_drain(void **state)
{
    struct fixture *f = *state;
    /* below the 256 KiB minimum reserve: the spool must still refuse
     * appends before it is too full to run a removal */
    const uint64_t max = 192u << 10;
    struct spool *s = open_spool(f, max);
    uint32_t a = dest_id(s, "a");
    uint64_t seqs[1024];
    size_t n = fill(s, a, 1, max, seqs, 1024, 0);
    assert_true(n > 0);
    check_rows(s, a, seqs, 0, n, 0);
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove(t, a, seqs[0]), SPOOL_OK);
    int rc = spool_txn_commit(t);
    if (rc != SPOOL_OK)
        fail_msg("a %llu-byte spool filled with %zu rows cannot commit a removal: %s (%s)",
                 (unsigned long long)max, n, spool_strerror(rc), spool_last_error());
}

static void test_full_without_has_room_can_drain(void **state)
{
    struct fixture *f = *state;
    /* a writer that never asks spool_has_room: appends must still be
     * refused (SPOOL_FULL) before the reserve is gone, so that a
     * transaction removing records commits afterwards */
    const uint64_t max = 1u << 20;
    struct spool *s = open_spool(f, max);
    uint32_t a = dest_id(s, "a");
    uint64_t seqs[1024];
    size_t n = 0;
    int rc = SPOOL_OK;
    while (rc == SPOOL_OK) {
        assert_true(n < 1024);
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        char *row = make_row(n, FULL_ROW);
        rc = spool_txn_append(t, a, row, FULL_ROW, 1, &seqs[n]);
        free(row);
        if (rc != SPOOL_OK) {
            spool_txn_abort(t);
            break;
        }
        rc = spool_txn_commit(t);
        if (rc == SPOOL_OK)
            n++;
    }
    assert_int_equal(rc, SPOOL_FULL);
    assert_true(n > 0);
    assert_true(file_size(spool_path(s)) <= max);
    check_rows(s, a, seqs, 0, n, 0);
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_remove(t, a, seqs[0]), SPOOL_OK);
    assert_int_equal(spool_txn_remove(t, a, seqs[1]), SPOOL_OK);
    rc = spool_txn_commit(t);
    if (rc != SPOOL_OK)
        fail_msg("after %zu appends that were not refused until the map was exhausted, "
                 "removing records fails: %s (%s)", n, spool_strerror(rc),
                 spool_last_error());
}

/* Writes N rows of FULL_ROW bytes to a fresh 8 MiB spool, per rows per
 * transaction, closes it and reopens it with a 1 MiB bound. */
static struct spool *smaller_bound(struct fixture *f, uint32_t *a, uint64_t *seqs, size_t n,
                                   size_t per)
{
    struct spool *s = open_spool(f, 8u << 20);
    *a = dest_id(s, "a");
    for (size_t i = 0; i < n; i += per) {
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        for (size_t k = i; k < i + per && k < n; k++) {
            char *row = make_row(k, FULL_ROW);
            assert_int_equal(spool_txn_append(t, *a, row, FULL_ROW, 1, &seqs[k]), SPOOL_OK);
            free(row);
        }
        assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    }
    close_spool(f);
    char path[256];
    snprintf(path, sizeof path, "%s/data.mdb", f->dir);
    uint64_t fs = file_size(path);
    assert_true(fs > (1u << 20));

    /* a bound below the file: it opens, keeps everything, refuses appends */
    s = open_spool(f, 1u << 20);
    check_rows(s, *a, seqs, 0, n, 0);
    assert_false(spool_has_room(s, spool_footprint(FULL_ROW)));
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->max_bytes, 1u << 20);
    assert_int_equal(st->records, n);
    assert_true(st->file_bytes >= fs);
    free(st);
    return s;
}

/* Removes rows [0, n), per per transaction; the spool must drain. */
static void drain_smaller(struct spool *s, uint32_t a, const uint64_t *seqs, size_t n,
                          size_t per)
{
    for (size_t i = 0; i < n; i += per) {
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        int rc = SPOOL_OK;
        for (size_t k = i; k < i + per && k < n && rc == SPOOL_OK; k++)
            rc = spool_txn_remove(t, a, seqs[k]);
        if (rc == SPOOL_OK)
            rc = spool_txn_commit(t);
        else
            spool_txn_abort(t);
        if (rc != SPOOL_OK)
            fail_msg("spool reopened with a bound below its file cannot drain: removing "
                     "records %zu.. fails: %s (%s)", i, spool_strerror(rc),
                     spool_last_error());
    }
    struct spool_stats *st = get_stats(s);
    assert_int_equal(st->records, 0);
    free(st);
    /* drained, there is room again although the file cannot shrink */
    assert_true(spool_has_room(s, (uint64_t)(4) * spool_footprint(FULL_ROW)));
    assert_true(append1(s, a, "{}", 2, 1) > seqs[n - 1]);
}

static void test_reopen_with_smaller_bound(void **state)
{
    struct fixture *f = *state;
    enum { N = 400 };
    uint64_t seqs[N];
    uint32_t a;
    struct spool *s = smaller_bound(f, &a, seqs, N, 10);
    drain_smaller(s, a, seqs, N, 50);
}

static void test_reopen_with_smaller_bound_tight_file(void **state)
{
    struct fixture *f = *state;
    /* the same, but the file was written in one transaction so that it holds
     * (almost) no free pages: the map must still leave room to drain */
    enum { N = 400 };
    uint64_t seqs[N];
    uint32_t a;
    struct spool *s = smaller_bound(f, &a, seqs, N, N);
    drain_smaller(s, a, seqs, N, 1);
}

static void test_has_room_tiny_bound(void **state)
{
    struct fixture *f = *state;
    /* no bound can take a transaction as large as the bound itself */
    const uint64_t bounds[] = { 8u << 20, 1u << 20, 192u << 10 };
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
        struct spool *s = open_spool(f, bounds[i]);
        if (spool_has_room(s, spool_footprint(bounds[i])))
            fail_msg("an empty spool bounded to %llu bytes claims room for a %llu-byte row",
                     (unsigned long long)bounds[i], (unsigned long long)bounds[i]);
        assert_false(spool_has_room(s, (uint64_t)(4) * spool_footprint(bounds[i])));
        close_spool(f);
    }
}

static void test_has_room_page_sized_rows(void **state)
{
    struct fixture *f = *state;
    /* rows just under a page need two overflow pages each: when has_room
     * says a transaction of them fits, appending and committing it works */
    const uint64_t max = 8u << 20;
    struct spool *s = open_spool(f, max);
    uint32_t a = dest_id(s, "a");
    const size_t row_len = 4065;
    const size_t counts[] = { 1600, 1400, 1200, 1000, 800 };
    char *row = make_row(1, row_len);
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        size_t n = counts[c];
        if (!spool_has_room(s, (uint64_t)n * spool_footprint(row_len)))
            continue;
        struct spool_txn *t;
        assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
        int rc = SPOOL_OK;
        size_t i;
        for (i = 0; i < n && rc == SPOOL_OK; i++)
            rc = spool_txn_append(t, a, row, row_len, 1, NULL);
        if (rc == SPOOL_OK)
            rc = spool_txn_commit(t);
        else
            spool_txn_abort(t);
        if (rc != SPOOL_OK) {
            free(row);
            fail_msg("spool_has_room(%zu bytes, %zu rows) on an empty %llu-byte spool said "
                     "yes, but the transaction fails at row %zu: %s", n * row_len, n,
                     (unsigned long long)max, i, spool_strerror(rc));
        }
        assert_true(file_size(spool_path(s)) <= max);
        break;
    }
    free(row);
}

/* ------------------------------------------------------------------------ */
/* Upkeep                                                                   */
/* ------------------------------------------------------------------------ */

static void test_upkeep(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    int cleared = -1;
    assert_int_equal(spool_reader_check(s, &cleared), SPOOL_OK);
    assert_int_equal(cleared, 0);
    assert_int_equal(spool_reader_check(s, NULL), SPOOL_OK);
    uint32_t a = dest_id(s, "a");
    append1(s, a, "{}", 2, 1);
    assert_int_equal(spool_sync(s), SPOOL_OK);
    close_spool(f);

    /* fsync mode works the same */
    f->s = s = open_opts(f->dir, 8u << 20, SPOOL_SYNC, false);
    assert_int_equal(append1(s, a, "{}", 2, 1), 2);
    assert_int_equal(spool_sync(s), SPOOL_OK);
    close_spool(f);
    f->s = s = open_opts(f->dir, 8u << 20, SPOOL_NOSYNC_PERIODIC, false);
    assert_int_equal(append1(s, a, "{}", 2, 1), 3);
    assert_int_equal(spool_sync(s), SPOOL_OK);
}

struct metas { int n; char keys[8][64]; char vals[8][64]; int stop_after; };

static int collect_meta(const char *key, const void *val, size_t len, void *arg)
{
    struct metas *m = arg;
    snprintf(m->keys[m->n], sizeof m->keys[0], "%s", key);
    snprintf(m->vals[m->n], sizeof m->vals[0], "%.*s", (int)len, (const char *)val);
    m->n++;
    return m->stop_after && m->n == m->stop_after;
}

static void test_meta_put_scan_delete(void **state)
{
    struct fixture *f = *state;
    struct spool *s = open_spool(f, 8u << 20);
    struct spool_txn *t;
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_put_meta(t, "wstream.1", "a", 1), SPOOL_OK);
    assert_int_equal(spool_txn_put_meta(t, "wstream.1.2.x", "b", 1), SPOOL_OK);
    assert_int_equal(spool_txn_put_meta(t, "wstream.1.0.y", "c", 1), SPOOL_OK);
    assert_int_equal(spool_txn_put_meta(t, "wstream.12", "d", 1), SPOOL_OK);
    assert_int_equal(spool_txn_put_meta(t, "wlayout.1", "e", 1), SPOOL_OK);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    /* by prefix, in key order, without the internal "x." */
    struct metas m = { 0 };
    assert_int_equal(spool_meta_scan(s, "wstream.1.", collect_meta, &m), SPOOL_OK);
    assert_int_equal(m.n, 2);
    assert_string_equal(m.keys[0], "wstream.1.0.y");
    assert_string_equal(m.vals[0], "c");
    assert_string_equal(m.keys[1], "wstream.1.2.x");
    memset(&m, 0, sizeof m);
    assert_int_equal(spool_meta_scan(s, "wstream.1", collect_meta, &m), SPOOL_OK);
    assert_int_equal(m.n, 4);   /* wstream.1, .1.0.y, .1.2.x, wstream.12 */
    assert_string_equal(m.keys[3], "wstream.12");
    memset(&m, 0, sizeof m);
    m.stop_after = 1;
    assert_int_equal(spool_meta_scan(s, "w", collect_meta, &m), SPOOL_OK);
    assert_int_equal(m.n, 1);
    assert_string_equal(m.keys[0], "wlayout.1");
    /* internal meta keys (version, next_seq...) are never shown */
    memset(&m, 0, sizeof m);
    assert_int_equal(spool_meta_scan(s, "", collect_meta, &m), SPOOL_OK);
    assert_int_equal(m.n, 5);
    /* delete, in a transaction that can abort */
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_del_meta(t, "wstream.1.2.x"), SPOOL_OK);
    spool_txn_abort(t);
    char v[8];
    size_t len = 0;
    assert_int_equal(spool_get_meta(s, "wstream.1.2.x", v, sizeof v, &len), SPOOL_OK);
    assert_int_equal(spool_txn_begin(s, &t), SPOOL_OK);
    assert_int_equal(spool_txn_del_meta(t, "wstream.1.2.x"), SPOOL_OK);
    assert_int_equal(spool_txn_del_meta(t, "wstream.1.2.x"), SPOOL_NOTFOUND);
    assert_int_equal(spool_txn_commit(t), SPOOL_OK);
    assert_int_equal(spool_get_meta(s, "wstream.1.2.x", v, sizeof v, &len), SPOOL_NOTFOUND);
    memset(&m, 0, sizeof m);
    assert_int_equal(spool_meta_scan(s, "wstream.1.", collect_meta, &m), SPOOL_OK);
    assert_int_equal(m.n, 1);
}

static void test_strerror(void **state)
{
    (void)state;
    const int rcs[] = { SPOOL_OK, SPOOL_FULL, SPOOL_CORRUPT, SPOOL_NOTFOUND, SPOOL_IO,
                        SPOOL_NOMEM, SPOOL_INVAL };
    for (size_t i = 0; i < sizeof rcs / sizeof rcs[0]; i++) {
        const char *m = spool_strerror(rcs[i]);
        assert_non_null(m);
        assert_true(strlen(m) > 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(m, spool_strerror(rcs[j]));
    }
    assert_non_null(spool_strerror(SPOOL_ERR));
    assert_non_null(spool_strerror(12345));
    assert_non_null(spool_last_error());
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_open_creates_dir_and_files),
        T(test_open_existing_empty_dir),
        T(test_readonly_missing_dir),
        T(test_open_parent_missing_fails),
        T(test_readonly_open),
        T(test_destinations),
        T(test_append_and_read_in_order),
        T(test_seq_persists_across_reopen),
        T(test_read_from_seq_and_limits),
        T(test_read_ahead_windows),
        T(test_abort_leaves_nothing),
        T(test_remove_and_stats),
        T(test_remove_run),
        T(test_large_rows),
        T(test_dead_letter),
        T(test_corrupt_records),
        T(test_record_bound_to_its_key),
        T(test_chunks_round_trip),
        T(test_chunks_remove),
        T(test_chunks_dead_letter_and_damage),
        T(test_version1_spool_is_read_and_upgraded),
        T(test_full_keeps_reserve),
        T(test_full_and_drain),
        T(test_full_drain_to_empty),
        T(test_full_tiny_spool_can_drain),
        T(test_full_without_has_room_can_drain),
        T(test_reopen_with_smaller_bound),
        T(test_reopen_with_smaller_bound_tight_file),
        T(test_has_room_tiny_bound),
        T(test_has_room_page_sized_rows),
        T(test_upkeep),
        T(test_meta_put_scan_delete),
        T(test_strerror),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
