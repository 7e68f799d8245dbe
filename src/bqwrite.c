/*
 * bqwrite.c -- Storage Write API client on gRPC C core. See bqwrite.h.
 *
 * gRPC core allows one send and one receive operation in flight per call at
 * a time. A connection therefore keeps its appends in a FIFO: the head is
 * being sent, the rest wait; a receive is always armed, and each response is
 * matched with the oldest append that has none yet (the API answers in order).
 * The call's final status is armed once at open and reported as
 * BQW_EV_CLOSED once every response before it has been delivered.
 */
#include "bqwrite.h"
#include "log.h"
#include "util.h"

#include "bigquery_storage_v1.pb-c.h"
#include "bqproto.pb-c.h"
#include "google_rpc_status.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The generated names are long: short ones for this file. */
typedef Google__Cloud__Bigquery__Storage__V1__AppendRowsRequest AppendReq;
typedef Google__Cloud__Bigquery__Storage__V1__AppendRowsRequest__ProtoData ProtoData;
typedef Google__Cloud__Bigquery__Storage__V1__AppendRowsResponse AppendResp;
typedef Google__Cloud__Bigquery__Storage__V1__ProtoSchema ProtoSchema;
typedef Google__Cloud__Bigquery__Storage__V1__ProtoRows ProtoRows;
typedef Google__Cloud__Bigquery__Storage__V1__WriteStream WriteStream;
typedef Google__Cloud__Bigquery__Storage__V1__StorageError StorageError;
typedef Google__Rpc__Status RpcStatus;

#define SVC "/google.cloud.bigquery.storage.v1.BigQueryWrite/"
#define MAX_RECV (64 << 20)

struct bqwrite {
    grpc_channel *channel;
    long timeout_ms;
    char quota_project[256];   /* "" if none */
};

static pthread_once_t grpc_once = PTHREAD_ONCE_INIT;
static void grpc_init_once(void) { grpc_init(); }

const char *bqw_code_name(int code)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED" };
    return code >= 0 && code <= 16 ? names[code] : "?";
}

static char *read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %m", path);
        return NULL;
    }
    struct buf b = { 0 };
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    if (!b.data)
        buf_append(&b, "", 0);
    return b.data;
}

int bqwrite_create(const struct bqwrite_opts *o, struct bqwrite **out, char *err, size_t errlen)
{
    pthread_once(&grpc_once, grpc_init_once);
    struct bqwrite *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->timeout_ms = o->timeout_ms ? o->timeout_ms : 30000;
    if (o->quota_project)
        snprintf(w->quota_project, sizeof w->quota_project, "%s", o->quota_project);
    char *roots = NULL;
    if (o->ca_file && !(roots = read_file(o->ca_file, err, errlen))) {
        free(w);
        return -1;
    }
    grpc_channel_credentials *creds = grpc_ssl_credentials_create(roots, NULL, NULL, NULL);
    free(roots);
    grpc_arg args[3];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = MAX_RECV;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = -1;
    /* its own TCP connection, not one shared with the process's other
     * channels to the same target (connections = N spreads the load) */
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
    args[2].value.integer = 1;
    grpc_channel_args ca = { o->own_connection ? 3 : 2, args };
    w->channel = grpc_channel_create(o->target, creds, &ca);
    grpc_channel_credentials_release(creds);
    if (!w->channel) {
        snprintf(err, errlen, "cannot create a gRPC channel to %s", o->target);
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

void bqwrite_free(struct bqwrite *w)
{
    if (!w)
        return;
    grpc_channel_destroy(w->channel);
    free(w);
}

/* ---- status helpers ---- */

static void set_status(struct bqw_status *st, int code, const char *msg, size_t len)
{
    st->code = code;
    st->storage_code = 0;
    if (len > sizeof st->message - 1)
        len = sizeof st->message - 1;
    memcpy(st->message, msg, len);
    st->message[len] = 0;
}

/* Reads a StorageError code out of google.rpc.Status details. */
static int storage_code_of(const RpcStatus *s)
{
    for (size_t i = 0; s && i < s->n_details; i++) {
        const Bqproto__Any *a = s->details[i];
        if (!a->type_url || !strstr(a->type_url, "StorageError") || !a->has_value)
            continue;
        StorageError *se = google__cloud__bigquery__storage__v1__storage_error__unpack(
            NULL, a->value.len, a->value.data);
        if (se) {
            int code = se->has_code ? (int)se->code : 0;
            google__cloud__bigquery__storage__v1__storage_error__free_unpacked(se, NULL);
            return code;
        }
    }
    return 0;
}

/* The status details trailer (grpc-status-details-bin) of an ended call. */
static int storage_code_from_trailers(const grpc_metadata_array *md)
{
    for (size_t i = 0; i < md->count; i++) {
        if (grpc_slice_str_cmp(md->metadata[i].key, "grpc-status-details-bin") != 0)
            continue;
        grpc_slice v = md->metadata[i].value;
        RpcStatus *s = google__rpc__status__unpack(NULL, GRPC_SLICE_LENGTH(v),
                                                   GRPC_SLICE_START_PTR(v));
        int code = storage_code_of(s);
        if (s)
            google__rpc__status__free_unpacked(s, NULL);
        return code;
    }
    return 0;
}

static grpc_slice bb_to_slice(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    grpc_byte_buffer_reader_init(&r, bb);
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    return s;
}

/* The call's metadata: the token, the routing header and, for user
 * credentials, the quota project. Returns the number of entries (2 or 3). */
static size_t make_md(const struct bqwrite *w, grpc_metadata md[3], char *auth, size_t alen,
                      char *route, size_t rlen, const char *token, const char *route_key,
                      const char *route_val)
{
    snprintf(auth, alen, "Bearer %s", token);
    snprintf(route, rlen, "%s=%s", route_key, route_val);
    memset(md, 0, 3 * sizeof *md);
    md[0].key = grpc_slice_from_static_string("authorization");
    md[0].value = grpc_slice_from_copied_string(auth);
    md[1].key = grpc_slice_from_static_string("x-goog-request-params");
    md[1].value = grpc_slice_from_copied_string(route);
    memset(auth, 0, alen);
    if (!w->quota_project[0])
        return 2;
    md[2].key = grpc_slice_from_static_string("x-goog-user-project");
    md[2].value = grpc_slice_from_copied_string(w->quota_project);
    return 3;
}

static void free_md(grpc_metadata md[3], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        grpc_slice_unref(md[i].key);
        grpc_slice_unref(md[i].value);
    }
}

/* One unary call: request bytes in, response bytes out (caller frees). */
static int unary(struct bqwrite *w, const char *method, const char *token, const char *route_key,
                 const char *route_val, const void *req, size_t reqlen, grpc_slice *resp,
                 struct bqw_status *st)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                         gpr_time_from_millis(w->timeout_ms, GPR_TIMESPAN));
    char path[128];
    snprintf(path, sizeof path, SVC "%s", method);
    grpc_slice mslice = grpc_slice_from_copied_string(path);
    grpc_call *call = grpc_channel_create_call(w->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                               mslice, NULL, deadline, NULL);
    grpc_slice_unref(mslice);
    char auth[4200], route[1200];
    grpc_metadata md[3];
    size_t nmd = make_md(w, md, auth, sizeof auth, route, sizeof route, token, route_key, route_val);
    grpc_slice body = grpc_slice_from_copied_buffer(req, reqlen);
    grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&body, 1);
    grpc_slice_unref(body);
    grpc_byte_buffer *recv = NULL;
    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    int tag;
    grpc_call_error ce = grpc_call_start_batch(call, ops, 6, &tag, NULL);
    if (ce == GRPC_CALL_OK)
        grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    else
        code = GRPC_STATUS_INTERNAL;
    set_status(st, (int)code, (const char *)GRPC_SLICE_START_PTR(details),
               GRPC_SLICE_LENGTH(details));
    st->storage_code = storage_code_from_trailers(&trailing);
    if (code == GRPC_STATUS_OK && recv) {
        *resp = bb_to_slice(recv);
    } else {
        *resp = grpc_empty_slice();
        if (code == GRPC_STATUS_OK)
            set_status(st, BQW_INTERNAL, "no response message", 19);
    }
    if (recv)
        grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(send);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    free_md(md, nmd);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    return st->code;
}

int bqwrite_create_stream(struct bqwrite *w, const char *token, const char *table_path,
                          bool pending, char *name, size_t namelen, struct bqw_status *st)
{
    Google__Cloud__Bigquery__Storage__V1__CreateWriteStreamRequest req =
        GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__CREATE_WRITE_STREAM_REQUEST__INIT;
    WriteStream ws = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__WRITE_STREAM__INIT;
    ws.has_type = 1;
    ws.type = pending ? GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__WRITE_STREAM__TYPE__PENDING :
                        GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__WRITE_STREAM__TYPE__COMMITTED;
    req.parent = (char *)table_path;
    req.write_stream = &ws;
    size_t len = google__cloud__bigquery__storage__v1__create_write_stream_request__get_packed_size(&req);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        set_status(st, BQW_INTERNAL, "out of memory", 13);
        return st->code;
    }
    google__cloud__bigquery__storage__v1__create_write_stream_request__pack(&req, buf);
    char route[1100];
    snprintf(route, sizeof route, "%s", table_path);
    grpc_slice resp;
    int code = unary(w, "CreateWriteStream", token, "parent", route, buf, len, &resp, st);
    free(buf);
    if (code == BQW_OK) {
        WriteStream *got = google__cloud__bigquery__storage__v1__write_stream__unpack(
            NULL, GRPC_SLICE_LENGTH(resp), GRPC_SLICE_START_PTR(resp));
        if (got && got->name) {
            snprintf(name, namelen, "%s", got->name);
        } else {
            set_status(st, BQW_INTERNAL, "CreateWriteStream answered without a name", 41);
            code = st->code;
        }
        if (got)
            google__cloud__bigquery__storage__v1__write_stream__free_unpacked(got, NULL);
    }
    grpc_slice_unref(resp);
    return code;
}

int bqwrite_get_stream(struct bqwrite *w, const char *token, const char *name, int *type,
                       struct bqw_status *st)
{
    Google__Cloud__Bigquery__Storage__V1__GetWriteStreamRequest req =
        GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__GET_WRITE_STREAM_REQUEST__INIT;
    req.name = (char *)name;
    uint8_t buf[2048];
    size_t len = google__cloud__bigquery__storage__v1__get_write_stream_request__get_packed_size(&req);
    if (len > sizeof buf) {
        set_status(st, BQW_INVALID_ARGUMENT, "stream name too long", 20);
        return st->code;
    }
    google__cloud__bigquery__storage__v1__get_write_stream_request__pack(&req, buf);
    grpc_slice resp;
    int code = unary(w, "GetWriteStream", token, "name", name, buf, len, &resp, st);
    if (code == BQW_OK && type) {
        WriteStream *got = google__cloud__bigquery__storage__v1__write_stream__unpack(
            NULL, GRPC_SLICE_LENGTH(resp), GRPC_SLICE_START_PTR(resp));
        *type = got && got->has_type ? (int)got->type : 0;
        if (got)
            google__cloud__bigquery__storage__v1__write_stream__free_unpacked(got, NULL);
    }
    grpc_slice_unref(resp);
    return code;
}

int bqwrite_finalize_stream(struct bqwrite *w, const char *token, const char *name,
                            int64_t *row_count, struct bqw_status *st)
{
    Google__Cloud__Bigquery__Storage__V1__FinalizeWriteStreamRequest req =
        GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__FINALIZE_WRITE_STREAM_REQUEST__INIT;
    req.name = (char *)name;
    uint8_t buf[2048];
    size_t len = google__cloud__bigquery__storage__v1__finalize_write_stream_request__get_packed_size(&req);
    if (len > sizeof buf) {
        set_status(st, BQW_INVALID_ARGUMENT, "stream name too long", 20);
        return st->code;
    }
    google__cloud__bigquery__storage__v1__finalize_write_stream_request__pack(&req, buf);
    grpc_slice resp;
    int code = unary(w, "FinalizeWriteStream", token, "name", name, buf, len, &resp, st);
    if (code == BQW_OK) {
        Google__Cloud__Bigquery__Storage__V1__FinalizeWriteStreamResponse *r =
            google__cloud__bigquery__storage__v1__finalize_write_stream_response__unpack(
                NULL, GRPC_SLICE_LENGTH(resp), GRPC_SLICE_START_PTR(resp));
        *row_count = r && r->has_row_count ? r->row_count : 0;
        if (r)
            google__cloud__bigquery__storage__v1__finalize_write_stream_response__free_unpacked(r, NULL);
    }
    grpc_slice_unref(resp);
    return code;
}

int bqwrite_batch_commit(struct bqwrite *w, const char *token, const char *table_path,
                         const char *stream, int *stream_error, struct bqw_status *st)
{
    Google__Cloud__Bigquery__Storage__V1__BatchCommitWriteStreamsRequest req =
        GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__BATCH_COMMIT_WRITE_STREAMS_REQUEST__INIT;
    char *names[1] = { (char *)stream };
    req.parent = (char *)table_path;
    req.n_write_streams = 1;
    req.write_streams = names;
    *stream_error = 0;
    uint8_t buf[4096];
    size_t len =
        google__cloud__bigquery__storage__v1__batch_commit_write_streams_request__get_packed_size(&req);
    if (len > sizeof buf) {
        set_status(st, BQW_INVALID_ARGUMENT, "stream name too long", 20);
        return st->code;
    }
    google__cloud__bigquery__storage__v1__batch_commit_write_streams_request__pack(&req, buf);
    grpc_slice resp;
    int code = unary(w, "BatchCommitWriteStreams", token, "parent", table_path, buf, len, &resp, st);
    if (code == BQW_OK) {
        Google__Cloud__Bigquery__Storage__V1__BatchCommitWriteStreamsResponse *r =
            google__cloud__bigquery__storage__v1__batch_commit_write_streams_response__unpack(
                NULL, GRPC_SLICE_LENGTH(resp), GRPC_SLICE_START_PTR(resp));
        if (!r) {
            set_status(st, BQW_INTERNAL, "BatchCommitWriteStreams: unreadable answer", 42);
            code = st->code;
        } else if (r->n_stream_errors) {
            StorageError *se = r->stream_errors[0];
            *stream_error = se->has_code ? (int)se->code : -1;
            const char *m = se->error_message ? se->error_message : "stream error";
            set_status(st, BQW_OK, m, strlen(m));
            st->storage_code = *stream_error;
        } else if (!r->commit_time) {
            *stream_error = -1;
            set_status(st, BQW_OK, "BatchCommitWriteStreams answered without a commit time", 55);
        }
        if (r)
            google__cloud__bigquery__storage__v1__batch_commit_write_streams_response__free_unpacked(r, NULL);
    }
    grpc_slice_unref(resp);
    return code;
}

/* ---- AppendRows ---- */

struct pending {
    struct pending *next;
    grpc_byte_buffer *bb;     /* NULL once sent */
};

struct bqw_conn {
    struct bqwrite *w;
    grpc_completion_queue *cq;
    grpc_call *call;
    char stream[1024];
    grpc_metadata md[3];
    size_t nmd;
    grpc_metadata_array initial, trailing;
    grpc_status_code code;
    grpc_slice details;
    grpc_byte_buffer *recv;
    struct pending *head, **tail;   /* appends without a response, oldest first */
    grpc_byte_buffer *sending;      /* the message whose send is in flight */
    size_t n_pending;
    bool send_busy, recv_armed, ended, status_done, md_sent;
    uint8_t *last_desc;             /* the writer schema last sent */
    size_t last_desc_len;
    struct bqw_row_error *row_errors;
    size_t n_row_errors;
    int tag_md, tag_send, tag_recv, tag_status;
};

static void start_next_send(struct bqw_conn *c);

static void arm_recv(struct bqw_conn *c)
{
    if (c->recv_armed || c->ended)
        return;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv;
    if (grpc_call_start_batch(c->call, &op, 1, &c->tag_recv, NULL) == GRPC_CALL_OK)
        c->recv_armed = true;
}

int bqw_conn_open(struct bqwrite *w, const char *token, const char *stream,
                  struct bqw_conn **out, struct bqw_status *st)
{
    struct bqw_conn *c = calloc(1, sizeof *c);
    if (!c) {
        set_status(st, BQW_INTERNAL, "out of memory", 13);
        return st->code;
    }
    c->w = w;
    c->tail = &c->head;
    snprintf(c->stream, sizeof c->stream, "%s", stream);
    c->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_slice m = grpc_slice_from_static_string(SVC "AppendRows");
    c->call = grpc_channel_create_call(w->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, m, NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    char auth[4200], route[1200];
    c->nmd = make_md(w, c->md, auth, sizeof auth, route, sizeof route, token, "write_stream",
                     stream);
    grpc_metadata_array_init(&c->initial);
    grpc_metadata_array_init(&c->trailing);
    c->details = grpc_empty_slice();
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = c->nmd;
    ops[0].data.send_initial_metadata.metadata = c->md;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &c->initial;
    grpc_op sop;
    memset(&sop, 0, sizeof sop);
    sop.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    sop.data.recv_status_on_client.trailing_metadata = &c->trailing;
    sop.data.recv_status_on_client.status = &c->code;
    sop.data.recv_status_on_client.status_details = &c->details;
    if (grpc_call_start_batch(c->call, ops, 2, &c->tag_md, NULL) != GRPC_CALL_OK ||
        grpc_call_start_batch(c->call, &sop, 1, &c->tag_status, NULL) != GRPC_CALL_OK) {
        set_status(st, BQW_INTERNAL, "cannot start the AppendRows call", 32);
        bqw_conn_close(c);
        return st->code;
    }
    c->md_sent = true;
    arm_recv(c);
    set_status(st, BQW_OK, "", 0);
    *out = c;
    return BQW_OK;
}

int bqw_conn_append(struct bqw_conn *c, const void *descriptor, size_t dlen,
                    const char *const *rows, const size_t *lens, size_t n, int64_t offset)
{
    if (c->ended)
        return -1;
    AppendReq req = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_REQUEST__INIT;
    ProtoData pd = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_REQUEST__PROTO_DATA__INIT;
    ProtoSchema ps = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__PROTO_SCHEMA__INIT;
    ProtoRows pr = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__PROTO_ROWS__INIT;
    Bqproto__Int64Value off = BQPROTO__INT64_VALUE__INIT;
    Bqproto__DescriptorProto *desc = NULL;
    bool first = c->last_desc == NULL;
    bool new_schema = first || c->last_desc_len != dlen || memcmp(c->last_desc, descriptor, dlen);
    if (new_schema) {
        desc = bqproto__descriptor_proto__unpack(NULL, dlen, descriptor);
        if (!desc)
            return -1;
        ps.proto_descriptor = desc;
        pd.writer_schema = &ps;
        req.write_stream = c->stream;   /* with every schema: harmless, and needed on the first */
        /* a column missing from a row takes its default value expression (or
         * NULL without one), as insertAll does; sticky for the connection */
        req.has_default_missing_value_interpretation = 1;
        req.default_missing_value_interpretation =
            GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_REQUEST__MISSING_VALUE_INTERPRETATION__DEFAULT_VALUE;
    }
    if (offset >= 0) {
        off.has_value = 1;
        off.value = offset;
        req.offset = &off;
    }
    ProtobufCBinaryData *bins = malloc((n ? n : 1) * sizeof *bins);
    if (!bins) {
        if (desc)
            bqproto__descriptor_proto__free_unpacked(desc, NULL);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        bins[i].data = (uint8_t *)rows[i];
        bins[i].len = lens[i];
    }
    pr.n_serialized_rows = n;
    pr.serialized_rows = bins;
    pd.rows = &pr;
    req.rows_case = GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_REQUEST__ROWS_PROTO_ROWS;
    req.proto_rows = &pd;
    size_t len = google__cloud__bigquery__storage__v1__append_rows_request__get_packed_size(&req);
    grpc_slice s = grpc_slice_malloc(len);
    google__cloud__bigquery__storage__v1__append_rows_request__pack(&req, GRPC_SLICE_START_PTR(s));
    free(bins);
    if (desc)
        bqproto__descriptor_proto__free_unpacked(desc, NULL);
    if (new_schema) {
        free(c->last_desc);
        c->last_desc = malloc(dlen ? dlen : 1);
        if (c->last_desc)
            memcpy(c->last_desc, descriptor, dlen);
        c->last_desc_len = dlen;
    }
    struct pending *p = calloc(1, sizeof *p);
    if (!p) {
        grpc_slice_unref(s);
        return -1;
    }
    p->bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    *c->tail = p;
    c->tail = &p->next;
    c->n_pending++;
    start_next_send(c);
    return 0;
}

/* Starts sending the oldest append not yet sent, if no send is in flight. */
static void start_next_send(struct bqw_conn *c)
{
    if (c->send_busy || c->ended)
        return;
    struct pending *p = c->head;
    while (p && !p->bb)
        p = p->next;
    if (!p)
        return;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = p->bb;
    if (grpc_call_start_batch(c->call, &op, 1, &c->tag_send, NULL) == GRPC_CALL_OK) {
        c->send_busy = true;
        c->sending = p->bb;   /* freed when the send completes */
        p->bb = NULL;
    }
}

size_t bqw_conn_pending(const struct bqw_conn *c) { return c->n_pending; }

static void parse_response(struct bqw_conn *c, grpc_slice s, struct bqw_result *r)
{
    AppendResp *resp = google__cloud__bigquery__storage__v1__append_rows_response__unpack(
        NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    r->event = BQW_EV_RESULT;
    r->offset = -1;
    free(c->row_errors);
    c->row_errors = NULL;
    c->n_row_errors = 0;
    if (!resp) {
        r->ok = false;
        set_status(&r->error, BQW_INTERNAL, "unreadable AppendRowsResponse", 29);
        return;
    }
    r->schema_changed = resp->updated_schema != NULL;
    if (resp->n_row_errors) {
        c->row_errors = calloc(resp->n_row_errors, sizeof *c->row_errors);
        for (size_t i = 0; c->row_errors && i < resp->n_row_errors; i++) {
            const Google__Cloud__Bigquery__Storage__V1__RowError *e = resp->row_errors[i];
            c->row_errors[i].index = e->has_index ? e->index : -1;
            snprintf(c->row_errors[i].message, sizeof c->row_errors[i].message, "%s",
                     e->message ? e->message : "row error");
        }
        c->n_row_errors = c->row_errors ? resp->n_row_errors : 0;
    }
    if (resp->response_case ==
        GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_RESPONSE__RESPONSE_APPEND_RESULT &&
        !resp->n_row_errors) {
        r->ok = true;
        const Bqproto__Int64Value *o = resp->append_result ? resp->append_result->offset : NULL;
        r->offset = o && o->has_value ? o->value : -1;
    } else {
        r->ok = false;
        const RpcStatus *e = resp->response_case ==
            GOOGLE__CLOUD__BIGQUERY__STORAGE__V1__APPEND_ROWS_RESPONSE__RESPONSE_ERROR ?
            resp->error : NULL;
        const char *msg = e && e->message ? e->message : "row errors";
        set_status(&r->error, e && e->has_code ? e->code : BQW_INVALID_ARGUMENT, msg, strlen(msg));
        r->error.storage_code = storage_code_of(e);
    }
    r->row_errors = c->row_errors;
    r->n_row_errors = c->n_row_errors;
    google__cloud__bigquery__storage__v1__append_rows_response__free_unpacked(resp, NULL);
}

int bqw_conn_next(struct bqw_conn *c, long timeout_ms, struct bqw_result *r)
{
    memset(r, 0, sizeof *r);
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
    for (;;) {
        if (c->ended && c->status_done && !c->recv_armed) {
            r->event = BQW_EV_CLOSED;
            set_status(&r->status, (int)c->code, (const char *)GRPC_SLICE_START_PTR(c->details),
                       GRPC_SLICE_LENGTH(c->details));
            r->status.storage_code = storage_code_from_trailers(&c->trailing);
            if (r->status.code == BQW_OK)
                set_status(&r->status, BQW_UNAVAILABLE, "the server ended the call", 25);
            return 0;
        }
        grpc_event ev = grpc_completion_queue_next(c->cq, deadline, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT)
            return 0;   /* r->event == BQW_EV_NONE */
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        if (ev.tag == &c->tag_send) {
            c->send_busy = false;
            if (c->sending) {
                grpc_byte_buffer_destroy(c->sending);
                c->sending = NULL;
            }
            if (!ev.success)
                c->ended = true;
            start_next_send(c);
        } else if (ev.tag == &c->tag_recv) {
            c->recv_armed = false;
            if (!ev.success || !c->recv) {
                c->ended = true;   /* no more messages: the status follows */
                continue;
            }
            grpc_slice s = bb_to_slice(c->recv);
            grpc_byte_buffer_destroy(c->recv);
            c->recv = NULL;
            struct pending *p = c->head;
            if (p) {   /* the oldest append gets this response */
                c->head = p->next;
                if (!c->head)
                    c->tail = &c->head;
                if (p->bb)
                    grpc_byte_buffer_destroy(p->bb);
                free(p);
                c->n_pending--;
            }
            parse_response(c, s, r);
            grpc_slice_unref(s);
            arm_recv(c);
            return 0;
        } else if (ev.tag == &c->tag_status) {
            c->status_done = true;
            c->ended = true;
        } else if (ev.tag == &c->tag_md) {
            /* initial metadata exchanged */
        }
    }
}

void bqw_conn_close(struct bqw_conn *c)
{
    if (!c)
        return;
    if (c->call) {
        grpc_call_cancel(c->call, NULL);
        /* drain every operation in flight before destroying */
        while (c->send_busy || c->recv_armed || (c->md_sent && !c->status_done)) {
            grpc_event ev = grpc_completion_queue_next(
                c->cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(5000, GPR_TIMESPAN)),
                NULL);
            if (ev.type == GRPC_QUEUE_TIMEOUT)
                break;
            if (ev.tag == &c->tag_send) {
                c->send_busy = false;
                if (c->sending) {
                    grpc_byte_buffer_destroy(c->sending);
                    c->sending = NULL;
                }
            } else if (ev.tag == &c->tag_recv) {
                c->recv_armed = false;
                if (c->recv) {
                    grpc_byte_buffer_destroy(c->recv);
                    c->recv = NULL;
                }
            } else if (ev.tag == &c->tag_status)
                c->status_done = true;
        }
        grpc_call_unref(c->call);
    }
    while (c->head) {
        struct pending *p = c->head;
        c->head = p->next;
        if (p->bb)
            grpc_byte_buffer_destroy(p->bb);
        free(p);
    }
    grpc_completion_queue_shutdown(c->cq);
    while (grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(c->cq);
    grpc_metadata_array_destroy(&c->initial);
    grpc_metadata_array_destroy(&c->trailing);
    grpc_slice_unref(c->details);
    free_md(c->md, c->nmd);
    free(c->last_desc);
    free(c->row_errors);
    free(c);
}
