/*
 * rowenc.c -- BigQuery schemas to protobuf descriptors, JSON rows to
 * protobuf rows (the Storage Write API's ProtoRows). Contract: rowenc.h.
 *
 * Schema side (cold): jansson reads the schema into a tree of struct rmsg
 * (one per RECORD, the root included) holding struct rfield entries. At
 * parse time every field gets what the hot path needs: its proto tag bytes,
 * its name folded to lower case (also as two 64-bit words, compared a word
 * at a time) with a hash, and every message an open-addressing table from
 * name hash to field, the list of its REQUIRED
 * fields and a base index into the "seen" bitmap that catches duplicate and
 * missing keys.
 *
 * Row side (hot): one recursive-descent pass over the JSON text, driven by
 * the schema. Each key is looked up in the current message's table and its
 * value converted straight into the output buffer. Nested messages need a
 * length prefix before their body: one byte is reserved (bodies under 128
 * bytes, the common case, need no more) and the body is moved right in the
 * rare case its length needs a longer varint. Strings without escapes are
 * copied once; strings with escapes are decoded straight into the output
 * (or, for values that are parsed further, into the spare room past the end
 * of the output, which the parsed value then overwrites). Nothing is
 * allocated per row; errors are formatted only when they happen, from a
 * small stack of the fields being encoded (the path).
 *
 * NUMERIC, BIGNUMERIC, INT64 and epoch TIMESTAMP values go through one exact
 * decimal scaler that works on the digits in a 64-bit or, when needed, a
 * 256-bit integer: no floating point anywhere but FLOAT64, which is either
 * an exact fast path (short mantissas, small exponents) or strtod_l in the
 * C locale, both correctly rounded.
 */
#include "rowenc.h"

#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

enum rtype {
    RT_STRING, RT_BYTES, RT_INT64, RT_FLOAT64, RT_NUMERIC, RT_BIGNUMERIC, RT_BOOL,
    RT_TIMESTAMP, RT_DATE, RT_TIME, RT_DATETIME, RT_GEOGRAPHY, RT_JSON, RT_INTERVAL,
    RT_RECORD, RT_RANGE, RT__COUNT
};

enum rmode { RM_NULLABLE, RM_REQUIRED, RM_REPEATED };

/* google.protobuf.FieldDescriptorProto.Type values we use */
enum { PT_DOUBLE = 1, PT_INT64 = 3, PT_INT32 = 5, PT_BOOL = 8, PT_STRING = 9,
       PT_MESSAGE = 11, PT_BYTES = 12 };
/* wire types */
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2 };

static const struct {
    const char *name;   /* canonical name, for messages */
    uint8_t proto;      /* proto type */
    uint8_t wire;
} type_info[RT__COUNT] = {
    [RT_STRING] = { "STRING", PT_STRING, WT_LEN },
    [RT_BYTES] = { "BYTES", PT_BYTES, WT_LEN },
    [RT_INT64] = { "INT64", PT_INT64, WT_VARINT },
    [RT_FLOAT64] = { "FLOAT64", PT_DOUBLE, WT_I64 },
    [RT_NUMERIC] = { "NUMERIC", PT_BYTES, WT_LEN },
    [RT_BIGNUMERIC] = { "BIGNUMERIC", PT_BYTES, WT_LEN },
    [RT_BOOL] = { "BOOL", PT_BOOL, WT_VARINT },
    [RT_TIMESTAMP] = { "TIMESTAMP", PT_INT64, WT_VARINT },
    [RT_DATE] = { "DATE", PT_INT32, WT_VARINT },
    [RT_TIME] = { "TIME", PT_INT64, WT_VARINT },
    [RT_DATETIME] = { "DATETIME", PT_INT64, WT_VARINT },
    [RT_GEOGRAPHY] = { "GEOGRAPHY", PT_STRING, WT_LEN },
    [RT_JSON] = { "JSON", PT_STRING, WT_LEN },
    [RT_INTERVAL] = { "INTERVAL", PT_STRING, WT_LEN },
    [RT_RECORD] = { "RECORD", PT_MESSAGE, WT_LEN },
    [RT_RANGE] = { "RANGE", PT_MESSAGE, WT_LEN },
};

/* Type names as the REST API and DDL spell them. */
static const struct {
    const char *name;
    enum rtype type;
} type_names[] = {
    { "STRING", RT_STRING }, { "BYTES", RT_BYTES }, { "INTEGER", RT_INT64 },
    { "INT64", RT_INT64 }, { "FLOAT", RT_FLOAT64 }, { "FLOAT64", RT_FLOAT64 },
    { "NUMERIC", RT_NUMERIC }, { "DECIMAL", RT_NUMERIC }, { "BIGNUMERIC", RT_BIGNUMERIC },
    { "BIGDECIMAL", RT_BIGNUMERIC }, { "BOOLEAN", RT_BOOL }, { "BOOL", RT_BOOL },
    { "TIMESTAMP", RT_TIMESTAMP }, { "DATE", RT_DATE }, { "TIME", RT_TIME },
    { "DATETIME", RT_DATETIME }, { "GEOGRAPHY", RT_GEOGRAPHY }, { "JSON", RT_JSON },
    { "INTERVAL", RT_INTERVAL }, { "RECORD", RT_RECORD }, { "STRUCT", RT_RECORD },
    { "RANGE", RT_RANGE },
};

struct rmsg;

struct rfield {
    char *name;            /* the column name as in the schema */
    char *key;             /* name with ASCII letters folded to lower case */
    char *proto_name;      /* field name in the descriptor */
    uint32_t keylen, hash;
    uint64_t kw0, kwl;     /* folded first and last 8 bytes of key (see key_words) */
    uint32_t number;       /* proto field number, 1..n */
    uint32_t bit;          /* index in the seen bitmap */
    uint8_t type, mode;
    uint8_t elem;          /* RANGE: element type (RT_DATE, RT_DATETIME, RT_TIMESTAMP) */
    bool has_default;      /* has a defaultValueExpression */
    bool half_even;        /* NUMERIC/BIGNUMERIC: roundingMode ROUND_HALF_EVEN */
    uint8_t scale;         /* NUMERIC/BIGNUMERIC: the column's scale (9/38 unless set) */
    bool placeholder;      /* proto_name is "Col_<n>"; name goes in the option */
    uint8_t taglen;
    uint8_t tag[5];        /* key bytes: varint(number << 3 | wire type) */
    struct rmsg *sub;      /* RECORD: its message */
};

struct rmsg {
    struct rfield *f;
    uint32_t n;
    uint32_t mask;         /* slots - 1 */
    uint32_t *slots;       /* field index + 1, or 0 for empty */
    uint32_t *req;         /* indices of REQUIRED fields without a default */
    uint32_t nreq;
    uint32_t bit_base;
    char *type_name;       /* "T<k>_<name>"; NULL for the root */
};

struct rowenc_schema {
    struct rmsg root;
    uint32_t nfields;      /* all fields: bits in the seen bitmap */
    unsigned range_types;  /* bit (1 << elem type) for each RANGE element type used */
    locale_t c_locale;     /* for strtod_l */
};

#define SEEN_WORDS ((ROWENC_MAX_FIELDS + 63) / 64)
#define KEYBUF (ROWENC_MAX_NAME * 4 + 8)
#define DEFAULT_ROOT "relayd_row"
#define COLUMN_NAME_EXT 454943157u

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static inline unsigned char fold(unsigned char c)
{
    return (unsigned)(c - 'A') < 26u ? (unsigned char)(c + 32) : c;
}

static inline bool is_digit(int c)
{
    return (unsigned)(c - '0') < 10u;
}

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* 8 bytes at p as a little-endian word (whatever the host's byte order). */
static inline uint64_t load64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* fold() on all 8 bytes of a word at once. */
static inline uint64_t fold8(uint64_t v)
{
    uint64_t h = v & ~HIGHS;
    uint64_t ge_a = h + ONES * (0x80 - 'A');       /* high bit: byte >= 'A' */
    uint64_t gt_z = h + ONES * (0x80 - 'Z' - 1);   /* high bit: byte > 'Z' */
    return v | ((ge_a & ~gt_z & ~v & HIGHS) >> 2);
}

/* The first min(n, 8) bytes of the n-byte key at k as a word, zero-padded.
 * Reads k[0..8) when k + 8 <= limit even for a shorter key (masked), so
 * keys in a row cost one load. */
static inline uint64_t key_word0(const char *k, size_t n, const char *limit)
{
    uint64_t v = 0;
    if (n >= 8) {
        v = load64(k);
    } else if (limit - k >= 8) {
        v = load64(k) & ((1ull << (8 * n)) - 1);
    } else {
        for (size_t i = 0; i < n; i++)
            v |= (uint64_t)(unsigned char)k[i] << (8 * i);
    }
    return v;
}

/* A key of n bytes at k as two folded words: key_word0() and, when n > 8,
 * its last 8 bytes. k may be read up to limit. Returns the hash. */
static inline uint32_t key_words(const char *k, size_t n, const char *limit, uint64_t *w0,
                                 uint64_t *wl)
{
    *w0 = fold8(key_word0(k, n, limit));
    *wl = n > 8 ? fold8(load64(k + n - 8)) : 0;
    uint64_t h = (*w0 ^ (*wl * 0x9E3779B97F4A7C15ull) ^ n) * 0xFF51AFD7ED558CCDull;
    return (uint32_t)(h >> 32);
}

static bool ieq(const char *a, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (m != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (fold((unsigned char)a[i]) != fold((unsigned char)lit[i]))
            return false;
    return true;
}

static inline size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Writes v at p (room for 10 bytes); returns bytes written. */
static inline size_t varint_put(char *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (char)v;
    return n;
}

static bool utf8_valid(const unsigned char *s, size_t n);

/* A quoted value for a message: at most 48 bytes of s, printable ASCII and
 * valid UTF-8 characters kept, any other byte as \xNN, "..." when cut. */
static const char *snip(const char *s, size_t n, char *dst, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;

    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 48 || o + 8 >= cap) {
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            dst[o++] = (char)c;
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xF4) {
            size_t len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            if (len <= n - i && utf8_valid((const unsigned char *)s + i, len)) {
                memcpy(dst + o, s + i, len);
                o += len;
                i += len;
                continue;
            }
        }
        dst[o++] = '\\';
        dst[o++] = 'x';
        dst[o++] = hex[c >> 4];
        dst[o++] = hex[c & 15];
        i++;
    }
    dst[o] = '\0';
    return dst;
}

/* Drops an incomplete UTF-8 sequence at the end of s (after truncation). */
static void utf8_cut(char *s)
{
    size_t n = strlen(s), i = n;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    if (i == 0)
        return;
    unsigned char c = (unsigned char)s[i - 1];
    if (c >= 0xC0) {
        size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (n - (i - 1) < len)
            s[i - 1] = '\0';
    }
}

static void set_ok(struct rowenc_error *err)
{
    if (err) {
        err->code = ROWENC_OK;
        err->offset = 0;
        strcpy(err->msg, "ok");
    }
}

static int seterr(struct rowenc_error *err, int code, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int seterr(struct rowenc_error *err, int code, size_t offset, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = (enum rowenc_rc)code;
        err->offset = offset;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        utf8_cut(err->msg);
    }
    return code;
}

const char *rowenc_token(int rc)
{
    switch (rc) {
    case ROWENC_OK: return "ok";
    case ROWENC_NOMEM: return "nomem";
    case ROWENC_JSON: return "json";
    case ROWENC_UNKNOWN: return "unknown-field";
    case ROWENC_DUPLICATE: return "duplicate-field";
    case ROWENC_MISSING: return "missing";
    case ROWENC_TYPE: return "type";
    case ROWENC_VALUE: return "value";
    case ROWENC_SCHEMA: return "schema";
    case ROWENC_INVAL: return "inval";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------------------ */
/* UTF-8 and JSON strings                                                   */
/* ------------------------------------------------------------------------ */

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (!(v & HIGHS)) {
                i += 8;
                continue;
            }
        }
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (n - i <= need)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += need + 1;
    }
    return true;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static unsigned hex4(const char *p)
{
    return (unsigned)(hexval((unsigned char)p[0]) << 12 | hexval((unsigned char)p[1]) << 8 |
                      hexval((unsigned char)p[2]) << 4 | hexval((unsigned char)p[3]));
}

/* Decodes the body of a JSON string whose escapes scan_string() checked.
 * dst has room for n bytes (decoding never grows). Returns the decoded
 * length, or (size_t)-1 for an unpaired surrogate escape. dst may equal s. */
static size_t unescape(const char *s, size_t n, char *dst)
{
    size_t i = 0, o = 0;
    while (i < n) {
        const char *bs = memchr(s + i, '\\', n - i);
        size_t run = bs ? (size_t)(bs - (s + i)) : n - i;
        memmove(dst + o, s + i, run);
        o += run;
        i += run;
        if (i >= n)
            break;
        char c = s[i + 1];
        i += 2;
        switch (c) {
        case 'b': dst[o++] = '\b'; break;
        case 'f': dst[o++] = '\f'; break;
        case 'n': dst[o++] = '\n'; break;
        case 'r': dst[o++] = '\r'; break;
        case 't': dst[o++] = '\t'; break;
        case 'u': {
            unsigned cp = hex4(s + i);
            i += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return (size_t)-1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (n - i < 6 || s[i] != '\\' || s[i + 1] != 'u')
                    return (size_t)-1;
                unsigned lo = hex4(s + i + 2);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return (size_t)-1;
                i += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp < 0x80) {
                dst[o++] = (char)cp;
            } else if (cp < 0x800) {
                dst[o++] = (char)(0xC0 | cp >> 6);
                dst[o++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                dst[o++] = (char)(0xE0 | cp >> 12);
                dst[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
                dst[o++] = (char)(0x80 | (cp & 0x3F));
            } else {
                dst[o++] = (char)(0xF0 | cp >> 18);
                dst[o++] = (char)(0x80 | (cp >> 12 & 0x3F));
                dst[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
                dst[o++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: dst[o++] = c; break;   /* " \ / */
        }
    }
    return o;
}

/* ------------------------------------------------------------------------ */
/* Exact decimals                                                           */
/* ------------------------------------------------------------------------ */

struct decimal {
    bool neg;
    const char *ip, *fp;   /* integer and fraction digits */
    size_t in, fn;
    long long exp;         /* saturated at +-1e15 */
};

/* strict: the JSON number grammar. Otherwise also a leading '+', leading
 * zeros, "5." and ".5" (decimal strings). */
static bool parse_decimal(const char *s, size_t n, bool strict, struct decimal *d)
{
    size_t i = 0;

    memset(d, 0, sizeof *d);
    if (i < n && (s[i] == '-' || (!strict && s[i] == '+'))) {
        d->neg = s[i] == '-';
        i++;
    }
    d->ip = s + i;
    while (i < n && is_digit(s[i]))
        i++;
    d->in = (size_t)(s + i - d->ip);
    if (strict && (d->in == 0 || (d->in > 1 && d->ip[0] == '0')))
        return false;
    d->fp = s + i;
    if (i < n && s[i] == '.') {
        i++;
        d->fp = s + i;
        while (i < n && is_digit(s[i]))
            i++;
        d->fn = (size_t)(s + i - d->fp);
        if (strict && d->fn == 0)
            return false;
    }
    if (d->in + d->fn == 0)
        return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        bool eneg = false;
        long long ev = 0;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            eneg = s[i] == '-';
            i++;
        }
        size_t st = i;
        while (i < n && is_digit(s[i])) {
            if (ev < 1000000000000000LL)
                ev = ev * 10 + (s[i] - '0');
            i++;
        }
        if (i == st)
            return false;
        d->exp = eneg ? -ev : ev;
    }
    return i == n;
}

static inline char dec_digit(const struct decimal *d, size_t i)
{
    return i < d->in ? d->ip[i] : d->fp[i - d->in];
}

struct u256 {
    uint32_t w[8];   /* little-endian 32-bit limbs */
};

static void u256_mul10_add(struct u256 *u, unsigned add)
{
    uint64_t c = add;
    for (int i = 0; i < 8; i++) {
        uint64_t t = (uint64_t)u->w[i] * 10 + c;
        u->w[i] = (uint32_t)t;
        c = t >> 32;
    }
}

/* |d| * 10^scale as an integer in *u. Digits that fall below 10^0 are
 * dropped; *lost says whether any of them was non-zero. *ndigits gets the
 * number of decimal digits of *u (0 for zero). Returns false when *u would
 * have more than 77 digits (then nothing else is set meaningfully). */
static bool dec_scale(const struct decimal *d, int scale, struct u256 *u, bool *lost,
                      int *ndigits)
{
    size_t total = d->in + d->fn, lead = 0;

    memset(u, 0, sizeof *u);
    *lost = false;
    *ndigits = 0;
    while (lead < total && dec_digit(d, lead) == '0')
        lead++;
    if (lead == total)
        return true;
    long long nsig = (long long)(total - lead);
    long long k = d->exp - (long long)d->fn + scale;
    long long kept = nsig + k;
    if (kept > 77)
        return false;
    if (kept <= 0) {
        *lost = true;
        return true;
    }
    long long take = k < 0 ? kept : nsig;
    for (long long j = take; j < nsig && !*lost; j++)
        if (dec_digit(d, lead + (size_t)j) != '0')
            *lost = true;
    if (kept <= 19) {   /* fits in 64 bits: the common case */
        uint64_t acc = 0;
        for (long long j = 0; j < take; j++)
            acc = acc * 10 + (uint64_t)(dec_digit(d, lead + (size_t)j) - '0');
        for (long long j = 0; j < k; j++)
            acc *= 10;
        u->w[0] = (uint32_t)acc;
        u->w[1] = (uint32_t)(acc >> 32);
        *ndigits = (int)kept;
        return true;
    }
    for (long long j = 0; j < take; j++)
        u256_mul10_add(u, (unsigned)(dec_digit(d, lead + (size_t)j) - '0'));
    for (long long j = 0; j < k; j++)
        u256_mul10_add(u, 0);
    *ndigits = (int)kept;
    return true;
}

/* Whether |d| rounded to `scale` fractional digits goes up one unit of the
 * last kept digit, as BigQuery rounds NUMERIC and BIGNUMERIC values when it
 * stores them (roundingMode ROUND_HALF_AWAY_FROM_ZERO, the default, or
 * ROUND_HALF_EVEN). Meaningful when dec_scale() reported lost digits. *grows
 * says whether the rounded integer gains a digit (all kept digits were 9). */
static bool dec_round_up(const struct decimal *d, int scale, bool half_even, bool *grows)
{
    size_t total = d->in + d->fn, lead = 0;

    *grows = false;
    while (lead < total && dec_digit(d, lead) == '0')
        lead++;
    long long nsig = (long long)(total - lead);
    long long kept = nsig + d->exp - (long long)d->fn + scale;
    if (nsig == 0 || kept < 0 || kept >= nsig)
        return false;   /* zero, below half a unit, or nothing dropped */
    char first = dec_digit(d, lead + (size_t)kept);
    bool rest = false;
    for (long long j = kept + 1; j < nsig && !rest; j++)
        rest = dec_digit(d, lead + (size_t)j) != '0';
    bool odd = kept > 0 && (dec_digit(d, lead + (size_t)kept - 1) - '0') % 2;
    bool up = first > '5' || (first == '5' && (!half_even || rest || odd));
    if (up) {
        *grows = true;
        for (long long j = 0; j < kept && *grows; j++)
            *grows = dec_digit(d, lead + (size_t)j) == '9';
    }
    return up;
}

static void u256_add1(struct u256 *u)
{
    for (int i = 0; i < 8 && ++u->w[i] == 0; i++)
        ;
}

static bool u256_fits_u64(const struct u256 *u, uint64_t *v)
{
    for (int i = 2; i < 8; i++)
        if (u->w[i])
            return false;
    *v = (uint64_t)u->w[1] << 32 | u->w[0];
    return true;
}

/* Minimal two's complement, little-endian, of (neg ? -u : u) into out[32].
 * The caller guarantees the value fits in 256 bits signed. */
static size_t u256_twos_le(const struct u256 *u, bool neg, uint8_t out[32])
{
    bool zero = true;
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)u->w[i];
        out[4 * i + 1] = (uint8_t)(u->w[i] >> 8);
        out[4 * i + 2] = (uint8_t)(u->w[i] >> 16);
        out[4 * i + 3] = (uint8_t)(u->w[i] >> 24);
        if (u->w[i])
            zero = false;
    }
    if (neg && !zero) {
        unsigned carry = 1;
        for (int i = 0; i < 32; i++) {
            unsigned t = (uint8_t)~out[i] + carry;
            out[i] = (uint8_t)t;
            carry = t >> 8;
        }
    }
    size_t n = 32;
    if (neg && !zero) {
        while (n > 1 && out[n - 1] == 0xFF && (out[n - 2] & 0x80))
            n--;
    } else {
        while (n > 1 && out[n - 1] == 0 && !(out[n - 2] & 0x80))
            n--;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Civil time                                                               */
/* ------------------------------------------------------------------------ */

#define DAYS_0001_TO_1970 719162
#define MIN_TS_US (-62135596800LL * 1000000)                 /* 0001-01-01 00:00:00 */
#define MAX_TS_US (253402300799LL * 1000000 + 999999)        /* 9999-12-31 23:59:59.999999 */

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
    static const int dim[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int32_t days_from_civil(int y, int m, int d)
{
    static const int before[12] = { 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334 };
    long yy = y - 1;   /* whole years since 0001-01-01 */
    long days = yy * 365 + yy / 4 - yy / 100 + yy / 400;
    days += before[m - 1] + (m > 2 && is_leap(y)) + d - 1;
    return (int32_t)(days - DAYS_0001_TO_1970);
}

static bool digits(const char *s, size_t n, int *v)
{
    int x = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return false;
        x = x * 10 + (s[i] - '0');
    }
    *v = x;
    return true;
}

struct civil {
    int y, mo, d, h, mi, s;
    int32_t us;
};

/* 1 or 2 digits at s (n bytes available): their value, and *len. BigQuery
 * takes single-digit months, days, hours, minutes and seconds on insertAll. */
static bool digits12(const char *s, size_t n, int *v, size_t *len)
{
    if (n < 1 || !is_digit(s[0]))
        return false;
    *len = n >= 2 && is_digit(s[1]) ? 2 : 1;
    return digits(s, *len, v);
}

/* "YYYY-M[M]-D[D]" at s; *used gets its length. NULL or the reason. */
static const char *p_date(const char *s, size_t n, struct civil *c, size_t *used)
{
    size_t lm, ld;
    if (n < 8 || s[4] != '-' || !digits(s, 4, &c->y) || !digits12(s + 5, n - 5, &c->mo, &lm) ||
        5 + lm >= n || s[5 + lm] != '-' || !digits12(s + 6 + lm, n - 6 - lm, &c->d, &ld))
        return "expected YYYY-MM-DD";
    if (c->y < 1)
        return "year must be 0001..9999";
    if (c->mo < 1 || c->mo > 12)
        return "month out of range";
    if (c->d < 1 || c->d > days_in_month(c->y, c->mo))
        return "day out of range for the month";
    *used = 6 + lm + ld;
    return NULL;
}

/* "H[H]:M[M][:S[S][.f{1,6}]]" at s (seconds required when need_s); *used gets
 * its length. More than 6 fractional digits is refused: BigQuery keeps
 * microseconds, and relayd never rounds or truncates a value. */
static const char *p_clock(const char *s, size_t n, struct civil *c, size_t *used, bool need_s)
{
    size_t lh, lmi, ls, i;
    if (!digits12(s, n, &c->h, &lh) || lh >= n || s[lh] != ':' ||
        !digits12(s + lh + 1, n - lh - 1, &c->mi, &lmi))
        return need_s ? "expected HH:MM:SS" : "expected HH:MM[:SS]";
    i = lh + 1 + lmi;
    c->s = 0;
    c->us = 0;
    bool have_s = i < n && s[i] == ':';
    if (have_s) {
        if (!digits12(s + i + 1, n - i - 1, &c->s, &ls))
            return "expected HH:MM:SS";
        i += 1 + ls;
    } else if (need_s) {
        return "expected HH:MM:SS";
    }
    if (c->h > 23)
        return "hour out of range";
    if (c->mi > 59)
        return "minute out of range";
    if (c->s == 60)
        return "leap seconds are not supported";
    if (c->s > 59)
        return "second out of range";
    if (i < n && s[i] == '.') {
        if (!have_s)
            return "a fraction of a second needs the seconds (HH:MM:SS.ffffff)";
        size_t st = ++i;
        while (i < n && is_digit(s[i]))
            i++;
        size_t nd = i - st;
        if (nd == 0)
            return "expected digits after '.'";
        if (nd > 6)
            return "more than 6 fractional digits (BigQuery keeps microseconds; relayd does not round)";
        int32_t us = 0;
        for (size_t k = 0; k < 6; k++)
            us = us * 10 + (k < nd ? s[st + k] - '0' : 0);
        c->us = us;
    }
    *used = i;
    return NULL;
}

static int64_t pack_time(const struct civil *c)
{
    return (((int64_t)c->h << 12 | (int64_t)c->mi << 6 | c->s) << 20) | c->us;
}

static int64_t pack_datetime(const struct civil *c)
{
    int64_t secs = (int64_t)c->y << 26 | (int64_t)c->mo << 22 | (int64_t)c->d << 17 |
                   (int64_t)c->h << 12 | (int64_t)c->mi << 6 | c->s;
    return secs << 20 | c->us;
}

static const char *parse_date_str(const char *s, size_t n, int64_t *out)
{
    struct civil c;
    size_t used;
    const char *why = p_date(s, n, &c, &used);
    if (why)
        return why;
    if (used != n)
        return "unexpected text after the date";
    *out = days_from_civil(c.y, c.mo, c.d);
    return NULL;
}

static const char *parse_time_str(const char *s, size_t n, int64_t *out)
{
    struct civil c;
    size_t used;
    const char *why = p_clock(s, n, &c, &used, true);
    if (why)
        return why;
    if (used != n)
        return "unexpected text after the time";
    *out = pack_time(&c);
    return NULL;
}

/* Date, then optionally a separator and a clock. *used = bytes consumed. */
static const char *p_date_clock(const char *s, size_t n, struct civil *c, size_t *used)
{
    size_t dl;
    const char *why = p_date(s, n, c, &dl);
    if (why)
        return why;
    c->h = c->mi = c->s = 0;
    c->us = 0;
    *used = dl;
    if (n > dl + 1 && (s[dl] == 'T' || s[dl] == 't' || s[dl] == ' ') && is_digit(s[dl + 1])) {
        size_t u;
        why = p_clock(s + dl + 1, n - dl - 1, c, &u, false);
        if (why)
            return why;
        *used = dl + 1 + u;
    }
    return NULL;
}

static const char *parse_datetime_str(const char *s, size_t n, int64_t *out)
{
    struct civil c;
    size_t used;
    const char *why = p_date_clock(s, n, &c, &used);
    if (why)
        return why;
    if (used != n)
        return c.h == 0 && c.mi == 0 && c.s == 0 && c.us == 0 && (s[used] != ' ' && s[used] != 'T' &&
                                                                  s[used] != 't')
                   ? "unexpected text after the date"
                   : "unexpected text after the time (DATETIME has no time zone)";
    *out = pack_datetime(&c);
    return NULL;
}

static const char *parse_timestamp_str(const char *s, size_t n, int64_t *out)
{
    struct civil c;
    size_t i;
    const char *why = p_date_clock(s, n, &c, &i);
    long off = 0;   /* seconds east of UTC */

    if (why)
        return why;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i < n) {
        const char *z = s + i;
        size_t zn = n - i;
        if (zn == 1 && (z[0] == 'Z' || z[0] == 'z')) {
            off = 0;
        } else if (zn == 3 && memcmp(z, "UTC", 3) == 0) {
            off = 0;
        } else if (z[0] == '+' || z[0] == '-') {
            int hh, mm = 0;
            size_t lh;
            bool ok = digits12(z + 1, zn - 1, &hh, &lh);
            size_t j = 1 + (ok ? lh : 0);
            if (ok && j < zn) {
                if (z[j] == ':')
                    j++;
                ok = zn - j == 2 && digits(z + j, 2, &mm);
            }
            if (!ok)
                return "bad time zone offset (use +HH:MM)";
            if (hh > 14 || mm > 59)
                return "time zone offset out of range";
            off = (hh * 3600L + mm * 60L) * (z[0] == '-' ? -1 : 1);
        } else {
            return "unrecognised time zone (use Z, UTC or +HH:MM)";
        }
    }
    int64_t secs = (int64_t)days_from_civil(c.y, c.mo, c.d) * 86400 + c.h * 3600 + c.mi * 60 +
                   c.s - off;
    int64_t us = secs * 1000000 + c.us;
    if (us < MIN_TS_US || us > MAX_TS_US)
        return "out of range (0001-01-01 to 9999-12-31 UTC)";
    *out = us;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* base64                                                                   */
/* ------------------------------------------------------------------------ */

static inline int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Decodes s[0..n) into dst (which may equal s). Returns the length, or
 * (size_t)-1 with *bad = offset of the offending character (n for a bad
 * length). */
static size_t b64_decode(const char *s, size_t n, char *dst, size_t *bad)
{
    size_t m = n, pad = 0;
    while (m > 0 && s[m - 1] == '=' && pad < 2) {
        m--;
        pad++;
    }
    if ((pad && n % 4 != 0) || m % 4 == 1) {
        *bad = n;
        return (size_t)-1;
    }
    size_t i = 0, o = 0;
    for (; i + 4 <= m; i += 4) {
        int a = b64val((unsigned char)s[i]), b = b64val((unsigned char)s[i + 1]);
        int c = b64val((unsigned char)s[i + 2]), d = b64val((unsigned char)s[i + 3]);
        if ((a | b | c | d) < 0) {
            *bad = i + (a < 0 ? 0 : b < 0 ? 1 : c < 0 ? 2 : 3);
            return (size_t)-1;
        }
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        dst[o++] = (char)(v >> 16);
        dst[o++] = (char)(v >> 8);
        dst[o++] = (char)v;
    }
    if (i < m) {
        int v[3] = { 0, 0, 0 };
        for (size_t k = 0; k < m - i; k++) {
            v[k] = b64val((unsigned char)s[i + k]);
            if (v[k] < 0) {
                *bad = i + k;
                return (size_t)-1;
            }
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6;
        dst[o++] = (char)(x >> 16);
        if (m - i == 3)
            dst[o++] = (char)(x >> 8);
    }
    return o;
}

/* ------------------------------------------------------------------------ */
/* The row encoder                                                          */
/* ------------------------------------------------------------------------ */

#define MAX_FRAMES (ROWENC_MAX_DEPTH + 2)

struct frame {
    const struct rfield *f;
    long idx;             /* array index, or -1 */
};

struct enc {
    const char *p, *end, *start;
    struct buf *out;
    const struct rowenc_schema *s;
    unsigned flags;
    struct rowenc_error *err;
    uint64_t *seen;
    int depth;            /* frames in use */
    struct frame fr[MAX_FRAMES];
    char key[KEYBUF];     /* an unescaped key */
};

static size_t off(const struct enc *e, const char *at)
{
    return at >= e->start && at <= e->end ? (size_t)(at - e->start) : 0;
}

/* Writes the path of the field being encoded ("items[2].price") into dst. */
static void path_str(const struct enc *e, char *dst, size_t cap)
{
    size_t o = 0;
    dst[0] = '\0';
    for (int i = 0; i < e->depth && o + 1 < cap; i++) {
        int n = snprintf(dst + o, cap - o, "%s%s", i ? "." : "", e->fr[i].f->name);
        if (n < 0 || (size_t)n >= cap - o)
            break;
        o += (size_t)n;
        if (e->fr[i].idx >= 0) {
            n = snprintf(dst + o, cap - o, "[%ld]", e->fr[i].idx);
            if (n < 0 || (size_t)n >= cap - o)
                break;
            o += (size_t)n;
        }
    }
    utf8_cut(dst);
}

static int fail(struct enc *e, int code, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* An error about the field being encoded: "field 'PATH': <reason>". */
static int fail(struct enc *e, int code, const char *at, const char *fmt, ...)
{
    if (e->err) {
        char path[320], why[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        path_str(e, path, sizeof path);
        if (e->depth > 0)
            seterr(e->err, code, off(e, at), "field '%s': %s", path, why);
        else
            seterr(e->err, code, off(e, at), "%s", why);
    }
    return code;
}

static int fail_json(struct enc *e, const char *at, const char *why)
{
    return seterr(e->err, ROWENC_JSON, off(e, at), "invalid JSON at offset %zu: %s",
                  off(e, at), why);
}

static int nomem(struct enc *e)
{
    return seterr(e->err, ROWENC_NOMEM, 0, "out of memory");
}

static inline int need(struct enc *e, size_t n)
{
    struct buf *b = e->out;
    if (b->cap - b->len >= n)
        return 0;
    if (n > SIZE_MAX / 2 - b->len || buf_reserve(b, n))
        return nomem(e);
    return 0;
}

static inline void put_raw(struct enc *e, const void *p, size_t n)
{
    memcpy(e->out->data + e->out->len, p, n);
    e->out->len += n;
}

static inline void put_tag(struct enc *e, const struct rfield *f)
{
    put_raw(e, f->tag, f->taglen);
}

static inline void put_varint(struct enc *e, uint64_t v)
{
    e->out->len += varint_put(e->out->data + e->out->len, v);
}

/* Length prefix of a nested message: reserve one byte... */
static inline int len_begin(struct enc *e, size_t *pos)
{
    if (need(e, 1))
        return ROWENC_NOMEM;
    *pos = e->out->len++;
    return 0;
}

/* ...and fill it in, moving the body right if its length needs more. */
static int len_end(struct enc *e, size_t pos)
{
    struct buf *b = e->out;
    size_t body = b->len - pos - 1;
    if (body < 0x80) {
        b->data[pos] = (char)body;
        return 0;
    }
    size_t k = varint_len(body);
    if (need(e, k - 1))
        return ROWENC_NOMEM;
    memmove(b->data + pos + k, b->data + pos + 1, body);
    varint_put(b->data + pos, body);
    b->len += k - 1;
    return 0;
}

static inline void skip_ws(struct enc *e)
{
    const char *p = e->p;
    /* rows are nearly always compact JSON: one test when no blank follows */
    if (p < e->end && (unsigned char)*p > ' ')
        return;
    while (p < e->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    e->p = p;
}

static inline int peek(const struct enc *e)
{
    return e->p < e->end ? (unsigned char)*e->p : -1;
}

enum { S_ESC = 1, S_HIGH = 2 };

/* The first byte at or after p, before end, that a string body cannot hold
 * as it is: '"', '\\' or a control byte; end if there is none. *f gets
 * S_HIGH if a byte >= 0x80 comes before it. 16 bytes at a time with SSE2
 * (every x86-64 CPU has it), then 8 at a time in a word, then bytewise. */
static inline const char *skip_plain(const char *p, const char *end, unsigned *f)
{
#if defined(__SSE2__)
    const __m128i dq = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'), c1f = _mm_set1_epi8(0x1f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        /* max(v, 0x1f) == 0x1f exactly for the unsigned bytes <= 0x1f */
        __m128i sp = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, dq), _mm_cmpeq_epi8(v, bs)),
                                  _mm_cmpeq_epi8(_mm_max_epu8(v, c1f), c1f));
        unsigned hit = (unsigned)_mm_movemask_epi8(sp), high = (unsigned)_mm_movemask_epi8(v);
        if (hit) {
            unsigned k = (unsigned)__builtin_ctz(hit);
            if (high & ((1u << k) - 1))
                *f |= S_HIGH;
            return p + k;
        }
        if (high)
            *f |= S_HIGH;
        p += 16;
    }
#endif
    while (end - p >= 8) {
        /* the lowest flagged byte of each test is exact (higher ones may not be) */
        uint64_t v = load64(p), q = v ^ (ONES * '"'), b = v ^ (ONES * '\\');
        uint64_t hit = (((q - ONES) & ~q) | ((b - ONES) & ~b) | ((v - ONES * 0x20) & ~v)) & HIGHS;
        if (hit) {
            unsigned k = (unsigned)__builtin_ctzll(hit) >> 3;
            if (v & HIGHS & ((1ull << (8 * k)) - 1))
                *f |= S_HIGH;
            return p + k;
        }
        if (v & HIGHS)
            *f |= S_HIGH;
        p += 8;
    }
    for (; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\' || c < 0x20)
            return p;
        if (c >= 0x80)
            *f |= S_HIGH;
    }
    return end;
}

/* scan_string() from p on, flags so far f: the general case. */
static int scan_string_from(struct enc *e, const char *p, unsigned f, const char **s, size_t *n,
                            unsigned *fl)
{
    const char *end = e->end;

    for (;;) {
        p = skip_plain(p, end, &f);
        if (p >= end)
            return fail_json(e, p, "unterminated string");
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            break;
        if (c == '\\') {
            if (end - p < 2)
                return fail_json(e, end, "unterminated string");
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                break;
            case 'u':
                if (end - p < 6 || hexval((unsigned char)p[2]) < 0 ||
                    hexval((unsigned char)p[3]) < 0 || hexval((unsigned char)p[4]) < 0 ||
                    hexval((unsigned char)p[5]) < 0)
                    return fail_json(e, p, "bad \\u escape");
                p += 6;
                break;
            default:
                return fail_json(e, p, "invalid escape in string");
            }
            f |= S_ESC;
            continue;
        }
        return fail_json(e, p, c ? "control character in string" : "NUL byte in string");
    }
    *s = e->p + 1;
    *n = (size_t)(p - *s);
    *fl = f;
    e->p = p + 1;
    return 0;
}

/* At a '"': moves past the closing quote; *s, *n = the raw body; *fl gets
 * S_ESC if it has escapes, S_HIGH if it has bytes >= 0x80. Checks escapes
 * and control characters, not UTF-8. Inline: the common case (no escape
 * before the closing quote) is one skip_plain. */
static inline int scan_string(struct enc *e, const char **s, size_t *n, unsigned *fl)
{
    unsigned f = 0;
    const char *p = skip_plain(e->p + 1, e->end, &f);
    if (p < e->end && *p == '"') {
        *s = e->p + 1;
        *n = (size_t)(p - *s);
        *fl = f;
        e->p = p + 1;
        return 0;
    }
    return scan_string_from(e, p, f, s, n, fl);
}

/* A string value decoded for parsing (dates, numbers, ranges): points into
 * the input, or into the spare room past out->len, valid until the next
 * write to out. at = the opening quote. */
static int string_value(struct enc *e, const char **s, size_t *n, const char **at)
{
    unsigned fl;
    *at = e->p;
    int rc = scan_string(e, s, n, &fl);
    if (rc)
        return rc;
    if (fl & S_ESC) {
        if (need(e, *n + 1))
            return ROWENC_NOMEM;
        char *dst = e->out->data + e->out->len;
        size_t m = unescape(*s, *n, dst);
        if (m == (size_t)-1)
            return fail_json(e, *at, "unpaired surrogate escape");
        *s = dst;
        *n = m;
    }
    return 0;
}

/* A JSON number token at e->p; checks the grammar. */
static int scan_number(struct enc *e, const char **s, size_t *n)
{
    const char *p = e->p;
    /* the common case, a JSON integer -?(0|[1-9][0-9]*) not followed by a
     * fraction, an exponent or a sign, is valid as it is: no second pass */
    const char *q = p < e->end && *p == '-' ? p + 1 : p, *digits = q;
    while (q < e->end && is_digit(*q))
        q++;
    if (q > digits && (q - digits == 1 || *digits != '0') &&
        (q == e->end || !(*q == '.' || *q == 'e' || *q == 'E' || *q == '-' || *q == '+'))) {
        *s = p;
        *n = (size_t)(q - p);
        e->p = q;
        return 0;
    }
    while (p < e->end && (is_digit(*p) || *p == '-' || *p == '+' || *p == '.' || *p == 'e' ||
                          *p == 'E'))
        p++;
    struct decimal d;
    if (!parse_decimal(e->p, (size_t)(p - e->p), true, &d))
        return fail_json(e, e->p, "bad number");
    *s = e->p;
    *n = (size_t)(p - e->p);
    e->p = p;
    return 0;
}

static int literal(struct enc *e, const char *lit, size_t n)
{
    if ((size_t)(e->end - e->p) < n || memcmp(e->p, lit, n) != 0)
        return fail_json(e, e->p, "expected a value");
    e->p += n;
    return 0;
}

/* What kind of JSON value starts with c, for messages; NULL if none. */
static const char *kind(int c)
{
    switch (c) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "an array";
    case 't': case 'f': return "a boolean";
    case 'n': return "null";
    default: return c == '-' || is_digit(c) ? "a number" : NULL;
    }
}

static int type_error(struct enc *e, const struct rfield *f, const char *want)
{
    const char *got = kind(peek(e));
    if (!got)
        return fail_json(e, e->p, e->p < e->end ? "expected a value" : "unexpected end");
    return fail(e, ROWENC_TYPE, e->p, "expected %s for %s, got %s", want,
                type_info[f->type].name, got);
}

/* A string with escapes that skip_value() passes over: its \u escapes must
 * pair their surrogates (scan_string() already checked the escape syntax). */
static int string_value_check(struct enc *e, const char *s, size_t n, const char *at)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] != 'u') {
            i++;
            continue;
        }
        unsigned cp = hex4(s + i + 2);
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return fail_json(e, at, "unpaired surrogate escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (n - i < 12 || s[i + 6] != '\\' || s[i + 7] != 'u' ||
                (lo = hex4(s + i + 8)) < 0xDC00 || lo > 0xDFFF)
                return fail_json(e, at, "unpaired surrogate escape");
            i += 11;
            continue;
        }
        i += 5;
    }
    return 0;
}

/* Skips (and checks) one JSON value of any kind, iteratively. */
static int skip_value(struct enc *e)
{
    uint64_t stack[ROWENC_MAX_NESTING / 64];   /* bit set = object, clear = array */
    int depth = 0;
    int c;

value:
    skip_ws(e);
    c = peek(e);
    switch (c) {
    case '{':
    case '[':
        if (depth >= ROWENC_MAX_NESTING)
            return fail_json(e, e->p, "nesting too deep");
        if (c == '{')
            stack[depth / 64] |= 1ull << (depth % 64);
        else
            stack[depth / 64] &= ~(1ull << (depth % 64));
        depth++;
        e->p++;
        skip_ws(e);
        if (peek(e) == (c == '{' ? '}' : ']')) {
            e->p++;
            depth--;
            goto after;
        }
        if (c == '{')
            goto key;
        goto value;
    case '"': {
        const char *s;
        size_t n;
        unsigned fl;
        const char *at = e->p;
        int rc = scan_string(e, &s, &n, &fl);
        if (rc)
            return rc;
        if ((fl & S_HIGH) && !utf8_valid((const unsigned char *)s, n))
            return fail_json(e, at, "invalid UTF-8 in string");
        if ((fl & S_ESC) && (rc = string_value_check(e, s, n, at)))
            return rc;
        goto after;
    }
    case 't': {
        int rc = literal(e, "true", 4);
        if (rc)
            return rc;
        goto after;
    }
    case 'f': {
        int rc = literal(e, "false", 5);
        if (rc)
            return rc;
        goto after;
    }
    case 'n': {
        int rc = literal(e, "null", 4);
        if (rc)
            return rc;
        goto after;
    }
    default: {
        if (c != '-' && !is_digit(c))
            return fail_json(e, e->p, c < 0 ? "unexpected end" : "expected a value");
        const char *s;
        size_t n;
        int rc = scan_number(e, &s, &n);
        if (rc)
            return rc;
        goto after;
    }
    }

key:
    skip_ws(e);
    if (peek(e) != '"')
        return fail_json(e, e->p, "expected a string key");
    {
        const char *s;
        size_t n;
        unsigned fl;
        const char *at = e->p;
        int rc = scan_string(e, &s, &n, &fl);
        if (rc)
            return rc;
        if ((fl & S_HIGH) && !utf8_valid((const unsigned char *)s, n))
            return fail_json(e, at, "invalid UTF-8 in string");
        if ((fl & S_ESC) && (rc = string_value_check(e, s, n, at)))
            return rc;
    }
    skip_ws(e);
    if (peek(e) != ':')
        return fail_json(e, e->p, "expected ':' after object key");
    e->p++;
    goto value;

after:
    if (depth == 0)
        return 0;
    skip_ws(e);
    c = peek(e);
    {
        bool obj = stack[(depth - 1) / 64] >> ((depth - 1) % 64) & 1;
        if (c == ',') {
            e->p++;
            if (obj)
                goto key;
            goto value;
        }
        if (c == (obj ? '}' : ']')) {
            e->p++;
            depth--;
            goto after;
        }
        return fail_json(e, e->p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

/* ---- values ---- */

/* STRING, GEOGRAPHY, INTERVAL, and JSON given as a string. Inlined where
 * a STRING column is encoded (the commonest column: no call there), called
 * everywhere else. */
static inline __attribute__((always_inline)) int enc_string_inline(struct enc *e,
                                                                    const struct rfield *f)
{
    const char *at = e->p, *s;
    size_t n;
    unsigned fl;
    int rc = scan_string(e, &s, &n, &fl);

    if (rc)
        return rc;
    if (need(e, f->taglen + 10 + n))
        return ROWENC_NOMEM;
    put_tag(e, f);
    if (!(fl & S_ESC)) {
        if ((fl & S_HIGH) && !utf8_valid((const unsigned char *)s, n))
            return fail_json(e, at, "invalid UTF-8 in string");
        put_varint(e, n);
        put_raw(e, s, n);
        return 0;
    }
    /* decode after room for the longest length prefix, then close the gap */
    size_t vl = varint_len(n);
    char *dst = e->out->data + e->out->len + vl;
    size_t m = unescape(s, n, dst);
    if (m == (size_t)-1)
        return fail_json(e, at, "unpaired surrogate escape");
    if ((fl & S_HIGH) && !utf8_valid((const unsigned char *)dst, m))
        return fail_json(e, at, "invalid UTF-8 in string");
    size_t ml = varint_len(m);
    if (ml < vl)
        memmove(dst - vl + ml, dst, m);
    put_varint(e, m);
    e->out->len += m;
    return 0;
}

static int enc_string(struct enc *e, const struct rfield *f)
{
    return enc_string_inline(e, f);
}

/* JSON given as an object, array, number or boolean: its text, verbatim. */
static int enc_json_text(struct enc *e, const struct rfield *f)
{
    const char *st = e->p;
    int rc = skip_value(e);
    if (rc)
        return rc;
    size_t n = (size_t)(e->p - st);
    if (need(e, f->taglen + 10 + n))
        return ROWENC_NOMEM;
    put_tag(e, f);
    put_varint(e, n);
    put_raw(e, st, n);
    return 0;
}

static int enc_bytes(struct enc *e, const struct rfield *f)
{
    const char *at = e->p, *s;
    size_t n, bad;
    unsigned fl;
    char q[200];
    int rc = scan_string(e, &s, &n, &fl);

    if (rc)
        return rc;
    if (need(e, f->taglen + 10 + n))
        return ROWENC_NOMEM;
    put_tag(e, f);
    size_t vl = varint_len(n);
    char *dst = e->out->data + e->out->len + vl;
    if (fl & S_ESC) {
        n = unescape(s, n, dst);
        if (n == (size_t)-1)
            return fail_json(e, at, "unpaired surrogate escape");
        s = dst;
    }
    size_t m = b64_decode(s, n, dst, &bad);
    if (m == (size_t)-1) {
        /* in-place decoding may have overwritten the text: decode it again */
        const char *raw;
        size_t rn;
        const char *after = e->p;
        e->p = at;
        scan_string(e, &raw, &rn, &fl);
        e->p = after;
        if (fl & S_ESC) {
            rn = unescape(raw, rn, dst);
            raw = dst;
        }
        if (bad >= n)
            return fail(e, ROWENC_VALUE, at, "invalid base64 in BYTES value '%s': bad length",
                        snip(raw, rn, q, sizeof q));
        return fail(e, ROWENC_VALUE, at,
                    "invalid base64 in BYTES value '%s': bad character at position %zu",
                    snip(raw, rn, q, sizeof q), bad);
    }
    size_t ml = varint_len(m);
    if (ml < vl)
        memmove(dst - vl + ml, dst, m);
    put_varint(e, m);
    e->out->len += m;
    return 0;
}

/* The text of a number or string value: s/n, and whether it came from a
 * JSON number (strict grammar). Anything else is a type error. */
static int numeric_text(struct enc *e, const struct rfield *f, const char *want, const char **s,
                        size_t *n, const char **at, bool *is_number)
{
    int c = peek(e);
    *at = e->p;
    if (c == '"') {
        *is_number = false;
        return string_value(e, s, n, at);
    }
    if (c == '-' || is_digit(c)) {
        *is_number = true;
        return scan_number(e, s, n);
    }
    return type_error(e, f, want);
}

static const char *to_int64(const char *s, size_t n, bool strict, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (!strict) {   /* a string: digits with an optional sign, as insertAll takes ("1.0" is not) */
        size_t k = n > 0 && (s[0] == '-' || s[0] == '+') ? 1 : 0;
        bool plain = k < n;
        for (; k < n && plain; k++)
            plain = is_digit(s[k]);
        if (!plain) {
            struct decimal dd;
            return parse_decimal(s, n, false, &dd) ? "is not an integer" : "is not a number";
        }
    }
    if (n > 0 && s[0] == '-') {
        neg = true;
        i = 1;
    }
    if (n - i >= 1 && n - i <= 18) {   /* fast path: plain digits */
        int64_t x = 0;
        size_t k = i;
        for (; k < n && is_digit(s[k]); k++)
            x = x * 10 + (s[k] - '0');
        if (k == n) {
            *out = neg ? -x : x;
            return NULL;
        }
    }
    struct decimal d;
    struct u256 u;
    bool lost;
    int nd;
    uint64_t m;
    if (!parse_decimal(s, n, strict, &d))
        return "is not a number";
    if (!dec_scale(&d, 0, &u, &lost, &nd) || !u256_fits_u64(&u, &m) ||
        m > (d.neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return lost ? "is not an integer" : "is out of range";
    if (lost)
        return "is not an integer";
    *out = d.neg ? (m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m) : (int64_t)m;
    return NULL;
}

static int enc_int64(struct enc *e, const struct rfield *f)
{
    const char *s, *at, *why;
    size_t n;
    bool num;
    int64_t v;
    char q[200];
    int rc = numeric_text(e, f, "a number or a decimal string", &s, &n, &at, &num);

    if (rc)
        return rc;
    if ((why = to_int64(s, n, num, &v)))
        return fail(e, ROWENC_VALUE, at, "INT64 value '%s' %s", snip(s, n, q, sizeof q), why);
    if (need(e, f->taglen + 10))
        return ROWENC_NOMEM;
    put_tag(e, f);
    put_varint(e, (uint64_t)v);
    return 0;
}

/* The double nearest to d without strtod, when that is easy to get exactly
 * right: at most 15 significant digits (so the digits are an exact double)
 * scaled by 10^k with |k| <= 22 (an exact double too). One IEEE multiply or
 * divide of two exact values is correctly rounded, as strtod's result is.
 * Needs double arithmetic without excess precision (FLT_EVAL_METHOD 0). */
static bool exact_double(const struct decimal *d, double *out)
{
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    static const double p10[23] = { 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21,
                                    1e22 };
    size_t total = d->in + d->fn, lead = 0;
    while (lead < total && dec_digit(d, lead) == '0')
        lead++;
    if (total - lead > 15)
        return false;
    long long k = d->exp - (long long)d->fn;
    if (k < -22 || k > 22)
        return false;
    uint64_t m = 0;
    for (size_t i = lead; i < total; i++)
        m = m * 10 + (uint64_t)(dec_digit(d, i) - '0');
    double v = (double)m;
    v = k >= 0 ? v * p10[k] : v / p10[-k];
    *out = d->neg ? -v : v;
    return true;
#else
    (void)d;
    (void)out;
    return false;
#endif
}

static int enc_float64(struct enc *e, const struct rfield *f)
{
    const char *s, *at;
    size_t n;
    bool num;
    double v;
    char q[200];
    int rc = numeric_text(e, f, "a number or a string", &s, &n, &at, &num);

    if (rc)
        return rc;
    if (!num && (ieq(s, n, "NaN")))
        v = NAN;
    else if (!num && (ieq(s, n, "Infinity") || ieq(s, n, "+Infinity") || ieq(s, n, "inf") ||
                      ieq(s, n, "+inf")))
        v = INFINITY;
    else if (!num && (ieq(s, n, "-Infinity") || ieq(s, n, "-inf")))
        v = -INFINITY;
    else {
        struct decimal d;
        char tmp[128], *t = tmp;
        if (!parse_decimal(s, n, num, &d))
            return fail(e, ROWENC_VALUE, at, "FLOAT64 value '%s' is not a number",
                        snip(s, n, q, sizeof q));
        if (exact_double(&d, &v))
            goto put;
        if (n >= sizeof tmp && !(t = malloc(n + 1)))
            return nomem(e);
        memcpy(t, s, n);
        t[n] = '\0';
        v = strtod_l(t, NULL, e->s->c_locale);
        if (t != tmp)
            free(t);
        if (isinf(v))
            return fail(e, ROWENC_VALUE, at, "FLOAT64 value '%s' is out of range",
                        snip(s, n, q, sizeof q));
    }
put:;
    uint64_t bits;
    memcpy(&bits, &v, 8);
    if (need(e, f->taglen + 8))
        return ROWENC_NOMEM;
    put_tag(e, f);
    char *o = e->out->data + e->out->len;
    for (int i = 0; i < 8; i++)
        o[i] = (char)(bits >> (8 * i));
    e->out->len += 8;
    return 0;
}

static int enc_bool(struct enc *e, const struct rfield *f)
{
    int c = peek(e), rc;
    bool v;
    if (c == 't') {
        rc = literal(e, "true", 4);
        v = true;
    } else if (c == 'f') {
        rc = literal(e, "false", 5);
        v = false;
    } else if (c == '"') {      /* "true" / "false" in any case, as insertAll takes them */
        const char *s, *at;
        size_t n;
        char q[200];
        if ((rc = string_value(e, &s, &n, &at)))
            return rc;
        if (ieq(s, n, "true"))
            v = true;
        else if (ieq(s, n, "false"))
            v = false;
        else
            return fail(e, ROWENC_VALUE, at, "BOOL value '%s' is not true or false",
                        snip(s, n, q, sizeof q));
    } else {
        return type_error(e, f, "true or false");
    }
    if (rc)
        return rc;
    if (need(e, f->taglen + 1))
        return ROWENC_NOMEM;
    put_tag(e, f);
    e->out->data[e->out->len++] = v;
    return 0;
}

static int enc_numeric(struct enc *e, const struct rfield *f)
{
    const char *s, *at, *tn = type_info[f->type].name;
    size_t n;
    bool num, lost, big = f->type == RT_BIGNUMERIC;
    struct decimal d;
    struct u256 u;
    int nd;
    char q[200];
    int rc = numeric_text(e, f, "a number or a decimal string", &s, &n, &at, &num);

    if (rc)
        return rc;
    if (!parse_decimal(s, n, num, &d))
        return fail(e, ROWENC_VALUE, at, "%s value '%s' is not a decimal number", tn,
                    snip(s, n, q, sizeof q));
    /* Round to the column's scale as BigQuery does when it stores the value,
     * then scale to the wire's 9 (38) fractional digits: exact. */
    int wire = big ? 38 : 9;
    bool ok = dec_scale(&d, f->scale, &u, &lost, &nd), grows;
    if (ok && lost && dec_round_up(&d, f->scale, f->half_even, &grows)) {
        u256_add1(&u);
        nd += grows || nd == 0;
    }
    for (int i = f->scale; ok && i < wire; i++) {
        u256_mul10_add(&u, 0);
        nd += nd > 0;
    }
    ok = ok && nd <= 77;
    if (big) {
        /* the range of a 256-bit two's complement integer */
        bool over = !ok || u.w[7] > 0x80000000u ||
                    (u.w[7] == 0x80000000u &&
                     (!d.neg || (u.w[0] | u.w[1] | u.w[2] | u.w[3] | u.w[4] | u.w[5] | u.w[6])));
        if (over)
            return fail(e, ROWENC_VALUE, at, "BIGNUMERIC value '%s' exceeds precision 76.76",
                        snip(s, n, q, sizeof q));
    } else if (!ok || nd > 38) {
        return fail(e, ROWENC_VALUE, at, "NUMERIC value '%s' exceeds precision 38",
                    snip(s, n, q, sizeof q));
    }
    uint8_t bytes[32];
    size_t bn = u256_twos_le(&u, d.neg, bytes);
    if (need(e, f->taglen + 1 + bn))
        return ROWENC_NOMEM;
    put_tag(e, f);
    e->out->data[e->out->len++] = (char)bn;
    put_raw(e, bytes, bn);
    return 0;
}

/* Seconds since the epoch (a JSON number) to microseconds, exactly: digits
 * below a microsecond are refused, never dropped (as in a TIMESTAMP string). */
static const char *epoch_us(const char *s, size_t n, int64_t *out)
{
    struct decimal d;
    struct u256 u;
    bool lost;
    int nd;
    uint64_t m;
    if (!parse_decimal(s, n, true, &d))
        return "is not a number";
    if (!dec_scale(&d, 6, &u, &lost, &nd) || nd > 18 || !u256_fits_u64(&u, &m))
        return "is out of range (0001-01-01 to 9999-12-31 UTC)";
    if (lost)
        return "has more than 6 fractional digits (BigQuery keeps microseconds; relayd does not round)";
    int64_t v = (int64_t)m;
    if (d.neg)
        v = -v;
    if (v < MIN_TS_US || v > MAX_TS_US)
        return "is out of range (0001-01-01 to 9999-12-31 UTC)";
    *out = v;
    return NULL;
}

/* TIMESTAMP, DATE, TIME, DATETIME. */
static int enc_civil(struct enc *e, const struct rfield *f)
{
    const char *s, *at, *why, *tn = type_info[f->type].name;
    size_t n;
    int64_t v = 0;
    char q[200];
    int c = peek(e), rc;

    if (f->type == RT_TIMESTAMP && (c == '-' || is_digit(c))) {
        at = e->p;
        if ((rc = scan_number(e, &s, &n)))
            return rc;
        if ((why = epoch_us(s, n, &v)))
            return fail(e, ROWENC_VALUE, at, "TIMESTAMP value %s %s", snip(s, n, q, sizeof q),
                        why);
    } else {
        if (c != '"')
            return type_error(e, f, f->type == RT_TIMESTAMP ? "a string or a number" : "a string");
        if ((rc = string_value(e, &s, &n, &at)))
            return rc;
        switch (f->type) {
        case RT_DATE: why = parse_date_str(s, n, &v); break;
        case RT_TIME: why = parse_time_str(s, n, &v); break;
        case RT_DATETIME: why = parse_datetime_str(s, n, &v); break;
        default: why = parse_timestamp_str(s, n, &v); break;
        }
        if (why)
            return fail(e, ROWENC_VALUE, at, "invalid %s '%s': %s", tn, snip(s, n, q, sizeof q),
                        why);
    }
    if (need(e, f->taglen + 10))
        return ROWENC_NOMEM;
    put_tag(e, f);
    put_varint(e, (uint64_t)v);
    return 0;
}

/* ---- RANGE ---- */

static const char *range_bound(uint8_t elem, const char *s, size_t n, bool *has, int64_t *v)
{
    while (n > 0 && s[0] == ' ') {
        s++;
        n--;
    }
    while (n > 0 && s[n - 1] == ' ')
        n--;
    if (ieq(s, n, "UNBOUNDED") || ieq(s, n, "NULL")) {
        *has = false;
        return NULL;
    }
    *has = true;
    switch (elem) {
    case RT_DATE: return parse_date_str(s, n, v);
    case RT_DATETIME: return parse_datetime_str(s, n, v);
    default: return parse_timestamp_str(s, n, v);
    }
}

static int emit_range(struct enc *e, const struct rfield *f, const char *at, bool hs, int64_t vs,
                      bool he, int64_t ve)
{
    if (hs && he && vs >= ve)
        return fail(e, ROWENC_VALUE, at, "RANGE start must be before its end");
    size_t body = (hs ? 1 + varint_len((uint64_t)vs) : 0) + (he ? 1 + varint_len((uint64_t)ve) : 0);
    if (need(e, f->taglen + 1 + body))
        return ROWENC_NOMEM;
    put_tag(e, f);
    e->out->data[e->out->len++] = (char)body;   /* at most 22 */
    if (hs) {
        e->out->data[e->out->len++] = 0x08;     /* field 1, varint */
        put_varint(e, (uint64_t)vs);
    }
    if (he) {
        e->out->data[e->out->len++] = 0x10;     /* field 2, varint */
        put_varint(e, (uint64_t)ve);
    }
    return 0;
}

static int enc_range_string(struct enc *e, const struct rfield *f)
{
    const char *s, *at, *why;
    size_t n;
    char q[200];
    bool hs, he;
    int64_t vs = 0, ve = 0;
    int rc = string_value(e, &s, &n, &at);

    if (rc)
        return rc;
    const char *comma = n >= 2 ? memchr(s + 1, ',', n - 2) : NULL;
    if (n < 3 || s[0] != '[' || s[n - 1] != ')' || !comma ||
        memchr(comma + 1, ',', (size_t)(s + n - 1 - (comma + 1))))
        return fail(e, ROWENC_VALUE, at, "invalid RANGE '%s': expected \"[start, end)\"",
                    snip(s, n, q, sizeof q));
    if ((why = range_bound(f->elem, s + 1, (size_t)(comma - s - 1), &hs, &vs)))
        return fail(e, ROWENC_VALUE, at, "invalid RANGE '%s': start: %s",
                    snip(s, n, q, sizeof q), why);
    if ((why = range_bound(f->elem, comma + 1, (size_t)(s + n - 1 - comma - 1), &he, &ve)))
        return fail(e, ROWENC_VALUE, at, "invalid RANGE '%s': end: %s",
                    snip(s, n, q, sizeof q), why);
    return emit_range(e, f, at, hs, vs, he, ve);
}

static int enc_range_object(struct enc *e, const struct rfield *f)
{
    const char *open = e->p;
    bool has[2] = { false, false }, seen[2] = { false, false };
    int64_t v[2] = { 0, 0 };
    char q[200];
    int rc;

    e->p++;
    skip_ws(e);
    if (peek(e) == '}') {
        e->p++;
        return emit_range(e, f, open, false, 0, false, 0);
    }
    for (;;) {
        const char *k, *kat = e->p, *why;
        size_t kn;
        if (peek(e) != '"')
            return fail_json(e, e->p, "expected a string key");
        if ((rc = string_value(e, &k, &kn, &kat)))
            return rc;
        int which = ieq(k, kn, "start") ? 0 : ieq(k, kn, "end") ? 1 : -1;
        if (which < 0) {
            if (!utf8_valid((const unsigned char *)k, kn))
                return fail_json(e, kat, "invalid UTF-8 in string");
            if (!(e->flags & ROWENC_IGNORE_UNKNOWN))
                return fail(e, ROWENC_UNKNOWN, kat, "unknown RANGE key '%s' (use start and end)",
                            snip(k, kn, q, sizeof q));
        }
        skip_ws(e);
        if (peek(e) != ':')
            return fail_json(e, e->p, "expected ':' after object key");
        e->p++;
        skip_ws(e);
        if (which < 0) {
            if ((rc = skip_value(e)))
                return rc;
        } else {
            const char *name = which ? "end" : "start", *s, *at = e->p;
            size_t n;
            int c = peek(e);
            if (seen[which])
                return fail(e, ROWENC_DUPLICATE, kat, "RANGE %s given twice", name);
            seen[which] = true;
            if (c == 'n') {
                if ((rc = literal(e, "null", 4)))
                    return rc;
            } else if (c == '"') {
                if ((rc = string_value(e, &s, &n, &at)))
                    return rc;
                if ((why = range_bound(f->elem, s, n, &has[which], &v[which])))
                    return fail(e, ROWENC_VALUE, at, "RANGE %s '%s': %s", name,
                                snip(s, n, q, sizeof q), why);
            } else if (f->elem == RT_TIMESTAMP && (c == '-' || is_digit(c))) {
                if ((rc = scan_number(e, &s, &n)))
                    return rc;
                if ((why = epoch_us(s, n, &v[which])))
                    return fail(e, ROWENC_VALUE, at, "RANGE %s %s %s", name,
                                snip(s, n, q, sizeof q), why);
                has[which] = true;
            } else {
                const char *got = kind(c);
                if (!got)
                    return fail_json(e, e->p, c < 0 ? "unexpected end" : "expected a value");
                return fail(e, ROWENC_TYPE, at, "RANGE %s: expected a string or null, got %s",
                            name, got);
            }
        }
        skip_ws(e);
        int c = peek(e);
        if (c == ',') {
            e->p++;
            skip_ws(e);
            continue;
        }
        if (c == '}') {
            e->p++;
            break;
        }
        return fail_json(e, e->p, "expected ',' or '}'");
    }
    return emit_range(e, f, open, has[0], v[0], has[1], v[1]);
}

/* ---- records ---- */

static int enc_object(struct enc *e, const struct rmsg *m);

static int enc_record(struct enc *e, const struct rfield *f)
{
    size_t pos;
    int rc;
    if (peek(e) != '{')
        return type_error(e, f, "an object");
    if (need(e, f->taglen))
        return ROWENC_NOMEM;
    put_tag(e, f);
    if ((rc = len_begin(e, &pos)) || (rc = enc_object(e, f->sub)))
        return rc;
    return len_end(e, pos);
}

static int enc_value(struct enc *e, const struct rfield *f)
{
    int c = peek(e);
    switch (f->type) {
    case RT_STRING:
        /* a number or a boolean becomes its JSON text, as insertAll does */
        if (c == '-' || is_digit(c) || c == 't' || c == 'f')
            return enc_json_text(e, f);
        if (c != '"')
            return type_error(e, f, "a string");
        return enc_string_inline(e, f);
    case RT_GEOGRAPHY:
    case RT_INTERVAL:
        if (c != '"')
            return type_error(e, f, "a string");
        return enc_string(e, f);
    case RT_JSON:
        if (c == '"')
            return enc_string(e, f);
        if (c == '{' || c == '[' || c == 't' || c == 'f' || c == '-' || is_digit(c))
            return enc_json_text(e, f);
        return type_error(e, f, "a JSON value");
    case RT_BYTES:
        if (c != '"')
            return type_error(e, f, "a base64 string");
        return enc_bytes(e, f);
    case RT_INT64:
        return enc_int64(e, f);
    case RT_FLOAT64:
        return enc_float64(e, f);
    case RT_BOOL:
        return enc_bool(e, f);
    case RT_NUMERIC:
    case RT_BIGNUMERIC:
        return enc_numeric(e, f);
    case RT_TIMESTAMP:
    case RT_DATE:
    case RT_TIME:
    case RT_DATETIME:
        return enc_civil(e, f);
    case RT_RECORD:
        return enc_record(e, f);
    case RT_RANGE:
        if (c == '"')
            return enc_range_string(e, f);
        if (c == '{')
            return enc_range_object(e, f);
        return type_error(e, f, "a \"[start, end)\" string or an object");
    default:
        return fail(e, ROWENC_INVAL, e->p, "internal error: bad column type");
    }
}

/* A column's value: null, an array for REPEATED, or one value. The column's
 * frame is on top of the path stack. */
static int enc_field(struct enc *e, const struct rfield *f)
{
    int c = peek(e), rc;
    const char *at = e->p;

    if (c == 'n') {
        if ((rc = literal(e, "null", 4)))
            return rc;
        if (f->mode == RM_REQUIRED)
            return fail(e, ROWENC_MISSING, at, "REQUIRED field is null");
        return 0;
    }
    if (f->mode != RM_REPEATED)
        return enc_value(e, f);
    if (c != '[') {
        const char *got = kind(c);
        if (!got)
            return fail_json(e, e->p, c < 0 ? "unexpected end" : "expected a value");
        return fail(e, ROWENC_TYPE, at, "expected an array for REPEATED %s, got %s",
                    type_info[f->type].name, got);
    }
    e->p++;
    skip_ws(e);
    if (peek(e) == ']') {
        e->p++;
        return 0;
    }
    struct frame *fr = &e->fr[e->depth - 1];
    for (long i = 0;; i++) {
        fr->idx = i;
        if (peek(e) == 'n') {
            at = e->p;
            if ((rc = literal(e, "null", 4)))
                return rc;
            return fail(e, ROWENC_TYPE, at, "null element in a REPEATED field");
        }
        if ((rc = enc_value(e, f)))
            return rc;
        skip_ws(e);
        c = peek(e);
        if (c == ',') {
            e->p++;
            skip_ws(e);
            continue;
        }
        if (c == ']') {
            e->p++;
            break;
        }
        return fail_json(e, e->p, "expected ',' or ']'");
    }
    fr->idx = -1;
    return 0;
}

/* The field of m named k[0..n) (ASCII case ignored), or NULL. k may be
 * read up to limit (see key_words). */
static const struct rfield *lookup(const struct rmsg *m, const char *k, size_t n,
                                   const char *limit)
{
    uint64_t w0, wl;
    uint32_t h = key_words(k, n, limit, &w0, &wl);
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t slot = m->slots[i];
        if (!slot)
            return NULL;
        const struct rfield *f = &m->f[slot - 1];
        if (f->hash == h && f->keylen == n && f->kw0 == w0 && f->kwl == wl) {
            size_t j = 8;   /* bytes 8 .. n-8 are in neither word */
            while (j + 8 < n && fold((unsigned char)k[j]) == (unsigned char)f->key[j])
                j++;
            if (j + 8 >= n)
                return f;
        }
    }
}

/* Is k[0..n) exactly f's key, byte for byte (so already in folded case)?
 * The words are compared with f->kw0 / f->kwl: f->key is folded, so they
 * are its plain bytes. k may be read up to limit, as in lookup(). */
static inline bool plain_key(const struct rfield *f, const char *k, size_t n, const char *limit)
{
    if (f->keylen != n || key_word0(k, n, limit) != f->kw0 ||
        (n > 8 && load64(k + n - 8) != f->kwl))
        return false;
    for (size_t j = 8; j + 8 < n; j++)   /* bytes 8 .. n-8 are in neither word */
        if (k[j] != f->key[j])
            return false;
    return true;
}

static void clear_bits(uint64_t *w, uint32_t base, uint32_t n)
{
    while (n > 0) {
        uint32_t b = base % 64, k = 64 - b < n ? 64 - b : n;
        uint64_t mask = (k == 64 ? ~0ull : ((1ull << k) - 1)) << b;
        w[base / 64] &= ~mask;
        base += k;
        n -= k;
    }
}

static int push(struct enc *e, const struct rfield *f)
{
    if (e->depth >= MAX_FRAMES)
        return fail(e, ROWENC_INVAL, e->p, "internal error: path too deep");
    e->fr[e->depth].f = f;
    e->fr[e->depth].idx = -1;
    e->depth++;
    return 0;
}

/* At a '{': the fields of message m, then the check for REQUIRED ones. */
static int enc_object(struct enc *e, const struct rmsg *m)
{
    const char *open = e->p;
    char q[200];
    int rc, c;

    e->p++;
    clear_bits(e->seen, m->bit_base, m->n);
    skip_ws(e);
    if (peek(e) == '}') {
        e->p++;
        goto done;
    }
    /* Rows mostly give their keys in schema order and in the schema's case:
     * the field after the last one matched is tried first, by plain bytes.
     * Its key is folded, so equal bytes mean lookup() would find it too. */
    const struct rfield *next = m->f, *stop = m->f + m->n;
    for (;;) {
        const char *kat = e->p, *k, *key;
        size_t kn, keyn;
        unsigned fl;
        const struct rfield *f = NULL;

        if (peek(e) != '"')
            return fail_json(e, e->p, "expected a string key");
        if ((rc = scan_string(e, &k, &kn, &fl)))
            return rc;
        key = k;
        keyn = kn;
        if (fl & S_ESC) {
            if (kn <= sizeof e->key) {
                keyn = unescape(k, kn, e->key);
                if (keyn == (size_t)-1)
                    return fail_json(e, kat, "unpaired surrogate escape");
                key = e->key;
                f = lookup(m, key, keyn, e->key + sizeof e->key);
            } else if ((rc = string_value_check(e, k, kn, kat))) {
                return rc;
            }
        } else if (next < stop && plain_key(next, key, keyn, e->end)) {
            f = next;
        } else {
            f = lookup(m, key, keyn, e->end);
        }
        if (f)
            next = f + 1;
        skip_ws(e);
        if (peek(e) != ':')
            return fail_json(e, e->p, "expected ':' after object key");
        e->p++;
        skip_ws(e);
        if (!f) {
            if ((fl & S_HIGH) && !utf8_valid((const unsigned char *)key, keyn))
                return fail_json(e, kat, "invalid UTF-8 in string");
            if (!(e->flags & ROWENC_IGNORE_UNKNOWN)) {
                char path[320];
                path_str(e, path, sizeof path);
                return seterr(e->err, ROWENC_UNKNOWN, off(e, kat), "unknown field '%s%s%s'", path,
                              e->depth ? "." : "", snip(key, keyn, q, sizeof q));
            }
            if ((rc = skip_value(e)))
                return rc;
        } else {
            uint64_t *w = &e->seen[f->bit / 64], bit = 1ull << (f->bit % 64);
            if ((rc = push(e, f)))
                return rc;
            if (*w & bit)
                return fail(e, ROWENC_DUPLICATE, kat, "given twice");
            *w |= bit;
            rc = enc_field(e, f);
            if (rc)
                return rc;
            e->depth--;
        }
        skip_ws(e);
        c = peek(e);
        if (c == ',') {
            e->p++;
            skip_ws(e);
            continue;
        }
        if (c == '}') {
            e->p++;
            break;
        }
        return fail_json(e, e->p, "expected ',' or '}'");
    }
done:
    for (uint32_t i = 0; i < m->nreq; i++) {
        const struct rfield *f = &m->f[m->req[i]];
        if (!(e->seen[f->bit / 64] >> (f->bit % 64) & 1)) {
            if ((rc = push(e, f)))
                return rc;
            return fail(e, ROWENC_MISSING, open, "REQUIRED field is missing");
        }
    }
    return 0;
}

int rowenc_encode(const struct rowenc_schema *s, const char *json, size_t len, unsigned flags,
                  struct buf *out, struct rowenc_error *err)
{
    uint64_t seen[SEEN_WORDS];
    struct enc e;
    int rc;

    if (!s || !out || (!json && len))
        return seterr(err, ROWENC_INVAL, 0, "rowenc_encode: bad argument");
    e.start = e.p = json ? json : "";
    e.end = e.p + len;
    e.out = out;
    e.s = s;
    e.flags = flags;
    e.err = err;
    e.seen = seen;
    e.depth = 0;
    memset(seen, 0, ((s->nfields + 63) / 64) * sizeof seen[0]);

    size_t mark = out->len;
    skip_ws(&e);
    if (peek(&e) != '{') {
        rc = fail_json(&e, e.p, e.p == e.end ? "empty row" : "a row must be a JSON object");
    } else {
        rc = enc_object(&e, &s->root);
        if (rc == 0) {
            skip_ws(&e);
            if (e.p != e.end)
                rc = fail_json(&e, e.p, "unexpected data after the object");
        }
    }
    if (rc) {
        out->len = mark;
        return rc;
    }
    set_ok(err);
    return ROWENC_OK;
}

/* ------------------------------------------------------------------------ */
/* Schema                                                                   */
/* ------------------------------------------------------------------------ */

struct sctx {
    struct rowenc_schema *s;
    struct rowenc_error *err;
    struct buf path;      /* the field being parsed, "a.b"; NUL-terminated */
    uint32_t ntypes;      /* RECORD message types so far */
};

static int serr(struct sctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int serr(struct sctx *c, int code, const char *fmt, ...)
{
    if (c->err) {
        char why[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        if (code == ROWENC_NOMEM)
            seterr(c->err, code, 0, "out of memory");
        else if (c->path.len)
            seterr(c->err, code, 0, "schema field '%.300s': %s", c->path.data, why);
        else
            seterr(c->err, code, 0, "schema: %s", why);
    }
    return code;
}

static void free_msg(struct rmsg *m)
{
    if (!m)
        return;
    for (uint32_t i = 0; i < m->n; i++) {
        struct rfield *f = &m->f[i];
        free(f->name);
        free(f->key);
        free(f->proto_name);
        if (f->sub) {
            free_msg(f->sub);
            free(f->sub);
        }
    }
    free(m->f);
    free(m->slots);
    free(m->req);
    free(m->type_name);
}

void rowenc_schema_free(struct rowenc_schema *s)
{
    if (!s)
        return;
    free_msg(&s->root);
    if (s->c_locale)
        freelocale(s->c_locale);
    free(s);
}

size_t rowenc_schema_columns(const struct rowenc_schema *s)
{
    return s ? s->root.n : 0;
}

static bool is_ident(const char *s)
{
    if (!(*s == '_' || (fold((unsigned char)*s) >= 'a' && fold((unsigned char)*s) <= 'z')))
        return false;
    for (s++; *s; s++)
        if (!(*s == '_' || is_digit(*s) || (fold((unsigned char)*s) >= 'a' &&
                                            fold((unsigned char)*s) <= 'z')))
            return false;
    return true;
}

/* A string member of o, or NULL (absent or JSON null). *bad when present
 * but not a string. */
static const char *str_member(json_t *o, const char *key, bool *bad)
{
    json_t *v = json_object_get(o, key);
    *bad = v && !json_is_null(v) && !json_is_string(v);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int parse_fields(struct sctx *c, json_t *arr, struct rmsg *m, int depth);

static int parse_field(struct sctx *c, json_t *o, struct rfield *f, size_t index, int depth)
{
    bool bad;
    const char *name, *type, *mode;
    size_t base = c->path.len;
    char num[32];

    snprintf(num, sizeof num, "#%zu", index + 1);
    if ((base && buf_append(&c->path, ".", 1)) || buf_puts(&c->path, num))
        return serr(c, ROWENC_NOMEM, "out of memory");
    if (!json_is_object(o))
        return serr(c, ROWENC_SCHEMA, "expected an object");
    name = str_member(o, "name", &bad);
    if (!name || bad)
        return serr(c, ROWENC_SCHEMA, "missing \"name\" (a string)");
    if (!*name)
        return serr(c, ROWENC_SCHEMA, "empty name");
    c->path.len = base;
    if ((base && buf_append(&c->path, ".", 1)) || buf_puts(&c->path, name))
        return serr(c, ROWENC_NOMEM, "out of memory");

    size_t nlen = strlen(name), chars = 0;
    if (nlen != json_string_length(json_object_get(o, "name")))
        return serr(c, ROWENC_SCHEMA, "name contains a NUL character");
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch < 0x20 || ch == 0x7f)
            return serr(c, ROWENC_SCHEMA, "name contains a control character");
        chars += (ch & 0xC0) != 0x80;
    }
    if (chars > ROWENC_MAX_NAME)
        return serr(c, ROWENC_SCHEMA, "name longer than %d characters", ROWENC_MAX_NAME);

    type = str_member(o, "type", &bad);
    if (!type || bad)
        return serr(c, ROWENC_SCHEMA, "missing \"type\" (a string)");
    size_t t;
    for (t = 0; t < sizeof type_names / sizeof type_names[0]; t++)
        if (ieq(type, strlen(type), type_names[t].name))
            break;
    if (t == sizeof type_names / sizeof type_names[0])
        return serr(c, ROWENC_SCHEMA, "unknown type '%.64s'", type);
    f->type = (uint8_t)type_names[t].type;

    mode = str_member(o, "mode", &bad);
    if (bad)
        return serr(c, ROWENC_SCHEMA, "\"mode\" must be a string");
    if (!mode || ieq(mode, strlen(mode), "NULLABLE"))
        f->mode = RM_NULLABLE;
    else if (ieq(mode, strlen(mode), "REQUIRED"))
        f->mode = RM_REQUIRED;
    else if (ieq(mode, strlen(mode), "REPEATED"))
        f->mode = RM_REPEATED;
    else
        return serr(c, ROWENC_SCHEMA, "unknown mode '%.64s' (NULLABLE, REQUIRED or REPEATED)",
                    mode);

    const char *dflt = str_member(o, "defaultValueExpression", &bad);
    f->has_default = dflt && *dflt;

    if (f->type == RT_TIMESTAMP) {
        json_t *tp = json_object_get(o, "timestampPrecision");
        long long p = 6;
        if (json_is_integer(tp))
            p = json_integer_value(tp);
        else if (json_is_string(tp))
            p = strtoll(json_string_value(tp), NULL, 10);
        else if (tp && !json_is_null(tp))
            p = -1;
        if (p != 6)
            return serr(c, ROWENC_SCHEMA,
                        "timestampPrecision other than 6 (picosecond TIMESTAMP) is not supported");
    }
    if (f->type == RT_NUMERIC || f->type == RT_BIGNUMERIC) {
        /* Parameterized NUMERIC(P, S) / BIGNUMERIC(P, S): BigQuery rounds to S.
         * The precision is the backend's to check (a row error, as on insertAll). */
        long long maxs = f->type == RT_NUMERIC ? 9 : 38, sc = maxs;
        json_t *pj = json_object_get(o, "precision"), *sj = json_object_get(o, "scale");
        if (pj && !json_is_null(pj)) {
            sc = 0;
            if (json_is_integer(sj))
                sc = json_integer_value(sj);
            else if (json_is_string(sj))
                sc = strtoll(json_string_value(sj), NULL, 10);
            else if (sj && !json_is_null(sj))
                sc = -1;
        }
        if (sc < 0 || sc > maxs)
            return serr(c, ROWENC_SCHEMA, "scale must be 0..%lld for %s", maxs,
                        type_info[f->type].name);
        f->scale = (uint8_t)sc;
        const char *rm = str_member(o, "roundingMode", &bad);
        if (bad)
            return serr(c, ROWENC_SCHEMA, "\"roundingMode\" must be a string");
        if (rm && ieq(rm, strlen(rm), "ROUND_HALF_EVEN"))
            f->half_even = true;
        else if (rm && !ieq(rm, strlen(rm), "ROUND_HALF_AWAY_FROM_ZERO") &&
                 !ieq(rm, strlen(rm), "ROUNDING_MODE_UNSPECIFIED"))
            return serr(c, ROWENC_SCHEMA, "unknown roundingMode '%.64s' (ROUND_HALF_AWAY_FROM_ZERO "
                        "or ROUND_HALF_EVEN)", rm);
    }
    if (f->type == RT_RANGE) {
        json_t *ret = json_object_get(o, "rangeElementType");
        const char *et = json_is_object(ret) ? str_member(ret, "type", &bad) : NULL;
        if (!et)
            return serr(c, ROWENC_SCHEMA,
                        "RANGE needs \"rangeElementType\": "
                        "{\"type\": DATE, DATETIME or TIMESTAMP}");
        if (ieq(et, strlen(et), "DATE"))
            f->elem = RT_DATE;
        else if (ieq(et, strlen(et), "DATETIME"))
            f->elem = RT_DATETIME;
        else if (ieq(et, strlen(et), "TIMESTAMP"))
            f->elem = RT_TIMESTAMP;
        else
            return serr(c, ROWENC_SCHEMA, "RANGE element type '%.64s' is not DATE, DATETIME or "
                        "TIMESTAMP", et);
        c->s->range_types |= 1u << f->elem;
    }

    /* names: as given, folded for matching, and the proto field name */
    f->name = strdup(name);
    f->key = strdup(name);
    if (is_ident(name)) {
        f->proto_name = strdup(name);
        if (f->proto_name)
            for (char *p = f->proto_name; *p; p++)
                *p = (char)fold((unsigned char)*p);
    } else {
        f->placeholder = true;
        snprintf(num, sizeof num, "Col_%u", f->number);
        f->proto_name = strdup(num);
    }
    if (!f->name || !f->key || !f->proto_name)
        return serr(c, ROWENC_NOMEM, "out of memory");
    for (char *p = f->key; *p; p++)
        *p = (char)fold((unsigned char)*p);
    f->keylen = (uint32_t)nlen;
    f->hash = key_words(f->key, nlen, f->key + nlen, &f->kw0, &f->kwl);
    f->taglen = (uint8_t)varint_put((char *)f->tag,
                                    (uint64_t)f->number << 3 | type_info[f->type].wire);

    json_t *sub = json_object_get(o, "fields");
    if (f->type == RT_RECORD) {
        if (!sub)
            return serr(c, ROWENC_SCHEMA, "RECORD needs \"fields\"");
        if (depth + 1 > ROWENC_MAX_DEPTH)
            return serr(c, ROWENC_SCHEMA, "RECORD nested deeper than %d levels",
                        ROWENC_MAX_DEPTH);
        if (!(f->sub = calloc(1, sizeof *f->sub)))
            return serr(c, ROWENC_NOMEM, "out of memory");
        char tn[48];
        snprintf(tn, sizeof tn, "T%u_", ++c->ntypes);
        size_t tl = strlen(tn), pl = strlen(f->proto_name);
        if (!(f->sub->type_name = malloc(tl + pl + 1)))
            return serr(c, ROWENC_NOMEM, "out of memory");
        memcpy(f->sub->type_name, tn, tl);
        memcpy(f->sub->type_name + tl, f->proto_name, pl + 1);
        int rc = parse_fields(c, sub, f->sub, depth + 1);
        if (rc)
            return rc;
    } else if (sub && !json_is_null(sub) && !(json_is_array(sub) && json_array_size(sub) == 0)) {
        return serr(c, ROWENC_SCHEMA, "only RECORD columns may have \"fields\"");
    }
    c->path.len = base;
    c->path.data[base] = '\0';
    return ROWENC_OK;
}

static int parse_fields(struct sctx *c, json_t *arr, struct rmsg *m, int depth)
{
    if (!json_is_array(arr))
        return serr(c, ROWENC_SCHEMA, "\"fields\" must be an array");
    size_t n = json_array_size(arr);
    if (n == 0)
        return serr(c, ROWENC_SCHEMA, "no fields");
    if (n > ROWENC_MAX_FIELDS - c->s->nfields)
        return serr(c, ROWENC_SCHEMA, "more than %d columns (nested ones included)",
                    ROWENC_MAX_FIELDS);
    if (!(m->f = calloc(n, sizeof *m->f)))
        return serr(c, ROWENC_NOMEM, "out of memory");
    m->n = (uint32_t)n;
    m->bit_base = c->s->nfields;
    c->s->nfields += (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        m->f[i].number = (uint32_t)i + 1;
        m->f[i].bit = m->bit_base + (uint32_t)i;
    }
    for (size_t i = 0; i < n; i++) {
        int rc = parse_field(c, json_array_get(arr, i), &m->f[i], i, depth);
        if (rc)
            return rc;
    }

    uint32_t size = 8;
    while (size < 2 * n)
        size *= 2;
    m->mask = size - 1;
    if (!(m->slots = calloc(size, sizeof *m->slots)) || !(m->req = calloc(n, sizeof *m->req)))
        return serr(c, ROWENC_NOMEM, "out of memory");
    for (uint32_t i = 0; i < m->n; i++) {
        struct rfield *f = &m->f[i];
        if (lookup(m, f->key, f->keylen, f->key + f->keylen)) {
            size_t base = c->path.len;
            if ((base && buf_append(&c->path, ".", 1)) || buf_puts(&c->path, f->name))
                return serr(c, ROWENC_NOMEM, "out of memory");
            return serr(c, ROWENC_SCHEMA, "duplicate column name (names are case-insensitive)");
        }
        uint32_t j = f->hash & m->mask;
        while (m->slots[j])
            j = (j + 1) & m->mask;
        m->slots[j] = i + 1;
        if (f->mode == RM_REQUIRED && !f->has_default)
            m->req[m->nreq++] = i;
    }
    return ROWENC_OK;
}

int rowenc_schema_parse(const char *json, size_t len, struct rowenc_schema **out,
                        struct rowenc_error *err)
{
    struct sctx c = { 0 };
    json_error_t je;
    json_t *root, *fields = NULL;
    int rc;

    if (!out || (!json && len))
        return seterr(err, ROWENC_INVAL, 0, "rowenc_schema_parse: bad argument");
    *out = NULL;
    root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return seterr(err, ROWENC_SCHEMA, je.position > 0 ? (size_t)je.position : 0,
                      "schema: invalid JSON at line %d column %d: %s", je.line, je.column,
                      je.text);
    if (json_is_array(root)) {
        fields = root;
    } else if (json_is_object(root)) {
        fields = json_object_get(root, "fields");
        if (!fields && json_is_object(json_object_get(root, "schema")))
            fields = json_object_get(json_object_get(root, "schema"), "fields");
    }
    c.err = err;
    if (!fields) {
        json_decref(root);
        return serr(&c, ROWENC_SCHEMA, "expected a fields array, {\"fields\": [...]} or "
                    "{\"schema\": {\"fields\": [...]}}");
    }
    if (!(c.s = calloc(1, sizeof *c.s)) ||
        !(c.s->c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0)) ||
        buf_reserve(&c.path, 64)) {
        json_decref(root);
        rowenc_schema_free(c.s);
        buf_free(&c.path);
        return serr(&c, ROWENC_NOMEM, "out of memory");
    }
    c.path.data[0] = '\0';
    rc = parse_fields(&c, fields, &c.s->root, 0);
    json_decref(root);
    buf_free(&c.path);
    if (rc) {
        rowenc_schema_free(c.s);
        return rc;
    }
    *out = c.s;
    set_ok(err);
    return ROWENC_OK;
}

/* ------------------------------------------------------------------------ */
/* DescriptorProto                                                          */
/* ------------------------------------------------------------------------ */

static int d_varint(struct buf *b, uint64_t v)
{
    char t[10];
    return buf_append(b, t, varint_put(t, v));
}

static int d_uint(struct buf *b, unsigned field, uint64_t v)
{
    return d_varint(b, (uint64_t)field << 3 | WT_VARINT) || d_varint(b, v);
}

static int d_bytes(struct buf *b, unsigned field, const void *p, size_t n)
{
    return d_varint(b, (uint64_t)field << 3 | WT_LEN) || d_varint(b, n) || buf_append(b, p, n);
}

static int d_str(struct buf *b, unsigned field, const char *s)
{
    return d_bytes(b, field, s, strlen(s));
}

static const char *range_type_name(unsigned elem)
{
    return elem == RT_DATE ? "R_DATE" : elem == RT_DATETIME ? "R_DATETIME" : "R_TIMESTAMP";
}

static int d_field(struct buf *b, const char *name, uint32_t number, unsigned label,
                   unsigned ptype, const char *type_name, const char *column_name)
{
    struct buf t = { 0 }, opt = { 0 };
    int bad = d_str(&t, 1, name) || d_uint(&t, 3, number) || d_uint(&t, 4, label) ||
              d_uint(&t, 5, ptype) || (type_name && d_str(&t, 6, type_name)) ||
              (column_name && (d_str(&opt, COLUMN_NAME_EXT, column_name) ||
                               d_bytes(&t, 8, opt.data, opt.len))) ||
              d_bytes(b, 2, t.data, t.len);
    buf_free(&t);
    buf_free(&opt);
    return bad;
}

static int d_message(struct buf *b, const struct rmsg *m, const char *name)
{
    if (d_str(b, 1, name))
        return -1;
    for (uint32_t i = 0; i < m->n; i++) {
        const struct rfield *f = &m->f[i];
        unsigned label = f->mode == RM_REPEATED                    ? 3   /* LABEL_REPEATED */
                         : f->mode == RM_REQUIRED && !f->has_default ? 2   /* LABEL_REQUIRED */
                                                                     : 1;  /* LABEL_OPTIONAL */
        const char *tn = f->type == RT_RECORD ? f->sub->type_name
                         : f->type == RT_RANGE ? range_type_name(f->elem) : NULL;
        if (d_field(b, f->proto_name, f->number, label, type_info[f->type].proto, tn,
                    f->placeholder ? f->name : NULL))
            return -1;
    }
    return 0;
}

/* Every RECORD type below m, as nested_type entries of the root b. */
static int d_nested(struct buf *b, const struct rmsg *m)
{
    for (uint32_t i = 0; i < m->n; i++) {
        const struct rfield *f = &m->f[i];
        if (f->type != RT_RECORD)
            continue;
        struct buf t = { 0 };
        int bad = d_message(&t, f->sub, f->sub->type_name) || d_bytes(b, 3, t.data, t.len);
        buf_free(&t);
        if (bad || d_nested(b, f->sub))
            return -1;
    }
    return 0;
}

int rowenc_descriptor(const struct rowenc_schema *s, const char *root_name, struct buf *out,
                      struct rowenc_error *err)
{
    if (!root_name)
        root_name = DEFAULT_ROOT;
    if (!s || !out || !is_ident(root_name))
        return seterr(err, ROWENC_INVAL, 0, "rowenc_descriptor: %s",
                      !s || !out ? "bad argument" : "root name is not a proto identifier");
    size_t mark = out->len;
    int bad = d_message(out, &s->root, root_name) || d_nested(out, &s->root);
    for (unsigned el = 0; !bad && el < RT__COUNT; el++) {
        if (!(s->range_types & 1u << el))
            continue;
        struct buf t = { 0 };
        unsigned pt = type_info[el].proto;
        bad = d_str(&t, 1, range_type_name(el)) ||
              d_field(&t, "start", 1, 1, pt, NULL, NULL) ||
              d_field(&t, "end", 2, 1, pt, NULL, NULL) || d_bytes(out, 3, t.data, t.len);
        buf_free(&t);
    }
    if (bad) {
        out->len = mark;
        return seterr(err, ROWENC_NOMEM, 0, "out of memory");
    }
    set_ok(err);
    return ROWENC_OK;
}
