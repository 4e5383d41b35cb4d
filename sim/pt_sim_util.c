/* The simulator's small services that hold no state: time in the channels'
 * zone, key loading, path decoding and notification headers. The dialects
 * reach them through pt_sim_dialect.h, as they do the rest of pt_sim.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pt_buf.h"
#include "core/pt_crypto.h"
#include "core/pt_error.h"
#include "sim/pt_sim_dialect.h"

int64_t pt_sim_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void cst(int64_t ms, struct tm *tm) {
  time_t s = (time_t)(ms / 1000) + 8 * 3600; /* China: UTC+8, no DST */
  gmtime_r(&s, tm);
}

void pt_sim_time_alipay(int64_t ms, char out[20]) {
  struct tm tm;
  cst(ms, &tm);
  strftime(out, 20, "%Y-%m-%d %H:%M:%S", &tm);
}

void pt_sim_time_rfc3339(int64_t ms, char out[26]) {
  struct tm tm;
  cst(ms, &tm);
  strftime(out, 26, "%Y-%m-%dT%H:%M:%S+08:00", &tm);
}

static int read_file(const char *what, const char *path, char **out,
                     size_t *len, pt_error_t *err) {
  pt_buf_t b = {NULL, 0};
  char chunk[4096];
  size_t n;
  *out = NULL;
  *len = 0;
  if (path == NULL || path[0] == '\0')
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s is not set",
                        what);
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s: %s: %s", what,
                        path, strerror(errno));
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (pt_buf_append(&b, chunk, n) != 0) {
      fclose(f);
      free(b.data);
      return pt_error_set(err, PT_DOMAIN_SYSTEM, PT_ENOMEM, "out of memory");
    }
  }
  fclose(f);
  if (b.data == NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s: %s is empty",
                        what, path);
  *out = b.data;
  *len = b.len;
  return 0;
}

int pt_sim_load_key(const char *what, const char *path, int private_key,
                    pt_crypto_key_t **out, pt_error_t *err) {
  char *pem = NULL;
  size_t len = 0;
  *out = NULL;
  int rc = read_file(what, path, &pem, &len, err);
  if (rc == 0)
    rc = private_key ? pt_crypto_key_new_private(pem, len, out, err)
                     : pt_crypto_key_new_public(pem, len, out, err);
  if (rc != 0 && err != NULL && rc != PT_ECONFIG) {
    /* Name the file: the crypto layer's message does not. */
    char msg[sizeof err->message];
    snprintf(msg, sizeof msg, "%s", err->message);
    pt_error_set(err, PT_DOMAIN_CONFIG, rc, "%s: %s: %s", what, path, msg);
  }
  free(pem);
  return rc;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int pt_sim_path_decode(const char *s, size_t len, char *out, size_t outlen) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    int hi = s[i] == '%' && i + 2 < len ? hexval(s[i + 1]) : -1;
    int lo = hi >= 0 ? hexval(s[i + 2]) : -1;
    if (o + 1 >= outlen)
      return -1;
    if (hi >= 0 && lo >= 0) {
      if (hi + lo == 0)
        return -1;
      out[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      out[o++] = s[i];
    }
  }
  out[o] = '\0';
  return 0;
}

int pt_sim_notice_header(pt_sim_notice_t *n, const char *name,
                         const char *value) {
  size_t len = strlen(name) + 2 + strlen(value) + 1;
  if (n->nheaders >= PT_SIM_NOTICE_MAX_HEADERS)
    return PT_EINVAL;
  char *h = malloc(len);
  if (h == NULL)
    return PT_ENOMEM;
  snprintf(h, len, "%s: %s", name, value);
  n->headers[n->nheaders++] = h;
  n->headers[n->nheaders] = NULL;
  return 0;
}

void pt_sim_notice_clear(pt_sim_notice_t *n) {
  free(n->body);
  for (int i = 0; i < n->nheaders; i++)
    free(n->headers[i]);
  memset(n, 0, sizeof *n);
}
