/*
 * log.h -- leveled logging to stderr.
 *
 * relayd runs in the foreground under systemd (or a terminal), so it logs to
 * stderr only. When stderr is the journal (JOURNAL_STREAM is set) each line
 * starts with a syslog priority prefix such as "<4>" and carries no timestamp
 * (the journal adds one); otherwise lines read
 *   2026-11-22T10:00:00.123Z relayd[1234] warn: message
 * Thread safety: any thread; each line is written with one write(2).
 */
#ifndef RELAY_LOG_H
#define RELAY_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the program name shown in lines and the minimum level printed. */
void log_init(const char *progname, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Parses "debug", "info", "warn"/"warning", "error". Returns 0, or -1 if unknown. */
int log_parse_level(const char *s, enum log_level *out);
const char *log_level_name(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
