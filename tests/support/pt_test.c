#include "tests/support/pt_test.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_buf.h"
#include "core/pt_httpd.h"

const char *pt_test_uri(const char *var, const char *server) {
  const char *v = getenv(var);
  if (v == NULL || *v == '\0')
    cr_assert_fail("%s: %s is not set; run the tests through scripts/test, which "
             "starts the servers and exports their URIs",
             server, var);
  return v;
}

typedef struct {
  int fired;
  const char *what;
} watchdog_t;

static void on_watchdog(uv_timer_t *t) {
  watchdog_t *w = t->data;
  w->fired = 1;
  uv_stop(t->loop);
}

void pt_test_run_loop(uv_loop_t *loop, uint64_t timeout_ms, const char *what) {
  uv_timer_t timer;
  watchdog_t w = {0, what};
  uv_timer_init(loop, &timer);
  timer.data = &w;
  uv_timer_start(&timer, on_watchdog, timeout_ms, 0);
  uv_unref((uv_handle_t *)&timer);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  if (w.fired)
    cr_assert_fail("%s: no progress after %llu ms (is the server up?)", what,
             (unsigned long long)timeout_ms);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

void pt_test_close_loop(uv_loop_t *loop) {
  uv_walk(loop, close_walk, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  cr_assert_eq(uv_loop_close(loop), 0, "a libuv handle leaked");
}

const char *pt_test_unique(const char *prefix, char *buf, size_t len) {
  static unsigned counter;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(buf, len, "%s-%ld-%ld-%u", prefix, (long)getpid(),
           (long)(ts.tv_nsec / 1000), counter++);
  return buf;
}

int pt_test_free_port(void) {
  int port = pt_httpd_free_port();
  cr_assert_gt(port, 0, "no free loopback port below the ephemeral range");
  return port;
}

void pt_test_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

void pt_test_on_verdict(int status, pt_verdict_t v, const char *detail,
                        void *arg) {
  pt_test_verdict_t *r = arg;
  r->status = status;
  r->v = v;
  snprintf(r->detail, sizeof r->detail, "%s", detail ? detail : "");
  r->n++;
}

void pt_test_wait_verdict(uv_loop_t *loop, pt_test_verdict_t *r) {
  while (r->n == 0)
    uv_run(loop, UV_RUN_ONCE);
  cr_assert_eq(r->status, 0, "redis: %s", r->detail);
}

int pt_test_paytask(const char *env, int timeout_s, const char *args,
                    char *out, size_t len) {
  const char *bin = getenv("PAYTASK_BIN");
  char cmd[2048], limit[32] = "";
  cr_assert_not_null(bin, "PAYTASK_BIN is not set (run through ctest)");
  if (timeout_s > 0)
    snprintf(limit, sizeof limit, "timeout %d ", timeout_s);
  snprintf(cmd, sizeof cmd, "PAYTASK_CONFIG=/dev/null %s %s%s %s 2>&1", env,
           limit, bin, args);
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  size_t n = fread(out, 1, len - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

long pt_test_http(const char *method, const char *url,
                  const char *const *headers, const char *body,
                  size_t body_len, long timeout_s, char **out_body,
                  char **out_headers) {
  CURL *h = curl_easy_init();
  struct curl_slist *hdrs = NULL;
  pt_buf_t b = {NULL, 0}, hb = {NULL, 0};
  long status = -1;
  cr_assert_not_null(h);
  for (int i = 0; headers != NULL && headers[i] != NULL; i++)
    hdrs = curl_slist_append(hdrs, headers[i]);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s);
  if (body != NULL) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body_len);
  }
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, pt_buf_curl_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  if (out_headers != NULL) {
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, pt_buf_curl_write);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &hb);
  }
  if (curl_easy_perform(h) == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  if (out_body != NULL)
    *out_body = b.data ? b.data : calloc(1, 1);
  else
    free(b.data);
  if (out_headers != NULL)
    *out_headers = hb.data ? hb.data : calloc(1, 1);
  return status;
}

void pt_test_headers(const char **out, size_t max, const char *const *first,
                     const char *const *more) {
  size_t n = 0;
  for (int k = 0; k < 2; k++) {
    const char *const *list = k == 0 ? first : more;
    for (int i = 0; list != NULL && list[i] != NULL; i++) {
      cr_assert_lt(n + 1, max, "too many headers for the test helper");
      out[n++] = list[i];
    }
  }
  out[n] = NULL;
}

double pt_test_metric(const char *text, const char *series) {
  size_t n = strlen(series);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
    if (strncmp(p, series, n) == 0 && p[n] == ' ')
      return strtod(p + n + 1, NULL);
  return -1;
}

void pt_rabbitmqctl(const char *fmt, ...) {
  char args[768], cmd[1024];
  va_list ap;
  const char *src = getenv("PAYTASK_SOURCE_DIR");
  cr_assert_not_null(src, "PAYTASK_SOURCE_DIR is not set (run through ctest)");
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "%s/scripts/rabbitmqctl %s >/dev/null", src,
           args);
  cr_assert_eq(system(cmd), 0, "rabbitmqctl failed: %s", args);
}
