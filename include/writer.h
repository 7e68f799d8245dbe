/*
 * writer.h -- delivery of one destination over the BigQuery Storage Write
 * API (api = storage), on a thread of its own.
 *
 * Rows are read from the head of the destination's queue, encoded from JSON
 * into protobuf messages (rowenc.h) described by a DescriptorProto built from
 * the table's schema (schema_file, or tables.get), and appended over one
 * AppendRows connection (bqwrite.h) with several appends in flight.
 *
 *   delivery = at_least_once  the table's default stream; a row leaves the
 *                             queue when its append is acknowledged.
 *   delivery = exactly_once   an application-created COMMITTED stream with
 *                             offsets. The stream's name and the next offset
 *                             are stored in the spool in the same transaction
 *                             that removes the acknowledged rows, so after a
 *                             crash the writer resumes the same stream at the
 *                             right offset; rows whose fate is uncertain are
 *                             settled by asking the server (probing appends
 *                             at exact offsets), never by guessing.
 * docs/delivery.md states the guarantee precisely.
 *
 * Threads: create/start/stop/free from the main thread; wake and status from
 * any thread.
 */
#ifndef RELAY_WRITER_H
#define RELAY_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "spool.h"

struct writer;

int writer_create(const struct conf_dest *cd, struct spool *sp, struct writer **out,
                  char *err, size_t errlen);
int writer_start(struct writer *w);
void writer_wake(struct writer *w);
/* Adds the "delivery" object to dest (a jansson json_t * of one destination). */
void writer_status(struct writer *w, void *dest);
const char *writer_name(const struct writer *w);
const struct conf_dest *writer_conf(const struct writer *w);
void writer_stop(struct writer *w, unsigned wait_ms);
void writer_free(struct writer *w);

#endif
