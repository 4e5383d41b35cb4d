/* The HTTP server (h2o) and client (curl multi) on one libuv loop
 * (issue 2): 1,000 concurrent requests, answers now and later. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "core/pt_http_client.h"
#include "core/pt_httpd.h"
#include "tests/support/pt_test.h"

#define N 1000

typedef struct {
  pt_httpd_req_t *req;
  uv_timer_t timer;
  char body[256];
} later_t;

typedef struct {
  uv_loop_t *loop;
  pt_httpd_t *srv;
  pt_http_client_t *cli;
  int ok, bad, done, expected;
  pt_httpd_req_t *held; /* a request answered only at the end */
  int status_seen;
  void *phase; /* the burst running (connections_are_kept_across_lulls) */
} ctx_t;

static void on_later_closed(uv_handle_t *h) { free(h->data); }

static void on_later(uv_timer_t *t) {
  later_t *l = t->data;
  pt_httpd_respond(l->req, 200, "text/plain", l->body, strlen(l->body), NULL);
  uv_close((uv_handle_t *)t, on_later_closed);
}

/* /size/N answers N bytes of body; /headers/N, N headers of 1,000 bytes
 * each. */
static void big_answer(pt_httpd_req_t *req, const char *path) {
  enum { MAX_PADS = 100 };
  static char names[MAX_PADS][32], value[1001];
  const char *headers[2 * MAX_PADS + 1] = {NULL};
  size_t n = strtoul(strrchr(path, '/') + 1, NULL, 10);
  if (strncmp(path, "/size/", 6) == 0) {
    char *body = malloc(n);
    memset(body, 'x', n);
    pt_httpd_respond(req, 200, "text/plain", body, n, NULL);
    free(body);
    return;
  }
  cr_assert_leq(n, MAX_PADS);
  memset(value, 'v', sizeof value - 1);
  for (size_t i = 0; i < n; i++) {
    snprintf(names[i], sizeof names[i], "X-Pad-%zu", i);
    headers[2 * i] = names[i];
    headers[2 * i + 1] = value;
  }
  pt_httpd_respond(req, 200, "text/plain", "", 0, headers);
}

static void handler(pt_httpd_req_t *req, void *arg) {
  ctx_t *c = arg;
  size_t plen, blen;
  const char *p = pt_httpd_path(req, &plen);
  const char *b = pt_httpd_body(req, &blen);
  char path[128];
  snprintf(path, sizeof path, "%.*s", (int)plen, p);
  if (strncmp(path, "/hold", 5) == 0) {
    c->held = req; /* answered by the test later */
    return;
  }
  if (strncmp(path, "/size/", 6) == 0 || strncmp(path, "/headers/", 9) == 0) {
    big_answer(req, path);
    return;
  }
  /* Even numbers answer at once, odd ones from a timer: deferred. */
  int n = atoi(path + 3);
  later_t *l = calloc(1, sizeof *l);
  snprintf(l->body, sizeof l->body, "%s|%.*s", path, (int)blen, b);
  if (n % 2 == 0) {
    pt_httpd_respond(req, 200, "text/plain", l->body, strlen(l->body), NULL);
    free(l);
    return;
  }
  l->req = req;
  uv_timer_init(c->loop, &l->timer);
  l->timer.data = l;
  uv_timer_start(&l->timer, on_later, 1 + n % 20, 0);
}

typedef struct {
  ctx_t *c;
  int n;
} call_t;

static void finish_if_done(ctx_t *c) {
  if (c->done == c->expected) {
    pt_http_client_destroy(c->cli);
    pt_httpd_destroy(c->srv);
  }
}

/* 1 if res is the server's answer to POST /r/n with body-n. */
static int answered_right(const pt_http_response_t *res, int n) {
  char want[128];
  snprintf(want, sizeof want, "/r/%d|body-%d", n, n);
  return res->status == 0 && res->http_code == 200 && strcmp(res->body, want) == 0;
}

/* POSTs body-n to /r/n (even n answered at once, odd from a timer); cb
 * gets a call_t to free. */
static void post_numbered(ctx_t *c, int n, long timeout_ms, pt_http_done_cb cb) {
  char url[96], body[32];
  call_t *k = malloc(sizeof *k);
  k->c = c;
  k->n = n;
  snprintf(url, sizeof url, "http://127.0.0.1:%d/r/%d", pt_httpd_port(c->srv), n);
  snprintf(body, sizeof body, "body-%d", n);
  pt_http_request_t r = {.method = "POST", .url = url, .body = body,
                         .body_len = strlen(body), .timeout_ms = timeout_ms};
  cr_assert_eq(pt_http_request(c->cli, &r, cb, k), 0);
}

static void on_answer(const pt_http_response_t *res, void *arg) {
  call_t *k = arg;
  if (answered_right(res, k->n))
    k->c->ok++;
  else
    k->c->bad++;
  k->c->done++;
  finish_if_done(k->c);
  free(k);
}

static void raise_nofile(void) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
}

static void setup(ctx_t *c, uv_loop_t *loop, size_t max_body) {
  pt_error_t err;
  raise_nofile();
  memset(c, 0, sizeof *c);
  uv_loop_init(loop);
  c->loop = loop;
  pt_httpd_opts_t o = {.host = "127.0.0.1", .port = 0, .max_body = max_body,
                       .handler = handler, .arg = c};
  c->srv = pt_httpd_new(loop, &o, &err);
  cr_assert_not_null(c->srv, "%s", err.message);
  cr_assert_gt(pt_httpd_port(c->srv), 0);
  c->cli = pt_http_client_new(loop, &err);
  cr_assert_not_null(c->cli);
}

Test(http, thousand_concurrent_requests, .timeout = 120) {
  uv_loop_t loop;
  ctx_t c;
  setup(&c, &loop, 0);
  c.expected = N;
  for (int i = 0; i < N; i++)
    post_numbered(&c, i, 60000, on_answer);
  cr_assert_eq(pt_http_client_inflight(c.cli), N, "all in flight at once");
  pt_test_run_loop(&loop, 100000, "1,000 HTTP requests");
  cr_assert_eq(c.ok, N, "%d ok, %d bad", c.ok, c.bad);
  pt_test_close_loop(&loop);
}

typedef struct {
  ctx_t *c;
  int status;
  long code;
  size_t body_len;
  char error[256];
} one_t;

static void on_one(const pt_http_response_t *res, void *arg) {
  one_t *o = arg;
  o->status = res->status;
  o->code = res->http_code;
  o->body_len = res->body_len;
  snprintf(o->error, sizeof o->error, "%s", res->error ? res->error : "");
  o->c->done++;
  if (o->status == PT_ETIMEDOUT && o->c->held != NULL) {
    /* The client gave up; answering now must only free the request. */
    pt_httpd_respond(o->c->held, 200, "text/plain", "late", 4, NULL);
    o->c->held = NULL;
  }
  finish_if_done(o->c);
}

static void one(ctx_t *c, const char *url, const char *body, size_t len,
                long timeout, one_t *o) {
  pt_http_request_t r = {.url = url, .body = body, .body_len = len,
                         .timeout_ms = timeout};
  o->c = c;
  cr_assert_eq(pt_http_request(c->cli, &r, on_one, o), 0);
}

Test(http, limits_and_failures, .timeout = 60) {
  uv_loop_t loop;
  ctx_t c;
  char url[96];
  one_t big = {0}, closed = {0}, slow = {0};
  setup(&c, &loop, 1024);
  c.expected = 3;
  char *body = malloc(4096);
  memset(body, 'x', 4096);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/r/2", pt_httpd_port(c.srv));
  one(&c, url, body, 4096, 10000, &big);
  one(&c, "http://127.0.0.1:1/", NULL, 0, 10000, &closed);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hold", pt_httpd_port(c.srv));
  one(&c, url, NULL, 0, 300, &slow);
  pt_test_run_loop(&loop, 30000, "HTTP limits");
  free(body);
  cr_assert_eq(big.status, 0);
  cr_assert_eq(big.code, 413, "over the body limit answered %ld", big.code);
  cr_assert_eq(closed.status, PT_ECONNECT);
  cr_assert_eq(slow.status, PT_ETIMEDOUT);
  pt_test_close_loop(&loop);
}

/* An answer is kept up to PT_HTTP_MAX_BODY bytes of body and
 * PT_HTTP_MAX_HEADERS of headers; a larger one (a notify_url that streams
 * without end, say) is cut off as it passes the limit, and its error says
 * the reply was too large. */
Test(http, answers_over_the_limits_are_cut_off, .timeout = 60) {
  uv_loop_t loop;
  ctx_t c;
  char url[96];
  one_t full = {0}, big = {0}, headers = {0};
  setup(&c, &loop, 0);
  c.expected = 3;
  snprintf(url, sizeof url, "http://127.0.0.1:%d/size/%d",
           pt_httpd_port(c.srv), PT_HTTP_MAX_BODY);
  one(&c, url, NULL, 0, 30000, &full);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/size/%d",
           pt_httpd_port(c.srv), 3 * PT_HTTP_MAX_BODY);
  one(&c, url, NULL, 0, 30000, &big);
  /* 80 KB: over ours, under curl's own limit (300 KB in 7.88). */
  snprintf(url, sizeof url, "http://127.0.0.1:%d/headers/80",
           pt_httpd_port(c.srv));
  one(&c, url, NULL, 0, 30000, &headers);
  pt_test_run_loop(&loop, 50000, "HTTP answers over the limits");
  cr_assert_eq(full.status, 0, "an answer at the limit failed: %s", full.error);
  cr_assert_eq(full.code, 200);
  cr_assert_eq(full.body_len, PT_HTTP_MAX_BODY);
  cr_assert_eq(big.status, PT_EHTTP, "a body over the limit was taken");
  cr_assert(strstr(big.error, "too large") != NULL, "error: %s", big.error);
  cr_assert_eq(headers.status, PT_EHTTP, "headers over the limit were taken");
  cr_assert(strstr(headers.error, "too large") != NULL, "error: %s",
            headers.error);
  pt_test_close_loop(&loop);
}

Test(http, response_headers) {
  pt_http_response_t r = {0};
  const char *v;
  r.headers = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
              "Wechatpay-Serial:  ABC123 \r\n\r\n";
  r.headers_len = strlen(r.headers);
  long n = pt_http_response_header(&r, "wechatpay-serial", &v);
  cr_assert_eq(n, 6);
  cr_assert_eq(strncmp(v, "ABC123", 6), 0);
  cr_assert_eq(pt_http_response_header(&r, "X-Missing", &v), -1);
}

/* Bursts of calls with lulls between them, as a worker's channel calls
 * come: a phase issues k calls at once (odd paths: answered from a timer,
 * so all k are in flight together) and ends when the last answer is in. */
typedef struct {
  ctx_t *c;
  int left, ok;
} phase_t;

static void on_phase_answer(const pt_http_response_t *res, void *arg) {
  call_t *k = arg;
  phase_t *ph = k->c->phase;
  if (answered_right(res, k->n))
    ph->ok++;
  if (--ph->left == 0)
    uv_stop(k->c->loop);
  free(k);
}

static void burst(ctx_t *c, int k) {
  phase_t ph = {c, k, 0};
  c->phase = &ph;
  for (int i = 0; i < k; i++)
    post_numbered(c, 2 * i + 1, 10000, on_phase_answer);
  pt_test_run_loop(c->loop, 30000, "a burst of HTTP requests");
  c->phase = NULL;
  cr_assert_eq(ph.ok, k, "%d of %d calls answered right", ph.ok, k);
}

/* Runs bursts of the given sizes on a client keeping `keep` connections,
 * and checks that the server accepted `want` connections, as the client
 * counted them too. */
static void run_bursts(long keep, const int *sizes, int n, long want,
                       const char *why) {
  uv_loop_t loop;
  ctx_t c;
  setup(&c, &loop, 0);
  pt_http_client_keep_connections(c.cli, keep);
  for (int i = 0; i < n; i++)
    burst(&c, sizes[i]);
  cr_assert_eq(pt_httpd_accepted(c.srv), want, "%s: the server accepted %ld",
               why, pt_httpd_accepted(c.srv));
  cr_assert_eq(pt_http_client_connects(c.cli), want, "%s: the client counted %ld",
               why, pt_http_client_connects(c.cli));
  pt_http_client_destroy(c.cli);
  pt_httpd_destroy(c.srv);
  pt_test_run_loop(&loop, 10000, "closing the client and server");
  pt_test_close_loop(&loop);
}

/* libcurl's default keeps four idle connections per call in flight when a
 * connection comes back, so the tail of a burst closes connections that the
 * next burst opens again: against a real channel, a TLS handshake each. */
Test(http, connections_are_kept_across_lulls, .timeout = 60) {
  const int sizes[] = {8, 1, 8};
  run_bursts(8, sizes, 3, 8, "three bursts of at most 8 calls");
}

/* The bound holds: beyond n open connections, returning ones are closed,
 * so idle connections never hold more memory than n. */
Test(http, no_more_connections_kept_than_asked, .timeout = 60) {
  const int sizes[] = {8, 8};
  run_bursts(4, sizes, 2, 12,
             "8 connections for the first burst, 4 of them kept for the second");
}

/* ---- only public addresses (a merchant's notify_url) ---------------------- */

typedef struct {
  int status;
  long code;
  char error[256];
  int *left;
  uv_loop_t *loop;
} checked_t;

static void on_checked(const pt_http_response_t *res, void *arg) {
  checked_t *o = arg;
  o->status = res->status;
  o->code = res->http_code;
  snprintf(o->error, sizeof o->error, "%s", res->error ? res->error : "");
  if (--*o->left == 0)
    uv_stop(o->loop);
}

/* Sends GET url limited to public addresses and `allow` (NULL: unchecked)
 * and runs the loop until it is answered. */
static void get_checked(ctx_t *c, const char *url, const pt_net_list_t *allow,
                        int unchecked, checked_t *o) {
  int left = 1;
  memset(o, 0, sizeof *o);
  o->left = &left;
  o->loop = c->loop;
  pt_http_request_t r = {.url = url, .timeout_ms = 10000,
                         .public_only = unchecked ? NULL : allow};
  cr_assert_eq(pt_http_request(c->cli, &r, on_checked, o), 0);
  pt_test_run_loop(c->loop, 20000, url);
  cr_assert_eq(left, 0);
}

/* A request that may reach only public addresses never reaches a loopback
 * one: not by its address, not by a name that resolves to it, and not on
 * a connection kept from an unchecked request to the same host and port.
 * A listed network is reached. */
Test(http, a_request_for_public_addresses_only_reaches_no_other, .timeout = 60) {
  uv_loop_t loop;
  ctx_t c;
  char byaddr[96], byname[96];
  checked_t o;
  pt_net_list_t none = {0}, lo;
  cr_assert_eq(pt_net_list_parse("127.0.0.0/8", &lo, NULL, 0), 0);
  setup(&c, &loop, 0);
  snprintf(byaddr, sizeof byaddr, "http://127.0.0.1:%d/r/0",
           pt_httpd_port(c.srv));
  snprintf(byname, sizeof byname, "http://localhost:%d/r/0",
           pt_httpd_port(c.srv));

  get_checked(&c, byaddr, &none, 0, &o);
  cr_assert_eq(o.status, PT_EREFUSED, "status %d: %s", o.status, o.error);
  cr_assert_str_eq(o.error,
                   "refused to connect to 127.0.0.1: a loopback address, "
                   "not a public one");
  get_checked(&c, byname, &none, 0, &o);
  cr_assert_eq(o.status, PT_EREFUSED, "status %d: %s", o.status, o.error);
  cr_assert_eq(pt_httpd_accepted(c.srv), 0,
               "a refused address was connected to");

  /* An unchecked call leaves a connection to 127.0.0.1 open; a checked
   * one to the same place must not be sent on it. */
  get_checked(&c, byaddr, NULL, 1, &o);
  cr_assert_eq(o.code, 200, "status %d: %s", o.status, o.error);
  cr_assert_eq(pt_httpd_accepted(c.srv), 1);
  get_checked(&c, byaddr, &none, 0, &o);
  cr_assert_eq(o.status, PT_EREFUSED, "a kept connection was reused: %d %ld",
               o.status, o.code);

  /* Listed: reached, by address and by name (whose ::1, not listed, is
   * passed over for 127.0.0.1). */
  get_checked(&c, byaddr, &lo, 0, &o);
  cr_assert_eq(o.code, 200, "status %d: %s", o.status, o.error);
  get_checked(&c, byname, &lo, 0, &o);
  cr_assert_eq(o.code, 200, "status %d: %s", o.status, o.error);
  pt_http_client_destroy(c.cli);
  pt_httpd_destroy(c.srv);
  pt_test_run_loop(&loop, 10000, "closing the client and server");
  pt_test_close_loop(&loop);
}
