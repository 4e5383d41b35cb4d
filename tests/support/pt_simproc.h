/* Runs the real `paytask sim` (the binary named by $PAYTASK_BIN) for a
 * test, on a free loopback port, without the servers pt_stack needs, and
 * offers what a test of the simulator's dialects needs on the other side:
 * the development keys, a raw HTTP client that keeps the answer's headers,
 * and a tiny blocking HTTP server that receives notifications. */
#ifndef PT_SIMPROC_H
#define PT_SIMPROC_H

#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct {
  pid_t pid;
  int port;
  char url[64]; /* http://127.0.0.1:PORT */
  char log[512];
} pt_simproc_t;

/* Starts `paytask sim --listen 127.0.0.1:<free port> ARGS…` (args
 * NULL-terminated, MAY be NULL) with PAYTASK_CONFIG=/dev/null plus env
 * ("NAME=value" strings, NULL-terminated, MAY be NULL), its output in
 * $PT_TEST_LOGDIR (which run-test.sh checks for sanitizer reports), and
 * waits until /healthz answers. Fails the test on error. The process gets
 * SIGTERM if the test dies. */
void pt_simproc_start(pt_simproc_t *p, const char *const *args,
                      const char *const *env);
/* SIGTERM and wait (SIGKILL after 20 s); returns 0 if it exited 0. */
int pt_simproc_stop(pt_simproc_t *p);

/* $PAYTASK_SOURCE_DIR/conf/dev-keys/<name> into buf. */
const char *pt_simproc_key_path(const char *name, char *buf, size_t len);
/* The PEM text of a development key (malloc'd, NUL-terminated). */
char *pt_simproc_key_pem(const char *name, size_t *len);

/* One blocking HTTP exchange (libcurl easy). headers are "Name: value"
 * strings, NULL-terminated, MAY be NULL; body MAY be NULL (then no body).
 * Returns the status (-1 if nothing answered); *out_body and *out_headers
 * (each MAY be NULL) get the answer's body and raw header block, to free(). */
long pt_simproc_http(const char *method, const char *url,
                     const char *const *headers, const char *body,
                     size_t body_len, char **out_body, char **out_headers);
/* A header's value from a raw header block (case-insensitive name), copied
 * into buf; NULL if absent. */
const char *pt_simproc_header(const char *block, const char *name, char *buf,
                              size_t len);

/* ---- a notification receiver ---- */

#define PT_SINK_MAX 64

typedef struct {
  char *head; /* request line and headers */
  char *body;
  size_t body_len;
  long at_ms; /* when it arrived, ms since the sink started */
} pt_sink_req_t;

typedef struct {
  int fd, port;
  char url[96]; /* http://127.0.0.1:PORT/notify */
  pthread_t thread;
  pthread_mutex_t lock;
  int stop;
  long started_ms;
  /* answers[i] for the i-th request, the last one for every later one */
  int nanswers;
  int status[8];
  const char *answer[8];
  pt_sink_req_t reqs[PT_SINK_MAX];
  int nreqs;
} pt_sink_t;

/* Starts a receiver on a free port; answers request i with status[i] and
 * body answer[i] ("Connection: close" each). */
void pt_sink_start(pt_sink_t *s, int n, const int *status,
                   const char *const *answer);
/* Requests received so far. */
int pt_sink_count(pt_sink_t *s);
/* Waits until n requests arrived or timeout_ms passed; returns the count. */
int pt_sink_wait(pt_sink_t *s, int n, int timeout_ms);
void pt_sink_stop(pt_sink_t *s);

#endif
