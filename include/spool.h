/*
 * spool.h -- the durable queue: one LMDB environment holding a queue per
 * destination, the dead-letter store, and the metadata that ties them.
 *
 * Layout (docs/ARCHITECTURE.md has the picture):
 *   meta        "version" -> u32 (2), "uuid" -> 16 bytes, "next_seq" -> u64,
 *               "next_dest" -> u32, "dlq_bytes" -> u64
 *   dests       destination name -> struct { u32 id; u32 flags; u64 bytes; u64 created_ms;
 *               u64 records }
 *   q.<id>      one database per destination: be64 seq of the first record -> a record,
 *               or a chunk of records
 *   dlq         be64 seq -> dead-letter entry (format in dlq.h)
 * A record is a 16-byte header followed by the JSON row:
 *   u32 crc32 (zlib) of { be32 dest id, be64 seq, header bytes 4..15, row }
 *   u8 version (1), u8 flags, u16 reserved, u64 enqueue time in ms since the epoch
 * A chunk holds the records one transaction appended to the destination
 * (up to 256, 16 KiB; one alone is stored as a plain record):
 *   u32 crc32 of { be32 dest id, be64 key, bytes 4 .. 16 + 8n }
 *   u8 version (2), u8 0, u16 n, u64 0
 *   n x { u32 seq - key, u32 end of the record, from the first record's start }
 *   the n records, each as above (its crc binds its own seq)
 * Removing some of a chunk's records rewrites it without them, under the
 * same key. Version 1 spools (plain records only, 24-byte dests entries
 * without the count) are read, and upgraded when opened for writing.
 * Sequence numbers are global and only grow, so every record and every
 * dead letter has a unique, stable identity (dest, seq) for its whole life.
 *
 * Size: the map is max_bytes; the file grows with use up to it. Appends are
 * refused with SPOOL_FULL when they would eat into a reserve kept for the
 * transactions that remove delivered records, so a full spool can always drain.
 *
 * Concurrency: LMDB allows one write transaction at a time per environment
 * (across processes); any thread may run one (MDB_NOTLS). Read functions open
 * their own read transaction and may run in any thread at the same time.
 * Several processes may open the same spool (relayd and relayctl); only one
 * struct spool per process per directory.
 */
#ifndef RELAY_SPOOL_H
#define RELAY_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum spool_rc {
    SPOOL_OK = 0,
    SPOOL_FULL,       /* no room: nothing was written; retry once space is freed */
    SPOOL_CORRUPT,    /* a record failed its checksum or is malformed */
    SPOOL_NOTFOUND,
    SPOOL_IO,         /* an I/O error reached the disk: fatal, restart recovers */
    SPOOL_NOMEM,
    SPOOL_INVAL,      /* bad argument, unknown destination */
    SPOOL_ERR,        /* other LMDB error: spool_last_error() says which */
};

enum spool_durability { SPOOL_SYNC = 0, SPOOL_NOSYNC_PERIODIC, SPOOL_NOSYNC };

#define SPOOL_HDR 16          /* bytes of header before each row */
#define SPOOL_MAX_DESTS 1000  /* destinations one spool can hold */
#define SPOOL_DEST_MAX 128    /* longest destination name */

struct spool_opts {
    const char *dir;          /* created 0700 if missing; files are 0600 */
    uint64_t max_bytes;       /* the bound on the file */
    enum spool_durability durability;
    bool readonly;            /* open without creating or writing anything */
};

struct spool;
struct spool_txn;

/* Opens (creating if needed) the spool in opts->dir. On failure returns a
 * spool_rc and writes a message that says what to do into err. */
int spool_open(const struct spool_opts *opts, struct spool **out, char *err, size_t errlen);
void spool_close(struct spool *s);

const char *spool_strerror(int rc);
/* 32 hex digits, random, made when the spool was created: with a record's
 * seq it names the record uniquely across hosts (BigQuery insertIds). */
const char *spool_uuid(const struct spool *s);
/* The LMDB message behind the last SPOOL_ERR/SPOOL_IO in this thread. */
const char *spool_last_error(void);

/* ---- destinations ---- */

/* Looks name up; creates it (in its own write transaction) when create is true.
 * Ids are stable for the life of the spool. */
int spool_dest(struct spool *s, const char *name, bool create, uint32_t *id);
/* Name of dest id, or NULL. The pointer lives as long as s. */
const char *spool_dest_name(struct spool *s, uint32_t id);
/* Picks up destinations created by other processes. */
int spool_refresh_dests(struct spool *s);

/* ---- write transactions ---- */

int spool_txn_begin(struct spool *s, struct spool_txn **out);
/* Appends a row to dest's queue; *seq gets its sequence number. The rows a
 * transaction appends to one destination are gathered and written at commit
 * (or before the transaction's next removal or dead-lettering), as chunks;
 * an error from the write (SPOOL_FULL, say) is then the commit's. */
int spool_txn_append(struct spool_txn *t, uint32_t dest, const void *row, size_t len,
                     uint64_t time_ms, uint64_t *seq);
/* Removes a record (delivered). SPOOL_NOTFOUND if it is not there. */
int spool_txn_remove(struct spool_txn *t, uint32_t dest, uint64_t seq);
/* Removes the records seqs[0..n) of dest (delivered), in one pass with one
 * cursor: a run of consecutive records costs one search, not one each. A seq
 * that is not there is skipped (as spool_txn_remove's SPOOL_NOTFOUND);
 * *removed (may be NULL) gets how many were removed. seqs ascending is the
 * fast case; any order is correct. */
int spool_txn_remove_run(struct spool_txn *t, uint32_t dest, const uint64_t *seqs, size_t n,
                         size_t *removed);
/* Moves a record into the dead-letter store with a reason (a short token such
 * as "corrupt" or "invalid") and a detail text. If the record itself is
 * unreadable its raw bytes are kept as the row. */
int spool_txn_dead_letter(struct spool_txn *t, uint32_t dest, uint64_t seq,
                          const char *reason, const char *detail);
/* The same with the delivery history kept in the dead letter. */
struct spool_dl_info {
    const char *reason;        /* token: invalid, corrupt, expired, http-403, ... */
    const char *detail;        /* human text, may be NULL */
    uint32_t http_status;      /* 0 if none */
    uint32_t attempts;
    uint64_t first_attempt_ms, last_attempt_ms;
};
int spool_txn_dead_letter_info(struct spool_txn *t, uint32_t dest, uint64_t seq,
                               const struct spool_dl_info *info);
/* Moves dead letter seq back into a queue, in t: appends its row (or row[0..len)
 * instead, when row is not NULL: a fixed row) to dest (or, when dest is 0, the
 * destination it came from) under a new seq (*new_seq), and deletes the entry.
 * So a crash leaves it in exactly one of the two places. SPOOL_NOTFOUND if
 * there is no such entry (already replayed or purged). */
int spool_txn_dlq_replay(struct spool_txn *t, uint64_t seq, uint32_t dest, const char *row,
                         size_t len, uint64_t *new_seq);
/* Deletes dead letter seq (purge). SPOOL_NOTFOUND if there is none. */
int spool_txn_dlq_delete(struct spool_txn *t, uint64_t seq);
/* A small named value in the spool's metadata (e.g. a Storage Write stream
 * and its next offset), written in t so that it commits with the records. */
int spool_txn_put_meta(struct spool_txn *t, const char *key, const void *val, size_t len);
/* Reads it; SPOOL_NOTFOUND if absent. At most cap bytes are copied; *len gets the size. */
int spool_get_meta(struct spool *s, const char *key, void *val, size_t cap, size_t *len);
/* Deletes it, in t; SPOOL_NOTFOUND if absent. */
int spool_txn_del_meta(struct spool_txn *t, const char *key);
/* Calls cb for every such value whose key starts with prefix, in key order,
 * stopping when cb returns non-zero; key, val are valid only during the
 * callback. Runs in its own read transaction. */
typedef int (*spool_meta_cb)(const char *key, const void *val, size_t len, void *arg);
int spool_meta_scan(struct spool *s, const char *prefix, spool_meta_cb cb, void *arg);
/* Makes the transaction durable as the durability mode says. On SPOOL_FULL or
 * any error nothing of it was written and t is gone either way. */
int spool_txn_commit(struct spool_txn *t);
void spool_txn_abort(struct spool_txn *t);

/* The bytes of spool pages a row of row_len bytes takes (an estimate that
 * errs on the large side). */
uint64_t spool_footprint(size_t row_len);
/* Would a transaction adding rows whose spool_footprint()s sum to footprint
 * fit under the bound (less the reserve) and on the disk? Cheap unless the
 * file is near its bound. On false, spool_last_error() says why. */
bool spool_has_room(struct spool *s, uint64_t footprint);

/* ---- reading ---- */

struct spool_record {
    uint32_t dest;
    uint64_t seq;
    uint64_t time_ms;
    const char *row;      /* valid only during the callback */
    size_t len;
    bool corrupt;         /* checksum or header failed: row/len are the raw value */
    const char *problem;  /* for a corrupt record: what is wrong */
};

/* Calls cb for up to max_records records of dest with seq >= from_seq, in
 * order, stopping early when cb returns non-zero or max_bytes of rows were
 * passed (at least one record is always passed). Returns SPOOL_OK. Every
 * 16 MiB read (by all threads together) it calls spool_release_pages, so that
 * draining a backlog does not grow the resident set. */
typedef int (*spool_record_cb)(const struct spool_record *r, void *arg);
int spool_read(struct spool *s, uint32_t dest, uint64_t from_seq, size_t max_records,
               size_t max_bytes, spool_record_cb cb, void *arg);

/* Calls cb for up to max entries of the dead-letter store with seq >=
 * from_seq, in seq order, stopping when cb returns non-zero. A damaged entry
 * is passed with e->reason "damaged-entry" and its raw bytes as the row.
 * e's pointers are valid only during the callback. */
struct dlq_entry;
typedef int (*spool_dlq_cb)(const struct dlq_entry *e, void *arg);
int spool_dlq_read(struct spool *s, uint64_t from_seq, size_t max, spool_dlq_cb cb, void *arg);

/* ---- statistics and upkeep ---- */

struct spool_dest_stats {
    uint32_t id;
    char name[SPOOL_DEST_MAX + 1];
    uint64_t records;
    uint64_t bytes;           /* row bytes */
    uint64_t oldest_ms;       /* enqueue time of the oldest record, 0 if empty */
};

struct spool_stats {
    uint64_t max_bytes;       /* the bound (map size) */
    uint64_t file_bytes;      /* size of the data file */
    uint64_t used_bytes;      /* pages in use (file pages less free pages) */
    uint64_t records, bytes;  /* over all destinations */
    uint64_t dlq_records;
    uint64_t dlq_bytes;       /* encoded bytes of the dead letters */
    uint64_t next_seq;
    size_t n_dests;
    struct spool_dest_stats dests[SPOOL_MAX_DESTS];
};

/* Fills st (large: allocate it). */
int spool_stats(struct spool *s, struct spool_stats *st);

/* Encoded bytes held by the dead-letter store (cheap). */
uint64_t spool_dlq_bytes(struct spool *s);

/* Rewrites the spool in dir into a compact copy (LMDB never shrinks its
 * file) and puts it in place. relayd must be stopped: the caller holds the
 * spool's lock. *before / *after get the file sizes. */
int spool_compact(const char *dir, uint64_t *before, uint64_t *after, char *err, size_t errlen);

/* Clears reader slots left by dead processes; *cleared gets how many. */
int spool_reader_check(struct spool *s, int *cleared);
/* Unmaps the spool pages this process has touched; they stay in the
 * kernel's page cache. LMDB reads through a shared mapping, so without this
 * the resident set grows with the spool's size rather than with what is in
 * use. Any thread, any time. */
int spool_release_pages(struct spool *s);
/* Flushes to disk (for the periodic sync of SPOOL_NOSYNC_PERIODIC). */
int spool_sync(struct spool *s);
/* The path of the data file. */
const char *spool_path(struct spool *s);

#endif
