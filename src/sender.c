/*
 * sender.c -- the delivery loop: spool -> insertAll requests -> outcomes.
 * See sender.h for the contract and docs/delivery.md for the rules.
 *
 * Vocabulary. A "chunk" is a set of rows sent in one request; it owns a copy
 * of the rows' JSON. A chunk is either in flight (a "request"), waiting on
 * its destination's retry list, or finished. Rows in a chunk all have
 * seq < dest->read_seq, so reading new rows never picks them up twice.
 *
 * Outcomes (remove / dead-letter) are collected while responses arrive and
 * applied in one spool transaction per loop turn: a row leaves its queue only
 * in the transaction that records what became of it.
 */
#include "sender.h"
#include "auth.h"
#include "writer.h"
#include "delivstate.h"
#include "dlq.h"
#include "bqrest.h"
#include "budget.h"
#include "log.h"
#include "route.h"
#include "util.h"
#include "version.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS          1000   /* look at every queue at least this often */
#define ID_MAX           64
#define EXPIRE_EVERY_US  (60ull * 1000000)   /* dlq_max_age is applied at least once a minute */

struct row {
    uint64_t seq;
    uint64_t time_ms;
    size_t off;
    uint32_t len;
};

struct dest;

struct chunk {
    struct chunk *next;
    struct row *rows;
    size_t n;
    char *data;               /* the rows' JSON, back to back */
    size_t data_len;
    uint32_t attempts;
    uint64_t first_attempt_ms, last_attempt_ms;
    bool auth_retried;        /* a 401 gets one immediate retry with a new token */
    struct budget *budget;    /* charged with data_len (max_inflight_bytes), or NULL */
    uint64_t charged;
    char table[ROUTE_TABLE_MAX];   /* the table id its rows go to (sharding resolved) */
};

struct request {
    struct request *next;         /* on the free list */
    struct request *next_active;  /* on the active list */
    struct dest *d;
    struct chunk *ch;
    CURL *easy;
    struct curl_slist *headers;
    struct buf body, gz, resp;
    long retry_after_s;
    uint64_t start_us;
    bool create;                  /* a tables.insert (create_table), not an insertAll */
    char create_base[ROUTE_TABLE_MAX];   /* the table it creates */
    char errbuf[CURL_ERROR_SIZE];
};

enum dstate { D_IDLE, D_SENDING, D_BACKOFF, D_PARKED, D_HOLD };
static const char *const dstate_names[] = { "idle", "sending", "backoff", "parked", "hold" };

struct dest {
    const struct conf_dest *cd;
    uint32_t id;
    char table[ROUTE_TABLE_MAX + 300];   /* project.dataset.table (pattern), for messages */
    struct auth *auth;
    uint64_t read_seq;
    struct chunk *retry, **retry_tail;
    unsigned inflight;
    uint64_t not_before_us;
    unsigned fail_streak;     /* consecutive failed requests, for the backoff */
    enum dstate state;
    uint64_t flush_at_ms;     /* when the partial batch at the head is due */
    struct route route;       /* table id, maybe with strftime escapes (sharding) */
    struct { char table[ROUTE_TABLE_MAX]; uint64_t created_us; } created[8];   /* recent tables.insert */
    unsigned n_created;
    bool creating;            /* a tables.insert is in flight */
    bool removed;             /* no longer in the config: its rows wait in the queue */
    bool more;                /* the last read filled a batch: more rows may be waiting */
    struct chunk *held;       /* rows to dead-letter while the store is full: kept */
    struct budget budget;     /* bytes taken from the queue, not yet settled */
    size_t hint_rows, hint_data;   /* capacities the last full batch reached: a new
                                    * batch starts there (no realloc copies per batch) */
    /* counters and state for status (under sender->stats_lock) */
    uint64_t delivered, retried, dead_lettered, requests, failed, bytes_raw, bytes_sent;
    struct counts dead_by_reason;
    struct histo latency;
    char why[256];            /* why backing off / parked */
    char last_error[512];
    uint64_t last_error_ms;
    struct delivstate ds;     /* state changes: logs and the status reason */
};

/* A dead letter to record. Delivered rows are kept apart (struct sender's
 * done_*), 16 bytes each: most rows are delivered, and a row's outcome must
 * not cost a 700-byte record. */
struct outcome {
    struct dest *d;
    uint64_t seq;
    bool dead;                /* always true: dead letters only */
    struct spool_dl_info info;
    char reason[48];
    char detail[640];
};

struct sender {
    const struct conf *conf;
    struct spool *spool;
    struct dest *dests;
    size_t n_dests;
    struct writer **writers;      /* api = storage destinations, a thread each */
    size_t n_writers;
    CURLM *multi;
    pthread_t thread;
    bool started;
    volatile int stop;
    unsigned stop_wait_ms;
    struct request *free_reqs;
    struct request *active;       /* in flight */
    struct outcome *outs;         /* dead letters collected this turn */
    size_t n_outs, cap_outs;
    uint64_t *done_seq;           /* rows delivered this turn (removed in order) */
    struct dest **done_dest;
    size_t n_done, cap_done;
    struct bq_row_result *results;   /* per-row results of a response, reused */
    size_t cap_results;
    struct bq_row *body_rows;     /* a request's rows and insertIds, reused */
    char *body_ids;
    size_t cap_body_rows;
    struct bqrest_gz *gz;         /* level 1, made at the first gzip'd request */
    char uuid[64];                /* the spool's uuid: insertId prefix */
    size_t uuid_len;
    pthread_mutex_t stats_lock;
    bool dlq_full;                /* dlq_max_bytes reached: hold rows instead */
    struct conf *pending_conf;    /* from sender_reload, applied by the thread */
    struct conf **old_confs;      /* earlier configs: destinations may still point in */
    size_t n_old_confs;
    bool owns_conf;
    uint64_t dlq_pending_bytes;   /* dead letters collected this turn */
    uint64_t last_expire_us;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- chunks ---- */

static void chunk_free(struct chunk *ch)
{
    if (!ch)
        return;
    if (ch->budget && ch->charged)
        budget_give(ch->budget, ch->charged);
    free(ch->rows);
    free(ch->data);
    free(ch);
}

/* Charges ch's bytes to b whatever the bound: ch replaces bytes already held. */
static void chunk_charge(struct chunk *ch, struct budget *b)
{
    ch->budget = b;
    ch->charged = ch->data_len;
    if (b)
        budget_force(b, ch->charged);
}

/* A new chunk holding rows [from, from+n) of src (charged like src). */
static struct chunk *chunk_slice(const struct chunk *src, size_t from, size_t n)
{
    struct chunk *ch = calloc(1, sizeof *ch);
    if (!ch)
        return NULL;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += src->rows[from + i].len;
    ch->rows = malloc((n ? n : 1) * sizeof *ch->rows);
    ch->data = malloc(bytes ? bytes : 1);
    if (!ch->rows || !ch->data) {
        chunk_free(ch);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const struct row *r = &src->rows[from + i];
        memcpy(ch->data + ch->data_len, src->data + r->off, r->len);
        ch->rows[i] = *r;
        ch->rows[i].off = ch->data_len;
        ch->data_len += r->len;
    }
    ch->n = n;
    ch->attempts = src->attempts;
    ch->first_attempt_ms = src->first_attempt_ms;
    ch->last_attempt_ms = src->last_attempt_ms;
    memcpy(ch->table, src->table, sizeof ch->table);
    chunk_charge(ch, src->budget);
    return ch;
}

static void retry_push_front(struct dest *d, struct chunk *ch)
{
    ch->next = d->retry;
    d->retry = ch;
    if (d->retry_tail == &d->retry)
        d->retry_tail = &ch->next;
}

/* ---- outcomes ---- */

static struct outcome *new_outcome(struct sender *s, struct dest *d, uint64_t seq)
{
    if (s->n_outs == s->cap_outs) {
        size_t nc = s->cap_outs ? s->cap_outs * 2 : 1024;
        struct outcome *o = realloc(s->outs, nc * sizeof *o);
        if (!o)
            return NULL;
        s->outs = o;
        s->cap_outs = nc;
    }
    struct outcome *o = &s->outs[s->n_outs++];
    memset(o, 0, sizeof *o);
    o->d = d;
    o->seq = seq;
    return o;
}

static void note_error(struct sender *s, struct dest *d, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void note_error(struct sender *s, struct dest *d, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&s->stats_lock);
    va_start(ap, fmt);
    vsnprintf(d->last_error, sizeof d->last_error, fmt, ap);
    va_end(ap);
    d->last_error_ms = util_now_ms();
    pthread_mutex_unlock(&s->stats_lock);
}

static void dead_letter(struct sender *s, struct dest *d, const struct chunk *ch, size_t i,
                        const char *reason, uint32_t http, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* Keeps row i of ch on d's held chunk (the dead-letter store is full). */
static void hold(struct dest *d, const struct chunk *ch, size_t i)
{
    struct chunk *h = d->held;
    if (h && strcmp(h->table, ch->table) != 0) {   /* one table per chunk */
        retry_push_front(d, h);
        h = d->held = NULL;
    }
    if (!h) {
        if (!(h = d->held = calloc(1, sizeof *h)))
            return;
        h->first_attempt_ms = ch->first_attempt_ms;
        memcpy(h->table, ch->table, sizeof h->table);
    }
    const struct row *r = &ch->rows[i];
    struct row *nr = realloc(h->rows, (h->n + 1) * sizeof *nr);
    char *nd = nr ? realloc(h->data, h->data_len + r->len + 1) : NULL;
    if (nr)
        h->rows = nr;
    if (!nd)
        return;   /* out of memory: the row stays queued and comes back after a restart */
    h->data = nd;
    memcpy(h->data + h->data_len, ch->data + r->off, r->len);
    h->rows[h->n] = *r;
    h->rows[h->n].off = h->data_len;
    h->data_len += r->len;
    h->n++;
    h->attempts = ch->attempts;
    h->last_attempt_ms = ch->last_attempt_ms;
}

static void dead_letter(struct sender *s, struct dest *d, const struct chunk *ch, size_t i,
                        const char *reason, uint32_t http, const char *fmt, ...)
{
    if (s->dlq_full && ch->data && strcmp(reason, "corrupt") != 0) {
        hold(d, ch, i);   /* no room in the dead-letter store: the row waits in its queue */
        return;
    }
    struct outcome *o = new_outcome(s, d, ch->rows[i].seq);
    if (!o)
        return;   /* out of memory: the row stays queued and is retried */
    o->dead = true;
    snprintf(o->reason, sizeof o->reason, "%s", reason);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->detail, sizeof o->detail, fmt, ap);
    va_end(ap);
    o->info.http_status = http;
    o->info.attempts = ch->attempts;
    o->info.first_attempt_ms = ch->first_attempt_ms;
    o->info.last_attempt_ms = ch->last_attempt_ms;
    s->dlq_pending_bytes += DLQ_HDR + strlen(o->reason) + strlen(o->detail) + ch->rows[i].len;
    if (s->conf->dlq_max_bytes && s->dlq_pending_bytes + spool_dlq_bytes(s->spool) >= s->conf->dlq_max_bytes)
        s->dlq_full = true;   /* this one fits; the next ones wait */
}

/* A destination whose rejected rows could not be dead-lettered waits. */
static void park(struct sender *s, struct dest *d, const char *why);

static void release_held(struct sender *s, struct dest *d)
{
    if (!d->held)
        return;
    struct chunk *h = d->held;
    d->held = NULL;
    retry_push_front(d, h);
    char why[256];
    snprintf(why, sizeof why, "the dead-letter store is full (dlq_max_bytes = %llu): %zu rejected "
             "row(s) wait in the queue; replay or purge dead letters (relayctl dlq)",
             (unsigned long long)s->conf->dlq_max_bytes, h->n);
    park(s, d, why);
}

static void delivered(struct sender *s, struct dest *d, const struct chunk *ch, size_t i)
{
    if (s->n_done == s->cap_done) {
        size_t nc = s->cap_done ? s->cap_done * 2 : 4096;
        uint64_t *ns = realloc(s->done_seq, nc * sizeof *ns);
        if (ns)
            s->done_seq = ns;
        struct dest **nd = ns ? realloc(s->done_dest, nc * sizeof *nd) : NULL;
        if (!nd)
            return;   /* out of memory: the row stays queued and is resent (same insertId) */
        s->done_dest = nd;
        s->cap_done = nc;
    }
    s->done_seq[s->n_done] = ch->rows[i].seq;
    s->done_dest[s->n_done++] = d;
}

/* Records every collected outcome in one transaction. */
static void apply_outcomes(struct sender *s)
{
    if (s->n_outs == 0 && s->n_done == 0)
        return;
    struct spool_txn *t = NULL;
    int rc = spool_txn_begin(s->spool, &t);
    size_t ok = 0, dead = 0;
    for (size_t i = 0; rc == SPOOL_OK && i < s->n_outs; i++) {
        struct outcome *o = &s->outs[i];
        o->info.reason = o->reason;
        o->info.detail = o->detail;
        rc = spool_txn_dead_letter_info(t, o->d->id, o->seq, &o->info);
        if (rc == SPOOL_NOTFOUND)
            rc = SPOOL_OK;   /* removed meanwhile (relayctl purge): nothing to record */
    }
    /* delivered rows, a run per destination at a time (a chunk's rows are
     * consecutive: one search per run); a row removed meanwhile is skipped */
    for (size_t i = 0; rc == SPOOL_OK && i < s->n_done;) {
        size_t j = i + 1;
        while (j < s->n_done && s->done_dest[j] == s->done_dest[i])
            j++;
        rc = spool_txn_remove_run(t, s->done_dest[i]->id, s->done_seq + i, j - i, NULL);
        i = j;
    }
    if (rc == SPOOL_OK)
        rc = spool_txn_commit(t);
    else if (t)
        spool_txn_abort(t);
    if (rc == SPOOL_IO) {
        log_error("recording delivery outcomes failed: %s (%s). Stopping: restart relayd; "
                  "rows whose outcome was not recorded are resent with the same insertId",
                  spool_strerror(rc), spool_last_error());
        _exit(5);
    }
    if (rc != SPOOL_OK) {
        /* keep them: retried next turn (a full map frees up as others drain) */
        log_warn("cannot record %zu delivery outcome(s) yet: %s", s->n_outs + s->n_done,
                 spool_strerror(rc));
        return;
    }
    pthread_mutex_lock(&s->stats_lock);
    for (size_t i = 0; i < s->n_outs; i++) {
        s->outs[i].d->dead_lettered++;
        counts_add(&s->outs[i].d->dead_by_reason, s->outs[i].reason, 1);
        dead++;
    }
    for (size_t i = 0; i < s->n_done; i++) {
        s->done_dest[i]->delivered++;
        ok++;
    }
    pthread_mutex_unlock(&s->stats_lock);
    (void)ok;
    if (dead)
        log_warn("moved %zu row(s) to the dead-letter store (relayctl dlq list)", dead);
    s->n_outs = 0;
    s->n_done = 0;
}

/* ---- reading batches ---- */

static int row_table(const struct dest *d, const struct spool_record *r, char *out, size_t n);
static void apply_reload(struct sender *s, struct conf *nc);
static int ensure_table(struct sender *s, struct dest *d, const char *table, char *why, size_t wl);
static void create_done(struct sender *s, struct request *rq, CURLcode res);

struct reader {
    struct sender *s;
    struct dest *d;
    struct chunk *ch;
    size_t cap_rows, cap_data;
    size_t body_bytes;        /* estimated request body */
    size_t cap;               /* its bound: batch_bytes, or less under max_inflight_bytes */
    bool full;                /* stopped because the next row would not fit */
    bool blocked;             /* the first row does not fit under max_inflight_bytes */
    uint64_t last_seq;
    bool any;
};

static int read_row(const struct spool_record *r, void *arg)
{
    struct reader *rd = arg;
    struct chunk *ch = rd->ch;
    const struct conf_dest *cd = rd->d->cd;
    if (r->corrupt) {
        /* a damaged record never reaches BigQuery and never blocks the queue */
        struct chunk one = { .rows = &(struct row){ .seq = r->seq }, .n = 1 };
        dead_letter(rd->s, rd->d, &one, 0, "corrupt", 0, "%s", r->problem);
        rd->last_seq = r->seq;
        rd->any = true;
        return 0;
    }
    /* the table: the same for every row unless sharded (then from the row's time) */
    char table[ROUTE_TABLE_MAX];
    bool sharded = rd->d->route.sharded;
    if (sharded && row_table(rd->d, r, table, sizeof table) != 0) {
        struct chunk one = { .rows = &(struct row){ .seq = r->seq }, .n = 1 };
        dead_letter(rd->s, rd->d, &one, 0, "routing", 0, "table_time_field '%s' is missing or "
                    "not a time (RFC 3339 string or epoch seconds)", cd->table_time_field);
        rd->last_seq = r->seq;
        rd->any = true;
        return 0;
    }
    size_t cost = r->len + BQREST_ROW_OVERHEAD(ID_MAX);
    if (ch->n == 0 && cost > rd->cap && rd->cap < cd->batch_bytes) {
        rd->blocked = true;   /* bytes in flight: wait for answers */
        return 1;
    }
    if (ch->n > 0 && (ch->n >= cd->batch_rows || rd->body_bytes + cost > rd->cap ||
                      (sharded && strcmp(ch->table, table) != 0))) {
        rd->full = true;   /* full, or the next row goes to another table */
        return 1;
    }
    if (ch->n == 0) {
        if (sharded)
            memcpy(ch->table, table, sizeof ch->table);
        else
            row_table(rd->d, r, ch->table, sizeof ch->table);
    }
    if (ch->n == rd->cap_rows) {
        size_t nc = rd->cap_rows ? rd->cap_rows * 2 : 64;
        struct row *nr = realloc(ch->rows, nc * sizeof *nr);
        if (!nr)
            return 1;
        ch->rows = nr;
        rd->cap_rows = nc;
    }
    if (ch->data_len + r->len > rd->cap_data) {
        size_t nc = rd->cap_data ? rd->cap_data : 16384;
        while (nc < ch->data_len + r->len)
            nc *= 2;
        char *nd = realloc(ch->data, nc);
        if (!nd)
            return 1;
        ch->data = nd;
        rd->cap_data = nc;
    }
    memcpy(ch->data + ch->data_len, r->row, r->len);
    ch->rows[ch->n++] = (struct row){ r->seq, r->time_ms, ch->data_len, (uint32_t)r->len };
    ch->data_len += r->len;
    rd->body_bytes += cost;
    rd->last_seq = r->seq;
    rd->any = true;
    return 0;
}

/* The table a row goes to (route.h: the same rule on both APIs). */
static int row_table(const struct dest *d, const struct spool_record *r, char *out, size_t n)
{
    return route_table(&d->route, r->row, r->len, r->time_ms, out, n);
}

/* Reads the next batch at the head of d's queue. Returns NULL when there is
 * nothing to send yet (empty, or a partial batch not yet due). */
static struct chunk *read_batch(struct sender *s, struct dest *d, uint64_t now_ms)
{
    const struct conf_dest *cd = d->cd;
    struct reader rd = { .s = s, .d = d };
    rd.cap = (size_t)budget_room(&d->budget, cd->batch_bytes);
    if (rd.cap == 0) {   /* max_inflight_bytes held: answers free room */
        d->more = false;
        return NULL;
    }
    rd.ch = calloc(1, sizeof *rd.ch);
    if (!rd.ch)
        return NULL;
    if (d->hint_rows && (rd.ch->rows = malloc(d->hint_rows * sizeof *rd.ch->rows)))
        rd.cap_rows = d->hint_rows;
    if (d->hint_data && (rd.ch->data = malloc(d->hint_data)))
        rd.cap_data = d->hint_data;
    spool_read(s->spool, d->id, d->read_seq, cd->batch_rows + 1, SIZE_MAX, read_row, &rd);
    struct chunk *ch = rd.ch;
    if (rd.blocked && ch->n == 0) {
        if (rd.any)   /* corrupt or unroutable records before it are dealt with */
            d->read_seq = rd.last_seq + 1;
        chunk_free(ch);
        d->more = false;
        return NULL;
    }
    if (ch->n == 0) {
        if (rd.any)   /* only corrupt records: they are dealt with */
            d->read_seq = rd.last_seq + 1;
        chunk_free(ch);
        d->flush_at_ms = 0;
        d->more = rd.any;
        return NULL;
    }
    bool due = rd.full || ch->n >= cd->batch_rows ||
               now_ms >= ch->rows[0].time_ms + cd->flush_interval_ms || s->stop;
    if (!due) {
        d->more = false;
        d->flush_at_ms = ch->rows[0].time_ms + cd->flush_interval_ms;
        /* corrupt ones already read are recorded; the rest is read again later */
        chunk_free(ch);
        return NULL;
    }
    if (!budget_take(&d->budget, ch->data_len)) {   /* cannot happen: one thread */
        chunk_free(ch);
        d->more = false;
        return NULL;
    }
    ch->budget = &d->budget;
    ch->charged = ch->data_len;
    if (rd.full || ch->n >= cd->batch_rows) {   /* full batches set the next one's sizes */
        d->hint_rows = rd.cap_rows;
        d->hint_data = rd.cap_data;
    }
    d->flush_at_ms = 0;
    d->more = rd.full || ch->n >= cd->batch_rows;
    d->read_seq = ch->rows[ch->n - 1].seq + 1;
    if (rd.last_seq + 1 > d->read_seq)
        d->read_seq = rd.last_seq + 1;
    return ch;
}

/* ---- requests ---- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct request *rq = arg;
    if (rq->resp.len + size * n > (16u << 20))
        return 0;   /* a response this big is not insertAll's: fail it */
    return buf_append(&rq->resp, p, size * n) == 0 ? size * n : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct request *rq = arg;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0) {
        long v = strtol(p + 12, NULL, 10);
        if (v > 0 && v < 86400)
            rq->retry_after_s = v;
    }
    return len;
}

static void request_release(struct sender *s, struct request *rq)
{
    for (struct request **p = &s->active; *p; p = &(*p)->next_active) {
        if (*p == rq) {
            *p = rq->next_active;
            break;
        }
    }
    curl_multi_remove_handle(s->multi, rq->easy);
    curl_slist_free_all(rq->headers);
    rq->headers = NULL;
    buf_reset(&rq->body);
    buf_reset(&rq->gz);
    buf_reset(&rq->resp);
    rq->ch = NULL;
    rq->d = NULL;
    rq->next = s->free_reqs;
    s->free_reqs = rq;
}

static void request_destroy(struct request *rq)
{
    curl_easy_cleanup(rq->easy);
    curl_slist_free_all(rq->headers);
    buf_free(&rq->body);
    buf_free(&rq->gz);
    buf_free(&rq->resp);
    free(rq);
}

static void backoff(struct sender *s, struct dest *d, enum bq_action a, long retry_after_s,
                    const char *why);

/* The insertId of a row: "<spool uuid>-<seq>" (what snprintf("%s-%llu")
 * wrote before; this is on the per-row path). out has ID_MAX bytes. */
static void insert_id(char *out, const char *uuid, size_t ul, uint64_t seq)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq);
    memcpy(out, uuid, ul);
    out[ul] = '-';
    char *p = out + ul + 1;
    while (n)
        *p++ = digits[--n];
    *p = 0;
}

/* Sends ch for d. On failure before sending, ch goes back to the retry list. */
static void start_request(struct sender *s, struct dest *d, struct chunk *ch)
{
    const struct conf_dest *cd = d->cd;
    char token[4096], err[512];
    int trc = auth_token_nowait(d->auth, token, sizeof token, err, sizeof err);
    if (trc == AUTH_PENDING) {
        /* The refresher is fetching one; look again shortly, without
         * counting a failure and without waiting here (other destinations
         * keep sending). */
        retry_push_front(d, ch);
        uint64_t soon = util_mono_us() + 20 * 1000;
        if (soon > d->not_before_us)
            d->not_before_us = soon;
        return;
    }
    if (trc != 0) {
        retry_push_front(d, ch);
        note_error(s, d, "credentials: %s", err);
        backoff(s, d, BQ_RETRY, 0, err);
        return;
    }
    struct request *rq = s->free_reqs;
    if (rq) {
        s->free_reqs = rq->next;
    } else {
        rq = calloc(1, sizeof *rq);
        if (!rq || !(rq->easy = curl_easy_init())) {
            free(rq);
            retry_push_front(d, ch);
            return;
        }
    }
    rq->d = d;
    rq->ch = ch;
    rq->retry_after_s = 0;
    rq->errbuf[0] = 0;

    /* the body: rows with their insertIds (uuid-seq), in buffers kept across requests */
    if (ch->n > s->cap_body_rows) {
        struct bq_row *nr = realloc(s->body_rows, ch->n * sizeof *nr);
        if (nr)
            s->body_rows = nr;
        char *ni = nr ? realloc(s->body_ids, ch->n * ID_MAX) : NULL;
        if (!ni) {
            retry_push_front(d, ch);
            request_release(s, rq);
            return;
        }
        s->body_ids = ni;
        s->cap_body_rows = ch->n;
    }
    struct bq_row *rows = s->body_rows;
    char *ids = s->body_ids;
    if (!s->uuid_len)
        s->uuid_len = (size_t)snprintf(s->uuid, sizeof s->uuid, "%s", spool_uuid(s->spool));   /* 32 hex */
    for (size_t i = 0; i < ch->n; i++) {
        insert_id(ids + i * ID_MAX, s->uuid, s->uuid_len, ch->rows[i].seq);
        rows[i] = (struct bq_row){ ch->data + ch->rows[i].off, ch->rows[i].len, ids + i * ID_MAX };
    }
    struct bq_insert_opts io = { cd->skip_invalid_rows, cd->ignore_unknown_values,
                                 cd->template_suffix };
    int rc = bqrest_insertall_body(&rq->body, rows, ch->n, &io);
    const struct buf *payload = &rq->body;
    if (rc == 0 && cd->gzip) {
        if (!s->gz && !(s->gz = bqrest_gz_new(1)))
            rc = -1;
        else
            rc = bqrest_gz_compress(s->gz, rq->body.data, rq->body.len, &rq->gz);
        payload = &rq->gz;
    }
    char auth_hdr[4200];
    snprintf(auth_hdr, sizeof auth_hdr, "Authorization: Bearer %s", token);
    memset(token, 0, sizeof token);
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, auth_hdr);
    memset(auth_hdr, 0, sizeof auth_hdr);
    h = curl_slist_append(h, "Content-Type: application/json; charset=utf-8");
    const char *qp = auth_quota_project(d->auth);
    if (qp) {
        char qh[300];
        snprintf(qh, sizeof qh, "x-goog-user-project: %s", qp);
        h = curl_slist_append(h, qh);
    }
    if (cd->gzip)
        h = curl_slist_append(h, "Content-Encoding: gzip");
    h = curl_slist_append(h, "Expect:");
    rq->headers = h;
    if (rc != 0 || !h) {
        retry_push_front(d, ch);
        request_release(s, rq);
        return;
    }
    struct buf url = { 0 };
    if (buf_puts(&url, cd->endpoint) != 0 ||
        bqrest_insertall_path(&url, cd->project, cd->dataset, ch->table) != 0) {
        buf_free(&url);
        retry_push_front(d, ch);
        request_release(s, rq);
        return;
    }
    CURL *e = rq->easy;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, url.data);   /* copied by libcurl */
    buf_free(&url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, payload->data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)payload->len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "relayd/" RELAY_VERSION);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, rq);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)cd->request_timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);   /* always */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (cd->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, cd->ca_file);
    curl_easy_setopt(e, CURLOPT_PRIVATE, rq);
    if (curl_multi_add_handle(s->multi, e) != CURLM_OK) {
        retry_push_front(d, ch);
        request_release(s, rq);
        return;
    }
    rq->next_active = s->active;
    s->active = rq;
    rq->start_us = util_mono_us();
    uint64_t now = util_now_ms();
    if (!ch->first_attempt_ms)
        ch->first_attempt_ms = now;
    ch->last_attempt_ms = now;
    ch->attempts++;
    d->inflight++;
    d->state = D_SENDING;
    pthread_mutex_lock(&s->stats_lock);
    d->requests++;
    d->bytes_raw += rq->body.len;
    d->bytes_sent += payload->len;
    pthread_mutex_unlock(&s->stats_lock);
}

/* Waits before d's next request. */
static void backoff(struct sender *s, struct dest *d, enum bq_action a, long retry_after_s,
                    const char *why)
{
    const struct conf_dest *cd = d->cd;
    uint64_t base = cd->retry_base_ms, cap = cd->retry_cap_ms, delay;
    if (a == BQ_RATE_LIMITED)
        base = cd->rate_limit_wait_ms ? cd->rate_limit_wait_ms : base;
    else if (a == BQ_QUOTA)
        base = cd->quota_wait_ms ? cd->quota_wait_ms : base;
    /* quota: at least quota_wait; rate limits: at least half; else full jitter */
    delay = util_backoff_ms(base, cap, d->fail_streak++,
                            a == BQ_QUOTA ? UTIL_JITTER_MIN :
                            a == BQ_RATE_LIMITED ? UTIL_JITTER_EQUAL : UTIL_JITTER_FULL);
    if ((uint64_t)retry_after_s * 1000 > delay)
        delay = (uint64_t)retry_after_s * 1000;
    uint64_t until = util_mono_us() + delay * 1000;
    if (until > d->not_before_us)
        d->not_before_us = until;
    d->state = a == BQ_NOT_FOUND ? D_PARKED : D_BACKOFF;
    pthread_mutex_lock(&s->stats_lock);
    snprintf(d->why, sizeof d->why, "%s", why);
    pthread_mutex_unlock(&s->stats_lock);
    uint64_t now = util_mono_us();
    ds_wait(&d->ds, d->state == D_PARKED ? DS_PARKED : DS_BACKOFF, NULL, why,
            d->not_before_us > now ? (d->not_before_us - now) / 1000 : 0);
}

static void park(struct sender *s, struct dest *d, const char *why)
{
    d->not_before_us = util_mono_us() + d->cd->park_wait_ms * 1000;
    d->state = D_PARKED;
    pthread_mutex_lock(&s->stats_lock);
    snprintf(d->why, sizeof d->why, "%s", why);
    pthread_mutex_unlock(&s->stats_lock);
    ds_wait(&d->ds, DS_PARKED, strstr(why, "dead-letter store") ? "dlq_full" : NULL, why,
            d->cd->park_wait_ms);
}

/* create_table: starts a tables.insert for table (its $decorator dropped)
 * with the destination's schema and partitioning, on the multi handle like
 * every request, so a slow tables API holds back only this destination.
 * Returns 0 when the table was created within the last minute (presumably
 * still propagating: nothing sent), 1 when the request is on its way
 * (create_done finishes), 2 when no token is ready yet (ask again soon), -1 on
 * failure with why filled. */
static int ensure_table(struct sender *s, struct dest *d, const char *table, char *why, size_t wl)
{
    const struct conf_dest *cd = d->cd;
    char base[ROUTE_TABLE_MAX];
    snprintf(base, sizeof base, "%.*s", (int)strcspn(table, "$"), table);
    uint64_t now = util_mono_us();
    for (unsigned i = 0; i < d->n_created && i < 8; i++) {
        if (strcmp(d->created[i].table, base) == 0 &&
            now - d->created[i].created_us < 60ull * 1000000)
            return 0;   /* created within the last minute: still propagating */
    }
    struct buf schema = { 0 }, body = { 0 };
    char err[512];
    FILE *f = fopen(cd->schema_file, "rb");
    if (f) {
        char blk[8192];
        size_t n;
        while ((n = fread(blk, 1, sizeof blk, f)) > 0)
            buf_append(&schema, blk, n);
        fclose(f);
    }
    struct bq_table_spec spec = { cd->project, cd->dataset, base, schema.data, schema.len,
                                  cd->time_partitioning, cd->partition_field,
                                  cd->partition_expiration_ms, cd->clustering };
    int brc = bqrest_table_insert_body(&spec, &body, err, sizeof err);
    buf_free(&schema);
    if (brc != 0) {
        snprintf(why, wl, "create_table: %s: %s", cd->schema_file, err);
        buf_free(&body);
        return -1;
    }
    char *text = body.data;
    char token[4096];
    int trc = text ? auth_token_nowait(d->auth, token, sizeof token, err, sizeof err) : -1;
    if (trc == AUTH_PENDING) {
        free(text);
        return 2;
    }
    if (trc != 0) {
        snprintf(why, wl, "create_table: %s", text ? err : "out of memory");
        free(text);
        return -1;
    }
    struct request *rq = s->free_reqs;
    if (rq) {
        s->free_reqs = rq->next;
    } else if (!(rq = calloc(1, sizeof *rq)) || !(rq->easy = curl_easy_init())) {
        free(rq);
        free(text);
        memset(token, 0, sizeof token);
        snprintf(why, wl, "create_table: out of memory");
        return -1;
    }
    rq->d = d;
    rq->ch = NULL;
    rq->create = true;
    rq->retry_after_s = 0;
    rq->errbuf[0] = 0;
    snprintf(rq->create_base, sizeof rq->create_base, "%s", base);
    buf_puts(&rq->body, text);
    free(text);
    char auth_hdr[4200];
    snprintf(auth_hdr, sizeof auth_hdr, "Authorization: Bearer %s", token);
    memset(token, 0, sizeof token);
    struct curl_slist *h = curl_slist_append(NULL, auth_hdr);
    memset(auth_hdr, 0, sizeof auth_hdr);
    h = curl_slist_append(h, "Content-Type: application/json; charset=utf-8");
    const char *qp = auth_quota_project(d->auth);
    if (qp) {
        char qh[300];
        snprintf(qh, sizeof qh, "x-goog-user-project: %s", qp);
        h = curl_slist_append(h, qh);
    }
    h = curl_slist_append(h, "Expect:");
    rq->headers = h;
    struct buf url = { 0 };
    if (!h || !rq->body.data ||
        buf_printf(&url, "%s/bigquery/v2/projects/%s/datasets/%s/tables", cd->endpoint,
                   cd->project, cd->dataset) != 0) {
        buf_free(&url);
        rq->create = false;
        request_release(s, rq);
        snprintf(why, wl, "create_table: out of memory");
        return -1;
    }
    CURL *e = rq->easy;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, url.data);
    buf_free(&url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "relayd/" RELAY_VERSION);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)cd->request_timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);   /* always */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (cd->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, cd->ca_file);
    curl_easy_setopt(e, CURLOPT_PRIVATE, rq);
    if (curl_multi_add_handle(s->multi, e) != CURLM_OK) {
        rq->create = false;
        request_release(s, rq);
        snprintf(why, wl, "create_table: cannot start the request");
        return -1;
    }
    rq->next_active = s->active;
    s->active = rq;
    rq->start_us = util_mono_us();
    d->inflight++;
    d->creating = true;
    return 1;
}

/* A tables.insert finished: the table exists (200, or 409 when another writer
 * created it first) and rows go again in a second, or the destination parks
 * with the reason. */
static void create_done(struct sender *s, struct request *rq, CURLcode res)
{
    struct dest *d = rq->d;
    const struct conf_dest *cd = d->cd;
    d->inflight--;
    d->creating = false;
    long http = 0;
    curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &http);
    if (res == CURLE_OK && (http == 200 || http == 409)) {
        log_info("destination %s: table %s.%s.%s %s", cd->name, cd->project, cd->dataset,
                 rq->create_base, http == 200 ? "created" : "already exists (created by another writer)");
        unsigned slot = d->n_created++ % 8;
        snprintf(d->created[slot].table, sizeof d->created[slot].table, "%s", rq->create_base);
        d->created[slot].created_us = util_mono_us();
        /* a new table can take a moment to accept rows: come back soon */
        d->not_before_us = 0;
        backoff(s, d, BQ_RETRY, 1, "table just created: waiting for it to accept rows");
    } else {
        char pw[900];
        if (res != CURLE_OK) {
            snprintf(pw, sizeof pw, "table %s.%s.%s not found and create_table failed: %s: %s; "
                     "retrying every %llu s", cd->project, cd->dataset, rq->create_base,
                     curl_easy_strerror(res), rq->errbuf[0] ? rq->errbuf : "no details",
                     (unsigned long long)cd->park_wait_ms / 1000);
        } else {
            struct bq_error be;
            bqrest_classify(http, rq->resp.data, rq->resp.len, &be);
            snprintf(pw, sizeof pw, "table %s.%s.%s not found and create_table failed: HTTP %ld: "
                     "%s; retrying every %llu s", cd->project, cd->dataset, rq->create_base, http,
                     be.message, (unsigned long long)cd->park_wait_ms / 1000);
        }
        note_error(s, d, "%s", pw);
        park(s, d, pw);
    }
    rq->create = false;
    request_release(s, rq);
}

/* Splits ch in halves onto the front of the retry list (order kept). */
static bool split(struct dest *d, struct chunk *ch)
{
    size_t half = ch->n / 2;
    struct chunk *a = chunk_slice(ch, 0, half), *b = chunk_slice(ch, half, ch->n - half);
    if (!a || !b) {
        chunk_free(a);
        chunk_free(b);
        return false;
    }
    retry_push_front(d, b);
    retry_push_front(d, a);
    chunk_free(ch);
    return true;
}

static void handle_done(struct sender *s, struct request *rq, CURLcode res)
{
    if (rq->create) {
        create_done(s, rq, res);
        return;
    }
    struct dest *d = rq->d;
    struct chunk *ch = rq->ch;
    if (--d->inflight == 0 && d->state == D_SENDING)
        d->state = D_IDLE;
    long http = 0;
    curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &http);
    struct bq_error e;
    enum bq_action a;
    char why[640];
    if (res != CURLE_OK) {
        a = BQ_RETRY;
        memset(&e, 0, sizeof e);
        snprintf(why, sizeof why, "%s: %s%s", curl_easy_strerror(res),
                 rq->errbuf[0] ? rq->errbuf : "no details",
                 res == CURLE_PEER_FAILED_VERIFICATION || res == CURLE_SSL_CACERT_BADFILE ?
                 " (TLS verification failed: check ca_file and endpoint)" : "");
    } else {
        a = bqrest_classify(http, rq->resp.data, rq->resp.len, &e);
        snprintf(why, sizeof why, "HTTP %ld%s%s: %s", http, e.reason[0] ? " " : "", e.reason,
                 e.message);
    }
    pthread_mutex_lock(&s->stats_lock);
    histo_add(&d->latency, (double)(util_mono_us() - rq->start_us) / 1e6);
    if (a != BQ_OK)
        d->failed++;
    pthread_mutex_unlock(&s->stats_lock);
    if (a != BQ_OK)
        note_error(s, d, "%s", why);
    switch (a) {
    case BQ_OK: {
        /* the per-row results (bqrest_parse_insertall sets every one): kept
         * across responses, not allocated and zeroed per request */
        if (ch->n > s->cap_results) {
            struct bq_row_result *nr = realloc(s->results, ch->n * sizeof *nr);
            if (nr) {
                s->results = nr;
                s->cap_results = ch->n;
            }
        }
        struct bq_row_result *res_rows = ch->n <= s->cap_results ? s->results : NULL;
        char perr[256];
        if (!res_rows || bqrest_parse_insertall(rq->resp.data, rq->resp.len, ch->n, res_rows,
                                                perr, sizeof perr) != 0) {
            note_error(s, d, "HTTP %ld with an unreadable body: %s", http,
                       res_rows ? perr : "out of memory");
            retry_push_front(d, ch);
            backoff(s, d, BQ_RETRY, rq->retry_after_s, "unreadable insertAll response");
            break;
        }
        size_t n_retry = 0;
        bool transient = false;
        for (size_t i = 0; i < ch->n; i++) {
            switch (res_rows[i].fate) {
            case BQ_ROW_INSERTED:
                delivered(s, d, ch, i);
                break;
            case BQ_ROW_INVALID:
                dead_letter(s, d, ch, i, res_rows[i].reason[0] ? res_rows[i].reason : "invalid",
                            200, "%s%s%s", res_rows[i].location,
                            res_rows[i].location[0] ? ": " : "", res_rows[i].message);
                break;
            case BQ_ROW_RETRY:
                n_retry++;
                if (strcmp(res_rows[i].reason, "stopped") != 0)
                    transient = true;
                break;
            }
        }
        if (n_retry) {
            /* keep the rows to resend, in order, as one chunk */
            struct chunk *rc = calloc(1, sizeof *rc);
            size_t k = 0;
            if (rc && (rc->rows = malloc(n_retry * sizeof *rc->rows)) &&
                (rc->data = malloc(ch->data_len ? ch->data_len : 1))) {
                for (size_t i = 0; i < ch->n; i++) {
                    if (res_rows[i].fate != BQ_ROW_RETRY)
                        continue;
                    const struct row *r = &ch->rows[i];
                    memcpy(rc->data + rc->data_len, ch->data + r->off, r->len);
                    rc->rows[k] = *r;
                    rc->rows[k].off = rc->data_len;
                    rc->data_len += r->len;
                    k++;
                }
                rc->n = k;
                rc->attempts = ch->attempts;
                rc->first_attempt_ms = ch->first_attempt_ms;
                rc->last_attempt_ms = ch->last_attempt_ms;
                memcpy(rc->table, ch->table, sizeof rc->table);
                chunk_charge(rc, ch->budget);
                retry_push_front(d, rc);
            } else {
                chunk_free(rc);
                /* out of memory: resend the whole chunk, insertIds dedupe the rest */
                retry_push_front(d, ch);
                ch = NULL;
            }
            pthread_mutex_lock(&s->stats_lock);
            d->retried += n_retry;
            pthread_mutex_unlock(&s->stats_lock);
            if (transient)
                backoff(s, d, BQ_RETRY, rq->retry_after_s, "rows failed with a transient error");
        } else {
            d->fail_streak = 0;
            ds_ok(&d->ds, s->spool, d->id);
        }
        chunk_free(ch);
        break;
    }
    case BQ_RETRY:
    case BQ_RATE_LIMITED:
    case BQ_QUOTA:
        pthread_mutex_lock(&s->stats_lock);
        d->retried += ch->n;
        pthread_mutex_unlock(&s->stats_lock);
        retry_push_front(d, ch);
        backoff(s, d, a, rq->retry_after_s, why);
        break;
    case BQ_UNAUTHORIZED:
        auth_invalidate(d->auth);
        retry_push_front(d, ch);
        if (!ch->auth_retried) {
            ch->auth_retried = true;   /* once at once, with a fresh token */
            ds_event(&d->ds, LOG_INFO, "token_rejected", "auth", why, "next=new_token");
        } else {
            ch->auth_retried = false;
            backoff(s, d, BQ_RETRY, rq->retry_after_s, why);
        }
        break;
    case BQ_NOT_FOUND: {
        retry_push_front(d, ch);
        char pw[800];
        int made = !d->cd->create_table ? -1 : d->creating ? 1
                   : ensure_table(s, d, ch->table, pw, sizeof pw);
        if (made == 0) {
            /* created within the last minute: a new table can take a moment
             * to accept rows; come back soon, not after park_wait */
            backoff(s, d, BQ_RETRY, 1, "table just created: waiting for it to accept rows");
            break;
        }
        if (made == 1) {
            /* tables.insert on its way: hold this destination until it ends
             * (create_done), bounded by the request timeout */
            snprintf(pw, sizeof pw, "table %s.%s.%s not found: creating it (create_table = yes)",
                     d->cd->project, d->cd->dataset, ch->table);
            park(s, d, pw);
            d->not_before_us = util_mono_us() + (d->cd->request_timeout_ms + 1000) * 1000;
            break;
        }
        if (made == 2) {   /* no token yet: ask again shortly */
            d->not_before_us = util_mono_us() + 20 * 1000;
            break;
        }
        if (made < 0)
            snprintf(pw, sizeof pw, "table %s.%s.%s not found (%s): create it%s; retrying every "
                     "%llu s", d->cd->project, d->cd->dataset, ch->table, e.message,
                     d->cd->create_table ? "" : " (or set create_table = yes)",
                     (unsigned long long)d->cd->park_wait_ms / 1000);
        park(s, d, pw);
        break;
    }
    case BQ_TOO_LARGE:
    case BQ_BAD_REQUEST:
        if (ch->n > 1 && split(d, ch))
            break;   /* bisect: the halves go first */
        if (ch->n > 1) {       /* could not split (memory): try again later */
            retry_push_front(d, ch);
            backoff(s, d, BQ_RETRY, 0, why);
            break;
        }
        dead_letter(s, d, ch, 0, e.reason[0] ? e.reason : (a == BQ_TOO_LARGE ? "too-large" : "invalid"),
                    (uint32_t)http, "HTTP %ld: %s", http, e.message);
        chunk_free(ch);
        break;
    case BQ_PERMANENT:
        for (size_t i = 0; i < ch->n; i++)
            dead_letter(s, d, ch, i, e.reason[0] ? e.reason : "http-error", (uint32_t)http,
                        "HTTP %ld: %s", http, e.message);
        chunk_free(ch);
        break;
    }
    release_held(s, d);
    request_release(s, rq);
}

/* Starts what d may start now. */
static void pump(struct sender *s, struct dest *d, uint64_t now_us, uint64_t now_ms)
{
    if (d->removed || now_us < d->not_before_us)
        return;
    if (d->state == D_BACKOFF || d->state == D_PARKED) {
        d->state = d->inflight ? D_SENDING : D_IDLE;
        ds_probe(&d->ds);
    }
    /* after failures, probe with one request; full parallelism once it succeeds */
    unsigned limit = d->fail_streak ? 1 : (unsigned)d->cd->max_inflight;
    while (d->inflight < limit && !s->stop) {
        struct chunk *ch = d->retry;
        if (ch) {
            d->retry = ch->next;
            if (!d->retry)
                d->retry_tail = &d->retry;
            ch->next = NULL;
        } else {
            ch = read_batch(s, d, now_ms);
            if (!ch)
                break;
        }
        if (d->cd->max_age_ms) {   /* expired rows leave now, with their history */
            size_t keep = 0;
            for (size_t i = 0; i < ch->n; i++) {
                if (ch->rows[i].time_ms + d->cd->max_age_ms < now_ms)
                    dead_letter(s, d, ch, i, "expired", 0, "older than max_age (%llu s) after "
                                "%u attempt(s)", (unsigned long long)d->cd->max_age_ms / 1000,
                                ch->attempts);
                else
                    ch->rows[keep++] = ch->rows[i];
            }
            ch->n = keep;
            if (keep == 0) {
                chunk_free(ch);
                continue;
            }
        }
        start_request(s, d, ch);
        if (now_us < d->not_before_us)
            break;   /* start_request backed off (credentials) */
    }
    release_held(s, d);
    if (d->inflight == 0 && d->state == D_SENDING)
        d->state = D_IDLE;
}

/* ---- retention ---- */

struct expire {
    uint64_t cutoff_ms, next;
    uint64_t *seqs;
    size_t n, cap, got;
};

static int expire_one(const struct dlq_entry *e, void *arg)
{
    struct expire *x = arg;
    x->got++;
    x->next = e->seq + 1;
    if (e->dead_ms >= x->cutoff_ms)
        return 0;
    if (x->n == x->cap) {
        size_t nc = x->cap ? x->cap * 2 : 1024;
        uint64_t *ns = realloc(x->seqs, nc * sizeof *ns);
        if (!ns)
            return 1;
        x->seqs = ns;
        x->cap = nc;
    }
    x->seqs[x->n++] = e->seq;
    return 0;
}

/* dlq_max_age: deletes dead letters older than it, a page at a time. */
static void expire_dead_letters(struct sender *s, uint64_t now_ms)
{
    struct expire x = { .cutoff_ms = now_ms - s->conf->dlq_max_age_ms };
    uint64_t purged = 0;
    do {
        x.got = 0;
        x.n = 0;
        spool_dlq_read(s->spool, x.next, 2048, expire_one, &x);
        if (x.n == 0)
            continue;
        struct spool_txn *t = NULL;
        int rc = spool_txn_begin(s->spool, &t);
        for (size_t i = 0; rc == SPOOL_OK && i < x.n; i++) {
            rc = spool_txn_dlq_delete(t, x.seqs[i]);
            if (rc == SPOOL_NOTFOUND)
                rc = SPOOL_OK;
        }
        if (rc == SPOOL_OK && (rc = spool_txn_commit(t)) == SPOOL_OK)
            purged += x.n;
        else if (rc != SPOOL_OK && t)
            spool_txn_abort(t);
        if (rc != SPOOL_OK)
            break;
    } while (x.got == 2048);
    spool_release_pages(s->spool);
    free(x.seqs);
    if (purged)
        log_info("deleted %llu dead letter(s) older than dlq_max_age (%llu s)",
                 (unsigned long long)purged, (unsigned long long)s->conf->dlq_max_age_ms / 1000);
}

/* ---- the thread ---- */

static long next_timeout_ms(struct sender *s, uint64_t now_us, uint64_t now_ms)
{
    long t = TICK_MS;
    for (size_t i = 0; i < s->n_dests; i++) {
        struct dest *d = &s->dests[i];
        if (d->removed)
            continue;
        if (d->not_before_us > now_us) {
            long w = (long)((d->not_before_us - now_us) / 1000) + 1;
            if (w < t)
                t = w;
        } else if (d->flush_at_ms) {
            long w = d->flush_at_ms > now_ms ? (long)(d->flush_at_ms - now_ms) + 1 : 1;
            if (w < t)
                t = w;
        } else if ((d->retry || d->more) && d->inflight < d->cd->max_inflight) {
            t = 0;   /* work waiting and room to send it: go round at once */
        }
    }
    return t;
}

static void *sender_main(void *arg)
{
    struct sender *s = arg;
    uint64_t stop_deadline = 0;
    for (;;) {
        uint64_t now_us = util_mono_us(), now_ms = util_now_ms();
        if (s->stop && !stop_deadline)
            stop_deadline = now_us + (uint64_t)s->stop_wait_ms * 1000;
        pthread_mutex_lock(&s->stats_lock);
        struct conf *nc = s->pending_conf;
        s->pending_conf = NULL;
        pthread_mutex_unlock(&s->stats_lock);
        if (nc)
            apply_reload(s, nc);
        s->dlq_pending_bytes = 0;
        s->dlq_full = s->conf->dlq_max_bytes &&
                      spool_dlq_bytes(s->spool) >= s->conf->dlq_max_bytes;
        uint64_t every = s->conf->dlq_max_age_ms * 500;   /* half the age, in us */
        if (every > EXPIRE_EVERY_US)
            every = EXPIRE_EVERY_US;
        if (every < 1000000)
            every = 1000000;
        if (s->conf->dlq_max_age_ms && now_us - s->last_expire_us >= every) {
            expire_dead_letters(s, now_ms);
            s->last_expire_us = now_us;
        }
        if (!s->stop)
            for (size_t i = 0; i < s->n_dests; i++)
                pump(s, &s->dests[i], now_us, now_ms);
        int running = 0;
        curl_multi_perform(s->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(s->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct request *rq;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&rq);
            handle_done(s, rq, m->data.result);
        }
        apply_outcomes(s);
        if (s->stop) {
            unsigned inflight = 0;
            for (size_t i = 0; i < s->n_dests; i++)
                inflight += s->dests[i].inflight;
            if (inflight == 0 || util_mono_us() >= stop_deadline)
                break;
        }
        long t = s->stop ? 50 : next_timeout_ms(s, util_mono_us(), util_now_ms());
        if (t > 0)
            curl_multi_poll(s->multi, NULL, 0, (int)t, NULL);
    }
    return NULL;
}

/* ---- status ---- */

void *counts_json(const struct counts *c)
{
    json_t *o = json_object();
    for (size_t i = 0; i < c->n; i++)
        json_object_set_new(o, c->name[i], json_integer((json_int_t)c->value[i]));
    return o;
}

void *histo_json(const struct histo *h)
{
    json_t *o = json_object(), *le = json_array(), *n = json_array();
    for (size_t i = 0; i < HISTO_BUCKETS - 1; i++)
        json_array_append_new(le, json_real(histo_bounds[i]));
    for (size_t i = 0; i < HISTO_BUCKETS; i++)
        json_array_append_new(n, json_integer((json_int_t)h->bucket[i]));
    json_object_set_new(o, "le", le);
    json_object_set_new(o, "buckets", n);
    json_object_set_new(o, "count", json_integer((json_int_t)h->count));
    json_object_set_new(o, "sum_s", json_real(h->sum));
    return o;
}

void sender_status(void *sender, void *rootp)
{
    struct sender *s = sender;
    json_t *dests = json_object_get((json_t *)rootp, "destinations");
    uint64_t now_us = util_mono_us(), now_ms = util_now_ms();
    pthread_mutex_lock(&s->stats_lock);
    for (size_t i = 0; i < s->n_dests; i++) {
        struct dest *d = &s->dests[i];
        size_t k;
        json_t *o, *match = NULL;
        json_array_foreach(dests, k, o) {
            const char *n = json_string_value(json_object_get(o, "name"));
            if (n && strcmp(n, d->cd->name) == 0)
                match = o;
        }
        if (!match)
            continue;
        json_t *dl = json_object();
        json_object_set_new(dl, "table", json_string(d->table));
        const char *state = d->removed ? "removed" : dstate_names[d->state];
        if (d->state == D_SENDING && !d->removed && ds_in_episode(&d->ds))
            state = "probing";   /* after failures: one request tests the way */
        char why[800], sending[64];
        snprintf(sending, sizeof sending, "%u request(s) in flight", d->inflight);
        ds_why(&d->ds, state, sending, why, sizeof why);
        json_object_set_new(dl, "state", json_string(state));
        json_object_set_new(dl, "delivered", json_integer((json_int_t)d->delivered));
        json_object_set_new(dl, "retried", json_integer((json_int_t)d->retried));
        json_object_set_new(dl, "dead_lettered", json_integer((json_int_t)d->dead_lettered));
        json_object_set_new(dl, "in_flight", json_integer(d->inflight));
        json_object_set_new(dl, "in_flight_bytes", json_integer((json_int_t)budget_used(&d->budget)));
        json_object_set_new(dl, "in_flight_bytes_peak", json_integer((json_int_t)budget_peak(&d->budget)));
        json_object_set_new(dl, "max_inflight_bytes", json_integer((json_int_t)d->cd->max_inflight_bytes));
        json_object_set_new(dl, "requests", json_integer((json_int_t)d->requests));
        json_object_set_new(dl, "failed_requests", json_integer((json_int_t)d->failed));
        json_object_set_new(dl, "bytes_raw", json_integer((json_int_t)d->bytes_raw));
        json_object_set_new(dl, "bytes_sent", json_integer((json_int_t)d->bytes_sent));
        double wait = d->not_before_us > now_us ? (double)(d->not_before_us - now_us) / 1e6 : 0;
        json_object_set_new(dl, "backoff_s", json_real(wait));
        json_object_set_new(dl, "why", json_string(why));
        json_object_set_new(dl, "last_error", json_string(d->last_error));
        json_object_set_new(dl, "last_error_age_s", json_real(d->last_error_ms ?
                            (double)(now_ms - d->last_error_ms) / 1000 : -1));
        json_object_set_new(dl, "dead_lettered_by_reason", counts_json(&d->dead_by_reason));
        json_object_set_new(dl, "latency", histo_json(&d->latency));
        json_object_set_new(dl, "token_refreshes", json_integer((json_int_t)auth_refreshes(d->auth)));
        json_object_set_new(match, "delivery", dl);
    }
    pthread_mutex_unlock(&s->stats_lock);
    for (size_t i = 0; i < s->n_writers; i++) {
        size_t k;
        json_t *o;
        json_array_foreach(dests, k, o) {
            const char *n = json_string_value(json_object_get(o, "name"));
            if (n && strcmp(n, writer_name(s->writers[i])) == 0)
                writer_status(s->writers[i], o);
        }
    }
}

/* ---- life cycle ---- */

/* Sets d up for cd (a new destination). */
static int dest_init(struct sender *s, struct dest *d, const struct conf_dest *cd, char *err,
                     size_t errlen)
{
    memset(d, 0, sizeof *d);
    d->cd = cd;
    d->retry_tail = &d->retry;
    budget_init(&d->budget, cd->max_inflight_bytes);
    if (spool_dest(s->spool, cd->name, true, &d->id) != SPOOL_OK) {
        snprintf(err, errlen, "[destination %s]: cannot open its queue: %s", cd->name,
                 spool_last_error());
        return -1;
    }
    const char *table = cd->table ? cd->table : cd->name;
    route_init(&d->route, table, cd->table_time_field);
    snprintf(d->table, sizeof d->table, "%s.%s.%s", cd->project, cd->dataset, table);
    ds_init(&d->ds, &s->stats_lock, cd->name, "insertAll", d->table);
    struct auth_opts ao = { .credentials = cd->credentials, .ca_file = cd->ca_file,
                            .timeout_ms = 10000 };
    char aerr[512];
    if (auth_create(&ao, &d->auth, aerr, sizeof aerr) != 0) {
        snprintf(err, errlen, "[destination %s] credentials: %s", cd->name, aerr);
        return -1;
    }
    log_info("destination %s -> %s via insertAll (%s)", cd->name, d->table,
             auth_describe(d->auth));
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* True if a writer built for a can go on serving b unchanged. */
static bool storage_same(const struct conf_dest *a, const struct conf_dest *b)
{
    return str_eq(a->project, b->project) && str_eq(a->dataset, b->dataset) &&
           str_eq(a->table, b->table) && str_eq(a->credentials, b->credentials) &&
           str_eq(a->endpoint, b->endpoint) && str_eq(a->ca_file, b->ca_file) &&
           str_eq(a->storage_endpoint, b->storage_endpoint) && str_eq(a->schema_file, b->schema_file) &&
           a->exactly_once == b->exactly_once && a->batch_rows == b->batch_rows &&
           a->batch_bytes == b->batch_bytes && a->max_inflight == b->max_inflight &&
           a->ignore_unknown_values == b->ignore_unknown_values &&
           a->flush_interval_ms == b->flush_interval_ms && a->retry_base_ms == b->retry_base_ms &&
           a->retry_cap_ms == b->retry_cap_ms && a->park_wait_ms == b->park_wait_ms &&
           a->batch_mode == b->batch_mode && a->batch_commit_rows == b->batch_commit_rows &&
           a->batch_commit_interval_ms == b->batch_commit_interval_ms &&
           a->batch_commit_idle_ms == b->batch_commit_idle_ms;
}

/* Applies a reloaded config on the sender thread: destinations added,
 * changed or removed, credentials swapped; requests in flight and kept-alive
 * connections of unchanged destinations go on untouched. */
static void apply_reload(struct sender *s, struct conf *nc)
{
    char err[512];
    size_t added = 0, changed = 0, removed = 0;
    for (size_t i = 0; i < s->n_dests; i++) {
        struct dest *d = &s->dests[i];
        const struct conf_dest *cd = conf_find_dest(nc, d->cd->name, strlen(d->cd->name));
        if (!cd || !conf_dest_delivers(cd) || cd->api != API_INSERTALL) {
            if (!d->removed)
                removed++;
            pthread_mutex_lock(&s->stats_lock);
            d->removed = true;
            pthread_mutex_unlock(&s->stats_lock);
            continue;
        }
        struct auth *na = NULL;
        if (!str_eq(cd->credentials, d->cd->credentials) || !str_eq(cd->ca_file, d->cd->ca_file)) {
            struct auth_opts ao = { .credentials = cd->credentials, .ca_file = cd->ca_file,
                                    .timeout_ms = 10000 };
            if (auth_create(&ao, &na, err, sizeof err) != 0) {
                log_error("reload: [destination %s] credentials: %s; keeping the old ones",
                          cd->name, err);
                na = NULL;
            } else {
                log_info("reload: destination %s now uses %s", cd->name, auth_describe(na));
            }
        }
        pthread_mutex_lock(&s->stats_lock);
        if (d->removed)
            added++;
        else
            changed++;
        d->removed = false;
        d->cd = cd;
        budget_set_max(&d->budget, cd->max_inflight_bytes);
        route_init(&d->route, cd->table ? cd->table : cd->name, cd->table_time_field);
        snprintf(d->table, sizeof d->table, "%s.%s.%s", cd->project, cd->dataset, d->route.pattern);
        ds_set_table(&d->ds, cd->name, d->table);
        if (na) {
            auth_free(d->auth);
            d->auth = na;
        }
        pthread_mutex_unlock(&s->stats_lock);
    }
    for (size_t i = 0; i < nc->n_dests; i++) {
        const struct conf_dest *cd = &nc->dests[i];
        if (!conf_dest_delivers(cd))
            continue;
        if (cd->api == API_STORAGE) {
            struct writer *old = NULL;
            size_t k;
            for (k = 0; k < s->n_writers; k++)
                if (strcmp(writer_name(s->writers[k]), cd->name) == 0) {
                    old = s->writers[k];
                    break;
                }
            if (old && storage_same(writer_conf(old), cd))
                continue;   /* unchanged: its connection goes on */
            struct writer *w;
            if (writer_create(cd, s->spool, &w, err, sizeof err) != 0) {
                log_error("reload: %s", err);
                continue;
            }
            /* the old writer stops before the new one starts: never two
             * writers on one queue (exactly-once and batch state) */
            if (old)
                writer_stop(old, 5000);   /* its rows wait in the queue for the new one */
            if (writer_start(w) != 0)
                log_error("reload: [destination %s]: cannot start its writer", cd->name);
            if (old) {
                pthread_mutex_lock(&s->stats_lock);
                s->writers[k] = w;
                pthread_mutex_unlock(&s->stats_lock);
                writer_free(old);
                changed++;
            } else {
                pthread_mutex_lock(&s->stats_lock);
                s->writers[s->n_writers++] = w;
                pthread_mutex_unlock(&s->stats_lock);
                added++;
            }
            continue;
        }
        bool known = false;
        for (size_t k = 0; k < s->n_dests; k++)
            known |= strcmp(s->dests[k].cd->name, cd->name) == 0;
        if (known || s->n_dests == CONF_MAX_DESTS)
            continue;
        struct dest nd;
        if (dest_init(s, &nd, cd, err, sizeof err) != 0) {
            log_error("reload: %s", err);
            continue;
        }
        pthread_mutex_lock(&s->stats_lock);
        s->dests[s->n_dests] = nd;
        budget_init(&s->dests[s->n_dests].budget, cd->max_inflight_bytes);   /* its own mutex */
        s->dests[s->n_dests].retry_tail = &s->dests[s->n_dests].retry;
        s->n_dests++;
        pthread_mutex_unlock(&s->stats_lock);
        added++;
    }
    for (size_t k = 0; k < s->n_writers;) {   /* writers whose destination is gone */
        const struct conf_dest *cd = conf_find_dest(nc, writer_name(s->writers[k]),
                                                    strlen(writer_name(s->writers[k])));
        if (cd && conf_dest_delivers(cd) && cd->api == API_STORAGE) {
            k++;
            continue;
        }
        struct writer *w = s->writers[k];
        writer_stop(w, 5000);
        pthread_mutex_lock(&s->stats_lock);
        s->writers[k] = s->writers[--s->n_writers];
        pthread_mutex_unlock(&s->stats_lock);
        writer_free(w);
        removed++;
    }
    /* destinations and writers may still point into the old config */
    struct conf **oc = realloc(s->old_confs, (s->n_old_confs + 1) * sizeof *oc);
    if (oc) {
        s->old_confs = oc;
        if (s->owns_conf)
            oc[s->n_old_confs++] = (struct conf *)s->conf;
    }
    s->conf = nc;
    s->owns_conf = true;
    log_info("reload: delivery to %zu destination(s) added, %zu updated, %zu removed", added,
             changed, removed);
}

void sender_reload(void *sender, const char *path)
{
    struct sender *s = sender;
    struct conf *nc = malloc(sizeof *nc);
    char err[512];
    if (!nc)
        return;
    conf_defaults(nc);
    if (conf_load(path, nc, err, sizeof err) != 0) {
        free(nc);   /* ingest has reported the error already */
        return;
    }
    pthread_mutex_lock(&s->stats_lock);
    struct conf *prev = s->pending_conf;
    s->pending_conf = nc;
    pthread_mutex_unlock(&s->stats_lock);
    if (prev) {
        conf_free(prev);
        free(prev);
    }
    curl_multi_wakeup(s->multi);
}

int sender_create(const struct conf *conf, struct spool *sp, struct sender **out,
                  char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init_once);
    struct sender *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->conf = conf;
    s->spool = sp;
    pthread_mutex_init(&s->stats_lock, NULL);
    /* room for every destination a reload may add: their addresses must not move */
    s->dests = calloc(CONF_MAX_DESTS, sizeof *s->dests);
    s->writers = calloc(CONF_MAX_DESTS, sizeof *s->writers);
    s->multi = curl_multi_init();
    if (!s->dests || !s->writers || !s->multi) {
        snprintf(err, errlen, "out of memory");
        sender_free(s);
        return -1;
    }
    for (size_t i = 0; i < conf->n_dests; i++) {
        const struct conf_dest *cd = &conf->dests[i];
        if (!conf_dest_delivers(cd))
            continue;
        if (cd->api == API_STORAGE) {
            if (writer_create(cd, sp, &s->writers[s->n_writers], err, errlen) != 0) {
                sender_free(s);
                return -1;
            }
            s->n_writers++;
            continue;
        }
        struct dest *d = &s->dests[s->n_dests];
        if (dest_init(s, d, cd, err, errlen) != 0) {
            sender_free(s);
            return -1;
        }
        s->n_dests++;
    }
    *out = s;
    return 0;
}

int sender_start(struct sender *s)
{
    for (size_t i = 0; i < s->n_writers; i++)
        if (writer_start(s->writers[i]) != 0)
            return -1;
    if (pthread_create(&s->thread, NULL, sender_main, s) != 0)
        return -1;
    pthread_setname_np(s->thread, "relayd-send");   /* for top -H */
    s->started = true;
    return 0;
}

void sender_wake(void *sender)
{
    struct sender *s = sender;
    if (s && s->multi)
        curl_multi_wakeup(s->multi);
    for (size_t i = 0; s && i < s->n_writers; i++)
        writer_wake(s->writers[i]);
}

void sender_stop(struct sender *s, unsigned wait_ms)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_writers; i++)
        writer_stop(s->writers[i], wait_ms);
    if (!s->started)
        return;
    s->stop_wait_ms = wait_ms;
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    curl_multi_wakeup(s->multi);
    pthread_join(s->thread, NULL);
    s->started = false;
}

void sender_free(struct sender *s)
{
    if (!s)
        return;
    sender_stop(s, 0);
    /* requests still in flight are abandoned: their rows stay queued */
    for (size_t i = 0; i < s->n_dests; i++) {
        struct dest *d = &s->dests[i];
        while (d->retry) {
            struct chunk *c = d->retry;
            d->retry = c->next;
            chunk_free(c);
        }
        chunk_free(d->held);
        auth_free(d->auth);
    }
    while (s->active) {            /* abandoned in flight: their rows stay queued */
        struct request *rq = s->active;
        chunk_free(rq->ch);
        request_release(s, rq);
    }
    while (s->free_reqs) {
        struct request *rq = s->free_reqs;
        s->free_reqs = rq->next;
        request_destroy(rq);
    }
    for (size_t i = 0; i < s->n_dests; i++)
        budget_destroy(&s->dests[i].budget);   /* every chunk is freed */
    for (size_t i = 0; i < s->n_writers; i++)
        writer_free(s->writers[i]);
    free(s->writers);
    if (s->multi)
        curl_multi_cleanup(s->multi);
    free(s->outs);
    free(s->done_seq);
    free(s->done_dest);
    free(s->results);
    free(s->body_rows);
    free(s->body_ids);
    bqrest_gz_free(s->gz);
    free(s->dests);
    for (size_t i = 0; i < s->n_old_confs; i++) {
        conf_free(s->old_confs[i]);
        free(s->old_confs[i]);
    }
    free(s->old_confs);
    if (s->pending_conf) {
        conf_free(s->pending_conf);
        free(s->pending_conf);
    }
    if (s->owns_conf) {
        conf_free((struct conf *)s->conf);
        free((struct conf *)s->conf);
    }
    pthread_mutex_destroy(&s->stats_lock);
    free(s);
}
