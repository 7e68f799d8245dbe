/*
 * test_dlq.c -- unit tests for the dead-letter entry format (dlq.h).
 *
 * Encoded entries are decoded from exact-length heap copies so that ASan
 * catches any read outside the buffer. The damage tests flip every single
 * bit of an encoded entry, decode it under the right seq, try wrong seqs,
 * and cut the buffer at every length: all of those must be refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "dlq.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static struct dlq_entry sample(uint64_t seq, const char *reason, const char *detail,
                               const char *row, size_t row_len)
{
    struct dlq_entry e;
    memset(&e, 0, sizeof e);
    e.seq = seq;
    e.dest = 7;
    e.attempts = 3;
    e.http_status = 400;
    e.enqueued_ms = 1700000000123ULL;
    e.dead_ms = 1700000009999ULL;
    e.first_attempt_ms = 1700000001000ULL;
    e.last_attempt_ms = 1700000008000ULL;
    e.reason = reason;
    e.reason_len = strlen(reason);
    e.detail = detail;
    e.detail_len = strlen(detail);
    e.row = row;
    e.row_len = row_len;
    return e;
}

/* Encodes e into a fresh exact-size heap buffer. */
static unsigned char *encode(const struct dlq_entry *e, size_t *len)
{
    *len = dlq_encoded_size(e);
    unsigned char *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    dlq_encode(e, buf);
    return buf;
}

static int decode_copy(const unsigned char *buf, size_t len, uint64_t seq,
                       struct dlq_entry *out, unsigned char **copy)
{
    *copy = malloc(len ? len : 1);
    assert_non_null(*copy);
    if (len)
        memcpy(*copy, buf, len);
    return dlq_decode(*copy, len, seq, out);
}

static void assert_same_entry(const struct dlq_entry *a, const struct dlq_entry *b)
{
    assert_int_equal(a->seq, b->seq);
    assert_int_equal(a->dest, b->dest);
    assert_int_equal(a->attempts, b->attempts);
    assert_int_equal(a->http_status, b->http_status);
    assert_int_equal(a->enqueued_ms, b->enqueued_ms);
    assert_int_equal(a->dead_ms, b->dead_ms);
    assert_int_equal(a->first_attempt_ms, b->first_attempt_ms);
    assert_int_equal(a->last_attempt_ms, b->last_attempt_ms);
    assert_int_equal(a->reason_len, b->reason_len);
    assert_int_equal(a->detail_len, b->detail_len);
    assert_int_equal(a->row_len, b->row_len);
    if (a->reason_len)
        assert_memory_equal(a->reason, b->reason, a->reason_len);
    if (a->detail_len)
        assert_memory_equal(a->detail, b->detail, a->detail_len);
    if (a->row_len)
        assert_memory_equal(a->row, b->row, a->row_len);
}

/* Rewrites the checksum of an entry as dlq.h documents it: crc32 (zlib) of
 * { be64 seq, bytes 4.. }, stored little-endian in bytes 0..3. */
static void recrc(unsigned char *buf, size_t len, uint64_t seq)
{
    unsigned char key[8];
    for (int i = 0; i < 8; i++)
        key[i] = (unsigned char)(seq >> (56 - 8 * i));
    uLong c = crc32(0L, key, sizeof key);
    c = crc32(c, buf + 4, (uInt)(len - 4));
    for (int i = 0; i < 4; i++)
        buf[i] = (unsigned char)(c >> (8 * i));
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

static void test_encoded_size(void **state)
{
    (void)state;
    assert_int_equal(DLQ_HDR, 60);
    const char row[] = "{\"a\":1}";
    struct dlq_entry e = sample(1, "invalid", "no such field: a", row, sizeof row - 1);
    assert_int_equal(dlq_encoded_size(&e), 60 + 7 + 16 + 7);
    struct dlq_entry z;
    memset(&z, 0, sizeof z);
    assert_int_equal(dlq_encoded_size(&z), DLQ_HDR);
}

static void test_layout(void **state)
{
    (void)state;
    /* the documented little-endian layout, byte by byte */
    const char row[] = "{}";
    struct dlq_entry e = sample(42, "expired", "too old", row, 2);
    e.dest = 0x01020304;
    e.attempts = 0x0a0b0c0d;
    e.http_status = 503;
    e.enqueued_ms = 0x1122334455667788ULL;
    size_t len;
    unsigned char *buf = encode(&e, &len);
    assert_int_equal(len, 60 + 7 + 7 + 2);
    assert_int_equal(buf[4], 1);                     /* version */
    assert_int_equal(buf[5], 0);
    assert_int_equal(buf[6], 0);
    assert_int_equal(buf[7], 0);
    assert_int_equal(buf[8], 0x04);                  /* dest, LE */
    assert_int_equal(buf[11], 0x01);
    assert_int_equal(buf[12], 0x0d);                 /* attempts */
    assert_int_equal(buf[16], 503 & 0xff);           /* http status */
    assert_int_equal(buf[17], 503 >> 8);
    assert_int_equal(buf[20], 0x88);                 /* enqueued_ms */
    assert_int_equal(buf[27], 0x11);
    assert_int_equal(buf[52], 7);                    /* reason_len */
    assert_int_equal(buf[56], 7);                    /* detail_len */
    assert_memory_equal(buf + 60, "expired", 7);
    assert_memory_equal(buf + 67, "too old", 7);
    assert_memory_equal(buf + 74, "{}", 2);
    free(buf);
}

static void test_round_trip(void **state)
{
    (void)state;
    const char row[] = "{\"user\":\"x\",\"n\":[1,2,3]}";
    struct dlq_entry e = sample(123456789012345ULL, "invalid",
                                "BigQuery: no such field: user", row, sizeof row - 1);
    size_t len;
    unsigned char *buf = encode(&e, &len);

    struct dlq_entry d;
    unsigned char *copy;
    assert_int_equal(decode_copy(buf, len, e.seq, &d, &copy), 0);
    assert_same_entry(&e, &d);
    /* pointers point into the buffer given to decode */
    assert_ptr_equal(d.reason, (const char *)copy + DLQ_HDR);
    assert_ptr_equal(d.detail, d.reason + d.reason_len);
    assert_ptr_equal(d.row, d.detail + d.detail_len);
    free(copy);
    free(buf);
}

static void test_round_trip_empty_fields(void **state)
{
    (void)state;
    struct dlq_entry e;
    memset(&e, 0, sizeof e);
    e.seq = 1;
    e.reason = "";
    e.detail = "";
    e.row = "";
    size_t len;
    unsigned char *buf = encode(&e, &len);
    assert_int_equal(len, DLQ_HDR);
    struct dlq_entry d;
    unsigned char *copy;
    assert_int_equal(decode_copy(buf, len, 1, &d, &copy), 0);
    assert_same_entry(&e, &d);
    free(copy);
    free(buf);

    /* reason only, row only */
    const char row[] = "raw \x00\xff bytes";
    e = sample(2, "corrupt", "", row, sizeof row - 1);
    buf = encode(&e, &len);
    assert_int_equal(decode_copy(buf, len, 2, &d, &copy), 0);
    assert_same_entry(&e, &d);
    assert_int_equal(d.detail_len, 0);
    free(copy);
    free(buf);
}

static void test_round_trip_extremes(void **state)
{
    (void)state;
    size_t big = 200000;
    char *row = malloc(big);
    assert_non_null(row);
    for (size_t i = 0; i < big; i++)
        row[i] = (char)(i * 31);
    struct dlq_entry e = sample(UINT64_MAX, "x", "y", row, big);
    e.dest = UINT32_MAX;
    e.attempts = UINT32_MAX;
    e.http_status = UINT32_MAX;
    e.enqueued_ms = UINT64_MAX;
    e.dead_ms = UINT64_MAX - 1;
    e.first_attempt_ms = 0;
    e.last_attempt_ms = 1;
    size_t len;
    unsigned char *buf = encode(&e, &len);
    assert_int_equal(len, DLQ_HDR + 2 + big);
    struct dlq_entry d;
    unsigned char *copy;
    assert_int_equal(decode_copy(buf, len, UINT64_MAX, &d, &copy), 0);
    assert_same_entry(&e, &d);
    free(copy);
    free(buf);
    free(row);
}

static void test_every_bit_flip_fails(void **state)
{
    (void)state;
    const char row[] = "{\"k\":\"v\"}";
    struct dlq_entry e = sample(99, "invalid", "bad row", row, sizeof row - 1);
    size_t len;
    unsigned char *buf = encode(&e, &len);
    unsigned char *copy = malloc(len);
    assert_non_null(copy);
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, buf, len);
            copy[i] ^= (unsigned char)(1u << bit);
            struct dlq_entry d;
            if (dlq_decode(copy, len, 99, &d) != -1)
                fail_msg("flipping bit %d of byte %zu was not detected", bit, i);
        }
    }
    /* unchanged still decodes */
    memcpy(copy, buf, len);
    struct dlq_entry d;
    assert_int_equal(dlq_decode(copy, len, 99, &d), 0);
    free(copy);
    free(buf);
}

static void test_wrong_seq_fails(void **state)
{
    (void)state;
    const char row[] = "{}";
    struct dlq_entry e = sample(1000, "corrupt", "checksum mismatch", row, 2);
    size_t len;
    unsigned char *buf = encode(&e, &len);
    const uint64_t wrong[] = { 0, 1, 999, 1001, 1000ULL << 32, 1000ULL | (1ULL << 63),
                               UINT64_MAX };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        struct dlq_entry d;
        unsigned char *copy;
        if (decode_copy(buf, len, wrong[i], &d, &copy) != -1)
            fail_msg("decode under seq %llu accepted an entry stored under 1000",
                     (unsigned long long)wrong[i]);
        free(copy);
    }
    /* every single-bit change of the seq */
    for (int bit = 0; bit < 64; bit++) {
        struct dlq_entry d;
        unsigned char *copy;
        assert_int_equal(decode_copy(buf, len, 1000 ^ (1ULL << bit), &d, &copy), -1);
        free(copy);
    }
    free(buf);
}

static void test_truncated_fails(void **state)
{
    (void)state;
    const char row[] = "{\"a\":\"bcdef\"}";
    struct dlq_entry e = sample(5, "invalid", "detail text", row, sizeof row - 1);
    size_t len;
    unsigned char *buf = encode(&e, &len);
    for (size_t n = 0; n < len; n++) {
        struct dlq_entry d;
        unsigned char *copy;
        if (decode_copy(buf, n, 5, &d, &copy) != -1)
            fail_msg("a buffer cut to %zu of %zu bytes was accepted", n, len);
        free(copy);
    }
    /* one byte too many is damage too */
    unsigned char *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, buf, len);
    longer[len] = 0;
    struct dlq_entry d;
    assert_int_equal(dlq_decode(longer, len + 1, 5, &d), -1);
    free(longer);
    free(buf);
}

static void test_bad_version_fails(void **state)
{
    (void)state;
    const char row[] = "{}";
    struct dlq_entry e = sample(8, "r", "d", row, 2);
    size_t len;
    unsigned char *buf = encode(&e, &len);
    /* version 2 with a checksum that matches (computed as dlq.h documents:
     * crc32 of be64 seq then bytes 4..): still refused */
    buf[4] = 2;
    recrc(buf, len, 8);
    struct dlq_entry d;
    assert_int_equal(dlq_decode(buf, len, 8, &d), -1);
    /* and the same recomputation with version 1 is accepted: the checksum
     * above is the documented one */
    buf[4] = 1;
    recrc(buf, len, 8);
    assert_int_equal(dlq_decode(buf, len, 8, &d), 0);
    assert_int_equal(d.reason_len, 1);
    free(buf);
}

static void test_lengths_out_of_range(void **state)
{
    (void)state;
    /* entries whose checksum is right but whose reason/detail lengths do not
     * fit in the value must be refused, not read past the end */
    const char row[] = "{}";
    struct dlq_entry e = sample(11, "abc", "defg", row, 2);
    size_t len;
    unsigned char *buf = encode(&e, &len);
    const size_t body = len - DLQ_HDR;      /* 3 + 4 + 2 = 9 */
    struct {
        uint32_t rlen, dlen;
        int ok;
    } cases[] = {
        { 3, 4, 0 },                          /* as written */
        { 9, 0, 0 },                          /* everything is reason, no row */
        { 0, 9, 0 },                          /* everything is detail */
        { 10, 0, -1 },                        /* reason longer than the body */
        { 0, 10, -1 },
        { 5, 5, -1 },                         /* together longer */
        { UINT32_MAX, 0, -1 },
        { 0, UINT32_MAX, -1 },
        { 1, UINT32_MAX, -1 },
        { UINT32_MAX, UINT32_MAX, -1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        put_le32(buf + 52, cases[i].rlen);
        put_le32(buf + 56, cases[i].dlen);
        recrc(buf, len, 11);
        struct dlq_entry d;
        unsigned char *copy;
        int rc = decode_copy(buf, len, 11, &d, &copy);
        if (rc != cases[i].ok)
            fail_msg("reason_len %u detail_len %u over a %zu-byte body: rc %d, want %d",
                     cases[i].rlen, cases[i].dlen, body, rc, cases[i].ok);
        if (rc == 0) {
            assert_int_equal(d.reason_len + d.detail_len + d.row_len, body);
            assert_int_equal(d.reason_len, cases[i].rlen);
            assert_int_equal(d.detail_len, cases[i].dlen);
        }
        free(copy);
    }
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoded_size),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_round_trip_empty_fields),
        cmocka_unit_test(test_round_trip_extremes),
        cmocka_unit_test(test_every_bit_flip_fails),
        cmocka_unit_test(test_wrong_seq_fails),
        cmocka_unit_test(test_truncated_fails),
        cmocka_unit_test(test_bad_version_fails),
        cmocka_unit_test(test_lengths_out_of_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
