/* HTTP/1.1 server on a libuv loop: libh2o (libuv flavour) behind a small
 * interface, so that api/ and the channel simulator share it.
 *
 * The handler gets every request (after h2o has read the whole body and
 * refused, with 413, bodies over max_body). It MUST answer each request
 * exactly once with pt_httpd_respond, now or later from another callback
 * (after a broker confirm, a Redis reply, a timer). If the client went away
 * in the meantime, respond only frees the request. */
#ifndef PT_HTTPD_H
#define PT_HTTPD_H

#include <stddef.h>
#include <uv.h>

#include "core/pt_error.h"

typedef struct pt_httpd pt_httpd_t;
typedef struct pt_httpd_req pt_httpd_req_t;

typedef void (*pt_httpd_handler_cb)(pt_httpd_req_t *req, void *arg);

typedef struct {
  const char *host;   /* numeric address, e.g. "127.0.0.1" */
  int port;           /* 0: pick a free port (see pt_httpd_port) */
  size_t max_body;    /* 0: 65536 */
  pt_httpd_handler_cb handler;
  void *arg;
} pt_httpd_opts_t;

pt_httpd_t *pt_httpd_new(uv_loop_t *loop, const pt_httpd_opts_t *opts,
                         pt_error_t *err);
int pt_httpd_port(const pt_httpd_t *s);
/* Connections accepted since the server started. */
long pt_httpd_accepted(const pt_httpd_t *s);

/* Request accessors; the strings are not NUL-terminated and live until the
 * request is answered. */
const char *pt_httpd_method(const pt_httpd_req_t *r, size_t *len);
const char *pt_httpd_path(const pt_httpd_req_t *r, size_t *len);   /* without ?query */
const char *pt_httpd_query(const pt_httpd_req_t *r, size_t *len);  /* after '?', or NULL */
const char *pt_httpd_body(const pt_httpd_req_t *r, size_t *len);
/* Header value by case-insensitive name, or NULL; the first of a header
 * sent more than once. */
const char *pt_httpd_header(const pt_httpd_req_t *r, const char *name,
                            size_t *len);
/* 1 if the header was sent more than once. */
int pt_httpd_header_repeated(const pt_httpd_req_t *r, const char *name);
/* A free loopback TCP port for a server started next (tests, the bench),
 * or -1. It lies below the kernel's ephemeral range: a port from bind(0)
 * comes from that range, where the source port of any outgoing connection
 * may take it before the server binds it. Never the same port twice in one
 * process. */
int pt_httpd_free_port(void);

/* 1 if the client is still connected (the request can still be answered). */
int pt_httpd_alive(const pt_httpd_req_t *r);

/* Answers and frees the request; body is copied. extra_headers is a
 * NULL-terminated list of "Name", "value" pairs and MAY be NULL. */
void pt_httpd_respond(pt_httpd_req_t *r, int status, const char *content_type,
                      const char *body, size_t len,
                      const char *const *extra_headers);

/* Stops listening, closes every connection and frees s once its handles are
 * closed (the loop must run for that). Requests not yet answered must still
 * be answered (respond then only frees them). destroy(NULL) does nothing. */
void pt_httpd_destroy(pt_httpd_t *s);

#endif
