#include "core/pt_httpd.h"

#include <arpa/inet.h>
#include <bson/bson.h>
#include <ctype.h>
#include <h2o.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct conn conn_t;

struct pt_httpd {
  uv_loop_t *loop;
  h2o_globalconf_t config;
  h2o_context_t ctx;
  h2o_accept_ctx_t accept_ctx;
  uv_tcp_t listener;
  int port;
  pt_httpd_handler_cb handler;
  void *arg;
  size_t max_body; /* larger bodies are answered 413 */
  conn_t *conns; /* accepted connections, so destroy can end them */
  long accepted;  /* connections accepted since the start */
  int destroying;
  int listener_closed;
};

/* Our handler: h2o's handler with a pointer back to the server. */
typedef struct {
  h2o_handler_t super;
  pt_httpd_t *srv;
} handler_t;

/* An accepted connection; h2o owns it once h2o_uv_socket_create has it and
 * calls on_conn_closed when it is done. The uv_tcp_t comes first so the
 * close callback's handle is the conn_t. */
struct conn {
  uv_tcp_t tcp;
  pt_httpd_t *srv;
  conn_t *prev, *next;
};

typedef struct link link_t;

struct pt_httpd_req {
  h2o_req_t *req; /* NULL once h2o freed it (the client went away) */
  link_t *link;
};

/* Lives in the request's memory pool; its dispose callback tells the
 * pt_httpd_req_t that h2o has freed the request. */
struct link {
  pt_httpd_req_t *owner;
};

static void on_link_dispose(void *p) {
  link_t *l = p;
  if (l->owner != NULL)
    l->owner->req = NULL;
}

/* Where h2o reissues a request it refused as too large (its errordoc
 * filter), so that the 413 carries a JSON error like every other error. */
#define TOO_LARGE_PATH "/.paytask/errors/413"

/* h2o 2.2's errordoc filter, as lib/handler/errordoc.c lays it out: it has
 * no dispose of its own, so its copy of the errordocs outlived the server
 * (LeakSanitizer saw it). This frees what h2o_errordoc_register made. */
struct errordoc_filter {
  h2o_filter_t super;
  H2O_VECTOR(h2o_errordoc_t) errordocs;
};

static void errordoc_dispose(h2o_filter_t *f) {
  struct errordoc_filter *self = (struct errordoc_filter *)f;
  for (size_t i = 0; i != self->errordocs.size; ++i)
    free(self->errordocs.entries[i].url.base);
  free(self->errordocs.entries);
}

static void register_too_large(h2o_pathconf_t *path) {
  h2o_errordoc_t too_large = {413, {H2O_STRLIT(TOO_LARGE_PATH)}};
  size_t before = path->filters.size;
  h2o_filter_t *old = before > 0 ? path->filters.entries[0] : NULL;
  h2o_errordoc_register(path, &too_large, 1);
  /* The new filter: h2o puts it first (2.2) or last. */
  if (path->filters.size != before + 1)
    return;
  h2o_filter_t *f = path->filters.entries[0] != old
                        ? path->filters.entries[0]
                        : path->filters.entries[path->filters.size - 1];
  f->dispose = errordoc_dispose;
}

/* Answers req with the api's JSON error, from h2o's side of a request
 * (before a pt_httpd_req_t exists). */
static void send_error(h2o_req_t *req, int status, const char *reason,
                       const char *code, const char *message) {
  bson_t doc = BSON_INITIALIZER, e;
  size_t len;
  BSON_APPEND_DOCUMENT_BEGIN(&doc, "error", &e);
  BSON_APPEND_UTF8(&e, "code", code);
  BSON_APPEND_UTF8(&e, "message", message);
  bson_append_document_end(&doc, &e);
  char *json = bson_as_relaxed_extended_json(&doc, &len);
  bson_destroy(&doc);
  req->res.status = status;
  req->res.reason = reason;
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                 H2O_STRLIT("application/json"));
  h2o_send_inline(req, json, len); /* copies it */
  bson_free(json);
}

static void send_too_large(h2o_req_t *req) {
  send_error(req, 413, "Request Entity Too Large", "body_too_large",
             "the request body is over the server's limit (api.max_body)");
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  pt_httpd_t *srv = ((handler_t *)self)->srv;
  /* A body over the limit but under h2o's (four times it) was read whole:
   * the 413 goes out on a connection that stays open. Beyond h2o's, h2o
   * answers (errordoc) and closes at once, with the rest of the body
   * unread, and the client may get a reset instead of the 413. */
  if ((req->entity.base != NULL && req->entity.len > srv->max_body) ||
      h2o_memis(req->path_normalized.base, req->path_normalized.len,
                H2O_STRLIT(TOO_LARGE_PATH))) {
    send_too_large(req);
    return 0;
  }
  pt_httpd_req_t *r = calloc(1, sizeof *r);
  if (r == NULL) {
    /* Not h2o's plain-text 404 (what returning -1 gives): an error the
     * client can read, and retry. */
    send_error(req, 503, "Service Unavailable", "overloaded",
               "the server is out of memory; nothing was done, retry");
    return 0;
  }
  r->req = req;
  r->link = h2o_mem_alloc_shared(&req->pool, sizeof *r->link, on_link_dispose);
  r->link->owner = r;
  srv->handler(r, srv->arg);
  return 0;
}

static void maybe_free(pt_httpd_t *srv) {
  if (!srv->destroying || !srv->listener_closed || srv->conns != NULL)
    return;
  /* Closes h2o's own libuv handles (timers, the multithread queue); h2o
   * frees their memory in their close callbacks. */
  h2o_context_dispose(&srv->ctx);
  h2o_config_dispose(&srv->config);
  free(srv);
}

static void on_conn_closed(uv_handle_t *h) {
  conn_t *c = (conn_t *)h;
  pt_httpd_t *srv = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  free(c);
  maybe_free(srv);
}

static void on_accept(uv_stream_t *listener, int status) {
  pt_httpd_t *srv = listener->data;
  if (status != 0 || srv->destroying)
    return;
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL)
    return;
  uv_tcp_init(srv->loop, &c->tcp);
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  srv->accepted++;
  c->srv = srv;
  c->next = srv->conns;
  if (c->next)
    c->next->prev = c;
  srv->conns = c;
  h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp,
                                            on_conn_closed);
  h2o_accept(&srv->accept_ctx, sock);
}

long pt_httpd_accepted(const pt_httpd_t *s) { return s->accepted; }

static void on_failed_listener_closed(uv_handle_t *h) { free(h->data); }

pt_httpd_t *pt_httpd_new(uv_loop_t *loop, const pt_httpd_opts_t *opts,
                         pt_error_t *err) {
  struct sockaddr_storage addr;
  int rc;
  if (uv_ip4_addr(opts->host, opts->port, (struct sockaddr_in *)&addr) != 0 &&
      uv_ip6_addr(opts->host, opts->port, (struct sockaddr_in6 *)&addr) != 0) {
    pt_error_set(err, PT_DOMAIN_HTTP, PT_EINVAL,
                 "listen address \"%s\" is not a numeric address", opts->host);
    return NULL;
  }
  pt_httpd_t *srv = calloc(1, sizeof *srv);
  if (srv == NULL)
    return NULL;
  srv->loop = loop;
  srv->handler = opts->handler;
  srv->arg = opts->arg;
  h2o_config_init(&srv->config);
  srv->max_body = opts->max_body ? opts->max_body : 65536;
  srv->config.max_request_entity_size =
      srv->max_body <= SIZE_MAX / 4 ? 4 * srv->max_body : srv->max_body;
  srv->config.server_name = h2o_iovec_init(H2O_STRLIT("paytask"));
  /* HTTP/1.1 only. h2o's default also takes cleartext HTTP/2 (prior
   * knowledge, or Upgrade: h2c), which nothing here uses or checks: its
   * streams buffer request bodies each up to the limit above, many to a
   * connection. This setting turns off both ways in. */
  srv->config.http1.upgrade_to_http2 = 0;
  h2o_hostconf_t *host = h2o_config_register_host(
      &srv->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
  handler_t *h = (handler_t *)h2o_create_handler(path, sizeof *h);
  h->super.on_req = on_req;
  h->srv = srv;
  register_too_large(path);
  register_too_large(&host->fallback_path);

  uv_tcp_init(loop, &srv->listener);
  srv->listener.data = srv;
  if ((rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_accept)) != 0) {
    pt_error_set(err, PT_DOMAIN_HTTP, PT_EIO, "cannot listen on %s:%d: %s",
                 opts->host, opts->port, uv_strerror(rc));
    /* Nothing of h2o's is on the loop yet: only the listener to close;
     * its close callback frees srv when the loop next runs. */
    h2o_config_dispose(&srv->config);
    uv_close((uv_handle_t *)&srv->listener, on_failed_listener_closed);
    return NULL;
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
  srv->port = bound.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&bound)->sin_port);
  h2o_context_init(&srv->ctx, loop, &srv->config);
  srv->accept_ctx.ctx = &srv->ctx;
  srv->accept_ctx.hosts = srv->config.hosts;
  return srv;
}

int pt_httpd_port(const pt_httpd_t *s) { return s->port; }

const char *pt_httpd_method(const pt_httpd_req_t *r, size_t *len) {
  if (r->req == NULL) {
    *len = 0;
    return "";
  }
  *len = r->req->method.len;
  return r->req->method.base;
}

const char *pt_httpd_path(const pt_httpd_req_t *r, size_t *len) {
  if (r->req == NULL) {
    *len = 0;
    return "";
  }
  size_t n = r->req->query_at != SIZE_MAX ? r->req->query_at
                                          : r->req->path.len;
  *len = n;
  return r->req->path.base;
}

const char *pt_httpd_query(const pt_httpd_req_t *r, size_t *len) {
  *len = 0;
  if (r->req == NULL || r->req->query_at == SIZE_MAX)
    return NULL;
  *len = r->req->path.len - r->req->query_at - 1;
  return r->req->path.base + r->req->query_at + 1;
}

const char *pt_httpd_body(const pt_httpd_req_t *r, size_t *len) {
  if (r->req == NULL || r->req->entity.base == NULL) {
    *len = 0;
    return "";
  }
  *len = r->req->entity.len;
  return r->req->entity.base;
}

/* The index of the header `name` after index `after` (-1: the first), or
 * -1. */
static ssize_t find_header(const pt_httpd_req_t *r, const char *name,
                           ssize_t after) {
  char lower[128];
  size_t n = strlen(name);
  if (r->req == NULL || n >= sizeof lower)
    return -1;
  /* h2o keeps HTTP/1 header names in lower case. */
  for (size_t i = 0; i < n; i++)
    lower[i] = (char)tolower((unsigned char)name[i]);
  return h2o_find_header_by_str(&r->req->headers, lower, n, after);
}

const char *pt_httpd_header(const pt_httpd_req_t *r, const char *name,
                            size_t *len) {
  ssize_t i = find_header(r, name, -1);
  if (i < 0)
    return NULL;
  *len = r->req->headers.entries[i].value.len;
  return r->req->headers.entries[i].value.base;
}

int pt_httpd_header_repeated(const pt_httpd_req_t *r, const char *name) {
  ssize_t i = find_header(r, name, -1);
  return i >= 0 && find_header(r, name, i) >= 0;
}

int pt_httpd_alive(const pt_httpd_req_t *r) { return r->req != NULL; }

static const char *reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 409: return "Conflict";
  case 413: return "Payload Too Large";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "Unknown";
  }
}

void pt_httpd_respond(pt_httpd_req_t *r, int status, const char *content_type,
                      const char *body, size_t len,
                      const char *const *extra_headers) {
  h2o_req_t *req = r->req;
  if (req != NULL) {
    r->link->owner = NULL;
    req->res.status = status;
    req->res.reason = reason(status);
    if (content_type != NULL)
      h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE,
                     NULL, content_type, strlen(content_type));
    for (int i = 0; extra_headers != NULL && extra_headers[i] != NULL &&
                    extra_headers[i + 1] != NULL;
         i += 2) {
      /* h2o keeps the name's pointer: copy it into the request's pool. */
      h2o_iovec_t n = h2o_strdup(&req->pool, extra_headers[i], SIZE_MAX);
      h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 1,
                            NULL, extra_headers[i + 1],
                            strlen(extra_headers[i + 1]));
    }
    /* A length of its own: h2o 2.2's h2o_send_inline leaves it unset, and
     * its chunked filter then closes the connection after any status but
     * 200, so no client could keep a connection across a submit's 202 or
     * an error. The statuses that carry no body get no length. */
    if (status >= 200 && status != 204 && status != 304)
      req->res.content_length = len;
    h2o_send_inline(req, body, len);
  }
  free(r);
}

static void on_listener_closed(uv_handle_t *h) {
  pt_httpd_t *srv = h->data;
  srv->listener_closed = 1;
  maybe_free(srv);
}

void pt_httpd_destroy(pt_httpd_t *s) {
  if (s == NULL || s->destroying)
    return;
  s->destroying = 1;
  uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  /* h2o 2.2 has no call that closes its connections: shutting the sockets
   * down makes each one read EOF (or fail its write), and h2o then closes
   * it through on_conn_closed. */
  for (conn_t *c = s->conns; c != NULL; c = c->next) {
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
      shutdown(fd, SHUT_RDWR);
  }
}

int pt_httpd_free_port(void) {
  static int given[256], ngiven;
  static unsigned seed;
  int low = 32768, high = 60999;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f != NULL) {
    if (fscanf(f, "%d %d", &low, &high) != 2)
      low = 32768;
    fclose(f);
  }
  int lo = 10000, hi = low - 1;
  if (hi - lo < 1000)
    return -1;
  if (seed == 0)
    seed = (unsigned)getpid() ^ (unsigned)time(NULL);
  for (int tries = 0; tries < 1000; tries++) {
    int port = lo + (int)(rand_r(&seed) % (unsigned)(hi - lo + 1)), dup = 0;
    for (int i = 0; i < ngiven; i++)
      dup |= given[i] == port;
    int fd = dup ? -1 : socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
      continue;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    if (!ok)
      continue;
    if (ngiven < (int)(sizeof given / sizeof given[0]))
      given[ngiven++] = port;
    return port;
  }
  return -1;
}
