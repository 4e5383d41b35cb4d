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

/* The escaped JSON string of a line's fields is cut at this size. */
#define JSON_FIELDS_MAX 2100

/* Writes the fields as the format allows (at most size bytes, the NUL
 * included). JSON: a string's escapes (quote, backslash, \u00XX for a
 * control character). logfmt: one event, one line: a control character
 * (a newline in a message from the queue or a channel) is written \n,
 * \r, \t or \xXX, so that nothing a field holds can end the line or
 * forge another. */
static void escape_fields(const char *in, int json, char *out, size_t size) {
  size_t j = 0;
  for (size_t i = 0; in[i] != '\0' && j + 7 < size; i++) {
    unsigned char c = (unsigned char)in[i];
    if (json && (c == '"' || c == '\\')) {
      out[j++] = '\\';
      out[j++] = (char)c;
    } else if (!json && (c == '\n' || c == '\r' || c == '\t')) {
      out[j++] = '\\';
      out[j++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
    } else if (c < 0x20 || (!json && c == 0x7f)) {
      j += (size_t)snprintf(out + j, size - j, json ? "\\u%04x" : "\\x%02x",
                            c);
    } else {
      out[j++] = (char)c;
    }
  }
  out[j] = '\0';
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
  char esc[4200];
  if (log_format == PT_LOG_JSON) {
    /* JSON lines: the key=value fields are carried in one string field so
     * that the line stays valid JSON whatever the fields hold. */
    escape_fields(fields, 1, esc, JSON_FIELDS_MAX);
    fprintf(stderr,
            "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"comp\":\"%s\","
            "\"event\":\"%s\",\"fields\":\"%s\"}\n",
            ts, (long)(tv.tv_usec / 1000), level_name(level), log_component,
            event, esc);
  } else {
    escape_fields(fields, 0, esc, sizeof esc);
    fprintf(stderr, "ts=%s.%03ldZ level=%s comp=%s event=%s %s\n", ts,
            (long)(tv.tv_usec / 1000), level_name(level), log_component,
            event, esc);
  }
}
