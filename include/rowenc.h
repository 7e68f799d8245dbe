/*
 * rowenc.h -- BigQuery table schemas to protobuf, and JSON rows to protobuf
 * rows, for the Storage Write API (facts: ../shared/reference/bigquery-wire.md
 * sections 1.4, 2 and 3.8).
 *
 * Three steps:
 *
 *   1. rowenc_schema_parse() reads a table schema as BigQuery's REST API
 *      writes it (a fields array, {"fields":[...]}, or a whole tables.get
 *      response {"schema":{"fields":[...]}}) into an immutable struct
 *      rowenc_schema. Not a hot path (it uses jansson).
 *   2. rowenc_descriptor() serializes the google.protobuf.DescriptorProto the
 *      AppendRows writer_schema (ProtoSchema.proto_descriptor) carries.
 *   3. rowenc_encode() turns one NDJSON row into the serialized row message
 *      (one ProtoRows.serialized_rows element). This is the hot path: a single
 *      pass over the bytes, driven by the schema, with no allocation except
 *      growth of the output buffer.
 *
 * The protobuf schema (proto2 semantics, as the backend decodes rows):
 *   - One root message (name chosen by the caller) whose fields are the
 *     top-level columns, numbered 1..n in schema order. Every RECORD column
 *     gets its own message type and every RANGE element type one shared type;
 *     all of them are nested_type entries of the root, so the descriptor is
 *     self-contained. type_name is the bare nested name, found by normal
 *     protobuf scope resolution from any depth.
 *   - Labels: NULLABLE -> optional, REQUIRED -> required (optional when the
 *     column has a defaultValueExpression, so the backend can fill it in),
 *     REPEATED -> repeated (not packed; decoders accept either).
 *   - Field names: a column name that is a proto identifier
 *     ([A-Za-z_][A-Za-z0-9_]*) is used lower-cased (BigQuery matches names
 *     case-insensitively; the Java client lower-cases too). Any other
 *     (flexible, e.g. Unicode) column name gets the placeholder "Col_<number>"
 *     and its real name in the FieldOptions extension 454943157
 *     (google.cloud.bigquery.storage.v1.column_name). Nested types are named
 *     "T<k>_<field>" (RECORD) and "R_DATE", "R_DATETIME", "R_TIMESTAMP"
 *     (RANGE). Lower-case field names, "Col_" placeholders and the
 *     upper-case "T"/"R" type names can never collide with one another.
 *   - Types: STRING, GEOGRAPHY, JSON, INTERVAL -> string; BYTES -> bytes;
 *     INT64 -> int64; FLOAT64 -> double; BOOL -> bool; TIMESTAMP -> int64
 *     microseconds since the epoch; DATE -> int32 days since 1970-01-01;
 *     TIME, DATETIME -> int64 packed as CivilTimeEncoder does; NUMERIC,
 *     BIGNUMERIC -> bytes (unscaled integer at scale 9 / 38, minimal
 *     two's complement, little-endian); RECORD -> message; RANGE<T> ->
 *     message { optional T start = 1; optional T end = 2; }.
 *
 * JSON values accepted per column type (anything else is an error). These
 * are insertAll's rules, so that a row's fate does not depend on the API
 * (docs/delivery.md, "Values: one set of rules for both APIs"):
 *   STRING, GEOGRAPHY, INTERVAL  a JSON string, copied as decoded; STRING
 *              also a number or true/false, as its JSON source text.
 *   JSON       a JSON string whose content is the JSON text, or any other
 *              JSON value (object, array, number, true, false), whose source
 *              text is copied verbatim as the JSON text. The content of a
 *              string is not checked to be JSON: BigQuery checks it.
 *   BYTES      a base64 string: standard or URL-safe alphabet (even mixed),
 *              '=' padding optional (if present it must be right); no
 *              whitespace. Non-zero bits in the last character are ignored.
 *   INT64      a JSON number with an exactly integral value (1.0 and 1e3
 *              are accepted, 1.5 is not), or a string of decimal digits with
 *              an optional sign ("1.0" is not); within the int64 range.
 *   FLOAT64    a JSON number, a numeric string, or "NaN", "Infinity",
 *              "-Infinity" (also "+Infinity", "inf", "-inf", any case).
 *              Numbers too large for a double are errors, not infinity.
 *   BOOL       true or false, or the strings "true" / "false" in any case.
 *   NUMERIC    a JSON number or a decimal string ("+1.5", ".5", "5.", "1e3"
 *   BIGNUMERIC accepted), converted exactly (no floating point), then
 *              rounded to the column's scale (9 / 38, or S of a
 *              parameterized NUMERIC(P, S)) by its roundingMode (half away
 *              from zero unless ROUND_HALF_EVEN), as BigQuery does when it
 *              writes the value. After rounding NUMERIC holds at most 29
 *              integer digits, BIGNUMERIC the 256-bit range; a
 *              parameterized precision is left to BigQuery (a row error).
 *   TIMESTAMP  "YYYY-M[M]-D[D][(T|t| )H[H]:M[M][:S[S][.ffffff]]][zone]"
 *              where zone, after optional whitespace, is Z, z, UTC or
 *              +H[H][[:]MM] (either sign, at most 14 hours); no zone means
 *              UTC. Or a JSON number of seconds since the epoch with at most
 *              6 significant fractional digits. Range 0001-01-01 ..
 *              9999-12-31 23:59:59.999999 UTC.
 *   DATE       "YYYY-M[M]-D[D]" (year 0001..9999).
 *   DATETIME   a DATE, optionally followed by T, t or a space and
 *              "H[H]:M[M][:S[S][.ffffff]]"; no zone.
 *   TIME       "H[H]:M[M]:S[S][.ffffff]".
 *              Fractions of seconds have 1 to 6 digits: more is an error,
 *              never truncated. Seconds 60 (leap seconds) are errors.
 *   RECORD     a JSON object.
 *   RANGE      "[start, end)" with bounds in the element type's string form
 *              or UNBOUNDED / NULL (any case), or an object {"start": v,
 *              "end": v} where v is such a string, null (unbounded), or for
 *              TIMESTAMP an epoch number; a missing key is unbounded (other
 *              keys are unknown fields). When both are bounded start must be
 *              before end.
 *   REPEATED   a JSON array of the element type; a null element is an error;
 *              [] and null encode nothing (an empty array).
 *   null       for a NULLABLE column: the field is omitted (proto2 NULL).
 *              For a REQUIRED column: an error, as is leaving it out (unless
 *              the column has a defaultValueExpression: then leaving it out
 *              is allowed, so the caller should send AppendRows with
 *              missing_value_interpretation DEFAULT_VALUE).
 * Object keys match column names ignoring ASCII case ("ID" is column "id");
 * other bytes must match exactly. A key given twice is an error. A key that
 * is no column is an error unless ROWENC_IGNORE_UNKNOWN is given; then its
 * value is checked for JSON syntax and skipped. Values skipped that way and
 * JSON-column values may nest ROWENC_MAX_NESTING levels deep.
 * The row must be one JSON object (RFC 8259, UTF-8) with optional whitespace
 * around it; strings must be valid UTF-8 and \u escapes must pair their
 * surrogates. Rows that ingest accepted (json_check.h) meet this, but
 * rowenc_encode() checks everything it reads and never reads outside
 * [json, json + len), whatever the bytes are.
 *
 * Errors: every function returns an enum rowenc_rc and, when err is not
 * NULL, fills err with the code, the byte offset in the input where the
 * problem was found, and a message naming the field path and the reason,
 * e.g. "field 'items[2].price': NUMERIC value '1e40' exceeds precision 38",
 * "unknown field 'ctx.agent'", "schema field 'a.b': unknown type 'TEXT'".
 * Quoted values are cut to 48 bytes; printable ASCII and valid UTF-8 are
 * kept, any other byte is shown as \xNN.
 *
 * Ownership: rowenc_schema_parse() allocates the schema; the caller frees it
 * with rowenc_schema_free() when no thread uses it any more. Nothing keeps a
 * pointer to the caller's input after a call returns. Output is appended to
 * a caller-owned struct buf (util.h); on any error the buffer's length is
 * restored (its capacity may have grown).
 *
 * Threads: a parsed schema is never modified, so any number of threads may
 * use one schema at once. rowenc_encode() and rowenc_descriptor() are
 * reentrant (all state is on the caller's stack and in the caller's buffer).
 */
#ifndef RELAY_ROWENC_H
#define RELAY_ROWENC_H

#include <stddef.h>

#include "util.h"

#define ROWENC_MAX_DEPTH  15     /* nested RECORD levels (BigQuery's limit) */
#define ROWENC_MAX_FIELDS 10000  /* columns in all, nested ones included */
#define ROWENC_MAX_NAME   300    /* characters in a column name */
#define ROWENC_MAX_NESTING 1024  /* JSON nesting inside an ignored field or a
                                    JSON column value */

enum rowenc_rc {
    ROWENC_OK = 0,
    ROWENC_NOMEM,      /* out of memory: nothing was appended; may be retried */
    ROWENC_JSON,       /* the row is not one valid JSON object: syntax, UTF-8,
                          unpaired surrogate, trailing bytes, too deep */
    ROWENC_UNKNOWN,    /* a key that names no column (without
                          ROWENC_IGNORE_UNKNOWN) */
    ROWENC_DUPLICATE,  /* the same key twice in one object */
    ROWENC_MISSING,    /* a REQUIRED column absent or null */
    ROWENC_TYPE,       /* the JSON type does not fit the column: a number for
                          a DATE, an object for an INT64, a null element ... */
    ROWENC_VALUE,      /* the right JSON type but a bad value: out of range,
                          malformed date, bad base64, too many digits ... */
    ROWENC_SCHEMA,     /* rowenc_schema_parse(): not a usable schema */
    ROWENC_INVAL,      /* a bad argument (NULL schema, bad root name) */
};

struct rowenc_error {
    enum rowenc_rc code;
    size_t offset;       /* byte offset in the input (row or schema text) at
                            which the problem was found; 0 if none applies */
    char msg[512];       /* NUL-terminated; "ok" on success */
};

/* Flags for rowenc_encode(). */
#define ROWENC_IGNORE_UNKNOWN 0x1u  /* skip keys that name no column */

struct rowenc_schema;

/* Parses a BigQuery table schema from json[0..len) (need not be
 * NUL-terminated): a fields array, an object with "fields", or a tables.get
 * response with "schema": {"fields": [...]}. Each field object needs "name"
 * and "type" (STRING, BYTES, INTEGER/INT64, FLOAT/FLOAT64, NUMERIC/DECIMAL,
 * BIGNUMERIC/BIGDECIMAL, BOOLEAN/BOOL, TIMESTAMP, DATE, TIME, DATETIME,
 * GEOGRAPHY, JSON, INTERVAL, RECORD/STRUCT with non-empty "fields", RANGE
 * with "rangeElementType": {"type": DATE|DATETIME|TIMESTAMP}); "mode"
 * (NULLABLE, REQUIRED, REPEATED) defaults to NULLABLE; type and mode names
 * are case-insensitive; "defaultValueExpression" is noted (see above);
 * "timestampPrecision" other than 6 is refused; other keys are ignored.
 * Refused with ROWENC_SCHEMA: names that are empty, longer than
 * ROWENC_MAX_NAME characters or contain control characters, names equal
 * ignoring ASCII case within one record, more than ROWENC_MAX_FIELDS
 * columns, more than ROWENC_MAX_DEPTH nested RECORD levels.
 * On success *out is the new schema and ROWENC_OK is returned; otherwise
 * *out is NULL. */
int rowenc_schema_parse(const char *json, size_t len, struct rowenc_schema **out,
                        struct rowenc_error *err);

/* Frees a schema (NULL is fine). */
void rowenc_schema_free(struct rowenc_schema *s);

/* Number of top-level columns. */
size_t rowenc_schema_columns(const struct rowenc_schema *s);

/* Appends the serialized DescriptorProto for s to out. root_name is the
 * root message's name, a proto identifier; NULL means "relayd_row". The
 * bytes depend only on s and root_name, so callers may cache them.
 * Returns ROWENC_OK, ROWENC_NOMEM or ROWENC_INVAL (bad root_name). */
int rowenc_descriptor(const struct rowenc_schema *s, const char *root_name, struct buf *out,
                      struct rowenc_error *err);

/* Encodes the JSON row json[0..len) as the serialized root message and
 * appends it to out (no length prefix). flags: ROWENC_IGNORE_UNKNOWN or 0.
 * Fields are written in the order of the row's keys; an empty object {}
 * encodes as zero bytes. Returns ROWENC_OK or an error code (then out->len is
 * as before the call). json may be NULL only when len is 0. */
int rowenc_encode(const struct rowenc_schema *s, const char *json, size_t len, unsigned flags,
                  struct buf *out, struct rowenc_error *err);

/* A short stable token for a code, for dead-letter reasons and logs:
 * "ok", "nomem", "json", "unknown-field", "duplicate-field", "missing",
 * "type", "value", "schema", "inval"; "unknown" for anything else. */
const char *rowenc_token(int rc);

#endif
