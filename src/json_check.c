/*
 * json_check.c -- strict, allocation-free validation of one JSON object.
 *
 * Design
 * ------
 * Ingest runs this on every line a producer sends, before the line is put in
 * the spool, so it must be fast, must never allocate and must never recurse
 * (a hostile line could otherwise blow the stack). It does not build
 * anything: it only answers "is this exactly one RFC 8259 object?" and, if
 * not, where and why it stopped.
 *
 *  - One pass, front to back, with a hand-written state machine (the labels
 *    in jcheck_object). Nesting is remembered in a bitset, one bit per open
 *    container (1 = object, 0 = array), so 1024 levels cost 128 bytes of
 *    stack and no recursion.
 *
 *  - Strings are where the bytes are, so they get a fast path: eight bytes
 *    are loaded at once and a few SWAR operations flag any lane that is '"',
 *    '\\', a control byte (< 0x20) or non-ASCII (>= 0x80). A word with no
 *    flag is skipped whole; otherwise the lowest flag gives the position of
 *    the first interesting byte directly. Fewer than eight remaining bytes
 *    are walked with a 256-entry table, so nothing is ever read past
 *    buf[len - 1] (the buffer is not NUL-terminated).
 *
 *  - Escapes and multi-byte UTF-8 are handled off the fast path, in
 *    string_special(), which checks them exactly: the usual two-byte escapes,
 *    \uXXXX with surrogates paired high-then-low, and UTF-8 per RFC 3629
 *    (no overlongs, no encoded surrogates, nothing above U+10FFFF).
 *
 * Error offsets
 * -------------
 * The offset is the first byte at which the input can no longer be the start
 * of a valid object, i.e. the first byte where the scan can't go on; it is
 * len when the input is a valid beginning that ends too early. This holds for
 * UTF-8 too: in "\xC3(" the bad byte is '(' (a continuation byte was
 * expected), in "\xE0\x80" it is \x80 (overlong), and a lone \x80 is bad
 * itself. The one exception is a surrogate escape: when a \uD800-\uDBFF is not
 * followed by a \uDC00-\uDFFF escape, or a \uDC00-\uDFFF comes alone, the
 * offset is the backslash of that unpaired escape, which is what a person fixing
 * the producer wants to see.
 *
 * Because a NUL byte can never appear in valid JSON, the scan always stops at
 * or before the first NUL; if it stops at the NUL, the code is JC_NUL whatever
 * the parser was expecting there (a key, a string byte, a continuation byte,
 * trailing whitespace...). An earlier error still wins.
 *
 * Bytes >= 0x80 outside strings are JC_SYNTAX (they can't start any token),
 * except as the very first non-whitespace byte: there, as for any byte other
 * than '{' and NUL, the result is JC_NOT_OBJECT and nothing after it is
 * examined.
 *
 * Messages are static strings, lower case, saying what was expected (and
 * "found end of input" when the input ended too early); they never embed
 * input bytes, the offset says where to look.
 */
#include "json_check.h"

#include <stdint.h>
#include <string.h>

#define JC_DEFAULT_DEPTH 64u
#define JC_DEPTH_LIMIT   1024u  /* larger max_depth values are clamped to this */

typedef unsigned char u8;

#if defined(__GNUC__) || defined(__clang__)
#define JC_COLD     __attribute__((cold, noinline))
#define JC_LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define JC_COLD
#define JC_LIKELY(x) (x)
#endif

/* ------------------------------------------------------------------------ */
/* Error reporting (cold: only runs once per rejected line)                 */
/* ------------------------------------------------------------------------ */

static JC_COLD void set_result(struct jcheck_result *res, enum jcheck_code code,
                               size_t offset, const char *msg)
{
    res->code = code;
    res->offset = offset;
    res->msg = msg;
}

/* Reports the failure at p, which is either end (the input stopped early:
 * eof_msg) or a byte the scan cannot accept (msg). A NUL byte overrides the
 * code because producers sending C strings with embedded NULs is a distinct
 * bug worth its own token. Always returns NULL so scanners can
 * "return fail_at(...)". */
static JC_COLD const u8 *fail_at(struct jcheck_result *res, const u8 *base, const u8 *end,
                                 const u8 *p, enum jcheck_code code, const char *msg,
                                 const char *eof_msg)
{
    if (p == end)
        set_result(res, code, (size_t)(p - base), eof_msg);
    else if (*p == 0)
        set_result(res, JC_NUL, (size_t)(p - base), "unexpected nul byte");
    else
        set_result(res, code, (size_t)(p - base), msg);
    return NULL;
}

/* msg must be a string literal: the end-of-input variant is built at compile
 * time so messages stay static. Uses res, base and end from the caller. */
#define FAIL(jc, at, msg) \
    fail_at(res, base, end, (at), (jc), msg, msg ", found end of input")
/* Same, with an explicit end-of-input message. */
#define FAIL2(jc, at, msg, eof_msg) \
    fail_at(res, base, end, (at), (jc), (msg), (eof_msg))

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static inline int is_digit(unsigned c)
{
    return c - '0' < 10u;
}

/* Whitespace bytes are all <= ' ', so the common case (a non-blank byte) costs
 * a single comparison. */
static inline const u8 *skip_ws(const u8 *p, const u8 *end)
{
    while (p < end && *p <= ' ' && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static inline int hex_value(unsigned c)
{
    if (c - '0' < 10u)
        return (int)(c - '0');
    c |= 0x20;  /* fold A-F onto a-f; maps no other byte into a-f */
    if (c - 'a' < 6u)
        return (int)(c - 'a' + 10);
    return -1;
}

/* 1 for bytes that may appear in a string as themselves without any further
 * check: printable ASCII other than '"' and '\\'. Everything else (controls,
 * quote, backslash, >= 0x80) leaves the fast path. */
static const u8 k_plain[256] = {
    /* 0x00 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x10 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x20 */ 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  /* '"' */
    /* 0x30 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x40 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,  /* '\\' */
    /* 0x60 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x80-0xFF: all 0 (implicit) */
};

/* ------------------------------------------------------------------------ */
/* SWAR string scanning                                                     */
/* ------------------------------------------------------------------------ */

#define ONES  UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t load64(const u8 *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);  /* unaligned-safe; compiles to one load */
    return v;
}

/* Sets the high bit of every lane of v that is '"', '\\', < 0x20 or >= 0x80.
 *
 * (x - n*ONES) & ~x & HIGHS flags lanes of x below n (n <= 0x80); applied to
 * v ^ c*ONES with n = 1 it flags lanes equal to c. The subtraction can borrow
 * across lanes, but only out of a lane that is itself flagged, so there are
 * no false positives below the lowest true one: the word is zero exactly when
 * no lane is special, and on little-endian the lowest set bit is exact.
 * All three tests share the "& ~v" (c < 0x80 keeps the high bit of v ^ c
 * equal to that of v), and "| v" adds the non-ASCII lanes. */
static inline uint64_t special_lanes(uint64_t v)
{
    uint64_t q = v ^ (ONES * '"');
    uint64_t b = v ^ (ONES * '\\');
    uint64_t t = (v - ONES * 0x20) | (q - ONES) | (b - ONES);
    return ((t & ~v) | v) & HIGHS;
}

/* Index of the first special lane in a non-zero special_lanes() word. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FIRST_SPECIAL(p, m) ((p) + (__builtin_ctzll(m) >> 3))
#else
/* Borrows run towards the first bytes on big-endian, so the flags are not
 * exact there; a special byte is known to be within the word, so a plain
 * table walk finds it without a bounds check. */
static inline const u8 *first_special_slow(const u8 *p)
{
    while (k_plain[*p])
        p++;
    return p;
}
#define FIRST_SPECIAL(p, m) ((void)(m), first_special_slow(p))
#endif

/* p points at the first of the four hex digits of a \u escape; reads them
 * into *cp and returns the byte after them. */
static const u8 *scan_hex4(const u8 *p, const u8 *end, const u8 *base,
                           struct jcheck_result *res, unsigned *cp)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++, p++) {
        int d;
        if (p == end)
            return FAIL2(JC_SYNTAX, p, "unterminated string", "unterminated string");
        d = hex_value(*p);
        if (d < 0)
            return FAIL(JC_SYNTAX, p, "expected 4 hex digits after '\\u'");
        v = v << 4 | (unsigned)d;
    }
    *cp = v;
    return p;
}

/* *p is '\\'. Returns the byte after the escape (after both halves of a
 * surrogate pair). */
static const u8 *scan_escape(const u8 *p, const u8 *end, const u8 *base,
                             struct jcheck_result *res)
{
    const u8 *esc = p;
    unsigned cp, lo;

    p++;
    if (p == end)
        return FAIL2(JC_SYNTAX, p, "unterminated string", "unterminated string");
    switch (*p) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        return p + 1;
    case 'u':
        break;
    default:
        return FAIL(JC_SYNTAX, p,
                    "invalid escape, expected \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\u");
    }

    p = scan_hex4(p + 1, end, base, res, &cp);
    if (!p)
        return NULL;
    if (cp - 0xDC00u < 0x400u)  /* low half with no high half before it */
        return FAIL2(JC_UTF8, esc, "unpaired surrogate escape", "unpaired surrogate escape");
    if (cp - 0xD800u >= 0x400u)
        return p;

    /* A high half must be immediately followed by a \u low half. A malformed
     * second escape is reported as such (it's wrong in any case); anything
     * else blames the high half. */
    if (end - p >= 2 && p[0] == '\\' && p[1] == 'u') {
        const u8 *q = scan_hex4(p + 2, end, base, res, &lo);
        if (!q)
            return NULL;
        if (lo - 0xDC00u < 0x400u)
            return q;
    }
    return FAIL2(JC_UTF8, esc, "unpaired surrogate escape", "unpaired surrogate escape");
}

/* *p >= 0x80. Validates a run of multi-byte UTF-8 sequences (RFC 3629,
 * table 3-7 of the Unicode standard) and returns the first byte after it.
 * Looping here keeps non-Latin text from bouncing through the fast path for
 * every character. */
static const u8 *scan_utf8(const u8 *p, const u8 *end, const u8 *base,
                           struct jcheck_result *res)
{
    do {
        unsigned c = *p, lo = 0x80, hi = 0xBF, more;
        const char *range_msg = "";

        if (c < 0xC0)
            return FAIL(JC_UTF8, p, "invalid utf-8: unexpected continuation byte");
        if (c < 0xC2)
            return FAIL(JC_UTF8, p, "invalid utf-8: overlong encoding");
        if (c < 0xE0) {
            more = 1;
        } else if (c < 0xF0) {
            more = 2;
            if (c == 0xE0) {
                lo = 0xA0;  /* E0 80..9F would encode < U+0800 */
                range_msg = "invalid utf-8: overlong encoding";
            } else if (c == 0xED) {
                hi = 0x9F;  /* ED A0..BF would encode U+D800..DFFF */
                range_msg = "invalid utf-8: encoded surrogate";
            }
        } else if (c < 0xF5) {
            more = 3;
            if (c == 0xF0) {
                lo = 0x90;  /* F0 80..8F would encode < U+10000 */
                range_msg = "invalid utf-8: overlong encoding";
            } else if (c == 0xF4) {
                hi = 0x8F;  /* F4 90.. would encode > U+10FFFF */
                range_msg = "invalid utf-8: code point above u+10ffff";
            }
        } else {
            return FAIL(JC_UTF8, p, "invalid utf-8: invalid byte");
        }
        p++;

        /* Only the second byte has a lead-dependent range. */
        if (p == end || (*p & 0xC0) != 0x80)
            return FAIL(JC_UTF8, p, "invalid utf-8: expected continuation byte");
        if (*p < lo || *p > hi)
            return FAIL2(JC_UTF8, p, range_msg, range_msg);
        p++;
        while (--more) {
            if (p == end || (*p & 0xC0) != 0x80)
                return FAIL(JC_UTF8, p, "invalid utf-8: expected continuation byte");
            p++;
        }
    } while (p < end && *p >= 0x80);
    return p;
}

/* *p is '\\', a control byte or >= 0x80. */
static const u8 *string_special(const u8 *p, const u8 *end, const u8 *base,
                                struct jcheck_result *res)
{
    if (*p >= 0x80)
        return scan_utf8(p, end, base, res);
    if (*p == '\\')
        return scan_escape(p, end, base, res);
    return FAIL(JC_SYNTAX, p, "unescaped control character in string");
}

/* p points just past the opening quote. Returns the byte after the closing
 * quote, or NULL with *res filled in. */
static inline const u8 *scan_string(const u8 *p, const u8 *end, const u8 *base,
                                    struct jcheck_result *res)
{
    for (;;) {
        if (JC_LIKELY(end - p >= 8)) {
            uint64_t m = special_lanes(load64(p));
            if (!m) {
                p += 8;
                continue;
            }
            p = FIRST_SPECIAL(p, m);
        } else {
            while (p < end && k_plain[*p])
                p++;
            if (p == end)
                return FAIL2(JC_SYNTAX, p, "unterminated string", "unterminated string");
        }
        if (JC_LIKELY(*p == '"'))
            return p + 1;
        p = string_special(p, end, base, res);
        if (!p)
            return NULL;
    }
}

/* ------------------------------------------------------------------------ */
/* Numbers and literals                                                     */
/* ------------------------------------------------------------------------ */

/* *p is '-' or a digit. RFC 8259 section 6:
 *   number = [ minus ] int [ frac ] [ exp ]
 *   int    = zero / ( digit1-9 *DIGIT )
 *   frac   = decimal-point 1*DIGIT
 *   exp    = e [ minus / plus ] 1*DIGIT
 * The value itself is not evaluated: any length and magnitude is accepted. */
static inline const u8 *scan_number(const u8 *p, const u8 *end, const u8 *base,
                                    struct jcheck_result *res)
{
    if (*p == '-') {
        p++;
        if (p == end || !is_digit(*p))
            return FAIL(JC_SYNTAX, p, "expected digit after '-'");
    }
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p))
            return FAIL(JC_SYNTAX, p, "leading zero in number");
    } else {
        do
            p++;
        while (p < end && is_digit(*p));
    }
    if (p < end && *p == '.') {
        p++;
        if (p == end || !is_digit(*p))
            return FAIL(JC_SYNTAX, p, "expected digit after '.' in number");
        do
            p++;
        while (p < end && is_digit(*p));
    }
    if (p < end && (*p | 0x20) == 'e') {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p == end || !is_digit(*p))
            return FAIL(JC_SYNTAX, p, "expected digit in number exponent");
        do
            p++;
        while (p < end && is_digit(*p));
    }
    return p;
}

/* First byte of [p, end) that differs from lit, or end. */
static JC_COLD const u8 *literal_mismatch(const u8 *p, const u8 *end, const char *lit)
{
    while (p < end && *lit && *p == (u8)*lit) {
        p++;
        lit++;
    }
    return p;
}

/* ------------------------------------------------------------------------ */
/* The validator                                                            */
/* ------------------------------------------------------------------------ */

static JC_COLD enum jcheck_code not_object(struct jcheck_result *res, size_t off, unsigned c)
{
    const char *msg;

    switch (c) {
    case 0:
        set_result(res, JC_NUL, off, "unexpected nul byte");
        return JC_NUL;
    case '[':
        msg = "top-level value must be an object, found an array";
        break;
    case '"':
        msg = "top-level value must be an object, found a string";
        break;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        msg = "top-level value must be an object, found a number";
        break;
    case 't': case 'f':
        msg = "top-level value must be an object, found a boolean";
        break;
    case 'n':
        msg = "top-level value must be an object, found null";
        break;
    default:
        msg = "expected '{' at start of input";
        break;
    }
    set_result(res, JC_NOT_OBJECT, off, msg);
    return JC_NOT_OBJECT;
}

/* Records the kind of the container opened at 0-based level `level`. A word
 * is assigned rather than updated when its first bit is written, so the
 * stack never has to be cleared up front and nothing uninitialised is read. */
static inline void push_kind(uint64_t *kinds, unsigned level, unsigned is_object)
{
    unsigned w = level >> 6, b = level & 63;
    uint64_t keep = b ? kinds[w] & ~((uint64_t)1 << b) : 0;
    kinds[w] = keep | ((uint64_t)is_object << b);
}

static inline unsigned kind_at(const uint64_t *kinds, unsigned level)
{
    return (unsigned)(kinds[level >> 6] >> (level & 63)) & 1u;
}

/* In jcheck_object: fail and return the code. */
#define BAIL(jc, at, msg) \
    do { FAIL(jc, at, msg); return res->code; } while (0)

enum jcheck_code jcheck_object(const char *buf, size_t len, unsigned max_depth,
                               struct jcheck_result *res)
{
    uint64_t kinds[JC_DEPTH_LIMIT / 64];  /* bit per open container: 1 object, 0 array */
    const u8 *base, *end, *p;
    unsigned depth;    /* number of open containers */
    unsigned in_obj;   /* kind of the innermost one, cached from kinds */

    if (len == 0) {  /* before any pointer arithmetic: buf may be NULL */
        set_result(res, JC_EMPTY, 0, "empty input, expected an object");
        return JC_EMPTY;
    }
    if (max_depth == 0)
        max_depth = JC_DEFAULT_DEPTH;
    else if (max_depth > JC_DEPTH_LIMIT)
        max_depth = JC_DEPTH_LIMIT;

    base = (const u8 *)buf;
    end = base + len;
    p = skip_ws(base, end);
    if (p == end) {
        set_result(res, JC_EMPTY, len, "empty input, expected an object");
        return JC_EMPTY;
    }
    if (*p != '{')
        return not_object(res, (size_t)(p - base), *p);
    push_kind(kinds, 0, 1);
    depth = 1;
    in_obj = 1;
    p++;

object_open:  /* just after '{' */
    p = skip_ws(p, end);
    if (p < end && *p == '}') {
        p++;
        goto close;
    }
    if (p == end || *p != '"')
        BAIL(JC_SYNTAX, p, "expected string key or '}' in object");
    goto key;

object_next:  /* just after ',' in an object */
    p = skip_ws(p, end);
    if (p == end || *p != '"')
        BAIL(JC_SYNTAX, p, "expected string key after ','");

key:  /* *p is the key's opening quote */
    p = scan_string(p + 1, end, base, res);
    if (!p)
        return res->code;
    p = skip_ws(p, end);
    if (p == end || *p != ':')
        BAIL(JC_SYNTAX, p, "expected ':' after object key");
    p = skip_ws(p + 1, end);

value:  /* at the first byte of a value (whitespace already skipped) */
    if (p == end)
        BAIL(JC_SYNTAX, p, "expected a value");
    switch (*p) {
    case '"':
        p = scan_string(p + 1, end, base, res);
        if (!p)
            return res->code;
        break;
    case '{':
    case '[':
        if (depth >= max_depth) {
            set_result(res, JC_DEPTH, (size_t)(p - base), "nesting deeper than max_depth");
            return JC_DEPTH;
        }
        in_obj = *p == '{';
        push_kind(kinds, depth, in_obj);
        depth++;
        p++;
        if (in_obj)
            goto object_open;
        goto array_open;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        p = scan_number(p, end, base, res);
        if (!p)
            return res->code;
        break;
    case 't':
        if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
            p += 4;
            break;
        }
        BAIL(JC_SYNTAX, literal_mismatch(p, end, "true"), "invalid literal, expected true");
    case 'f':
        if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
            p += 5;
            break;
        }
        BAIL(JC_SYNTAX, literal_mismatch(p, end, "false"), "invalid literal, expected false");
    case 'n':
        if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
            p += 4;
            break;
        }
        BAIL(JC_SYNTAX, literal_mismatch(p, end, "null"), "invalid literal, expected null");
    default:
        BAIL(JC_SYNTAX, p, "expected a value");
    }

after_value:  /* just after a complete value inside the innermost container */
    p = skip_ws(p, end);
    if (in_obj) {
        if (p < end && *p == ',') {
            p++;
            goto object_next;
        }
        if (p < end && *p == '}') {
            p++;
            goto close;
        }
        BAIL(JC_SYNTAX, p, "expected ',' or '}' in object");
    }
    if (p < end && *p == ',') {
        p = skip_ws(p + 1, end);
        goto value;
    }
    if (p < end && *p == ']') {
        p++;
        goto close;
    }
    BAIL(JC_SYNTAX, p, "expected ',' or ']' in array");

array_open:  /* just after '[' */
    p = skip_ws(p, end);
    if (p < end && *p == ']') {
        p++;
        goto close;
    }
    if (p == end)
        BAIL(JC_SYNTAX, p, "expected a value or ']' in array");
    goto value;

close:  /* just after the '}' or ']' closing the innermost container */
    if (--depth > 0) {
        in_obj = kind_at(kinds, depth - 1);
        goto after_value;
    }

    p = skip_ws(p, end);
    if (p != end) {
        if (*p == 0)
            set_result(res, JC_NUL, (size_t)(p - base), "unexpected nul byte");
        else
            set_result(res, JC_TRAILING, (size_t)(p - base), "unexpected data after the object");
        return res->code;
    }
    res->code = JC_OK;
    res->offset = len;
    res->msg = "ok";
    return JC_OK;
}

const char *jcheck_token(enum jcheck_code code)
{
    switch (code) {
    case JC_OK:         return "ok";
    case JC_EMPTY:      return "empty";
    case JC_NOT_OBJECT: return "not-object";
    case JC_SYNTAX:     return "json";
    case JC_UTF8:       return "utf8";
    case JC_NUL:        return "nul";
    case JC_DEPTH:      return "depth";
    case JC_TRAILING:   return "trailing";
    }
    return "unknown";
}
