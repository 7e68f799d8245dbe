/*
 * fs_json.c -- the fast sink's check of a tabledata.insertAll body.
 *
 * One pass over the bytes, no allocation, no tree: the request must be a JSON
 * object whose members are the ones insertAll knows (kind, skipInvalidRows,
 * ignoreUnknownValues, templateSuffix, traceId, rows), each of the right type;
 * rows must be a non-empty array of at most 50,000 objects, each with a "json"
 * object and optionally an "insertId" string and nothing else. Every value,
 * the rows' own JSON included, is checked against RFC 8259: strings are valid
 * UTF-8 (no overlongs, no encoded surrogates, nothing past U+10FFFF), \u
 * escapes are well formed with surrogates paired, numbers follow the grammar,
 * nesting is bounded. Duplicate members are refused at the request and row
 * levels (where they would change the meaning); inside a row's JSON they are
 * not looked for.
 *
 * Answers follow Google's split (and tools/bqemu's texts): a body that is
 * not JSON is a parseError, JSON of the wrong shape is invalid.
 *
 * The string scanner looks at 8 bytes at a time: a word with no quote, no
 * backslash, no control byte and no byte >= 0x80 is skipped whole.
 */
#include "fastsink.h"

#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 1024

struct jp {
    const unsigned char *p, *end, *base;
    int rc;
    char *msg;
    size_t msglen;
};

static int fail(struct jp *j, int rc, const char *what)
{
    if (j->rc == FS_JSON_OK) {
        j->rc = rc;
        if (rc == FS_JSON_PARSE)
            snprintf(j->msg, j->msglen, "Invalid JSON payload received. %s at byte %zu.", what,
                     (size_t)(j->p - j->base));
        else
            snprintf(j->msg, j->msglen, "%s", what);
    }
    return -1;
}

static inline void ws(struct jp *j)
{
    const unsigned char *p = j->p, *end = j->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    j->p = p;
}

#define ONES 0x0101010101010101ull
#define HIGH 0x8080808080808080ull

static inline uint64_t has_zero(uint64_t v)
{
    return (v - ONES) & ~v & HIGH;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Four hex digits at p (p + 4 <= end checked by the caller). */
static long hex4(const unsigned char *p)
{
    int a = hexval(p[0]), b = hexval(p[1]), c = hexval(p[2]), d = hexval(p[3]);
    if ((a | b | c | d) < 0)
        return -1;
    return (a << 12) | (b << 8) | (c << 4) | d;
}

/* A string; j->p is past its opening quote. On return j->p is past the
 * closing quote. */
static int string_body(struct jp *j)
{
    const unsigned char *p = j->p, *end = j->end;
    for (;;) {
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            uint64_t m = (x & HIGH) | has_zero(x ^ (ONES * '"')) | has_zero(x ^ (ONES * '\\')) |
                         ((x - ONES * 0x20) & ~x & HIGH);
            if (m) {
                p += __builtin_ctzll(m) >> 3;
                break;
            }
            p += 8;
        }
        if (p >= end) {
            j->p = p;
            return fail(j, FS_JSON_PARSE, "Unterminated string");
        }
        unsigned char c = *p;
        if (c == '"') {
            j->p = p + 1;
            return 0;
        }
        if (c == '\\') {
            if (end - p < 2) {
                j->p = p;
                return fail(j, FS_JSON_PARSE, "Unterminated string");
            }
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                continue;
            case 'u': {
                long u = end - p >= 6 ? hex4(p + 2) : -1;
                if (u < 0) {
                    j->p = p;
                    return fail(j, FS_JSON_PARSE, "Invalid \\u escape");
                }
                if (u >= 0xDC00 && u <= 0xDFFF) {
                    j->p = p;
                    return fail(j, FS_JSON_PARSE, "Unpaired surrogate escape");
                }
                if (u >= 0xD800 && u <= 0xDBFF) {
                    long lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8) : -1;
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        j->p = p;
                        return fail(j, FS_JSON_PARSE, "Unpaired surrogate escape");
                    }
                    p += 12;
                } else {
                    p += 6;
                }
                continue;
            }
            default:
                j->p = p;
                return fail(j, FS_JSON_PARSE, "Invalid escape in string");
            }
        }
        if (c < 0x20) {
            j->p = p;
            return fail(j, FS_JSON_PARSE, "Control character in string");
        }
        if (c < 0x80) {
            p++;
            continue;
        }
        /* UTF-8 (RFC 3629 table 3-7) */
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;
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
            j->p = p;
            return fail(j, FS_JSON_PARSE, "Invalid UTF-8");
        }
        if ((size_t)(end - p) <= need || p[1] < lo || p[1] > hi) {
            j->p = p;
            return fail(j, FS_JSON_PARSE, "Invalid UTF-8");
        }
        for (size_t k = 2; k <= need; k++) {
            if ((p[k] & 0xC0) != 0x80) {
                j->p = p;
                return fail(j, FS_JSON_PARSE, "Invalid UTF-8");
            }
        }
        p += need + 1;
    }
}

static int number(struct jp *j)
{
    const unsigned char *p = j->p, *end = j->end;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        goto bad;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        goto bad;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            goto bad;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            goto bad;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    j->p = p;
    return 0;
bad:
    j->p = p;
    return fail(j, FS_JSON_PARSE, "Invalid number");
}

static int literal(struct jp *j, const char *word, size_t n)
{
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return fail(j, FS_JSON_PARSE, "Unexpected token");
    j->p += n;
    return 0;
}

/* Any JSON value, nested containers included, without recursion. */
static int value(struct jp *j)
{
    unsigned char stack[MAX_DEPTH];   /* '{' or '[' per open container */
    size_t depth = 0;
    for (;;) {
        ws(j);
        if (j->p >= j->end)
            return fail(j, FS_JSON_PARSE, "Unexpected end of input");
        unsigned char c = *j->p;
        switch (c) {
        case '"':
            j->p++;
            if (string_body(j))
                return -1;
            break;
        case '{':
        case '[':
            if (depth == MAX_DEPTH)
                return fail(j, FS_JSON_PARSE, "Nesting too deep");
            stack[depth++] = c;
            j->p++;
            ws(j);
            if (j->p < j->end && *j->p == (c == '{' ? '}' : ']')) {
                j->p++;
                depth--;
                break;
            }
            if (c == '{') {
                if (j->p >= j->end || *j->p != '"')
                    return fail(j, FS_JSON_PARSE, "Expected a member name");
                j->p++;
                if (string_body(j))
                    return -1;
                ws(j);
                if (j->p >= j->end || *j->p != ':')
                    return fail(j, FS_JSON_PARSE, "Expected ':'");
                j->p++;
            }
            continue;   /* the first element or member value */
        case 't':
            if (literal(j, "true", 4))
                return -1;
            break;
        case 'f':
            if (literal(j, "false", 5))
                return -1;
            break;
        case 'n':
            if (literal(j, "null", 4))
                return -1;
            break;
        default:
            if (c == '-' || (c >= '0' && c <= '9')) {
                if (number(j))
                    return -1;
                break;
            }
            return fail(j, FS_JSON_PARSE, "Unexpected token");
        }
        /* a value ended: close containers or go on to the next element */
        for (;;) {
            if (depth == 0)
                return 0;
            ws(j);
            if (j->p >= j->end)
                return fail(j, FS_JSON_PARSE, "Unexpected end of input");
            unsigned char open = stack[depth - 1];
            if (*j->p == ',') {
                j->p++;
                if (open == '{') {
                    ws(j);
                    if (j->p >= j->end || *j->p != '"')
                        return fail(j, FS_JSON_PARSE, "Expected a member name");
                    j->p++;
                    if (string_body(j))
                        return -1;
                    ws(j);
                    if (j->p >= j->end || *j->p != ':')
                        return fail(j, FS_JSON_PARSE, "Expected ':'");
                    j->p++;
                }
                break;
            }
            if (*j->p == (open == '{' ? '}' : ']')) {
                j->p++;
                depth--;
                continue;
            }
            return fail(j, FS_JSON_PARSE, open == '{' ? "Expected ',' or '}'" : "Expected ',' or ']'");
        }
    }
}

/* A member name; returns its raw bytes (escapes left as they are). */
static int key(struct jp *j, const unsigned char **k, size_t *kl)
{
    ws(j);
    if (j->p >= j->end || *j->p != '"')
        return fail(j, FS_JSON_PARSE, "Expected a member name");
    *k = ++j->p;
    if (string_body(j))
        return -1;
    *kl = (size_t)(j->p - 1 - *k);
    ws(j);
    if (j->p >= j->end || *j->p != ':')
        return fail(j, FS_JSON_PARSE, "Expected ':'");
    j->p++;
    ws(j);
    return 0;
}

static bool is(const unsigned char *k, size_t kl, const char *name)
{
    size_t n = strlen(name);
    return kl == n && memcmp(k, name, n) == 0;
}

/* Peeks at the next value's first byte (after whitespace). */
static int peek(struct jp *j)
{
    ws(j);
    return j->p < j->end ? *j->p : -1;
}

/* After a member: ',' (returns 1: another follows) or the closing '}' (0). */
static int next_member(struct jp *j)
{
    ws(j);
    if (j->p < j->end && *j->p == ',') {
        j->p++;
        return 1;
    }
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return 0;
    }
    fail(j, FS_JSON_PARSE, "Expected ',' or '}'");
    return -1;
}

/* One element of rows[]; j->p at its first byte. */
static int row(struct jp *j, size_t i)
{
    char m[160];
    if (peek(j) != '{') {
        if (peek(j) < 0)
            return fail(j, FS_JSON_PARSE, "Unexpected end of input");
        if (value(j))
            return -1;
        snprintf(m, sizeof m, "Invalid value at 'rows[%zu]': expected an object.", i);
        return fail(j, FS_JSON_INVALID, m);
    }
    j->p++;
    if (peek(j) == '}') {
        j->p++;
        return 0;   /* no json: insertAll stores an empty row */
    }
    bool seen_json = false, seen_id = false;
    for (;;) {
        const unsigned char *k;
        size_t kl;
        if (key(j, &k, &kl))
            return -1;
        int c = peek(j);
        if (is(k, kl, "json")) {
            if (seen_json)
                return fail(j, FS_JSON_PARSE, "Duplicate member \"json\" in a row");
            seen_json = true;
            if (value(j))
                return -1;
            if (c != '{' && c != 'n') {
                snprintf(m, sizeof m, "Invalid value at 'rows[%zu].json': expected an object.", i);
                return fail(j, FS_JSON_INVALID, m);
            }
        } else if (is(k, kl, "insertId")) {
            if (seen_id)
                return fail(j, FS_JSON_PARSE, "Duplicate member \"insertId\" in a row");
            seen_id = true;
            if (value(j))
                return -1;
            if (c != '"' && c != 'n') {
                snprintf(m, sizeof m, "Invalid value at 'rows[%zu].insertId': expected a string.", i);
                return fail(j, FS_JSON_INVALID, m);
            }
        } else {
            if (value(j))
                return -1;
            snprintf(m, sizeof m, "Invalid JSON payload received. Unknown name '%.*s' at 'rows[%zu]'.",
                     (int)(kl > 64 ? 64 : kl), (const char *)k, i);
            return fail(j, FS_JSON_INVALID, m);
        }
        int more = next_member(j);
        if (more < 0)
            return -1;
        if (!more)
            return 0;
    }
}

int fs_json_insertall(const char *body, size_t len, size_t *rows, char *msg, size_t msglen)
{
    struct jp j = { (const unsigned char *)body, (const unsigned char *)body + len,
                    (const unsigned char *)body, FS_JSON_OK, msg, msglen };
    msg[0] = 0;
    *rows = 0;
    size_t n = 0;
    bool have_rows = false;
    unsigned seen = 0;
    static const char *const known[] = { "kind", "skipInvalidRows", "ignoreUnknownValues",
                                         "templateSuffix", "traceId", "rows" };
    char m[200];
    int first = peek(&j);
    if (first != '{') {
        if (first < 0)
            return fail(&j, FS_JSON_PARSE, "Unexpected end of input"), j.rc;
        if (value(&j))
            return j.rc;
        return fail(&j, FS_JSON_INVALID,
                    "Invalid JSON payload received: the body must be a JSON object."), j.rc;
    }
    j.p++;
    if (peek(&j) == '}') {
        j.p++;
    } else {
        for (;;) {
            const unsigned char *k;
            size_t kl;
            if (key(&j, &k, &kl))
                return j.rc;
            size_t w = 0;
            while (w < 6 && !is(k, kl, known[w]))
                w++;
            int c = peek(&j);
            if (w < 6 && (seen & (1u << w)))
                return fail(&j, FS_JSON_PARSE, "Duplicate member in the request"), j.rc;
            if (w < 6)
                seen |= 1u << w;
            if (w == 5) {   /* rows */
                if (c == '[') {
                    j.p++;
                    have_rows = true;
                    if (peek(&j) == ']') {
                        j.p++;
                    } else {
                        for (;;) {
                            if (row(&j, n))
                                return j.rc;
                            n++;
                            ws(&j);
                            if (j.p < j.end && *j.p == ',') {
                                j.p++;
                                continue;
                            }
                            if (j.p < j.end && *j.p == ']') {
                                j.p++;
                                break;
                            }
                            return fail(&j, FS_JSON_PARSE, "Expected ',' or ']'"), j.rc;
                        }
                    }
                } else {
                    if (value(&j))
                        return j.rc;
                    if (c != 'n')
                        return fail(&j, FS_JSON_INVALID,
                                    "Invalid value for rows: expected an array."), j.rc;
                }
            } else {
                if (value(&j))
                    return j.rc;
                if (w == 6) {
                    snprintf(m, sizeof m, "Invalid JSON payload received. Unknown name '%.*s': "
                             "no such field in the request.", (int)(kl > 64 ? 64 : kl),
                             (const char *)k);
                    return fail(&j, FS_JSON_INVALID, m), j.rc;
                }
                if ((w == 1 || w == 2) && c != 't' && c != 'f') {
                    snprintf(m, sizeof m, "Invalid value for %s: expected true or false.", known[w]);
                    return fail(&j, FS_JSON_INVALID, m), j.rc;
                }
                if ((w == 0 || w == 3 || w == 4) && c != '"' && c != 'n') {
                    snprintf(m, sizeof m, "Invalid value for %s: expected a string.", known[w]);
                    return fail(&j, FS_JSON_INVALID, m), j.rc;
                }
            }
            int more = next_member(&j);
            if (more < 0)
                return j.rc;
            if (!more)
                break;
        }
    }
    ws(&j);
    if (j.p != j.end)
        return fail(&j, FS_JSON_PARSE, "Unexpected data after the request object"), j.rc;
    if (!have_rows || n == 0)
        return fail(&j, FS_JSON_INVALID, "No rows present in the request."), j.rc;
    if (n > FS_MAX_ROWS) {
        snprintf(m, sizeof m, "Too many rows present in the request, limit: %d row count: %zu.",
                 FS_MAX_ROWS, n);
        return fail(&j, FS_JSON_INVALID, m), j.rc;
    }
    *rows = n;
    return FS_JSON_OK;
}
