/*
 * spool_drain -- test tool: removes the oldest records of one destination,
 * as delivery will, through the spool API (from another process, while
 * relayd runs). Used by the "full" tests to free space.
 *
 *   spool_drain SPOOL_DIR TABLE [N]     (N: default all)
 * Prints the number of records removed.
 */
#include "spool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct seqs {
    uint64_t v[1000];
    size_t n;
};

static int take(const struct spool_record *r, void *arg)
{
    struct seqs *s = arg;
    s->v[s->n++] = r->seq;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spool_drain SPOOL_DIR TABLE [N]\n");
        return 2;
    }
    uint64_t limit = argc > 3 ? strtoull(argv[3], NULL, 10) : UINT64_MAX;
    char err[512];
    struct spool_opts o = { .dir = argv[1], .max_bytes = 1ull << 40 };
    struct spool *sp;
    if (spool_open(&o, &sp, err, sizeof err) != SPOOL_OK) {
        fprintf(stderr, "spool_drain: %s\n", err);
        return 1;
    }
    uint32_t id;
    if (spool_dest(sp, argv[2], false, &id) != SPOOL_OK) {
        fprintf(stderr, "spool_drain: no destination %s\n", argv[2]);
        return 1;
    }
    uint64_t removed = 0;
    struct seqs s;
    for (;;) {
        s.n = 0;
        size_t want = limit - removed < 1000 ? (size_t)(limit - removed) : 1000;
        if (want == 0)
            break;
        spool_read(sp, id, 0, want, SIZE_MAX, take, &s);
        if (s.n == 0)
            break;
        struct spool_txn *t = NULL;
        int rc = spool_txn_begin(sp, &t);
        for (size_t i = 0; rc == SPOOL_OK && i < s.n; i++)
            rc = spool_txn_remove(t, id, s.v[i]);
        if (rc == SPOOL_OK)
            rc = spool_txn_commit(t);
        else
            spool_txn_abort(t);
        if (rc != SPOOL_OK) {
            fprintf(stderr, "spool_drain: %s (%s)\n", spool_strerror(rc), spool_last_error());
            return 1;
        }
        removed += s.n;
    }
    printf("%llu\n", (unsigned long long)removed);
    spool_close(sp);
    return 0;
}
