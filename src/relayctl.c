/*
 * relayctl.c -- the command-line tool: send records, show status, inspect
 * the spool. Thin: the work is in the modules and in relayd.
 */
#include "conf.h"
#include "log.h"
#include "relayclient.h"
#include "relayctl.h"
#include "status.h"
#include "spool.h"
#include "util.h"
#include "version.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
"Usage: relayctl [GLOBAL OPTIONS] COMMAND [ARGS]\n"
"\n"
"Commands:\n"
"  send [--table T] [FILE...]   stream NDJSON rows (files or stdin) to relayd, many in\n"
"                               flight; wait for every ack; summary at the end\n"
"  status                       relayd's state, spool depth per destination, rates\n"
"  spool dump [--table T] [--limit N]\n"
"                               print queued records as NDJSON (verifying checksums)\n"
"  spool check [--repair]       verify every record and dead letter; quarantine damage\n"
"  spool compact                shrink the spool file (relayd stopped)\n"
"  dlq list|stats|show|export|replay|purge\n"
"                               inspect and replay dead letters (relayctl dlq --help)\n"
"  doctor [DEST] [--row JSON] [--write-test-row]\n"
"                               check credentials, token, dataset, table, IAM, schema,\n"
"                               spool disk and sockets: ok / warn / fail with a fix\n"
"  help, version\n"
"\n"
"Global options:\n"
"  -c, --config FILE    relayd's config (default: $RELAYD_CONFIG or %s)\n"
"  -s, --socket PATH    ingest socket (default: from the config)\n"
"      --control PATH   control socket (default: from the config)\n"
"  -d, --spool DIR      spool directory (default: from the config)\n"
"      --json           machine-readable output\n"
"  -h, --help           show this help\n"
"\n"
"Exit codes: 0 success; 1 send: some rows were refused; 2 usage; 3 relayd not\n"
"running or the connection was lost before every row was acknowledged;\n"
"4 cannot connect or not allowed.\n", CONF_DEFAULT_PATH);
}

static void load_conf(struct ctx *x)
{
    const char *path = x->config ? x->config : getenv("RELAYD_CONFIG");
    if (!path)
        path = CONF_DEFAULT_PATH;
    char err[1024];
    conf_defaults(&x->conf);
    if (conf_load(path, &x->conf, err, sizeof err) == 0) {
        x->have_conf = true;
    } else {
        conf_defaults(&x->conf);   /* conf_load freed it */
        if (x->config)             /* asked for explicitly: say why it failed */
            fprintf(stderr, "relayctl: %s\n", err);
    }
    if (!x->socket)
        x->socket = x->conf.socket_path;
    if (!x->control)
        x->control = x->conf.control_socket;
    if (!x->spool_dir)
        x->spool_dir = x->conf.spool_dir;
}

static int connect_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot connect to %s: %s%s", path, strerror(e),
                 e == ENOENT || e == ECONNREFUSED ? " (is relayd running? check -c/--socket)" :
                 e == EACCES ? " (permission denied: join the socket's group)" : "");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------ send */

/* relayctl send streams the input through librelayclient: many rows in
 * flight, durable acks as events, reconnect and resend when relayd restarts
 * (at least once), giving up after --retry-for. Lines are numbered across
 * the inputs so a refusal is reported as FILE:LINE. */

#define SEND_HELP \
"Usage: relayctl send [--table T] [--retry-for DURATION] [FILE...]\n" \
"Streams NDJSON rows from the files (or stdin; '-' is stdin) to relayd with many\n" \
"rows in flight (librelayclient), waits for every acknowledgement and prints a\n" \
"summary. --table T sends the rows to destination T (else: '@T' lines in the\n" \
"input, or the server's default_table). Refused rows are reported as FILE:LINE.\n" \
"If relayd goes away (restart, crash), relayctl reconnects and resends every row\n" \
"not yet acknowledged, for up to --retry-for (default 30s; 0: give up at once):\n" \
"rows are stored at least once, so a resent row may be stored twice.\n" \
"Exit: 0 all acknowledged, 1 some refused, 3 connection lost, 4 cannot connect.\n"

#define SEND_WINDOW_ROWS  16384
#define SEND_MAX_LINE     ((64u << 20) + 256)     /* relayd's largest max_record_bytes, and '@T ' */

struct input {
    const char *name;
    uint64_t first_line;   /* global line number of its first line */
};

struct sender {
    relay_client *c;
    struct input *inputs;
    size_t n_inputs;
    uint64_t lines;                /* global line count read so far */
    uint64_t records;              /* record lines (sent, or refused here) */
    uint64_t next_seq;             /* librelayclient's next sequence number */
    uint64_t line_of[SEND_WINDOW_ROWS];   /* per seq in flight: its global line */
    uint32_t shift_of[SEND_WINDOW_ROWS];  /* bytes of the line before the JSON ("@T ") */
    uint64_t acked, refused;
    uint64_t refused_by[16];
    char reason_names[16][16];
    size_t n_reasons;
    bool tty;
    uint64_t start_us, last_progress_us;
    uint64_t lost_since_us;        /* the connection is down since (0: up) */
    char lost_why[256];
};

static void locate(const struct sender *s, uint64_t line, const char **file, uint64_t *fl)
{
    size_t lo = 0, hi = s->n_inputs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (s->inputs[mid].first_line <= line)
            lo = mid;
        else
            hi = mid;
    }
    *file = s->inputs[lo].name;
    *fl = line - s->inputs[lo].first_line + 1;
}

static void count_reason(struct sender *s, const char *reason)
{
    s->refused++;
    for (size_t i = 0; i < s->n_reasons; i++) {
        if (strcmp(s->reason_names[i], reason) == 0) {
            s->refused_by[i]++;
            return;
        }
    }
    if (s->n_reasons < 16) {
        snprintf(s->reason_names[s->n_reasons], sizeof s->reason_names[0], "%s", reason);
        s->refused_by[s->n_reasons++] = 1;
    }
}

/* Prints "FILE:LINE: REASON: MESSAGE", with the message's byte positions
 * (relative to the JSON text) moved by shift to count from the line's start. */
static void report(struct sender *s, uint64_t line, uint32_t shift, const char *reason,
                   const char *msg)
{
    char fixed[1024];
    size_t o = 0;
    const char *p = msg;
    while (shift && *p && o + 24 < sizeof fixed) {
        if (strncmp(p, "byte ", 5) == 0 && p[5] >= '0' && p[5] <= '9') {
            char *end;
            unsigned long long n = strtoull(p + 5, &end, 10);
            o += (size_t)snprintf(fixed + o, sizeof fixed - o, "byte %llu", n + shift);
            p = end;
        } else {
            fixed[o++] = *p++;
        }
    }
    fixed[o] = 0;
    const char *text = shift && !*p ? fixed : msg;
    const char *file;
    uint64_t fl;
    locate(s, line, &file, &fl);
    fprintf(stderr, "%s%s:%llu: %s: %s\n", s->tty ? "\r\033[K" : "", file, (unsigned long long)fl,
            reason, text);
    count_reason(s, reason);
}

static void on_send_event(relay_client *c, const struct relay_event *ev, void *user)
{
    struct sender *s = user;
    (void)c;
    switch (ev->type) {
    case RELAY_EV_ACKED:
        s->acked += ev->last_seq - ev->first_seq + 1;
        break;
    case RELAY_EV_REFUSED: {
        size_t i = ev->first_seq % SEND_WINDOW_ROWS;
        report(s, s->line_of[i], s->shift_of[i], ev->reason, ev->message);
        break;
    }
    case RELAY_EV_DISCONNECTED:
        if (!s->lost_since_us) {
            s->lost_since_us = util_mono_us();
            snprintf(s->lost_why, sizeof s->lost_why, "%s", ev->message ? ev->message : "");
            if (ev->error != RELAY_EDENIED)
                fprintf(stderr, "%srelayctl: %s; reconnecting\n", s->tty ? "\r\033[K" : "",
                        s->lost_why);
        }
        break;
    case RELAY_EV_CONNECTED:
        s->lost_since_us = 0;
        fprintf(stderr, "%srelayctl: reconnected; resending what was not acknowledged\n",
                s->tty ? "\r\033[K" : "");
        break;
    }
}

static void progress(struct sender *s, bool final)
{
    if (!s->tty)
        return;
    uint64_t now = util_mono_us();
    if (!final && now - s->last_progress_us < 200000)
        return;
    s->last_progress_us = now;
    double secs = (double)(now - s->start_us) / 1e6;
    fprintf(stderr, "\r\033[Ksent %llu  acked %llu  refused %llu  %.0f rows/s%s",
            (unsigned long long)s->records, (unsigned long long)s->acked,
            (unsigned long long)s->refused, secs > 0 ? (double)s->acked / secs : 0,
            s->lost_since_us ? "  (reconnecting)" : "");
    if (final)
        fputc('\n', stderr);
}

/* Waits for the client up to 200 ms. Returns 0, or the client's final error,
 * or RELAY_ELOST once relayd has been away for longer than retry_ms. */
static int gave_up(const struct sender *s, int rc, uint64_t retry_ms)
{
    if (rc == 0 && s->lost_since_us && util_mono_us() - s->lost_since_us > retry_ms * 1000)
        rc = RELAY_ELOST;
    return rc;
}

static int send_wait(struct sender *s, uint64_t retry_ms)
{
    int rc = relay_client_poll(s->c, 200);
    progress(s, false);
    return gave_up(s, rc, retry_ms);
}

/* Waits until the input is readable, meanwhile letting the client write
 * rows and read acks (a slow producer such as `tail -f` must not hold rows
 * back). Returns 0 or the client's final error. */
static int wait_input(struct sender *s, int in, uint64_t retry_ms)
{
    for (;;) {
        struct pollfd p[2] = { { in, POLLIN, 0 }, { relay_client_fd(s->c), POLLIN, 0 } };
        if (poll(p, 2, 200) < 0 && errno != EINTR)
            return 0;                               /* read() will say what is wrong */
        int rc = gave_up(s, relay_client_process(s->c), retry_ms);
        progress(s, false);
        if (rc || (p[0].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)))
            return rc;
    }
}

/* One input line (without its newline): a record for the current table, a
 * record for "@T" of its own, a table switch "@T", or blank. Returns 0 or
 * the client's final error. */
static int send_line(struct sender *s, char *line, size_t len, char *cur_table, uint64_t retry_ms)
{
    uint64_t ln = ++s->lines;
    size_t start = 0, end = len;
    while (end > start && (line[end - 1] == ' ' || line[end - 1] == '\t' || line[end - 1] == '\r'))
        end--;
    while (start < end && (line[start] == ' ' || line[start] == '\t' || line[start] == '\r'))
        start++;
    if (start == end)
        return 0;                                   /* blank: relayd ignores it too */
    const char *table = cur_table[0] ? cur_table : NULL;
    char own[CONF_NAME_MAX + 1];
    const char *json = line;
    size_t jlen = len;
    uint32_t shift = 0;
    if (line[start] == '@') {
        size_t n = start + 1;
        while (n < end && line[n] != ' ' && line[n] != '\t' && line[n] != '\r')
            n++;
        size_t nlen = n - start - 1;
        s->records += n < end;
        if (!conf_valid_name(line + start + 1, nlen)) {
            s->records += n == end;                 /* a refused line counts as a record */
            char m[160];
            snprintf(m, sizeof m, "invalid table name after '@' at byte %zu: use 1-%d letters, "
                     "digits, '_', '-' or '.'", start + 2, CONF_NAME_MAX);
            report(s, ln, 0, "table", m);
            return 0;
        }
        if (n == end) {                             /* "@T": the table of the lines that follow */
            memcpy(cur_table, line + start + 1, nlen);
            cur_table[nlen] = 0;
            return 0;
        }
        memcpy(own, line + start + 1, nlen);
        own[nlen] = 0;
        table = own;
        json = line + n + 1;
        jlen = len - n - 1;
        shift = (uint32_t)(n + 1);
    } else {
        s->records++;
    }
    size_t slot = s->next_seq % SEND_WINDOW_ROWS;
    s->line_of[slot] = ln;                          /* before the send: its events may come at once */
    s->shift_of[slot] = shift;
    for (;;) {
        int64_t seq = relay_send(s->c, table, json, jlen);
        if (seq > 0) {
            s->next_seq++;
            return 0;
        }
        if (seq == RELAY_EAGAIN) {
            int rc = send_wait(s, retry_ms);
            if (rc)
                return rc;
            continue;
        }
        if (seq == RELAY_EINVAL || seq == RELAY_ETOOBIG) {   /* refused here, not sent */
            report(s, ln, 0, seq == RELAY_ETOOBIG ? "size" : "json", relay_client_errmsg(s->c));
            return 0;
        }
        return (int)seq;
    }
}

static int cmd_send(struct ctx *x, int argc, char **argv)
{
    static const struct option opts[] = {
        { "table", required_argument, NULL, 't' },
        { "retry-for", required_argument, NULL, 'r' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *table = NULL;
    uint64_t retry_ms = 30000;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
        switch (ch) {
        case 't': table = optarg; break;
        case 'r':
            if (util_parse_duration_ms(optarg, &retry_ms) != 0) {
                fprintf(stderr, "relayctl send: --retry-for: expected a duration such as 30s or "
                        "2m, got '%s'\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case 'h':
            fputs(SEND_HELP, stdout);
            return 0;
        default:
            return EXIT_USAGE;
        }
    }
    if (table && !conf_valid_name(table, strlen(table))) {
        fprintf(stderr, "relayctl send: invalid table name '%s'\n", table);
        return EXIT_USAGE;
    }
    struct sender *s = calloc(1, sizeof *s);
    size_t nfiles = argc > optind ? (size_t)(argc - optind) : 1;
    char *lb = malloc(1 << 16);
    if (!s || !lb || !(s->inputs = calloc(nfiles, sizeof *s->inputs))) {
        fprintf(stderr, "relayctl: out of memory\n");
        return EXIT_DOWN;
    }
    s->tty = isatty(STDERR_FILENO) && !x->json;
    s->next_seq = 1;
    struct relay_client_opts o;
    relay_client_opts_init(&o);
    o.max_inflight_rows = SEND_WINDOW_ROWS;
    o.max_inflight_bytes = SEND_MAX_LINE + 2 * (size_t)(8u << 20);
    o.reconnect = retry_ms > 0;
    o.reconnect_max_ms = 500;
    o.callback = on_send_event;
    o.user = s;
    char err[512];
    int rc = relay_client_open(&s->c, x->socket, &o, err, sizeof err);
    if (rc) {
        fprintf(stderr, "relayctl: %s\n", err);
        free(s->inputs);
        free(s);
        free(lb);
        return EXIT_CONNECT;
    }
    s->start_us = util_mono_us();
    char cur_table[CONF_NAME_MAX + 1] = "";
    if (table)
        snprintf(cur_table, sizeof cur_table, "%s", table);
    size_t lcap = 1 << 16, llen = 0;
    bool usage_err = false;
    static char buf[1 << 16];
    for (size_t i = 0; i < nfiles && rc == 0; i++) {
        const char *name = argc > optind ? argv[optind + (int)i] : "-";
        int in = strcmp(name, "-") == 0 ? STDIN_FILENO : open(name, O_RDONLY | O_CLOEXEC);
        if (in < 0) {
            fprintf(stderr, "relayctl send: cannot open %s: %s\n", name, strerror(errno));
            usage_err = true;
            break;
        }
        s->inputs[s->n_inputs++] = (struct input){ in == STDIN_FILENO ? "<stdin>" : name,
                                                  s->lines + 1 };
        bool skipping = false;        /* in a line longer than SEND_MAX_LINE */
        uint64_t skipped = 0;
        ssize_t n = 0;
        llen = 0;
        while (rc == 0 && (rc = wait_input(s, in, retry_ms)) == 0 &&
               (n = read(in, buf, sizeof buf)) > 0) {
            const char *p = buf, *e = buf + n;
            while (rc == 0 && p < e) {
                const char *nl = memchr(p, '\n', (size_t)(e - p));
                size_t take = (size_t)((nl ? nl : e) - p);
                if (!skipping && llen + take > SEND_MAX_LINE) {
                    skipping = true;
                    skipped = llen;
                }
                if (skipping) {
                    skipped += take;
                } else {
                    if (llen + take > lcap) {
                        while (llen + take > lcap)
                            lcap *= 2;
                        char *nb = realloc(lb, lcap);
                        if (!nb) {
                            fprintf(stderr, "relayctl: out of memory\n");
                            return EXIT_DOWN;
                        }
                        lb = nb;
                    }
                    memcpy(lb + llen, p, take);
                    llen += take;
                }
                p += take;
                if (!nl)
                    break;
                p++;
                if (skipping) {
                    char m[128];
                    snprintf(m, sizeof m, "line of %llu bytes: longer than any record relayd "
                             "accepts (max_record_bytes is at most 64M)", (unsigned long long)skipped);
                    s->records++;
                    report(s, ++s->lines, 0, "size", m);
                    skipping = false;
                } else {
                    rc = send_line(s, lb, llen, cur_table, retry_ms);
                }
                llen = 0;
            }
        }
        if (rc == 0 && n < 0) {
            fprintf(stderr, "relayctl send: reading %s: %s\n", name, strerror(errno));
            usage_err = true;
        }
        if (rc == 0 && !usage_err && (llen || skipping))   /* a last line without newline */
            rc = skipping ? (s->records++, report(s, ++s->lines, 0, "size", "line too long"), 0)
                          : send_line(s, lb, llen, cur_table, retry_ms);
        if (in != STDIN_FILENO)
            close(in);
        if (usage_err)
            break;
    }
    /* done reading: wait for the acknowledgement of everything */
    while (rc == 0 && (rc = relay_flush(s->c, 0)) == RELAY_ETIMEDOUT)
        rc = send_wait(s, retry_ms);
    progress(s, true);
    struct relay_client_stats st;
    relay_client_stats(s->c, &st);
    double secs = (double)(util_mono_us() - s->start_us) / 1e6;
    uint64_t unacked = s->records - s->acked - s->refused;
    if (x->json) {
        json_t *js = json_object();
        json_object_set_new(js, "sent", json_integer((json_int_t)s->records));
        json_object_set_new(js, "acked", json_integer((json_int_t)s->acked));
        json_object_set_new(js, "refused", json_integer((json_int_t)s->refused));
        json_t *r = json_object();
        for (size_t i = 0; i < s->n_reasons; i++)
            json_object_set_new(r, s->reason_names[i], json_integer((json_int_t)s->refused_by[i]));
        json_object_set_new(js, "refused_by_reason", r);
        json_object_set_new(js, "unacknowledged", json_integer((json_int_t)unacked));
        json_object_set_new(js, "reconnects", json_integer((json_int_t)st.reconnects));
        json_object_set_new(js, "resent", json_integer((json_int_t)st.resent));
        json_object_set_new(js, "seconds", json_real(secs));
        char *t = json_dumps(js, JSON_COMPACT);
        printf("%s\n", t);
        free(t);
        json_decref(js);
    } else {
        fprintf(stderr, "sent %llu rows: %llu acknowledged (durable), %llu refused",
                (unsigned long long)s->records, (unsigned long long)s->acked,
                (unsigned long long)s->refused);
        for (size_t i = 0; i < s->n_reasons; i++)
            fprintf(stderr, "%s%s %llu", i ? ", " : " (", s->reason_names[i],
                    (unsigned long long)s->refused_by[i]);
        fprintf(stderr, "%s in %.2f s (%.0f rows/s)", s->n_reasons ? ")" : "", secs,
                secs > 0 ? (double)s->acked / secs : 0);
        if (st.reconnects)
            fprintf(stderr, "; %llu reconnects, %llu rows resent (at least once: a resent row "
                    "may be stored twice)", (unsigned long long)st.reconnects,
                    (unsigned long long)st.resent);
        fputc('\n', stderr);
    }
    if (rc == RELAY_EDENIED || rc == RELAY_EBUSY)
        fprintf(stderr, "relayctl: %s\n", relay_client_errmsg(s->c));
    else if (rc && unacked)
        fprintf(stderr, "relayctl: %s%s: %llu rows were not acknowledged: their fate is unknown; "
                "send them again\n", s->lost_why[0] ? s->lost_why : relay_client_errmsg(s->c),
                rc == RELAY_ELOST && retry_ms ? " (relayd did not come back within --retry-for)" : "",
                (unsigned long long)unacked);
    relay_client_close(s->c);
    int refused = s->refused != 0;
    free(s->inputs);
    free(s);
    free(lb);
    if (rc == RELAY_EDENIED || rc == RELAY_EBUSY)
        return EXIT_CONNECT;
    if (usage_err)
        return EXIT_USAGE;
    if (rc || unacked)
        return EXIT_DOWN;
    return refused ? EXIT_REFUSED : 0;
}

/* ---------------------------------------------------------------- status */

static char *control_request(const char *path, const char *req, char *err, size_t errlen)
{
    int fd = connect_unix(path, err, errlen);
    if (fd < 0)
        return NULL;
    if (util_write_all(fd, req, strlen(req)) != 0) {
        snprintf(err, errlen, "write to %s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    ssize_t n;
    while (buf && (n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (len + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    close(fd);
    if (buf)
        buf[len] = 0;
    return buf;
}

static const char *fmt_age(double s, char *buf, size_t n)
{
    if (s <= 0)
        snprintf(buf, n, "0 s");
    else if (s < 120)
        snprintf(buf, n, "%.1f s", s);
    else if (s < 7200)
        snprintf(buf, n, "%.1f min", s / 60);
    else if (s < 172800)
        snprintf(buf, n, "%.1f h", s / 3600);
    else
        snprintf(buf, n, "%.1f d", s / 86400);
    return buf;
}

static json_int_t jint(json_t *o, const char *path)
{
    /* "a.b" lookups */
    char key[64];
    const char *dot;
    while ((dot = strchr(path, '.'))) {
        snprintf(key, sizeof key, "%.*s", (int)(dot - path), path);
        o = json_object_get(o, key);
        path = dot + 1;
    }
    json_t *v = json_object_get(o, path);
    return json_is_integer(v) ? json_integer_value(v) : (json_int_t)json_number_value(v);
}

static double jreal(json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

/* Builds the same JSON shape from the spool alone when relayd is down. */
static json_t *offline_status(struct ctx *x, char *err, size_t errlen)
{
    struct spool_opts so = { .dir = x->spool_dir, .max_bytes = x->conf.max_spool_bytes,
                             .readonly = true };
    struct spool *sp;
    if (spool_open(&so, &sp, err, errlen) != SPOOL_OK)
        return NULL;
    struct spool_stats *st = malloc(sizeof *st);
    if (!st || spool_stats(sp, st) != SPOOL_OK) {
        free(st);
        spool_close(sp);
        snprintf(err, errlen, "cannot read the spool's statistics");
        return NULL;
    }
    json_t *root = json_object();
    json_object_set_new(root, "state", json_string("stopped"));
    status_add_spool(root, st, x->spool_dir, util_now_ms());
    free(st);
    spool_close(sp);
    return root;
}

static int show_status(struct ctx *x);

/* --ready: for probes. 0 accepting, 1 backpressure/refusing, 3 not running. */
static int status_ready(struct ctx *x)
{
    char err[512];
    char *resp = control_request(x->control, "status\n", err, sizeof err);
    if (!resp) {
        printf("down\n");
        return EXIT_DOWN;
    }
    json_t *root = json_loads(resp, 0, NULL);
    free(resp);
    const char *st = json_string_value(json_object_get(root, "state"));
    printf("%s\n", st ? st : "unknown");
    int rc = st && strcmp(st, "accepting") == 0 ? 0 : EXIT_REFUSED;
    json_decref(root);
    return rc;
}

static volatile sig_atomic_t watch_stop;
static void on_watch_signal(int sig) { (void)sig; watch_stop = 1; }

static int cmd_status(struct ctx *x, int argc, char **argv)
{
    bool watch = false;
    uint64_t interval_ms = 1000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            x->json = true;
        } else if (strcmp(argv[i], "--watch") == 0 || strcmp(argv[i], "-w") == 0) {
            watch = true;
        } else if (strcmp(argv[i], "--ready") == 0) {
            return status_ready(x);
        } else if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
            if (util_parse_duration_ms(argv[++i], &interval_ms) != 0 || interval_ms < 100) {
                fprintf(stderr, "relayctl status: --interval: expected a duration of at least "
                        "100ms, such as 2s\n");
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("Usage: relayctl status [--json] [--watch [--interval 1s]] | --ready\n"
                   "Shows relayd's state, ingest counters and rates, the spool's size against\n"
                   "its bound, and the depth, oldest record and delivery of each destination.\n"
                   "When relayd is not running, shows what the spool holds and exits 3.\n"
                   "--watch refreshes in place until interrupted (with --json: one document\n"
                   "per line). --ready prints the ingest state and exits 0 when relayd accepts\n"
                   "records, 1 when it holds or refuses them (spool full), 3 when it is down\n"
                   "(for readiness probes).\n");
            return 0;
        } else {
            fprintf(stderr, "relayctl status: unknown argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!watch)
        return show_status(x);
    signal(SIGINT, on_watch_signal);
    signal(SIGTERM, on_watch_signal);
    bool tty = isatty(STDOUT_FILENO) && !x->json;
    int rc = 0;
    while (!watch_stop) {
        if (tty)
            fputs("\033[H\033[2J", stdout);   /* home, clear: refresh in place */
        rc = show_status(x);
        if (tty) {
            char now[32];
            time_t t = time(NULL);
            strftime(now, sizeof now, "%H:%M:%S", localtime(&t));
            printf("\n(every %.1f s, %s; Ctrl-C to stop)\n", (double)interval_ms / 1000, now);
        }
        fflush(stdout);
        for (uint64_t slept = 0; slept < interval_ms && !watch_stop; slept += 50)
            usleep(50000);
    }
    return rc;
}

static int show_status(struct ctx *x)
{
    char err[512], err2[512];
    char *resp = control_request(x->control, "status\n", err, sizeof err);
    json_t *root = NULL;
    bool running = resp != NULL;
    if (resp) {
        json_error_t je;
        root = json_loads(resp, 0, &je);
        free(resp);
        if (!root) {
            fprintf(stderr, "relayctl: malformed status from relayd: %s\n", je.text);
            return EXIT_DOWN;
        }
        if (json_object_get(root, "error")) {
            fprintf(stderr, "relayctl: relayd says: %s\n",
                    json_string_value(json_object_get(root, "error")));
            json_decref(root);
            return EXIT_CONNECT;
        }
    } else {
        root = offline_status(x, err2, sizeof err2);
        if (!root) {
            fprintf(stderr, "relayctl: relayd is not running (%s), and the spool cannot be "
                    "read: %s\n", err, err2);
            return EXIT_DOWN;
        }
    }
    if (x->json) {
        char *t = json_dumps(root, JSON_COMPACT);
        printf("%s\n", t);
        free(t);
        json_decref(root);
        return running ? 0 : EXIT_DOWN;
    }
    char b1[32], b2[32], b3[32], b4[32];
    json_t *sp = json_object_get(root, "spool");
    if (running) {
        json_t *ing = json_object_get(root, "ingest");
        printf("relayd: %s (pid %lld, up %s), durability %s\n",
               json_string_value(json_object_get(root, "state")),
               (long long)jint(root, "pid"), fmt_age((double)jint(root, "uptime_s"), b1, sizeof b1),
               json_string_value(json_object_get(sp, "durability")));
        printf("ingest: %lld connection(s), %lld rows (%s) received, %lld stored, "
               "%.0f rows/s (%s/s) over the last 10 s\n",
               (long long)jint(ing, "connections"), (long long)jint(ing, "records"),
               util_fmt_bytes((uint64_t)jint(ing, "bytes"), b1, sizeof b1),
               (long long)jint(ing, "stored"), jreal(ing, "records_per_s"),
               util_fmt_bytes((uint64_t)jreal(ing, "bytes_per_s"), b2, sizeof b2));
        json_t *ref = json_object_get(ing, "refused");
        const char *k;
        json_t *v;
        int any = 0;
        json_object_foreach(ref, k, v) {
            if (json_integer_value(v)) {
                printf("%s%s %lld", any++ ? ", " : "refused: ", k, (long long)json_integer_value(v));
            }
        }
        if (any)
            printf("\n");
    } else {
        printf("relayd: not running (%s)\n", err);
    }
    char b5[32];
    printf("spool: %s: file %s of a %s bound (%s in use), %lld rows (%s) queued, oldest %s, "
           "%lld dead letters\n",
           json_string_value(json_object_get(sp, "dir")),
           util_fmt_bytes((uint64_t)jint(sp, "file_bytes"), b1, sizeof b1),
           util_fmt_bytes((uint64_t)jint(sp, "max_bytes"), b2, sizeof b2),
           util_fmt_bytes((uint64_t)jint(sp, "used_bytes"), b3, sizeof b3),
           (long long)jint(sp, "records"),
           util_fmt_bytes((uint64_t)jint(sp, "bytes"), b4, sizeof b4),
           fmt_age(jreal(sp, "oldest_age_s"), b5, sizeof b5), (long long)jint(sp, "dead_letters"));
    json_t *ds = json_object_get(root, "destinations");
    if (json_array_size(ds)) {
        printf("\n%-32s %12s %12s %10s\n", "DESTINATION", "ROWS", "BYTES", "OLDEST");
        size_t i;
        json_t *d;
        json_array_foreach(ds, i, d) {
            json_t *cf = json_object_get(d, "configured");
            json_t *dl = json_object_get(d, "delivery");
            printf("%-32s %12lld %12s %10s%s\n", json_string_value(json_object_get(d, "name")),
                   (long long)jint(d, "records"),
                   util_fmt_bytes((uint64_t)jint(d, "bytes"), b1, sizeof b1),
                   fmt_age(jreal(d, "oldest_age_s"), b2, sizeof b2),
                   cf && json_is_false(cf) ? "  (not in the config)" :
                   running && !dl ? "  (queue only: no project/dataset)" : "");
            if (!dl)
                continue;
            printf("  -> %s: %s, %lld delivered, %lld retried, %lld dead-lettered, %lld in flight\n",
                   json_string_value(json_object_get(dl, "table")),
                   json_string_value(json_object_get(dl, "state")),
                   (long long)jint(dl, "delivered"), (long long)jint(dl, "retried"),
                   (long long)jint(dl, "dead_lettered"), (long long)jint(dl, "in_flight"));
            const char *why = json_string_value(json_object_get(dl, "why"));
            if (jreal(dl, "backoff_s") > 0)
                printf("     waiting %.1f s: %s\n", jreal(dl, "backoff_s"), why ? why : "");
            else if (why && *why)
                printf("     %s\n", why);
            json_t *bt = json_object_get(dl, "batch");
            if (bt) {
                const char *bs = json_string_value(json_object_get(bt, "state"));
                printf("     batch mode: %s", bs ? bs : "?");
                if (bs && strcmp(bs, "idle") != 0)
                    printf(", %lld row(s) in the open batch", (long long)jint(bt, "rows"));
                printf(", %lld commit(s) of %lld row(s)", (long long)jint(bt, "commits"),
                       (long long)jint(bt, "rows_committed"));
                if (jreal(bt, "last_commit_age_s") >= 0)
                    printf(", last %s ago", fmt_age(jreal(bt, "last_commit_age_s"), b3, sizeof b3));
                printf("\n");
            }
            const char *le = json_string_value(json_object_get(dl, "last_error"));
            if (le && *le)
                printf("     last error %s ago: %s\n",
                       fmt_age(jreal(dl, "last_error_age_s"), b3, sizeof b3), le);
        }
    }
    json_decref(root);
    return running ? 0 : EXIT_DOWN;
}

/* ----------------------------------------------------------------- spool */

struct dump_ctx {
    uint64_t next;
    uint64_t left;
    uint64_t corrupt;
    size_t got;
    const char *table;
};

static int dump_one(const struct spool_record *r, void *arg)
{
    struct dump_ctx *d = arg;
    d->next = r->seq + 1;
    d->got++;
    if (d->left == 0)
        return 1;
    d->left--;
    if (r->corrupt) {
        d->corrupt++;
        printf("{\"table\":\"%s\",\"seq\":%llu,\"corrupt\":\"%s\",\"bytes\":%zu}\n", d->table,
               (unsigned long long)r->seq, r->problem, r->len);
        return 0;
    }
    printf("{\"table\":\"%s\",\"seq\":%llu,\"time_ms\":%llu,\"row\":%.*s}\n", d->table,
           (unsigned long long)r->seq, (unsigned long long)r->time_ms, (int)r->len, r->row);
    return 0;
}

static int cmd_spool(struct ctx *x, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "dump") != 0) {
        fprintf(stderr, "Usage: relayctl spool dump|check|compact ...\n"
                "       relayctl spool dump [--table T] [--limit N]\n"
                "Prints the queued records as NDJSON objects {table, seq, time_ms, row},\n"
                "verifying each checksum (a damaged record prints as {table, seq, corrupt}).\n"
                "Reads the spool directly (relayd may be running); run it as the spool's owner.\n");
        return argc < 2 ? EXIT_USAGE : (strcmp(argv[1], "-h") && strcmp(argv[1], "--help") ?
                                         EXIT_USAGE : 0);
    }
    const char *table = NULL;
    uint64_t limit = UINT64_MAX;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--table") == 0 && i + 1 < argc)
            table = argv[++i];
        else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc &&
                 util_parse_u64(argv[i + 1], UINT64_MAX, &limit) == 0)
            i++;
        else {
            fprintf(stderr, "relayctl spool dump: bad argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    char err[512];
    struct spool_opts so = { .dir = x->spool_dir, .max_bytes = x->conf.max_spool_bytes,
                             .readonly = true };
    struct spool *sp;
    if (spool_open(&so, &sp, err, sizeof err) != SPOOL_OK) {
        fprintf(stderr, "relayctl: %s\n", err);
        return EXIT_START;
    }
    struct dump_ctx d = { .left = limit };
    for (uint32_t id = 1; id <= SPOOL_MAX_DESTS && d.left; id++) {
        const char *name = spool_dest_name(sp, id);
        if (!name || (table && strcmp(table, name) != 0))
            continue;
        d.table = name;
        d.next = 0;
        do {
            d.got = 0;
            spool_read(sp, id, d.next, 4096, 64 << 20, dump_one, &d);
        } while (d.got && d.left);
    }
    spool_close(sp);
    fflush(stdout);
    if (d.corrupt)
        fprintf(stderr, "relayctl: %llu corrupt record(s) in the spool\n",
                (unsigned long long)d.corrupt);
    return d.corrupt ? 1 : 0;
}

/* ---- per-command help: answered before anything is opened ---- */

#define DLQ_FILTERS \
"Filters: --table T  --reason R  --since TIME  --until TIME  --grep REGEX  --limit N\n" \
"  TIME: 2026-11-22, 2026-11-22T10:00:00Z, or a duration ago (2h, 7d).\n" \
"Reads the spool directly, relayd running or stopped; run as the spool's owner.\n"

static const struct help {
    const char *cmd, *sub, *text;
} HELP[] = {
    { "send", NULL,
SEND_HELP },
    { "status", NULL,
"Usage: relayctl status [--json] [--watch [--interval 1s]] | --ready\n"
"Shows relayd's state, ingest counters and rates, the spool's size against\n"
"its bound, and the depth, oldest record and delivery of each destination.\n"
"When relayd is not running, shows what the spool holds and exits 3.\n"
"--watch refreshes in place until interrupted (with --json: one document\n"
"per line). --ready prints the ingest state and exits 0 when relayd accepts\n"
"records, 1 when it holds or refuses them (spool full), 3 when it is down\n"
"(for readiness probes).\n" },
    { "spool", NULL,
"Usage: relayctl spool dump|check|compact ...\n"
"  dump [--table T] [--limit N]   print queued records as NDJSON (verifying checksums)\n"
"  check [--repair]               verify every record and dead letter; quarantine damage\n"
"  compact                        shrink the spool file (relayd stopped)\n"
"relayctl spool SUBCOMMAND --help for each.\n" },
    { "spool", "dump",
"Usage: relayctl spool dump [--table T] [--limit N]\n"
"Prints the queued records as NDJSON objects {table, seq, time_ms, row},\n"
"verifying each checksum (a damaged record prints as {table, seq, corrupt}).\n"
"Reads the spool directly (relayd may be running); run it as the spool's owner.\n"
"Exit: 0, or 1 when a record is corrupt.\n" },
    { "spool", "check",
"Usage: relayctl spool check [--repair] [--json]\n"
"Verifies the checksum of every queued record and dead letter. With --repair,\n"
"moves damaged records to the dead-letter store (reason corrupt) so relayd can\n"
"deliver the rest; refused while relayd runs. Exit: 0 clean, 1 damage found.\n" },
    { "spool", "compact",
"Usage: relayctl spool compact\n"
"Rewrites the spool file without its free pages (mdb_env_copy with compaction)\n"
"and swaps it in. relayd must be stopped; nothing queued is lost.\n" },
    { "dlq", NULL, NULL },    /* relayctl_dlq.c's own usage */
    { "dlq", "list",
"Usage: relayctl dlq list [FILTERS] [--json]\n"
"One line per dead letter: id, time, table, reason, message (--json: NDJSON).\n"
DLQ_FILTERS },
    { "dlq", "stats",
"Usage: relayctl dlq stats [FILTERS] [--json]\n"
"Counts and bytes of dead letters by table and by reason; oldest and newest.\n"
DLQ_FILTERS },
    { "dlq", "show",
"Usage: relayctl dlq show ID [--json]\n"
"One dead letter: the row pretty-printed, its table, reason, message, time and\n"
"every detail BigQuery gave.\n" },
    { "dlq", "export",
"Usage: relayctl dlq export [FILTERS] [--with-meta] [--gzip] [-o FILE]\n"
"NDJSON of the rows (or, with --with-meta, of whole entries with their ids and\n"
"details, which `dlq replay --file` takes back after editing); streams, so any\n"
"number of entries fits; -o FILE writes to a file (0600).\n"
DLQ_FILTERS },
    { "dlq", "replay",
"Usage: relayctl dlq replay [FILTERS] [--to TABLE] [--dry-run] [--rate N/s]\n"
"       relayctl dlq replay --file FILE [--to TABLE]\n"
"Moves dead letters back into the live queue, each atomically (an entry is in\n"
"exactly one place at any time); --to sends them to another destination;\n"
"--file replays the rows of an edited `export --with-meta` in place of their\n"
"entries (nothing is replayed twice).\n"
DLQ_FILTERS },
    { "dlq", "purge",
"Usage: relayctl dlq purge [FILTERS] [--older-than DUR] [--yes] [--dry-run]\n"
"Deletes dead letters for good. Asks on a terminal; elsewhere needs --yes.\n"
DLQ_FILTERS },
    { "doctor", NULL, NULL },   /* relayctl_doctor.c's own usage */
    { "help", NULL, NULL },
    { "version", NULL, "Usage: relayctl version\nPrints relayctl's version.\n" },
};

static bool is_help(const char *a)
{
    return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0;
}

/* `relayctl CMD [SUB] ... --help`: prints the most specific usage to stdout
 * and returns 0, or returns -1 when no --help is there. Touches nothing. */
static int answer_help(int argc, char **argv)
{
    bool want = false;
    for (int i = 1; i < argc; i++)
        want = want || is_help(argv[i]);
    if (!want)
        return -1;
    const char *cmd = argv[0], *sub = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;
    const struct help *best = NULL;
    for (size_t i = 0; i < sizeof HELP / sizeof HELP[0]; i++) {
        if (strcmp(HELP[i].cmd, cmd) != 0)
            continue;
        if (!HELP[i].sub && !best)
            best = &HELP[i];
        if (HELP[i].sub && sub && strcmp(HELP[i].sub, sub) == 0)
            best = &HELP[i];
    }
    if (!best) {
        fprintf(stderr, "relayctl: unknown command '%s' (try relayctl --help)\n", cmd);
        return EXIT_USAGE;
    }
    if (!best->text) {
        if (strcmp(cmd, "dlq") == 0)
            ctl_dlq_usage(stdout);
        else if (strcmp(cmd, "doctor") == 0)
            ctl_doctor_usage(stdout);
        else
            usage(stdout);
    } else {
        fputs(best->text, stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "socket", required_argument, NULL, 's' },
        { "control", required_argument, NULL, 'C' },
        { "spool", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    struct ctx x = { 0 };
    int ch;
    log_init("relayctl", LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    /* global options stop at the command name */
    while ((ch = getopt_long(argc, argv, "+c:s:d:hV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': x.config = optarg; break;
        case 's': x.socket = optarg; break;
        case 'C': x.control = optarg; break;
        case 'd': x.spool_dir = optarg; break;
        case 'j': x.json = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("relayctl %s\n", RELAY_VERSION); return 0;
        default:  usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[optind];
    int cargc = argc - optind;
    char **cargv = argv + optind;
    for (int i = 1; i < cargc; i++)       /* --json may follow the command too */
        if (strcmp(cargv[i], "--json") == 0 && strcmp(cmd, "status") != 0) {
            x.json = true;
            memmove(&cargv[i], &cargv[i + 1], (size_t)(cargc - i) * sizeof *cargv);
            cargc--;
            i--;
        }
    int hrc = answer_help(cargc, cargv);
    if (hrc >= 0)
        return hrc;
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0) {
        printf("relayctl %s\n", RELAY_VERSION);
        return 0;
    }
    load_conf(&x);
    int rc;
    if (strcmp(cmd, "send") == 0)
        rc = cmd_send(&x, cargc, cargv);
    else if (strcmp(cmd, "status") == 0)
        rc = cmd_status(&x, cargc, cargv);
    else if (strcmp(cmd, "spool") == 0 && cargc > 1 && strcmp(cargv[1], "check") == 0)
        rc = ctl_spool_check(&x, cargc, cargv);
    else if (strcmp(cmd, "spool") == 0 && cargc > 1 && strcmp(cargv[1], "compact") == 0)
        rc = ctl_spool_compact(&x, cargc, cargv);
    else if (strcmp(cmd, "spool") == 0)
        rc = cmd_spool(&x, cargc, cargv);
    else if (strcmp(cmd, "dlq") == 0)
        rc = ctl_dlq(&x, cargc, cargv);
    else if (strcmp(cmd, "doctor") == 0)
        rc = ctl_doctor(&x, cargc, cargv);
    else {
        fprintf(stderr, "relayctl: unknown command '%s' (try relayctl --help)\n", cmd);
        rc = EXIT_USAGE;
    }
    conf_free(&x.conf);
    return rc;
}
