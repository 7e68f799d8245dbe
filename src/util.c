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
#include <zlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

#if defined(__x86_64__)
/*
 * Folding (Gopal et al., "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction", Intel, 2009), in the bit-reflected form the gzip
 * CRC uses. A 128-bit block stands for the polynomial of its bits; moving it
 * 128 bits further down the message multiplies it by x^128, which modulo
 * P(x) is done per 64-bit half: the earlier half times x^160 mod P, the later
 * times x^96 mod P (constants below: those values bit-reflected and shifted
 * left once, as the reflected product needs). Four blocks in parallel move
 * 512 bits at a time (x^544, x^480). The last block is reduced to 64 bits
 * (x^96), then 32 (x^64), then Barrett-reduced with mu = x^64 / P.
 * The constants were recomputed from P = 0x104C11DB7 (see test_util.c,
 * which checks the result against zlib for every length up to 4 KiB).
 */
#define K1 0x154442bd4ull   /* x^544 mod P */
#define K2 0x1c6e41596ull   /* x^480 mod P */
#define K3 0x1751997d0ull   /* x^160 mod P */
#define K4 0x0ccaa009eull   /* x^96 mod P */
#define K5 0x163cd6124ull   /* x^64 mod P */
#define PR 0x1db710641ull   /* P, reflected (33 bits) */
#define MU 0x1f7011641ull   /* x^64 / P, reflected (33 bits) */

__attribute__((target("pclmul,sse2")))
static inline __m128i fold(__m128i x, __m128i k)
{
    return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

/* The raw (not inverted) CRC state after n bytes at p; n a multiple of 16,
 * at least 64. */
__attribute__((target("pclmul,sse2")))
static uint32_t crc32_fold(uint32_t state, const unsigned char *p, size_t n)
{
    const __m128i k12 = _mm_set_epi64x((long long)K2, (long long)K1);
    const __m128i k34 = _mm_set_epi64x((long long)K4, (long long)K3);
    __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p),
                               _mm_cvtsi32_si128((int)state));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    p += 64;
    n -= 64;
    while (n >= 64) {
        x0 = _mm_xor_si128(fold(x0, k12), _mm_loadu_si128((const __m128i *)p));
        x1 = _mm_xor_si128(fold(x1, k12), _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = _mm_xor_si128(fold(x2, k12), _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = _mm_xor_si128(fold(x3, k12), _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        n -= 64;
    }
    __m128i x = _mm_xor_si128(fold(x0, k34), x1);
    x = _mm_xor_si128(fold(x, k34), x2);
    x = _mm_xor_si128(fold(x, k34), x3);
    while (n >= 16) {
        x = _mm_xor_si128(fold(x, k34), _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
    const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
    /* 128 -> 64 bits: the earlier half times x^96, plus the later half */
    __m128i t = _mm_xor_si128(_mm_clmulepi64_si128(x, k34, 0x10), _mm_srli_si128(x, 8));
    /* 64 -> 32 bits */
    const __m128i k5 = _mm_set_epi64x(0, (long long)K5);
    __m128i u = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(t, mask32), k5, 0x00),
                              _mm_srli_si128(t, 4));
    /* Barrett: q = low32(u) * mu; r = u ^ low32(q) * P; the CRC is bits 32..63 */
    const __m128i pmu = _mm_set_epi64x((long long)MU, (long long)PR);
    __m128i q = _mm_clmulepi64_si128(_mm_and_si128(u, mask32), pmu, 0x10);
    __m128i r = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(q, mask32), pmu, 0x00), u);
    return (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(r, 4));
}

static int have_clmul(void)
{
    static int known;   /* 0: not asked yet, 1: no, 2: yes */
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (!k) {
        __builtin_cpu_init();
        k = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse2") ? 2 : 1;
        __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    }
    return k == 2;
}
#endif

uint32_t util_crc32(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
#if defined(__x86_64__)
    if (len >= 64 && have_clmul()) {
        size_t n = len & ~(size_t)15;
        crc = ~crc32_fold(~crc, p, n);
        p += n;
        len -= n;
    }
#endif
    while (len > 0) {   /* zlib takes uInt lengths */
        uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = (uint32_t)crc32(crc, p, n);
        p += n;
        len -= n;
    }
    return crc;
}
