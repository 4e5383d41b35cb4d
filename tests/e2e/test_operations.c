/* Operating the workers (issue 6): scaling a pool at run time, draining on
 * SIGTERM, and the drain deadline. */
#include <amqp.h>
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_amqp.h"
#include "core/pt_id.h"
#include "core/pt_store.h"
#include "worker/pt_relay.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

static pt_stack_t stack;

static void fini(void) { pt_stack_fini(&stack); }

TestSuite(operations, .fini = fini, .timeout = 240);

#define N 600

Test(operations, scale_1_4_1_under_load_then_sigterm) {
  static char ids[N][24], otns[N][64];
  char prefix[48];
  bson_t doc;
  snprintf(prefix, sizeof prefix, "%s", pt_unique("SCALE"));
  pt_stack_start(&stack, 0, "--latency-ms=20");
  int pool = pt_stack_add_pool(&stack, 1);
  for (int i = 0; i < N; i++) {
    snprintf(otns[i], sizeof otns[i], "%s-%d", prefix, i);
    char *body = pt_task_body(otns[i], 100 + i,
                              i % 7 == 0 ? "{\"fail_times\": 1}" : NULL, NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
    /* Signals do not queue: one at a time, a moment apart, as an
     * operator would send them. */
    if (i == N / 8 || i == N / 4 || i == 3 * N / 8)
      pt_stack_signal_worker(&stack, pool, SIGTTIN); /* 1 → 4 */
    if (i == 5 * N / 8 || i == 3 * N / 4 || i == 7 * N / 8)
      pt_stack_signal_worker(&stack, pool, SIGTTOU); /* 4 → 1 */
  }
  for (int i = 0; i < N; i++) {
    pt_wait_final(&stack, ids[i], 120, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED", "task %s",
                     ids[i]);
    bson_destroy(&doc);
  }
  pt_assert_created_once(&stack, otns, N);
  /* The whole pool drains and exits cleanly. */
  cr_assert_eq(pt_stack_stop_worker(&stack, pool, 60), 0,
               "the pool did not exit 0 on SIGTERM");
  cr_assert_eq(pt_mongo_count_tasks(ids, N, 60), N,
               "not every task reached MongoDB");
  char logcmd[512];
  snprintf(logcmd, sizeof logcmd,
           "grep -c worker_spawned %s/worker0.log | grep -qx 4",
           stack.logdir);
  cr_assert_eq(system(logcmd), 0, "the pool did not grow to 4 workers");
  /* And shrank back: three workers stopped on SIGTTOU, each exiting 0
   * (the draining stop leaves the last one). */
  snprintf(logcmd, sizeof logcmd,
           "grep -c worker_scaled_down %s/worker0.log | grep -qx 3",
           stack.logdir);
  cr_assert_eq(system(logcmd), 0, "the pool did not shrink back to 1 worker");
  snprintf(logcmd, sizeof logcmd,
           "grep worker_exited %s/worker0.log | grep -v 'status=0 ' | "
           "grep -q .", stack.logdir);
  cr_assert_neq(system(logcmd), 0, "a worker of the pool did not exit 0");
}

#define M 10

Test(operations, drain_deadline_returns_attempts_uncounted) {
  static char ids[M][24], otns[M][64];
  char prefix[48];
  bson_t doc;
  snprintf(prefix, sizeof prefix, "%s", pt_unique("DRAIN"));
  pt_stack_env(&stack, "PAYTASK_WORKER_DRAIN_TIMEOUT_MS", "300");
  /* Every channel call takes 3 s: the deadline cuts them off. */
  pt_stack_start(&stack, 1, "--latency-ms=3000");
  for (int i = 0; i < M; i++) {
    snprintf(otns[i], sizeof otns[i], "%s-%d", prefix, i);
    char *body = pt_task_body(otns[i], 100, NULL, NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
  }
  /* The attempts are running (their calls held 3 s at the channel) when
   * the worker is told to stop. */
  for (int i = 0; i < M; i++) {
    int running = 0;
    for (int t = 0; t < 500 && !running; t++) {
      char *out = NULL;
      cr_assert_eq(pt_api_get(&stack, ids[i], 0, &out), 200);
      pt_json(out, &doc);
      running = strcmp(pt_json_str(&doc, "status"), "RUNNING") == 0;
      bson_destroy(&doc);
      free(out);
      if (!running)
        pt_test_sleep_ms(20);
    }
    cr_assert(running, "task %d never ran before the stop", i);
  }
  cr_assert_eq(pt_stack_stop_worker(&stack, 0, 20), 0,
               "the worker did not exit 0 after its drain deadline");
  for (int i = 0; i < M; i++) {
    char *out = NULL;
    cr_assert_eq(pt_api_get(&stack, ids[i], 0, &out), 200);
    pt_json(out, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "PENDING",
                     "an interrupted attempt must be undone: %s", out);
    cr_assert_eq(pt_json_int(&doc, "attempts", -1), 0);
    bson_destroy(&doc);
    free(out);
  }
  /* Another worker finishes them: one attempt each, no second trade. */
  pt_stack_add_worker(&stack);
  for (int i = 0; i < M; i++) {
    pt_wait_final(&stack, ids[i], 60, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
    cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1,
                 "the interrupted attempt was counted");
    bson_destroy(&doc);
    cr_assert_eq(pt_sim_stat(&stack, otns[i], "creates_after_created"), 0,
                 "trade %s was created twice", otns[i]);
  }
}

/* Quorum queues (for a RabbitMQ cluster), in a virtual host of their own
 * since a queue's type cannot change under the same name: the pipeline,
 * retries through the delay queues included, runs the same. */
Test(operations, quorum_queues_run_the_pipeline) {
  const char *uri = getenv("PT_TEST_AMQP_QUORUM_URI");
  cr_assert_not_null(uri, "PT_TEST_AMQP_QUORUM_URI is not set; run the tests "
                          "through scripts/test (scripts/services start "
                          "makes the virtual host)");
  pt_stack_env(&stack, "PAYTASK_AMQP_URI", uri);
  pt_stack_env(&stack, "PAYTASK_AMQP_QUEUE_TYPE", "quorum");
  pt_stack_start(&stack, 1, NULL);
  char ids[20][24];
  for (int i = 0; i < 20; i++) {
    char *body = pt_task_body(pt_unique("QUORUM"), 100 + i,
                              i % 4 == 0 ? "{\"fail_times\": 1}" : NULL, NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
  }
  for (int i = 0; i < 20; i++) {
    bson_t doc;
    pt_wait_final(&stack, ids[i], 30, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED", "task %d", i);
    cr_assert_eq(pt_json_int(&doc, "attempts", 0), i % 4 == 0 ? 2 : 1);
    bson_destroy(&doc);
  }
  /* The work queue really is a quorum queue: declaring it classic is
   * refused as inequivalent. */
  pt_error_t err;
  amqp_connection_state_t c = pt_amqp_connect_sync(uri, 3000, &err);
  cr_assert_not_null(c, "%s", err.message);
  amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-queue-type"),
                          .value = {.kind = AMQP_FIELD_KIND_UTF8,
                                    .value.bytes = amqp_cstring_bytes("classic")}};
  amqp_table_t args = {1, &e};
  amqp_queue_declare(c, 1, amqp_cstring_bytes("paytask.tasks"), 0, 1, 0, 0,
                     args);
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  cr_assert_eq(r.reply_type, AMQP_RESPONSE_SERVER_EXCEPTION,
               "paytask.tasks accepted a classic declaration");
  pt_amqp_close_sync(c);
  cr_assert_eq(pt_stack_stop(&stack), 0);
}

/* worker.concurrency bounds the channel calls one worker makes at once,
 * while its prefetch holds more deliveries waiting; every task still
 * completes, and a SIGTERM drains the waiting ones too. */
Test(operations, concurrency_bounds_calls_while_prefetch_holds_more) {
  enum { TASKS = 120, K = 8 };
  static char ids[TASKS][24];
  char otn[64], prefix[48], url[128], *out = NULL;
  bson_t doc;
  snprintf(prefix, sizeof prefix, "%s", pt_unique("CONC"));
  pt_stack_env(&stack, "PAYTASK_WORKER_CONCURRENCY", "8");
  pt_stack_env(&stack, "PAYTASK_AMQP_PREFETCH", "100");
  /* Calls slow enough (120 tasks × 0.5 s over 8 slots) that deliveries
   * pile up behind the slots as the tasks are submitted. */
  pt_stack_start(&stack, 1, "--latency-ms=500");
  for (int i = 0; i < TASKS; i++) {
    snprintf(otn, sizeof otn, "%s-%d", prefix, i);
    char *body = pt_task_body(otn, 100 + i, NULL, NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
  }
  /* Stop the worker while its prefetch holds more deliveries than it has
   * slots (its heartbeat says how many wait): it drains them
   * (drain_timeout_ms is 30 s by default) before it exits 0. */
  long waiting = -1;
  for (int i = 0; i < 100 && waiting <= K; i++) {
    pt_test_sleep_ms(100);
    waiting = pt_worker_heartbeat(stack.workers[0], "waiting");
  }
  cr_assert_gt(waiting, K, "the worker never held more deliveries (%ld "
               "waiting) than its %d slots", waiting, K);
  cr_assert_eq(pt_stack_stop_worker(&stack, 0, 60), 0,
               "the worker did not drain and exit 0");
  int done = 0;
  for (int i = 0; i < TASKS; i++) {
    cr_assert_eq(pt_api_get(&stack, ids[i], 0, &out), 200, "%s", out);
    pt_json(out, &doc);
    done += strcmp(pt_json_str(&doc, "status"), "SUCCEEDED") == 0;
    bson_destroy(&doc);
    free(out);
  }
  cr_assert_geq(done, waiting, "the stopped worker finished %d tasks, fewer "
                "than the %ld it held waiting", done, waiting);
  pt_stack_add_worker(&stack);
  for (int i = 0; i < TASKS; i++) {
    pt_wait_final(&stack, ids[i], 120, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED",
                     "task %d did not succeed", i);
    bson_destroy(&doc);
  }
  snprintf(url, sizeof url, "%s/v1/sim/stats", stack.sim_url);
  cr_assert_eq(pt_http("GET", url, NULL, NULL, NULL, &out), 200);
  pt_json(out, &doc);
  free(out);
  int64_t most = pt_json_int(&doc, "max_in_flight", -1);
  bson_destroy(&doc);
  cr_assert(most >= 1 && most <= K,
            "the channel saw %lld calls at once; worker.concurrency is %d",
            (long long)most, K);
}

/* A worker stopped while it relays results ends the publishes it began
 * before it exits: closed with them in flight, it left the entries
 * pending in the outbox, and another relay claimed and sent them again
 * 40 s later (an event twice, a follow-up late). Here the outbox holds a
 * backlog of events when the worker starts, and the SIGTERM comes once
 * its relay has sent the first of them. */
Test(operations, a_drained_worker_leaves_no_outbox_entry_pending) {
  enum { EVENTS = 4000 };
  static char ids[EVENTS][48];
  char host[64] = "host", consumer[96], at[32];
  redisContext *rc = pt_test_redis();
  redisReply *r;
  pt_stack_start(&stack, 0, NULL);
  snprintf(at, sizeof at, "%lld", (long long)pt_now_ms());
  for (int i = 0; i < EVENTS; i++)
    redisAppendCommand(rc, "XADD %s * kind event subject task task_id %s "
                       "status SUCCEEDED at %s spec {}",
                       PT_STREAM_OUTBOX, pt_unique("backlog"), at);
  for (int i = 0; i < EVENTS; i++) {
    cr_assert_eq(redisGetReply(rc, (void **)&r), REDIS_OK);
    cr_assert_eq(r->type, REDIS_REPLY_STRING, "XADD failed");
    snprintf(ids[i], sizeof ids[i], "%s", r->str);
    freeReplyObject(r);
  }
  int w = pt_stack_add_worker(&stack);
  gethostname(host, sizeof host - 1);
  snprintf(consumer, sizeof consumer, "%s-%ld", host,
           (long)stack.workers[w]);
  /* The first entries relayed are deleted from the stream. */
  for (int i = 0; i < 3000; i++) {
    r = redisCommand(rc, "XRANGE %s %s %s COUNT 1", PT_STREAM_OUTBOX, ids[0],
                     ids[0]);
    int gone = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 0;
    freeReplyObject(r);
    if (gone)
      break;
    cr_assert(i < 2999, "the worker relayed nothing in 30 s");
    pt_test_sleep_ms(10);
  }
  /* The worker reads as the consumer named here (else "none pending"
   * below would hold of a name nobody uses). */
  r = redisCommand(rc, "XINFO CONSUMERS %s %s", PT_STREAM_OUTBOX,
                   PT_RELAY_GROUP);
  cr_assert(r != NULL && r->type == REDIS_REPLY_ARRAY, "XINFO CONSUMERS");
  int named = 0;
  for (size_t i = 0; i < r->elements; i++) {
    redisReply *c = r->element[i];
    for (size_t k = 0; c->type == REDIS_REPLY_ARRAY && k + 1 < c->elements;
         k += 2)
      named |= c->element[k]->type == REDIS_REPLY_STRING &&
               strcmp(c->element[k]->str, "name") == 0 &&
               c->element[k + 1]->type == REDIS_REPLY_STRING &&
               strcmp(c->element[k + 1]->str, consumer) == 0;
  }
  freeReplyObject(r);
  cr_assert(named, "no consumer %s in the relay's group", consumer);
  cr_assert_eq(pt_stack_stop_worker(&stack, w, 60), 0,
               "the worker did not drain and exit 0");
  r = redisCommand(rc, "XPENDING %s %s - + 1000 %s", PT_STREAM_OUTBOX,
                   PT_RELAY_GROUP, consumer);
  cr_assert(r != NULL && r->type == REDIS_REPLY_ARRAY, "XPENDING failed");
  size_t left = r->elements;
  freeReplyObject(r);
  cr_assert_eq(left, 0, "the stopped worker %s left %zu outbox entries "
               "pending", consumer, left);
  /* The backlog's rest is nobody's: removed for the tests after this. */
  for (int i = 0; i < EVENTS; i++)
    redisAppendCommand(rc, "XDEL %s %s", PT_STREAM_OUTBOX, ids[i]);
  for (int i = 0; i < EVENTS; i++) {
    cr_assert_eq(redisGetReply(rc, (void **)&r), REDIS_OK);
    freeReplyObject(r);
  }
  redisFree(rc);
}

/* A scale-down that comes while the newest worker is still starting (an
 * operator's SIGTTIN and SIGTTOU back to back): that worker drains and
 * exits 0 like any other, instead of dying of the SIGTERM. */
Test(operations, scale_down_while_starting_drains_cleanly) {
  char id[24], logcmd[512];
  bson_t doc;
  pt_stack_start(&stack, 0, NULL);
  int pool = pt_stack_add_pool(&stack, 1);
  char *body = pt_task_body(pt_unique("START"), 100, NULL, NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  pt_wait_final(&stack, id, 60, &doc); /* the first worker runs */
  bson_destroy(&doc);
  for (int round = 0; round < 3; round++) {
    /* Both pending at once: the supervisor starts a second worker, then
     * stops the newest, which has only just been forked. */
    pt_stack_signal_worker(&stack, pool, SIGTTIN);
    pt_stack_signal_worker(&stack, pool, SIGTTOU);
    pt_test_sleep_ms(2500);
  }
  snprintf(logcmd, sizeof logcmd,
           "test \"$(grep -c 'event=worker_exited .*status=0 signal=0 "
           "expected=1' %s/worker0.log)\" -eq 3",
           stack.logdir);
  cr_assert_eq(system(logcmd), 0,
               "a worker stopped while starting did not drain and exit 0 "
               "(log: %s/worker0.log)", stack.logdir);
  /* The pool still works, and stops cleanly. */
  body = pt_task_body(pt_unique("AFTER"), 100, NULL, NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  pt_wait_final(&stack, id, 60, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  cr_assert_eq(pt_stack_stop_worker(&stack, pool, 60), 0,
               "the pool did not exit 0 on SIGTERM");
}

/* The pids of the supervisor's workers (its children), up to max. */
static int pool_children(pid_t sup, pid_t *out, int max) {
  char cmd[64];
  int n = 0;
  long p;
  snprintf(cmd, sizeof cmd, "pgrep -P %ld", (long)sup);
  FILE *f = popen(cmd, "r");
  cr_assert_not_null(f);
  while (n < max && fscanf(f, "%ld", &p) == 1)
    out[n++] = (pid_t)p;
  pclose(f);
  return n;
}

/* Whether process pid runs (a zombie does not: it ended, and whoever
 * adopted it has not reaped it yet). */
static int running_pid(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  return p != NULL && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* Every worker of a pool ending at once (as when Redis restarts and each
 * exits to reconnect) is one crash of each, not a crash loop: the pool
 * starts them all again rather than giving up. */
Test(operations, every_worker_of_a_pool_dying_once_is_not_a_crash_loop) {
  enum { P = 6 };
  pid_t kids[P + 2];
  pt_stack_start(&stack, 0, NULL);
  int pool = pt_stack_add_pool(&stack, P);
  pid_t sup = stack.workers[pool];
  int n = 0;
  for (int t = 0; (n = pool_children(sup, kids, P + 2)) < P; t++) {
    cr_assert(t < 300, "the pool started %d of %d workers", n, P);
    usleep(100000);
  }
  for (int i = 0; i < P; i++)
    kill(kids[i], SIGKILL);
  /* Restarted after the 1 s backoff; the supervisor must still be there
   * with P new workers. */
  pid_t again[P + 2];
  int fresh = 0;
  for (int t = 0; t < 300 && fresh < P; t++) {
    usleep(100000);
    cr_assert_eq(kill(sup, 0), 0, "the supervisor gave up");
    n = pool_children(sup, again, P + 2);
    fresh = 0;
    for (int i = 0; i < n; i++) {
      int old = 0;
      for (int k = 0; k < P; k++)
        old |= again[i] == kids[k];
      fresh += !old;
    }
  }
  cr_assert_eq(fresh, P, "%d of %d workers were started again", fresh, P);
  char id[24];
  bson_t doc;
  pt_run_task(&stack, pt_unique("POOL"), 100, NULL, NULL, id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  /* A supervisor killed outright leaves no orphans: its workers drain
   * and exit. */
  n = pool_children(sup, again, P + 2);
  cr_assert_eq(n, P);
  pt_stack_signal_worker(&stack, pool, SIGKILL);
  for (int i = 0; i < n; i++)
    for (int t = 0; running_pid(again[i]); t++) {
      cr_assert(t < 300, "worker %ld outlived its supervisor",
                (long)again[i]);
      usleep(100000);
    }
}

/* Worker i of a pool serves its metrics on worker.metrics_listen's port +
 * i. A pool that would go past port 65535 is refused at start, saying so:
 * before, worker 1 of two at 65535 listened on a random port (0), and one
 * far past it failed at start until the crash-loop rule stopped the pool. */
Test(operations, a_pool_past_the_last_metrics_port_is_refused) {
  char out[4096];
  int st = pt_test_paytask("PAYTASK_WORKER_METRICS_LISTEN=127.0.0.1:65535",
                           5, "worker --processes 2", out, sizeof out);
  cr_assert_eq(st, 2, "the pool was not refused (exit status %d): %s", st,
               out);
  cr_assert(strstr(out, "leaves room for 1 worker") != NULL, "%s", out);
}

/* Runs `paytask inspect` with the environment given; its exit status, and
 * its output in out. */
static int inspect(const char *env, char *out, size_t len) {
  return pt_test_paytask(env, 0, "inspect", out, len);
}

/* `paytask inspect` exits 1 when it cannot see a server, so that a script
 * or a probe does not take an unreachable one for a healthy one. */
Test(operations, inspect_fails_when_a_server_is_unreachable) {
  char out[8192], env[256];
  int port = pt_test_free_port(); /* nothing listens there */
  cr_assert_eq(inspect("", out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "paytask.tasks") != NULL, "%s", out);
  snprintf(env, sizeof env, "PAYTASK_REDIS_URI=redis://127.0.0.1:%d/0", port);
  cr_assert_eq(inspect(env, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, "Redis unreachable") != NULL, "%s", out);
  snprintf(env, sizeof env, "PAYTASK_AMQP_URI=amqp://guest:guest@127.0.0.1:%d/",
           port);
  cr_assert_eq(inspect(env, out, sizeof out), 1, "%s", out);
}
