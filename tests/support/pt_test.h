/* Shared helpers for the Criterion suites. Tests talk to the real servers
 * named by the environment that scripts/test exports (.run/env). */
#ifndef PT_TEST_H
#define PT_TEST_H

#include <stdint.h>
#include <uv.h>

#include "core/pt_store.h"

/* The value of an environment variable naming a server's URI, e.g.
 * pt_test_uri("PAYTASK_REDIS_URI", "Redis"). Fails the test with a message
 * naming the server if it is not set. */
const char *pt_test_uri(const char *var, const char *server);

/* Runs $PAYTASK_SOURCE_DIR/scripts/rabbitmqctl with the shell words of
 * fmt; fails the test if it fails. */
void pt_rabbitmqctl(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Runs loop until it has nothing left to do, or fails the test after
 * timeout_ms with a message naming `what` (so a dead server makes a test
 * fail, never hang). The watchdog timer is closed before returning. */
void pt_test_run_loop(uv_loop_t *loop, uint64_t timeout_ms, const char *what);

/* Closes every handle still open on loop, runs it until they are closed,
 * and asserts uv_loop_close() == 0. */
void pt_test_close_loop(uv_loop_t *loop);

/* A name unique to this process and call, for queues, keys and collections. */
const char *pt_test_unique(const char *prefix, char *buf, size_t len);

/* A free TCP port on 127.0.0.1 (bound and released; fails the test if
 * none can be had). */
int pt_test_free_port(void);

void pt_test_sleep_ms(int ms);

/* The value of one series line ("name{labels}") of a Prometheus text
 * page, or -1 when absent. */
double pt_test_metric(const char *text, const char *series);

/* Runs `$PAYTASK_BIN ARGS` through the shell, with PAYTASK_CONFIG=/dev/null
 * and the extra environment env ("NAME=value ...", "" for none), cut off
 * after timeout_s seconds (0: never). Its output, stdout and stderr, goes
 * to out (len bytes with the NUL); returns its exit status, or -1 if it
 * did not exit. */
int pt_test_paytask(const char *env, int timeout_s, const char *args,
                    char *out, size_t len);

/* One blocking HTTP request (libcurl easy) with the given headers
 * (NULL-terminated, MAY be NULL) and body_len bytes of body (body NULL:
 * none). Returns the status, or -1 when nothing answered; *out_body and
 * *out_headers (each MAY be NULL) get the answer's body and header block,
 * to free(). */
long pt_test_http(const char *method, const char *url,
                  const char *const *headers, const char *body,
                  size_t body_len, long timeout_s, char **out_body,
                  char **out_headers);

/* Fills out (room for max entries) with first, then the NULL-terminated
 * more (MAY be NULL), then NULL; fails the test if they do not fit. */
void pt_test_headers(const char **out, size_t max, const char *const *first,
                     const char *const *more);

/* What a pt_store script answered: pass pt_test_on_verdict and a zeroed
 * pt_test_verdict_t to a pt_store call, then pt_test_wait_verdict runs
 * loop until the answer is in and fails the test if Redis failed. */
typedef struct {
  int status;
  pt_verdict_t v;
  char detail[128];
  int n;
} pt_test_verdict_t;

void pt_test_on_verdict(int status, pt_verdict_t v, const char *detail,
                        void *arg);
void pt_test_wait_verdict(uv_loop_t *loop, pt_test_verdict_t *r);

#endif
