/*
 * qval.h -- the bytes of a spool queue's values: a record, or a chunk of
 * records (the layouts are in spool.h). Pure functions over memory, no LMDB:
 * spool.c stores and finds the values, this module builds and reads them, so
 * the format can be checked (and fuzzed) on its own.
 *
 * A value read from disk is never trusted: qval_parse checks a chunk's
 * header checksum and directory before any record is located through it,
 * and a damaged chunk reads as one corrupt record under its key, so every
 * byte stays accounted for (it can be dead-lettered whole).
 *
 * Thread safety: reentrant; a struct qval points into the caller's bytes.
 */
#ifndef RELAY_QVAL_H
#define RELAY_QVAL_H

#include "spool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QVAL_CHUNK_HDR  16    /* bytes of a chunk's header, before its directory */
#define QVAL_CHUNK_VER  2     /* a chunk's version byte (a record's is 1) */
#define QVAL_MAX_RECS   256   /* records one chunk may hold */

/* One value, parsed. */
struct qval {
    uint64_t key;
    const unsigned char *p;
    size_t size;
    unsigned n;                 /* records in it (1 unless a sound chunk) */
    const unsigned char *dir;   /* a sound chunk's directory, else NULL */
    const unsigned char *data;  /* and its records */
    bool bad_key;               /* the key is not 8 bytes */
    const char *problem;        /* a damaged chunk: what is wrong */
    unsigned claimed;           /* a damaged chunk: the records its header claims, or 1 */
};

struct qval_bytes {
    const unsigned char *p;
    size_t len;
};

static inline void qval_put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (56 - 8 * i));
}

static inline uint64_t qval_get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static inline void qval_put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint32_t qval_get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t qval_get_le64(const unsigned char *p)
{
    return (uint64_t)qval_get_le32(p) | (uint64_t)qval_get_le32(p + 4) << 32;
}

/* Parses the value p[0..size) stored under key (key_ok: the key was 8 bytes)
 * in destination dest's queue. Never fails: see struct qval. */
void qval_parse(uint32_t dest, bool key_ok, uint64_t key, const void *p, size_t size,
                struct qval *q);

/* The seq of record i (< q->n). */
static inline uint64_t qval_seq(const struct qval *q, unsigned i)
{
    return q->dir ? q->key + qval_get_le32(q->dir + 8 * i) : q->key;
}

/* The bytes of record i: header and row (the whole value unless a sound chunk). */
static inline struct qval_bytes qval_rec(const struct qval *q, unsigned i)
{
    if (!q->dir)
        return (struct qval_bytes){ q->p, q->size };
    uint32_t start = i ? qval_get_le32(q->dir + 8 * (i - 1) + 4) : 0;
    uint32_t end = qval_get_le32(q->dir + 8 * i + 4);
    return (struct qval_bytes){ q->data + start, end - start };
}

/* Does q's range of seqs take in seq? */
bool qval_covers(const struct qval *q, uint64_t seq);
/* The index of seq's record in q, or -1. */
int qval_find(const struct qval *q, uint64_t seq);
/* Record i as spool_read's callback sees it (checked: corrupt and problem set
 * when it fails its header or checksum). */
void qval_record(uint32_t dest, const struct qval *q, unsigned i, struct spool_record *r);
/* Row bytes of record i and records of the whole value, as the
 * destination's counts have them (a damaged chunk: what its header claims). */
int64_t qval_row_bytes(const struct qval *q, unsigned i);
int64_t qval_count(const struct qval *q);

/* Checks record (dest, seq) in p[0..len): NULL if sound, else what is wrong. */
const char *qval_record_check(uint32_t dest, uint64_t seq, const unsigned char *p, size_t len);
/* Writes record (dest, seq): SPOOL_HDR + len bytes at p. */
void qval_record_build(unsigned char *p, uint32_t dest, uint64_t seq, const void *row,
                       size_t len, uint64_t time_ms);
/* The size of a chunk of n records of rec_bytes bytes in all. */
static inline size_t qval_chunk_size(unsigned n, size_t rec_bytes)
{
    return QVAL_CHUNK_HDR + 8 * (size_t)n + rec_bytes;
}
/* Writes the chunk of records rec[0..n) (each a whole record, seq key +
 * delta[i], deltas ascending, 1 <= n <= QVAL_MAX_RECS) at buf, which has
 * room for qval_chunk_size(n, sum of the lengths). Returns its size. */
size_t qval_chunk_build(unsigned char *buf, uint32_t dest, uint64_t key, unsigned n,
                        const uint32_t *delta, const struct qval_bytes *rec);

#endif
