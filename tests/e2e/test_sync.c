/* The sync thread (issue 3): MongoDB down delays syncing and loses
 * nothing; entries left pending by a consumer that is gone are claimed by
 * another, and the backlog drains. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/support/pt_stack.h"

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
