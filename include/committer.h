/*
 * committer.h -- group commit: the single writer between ingest and the spool.
 *
 * Ingest collects validated records into a batch and submits it. The
 * committer thread takes every batch submitted since its last commit, appends
 * them all in one LMDB transaction, commits (durably, per the durability
 * mode) and hands the batches back as done, in submission order, waking
 * ingest through an eventfd. So while one commit syncs, the next one fills up:
 * the fsync cost is shared by everything that arrived meanwhile.
 *
 * When the spool has no room the committer keeps the batches, retries every
 * 100 ms, and reports full; ingest may then ask for the kept batches back,
 * refused (status SPOOL_FULL). An I/O error in a commit is fatal: the
 * committer logs it and ends the process with exit code RELAY_EXIT_IO;
 * nothing in that commit was acknowledged and a restart recovers from disk.
 *
 * Threads: submit/take_done/reject/state from the ingest thread; the
 * committer runs on its own thread, and with SPOOL_NOSYNC_PERIODIC a second
 * thread flushes the spool every sync_interval_ms.
 */
#ifndef RELAY_COMMITTER_H
#define RELAY_COMMITTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"

#define RELAY_EXIT_IO 5

struct batch_rec {
    uint32_t conn, gen;   /* which connection, which incarnation of its slot */
    uint64_t line;        /* the producer's line number */
    uint32_t dest;
    uint32_t len;
    size_t off;           /* into batch->data */
};

struct batch {
    struct batch *next;
    char *data;
    size_t len, cap;
    struct batch_rec *recs;
    size_t n, ncap;
    int status;           /* when done: SPOOL_OK, SPOOL_FULL (refused), -1 (stopped) */
    uint64_t submit_us;   /* monotonic, for commit latency */
};

/* Allocates/reuses: add a record to a batch (copies row). Returns 0 or -1 (ENOMEM). */
int batch_add(struct batch *b, uint32_t conn, uint32_t gen, uint64_t line, uint32_t dest,
              const char *row, size_t len);
void batch_reset(struct batch *b);
void batch_free(struct batch *b);

struct committer_opts {
    enum spool_durability durability;
    uint64_t sync_interval_ms;   /* SPOOL_NOSYNC_PERIODIC */
    /* called on the committer thread after each successful commit (e.g. to
     * wake the sender); may be NULL */
    void (*on_commit)(void *arg);
    void *on_commit_arg;
};

struct committer_stats {
    uint64_t commits, records, bytes;
    uint64_t last_commit_us, max_commit_us, total_commit_us;
    uint64_t full_events;
};

struct committer;

int committer_start(struct spool *s, const struct committer_opts *o, struct committer **out);
/* Hands b to the committer; b belongs to it until returned by take_done. */
void committer_submit(struct committer *c, struct batch *b);
/* Returns the done batches (a list through ->next, oldest first), or NULL. */
struct batch *committer_take_done(struct committer *c);
/* The fd that becomes readable when there are done batches or full changed. */
int committer_fd(struct committer *c);
/* Clears the eventfd's count; call before take_done. */
void committer_drain_fd(struct committer *c);
/* True while the spool has no room for what is submitted (or, after a
 * reject, until room appears again). */
bool committer_full(struct committer *c);
/* Why the spool is full ("the disk holding ... is full", ...). */
void committer_full_why(struct committer *c, char *buf, size_t len);
/* Returns every kept batch as done with status SPOOL_FULL. */
void committer_reject(struct committer *c);
void committer_get_stats(struct committer *c, struct committer_stats *st);
/* Commits what is submitted (unless full), then stops the thread and frees c.
 * Batches not yet taken come back through *left (if not NULL, else freed):
 * done ones with their status, uncommitted ones with status -1. */
void committer_stop(struct committer *c, struct batch **left);

#endif
