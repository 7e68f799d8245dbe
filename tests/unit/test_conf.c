/*
 * test_conf.c -- unit tests for the configuration (conf.h).
 *
 * Every test writes its config into a file under a mkdtemp() directory made
 * by the group setup and removed by the group teardown, loads it over the
 * defaults, and checks either the values or the error message: on error the
 * message must name the file and the line (and the section and key when
 * there is one), e.g. "<path>:7: [spool] max_spool_bytes: ...".
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

static char tmpdir[64];
static unsigned file_no;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/relay-test-conf-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes text (len bytes) into a new file; returns its path (a static
 * buffer, valid until the next call). */
static char conf_path[PATH_MAX];

static char *write_conf_len(const char *text, size_t len)
{
    char *path = conf_path;
    snprintf(path, sizeof conf_path, "%s/relayd-%u.conf", tmpdir, ++file_no);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static char *write_conf(const char *text)
{
    return write_conf_len(text, strlen(text));
}

/* The smallest config that loads: one destination. */
#define DEST "[destination events]\n"

/* Loads text that must be valid; c is filled (caller conf_free's it). */
static void load_ok_at(const char *text, struct conf *c, const char *file, int line)
{
    char *path = write_conf(text);
    char err[1024] = "";
    conf_defaults(c);
    if (conf_load(path, c, err, sizeof err) != 0)
        fail_msg("%s:%d: conf_load failed: %s\n--- config ---\n%s", file, line, err, text);
    if (c->path == NULL || strcmp(c->path, path) != 0)
        fail_msg("%s:%d: c->path is '%s', want '%s'", file, line,
                 c->path ? c->path : "(null)", path);
}
#define LOAD_OK(text, c) load_ok_at((text), (c), __FILE__, __LINE__)

/* Loads text that must fail. The message must start with "<path>:<line>: "
 * (line > 0) or name the path (line == 0: cross-key rules), and contain
 * every one of the NULL-terminated fragments. */
static void load_bad_len_at(const char *text, size_t len, unsigned line,
                            const char *const *frags, const char *file, int ln)
{
    char *path = write_conf_len(text, len);
    char err[1024];
    memset(err, 0, sizeof err);
    struct conf c;
    conf_defaults(&c);
    if (conf_load(path, &c, err, sizeof err) != -1)
        fail_msg("%s:%d: conf_load accepted a bad config:\n%s", file, ln, text);
    /* "c is then left freed" */
    if (c.control_socket || c.spool_dir || c.socket_path || c.dests || c.n_dests || c.path)
        fail_msg("%s:%d: conf not freed after an error", file, ln);
    if (line) {
        char want[PATH_MAX + 32];
        snprintf(want, sizeof want, "%s:%u: ", path, line);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("%s:%d: message '%s' does not start with '%s'", file, ln, err, want);
    }
    for (size_t i = 0; frags && frags[i]; i++)
        if (strstr(err, frags[i]) == NULL)
            fail_msg("%s:%d: message '%s' lacks '%s'", file, ln, err, frags[i]);
}
#define LOAD_BAD(text, line, ...) do {                                        \
        const char *const frags_[] = { __VA_ARGS__, NULL };                  \
        load_bad_len_at((text), strlen(text), (line), frags_, __FILE__, __LINE__); \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Defaults                                                                 */
/* ------------------------------------------------------------------------ */

static void test_defaults(void **state)
{
    (void)state;
    struct conf c;
    memset(&c, 0x5a, sizeof c);          /* conf_defaults must set every field */
    conf_defaults(&c);
    assert_null(c.path);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_string_equal(c.control_socket, "/run/relayd/relayd.ctl");
    assert_int_equal(c.control_socket_mode, 0660);
    assert_string_equal(c.spool_dir, "/var/lib/relayd");
    assert_int_equal(c.max_spool_bytes, 1ULL << 30);
    assert_int_equal(c.durability, DURABILITY_FSYNC);
    assert_int_equal(c.sync_interval_ms, 1000);
    assert_string_equal(c.socket_path, "/run/relayd/relayd.sock");
    assert_int_equal(c.socket_mode, 0660);
    assert_int_equal(c.socket_uid, (uid_t)-1);     /* -1: relayd's own */
    assert_int_equal(c.socket_gid, (gid_t)-1);
    assert_false(c.allow_any_uid);
    assert_null(c.allowed_uids);
    assert_int_equal(c.n_allowed_uids, 0);
    assert_null(c.allowed_gids);
    assert_int_equal(c.n_allowed_gids, 0);
    assert_int_equal(c.max_record_bytes, 9ULL << 20);
    assert_int_equal(c.max_connections, 4096);
    assert_int_equal(c.full_wait_ms, 5000);
    assert_int_equal(c.max_pending_bytes, 32ULL << 20);
    assert_int_equal(c.max_depth, 16);
    assert_null(c.default_table);
    assert_null(c.dests);
    assert_int_equal(c.n_dests, 0);
    conf_free(&c);
    /* conf_free leaves it zeroed and may be called again */
    assert_null(c.spool_dir);
    conf_free(&c);

    assert_string_equal(CONF_DEFAULT_PATH, "/etc/relayd/relayd.conf");
}

static void test_defaults_pass_validation(void **state)
{
    (void)state;
    /* the defaults plus one destination load, and keep every default */
    struct conf c;
    LOAD_OK(DEST, &c);
    struct conf d;
    conf_defaults(&d);
    assert_int_equal(c.log_level, d.log_level);
    assert_string_equal(c.control_socket, d.control_socket);
    assert_string_equal(c.spool_dir, d.spool_dir);
    assert_string_equal(c.socket_path, d.socket_path);
    assert_int_equal(c.max_spool_bytes, d.max_spool_bytes);
    assert_int_equal(c.max_record_bytes, d.max_record_bytes);
    assert_int_equal(c.max_pending_bytes, d.max_pending_bytes);
    assert_int_equal(c.max_depth, d.max_depth);
    assert_int_equal(c.n_dests, 1);
    assert_string_equal(c.dests[0].name, "events");
    char err[256];
    assert_int_equal(conf_validate(&c, err, sizeof err), 0);
    conf_free(&d);
    conf_free(&c);
}

static void test_empty_and_comment_only(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("# comment\n; comment\n\n   \n\t# indented comment\n" DEST, &c);
    assert_int_equal(c.n_dests, 1);
    conf_free(&c);
    /* no trailing newline on the last line */
    LOAD_OK("[destination last]", &c);
    assert_int_equal(c.n_dests, 1);
    assert_string_equal(c.dests[0].name, "last");
    conf_free(&c);
}

/* ------------------------------------------------------------------------ */
/* Every key                                                                */
/* ------------------------------------------------------------------------ */

static void test_all_keys(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[relayd]\n"
            "log_level = debug\n"
            "control_socket = /tmp/x/ctl.sock\n"
            "control_socket_mode = 0600\n"
            "[spool]\n"
            "dir = /srv/spool\n"
            "max_spool_bytes = 2G\n"
            "durability = os\n"
            "sync_interval = 250ms\n"
            "[ingest]\n"
            "socket = /tmp/x/in.sock\n"
            "socket_mode = 0666\n"
            "socket_owner = root\n"
            "socket_group = 0\n"
            "allowed_uids = 1000, 1001\n"
            "allowed_gids = 100\n"
            "max_record_bytes = 1MiB\n"
            "max_connections = 10\n"
            "full_wait = 30s\n"
            "max_pending_bytes = 64M\n"
            "max_depth = 20\n"
            "default_table = logs\n"
            "[destination events]\n"
            "[destination logs]\n", &c);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_string_equal(c.control_socket, "/tmp/x/ctl.sock");
    assert_int_equal(c.control_socket_mode, 0600);
    assert_string_equal(c.spool_dir, "/srv/spool");
    assert_int_equal(c.max_spool_bytes, 2ULL << 30);
    assert_int_equal(c.durability, DURABILITY_OS);
    assert_int_equal(c.sync_interval_ms, 250);
    assert_string_equal(c.socket_path, "/tmp/x/in.sock");
    assert_int_equal(c.socket_mode, 0666);
    assert_int_equal(c.socket_uid, 0);
    assert_int_equal(c.socket_gid, 0);
    assert_false(c.allow_any_uid);
    assert_int_equal(c.n_allowed_uids, 2);
    assert_int_equal(c.allowed_uids[0], 1000);
    assert_int_equal(c.allowed_uids[1], 1001);
    assert_int_equal(c.n_allowed_gids, 1);
    assert_int_equal(c.allowed_gids[0], 100);
    assert_int_equal(c.max_record_bytes, 1ULL << 20);
    assert_int_equal(c.max_connections, 10);
    assert_int_equal(c.full_wait_ms, 30000);
    assert_int_equal(c.max_pending_bytes, 64ULL << 20);
    assert_int_equal(c.max_depth, 20);
    assert_string_equal(c.default_table, "logs");
    assert_int_equal(c.n_dests, 2);
    assert_string_equal(c.dests[0].name, "events");
    assert_string_equal(c.dests[1].name, "logs");
    const struct conf_dest *d = conf_find_dest(&c, "logs", 4);
    assert_non_null(d);
    assert_ptr_equal(d, &c.dests[1]);
    assert_null(conf_find_dest(&c, "log", 3));
    assert_null(conf_find_dest(&c, "logsx", 5));
    assert_ptr_equal(conf_find_dest(&c, "eventsXYZ", 6), &c.dests[0]);
    conf_free(&c);
}

static void test_whitespace_and_verbatim_values(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("  [ spool ]  \n"
            "\tmax_spool_bytes=40M   \n"
            "   durability   =   none\t\n"
            "[ingest]\n"
            "[relayd]\n"
            "control_socket = /run/a#b;c\n"    /* no inline comments */
            "[ingest]\n"
            "default_table = events\n"
            "default_table =\n"               /* empty: back to none */
            DEST, &c);
    assert_int_equal(c.max_spool_bytes, 40ULL << 20);
    assert_int_equal(c.durability, DURABILITY_NONE);
    assert_string_equal(c.control_socket, "/run/a#b;c");
    assert_null(c.default_table);
    conf_free(&c);

    /* a later value replaces an earlier one */
    LOAD_OK("[spool]\ndir = /a\ndir = /b\n[relayd]\nlog_level = error\n"
            "[spool]\nmax_spool_bytes = 50M\n" DEST, &c);
    assert_string_equal(c.spool_dir, "/b");
    assert_int_equal(c.max_spool_bytes, 50ULL << 20);
    assert_int_equal(c.log_level, LOG_ERROR);
    conf_free(&c);
}

static void test_log_levels(void **state)
{
    (void)state;
    static const struct { const char *v; int want; } ok[] = {
        { "debug", LOG_DEBUG }, { "info", LOG_INFO }, { "warn", LOG_WARN },
        { "warning", LOG_WARN }, { "error", LOG_ERROR },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[200];
        snprintf(text, sizeof text, "[relayd]\nlog_level = %s\n" DEST, ok[i].v);
        struct conf c;
        LOAD_OK(text, &c);
        assert_int_equal(c.log_level, ok[i].want);
        conf_free(&c);
    }
    LOAD_BAD("[relayd]\nlog_level = loud\n" DEST, 2, "[relayd] log_level: ", "'loud'");
}

static void test_durability_values(void **state)
{
    (void)state;
    static const struct { const char *v; enum conf_durability want; } ok[] = {
        { "fsync", DURABILITY_FSYNC }, { "os", DURABILITY_OS }, { "none", DURABILITY_NONE },
    };
    for (size_t i = 0; i < 3; i++) {
        char text[200];
        snprintf(text, sizeof text, "[spool]\ndurability = %s\n" DEST, ok[i].v);
        struct conf c;
        LOAD_OK(text, &c);
        assert_int_equal(c.durability, ok[i].want);
        assert_string_equal(conf_durability_name(c.durability), ok[i].v);
        conf_free(&c);
    }
    LOAD_BAD("[spool]\ndurability = sometimes\n" DEST, 2, "[spool] durability: ", "'sometimes'");
    LOAD_BAD("[spool]\ndurability = FSYNC\n" DEST, 2, "[spool] durability: ");
    LOAD_BAD("[spool]\ndurability =\n" DEST, 2, "[spool] durability: ");
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct { const char *v; uint64_t want; } ok[] = {
        { "1M", 1ULL << 20 }, { "1048576", 1ULL << 20 }, { "64MiB", 64ULL << 20 },
        { "4g", 4ULL << 30 }, { "16T", 16ULL << 40 }, { "1024K", 1ULL << 20 },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[200];
        snprintf(text, sizeof text, "[spool]\nmax_spool_bytes = %s\n"
                 "[ingest]\nmax_record_bytes = 16\n" DEST, ok[i].v);
        struct conf c;
        LOAD_OK(text, &c);
        assert_int_equal(c.max_spool_bytes, ok[i].want);
        assert_int_equal(c.max_record_bytes, 16);
        conf_free(&c);
    }
    /* out of range: [1M, 16T] */
    LOAD_BAD("[spool]\nmax_spool_bytes = 1048575\n" DEST, 2,
             "[spool] max_spool_bytes: ", "1048575");
    LOAD_BAD("[spool]\nmax_spool_bytes = 512K\n" DEST, 2, "[spool] max_spool_bytes: ");
    LOAD_BAD("[spool]\nmax_spool_bytes = 17T\n" DEST, 2, "[spool] max_spool_bytes: ");
    LOAD_BAD("[spool]\nmax_spool_bytes = 99999999999999999999\n" DEST, 2,
             "[spool] max_spool_bytes: ");
    /* max_record_bytes [16, 64M] */
    LOAD_BAD("[ingest]\nmax_record_bytes = 15\n" DEST, 2, "[ingest] max_record_bytes: ");
    LOAD_BAD("[ingest]\nmax_record_bytes = 65M\n" DEST, 2, "[ingest] max_record_bytes: ");
    /* max_pending_bytes [64K, 4G] */
    LOAD_BAD("[ingest]\nmax_pending_bytes = 63K\n" DEST, 2, "[ingest] max_pending_bytes: ");
    LOAD_BAD("[ingest]\nmax_pending_bytes = 5G\n" DEST, 2, "[ingest] max_pending_bytes: ");
    struct conf c;
    LOAD_OK("[ingest]\nmax_record_bytes = 64K\nmax_pending_bytes = 64K\n" DEST, &c);
    assert_int_equal(c.max_pending_bytes, 64 << 10);
    conf_free(&c);
    LOAD_OK("[ingest]\nmax_pending_bytes = 4G\nmax_record_bytes = 64M\n" DEST, &c);
    assert_int_equal(c.max_pending_bytes, 4ULL << 30);
    assert_int_equal(c.max_record_bytes, 64ULL << 20);
    conf_free(&c);
}

static void test_bad_value_names_file_line_key(void **state)
{
    (void)state;
    /* the example of the brief: line 7 */
    LOAD_BAD("# relayd\n"
             "[relayd]\n"
             "log_level = info\n"
             "\n"
             "[spool]\n"
             "dir = /var/lib/relayd\n"
             "max_spool_bytes = lots\n"
             DEST,
             7, ":7: [spool] max_spool_bytes: ", "'lots'");
}

static void test_durations(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[spool]\nsync_interval = 1ms\n[ingest]\nfull_wait = 0\n" DEST, &c);
    assert_int_equal(c.sync_interval_ms, 1);
    assert_int_equal(c.full_wait_ms, 0);
    conf_free(&c);
    LOAD_OK("[spool]\nsync_interval = 1h\n[ingest]\nfull_wait = 1d\n" DEST, &c);
    assert_int_equal(c.sync_interval_ms, 3600000);
    assert_int_equal(c.full_wait_ms, 86400000);
    conf_free(&c);
    LOAD_OK("[spool]\nsync_interval = 2\n[ingest]\nfull_wait = 10m\n" DEST, &c);
    assert_int_equal(c.sync_interval_ms, 2000);
    assert_int_equal(c.full_wait_ms, 600000);
    conf_free(&c);

    LOAD_BAD("[spool]\nsync_interval = 0ms\n" DEST, 2, "[spool] sync_interval: ");
    LOAD_BAD("[spool]\nsync_interval = 2h\n" DEST, 2, "[spool] sync_interval: ");
    LOAD_BAD("[spool]\nsync_interval = soon\n" DEST, 2, "[spool] sync_interval: ", "'soon'");
    LOAD_BAD("[ingest]\nfull_wait = 2d\n" DEST, 2, "[ingest] full_wait: ");
    LOAD_BAD("[ingest]\nfull_wait = -1s\n" DEST, 2, "[ingest] full_wait: ");
}

static void test_uints(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[ingest]\nmax_connections = 1\nmax_depth = 1\n" DEST, &c);
    assert_int_equal(c.max_connections, 1);
    assert_int_equal(c.max_depth, 1);
    conf_free(&c);
    LOAD_OK("[ingest]\nmax_connections = 1000000\nmax_depth = 1000\n" DEST, &c);
    assert_int_equal(c.max_connections, 1000000);
    assert_int_equal(c.max_depth, 1000);
    conf_free(&c);
    LOAD_BAD("[ingest]\nmax_connections = 0\n" DEST, 2, "[ingest] max_connections: ");
    LOAD_BAD("[ingest]\nmax_connections = 1000001\n" DEST, 2, "[ingest] max_connections: ");
    LOAD_BAD("[ingest]\nmax_connections = many\n" DEST, 2, "[ingest] max_connections: ",
             "'many'");
    LOAD_BAD("[ingest]\nmax_connections = 10K\n" DEST, 2, "[ingest] max_connections: ");
    LOAD_BAD("[ingest]\nmax_connections = -5\n" DEST, 2, "[ingest] max_connections: ");
    LOAD_BAD("[ingest]\nmax_depth = 0\n" DEST, 2, "[ingest] max_depth: ");
    LOAD_BAD("[ingest]\nmax_depth = 1001\n" DEST, 2, "[ingest] max_depth: ");
    LOAD_BAD("[ingest]\nmax_depth = 99999999999999999999999\n" DEST, 2,
             "[ingest] max_depth: ");
}

static void test_modes(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[relayd]\ncontrol_socket_mode = 0\n[ingest]\nsocket_mode = 777\n" DEST, &c);
    assert_int_equal(c.control_socket_mode, 0);
    assert_int_equal(c.socket_mode, 0777);
    conf_free(&c);
    LOAD_OK("[relayd]\ncontrol_socket_mode = 0640\n[ingest]\nsocket_mode = 0620\n" DEST, &c);
    assert_int_equal(c.control_socket_mode, 0640);
    assert_int_equal(c.socket_mode, 0620);
    conf_free(&c);
    LOAD_BAD("[ingest]\nsocket_mode = 0888\n" DEST, 2, "[ingest] socket_mode: ", "'0888'");
    LOAD_BAD("[ingest]\nsocket_mode = 1777\n" DEST, 2, "[ingest] socket_mode: ");
    LOAD_BAD("[ingest]\nsocket_mode = rw\n" DEST, 2, "[ingest] socket_mode: ");
    LOAD_BAD("[ingest]\nsocket_mode =\n" DEST, 2, "[ingest] socket_mode: ");
    LOAD_BAD("[relayd]\ncontrol_socket_mode = 0x1ff\n" DEST, 2,
             "[relayd] control_socket_mode: ");
    LOAD_BAD("[relayd]\ncontrol_socket_mode = -1\n" DEST, 2,
             "[relayd] control_socket_mode: ");
}

static void test_paths(void **state)
{
    (void)state;
    LOAD_BAD("[spool]\ndir = var/lib/relayd\n" DEST, 2, "[spool] dir: ", "'var/lib/relayd'");
    LOAD_BAD("[spool]\ndir =\n" DEST, 2, "[spool] dir: ");
    LOAD_BAD("[ingest]\nsocket = relayd.sock\n" DEST, 2, "[ingest] socket: ");
    LOAD_BAD("[relayd]\ncontrol_socket = ./ctl\n" DEST, 2, "[relayd] control_socket: ");
}

static void test_uids_and_gids(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[ingest]\nallowed_uids = root 1000,1001\t1002\nallowed_gids = root, 100\n" DEST, &c);
    assert_false(c.allow_any_uid);
    assert_int_equal(c.n_allowed_uids, 4);
    assert_int_equal(c.allowed_uids[0], 0);
    assert_int_equal(c.allowed_uids[1], 1000);
    assert_int_equal(c.allowed_uids[2], 1001);
    assert_int_equal(c.allowed_uids[3], 1002);
    assert_int_equal(c.n_allowed_gids, 2);
    assert_int_equal(c.allowed_gids[0], 0);
    assert_int_equal(c.allowed_gids[1], 100);
    conf_free(&c);

    /* a user and a group other than root, resolved by name */
    struct passwd *pw = getpwnam("daemon");
    struct group *gr = getgrnam("daemon");
    if (pw && gr) {
        uid_t du = pw->pw_uid;
        gid_t dg = gr->gr_gid;
        LOAD_OK("[ingest]\nallowed_uids = daemon\nallowed_gids = daemon\n" DEST, &c);
        assert_int_equal(c.n_allowed_uids, 1);
        assert_int_equal(c.allowed_uids[0], du);
        assert_int_equal(c.n_allowed_gids, 1);
        assert_int_equal(c.allowed_gids[0], dg);
        conf_free(&c);
    }

    LOAD_OK("[ingest]\nallowed_uids = *\n" DEST, &c);
    assert_true(c.allow_any_uid);
    assert_int_equal(c.n_allowed_uids, 0);
    conf_free(&c);

    /* the largest id that is not (uid_t)-1 */
    LOAD_OK("[ingest]\nallowed_uids = 4294967294\nallowed_gids = 4294967294\n" DEST, &c);
    assert_int_equal(c.allowed_uids[0], 4294967294U);
    assert_int_equal(c.allowed_gids[0], 4294967294U);
    conf_free(&c);

    /* a later line replaces the list, '*' included */
    LOAD_OK("[ingest]\nallowed_uids = *\nallowed_uids = 5\n" DEST, &c);
    assert_false(c.allow_any_uid);
    assert_int_equal(c.n_allowed_uids, 1);
    assert_int_equal(c.allowed_uids[0], 5);
    conf_free(&c);

    /* empty: nobody extra */
    LOAD_OK("[ingest]\nallowed_uids = 5\nallowed_uids =\nallowed_gids =\n" DEST, &c);
    assert_int_equal(c.n_allowed_uids, 0);
    assert_int_equal(c.n_allowed_gids, 0);
    conf_free(&c);

    LOAD_BAD("[ingest]\nallowed_uids = 1000, no_such_user_x9\n" DEST, 2,
             "[ingest] allowed_uids: ", "no_such_user_x9");
    LOAD_BAD("[ingest]\nallowed_gids = no_such_group_x9\n" DEST, 2,
             "[ingest] allowed_gids: ", "no_such_group_x9");
    /* '*' is for uids only */
    LOAD_BAD("[ingest]\nallowed_gids = *\n" DEST, 2, "[ingest] allowed_gids: ");
    /* (uid_t)-1 is not an id */
    LOAD_BAD("[ingest]\nallowed_uids = 4294967295\n" DEST, 2, "[ingest] allowed_uids: ");
}

static void test_socket_owner_group(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[ingest]\nsocket_owner = 0\nsocket_group = root\n" DEST, &c);
    assert_int_equal(c.socket_uid, 0);
    assert_int_equal(c.socket_gid, 0);
    conf_free(&c);
    LOAD_OK("[ingest]\nsocket_owner = 1234\nsocket_group = 4294967294\n" DEST, &c);
    assert_int_equal(c.socket_uid, 1234);
    assert_int_equal(c.socket_gid, 4294967294U);
    conf_free(&c);
    struct passwd *pw = getpwnam("daemon");
    if (pw) {
        uid_t du = pw->pw_uid;
        LOAD_OK("[ingest]\nsocket_owner = daemon\n" DEST, &c);
        assert_int_equal(c.socket_uid, du);
        assert_int_equal(c.socket_gid, (gid_t)-1);
        conf_free(&c);
    }
    LOAD_BAD("[ingest]\nsocket_owner = no_such_user_x9\n" DEST, 2,
             "[ingest] socket_owner: ", "no_such_user_x9");
    LOAD_BAD("[ingest]\n\nsocket_group = no_such_group_x9\n" DEST, 3,
             "[ingest] socket_group: ", "no_such_group_x9");
    /* (uid_t)-1 is "relayd's own", not a uid one can write */
    LOAD_BAD("[ingest]\nsocket_owner = 4294967295\n" DEST, 2, "[ingest] socket_owner: ");
}

/* ------------------------------------------------------------------------ */
/* Structure errors                                                         */
/* ------------------------------------------------------------------------ */

static void test_unknown_section(void **state)
{
    (void)state;
    LOAD_BAD("[relayd]\n\n[bigquery]\n" DEST, 3, "[bigquery]");
    LOAD_BAD("[]\n" DEST, 1, "unknown section");
    LOAD_BAD("[Spool]\n" DEST, 1, "[Spool]");
    LOAD_BAD("[spool extra]\n" DEST, 1, "spool");
    LOAD_BAD("[aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n"
             DEST, 1, "unknown section");
}

static void test_unknown_key(void **state)
{
    (void)state;
    LOAD_BAD("[spool]\nmax_bytes = 1G\n" DEST, 2, "[spool] max_bytes: ", "unknown key");
    /* a key valid in another section */
    LOAD_BAD("[relayd]\n# x\nsocket = /run/x\n" DEST, 3, "[relayd] socket: ", "unknown key");
    /* a key that destinations do not have */
    LOAD_BAD(DEST "projekt = p\n", 2, "[destination events] projekt: ", "unknown key");
    /* after a destination, a normal section works again */
    struct conf c;
    LOAD_OK(DEST "[spool]\nmax_spool_bytes = 70M\n", &c);
    assert_int_equal(c.max_spool_bytes, 70ULL << 20);
    conf_free(&c);
}

static void test_key_before_section(void **state)
{
    (void)state;
    LOAD_BAD("# first\nlog_level = info\n[relayd]\n" DEST, 2, "log_level", "section");
}

static void test_malformed_lines(void **state)
{
    (void)state;
    LOAD_BAD("[spool\n" DEST, 1, "malformed");
    LOAD_BAD("[relayd]\n[spool] # comment\n" DEST, 2, "malformed");
    LOAD_BAD("[relayd]\n[spool]]\n" DEST, 2, "malformed");
    LOAD_BAD("[relayd]\nlog_level info\n" DEST, 2, "log_level info");
    LOAD_BAD(DEST "[ingest]\n= 5\n", 3, NULL);
    static const char nul[] = "[relayd]\nlog_le\0vel = info\n" DEST;
    const char *const frags[] = { "NUL", NULL };
    load_bad_len_at(nul, sizeof nul - 1, 2, frags, __FILE__, __LINE__);
}

static void test_destinations(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[destination a]\n[destination  b.c-d_e ]\n[destination _9]\n", &c);
    assert_int_equal(c.n_dests, 3);
    assert_string_equal(c.dests[0].name, "a");
    assert_string_equal(c.dests[1].name, "b.c-d_e");
    assert_string_equal(c.dests[2].name, "_9");
    conf_free(&c);

    LOAD_BAD("[destination a]\n[spool]\n[destination a]\n", 3, "'a'", "twice");
    LOAD_BAD("[destination]\n", 1, "destination");
    LOAD_BAD("[destination -x]\n", 1, "'-x'");
    LOAD_BAD("[destination a/b]\n", 1, "'a/b'");
    LOAD_BAD("[destination a b]\n", 1, "invalid destination name");
    LOAD_BAD("[destination .hidden]\n", 1, "'.hidden'");

    /* 128 characters is the longest name */
    char text[512], name[200];
    memset(name, 'd', 128);
    name[128] = 0;
    snprintf(text, sizeof text, "[destination %s]\n", name);
    LOAD_OK(text, &c);
    assert_string_equal(c.dests[0].name, name);
    conf_free(&c);
    memset(name, 'd', 129);
    name[129] = 0;
    snprintf(text, sizeof text, "[spool]\n[destination %s]\n", name);
    LOAD_BAD(text, 2, "invalid destination name");
}

static void test_too_many_destinations(void **state)
{
    (void)state;
    size_t cap = (CONF_MAX_DESTS + 1) * 32;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t n = 0;
    for (int i = 0; i < CONF_MAX_DESTS; i++)
        n += (size_t)snprintf(text + n, cap - n, "[destination d%d]\n", i);
    struct conf c;
    LOAD_OK(text, &c);
    assert_int_equal(c.n_dests, CONF_MAX_DESTS);
    assert_string_equal(c.dests[CONF_MAX_DESTS - 1].name, "d255");
    conf_free(&c);
    snprintf(text + n, cap - n, "[destination one_more]\n");
    LOAD_BAD(text, CONF_MAX_DESTS + 1, "too many");
    free(text);
}

static void test_long_destination_named_in_messages(void **state)
{
    (void)state;
    /* the message for a key in [destination NAME] names the section: the
     * whole name, even a long one */
    char name[129], text[512];
    memset(name, 'q', 100);
    name[100] = 0;
    snprintf(text, sizeof text, "[destination %s]\nprojekt = x\n", name);
    char sect[200];
    snprintf(sect, sizeof sect, "[destination %s] projekt: ", name);
    LOAD_BAD(text, 2, sect);
}

/* ------------------------------------------------------------------------ */
/* Cross-key rules                                                          */
/* ------------------------------------------------------------------------ */

static void test_default_table(void **state)
{
    (void)state;
    struct conf c;
    LOAD_OK("[ingest]\ndefault_table = events\n" DEST, &c);
    assert_string_equal(c.default_table, "events");
    conf_free(&c);
    LOAD_OK("[ingest]\ndefault_table = events\ndefault_table =\n" DEST, &c);
    assert_null(c.default_table);
    conf_free(&c);
    LOAD_BAD("[ingest]\ndefault_table = nowhere\n" DEST, 0, "default_table", "'nowhere'");
    /* a prefix of a destination is not the destination */
    LOAD_BAD("[ingest]\ndefault_table = event\n" DEST, 0, "default_table", "'event'");
}

static void test_no_destination(void **state)
{
    (void)state;
    LOAD_BAD("[relayd]\nlog_level = info\n", 0, "destination");
    LOAD_BAD("", 0, "destination");
}

static void test_validate_rules(void **state)
{
    (void)state;
    /* max_pending_bytes >= max_record_bytes */
    LOAD_BAD("[ingest]\nmax_record_bytes = 2M\nmax_pending_bytes = 1M\n" DEST, 0,
             "max_pending_bytes");
    /* max_spool_bytes >= 4 x max_record_bytes (default record limit 9M) */
    LOAD_BAD("[spool]\nmax_spool_bytes = 35M\n" DEST, 0, "max_spool_bytes");
    struct conf c;
    LOAD_OK("[spool]\nmax_spool_bytes = 36M\n" DEST, &c);
    conf_free(&c);
    LOAD_OK("[spool]\nmax_spool_bytes = 1M\n[ingest]\nmax_record_bytes = 256K\n" DEST, &c);
    assert_int_equal(c.max_spool_bytes, 1 << 20);
    conf_free(&c);

    /* conf_validate on a hand-built conf */
    char err[256];
    conf_defaults(&c);
    assert_int_equal(conf_validate(&c, err, sizeof err), -1);   /* no destination */
    c.dests = calloc(1, sizeof *c.dests);
    assert_non_null(c.dests);
    c.dests[0].name = strdup("x");
    c.n_dests = 1;
    assert_int_equal(conf_validate(&c, err, sizeof err), 0);
    c.default_table = strdup("y");
    err[0] = 0;
    assert_int_equal(conf_validate(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "default_table"));
    free(c.default_table);
    c.default_table = strdup("x");
    assert_int_equal(conf_validate(&c, err, sizeof err), 0);
    conf_free(&c);
}

static void test_storage_parity_keys(void **state)
{
    (void)state;
    struct conf c;
    /* defaults */
    LOAD_OK(DEST, &c);
    assert_int_equal(c.dests[0].max_inflight_bytes, 64ULL << 20);
    assert_int_equal(c.dests[0].connections, 1);
    conf_free(&c);
    LOAD_OK(DEST "api = storage\nconnections = 16\nmax_inflight_bytes = 1K\n", &c);
    assert_int_equal(c.dests[0].connections, 16);
    assert_int_equal(c.dests[0].max_inflight_bytes, 1024);
    conf_free(&c);
    /* out of range, malformed: the key's line */
    LOAD_BAD(DEST "api = storage\nconnections = 17\n", 3, "[destination events] connections: ",
             "out of range [1, 16]");
    LOAD_BAD(DEST "connections = 0\n", 2, "connections: ", "out of range");
    LOAD_BAD(DEST "max_inflight_bytes = 1000\n", 2, "[destination events] max_inflight_bytes: ",
             "out of range");
    LOAD_BAD(DEST "max_inflight_bytes = lots\n", 2, "max_inflight_bytes: ", "'lots'");
    /* connections apply to api = storage: refused on insertAll, naming its line */
    LOAD_BAD(DEST "project = p\ndataset = d\n\nconnections = 4\n", 5,
             "[destination events] connections: ", "api = storage", "max_inflight");
    /* time-sharded tables and create_table now work on storage */
    LOAD_OK(DEST "api = storage\ntable = ev_%Y%m%d\ntable_time_field = ts\n"
            "create_table = yes\nschema_file = /etc/relayd/s.json\ntime_partitioning = DAY\n", &c);
    assert_int_equal(c.dests[0].api, API_STORAGE);
    assert_true(c.dests[0].create_table);
    conf_free(&c);
    /* partition decorators do not: the Storage Write API refuses them */
    LOAD_BAD(DEST "api = storage\n\ntable = ev$20261206\n", 4, "[destination events] table: ",
             "'ev$20261206'", "does not accept partition decorators", "api = insertall");
    LOAD_BAD(DEST "table = ev$%Y%m%d\napi = storage\n", 2, "table: ", "partition decorators");
    /* the decorator check names the destination when table is the default */
    LOAD_BAD("[destination ev$x]\napi = storage\n", 1, "invalid destination name");
    LOAD_OK(DEST "table = ev$20261206\n", &c);   /* insertAll accepts them */
    conf_free(&c);
}

static void test_batch_mode_keys(void **state)
{
    (void)state;
    struct conf c;
    /* defaults: mode = stream, the commit limits documented */
    LOAD_OK(DEST, &c);
    assert_false(c.dests[0].batch_mode);
    assert_int_equal(c.dests[0].batch_commit_rows, 1000000);
    assert_int_equal(c.dests[0].batch_commit_interval_ms, 60000);
    assert_int_equal(c.dests[0].batch_commit_idle_ms, 2000);
    conf_free(&c);
    LOAD_OK(DEST "api = storage\nmode = batch\nbatch_commit_rows = 5000\n"
            "batch_commit_interval = 10s\nbatch_commit_idle = 0\n", &c);
    assert_true(c.dests[0].batch_mode);
    assert_int_equal(c.dests[0].batch_commit_rows, 5000);
    assert_int_equal(c.dests[0].batch_commit_interval_ms, 10000);
    assert_int_equal(c.dests[0].batch_commit_idle_ms, 0);
    conf_free(&c);
    LOAD_OK(DEST "api = storage\nmode = stream\n", &c);
    assert_false(c.dests[0].batch_mode);
    conf_free(&c);
    /* exactly_once said out loud is fine: batch mode is exactly once anyway */
    LOAD_OK(DEST "api = storage\nmode = batch\ndelivery = exactly_once\n", &c);
    conf_free(&c);
    LOAD_BAD(DEST "api = storage\nmode = bulk\n", 3, "[destination events] mode: ",
             "expected stream or batch, got 'bulk'");
    /* mode = batch needs the Storage Write API: the mode's line */
    LOAD_BAD(DEST "project = p\ndataset = d\nmode = batch\n", 4, "[destination events] mode: ",
             "set api = storage");
    /* at_least_once contradicts it: the delivery line */
    LOAD_BAD(DEST "api = storage\nmode = batch\n\ndelivery = at_least_once\n", 5,
             "[destination events] delivery: ", "exactly once by construction",
             "mode = stream");
    /* sharded tables and several connections are refused, naming the key */
    LOAD_BAD(DEST "api = storage\nmode = batch\ntable = ev_%Y%m%d\n", 4,
             "[destination events] table: ", "does not support time-sharded tables");
    LOAD_BAD(DEST "api = storage\ntable_time_field = ts\nmode = batch\n", 3,
             "[destination events] table_time_field: ", "time-sharded");
    LOAD_BAD(DEST "api = storage\nmode = batch\nconnections = 2\n", 4,
             "[destination events] connections: ", "one AppendRows connection",
             "remove connections = 2");
    LOAD_BAD(DEST "api = storage\nbatch_commit_interval = 10ms\n", 3, "batch_commit_interval: ",
             "out of range");
    LOAD_BAD(DEST "api = storage\nbatch_commit_rows = 0\n", 3, "batch_commit_rows: ",
             "out of range");
}

static void test_missing_file(void **state)
{
    (void)state;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/does-not-exist.conf", tmpdir);
    struct conf c;
    conf_defaults(&c);
    char err[512] = "";
    assert_int_equal(conf_load(path, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_null(c.spool_dir);
}

/* ------------------------------------------------------------------------ */
/* Names and peers                                                          */
/* ------------------------------------------------------------------------ */

static void test_valid_name(void **state)
{
    (void)state;
    assert_true(conf_valid_name("a", 1));
    assert_true(conf_valid_name("Z", 1));
    assert_true(conf_valid_name("_", 1));
    assert_true(conf_valid_name("7", 1));
    assert_true(conf_valid_name("a-b.c_D9", 8));
    assert_true(conf_valid_name("_a.", 3));
    assert_true(conf_valid_name("a-", 2));
    assert_false(conf_valid_name("", 0));
    assert_false(conf_valid_name("abc", 0));
    assert_false(conf_valid_name("-a", 2));
    assert_false(conf_valid_name(".a", 2));
    assert_false(conf_valid_name("a b", 3));
    assert_false(conf_valid_name("a/b", 3));
    assert_false(conf_valid_name("a@b", 3));
    assert_false(conf_valid_name("a:b", 3));
    assert_false(conf_valid_name("caf\xc3\xa9", 5));
    assert_false(conf_valid_name("a\0b", 3));
    assert_false(conf_valid_name("a\tb", 3));
    /* only name[0..len) counts */
    assert_true(conf_valid_name("ab/cd", 2));
    assert_false(conf_valid_name("ab/cd", 3));

    char name[200];
    memset(name, 'x', sizeof name);
    assert_true(conf_valid_name(name, CONF_NAME_MAX));
    assert_false(conf_valid_name(name, CONF_NAME_MAX + 1));
    assert_int_equal(CONF_NAME_MAX, 128);
}

static void test_peer_allowed(void **state)
{
    (void)state;
    struct conf c;
    conf_defaults(&c);
    const uid_t stranger = 54321;
    const gid_t sgid = 54322;
    assert_int_not_equal(geteuid(), stranger);
    /* root and relayd's own uid always */
    assert_true(conf_peer_allowed(&c, 0, sgid));
    assert_true(conf_peer_allowed(&c, geteuid(), sgid));
    /* nobody else by default */
    assert_false(conf_peer_allowed(&c, stranger, sgid));
    assert_false(conf_peer_allowed(&c, 1000, 1000));
    conf_free(&c);

    LOAD_OK("[ingest]\nallowed_uids = 1000, 54321\nallowed_gids = 777\n" DEST, &c);
    assert_true(conf_peer_allowed(&c, stranger, sgid));          /* by uid */
    assert_true(conf_peer_allowed(&c, 1000, sgid));
    assert_true(conf_peer_allowed(&c, 4242, 777));               /* by gid */
    assert_false(conf_peer_allowed(&c, 4242, sgid));
    assert_false(conf_peer_allowed(&c, 1001, 778));
    /* a uid listed as a gid is not a uid */
    assert_false(conf_peer_allowed(&c, 777, sgid));
    assert_true(conf_peer_allowed(&c, 0, 0));
    conf_free(&c);

    LOAD_OK("[ingest]\nallowed_uids = *\n" DEST, &c);
    assert_true(conf_peer_allowed(&c, stranger, sgid));
    assert_true(conf_peer_allowed(&c, 4294967294U, 4294967294U));
    conf_free(&c);

    LOAD_OK("[ingest]\nallowed_gids = 0\n" DEST, &c);
    assert_true(conf_peer_allowed(&c, stranger, 0));
    assert_false(conf_peer_allowed(&c, stranger, sgid));
    conf_free(&c);

    /* members of socket_group are allowed, by primary gid */
    LOAD_OK("[ingest]\nsocket_group = 4242\n" DEST, &c);
    assert_true(conf_peer_allowed(&c, stranger, 4242));
    assert_false(conf_peer_allowed(&c, stranger, sgid));
    conf_free(&c);
}

/* Finds a user that is a supplementary (not primary) member of a group,
 * other than root and us. Returns false if the system has none. */
static bool find_supplementary(uid_t *uid, gid_t *primary, gid_t *group)
{
    bool found = false;
    setgrent();
    for (struct group *g; !found && (g = getgrent()) != NULL; ) {
        for (char **m = g->gr_mem; m && *m && !found; m++) {
            char name[256];
            snprintf(name, sizeof name, "%s", *m);
            gid_t gid = g->gr_gid;
            struct passwd *pw = getpwnam(name);
            if (pw && pw->pw_uid != 0 && pw->pw_uid != geteuid() && pw->pw_gid != gid) {
                *uid = pw->pw_uid;
                *primary = pw->pw_gid;
                *group = gid;
                found = true;
            }
        }
    }
    endgrent();
    return found;
}

static void test_peer_allowed_supplementary_groups(void **state)
{
    (void)state;
    /* allowed_gids and socket_group match supplementary membership too
     * (SO_PEERCRED gives only the primary gid) */
    uid_t uid;
    gid_t primary, group;
    if (!find_supplementary(&uid, &primary, &group)) {
        print_message("no user with a supplementary group on this system: skipped\n");
        return;
    }
    char text[256];
    struct conf c;
    snprintf(text, sizeof text, "[ingest]\nallowed_gids = %u\n" DEST, (unsigned)group);
    LOAD_OK(text, &c);
    assert_true(conf_peer_allowed(&c, uid, primary));
    conf_free(&c);
    snprintf(text, sizeof text, "[ingest]\nsocket_group = %u\n" DEST, (unsigned)group);
    LOAD_OK(text, &c);
    assert_true(conf_peer_allowed(&c, uid, primary));
    conf_free(&c);
    /* a group the user is not in */
    LOAD_OK("[ingest]\nallowed_gids = 54329\n" DEST, &c);
    assert_false(conf_peer_allowed(&c, uid, primary));
    conf_free(&c);
    /* no groups configured: membership does not matter */
    conf_defaults(&c);
    assert_false(conf_peer_allowed(&c, uid, primary));
    conf_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_defaults_pass_validation),
        cmocka_unit_test(test_empty_and_comment_only),
        cmocka_unit_test(test_all_keys),
        cmocka_unit_test(test_whitespace_and_verbatim_values),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_durability_values),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_bad_value_names_file_line_key),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_uints),
        cmocka_unit_test(test_modes),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_uids_and_gids),
        cmocka_unit_test(test_socket_owner_group),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_key_before_section),
        cmocka_unit_test(test_malformed_lines),
        cmocka_unit_test(test_destinations),
        cmocka_unit_test(test_too_many_destinations),
        cmocka_unit_test(test_long_destination_named_in_messages),
        cmocka_unit_test(test_default_table),
        cmocka_unit_test(test_no_destination),
        cmocka_unit_test(test_validate_rules),
        cmocka_unit_test(test_storage_parity_keys),
        cmocka_unit_test(test_batch_mode_keys),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_valid_name),
        cmocka_unit_test(test_peer_allowed),
        cmocka_unit_test(test_peer_allowed_supplementary_groups),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
