/* The log is one event per line whatever its fields hold. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_log.h"

/* Writes one event with `value` in a field through the logger (stderr
 * redirected to a file) and returns what it wrote. */
static char *logged(pt_log_format_t format, const char *value) {
  static char out[8192];
  char path[] = "/tmp/pt_test_log_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  fflush(stderr);
  int saved = dup(2);
  cr_assert_geq(saved, 0);
  dup2(fd, 2);
  pt_log_setup(PT_LOG_INFO, format, "test");
  PT_ERROR("message_rejected", "code=invalid_retry err=\"%s\"", value);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  FILE *f = fdopen(fd, "r");
  cr_assert_not_null(f);
  rewind(f);
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  fclose(f);
  unlink(path);
  return out;
}

static int lines(const char *s) {
  int n = 0;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

/* A field that holds a newline (here a JSON key of a message taken from
 * the queue, quoted in the parse error) cannot forge a second event. */
Test(log, a_field_cannot_end_the_line) {
  const char *forged =
      "retry.x is not a known field\nts=2026-01-01T00:00:00.000Z "
      "level=info comp=api event=task_submitted\r\t\x01";
  char *out = logged(PT_LOG_LOGFMT, forged);
  cr_assert_eq(lines(out), 1, "one event, one line: %s", out);
  cr_assert_not_null(strstr(out, "field\\nts=2026"), "%s", out);
  cr_assert_not_null(strstr(out, "\\r\\t\\x01\""), "%s", out);
  cr_assert_not_null(strstr(out, "event=message_rejected "), "%s", out);
  out = logged(PT_LOG_JSON, forged);
  cr_assert_eq(lines(out), 1, "one event, one line: %s", out);
  cr_assert_not_null(strstr(out, "\\u000a"), "%s", out);
}

/* Text without control characters, UTF-8 included, is written as it is. */
Test(log, plain_fields_are_kept) {
  char *out = logged(PT_LOG_LOGFMT, "订单 closed");
  cr_assert_not_null(strstr(out, "err=\"订单 closed\"\n"), "%s", out);
}
