/*
 * sender.h -- drains the spool to BigQuery (tabledata.insertAll over HTTPS).
 *
 * One thread runs a libcurl multi loop for every destination that names a
 * BigQuery table (project and dataset set). For each destination it reads
 * rows from the head of its queue into batches (bounded by batch_rows and
 * batch_bytes, flushed when full or when the oldest row has waited
 * flush_interval), keeps up to max_inflight requests in flight, and records
 * each row's outcome in the spool in the same transaction that removes it:
 *   inserted                 -> removed
 *   rejected for good        -> moved to the dead-letter store with BigQuery's reason
 *   to retry                 -> kept, resent after a backoff
 * Rows carry a stable insertId (spool uuid + seq), so a resend after a
 * timeout or a crash is deduplicated by BigQuery (best effort).
 * Destinations are independent: one that fails, backs off or is parked
 * never delays the others. docs/delivery.md tells the rules in full.
 *
 * Threads: create/start/stop/free from the main thread; sender_wake and
 * sender_status from any thread.
 */
#ifndef RELAY_SENDER_H
#define RELAY_SENDER_H

#include <stddef.h>

#include "conf.h"
#include "spool.h"

struct sender;

/* Prepares a sender for conf's delivering destinations (credentials are
 * loaded now; tokens are fetched on first use). conf must outlive it.
 * Returns 0, or -1 with err naming the destination and the problem. */
int sender_create(const struct conf *conf, struct spool *s, struct sender **out,
                  char *err, size_t errlen);
/* Starts the thread. Returns 0 or -1. */
int sender_start(struct sender *s);
/* SIGHUP: reloads path and applies it on the sender's thread: destinations
 * added, changed (credentials included) or removed; requests in flight and
 * connections of unchanged destinations go on. A file that does not load is
 * ignored (ingest reports it). */
void sender_reload(void *sender, const char *path);
/* New records were committed: look now rather than at the next tick. */
void sender_wake(void *sender);
/* Adds a "delivery" object to each destination in root's "destinations"
 * array (root is a jansson json_t *). */
void sender_status(void *sender, void *root);
/* Stops starting requests, waits up to wait_ms for those in flight, records
 * their outcomes, and joins the thread. */
void sender_stop(struct sender *s, unsigned wait_ms);
/* Status helpers shared with the writers (return jansson json_t *). */
struct counts;
struct histo;
void *counts_json(const struct counts *c);
void *histo_json(const struct histo *h);
void sender_free(struct sender *s);

#endif
