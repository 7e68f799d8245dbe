/*
 * relayclient.h -- librelayclient: a small C client for relayd's ingest
 * socket (docs/protocol.md). Link with -lrelayclient (pkg-config
 * relayclient); it needs only libc and may be linked into any producer.
 *
 * What it offers
 *   relay_send() copies one JSON row into a bounded window of rows in flight
 *   and returns its sequence number (1, 2, 3, ... per client, never reused).
 *   The rows stream to relayd while the caller keeps sending; relayd's
 *   cumulative "ok N" and per-line "err" replies come back as events
 *   (struct relay_event) through the callback given in the options:
 *     RELAY_EV_ACKED    rows first_seq..last_seq are durable in relayd's spool
 *     RELAY_EV_REFUSED  row first_seq was refused: reason and message as relayd
 *                       said them ("json", "table", "full", ...); it is not stored
 *   relay_client_acked() is the highest H such that every row <= H is resolved
 *   (acknowledged or refused): a poll-style alternative to the callback.
 *   relay_flush() waits until every row sent so far is resolved.
 *
 * Backpressure
 *   The window holds at most max_inflight_rows rows and max_inflight_bytes
 *   bytes of unresolved rows. When it is full, relay_send() returns
 *   RELAY_EAGAIN (non-blocking mode, the default) and the caller makes
 *   progress with relay_client_poll(), or by polling relay_client_fd() for
 *   readability and calling relay_client_process(). With opts.blocking,
 *   relay_send() waits for room itself (up to opts.send_timeout_ms).
 *   relay_send() never blocks on the socket in non-blocking mode: what the
 *   socket does not take now stays in the window and goes out from the next
 *   relay_send/process/poll/flush.
 *
 * Delivery guarantee: at least once
 *   When the connection is lost (relayd restarted, killed, "shutdown"
 *   refusals while it stops) and opts.reconnect is set (the default), the
 *   client reconnects with a backoff (reconnect_min_ms doubling up to
 *   reconnect_max_ms) and resends, in order, every row not yet acknowledged.
 *   A row that relayd had committed but whose "ok" was lost with the
 *   connection is therefore stored twice: rows are delivered at least once,
 *   never lost once relay_send() returned a sequence number, unless relayd
 *   refused them (a RELAY_EV_REFUSED event) or the client was closed first.
 *   Rows refused as "full" are not resent by the library (the spool is
 *   full for longer than relayd's full_wait); the event says retryable=1 and
 *   the caller decides whether and when to send them again.
 *   Without opts.reconnect, a lost connection is final: relay_flush() returns
 *   RELAY_ELOST and the rows still unresolved have an unknown fate.
 *
 * Rows
 *   A row is one JSON object as text, without a newline (relayd validates
 *   it; invalid rows come back refused). table (may be NULL: relayd's
 *   default_table) picks the destination for this row only ("@TABLE {...}").
 *   Byte positions in a refusal's message ("invalid JSON at byte 7") count
 *   from the start of the JSON text passed to relay_send, not of the line
 *   the library wrote.
 *
 * Connection-level refusals
 *   "err 0 denied" (this uid/gid may not send) is final: every call returns
 *   RELAY_EDENIED from then on. "err 0 busy" (relayd's max_connections) is
 *   retried like a lost connection when reconnecting, else final (RELAY_EBUSY).
 *
 * Threads and ownership
 *   A relay_client is not thread-safe: use it from one thread at a time. The
 *   callback runs on the calling thread, inside relay_send, relay_client_process,
 *   relay_client_poll or relay_flush; it may call relay_client_acked,
 *   relay_client_stats, relay_client_errmsg and relay_strerror only. Strings in
 *   an event are valid during the callback only. The library copies each row;
 *   the caller keeps ownership of every buffer it passes. Different clients are
 *   independent (one per thread is fine). SIGPIPE is never raised.
 *
 * Errors
 *   Functions return 0 / a sequence number on success and a negative
 *   RELAY_E* code on failure; relay_strerror() names the code and
 *   relay_client_errmsg() gives the last failure in detail (the errno text, the
 *   daemon's message).
 */
#ifndef RELAYCLIENT_H
#define RELAYCLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RELAYCLIENT_VERSION "1.0.0"

enum relay_error {
    RELAY_OK        = 0,
    RELAY_EAGAIN    = -1,   /* the window is full: process replies, then send again */
    RELAY_EINVAL    = -2,   /* bad argument: empty row, a newline in it, bad table name */
    RELAY_ETOOBIG   = -3,   /* the row alone is larger than max_inflight_bytes */
    RELAY_ECONNECT  = -4,   /* cannot connect to the socket (errmsg says why) */
    RELAY_EDENIED   = -5,   /* relayd refused this peer ("err 0 denied"); final */
    RELAY_EBUSY     = -6,   /* relayd has max_connections ("err 0 busy") */
    RELAY_ELOST     = -7,   /* connection lost and reconnect is off; final */
    RELAY_ETIMEDOUT = -8,   /* the timeout passed first */
    RELAY_ENOMEM    = -9,
    RELAY_EPROTO    = -10,  /* relayd said something this client does not understand */
    RELAY_ESYS      = -11,  /* a system call failed (errmsg has errno's text) */
};

enum relay_event_type {
    RELAY_EV_ACKED = 1,     /* first_seq..last_seq are durable */
    RELAY_EV_REFUSED,       /* first_seq (== last_seq) was refused and not stored */
    RELAY_EV_DISCONNECTED,  /* the connection was lost (error); reconnecting if enabled */
    RELAY_EV_CONNECTED,     /* a reconnect succeeded; unacknowledged rows are being resent */
};

struct relay_event {
    enum relay_event_type type;
    uint64_t first_seq, last_seq;
    const char *reason;     /* REFUSED: relayd's REASON ("json", "table", "full", ...) */
    const char *message;    /* REFUSED: relayd's message; DISCONNECTED: why */
    int retryable;          /* REFUSED: 1 if sending the same row later may succeed ("full") */
    int error;              /* DISCONNECTED: a RELAY_E* code */
};

typedef struct relay_client relay_client;
typedef void (*relay_callback)(relay_client *c, const struct relay_event *ev, void *user);

struct relay_client_opts {
    size_t max_inflight_rows;     /* default 16384 (about one fsync's worth at 1M rows/s) */
    size_t max_inflight_bytes;    /* default 8 MiB (rows as sent, with their newline) */
    int blocking;                 /* relay_send waits for room instead of RELAY_EAGAIN */
    int send_timeout_ms;          /* blocking: longest wait for room, <= 0: no limit */
    int reconnect;                /* default 1: reconnect and resend after a loss */
    unsigned reconnect_min_ms;    /* default 20 */
    unsigned reconnect_max_ms;    /* default 1000 */
    relay_callback callback;      /* may be NULL */
    void *user;                   /* passed to the callback */
};

struct relay_client_stats {
    uint64_t sent;          /* rows accepted by relay_send */
    uint64_t acked;         /* rows acknowledged (durable) */
    uint64_t refused;       /* rows refused */
    uint64_t resent;        /* rows written again after a reconnect */
    uint64_t reconnects;    /* successful reconnects */
    size_t inflight_rows;   /* rows not yet resolved */
    size_t inflight_bytes;
    int connected;          /* 1 while a connection is up */
};

/* Fills *opts with the defaults. Always call it before setting fields. */
void relay_client_opts_init(struct relay_client_opts *opts);

/* Connects to the ingest socket at socket_path (opts may be NULL: defaults).
 * On success stores the client in *out and returns 0. On failure returns a
 * RELAY_E* code, *out is NULL, and errbuf (if not NULL) says why, e.g.
 * "cannot connect to /run/relayd/relayd.sock: No such file or directory (is
 * relayd running?)". */
int relay_client_open(relay_client **out, const char *socket_path,
                      const struct relay_client_opts *opts, char *errbuf, size_t errlen);

/* Queues one row (len bytes of JSON, no newline) for table (NULL: relayd's
 * default table). Returns its sequence number (>= 1), or RELAY_EAGAIN when
 * the window is full, or another RELAY_E* code. */
int64_t relay_send(relay_client *c, const char *table, const char *json, size_t len);

/* Waits until every row sent so far is resolved (acked or refused):
 * RELAY_OK, RELAY_ETIMEDOUT (timeout_ms >= 0 passed first; < 0 waits
 * forever), or the client's final error (RELAY_ELOST, RELAY_EDENIED, ...). */
int relay_flush(relay_client *c, int timeout_ms);

/* A file descriptor that becomes readable when the client has work to do
 * (replies to read, room to write, a reconnect due). It stays the same for
 * the client's life (reconnects included): add it to poll/epoll once. */
int relay_client_fd(const relay_client *c);

/* Does whatever can be done without blocking: writes queued rows, reads
 * replies, delivers events, reconnects when due. Returns RELAY_OK or the
 * client's final error. */
int relay_client_process(relay_client *c);

/* Waits up to timeout_ms (< 0: forever; 0: do not wait) for the fd, then
 * processes. Returns like relay_client_process. */
int relay_client_poll(relay_client *c, int timeout_ms);

/* The highest sequence number H such that every row <= H is resolved. */
uint64_t relay_client_acked(const relay_client *c);

void relay_client_stats(const relay_client *c, struct relay_client_stats *st);

/* The last failure in words ("" if none). Valid until the next call. */
const char *relay_client_errmsg(const relay_client *c);

/* Closes the connection and frees the client. Rows not yet resolved are
 * forgotten (their fate is unknown): call relay_flush first. NULL is fine. */
void relay_client_close(relay_client *c);

/* A static description of a RELAY_E* code. */
const char *relay_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif
