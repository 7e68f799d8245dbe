/*
 * fs_http.c -- the fast sink's HTTPS/1.1 side: the OAuth token endpoint,
 * tables.get, datasets.get, tabledata.insertAll, and GET /stats.
 *
 * Worker threads (--threads, default 2) each run one level-triggered epoll
 * loop; the listening socket is in every loop with EPOLLEXCLUSIVE, and a
 * connection stays with the worker that accepted it, so nothing about a
 * connection is shared. TLS is OpenSSL on non-blocking sockets (ALPN:
 * http/1.1 only, as the client must not switch to HTTP/2 here). Requests on a
 * connection are handled in order (keep-alive, pipelining tolerated);
 * Content-Length and chunked bodies are accepted, "Expect: 100-continue" is
 * answered, a POST with neither length nor chunking gets 411.
 *
 * insertAll: bearer token checked (401 / 403 as Google answers), Content-Type
 * application/json, the table known (404), Content-Encoding gzip/deflate
 * inflated with zlib into the worker's buffer (limit 10,485,760 bytes after
 * decompression, as BigQuery), then fs_json_insertall() checks the body and
 * counts its rows. Nothing is stored.
 */
#include "fastsink.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <zlib.h>

#define MAX_HEADER_BYTES (64u << 10)
#define MAX_WIRE_BODY (64u << 20)
#define READ_CHUNK (64u << 10)

struct hdrs {
    size_t method_off, method_len, target_off, target_len;
    size_t ctype_off, ctype_len, auth_off, auth_len, enc_off, enc_len;
    long long clen;            /* -1: none */
    bool chunked, close, expect, http10;
};

struct conn {
    int fd;
    SSL *ssl;
    char *in;
    size_t len, cap;
    size_t scan;               /* resume point of the search for the header end */
    size_t hdr_len;            /* 0 until the header block is complete */
    struct hdrs h;
    bool sent_continue;
    char *body;                /* de-chunked body (chunked requests only) */
    size_t body_len, body_cap;
    char *out;
    size_t olen, ooff, ocap;
    bool want_out, closing;
};

struct worker {
    pthread_t th;
    int ep;
    unsigned char *zbuf;
    size_t zcap;
    z_stream zs;
    bool zinit;
};

static struct {
    int lfd;
    SSL_CTX *ctx;
    struct worker *w;
    int n;
} H = { .lfd = -1 };

/* ---- output ---- */

static int out_reserve(struct conn *c, size_t more)
{
    if (c->olen + more <= c->ocap)
        return 0;
    if (c->ooff) {   /* compact first */
        memmove(c->out, c->out + c->ooff, c->olen - c->ooff);
        c->olen -= c->ooff;
        c->ooff = 0;
        if (c->olen + more <= c->ocap)
            return 0;
    }
    size_t nc = c->ocap ? c->ocap : 4096;
    while (nc < c->olen + more)
        nc *= 2;
    char *n = realloc(c->out, nc);
    if (!n)
        return -1;
    c->out = n;
    c->ocap = nc;
    return 0;
}

static void out_add(struct conn *c, const char *s, size_t n)
{
    if (out_reserve(c, n) == 0) {
        memcpy(c->out + c->olen, s, n);
        c->olen += n;
    } else {
        c->closing = true;
    }
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    }
    return "Error";
}

static void respond(struct conn *c, int status, const char *extra, const char *body, size_t blen)
{
    char head[768];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=UTF-8\r\n"
                     "Content-Length: %zu\r\nServer: fastsink\r\n%s%s\r\n",
                     status, reason_phrase(status), blen, extra ? extra : "",
                     c->h.close || c->closing ? "Connection: close\r\n" : "");
    out_add(c, head, (size_t)n);
    out_add(c, body, blen);
    if (status >= 500)
        fs_add(&FS.st.http_5xx, 1);
    else if (status >= 400)
        fs_add(&FS.st.http_4xx, 1);
}

static const char *status_name(int code)
{
    switch (code) {
    case 400: return "INVALID_ARGUMENT";
    case 401: return "UNAUTHENTICATED";
    case 403: return "PERMISSION_DENIED";
    case 404: return "NOT_FOUND";
    case 411: return "INVALID_ARGUMENT";
    case 413: return "INVALID_ARGUMENT";
    case 503: return "UNAVAILABLE";
    }
    return "INTERNAL";
}

/* Google's error body: {"error": {"code", "message", "errors": [...], "status"}}. */
static void google_error(struct conn *c, int code, const char *reason, const char *message,
                         const char *extra, bool header_location)
{
    json_t *item = json_pack("{s:s, s:s, s:s}", "domain", "global", "reason", reason,
                             "message", message);
    if (item && header_location) {
        json_object_set_new(item, "location", json_string("Authorization"));
        json_object_set_new(item, "locationType", json_string("header"));
    }
    json_t *o = json_pack("{s:{s:i, s:s, s:[o], s:s}}", "error", "code", code, "message", message,
                          "errors", item, "status", status_name(code));
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (t) {
        respond(c, code, extra, t, strlen(t));
        free(t);
    } else {
        respond(c, 500, NULL, "{}", 2);
    }
}

/* ---- request helpers ---- */

static const char *hv(const struct conn *c, size_t off)
{
    return c->in + off;
}

static bool hdr_is(const char *name, size_t nl, const char *want)
{
    return strlen(want) == nl && strncasecmp(name, want, nl) == 0;
}

/* Parses the header block in[0..hdr_len). Returns 0, or an HTTP status to
 * answer (and close). */
static int parse_headers(struct conn *c)
{
    struct hdrs *h = &c->h;
    memset(h, 0, sizeof *h);
    h->clen = -1;
    const char *base = c->in, *p = base, *end = base + c->hdr_len;
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (!eol)
        return 400;
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !sp2)
        return 400;
    h->method_off = 0;
    h->method_len = (size_t)(sp1 - p);
    h->target_off = (size_t)(sp1 + 1 - base);
    h->target_len = (size_t)(sp2 - sp1 - 1);
    size_t vl = (size_t)(eol - sp2 - 1);
    if (vl == 8 && memcmp(sp2 + 1, "HTTP/1.1", 8) == 0)
        ;
    else if (vl == 8 && memcmp(sp2 + 1, "HTTP/1.0", 8) == 0)
        h->http10 = h->close = true;
    else
        return 400;
    p = eol + 2;
    while (p < end) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol)
            break;
        if (eol == p)
            break;   /* the blank line */
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon)
            return 400;
        size_t nl = (size_t)(colon - p);
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t off = (size_t)(v - base), len = (size_t)(ve - v);
        if (hdr_is(p, nl, "content-length")) {
            char num[24];
            if (len == 0 || len >= sizeof num)
                return 400;
            memcpy(num, v, len);
            num[len] = 0;
            char *stop;
            long long x = strtoll(num, &stop, 10);
            if (*stop || x < 0)
                return 400;
            h->clen = x;
        } else if (hdr_is(p, nl, "transfer-encoding")) {
            if (len == 7 && strncasecmp(v, "chunked", 7) == 0)
                h->chunked = true;
            else
                return 400;
        } else if (hdr_is(p, nl, "content-type")) {
            h->ctype_off = off;
            h->ctype_len = len;
        } else if (hdr_is(p, nl, "authorization")) {
            h->auth_off = off;
            h->auth_len = len;
        } else if (hdr_is(p, nl, "content-encoding")) {
            h->enc_off = off;
            h->enc_len = len;
        } else if (hdr_is(p, nl, "connection")) {
            if (len == 5 && strncasecmp(v, "close", 5) == 0)
                h->close = true;
            else if (len == 10 && strncasecmp(v, "keep-alive", 10) == 0)
                h->close = false;
        } else if (hdr_is(p, nl, "expect")) {
            if (len == 12 && strncasecmp(v, "100-continue", 12) == 0)
                h->expect = true;
        }
        p = eol + 2;
    }
    return 0;
}

/* De-chunks in[hdr_len..len) into c->body. Returns the bytes of the request
 * (headers + framed body) when complete, 0 if more is needed, -1 if bad. */
static long long dechunk(struct conn *c)
{
    const char *p = c->in + c->hdr_len, *end = c->in + c->len;
    c->body_len = 0;
    for (;;) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol)
            return (size_t)(end - p) > 64 ? -1 : 0;
        char *stop;
        unsigned long long n = strtoull(p, &stop, 16);
        if (stop == p || (stop < eol && *stop != ';' && *stop != ' '))
            return -1;
        if (n > MAX_WIRE_BODY || c->body_len + n > MAX_WIRE_BODY)
            return -1;
        p = eol + 2;
        if (n == 0) {
            /* trailers, then a blank line */
            for (;;) {
                eol = memmem(p, (size_t)(end - p), "\r\n", 2);
                if (!eol)
                    return 0;
                if (eol == p)
                    return (long long)(eol + 2 - c->in);
                p = eol + 2;
            }
        }
        if ((size_t)(end - p) < n + 2)
            return 0;
        if (c->body_len + n > c->body_cap) {
            size_t nc = c->body_cap ? c->body_cap : 65536;
            while (nc < c->body_len + n)
                nc *= 2;
            char *nb = realloc(c->body, nc);
            if (!nb)
                return -1;
            c->body = nb;
            c->body_cap = nc;
        }
        memcpy(c->body + c->body_len, p, n);
        c->body_len += n;
        p += n;
        if (p[0] != '\r' || p[1] != '\n')
            return -1;
        p += 2;
    }
}

/* Percent-decodes one path segment. */
static bool seg_decode(const char *s, size_t n, char *out, size_t cap, size_t *ol)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return false;
            char hx[3] = { s[i + 1], s[i + 2], 0 };
            char *stop;
            long v = strtol(hx, &stop, 16);
            if (*stop)
                return false;
            ch = (int)v;
            i += 2;
        }
        if (o + 1 >= cap)
            return false;
        out[o++] = (char)ch;
    }
    out[o] = 0;
    *ol = o;
    return true;
}

/* The bearer check: returns true when the token is good for one of needed;
 * otherwise answers 401/403 and returns false. */
static bool authorize(struct conn *c, unsigned needed)
{
    static const char www_required[] =
        "WWW-Authenticate: Bearer realm=\"https://accounts.google.com/\"\r\n";
    static const char www_invalid[] =
        "WWW-Authenticate: Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"\r\n";
    const char *a = c->h.auth_len ? hv(c, c->h.auth_off) : NULL;
    size_t al = c->h.auth_len;
    if (!a) {
        fs_add(&FS.st.auth_failures, 1);
        google_error(c, 401, "required", "Request is missing the Authorization header: an OAuth 2 "
                     "access token (Bearer) is required.", www_required, true);
        return false;
    }
    if (al < 8 || strncasecmp(a, "Bearer ", 7) != 0) {
        fs_add(&FS.st.auth_failures, 1);
        google_error(c, 401, "authError", "Authorization header must be 'Bearer <access token>'.",
                     www_invalid, true);
        return false;
    }
    a += 7;
    al -= 7;
    while (al && *a == ' ') {
        a++;
        al--;
    }
    int s = fs_auth_check(a, al);
    if (s < 0) {
        fs_add(&FS.st.auth_failures, 1);
        google_error(c, 401, "authError", s == -2 ?
                     "Request had invalid authentication credentials: the access token has expired." :
                     "Request had invalid authentication credentials: unknown access token.",
                     www_invalid, true);
        return false;
    }
    if (!((unsigned)s & needed)) {
        google_error(c, 403, "insufficientPermissions",
                     "Request had insufficient authentication scopes.", NULL, false);
        return false;
    }
    return true;
}

/* ---- insertAll ---- */

/* Inflates in[0..n) into the worker's buffer; returns the length, or -1
 * (answered). */
static long long inflate_body(struct worker *w, struct conn *c, const char *in, size_t n, int wbits)
{
    if (!w->zinit) {
        memset(&w->zs, 0, sizeof w->zs);
        if (inflateInit2(&w->zs, wbits) != Z_OK) {
            google_error(c, 500, "internalError", "zlib init failed.", NULL, false);
            return -1;
        }
        w->zinit = true;
    } else if (inflateReset2(&w->zs, wbits) != Z_OK) {
        google_error(c, 500, "internalError", "zlib reset failed.", NULL, false);
        return -1;
    }
    size_t limit = FS_MAX_REQUEST_BYTES, total = 0;
    if (w->zcap < n * 4 + 65536 && w->zcap < limit + 1) {
        size_t nc = n * 4 + 65536;
        if (nc > limit + 1)
            nc = limit + 1;
        unsigned char *nb = realloc(w->zbuf, nc);
        if (!nb) {
            google_error(c, 500, "internalError", "out of memory", NULL, false);
            return -1;
        }
        w->zbuf = nb;
        w->zcap = nc;
    }
    w->zs.next_in = (Bytef *)(uintptr_t)in;
    w->zs.avail_in = (uInt)n;
    for (;;) {
        if (total == w->zcap) {
            if (w->zcap >= limit + 1) {
                google_error(c, 400, "invalid", "Request payload size exceeds the limit: 10485760 bytes.",
                             NULL, false);
                return -1;
            }
            size_t nc = w->zcap * 2 > limit + 1 ? limit + 1 : w->zcap * 2;
            unsigned char *nb = realloc(w->zbuf, nc);
            if (!nb) {
                google_error(c, 500, "internalError", "out of memory", NULL, false);
                return -1;
            }
            w->zbuf = nb;
            w->zcap = nc;
        }
        w->zs.next_out = w->zbuf + total;
        w->zs.avail_out = (uInt)(w->zcap - total);
        int zr = inflate(&w->zs, Z_NO_FLUSH);
        total = w->zcap - w->zs.avail_out;
        if (zr == Z_STREAM_END) {
            if (w->zs.avail_in == 0)
                break;
            if (wbits != 31 || inflateReset(&w->zs) != Z_OK)   /* another gzip member */
                break;
            continue;
        }
        if (zr == Z_BUF_ERROR && w->zs.avail_in == 0) {
            google_error(c, 400, "parseError", "Compressed request body is truncated.", NULL, false);
            return -1;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            char m[200];
            snprintf(m, sizeof m, "Request body could not be decompressed: %s",
                     w->zs.msg ? w->zs.msg : "invalid data");
            google_error(c, 400, "parseError", m, NULL, false);
            return -1;
        }
    }
    if (total > limit) {
        google_error(c, 400, "invalid", "Request payload size exceeds the limit: 10485760 bytes.",
                     NULL, false);
        return -1;
    }
    return (long long)total;
}

static void insertall(struct worker *w, struct conn *c, struct fs_table *t, const char *body,
                      size_t blen)
{
    fs_add(&FS.st.insertall_requests, 1);
    fs_add(&FS.st.insertall_body_bytes, blen);
    if (!authorize(c, FS_SCOPES_INSERT)) {
        fs_add(&FS.st.insertall_rejected, 1);
        return;
    }
    const char *ct = c->h.ctype_len ? hv(c, c->h.ctype_off) : "";
    size_t ctl = c->h.ctype_len;
    size_t semi = 0;
    while (semi < ctl && ct[semi] != ';')
        semi++;
    while (semi > 0 && ct[semi - 1] == ' ')
        semi--;
    if (!(semi == 16 && strncasecmp(ct, "application/json", 16) == 0)) {
        char m[200];
        snprintf(m, sizeof m, "Content-Type must be application/json (got '%.*s').",
                 (int)(ctl > 80 ? 80 : ctl), ct);
        fs_add(&FS.st.insertall_rejected, 1);
        google_error(c, 400, "invalid", m, NULL, false);
        return;
    }
    if (!t) {
        fs_add(&FS.st.insertall_rejected, 1);
        return;   /* answered by the caller */
    }
    const char *enc = c->h.enc_len ? hv(c, c->h.enc_off) : "";
    size_t el = c->h.enc_len;
    const char *json = body;
    size_t jlen = blen;
    int wbits = 0;
    if (el == 0 || (el == 8 && strncasecmp(enc, "identity", 8) == 0))
        wbits = 0;
    else if ((el == 4 && strncasecmp(enc, "gzip", 4) == 0) || (el == 6 && strncasecmp(enc, "x-gzip", 6) == 0))
        wbits = 31;
    else if (el == 7 && strncasecmp(enc, "deflate", 7) == 0)
        wbits = 15;
    else {
        char m[160];
        snprintf(m, sizeof m, "Unsupported Content-Encoding '%.*s'.", (int)(el > 40 ? 40 : el), enc);
        fs_add(&FS.st.insertall_rejected, 1);
        google_error(c, 400, "invalid", m, NULL, false);
        return;
    }
    if (wbits) {
        fs_add(&FS.st.insertall_gzip_requests, 1);
        long long n = inflate_body(w, c, body, blen, wbits);
        if (n < 0) {
            fs_add(&FS.st.insertall_rejected, 1);
            return;
        }
        json = (const char *)w->zbuf;
        jlen = (size_t)n;
    }
    fs_add(&FS.st.insertall_decoded_bytes, jlen);
    if (jlen > FS_MAX_REQUEST_BYTES) {
        fs_add(&FS.st.insertall_rejected, 1);
        google_error(c, 400, "invalid", "Request payload size exceeds the limit: 10485760 bytes.",
                     NULL, false);
        return;
    }
    size_t rows;
    char msg[300];
    int rc = fs_json_insertall(json, jlen, &rows, msg, sizeof msg);
    if (rc != FS_JSON_OK) {
        fs_add(&FS.st.insertall_rejected, 1);
        google_error(c, 400, rc == FS_JSON_PARSE ? "parseError" : "invalid", msg, NULL, false);
        return;
    }
    fs_add(&FS.st.insertall_rows, rows);
    fs_add(&t->insertall_rows, rows);
    static const char ok[] = "{\"kind\":\"bigquery#tableDataInsertAllResponse\"}";
    respond(c, 200, NULL, ok, sizeof ok - 1);
}

/* ---- routing ---- */

static void handle(struct worker *w, struct conn *c, const char *body, size_t blen)
{
    fs_add(&FS.st.http_requests, 1);
    const char *m = hv(c, c->h.method_off);
    size_t ml = c->h.method_len;
    const char *tg = hv(c, c->h.target_off);
    size_t tl = c->h.target_len;
    const char *q = memchr(tg, '?', tl);
    size_t pl = q ? (size_t)(q - tg) : tl;
    bool get = ml == 3 && memcmp(m, "GET", 3) == 0, post = ml == 4 && memcmp(m, "POST", 4) == 0;
    char path[2048];
    if (pl >= sizeof path) {
        google_error(c, 404, "notFound", "Not found: URL too long.", NULL, false);
        return;
    }
    memcpy(path, tg, pl);
    path[pl] = 0;
    if (strncmp(path, "/bigquery/v2/", 13) == 0)
        memmove(path, path + 12, strlen(path + 12) + 1);
    if (strcmp(path, "/token") == 0 || strcmp(path, "/oauth2/v4/token") == 0) {
        if (!post) {
            static const char e[] = "{\"error\":\"invalid_request\",\"error_description\":"
                                    "\"The token endpoint only accepts POST.\"}";
            respond(c, 405, NULL, e, sizeof e - 1);
            return;
        }
        char ctype[128];
        size_t cl = c->h.ctype_len < sizeof ctype - 1 ? c->h.ctype_len : sizeof ctype - 1;
        memcpy(ctype, hv(c, c->h.ctype_off), cl);
        ctype[cl] = 0;
        char out[1024];
        int st = fs_auth_token(body, blen, ctype, out, sizeof out);
        respond(c, st, "Cache-Control: no-cache, no-store, max-age=0, must-revalidate\r\nPragma: no-cache\r\n",
                out, strlen(out));
        return;
    }
    if (strcmp(path, "/stats") == 0 && get) {
        char *s = fs_stats_json();
        if (s) {
            respond(c, 200, NULL, s, strlen(s));
            free(s);
        } else {
            respond(c, 500, NULL, "{}", 2);
        }
        return;
    }
    /* /projects/P/datasets/D[/tables/T[/insertAll]] */
    char seg[6][512];
    size_t sl[6], n = 0;
    const char *p = path;
    while (*p == '/' && n < 6) {
        const char *s = p + 1, *e = strchr(s, '/');
        if (!e)
            e = s + strlen(s);
        if (!seg_decode(s, (size_t)(e - s), seg[n], sizeof seg[n], &sl[n]))
            break;
        n++;
        p = e;
    }
    bool shape = n >= 4 && strcmp(seg[0], "projects") == 0 && strcmp(seg[2], "datasets") == 0;
    if (shape && n == 4 && *p == 0) {   /* datasets.get */
        if (!get) {
            google_error(c, 404, "notFound", "Not found: the fast sink serves only datasets.get here.",
                         NULL, false);
            return;
        }
        if (!authorize(c, FS_SCOPES_TABLE))
            return;
        if (!fs_dataset_known(seg[1], sl[1], seg[3], sl[3])) {
            char msg[1200];
            snprintf(msg, sizeof msg, "Not found: Dataset %s:%s", seg[1], seg[3]);
            google_error(c, 404, "notFound", msg, NULL, false);
            return;
        }
        char id[1100];
        snprintf(id, sizeof id, "%s:%s", seg[1], seg[3]);
        json_t *o = json_pack("{s:s, s:s, s:s, s:{s:s, s:s}}", "kind", "bigquery#dataset", "id", id,
                              "location", "US", "datasetReference", "projectId", seg[1],
                              "datasetId", seg[3]);
        char *t = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        respond(c, 200, NULL, t ? t : "{}", t ? strlen(t) : 2);
        free(t);
        return;
    }
    if (shape && n == 6 && *p == 0 && strcmp(seg[4], "tables") == 0) {   /* tables.get */
        /* the table id with its partition decorator dropped */
        size_t tlen = strcspn(seg[5], "$");
        struct fs_table *t = fs_find_table(seg[1], sl[1], seg[3], sl[3], seg[5], tlen);
        char nf[1500];
        snprintf(nf, sizeof nf, "Not found: Table %s:%s.%.*s", seg[1], seg[3], (int)tlen, seg[5]);
        if (!get) {
            google_error(c, 404, "notFound", "Not found: the fast sink serves only tables.get here.",
                         NULL, false);
            return;
        }
        fs_add(&FS.st.tables_get, 1);
        if (!authorize(c, FS_SCOPES_TABLE))
            return;
        if (!t) {
            google_error(c, 404, "notFound", nf, NULL, false);
            return;
        }
        respond(c, 200, NULL, t->resource, t->resource_len);
        return;
    }
    if (shape && n == 6 && *p == '/' && strcmp(p, "/insertAll") == 0 && strcmp(seg[4], "tables") == 0) {
        if (!post) {
            google_error(c, 404, "notFound", "insertAll takes POST.", NULL, false);
            return;
        }
        size_t tlen = strcspn(seg[5], "$");
        struct fs_table *t = fs_find_table(seg[1], sl[1], seg[3], sl[3], seg[5], tlen);
        size_t before = c->olen;
        insertall(w, c, t, body, blen);
        if (!t && c->olen == before) {
            char nf[1500];
            snprintf(nf, sizeof nf, "Not found: Table %s:%s.%.*s", seg[1], seg[3], (int)tlen, seg[5]);
            google_error(c, 404, "notFound", nf, NULL, false);
        }
        return;
    }
    char msg[2200];
    snprintf(msg, sizeof msg, "Not found: URL %.*s %s (the fast sink serves /token, /stats, "
             "datasets.get, tables.get and insertAll)", (int)(ml > 10 ? 10 : ml), m, path);
    google_error(c, 404, "notFound", msg, NULL, false);
}

/* ---- connections ---- */

static void conn_free(struct conn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    free(c->out);
    free(c->body);
    free(c);
}

/* Writes what it can; returns -1 when the connection is done for. */
static int flush_out(struct worker *w, struct conn *c)
{
    while (c->ooff < c->olen) {
        int n = SSL_write(c->ssl, c->out + c->ooff, (int)(c->olen - c->ooff > (1u << 30) ? (1u << 30)
                                                           : c->olen - c->ooff));
        if (n > 0) {
            c->ooff += (size_t)n;
            fs_add(&FS.st.http_bytes_out, (uint64_t)n);
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            if (!c->want_out) {
                struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
                epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->want_out = true;
            }
            return 0;
        }
        ERR_clear_error();
        return -1;
    }
    c->ooff = c->olen = 0;
    if (c->want_out) {
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = false;
    }
    return c->closing ? -1 : 0;
}

/* Handles every complete request in the input buffer. Returns -1 to close. */
static int process(struct worker *w, struct conn *c)
{
    for (;;) {
        if (c->closing)
            return 0;
        if (!c->hdr_len) {
            size_t from = c->scan > 3 ? c->scan - 3 : 0;
            char *e = c->len > from ? memmem(c->in + from, c->len - from, "\r\n\r\n", 4) : NULL;
            if (!e) {
                c->scan = c->len;
                if (c->len > MAX_HEADER_BYTES) {
                    c->closing = true;
                    google_error(c, 431, "invalid", "Request header block too large.", NULL, false);
                }
                return 0;
            }
            c->hdr_len = (size_t)(e + 4 - c->in);
            int st = parse_headers(c);
            if (st) {
                c->closing = true;
                google_error(c, st, "invalid", "Malformed HTTP request.", NULL, false);
                return 0;
            }
            bool is_post = c->h.method_len == 4 && memcmp(c->in, "POST", 4) == 0;
            if (!c->h.chunked && c->h.clen < 0 && is_post) {
                c->closing = true;
                google_error(c, 411, "invalid", "POST requests require a Content-length header.",
                             NULL, false);
                return 0;
            }
            if (c->h.clen > (long long)MAX_WIRE_BODY) {
                c->closing = true;
                google_error(c, 413, "invalid", "Request body too large.", NULL, false);
                return 0;
            }
            c->sent_continue = false;
        }
        const char *body;
        size_t blen, total;
        if (c->h.chunked) {
            long long r = dechunk(c);
            if (r < 0) {
                c->closing = true;
                google_error(c, 400, "invalid", "Malformed chunked request body.", NULL, false);
                return 0;
            }
            if (r == 0)
                goto need_more;
            body = c->body;
            blen = c->body_len;
            total = (size_t)r;
        } else {
            size_t cl = c->h.clen < 0 ? 0 : (size_t)c->h.clen;
            if (c->len < c->hdr_len + cl) {
                if (c->cap < c->hdr_len + cl) {   /* room for the whole body at once */
                    char *n = realloc(c->in, c->hdr_len + cl + 1);
                    if (!n)
                        return -1;
                    c->in = n;
                    c->cap = c->hdr_len + cl + 1;
                }
                goto need_more;
            }
            body = c->in + c->hdr_len;
            blen = cl;
            total = c->hdr_len + cl;
        }
        handle(w, c, body, blen);
        if (c->h.close)
            c->closing = true;
        /* the next request */
        if (c->len > total)
            memmove(c->in, c->in + total, c->len - total);
        c->len -= total;
        c->hdr_len = 0;
        c->scan = 0;
        if (c->cap > (4u << 20) && c->len < 65536) {   /* give a big buffer back */
            char *n = realloc(c->in, 65536 + READ_CHUNK);
            if (n) {
                c->in = n;
                c->cap = 65536 + READ_CHUNK;
            }
        }
        continue;
need_more:
        if (c->h.expect && !c->sent_continue) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            out_add(c, cont, sizeof cont - 1);
            c->sent_continue = true;
        }
        return 0;
    }
}

static int on_readable(struct worker *w, struct conn *c)
{
    for (;;) {
        if (c->cap - c->len < READ_CHUNK) {
            size_t nc = c->cap ? c->cap : 2 * READ_CHUNK;
            while (nc - c->len < READ_CHUNK)
                nc *= 2;
            char *n = realloc(c->in, nc);
            if (!n)
                return -1;
            c->in = n;
            c->cap = nc;
        }
        int n = SSL_read(c->ssl, c->in + c->len, (int)(c->cap - c->len - 1));
        if (n > 0) {
            c->len += (size_t)n;
            fs_add(&FS.st.http_bytes_in, (uint64_t)n);
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_WANT_WRITE) {
            if (!c->want_out) {
                struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
                epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->want_out = true;
            }
            break;
        }
        ERR_clear_error();
        return -1;   /* closed, or a TLS failure (a client that does not trust us) */
    }
    if (process(w, c) != 0)
        return -1;
    return flush_out(w, c);
}

static void accept_all(struct worker *w)
{
    for (;;) {
        int fd = accept4(H.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c || !(c->ssl = SSL_new(H.ctx))) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        SSL_set_fd(c->ssl, fd);
        SSL_set_accept_state(c->ssl);
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            conn_free(c);
            continue;
        }
        fs_add(&FS.st.http_connections, 1);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[64];
    while (!FS.stop) {
        int n = epoll_wait(w->ep, evs, 64, 200);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                accept_all(w);
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            int rc;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN))
                rc = -1;
            else if (c->want_out && (evs[i].events & EPOLLOUT) && c->ooff < c->olen)
                rc = flush_out(w, c) == 0 ? on_readable(w, c) : -1;
            else
                rc = on_readable(w, c);
            if (rc != 0) {
                epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
                conn_free(c);
            }
        }
    }
    return NULL;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    for (unsigned i = 0; i < inlen;) {
        unsigned l = in[i];
        if (i + 1 + l > inlen)
            break;
        if (l == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

int fs_http_start(char *err, size_t errlen)
{
    H.ctx = SSL_CTX_new(TLS_server_method());
    if (!H.ctx) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        return -1;
    }
    SSL_CTX_set_min_proto_version(H.ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(H.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(H.ctx, FS.cfg.tls_cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(H.ctx, FS.cfg.tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(H.ctx) != 1) {
        snprintf(err, errlen, "cannot load %s / %s: %s", FS.cfg.tls_cert, FS.cfg.tls_key,
                 ERR_reason_error_string(ERR_get_error()));
        return -1;
    }
    SSL_CTX_set_alpn_select_cb(H.ctx, alpn_select, NULL);

    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    socklen_t salen;
    memset(&a6, 0, sizeof a6);
    memset(&a4, 0, sizeof a4);
    if (inet_pton(AF_INET, FS.cfg.host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)FS.cfg.port);
        sa = (struct sockaddr *)&a4;
        salen = sizeof a4;
    } else if (inet_pton(AF_INET6, FS.cfg.host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)FS.cfg.port);
        sa = (struct sockaddr *)&a6;
        salen = sizeof a6;
    } else {
        snprintf(err, errlen, "--host %s is not an IP address", FS.cfg.host);
        return -1;
    }
    H.lfd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(H.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (H.lfd < 0 || bind(H.lfd, sa, salen) != 0 || listen(H.lfd, 512) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", FS.cfg.host, FS.cfg.port, strerror(errno));
        return -1;
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    getsockname(H.lfd, (struct sockaddr *)&got, &gl);
    FS.https_port = got.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&got)->sin_port)
                                             : ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
    H.n = FS.cfg.threads;
    H.w = calloc((size_t)H.n, sizeof *H.w);
    if (!H.w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < H.n; i++) {
        struct worker *w = &H.w[i];
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL };
        if (w->ep < 0 || epoll_ctl(w->ep, EPOLL_CTL_ADD, H.lfd, &ev) != 0 ||
            pthread_create(&w->th, NULL, worker_main, w) != 0) {
            snprintf(err, errlen, "cannot start HTTPS worker %d: %s", i, strerror(errno));
            return -1;
        }
    }
    return 0;
}

void fs_http_stop(void)
{
    for (int i = 0; i < H.n; i++)
        pthread_join(H.w[i].th, NULL);
    /* connections are left to process exit */
    if (H.lfd >= 0)
        close(H.lfd);
}
