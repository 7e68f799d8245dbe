/*
 * fuzz_forward -- libFuzzer target for the Fluent forward decoder (forward.c,
 * on msgpack-c and json_check). The input is fed as a connection's stream,
 * split at points taken from its first byte (so messages cross reads), and
 * the decoder's promises are checked: every record is a valid JSON object
 * within max_record_bytes, reasons are known tokens, a chunk id is 1..1024
 * bytes, the buffered remainder stays under max_message_bytes, and after an
 * error the stream refuses more input. Memory stays bounded whatever the
 * headers declare (ASan's allocation limit catches an unbounded one).
 */
#include "forward.h"
#include "json_check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const tokens[] = { "json", "utf8", "not-object", "nul", "depth", "size",
                                      "time", "key", "type", "entry", "trailing", "full" };
static struct fwd_limits lim = { .max_message_bytes = 1 << 16, .max_record_bytes = 4096,
                                 .max_depth = 8, .time_key = "ts" };
static size_t records;

static void on_record(void *arg, const char *tag, size_t tag_len, const char *json, size_t len)
{
    struct jcheck_result r;
    if (tag_len == 0 || tag_len > 1024 || len > lim.max_record_bytes)
        abort();
    if (jcheck_object(json, len, lim.max_depth, &r) != JC_OK)
        abort();
    records++;
}

static void on_refused(void *arg, const char *tag, size_t tag_len, const char *reason,
                       const char *detail)
{
    size_t i;
    for (i = 0; i < sizeof tokens / sizeof tokens[0]; i++)
        if (strcmp(tokens[i], reason) == 0)
            break;
    if (i == sizeof tokens / sizeof tokens[0] || !detail || !*detail)
        abort();
}

static void on_end(void *arg, const char *chunk, size_t len)
{
    if (chunk && (len == 0 || len > 1024))
        abort();
    if (chunk) {
        char ack[1100];
        if (fwd_ack(chunk, len, ack, sizeof ack) != len + 5 + (len < 32 ? 1 : len < 256 ? 2 : 3))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    lim.time_format = (enum fwd_time_format)(data[0] % 3);
    size_t step = (size_t)(data[0] >> 2) + 1;
    data++;
    size--;
    struct fwd_stream *s = fwd_stream_new();
    struct fwd_sink sink = { on_record, on_refused, on_end, NULL };
    char err[512];
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        /* an exact-size copy so that ASan catches a read past what arrived */
        char *piece = malloc(n);
        memcpy(piece, data + off, n);
        int rc = fwd_feed(s, &lim, piece, n, &sink, err, sizeof err);
        free(piece);
        if (rc != 0) {
            if (!err[0])
                abort();
            if (fwd_feed(s, &lim, "\x90", 1, &sink, err, sizeof err) == 0)
                abort();     /* a broken stream stays broken */
            break;
        }
        if (fwd_buffered(s) > lim.max_message_bytes + step)
            abort();
        off += n;
        step = step * 2 + 1;
    }
    fwd_stream_free(s);
    return 0;
}
