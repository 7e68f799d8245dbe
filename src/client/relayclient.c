/*
 * relayclient.c -- librelayclient, the C client of relayd's ingest socket.
 * See include/relayclient.h. Only libc (and Linux's epoll/timerfd).
 *
 * The window is a ring of rows in sequence order. Positions (head, scan,
 * wpos, tail) only grow; a row's slot is ring[pos % cap].
 *   head  .. scan   written, covered by an "ok": acked, or refused; popped
 *                   eagerly (a row relayd refused with "shutdown" while we
 *                   reconnect stays here, unresolved, until the reconnect)
 *   scan  .. wpos   written on this connection, not yet covered by an "ok"
 *   wpos  .. tail   not yet written (wpos may be part-written: woff bytes)
 * Rows written on one connection get consecutive line numbers in ring
 * order, so "err L" finds its row at scan + (L - line(scan)). On a lost
 * connection the ring is compacted to its unresolved rows, which are all
 * written again, in order, on the next connection.
 */
#include "relayclient.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE     (64u << 10)   /* longest reply line we accept */
#define WRITE_BATCH   (32u << 10)   /* relay_send writes once this much is queued */
#define IOV_MAX_ROWS  64

enum row_state { R_QUEUED, R_SENT, R_RETRY, R_ACKED, R_REFUSED };

struct row {
    uint64_t seq;
    uint64_t line;         /* on the current connection, once written */
    char *buf;             /* "[@TABLE ]JSON\n"; NULL once resolved */
    uint32_t len;
    uint8_t plen;          /* length of the "@TABLE " prefix this library added */
    uint8_t state;
};

struct relay_client {
    char *path;
    struct relay_client_opts o;
    int epfd, sock, tfd;
    int final_err;                 /* sticky: returned by every call once set */
    int connected, want_out, reconnect_due;
    int blocked;                   /* the last write would have blocked */
    unsigned backoff_ms;
    char errmsg[512];

    struct row *ring;
    size_t cap;
    uint64_t head, scan, wpos, tail;
    size_t woff;
    uint64_t conn_lines;           /* rows fully written on this connection */
    uint64_t next_seq;
    size_t unresolved_rows, unresolved_bytes, unwritten_bytes;
    struct relay_client_stats st;

    char *rbuf;
    size_t rlen;
    int in_callback;
};

static struct row *at(const relay_client *c, uint64_t pos)
{
    return &c->ring[pos % c->cap];
}

static void set_err(relay_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_err(relay_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void emit(relay_client *c, const struct relay_event *ev)
{
    if (!c->o.callback)
        return;
    c->in_callback++;
    c->o.callback(c, ev, c->o.user);
    c->in_callback--;
}

const char *relay_strerror(int code)
{
    switch (code) {
    case RELAY_OK:        return "success";
    case RELAY_EAGAIN:    return "window full: process replies, then send again";
    case RELAY_EINVAL:    return "invalid argument (empty row, newline in a row, or bad table name)";
    case RELAY_ETOOBIG:   return "row larger than the window (max_inflight_bytes)";
    case RELAY_ECONNECT:  return "cannot connect to relayd";
    case RELAY_EDENIED:   return "relayd refused this peer (denied)";
    case RELAY_EBUSY:     return "relayd has too many connections (busy)";
    case RELAY_ELOST:     return "connection to relayd lost";
    case RELAY_ETIMEDOUT: return "timed out";
    case RELAY_ENOMEM:    return "out of memory";
    case RELAY_EPROTO:    return "unexpected reply from relayd";
    case RELAY_ESYS:      return "system call failed";
    default:              return "unknown error";
    }
}

void relay_client_opts_init(struct relay_client_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_inflight_rows = 16384;
    o->max_inflight_bytes = 8u << 20;
    o->reconnect = 1;
    o->reconnect_min_ms = 20;
    o->reconnect_max_ms = 1000;
}

/* ------------------------------------------------------------ connection */

static void set_out_interest(relay_client *c, int want)
{
    if (!c->connected || want == c->want_out)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.fd = c->sock };
    if (epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->sock, &ev) == 0)
        c->want_out = want;
}

/* One connect attempt. 0, or a RELAY_E* code with errmsg set. */
static int try_connect(relay_client *c)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(c->path) >= sizeof sa.sun_path) {
        set_err(c, "socket path too long: %s", c->path);
        return RELAY_EINVAL;
    }
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        set_err(c, "socket: %s", strerror(errno));
        return RELAY_ESYS;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        set_err(c, "cannot connect to %s: %s%s", c->path, strerror(e),
                e == ENOENT || e == ECONNREFUSED ? " (is relayd running? check the socket path)" :
                e == EACCES ? " (permission denied: join the socket's group)" :
                e == EAGAIN ? " (relayd's listen backlog is full)" : "");
        close(fd);
        return RELAY_ECONNECT;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        set_err(c, "epoll_ctl: %s", strerror(errno));
        close(fd);
        return RELAY_ESYS;
    }
    c->sock = fd;
    c->connected = 1;
    c->want_out = 0;
    c->conn_lines = 0;
    c->rlen = 0;
    c->st.connected = 1;
    return 0;
}

static void arm_timer(relay_client *c)
{
    struct itimerspec its = { .it_value = { .tv_sec = c->backoff_ms / 1000,
                                            .tv_nsec = (long)(c->backoff_ms % 1000) * 1000000 } };
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
        its.it_value.tv_nsec = 1;
    timerfd_settime(c->tfd, 0, &its, NULL);
    c->reconnect_due = 1;
    unsigned next = c->backoff_ms * 2;
    c->backoff_ms = next > c->o.reconnect_max_ms ? c->o.reconnect_max_ms : next;
}

/* Drops the connection. With reconnect (and no final error), keeps every
 * unresolved row for resending and arms the reconnect timer; otherwise the
 * client fails with err. */
static void lose(relay_client *c, int err)
{
    if (!c->connected)
        return;
    epoll_ctl(c->epfd, EPOLL_CTL_DEL, c->sock, NULL);
    close(c->sock);
    c->sock = -1;
    c->connected = 0;
    c->want_out = 0;
    c->st.connected = 0;
    int final = !c->o.reconnect || c->final_err || err == RELAY_EDENIED;
    if (final && !c->final_err)
        c->final_err = err;
    /* compact the ring to its unresolved rows, all to be written again */
    uint64_t out = c->head;
    for (uint64_t p = c->head; p < c->tail; p++) {
        struct row r = *at(c, p);
        if (r.state == R_ACKED || r.state == R_REFUSED)
            continue;
        if (p < c->wpos || (p == c->wpos && c->woff))
            c->st.resent++;
        r.state = R_QUEUED;
        r.line = 0;
        *at(c, out++) = r;
    }
    c->tail = out;
    c->scan = c->wpos = c->head;
    c->woff = 0;
    c->unwritten_bytes = c->unresolved_bytes;
    struct relay_event ev = { .type = RELAY_EV_DISCONNECTED, .error = err, .message = c->errmsg };
    emit(c, &ev);
    if (!final)
        arm_timer(c);
}

/* ------------------------------------------------------------ replies */

static void free_row(relay_client *c, struct row *r, enum row_state st)
{
    c->unresolved_rows--;
    c->unresolved_bytes -= r->len;
    free(r->buf);
    r->buf = NULL;
    r->state = (uint8_t)st;
}

static void pop_resolved(relay_client *c)
{
    while (c->head < c->scan) {
        struct row *r = at(c, c->head);
        if (r->state != R_ACKED && r->state != R_REFUSED)
            break;
        c->head++;
    }
}

static void handle_ok(relay_client *c, uint64_t n)
{
    uint64_t run_a = 0, run_b = 0;
    c->backoff_ms = c->o.reconnect_min_ms;   /* this connection works */
    while (c->scan < c->wpos) {
        struct row *r = at(c, c->scan);
        if (r->line > n)
            break;
        if (r->state == R_SENT) {
            free_row(c, r, R_ACKED);
            c->st.acked++;
            if (run_a && r->seq == run_b + 1) {
                run_b = r->seq;
            } else {
                if (run_a) {
                    struct relay_event ev = { .type = RELAY_EV_ACKED, .first_seq = run_a,
                                              .last_seq = run_b };
                    emit(c, &ev);
                }
                run_a = run_b = r->seq;
            }
        }
        c->scan++;
    }
    if (run_a) {
        struct relay_event ev = { .type = RELAY_EV_ACKED, .first_seq = run_a, .last_seq = run_b };
        emit(c, &ev);
    }
    pop_resolved(c);
}

/* relayd counts byte positions in its messages ("at byte 42", "(byte 42)")
 * from the start of the line as sent. For a row sent as "@TABLE JSON" this
 * library added the prefix, so positions past it are given back relative to
 * the JSON the caller passed (positions inside the prefix are kept). */
static const char *unprefix_bytes(const char *msg, unsigned plen, char *out, size_t cap)
{
    size_t o = 0;
    const char *p = msg;
    while (*p && o + 24 < cap) {
        if (strncmp(p, "byte ", 5) == 0 && p[5] >= '0' && p[5] <= '9') {
            char *end;
            unsigned long long n = strtoull(p + 5, &end, 10);
            o += (size_t)snprintf(out + o, cap - o, "byte %llu", n > plen ? n - plen : n);
            p = end;
            continue;
        }
        out[o++] = *p++;
    }
    out[o] = 0;
    return *p ? msg : out;     /* (too long to rewrite: as relayd said it) */
}

static void handle_err(relay_client *c, char *p)
{
    char *end;
    unsigned long long line = strtoull(p, &end, 10);
    if (end == p || *end != ' ') {
        set_err(c, "unexpected reply from relayd: err %s", p);
        return;
    }
    char *reason = end + 1;
    char *msg = strchr(reason, ' ');
    if (msg)
        *msg++ = 0;
    else
        msg = reason + strlen(reason);
    if (line == 0) {
        int code = strcmp(reason, "denied") == 0 ? RELAY_EDENIED :
                   strcmp(reason, "busy") == 0 ? RELAY_EBUSY : RELAY_EPROTO;
        set_err(c, "relayd refused the connection: %s: %s", reason, msg);
        if (code == RELAY_EDENIED)
            c->final_err = code;
        lose(c, code);
        return;
    }
    if (c->scan >= c->wpos)
        return;                          /* not a line we have written */
    struct row *first = at(c, c->scan);
    if (line < first->line || line - first->line >= c->wpos - c->scan)
        return;
    struct row *r = at(c, c->scan + (line - first->line));
    if (r->line != line || r->state != R_SENT)
        return;
    if (strcmp(reason, "shutdown") == 0 && c->o.reconnect && !c->final_err) {
        r->state = R_RETRY;              /* relayd is stopping: resend after the reconnect */
        return;
    }
    char fixed[1024];
    const char *text = r->plen ? unprefix_bytes(msg, r->plen, fixed, sizeof fixed) : msg;
    struct relay_event ev = { .type = RELAY_EV_REFUSED, .first_seq = r->seq, .last_seq = r->seq,
                              .reason = reason, .message = text,
                              .retryable = strcmp(reason, "full") == 0 ||
                                           strcmp(reason, "shutdown") == 0 };
    free_row(c, r, R_REFUSED);
    c->st.refused++;
    emit(c, &ev);
}

static void handle_line(relay_client *c, char *line)
{
    if (strncmp(line, "ok ", 3) == 0) {
        char *end;
        unsigned long long n = strtoull(line + 3, &end, 10);
        if (end != line + 3 && *end == 0) {
            handle_ok(c, n);
            return;
        }
    } else if (strncmp(line, "err ", 4) == 0) {
        handle_err(c, line + 4);
        return;
    }
    set_err(c, "unexpected reply from relayd: %.200s", line);
}

/* Reads and handles every reply available; loses the connection on EOF. */
static void read_replies(relay_client *c)
{
    while (c->connected) {
        ssize_t n = recv(c->sock, c->rbuf + c->rlen, RBUF_SIZE - 1 - c->rlen, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            if (!c->final_err)
                set_err(c, "connection to relayd lost: %s",
                        n == 0 ? "relayd closed it" : strerror(errno));
            lose(c, RELAY_ELOST);
            return;
        }
        c->rlen += (size_t)n;
        char *p = c->rbuf, *nl;
        while (c->connected && (nl = memchr(p, '\n', c->rlen - (size_t)(p - c->rbuf)))) {
            *nl = 0;
            handle_line(c, p);
            p = nl + 1;
        }
        if (!c->connected)
            return;
        c->rlen -= (size_t)(p - c->rbuf);
        memmove(c->rbuf, p, c->rlen);
        if (c->rlen == RBUF_SIZE - 1)    /* an absurdly long reply: drop it */
            c->rlen = 0;
    }
}

/* ------------------------------------------------------------ writing */

/* Writes queued rows until done or the socket would block. */
static void write_rows(relay_client *c)
{
    c->blocked = 0;
    while (c->connected && c->wpos < c->tail) {
        struct iovec iov[IOV_MAX_ROWS];
        int n = 0;
        size_t bytes = 0;
        for (uint64_t p = c->wpos; p < c->tail && n < IOV_MAX_ROWS && bytes < (256u << 10); p++) {
            struct row *r = at(c, p);
            size_t off = p == c->wpos ? c->woff : 0;
            iov[n].iov_base = r->buf + off;
            iov[n].iov_len = r->len - off;
            bytes += iov[n++].iov_len;
        }
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t w = sendmsg(c->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->blocked = 1;
                set_out_interest(c, 1);
                return;
            }
            int e = errno;
            read_replies(c);   /* relayd may have said why ("err 0 denied") before closing */
            if (c->connected) {
                set_err(c, "connection to relayd lost: %s", strerror(e));
                lose(c, RELAY_ELOST);
            }
            return;
        }
        size_t left = (size_t)w;
        c->unwritten_bytes -= left;
        while (left) {
            struct row *r = at(c, c->wpos);
            size_t rest = r->len - c->woff;
            if (left < rest) {
                c->woff += left;
                break;
            }
            left -= rest;
            c->woff = 0;
            r->line = ++c->conn_lines;
            r->state = R_SENT;
            c->wpos++;
        }
    }
    set_out_interest(c, 0);
}

/* ------------------------------------------------------------ API */

int relay_client_open(relay_client **out, const char *path, const struct relay_client_opts *opts,
                      char *errbuf, size_t errlen)
{
    *out = NULL;
    if (errbuf && errlen)
        errbuf[0] = 0;
    struct relay_client_opts o;
    if (opts)
        o = *opts;
    else
        relay_client_opts_init(&o);
    if (!path || !*path || o.max_inflight_rows == 0 || o.max_inflight_bytes == 0) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "invalid arguments: socket path and a non-empty window needed");
        return RELAY_EINVAL;
    }
    if (o.reconnect_min_ms == 0)
        o.reconnect_min_ms = 1;
    if (o.reconnect_max_ms < o.reconnect_min_ms)
        o.reconnect_max_ms = o.reconnect_min_ms;
    relay_client *c = calloc(1, sizeof *c);
    if (!c)
        goto nomem;
    c->o = o;
    c->sock = c->epfd = c->tfd = -1;
    c->cap = o.max_inflight_rows;
    c->next_seq = 1;
    c->backoff_ms = o.reconnect_min_ms;
    c->path = strdup(path);
    c->ring = calloc(c->cap, sizeof *c->ring);
    c->rbuf = malloc(RBUF_SIZE);
    if (!c->path || !c->ring || !c->rbuf)
        goto nomem;
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = c->tfd };
    if (c->epfd < 0 || c->tfd < 0 || epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->tfd, &ev) != 0) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "epoll/timerfd: %s", strerror(errno));
        relay_client_close(c);
        return RELAY_ESYS;
    }
    int rc = try_connect(c);
    if (rc) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "%s", c->errmsg);
        relay_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
nomem:
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "out of memory");
    relay_client_close(c);
    return RELAY_ENOMEM;
}

void relay_client_close(relay_client *c)
{
    if (!c)
        return;
    if (c->sock >= 0)
        close(c->sock);
    if (c->tfd >= 0)
        close(c->tfd);
    if (c->epfd >= 0)
        close(c->epfd);
    if (c->ring)
        for (uint64_t p = c->head; p < c->tail; p++)
            free(at(c, p)->buf);
    free(c->ring);
    free(c->rbuf);
    free(c->path);
    free(c);
}

int relay_client_fd(const relay_client *c)
{
    return c->epfd;
}

int relay_client_process(relay_client *c)
{
    if (c->final_err)
        return c->final_err;
    if (!c->connected && c->reconnect_due) {
        uint64_t exp;
        if (read(c->tfd, &exp, sizeof exp) == (ssize_t)sizeof exp) {
            c->reconnect_due = 0;
            if (try_connect(c) == 0) {
                c->st.reconnects++;
                struct relay_event ev = { .type = RELAY_EV_CONNECTED };
                emit(c, &ev);
            } else {
                arm_timer(c);
            }
        }
    }
    if (c->connected) {
        write_rows(c);
        read_replies(c);
        write_rows(c);
    }
    return c->final_err;
}

static int wait_fd(relay_client *c, int timeout_ms)
{
    struct pollfd p = { .fd = c->epfd, .events = POLLIN };
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno != EINTR) {
        set_err(c, "poll: %s", strerror(errno));
        return RELAY_ESYS;
    }
    return 0;
}

int relay_client_poll(relay_client *c, int timeout_ms)
{
    int rc = relay_client_process(c);
    if (rc)
        return rc;
    if ((rc = wait_fd(c, timeout_ms)))
        return rc;
    return relay_client_process(c);
}

static int remaining(uint64_t deadline, int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    uint64_t now = now_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

int relay_flush(relay_client *c, int timeout_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
        int rc = relay_client_process(c);
        if (c->unresolved_rows == 0)
            return RELAY_OK;
        if (rc)
            return rc;
        int left = remaining(deadline, timeout_ms);
        if (left == 0) {
            set_err(c, "flush: %zu rows still unacknowledged after %d ms", c->unresolved_rows,
                    timeout_ms);
            return RELAY_ETIMEDOUT;
        }
        if ((rc = wait_fd(c, left)))
            return rc;
    }
}

static int window_full(const relay_client *c, size_t len)
{
    return c->tail - c->head >= c->cap ||
           (c->unresolved_bytes && c->unresolved_bytes + len > c->o.max_inflight_bytes);
}

int64_t relay_send(relay_client *c, const char *table, const char *json, size_t len)
{
    if (c->final_err)
        return c->final_err;
    if (!json || len == 0 || memchr(json, '\n', len)) {
        set_err(c, "a row must be non-empty JSON text without a newline");
        return RELAY_EINVAL;
    }
    size_t i = 0;
    while (i < len && (json[i] == ' ' || json[i] == '\t' || json[i] == '\r'))
        i++;
    if (i == len || json[i] == '@') {
        set_err(c, i == len ? "a row must not be blank" : "a row must not start with '@'");
        return RELAY_EINVAL;
    }
    size_t tl = 0;
    if (table) {
        tl = strlen(table);
        if (tl == 0 || tl > 128 || strpbrk(table, " \t\r\n")) {
            set_err(c, "invalid table name '%s'", table);
            return RELAY_EINVAL;
        }
    }
    size_t need = len + 1 + (table ? tl + 2 : 0);
    if (need > c->o.max_inflight_bytes || need > UINT32_MAX) {
        set_err(c, "row of %zu bytes is larger than the window (max_inflight_bytes %zu)", need,
                c->o.max_inflight_bytes);
        return RELAY_ETOOBIG;
    }
    if (window_full(c, need)) {
        int rc = relay_client_process(c);
        if (rc)
            return rc;
        if (window_full(c, need)) {
            if (!c->o.blocking)
                return RELAY_EAGAIN;
            int t = c->o.send_timeout_ms > 0 ? c->o.send_timeout_ms : -1;
            uint64_t deadline = now_ms() + (uint64_t)(t < 0 ? 0 : t);
            while (window_full(c, need)) {
                int left = remaining(deadline, t);
                if (left == 0) {
                    set_err(c, "no room in the window after %d ms", t);
                    return RELAY_ETIMEDOUT;
                }
                if ((rc = wait_fd(c, left)) || (rc = relay_client_process(c)))
                    return rc;
            }
        }
    }
    char *buf = malloc(need);
    if (!buf) {
        set_err(c, "out of memory");
        return RELAY_ENOMEM;
    }
    char *p = buf;
    if (table) {
        *p++ = '@';
        memcpy(p, table, tl);
        p += tl;
        *p++ = ' ';
    }
    memcpy(p, json, len);
    p[len] = '\n';
    struct row *r = at(c, c->tail++);
    *r = (struct row){ .seq = c->next_seq++, .buf = buf, .len = (uint32_t)need,
                       .plen = (uint8_t)(table ? tl + 2 : 0), .state = R_QUEUED };
    c->unresolved_rows++;
    c->unresolved_bytes += need;
    c->unwritten_bytes += need;
    c->st.sent++;
    if (c->connected && !c->blocked) {
        if (c->unwritten_bytes >= WRITE_BATCH)
            write_rows(c);
        else
            set_out_interest(c, 1);   /* the fd says "work to do" until it is written */
    }
    return (int64_t)r->seq;
}

uint64_t relay_client_acked(const relay_client *c)
{
    for (uint64_t p = c->head; p < c->tail; p++) {
        const struct row *r = at(c, p);
        if (r->state != R_ACKED && r->state != R_REFUSED)
            return r->seq - 1;
    }
    return c->next_seq - 1;
}

void relay_client_stats(const relay_client *c, struct relay_client_stats *st)
{
    *st = c->st;
    st->inflight_rows = c->unresolved_rows;
    st->inflight_bytes = c->unresolved_bytes;
}

const char *relay_client_errmsg(const relay_client *c)
{
    return c->errmsg;
}
