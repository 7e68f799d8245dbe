/*
 * ingest.c -- producer connections, the line protocol and acks. See ingest.h.
 *
 * Ack arithmetic. Each connection counts its lines. A line is handled when it
 * was empty, set the table, was refused (its "err" line is queued), or held a
 * record that is now durable. Records become durable in the order they were
 * read, so the connection's ack is:
 *   no record in flight  -> every line read so far
 *   otherwise            -> the last line whose record is durable
 * and "ok N" is sent whenever that number grows. Replies go out in order, so
 * an "err" for line L always precedes any "ok" covering L. Consecutive unsent
 * "ok" lines collapse into the latest, which keeps a producer that never
 * reads its replies from growing our memory.
 */
#include "ingest.h"
#include "committer.h"
#include "forward.h"
#include "line.h"
#include "log.h"
#include "status.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <netdb.h>
#include <netinet/in.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define READ_CHUNK    (256u << 10)   /* bytes read per connection per turn */
#define OUT_LIMIT     (64u << 10)    /* unsent replies before we stop reading */
#define TICK_MS       100
#define RATE_SLOTS    11             /* 10 s window of 1 s samples */
#define NO_OK         ((size_t)-1)

enum tag { T_LISTEN = 1, T_CONTROL, T_SIGNAL, T_TIMER, T_COMMITTER, T_CONN, T_FWD_UNIX,
           T_FWD_TCP };
#define TAG(t, slot) (((uint64_t)(t) << 32) | (uint32_t)(slot))

enum state { ST_ACCEPTING, ST_BACKPRESSURE, ST_REFUSING };
static const char *const state_names[] = { "accepting", "backpressure", "refusing" };

/* Reasons a line is refused; counted in status. */
static const char *const reasons[] = { "json", "utf8", "not-object", "nul", "depth",
                                       "size", "table", "full", "truncated", "shutdown" };
#define N_REASONS (sizeof reasons / sizeof reasons[0])

/* Reasons a forward record is refused (forward.h, and ours: table, full,
 * shutdown, truncated); counted in status. */
static const char *const fwd_reasons[] = { "json", "utf8", "not-object", "nul", "depth", "size",
                                           "table", "full", "truncated", "shutdown", "time",
                                           "key", "type", "entry", "trailing" };
#define N_FWD_REASONS (sizeof fwd_reasons / sizeof fwd_reasons[0])

/* A forward chunk waiting for its records to be durable. */
struct fwd_pending {
    char *chunk;
    size_t len;
    uint64_t upto;          /* its last record's line */
};

struct conn {
    int fd;
    uint32_t slot, gen;
    uid_t uid;
    pid_t pid;
    unsigned events;        /* registered epoll events */
    bool in_epoll;          /* false while parked (see set_events) */
    char *in;               /* partial line */
    size_t in_len, in_cap;
    bool skipping;          /* discarding an over-long line up to its newline */
    bool eof;               /* producer finished sending */
    uint64_t lines;         /* complete lines seen */
    uint64_t inflight;      /* records submitted, not yet durable or refused */
    uint64_t durable_line;  /* highest line whose record is durable */
    uint64_t acked;         /* last "ok N" queued */
    uint32_t table;         /* destination id set by '@NAME', 0 = default */
    char *out;              /* replies not yet written */
    size_t out_len, out_off, out_cap;
    size_t tail_ok;         /* offset of an unsent trailing "ok" line, or NO_OK */
    bool dirty;             /* on the to-flush list */
    struct conn *next_dirty;
    /* the Fluent forward protocol (NULL: the line protocol) */
    struct fwd_stream *fwd;
    struct fwd_pending *acks;      /* oldest first, from ack_head */
    size_t n_acks, ack_head, acks_cap;
    uint64_t fail_line;     /* first record that could not be stored for now (0: none):
                               no chunk holding it or a later one is acknowledged */
    bool is_fwd, tcp;
};

struct dest_map {
    const char *name;
    size_t len;
    uint32_t id;
};

struct ingest {
    struct conf *conf;
    struct ingest_hooks hooks;
    struct spool *spool;
    struct committer *committer;
    int epfd, lfd, cfd, sfd, tfd, ffd, ftcp;
    struct conn **conns;          /* by slot */
    uint32_t *gens;
    uint32_t *free_slots;
    size_t n_free, n_slots, n_conns;
    struct dest_map *dests;
    size_t n_dests;
    uint32_t default_dest;
    struct batch *cur, *spare;    /* filling now; recycled */
    uint64_t pending_bytes;       /* submitted + cur, not yet done */
    enum state state;
    uint64_t full_since_us;
    char full_why[256];           /* the committer's reason, as of the last change */
    bool reading;                 /* global read switch */
    bool stopping;
    struct conn *dirty;
    char *scratch;
    struct line_limits limits;
    uint64_t start_ms;
    /* counters */
    uint64_t records, bytes, stored_records, lines_refused[N_REASONS], accepted_conns,
             denied_conns;
    uint64_t rate_t[RATE_SLOTS], rate_rec[RATE_SLOTS], rate_bytes[RATE_SLOTS];
    unsigned rate_i, ticks;
    uint64_t watchdog_us, last_ping_us;   /* systemd watchdog (0: off) */
    /* forward input counters */
    uint64_t fwd_conns, fwd_messages, fwd_records, fwd_acks, fwd_errors,
             fwd_refused[N_FWD_REASONS];
    uint64_t fwd_log_window_us;
    unsigned fwd_log_n;
    uint64_t fwd_log_suppressed;
};

static void conn_free(struct conn *c)
{
    free(c->in);
    free(c->out);
    fwd_stream_free(c->fwd);
    for (size_t i = c->ack_head; i < c->n_acks; i++)
        free(c->acks[i].chunk);
    free(c->acks);
    free(c);
}

/* Forward problems go to the log, at most 10 lines per 10 s. */
static void fwd_log(struct ingest *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fwd_log(struct ingest *in, const char *fmt, ...)
{
    uint64_t now = util_mono_us();
    if (now - in->fwd_log_window_us >= 10000000) {
        if (in->fwd_log_suppressed)
            log_warn("forward: %llu more refusals in the last 10 s were not logged (see "
                     "relayctl status: ingest.forward.refused)",
                     (unsigned long long)in->fwd_log_suppressed);
        in->fwd_log_window_us = now;
        in->fwd_log_n = 0;
        in->fwd_log_suppressed = 0;
    }
    if (in->fwd_log_n >= 10) {
        in->fwd_log_suppressed++;
        return;
    }
    in->fwd_log_n++;
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_warn("forward: %s", msg);
}

static int fwd_reason_index(const char *r)
{
    for (size_t i = 0; i < N_FWD_REASONS; i++)
        if (strcmp(fwd_reasons[i], r) == 0)
            return (int)i;
    return 0;
}

static int reason_index(const char *r)
{
    for (size_t i = 0; i < N_REASONS; i++)
        if (strcmp(reasons[i], r) == 0)
            return (int)i;
    return 0;
}

/* ---- replies ---- */

static void mark_dirty(struct ingest *in, struct conn *c)
{
    if (!c->dirty) {
        c->dirty = true;
        c->next_dirty = in->dirty;
        in->dirty = c;
    }
}

static bool out_reserve(struct conn *c, size_t n)
{
    if (c->out_off > 0 && c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        c->tail_ok = NO_OK;
    }
    if (c->out_len + n <= c->out_cap)
        return true;
    if (c->out_off > 0) {   /* compact */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        if (c->tail_ok != NO_OK)   /* a partly sent "ok" can no longer be replaced */
            c->tail_ok = c->tail_ok >= c->out_off ? c->tail_ok - c->out_off : NO_OK;
        c->out_off = 0;
        if (c->out_len + n <= c->out_cap)
            return true;
    }
    size_t nc = c->out_cap ? c->out_cap : 512;
    while (nc < c->out_len + n)
        nc *= 2;
    char *o = realloc(c->out, nc);
    if (!o)
        return false;
    c->out = o;
    c->out_cap = nc;
    return true;
}

static void reply(struct ingest *in, struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply(struct ingest *in, struct conn *c, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    if (!out_reserve(c, (size_t)n))
        return;   /* out of memory: the ack still covers the line */
    memcpy(c->out + c->out_len, line, (size_t)n);
    c->out_len += (size_t)n;
    c->tail_ok = NO_OK;
    mark_dirty(in, c);
}

static void refuse(struct ingest *in, struct conn *c, uint64_t line, const char *reason,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void refuse(struct ingest *in, struct conn *c, uint64_t line, const char *reason,
                   const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->is_fwd) {
        in->fwd_refused[fwd_reason_index(reason)]++;
        if (strcmp(reason, "full") == 0 || strcmp(reason, "shutdown") == 0) {
            /* not for good: the chunk is not acknowledged, the producer resends it */
            if (!c->fail_line || line < c->fail_line)
                c->fail_line = line;
            c->eof = true;          /* read no more; close once the earlier acks are out */
            fwd_log(in, "pid %d: a record was not stored (%s: %s); its chunk is not "
                    "acknowledged and the connection is closed so that the producer resends it",
                    (int)c->pid, reason, msg);
        } else {
            fwd_log(in, "pid %d: record %llu refused (%s): %s", (int)c->pid,
                    (unsigned long long)line, reason, msg);
        }
        mark_dirty(in, c);
        return;
    }
    in->lines_refused[reason_index(reason)]++;
    reply(in, c, "err %llu %s %s", (unsigned long long)line, reason, msg);
}

/* Queues the {"ack": chunk} of every chunk whose records are now handled. */
static void update_fwd_acks(struct ingest *in, struct conn *c)
{
    uint64_t n = c->inflight == 0 ? c->lines : c->durable_line;
    while (c->ack_head < c->n_acks) {
        struct fwd_pending *a = &c->acks[c->ack_head];
        if (c->fail_line && a->upto >= c->fail_line) {
            free(a->chunk);          /* never acknowledged: resent by the producer */
            c->ack_head++;
            continue;
        }
        if (a->upto > n)
            break;
        if (!out_reserve(c, a->len + 16))
            break;
        c->out_len += fwd_ack(a->chunk, a->len, c->out + c->out_len, a->len + 16);
        free(a->chunk);
        c->ack_head++;
        in->fwd_acks++;
        mark_dirty(in, c);
    }
    if (c->ack_head == c->n_acks)
        c->ack_head = c->n_acks = 0;
}

/* Queues "ok N" if the connection's ack has grown. */
static void update_ack(struct ingest *in, struct conn *c)
{
    if (c->is_fwd) {
        update_fwd_acks(in, c);
        return;
    }
    uint64_t n = c->inflight == 0 ? c->lines : c->durable_line;
    if (n <= c->acked)
        return;
    c->acked = n;
    char line[32];
    int len = snprintf(line, sizeof line, "ok %llu\n", (unsigned long long)n);
    if (c->tail_ok != NO_OK && c->tail_ok >= c->out_off) {
        c->out_len = c->tail_ok;      /* replace the unsent older ack */
    }
    if (!out_reserve(c, (size_t)len))
        return;
    c->tail_ok = c->out_len;
    memcpy(c->out + c->out_len, line, (size_t)len);
    c->out_len += (size_t)len;
    mark_dirty(in, c);
}

/* ---- connection lifecycle ---- */

static void set_events(struct ingest *in, struct conn *c);

static void conn_close(struct ingest *in, struct conn *c)
{
    if (c->in_epoll)
        epoll_ctl(in->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->is_fwd) {
        /* closing with unread bytes resets the connection, which can discard
         * the acks just sent before the producer reads them: drain first */
        char sink[4096];
        for (int i = 0; i < 256 && recv(c->fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++)
            ;
    }
    close(c->fd);
    in->conns[c->slot] = NULL;
    in->gens[c->slot]++;
    in->free_slots[in->n_free++] = c->slot;
    in->n_conns--;
    c->fd = -1;   /* may still be on the dirty list: flush skips it */
    if (!c->dirty)
        conn_free(c);
}

static bool want_read(struct ingest *in, struct conn *c)
{
    return in->reading && !c->eof && c->out_len - c->out_off < OUT_LIMIT;
}

/* Registers the events c waits for. A connection that waits for nothing is
 * taken out of epoll altogether ("parked"): epoll reports a hang-up whatever
 * the interest mask, and a hung-up producer whose records are still being
 * committed must not make the loop spin. */
static void set_events(struct ingest *in, struct conn *c)
{
    unsigned ev = 0;
    if (want_read(in, c))
        ev |= EPOLLIN;
    if (c->out_len > c->out_off)
        ev |= EPOLLOUT;
    if (ev == 0) {
        if (c->in_epoll)
            epoll_ctl(in->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->in_epoll = false;
        c->events = 0;
        return;
    }
    if (c->in_epoll && ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.u64 = TAG(T_CONN, c->slot) };
    epoll_ctl(in->epfd, c->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e);
    c->in_epoll = true;
    c->events = ev;
}

/* Writes what it can; closes the connection when it is finished or broken.
 * Returns false if c was closed. */
static bool conn_flush(struct ingest *in, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(in, c);   /* EPIPE, ECONNRESET: the producer is gone */
            return false;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        c->tail_ok = NO_OK;
    }
    if (c->eof && c->inflight == 0 && c->out_len == 0) {
        conn_close(in, c);
        return false;
    }
    set_events(in, c);
    return true;
}

static void flush_dirty(struct ingest *in)
{
    while (in->dirty) {
        struct conn *c = in->dirty;
        in->dirty = c->next_dirty;
        c->dirty = false;
        if (c->fd < 0) {     /* closed while queued */
            conn_free(c);
            continue;
        }
        conn_flush(in, c);
    }
}

/* ---- destinations ---- */

static uint32_t lookup_dest(struct ingest *in, const char *name, size_t len)
{
    for (size_t i = 0; i < in->n_dests; i++)
        if (in->dests[i].len == len && memcmp(in->dests[i].name, name, len) == 0)
            return in->dests[i].id;
    return 0;
}

/* Builds the name -> spool id map for conf, creating spool queues as needed. */
static int map_dests(struct ingest *in, struct conf *conf, struct dest_map **out,
                     size_t *n, uint32_t *def, char *err, size_t errlen)
{
    struct dest_map *m = calloc(conf->n_dests ? conf->n_dests : 1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *def = 0;
    for (size_t i = 0; i < conf->n_dests; i++) {
        uint32_t id;
        int rc = spool_dest(in->spool, conf->dests[i].name, true, &id);
        if (rc) {
            snprintf(err, errlen, "cannot create the queue for destination '%s': %s",
                     conf->dests[i].name, spool_strerror(rc));
            free(m);
            return -1;
        }
        m[i].name = conf->dests[i].name;
        m[i].len = strlen(conf->dests[i].name);
        m[i].id = id;
        if (conf->default_table && strcmp(conf->default_table, conf->dests[i].name) == 0)
            *def = id;
    }
    *out = m;
    *n = conf->n_dests;
    return 0;
}

/* ---- reading lines ---- */

static void submit_batch(struct ingest *in)
{
    if (!in->cur || in->cur->n == 0)
        return;
    committer_submit(in->committer, in->cur);
    in->cur = NULL;
}

static void set_reading(struct ingest *in, bool on)
{
    if (in->reading == on)
        return;
    in->reading = on;
    for (size_t i = 0; i < in->n_slots; i++)
        if (in->conns[i])
            set_events(in, in->conns[i]);
}

/* Re-evaluates the global read switch from state and memory in use. */
static void update_reading(struct ingest *in)
{
    bool on = !in->stopping && in->state != ST_BACKPRESSURE &&
              in->pending_bytes + in->conf->max_record_bytes <= in->conf->max_pending_bytes;
    set_reading(in, on);
}

static void store_record(struct ingest *in, struct conn *c, uint64_t ln, uint32_t dest,
                         const char *json, size_t json_len);

static void handle_line(struct ingest *in, struct conn *c, const char *p, size_t len)
{
    uint64_t ln = ++c->lines;
    struct line_result r;
    line_parse(p, len, &in->limits, &r);
    uint32_t dest;
    switch (r.kind) {
    case LINE_EMPTY:
        return;
    case LINE_ERROR:
        refuse(in, c, ln, r.reason, "%s", r.msg);
        return;
    case LINE_TABLE:
        dest = lookup_dest(in, r.table, r.table_len);
        if (!dest)
            refuse(in, c, ln, "table", "unknown table '%.*s': add a [destination %.*s] "
                   "section to the config", (int)r.table_len, r.table, (int)r.table_len, r.table);
        else
            c->table = dest;
        return;
    case LINE_RECORD:
        break;
    }
    if (r.table) {
        dest = lookup_dest(in, r.table, r.table_len);
        if (!dest) {
            refuse(in, c, ln, "table", "unknown table '%.*s': add a [destination %.*s] "
                   "section to the config", (int)r.table_len, r.table, (int)r.table_len, r.table);
            return;
        }
    } else {
        dest = c->table ? c->table : in->default_dest;
        if (!dest) {
            refuse(in, c, ln, "table", "no table for this record: send '@NAME' first, "
                   "prefix the record with '@NAME ', or set [ingest] default_table");
            return;
        }
    }
    store_record(in, c, ln, dest, r.json, r.json_len);
}

/* Adds a validated record of line ln to the current batch (or refuses it). */
static void store_record(struct ingest *in, struct conn *c, uint64_t ln, uint32_t dest,
                         const char *json, size_t json_len)
{
    if (in->state == ST_REFUSING) {
        refuse(in, c, ln, "full", "spool is full: %s; nothing was stored: retry later",
               in->full_why);
        return;
    }
    if (!in->cur) {
        in->cur = in->spare;
        if (in->cur)
            in->spare = in->cur->next;
        else
            in->cur = calloc(1, sizeof *in->cur);
        if (!in->cur) {
            refuse(in, c, ln, "full", "relayd is out of memory; nothing was stored");
            return;
        }
        batch_reset(in->cur);
    }
    if (batch_add(in->cur, c->slot, c->gen, ln, dest, json, json_len) != 0) {
        refuse(in, c, ln, "full", "relayd is out of memory; nothing was stored");
        return;
    }
    c->inflight++;
    in->pending_bytes += json_len;
    in->records++;
    in->bytes += json_len;
}

/* ---- the Fluent forward protocol ---- */

struct fwd_ctx {
    struct ingest *in;
    struct conn *c;
};

static void fwd_on_record(void *arg, const char *tag, size_t tag_len, const char *json,
                          size_t len)
{
    struct fwd_ctx *x = arg;
    struct conn *c = x->c;
    uint64_t ln = ++c->lines;
    const char *name = conf_route_tag(x->in->conf, tag, tag_len);
    uint32_t dest = name ? lookup_dest(x->in, name, strlen(name)) : 0;
    if (!dest) {
        refuse(x->in, c, ln, "table", "no destination for tag '%.*s': add a [forward] route "
               "(e.g. route = %.*s NAME), a [destination %.*s] or [ingest] default_table",
               (int)tag_len, tag, (int)tag_len, tag, (int)tag_len, tag);
        return;
    }
    x->in->fwd_records++;
    store_record(x->in, c, ln, dest, json, len);
}

static void fwd_on_refused(void *arg, const char *tag, size_t tag_len, const char *reason,
                           const char *detail)
{
    struct fwd_ctx *x = arg;
    uint64_t ln = ++x->c->lines;
    refuse(x->in, x->c, ln, reason, "tag '%.*s': %s", (int)tag_len, tag, detail);
}

static void fwd_on_end(void *arg, const char *chunk, size_t len)
{
    struct fwd_ctx *x = arg;
    struct conn *c = x->c;
    x->in->fwd_messages++;
    if (!chunk)
        return;
    if (c->n_acks == c->acks_cap) {
        size_t nc = c->acks_cap ? c->acks_cap * 2 : 8;
        struct fwd_pending *a = realloc(c->acks, nc * sizeof *a);
        if (!a)
            return;                 /* not acknowledged: the producer resends it */
        c->acks = a;
        c->acks_cap = nc;
    }
    char *id = malloc(len);
    if (!id)
        return;
    memcpy(id, chunk, len);
    c->acks[c->n_acks++] = (struct fwd_pending){ id, len, c->lines };
}

static void fwd_limits_of(const struct conf *cf, struct fwd_limits *l)
{
    l->max_message_bytes = (size_t)cf->forward_max_message_bytes;
    l->max_record_bytes = (size_t)cf->max_record_bytes;
    l->max_depth = (unsigned)cf->max_depth;
    l->time_key = cf->forward_time_key;
    l->time_format = (enum fwd_time_format)cf->forward_time_format;
}

static void fwd_consume(struct ingest *in, struct conn *c, const char *buf, size_t n)
{
    struct fwd_ctx x = { in, c };
    struct fwd_sink sink = { fwd_on_record, fwd_on_refused, fwd_on_end, &x };
    struct fwd_limits l;
    fwd_limits_of(in->conf, &l);
    char err[512];
    if (fwd_feed(c->fwd, &l, buf, n, &sink, err, sizeof err) != 0) {
        in->fwd_errors++;
        fwd_log(in, "pid %d: protocol error, closing the connection: %s (messages before it "
                "are stored and acknowledged; the producer resends the rest)", (int)c->pid, err);
        c->eof = true;    /* no more reading; closed once what was read is acknowledged */
        fwd_stream_free(c->fwd);
        c->fwd = NULL;
        mark_dirty(in, c);
    }
}

/* Keeps the partial line at p[0..n) for the next read. */
static bool keep_partial(struct conn *c, const char *p, size_t n)
{
    if (c->in_len + n > c->in_cap) {
        size_t nc = c->in_cap ? c->in_cap : 4096;
        while (nc < c->in_len + n)
            nc *= 2;
        char *b = realloc(c->in, nc);
        if (!b)
            return false;
        c->in = b;
        c->in_cap = nc;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    return true;
}

/* The longest line we buffer: the record plus room for an '@NAME ' prefix. */
static size_t max_line(struct ingest *in)
{
    return (size_t)in->conf->max_record_bytes + CONF_NAME_MAX + 16;
}

static void too_long(struct ingest *in, struct conn *c)
{
    uint64_t ln = ++c->lines;
    refuse(in, c, ln, "size", "line is longer than %zu bytes (max_record_bytes = %llu) and "
           "was not stored; skipping to its newline", max_line(in),
           (unsigned long long)in->conf->max_record_bytes);
    c->skipping = true;
    c->in_len = 0;
    if (c->in_cap > 65536) {   /* give back what the long line took */
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

/* Processes buf[0..n) just read from c. */
static void consume(struct ingest *in, struct conn *c, const char *buf, size_t n)
{
    const char *p = buf, *end = buf + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (c->skipping) {
            if (!nl)
                return;
            c->skipping = false;
            p = nl + 1;
            continue;
        }
        if (!nl) {
            if (c->in_len + (size_t)(end - p) > max_line(in))
                too_long(in, c);
            else if (!keep_partial(c, p, (size_t)(end - p)))
                too_long(in, c);
            return;
        }
        size_t len = (size_t)(nl - p);
        if (c->in_len) {
            if (c->in_len + len > max_line(in)) {
                too_long(in, c);
                c->skipping = false;   /* this newline ends it */
            } else if (keep_partial(c, p, len)) {
                handle_line(in, c, c->in, c->in_len);
                c->in_len = 0;
            } else {
                too_long(in, c);
                c->skipping = false;
            }
        } else if (len > max_line(in)) {
            too_long(in, c);
            c->skipping = false;
        } else {
            handle_line(in, c, p, len);
        }
        p = nl + 1;
    }
}

static void conn_eof(struct ingest *in, struct conn *c)
{
    c->eof = true;
    if (c->fwd) {
        size_t left = fwd_buffered(c->fwd);
        if (left) {
            in->fwd_refused[fwd_reason_index("truncated")]++;
            fwd_log(in, "pid %d: the connection ended in the middle of a message (%zu bytes "
                    "buffered): it was not stored", (int)c->pid, left);
        }
        fwd_stream_free(c->fwd);
        c->fwd = NULL;
        update_ack(in, c);
        mark_dirty(in, c);
        return;
    }
    if (c->in_len || c->skipping) {
        if (!c->skipping) {
            uint64_t ln = ++c->lines;
            refuse(in, c, ln, "truncated", "the connection ended in the middle of this line "
                   "(no newline): it was not stored");
        }
        c->in_len = 0;
        c->skipping = false;
    }
    free(c->in);
    c->in = NULL;
    c->in_cap = 0;
    update_ack(in, c);
    mark_dirty(in, c);
}

static void conn_read(struct ingest *in, struct conn *c)
{
    ssize_t n = recv(c->fd, in->scratch, READ_CHUNK, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_close(in, c);
        return;
    }
    if (n == 0) {
        conn_eof(in, c);
        return;
    }
    if (c->fwd) {
        fwd_consume(in, c, in->scratch, (size_t)n);
        update_ack(in, c);
        return;
    }
    consume(in, c, in->scratch, (size_t)n);
    if (c->in_len == 0 && c->in_cap > 65536) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
    update_ack(in, c);
}

/* ---- accepting ---- */

/* The peer's uid/gid, and the supplementary groups its process really has
 * (SO_PEERGROUPS: containers and systemd's SupplementaryGroups= grant groups
 * that /etc/group does not list), checked against the config. */
static bool peer_allowed(const struct conf *c, int fd, uid_t uid, gid_t gid)
{
    gid_t groups[64];
    socklen_t len = sizeof groups;
    size_t n = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
        n = len / sizeof groups[0];
    return conf_peer_allowed_groups(c, uid, gid, groups, n);
}

/* kind: T_LISTEN (the line protocol), T_FWD_UNIX or T_FWD_TCP (forward) */
static void accept_conns(struct ingest *in, int kind)
{
    int lfd = kind == T_LISTEN ? in->lfd : kind == T_FWD_UNIX ? in->ffd : in->ftcp;
    bool fwd = kind != T_LISTEN;
    for (int k = 0; k < 64; k++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                log_warn("accept on %s: %s", kind == T_LISTEN ? in->conf->socket_path :
                         kind == T_FWD_UNIX ? in->conf->forward_socket : in->conf->forward_listen,
                         strerror(errno));
            return;
        }
        struct ucred cr = { .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
        socklen_t cl = sizeof cr;
        if (kind != T_FWD_TCP &&
            (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 ||
             !peer_allowed(in->conf, fd, cr.uid, cr.gid))) {
            if (fwd) {   /* forward has no error channel: log and close */
                log_warn("refused a forward producer: uid %u gid %u pid %d is not allowed (add "
                         "it to [ingest] allowed_uids or allowed_gids)", (unsigned)cr.uid,
                         (unsigned)cr.gid, (int)cr.pid);
                in->denied_conns++;
                close(fd);
                continue;
            }
            char msg[256];
            int m = snprintf(msg, sizeof msg, "err 0 denied uid %u gid %u may not send to "
                             "relayd: add it to [ingest] allowed_uids or allowed_gids\n",
                             (unsigned)cr.uid, (unsigned)cr.gid);
            ssize_t w = send(fd, msg, (size_t)m, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
            log_warn("refused a producer: uid %u gid %u pid %d is not allowed",
                     (unsigned)cr.uid, (unsigned)cr.gid, (int)cr.pid);
            in->denied_conns++;
            close(fd);
            continue;
        }
        if (in->n_free == 0 && fwd) {
            fwd_log(in, "too many connections (max_connections): closing a new one");
            close(fd);
            continue;
        }
        if (in->n_free == 0) {
            static const char busy[] = "err 0 busy too many connections (max_connections); "
                                       "retry later\n";
            ssize_t w = send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
            close(fd);
            continue;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->slot = in->free_slots[--in->n_free];
        c->gen = in->gens[c->slot];
        c->uid = cr.uid;
        c->pid = cr.pid;
        c->tail_ok = NO_OK;
        c->tcp = kind == T_FWD_TCP;
        c->is_fwd = fwd;
        if (fwd && !(c->fwd = fwd_stream_new())) {
            close(fd);
            free(c);
            continue;
        }
        if (fwd)
            in->fwd_conns++;
        in->conns[c->slot] = c;
        in->n_conns++;
        in->accepted_conns++;
        set_events(in, c);
    }
}

/* ---- committed batches ---- */

static void finish_batches(struct ingest *in, struct batch *list)
{
    while (list) {
        struct batch *b = list;
        list = b->next;
        for (size_t i = 0; i < b->n; i++) {
            const struct batch_rec *r = &b->recs[i];
            struct conn *c = in->conns[r->conn];
            if (b->status == SPOOL_OK)
                in->stored_records++;
            if (!c || c->gen != r->gen)
                continue;     /* the producer left; its records are stored all the same */
            c->inflight--;
            if (b->status == SPOOL_OK) {
                c->durable_line = r->line;
            } else if (b->status == SPOOL_FULL) {
                refuse(in, c, r->line, "full", "spool is full: %s, for longer than "
                       "full_wait; nothing was stored: retry later", in->full_why);
            } else {
                refuse(in, c, r->line, "shutdown", "relayd is stopping; this record was "
                       "not stored: resend it");
            }
            mark_dirty(in, c);
        }
        in->pending_bytes -= b->len;
        /* keep one or two batches for reuse */
        if (!in->spare || !in->spare->next) {
            batch_reset(b);
            b->next = in->spare;
            in->spare = b;
        } else {
            batch_free(b);
        }
    }
    for (struct conn *c = in->dirty; c; c = c->next_dirty)
        if (c->fd >= 0)
            update_ack(in, c);
}

static void on_committer(struct ingest *in)
{
    committer_drain_fd(in->committer);
    finish_batches(in, committer_take_done(in->committer));
    bool full = committer_full(in->committer);
    if (full && in->state == ST_ACCEPTING) {
        in->state = ST_BACKPRESSURE;
        in->full_since_us = util_mono_us();
        committer_full_why(in->committer, in->full_why, sizeof in->full_why);
        log_warn("spool is full: %s: holding producers for up to %llu ms, then refusing "
                 "records until space is freed", in->full_why,
                 (unsigned long long)in->conf->full_wait_ms);
    } else if (!full && in->state != ST_ACCEPTING) {
        log_info("spool has room again: accepting records");
        in->state = ST_ACCEPTING;
    }
    update_reading(in);
}

/* ---- status ---- */

static double rate(const uint64_t *v, const uint64_t *t, unsigned i)
{
    unsigned newest = (i + RATE_SLOTS - 1) % RATE_SLOTS, oldest = i % RATE_SLOTS;
    if (t[oldest] == 0 || t[newest] <= t[oldest])
        return 0;
    return (double)(v[newest] - v[oldest]) * 1e6 / (double)(t[newest] - t[oldest]);
}

static char *status_json(struct ingest *in)
{
    struct spool_stats *st = malloc(sizeof *st);
    if (!st)
        return NULL;
    spool_stats(in->spool, st);
    struct committer_stats cs;
    committer_get_stats(in->committer, &cs);
    uint64_t now = util_now_ms();

    json_t *root = json_object();
    json_object_set_new(root, "pid", json_integer(getpid()));
    json_object_set_new(root, "uptime_s", json_integer((json_int_t)((now - in->start_ms) / 1000)));
    json_object_set_new(root, "state", json_string(state_names[in->state]));
    json_t *ing = json_object();
    json_object_set_new(ing, "connections", json_integer((json_int_t)in->n_conns));
    json_object_set_new(ing, "records", json_integer((json_int_t)in->records));
    json_object_set_new(ing, "bytes", json_integer((json_int_t)in->bytes));
    json_object_set_new(ing, "stored", json_integer((json_int_t)in->stored_records));
    json_object_set_new(ing, "denied_connections", json_integer((json_int_t)in->denied_conns));
    json_object_set_new(ing, "records_per_s", json_real(rate(in->rate_rec, in->rate_t, in->rate_i)));
    json_object_set_new(ing, "bytes_per_s", json_real(rate(in->rate_bytes, in->rate_t, in->rate_i)));
    json_t *ref = json_object();
    for (size_t i = 0; i < N_REASONS; i++)
        json_object_set_new(ref, reasons[i], json_integer((json_int_t)in->lines_refused[i]));
    json_object_set_new(ing, "refused", ref);
    if (in->ffd >= 0 || in->ftcp >= 0) {
        json_t *fw = json_object();
        json_object_set_new(fw, "socket", in->conf->forward_socket ?
                            json_string(in->conf->forward_socket) : json_null());
        json_object_set_new(fw, "listen", in->conf->forward_listen ?
                            json_string(in->conf->forward_listen) : json_null());
        json_object_set_new(fw, "connections", json_integer((json_int_t)in->fwd_conns));
        json_object_set_new(fw, "messages", json_integer((json_int_t)in->fwd_messages));
        json_object_set_new(fw, "records", json_integer((json_int_t)in->fwd_records));
        json_object_set_new(fw, "acks", json_integer((json_int_t)in->fwd_acks));
        json_object_set_new(fw, "protocol_errors", json_integer((json_int_t)in->fwd_errors));
        json_t *fr = json_object();
        for (size_t i = 0; i < N_FWD_REASONS; i++)
            json_object_set_new(fr, fwd_reasons[i], json_integer((json_int_t)in->fwd_refused[i]));
        json_object_set_new(fw, "refused", fr);
        json_object_set_new(ing, "forward", fw);
    }
    json_object_set_new(root, "ingest", ing);

    json_t *cm = json_object();
    json_object_set_new(cm, "commits", json_integer((json_int_t)cs.commits));
    json_object_set_new(cm, "records", json_integer((json_int_t)cs.records));
    json_object_set_new(cm, "avg_records", json_real(cs.commits ? (double)cs.records / (double)cs.commits : 0));
    json_object_set_new(cm, "avg_ms", json_real(cs.commits ? (double)cs.total_commit_us / (double)cs.commits / 1000 : 0));
    json_object_set_new(cm, "max_ms", json_real((double)cs.max_commit_us / 1000));
    json_object_set_new(cm, "full_events", json_integer((json_int_t)cs.full_events));
    json_object_set_new(root, "commit", cm);

    status_add_spool(root, st, in->conf->spool_dir, now);
    json_t *sp = json_object_get(root, "spool"), *ds = json_object_get(root, "destinations");
    json_object_set_new(sp, "durability", json_string(conf_durability_name(in->conf->durability)));
    size_t i;
    json_t *o;
    json_array_foreach(ds, i, o) {
        const char *name = json_string_value(json_object_get(o, "name"));
        json_object_set_new(o, "configured",
                            json_boolean(lookup_dest(in, name, strlen(name)) != 0));
    }
    if (in->hooks.status)
        in->hooks.status(in->hooks.arg, root);
    free(st);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

/* One request per connection: "status\n" -> JSON, "ping\n" -> "pong". The
 * request must arrive promptly; the control socket is for local tools. */
static void control_accept(struct ingest *in)
{
    int fd = accept4(in->cfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 ||
        !peer_allowed(in->conf, fd, cr.uid, cr.gid)) {
        static const char d[] = "{\"error\":\"denied: add this uid to [ingest] allowed_uids\"}\n";
        ssize_t w = send(fd, d, sizeof d - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
        close(fd);
        return;
    }
    struct timeval tv = { 0, 200000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[64];
    ssize_t n = recv(fd, req, sizeof req - 1, 0);
    if (n <= 0) {
        close(fd);
        return;
    }
    req[n] = 0;
    char *resp = NULL;
    if (strncmp(req, "status", 6) == 0)
        resp = status_json(in);
    else if (strncmp(req, "ping", 4) == 0)
        resp = strdup("{\"pong\":true}");
    else
        resp = strdup("{\"error\":\"unknown request: expected status or ping\"}");
    if (resp) {
        send(fd, resp, strlen(resp), MSG_NOSIGNAL);
        send(fd, "\n", 1, MSG_NOSIGNAL);
        free(resp);
    }
    close(fd);
}

/* ---- ticks, signals, reload ---- */

static void on_tick(struct ingest *in)
{
    uint64_t exp;
    ssize_t r = read(in->tfd, &exp, sizeof exp);
    (void)r;
    if (in->watchdog_us) {
        /* the loop is turning: tell systemd (every half watchdog period) */
        uint64_t now = util_mono_us();
        if (now - in->last_ping_us >= in->watchdog_us / 2) {
            sd_notify(0, "WATCHDOG=1");
            in->last_ping_us = now;
        }
    }
    if (++in->ticks % (1000 / TICK_MS) == 0) {
        in->rate_t[in->rate_i] = util_mono_us();
        in->rate_rec[in->rate_i] = in->records;
        in->rate_bytes[in->rate_i] = in->bytes;
        in->rate_i = (in->rate_i + 1) % RATE_SLOTS;
    }
    if (in->state == ST_BACKPRESSURE &&
        util_mono_us() - in->full_since_us >= in->conf->full_wait_ms * 1000) {
        log_warn("spool still full after %llu ms: refusing records with 'full' until space "
                 "is freed", (unsigned long long)in->conf->full_wait_ms);
        in->state = ST_REFUSING;
        submit_batch(in);     /* so that it is refused too, in order */
        committer_reject(in->committer);
        update_reading(in);
    }
}

static void reload(struct ingest *in)
{
    if (!in->conf->path)
        return;
    struct conf *nc = malloc(sizeof *nc);
    char err[512];
    if (!nc)
        return;
    conf_defaults(nc);
    if (conf_load(in->conf->path, nc, err, sizeof err) != 0) {
        log_error("reload failed, keeping the running config: %s", err);
        free(nc);
        return;
    }
    struct dest_map *m;
    size_t n;
    uint32_t def;
    if (map_dests(in, nc, &m, &n, &def, err, sizeof err) != 0) {
        log_error("reload failed, keeping the running config: %s", err);
        conf_free(nc);
        free(nc);
        return;
    }
    const struct conf *oc = in->conf;
    bool fwd_changed = !oc->forward_socket != !nc->forward_socket ||
                       (oc->forward_socket && strcmp(oc->forward_socket, nc->forward_socket)) ||
                       !oc->forward_listen != !nc->forward_listen ||
                       (oc->forward_listen && strcmp(oc->forward_listen, nc->forward_listen));
    if (fwd_changed)
        log_warn("reload: [forward] socket and listen changes take effect at the next restart");
    if (strcmp(oc->spool_dir, nc->spool_dir) || strcmp(oc->socket_path, nc->socket_path) ||
        oc->max_spool_bytes != nc->max_spool_bytes || oc->durability != nc->durability ||
        strcmp(oc->control_socket, nc->control_socket) || oc->max_connections != nc->max_connections)
        log_warn("reload: spool, socket, max_connections and durability changes take effect "
                 "at the next restart");
    /* keep what cannot change at run time */
    nc->max_connections = oc->max_connections;
    nc->max_spool_bytes = oc->max_spool_bytes;
    nc->durability = oc->durability;
    free(in->dests);
    in->dests = m;
    in->n_dests = n;
    in->default_dest = def;
    /* table ids of live connections stay valid: ids are per spool, not per config */
    conf_free(in->conf);
    free(in->conf);
    in->conf = nc;
    in->limits.max_record_bytes = nc->max_record_bytes;
    in->limits.max_depth = (unsigned)nc->max_depth;
    log_set_level((enum log_level)nc->log_level);
    log_info("reloaded %s: %zu destination(s)", nc->path, n);
    if (in->hooks.reload)
        in->hooks.reload(in->hooks.arg, nc->path);
    update_reading(in);
}

static void on_signal(struct ingest *in)
{
    struct signalfd_siginfo si;
    while (read(in->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            log_info("SIGHUP: reloading %s", in->conf->path ? in->conf->path : "(no file)");
            sd_notify(0, "RELOADING=1");
            reload(in);
            sd_notify(0, "READY=1");
        } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            if (!in->stopping) {
                log_info("%s: finishing the commit in progress and stopping",
                         si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
                sd_notify(0, "STOPPING=1");
            }
            in->stopping = true;
        }
    }
}

/* ---- sockets ---- */

/* Creates a listening Unix socket at path with mode and owner. A stale socket
 * file (nobody listening) is replaced; a live one means another relayd. */
static int listen_unix(const char *path, mode_t mode, uid_t uid, gid_t gid, int backlog,
                       char *err, size_t errlen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path too long (max %zu bytes): %s",
                 sizeof sa.sun_path - 1, path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    char dir[sizeof sa.sun_path];
    strcpy(dir, path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (util_mkdir_p(dir, 0755) != 0) {
            snprintf(err, errlen, "cannot create directory %s for %s: %s", dir, path,
                     strerror(errno));
            return -1;
        }
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(probe);
        snprintf(err, errlen, "%s is in use: another relayd is running (stop it, or set a "
                 "different socket)", path);
        return -1;
    }
    if (probe >= 0)
        close(probe);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    mode_t old = umask(0177);   /* never visible with looser permissions */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc != 0 || chmod(path, mode) != 0 ||
        ((uid != (uid_t)-1 || gid != (gid_t)-1) && chown(path, uid, gid) != 0) ||
        listen(fd, backlog) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

/* Listens on a loopback HOST:PORT (checked by conf_validate). */
static int listen_tcp(const char *addr, char *err, size_t errlen)
{
    char host[64], port[16];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host || strlen(colon + 1) >= sizeof port) {
        snprintf(err, errlen, "[forward] listen: cannot parse '%s'", addr);
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE }, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "[forward] listen: %s: %s", addr, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "[forward] listen: cannot listen on %s: %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int ep_add(struct ingest *in, int fd, uint64_t tag)
{
    struct epoll_event e = { .events = EPOLLIN, .data.u64 = tag };
    return epoll_ctl(in->epfd, EPOLL_CTL_ADD, fd, &e);
}

int ingest_create(struct conf *conf, struct spool *s, struct ingest **out,
                  char *err, size_t errlen)
{
    return ingest_create_hooked(conf, s, NULL, out, err, errlen);
}

int ingest_create_hooked(struct conf *conf, struct spool *s, const struct ingest_hooks *h,
                         struct ingest **out, char *err, size_t errlen)
{
    struct ingest *in = calloc(1, sizeof *in);
    if (!in) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (h)
        in->hooks = *h;
    in->conf = conf;
    in->spool = s;
    in->epfd = in->lfd = in->cfd = in->sfd = in->tfd = in->ffd = in->ftcp = -1;
    in->limits.max_record_bytes = conf->max_record_bytes;
    in->limits.max_depth = (unsigned)conf->max_depth;
    in->start_ms = util_now_ms();
    in->n_slots = conf->max_connections;
    in->conns = calloc(in->n_slots, sizeof *in->conns);
    in->gens = calloc(in->n_slots, sizeof *in->gens);
    in->free_slots = calloc(in->n_slots, sizeof *in->free_slots);
    in->scratch = malloc(READ_CHUNK);
    if (!in->conns || !in->gens || !in->free_slots || !in->scratch) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < in->n_slots; i++)
        in->free_slots[i] = (uint32_t)(in->n_slots - 1 - i);
    in->n_free = in->n_slots;

    if (map_dests(in, conf, &in->dests, &in->n_dests, &in->default_dest, err, errlen) != 0)
        goto fail;

    in->lfd = listen_unix(conf->socket_path, conf->socket_mode, conf->socket_uid,
                          conf->socket_gid, 1024, err, errlen);
    if (in->lfd < 0)
        goto fail;
    in->cfd = listen_unix(conf->control_socket, conf->control_socket_mode, conf->socket_uid,
                          conf->socket_gid, 64, err, errlen);
    if (in->cfd < 0)
        goto fail;
    if (conf->forward_socket) {
        in->ffd = listen_unix(conf->forward_socket, conf->forward_socket_mode, conf->socket_uid,
                              conf->socket_gid, 1024, err, errlen);
        if (in->ffd < 0)
            goto fail;
    }
    if (conf->forward_listen) {
        in->ftcp = listen_tcp(conf->forward_listen, err, errlen);
        if (in->ftcp < 0)
            goto fail;
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    in->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    in->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    in->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (in->sfd < 0 || in->tfd < 0 || in->epfd < 0) {
        snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
        goto fail;
    }
    struct itimerspec its = { { 0, TICK_MS * 1000000L }, { 0, TICK_MS * 1000000L } };
    timerfd_settime(in->tfd, 0, &its, NULL);

    struct committer_opts co = {
        .durability = conf->durability == DURABILITY_FSYNC ? SPOOL_SYNC :
                      conf->durability == DURABILITY_OS ? SPOOL_NOSYNC_PERIODIC : SPOOL_NOSYNC,
        .sync_interval_ms = conf->sync_interval_ms,
        .on_commit = in->hooks.on_commit,
        .on_commit_arg = in->hooks.arg,
    };
    if (committer_start(s, &co, &in->committer) != 0) {
        snprintf(err, errlen, "cannot start the committer thread: %s", strerror(errno));
        goto fail;
    }
    if (ep_add(in, in->lfd, TAG(T_LISTEN, 0)) || ep_add(in, in->cfd, TAG(T_CONTROL, 0)) ||
        ep_add(in, in->sfd, TAG(T_SIGNAL, 0)) || ep_add(in, in->tfd, TAG(T_TIMER, 0)) ||
        ep_add(in, committer_fd(in->committer), TAG(T_COMMITTER, 0)) ||
        (in->ffd >= 0 && ep_add(in, in->ffd, TAG(T_FWD_UNIX, 0))) ||
        (in->ftcp >= 0 && ep_add(in, in->ftcp, TAG(T_FWD_TCP, 0)))) {
        snprintf(err, errlen, "epoll: %s", strerror(errno));
        goto fail;
    }
    in->reading = true;
    *out = in;
    return 0;
fail:
    ingest_destroy(in);
    return -1;
}

/* Stops: no more reading; what was read is committed and acknowledged. */
static void shutdown_ingest(struct ingest *in)
{
    set_reading(in, false);
    epoll_ctl(in->epfd, EPOLL_CTL_DEL, in->lfd, NULL);
    if (in->ffd >= 0)
        epoll_ctl(in->epfd, EPOLL_CTL_DEL, in->ffd, NULL);
    if (in->ftcp >= 0)
        epoll_ctl(in->epfd, EPOLL_CTL_DEL, in->ftcp, NULL);
    submit_batch(in);
    struct batch *left = NULL;
    committer_stop(in->committer, &left);
    in->committer = NULL;
    finish_batches(in, left);
    flush_dirty(in);
    for (size_t i = 0; i < in->n_slots; i++) {
        struct conn *c = in->conns[i];
        if (c) {
            /* a last best-effort push of the final acks, then close */
            int fl = fcntl(c->fd, F_GETFL);
            fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
            struct timeval tv = { 0, 200000 };
            setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            if (c->out_len > c->out_off)
                send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            conn_close(in, c);
        }
    }
    flush_dirty(in);
}

int ingest_run(struct ingest *in)
{
    struct epoll_event evs[256];
    log_info("ready: accepting records on %s (control %s), spool %s, durability %s",
             in->conf->socket_path, in->conf->control_socket, in->conf->spool_dir,
             conf_durability_name(in->conf->durability));
    if (in->ffd >= 0 || in->ftcp >= 0)
        log_info("ready: Fluent forward input on %s%s%s", in->conf->forward_socket ?
                 in->conf->forward_socket : "", in->ffd >= 0 && in->ftcp >= 0 ? " and " : "",
                 in->conf->forward_listen ? in->conf->forward_listen : "");
    /* systemd (Type=notify): ready now; the watchdog, if set, is pinged from the loop */
    sd_notifyf(0, "READY=1\nSTATUS=accepting records on %s", in->conf->socket_path);
    uint64_t wd = 0;
    if (sd_watchdog_enabled(0, &wd) > 0)
        in->watchdog_us = wd;
    while (!in->stopping) {
        int n = epoll_wait(in->epfd, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_error("epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            switch ((enum tag)(tag >> 32)) {
            case T_LISTEN:    accept_conns(in, T_LISTEN); break;
            case T_FWD_UNIX:  accept_conns(in, T_FWD_UNIX); break;
            case T_FWD_TCP:   accept_conns(in, T_FWD_TCP); break;
            case T_CONTROL:   control_accept(in); break;
            case T_SIGNAL:    on_signal(in); break;
            case T_TIMER:     on_tick(in); break;
            case T_COMMITTER: on_committer(in); break;
            case T_CONN: {
                struct conn *c = in->conns[(uint32_t)tag];
                if (!c)
                    break;
                if (evs[i].events & EPOLLOUT) {
                    if (!conn_flush(in, c))
                        break;
                }
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    if (c->eof || !in->reading) {
                        if (evs[i].events & EPOLLERR)
                            conn_close(in, c);
                        break;
                    }
                    conn_read(in, c);
                }
                break;
            }
            }
        }
        if (in->cur && in->cur->n) {
            submit_batch(in);
        }
        update_reading(in);
        flush_dirty(in);
    }
    shutdown_ingest(in);
    log_info("stopped");
    return 0;
}

void ingest_destroy(struct ingest *in)
{
    if (!in)
        return;
    if (in->committer)
        committer_stop(in->committer, NULL);
    for (size_t i = 0; in->conns && i < in->n_slots; i++) {
        struct conn *c = in->conns[i];
        if (c) {
            close(c->fd);
            conn_free(c);
        }
    }
    if (in->lfd >= 0) {
        close(in->lfd);
        unlink(in->conf->socket_path);
    }
    if (in->cfd >= 0) {
        close(in->cfd);
        unlink(in->conf->control_socket);
    }
    if (in->ffd >= 0) {
        close(in->ffd);
        unlink(in->conf->forward_socket);
    }
    if (in->ftcp >= 0)
        close(in->ftcp);
    if (in->sfd >= 0)
        close(in->sfd);
    if (in->tfd >= 0)
        close(in->tfd);
    if (in->epfd >= 0)
        close(in->epfd);
    batch_free(in->cur);
    while (in->spare) {
        struct batch *b = in->spare;
        in->spare = b->next;
        batch_free(b);
    }
    free(in->dests);
    free(in->conns);
    free(in->gens);
    free(in->free_slots);
    free(in->scratch);
    conf_free(in->conf);
    free(in->conf);
    free(in);
}
