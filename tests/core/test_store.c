/* The task state scripts against a real Redis: every verdict of start,
 * finish, submit and cancel (issue 3: duplicates, crash redeliveries, the
 * redelivery limit, stale finishes). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_id.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

static uv_loop_t loop;
static pt_redis_t *redis;
static char id[32];

static void setup(void) {
  pt_error_t err;
  uv_loop_init(&loop);
  redis = pt_redis_connect(&loop, pt_test_uri("PAYTASK_REDIS_URI", "Redis"),
                           NULL, NULL, &err);
  cr_assert_not_null(redis, "Redis: %s", err.message);
  pt_store_load_scripts(pt_redis_ctx(redis));
  /* A fresh id per test: time-based, never issued by an api. */
  snprintf(id, sizeof id, "9%012lld%d", (long long)(pt_now_ms() % 1000000000000LL),
           (int)(getpid() % 10));
}

static void teardown(void) {
  redisAsyncCommand(pt_redis_ctx(redis), NULL, NULL, "DEL %s%s %s%s",
                    PT_KEY_TASK, id, PT_KEY_FIN, id);
  pt_redis_destroy(redis);
  pt_test_run_loop(&loop, 10000, "Redis");
  pt_test_close_loop(&loop);
}

TestSuite(store, .init = setup, .fini = teardown, .timeout = 30);


/* The start script as worker `owner` (NULL: none) calls it at now_ms;
 * the verdict's detail into detail (MAY be NULL). */
static pt_verdict_t start_as(int attempt, int redelivered, const char *spec,
                             const pt_store_owner_t *owner, int64_t now_ms,
                             char *detail, size_t detail_len) {
  pt_test_verdict_t r = {0};
  cr_assert_eq(pt_store_start(pt_redis_ctx(redis), id, attempt, redelivered,
                              now_ms, 2, owner, spec, spec ? strlen(spec) : 0,
                              pt_test_on_verdict, &r),
               0);
  pt_test_wait_verdict(&loop, &r);
  if (detail != NULL)
    snprintf(detail, detail_len, "%s", r.detail);
  return r.v;
}

static pt_verdict_t start_spec(int attempt, int redelivered,
                               const char *spec) {
  return start_as(attempt, redelivered, spec, NULL, pt_now_ms(), NULL, 0);
}

static pt_verdict_t start(int attempt, int redelivered) {
  return start_spec(attempt, redelivered, "{\"task_id\":\"1\"}");
}

static pt_verdict_t finish(int attempt, const char *status) {
  pt_test_verdict_t r = {0};
  char *h = pt_store_history_json(attempt, 1, 2, "x", NULL, NULL);
  pt_store_finish_t f = {.attempt = attempt,
                         .status = status,
                         .history_json = h,
                         .now_ms = pt_now_ms(),
                         .next_attempt_at_ms = pt_now_ms() + 1000};
  cr_assert_eq(pt_store_finish(pt_redis_ctx(redis), id, &f, pt_test_on_verdict, &r), 0);
  pt_test_wait_verdict(&loop, &r);
  bson_free(h);
  return r.v;
}

/* Waits for the verdict of a store call that rc says was sent; the
 * verdict's detail stays in *r. */
static pt_verdict_t waited(int rc, pt_test_verdict_t *r) {
  cr_assert_eq(rc, 0, "the store call was not sent");
  pt_test_wait_verdict(&loop, r);
  return r->v;
}

/* Cancels the task as client (NULL: any), refusing the types in refused
 * (NULL: none). */
static pt_verdict_t cancel_as(const char *client, const char *refused,
                              pt_test_verdict_t *r) {
  memset(r, 0, sizeof *r);
  return waited(pt_store_cancel(pt_redis_ctx(redis), id, pt_now_ms(), refused,
                                client, pt_test_on_verdict, r),
                r);
}

static pt_verdict_t cancel(const char *refused, pt_test_verdict_t *r) {
  return cancel_as(NULL, refused, r);
}

/* Releases attempt 1 as the worker whose run token is run. */
static pt_verdict_t release(const char *run, pt_test_verdict_t *r) {
  memset(r, 0, sizeof *r);
  return waited(pt_store_release(pt_redis_ctx(redis), id, 1, run,
                                 pt_test_on_verdict, r),
                r);
}

/* Records the task PENDING with this spec, with Idempotency-Key idem
 * (NULL: none). */
static void submit_spec(const char *spec, const char *idem) {
  pt_test_verdict_t r = {0};
  cr_assert_eq(pt_store_submit(pt_redis_ctx(redis), id, spec, strlen(spec),
                               pt_now_ms(), idem, "v", 60, pt_test_on_verdict,
                               &r),
               0);
  pt_test_wait_verdict(&loop, &r);
  cr_assert_eq(r.v, PT_V_OK);
}

static void submit_keyed(const char *idem) {
  submit_spec("{\"task_id\":\"1\"}", idem);
}

static void submit(void) { submit_keyed(NULL); }

Test(store, an_attempt_runs_once_and_duplicates_are_skipped) {
  submit();
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(start(1, 0), PT_V_SKIP_DUP, "a second copy must not run");
  cr_assert_eq(finish(1, "RETRY_WAIT"), PT_V_OK);
  cr_assert_eq(start(1, 1), PT_V_SKIP_DONE, "a finished attempt never reruns");
  cr_assert_eq(start(2, 0), PT_V_RUN);
  cr_assert_eq(finish(2, "SUCCEEDED"), PT_V_OK);
  cr_assert_eq(start(3, 0), PT_V_SKIP_FINAL);
  cr_assert_eq(finish(2, "FAILED"), PT_V_STALE, "final is final");
}

Test(store, crash_redeliveries_resume_then_go_dead) {
  submit();
  cr_assert_eq(start(1, 0), PT_V_RUN);
  /* The worker died: the broker redelivers with the flag set. */
  cr_assert_eq(start(1, 1), PT_V_RESUME);
  cr_assert_eq(start(1, 1), PT_V_RESUME);
  cr_assert_eq(start(1, 1), PT_V_DEAD, "max_crashes is 2 here");
  cr_assert_eq(finish(1, "FAILED"), PT_V_OK);
  cr_assert_eq(start(1, 1), PT_V_SKIP_FINAL);
}

/* Two workers' claims: a heartbeat (pt:worker:<name>) whose run token is
 * `run` while alive is 1; deleted otherwise. */
static char worker_a[48], worker_b[48];

static void heartbeat(const char *name, const char *run, int alive) {
  redisContext *c = pt_test_redis();
  redisReply *r = alive ? redisCommand(c, "HSET pt:worker:%s run %s", name, run)
                        : redisCommand(c, "DEL pt:worker:%s", name);
  cr_assert(r != NULL && r->type != REDIS_REPLY_ERROR);
  freeReplyObject(r);
  redisFree(c);
}

static void claims_fini(void) {
  heartbeat(worker_a, "", 0);
  heartbeat(worker_b, "", 0);
}

static pt_store_owner_t owner(const char *name, const char *run) {
  return (pt_store_owner_t){.worker = name, .run = run, .hold_ms = 60000};
}

/* Runs after the suite's setup (Criterion runs both), so id is set. */
static void claims_init(void) {
  snprintf(worker_a, sizeof worker_a, "test-%s-a", id);
  snprintf(worker_b, sizeof worker_b, "test-%s-b", id);
}

static long crashes(void) {
  redisContext *c = pt_test_redis();
  redisReply *r = redisCommand(c, "HGET %s%s crashes", PT_KEY_TASK, id);
  long n = r != NULL && r->type == REDIS_REPLY_STRING ? atol(r->str) : 0;
  freeReplyObject(r);
  redisFree(c);
  return n;
}

Test(store, a_redelivered_attempt_waits_while_its_worker_lives,
     .init = claims_init, .fini = claims_fini) {
  pt_store_owner_t a = owner(worker_a, "run-a"), b = owner(worker_b, "run-b");
  char detail[128];
  int64_t now = pt_now_ms();
  submit();
  heartbeat(worker_a, "run-a", 1);
  cr_assert_eq(start_as(1, 0, NULL, &a, now, NULL, 0), PT_V_RUN);
  /* The broker closed A's connection and redelivered: A still runs it. */
  cr_assert_eq(start_as(1, 1, NULL, &b, now + 500, detail, sizeof detail),
               PT_V_BUSY, "an attempt whose worker lives must not run twice");
  cr_assert_str_eq(detail, worker_a, "busy names the worker running it");
  cr_assert_eq(crashes(), 0, "a lost connection is not a crash");
  cr_assert_eq(start_as(1, 0, NULL, &b, now + 500, NULL, 0), PT_V_SKIP_DUP);
  /* A's process was replaced (same name, another run token): A is dead. */
  heartbeat(worker_a, "run-a2", 1);
  cr_assert_eq(start_as(1, 1, NULL, &b, now + 1000, NULL, 0), PT_V_RESUME);
  cr_assert_eq(crashes(), 1);
  /* B holds it now; B's heartbeat lapsed: A resumes it. */
  cr_assert_eq(start_as(1, 1, NULL, &a, now + 1500, NULL, 0), PT_V_RESUME,
               "a worker without a heartbeat is dead");
  /* A finished it: the copy still waiting is skipped. */
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_OK);
  cr_assert_eq(start_as(1, 1, NULL, &b, now + 2000, NULL, 0),
               PT_V_SKIP_FINAL);
}

Test(store, a_claim_holds_no_longer_than_its_hold, .init = claims_init,
     .fini = claims_fini) {
  pt_store_owner_t a = owner(worker_a, "run-a"), b = owner(worker_b, "run-b");
  int64_t now = pt_now_ms();
  submit();
  heartbeat(worker_a, "run-a", 1);
  cr_assert_eq(start_as(1, 0, NULL, &a, now, NULL, 0), PT_V_RUN);
  cr_assert_eq(start_as(1, 1, NULL, &b, now + 59999, NULL, 0), PT_V_BUSY);
  cr_assert_eq(start_as(1, 1, NULL, &b, now + 60000, NULL, 0), PT_V_RESUME,
               "past its hold a claim no longer holds the copy back");
}

Test(store, a_released_claim_lets_the_copy_resume_at_once,
     .init = claims_init, .fini = claims_fini) {
  pt_store_owner_t a = owner(worker_a, "run-a"), b = owner(worker_b, "run-b");
  pt_test_verdict_t r;
  int64_t now = pt_now_ms();
  submit();
  heartbeat(worker_a, "run-a", 1);
  cr_assert_eq(start_as(1, 0, NULL, &a, now, NULL, 0), PT_V_RUN);
  cr_assert_eq(release("run-b", &r), PT_V_STALE,
               "only the claim's own worker releases it");
  cr_assert_eq(start_as(1, 1, NULL, &b, now + 100, NULL, 0), PT_V_BUSY);
  cr_assert_eq(release("run-a", &r), PT_V_OK);
  cr_assert_eq(start_as(1, 1, NULL, &b, now + 200, NULL, 0), PT_V_RESUME);
  cr_assert_eq(crashes(), 0, "a release was counted as a worker crash");
  /* Each release says how many there were: the worker's pause grows. */
  cr_assert_str_eq(r.detail, "1");
  cr_assert_eq(release("run-b", &r), PT_V_OK);
  cr_assert_str_eq(r.detail, "2");
}

/* Worker A runs attempt 1 and publishes the copy for attempt 2; the
 * confirm is lost, A gives the attempt back, and worker B resumes it from
 * the redelivered original. The copy, routed after all, reaches worker C:
 * it must wait for B, not run attempt 2 (query, create) beside it. */
Test(store, a_later_attempt_waits_while_an_earlier_one_runs,
     .init = claims_init, .fini = claims_fini) {
  pt_store_owner_t b = owner(worker_b, "run-b"), c = owner(worker_a, "run-c");
  int64_t now = pt_now_ms();
  submit();
  heartbeat(worker_b, "run-b", 1);
  cr_assert_eq(start_as(1, 1, NULL, &b, now, NULL, 0), PT_V_RUN);
  cr_assert_eq(start_as(2, 0, NULL, &c, now + 100, NULL, 0), PT_V_BUSY,
               "attempt 2 ran while attempt 1 still ran");
  cr_assert_eq(finish(1, "RETRY_WAIT"), PT_V_OK, "attempt 1 was displaced");
  cr_assert_eq(start_as(2, 0, NULL, &c, now + 200, NULL, 0), PT_V_RUN);
  cr_assert_eq(crashes(), 0);
}

/* The same copy when the earlier attempt's worker died: resumed (query
 * before create) and counted as that worker's crash, not run afresh. */
Test(store, a_later_attempt_resumes_one_whose_worker_died,
     .init = claims_init, .fini = claims_fini) {
  pt_store_owner_t b = owner(worker_b, "run-b"), c = owner(worker_a, "run-c");
  int64_t now = pt_now_ms();
  submit();
  cr_assert_eq(start_as(1, 0, NULL, &b, now, NULL, 0), PT_V_RUN);
  /* No heartbeat for worker B: it is gone. */
  cr_assert_eq(start_as(2, 0, NULL, &c, now + 100, NULL, 0), PT_V_RESUME);
  cr_assert_eq(crashes(), 1);
}

/* Past the crash limit, only the running attempt's own copy goes to the
 * dead queue: a later attempt's copy (whose FAILED finish could not apply
 * to the running attempt) resumes instead. */
Test(store, a_later_attempt_past_the_crash_limit_resumes,
     .init = claims_init, .fini = claims_fini) {
  submit();
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(start(1, 1), PT_V_RESUME);
  cr_assert_eq(start(1, 1), PT_V_RESUME);
  cr_assert_eq(crashes(), 2, "max_crashes is 2 here");
  cr_assert_eq(start(2, 0), PT_V_RESUME, "a later copy went to the dead "
               "queue for an attempt it could not finish");
  cr_assert_eq(finish(2, "SUCCEEDED"), PT_V_OK);
  cr_assert_eq(start(1, 1), PT_V_SKIP_FINAL);
}

Test(store, cancel_only_before_running) {
  pt_test_verdict_t r;
  submit();
  cr_assert_eq(cancel(NULL, &r), PT_V_OK);
  cr_assert_eq(start(1, 0), PT_V_SKIP_FINAL, "a cancelled task never runs");
  cr_assert_eq(cancel(NULL, &r), PT_V_CONFLICT);
  cr_assert_str_eq(r.detail, "CANCELLED");
}

/* A trade's query, close or notify task is paytask's own: a client that
 * cancelled one would leave its trade unqueried, unclosed or its merchant
 * never told. */
Test(store, cancel_refuses_the_types_it_is_told_to) {
  pt_test_verdict_t r = {0};
  submit_spec("{\"task_id\":\"1\",\"type\":\"notify\"}", NULL);
  cr_assert_eq(cancel(",query,close,notify,", &r), PT_V_CONFLICT,
               "a notify task was cancelled");
  cr_assert_str_eq(r.detail, "internal");
  cr_assert_eq(start(1, 0), PT_V_RUN, "the refused cancel changed the task");
  cr_assert_eq(finish(1, "RETRY_WAIT"), PT_V_OK);
  cr_assert_eq(cancel(",query,close,", &r), PT_V_OK,
               "a type not named was refused");
  cr_assert_eq(cancel(",query,close,notify,", &r), PT_V_CONFLICT);
  cr_assert_str_eq(r.detail, "CANCELLED", "a final task's cancel: %s",
                   r.detail);
}

/* Another client cannot cancel a task, nor learn its status from the
 * refusal. */
Test(store, cancel_finds_only_the_clients_own_tasks) {
  pt_test_verdict_t r = {0};
  submit_spec("{\"task_id\":\"1\",\"client\":\"shop\"}", NULL);
  cr_assert_eq(cancel_as("default", NULL, &r), PT_V_NOTFOUND,
               "another client cancelled the task");
  cr_assert_eq(cancel_as("shop", NULL, &r), PT_V_OK);
  cr_assert_eq(cancel_as("other", NULL, &r), PT_V_NOTFOUND,
               "another client learnt the task's status");
  cr_assert_eq(cancel_as("shop", NULL, &r), PT_V_CONFLICT);
  cr_assert_str_eq(r.detail, "CANCELLED");
}

Test(store, a_task_that_names_no_client_is_the_default_clients) {
  pt_test_verdict_t r = {0};
  submit(); /* its spec names no client */
  cr_assert_eq(cancel_as("shop", NULL, &r), PT_V_NOTFOUND);
  cr_assert_eq(cancel_as("default", NULL, &r), PT_V_OK);
}

static pt_verdict_t abandon(const char *idem) {
  pt_test_verdict_t r = {0};
  return waited(pt_store_abandon(pt_redis_ctx(redis), id, idem, pt_now_ms(),
                                 "broker_unavailable", "not queued",
                                 pt_test_on_verdict, &r),
                &r);
}

/* Whether Redis holds the Idempotency-Key (it expires in 60 s). */
static int idem_exists(const char *idem) {
  char key[128];
  snprintf(key, sizeof key, "%s%s", PT_KEY_IDEM, idem);
  return pt_redis_has_key(key);
}

Test(store, abandon_withdraws_a_task_no_worker_took_and_frees_its_key) {
  char idem[64];
  snprintf(idem, sizeof idem, "abandon-%s", id);
  /* The confirm failed and no worker has the task: withdrawn, key freed
   * for the client's retry. */
  submit_keyed(idem);
  cr_assert_eq(abandon(idem), PT_V_OK);
  cr_assert(!idem_exists(idem), "the key of a withdrawn task was kept");
  cr_assert_eq(start(1, 0), PT_V_SKIP_FINAL, "a withdrawn task never runs");
}

Test(store, abandon_leaves_a_task_a_worker_took_and_its_key) {
  char idem[64];
  snprintf(idem, sizeof idem, "abandon-%s", id);
  /* The confirm was lost, but the broker had the task and a worker took
   * it: it runs, and its key stays, so that a retry finds it rather than
   * submitting it again. */
  submit_keyed(idem);
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(abandon(idem), PT_V_CONFLICT);
  cr_assert(idem_exists(idem), "abandon freed the key of a running task");
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_OK, "the running task was changed");
}

/* The first attempt failed and waits for its retry, then the api's
 * confirm is lost: the task ran, so a withdrawal would let the client's
 * retry submit (and create at the channel) a second time. */
Test(store, abandon_leaves_a_task_waiting_for_its_retry) {
  char idem[64];
  snprintf(idem, sizeof idem, "abandon-%s", id);
  submit_keyed(idem);
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(finish(1, "RETRY_WAIT"), PT_V_OK);
  cr_assert_eq(abandon(idem), PT_V_CONFLICT, "a task that ran was withdrawn");
  cr_assert(idem_exists(idem), "abandon freed the key of a task that ran");
  cr_assert_eq(start(2, 0), PT_V_RUN, "its retry no longer runs");
}

/* A worker took it and gave it back at its drain (PENDING again, attempt
 * 0, interrupted): it may have reached the channel. */
Test(store, abandon_leaves_a_task_a_draining_worker_gave_back) {
  char idem[64];
  pt_test_verdict_t r = {0};
  snprintf(idem, sizeof idem, "abandon-%s", id);
  submit_keyed(idem);
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(waited(pt_store_interrupt(pt_redis_ctx(redis), id, 1,
                                         pt_now_ms(), pt_test_on_verdict, &r),
                      &r),
               PT_V_OK);
  cr_assert_eq(abandon(idem), PT_V_CONFLICT,
               "a task a worker gave back was withdrawn");
  cr_assert(idem_exists(idem));
  cr_assert_eq(start(1, 1), PT_V_RESUME);
}

/* A retry with the same key published the task again and was confirmed
 * (and answered 200) while the first submit's confirm was still out;
 * that confirm then fails. */
Test(store, abandon_leaves_a_task_a_retry_queued) {
  char idem[64];
  pt_test_verdict_t r = {0};
  snprintf(idem, sizeof idem, "abandon-%s", id);
  submit_keyed(idem);
  cr_assert_eq(waited(pt_store_mark_queued(pt_redis_ctx(redis), id,
                                           pt_test_on_verdict, &r),
                      &r),
               PT_V_OK);
  cr_assert_str_eq(r.detail, "PENDING");
  cr_assert_eq(abandon(idem), PT_V_CONFLICT,
               "the task a retry queued was withdrawn");
  cr_assert(idem_exists(idem));
  cr_assert_eq(start(1, 0), PT_V_RUN, "the queued task does not run");
}

/* Final and evicted before the confirm's failure was known: it ran. A
 * hash gone with no tombstone says nothing: not "nothing accepted". */
Test(store, abandon_of_a_task_gone_from_redis_does_not_say_withdrawn) {
  char idem[64];
  snprintf(idem, sizeof idem, "abandon-%s", id);
  submit_keyed(idem);
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_OK);
  pt_redis_lose_task(id);
  cr_assert_eq(abandon(idem), PT_V_CONFLICT, "an evicted final task");
  cr_assert(idem_exists(idem));
  redisAsyncCommand(pt_redis_ctx(redis), NULL, NULL, "DEL %s%s", PT_KEY_FIN,
                    id);
  cr_assert_eq(abandon(idem), PT_V_NOTFOUND);
  cr_assert(idem_exists(idem), "the key of a task of unknown fate was freed");
}

Test(store, a_final_task_evicted_is_not_submitted_again) {
  /* Final (here cancelled), synced and evicted: only its tombstone is
   * left. A follow-up relayed a second time submits the same id: it must
   * not come back PENDING, with no expiry, and for ever. */
  pt_test_verdict_t r = {0};
  const char *spec = "{\"task_id\":\"1\"}";
  submit();
  cr_assert_eq(cancel(NULL, &r), PT_V_OK);
  pt_redis_lose_task(id);
  memset(&r, 0, sizeof r);
  cr_assert_eq(pt_store_submit(pt_redis_ctx(redis), id, spec, strlen(spec),
                               pt_now_ms(), NULL, NULL, 60, pt_test_on_verdict,
                               &r),
               0);
  pt_test_wait_verdict(&loop, &r);
  cr_assert_eq(r.v, PT_V_EXISTS);
  cr_assert(!pt_redis_has_task(id), "a final task was written PENDING again");
}

Test(store, a_lost_hash_is_rebuilt_from_the_message) {
  /* No submit: as if Redis lost the hash (and no tombstone exists). A
   * start without the spec asks for it and writes nothing; with it, the
   * hash is rebuilt and the attempt runs. */
  cr_assert_eq(start_spec(2, 0, NULL), PT_V_NOSPEC);
  cr_assert(!pt_redis_has_task(id), "a start without a spec wrote the hash");
  cr_assert_eq(start(2, 0), PT_V_RUN);
  cr_assert_eq(finish(2, "SUCCEEDED"), PT_V_OK);
}

Test(store, a_lost_hash_with_a_redelivered_first_attempt_resumes) {
  /* Redis lost the hash while attempt 1 was out (its worker died, the
   * broker redelivers): that attempt may have created the trade, so the
   * rebuilt one must query first, not create again. */
  cr_assert_eq(start_spec(1, 1, NULL), PT_V_NOSPEC);
  cr_assert_eq(start(1, 1), PT_V_RESUME);
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_OK);
}

Test(store, a_finish_on_a_hash_lost_while_the_attempt_ran_says_lost) {
  /* Nothing is written (a half record would read as a task without its
   * spec): the worker gives the delivery back and the start rebuilds. */
  submit();
  cr_assert_eq(start(1, 0), PT_V_RUN);
  pt_redis_lose_task(id);
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_LOST);
  cr_assert(!pt_redis_has_task(id), "the finish wrote into a lost hash");
  cr_assert_eq(start_spec(1, 1, NULL), PT_V_NOSPEC);
  cr_assert_eq(start(1, 1), PT_V_RESUME);
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_OK);
}

Test(store, a_finish_after_the_task_ended_and_was_evicted_is_stale) {
  submit();
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_OK);
  pt_redis_lose_task(id); /* its tombstone stays */
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_STALE);
  cr_assert(!pt_redis_has_task(id), "an ended task was written again");
}

static void on_hash(redisReply *reply, void *arg) {
  bson_t *doc = arg;
  int final = 0;
  pt_error_t err;
  cr_assert_not_null(reply);
  cr_assert_eq(pt_store_doc_from_hash(reply, doc, &final, &err), 0, "%s",
               err.message);
  cr_assert(final);
}

Test(store, document_layout_matches_a_fresh_submit) {
  pt_task_t t;
  pt_input_error_t ie;
  const char *body = "{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":"
                     "\"L-1\",\"amount\":5,\"currency\":\"CNY\",\"subject\":\"s\"}";
  cr_assert_eq(pt_task_parse(body, strlen(body), PT_PARSE_SUBMIT, 0, &t, &ie),
               0);
  pt_id_parse(id, strlen(id), &t.id);
  snprintf(t.id_str, sizeof t.id_str, "%.20s", id);
  t.created_at_ms = pt_now_ms();
  size_t len;
  char *spec = pt_task_spec_json(&t, 0, &len);
  pt_test_verdict_t r = {0};
  pt_store_submit(pt_redis_ctx(redis), id, spec, len, t.created_at_ms, NULL,
                  NULL, 60, pt_test_on_verdict, &r);
  pt_test_wait_verdict(&loop, &r);
  cr_assert_eq(start(1, 0), PT_V_RUN);
  cr_assert_eq(finish(1, "SUCCEEDED"), PT_V_OK);
  bson_t stored = BSON_INITIALIZER, fresh = BSON_INITIALIZER;
  pt_store_get(pt_redis_ctx(redis), id, on_hash, &stored);
  uv_run(&loop, UV_RUN_ONCE);
  while (bson_empty(&stored))
    uv_run(&loop, UV_RUN_ONCE);
  pt_store_doc_pending(&t, &fresh);
  /* Same fields in the same order; only the values of state differ. */
  bson_iter_t a, b;
  bson_iter_init(&a, &stored);
  bson_iter_init(&b, &fresh);
  while (bson_iter_next(&a)) {
    cr_assert(bson_iter_next(&b), "stored has more fields");
    cr_assert_str_eq(bson_iter_key(&a), bson_iter_key(&b));
  }
  cr_assert(!bson_iter_next(&b), "fresh has more fields");
  bson_destroy(&stored);
  bson_destroy(&fresh);
  bson_free(spec);
  pt_task_destroy(&t);
}
