/*
 * batchstate.h -- the spool record of a batch-mode (mode = batch) pending
 * stream, one per destination: which phase it is in, the seq range of the
 * queued rows it holds and the stream's name. Pure functions, no I/O.
 *
 * Text form (spool meta "wbatch.<dest id>"):
 *   "b1 <phase> <first_seq> <last_seq> <rows> <stream name>"
 * phase: appending, finalizing or committing. While appending, last_seq and
 * rows are 0 (what is appended is known only in memory: a restart abandons
 * such a stream, whose rows BigQuery never shows).
 */
#ifndef RELAY_BATCHSTATE_H
#define RELAY_BATCHSTATE_H

#include <stddef.h>
#include <stdint.h>

enum batch_phase { BATCH_NONE = 0, BATCH_APPENDING, BATCH_FINALIZING, BATCH_COMMITTING };

#define BATCH_STREAM_MAX 1400

struct batch_state {
    enum batch_phase phase;
    uint64_t first_seq, last_seq;  /* the queued rows [first_seq, last_seq] of the stream */
    uint64_t rows;                 /* rows appended (== queued rows in the range) */
    char stream[BATCH_STREAM_MAX];
};

const char *batch_phase_name(enum batch_phase p);
/* Writes the text form to out (capacity n); returns its length, or -1 if it
 * does not fit or the state is not valid (no phase, no stream, last < first
 * once cut). */
int batch_state_encode(const struct batch_state *s, char *out, size_t n);
/* Parses len bytes of text; 0, or -1 (malformed: s is left BATCH_NONE). */
int batch_state_decode(const char *text, size_t len, struct batch_state *s);

/* When the open batch is cut. rows: appended so far; age_ms: since the stream
 * was created; idle_ms: since a row was last read for it (the queue had
 * nothing more for it); limits of 0 are off. */
struct batch_limits {
    uint64_t commit_rows, commit_interval_ms, commit_idle_ms;
};
enum batch_cut { BATCH_KEEP = 0, BATCH_CUT_ROWS, BATCH_CUT_INTERVAL, BATCH_CUT_IDLE };
enum batch_cut batch_should_cut(const struct batch_limits *l, uint64_t rows, uint64_t age_ms,
                                uint64_t idle_ms, int queue_empty);
const char *batch_cut_name(enum batch_cut c);

#endif
