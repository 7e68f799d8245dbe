/*
 * metrics.h -- Prometheus metrics, /healthz and /readyz over HTTP
 * (libmicrohttpd), for [relayd] metrics_listen. The server runs on its own
 * thread and reads everything through relayd's control socket.
 */
#ifndef RELAY_METRICS_H
#define RELAY_METRICS_H

#include <stdbool.h>
#include <stddef.h>

struct metrics;

/* True for "127.x.x.x:PORT", "localhost:PORT" or "unix:/PATH": metrics are
 * served on loopback or a Unix socket only. */
bool metrics_valid_listen(const char *addr);

/* Starts serving on addr, answering from the control socket at control. */
int metrics_start(const char *addr, const char *control, struct metrics **out, char *err,
                  size_t errlen);
void metrics_stop(struct metrics *m);

#endif
