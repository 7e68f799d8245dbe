/*
 * budget.h -- the bound on a destination's bytes in flight
 * (max_inflight_bytes): the row bytes of batches taken from the queue and
 * not yet settled (sent and awaiting an answer, or waiting to be resent).
 *
 * A new batch may be taken only while the bytes already held plus the batch
 * stay within the bound, except that a batch is always allowed when nothing
 * is held, so a batch larger than the bound still makes progress alone.
 * Bytes of batches cut from held ones (bisection, resending the rest of an
 * answered batch) are charged without the check: they replace bytes that
 * were already held.
 *
 * Thread safety: every function may be called from any thread (a mutex);
 * the Storage Write connections of one destination share one budget.
 */
#ifndef RELAY_BUDGET_H
#define RELAY_BUDGET_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct budget {
    pthread_mutex_t mu;
    uint64_t max;             /* the bound; 0: none */
    uint64_t used;            /* bytes held now */
    uint64_t peak;            /* the most ever held at once */
};

void budget_init(struct budget *b, uint64_t max);
void budget_destroy(struct budget *b);
/* Changes the bound (a reload); what is held stays held. */
void budget_set_max(struct budget *b, uint64_t max);
/* The largest batch that may be taken now, at most want: want when nothing
 * is held, else what is left under the bound (0 when nothing is). */
uint64_t budget_room(struct budget *b, uint64_t want);
/* Takes n bytes if the rule allows it (nothing held, or used + n <= max).
 * Returns true if taken. */
bool budget_take(struct budget *b, uint64_t n);
/* Takes n bytes whatever the bound (a part of a batch already held). */
void budget_force(struct budget *b, uint64_t n);
/* Gives n bytes back. */
void budget_give(struct budget *b, uint64_t n);
uint64_t budget_used(struct budget *b);
uint64_t budget_peak(struct budget *b);

#endif
