/*
 * route.h -- where a queued row goes: which table (a time-sharded table id
 * expanded from the row's time) and, with connections = N on the Storage
 * Write path, which of the destination's N connections owns it.
 *
 * Both APIs resolve tables with route_table, so a row lands in the same table
 * whether it is sent with insertAll or the Storage Write API. The result
 * depends only on the record (its row and its spool time) and the
 * destination's table pattern and table_time_field: it never changes while
 * the row waits, which the Storage Write path relies on for exactly-once
 * (docs/delivery.md).
 *
 * Pure functions, no allocation; any thread.
 */
#ifndef RELAY_ROUTE_H
#define RELAY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* room for a table id (BigQuery allows 1024 characters) and its NUL */
#define ROUTE_TABLE_MAX 1040

struct route {
    const char *pattern;      /* table id, maybe with strftime escapes (events_%Y%m%d) */
    bool sharded;             /* pattern has a '%' */
    const char *time_field;   /* top-level field with the row's time, or NULL: spool time */
};

/* Fills r for a destination's table (pattern) and table_time_field (may be NULL). */
void route_init(struct route *r, const char *pattern, const char *time_field);

/* The time a row is sharded by: its time_field (an RFC 3339 / "YYYY-MM-DD
 * HH:MM:SS" / "YYYY-MM-DD" string, fractions and zone suffix ignored, taken
 * as UTC; or a number of epoch seconds) or, without time_field, time_ms (when
 * relayd received it). Returns 0, or -1 when the field is missing or not a time. */
int route_row_time(const char *time_field, const char *row, size_t len, uint64_t time_ms,
                   time_t *t);

/* The table id the row goes to, into out[0..n). Returns 0, or -1 when the row
 * has no usable time (dead-lettered with reason "routing") or the id does not
 * fit. */
int route_table(const struct route *r, const char *row, size_t len, uint64_t time_ms, char *out,
                size_t n);

/* Which of n connections owns the row with this seq: a hash of the seq, so
 * each connection gets an even share whatever the seqs of one destination
 * look like (seqs are global: destinations fed alternately get every other
 * one). n == 0 or 1: 0. */
unsigned route_lane(uint64_t seq, unsigned n);

#endif
