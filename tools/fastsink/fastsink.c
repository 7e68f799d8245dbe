/*
 * fastsink.c -- a fast stand-in for BigQuery's ingestion endpoints, for
 * benchmarks of relayd (docs/emulator.md, "The fast sink").
 *
 * It speaks what relayd speaks to Google: HTTPS/1.1 with keep-alive for the
 * OAuth token endpoint, tables.get and tabledata.insertAll, and gRPC over TLS
 * for the Storage Write API; it checks every request as the service would
 * (tokens, JSON, gzip, protobuf, offsets) and counts rows without storing
 * them. Command line and ready file follow `bqemu.py serve`, so a test or a
 * benchmark can use either:
 *
 *   fastsink [serve] --tls-cert server.pem --tls-key server.key --port 0
 *            --grpc-port 0 --ready-file ready.json --key-out key.json
 *            --schema proj.logs.events=schema.json
 *
 * Stats: GET /stats (JSON), and on SIGTERM/SIGINT the same document on one
 * line of stdout; CPU time is the whole process's (gRPC's own threads too).
 */
#include "fastsink.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct fs FS;

double fs_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void fs_log(const char *fmt, ...)
{
    if (FS.cfg.quiet)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fastsink: %s\n", line);
}

static bool eq(const char *a, const char *b, size_t bl)
{
    return strlen(a) == bl && memcmp(a, b, bl) == 0;
}

struct fs_table *fs_find_table(const char *p, size_t pl, const char *d, size_t dl, const char *t,
                               size_t tl)
{
    for (size_t i = 0; i < FS.n_tables; i++) {
        struct fs_table *x = &FS.tables[i];
        if (eq(x->project, p, pl) && eq(x->dataset, d, dl) && eq(x->table, t, tl))
            return x;
    }
    return NULL;
}

bool fs_dataset_known(const char *p, size_t pl, const char *d, size_t dl)
{
    for (size_t i = 0; i < FS.n_tables; i++)
        if (eq(FS.tables[i].project, p, pl) && eq(FS.tables[i].dataset, d, dl))
            return true;
    return false;
}

/* ---- schemas ---- */

static const char *legacy_type(const char *t)
{
    static const char *const map[][2] = {
        { "STRING", "STRING" }, { "BYTES", "BYTES" }, { "INTEGER", "INTEGER" }, { "INT64", "INTEGER" },
        { "FLOAT", "FLOAT" }, { "FLOAT64", "FLOAT" }, { "BOOLEAN", "BOOLEAN" }, { "BOOL", "BOOLEAN" },
        { "TIMESTAMP", "TIMESTAMP" }, { "DATE", "DATE" }, { "TIME", "TIME" },
        { "DATETIME", "DATETIME" }, { "GEOGRAPHY", "GEOGRAPHY" }, { "NUMERIC", "NUMERIC" },
        { "BIGNUMERIC", "BIGNUMERIC" }, { "JSON", "JSON" }, { "RECORD", "RECORD" },
        { "STRUCT", "RECORD" }, { "RANGE", "RANGE" }, { "INTERVAL", "INTERVAL" },
    };
    for (size_t i = 0; t && i < sizeof map / sizeof map[0]; i++)
        if (strcasecmp(map[i][0], t) == 0)
            return map[i][1];
    return NULL;
}

/* Normalises fields in place as tables.get returns them: legacy type names,
 * mode always present. Returns NULL or what is wrong. */
static const char *normalise(json_t *fields, char *why, size_t wl)
{
    if (!json_is_array(fields) || json_array_size(fields) == 0)
        return "expected a non-empty array of fields";
    size_t i;
    json_t *f;
    json_array_foreach(fields, i, f) {
        const char *name = json_string_value(json_object_get(f, "name"));
        const char *type = legacy_type(json_string_value(json_object_get(f, "type")));
        if (!json_is_object(f) || !name || !*name || !type) {
            snprintf(why, wl, "field %zu needs a name and a known type", i);
            return why;
        }
        json_object_set_new(f, "type", json_string(type));
        const char *mode = json_string_value(json_object_get(f, "mode"));
        char m[16];
        snprintf(m, sizeof m, "%s", mode ? mode : "NULLABLE");
        for (char *q = m; *q; q++)
            *q = (char)(*q >= 'a' && *q <= 'z' ? *q - 32 : *q);
        if (strcmp(m, "NULLABLE") && strcmp(m, "REQUIRED") && strcmp(m, "REPEATED")) {
            snprintf(why, wl, "field %s: invalid mode %s", name, m);
            return why;
        }
        json_object_set_new(f, "mode", json_string(m));
        json_t *sub = json_object_get(f, "fields");
        if (strcmp(type, "RECORD") == 0) {
            const char *e = normalise(sub, why, wl);
            if (e)
                return e;
        }
    }
    return NULL;
}

static int add_table(const char *spec, char *err, size_t errlen)
{
    if (FS.n_tables == FS_MAX_TABLES) {
        snprintf(err, errlen, "at most %d tables", FS_MAX_TABLES);
        return -1;
    }
    const char *eqs = strchr(spec, '=');
    char ref[600];
    snprintf(ref, sizeof ref, "%.*s", (int)(eqs ? (size_t)(eqs - spec) : strlen(spec)), spec);
    char *d1 = strchr(ref, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.') || d1 == ref || d2 == d1 + 1 || !d2[1]) {
        snprintf(err, errlen, "--schema %s: expected PROJECT.DATASET.TABLE=FILE", spec);
        return -1;
    }
    struct fs_table *t = &FS.tables[FS.n_tables];
    snprintf(t->project, sizeof t->project, "%.*s", (int)(d1 - ref), ref);
    snprintf(t->dataset, sizeof t->dataset, "%.*s", (int)(d2 - d1 - 1), d1 + 1);
    snprintf(t->table, sizeof t->table, "%s", d2 + 1);
    json_t *fields = NULL;
    if (eqs) {
        json_error_t je;
        json_t *doc = json_load_file(eqs + 1, 0, &je);
        if (!doc) {
            snprintf(err, errlen, "--schema %s: %s (line %d)", spec, je.text, je.line);
            return -1;
        }
        json_t *f = json_is_array(doc) ? doc : json_object_get(doc, "fields");
        if (!f)
            f = json_object_get(json_object_get(doc, "schema"), "fields");
        fields = f ? json_deep_copy(f) : NULL;
        json_decref(doc);
        char why[200];
        const char *e = fields ? normalise(fields, why, sizeof why) : "no fields";
        if (e) {
            snprintf(err, errlen, "--schema %s: %s", spec, e);
            json_decref(fields);
            return -1;
        }
    } else {
        fields = json_array();   /* --table: insertAll only, no schema */
    }
    t->fields = fields;
    char id[700];
    snprintf(id, sizeof id, "%s:%s.%s", t->project, t->dataset, t->table);
    json_t *res = json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s}, s:{s:O}, s:s, s:s, s:s, s:s, s:s}",
                            "kind", "bigquery#table", "etag", "fastsink", "id", id,
                            "tableReference", "projectId", t->project, "datasetId", t->dataset,
                            "tableId", t->table, "schema", "fields", fields, "numBytes", "0",
                            "numRows", "0", "type", "TABLE", "location", "US",
                            "creationTime", "1764979200000");
    t->resource = res ? json_dumps(res, JSON_COMPACT) : NULL;
    json_decref(res);
    if (!t->resource) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->resource_len = strlen(t->resource);
    FS.n_tables++;
    return 0;
}

/* ---- stats ---- */

#define C(name) json_integer((json_int_t)fs_get(&FS.st.name))

char *fs_stats_json(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    double sys = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    json_t *o = json_object();
    json_object_set_new(o, "uptime_s", json_real(fs_mono() - FS.start_mono));
    json_object_set_new(o, "cpu_user_s", json_real(user));
    json_object_set_new(o, "cpu_sys_s", json_real(sys));
    json_object_set_new(o, "cpu_s", json_real(user + sys));
    json_object_set_new(o, "max_rss_kib", json_integer(ru.ru_maxrss));
    json_t *rows = json_object();
    json_object_set_new(rows, "insertall", C(insertall_rows));
    json_object_set_new(rows, "storage", C(storage_rows));
    json_object_set_new(rows, "storage_pending", json_integer(
        (json_int_t)(fs_get(&FS.st.storage_rows_pending) - fs_get(&FS.st.storage_rows_committed_pending))));
    json_object_set_new(o, "rows", rows);
    json_t *h = json_object();
    json_object_set_new(h, "connections", C(http_connections));
    json_object_set_new(h, "requests", C(http_requests));
    json_object_set_new(h, "bytes_in", C(http_bytes_in));
    json_object_set_new(h, "bytes_out", C(http_bytes_out));
    json_object_set_new(h, "responses_4xx", C(http_4xx));
    json_object_set_new(h, "responses_5xx", C(http_5xx));
    json_object_set_new(h, "token_requests", C(token_requests));
    json_object_set_new(h, "tokens_minted", C(tokens_minted));
    json_object_set_new(h, "token_failures", C(token_failures));
    json_object_set_new(h, "auth_failures", C(auth_failures));
    json_object_set_new(h, "tables_get", C(tables_get));
    json_object_set_new(o, "http", h);
    json_t *ia = json_object();
    json_object_set_new(ia, "requests", C(insertall_requests));
    json_object_set_new(ia, "rows", C(insertall_rows));
    json_object_set_new(ia, "rejected", C(insertall_rejected));
    json_object_set_new(ia, "gzip_requests", C(insertall_gzip_requests));
    json_object_set_new(ia, "body_bytes", C(insertall_body_bytes));
    json_object_set_new(ia, "decoded_bytes", C(insertall_decoded_bytes));
    json_object_set_new(o, "insertall", ia);
    json_t *g = json_object();
    json_object_set_new(g, "calls", C(grpc_calls));
    json_object_set_new(g, "auth_failures", C(grpc_auth_failures));
    json_object_set_new(g, "call_errors", C(grpc_errors));
    json_object_set_new(g, "append_calls", C(append_calls));
    json_object_set_new(g, "append_requests", C(append_requests));
    json_object_set_new(g, "append_bytes", C(append_bytes));
    json_object_set_new(g, "append_errors", C(append_errors));
    json_object_set_new(g, "rows", C(storage_rows));
    json_object_set_new(g, "rows_pending_appended", C(storage_rows_pending));
    json_object_set_new(g, "offset_already_exists", C(offset_already_exists));
    json_object_set_new(g, "offset_out_of_range", C(offset_out_of_range));
    json_object_set_new(g, "streams_created", C(streams_created));
    json_object_set_new(g, "streams_finalized", C(streams_finalized));
    json_object_set_new(g, "streams_committed", C(streams_committed));
    json_object_set_new(g, "flush_rows", C(flush_rows));
    json_object_set_new(o, "storage", g);
    json_t *tabs = json_object();
    for (size_t i = 0; i < FS.n_tables; i++) {
        struct fs_table *t = &FS.tables[i];
        char name[600];
        snprintf(name, sizeof name, "%s.%s.%s", t->project, t->dataset, t->table);
        json_object_set_new(tabs, name, json_pack("{s:I, s:I, s:I}",
            "insertall_rows", (json_int_t)fs_get(&t->insertall_rows),
            "storage_rows", (json_int_t)fs_get(&t->storage_rows),
            "storage_rows_pending_appended", (json_int_t)fs_get(&t->storage_rows_pending)));
    }
    json_object_set_new(o, "tables", tabs);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* ---- ready file ---- */

static int write_ready(const char *path, char *err, size_t errlen)
{
    json_t *o = json_pack("{s:b, s:I, s:s, s:s, s:s, s:i, s:s, s:s}",
                          "fastsink", 1, "pid", (json_int_t)getpid(), "host", FS.cfg.host,
                          "base_url", FS.base_url, "token_uri", FS.token_uri,
                          "https_port", FS.https_port, "key_file", FS.cfg.key_out,
                          "sa_email", FS.cfg.sa_email);
    if (FS.grpc_bound) {
        char target[300];
        snprintf(target, sizeof target, strchr(FS.cfg.host, ':') ? "[%s]:%d" : "%s:%d", FS.cfg.host,
                 FS.grpc_bound);
        json_object_set_new(o, "grpc_port", json_integer(FS.grpc_bound));
        json_object_set_new(o, "grpc_target", json_string(target));
        json_object_set_new(o, "grpc_tls", json_true());
    } else {
        json_object_set_new(o, "grpc_port", json_null());
        json_object_set_new(o, "grpc_target", json_null());
        json_object_set_new(o, "grpc_tls", json_null());
    }
    json_t *tabs = json_array();
    for (size_t i = 0; i < FS.n_tables; i++) {
        char name[600];
        snprintf(name, sizeof name, "%s.%s.%s", FS.tables[i].project, FS.tables[i].dataset,
                 FS.tables[i].table);
        json_array_append_new(tabs, json_string(name));
    }
    json_object_set_new(o, "tables", tabs);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = json_dump_file(o, tmp, JSON_INDENT(2));
    json_decref(o);
    if (rc != 0 || rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- main ---- */

static void usage(FILE *f)
{
    fprintf(f,
"usage: fastsink [serve] --tls-cert PEM --tls-key PEM --key-out FILE [options]\n"
"\n"
"A fast BigQuery sink for benchmarks: HTTPS insertAll/tables.get/OAuth and the\n"
"Storage Write API over gRPC+TLS, checked like the service, rows counted, not stored.\n"
"\n"
"  --host ADDR            listen address (default 127.0.0.1)\n"
"  --port N               HTTPS port (0: any free port; default 0)\n"
"  --grpc-port N          serve the Storage Write API on N (0: any free port)\n"
"  --tls-cert FILE        server certificate chain (PEM), also used for gRPC\n"
"  --tls-key FILE         its private key (PEM)\n"
"  --key-out FILE         write the generated service-account key file here\n"
"  --project ID           the service account's project (default fastsink-proj)\n"
"  --sa-email EMAIL       its client_email (default relayd-bench@PROJECT.iam.gserviceaccount.com)\n"
"  --schema P.D.T=FILE    a table and its schema (JSON: {\"fields\": [...]} or [...]); repeatable\n"
"  --table P.D.T          a table without a schema (insertAll only); repeatable\n"
"  --ready-file FILE      once listening, write base_url, token_uri, grpc_port, ... here\n"
"  --threads N            HTTPS worker threads (default 2)\n"
"  --grpc-threads N       gRPC completion-queue threads (default 1)\n"
"  --token-lifetime S     access token lifetime in seconds (default 3600)\n"
"  --quiet                no log lines on stderr\n"
"\n"
"GET /stats answers the counters as JSON; SIGTERM prints them on stdout and exits.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "host", 1, 0, 'H' }, { "port", 1, 0, 'p' }, { "grpc-port", 1, 0, 'g' },
        { "tls-cert", 1, 0, 'c' }, { "tls-key", 1, 0, 'k' }, { "key-out", 1, 0, 'o' },
        { "project", 1, 0, 'P' }, { "sa-email", 1, 0, 'e' }, { "schema", 1, 0, 's' },
        { "table", 1, 0, 't' }, { "ready-file", 1, 0, 'r' }, { "threads", 1, 0, 'T' },
        { "grpc-threads", 1, 0, 'G' }, { "token-lifetime", 1, 0, 'L' }, { "quiet", 0, 0, 'q' },
        { "help", 0, 0, 'h' }, { 0, 0, 0, 0 },
    };
    struct fs_config *cfg = &FS.cfg;
    cfg->host = "127.0.0.1";
    cfg->grpc_port = -1;
    cfg->project = "fastsink-proj";
    cfg->threads = 2;
    cfg->grpc_threads = 1;
    cfg->token_lifetime = 3600;
    char err[1024];
    if (argc > 1 && strcmp(argv[1], "serve") == 0) {
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'H': cfg->host = optarg; break;
        case 'p': cfg->port = atoi(optarg); break;
        case 'g': cfg->grpc_port = atoi(optarg); break;
        case 'c': cfg->tls_cert = optarg; break;
        case 'k': cfg->tls_key = optarg; break;
        case 'o': cfg->key_out = optarg; break;
        case 'P': cfg->project = optarg; break;
        case 'e': cfg->sa_email = optarg; break;
        case 's':
        case 't':
            if (ch == 't' && strchr(optarg, '=')) {
                fprintf(stderr, "fastsink: --table takes P.D.T (use --schema P.D.T=FILE)\n");
                return 2;
            }
            if (add_table(optarg, err, sizeof err) != 0) {
                fprintf(stderr, "fastsink: %s\n", err);
                return 2;
            }
            break;
        case 'r': cfg->ready_file = optarg; break;
        case 'T': cfg->threads = atoi(optarg); break;
        case 'G': cfg->grpc_threads = atoi(optarg); break;
        case 'L': cfg->token_lifetime = atoi(optarg); break;
        case 'q': cfg->quiet = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !cfg->tls_cert || !cfg->tls_key || !cfg->key_out || cfg->threads < 1 ||
        cfg->threads > 64 || cfg->grpc_threads < 1 || cfg->grpc_threads > 64 ||
        cfg->token_lifetime < 1 || cfg->port < 0 || cfg->port > 65535 || cfg->grpc_port > 65535) {
        usage(stderr);
        return 2;
    }
    static char email[300];
    if (!cfg->sa_email) {
        snprintf(email, sizeof email, "relayd-bench@%s.iam.gserviceaccount.com", cfg->project);
        cfg->sa_email = email;
    }
    FS.start_mono = fs_mono();

    /* signals go to this thread only (sigwait below) */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (fs_http_start(err, sizeof err) != 0) {
        fprintf(stderr, "fastsink: %s\n", err);
        return 1;
    }
    const char *h = cfg->host;
    snprintf(FS.base_url, sizeof FS.base_url, strchr(h, ':') ? "https://[%s]:%d" : "https://%s:%d", h,
             FS.https_port);
    snprintf(FS.token_uri, sizeof FS.token_uri, "%s/token", FS.base_url);
    if (fs_auth_init(cfg->key_out, cfg->project, cfg->sa_email, FS.token_uri, err, sizeof err) != 0) {
        fprintf(stderr, "fastsink: %s\n", err);
        return 1;
    }
    if (cfg->grpc_port >= 0 && fs_grpc_start(err, sizeof err) != 0) {
        fprintf(stderr, "fastsink: %s\n", err);
        return 1;
    }
    if (cfg->ready_file && write_ready(cfg->ready_file, err, sizeof err) != 0) {
        fprintf(stderr, "fastsink: %s\n", err);
        return 1;
    }
    fs_log("serving %s (token endpoint %s), %zu table(s), service account key %s", FS.base_url,
           FS.token_uri, FS.n_tables, cfg->key_out);
    if (FS.grpc_bound)
        fs_log("storage write API (gRPC, TLS) on %s:%d", cfg->host, FS.grpc_bound);
    int sig = 0;
    sigwait(&set, &sig);
    FS.stop = 1;
    char *s = fs_stats_json();
    if (s) {
        printf("%s\n", s);
        free(s);
    }
    fflush(stdout);
    if (cfg->ready_file)
        unlink(cfg->ready_file);
    fs_log("stopped (signal %d)", sig);
    /* the threads hold nothing that must be flushed: leave without joining */
    _exit(0);
}
