/*
 * dlq_fill -- test/bench tool: puts N ~200-byte rows straight into the
 * dead-letter store of DESTINATION (appended, then dead-lettered with reason
 * "invalid", in large transactions), to measure relayctl dlq on big stores.
 *
 *   dlq_fill SPOOL_DIR DESTINATION N
 */
#include "spool.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: dlq_fill SPOOL_DIR DESTINATION N\n");
        return 2;
    }
    uint64_t n = strtoull(argv[3], NULL, 10), done = 0;
    char err[512], row[256], detail[128];
    struct spool_opts o = { .dir = argv[1], .max_bytes = 16ull << 30, .durability = SPOOL_NOSYNC };
    struct spool *sp;
    uint32_t id;
    if (spool_open(&o, &sp, err, sizeof err) != SPOOL_OK || spool_dest(sp, argv[2], true, &id)) {
        fprintf(stderr, "dlq_fill: %s\n", err);
        return 1;
    }
    while (done < n) {
        struct spool_txn *t = NULL;
        if (spool_txn_begin(sp, &t) != SPOOL_OK)
            return 1;
        for (int i = 0; i < 50000 && done < n; i++, done++) {
            int len = snprintf(row, sizeof row, "{\"i\":%llu,\"host\":\"web-01.example.internal\","
                               "\"level\":\"info\",\"extra\":\"a column the table does not have\","
                               "\"msg\":\"request finished for a user of the shop\"}",
                               (unsigned long long)done);
            snprintf(detail, sizeof detail, "extra: no such field: extra (row %llu)",
                     (unsigned long long)done);
            uint64_t seq;
            struct spool_dl_info info = { .reason = done % 10 ? "invalid" : "stopped",
                                          .detail = detail, .http_status = 200, .attempts = 1 };
            if (spool_txn_append(t, id, row, (size_t)len, util_now_ms(), &seq) != SPOOL_OK ||
                spool_txn_dead_letter_info(t, id, seq, &info) != SPOOL_OK) {
                fprintf(stderr, "dlq_fill: %s\n", spool_last_error());
                return 1;
            }
        }
        if (spool_txn_commit(t) != SPOOL_OK) {
            fprintf(stderr, "dlq_fill: commit: %s\n", spool_last_error());
            return 1;
        }
    }
    spool_sync(sp);
    spool_close(sp);
    return 0;
}
