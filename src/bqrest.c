/*
 * bqrest.c -- the wire format of BigQuery's legacy streaming API,
 * tabledata.insertAll: the request body, its gzip encoding, the URL paths,
 * and what the answers mean. Nothing here does I/O; the sender feeds in rows
 * and HTTP responses and gets back bytes and decisions, so every decision can
 * be tested byte for byte (tests/unit/test_bqrest.c).
 *
 * Request body
 * ------------
 * Rows were validated as JSON objects at ingest, so their text is copied
 * verbatim into "json": no parse, no re-serialisation. Building a body is on
 * the sender's hot path, so its exact size is computed first and reserved in
 * one go: appending the pieces then never reallocates, whatever the number of
 * rows. Only insertIds and the template suffix are escaped.
 *
 * Responses
 * ---------
 * A 2xx answer may still list rows that were not inserted (insertErrors).
 * Each listed row gets a fate from its errors' reasons:
 *
 *   invalid                                  -> BQ_ROW_INVALID (never resend as is)
 *   stopped, backendError, internalError,
 *   timeout, rateLimitExceeded, quotaExceeded -> BQ_ROW_RETRY  (resend, same insertId)
 *   anything else                            -> BQ_ROW_INVALID
 *
 * "Anything else" covers reasons that normally come only as whole-request
 * errors (accessDenied, notFound, billingNotEnabled) and reasons BigQuery may
 * add in the future. Retrying such a row could loop forever, and dropping it
 * would lose data silently; dead-lettering it keeps the row together with
 * BigQuery's reason and message, so an operator can replay it once the cause
 * is understood. When a row carries several errors, the most final one wins:
 * any INVALID error makes the row INVALID, otherwise it is RETRY.
 *
 * Error answers are classified by HTTP status first and by Google's error
 * body (error.errors[0].reason, error.status, error.message) where the status
 * alone is ambiguous (400 and 403). See bqrest_classify().
 *
 * Facts: ../shared/reference/bigquery-wire.md section 3.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <isa-l/igzip_lib.h>
#include <libdeflate.h>

#include "bqrest.h"

/* ------------------------------------------------------------------------ */
/* Request body                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Length of s once JSON-escaped by buf_json_escape(): '"' '\\' '\n' '\r' '\t'
 * take two bytes, other control bytes six (\u00XX), everything else one.
 * If util.c ever escapes more, the body is still correct: the size computed
 * here is only what is reserved up front, and buf_json_escape() grows the
 * buffer itself when needed.
 */
static const unsigned char json_escape_extra[256] = {
    5, 5, 5, 5, 5, 5, 5, 5, 5, 1, 1, 5, 5, 1, 5, 5,     /* \t \n \r: 2 bytes */
    5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
    ['"'] = 1, ['\\'] = 1,
};

static size_t json_escaped_len(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t out = n;
    for (size_t i = 0; i < n; i++)    /* branch-free: ids are scanned twice per row */
        out += json_escape_extra[p[i]];
    return out;
}

/* Appends s as a JSON string body; ids and suffixes are nearly always clean,
 * and a clean string is one memcpy instead of a call per byte. */
static int append_escaped(struct buf *b, const char *s, size_t n, size_t escaped_len)
{
    if (escaped_len == n)
        return buf_append(b, s, n);
    return buf_json_escape(b, s, n);
}

/* *acc += v, failing on size_t overflow. */
static int add_size(size_t *acc, size_t v)
{
    if (v > SIZE_MAX - *acc)
        return -1;
    *acc += v;
    return 0;
}

#define LIT(s) (s), (sizeof(s) - 1)

int bqrest_insertall_body(struct buf *out, const struct bq_row *rows, size_t n,
                          const struct bq_insert_opts *o)
{
    static const struct bq_insert_opts defaults = { false, false, NULL };
    if (!o)
        o = &defaults;
    const size_t start = out->len;
    const size_t suffix_len = o->template_suffix ? strlen(o->template_suffix) : 0;
    const size_t suffix_esc = o->template_suffix
        ? json_escaped_len(o->template_suffix, suffix_len) : 0;

    /* Pass 1: the size, exact to a few bytes (with util.c's escape set, see
     * above). */
    size_t total = sizeof("{\"skipInvalidRows\":false,\"ignoreUnknownValues\":false,"
                          "\"rows\":[]}");     /* counts the final NUL */
    if (o->template_suffix)
        total += sizeof(",\"templateSuffix\":\"\"") - 1 + suffix_esc;
    bool ids_clean = true;   /* no insertId needs escaping: pass 2 copies them as they are */
    for (size_t i = 0; i < n; i++) {
        size_t row = rows[i].len;
        if (rows[i].insert_id) {
            const char *id = rows[i].insert_id;
            size_t il = strlen(id), el = json_escaped_len(id, il);
            ids_clean &= el == il;
            row += BQREST_ROW_OVERHEAD(el);
        } else {
            row += sizeof("{\"json\":},") - 1;
        }
        if (add_size(&total, row)) {
            errno = ENOMEM;
            return -1;
        }
    }
    if (buf_reserve(out, total)) {
        errno = ENOMEM;
        return -1;
    }

    /* Pass 2: append. Every append below fits in what was reserved. */
    int rc = 0;
    rc |= buf_append(out, LIT("{\"skipInvalidRows\":"));
    rc |= o->skip_invalid_rows ? buf_append(out, LIT("true")) : buf_append(out, LIT("false"));
    rc |= buf_append(out, LIT(",\"ignoreUnknownValues\":"));
    rc |= o->ignore_unknown_values ? buf_append(out, LIT("true"))
                                   : buf_append(out, LIT("false"));
    if (o->template_suffix) {
        rc |= buf_append(out, LIT(",\"templateSuffix\":\""));
        rc |= append_escaped(out, o->template_suffix, suffix_len, suffix_esc);
        rc |= buf_append(out, LIT("\""));
    }
    rc |= buf_append(out, LIT(",\"rows\":["));
    static const char id_open[] = ",{\"insertId\":\"", json_open[] = ",{\"json\":";
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *id = rows[i].insert_id;
        const size_t skip = i ? 0 : 1;    /* no comma before the first row */
        if (id) {
            size_t id_len = strlen(id);
            rc |= buf_append(out, id_open + skip, sizeof id_open - 1 - skip);
            rc |= ids_clean ? buf_append(out, id, id_len)
                            : append_escaped(out, id, id_len, json_escaped_len(id, id_len));
            rc |= buf_append(out, LIT("\",\"json\":"));
        } else {
            rc |= buf_append(out, json_open + skip, sizeof json_open - 1 - skip);
        }
        rc |= buf_append(out, rows[i].json, rows[i].len);
        rc |= buf_append(out, LIT("}"));
    }
    rc |= buf_append(out, LIT("]}"));
    if (rc) {
        /* Only reachable if util.c escapes more than json_escaped_len() knows
         * and memory then ran out: leave the buffer as it was. */
        out->len = start;
        out->data[start] = 0;
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* gzip                                                                     */
/* ------------------------------------------------------------------------ */

/* Level 1, the sender's, is Intel ISA-L's (igzip, whole-buffer): on an
 * insertAll body it takes about a quarter of libdeflate's level 1 time for
 * the same size (docs/benchmarks.md, "gzip"), and libdeflate's level 1 took
 * a fifth of zlib's. Levels 2..9 are libdeflate's. Any gzip reader inflates
 * the output; the tests check it with zlib. A compressor holds its hash
 * tables, so the sender keeps one for its thread instead of allocating one
 * per request. */
struct bqrest_gz {
    struct libdeflate_compressor *c;   /* levels 2..9, and level 1's fallback */
    unsigned char *isal_buf;           /* level 1: ISA-L's level buffer */
    size_t isal_len;
};

struct bqrest_gz *bqrest_gz_new(int level)
{
    if (level < 0 || level > 9) {
        errno = EINVAL;
        return NULL;
    }
    struct bqrest_gz *z = malloc(sizeof *z);
    if (!z) {
        errno = ENOMEM;
        return NULL;
    }
    z->c = libdeflate_alloc_compressor(level ? level : 6);   /* 0: zlib's default, 6 */
    z->isal_len = level == 1 ? ISAL_DEF_LVL1_DEFAULT : 0;
    z->isal_buf = z->isal_len ? calloc(1, z->isal_len) : NULL;
    if (!z->c || (z->isal_len && !z->isal_buf)) {
        bqrest_gz_free(z);
        errno = ENOMEM;
        return NULL;
    }
    return z;
}

void bqrest_gz_free(struct bqrest_gz *z)
{
    if (!z)
        return;
    libdeflate_free_compressor(z->c);
    free(z->isal_buf);
    free(z);
}

/* ISA-L, level 1, into out (room for cap bytes): the size, or 0 if it did
 * not fit (then libdeflate, whose bound is a guarantee, does it). */
static size_t isal_gzip(struct bqrest_gz *z, const void *in, size_t len, unsigned char *out,
                        size_t cap)
{
    if (len > UINT32_MAX || cap > UINT32_MAX)
        return 0;
    struct isal_zstream st;
    memset(&st, 0, sizeof st);   /* _init leaves fields unset that the call reads */
    isal_deflate_stateless_init(&st);
    st.level = 1;
    st.level_buf = z->isal_buf;
    st.level_buf_size = (uint32_t)z->isal_len;
    st.gzip_flag = IGZIP_GZIP;
    st.next_in = (uint8_t *)in;
    st.avail_in = (uint32_t)len;
    st.next_out = out;
    st.avail_out = (uint32_t)cap;
    st.end_of_stream = 1;
    st.flush = NO_FLUSH;
    return isal_deflate_stateless(&st) == COMP_OK ? st.total_out : 0;
}

int bqrest_gz_compress(struct bqrest_gz *z, const void *in, size_t len, struct buf *out)
{
    buf_reset(out);
    size_t bound = libdeflate_gzip_compress_bound(z->c, len);
    if (buf_reserve(out, bound + 1)) {
        errno = ENOMEM;
        return -1;
    }
    size_t n = z->isal_buf ? isal_gzip(z, in, len, (unsigned char *)out->data, bound) : 0;
    /* libdeflate's bound is a guarantee: 0 (no room) cannot happen, but is
     * not taken for an empty result either */
    if (n == 0)
        n = libdeflate_gzip_compress(z->c, in, len, out->data, bound);
    if (n == 0) {
        errno = EOVERFLOW;
        return -1;
    }
    out->len = n;
    out->data[n] = 0;
    return 0;
}

int bqrest_gzip(const void *in, size_t len, struct buf *out, int level)
{
    struct bqrest_gz *z = bqrest_gz_new(level);
    if (!z) {
        buf_reset(out);
        return -1;
    }
    int rc = bqrest_gz_compress(z, in, len, out);
    bqrest_gz_free(z);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* URL paths                                                                */
/* ------------------------------------------------------------------------ */

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '~' || c == '-';
}

/* Appends one percent-encoded path segment. */
static int append_segment(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (is_unreserved(*p)) {
            if (buf_append(b, p, 1))
                return -1;
        } else {
            char esc[3] = { '%', hex[*p >> 4], hex[*p & 15] };
            if (buf_append(b, esc, 3))
                return -1;
        }
    }
    return 0;
}

/* Appends /bigquery/v2/projects/P/datasets/D/tables/T[tail]; on failure the
 * buffer is left as it was. */
static int table_path(struct buf *out, const char *project, const char *dataset,
                      const char *table, const char *tail)
{
    if (!project || !*project || !dataset || !*dataset || !table || !*table) {
        errno = EINVAL;
        return -1;
    }
    const size_t start = out->len;
    if (buf_puts(out, "/bigquery/v2/projects/") || append_segment(out, project) ||
        buf_puts(out, "/datasets/") || append_segment(out, dataset) ||
        buf_puts(out, "/tables/") || append_segment(out, table) || buf_puts(out, tail)) {
        if (out->data) {
            out->len = start;
            out->data[start] = 0;
        }
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

int bqrest_insertall_path(struct buf *out, const char *project, const char *dataset,
                          const char *table)
{
    return table_path(out, project, dataset, table, "/insertAll");
}

int bqrest_table_path(struct buf *out, const char *project, const char *dataset,
                      const char *table)
{
    return table_path(out, project, dataset, table, "");
}

int bqrest_testiam_path(struct buf *out, const char *project, const char *dataset,
                        const char *table)
{
    return table_path(out, project, dataset, table, ":testIamPermissions");
}

int bqrest_tables_path(struct buf *out, const char *project, const char *dataset)
{
    const size_t start = out->len;
    if (bqrest_dataset_path(out, project, dataset) != 0)
        return -1;
    if (buf_puts(out, "/tables") != 0) {
        out->len = start;
        if (out->data)
            out->data[start] = 0;
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

int bqrest_table_insert_body(const struct bq_table_spec *t, struct buf *out, char *err,
                             size_t errlen)
{
    json_t *schema = json_loadb(t->schema_json ? t->schema_json : "", t->schema_len, 0, NULL);
    json_t *fields = json_is_array(schema) ? schema : json_object_get(schema, "fields");
    if (!fields && schema)
        fields = json_object_get(json_object_get(schema, "schema"), "fields");
    if (!json_is_array(fields) || json_array_size(fields) == 0) {
        util_set_err(err, errlen, "the schema holds no fields");
        json_decref(schema);
        return -1;
    }
    char base[1100];
    snprintf(base, sizeof base, "%.*s", (int)strcspn(t->table, "$"), t->table);
    json_t *body = json_object(), *ref = json_object(), *sch = json_object();
    json_object_set_new(ref, "projectId", json_string(t->project));
    json_object_set_new(ref, "datasetId", json_string(t->dataset));
    json_object_set_new(ref, "tableId", json_string(base));
    json_object_set_new(body, "tableReference", ref);
    json_object_set(sch, "fields", fields);
    json_object_set_new(body, "schema", sch);
    if (t->time_partitioning) {
        json_t *tp = json_object();
        json_object_set_new(tp, "type", json_string(t->time_partitioning));
        if (t->partition_field)
            json_object_set_new(tp, "field", json_string(t->partition_field));
        if (t->partition_expiration_ms) {
            char ms[32];
            snprintf(ms, sizeof ms, "%llu", (unsigned long long)t->partition_expiration_ms);
            json_object_set_new(tp, "expirationMs", json_string(ms));
        }
        json_object_set_new(body, "timePartitioning", tp);
    }
    if (t->clustering) {
        json_t *cl = json_object(), *cf = json_array();
        char *copy = strdup(t->clustering), *save = NULL;
        for (char *c = copy ? strtok_r(copy, ", ", &save) : NULL; c; c = strtok_r(NULL, ", ", &save))
            json_array_append_new(cf, json_string(c));
        free(copy);
        json_object_set_new(cl, "fields", cf);
        json_object_set_new(body, "clustering", cl);
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    json_decref(schema);
    int rc = text ? buf_puts(out, text) : -1;
    free(text);
    if (rc != 0)
        util_set_err(err, errlen, "out of memory");
    return rc;
}

int bqrest_dataset_path(struct buf *out, const char *project, const char *dataset)
{
    if (!project || !*project || !dataset || !*dataset) {
        errno = EINVAL;
        return -1;
    }
    const size_t start = out->len;
    if (buf_puts(out, "/bigquery/v2/projects/") || append_segment(out, project) ||
        buf_puts(out, "/datasets/") || append_segment(out, dataset)) {
        if (out->data) {
            out->len = start;
            out->data[start] = 0;
        }
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Helpers for responses                                                    */
/* ------------------------------------------------------------------------ */

/* Copies s into dst[size], truncated if needed, always NUL-terminated. A cut
 * never splits a UTF-8 sequence, so what is logged or dead-lettered stays
 * valid UTF-8 when BigQuery's text was. */
static void copy_trunc(char *dst, size_t size, const char *s)
{
    if (size == 0)
        return;
    size_t n = s ? strlen(s) : 0;
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, s, n);
    dst[n] = 0;
}

/* The string value of obj[key], or NULL if absent or not a string. */
static const char *str_member(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}


/* ------------------------------------------------------------------------ */
/* insertAll response                                                       */
/* ------------------------------------------------------------------------ */

/* The fate of a row from one error's reason; see the comment at the top of
 * this file for why unknown reasons are INVALID. */
static enum bq_row_fate reason_fate(const char *reason)
{
    static const char *const retry[] = {
        "stopped", "backendError", "internalError", "timeout",
        "rateLimitExceeded", "quotaExceeded",
    };
    if (reason)
        for (size_t i = 0; i < sizeof retry / sizeof retry[0]; i++)
            if (strcmp(reason, retry[i]) == 0)
                return BQ_ROW_RETRY;
    return BQ_ROW_INVALID;
}

/* Rank of finality: INSERTED < RETRY < INVALID. */
static int fate_rank(enum bq_row_fate f)
{
    return f == BQ_ROW_INVALID ? 2 : f == BQ_ROW_RETRY ? 1 : 0;
}

static void set_result(struct bq_row_result *r, enum bq_row_fate fate, const char *reason,
                       const char *location, const char *message)
{
    r->fate = fate;
    copy_trunc(r->reason, sizeof r->reason, reason);
    copy_trunc(r->location, sizeof r->location, location);
    copy_trunc(r->message, sizeof r->message, message);
}

/* Checks one insertErrors entry and returns its row index, or -1. */
static long long entry_index(const json_t *entry, size_t i, size_t n, char *err,
                             size_t errlen)
{
    if (!json_is_object(entry)) {
        util_set_err(err, errlen, "insertErrors[%zu] is not an object", i);
        return -1;
    }
    const json_t *jidx = json_object_get(entry, "index");
    if (!json_is_integer(jidx)) {
        util_set_err(err, errlen, "insertErrors[%zu].index is %s", i,
                jidx ? "not an integer" : "missing");
        return -1;
    }
    json_int_t idx = json_integer_value(jidx);
    if (idx < 0 || (unsigned long long)idx >= n) {
        util_set_err(err, errlen, "insertErrors[%zu].index %lld out of range for %zu rows", i,
                (long long)idx, n);
        return -1;
    }
    const json_t *errors = json_object_get(entry, "errors");
    if (errors && !json_is_array(errors) && !json_is_null(errors)) {
        util_set_err(err, errlen, "insertErrors[%zu].errors is not an array", i);
        return -1;
    }
    for (size_t k = 0; k < json_array_size(errors); k++) {
        if (!json_is_object(json_array_get(errors, k))) {
            util_set_err(err, errlen, "insertErrors[%zu].errors[%zu] is not an object", i, k);
            return -1;
        }
    }
    return (long long)idx;
}

/* On failure every row is marked RETRY: the caller must resend the whole
 * request anyway, and a caller that forgot to check the return value then
 * resends (insertIds dedupe) instead of counting rows as delivered. */
static void fail_all(struct bq_row_result *results, size_t n)
{
    for (size_t i = 0; i < n; i++)
        set_result(&results[i], BQ_ROW_RETRY, NULL, NULL, "unreadable insertAll response");
}

int bqrest_parse_insertall(const char *body, size_t len, size_t n,
                           struct bq_row_result *results, char *err, size_t errlen)
{
    util_set_err(err, errlen, "%s", "");
    for (size_t i = 0; i < n; i++)
        set_result(&results[i], BQ_ROW_INSERTED, NULL, NULL, NULL);

    int rc = -1;
    json_t *root = NULL;
    json_error_t jerr;
    if (!body || len == 0) {
        util_set_err(err, errlen, "empty insertAll response");
        goto out;
    }
    if (!(root = json_loadb(body, len, 0, &jerr))) {
        util_set_err(err, errlen, "insertAll response is not JSON: %s (at byte %d)", jerr.text,
                jerr.position);
        goto out;
    }
    if (!json_is_object(root)) {
        util_set_err(err, errlen, "insertAll response is not a JSON object");
        goto out;
    }
    /* A 2xx never carries this; if one does, counting its rows as inserted
     * would lose them. */
    if (json_object_get(root, "error")) {
        util_set_err(err, errlen, "insertAll response carries an \"error\" member");
        goto out;
    }
    const json_t *ierrs = json_object_get(root, "insertErrors");
    if (!ierrs || json_is_null(ierrs)) {
        rc = 0;
        goto out;
    }
    if (!json_is_array(ierrs)) {
        util_set_err(err, errlen, "insertErrors is not an array");
        goto out;
    }

    /* Validate every entry before applying any, so that a bad entry late in
     * the list cannot leave earlier rows half-classified. */
    size_t ne = json_array_size(ierrs);
    for (size_t i = 0; i < ne; i++)
        if (entry_index(json_array_get(ierrs, i), i, n, err, errlen) < 0)
            goto out;

    /* Apply the errors. An index listed more than once accumulates: the most
     * final error over all its entries decides, and its reason, location and
     * message are the ones kept (the first such error). */
    for (size_t i = 0; i < ne; i++) {
        const json_t *entry = json_array_get(ierrs, i);
        struct bq_row_result *r =
            &results[json_integer_value(json_object_get(entry, "index"))];
        const json_t *errors = json_object_get(entry, "errors");
        for (size_t k = 0; k < json_array_size(errors); k++) {
            const json_t *e = json_array_get(errors, k);
            const char *reason = str_member(e, "reason");
            enum bq_row_fate f = reason_fate(reason);
            if (fate_rank(f) > fate_rank(r->fate))
                set_result(r, f, reason, str_member(e, "location"), str_member(e, "message"));
        }
    }
    /* A row listed with no error at all was not inserted either; with nothing
     * to go on it is treated like an unknown reason. */
    for (size_t i = 0; i < ne; i++) {
        const json_t *entry = json_array_get(ierrs, i);
        struct bq_row_result *r =
            &results[json_integer_value(json_object_get(entry, "index"))];
        if (r->fate == BQ_ROW_INSERTED)
            set_result(r, BQ_ROW_INVALID, NULL, NULL,
                       "listed in insertErrors without any error");
    }
    rc = 0;
out:
    json_decref(root);
    if (rc)
        fail_all(results, n);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Classification of whole responses                                        */
/* ------------------------------------------------------------------------ */

static unsigned char ascii_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* ASCII case-insensitive search for a lower-case needle in hay[0..len) (hay
 * need not be NUL-terminated). */
static int contains_ci(const char *hay, size_t len, const char *needle)
{
    const unsigned char *h = (const unsigned char *)hay, *nd = (const unsigned char *)needle;
    size_t nl = strlen(needle);
    if (!hay || nl == 0 || nl > len)
        return 0;
    for (size_t i = 0; i + nl <= len; i++) {
        if (ascii_lower(h[i]) != nd[0])
            continue;
        size_t k = 1;
        while (k < nl && ascii_lower(h[i + k]) == nd[k])
            k++;
        if (k == nl)
            return 1;
    }
    return 0;
}

/* Does this text say the request was too big? Google's front end answers an
 * oversized insertAll with a 400 rather than a 413. Phrases in lower case. */
static int says_too_large(const char *s, size_t len)
{
    static const char *const phrases[] = {
        "request payload size exceeds the limit",
        "too many rows",
        "request entity too large",
        "payload too large",
    };
    for (size_t i = 0; i < sizeof phrases / sizeof phrases[0]; i++)
        if (contains_ci(s, len, phrases[i]))
            return 1;
    return 0;
}

/* The start of a body that is not Google's JSON (an HTML page from a proxy,
 * plain text...), made safe to log: whitespace runs become one space, other
 * control and non-ASCII bytes '?', at most ~200 bytes. */
static void body_snippet(char *dst, size_t size, const char *body, size_t len)
{
    size_t cap = size - 1 < 200 ? size - 1 : 200, o = 0;
    int space = 1;     /* drops leading whitespace */
    for (size_t i = 0; i < len && o < cap; i++) {
        unsigned char c = (unsigned char)body[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            if (!space)
                dst[o++] = ' ';
            space = 1;
            continue;
        }
        dst[o++] = (c > 0x20 && c < 0x7f) ? (char)c : '?';
        space = 0;
    }
    while (o > 0 && dst[o - 1] == ' ')
        o--;
    dst[o] = 0;
}

/* Fills e from a Google error body; returns whether the error object's text
 * (message or any errors[].message) says the request was too large. */
static int parse_error_body(const json_t *root, struct bq_error *e)
{
    const json_t *error = json_object_get(root, "error");
    if (json_is_string(error)) {
        /* OAuth-style {"error":"invalid_token","error_description":"..."} */
        const char *desc = str_member(root, "error_description");
        copy_trunc(e->reason, sizeof e->reason, json_string_value(error));
        copy_trunc(e->message, sizeof e->message, desc ? desc : json_string_value(error));
        return desc && says_too_large(desc, strlen(desc));
    }
    if (!json_is_object(error))
        return 0;
    const char *msg = str_member(error, "message");
    const json_t *errors = json_object_get(error, "errors");
    copy_trunc(e->message, sizeof e->message, msg);
    copy_trunc(e->status, sizeof e->status, str_member(error, "status"));
    copy_trunc(e->reason, sizeof e->reason, str_member(json_array_get(errors, 0), "reason"));

    int large = msg && says_too_large(msg, strlen(msg));
    for (size_t i = 0; !large && i < json_array_size(errors); i++) {
        const char *m = str_member(json_array_get(errors, i), "message");
        large = m && says_too_large(m, strlen(m));
    }
    return large;
}

/*
 * HTTP status  body                                   action
 * 2xx                                                 BQ_OK
 * 0, <0, 1xx, 3xx, >=600 (no usable answer)           BQ_RETRY
 * 401                                                 BQ_UNAUTHORIZED
 * 400, 403     reason rateLimitExceeded               BQ_RATE_LIMITED
 * 400, 403     reason quotaExceeded                   BQ_QUOTA
 * 400, 403     no reason, status RESOURCE_EXHAUSTED   BQ_RATE_LIMITED
 * 400          message says too large                 BQ_TOO_LARGE  (checked first)
 * 400          anything else                          BQ_BAD_REQUEST
 * 403          anything else                          BQ_PERMANENT
 * 404                                                 BQ_NOT_FOUND
 * 408, 429, 5xx                                       BQ_RETRY
 * 413                                                 BQ_TOO_LARGE
 * other 4xx                                           BQ_PERMANENT
 *
 * The throttling reasons are honoured on a 400 as well as on a 403: a 400
 * leads to bisecting, which would end in dead-lettering good rows one by one
 * if the real cause was throttling.
 */
enum bq_action bqrest_classify(long http_status, const char *body, size_t len,
                               struct bq_error *e)
{
    struct bq_error local;
    if (!e)
        e = &local;
    memset(e, 0, sizeof *e);
    e->http_status = http_status;
    if (!body)
        len = 0;

    int large = 0;
    json_t *root = len ? json_loadb(body, len, 0, NULL) : NULL;
    if (json_is_object(root))
        large = parse_error_body(root, e);
    json_decref(root);
    if (e->message[0] == 0 && len)
        body_snippet(e->message, sizeof e->message, body, len);
    if (!root)   /* not JSON: the phrase may be anywhere in an HTML page */
        large = says_too_large(body, len < 65536 ? len : 65536);

    long s = http_status;
    if (s >= 200 && s < 300)
        return BQ_OK;
    if (s == 401)
        return BQ_UNAUTHORIZED;
    if (s == 400 || s == 403) {
        if (s == 400 && large)
            return BQ_TOO_LARGE;
        if (strcmp(e->reason, "rateLimitExceeded") == 0)
            return BQ_RATE_LIMITED;
        if (strcmp(e->reason, "quotaExceeded") == 0)
            return BQ_QUOTA;
        if (e->reason[0] == 0 && strcmp(e->status, "RESOURCE_EXHAUSTED") == 0)
            return BQ_RATE_LIMITED;
        return s == 400 ? BQ_BAD_REQUEST : BQ_PERMANENT;
    }
    if (s == 404)
        return BQ_NOT_FOUND;
    if (s == 413)
        return BQ_TOO_LARGE;
    if (s == 408 || s == 429 || (s >= 500 && s < 600))
        return BQ_RETRY;
    if (s > 400 && s < 500)
        return BQ_PERMANENT;
    return BQ_RETRY;
}

const char *bqrest_action_name(enum bq_action a)
{
    switch (a) {
    case BQ_OK:           return "ok";
    case BQ_RETRY:        return "retry";
    case BQ_RATE_LIMITED: return "rate-limited";
    case BQ_QUOTA:        return "quota";
    case BQ_UNAUTHORIZED: return "unauthorized";
    case BQ_NOT_FOUND:    return "not-found";
    case BQ_TOO_LARGE:    return "too-large";
    case BQ_BAD_REQUEST:  return "bad-request";
    case BQ_PERMANENT:    return "permanent";
    }
    return "unknown";
}
