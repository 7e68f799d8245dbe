/*
 * fs_grpc.c -- the fast sink's Storage Write API: the BigQueryWrite service
 * on the gRPC C core server API, over TLS with the sink's certificate.
 *
 * Threads (--grpc-threads, default 1) each own a completion queue registered
 * with the server and keep a few grpc_server_request_call()s pending on it;
 * every operation of a call completes on its own thread's queue, so a call's
 * state is touched by one thread only. The stream table (explicit streams and
 * their row counts) is shared under one mutex, taken once per append.
 *
 * Every call needs "authorization: Bearer <a token the sink minted>" with a
 * BigQuery scope: UNAUTHENTICATED / PERMISSION_DENIED at call start, as the
 * service answers.
 *
 * AppendRows (bidirectional) follows BigQuery and tools/bqemu/emu_grpc.py:
 *   ends the call with a status (grpc-status-details-bin carries a
 *   google.rpc.Status): an undecodable request or one over 10 MB
 *   (INVALID_ARGUMENT), a first request without write_stream or without a
 *   writer schema (INVALID_ARGUMENT), an unknown table or stream (NOT_FOUND
 *   with StorageError TABLE_NOT_FOUND / STREAM_NOT_FOUND);
 *   answers in-stream with AppendRowsResponse.error (the call goes on):
 *   offsets on an explicit stream (ALREADY_EXISTS / OUT_OF_RANGE with
 *   StorageError OFFSET_ALREADY_EXISTS / OFFSET_OUT_OF_RANGE and "expected
 *   offset E, received O"), an offset on the default stream, a finalized
 *   stream, no rows, arrow rows, a writer schema with a column the table
 *   lacks (SCHEMA_MISMATCH_EXTRA_FIELDS), rows that are not well-formed
 *   protobuf messages of the writer schema (INVALID_ARGUMENT with row_errors:
 *   wire format, field wire types, nested messages, UTF-8 of strings);
 *   otherwise append_result with the offset of the first row (explicit
 *   streams) or without one (_default). Rows are counted, not kept.
 * Unary: CreateWriteStream (COMMITTED, PENDING, BUFFERED), GetWriteStream,
 * FinalizeWriteStream, BatchCommitWriteStreams (PENDING rows count as
 * delivered once committed), FlushRows (BUFFERED only).
 */
#include "fastsink.h"

#include "bigquery_storage_v1.pb-c.h"
#include "bqproto.pb-c.h"
#include "google_rpc_status.pb-c.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

typedef Google__Cloud__Bigquery__Storage__V1__AppendRowsRequest AppendReq;
typedef Google__Cloud__Bigquery__Storage__V1__AppendRowsResponse AppendResp;
typedef Google__Cloud__Bigquery__Storage__V1__AppendRowsResponse__AppendResult AppendResult;
typedef Google__Cloud__Bigquery__Storage__V1__WriteStream WriteStream;
typedef Google__Cloud__Bigquery__Storage__V1__StorageError StorageError;
typedef Google__Cloud__Bigquery__Storage__V1__RowError RowError;
typedef Google__Cloud__Bigquery__Storage__V1__TableSchema TableSchema;
typedef Google__Cloud__Bigquery__Storage__V1__TableFieldSchema TableFieldSchema;
typedef Google__Rpc__Status RpcStatus;
typedef Bqproto__DescriptorProto DescProto;

#define SVC "/google.cloud.bigquery.storage.v1.BigQueryWrite/"
#define MAX_APPEND_BYTES 10485760
#define PENDING_REQUESTS 8
#define STORAGE_ERROR_URL "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError"
#define ROW_ERRORS_MESSAGE "Errors found while processing rows. Please refer to the row_errors " \
                           "field for details. The list may not be complete because of the size " \
                           "limitations."

/* StorageError codes */
enum { SE_TABLE_NOT_FOUND = 1, SE_STREAM_ALREADY_COMMITTED, SE_STREAM_NOT_FOUND,
       SE_INVALID_STREAM_TYPE, SE_INVALID_STREAM_STATE, SE_STREAM_FINALIZED,
       SE_SCHEMA_MISMATCH_EXTRA_FIELDS, SE_OFFSET_ALREADY_EXISTS, SE_OFFSET_OUT_OF_RANGE };
enum { ST_COMMITTED = 1, ST_PENDING = 2, ST_BUFFERED = 3 };

/* ---- the stream table ---- */

struct gstream {
    struct gstream *next;
    char *name;
    struct fs_table *t;
    int type;
    int64_t rows, flushed;
    bool finalized, committed;
    double created, commit_time;   /* epoch seconds */
};

static pthread_mutex_t SL = PTHREAD_MUTEX_INITIALIZER;
static struct gstream *STREAMS;

static struct gstream *stream_find(const char *name)
{
    pthread_mutex_lock(&SL);
    struct gstream *s = STREAMS;
    while (s && strcmp(s->name, name) != 0)
        s = s->next;
    pthread_mutex_unlock(&SL);
    return s;
}

static double now_epoch(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* "projects/P/datasets/D/tables/T" -> the table (NULL if unknown); *ok false
 * if the text is not a table path at all. */
static struct fs_table *table_of_path(const char *path, size_t n, bool *ok)
{
    const char *seg[6];
    size_t sl[6], k = 0;
    const char *p = path, *end = path + n;
    *ok = false;
    while (k < 6 && p <= end) {
        const char *e = memchr(p, '/', (size_t)(end - p));
        if (!e)
            e = end;
        seg[k] = p;
        sl[k] = (size_t)(e - p);
        k++;
        p = e + 1;
        if (e == end)
            break;
    }
    if (k != 6 || p <= end || sl[0] != 8 || memcmp(seg[0], "projects", 8) != 0 || sl[2] != 8 ||
        memcmp(seg[2], "datasets", 8) != 0 || sl[4] != 6 || memcmp(seg[4], "tables", 6) != 0 ||
        !sl[1] || !sl[3] || !sl[5])
        return NULL;
    *ok = true;
    return fs_find_table(seg[1], sl[1], seg[3], sl[3], seg[5], sl[5]);
}

/* A stream name: P/D/T path plus "/streams/ID" or "/_default". */
struct sname {
    bool ok, is_default;
    size_t table_len;          /* of the projects/.../tables/T prefix */
};

static struct sname parse_stream(const char *name)
{
    struct sname r = { 0 };
    if (!name)
        return r;
    size_t n = strlen(name);
    const char *s = strstr(name, "/streams/");
    if (s) {
        const char *id = s + 9;
        if (!*id || strchr(id, '/'))
            return r;
        r.table_len = (size_t)(s - name);
        r.is_default = strcmp(id, "_default") == 0;
    } else if (n > 9 && strcmp(name + n - 9, "/_default") == 0) {
        r.table_len = n - 9;
        r.is_default = true;
    } else {
        return r;
    }
    bool ok;
    table_of_path(name, r.table_len, &ok);
    r.ok = ok;
    return r;
}

/* ---- an arena for protobuf-c (one per thread; reset after each message) ---- */

struct arena {
    char *buf;
    size_t cap, used, spill;
    void **extra;
    size_t n_extra, cap_extra;
};

static void *a_alloc(void *d, size_t n)
{
    struct arena *a = d;
    n = (n + 15) & ~(size_t)15;
    if (a->used + n <= a->cap) {
        void *p = a->buf + a->used;
        a->used += n;
        return p;
    }
    if (a->n_extra == a->cap_extra) {
        size_t nc = a->cap_extra ? a->cap_extra * 2 : 64;
        void **ne = realloc(a->extra, nc * sizeof *ne);
        if (!ne)
            return NULL;
        a->extra = ne;
        a->cap_extra = nc;
    }
    void *p = malloc(n);
    if (p) {
        a->extra[a->n_extra++] = p;
        a->spill += n;
    }
    return p;
}

static void a_free(void *d, void *p)
{
    (void)d;
    (void)p;   /* freed all at once by a_reset */
}

static void a_reset(struct arena *a)
{
    for (size_t i = 0; i < a->n_extra; i++)
        free(a->extra[i]);
    a->n_extra = 0;
    if (a->spill) {   /* grow so that the next message of this size fits */
        size_t nc = (a->cap + a->spill) * 2;
        char *nb = malloc(nc);
        if (nb) {
            free(a->buf);
            a->buf = nb;
            a->cap = nc;
        }
        a->spill = 0;
    }
    a->used = 0;
}

/* ---- the writer schema, compiled for the row check ---- */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

struct cfield {
    uint32_t number;
    uint8_t wt;                /* the field's wire type when not packed */
    bool repeated, is_string, is_message;
    int sub;                   /* index of its message type, or -1 */
};

struct cmsg {
    const DescProto *d;
    struct cfield *f;
    size_t n;
    int16_t *by_num;           /* number -> index into f, -1; numbers <= max_num */
    uint32_t max_num;
};

struct cschema {
    struct cmsg *m;            /* m[0]: the root */
    size_t n, cap;
    char err[300];
};

static void cschema_free(struct cschema *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->m[i].f);
        free(s->m[i].by_num);
    }
    free(s->m);
    memset(s, 0, sizeof *s);
}

static int add_msgs(struct cschema *s, const DescProto *d)
{
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 8;
        struct cmsg *nm = realloc(s->m, nc * sizeof *nm);
        if (!nm)
            return -1;
        s->m = nm;
        s->cap = nc;
    }
    memset(&s->m[s->n], 0, sizeof s->m[s->n]);
    s->m[s->n++].d = d;
    for (size_t i = 0; i < d->n_nested_type; i++)
        if (add_msgs(s, d->nested_type[i]))
            return -1;
    return 0;
}

static int find_msg(const struct cschema *s, const char *type_name)
{
    if (!type_name)
        return -1;
    const char *last = strrchr(type_name, '.');
    last = last ? last + 1 : type_name;
    for (size_t i = 1; i < s->n; i++)
        if (s->m[i].d->name && strcmp(s->m[i].d->name, last) == 0)
            return (int)i;
    return -1;
}

static int wire_type_of(int t)
{
    switch (t) {
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_DOUBLE:
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED64:
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED64:
        return WT_I64;
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FLOAT:
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED32:
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED32:
        return WT_I32;
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING:
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_BYTES:
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE:
        return WT_LEN;
    case BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_GROUP:
        return -1;
    default:
        return WT_VARINT;
    }
}

/* Compiles d (a deep copy is not needed: d lives in the call's kept copy). */
static int cschema_build(struct cschema *s, const DescProto *root)
{
    memset(s, 0, sizeof *s);
    if (add_msgs(s, root)) {
        snprintf(s->err, sizeof s->err, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < s->n; i++) {
        struct cmsg *m = &s->m[i];
        const DescProto *d = m->d;
        m->n = d->n_field;
        m->f = calloc(d->n_field ? d->n_field : 1, sizeof *m->f);
        if (!m->f)
            return -1;
        for (size_t k = 0; k < d->n_field; k++) {
            const Bqproto__FieldDescriptorProto *fd = d->field[k];
            struct cfield *f = &m->f[k];
            if (!fd->has_number || fd->number <= 0 || !fd->has_type) {
                snprintf(s->err, sizeof s->err, "field '%s' of the writer schema has no number or type",
                         fd->name ? fd->name : "?");
                return -1;
            }
            int wt = wire_type_of(fd->type);
            if (wt < 0) {
                snprintf(s->err, sizeof s->err, "field '%s': groups are not supported",
                         fd->name ? fd->name : "?");
                return -1;
            }
            f->number = (uint32_t)fd->number;
            f->wt = (uint8_t)wt;
            f->repeated = fd->has_label && fd->label == BQPROTO__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED;
            f->is_string = fd->type == BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING;
            f->is_message = fd->type == BQPROTO__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE;
            f->sub = -1;
            if (f->is_message && (f->sub = find_msg(s, fd->type_name)) < 0) {
                snprintf(s->err, sizeof s->err, "field '%s': message type '%s' is not in the "
                         "writer schema", fd->name ? fd->name : "?", fd->type_name ? fd->type_name : "");
                return -1;
            }
            if (f->number > m->max_num)
                m->max_num = f->number;
        }
        if (m->max_num <= 4096) {
            m->by_num = malloc((m->max_num + 1) * sizeof *m->by_num);
            if (!m->by_num)
                return -1;
            for (uint32_t x = 0; x <= m->max_num; x++)
                m->by_num[x] = -1;
            for (size_t k = 0; k < m->n; k++)
                m->by_num[m->f[k].number] = (int16_t)k;
        }
    }
    return 0;
}

static const struct cfield *field_of(const struct cmsg *m, uint32_t num)
{
    if (m->by_num)
        return num <= m->max_num && m->by_num[num] >= 0 ? &m->f[m->by_num[num]] : NULL;
    for (size_t k = 0; k < m->n; k++)
        if (m->f[k].number == num)
            return &m->f[k];
    return NULL;
}

static inline int varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (p >= end)
            return -1;
        uint8_t b = *p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *v = x;
            return 0;
        }
    }
    return -1;
}

static bool utf8_ok(const uint8_t *p, size_t n)
{
    const uint8_t *end = p + n;
    while (p < end) {
        if (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            if (!(x & 0x8080808080808080ull)) {
                p += 8;
                continue;
            }
        }
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else
            return false;
        if ((size_t)(end - p) <= need || p[1] < lo || p[1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if ((p[k] & 0xC0) != 0x80)
                return false;
        p += need + 1;
    }
    return true;
}

/* Checks one encoded message of type mi; returns NULL or what is wrong. */
static const char *check_msg(const struct cschema *s, int mi, const uint8_t *p, size_t n, int depth,
                             char *why, size_t wl)
{
    if (depth > 16)
        return "nested deeper than 15 levels";
    const struct cmsg *m = &s->m[mi];
    const uint8_t *end = p + n;
    while (p < end) {
        uint64_t key, v;
        if (varint(&p, end, &key))
            return "truncated field tag";
        uint32_t num = (uint32_t)(key >> 3);
        unsigned wt = (unsigned)(key & 7);
        if (num == 0 || key >> 3 > 0x1fffffff)
            return "invalid field number 0";
        const struct cfield *f = field_of(m, num);
        switch (wt) {
        case WT_VARINT:
            if (varint(&p, end, &v))
                return "truncated varint";
            break;
        case WT_I64:
            if (end - p < 8)
                return "truncated fixed64";
            p += 8;
            break;
        case WT_I32:
            if (end - p < 4)
                return "truncated fixed32";
            p += 4;
            break;
        case WT_LEN: {
            if (varint(&p, end, &v) || v > (uint64_t)(end - p))
                return "length-delimited field runs past the end of the row";
            const uint8_t *q = p;
            p += v;
            if (!f || f->wt != WT_LEN) {
                if (f && f->repeated && f->wt == WT_I32 && v % 4)
                    return "packed fixed32 field with a length not a multiple of 4";
                if (f && f->repeated && f->wt == WT_I64 && v % 8)
                    return "packed fixed64 field with a length not a multiple of 8";
                if (f && f->repeated && f->wt == WT_VARINT) {
                    while (q < p)
                        if (varint(&q, p, &v))
                            return "bad varint in a packed field";
                }
                break;
            }
            if (f->is_string && !utf8_ok(q, (size_t)v)) {
                snprintf(why, wl, "field %u holds invalid UTF-8", num);
                return why;
            }
            if (f->is_message) {
                const char *e = check_msg(s, f->sub, q, (size_t)v, depth + 1, why, wl);
                if (e)
                    return e;
            }
            break;
        }
        default:
            return "unsupported wire type (group or invalid)";
        }
    }
    return NULL;
}

/* Column names of the writer schema's root that the table lacks: NULL if none. */
static const char *extra_column(const DescProto *root, const struct fs_table *t)
{
    for (size_t i = 0; i < root->n_field; i++) {
        const Bqproto__FieldDescriptorProto *fd = root->field[i];
        const char *col = fd->options && fd->options->column_name ? fd->options->column_name : fd->name;
        if (!col)
            return "?";
        bool found = false;
        size_t k;
        json_t *f;
        json_array_foreach(t->fields, k, f) {
            const char *nm = json_string_value(json_object_get(f, "name"));
            if (nm && strcasecmp(nm, col) == 0) {
                found = true;
                break;
            }
        }
        if (!found)
            return col;
    }
    return NULL;
}

/* ---- table schema as protobuf (WriteStream.table_schema) ---- */

static int bq_type_enum(const char *t)
{
    static const char *const names[] = { "", "STRING", "INTEGER", "FLOAT", "RECORD", "BYTES",
                                         "BOOLEAN", "TIMESTAMP", "DATE", "TIME", "DATETIME",
                                         "GEOGRAPHY", "NUMERIC", "BIGNUMERIC", "INTERVAL", "JSON",
                                         "RANGE" };
    for (int i = 1; t && i < 17; i++)
        if (strcmp(names[i], t) == 0)
            return i;
    return 0;
}

static void free_fields(TableFieldSchema **f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free_fields(f[i]->fields, f[i]->n_fields);
        free(f[i]->range_element_type);
        free(f[i]);
    }
    free(f);
}

static TableFieldSchema **build_fields(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    TableFieldSchema **out = calloc(*n ? *n : 1, sizeof *out);
    size_t i;
    json_t *f;
    json_array_foreach(arr, i, f) {
        TableFieldSchema *tf = malloc(sizeof *tf);
        if (!out || !tf) {
            free(tf);
            return out;
        }
        google__cloud__bigquery__storage__v1__table_field_schema__init(tf);
        out[i] = tf;
        tf->name = (char *)json_string_value(json_object_get(f, "name"));
        tf->has_type = 1;
        tf->type = bq_type_enum(json_string_value(json_object_get(f, "type")));
        const char *mode = json_string_value(json_object_get(f, "mode"));
        tf->has_mode = 1;
        tf->mode = mode && strcmp(mode, "REQUIRED") == 0 ? 2 : mode && strcmp(mode, "REPEATED") == 0 ? 3 : 1;
        tf->description = (char *)json_string_value(json_object_get(f, "description"));
        tf->default_value_expression =
            (char *)json_string_value(json_object_get(f, "defaultValueExpression"));
        json_t *sub = json_object_get(f, "fields");
        if (json_is_array(sub))
            tf->fields = build_fields(sub, &tf->n_fields);
        json_t *num;
        if ((num = json_object_get(f, "maxLength")) && (json_is_string(num) || json_is_integer(num))) {
            tf->has_max_length = 1;
            tf->max_length = json_is_string(num) ? atoll(json_string_value(num)) : json_integer_value(num);
        }
        if ((num = json_object_get(f, "precision")) && (json_is_string(num) || json_is_integer(num))) {
            tf->has_precision = 1;
            tf->precision = json_is_string(num) ? atoll(json_string_value(num)) : json_integer_value(num);
        }
        if ((num = json_object_get(f, "scale")) && (json_is_string(num) || json_is_integer(num))) {
            tf->has_scale = 1;
            tf->scale = json_is_string(num) ? atoll(json_string_value(num)) : json_integer_value(num);
        }
        json_t *ret = json_object_get(f, "rangeElementType");
        if (json_is_object(ret) && (tf->range_element_type = malloc(sizeof *tf->range_element_type))) {
            google__cloud__bigquery__storage__v1__table_field_schema__field_element_type__init(
                tf->range_element_type);
            tf->range_element_type->has_type = 1;
            tf->range_element_type->type = bq_type_enum(json_string_value(json_object_get(ret, "type")));
        }
    }
    return out;
}

/* ---- calls ---- */

enum tkind { T_NEW, T_MD, T_RECV, T_SEND, T_STATUS, T_CLOSE };
enum method { M_UNKNOWN, M_APPEND, M_CREATE, M_GET, M_FINALIZE, M_COMMIT, M_FLUSH };

struct gcall;
struct gtag {
    struct gcall *c;
    enum tkind kind;
};

struct outmsg {
    struct outmsg *next;
    grpc_byte_buffer *bb;
};

struct gthread {
    pthread_t th;
    grpc_completion_queue *cq;
    struct arena arena;
    int index;
};

struct gcall {
    struct gthread *t;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    enum method method;
    int ops;                   /* operations in flight */
    int cancelled;
    bool md_sent, recv_armed, send_busy, status_queued, status_sent, close_done, ended;
    grpc_byte_buffer *recv;
    grpc_byte_buffer *sending;
    struct outmsg *outq, **outq_tail;
    size_t n_out;
    /* the status to send once every message is out */
    grpc_status_code code;
    grpc_slice status_details;
    grpc_metadata trailer;
    bool has_trailer;
    /* AppendRows */
    char *stream_given;        /* the name as the client wrote it */
    struct fs_table *table;
    struct gstream *stream;    /* NULL: the default stream */
    uint8_t *desc_bytes;       /* the writer schema, as sent */
    size_t desc_len;
    DescProto *desc;
    struct cschema cs;
    const char *schema_problem;   /* the writer schema does not fit the table */
    char schema_problem_buf[400];
    int schema_problem_code;
    struct gtag t_new, t_md, t_recv, t_send, t_status, t_close;
};

static struct {
    grpc_server *server;
    struct gthread *th;
    int n;
} G;

static void request_new(struct gthread *t);

static void call_free(struct gcall *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    if (c->sending)
        grpc_byte_buffer_destroy(c->sending);
    while (c->outq) {
        struct outmsg *o = c->outq;
        c->outq = o->next;
        grpc_byte_buffer_destroy(o->bb);
        free(o);
    }
    grpc_slice_unref(c->status_details);
    if (c->has_trailer) {
        grpc_slice_unref(c->trailer.key);
        grpc_slice_unref(c->trailer.value);
    }
    free(c->stream_given);
    free(c->desc_bytes);
    if (c->desc)
        bqproto__descriptor_proto__free_unpacked(c->desc, NULL);
    cschema_free(&c->cs);
    free(c);
}

static void maybe_free(struct gcall *c)
{
    if (c->ops == 0 && c->close_done && (c->status_sent || c->cancelled || c->ended))
        call_free(c);
}

static bool batch(struct gcall *c, const grpc_op *ops, size_t n, struct gtag *tag)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e != GRPC_CALL_OK) {
        fs_log("grpc_call_start_batch: error %d", (int)e);
        return false;
    }
    c->ops++;
    return true;
}

static grpc_byte_buffer *pack_bb(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* A google.rpc.Status with an optional StorageError, packed. */
static grpc_slice status_bytes(int code, const char *msg, int storage_code, const char *entity)
{
    RpcStatus st = GOOGLE__RPC__STATUS__INIT;
    st.has_code = 1;
    st.code = code;
    st.message = (char *)msg;
    StorageError se = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__STORAGE_ERROR__INIT;
    Bqproto__Any any = BQPROTO__ANY__INIT;
    Bqproto__Any *anys[1] = { &any };
    uint8_t sebuf[2048];
    if (storage_code) {
        se.has_code = 1;
        se.code = storage_code;
        se.entity = (char *)(entity ? entity : "");
        se.error_message = (char *)msg;
        size_t l = google__cloud__bigquery__storage__v1__storage_error__get_packed_size(&se);
        if (l <= sizeof sebuf) {
            google__cloud__bigquery__storage__v1__storage_error__pack(&se, sebuf);
            any.type_url = (char *)STORAGE_ERROR_URL;
            any.has_value = 1;
            any.value.data = sebuf;
            any.value.len = l;
            st.n_details = 1;
            st.details = anys;
        }
    }
    size_t len = google__rpc__status__get_packed_size(&st);
    grpc_slice s = grpc_slice_malloc(len);
    google__rpc__status__pack(&st, GRPC_SLICE_START_PTR(s));
    return s;
}

static void pump_send(struct gcall *c);

/* Ends the call with a status (after the messages queued before it). */
static void end_call(struct gcall *c, grpc_status_code code, const char *msg, int storage_code,
                     const char *entity)
{
    if (c->status_queued)
        return;
    c->status_queued = true;
    c->code = code;
    grpc_slice_unref(c->status_details);
    c->status_details = grpc_slice_from_copied_string(msg);
    if (code != GRPC_STATUS_OK) {
        fs_add(&FS.st.grpc_errors, 1);
        c->trailer.key = grpc_slice_from_static_string("grpc-status-details-bin");
        c->trailer.value = status_bytes((int)code, msg, storage_code, entity);
        c->has_trailer = true;
    }
    pump_send(c);
}

static void pump_send(struct gcall *c)
{
    if (c->send_busy || c->cancelled)
        return;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->md_sent = true;
    }
    if (c->outq) {
        struct outmsg *o = c->outq;
        c->outq = o->next;
        if (!c->outq)
            c->outq_tail = &c->outq;
        c->n_out--;
        c->sending = o->bb;
        free(o);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->sending;
        if (batch(c, ops, n, &c->t_send))
            c->send_busy = true;
        return;
    }
    if (c->status_queued && !c->status_sent) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = c->code;
        ops[n].data.send_status_from_server.status_details = &c->status_details;
        ops[n].data.send_status_from_server.trailing_metadata_count = c->has_trailer ? 1 : 0;
        ops[n].data.send_status_from_server.trailing_metadata = c->has_trailer ? &c->trailer : NULL;
        n++;
        if (batch(c, ops, n, &c->t_status))
            c->send_busy = true;
        c->status_sent = true;   /* sent or failed: either way, no second one */
        return;
    }
    if (n) {   /* only the initial metadata */
        if (batch(c, ops, n, &c->t_md))
            c->send_busy = true;
    }
}

static void queue_msg(struct gcall *c, grpc_byte_buffer *bb)
{
    struct outmsg *o = malloc(sizeof *o);
    if (!o) {
        grpc_byte_buffer_destroy(bb);
        return;
    }
    o->next = NULL;
    o->bb = bb;
    *c->outq_tail = o;
    c->outq_tail = &o->next;
    c->n_out++;
    pump_send(c);
}

static void arm_recv(struct gcall *c)
{
    if (c->recv_armed || c->ended || c->cancelled || c->status_queued)
        return;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv;
    if (batch(c, &op, 1, &c->t_recv))
        c->recv_armed = true;
}

/* The bearer token of the call's metadata: 0 if good, else ended. */
static int check_auth(struct gcall *c)
{
    for (size_t i = 0; i < c->md.count; i++) {
        if (grpc_slice_str_cmp(c->md.metadata[i].key, "authorization") != 0)
            continue;
        grpc_slice v = c->md.metadata[i].value;
        const char *p = (const char *)GRPC_SLICE_START_PTR(v);
        size_t n = GRPC_SLICE_LENGTH(v);
        if (n < 8 || strncasecmp(p, "Bearer ", 7) != 0)
            break;
        int s = fs_auth_check(p + 7, n - 7);
        if (s == -2) {
            fs_add(&FS.st.grpc_auth_failures, 1);
            end_call(c, GRPC_STATUS_UNAUTHENTICATED, "Request had invalid authentication credentials: "
                     "the access token has expired.", 0, NULL);
            return -1;
        }
        if (s < 0) {
            fs_add(&FS.st.grpc_auth_failures, 1);
            end_call(c, GRPC_STATUS_UNAUTHENTICATED, "Request had invalid authentication credentials: "
                     "unknown access token.", 0, NULL);
            return -1;
        }
        if (!((unsigned)s & FS_SCOPES_INSERT)) {
            end_call(c, GRPC_STATUS_PERMISSION_DENIED,
                     "Request had insufficient authentication scopes.", 0, NULL);
            return -1;
        }
        return 0;
    }
    fs_add(&FS.st.grpc_auth_failures, 1);
    end_call(c, GRPC_STATUS_UNAUTHENTICATED, "Request is missing required authentication credential: "
             "the call needs 'authorization: Bearer <OAuth 2 access token>' metadata.", 0, NULL);
    return -1;
}

/* ---- AppendRows ---- */

static grpc_byte_buffer *append_error(struct gcall *c, int code, const char *msg, int storage,
                                      RowError **rows, size_t n_rows)
{
    AppendResp r = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_RESPONSE__INIT;
    RpcStatus st = GOOGLE__RPC__STATUS__INIT;
    StorageError se = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__STORAGE_ERROR__INIT;
    Bqproto__Any any = BQPROTO__ANY__INIT;
    Bqproto__Any *anys[1] = { &any };
    uint8_t sebuf[4096];
    st.has_code = 1;
    st.code = code;
    st.message = (char *)msg;
    if (storage) {
        se.has_code = 1;
        se.code = storage;
        se.entity = c->stream_given ? c->stream_given : (char *)"";
        se.error_message = (char *)msg;
        size_t l = google__cloud__bigquery__storage__v1__storage_error__get_packed_size(&se);
        if (l <= sizeof sebuf) {
            google__cloud__bigquery__storage__v1__storage_error__pack(&se, sebuf);
            any.type_url = (char *)STORAGE_ERROR_URL;
            any.has_value = 1;
            any.value.data = sebuf;
            any.value.len = l;
            st.n_details = 1;
            st.details = anys;
        }
    }
    r.response_case = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_RESPONSE__RESPONSE_ERROR;
    r.error = &st;
    r.write_stream = c->stream_given;
    r.n_row_errors = n_rows;
    r.row_errors = rows;
    fs_add(&FS.st.append_errors, 1);
    return pack_bb(&r.base);
}

/* Switches the call to the request's stream; false if the call was ended. */
static bool select_target(struct gcall *c, const AppendReq *req, const char *name, bool has_schema)
{
    bool first = c->stream_given == NULL;
    if (!first && (!req->write_stream || strcmp(req->write_stream, c->stream_given) == 0))
        return true;
    char m[1400];
    struct sname sn = parse_stream(name);
    if (!sn.ok) {
        snprintf(m, sizeof m, "Invalid stream name '%.1000s': expected "
                 "projects/{p}/datasets/{d}/tables/{t}/streams/{id}.", name);
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL);
        return false;
    }
    bool ok;
    struct fs_table *t = table_of_path(name, sn.table_len, &ok);
    if (!has_schema && (first || t != c->table)) {
        snprintf(m, sizeof m, "The first AppendRowsRequest for a %s must carry "
                 "proto_rows.writer_schema. Entity: %.1000s", first ? "connection" : "new table", name);
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL);
        return false;
    }
    if (!t) {
        snprintf(m, sizeof m, "Requested entity was not found. Entity: %.1000s", name);
        end_call(c, GRPC_STATUS_NOT_FOUND, m, SE_TABLE_NOT_FOUND, name);
        return false;
    }
    struct gstream *s = NULL;
    if (!sn.is_default) {
        s = stream_find(name);
        if (!s || s->t != t) {
            snprintf(m, sizeof m, "Requested entity was not found. Entity: %.1000s", name);
            end_call(c, GRPC_STATUS_NOT_FOUND, m, SE_STREAM_NOT_FOUND, name);
            return false;
        }
    }
    free(c->stream_given);
    c->stream_given = strdup(name);
    c->table = t;
    c->stream = s;
    return c->stream_given != NULL;
}

/* Takes a new writer schema (kept as bytes and compiled). */
static void take_schema(struct gcall *c, const DescProto *d)
{
    size_t len = bqproto__descriptor_proto__get_packed_size(d);
    uint8_t *b = malloc(len ? len : 1);
    if (!b)
        return;
    bqproto__descriptor_proto__pack(d, b);
    if (c->desc_bytes && c->desc_len == len && memcmp(c->desc_bytes, b, len) == 0) {
        free(b);   /* the same schema again */
        return;
    }
    free(c->desc_bytes);
    c->desc_bytes = b;
    c->desc_len = len;
    if (c->desc)
        bqproto__descriptor_proto__free_unpacked(c->desc, NULL);
    cschema_free(&c->cs);
    c->desc = bqproto__descriptor_proto__unpack(NULL, len, b);   /* our own copy */
    c->schema_problem = NULL;
    c->schema_problem_code = 0;
    if (!c->desc) {
        c->schema_problem = "The writer schema is not a valid DescriptorProto.";
        return;
    }
    if (cschema_build(&c->cs, c->desc) != 0) {
        snprintf(c->schema_problem_buf, sizeof c->schema_problem_buf, "Invalid proto schema: %s.",
                 c->cs.err);
        c->schema_problem = c->schema_problem_buf;
        return;
    }
    const char *extra = extra_column(c->desc, c->table);
    if (extra) {
        snprintf(c->schema_problem_buf, sizeof c->schema_problem_buf,
                 "Input schema has more fields than BigQuery schema, extra fields: '%.200s'", extra);
        c->schema_problem = c->schema_problem_buf;
        c->schema_problem_code = SE_SCHEMA_MISMATCH_EXTRA_FIELDS;
    }
}

static void on_append(struct gcall *c, const uint8_t *data, size_t len)
{
    struct arena *ar = &c->t->arena;
    ProtobufCAllocator alloc = { a_alloc, a_free, ar };
    fs_add(&FS.st.append_requests, 1);
    fs_add(&FS.st.append_bytes, len);
    char m[1600];
    if (len > MAX_APPEND_BYTES) {
        snprintf(m, sizeof m, "AppendRows request too large: %zu limit %d Entity: %.1000s", len,
                 MAX_APPEND_BYTES, c->stream_given ? c->stream_given : "");
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL);
        return;
    }
    AppendReq *req = google__cloud__bigquery__storage__v1__append_rows_request__unpack(&alloc, len, data);
    if (!req) {
        a_reset(ar);
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "Invalid AppendRowsRequest: cannot decode it.", 0, NULL);
        return;
    }
    const char *name = req->write_stream && req->write_stream[0] ? req->write_stream : c->stream_given;
    if (!name) {
        a_reset(ar);
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT,
                 "The first AppendRowsRequest of a connection must set write_stream.", 0, NULL);
        return;
    }
    bool proto = req->rows_case == GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_REQUEST__ROWS_PROTO_ROWS &&
                 req->proto_rows;
    bool has_schema = proto && req->proto_rows->writer_schema &&
                      req->proto_rows->writer_schema->proto_descriptor;
    bool arrow = req->rows_case == GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_REQUEST__ROWS_ARROW_ROWS;
    if (!select_target(c, req, name, has_schema || arrow)) {
        a_reset(ar);
        return;
    }
    if (has_schema)
        take_schema(c, req->proto_rows->writer_schema->proto_descriptor);
    const char *sn = c->stream_given;
    grpc_byte_buffer *resp = NULL;
    size_t n = proto && req->proto_rows->rows ? req->proto_rows->rows->n_serialized_rows : 0;
    int64_t offset = req->offset && req->offset->has_value ? req->offset->value : -1;
    bool has_offset = req->offset != NULL;
    bool bad_mvi = false;
    for (size_t i = 0; i < req->n_missing_value_interpretations; i++)
        if (!req->missing_value_interpretations[i]->has_value ||
            req->missing_value_interpretations[i]->value == 0)
            bad_mvi = true;
    if (arrow) {
        snprintf(m, sizeof m, "Arrow rows are not supported by the fast sink; send proto_rows. "
                 "Entity: %.1000s", sn);
        resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL, 0);
    } else if (n == 0) {
        snprintf(m, sizeof m, "The request has no rows. Entity: %.1000s", sn);
        resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL, 0);
    } else if (bad_mvi) {
        snprintf(m, sizeof m, "missing_value_interpretations must be NULL_VALUE or DEFAULT_VALUE, not "
                 "MISSING_VALUE_INTERPRETATION_UNSPECIFIED. Entity: %.1000s", sn);
        resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL, 0);
    } else if (!c->stream && has_offset) {
        snprintf(m, sizeof m, "The default stream does not accept offsets (offset %lld given). "
                 "Entity: %.1000s", (long long)offset, sn);
        resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL, 0);
    } else if (c->stream && c->stream->finalized) {
        snprintf(m, sizeof m, "Stream has been finalized and cannot be appended: %.1000s", sn);
        resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, SE_STREAM_FINALIZED, NULL, 0);
    } else if (!c->desc_bytes) {
        snprintf(m, sizeof m, "No writer_schema has been sent on this connection. Entity: %.1000s", sn);
        resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL, 0);
    } else if (c->schema_problem) {
        snprintf(m, sizeof m, "%s Entity: %.1000s", c->schema_problem, sn);
        resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, c->schema_problem_code, NULL, 0);
    } else {
        /* the rows: well-formed messages of the writer schema */
        RowError *errs[16], rowerr[16];
        char why[16][160];
        size_t ne = 0;
        ProtobufCBinaryData *rows = req->proto_rows->rows->serialized_rows;
        for (size_t i = 0; i < n; i++) {
            char wb[160];
            const char *e = check_msg(&c->cs, 0, rows[i].data, rows[i].len, 1, wb, sizeof wb);
            if (!e)
                continue;
            if (ne < 16) {
                google__cloud__bigquery__storage__v1__row_error__init(&rowerr[ne]);
                rowerr[ne].has_index = 1;
                rowerr[ne].index = (int64_t)i;
                rowerr[ne].has_code = 1;
                rowerr[ne].code = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__ROW_ERROR__ROW_ERROR_CODE__FIELDS_ERROR;
                snprintf(why[ne], sizeof why[ne], "Could not parse the row as the writer schema: %s.", e);
                rowerr[ne].message = why[ne];
                errs[ne] = &rowerr[ne];
            }
            ne++;
        }
        if (ne) {
            snprintf(m, sizeof m, "%s Entity: %.1000s", ROW_ERRORS_MESSAGE, sn);
            resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, errs, ne < 16 ? ne : 16);
        } else {
            int64_t start = -1, end = 0;
            int outcome = 0;   /* 0 ok, 1 already exists, 2 out of range, 3 finalized */
            if (c->stream) {
                pthread_mutex_lock(&SL);
                end = c->stream->rows;
                if (c->stream->finalized)
                    outcome = 3;
                else if (has_offset && offset < end)
                    outcome = 1;
                else if (has_offset && offset > end)
                    outcome = 2;
                else {
                    start = end;
                    c->stream->rows = end + (int64_t)n;
                }
                pthread_mutex_unlock(&SL);
            }
            if (outcome == 1 || outcome == 2) {
                char text[200];
                snprintf(text, sizeof text, "The offset is %s stream, expected offset %lld, received %lld",
                         outcome == 1 ? "within" : "beyond", (long long)end, (long long)offset);
                snprintf(m, sizeof m, "%s Entity: %.1000s", text, sn);
                fs_add(outcome == 1 ? &FS.st.offset_already_exists : &FS.st.offset_out_of_range, 1);
                resp = append_error(c, outcome == 1 ? GRPC_STATUS_ALREADY_EXISTS : GRPC_STATUS_OUT_OF_RANGE,
                                    m, outcome == 1 ? SE_OFFSET_ALREADY_EXISTS : SE_OFFSET_OUT_OF_RANGE,
                                    NULL, 0);
            } else if (outcome == 3) {
                snprintf(m, sizeof m, "Stream has been finalized and cannot be appended: %.1000s", sn);
                resp = append_error(c, GRPC_STATUS_INVALID_ARGUMENT, m, SE_STREAM_FINALIZED, NULL, 0);
            } else {
                bool pending = c->stream && c->stream->type != ST_COMMITTED;
                fs_add(pending ? &FS.st.storage_rows_pending : &FS.st.storage_rows, n);
                fs_add(pending ? &c->table->storage_rows_pending : &c->table->storage_rows, n);
                AppendResp r = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_RESPONSE__INIT;
                AppendResult res = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_RESPONSE__APPEND_RESULT__INIT;
                Bqproto__Int64Value ov = BQPROTO__INT64_VALUE__INIT;
                if (c->stream) {
                    ov.has_value = 1;
                    ov.value = start;
                    res.offset = &ov;
                }
                r.response_case = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_RESPONSE__RESPONSE_APPEND_RESULT;
                r.append_result = &res;
                r.write_stream = c->stream_given;
                resp = pack_bb(&r.base);
            }
        }
    }
    a_reset(ar);
    if (resp)
        queue_msg(c, resp);
}

/* ---- unary methods ---- */

static void ts_set(Bqproto__Timestamp *ts, double t)
{
    bqproto__timestamp__init(ts);
    ts->has_seconds = 1;
    ts->seconds = (int64_t)t;
    ts->has_nanos = 1;
    ts->nanos = (int32_t)((t - (double)(int64_t)t) * 1e6) * 1000;
}

static void reply_stream(struct gcall *c, const char *name, int type, double created, double commit,
                         bool committed, struct fs_table *t, bool with_schema)
{
    WriteStream ws = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__WRITE_STREAM__INIT;
    Bqproto__Timestamp ct, cmt;
    TableSchema sch = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__TABLE_SCHEMA__INIT;
    ws.name = (char *)name;
    ws.has_type = 1;
    ws.type = type;
    ts_set(&ct, created);
    ws.create_time = &ct;
    if (committed) {
        ts_set(&cmt, commit);
        ws.commit_time = &cmt;
    }
    ws.has_write_mode = 1;
    ws.write_mode = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__WRITE_STREAM__WRITE_MODE__INSERT;
    ws.location = (char *)"US";
    if (with_schema) {
        sch.fields = build_fields(t->fields, &sch.n_fields);
        ws.table_schema = &sch;
    }
    queue_msg(c, pack_bb(&ws.base));
    if (with_schema)
        free_fields(sch.fields, sch.n_fields);
    end_call(c, GRPC_STATUS_OK, "", 0, NULL);
}

static void on_create(struct gcall *c, const uint8_t *data, size_t len)
{
    Google__Cloud__Bigquery__Storage__V1__CreateWriteStreamRequest *req =
        google__cloud__bigquery__storage__v1__create_write_stream_request__unpack(NULL, len, data);
    char m[1400];
    if (!req) {
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "Invalid CreateWriteStreamRequest.", 0, NULL);
        return;
    }
    const char *parent = req->parent ? req->parent : "";
    bool ok;
    struct fs_table *t = table_of_path(parent, strlen(parent), &ok);
    int type = req->write_stream && req->write_stream->has_type ? (int)req->write_stream->type : 0;
    if (!ok) {
        snprintf(m, sizeof m, "Invalid table name '%.1000s': expected "
                 "projects/{p}/datasets/{d}/tables/{t}.", parent);
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL);
    } else if (!t) {
        snprintf(m, sizeof m, "Requested entity was not found. Entity: %.1000s", parent);
        end_call(c, GRPC_STATUS_NOT_FOUND, m, SE_TABLE_NOT_FOUND, parent);
    } else if (type < ST_COMMITTED || type > ST_BUFFERED) {
        snprintf(m, sizeof m, "write_stream.type must be COMMITTED, PENDING or BUFFERED (got %d).", type);
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL);
    } else if (req->write_stream->has_write_mode && req->write_stream->write_mode > 1) {
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "write_stream.write_mode must be INSERT.", 0, NULL);
    } else {
        unsigned char rnd[18];
        static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        char id[25];
        if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
            memset(rnd, 7, sizeof rnd);
        for (int i = 0; i < 6; i++) {
            uint32_t v = (uint32_t)rnd[3 * i] << 16 | (uint32_t)rnd[3 * i + 1] << 8 | rnd[3 * i + 2];
            for (int k = 0; k < 4; k++)
                id[4 * i + k] = b64[(v >> (18 - 6 * k)) & 63];
        }
        id[24] = 0;
        struct gstream *s = calloc(1, sizeof *s);
        size_t nl = strlen(parent) + 9 + sizeof id;
        if (!s || !(s->name = malloc(nl))) {
            free(s);
            end_call(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", 0, NULL);
        } else {
            snprintf(s->name, nl, "%s/streams/%s", parent, id);
            s->t = t;
            s->type = type;
            s->created = now_epoch();
            s->committed = type == ST_COMMITTED;
            s->commit_time = s->created;
            pthread_mutex_lock(&SL);
            s->next = STREAMS;
            STREAMS = s;
            pthread_mutex_unlock(&SL);
            fs_add(&FS.st.streams_created, 1);
            reply_stream(c, s->name, s->type, s->created, s->commit_time, s->committed, t, true);
        }
    }
    google__cloud__bigquery__storage__v1__create_write_stream_request__free_unpacked(req, NULL);
}

/* Looks a stream name up for a unary call: answers and returns false when
 * it is unusable. *s is NULL for the default stream. */
static bool unary_stream(struct gcall *c, const char *name, struct fs_table **t, struct gstream **s,
                         bool *is_default)
{
    char m[1400];
    struct sname sn = parse_stream(name);
    if (!sn.ok) {
        snprintf(m, sizeof m, "Invalid stream name '%.1000s': expected "
                 "projects/{p}/datasets/{d}/tables/{t}/streams/{id}.", name ? name : "");
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL);
        return false;
    }
    bool ok;
    *t = table_of_path(name, sn.table_len, &ok);
    if (!*t) {
        snprintf(m, sizeof m, "Requested entity was not found. Entity: %.1000s", name);
        end_call(c, GRPC_STATUS_NOT_FOUND, m, SE_TABLE_NOT_FOUND, name);
        return false;
    }
    *is_default = sn.is_default;
    *s = NULL;
    if (sn.is_default)
        return true;
    *s = stream_find(name);
    if (!*s || (*s)->t != *t) {
        snprintf(m, sizeof m, "Requested entity was not found. Entity: %.1000s", name);
        end_call(c, GRPC_STATUS_NOT_FOUND, m, SE_STREAM_NOT_FOUND, name);
        return false;
    }
    return true;
}

static void on_get(struct gcall *c, const uint8_t *data, size_t len)
{
    Google__Cloud__Bigquery__Storage__V1__GetWriteStreamRequest *req =
        google__cloud__bigquery__storage__v1__get_write_stream_request__unpack(NULL, len, data);
    if (!req) {
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "Invalid GetWriteStreamRequest.", 0, NULL);
        return;
    }
    struct fs_table *t;
    struct gstream *s;
    bool dflt;
    if (unary_stream(c, req->name, &t, &s, &dflt)) {
        bool full = req->has_view && req->view == GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__WRITE_STREAM_VIEW__FULL;
        if (!s) {   /* the default stream: COMMITTED, as old as the sink */
            char canon[1200];
            struct sname sn = parse_stream(req->name);
            snprintf(canon, sizeof canon, "%.*s/streams/_default", (int)sn.table_len, req->name);
            double born = now_epoch() - (fs_mono() - FS.start_mono);
            reply_stream(c, canon, ST_COMMITTED, born, born, true, t, full);
        } else {
            pthread_mutex_lock(&SL);
            struct gstream copy = *s;
            pthread_mutex_unlock(&SL);
            reply_stream(c, copy.name, copy.type, copy.created, copy.commit_time, copy.committed, t, full);
        }
    }
    google__cloud__bigquery__storage__v1__get_write_stream_request__free_unpacked(req, NULL);
}

static void on_finalize(struct gcall *c, const uint8_t *data, size_t len)
{
    Google__Cloud__Bigquery__Storage__V1__FinalizeWriteStreamRequest *req =
        google__cloud__bigquery__storage__v1__finalize_write_stream_request__unpack(NULL, len, data);
    if (!req) {
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "Invalid FinalizeWriteStreamRequest.", 0, NULL);
        return;
    }
    struct fs_table *t;
    struct gstream *s;
    bool dflt;
    if (unary_stream(c, req->name, &t, &s, &dflt)) {
        if (!s) {
            char m[1400];
            snprintf(m, sizeof m, "The default stream cannot be finalized. Entity: %.1000s", req->name);
            end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, SE_INVALID_STREAM_TYPE, req->name);
        } else {
            pthread_mutex_lock(&SL);
            if (!s->finalized) {
                s->finalized = true;
                fs_add(&FS.st.streams_finalized, 1);
            }
            int64_t rows = s->rows;
            pthread_mutex_unlock(&SL);
            Google__Cloud__Bigquery__Storage__V1__FinalizeWriteStreamResponse r =
                GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__FINALIZE_WRITE_STREAM_RESPONSE__INIT;
            r.has_row_count = 1;
            r.row_count = rows;
            queue_msg(c, pack_bb(&r.base));
            end_call(c, GRPC_STATUS_OK, "", 0, NULL);
        }
    }
    google__cloud__bigquery__storage__v1__finalize_write_stream_request__free_unpacked(req, NULL);
}

static void on_commit(struct gcall *c, const uint8_t *data, size_t len)
{
    Google__Cloud__Bigquery__Storage__V1__BatchCommitWriteStreamsRequest *req =
        google__cloud__bigquery__storage__v1__batch_commit_write_streams_request__unpack(NULL, len, data);
    char m[1400];
    if (!req) {
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "Invalid BatchCommitWriteStreamsRequest.", 0, NULL);
        return;
    }
    const char *parent = req->parent ? req->parent : "";
    bool ok;
    struct fs_table *t = table_of_path(parent, strlen(parent), &ok);
    if (!ok) {
        snprintf(m, sizeof m, "Invalid table name '%.1000s'.", parent);
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, 0, NULL);
    } else if (!t) {
        snprintf(m, sizeof m, "Requested entity was not found. Entity: %.1000s", parent);
        end_call(c, GRPC_STATUS_NOT_FOUND, m, SE_TABLE_NOT_FOUND, parent);
    } else if (req->n_write_streams == 0) {
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "write_streams must name at least one stream.", 0, NULL);
    } else {
        Google__Cloud__Bigquery__Storage__V1__BatchCommitWriteStreamsResponse r =
            GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__BATCH_COMMIT_WRITE_STREAMS_RESPONSE__INIT;
        StorageError *errs = calloc(req->n_write_streams, sizeof *errs);
        StorageError **perrs = calloc(req->n_write_streams, sizeof *perrs);
        char (*texts)[1400] = calloc(req->n_write_streams, sizeof *texts);
        Bqproto__Timestamp ts;
        size_t ne = 0;
        if (!errs || !perrs || !texts) {
            end_call(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", 0, NULL);
        } else {
            pthread_mutex_lock(&SL);
            for (size_t i = 0; i < req->n_write_streams; i++) {
                const char *nm = req->write_streams[i];
                struct gstream *s = STREAMS;
                while (s && strcmp(s->name, nm) != 0)
                    s = s->next;
                int code = 0;
                if (!s || s->t != t || strncmp(nm, parent, strlen(parent)) != 0) {
                    code = SE_STREAM_NOT_FOUND;
                    snprintf(texts[ne], sizeof texts[ne], "Stream not found in table %.600s: %.600s",
                             parent, nm);
                } else if (s->type != ST_PENDING) {
                    code = SE_INVALID_STREAM_TYPE;
                    snprintf(texts[ne], sizeof texts[ne], "Stream must be created in PENDING mode to be "
                             "committed, actual: %s", s->type == ST_COMMITTED ? "COMMITTED" : "BUFFERED");
                } else if (s->committed) {
                    code = SE_STREAM_ALREADY_COMMITTED;
                    snprintf(texts[ne], sizeof texts[ne], "Stream is already committed: %.1000s", nm);
                } else if (!s->finalized) {
                    code = SE_INVALID_STREAM_STATE;
                    snprintf(texts[ne], sizeof texts[ne], "Stream is not finalized: %.1000s", nm);
                }
                if (code) {
                    google__cloud__bigquery__storage__v1__storage_error__init(&errs[ne]);
                    errs[ne].has_code = 1;
                    errs[ne].code = code;
                    errs[ne].entity = (char *)nm;
                    errs[ne].error_message = texts[ne];
                    perrs[ne] = &errs[ne];
                    ne++;
                }
            }
            double now = now_epoch();
            if (!ne) {   /* all or nothing */
                for (size_t i = 0; i < req->n_write_streams; i++) {
                    struct gstream *s = STREAMS;
                    while (s && strcmp(s->name, req->write_streams[i]) != 0)
                        s = s->next;
                    s->committed = true;
                    s->commit_time = now;
                    fs_add(&FS.st.storage_rows_committed_pending, (uint64_t)s->rows);
                    fs_add(&FS.st.storage_rows, (uint64_t)s->rows);
                    fs_add(&t->storage_rows, (uint64_t)s->rows);
                    fs_add(&FS.st.streams_committed, 1);
                }
            }
            pthread_mutex_unlock(&SL);
            if (ne) {
                r.n_stream_errors = ne;
                r.stream_errors = perrs;
            } else {
                ts_set(&ts, now);
                r.commit_time = &ts;
            }
            queue_msg(c, pack_bb(&r.base));
            end_call(c, GRPC_STATUS_OK, "", 0, NULL);
        }
        free(errs);
        free(perrs);
        free(texts);
    }
    google__cloud__bigquery__storage__v1__batch_commit_write_streams_request__free_unpacked(req, NULL);
}

static void on_flush(struct gcall *c, const uint8_t *data, size_t len)
{
    Google__Cloud__Bigquery__Storage__V1__FlushRowsRequest *req =
        google__cloud__bigquery__storage__v1__flush_rows_request__unpack(NULL, len, data);
    char m[1400];
    if (!req) {
        end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "Invalid FlushRowsRequest.", 0, NULL);
        return;
    }
    struct fs_table *t;
    struct gstream *s;
    bool dflt;
    if (unary_stream(c, req->write_stream, &t, &s, &dflt)) {
        pthread_mutex_lock(&SL);
        int type = s ? s->type : ST_COMMITTED;
        bool fin = s && s->finalized;
        int64_t rows = s ? s->rows : 0;
        pthread_mutex_unlock(&SL);
        int64_t off = req->offset && req->offset->has_value ? req->offset->value : -1;
        if (type != ST_BUFFERED) {
            snprintf(m, sizeof m, "FlushRows is only supported on BUFFERED streams. Entity: %.1000s",
                     req->write_stream);
            end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, SE_INVALID_STREAM_TYPE, req->write_stream);
        } else if (fin) {
            snprintf(m, sizeof m, "Stream has been finalized and cannot be appended: %.1000s",
                     req->write_stream);
            end_call(c, GRPC_STATUS_INVALID_ARGUMENT, m, SE_STREAM_FINALIZED, req->write_stream);
        } else if (!req->offset) {
            end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "FlushRows needs an offset.", 0, NULL);
        } else if (off < 0 || off >= rows) {
            snprintf(m, sizeof m, "Offset %lld is beyond the end of the stream (%lld rows). Entity: %.1000s",
                     (long long)off, (long long)rows, req->write_stream);
            end_call(c, GRPC_STATUS_OUT_OF_RANGE, m, SE_OFFSET_OUT_OF_RANGE, req->write_stream);
        } else {
            pthread_mutex_lock(&SL);
            if (off + 1 > s->flushed) {   /* rows up to off become visible */
                uint64_t newly = (uint64_t)(off + 1 - s->flushed);
                fs_add(&FS.st.storage_rows_committed_pending, newly);
                fs_add(&FS.st.storage_rows, newly);
                fs_add(&t->storage_rows, newly);
                s->flushed = off + 1;
            }
            pthread_mutex_unlock(&SL);
            fs_add(&FS.st.flush_rows, 1);
            Google__Cloud__Bigquery__Storage__V1__FlushRowsResponse r =
                GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__FLUSH_ROWS_RESPONSE__INIT;
            r.has_offset = 1;
            r.offset = off;
            queue_msg(c, pack_bb(&r.base));
            end_call(c, GRPC_STATUS_OK, "", 0, NULL);
        }
    }
    google__cloud__bigquery__storage__v1__flush_rows_request__free_unpacked(req, NULL);
}

/* ---- events ---- */

static void on_new(struct gcall *c)
{
    fs_add(&FS.st.grpc_calls, 1);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    if (!batch(c, &op, 1, &c->t_close))
        c->close_done = true;
    static const struct { const char *name; enum method m; } methods[] = {
        { SVC "AppendRows", M_APPEND }, { SVC "CreateWriteStream", M_CREATE },
        { SVC "GetWriteStream", M_GET }, { SVC "FinalizeWriteStream", M_FINALIZE },
        { SVC "BatchCommitWriteStreams", M_COMMIT }, { SVC "FlushRows", M_FLUSH },
    };
    c->method = M_UNKNOWN;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (grpc_slice_str_cmp(c->details.method, methods[i].name) == 0)
            c->method = methods[i].m;
    if (c->method == M_UNKNOWN) {
        end_call(c, GRPC_STATUS_UNIMPLEMENTED, "Method not found (the fast sink serves "
                 "google.cloud.bigquery.storage.v1.BigQueryWrite).", 0, NULL);
        return;
    }
    if (check_auth(c) != 0)
        return;
    if (c->method == M_APPEND) {
        fs_add(&FS.st.append_calls, 1);
        pump_send(c);   /* initial metadata now: the client waits for it */
    }
    arm_recv(c);
}

static void on_recv(struct gcall *c, bool ok)
{
    c->recv_armed = false;
    if (!ok || !c->recv) {   /* the client half-closed (or the call died) */
        if (c->method == M_APPEND && ok)
            end_call(c, GRPC_STATUS_OK, "", 0, NULL);
        else if (!ok)
            c->ended = true;
        else
            end_call(c, GRPC_STATUS_INVALID_ARGUMENT, "The request message is missing.", 0, NULL);
        return;
    }
    grpc_byte_buffer_reader r;
    grpc_byte_buffer_reader_init(&r, c->recv);
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    grpc_byte_buffer_destroy(c->recv);
    c->recv = NULL;
    const uint8_t *data = GRPC_SLICE_START_PTR(s);
    size_t len = GRPC_SLICE_LENGTH(s);
    switch (c->method) {
    case M_APPEND:   on_append(c, data, len); break;
    case M_CREATE:   on_create(c, data, len); break;
    case M_GET:      on_get(c, data, len); break;
    case M_FINALIZE: on_finalize(c, data, len); break;
    case M_COMMIT:   on_commit(c, data, len); break;
    case M_FLUSH:    on_flush(c, data, len); break;
    default: break;
    }
    grpc_slice_unref(s);
    if (c->method == M_APPEND && c->n_out < 64)
        arm_recv(c);
}

static void on_event(struct gthread *t, grpc_event ev)
{
    struct gtag *tag = ev.tag;
    struct gcall *c = tag->c;
    if (tag->kind == T_NEW) {
        if (!ev.success) {   /* the server is shutting down */
            call_free(c);
            return;
        }
        request_new(t);
        on_new(c);
        maybe_free(c);
        return;
    }
    c->ops--;
    switch (tag->kind) {
    case T_RECV:
        on_recv(c, ev.success);
        break;
    case T_SEND:
    case T_MD:
        c->send_busy = false;
        if (c->sending) {
            grpc_byte_buffer_destroy(c->sending);
            c->sending = NULL;
        }
        if (!ev.success)
            c->ended = true;
        else
            pump_send(c);
        if (c->method == M_APPEND && c->n_out < 64)
            arm_recv(c);
        break;
    case T_STATUS:
        c->send_busy = false;
        if (c->sending) {
            grpc_byte_buffer_destroy(c->sending);
            c->sending = NULL;
        }
        c->ended = true;
        break;
    case T_CLOSE:
        c->close_done = true;
        if (c->cancelled)
            c->ended = true;
        break;
    default:
        break;
    }
    maybe_free(c);
}

static void request_new(struct gthread *t)
{
    struct gcall *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->t = t;
    c->outq_tail = &c->outq;
    c->status_details = grpc_empty_slice();
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    c->t_new = (struct gtag){ c, T_NEW };
    c->t_md = (struct gtag){ c, T_MD };
    c->t_recv = (struct gtag){ c, T_RECV };
    c->t_send = (struct gtag){ c, T_SEND };
    c->t_status = (struct gtag){ c, T_STATUS };
    c->t_close = (struct gtag){ c, T_CLOSE };
    if (grpc_server_request_call(G.server, &c->call, &c->details, &c->md, t->cq, t->cq, &c->t_new) !=
        GRPC_CALL_OK) {
        grpc_call_details_destroy(&c->details);
        grpc_metadata_array_destroy(&c->md);
        free(c);
    }
}

static void *gthread_main(void *arg)
{
    struct gthread *t = arg;
    t->arena.cap = 1 << 20;
    t->arena.buf = malloc(t->arena.cap);
    for (int i = 0; i < PENDING_REQUESTS; i++)
        request_new(t);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(t->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            on_event(t, ev);
    }
    return NULL;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 8192, n = 0, r;
    char *b = malloc(cap + 1);
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(b, cap * 2 + 1);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (b)
        b[n] = 0;
    return b;
}

int fs_grpc_start(char *err, size_t errlen)
{
    grpc_init();
    grpc_arg args[2];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = 2 * MAX_APPEND_BYTES + (1 << 20);
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = -1;
    grpc_channel_args ca = { 2, args };
    G.server = grpc_server_create(&ca, NULL);
    G.n = FS.cfg.grpc_threads;
    G.th = calloc((size_t)G.n, sizeof *G.th);
    if (!G.server || !G.th) {
        snprintf(err, errlen, "cannot create the gRPC server");
        return -1;
    }
    for (int i = 0; i < G.n; i++) {
        G.th[i].cq = grpc_completion_queue_create_for_next(NULL);
        G.th[i].index = i;
        grpc_server_register_completion_queue(G.server, G.th[i].cq, NULL);
    }
    char *key = slurp(FS.cfg.tls_key), *cert = slurp(FS.cfg.tls_cert);
    if (!key || !cert) {
        snprintf(err, errlen, "cannot read %s / %s", FS.cfg.tls_key, FS.cfg.tls_cert);
        free(key);
        free(cert);
        return -1;
    }
    grpc_ssl_pem_key_cert_pair pair = { key, cert };
    grpc_server_credentials *creds = grpc_ssl_server_credentials_create_ex(
        NULL, &pair, 1, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE, NULL);
    char addr[300];
    snprintf(addr, sizeof addr, strchr(FS.cfg.host, ':') ? "[%s]:%d" : "%s:%d", FS.cfg.host,
             FS.cfg.grpc_port);
    FS.grpc_bound = grpc_server_add_http2_port(G.server, addr, creds);
    grpc_server_credentials_release(creds);
    OPENSSL_cleanse(key, strlen(key));
    free(key);
    free(cert);
    if (!FS.grpc_bound) {
        snprintf(err, errlen, "cannot listen for gRPC on %s", addr);
        return -1;
    }
    grpc_server_start(G.server);
    for (int i = 0; i < G.n; i++)
        if (pthread_create(&G.th[i].th, NULL, gthread_main, &G.th[i]) != 0) {
            snprintf(err, errlen, "cannot start a gRPC thread");
            return -1;
        }
    return 0;
}

void fs_grpc_stop(void)
{
    /* process exit takes the server down; nothing to flush */
}
