#include "tests/support/pt_stack.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <mongoc/mongoc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_amqp.h"
#include "core/pt_buf.h"
#include "core/pt_redis.h"
#include "tests/support/pt_test.h"

#define TOKEN PT_TEST_TOKEN

void pt_stack_env(pt_stack_t *s, const char *name, const char *value) {
  cr_assert_lt(s->nextra, PT_STACK_MAX_ENV);
  snprintf(s->extra_env[s->nextra++], sizeof s->extra_env[0], "%s=%s", name,
           value);
}

static pid_t spawn(pt_stack_t *s, const char *name, const char *const *args) {
  const char *bin = getenv("PAYTASK_BIN");
  char log[512];
  cr_assert_not_null(bin, "PAYTASK_BIN is not set (run through ctest)");
  snprintf(log, sizeof log, "%s/%s.log", s->logdir, name);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    char api[64], sim[64], simurl[80], gateway[96], apiurl[80];
    /* A test that dies or times out takes its processes with it, so none
     * is left consuming the shared queue. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    snprintf(api, sizeof api, "127.0.0.1:%d", s->api_port);
    snprintf(sim, sizeof sim, "127.0.0.1:%d", s->sim_port);
    snprintf(simurl, sizeof simurl, "http://127.0.0.1:%d", s->sim_port);
    setenv("PAYTASK_API_LISTEN", api, 1);
    setenv("PAYTASK_SIM_LISTEN", sim, 1);
    setenv("PAYTASK_CHANNEL_SIM_URL", simurl, 1);
    /* The simulator plays every channel: in a real dialect it is also the
     * Alipay gateway and the WeChat Pay API, and the api is where its
     * notifications go. */
    snprintf(gateway, sizeof gateway, "%s/gateway.do", simurl);
    snprintf(apiurl, sizeof apiurl, "http://127.0.0.1:%d", s->api_port);
    setenv("PAYTASK_CHANNEL_ALIPAY_GATEWAY", gateway, 1);
    setenv("PAYTASK_CHANNEL_WECHAT_BASE_URL", simurl, 1);
    setenv("PAYTASK_API_PUBLIC_URL", apiurl, 1);
    setenv("PAYTASK_CONFIG", "/dev/null", 1);
    /* The tests' merchants listen on loopback, as a business system's
     * receivers sit on a network the operator lists. */
    setenv("PAYTASK_NOTIFY_ALLOW_NETWORKS", "127.0.0.0/8", 1);
    for (int i = 0; i < s->nextra; i++)
      putenv(s->extra_env[i]);
    /* ASan's leak report is wanted from the children too, in their logs. */
    execv(bin, (char *const *)args);
    _exit(127);
  }
  return pid;
}

/* Waits for url to answer 200; stops early if the process exited. */
static int wait_ready(const char *url, int timeout_ms, pid_t pid) {
  for (int waited = 0; waited < timeout_ms; waited += 100) {
    if (pt_http("GET", url, NULL, NULL, NULL, NULL) == 200)
      return 1;
    if (waitpid(pid, NULL, WNOHANG) == pid)
      return -1;
    pt_test_sleep_ms(100);
  }
  return 0;
}

static void check_servers(void);

static void tail_log(pt_stack_t *s, const char *name) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "tail -n 30 %s/%s.log >&2", s->logdir, name);
  if (system(cmd) != 0)
    fprintf(stderr, "(no log)\n");
}

void pt_stack_start(pt_stack_t *s, int nworkers, const char *sim_args) {
  char url[128];
  const char *bin = getenv("PAYTASK_BIN");
  cr_assert_not_null(bin);
  /* A server that is down fails here, by name, not later as a timeout. */
  check_servers();
  s->api_port = pt_test_free_port();
  s->sim_port = pt_test_free_port();
  snprintf(s->api_url, sizeof s->api_url, "http://127.0.0.1:%d", s->api_port);
  snprintf(s->sim_url, sizeof s->sim_url, "http://127.0.0.1:%d", s->sim_port);
  /* run-test.sh checks the logs under PT_TEST_LOGDIR for sanitizer
   * reports from these processes. */
  const char *base = getenv("PT_TEST_LOGDIR");
  snprintf(s->logdir, sizeof s->logdir, "%s/e2e-%d",
           base ? base : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp"),
           (int)getpid());
  mkdir(s->logdir, 0755);

  const char *sim_argv[] = {bin, "sim", sim_args, NULL};
  if (sim_args == NULL)
    sim_argv[2] = NULL;
  s->sim = spawn(s, "sim", sim_argv);
  snprintf(url, sizeof url, "%s/healthz", s->sim_url);
  if (wait_ready(url, 20000, s->sim) != 1) {
    tail_log(s, "sim");
    cr_assert_fail("the channel simulator did not start (log: %s/sim.log)",
                   s->logdir);
  }
  const char *api_argv[] = {bin, "api", NULL};
  s->api = spawn(s, "api", api_argv);
  /* A test that breaks a server on purpose waits for /healthz only. */
  int ready_wait = getenv("PT_STACK_NO_READY_WAIT") == NULL;
  snprintf(url, sizeof url, "%s/%s", s->api_url,
           ready_wait ? "readyz" : "healthz");
  int ready = wait_ready(url, 30000, s->api);
  if (ready != 1) {
    char *out = NULL;
    if (ready == 0)
      pt_http("GET", url, NULL, NULL, NULL, &out);
    tail_log(s, "api");
    if (ready < 0)
      s->api = 0; /* reaped */
    cr_assert_fail("the api %s: %s (log: %s/api.log)",
                   ready < 0 ? "exited at start" : "is not ready",
                   out && *out ? out : "see the log above", s->logdir);
  }
  for (int i = 0; i < nworkers; i++)
    pt_stack_add_worker(s);
}

int pt_stack_add_worker(pt_stack_t *s) {
  char name[32];
  const char *bin = getenv("PAYTASK_BIN");
  const char *argv[] = {bin, "worker", NULL};
  cr_assert_lt(s->nworkers, PT_STACK_MAX_WORKERS);
  snprintf(name, sizeof name, "worker%d", s->nworkers);
  s->workers[s->nworkers] = spawn(s, name, argv);
  return s->nworkers++;
}

int pt_stack_add_pool(pt_stack_t *s, int processes) {
  char name[32], n[16];
  const char *bin = getenv("PAYTASK_BIN");
  snprintf(n, sizeof n, "%d", processes);
  const char *argv[] = {bin, "worker", "--processes", n, NULL};
  cr_assert_lt(s->nworkers, PT_STACK_MAX_WORKERS);
  snprintf(name, sizeof name, "worker%d", s->nworkers);
  s->workers[s->nworkers] = spawn(s, name, argv);
  return s->nworkers++;
}

int pt_stack_stop_worker(pt_stack_t *s, int i, int timeout_s) {
  int status = 0;
  pid_t pid = s->workers[i];
  cr_assert(pid > 0);
  kill(pid, SIGTERM);
  for (int waited = 0; waited < timeout_s * 1000; waited += 50) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      s->workers[i] = 0;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    pt_test_sleep_ms(50);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  s->workers[i] = 0;
  return -1;
}

void pt_stack_signal_worker(pt_stack_t *s, int i, int sig) {
  cr_assert(s->workers[i] > 0);
  kill(s->workers[i], sig);
  if (sig == SIGKILL) {
    waitpid(s->workers[i], NULL, 0);
    s->workers[i] = 0;
  }
}

/* 1 once pid handles SIGTERM: it has a handler, or blocks it to take it
 * later (a worker while it starts, the pool's supervisor); 0 while it
 * does neither (a process before its main), -1 if it cannot be read. */
static int catches_sigterm(pid_t pid) {
  char path[64], line[128];
  unsigned long long mask;
  int found = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "SigBlk: %llx", &mask) == 1 ||
        sscanf(line, "SigCgt: %llx", &mask) == 1) {
      found = found == 1 || ((mask >> (SIGTERM - 1)) & 1);
    }
  fclose(f);
  return found;
}

static int stop_pid(pid_t pid, const char *name) {
  int status = 0;
  pid_t r = 0;
  if (pid <= 0)
    return 0;
  /* A test may end while a process is still starting: a SIGTERM then
   * would kill it before it can stop cleanly, and leave what it holds to
   * the next test. Wait (10 s at most) until it handles the signal. */
  for (int waited = 0; waited < 10000 && catches_sigterm(pid) == 0 &&
                       (r = waitpid(pid, &status, WNOHANG)) == 0;
       waited += 10)
    pt_test_sleep_ms(10);
  if (r != pid) {
    kill(pid, SIGTERM);
    for (int waited = 0; waited < 20000 &&
                         (r = waitpid(pid, &status, WNOHANG)) == 0;
         waited += 50)
      pt_test_sleep_ms(50);
  }
  if (r != pid) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fprintf(stderr, "%s did not stop on SIGTERM within 20 s\n", name);
    return 1;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  fprintf(stderr, "%s exited with status %d\n", name, status);
  return 1;
}

void pt_stack_start_without_broker(pt_stack_t *s) {
  pt_stack_env(s, "PAYTASK_AMQP_URI", "amqp://guest:guest@127.0.0.1:1/");
  setenv("PT_STACK_NO_READY_WAIT", "1", 1);
  pt_stack_start(s, 0, NULL);
  unsetenv("PT_STACK_NO_READY_WAIT");
}

int pt_stack_stop(pt_stack_t *s) {
  int bad = 0;
  for (int i = 0; i < s->nworkers; i++) {
    char name[32];
    snprintf(name, sizeof name, "worker%d", i);
    bad += stop_pid(s->workers[i], name);
    s->workers[i] = 0;
  }
  bad += stop_pid(s->api, "api");
  bad += stop_pid(s->sim, "sim");
  s->api = s->sim = 0;
  if (s->vhost[0] != '\0') {
    pt_rabbitmqctl("delete_vhost '%s'", s->vhost);
    s->vhost[0] = '\0';
  }
  return bad;
}

int pt_stack_log_wait(pt_stack_t *s, const char *file,
                      const char *const *needles, int timeout_s) {
  char path[512], line[8192];
  snprintf(path, sizeof path, "%s/%s", s->logdir, file);
  for (int t = 0; t <= timeout_s * 10; t++) {
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
      int all = 1;
      for (int i = 0; all && needles[i] != NULL; i++)
        all = strstr(line, needles[i]) != NULL;
      if (all) {
        fclose(f);
        return 1;
      }
    }
    if (f != NULL)
      fclose(f);
    pt_test_sleep_ms(100);
  }
  return 0;
}

void pt_stack_fini(pt_stack_t *s) {
  int bad = pt_stack_stop(s);
  if (bad != 0) {
    /* Criterion ignores an assertion in a fini (the verdict is in); an
     * abort makes the test program exit 1, which CTest counts. */
    fprintf(stderr, "FAILED: %d process(es) of the stack did not stop "
                    "cleanly (logs: %s)\n", bad, s->logdir);
    abort();
  }
}

const char *pt_amqp_vhost(void) {
  static char copy[512], vhost[256];
  struct amqp_connection_info info;
  snprintf(copy, sizeof copy, "%s",
           pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ"));
  cr_assert_eq(amqp_parse_url(copy, &info), AMQP_STATUS_OK, "bad AMQP URI");
  snprintf(vhost, sizeof vhost, "%s", info.vhost[0] ? info.vhost : "/");
  return vhost;
}

const char *pt_stack_vhost(pt_stack_t *s) {
  static char uri[256];
  const char *base = pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ");
  const char *host = strstr(base, "://");
  const char *path = host != NULL ? strchr(host + 3, '/') : NULL;
  int n = path != NULL ? (int)(path - base) : (int)strlen(base);
  pt_test_unique("paytask-test", s->vhost, sizeof s->vhost);
  pt_rabbitmqctl("add_vhost '%s'", s->vhost);
  pt_rabbitmqctl("set_permissions -p '%s' guest '.*' '.*' '.*'", s->vhost);
  snprintf(uri, sizeof uri, "%.*s/%s", n, base, s->vhost);
  setenv("PAYTASK_AMQP_URI", uri, 1);
  return s->vhost;
}

/* ---- HTTP --------------------------------------------------------------- */

long pt_http(const char *method, const char *url, const char *token,
             const char *body, const char *const *headers, char **out) {
  char auth[256];
  const char *mine[] = {auth, "Content-Type: application/json", NULL};
  const char *all[32];
  if (token != NULL)
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
  pt_test_headers(all, 32, token != NULL ? mine : mine + 1, headers);
  return pt_test_http(method, url, all, body, body ? strlen(body) : 0, 60,
                      out, NULL);
}

long pt_api_submit(pt_stack_t *s, const char *json, const char *idem_key,
                   char **out) {
  return pt_api_submit_query(s, json, idem_key, NULL, out);
}

long pt_api_submit_query(pt_stack_t *s, const char *json, const char *idem_key,
                         const char *query, char **out) {
  char url[160], hdr[300];
  const char *headers[] = {hdr, NULL};
  snprintf(url, sizeof url, "%s/v1/tasks%s%s", s->api_url, query ? "?" : "",
           query ? query : "");
  if (idem_key != NULL)
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", idem_key);
  return pt_http("POST", url, TOKEN, json, idem_key ? headers : NULL, out);
}

long pt_api_get(pt_stack_t *s, const char *id, int wait_s, char **out) {
  char url[160];
  snprintf(url, sizeof url, "%s/v1/tasks/%s?wait=%d", s->api_url, id, wait_s);
  return pt_http("GET", url, TOKEN, NULL, NULL, out);
}

/* ---- JSON ---------------------------------------------------------------- */

void pt_json(const char *text, bson_t *doc) {
  bson_error_t e;
  cr_assert(text != NULL && bson_init_from_json(doc, text, -1, &e),
            "not JSON: %s", text ? text : "(null)");
}

const char *pt_json_str(const bson_t *doc, const char *path) {
  bson_iter_t it, f;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &f) ||
      !BSON_ITER_HOLDS_UTF8(&f))
    return NULL;
  return bson_iter_utf8(&f, NULL);
}

int64_t pt_json_int(const bson_t *doc, const char *path, int64_t def) {
  bson_iter_t it, f;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &f) ||
      !(BSON_ITER_HOLDS_INT32(&f) || BSON_ITER_HOLDS_INT64(&f)))
    return def;
  return bson_iter_as_int64(&f);
}

int pt_json_len(const bson_t *doc, const char *path) {
  bson_iter_t it, f, a;
  int n = 0;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &f) ||
      !BSON_ITER_HOLDS_ARRAY(&f) || !bson_iter_recurse(&f, &a))
    return -1;
  while (bson_iter_next(&a))
    n++;
  return n;
}

char *pt_task_body(const char *out_trade_no, int64_t amount,
                   const char *params_sim, const char *retry) {
  bson_t d = BSON_INITIALIZER, sub;
  bson_error_t e;
  BSON_APPEND_UTF8(&d, "type", "pay");
  BSON_APPEND_UTF8(&d, "channel", "sim");
  BSON_APPEND_UTF8(&d, "out_trade_no", out_trade_no);
  BSON_APPEND_INT64(&d, "amount", amount);
  BSON_APPEND_UTF8(&d, "currency", "CNY");
  BSON_APPEND_UTF8(&d, "subject", "Course: C in depth");
  if (retry != NULL) {
    cr_assert(bson_init_from_json(&sub, retry, -1, &e));
    BSON_APPEND_DOCUMENT(&d, "retry", &sub);
    bson_destroy(&sub);
  }
  if (params_sim != NULL) {
    bson_t p = BSON_INITIALIZER;
    cr_assert(bson_init_from_json(&sub, params_sim, -1, &e));
    BSON_APPEND_DOCUMENT(&p, "sim", &sub);
    BSON_APPEND_DOCUMENT(&d, "params", &p);
    bson_destroy(&sub);
    bson_destroy(&p);
  }
  char *s = bson_as_relaxed_extended_json(&d, NULL);
  bson_destroy(&d);
  return s;
}

/* The task_id of a submit's answer (fails the test without one). */
static void answer_task_id(const char *out, char id[24]) {
  bson_t doc;
  pt_json(out, &doc);
  const char *tid = pt_json_str(&doc, "task_id");
  cr_assert_not_null(tid);
  snprintf(id, 24, "%s", tid);
  bson_destroy(&doc);
}

void pt_submit_ok(pt_stack_t *s, const char *body, char id[24]) {
  char *out = NULL;
  long st = pt_api_submit(s, body, NULL, &out);
  cr_assert_eq(st, 202, "submit answered %ld: %s", st, out);
  answer_task_id(out, id);
  free(out);
}

void pt_submit_until_taken(pt_stack_t *s, const char *body,
                           const char *idem_key, char id[24]) {
  for (int i = 0; i < 300; i++) {
    char *out = NULL;
    long st = pt_api_submit(s, body, idem_key, &out);
    if (st == 202 || st == 200) {
      answer_task_id(out, id);
      free(out);
      return;
    }
    cr_assert(st == 503 || st == -1, "submit answered %ld: %s", st,
              out ? out : "");
    free(out);
    usleep(100 * 1000);
  }
  cr_assert_fail("the api did not take the task within 30 s");
}

void pt_wait_final(pt_stack_t *s, const char *id, int timeout_s, bson_t *doc) {
  time_t end = time(NULL) + timeout_s;
  for (;;) {
    char *out = NULL;
    long st = pt_api_get(s, id, 5, &out);
    cr_assert_eq(st, 200, "GET %s answered %ld: %s", id, st, out);
    pt_json(out, doc);
    free(out);
    const char *status = pt_json_str(doc, "status");
    if (status != NULL &&
        (strcmp(status, "SUCCEEDED") == 0 || strcmp(status, "FAILED") == 0 ||
         strcmp(status, "CANCELLED") == 0))
      return;
    char last[32]; /* status points into doc */
    snprintf(last, sizeof last, "%s", status ? status : "?");
    bson_destroy(doc);
    cr_assert(time(NULL) < end, "task %s not final after %d s (status %s)",
              id, timeout_s, last);
  }
}

void pt_run_task(pt_stack_t *s, const char *otn, int64_t amount,
                 const char *params_sim, const char *retry, char id[24],
                 bson_t *doc) {
  char *body = pt_task_body(otn, amount, params_sim, retry);
  pt_submit_ok(s, body, id);
  free(body);
  pt_wait_final(s, id, 30, doc);
}

int64_t pt_sim_stat(pt_stack_t *s, const char *out_trade_no, const char *key) {
  char url[256], *out = NULL;
  bson_t doc;
  snprintf(url, sizeof url, "%s/v1/sim/trades/%s", s->sim_url, out_trade_no);
  long st = pt_http("GET", url, NULL, NULL, NULL, &out);
  if (st == 404 && out != NULL && strstr(out, "\"TRADE_NOT_EXIST\"") != NULL) {
    free(out); /* the simulator holds no such trade */
    return -1;
  }
  /* Any other failure is not "no trade": a test expecting none would
   * pass. */
  cr_assert_eq(st, 200, "the simulator answered %ld for trade %s: %s", st,
               out_trade_no, out ? out : "");
  pt_json(out, &doc);
  int64_t v = pt_json_int(&doc, key, INT64_MIN);
  cr_assert_neq(v, INT64_MIN, "trade %s has no %s: %s", out_trade_no, key,
                out);
  bson_destroy(&doc);
  free(out);
  return v;
}

void pt_assert_created_once(pt_stack_t *s, char otns[][64], int n) {
  for (int i = 0; i < n; i++) {
    cr_assert_eq(pt_sim_stat(s, otns[i], "create_ok"), 1,
                 "trade %s was not created exactly once", otns[i]);
    cr_assert_eq(pt_sim_stat(s, otns[i], "creates_after_created"), 0,
                 "trade %s got a second create after it succeeded", otns[i]);
  }
}

/* ---- RabbitMQ, MongoDB, Redis (blocking, for checks) ----------------------- */

static amqp_connection_state_t amqp_open(void) {
  const char *uri = pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ");
  pt_error_t err;
  amqp_connection_state_t c = pt_amqp_connect_sync(uri, 3000, &err);
  cr_assert_not_null(c, "RabbitMQ: %s (%s)", err.message, uri);
  return c;
}

static void amqp_close_all(amqp_connection_state_t c) { pt_amqp_close_sync(c); }

long pt_queue_depth(const char *queue) {
  amqp_connection_state_t c = amqp_open();
  amqp_queue_declare_ok_t *ok = amqp_queue_declare(
      c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
  long n = ok != NULL ? (long)ok->message_count : -1;
  amqp_close_all(c);
  return n;
}

void pt_amqp_publish_raw(const char *exchange, const char *routing_key,
                         const void *body, size_t len,
                         const amqp_table_t *headers) {
  amqp_connection_state_t c = amqp_open();
  amqp_basic_properties_t props = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
                                   .delivery_mode = AMQP_DELIVERY_PERSISTENT};
  if (headers != NULL) {
    props._flags |= AMQP_BASIC_HEADERS_FLAG;
    props.headers = *headers;
  }
  amqp_confirm_select(c, 1);
  cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
  amqp_bytes_t b = {len, (void *)body};
  cr_assert_eq(amqp_basic_publish(c, 1, amqp_cstring_bytes(exchange),
                                  amqp_cstring_bytes(routing_key), 0, 0,
                                  &props, b),
               AMQP_STATUS_OK);
  amqp_frame_t f;
  cr_assert_eq(amqp_simple_wait_frame(c, &f), AMQP_STATUS_OK);
  cr_assert(f.frame_type == AMQP_FRAME_METHOD &&
                f.payload.method.id == AMQP_BASIC_ACK_METHOD,
            "the broker did not take the message");
  amqp_close_all(c);
}

int pt_queue_drain_count(const char *queue, const char *message_id) {
  amqp_connection_state_t c = amqp_open();
  int found = 0;
  for (;;) {
    amqp_rpc_reply_t r =
        amqp_basic_get(c, 1, amqp_cstring_bytes(queue), 0 /* no_ack */);
    /* Empty ends the count; anything else (no such queue, a closed
     * channel) would make "none found" a lie. */
    cr_assert_eq(r.reply_type, AMQP_RESPONSE_NORMAL,
                 "basic.get on %s failed", queue);
    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
      break;
    cr_assert_eq(r.reply.id, AMQP_BASIC_GET_OK_METHOD,
                 "basic.get on %s: unexpected reply", queue);
    amqp_basic_get_ok_t *g = r.reply.decoded;
    uint64_t tag = g->delivery_tag;
    amqp_message_t m;
    cr_assert_eq(amqp_read_message(c, 1, &m, 0).reply_type,
                 AMQP_RESPONSE_NORMAL, "reading a message of %s failed",
                 queue);
    if (m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG &&
        m.properties.message_id.len == strlen(message_id) &&
        memcmp(m.properties.message_id.bytes, message_id,
               strlen(message_id)) == 0)
      found++;
    amqp_destroy_message(&m);
    amqp_basic_ack(c, 1, tag, 0);
  }
  amqp_close_all(c);
  return found;
}

static void check_servers(void) {
  const char *ruri = pt_test_uri("PAYTASK_REDIS_URI", "Redis");
  const char *muri = pt_test_uri("PAYTASK_MONGODB_URI", "MongoDB");
  amqp_close_all(amqp_open()); /* fails naming RabbitMQ */

  int port = 6379, db = 0;
  char host[64] = "127.0.0.1";
  sscanf(ruri, "redis://%63[^:/]:%d/%d", host, &port, &db);
  struct timeval tv = {2, 0};
  redisContext *c = redisConnectWithTimeout(host, port, tv);
  redisReply *r = c && !c->err ? redisCommand(c, "PING") : NULL;
  int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
  if (r)
    freeReplyObject(r);
  if (c)
    redisFree(c);
  cr_assert(ok, "Redis: no answer from %s (is the server up?)", ruri);

  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(muri, &e);
  cr_assert_not_null(u, "MongoDB: %s", e.message);
  mongoc_uri_set_option_as_int32(u, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 3000);
  mongoc_client_t *cl = mongoc_client_new_from_uri(u);
  bson_t cmd = BSON_INITIALIZER;
  BSON_APPEND_INT32(&cmd, "ping", 1);
  ok = mongoc_client_command_simple(cl, "admin", &cmd, NULL, NULL, &e);
  bson_destroy(&cmd);
  mongoc_client_destroy(cl);
  mongoc_uri_destroy(u);
  cr_assert(ok, "MongoDB: no answer from %s: %s (is the server up?)", muri,
            e.message);
}

/* The test MongoDB's tasks collection, and its client in *cl. */
static mongoc_collection_t *tasks_collection(mongoc_client_t **cl) {
  const char *uri = pt_test_uri("PAYTASK_MONGODB_URI", "MongoDB");
  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(uri, &e);
  cr_assert_not_null(u, "MongoDB: %s", e.message);
  *cl = mongoc_client_new_from_uri(u);
  const char *db = mongoc_uri_get_database(u);
  mongoc_collection_t *col =
      mongoc_client_get_collection(*cl, db ? db : "paytask", "tasks");
  mongoc_uri_destroy(u);
  return col;
}

int pt_mongo_has_index(const char *name, int timeout_s) {
  bson_error_t e;
  mongoc_client_t *cl;
  mongoc_collection_t *col = tasks_collection(&cl);
  int found = 0;
  time_t end = time(NULL) + timeout_s;
  while (!found && time(NULL) <= end) {
    const bson_t *d;
    bson_iter_t it;
    mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(col, NULL);
    while (!found && mongoc_cursor_next(cur, &d))
      found = bson_iter_init_find(&it, d, "name") && BSON_ITER_HOLDS_UTF8(&it) &&
              strcmp(bson_iter_utf8(&it, NULL), name) == 0;
    if (!found && mongoc_cursor_error(cur, &e))
      cr_log_warn("listIndexes: %s", e.message); /* no collection yet */
    mongoc_cursor_destroy(cur);
    if (!found)
      pt_test_sleep_ms(200);
  }
  mongoc_collection_destroy(col);
  mongoc_client_destroy(cl);
  return found;
}

void pt_mongo_drop_database(void) {
  const char *uri = pt_test_uri("PAYTASK_MONGODB_URI", "MongoDB");
  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(uri, &e);
  cr_assert_not_null(u, "MongoDB: %s", e.message);
  const char *name = mongoc_uri_get_database(u);
  cr_assert(name != NULL && strcmp(name, "paytask") != 0,
            "refusing to drop the shared database (%s)", uri);
  mongoc_client_t *cl = mongoc_client_new_from_uri(u);
  mongoc_database_t *d = mongoc_client_get_database(cl, name);
  if (!mongoc_database_drop(d, &e))
    cr_log_warn("dropDatabase: %s", e.message);
  mongoc_database_destroy(d);
  mongoc_client_destroy(cl);
  mongoc_uri_destroy(u);
}

int pt_mongo_task(const char *id, int timeout_s, bson_t *doc) {
  bson_error_t e;
  mongoc_client_t *cl;
  mongoc_collection_t *col = tasks_collection(&cl);
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  int found = 0;
  time_t end = time(NULL) + timeout_s;
  while (!found && time(NULL) <= end) {
    const bson_t *d;
    mongoc_cursor_t *cur =
        mongoc_collection_find_with_opts(col, &filter, NULL, NULL);
    if (mongoc_cursor_next(cur, &d)) {
      bson_copy_to(d, doc);
      found = 1;
    } else if (mongoc_cursor_error(cur, &e)) {
      mongoc_cursor_destroy(cur);
      cr_assert_fail("MongoDB: %s", e.message);
    }
    mongoc_cursor_destroy(cur);
    if (!found)
      pt_test_sleep_ms(200);
  }
  bson_destroy(&filter);
  mongoc_collection_destroy(col);
  mongoc_client_destroy(cl);
  return found;
}

long pt_mongo_count_tasks(char ids[][24], int n, int timeout_s) {
  bson_error_t e;
  mongoc_client_t *cl;
  mongoc_collection_t *col = tasks_collection(&cl);
  bson_t cmd = BSON_INITIALIZER, q, idq, in;
  BSON_APPEND_UTF8(&cmd, "count", "tasks");
  BSON_APPEND_DOCUMENT_BEGIN(&cmd, "query", &q);
  BSON_APPEND_DOCUMENT_BEGIN(&q, "_id", &idq);
  BSON_APPEND_ARRAY_BEGIN(&idq, "$in", &in);
  for (int i = 0; i < n; i++) {
    char k[16];
    snprintf(k, sizeof k, "%d", i);
    BSON_APPEND_UTF8(&in, k, ids[i]);
  }
  bson_append_array_end(&idq, &in);
  bson_append_document_end(&q, &idq);
  bson_append_document_end(&cmd, &q);
  long count = -1;
  time_t end = time(NULL) + timeout_s;
  do {
    bson_t r;
    bson_iter_t it;
    if (mongoc_collection_command_simple(col, &cmd, NULL, &r, &e) &&
        bson_iter_init_find(&it, &r, "n"))
      count = (long)bson_iter_as_int64(&it);
    else
      cr_assert_fail("MongoDB: %s", e.message);
    bson_destroy(&r);
    if (count >= n)
      break;
    pt_test_sleep_ms(250);
  } while (time(NULL) <= end);
  bson_destroy(&cmd);
  mongoc_collection_destroy(col);
  mongoc_client_destroy(cl);
  return count;
}

/* A blocking connection to the test Redis (fails the test if none). */
redisContext *pt_test_redis(void) {
  pt_error_t err;
  redisContext *c = pt_redis_connect_sync(
      pt_test_uri("PAYTASK_REDIS_URI", "Redis"), 3000, &err);
  cr_assert_not_null(c, "Redis: %s", err.message);
  return c;
}

int pt_redis_has_key(const char *key) {
  redisContext *c = pt_test_redis();
  redisReply *r = redisCommand(c, "EXISTS %s", key);
  /* An error is not "absent": a test asserting absence would pass. */
  cr_assert(r != NULL && r->type == REDIS_REPLY_INTEGER, "EXISTS %s: %s", key,
            r == NULL ? c->errstr
                      : r->type == REDIS_REPLY_ERROR ? r->str : "not a number");
  int has = r->integer == 1;
  freeReplyObject(r);
  redisFree(c);
  return has;
}

int pt_redis_has_task(const char *id) {
  char key[64];
  snprintf(key, sizeof key, "pt:task:%s", id);
  return pt_redis_has_key(key);
}

const char *pt_unique(const char *prefix) {
  static char buf[96];
  return pt_test_unique(prefix, buf, sizeof buf);
}

void pt_redis_lose_task(const char *id) {
  redisContext *c = pt_test_redis();
  freeReplyObject(redisCommand(c, "DEL pt:task:%s", id));
  redisFree(c);
}

long pt_worker_heartbeat(pid_t pid, const char *field) {
  redisContext *c = pt_test_redis();
  long value = -1;
  redisReply *keys = redisCommand(c, "KEYS pt:worker:*");
  for (size_t i = 0; keys != NULL && keys->type == REDIS_REPLY_ARRAY &&
                     i < keys->elements && value < 0;
       i++) {
    redisReply *r = redisCommand(c, "HMGET %s pid %s", keys->element[i]->str,
                                 field);
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING &&
        atol(r->element[0]->str) == (long)pid &&
        r->element[1]->type == REDIS_REPLY_STRING)
      value = atol(r->element[1]->str);
    freeReplyObject(r);
  }
  freeReplyObject(keys);
  redisFree(c);
  return value;
}
