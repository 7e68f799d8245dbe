/*
 * forward.c -- the Fluent forward protocol decoder. See forward.h.
 *
 * Two passes per message. The framing scan walks the msgpack headers of the
 * bytes received so far, without allocating, until one top-level object is
 * complete; every declared length and element count is checked against what
 * max_message_bytes can still hold (each element takes at least one byte),
 * so a five-byte header claiming four billion elements is refused before
 * msgpack-c would allocate for them. The complete message is then decoded by
 * msgpack-c (strings point into our buffer) and each record is written as
 * JSON, which json_check validates with the line protocol's own rules.
 */
#include "forward.h"
#include "json_check.h"

#include <math.h>
#include <stdarg.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#define MAX_TAG   1024
#define MAX_CHUNK 1024

struct jbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

struct fwd_stream {
    char *buf;            /* bytes of the message(s) not yet decoded */
    size_t len, cap;
    size_t scan;          /* framing scan position within buf */
    uint64_t pending;     /* objects still to frame at scan */
    uint64_t base;        /* stream offset of buf[0] */
    bool broken;
    struct jbuf json;     /* the record being written */
    char *plain;          /* decompressed PackedForward entries */
    size_t plain_cap;
};

struct fwd_stream *fwd_stream_new(void)
{
    struct fwd_stream *s = calloc(1, sizeof *s);
    if (s)
        s->pending = 1;
    return s;
}

void fwd_stream_free(struct fwd_stream *s)
{
    if (!s)
        return;
    free(s->buf);
    free(s->json.p);
    free(s->plain);
    free(s);
}

size_t fwd_buffered(const struct fwd_stream *s)
{
    return s->len;
}

/* ---- framing ---- */

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

enum { FRAME_MORE = 0, FRAME_DONE = 1, FRAME_ERR = -1 };

/* Continues framing one object in b[0..avail) from *pos with *pending objects
 * to go. FRAME_DONE: the object ends at *pos. */
static int frame(const unsigned char *b, size_t avail, size_t max, size_t *pos,
                 uint64_t *pending, char *err, size_t errlen)
{
    size_t p = *pos;
    uint64_t pend = *pending;
    while (pend > 0) {
        if (p >= avail)
            break;
        unsigned c = b[p];
        size_t h = 1;
        uint64_t sz = 0, kids = 0;
        int lenbytes = 0;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            /* fixint, nil, bool */
        } else if (c <= 0x8f) {
            kids = 2 * (uint64_t)(c & 0x0f);
        } else if (c <= 0x9f) {
            kids = c & 0x0f;
        } else if (c <= 0xbf) {
            sz = c & 0x1f;
        } else if (c == 0xc1) {
            snprintf(err, errlen, "invalid msgpack: byte 0xc1 (never used) at offset %zu", p);
            return FRAME_ERR;
        } else if (c >= 0xc4 && c <= 0xc6) {           /* bin 8/16/32 */
            lenbytes = 1 << (c - 0xc4);
        } else if (c >= 0xc7 && c <= 0xc9) {           /* ext 8/16/32 */
            lenbytes = 1 << (c - 0xc7);
            h = 1 + 1;                                  /* + type byte */
        } else if (c == 0xca || c == 0xcb) {
            sz = c == 0xca ? 4 : 8;
        } else if (c >= 0xcc && c <= 0xd3) {           /* uint/int 8..64 */
            sz = 1u << ((c - 0xcc) & 3);
        } else if (c >= 0xd4 && c <= 0xd8) {           /* fixext 1..16 */
            h = 2;
            sz = 1u << (c - 0xd4);
        } else if (c >= 0xd9 && c <= 0xdb) {           /* str 8/16/32 */
            lenbytes = 1 << (c - 0xd9);
        } else if (c == 0xdc || c == 0xdd) {           /* array 16/32 */
            lenbytes = c == 0xdc ? 2 : 4;
        } else {                                        /* 0xde, 0xdf: map 16/32 */
            lenbytes = c == 0xde ? 2 : 4;
        }
        if (lenbytes) {
            if (p + 1 + (size_t)lenbytes > avail)
                break;
            uint64_t n = be(b + p + 1, lenbytes);
            h += (size_t)lenbytes;
            if (c >= 0xdc && c <= 0xdd)
                kids = n;
            else if (c >= 0xde)
                kids = 2 * n;
            else
                sz = n;
        }
        if (p + h > avail)
            break;
        /* everything declared must fit in what max can still hold */
        uint64_t end = (uint64_t)p + h + sz;
        if (end > max || (pend - 1 + kids) > max - end) {
            snprintf(err, errlen, "message larger than max_message_bytes (%zu): the header at "
                     "offset %zu declares %llu more bytes or elements", max, p,
                     (unsigned long long)(sz ? sz : kids));
            return FRAME_ERR;
        }
        if (end > avail)
            break;
        p = (size_t)end;
        pend = pend - 1 + kids;
    }
    *pos = p;
    *pending = pend;
    return pend == 0 ? FRAME_DONE : FRAME_MORE;
}

/* ---- JSON writing ---- */

static bool jb_reserve(struct jbuf *j, size_t n)
{
    if (j->len + n <= j->cap)
        return true;
    size_t nc = j->cap ? j->cap : 1024;
    while (nc < j->len + n)
        nc *= 2;
    char *q = realloc(j->p, nc);
    if (!q) {
        j->oom = true;
        return false;
    }
    j->p = q;
    j->cap = nc;
    return true;
}

static void jb_put(struct jbuf *j, const char *s, size_t n)
{
    if (!jb_reserve(j, n))
        return;
    memcpy(j->p + j->len, s, n);
    j->len += n;
}

static void jb_ch(struct jbuf *j, char c)
{
    if (jb_reserve(j, 1))
        j->p[j->len++] = c;
}

/* A JSON string of raw bytes: only '"', '\' and control characters are
 * escaped; UTF-8 is checked afterwards by json_check. */
static void jb_str(struct jbuf *j, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (!jb_reserve(j, n + 2))
        return;
    j->p[j->len++] = '"';
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        jb_put(j, s + run, i - run);
        run = i + 1;
        char e[6] = { '\\', 0 };
        size_t el = 2;
        switch (c) {
        case '"':  e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        default:
            e[1] = 'u'; e[2] = '0'; e[3] = '0'; e[4] = hex[c >> 4]; e[5] = hex[c & 15];
            el = 6;
        }
        jb_put(j, e, el);
    }
    jb_put(j, s + run, n - run);
    jb_ch(j, '"');
}

static void jb_base64(struct jbuf *j, const unsigned char *s, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (!jb_reserve(j, (n + 2) / 3 * 4 + 2))
        return;
    char *o = j->p + j->len;
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = a[v >> 18]; *o++ = a[(v >> 12) & 63]; *o++ = a[(v >> 6) & 63]; *o++ = a[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
        *o++ = a[v >> 18];
        *o++ = a[(v >> 12) & 63];
        *o++ = i + 1 < n ? a[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o++ = '"';
    j->len = (size_t)(o - j->p);
}

/* Decimal digits of v (snprintf's %llu costs more than the rest of a record). */
static void jb_u64(struct jbuf *j, uint64_t v, bool neg)
{
    char b[24], *e = b + sizeof b, *q = e;
    do {
        *--q = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg)
        *--q = '-';
    jb_put(j, q, (size_t)(e - q));
}

/* The shortest decimal that reads back as the same number. */
static void jb_double(struct jbuf *j, double d, bool single)
{
    char b[40];
    if (d > -1e15 && d < 1e15 && d == (double)(int64_t)d && !(d == 0 && signbit(d))) {
        int64_t v = (int64_t)d;      /* what %.15g prints for it: its integer digits */
        jb_u64(j, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, v < 0);
        return;
    }
    if (isnan(d)) {
        jb_put(j, "\"NaN\"", 5);
        return;
    }
    if (isinf(d)) {
        if (d > 0)
            jb_put(j, "\"Infinity\"", 10);
        else
            jb_put(j, "\"-Infinity\"", 11);
        return;
    }
    int n = 0;
    for (int prec = single ? 6 : 15; prec <= 17; prec++) {
        n = snprintf(b, sizeof b, "%.*g", prec, d);
        if (single ? strtof(b, NULL) == (float)d : strtod(b, NULL) == d)
            break;
    }
    jb_put(j, b, (size_t)n);
}

struct conv {
    const struct fwd_limits *l;
    const char *reason;
    char detail[160];
};

static int refuse_c(struct conv *cv, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse_c(struct conv *cv, const char *reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cv->detail, sizeof cv->detail, fmt, ap);
    va_end(ap);
    cv->reason = reason;
    return -1;
}

static int put_value(struct jbuf *j, const msgpack_object *o, unsigned depth, struct conv *cv)
{
    if (j->len > cv->l->max_record_bytes)
        return refuse_c(cv, "size", "the record is larger than max_record_bytes (%zu) as JSON",
                        cv->l->max_record_bytes);
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        jb_put(j, "null", 4);
        return 0;
    case MSGPACK_OBJECT_BOOLEAN:
        if (o->via.boolean)
            jb_put(j, "true", 4);
        else
            jb_put(j, "false", 5);
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        jb_u64(j, o->via.u64, false);
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        jb_u64(j, o->via.i64 < 0 ? (uint64_t)0 - (uint64_t)o->via.i64 : (uint64_t)o->via.i64,
               o->via.i64 < 0);
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
        jb_double(j, o->via.f64, true);
        return 0;
    case MSGPACK_OBJECT_FLOAT64:
        jb_double(j, o->via.f64, false);
        return 0;
    case MSGPACK_OBJECT_STR:
        jb_str(j, o->via.str.ptr, o->via.str.size);
        return 0;
    case MSGPACK_OBJECT_BIN:
        jb_base64(j, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
        return 0;
    case MSGPACK_OBJECT_ARRAY:
        if (depth + 1 > cv->l->max_depth)
            return refuse_c(cv, "depth", "nested deeper than max_depth (%u)", cv->l->max_depth);
        jb_ch(j, '[');
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                jb_ch(j, ',');
            if (put_value(j, &o->via.array.ptr[i], depth + 1, cv))
                return -1;
        }
        jb_ch(j, ']');
        return 0;
    case MSGPACK_OBJECT_MAP:
        if (depth + 1 > cv->l->max_depth)
            return refuse_c(cv, "depth", "nested deeper than max_depth (%u)", cv->l->max_depth);
        jb_ch(j, '{');
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR)
                return refuse_c(cv, "key", "a map key is not a string (msgpack type %d): JSON "
                                "objects have string keys", (int)kv->key.type);
            if (i)
                jb_ch(j, ',');
            jb_str(j, kv->key.via.str.ptr, kv->key.via.str.size);
            jb_ch(j, ':');
            if (put_value(j, &kv->val, depth + 1, cv))
                return -1;
        }
        jb_ch(j, '}');
        return 0;
    case MSGPACK_OBJECT_EXT:
        return refuse_c(cv, "type", "a msgpack ext value (type %d) has no JSON form",
                        (int)o->via.ext.type);
    }
    return refuse_c(cv, "type", "unknown msgpack type %d", (int)o->type);
}

/* ---- time ---- */

#define MAX_SECONDS 253402300799ULL   /* 9999-12-31T23:59:59Z */

static int event_time(const msgpack_object *t, uint64_t *sec, uint32_t *nsec)
{
    switch (t->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *sec = t->via.u64;
        *nsec = 0;
        break;
    case MSGPACK_OBJECT_EXT: {
        if (t->via.ext.type != 0 || t->via.ext.size != 8)
            return -1;
        const unsigned char *p = (const unsigned char *)t->via.ext.ptr;
        *sec = be(p, 4);
        *nsec = (uint32_t)be(p + 4, 4);
        if (*nsec >= 1000000000u)
            return -1;
        break;
    }
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: {
        double d = t->via.f64;
        if (!(d >= 0) || d > (double)MAX_SECONDS)
            return -1;
        double whole = floor(d);
        *sec = (uint64_t)whole;
        double ns = (d - whole) * 1e9;
        *nsec = ns >= 999999999.0 ? 999999999u : (uint32_t)ns;
        break;
    }
    default:
        return -1;
    }
    return *sec <= MAX_SECONDS ? 0 : -1;
}

static void put_time(struct jbuf *j, enum fwd_time_format f, uint64_t sec, uint32_t nsec)
{
    char b[48];
    int n;
    if (f == FWD_TIME_UNIX_NS) {
        n = snprintf(b, sizeof b, "%llu", (unsigned long long)(sec * 1000000000ULL + nsec));
    } else {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        if (f == FWD_TIME_RFC3339_NS)
            n = snprintf(b, sizeof b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%09uZ\"", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, nsec);
        else
            n = snprintf(b, sizeof b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%06uZ\"", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                         nsec / 1000);
    }
    jb_put(j, b, (size_t)n);
}

/* ---- messages ---- */

struct msg {
    const char *tag;
    size_t tag_len;
};

static bool is_str(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

/* One [time, record] event: emits record() or refused(). */
static void event(struct fwd_stream *s, const struct fwd_limits *l, const struct msg *m,
                  const msgpack_object *time, const msgpack_object *rec,
                  const struct fwd_sink *sink)
{
    struct conv cv = { .l = l };
    uint64_t sec = 0;
    uint32_t nsec = 0;
    struct jbuf *j = &s->json;
    j->len = 0;
    j->oom = false;
    if (event_time(time, &sec, &nsec) != 0) {
        refuse_c(&cv, "time", "the event time is not a positive integer, an EventTime "
                 "(ext 0, 8 bytes, nanoseconds < 10^9) or a float, or is after 9999-12-31");
        goto refused;
    }
    if (rec->type != MSGPACK_OBJECT_MAP) {
        refuse_c(&cv, "not-object", "the record is not a msgpack map (type %d)", (int)rec->type);
        goto refused;
    }
    if (put_value(j, rec, 0, &cv) != 0)
        goto refused;
    if (j->oom) {
        refuse_c(&cv, "full", "relayd is out of memory");
        goto refused;
    }
    if (l->time_key && *l->time_key) {
        bool has = false;
        size_t kl = strlen(l->time_key);
        for (uint32_t i = 0; i < rec->via.map.size && !has; i++) {
            const msgpack_object *k = &rec->via.map.ptr[i].key;
            has = k->via.str.size == kl && memcmp(k->via.str.ptr, l->time_key, kl) == 0;
        }
        if (!has) {   /* the record's own field wins: it is never overwritten */
            j->len--;  /* the closing brace */
            if (rec->via.map.size)
                jb_ch(j, ',');
            jb_str(j, l->time_key, kl);
            jb_ch(j, ':');
            put_time(j, l->time_format, sec, nsec);
            jb_ch(j, '}');
        }
    }
    if (j->oom) {
        refuse_c(&cv, "full", "relayd is out of memory");
        goto refused;
    }
    if (j->len > l->max_record_bytes) {
        refuse_c(&cv, "size", "the record is %zu bytes as JSON, more than max_record_bytes (%zu)",
                 j->len, l->max_record_bytes);
        goto refused;
    }
    struct jcheck_result r;
    if (jcheck_object(j->p, j->len, l->max_depth, &r) != JC_OK) {
        refuse_c(&cv, jcheck_token(r.code), "%s (at byte %zu of the record as JSON)", r.msg,
                 r.offset + 1);
        goto refused;
    }
    sink->record(sink->arg, m->tag, m->tag_len, j->p, j->len);
    return;
refused:
    sink->refused(sink->arg, m->tag, m->tag_len, cv.reason, cv.detail);
}

static void entry(struct fwd_stream *s, const struct fwd_limits *l, const struct msg *m,
                  const msgpack_object *e, const struct fwd_sink *sink)
{
    if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2) {
        sink->refused(sink->arg, m->tag, m->tag_len, "entry",
                      "an entry is not a [time, record] array");
        return;
    }
    event(s, l, m, &e->via.array.ptr[0], &e->via.array.ptr[1], sink);
}

static int gunzip(struct fwd_stream *s, const struct fwd_limits *l, const char *in, size_t n,
                  size_t *out_len, char *err, size_t errlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
        snprintf(err, errlen, "cannot start gzip decompression");
        return -1;
    }
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    size_t len = 0;
    int rc = Z_OK;
    for (;;) {
        if (len == s->plain_cap) {
            if (s->plain_cap >= l->max_message_bytes) {
                snprintf(err, errlen, "the gzip entries decompress to more than "
                         "max_message_bytes (%zu)", l->max_message_bytes);
                goto fail;
            }
            size_t nc = s->plain_cap ? s->plain_cap * 2 : 65536;
            if (nc > l->max_message_bytes)
                nc = l->max_message_bytes;
            char *p = realloc(s->plain, nc);
            if (!p) {
                snprintf(err, errlen, "out of memory decompressing entries");
                goto fail;
            }
            s->plain = p;
            s->plain_cap = nc;
        }
        z.next_out = (Bytef *)s->plain + len;
        z.avail_out = (uInt)(s->plain_cap - len);
        rc = inflate(&z, Z_NO_FLUSH);
        len = s->plain_cap - z.avail_out;
        if (rc == Z_STREAM_END) {
            if (z.avail_in == 0)
                break;
            inflateReset(&z);   /* concatenated gzip members */
            continue;
        }
        if (rc == Z_BUF_ERROR && z.avail_in == 0) {
            snprintf(err, errlen, "the gzip entries are truncated");
            goto fail;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            snprintf(err, errlen, "the gzip entries are corrupt: %s", z.msg ? z.msg : "error");
            goto fail;
        }
    }
    inflateEnd(&z);
    *out_len = len;
    return 0;
fail:
    inflateEnd(&z);
    return -1;
}

/* PackedForward: frames every entry first, so a malformed stream emits nothing. */
static int packed(struct fwd_stream *s, const struct fwd_limits *l, const struct msg *m,
                  const char *p, size_t n, const struct fwd_sink *sink, char *err, size_t errlen)
{
    size_t pos = 0;
    while (pos < n) {
        uint64_t pend = 1;
        size_t q = pos;
        int rc = frame((const unsigned char *)p, n, n, &q, &pend, err, errlen);
        if (rc == FRAME_ERR)
            return -1;
        if (rc == FRAME_MORE) {
            snprintf(err, errlen, "the packed entries end in the middle of an entry "
                     "(at entry byte %zu)", pos);
            return -1;
        }
        pos = q;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    while (off < n) {
        size_t before = off;
        msgpack_unpack_return r = msgpack_unpack_next(&u, p, n, &off);
        if (r != MSGPACK_UNPACK_SUCCESS) {
            msgpack_unpacked_destroy(&u);
            snprintf(err, errlen, "a packed entry at entry byte %zu cannot be decoded%s",
                     before, r == MSGPACK_UNPACK_NOMEM_ERROR ? " (out of memory)" :
                     " (nested deeper than 32 levels?)");
            return -1;
        }
        entry(s, l, m, &u.data, sink);
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}

/* Decodes one complete message buf[0..n). */
static int message(struct fwd_stream *s, const struct fwd_limits *l, const char *buf, size_t n,
                   const struct fwd_sink *sink, char *err, size_t errlen)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int ret = -1;
    msgpack_unpack_return r = msgpack_unpack_next(&u, buf, n, &off);
    if (r != MSGPACK_UNPACK_SUCCESS) {
        snprintf(err, errlen, "the message cannot be decoded%s",
                 r == MSGPACK_UNPACK_NOMEM_ERROR ? " (out of memory)" :
                 " (msgpack nested deeper than 32 levels?)");
        goto out;
    }
    const msgpack_object *o = &u.data;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 2 || o->via.array.size > 4) {
        snprintf(err, errlen, "a forward message is an array of 2 to 4 elements "
                 "[tag, time, record, option] or [tag, entries, option]");
        goto out;
    }
    const msgpack_object *a = o->via.array.ptr;
    uint32_t na = o->via.array.size;
    if (a[0].type != MSGPACK_OBJECT_STR || a[0].via.str.size == 0 ||
        a[0].via.str.size > MAX_TAG) {
        snprintf(err, errlen, "the message's first element, the tag, must be a string of 1 to "
                 "%d bytes", MAX_TAG);
        goto out;
    }
    struct msg m = { a[0].via.str.ptr, a[0].via.str.size };
    enum { M_MESSAGE, M_FORWARD, M_PACKED } mode;
    if (a[1].type == MSGPACK_OBJECT_ARRAY)
        mode = M_FORWARD;
    else if (a[1].type == MSGPACK_OBJECT_BIN || a[1].type == MSGPACK_OBJECT_STR)
        mode = M_PACKED;
    else
        mode = M_MESSAGE;
    uint32_t opt_at = mode == M_MESSAGE ? 3 : 2;
    if ((mode == M_MESSAGE && na < 3) || na > opt_at + 1) {
        snprintf(err, errlen, mode == M_MESSAGE ?
                 "a Message is [tag, time, record] or [tag, time, record, option]" :
                 "a Forward or PackedForward message is [tag, entries] or [tag, entries, option]");
        goto out;
    }
    const char *chunk = NULL;
    size_t chunk_len = 0;
    bool gz = false;
    if (na > opt_at && a[opt_at].type != MSGPACK_OBJECT_NIL) {
        const msgpack_object *op = &a[opt_at];
        if (op->type != MSGPACK_OBJECT_MAP) {
            snprintf(err, errlen, "the option element must be a map");
            goto out;
        }
        for (uint32_t i = 0; i < op->via.map.size; i++) {
            const msgpack_object *k = &op->via.map.ptr[i].key, *v = &op->via.map.ptr[i].val;
            if (is_str(k, "chunk")) {
                if ((v->type != MSGPACK_OBJECT_STR && v->type != MSGPACK_OBJECT_BIN) ||
                    v->via.str.size == 0 || v->via.str.size > MAX_CHUNK) {
                    snprintf(err, errlen, "option chunk must be a string of 1 to %d bytes",
                             MAX_CHUNK);
                    goto out;
                }
                chunk = v->via.str.ptr;
                chunk_len = v->via.str.size;
            } else if (is_str(k, "compressed")) {
                if (is_str(v, "gzip"))
                    gz = true;
                else if (!is_str(v, "text")) {
                    snprintf(err, errlen, "option compressed must be \"gzip\" or \"text\"");
                    goto out;
                }
            }
        }
    }
    if (gz && mode != M_PACKED) {
        snprintf(err, errlen, "option compressed = \"gzip\" needs packed entries (a bin or str)");
        goto out;
    }
    switch (mode) {
    case M_MESSAGE:
        event(s, l, &m, &a[1], &a[2], sink);
        break;
    case M_FORWARD:
        for (uint32_t i = 0; i < a[1].via.array.size; i++)
            entry(s, l, &m, &a[1].via.array.ptr[i], sink);
        break;
    case M_PACKED: {
        const char *p = a[1].via.bin.ptr;
        size_t pn = a[1].via.bin.size;
        if (gz) {
            if (gunzip(s, l, p, pn, &pn, err, errlen) != 0)
                goto out;
            p = s->plain;
        }
        if (packed(s, l, &m, p, pn, sink, err, errlen) != 0)
            goto out;
        break;
    }
    }
    sink->end(sink->arg, chunk, chunk_len);
    ret = 0;
out:
    msgpack_unpacked_destroy(&u);
    return ret;
}

int fwd_feed(struct fwd_stream *s, const struct fwd_limits *l, const char *buf, size_t n,
             const struct fwd_sink *sink, char *err, size_t errlen)
{
    if (s->broken) {
        snprintf(err, errlen, "the stream had an error");
        return -1;
    }
    if (s->len + n > s->cap) {
        size_t nc = s->cap ? s->cap : 65536;
        while (nc < s->len + n)
            nc *= 2;
        char *b = realloc(s->buf, nc);
        if (!b) {
            snprintf(err, errlen, "out of memory");
            s->broken = true;
            return -1;
        }
        s->buf = b;
        s->cap = nc;
    }
    memcpy(s->buf + s->len, buf, n);
    s->len += n;

    size_t start = 0;
    char why[256];
    for (;;) {
        if (start == s->len)
            break;
        const unsigned char *m = (const unsigned char *)s->buf + start;
        size_t avail = s->len - start;
        if (s->scan == 0 && s->pending == 1) {
            unsigned c = m[0];
            if (!((c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd)) {
                snprintf(err, errlen, "at byte %llu: expected a forward message (a msgpack "
                         "array), got byte 0x%02x%s", (unsigned long long)(s->base + start + 1), c,
                         c == '{' || c == '[' ? ": this is the Fluent forward socket; send NDJSON "
                         "lines to the ingest socket" : "");
                s->broken = true;
                return -1;
            }
        }
        int rc = frame(m, avail, l->max_message_bytes, &s->scan, &s->pending, why, sizeof why);
        if (rc == FRAME_ERR) {
            snprintf(err, errlen, "in the message starting at byte %llu: %s",
                     (unsigned long long)(s->base + start + 1), why);
            s->broken = true;
            return -1;
        }
        if (rc == FRAME_MORE)
            break;
        size_t mlen = s->scan;
        if (message(s, l, (const char *)m, mlen, sink, why, sizeof why) != 0) {
            snprintf(err, errlen, "in the message starting at byte %llu: %s",
                     (unsigned long long)(s->base + start + 1), why);
            s->broken = true;
            return -1;
        }
        start += mlen;
        s->scan = 0;
        s->pending = 1;
    }
    if (start) {
        memmove(s->buf, s->buf + start, s->len - start);
        s->len -= start;
        s->base += start;
    }
    if (s->len == 0 && s->cap > (1u << 20)) {   /* give back what a big message took */
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
    }
    return 0;
}

size_t fwd_ack(const char *chunk, size_t chunk_len, char *out, size_t cap)
{
    size_t h = chunk_len < 32 ? 1 : chunk_len < 256 ? 2 : 3;
    size_t need = 5 + h + chunk_len;
    if (chunk_len > 65535 || need > cap)
        return 0;
    unsigned char *o = (unsigned char *)out;
    o[0] = 0x81;
    o[1] = 0xa3; o[2] = 'a'; o[3] = 'c'; o[4] = 'k';
    if (h == 1) {
        o[5] = (unsigned char)(0xa0 | chunk_len);
    } else if (h == 2) {
        o[5] = 0xd9;
        o[6] = (unsigned char)chunk_len;
    } else {
        o[5] = 0xda;
        o[6] = (unsigned char)(chunk_len >> 8);
        o[7] = (unsigned char)chunk_len;
    }
    memcpy(o + 5 + h, chunk, chunk_len);
    return need;
}

int fwd_time_format_parse(const char *s)
{
    if (strcmp(s, "timestamp") == 0)
        return FWD_TIME_TIMESTAMP;
    if (strcmp(s, "rfc3339_ns") == 0)
        return FWD_TIME_RFC3339_NS;
    if (strcmp(s, "unix_ns") == 0)
        return FWD_TIME_UNIX_NS;
    return -1;
}

const char *fwd_time_format_name(enum fwd_time_format f)
{
    switch (f) {
    case FWD_TIME_TIMESTAMP:  return "timestamp";
    case FWD_TIME_RFC3339_NS: return "rfc3339_ns";
    case FWD_TIME_UNIX_NS:    return "unix_ns";
    }
    return "?";
}

static int match(const char *p, const char *t, const char *te)
{
    while (*p) {
        if (p[0] == '*' && p[1] == '*') {
            p += 2;
            if (!*p)
                return 1;                       /* "**" at the end: any rest */
            if (*p != '.')
                return 0;                       /* "**x" is not a pattern we match */
            p++;
            if (match(p, t, te))                /* zero parts */
                return 1;
            for (const char *q = t; q < te; q++)
                if (*q == '.' && match(p, q + 1, te))
                    return 1;
            return 0;
        }
        if (p[0] == '.' && p[1] == '*' && p[2] == '*' && p[3] == 0 && t == te)
            return 1;                           /* "a.**" matches "a" */
        if (*p == '*') {
            p++;
            for (const char *q = t;; q++) {
                if (match(p, q, te))
                    return 1;
                if (q == te || *q == '.')
                    return 0;
            }
        }
        if (t == te || *p != *t)
            return 0;
        p++;
        t++;
    }
    return t == te;
}

int fwd_tag_match(const char *pattern, const char *tag, size_t tag_len)
{
    return match(pattern, tag, tag + tag_len);
}
