/*
 * dlq.c -- encoding and checking dead-letter entries. See dlq.h.
 */
#include "dlq.h"
#include "util.h"

#include <string.h>

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t entry_crc(uint64_t seq, const unsigned char *buf, size_t len)
{
    unsigned char key[8];
    for (int i = 0; i < 8; i++)
        key[i] = (unsigned char)(seq >> (56 - 8 * i));
    return util_crc32(util_crc32(0, key, sizeof key), buf + 4, len - 4);
}

size_t dlq_encoded_size(const struct dlq_entry *e)
{
    return DLQ_HDR + e->reason_len + e->detail_len + e->row_len;
}

void dlq_encode(const struct dlq_entry *e, void *out)
{
    unsigned char *p = out;
    memset(p, 0, DLQ_HDR);
    p[4] = 1;
    put32(p + 8, e->dest);
    put32(p + 12, e->attempts);
    put32(p + 16, e->http_status);
    put64(p + 20, e->enqueued_ms);
    put64(p + 28, e->dead_ms);
    put64(p + 36, e->first_attempt_ms);
    put64(p + 44, e->last_attempt_ms);
    put32(p + 52, (uint32_t)e->reason_len);
    put32(p + 56, (uint32_t)e->detail_len);
    /* row_len is not stored: the row is the rest of the value */
    unsigned char *q = p + DLQ_HDR;
    if (e->reason_len)
        memcpy(q, e->reason, e->reason_len);
    q += e->reason_len;
    if (e->detail_len)
        memcpy(q, e->detail, e->detail_len);
    q += e->detail_len;
    if (e->row_len)
        memcpy(q, e->row, e->row_len);
    put32(p, entry_crc(e->seq, p, dlq_encoded_size(e)));
}

int dlq_decode(const void *buf, size_t len, uint64_t seq, struct dlq_entry *e)
{
    const unsigned char *p = buf;
    if (len < DLQ_HDR || p[4] != 1)
        return -1;
    if (get32(p) != entry_crc(seq, p, len))
        return -1;
    memset(e, 0, sizeof *e);
    e->seq = seq;
    e->dest = get32(p + 8);
    e->attempts = get32(p + 12);
    e->http_status = get32(p + 16);
    e->enqueued_ms = get64(p + 20);
    e->dead_ms = get64(p + 28);
    e->first_attempt_ms = get64(p + 36);
    e->last_attempt_ms = get64(p + 44);
    e->reason_len = get32(p + 52);
    e->detail_len = get32(p + 56);
    if (e->reason_len > len - DLQ_HDR || e->detail_len > len - DLQ_HDR - e->reason_len)
        return -1;
    e->reason = (const char *)p + DLQ_HDR;
    e->detail = e->reason + e->reason_len;
    e->row = e->detail + e->detail_len;
    e->row_len = len - DLQ_HDR - e->reason_len - e->detail_len;
    return 0;
}
