/*
 * conf.h -- relayd's configuration: an INI file parsed with libinih.
 *
 * Every key, its default and its meaning is documented in
 * docs/configuration.md; conf_defaults() is the single source of the
 * defaults. conf_load() rejects unknown sections and keys and malformed
 * values with a message that names the file, line, section and key.
 *
 * Ownership: struct conf owns every string and array in it; conf_free()
 * releases them. Not thread-safe; the daemon loads a new conf and swaps it in.
 */
#ifndef RELAY_CONF_H
#define RELAY_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CONF_DEFAULT_PATH "/etc/relayd/relayd.conf"
#define CONF_MAX_DESTS 256
#define CONF_MAX_CONNECTIONS 16    /* connections per destination (api = storage) */
#define CONF_NAME_MAX 128        /* longest destination name */

enum conf_durability {
    DURABILITY_FSYNC = 0,  /* ack after the commit is on stable storage */
    DURABILITY_OS,         /* ack after the commit is in the kernel; synced every sync_interval */
    DURABILITY_NONE,       /* ack after the commit is in the kernel; never synced (benchmarks) */
};

enum conf_api { API_INSERTALL = 0, API_STORAGE };

struct conf_dest {
    char *name;            /* the section's name: what producers write after '@' */
    /* where: a destination without project and dataset only queues (no delivery) */
    char *project, *dataset;
    char *table;           /* BigQuery table id; NULL: the destination's name */
    enum conf_api api;
    char *credentials;     /* "adc", "metadata" or a JSON key file */
    unsigned credentials_line, ca_file_line, schema_file_line;   /* where set (0: default) */
    char *endpoint;        /* https://bigquery.googleapis.com */
    char *ca_file;         /* extra CA bundle; TLS is always verified */
    char *template_suffix; /* insertAll templateSuffix, or NULL */
    bool gzip, skip_invalid_rows, ignore_unknown_values;
    /* batching */
    uint64_t batch_rows, batch_bytes, flush_interval_ms, max_inflight, request_timeout_ms;
    uint64_t max_inflight_bytes;  /* row bytes taken from the queue and not yet settled */
    uint64_t connections;    /* api = storage: AppendRows connections draining the queue */
    unsigned table_line, connections_line;   /* where set (0: default) */
    /* retrying */
    uint64_t retry_base_ms, retry_cap_ms, rate_limit_wait_ms, quota_wait_ms, park_wait_ms;
    uint64_t max_age_ms;   /* 0: records never expire */
    /* routing and table management (both APIs) */
    char *table_time_field;  /* shard by this top-level field's time; NULL: ingest time */
    bool create_table;       /* create missing tables (needs schema_file) */
    char *time_partitioning; /* DAY, HOUR, MONTH, YEAR or NULL */
    char *partition_field;   /* column for time partitioning, or NULL: ingestion time */
    char *clustering;        /* comma-separated columns, or NULL */
    uint64_t partition_expiration_ms;
    /* api = storage */
    bool exactly_once;     /* delivery = exactly_once (committed stream + offsets) */
    char *schema_file;     /* BigQuery JSON schema; NULL: fetched with tables.get */
    char *storage_endpoint;/* host:port of the Storage Write API */
    /* mode = batch (api = storage): PENDING streams committed atomically */
    bool batch_mode;
    uint64_t batch_commit_rows;        /* cut a batch at this many rows */
    uint64_t batch_commit_interval_ms; /* ... or when its stream is this old */
    uint64_t batch_commit_idle_ms;     /* ... or the queue was empty this long (0: off) */
    unsigned mode_line, delivery_line, table_time_field_line;   /* where set (0: default) */
};

/* [forward] route = PATTERN DESTINATION */
struct conf_route {
    char *pattern;         /* fluentd-style tag pattern (forward.h: fwd_tag_match) */
    char *dest;
    unsigned line;
};

/* True if d names a BigQuery table to deliver to (project and dataset set). */
bool conf_dest_delivers(const struct conf_dest *d);

struct conf {
    char *path;                    /* the file it was loaded from, or NULL */

    /* [relayd] */
    int log_level;                 /* enum log_level */
    char *control_socket;
    mode_t control_socket_mode;
    char *metrics_listen;          /* NULL: no metrics endpoint */

    /* [spool] */
    char *spool_dir;
    unsigned spool_dir_line, socket_line, control_socket_line;   /* 0: default */
    uint64_t max_spool_bytes;
    enum conf_durability durability;
    uint64_t sync_interval_ms;
    uint64_t dlq_max_bytes;        /* 0: bounded only by max_spool_bytes */
    uint64_t dlq_max_age_ms;       /* 0: dead letters are kept until replayed or purged */

    /* [ingest] */
    char *socket_path;
    mode_t socket_mode;
    uid_t socket_uid;              /* socket_owner resolved; (uid_t)-1: relayd's own */
    gid_t socket_gid;              /* socket_group resolved; (gid_t)-1: relayd's own */
    bool allow_any_uid;            /* allowed_uids = * */
    uid_t *allowed_uids;
    size_t n_allowed_uids;
    gid_t *allowed_gids;
    size_t n_allowed_gids;
    uint64_t max_record_bytes;
    uint64_t max_connections;
    uint64_t full_wait_ms;
    uint64_t max_pending_bytes;    /* read but not yet committed, across connections */
    uint64_t max_depth;            /* JSON nesting limit */
    char *default_table;           /* destination for records with no '@table' */

    /* [forward]: the Fluent forward input (off unless socket or listen is set) */
    char *forward_socket;          /* Unix socket path, or NULL */
    unsigned forward_socket_line;
    mode_t forward_socket_mode;
    char *forward_listen;          /* loopback HOST:PORT for TCP, or NULL */
    char *forward_time_key;        /* column for the event time, or NULL: not kept */
    int forward_time_format;       /* enum fwd_time_format */
    uint64_t forward_max_message_bytes;
    struct conf_route *routes;     /* tag -> destination, first match wins */
    size_t n_routes;

    struct conf_dest *dests;
    size_t n_dests;
};

/* Fills c with the defaults (allocating the default strings). */
void conf_defaults(struct conf *c);

/* Loads path over the defaults. On error returns -1 and writes a message like
 * "relayd.conf:12: [spool] max_spool_bytes: expected a size such as 512M or 4G, got 'lots'"
 * into err; c is then left freed. */
int conf_load(const char *path, struct conf *c, char *err, size_t errlen);

/* Checks cross-key rules (e.g. default_table names a destination). Called by
 * conf_load; exposed for tests. Returns 0 or -1 with err set. */
int conf_validate(const struct conf *c, char *err, size_t errlen);

/* Returns the destination named name[0..len), or NULL. */
const struct conf_dest *conf_find_dest(const struct conf *c, const char *name, size_t len);

/* True if name[0..len) is a valid destination name: 1..CONF_NAME_MAX of
 * [A-Za-z0-9_.-], starting with a letter, digit or '_'. */
bool conf_valid_name(const char *name, size_t len);

/* True if t is a table id, with an optional $partition decorator. */
bool conf_valid_table(const char *t);

/* True if a peer with this uid/gid may use the sockets: root, relayd's own uid,
 * allowed_uids (or '*'), or membership (primary or supplementary) of a group
 * in allowed_gids or of socket_group. May look up the user's groups (NSS). */
bool conf_peer_allowed(const struct conf *c, uid_t uid, gid_t gid);
/* The same, also accepting membership through groups[0..n) (the peer
 * process's own supplementary groups, from SO_PEERGROUPS). */
bool conf_peer_allowed_groups(const struct conf *c, uid_t uid, gid_t gid, const gid_t *groups,
                              size_t n);

/* The destination for a forward tag: the first route whose pattern matches,
 * else a destination named like the tag, else default_table; NULL if none. */
const char *conf_route_tag(const struct conf *c, const char *tag, size_t len);

void conf_free(struct conf *c);

const char *conf_durability_name(enum conf_durability d);

#endif
