/*
 * relayctl_doctor.c -- `relayctl doctor [DEST]`: checks a setup before it is
 * trusted with data, one line per check (ok / warn / fail, with how to fix).
 *
 * Per delivering destination: the credentials load, a token can be had, the
 * dataset and table exist (or relayd may create the table), IAM grants what
 * delivery needs (tables.testIamPermissions), the schema converts to the
 * Storage Write descriptor and accepts a sample row (rowenc: the same value
 * rules on both APIs, so this is a dry run for insertAll too), and, with
 * --write-test-row, the row goes in through insertAll. Then the spool
 * directory (space, permissions) and the sockets (relayd running?).
 * Nothing is written unless --write-test-row is given.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "bqrest.h"
#include "https.h"
#include "relayctl.h"
#include "rowenc.h"
#include "util.h"
#include "version.h"

enum verdict { V_OK, V_WARN, V_FAIL };
static const char *const vname[] = { "ok", "warn", "fail" };

struct report {
    bool json;
    json_t *checks;
    unsigned n[3];
};

static void add(struct report *r, enum verdict v, const char *dest, const char *check,
                const char *fix, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void add(struct report *r, enum verdict v, const char *dest, const char *check,
                const char *fix, const char *fmt, ...)
{
    char detail[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    r->n[v]++;
    if (r->json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "check", check, "status", vname[v],
                              "detail", detail, "dest", dest ? dest : "");
        if (!dest)
            json_object_set_new(o, "dest", json_null());
        if (fix && v != V_OK)
            json_object_set_new(o, "fix", json_string(fix));
        json_array_append_new(r->checks, o);
        return;
    }
    printf("%-4s  %-12s %-11s %s\n", vname[v], dest ? dest : "-", check, detail);
    if (fix && v != V_OK)
        printf("      %-12s %-11s fix: %s\n", "", "", fix);
    fflush(stdout);
}

/* Google's error message from a JSON error body, or the start of the body. */
static void error_text(const struct buf *b, char *out, size_t n)
{
    json_t *j = b->data ? json_loadb(b->data, b->len, 0, NULL) : NULL;
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    if (m)
        snprintf(out, n, "%s", m);
    else
        snprintf(out, n, "%.200s", b->data ? b->data : "(no body)");
    json_decref(j);
}

struct call {
    long status;
    struct buf body;
    char err[1024];
    bool sent;
};

static void call(struct call *c, const char *method, const struct conf_dest *d, const char *path,
                 const char *token, const char *json_body)
{
    char url[4096];
    snprintf(url, sizeof url, "%s%s", d->endpoint, path);
    memset(c, 0, sizeof *c);
    c->sent = https_call(method, url, token, d->ca_file, json_body, 20000, &c->body, &c->status,
                         c->err, sizeof c->err) == 0;
}

/* The permissions a destination needs on its table. */
static size_t needed_permissions(const struct conf_dest *d, const char **p)
{
    size_t n = 0;
    p[n++] = "bigquery.tables.updateData";   /* insertAll and AppendRows */
    if (d->api == API_INSERTALL ? d->create_table : !d->schema_file)
        p[n++] = "bigquery.tables.get";      /* create_table probes; storage fetches the schema */
    return n;
}

static void check_dest(struct report *r, const struct conf_dest *d, const char *row,
                       bool write_row)
{
    const char *dn = d->name;
    const char *table = d->table ? d->table : d->name;
    char err[1024], fix[1024];
    struct auth_opts ao = { .credentials = d->credentials, .ca_file = d->ca_file };
    struct auth *a = NULL;
    if (auth_create(&ao, &a, err, sizeof err) != 0) {
        add(r, V_FAIL, dn, "credentials",
            "point credentials at a service-account or authorized-user key file (or adc / metadata)",
            "%s", err);
        return;
    }
    add(r, V_OK, dn, "credentials", NULL, "%s", auth_describe(a));

    char token[4096];
    if (auth_token(a, token, sizeof token, err, sizeof err) != 0) {
        add(r, V_FAIL, dn, "token",
            "check the key is not deleted or disabled (IAM > Service accounts), the clock, and that "
            "the token endpoint is reachable (proxy, firewall, ca_file)", "%s", err);
        auth_free(a);
        return;
    }
    add(r, V_OK, dn, "token", NULL, "obtained");

    struct buf path = { 0 };
    struct call c;
    char msg[600];
    /* dataset */
    bqrest_dataset_path(&path, d->project, d->dataset);
    call(&c, "GET", d, path.data, token, NULL);
    if (!c.sent) {
        add(r, V_FAIL, dn, "dataset", "check endpoint and ca_file, and that the network reaches it",
            "%s", c.err);
        goto out;
    }
    error_text(&c.body, msg, sizeof msg);
    if (c.status == 200) {
        add(r, V_OK, dn, "dataset", NULL, "%s:%s exists", d->project, d->dataset);
    } else if (c.status == 404) {
        snprintf(fix, sizeof fix, "create it: bq --project_id=%s mk --dataset %s:%s", d->project,
                 d->project, d->dataset);
        add(r, V_FAIL, dn, "dataset", fix, "%s:%s does not exist", d->project, d->dataset);
    } else if (c.status == 401 || c.status == 403) {
        snprintf(fix, sizeof fix, "grant the credentials roles/bigquery.dataViewer (or dataEditor) "
                 "on dataset %s:%s", d->project, d->dataset);
        add(r, V_WARN, dn, "dataset", fix, "cannot read dataset %s:%s (HTTP %ld: %s)", d->project,
            d->dataset, c.status, msg);
    } else {
        add(r, V_FAIL, dn, "dataset", NULL, "HTTP %ld: %s", c.status, msg);
    }
    buf_free(&c.body);

    /* table */
    path.len = 0;
    bqrest_table_path(&path, d->project, d->dataset, table);
    call(&c, "GET", d, path.data, token, NULL);
    json_t *tres = NULL;
    bool table_exists = false;
    if (!c.sent) {
        add(r, V_FAIL, dn, "table", NULL, "%s", c.err);
    } else if (c.status == 200) {
        tres = json_loadb(c.body.data, c.body.len, 0, NULL);
        json_t *f = json_object_get(json_object_get(tres, "schema"), "fields");
        add(r, V_OK, dn, "table", NULL, "%s:%s.%s exists (%zu columns)", d->project, d->dataset,
            table, json_array_size(f));
        table_exists = true;
    } else if (c.status == 404) {
        if (d->api == API_INSERTALL && d->create_table && d->schema_file) {
            add(r, V_WARN, dn, "table", NULL, "%s:%s.%s does not exist yet: relayd creates it from "
                "%s on the first row (create_table = yes)", d->project, d->dataset, table,
                d->schema_file);
        } else {
            snprintf(fix, sizeof fix, "create it: bq mk --table %s:%s.%s SCHEMA.json%s", d->project,
                     d->dataset, table,
                     d->api == API_INSERTALL ? ", or set create_table = yes with a schema_file" : "");
            add(r, V_FAIL, dn, "table", fix, "%s:%s.%s does not exist (rows would wait, parked)",
                d->project, d->dataset, table);
        }
    } else if (c.status == 401 || c.status == 403) {
        error_text(&c.body, msg, sizeof msg);
        const char *need[4];
        bool must = needed_permissions(d, need) > 1;
        snprintf(fix, sizeof fix, "grant the credentials roles/bigquery.metadataViewer or "
                 "roles/bigquery.dataEditor on %s:%s.%s", d->project, d->dataset, table);
        add(r, must ? V_FAIL : V_WARN, dn, "table", fix, "cannot read the table (HTTP %ld: %s)%s",
            c.status, msg, must ? "" : "; delivery does not need it");
    } else {
        error_text(&c.body, msg, sizeof msg);
        add(r, V_FAIL, dn, "table", NULL, "HTTP %ld: %s", c.status, msg);
    }
    buf_free(&c.body);

    /* permissions */
    if (table_exists) {
        const char *need[4];
        size_t nn = needed_permissions(d, need);
        json_t *req = json_object(), *arr = json_array();
        for (size_t i = 0; i < nn; i++)
            json_array_append_new(arr, json_string(need[i]));
        json_object_set_new(req, "permissions", arr);
        char *body = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        path.len = 0;
        bqrest_testiam_path(&path, d->project, d->dataset, table);
        call(&c, "POST", d, path.data, token, body);
        free(body);
        if (!c.sent || c.status != 200) {
            error_text(&c.body, msg, sizeof msg);
            add(r, V_WARN, dn, "permissions", NULL, "cannot test IAM permissions (%s)",
                c.sent ? msg : c.err);
        } else {
            json_t *res = json_loadb(c.body.data, c.body.len, 0, NULL);
            json_t *got = json_object_get(res, "permissions");
            char missing[512] = "";
            for (size_t i = 0; i < nn; i++) {
                bool have = false;
                for (size_t k = 0; k < json_array_size(got); k++)
                    have = have || (json_string_value(json_array_get(got, k)) &&
                                    strcmp(json_string_value(json_array_get(got, k)), need[i]) == 0);
                if (!have)
                    snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s",
                             missing[0] ? ", " : "", need[i]);
            }
            json_decref(res);
            if (missing[0]) {
                snprintf(fix, sizeof fix, "grant the credentials roles/bigquery.dataEditor on "
                         "%s:%s.%s (or its dataset)", d->project, d->dataset, table);
                add(r, V_FAIL, dn, "permissions", fix, "missing %s", missing);
            } else {
                char have[256] = "";
                for (size_t i = 0; i < nn; i++)
                    snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s",
                             i ? ", " : "", need[i]);
                add(r, V_OK, dn, "permissions", NULL, "granted: %s", have);
            }
        }
        buf_free(&c.body);
    }

    /* schema and the sample row: the schema file, else the table's */
    struct buf stext = { 0 };
    const char *from = NULL;
    if (d->schema_file) {
        FILE *f = fopen(d->schema_file, "rb");
        if (f) {
            char chunk[8192];
            size_t k;
            while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
                buf_append(&stext, chunk, k);
            fclose(f);
            from = d->schema_file;
        } else {
            add(r, V_FAIL, dn, "schema", "fix schema_file", "%s: %s", d->schema_file,
                strerror(errno));
        }
    } else if (tres) {
        char *t = json_dumps(tres, JSON_COMPACT);
        buf_puts(&stext, t);
        free(t);
        from = "the table (tables.get)";
    }
    if (from) {
        struct rowenc_schema *sch = NULL;
        struct rowenc_error re;
        struct buf out = { 0 };
        if (rowenc_schema_parse(stext.data ? stext.data : "", stext.len, &sch, &re) != ROWENC_OK ||
            rowenc_descriptor(sch, "row", &out, &re) != ROWENC_OK) {
            add(r, V_FAIL, dn, "schema", "fix the schema (BigQuery's JSON schema format)", "%s: %s",
                from, re.msg);
        } else if (!row) {
            add(r, V_OK, dn, "schema", NULL, "from %s: encodable (give --row JSON to try a row)",
                from);
        } else {
            out.len = 0;
            if (rowenc_encode(sch, row, strlen(row), d->ignore_unknown_values ? ROWENC_IGNORE_UNKNOWN : 0,
                              &out, &re) == ROWENC_OK)
                add(r, V_OK, dn, "row", NULL, "the sample row fits the schema from %s", from);
            else
                add(r, V_FAIL, dn, "row", "fix the producer's rows, or the schema",
                    "the sample row would be dead-lettered: %s", re.msg);
        }
        rowenc_schema_free(sch);
        buf_free(&out);
    } else if (row && !d->schema_file) {
        add(r, V_WARN, dn, "row", NULL, "no schema to try the row against (the table is not readable)");
    }
    buf_free(&stext);

    /* the test row, written */
    if (write_row && row) {
        json_t *jr = json_loads(row, 0, NULL);
        if (!jr) {
            add(r, V_FAIL, dn, "test-row", NULL, "--row is not a JSON object");
        } else {
            char id[64];
            snprintf(id, sizeof id, "relayctl-doctor-%lld-%d", (long long)time(NULL), (int)getpid());
            json_t *req = json_pack("{s:s, s:[{s:s, s:o}]}", "kind", "bigquery#tableDataInsertAllRequest",
                                    "rows", "insertId", id, "json", jr);
            char *body = json_dumps(req, JSON_COMPACT);
            json_decref(req);
            path.len = 0;
            bqrest_insertall_path(&path, d->project, d->dataset, table);
            call(&c, "POST", d, path.data, token, body);
            free(body);
            json_t *res = c.sent && c.status == 200 ? json_loadb(c.body.data, c.body.len, 0, NULL) : NULL;
            json_t *ie = json_object_get(res, "insertErrors");
            if (!c.sent) {
                add(r, V_FAIL, dn, "test-row", NULL, "%s", c.err);
            } else if (c.status != 200) {
                error_text(&c.body, msg, sizeof msg);
                add(r, V_FAIL, dn, "test-row", NULL, "insertAll: HTTP %ld: %s", c.status, msg);
            } else if (json_array_size(ie)) {
                char *t = json_dumps(ie, JSON_COMPACT);
                add(r, V_FAIL, dn, "test-row", NULL, "insertAll refused the row: %.400s", t);
                free(t);
            } else {
                add(r, V_OK, dn, "test-row", NULL, "written to %s:%s.%s with insertAll (insertId %s)",
                    d->project, d->dataset, table, id);
            }
            json_decref(res);
            buf_free(&c.body);
        }
    }
    json_decref(tres);
out:
    memset(token, 0, sizeof token);
    buf_free(&path);
    auth_free(a);
}

static void check_spool(struct report *r, const struct ctx *x)
{
    const char *dir = x->spool_dir;
    struct stat st;
    if (stat(dir, &st) != 0) {
        add(r, V_WARN, NULL, "spool", NULL, "%s does not exist yet (relayd creates it at start)", dir);
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        add(r, V_FAIL, NULL, "spool", "set [spool] dir to a directory", "%s is not a directory", dir);
        return;
    }
    if (st.st_mode & 077) {
        char fix[600];
        snprintf(fix, sizeof fix, "chmod 700 %s", dir);
        add(r, V_WARN, NULL, "spool", fix, "%s is open to group or others (mode %04o): rows are "
            "readable by them", dir, (unsigned)(st.st_mode & 07777));
    }
    char data[4200];
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    struct stat ds;
    uint64_t used = stat(data, &ds) == 0 ? (uint64_t)ds.st_blocks * 512 : 0;
    struct statvfs vf;
    if (statvfs(dir, &vf) != 0) {
        add(r, V_WARN, NULL, "disk", NULL, "statvfs %s: %s", dir, strerror(errno));
        return;
    }
    uint64_t avail = (uint64_t)vf.f_bavail * vf.f_frsize;
    uint64_t want = x->conf.max_spool_bytes > used ? x->conf.max_spool_bytes - used : 0;
    if (avail < want)
        add(r, V_WARN, NULL, "disk", "free space, or lower [spool] max_spool_bytes",
            "%.1f GiB free on the spool's filesystem, less than the %.1f GiB the spool may still "
            "grow (max_spool_bytes): the disk fills first (relayd then refuses records)",
            avail / 1073741824.0, want / 1073741824.0);
    else
        add(r, V_OK, NULL, "disk", NULL, "%.1f GiB free; the spool uses %.1f of %.1f GiB", avail / 1073741824.0,
            used / 1073741824.0, x->conf.max_spool_bytes / 1073741824.0);
}

static bool ping(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (!path || strlen(path) >= sizeof sa.sun_path)
        return false;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[64] = "";
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && write(fd, "ping\n", 5) == 5 &&
              read(fd, buf, sizeof buf - 1) > 0 && strstr(buf, "pong");
    close(fd);
    return ok;
}

static void check_sockets(struct report *r, const struct ctx *x)
{
    bool up = ping(x->control);
    if (up)
        add(r, V_OK, NULL, "relayd", NULL, "running (control socket %s)", x->control);
    else
        add(r, V_WARN, NULL, "relayd", "start it: systemctl start relayd",
            "not running (no answer on %s)", x->control ? x->control : "(none)");
    struct stat st;
    if (stat(x->socket, &st) != 0) {
        add(r, up ? V_FAIL : V_WARN, NULL, "socket", NULL, "%s: %s%s", x->socket, strerror(errno),
            up ? "" : " (relayd creates it at start)");
        return;
    }
    if (!S_ISSOCK(st.st_mode)) {
        add(r, V_FAIL, NULL, "socket", "remove it, or set [ingest] socket elsewhere",
            "%s is not a socket", x->socket);
        return;
    }
    if (st.st_mode & 0002)
        add(r, V_WARN, NULL, "socket", "set [ingest] socket_mode = 0660 and a socket_group",
            "%s is writable by everyone (mode %04o)", x->socket, (unsigned)(st.st_mode & 07777));
    else
        add(r, V_OK, NULL, "socket", NULL, "%s (mode %04o, gid %u)%s", x->socket,
            (unsigned)(st.st_mode & 07777), (unsigned)st.st_gid,
            access(x->socket, W_OK) == 0 ? "; this user may send" : "; this user may not send");
}

static const char DOCTOR_USAGE[] =
    "Usage: relayctl doctor [DEST] [--row JSON] [--write-test-row] [--json]\n"
    "Checks the setup, one line per check (ok, warn or fail, with how to fix it):\n"
    "for each destination (or DEST only) that the credentials load, a token can be\n"
    "had, the dataset and table exist (or relayd may create the table), IAM grants\n"
    "what delivery needs, and the schema accepts the --row sample (a dry run: the\n"
    "same rules decide on both APIs); then the spool's directory and disk, and the\n"
    "sockets. Nothing is written unless --write-test-row is given: then the --row\n"
    "goes into the table with insertAll. Exit 0 when nothing failed, 1 when a check\n"
    "failed, 3 when the config cannot be loaded.\n";

void ctl_doctor_usage(FILE *f)
{
    fputs(DOCTOR_USAGE, f);
}

int ctl_doctor(struct ctx *x, int argc, char **argv)
{
    const char *only = NULL, *row = NULL;
    bool write_row = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--row") == 0 && i + 1 < argc) {
            row = argv[++i];
        } else if (strcmp(argv[i], "--write-test-row") == 0) {
            write_row = true;
        } else if (argv[i][0] != '-' && !only) {
            only = argv[i];
        } else {
            fprintf(stderr, "relayctl doctor: unknown argument '%s'\n%s", argv[i], DOCTOR_USAGE);
            return EXIT_USAGE;
        }
    }
    if (write_row && !row) {
        fprintf(stderr, "relayctl doctor: --write-test-row needs --row JSON (the row to write)\n");
        return EXIT_USAGE;
    }
    if (!x->have_conf) {
        fprintf(stderr, "relayctl doctor: no config loaded (give -c FILE; relayd --check-config -c "
                "FILE says what is wrong with it)\n");
        return EXIT_CONFIG;
    }
    struct report r = { .json = x->json, .checks = json_array() };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    bool found = false;
    for (size_t i = 0; i < x->conf.n_dests; i++) {
        const struct conf_dest *d = &x->conf.dests[i];
        if (only && strcmp(only, d->name) != 0)
            continue;
        found = true;
        if (!conf_dest_delivers(d)) {
            add(&r, V_WARN, d->name, "delivery", "set project and dataset to deliver",
                "no project/dataset: rows only queue");
            continue;
        }
        check_dest(&r, d, row, write_row);
    }
    if (only && !found) {
        fprintf(stderr, "relayctl doctor: no destination '%s' in %s\n", only,
                x->conf.path ? x->conf.path : "the config");
        json_decref(r.checks);
        curl_global_cleanup();
        return EXIT_USAGE;
    }
    check_spool(&r, x);
    check_sockets(&r, x);
    curl_global_cleanup();
    if (r.json) {
        json_t *doc = json_pack("{s:o, s:i, s:i, s:i}", "checks", r.checks, "ok", (int)r.n[V_OK],
                                "warn", (int)r.n[V_WARN], "fail", (int)r.n[V_FAIL]);
        json_dumpf(doc, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(doc);
    } else {
        json_decref(r.checks);
        printf("%u ok, %u warn, %u fail\n", r.n[V_OK], r.n[V_WARN], r.n[V_FAIL]);
    }
    return r.n[V_FAIL] ? EXIT_REFUSED : 0;
}
