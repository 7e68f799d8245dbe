/*
 * bqwrite.h -- a client of the BigQuery Storage Write API over gRPC C core,
 * with protobuf-c for the messages (generated from proto/).
 *
 * A struct bqwrite is a TLS channel to one endpoint. Unary calls
 * (CreateWriteStream, GetWriteStream, FinalizeWriteStream) block until they
 * finish or time out. An AppendRows connection (struct bqw_conn) is one
 * bidirectional call: appends are queued and sent in order, several may be in
 * flight, and results come back in the same order through bqw_conn_next().
 * The writer schema (a serialized DescriptorProto) goes with the first append
 * of each connection, as the API requires.
 *
 * Every call carries "authorization: Bearer <token>" (the caller's OAuth
 * token) and the routing header. TLS is always verified: against ca_file when
 * given, else the system's roots.
 *
 * Threads: a struct bqwrite and its connections are used by one thread.
 */
#ifndef RELAY_BQWRITE_H
#define RELAY_BQWRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* gRPC status codes used by callers (google.rpc.Code) */
enum {
    BQW_OK = 0, BQW_CANCELLED = 1, BQW_UNKNOWN = 2, BQW_INVALID_ARGUMENT = 3,
    BQW_DEADLINE_EXCEEDED = 4, BQW_NOT_FOUND = 5, BQW_ALREADY_EXISTS = 6,
    BQW_PERMISSION_DENIED = 7, BQW_RESOURCE_EXHAUSTED = 8, BQW_FAILED_PRECONDITION = 9,
    BQW_ABORTED = 10, BQW_OUT_OF_RANGE = 11, BQW_UNIMPLEMENTED = 12, BQW_INTERNAL = 13,
    BQW_UNAVAILABLE = 14, BQW_UNAUTHENTICATED = 16,
};

struct bqw_status {
    int code;                 /* gRPC status code, BQW_OK on success */
    int storage_code;         /* StorageError code from the status details, 0 if none */
    char message[512];
};

struct bqwrite_opts {
    const char *target;       /* host:port, e.g. bigquerystorage.googleapis.com:443 */
    const char *ca_file;      /* PEM roots instead of the system's, or NULL */
    long timeout_ms;          /* unary calls; 0: 30000 */
    const char *quota_project;/* sent as x-goog-user-project, or NULL */
    bool own_connection;      /* a TCP connection of its own (gRPC shares them by target) */
};

struct bqwrite;

int bqwrite_create(const struct bqwrite_opts *o, struct bqwrite **out, char *err, size_t errlen);
void bqwrite_free(struct bqwrite *w);

/* CreateWriteStream of type COMMITTED (or PENDING) on table_path
 * ("projects/P/datasets/D/tables/T"); the stream's name goes to name. */
int bqwrite_create_stream(struct bqwrite *w, const char *token, const char *table_path,
                          bool pending, char *name, size_t namelen, struct bqw_status *st);
/* GetWriteStream: does it exist, is it finalized (has a commit/finalize time)? */
int bqwrite_get_stream(struct bqwrite *w, const char *token, const char *name, int *type,
                       struct bqw_status *st);
/* FinalizeWriteStream: *row_count gets the stream's final row count. */
int bqwrite_finalize_stream(struct bqwrite *w, const char *token, const char *name,
                            int64_t *row_count, struct bqw_status *st);

/* BatchCommitWriteStreams of one finalized PENDING stream of table_path.
 * Returns the call's gRPC code. On BQW_OK, *stream_error is 0 when the
 * stream was committed now, else the StorageError code the service gave for
 * it (BQW_SE_STREAM_ALREADY_COMMITTED: committed earlier; -1: no code), with
 * the message in st. */
enum { BQW_SE_TABLE_NOT_FOUND = 1, BQW_SE_STREAM_ALREADY_COMMITTED = 2, BQW_SE_STREAM_NOT_FOUND = 3,
       BQW_SE_INVALID_STREAM_TYPE = 4, BQW_SE_INVALID_STREAM_STATE = 5, BQW_SE_STREAM_FINALIZED = 6 };
int bqwrite_batch_commit(struct bqwrite *w, const char *token, const char *table_path,
                         const char *stream, int *stream_error, struct bqw_status *st);

/* ---- AppendRows ---- */

struct bqw_conn;

/* Opens an AppendRows call to stream (a full stream name, or the table's
 * ".../streams/_default"). */
int bqw_conn_open(struct bqwrite *w, const char *token, const char *stream,
                  struct bqw_conn **out, struct bqw_status *st);

/* Queues an append of n serialized rows (rows[i], lens[i]) at offset (-1:
 * none, as on the default stream). descriptor is the serialized
 * DescriptorProto of the rows, sent with the connection's first append (and
 * again when it changes). The bytes are copied. Returns 0, or -1 if the
 * connection is closed. */
int bqw_conn_append(struct bqw_conn *c, const void *descriptor, size_t dlen,
                    const char *const *rows, const size_t *lens, size_t n, int64_t offset);

enum bqw_event { BQW_EV_NONE = 0, BQW_EV_RESULT, BQW_EV_CLOSED };

struct bqw_row_error {
    int64_t index;
    char message[256];
};

/* The answer to one append, in order. */
struct bqw_result {
    enum bqw_event event;
    /* BQW_EV_RESULT: */
    bool ok;                   /* rows appended */
    int64_t offset;            /* where they landed (-1 when the server gives none) */
    struct bqw_status error;   /* when !ok: the in-stream error */
    struct bqw_row_error *row_errors;   /* when !ok: rows at fault (owned by the conn until the next call) */
    size_t n_row_errors;
    bool schema_changed;       /* updated_schema was present */
    /* BQW_EV_CLOSED: the call ended; status says why. Appends without a
     * result were not acknowledged and must be resent on a new connection. */
    struct bqw_status status;
};

/* Waits up to timeout_ms for the next result or the end of the call. */
int bqw_conn_next(struct bqw_conn *c, long timeout_ms, struct bqw_result *r);
/* Appends sent or queued that have no result yet. */
size_t bqw_conn_pending(const struct bqw_conn *c);
void bqw_conn_close(struct bqw_conn *c);

const char *bqw_code_name(int code);

#endif
