/*
 * status.h -- the spool part of the status document (JSON), shared by
 * relayd's control socket and relayctl's view of a stopped relayd, so that
 * both say the same thing the same way. docs/operations.md lists the fields.
 */
#ifndef RELAY_STATUS_H
#define RELAY_STATUS_H

#include "spool.h"

/* Adds "spool" {dir, file_bytes, used_bytes, max_bytes, records, bytes,
 * dead_letters, dead_letter_bytes, oldest_age_s} and "destinations" [{name,
 * records, bytes, oldest_age_s}] to root (a jansson json_t *). */
void status_add_spool(void *root, const struct spool_stats *st, const char *dir, uint64_t now_ms);

#endif
