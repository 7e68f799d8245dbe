/*
 * fuzz_qval -- libFuzzer target for the spool's value format (qval.c), the
 * parser of bytes read back from disk. Checks its promises on any input:
 * it never reads outside the value; every record it locates lies within it,
 * in ascending seq order, and is found again by qval_find; a sound record's
 * row is its bytes less the header; a damaged chunk is one corrupt record
 * that holds the whole value. And the other way: chunks built from the
 * input's rows parse back to the same records.
 *
 * Input: byte 0 picks the mode and the destination; bytes 1..8 the key.
 * Mode bit 0x80 rewrites the chunk header's checksum to match, so that the
 * fuzzer gets past it to the directory checks; bit 0x40 builds a chunk from
 * the rest of the input (split at '\n') instead of parsing it.
 */
#include "qval.h"
#include "util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_parsed(uint32_t dest, const unsigned char *v, size_t len, uint64_t key)
{
    struct qval q;
    qval_parse(dest, true, key, v, len, &q);
    if (q.n < 1 || q.n > QVAL_MAX_RECS)
        abort();
    if (q.problem && (q.dir || q.n != 1))
        abort();
    uint64_t prev = 0;
    for (unsigned i = 0; i < q.n; i++) {
        struct qval_bytes b = qval_rec(&q, i);
        if (b.p < v || b.p + b.len > v + len)
            abort();
        uint64_t seq = qval_seq(&q, i);
        if (i > 0 && seq <= prev)
            abort();
        prev = seq;
        if (!qval_covers(&q, seq) || qval_find(&q, seq) != (int)i)
            abort();
        struct spool_record r;
        qval_record(dest, &q, i, &r);
        if ((const unsigned char *)r.row < v || (const unsigned char *)r.row + r.len > v + len)
            abort();
        if (r.corrupt ? !r.problem : (r.len + SPOOL_HDR != b.len || r.seq != seq))
            abort();
        if (q.problem && (r.len != len || !r.corrupt))
            abort();
        if (qval_row_bytes(&q, i) < 0)
            abort();
    }
    if (qval_count(&q) < 1)
        abort();
}

static void build_and_parse(uint32_t dest, uint64_t key, const uint8_t *in, size_t size)
{
    static unsigned char recs[1 << 16], chunk[(1 << 16) + 8 * QVAL_MAX_RECS + 64];
    struct qval_bytes rec[QVAL_MAX_RECS];
    uint32_t delta[QVAL_MAX_RECS];
    const uint8_t *rows[QVAL_MAX_RECS];
    size_t lens[QVAL_MAX_RECS], off = 0;
    unsigned n = 0;
    const uint8_t *p = in, *end = in + size;
    while (p < end && n < QVAL_MAX_RECS) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (off + SPOOL_HDR + l > sizeof recs)
            break;
        delta[n] = n ? delta[n - 1] + 1 + (p[0] & 7) : (l ? p[0] & 3 : 0);
        qval_record_build(recs + off, dest, key + delta[n], p, l, 1000 + n);
        rec[n] = (struct qval_bytes){ recs + off, SPOOL_HDR + l };
        rows[n] = p;
        lens[n] = l;
        off += SPOOL_HDR + l;
        n++;
        p += l + 1;
    }
    if (n == 0)
        return;
    size_t len = qval_chunk_build(chunk, dest, key, n, delta, rec);
    if (len != qval_chunk_size(n, off))
        abort();
    unsigned char *copy = malloc(len);
    memcpy(copy, chunk, len);
    struct qval q;
    qval_parse(dest, true, key, copy, len, &q);
    if (q.problem || q.n != n)
        abort();
    for (unsigned i = 0; i < n; i++) {
        struct spool_record r;
        qval_record(dest, &q, i, &r);
        if (r.corrupt || r.seq != key + delta[i] || r.len != lens[i] || r.time_ms != 1000 + i ||
            memcmp(r.row, rows[i], lens[i]) != 0)
            abort();
    }
    /* the same bytes in another queue, or under another key, do not pass */
    qval_parse(dest + 1, true, key, copy, len, &q);
    if (!q.problem)
        abort();
    check_parsed(dest, copy, len, key);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 9)
        return 0;
    uint32_t dest = 1 + (data[0] & 3);
    uint64_t key = qval_get_be64(data + 1) >> 8;   /* leave room for the deltas */
    const uint8_t *v = data + 9;
    size_t len = size - 9;
    if (data[0] & 0x40) {
        build_and_parse(dest, key, v, len);
        return 0;
    }
    /* an exact-size copy so that ASan catches any read past the value */
    unsigned char *copy = malloc(len ? len : 1);
    memcpy(copy, v, len);
    if ((data[0] & 0x80) && len >= QVAL_CHUNK_HDR && copy[4] == QVAL_CHUNK_VER) {
        size_t hdr = qval_chunk_size((unsigned)copy[6] | (unsigned)copy[7] << 8, 0);
        if (hdr <= len) {
            unsigned char id[12];
            for (int i = 0; i < 4; i++)
                id[i] = (unsigned char)(dest >> (24 - 8 * i));
            qval_put_be64(id + 4, key);
            qval_put_le32(copy, util_crc32(util_crc32(0, id, sizeof id), copy + 4, hdr - 4));
        }
    }
    check_parsed(dest, copy, len, key);
    free(copy);
    return 0;
}
