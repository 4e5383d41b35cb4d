/* The pipeline end to end (issue 3): real RabbitMQ, Redis and MongoDB, the
 * real api and worker processes, and the channel simulator. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "core/pt_id.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "core/pt_task.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

static pt_stack_t stack;

static void fini(void) { pt_stack_fini(&stack); }

TestSuite(pipeline, .fini = fini, .timeout = 180);

/* ms since the epoch of an RFC 3339 time of our own format. */
static int64_t ms_of(const char *ts) {
  struct tm tm = {0};
  int ms = 0;
  cr_assert_not_null(ts);
  cr_assert_eq(sscanf(ts, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon,
                      &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
               7, "bad time %s", ts);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm) * 1000 + ms;
}

/* Submits a task for the sim channel (see pt_task_body) and waits, 30 s at
 * most, until it is final. */
Test(pipeline, success) {
  char id[24];
  bson_t doc;
  const char *otn = pt_unique("OK");
  pt_stack_start(&stack, 1, NULL);
  char *body = pt_task_body(otn, 1299, NULL, NULL);
  char *out = NULL;
  cr_assert_eq(pt_api_submit(&stack, body, NULL, &out), 202, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "PENDING");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 0);
  cr_assert_eq(pt_json_int(&doc, "amount", -1), 1299);
  snprintf(id, sizeof id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);
  free(body);

  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1);
  cr_assert_not_null(pt_json_str(&doc, "result.qr_code"));
  cr_assert_eq(pt_json_len(&doc, "history"), 1);
  cr_assert_str_eq(pt_json_str(&doc, "history.0.outcome"), "success");
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), 1);
  bson_destroy(&doc);
}

Test(pipeline, retry_then_success_with_linear_gaps) {
  char id[24];
  bson_t doc;
  const char *otn = pt_unique("RETRY");
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, otn, 500, "{\"fail_times\": 2}", NULL, id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 3);
  cr_assert_eq(pt_json_len(&doc, "history"), 3);
  cr_assert_str_eq(pt_json_str(&doc, "history.0.error.code"), "SYSTEM_ERROR");
  /* Attempt k+1 starts k seconds after attempt k ended. */
  int64_t gap1 = ms_of(pt_json_str(&doc, "history.1.started_at")) -
                 ms_of(pt_json_str(&doc, "history.0.ended_at"));
  int64_t gap2 = ms_of(pt_json_str(&doc, "history.2.started_at")) -
                 ms_of(pt_json_str(&doc, "history.1.ended_at"));
  /* Not before it was due (how late it ran is the machine's load, which
   * the tests do not judge). */
  cr_assert_geq(gap1, 950, "first gap %lld ms, want 1 s", (long long)gap1);
  cr_assert_geq(gap2, 1950, "second gap %lld ms, want 2 s", (long long)gap2);
  /* The two failed creates left nothing behind: one trade, created once. */
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_ok"), 1);
  cr_assert_eq(pt_sim_stat(&stack, otn, "creates_after_created"), 0);
  bson_destroy(&doc);
}

Test(pipeline, exhaustion_fails_to_dead_queue_and_mongodb) {
  char id[24], mid[40];
  bson_t doc, mdoc;
  const char *otn = pt_unique("EXHAUST");
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, otn, 700, "{\"fail_times\": 99}",
              "{\"need_retry\": true, \"retry_times\": 2}", id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 3);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "SYSTEM_ERROR");
  snprintf(mid, sizeof mid, "%s:3", id);
  cr_assert_eq(pt_queue_drain_count("paytask.dead", mid), 1,
               "the exhausted task is not in the dead queue");
  cr_assert(pt_mongo_task(id, 20, &mdoc), "not synced to MongoDB");
  cr_assert_str_eq(pt_json_str(&mdoc, "status"), "FAILED");
  cr_assert_eq(pt_json_len(&mdoc, "history"), 3);
  bson_destroy(&mdoc);
  bson_destroy(&doc);
}

Test(pipeline, need_retry_false_fails_after_one_attempt) {
  char id[24];
  bson_t doc;
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, pt_unique("NORETRY"), 100, "{\"fail_times\": 1}",
              "{\"need_retry\": false}", id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1);
  bson_destroy(&doc);
}

Test(pipeline, decline_fails_at_once) {
  char id[24];
  bson_t doc;
  const char *otn = pt_unique("DECLINE");
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, otn, 100, "{\"decline\": true}", NULL, id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "DECLINED");
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), 1);
  bson_destroy(&doc);
}

Test(pipeline, cancel_before_start) {
  char id[24], url[160], *out = NULL;
  bson_t doc;
  const char *otn = pt_unique("CANCEL");
  pt_stack_env(&stack, "PAYTASK_LOG_LEVEL", "debug"); /* delivery_skipped */
  pt_stack_start(&stack, 0, NULL); /* no worker yet: the task waits */
  char *body = pt_task_body(otn, 100, NULL, NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  snprintf(url, sizeof url, "%s/v1/tasks/%s/cancel", stack.api_url, id);
  cr_assert_eq(pt_http("POST", url, "dev-token-change-me", "", NULL, &out),
               200, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "CANCELLED");
  bson_destroy(&doc);
  free(out);
  cr_assert_eq(pt_http("POST", url, "dev-token-change-me", "", NULL, &out),
               409, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "task_not_cancellable");
  bson_destroy(&doc);
  free(out);
  /* A worker now takes the message and skips it: no trade is created. */
  pt_stack_add_worker(&stack);
  char task_id[40];
  snprintf(task_id, sizeof task_id, "task_id=%s ", id);
  const char *skipped[] = {"event=delivery_skipped", task_id, NULL};
  cr_assert(pt_stack_log_wait(&stack, "worker0.log", skipped, 30),
            "the worker never took and skipped the cancelled task (log: %s)",
            stack.logdir);
  pt_wait_final(&stack, id, 10, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "CANCELLED");
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), -1,
               "a cancelled task reached the channel");
  bson_destroy(&doc);
  snprintf(url, sizeof url, "%s/v1/tasks/%s/cancel", stack.api_url,
           "123456789");
  cr_assert_eq(pt_http("POST", url, "dev-token-change-me", "", NULL, NULL),
               404);
}

/* Waits until a worker has rebuilt the lost hash of task id (until then
 * the api knows no such task), then until the task is final: it must have
 * SUCCEEDED with its out_trade_no and amount. The final task into doc. */
static void wait_rebuilt_and_succeeded(const char *id, const char *otn,
                                       int64_t amount, bson_t *doc) {
  for (int i = 0; i < 300 && !pt_redis_has_task(id); i++)
    pt_test_sleep_ms(100);
  pt_wait_final(&stack, id, 30, doc);
  cr_assert_str_eq(pt_json_str(doc, "status"), "SUCCEEDED");
  cr_assert_str_eq(pt_json_str(doc, "out_trade_no"), otn);
  cr_assert_eq(pt_json_int(doc, "amount", -1), amount);
}

/* Redis lost a queued task's hash (no tombstone either): the worker asks
 * the start script without the spec, is told the hash is gone, and starts
 * again with the spec from the message, so the task still runs once and
 * its record is whole. */
Test(pipeline, a_task_whose_hash_redis_lost_still_runs) {
  char id[24];
  bson_t doc;
  const char *otn = pt_unique("LOST");
  pt_stack_start(&stack, 0, NULL); /* no worker yet: the task waits */
  char *body = pt_task_body(otn, 4321, NULL, NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  pt_redis_lose_task(id);
  cr_assert(!pt_redis_has_task(id));

  pt_stack_add_worker(&stack);
  wait_rebuilt_and_succeeded(id, otn, 4321, &doc);
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1);
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), 1);
  bson_destroy(&doc);
}

/* Redis lost the hash while the attempt was at the channel: the finish
 * finds nothing to record the outcome in. The delivery goes back to the
 * broker, the start rebuilds the hash from the message and the attempt
 * resumes (query first), so the task ends SUCCEEDED with the payer's
 * code instead of vanishing (the api answering 404 for a task it
 * accepted, and a trade created at the channel that nobody follows). */
Test(pipeline, a_task_whose_hash_redis_lost_while_it_ran_still_ends) {
  char id[24];
  bson_t doc;
  const char *otn = pt_unique("LOSTRUN");
  pt_stack_start(&stack, 1, NULL);
  char *body = pt_task_body(otn, 4322, "{\"latency_ms\": 1500}", NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  int running = 0;
  for (int i = 0; i < 100 && !running; i++) {
    char *out = NULL;
    cr_assert_eq(pt_api_get(&stack, id, 0, &out), 200, "%s", out);
    running = strstr(out, "\"RUNNING\"") != NULL;
    free(out);
    if (!running)
      pt_test_sleep_ms(20);
  }
  cr_assert(running, "the task never ran");
  pt_redis_lose_task(id);

  wait_rebuilt_and_succeeded(id, otn, 4322, &doc);
  cr_assert_not_null(pt_json_str(&doc, "result.qr_code"),
                     "the payer's code was lost");
  cr_assert_eq(pt_sim_stat(&stack, otn, "creates_after_created"), 0);
  bson_destroy(&doc);
}

/* Makes the broker refuse (nack) whatever is published to queue, in the
 * test's own virtual host. */
static void refuse(const char *vhost, const char *queue) {
  pt_rabbitmqctl("set_policy -p '%s' --apply-to queues refuse '^%s$' "
                 "'{\"max-length\": 0, \"overflow\": \"reject-publish\"}'",
                 vhost, queue);
}

/* Waits up to timeout_s until queue holds n ready messages; returns what
 * it holds. */
static long wait_depth(const char *queue, long n, int timeout_s) {
  long depth = pt_queue_depth(queue);
  for (int i = 0; i < timeout_s * 10 && depth != n; i++) {
    pt_test_sleep_ms(100);
    depth = pt_queue_depth(queue);
  }
  return depth;
}

/* The broker refuses the copy for the retry (its delay queue takes
 * nothing): the delivery goes back to the broker instead of staying
 * unacknowledged, the task RUNNING, until the connection ends. Delivered
 * again, the attempt resumes (query, then create) and succeeds. */
Test(pipeline, a_refused_retry_copy_gives_the_delivery_back) {
  char id[24];
  bson_t doc;
  const char *otn = pt_unique("REFUSED");
  refuse(pt_stack_vhost(&stack), "paytask.delay.1s");
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, otn, 600, "{\"fail_times\": 1}", NULL, id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1,
               "the retry ran, though its copy was refused");
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_ok"), 1);
  bson_destroy(&doc);
}

/* A message that is not a task, while the dead queue refuses it: it goes
 * back to the broker (and comes again) instead of staying unacknowledged;
 * once the dead queue takes messages again, it is there. */
Test(pipeline, a_refused_dead_letter_gives_the_delivery_back) {
  const char *vhost = pt_stack_vhost(&stack);
  refuse(vhost, "paytask.dead");
  pt_stack_start(&stack, 1, NULL);
  pt_amqp_publish_raw("paytask.work", "task", "not a task", 10, NULL);
  /* The worker took it once the work queue is empty. */
  cr_assert_eq(wait_depth("paytask.tasks", 0, 30), 0);
  pt_rabbitmqctl("clear_policy -p '%s' refuse", vhost);
  cr_assert_eq(wait_depth("paytask.dead", 1, 30), 1,
               "the message never reached the dead queue");
  cr_assert_eq(wait_depth("paytask.tasks", 0, 30), 0);
}

/* The same with the dead queue deleted: the copy is published mandatory,
 * so the broker returns it rather than confirm a message no queue took;
 * the delivery goes back, the worker's connection is made again (which
 * declares the queue again), and the message ends in the dead queue. */
Test(pipeline, a_dead_letter_no_queue_takes_is_not_lost) {
  pt_stack_vhost(&stack); /* the queue deleted is this test's own */
  pt_stack_start(&stack, 1, NULL);
  pt_rabbitmqctl("delete_queue --vhost '%s' paytask.dead", pt_amqp_vhost());
  pt_amqp_publish_raw("paytask.work", "task", "not a task", 10, NULL);
  cr_assert_eq(wait_depth("paytask.dead", 1, 30), 1,
               "the rejected message was lost");
  cr_assert_eq(wait_depth("paytask.tasks", 0, 30), 0);
}

/* The work queue deleted under a running worker (an operator's mistake,
 * or the node holding it lost): the broker tells its consumers only if
 * they asked for consumer_cancel_notify. Without it the worker stayed
 * connected, consuming nothing, while the api declared the queue again
 * and answered 202 for tasks no worker would take. */
Test(pipeline, a_worker_whose_queue_was_deleted_consumes_it_again) {
  char id[24];
  bson_t doc;
  pt_stack_vhost(&stack); /* the queue deleted is this test's own */
  pt_stack_start(&stack, 1, NULL);
  pt_rabbitmqctl("delete_queue --vhost '%s' paytask.tasks", pt_amqp_vhost());
  char otn[64], key[64];
  snprintf(otn, sizeof otn, "%s", pt_unique("REQUEUE"));
  snprintf(key, sizeof key, "%s", pt_unique("requeue"));
  char *body = pt_task_body(otn, 777, NULL, NULL);
  pt_submit_until_taken(&stack, body, key, id);
  free(body);
  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), 1);
  bson_destroy(&doc);
}

/* The message of a new pay task on the sim channel, as the api publishes
 * it, but with no hash in Redis (the worker rebuilds it when the task
 * starts); its id into id. Free with bson_free. */
static char *task_message(const char *otn, char id[24], size_t *len) {
  pt_task_t t;
  pt_input_error_t ie;
  pt_idgen_t ids;
  char *spec = pt_task_body(otn, 900, NULL, NULL);
  cr_assert_eq(pt_task_parse(spec, strlen(spec), PT_PARSE_SUBMIT, 0, &t, &ie),
               0, "%s", ie.message);
  free(spec);
  pt_idgen_init(&ids, PT_ID_MAX_NODE);
  cr_assert_eq(pt_idgen_next(&ids, &t.id), 0);
  pt_id_format(t.id, t.id_str);
  snprintf(id, 24, "%s", t.id_str);
  t.created_at_ms = pt_now_ms();
  char *json = pt_task_spec_json(&t, 1, len);
  pt_task_destroy(&t);
  return json;
}

/* A task not due yet that cannot be sent on to a delay level goes back to
 * the broker instead of running at once, and runs when it is due. Here
 * the publish breaks the worker's connection in the read that delivered
 * the task: its headers fill the broker's largest frame (131,072 bytes)
 * but for the 17 bytes of the content type that the worker's copy adds. */
Test(pipeline, an_early_task_that_cannot_be_sent_on_waits_until_due) {
  enum { FRAME = 131072, PAD = FRAME - 64 };
  static char pad[PAD];
  char id[24], otn[64];
  bson_t doc;
  snprintf(otn, sizeof otn, "%s", pt_unique("EARLY"));
  pt_stack_vhost(&stack); /* no other test's worker takes the message */
  pt_stack_start(&stack, 1, NULL);
  /* A first task: the worker is consuming. */
  pt_run_task(&stack, pt_unique("FIRST"), 100, NULL, NULL, id, &doc);
  bson_destroy(&doc);

  size_t len;
  char *body = task_message(otn, id, &len);
  int64_t due = pt_now_ms() + 6000;
  /* The content header frame: 8 bytes of framing, 12 of class, weight and
   * body size, 2 of property flags, the delivery mode (1) and the headers
   * table: 4 bytes of size, x-pt-due (9 + 1 + 8) and x-pad (6 + 1 + 4 +
   * PAD). That is FRAME - 8 bytes: the worker's copy needs FRAME + 9. */
  memset(pad, 'p', sizeof pad);
  amqp_table_entry_t e[2] = {
      {.key = amqp_cstring_bytes("x-pt-due"),
       .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = due}},
      {.key = amqp_cstring_bytes("x-pad"),
       .value = {.kind = AMQP_FIELD_KIND_UTF8,
                 .value.bytes = {sizeof pad, pad}}}};
  amqp_table_t headers = {2, e};
  pt_amqp_publish_raw("paytask.work", "task", body, len, &headers);
  bson_free(body);

  for (int i = 0; i < 300 && !pt_redis_has_task(id); i++)
    pt_test_sleep_ms(100);
  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  int64_t started = ms_of(pt_json_str(&doc, "history.0.started_at"));
  cr_assert_geq(started, due, "the task ran %lld ms before it was due",
                (long long)(due - started));
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), 1);
  bson_destroy(&doc);
}

Test(pipeline, idempotency_key) {
  char *out1 = NULL, *out2 = NULL, *out3 = NULL;
  bson_t d1, d2, d3;
  const char *key = pt_unique("idem");
  char keybuf[96];
  snprintf(keybuf, sizeof keybuf, "%s", key);
  pt_stack_start(&stack, 1, NULL);
  char *body = pt_task_body(pt_unique("IDEM"), 100, NULL, NULL);
  cr_assert_eq(pt_api_submit(&stack, body, keybuf, &out1), 202, "%s", out1);
  cr_assert_eq(pt_api_submit(&stack, body, keybuf, &out2), 200, "%s", out2);
  pt_json(out1, &d1);
  pt_json(out2, &d2);
  cr_assert_str_eq(pt_json_str(&d1, "task_id"), pt_json_str(&d2, "task_id"),
                   "the same key and body must answer the same task");
  char *other = pt_task_body(pt_unique("IDEM2"), 100, NULL, NULL);
  cr_assert_eq(pt_api_submit(&stack, other, keybuf, &out3), 409, "%s", out3);
  pt_json(out3, &d3);
  cr_assert_str_eq(pt_json_str(&d3, "error.code"), "idempotency_conflict");
  bson_destroy(&d1);
  bson_destroy(&d2);
  bson_destroy(&d3);
  free(out1);
  free(out2);
  free(out3);
  free(body);
  free(other);
}

Test(pipeline, get_after_eviction_comes_from_mongodb_unchanged) {
  char id[24], *before = NULL, *after = NULL;
  bson_t doc;
  pt_stack_env(&stack, "PAYTASK_SYNC_EVICT_GRACE_S", "1");
  pt_stack_start(&stack, 1, NULL);
  char *body = pt_task_body(pt_unique("EVICT"), 4200, "{\"fail_times\": 1}",
                            NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  pt_wait_final(&stack, id, 30, &doc);
  bson_destroy(&doc);
  cr_assert_eq(pt_api_get(&stack, id, 0, &before), 200);
  /* Wait for the sync and the eviction. */
  for (int i = 0; i < 100 && pt_redis_has_task(id); i++)
    usleep(200 * 1000);
  cr_assert(!pt_redis_has_task(id), "the task was not evicted from Redis");
  cr_assert_eq(pt_api_get(&stack, id, 0, &after), 200, "%s", after);
  cr_assert_str_eq(after, before, "the answer changed after eviction");
  free(before);
  free(after);
}

/* Cancelling a final task is refused with the same error whether Redis
 * still holds it or it was synced and evicted (the evicted one was answered
 * with the task itself). */
Test(pipeline, cancel_of_a_final_task_is_refused_before_and_after_eviction) {
  char id[24], url[160], *before = NULL, *after = NULL;
  bson_t doc;
  pt_stack_env(&stack, "PAYTASK_SYNC_EVICT_GRACE_S", "1");
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, pt_unique("CANCELEVICT"), 100, NULL, NULL, id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  snprintf(url, sizeof url, "%s/v1/tasks/%s/cancel", stack.api_url, id);
  cr_assert_eq(pt_http("POST", url, PT_TEST_TOKEN, "", NULL, &before), 409,
               "%s", before);
  for (int i = 0; i < 100 && pt_redis_has_task(id); i++)
    pt_test_sleep_ms(200);
  cr_assert(!pt_redis_has_task(id), "the task was not evicted from Redis");
  cr_assert_eq(pt_http("POST", url, PT_TEST_TOKEN, "", NULL, &after), 409,
               "%s", after);
  pt_json(after, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "task_not_cancellable",
                   "%s", after);
  cr_assert_null(pt_json_str(&doc, "task_id"), "%s", after);
  bson_destroy(&doc);
  cr_assert_str_eq(after, before, "the answer changed after eviction");
  free(before);
  free(after);
}

Test(pipeline, wait_holds_until_final_and_unknown_id_is_404) {
  char id[24], *out = NULL;
  bson_t doc;
  pt_stack_env(&stack, "PAYTASK_WORKER_ATTEMPT_TIMEOUT_MS", "3000");
  pt_stack_start(&stack, 1, NULL);
  char *body = pt_task_body(pt_unique("WAIT"), 100, "{\"latency_ms\": 1500}",
                            NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  cr_assert_eq(pt_api_get(&stack, id, 20, &out), 200);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED",
                   "?wait returned before the task was final: %s", out);
  bson_destroy(&doc);
  free(out);
  /* A task that never finishes: ?wait=1 answers with its current state. */
  body = pt_task_body(pt_unique("HANG"), 100, "{\"timeout\": true}",
                      "{\"need_retry\": false}");
  pt_submit_ok(&stack, body, id);
  free(body);
  cr_assert_eq(pt_api_get(&stack, id, 1, &out), 200);
  pt_json(out, &doc);
  const char *st = pt_json_str(&doc, "status");
  cr_assert(strcmp(st, "PENDING") == 0 || strcmp(st, "RUNNING") == 0, "%s", st);
  bson_destroy(&doc);
  free(out);
  cr_assert_eq(pt_api_get(&stack, "987654321", 0, &out), 404);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "task_not_found");
  bson_destroy(&doc);
  free(out);
  cr_assert_eq(pt_api_get(&stack, "not-a-number", 0, NULL), 404);
}

/* POST /v1/tasks?wait=N: one request from submit to the final state (200),
 * or 202 with the state at the end of the wait; a bad wait changes
 * nothing. */
Test(pipeline, submit_with_wait_answers_final_or_accepted) {
  char *out = NULL, key[96];
  bson_t doc;
  pt_stack_env(&stack, "PAYTASK_WORKER_ATTEMPT_TIMEOUT_MS", "6000");
  pt_stack_start(&stack, 1, NULL);

  /* Final within the wait: 200 with the final task. */
  const char *otn = pt_unique("SUBWAIT");
  char *body = pt_task_body(otn, 700, "{\"latency_ms\": 500}", NULL);
  cr_assert_eq(pt_api_submit_query(&stack, body, NULL, "wait=20", &out), 200,
               "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED", "%s", out);
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1);
  cr_assert_not_null(pt_json_str(&doc, "result.qr_code"));
  char id[24];
  snprintf(id, sizeof id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);
  free(body);
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), 1);
  cr_assert_eq(pt_api_get(&stack, id, 0, &out), 200);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  free(out);

  /* Not final when the wait ends: 202 with the state then, and the task
   * goes on (here to FAILED at the attempt timeout). */
  snprintf(key, sizeof key, "%s", pt_unique("subhang"));
  body = pt_task_body(pt_unique("SUBHANG"), 100, "{\"timeout\": true}",
                      "{\"need_retry\": false}");
  cr_assert_eq(pt_api_submit_query(&stack, body, key, "wait=1", &out), 202,
               "%s", out);
  pt_json(out, &doc);
  const char *st = pt_json_str(&doc, "status");
  cr_assert(strcmp(st, "PENDING") == 0 || strcmp(st, "RUNNING") == 0, "%s", st);
  snprintf(id, sizeof id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);
  /* The same key and body again, waiting, while the attempt still runs:
   * 202 too, since 200 means final. */
  cr_assert_eq(pt_api_submit_query(&stack, body, key, "wait=1", &out), 202,
               "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "task_id"), id);
  st = pt_json_str(&doc, "status");
  cr_assert(strcmp(st, "PENDING") == 0 || strcmp(st, "RUNNING") == 0, "%s",
            out);
  bson_destroy(&doc);
  free(out);
  free(body);
  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  bson_destroy(&doc);

  /* A bad wait is refused before anything is recorded: the key it carried
   * is still free for another body. */
  snprintf(key, sizeof key, "%s", pt_unique("subwait"));
  body = pt_task_body(pt_unique("SUBBAD"), 100, NULL, NULL);
  static const char *const bad[] = {"wait=abc", "wait=31", "wait"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cr_assert_eq(pt_api_submit_query(&stack, body, key, bad[i], &out), 400,
                 "%s: %s", bad[i], out);
    pt_json(out, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "error.code"), "invalid_wait");
    bson_destroy(&doc);
    free(out);
  }
  free(body);
  body = pt_task_body(pt_unique("SUBGOOD"), 100, NULL, NULL);
  cr_assert_eq(pt_api_submit_query(&stack, body, key, "wait=20", &out), 200,
               "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED", "%s", out);
  snprintf(id, sizeof id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);
  /* The same key and body again, waiting: the original task, final. */
  cr_assert_eq(pt_api_submit_query(&stack, body, key, "wait=5", &out), 200,
               "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "task_id"), id);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  free(out);
  free(body);

  /* The CLI: paytask submit --wait prints the final task. */
  char cmd[512], line[4096];
  int succeeded = 0;
  snprintf(cmd, sizeof cmd,
           "PAYTASK_CONFIG=/dev/null %s submit --api %s --token %s "
           "--out-trade-no %s --amount 100 --subject cli --wait 20 2>&1",
           getenv("PAYTASK_BIN"), stack.api_url, PT_TEST_TOKEN,
           pt_unique("SUBCLI"));
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  while (fgets(line, sizeof line, p) != NULL)
    succeeded += strstr(line, "\"SUCCEEDED\"") != NULL;
  cr_assert_eq(pclose(p), 0, "paytask submit --wait failed");
  cr_assert_eq(succeeded, 1, "paytask submit --wait did not print the final task");
}

/* The command-line tools read --config FILE, and take from its api.tokens
 * the first token with the scopes the command needs: a read-only token
 * listed first is not sent with a submit (it was, whole with its
 * ":read", and every submit and get was refused 401). */
Test(pipeline, the_cli_takes_config_and_a_token_with_the_scope_it_needs) {
  /* Both the shop's: a token reads only its own client's tasks. */
  static const char tokens[] = "look:read:shop,send:submit+read:shop";
  char conf[64], args[512], out[8192], id[24] = "";
  pt_stack_env(&stack, "PAYTASK_API_TOKENS", tokens);
  pt_stack_start(&stack, 1, NULL);
  snprintf(conf, sizeof conf, "/tmp/%s.conf", pt_unique("cliconf"));
  FILE *f = fopen(conf, "w");
  cr_assert_not_null(f);
  fprintf(f, "api.listen = %s\napi.tokens = %s\n",
          stack.api_url + strlen("http://"), tokens);
  fclose(f);

  snprintf(args, sizeof args,
           "submit --config %s --out-trade-no %s --amount 100 --subject cli "
           "--wait 20", conf, pt_unique("CLICONF"));
  int st = pt_test_paytask("", 60, args, out, sizeof out);
  cr_assert_eq(st, 0, "paytask submit --config: %d: %s", st, out);
  /* The output holds stderr too: libmongoc, initialised in every
   * process, may warn there first ("Falling back to malloc for
   * counters" when /dev/shm refuses it). The task is the JSON line. */
  const char *json = out[0] == '{' ? out : strstr(out, "\n{");
  cr_assert_not_null(json, "no JSON in: %s", out);
  bson_t doc;
  pt_json(json + (json[0] == '\n'), &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED", "%s", out);
  snprintf(id, sizeof id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);

  snprintf(args, sizeof args, "get %s --config %s", id, conf);
  st = pt_test_paytask("", 60, args, out, sizeof out);
  cr_assert_eq(st, 0, "paytask get --config: %d: %s", st, out);
  cr_assert_not_null(strstr(out, id), "%s", out);

  /* No token of the file may replay: said, exit 2, nothing sent. */
  snprintf(args, sizeof args, "replay --config %s --id %s", conf, id);
  st = pt_test_paytask("", 60, args, out, sizeof out);
  cr_assert_eq(st, 2, "paytask replay: %d: %s", st, out);
  cr_assert_not_null(strstr(out, "admin scope"), "%s", out);
  unlink(conf);
}

/* Leaves in Redis what a submit with Idempotency-Key key leaves when its
 * api dies before it publishes (or its client got a 503 whose Redis reply
 * was lost): the PENDING task and the key, and no message. */
static void plant_unpublished_submit(const char *body, const char *key,
                                     char id[24]) {
  uv_loop_t loop;
  pt_error_t err;
  pt_task_t t;
  pt_input_error_t ie;
  pt_idgen_t g;
  pt_test_verdict_t r = {0};
  unsigned char md[SHA256_DIGEST_LENGTH];
  char val[100];
  size_t slen;
  uv_loop_init(&loop);
  pt_redis_t *redis = pt_redis_connect(
      &loop, pt_test_uri("PAYTASK_REDIS_URI", "Redis"), NULL, NULL, &err);
  cr_assert_not_null(redis, "Redis: %s", err.message);
  pt_store_load_scripts(pt_redis_ctx(redis));
  cr_assert_eq(pt_task_parse(body, strlen(body), PT_PARSE_SUBMIT, 0, &t, &ie),
               0);
  pt_idgen_init(&g, PT_ID_MAX_NODE); /* not a node any api leases here */
  cr_assert_eq(pt_idgen_next(&g, &t.id), 0);
  pt_id_format(t.id, t.id_str);
  t.created_at_ms = pt_id_time_ms(t.id);
  snprintf(id, 24, "%s", t.id_str);
  SHA256((const unsigned char *)body, strlen(body), md);
  for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
    snprintf(val + 2 * i, 3, "%02x", md[i]);
  snprintf(val + 64, sizeof val - 64, ":%s", id);
  char *spec = pt_task_spec_json(&t, 0, &slen);
  cr_assert_eq(pt_store_submit(pt_redis_ctx(redis), id, spec, slen,
                               t.created_at_ms, key, val, 3600,
                               pt_test_on_verdict, &r),
               0);
  pt_test_wait_verdict(&loop, &r);
  cr_assert_eq(r.v, PT_V_OK);
  bson_free(spec);
  pt_task_destroy(&t);
  pt_redis_destroy(redis);
  pt_test_run_loop(&loop, 10000, "Redis");
  pt_test_close_loop(&loop);
}

/* The client retries with the same key and body, as it should after no
 * answer or a 503: the task is published again and runs, once. Without
 * that it stayed PENDING for ever, and every retry was told PENDING. */
Test(pipeline, a_retried_submit_publishes_a_task_that_never_reached_the_broker) {
  char otn[64], key[96], id[24], *out = NULL;
  bson_t doc;
  pt_stack_start(&stack, 1, NULL);
  snprintf(otn, sizeof otn, "%s", pt_unique("UNQUEUED"));
  snprintf(key, sizeof key, "unqueued-%s", otn);
  char *body = pt_task_body(otn, 100, NULL, NULL);
  plant_unpublished_submit(body, key, id);
  /* Answered as any repeat is (200 with the task), once the broker has
   * confirmed the message. */
  cr_assert_eq(pt_api_submit(&stack, body, key, &out), 200, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "task_id"), id,
                   "the retry made a new task");
  bson_destroy(&doc);
  free(out);
  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  /* A second retry, the task final: answered with it, nothing more runs. */
  cr_assert_eq(pt_api_submit(&stack, body, key, &out), 200, "%s", out);
  free(out);
  free(body);
  cr_assert_eq(pt_sim_stat(&stack, otn, "create_calls"), 1);
}
