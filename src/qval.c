/*
 * qval.c -- the bytes of a spool queue's values. See qval.h and, for the
 * layouts, spool.h.
 */
#include "qval.h"
#include "util.h"

#include <string.h>

/* crc32 of { be32 dest, be64 seq, p[4..len) }: binds a record (or a chunk's
 * header and directory) to where it belongs. */
static uint32_t bound_crc(uint32_t dest, uint64_t seq, const unsigned char *p, size_t len)
{
    unsigned char id[12];
    for (int i = 0; i < 4; i++)
        id[i] = (unsigned char)(dest >> (24 - 8 * i));
    qval_put_be64(id + 4, seq);
    return util_crc32(util_crc32(0, id, sizeof id), p + 4, len - 4);
}

const char *qval_record_check(uint32_t dest, uint64_t seq, const unsigned char *p, size_t len)
{
    if (len < SPOOL_HDR)
        return "record shorter than its header (truncated)";
    if (p[4] != 1)
        return "unknown record version";
    if (qval_get_le32(p) != bound_crc(dest, seq, p, len))
        return "checksum mismatch";
    return NULL;
}

void qval_record_build(unsigned char *p, uint32_t dest, uint64_t seq, const void *row,
                       size_t len, uint64_t time_ms)
{
    memset(p, 0, SPOOL_HDR);
    p[4] = 1;
    for (int i = 0; i < 8; i++)
        p[8 + i] = (unsigned char)(time_ms >> (8 * i));
    memcpy(p + SPOOL_HDR, row, len);
    qval_put_le32(p, bound_crc(dest, seq, p, SPOOL_HDR + len));
}

void qval_parse(uint32_t dest, bool key_ok, uint64_t key, const void *p, size_t size,
                struct qval *q)
{
    *q = (struct qval){ .p = p, .size = size, .n = 1, .claimed = 1 };
    if (!key_ok) {
        q->bad_key = true;
        return;
    }
    q->key = key;
    if (size < 8 || q->p[4] != QVAL_CHUNK_VER)
        return;                 /* a record: checked when it is read */
    unsigned n = (unsigned)q->p[6] | (unsigned)q->p[7] << 8;
    size_t data_off = qval_chunk_size(n, 0);
    if (size < QVAL_CHUNK_HDR || n == 0 || n > QVAL_MAX_RECS || data_off > size) {
        q->problem = "chunk header damaged (truncated or impossible record count)";
        return;
    }
    q->claimed = n;
    if (qval_get_le32(q->p) != bound_crc(dest, key, q->p, data_off)) {
        q->problem = "chunk directory checksum mismatch";
        return;
    }
    const unsigned char *dir = q->p + QVAL_CHUNK_HDR;
    uint32_t prev_end = 0;
    for (unsigned i = 0; i < n; i++) {
        uint32_t d = qval_get_le32(dir + 8 * i), e = qval_get_le32(dir + 8 * i + 4);
        if ((i > 0 && d <= qval_get_le32(dir + 8 * (i - 1))) || e < prev_end ||
            e > size - data_off) {
            q->problem = "chunk directory inconsistent";
            return;
        }
        prev_end = e;
    }
    if (prev_end != size - data_off) {
        q->problem = "chunk directory inconsistent (size)";
        return;
    }
    q->n = n;
    q->dir = dir;
    q->data = q->p + data_off;
}

bool qval_covers(const struct qval *q, uint64_t seq)
{
    return !q->bad_key && qval_seq(q, 0) <= seq && seq <= qval_seq(q, q->n - 1);
}

int qval_find(const struct qval *q, uint64_t seq)
{
    if (q->bad_key || seq < q->key)
        return -1;
    if (!q->dir)
        return seq == q->key ? 0 : -1;
    unsigned lo = 0, hi = q->n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        uint64_t m = qval_seq(q, mid);
        if (m == seq)
            return (int)mid;
        if (m < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int64_t qval_row_bytes(const struct qval *q, unsigned i)
{
    if (q->problem) {
        size_t over = qval_chunk_size(q->claimed, SPOOL_HDR * (size_t)q->claimed);
        return q->size > over ? (int64_t)(q->size - over) : 0;
    }
    struct qval_bytes r = qval_rec(q, i);
    return r.len >= SPOOL_HDR ? (int64_t)(r.len - SPOOL_HDR) : 0;
}

int64_t qval_count(const struct qval *q)
{
    return q->problem ? q->claimed : q->n;
}

void qval_record(uint32_t dest, const struct qval *q, unsigned i, struct spool_record *r)
{
    *r = (struct spool_record){ .dest = dest };
    if (q->bad_key || q->problem) {
        r->corrupt = true;
        r->problem = q->bad_key ? "malformed key" : q->problem;
        r->seq = q->key;
        r->row = (const char *)q->p;
        r->len = q->size;
        return;
    }
    struct qval_bytes v = qval_rec(q, i);
    r->seq = qval_seq(q, i);
    r->problem = qval_record_check(dest, r->seq, v.p, v.len);
    if (r->problem) {
        r->corrupt = true;
        r->row = (const char *)v.p;
        r->len = v.len;
        return;
    }
    r->time_ms = qval_get_le64(v.p + 8);
    r->row = (const char *)v.p + SPOOL_HDR;
    r->len = v.len - SPOOL_HDR;
}

size_t qval_chunk_build(unsigned char *buf, uint32_t dest, uint64_t key, unsigned n,
                        const uint32_t *delta, const struct qval_bytes *rec)
{
    size_t data_off = qval_chunk_size(n, 0), off = 0;
    memset(buf, 0, QVAL_CHUNK_HDR);
    buf[4] = QVAL_CHUNK_VER;
    buf[6] = (unsigned char)(n & 0xff);
    buf[7] = (unsigned char)(n >> 8);
    for (unsigned i = 0; i < n; i++) {
        memcpy(buf + data_off + off, rec[i].p, rec[i].len);
        off += rec[i].len;
        qval_put_le32(buf + QVAL_CHUNK_HDR + 8 * i, delta[i]);
        qval_put_le32(buf + QVAL_CHUNK_HDR + 8 * i + 4, (uint32_t)off);
    }
    qval_put_le32(buf, bound_crc(dest, key, buf, data_off));
    return data_off + off;
}
