/* Logging: one line per event, machine-parseable (logfmt by default, JSON
 * lines when configured), level checked before any formatting, in the
 * manner of Redis's serverLog. Callers pass key=value pairs; values that
 * may hold spaces go through pt_log_kv_str(). Never log a secret. */
#ifndef PT_LOG_H
#define PT_LOG_H

#include <stdarg.h>

typedef enum {
  PT_LOG_DEBUG = 0,
  PT_LOG_INFO,
  PT_LOG_WARN,
  PT_LOG_ERROR,
  PT_LOG_OFF
} pt_log_level_t;

typedef enum { PT_LOG_LOGFMT = 0, PT_LOG_JSON } pt_log_format_t;

void pt_log_setup(pt_log_level_t level, pt_log_format_t format,
                  const char *component);
pt_log_level_t pt_log_level(void);
/* Parses "debug", "info", "warn", "error", "off"; returns -1 if unknown. */
int pt_log_level_parse(const char *s);

/* Writes one line: `ts=… level=… comp=… event=<event> <fields>` where
 * fields is a printf format producing further key=value pairs. */
void pt_log_write(pt_log_level_t level, const char *event, const char *fmt,
                  ...) __attribute__((format(printf, 3, 4)));

#define PT_LOG(level, event, ...)                                            \
  do {                                                                       \
    if ((level) >= pt_log_level())                                           \
      pt_log_write((level), (event), __VA_ARGS__);                           \
  } while (0)

#define PT_DEBUG(event, ...) PT_LOG(PT_LOG_DEBUG, event, __VA_ARGS__)
#define PT_INFO(event, ...) PT_LOG(PT_LOG_INFO, event, __VA_ARGS__)
#define PT_WARN(event, ...) PT_LOG(PT_LOG_WARN, event, __VA_ARGS__)
#define PT_ERROR(event, ...) PT_LOG(PT_LOG_ERROR, event, __VA_ARGS__)

#endif
