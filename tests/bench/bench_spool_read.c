/*
 * bench_spool_read -- how fast a backlog comes off the spool: every record of
 * DESTINATION read with spool_read in batches of BATCH (default 501, what a
 * lane asks for with batch_rows = 500), each one checked (its CRC) and handed
 * to a callback that only counts it. Run it in a fresh process after
 * bench_fill: the file is in the page cache but not in the CPU's caches, as
 * when relayd drains a backlog.
 *
 *   bench_spool_read SPOOL_DIR DESTINATION [BATCH]
 */
#include "spool.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>

struct count {
    uint64_t n, bytes, next, bad;
};

static int counted(const struct spool_record *r, void *arg)
{
    struct count *c = arg;
    c->n++;
    c->bytes += r->len;
    c->bad += r->corrupt;
    c->next = r->seq + 1;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: bench_spool_read SPOOL_DIR DESTINATION [BATCH]\n");
        return 2;
    }
    size_t batch = argc == 4 ? strtoull(argv[3], NULL, 10) : 501;
    if (batch == 0) {
        fprintf(stderr, "bench_spool_read: BATCH must be at least 1\n");
        return 2;
    }
    char err[512];
    struct spool_opts o = { .dir = argv[1], .readonly = true };
    struct spool *sp;
    if (spool_open(&o, &sp, err, sizeof err) != SPOOL_OK) {
        fprintf(stderr, "bench_spool_read: %s\n", err);
        return 1;
    }
    uint32_t id;
    if (spool_dest(sp, argv[2], false, &id) != SPOOL_OK) {
        fprintf(stderr, "bench_spool_read: no destination %s in %s\n", argv[2], argv[1]);
        return 1;
    }
    struct count c = { 0 };
    uint64_t t0 = util_mono_us();
    for (;;) {
        uint64_t before = c.n;
        if (spool_read(sp, id, c.next, batch, SIZE_MAX, counted, &c) != SPOOL_OK) {
            fprintf(stderr, "bench_spool_read: read: %s\n", spool_last_error());
            return 1;
        }
        if (c.n == before)
            break;
    }
    double us = (double)(util_mono_us() - t0);
    printf("read %llu records (%.1f MB, %llu damaged) in %.3f s: %.1f ns/record\n",
           (unsigned long long)c.n, (double)c.bytes / 1e6, (unsigned long long)c.bad, us / 1e6,
           c.n ? us * 1e3 / (double)c.n : 0.0);
    spool_close(sp);
    return c.bad ? 1 : 0;
}
