/*
 * test_line.c -- unit tests for the ingest line classifier (line.h).
 *
 * Each line is copied into a malloc'd buffer of exactly its length (no
 * terminating NUL) before line_parse() sees it, so ASan catches reads past
 * the end. Byte positions in the expectations are counted by hand: 1-based,
 * from the first byte of the line as sent, '@NAME ' prefix and leading
 * blanks included.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "line.h"

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

static const struct line_limits LIM = { .max_record_bytes = 64, .max_depth = 3 };

struct parsed {
    char *buf;            /* the exact-length copy the result points into */
    size_t len;
    struct line_result r;
};

static void parse_with(struct parsed *p, const char *line, size_t len,
                       const struct line_limits *lim)
{
    p->buf = malloc(len ? len : 1);
    assert_non_null(p->buf);
    if (len)
        memcpy(p->buf, line, len);
    p->len = len;
    /* dirty the result: line_parse must set everything it reports */
    memset(&p->r, 0xa5, sizeof p->r);
    line_parse(p->buf, len, lim, &p->r);
}

static void done(struct parsed *p)
{
    free(p->buf);
    p->buf = NULL;
}

/* True if msg contains "byte N" with N not followed by another digit. */
static int has_byte_pos(const char *msg, size_t pos)
{
    char want[40];
    snprintf(want, sizeof want, "byte %zu", pos);
    size_t wl = strlen(want);
    for (const char *p = strstr(msg, want); p; p = strstr(p + 1, want)) {
        char next = p[wl];
        if (next < '0' || next > '9')
            return 1;
    }
    return 0;
}

#define S(lit) (lit), (sizeof(lit) - 1)

static void expect_empty_at(const char *line, size_t len, const char *file, int ln)
{
    struct parsed p;
    parse_with(&p, line, len, &LIM);
    if (p.r.kind != LINE_EMPTY)
        fail_msg("%s:%d: kind %d, want LINE_EMPTY", file, ln, (int)p.r.kind);
    done(&p);
}
#define EXPECT_EMPTY(lit) expect_empty_at(S(lit), __FILE__, __LINE__)

/* A record: json must be exactly want_json, at offset want_off in the line;
 * table (or NULL) exactly want_table at its offset. */
static void expect_record_at(const char *line, size_t len, const char *want_table,
                             size_t table_off, const char *want_json, size_t json_off,
                             const struct line_limits *lim, const char *file, int ln)
{
    struct parsed p;
    parse_with(&p, line, len, lim);
    if (p.r.kind != LINE_RECORD)
        fail_msg("%s:%d: kind %d (reason %s: %s), want LINE_RECORD", file, ln,
                 (int)p.r.kind, p.r.kind == LINE_ERROR ? p.r.reason : "-",
                 p.r.kind == LINE_ERROR ? p.r.msg : "-");
    size_t jl = strlen(want_json);
    if (p.r.json_len != jl || p.r.json != p.buf + json_off ||
        memcmp(p.r.json, want_json, jl) != 0)
        fail_msg("%s:%d: json at offset %td len %zu, want '%s' at %zu", file, ln,
                 p.r.json - p.buf, p.r.json_len, want_json, json_off);
    if (want_table) {
        size_t tl = strlen(want_table);
        if (p.r.table != p.buf + table_off || p.r.table_len != tl ||
            memcmp(p.r.table, want_table, tl) != 0)
            fail_msg("%s:%d: table wrong, want '%s' at %zu", file, ln, want_table, table_off);
    } else if (p.r.table != NULL) {
        fail_msg("%s:%d: table set on a record without '@NAME '", file, ln);
    }
    done(&p);
}
#define EXPECT_RECORD(lit, json, joff) \
    expect_record_at(S(lit), NULL, 0, (json), (joff), &LIM, __FILE__, __LINE__)
#define EXPECT_TABLE_RECORD(lit, table, toff, json, joff) \
    expect_record_at(S(lit), (table), (toff), (json), (joff), &LIM, __FILE__, __LINE__)

static void expect_table_at(const char *line, size_t len, const char *want, size_t off,
                            const char *file, int ln)
{
    struct parsed p;
    parse_with(&p, line, len, &LIM);
    if (p.r.kind != LINE_TABLE)
        fail_msg("%s:%d: kind %d, want LINE_TABLE", file, ln, (int)p.r.kind);
    size_t tl = strlen(want);
    if (p.r.table != p.buf + off || p.r.table_len != tl || memcmp(p.r.table, want, tl) != 0)
        fail_msg("%s:%d: table wrong, want '%s' at %zu (len %zu got %zu)", file, ln, want,
                 off, tl, p.r.table_len);
    done(&p);
}
#define EXPECT_TABLE(lit, name, off) expect_table_at(S(lit), (name), (off), __FILE__, __LINE__)

static void expect_error_at(const char *line, size_t len, const struct line_limits *lim,
                            const char *reason, size_t pos, const char *file, int ln)
{
    struct parsed p;
    parse_with(&p, line, len, lim);
    if (p.r.kind != LINE_ERROR)
        fail_msg("%s:%d: kind %d, want LINE_ERROR %s", file, ln, (int)p.r.kind, reason);
    if (p.r.reason == NULL || strcmp(p.r.reason, reason) != 0)
        fail_msg("%s:%d: reason '%s', want '%s' (msg: %.200s)", file, ln,
                 p.r.reason ? p.r.reason : "(null)", reason, p.r.msg);
    if (memchr(p.r.msg, 0, sizeof p.r.msg) == NULL)
        fail_msg("%s:%d: msg not terminated", file, ln);
    if (p.r.msg[0] == 0)
        fail_msg("%s:%d: empty msg", file, ln);
    if (pos && !has_byte_pos(p.r.msg, pos))
        fail_msg("%s:%d: msg '%s' does not name byte %zu", file, ln, p.r.msg, pos);
    done(&p);
}
#define EXPECT_ERROR(lit, reason, pos) \
    expect_error_at(S(lit), &LIM, (reason), (pos), __FILE__, __LINE__)

/* ------------------------------------------------------------------------ */
/* Kinds                                                                    */
/* ------------------------------------------------------------------------ */

static void test_empty_lines(void **state)
{
    (void)state;
    EXPECT_EMPTY("");
    EXPECT_EMPTY(" ");
    EXPECT_EMPTY("   \t  ");
    EXPECT_EMPTY("\t");
    EXPECT_EMPTY("\r");
    EXPECT_EMPTY(" \t \r");
    EXPECT_EMPTY("\r\r");
}

static void test_records(void **state)
{
    (void)state;
    EXPECT_RECORD("{}", "{}", 0);
    EXPECT_RECORD("{\"a\":1}", "{\"a\":1}", 0);
    EXPECT_RECORD("{\"a\":1}\r", "{\"a\":1}", 0);
    EXPECT_RECORD("  {\"a\":1}  ", "{\"a\":1}", 2);
    EXPECT_RECORD("\t{\"a\":1}\t\r", "{\"a\":1}", 1);
    EXPECT_RECORD("{ \"a\" : [1, 2, {\"b\": null}] }", "{ \"a\" : [1, 2, {\"b\": null}] }", 0);
    EXPECT_RECORD("{\"s\":\"caf\xc3\xa9 \\u00e9\"}", "{\"s\":\"caf\xc3\xa9 \\u00e9\"}", 0);
    /* '@' inside a record is just data */
    EXPECT_RECORD("{\"@t\":\"@x\"}", "{\"@t\":\"@x\"}", 0);
}

static void test_table_records(void **state)
{
    (void)state;
    EXPECT_TABLE_RECORD("@events {\"a\":1}", "events", 1, "{\"a\":1}", 8);
    EXPECT_TABLE_RECORD("@events\t{\"a\":1}", "events", 1, "{\"a\":1}", 8);
    EXPECT_TABLE_RECORD("@events \t  {\"a\":1} \r", "events", 1, "{\"a\":1}", 11);
    EXPECT_TABLE_RECORD("  @e {}", "e", 3, "{}", 5);
    EXPECT_TABLE_RECORD("@a.b-c_D9 {}", "a.b-c_D9", 1, "{}", 10);
    EXPECT_TABLE_RECORD("@_x {}", "_x", 1, "{}", 4);
    EXPECT_TABLE_RECORD("@9 {}", "9", 1, "{}", 3);
}

static void test_table_lines(void **state)
{
    (void)state;
    EXPECT_TABLE("@events", "events", 1);
    EXPECT_TABLE("@events   ", "events", 1);
    EXPECT_TABLE("@events \t ", "events", 1);
    EXPECT_TABLE("@events\r", "events", 1);
    EXPECT_TABLE("@events  \r", "events", 1);
    EXPECT_TABLE("   @events", "events", 4);
    EXPECT_TABLE("@x", "x", 1);
    EXPECT_TABLE("@a-b.c", "a-b.c", 1);

    /* a table line leaves json unset */
    struct parsed p;
    parse_with(&p, S("@t"), &LIM);
    assert_int_equal(p.r.kind, LINE_TABLE);
    assert_null(p.r.json);
    assert_int_equal(p.r.json_len, 0);
    done(&p);
}

static void test_table_name_lengths(void **state)
{
    (void)state;
    char name[200], line[300];
    /* 128 characters: the longest valid name */
    memset(name, 'n', 128);
    name[0] = 'N';
    name[127] = 'z';
    name[128] = 0;
    int n = snprintf(line, sizeof line, "@%s", name);
    expect_table_at(line, (size_t)n, name, 1, __FILE__, __LINE__);
    n = snprintf(line, sizeof line, "@%s {}", name);
    expect_record_at(line, (size_t)n, name, 1, "{}", 130, &LIM, __FILE__, __LINE__);

    /* 129: refused */
    memset(name, 'n', 129);
    name[129] = 0;
    n = snprintf(line, sizeof line, "@%s", name);
    expect_error_at(line, (size_t)n, &LIM, "table", 2, __FILE__, __LINE__);
    n = snprintf(line, sizeof line, "  @%s {}", name);
    expect_error_at(line, (size_t)n, &LIM, "table", 4, __FILE__, __LINE__);
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

static void test_invalid_table_names(void **state)
{
    (void)state;
    EXPECT_ERROR("@", "table", 2);
    EXPECT_ERROR("@ {}", "table", 2);
    EXPECT_ERROR("@-x", "table", 2);
    EXPECT_ERROR("@-x {}", "table", 2);
    EXPECT_ERROR("@.x", "table", 2);
    EXPECT_ERROR("@a/b", "table", 2);
    EXPECT_ERROR("@a/b {\"a\":1}", "table", 2);
    EXPECT_ERROR("@a:b", "table", 2);
    EXPECT_ERROR("@a{}", "table", 2);
    EXPECT_ERROR("@caf\xc3\xa9", "table", 2);
    EXPECT_ERROR("  @-x", "table", 4);
    EXPECT_ERROR("\t@a/b {}", "table", 3);
}

static void test_json_errors(void **state)
{
    (void)state;
    /* { " a " : }   the value is missing at index 5 */
    EXPECT_ERROR("{\"a\":}", "json", 6);
    EXPECT_ERROR("  {\"a\":}", "json", 8);
    EXPECT_ERROR("@t {\"a\":}", "json", 9);
    EXPECT_ERROR("@tbl \t {\"a\":}", "json", 13);
    /* input that ends too early: position is one past the last byte */
    EXPECT_ERROR("{\"a\":1", "json", 7);
    EXPECT_ERROR("@t {\"a\":1", "json", 10);
    /* junk after the object */
    EXPECT_ERROR("{} x", "json", 4);
    EXPECT_ERROR("{}}", "json", 3);
    EXPECT_ERROR("@t {}{}", "json", 6);
    /* bad literal */
    EXPECT_ERROR("{\"a\":tru}", "json", 9);
}

static void test_utf8_errors(void **state)
{
    (void)state;
    /* { " a " : " C3 28 " }  the 28 breaks the sequence at index 7 */
    EXPECT_ERROR("{\"a\":\"\xc3\x28\"}", "utf8", 8);
    EXPECT_ERROR("@tbl {\"a\":\"\xc3\x28\"}", "utf8", 13);
    EXPECT_ERROR("   {\"a\":\"\xc3\x28\"}", "utf8", 11);
    /* a lone continuation byte at index 6 */
    EXPECT_ERROR("{\"a\":\"\x80\"}", "utf8", 7);
    /* an unpaired surrogate escape, reported at its backslash (index 6) */
    EXPECT_ERROR("{\"a\":\"\\ud800\"}", "utf8", 7);
}

static void test_not_object(void **state)
{
    (void)state;
    EXPECT_ERROR("[1,2]", "not-object", 1);
    EXPECT_ERROR("\"text\"", "not-object", 1);
    EXPECT_ERROR("42", "not-object", 1);
    EXPECT_ERROR("null", "not-object", 1);
    EXPECT_ERROR("  [1]", "not-object", 3);
    EXPECT_ERROR("@t [1]", "not-object", 4);
    EXPECT_ERROR("@t  \t\"x\"", "not-object", 6);
    /* not JSON at all is "json", at the byte where it breaks */
    EXPECT_ERROR("x", "json", 1);
    EXPECT_ERROR("not json", "json", 2);
    EXPECT_ERROR("[1,", "json", 4);
    EXPECT_ERROR("@t [1,]", "json", 7);
}

static void test_nul(void **state)
{
    (void)state;
    /* { " a " : " NUL " }   NUL at index 6 */
    EXPECT_ERROR("{\"a\":\"\0\"}", "nul", 7);
    EXPECT_ERROR("@t {\"a\":\"\0\"}", "nul", 10);
    /* NUL right after the object: index 2 */
    EXPECT_ERROR("{}\0", "nul", 3);
    /* NUL in the leading blanks is not a blank */
    EXPECT_ERROR("\0{}", "nul", 1);
}

static void test_depth(void **state)
{
    (void)state;
    /* max_depth 3: the fourth '{' (index 15) is one too deep */
    EXPECT_ERROR("{\"a\":{\"b\":{\"c\":{}}}}", "depth", 16);
    /* arrays count as levels too: third '[' at index 7 is depth 4 */
    EXPECT_ERROR("{\"a\":[[[]]]}", "depth", 8);
    EXPECT_ERROR("@t {\"a\":[[[]]]}", "depth", 11);
    /* exactly at the limit is fine */
    EXPECT_RECORD("{\"a\":{\"b\":{\"c\":1}}}", "{\"a\":{\"b\":{\"c\":1}}}", 0);
    EXPECT_RECORD("{\"a\":[[1]]}", "{\"a\":[[1]]}", 0);

    /* max_depth 1: only a flat object */
    struct line_limits one = { .max_record_bytes = 1000, .max_depth = 1 };
    expect_error_at(S("{\"a\":{}}"), &one, "depth", 6, __FILE__, __LINE__);
    expect_error_at(S("{\"a\":[]}"), &one, "depth", 6, __FILE__, __LINE__);
    expect_record_at(S("{\"a\":1}"), NULL, 0, "{\"a\":1}", 0, &one, __FILE__, __LINE__);
}

/* A record of exactly n bytes: {"k":"xxx..."} */
static char *record_of(size_t n)
{
    assert_true(n >= 8);
    char *s = malloc(n + 1);
    assert_non_null(s);
    memcpy(s, "{\"k\":\"", 6);
    memset(s + 6, 'x', n - 8);
    memcpy(s + n - 2, "\"}", 2);
    s[n] = 0;
    return s;
}

static void test_size_limit(void **state)
{
    (void)state;
    /* exactly max_record_bytes: accepted */
    char *rec = record_of(64);
    expect_record_at(rec, 64, NULL, 0, rec, 0, &LIM, __FILE__, __LINE__);

    /* with blanks around and a table prefix, only the object counts */
    char line[300];
    int n = snprintf(line, sizeof line, "@events \t %s \t\r", rec);
    expect_record_at(line, (size_t)n, "events", 1, rec, 10, &LIM, __FILE__, __LINE__);
    free(rec);

    /* one over: refused with "size", naming both numbers */
    rec = record_of(65);
    struct parsed p;
    parse_with(&p, rec, 65, &LIM);
    assert_int_equal(p.r.kind, LINE_ERROR);
    assert_string_equal(p.r.reason, "size");
    assert_non_null(strstr(p.r.msg, "65"));
    assert_non_null(strstr(p.r.msg, "64"));
    done(&p);
    n = snprintf(line, sizeof line, "@events %s", rec);
    expect_error_at(line, (size_t)n, &LIM, "size", 0, __FILE__, __LINE__);
    free(rec);

    /* the size check comes before validation: an oversized invalid line is
     * "size", not "json" */
    memset(line, '[', 100);
    expect_error_at(line, 100, &LIM, "size", 0, __FILE__, __LINE__);

    /* a big limit */
    struct line_limits big = { .max_record_bytes = 100000, .max_depth = 16 };
    rec = record_of(100000);
    expect_record_at(rec, 100000, NULL, 0, rec, 0, &big, __FILE__, __LINE__);
    free(rec);
    rec = record_of(100001);
    expect_error_at(rec, 100001, &big, "size", 0, __FILE__, __LINE__);
    free(rec);
}

static void test_errors_clear_fields(void **state)
{
    (void)state;
    /* an error line reports no json; a record line no reason */
    struct parsed p;
    parse_with(&p, S("{\"a\":}"), &LIM);
    assert_int_equal(p.r.kind, LINE_ERROR);
    assert_null(p.r.json);
    done(&p);

    parse_with(&p, S("{}"), &LIM);
    assert_int_equal(p.r.kind, LINE_RECORD);
    assert_null(p.r.reason);
    assert_null(p.r.table);
    assert_int_equal(p.r.table_len, 0);
    done(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_lines),
        cmocka_unit_test(test_records),
        cmocka_unit_test(test_table_records),
        cmocka_unit_test(test_table_lines),
        cmocka_unit_test(test_table_name_lengths),
        cmocka_unit_test(test_invalid_table_names),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_utf8_errors),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_nul),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_errors_clear_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
