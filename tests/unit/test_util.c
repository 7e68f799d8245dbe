/*
 * test_util.c -- unit tests for util.h: size, duration and integer parsing,
 * byte formatting, clocks, mkdir -p and write_all.
 *
 * Every expectation is written out by hand from the contract in util.h.
 * Directories are made under a mkdtemp() directory that is removed at the
 * end of each test that uses one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#include <zlib.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    assert_int_equal(nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

static char *make_tmpdir(void)
{
    char *d = strdup("/tmp/relay-test-util-XXXXXX");
    assert_non_null(d);
    assert_non_null(mkdtemp(d));
    return d;
}

/* Size parse that must succeed with the given value. */
#define SIZE_OK(str, want) do {                                              \
        uint64_t v_ = 0xdeadbeef;                                            \
        if (util_parse_size((str), &v_) != 0)                                \
            fail_msg("util_parse_size(\"%s\") failed, want %llu", (str),     \
                     (unsigned long long)(want));                            \
        if (v_ != (uint64_t)(want))                                          \
            fail_msg("util_parse_size(\"%s\") = %llu, want %llu", (str),     \
                     (unsigned long long)v_, (unsigned long long)(want));    \
    } while (0)

/* Size parse that must fail and leave the output alone. */
#define SIZE_BAD(str) do {                                                   \
        uint64_t v_ = 777;                                                   \
        if (util_parse_size((str), &v_) != -1)                               \
            fail_msg("util_parse_size(\"%s\") accepted (%llu)", (str),       \
                     (unsigned long long)v_);                                \
        assert_int_equal(v_, 777);                                           \
    } while (0)

#define DUR_OK(str, want) do {                                               \
        uint64_t v_ = 0xdeadbeef;                                            \
        if (util_parse_duration_ms((str), &v_) != 0)                         \
            fail_msg("util_parse_duration_ms(\"%s\") failed", (str));        \
        if (v_ != (uint64_t)(want))                                          \
            fail_msg("util_parse_duration_ms(\"%s\") = %llu, want %llu",     \
                     (str), (unsigned long long)v_,                          \
                     (unsigned long long)(want));                            \
    } while (0)

#define DUR_BAD(str) do {                                                    \
        uint64_t v_ = 777;                                                   \
        if (util_parse_duration_ms((str), &v_) != -1)                        \
            fail_msg("util_parse_duration_ms(\"%s\") accepted (%llu)",       \
                     (str), (unsigned long long)v_);                         \
        assert_int_equal(v_, 777);                                           \
    } while (0)

/* ------------------------------------------------------------------------ */
/* util_parse_size                                                          */
/* ------------------------------------------------------------------------ */

static void test_size_plain_numbers(void **state)
{
    (void)state;
    SIZE_OK("0", 0);
    SIZE_OK("1", 1);
    SIZE_OK("1048576", 1048576);
    SIZE_OK("18446744073709551615", UINT64_MAX);
    SIZE_OK("1B", 1);
    SIZE_OK("512b", 512);
    SIZE_OK("007", 7);
}

static void test_size_suffixes(void **state)
{
    (void)state;
    SIZE_OK("64K", 64ULL << 10);
    SIZE_OK("64k", 64ULL << 10);
    SIZE_OK("64KB", 64ULL << 10);
    SIZE_OK("64kb", 64ULL << 10);
    SIZE_OK("64KiB", 64ULL << 10);
    SIZE_OK("64kib", 64ULL << 10);
    SIZE_OK("64KIB", 64ULL << 10);
    SIZE_OK("16M", 16ULL << 20);
    SIZE_OK("16MiB", 16ULL << 20);
    SIZE_OK("16mb", 16ULL << 20);
    SIZE_OK("1G", 1ULL << 30);
    SIZE_OK("1GiB", 1ULL << 30);
    SIZE_OK("4g", 4ULL << 30);
    SIZE_OK("2T", 2ULL << 40);
    SIZE_OK("2TiB", 2ULL << 40);
    SIZE_OK("0K", 0);
    /* the largest value each suffix can carry without overflow */
    SIZE_OK("16777215T", ((1ULL << 24) - 1) << 40);
    SIZE_OK("17179869183G", ((1ULL << 34) - 1) << 30);
    SIZE_OK("18014398509481983K", ((1ULL << 54) - 1) << 10);
}

static void test_size_invalid(void **state)
{
    (void)state;
    SIZE_BAD("");
    SIZE_BAD("K");
    SIZE_BAD("MiB");
    SIZE_BAD("-1");
    SIZE_BAD("-1K");
    SIZE_BAD("+5");
    SIZE_BAD(" 5");
    SIZE_BAD("1.5G");
    SIZE_BAD("12abc");
    SIZE_BAD("1P");
    SIZE_BAD("1E");
    SIZE_BAD("1X");
    SIZE_BAD("1KK");
    SIZE_BAD("1KiBx");
    SIZE_BAD("1BB");
    SIZE_BAD("1Bi");
    SIZE_BAD("1iB");
    SIZE_BAD("0x10");
    SIZE_BAD("lots");
}

static void test_size_overflow(void **state)
{
    (void)state;
    SIZE_BAD("18446744073709551616");              /* 2^64 */
    SIZE_BAD("99999999999999999999999");
    SIZE_BAD("16777216T");                         /* 2^24 T = 2^64 */
    SIZE_BAD("17179869184G");                      /* 2^34 G = 2^64 */
    SIZE_BAD("17592186044416M");                   /* 2^44 M = 2^64 */
    SIZE_BAD("18014398509481984K");                /* 2^54 K = 2^64 */
    SIZE_BAD("18446744073709551615K");
}

/* ------------------------------------------------------------------------ */
/* util_parse_duration_ms                                                   */
/* ------------------------------------------------------------------------ */

static void test_duration_units(void **state)
{
    (void)state;
    DUR_OK("250ms", 250);
    DUR_OK("0ms", 0);
    DUR_OK("5s", 5000);
    DUR_OK("5", 5000);                 /* bare number: seconds */
    DUR_OK("0", 0);
    DUR_OK("10m", 600000);
    DUR_OK("2h", 7200000);
    DUR_OK("1d", 86400000);
    DUR_OK("3d", 3ULL * 86400000);
    DUR_OK("18446744073709551615ms", UINT64_MAX);
}

static void test_duration_invalid(void **state)
{
    (void)state;
    DUR_BAD("");
    DUR_BAD("ms");
    DUR_BAD("s");
    DUR_BAD("-5s");
    DUR_BAD("1.5s");
    DUR_BAD("5x");
    DUR_BAD("5 seconds");
    DUR_BAD("5sec");
    DUR_BAD("5mss");
    DUR_BAD("5w");
    DUR_BAD("5y");
    DUR_BAD(" 5s");
    DUR_BAD("abc");
}

static void test_duration_overflow(void **state)
{
    (void)state;
    DUR_BAD("18446744073709551616ms");         /* 2^64 */
    DUR_BAD("18446744073709552s");             /* > UINT64_MAX / 1000 */
    DUR_BAD("18446744073709551615");           /* seconds: * 1000 overflows */
    DUR_BAD("307445734561826m");               /* > UINT64_MAX / 60000 */
    DUR_BAD("5124095576031h");                 /* > UINT64_MAX / 3600000 */
    DUR_BAD("213503982335d");                  /* > UINT64_MAX / 86400000 */
    /* the largest that fit */
    DUR_OK("18446744073709551s", 18446744073709551ULL * 1000);
    DUR_OK("213503982334d", 213503982334ULL * 86400000);
}

/* ------------------------------------------------------------------------ */
/* util_parse_u64                                                           */
/* ------------------------------------------------------------------------ */

static void test_u64_valid(void **state)
{
    (void)state;
    uint64_t v = 1;
    assert_int_equal(util_parse_u64("0", 10, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(util_parse_u64("10", 10, &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(util_parse_u64("4096", UINT64_MAX, &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(util_parse_u64("18446744073709551615", UINT64_MAX, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(util_parse_u64("4294967294", UINT32_MAX - 1, &v), 0);
    assert_int_equal(v, 4294967294ULL);
}

static void test_u64_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "-1", "+1", " 1", "1 ", "1a", "a1", "0x10", "1.0", "1e3", "1K",
        "18446744073709551616", "99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 555;
        if (util_parse_u64(bad[i], UINT64_MAX, &v) != -1)
            fail_msg("util_parse_u64(\"%s\") accepted", bad[i]);
        assert_int_equal(v, 555);
    }
    uint64_t v = 555;
    assert_int_equal(util_parse_u64(NULL, UINT64_MAX, &v), -1);
    /* above max */
    assert_int_equal(util_parse_u64("11", 10, &v), -1);
    assert_int_equal(util_parse_u64("4294967295", UINT32_MAX - 1, &v), -1);
    assert_int_equal(util_parse_u64("1", 0, &v), -1);
    assert_int_equal(v, 555);
    assert_int_equal(util_parse_u64("0", 0, &v), 0);
    assert_int_equal(v, 0);
}

/* ------------------------------------------------------------------------ */
/* util_fmt_bytes                                                           */
/* ------------------------------------------------------------------------ */

static void test_fmt_bytes(void **state)
{
    (void)state;
    char buf[32];
    assert_ptr_equal(util_fmt_bytes(0, buf, sizeof buf), buf);
    assert_string_equal(buf, "0 B");
    assert_string_equal(util_fmt_bytes(1, buf, sizeof buf), "1 B");
    assert_string_equal(util_fmt_bytes(1023, buf, sizeof buf), "1023 B");
    assert_string_equal(util_fmt_bytes(1024, buf, sizeof buf), "1.0 KiB");
    assert_string_equal(util_fmt_bytes(1536, buf, sizeof buf), "1.5 KiB");
    assert_string_equal(util_fmt_bytes(1048576, buf, sizeof buf), "1.0 MiB");
    /* 12.3 MiB as in util.h */
    assert_string_equal(util_fmt_bytes(12897485, buf, sizeof buf), "12.3 MiB");
    assert_string_equal(util_fmt_bytes(1ULL << 30, buf, sizeof buf), "1.0 GiB");
    assert_string_equal(util_fmt_bytes(5ULL << 40, buf, sizeof buf), "5.0 TiB");
    /* TiB is the largest unit */
    assert_string_equal(util_fmt_bytes(1ULL << 50, buf, sizeof buf), "1024.0 TiB");
    assert_string_equal(util_fmt_bytes(UINT64_MAX, buf, sizeof buf), "16777216.0 TiB");
}

static void test_fmt_bytes_small_buffer(void **state)
{
    (void)state;
    char buf[8];
    memset(buf, 'x', sizeof buf);
    util_fmt_bytes(12897485, buf, 5);
    /* truncated but terminated, and nothing written past len */
    assert_string_equal(buf, "12.3");
    assert_int_equal(buf[5], 'x');
    assert_int_equal(buf[7], 'x');
}

/* ------------------------------------------------------------------------ */
/* clocks                                                                   */
/* ------------------------------------------------------------------------ */

/* The wall clock in ms, at the resolution the code under test uses. Not
 * time(): it reads the coarse clock, which can lag a few ms behind, so a
 * bound taken from it can fall just short across a second boundary. */
static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void test_clocks(void **state)
{
    (void)state;
    uint64_t before = wall_ms();
    uint64_t now = util_now_ms();
    uint64_t after = wall_ms();
    assert_true(now >= before);
    assert_true(now <= after);

    uint64_t m1 = util_mono_us();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ref = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
    uint64_t m2 = util_mono_us();
    assert_true(m1 <= ref);
    assert_true(ref <= m2);
}

/* ------------------------------------------------------------------------ */
/* util_mkdir_p                                                             */
/* ------------------------------------------------------------------------ */

static void test_mkdir_p_creates_chain(void **state)
{
    (void)state;
    mode_t old = umask(022);
    char *tmp = make_tmpdir();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/a/b/c", tmp);
    assert_int_equal(util_mkdir_p(path, 0700), 0);

    struct stat st;
    const char *levels[] = { "/a", "/a/b", "/a/b/c" };
    for (size_t i = 0; i < 3; i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s%s", tmp, levels[i]);
        assert_int_equal(stat(p, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0700);
    }
    /* again: existing is fine */
    assert_int_equal(util_mkdir_p(path, 0700), 0);
    /* trailing slash and double slash */
    snprintf(path, sizeof path, "%s/x//y/", tmp);
    assert_int_equal(util_mkdir_p(path, 0750), 0);
    snprintf(path, sizeof path, "%s/x/y", tmp);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0750);

    rm_rf(tmp);
    free(tmp);
    umask(old);
}

static void test_mkdir_p_leaves_existing_mode(void **state)
{
    (void)state;
    mode_t old = umask(022);
    char *tmp = make_tmpdir();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/keep", tmp);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(util_mkdir_p(path, 0700), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755);

    /* a new directory below an existing one gets the given mode */
    snprintf(path, sizeof path, "%s/keep/new", tmp);
    assert_int_equal(util_mkdir_p(path, 0711), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0711);

    rm_rf(tmp);
    free(tmp);
    umask(old);
}

static void test_mkdir_p_errors(void **state)
{
    (void)state;
    char *tmp = make_tmpdir();
    char path[PATH_MAX];

    /* the path itself is a file */
    snprintf(path, sizeof path, "%s/file", tmp);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    errno = 0;
    assert_int_equal(util_mkdir_p(path, 0700), -1);
    assert_int_equal(errno, ENOTDIR);

    /* a component is a file */
    snprintf(path, sizeof path, "%s/file/sub", tmp);
    errno = 0;
    assert_int_equal(util_mkdir_p(path, 0700), -1);
    assert_int_equal(errno, ENOTDIR);

    /* empty and over-long paths */
    assert_int_equal(util_mkdir_p("", 0700), -1);
    size_t n = PATH_MAX + 10;
    char *lng = malloc(n + 1);
    assert_non_null(lng);
    memset(lng, 'a', n);
    lng[0] = '/';
    lng[n] = 0;
    errno = 0;
    assert_int_equal(util_mkdir_p(lng, 0700), -1);
    assert_int_equal(errno, ENAMETOOLONG);
    free(lng);

    rm_rf(tmp);
    free(tmp);
}

/* ------------------------------------------------------------------------ */
/* util_write_all                                                           */
/* ------------------------------------------------------------------------ */

static void test_write_all(void **state)
{
    (void)state;
    char *tmp = make_tmpdir();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/out", tmp);
    int fd = open(path, O_CREAT | O_RDWR, 0600);
    assert_true(fd >= 0);
    size_t n = 300000;
    unsigned char *buf = malloc(n);
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    assert_int_equal(util_write_all(fd, buf, n), 0);
    assert_int_equal(util_write_all(fd, buf, 0), 0);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    unsigned char *back = malloc(n);
    assert_non_null(back);
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, back + got, n - got);
        assert_true(r > 0);
        got += (size_t)r;
    }
    assert_memory_equal(buf, back, n);
    close(fd);

    /* a closed fd fails */
    assert_int_equal(util_write_all(fd, buf, 10), -1);
    free(buf);
    free(back);
    rm_rf(tmp);
    free(tmp);
}

/* util_crc32 is zlib's crc32: every length 0..4096 at every alignment 0..15,
 * random starting values, chained calls split anywhere, a large buffer. */
static void test_crc32_matches_zlib(void **state)
{
    (void)state;
    size_t cap = 1u << 20;
    unsigned char *buf = malloc(cap + 16);
    assert_non_null(buf);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < cap + 16; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
    for (size_t len = 0; len <= 4096; len++) {
        for (size_t a = 0; a < 16; a += (len < 300 ? 1 : 5)) {
            uint32_t init = (uint32_t)(x >> (len % 32));
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            assert_int_equal(util_crc32(0, buf + a, len), (uint32_t)crc32(0, buf + a, (uInt)len));
            assert_int_equal(util_crc32(init, buf + a, len),
                             (uint32_t)crc32(init, buf + a, (uInt)len));
        }
    }
    uint32_t whole = (uint32_t)crc32(0, buf, (uInt)cap);
    assert_int_equal(util_crc32(0, buf, cap), whole);
    for (size_t cut = 0; cut < 300; cut += 7) {
        uint32_t c = util_crc32(0, buf, cut);
        assert_int_equal(util_crc32(c, buf + cut, cap - cut), whole);
    }
    memset(buf, 0, 256);
    assert_int_equal(util_crc32(0, buf, 256), (uint32_t)crc32(0, buf, 256));
    memset(buf, 0xff, 256);
    assert_int_equal(util_crc32(0xffffffffu, buf, 256), (uint32_t)crc32(0xffffffffu, buf, 256));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_plain_numbers),
        cmocka_unit_test(test_size_suffixes),
        cmocka_unit_test(test_size_invalid),
        cmocka_unit_test(test_size_overflow),
        cmocka_unit_test(test_duration_units),
        cmocka_unit_test(test_duration_invalid),
        cmocka_unit_test(test_duration_overflow),
        cmocka_unit_test(test_u64_valid),
        cmocka_unit_test(test_u64_invalid),
        cmocka_unit_test(test_fmt_bytes),
        cmocka_unit_test(test_fmt_bytes_small_buffer),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_mkdir_p_creates_chain),
        cmocka_unit_test(test_mkdir_p_leaves_existing_mode),
        cmocka_unit_test(test_mkdir_p_errors),
        cmocka_unit_test(test_write_all),
        cmocka_unit_test(test_crc32_matches_zlib),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
