/*
 * line.h -- the ingest protocol, one line at a time (docs/protocol.md).
 *
 * A producer sends lines terminated by '\n' (a trailing '\r' is ignored):
 *   {...}            a record (one JSON object) for the connection's table
 *   @NAME {...}      a record for destination NAME (this line only)
 *   @NAME            sets the connection's table for the lines after it
 *   (blank)          ignored
 * line_parse() classifies one line and validates the record in it; it does
 * not know which destinations exist (ingest checks that).
 *
 * Thread safety: reentrant.
 */
#ifndef RELAY_LINE_H
#define RELAY_LINE_H

#include <stddef.h>

enum line_kind { LINE_EMPTY, LINE_RECORD, LINE_TABLE, LINE_ERROR };

struct line_limits {
    size_t max_record_bytes;   /* the JSON object's bytes */
    unsigned max_depth;        /* nesting, top-level object = 1 */
};

struct line_result {
    enum line_kind kind;
    const char *table;         /* LINE_TABLE, or LINE_RECORD with '@NAME ' (else NULL) */
    size_t table_len;
    const char *json;          /* LINE_RECORD: the object, whitespace trimmed */
    size_t json_len;
    const char *reason;        /* LINE_ERROR: a stable token (see protocol.md) */
    char msg[200];             /* LINE_ERROR: what is wrong and where */
};

void line_parse(const char *line, size_t len, const struct line_limits *lim,
                struct line_result *r);

#endif
