/*
 * bqrest.h -- the BigQuery REST wire format for tabledata.insertAll: request
 * bodies, gzip, response parsing and error classification. Pure functions
 * (no I/O), so that the sender's decisions can be tested byte for byte.
 * Facts: ../shared/reference/bigquery-wire.md section 3.
 *
 * Thread safety: reentrant (a struct bqrest_gz is used by one thread at a time).
 */
#ifndef RELAY_BQREST_H
#define RELAY_BQREST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* One row to insert: its JSON object text (already validated at ingest) and
 * its insertId. */
struct bq_row {
    const char *json;         /* a non-empty JSON object (validated at ingest) */
    size_t len;
    const char *insert_id;    /* NUL-terminated UTF-8, <= 128 chars, or NULL for none */
};

struct bq_insert_opts {
    bool skip_invalid_rows;
    bool ignore_unknown_values;
    const char *template_suffix;   /* or NULL */
};

/* Overhead of the request envelope per row, for sizing batches:
 * {"insertId":"<id>","json":<row>}, */
#define BQREST_ROW_OVERHEAD(id_len) ((id_len) + 24)

/* Appends the TableDataInsertAllRequest for rows to out. Returns 0 or -1 (ENOMEM). */
int bqrest_insertall_body(struct buf *out, const struct bq_row *rows, size_t n,
                          const struct bq_insert_opts *o);

/* gzip. A struct bqrest_gz is a compressor for one level (1..9, or 0 for
 * zlib's default, 6), reused from call to call; one thread at a time.
 * bqrest_gz_new() returns NULL (errno EINVAL for a bad level, ENOMEM).
 * bqrest_gz_compress() writes one gzip member of in[0..len) into out
 * (replacing its contents, NUL-terminated past out->len); 0 or -1 (ENOMEM).
 * bqrest_gzip() is the same with a compressor made for the one call. */
struct bqrest_gz;
struct bqrest_gz *bqrest_gz_new(int level);
void bqrest_gz_free(struct bqrest_gz *z);
int bqrest_gz_compress(struct bqrest_gz *z, const void *in, size_t len, struct buf *out);
int bqrest_gzip(const void *in, size_t len, struct buf *out, int level);

/* Append the URL path of insertAll / tables.get for a table (no host) to out:
 * /bigquery/v2/projects/P/datasets/D/tables/T/insertAll. Bytes outside
 * [A-Za-z0-9_.~-] in a component are percent-encoded (so '$' of a partition
 * decorator becomes %24). Returns 0, or -1 (EINVAL for a NULL or empty
 * component, ENOMEM) leaving out unchanged. */
int bqrest_insertall_path(struct buf *out, const char *project, const char *dataset,
                          const char *table);
int bqrest_table_path(struct buf *out, const char *project, const char *dataset,
                      const char *table);
/* .../tables/T:testIamPermissions, and /bigquery/v2/projects/P/datasets/D (datasets.get). */
int bqrest_testiam_path(struct buf *out, const char *project, const char *dataset,
                        const char *table);
int bqrest_dataset_path(struct buf *out, const char *project, const char *dataset);

/* /bigquery/v2/projects/P/datasets/D/tables (tables.insert). */
int bqrest_tables_path(struct buf *out, const char *project, const char *dataset);

/* What create_table creates (both APIs): the table's id (its $decorator, if
 * any, is dropped), its schema (BigQuery's JSON: a list of fields,
 * {"fields": [...]} or a table resource's {"schema": {"fields": [...]}}),
 * and the optional partitioning and clustering keys of the destination. */
struct bq_table_spec {
    const char *project, *dataset, *table;
    const char *schema_json;
    size_t schema_len;
    const char *time_partitioning;   /* DAY, HOUR, MONTH, YEAR, or NULL */
    const char *partition_field;     /* or NULL: ingestion time */
    uint64_t partition_expiration_ms;   /* 0: none */
    const char *clustering;          /* comma-separated columns, or NULL */
};

/* Appends the tables.insert request body (a Table resource) to out. Returns
 * 0, or -1 with err saying what is wrong (no fields in the schema, ENOMEM). */
int bqrest_table_insert_body(const struct bq_table_spec *t, struct buf *out, char *err,
                             size_t errlen);

/* ---- responses ---- */

enum bq_row_fate {
    BQ_ROW_INSERTED = 0,
    BQ_ROW_INVALID,    /* rejected for good (reason "invalid" or another permanent one) */
    BQ_ROW_RETRY,      /* "stopped", backendError, internalError, timeout, rate/quota: resend */
};

struct bq_row_result {
    enum bq_row_fate fate;
    char reason[48];       /* the reason of the error that decided the fate, "" if inserted */
    char location[128];    /* the column, if given */
    char message[512];     /* BigQuery's message */
};

/* Parses a 200 response of insertAll for a request of n rows, filling
 * results[0..n) (every row BQ_ROW_INSERTED unless listed in insertErrors).
 * Returns 0, or -1 with err set if the body is not a valid response (then the
 * caller must treat the whole request as failed and retry it). */
int bqrest_parse_insertall(const char *body, size_t len, size_t n,
                           struct bq_row_result *results, char *err, size_t errlen);

/* What to do with a whole request, from its HTTP status and error body. */
enum bq_action {
    BQ_OK = 0,          /* 2xx: look at per-row results */
    BQ_RETRY,           /* 429, 5xx, 408, network errors: back off (honour Retry-After) and resend */
    BQ_RATE_LIMITED,    /* 403 (or 400) rateLimitExceeded, or RESOURCE_EXHAUSTED without a
                           reason: back off seconds and resend */
    BQ_QUOTA,           /* 403 (or 400) quotaExceeded: back off minutes and resend */
    BQ_UNAUTHORIZED,    /* 401: refresh the token once and resend */
    BQ_NOT_FOUND,       /* 404: the table (or dataset/project) is missing: park the destination */
    BQ_TOO_LARGE,       /* 400 payload too large / too many rows, 413: split the batch */
    BQ_BAD_REQUEST,     /* other 400 (invalid...): bisect to find the rows at fault */
    BQ_PERMANENT,       /* other 4xx (accessDenied, billingNotEnabled, ...): dead-letter */
};

struct bq_error {
    long http_status;
    char reason[48];       /* error.errors[0].reason, or "" */
    char status[48];       /* error.status, e.g. "RESOURCE_EXHAUSTED", or "" */
    char message[512];     /* error.message (or the start of a non-JSON body) */
};

/* Classifies a response. body may be NULL/empty or not JSON (proxies). Fills e. */
enum bq_action bqrest_classify(long http_status, const char *body, size_t len,
                               struct bq_error *e);

const char *bqrest_action_name(enum bq_action a);

#endif
