/*
 * dlq.h -- the dead-letter store's entry format.
 *
 * Dead letters live in the spool's LMDB environment (database "dlq", key
 * be64 seq: the record keeps the identity it had in its queue), so that moving
 * a record between its queue and the store is one atomic transaction. This
 * module owns how an entry is laid out and checked; spool.c stores it.
 *
 * Layout (little-endian):
 *   u32 crc32 of { be64 seq, bytes 4.. }
 *   u8 version (1), u8 reserved[3]
 *   u32 dest id, u32 attempts, u32 http status (0: none)
 *   u64 enqueued_ms, dead_ms, first_attempt_ms, last_attempt_ms
 *   u32 reason_len, u32 detail_len
 *   reason, detail, row (the rest of the value)
 */
#ifndef RELAY_DLQ_H
#define RELAY_DLQ_H

#include <stddef.h>
#include <stdint.h>

#define DLQ_HDR 60

struct dlq_entry {
    uint64_t seq;
    uint32_t dest;
    uint32_t attempts;
    uint32_t http_status;
    uint64_t enqueued_ms, dead_ms, first_attempt_ms, last_attempt_ms;
    const char *reason;  size_t reason_len;   /* short token: corrupt, invalid, expired, ... */
    const char *detail;  size_t detail_len;   /* human text: BigQuery's message, ... */
    const char *row;     size_t row_len;
};

size_t dlq_encoded_size(const struct dlq_entry *e);
/* Writes e into buf, which holds dlq_encoded_size(e) bytes. */
void dlq_encode(const struct dlq_entry *e, void *buf);
/* Parses and verifies an entry stored under seq; e's pointers point into buf.
 * Returns 0, or -1 if the entry is damaged. */
int dlq_decode(const void *buf, size_t len, uint64_t seq, struct dlq_entry *e);

#endif
