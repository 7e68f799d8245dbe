/*
 * relayd.c -- the daemon's entry point: options, config, spool, then the
 * ingest loop. Everything else lives in the modules.
 */
#include "auth.h"
#include "committer.h"
#include "https.h"
#include "conf.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "rowenc.h"
#include "sender.h"
#include "spool.h"
#include "util.h"
#include "version.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
"Usage: relayd [OPTIONS]\n"
"Reliable on-disk spooling relay: producers write NDJSON rows to a Unix socket,\n"
"relayd acknowledges each row once it is durable in its LMDB spool, and delivers\n"
"the spool to BigQuery.\n"
"\n"
"Options:\n"
"  -c, --config FILE     config file (default: $RELAYD_CONFIG or %s)\n"
"      --check-config    validate the config file and exit (0 valid, 3 invalid)\n"
"  -l, --log-level LVL   debug, info, warn or error (overrides [relayd] log_level)\n"
"  -h, --help            show this help and exit\n"
"  -V, --version         show the version and exit\n"
"\n"
"Signals: SIGTERM/SIGINT finish the commit in progress and exit 0; SIGHUP reloads\n"
"the config (destinations, peers, limits, log level).\n"
"Exit codes: 0 clean stop, 2 usage, 3 invalid config, 4 cannot start,\n"
"            5 I/O error in a spool commit (restart recovers from disk).\n"
"Docs: relayd(8), relayd.conf(5), docs/protocol.md\n", CONF_DEFAULT_PATH);
}

/* Takes an exclusive lock on the spool directory so two daemons never share it. */
static int lock_spool(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/relayd.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        if (n > 0)
            pid[strcspn(pid, "\n")] = 0;
        snprintf(err, errlen, "another relayd (pid %s) is using the spool %s: stop it first",
                 n > 0 ? pid : "?", dir);
        close(fd);
        return -1;
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) < 0)
        log_warn("cannot write pid to %s: %s", path, strerror(errno));
    return fd;   /* held until exit */
}

static int prepare_spool_dir(const char *dir, char *err, size_t errlen)
{
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        if (util_mkdir_p(parent, 0755) != 0) {
            snprintf(err, errlen, "cannot create %s: %s", parent, strerror(errno));
            return -1;
        }
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create spool directory %s: %s", dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s is not a directory", dir);
        return -1;
    }
    if (st.st_mode & 077)
        log_warn("spool directory %s has mode %04o: others can read queued records; "
                 "chmod 0700 it", dir, (unsigned)(st.st_mode & 07777));
    return 0;
}

/* "FILE:LINE: " for a key set on that line, "FILE: " for a default. */
static void where(char *out, size_t n, const char *path, unsigned line)
{
    if (line)
        snprintf(out, n, "%s:%u: ", path, line);
    else
        snprintf(out, n, "%s: ", path);
}

/* The nearest existing ancestor of path (path itself included) must be a
 * directory we may create entries in. */
static int creatable(const char *path, char *why, size_t n)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    struct stat st;
    while (stat(p, &st) != 0) {
        if (errno != ENOENT) {
            snprintf(why, n, "%s: %s", p, strerror(errno));
            return -1;
        }
        char *slash = strrchr(p, '/');
        if (!slash || slash == p) {
            snprintf(p, sizeof p, "%s", slash == p ? "/" : ".");
            break;
        }
        *slash = 0;
    }
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(why, n, "%s is not a directory", p);
        return -1;
    }
    if (access(p, W_OK | X_OK) != 0) {
        snprintf(why, n, "cannot create entries in %s: %s", p, strerror(errno));
        return -1;
    }
    return 0;
}

/* What a start would fail on, beyond the syntax conf_load checks: files that
 * must exist and parse (ca_file as PEM certificates, credentials as a key),
 * the spool directory and the sockets' directories. --check-config and a
 * start run the same checks and print the same message. */
/* The schema file must be readable and hold a schema the encoder accepts. */
static int check_schema_file(const char *file, char *why, size_t wl)
{
    FILE *f = fopen(file, "rb");
    if (!f) {
        snprintf(why, wl, "%s: cannot open: %s", file, strerror(errno));
        return -1;
    }
    struct buf text = { 0 };
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&text, chunk, n);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(why, wl, "%s: cannot read", file);
        buf_free(&text);
        return -1;
    }
    struct rowenc_schema *s = NULL;
    struct rowenc_error re;
    int rc = 0;
    if (rowenc_schema_parse(text.data ? text.data : "", text.len, &s, &re) != ROWENC_OK) {
        snprintf(why, wl, "%s: %s", file, re.msg);
        rc = -1;
    } else {
        rowenc_schema_free(s);
    }
    buf_free(&text);
    return rc;
}

static int preflight(const struct conf *c, const char *path, char *err, size_t errlen)
{
    char at[4200], why[1024];
    const char *dir_of[3] = { c->socket_path, c->control_socket, c->forward_socket };
    unsigned line_of[3] = { c->socket_line, c->control_socket_line, c->forward_socket_line };
    const char *name_of[3] = { "[ingest] socket", "[relayd] control_socket", "[forward] socket" };
    for (size_t i = 0; i < c->n_dests; i++) {
        const struct conf_dest *d = &c->dests[i];
        if (!conf_dest_delivers(d))
            continue;
        if (d->ca_file && https_check_ca_file(d->ca_file, why, sizeof why) != 0) {
            where(at, sizeof at, path, d->ca_file_line);
            snprintf(err, errlen, "%s[destination %s] ca_file: %s", at, d->name, why);
            return -1;
        }
        struct auth_opts ao = { .credentials = d->credentials, .ca_file = d->ca_file };
        struct auth *a = NULL;
        if (auth_create(&ao, &a, why, sizeof why) != 0) {
            where(at, sizeof at, path, d->credentials_line);
            snprintf(err, errlen, "%s[destination %s] credentials: %s", at, d->name, why);
            return -1;
        }
        auth_free(a);
        if (d->schema_file && check_schema_file(d->schema_file, why, sizeof why) != 0) {
            where(at, sizeof at, path, d->schema_file_line);
            snprintf(err, errlen, "%s[destination %s] schema_file: %s", at, d->name, why);
            return -1;
        }
    }
    if (creatable(c->spool_dir, why, sizeof why) != 0) {
        where(at, sizeof at, path, c->spool_dir_line);
        snprintf(err, errlen, "%s[spool] dir: %s", at, why);
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (!dir_of[i])
            continue;
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", dir_of[i]);
        char *slash = strrchr(dir, '/');
        if (slash)
            *(slash == dir ? slash + 1 : slash) = 0;
        else
            snprintf(dir, sizeof dir, ".");
        if (creatable(dir, why, sizeof why) != 0) {
            where(at, sizeof at, path, line_of[i]);
            snprintf(err, errlen, "%s%s: %s", at, name_of[i], why);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", no_argument, NULL, 'C' },
        { "log-level", required_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = getenv("RELAYD_CONFIG");
    const char *level = NULL;
    bool check = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:l:hV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': path = optarg; break;
        case 'C': check = true; break;
        case 'l': level = optarg; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("relayd %s\n", RELAY_VERSION); return 0;
        default:  usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "relayd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!path)
        path = CONF_DEFAULT_PATH;

    enum log_level lvl = LOG_INFO;
    if (level && log_parse_level(level, &lvl) != 0) {
        fprintf(stderr, "relayd: --log-level: expected debug, info, warn or error, got '%s'\n",
                level);
        return EXIT_USAGE;
    }
    struct conf *conf = malloc(sizeof *conf);
    char err[1024];
    if (!conf)
        return EXIT_START;
    conf_defaults(conf);
    if (conf_load(path, conf, err, sizeof err) != 0) {
        fprintf(stderr, "relayd: invalid config: %s\n", err);
        free(conf);
        return EXIT_CONFIG;
    }
    if (preflight(conf, path, err, sizeof err) != 0) {
        fprintf(stderr, "relayd: invalid config: %s\n", err);
        conf_free(conf);
        free(conf);
        return EXIT_CONFIG;
    }
    if (check) {
        printf("%s: valid (%zu destination%s, spool %s, socket %s)\n", path, conf->n_dests,
               conf->n_dests == 1 ? "" : "s", conf->spool_dir, conf->socket_path);
        conf_free(conf);
        free(conf);
        return 0;
    }
    if (level)
        conf->log_level = (int)lvl;
    log_init("relayd", (enum log_level)conf->log_level);

    /* Signals are taken by the ingest loop's signalfd: block them in every thread. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    umask(077);

    int lockfd = -1;
    if (prepare_spool_dir(conf->spool_dir, err, sizeof err) != 0 ||
        (lockfd = lock_spool(conf->spool_dir, err, sizeof err)) < 0) {
        log_error("%s", err);
        conf_free(conf);
        free(conf);
        return EXIT_START;
    }

    uint64_t t0 = util_mono_us();
    struct spool_opts so = {
        .dir = conf->spool_dir,
        .max_bytes = conf->max_spool_bytes,
        .durability = conf->durability == DURABILITY_FSYNC ? SPOOL_SYNC :
                      conf->durability == DURABILITY_OS ? SPOOL_NOSYNC_PERIODIC : SPOOL_NOSYNC,
    };
    struct spool *spool;
    int rc = spool_open(&so, &spool, err, sizeof err);
    if (rc != SPOOL_OK) {
        log_error("%s", err);
        conf_free(conf);
        free(conf);
        return EXIT_START;
    }
    int cleared = 0;
    spool_reader_check(spool, &cleared);
    if (cleared)
        log_warn("cleared %d stale LMDB reader slot(s) left by dead processes", cleared);

    /* The sender keeps pointers into this config for its whole life; ingest
     * takes ownership of conf and may replace it on SIGHUP, so the sender
     * gets a copy of its own. */
    struct conf *sconf = malloc(sizeof *sconf);
    struct sender *sender = NULL;
    if (!sconf) {
        spool_close(spool);
        return EXIT_START;
    }
    conf_defaults(sconf);
    if (conf_load(path, sconf, err, sizeof err) != 0 ||
        sender_create(sconf, spool, &sender, err, sizeof err) != 0) {
        log_error("%s", err);
        spool_close(spool);
        return EXIT_START;
    }
    struct ingest_hooks hooks = { .on_commit = sender_wake, .status = sender_status,
                                  .reload = sender_reload, .arg = sender };
    struct ingest *in;
    if (ingest_create_hooked(conf, spool, &hooks, &in, err, sizeof err) != 0) {
        log_error("%s", err);
        sender_free(sender);
        spool_close(spool);
        return EXIT_START;
    }
    if (sender_start(sender) != 0) {
        log_error("cannot start the sender thread");
        return EXIT_START;
    }
    struct spool_stats *st = malloc(sizeof *st);
    if (st && spool_stats(spool, st) == SPOOL_OK) {
        char b1[32], b2[32];
        log_info("spool %s opened in %.1f ms: %llu records (%s) queued, file %s", conf->spool_dir,
                 (double)(util_mono_us() - t0) / 1000, (unsigned long long)st->records,
                 util_fmt_bytes(st->bytes, b1, sizeof b1), util_fmt_bytes(st->file_bytes, b2, sizeof b2));
    }
    free(st);
    struct metrics *metrics = NULL;
    if (conf->metrics_listen) {
        if (metrics_start(conf->metrics_listen, conf->control_socket, &metrics, err,
                          sizeof err) != 0) {
            log_error("%s", err);
            return EXIT_START;
        }
        log_info("metrics on %s (/metrics, /healthz, /readyz)", conf->metrics_listen);
    }
    int code = ingest_run(in);
    metrics_stop(metrics);
    ingest_destroy(in);
    sender_stop(sender, 5000);   /* let requests in flight finish and record them */
    sender_free(sender);
    conf_free(sconf);
    free(sconf);
    spool_close(spool);
    close(lockfd);
    return code;
}
