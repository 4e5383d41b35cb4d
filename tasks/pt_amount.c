#include "tasks/pt_amount.h"

#include <inttypes.h>
#include <stdio.h>

#include "core/pt_error.h"

int pt_amount_to_yuan(int64_t fen, char *buf, size_t len) {
  if (buf == NULL || len == 0)
    return PT_EINVAL;
  buf[0] = '\0';
  if (fen < 0)
    return PT_EINVAL;
  int n = snprintf(buf, len, "%" PRId64 ".%02d", fen / 100, (int)(fen % 100));
  if (n < 0 || (size_t)n >= len) {
    buf[0] = '\0';
    return PT_EINVAL;
  }
  return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

int pt_amount_from_yuan(const char *s, size_t len, int64_t *fen) {
  size_t i = 0;
  int64_t v = 0;
  *fen = -1;
  if (s == NULL || len == 0 || !is_digit(s[0]))
    return PT_EINVAL;
  /* "0.50" is how a channel writes half a yuan; "00.50" or "012" is not a
   * number any channel sends, so it is refused rather than guessed at. */
  if (s[0] == '0' && len > 1 && s[1] != '.')
    return PT_EINVAL;
  for (; i < len && is_digit(s[i]); i++) {
    int d = s[i] - '0';
    if (v > (INT64_MAX - d) / 10)
      return PT_EINVAL;
    v = v * 10 + d;
  }
  /* Yuan to fen; the decimals are added below, at most 99. */
  if (v > INT64_MAX / 100)
    return PT_EINVAL;
  v *= 100;
  if (i < len) {
    if (s[i] != '.')
      return PT_EINVAL;
    size_t decimals = len - i - 1;
    if (decimals < 1 || decimals > 2 || !is_digit(s[i + 1]) ||
        (decimals == 2 && !is_digit(s[i + 2])))
      return PT_EINVAL;
    int cents = (s[i + 1] - '0') * 10 + (decimals == 2 ? s[i + 2] - '0' : 0);
    if (v > INT64_MAX - cents)
      return PT_EINVAL;
    v += cents;
  }
  *fen = v;
  return 0;
}
