/* /metrics on the api and a worker (issue 6): the counters move as tasks
 * do, in the Prometheus text format. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runner/pt_topology.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

static pt_stack_t stack;

static void fini(void) { pt_stack_fini(&stack); }

TestSuite(metrics, .fini = fini, .timeout = 120);


Test(metrics, counters_follow_the_tasks) {
  char id[24], url[128], addr[64], *out = NULL;
  bson_t doc;
  int port = pt_test_free_port();
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  pt_stack_env(&stack, "PAYTASK_WORKER_METRICS_LISTEN", addr);
  /* The counts below are this test's three tasks: a task another suite
   * left in the shared queue (a drain deadline returns its attempt there)
   * would be counted too. */
  pt_queue_drain_count(PT_QUEUE_TASKS, "");
  pt_stack_start(&stack, 1, NULL);
  const char *sims[] = {NULL, "{\"fail_times\": 1}", "{\"decline\": true}"};
  for (int i = 0; i < 3; i++) {
    char *body = pt_task_body(pt_unique("MET"), 100, sims[i], NULL);
    pt_submit_ok(&stack, body, id);
    free(body);
    pt_wait_final(&stack, id, 30, &doc);
    bson_destroy(&doc);
  }
  snprintf(url, sizeof url, "%s/metrics", stack.api_url);
  cr_assert_eq(pt_http("GET", url, NULL, NULL, NULL, &out), 200);
  cr_assert(strstr(out, "# TYPE paytask_tasks_submitted_total counter") != NULL,
            "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_tasks_submitted_total{type=\"pay\",channel=\"sim\"}"), 3,
               "%s", out);
  cr_assert_geq(pt_test_metric(out, "paytask_sync_backlog"), 0, "%s", out);
  cr_assert_geq(pt_test_metric(out, "paytask_sync_lag_seconds"), 0, "%s", out);
  cr_assert_geq(pt_test_metric(out, "paytask_outbox_backlog"), 0, "%s", out);
  /* Broker queue depths, read by the api every 5 s. */
  cr_assert_geq(pt_test_metric(out, "paytask_queue_messages{queue=\"paytask.tasks\"}"), 0,
                "%s", out);
  cr_assert_geq(pt_test_metric(out, "paytask_queue_messages{queue=\"paytask.dead\"}"), 0,
                "%s", out);
  cr_assert_geq(pt_test_metric(out, "paytask_queue_messages{queue=\"paytask.delay.3600s\"}"),
                0, "%s", out);
  free(out);
  usleep(300 * 1000); /* the last ack lands after the final state */
  snprintf(url, sizeof url, "http://%s/metrics", addr);
  cr_assert_eq(pt_http("GET", url, NULL, NULL, NULL, &out), 200, "worker metrics");
  cr_assert_eq(pt_test_metric(out, "paytask_tasks_final_total{type=\"pay\",channel=\"sim\",status=\"SUCCEEDED\"}"), 2, "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_tasks_final_total{type=\"pay\",channel=\"sim\",status=\"FAILED\"}"), 1, "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_tasks_retried_total{type=\"pay\",channel=\"sim\"}"), 1, "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_channel_errors_total{channel=\"sim\",code=\"DECLINED\"}"), 1, "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_attempt_duration_seconds_count{type=\"pay\",channel=\"sim\"}"), 4, "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_submit_to_final_seconds_count{type=\"pay\",channel=\"sim\"}"), 3, "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_worker_broker_up"), 1, "%s", out);
  /* Four calls one after the other, seconds apart: one connection. */
  cr_assert(strstr(out, "# TYPE paytask_worker_channel_connections_total counter") != NULL,
            "%s", out);
  cr_assert_eq(pt_test_metric(out, "paytask_worker_channel_connections_total"), 1, "%s", out);
  free(out);
}

Test(metrics, inspect_shows_queues_sync_and_workers) {
  char cmd[512], line[512];
  int queues = 0, worker = 0, sync = 0;
  pt_stack_start(&stack, 1, NULL);
  sleep(3); /* the worker's first heartbeats */
  snprintf(cmd, sizeof cmd, "PAYTASK_CONFIG=/dev/null %s inspect 2>&1",
           getenv("PAYTASK_BIN"));
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  char pid[24];
  snprintf(pid, sizeof pid, " %d ", (int)stack.workers[0]);
  while (fgets(line, sizeof line, p) != NULL) {
    queues += strncmp(line, "paytask.tasks ", 14) == 0 ||
              strncmp(line, "paytask.dead ", 13) == 0;
    sync += strncmp(line, "sync to MongoDB:", 16) == 0;
    worker += strstr(line, pid) != NULL && strstr(line, "running") != NULL;
  }
  cr_assert_eq(pclose(p), 0);
  cr_assert_eq(queues, 2, "queue depths missing");
  cr_assert_eq(sync, 1, "sync backlog missing");
  cr_assert_eq(worker, 1, "the live worker is not listed");
}
