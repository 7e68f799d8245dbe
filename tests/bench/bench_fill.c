/*
 * bench_fill -- fills a spool with N ~200-byte records through the spool API
 * (large transactions, synced once at the end), to measure relayd's restart
 * time with a big backlog.
 *
 *   bench_fill SPOOL_DIR DESTINATION N
 */
#include "spool.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench_fill SPOOL_DIR DESTINATION N\n");
        return 2;
    }
    uint64_t n = strtoull(argv[3], NULL, 10);
    char err[512];
    struct spool_opts o = { .dir = argv[1], .max_bytes = 16ull << 30,
                            .durability = SPOOL_NOSYNC };
    struct spool *sp;
    if (spool_open(&o, &sp, err, sizeof err) != SPOOL_OK) {
        fprintf(stderr, "bench_fill: %s\n", err);
        return 1;
    }
    uint32_t id;
    if (spool_dest(sp, argv[2], true, &id) != SPOOL_OK) {
        fprintf(stderr, "bench_fill: cannot create %s\n", argv[2]);
        return 1;
    }
    uint64_t t0 = util_mono_us(), done = 0;
    char row[256];
    while (done < n) {
        struct spool_txn *t;
        if (spool_txn_begin(sp, &t) != SPOOL_OK)
            return 1;
        for (int i = 0; i < 100000 && done < n; i++, done++) {
            int len = snprintf(row, sizeof row,
                "{\"ts\":\"2026-11-22T10:00:00.%06uZ\",\"host\":\"web-01.example.internal\","
                "\"service\":\"checkout\",\"level\":\"info\",\"seq\":%llu,\"status\":200,"
                "\"msg\":\"request finished for a user of the shop\"}", (unsigned)(done % 1000000),
                (unsigned long long)done);
            if (spool_txn_append(t, id, row, (size_t)len, util_now_ms(), NULL) != SPOOL_OK) {
                fprintf(stderr, "bench_fill: append: %s\n", spool_last_error());
                return 1;
            }
        }
        if (spool_txn_commit(t) != SPOOL_OK) {
            fprintf(stderr, "bench_fill: commit: %s\n", spool_last_error());
            return 1;
        }
    }
    spool_sync(sp);
    printf("filled %llu records in %.1f s\n", (unsigned long long)n,
           (double)(util_mono_us() - t0) / 1e6);
    spool_close(sp);
    return 0;
}
