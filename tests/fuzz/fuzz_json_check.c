/*
 * fuzz_json_check.c -- libFuzzer target for jcheck_object().
 *
 * Differential: every input is also parsed by jansson (json_loadb with
 * JSON_DECODE_ANY | JSON_ALLOW_NUL), and the verdicts must agree:
 *
 *   jansson returns an object       <=> jcheck_object() returns JC_OK
 *   jansson returns another value    => jcheck_object() returns JC_NOT_OBJECT
 *
 * except for these documented differences, each checked as narrowly as we
 * can so that a real bug can't hide behind them:
 *
 *  - Depth. We are called with max_depth 1024 (our ceiling); jansson allows
 *    2048 levels. When we say JC_DEPTH, jansson may accept: skipped, after
 *    checking that our offset points at a '{' or '['.
 *
 *  - Number range. jansson converts numbers and fails on integers outside
 *    int64 and on reals that overflow a double (json_error_numeric_overflow);
 *    RFC 8259 section 9 lets parsers limit the range, and we deliberately
 *    check only the grammar. When jansson reports it, the number token it
 *    stopped at is re-checked with strtoll/strtod; if it really is out of
 *    range it is replaced by 0 and the comparison runs again on the result.
 *
 *  - \u0000 in object keys. Even with JSON_ALLOW_NUL, jansson refuses a key
 *    containing U+0000 (json_error_null_byte_in_key); it is valid JSON and
 *    we accept it. Every \u0000 escape is rewritten as \u0001 and the
 *    comparison runs again.
 *
 *  - A raw NUL byte right after a number or a bare word. jansson's lexer
 *    pushes the byte that ends a number or true/false/null back into a
 *    small buffer in which NUL means "empty", so when that byte is a raw NUL
 *    it is silently dropped: jansson 2.14 accepts {"n":1<NUL>} and
 *    {"b":true<NUL>}. We reject them (JC_NUL). Handled by deleting exactly
 *    such NUL bytes (the one our JC_NUL points at, when the byte before it
 *    is a digit or a letter) and requiring jcheck to accept what is left.
 *
 *  - Allocation failure in jansson (json_error_out_of_memory): skipped.
 *
 * Things that are the same on both sides and so need no exclusion (checked
 * against the jansson 2.14 sources): \u0000 in values (with JSON_ALLOW_NUL),
 * lone or reversed surrogate escapes (both reject), strict UTF-8 (both reject
 * overlongs, encoded surrogates, > U+10FFFF, F5..FF, truncation), raw control
 * bytes and NUL, whitespace (both: space, tab, CR, LF only), trailing data.
 *
 * On top of the differential, every result must satisfy the API contract
 * (msg non-NULL, offset <= len, ...), repeat identically, and valid inputs are
 * re-checked for depth accounting and for the "offset == len" rule on a
 * truncated copy.
 *
 * Only LLVMFuzzerTestOneInput is defined: the Makefile links this with every
 * library source under src/.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DEPTH_CEILING 1024u

static void die(const char *what, const uint8_t *data, size_t size,
                const struct jcheck_result *r)
{
    fprintf(stderr, "fuzz_json_check: %s (size %zu, code %s, offset %zu, msg %s)\n", what,
            size, jcheck_token(r->code), r->offset, r->msg ? r->msg : "(null)");
    (void)data;
    abort();
}

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The API contract, for any input. */
static void check_contract(const uint8_t *data, size_t size, enum jcheck_code ret,
                           const struct jcheck_result *r)
{
    if (ret != r->code)
        die("return value differs from res->code", data, size, r);
    if (r->msg == NULL || r->msg[0] == '\0')
        die("empty msg", data, size, r);
    for (const char *m = r->msg; *m; m++)
        if (*m >= 'A' && *m <= 'Z')
            die("msg is not lower case", data, size, r);
    if (r->offset > size)  /* i.e. offset < len + 1 */
        die("offset past the end", data, size, r);
    switch (ret) {
    case JC_OK:
        if (r->offset != size)
            die("ok but offset != len", data, size, r);
        break;
    case JC_NUL:
        if (r->offset >= size || data[r->offset] != 0)
            die("nul code without a nul byte", data, size, r);
        break;
    case JC_EMPTY:
        for (size_t i = 0; i < size; i++)
            if (!is_ws(data[i]))
                die("empty but not blank", data, size, r);
        if (r->offset != size)
            die("empty but offset != len", data, size, r);
        break;
    case JC_NOT_OBJECT:
        for (size_t i = 0; i < r->offset; i++)
            if (!is_ws(data[i]))
                die("not-object past the first non-blank byte", data, size, r);
        if (r->offset >= size || data[r->offset] == '{' || data[r->offset] == 0)
            die("not-object at a bad position", data, size, r);
        break;
    case JC_TRAILING:
        if (r->offset >= size || is_ws(data[r->offset]) || data[r->offset] == 0)
            die("trailing at a blank/nul/end", data, size, r);
        break;
    case JC_DEPTH:
        if (r->offset >= size || (data[r->offset] != '{' && data[r->offset] != '['))
            die("depth error not at an opener", data, size, r);
        break;
    case JC_SYNTAX:
    case JC_UTF8:
        break;
    default:
        die("unknown code", data, size, r);
    }
    if (strcmp(jcheck_token(ret), "unknown") == 0)
        die("no token for code", data, size, r);
}

/* Maximum nesting of an input already known to be valid JSON. */
static unsigned valid_depth(const uint8_t *p, size_t n)
{
    unsigned depth = 0, max = 0;
    int in_str = 0;

    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                max = depth;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return max;
}

/* Start of the number token ending at byte `end`, or `end` if none. */
static size_t number_start(const uint8_t *data, size_t end)
{
    size_t start = end;
    while (start > 0 && data[start - 1] != 0 && strchr("0123456789+-.eE", data[start - 1]))
        start--;
    return start;
}

/* True when data[start, end) is a number that overflows jansson's
 * representation (int64 for integers, double for reals). */
static int number_out_of_range(const uint8_t *data, size_t start, size_t end)
{
    char buf[4200];
    int is_real = 0;

    if (start == end || end - start >= sizeof buf)
        return 0;
    memcpy(buf, data + start, end - start);
    buf[end - start] = '\0';
    for (size_t i = 0; buf[i]; i++)
        if (buf[i] == '.' || buf[i] == 'e' || buf[i] == 'E')
            is_real = 1;
    errno = 0;
    if (is_real) {
        double d = strtod(buf, NULL);
        return errno == ERANGE && (d > 1.0 || d < -1.0);  /* overflow, not underflow */
    }
    (void)strtoll(buf, NULL, 10);
    return errno == ERANGE;
}

/* Rewrites every \u0000 escape as \u0001; returns how many. */
static size_t replace_nul_escapes(uint8_t *data, size_t size)
{
    size_t count = 0;
    for (size_t i = 0; i + 6 <= size; i++) {
        if (memcmp(data + i, "\\u0000", 6) == 0) {
            data[i + 5] = '1';
            count++;
        }
    }
    return count;
}

static int ends_number_or_word(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z');
}

/* jansson accepted an object that we rejected with JC_NUL: delete the NUL
 * bytes jansson's lexer drops (one straight after a number or bare word) and
 * check that we accept the rest. */
static int ok_without_dropped_nuls(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    size_t n = size;
    int ok = 0;

    if (!copy)
        abort();
    memcpy(copy, data, size);
    for (;;) {
        struct jcheck_result r;
        enum jcheck_code ret = jcheck_object((const char *)copy, n, DEPTH_CEILING, &r);
        size_t o = r.offset;

        if (ret == JC_OK || ret == JC_DEPTH) {
            ok = 1;
            break;
        }
        if (ret != JC_NUL || o == 0 || !ends_number_or_word(copy[o - 1]))
            break;
        memmove(copy + o, copy + o + 1, n - o - 1);
        n--;
    }
    free(copy);
    return ok;
}

/* One round of the comparison. Returns 1 when done, 0 when buf was rewritten
 * to step around a documented jansson limitation and must be compared
 * again (the rewrite keeps the input valid for jcheck, so the comparison
 * goes on for everything else in it). */
static int compare_once(uint8_t *buf, size_t *size)
{
    struct jcheck_result r;
    json_error_t err;
    enum jcheck_code ours = jcheck_object((const char *)buf, *size, DEPTH_CEILING, &r);
    json_t *j = json_loadb((const char *)buf, *size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);

    if (j) {
        if (json_is_object(j) && ours != JC_OK && ours != JC_DEPTH &&
            !(ours == JC_NUL && ok_without_dropped_nuls(buf, *size)))
            die("jansson accepts an object that jcheck rejects", buf, *size, &r);
        if (!json_is_object(j) && ours != JC_NOT_OBJECT && ours != JC_DEPTH)
            die("jansson parses a non-object, jcheck does not say not-object", buf, *size, &r);
        json_decref(j);
        return 1;
    }
    if (ours != JC_OK)
        return 1;

    /* jcheck accepts, jansson rejects: only the documented differences */
    switch (json_error_code(&err)) {
    case json_error_numeric_overflow:
        if (err.position > 0 && (size_t)err.position <= *size) {
            size_t end = (size_t)err.position, start = number_start(buf, end);
            if (number_out_of_range(buf, start, end)) {
                /* replace the number with 0 and compare again */
                buf[start] = '0';
                memmove(buf + start + 1, buf + end, *size - end);
                *size -= end - start - 1;
                return 0;
            }
        }
        break;
    case json_error_null_byte_in_key:
        if (replace_nul_escapes(buf, *size) > 0)
            return 0;
        break;
    case json_error_out_of_memory:
        return 1;
    default:
        break;
    }
    fprintf(stderr, "jansson: %s (line %d col %d pos %d)\n", err.text, err.line, err.column,
            err.position);
    die("jcheck accepts what jansson rejects", buf, *size, &r);
    return 1;
}

static void differential(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);  /* exact size: ASan checks both parsers */
    size_t n = size;

    if (!buf)
        abort();
    memcpy(buf, data, size);
    while (!compare_once(buf, &n))
        ;
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jcheck_result r, again;
    enum jcheck_code ret;

    ret = jcheck_object((const char *)data, size, DEPTH_CEILING, &r);
    check_contract(data, size, ret, &r);

    /* no hidden state: same answer twice */
    jcheck_object((const char *)data, size, DEPTH_CEILING, &again);
    if (again.code != r.code || again.offset != r.offset || again.msg != r.msg)
        die("not repeatable", data, size, &r);

    differential(data, size);

    if (ret == JC_OK) {
        unsigned d = valid_depth(data, size);

        /* depth accounting: exactly d levels pass a limit of d, fail d - 1 */
        ret = jcheck_object((const char *)data, size, d, &again);
        if (ret != JC_OK)
            die("valid input fails at its own depth", data, size, &again);
        if (d >= 2) {
            ret = jcheck_object((const char *)data, size, d - 1, &again);
            check_contract(data, size, ret, &again);
            if (ret != JC_DEPTH)
                die("valid input passes a limit below its depth", data, size, &again);
        }
        ret = jcheck_object((const char *)data, size, 0, &again);
        if ((ret == JC_OK) != (d <= 64) || (ret != JC_OK && ret != JC_DEPTH))
            die("max_depth 0 is not 64", data, size, &again);

        /* a valid input cut before its closing brace is a valid beginning
         * that ends too early: the error is at the cut (except for a cut
         * right after a high surrogate escape, blamed on its backslash) */
        size_t close = size;
        while (close > 0 && data[close - 1] != '}')
            close--;
        if (close > 0) {
            size_t cut = (size * 2654435761u + data[size / 2]) % close;  /* before '}' */
            uint8_t *copy = malloc(cut ? cut : 1);        /* exact size for ASan */
            if (!copy)
                abort();
            memcpy(copy, data, cut);
            ret = jcheck_object((const char *)copy, cut, DEPTH_CEILING, &again);
            check_contract(copy, cut, ret, &again);
            if (ret == JC_OK || (again.offset != cut &&
                                 strcmp(again.msg, "unpaired surrogate escape") != 0))
                die("truncated valid input: error not at the cut", copy, cut, &again);
            free(copy);
        }
    }
    return 0;
}
