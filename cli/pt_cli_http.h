/* One blocking HTTP request for the command-line tools and the bench's
 * set-up (libcurl easy). Never for a loop thread: the api, workers and
 * simulator use pt_http_client on their loops. */
#ifndef PT_CLI_HTTP_H
#define PT_CLI_HTTP_H

#include "core/pt_buf.h"

typedef struct {
  const char *method; /* "GET", "POST", … */
  const char *url;
  const char *token;    /* MAY be NULL: no Authorization header */
  const char *idem_key; /* MAY be NULL: no Idempotency-Key header */
  const char *body;     /* MAY be NULL: no body */
  long timeout_ms;
} pt_cli_req_t;

/* Sends r with Content-Type: application/json. Returns the HTTP status, or
 * when nothing answered, with *err (MAY be NULL) set to why: -1 if the
 * request never left (no connection), -2 if it may have reached the
 * server (a timeout or a reset after connecting: its outcome is unknown).
 * *out gets the answer's body (free(out->data)), even then. */
long pt_cli_http(const pt_cli_req_t *r, pt_buf_t *out, const char **err);

#endif
