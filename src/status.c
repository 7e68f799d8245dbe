/*
 * status.c -- the spool part of the status document. See status.h.
 */
#include "status.h"

#include <jansson.h>

static double age_s(uint64_t then_ms, uint64_t now_ms)
{
    return then_ms && then_ms < now_ms ? (double)(now_ms - then_ms) / 1000 : 0;
}

void status_add_spool(void *rootp, const struct spool_stats *st, const char *dir, uint64_t now)
{
    json_t *root = rootp, *sp = json_object(), *ds = json_array();
    json_object_set_new(sp, "dir", json_string(dir));
    json_object_set_new(sp, "file_bytes", json_integer((json_int_t)st->file_bytes));
    json_object_set_new(sp, "used_bytes", json_integer((json_int_t)st->used_bytes));
    json_object_set_new(sp, "max_bytes", json_integer((json_int_t)st->max_bytes));
    json_object_set_new(sp, "records", json_integer((json_int_t)st->records));
    json_object_set_new(sp, "bytes", json_integer((json_int_t)st->bytes));
    json_object_set_new(sp, "dead_letters", json_integer((json_int_t)st->dlq_records));
    json_object_set_new(sp, "dead_letter_bytes", json_integer((json_int_t)st->dlq_bytes));
    uint64_t oldest = 0;
    for (size_t i = 0; i < st->n_dests; i++) {
        const struct spool_dest_stats *d = &st->dests[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(d->name));
        json_object_set_new(o, "records", json_integer((json_int_t)d->records));
        json_object_set_new(o, "bytes", json_integer((json_int_t)d->bytes));
        json_object_set_new(o, "oldest_age_s", json_real(age_s(d->oldest_ms, now)));
        json_array_append_new(ds, o);
        if (d->oldest_ms && (!oldest || d->oldest_ms < oldest))
            oldest = d->oldest_ms;
    }
    json_object_set_new(sp, "oldest_age_s", json_real(age_s(oldest, now)));
    json_object_set_new(root, "spool", sp);
    json_object_set_new(root, "destinations", ds);
}
