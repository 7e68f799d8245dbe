/*
 * tcache.h -- a small cache of open tables keyed by table id, least
 * recently used first out: a Storage Write connection keeps one stream and
 * connection per table its rows go to (time-sharded tables), and closes the
 * ones it has not used for a while.
 *
 * The cache holds pointers it does not own: evicting returns the value for
 * the caller to close and free.
 *
 * Not thread-safe: one cache per connection thread.
 */
#ifndef RELAY_TCACHE_H
#define RELAY_TCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tcache_entry {
    char *key;
    void *val;
    uint64_t used_us;         /* last use (monotonic) */
};

struct tcache {
    struct tcache_entry *e;
    size_t n, cap;
};

/* Room for cap entries (cap >= 1). Returns 0 or -1 (out of memory). */
int tcache_init(struct tcache *c, size_t cap);
/* Frees the cache, not the values. */
void tcache_free(struct tcache *c);
/* The value under key, marked used at now_us, or NULL. */
void *tcache_get(struct tcache *c, const char *key, uint64_t now_us);
/* Adds key -> val (key must not be there). Returns 0, or -1 when the cache is
 * full (evict first) or out of memory. */
int tcache_put(struct tcache *c, const char *key, void *val, uint64_t now_us);
/* Removes and returns the least recently used value that is not busy
 * (busy(val, arg) false) and was last used at least idle_us before now_us;
 * NULL when there is none. */
void *tcache_evict(struct tcache *c, uint64_t now_us, uint64_t idle_us,
                   bool (*busy)(void *val, void *arg), void *arg);
/* Removes the entry holding val, if any. */
void tcache_remove(struct tcache *c, const void *val);
static inline size_t tcache_count(const struct tcache *c) { return c->n; }
/* The i-th value (0 <= i < count), in no particular order. */
static inline void *tcache_at(const struct tcache *c, size_t i) { return c->e[i].val; }

#endif
