/*
 * test_bqrest.c -- unit tests for bqrest.h: insertAll request bodies, gzip,
 * URL paths, insertAll responses and the classification of error answers.
 *
 * Bodies are checked two ways: parsed back with jansson and compared with the
 * rows and ids that went in, and, for small cases, byte for byte against a
 * string written out by hand. gzip output is inflated with zlib (gzip
 * window bits) and its trailer checked. Response bodies are copied into
 * exact-length heap buffers before being parsed, so under ASan a read past
 * the end (the body need not be NUL-terminated) is caught. Error bodies have
 * the shape Google's front end sends (../shared/reference/bigquery-wire.md
 * section 3.5), pretty-printed as it does.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zlib.h>

#include "bqrest.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static struct bq_row mkrow(const char *json, const char *id)
{
    struct bq_row r = { json, strlen(json), id };
    return r;
}

/* Parses the body back and checks that it holds exactly these rows, ids and
 * options, and nothing else. */
static void check_body(const struct buf *b, const struct bq_row *rows, size_t n,
                       const struct bq_insert_opts *o)
{
    json_error_t jerr;
    json_t *root = json_loadb(b->data, b->len, JSON_ALLOW_NUL, &jerr);
    if (!root)
        fail_msg("body is not JSON: %s at %d: %.*s", jerr.text, jerr.position,
                 (int)(b->len > 300 ? 300 : b->len), b->data);
    assert_true(json_is_object(root));
    assert_int_equal(json_object_size(root), o && o->template_suffix ? 4 : 3);
    assert_true(json_is_boolean(json_object_get(root, "skipInvalidRows")));
    assert_true(json_is_boolean(json_object_get(root, "ignoreUnknownValues")));
    assert_int_equal(json_is_true(json_object_get(root, "skipInvalidRows")),
                     o ? o->skip_invalid_rows : false);
    assert_int_equal(json_is_true(json_object_get(root, "ignoreUnknownValues")),
                     o ? o->ignore_unknown_values : false);
    if (o && o->template_suffix)
        assert_string_equal(json_string_value(json_object_get(root, "templateSuffix")),
                            o->template_suffix);
    json_t *jrows = json_object_get(root, "rows");
    assert_true(json_is_array(jrows));
    assert_int_equal(json_array_size(jrows), n);
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(jrows, i);
        assert_true(json_is_object(r));
        json_t *want = json_loadb(rows[i].json, rows[i].len, JSON_ALLOW_NUL, &jerr);
        assert_non_null(want);
        if (!json_equal(json_object_get(r, "json"), want))
            fail_msg("row %zu differs: %.*s", i, (int)rows[i].len, rows[i].json);
        json_decref(want);
        if (rows[i].insert_id) {
            assert_int_equal(json_object_size(r), 2);
            assert_string_equal(json_string_value(json_object_get(r, "insertId")),
                                rows[i].insert_id);
        } else {
            assert_int_equal(json_object_size(r), 1);
            assert_null(json_object_get(r, "insertId"));
        }
        /* verbatim: the row's own bytes are in the body */
        assert_non_null(memmem(b->data, b->len, rows[i].json, rows[i].len));
    }
    json_decref(root);
    assert_int_equal(b->data[b->len], 0);
}

/* Inflates a gzip stream into a malloc'd buffer. */
static unsigned char *gunzip(const void *in, size_t len, size_t *outlen)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(inflateInit2(&zs, 15 + 16), Z_OK);
    size_t cap = len * 4 + 64, n = 0;
    unsigned char *out = malloc(cap);
    assert_non_null(out);
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)len;
    int zr;
    do {
        if (n == cap) {
            cap *= 2;
            out = realloc(out, cap);
            assert_non_null(out);
        }
        zs.next_out = out + n;
        zs.avail_out = (uInt)(cap - n);
        zr = inflate(&zs, Z_NO_FLUSH);
        n = cap - zs.avail_out;
        if (zr != Z_OK && zr != Z_STREAM_END && !(zr == Z_BUF_ERROR && n == cap))
            fail_msg("inflate: %d", zr);
    } while (zr != Z_STREAM_END);
    assert_int_equal(zs.avail_in, 0);     /* nothing after the trailer */
    inflateEnd(&zs);
    *outlen = n;
    return out;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Compresses, checks header, trailer and round trip. Returns compressed size. */
static size_t gzip_roundtrip(const void *in, size_t len, int level)
{
    struct buf out = { 0 };
    assert_int_equal(buf_puts(&out, "stale contents that must go"), 0);
    assert_int_equal(bqrest_gzip(in, len, &out, level), 0);
    assert_true(out.len >= 18);
    const unsigned char *z = (const unsigned char *)out.data;
    assert_int_equal(z[0], 0x1f);
    assert_int_equal(z[1], 0x8b);
    assert_int_equal(z[2], 8);      /* deflate */
    assert_int_equal(le32(z + out.len - 4), (uint32_t)len);
    assert_int_equal(le32(z + out.len - 8),
                     (uint32_t)crc32(crc32(0, Z_NULL, 0), in, (uInt)len));
    size_t dl = 0;
    unsigned char *d = gunzip(out.data, out.len, &dl);
    assert_int_equal(dl, len);
    if (len)
        assert_memory_equal(d, in, len);
    free(d);
    size_t zl = out.len;
    buf_free(&out);
    return zl;
}

/* A 200-byte-ish realistic row. */
static int make_row_text(char *dst, size_t size, unsigned i)
{
    return snprintf(dst, size,
                    "{\"ts\":\"2026-11-22T10:%02u:%02u.%06uZ\",\"user_id\":%u,"
                    "\"event\":\"page_view\",\"path\":\"/products/%u/details\","
                    "\"ua\":\"Mozilla/5.0 (X11; Linux x86_64)\",\"latency_ms\":%u.%u,"
                    "\"ok\":true}",
                    i / 60 % 60, i % 60, i * 7919 % 1000000, 100000 + i * 31, i % 997,
                    i % 250, i % 10);
}

/* Runs bqrest_parse_insertall on an exact-length heap copy of body, with the
 * results pre-filled with garbage. */
static int parse(const char *body, size_t n, struct bq_row_result *res, char *err,
                 size_t errlen)
{
    size_t len = strlen(body);
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, body, len);
    if (n)
        memset(res, 0x5a, n * sizeof *res);
    if (err && errlen)
        memset(err, 'x', errlen);
    int rc = bqrest_parse_insertall(copy, len, n, res, err, errlen);
    free(copy);
    if (err && errlen)
        assert_non_null(memchr(err, 0, errlen));
    for (size_t i = 0; rc == 0 && i < n; i++) {
        assert_true(res[i].fate == BQ_ROW_INSERTED || res[i].fate == BQ_ROW_INVALID ||
                    res[i].fate == BQ_ROW_RETRY);
        assert_non_null(memchr(res[i].reason, 0, sizeof res[i].reason));
        assert_non_null(memchr(res[i].location, 0, sizeof res[i].location));
        assert_non_null(memchr(res[i].message, 0, sizeof res[i].message));
        if (res[i].fate == BQ_ROW_INSERTED) {
            assert_string_equal(res[i].reason, "");
            assert_string_equal(res[i].location, "");
            assert_string_equal(res[i].message, "");
        }
    }
    return rc;
}

/* The parse must fail with a non-empty message. */
static void parse_fails(const char *body, size_t n)
{
    struct bq_row_result res[8];
    char err[256];
    assert_true(n <= 8);
    if (parse(body, n, res, err, sizeof err) != -1)
        fail_msg("accepted: %s", body);
    if (err[0] == 0)
        fail_msg("no error message for: %s", body);
    /* every row is to be resent, whatever was applied before the fault */
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(res[i].fate, BQ_ROW_RETRY);
        assert_string_equal(res[i].reason, "");
    }
}

static void expect_row(const struct bq_row_result *r, enum bq_row_fate fate,
                       const char *reason, const char *location, const char *message)
{
    assert_int_equal(r->fate, fate);
    assert_string_equal(r->reason, reason);
    assert_string_equal(r->location, location);
    if (message)
        assert_string_equal(r->message, message);
}

/* Classifies an exact-length heap copy of body. */
static enum bq_action classify(long status, const char *body, struct bq_error *e)
{
    size_t len = body ? strlen(body) : 0;
    char *copy = body ? malloc(len ? len : 1) : NULL;
    if (body) {
        assert_non_null(copy);
        memcpy(copy, body, len);
    }
    memset(e, 0x5a, sizeof *e);
    enum bq_action a = bqrest_classify(status, copy, len, e);
    free(copy);
    assert_int_equal(e->http_status, status);
    assert_non_null(memchr(e->reason, 0, sizeof e->reason));
    assert_non_null(memchr(e->status, 0, sizeof e->status));
    assert_non_null(memchr(e->message, 0, sizeof e->message));
    return a;
}

/* ------------------------------------------------------------------------ */
/* Request body                                                             */
/* ------------------------------------------------------------------------ */

static void test_body_exact_bytes(void **state)
{
    (void)state;
    struct bq_row rows[] = {
        mkrow("{\"a\":1}", "id-1"),
        mkrow("{ \"b\" : [true, null] }", NULL),
        mkrow("{}", "x"),
    };
    struct bq_insert_opts o = { false, false, NULL };
    struct buf b = { 0 };
    assert_int_equal(bqrest_insertall_body(&b, rows, 3, &o), 0);
    assert_string_equal(b.data,
                        "{\"skipInvalidRows\":false,\"ignoreUnknownValues\":false,\"rows\":["
                        "{\"insertId\":\"id-1\",\"json\":{\"a\":1}},"
                        "{\"json\":{ \"b\" : [true, null] }},"
                        "{\"insertId\":\"x\",\"json\":{}}]}");
    assert_int_equal(b.len, strlen(b.data));
    check_body(&b, rows, 3, &o);

    struct bq_insert_opts o2 = { true, true, "_20261122" };
    buf_reset(&b);
    assert_int_equal(bqrest_insertall_body(&b, rows, 1, &o2), 0);
    assert_string_equal(b.data,
                        "{\"skipInvalidRows\":true,\"ignoreUnknownValues\":true,"
                        "\"templateSuffix\":\"_20261122\",\"rows\":["
                        "{\"insertId\":\"id-1\",\"json\":{\"a\":1}}]}");
    check_body(&b, rows, 1, &o2);

    struct bq_insert_opts o3 = { true, false, NULL };
    buf_reset(&b);
    assert_int_equal(bqrest_insertall_body(&b, rows + 1, 1, &o3), 0);
    assert_string_equal(b.data,
                        "{\"skipInvalidRows\":true,\"ignoreUnknownValues\":false,\"rows\":["
                        "{\"json\":{ \"b\" : [true, null] }}]}");
    buf_free(&b);
}

static void test_body_unicode_and_escapes(void **state)
{
    (void)state;
    struct bq_row rows[] = {
        mkrow("{\"name\":\"Zo\xc3\xab \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80\"}", "plain"),
        mkrow("{\"esc\":\"\\u00e9\\ud83d\\ude00\\\"q\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\"}",
              "quote\"inside"),
        mkrow("{\"n\":1}", "back\\slash"),
        mkrow("{\"n\":2}", "line\nbreak\r\ttab"),
        mkrow("{\"n\":3}", "ctl\x01\x1f\x7f"),
        mkrow("{\"n\":4}", "\xd0\xb8\xd0\xb4-\xc3\xbc-\xf0\x9f\x94\x91"),
        mkrow("{\"n\":5}", NULL),
        mkrow("{\"n\":6}", ""),
    };
    size_t n = sizeof rows / sizeof rows[0];
    struct bq_insert_opts o = { true, false, "suf\"fix\\\x02\xc3\xa9" };
    struct buf b = { 0 };
    assert_int_equal(bqrest_insertall_body(&b, rows, n, &o), 0);
    check_body(&b, rows, n, &o);
    /* the escapes themselves, byte for byte */
    static const char *const want[] = {
        "\"templateSuffix\":\"suf\\\"fix\\\\\\u0002\xc3\xa9\"",
        "{\"insertId\":\"plain\",\"json\":{\"name\":\"Zo\xc3\xab \xe6\x9d\xb1",
        "{\"insertId\":\"quote\\\"inside\",\"json\":{\"esc\":\"\\u00e9\\ud83d",
        "{\"insertId\":\"back\\\\slash\",\"json\":{\"n\":1}}",
        "{\"insertId\":\"line\\nbreak\\r\\ttab\",\"json\":{\"n\":2}}",
        "{\"insertId\":\"ctl\\u0001\\u001f\x7f\",\"json\":{\"n\":3}}",
        "{\"insertId\":\"\xd0\xb8\xd0\xb4-\xc3\xbc-\xf0\x9f\x94\x91\",\"json\":{\"n\":4}}",
        ",{\"json\":{\"n\":5}},",
        ",{\"insertId\":\"\",\"json\":{\"n\":6}}]}",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(b.data, want[i]))
            fail_msg("missing %s in %s", want[i], b.data);
    buf_free(&b);
}

static void test_body_roundtrip_mixed(void **state)
{
    (void)state;
    struct bq_row rows[] = {
        mkrow("{\"name\":\"Zo\xc3\xab \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80\"}", "plain"),
        mkrow("{\"esc\":\"\\u00e9\\ud83d\\ude00\\\"q\\\"\\\\\\/\\b\\f\\n\\r\\t\"}",
              "quote\"inside"),
        mkrow("{\"nested\":{\"a\":[1,2.5e10,-0,{\"b\":null}]},\"k\\u00e9y\":\"v\"}",
              "back\\slash"),
        mkrow("{\"n\":1}", "line\nbreak\r\ttab"),
        mkrow("{\"n\":2}", "ctl\x01\x1f\x7f"),
        mkrow("{\"n\":3}", "\xd0\xb8\xd0\xb4-\xc3\xbc-\xf0\x9f\x94\x91"),
        mkrow("{\"n\":4}", NULL),
        mkrow("{\"n\":5}", ""),
        mkrow("{\r\n\t\"ws\" :\t\"x\" }", NULL),
    };
    size_t n = sizeof rows / sizeof rows[0];
    const struct bq_insert_opts opts[] = {
        { false, false, NULL },
        { true, true, NULL },
        { true, false, "suf\"fix\\\x02\xc3\xa9$" },
        { false, true, "" },
    };
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        struct buf b = { 0 };
        assert_int_equal(bqrest_insertall_body(&b, rows, n, &opts[k]), 0);
        check_body(&b, rows, n, &opts[k]);
        buf_free(&b);
    }
}

static void test_body_verbatim_big_number(void **state)
{
    (void)state;
    /* The row is not re-serialised: a number jansson could not hold goes
     * through untouched. */
    const char *row = "{\"big\":12345678901234567890123,\"f\":1.0000000000000000001}";
    struct bq_row r = mkrow(row, "i");
    struct buf b = { 0 };
    assert_int_equal(bqrest_insertall_body(&b, &r, 1, NULL), 0);
    assert_non_null(strstr(b.data, row));
    buf_free(&b);
}

static void test_body_null_opts_and_no_rows(void **state)
{
    (void)state;
    struct buf b = { 0 };
    assert_int_equal(bqrest_insertall_body(&b, NULL, 0, NULL), 0);
    assert_string_equal(b.data,
                        "{\"skipInvalidRows\":false,\"ignoreUnknownValues\":false,\"rows\":[]}");
    check_body(&b, NULL, 0, NULL);
    buf_free(&b);
}

static void test_body_appends(void **state)
{
    (void)state;
    struct buf b = { 0 };
    assert_int_equal(buf_puts(&b, "PREFIX"), 0);
    struct bq_row r = mkrow("{\"a\":1}", "id");
    assert_int_equal(bqrest_insertall_body(&b, &r, 1, NULL), 0);
    assert_memory_equal(b.data, "PREFIX{\"skipInvalidRows\":false", 30);
    assert_int_equal(b.len, strlen(b.data));
    buf_free(&b);
}

/* The body is exactly the envelope plus BQREST_ROW_OVERHEAD per row (minus
 * the comma after the last one), so the sender can size batches without
 * building them. */
static void test_body_size_matches_overhead(void **state)
{
    (void)state;
    enum { N = 500 };
    static char texts[N][256];
    static char ids[N][33];
    static struct bq_row rows[N];
    size_t want = strlen("{\"skipInvalidRows\":false,\"ignoreUnknownValues\":false,\"rows\":[")
                  + strlen("]}") - 1;
    for (unsigned i = 0; i < N; i++) {
        int tl = make_row_text(texts[i], sizeof texts[i], i);
        snprintf(ids[i], sizeof ids[i], "%08x%08x%08x%08x", i, i * 2654435761u, ~i, i ^ 0x5bd1e995);
        rows[i] = (struct bq_row){ texts[i], (size_t)tl, ids[i] };
        want += BQREST_ROW_OVERHEAD(strlen(ids[i])) + (size_t)tl;
    }
    struct buf b = { 0 };
    assert_int_equal(bqrest_insertall_body(&b, rows, N, NULL), 0);
    assert_int_equal(b.len, want);
    check_body(&b, rows, N, NULL);

    /* without ids: 10 bytes of envelope per row */
    size_t want2 = want;
    for (unsigned i = 0; i < N; i++) {
        want2 -= BQREST_ROW_OVERHEAD(strlen(ids[i])) - 10;
        rows[i].insert_id = NULL;
    }
    buf_reset(&b);
    assert_int_equal(bqrest_insertall_body(&b, rows, N, NULL), 0);
    assert_int_equal(b.len, want2);
    check_body(&b, rows, N, NULL);

    /* The size is computed up front and reserved once: a buffer that
     * already has room for the body (plus its NUL and a byte of estimate
     * slack) is never reallocated. */
    struct buf c = { 0 };
    assert_int_equal(buf_reserve(&c, want2 + 2), 0);
    char *before = c.data;
    size_t cap = c.cap;
    assert_int_equal(bqrest_insertall_body(&c, rows, N, NULL), 0);
    assert_ptr_equal(c.data, before);
    assert_int_equal(c.cap, cap);
    assert_int_equal(c.len, want2);
    buf_free(&c);
    buf_free(&b);
}

static void test_body_max_len_id(void **state)
{
    (void)state;
    char id[129];
    memset(id, 'Z', 128);
    id[128] = 0;
    id[0] = '"';
    id[127] = '\\';
    struct bq_row r = mkrow("{\"x\":\"y\"}", id);
    struct buf b = { 0 };
    assert_int_equal(bqrest_insertall_body(&b, &r, 1, NULL), 0);
    check_body(&b, &r, 1, NULL);
    buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* gzip                                                                     */
/* ------------------------------------------------------------------------ */

static void test_gzip_roundtrip_levels(void **state)
{
    (void)state;
    enum { N = 500 };
    static char texts[N][256];
    static char ids[N][33];
    static struct bq_row rows[N];
    for (unsigned i = 0; i < N; i++) {
        int tl = make_row_text(texts[i], sizeof texts[i], i);
        snprintf(ids[i], sizeof ids[i], "%032x", i * 2654435761u);
        rows[i] = (struct bq_row){ texts[i], (size_t)tl, ids[i] };
    }
    struct buf body = { 0 };
    assert_int_equal(bqrest_insertall_body(&body, rows, N, NULL), 0);
    size_t z0 = gzip_roundtrip(body.data, body.len, 0);
    size_t z1 = gzip_roundtrip(body.data, body.len, 1);
    size_t z6 = gzip_roundtrip(body.data, body.len, 6);
    size_t z9 = gzip_roundtrip(body.data, body.len, 9);
    assert_true(z1 < body.len / 3);
    assert_true(z9 <= z1);
    assert_int_equal(z0, z6);     /* 0 means zlib's default, which is 6 */
    for (int l = 2; l <= 8; l++)
        gzip_roundtrip(body.data, body.len, l);
    buf_free(&body);
}

static void test_gzip_small_and_empty(void **state)
{
    (void)state;
    gzip_roundtrip("", 0, 6);
    gzip_roundtrip("x", 1, 1);
    gzip_roundtrip("{\"a\":1}", 7, 9);
    gzip_roundtrip(NULL, 0, 1);
}

static void test_gzip_incompressible(void **state)
{
    (void)state;
    size_t len = 3u << 20;
    unsigned char *in = malloc(len);
    assert_non_null(in);
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        in[i] = (unsigned char)x;
    }
    size_t z = gzip_roundtrip(in, len, 6);
    assert_true(z > len && z < len + len / 100 + 64);
    gzip_roundtrip(in, len, 1);
    free(in);
}

/* One compressor reused over many inputs (as the sender uses it): every
 * output is one gzip member zlib inflates back, with the right CRC and
 * length, at every level, for JSON-like, repetitive and random input, and a
 * big input is no help to the small one after it (no state carried over). */
static void test_gzip_compressor_reused(void **state)
{
    (void)state;
    size_t cap = 300000;
    unsigned char *in = malloc(cap);
    assert_non_null(in);
    uint64_t x = 0x2545f4914f6cdd1du;
    for (size_t i = 0; i < cap; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        in[i] = i < cap / 2 ? (unsigned char)"{\"msg\":\"row\",\"i\":12345}"[i % 24] ^ (x % 7 == 0)
                            : (unsigned char)x;
    }
    static const size_t lens[] = { 0, 1, 15, 16, 63, 64, 65, 200, 4095, 118000, 150000, 300000 };
    for (int level = 0; level <= 9; level++) {
        struct bqrest_gz *z = bqrest_gz_new(level);
        assert_non_null(z);
        struct buf out = { 0 };
        for (int round = 0; round < 2; round++) {
            for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
                size_t off = lens[k] == cap ? 0 : 7;
                size_t len = lens[k] == cap ? cap : lens[k];
                assert_int_equal(bqrest_gz_compress(z, in + off, len, &out), 0);
                const unsigned char *g = (const unsigned char *)out.data;
                assert_true(out.len >= 18);
                assert_int_equal(g[0], 0x1f);
                assert_int_equal(g[1], 0x8b);
                assert_int_equal(g[2], 8);
                assert_int_equal(out.data[out.len], 0);
                assert_int_equal(le32(g + out.len - 4), (uint32_t)len);
                assert_int_equal(le32(g + out.len - 8),
                                 (uint32_t)crc32(crc32(0, Z_NULL, 0), in + off, (uInt)len));
                size_t dl = 0;
                unsigned char *d = gunzip(out.data, out.len, &dl);
                assert_int_equal(dl, len);
                if (len)
                    assert_memory_equal(d, in + off, len);
                free(d);
            }
        }
        buf_free(&out);
        bqrest_gz_free(z);
    }
    bqrest_gz_free(NULL);
    free(in);
}

static void test_gzip_bad_level(void **state)
{
    (void)state;
    struct buf out = { 0 };
    errno = 0;
    assert_int_equal(bqrest_gzip("abc", 3, &out, -1), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(bqrest_gzip("abc", 3, &out, 10), -1);
    errno = 0;
    assert_null(bqrest_gz_new(-1));
    assert_int_equal(errno, EINVAL);
    assert_null(bqrest_gz_new(10));
    assert_int_equal(bqrest_gzip("abc", 3, &out, 1), 0);
    assert_int_equal(bqrest_gzip("abcd", 4, &out, 1), 0);   /* reuse */
    size_t dl;
    unsigned char *d = gunzip(out.data, out.len, &dl);
    assert_int_equal(dl, 4);
    assert_memory_equal(d, "abcd", 4);
    free(d);
    buf_free(&out);
}

/* ------------------------------------------------------------------------ */
/* URL paths                                                                */
/* ------------------------------------------------------------------------ */

static void path_is(int insertall, const char *p, const char *d, const char *t,
                    const char *want)
{
    struct buf b = { 0 };
    int rc = insertall ? bqrest_insertall_path(&b, p, d, t) : bqrest_table_path(&b, p, d, t);
    assert_int_equal(rc, 0);
    assert_string_equal(b.data, want);
    assert_int_equal(b.len, strlen(want));
    buf_free(&b);
}

static void test_paths(void **state)
{
    (void)state;
    path_is(1, "my-project", "my_dataset", "events",
            "/bigquery/v2/projects/my-project/datasets/my_dataset/tables/events/insertAll");
    path_is(0, "my-project", "my_dataset", "events",
            "/bigquery/v2/projects/my-project/datasets/my_dataset/tables/events");
    /* partition decorator */
    path_is(1, "p", "d", "events$20261122",
            "/bigquery/v2/projects/p/datasets/d/tables/events%2420261122/insertAll");
    /* '/', space, '?', '#', '%', '+', ':' and unicode */
    path_is(1, "example.com:proj", "d s", "a/b?c#d%e+f",
            "/bigquery/v2/projects/example.com%3Aproj/datasets/d%20s/tables/"
            "a%2Fb%3Fc%23d%25e%2Bf/insertAll");
    path_is(0, "p", "d", "tabl\xc3\xa9_\xe6\x97\xa5\xe6\x9c\xac",
            "/bigquery/v2/projects/p/datasets/d/tables/tabl%C3%A9_%E6%97%A5%E6%9C%AC");
    /* the unreserved set stays as it is */
    path_is(0, "AZaz09_.~-", "d", "t",
            "/bigquery/v2/projects/AZaz09_.~-/datasets/d/tables/t");
    path_is(0, "p", "d", "\x01\x7f\xff\"'<>\\",
            "/bigquery/v2/projects/p/datasets/d/tables/%01%7F%FF%22%27%3C%3E%5C");
}

static void test_paths_append_and_errors(void **state)
{
    (void)state;
    struct buf b = { 0 };
    assert_int_equal(buf_puts(&b, "https://bigquery.googleapis.com"), 0);
    assert_int_equal(bqrest_insertall_path(&b, "p", "d", "t"), 0);
    assert_string_equal(b.data, "https://bigquery.googleapis.com"
                                "/bigquery/v2/projects/p/datasets/d/tables/t/insertAll");
    buf_reset(&b);
    assert_int_equal(buf_puts(&b, "keep"), 0);
    errno = 0;
    assert_int_equal(bqrest_insertall_path(&b, "", "d", "t"), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(bqrest_insertall_path(&b, "p", NULL, "t"), -1);
    assert_int_equal(bqrest_table_path(&b, "p", "d", ""), -1);
    assert_int_equal(bqrest_table_path(&b, NULL, "d", "t"), -1);
    assert_string_equal(b.data, "keep");
    assert_int_equal(b.len, 4);
    buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* insertAll responses                                                      */
/* ------------------------------------------------------------------------ */

static void test_parse_all_inserted(void **state)
{
    (void)state;
    struct bq_row_result res[5];
    char err[128];
    assert_int_equal(parse("{\n  \"kind\": \"bigquery#tableDataInsertAllResponse\"\n}\n", 5,
                           res, err, sizeof err), 0);
    assert_string_equal(err, "");
    for (int i = 0; i < 5; i++)
        expect_row(&res[i], BQ_ROW_INSERTED, "", "", "");
    assert_int_equal(parse("{\"kind\":\"bigquery#tableDataInsertAllResponse\","
                           "\"insertErrors\":[]}", 5, res, err, sizeof err), 0);
    for (int i = 0; i < 5; i++)
        expect_row(&res[i], BQ_ROW_INSERTED, "", "", "");
    assert_int_equal(parse("{\"insertErrors\":null}", 5, res, err, sizeof err), 0);
    assert_int_equal(parse("{}", 5, res, err, sizeof err), 0);
    assert_int_equal(parse(" {} \n", 0, res, err, sizeof err), 0);
    assert_int_equal(parse("{}", 0, NULL, err, sizeof err), 0);
}

static void test_parse_stopped_and_invalid(void **state)
{
    (void)state;
    /* skipInvalidRows=false: the bad row is invalid, all others stopped */
    const char *body =
        "{\n"
        "  \"kind\": \"bigquery#tableDataInsertAllResponse\",\n"
        "  \"insertErrors\": [\n"
        "    {\n"
        "      \"index\": 1,\n"
        "      \"errors\": [\n"
        "        {\n"
        "          \"reason\": \"invalid\",\n"
        "          \"location\": \"age\",\n"
        "          \"debugInfo\": \"\",\n"
        "          \"message\": \"Cannot convert value to integer (bad value): abc\"\n"
        "        }\n"
        "      ]\n"
        "    },\n"
        "    {\"index\": 0, \"errors\": [{\"reason\": \"stopped\", \"location\": \"\","
        " \"debugInfo\": \"\", \"message\": \"\"}]},\n"
        "    {\"index\": 2, \"errors\": [{\"reason\": \"stopped\", \"location\": \"\","
        " \"debugInfo\": \"\", \"message\": \"\"}]}\n"
        "  ]\n"
        "}\n";
    struct bq_row_result res[4];
    char err[128];
    assert_int_equal(parse(body, 4, res, err, sizeof err), 0);
    expect_row(&res[0], BQ_ROW_RETRY, "stopped", "", "");
    expect_row(&res[1], BQ_ROW_INVALID, "invalid", "age",
               "Cannot convert value to integer (bad value): abc");
    expect_row(&res[2], BQ_ROW_RETRY, "stopped", "", "");
    expect_row(&res[3], BQ_ROW_INSERTED, "", "", "");
}

static void test_parse_retry_reasons(void **state)
{
    (void)state;
    static const char *const reasons[] = {
        "stopped", "backendError", "internalError", "timeout", "rateLimitExceeded",
        "quotaExceeded",
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"insertErrors\":[{\"index\":2,\"errors\":[{\"reason\":\"%s\","
                 "\"location\":\"col\",\"message\":\"m %s\"}]}]}", reasons[i], reasons[i]);
        struct bq_row_result res[3];
        char want[64];
        snprintf(want, sizeof want, "m %s", reasons[i]);
        assert_int_equal(parse(body, 3, res, NULL, 0), 0);
        expect_row(&res[0], BQ_ROW_INSERTED, "", "", "");
        expect_row(&res[1], BQ_ROW_INSERTED, "", "", "");
        expect_row(&res[2], BQ_ROW_RETRY, reasons[i], "col", want);
    }
}

static void test_parse_unknown_reasons_are_invalid(void **state)
{
    (void)state;
    static const char *const reasons[] = {
        "invalid", "accessDenied", "notFound", "billingNotEnabled", "someFutureReason",
        "", "Stopped", "STOPPED", "stopped ",
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"insertErrors\":[{\"index\":0,\"errors\":[{\"reason\":\"%s\","
                 "\"message\":\"why\"}]}]}", reasons[i]);
        struct bq_row_result res[1];
        assert_int_equal(parse(body, 1, res, NULL, 0), 0);
        expect_row(&res[0], BQ_ROW_INVALID, reasons[i], "", "why");
    }
    /* reason missing or not a string */
    struct bq_row_result res[2];
    assert_int_equal(parse("{\"insertErrors\":[{\"index\":0,\"errors\":[{\"message\":\"m\"}]},"
                           "{\"index\":1,\"errors\":[{\"reason\":7,\"location\":[1]}]}]}",
                           2, res, NULL, 0), 0);
    expect_row(&res[0], BQ_ROW_INVALID, "", "", "m");
    expect_row(&res[1], BQ_ROW_INVALID, "", "", "");
}

static void test_parse_several_errors_per_row(void **state)
{
    (void)state;
    struct bq_row_result res[4];
    char err[128];
    assert_int_equal(parse("{\"insertErrors\":["
                           "{\"index\":0,\"errors\":[{\"reason\":\"stopped\"},"
                           "{\"reason\":\"invalid\",\"location\":\"b\",\"message\":\"bad b\"}]},"
                           "{\"index\":1,\"errors\":[{\"reason\":\"backendError\",\"message\":\"1\"},"
                           "{\"reason\":\"timeout\",\"message\":\"2\"}]},"
                           "{\"index\":2,\"errors\":[{\"reason\":\"invalid\",\"location\":\"a\"},"
                           "{\"reason\":\"invalid\",\"location\":\"b\"}]},"
                           "{\"index\":3,\"errors\":[{\"reason\":\"invalid\",\"location\":\"a\"},"
                           "{\"reason\":\"stopped\"}]}]}",
                           4, res, err, sizeof err), 0);
    expect_row(&res[0], BQ_ROW_INVALID, "invalid", "b", "bad b");
    expect_row(&res[1], BQ_ROW_RETRY, "backendError", "", "1");
    expect_row(&res[2], BQ_ROW_INVALID, "invalid", "a", "");
    expect_row(&res[3], BQ_ROW_INVALID, "invalid", "a", "");
}

static void test_parse_duplicate_indexes(void **state)
{
    (void)state;
    struct bq_row_result res[3];
    char err[128];
    assert_int_equal(parse("{\"insertErrors\":["
                           "{\"index\":2,\"errors\":[{\"reason\":\"stopped\"}]},"
                           "{\"index\":0,\"errors\":[{\"reason\":\"invalid\",\"location\":\"x\"}]},"
                           "{\"index\":2,\"errors\":[{\"reason\":\"invalid\",\"location\":\"y\"}]},"
                           "{\"index\":0,\"errors\":[{\"reason\":\"stopped\"}]},"
                           "{\"index\":1,\"errors\":[{\"reason\":\"timeout\",\"message\":\"t1\"}]},"
                           "{\"index\":1,\"errors\":[{\"reason\":\"backendError\",\"message\":\"t2\"}]}"
                           "]}", 3, res, err, sizeof err), 0);
    expect_row(&res[0], BQ_ROW_INVALID, "invalid", "x", "");
    expect_row(&res[1], BQ_ROW_RETRY, "timeout", "", "t1");
    expect_row(&res[2], BQ_ROW_INVALID, "invalid", "y", "");
}

static void test_parse_entry_without_errors(void **state)
{
    (void)state;
    struct bq_row_result res[5];
    assert_int_equal(parse("{\"insertErrors\":["
                           "{\"index\":0},"
                           "{\"index\":1,\"errors\":[]},"
                           "{\"index\":2,\"errors\":null},"
                           "{\"index\":3,\"errors\":[]},"
                           "{\"index\":3,\"errors\":[{\"reason\":\"stopped\"}]}]}",
                           5, res, NULL, 0), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].fate, BQ_ROW_INVALID);
        assert_string_equal(res[i].reason, "");
        assert_true(res[i].message[0] != 0);
    }
    expect_row(&res[3], BQ_ROW_RETRY, "stopped", "", "");
    expect_row(&res[4], BQ_ROW_INSERTED, "", "", "");
}

static void test_parse_bad_index(void **state)
{
    (void)state;
    parse_fails("{\"insertErrors\":[{\"index\":3,\"errors\":[{\"reason\":\"invalid\"}]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":-1,\"errors\":[{\"reason\":\"invalid\"}]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":4294967296,\"errors\":[]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":9223372036854775807,\"errors\":[]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":-9223372036854775808,\"errors\":[]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":99999999999999999999,\"errors\":[]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":\"1\",\"errors\":[{\"reason\":\"invalid\"}]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":1.0,\"errors\":[{\"reason\":\"invalid\"}]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":1.5,\"errors\":[]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":null,\"errors\":[]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":true,\"errors\":[]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"errors\":[{\"reason\":\"invalid\"}]}]}", 3);
    parse_fails("{\"insertErrors\":[{\"index\":0,\"errors\":[{\"reason\":\"invalid\"}]}]}", 0);
    /* a bad entry after good ones still fails the whole response */
    parse_fails("{\"insertErrors\":[{\"index\":0,\"errors\":[{\"reason\":\"invalid\"}]},"
                "{\"index\":7,\"errors\":[{\"reason\":\"invalid\"}]}]}", 3);

    struct bq_row_result res[3];
    char err[256];
    assert_int_equal(parse("{\"insertErrors\":[{\"index\":3,\"errors\":[]}]}", 3, res, err,
                           sizeof err), -1);
    assert_non_null(strstr(err, "out of range"));
    assert_int_equal(parse("{\"insertErrors\":[{\"index\":\"0\"}]}", 3, res, err,
                           sizeof err), -1);
    assert_non_null(strstr(err, "index"));
}

static void test_parse_malformed(void **state)
{
    (void)state;
    parse_fails("", 2);
    parse_fails("   ", 2);
    parse_fails("not json", 2);
    parse_fails("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", 2);
    parse_fails("{", 2);
    parse_fails("{\"insertErrors\":[{\"index\":0,\"errors\":[{\"reason\":\"invalid\"}]}", 2);
    parse_fails("{} {}", 2);
    parse_fails("{}x", 2);
    parse_fails("[]", 2);
    parse_fails("[{\"index\":0}]", 2);
    parse_fails("\"str\"", 2);
    parse_fails("42", 2);
    parse_fails("null", 2);
    parse_fails("{\"insertErrors\":{}}", 2);
    parse_fails("{\"insertErrors\":\"none\"}", 2);
    parse_fails("{\"insertErrors\":0}", 2);
    parse_fails("{\"insertErrors\":[1]}", 2);
    parse_fails("{\"insertErrors\":[null]}", 2);
    parse_fails("{\"insertErrors\":[[0]]}", 2);
    parse_fails("{\"insertErrors\":[{\"index\":0,\"errors\":{}}]}", 2);
    parse_fails("{\"insertErrors\":[{\"index\":0,\"errors\":\"invalid\"}]}", 2);
    parse_fails("{\"insertErrors\":[{\"index\":0,\"errors\":[1]}]}", 2);
    parse_fails("{\"insertErrors\":[{\"index\":0,\"errors\":[{\"reason\":\"stopped\"},null]}]}", 2);
    parse_fails("{\"kind\":\"x\",\"insertErrors\":[],\"kind\":\"\xff\"}", 2);   /* bad UTF-8 */
    /* an error answer passed by mistake must not count rows as inserted */
    parse_fails("{\"error\":{\"code\":500,\"message\":\"x\",\"status\":\"INTERNAL\"}}", 2);

    /* a NUL byte inside the length is not JSON */
    struct bq_row_result res[2];
    char err[128];
    assert_int_equal(bqrest_parse_insertall("{}\0", 3, 2, res, err, sizeof err), -1);
    assert_int_equal(bqrest_parse_insertall(NULL, 0, 2, res, err, sizeof err), -1);
    /* err may be absent or tiny */
    assert_int_equal(bqrest_parse_insertall("x", 1, 2, res, NULL, 0), -1);
    char tiny[6];
    assert_int_equal(bqrest_parse_insertall("x", 1, 2, res, tiny, sizeof tiny), -1);
    assert_int_equal(strlen(tiny), 5);
    assert_int_equal(bqrest_parse_insertall("x", 1, 2, res, tiny, 1), -1);
    assert_string_equal(tiny, "");
}

static void test_parse_truncates_long_fields(void **state)
{
    (void)state;
    struct buf body = { 0 };
    char *big = malloc(100001);
    assert_non_null(big);
    memset(big, 'm', 100000);
    big[100000] = 0;
    /* 2-byte UTF-8 chars from byte 0: a cut at 511 would split one */
    struct buf uni = { 0 };
    for (int i = 0; i < 600; i++)
        assert_int_equal(buf_puts(&uni, "\xc3\xa9"), 0);
    /* 3-byte chars after one ASCII byte */
    struct buf uni3 = { 0 };
    assert_int_equal(buf_puts(&uni3, "L"), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(buf_puts(&uni3, "\xe6\x97\xa5"), 0);
    assert_int_equal(buf_printf(&body,
                                "{\"insertErrors\":["
                                "{\"index\":0,\"errors\":[{\"reason\":\"%.100s\",\"location\":\"%.300s\","
                                "\"message\":\"%s\"}]},"
                                "{\"index\":1,\"errors\":[{\"reason\":\"invalid\",\"location\":\"%s\","
                                "\"message\":\"%s\"}]}]}",
                                big, big, big, uni3.data, uni.data), 0);
    struct bq_row_result res[2];
    char err[128];
    assert_int_equal(parse(body.data, 2, res, err, sizeof err), 0);
    assert_int_equal(res[0].fate, BQ_ROW_INVALID);
    assert_int_equal(strlen(res[0].reason), sizeof res[0].reason - 1);
    assert_int_equal(strlen(res[0].location), sizeof res[0].location - 1);
    assert_int_equal(strlen(res[0].message), sizeof res[0].message - 1);
    assert_memory_equal(res[0].message, big, sizeof res[0].message - 1);
    /* cuts fall on character boundaries */
    assert_int_equal(strlen(res[1].message), 510);
    assert_memory_equal(res[1].message, uni.data, 510);
    assert_int_equal(strlen(res[1].location), 1 + 3 * 42);
    assert_memory_equal(res[1].location, uni3.data, 1 + 3 * 42);
    free(big);
    buf_free(&uni);
    buf_free(&uni3);
    buf_free(&body);
}

static void test_parse_many_rows(void **state)
{
    (void)state;
    enum { N = 50000 };
    struct buf body = { 0 };
    assert_int_equal(buf_puts(&body, "{\"kind\":\"bigquery#tableDataInsertAllResponse\","
                                     "\"insertErrors\":["), 0);
    for (int i = 0; i < N; i += 2)
        assert_int_equal(buf_printf(&body, "%s{\"index\":%d,\"errors\":[{\"reason\":\"%s\"}]}",
                                    i ? "," : "", N - 1 - i, i % 4 ? "invalid" : "stopped"), 0);
    assert_int_equal(buf_puts(&body, "]}"), 0);
    struct bq_row_result *res = malloc(N * sizeof *res);
    assert_non_null(res);
    assert_int_equal(bqrest_parse_insertall(body.data, body.len, N, res, NULL, 0), 0);
    for (int i = 0; i < N; i++) {
        int listed = (N - 1 - i) % 2 == 0;
        int k = N - 1 - i;
        if (!listed)
            assert_int_equal(res[i].fate, BQ_ROW_INSERTED);
        else
            assert_int_equal(res[i].fate, k % 4 ? BQ_ROW_INVALID : BQ_ROW_RETRY);
    }
    free(res);
    buf_free(&body);
}

/* ------------------------------------------------------------------------ */
/* Classification                                                           */
/* ------------------------------------------------------------------------ */

#define GOOGLE_ERROR(code, msg, domain, reason, status)                              \
    "{\n"                                                                            \
    "  \"error\": {\n"                                                               \
    "    \"code\": " #code ",\n"                                                     \
    "    \"message\": \"" msg "\",\n"                                                \
    "    \"errors\": [\n"                                                            \
    "      {\n"                                                                      \
    "        \"message\": \"" msg "\",\n"                                            \
    "        \"domain\": \"" domain "\",\n"                                          \
    "        \"reason\": \"" reason "\"\n"                                           \
    "      }\n"                                                                      \
    "    ],\n"                                                                       \
    "    \"status\": \"" status "\"\n"                                               \
    "  }\n"                                                                          \
    "}\n"

static const char body_401[] =
    "{\n"
    "  \"error\": {\n"
    "    \"code\": 401,\n"
    "    \"message\": \"Request had invalid authentication credentials. Expected OAuth 2 "
    "access token, login cookie or other valid authentication credential.\",\n"
    "    \"errors\": [\n"
    "      {\n"
    "        \"message\": \"Invalid Credentials\",\n"
    "        \"domain\": \"global\",\n"
    "        \"reason\": \"authError\",\n"
    "        \"location\": \"Authorization\",\n"
    "        \"locationType\": \"header\"\n"
    "      }\n"
    "    ],\n"
    "    \"status\": \"UNAUTHENTICATED\"\n"
    "  }\n"
    "}\n";

static const char html_502[] =
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 502 (Server Error)!!1</title>\n"
    "  <p><b>502.</b> <ins>That\xe2\x80\x99s an error.</ins>\n"
    "  <p>The server encountered a temporary error and could not complete your request."
    "<p>Please try again in 30 seconds.  <ins>That\xe2\x80\x99s all we know.</ins>\n";

static const char html_413[] =
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <meta name=viewport content=\"initial-scale=1, minimum-scale=1, width=device-width\">\n"
    "  <style>*{margin:0;padding:0}html,code{font:15px/22px arial,sans-serif}html"
    "{background:#fff;color:#222;padding:15px}body{margin:7% auto 0;max-width:390px;"
    "min-height:180px;padding:30px 0 15px}</style>\n"
    "  <p><b>413.</b> <ins>That\xe2\x80\x99s an error.</ins>\n"
    "  <p>Your client issued a request that was too large.\n"
    "  <title>Error 413 (Request Entity Too Large)!!1</title>\n";

struct ccase {
    long status;
    const char *body;
    enum bq_action want;
    const char *reason, *estatus, *msg_prefix;
};

static void test_classify_table(void **state)
{
    (void)state;
    const struct ccase cases[] = {
        { 200, "{\"kind\":\"bigquery#tableDataInsertAllResponse\"}", BQ_OK, "", "", NULL },
        { 200, NULL, BQ_OK, "", "", "" },
        { 204, "", BQ_OK, "", "", "" },
        { 299, "garbage", BQ_OK, "", "", "garbage" },
        { 401, body_401, BQ_UNAUTHORIZED, "authError", "UNAUTHENTICATED",
          "Request had invalid authentication credentials." },
        { 401, NULL, BQ_UNAUTHORIZED, "", "", "" },
        { 403, GOOGLE_ERROR(403, "Exceeded rate limits: too many api requests per user per "
                                 "method for this user_method. For more information, see "
                                 "https://cloud.google.com/bigquery/docs/troubleshoot-quotas",
                            "usageLimits", "rateLimitExceeded", "PERMISSION_DENIED"),
          BQ_RATE_LIMITED, "rateLimitExceeded", "PERMISSION_DENIED", "Exceeded rate limits" },
        { 403, GOOGLE_ERROR(403, "Quota exceeded: Your project exceeded quota for streaming "
                                 "insert bytes. For more information, see "
                                 "https://cloud.google.com/bigquery/docs/troubleshoot-quotas",
                            "usageLimits", "quotaExceeded", "PERMISSION_DENIED"),
          BQ_QUOTA, "quotaExceeded", "PERMISSION_DENIED", "Quota exceeded" },
        { 403, GOOGLE_ERROR(403, "Access Denied: Table my-project:ds.events: Permission "
                                 "bigquery.tables.updateData denied on table "
                                 "my-project:ds.events (or it may not exist).",
                            "global", "accessDenied", "PERMISSION_DENIED"),
          BQ_PERMANENT, "accessDenied", "PERMISSION_DENIED", "Access Denied" },
        { 403, GOOGLE_ERROR(403, "Access Denied: BigQuery BigQuery: Streaming insert is not "
                                 "allowed in the free tier",
                            "global", "billingNotEnabled", "PERMISSION_DENIED"),
          BQ_PERMANENT, "billingNotEnabled", "PERMISSION_DENIED", "Access Denied" },
        { 403, GOOGLE_ERROR(403, "Table is blocked", "global", "blocked", "PERMISSION_DENIED"),
          BQ_PERMANENT, "blocked", "PERMISSION_DENIED", NULL },
        { 403, "{\"error\":{\"code\":403,\"message\":\"Exceeded rate limits.\","
               "\"status\":\"RESOURCE_EXHAUSTED\"}}",
          BQ_RATE_LIMITED, "", "RESOURCE_EXHAUSTED", "Exceeded rate limits." },
        { 403, "{\"error\":{\"code\":403,\"message\":\"m\",\"errors\":[],"
               "\"status\":\"RESOURCE_EXHAUSTED\"}}",
          BQ_RATE_LIMITED, "", "RESOURCE_EXHAUSTED", "m" },
        { 403, "{\"error\":{\"code\":403,\"message\":\"m\",\"errors\":[{\"reason\":\"accessDenied\"}],"
               "\"status\":\"RESOURCE_EXHAUSTED\"}}",
          BQ_PERMANENT, "accessDenied", "RESOURCE_EXHAUSTED", "m" },
        { 403, "<html><body>Forbidden</body></html>", BQ_PERMANENT, "", "",
          "<html><body>Forbidden</body></html>" },
        { 404, GOOGLE_ERROR(404, "Not found: Table my-project:ds.events", "global", "notFound",
                            "NOT_FOUND"),
          BQ_NOT_FOUND, "notFound", "NOT_FOUND", "Not found: Table my-project:ds.events" },
        { 404, GOOGLE_ERROR(404, "Not found: Dataset my-project:ds", "global", "notFound",
                            "NOT_FOUND"),
          BQ_NOT_FOUND, "notFound", "NOT_FOUND", "Not found: Dataset" },
        { 404, "Not Found", BQ_NOT_FOUND, "", "", "Not Found" },
        { 408, "", BQ_RETRY, "", "", "" },
        { 429, GOOGLE_ERROR(429, "Too many requests", "global", "rateLimitExceeded",
                            "RESOURCE_EXHAUSTED"),
          BQ_RETRY, "rateLimitExceeded", "RESOURCE_EXHAUSTED", "Too many requests" },
        { 500, GOOGLE_ERROR(500, "An internal error occurred and the request could not be "
                                 "completed. This is usually caused by a transient issue.",
                            "global", "internalError", "INTERNAL"),
          BQ_RETRY, "internalError", "INTERNAL", "An internal error occurred" },
        { 502, html_502, BQ_RETRY, "", "", "<!DOCTYPE html> <html lang=en> <meta charset=utf-8>" },
        { 503, GOOGLE_ERROR(503, "Visibility check was unavailable. Please retry the request "
                                 "and contact support if the problem persists",
                            "global", "backendError", "UNAVAILABLE"),
          BQ_RETRY, "backendError", "UNAVAILABLE", "Visibility check" },
        { 504, GOOGLE_ERROR(504, "Deadline exceeded", "global", "backendError",
                            "DEADLINE_EXCEEDED"),
          BQ_RETRY, "backendError", "DEADLINE_EXCEEDED", NULL },
        { 599, NULL, BQ_RETRY, "", "", "" },
        { 413, html_413, BQ_TOO_LARGE, "", "", "<!DOCTYPE html>" },
        { 413, NULL, BQ_TOO_LARGE, "", "", "" },
        { 400, GOOGLE_ERROR(400, "Request payload size exceeds the limit: 10485760 bytes.",
                            "global", "badRequest", "INVALID_ARGUMENT"),
          BQ_TOO_LARGE, "badRequest", "INVALID_ARGUMENT", "Request payload size exceeds" },
        { 400, GOOGLE_ERROR(400, "too many rows present in the request, limit: 50000 row "
                                 "count: 50001.",
                            "global", "invalid", "INVALID_ARGUMENT"),
          BQ_TOO_LARGE, "invalid", "INVALID_ARGUMENT", "too many rows" },
        { 400, GOOGLE_ERROR(400, "Too Many Rows in request", "global", "invalid",
                            "INVALID_ARGUMENT"),
          BQ_TOO_LARGE, "invalid", "INVALID_ARGUMENT", NULL },
        /* the phrase only in errors[].message */
        { 400, "{\"error\":{\"code\":400,\"message\":\"Bad request\",\"errors\":["
               "{\"reason\":\"invalid\",\"message\":\"x\"},"
               "{\"reason\":\"invalid\",\"message\":\"REQUEST PAYLOAD SIZE EXCEEDS THE LIMIT\"}]}}",
          BQ_TOO_LARGE, "invalid", "", "Bad request" },
        { 400, "<html><head><title>400 Request Entity Too Large</title></head></html>",
          BQ_TOO_LARGE, "", "", "<html>" },
        { 400, html_413, BQ_TOO_LARGE, "", "", "<!DOCTYPE html>" },
        { 400, GOOGLE_ERROR(400, "No rows present in the request.", "global", "invalid",
                            "INVALID_ARGUMENT"),
          BQ_BAD_REQUEST, "invalid", "INVALID_ARGUMENT", "No rows present in the request." },
        { 400, GOOGLE_ERROR(400, "Invalid table ID \\\"events$x\\\".", "global", "invalid",
                            "INVALID_ARGUMENT"),
          BQ_BAD_REQUEST, "invalid", "INVALID_ARGUMENT", "Invalid table ID \"events$x\"." },
        { 400, "{\"error\":{\"code\":400,\"message\":\"Exceeded rate limits\","
               "\"status\":\"RESOURCE_EXHAUSTED\"}}",
          BQ_RATE_LIMITED, "", "RESOURCE_EXHAUSTED", "Exceeded rate limits" },
        { 400, GOOGLE_ERROR(400, "Exceeded rate limits", "usageLimits", "rateLimitExceeded",
                            "INVALID_ARGUMENT"),
          BQ_RATE_LIMITED, "rateLimitExceeded", "INVALID_ARGUMENT", NULL },
        { 400, GOOGLE_ERROR(400, "Quota exceeded", "usageLimits", "quotaExceeded",
                            "INVALID_ARGUMENT"),
          BQ_QUOTA, "quotaExceeded", "INVALID_ARGUMENT", NULL },
        { 400, "Bad Request", BQ_BAD_REQUEST, "", "", "Bad Request" },
        { 400, NULL, BQ_BAD_REQUEST, "", "", "" },
        { 409, GOOGLE_ERROR(409, "Already Exists: Table my-project:ds.events", "global",
                            "duplicate", "ALREADY_EXISTS"),
          BQ_PERMANENT, "duplicate", "ALREADY_EXISTS", "Already Exists" },
        { 410, "", BQ_PERMANENT, "", "", "" },
        { 411, "Length Required", BQ_PERMANENT, "", "", "Length Required" },
        { 415, "", BQ_PERMANENT, "", "", "" },
        { 499, "", BQ_PERMANENT, "", "", "" },
        { 0, NULL, BQ_RETRY, "", "", "" },
        { 0, "", BQ_RETRY, "", "", "" },
        { -1, NULL, BQ_RETRY, "", "", "" },
        { 100, "", BQ_RETRY, "", "", "" },
        { 101, "", BQ_RETRY, "", "", "" },
        { 301, "<html>Moved</html>", BQ_RETRY, "", "", "<html>Moved</html>" },
        { 302, "", BQ_RETRY, "", "", "" },
        { 307, "", BQ_RETRY, "", "", "" },
        { 600, "", BQ_RETRY, "", "", "" },
        /* OAuth-style error body */
        { 401, "{\"error\":\"invalid_token\",\"error_description\":\"Token expired\"}",
          BQ_UNAUTHORIZED, "invalid_token", "", "Token expired" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct ccase *c = &cases[i];
        struct bq_error e;
        enum bq_action a = classify(c->status, c->body, &e);
        if (a != c->want)
            fail_msg("case %zu (HTTP %ld): got %s, want %s", i, c->status,
                     bqrest_action_name(a), bqrest_action_name(c->want));
        if (strcmp(e.reason, c->reason) != 0)
            fail_msg("case %zu: reason \"%s\", want \"%s\"", i, e.reason, c->reason);
        if (strcmp(e.status, c->estatus) != 0)
            fail_msg("case %zu: status \"%s\", want \"%s\"", i, e.status, c->estatus);
        if (c->msg_prefix && strncmp(e.message, c->msg_prefix, strlen(c->msg_prefix)) != 0)
            fail_msg("case %zu: message \"%s\", want prefix \"%s\"", i, e.message,
                     c->msg_prefix);
        if (c->msg_prefix && c->msg_prefix[0] == 0)
            assert_string_equal(e.message, "");
    }
}

static void test_classify_snippet(void **state)
{
    (void)state;
    struct bq_error e;
    /* a long non-JSON body: ~200 printable bytes, whitespace folded,
     * control and non-ASCII bytes replaced */
    assert_int_equal(classify(502, html_502, &e), BQ_RETRY);
    assert_true(strlen(e.message) <= 200);
    assert_true(strlen(e.message) >= 150);
    for (const char *p = e.message; *p; p++) {
        assert_true(*p >= 0x20 && *p < 0x7f);
        assert_false(p[0] == ' ' && p[1] == ' ');
    }
    assert_non_null(strstr(e.message, "Error 502 (Server Error)!!1"));
    assert_non_null(strstr(e.message, "That???s an error."));

    assert_int_equal(classify(503, "\r\n\t  upstream\x01\x7f\n\nconnect error  \n", &e),
                     BQ_RETRY);
    assert_string_equal(e.message, "upstream?? connect error");

    /* a NUL inside the body is not the end of it */
    char nul[] = "ab\0cd";
    assert_int_equal(bqrest_classify(500, nul, 5, &e), BQ_RETRY);
    assert_string_equal(e.message, "ab?cd");

    /* JSON that is not Google's error shape: the raw start is kept */
    assert_int_equal(classify(500, "{\"oops\":true}", &e), BQ_RETRY);
    assert_string_equal(e.message, "{\"oops\":true}");
    assert_int_equal(classify(400, "[1,2]", &e), BQ_BAD_REQUEST);
    assert_string_equal(e.message, "[1,2]");
}

static void test_classify_truncates(void **state)
{
    (void)state;
    struct buf body = { 0 };
    char *big = malloc(5001);
    assert_non_null(big);
    memset(big, 'r', 5000);
    big[5000] = 0;
    assert_int_equal(buf_printf(&body, "{\"error\":{\"code\":403,\"message\":\"%s\",\"errors\":"
                                       "[{\"reason\":\"%s\"}],\"status\":\"%s\"}}",
                                big, big, big), 0);
    struct bq_error e;
    assert_int_equal(classify(403, body.data, &e), BQ_PERMANENT);
    assert_int_equal(strlen(e.message), sizeof e.message - 1);
    assert_int_equal(strlen(e.reason), sizeof e.reason - 1);
    assert_int_equal(strlen(e.status), sizeof e.status - 1);

    /* a reason that only starts like a throttling one is not one */
    buf_reset(&body);
    assert_int_equal(buf_printf(&body, "{\"error\":{\"errors\":[{\"reason\":\"rateLimitExceeded%s\"}]}}",
                                big), 0);
    assert_int_equal(classify(403, body.data, &e), BQ_PERMANENT);
    free(big);
    buf_free(&body);
}

static void test_classify_null_e(void **state)
{
    (void)state;
    assert_int_equal(bqrest_classify(404, NULL, 0, NULL), BQ_NOT_FOUND);
    assert_int_equal(bqrest_classify(403, body_401, strlen(body_401), NULL), BQ_PERMANENT);
    assert_int_equal(bqrest_classify(200, "x", 0, NULL), BQ_OK);
    /* body NULL with a length is treated as empty */
    struct bq_error e;
    assert_int_equal(bqrest_classify(400, NULL, 10, &e), BQ_BAD_REQUEST);
    assert_string_equal(e.message, "");
}

static void test_action_names(void **state)
{
    (void)state;
    assert_string_equal(bqrest_action_name(BQ_OK), "ok");
    assert_string_equal(bqrest_action_name(BQ_RETRY), "retry");
    assert_string_equal(bqrest_action_name(BQ_RATE_LIMITED), "rate-limited");
    assert_string_equal(bqrest_action_name(BQ_QUOTA), "quota");
    assert_string_equal(bqrest_action_name(BQ_UNAUTHORIZED), "unauthorized");
    assert_string_equal(bqrest_action_name(BQ_NOT_FOUND), "not-found");
    assert_string_equal(bqrest_action_name(BQ_TOO_LARGE), "too-large");
    assert_string_equal(bqrest_action_name(BQ_BAD_REQUEST), "bad-request");
    assert_string_equal(bqrest_action_name(BQ_PERMANENT), "permanent");
    assert_string_equal(bqrest_action_name((enum bq_action)99), "unknown");
}

static void test_table_insert_body(void **state)
{
    (void)state;
    static const char schema[] = "{\"fields\":[{\"name\":\"ts\",\"type\":\"TIMESTAMP\"},"
                                 "{\"name\":\"p\",\"type\":\"INTEGER\"}]}";
    struct bq_table_spec t = { "proj", "logs", "ev_20261122$20261122", schema, strlen(schema),
                               "DAY", "ts", 86400000, "p, q" };
    struct buf b = { 0 };
    char err[256];
    assert_int_equal(bqrest_table_insert_body(&t, &b, err, sizeof err), 0);
    assert_string_equal(b.data,
        "{\"tableReference\":{\"projectId\":\"proj\",\"datasetId\":\"logs\",\"tableId\":\"ev_20261122\"},"
        "\"schema\":{\"fields\":[{\"name\":\"ts\",\"type\":\"TIMESTAMP\"},{\"name\":\"p\",\"type\":\"INTEGER\"}]},"
        "\"timePartitioning\":{\"type\":\"DAY\",\"field\":\"ts\",\"expirationMs\":\"86400000\"},"
        "\"clustering\":{\"fields\":[\"p\",\"q\"]}}");
    buf_free(&b);
    /* a bare list of fields, or a table resource; no partitioning */
    static const char list[] = "[{\"name\":\"a\",\"type\":\"STRING\"}]";
    static const char res[] = "{\"schema\":{\"fields\":[{\"name\":\"a\",\"type\":\"STRING\"}]}}";
    struct bq_table_spec u = { "p", "d", "t", list, strlen(list), NULL, NULL, 0, NULL };
    assert_int_equal(bqrest_table_insert_body(&u, &b, err, sizeof err), 0);
    assert_string_equal(b.data, "{\"tableReference\":{\"projectId\":\"p\",\"datasetId\":\"d\","
                                "\"tableId\":\"t\"},\"schema\":{\"fields\":[{\"name\":\"a\","
                                "\"type\":\"STRING\"}]}}");
    buf_reset(&b);
    u.schema_json = res;
    u.schema_len = strlen(res);
    assert_int_equal(bqrest_table_insert_body(&u, &b, err, sizeof err), 0);
    assert_non_null(strstr(b.data, "\"schema\":{\"fields\":[{\"name\":\"a\""));
    buf_reset(&b);
    /* no fields: refused, out untouched */
    static const char *const bad[] = { "", "[]", "{\"fields\":{}}", "not json", "{\"x\":1}" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        u.schema_json = bad[i];
        u.schema_len = strlen(bad[i]);
        assert_int_equal(bqrest_table_insert_body(&u, &b, err, sizeof err), -1);
        assert_non_null(strstr(err, "no fields"));
        assert_int_equal(b.len, 0);
    }
    buf_free(&b);
    assert_int_equal(bqrest_tables_path(&b, "p", "d"), 0);
    assert_string_equal(b.data, "/bigquery/v2/projects/p/datasets/d/tables");
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_insert_body),
        cmocka_unit_test(test_body_exact_bytes),
        cmocka_unit_test(test_body_unicode_and_escapes),
        cmocka_unit_test(test_body_roundtrip_mixed),
        cmocka_unit_test(test_body_verbatim_big_number),
        cmocka_unit_test(test_body_null_opts_and_no_rows),
        cmocka_unit_test(test_body_appends),
        cmocka_unit_test(test_body_size_matches_overhead),
        cmocka_unit_test(test_body_max_len_id),
        cmocka_unit_test(test_gzip_roundtrip_levels),
        cmocka_unit_test(test_gzip_small_and_empty),
        cmocka_unit_test(test_gzip_incompressible),
        cmocka_unit_test(test_gzip_compressor_reused),
        cmocka_unit_test(test_gzip_bad_level),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_paths_append_and_errors),
        cmocka_unit_test(test_parse_all_inserted),
        cmocka_unit_test(test_parse_stopped_and_invalid),
        cmocka_unit_test(test_parse_retry_reasons),
        cmocka_unit_test(test_parse_unknown_reasons_are_invalid),
        cmocka_unit_test(test_parse_several_errors_per_row),
        cmocka_unit_test(test_parse_duplicate_indexes),
        cmocka_unit_test(test_parse_entry_without_errors),
        cmocka_unit_test(test_parse_bad_index),
        cmocka_unit_test(test_parse_malformed),
        cmocka_unit_test(test_parse_truncates_long_fields),
        cmocka_unit_test(test_parse_many_rows),
        cmocka_unit_test(test_classify_table),
        cmocka_unit_test(test_classify_snippet),
        cmocka_unit_test(test_classify_truncates),
        cmocka_unit_test(test_classify_null_e),
        cmocka_unit_test(test_action_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
