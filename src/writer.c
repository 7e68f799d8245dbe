/*
 * writer.c -- Storage Write API delivery for one destination. See writer.h.
 *
 * A destination has `connections` lanes, each a thread with its own gRPC
 * channel and credentials. A row belongs to lane route_lane(seq, n) for its
 * whole life, so exactly one lane sends it, removes it or dead-letters it.
 * A lane keeps a small cache of open tables (time-sharded table ids resolve
 * per row, route.h): per table its schema, its stream and one AppendRows
 * connection. A batch holds rows of one table, read in seq order.
 *
 * Invariant for exactly-once, per lane k and table T: the rows of the queue
 * that lane k owns and that go to T, in seq order, are the rows of offsets
 * next_offset, next_offset + 1, ... of stream (k, T). It holds because such
 * a row leaves the queue only (a) in the transaction that moves (k, T)'s
 * next_offset past it, after its append was acknowledged, or (b) to the
 * dead-letter store before it was ever sent (it does not fit the schema, has
 * no time to route it by, or BigQuery listed it in row_errors, which means
 * none of that append's rows were written). A row's lane and table never
 * change (they depend on the record only, and on the destination's layout:
 * connections, table and table_time_field; when the layout changes, the
 * streams of the old one are settled first). So when the fate of appends is
 * uncertain (a crash, a lost connection), the lane knows which row belongs
 * at each offset and can ask the stream, one exact offset at a time, where
 * it ends.
 */
#include "writer.h"
#include "auth.h"
#include "bqrest.h"
#include "batchstate.h"
#include "bqwrite.h"
#include "budget.h"
#include "delivstate.h"
#include "https.h"
#include "log.h"
#include "recorder.h"
#include "route.h"
#include "rowenc.h"
#include "sender.h"
#include "tcache.h"
#include "util.h"
#include "version.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POLL_MS 50
#define SCHEMA_REFRESH_US (5ull * 1000000)   /* at most one tables.get per 5 s on unknown columns */
#define TABLE_IDLE_US (60ull * 1000000)      /* a sharded table unused this long is closed */
#define CREATED_FRESH_US (60ull * 1000000)   /* a table we created may still be propagating */
#define LANE_TABLES 8                        /* open tables per connection */
#define PATH_MAX_LEN (ROUTE_TABLE_MAX + 400)

struct wrow {
    uint64_t seq, time_ms;
    size_t poff;              /* into the chunk's proto buffer */
    uint32_t jlen, plen;      /* the JSON row's size (for the budget), the encoded row's */
};

struct wchunk {
    struct wchunk *next;
    struct wrow *rows;
    size_t n, cap;
    struct buf proto;         /* the encoded rows, one after another */
    uint64_t jbytes;          /* the rows' JSON bytes: what the budget counts */
    int64_t offset;           /* exactly-once: the offset of its first row */
    uint32_t attempts;
    uint32_t sends;           /* times this very chunk was sent (chunk_pick starts at 0) */
    uint64_t first_ms, last_ms;
    uint64_t sent_us;         /* monotonic, for the latency histogram */
    struct budget *budget;    /* charged with `charged` bytes (max_inflight_bytes) */
    uint64_t charged;
    struct wtable *table;     /* while on the lane's done list: whose rows they are */
};

/* One table of one lane: its schema, stream and AppendRows connection. */
struct wtable {
    char id[ROUTE_TABLE_MAX];         /* the table id rows resolve to */
    char path[PATH_MAX_LEN];          /* projects/P/datasets/D/tables/T */
    char fq[PATH_MAX_LEN];            /* P.D.T, for people */
    char stream[PATH_MAX_LEN];        /* (guarded by the writer's lock) */
    char key[128];                    /* exactly-once: spool meta key of its state */
    int64_t next_offset;              /* exactly-once: offset of its first queued row */
    bool offsets;                     /* an explicit stream with offsets (exactly-once) */
    bool uncertain;                   /* appends may have landed without our knowing */
    struct bqw_conn *conn;
    struct rowenc_schema *schema;
    struct buf desc;
    uint64_t refetched_us;            /* when an unknown column last made us fetch the schema */
    uint64_t created_us;              /* create_table: when relayd created it */
    struct wchunk *inflight, **inflight_tail;   /* sent, oldest first */
    size_t n_inflight;
    struct wchunk *retry;             /* to resend, in order, before new rows of this table */
    size_t n_done;                    /* rows of it on the lane's done list */
};

/* The rows a lane owns: route_lane(seq, n) == k, going by route. */
struct part {
    unsigned k, n;
    struct route route;
};

struct writer;

/* One connection: a thread draining its share of the queue. */
struct lane {
    struct writer *w;
    struct part part;
    pthread_t thread;
    bool started;
    struct auth *auth;
    struct bqwrite *bw;
    struct tcache tables;             /* id -> struct wtable * (changed under the writer's lock) */
    uint64_t read_seq;
    uint64_t not_before_us;
    unsigned fail_streak;
    size_t n_inflight;                /* appends in flight over all its tables */
    char want[ROUTE_TABLE_MAX];       /* the reader stopped at a row of this table (not open) */
    /* appends answered OK this turn, oldest first, handed to the recorder
     * together by record_done */
    struct wchunk *done, **done_tail;
    uint64_t *done_seqs;
    size_t cap_done_seqs;
    uint64_t ticket;                  /* of its last job handed to the recorder */
    /* chunks done with, buffers kept: the next batches reuse them (their
     * buffers already grown to a batch's size) instead of allocating, and
     * faulting in, fresh memory for every append */
    struct wchunk *spare;
    unsigned n_spare;
    /* status (under the writer's lock) */
    char state[16], why[300];
    struct delivstate ds;
    /* mode = batch (the status fields under the writer's lock) */
    struct batch_state bs;
    uint64_t b_first_seq, b_created_us, b_read_us;
    uint64_t b_commits, b_rows_committed, b_last_commit_ms;
    uint64_t b_logged_us, b_log_rows, b_log_commits;
};

struct writer {
    const struct conf_dest *cd;
    struct spool *sp;
    uint32_t id;
    char table[PATH_MAX_LEN];         /* P.D.<table or pattern>, for people */
    struct route route;
    unsigned n_lanes;
    struct lane *lanes;
    struct budget budget;             /* max_inflight_bytes, shared by the lanes */
    struct recorder *rec;             /* records delivered rows, for every lane */
    volatile int stop;
    volatile int settled;             /* streams of an earlier layout are settled */
    volatile int woken;
    pthread_mutex_t lock;             /* guards the status fields below and the lanes' */
    uint64_t delivered, retried, dead_lettered, appends, failed;
    struct counts dead_by_reason;
    struct histo latency;
    char last_error[512];
    uint64_t last_error_ms;
};

const char *writer_name(const struct writer *w) { return w->cd->name; }
const struct conf_dest *writer_conf(const struct writer *w) { return w->cd; }

static bool stopping(const struct writer *w)
{
    return __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) != 0;
}

static void set_state(struct lane *l, const char *state, const char *why)
{
    pthread_mutex_lock(&l->w->lock);
    snprintf(l->state, sizeof l->state, "%s", state);
    if (why)
        snprintf(l->why, sizeof l->why, "%s", why);
    pthread_mutex_unlock(&l->w->lock);
}

static void note_error(struct writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(struct writer *w, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&w->lock);
    va_start(ap, fmt);
    vsnprintf(w->last_error, sizeof w->last_error, fmt, ap);
    va_end(ap);
    w->last_error_ms = util_now_ms();
    w->failed++;
    pthread_mutex_unlock(&w->lock);
}

static void count(struct writer *w, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&w->lock);
    *field += n;
    pthread_mutex_unlock(&w->lock);
}

/* Full-jitter backoff (equal jitter for throttling), as for insertAll. */
static void backoff(struct lane *l, bool throttled, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void backoff(struct lane *l, bool throttled, const char *fmt, ...)
{
    const struct conf_dest *cd = l->w->cd;
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    uint64_t base = throttled && cd->rate_limit_wait_ms ? cd->rate_limit_wait_ms : cd->retry_base_ms;
    uint64_t delay = util_backoff_ms(base, cd->retry_cap_ms, l->fail_streak++,
                                     throttled ? UTIL_JITTER_EQUAL : UTIL_JITTER_FULL);
    l->not_before_us = util_mono_us() + delay * 1000;
    set_state(l, "backoff", why);
    ds_wait(&l->ds, DS_BACKOFF, NULL, why, delay);
}

/* A short wait that is not a failure of the way (a table just created). */
static void wait_a_moment(struct lane *l, uint64_t ms, const char *why)
{
    l->not_before_us = util_mono_us() + ms * 1000;
    set_state(l, "backoff", why);
    ds_wait(&l->ds, DS_BACKOFF, NULL, why, ms);
}

/* The table is missing: wait park_wait (insertAll's words and rule). */
static void park_why(struct lane *l, const char *why)
{
    const struct conf_dest *cd = l->w->cd;
    l->not_before_us = util_mono_us() + cd->park_wait_ms * 1000;
    set_state(l, "parked", why);
    ds_wait(&l->ds, DS_PARKED, "not_found", why, cd->park_wait_ms);
}

static void park(struct lane *l, const struct wtable *t, const char *what)
{
    const struct conf_dest *cd = l->w->cd;
    char why[PATH_MAX_LEN + 800];
    snprintf(why, sizeof why, "table %s not found (%s): create it%s; retrying every %llu s", t->fq,
             what, cd->create_table ? "" : " (or set create_table = yes)",
             (unsigned long long)cd->park_wait_ms / 1000);
    park_why(l, why);
}

/* ---- chunks ---- */

static void chunk_free(struct wchunk *c)
{
    if (!c)
        return;
    if (c->budget && c->charged)
        budget_give(c->budget, c->charged);
    free(c->rows);
    buf_free(&c->proto);
    free(c);
}

#define MAX_SPARE 8

/* A chunk to fill: a spare one of the lane's, emptied, or a new one. */
static struct wchunk *chunk_get(struct lane *l)
{
    struct wchunk *c = l->spare;
    if (!c)
        return calloc(1, sizeof *c);
    l->spare = c->next;
    l->n_spare--;
    c->next = NULL;
    return c;
}

/* Done with c: its budget goes back, its buffers stay for chunk_get (up to
 * MAX_SPARE chunks; beyond that it is freed). */
static void chunk_recycle(struct lane *l, struct wchunk *c)
{
    if (l->n_spare >= MAX_SPARE) {
        chunk_free(c);
        return;
    }
    if (c->budget && c->charged)
        budget_give(c->budget, c->charged);
    struct wrow *rows = c->rows;
    size_t cap = c->cap;
    struct buf proto = c->proto;
    memset(c, 0, sizeof *c);
    c->rows = rows;
    c->cap = cap;
    c->proto = proto;
    c->proto.len = 0;
    c->next = l->spare;
    l->spare = c;
    l->n_spare++;
}

static void free_list(struct wchunk *c)
{
    while (c) {
        struct wchunk *n = c->next;
        chunk_free(c);
        c = n;
    }
}

/* Adds a row whose encoding is c->proto[poff, proto.len): the caller wrote
 * it there (rowenc_encode appends). jlen = the size of its JSON text. */
static int chunk_add_encoded(struct wchunk *c, uint64_t seq, uint64_t time_ms, size_t jlen,
                             size_t poff)
{
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 64;
        struct wrow *r = realloc(c->rows, nc * sizeof *r);
        if (!r)
            return -1;
        c->rows = r;
        c->cap = nc;
    }
    struct wrow *r = &c->rows[c->n];
    r->seq = seq;
    r->time_ms = time_ms;
    r->jlen = (uint32_t)jlen;
    r->poff = poff;
    r->plen = (uint32_t)(c->proto.len - poff);
    c->jbytes += jlen;
    c->n++;
    return 0;
}

/* Adds a row encoded elsewhere: proto[0..plen) is copied. */
static int chunk_add(struct wchunk *c, uint64_t seq, uint64_t time_ms, size_t jlen,
                     const char *proto, size_t plen)
{
    size_t poff = c->proto.len;
    if (buf_append(&c->proto, proto, plen))
        return -1;
    if (chunk_add_encoded(c, seq, time_ms, jlen, poff)) {
        c->proto.len = poff;
        return -1;
    }
    return 0;
}

/* Charges c's row bytes to b whatever the bound (c replaces held bytes). */
static void chunk_charge(struct wchunk *c, struct budget *b)
{
    c->budget = b;
    c->charged = c->jbytes;
    if (b)
        budget_force(b, c->charged);
}

/* A new chunk with the rows of src for which keep[i] (all when keep is NULL)
 * among [from, from + n). NULL when out of memory. */
static struct wchunk *chunk_pick(const struct wchunk *src, size_t from, size_t n, const bool *keep)
{
    struct wchunk *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    for (size_t i = from; i < from + n; i++) {
        if (keep && !keep[i])
            continue;
        const struct wrow *r = &src->rows[i];
        if (chunk_add(c, r->seq, r->time_ms, r->jlen, src->proto.data + r->poff, r->plen)) {
            chunk_free(c);
            return NULL;
        }
    }
    c->attempts = src->attempts;
    c->first_ms = src->first_ms;
    c->last_ms = src->last_ms;
    chunk_charge(c, src->budget);
    return c;
}

/* Puts every chunk in flight on t back in front of its retry list, in order. */
static void requeue_inflight(struct lane *l, struct wtable *t)
{
    if (!t->inflight)
        return;
    *t->inflight_tail = t->retry;
    t->retry = t->inflight;
    t->inflight = NULL;
    t->inflight_tail = &t->inflight;
    l->n_inflight -= t->n_inflight;
    t->n_inflight = 0;
}

static void push_retry(struct wtable *t, struct wchunk *c)
{
    c->next = t->retry;
    t->retry = c;
}

/* ---- outcomes ---- */

struct dead {
    uint64_t seq;
    char reason[32];
    char detail[600];
};

/* The exactly-once state of a (lane, table) stream as kept under its meta
 * key: "<next offset> <stream name>" (read back where streams are resumed).
 * Returns its length; dst holds STATE_MAX bytes. */
enum { STATE_MAX = PATH_MAX_LEN + 32 };
static size_t stream_state(char *dst, int64_t next_offset, const char *stream)
{
    int len = snprintf(dst, STATE_MAX, "%lld %s", (long long)next_offset, stream);
    return len < 0 ? 0 : (size_t)len < STATE_MAX ? (size_t)len : STATE_MAX - 1;
}

/* Records, in one transaction: rows delivered (removed; exactly-once also
 * moves t's next_offset past them) and rows dead-lettered. */
static int record(struct lane *l, struct wtable *t, const uint64_t *done, size_t n_done,
                  const struct dead *dead, size_t n_dead, const struct wchunk *hist)
{
    struct writer *w = l->w;
    if (!n_done && !n_dead)
        return 0;
    struct spool_txn *txn = NULL;
    int rc = spool_txn_begin(w->sp, &txn);
    if (rc == SPOOL_OK && n_done)   /* a row already gone is skipped */
        rc = spool_txn_remove_run(txn, w->id, done, n_done, NULL);
    for (size_t i = 0; rc == SPOOL_OK && i < n_dead; i++) {
        struct spool_dl_info info = { .reason = dead[i].reason, .detail = dead[i].detail,
                                      .attempts = hist ? hist->attempts : 0,
                                      .first_attempt_ms = hist ? hist->first_ms : 0,
                                      .last_attempt_ms = hist ? hist->last_ms : 0 };
        rc = spool_txn_dead_letter_info(txn, w->id, dead[i].seq, &info);
        if (rc == SPOOL_NOTFOUND)
            rc = SPOOL_OK;
    }
    if (rc == SPOOL_OK && t && t->offsets && n_done) {
        char state[STATE_MAX];
        size_t len = stream_state(state, t->next_offset + (int64_t)n_done, t->stream);
        rc = spool_txn_put_meta(txn, t->key, state, len);
    }
    if (rc == SPOOL_OK)
        rc = spool_txn_commit(txn);
    else
        spool_txn_abort(txn);
    if (rc == SPOOL_IO) {
        log_error("%s: recording outcomes failed: %s; stopping", w->cd->name, spool_last_error());
        _exit(5);
    }
    if (rc != SPOOL_OK)
        return -1;
    pthread_mutex_lock(&w->lock);
    if (t && t->offsets)
        t->next_offset += (int64_t)n_done;
    w->delivered += n_done;
    w->dead_lettered += n_dead;
    for (size_t i = 0; i < n_dead; i++)
        counts_add(&w->dead_by_reason, dead[i].reason, 1);
    pthread_mutex_unlock(&w->lock);
    if (n_dead)
        log_warn("%s: moved %zu row(s) to the dead-letter store", w->cd->name, n_dead);
    return 0;
}

static void drop_conn(struct lane *l, struct wtable *t);

/* An append of t answered OK: its rows join the lane's done list. */
static void add_done(struct lane *l, struct wtable *t, struct wchunk *c)
{
    c->table = t;
    c->next = NULL;
    *l->done_tail = c;
    l->done_tail = &c->next;
    t->n_done += c->n;
}

/* Hands every append on the done list to the recorder (w->rec): their rows
 * are removed, and (exactly-once) each table's next_offset moved past them,
 * on its thread, in one transaction for whatever is queued by then. The
 * lane's own view (next_offset, the delivered chunks freed) moves at once;
 * what reads the spool state those jobs change (a resync, a new stream, an
 * evicted table's state) first waits for the lane's last ticket
 * (settle_recorded). Called before an error or a closed call is handled,
 * and at the end of each turn. If the job cannot even be queued (out of
 * memory) the chunks are resent on a fresh connection instead. */
static void record_done(struct lane *l)
{
    struct writer *w = l->w;
    if (!l->done)
        return;
    size_t n = 0, n_meta = 0;
    for (struct wchunk *c = l->done; c; c = c->next) {
        n += c->n;
        if (c->table->offsets && !(c->next && c->next->table == c->table))
            n_meta++;   /* once per table, at its last chunk (n_done is its total) */
    }
    uint64_t ticket = 0;
    if (n > l->cap_done_seqs) {
        uint64_t *ns = realloc(l->done_seqs, n * sizeof *ns);
        if (ns) {
            l->done_seqs = ns;
            l->cap_done_seqs = n;
        }
    }
    struct recorder_meta *meta = n_meta ? malloc(n_meta * (sizeof *meta + STATE_MAX)) : NULL;
    if (n <= l->cap_done_seqs && (meta || !n_meta)) {
        size_t k = 0, m = 0;
        char *text = (char *)(meta + n_meta);
        for (struct wchunk *c = l->done; c; c = c->next) {
            for (size_t i = 0; i < c->n; i++)
                l->done_seqs[k++] = c->rows[i].seq;
            struct wtable *t = c->table;
            if (!t->offsets || (c->next && c->next->table == t))
                continue;
            char *state = text + m * STATE_MAX;
            size_t len = stream_state(state, t->next_offset + (int64_t)t->n_done, t->stream);
            meta[m++] = (struct recorder_meta){ t->key, state, len };
        }
        ticket = recorder_submit(w->rec, l->done_seqs, n, meta, n_meta);
    }
    free(meta);
    struct wchunk *list = l->done;
    l->done = NULL;
    l->done_tail = &l->done;
    if (!ticket) {
        log_warn("%s: cannot record %zu delivered row(s): out of memory; they are resent",
                 w->cd->name, n);
        /* newest first onto the front of each retry list keeps them in order,
         * ahead of what was in flight after them */
        struct wchunk *rev = NULL;
        while (list) {
            struct wchunk *next = list->next;
            list->next = rev;
            rev = list;
            list = next;
        }
        for (struct wchunk *c = rev; c; c = c->next)
            if (c->table->n_done) {
                drop_conn(l, c->table);
                c->table->n_done = 0;
            }
        while (rev) {
            struct wchunk *next = rev->next;
            push_retry(rev->table, rev);
            rev = next;
        }
        return;
    }
    l->ticket = ticket;
    pthread_mutex_lock(&w->lock);
    for (struct wchunk *c = list; c; c = c->next)
        if (c->table->offsets)
            c->table->next_offset += (int64_t)c->n;
    pthread_mutex_unlock(&w->lock);
    while (list) {
        struct wchunk *next = list->next;
        list->table->n_done = 0;
        chunk_recycle(l, list);
        list = next;
    }
    l->fail_streak = 0;
    ds_ok(&l->ds, w->sp, w->id);
}

/* Returns once what this lane handed to the recorder is in the spool. */
static void settle_recorded(struct lane *l)
{
    record_done(l);
    recorder_wait(l->w->rec, l->ticket);
}

/* ---- tables: schema, creation ---- */

static int read_text(const char *path, struct buf *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "schema_file %s: %s", path, strerror(errno));
        return -1;
    }
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(out, chunk, n);
    fclose(f);
    return 0;
}

/* tables.get over the REST endpoint. Returns 0, -1, or -2 (no such table). */
static int fetch_schema(struct lane *l, const struct wtable *t, struct buf *out, char *err,
                        size_t errlen)
{
    const struct conf_dest *cd = l->w->cd;
    char token[4096];
    if (auth_token(l->auth, token, sizeof token, err, errlen) != 0)
        return -1;
    struct buf url = { 0 };
    buf_puts(&url, cd->endpoint);
    bqrest_table_path(&url, cd->project, cd->dataset, t->id);
    long http = 0;
    int rc = https_call("GET", url.data, token, cd->ca_file, NULL, 30000, out, &http, err, errlen);
    memset(token, 0, sizeof token);
    if (rc == 0 && http != 200) {
        struct bq_error be;
        bqrest_classify(http, out->data, out->len, &be);
        snprintf(err, errlen, "tables.get %s: HTTP %ld: %s", t->fq, http, be.message);
        rc = http == 404 ? -2 : -1;
    }
    buf_free(&url);
    return rc;
}

/* (Re)loads t's schema and rebuilds its writer schema. Returns 0, -1, -2 (no table). */
static int load_schema(struct lane *l, struct wtable *t, char *err, size_t errlen)
{
    const struct conf_dest *cd = l->w->cd;
    struct buf text = { 0 };
    int rc = cd->schema_file ? read_text(cd->schema_file, &text, err, errlen)
                             : fetch_schema(l, t, &text, err, errlen);
    if (rc == 0) {
        struct rowenc_schema *s;
        struct rowenc_error re;
        if (rowenc_schema_parse(text.data ? text.data : "", text.len, &s, &re) != ROWENC_OK) {
            snprintf(err, errlen, "%s: %s", cd->schema_file ? cd->schema_file : "tables.get", re.msg);
            rc = -1;
        } else {
            struct buf d = { 0 };
            if (rowenc_descriptor(s, "row", &d, &re) != ROWENC_OK) {
                snprintf(err, errlen, "writer schema: %s", re.msg);
                rowenc_schema_free(s);
                buf_free(&d);
                rc = -1;
            } else {
                rowenc_schema_free(t->schema);
                t->schema = s;
                buf_free(&t->desc);
                t->desc = d;
            }
        }
    }
    buf_free(&text);
    return rc;
}

/* create_table: tables.insert with the destination's schema_file and
 * partitioning, as insertAll does (bqrest_table_insert_body). 200, or 409
 * (another writer created it first), counts as created. Blocking: this is
 * the lane's own thread. Returns 0, or -1 with err. */
static int create_table(struct lane *l, struct wtable *t, char *err, size_t errlen)
{
    const struct conf_dest *cd = l->w->cd;
    struct buf schema = { 0 }, body = { 0 }, url = { 0 }, resp = { 0 };
    char token[4096], e2[512];
    int rc = read_text(cd->schema_file, &schema, err, errlen);
    if (rc == 0) {
        struct bq_table_spec spec = { cd->project, cd->dataset, t->id, schema.data, schema.len,
                                      cd->time_partitioning, cd->partition_field,
                                      cd->partition_expiration_ms, cd->clustering };
        if (bqrest_table_insert_body(&spec, &body, e2, sizeof e2) != 0) {
            snprintf(err, errlen, "%s: %s", cd->schema_file, e2);
            rc = -1;
        }
    }
    if (rc == 0 && auth_token(l->auth, token, sizeof token, err, errlen) != 0)
        rc = -1;
    long http = 0;
    if (rc == 0) {
        if (buf_puts(&url, cd->endpoint) || bqrest_tables_path(&url, cd->project, cd->dataset)) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        } else {
            rc = https_call("POST", url.data, token, cd->ca_file, body.data, cd->request_timeout_ms,
                            &resp, &http, err, errlen);
        }
        memset(token, 0, sizeof token);
    }
    if (rc == 0 && http != 200 && http != 409) {
        struct bq_error be;
        bqrest_classify(http, resp.data, resp.len, &be);
        snprintf(err, errlen, "HTTP %ld: %s", http, be.message);
        rc = -1;
    }
    if (rc == 0)
        log_info("destination %s: table %s %s", cd->name, t->fq,
                 http == 200 ? "created" : "already exists (created by another writer)");
    buf_free(&schema);
    buf_free(&body);
    buf_free(&url);
    buf_free(&resp);
    return rc;
}

/* t does not exist (tables.get 404, NOT_FOUND from CreateWriteStream or
 * AppendRows): create it when create_table says so, else park, exactly as
 * insertAll does on a 404. */
static void table_missing(struct lane *l, struct wtable *t, const char *what)
{
    const struct conf_dest *cd = l->w->cd;
    if (!cd->create_table) {
        park(l, t, what);
        return;
    }
    uint64_t now = util_mono_us();
    if (t->created_us && now - t->created_us < CREATED_FRESH_US) {
        /* a new table can take a moment to accept rows: come back soon */
        wait_a_moment(l, 1000, "table just created: waiting for it to accept rows");
        return;
    }
    char err[600];
    set_state(l, "parked", "creating the table (create_table = yes)");
    if (create_table(l, t, err, sizeof err) == 0) {
        t->created_us = util_mono_us();
        wait_a_moment(l, 1000, "table just created: waiting for it to accept rows");
        return;
    }
    char why[PATH_MAX_LEN + 1200];
    snprintf(why, sizeof why, "table %s not found and create_table failed: %s; retrying every %llu s",
             t->fq, err, (unsigned long long)cd->park_wait_ms / 1000);
    note_error(l->w, "%s", why);
    park_why(l, why);
}

/* ---- exactly-once state keys and the layout ---- */

static uint64_t fnv64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* The spool meta key of lane k's stream for table id: "wstream.<dest>" for
 * the one stream of an unsharded single-connection destination (what relayd
 * always used), else "wstream.<dest>.<k>.<hash of the id>". The value is
 * "<next_offset> <stream name>", and the stream name holds the table. */
static void state_key(const struct writer *w, const struct part *p, const char *id, char *out,
                      size_t n)
{
    if (p->k == 0 && !p->route.sharded)
        snprintf(out, n, "wstream.%u", w->id);
    else
        snprintf(out, n, "wstream.%u.%u.%016llx", w->id, p->k, (unsigned long long)fnv64(id));
}

/* ---- the connection of a table ---- */

static void drop_conn(struct lane *l, struct wtable *t)
{
    if (t->conn) {
        bqw_conn_close(t->conn);
        t->conn = NULL;
    }
    requeue_inflight(l, t);
    if (t->offsets && t->stream[0])
        t->uncertain = true;   /* appends in flight may or may not have landed */
}

static struct wtable *table_new(struct lane *l, const struct part *p, const char *id)
{
    const struct writer *w = l->w;
    const struct conf_dest *cd = w->cd;
    struct wtable *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    snprintf(t->id, sizeof t->id, "%s", id);
    snprintf(t->path, sizeof t->path, "projects/%s/datasets/%s/tables/%s", cd->project,
             cd->dataset, id);
    snprintf(t->fq, sizeof t->fq, "%s.%s.%s", cd->project, cd->dataset, id);
    t->inflight_tail = &t->inflight;
    state_key(w, p, id, t->key, sizeof t->key);
    t->offsets = cd->exactly_once;
    if (!cd->exactly_once) {
        snprintf(t->stream, sizeof t->stream, "%s/streams/_default", t->path);
        return t;
    }
    /* a stream we had before (a restart): settle what was in flight first */
    char state[PATH_MAX_LEN + 32];
    size_t len = 0;
    if (spool_get_meta(w->sp, t->key, state, sizeof state - 1, &len) == SPOOL_OK &&
        len < sizeof state) {
        state[len] = 0;
        long long off;
        int pos = 0;
        if (sscanf(state, "%lld %n", &off, &pos) == 1 && pos > 0 &&
            strncmp(state + pos, t->path, strlen(t->path)) == 0 &&
            strncmp(state + pos + strlen(t->path), "/streams/", 9) == 0) {
            t->next_offset = off;
            snprintf(t->stream, sizeof t->stream, "%s", state + pos);
            t->uncertain = true;
        }
    }
    return t;
}

static void table_free(struct lane *l, struct wtable *t)
{
    if (!t)
        return;
    drop_conn(l, t);
    free_list(t->retry);
    rowenc_schema_free(t->schema);
    buf_free(&t->desc);
    free(t);
}

static int resync(struct lane *l, const struct part *p, struct wtable *t);

/* Makes t ready to take appends: schema, stream (exactly-once: created and
 * recorded), an open AppendRows call, and uncertain appends settled.
 * Returns 0, or -1 after arranging a wait (backoff or park). */
static int table_open(struct lane *l, struct wtable *t)
{
    struct writer *w = l->w;
    const struct conf_dest *cd = w->cd;
    char err[600];
    if (!t->schema) {
        int rc = load_schema(l, t, err, sizeof err);
        if (rc == -2) {
            note_error(w, "%s", err);
            table_missing(l, t, err);
            return -1;
        }
        if (rc != 0) {
            note_error(w, "%s", err);
            backoff(l, false, "%s", err);
            return -1;
        }
    }
    char token[4096];
    if (auth_token(l->auth, token, sizeof token, err, sizeof err) != 0) {
        note_error(w, "credentials: %s", err);
        backoff(l, false, "%s", err);
        return -1;
    }
    struct bqw_status st;
    if (cd->exactly_once && !t->stream[0]) {
        char name[PATH_MAX_LEN];
        if (bqwrite_create_stream(l->bw, token, t->path, false, name, sizeof name, &st) != BQW_OK) {
            memset(token, 0, sizeof token);
            note_error(w, "CreateWriteStream: %s: %s", bqw_code_name(st.code), st.message);
            if (st.code == BQW_NOT_FOUND)
                table_missing(l, t, "CreateWriteStream: NOT_FOUND");
            else
                backoff(l, st.code == BQW_RESOURCE_EXHAUSTED, "CreateWriteStream: %s: %s",
                        bqw_code_name(st.code), st.message);
            return -1;
        }
        /* a new stream starts at offset 0 at the head of (this lane, this table) */
        settle_recorded(l);   /* after every put of the old stream's state */
        struct spool_txn *txn = NULL;
        char state[STATE_MAX];
        size_t len = stream_state(state, 0, name);
        if (spool_txn_begin(w->sp, &txn) != SPOOL_OK ||
            spool_txn_put_meta(txn, t->key, state, len) != SPOOL_OK ||
            spool_txn_commit(txn) != SPOOL_OK) {
            memset(token, 0, sizeof token);
            backoff(l, false, "cannot record the new write stream in the spool");
            return -1;
        }
        pthread_mutex_lock(&w->lock);
        snprintf(t->stream, sizeof t->stream, "%s", name);
        t->next_offset = 0;
        pthread_mutex_unlock(&w->lock);
        t->uncertain = false;
        log_info("%s: created write stream %s", cd->name, t->stream);
    }
    int rc = bqw_conn_open(l->bw, token, t->stream, &t->conn, &st);
    memset(token, 0, sizeof token);
    if (rc != BQW_OK) {
        t->conn = NULL;
        note_error(w, "AppendRows: %s: %s", bqw_code_name(st.code), st.message);
        backoff(l, false, "AppendRows: %s: %s", bqw_code_name(st.code), st.message);
        return -1;
    }
    if (t->uncertain && resync(l, &l->part, t) != 0) {
        note_error(w, "could not settle appends of uncertain fate; retrying");
        drop_conn(l, t);
        backoff(l, false, "could not settle appends of uncertain fate (resynchronising the stream)");
        return -1;
    }
    set_state(l, "sending", "");
    return 0;
}

static bool table_ready(const struct wtable *t)
{
    return t->conn && !t->uncertain && t->schema;
}

/* ---- reading and encoding ---- */

struct reader {
    struct lane *l;
    struct wchunk *c;
    struct wtable *t;         /* the chunk's table */
    struct dead *dead;
    size_t n_dead, cap_dead;
    size_t bytes, cap;
    uint64_t now_ms;
    uint64_t stop_seq;        /* the row that stopped the read (not consumed) */
    bool stopped, full, blocked;
    uint64_t last_seen;       /* the last record looked at */
    bool seen;
    bool unknown;             /* a row named a column the schema lacks */
};

static void add_dead(struct reader *r, uint64_t seq, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_dead(struct reader *r, uint64_t seq, const char *reason, const char *fmt, ...)
{
    if (r->n_dead == r->cap_dead) {
        size_t nc = r->cap_dead ? r->cap_dead * 2 : 16;
        struct dead *d = realloc(r->dead, nc * sizeof *d);
        if (!d)
            return;
        r->dead = d;
        r->cap_dead = nc;
    }
    struct dead *d = &r->dead[r->n_dead++];
    d->seq = seq;
    snprintf(d->reason, sizeof d->reason, "%s", reason);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->detail, sizeof d->detail, fmt, ap);
    va_end(ap);
}

static int stop_at(struct reader *r, uint64_t seq)
{
    r->stopped = true;
    r->stop_seq = seq;
    return 1;
}

static int read_row(const struct spool_record *rec, void *arg)
{
    struct reader *r = arg;
    struct lane *l = r->l;
    const struct conf_dest *cd = l->w->cd;
    if (route_lane(rec->seq, l->part.n) != l->part.k)
        goto seen;                /* another connection's row */
    if (rec->corrupt) {
        add_dead(r, rec->seq, "corrupt", "%s", rec->problem);
        goto seen;
    }
    if (cd->max_age_ms && rec->time_ms + cd->max_age_ms < r->now_ms) {
        add_dead(r, rec->seq, "expired", "older than max_age (%llu s) after 0 attempt(s)",
                 (unsigned long long)cd->max_age_ms / 1000);
        goto seen;
    }
    /* the table: the same for every row unless sharded (then from the row's
     * time), as on insertAll (sender.c) */
    char shard[ROUTE_TABLE_MAX];
    bool sharded = l->part.route.sharded;
    const char *table = l->part.route.pattern;
    if (sharded) {
        if (route_table(&l->part.route, rec->row, rec->len, rec->time_ms, shard,
                        sizeof shard) != 0) {
            add_dead(r, rec->seq, "routing", "table_time_field '%s' is missing or not a time "
                     "(RFC 3339 string or epoch seconds)", cd->table_time_field);
            goto seen;
        }
        table = shard;
    }
    if (r->c->n == 0) {
        struct wtable *t = tcache_get(&l->tables, table, util_mono_us());
        if (!t || !table_ready(t) || t->retry) {
            snprintf(l->want, sizeof l->want, "%s", table);   /* open it first */
            return stop_at(r, rec->seq);
        }
        if (rec->len + 16 > r->cap && r->cap < cd->batch_bytes) {
            r->blocked = true;    /* bytes in flight: wait for answers */
            return stop_at(r, rec->seq);
        }
        r->t = t;
    } else if ((sharded && strcmp(r->t->id, table) != 0) || r->c->n >= cd->batch_rows ||
               r->bytes + rec->len + 16 > r->cap) {
        r->full = true;           /* full, or the next row goes to another table */
        return stop_at(r, rec->seq);
    }
    struct rowenc_error re;
    size_t poff = r->c->proto.len;   /* encoded in place, after the chunk's rows */
    int rc = rowenc_encode(r->t->schema, rec->row, rec->len,
                           cd->ignore_unknown_values ? ROWENC_IGNORE_UNKNOWN : 0, &r->c->proto,
                           &re);
    if (rc == ROWENC_NOMEM)
        return stop_at(r, rec->seq);
    if (rc != ROWENC_OK) {   /* does not fit the schema: never sent */
        if (rc == ROWENC_UNKNOWN)
            r->unknown = true;
        add_dead(r, rec->seq, "invalid", "%s", re.msg);
        goto seen;
    }
    if (chunk_add_encoded(r->c, rec->seq, rec->time_ms, rec->len, poff)) {
        r->c->proto.len = poff;
        return stop_at(r, rec->seq);
    }
    r->bytes += rec->len + 16;
seen:
    r->last_seen = rec->seq;
    r->seen = true;
    return 0;
}

/* The next batch of the lane (rows of one table, that table ready), or NULL:
 * nothing due, or l->want names a table to open first, or the bytes bound is
 * reached. Rows that cannot be sent (corrupt, unroutable, expired, not
 * fitting the schema) are dead-lettered first, before anything is sent. */
static struct wchunk *read_batch(struct lane *l, uint64_t now_ms, struct wtable **tp)
{
    struct writer *w = l->w;
    const struct conf_dest *cd = w->cd;
    struct reader r = { .l = l, .now_ms = now_ms };
    r.cap = (size_t)budget_room(&w->budget, cd->batch_bytes);
    if (r.cap == 0)
        return NULL;
    r.c = chunk_get(l);
    if (!r.c)
        return NULL;
    size_t span = (size_t)(cd->batch_rows + 1) * l->part.n * 2 + 64;
    spool_read(w->sp, w->id, l->read_seq, span, SIZE_MAX, read_row, &r);
    if (r.unknown && !cd->schema_file && r.t &&
        (!r.t->refetched_us || util_mono_us() - r.t->refetched_us >= SCHEMA_REFRESH_US)) {
        /* a column we do not know: the table may have gained it since we
         * fetched its schema. Look again before calling the row invalid. */
        char err[512];
        r.t->refetched_us = util_mono_us();
        if (load_schema(l, r.t, err, sizeof err) == 0)
            log_info("%s: a row names a column missing from the cached schema of %s: schema "
                     "fetched again", cd->name, r.t->fq);
        free(r.dead);
        chunk_free(r.c);
        return NULL;   /* read again next turn with the fresh schema */
    }
    if (r.n_dead && record(l, NULL, NULL, 0, r.dead, r.n_dead, NULL) != 0) {
        free(r.dead);    /* try again next turn */
        chunk_free(r.c);
        return NULL;
    }
    free(r.dead);
    struct wchunk *c = r.c;
    uint64_t resume = r.stopped ? r.stop_seq : r.seen ? r.last_seen + 1 : l->read_seq;
    if (c->n == 0) {
        chunk_recycle(l, c);
        if (resume > l->read_seq)
            l->read_seq = resume;   /* past rows of others and rows dealt with */
        return NULL;
    }
    bool due = r.full || c->n >= cd->batch_rows ||
               now_ms >= c->rows[0].time_ms + cd->flush_interval_ms || stopping(w);
    if (!due || !budget_take(&w->budget, c->jbytes)) {
        chunk_recycle(l, c);   /* read again later (another connection took the room meanwhile) */
        return NULL;
    }
    c->budget = &w->budget;
    c->charged = c->jbytes;
    l->read_seq = resume;
    *tp = r.t;
    return c;
}

/* ---- appending ---- */

static int send_chunk(struct lane *l, struct wtable *t, struct wchunk *c)
{
    struct writer *w = l->w;
    const char **rows = malloc(c->n * sizeof *rows);
    size_t *lens = malloc(c->n * sizeof *lens);
    if (!rows || !lens) {
        free(rows);
        free(lens);
        return -1;
    }
    for (size_t i = 0; i < c->n; i++) {
        rows[i] = c->proto.data + c->rows[i].poff;
        lens[i] = c->rows[i].plen;
    }
    int64_t off = -1;
    if (t->offsets) {
        /* the offset of the first row: next_offset plus the rows in flight before it */
        off = t->next_offset;
        for (struct wchunk *f = t->inflight; f; f = f->next)
            off += (int64_t)f->n;
    }
    int rc = bqw_conn_append(t->conn, t->desc.data, t->desc.len, rows, lens, c->n, off);
    free(rows);
    free(lens);
    if (rc != 0)
        return -1;
    c->offset = off;
    uint64_t now = util_now_ms();
    if (!c->first_ms)
        c->first_ms = now;
    c->last_ms = now;
    c->sent_us = util_mono_us();
    c->attempts++;
    c->sends++;
    c->next = NULL;
    if (strcmp(l->state, "sending") != 0)
        set_state(l, "sending", "");
    *t->inflight_tail = c;
    t->inflight_tail = &c->next;
    t->n_inflight++;
    l->n_inflight++;
    count(w, &w->appends, 1);
    return 0;
}

static struct wchunk *pop_inflight(struct lane *l, struct wtable *t)
{
    struct wchunk *c = t->inflight;
    if (c) {
        t->inflight = c->next;
        if (!t->inflight)
            t->inflight_tail = &t->inflight;
        c->next = NULL;
        t->n_inflight--;
        l->n_inflight--;
    }
    return c;
}

/* ---- exactly-once: settle uncertain appends by asking the stream ---- */

struct probe_rows {
    uint64_t *seqs;
    char **rows;
    size_t *lens;
    size_t n, cap;
    const struct part *p;
    const struct wtable *t;
    const struct conf_dest *cd;
};

static int probe_read(const struct spool_record *rec, void *arg)
{
    struct probe_rows *p = arg;
    if (rec->corrupt || route_lane(rec->seq, p->p->n) != p->p->k)
        return 0;
    char table[ROUTE_TABLE_MAX];
    if (route_table(&p->p->route, rec->row, rec->len, rec->time_ms, table, sizeof table) != 0 ||
        strcmp(table, p->t->id) != 0)
        return 0;   /* another table's row (or one dead-lettered before anything was sent) */
    struct buf b = { 0 };
    struct rowenc_error re;
    if (rowenc_encode(p->t->schema, rec->row, rec->len,
                      p->cd->ignore_unknown_values ? ROWENC_IGNORE_UNKNOWN : 0, &b, &re) != ROWENC_OK) {
        buf_free(&b);
        return 0;   /* such a row was dead-lettered before anything after it was sent */
    }
    p->seqs[p->n] = rec->seq;
    p->rows[p->n] = b.data ? b.data : calloc(1, 1);
    p->lens[p->n] = b.len;
    p->n++;
    return p->n == p->cap;
}

/* One single-row append at offset off. Returns the gRPC code of its result
 * (BQW_OK: the row is now at off), or -1 if the connection failed. */
static int probe(struct lane *l, struct wtable *t, const char *row, size_t len, int64_t off)
{
    const char *rows[1] = { row };
    size_t lens[1] = { len };
    if (bqw_conn_append(t->conn, t->desc.data, t->desc.len, rows, lens, 1, off) != 0)
        return -1;
    for (;;) {
        struct bqw_result r;
        bqw_conn_next(t->conn, 30000, &r);
        if (r.event == BQW_EV_RESULT)
            return r.ok ? BQW_OK : r.error.code;
        if (r.event == BQW_EV_CLOSED || stopping(l->w))
            return -1;
    }
}

/* Drops the rows with seq <= last from t's chunks to resend (they are in
 * the stream now); their order is kept. */
static void trim_retry(struct wtable *t, uint64_t last)
{
    struct wchunk **pp = &t->retry;
    while (*pp) {
        struct wchunk *c = *pp;
        size_t skip = 0;
        while (skip < c->n && c->rows[skip].seq <= last)
            skip++;
        if (skip == 0) {
            pp = &c->next;
            continue;
        }
        struct wchunk *rest = skip < c->n ? chunk_pick(c, skip, c->n - skip, NULL) : NULL;
        if (skip < c->n && !rest) {   /* out of memory: keep it, the resend meets ALREADY_EXISTS */
            pp = &c->next;
            continue;
        }
        if (rest) {
            rest->next = c->next;
            *pp = rest;
            pp = &rest->next;
        } else {
            *pp = c->next;
        }
        chunk_free(c);
    }
}

/* Finds where stream (p's lane, t) ends, between next_offset and what could
 * have been sent, and records the rows found written as delivered. t->conn
 * must be open. Rows of t waiting to be resent that turn out written are
 * dropped from its retry list. */
static int resync(struct lane *l, const struct part *p, struct wtable *t)
{
    struct writer *w = l->w;
    settle_recorded(l);   /* it reads the queue and next_offset */
    size_t span = (size_t)(w->cd->max_inflight * w->cd->batch_rows);
    struct probe_rows pr = { .p = p, .t = t, .cd = w->cd, .cap = span };
    pr.seqs = calloc(span, sizeof *pr.seqs);
    pr.rows = calloc(span, sizeof *pr.rows);
    pr.lens = calloc(span, sizeof *pr.lens);
    int rc = -1;
    if (!pr.seqs || !pr.rows || !pr.lens)
        goto out;
    spool_read(w->sp, w->id, 0, SIZE_MAX, SIZE_MAX, probe_read, &pr);
    if (pr.n == 0) {
        t->uncertain = false;
        rc = 0;
        goto out;
    }
    /* end is in [base, base + n]: probe the first row first (the usual case:
     * nothing of it landed, and the probe itself appends it) */
    int64_t base = t->next_offset;
    int code = probe(l, t, pr.rows[0], pr.lens[0], base);
    size_t written = 0;   /* rows of the queue found in the stream */
    if (code == BQW_OK) {
        written = 1;
    } else if (code == BQW_ALREADY_EXISTS) {
        size_t lo = 0, hi = pr.n;   /* rows [0, lo] written; rows >= hi not written */
        while (lo + 1 < hi) {
            size_t mid = (lo + 1 + hi) / 2;
            if (mid >= hi)
                mid = hi - 1;
            code = probe(l, t, pr.rows[mid], pr.lens[mid], base + (int64_t)mid);
            if (code == BQW_ALREADY_EXISTS) {
                lo = mid;
            } else if (code == BQW_OUT_OF_RANGE) {
                hi = mid;
            } else if (code == BQW_OK) {   /* mid was the end; now written too */
                lo = mid;
                hi = mid + 1;
            } else {
                goto out;
            }
        }
        written = lo + 1;   /* rows [0, lo] are in the stream; lo + 1 is its end */
    } else if (code == BQW_OUT_OF_RANGE) {
        log_error("%s: stream %s ends before offset %lld that relayd recorded as written; "
                  "starting a new stream", w->cd->name, t->stream, (long long)base);
        pthread_mutex_lock(&w->lock);
        t->stream[0] = 0;
        pthread_mutex_unlock(&w->lock);
        goto out;
    } else {
        goto out;
    }
    if (written && record(l, t, pr.seqs, written, NULL, 0, NULL) != 0)
        goto out;
    if (written) {
        log_info("%s: %zu row(s) were already in stream %s: recorded as delivered",
                 w->cd->name, written, t->stream);
        trim_retry(t, pr.seqs[written - 1]);
    }
    t->uncertain = false;
    rc = 0;
out:
    for (size_t i = 0; pr.rows && i < pr.n; i++)
        free(pr.rows[i]);
    free(pr.seqs);
    free(pr.rows);
    free(pr.lens);
    return rc;
}

/* ---- results ---- */

/* The chunk an answer is for (the oldest in flight on t), with the answer's
 * latency recorded and, when BigQuery says the table's schema changed, the
 * schema fetched again. NULL when nothing was in flight. */
static struct wchunk *take_answer(struct lane *l, struct wtable *t, const struct bqw_result *r)
{
    struct writer *w = l->w;
    struct wchunk *c = pop_inflight(l, t);
    if (!c)
        return NULL;
    pthread_mutex_lock(&w->lock);
    histo_add(&w->latency, (double)(util_mono_us() - c->sent_us) / 1e6);
    pthread_mutex_unlock(&w->lock);
    if (r->schema_changed) {
        char err[512];
        if (load_schema(l, t, err, sizeof err) == 0)
            log_info("%s: the schema of %s changed: writer schema rebuilt", w->cd->name, t->fq);
    }
    return c;
}

static void on_result(struct lane *l, struct wtable *t, const struct bqw_result *r)
{
    struct writer *w = l->w;
    if (!r->ok || (t->offsets && r->offset >= 0 && t->inflight && r->offset != t->inflight->offset))
        record_done(l);   /* what went well before it is settled first */
    struct wchunk *c = take_answer(l, t, r);
    if (!c)
        return;
    if (r->ok) {
        if (t->offsets && r->offset >= 0 && r->offset != c->offset) {
            /* the server put them elsewhere than asked: stop trusting our count */
            log_error("%s: append landed at offset %lld, expected %lld; resynchronising",
                      w->cd->name, (long long)r->offset, (long long)c->offset);
            drop_conn(l, t);
            push_retry(t, c);
            return;
        }
        add_done(l, t, c);
        return;
    }
    const struct bqw_status *e = &r->error;
    note_error(w, "append: %s: %s", bqw_code_name(e->code), e->message);
    if (r->n_row_errors) {
        /* none of the rows was written: dead-letter the named ones, resend the rest */
        struct dead *dead = calloc(r->n_row_errors, sizeof *dead);
        bool *keep = malloc(c->n * sizeof *keep);
        size_t nd = 0;
        for (size_t i = 0; keep && i < c->n; i++)
            keep[i] = true;
        for (size_t i = 0; dead && keep && i < r->n_row_errors; i++) {
            int64_t ix = r->row_errors[i].index;
            if (ix < 0 || (size_t)ix >= c->n || !keep[ix])
                continue;
            keep[ix] = false;
            dead[nd].seq = c->rows[ix].seq;
            snprintf(dead[nd].reason, sizeof dead[nd].reason, "invalid");
            snprintf(dead[nd].detail, sizeof dead[nd].detail, "%s", r->row_errors[i].message);
            nd++;
        }
        struct wchunk *rest = keep ? chunk_pick(c, 0, c->n, keep) : NULL;
        /* later appends were sent at offsets that counted the bad rows (beyond
         * the stream's end: none of them is written either): start over on a
         * fresh connection, the oldest rows first */
        drop_conn(l, t);
        if (nd && rest && record(l, NULL, NULL, 0, dead, nd, c) == 0) {
            if (rest->n)
                push_retry(t, rest);
            else
                chunk_free(rest);
            chunk_free(c);
        } else {
            chunk_free(rest);
            push_retry(t, c);
        }
        free(dead);
        free(keep);
        t->uncertain = false;   /* the server said exactly what happened */
        return;
    }
    switch (e->code) {
    case BQW_ALREADY_EXISTS:
    case BQW_OUT_OF_RANGE:
        drop_conn(l, t);            /* resync on reconnect settles it */
        push_retry(t, c);
        return;
    case BQW_INVALID_ARGUMENT:
        drop_conn(l, t);            /* the answers after it are not waited for */
        if (c->n > 1) {             /* something in it is malformed: bisect */
            size_t half = c->n / 2;
            struct wchunk *a = chunk_pick(c, 0, half, NULL), *b = chunk_pick(c, half, c->n - half, NULL);
            if (a && b) {
                push_retry(t, b);
                push_retry(t, a);
                chunk_free(c);
            } else {
                chunk_free(a);
                chunk_free(b);
                push_retry(t, c);
            }
        } else {
            struct dead d = { .seq = c->rows[0].seq };
            snprintf(d.reason, sizeof d.reason, "invalid");
            snprintf(d.detail, sizeof d.detail, "%s: %s", bqw_code_name(e->code), e->message);
            if (record(l, NULL, NULL, 0, &d, 1, c) == 0)
                chunk_free(c);
            else
                push_retry(t, c);
        }
        return;
    case BQW_PERMISSION_DENIED: {
        drop_conn(l, t);
        struct dead *d = calloc(c->n, sizeof *d);
        for (size_t i = 0; d && i < c->n; i++) {
            d[i].seq = c->rows[i].seq;
            snprintf(d[i].reason, sizeof d[i].reason, "permission-denied");
            snprintf(d[i].detail, sizeof d[i].detail, "%s", e->message);
        }
        if (d && record(l, NULL, NULL, 0, d, c->n, c) == 0)
            chunk_free(c);
        else
            push_retry(t, c);
        free(d);
        return;
    }
    case BQW_NOT_FOUND:
        drop_conn(l, t);
        push_retry(t, c);
        if (t->offsets) {
            pthread_mutex_lock(&w->lock);
            t->stream[0] = 0;    /* the stream is gone: a new one, after a resync */
            pthread_mutex_unlock(&w->lock);
        }
        table_missing(l, t, w->cd->exactly_once ? "append: NOT_FOUND: the table or its write stream"
                                                : "append: NOT_FOUND");
        return;
    default:                     /* RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, ABORTED ... */
        drop_conn(l, t);
        push_retry(t, c);
        count(w, &w->retried, c->n);
        backoff(l, e->code == BQW_RESOURCE_EXHAUSTED, "append: %s: %s", bqw_code_name(e->code),
                e->message);
        return;
    }
}

/* The AppendRows call of t ended. */
static void on_closed(struct lane *l, struct wtable *t, const struct bqw_status *st)
{
    struct writer *w = l->w;
    record_done(l);
    note_error(w, "connection closed: %s: %s", bqw_code_name(st->code), st->message);
    bool idle = st->code == BQW_ABORTED && strstr(st->message, "inactive");
    if (st->code == BQW_UNAUTHENTICATED)
        auth_invalidate(l->auth);
    drop_conn(l, t);
    if (st->code == BQW_NOT_FOUND) {   /* the table (or the stream) is missing */
        if (t->offsets) {
            pthread_mutex_lock(&w->lock);
            t->stream[0] = 0;
            pthread_mutex_unlock(&w->lock);
        }
        table_missing(l, t, "AppendRows: NOT_FOUND");
        return;
    }
    if (!idle && l->fail_streak > 0) {
        backoff(l, st->code == BQW_RESOURCE_EXHAUSTED, "AppendRows: %s: %s",
                bqw_code_name(st->code), st->message);
    } else {
        char why[600];
        snprintf(why, sizeof why, "AppendRows: %s: %s", bqw_code_name(st->code), st->message);
        ds_event(&l->ds, idle ? LOG_INFO : LOG_WARN, "reconnect", NULL, why,
                 idle ? "cause=idle next=at_once" : "cause=closed next=at_once");
        if (!idle)
            l->fail_streak++;   /* reconnect at once the first time */
    }
}

/* ---- the lane's tables ---- */

static bool table_busy(void *val, void *arg)
{
    (void)arg;
    const struct wtable *t = val;
    return t->inflight || t->retry || t->uncertain;
}

/* Closes a table nobody sends to any more. Exactly-once: nothing of it is in
 * flight or uncertain, so its queued rows were never sent; its stream state
 * goes, and later rows start a new stream. */
static void table_evict(struct lane *l, struct wtable *t)
{
    struct writer *w = l->w;
    settle_recorded(l);   /* no put of its state may follow the delete */
    if (w->cd->exactly_once && t->stream[0]) {
        struct spool_txn *txn = NULL;
        if (spool_txn_begin(w->sp, &txn) == SPOOL_OK) {
            int rc = spool_txn_del_meta(txn, t->key);
            if (rc == SPOOL_OK || rc == SPOOL_NOTFOUND)
                spool_txn_commit(txn);
            else
                spool_txn_abort(txn);
        }
    }
    table_free(l, t);
}

/* The table for id, opened in the cache (an idle one is closed to make
 * room). NULL when there is no room yet. */
static struct wtable *table_get(struct lane *l, const char *id)
{
    struct writer *w = l->w;
    uint64_t now = util_mono_us();
    struct wtable *t = tcache_get(&l->tables, id, now);
    if (t)
        return t;
    if (tcache_count(&l->tables) == l->tables.cap) {
        pthread_mutex_lock(&w->lock);
        struct wtable *old = tcache_evict(&l->tables, now, 0, table_busy, NULL);
        pthread_mutex_unlock(&w->lock);
        if (!old)
            return NULL;
        table_evict(l, old);
    }
    if (!(t = table_new(l, &l->part, id)))
        return NULL;
    pthread_mutex_lock(&w->lock);
    int rc = tcache_put(&l->tables, id, t, now);
    pthread_mutex_unlock(&w->lock);
    if (rc != 0) {
        table_free(l, t);
        return NULL;
    }
    return t;
}

/* ---- settling the streams of an earlier layout ---- */

/* What decides a row's stream: connections, and for a sharded table its
 * pattern and table_time_field. Stored as "wlayout.<dest>" =
 * "1 <connections>\n<table>\n<table_time_field>". */
struct layout {
    unsigned n;
    char pattern[ROUTE_TABLE_MAX];
    char field[320];
    bool known;
};

static void layout_of(const struct writer *w, struct layout *lo)
{
    memset(lo, 0, sizeof *lo);
    lo->n = w->n_lanes;
    snprintf(lo->pattern, sizeof lo->pattern, "%s", w->route.pattern);
    if (w->route.sharded && w->route.time_field)
        snprintf(lo->field, sizeof lo->field, "%s", w->route.time_field);
    lo->known = true;
}

static int layout_text(const struct layout *lo, char *out, size_t n)
{
    return snprintf(out, n, "1 %u\n%s\n%s", lo->n, lo->pattern, lo->field);
}

static bool layout_same(const struct layout *a, const struct layout *b)
{
    return a->n == b->n && strcmp(a->pattern, b->pattern) == 0 && strcmp(a->field, b->field) == 0;
}

static void layout_read(const struct writer *w, struct layout *lo)
{
    memset(lo, 0, sizeof *lo);
    char key[64], text[ROUTE_TABLE_MAX + 400];
    size_t len = 0;
    snprintf(key, sizeof key, "wlayout.%u", w->id);
    if (spool_get_meta(w->sp, key, text, sizeof text - 1, &len) != SPOOL_OK || len >= sizeof text)
        return;
    text[len] = 0;
    unsigned n;
    int pos = 0;
    if (sscanf(text, "1 %u\n%n", &n, &pos) != 1 || pos == 0 || n == 0)
        return;
    const char *p = text + pos, *nl = strchr(p, '\n');
    if (!nl)
        return;
    snprintf(lo->pattern, sizeof lo->pattern, "%.*s", (int)(nl - p), p);
    snprintf(lo->field, sizeof lo->field, "%s", nl + 1);
    lo->n = n;
    lo->known = true;
}

struct stored {
    char key[128];
    int64_t offset;
    char stream[PATH_MAX_LEN];
    unsigned k;
};

struct stored_list {
    const struct writer *w;
    struct stored *v;
    size_t n, cap;
};

static int collect_state(const char *key, const void *val, size_t len, void *arg)
{
    struct stored_list *sl = arg;
    char exact[64], prefix[64];
    snprintf(exact, sizeof exact, "wstream.%u", sl->w->id);
    snprintf(prefix, sizeof prefix, "wstream.%u.", sl->w->id);
    unsigned k = 0;
    if (strcmp(key, exact) != 0) {
        if (strncmp(key, prefix, strlen(prefix)) != 0 ||
            sscanf(key + strlen(prefix), "%u.", &k) != 1)
            return 0;   /* another destination's (wstream.12 for dest 1) */
    }
    if (sl->n == sl->cap) {
        size_t nc = sl->cap ? sl->cap * 2 : 8;
        struct stored *v = realloc(sl->v, nc * sizeof *v);
        if (!v)
            return 1;
        sl->v = v;
        sl->cap = nc;
    }
    struct stored *s = &sl->v[sl->n];
    char text[PATH_MAX_LEN + 32];
    size_t tl = len < sizeof text - 1 ? len : sizeof text - 1;
    memcpy(text, val, tl);
    text[tl] = 0;
    long long off;
    int pos = 0;
    if (sscanf(text, "%lld %n", &off, &pos) != 1 || pos == 0)
        return 0;
    snprintf(s->key, sizeof s->key, "%s", key);
    snprintf(s->stream, sizeof s->stream, "%s", text + pos);
    s->offset = off;
    s->k = k;
    sl->n++;
    return 0;
}

/* The table id in a stream name .../tables/<id>/streams/<s>. */
static int stream_table(const char *stream, char *out, size_t n)
{
    const char *p = strstr(stream, "/tables/"), *e = p ? strstr(p + 8, "/streams/") : NULL;
    if (!e)
        return -1;
    snprintf(out, n, "%.*s", (int)(e - (p + 8)), p + 8);
    return 0;
}

static int del_meta(struct writer *w, const char *key)
{
    struct spool_txn *txn = NULL;
    int rc = spool_txn_begin(w->sp, &txn);
    if (rc == SPOOL_OK) {
        rc = spool_txn_del_meta(txn, key);
        if (rc == SPOOL_OK || rc == SPOOL_NOTFOUND)
            rc = spool_txn_commit(txn);
        else
            spool_txn_abort(txn);
    }
    return rc;
}

/* Settles one stream of the old layout: rows found written are recorded as
 * delivered; the rest were never written and go out on the new layout's
 * streams. Returns 0 (done: the state can go), -1 (try again later). */
static int settle_one(struct lane *l, const struct layout *old, const struct stored *s)
{
    struct writer *w = l->w;
    char id[ROUTE_TABLE_MAX];
    if (stream_table(s->stream, id, sizeof id) != 0)
        return 0;   /* not a stream name: nothing to settle */
    struct part p = { .k = s->k, .n = old->n };
    /* an old state without a layout: the single stream of an unsharded table */
    const char *pattern = old->known ? old->pattern : id;
    route_init(&p.route, pattern, old->field[0] ? old->field : NULL);
    if (s->k >= p.n)
        return 0;
    struct wtable *t = table_new(l, &p, id);
    if (!t)
        return -1;
    snprintf(t->key, sizeof t->key, "%s", s->key);
    snprintf(t->stream, sizeof t->stream, "%s", s->stream);
    t->next_offset = s->offset;
    t->offsets = true;
    t->uncertain = true;
    char err[600], token[4096];
    int rc = -1;
    int lr = load_schema(l, t, err, sizeof err);
    if (lr == -2) {
        log_error("%s: settling stream %s: the table is gone; its rows of uncertain fate are "
                  "sent again (at least once for them)", w->cd->name, s->stream);
        rc = 0;
    } else if (lr != 0) {
        note_error(w, "settling stream %s: %s", s->stream, err);
    } else if (auth_token(l->auth, token, sizeof token, err, sizeof err) != 0) {
        note_error(w, "credentials: %s", err);
    } else {
        struct bqw_status st;
        int orc = bqw_conn_open(l->bw, token, t->stream, &t->conn, &st);
        memset(token, 0, sizeof token);
        if (orc != BQW_OK) {
            t->conn = NULL;
            note_error(w, "settling stream %s: AppendRows: %s: %s", s->stream,
                       bqw_code_name(st.code), st.message);
        } else if (resync(l, &p, t) == 0) {
            rc = 0;
        } else if (!t->stream[0]) {
            rc = 0;   /* the stream ended before what we recorded: nothing more to learn */
        } else {
            note_error(w, "settling stream %s: could not reach its end", s->stream);
        }
    }
    if (t->conn) {
        bqw_conn_close(t->conn);
        t->conn = NULL;
    }
    t->uncertain = false;
    table_free(l, t);
    return rc;
}

/* Before the lanes start: when the layout (connections, table pattern,
 * table_time_field, or the delivery mode) changed since the streams in the
 * spool were used, settle each of them under the layout that wrote it, then
 * forget them. Runs on lane 0's thread; the other lanes wait for it. */
static void settle_layout(struct lane *l)
{
    struct writer *w = l->w;
    struct layout cur, old;
    layout_of(w, &cur);
    layout_read(w, &old);
    struct stored_list sl = { .w = w };
    char prefix[64];
    snprintf(prefix, sizeof prefix, "wstream.%u", w->id);
    spool_meta_scan(w->sp, prefix, collect_state, &sl);
    bool legacy_same = !old.known && sl.n == 1 && strcmp(sl.v[0].key, prefix) == 0 && cur.n == 1 &&
                       !w->route.sharded;
    if (legacy_same) {   /* relayd before layouts: one stream of this unsharded table */
        char id[ROUTE_TABLE_MAX];
        legacy_same = stream_table(sl.v[0].stream, id, sizeof id) == 0 &&
                      strcmp(id, w->route.pattern) == 0;
    }
    bool keep = !w->cd->batch_mode && w->cd->exactly_once && ((old.known && layout_same(&old, &cur)) || legacy_same);
    if (!keep && sl.n)
        log_info("%s: %s since the last run: settling %zu write stream(s) of the old one first",
                 w->cd->name, w->cd->batch_mode ? "the destination is in mode = batch now" :
                 w->cd->exactly_once ? "the layout (connections, table, "
                 "table_time_field) changed" : "delivery is at_least_once now", sl.n);
    for (size_t i = 0; !keep && i < sl.n && !stopping(w);) {
        if (settle_one(l, &old, &sl.v[i]) == 0) {
            if (del_meta(w, sl.v[i].key) == SPOOL_OK) {
                i++;
                continue;
            }
        }
        backoff(l, false, "settling the write streams of the previous layout");
        while (!stopping(w) && util_mono_us() < l->not_before_us)
            usleep(POLL_MS * 1000);
    }
    free(sl.v);
    if (!stopping(w) && !w->cd->batch_mode && w->cd->exactly_once && !(old.known && layout_same(&old, &cur))) {
        char key[64], text[ROUTE_TABLE_MAX + 400];
        snprintf(key, sizeof key, "wlayout.%u", w->id);
        int len = layout_text(&cur, text, sizeof text);
        struct spool_txn *txn = NULL;
        if (spool_txn_begin(w->sp, &txn) == SPOOL_OK) {
            if (spool_txn_put_meta(txn, key, text, (size_t)len) == SPOOL_OK)
                spool_txn_commit(txn);
            else
                spool_txn_abort(txn);
        }
    }
    set_state(l, "idle", "");
}

/* ---- mode = batch: one PENDING stream at a time, committed atomically ----
 *
 * The destination has one connection and one (unsharded) table. Its open
 * batch is a PENDING stream holding, at offsets 0, 1, ..., the queued rows
 * from first_seq on, in seq order. Rows stay in the queue while they are
 * appended; the spool records (batchstate.h, meta "wbatch.<dest>") the
 * stream's phase, each change fsync-committed before the step it allows:
 *
 *   appending   recorded right after CreateWriteStream, before any append.
 *               A restart abandons such a stream (never committed, so its
 *               rows are invisible and BigQuery discards it) and writes the
 *               rows again to a new one.
 *   finalizing  recorded when the batch is cut (every append acknowledged,
 *               so the queued rows in [first_seq, last_seq] are exactly the
 *               stream's rows), then FinalizeWriteStream (again on restart).
 *   committing  recorded before BatchCommitWriteStreams. Repeated on
 *               restart: STREAM_ALREADY_COMMITTED is success. Then one
 *               transaction removes the queued rows [first_seq, last_seq]
 *               and the state.
 *
 * A row leaves the queue only in that transaction, or to the dead-letter
 * store before it is in the stream (it does not fit the schema, or BigQuery
 * named it in row_errors: none of that append was written, and the rest of
 * it goes again at the same offset). Appends of uncertain fate (the call
 * lost with appends in flight, a transient error) go again as the same
 * chunks at the same offsets: ALREADY_EXISTS for a chunk sent before means
 * it was written. Anything that does not fit (OUT_OF_RANGE, an unexpected
 * offset, a restart while appending) abandons the stream: its rows go again
 * on a new one, so nothing is written twice. */

#define BATCH_LOG_GAP_US (1000000ull)   /* at most one commit line a second (others summed) */

static void batch_key(const struct writer *w, char *out, size_t n)
{
    snprintf(out, n, "wbatch.%u", w->id);
}

static int batch_put(struct writer *w, const struct batch_state *bs)
{
    char key[64], text[BATCH_STREAM_MAX + 100];
    batch_key(w, key, sizeof key);
    int len = batch_state_encode(bs, text, sizeof text);
    if (len < 0)
        return -1;
    struct spool_txn *txn = NULL;
    int rc = spool_txn_begin(w->sp, &txn);
    if (rc == SPOOL_OK) {
        rc = spool_txn_put_meta(txn, key, text, (size_t)len);
        if (rc == SPOOL_OK)
            rc = spool_txn_commit(txn);
        else
            spool_txn_abort(txn);
    }
    if (rc == SPOOL_IO) {
        log_error("%s: recording the batch state failed: %s; stopping", w->cd->name, spool_last_error());
        _exit(5);
    }
    return rc == SPOOL_OK ? 0 : -1;
}

static int batch_get(struct writer *w, struct batch_state *bs)
{
    char key[64], text[BATCH_STREAM_MAX + 100];
    size_t len = 0;
    batch_key(w, key, sizeof key);
    memset(bs, 0, sizeof *bs);
    if (spool_get_meta(w->sp, key, text, sizeof text - 1, &len) != SPOOL_OK || len >= sizeof text)
        return -1;
    if (batch_state_decode(text, len, bs) != 0) {
        log_error("%s: unreadable batch state '%.*s' in the spool: ignored", w->cd->name,
                  (int)(len < 200 ? len : 200), text);
        return -1;
    }
    return 0;
}

/* The batch status fields (under the writer's lock). */
static void batch_set(struct lane *l, const struct batch_state *bs)
{
    pthread_mutex_lock(&l->w->lock);
    l->bs = *bs;
    pthread_mutex_unlock(&l->w->lock);
}

struct seq_list {
    uint64_t *v;
    size_t n, cap;
    uint64_t last;
};

static int collect_seq(const struct spool_record *rec, void *arg)
{
    struct seq_list *sl = arg;
    if (rec->seq > sl->last)
        return 1;
    if (sl->n == sl->cap) {
        size_t nc = sl->cap ? sl->cap * 2 : 1024;
        uint64_t *v = realloc(sl->v, nc * sizeof *v);
        if (!v)
            return 1;
        sl->v = v;
        sl->cap = nc;
    }
    sl->v[sl->n++] = rec->seq;
    return 0;
}

/* The commit is confirmed: one transaction removes the stream's rows from
 * the queue and forgets the state. Returns 0, or -1. */
static int batch_settle_rows(struct lane *l, const struct batch_state *bs, size_t *removed)
{
    struct writer *w = l->w;
    struct seq_list sl = { .last = bs->last_seq };
    spool_read(w->sp, w->id, bs->first_seq, SIZE_MAX, SIZE_MAX, collect_seq, &sl);
    char key[64];
    batch_key(w, key, sizeof key);
    struct spool_txn *txn = NULL;
    int rc = spool_txn_begin(w->sp, &txn);
    *removed = 0;
    if (rc == SPOOL_OK && sl.n)
        rc = spool_txn_remove_run(txn, w->id, sl.v, sl.n, removed);
    if (rc == SPOOL_OK) {
        rc = spool_txn_del_meta(txn, key);
        if (rc == SPOOL_NOTFOUND)
            rc = SPOOL_OK;
    }
    if (rc == SPOOL_OK)
        rc = spool_txn_commit(txn);
    else if (txn)
        spool_txn_abort(txn);
    free(sl.v);
    if (rc == SPOOL_IO) {
        log_error("%s: recording a committed batch failed: %s; stopping", w->cd->name,
                  spool_last_error());
        _exit(5);
    }
    return rc == SPOOL_OK ? 0 : -1;
}

static void batch_forget(struct lane *l)
{
    char key[64];
    batch_key(l->w, key, sizeof key);
    del_meta(l->w, key);
    struct batch_state none = { 0 };
    batch_set(l, &none);
}

/* One commit line, at most one a second (the others are summed into it). */
static void batch_log_commit(struct lane *l, const struct batch_state *bs, size_t removed,
                             const char *how)
{
    uint64_t now = util_mono_us();
    l->b_log_rows += removed;
    l->b_log_commits++;
    if (l->b_logged_us && now - l->b_logged_us < BATCH_LOG_GAP_US)
        return;
    if (l->b_log_commits > 1)
        log_info("%s: committed batch: %zu row(s) in stream %s (%s; %llu commit(s), %llu row(s) "
                 "since the last line)", l->w->cd->name, removed, bs->stream, how,
                 (unsigned long long)l->b_log_commits, (unsigned long long)l->b_log_rows);
    else
        log_info("%s: committed batch: %zu row(s) in stream %s (%s)", l->w->cd->name, removed,
                 bs->stream, how);
    l->b_logged_us = now;
    l->b_log_commits = 0;
    l->b_log_rows = 0;
}

/* Finalizes (phase finalizing) and commits (phase committing) bs, then
 * removes its rows. Returns 0 when done (the state is gone), 1 when the
 * stream is gone or unusable and was abandoned (its rows are still queued),
 * -1 after arranging a wait (try again). */
static int batch_finish(struct lane *l, struct batch_state *bs, const char *path)
{
    struct writer *w = l->w;
    const struct conf_dest *cd = w->cd;
    char token[4096], err[600];
    struct bqw_status st;
    if (auth_token(l->auth, token, sizeof token, err, sizeof err) != 0) {
        note_error(w, "credentials: %s", err);
        backoff(l, false, "%s", err);
        return -1;
    }
    if (bs->phase == BATCH_FINALIZING) {
        set_state(l, "sending", "finalizing the batch's write stream");
        int64_t count = 0;
        int rc = bqwrite_finalize_stream(l->bw, token, bs->stream, &count, &st);
        if (rc == BQW_NOT_FOUND) {
            memset(token, 0, sizeof token);
            log_error("%s: pending stream %s is gone before its commit (expired?): its %llu row(s) "
                      "go again on a new stream", cd->name, bs->stream, (unsigned long long)bs->rows);
            batch_forget(l);
            return 1;
        }
        if (rc != BQW_OK) {
            memset(token, 0, sizeof token);
            note_error(w, "FinalizeWriteStream: %s: %s", bqw_code_name(st.code), st.message);
            backoff(l, st.code == BQW_RESOURCE_EXHAUSTED, "FinalizeWriteStream: %s: %s",
                    bqw_code_name(st.code), st.message);
            return -1;
        }
        if ((uint64_t)count != bs->rows) {
            /* the stream does not hold what the spool says: never commit it */
            memset(token, 0, sizeof token);
            log_error("%s: pending stream %s holds %lld row(s), relayd appended %llu: abandoned "
                      "(not committed); its rows go again on a new stream", cd->name, bs->stream,
                      (long long)count, (unsigned long long)bs->rows);
            note_error(w, "pending stream row count mismatch: abandoned");
            batch_forget(l);
            return 1;
        }
        bs->phase = BATCH_COMMITTING;
        if (batch_put(w, bs) != 0) {
            memset(token, 0, sizeof token);
            bs->phase = BATCH_FINALIZING;
            backoff(l, false, "cannot record the batch state in the spool");
            return -1;
        }
        batch_set(l, bs);
    }
    set_state(l, "sending", "committing the batch");
    int se = 0;
    int rc = bqwrite_batch_commit(l->bw, token, path, bs->stream, &se, &st);
    memset(token, 0, sizeof token);
    if (rc != BQW_OK) {
        note_error(w, "BatchCommitWriteStreams: %s: %s", bqw_code_name(st.code), st.message);
        backoff(l, st.code == BQW_RESOURCE_EXHAUSTED, "BatchCommitWriteStreams: %s: %s",
                bqw_code_name(st.code), st.message);
        return -1;
    }
    const char *how = "committed";
    if (se == BQW_SE_STREAM_ALREADY_COMMITTED) {
        how = "already committed before a restart or a lost answer";
    } else if (se == BQW_SE_INVALID_STREAM_STATE) {
        bs->phase = BATCH_FINALIZING;   /* not finalized after all: again from there */
        batch_put(w, bs);
        batch_set(l, bs);
        backoff(l, false, "BatchCommitWriteStreams: %s", st.message);
        return -1;
    } else if (se == BQW_SE_STREAM_NOT_FOUND) {
        log_error("%s: pending stream %s is gone and relayd cannot tell whether it was committed: "
                  "its %llu row(s) go again (they may appear twice)", cd->name, bs->stream,
                  (unsigned long long)bs->rows);
        note_error(w, "BatchCommitWriteStreams: %s", st.message);
        batch_forget(l);
        return 1;
    } else if (se != 0) {
        note_error(w, "BatchCommitWriteStreams: stream error %d: %s", se, st.message);
        backoff(l, false, "BatchCommitWriteStreams: stream error %d: %s", se, st.message);
        return -1;
    }
    size_t removed = 0;
    if (batch_settle_rows(l, bs, &removed) != 0) {
        backoff(l, false, "cannot remove the committed batch's rows from the queue");
        return -1;   /* committing again answers STREAM_ALREADY_COMMITTED */
    }
    if (removed != bs->rows)
        log_warn("%s: committed stream %s held %llu row(s) but %zu were queued in its range",
                 cd->name, bs->stream, (unsigned long long)bs->rows, removed);
    struct batch_state none = { 0 };
    pthread_mutex_lock(&w->lock);
    w->delivered += removed;
    l->b_commits++;
    l->b_rows_committed += removed;
    l->b_last_commit_ms = util_now_ms();
    l->bs = none;
    pthread_mutex_unlock(&w->lock);
    batch_log_commit(l, bs, removed, how);
    l->fail_streak = 0;
    ds_ok(&l->ds, w->sp, w->id);
    return 0;
}

/* A stream left by an earlier run. Appending: abandoned. Finalizing or
 * committing: finished. Returns 0 when nothing is left, -1 to try again. */
static int batch_recover(struct lane *l, const char *why)
{
    struct writer *w = l->w;
    struct batch_state bs;
    if (batch_get(w, &bs) != 0)
        return 0;
    if (bs.phase == BATCH_APPENDING) {
        log_info("%s: abandoning pending stream %s%s (never committed, so none of its rows is "
                 "visible); its rows go again on a new stream", w->cd->name, bs.stream, why);
        batch_forget(l);
        return 0;
    }
    char id[ROUTE_TABLE_MAX], path[PATH_MAX_LEN];
    if (stream_table(bs.stream, id, sizeof id) != 0) {
        batch_forget(l);
        return 0;
    }
    snprintf(path, sizeof path, "%.*s", (int)(strstr(bs.stream, "/streams/") - bs.stream), bs.stream);
    log_info("%s: finishing the batch of pending stream %s (%s, %llu row(s))%s", w->cd->name,
             bs.stream, batch_phase_name(bs.phase), (unsigned long long)bs.rows, why);
    batch_set(l, &bs);
    int rc = batch_finish(l, &bs, path);
    return rc >= 0 ? 0 : -1;
}

/* Drops every append in flight on t (and its chunks to resend). */
static void batch_drop_inflight(struct lane *l, struct wtable *t)
{
    if (t->conn) {
        bqw_conn_close(t->conn);
        t->conn = NULL;
    }
    free_list(t->inflight);
    t->inflight = NULL;
    t->inflight_tail = &t->inflight;
    l->n_inflight -= t->n_inflight;
    t->n_inflight = 0;
    free_list(t->retry);
    t->retry = NULL;
}

/* Closes t's call and puts its appends in flight back in front of its
 * chunks to resend, in order (they go again at the same offsets). */
static void batch_requeue(struct lane *l, struct wtable *t)
{
    if (t->conn) {
        bqw_conn_close(t->conn);
        t->conn = NULL;
    }
    requeue_inflight(l, t);
}

/* The open stream cannot be trusted (an append of uncertain fate): forget
 * it; the rows go again on a new one. */
static void batch_abandon(struct lane *l, struct wtable *t, const char *why)
{
    log_warn("%s: abandoning pending stream %s (%s): never committed, its rows go again on a "
             "new stream", l->w->cd->name, l->bs.stream, why);
    batch_drop_inflight(l, t);
    batch_forget(l);
    pthread_mutex_lock(&l->w->lock);
    t->stream[0] = 0;
    pthread_mutex_unlock(&l->w->lock);
    t->next_offset = 0;
    l->read_seq = 0;
}

/* Rows of chunk c were refused (row_errors, or all of them): dead-letter
 * them, resend the rest at c's offset. Appends after c are beyond the
 * stream's end (none written): they go again. */
static void batch_reject(struct lane *l, struct wtable *t, struct wchunk *c, const bool *keep,
                         struct dead *dead, size_t nd)
{
    struct wchunk *rest = chunk_pick(c, 0, c->n, keep);
    uint64_t after = c->rows[c->n - 1].seq + 1;
    batch_drop_inflight(l, t);
    if (!rest || record(l, NULL, NULL, 0, dead, nd, c) != 0) {
        chunk_free(rest);
        chunk_free(c);
        batch_abandon(l, t, "could not dead-letter rows the service refused");
        backoff(l, false, "could not dead-letter refused rows");
        return;
    }
    chunk_free(c);
    if (rest->n)
        push_retry(t, rest);
    else
        chunk_free(rest);
    l->read_seq = after;
}

static void batch_on_result(struct lane *l, struct wtable *t, const struct bqw_result *r)
{
    struct writer *w = l->w;
    struct wchunk *c = take_answer(l, t, r);
    if (!c)
        return;
    /* a chunk sent again (same rows, same offset) after its answer was lost:
     * ALREADY_EXISTS means its first send was written (appends are atomic and
     * nothing else is ever sent at that offset of this stream) */
    bool landed = !r->ok && r->error.code == BQW_ALREADY_EXISTS && !r->n_row_errors && c->sends > 1;
    if (r->ok || landed) {
        if (r->ok && r->offset >= 0 && r->offset != c->offset) {
            chunk_free(c);
            batch_abandon(l, t, "an append landed at an unexpected offset");
            return;
        }
        t->next_offset += (int64_t)c->n;
        pthread_mutex_lock(&w->lock);
        l->bs.rows += c->n;
        l->bs.last_seq = c->rows[c->n - 1].seq;
        pthread_mutex_unlock(&w->lock);
        l->fail_streak = 0;
        ds_ok(&l->ds, NULL, w->id);
        chunk_free(c);
        return;
    }
    const struct bqw_status *e = &r->error;
    note_error(w, "append: %s: %s", bqw_code_name(e->code), e->message);
    bool perm = e->code == BQW_PERMISSION_DENIED, one = e->code == BQW_INVALID_ARGUMENT && c->n == 1;
    if (r->n_row_errors || perm || one) {
        struct dead *dead = calloc(c->n, sizeof *dead);
        bool *keep = malloc(c->n * sizeof *keep);
        size_t nd = 0;
        if (!dead || !keep) {
            free(dead);
            free(keep);
            chunk_free(c);
            batch_abandon(l, t, "out of memory");
            return;
        }
        for (size_t i = 0; i < c->n; i++)
            keep[i] = !(perm || one);
        for (size_t i = 0; i < c->n && (perm || one); i++) {
            dead[nd].seq = c->rows[i].seq;
            snprintf(dead[nd].reason, sizeof dead[nd].reason, perm ? "permission-denied" : "invalid");
            snprintf(dead[nd].detail, sizeof dead[nd].detail, "%s: %s", bqw_code_name(e->code),
                     e->message);
            nd++;
        }
        for (size_t i = 0; !(perm || one) && i < r->n_row_errors; i++) {
            int64_t ix = r->row_errors[i].index;
            if (ix < 0 || (size_t)ix >= c->n || !keep[ix])
                continue;
            keep[ix] = false;
            dead[nd].seq = c->rows[ix].seq;
            snprintf(dead[nd].reason, sizeof dead[nd].reason, "invalid");
            snprintf(dead[nd].detail, sizeof dead[nd].detail, "%s", r->row_errors[i].message);
            nd++;
        }
        batch_reject(l, t, c, keep, dead, nd);
        free(dead);
        free(keep);
        return;
    }
    if (e->code == BQW_INVALID_ARGUMENT) {   /* something in it is malformed: bisect */
        size_t half = c->n / 2;
        struct wchunk *a = chunk_pick(c, 0, half, NULL), *b = chunk_pick(c, half, c->n - half, NULL);
        uint64_t after = c->rows[c->n - 1].seq + 1;
        batch_drop_inflight(l, t);
        if (a && b) {
            push_retry(t, b);
            push_retry(t, a);
            l->read_seq = after;
            chunk_free(c);
            return;
        }
        chunk_free(a);
        chunk_free(b);
        chunk_free(c);
        batch_abandon(l, t, "out of memory");
        return;
    }
    if (e->code == BQW_NOT_FOUND) {
        chunk_free(c);
        batch_abandon(l, t, "append: NOT_FOUND");
        table_missing(l, t, "append: NOT_FOUND: the table or its write stream");
        return;
    }
    if (e->code == BQW_ALREADY_EXISTS || e->code == BQW_OUT_OF_RANGE) {
        /* the stream is not where relayd counts: never guess */
        chunk_free(c);
        batch_abandon(l, t, e->message);
        backoff(l, false, "append: %s: %s", bqw_code_name(e->code), e->message);
        return;
    }
    /* transient (INTERNAL, UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED ...): none
     * of c was written, and appends after it are beyond the stream's end.
     * Send them all again, in order, at the same offsets on a new call. */
    count(w, &w->retried, c->n);
    batch_requeue(l, t);
    push_retry(t, c);
    backoff(l, e->code == BQW_RESOURCE_EXHAUSTED, "append: %s: %s", bqw_code_name(e->code),
            e->message);
}

static void batch_on_closed(struct lane *l, struct wtable *t, const struct bqw_status *st)
{
    struct writer *w = l->w;
    bool idle = st->code == BQW_ABORTED && strstr(st->message, "inactive");
    if (st->code == BQW_UNAUTHENTICATED)
        auth_invalidate(l->auth);
    if (!t->inflight) {   /* nothing of uncertain fate: reconnect and go on */
        if (t->conn) {
            bqw_conn_close(t->conn);
            t->conn = NULL;
        }
        if (!idle) {
            note_error(w, "connection closed: %s: %s", bqw_code_name(st->code), st->message);
            l->fail_streak++;
        }
        return;
    }
    note_error(w, "connection closed: %s: %s", bqw_code_name(st->code), st->message);
    char why[600];
    snprintf(why, sizeof why, "AppendRows closed with appends in flight: %s: %s",
             bqw_code_name(st->code), st->message);
    if (st->code == BQW_NOT_FOUND) {
        batch_abandon(l, t, why);
        table_missing(l, t, "AppendRows: NOT_FOUND");
        return;
    }
    /* appends of unknown fate: the same chunks go again at the same offsets;
     * ALREADY_EXISTS then tells which were written */
    batch_requeue(l, t);
    if (idle && l->fail_streak == 0)
        l->fail_streak++;   /* reconnect at once the first time */
    else
        backoff(l, st->code == BQW_RESOURCE_EXHAUSTED, "%s", why);
}

/* The batch's table: schema loaded, stream created and recorded (phase
 * appending), an AppendRows call open. 0, or -1 after arranging a wait. */
static int batch_open(struct lane *l, struct wtable *t)
{
    struct writer *w = l->w;
    const struct conf_dest *cd = w->cd;
    char err[600], token[4096];
    if (!t->schema) {
        int rc = load_schema(l, t, err, sizeof err);
        if (rc != 0) {
            note_error(w, "%s", err);
            if (rc == -2)
                table_missing(l, t, err);
            else
                backoff(l, false, "%s", err);
            return -1;
        }
    }
    if (auth_token(l->auth, token, sizeof token, err, sizeof err) != 0) {
        note_error(w, "credentials: %s", err);
        backoff(l, false, "%s", err);
        return -1;
    }
    struct bqw_status st;
    if (!t->stream[0]) {
        char name[PATH_MAX_LEN];
        if (bqwrite_create_stream(l->bw, token, t->path, true, name, sizeof name, &st) != BQW_OK) {
            memset(token, 0, sizeof token);
            note_error(w, "CreateWriteStream: %s: %s", bqw_code_name(st.code), st.message);
            if (st.code == BQW_NOT_FOUND)
                table_missing(l, t, "CreateWriteStream: NOT_FOUND");
            else
                backoff(l, st.code == BQW_RESOURCE_EXHAUSTED, "CreateWriteStream: %s: %s",
                        bqw_code_name(st.code), st.message);
            return -1;
        }
        struct batch_state bs = { .phase = BATCH_APPENDING, .first_seq = l->b_first_seq };
        snprintf(bs.stream, sizeof bs.stream, "%s", name);
        if (batch_put(w, &bs) != 0) {
            memset(token, 0, sizeof token);
            backoff(l, false, "cannot record the new pending stream in the spool");
            return -1;
        }
        batch_set(l, &bs);
        pthread_mutex_lock(&w->lock);
        snprintf(t->stream, sizeof t->stream, "%s", name);
        pthread_mutex_unlock(&w->lock);
        t->next_offset = 0;
        l->read_seq = bs.first_seq;
        l->b_created_us = l->b_read_us = util_mono_us();
        log_info("%s: created pending stream %s for a batch from seq %llu", cd->name, name,
                 (unsigned long long)bs.first_seq);
    }
    int rc = bqw_conn_open(l->bw, token, t->stream, &t->conn, &st);
    memset(token, 0, sizeof token);
    if (rc != BQW_OK) {
        t->conn = NULL;
        note_error(w, "AppendRows: %s: %s", bqw_code_name(st.code), st.message);
        backoff(l, false, "AppendRows: %s: %s", bqw_code_name(st.code), st.message);
        return -1;
    }
    set_state(l, "sending", "");
    return 0;
}

static int first_seq_cb(const struct spool_record *rec, void *arg)
{
    *(uint64_t *)arg = rec->seq + 1;   /* +1: 0 means none */
    return 1;
}

/* The seq of the first queued row at or after seq, + 1 (0: none). */
static uint64_t queue_first(struct writer *w, uint64_t seq)
{
    uint64_t got = 0;
    spool_read(w->sp, w->id, seq, 1, SIZE_MAX, first_seq_cb, &got);
    return got;
}

static bool queue_has_from(struct writer *w, uint64_t seq)
{
    return queue_first(w, seq) != 0;
}

/* Appends what may go: rows to resend first, then new rows, while the batch
 * is not being cut. */
static void batch_pump(struct lane *l, struct wtable *t, bool cutting)
{
    const struct conf_dest *cd = l->w->cd;
    size_t limit = l->fail_streak ? 1 : (size_t)cd->max_inflight;
    while (t->retry && t->conn && l->n_inflight < limit) {
        struct wchunk *c = t->retry;
        t->retry = c->next;
        if (send_chunk(l, t, c) != 0) {
            push_retry(t, c);
            batch_abandon(l, t, "could not send an append");
            return;
        }
    }
    while (!cutting && !t->retry && t->conn && l->n_inflight < limit &&
           util_mono_us() >= l->not_before_us) {
        struct wtable *rt = NULL;
        l->want[0] = 0;
        struct wchunk *c = read_batch(l, util_now_ms(), &rt);
        l->want[0] = 0;
        if (!c)
            break;
        l->b_read_us = util_mono_us();
        if (send_chunk(l, t, c) != 0) {
            chunk_free(c);
            batch_abandon(l, t, "could not send an append");
            return;
        }
    }
}

static void batch_poll(struct lane *l, struct wtable *t)
{
    if (!t->conn) {
        usleep(POLL_MS * 1000);
        return;
    }
    for (int rounds = 0; t->conn && rounds < 64; rounds++) {
        struct bqw_result r;
        bqw_conn_next(t->conn, rounds == 0 && t->inflight ? POLL_MS : 0, &r);
        if (r.event == BQW_EV_NONE) {
            if (rounds == 0 && !t->inflight)
                usleep(POLL_MS * 1000);
            return;
        }
        if (r.event == BQW_EV_RESULT) {
            batch_on_result(l, t, &r);
        } else {
            batch_on_closed(l, t, &r.status);
            return;
        }
    }
}

static void batch_main(struct lane *l)
{
    struct writer *w = l->w;
    const struct conf_dest *cd = w->cd;
    settle_layout(l);   /* streams of mode = stream are settled first */
    __atomic_store_n(&w->settled, 1, __ATOMIC_RELEASE);
    while (!stopping(w) && batch_recover(l, " left by the last run") != 0)
        while (!stopping(w) && util_mono_us() < l->not_before_us)
            usleep(POLL_MS * 1000);
    struct wtable *t = table_get(l, w->route.pattern);
    if (!t) {
        log_error("%s: out of memory", cd->name);
        return;
    }
    pthread_mutex_lock(&w->lock);
    t->stream[0] = 0;
    pthread_mutex_unlock(&w->lock);
    t->offsets = true;
    t->next_offset = 0;
    t->uncertain = false;
    struct batch_limits lim = { cd->batch_commit_rows, cd->batch_commit_interval_ms,
                                cd->batch_commit_idle_ms };
    set_state(l, "idle", "");
    while (!stopping(w) || (l->n_inflight && l->bs.phase == BATCH_APPENDING)) {
        if (stopping(w)) {   /* answers in flight: a short while, then leave (restart abandons) */
            uint64_t until = util_mono_us() + 5000000;
            while (l->n_inflight && t->conn && util_mono_us() < until)
                batch_poll(l, t);
            break;
        }
        if (util_mono_us() < l->not_before_us) {
            usleep(POLL_MS * 1000);
            continue;
        }
        if (strcmp(l->state, "backoff") == 0 || strcmp(l->state, "parked") == 0)
            ds_probe(&l->ds);
        enum batch_phase ph = l->bs.phase;
        if (ph == BATCH_FINALIZING || ph == BATCH_COMMITTING) {
            char path[PATH_MAX_LEN];
            snprintf(path, sizeof path, "%s", t->path);
            struct batch_state bs = l->bs;
            if (batch_finish(l, &bs, path) >= 0) {
                pthread_mutex_lock(&w->lock);
                t->stream[0] = 0;
                pthread_mutex_unlock(&w->lock);
                t->next_offset = 0;
                l->read_seq = 0;
                set_state(l, "idle", "");
            }
            continue;
        }
        if (ph == BATCH_NONE) {
            uint64_t first = queue_first(w, 0);
            if (!first) {
                set_state(l, "idle", "");
                usleep(POLL_MS * 1000);
                continue;
            }
            l->b_first_seq = first - 1;
            if (batch_open(l, t) != 0)
                continue;
        }
        if (!t->conn && batch_open(l, t) != 0)
            continue;
        uint64_t now = util_mono_us();
        uint64_t age_ms = (now - l->b_created_us) / 1000, idle_ms = (now - l->b_read_us) / 1000;
        bool empty = !t->retry && !queue_has_from(w, l->read_seq);
        enum batch_cut cut = batch_should_cut(&lim, l->bs.rows, age_ms, idle_ms, empty);
        bool cutting = cut != BATCH_KEEP || (lim.commit_rows && l->bs.rows >= lim.commit_rows);
        batch_pump(l, t, cutting);
        if (!t->conn)
            continue;
        if (cutting && !l->n_inflight && !t->retry && l->bs.phase == BATCH_APPENDING) {
            struct batch_state bs = l->bs;
            bs.phase = BATCH_FINALIZING;
            if (batch_put(w, &bs) != 0) {
                backoff(l, false, "cannot record the batch state in the spool");
                continue;
            }
            batch_set(l, &bs);
            bqw_conn_close(t->conn);
            t->conn = NULL;
            log_debug("%s: batch cut (%s): %llu row(s)", cd->name, batch_cut_name(cut),
                      (unsigned long long)bs.rows);
            continue;
        }
        if (l->bs.phase == BATCH_APPENDING && l->bs.rows == 0 && !l->n_inflight && !t->retry &&
            empty && lim.commit_interval_ms && age_ms >= lim.commit_interval_ms) {
            /* every row of it was dead-lettered: nothing to commit */
            batch_drop_inflight(l, t);
            batch_forget(l);
            pthread_mutex_lock(&w->lock);
            t->stream[0] = 0;
            pthread_mutex_unlock(&w->lock);
            continue;
        }
        batch_poll(l, t);
    }
    if (l->bs.phase == BATCH_APPENDING && l->bs.rows && !l->n_inflight && !t->retry) {
        /* a graceful stop: commit what is appended rather than send it all
         * again after the restart (a failure leaves it to the restart) */
        struct batch_state bs = l->bs;
        bs.phase = BATCH_FINALIZING;
        if (t->conn) {
            bqw_conn_close(t->conn);
            t->conn = NULL;
        }
        if (batch_put(w, &bs) == 0) {
            batch_set(l, &bs);
            log_info("%s: stopping: committing the open batch (%llu row(s)) first", cd->name,
                     (unsigned long long)bs.rows);
            batch_finish(l, &bs, t->path);
        }
    }
    batch_drop_inflight(l, t);
}

/* ---- the thread ---- */

/* Reads the answers of every open table of the lane: without waiting first,
 * then, if none came, waiting up to POLL_MS on one with appends in flight. */
static void poll_results(struct lane *l)
{
    struct writer *w = l->w;
    bool any = false;
    struct wtable *wait_on = NULL;
    size_t busy = 0;
    for (size_t i = 0; i < tcache_count(&l->tables); i++) {
        struct wtable *t = tcache_at(&l->tables, i);
        for (int rounds = 0; t->conn && rounds < 64; rounds++) {
            struct bqw_result r;
            bqw_conn_next(t->conn, 0, &r);
            if (r.event == BQW_EV_NONE)
                break;
            any = true;
            if (r.event == BQW_EV_RESULT) {
                on_result(l, t, &r);
            } else {
                on_closed(l, t, &r.status);
                break;
            }
        }
        if (t->conn && t->inflight) {
            busy++;
            if (!wait_on)
                wait_on = t;
        }
    }
    if (any) {
        record_done(l);
        return;
    }
    if (!wait_on) {
        usleep(POLL_MS * 1000);
        return;
    }
    struct bqw_result r;
    bqw_conn_next(wait_on->conn, busy > 1 ? 5 : POLL_MS, &r);
    if (r.event == BQW_EV_RESULT)
        on_result(l, wait_on, &r);
    else if (r.event == BQW_EV_CLOSED)
        on_closed(l, wait_on, &r.status);
    record_done(l);
    (void)w;
}

/* Sends what may go now: chunks to resend first (a table's new rows never
 * overtake its resends), then new batches. */
static void pump(struct lane *l)
{
    struct writer *w = l->w;
    const struct conf_dest *cd = w->cd;
    size_t limit = l->fail_streak ? 1 : (size_t)cd->max_inflight;
    if (l->want[0]) {
        struct wtable *t = table_get(l, l->want);
        if (!t)
            return;   /* no room among the open tables yet */
        if (!table_ready(t) && table_open(l, t) != 0)
            return;
        l->want[0] = 0;
    }
    bool pending = false;
    for (size_t i = 0; i < tcache_count(&l->tables) && util_mono_us() >= l->not_before_us; i++) {
        struct wtable *t = tcache_at(&l->tables, i);
        if (!t->retry)
            continue;
        if (!table_ready(t) && table_open(l, t) != 0)
            return;
        while (t->retry && table_ready(t) && l->n_inflight < limit) {
            struct wchunk *c = t->retry;
            t->retry = c->next;
            if (send_chunk(l, t, c) != 0) {
                push_retry(t, c);
                drop_conn(l, t);
                break;
            }
        }
        pending |= t->retry != NULL;
    }
    while (!pending && !l->want[0] && l->n_inflight < limit && util_mono_us() >= l->not_before_us) {
        struct wtable *t = NULL;
        struct wchunk *c = read_batch(l, util_now_ms(), &t);
        if (!c)
            break;
        if (send_chunk(l, t, c) != 0) {
            push_retry(t, c);
            drop_conn(l, t);
            break;
        }
    }
}

static void *lane_main(void *arg)
{
    struct lane *l = arg;
    struct writer *w = l->w;
    if (w->cd->batch_mode) {
        batch_main(l);
        return NULL;
    }
    if (l->part.k == 0) {
        /* a batch left by mode = batch: finish (or abandon) it first */
        while (!stopping(w) && batch_recover(l, " (the destination is in mode = stream now)") != 0)
            while (!stopping(w) && util_mono_us() < l->not_before_us)
                usleep(POLL_MS * 1000);
        settle_layout(l);
        __atomic_store_n(&w->settled, 1, __ATOMIC_RELEASE);
    } else {
        while (!stopping(w) && !__atomic_load_n(&w->settled, __ATOMIC_ACQUIRE))
            usleep(POLL_MS * 1000);
    }
    uint64_t stop_deadline = 0;
    while (!stopping(w) || (l->n_inflight && util_mono_us() < stop_deadline)) {
        if (stopping(w) && !stop_deadline)
            stop_deadline = util_mono_us() + 5000000;
        uint64_t now_us = util_mono_us();
        if (!stopping(w) && now_us >= l->not_before_us) {
            if (strcmp(l->state, "backoff") == 0 || strcmp(l->state, "parked") == 0)
                ds_probe(&l->ds);   /* after a wait: logged once per change */
            pump(l);
        }
        poll_results(l);
        if (l->part.route.sharded) {   /* close tables nobody writes to any more */
            pthread_mutex_lock(&w->lock);
            struct wtable *old = tcache_evict(&l->tables, util_mono_us(), TABLE_IDLE_US,
                                              table_busy, NULL);
            pthread_mutex_unlock(&w->lock);
            if (old)
                table_evict(l, old);
        }
        if (!l->n_inflight && util_mono_us() >= l->not_before_us && !l->want[0]) {
            bool retry = false;
            for (size_t i = 0; i < tcache_count(&l->tables); i++)
                retry |= ((struct wtable *)tcache_at(&l->tables, i))->retry != NULL;
            if (!retry)
                set_state(l, "idle", "");
        }
    }
    settle_recorded(l);
    pthread_mutex_lock(&w->lock);
    while (tcache_count(&l->tables)) {
        struct wtable *t = tcache_at(&l->tables, 0);
        tcache_remove(&l->tables, t);
        pthread_mutex_unlock(&w->lock);
        table_free(l, t);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- life cycle ---- */

/* The recorder committed rows of w: they count as delivered now. */
static void on_recorded(void *arg, uint64_t rows)
{
    struct writer *w = arg;
    pthread_mutex_lock(&w->lock);
    w->delivered += rows;
    pthread_mutex_unlock(&w->lock);
}

int writer_create(const struct conf_dest *cd, struct spool *sp, struct writer **out,
                  char *err, size_t errlen)
{
    struct writer *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->cd = cd;
    w->sp = sp;
    pthread_mutex_init(&w->lock, NULL);
    budget_init(&w->budget, cd->max_inflight_bytes);
    route_init(&w->route, cd->table ? cd->table : cd->name, cd->table_time_field);
    snprintf(w->table, sizeof w->table, "%s.%s.%s", cd->project, cd->dataset, w->route.pattern);
    w->n_lanes = cd->connections ? (unsigned)cd->connections : 1;
    w->lanes = calloc(w->n_lanes, sizeof *w->lanes);
    if (!w->lanes) {
        snprintf(err, errlen, "out of memory");
        writer_free(w);
        return -1;
    }
    if (spool_dest(sp, cd->name, true, &w->id) != SPOOL_OK) {
        snprintf(err, errlen, "[destination %s]: cannot open its queue", cd->name);
        writer_free(w);
        return -1;
    }
    if (recorder_create(sp, w->id, cd->name, on_recorded, w, &w->rec) != 0) {
        snprintf(err, errlen, "[destination %s]: out of memory", cd->name);
        writer_free(w);
        return -1;
    }
    for (unsigned k = 0; k < w->n_lanes; k++) {
        struct lane *l = &w->lanes[k];
        l->w = w;
        l->part.k = k;
        l->part.n = w->n_lanes;
        l->part.route = w->route;
        l->done_tail = &l->done;
        snprintf(l->state, sizeof l->state, "idle");
        ds_init(&l->ds, &w->lock, cd->name, "storage", w->table);
        if (tcache_init(&l->tables, LANE_TABLES) != 0) {
            snprintf(err, errlen, "out of memory");
            writer_free(w);
            return -1;
        }
        struct auth_opts ao = { .credentials = cd->credentials, .ca_file = cd->ca_file,
                                .timeout_ms = 10000 };
        char aerr[512];
        if (auth_create(&ao, &l->auth, aerr, sizeof aerr) != 0) {
            snprintf(err, errlen, "[destination %s] credentials: %s", cd->name, aerr);
            writer_free(w);
            return -1;
        }
        struct bqwrite_opts bo = { .target = cd->storage_endpoint, .ca_file = cd->ca_file,
                                   .quota_project = auth_quota_project(l->auth),
                                   .own_connection = w->n_lanes > 1 };
        if (bqwrite_create(&bo, &l->bw, aerr, sizeof aerr) != 0) {
            snprintf(err, errlen, "[destination %s] storage_endpoint: %s", cd->name, aerr);
            writer_free(w);
            return -1;
        }
    }
    log_info("destination %s -> %s via the Storage Write API (%s, %u connection(s), %s, %s)",
             cd->name, w->table, cd->batch_mode ? "mode = batch: pending streams, exactly once" :
             cd->exactly_once ? "exactly once" : "at least once", w->n_lanes,
             cd->storage_endpoint, auth_describe(w->lanes[0].auth));
    *out = w;
    return 0;
}

int writer_start(struct writer *w)
{
    for (unsigned k = 0; k < w->n_lanes; k++) {
        if (pthread_create(&w->lanes[k].thread, NULL, lane_main, &w->lanes[k]) != 0)
            return -1;
        char name[16];   /* for top -H: one per Storage Write connection */
        snprintf(name, sizeof name, "relayd-write%u", k % 100);
        pthread_setname_np(w->lanes[k].thread, name);
        w->lanes[k].started = true;
    }
    return 0;
}

void writer_wake(struct writer *w)
{
    if (w)
        w->woken = 1;
}

static int state_rank(const char *s)
{
    return strcmp(s, "parked") == 0 ? 4 : strcmp(s, "backoff") == 0 ? 3
         : strcmp(s, "sending") == 0 ? 2 : 1;
}

void writer_status(struct writer *w, void *destp)
{
    json_t *dl = json_object();
    uint64_t now_us = util_mono_us(), now_ms = util_now_ms();
    pthread_mutex_lock(&w->lock);
    json_object_set_new(dl, "table", json_string(w->table));
    json_object_set_new(dl, "api", json_string("storage"));
    json_object_set_new(dl, "delivery", json_string(w->cd->exactly_once || w->cd->batch_mode ?
                                                    "exactly_once" : "at_least_once"));
    json_object_set_new(dl, "mode", json_string(w->cd->batch_mode ? "batch" : "stream"));
    if (w->cd->batch_mode) {
        const struct lane *l0 = &w->lanes[0];
        json_t *b = json_object();
        json_object_set_new(b, "state", json_string(l0->bs.phase == BATCH_NONE ? "idle" :
                                                    batch_phase_name(l0->bs.phase)));
        json_object_set_new(b, "stream", json_string(l0->bs.stream));
        json_object_set_new(b, "rows", json_integer((json_int_t)l0->bs.rows));
        json_object_set_new(b, "first_seq", json_integer((json_int_t)l0->bs.first_seq));
        json_object_set_new(b, "last_seq", json_integer((json_int_t)l0->bs.last_seq));
        json_object_set_new(b, "age_s", json_real(l0->bs.phase != BATCH_NONE && l0->b_created_us ?
                            (double)(now_us - l0->b_created_us) / 1e6 : 0));
        json_object_set_new(b, "commits", json_integer((json_int_t)l0->b_commits));
        json_object_set_new(b, "rows_committed", json_integer((json_int_t)l0->b_rows_committed));
        json_object_set_new(b, "last_commit_ms", json_integer((json_int_t)l0->b_last_commit_ms));
        json_object_set_new(b, "last_commit_age_s", json_real(l0->b_last_commit_ms ?
                            (double)(now_ms - l0->b_last_commit_ms) / 1000 : -1));
        json_object_set_new(b, "commit_rows", json_integer((json_int_t)w->cd->batch_commit_rows));
        json_object_set_new(b, "commit_interval_s",
                            json_real((double)w->cd->batch_commit_interval_ms / 1000));
        json_object_set_new(b, "commit_idle_s", json_real((double)w->cd->batch_commit_idle_ms / 1000));
        json_object_set_new(dl, "batch", b);
    }
    /* the destination's state is its worst connection's */
    struct lane *worst = &w->lanes[0];
    size_t inflight = 0;
    uint64_t not_before = 0;
    json_t *conns = json_array();
    for (unsigned k = 0; k < w->n_lanes; k++) {
        struct lane *l = &w->lanes[k];
        if (state_rank(l->state) > state_rank(worst->state))
            worst = l;
        inflight += l->n_inflight;
        if (l->not_before_us > not_before)
            not_before = l->not_before_us;
        json_t *c = json_object(), *tabs = json_array();
        json_object_set_new(c, "connection", json_integer(k));
        json_object_set_new(c, "state", json_string(l->state));
        json_object_set_new(c, "in_flight", json_integer((json_int_t)l->n_inflight));
        for (size_t i = 0; i < tcache_count(&l->tables); i++) {
            const struct wtable *t = tcache_at(&l->tables, i);
            json_t *o = json_object();
            json_object_set_new(o, "table", json_string(t->fq));
            if (w->cd->exactly_once) {
                json_object_set_new(o, "stream", json_string(t->stream));
                json_object_set_new(o, "next_offset", json_integer((json_int_t)t->next_offset));
            }
            json_array_append_new(tabs, o);
        }
        json_object_set_new(c, "tables", tabs);
        json_array_append_new(conns, c);
    }
    const char *state = worst->state;
    if (strcmp(state, "sending") == 0 && ds_in_episode(&worst->ds))
        state = "probing";   /* after failures: one append tests the way */
    char why[800], sending[96];
    snprintf(sending, sizeof sending, "appending over %u AppendRows connection(s)", w->n_lanes);
    ds_why(&worst->ds, state, sending, why, sizeof why);
    json_object_set_new(dl, "state", json_string(state));
    json_object_set_new(dl, "delivered", json_integer((json_int_t)w->delivered));
    json_object_set_new(dl, "retried", json_integer((json_int_t)w->retried));
    json_object_set_new(dl, "dead_lettered", json_integer((json_int_t)w->dead_lettered));
    json_object_set_new(dl, "requests", json_integer((json_int_t)w->appends));
    json_object_set_new(dl, "failed_requests", json_integer((json_int_t)w->failed));
    json_object_set_new(dl, "in_flight", json_integer((json_int_t)inflight));
    json_object_set_new(dl, "in_flight_bytes", json_integer((json_int_t)budget_used(&w->budget)));
    json_object_set_new(dl, "in_flight_bytes_peak", json_integer((json_int_t)budget_peak(&w->budget)));
    json_object_set_new(dl, "max_inflight_bytes", json_integer((json_int_t)w->cd->max_inflight_bytes));
    json_object_set_new(dl, "connections", json_integer(w->n_lanes));
    double wait = not_before > now_us ? (double)(not_before - now_us) / 1e6 : 0;
    json_object_set_new(dl, "backoff_s", json_real(wait));
    json_object_set_new(dl, "why", json_string(why));
    json_object_set_new(dl, "last_error", json_string(w->last_error));
    json_object_set_new(dl, "last_error_age_s", json_real(w->last_error_ms ?
                        (double)(now_ms - w->last_error_ms) / 1000 : -1));
    json_object_set_new(dl, "dead_lettered_by_reason", counts_json(&w->dead_by_reason));
    json_object_set_new(dl, "latency", histo_json(&w->latency));
    uint64_t refreshes = 0;
    for (unsigned k = 0; k < w->n_lanes; k++)
        refreshes += w->lanes[k].auth ? auth_refreshes(w->lanes[k].auth) : 0;
    json_object_set_new(dl, "token_refreshes", json_integer((json_int_t)refreshes));
    if (w->cd->exactly_once) {   /* the first connection's stream of the destination's table */
        const struct wtable *t0 = NULL;
        for (size_t i = 0; i < tcache_count(&w->lanes[0].tables); i++) {
            const struct wtable *t = tcache_at(&w->lanes[0].tables, i);
            if (!t0 || strcmp(t->id, w->route.pattern) == 0)
                t0 = t;
        }
        json_object_set_new(dl, "stream", json_string(t0 ? t0->stream : ""));
        json_object_set_new(dl, "next_offset", json_integer(t0 ? (json_int_t)t0->next_offset : 0));
    }
    json_object_set_new(dl, "connection_details", conns);
    pthread_mutex_unlock(&w->lock);
    json_object_set_new((json_t *)destp, "delivery", dl);
}

void writer_stop(struct writer *w, unsigned wait_ms)
{
    (void)wait_ms;
    if (!w)
        return;
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    if (w->rec)
        recorder_cancel(w->rec);   /* a stop never waits on a full disk */
    for (unsigned k = 0; w->lanes && k < w->n_lanes; k++) {
        if (w->lanes[k].started) {
            pthread_join(w->lanes[k].thread, NULL);
            w->lanes[k].started = false;
        }
    }
}

void writer_free(struct writer *w)
{
    if (!w)
        return;
    writer_stop(w, 0);
    for (unsigned k = 0; w->lanes && k < w->n_lanes; k++) {
        struct lane *l = &w->lanes[k];
        while (l->tables.e && tcache_count(&l->tables)) {
            struct wtable *t = tcache_at(&l->tables, 0);
            tcache_remove(&l->tables, t);
            table_free(l, t);
        }
        tcache_free(&l->tables);
        free_list(l->done);
        free_list(l->spare);
        free(l->done_seqs);
        bqwrite_free(l->bw);
        auth_free(l->auth);
    }
    free(w->lanes);
    recorder_free(w->rec);
    budget_destroy(&w->budget);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
