#include "core/pt_buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_error.h"

int pt_buf_append(pt_buf_t *b, const void *p, size_t n) {
  if (n > SIZE_MAX - b->len - 1)
    return PT_ENOMEM;
  char *d = realloc(b->data, b->len + n + 1);
  if (d == NULL)
    return PT_ENOMEM;
  if (n > 0)
    memcpy(d + b->len, p, n);
  b->len += n;
  d[b->len] = '\0';
  b->data = d;
  return 0;
}

size_t pt_buf_curl_write(char *p, size_t size, size_t n, void *buf) {
  return pt_buf_append(buf, p, size * n) == 0 ? size * n : 0;
}
