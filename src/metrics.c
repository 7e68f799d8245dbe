/*
 * metrics.c -- Prometheus metrics and health endpoints over HTTP
 * (libmicrohttpd), off unless [relayd] metrics_listen is set.
 *
 * The HTTP server runs on libmicrohttpd's own thread and knows nothing of
 * relayd's internals: for every request it asks relayd's control socket for
 * the status document (the same JSON `relayctl status --json` prints) and
 * renders it. So the numbers come from the one place that owns them, with
 * the same locking, and this module stays a thin translator.
 *
 *   /metrics  Prometheus text format 0.0.4
 *   /healthz  200 "ok" while relayd's ingest loop answers; 503 otherwise
 *   /readyz   200 while relayd accepts records; 503 with the state
 *             (backpressure or refusing: the spool is full) otherwise
 */
#include "metrics.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct metrics {
    struct MHD_Daemon *d;
    char control[108];
    char unix_path[108];
};

/* Asks relayd's control socket; returns the answer (caller frees) or NULL. */
static char *ask(const struct metrics *m, const char *req)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", m->control);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct timeval tv = { 2, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        util_write_all(fd, req, strlen(req)) != 0) {
        close(fd);
        return NULL;
    }
    struct buf b = { 0 };
    char chunk[16384];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) > 0)
        buf_append(&b, chunk, (size_t)n);
    close(fd);
    return b.data;
}

/* ---- rendering ---- */

static void label_escape(struct buf *b, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '\\' || *s == '"')
            buf_append(b, "\\", 1);
        if (*s == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, s, 1);
    }
}

static double num(json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

static void help(struct buf *b, const char *name, const char *type, const char *text)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

static void sample(struct buf *b, const char *name, const char *lk, const char *lv, double v)
{
    buf_puts(b, name);
    if (lk) {
        buf_printf(b, "{%s=\"", lk);
        label_escape(b, lv);
        buf_puts(b, "\"}");
    }
    buf_printf(b, " %.17g\n", v);
}

/* The per-destination delivery series. */
static void delivery_series(struct buf *b, json_t *dests)
{
    static const struct { const char *name, *type, *key, *text; } fields[] = {
        { "relayd_delivered_total", "counter", "delivered", "Rows delivered to BigQuery." },
        { "relayd_retried_total", "counter", "retried", "Rows sent again after a transient failure." },
        { "relayd_dead_lettered_total", "counter", "dead_lettered", "Rows moved to the dead-letter store." },
        { "relayd_requests_total", "counter", "requests", "insertAll requests or AppendRows appends sent." },
        { "relayd_failed_requests_total", "counter", "failed_requests", "Requests that failed." },
        { "relayd_in_flight_requests", "gauge", "in_flight", "Requests awaiting an answer." },
        { "relayd_in_flight_bytes", "gauge", "in_flight_bytes",
          "Row bytes taken from the queue and not yet settled (sent, or waiting to be resent)." },
        { "relayd_in_flight_bytes_max", "gauge", "max_inflight_bytes",
          "The bound on relayd_in_flight_bytes (max_inflight_bytes)." },
        { "relayd_backoff_seconds", "gauge", "backoff_s", "Seconds until the next attempt (0: not waiting)." },
        { "relayd_token_refreshes_total", "counter", "token_refreshes", "OAuth access tokens fetched." },
    };
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        help(b, fields[f].name, fields[f].type, fields[f].text);
        size_t i;
        json_t *d;
        json_array_foreach(dests, i, d) {
            json_t *dl = json_object_get(d, "delivery");
            if (dl)
                sample(b, fields[f].name, "destination", json_string_value(json_object_get(d, "name")),
                       num(dl, fields[f].key));
        }
    }
    help(b, "relayd_dead_lettered_by_reason_total", "counter",
         "Rows moved to the dead-letter store, by reason.");
    size_t i;
    json_t *d;
    json_array_foreach(dests, i, d) {
        json_t *dl = json_object_get(d, "delivery");
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(dl, "dead_lettered_by_reason"), k, v) {
            buf_puts(b, "relayd_dead_lettered_by_reason_total{destination=\"");
            label_escape(b, json_string_value(json_object_get(d, "name")));
            buf_puts(b, "\",reason=\"");
            label_escape(b, k);
            buf_printf(b, "\"} %lld\n", (long long)json_integer_value(v));
        }
    }
    help(b, "relayd_destination_state", "gauge",
         "1 for the destination's delivery state (idle, sending, probing, backoff, parked, removed).");
    json_array_foreach(dests, i, d) {
        json_t *dl = json_object_get(d, "delivery");
        if (!dl)
            continue;
        buf_puts(b, "relayd_destination_state{destination=\"");
        label_escape(b, json_string_value(json_object_get(d, "name")));
        buf_puts(b, "\",state=\"");
        label_escape(b, json_string_value(json_object_get(dl, "state")));
        buf_puts(b, "\"} 1\n");
    }
    help(b, "relayd_request_duration_seconds", "histogram",
         "Time from sending a request (or append) to its answer.");
    json_array_foreach(dests, i, d) {
        json_t *lat = json_object_get(json_object_get(d, "delivery"), "latency");
        if (!lat)
            continue;
        const char *name = json_string_value(json_object_get(d, "name"));
        json_t *le = json_object_get(lat, "le"), *bk = json_object_get(lat, "buckets");
        uint64_t cum = 0;
        for (size_t k = 0; k < json_array_size(bk); k++) {
            cum += (uint64_t)json_integer_value(json_array_get(bk, k));
            buf_puts(b, "relayd_request_duration_seconds_bucket{destination=\"");
            label_escape(b, name);
            if (k < json_array_size(le))
                buf_printf(b, "\",le=\"%g\"} %llu\n", json_number_value(json_array_get(le, k)),
                           (unsigned long long)cum);
            else
                buf_printf(b, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        buf_puts(b, "relayd_request_duration_seconds_sum{destination=\"");
        label_escape(b, name);
        buf_printf(b, "\"} %.6f\n", num(lat, "sum_s"));
        buf_puts(b, "relayd_request_duration_seconds_count{destination=\"");
        label_escape(b, name);
        buf_printf(b, "\"} %lld\n", (long long)json_integer_value(json_object_get(lat, "count")));
    }
}

static char *render(json_t *st)
{
    struct buf b = { 0 };
    json_t *ing = json_object_get(st, "ingest"), *sp = json_object_get(st, "spool");
    json_t *cm = json_object_get(st, "commit"), *dests = json_object_get(st, "destinations");

    help(&b, "relayd_up", "gauge", "1 while relayd answers.");
    sample(&b, "relayd_up", NULL, NULL, 1);
    help(&b, "relayd_state", "gauge", "1 for relayd's ingest state (accepting, backpressure, refusing).");
    sample(&b, "relayd_state", "state", json_string_value(json_object_get(st, "state")), 1);
    help(&b, "relayd_ingest_records_total", "counter", "Records received from producers.");
    sample(&b, "relayd_ingest_records_total", NULL, NULL, num(ing, "records"));
    help(&b, "relayd_ingest_bytes_total", "counter", "Record bytes received from producers.");
    sample(&b, "relayd_ingest_bytes_total", NULL, NULL, num(ing, "bytes"));
    help(&b, "relayd_acked_records_total", "counter", "Records committed durably and acknowledged.");
    sample(&b, "relayd_acked_records_total", NULL, NULL, num(ing, "stored"));
    help(&b, "relayd_ingest_connections", "gauge", "Producer connections open.");
    sample(&b, "relayd_ingest_connections", NULL, NULL, num(ing, "connections"));
    help(&b, "relayd_ingest_refused_total", "counter", "Lines refused, by reason.");
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(ing, "refused"), k, v)
        sample(&b, "relayd_ingest_refused_total", "reason", k, (double)json_integer_value(v));
    json_t *fw = json_object_get(ing, "forward");
    if (fw) {
        help(&b, "relayd_forward_records_total", "counter",
             "Records received on the Fluent forward input.");
        sample(&b, "relayd_forward_records_total", NULL, NULL, num(fw, "records"));
        help(&b, "relayd_forward_messages_total", "counter", "Forward messages decoded.");
        sample(&b, "relayd_forward_messages_total", NULL, NULL, num(fw, "messages"));
        help(&b, "relayd_forward_acks_total", "counter", "Forward chunks acknowledged (durable).");
        sample(&b, "relayd_forward_acks_total", NULL, NULL, num(fw, "acks"));
        help(&b, "relayd_forward_protocol_errors_total", "counter",
             "Forward connections closed for a malformed message.");
        sample(&b, "relayd_forward_protocol_errors_total", NULL, NULL, num(fw, "protocol_errors"));
        help(&b, "relayd_forward_refused_total", "counter", "Forward records refused, by reason.");
        const char *fk;
        json_t *fv;
        json_object_foreach(json_object_get(fw, "refused"), fk, fv)
            sample(&b, "relayd_forward_refused_total", "reason", fk, (double)json_integer_value(fv));
    }
    help(&b, "relayd_denied_connections_total", "counter", "Connections refused by peer credentials.");
    sample(&b, "relayd_denied_connections_total", NULL, NULL, num(ing, "denied_connections"));
    help(&b, "relayd_commits_total", "counter", "Spool commits (group commits).");
    sample(&b, "relayd_commits_total", NULL, NULL, num(cm, "commits"));
    help(&b, "relayd_spool_full_events_total", "counter", "Times the spool became full.");
    sample(&b, "relayd_spool_full_events_total", NULL, NULL, num(cm, "full_events"));
    help(&b, "relayd_spool_file_bytes", "gauge", "Size of the spool file.");
    sample(&b, "relayd_spool_file_bytes", NULL, NULL, num(sp, "file_bytes"));
    help(&b, "relayd_spool_used_bytes", "gauge", "Spool pages in use.");
    sample(&b, "relayd_spool_used_bytes", NULL, NULL, num(sp, "used_bytes"));
    help(&b, "relayd_spool_max_bytes", "gauge", "The spool's bound (max_spool_bytes).");
    sample(&b, "relayd_spool_max_bytes", NULL, NULL, num(sp, "max_bytes"));
    help(&b, "relayd_dead_letters", "gauge", "Entries in the dead-letter store.");
    sample(&b, "relayd_dead_letters", NULL, NULL, num(sp, "dead_letters"));

    static const struct { const char *name, *key, *text; } dest_gauges[] = {
        { "relayd_spool_records", "records", "Records queued, by destination." },
        { "relayd_spool_bytes", "bytes", "Row bytes queued, by destination." },
        { "relayd_oldest_record_age_seconds", "oldest_age_s", "Age of the oldest queued record." },
    };
    for (size_t g = 0; g < sizeof dest_gauges / sizeof dest_gauges[0]; g++) {
        help(&b, dest_gauges[g].name, "gauge", dest_gauges[g].text);
        size_t i;
        json_t *d;
        json_array_foreach(dests, i, d)
            sample(&b, dest_gauges[g].name, "destination",
                   json_string_value(json_object_get(d, "name")), num(d, dest_gauges[g].key));
    }
    delivery_series(&b, dests);
    return b.data;
}

/* ---- HTTP ---- */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type, char *body)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body,
                                                             MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *size, void **state)
{
    const struct metrics *m = cls;
    (void)version;
    (void)data;
    (void)size;
    (void)state;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(c, 405, "text/plain", strdup("only GET\n"));
    if (strcmp(url, "/healthz") == 0) {
        char *pong = ask(m, "ping\n");
        bool ok = pong && strstr(pong, "pong");
        free(pong);
        return reply(c, ok ? 200 : 503, "text/plain",
                     strdup(ok ? "ok\n" : "relayd's ingest loop does not answer\n"));
    }
    char *text = ask(m, "status\n");
    json_t *st = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    if (!st)
        return reply(c, 503, "text/plain", strdup("relayd does not answer\n"));
    enum MHD_Result ret;
    if (strcmp(url, "/readyz") == 0) {
        const char *ist = json_string_value(json_object_get(st, "state"));
        bool ready = ist && strcmp(ist, "accepting") == 0;
        char *body = NULL;
        if (asprintf(&body, "%s\n", ready ? "ready" : ist ? ist : "unknown") < 0)
            body = NULL;
        ret = reply(c, ready ? 200 : 503, "text/plain", body ? body : strdup("?\n"));
    } else if (strcmp(url, "/metrics") == 0) {
        char *body = render(st);
        ret = reply(c, 200, "text/plain; version=0.0.4", body ? body : strdup(""));
    } else {
        ret = reply(c, 404, "text/plain", strdup("not found: try /metrics, /healthz, /readyz\n"));
    }
    json_decref(st);
    return ret;
}

bool metrics_valid_listen(const char *addr)
{
    if (strncmp(addr, "unix:", 5) == 0)
        return addr[5] == '/';
    char host[64];
    unsigned port;
    if (sscanf(addr, "%63[^:]:%u", host, &port) != 2 || port == 0 || port > 65535)
        return false;
    struct in_addr a;
    return (inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127) ||
           strcmp(host, "localhost") == 0;
}

int metrics_start(const char *addr, const char *control, struct metrics **out, char *err,
                  size_t errlen)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(m->control, sizeof m->control, "%s", control);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", addr + 5);
        snprintf(m->unix_path, sizeof m->unix_path, "%s", addr + 5);
        unlink(sa.sun_path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        mode_t old = umask(0117);
        int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sa, sizeof sa);
        umask(old);
        if (rc != 0 || listen(fd, 64) != 0) {
            snprintf(err, errlen, "metrics_listen %s: %s", addr, strerror(errno));
            if (fd >= 0)
                close(fd);
            free(m);
            return -1;
        }
        m->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, m, MHD_OPTION_LISTEN_SOCKET, fd,
                                MHD_OPTION_END);
    } else {
        char host[64];
        unsigned port = 0;
        struct sockaddr_in sa = { .sin_family = AF_INET };
        if (sscanf(addr, "%63[^:]:%u", host, &port) != 2 ||
            (strcmp(host, "localhost") != 0 && inet_pton(AF_INET, host, &sa.sin_addr) != 1)) {
            snprintf(err, errlen, "metrics_listen %s: expected 127.0.0.1:PORT or unix:/PATH", addr);
            free(m);
            return -1;
        }
        if (strcmp(host, "localhost") == 0)
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = htons((uint16_t)port);
        m->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handle, m,
                                MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_END);
    }
    if (!m->d) {
        snprintf(err, errlen, "metrics_listen %s: cannot start the HTTP server (port in use?)",
                 addr);
        free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void metrics_stop(struct metrics *m)
{
    if (!m)
        return;
    MHD_stop_daemon(m->d);
    if (m->unix_path[0])
        unlink(m->unix_path);
    free(m);
}
