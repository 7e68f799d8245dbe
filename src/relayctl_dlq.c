/*
 * relayctl_dlq.c -- relayctl's dead-letter and spool maintenance commands:
 *   dlq list|stats|show|export|replay|purge, spool check|compact.
 *
 * They open the spool directly (LMDB allows several processes), so they work
 * with relayd running or stopped. Every change is a spool transaction: a
 * replayed entry leaves the dead-letter store in the transaction that puts it
 * back in a queue, so a kill -9 at any moment leaves it in exactly one place,
 * and running a replay twice replays nothing twice. Reads go in pages of a
 * few thousand entries, so memory stays bounded whatever the store's size.
 */
#include "dlq.h"
#include "json_check.h"
#include "relayctl.h"
#include "spool.h"
#include "util.h"
#include "version.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define PAGE 2048          /* entries read per read transaction */
#define TXN_ROWS 500       /* entries changed per write transaction */

/* ---- filters ---- */

struct filter {
    const char *table;
    const char *reason;
    uint64_t since_ms, until_ms;   /* dead time window; 0 = open */
    bool has_grep;
    regex_t grep;
    uint64_t limit;                /* 0 = no limit */
};

/* "2026-11-22", "2026-11-22T10:00:00Z", "2026-11-22 10:00:00", or a duration
 * meaning that long ago ("2h", "30m", "7d"). */
static int parse_when(const char *s, uint64_t *out_ms)
{
    uint64_t dur;
    if (util_parse_duration_ms(s, &dur) == 0 && strpbrk(s, "smhd")) {
        uint64_t now = util_now_ms();
        *out_ms = dur > now ? 0 : now - dur;
        return 0;
    }
    static const char *const fmts[] = { "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S",
                                        "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%MZ",
                                        "%Y-%m-%d %H:%M", "%Y-%m-%d" };
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const char *end = strptime(s, fmts[i], &tm);
        if (end && *end == 0) {
            time_t t = timegm(&tm);
            if (t < 0)
                return -1;
            *out_ms = (uint64_t)t * 1000;
            return 0;
        }
    }
    return -1;
}

static bool match(struct spool *sp, const struct filter *f, const struct dlq_entry *e)
{
    if (f->table) {
        const char *n = spool_dest_name(sp, e->dest);
        if (!n || strcmp(n, f->table) != 0)
            return false;
    }
    if (f->reason && (strlen(f->reason) != e->reason_len ||
                      memcmp(f->reason, e->reason, e->reason_len) != 0))
        return false;
    if (f->since_ms && e->dead_ms < f->since_ms)
        return false;
    if (f->until_ms && e->dead_ms >= f->until_ms)
        return false;
    if (f->has_grep) {
        /* the pattern runs over the row and the detail (NUL-terminated copies) */
        char *row = strndup(e->row, e->row_len), *det = strndup(e->detail, e->detail_len);
        bool hit = (row && regexec(&f->grep, row, 0, NULL, 0) == 0) ||
                   (det && regexec(&f->grep, det, 0, NULL, 0) == 0);
        free(row);
        free(det);
        if (!hit)
            return false;
    }
    return true;
}

/* Parses the filter options shared by list/stats/export/replay/purge; other
 * options are left for the caller in rest[]. Returns 0 or EXIT_USAGE. */
static int parse_filter(int argc, char **argv, struct filter *f, char **rest, int *nrest)
{
    memset(f, 0, sizeof *f);
    *nrest = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--table") && v) {
            f->table = v;
            i++;
        } else if (!strcmp(a, "--reason") && v) {
            f->reason = v;
            i++;
        } else if ((!strcmp(a, "--since") || !strcmp(a, "--until") || !strcmp(a, "--older-than")) && v) {
            uint64_t t;
            if (parse_when(v, &t) != 0) {
                fprintf(stderr, "relayctl dlq: %s: expected %s, got '%s'\n", a,
                        !strcmp(a, "--older-than") ? "a duration such as 7d or 12h" :
                        "a time such as 2026-11-22, 2026-11-22T10:00:00Z or a duration ago "
                        "such as 2h", v);
                return EXIT_USAGE;
            }
            if (!strcmp(a, "--since"))
                f->since_ms = t;
            else
                f->until_ms = t;   /* --until and --older-than: dead before t */
            i++;
        } else if (!strcmp(a, "--grep") && v) {
            int rc = regcomp(&f->grep, v, REG_EXTENDED | REG_NOSUB);
            if (rc) {
                char msg[128];
                regerror(rc, &f->grep, msg, sizeof msg);
                fprintf(stderr, "relayctl dlq: --grep '%s': %s\n", v, msg);
                return EXIT_USAGE;
            }
            f->has_grep = true;
            i++;
        } else if (!strcmp(a, "--limit") && v) {
            if (util_parse_u64(v, UINT64_MAX, &f->limit) != 0) {
                fprintf(stderr, "relayctl dlq: --limit: expected a number, got '%s'\n", v);
                return EXIT_USAGE;
            }
            i++;
        } else {
            rest[(*nrest)++] = argv[i];
        }
    }
    return 0;
}

static void filter_free(struct filter *f)
{
    if (f->has_grep)
        regfree(&f->grep);
}

/* ---- iteration in pages ---- */

typedef int (*entry_fn)(struct spool *sp, const struct dlq_entry *e, void *arg);

struct walk {
    struct spool *sp;
    const struct filter *f;
    entry_fn fn;
    void *arg;
    uint64_t next, seen, matched;
    size_t got;
    int stop;
};

static int walk_one(const struct dlq_entry *e, void *arg)
{
    struct walk *w = arg;
    w->next = e->seq + 1;
    w->got++;
    w->seen++;
    if (!match(w->sp, w->f, e))
        return 0;
    w->matched++;
    if ((w->stop = w->fn(w->sp, e, w->arg)) != 0)
        return 1;
    if (w->f->limit && w->matched >= w->f->limit) {
        w->stop = 1;
        return 1;
    }
    return 0;
}

/* Calls fn for each matching entry, page by page (one read transaction per
 * page). Returns the number of matches. */
static uint64_t walk(struct spool *sp, const struct filter *f, entry_fn fn, void *arg)
{
    struct walk w = { .sp = sp, .f = f, .fn = fn, .arg = arg };
    do {
        w.got = 0;
        spool_dlq_read(sp, w.next, PAGE, walk_one, &w);
        /* the pages just read stay in the page cache, not in our resident
         * set: memory stays flat however large the store */
        spool_release_pages(sp);
    } while (w.got == PAGE && !w.stop);
    return w.matched;
}

static struct spool *open_spool(struct ctx *x, bool readonly)
{
    char err[512];
    struct spool_opts so = { .dir = x->spool_dir, .max_bytes = x->conf.max_spool_bytes,
                             .readonly = readonly };
    struct spool *sp;
    if (spool_open(&so, &sp, err, sizeof err) != SPOOL_OK) {
        fprintf(stderr, "relayctl: %s\n", err);
        return NULL;
    }
    return sp;
}

static void fmt_time(uint64_t ms, char *buf, size_t n)
{
    if (!ms) {
        snprintf(buf, n, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* An entry as a JSON object (row parsed when it is JSON, else a string). */
static json_t *entry_json(struct spool *sp, const struct dlq_entry *e, bool with_row)
{
    char t1[32], t2[32], t3[32], t4[32];
    const char *dest = spool_dest_name(sp, e->dest);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer((json_int_t)e->seq));
    json_object_set_new(o, "table", json_string(dest ? dest : "?"));
    json_object_set_new(o, "reason", json_stringn(e->reason, e->reason_len));
    json_object_set_new(o, "detail", json_stringn(e->detail, e->detail_len));
    json_object_set_new(o, "http_status", json_integer(e->http_status));
    json_object_set_new(o, "attempts", json_integer(e->attempts));
    fmt_time(e->enqueued_ms, t1, sizeof t1);
    fmt_time(e->first_attempt_ms, t2, sizeof t2);
    fmt_time(e->last_attempt_ms, t3, sizeof t3);
    fmt_time(e->dead_ms, t4, sizeof t4);
    json_object_set_new(o, "queued_at", json_string(t1));
    json_object_set_new(o, "first_attempt", json_string(t2));
    json_object_set_new(o, "last_attempt", json_string(t3));
    json_object_set_new(o, "dead_at", json_string(t4));
    json_object_set_new(o, "bytes", json_integer((json_int_t)e->row_len));
    if (with_row) {
        json_t *row = json_loadb(e->row, e->row_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (!row) {   /* damaged: keep the bytes visible, escaped */
            char *hex = malloc(e->row_len * 2 + 1);
            for (size_t i = 0; hex && i < e->row_len; i++)
                sprintf(hex + 2 * i, "%02x", (unsigned char)e->row[i]);
            json_object_set_new(o, "row_hex", json_string(hex ? hex : ""));
            free(hex);
        } else {
            json_object_set_new(o, "row", row);
        }
    }
    return o;
}

static void print_json(json_t *o, FILE *out)
{
    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (t) {
        fputs(t, out);
        fputc('\n', out);
        free(t);
    }
}

static int entry_text(struct spool *sp, const struct dlq_entry *e, struct buf *b);

/* ---- progress ---- */

struct progress {
    bool on;
    uint64_t total, done;
    uint64_t start_us, last_us;
    const char *what;
};

static void progress_show(struct progress *p, bool final)
{
    if (!p->on)
        return;
    uint64_t now = util_mono_us();
    if (!final && now - p->last_us < 150000)
        return;
    p->last_us = now;
    double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 100;
    int bar = (int)(pct / 5);
    double secs = (double)(now - p->start_us) / 1e6;
    fprintf(stderr, "\r\033[K[%.*s%.*s] %3.0f%% %llu/%llu %s  %.0f/s", bar, "####################",
            20 - bar, "                    ", pct, (unsigned long long)p->done,
            (unsigned long long)p->total, p->what, secs > 0 ? (double)p->done / secs : 0);
    if (final)
        fputc('\n', stderr);
}

/* ---- list ---- */

struct list_ctx {
    bool json;
};

static int list_one(struct spool *sp, const struct dlq_entry *e, void *arg)
{
    struct list_ctx *l = arg;
    if (l->json) {
        struct buf b = { 0 };
        if (entry_text(sp, e, &b) == 0) {
            fwrite(b.data, 1, b.len, stdout);
            fputc('\n', stdout);
        }
        buf_free(&b);
        return 0;
    }
    char when[32], msg[64];
    fmt_time(e->dead_ms, when, sizeof when);
    size_t n = e->detail_len < sizeof msg - 1 ? e->detail_len : sizeof msg - 4;
    memcpy(msg, e->detail, n);
    msg[n] = 0;
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    if (e->detail_len > n)
        strcpy(msg + n, "...");
    const char *dest = spool_dest_name(sp, e->dest);
    printf("%-12llu %-20s %-20s %-12.*s %s\n", (unsigned long long)e->seq, when,
           dest ? dest : "?", (int)e->reason_len, e->reason, msg);
    return 0;
}

static int cmd_list(struct ctx *x, struct spool *sp, const struct filter *f)
{
    struct list_ctx l = { x->json };
    if (!x->json)
        printf("%-12s %-20s %-20s %-12s %s\n", "ID", "DEAD AT", "TABLE", "REASON", "MESSAGE");
    uint64_t n = walk(sp, f, list_one, &l);
    if (!x->json && isatty(STDOUT_FILENO))
        printf("(%llu entr%s%s)\n", (unsigned long long)n, n == 1 ? "y" : "ies",
               f->limit && n >= f->limit ? ", --limit reached" : "");
    return 0;
}

/* ---- stats ---- */

struct stat_row {
    char key[SPOOL_DEST_MAX + 64];
    uint64_t n, bytes, oldest, newest;
};

struct stats_ctx {
    struct stat_row by_table[64], by_reason[64];
    size_t nt, nr;
    uint64_t n, bytes, oldest, newest;
};

static void tally(struct stat_row *rows, size_t *nrows, const char *key, size_t klen,
                  const struct dlq_entry *e, size_t size)
{
    struct stat_row *r = NULL;
    for (size_t i = 0; i < *nrows; i++)
        if (strlen(rows[i].key) == klen && !memcmp(rows[i].key, key, klen))
            r = &rows[i];
    if (!r) {
        if (*nrows == 64)
            r = &rows[63];   /* beyond 64 distinct keys: counted under the last one */
        else {
            r = &rows[(*nrows)++];
            memset(r, 0, sizeof *r);
            snprintf(r->key, sizeof r->key, "%.*s", (int)klen, key);
        }
    }
    r->n++;
    r->bytes += size;
    if (!r->oldest || e->dead_ms < r->oldest)
        r->oldest = e->dead_ms;
    if (e->dead_ms > r->newest)
        r->newest = e->dead_ms;
}

static int stats_one(struct spool *sp, const struct dlq_entry *e, void *arg)
{
    struct stats_ctx *s = arg;
    size_t size = dlq_encoded_size(e);
    const char *dest = spool_dest_name(sp, e->dest);
    if (!dest)
        dest = "?";
    tally(s->by_table, &s->nt, dest, strlen(dest), e, size);
    tally(s->by_reason, &s->nr, e->reason, e->reason_len, e, size);
    s->n++;
    s->bytes += size;
    if (!s->oldest || e->dead_ms < s->oldest)
        s->oldest = e->dead_ms;
    if (e->dead_ms > s->newest)
        s->newest = e->dead_ms;
    return 0;
}

static json_t *stat_rows_json(const struct stat_row *rows, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++) {
        char a[32], b[32];
        fmt_time(rows[i].oldest, a, sizeof a);
        fmt_time(rows[i].newest, b, sizeof b);
        json_t *r = json_object();
        json_object_set_new(r, "entries", json_integer((json_int_t)rows[i].n));
        json_object_set_new(r, "bytes", json_integer((json_int_t)rows[i].bytes));
        json_object_set_new(r, "oldest", json_string(a));
        json_object_set_new(r, "newest", json_string(b));
        json_object_set_new(o, rows[i].key, r);
    }
    return o;
}

static void print_stat_rows(const char *title, const struct stat_row *rows, size_t n)
{
    printf("\n%-32s %10s %12s  %-20s  %-20s\n", title, "ENTRIES", "BYTES", "OLDEST", "NEWEST");
    for (size_t i = 0; i < n; i++) {
        char a[32], b[32], sz[32];
        fmt_time(rows[i].oldest, a, sizeof a);
        fmt_time(rows[i].newest, b, sizeof b);
        printf("%-32s %10llu %12s  %-20s  %-20s\n", rows[i].key, (unsigned long long)rows[i].n,
               util_fmt_bytes(rows[i].bytes, sz, sizeof sz), a, b);
    }
}

static int cmd_stats(struct ctx *x, struct spool *sp, const struct filter *f)
{
    struct stats_ctx *s = calloc(1, sizeof *s);
    if (!s)
        return EXIT_DOWN;
    walk(sp, f, stats_one, s);
    char a[32], b[32], sz[32];
    fmt_time(s->oldest, a, sizeof a);
    fmt_time(s->newest, b, sizeof b);
    if (x->json) {
        json_t *o = json_object();
        json_object_set_new(o, "entries", json_integer((json_int_t)s->n));
        json_object_set_new(o, "bytes", json_integer((json_int_t)s->bytes));
        json_object_set_new(o, "oldest", json_string(a));
        json_object_set_new(o, "newest", json_string(b));
        json_object_set_new(o, "by_table", stat_rows_json(s->by_table, s->nt));
        json_object_set_new(o, "by_reason", stat_rows_json(s->by_reason, s->nr));
        print_json(o, stdout);
        json_decref(o);
    } else {
        printf("%llu dead letter%s, %s, oldest %s, newest %s\n", (unsigned long long)s->n,
               s->n == 1 ? "" : "s", util_fmt_bytes(s->bytes, sz, sizeof sz), a, b);
        if (s->n) {
            print_stat_rows("TABLE", s->by_table, s->nt);
            print_stat_rows("REASON", s->by_reason, s->nr);
        }
    }
    free(s);
    return 0;
}

/* ---- show ---- */

struct show_ctx {
    struct ctx *x;
    struct spool *sp;
    uint64_t id;
    bool found;
};

/* Prints the entry (it lives only during the callback). */
static int show_one(const struct dlq_entry *e, void *arg)
{
    struct show_ctx *c = arg;
    if (e->seq != c->id)
        return 1;
    c->found = true;
    json_t *o = entry_json(c->sp, e, true);
    if (c->x->json) {
        print_json(o, stdout);
    } else {
        printf("dead letter %llu\n", (unsigned long long)e->seq);
        static const char *const keys[] = { "table", "reason", "detail", "http_status", "attempts",
                                            "queued_at", "first_attempt", "last_attempt",
                                            "dead_at", "bytes" };
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            json_t *v = json_object_get(o, keys[i]);
            char *t = json_is_string(v) ? strdup(json_string_value(v)) :
                      json_dumps(v, JSON_ENCODE_ANY);
            printf("  %-14s %s\n", keys[i], t ? t : "");
            free(t);
        }
        json_t *row = json_object_get(o, "row");
        char *t = row ? json_dumps(row, JSON_INDENT(2) | JSON_PRESERVE_ORDER) :
                        strdup(json_string_value(json_object_get(o, "row_hex")));
        printf("  row%s\n%s\n", row ? ":" : " (damaged, hex):", t ? t : "");
        free(t);
    }
    json_decref(o);
    return 1;
}

static int cmd_show(struct ctx *x, struct spool *sp, int argc, char **argv)
{
    uint64_t id;
    if (argc < 1 || util_parse_u64(argv[0], UINT64_MAX, &id) != 0) {
        fprintf(stderr, "Usage: relayctl dlq show ID [--json]\n");
        return EXIT_USAGE;
    }
    struct show_ctx c = { .x = x, .sp = sp, .id = id };
    spool_dlq_read(sp, id, 1, show_one, &c);
    if (!c.found) {
        fprintf(stderr, "relayctl: no dead letter %llu (replayed or purged? see relayctl dlq list)\n",
                (unsigned long long)id);
        return EXIT_REFUSED;
    }
    return 0;
}

/* ---- export ---- */

struct export_ctx {
    bool meta;
    FILE *f;
    gzFile gz;
    uint64_t n;
    int err;
};

/* The same object as entry_json(), written straight into b: the row is
 * already a JSON object, so it goes in verbatim (no parse, no re-encode). */
static int entry_text(struct spool *sp, const struct dlq_entry *e, struct buf *b)
{
    char t1[32], t2[32], t3[32], t4[32];
    const char *dest = spool_dest_name(sp, e->dest);
    struct jcheck_result jr;
    if (jcheck_object(e->row, e->row_len, 0, &jr) != JC_OK) {   /* damaged: the slow path */
        json_t *o = entry_json(sp, e, true);
        char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        int rc = t ? buf_puts(b, t) : -1;
        free(t);
        return rc;
    }
    fmt_time(e->enqueued_ms, t1, sizeof t1);
    fmt_time(e->first_attempt_ms, t2, sizeof t2);
    fmt_time(e->last_attempt_ms, t3, sizeof t3);
    fmt_time(e->dead_ms, t4, sizeof t4);
    int rc = buf_printf(b, "{\"id\":%llu,\"table\":\"", (unsigned long long)e->seq);
    rc |= buf_json_escape(b, dest ? dest : "?", strlen(dest ? dest : "?"));
    rc |= buf_puts(b, "\",\"reason\":\"");
    rc |= buf_json_escape(b, e->reason, e->reason_len);
    rc |= buf_puts(b, "\",\"detail\":\"");
    rc |= buf_json_escape(b, e->detail, e->detail_len);
    rc |= buf_printf(b, "\",\"http_status\":%u,\"attempts\":%u,\"queued_at\":\"%s\","
                     "\"first_attempt\":\"%s\",\"last_attempt\":\"%s\",\"dead_at\":\"%s\","
                     "\"bytes\":%zu,\"row\":", e->http_status, e->attempts, t1, t2, t3, t4,
                     e->row_len);
    rc |= buf_append(b, e->row, e->row_len);
    rc |= buf_puts(b, "}");
    return rc;
}

static int export_one(struct spool *sp, const struct dlq_entry *e, void *arg)
{
    struct export_ctx *c = arg;
    char *line = NULL;
    size_t len;
    if (c->meta) {
        struct buf b = { 0 };
        if (entry_text(sp, e, &b) != 0) {
            buf_free(&b);
            return 1;
        }
        line = b.data;
        len = b.len;
    } else {
        line = malloc(e->row_len + 1);
        if (!line)
            return 1;
        memcpy(line, e->row, e->row_len);
        len = e->row_len;
    }
    line[len] = 0;
    int ok;
    if (c->gz)
        ok = gzwrite(c->gz, line, (unsigned)len) == (int)len && gzputc(c->gz, '\n') == '\n';
    else
        ok = fwrite(line, 1, len, c->f) == len && fputc('\n', c->f) == '\n';
    free(line);
    if (!ok) {
        c->err = errno ? errno : EIO;
        return 1;
    }
    c->n++;
    return 0;
}

static int cmd_export(struct ctx *x, struct spool *sp, const struct filter *f, int argc,
                      char **argv)
{
    struct export_ctx c = { 0 };
    const char *out = NULL;
    bool gz = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--with-meta"))
            c.meta = true;
        else if (!strcmp(argv[i], "--gzip"))
            gz = true;
        else if ((!strcmp(argv[i], "--output") || !strcmp(argv[i], "-o")) && i + 1 < argc)
            out = argv[++i];
        else {
            fprintf(stderr, "relayctl dlq export: unknown argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    int fd = STDOUT_FILENO;
    if (out && (fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
        fprintf(stderr, "relayctl dlq export: cannot create %s: %s\n", out, strerror(errno));
        return EXIT_USAGE;
    }
    if (gz)
        c.gz = gzdopen(dup(fd), "wb6");
    else
        c.f = out ? fdopen(fd, "w") : stdout;
    if (gz ? !c.gz : !c.f) {
        fprintf(stderr, "relayctl dlq export: cannot write: %s\n", strerror(errno));
        return EXIT_USAGE;
    }
    walk(sp, f, export_one, &c);
    int rc = 0;
    if (c.gz) {
        if (gzclose(c.gz) != Z_OK && !c.err)
            c.err = EIO;
        if (out)
            close(fd);
    } else if (c.f != stdout) {
        if (fclose(c.f) != 0 && !c.err)
            c.err = errno;
    } else if (fflush(stdout) != 0 && !c.err) {
        c.err = errno;
    }
    if (c.err) {
        fprintf(stderr, "relayctl dlq export: write failed: %s\n", strerror(c.err));
        rc = EXIT_DOWN;
    }
    fprintf(stderr, "exported %llu dead letter%s%s%s\n", (unsigned long long)c.n,
            c.n == 1 ? "" : "s", out ? " to " : "", out ? out : "");
    (void)x;
    return rc;
}

/* ---- replay and purge: collect ids, then change them in transactions ---- */

struct ids {
    uint64_t *v;
    size_t n, cap;
    uint64_t skipped_damaged;
    bool allow_damaged;
    uint64_t bytes;
};

static int collect(struct spool *sp, const struct dlq_entry *e, void *arg)
{
    struct ids *ids = arg;
    (void)sp;
    struct jcheck_result jr;
    if (!ids->allow_damaged &&
        jcheck_object(e->row, e->row_len, 0, &jr) != JC_OK) {
        ids->skipped_damaged++;   /* corrupt bytes are no row: fix them with export + --file */
        return 0;
    }
    if (ids->n == ids->cap) {
        size_t nc = ids->cap ? ids->cap * 2 : 4096;
        uint64_t *nv = realloc(ids->v, nc * sizeof *nv);
        if (!nv)
            return 1;
        ids->v = nv;
        ids->cap = nc;
    }
    ids->v[ids->n++] = e->seq;
    ids->bytes += dlq_encoded_size(e);
    return 0;
}

static bool confirm(const char *question)
{
    fprintf(stderr, "%s [y/N] ", question);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return false;
    return line[0] == 'y' || line[0] == 'Y';
}

static void pace(uint64_t done, uint64_t rate, uint64_t start_us)
{
    if (!rate)
        return;
    uint64_t due = start_us + done * 1000000 / rate;
    uint64_t now = util_mono_us();
    if (due > now)
        usleep((useconds_t)(due - now));
}

static int cmd_replay(struct ctx *x, struct spool *sp, const struct filter *f, int argc,
                      char **argv);
static int replay_file(struct ctx *x, struct spool *sp, const char *path, uint32_t to,
                       bool dry);

static int cmd_purge(struct ctx *x, struct spool *sp, const struct filter *f, int argc,
                     char **argv)
{
    bool yes = false, dry = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--yes") || !strcmp(argv[i], "-y"))
            yes = true;
        else if (!strcmp(argv[i], "--dry-run"))
            dry = true;
        else {
            fprintf(stderr, "relayctl dlq purge: unknown argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    struct ids ids = { .allow_damaged = true };
    walk(sp, f, collect, &ids);
    char sz[32];
    util_fmt_bytes(ids.bytes, sz, sizeof sz);
    if (dry || ids.n == 0) {
        printf("%s %zu dead letter%s (%s)\n", dry ? "would purge" : "nothing to purge:", ids.n,
               ids.n == 1 ? "" : "s", sz);
        free(ids.v);
        return 0;
    }
    if (!yes) {
        if (!isatty(STDIN_FILENO)) {
            fprintf(stderr, "relayctl dlq purge: %zu entries match; refusing to delete without "
                    "--yes when not on a terminal\n", ids.n);
            free(ids.v);
            return EXIT_USAGE;
        }
        char q[160];
        snprintf(q, sizeof q, "Delete %zu dead letter%s (%s) for good?", ids.n,
                 ids.n == 1 ? "" : "s", sz);
        if (!confirm(q)) {
            fprintf(stderr, "nothing deleted\n");
            free(ids.v);
            return EXIT_REFUSED;
        }
    }
    struct progress pg = { .on = isatty(STDERR_FILENO) && !x->json, .total = ids.n,
                           .start_us = util_mono_us(), .what = "purged" };
    uint64_t purged = 0;
    for (size_t i = 0; i < ids.n;) {
        struct spool_txn *t = NULL;
        int rc = spool_txn_begin(sp, &t);
        size_t end = i + TXN_ROWS < ids.n ? i + TXN_ROWS : ids.n, done = 0;
        for (size_t k = i; rc == SPOOL_OK && k < end; k++) {
            rc = spool_txn_dlq_delete(t, ids.v[k]);
            if (rc == SPOOL_NOTFOUND)
                rc = SPOOL_OK;   /* gone meanwhile */
            else if (rc == SPOOL_OK)
                done++;
        }
        if (rc == SPOOL_OK)
            rc = spool_txn_commit(t);
        else
            spool_txn_abort(t);
        if (rc != SPOOL_OK) {
            fprintf(stderr, "relayctl dlq purge: %s (%s); %llu purged so far\n", spool_strerror(rc),
                    spool_last_error(), (unsigned long long)purged);
            free(ids.v);
            return EXIT_DOWN;
        }
        purged += done;
        i = end;
        pg.done = i;
        progress_show(&pg, false);
    }
    progress_show(&pg, true);
    if (x->json)
        printf("{\"purged\":%llu}\n", (unsigned long long)purged);
    else
        printf("purged %llu dead letter%s\n", (unsigned long long)purged, purged == 1 ? "" : "s");
    free(ids.v);
    return 0;
}

static int cmd_replay(struct ctx *x, struct spool *sp, const struct filter *f, int argc,
                      char **argv)
{
    bool dry = false;
    const char *to_name = NULL, *file = NULL;
    uint64_t rate = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--dry-run"))
            dry = true;
        else if (!strcmp(argv[i], "--to") && i + 1 < argc)
            to_name = argv[++i];
        else if (!strcmp(argv[i], "--file") && i + 1 < argc)
            file = argv[++i];
        else if (!strcmp(argv[i], "--rate") && i + 1 < argc) {
            const char *v = argv[++i];
            char num[32];
            snprintf(num, sizeof num, "%.*s", (int)strcspn(v, "/"), v);
            if (util_parse_u64(num, UINT32_MAX, &rate) != 0 || rate == 0) {
                fprintf(stderr, "relayctl dlq replay: --rate: expected rows per second such as "
                        "500/s, got '%s'\n", v);
                return EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "relayctl dlq replay: unknown argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    uint32_t to = 0;
    if (to_name) {
        if (!conf_valid_name(to_name, strlen(to_name))) {
            fprintf(stderr, "relayctl dlq replay: invalid table name '%s'\n", to_name);
            return EXIT_USAGE;
        }
        if (x->have_conf && !conf_find_dest(&x->conf, to_name, strlen(to_name)))
            fprintf(stderr, "relayctl: warning: '%s' is not a [destination] in %s: its rows "
                    "will wait in the spool until it is\n", to_name, x->conf.path);
        if (!dry && spool_dest(sp, to_name, true, &to) != SPOOL_OK) {
            fprintf(stderr, "relayctl dlq replay: cannot open queue '%s': %s\n", to_name,
                    spool_last_error());
            return EXIT_DOWN;
        }
    }
    if (file)
        return replay_file(x, sp, file, to, dry);

    struct ids ids = { 0 };
    walk(sp, f, collect, &ids);
    if (dry) {
        if (x->json)
            printf("{\"would_replay\":%zu,\"skipped_damaged\":%llu}\n", ids.n,
                   (unsigned long long)ids.skipped_damaged);
        else
            printf("would replay %zu dead letter%s%s%s\n", ids.n, ids.n == 1 ? "" : "s",
                   to_name ? " to " : "", to_name ? to_name : "");
        if (ids.skipped_damaged)
            fprintf(stderr, "%llu damaged entr%s would be skipped (export them with --with-meta, "
                    "fix the rows, and replay --file)\n", (unsigned long long)ids.skipped_damaged,
                    ids.skipped_damaged == 1 ? "y" : "ies");
        free(ids.v);
        return 0;
    }
    struct progress pg = { .on = isatty(STDERR_FILENO) && !x->json, .total = ids.n,
                           .start_us = util_mono_us(), .what = "replayed" };
    uint64_t replayed = 0, gone = 0;
    size_t step = rate ? (rate / 10 ? rate / 10 : 1) : TXN_ROWS;
    if (step > TXN_ROWS)
        step = TXN_ROWS;
    for (size_t i = 0; i < ids.n;) {
        struct spool_txn *t = NULL;
        int rc = spool_txn_begin(sp, &t);
        size_t end = i + step < ids.n ? i + step : ids.n, done = 0, missing = 0;
        for (size_t k = i; rc == SPOOL_OK && k < end; k++) {
            rc = spool_txn_dlq_replay(t, ids.v[k], to, NULL, 0, NULL);
            if (rc == SPOOL_NOTFOUND) {
                rc = SPOOL_OK;   /* replayed or purged by someone else meanwhile */
                missing++;
            } else if (rc == SPOOL_OK) {
                done++;
            }
        }
        if (rc == SPOOL_OK)
            rc = spool_txn_commit(t);
        else
            spool_txn_abort(t);
        if (rc != SPOOL_OK) {
            fprintf(stderr, "\nrelayctl dlq replay: %s (%s); %llu replayed so far, the rest is "
                    "still in the dead-letter store\n", spool_strerror(rc), spool_last_error(),
                    (unsigned long long)replayed);
            free(ids.v);
            return rc == SPOOL_FULL ? EXIT_REFUSED : EXIT_DOWN;
        }
        replayed += done;
        gone += missing;
        i = end;
        pg.done = i;
        progress_show(&pg, false);
        pace(i, rate, pg.start_us);
    }
    progress_show(&pg, true);
    if (x->json)
        printf("{\"replayed\":%llu,\"already_gone\":%llu,\"skipped_damaged\":%llu}\n",
               (unsigned long long)replayed, (unsigned long long)gone,
               (unsigned long long)ids.skipped_damaged);
    else
        printf("replayed %llu dead letter%s%s%s into the live queue%s\n",
               (unsigned long long)replayed, replayed == 1 ? "" : "s", to_name ? " to " : "",
               to_name ? to_name : "", gone ? " (some were already gone)" : "");
    if (ids.skipped_damaged)
        fprintf(stderr, "skipped %llu damaged entr%s: export them with --with-meta, fix the "
                "rows, and replay --file\n", (unsigned long long)ids.skipped_damaged,
                ids.skipped_damaged == 1 ? "y" : "ies");
    free(ids.v);
    return 0;
}

/* replay --file: lines of an export --with-meta (ids kept, rows maybe
 * edited). Each fixed row replaces its dead letter atomically. */
static int replay_file(struct ctx *x, struct spool *sp, const char *path, uint32_t to, bool dry)
{
    gzFile in = gzopen(path, "rb");   /* reads plain files too */
    if (!in) {
        fprintf(stderr, "relayctl dlq replay: cannot open %s: %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    struct buf line = { 0 };
    char chunk[65536];
    uint64_t lineno = 0, replayed = 0, gone = 0, bad = 0;
    struct spool_txn *t = NULL;
    size_t in_txn = 0;
    int rc = SPOOL_OK, ret = 0;
    bool eof = false;
    while (!eof && rc == SPOOL_OK) {
        buf_reset(&line);
        for (;;) {   /* one line, however long */
            if (!gzgets(in, chunk, sizeof chunk)) {
                eof = true;
                break;
            }
            buf_puts(&line, chunk);
            if (line.len && line.data[line.len - 1] == '\n')
                break;
        }
        if (line.len == 0)
            continue;
        lineno++;
        json_error_t je;
        json_t *o = json_loadb(line.data, line.len, 0, &je);
        json_t *idv = o ? json_object_get(o, "id") : NULL, *row = o ? json_object_get(o, "row") : NULL;
        if (!o || !json_is_integer(idv) || !json_is_object(row)) {
            fprintf(stderr, "%s:%llu: %s\n", path, (unsigned long long)lineno,
                    !o ? je.text : "expected {\"id\": N, \"row\": {...}} (an export --with-meta line)");
            bad++;
            json_decref(o);
            continue;
        }
        char *text = json_dumps(row, JSON_COMPACT | JSON_PRESERVE_ORDER);
        uint64_t id = (uint64_t)json_integer_value(idv);
        json_decref(o);
        if (!text) {
            rc = SPOOL_NOMEM;
            break;
        }
        if (dry) {
            replayed++;
            free(text);
            continue;
        }
        if (!t && (rc = spool_txn_begin(sp, &t)) != SPOOL_OK) {
            free(text);
            break;
        }
        rc = spool_txn_dlq_replay(t, id, to, text, strlen(text), NULL);
        free(text);
        if (rc == SPOOL_NOTFOUND) {
            fprintf(stderr, "%s:%llu: dead letter %llu is not in the store (already replayed or "
                    "purged): skipped\n", path, (unsigned long long)lineno, (unsigned long long)id);
            gone++;
            rc = SPOOL_OK;
        } else if (rc == SPOOL_OK) {
            in_txn++;
        }
        if (rc == SPOOL_OK && in_txn >= TXN_ROWS) {
            rc = spool_txn_commit(t);
            t = NULL;
            if (rc == SPOOL_OK)
                replayed += in_txn;
            in_txn = 0;
        }
    }
    if (t) {
        if (rc == SPOOL_OK && (rc = spool_txn_commit(t)) == SPOOL_OK)
            replayed += in_txn;
        else if (rc != SPOOL_OK)
            spool_txn_abort(t);
    }
    gzclose(in);
    buf_free(&line);
    if (rc != SPOOL_OK) {
        fprintf(stderr, "relayctl dlq replay: %s (%s); %llu replayed before the error\n",
                spool_strerror(rc), spool_last_error(), (unsigned long long)replayed);
        ret = EXIT_DOWN;
    }
    if (x->json)
        printf("{\"replayed\":%llu,\"already_gone\":%llu,\"bad_lines\":%llu%s}\n",
               (unsigned long long)replayed, (unsigned long long)gone, (unsigned long long)bad,
               dry ? ",\"dry_run\":true" : "");
    else
        printf("%s %llu fixed row%s from %s%s\n", dry ? "would replay" : "replayed",
               (unsigned long long)replayed, replayed == 1 ? "" : "s", path,
               bad ? " (some lines were not valid: see above)" : "");
    return ret ? ret : (bad ? EXIT_REFUSED : 0);
}

/* ---- dispatch ---- */

void ctl_dlq_usage(FILE *f)
{
    fprintf(f,
"Usage: relayctl dlq COMMAND [FILTERS] [OPTIONS]\n"
"  list                          entries: id, time, table, reason, message (--json: NDJSON)\n"
"  stats                         counts and bytes by table and by reason, oldest and newest\n"
"  show ID                       one entry: the row pretty-printed, every detail\n"
"  export [--with-meta] [--gzip] [-o FILE]\n"
"                                NDJSON of the rows (or of entries with ids and details)\n"
"  replay [--to TABLE] [--dry-run] [--rate N/s]\n"
"                                move entries back into the live queue (atomically each)\n"
"  replay --file FILE [--to TABLE]\n"
"                                replay the rows of an edited export --with-meta in place\n"
"                                of their entries\n"
"  purge [--older-than DUR] [--yes] [--dry-run]\n"
"                                delete entries for good (asks on a terminal)\n"
"Filters: --table T  --reason R  --since TIME  --until TIME  --grep REGEX  --limit N\n"
"  TIME: 2026-11-22, 2026-11-22T10:00:00Z, or a duration ago (2h, 7d).\n"
"Works with relayd running or stopped; run as the spool's owner.\n");
}

int ctl_dlq(struct ctx *x, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        ctl_dlq_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *cmd = argv[1];
    char **rest = calloc((size_t)argc, sizeof *rest);
    int nrest;
    struct filter f;
    if (!rest)
        return EXIT_DOWN;
    int rc = parse_filter(argc - 1, argv + 1, &f, rest, &nrest);
    if (rc) {
        free(rest);
        return rc;
    }
    bool writes = !strcmp(cmd, "replay") || !strcmp(cmd, "purge");
    struct spool *sp = open_spool(x, !writes);
    if (!sp) {
        filter_free(&f);
        free(rest);
        return EXIT_START;
    }
    if (!strcmp(cmd, "list"))
        rc = nrest ? EXIT_USAGE : cmd_list(x, sp, &f);
    else if (!strcmp(cmd, "stats"))
        rc = nrest ? EXIT_USAGE : cmd_stats(x, sp, &f);
    else if (!strcmp(cmd, "show"))
        rc = cmd_show(x, sp, nrest, rest);
    else if (!strcmp(cmd, "export"))
        rc = cmd_export(x, sp, &f, nrest, rest);
    else if (!strcmp(cmd, "replay"))
        rc = cmd_replay(x, sp, &f, nrest, rest);
    else if (!strcmp(cmd, "purge"))
        rc = cmd_purge(x, sp, &f, nrest, rest);
    else {
        fprintf(stderr, "relayctl dlq: unknown command '%s'\n", cmd);
        ctl_dlq_usage(stderr);
        rc = EXIT_USAGE;
    }
    if (rc == EXIT_USAGE && nrest && (!strcmp(cmd, "list") || !strcmp(cmd, "stats")))
        fprintf(stderr, "relayctl dlq %s: unknown argument '%s'\n", cmd, rest[0]);
    spool_close(sp);
    filter_free(&f);
    free(rest);
    return rc;
}

/* ---- spool check / compact ---- */

struct check_ctx {
    uint64_t records, corrupt, next;
    size_t got;
    uint32_t dest;
    const char *name;
    uint64_t *bad;
    size_t nbad, capbad;
};

static int check_one(const struct spool_record *r, void *arg)
{
    struct check_ctx *c = arg;
    c->got++;
    c->records++;
    c->next = r->seq + 1;
    if (r->corrupt) {
        c->corrupt++;
        fprintf(stderr, "damaged: table %s seq %llu: %s (%zu bytes)\n", c->name,
                (unsigned long long)r->seq, r->problem, r->len);
        if (c->nbad == c->capbad) {
            c->capbad = c->capbad ? c->capbad * 2 : 64;
            uint64_t *nb = realloc(c->bad, c->capbad * sizeof *nb);
            if (!nb)
                return 1;
            c->bad = nb;
        }
        c->bad[c->nbad++] = r->seq;
    }
    return 0;
}

struct dlq_check {
    uint64_t n, damaged, next;
    size_t got;
};

static int check_dlq_one(const struct dlq_entry *e, void *arg)
{
    struct dlq_check *c = arg;
    c->got++;
    c->n++;
    c->next = e->seq + 1;
    if (e->reason_len == 13 && !memcmp(e->reason, "damaged-entry", 13)) {
        c->damaged++;
        fprintf(stderr, "damaged: dead letter %llu (%zu bytes)\n", (unsigned long long)e->seq,
                e->row_len);
    }
    return 0;
}

int ctl_spool_check(struct ctx *x, int argc, char **argv)
{
    bool repair = false;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--repair"))
            repair = true;
        else {
            fprintf(stderr, "Usage: relayctl spool check [--repair]\n");
            return EXIT_USAGE;
        }
    }
    struct spool *sp = open_spool(x, !repair);
    if (!sp)
        return EXIT_START;
    uint64_t records = 0, corrupt = 0, quarantined = 0;
    int errors = 0;
    for (uint32_t id = 1; id <= SPOOL_MAX_DESTS; id++) {
        const char *name = spool_dest_name(sp, id);
        if (!name)
            continue;
        struct check_ctx c = { .dest = id, .name = name };
        do {
            c.got = 0;
            int rc = spool_read(sp, id, c.next, PAGE, SIZE_MAX, check_one, &c);
            if (rc != SPOOL_OK) {
                fprintf(stderr, "damaged: table %s: the LMDB tree cannot be read past seq %llu: "
                        "%s (%s)\n", name, (unsigned long long)c.next, spool_strerror(rc),
                        spool_last_error());
                errors++;
                break;
            }
        } while (c.got == PAGE);
        records += c.records;
        corrupt += c.corrupt;
        if (repair && c.nbad) {
            struct spool_txn *t = NULL;
            int rc = spool_txn_begin(sp, &t);
            for (size_t i = 0; rc == SPOOL_OK && i < c.nbad; i++)
                rc = spool_txn_dead_letter(t, id, c.bad[i], "corrupt",
                                           "quarantined by relayctl spool check --repair");
            if (rc == SPOOL_OK)
                rc = spool_txn_commit(t);
            else
                spool_txn_abort(t);
            if (rc == SPOOL_OK)
                quarantined += c.nbad;
            else {
                fprintf(stderr, "relayctl spool check: cannot quarantine: %s (%s)\n",
                        spool_strerror(rc), spool_last_error());
                errors++;
            }
        }
        free(c.bad);
    }
    struct dlq_check dc = { 0 };
    do {
        dc.got = 0;
        if (spool_dlq_read(sp, dc.next, PAGE, check_dlq_one, &dc) != SPOOL_OK) {
            fprintf(stderr, "damaged: the dead-letter store cannot be read past %llu\n",
                    (unsigned long long)dc.next);
            errors++;
            break;
        }
    } while (dc.got == PAGE);
    spool_close(sp);
    bool bad = corrupt || dc.damaged || errors;
    if (x->json)
        printf("{\"records\":%llu,\"corrupt\":%llu,\"quarantined\":%llu,\"dead_letters\":%llu,"
               "\"damaged_dead_letters\":%llu,\"structure_errors\":%d}\n",
               (unsigned long long)records, (unsigned long long)corrupt,
               (unsigned long long)quarantined, (unsigned long long)dc.n,
               (unsigned long long)dc.damaged, errors);
    else
        printf("checked %llu records and %llu dead letters: %llu corrupt record%s%s, %llu damaged "
               "dead letter%s, %d structure error%s%s\n", (unsigned long long)records,
               (unsigned long long)dc.n, (unsigned long long)corrupt, corrupt == 1 ? "" : "s",
               repair ? (quarantined ? " (quarantined into the dead-letter store)" : "") :
               (corrupt ? " (run with --repair to quarantine them)" : ""),
               (unsigned long long)dc.damaged, dc.damaged == 1 ? "" : "s", errors,
               errors == 1 ? "" : "s", bad ? "" : ": the spool is sound");
    if (errors)
        return EXIT_DOWN;
    return (corrupt && !repair) || dc.damaged ? EXIT_REFUSED : 0;
}

int ctl_spool_compact(struct ctx *x, int argc, char **argv)
{
    if (argc > 2) {
        fprintf(stderr, "Usage: relayctl spool compact\n");
        return EXIT_USAGE;
    }
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/relayd.lock", x->spool_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "relayctl spool compact: relayd is running on %s: stop it first (the "
                "copy needs the spool to itself)\n", x->spool_dir);
        if (fd >= 0)
            close(fd);
        return EXIT_CONNECT;
    }
    uint64_t before = 0, after = 0;
    uint64_t t0 = util_mono_us();
    int rc = spool_compact(x->spool_dir, &before, &after, err, sizeof err);
    close(fd);
    if (rc != SPOOL_OK) {
        fprintf(stderr, "relayctl spool compact: %s\n", err);
        return EXIT_DOWN;
    }
    char a[32], b[32];
    if (x->json)
        printf("{\"before_bytes\":%llu,\"after_bytes\":%llu,\"seconds\":%.2f}\n",
               (unsigned long long)before, (unsigned long long)after,
               (double)(util_mono_us() - t0) / 1e6);
    else
        printf("compacted %s: %s -> %s in %.2f s\n", x->spool_dir,
               util_fmt_bytes(before, a, sizeof a), util_fmt_bytes(after, b, sizeof b),
               (double)(util_mono_us() - t0) / 1e6);
    return 0;
}
