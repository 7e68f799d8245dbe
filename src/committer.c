/*
 * committer.c -- the group-commit writer thread. See committer.h.
 */
#include "committer.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define FULL_RETRY_MS    100
#define PROBE_MAX        (256u << 10)
#define READER_CHECK_MS  60000
/* Keep the resident set small (spool_release_pages): every second, or after
 * this many row bytes were committed, whichever comes first. */
#define RELEASE_PAGES_MS    1000
#define RELEASE_PAGES_BYTES (4u << 20)

struct committer {
    struct spool *spool;
    struct committer_opts opts;
    pthread_t thread;
    pthread_t syncer;            /* SPOOL_NOSYNC_PERIODIC: flushes off the commit path */
    bool has_syncer;
    int syncer_stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct batch *pending, **pending_tail;   /* submitted, not yet taken */
    struct batch *done, **done_tail;         /* committed or refused */
    bool stop, reject, full;
    char full_why[256];          /* why the spool is full, for messages */
    uint64_t probe;              /* footprint that must fit to leave the full state */
    int efd;
    struct committer_stats stats;
};

/* ---- batches ---- */

int batch_add(struct batch *b, uint32_t conn, uint32_t gen, uint64_t line, uint32_t dest,
              const char *row, size_t len)
{
    if (b->n == b->ncap) {
        size_t nc = b->ncap ? b->ncap * 2 : 256;
        struct batch_rec *r = realloc(b->recs, nc * sizeof *r);
        if (!r)
            return -1;
        b->recs = r;
        b->ncap = nc;
    }
    if (b->len + len > b->cap) {
        size_t nc = b->cap ? b->cap : 64 << 10;
        while (nc < b->len + len)
            nc *= 2;
        char *d = realloc(b->data, nc);
        if (!d)
            return -1;
        b->data = d;
        b->cap = nc;
    }
    memcpy(b->data + b->len, row, len);
    b->recs[b->n++] = (struct batch_rec){ conn, gen, line, dest, (uint32_t)len, b->len };
    b->len += len;
    return 0;
}

void batch_reset(struct batch *b)
{
    /* keep the memory for reuse unless a burst made it large */
    if (b->cap > (4u << 20)) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
    if (b->ncap > 65536) {
        free(b->recs);
        b->recs = NULL;
        b->ncap = 0;
    }
    b->len = 0;
    b->n = 0;
    b->next = NULL;
    b->status = SPOOL_OK;
}

void batch_free(struct batch *b)
{
    if (!b)
        return;
    free(b->data);
    free(b->recs);
    free(b);
}

/* ---- the thread ---- */

static void notify(struct committer *c)
{
    uint64_t one = 1;
    ssize_t w = write(c->efd, &one, sizeof one);
    (void)w;   /* EAGAIN means a wakeup is already pending */
}

/* Appends a list to done (lock held). */
static void push_done(struct committer *c, struct batch *list, int status)
{
    for (struct batch *b = list; b; b = b->next)
        b->status = status;
    if (!list)
        return;
    *c->done_tail = list;
    struct batch *last = list;
    while (last->next)
        last = last->next;
    c->done_tail = &last->next;
}

/* Puts a taken list back in front of pending (lock held). */
static void unshift_pending(struct committer *c, struct batch *list)
{
    if (!list)
        return;
    struct batch *last = list;
    while (last->next)
        last = last->next;
    last->next = c->pending;
    if (!c->pending)
        c->pending_tail = &last->next;
    c->pending = list;
}

static uint64_t list_footprint(const struct batch *list)
{
    uint64_t footprint = 0;
    for (const struct batch *b = list; b; b = b->next)
        for (size_t i = 0; i < b->n; i++)
            footprint += spool_footprint(b->recs[i].len);
    return footprint;
}

static int commit_list(struct committer *c, struct batch *list)
{
    uint64_t bytes = 0, n = 0;
    for (struct batch *b = list; b; b = b->next) {
        bytes += b->len;
        n += b->n;
    }
    if (!spool_has_room(c->spool, list_footprint(list)))
        return SPOOL_FULL;
    struct spool_txn *t = NULL;
    int rc = spool_txn_begin(c->spool, &t);
    if (rc)
        return rc;
    uint64_t now = util_now_ms();
    for (struct batch *b = list; b; b = b->next) {
        for (size_t i = 0; i < b->n; i++) {
            const struct batch_rec *r = &b->recs[i];
            rc = spool_txn_append(t, r->dest, b->data + r->off, r->len, now, NULL);
            if (rc) {
                spool_txn_abort(t);
                return rc;
            }
        }
    }
    rc = spool_txn_commit(t);
    if (rc == SPOOL_OK) {
        pthread_mutex_lock(&c->lock);
        c->stats.records += n;
        c->stats.bytes += bytes;
        pthread_mutex_unlock(&c->lock);
    }
    return rc;
}

static void fatal_io(int rc)
{
    log_error("spool commit failed: %s (%s); nothing in this commit was acknowledged. "
              "Stopping: check the disk and restart relayd, which recovers from the last "
              "durable commit", spool_strerror(rc), spool_last_error());
    _exit(RELAY_EXIT_IO);
}

static void timed_wait(struct committer *c, uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&c->cond, &c->lock, &ts);
}

static void set_full(struct committer *c, bool full)
{
    if (c->full != full) {
        c->full = full;
        if (full)
            c->stats.full_events++;
        notify(c);
    }
}

static void *committer_main(void *arg)
{
    struct committer *c = arg;
    uint64_t last_rcheck = util_mono_us(), last_release = last_rcheck;
    uint64_t released_at_bytes = 0;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        uint64_t now = util_mono_us();
        if (now - last_release >= (uint64_t)RELEASE_PAGES_MS * 1000 ||
            c->stats.bytes - released_at_bytes >= RELEASE_PAGES_BYTES) {
            spool_release_pages(c->spool);
            last_release = now;
            released_at_bytes = c->stats.bytes;
        }
        if (now - last_rcheck >= (uint64_t)READER_CHECK_MS * 1000) {
            int cleared = 0;
            spool_reader_check(c->spool, &cleared);
            if (cleared)
                log_warn("cleared %d stale LMDB reader slot(s) left by dead processes", cleared);
            last_rcheck = now;
        }
        if (c->reject) {
            c->reject = false;
            struct batch *list = c->pending;
            c->pending = NULL;
            c->pending_tail = &c->pending;
            push_done(c, list, SPOOL_FULL);
            notify(c);
            continue;
        }
        if (!c->pending) {
            if (c->stop)
                break;
            if (c->full) {
                /* refusing: look for room now and then */
                pthread_mutex_unlock(&c->lock);
                bool room = spool_has_room(c->spool, c->probe);
                pthread_mutex_lock(&c->lock);
                if (room) {
                    set_full(c, false);
                    continue;
                }
                timed_wait(c, FULL_RETRY_MS);
            } else {
                timed_wait(c, READER_CHECK_MS);
            }
            continue;
        }
        struct batch *list = c->pending;
        c->pending = NULL;
        c->pending_tail = &c->pending;
        pthread_mutex_unlock(&c->lock);

        uint64_t t0 = util_mono_us();
        int rc = commit_list(c, list);
        uint64_t dt = util_mono_us() - t0;

        pthread_mutex_lock(&c->lock);
        if (rc == SPOOL_OK) {
            c->stats.commits++;
            c->stats.last_commit_us = dt;
            c->stats.total_commit_us += dt;
            if (dt > c->stats.max_commit_us)
                c->stats.max_commit_us = dt;
            set_full(c, false);
            push_done(c, list, SPOOL_OK);
            notify(c);
            if (c->opts.on_commit)
                c->opts.on_commit(c->opts.on_commit_arg);
        } else if (rc == SPOOL_FULL) {
            snprintf(c->full_why, sizeof c->full_why, "%s", spool_last_error());
            /* after a reject, "room again" means room for what did not fit
             * (up to a cap: a huge group must not keep ingest refusing) */
            c->probe = list_footprint(list);
            if (c->probe > PROBE_MAX)
                c->probe = PROBE_MAX;
            unshift_pending(c, list);
            set_full(c, true);
            if (c->stop)
                break;   /* cannot finish: leave them unacknowledged */
            if (!c->reject)
                timed_wait(c, FULL_RETRY_MS);
        } else if (rc == SPOOL_NOMEM) {
            unshift_pending(c, list);   /* transient: try again shortly */
            timed_wait(c, FULL_RETRY_MS);
        } else if (rc == SPOOL_INVAL) {
            log_error("commit refused: %s; the records of this commit were not stored",
                      spool_last_error());
            push_done(c, list, -1);
            notify(c);
        } else {
            pthread_mutex_unlock(&c->lock);
            fatal_io(rc);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* durability = os: commits are not synced; this thread flushes the spool
 * every sync_interval, so that a long flush never holds a commit (or an ack)
 * up. An I/O error here is fatal like one in a commit. */
static void *syncer_main(void *arg)
{
    struct committer *c = arg;
    uint64_t last = util_mono_us();
    while (!__atomic_load_n(&c->syncer_stop, __ATOMIC_ACQUIRE)) {
        usleep(20000);
        uint64_t now = util_mono_us();
        if (now - last < c->opts.sync_interval_ms * 1000)
            continue;
        int rc = spool_sync(c->spool);
        if (rc)
            fatal_io(rc);
        last = now;
    }
    return NULL;
}

int committer_start(struct spool *s, const struct committer_opts *o, struct committer **out)
{
    struct committer *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    c->spool = s;
    c->opts = *o;
    c->pending_tail = &c->pending;
    c->done_tail = &c->done;
    c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->efd < 0) {
        free(c);
        return -1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&c->lock, NULL);
    if (pthread_create(&c->thread, NULL, committer_main, c) != 0) {
        close(c->efd);
        free(c);
        return -1;
    }
    pthread_setname_np(c->thread, "relayd-commit");   /* for top -H */
    if (c->opts.durability == SPOOL_NOSYNC_PERIODIC &&
        pthread_create(&c->syncer, NULL, syncer_main, c) == 0) {
        pthread_setname_np(c->syncer, "relayd-sync");
        c->has_syncer = true;
    }
    *out = c;
    return 0;
}

void committer_submit(struct committer *c, struct batch *b)
{
    b->next = NULL;
    b->submit_us = util_mono_us();
    pthread_mutex_lock(&c->lock);
    *c->pending_tail = b;
    c->pending_tail = &b->next;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

struct batch *committer_take_done(struct committer *c)
{
    pthread_mutex_lock(&c->lock);
    struct batch *list = c->done;
    c->done = NULL;
    c->done_tail = &c->done;
    pthread_mutex_unlock(&c->lock);
    return list;
}

int committer_fd(struct committer *c) { return c->efd; }

void committer_drain_fd(struct committer *c)
{
    uint64_t v;
    ssize_t r = read(c->efd, &v, sizeof v);
    (void)r;
}

bool committer_full(struct committer *c)
{
    pthread_mutex_lock(&c->lock);
    bool f = c->full;
    pthread_mutex_unlock(&c->lock);
    return f;
}

void committer_full_why(struct committer *c, char *buf, size_t len)
{
    pthread_mutex_lock(&c->lock);
    snprintf(buf, len, "%s", c->full_why[0] ? c->full_why : "no room in the spool");
    pthread_mutex_unlock(&c->lock);
}

void committer_reject(struct committer *c)
{
    pthread_mutex_lock(&c->lock);
    c->reject = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

void committer_get_stats(struct committer *c, struct committer_stats *st)
{
    pthread_mutex_lock(&c->lock);
    *st = c->stats;
    pthread_mutex_unlock(&c->lock);
}

void committer_stop(struct committer *c, struct batch **left)
{
    pthread_mutex_lock(&c->lock);
    c->stop = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    if (c->has_syncer) {
        __atomic_store_n(&c->syncer_stop, 1, __ATOMIC_RELEASE);
        pthread_join(c->syncer, NULL);
    }
    if (c->opts.durability == SPOOL_NOSYNC_PERIODIC)
        spool_sync(c->spool);
    /* done batches keep their status; what could not be committed comes
     * back with status -1: not stored, not acknowledged */
    for (struct batch *b = c->pending; b; b = b->next)
        b->status = -1;
    *c->done_tail = c->pending;
    struct batch *rest = c->done;
    if (left) {
        *left = rest;
    } else {
        for (struct batch *b = rest, *n; b; b = n) {
            n = b->next;
            batch_free(b);
        }
    }
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    close(c->efd);
    free(c);
}
