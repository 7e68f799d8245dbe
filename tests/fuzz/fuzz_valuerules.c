/*
 * fuzz_valuerules.c -- the Storage Write encoder must accept exactly the
 * values insertAll accepts (issue 13: one row, one outcome).
 *
 * The first input byte picks a column type (BOOL, STRING, INT64, NUMERIC,
 * DATE, TIME, DATETIME, TIMESTAMP); the rest is a JSON value. The row
 * {"v": VALUE} goes through rowenc_encode() against a one-column NULLABLE
 * schema, and the same value through accepts() below: a separate statement
 * of insertAll's rules as docs/delivery.md tables them (and as the emulator
 * implements them), written another way: jansson decodes the value, POSIX
 * regular expressions match the civil forms, numbers are judged exactly on
 * their decimal text by digit-string arithmetic. Any disagreement aborts
 * with both answers.
 *
 * Inputs that are not one JSON value (jansson refuses them) are skipped:
 * rowenc refuses such rows for their syntax, which fuzz_rowenc covers.
 */
#include <ctype.h>
#include <regex.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "rowenc.h"

enum { T_BOOL, T_STRING, T_INT64, T_NUMERIC, T_DATE, T_TIME, T_DATETIME, T_TIMESTAMP, T_N };
static const char *const tnames[T_N] = { "BOOL", "STRING", "INT64", "NUMERIC",
                                         "DATE", "TIME", "DATETIME", "TIMESTAMP" };
static struct rowenc_schema *schemas[T_N];
static regex_t re_json_num, re_dec, re_int, re_date, re_time, re_dt, re_ts;

#define DATE_P "([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})"
#define CLOCK_P "([0-9]{1,2}):([0-9]{1,2})(:([0-9]{1,2})(\\.([0-9]{1,6}))?)?"

static void init(void)
{
    for (int t = 0; t < T_N; t++) {
        char js[128];
        snprintf(js, sizeof js, "[{\"name\":\"v\",\"type\":\"%s\"}]", tnames[t]);
        struct rowenc_error e;
        if (rowenc_schema_parse(js, strlen(js), &schemas[t], &e) != ROWENC_OK)
            abort();
    }
    int f = REG_EXTENDED;
    if (regcomp(&re_json_num, "^-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?$", f) ||
        regcomp(&re_dec, "^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?$", f) ||
        regcomp(&re_int, "^[+-]?[0-9]+$", f) ||
        regcomp(&re_date, "^" DATE_P "$", f) ||
        regcomp(&re_time, "^([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})(\\.([0-9]{1,6}))?$", f) ||
        regcomp(&re_dt, "^" DATE_P "([Tt ]" CLOCK_P ")?$", f) ||
        regcomp(&re_ts, "^" DATE_P "([Tt ]" CLOCK_P ")?[ \t]*((Z|z|UTC)|([+-])(([0-9]{2})(:?([0-9]{2}))?|([0-9])(:([0-9]{2}))?))?$", f))
        abort();
}

/* ---- numbers as exact decimals: sign, significant digits, exponent ---- */

struct num {
    bool neg;
    char d[4200];       /* significant digits, no leading or trailing zeros ("" = 0) */
    long long exp;      /* value = d * 10^exp */
};

static bool to_num(const char *s, struct num *n)
{
    size_t k = 0, i = 0;
    long long fdigits = 0, e = 0;
    bool in_frac = false;
    n->neg = s[i] == '-';
    if (s[i] == '-' || s[i] == '+')
        i++;
    for (; s[i] && s[i] != 'e' && s[i] != 'E'; i++) {
        if (s[i] == '.') {
            in_frac = true;
            continue;
        }
        fdigits += in_frac;
        if (k == 0 && s[i] == '0')
            continue;           /* leading zeros do not change the value */
        if (k + 1 >= sizeof n->d)
            return false;
        n->d[k++] = s[i];
    }
    if (s[i]) {
        bool eneg = s[++i] == '-';
        if (s[i] == '-' || s[i] == '+')
            i++;
        for (; s[i]; i++)
            if (e < 1000000000000LL)
                e = e * 10 + (s[i] - '0');
        if (eneg)
            e = -e;
    }
    n->exp = e - fdigits;
    while (k > 0 && n->d[k - 1] == '0') {
        k--;
        n->exp++;
    }
    n->d[k] = 0;
    return true;
}

/* Digits of the integer part: d * 10^exp has strlen(d) + exp of them. */
static long long int_digits(const struct num *n)
{
    return n->d[0] ? (long long)strlen(n->d) + n->exp : 0;
}

static bool int64_ok(const struct num *n)
{
    if (!n->d[0])
        return true;
    if (n->exp < 0)
        return false;           /* a fraction */
    long long nd = int_digits(n);
    if (nd != 19)
        return nd < 19;
    char full[20];
    snprintf(full, sizeof full, "%s", n->d);
    for (size_t i = strlen(n->d); i < 19; i++)
        full[i] = '0';
    full[19] = 0;
    return strcmp(full, n->neg ? "9223372036854775808" : "9223372036854775807") <= 0;
}

/* NUMERIC: rounded half away from zero to 9 fractional digits, at most 38
 * digits in all after rounding (29 integer digits). */
static bool numeric_ok(const struct num *n)
{
    if (!n->d[0])
        return true;
    long long len = (long long)strlen(n->d), keep = len + n->exp + 9;   /* digits of the scaled integer */
    if (keep > 60)
        return false;
    if (keep <= 0)
        return true;            /* rounds to 0 (keep == 0 and a first digit >= 5 rounds to 1e-9) */
    if (keep >= len)
        return keep <= 38;
    bool up = n->d[keep] >= '5', nines = true;
    for (long long i = 0; i < keep; i++)
        nines = nines && n->d[i] == '9';
    return keep + (up && nines) <= 38;
}

/* ---- civil values ---- */

static int num_at(const char *s, const regmatch_t *m)
{
    int v = 0;
    for (regoff_t i = m->rm_so; i < m->rm_eo; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

static bool has(const regmatch_t *m)
{
    return m->rm_so >= 0;
}

static bool date_ok(int y, int mo, int d)
{
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (y < 1 || mo < 1 || mo > 12 || d < 1)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= mdays[mo - 1] + (mo == 2 && leap);
}

/* Days since 0001-01-01 (proleptic Gregorian). */
static long long days_from_civil(int y, int mo, int d)
{
    static const int before[12] = { 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334 };
    long long yy = y - 1;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return yy * 365 + yy / 4 - yy / 100 + yy / 400 + before[mo - 1] + (mo > 2 && leap) + d - 1;
}

/* The string forms of DATE, TIME, DATETIME and TIMESTAMP. */
static bool civil_ok(int t, const char *s)
{
    regmatch_t m[24];
    if (t == T_DATE)
        return !regexec(&re_date, s, 24, m, 0) &&
               date_ok(num_at(s, &m[1]), num_at(s, &m[2]), num_at(s, &m[3]));
    if (t == T_TIME)
        return !regexec(&re_time, s, 24, m, 0) && num_at(s, &m[1]) <= 23 &&
               num_at(s, &m[2]) <= 59 && num_at(s, &m[3]) <= 59;
    if (regexec(t == T_DATETIME ? &re_dt : &re_ts, s, 24, m, 0))
        return false;
    int y = num_at(s, &m[1]), mo = num_at(s, &m[2]), d = num_at(s, &m[3]);
    if (!date_ok(y, mo, d))
        return false;
    int h = 0, mi = 0, sec = 0;
    if (has(&m[4])) {
        h = num_at(s, &m[5]);
        mi = num_at(s, &m[6]);
        sec = has(&m[8]) ? num_at(s, &m[8]) : 0;
        if (h > 23 || mi > 59 || sec > 59)
            return false;
    }
    if (t == T_DATETIME)
        return true;
    /* groups: 11 zone, 12 Z|z|UTC, 13 sign; hours 15 (two digits, minutes 17)
     * or 18 (one digit, minutes 20) */
    long long off = 0;
    if (has(&m[13])) {
        int oh = num_at(s, has(&m[15]) ? &m[15] : &m[18]);
        int om = has(&m[17]) ? num_at(s, &m[17]) : has(&m[20]) ? num_at(s, &m[20]) : 0;
        if (oh > 14 || om > 59)
            return false;
        off = (oh * 60LL + om) * 60 * (s[m[13].rm_so] == '+' ? 1 : -1);
    }
    long long secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - off;
    return secs >= 0 && secs <= days_from_civil(9999, 12, 31) * 86400 + 86399;
}

/* Epoch seconds as a JSON number: at most 6 fractional digits, in range. */
static bool epoch_ok(const struct num *n)
{
    if (!n->d[0])
        return true;
    if (n->exp < -6 || int_digits(n) > 13)
        return false;
    /* |value| in microseconds fits easily: at most 19 digits */
    __int128 us = 0;
    for (const char *p = n->d; *p; p++)
        us = us * 10 + (*p - '0');
    for (long long i = 0; i < n->exp + 6; i++)
        us *= 10;
    if (n->neg)
        us = -us;
    return us >= -62135596800LL * 1000000 && us <= 253402300799999999LL;
}

/* ---- the rules ---- */

static bool accepts(int t, json_t *v, const char *text)
{
    if (json_is_null(v))
        return true;            /* NULLABLE */
    if (json_is_object(v) || json_is_array(v))
        return false;
    bool is_num = json_is_number(v), is_str = json_is_string(v), is_bool = json_is_boolean(v);
    const char *s = is_str ? json_string_value(v) : NULL;
    struct num n;
    switch (t) {
    case T_BOOL:
        return is_bool || (is_str && (!strcasecmp(s, "true") || !strcasecmp(s, "false")) &&
                           strlen(s) == json_string_length(v));
    case T_STRING:
        return true;            /* strings, numbers (as text) and booleans */
    case T_INT64:
        if (is_num)
            return to_num(text, &n) && int64_ok(&n);
        return is_str && strlen(s) == json_string_length(v) && !regexec(&re_int, s, 0, NULL, 0) &&
               to_num(s, &n) && int64_ok(&n);
    case T_NUMERIC:
        if (is_num)
            return to_num(text, &n) && numeric_ok(&n);
        return is_str && strlen(s) == json_string_length(v) && !regexec(&re_dec, s, 0, NULL, 0) &&
               to_num(s, &n) && numeric_ok(&n);
    case T_TIMESTAMP:
        if (is_num)
            return to_num(text, &n) && epoch_ok(&n);
        /* fall through */
    default:
        return is_str && strlen(s) == json_string_length(v) && civil_ok(t, s);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        init();
        ready = true;
    }
    if (size < 2 || size > 4096)
        return 0;
    int t = data[0] % T_N;
    const char *val = (const char *)data + 1;
    size_t vn = size - 1;
    json_error_t je;
    json_t *v = json_loadb(val, vn, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &je);
    if (!v)
        return 0;
    /* the value's text, trimmed (a number is judged on it) */
    char text[4200];
    size_t a = 0, b = vn;
    while (a < b && strchr(" \t\r\n", val[a]))
        a++;
    while (b > a && strchr(" \t\r\n", val[b - 1]))
        b--;
    if (b - a >= sizeof text) {
        json_decref(v);
        return 0;
    }
    memcpy(text, val + a, b - a);
    text[b - a] = 0;
    if (json_is_number(v) && regexec(&re_json_num, text, 0, NULL, 0)) {
        json_decref(v);
        return 0;               /* not a plain JSON number (cannot happen; be safe) */
    }
    bool want = accepts(t, v, text);
    json_decref(v);

    char row[4300];
    int rn = snprintf(row, sizeof row, "{\"v\":%.*s}", (int)vn, val);
    struct buf out = { 0 };
    struct rowenc_error e;
    int rc = rowenc_encode(schemas[t], row, (size_t)rn, 0, &out, &e);
    buf_free(&out);
    if (rc != ROWENC_OK && rc != ROWENC_VALUE && rc != ROWENC_TYPE && rc != ROWENC_JSON)
        abort();
    bool got = rc == ROWENC_OK;
    if (got != want) {
        fprintf(stderr, "%s value %s: rules say %s, rowenc says %s (%s)\n", tnames[t], text,
                want ? "accept" : "refuse", got ? "accept" : "refuse", got ? "" : e.msg);
        abort();
    }
    return 0;
}
