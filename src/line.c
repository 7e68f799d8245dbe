/*
 * line.c -- classify and validate one protocol line. See line.h.
 *
 * Byte positions in messages are 1-based and count from the start of the
 * line as the producer sent it, so "at byte 42" points an editor at the
 * 42nd byte of that line.
 */
#include "line.h"
#include "conf.h"
#include "json_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static void fail(struct line_result *r, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#include <stdarg.h>
static void fail(struct line_result *r, const char *reason, const char *fmt, ...)
{
    r->kind = LINE_ERROR;
    r->reason = reason;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
}

/* The validator gives up on the first byte of a text that does not start
 * with '{'. To tell "valid JSON, but not an object" (not-object) from "not
 * JSON at all" (json, at the byte where it breaks), validate the text as the
 * value of a member: {"v":TEXT}. Only refused lines pay for this. */
static void reclassify(const char *json, size_t len, unsigned max_depth,
                       struct jcheck_result *jr)
{
    static const char pre[] = "{\"v\":";
    const size_t plen = sizeof pre - 1;
    char *w = malloc(len + plen + 1);
    if (!w)
        return;   /* keep the validator's verdict */
    memcpy(w, pre, plen);
    memcpy(w + plen, json, len);
    w[plen + len] = '}';
    struct jcheck_result wr;
    enum jcheck_code code = jcheck_object(w, len + plen + 1, max_depth ? max_depth + 1 : 0, &wr);
    free(w);
    if (code == JC_OK)
        return;   /* a valid value: not-object it is, with the validator's message */
    jr->code = code == JC_TRAILING ? JC_SYNTAX : code;
    jr->msg = wr.msg;
    jr->offset = wr.offset >= plen ? wr.offset - plen : 0;
    if (jr->offset > len)
        jr->offset = len;
}

void line_parse(const char *line, size_t len, const struct line_limits *lim,
                struct line_result *r)
{
    memset(r, 0, sizeof *r);
    size_t start = 0, end = len;
    while (end > 0 && is_ws(line[end - 1]))
        end--;
    while (start < end && is_ws(line[start]))
        start++;
    if (start == end) {
        r->kind = LINE_EMPTY;
        return;
    }
    if (line[start] == '@') {
        size_t n = start + 1;
        while (n < end && !is_ws(line[n]))
            n++;
        const char *name = line + start + 1;
        size_t nlen = n - start - 1;
        if (!conf_valid_name(name, nlen)) {
            fail(r, "table", "invalid table name after '@' at byte %zu: use 1-%d letters, "
                 "digits, '_', '-' or '.'", start + 2, CONF_NAME_MAX);
            return;
        }
        r->table = name;
        r->table_len = nlen;
        if (n == end) {
            r->kind = LINE_TABLE;
            return;
        }
        start = n;
        while (start < end && is_ws(line[start]))
            start++;
    }
    size_t jlen = end - start;
    if (jlen > lim->max_record_bytes) {
        fail(r, "size", "record is %zu bytes; the limit is %zu (max_record_bytes)",
             jlen, lim->max_record_bytes);
        return;
    }
    struct jcheck_result jr;
    if (jcheck_object(line + start, jlen, lim->max_depth, &jr) == JC_NOT_OBJECT)
        reclassify(line + start, jlen, lim->max_depth, &jr);
    if (jr.code != JC_OK) {
        size_t at = start + jr.offset + 1;
        switch (jr.code) {
        case JC_UTF8: {
            const char *m = jr.msg;
            if (strncmp(m, "invalid utf-8: ", 15) == 0)
                m += 15;
            fail(r, "utf8", "invalid UTF-8 at byte %zu: %s", at, m);
            break;
        }
        case JC_NUL:
            fail(r, "nul", "NUL byte at byte %zu: records are JSON text", at);
            break;
        case JC_NOT_OBJECT:
            fail(r, "not-object", "%s (byte %zu): each record must be one JSON object",
                 jr.msg, at);
            break;
        case JC_DEPTH:
            fail(r, "depth", "nesting deeper than %u levels at byte %zu (max_depth)",
                 lim->max_depth, at);
            break;
        default:
            fail(r, "json", "invalid JSON at byte %zu: %s", at, jr.msg);
            break;
        }
        return;
    }
    r->kind = LINE_RECORD;
    r->json = line + start;
    r->json_len = jlen;
}
