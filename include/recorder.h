/*
 * recorder.h -- records delivered rows in the spool off the delivery thread.
 *
 * A Storage Write lane learns that an append landed; removing its rows from
 * the queue costs a write transaction and an fsync. The lane hands the job
 * (the rows' sequence numbers, and for exactly-once the stream state to put
 * under a meta key) to a recorder and goes on sending. The recorder's thread
 * commits every job queued by then in one transaction, in the order they
 * were submitted, so an fsync covers the answers of several lanes and turns.
 *
 * A job not yet committed is in the state a kill -9 leaves between an
 * answer and its record: the rows are still queued and are resent on a
 * restart (exactly-once: the resync finds them in the stream). Whoever next
 * reads the queue or the meta state the job changes calls recorder_wait with
 * the ticket of its last job first.
 *
 * Jobs gather before a commit, for up to 10 ms or until 8,192 rows are
 * queued (recorder_set_gather), so that one fsync covers several appends;
 * a recorder_wait, recorder_cancel or recorder_free ends the gathering at
 * once, so nobody waits for the window.
 *
 * A commit that fails (a full map) is retried, its jobs kept, every
 * RETRY_MS; after recorder_cancel a failing commit drops its jobs instead
 * (the rows stay queued) so that a stop never waits on a full disk. An I/O
 * error stops the daemon (exit 5), as any spool write does.
 *
 * Thread safety: submit and wait from any thread; one recorder per
 * destination, shared by its lanes.
 */
#ifndef RELAY_RECORDER_H
#define RELAY_RECORDER_H

#include <stddef.h>
#include <stdint.h>

struct spool;
struct recorder;

/* A meta key to set with a job (exactly-once: "<next offset> <stream>"). */
struct recorder_meta {
    const char *key;
    const char *val;
    size_t len;
};

/* committed(arg, rows) runs on the recorder's thread after each commit,
 * with the rows that commit removed (counted as delivered). name is for log
 * lines. */
int recorder_create(struct spool *sp, uint32_t dest, const char *name,
                    void (*committed)(void *arg, uint64_t rows), void *arg,
                    struct recorder **out);
/* Queues the removal of seqs[0..n) and the puts of meta[0..n_meta) (all
 * copied) as one job; returns its ticket (> 0), or 0 if out of memory (then
 * nothing was queued). */
uint64_t recorder_submit(struct recorder *r, const uint64_t *seqs, size_t n,
                         const struct recorder_meta *meta, size_t n_meta);
/* Returns once the job with this ticket and every one before it is
 * committed (or dropped after recorder_cancel). Ticket 0 returns at once. */
void recorder_wait(struct recorder *r, uint64_t ticket);
/* From now on a commit that fails drops its jobs instead of retrying. */
void recorder_cancel(struct recorder *r);
/* Gathering: commit once the oldest queued job is ms old or rows rows are
 * queued, whichever comes first (0 ms: commit at once). */
void recorder_set_gather(struct recorder *r, unsigned ms, uint64_t rows);
/* Jobs queued and not committed yet (status). */
size_t recorder_pending(struct recorder *r);
/* Commits what is queued (or drops it, if cancelled and failing), stops the
 * thread and frees. NULL is a no-op. */
void recorder_free(struct recorder *r);

#endif
