/*
 * forward.h -- the Fluent forward protocol (v1) decoder: msgpack in, JSON
 * records out (docs/protocol.md, "The Fluent forward input").
 *
 * A producer speaking forward (fluent-logger, Fluent Bit's and fluentd's
 * forward output, Docker's fluentd log driver) sends a stream of msgpack
 * arrays, each one message in one of four modes:
 *   Message                  [tag, time, record, option?]
 *   Forward                  [tag, [[time, record], ...], option?]
 *   PackedForward            [tag, bin(concatenated [time, record]), option?]
 *   CompressedPackedForward  the same, option.compressed = "gzip"
 * option is a map; option.chunk asks for an acknowledgement {"ack": chunk}
 * once the message's records are handled (ingest sends it only when they
 * are durable, see ingest.c).
 *
 * fwd_feed() takes the bytes as they arrive. It finds each message's end
 * with a framing scan of the msgpack headers (bounding every declared length
 * and element count by max_message_bytes before anything is allocated), then
 * decodes the complete message with msgpack-c, converts every record to one
 * JSON object (time added as time_key in the chosen format) and validates
 * that JSON with the same checker as the line protocol (json_check.h): a
 * record's fate does not depend on how it arrived.
 *
 * Outcomes, through the sink:
 *   record()   a JSON object for tag
 *   refused()  a record refused for good (reason token + detail): not a map,
 *              a non-string key, an ext value, invalid UTF-8, too deep, too
 *              large, a bad time
 *   end()      the message is finished; chunk (or NULL) is its ack id
 * A malformed message (not msgpack, wrong shape, over max_message_bytes, bad
 * gzip) is a protocol error: fwd_feed returns -1 with a message naming what
 * and at which byte offset of the connection's stream; the caller closes the
 * connection (the producer resends what was not acknowledged).
 *
 * Thread safety: a struct fwd_stream belongs to one thread at a time.
 */
#ifndef RELAY_FORWARD_H
#define RELAY_FORWARD_H

#include <stddef.h>
#include <stdint.h>

enum fwd_time_format {
    FWD_TIME_TIMESTAMP = 0,  /* "2024-01-02T03:04:05.123456Z": BigQuery TIMESTAMP's
                                microseconds (the event time's nanoseconds beyond
                                them are not kept: documented) */
    FWD_TIME_RFC3339_NS,     /* "2024-01-02T03:04:05.123456789Z" (STRING columns) */
    FWD_TIME_UNIX_NS,        /* 1704164645123456789 (INT64 columns) */
};

struct fwd_limits {
    size_t max_message_bytes;  /* one msgpack message, and the decompressed entries */
    size_t max_record_bytes;   /* one record's JSON */
    unsigned max_depth;        /* JSON nesting, top-level object = 1 */
    const char *time_key;      /* NULL or "": the event time is not kept */
    enum fwd_time_format time_format;
};

struct fwd_sink {
    void (*record)(void *arg, const char *tag, size_t tag_len, const char *json, size_t len);
    void (*refused)(void *arg, const char *tag, size_t tag_len, const char *reason,
                    const char *detail);
    void (*end)(void *arg, const char *chunk, size_t chunk_len);
    void *arg;
};

struct fwd_stream;

struct fwd_stream *fwd_stream_new(void);
void fwd_stream_free(struct fwd_stream *s);

/* Consumes buf[0..n). Returns 0 (incomplete messages are kept for the next
 * call), or -1 on a protocol error with err set; the stream is then unusable. */
int fwd_feed(struct fwd_stream *s, const struct fwd_limits *l, const char *buf, size_t n,
             const struct fwd_sink *sink, char *err, size_t errlen);

/* Bytes buffered for an incomplete message. */
size_t fwd_buffered(const struct fwd_stream *s);

/* Encodes the acknowledgement {"ack": chunk} into out (cap >= chunk_len + 16).
 * Returns its length, or 0 if it does not fit. */
size_t fwd_ack(const char *chunk, size_t chunk_len, char *out, size_t cap);

/* Parses a time_format value ("timestamp", "rfc3339_ns", "unix_ns"). -1 if unknown. */
int fwd_time_format_parse(const char *s);
const char *fwd_time_format_name(enum fwd_time_format f);

/* True if tag matches pattern, fluentd style: parts separated by '.', '*'
 * matches within one part (no '.'), '**' matches any number of parts
 * (including none: "a.**" matches "a", "a.b" and "a.b.c"); anything else
 * matches itself. */
int fwd_tag_match(const char *pattern, const char *tag, size_t tag_len);

#endif
