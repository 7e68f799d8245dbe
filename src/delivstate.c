/*
 * delivstate.c -- delivery state changes: log lines (rate-limited) and the
 * status reason. See delivstate.h.
 */
#include "delivstate.h"
#include "spool.h"
#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static uint64_t (*ds_clock)(void) = util_mono_us;
static void (*ds_sink)(enum log_level, const char *, void *);
static void *ds_sink_arg;

void ds_set_clock(uint64_t (*now_us)(void)) { ds_clock = now_us ? now_us : util_mono_us; }

void ds_set_sink(void (*sink)(enum log_level, const char *, void *), void *arg)
{
    ds_sink = sink;
    ds_sink_arg = arg;
}

static void emit(enum log_level level, const char *line)
{
    if (ds_sink)
        ds_sink(level, line, ds_sink_arg);
    else
        log_msg(level, "%s", line);
}

/* ---- formatting ---- */

char *ds_fmt_dur(uint64_t ms, char *out, size_t n)
{
    if (ms < 1000)
        snprintf(out, n, "%llums", (unsigned long long)ms);
    else if (ms < 60000)
        snprintf(out, n, "%.1fs", (double)ms / 1000);
    else if (ms < 3600000)
        snprintf(out, n, "%llum%llus", (unsigned long long)(ms / 60000),
                 (unsigned long long)(ms / 1000 % 60));
    else
        snprintf(out, n, "%lluh%llum", (unsigned long long)(ms / 3600000),
                 (unsigned long long)(ms / 60000 % 60));
    return out;
}

void ds_kv(char *line, size_t cap, size_t *len, const char *key, const char *value)
{
    size_t n = *len;
    if (!value)
        value = "";
    bool quote = !*value;
    for (const char *p = value; *p && !quote; p++)
        quote = *p == ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p < 0x20;
    int m = snprintf(line + n, cap > n ? cap - n : 0, "%s%s=%s", n ? " " : "", key, quote ? "\"" : "");
    n += m > 0 ? (size_t)m : 0;
    for (const char *p = value; *p && n + 4 < cap; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            line[n++] = '\\';
            line[n++] = (char)c;
        } else if (c == '\n') {
            line[n++] = '\\';
            line[n++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            line[n++] = '?';
        } else {
            line[n++] = (char)c;
        }
    }
    if (quote && n + 1 < cap)
        line[n++] = '"';
    if (n >= cap)
        n = cap - 1;
    line[n] = 0;
    *len = n;
}

/* ---- classification ---- */

static bool has(const char *s, const char *w) { return strcasestr(s, w) != NULL; }

static bool starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* A gRPC status code name (UNAVAILABLE, NOT_FOUND, ...) at s, up to ':'. */
static bool grpc_code_at(const char *s)
{
    size_t i = 0;
    while (s[i] == '_' || (s[i] >= 'A' && s[i] <= 'Z'))
        i++;
    return i >= 5 && s[i] == ':';
}

void ds_classify(const char *detail, char *kind, size_t kn, char *reason, size_t rn)
{
    const char *d = detail ? detail : "";
    const char *k;
    if (has(d, "certificate") || has(d, "SSL") || has(d, "TLS"))
        k = "tls";
    else if (starts(d, "token endpoint") || starts(d, "metadata server") || starts(d, "credentials") ||
             has(d, "HTTP 401") || has(d, "UNAUTHENTICATED") || has(d, "PERMISSION_DENIED") ||
             has(d, "no credentials"))
        k = "auth";
    else if (has(d, "not found") || has(d, "NOT_FOUND"))
        k = "not_found";
    else if (has(d, "dead-letter store is full"))
        k = "dlq_full";
    else if (starts(d, "HTTP "))
        k = "http";
    else if (grpc_code_at(d) || strstr(d, ": UNAVAILABLE") || strstr(d, ": RESOURCE_EXHAUSTED") ||
             strstr(d, ": INTERNAL") || strstr(d, ": ABORTED") || strstr(d, ": DEADLINE_EXCEEDED"))
        k = "grpc";
    else if (has(d, "table just created"))
        k = "table";
    else if (has(d, "connect") || has(d, "resolve") || has(d, "timeout") || has(d, "timed out") ||
             has(d, "reset") || has(d, "recv") || has(d, "send") || has(d, "empty reply") ||
             has(d, "closed"))
        k = "network";
    else
        k = "other";
    snprintf(kind, kn, "%s", k);

    /* The reason: the message up to its first ": " or " (" -- two segments
     * when the first is one word (an operation: "AppendRows: UNAVAILABLE"),
     * and the endpoint's URL left out ("token endpoint: HTTP 503"). */
    char tmp[160];
    size_t t = 0;
    const char *p = d;
    if (starts(p, "token endpoint ") || starts(p, "metadata server ")) {
        const char *sep = strstr(p, ": ");
        t = (size_t)snprintf(tmp, sizeof tmp, "%.*s: ", starts(p, "token") ? 14 : 15, p);
        p = sep ? sep + 2 : p + strlen(p);
    }
    for (int seg = 0; seg < 2 && *p; seg++) {
        size_t cut = 0;
        while (p[cut] && !(p[cut] == ':' && p[cut + 1] == ' ') && !(p[cut] == ' ' && p[cut + 1] == '(') &&
               p[cut] != '\n')
            cut++;
        bool one_word = memchr(p, ' ', cut) == NULL;
        if (seg == 1)
            t += (size_t)snprintf(tmp + t, t < sizeof tmp ? sizeof tmp - t : 0, ": ");
        t += (size_t)snprintf(tmp + t, t < sizeof tmp ? sizeof tmp - t : 0, "%.*s", (int)cut, p);
        if (t >= sizeof tmp)
            t = sizeof tmp - 1;
        if (!one_word || p[cut] != ':')
            break;
        p += cut + 2;
    }
    tmp[t] = 0;
    /* digits that vary (ports, milliseconds) go; an HTTP status stays */
    size_t o = 0;
    for (size_t i = 0; tmp[i] && o + 1 < rn;) {
        if (!isdigit((unsigned char)tmp[i])) {
            reason[o++] = tmp[i++];
            continue;
        }
        size_t j = i;
        while (isdigit((unsigned char)tmp[j]))
            j++;
        bool status = j - i == 3 && tmp[i] >= '1' && tmp[i] <= '5' && (i == 0 || tmp[i - 1] == ' ') &&
                      (!tmp[j] || tmp[j] == ' ' || tmp[j] == ':');
        if (status) {
            for (; i < j && o + 1 < rn; i++)
                reason[o++] = tmp[i];
        } else {
            reason[o++] = '#';
            i = j;
        }
    }
    if (rn)
        reason[o < rn ? o : rn - 1] = 0;
    if (rn && !reason[0])
        snprintf(reason, rn, "%s", k);
}

/* ---- state ---- */

static const char *const wait_names[] = { "backoff", "parked" };

void ds_init(struct delivstate *ds, pthread_mutex_t *lock, const char *dest, const char *api,
             const char *table)
{
    memset(ds, 0, sizeof *ds);
    ds->lock = lock;
    ds->api = api;
    ds_set_table(ds, dest, table);
    ds->scale = 1;
    const char *sc = getenv("RELAYD_LOG_TIME_SCALE");
    if (sc && *sc) {
        double v = strtod(sc, NULL);
        if (v >= 1 && v <= 1e6)
            ds->scale = v;
    }
    ds->tokens = DS_BURST;
}

void ds_set_table(struct delivstate *ds, const char *dest, const char *table)
{
    ds->dest = dest;
    snprintf(ds->table, sizeof ds->table, "%s", table ? table : "");
}

static uint64_t scaled_us(const struct delivstate *ds, uint64_t ms)
{
    return (uint64_t)((double)ms * 1000 / ds->scale);
}

static bool take_token(struct delivstate *ds, uint64_t now)
{
    uint64_t per = scaled_us(ds, DS_REFILL_MS);
    if (!ds->tokens_us)
        ds->tokens_us = now;
    if (per && now > ds->tokens_us) {
        ds->tokens += (double)(now - ds->tokens_us) / (double)per;
        if (ds->tokens > DS_BURST)
            ds->tokens = DS_BURST;
    }
    ds->tokens_us = now;
    if (ds->tokens < 1)
        return false;
    ds->tokens -= 1;
    return true;
}

/* The start of every line: event, destination, api, table. */
static size_t head(const struct delivstate *ds, char *line, size_t cap, const char *event)
{
    size_t n = 0;
    line[0] = 0;
    ds_kv(line, cap, &n, "event", event);
    ds_kv(line, cap, &n, "dest", ds->dest);
    ds_kv(line, cap, &n, "api", ds->api);
    ds_kv(line, cap, &n, "table", ds->table);
    return n;
}

static void kv_u64(char *line, size_t cap, size_t *n, const char *key, uint64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    ds_kv(line, cap, n, key, b);
}

static void kv_dur(char *line, size_t cap, size_t *n, const char *key, uint64_t ms)
{
    char b[32];
    ds_kv(line, cap, n, key, ds_fmt_dur(ms, b, sizeof b));
}

void ds_wait(struct delivstate *ds, enum ds_wait st, const char *kind, const char *detail,
             uint64_t retry_in_ms)
{
    uint64_t now = ds_clock();
    char k[16], reason[128];
    ds_classify(detail, k, sizeof k, reason, sizeof reason);
    if (kind)
        snprintf(k, sizeof k, "%s", kind);
    pthread_mutex_lock(ds->lock);
    bool start = !ds->episode;
    bool changed = start || st != ds->state || strcmp(reason, ds->reason) != 0;
    if (start) {
        ds->episode = true;
        ds->since_us = now;
        ds->attempts = 0;
        ds->logged_start = false;
        ds->summary_gap_us = scaled_us(ds, DS_SUMMARY_FIRST_MS);
        ds->next_summary_us = now + ds->summary_gap_us;
    }
    ds->attempts++;
    ds->state = st;
    snprintf(ds->kind, sizeof ds->kind, "%s", k);
    snprintf(ds->reason, sizeof ds->reason, "%s", reason);
    snprintf(ds->detail, sizeof ds->detail, "%s", detail ? detail : "");
    uint64_t attempts = ds->attempts, since = ds->since_us;
    pthread_mutex_unlock(ds->lock);

    char line[1400];
    size_t n;
    if (changed) {
        if (!take_token(ds, now)) {
            ds->suppressed++;
            return;
        }
        if (start)
            ds->logged_start = true;
        ds->probe_logged = false;
        n = head(ds, line, sizeof line, wait_names[st]);
    } else if (now >= ds->next_summary_us) {
        uint64_t cap = scaled_us(ds, DS_SUMMARY_CAP_MS);
        ds->summary_gap_us = ds->summary_gap_us * 2 > cap ? cap : ds->summary_gap_us * 2;
        ds->next_summary_us = now + ds->summary_gap_us;
        n = head(ds, line, sizeof line, "summary");
        ds_kv(line, sizeof line, &n, "state", wait_names[st]);
    } else {
        ds->suppressed++;
        return;
    }
    ds_kv(line, sizeof line, &n, "kind", k);
    ds_kv(line, sizeof line, &n, "reason", reason);
    kv_dur(line, sizeof line, &n, "retry_in", retry_in_ms);
    kv_u64(line, sizeof line, &n, "attempt", attempts);
    if (!start)
        kv_dur(line, sizeof line, &n, "for", (now - since) / 1000);
    if (ds->suppressed)
        kv_u64(line, sizeof line, &n, "suppressed", ds->suppressed);
    ds->suppressed = 0;
    ds_kv(line, sizeof line, &n, "error", detail);
    emit(LOG_WARN, line);
}

void ds_probe(struct delivstate *ds)
{
    if (!ds->episode || ds->probe_logged)
        return;
    ds->probe_logged = true;
    uint64_t now = ds_clock();
    char line[800];
    size_t n = head(ds, line, sizeof line, "probing");
    ds_kv(line, sizeof line, &n, "state", wait_names[ds->state]);
    ds_kv(line, sizeof line, &n, "reason", ds->reason);
    kv_u64(line, sizeof line, &n, "attempt", ds->attempts + 1);
    kv_dur(line, sizeof line, &n, "for", (now - ds->since_us) / 1000);
    emit(LOG_INFO, line);
}

void ds_ok(struct delivstate *ds, struct spool *sp, uint32_t dest_id)
{
    if (!ds->episode)
        return;
    uint64_t now = ds_clock();
    bool log_it = ds->logged_start || take_token(ds, now);
    if (log_it) {
        uint64_t rows = 0, oldest_ms = 0, wall = util_now_ms();
        struct spool_stats *st = sp ? malloc(sizeof *st) : NULL;
        if (st && spool_stats(sp, st) == SPOOL_OK) {
            for (size_t i = 0; i < st->n_dests; i++) {
                if (st->dests[i].id == dest_id) {
                    rows = st->dests[i].records;
                    oldest_ms = st->dests[i].oldest_ms;
                }
            }
        }
        free(st);
        char line[800];
        size_t n = head(ds, line, sizeof line, "recovered");
        ds_kv(line, sizeof line, &n, "state", wait_names[ds->state]);
        ds_kv(line, sizeof line, &n, "reason", ds->reason);
        kv_dur(line, sizeof line, &n, "for", (now - ds->since_us) / 1000);
        kv_u64(line, sizeof line, &n, "attempts", ds->attempts);
        kv_u64(line, sizeof line, &n, "rows_waited", rows);
        kv_dur(line, sizeof line, &n, "oldest_wait", oldest_ms && oldest_ms < wall ? wall - oldest_ms : 0);
        if (ds->suppressed)
            kv_u64(line, sizeof line, &n, "suppressed", ds->suppressed);
        ds->suppressed = 0;
        emit(LOG_INFO, line);
    }
    pthread_mutex_lock(ds->lock);
    ds->episode = false;
    ds->attempts = 0;
    ds->detail[0] = ds->reason[0] = ds->kind[0] = 0;
    pthread_mutex_unlock(ds->lock);
}

void ds_event(struct delivstate *ds, enum log_level level, const char *event, const char *kind,
              const char *detail, const char *extra)
{
    uint64_t now = ds_clock();
    if (!take_token(ds, now)) {
        ds->ev_suppressed++;
        return;
    }
    char k[16], reason[128], line[1400];
    ds_classify(detail, k, sizeof k, reason, sizeof reason);
    size_t n = head(ds, line, sizeof line, event);
    ds_kv(line, sizeof line, &n, "kind", kind ? kind : k);
    ds_kv(line, sizeof line, &n, "reason", reason);
    if (extra && *extra && n + 1 + strlen(extra) < sizeof line)
        n += (size_t)snprintf(line + n, sizeof line - n, " %s", extra);
    if (ds->ev_suppressed)
        kv_u64(line, sizeof line, &n, "suppressed", ds->ev_suppressed);
    ds->ev_suppressed = 0;
    ds_kv(line, sizeof line, &n, "error", detail);
    emit(level, line);
}

/* ---- status ---- */

bool ds_in_episode(const struct delivstate *ds) { return ds->episode; }

void ds_why(const struct delivstate *ds, const char *state, const char *sending, char *out, size_t n)
{
    char b[32];
    if (!n)
        return;
    out[0] = 0;
    if (strcmp(state, "idle") == 0)
        return;
    if (strcmp(state, "sending") == 0)
        snprintf(out, n, "%s", sending && *sending ? sending : "delivering");
    else if (strcmp(state, "probing") == 0)
        snprintf(out, n, "trying again after %llu failed attempt(s) over %s; last: %s",
                 (unsigned long long)ds->attempts,
                 ds_fmt_dur((ds_clock() - ds->since_us) / 1000, b, sizeof b),
                 ds->detail[0] ? ds->detail : ds->reason);
    else if (strcmp(state, "removed") == 0)
        snprintf(out, n, "no longer in the config: its rows stay queued");
    else if (ds->episode && ds->detail[0])
        snprintf(out, n, "%s", ds->detail);
    if (!out[0])
        snprintf(out, n, "%s", strcmp(state, "parked") == 0 ? "parked: waiting before the next attempt"
                 : strcmp(state, "backoff") == 0 ? "waiting before the next attempt" : state);
}
