/*
 * fuzz_rowenc.c -- libFuzzer target for src/rowenc.c.
 *
 * Every input is used four ways:
 *
 *  1. As a row against a fixed schema with every type, nested and repeated
 *     records, REQUIRED fields and RANGEs (once without and once with
 *     ROWENC_IGNORE_UNKNOWN). Always: the API contract (return code equals
 *     err.code, a non-empty message of a known shape, offset <= len, the
 *     output buffer's earlier content and length untouched on error). On
 *     success: json_check accepts the same bytes (rowenc must never accept
 *     what is not JSON), encoding again gives the same bytes, ignoring
 *     unknown fields gives the same bytes, and the output passes an
 *     independent protobuf wire walker that knows the schema from the table
 *     below (written by hand, not taken from rowenc): every tag is a declared
 *     field with the right wire type, lengths nest, non-repeated fields occur
 *     once, REQUIRED fields are there, strings are UTF-8, DATE/TIMESTAMP are
 *     in range, TIME/DATETIME bits form a valid civil time, NUMERIC and
 *     BIGNUMERIC bytes are minimal two's complement in range, BOOL is 0/1.
 *     (The json_check comparison needs src/json_check.c linked in.)
 *  2. As a schema: parse it; when it parses, build the descriptor and encode
 *     "{}" and the input itself as a row against it (contract only).
 *  3. Differentials where the input has the shape of a value (cheap):
 *     [-+]?digits as an INT64 string vs strtoll; YYYY-MM-DD as DATE vs
 *     timegm; YYYY-MM-DDTHH:MM:SSZ as TIMESTAMP vs timegm; a plain decimal
 *     as a NUMERIC string vs a normalisation of the text and an __int128
 *     decoding of the bytes; a JSON number as FLOAT64 vs strtod.
 *
 * Only LLVMFuzzerTestOneInput is defined (the Makefile links all of src/).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json_check.h"
#include "rowenc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Weak so that this target also links without src/json_check.c (the short
 * build line in the docs); the Makefile links it, and then the check runs. */
#pragma weak jcheck_object

/* ---- the fixed schema, as JSON and as the walker's table ---- */

static const char schema_json[] =
    "{\"schema\":{\"fields\":["
    "{\"name\":\"s\",\"type\":\"STRING\"},"
    "{\"name\":\"b\",\"type\":\"BYTES\"},"
    "{\"name\":\"i\",\"type\":\"INTEGER\"},"
    "{\"name\":\"f\",\"type\":\"FLOAT\"},"
    "{\"name\":\"n\",\"type\":\"NUMERIC\"},"
    "{\"name\":\"bn\",\"type\":\"BIGNUMERIC\"},"
    "{\"name\":\"ok\",\"type\":\"BOOLEAN\"},"
    "{\"name\":\"ts\",\"type\":\"TIMESTAMP\"},"
    "{\"name\":\"d\",\"type\":\"DATE\"},"
    "{\"name\":\"t\",\"type\":\"TIME\"},"
    "{\"name\":\"dt\",\"type\":\"DATETIME\"},"
    "{\"name\":\"g\",\"type\":\"GEOGRAPHY\"},"
    "{\"name\":\"j\",\"type\":\"JSON\"},"
    "{\"name\":\"rs\",\"type\":\"STRING\",\"mode\":\"REPEATED\"},"
    "{\"name\":\"ri\",\"type\":\"INT64\",\"mode\":\"REPEATED\"},"
    "{\"name\":\"rec\",\"type\":\"RECORD\",\"fields\":["
    "  {\"name\":\"a\",\"type\":\"STRING\",\"mode\":\"REQUIRED\"},"
    "  {\"name\":\"x\",\"type\":\"FLOAT64\"},"
    "  {\"name\":\"inner\",\"type\":\"RECORD\",\"mode\":\"REPEATED\",\"fields\":["
    "    {\"name\":\"v\",\"type\":\"NUMERIC\"},"
    "    {\"name\":\"when\",\"type\":\"DATE\",\"mode\":\"REPEATED\"},"
    "    {\"name\":\"deep\",\"type\":\"STRUCT\",\"fields\":["
    "      {\"name\":\"z\",\"type\":\"TIMESTAMP\"}]}]}]},"
    "{\"name\":\"items\",\"type\":\"RECORD\",\"mode\":\"REPEATED\",\"fields\":["
    "  {\"name\":\"sku\",\"type\":\"STRING\",\"mode\":\"REQUIRED\"},"
    "  {\"name\":\"qty\",\"type\":\"INT64\"},"
    "  {\"name\":\"price\",\"type\":\"BIGNUMERIC\"}]},"
    "{\"name\":\"rd\",\"type\":\"RANGE\",\"rangeElementType\":{\"type\":\"DATE\"}},"
    "{\"name\":\"rt\",\"type\":\"RANGE\",\"rangeElementType\":{\"type\":\"TIMESTAMP\"}},"
    "{\"name\":\"rdt\",\"type\":\"RANGE\",\"rangeElementType\":{\"type\":\"DATETIME\"}},"
    "{\"name\":\"Gr\xc3\xb6\xc3\x9f" "e\",\"type\":\"BOOL\"},"
    "{\"name\":\"iv\",\"type\":\"INTERVAL\"},"
    "{\"name\":\"created\",\"type\":\"TIMESTAMP\",\"mode\":\"REQUIRED\","
    "  \"defaultValueExpression\":\"CURRENT_TIMESTAMP()\"}"
    "]}}";

enum ft { F_STR, F_BYTES, F_I64, F_F64, F_NUM, F_BIGNUM, F_BOOL, F_TS, F_DATE, F_TIME, F_DT,
          F_MSG, F_RANGE };

struct mdef;
struct fdef {
    enum ft t;
    bool repeated, required;
    const struct mdef *sub;   /* F_MSG */
    enum ft elem;             /* F_RANGE */
};
struct mdef {
    int n;
    const struct fdef *f;     /* f[k] is field number k + 1 */
};

static const struct fdef deep_f[] = { { F_TS, 0, 0, NULL, 0 } };
static const struct mdef deep_m = { 1, deep_f };
static const struct fdef inner_f[] = { { F_NUM, 0, 0, NULL, 0 }, { F_DATE, 1, 0, NULL, 0 },
                                       { F_MSG, 0, 0, &deep_m, 0 } };
static const struct mdef inner_m = { 3, inner_f };
static const struct fdef rec_f[] = { { F_STR, 0, 1, NULL, 0 }, { F_F64, 0, 0, NULL, 0 },
                                     { F_MSG, 1, 0, &inner_m, 0 } };
static const struct mdef rec_m = { 3, rec_f };
static const struct fdef items_f[] = { { F_STR, 0, 1, NULL, 0 }, { F_I64, 0, 0, NULL, 0 },
                                       { F_BIGNUM, 0, 0, NULL, 0 } };
static const struct mdef items_m = { 3, items_f };
static const struct fdef root_f[] = {
    { F_STR, 0, 0, NULL, 0 }, { F_BYTES, 0, 0, NULL, 0 }, { F_I64, 0, 0, NULL, 0 },
    { F_F64, 0, 0, NULL, 0 }, { F_NUM, 0, 0, NULL, 0 }, { F_BIGNUM, 0, 0, NULL, 0 },
    { F_BOOL, 0, 0, NULL, 0 }, { F_TS, 0, 0, NULL, 0 }, { F_DATE, 0, 0, NULL, 0 },
    { F_TIME, 0, 0, NULL, 0 }, { F_DT, 0, 0, NULL, 0 }, { F_STR, 0, 0, NULL, 0 },
    { F_STR, 0, 0, NULL, 0 }, { F_STR, 1, 0, NULL, 0 }, { F_I64, 1, 0, NULL, 0 },
    { F_MSG, 0, 0, &rec_m, 0 }, { F_MSG, 1, 0, &items_m, 0 },
    { F_RANGE, 0, 0, NULL, F_DATE }, { F_RANGE, 0, 0, NULL, F_TS }, { F_RANGE, 0, 0, NULL, F_DT },
    { F_BOOL, 0, 0, NULL, 0 }, { F_STR, 0, 0, NULL, 0 },
    { F_TS, 0, 0, NULL, 0 },   /* REQUIRED with a default: optional on the wire */
};
static const struct mdef root_m = { 23, root_f };

static struct rowenc_schema *S;

static void die(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_rowenc: %s (input %zu bytes)\n", what, size);
    (void)data;
    abort();
}

/* ---- an independent protobuf wire walker ---- */

static bool get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int i = 0; i < 10; i++) {
        if (*p >= end)
            return false;
        uint8_t c = *(*p)++;
        x |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) {
            if (i == 9 && c > 1)
                return false;
            *v = x;
            return true;
        }
    }
    return false;
}

static bool utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t c = s[i], cp, min;
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

static bool leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static bool civil_ok(int y, int m, int d)
{
    static const int dim[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    return y >= 1 && y <= 9999 && m >= 1 && m <= 12 && d >= 1 &&
           d <= dim[m - 1] + (m == 2 && leap(y));
}

static bool time_bits_ok(uint64_t v)
{
    return (v & 0xFFFFF) <= 999999 && (v >> 20 & 0x3F) <= 59 && (v >> 26 & 0x3F) <= 59 &&
           (v >> 32 & 0x1F) <= 23;
}

static bool scalar_ok(enum ft t, uint64_t v)
{
    int64_t s = (int64_t)v;
    switch (t) {
    case F_BOOL: return v <= 1;
    case F_DATE: return s >= -719162 && s <= 2932896;
    case F_TS: return s >= -62135596800000000LL && s <= 253402300799999999LL;
    case F_TIME: return v >> 37 == 0 && time_bits_ok(v);
    case F_DT:
        return v >> 60 == 0 && time_bits_ok(v) &&
               civil_ok((int)(v >> 46 & 0x3FFF), (int)(v >> 42 & 0xF), (int)(v >> 37 & 0x1F));
    default: return true;
    }
}

/* NUMERIC / BIGNUMERIC: minimal little-endian two's complement in range. */
static bool numeric_ok(const uint8_t *p, size_t n, bool big)
{
    if (n == 0 || n > (big ? 32u : 16u))
        return false;
    if (n > 1) {
        uint8_t top = p[n - 1], next = p[n - 2];
        if ((top == 0 && !(next & 0x80)) || (top == 0xFF && (next & 0x80)))
            return false;   /* not minimal */
    }
    if (!big) {
        unsigned __int128 u = 0;
        for (size_t i = 0; i < n; i++)
            u |= (unsigned __int128)p[i] << (8 * i);
        if (n < 16 && (p[n - 1] & 0x80))
            u |= ~(unsigned __int128)0 << (8 * n);   /* sign-extend */
        __int128 v = (__int128)u;
        __int128 lim = 1;
        for (int i = 0; i < 38; i++)
            lim *= 10;
        return v < lim && v > -lim;
    }
    return true;
}

static bool walk(const struct mdef *m, const uint8_t *p, const uint8_t *end, int depth);

static bool range_ok(enum ft elem, const uint8_t *p, const uint8_t *end)
{
    bool have[2] = { false, false };
    int64_t v[2] = { 0, 0 };
    while (p < end) {
        uint64_t key, x;
        if (!get_varint(&p, end, &key) || (key != 0x08 && key != 0x10) ||
            !get_varint(&p, end, &x) || !scalar_ok(elem, x))
            return false;
        int k = key == 0x10;
        if (have[k])
            return false;
        have[k] = true;
        v[k] = (int64_t)x;
    }
    return !(have[0] && have[1] && v[0] >= v[1]);
}

static bool walk(const struct mdef *m, const uint8_t *p, const uint8_t *end, int depth)
{
    uint8_t seen[32] = { 0 };
    if (depth > 20)
        return false;
    while (p < end) {
        uint64_t key, v;
        if (!get_varint(&p, end, &key))
            return false;
        uint64_t num = key >> 3;
        unsigned wt = key & 7;
        if (num < 1 || num > (uint64_t)m->n)
            return false;
        const struct fdef *f = &m->f[num - 1];
        if (seen[num] && !f->repeated)
            return false;
        seen[num] = 1;
        switch (f->t) {
        case F_F64:
            if (wt != 1 || end - p < 8)
                return false;
            p += 8;
            break;
        case F_I64: case F_BOOL: case F_TS: case F_DATE: case F_TIME: case F_DT:
            if (wt != 0 || !get_varint(&p, end, &v) || !scalar_ok(f->t, v))
                return false;
            break;
        default:
            if (wt != 2 || !get_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return false;
            if (f->t == F_STR && !utf8_ok(p, v))
                return false;
            if ((f->t == F_NUM || f->t == F_BIGNUM) && !numeric_ok(p, v, f->t == F_BIGNUM))
                return false;
            if (f->t == F_MSG && !walk(f->sub, p, p + v, depth + 1))
                return false;
            if (f->t == F_RANGE && !range_ok(f->elem, p, p + v))
                return false;
            p += v;
            break;
        }
    }
    for (int k = 0; k < m->n; k++)
        if (m->f[k].required && !seen[k + 1])
            return false;
    return true;
}

/* ---- contract ---- */

static void check_contract(int rc, const struct rowenc_error *err, const struct buf *out,
                           size_t prefix, const uint8_t *data, size_t size)
{
    if (rc < ROWENC_OK || rc > ROWENC_INVAL || (int)err->code != rc)
        die("return code and err.code differ", data, size);
    if (memchr(err->msg, '\0', sizeof err->msg) == NULL || err->msg[0] == '\0')
        die("message not terminated or empty", data, size);
    if (err->offset > size)
        die("offset past the end", data, size);
    if (memcmp(out->data, "PFX", 3) != 0)
        die("earlier output overwritten", data, size);
    if (rc == ROWENC_OK) {
        if (strcmp(err->msg, "ok") != 0)
            die("ok without \"ok\"", data, size);
        return;
    }
    if (out->len != prefix)
        die("error but the output length changed", data, size);
    const char *m = err->msg;
    bool shape = strncmp(m, "field '", 7) == 0 || strncmp(m, "unknown field '", 15) == 0 ||
                 strncmp(m, "invalid JSON at offset ", 23) == 0 || strcmp(m, "out of memory") == 0;
    if (!shape)
        die("message of an unknown shape", data, size);
    if (rc == ROWENC_JSON && strncmp(m, "invalid JSON", 12) != 0)
        die("json error without \"invalid JSON\"", data, size);
    if (rc == ROWENC_UNKNOWN && strncmp(m, "unknown field '", 15) != 0 &&
        strstr(m, "unknown RANGE key") == NULL)
        die("unknown-field error without its message", data, size);
}

static int encode(const struct rowenc_schema *s, const uint8_t *data, size_t size, unsigned flags,
                  struct buf *out, struct rowenc_error *err)
{
    out->len = 0;
    if (buf_append(out, "PFX", 3))
        abort();
    int rc = rowenc_encode(s, (const char *)data, size, flags, out, err);
    check_contract(rc, err, out, 3, data, size);
    return rc;
}

/* ---- differentials ---- */

static bool all_digits(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    return n > 0;
}

/* Encodes {"<col>": <value text>} (value quoted when quote) against S. */
static int enc_value(const char *col, const uint8_t *v, size_t n, bool quote, struct buf *out,
                     struct rowenc_error *err)
{
    char row[256];
    int k = snprintf(row, sizeof row, "{\"%s\":%s%.*s%s}", col, quote ? "\"" : "", (int)n,
                     (const char *)v, quote ? "\"" : "");
    if (k < 0 || (size_t)k >= sizeof row)
        abort();
    out->len = 0;
    return rowenc_encode(S, row, (size_t)k, 0, out, err);
}

static int64_t first_varint(const struct buf *out)
{
    const uint8_t *p = (const uint8_t *)out->data + 1, *end = (const uint8_t *)out->data + out->len;
    uint64_t v = 0;
    if (out->len < 2 || !get_varint(&p, end, &v))
        abort();
    return (int64_t)v;
}

static void diff_int64(const uint8_t *data, size_t size, struct buf *out)
{
    size_t i = size > 0 && (data[0] == '-' || data[0] == '+');
    if (size > 40 || !all_digits(data + i, size - i))
        return;
    char tmp[48];
    struct rowenc_error err;
    memcpy(tmp, data, size);
    tmp[size] = '\0';
    errno = 0;
    long long want = strtoll(tmp, NULL, 10);
    int rc = enc_value("i", data, size, true, out, &err);
    if (errno == ERANGE) {
        if (rc != ROWENC_VALUE)
            die("INT64 overflow accepted", data, size);
    } else if (rc != ROWENC_OK || first_varint(out) != want) {
        die("INT64 differs from strtoll", data, size);
    }
}

static bool read_num(const uint8_t *p, size_t n, int *v)
{
    if (!all_digits(p, n))
        return false;
    *v = 0;
    for (size_t i = 0; i < n; i++)
        *v = *v * 10 + (p[i] - '0');
    return true;
}

/* t from y-m-d h:mi:s via timegm; false if the fields are not a real time. */
static bool utc_seconds(int y, int mo, int d, int h, int mi, int s, long long *out)
{
    struct tm tm = { 0 }, back;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    time_t t = timegm(&tm);
    if (!gmtime_r(&t, &back))
        return false;
    if (back.tm_year != y - 1900 || back.tm_mon != mo - 1 || back.tm_mday != d ||
        back.tm_hour != h || back.tm_min != mi || back.tm_sec != s)
        return false;
    *out = (long long)t;
    return true;
}

static void diff_date_ts(const uint8_t *data, size_t size, struct buf *out)
{
    int y, mo, d, h = 0, mi = 0, s = 0;
    bool is_ts = size == 20;
    if ((size != 10 && size != 20) || data[4] != '-' || data[7] != '-' ||
        !read_num(data, 4, &y) || !read_num(data + 5, 2, &mo) || !read_num(data + 8, 2, &d))
        return;
    if (is_ts && (data[10] != 'T' || data[13] != ':' || data[16] != ':' || data[19] != 'Z' ||
                  !read_num(data + 11, 2, &h) || !read_num(data + 14, 2, &mi) ||
                  !read_num(data + 17, 2, &s)))
        return;
    long long t;
    bool valid = y >= 1 && utc_seconds(y, mo, d, h, mi, s, &t);
    struct rowenc_error err;
    int rc = enc_value(is_ts ? "ts" : "d", data, size, true, out, &err);
    if (!valid) {
        if (rc != ROWENC_VALUE)
            die("invalid DATE/TIMESTAMP accepted", data, size);
        return;
    }
    if (rc != ROWENC_OK)
        die("valid DATE/TIMESTAMP rejected", data, size);
    long long want = is_ts ? t * 1000000 : t / 86400;
    if (first_varint(out) != want)
        die("DATE/TIMESTAMP differs from timegm", data, size);
}

/* A plain decimal [-+]?digits[.digits] as NUMERIC: accepted iff at most 29
 * integer digits (after dropping leading and trailing
 * zeros) once rounded half away from zero to 9 fractional digits, and the
 * bytes decode back to that number. */
static void diff_numeric(const uint8_t *data, size_t size, struct buf *out)
{
    if (size == 0 || size > 120)
        return;
    size_t i = data[0] == '-' || data[0] == '+';
    bool neg = data[0] == '-';
    size_t is = i;
    while (i < size && data[i] >= '0' && data[i] <= '9')
        i++;
    size_t ie = i, fs = i, fe = i;
    if (i < size && data[i] == '.') {
        fs = ++i;
        while (i < size && data[i] >= '0' && data[i] <= '9')
            i++;
        fe = i;
    }
    if (i != size || (ie - is) + (fe - fs) == 0)
        return;
    while (is < ie && data[is] == '0')
        is++;
    while (fe > fs && data[fe - 1] == '0')
        fe--;
    /* expected: integer digits and 9 fraction digits, rounded half away from
     * zero on the 10th (as BigQuery stores NUMERIC); accepted iff that has at
     * most 38 significant digits (29 integer digits) */
    char want[200];
    int nw = 1;
    want[0] = '0';   /* room for a carry */
    if (ie - is > 150)
        return;
    for (size_t k = is; k < ie; k++)
        want[nw++] = (char)data[k];
    for (size_t k = fs; k < fs + 9; k++)
        want[nw++] = k < fe ? (char)data[k] : '0';
    if (fe > fs + 9 && data[fs + 9] >= '5')
        for (int k = nw - 1; k >= 0; k--) {
            if (want[k] != '9') {
                want[k]++;
                break;
            }
            want[k] = '0';
        }
    int lead = 0;
    while (lead < nw - 1 && want[lead] == '0')
        lead++;
    bool zero = nw - lead == 1 && want[lead] == '0';
    bool fits = nw - lead <= 38;
    struct rowenc_error err;
    int rc = enc_value("n", data, size, true, out, &err);
    if (!fits) {
        if (rc != ROWENC_VALUE)
            die("out-of-range NUMERIC accepted", data, size);
        return;
    }
    if (rc != ROWENC_OK)
        die("valid NUMERIC rejected", data, size);
    /* decode: out = 2a <len> <bytes> */
    const uint8_t *p = (const uint8_t *)out->data;
    size_t n = p[1];
    if (out->len != n + 2 || !numeric_ok(p + 2, n, false))
        die("NUMERIC bytes malformed", data, size);
    unsigned __int128 u = 0;
    for (size_t k = 0; k < n; k++)
        u |= (unsigned __int128)p[2 + k] << (8 * k);
    if (n < 16 && (p[2 + n - 1] & 0x80))
        u |= ~(unsigned __int128)0 << (8 * n);
    __int128 v = (__int128)u;
    bool vneg = v < 0;
    unsigned __int128 mag = vneg ? (unsigned __int128)(-v) : (unsigned __int128)v;
    char digits[64];
    int nd = 0;
    do {
        digits[nd++] = (char)('0' + (int)(mag % 10));
        mag /= 10;
    } while (mag);
    if (nd != nw - lead || (vneg != (neg && !zero)))
        die("NUMERIC value differs", data, size);
    for (int k = 0; k < nd; k++)
        if (digits[nd - 1 - k] != want[lead + k])
            die("NUMERIC digits differ", data, size);
}

/* A JSON number as FLOAT64: when accepted, the double is strtod's. */
static void diff_float(const uint8_t *data, size_t size, struct buf *out)
{
    if (size == 0 || size > 100 || !(data[0] == '-' || (data[0] >= '0' && data[0] <= '9')))
        return;
    for (size_t k = 0; k < size; k++)
        if (!strchr("0123456789.eE+-", data[k]) || data[k] == 0)
            return;
    struct rowenc_error err;
    if (enc_value("f", data, size, false, out, &err) != ROWENC_OK)
        return;
    char tmp[128];
    memcpy(tmp, data, size);
    tmp[size] = '\0';
    double want = strtod(tmp, NULL);
    uint64_t bits = 0;
    for (int k = 0; k < 8; k++)
        bits |= (uint64_t)(uint8_t)out->data[1 + k] << (8 * k);
    uint64_t wbits;
    memcpy(&wbits, &want, 8);
    if (out->len != 9 || bits != wbits)
        die("FLOAT64 differs from strtod", data, size);
}

/* ---- the target ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rowenc_error err;
    struct buf out = { 0 }, again = { 0 };

    if (!S) {
        if (rowenc_schema_parse(schema_json, sizeof schema_json - 1, &S, &err) != ROWENC_OK) {
            fprintf(stderr, "fixed schema: %s\n", err.msg);
            abort();
        }
    }

    /* 1. the input as a row */
    int rc = encode(S, data, size, 0, &out, &err);
    int rc2 = encode(S, data, size, ROWENC_IGNORE_UNKNOWN, &again, &err);
    if (rc == ROWENC_OK) {
        struct jcheck_result jr;
        if (jcheck_object) {
            enum jcheck_code jc = jcheck_object((const char *)data, size, 1024, &jr);
            if (jc != JC_OK && jc != JC_DEPTH)
                die("rowenc accepted what json_check rejects", data, size);
        }
        if (rc2 != ROWENC_OK || again.len != out.len ||
            memcmp(again.data, out.data, out.len) != 0)
            die("IGNORE_UNKNOWN changed an accepted row", data, size);
        encode(S, data, size, 0, &again, &err);
        if (again.len != out.len || memcmp(again.data, out.data, out.len) != 0)
            die("not deterministic", data, size);
        if (!walk(&root_m, (const uint8_t *)out.data + 3, (const uint8_t *)out.data + out.len, 0))
            die("output fails the wire walker", data, size);
    } else if (rc2 == ROWENC_OK) {
        if (rc != ROWENC_UNKNOWN)
            die("IGNORE_UNKNOWN accepted a row rejected for another reason", data, size);
        if (!walk(&root_m, (const uint8_t *)again.data + 3,
                  (const uint8_t *)again.data + again.len, 0))
            die("output (ignoring unknown) fails the wire walker", data, size);
    }

    /* 2. the input as a schema */
    struct rowenc_schema *s2 = NULL;
    rc = rowenc_schema_parse((const char *)data, size, &s2, &err);
    if ((rc == ROWENC_OK) != (s2 != NULL) || (int)err.code != rc || err.msg[0] == '\0' ||
        (rc != ROWENC_OK && rc != ROWENC_SCHEMA && rc != ROWENC_NOMEM))
        die("schema parse contract", data, size);
    if (rc != ROWENC_OK && strncmp(err.msg, "schema", 6) != 0)
        die("schema error without \"schema\"", data, size);
    if (s2) {
        out.len = 0;
        if (rowenc_descriptor(s2, "fuzz_row", &out, &err) != ROWENC_OK || out.len == 0)
            die("descriptor failed", data, size);
        encode(s2, (const uint8_t *)"{}", 2, 0, &again, &err);
        encode(s2, data, size, 0, &again, &err);
        rowenc_schema_free(s2);
    }

    /* 3. differentials */
    diff_int64(data, size, &out);
    diff_date_ts(data, size, &out);
    diff_numeric(data, size, &out);
    diff_float(data, size, &out);

    buf_free(&out);
    buf_free(&again);
    return 0;
}
