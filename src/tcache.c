/*
 * tcache.c -- the per-connection cache of open tables. See tcache.h.
 * A linear array: a connection has a handful of tables at once.
 */
#include "tcache.h"

#include <stdlib.h>
#include <string.h>

int tcache_init(struct tcache *c, size_t cap)
{
    c->n = 0;
    c->cap = cap ? cap : 1;
    c->e = calloc(c->cap, sizeof *c->e);
    return c->e ? 0 : -1;
}

void tcache_free(struct tcache *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->e[i].key);
    free(c->e);
    c->e = NULL;
    c->n = c->cap = 0;
}

void *tcache_get(struct tcache *c, const char *key, uint64_t now_us)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->e[i].key, key) == 0) {
            c->e[i].used_us = now_us;
            return c->e[i].val;
        }
    return NULL;
}

int tcache_put(struct tcache *c, const char *key, void *val, uint64_t now_us)
{
    if (c->n == c->cap)
        return -1;
    char *k = strdup(key);
    if (!k)
        return -1;
    c->e[c->n++] = (struct tcache_entry){ k, val, now_us };
    return 0;
}

static void drop(struct tcache *c, size_t i)
{
    free(c->e[i].key);
    c->e[i] = c->e[--c->n];
}

void *tcache_evict(struct tcache *c, uint64_t now_us, uint64_t idle_us,
                   bool (*busy)(void *val, void *arg), void *arg)
{
    size_t best = c->n;
    for (size_t i = 0; i < c->n; i++) {
        const struct tcache_entry *e = &c->e[i];
        if (e->used_us > now_us || now_us - e->used_us < idle_us)
            continue;
        if (busy && busy(e->val, arg))
            continue;
        if (best == c->n || e->used_us < c->e[best].used_us)
            best = i;
    }
    if (best == c->n)
        return NULL;
    void *v = c->e[best].val;
    drop(c, best);
    return v;
}

void tcache_remove(struct tcache *c, const void *val)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].val == val) {
            drop(c, i);
            return;
        }
}
