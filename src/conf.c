/*
 * conf.c -- the configuration file.
 *
 * The format is a strict INI dialect, parsed here in one pass so that every
 * message can name the line it is about:
 *
 *   # comment            ; comment       (only at the start of a line)
 *   [section]            [destination NAME]
 *   key = value          (spaces around '=' and at both ends are trimmed)
 *
 * Values are taken verbatim to the end of the line: there are no inline
 * comments and no quoting, so a value may hold '#' or ';'. Each key is looked
 * up in a table that names its section, its type and where it is stored;
 * unknown sections and keys are errors, never silently ignored.
 */
#include "conf.h"
#include "forward.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum key_type { T_STR, T_PATH, T_SIZE, T_DURATION, T_UINT, T_MODE, T_LOGLEVEL,
                T_DURABILITY, T_UIDS, T_GIDS, T_USER, T_GROUP, T_BOOL, T_API, T_URL,
                T_DELIVERY, T_ROUTE, T_TIMEFMT, T_DMODE };

struct key_def {
    const char *section;
    const char *name;
    enum key_type type;
    size_t offset;          /* into struct conf */
    uint64_t min, max;      /* for numeric types; max 0 means no bound */
};

#define OFF(f) offsetof(struct conf, f)

static const struct key_def keys[] = {
    { "relayd", "log_level",           T_LOGLEVEL,   OFF(log_level), 0, 0 },
    { "relayd", "control_socket",      T_PATH,       OFF(control_socket), 0, 0 },
    { "relayd", "control_socket_mode", T_MODE,       OFF(control_socket_mode), 0, 0 },
    { "relayd", "metrics_listen",      T_STR,        OFF(metrics_listen), 0, 0 },
    { "spool",  "dir",                 T_PATH,       OFF(spool_dir), 0, 0 },
    { "spool",  "max_spool_bytes",     T_SIZE,       OFF(max_spool_bytes), 1 << 20, 1ULL << 44 },
    { "spool",  "durability",          T_DURABILITY, OFF(durability), 0, 0 },
    { "spool",  "sync_interval",       T_DURATION,   OFF(sync_interval_ms), 1, 3600000 },
    { "spool",  "dlq_max_bytes",       T_SIZE,       OFF(dlq_max_bytes), 0, 0 },
    { "spool",  "dlq_max_age",         T_DURATION,   OFF(dlq_max_age_ms), 0, 0 },
    { "ingest", "socket",              T_PATH,       OFF(socket_path), 0, 0 },
    { "ingest", "socket_mode",         T_MODE,       OFF(socket_mode), 0, 0 },
    { "ingest", "socket_owner",        T_USER,       OFF(socket_uid), 0, 0 },
    { "ingest", "socket_group",        T_GROUP,      OFF(socket_gid), 0, 0 },
    { "ingest", "allowed_uids",        T_UIDS,       0, 0, 0 },
    { "ingest", "allowed_gids",        T_GIDS,       0, 0, 0 },
    { "ingest", "max_record_bytes",    T_SIZE,       OFF(max_record_bytes), 16, 64 << 20 },
    { "ingest", "max_connections",     T_UINT,       OFF(max_connections), 1, 1000000 },
    { "ingest", "full_wait",           T_DURATION,   OFF(full_wait_ms), 0, 86400000 },
    { "ingest", "max_pending_bytes",   T_SIZE,       OFF(max_pending_bytes), 64 << 10, 1ULL << 32 },
    { "ingest", "max_depth",           T_UINT,       OFF(max_depth), 1, 1000 },
    { "ingest", "default_table",       T_STR,        OFF(default_table), 0, 0 },
    { "forward", "socket",             T_PATH,       OFF(forward_socket), 0, 0 },
    { "forward", "socket_mode",        T_MODE,       OFF(forward_socket_mode), 0, 0 },
    { "forward", "listen",             T_STR,        OFF(forward_listen), 0, 0 },
    { "forward", "time_key",           T_STR,        OFF(forward_time_key), 0, 0 },
    { "forward", "time_format",        T_TIMEFMT,    OFF(forward_time_format), 0, 0 },
    { "forward", "max_message_bytes",  T_SIZE,       OFF(forward_max_message_bytes), 64 << 10, 1ULL << 30 },
    { "forward", "route",              T_ROUTE,      0, 0, 0 },
};

#define DOFF(f) offsetof(struct conf_dest, f)

static const struct key_def dest_keys[] = {
    { "destination", "project",               T_STR,      DOFF(project), 0, 0 },
    { "destination", "dataset",               T_STR,      DOFF(dataset), 0, 0 },
    { "destination", "table",                 T_STR,      DOFF(table), 0, 0 },
    { "destination", "api",                   T_API,      DOFF(api), 0, 0 },
    { "destination", "credentials",           T_STR,      DOFF(credentials), 0, 0 },
    { "destination", "endpoint",              T_URL,      DOFF(endpoint), 0, 0 },
    { "destination", "ca_file",               T_PATH,     DOFF(ca_file), 0, 0 },
    { "destination", "template_suffix",       T_STR,      DOFF(template_suffix), 0, 0 },
    { "destination", "gzip",                  T_BOOL,     DOFF(gzip), 0, 0 },
    { "destination", "skip_invalid_rows",     T_BOOL,     DOFF(skip_invalid_rows), 0, 0 },
    { "destination", "ignore_unknown_values", T_BOOL,     DOFF(ignore_unknown_values), 0, 0 },
    { "destination", "batch_rows",            T_UINT,     DOFF(batch_rows), 1, 50000 },
    { "destination", "batch_bytes",           T_SIZE,     DOFF(batch_bytes), 1024, 9961472 },
    { "destination", "flush_interval",        T_DURATION, DOFF(flush_interval_ms), 0, 3600000 },
    { "destination", "max_inflight",          T_UINT,     DOFF(max_inflight), 1, 64 },
    { "destination", "max_inflight_bytes",    T_SIZE,     DOFF(max_inflight_bytes), 1024, 1ULL << 40 },
    { "destination", "connections",           T_UINT,     DOFF(connections), 1, CONF_MAX_CONNECTIONS },
    { "destination", "request_timeout",       T_DURATION, DOFF(request_timeout_ms), 1000, 3600000 },
    { "destination", "retry_base",            T_DURATION, DOFF(retry_base_ms), 1, 3600000 },
    { "destination", "retry_cap",             T_DURATION, DOFF(retry_cap_ms), 1, 86400000 },
    { "destination", "rate_limit_wait",       T_DURATION, DOFF(rate_limit_wait_ms), 0, 86400000 },
    { "destination", "quota_wait",            T_DURATION, DOFF(quota_wait_ms), 0, 86400000 },
    { "destination", "park_wait",             T_DURATION, DOFF(park_wait_ms), 1000, 86400000 },
    { "destination", "max_age",               T_DURATION, DOFF(max_age_ms), 0, 0 },
    { "destination", "delivery",              T_DELIVERY, DOFF(exactly_once), 0, 0 },
    { "destination", "table_time_field",      T_STR,      DOFF(table_time_field), 0, 0 },
    { "destination", "create_table",          T_BOOL,     DOFF(create_table), 0, 0 },
    { "destination", "time_partitioning",     T_STR,      DOFF(time_partitioning), 0, 0 },
    { "destination", "partition_field",       T_STR,      DOFF(partition_field), 0, 0 },
    { "destination", "clustering",            T_STR,      DOFF(clustering), 0, 0 },
    { "destination", "partition_expiration",  T_DURATION, DOFF(partition_expiration_ms), 0, 0 },
    { "destination", "schema_file",           T_PATH,     DOFF(schema_file), 0, 0 },
    { "destination", "storage_endpoint",      T_STR,      DOFF(storage_endpoint), 0, 0 },
    { "destination", "mode",                  T_DMODE,    DOFF(batch_mode), 0, 0 },
    { "destination", "batch_commit_rows",     T_UINT,     DOFF(batch_commit_rows), 1, 1000000000 },
    { "destination", "batch_commit_interval", T_DURATION, DOFF(batch_commit_interval_ms), 1000, 86400000 },
    { "destination", "batch_commit_idle",     T_DURATION, DOFF(batch_commit_idle_ms), 0, 86400000 },
};

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) {
        log_error("out of memory");
        abort();
    }
    return d;
}

const char *conf_durability_name(enum conf_durability d)
{
    switch (d) {
    case DURABILITY_FSYNC: return "fsync";
    case DURABILITY_OS:    return "os";
    case DURABILITY_NONE:  return "none";
    }
    return "?";
}

void conf_defaults(struct conf *c)
{
    memset(c, 0, sizeof *c);
    c->log_level = LOG_INFO;
    c->control_socket = xstrdup("/run/relayd/relayd.ctl");
    c->control_socket_mode = 0660;
    c->spool_dir = xstrdup("/var/lib/relayd");
    c->max_spool_bytes = 1ULL << 30;
    c->durability = DURABILITY_FSYNC;
    c->sync_interval_ms = 1000;
    c->socket_path = xstrdup("/run/relayd/relayd.sock");
    c->socket_mode = 0660;
    c->socket_uid = (uid_t)-1;
    c->socket_gid = (gid_t)-1;
    c->max_record_bytes = 9ULL << 20;
    c->max_connections = 4096;
    c->full_wait_ms = 5000;
    c->max_pending_bytes = 32ULL << 20;
    c->max_depth = 15 + 1;   /* BigQuery allows 15 levels of nested RECORD below the row */
    c->forward_socket_mode = 0660;
    c->forward_time_format = FWD_TIME_TIMESTAMP;
    c->forward_max_message_bytes = 16ULL << 20;
}

static void dest_defaults(struct conf_dest *d)
{
    d->api = API_INSERTALL;
    d->credentials = xstrdup("adc");
    d->endpoint = xstrdup("https://bigquery.googleapis.com");
    d->gzip = true;
    d->skip_invalid_rows = true;
    d->batch_rows = 500;
    d->batch_bytes = 9961472;   /* 9.5 MiB: under the 10 MB request limit with room for the envelope */
    d->flush_interval_ms = 200;
    d->max_inflight = 4;
    d->max_inflight_bytes = 64ULL << 20;
    d->connections = 1;
    d->request_timeout_ms = 60000;
    d->retry_base_ms = 1000;
    d->retry_cap_ms = 300000;
    d->rate_limit_wait_ms = 5000;
    d->quota_wait_ms = 600000;
    d->park_wait_ms = 60000;
    d->storage_endpoint = xstrdup("bigquerystorage.googleapis.com:443");
    d->batch_commit_rows = 1000000;
    d->batch_commit_interval_ms = 60000;
    d->batch_commit_idle_ms = 2000;
}

static void dest_free(struct conf_dest *d)
{
    free(d->name);
    free(d->project);
    free(d->dataset);
    free(d->table);
    free(d->credentials);
    free(d->endpoint);
    free(d->ca_file);
    free(d->template_suffix);
    free(d->schema_file);
    free(d->storage_endpoint);
    free(d->table_time_field);
    free(d->time_partitioning);
    free(d->partition_field);
    free(d->clustering);
}

const char *conf_route_tag(const struct conf *c, const char *tag, size_t len)
{
    for (size_t i = 0; i < c->n_routes; i++)
        if (fwd_tag_match(c->routes[i].pattern, tag, len))
            return c->routes[i].dest;
    const struct conf_dest *d = conf_find_dest(c, tag, len);
    if (d)
        return d->name;
    return c->default_table;
}

bool conf_dest_delivers(const struct conf_dest *d)
{
    return d->project && d->dataset;
}

void conf_free(struct conf *c)
{
    free(c->path);
    free(c->control_socket);
    free(c->metrics_listen);
    free(c->spool_dir);
    free(c->socket_path);
    free(c->allowed_uids);
    free(c->allowed_gids);
    free(c->default_table);
    free(c->forward_socket);
    free(c->forward_listen);
    free(c->forward_time_key);
    for (size_t i = 0; i < c->n_routes; i++) {
        free(c->routes[i].pattern);
        free(c->routes[i].dest);
    }
    free(c->routes);
    for (size_t i = 0; i < c->n_dests; i++)
        dest_free(&c->dests[i]);
    free(c->dests);
    memset(c, 0, sizeof *c);
}

bool conf_valid_name(const char *name, size_t len)
{
    if (len == 0 || len > CONF_NAME_MAX)
        return false;
    if (!isalnum((unsigned char)name[0]) && name[0] != '_')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!isalnum(ch) && ch != '_' && ch != '-' && ch != '.')
            return false;
    }
    return true;
}

bool conf_valid_table(const char *t)
{
    /* a BigQuery table id (we accept the common ASCII subset), then an
     * optional $partition decorator */
    size_t n = strcspn(t, "$");
    if (n == 0 || n > 1024)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)t[i]) && t[i] != '_' && t[i] != '-')
            return false;
    if (t[n] == '$')
        for (const char *p = t + n + 1; *p; p++)
            if (!isalnum((unsigned char)*p) && *p != '_')
                return false;
    return true;
}

const struct conf_dest *conf_find_dest(const struct conf *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->n_dests; i++) {
        if (strlen(c->dests[i].name) == len && memcmp(c->dests[i].name, name, len) == 0)
            return &c->dests[i];
    }
    return NULL;
}

static bool gid_allowed(const struct conf *c, gid_t gid)
{
    if (c->socket_gid != (gid_t)-1 && gid == c->socket_gid)
        return true;
    for (size_t i = 0; i < c->n_allowed_gids; i++)
        if (c->allowed_gids[i] == gid)
            return true;
    return false;
}

bool conf_peer_allowed_groups(const struct conf *c, uid_t uid, gid_t gid, const gid_t *groups,
                              size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (gid_allowed(c, groups[i]))
            return true;
    return conf_peer_allowed(c, uid, gid);
}

bool conf_peer_allowed(const struct conf *c, uid_t uid, gid_t gid)
{
    if (uid == 0 || uid == geteuid() || c->allow_any_uid)
        return true;
    for (size_t i = 0; i < c->n_allowed_uids; i++)
        if (c->allowed_uids[i] == uid)
            return true;
    if (gid_allowed(c, gid))
        return true;
    if (c->n_allowed_gids == 0 && c->socket_gid == (gid_t)-1)
        return false;
    /* SO_PEERCRED gives the primary group only: look up the others */
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) != 0 || !res)
        return false;
    gid_t groups[256];
    int n = 256;
    if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
        n = 256;   /* truncated: check what we have */
    for (int i = 0; i < n; i++)
        if (gid_allowed(c, groups[i]))
            return true;
    return false;
}

/* ---- parsing ----------------------------------------------------------- */

struct parser {
    const char *file;
    unsigned line;
    char section[sizeof "destination " + CONF_NAME_MAX];
    char section_arg[CONF_NAME_MAX + 8];
    char *err;
    size_t errlen;
};

static int perr(struct parser *p, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int perr(struct parser *p, const char *key, const char *fmt, ...)
{
    int n;
    if (key)
        n = snprintf(p->err, p->errlen, "%s:%u: [%s] %s: ", p->file, p->line, p->section, key);
    else
        n = snprintf(p->err, p->errlen, "%s:%u: ", p->file, p->line);
    if (n < 0 || (size_t)n >= p->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

/* Parses a comma- or space-separated list of ids; names are resolved with
 * getpwnam/getgrnam. "*" alone (uids only) allows every uid. */
static int parse_ids(struct parser *p, const char *key, char *v, bool groups, struct conf *c)
{
    if (!groups) {
        free(c->allowed_uids);
        c->allowed_uids = NULL;
        c->n_allowed_uids = 0;
        c->allow_any_uid = false;
    } else {
        free(c->allowed_gids);
        c->allowed_gids = NULL;
        c->n_allowed_gids = 0;
    }
    for (char *save = NULL, *tok = strtok_r(v, ", \t", &save); tok;
         tok = strtok_r(NULL, ", \t", &save)) {
        uint64_t id;
        if (!groups && strcmp(tok, "*") == 0) {
            c->allow_any_uid = true;
            continue;
        }
        if (util_parse_u64(tok, UINT32_MAX - 1, &id) != 0) {
            if (groups) {
                struct group *g = getgrnam(tok);
                if (!g)
                    return perr(p, key, "no such group '%s'", tok);
                id = g->gr_gid;
            } else {
                struct passwd *pw = getpwnam(tok);
                if (!pw)
                    return perr(p, key, "no such user '%s'", tok);
                id = pw->pw_uid;
            }
        }
        if (groups) {
            gid_t *n = realloc(c->allowed_gids, (c->n_allowed_gids + 1) * sizeof *n);
            if (!n)
                return perr(p, key, "out of memory");
            c->allowed_gids = n;
            n[c->n_allowed_gids++] = (gid_t)id;
        } else {
            uid_t *n = realloc(c->allowed_uids, (c->n_allowed_uids + 1) * sizeof *n);
            if (!n)
                return perr(p, key, "out of memory");
            c->allowed_uids = n;
            n[c->n_allowed_uids++] = (uid_t)id;
        }
    }
    return 0;
}

static int set_key(struct parser *p, struct conf *c, void *obj, const struct key_def *k, char *v)
{
    char *base = (char *)obj + k->offset;
    uint64_t n;
    switch (k->type) {
    case T_STR:
    case T_PATH: {
        char **dst = (char **)(void *)base;
        if (k->type == T_PATH && v[0] != '/')
            return perr(p, k->name, "expected an absolute path, got '%s'", v);
        free(*dst);
        *dst = *v ? xstrdup(v) : NULL;
        return 0;
    }
    case T_SIZE:
        if (util_parse_size(v, &n))
            return perr(p, k->name, "expected a size such as 512K, 64M or 4G, got '%s'", v);
        break;
    case T_DURATION:
        if (util_parse_duration_ms(v, &n))
            return perr(p, k->name, "expected a duration such as 250ms, 5s or 2m, got '%s'", v);
        break;
    case T_UINT:
        if (util_parse_u64(v, UINT64_MAX, &n))
            return perr(p, k->name, "expected a whole number, got '%s'", v);
        break;
    case T_MODE: {
        char *end;
        errno = 0;
        unsigned long m = strtoul(v, &end, 8);
        if (!*v || *end || errno || m > 0777)
            return perr(p, k->name, "expected an octal file mode such as 0660, got '%s'", v);
        *(mode_t *)(void *)base = (mode_t)m;
        return 0;
    }
    case T_LOGLEVEL: {
        enum log_level l;
        if (log_parse_level(v, &l))
            return perr(p, k->name, "expected one of debug, info, warn, error, got '%s'", v);
        *(int *)(void *)base = (int)l;
        return 0;
    }
    case T_DURABILITY: {
        enum conf_durability d;
        if (strcmp(v, "fsync") == 0)
            d = DURABILITY_FSYNC;
        else if (strcmp(v, "os") == 0)
            d = DURABILITY_OS;
        else if (strcmp(v, "none") == 0)
            d = DURABILITY_NONE;
        else
            return perr(p, k->name, "expected one of fsync, os, none, got '%s'", v);
        *(enum conf_durability *)(void *)base = d;
        return 0;
    }
    case T_USER: {
        struct passwd *pw;
        if (util_parse_u64(v, UINT32_MAX - 1, &n) == 0)
            *(uid_t *)(void *)base = (uid_t)n;
        else if ((pw = getpwnam(v)))
            *(uid_t *)(void *)base = pw->pw_uid;
        else
            return perr(p, k->name, "no such user '%s'", v);
        return 0;
    }
    case T_GROUP: {
        struct group *gr;
        if (util_parse_u64(v, UINT32_MAX - 1, &n) == 0)
            *(gid_t *)(void *)base = (gid_t)n;
        else if ((gr = getgrnam(v)))
            *(gid_t *)(void *)base = gr->gr_gid;
        else
            return perr(p, k->name, "no such group '%s'", v);
        return 0;
    }
    case T_BOOL: {
        bool b;
        if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1"))
            b = true;
        else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "0"))
            b = false;
        else
            return perr(p, k->name, "expected yes or no, got '%s'", v);
        *(bool *)(void *)base = b;
        return 0;
    }
    case T_API:
        if (strcmp(v, "insertall") == 0)
            *(enum conf_api *)(void *)base = API_INSERTALL;
        else if (strcmp(v, "storage") == 0)
            *(enum conf_api *)(void *)base = API_STORAGE;
        else
            return perr(p, k->name, "expected insertall or storage, got '%s'", v);
        return 0;
    case T_URL: {
        char **dst = (char **)(void *)base;
        if (strncmp(v, "https://", 8) != 0 || !v[8])
            return perr(p, k->name, "expected an https:// URL (TLS is always verified; use "
                        "ca_file for a private CA), got '%s'", v);
        size_t vl = strlen(v);
        while (vl > 8 && v[vl - 1] == '/')
            v[--vl] = 0;
        free(*dst);
        *dst = xstrdup(v);
        return 0;
    }
    case T_DMODE:
        if (strcmp(v, "stream") == 0)
            *(bool *)(void *)base = false;
        else if (strcmp(v, "batch") == 0)
            *(bool *)(void *)base = true;
        else
            return perr(p, k->name, "expected stream or batch, got '%s'", v);
        return 0;
    case T_DELIVERY:
        if (strcmp(v, "at_least_once") == 0)
            *(bool *)(void *)base = false;
        else if (strcmp(v, "exactly_once") == 0)
            *(bool *)(void *)base = true;
        else
            return perr(p, k->name, "expected at_least_once or exactly_once, got '%s'", v);
        return 0;
    case T_TIMEFMT: {
        int f = fwd_time_format_parse(v);
        if (f < 0)
            return perr(p, k->name, "expected timestamp, rfc3339_ns or unix_ns, got '%s'", v);
        *(int *)(void *)base = f;
        return 0;
    }
    case T_ROUTE: {
        char *pat = v, *d = v;
        while (*d && !isspace((unsigned char)*d))
            d++;
        if (*d)
            *d++ = 0;
        d = trim(d);
        if (!*pat || !*d || strpbrk(d, " \t"))
            return perr(p, k->name, "expected 'TAG_PATTERN DESTINATION' (e.g. 'app.** events'), "
                        "got '%s'", v);
        for (const char *q = pat; *q; q++)
            if (!isalnum((unsigned char)*q) && !strchr("_-.*", *q))
                return perr(p, k->name, "tag pattern '%s': use letters, digits, '_', '-', '.', "
                            "'*' (within one part) and '**' (any parts)", pat);
        struct conf_route *r = realloc(c->routes, (c->n_routes + 1) * sizeof *r);
        if (!r)
            return perr(p, k->name, "out of memory");
        c->routes = r;
        r[c->n_routes].pattern = xstrdup(pat);
        r[c->n_routes].dest = xstrdup(d);
        r[c->n_routes].line = p->line;
        c->n_routes++;
        return 0;
    }
    case T_UIDS:
        return parse_ids(p, k->name, v, false, c);
    case T_GIDS:
        return parse_ids(p, k->name, v, true, c);
    }
    if (n < k->min || (k->max && n > k->max))
        return perr(p, k->name, "%s is out of range [%llu, %llu]", v,
                    (unsigned long long)k->min, (unsigned long long)k->max);
    *(uint64_t *)(void *)base = n;
    return 0;
}

static int begin_section(struct parser *p, struct conf *c, char *hdr)
{
    char *name = trim(hdr);
    char *arg = name;
    while (*arg && !isspace((unsigned char)*arg))
        arg++;
    if (*arg)
        *arg++ = 0;
    arg = trim(arg);
    if (strlen(name) >= sizeof p->section)
        return perr(p, NULL, "unknown section [%s]", name);
    snprintf(p->section, sizeof p->section, "%s", name);
    p->section_arg[0] = 0;

    if (strcmp(name, "destination") == 0) {
        if (!*arg)
            return perr(p, NULL, "[destination] needs a name: [destination NAME]");
        if (!conf_valid_name(arg, strlen(arg)))
            return perr(p, NULL, "invalid destination name '%s': use 1-%d letters, digits, "
                        "'_', '-' or '.', starting with a letter, digit or '_'", arg, CONF_NAME_MAX);
        if (conf_find_dest(c, arg, strlen(arg)))
            return perr(p, NULL, "destination '%s' is defined twice", arg);
        if (c->n_dests >= CONF_MAX_DESTS)
            return perr(p, NULL, "too many destinations (at most %d)", CONF_MAX_DESTS);
        struct conf_dest *d = realloc(c->dests, (c->n_dests + 1) * sizeof *d);
        if (!d)
            return perr(p, NULL, "out of memory");
        c->dests = d;
        memset(&d[c->n_dests], 0, sizeof *d);
        dest_defaults(&d[c->n_dests]);
        d[c->n_dests].name = xstrdup(arg);
        c->n_dests++;
        snprintf(p->section, sizeof p->section, "destination %s", arg);
        snprintf(p->section_arg, sizeof p->section_arg, "%s", arg);
        return 0;
    }
    if (*arg)
        return perr(p, NULL, "section [%s] takes no name", name);
    if (strcmp(name, "relayd") && strcmp(name, "spool") && strcmp(name, "ingest") &&
        strcmp(name, "forward"))
        return perr(p, NULL, "unknown section [%s] (expected relayd, spool, ingest, forward or "
                    "destination NAME)", name);
    return 0;
}

static int parse_line(struct parser *p, struct conf *c, char *raw)
{
    char *s = trim(raw);
    if (!*s || *s == '#' || *s == ';')
        return 0;
    if (*s == '[') {
        char *end = strchr(s, ']');
        if (!end || end[1])
            return perr(p, NULL, "malformed section header, expected [name]");
        *end = 0;
        return begin_section(p, c, s + 1);
    }
    char *eq = strchr(s, '=');
    if (!eq)
        return perr(p, NULL, "expected 'key = value' or '[section]', got '%s'", s);
    *eq = 0;
    char *key = trim(s), *val = trim(eq + 1);
    if (!p->section[0])
        return perr(p, NULL, "key '%s' before any [section]", key);
    if (p->section_arg[0]) {   /* [destination NAME] */
        for (size_t i = 0; i < sizeof dest_keys / sizeof dest_keys[0]; i++)
            if (strcmp(dest_keys[i].name, key) == 0) {
                struct conf_dest *d = &c->dests[c->n_dests - 1];
                if (strcmp(key, "credentials") == 0)
                    d->credentials_line = p->line;
                else if (strcmp(key, "ca_file") == 0)
                    d->ca_file_line = p->line;
                else if (strcmp(key, "schema_file") == 0)
                    d->schema_file_line = p->line;
                else if (strcmp(key, "table") == 0)
                    d->table_line = p->line;
                else if (strcmp(key, "connections") == 0)
                    d->connections_line = p->line;
                else if (strcmp(key, "mode") == 0)
                    d->mode_line = p->line;
                else if (strcmp(key, "delivery") == 0)
                    d->delivery_line = p->line;
                else if (strcmp(key, "table_time_field") == 0)
                    d->table_time_field_line = p->line;
                return set_key(p, c, d, &dest_keys[i], val);
            }
        return perr(p, key, "unknown key");
    }
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strcmp(keys[i].section, p->section) == 0 && strcmp(keys[i].name, key) == 0) {
            if (strcmp(p->section, "spool") == 0 && strcmp(key, "dir") == 0)
                c->spool_dir_line = p->line;
            else if (strcmp(p->section, "ingest") == 0 && strcmp(key, "socket") == 0)
                c->socket_line = p->line;
            else if (strcmp(p->section, "forward") == 0 && strcmp(key, "socket") == 0)
                c->forward_socket_line = p->line;
            else if (strcmp(key, "control_socket") == 0)
                c->control_socket_line = p->line;
            return set_key(p, c, c, &keys[i], val);
        }
    }
    return perr(p, key, "unknown key");
}

/* A cross-key error about one key of a destination: "FILE:LINE: [destination
 * NAME] KEY: ..." when the key was set in file, else "[destination NAME] KEY:
 * ..." (conf_load prefixes the file). */
static void verr(char *err, size_t errlen, const char *file, unsigned line, const char *dest,
                 const char *key, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static void verr(char *err, size_t errlen, const char *file, unsigned line, const char *dest,
                 const char *key, const char *fmt, ...)
{
    int n = file && line ? snprintf(err, errlen, "%s:%u: [destination %s] %s: ", file, line, dest, key)
                         : snprintf(err, errlen, "[destination %s] %s: ", dest, key);
    if (n < 0 || (size_t)n >= errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static int validate(const struct conf *c, const char *file, char *err, size_t errlen);

int conf_validate(const struct conf *c, char *err, size_t errlen)
{
    return validate(c, c->path, err, errlen);
}

static int validate(const struct conf *c, const char *file, char *err, size_t errlen)
{
    if (c->metrics_listen && !metrics_valid_listen(c->metrics_listen)) {
        snprintf(err, errlen, "[relayd] metrics_listen: '%s': expected 127.0.0.1:PORT, "
                 "localhost:PORT or unix:/PATH (metrics are served on loopback only)",
                 c->metrics_listen);
        return -1;
    }
    if (c->default_table && !conf_find_dest(c, c->default_table, strlen(c->default_table))) {
        snprintf(err, errlen, "[ingest] default_table: '%s' is not a [destination]",
                 c->default_table);
        return -1;
    }
    for (size_t i = 0; i < c->n_routes; i++) {
        const struct conf_route *r = &c->routes[i];
        if (!conf_find_dest(c, r->dest, strlen(r->dest))) {
            snprintf(err, errlen, "line %u: [forward] route: '%s' is not a [destination]",
                     r->line, r->dest);
            return -1;
        }
    }
    if (c->forward_listen && !metrics_valid_listen(c->forward_listen)) {
        snprintf(err, errlen, "[forward] listen: '%s': expected 127.0.0.1:PORT or localhost:PORT "
                 "(the forward input has no authentication over TCP, so it listens on loopback "
                 "only; prefer [forward] socket, which checks peer credentials)",
                 c->forward_listen);
        return -1;
    }
    if (c->forward_listen && strncmp(c->forward_listen, "unix:", 5) == 0) {
        snprintf(err, errlen, "[forward] listen: use [forward] socket = PATH for a Unix socket");
        return -1;
    }
    if (c->forward_time_key) {
        const char *k = c->forward_time_key;
        bool ok = strlen(k) <= 300 && (isalpha((unsigned char)k[0]) || k[0] == '_');
        for (const char *q = k; ok && *q; q++)
            ok = isalnum((unsigned char)*q) || *q == '_';
        if (!ok) {
            snprintf(err, errlen, "[forward] time_key: '%s' is not a BigQuery column name "
                     "(letters, digits and '_', starting with a letter or '_')", k);
            return -1;
        }
    }
    if (c->n_dests == 0) {
        snprintf(err, errlen, "no [destination NAME] section: records need somewhere to go");
        return -1;
    }
    for (size_t i = 0; i < c->n_dests; i++) {
        const struct conf_dest *d = &c->dests[i];
        if (!d->project != !d->dataset) {
            snprintf(err, errlen, "[destination %s]: set both project and dataset (or neither, "
                     "to only queue its records)", d->name);
            return -1;
        }
        const char *tbl = d->table ? d->table : d->name;
        if (d->api == API_STORAGE && strchr(tbl, '$')) {
            /* docs/delivery.md: BigQuery's Storage Write API documentation says
             * "The Storage Write API does not support the use of partition decorators." */
            verr(err, errlen, file, d->table_line, d->name, "table",
                 "'%s': the Storage Write API does not accept partition decorators ($...): rows "
                 "go to the partition of their partitioning column (or of their arrival, for "
                 "ingestion-time partitioning) by themselves, so drop the decorator; or shard by "
                 "table name (events_%%Y%%m%%d); or use api = insertall, which accepts decorators",
                 tbl);
            return -1;
        }
        if (d->api != API_STORAGE && d->connections > 1) {
            verr(err, errlen, file, d->connections_line, d->name, "connections",
                 "%llu connections apply to api = storage (parallel AppendRows connections); "
                 "insertAll already sends max_inflight requests at once over kept-alive "
                 "connections: raise max_inflight instead", (unsigned long long)d->connections);
            return -1;
        }
        if (d->create_table && !d->schema_file) {
            snprintf(err, errlen, "[destination %s] create_table needs schema_file (the schema "
                     "of the tables to create)", d->name);
            return -1;
        }
        if (d->time_partitioning && strcmp(d->time_partitioning, "DAY") &&
            strcmp(d->time_partitioning, "HOUR") && strcmp(d->time_partitioning, "MONTH") &&
            strcmp(d->time_partitioning, "YEAR")) {
            snprintf(err, errlen, "[destination %s] time_partitioning: expected DAY, HOUR, MONTH or "
                     "YEAR, got '%s'", d->name, d->time_partitioning);
            return -1;
        }
        if (strchr(tbl, '%')) {   /* check the pattern now rather than on the first row */
            char probe[512];
            struct tm tm = { .tm_year = 126, .tm_mon = 10, .tm_mday = 22 };
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
            size_t n = strftime(probe, sizeof probe, tbl, &tm);   /* the user's pattern */
#pragma GCC diagnostic pop
            if (n == 0 || !conf_valid_table(probe)) {
                snprintf(err, errlen, "[destination %s] table: '%s' does not expand to a valid "
                         "table id (letters, digits, '_', optional $partition)", d->name, tbl);
                return -1;
            }
        }
        if (d->exactly_once && d->api != API_STORAGE) {
            snprintf(err, errlen, "[destination %s] delivery = exactly_once needs api = storage "
                     "(insertAll is at least once)", d->name);
            return -1;
        }
        if (d->batch_mode && d->api != API_STORAGE) {
            verr(err, errlen, file, d->mode_line, d->name, "mode",
                 "mode = batch writes PENDING streams of the Storage Write API: set api = storage "
                 "(and storage_endpoint if not the default), or use mode = stream with insertAll");
            return -1;
        }
        if (d->batch_mode && d->delivery_line && !d->exactly_once) {
            verr(err, errlen, file, d->delivery_line, d->name, "delivery",
                 "mode = batch is exactly once by construction (a batch is committed atomically, "
                 "once): remove delivery = at_least_once (or set exactly_once), or use mode = stream "
                 "for at-least-once delivery");
            return -1;
        }
        if (d->batch_mode && (strchr(tbl, '%') || d->table_time_field)) {
            verr(err, errlen, file, d->table_time_field && !strchr(tbl, '%') ?
                 d->table_time_field_line : d->table_line, d->name,
                 d->table_time_field && !strchr(tbl, '%') ? "table_time_field" : "table",
                 "mode = batch writes one PENDING stream to one table and does not support "
                 "time-sharded tables ('%s'%s): use a single table (partition it by a column with "
                 "time_partitioning/partition_field instead), or use mode = stream", tbl,
                 d->table_time_field ? " with table_time_field" : "");
            return -1;
        }
        if (d->batch_mode && d->connections > 1) {
            verr(err, errlen, file, d->connections_line, d->name, "connections",
                 "mode = batch uses one AppendRows connection per destination (one PENDING stream, "
                 "committed atomically); remove connections = %llu, or use mode = stream for "
                 "parallel connections", (unsigned long long)d->connections);
            return -1;
        }
        if (d->retry_cap_ms < d->retry_base_ms) {
            snprintf(err, errlen, "[destination %s] retry_cap must be at least retry_base",
                     d->name);
            return -1;
        }
        if (conf_dest_delivers(d) && d->batch_bytes < c->max_record_bytes + 1024) {
            snprintf(err, errlen, "[destination %s] batch_bytes (%llu) must hold the largest "
                     "record: raise it or lower [ingest] max_record_bytes (%llu)", d->name,
                     (unsigned long long)d->batch_bytes,
                     (unsigned long long)c->max_record_bytes);
            return -1;
        }
    }
    if (c->max_pending_bytes < c->max_record_bytes) {
        snprintf(err, errlen, "[ingest] max_pending_bytes (%llu) must be at least "
                 "max_record_bytes (%llu)", (unsigned long long)c->max_pending_bytes,
                 (unsigned long long)c->max_record_bytes);
        return -1;
    }
    if (c->max_record_bytes * 4 > c->max_spool_bytes) {
        snprintf(err, errlen, "[spool] max_spool_bytes (%llu) must be at least 4 x "
                 "max_record_bytes (%llu)", (unsigned long long)c->max_spool_bytes,
                 (unsigned long long)c->max_record_bytes);
        return -1;
    }
    return 0;
}

int conf_load(const char *path, struct conf *c, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        conf_free(c);
        return -1;
    }
    struct parser p = { .file = path, .err = err, .errlen = errlen };
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        p.line++;
        if (memchr(line, 0, (size_t)n)) {
            rc = perr(&p, NULL, "NUL byte in line");
            break;
        }
        if ((rc = parse_line(&p, c, line)) != 0)
            break;
    }
    free(line);
    if (rc == 0 && ferror(f))
        rc = perr(&p, NULL, "read error: %s", strerror(errno));
    fclose(f);
    if (rc == 0) {
        char vmsg[1024];
        rc = validate(c, path, vmsg, sizeof vmsg);
        size_t pl = strlen(path);
        if (rc && strncmp(vmsg, path, pl) == 0 && vmsg[pl] == ':')
            snprintf(err, errlen, "%s", vmsg);   /* names its own line */
        else if (rc)
            snprintf(err, errlen, "%s: %s", path, vmsg);
    }
    if (rc == 0) {
        free(c->path);
        c->path = xstrdup(path);
        return 0;
    }
    conf_free(c);
    return -1;
}
