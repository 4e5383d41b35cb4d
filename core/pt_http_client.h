/* Non-blocking HTTP client: libcurl's multi interface driven by a libuv
 * loop through curl's socket and timer callbacks (the shape of curl's
 * docs/examples/multi-uv.c). Thousands of requests may be in flight on one
 * loop. Name resolution uses curl's threaded resolver, never the loop. */
#ifndef PT_HTTP_CLIENT_H
#define PT_HTTP_CLIENT_H

#include <stddef.h>
#include <uv.h>

#include "core/pt_error.h"
#include "core/pt_net.h"

typedef struct pt_http_client pt_http_client_t;

/* The most an answer may hold. A channel answers in a few KiB, but a
 * notify_url is a client's: a URL that streams without end must not run
 * the worker out of memory. A longer answer is cut off as it passes the
 * limit and reported as PT_EHTTP, its error saying the reply was too
 * large. */
#define PT_HTTP_MAX_BODY 1048576  /* 1 MiB */
#define PT_HTTP_MAX_HEADERS 65536 /* 64 KiB, the last header block */

typedef struct {
  const char *method;        /* "GET", "POST", …; NULL: GET, or POST if body */
  const char *url;
  const char *const *headers; /* "Name: value" strings, NULL-terminated; MAY be NULL */
  const void *body;          /* copied; MAY be NULL */
  size_t body_len;
  long timeout_ms;           /* whole request; 0: 10000 */
  /* Non-NULL: reach only public addresses and those inside these networks
   * (pt_net_refused). Another is refused before anything is sent to it,
   * and a kept connection to one is not reused: status PT_EREFUSED. No
   * proxy from the environment is used, so that the address checked is
   * the receiver's. NULL: any address (the configured channels). */
  const pt_net_list_t *public_only;
} pt_http_request_t;

typedef struct {
  int status;            /* 0 on success (an HTTP answer arrived), or PT_ETIMEDOUT,
                            PT_ECONNECT, PT_EHTTP for transport failures
                            and answers over the limits above, PT_EREFUSED
                            for an address public_only refuses */
  long http_code;        /* HTTP status when status == 0 */
  const char *body;      /* NUL-terminated for convenience */
  size_t body_len;
  const char *headers;   /* the raw response header block */
  size_t headers_len;
  const char *error;     /* curl's message when status != 0 */
} pt_http_response_t;

/* res and everything in it live only during the callback. */
typedef void (*pt_http_done_cb)(const pt_http_response_t *res, void *arg);

pt_http_client_t *pt_http_client_new(uv_loop_t *loop, pt_error_t *err);

/* Starts a request; cb runs once on the loop thread, unless this returns an
 * error. */
int pt_http_request(pt_http_client_t *c, const pt_http_request_t *req,
                    pt_http_done_cb cb, void *arg);

/* Requests in flight. */
size_t pt_http_client_inflight(const pt_http_client_t *c);

/* Connections opened since the client started (each a TCP, and for https
 * a TLS, handshake). */
long pt_http_client_connects(const pt_http_client_t *c);

/* Keeps connections for reuse until n are open (busy and idle together):
 * when a connection comes back with more open, the oldest idle one is
 * closed. An idle one is still closed after libcurl's 118 s. Not called
 * (or n <= 0): libcurl's default, four times the requests in flight at the
 * moment a connection comes back, which closes connections after every
 * lull and opens new ones in the next burst. */
void pt_http_client_keep_connections(pt_http_client_t *c, long n);

/* Finds a response header's value (case-insensitive name); returns its
 * length and sets *value, or returns -1. */
long pt_http_response_header(const pt_http_response_t *res, const char *name,
                             const char **value);

/* Cancels every request in flight (their callbacks run with PT_ECANCELED),
 * closes the handles and frees c once the last one is closed; the loop must
 * run for that. destroy(NULL) does nothing. */
void pt_http_client_destroy(pt_http_client_t *c);

#endif
