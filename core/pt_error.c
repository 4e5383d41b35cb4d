#include "core/pt_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *pt_err_name(int code) {
  switch (code) {
  case PT_OK:
    return "PT_OK";
#define PT_ERRNO_NAME(name, value, msg)                                      \
  case PT_##name:                                                            \
    return "PT_" #name;
    PT_ERRNO_MAP(PT_ERRNO_NAME)
#undef PT_ERRNO_NAME
  default:
    return "PT_EUNKNOWN";
  }
}

const char *pt_strerror(int code) {
  switch (code) {
  case PT_OK:
    return "success";
#define PT_ERRNO_MSG(name, value, msg)                                       \
  case PT_##name:                                                            \
    return msg;
    PT_ERRNO_MAP(PT_ERRNO_MSG)
#undef PT_ERRNO_MSG
  default:
    return "unknown error";
  }
}

int pt_error_set(pt_error_t *err, int domain, int code, const char *fmt, ...) {
  if (err != NULL) {
    va_list ap;
    err->domain = domain;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
  }
  return code;
}

void pt_utf8_copy(char *dst, size_t size, const char *s) {
  size_t n = strlen(s);
  if (n >= size) {
    n = size - 1;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
      n--;
  }
  memmove(dst, s, n); /* dst may be s */
  dst[n] = '\0';
}
