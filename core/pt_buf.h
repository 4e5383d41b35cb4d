/* A growable byte buffer, always NUL-terminated, and the libcurl write
 * callback that fills one (CURLOPT_WRITEFUNCTION with CURLOPT_WRITEDATA
 * pointing at a pt_buf_t). */
#ifndef PT_BUF_H
#define PT_BUF_H

#include <stddef.h>

typedef struct {
  char *data; /* NULL until something is added; free() it */
  size_t len;
} pt_buf_t;

/* Appends n bytes; returns 0 or PT_ENOMEM (the buffer is unchanged). */
int pt_buf_append(pt_buf_t *b, const void *p, size_t n);

/* curl's write callback: returns the bytes taken (0 on failure). */
size_t pt_buf_curl_write(char *p, size_t size, size_t n, void *buf);

#endif
