/*
 * util.c -- parsing and clock helpers. See util.h.
 */
#include "util.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <libdeflate.h>

int util_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Splits "123abc" into a number and a unit, skipping spaces between them. */
static int split_number(const char *s, uint64_t *num, const char **unit)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    while (*end == ' ')
        end++;
    *num = v;
    *unit = end;
    return 0;
}

int util_parse_size(const char *s, uint64_t *out)
{
    uint64_t v;
    const char *u;
    if (split_number(s, &v, &u))
        return -1;
    int shift = 0;
    switch (toupper((unsigned char)*u)) {
    case 0:   break;
    case 'B': if (u[1]) return -1; break;
    case 'K': shift = 10; u++; break;
    case 'M': shift = 20; u++; break;
    case 'G': shift = 30; u++; break;
    case 'T': shift = 40; u++; break;
    default:  return -1;
    }
    if (shift) {
        if (*u == 'i' || *u == 'I')
            u++;
        if (*u == 'b' || *u == 'B')
            u++;
        if (*u)
            return -1;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = v << shift;
    return 0;
}

int util_parse_duration_ms(const char *s, uint64_t *out)
{
    uint64_t v;
    const char *u;
    if (split_number(s, &v, &u))
        return -1;
    uint64_t mul;
    if (*u == 0 || strcmp(u, "s") == 0)
        mul = 1000;
    else if (strcmp(u, "ms") == 0)
        mul = 1;
    else if (strcmp(u, "m") == 0 || strcmp(u, "min") == 0)
        mul = 60000;
    else if (strcmp(u, "h") == 0)
        mul = 3600000;
    else if (strcmp(u, "d") == 0)
        mul = 86400000;
    else
        return -1;
    if (v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

char *util_fmt_bytes(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    double v = (double)bytes;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.1f %s", v, units[i]);
    return buf;
}

uint64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t util_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

int util_mkdir_p(const char *path, mode_t mode)
{
    char tmp[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; ; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(tmp, mode) != 0 && errno != EEXIST)
                return -1;
            *p = c;
            if (c == 0)
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int util_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* ---- struct buf ---- */

int buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra)
        nc *= 2;
    char *d = realloc(b->data, nc);
    if (!d)
        return -1;
    b->data = d;
    b->cap = nc;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n + 1))
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;   /* always NUL-terminated for convenience */
    return 0;
}

int buf_puts(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n + 1))
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int buf_json_escape(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (buf_reserve(b, n + 1))
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        const char *out = NULL;
        size_t ol = 0;
        switch (c) {
        case '"':  out = "\\\""; ol = 2; break;
        case '\\': out = "\\\\"; ol = 2; break;
        case '\n': out = "\\n"; ol = 2; break;
        case '\r': out = "\\r"; ol = 2; break;
        case '\t': out = "\\t"; ol = 2; break;
        default:
            if (c < 0x20) {
                esc[0] = '\\'; esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
                esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
                out = esc;
                ol = 6;
            }
        }
        if (out) {
            if (buf_append(b, out, ol))
                return -1;
        } else {
            if (buf_reserve(b, 2))
                return -1;
            b->data[b->len++] = (char)c;
            b->data[b->len] = 0;
        }
    }
    return 0;
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = 0;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void counts_add(struct counts *c, const char *name, uint64_t v)
{
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->name[i], name) == 0) {
            c->value[i] += v;
            return;
        }
    }
    if (c->n == COUNTS_MAX) {
        name = "other";
        for (size_t i = 0; i < c->n; i++) {
            if (strcmp(c->name[i], name) == 0) {
                c->value[i] += v;
                return;
            }
        }
        /* the last slot becomes "other", keeping what it counted */
        snprintf(c->name[COUNTS_MAX - 1], sizeof c->name[0], "other");
        c->value[COUNTS_MAX - 1] += v;
        return;
    }
    snprintf(c->name[c->n], sizeof c->name[0], "%s", name);
    c->value[c->n++] = v;
}

const double histo_bounds[HISTO_BUCKETS - 1] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                 1, 2.5, 5, 10 };

void histo_add(struct histo *h, double seconds)
{
    size_t i = 0;
    while (i < HISTO_BUCKETS - 1 && seconds > histo_bounds[i])
        i++;
    h->bucket[i]++;
    h->count++;
    h->sum += seconds;
}

uint64_t util_rand_below(uint64_t n)
{
    uint64_t r;
    if (n == 0)
        return 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = util_mono_us() * 6364136223846793005ull;
    return r % n;
}

uint64_t util_backoff_ms(uint64_t base, uint64_t cap, unsigned streak, enum util_jitter j)
{
    if (cap < base)
        cap = base;
    unsigned k = streak < 30 ? streak : 30;
    uint64_t d = base << k;
    if (d > cap || d < base)
        d = cap;
    switch (j) {
    case UTIL_JITTER_MIN:   return d + util_rand_below(d / 10 + 1);
    case UTIL_JITTER_EQUAL: return d / 2 + util_rand_below(d / 2 + 1);
    default:                return util_rand_below(d + 1);
    }
}

void util_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- CRC-32 ---- */

/* libdeflate's CRC-32 (PCLMULQDQ where the CPU has it, slicing tables for
 * short inputs): about twice zlib's speed at a spool record's size, and the
 * same values (test_util.c compares them with zlib for every length up to
 * 4 KiB). */
uint32_t util_crc32(uint32_t crc, const void *buf, size_t len)
{
    return len ? libdeflate_crc32(crc, buf, len) : crc;
}
