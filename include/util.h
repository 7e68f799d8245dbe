/*
 * util.h -- small helpers shared by every module: parsing sizes and
 * durations as written in the config and on the command line, clocks, and
 * directory creation. Nothing here allocates unless it says so.
 */
#ifndef RELAY_UTIL_H
#define RELAY_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* "1048576", "64K", "64KiB", "16M", "1G", "2T" (binary multiples, case-insensitive,
 * optional "B"/"iB"). Returns 0, or -1 when malformed or overflowing. */
int util_parse_size(const char *s, uint64_t *out);

/* "250ms", "5s", "10m", "2h", "1d"; a bare number means seconds. Returns 0 or -1. */
int util_parse_duration_ms(const char *s, uint64_t *out);

/* A decimal unsigned integer that must fit in max. Returns 0 or -1. */
int util_parse_u64(const char *s, uint64_t max, uint64_t *out);

/* Formats bytes as "12.3 MiB" into buf. Returns buf. */
char *util_fmt_bytes(uint64_t bytes, char *buf, size_t len);

/* Wall-clock milliseconds since the epoch, and monotonic microseconds. */
uint64_t util_now_ms(void);
uint64_t util_mono_us(void);

/* mkdir -p with the given mode for every directory it creates; an existing
 * directory is left as it is. Returns 0, or -1 with errno set. */
int util_mkdir_p(const char *path, mode_t mode);

/* Writes all of buf to fd, retrying on EINTR and short writes. Returns 0 or -1. */
int util_write_all(int fd, const void *buf, size_t len);



/* printf into err[0..errlen) when err is not NULL (error-message helper). */
void util_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A random number in [0, n) (getrandom; 0 for n == 0). */
uint64_t util_rand_below(uint64_t n);

/* Backoff delay in ms after `streak` failures in a row: base << streak capped
 * at cap, then jittered: UTIL_JITTER_FULL picks in [0, d] (AWS "full
 * jitter"), UTIL_JITTER_EQUAL in [d/2, d] (never shorter than half),
 * UTIL_JITTER_MIN in [d, d + d/10] (at least d: quota waits). */
enum util_jitter { UTIL_JITTER_FULL, UTIL_JITTER_EQUAL, UTIL_JITTER_MIN };
uint64_t util_backoff_ms(uint64_t base, uint64_t cap, unsigned streak, enum util_jitter j);

/* ---- a growable byte buffer ---- */
#ifndef RELAY_BUF_DEFINED
#define RELAY_BUF_DEFINED
struct buf {
    char *data;
    size_t len, cap;
};
/* All return 0, or -1 when out of memory (the buffer is then unchanged). */
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_puts(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as the body of a JSON string (escaped, without the quotes). */
int buf_json_escape(struct buf *b, const char *s, size_t n);
void buf_reset(struct buf *b);   /* len = 0, keeps memory */
void buf_free(struct buf *b);
#endif /* RELAY_BUF_DEFINED */

/* ---- a small map of counters by short name (reasons, states) ---- */
#define COUNTS_MAX 16
struct counts {
    size_t n;
    char name[COUNTS_MAX][32];
    uint64_t value[COUNTS_MAX];
};
/* Adds v under name; past COUNTS_MAX distinct names, counts go to "other". */
void counts_add(struct counts *c, const char *name, uint64_t v);

/* ---- a latency histogram with fixed bounds (seconds), Prometheus-style ---- */
#define HISTO_BUCKETS 12   /* 5ms 10ms 25ms 50ms 100ms 250ms 500ms 1s 2.5s 5s 10s +Inf */
extern const double histo_bounds[HISTO_BUCKETS - 1];
struct histo {
    uint64_t bucket[HISTO_BUCKETS];   /* not cumulative */
    uint64_t count;
    double sum;
};
void histo_add(struct histo *h, double seconds);

/* CRC-32 as zlib's crc32(crc, buf, len) computes it (the gzip polynomial,
 * same value for every input, chaining alike; start with crc 0), computed by
 * libdeflate (faster than zlib's, above all on short inputs). The spool's
 * and the dead-letter store's record checksums use it. */
uint32_t util_crc32(uint32_t crc, const void *buf, size_t len);

#endif /* RELAY_UTIL_H */
