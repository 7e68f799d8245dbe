/*
 * fastsink.h -- the fast sink's shared pieces (see docs/emulator.md, "The fast
 * sink"). A C stand-in for BigQuery that speaks the same wire protocols as
 * tools/bqemu (HTTPS insertAll + tables.get + OAuth token endpoint; gRPC
 * Storage Write API over TLS), checks what it receives, counts rows and
 * stores none, so that a benchmark measures relayd rather than the sink.
 *
 * Modules:
 *   fastsink.c     options, key generation, ready file, stats, signals, main
 *   fs_auth.c      the service account it trusts: JWT (RS256) checks, tokens
 *   fs_http.c      HTTPS/1.1 server (epoll, OpenSSL): token, tables.get, insertAll
 *   fs_json.c      the insertAll body check (one pass, no allocation)
 *   fs_grpc.c      BigQueryWrite over gRPC C core: AppendRows, streams
 */
#ifndef FASTSINK_H
#define FASTSINK_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <openssl/evp.h>

#define FS_MAX_TABLES 64
#define FS_MAX_REQUEST_BYTES 10485760   /* insertAll body after decompression */
#define FS_MAX_ROWS 50000               /* insertAll rows per request */

/* Relaxed counters: each is added once per request (never per row). */
typedef _Atomic uint64_t fs_counter;

static inline void fs_add(fs_counter *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t fs_get(fs_counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

struct fs_table {
    char project[128], dataset[128], table[256];
    json_t *fields;            /* normalised schema fields (legacy type names, mode set) */
    char *resource;            /* the tables.get answer, built at start */
    size_t resource_len;
    fs_counter insertall_rows, storage_rows, storage_rows_pending;
};

struct fs_stats {
    /* HTTPS */
    fs_counter http_connections, http_requests, http_bytes_in, http_bytes_out;
    fs_counter http_4xx, http_5xx;
    fs_counter token_requests, tokens_minted, token_failures, auth_failures;
    fs_counter tables_get;
    fs_counter insertall_requests, insertall_rows, insertall_rejected;
    fs_counter insertall_gzip_requests, insertall_body_bytes, insertall_decoded_bytes;
    /* gRPC */
    fs_counter grpc_calls, grpc_auth_failures, grpc_errors;
    fs_counter append_calls, append_requests, append_bytes, append_errors;
    fs_counter storage_rows, storage_rows_pending, storage_rows_committed_pending;
    fs_counter offset_already_exists, offset_out_of_range;
    fs_counter streams_created, streams_finalized, streams_committed, flush_rows;
};

struct fs_config {
    const char *host;
    int port, grpc_port;       /* 0: any free port; grpc_port < 0: no gRPC service */
    const char *tls_cert, *tls_key;
    const char *ready_file;
    const char *key_out;       /* where the generated service-account key goes */
    const char *project;       /* of the generated service account */
    const char *sa_email;
    int threads;               /* HTTPS worker threads */
    int grpc_threads;
    int token_lifetime;        /* seconds */
    bool quiet;
};

/* The sink's global state. */
struct fs {
    struct fs_config cfg;
    struct fs_stats st;
    struct fs_table tables[FS_MAX_TABLES];
    size_t n_tables;
    char base_url[128];
    char token_uri[160];
    int https_port;
    int grpc_bound;
    volatile sig_atomic_t stop;
    double start_mono;
};

extern struct fs FS;

/* ---- fastsink.c ---- */
double fs_mono(void);
struct fs_table *fs_find_table(const char *p, size_t pl, const char *d, size_t dl, const char *t,
                               size_t tl);
bool fs_dataset_known(const char *p, size_t pl, const char *d, size_t dl);
/* The stats document (caller frees). */
char *fs_stats_json(void);
void fs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- fs_auth.c ---- */
#define FS_SCOPE_BIGQUERY   1u   /* .../auth/bigquery */
#define FS_SCOPE_INSERTDATA 2u   /* .../auth/bigquery.insertdata */
#define FS_SCOPE_CLOUD      4u   /* .../auth/cloud-platform */
#define FS_SCOPES_INSERT (FS_SCOPE_BIGQUERY | FS_SCOPE_INSERTDATA | FS_SCOPE_CLOUD)
#define FS_SCOPES_TABLE  (FS_SCOPE_BIGQUERY | FS_SCOPE_CLOUD)

/* Generates the service account (RSA 2048) and writes its key file. */
int fs_auth_init(const char *key_out, const char *project, const char *email,
                 const char *token_uri, char *err, size_t errlen);
/* The token endpoint: form body in, (status, JSON body) out. */
int fs_auth_token(const char *body, size_t len, const char *content_type, char *out,
                  size_t outlen);
/* A bearer token's scopes: -1 unknown, -2 expired, else the FS_SCOPE_* set. */
int fs_auth_check(const char *tok, size_t len);

/* ---- fs_json.c ---- */
enum fs_json_rc { FS_JSON_OK = 0, FS_JSON_PARSE = 1, FS_JSON_INVALID = 2 };
/* Checks an insertAll body; on success *rows is the number of rows. On
 * failure msg holds Google's kind of message. */
int fs_json_insertall(const char *body, size_t len, size_t *rows, char *msg, size_t msglen);

/* ---- fs_http.c ---- */
int fs_http_start(char *err, size_t errlen);
void fs_http_stop(void);

/* ---- fs_grpc.c ---- */
int fs_grpc_start(char *err, size_t errlen);
void fs_grpc_stop(void);

#endif
