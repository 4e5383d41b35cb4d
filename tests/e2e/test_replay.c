/* Replay for SREs (issue 6): tasks that failed during a channel outage are
 * replayed by error code once it is over. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_id.h"
#include "tests/support/pt_simproc.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

#define N 200

static pt_stack_t stack;
static pt_stack_t nobroker; /* an api that cannot reach the broker */

static void fini(void) {
  pt_stack_fini(&stack);
  pt_stack_fini(&nobroker);
}

TestSuite(replay, .fini = fini, .timeout = 300);

static void outage(int on) {
  char url[128];
  snprintf(url, sizeof url, "%s/v1/sim/outage", stack.sim_url);
  cr_assert_eq(pt_http("POST", url, NULL, on ? "{\"on\":true}" : "{\"on\":false}",
                       NULL, NULL),
               200);
}

Test(replay, failed_tasks_replayed_by_error_code) {
  static char ids[N][24], otns[N][64];
  char since[32], prefix[48], cmd[1024], line[256];
  bson_t doc;
  pt_time_rfc3339(pt_now_ms() - 1000, since);
  snprintf(prefix, sizeof prefix, "%s", pt_unique("REPLAY"));
  pt_stack_env(&stack, "PAYTASK_API_TOKENS",
               PT_TEST_TOKEN ",reader:submit+read");
  pt_stack_start(&stack, 1, NULL);
  outage(1);
  for (int i = 0; i < N; i++) {
    snprintf(otns[i], sizeof otns[i], "%s-%d", prefix, i);
    char *body = pt_task_body(otns[i], 100 + i, NULL, "{\"need_retry\": false}");
    pt_submit_ok(&stack, body, ids[i]);
    free(body);
  }
  for (int i = 0; i < N; i++) {
    pt_wait_final(&stack, ids[i], 60, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
    bson_destroy(&doc);
  }
  cr_assert_eq(pt_mongo_count_tasks(ids, N, 60), N, "not all synced");
  outage(0); /* the cause is removed */

  /* An unknown token may not replay (401), nor one without the admin
   * scope (403), and neither replays anything. */
  char url[160], *out = NULL;
  snprintf(url, sizeof url, "%s/v1/tasks/%s/replay", stack.api_url, ids[0]);
  cr_assert_eq(pt_http("POST", url, "wrong", "", NULL, NULL), 401);
  cr_assert_eq(pt_http("POST", url, "reader", "", NULL, &out), 403, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "forbidden", "%s", out);
  bson_destroy(&doc);
  free(out);

  snprintf(cmd, sizeof cmd,
           "PAYTASK_CONFIG=/dev/null PAYTASK_API_URL=%s %s replay "
           "--error-code SYSTEM_ERROR --since %s --rate 2000 2>&1",
           stack.api_url, getenv("PAYTASK_BIN"), since);
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  static char news[N][24];
  int replayed = 0;
  while (fgets(line, sizeof line, p) != NULL) {
    char from[24], to[24];
    if (sscanf(line, "replayed %23s -> %23s", from, to) == 2)
      for (int i = 0; i < N; i++)
        if (strcmp(ids[i], from) == 0) {
          snprintf(news[i], sizeof news[i], "%s", to);
          replayed++;
        }
  }
  cr_assert_eq(pclose(p), 0, "paytask replay failed");
  cr_assert_eq(replayed, N, "replayed %d of %d", replayed, N);
  for (int i = 0; i < N; i++) {
    pt_wait_final(&stack, news[i], 60, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
    cr_assert_str_eq(pt_json_str(&doc, "replay_of"), ids[i], "lineage");
    cr_assert_eq(pt_json_int(&doc, "replay_count", -1), 1);
    cr_assert_str_eq(pt_json_str(&doc, "out_trade_no"), otns[i]);
    bson_destroy(&doc);
    cr_assert_eq(pt_sim_stat(&stack, otns[i], "create_ok"), 1);
  }
  /* None of them is left in the dead queue. */
  int left = 0;
  for (int i = 0; i < N; i++) {
    char mid[40];
    snprintf(mid, sizeof mid, "%s:1", ids[i]);
    left += pt_queue_drain_count("paytask.dead", mid);
  }
  cr_assert_eq(left, 0, "%d replayed tasks still in the dead queue", left);

  /* A second replay needs --force. */
  snprintf(cmd, sizeof cmd,
           "PAYTASK_CONFIG=/dev/null PAYTASK_API_URL=%s %s replay --id %s 2>&1",
           stack.api_url, getenv("PAYTASK_BIN"), ids[0]);
  p = popen(cmd, "r");
  int already = 0;
  while (fgets(line, sizeof line, p) != NULL)
    already += strstr(line, "1 already replayed") != NULL;
  pclose(p);
  cr_assert_eq(already, 1, "a second replay was not refused");
}

/* POST /v1/tasks/{id}/replay to s's api with a query string (NULL: none);
 * *out gets the answer (to free). */
static long replay(pt_stack_t *s, const char *id, const char *query,
                   char **out) {
  char url[192];
  snprintf(url, sizeof url, "%s/v1/tasks/%s/replay%s%s", s->api_url, id,
           query ? "?" : "", query ? query : "");
  return pt_http("POST", url, PT_TEST_TOKEN, "", NULL, out);
}

/* Submits a task the simulator declines and waits until it has FAILED. */
static void failed_task(char id[24]) {
  bson_t doc;
  char *body = pt_task_body(pt_unique("REPLAYQ"), 100, "{\"decline\": true}",
                            NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  bson_destroy(&doc);
}

/* The replay in out (a 202's body) has ended: a replay takes its task's
 * out_trade_no, so the next replay of one task waits for it to end
 * (these are declined by the simulator: FAILED). */
static void wait_replay_ended(pt_stack_t *s, const char *out) {
  bson_t doc, fin;
  char nid[24];
  pt_json(out, &doc);
  snprintf(nid, sizeof nid, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  pt_wait_final(s, nid, 30, &fin);
  cr_assert_str_eq(pt_json_str(&fin, "status"), "FAILED");
  bson_destroy(&fin);
}

/* Only a parameter named force, set to true, forces a second replay:
 * ?noforce=true does not, and a force with another value is refused. */
Test(replay, only_force_true_forces_a_second_replay) {
  char id[24], *out = NULL;
  bson_t doc;
  pt_stack_start(&stack, 1, NULL);
  failed_task(id);
  cr_assert_eq(replay(&stack, id, NULL, &out), 202, "%s", out);
  wait_replay_ended(&stack, out);
  free(out);
  static const struct {
    const char *query;
    long status;
    const char *code;
  } not_force[] = {{"noforce=true", 409, "already_replayed"},
                   {"x=force=true", 409, "already_replayed"},
                   {"force=false", 409, "already_replayed"},
                   {"force=yes", 400, "invalid_force"},
                   {"force", 400, "invalid_force"}};
  for (size_t i = 0; i < sizeof not_force / sizeof not_force[0]; i++) {
    cr_assert_eq(replay(&stack, id, not_force[i].query, &out),
                 not_force[i].status, "?%s: %s", not_force[i].query, out);
    pt_json(out, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "error.code"), not_force[i].code);
    bson_destroy(&doc);
    free(out);
  }
  cr_assert_eq(replay(&stack, id, "x=1&force=true", &out), 202, "%s", out);
  pt_json(out, &doc);
  cr_assert_eq(pt_json_int(&doc, "replay_count", -1), 2, "%s", out);
  bson_destroy(&doc);
  free(out);
}

/* Replays id through s's api and checks the answer's status and, for a
 * 202, the new task's replay_count, or else the error code. */
static void replay_answers(pt_stack_t *s, const char *id, const char *query,
                           long status, const char *code, int count) {
  char *out = NULL;
  bson_t doc;
  cr_assert_eq(replay(s, id, query, &out), status, "%s", out);
  pt_json(out, &doc);
  if (code != NULL)
    cr_assert_str_eq(pt_json_str(&doc, "error.code"), code, "%s", out);
  else
    cr_assert_eq(pt_json_int(&doc, "replay_count", -1), count, "%s", out);
  bson_destroy(&doc);
  if (status == 202)
    wait_replay_ended(s, out);
  free(out);
}

/* A replay whose submit failed (503: the api cannot reach the broker)
 * replayed nothing, and the next try, forced or not, is taken as the
 * replay it failed to be (its mark was left, and the next try refused as
 * already_replayed). */
Test(replay, a_replay_whose_submit_failed_can_be_tried_again) {
  char id[24];
  pt_stack_start(&stack, 1, NULL);
  failed_task(id);
  pt_stack_start_without_broker(&nobroker);

  replay_answers(&nobroker, id, NULL, 503, "broker_unavailable", 0);
  replay_answers(&stack, id, NULL, 202, NULL, 1);
  replay_answers(&nobroker, id, "force=true", 503, "broker_unavailable", 0);
  replay_answers(&stack, id, "force=true", 202, NULL, 2);
  replay_answers(&stack, id, NULL, 409, "already_replayed", 0);
}

/* t (ms) as RFC 3339 in UTC+08:00, as an SRE in Shanghai writes it. */
static void time_in_shanghai(int64_t ms, char out[40]) {
  time_t t = (time_t)(ms / 1000) + 8 * 3600;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 40, "%Y-%m-%dT%H:%M:%S+08:00", &tm);
}

/* Runs `paytask replay ARGS`; returns its exit status and its output
 * (stdout and stderr) in out. */
static int replay_cli(const char *args, char *out, size_t len) {
  char env[128], cmd[640];
  snprintf(env, sizeof env, "PAYTASK_API_URL=%s", stack.api_url);
  snprintf(cmd, sizeof cmd, "replay %s", args);
  return pt_test_paytask(env, 0, cmd, out, len);
}

/* --since and --until take RFC 3339 times with any offset; a task
 * replayed already (here through the api) has its dead copy taken out of
 * the dead queue by the next run, not put back for ever. */
Test(replay, times_with_offsets_and_dead_copies_of_replayed_tasks) {
  char id[24], args[256], out[4096], before[40], after[40], *body;
  bson_t doc;
  pt_stack_start(&stack, 1, NULL);
  outage(1);
  body = pt_task_body(pt_unique("DEADCOPY"), 100, NULL,
                      "{\"need_retry\": false}");
  pt_submit_ok(&stack, body, id);
  free(body);
  pt_wait_final(&stack, id, 60, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  bson_destroy(&doc);
  outage(0);
  char ids[1][24];
  snprintf(ids[0], sizeof ids[0], "%s", id);
  cr_assert_eq(pt_mongo_count_tasks(ids, 1, 60), 1, "not synced");
  time_in_shanghai(pt_now_ms() - 120000, before);
  time_in_shanghai(pt_now_ms() + 120000, after);

  snprintf(args, sizeof args, "--id %s --since %s --dry-run", id, after);
  cr_assert_eq(replay_cli(args, out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "0 failed task(s) match") != NULL, "%s", out);
  snprintf(args, sizeof args, "--id %s --since %s --until %s --dry-run", id,
           before, after);
  cr_assert_eq(replay_cli(args, out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "1 failed task(s) match; 1 of them in the dead "
                        "queue") != NULL, "%s", out);
  cr_assert_eq(replay_cli("--since 2026-02-30", out, sizeof out), 2, "%s",
               out);
  cr_assert_eq(replay_cli("--since 2026-11-25T08:00:00", out, sizeof out), 2,
               "a time without its offset must be refused: %s", out);
  cr_assert_eq(replay_cli("--since -123-11-25", out, sizeof out), 2, "%s",
               out);
  cr_assert_eq(replay_cli("'--since=2026-11-25T 8:00:00Z'", out, sizeof out),
               2, "%s", out);

  char *ans = NULL;
  cr_assert_eq(replay(&stack, id, NULL, &ans), 202, "%s", ans);
  free(ans);
  snprintf(args, sizeof args, "--id %s", id);
  cr_assert_eq(replay_cli(args, out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "1 already replayed") != NULL, "%s", out);
  char mid[40];
  snprintf(mid, sizeof mid, "%s:1", id);
  cr_assert_eq(pt_queue_drain_count("paytask.dead", mid), 0,
               "the dead copy of a replayed task was put back");
}

/* An api that answers a replay 200 replayed it: that is its answer when
 * the broker's confirm of the new task was lost but a worker had already
 * taken it. The CLI counts it replayed and exits 0. Before, it counted it
 * failed and kept the dead copy, and running it again as told made a
 * second replay. (The api here is a stand-in that gives that answer,
 * which needs a lost confirm to come from the real one.) */
Test(replay, a_replay_answered_200_counts_as_replayed) {
  char id[24], args[256], out[4096];
  pt_stack_start(&stack, 1, NULL);
  failed_task(id);
  snprintf(args, sizeof args, "--id %s --dry-run", id);
  int found = 0;
  for (int i = 0; i < 60 && !found; i++) {
    cr_assert_eq(replay_cli(args, out, sizeof out), 0, "%s", out);
    found = strstr(out, "1 failed task(s) match") != NULL;
    if (!found)
      pt_test_sleep_ms(500);
  }
  cr_assert(found, "the failed task was not synced to MongoDB: %s", out);
  pt_sink_t api;
  const int status[] = {200};
  const char *answer[] = {"{\"task_id\":\"123456789\",\"status\":"
                          "\"SUCCEEDED\"}"};
  pt_sink_start(&api, 1, status, answer);
  snprintf(args, sizeof args, "--id %s --api http://127.0.0.1:%d", id,
           api.port);
  int st = replay_cli(args, out, sizeof out);
  cr_assert_eq(pt_sink_count(&api), 1, "the replay was not asked for: %s",
               out);
  pt_sink_stop(&api);
  cr_assert_eq(st, 0, "%s", out);
  cr_assert(strstr(out, "replayed " ) != NULL &&
                strstr(out, "-> 123456789") != NULL,
            "%s", out);
  cr_assert(strstr(out, "summary: 1 replayed") != NULL, "%s", out);
}
