/*
 * batchstate.c -- see batchstate.h.
 */
#include "batchstate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[] = { "none", "appending", "finalizing", "committing" };

const char *batch_phase_name(enum batch_phase p)
{
    return (unsigned)p < sizeof names / sizeof names[0] ? names[p] : "?";
}

int batch_state_encode(const struct batch_state *s, char *out, size_t n)
{
    if (s->phase < BATCH_APPENDING || s->phase > BATCH_COMMITTING || !s->stream[0] ||
        strchr(s->stream, ' ') || strchr(s->stream, '\n'))
        return -1;
    if (s->phase != BATCH_APPENDING && (s->last_seq < s->first_seq || s->rows == 0))
        return -1;
    int len = snprintf(out, n, "b1 %s %llu %llu %llu %s", names[s->phase],
                       (unsigned long long)s->first_seq, (unsigned long long)s->last_seq,
                       (unsigned long long)s->rows, s->stream);
    if (len < 0 || (size_t)len >= n)
        return -1;
    return len;
}

static int parse_u64(const char **p, const char *end, uint64_t *v)
{
    const char *q = *p;
    uint64_t x = 0;
    if (q >= end || *q < '0' || *q > '9')
        return -1;
    for (; q < end && *q >= '0' && *q <= '9'; q++) {
        uint64_t d = (uint64_t)(*q - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -1;
        x = x * 10 + d;
    }
    if (q >= end || *q != ' ')
        return -1;
    *v = x;
    *p = q + 1;
    return 0;
}

int batch_state_decode(const char *text, size_t len, struct batch_state *s)
{
    memset(s, 0, sizeof *s);
    const char *p = text, *end = text + len;
    if (len < 3 || memcmp(p, "b1 ", 3) != 0)
        return -1;
    p += 3;
    enum batch_phase ph = BATCH_NONE;
    for (int i = BATCH_APPENDING; i <= BATCH_COMMITTING; i++) {
        size_t nl = strlen(names[i]);
        if ((size_t)(end - p) > nl && memcmp(p, names[i], nl) == 0 && p[nl] == ' ') {
            ph = (enum batch_phase)i;
            p += nl + 1;
            break;
        }
    }
    struct batch_state t = { .phase = ph };
    if (ph == BATCH_NONE || parse_u64(&p, end, &t.first_seq) || parse_u64(&p, end, &t.last_seq) ||
        parse_u64(&p, end, &t.rows))
        return -1;
    size_t sl = (size_t)(end - p);
    if (sl == 0 || sl >= sizeof t.stream || memchr(p, ' ', sl) || memchr(p, '\n', sl) ||
        memchr(p, 0, sl))
        return -1;
    memcpy(t.stream, p, sl);
    t.stream[sl] = 0;
    if (ph != BATCH_APPENDING && (t.last_seq < t.first_seq || t.rows == 0))
        return -1;
    *s = t;
    return 0;
}

enum batch_cut batch_should_cut(const struct batch_limits *l, uint64_t rows, uint64_t age_ms,
                                uint64_t idle_ms, int queue_empty)
{
    if (rows == 0)
        return BATCH_KEEP;
    if (l->commit_rows && rows >= l->commit_rows)
        return BATCH_CUT_ROWS;
    if (l->commit_interval_ms && age_ms >= l->commit_interval_ms)
        return BATCH_CUT_INTERVAL;
    if (l->commit_idle_ms && queue_empty && idle_ms >= l->commit_idle_ms)
        return BATCH_CUT_IDLE;
    return BATCH_KEEP;
}

const char *batch_cut_name(enum batch_cut c)
{
    switch (c) {
    case BATCH_CUT_ROWS: return "rows";
    case BATCH_CUT_INTERVAL: return "interval";
    case BATCH_CUT_IDLE: return "idle";
    default: return "none";
    }
}
