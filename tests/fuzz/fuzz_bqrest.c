/*
 * fuzz_bqrest.c -- libFuzzer target for the response side of bqrest.h, plus
 * round trips of the request side.
 *
 * Each input is, in turn:
 *
 *  - an insertAll response body for bqrest_parse_insertall(), with
 *    n = 1 + input[0] % 64 rows. The result must be 0 or -1; -1 comes with a
 *    non-empty, NUL-terminated err and every row marked RETRY; 0 only for bodies jansson accepts as an
 *    object, with every fate in range, every field NUL-terminated, and
 *    INSERTED rows carrying empty fields. A second parse must agree, and
 *    err buffers of 0, 1 and 2 bytes must be handled.
 *
 *  - an error body for bqrest_classify() under 400, 403 and one other
 *    status picked by the input's last byte. The action must be in range
 *    and, where the status alone decides (2xx, 401, 404, 409, 413,
 *    408/429/5xx, no response), the one it dictates; the fields must be
 *    NUL-terminated and http_status echoed.
 *
 *  - when jansson accepts it as an object: a row for
 *    bqrest_insertall_body(), with an insertId and a template suffix taken
 *    from the input's last bytes when they are valid UTF-8. The body must
 *    parse back to the same row, id and suffix.
 *
 *  - a table id for bqrest_insertall_path(): the path must hold only
 *    unreserved bytes, '/' and %XX, and its last segments must decode back
 *    to the input (up to its first NUL).
 *
 *  - the input itself for util_crc32() (libdeflate's):
 *    the CRC of the whole and of two parts split at a point the input picks
 *    must equal zlib's crc32(); and for bqrest_gzip() (libdeflate's gzip)
 *    at a level the input picks: zlib's gzip inflate must give the input
 *    back and find the trailer's CRC and length right.
 *
 * Only LLVMFuzzerTestOneInput is defined: the Makefile links this with every
 * library source under src/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zlib.h>

#include "bqrest.h"
#include "util.h"

#define CHECK(cond) do {                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                             \
        }                                                                        \
    } while (0)

#define TERMINATED(field) CHECK(memchr((field), 0, sizeof(field)) != NULL)

static void check_parse(const uint8_t *data, size_t size)
{
    size_t n = size ? 1 + data[0] % 64 : 1;
    static struct bq_row_result res[64], res2[64];
    char err[256], err2[256];

    memset(res, 0xa5, sizeof res);
    memset(err, 'x', sizeof err);
    int rc = bqrest_parse_insertall((const char *)data, size, n, res, err, sizeof err);
    CHECK(rc == 0 || rc == -1);
    TERMINATED(err);
    if (rc == -1) {
        CHECK(err[0] != 0);
        for (size_t i = 0; i < n; i++) {
            CHECK(res[i].fate == BQ_ROW_RETRY);
            TERMINATED(res[i].message);
        }
    } else {
        json_t *j = json_loadb((const char *)data, size, 0, NULL);
        CHECK(json_is_object(j));
        json_decref(j);
        for (size_t i = 0; i < n; i++) {
            const struct bq_row_result *r = &res[i];
            CHECK(r->fate == BQ_ROW_INSERTED || r->fate == BQ_ROW_INVALID ||
                  r->fate == BQ_ROW_RETRY);
            TERMINATED(r->reason);
            TERMINATED(r->location);
            TERMINATED(r->message);
            if (r->fate == BQ_ROW_INSERTED)
                CHECK(!r->reason[0] && !r->location[0] && !r->message[0]);
            if (r->fate == BQ_ROW_RETRY)
                CHECK(r->reason[0] != 0);
        }
    }

    /* deterministic */
    memset(res2, 0x3c, sizeof res2);
    int rc2 = bqrest_parse_insertall((const char *)data, size, n, res2, err2, sizeof err2);
    CHECK(rc2 == rc);
    CHECK(strcmp(err, err2) == 0);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        CHECK(res[i].fate == res2[i].fate);
        CHECK(strcmp(res[i].reason, res2[i].reason) == 0);
        CHECK(strcmp(res[i].location, res2[i].location) == 0);
        CHECK(strcmp(res[i].message, res2[i].message) == 0);
    }

    /* tiny or absent err buffers */
    char tiny[2] = { 'x', 'x' };
    CHECK(bqrest_parse_insertall((const char *)data, size, n, res2, tiny, 1) == rc);
    CHECK(tiny[0] == 0 && tiny[1] == 'x');
    CHECK(bqrest_parse_insertall((const char *)data, size, n, res2, tiny, 2) == rc);
    CHECK(rc == 0 ? tiny[0] == 0 : tiny[0] != 0 && tiny[1] == 0);
    CHECK(bqrest_parse_insertall((const char *)data, size, n, res2, NULL, 0) == rc);
}

static void check_classify(const uint8_t *data, size_t size)
{
    /* 400 and 403 depend on the body; one of the others, picked by the last
     * byte, is checked against its fixed answer (each status costs a parse). */
    static const long others[] = { 0, -1, 100, 200, 204, 302, 401, 404,
                                   408, 409, 413, 429, 500, 503, 600 };
    const long statuses[] = {
        400, 403, others[size ? data[size - 1] % (sizeof others / sizeof others[0]) : 0],
    };
    for (size_t k = 0; k < sizeof statuses / sizeof statuses[0]; k++) {
        long s = statuses[k];
        struct bq_error e;
        memset(&e, 0xa5, sizeof e);
        enum bq_action a = bqrest_classify(s, (const char *)data, size, &e);
        CHECK(strcmp(bqrest_action_name(a), "unknown") != 0);
        CHECK(e.http_status == s);
        TERMINATED(e.reason);
        TERMINATED(e.status);
        TERMINATED(e.message);
        CHECK(strlen(e.message) < sizeof e.message);
        if (k == 0)    /* e is optional */
            CHECK(bqrest_classify(s, (const char *)data, size, NULL) == a);
        switch (s) {
        case 200: case 204: CHECK(a == BQ_OK); break;
        case 401: CHECK(a == BQ_UNAUTHORIZED); break;
        case 404: CHECK(a == BQ_NOT_FOUND); break;
        case 413: CHECK(a == BQ_TOO_LARGE); break;
        case 409: CHECK(a == BQ_PERMANENT); break;
        case 400:
            CHECK(a == BQ_TOO_LARGE || a == BQ_BAD_REQUEST || a == BQ_RATE_LIMITED ||
                  a == BQ_QUOTA);
            break;
        case 403:
            CHECK(a == BQ_RATE_LIMITED || a == BQ_QUOTA || a == BQ_PERMANENT);
            break;
        default: CHECK(a == BQ_RETRY); break;
        }
        if (size == 0)
            CHECK(!e.reason[0] && !e.status[0] && !e.message[0]);
    }
}

static void check_body(const uint8_t *data, size_t size)
{
    json_t *row = json_loadb((const char *)data, size, 0, NULL);
    if (!json_is_object(row)) {
        json_decref(row);
        return;
    }
    /* the id: up to the last 128 bytes, if they are valid UTF-8 */
    char id[129];
    size_t il = size < 128 ? size : 128;
    memcpy(id, data + size - il, il);
    id[il] = 0;
    json_t *jid = json_string(id);     /* NULL unless valid UTF-8 */
    const char *idp = jid ? id : NULL;

    struct bq_row rows[2] = {
        { (const char *)data, size, idp },
        { (const char *)data, size, NULL },
    };
    struct bq_insert_opts o = { (size & 1) != 0, (size & 2) != 0, idp };
    struct buf b = { 0 };
    CHECK(bqrest_insertall_body(&b, rows, 2, &o) == 0);
    CHECK(b.data[b.len] == 0);
    json_error_t jerr;
    json_t *root = json_loadb(b.data, b.len, 0, &jerr);
    if (!root) {
        /* the envelope adds three levels of nesting */
        CHECK(json_error_code(&jerr) == json_error_stack_overflow);
        goto out;
    }
    CHECK(json_is_true(json_object_get(root, "skipInvalidRows")) == o.skip_invalid_rows);
    CHECK(json_is_true(json_object_get(root, "ignoreUnknownValues")) ==
          o.ignore_unknown_values);
    if (idp)
        CHECK(json_equal(json_object_get(root, "templateSuffix"), jid));
    else
        CHECK(json_object_get(root, "templateSuffix") == NULL);
    json_t *jrows = json_object_get(root, "rows");
    CHECK(json_array_size(jrows) == 2);
    CHECK(json_equal(json_object_get(json_array_get(jrows, 0), "json"), row));
    CHECK(json_equal(json_object_get(json_array_get(jrows, 1), "json"), row));
    if (idp)
        CHECK(json_equal(json_object_get(json_array_get(jrows, 0), "insertId"), jid));
    else
        CHECK(json_object_get(json_array_get(jrows, 0), "insertId") == NULL);
    CHECK(json_object_get(json_array_get(jrows, 1), "insertId") == NULL);
    json_decref(root);
out:
    buf_free(&b);
    json_decref(jid);
    json_decref(row);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void check_path(const uint8_t *data, size_t size)
{
    char *t = malloc(size + 1);
    CHECK(t != NULL);
    memcpy(t, data, size);
    t[size] = 0;
    struct buf b = { 0 };
    int rc = bqrest_insertall_path(&b, "p", "d", t);
    if (t[0] == 0) {
        CHECK(rc == -1);
        goto out;
    }
    CHECK(rc == 0);
    static const char head[] = "/bigquery/v2/projects/p/datasets/d/tables/";
    static const char tail[] = "/insertAll";
    CHECK(b.len >= sizeof head - 1 + sizeof tail - 1);
    CHECK(memcmp(b.data, head, sizeof head - 1) == 0);
    CHECK(memcmp(b.data + b.len - (sizeof tail - 1), tail, sizeof tail - 1) == 0);
    size_t o = 0;
    for (size_t i = sizeof head - 1; i < b.len - (sizeof tail - 1); o++) {
        char c = b.data[i];
        if (c == '%') {
            CHECK(i + 2 < b.len);
            int hi = hexval(b.data[i + 1]), lo = hexval(b.data[i + 2]);
            CHECK(hi >= 0 && lo >= 0);
            CHECK((unsigned char)t[o] == (unsigned)(hi << 4 | lo));
            i += 3;
        } else {
            CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '~' || c == '-');
            CHECK(t[o] == c);
            i++;
        }
    }
    CHECK(t[o] == 0);
out:
    buf_free(&b);
    free(t);
}

static void check_crc_gzip(const uint8_t *data, size_t size)
{
    uint32_t want = (uint32_t)crc32(0L, data, (uInt)size);
    CHECK(util_crc32(0, data, size) == want);
    size_t cut = size ? data[size - 1] % (size + 1) : 0;
    CHECK(util_crc32(util_crc32(0, data, cut), data + cut, size - cut) == want);

    struct buf z = { 0 };
    int level = size ? data[0] % 10 : 0;
    CHECK(bqrest_gzip(data, size, &z, level) == 0);
    CHECK(z.len >= 18 && (uint8_t)z.data[0] == 0x1f && (uint8_t)z.data[1] == 0x8b);
    unsigned char *back = malloc(size + 1);
    CHECK(back != NULL);
    z_stream st = { 0 };
    CHECK(inflateInit2(&st, 16 + MAX_WBITS) == Z_OK);   /* gzip wrapper: checks CRC and ISIZE */
    st.next_in = (unsigned char *)z.data;
    st.avail_in = (uInt)z.len;
    st.next_out = back;
    st.avail_out = (uInt)(size + 1);
    CHECK(inflate(&st, Z_FINISH) == Z_STREAM_END);
    CHECK(st.total_out == size && st.avail_in == 0);
    CHECK(size == 0 || memcmp(back, data, size) == 0);
    inflateEnd(&st);
    free(back);
    buf_free(&z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_parse(data, size);
    check_classify(data, size);
    check_body(data, size);
    check_path(data, size);
    check_crc_gzip(data, size);
    return 0;
}
