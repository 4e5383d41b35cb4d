/* The sync thread (issue 3): MongoDB down delays syncing and loses
 * nothing; entries left pending by a consumer that is gone are claimed by
 * another, and the backlog drains. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

#define N 20

static pt_stack_t stack;

static void fini(void) { pt_stack_stop(&stack); }

TestSuite(sync, .fini = fini, .timeout = 240);

Test(sync, mongodb_down_then_back_loses_nothing) {
  static char ids[N][24];
  bson_t doc;
  /* First: the workers' MongoDB is unreachable. Tasks still complete in
   * Redis; their sync entries stay pending. */
  pt_stack_env(&stack, "PAYTASK_MONGODB_URI",
               "mongodb://127.0.0.1:1/paytask?serverSelectionTimeoutMS=300");
  pt_stack_env(&stack, "PAYTASK_SYNC_CLAIM_IDLE_MS", "1000");
  setenv("PT_STACK_NO_READY_WAIT", "1", 1);
  pt_stack_start(&stack, 1, NULL);
  for (int i = 0; i < N; i++) {
    char *body = pt_task_body(pt_unique("SYNC"), 100 + i, NULL, NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
  }
  for (int i = 0; i < N; i++) {
    pt_wait_final(&stack, ids[i], 30, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
    bson_destroy(&doc);
  }
  sleep(1);
  cr_assert(!pt_mongo_task(ids[0], 0, &doc),
            "synced although MongoDB was unreachable");
  cr_assert_eq(pt_stack_stop(&stack), 0, "a process did not stop cleanly");

  /* Then: MongoDB is back, served by a new worker (a new consumer). It
   * claims what the old one left pending and writes everything. */
  unsetenv("PT_STACK_NO_READY_WAIT");
  memset(&stack, 0, sizeof stack);
  pt_stack_env(&stack, "PAYTASK_SYNC_CLAIM_IDLE_MS", "1000");
  pt_stack_start(&stack, 1, NULL);
  for (int i = 0; i < N; i++) {
    cr_assert(pt_mongo_task(ids[i], 60, &doc), "task %s never reached MongoDB",
              ids[i]);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
    cr_assert_eq(pt_json_len(&doc, "history"), 1);
    bson_destroy(&doc);
  }
}


/* sync.linger_ms: tasks that finish one by one, 100 ms apart, reach
 * MongoDB in a few bulk writes instead of one each, and all of them. */
Test(sync, a_short_batch_waits_for_more_before_the_next_write) {
  enum { M = 10 };
  static char ids[M][24];
  char addr[64], url[96], *out = NULL;
  bson_t doc;
  snprintf(addr, sizeof addr, "127.0.0.1:%d", pt_test_free_port());
  pt_stack_env(&stack, "PAYTASK_WORKER_METRICS_LISTEN", addr);
  pt_stack_env(&stack, "PAYTASK_SYNC_LINGER_MS", "1000");
  pt_stack_start(&stack, 1, NULL);
  for (int i = 0; i < M; i++) {
    char *body = pt_task_body(pt_unique("LINGER"), 100 + i, NULL, NULL);
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
    pt_wait_final(&stack, ids[i], 30, &doc);
    bson_destroy(&doc);
    usleep(100 * 1000);
  }
  for (int i = 0; i < M; i++) {
    cr_assert(pt_mongo_task(ids[i], 30, &doc), "task %s never reached MongoDB",
              ids[i]);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
    bson_destroy(&doc);
  }
  snprintf(url, sizeof url, "http://%s/metrics", addr);
  cr_assert_eq(pt_http("GET", url, NULL, NULL, NULL, &out), 200);
  double writes = pt_test_metric(out, "paytask_sync_bulk_writes_total");
  /* Ten finals over about 1.5 s, lingering 1 s after a short batch: two or
   * three writes (a fourth if entries other suites left were read first);
   * one per task without the linger. */
  cr_assert(writes >= 1 && writes <= 4, "%g bulk writes for %d tasks:\n%s",
            writes, M, out);
  free(out);
}
