/*
 * log.c -- leveled logging to stderr. See log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static const char *log_prog = "relayd";
static volatile enum log_level log_min = LOG_INFO;
static int log_journal = -1;   /* -1: not checked yet */

static const char *const level_names[] = { "debug", "info", "warn", "error" };
static const int level_prio[] = { 7, 6, 4, 3 };   /* syslog priorities */

void log_init(const char *progname, enum log_level level)
{
    log_prog = progname;
    log_min = level;
    log_journal = getenv("JOURNAL_STREAM") != NULL;
}

void log_set_level(enum log_level level) { log_min = level; }
enum log_level log_get_level(void) { return log_min; }

int log_parse_level(const char *s, enum log_level *out)
{
    for (int i = 0; i <= LOG_ERROR; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

const char *log_level_name(enum log_level level)
{
    return level <= LOG_ERROR ? level_names[level] : "?";
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < log_min)
        return;
    if (log_journal < 0)
        log_journal = getenv("JOURNAL_STREAM") != NULL;

    char line[2048];
    size_t n;
    if (log_journal) {
        n = (size_t)snprintf(line, sizeof line, "<%d>%s: ", level_prio[level],
                             level_names[level]);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s[%d] %s: ",
                              ts.tv_nsec / 1000000, log_prog, (int)getpid(),
                              level_names[level]);
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += (size_t)m;
    if (n > sizeof line - 2)
        n = sizeof line - 2;   /* truncated: keep the newline */
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
