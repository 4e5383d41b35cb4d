#include "core/pt_log.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static pt_log_level_t log_level = PT_LOG_INFO;
static pt_log_format_t log_format = PT_LOG_LOGFMT;
static const char *log_component = "paytask";

void pt_log_setup(pt_log_level_t level, pt_log_format_t format,
                  const char *component) {
  log_level = level;
  log_format = format;
  if (component != NULL)
    log_component = component;
}

pt_log_level_t pt_log_level(void) { return log_level; }

int pt_log_level_parse(const char *s) {
  static const char *const names[] = {"debug", "info", "warn", "error", "off"};
  for (int i = 0; i < 5; i++)
    if (strcmp(s, names[i]) == 0)
      return i;
  return -1;
}

static const char *level_name(pt_log_level_t l) {
  switch (l) {
  case PT_LOG_DEBUG:
    return "debug";
  case PT_LOG_INFO:
    return "info";
  case PT_LOG_WARN:
    return "warn";
  case PT_LOG_ERROR:
    return "error";
  default:
    return "off";
  }
}

void pt_log_write(pt_log_level_t level, const char *event, const char *fmt,
                  ...) {
  char fields[1024];
  char ts[40];
  struct timeval tv;
  struct tm tm;
  va_list ap;

  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  va_start(ap, fmt);
  vsnprintf(fields, sizeof fields, fmt, ap);
  va_end(ap);
  /* One fprintf per line: stdio locks the stream, so lines from several
   * threads never interleave. */
  if (log_format == PT_LOG_JSON) {
    /* JSON lines: the key=value fields are carried in one string field so
     * that the line stays valid JSON whatever the fields hold. */
    char esc[2100];
    size_t j = 0;
    for (size_t i = 0; fields[i] != '\0' && j + 7 < sizeof esc; i++) {
      unsigned char c = (unsigned char)fields[i];
      if (c == '"' || c == '\\') {
        esc[j++] = '\\';
        esc[j++] = (char)c;
      } else if (c < 0x20) {
        j += (size_t)snprintf(esc + j, sizeof esc - j, "\\u%04x", c);
      } else {
        esc[j++] = (char)c;
      }
    }
    esc[j] = '\0';
    fprintf(stderr,
            "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"comp\":\"%s\","
            "\"event\":\"%s\",\"fields\":\"%s\"}\n",
            ts, (long)(tv.tv_usec / 1000), level_name(level), log_component,
            event, esc);
  } else {
    /* One event, one line: a control character in a field (a newline in
     * a message from the queue or a channel) is written escaped, so that
     * nothing a field holds can end the line or forge another. */
    char esc[4200];
    size_t j = 0;
    for (size_t i = 0; fields[i] != '\0' && j + 5 < sizeof esc; i++) {
      unsigned char c = (unsigned char)fields[i];
      if (c == '\n' || c == '\r' || c == '\t') {
        esc[j++] = '\\';
        esc[j++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
      } else if (c < 0x20 || c == 0x7f) {
        j += (size_t)snprintf(esc + j, sizeof esc - j, "\\x%02x", c);
      } else {
        esc[j++] = (char)c;
      }
    }
    esc[j] = '\0';
    fprintf(stderr, "ts=%s.%03ldZ level=%s comp=%s event=%s %s\n", ts,
            (long)(tv.tv_usec / 1000), level_name(level), log_component,
            event, esc);
  }
}
