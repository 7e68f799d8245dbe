/*
 * json_check.h -- strict, allocation-free validation of one JSON text.
 *
 * Ingest calls this on every line a producer sends, so it is on the hot path:
 * it walks the bytes once, allocates nothing and keeps no state between calls.
 * It accepts exactly RFC 8259 JSON whose top-level value is an object, with
 * all strings valid UTF-8 (no overlong forms, no UTF-16 surrogates encoded in
 * UTF-8, nothing above U+10FFFF) and every \u escape well formed (a high
 * surrogate escape must be followed by a low surrogate escape and vice versa).
 * Whitespace (space, tab, CR, LF) may surround the object.
 *
 * Thread safety: reentrant; call from any thread.
 */
#ifndef RELAY_JSON_CHECK_H
#define RELAY_JSON_CHECK_H

#include <stddef.h>

enum jcheck_code {
    JC_OK = 0,
    JC_EMPTY,       /* nothing but whitespace */
    JC_NOT_OBJECT,  /* the first non-blank byte is not '{': an array, string,
                       ... or junk; nothing after that byte is examined */
    JC_SYNTAX,      /* not JSON: msg says what was expected (bytes >= 0x80
                       outside strings are JC_SYNTAX too) */
    JC_UTF8,        /* invalid UTF-8 or an unpaired surrogate escape */
    JC_NUL,         /* a raw NUL byte, wherever the scan reaches it */
    JC_DEPTH,       /* nesting deeper than max_depth */
    JC_TRAILING,    /* a complete object followed by more than whitespace */
};

/* Where an error is reported: offset is the first byte at which the input
 * can no longer be the beginning of a valid object (so for UTF-8, the byte
 * that breaks the sequence: in C3 28 it is the 28), or len when the input is
 * a valid beginning that stops too early (JC_EMPTY included). The exception
 * is an unpaired surrogate escape, reported at the backslash starting it. The
 * scan stops at the first error, so a NUL byte is reported as JC_NUL unless
 * an earlier byte was already wrong. On JC_OK, offset is len and msg "ok". */
struct jcheck_result {
    enum jcheck_code code;
    size_t offset;       /* byte offset (0-based) of the offending byte */
    const char *msg;     /* static, lower-case text without the offset, e.g.
                            "expected ':' after object key"; never NULL */
};

/* Validates buf[0..len). Returns res->code (JC_OK on success). max_depth counts
 * nested objects and arrays, the top-level object being depth 1; 0 means 64
 * and values above 1024 are treated as 1024. buf need not be NUL-terminated
 * and is never read outside [0, len); it may be NULL only when len is 0.
 * Numbers are checked against the grammar only (any length or magnitude is
 * accepted); duplicate keys are not detected. res must not be NULL. */
enum jcheck_code jcheck_object(const char *buf, size_t len, unsigned max_depth,
                               struct jcheck_result *res);

/* A short stable token naming the code, used in protocol error lines:
 * "ok", "empty", "not-object", "json", "utf8", "nul", "depth", "trailing". */
const char *jcheck_token(enum jcheck_code code);

#endif
