/*
 * budget.c -- the bytes-in-flight bound of a destination. See budget.h.
 */
#include "budget.h"

void budget_init(struct budget *b, uint64_t max)
{
    pthread_mutex_init(&b->mu, NULL);
    b->max = max;
    b->used = 0;
    b->peak = 0;
}

void budget_destroy(struct budget *b)
{
    pthread_mutex_destroy(&b->mu);
}

void budget_set_max(struct budget *b, uint64_t max)
{
    pthread_mutex_lock(&b->mu);
    b->max = max;
    pthread_mutex_unlock(&b->mu);
}

uint64_t budget_room(struct budget *b, uint64_t want)
{
    pthread_mutex_lock(&b->mu);
    uint64_t room = want;
    if (b->max && b->used > 0)
        room = b->used >= b->max ? 0 : b->max - b->used < want ? b->max - b->used : want;
    pthread_mutex_unlock(&b->mu);
    return room;
}

static void add(struct budget *b, uint64_t n)
{
    b->used += n;
    if (b->used > b->peak)
        b->peak = b->used;
}

bool budget_take(struct budget *b, uint64_t n)
{
    pthread_mutex_lock(&b->mu);
    bool ok = !b->max || b->used == 0 || (b->used <= b->max && n <= b->max - b->used);
    if (ok)
        add(b, n);
    pthread_mutex_unlock(&b->mu);
    return ok;
}

void budget_force(struct budget *b, uint64_t n)
{
    pthread_mutex_lock(&b->mu);
    add(b, n);
    pthread_mutex_unlock(&b->mu);
}

void budget_give(struct budget *b, uint64_t n)
{
    pthread_mutex_lock(&b->mu);
    b->used = n > b->used ? 0 : b->used - n;
    pthread_mutex_unlock(&b->mu);
}

uint64_t budget_used(struct budget *b)
{
    pthread_mutex_lock(&b->mu);
    uint64_t v = b->used;
    pthread_mutex_unlock(&b->mu);
    return v;
}

uint64_t budget_peak(struct budget *b)
{
    pthread_mutex_lock(&b->mu);
    uint64_t v = b->peak;
    pthread_mutex_unlock(&b->mu);
    return v;
}
