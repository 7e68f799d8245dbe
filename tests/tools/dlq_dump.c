/*
 * dlq_dump -- test tool: prints the dead-letter store as NDJSON
 * ({seq, dest, reason, detail, http, attempts, row}) through the spool API.
 * (relayctl dlq is the user's tool; this one keeps tests independent of it.)
 *
 *   dlq_dump SPOOL_DIR
 */
#include "dlq.h"
#include "spool.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

static int print_one(const struct dlq_entry *e, void *arg)
{
    struct spool *sp = arg;
    struct buf b = { 0 };
    const char *dest = spool_dest_name(sp, e->dest);
    buf_printf(&b, "{\"seq\":%llu,\"dest\":\"%s\",\"reason\":\"", (unsigned long long)e->seq,
               dest ? dest : "?");
    buf_json_escape(&b, e->reason, e->reason_len);
    buf_puts(&b, "\",\"detail\":\"");
    buf_json_escape(&b, e->detail, e->detail_len);
    buf_printf(&b, "\",\"http\":%u,\"attempts\":%u,", e->http_status, e->attempts);
    if (e->reason_len == 7 && memcmp(e->reason, "corrupt", 7) == 0) {
        /* the raw bytes of a damaged record: not text */
        buf_puts(&b, "\"row_hex\":\"");
        for (size_t i = 0; i < e->row_len; i++)
            buf_printf(&b, "%02x", (unsigned char)e->row[i]);
    } else {
        buf_puts(&b, "\"row\":\"");
        buf_json_escape(&b, e->row, e->row_len);
    }
    buf_puts(&b, "\"}\n");
    fwrite(b.data, 1, b.len, stdout);
    buf_free(&b);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: dlq_dump SPOOL_DIR\n");
        return 2;
    }
    char err[512];
    struct spool_opts o = { .dir = argv[1], .max_bytes = 1ull << 40, .readonly = true };
    struct spool *sp;
    if (spool_open(&o, &sp, err, sizeof err) != SPOOL_OK) {
        fprintf(stderr, "dlq_dump: %s\n", err);
        return 1;
    }
    int rc = spool_dlq_read(sp, 0, SIZE_MAX, print_one, sp);
    spool_close(sp);
    return rc == SPOOL_OK ? 0 : 1;
}
