/*
 * delivstate.h -- what operators see of a destination's delivery state: the
 * log lines of its changes (structured key=value, rate-limited) and the
 * reason the status document gives. Shared by sender.c (insertAll) and
 * writer.c (Storage Write), which call it on each transition.
 *
 * An "episode" starts with the first failure that makes a destination wait
 * (backoff or parked) and ends with the next success (recovered). Within it:
 *   - a change of state (backoff <-> parked) or of reason is logged once;
 *   - the first probe after a logged change is logged (event=probing);
 *   - repeated failures with the same state and reason are not logged, but
 *     summed up in event=summary lines spaced exponentially from the start of
 *     the episode (1 min, then 2, 4, ... capped at 1 h between two), so a
 *     day-long outage writes a few dozen lines, not thousands;
 *   - the episode's end is logged with the rows that waited and for how long.
 * Besides, every line but summaries and the end of a logged episode takes a
 * token from a bucket (10, refilled one a minute): a flapping reason cannot
 * flood the journal either; what the bucket holds back is counted
 * (suppressed=N on the next line of its sort). docs/operations.md lists events and fields.
 *
 * RELAYD_LOG_TIME_SCALE=<factor> (environment, for tests) divides those
 * periods: 60 makes a minute of them last a second.
 *
 * Threads: the delivery thread calls everything but ds_why/ds_in_episode,
 * which readers call holding the lock given to ds_init; the delivery thread
 * must not hold that lock when it calls ds_*.
 */
#ifndef RELAY_DELIVSTATE_H
#define RELAY_DELIVSTATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

struct spool;

enum ds_wait { DS_BACKOFF, DS_PARKED };

#define DS_SUMMARY_FIRST_MS 60000ull      /* first summary after a minute */
#define DS_SUMMARY_CAP_MS   3600000ull    /* then doubling, at most an hour apart */
#define DS_BURST            10            /* change/event lines in a burst ... */
#define DS_REFILL_MS        60000ull      /* ... then one a minute */

struct delivstate {
    pthread_mutex_t *lock;          /* guards the status fields (the caller's) */
    const char *dest, *api;
    char table[320];                /* project.dataset.table */
    double scale;                   /* RELAYD_LOG_TIME_SCALE */
    /* status fields (written under *lock) */
    bool episode;
    enum ds_wait state;
    char kind[16];
    char reason[128];               /* short, stable: what changes are detected on */
    char detail[512];               /* the full message */
    uint64_t since_us;              /* episode start (monotonic) */
    uint64_t attempts;              /* failures in the episode */
    /* rate limiting (delivery thread only) */
    bool logged_start;              /* the episode's first line was written */
    bool probe_logged;              /* since the last logged change */
    uint64_t next_summary_us, summary_gap_us;
    uint64_t suppressed;            /* episode lines held back since the last one written */
    uint64_t ev_suppressed;         /* event lines (reconnect, ...) held back */
    double tokens;
    uint64_t tokens_us;
};

/* lock: the mutex status readers hold (it must outlive ds). dest and api
 * ("insertAll" or "storage") must outlive ds; table is copied. */
void ds_init(struct delivstate *ds, pthread_mutex_t *lock, const char *dest, const char *api,
             const char *table);
void ds_set_table(struct delivstate *ds, const char *dest, const char *table);

/* A failure: the destination waits retry_in_ms before trying again. detail
 * is the message (never a secret); kind (http, network, tls, auth,
 * not_found, grpc, dlq_full, table, other) is guessed from it when NULL. */
void ds_wait(struct delivstate *ds, enum ds_wait st, const char *kind, const char *detail,
             uint64_t retry_in_ms);
/* The wait is over: a probe goes out. */
void ds_probe(struct delivstate *ds);
/* A delivery succeeded: ends the episode, if any. sp and dest_id give the
 * queue whose depth and oldest row are logged (sp may be NULL). */
void ds_ok(struct delivstate *ds, struct spool *sp, uint32_t dest_id);
/* A one-off event (reconnect, token_rejected), rate-limited. */
void ds_event(struct delivstate *ds, enum log_level level, const char *event, const char *kind,
              const char *detail, const char *extra);

/* With *lock held: true during an episode; ds_why fills out with the reason
 * for state (a status state name), never empty for a state other than idle. */
bool ds_in_episode(const struct delivstate *ds);
void ds_why(const struct delivstate *ds, const char *state, const char *sending, char *out,
            size_t n);

/* Helpers, exposed for tests. ds_classify: kind and short reason of a message. */
void ds_classify(const char *detail, char *kind, size_t kn, char *reason, size_t rn);
/* Appends key=value to line (at *len, capacity cap), quoting when needed. */
void ds_kv(char *line, size_t cap, size_t *len, const char *key, const char *value);
/* Formats a duration: "850ms", "2.1s", "10m0s", "3h20m". */
char *ds_fmt_dur(uint64_t ms, char *out, size_t n);

/* For tests: the clock (monotonic us) and where lines go (default log_msg). */
void ds_set_clock(uint64_t (*now_us)(void));
void ds_set_sink(void (*sink)(enum log_level, const char *line, void *arg), void *arg);

#endif
