/* A worker killed with SIGKILL in the middle of a batch, or the broker
 * closing every connection under a running api and worker, loses nothing
 * and charges nothing twice (issue 3). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_store.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

#define N 500

static pt_stack_t stack;

static void fini(void) { pt_stack_fini(&stack); }

TestSuite(crash, .fini = fini, .timeout = 300);

Test(crash, sigkill_during_a_batch_of_500) {
  static char ids[N][24], otns[N][64];
  char prefix[48];
  bson_t doc;
  snprintf(prefix, sizeof prefix, "%s", pt_unique("KILL"));
  /* Some latency keeps many tasks in flight when the worker dies. The
   * dead worker's sync thread may hold entries it had read: another
   * worker claims them once idle this long. */
  pt_stack_env(&stack, "PAYTASK_SYNC_CLAIM_IDLE_MS", "2000");
  pt_stack_start(&stack, 2, "--latency-ms=50");
  for (int i = 0; i < N; i++) {
    snprintf(otns[i], sizeof otns[i], "%s-%d", prefix, i);
    char *body = pt_task_body(otns[i], 100 + i,
                              i % 10 == 0 ? "{\"fail_times\": 1}" : NULL, NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
    if (i == N / 3)
      pt_stack_signal_worker(&stack, 0, SIGKILL);
  }
  pt_stack_add_worker(&stack); /* the replacement a supervisor would start */
  int succeeded = 0;
  for (int i = 0; i < N; i++) {
    pt_wait_final(&stack, ids[i], 120, &doc);
    succeeded += strcmp(pt_json_str(&doc, "status"), "SUCCEEDED") == 0;
    bson_destroy(&doc);
  }
  cr_assert_eq(succeeded, N, "every task must succeed");
  pt_assert_created_once(&stack, otns, N);
  /* Each task exactly once in MongoDB (keyed by task id). */
  cr_assert_eq(pt_mongo_count_tasks(ids, N, 60), N,
               "not every task reached MongoDB");
  cr_assert(pt_mongo_task(ids[N - 1], 10, &doc));
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
}

Test(crash, broker_closes_every_connection_midway) {
  enum { M = 300 };
  static char ids[M][24], otns[M][64];
  char prefix[48];
  bson_t doc;
  snprintf(prefix, sizeof prefix, "%s", pt_unique("BROKER"));
  pt_stack_start(&stack, 1, "--latency-ms=50");
  for (int i = 0; i < M; i++) {
    snprintf(otns[i], sizeof otns[i], "%s-%d", prefix, i);
    char *body = pt_task_body(otns[i], 100 + i, NULL, NULL);
    /* While the api reconnects to the broker it answers 503. */
    pt_submit_until_taken(&stack, body, otns[i], ids[i]);
    free(body);
    if (i == M / 2) {
      /* Deliveries in flight at the worker lose their channel: they must
       * come back, be recognised as redelivered, and not be charged
       * twice; the api and the worker must reconnect by themselves. */
      pt_rabbitmqctl("close_all_connections --vhost '%s' "
                     "'paytask test: the broker goes away'",
                     pt_amqp_vhost());
    }
  }
  for (int i = 0; i < M; i++) {
    pt_wait_final(&stack, ids[i], 120, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED",
                     "task %d (%s) did not succeed", i, ids[i]);
    bson_destroy(&doc);
  }
  pt_assert_created_once(&stack, otns, M);
  cr_assert_eq(pt_mongo_count_tasks(ids, M, 60), M,
               "not every task reached MongoDB");
}

/* The broker redelivers a worker's unacknowledged messages when its
 * connection drops, while the worker itself goes on running them. The
 * copies must wait for that worker, not run the attempts a second time
 * (a resumed attempt queries the channel, and could create the trade
 * again) nor count the drop as a crash toward worker.max_redeliveries. */
Test(crash, a_lost_broker_connection_does_not_run_an_attempt_twice) {
  enum { M = 20 };
  static char ids[M][24], otns[M][64];
  char prefix[48];
  bson_t doc;
  snprintf(prefix, sizeof prefix, "%s", pt_unique("BLIP"));
  pt_stack_vhost(&stack); /* the connections closed below are ours alone */
  /* No follow-up query for 10 minutes: every query the simulator sees
   * comes from a second run of an attempt. */
  pt_stack_env(&stack, "PAYTASK_QUERY_SCHEDULE", "600");
  pt_stack_start(&stack, 2, NULL);
  for (int i = 0; i < M; i++) {
    snprintf(otns[i], sizeof otns[i], "%s-%d", prefix, i);
    /* The channel answers each create after 4 s. */
    char *body = pt_task_body(otns[i], 100 + i, "{\"latency_ms\": 4000}", NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
  }
  for (int i = 0; i < M; i++) /* every create is at the channel */
    for (int t = 0; pt_sim_stat(&stack, otns[i], "create_calls") < 1; t++) {
      cr_assert(t < 300, "task %d never reached the channel", i);
      usleep(10000);
    }
  pt_rabbitmqctl("close_all_connections --vhost '%s' "
                 "'paytask test: the connection drops mid-call'",
                 pt_amqp_vhost());
  redisContext *rc = pt_test_redis();
  for (int i = 0; i < M; i++) {
    pt_wait_final(&stack, ids[i], 60, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED",
                     "task %d (%s) did not succeed", i, ids[i]);
    cr_assert_eq(pt_json_int(&doc, "attempts", 0), 1);
    bson_destroy(&doc);
    redisReply *r = redisCommand(rc, "HGET %s%s crashes", PT_KEY_TASK, ids[i]);
    cr_assert(r != NULL && r->type == REDIS_REPLY_NIL,
              "task %d: the lost connection was counted as a crash", i);
    freeReplyObject(r);
  }
  redisFree(rc);
  for (int i = 0; i < M; i++) {
    cr_assert_eq(pt_sim_stat(&stack, otns[i], "query_calls"), 0,
                 "task %d (%s): its attempt ran a second time (it queried)",
                 i, ids[i]);
    cr_assert_eq(pt_sim_stat(&stack, otns[i], "create_calls"), 1);
  }
}
