/*
 * ingest.h -- the producer side: the Unix sockets, the line protocol, acks.
 *
 * One thread runs an epoll loop over the listening sockets, every producer
 * connection, the committer's eventfd, a 100 ms timer and a signalfd.
 * Complete lines are validated (line.h) and their records copied into the
 * current batch; at the end of each loop turn the batch goes to the
 * committer (committer.h). When a batch comes back durable, each connection's
 * cumulative ack ("ok N": every line up to N is handled) is sent. Nothing is
 * acknowledged before the commit that holds it is durable.
 *
 * Memory is bounded: a connection holds at most one partial line
 * (max_record_bytes), at most ~64 KiB of unsent replies (past that it is not
 * read until it reads its replies), and all connections together at most
 * max_pending_bytes of uncommitted records (past that nobody is read).
 *
 * Signals: SIGTERM/SIGINT stop (finishing the commit in progress and sending
 * its acks), SIGHUP reloads the config file. The caller must have blocked
 * them in every thread before starting threads.
 */
#ifndef RELAY_INGEST_H
#define RELAY_INGEST_H

#include <stddef.h>

#include "conf.h"
#include "spool.h"

struct ingest;

/* Binds the ingest and control sockets. conf is copied by reference and
 * owned by ingest from now on (freed by ingest_destroy, replaced on reload). */
int ingest_create(struct conf *conf, struct spool *s, struct ingest **out,
                  char *err, size_t errlen);
/* Optional hooks, set before ingest_create's caller runs the loop:
 * on_commit runs on the committer thread after each commit; status adds to
 * the status document (a jansson json_t *) on the ingest thread. */
struct ingest_hooks {
    void (*on_commit)(void *arg);
    void (*status)(void *arg, void *root);
    void (*reload)(void *arg, const char *path);   /* after a successful SIGHUP reload */
    void *arg;
};

/* Like ingest_create, with hooks. */
int ingest_create_hooked(struct conf *conf, struct spool *s, const struct ingest_hooks *h,
                         struct ingest **out, char *err, size_t errlen);

/* Runs until SIGTERM/SIGINT; returns the process exit code. */
int ingest_run(struct ingest *in);
void ingest_destroy(struct ingest *in);

#endif
