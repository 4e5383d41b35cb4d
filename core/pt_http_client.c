#include "core/pt_http_client.h"

#include "core/pt_buf.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct xfer xfer_t;

/* Easy handles are reused (curl_easy_reset keeps nothing of the last
 * request but its buffers): a worker with thousands of calls a second
 * would otherwise allocate and clear a large handle for each. */
#define PT_HTTP_POOL_MAX 4096

struct pt_http_client {
  uv_loop_t *loop;
  CURLM *multi;
  CURL **pool;
  size_t npool;
  uv_timer_t timer;
  size_t inflight;
  long connects; /* connections opened since the start */
  xfer_t *head; /* in-flight transfers, for cancellation */
  int destroying;
};

/* One watched socket: its uv_poll lives until curl says CURL_POLL_REMOVE,
 * then is closed (not just stopped) and freed in its close callback. */
typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
  pt_http_client_t *c;
} sock_t;

struct xfer {
  pt_http_client_t *c;
  CURL *easy;
  pt_http_done_cb cb;
  void *arg;
  struct curl_slist *hdrs;
  pt_buf_t body, headers;
  const char *too_large; /* why the answer was cut off, or NULL */
  const pt_net_list_t *public_only;
  char refused[128]; /* why an address was refused, or empty */
  int opened;        /* a socket was opened to an address not refused */
  char errbuf[CURL_ERROR_SIZE];
  xfer_t *prev, *next;
};

#define STR(x) STR_(x)
#define STR_(x) #x

/* Keeps len more bytes of the answer in b, unless b would pass max: then
 * it takes nothing, so curl ends the transfer with CURLE_WRITE_ERROR, and
 * check_done reports `why` instead of curl's message. */
static size_t keep(xfer_t *x, pt_buf_t *b, size_t max, const char *why,
                   const char *p, size_t len) {
  if (len > max - b->len) {
    x->too_large = why;
    return 0;
  }
  return pt_buf_append(b, p, len) == 0 ? len : 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg) {
  xfer_t *x = arg;
  return keep(x, &x->body, PT_HTTP_MAX_BODY,
              "the reply was too large: its body passed "
              STR(PT_HTTP_MAX_BODY) " bytes", p, size * n);
}

static size_t on_header(char *p, size_t size, size_t n, void *arg) {
  xfer_t *x = arg;
  /* Keep only the last header block (after a 100 Continue, say). */
  if (size * n >= 5 && memcmp(p, "HTTP/", 5) == 0)
    x->headers.len = 0;
  return keep(x, &x->headers, PT_HTTP_MAX_HEADERS,
              "the reply was too large: its headers passed "
              STR(PT_HTTP_MAX_HEADERS) " bytes", p, size * n);
}

static void unlink_xfer(xfer_t *x) {
  if (x->prev)
    x->prev->next = x->next;
  else
    x->c->head = x->next;
  if (x->next)
    x->next->prev = x->prev;
  x->c->inflight--;
}

static void finish(xfer_t *x, int status, const char *error) {
  pt_http_client_t *c = x->c;
  pt_http_response_t res;
  memset(&res, 0, sizeof res);
  res.status = status;
  if (status == 0)
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &res.http_code);
  long opened = 0;
  if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &opened) == CURLE_OK)
    c->connects += opened;
  res.body = x->body.data ? x->body.data : "";
  res.body_len = x->body.len;
  res.headers = x->headers.data ? x->headers.data : "";
  res.headers_len = x->headers.len;
  res.error = error;
  unlink_xfer(x);
  curl_multi_remove_handle(c->multi, x->easy);
  if (!c->destroying && c->npool < PT_HTTP_POOL_MAX) {
    curl_easy_reset(x->easy);
    c->pool[c->npool++] = x->easy;
  } else {
    curl_easy_cleanup(x->easy);
  }
  curl_slist_free_all(x->hdrs);
  x->cb(&res, x->arg);
  free(x->body.data);
  free(x->headers.data);
  free(x);
}

static void check_done(pt_http_client_t *c) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    xfer_t *x;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    CURLcode rc = msg->data.result;
    int status = 0;
    if (rc == CURLE_OPERATION_TIMEDOUT)
      status = PT_ETIMEDOUT;
    else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST)
      status = PT_ECONNECT;
    else if (rc != CURLE_OK)
      status = PT_EHTTP;
    const char *error = NULL;
    if (rc != CURLE_OK && x->refused[0] != '\0' && !x->opened) {
      status = PT_EREFUSED;
      error = x->refused;
    } else if (rc == CURLE_WRITE_ERROR && x->too_large != NULL)
      error = x->too_large;
    else if (rc != CURLE_OK)
      error = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
    finish(x, status, error);
  }
}

/* Notes why x may not reach sa; 1 if it may not. */
static int refuse(xfer_t *x, const struct sockaddr *sa) {
  const char *kind = pt_net_refused(sa, x->public_only);
  if (kind == NULL)
    return 0;
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
              ip, sizeof ip);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6,
              &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, ip,
              sizeof ip);
  snprintf(x->refused, sizeof x->refused,
           "refused to connect to %s: a %s address, not a public one", ip,
           kind);
  return 1;
}

/* A new connection of a checked request: its address is checked before
 * the socket exists, so not even a SYN reaches a refused one. */
static curl_socket_t on_open_socket(void *arg, curlsocktype purpose,
                                    struct curl_sockaddr *a) {
  xfer_t *x = arg;
  (void)purpose;
  if (refuse(x, &a->addr))
    return CURL_SOCKET_BAD;
  x->opened = 1;
  return socket(a->family, a->socktype, a->protocol);
}

/* Every connection of a checked request, a reused one too (opened by an
 * unchecked request to the same host and port), before the request is
 * sent on it. */
static int on_prereq(void *arg, char *ip, char *local_ip, int port,
                     int local_port) {
  xfer_t *x = arg;
  struct sockaddr_storage ss;
  (void)local_ip;
  (void)port;
  (void)local_port;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *in = (struct sockaddr_in *)(void *)&ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)&ss;
  if (inet_pton(AF_INET, ip, &in->sin_addr) == 1)
    ss.ss_family = AF_INET;
  else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1)
    ss.ss_family = AF_INET6;
  return refuse(x, (struct sockaddr *)&ss) ? CURL_PREREQFUNC_ABORT
                                           : CURL_PREREQFUNC_OK;
}

static void on_poll(uv_poll_t *h, int status, int events) {
  sock_t *s = h->data;
  int flags = 0, running;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(s->c->multi, s->fd, flags, &running);
  check_done(s->c);
}

static void on_timeout(uv_timer_t *t) {
  pt_http_client_t *c = t->data;
  int running;
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(c);
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
  pt_http_client_t *c = userp;
  (void)multi;
  if (timeout_ms < 0)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

static void on_sock_closed(uv_handle_t *h) { free(h->data); }

static int on_socket(CURL *easy, curl_socket_t fd, int action, void *userp,
                     void *socketp) {
  pt_http_client_t *c = userp;
  sock_t *s = socketp;
  (void)easy;
  if (action == CURL_POLL_REMOVE) {
    if (s != NULL) {
      uv_poll_stop(&s->poll);
      uv_close((uv_handle_t *)&s->poll, on_sock_closed);
      curl_multi_assign(c->multi, fd, NULL);
    }
    return 0;
  }
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL)
      return -1;
    s->fd = fd;
    s->c = c;
    if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    curl_multi_assign(c->multi, fd, s);
  }
  int events = 0;
  if (action != CURL_POLL_OUT)
    events |= UV_READABLE;
  if (action != CURL_POLL_IN)
    events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

pt_http_client_t *pt_http_client_new(uv_loop_t *loop, pt_error_t *err) {
  pt_http_client_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    pt_error_set(err, PT_DOMAIN_HTTP, PT_ENOMEM, "out of memory");
    return NULL;
  }
  c->loop = loop;
  c->multi = curl_multi_init();
  if (c->multi == NULL) {
    free(c);
    pt_error_set(err, PT_DOMAIN_HTTP, PT_ENOMEM, "curl_multi_init failed");
    return NULL;
  }
  c->pool = calloc(PT_HTTP_POOL_MAX, sizeof *c->pool);
  if (c->pool == NULL) {
    curl_multi_cleanup(c->multi);
    free(c);
    pt_error_set(err, PT_DOMAIN_HTTP, PT_ENOMEM, "out of memory");
    return NULL;
  }
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  return c;
}

int pt_http_request(pt_http_client_t *c, const pt_http_request_t *req,
                    pt_http_done_cb cb, void *arg) {
  if (c->destroying)
    return PT_ECANCELED;
  xfer_t *x = calloc(1, sizeof *x);
  if (x == NULL)
    return PT_ENOMEM;
  x->c = c;
  x->cb = cb;
  x->arg = arg;
  x->easy = c->npool > 0 ? c->pool[--c->npool] : curl_easy_init();
  if (x->easy == NULL) {
    free(x);
    return PT_ENOMEM;
  }
  CURL *e = x->easy;
  curl_easy_setopt(e, CURLOPT_URL, req->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  /* A call that ends (its timeout, a drain) while its host's name is still
   * being looked up must not wait for the resolver's thread: libcurl joins
   * it otherwise, on the loop thread, for as long as a dead DNS server
   * keeps glibc waiting (seconds). */
  curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   req->timeout_ms > 0 ? req->timeout_ms : 10000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  /* Channel answers are small (a few hundred bytes to 2 KiB); curl's
   * default 16 KiB receive buffer per call in flight would dominate a
   * worker's memory with thousands of calls in flight. 1 KiB is curl's
   * minimum: a larger answer just takes more reads. */
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
  if (req->public_only != NULL) {
    x->public_only = req->public_only;
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
  }
  for (int i = 0; req->headers != NULL && req->headers[i] != NULL; i++)
    x->hdrs = curl_slist_append(x->hdrs, req->headers[i]);
  /* No "Expect: 100-continue" round trip for small JSON bodies. */
  x->hdrs = curl_slist_append(x->hdrs, "Expect:");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
  const char *method = req->method ? req->method : (req->body ? "POST" : "GET");
  if (req->body != NULL) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body);
  }
  if (strcmp(method, "GET") == 0 && req->body == NULL)
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  else if (strcmp(method, "POST") != 0)
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  else if (req->body == NULL) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, "");
  }
  x->next = c->head;
  if (c->head)
    c->head->prev = x;
  c->head = x;
  c->inflight++;
  if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
    unlink_xfer(x);
    curl_slist_free_all(x->hdrs);
    curl_easy_cleanup(e);
    free(x);
    return PT_EHTTP;
  }
  return 0;
}

size_t pt_http_client_inflight(const pt_http_client_t *c) {
  return c->inflight;
}

long pt_http_client_connects(const pt_http_client_t *c) { return c->connects; }

void pt_http_client_keep_connections(pt_http_client_t *c, long n) {
  if (n > 0)
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, n);
}

long pt_http_response_header(const pt_http_response_t *res, const char *name,
                             const char **value) {
  size_t nl = strlen(name);
  const char *p = res->headers, *end = res->headers + res->headers_len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL)
      eol = end;
    if ((size_t)(eol - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
      const char *v = p + nl + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
        ve--;
      *value = v;
      return (long)(ve - v);
    }
    p = eol + 1;
  }
  return -1;
}

static void on_timer_closed(uv_handle_t *h) {
  pt_http_client_t *c = h->data;
  free(c->pool);
  free(c);
}

void pt_http_client_destroy(pt_http_client_t *c) {
  if (c == NULL || c->destroying)
    return;
  c->destroying = 1;
  while (c->head != NULL)
    finish(c->head, PT_ECANCELED, "canceled");
  /* Closes the cached connections; curl reports their sockets removed, so
   * their polls close too. */
  curl_multi_cleanup(c->multi);
  c->multi = NULL;
  while (c->npool > 0)
    curl_easy_cleanup(c->pool[--c->npool]);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}
