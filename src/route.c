/*
 * route.c -- a row's table and connection. See route.h.
 */
#include "route.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

void route_init(struct route *r, const char *pattern, const char *time_field)
{
    r->pattern = pattern;
    r->sharded = strchr(pattern, '%') != NULL;
    r->time_field = time_field;
}

int route_row_time(const char *time_field, const char *row, size_t len, uint64_t time_ms,
                   time_t *t)
{
    if (!time_field) {
        *t = (time_t)(time_ms / 1000);
        return 0;
    }
    json_t *o = json_loadb(row, len, 0, NULL);
    json_t *v = o ? json_object_get(o, time_field) : NULL;
    int rc = -1;
    if (json_is_number(v)) {
        *t = (time_t)json_number_value(v);
        rc = 0;
    } else if (json_is_string(v)) {
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const char *s = json_string_value(v);
        const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!end)
            end = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
        if (!end)
            end = strptime(s, "%Y-%m-%d", &tm);
        if (end) {   /* fractions and a Z suffix are fine; offsets are taken as UTC */
            *t = timegm(&tm);
            rc = 0;
        }
    }
    json_decref(o);
    return rc;
}

int route_table(const struct route *r, const char *row, size_t len, uint64_t time_ms, char *out,
                size_t n)
{
    if (!r->sharded) {   /* per row on Storage Write: a copy, not snprintf */
        size_t k = strlen(r->pattern);
        if (k >= n)
            return -1;
        memcpy(out, r->pattern, k + 1);
        return 0;
    }
    time_t t;
    if (route_row_time(r->time_field, row, len, time_ms, &t) != 0)
        return -1;
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        return -1;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    size_t k = strftime(out, n, r->pattern, &tm);   /* the user's pattern, checked at load */
#pragma GCC diagnostic pop
    return k ? 0 : -1;
}

unsigned route_lane(uint64_t seq, unsigned n)
{
    if (n <= 1)
        return 0;
    /* splitmix64's finalizer: every input bit moves every output bit */
    uint64_t z = seq + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (unsigned)(z % n);
}
