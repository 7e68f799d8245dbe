/*
 * writer.c -- Storage Write API delivery for one destination. See writer.h.
 *
 * Invariant for exactly-once: the rows in the queue, in seq order, are the
 * rows of offsets next_offset, next_offset + 1, ... of the stream. It holds
 * because a row leaves the queue only (a) in the transaction that moves
 * next_offset past it, after its append was acknowledged, or (b) to the
 * dead-letter store before it was ever sent (it does not fit the schema, or
 * BigQuery listed it in row_errors, which means none of that append's rows
 * were written). So when the fate of appends is uncertain (a crash, a lost
 * connection), the writer knows which row belongs at each offset and can ask
 * the stream, one exact offset at a time, where it ends.
 */
#include "writer.h"
#include "auth.h"
#include "bqrest.h"
#include "bqwrite.h"
#include "delivstate.h"
#include "https.h"
#include "log.h"
#include "rowenc.h"
#include "sender.h"
#include "util.h"
#include "version.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define POLL_MS 50
#define SCHEMA_REFRESH_US (5ull * 1000000)   /* at most one tables.get per 5 s on unknown columns */

struct wrow {
    uint64_t seq, time_ms;
    size_t joff, poff;        /* into chunk json / proto buffers */
    uint32_t jlen, plen;
};

struct wchunk {
    struct wchunk *next;
    struct wrow *rows;
    size_t n, cap;
    struct buf json, proto;
    int64_t offset;           /* exactly-once: the offset of its first row */
    uint32_t attempts;
    uint64_t first_ms, last_ms;
    uint64_t sent_us;         /* monotonic, for the latency histogram */
};

struct writer {
    const struct conf_dest *cd;
    struct spool *sp;
    uint32_t id;
    char table_path[600];     /* projects/P/datasets/D/tables/T */
    char table[320];          /* P.D.T, for people */
    char stream[1024];
    char state_key[64];       /* spool meta key for the exactly-once state */
    int64_t next_offset;      /* exactly-once: offset of the queue's first row */
    bool uncertain;           /* appends may have landed without our knowing */
    struct auth *auth;
    struct bqwrite *bw;
    struct bqw_conn *conn;
    struct rowenc_schema *schema;
    struct buf desc;
    struct wchunk *inflight, **inflight_tail;   /* sent, oldest first */
    struct wchunk *retry;                       /* to resend, before new rows */
    uint64_t read_seq;
    uint64_t refetched_us;    /* when an unknown column last made us fetch the schema */
    uint64_t not_before_us;
    unsigned fail_streak;
    pthread_t thread;
    bool started;
    volatile int stop;
    volatile int woken;
    pthread_mutex_t lock;     /* guards the status fields below */
    uint64_t delivered, retried, dead_lettered, appends, failed;
    struct counts dead_by_reason;
    struct histo latency;
    char state[16], why[300], last_error[512];
    uint64_t last_error_ms;
    struct delivstate ds;     /* state changes: logs and the status reason */
};

const char *writer_name(const struct writer *w) { return w->cd->name; }
const struct conf_dest *writer_conf(const struct writer *w) { return w->cd; }

static void set_state(struct writer *w, const char *state, const char *why)
{
    pthread_mutex_lock(&w->lock);
    snprintf(w->state, sizeof w->state, "%s", state);
    if (why)
        snprintf(w->why, sizeof w->why, "%s", why);
    pthread_mutex_unlock(&w->lock);
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
static void backoff(struct writer *w, bool throttled, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void backoff(struct writer *w, bool throttled, const char *fmt, ...)
{
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    uint64_t base = throttled && w->cd->rate_limit_wait_ms ? w->cd->rate_limit_wait_ms
                                                          : w->cd->retry_base_ms;
    uint64_t delay = util_backoff_ms(base, w->cd->retry_cap_ms, w->fail_streak++,
                                     throttled ? UTIL_JITTER_EQUAL : UTIL_JITTER_FULL);
    w->not_before_us = util_mono_us() + delay * 1000;
    set_state(w, "backoff", why);
    ds_wait(&w->ds, DS_BACKOFF, NULL, why, delay);
}

/* The table (or stream) is missing: wait park_wait. */
static void park(struct writer *w, const char *what)
{
    char why[800];
    snprintf(why, sizeof why, "table %s not found (%s): create it; retrying every %llu s", w->table,
             what, (unsigned long long)w->cd->park_wait_ms / 1000);
    w->not_before_us = util_mono_us() + w->cd->park_wait_ms * 1000;
    set_state(w, "parked", why);
    ds_wait(&w->ds, DS_PARKED, "not_found", why, w->cd->park_wait_ms);
}

/* ---- chunks ---- */

static void chunk_free(struct wchunk *c)
{
    if (!c)
        return;
    free(c->rows);
    buf_free(&c->json);
    buf_free(&c->proto);
    free(c);
}

static int chunk_add(struct wchunk *c, uint64_t seq, uint64_t time_ms, const char *json,
                     size_t jlen, const char *proto, size_t plen)
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
    r->joff = c->json.len;
    r->jlen = (uint32_t)jlen;
    r->poff = c->proto.len;
    r->plen = (uint32_t)plen;
    if (buf_append(&c->json, json, jlen) || buf_append(&c->proto, proto, plen))
        return -1;
    c->n++;
    return 0;
}

/* A new chunk with rows [from, from + n) of src. */
static struct wchunk *chunk_slice(const struct wchunk *src, size_t from, size_t n)
{
    struct wchunk *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    for (size_t i = from; i < from + n; i++) {
        const struct wrow *r = &src->rows[i];
        if (chunk_add(c, r->seq, r->time_ms, src->json.data + r->joff, r->jlen,
                      src->proto.data + r->poff, r->plen)) {
            chunk_free(c);
            return NULL;
        }
    }
    c->attempts = src->attempts;
    c->first_ms = src->first_ms;
    c->last_ms = src->last_ms;
    return c;
}

/* Puts every chunk in flight back in front of the retry list, in order. */
static void requeue_inflight(struct writer *w)
{
    if (!w->inflight)
        return;
    *w->inflight_tail = w->retry;
    w->retry = w->inflight;
    w->inflight = NULL;
    w->inflight_tail = &w->inflight;
}

/* ---- outcomes ---- */

struct dead {
    uint64_t seq;
    char reason[32];
    char detail[600];
};

/* Records, in one transaction: rows delivered (removed; exactly-once also
 * moves next_offset past them) and rows dead-lettered. */
static int record(struct writer *w, const uint64_t *done, size_t n_done, const struct dead *dead,
                  size_t n_dead, const struct wchunk *hist)
{
    if (!n_done && !n_dead)
        return 0;
    struct spool_txn *t = NULL;
    int rc = spool_txn_begin(w->sp, &t);
    for (size_t i = 0; rc == SPOOL_OK && i < n_done; i++) {
        rc = spool_txn_remove(t, w->id, done[i]);
        if (rc == SPOOL_NOTFOUND)
            rc = SPOOL_OK;
    }
    for (size_t i = 0; rc == SPOOL_OK && i < n_dead; i++) {
        struct spool_dl_info info = { .reason = dead[i].reason, .detail = dead[i].detail,
                                      .attempts = hist ? hist->attempts : 0,
                                      .first_attempt_ms = hist ? hist->first_ms : 0,
                                      .last_attempt_ms = hist ? hist->last_ms : 0 };
        rc = spool_txn_dead_letter_info(t, w->id, dead[i].seq, &info);
        if (rc == SPOOL_NOTFOUND)
            rc = SPOOL_OK;
    }
    if (rc == SPOOL_OK && w->cd->exactly_once && n_done) {
        char state[1100];
        int len = snprintf(state, sizeof state, "%lld %s", (long long)(w->next_offset + (int64_t)n_done),
                           w->stream);
        rc = spool_txn_put_meta(t, w->state_key, state, (size_t)len);
    }
    if (rc == SPOOL_OK)
        rc = spool_txn_commit(t);
    else
        spool_txn_abort(t);
    if (rc == SPOOL_IO) {
        log_error("%s: recording outcomes failed: %s; stopping", w->cd->name, spool_last_error());
        _exit(5);
    }
    if (rc != SPOOL_OK)
        return -1;
    if (w->cd->exactly_once)
        w->next_offset += (int64_t)n_done;
    count(w, &w->delivered, n_done);
    count(w, &w->dead_lettered, n_dead);
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < n_dead; i++)
        counts_add(&w->dead_by_reason, dead[i].reason, 1);
    pthread_mutex_unlock(&w->lock);
    if (n_dead)
        log_warn("%s: moved %zu row(s) to the dead-letter store", w->cd->name, n_dead);
    return 0;
}

static int record_chunk_done(struct writer *w, const struct wchunk *c)
{
    uint64_t *seqs = malloc((c->n ? c->n : 1) * sizeof *seqs);
    if (!seqs)
        return -1;
    for (size_t i = 0; i < c->n; i++)
        seqs[i] = c->rows[i].seq;
    int rc = record(w, seqs, c->n, NULL, 0, c);
    free(seqs);
    return rc;
}

/* ---- schema ---- */

/* tables.get over the REST endpoint. */
static int fetch_schema(struct writer *w, struct buf *out, char *err, size_t errlen)
{
    const struct conf_dest *cd = w->cd;
    char token[4096];
    if (auth_token(w->auth, token, sizeof token, err, errlen) != 0)
        return -1;
    struct buf url = { 0 };
    buf_puts(&url, cd->endpoint);
    bqrest_table_path(&url, cd->project, cd->dataset, cd->table ? cd->table : cd->name);
    long http = 0;
    int rc = https_call("GET", url.data, token, cd->ca_file, NULL, 30000, out, &http, err, errlen);
    memset(token, 0, sizeof token);
    if (rc == 0 && http != 200) {
        struct bq_error be;
        bqrest_classify(http, out->data, out->len, &be);
        snprintf(err, errlen, "tables.get %s.%s.%s: HTTP %ld: %s", cd->project, cd->dataset,
                 cd->table ? cd->table : cd->name, http, be.message);
        rc = http == 404 ? -2 : -1;
    }
    buf_free(&url);
    return rc;
}

/* (Re)loads the schema and rebuilds the writer schema. Returns 0, -1, -2 (no table). */
static int load_schema(struct writer *w, char *err, size_t errlen)
{
    struct buf text = { 0 };
    int rc = 0;
    if (w->cd->schema_file) {
        FILE *f = fopen(w->cd->schema_file, "rb");
        if (!f) {
            snprintf(err, errlen, "schema_file %s: %s", w->cd->schema_file, strerror(errno));
            return -1;
        }
        char chunk[8192];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            buf_append(&text, chunk, n);
        fclose(f);
    } else {
        rc = fetch_schema(w, &text, err, errlen);
    }
    if (rc == 0) {
        struct rowenc_schema *s;
        struct rowenc_error re;
        if (rowenc_schema_parse(text.data ? text.data : "", text.len, &s, &re) != ROWENC_OK) {
            snprintf(err, errlen, "%s: %s", w->cd->schema_file ? w->cd->schema_file : "tables.get",
                     re.msg);
            rc = -1;
        } else {
            struct buf d = { 0 };
            if (rowenc_descriptor(s, "row", &d, &re) != ROWENC_OK) {
                snprintf(err, errlen, "writer schema: %s", re.msg);
                rowenc_schema_free(s);
                buf_free(&d);
                rc = -1;
            } else {
                rowenc_schema_free(w->schema);
                w->schema = s;
                buf_free(&w->desc);
                w->desc = d;
            }
        }
    }
    buf_free(&text);
    return rc;
}

/* ---- the connection ---- */

static void drop_conn(struct writer *w)
{
    if (w->conn) {
        bqw_conn_close(w->conn);
        w->conn = NULL;
    }
    requeue_inflight(w);
    if (w->cd->exactly_once)
        w->uncertain = true;   /* appends in flight may or may not have landed */
}

static int open_conn(struct writer *w)
{
    char token[4096], err[512];
    if (auth_token(w->auth, token, sizeof token, err, sizeof err) != 0) {
        note_error(w, "credentials: %s", err);
        backoff(w, false, "%s", err);
        return -1;
    }
    struct bqw_status st;
    if (w->cd->exactly_once && !w->stream[0]) {
        if (bqwrite_create_stream(w->bw, token, w->table_path, false, w->stream,
                                  sizeof w->stream, &st) != BQW_OK) {
            note_error(w, "CreateWriteStream: %s: %s", bqw_code_name(st.code), st.message);
            if (st.code == BQW_NOT_FOUND)
                park(w, "CreateWriteStream: NOT_FOUND");
            else
                backoff(w, st.code == BQW_RESOURCE_EXHAUSTED, "CreateWriteStream: %s: %s",
                        bqw_code_name(st.code), st.message);
            memset(token, 0, sizeof token);
            return -1;
        }
        /* a new stream starts at offset 0 at the queue's head */
        w->next_offset = 0;
        struct spool_txn *t = NULL;
        char state[1100];
        int len = snprintf(state, sizeof state, "0 %s", w->stream);
        if (spool_txn_begin(w->sp, &t) != SPOOL_OK ||
            spool_txn_put_meta(t, w->state_key, state, (size_t)len) != SPOOL_OK ||
            spool_txn_commit(t) != SPOOL_OK) {
            w->stream[0] = 0;
            memset(token, 0, sizeof token);
            return -1;
        }
        log_info("%s: created write stream %s", w->cd->name, w->stream);
    }
    int rc = bqw_conn_open(w->bw, token, w->stream, &w->conn, &st);
    memset(token, 0, sizeof token);
    if (rc != BQW_OK) {
        note_error(w, "AppendRows: %s: %s", bqw_code_name(st.code), st.message);
        backoff(w, false, "AppendRows: %s: %s", bqw_code_name(st.code), st.message);
        return -1;
    }
    set_state(w, "sending", "");
    return 0;
}

/* ---- reading and encoding ---- */

struct reader {
    struct writer *w;
    struct wchunk *c;
    struct dead *dead;
    size_t n_dead, cap_dead;
    uint64_t *dseqs;
    size_t bytes, seen;
    uint64_t last_seq;
    bool full;
    bool unknown;             /* a row named a column the schema lacks */
    struct buf proto;
};

static void add_dead(struct reader *r, uint64_t seq, const char *reason, const char *detail)
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
    snprintf(d->detail, sizeof d->detail, "%s", detail);
}

static int read_row(const struct spool_record *rec, void *arg)
{
    struct reader *r = arg;
    const struct conf_dest *cd = r->w->cd;
    r->seen++;
    if (rec->corrupt) {
        add_dead(r, rec->seq, "corrupt", rec->problem);
        r->last_seq = rec->seq;
        return 0;
    }
    if (r->c->n > 0 && (r->c->n >= cd->batch_rows || r->bytes + rec->len > cd->batch_bytes)) {
        r->full = true;
        return 1;
    }
    buf_reset(&r->proto);
    struct rowenc_error re;
    int rc = rowenc_encode(r->w->schema, rec->row, rec->len,
                           cd->ignore_unknown_values ? ROWENC_IGNORE_UNKNOWN : 0, &r->proto, &re);
    r->last_seq = rec->seq;
    if (rc == ROWENC_NOMEM)
        return 1;
    if (rc != ROWENC_OK) {   /* does not fit the schema: never sent */
        if (rc == ROWENC_UNKNOWN)
            r->unknown = true;
        add_dead(r, rec->seq, "invalid", re.msg);
        return 0;
    }
    if (chunk_add(r->c, rec->seq, rec->time_ms, rec->row, rec->len, r->proto.data, r->proto.len))
        return 1;
    r->bytes += rec->len + 16;
    return 0;
}

/* The next batch at the head of the queue, or NULL (nothing due). Rows that
 * do not fit the schema are dead-lettered first (before anything is sent). */
static struct wchunk *read_batch(struct writer *w, uint64_t now_ms)
{
    struct reader r = { .w = w };
    r.c = calloc(1, sizeof *r.c);
    if (!r.c)
        return NULL;
    spool_read(w->sp, w->id, w->read_seq, w->cd->batch_rows + 1, SIZE_MAX, read_row, &r);
    buf_free(&r.proto);
    if (r.unknown && !w->cd->schema_file &&
        (!w->refetched_us || util_mono_us() - w->refetched_us >= SCHEMA_REFRESH_US)) {
        /* a column we do not know: the table may have gained it since we
         * fetched its schema. Look again before calling the row invalid. */
        char err[512];
        w->refetched_us = util_mono_us();
        if (load_schema(w, err, sizeof err) == 0)
            log_info("%s: a row names a column missing from the cached schema: schema "
                     "fetched again", w->cd->name);
        free(r.dead);
        chunk_free(r.c);
        return NULL;   /* read again next turn with the fresh schema */
    }
    if (r.n_dead) {
        if (record(w, NULL, 0, r.dead, r.n_dead, NULL) != 0) {   /* try again next turn */
            free(r.dead);
            chunk_free(r.c);
            return NULL;
        }
    }
    free(r.dead);
    struct wchunk *c = r.c;
    if (c->n == 0) {
        chunk_free(c);
        return NULL;
    }
    bool due = r.full || c->n >= w->cd->batch_rows ||
               now_ms >= c->rows[0].time_ms + w->cd->flush_interval_ms || w->stop;
    if (!due) {
        chunk_free(c);
        return NULL;
    }
    w->read_seq = c->rows[c->n - 1].seq + 1;
    return c;
}

/* ---- appending ---- */

static int send_chunk(struct writer *w, struct wchunk *c)
{
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
    if (w->cd->exactly_once) {
        /* the offset of the first row: next_offset plus the rows in flight before it */
        off = w->next_offset;
        for (struct wchunk *f = w->inflight; f; f = f->next)
            off += (int64_t)f->n;
    }
    int rc = bqw_conn_append(w->conn, w->desc.data, w->desc.len, rows, lens, c->n, off);
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
    c->next = NULL;
    *w->inflight_tail = c;
    w->inflight_tail = &c->next;
    count(w, &w->appends, 1);
    return 0;
}

static struct wchunk *pop_inflight(struct writer *w)
{
    struct wchunk *c = w->inflight;
    if (c) {
        w->inflight = c->next;
        if (!w->inflight)
            w->inflight_tail = &w->inflight;
        c->next = NULL;
    }
    return c;
}

static size_t n_inflight(const struct writer *w)
{
    size_t n = 0;
    for (const struct wchunk *c = w->inflight; c; c = c->next)
        n++;
    return n;
}

/* ---- exactly-once: settle uncertain appends by asking the stream ---- */

struct probe_rows {
    uint64_t *seqs;
    char **rows;
    size_t *lens;
    size_t n, cap;
    struct writer *w;
};

static int probe_read(const struct spool_record *rec, void *arg)
{
    struct probe_rows *p = arg;
    if (rec->corrupt)
        return 0;
    struct buf b = { 0 };
    struct rowenc_error re;
    if (rowenc_encode(p->w->schema, rec->row, rec->len,
                      p->w->cd->ignore_unknown_values ? ROWENC_IGNORE_UNKNOWN : 0, &b, &re) != ROWENC_OK) {
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
static int probe(struct writer *w, const char *row, size_t len, int64_t off)
{
    const char *rows[1] = { row };
    size_t lens[1] = { len };
    if (bqw_conn_append(w->conn, w->desc.data, w->desc.len, rows, lens, 1, off) != 0)
        return -1;
    for (;;) {
        struct bqw_result r;
        bqw_conn_next(w->conn, 30000, &r);
        if (r.event == BQW_EV_RESULT)
            return r.ok ? BQW_OK : r.error.code;
        if (r.event == BQW_EV_CLOSED || w->stop)
            return -1;
    }
}

/* Finds where the stream ends, between next_offset and what could have been
 * sent, and records the rows found written as delivered. */
static int resync(struct writer *w)
{
    size_t span = (size_t)(w->cd->max_inflight * w->cd->batch_rows);
    struct probe_rows p = { .w = w, .cap = span };
    p.seqs = calloc(span, sizeof *p.seqs);
    p.rows = calloc(span, sizeof *p.rows);
    p.lens = calloc(span, sizeof *p.lens);
    int rc = -1;
    if (!p.seqs || !p.rows || !p.lens)
        goto out;
    spool_read(w->sp, w->id, 0, span * 2, SIZE_MAX, probe_read, &p);
    if (p.n == 0) {
        rc = 0;
        goto out;
    }
    /* end is in [base, base + n]: probe the first row first (the usual case:
     * nothing of it landed, and the probe itself appends it) */
    int64_t base = w->next_offset;
    int code = probe(w, p.rows[0], p.lens[0], base);
    size_t written = 0;   /* rows of the queue found in the stream */
    if (code == BQW_OK) {
        written = 1;
    } else if (code == BQW_ALREADY_EXISTS) {
        /* end > base; end <= base + n. lo: known written index; hi: bound */
        size_t lo = 0, hi = p.n;   /* rows [0, lo] written; rows >= hi not written */
        while (lo + 1 < hi) {
            size_t mid = (lo + 1 + hi) / 2;
            if (mid >= hi)
                mid = hi - 1;
            code = probe(w, p.rows[mid], p.lens[mid], base + (int64_t)mid);
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
                  "starting a new stream", w->cd->name, w->stream, (long long)base);
        w->stream[0] = 0;
        rc = -1;
        goto out;
    } else {
        goto out;
    }
    uint64_t *seqs = p.seqs;
    if (written && record(w, seqs, written, NULL, 0, NULL) != 0)
        goto out;
    if (written)
        log_info("%s: %zu row(s) were already in stream %s: recorded as delivered",
                 w->cd->name, written, w->stream);
    /* Start again from the queue's (new) head: its first row belongs at the
     * stream's end. Chunks kept for resending were built before we knew what
     * landed; the queue is now the truth, so they go. */
    while (w->retry) {
        struct wchunk *c = w->retry;
        w->retry = c->next;
        chunk_free(c);
    }
    w->read_seq = 0;
    w->uncertain = false;
    rc = 0;
out:
    for (size_t i = 0; p.rows && i < p.n; i++)
        free(p.rows[i]);
    free(p.seqs);
    free(p.rows);
    free(p.lens);
    return rc;
}

/* ---- results ---- */

static void on_result(struct writer *w, const struct bqw_result *r)
{
    struct wchunk *c = pop_inflight(w);
    if (!c)
        return;
    pthread_mutex_lock(&w->lock);
    histo_add(&w->latency, (double)(util_mono_us() - c->sent_us) / 1e6);
    pthread_mutex_unlock(&w->lock);
    if (r->schema_changed) {
        char err[512];
        if (load_schema(w, err, sizeof err) == 0)
            log_info("%s: the table's schema changed: writer schema rebuilt", w->cd->name);
    }
    if (r->ok) {
        if (w->cd->exactly_once && r->offset >= 0 && r->offset != c->offset) {
            /* the server put them elsewhere than asked: stop trusting our count */
            log_error("%s: append landed at offset %lld, expected %lld; resynchronising",
                      w->cd->name, (long long)r->offset, (long long)c->offset);
            c->next = w->retry;
            w->retry = c;
            drop_conn(w);
            return;
        }
        if (record_chunk_done(w, c) != 0) {
            c->next = w->retry;   /* could not record: resend (insertIds do not exist
                                   * here; exactly-once resync will find them written) */
            w->retry = c;
            drop_conn(w);
            return;
        }
        w->fail_streak = 0;
        ds_ok(&w->ds, w->sp, w->id);
        chunk_free(c);
        return;
    }
    const struct bqw_status *e = &r->error;
    note_error(w, "append: %s: %s", bqw_code_name(e->code), e->message);
    if (r->n_row_errors) {
        /* none of the rows was written: dead-letter the named ones, resend the rest */
        struct dead *dead = calloc(r->n_row_errors, sizeof *dead);
        bool *bad = calloc(c->n, sizeof *bad);
        size_t nd = 0;
        for (size_t i = 0; dead && bad && i < r->n_row_errors; i++) {
            int64_t ix = r->row_errors[i].index;
            if (ix < 0 || (size_t)ix >= c->n || bad[ix])
                continue;
            bad[ix] = true;
            dead[nd].seq = c->rows[ix].seq;
            snprintf(dead[nd].reason, sizeof dead[nd].reason, "invalid");
            snprintf(dead[nd].detail, sizeof dead[nd].detail, "%s", r->row_errors[i].message);
            nd++;
        }
        struct wchunk *rest = calloc(1, sizeof *rest);
        for (size_t i = 0; rest && bad && i < c->n; i++)
            if (!bad[i])
                chunk_add(rest, c->rows[i].seq, c->rows[i].time_ms, c->json.data + c->rows[i].joff,
                          c->rows[i].jlen, c->proto.data + c->rows[i].poff, c->rows[i].plen);
        if (nd && record(w, NULL, 0, dead, nd, c) == 0 && rest) {
            rest->attempts = c->attempts;
            rest->first_ms = c->first_ms;
            rest->last_ms = c->last_ms;
            /* later appends were sent at offsets that counted the bad rows:
             * start over on a fresh connection */
            if (rest->n) {
                rest->next = w->retry;
                w->retry = rest;
            } else {
                chunk_free(rest);
            }
            chunk_free(c);
        } else {
            chunk_free(rest);
            c->next = w->retry;
            w->retry = c;
        }
        free(dead);
        free(bad);
        drop_conn(w);
        w->uncertain = false;   /* the server said exactly what happened */
        return;
    }
    switch (e->code) {
    case BQW_ALREADY_EXISTS:
    case BQW_OUT_OF_RANGE:
        c->next = w->retry;
        w->retry = c;
        drop_conn(w);            /* resync on reconnect settles it */
        return;
    case BQW_INVALID_ARGUMENT:
        if (c->n > 1) {          /* something in it is malformed: bisect */
            size_t half = c->n / 2;
            struct wchunk *a = chunk_slice(c, 0, half), *b = chunk_slice(c, half, c->n - half);
            if (a && b) {
                b->next = w->retry;
                a->next = b;
                w->retry = a;
                chunk_free(c);
            } else {
                chunk_free(a);
                chunk_free(b);
                c->next = w->retry;
                w->retry = c;
            }
        } else {
            struct dead d = { .seq = c->rows[0].seq };
            snprintf(d.reason, sizeof d.reason, "invalid");
            snprintf(d.detail, sizeof d.detail, "%s: %s", bqw_code_name(e->code), e->message);
            if (record(w, NULL, 0, &d, 1, c) == 0) {
                chunk_free(c);
            } else {
                c->next = w->retry;
                w->retry = c;
            }
        }
        drop_conn(w);
        return;
    case BQW_PERMISSION_DENIED: {
        struct dead *d = calloc(c->n, sizeof *d);
        for (size_t i = 0; d && i < c->n; i++) {
            d[i].seq = c->rows[i].seq;
            snprintf(d[i].reason, sizeof d[i].reason, "permission-denied");
            snprintf(d[i].detail, sizeof d[i].detail, "%s", e->message);
        }
        if (d && record(w, NULL, 0, d, c->n, c) == 0) {
            chunk_free(c);
        } else {
            c->next = w->retry;
            w->retry = c;
        }
        free(d);
        drop_conn(w);
        return;
    }
    case BQW_NOT_FOUND:
        c->next = w->retry;
        w->retry = c;
        drop_conn(w);
        park(w, w->cd->exactly_once ? "append: NOT_FOUND: the table or its write stream"
                                    : "append: NOT_FOUND");
        if (w->cd->exactly_once)
            w->stream[0] = 0;    /* the stream is gone: a new one, after a resync */
        return;
    default:                     /* RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, ABORTED ... */
        c->next = w->retry;
        w->retry = c;
        count(w, &w->retried, c->n);
        drop_conn(w);
        backoff(w, e->code == BQW_RESOURCE_EXHAUSTED, "append: %s: %s", bqw_code_name(e->code),
                e->message);
        return;
    }
}

/* ---- the thread ---- */

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    char err[512];
    uint64_t stop_deadline = 0;
    while (!w->schema && !w->stop) {
        int rc = load_schema(w, err, sizeof err);
        if (rc == 0)
            break;
        note_error(w, "%s", err);
        uint64_t wait = rc == -2 ? w->cd->park_wait_ms : w->cd->retry_cap_ms / 4 + 1000;
        if (rc == -2) {
            park(w, err);
        } else {
            w->not_before_us = util_mono_us() + wait * 1000;
            set_state(w, "backoff", err);
            ds_wait(&w->ds, DS_BACKOFF, NULL, err, wait);
        }
        for (uint64_t t = 0; t < wait && !w->stop; t += POLL_MS)
            usleep(POLL_MS * 1000);
        if (!w->stop)
            ds_probe(&w->ds);
    }
    if (w->schema)
        ds_ok(&w->ds, w->sp, w->id);   /* the table is there (rows may still wait) */
    while (!w->stop || (w->inflight && util_mono_us() < stop_deadline)) {
        if (w->stop && !stop_deadline)
            stop_deadline = util_mono_us() + 5000000;
        uint64_t now_us = util_mono_us();
        if (!w->stop && now_us >= w->not_before_us) {
            if (!w->conn)
                ds_probe(&w->ds);   /* after a wait: logged once per change */
            if (!w->conn && open_conn(w) == 0 && w->uncertain && resync(w) != 0) {
                note_error(w, "could not settle appends of uncertain fate; retrying");
                drop_conn(w);
                backoff(w, false, "could not settle appends of uncertain fate (resynchronising "
                        "the stream)");
            }
            size_t limit = w->fail_streak ? 1 : (size_t)w->cd->max_inflight;
            while (w->conn && n_inflight(w) < limit) {
                struct wchunk *c = w->retry;
                if (c)
                    w->retry = c->next;
                else if (!(c = read_batch(w, util_now_ms())))
                    break;
                if (send_chunk(w, c) != 0) {
                    c->next = w->retry;
                    w->retry = c;
                    drop_conn(w);
                    break;
                }
            }
        }
        if (!w->conn) {
            usleep(POLL_MS * 1000);
            continue;
        }
        struct bqw_result r;
        bqw_conn_next(w->conn, w->inflight ? POLL_MS : POLL_MS, &r);
        if (r.event == BQW_EV_RESULT) {
            on_result(w, &r);
        } else if (r.event == BQW_EV_CLOSED) {
            note_error(w, "connection closed: %s: %s", bqw_code_name(r.status.code),
                       r.status.message);
            bool idle = r.status.code == BQW_ABORTED && strstr(r.status.message, "inactive");
            if (r.status.code == BQW_UNAUTHENTICATED)
                auth_invalidate(w->auth);
            drop_conn(w);
            if (!idle && w->fail_streak > 0) {
                backoff(w, r.status.code == BQW_RESOURCE_EXHAUSTED, "AppendRows: %s: %s",
                        bqw_code_name(r.status.code), r.status.message);
            } else {
                char why[600];
                snprintf(why, sizeof why, "AppendRows: %s: %s", bqw_code_name(r.status.code),
                         r.status.message);
                ds_event(&w->ds, idle ? LOG_INFO : LOG_WARN, "reconnect", NULL, why,
                         idle ? "cause=idle next=at_once" : "cause=closed next=at_once");
                if (!idle)
                    w->fail_streak++;   /* reconnect at once the first time */
            }
        }
        if (!w->inflight && !w->retry && w->conn)
            set_state(w, "idle", "");
    }
    drop_conn(w);
    return NULL;
}

/* ---- life cycle ---- */

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
    w->inflight_tail = &w->inflight;
    pthread_mutex_init(&w->lock, NULL);
    snprintf(w->state, sizeof w->state, "idle");
    if (spool_dest(sp, cd->name, true, &w->id) != SPOOL_OK) {
        snprintf(err, errlen, "[destination %s]: cannot open its queue", cd->name);
        writer_free(w);
        return -1;
    }
    snprintf(w->table_path, sizeof w->table_path, "projects/%s/datasets/%s/tables/%s",
             cd->project, cd->dataset, cd->table ? cd->table : cd->name);
    snprintf(w->table, sizeof w->table, "%s.%s.%s", cd->project, cd->dataset,
             cd->table ? cd->table : cd->name);
    ds_init(&w->ds, &w->lock, cd->name, "storage", w->table);
    snprintf(w->state_key, sizeof w->state_key, "wstream.%u", w->id);
    if (!cd->exactly_once) {
        snprintf(w->stream, sizeof w->stream, "%s/streams/_default", w->table_path);
    } else {
        char state[1100];
        size_t len = 0;
        if (spool_get_meta(sp, w->state_key, state, sizeof state - 1, &len) == SPOOL_OK &&
            len < sizeof state) {
            state[len] = 0;
            long long off;
            int pos = 0;
            if (sscanf(state, "%lld %n", &off, &pos) == 1 && pos > 0) {
                w->next_offset = off;
                snprintf(w->stream, sizeof w->stream, "%s", state + pos);
            }
        }
        w->uncertain = w->stream[0] != 0;   /* after a restart: settle what was in flight */
    }
    struct auth_opts ao = { .credentials = cd->credentials, .ca_file = cd->ca_file,
                            .timeout_ms = 10000 };
    char aerr[512];
    if (auth_create(&ao, &w->auth, aerr, sizeof aerr) != 0) {
        snprintf(err, errlen, "[destination %s] credentials: %s", cd->name, aerr);
        writer_free(w);
        return -1;
    }
    struct bqwrite_opts bo = { .target = cd->storage_endpoint, .ca_file = cd->ca_file,
                               .quota_project = auth_quota_project(w->auth) };
    if (bqwrite_create(&bo, &w->bw, aerr, sizeof aerr) != 0) {
        snprintf(err, errlen, "[destination %s] storage_endpoint: %s", cd->name, aerr);
        writer_free(w);
        return -1;
    }
    log_info("destination %s -> %s via the Storage Write API (%s, %s, %s)", cd->name,
             w->table, cd->exactly_once ? "exactly once" : "at least once",
             cd->storage_endpoint, auth_describe(w->auth));
    *out = w;
    return 0;
}

int writer_start(struct writer *w)
{
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0)
        return -1;
    w->started = true;
    return 0;
}

void writer_wake(struct writer *w)
{
    if (w)
        w->woken = 1;
}

void writer_status(struct writer *w, void *destp)
{
    json_t *dl = json_object();
    uint64_t now_us = util_mono_us(), now_ms = util_now_ms();
    pthread_mutex_lock(&w->lock);
    json_object_set_new(dl, "table", json_string(w->table));
    json_object_set_new(dl, "api", json_string("storage"));
    json_object_set_new(dl, "delivery", json_string(w->cd->exactly_once ? "exactly_once" : "at_least_once"));
    const char *state = w->state;
    if (strcmp(state, "sending") == 0 && ds_in_episode(&w->ds))
        state = "probing";   /* after failures: one append tests the way */
    char why[800];
    ds_why(&w->ds, state, "appending over an open AppendRows call", why, sizeof why);
    json_object_set_new(dl, "state", json_string(state));
    json_object_set_new(dl, "delivered", json_integer((json_int_t)w->delivered));
    json_object_set_new(dl, "retried", json_integer((json_int_t)w->retried));
    json_object_set_new(dl, "dead_lettered", json_integer((json_int_t)w->dead_lettered));
    json_object_set_new(dl, "requests", json_integer((json_int_t)w->appends));
    json_object_set_new(dl, "failed_requests", json_integer((json_int_t)w->failed));
    json_object_set_new(dl, "in_flight", json_integer(0));
    double wait = w->not_before_us > now_us ? (double)(w->not_before_us - now_us) / 1e6 : 0;
    json_object_set_new(dl, "backoff_s", json_real(wait));
    json_object_set_new(dl, "why", json_string(why));
    json_object_set_new(dl, "last_error", json_string(w->last_error));
    json_object_set_new(dl, "last_error_age_s", json_real(w->last_error_ms ?
                        (double)(now_ms - w->last_error_ms) / 1000 : -1));
    json_object_set_new(dl, "dead_lettered_by_reason", counts_json(&w->dead_by_reason));
    json_object_set_new(dl, "latency", histo_json(&w->latency));
    json_object_set_new(dl, "token_refreshes", json_integer((json_int_t)auth_refreshes(w->auth)));
    if (w->cd->exactly_once) {
        json_object_set_new(dl, "stream", json_string(w->stream));
        json_object_set_new(dl, "next_offset", json_integer((json_int_t)w->next_offset));
    }
    pthread_mutex_unlock(&w->lock);
    json_object_set_new((json_t *)destp, "delivery", dl);
}

void writer_stop(struct writer *w, unsigned wait_ms)
{
    (void)wait_ms;
    if (!w || !w->started)
        return;
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    pthread_join(w->thread, NULL);
    w->started = false;
}

void writer_free(struct writer *w)
{
    if (!w)
        return;
    writer_stop(w, 0);
    drop_conn(w);
    while (w->retry) {
        struct wchunk *c = w->retry;
        w->retry = c->next;
        chunk_free(c);
    }
    bqwrite_free(w->bw);
    auth_free(w->auth);
    rowenc_schema_free(w->schema);
    buf_free(&w->desc);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
