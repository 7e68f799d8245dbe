/*
 * recorder.c -- delivered rows recorded in the spool on a thread of their own.
 *
 * Jobs form a FIFO list under one mutex. The thread takes the whole list
 * (submitters start a new one), commits it as one transaction (removals first, then the meta puts in
 * order: a later put of the same key wins, as it would one job at a time),
 * and publishes the last ticket done; waiters sleep on a condition variable.
 *
 * Gathering: a commit costs an fsync and rewrites the pages it touches, so
 * the thread lets jobs gather for up to GATHER_MS, or until GATHER_ROWS rows
 * are queued, before it commits; someone waiting in recorder_wait, a cancel
 * or a stop ends the gathering at once. At full speed that is one commit per
 * several appends instead of one per append.
 */
#include "recorder.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"
#include "util.h"

#define RETRY_MS 200
#define GATHER_MS 10        /* defaults; recorder_set_gather changes them */
#define GATHER_ROWS 8192
#define LOG_EVERY_US (30ull * 1000000)

struct job {
    struct job *next;
    uint64_t ticket;
    size_t n, n_meta;
    uint64_t *seqs;
    struct recorder_meta *meta;   /* key and val point into the same block */
};

struct recorder {
    struct spool *sp;
    uint32_t dest;
    char name[128];
    void (*committed)(void *, uint64_t);
    void *arg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    struct job *head, **tail;
    size_t n_jobs;
    uint64_t rows_queued;         /* rows of the queued jobs */
    uint64_t first_us;            /* when the oldest queued job came */
    unsigned waiters;             /* threads in recorder_wait */
    uint64_t gather_us, gather_rows;
    uint64_t next_ticket, done_ticket;
    bool stop, cancelled;
    /* the thread's own */
    uint64_t *seqs;
    size_t cap;
};

static void job_free(struct job *j)
{
    if (!j)
        return;
    free(j->seqs);
    free(j->meta);
    free(j);
}

uint64_t recorder_submit(struct recorder *r, const uint64_t *seqs, size_t n,
                         const struct recorder_meta *meta, size_t n_meta)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return 0;
    j->seqs = malloc((n ? n : 1) * sizeof *j->seqs);
    size_t text = 0;
    for (size_t i = 0; i < n_meta; i++)
        text += strlen(meta[i].key) + 1 + meta[i].len;
    j->meta = n_meta ? malloc(n_meta * sizeof *j->meta + text) : NULL;
    if (!j->seqs || (n_meta && !j->meta)) {
        job_free(j);
        return 0;
    }
    memcpy(j->seqs, seqs, n * sizeof *seqs);
    j->n = n;
    char *p = (char *)(j->meta + n_meta);
    for (size_t i = 0; i < n_meta; i++) {
        size_t kl = strlen(meta[i].key) + 1;
        memcpy(p, meta[i].key, kl);
        j->meta[i].key = p;
        p += kl;
        memcpy(p, meta[i].val, meta[i].len);
        j->meta[i].val = p;
        j->meta[i].len = meta[i].len;
        p += meta[i].len;
    }
    j->n_meta = n_meta;
    pthread_mutex_lock(&r->mu);
    j->ticket = ++r->next_ticket;
    if (!r->head)
        r->first_us = util_mono_us();
    r->rows_queued += n;
    *r->tail = j;
    r->tail = &j->next;
    r->n_jobs++;
    uint64_t t = j->ticket;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->mu);
    return t;
}

void recorder_wait(struct recorder *r, uint64_t ticket)
{
    pthread_mutex_lock(&r->mu);
    if (r->done_ticket < ticket) {
        r->waiters++;
        pthread_cond_signal(&r->work);   /* no more gathering: someone waits */
        while (r->done_ticket < ticket)
            pthread_cond_wait(&r->done, &r->mu);
        r->waiters--;
    }
    pthread_mutex_unlock(&r->mu);
}

void recorder_cancel(struct recorder *r)
{
    pthread_mutex_lock(&r->mu);
    r->cancelled = true;
    pthread_cond_broadcast(&r->work);
    pthread_mutex_unlock(&r->mu);
}

void recorder_set_gather(struct recorder *r, unsigned ms, uint64_t rows)
{
    pthread_mutex_lock(&r->mu);
    r->gather_us = (uint64_t)ms * 1000;
    r->gather_rows = rows;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->mu);
}

size_t recorder_pending(struct recorder *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->n_jobs;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* One transaction for every job of the list. Returns a SPOOL_ code; *rows
 * gets how many rows it removed. */
static int commit(struct recorder *r, const struct job *list, uint64_t *rows)
{
    size_t n = 0;
    for (const struct job *j = list; j; j = j->next)
        n += j->n;
    if (n > r->cap) {
        uint64_t *ns = realloc(r->seqs, n * sizeof *ns);
        if (!ns)
            return SPOOL_NOMEM;
        r->seqs = ns;
        r->cap = n;
    }
    n = 0;
    for (const struct job *j = list; j; j = j->next) {
        memcpy(r->seqs + n, j->seqs, j->n * sizeof *j->seqs);
        n += j->n;
    }
    struct spool_txn *txn = NULL;
    int rc = spool_txn_begin(r->sp, &txn);
    if (rc == SPOOL_OK && n)
        rc = spool_txn_remove_run(txn, r->dest, r->seqs, n, NULL);
    for (const struct job *j = list; rc == SPOOL_OK && j; j = j->next)
        for (size_t i = 0; rc == SPOOL_OK && i < j->n_meta; i++)
            rc = spool_txn_put_meta(txn, j->meta[i].key, j->meta[i].val, j->meta[i].len);
    if (rc == SPOOL_OK)
        rc = spool_txn_commit(txn);
    else if (txn)
        spool_txn_abort(txn);
    *rows = n;   /* delivered: a row purged meanwhile was delivered all the same */
    return rc;
}

static void *run(void *arg)
{
    struct recorder *r = arg;
    uint64_t failing_since = 0, logged_us = 0;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->head && !r->stop)
            pthread_cond_wait(&r->work, &r->mu);
        if (!r->head)
            break;   /* stopping, nothing left */
        while (r->head && !r->stop && !r->cancelled && !r->waiters &&
               r->rows_queued < r->gather_rows) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t now = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
            uint64_t due = r->first_us + r->gather_us;
            if (now >= due)
                break;
            uint64_t ns = (uint64_t)ts.tv_nsec + (due - now) * 1000;   /* one clock read */
            ts.tv_sec += (time_t)(ns / 1000000000);
            ts.tv_nsec = (long)(ns % 1000000000);
            pthread_cond_timedwait(&r->work, &r->mu, &ts);
        }
        struct job *list = r->head;   /* taken whole: submitters append to a new list */
        r->head = NULL;
        r->tail = &r->head;
        r->rows_queued = 0;
        struct job *last = list;
        size_t jobs = 1;
        while (last->next) {
            last = last->next;
            jobs++;
        }
        pthread_mutex_unlock(&r->mu);

        uint64_t rows = 0;
        int rc = commit(r, list, &rows);
        if (rc == SPOOL_IO) {
            log_error("%s: recording delivered rows failed: %s; stopping (restart relayd: the "
                      "rows not recorded are resent)", r->name, spool_last_error());
            _exit(5);
        }
        bool drop = false;
        if (rc != SPOOL_OK) {
            uint64_t now = util_mono_us();
            if (!failing_since)
                failing_since = now;
            if (!logged_us || now - logged_us >= LOG_EVERY_US) {
                log_warn("%s: cannot record %llu delivered row(s) yet: %s; retrying every %d ms "
                         "(they stay queued meanwhile)", r->name, (unsigned long long)rows,
                         spool_strerror(rc), RETRY_MS);
                logged_us = now;
            }
            pthread_mutex_lock(&r->mu);
            drop = r->cancelled;
            if (!drop) {
                /* put it back in front of whatever joined meanwhile */
                last->next = r->head;
                if (!r->head)
                    r->tail = &last->next;
                r->head = list;
                r->rows_queued += rows;
                r->first_us = 0;   /* due at once after the retry pause */
                pthread_mutex_unlock(&r->mu);
                usleep(RETRY_MS * 1000);
                pthread_mutex_lock(&r->mu);
                continue;
            }
            pthread_mutex_unlock(&r->mu);
            log_warn("%s: stopping: %llu delivered row(s) not recorded stay queued and are "
                     "resent after a restart", r->name, (unsigned long long)rows);
            failing_since = logged_us = 0;
        } else {
            if (failing_since)
                log_info("%s: recording delivered rows works again", r->name);
            failing_since = logged_us = 0;
            if (r->committed && rows)
                r->committed(r->arg, rows);
        }
        pthread_mutex_lock(&r->mu);
        r->n_jobs -= jobs;
        r->done_ticket = last->ticket;
        pthread_cond_broadcast(&r->done);
        pthread_mutex_unlock(&r->mu);
        while (list) {
            struct job *next = list->next;
            job_free(list);
            list = next;
        }
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int recorder_create(struct spool *sp, uint32_t dest, const char *name,
                    void (*committed)(void *arg, uint64_t rows), void *arg,
                    struct recorder **out)
{
    struct recorder *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->sp = sp;
    r->dest = dest;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->committed = committed;
    r->arg = arg;
    r->tail = &r->head;
    r->gather_us = GATHER_MS * 1000ull;
    r->gather_rows = GATHER_ROWS;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);   /* the gathering deadline */
    pthread_cond_init(&r->work, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&r->done, NULL);
    if (pthread_create(&r->thread, NULL, run, r) != 0) {
        pthread_cond_destroy(&r->done);
        pthread_cond_destroy(&r->work);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return -1;
    }
    pthread_setname_np(r->thread, "relayd-record");   /* for top -H */
    *out = r;
    return 0;
}

void recorder_free(struct recorder *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    r->cancelled = true;   /* what cannot be committed now stays queued in the spool */
    pthread_cond_broadcast(&r->work);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    while (r->head) {   /* cannot happen: the thread ends with the list empty */
        struct job *next = r->head->next;
        job_free(r->head);
        r->head = next;
    }
    free(r->seqs);
    pthread_cond_destroy(&r->done);
    pthread_cond_destroy(&r->work);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
