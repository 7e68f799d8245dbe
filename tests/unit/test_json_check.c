/*
 * test_json_check.c -- unit tests for the hot-path JSON object validator.
 *
 * Every input is copied into a malloc'd buffer of exactly its length before
 * jcheck_object() sees it, so under ASan any read past the end (the validator
 * must not rely on a terminating NUL) is caught. Every call also goes through
 * check_invariants(), which holds for all results: return value equals
 * res->code, msg is a non-empty lower-case static string, offset <= len,
 * JC_OK reports offset == len, and JC_NUL points at a NUL byte.
 *
 * Offsets in the expectations are written out by hand; the rule (see
 * json_check.h) is "first byte at which the input can no longer start a valid
 * object, or len if it ends too early", except unpaired surrogate escapes,
 * reported at their backslash.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_check.h"

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

static void check_invariants(const char *buf, size_t len, enum jcheck_code ret,
                             const struct jcheck_result *r, const char *file, int line)
{
    const char *m = r->msg;
    int bad = 0;

    if (ret != r->code || m == NULL || m[0] == '\0' || r->offset > len)
        bad = 1;
    for (; !bad && *m; m++)
        if (*m >= 'A' && *m <= 'Z')
            bad = 1;
    if (!bad && ret == JC_OK && (r->offset != len || strcmp(r->msg, "ok") != 0))
        bad = 1;
    if (!bad && ret == JC_NUL && (r->offset >= len || buf[r->offset] != '\0'))
        bad = 1;
    if (!bad && strcmp(jcheck_token(ret), "unknown") == 0)
        bad = 1;
    if (bad) {
        print_error("%s:%d: invariant broken: ret=%d code=%d offset=%zu len=%zu msg=%s\n",
                    file, line, (int)ret, (int)r->code, r->offset, len,
                    r->msg ? r->msg : "(null)");
        _fail(file, line);
    }
}

/* Runs the validator on an exact-length heap copy of data. */
static enum jcheck_code run_at(const void *data, size_t len, unsigned max_depth,
                               struct jcheck_result *r, const char *file, int line)
{
    char *copy = malloc(len ? len : 1);
    enum jcheck_code ret;

    assert_non_null(copy);
    if (len)
        memcpy(copy, data, len);
    memset(r, 0xA5, sizeof *r);  /* make sure every field gets written */
    ret = jcheck_object(copy, len, max_depth, r);
    check_invariants(copy, len, ret, r, file, line);
    free(copy);
    return ret;
}

static void print_input(const char *data, size_t len)
{
    size_t i, n = len > 120 ? 120 : len;
    char out[512];
    size_t o = 0;

    for (i = 0; i < n && o < sizeof out - 8; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c >= 0x20 && c < 0x7F && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, sizeof out - o, "\\x%02X", c);
    }
    out[o] = '\0';
    print_error("  input (%zu bytes): %s%s\n", len, out, n < len ? "..." : "");
}

static void expect_at(const void *data, size_t len, unsigned max_depth, enum jcheck_code code,
                      size_t offset, const char *file, int line)
{
    struct jcheck_result r;
    enum jcheck_code ret = run_at(data, len, max_depth, &r, file, line);

    if (ret != code || r.offset != offset) {
        print_error("%s:%d: got %s@%zu (%s), want %s@%zu\n", file, line, jcheck_token(ret),
                    r.offset, r.msg, jcheck_token(code), offset);
        print_input(data, len);
        _fail(file, line);
    }
}

static void expect_msg_at(const void *data, size_t len, enum jcheck_code code, size_t offset,
                          const char *msg, const char *file, int line)
{
    struct jcheck_result r;

    expect_at(data, len, 0, code, offset, file, line);
    run_at(data, len, 0, &r, file, line);
    if (strcmp(r.msg, msg) != 0) {
        print_error("%s:%d: msg \"%s\", want \"%s\"\n", file, line, r.msg, msg);
        _fail(file, line);
    }
}

/* For string literals: sizeof keeps embedded NULs and drops the terminator. */
#define EXPECT(lit, code, off)  expect_at(lit, sizeof(lit) - 1, 0, code, off, __FILE__, __LINE__)
#define EXPECT_D(lit, depth, code, off) \
    expect_at(lit, sizeof(lit) - 1, depth, code, off, __FILE__, __LINE__)
#define EXPECT_OK(lit)          EXPECT(lit, JC_OK, sizeof(lit) - 1)
#define EXPECT_MSG(lit, code, off, msg) \
    expect_msg_at(lit, sizeof(lit) - 1, code, off, msg, __FILE__, __LINE__)
#define EXPECT_BUF(buf, len, depth, code, off) \
    expect_at(buf, len, depth, code, off, __FILE__, __LINE__)

/* A growable byte buffer for generated inputs. */
struct gen {
    char *buf;
    size_t len, cap;
};

static void gen_bytes(struct gen *g, const void *s, size_t n)
{
    if (g->len + n > g->cap) {
        size_t cap = g->cap ? g->cap : 64;
        while (cap < g->len + n)
            cap *= 2;
        g->buf = realloc(g->buf, cap);
        assert_non_null(g->buf);
        g->cap = cap;
    }
    memcpy(g->buf + g->len, s, n);
    g->len += n;
}

static void gen_str(struct gen *g, const char *s)
{
    gen_bytes(g, s, strlen(s));
}

static void gen_repeat(struct gen *g, const char *s, size_t times)
{
    size_t n = strlen(s);
    while (times--)
        gen_bytes(g, s, n);
}

static void gen_free(struct gen *g)
{
    free(g->buf);
    g->buf = NULL;
    g->len = g->cap = 0;
}

/* `{"a":"` + content + `"}`: content starts at offset 6. */
static void in_string(struct gen *g, const void *content, size_t n)
{
    gen_str(g, "{\"a\":\"");
    gen_bytes(g, content, n);
    gen_str(g, "\"}");
}

#define STR_OK(lit) do { \
        struct gen g_ = {0}; \
        in_string(&g_, lit, sizeof(lit) - 1); \
        EXPECT_BUF(g_.buf, g_.len, 0, JC_OK, g_.len); \
        gen_free(&g_); \
    } while (0)
/* off is relative to the whole input (content starts at 6) */
#define STR_BAD(lit, code, off) do { \
        struct gen g_ = {0}; \
        in_string(&g_, lit, sizeof(lit) - 1); \
        EXPECT_BUF(g_.buf, g_.len, 0, code, off); \
        gen_free(&g_); \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Valid input                                                              */
/* ------------------------------------------------------------------------ */

static void test_valid_shapes(void **state)
{
    (void)state;
    EXPECT_OK("{}");
    EXPECT_OK("{\"a\":1}");
    EXPECT_OK("{\"\":\"\"}");
    EXPECT_OK("{\"a\":{}}");
    EXPECT_OK("{\"a\":[]}");
    EXPECT_OK("{\"a\":[[]]}");
    EXPECT_OK("{\"a\":[{}]}");
    EXPECT_OK("{\"a\":[{},[],{\"b\":[]}]}");
    EXPECT_OK("{\"a\":1,\"b\":2,\"c\":3}");
    EXPECT_OK("{\"a\":1,\"a\":2}");  /* duplicates are not our business */
    EXPECT_OK("{\"s\":\"x\",\"i\":-12,\"f\":3.25e-2,\"t\":true,\"F\":false,\"n\":null,"
              "\"o\":{\"k\":[1,\"two\",3.0,{\"deep\":[null]}]},\"e\":[]}");
    EXPECT_OK("{\"a\":[1,2,3,4,5,6,7,8,9,10]}");
    EXPECT_OK("{\"a\":[true,false,null]}");
    EXPECT_OK("{\"a\":[\"x\",\"y\"]}");
    EXPECT_OK("{\"a\":{\"b\":{\"c\":{\"d\":{}}}}}");
    EXPECT_OK("{\"k\xc3\xa9y\":\"v\xe2\x82\xac\"}");
    EXPECT_OK("{\"a very long key that goes past eight bytes several times over\":0}");
    EXPECT_OK("{\"a\":\"\x7f\"}");  /* DEL is not a control character in JSON */
}

static void test_valid_whitespace(void **state)
{
    (void)state;
    EXPECT_OK(" {}");
    EXPECT_OK("{} ");
    EXPECT_OK("\t\r\n {\t\r\n }\t\r\n ");
    EXPECT_OK(" \t\r\n{ \t\r\n\"a\" \t\r\n: \t\r\n1 \t\r\n, \t\r\n\"b\"\t:\t[ 1 , 2 ,\n3 ]\r\n} \t\r\n");
    EXPECT_OK("{ \"a\" : [ ] , \"b\" : { } }");
    EXPECT_OK("{\n  \"a\": [\n    1,\n    {\"b\": null}\n  ]\n}\n");
}

static void test_result_fields_on_ok(void **state)
{
    struct jcheck_result r;
    (void)state;
    assert_int_equal(run_at("{} ", 3, 0, &r, __FILE__, __LINE__), JC_OK);
    assert_int_equal(r.code, JC_OK);
    assert_int_equal(r.offset, 3);
    assert_string_equal(r.msg, "ok");
}

/* ------------------------------------------------------------------------ */
/* Empty / not an object / trailing                                         */
/* ------------------------------------------------------------------------ */

static void test_empty(void **state)
{
    struct jcheck_result r;
    (void)state;
    EXPECT("", JC_EMPTY, 0);
    EXPECT(" ", JC_EMPTY, 1);
    EXPECT(" \t\r\n", JC_EMPTY, 4);
    EXPECT_MSG("  ", JC_EMPTY, 2, "empty input, expected an object");
    /* len 0 with a NULL buffer is allowed */
    assert_int_equal(jcheck_object(NULL, 0, 0, &r), JC_EMPTY);
    assert_int_equal(r.offset, 0);
    assert_non_null(r.msg);
}

static void test_not_object(void **state)
{
    (void)state;
    EXPECT_MSG("[1,2]", JC_NOT_OBJECT, 0, "top-level value must be an object, found an array");
    EXPECT_MSG("\"s\"", JC_NOT_OBJECT, 0, "top-level value must be an object, found a string");
    EXPECT_MSG("12", JC_NOT_OBJECT, 0, "top-level value must be an object, found a number");
    EXPECT_MSG("-1", JC_NOT_OBJECT, 0, "top-level value must be an object, found a number");
    EXPECT_MSG("true", JC_NOT_OBJECT, 0, "top-level value must be an object, found a boolean");
    EXPECT_MSG("false", JC_NOT_OBJECT, 0, "top-level value must be an object, found a boolean");
    EXPECT_MSG("null", JC_NOT_OBJECT, 0, "top-level value must be an object, found null");
    EXPECT_MSG("x", JC_NOT_OBJECT, 0, "expected '{' at start of input");
    EXPECT("  \n[", JC_NOT_OBJECT, 3);   /* offset of the first non-blank byte */
    EXPECT("[", JC_NOT_OBJECT, 0);       /* the rest is not examined */
    EXPECT("}", JC_NOT_OBJECT, 0);
    EXPECT(":", JC_NOT_OBJECT, 0);
    EXPECT("\xef\xbb\xbf{}", JC_NOT_OBJECT, 0);   /* no BOM */
    EXPECT("\xc2\xa0{}", JC_NOT_OBJECT, 0);       /* NBSP is not whitespace */
    EXPECT("\v{}", JC_NOT_OBJECT, 0);
    EXPECT("\f{}", JC_NOT_OBJECT, 0);
    EXPECT("\x80", JC_NOT_OBJECT, 0);
}

static void test_trailing(void **state)
{
    (void)state;
    EXPECT_MSG("{}x", JC_TRAILING, 2, "unexpected data after the object");
    EXPECT("{} {}", JC_TRAILING, 3);
    EXPECT("{}}", JC_TRAILING, 2);
    EXPECT("{}]", JC_TRAILING, 2);
    EXPECT("{},", JC_TRAILING, 2);
    EXPECT("{}\n\n x", JC_TRAILING, 5);
    EXPECT("{}//c", JC_TRAILING, 2);
    EXPECT("{\"a\":1}{\"b\":2}", JC_TRAILING, 7);
    EXPECT("{\"a\":1}\xc3\xa9", JC_TRAILING, 7);
    EXPECT("{}\f", JC_TRAILING, 2);
    EXPECT("{}\v", JC_TRAILING, 2);
    EXPECT_OK("{}  \r\n\t");
}

/* ------------------------------------------------------------------------ */
/* Object / array syntax                                                    */
/* ------------------------------------------------------------------------ */

static void test_object_syntax(void **state)
{
    (void)state;
    EXPECT_MSG("{", JC_SYNTAX, 1,
               "expected string key or '}' in object, found end of input");
    EXPECT_MSG("{\"a\"", JC_SYNTAX, 4, "expected ':' after object key, found end of input");
    EXPECT_MSG("{\"a\":", JC_SYNTAX, 5, "expected a value, found end of input");
    EXPECT_MSG("{\"a\":1", JC_SYNTAX, 6, "expected ',' or '}' in object, found end of input");
    EXPECT_MSG("{\"a\":1,", JC_SYNTAX, 7, "expected string key after ',', found end of input");
    EXPECT_MSG("{\"a", JC_SYNTAX, 3, "unterminated string");
    EXPECT_MSG("{a:1}", JC_SYNTAX, 1, "expected string key or '}' in object");
    EXPECT("{'a':1}", JC_SYNTAX, 1);
    EXPECT("{1:1}", JC_SYNTAX, 1);
    EXPECT("{:1}", JC_SYNTAX, 1);
    EXPECT("{,\"a\":1}", JC_SYNTAX, 1);
    EXPECT_MSG("{\"a\" 1}", JC_SYNTAX, 5, "expected ':' after object key");
    EXPECT("{\"a\",1}", JC_SYNTAX, 4);
    EXPECT("{\"a\"::1}", JC_SYNTAX, 5);
    EXPECT_MSG("{\"a\":}", JC_SYNTAX, 5, "expected a value");
    EXPECT_MSG("{\"a\":1 \"b\":2}", JC_SYNTAX, 7, "expected ',' or '}' in object");
    EXPECT_MSG("{\"a\":1,}", JC_SYNTAX, 7, "expected string key after ','");
    EXPECT("{\"a\":1,,\"b\":2}", JC_SYNTAX, 7);
    EXPECT("{ \"a\" : 1 , }", JC_SYNTAX, 12);
    EXPECT("{\"a\":1]", JC_SYNTAX, 6);
    EXPECT("{\"a\":1}}", JC_TRAILING, 7);
    EXPECT("{\"a\":{\"b\":1]}", JC_SYNTAX, 11);
    EXPECT("{\"a\":{\"b\":1}", JC_SYNTAX, 12);
    EXPECT("{\f}", JC_SYNTAX, 1);             /* only space, tab, CR, LF are blanks */
    EXPECT("{\"a\":\v1}", JC_SYNTAX, 5);
    EXPECT("{\xc2\xa0}", JC_SYNTAX, 1);
    EXPECT("{\xc3\xa9:1}", JC_SYNTAX, 1);     /* non-ASCII outside strings: syntax */
    EXPECT("{\"a\":\xc3\xa9}", JC_SYNTAX, 5);
    EXPECT("{\"a\":1\xc3\xa9}", JC_SYNTAX, 6);
    EXPECT("{\"a\":1 /* c */}", JC_SYNTAX, 7);
}

static void test_array_syntax(void **state)
{
    (void)state;
    EXPECT("{\"a\":[1,]}", JC_SYNTAX, 8);
    EXPECT("{\"a\":[,1]}", JC_SYNTAX, 6);
    EXPECT_MSG("{\"a\":[1 2]}", JC_SYNTAX, 8, "expected ',' or ']' in array");
    EXPECT("{\"a\":[1:2]}", JC_SYNTAX, 7);
    EXPECT("{\"a\":[1}", JC_SYNTAX, 7);
    EXPECT_MSG("{\"a\":[", JC_SYNTAX, 6, "expected a value or ']' in array, found end of input");
    EXPECT_MSG("{\"a\":[1", JC_SYNTAX, 7, "expected ',' or ']' in array, found end of input");
    EXPECT("{\"a\":[1,", JC_SYNTAX, 8);
    EXPECT("{\"a\":[}", JC_SYNTAX, 6);
    EXPECT("{\"a\":[]]}", JC_SYNTAX, 7);
    EXPECT("{\"a\":[[]}", JC_SYNTAX, 8);
    EXPECT("{\"a\":[{\"b\":1]}", JC_SYNTAX, 12);
    EXPECT("{\"a\":[\"x\":1]}", JC_SYNTAX, 9);
    EXPECT_OK("{\"a\":[ ]}");
    EXPECT_OK("{\"a\":[ 1 , [ ] , { } ]}");
}

/* ------------------------------------------------------------------------ */
/* Numbers and literals                                                     */
/* ------------------------------------------------------------------------ */

#define NUM_OK(lit) EXPECT_OK("{\"a\":" lit "}")
/* off relative to the whole input: the number starts at 5 */
#define NUM_BAD(lit, off) EXPECT("{\"a\":" lit "}", JC_SYNTAX, off)

static void test_numbers_valid(void **state)
{
    (void)state;
    NUM_OK("0");
    NUM_OK("-0");
    NUM_OK("0.0");
    NUM_OK("-0.0");
    NUM_OK("1");
    NUM_OK("10");
    NUM_OK("1234567890");
    NUM_OK("123456789012345678901234567890123456789012345678901234567890");
    NUM_OK("9007199254740993");
    NUM_OK("-9223372036854775809");
    NUM_OK("1e5");
    NUM_OK("1E5");
    NUM_OK("1e+5");
    NUM_OK("1e-5");
    NUM_OK("1E+05");
    NUM_OK("0e0");
    NUM_OK("0E+0");
    NUM_OK("-0.0e-0");
    NUM_OK("0.000001");
    NUM_OK("3.141592653589793238462643383279");
    NUM_OK("1.7976931348623157e308");
    NUM_OK("1e400");     /* magnitude is not checked */
    NUM_OK("-1e-400");
    EXPECT_OK("{\"a\":[0,-0,1.5,-2e3]}");
    EXPECT_OK("{\"a\":1 }");
    EXPECT_OK("{\"a\":1\n}");
}

static void test_numbers_invalid(void **state)
{
    (void)state;
    NUM_BAD("01", 6);
    NUM_BAD("00", 6);
    NUM_BAD("-01", 7);
    EXPECT_MSG("{\"a\":012}", JC_SYNTAX, 6, "leading zero in number");
    NUM_BAD("+1", 5);
    NUM_BAD(".5", 5);
    NUM_BAD("-.5", 6);
    EXPECT_MSG("{\"a\":1.}", JC_SYNTAX, 7, "expected digit after '.' in number");
    NUM_BAD("1.e5", 7);
    EXPECT_MSG("{\"a\":1e}", JC_SYNTAX, 7, "expected digit in number exponent");
    NUM_BAD("1e+", 8);
    NUM_BAD("1E-", 8);
    NUM_BAD("1e+-1", 8);
    NUM_BAD("1ee1", 7);
    EXPECT_MSG("{\"a\":-}", JC_SYNTAX, 6, "expected digit after '-'");
    NUM_BAD("--1", 6);
    NUM_BAD("-a", 6);
    NUM_BAD("0x10", 6);
    NUM_BAD("1.5.3", 8);
    NUM_BAD("1 2", 7);
    NUM_BAD("1_000", 6);
    NUM_BAD("Infinity", 5);
    NUM_BAD("-Infinity", 6);
    NUM_BAD("NaN", 5);
    NUM_BAD("0.", 7);
    NUM_BAD("1e5.0", 8);
    /* cut by the end of input */
    EXPECT("{\"a\":-", JC_SYNTAX, 6);
    EXPECT("{\"a\":1", JC_SYNTAX, 6);
    EXPECT("{\"a\":1.", JC_SYNTAX, 7);
    EXPECT("{\"a\":1e", JC_SYNTAX, 7);
    EXPECT("{\"a\":1e-", JC_SYNTAX, 8);
    EXPECT("{\"a\":0", JC_SYNTAX, 6);
}

static void test_literals(void **state)
{
    (void)state;
    EXPECT_OK("{\"a\":true}");
    EXPECT_OK("{\"a\":false}");
    EXPECT_OK("{\"a\":null}");
    EXPECT_MSG("{\"a\":tru}", JC_SYNTAX, 8, "invalid literal, expected true");
    EXPECT_MSG("{\"a\":fals}", JC_SYNTAX, 9, "invalid literal, expected false");
    EXPECT_MSG("{\"a\":nul}", JC_SYNTAX, 8, "invalid literal, expected null");
    EXPECT("{\"a\":nil}", JC_SYNTAX, 6);
    EXPECT("{\"a\":f}", JC_SYNTAX, 6);
    EXPECT("{\"a\":True}", JC_SYNTAX, 5);
    EXPECT("{\"a\":NULL}", JC_SYNTAX, 5);
    EXPECT("{\"a\":truee}", JC_SYNTAX, 9);
    EXPECT("{\"a\":nullx}", JC_SYNTAX, 9);
    EXPECT("{\"a\":undefined}", JC_SYNTAX, 5);
    EXPECT_MSG("{\"a\":t", JC_SYNTAX, 6, "invalid literal, expected true, found end of input");
    EXPECT("{\"a\":fal", JC_SYNTAX, 8);
    EXPECT("{\"a\":null", JC_SYNTAX, 9);
    EXPECT("{\"a\":true", JC_SYNTAX, 9);
}

/* ------------------------------------------------------------------------ */
/* Strings: escapes, surrogates, control bytes                              */
/* ------------------------------------------------------------------------ */

static void test_escapes_valid(void **state)
{
    (void)state;
    STR_OK("\\\"");
    STR_OK("\\\\");
    STR_OK("\\/");
    STR_OK("\\b\\f\\n\\r\\t");
    STR_OK("a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti");
    STR_OK("\\u0041");
    STR_OK("\\u00e9\\u00E9");
    STR_OK("\\u20AC\\u20ac");
    STR_OK("\\uFFFF\\uffff\\uFfFf");
    STR_OK("\\u0000");      /* an escaped NUL is fine; only raw NUL bytes are not */
    STR_OK("\\u001f");
    STR_OK("\\uD7FF\\uE000");  /* just outside the surrogate range */
    STR_OK("\\\\u0041");    /* escaped backslash, then plain text */
    STR_OK("\\\\\\\\\\\"");
    EXPECT_OK("{\"\\u0041\\n\":\"\\\"\"}");
}

static void test_escapes_invalid(void **state)
{
    (void)state;
    EXPECT_MSG("{\"a\":\"\\x\"}", JC_SYNTAX, 7,
               "invalid escape, expected \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\u");
    STR_BAD("\\a", JC_SYNTAX, 7);
    STR_BAD("\\'", JC_SYNTAX, 7);
    STR_BAD("\\0", JC_SYNTAX, 7);
    STR_BAD("\\U0041", JC_SYNTAX, 7);
    STR_BAD("\\ ", JC_SYNTAX, 7);
    STR_BAD("\\\xc3\xa9", JC_SYNTAX, 7);
    STR_BAD("\\\x01", JC_SYNTAX, 7);
    EXPECT_MSG("{\"a\":\"\\u12G4\"}", JC_SYNTAX, 10, "expected 4 hex digits after '\\u'");
    STR_BAD("\\u", JC_SYNTAX, 8);        /* the closing quote is not a hex digit */
    STR_BAD("\\u12", JC_SYNTAX, 10);
    STR_BAD("\\u-123", JC_SYNTAX, 8);
    STR_BAD("\\u 123", JC_SYNTAX, 8);
    STR_BAD("\\ug000", JC_SYNTAX, 8);
    STR_BAD("\\u00\xc3\xa9", JC_SYNTAX, 10);
    /* cut by the end of input */
    EXPECT_MSG("{\"a\":\"\\", JC_SYNTAX, 7, "unterminated string");
    EXPECT_MSG("{\"a\":\"\\u", JC_SYNTAX, 8, "unterminated string");
    EXPECT("{\"a\":\"\\u00", JC_SYNTAX, 10);
    EXPECT("{\"a\":\"\\u0041", JC_SYNTAX, 12);
    EXPECT("{\"a\":\"\\n", JC_SYNTAX, 8);
}

static void test_surrogate_escapes(void **state)
{
    (void)state;
    STR_OK("\\uD83D\\uDE00");
    STR_OK("\\ud83d\\ude00");
    STR_OK("\\uD800\\uDC00");   /* U+10000 */
    STR_OK("\\uDBFF\\uDFFF");   /* U+10FFFF */
    STR_OK("x\\uD834\\uDD1Ey\\uD83D\\uDE00z");
    EXPECT_OK("{\"\\uD83D\\uDE00\":1}");

    EXPECT_MSG("{\"a\":\"\\uD800\"}", JC_UTF8, 6, "unpaired surrogate escape");
    STR_BAD("\\uD800x", JC_UTF8, 6);
    STR_BAD("\\uDBFF\\n", JC_UTF8, 6);
    STR_BAD("\\uD800\\uD800", JC_UTF8, 6);
    STR_BAD("\\uD800\\u0041", JC_UTF8, 6);
    STR_BAD("\\uD800\\uE000", JC_UTF8, 6);
    STR_BAD("\\uD800\\\\uDC00", JC_UTF8, 6);
    EXPECT_MSG("{\"a\":\"\\uDC00\"}", JC_UTF8, 6, "unpaired surrogate escape");
    STR_BAD("\\uDFFF", JC_UTF8, 6);
    STR_BAD("ab\\uDFFF", JC_UTF8, 8);
    STR_BAD("\\uDC00\\uD800", JC_UTF8, 6);          /* reversed pair */
    STR_BAD("\\uD83D\\uDE00\\uDC00", JC_UTF8, 18);  /* pair, then a lone low half */
    STR_BAD("\\uD83D\\uDE00\\uD83D", JC_UTF8, 18);  /* pair, then a lone high half */
    EXPECT("{\"\\uD800\":1}", JC_UTF8, 2);
    /* a malformed second escape is a syntax error at its bad byte */
    STR_BAD("\\uD800\\uZZZZ", JC_SYNTAX, 14);
    STR_BAD("\\uD800\\uDC0", JC_SYNTAX, 17);
    /* cut by the end of input */
    EXPECT("{\"a\":\"\\uD800", JC_UTF8, 6);
    EXPECT("{\"a\":\"\\uD800\\", JC_UTF8, 6);
    EXPECT("{\"a\":\"\\uD800\\u", JC_SYNTAX, 14);
    EXPECT("{\"a\":\"\\uD800\\uDC0", JC_SYNTAX, 17);
    EXPECT("{\"a\":\"\\uD800\\uDC00", JC_SYNTAX, 18);   /* pair fine, string unterminated */
}

static void test_control_bytes(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 0x20; c++) {
        char s[] = "{\"a\":\"x?y\"}";
        char k[] = "{\"k?\":1}";
        s[7] = (char)c;
        k[3] = (char)c;
        EXPECT_BUF(s, sizeof s - 1, 0, c ? JC_SYNTAX : JC_NUL, 7);
        EXPECT_BUF(k, sizeof k - 1, 0, c ? JC_SYNTAX : JC_NUL, 3);
    }
    EXPECT_MSG("{\"a\":\"\t\"}", JC_SYNTAX, 6, "unescaped control character in string");
    EXPECT_MSG("{\"a\":\"\n\"}", JC_SYNTAX, 6, "unescaped control character in string");
    STR_OK("\x7f\x20");
    EXPECT_MSG("{\"a\":\"abc", JC_SYNTAX, 9, "unterminated string");
    EXPECT("{\"a\":\"", JC_SYNTAX, 6);
    EXPECT("{\"", JC_SYNTAX, 2);
}

/* ------------------------------------------------------------------------ */
/* Raw UTF-8                                                                */
/* ------------------------------------------------------------------------ */

static void test_utf8_valid_boundaries(void **state)
{
    (void)state;
    STR_OK("\x7f");                 /* U+007F, last 1-byte */
    STR_OK("\xc2\x80");             /* U+0080, first 2-byte */
    STR_OK("\xc3\xa9");
    STR_OK("\xdf\xbf");             /* U+07FF, last 2-byte */
    STR_OK("\xe0\xa0\x80");         /* U+0800, first 3-byte */
    STR_OK("\xe1\x80\x80");
    STR_OK("\xec\xbf\xbf");
    STR_OK("\xed\x9f\xbf");         /* U+D7FF, just below the surrogates */
    STR_OK("\xee\x80\x80");         /* U+E000, just above them */
    STR_OK("\xef\xbf\xbd");         /* U+FFFD */
    STR_OK("\xef\xbf\xbe\xef\xbf\xbf");  /* U+FFFE/FFFF: noncharacters, still valid */
    STR_OK("\xef\xb7\x90");         /* U+FDD0 */
    STR_OK("\xf0\x90\x80\x80");     /* U+10000, first 4-byte */
    STR_OK("\xf1\x80\x80\x80");
    STR_OK("\xf3\xbf\xbf\xbf");
    STR_OK("\xf4\x8f\xbf\xbf");     /* U+10FFFF, the last code point */
    STR_OK("\xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac \xd0\x96 \xc3\xa9");
    STR_OK("abcdefgh\xc3\xa9" "abcdefgh\xe2\x82\xac" "abcdefg\xf0\x9f\x98\x80" "abcdefgh");
}

static void test_utf8_invalid(void **state)
{
    (void)state;
    /* bytes that can never start a sequence: offset of that byte */
    EXPECT_MSG("{\"a\":\"\x80\"}", JC_UTF8, 6, "invalid utf-8: unexpected continuation byte");
    STR_BAD("\xbf", JC_UTF8, 6);
    STR_BAD("ab\x80", JC_UTF8, 8);
    STR_BAD("\xc3\xa9\xa9", JC_UTF8, 8);                 /* one continuation too many */
    EXPECT_MSG("{\"a\":\"\xc0\x80\"}", JC_UTF8, 6, "invalid utf-8: overlong encoding");
    STR_BAD("\xc1\xbf", JC_UTF8, 6);
    EXPECT_MSG("{\"a\":\"\xf5\x80\x80\x80\"}", JC_UTF8, 6, "invalid utf-8: invalid byte");
    STR_BAD("\xf7\xbf\xbf\xbf", JC_UTF8, 6);
    STR_BAD("\xf8\x88\x80\x80\x80", JC_UTF8, 6);         /* old 5-byte form */
    STR_BAD("\xfc\x84\x80\x80\x80\x80", JC_UTF8, 6);     /* old 6-byte form */
    STR_BAD("\xfe", JC_UTF8, 6);
    STR_BAD("\xff", JC_UTF8, 6);

    /* second byte outside the range allowed after the lead: offset of it */
    EXPECT_MSG("{\"a\":\"\xe0\x80\x80\"}", JC_UTF8, 7, "invalid utf-8: overlong encoding");
    STR_BAD("\xe0\x9f\xbf", JC_UTF8, 7);                 /* U+07FF in 3 bytes */
    STR_BAD("\xf0\x80\x80\x80", JC_UTF8, 7);
    STR_BAD("\xf0\x8f\xbf\xbf", JC_UTF8, 7);             /* U+FFFF in 4 bytes */
    EXPECT_MSG("{\"a\":\"\xed\xa0\x80\"}", JC_UTF8, 7, "invalid utf-8: encoded surrogate");
    STR_BAD("\xed\xbf\xbf", JC_UTF8, 7);                 /* U+DFFF */
    STR_BAD("\xed\xa0\xbd\xed\xb8\x80", JC_UTF8, 7);     /* CESU-8 style pair */
    EXPECT_MSG("{\"a\":\"\xf4\x90\x80\x80\"}", JC_UTF8, 7,
               "invalid utf-8: code point above u+10ffff");
    STR_BAD("\xf4\xbf\xbf\xbf", JC_UTF8, 7);

    /* a continuation byte was expected: offset of the byte found instead */
    EXPECT_MSG("{\"a\":\"\xc3(\"}", JC_UTF8, 7, "invalid utf-8: expected continuation byte");
    STR_BAD("\xc3", JC_UTF8, 7);                         /* the closing quote */
    STR_BAD("\xc3\xc3\xa9", JC_UTF8, 7);
    STR_BAD("\xe2\x28\xa1", JC_UTF8, 7);
    STR_BAD("\xe2\x82", JC_UTF8, 8);
    STR_BAD("\xe2\x82\x28", JC_UTF8, 8);
    STR_BAD("\xf0\x9f\x98", JC_UTF8, 9);
    STR_BAD("\xf0\x9f\x98(", JC_UTF8, 9);
    STR_BAD("\xf0\x9f(", JC_UTF8, 8);
    STR_BAD("\xf0(", JC_UTF8, 7);
    STR_BAD("\xe0\xa0", JC_UTF8, 8);
    STR_BAD("\xc3\\n", JC_UTF8, 7);

    /* cut by the end of input, mid-sequence: offset len, still utf8 */
    EXPECT_MSG("{\"a\":\"\xc3", JC_UTF8, 7,
               "invalid utf-8: expected continuation byte, found end of input");
    EXPECT("{\"a\":\"\xe2", JC_UTF8, 7);
    EXPECT("{\"a\":\"\xe2\x82", JC_UTF8, 8);
    EXPECT("{\"a\":\"\xf0", JC_UTF8, 7);
    EXPECT("{\"a\":\"\xf0\x9f", JC_UTF8, 8);
    EXPECT("{\"a\":\"\xf0\x9f\x98", JC_UTF8, 9);
    EXPECT("{\"a\":\"\xc3\xa9", JC_SYNTAX, 8);   /* complete char: just unterminated */
    /* the same in a key */
    EXPECT("{\"\xc3(\":1}", JC_UTF8, 3);
    EXPECT("{\"\xed\xa0\x80\":1}", JC_UTF8, 3);
}

/* Every byte value alone inside a string. */
static void test_utf8_every_single_byte(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 256; c++) {
        char s[] = "{\"a\":\"?\"}";
        enum jcheck_code code;
        size_t off;

        s[6] = (char)c;
        if (c == 0) {
            code = JC_NUL, off = 6;
        } else if (c < 0x20) {
            code = JC_SYNTAX, off = 6;
        } else if (c == '"') {
            code = JC_SYNTAX, off = 7;          /* empty string, then a stray '"' */
        } else if (c == '\\') {
            code = JC_SYNTAX, off = 9;          /* \" escapes the quote: unterminated */
        } else if (c < 0x80) {
            code = JC_OK, off = 9;
        } else if (c < 0xC2 || c > 0xF4) {
            code = JC_UTF8, off = 6;            /* never a valid lead byte */
        } else {
            code = JC_UTF8, off = 7;            /* lead byte followed by '"' */
        }
        EXPECT_BUF(s, sizeof s - 1, 0, code, off);
    }
}

/* Every two-byte sequence lead + second byte, checked against the table of
 * well-formed byte sequences in the Unicode standard (table 3-7). */
static void test_utf8_every_lead_second_pair(void **state)
{
    (void)state;
    for (unsigned a = 0xC2; a <= 0xF4; a++) {
        for (unsigned b = 0x80; b <= 0xBF; b++) {
            unsigned lo = 0x80, hi = 0xBF, n = a < 0xE0 ? 2 : a < 0xF0 ? 3 : 4;
            char s[16] = "{\"a\":\"";
            size_t len = 6;

            if (a == 0xE0) lo = 0xA0;
            if (a == 0xED) hi = 0x9F;
            if (a == 0xF0) lo = 0x90;
            if (a == 0xF4) hi = 0x8F;
            s[len++] = (char)a;
            s[len++] = (char)b;
            for (unsigned i = 2; i < n; i++)
                s[len++] = (char)0x80;
            s[len++] = '"';
            s[len++] = '}';
            if (b >= lo && b <= hi)
                EXPECT_BUF(s, len, 0, JC_OK, len);
            else
                EXPECT_BUF(s, len, 0, JC_UTF8, 7);
        }
    }
}

/* Every value of the third and fourth byte of 3- and 4-byte sequences: only
 * 0x80..0xBF may continue a sequence there (0xC0..0xFF included in the
 * check, not just ASCII). */
static void test_utf8_every_later_byte(void **state)
{
    static const struct {
        const char *head;  /* bytes before the one that varies */
        size_t n;
        const char *tail;  /* bytes after it, completing the sequence */
    } seqs[] = {
        { "\xe2\x82", 2, "" },          /* 3rd of 3: U+20AC */
        { "\xed\x9f", 2, "" },          /* 3rd of 3 after the tightest ED */
        { "\xf0\x9f", 2, "\x80" },      /* 3rd of 4 */
        { "\xf0\x9f\x98", 3, "" },      /* 4th of 4 */
        { "\xf4\x8f\xbf", 3, "" },      /* 4th of 4 at U+10FFFF */
    };
    (void)state;

    for (size_t k = 0; k < sizeof seqs / sizeof seqs[0]; k++) {
        for (unsigned c = 0; c < 256; c++) {
            char s[24] = "{\"a\":\"";
            size_t len = 6, at;

            memcpy(s + len, seqs[k].head, seqs[k].n);
            len += seqs[k].n;
            at = len;
            s[len++] = (char)c;
            memcpy(s + len, seqs[k].tail, strlen(seqs[k].tail));
            len += strlen(seqs[k].tail);
            s[len++] = '"';
            s[len++] = '}';
            if (c >= 0x80 && c <= 0xBF)
                EXPECT_BUF(s, len, 0, JC_OK, len);
            else
                EXPECT_BUF(s, len, 0, c ? JC_UTF8 : JC_NUL, at);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* NUL bytes                                                                */
/* ------------------------------------------------------------------------ */

static void test_nul(void **state)
{
    (void)state;
    EXPECT_MSG("\0", JC_NUL, 0, "unexpected nul byte");
    EXPECT("  \0{}", JC_NUL, 2);
    EXPECT("{\0}", JC_NUL, 1);
    EXPECT("{\"\0\":1}", JC_NUL, 2);
    EXPECT("{\"a\"\0:1}", JC_NUL, 4);
    EXPECT("{\"a\":\0}", JC_NUL, 5);
    EXPECT("{\"a\":\"x\0\"}", JC_NUL, 7);
    EXPECT("{\"a\":1\0}", JC_NUL, 6);
    EXPECT("{\"a\":-\0}", JC_NUL, 6);
    EXPECT("{\"a\":1.\0}", JC_NUL, 7);
    EXPECT("{\"a\":1e\0}", JC_NUL, 7);
    EXPECT("{\"a\":tr\0e}", JC_NUL, 7);
    EXPECT("{\"a\":[\0]}", JC_NUL, 6);
    EXPECT("{\"a\":[1\0]}", JC_NUL, 7);
    EXPECT("{}\0", JC_NUL, 2);                 /* not JC_TRAILING */
    EXPECT("{} \0", JC_NUL, 3);
    EXPECT("{\"a\":\"\\\0\"}", JC_NUL, 7);      /* after a backslash */
    EXPECT("{\"a\":\"\\u00\0\"}", JC_NUL, 10);  /* inside \u digits */
    EXPECT("{\"a\":\"\xc3\0\"}", JC_NUL, 7);    /* where a continuation byte was due */
    EXPECT("{\"a\":\"\xf0\x9f\0\"}", JC_NUL, 8);
    /* an earlier error wins */
    EXPECT("{x\0}", JC_SYNTAX, 1);
    EXPECT("{\"a\":01\0}", JC_SYNTAX, 6);
    EXPECT("{\"a\":\"\x80\0\"}", JC_UTF8, 6);
    EXPECT("{}x\0", JC_TRAILING, 2);
    /* deep inside a long string, found by the word-at-a-time scan */
    {
        struct gen g = {0};
        gen_str(&g, "{\"a\":\"");
        gen_repeat(&g, "abcdefgh", 125);
        gen_bytes(&g, "xyz\0tail\"}", 10);
        EXPECT_BUF(g.buf, g.len, 0, JC_NUL, 6 + 1000 + 3);
        gen_free(&g);
    }
}

/* ------------------------------------------------------------------------ */
/* Fast path: special bytes at every position and alignment                 */
/* ------------------------------------------------------------------------ */

static void test_string_scan_positions(void **state)
{
    (void)state;
    for (size_t k = 0; k <= 40; k++) {
        struct gen g = {0};
        char run[64];

        for (size_t i = 0; i < k; i++)
            run[i] = (char)('a' + i % 26);
        run[k] = '\0';

        /* plain string of length k, closed */
        in_string(&g, run, k);
        EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
        gen_free(&g);

        /* unterminated: the scan must stop exactly at the end of the buffer */
        gen_str(&g, "{\"a\":\"");
        gen_bytes(&g, run, k);
        EXPECT_BUF(g.buf, g.len, 0, JC_SYNTAX, g.len);
        gen_free(&g);

        /* special bytes right after k plain ones */
        static const struct {
            const char *s;
            size_t n;
            enum jcheck_code code;
            size_t delta;  /* error offset relative to the special byte */
        } cases[] = {
            { "\x01", 1, JC_SYNTAX, 0 }, { "\x1f", 1, JC_SYNTAX, 0 },
            { "\0", 1, JC_NUL, 0 },      { "\x80", 1, JC_UTF8, 0 },
            { "\xff", 1, JC_UTF8, 0 },   { "\\q", 2, JC_SYNTAX, 1 },
            { "\xc3(", 2, JC_UTF8, 1 },  { "\\uDC00", 6, JC_UTF8, 0 },
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            gen_str(&g, "{\"a\":\"");
            gen_bytes(&g, run, k);
            gen_bytes(&g, cases[c].s, cases[c].n);
            gen_str(&g, "0123456789abcdef\"}");
            EXPECT_BUF(g.buf, g.len, 0, cases[c].code, 6 + k + cases[c].delta);
            gen_free(&g);
        }

        /* valid specials after k plain ones, then more plain text */
        static const char *const fine[] = { "\\n", "\\\"", "\\u00e9", "\xc3\xa9",
                                            "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                            "\\uD83D\\uDE00" };
        for (size_t c = 0; c < sizeof fine / sizeof fine[0]; c++) {
            gen_str(&g, "{\"a\":\"");
            gen_bytes(&g, run, k);
            gen_str(&g, fine[c]);
            gen_bytes(&g, run, k);
            gen_str(&g, "\"}");
            EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
            gen_free(&g);
        }
    }
}

/* A plain printable byte followed by any byte, at each of 8 alignments: the
 * word-at-a-time flags must neither miss a special byte nor invent one. */
static void test_string_scan_byte_pairs(void **state)
{
    (void)state;
    for (unsigned align = 0; align < 8; align++) {
        for (unsigned x = 0x20; x < 0x80; x++) {
            if (x == '"' || x == '\\')
                continue;
            for (unsigned y = 0; y < 256; y++) {
                char s[40];
                size_t len = 0, at;
                enum jcheck_code code;
                size_t off;

                memcpy(s, "{\"a\":\"", 6);
                len = 6;
                for (unsigned i = 0; i < align; i++)
                    s[len++] = 'm';
                s[len++] = (char)x;
                at = len;
                s[len++] = (char)y;
                memcpy(s + len, "zzzzzzzzzz\"}", 12);
                len += 12;

                if (y == 0) {
                    code = JC_NUL, off = at;
                } else if (y < 0x20) {
                    code = JC_SYNTAX, off = at;
                } else if (y == '"') {
                    code = JC_SYNTAX, off = at + 1;    /* 'z' after the string */
                } else if (y == '\\') {
                    code = JC_SYNTAX, off = at + 1;    /* \z */
                } else if (y < 0x80) {
                    code = JC_OK, off = len;
                } else if (y < 0xC2 || y > 0xF4) {
                    code = JC_UTF8, off = at;
                } else {
                    code = JC_UTF8, off = at + 1;      /* 'z' is no continuation */
                }
                EXPECT_BUF(s, len, 0, code, off);
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Nesting depth                                                            */
/* ------------------------------------------------------------------------ */

static int kind_all_objects(unsigned level) { (void)level; return 1; }
static int kind_all_arrays(unsigned level) { (void)level; return 0; }
static int kind_mixed3(unsigned level) { return level % 3 != 1; }
static int kind_mixed7(unsigned level) { return (level * 5 + level / 7) % 2; }

/* Builds `levels` nested containers; level 0 is the top-level object, the
 * others follow is_obj. With siblings, every closed container is followed
 * by more values in its parent (which need the parent's kind to be right,
 * and which push and pop levels of their own). Records the offset of each
 * level's opener and closer when asked. */
static void gen_nested(struct gen *g, unsigned levels, int (*is_obj)(unsigned), int siblings,
                       size_t *openers, size_t *closers)
{
    for (unsigned i = 0; i < levels; i++) {
        int obj = i == 0 ? 1 : is_obj(i);
        if (i > 0 && (i - 1 == 0 || is_obj(i - 1)))
            gen_str(g, "\"k\":");
        if (openers)
            openers[i] = g->len;
        gen_str(g, obj ? "{" : "[");
    }
    gen_str(g, levels <= 1 || is_obj(levels - 1) ? "\"x\":1" : "1");
    for (unsigned i = levels; i-- > 0;) {
        int obj = i == 0 ? 1 : is_obj(i);
        if (closers)
            closers[i] = g->len;
        gen_str(g, obj ? "}" : "]");
        if (siblings && i > 0) {
            int parent_obj = i - 1 == 0 || is_obj(i - 1);
            gen_str(g, parent_obj ? ",\"s\":[1,{\"t\":null}],\"u\":2" : ",{\"u\":\"v\"},[3],4");
        }
    }
}

/* `levels` deep input against max_depth: fine up to the effective limit,
 * else JC_DEPTH at the opener of the first level past it. */
static void expect_depth(unsigned levels, int (*is_obj)(unsigned), unsigned max_depth, int line)
{
    struct gen g = {0};
    size_t *openers = malloc(levels * sizeof *openers);
    unsigned limit = max_depth == 0 ? 64 : max_depth > 1024 ? 1024 : max_depth;

    assert_non_null(openers);
    gen_nested(&g, levels, is_obj, 0, openers, NULL);
    if (levels <= limit)
        expect_at(g.buf, g.len, max_depth, JC_OK, g.len, __FILE__, line);
    else
        expect_at(g.buf, g.len, max_depth, JC_DEPTH, openers[limit], __FILE__, line);
    free(openers);
    gen_free(&g);
}

static void test_depth_limits(void **state)
{
    static int (*const kinds[])(unsigned) = { kind_all_objects, kind_all_arrays, kind_mixed3,
                                               kind_mixed7 };
    static const unsigned sizes[] = { 2, 3, 63, 64, 65, 100, 127, 128, 129, 500, 1023, 1024 };
    (void)state;

    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            unsigned n = sizes[s];
            expect_depth(n, kinds[k], n, __LINE__);        /* exactly at the limit: ok */
            expect_depth(n, kinds[k], n - 1, __LINE__);    /* one past it: depth */
            expect_depth(n, kinds[k], 1024, __LINE__);
            expect_depth(n, kinds[k], 0, __LINE__);        /* 0 means 64 */
        }
        expect_depth(64, kinds[k], 0, __LINE__);
        expect_depth(65, kinds[k], 0, __LINE__);
        expect_depth(65, kinds[k], 64, __LINE__);
        /* above 1024 is clamped to 1024 */
        expect_depth(1024, kinds[k], 1025, __LINE__);
        expect_depth(1025, kinds[k], 1025, __LINE__);
        expect_depth(1025, kinds[k], 5000, __LINE__);
        expect_depth(1025, kinds[k], UINT_MAX, __LINE__);
        expect_depth(2000, kinds[k], UINT_MAX, __LINE__);
        expect_depth(2000, kinds[k], 3, __LINE__);
    }

    EXPECT_D("{}", 1, JC_OK, 2);
    EXPECT_D("{\"a\":1,\"b\":[]}", 1, JC_DEPTH, 11);
    EXPECT_D("{\"a\":{}}", 1, JC_DEPTH, 5);
    EXPECT_D("{\"a\":{}}", 2, JC_OK, 8);
    EXPECT_D("{\"a\":[[]]}", 2, JC_DEPTH, 6);
    {
        struct jcheck_result r;
        assert_int_equal(run_at("{\"a\":[[]]}", 10, 2, &r, __FILE__, __LINE__), JC_DEPTH);
        assert_string_equal(r.msg, "nesting deeper than max_depth");
    }
    /* the depth error stops the scan: later junk is not looked at */
    EXPECT_D("{\"a\":[[x", 2, JC_DEPTH, 6);
    /* an earlier error wins */
    EXPECT_D("{\"a\":x,\"b\":[[[[", 2, JC_SYNTAX, 5);
    /* siblings at the same depth don't add up */
    EXPECT_D("{\"a\":[1],\"b\":[2],\"c\":{\"d\":3}}", 2, JC_OK, 29);
}

/* The kind of every level must survive pushes and pops across the 64-bit
 * words of the bitset. */
static void test_depth_kind_tracking(void **state)
{
    static int (*const kinds[])(unsigned) = { kind_all_objects, kind_all_arrays, kind_mixed3,
                                               kind_mixed7 };
    (void)state;

    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        for (unsigned n = 60; n <= 200; n += 35) {
            struct gen g = {0};
            size_t closers[256];

            gen_nested(&g, n, kinds[k], 1, NULL, closers);
            EXPECT_BUF(g.buf, g.len, 1024, JC_OK, g.len);

            /* close one level with the wrong bracket: error right there */
            for (unsigned lvl = 1; lvl < n; lvl += 13) {
                char saved = g.buf[closers[lvl]];
                g.buf[closers[lvl]] = saved == '}' ? ']' : '}';
                EXPECT_BUF(g.buf, g.len, 1024, JC_SYNTAX, closers[lvl]);
                g.buf[closers[lvl]] = saved;
            }
            gen_free(&g);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Truncation: every prefix of a valid object                               */
/* ------------------------------------------------------------------------ */

/* Every proper prefix of a valid object is a valid beginning that stops too
 * early, so it must fail at exactly offset k (its length): JC_EMPTY while it
 * is all blanks, JC_UTF8 when cut inside a UTF-8 character, else JC_SYNTAX.
 * Once the closing brace is in, every longer prefix is valid. The exact-size
 * copy also makes ASan check there is no read past each cut. */
static void test_every_prefix(void **state)
{
    static const char doc[] =
        " \t{\"a\" : [1, -0.5e+10, 2E-3, 0, true, false, null, \"x\\n\\u00e9\\\"\\/\","
        " {\"b\":{}}, [], [[]]], \"k\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\": \"\xc3\xbc\","
        "\"n\":123,\"long string over eight\":\"abcdefghijklmnop\"}\r\n ";
    const size_t n = sizeof doc - 1;
    const size_t close = (size_t)(strrchr(doc, '}') - doc) + 1;
    (void)state;

    for (size_t k = 0; k < n; k++) {
        struct jcheck_result r;
        enum jcheck_code code = run_at(doc, k, 0, &r, __FILE__, __LINE__);

        if (k >= close) {
            if (code != JC_OK) {
                print_error("prefix %zu: %s@%zu %s\n", k, jcheck_token(code), r.offset, r.msg);
                fail();
            }
            continue;
        }
        int mid_utf8 = k > 0 && ((unsigned char)doc[k] & 0xC0) == 0x80;
        enum jcheck_code want = k <= 2 ? JC_EMPTY : mid_utf8 ? JC_UTF8 : JC_SYNTAX;
        if (code != want || r.offset != k) {
            print_error("prefix %zu: got %s@%zu (%s), want %s@%zu\n", k, jcheck_token(code),
                        r.offset, r.msg, jcheck_token(want), k);
            fail();
        }
    }
    EXPECT_BUF(doc, n, 0, JC_OK, n);
}

/* ------------------------------------------------------------------------ */
/* Big inputs                                                               */
/* ------------------------------------------------------------------------ */

#define MIB ((size_t)1 << 20)

static void test_big_strings(void **state)
{
    struct gen g = {0};
    (void)state;

    /* 1 MiB of printable ASCII */
    gen_str(&g, "{\"big\":\"");
    for (size_t i = 0; i < MIB; i++) {
        char c = (char)(0x20 + i % 95);
        if (c == '"' || c == '\\')
            c = '.';
        gen_bytes(&g, &c, 1);
    }
    gen_str(&g, "\"}");
    EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
    /* one bad byte near the middle, and one at the very end of the string */
    g.buf[8 + MIB / 2 + 3] = '\x01';
    EXPECT_BUF(g.buf, g.len, 0, JC_SYNTAX, 8 + MIB / 2 + 3);
    g.buf[8 + MIB / 2 + 3] = 'a';
    g.buf[8 + MIB - 1] = '\x80';
    EXPECT_BUF(g.buf, g.len, 0, JC_UTF8, 8 + MIB - 1);
    /* missing closing quote: scanned to the very end */
    g.buf[8 + MIB - 1] = 'a';
    EXPECT_BUF(g.buf, g.len - 2, 0, JC_SYNTAX, g.len - 2);
    gen_free(&g);

    /* 1 MiB of 2-, 3- and 4-byte characters */
    static const char *const chars[] = { "\xc3\xa9", "\xe6\x97\xa5", "\xf0\x9f\x98\x80",
                                         "a\xc3\xa9z\xe2\x82\xac" };
    for (size_t c = 0; c < sizeof chars / sizeof chars[0]; c++) {
        gen_str(&g, "{\"u\":\"");
        gen_repeat(&g, chars[c], MIB / strlen(chars[c]));
        gen_str(&g, "\"}");
        EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
        /* truncate the last character */
        size_t cut = g.len - 3;
        EXPECT_BUF(g.buf, cut, 0, JC_UTF8, cut);
        gen_free(&g);
    }

    /* 1 MiB of escapes */
    gen_str(&g, "{\"e\":\"");
    gen_repeat(&g, "\\n\\u00e9\\\"\\uD83D\\uDE00", MIB / 24);
    gen_str(&g, "\"}");
    EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
    gen_free(&g);

    /* 1 MiB key */
    gen_str(&g, "{\"");
    gen_repeat(&g, "k", MIB);
    gen_str(&g, "\":1}");
    EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
    gen_free(&g);
}

static void test_big_structures(void **state)
{
    struct gen g = {0};
    char num[32];
    (void)state;

    /* 100k array elements */
    gen_str(&g, "{\"a\":[");
    for (int i = 0; i < 100000; i++) {
        snprintf(num, sizeof num, "%s%d.%de%d", i ? "," : "", i, i % 10, i % 300 - 150);
        gen_str(&g, num);
    }
    gen_str(&g, "]}");
    EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
    gen_free(&g);

    /* 50k members */
    gen_str(&g, "{");
    for (int i = 0; i < 50000; i++) {
        snprintf(num, sizeof num, "%s\"k%d\":", i ? "," : "", i);
        gen_str(&g, num);
        gen_str(&g, i % 3 == 0 ? "true" : i % 3 == 1 ? "{\"x\":[null]}" : "\"v\"");
    }
    gen_str(&g, "}");
    EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
    gen_free(&g);

    /* 1 MiB of blanks around an object, and alone */
    gen_repeat(&g, " \t\r\n", MIB / 4);
    EXPECT_BUF(g.buf, g.len, 0, JC_EMPTY, g.len);
    gen_str(&g, "{}");
    gen_repeat(&g, "\n", MIB);
    EXPECT_BUF(g.buf, g.len, 0, JC_OK, g.len);
    gen_str(&g, "x");
    EXPECT_BUF(g.buf, g.len, 0, JC_TRAILING, g.len - 1);
    gen_free(&g);
}

/* ------------------------------------------------------------------------ */
/* Tokens                                                                   */
/* ------------------------------------------------------------------------ */

static void test_tokens(void **state)
{
    (void)state;
    assert_string_equal(jcheck_token(JC_OK), "ok");
    assert_string_equal(jcheck_token(JC_EMPTY), "empty");
    assert_string_equal(jcheck_token(JC_NOT_OBJECT), "not-object");
    assert_string_equal(jcheck_token(JC_SYNTAX), "json");
    assert_string_equal(jcheck_token(JC_UTF8), "utf8");
    assert_string_equal(jcheck_token(JC_NUL), "nul");
    assert_string_equal(jcheck_token(JC_DEPTH), "depth");
    assert_string_equal(jcheck_token(JC_TRAILING), "trailing");
    assert_string_equal(jcheck_token((enum jcheck_code)99), "unknown");
}

/* The same input always gives the same result; nothing is kept between calls. */
static void test_reentrant_and_repeatable(void **state)
{
    static const char *const inputs[] = { "{\"a\":[1,2", "{}", "{\"a\":\"\xc3(\"}", "[1]",
                                          "{\"a\":1}x" };
    struct jcheck_result first[5], again;
    (void)state;

    for (int i = 0; i < 5; i++)
        run_at(inputs[i], strlen(inputs[i]), 0, &first[i], __FILE__, __LINE__);
    for (int round = 0; round < 3; round++) {
        for (int i = 4; i >= 0; i--) {
            run_at(inputs[i], strlen(inputs[i]), 0, &again, __FILE__, __LINE__);
            assert_int_equal(again.code, first[i].code);
            assert_int_equal(again.offset, first[i].offset);
            assert_ptr_equal(again.msg, first[i].msg);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_shapes),
        cmocka_unit_test(test_valid_whitespace),
        cmocka_unit_test(test_result_fields_on_ok),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_trailing),
        cmocka_unit_test(test_object_syntax),
        cmocka_unit_test(test_array_syntax),
        cmocka_unit_test(test_numbers_valid),
        cmocka_unit_test(test_numbers_invalid),
        cmocka_unit_test(test_literals),
        cmocka_unit_test(test_escapes_valid),
        cmocka_unit_test(test_escapes_invalid),
        cmocka_unit_test(test_surrogate_escapes),
        cmocka_unit_test(test_control_bytes),
        cmocka_unit_test(test_utf8_valid_boundaries),
        cmocka_unit_test(test_utf8_invalid),
        cmocka_unit_test(test_utf8_every_single_byte),
        cmocka_unit_test(test_utf8_every_lead_second_pair),
        cmocka_unit_test(test_utf8_every_later_byte),
        cmocka_unit_test(test_nul),
        cmocka_unit_test(test_string_scan_positions),
        cmocka_unit_test(test_string_scan_byte_pairs),
        cmocka_unit_test(test_depth_limits),
        cmocka_unit_test(test_depth_kind_tracking),
        cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_big_strings),
        cmocka_unit_test(test_big_structures),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_reentrant_and_repeatable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
