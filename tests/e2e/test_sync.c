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

static void fini(void) { pt_stack_fini(&stack); }

TestSuite(sync, .fini = fini, .timeout = 240);

/* The api's /readyz says 503 while its MongoDB is down; what a submit
 * needs is its broker and Redis connections, which come up a moment after
 * /healthz answers. */
static void wait_broker_and_redis(pt_stack_t *s) {
  char url[128], *out = NULL;
  snprintf(url, sizeof url, "%s/readyz", s->api_url);
  for (int i = 0; i < 100; i++) {
    free(out);
    out = NULL;
    if (pt_http("GET", url, NULL, NULL, NULL, &out) <= 0 || out == NULL ||
        out[0] != '{') {
      usleep(100000);
      continue;
    }
    bson_t doc;
    pt_json(out, &doc);
    const char *b = pt_json_str(&doc, "broker"), *r = pt_json_str(&doc, "redis");
    int up = b && r && strcmp(b, "ok") == 0 && strcmp(r, "ok") == 0;
    bson_destroy(&doc);
    if (up) {
      free(out);
      return;
    }
    usleep(100000);
  }
  cr_assert_fail("the api's broker or Redis never came up: %s", out);
}

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
  wait_broker_and_redis(&stack);
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
    pt_run_task(&stack, pt_unique("LINGER"), 100 + i, NULL, NULL, ids[i],
                &doc);
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

/* Writes pt:task:{to} as a copy of the final hash of {from} whose spec has
 * the params key bad_key, and queues it for the sync. */
static void plant_task_with_key(const char *from, const char *to,
                                const char *bad_key) {
  redisContext *c = pt_test_redis();
  redisReply *h = redisCommand(c, "HGETALL pt:task:%s", from);
  cr_assert(h != NULL && h->type == REDIS_REPLY_ARRAY && h->elements > 0,
            "no hash for task %s", from);
  bson_t spec, bad = BSON_INITIALIZER, params;
  bson_iter_t it;
  for (size_t i = 0; i + 1 < h->elements; i += 2) {
    const char *k = h->element[i]->str, *v = h->element[i + 1]->str;
    if (strcmp(k, "synced") == 0)
      continue;
    if (strcmp(k, "spec") != 0) {
      freeReplyObject(redisCommand(c, "HSET pt:task:%s %s %s", to, k, v));
      continue;
    }
    pt_json(v, &spec);
    bson_iter_init(&it, &spec);
    while (bson_iter_next(&it))
      if (strcmp(bson_iter_key(&it), "params") != 0 &&
          strcmp(bson_iter_key(&it), "task_id") != 0)
        bson_append_iter(&bad, NULL, 0, &it);
    BSON_APPEND_UTF8(&bad, "task_id", to);
    BSON_APPEND_DOCUMENT_BEGIN(&bad, "params", &params);
    BSON_APPEND_INT32(&params, bad_key, 1);
    bson_append_document_end(&bad, &params);
    char *json = bson_as_relaxed_extended_json(&bad, NULL);
    freeReplyObject(redisCommand(c, "HSET pt:task:%s spec %s", to, json));
    bson_free(json);
    bson_destroy(&spec);
    bson_destroy(&bad);
  }
  freeReplyObject(h);
  freeReplyObject(redisCommand(c, "XADD pt:sync * id %s", to));
  redisFree(c);
}

static long long redis_ttl(const char *id) {
  redisContext *c = pt_test_redis();
  redisReply *r = redisCommand(c, "TTL pt:task:%s", id);
  long long ttl = r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : -3;
  freeReplyObject(r);
  redisFree(c);
  return ttl;
}

/* A final document that MongoDB refuses is never acknowledged and
 * evicted: its hash stays in Redis without an expiry, the task can still be
 * read, and the sync goes on with the others. The driver refuses an empty
 * key; FerretDB refuses a dotted one (MongoDB 5 takes it). The api refuses
 * both at submit; these were written to Redis directly. */
static void assert_kept_in_redis(const char *id) {
  bson_t doc;
  char *out = NULL;
  cr_assert_eq(redis_ttl(id), -1,
               "the unwritten task %s was given an expiry (TTL %lld)", id,
               redis_ttl(id));
  cr_assert_eq(pt_api_get(&stack, id, 0, &out), 200, "%s", out ? out : "");
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  free(out);
}

Test(sync, a_document_mongodb_refuses_stays_in_redis) {
  char a[24], b[24], c[24], d[24];
  bson_t doc;
  pt_stack_env(&stack, "PAYTASK_SYNC_CLAIM_IDLE_MS", "1000");
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, pt_unique("BADDOC"), 100, NULL, NULL, a, &doc);
  bson_destroy(&doc);
  cr_assert(pt_mongo_task(a, 30, &doc), "task %s never reached MongoDB", a);
  bson_destroy(&doc);

  snprintf(b, sizeof b, "%llu", strtoull(a, NULL, 10) + 1);
  snprintf(d, sizeof d, "%llu", strtoull(a, NULL, 10) + 2);
  plant_task_with_key(a, b, "");
  plant_task_with_key(a, d, "b.c");
  /* A task after it is synced: the refused one does not hold the rest. */
  char *body = pt_task_body(pt_unique("BADDOC"), 101, NULL, NULL);
  pt_submit_ok(&stack, body, c);
  free(body);
  cr_assert(pt_mongo_task(c, 30, &doc), "task %s never reached MongoDB", c);
  bson_destroy(&doc);
  /* Past a claim: still there, without an expiry, still readable. */
  sleep(7);
  cr_assert(!pt_mongo_task(b, 0, &doc), "MongoDB took an empty key");
  assert_kept_in_redis(b);
  if (pt_mongo_task(d, 0, &doc))
    bson_destroy(&doc); /* a server that takes dotted keys */
  else
    assert_kept_in_redis(d);
  cr_assert_eq(pt_stack_stop(&stack), 0, "a process did not stop cleanly");
  /* Leave nothing for other suites' syncs to trip over. */
  redisContext *r = pt_test_redis();
  freeReplyObject(redisCommand(r, "DEL pt:task:%s pt:task:%s", b, d));
  redisFree(r);
}

/* A sync entry whose task hash is there but is not a final task (damaged,
 * or moved back) is kept pending and said, not acknowledged as if the
 * hash were gone: that hash would never be synced nor expire. */
Test(sync, an_entry_whose_task_is_not_final_is_kept_and_said) {
  char a[24], e[24], c[24], entry[64];
  bson_t doc;
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, pt_unique("NOTFINAL"), 100, NULL, NULL, a, &doc);
  bson_destroy(&doc);
  snprintf(e, sizeof e, "%llu", strtoull(a, NULL, 10) + 1);
  redisContext *r = pt_test_redis();
  redisReply *x = redisCommand(r, "COPY pt:task:%s pt:task:%s", a, e);
  cr_assert(x != NULL && x->type == REDIS_REPLY_INTEGER && x->integer == 1);
  freeReplyObject(x);
  freeReplyObject(redisCommand(r, "PERSIST pt:task:%s", e));
  freeReplyObject(redisCommand(r, "HSET pt:task:%s status RUNNING", e));
  x = redisCommand(r, "XADD pt:sync * id %s", e);
  cr_assert(x != NULL && x->type == REDIS_REPLY_STRING);
  snprintf(entry, sizeof entry, "%s", x->str);
  freeReplyObject(x);
  /* A task after it: synced, so the entry before it was read. */
  char *body = pt_task_body(pt_unique("NOTFINAL"), 101, NULL, NULL);
  pt_submit_ok(&stack, body, c);
  free(body);
  cr_assert(pt_mongo_task(c, 30, &doc), "task %s never reached MongoDB", c);
  bson_destroy(&doc);
  const char *said[] = {"sync_bad_document", e, NULL};
  cr_assert(pt_stack_log_wait(&stack, "worker0.log", said, 10),
            "the damaged entry was not logged");
  x = redisCommand(r, "XRANGE pt:sync %s %s", entry, entry);
  cr_assert(x != NULL && x->type == REDIS_REPLY_ARRAY);
  cr_assert_eq(x->elements, 1, "the entry was acknowledged and deleted");
  freeReplyObject(x);
  cr_assert_eq(pt_stack_stop(&stack), 0, "a process did not stop cleanly");
  /* Leave nothing for other suites' syncs to trip over. */
  freeReplyObject(redisCommand(r, "DEL pt:task:%s", e));
  freeReplyObject(redisCommand(r, "XDEL pt:sync %s", entry));
  redisFree(r);
}

/* Claims go on through the pending list: a consumer that is gone left
 * two documents MongoDB refuses and a good one behind them. Each claim
 * (sync.batch 2) used to start at the list's head and took the two refused
 * ones again every time; the good one was never written. */
Test(sync, claims_reach_what_refused_entries_stand_before) {
  char a[24], b[24], d[24], e[24];
  bson_t doc;
  pt_stack_env(&stack, "PAYTASK_SYNC_CLAIM_IDLE_MS", "1000");
  pt_stack_env(&stack, "PAYTASK_SYNC_BATCH", "2");
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, pt_unique("CLAIMED"), 100, NULL, NULL, a, &doc);
  bson_destroy(&doc);
  cr_assert(pt_mongo_task(a, 30, &doc), "task %s never reached MongoDB", a);
  bson_destroy(&doc);
  cr_assert_eq(pt_stack_stop_worker(&stack, 0, 60), 0);

  /* With no sync running, a consumer reads the three entries and dies. */
  snprintf(b, sizeof b, "%llu", strtoull(a, NULL, 10) + 1);
  snprintf(d, sizeof d, "%llu", strtoull(a, NULL, 10) + 2);
  snprintf(e, sizeof e, "%llu", strtoull(a, NULL, 10) + 3);
  plant_task_with_key(a, b, "");
  plant_task_with_key(a, d, "");
  plant_task_with_key(a, e, "fine");
  redisContext *r = pt_test_redis();
  redisReply *rep = redisCommand(r, "XREADGROUP GROUP paytask-sync gone "
                                    "COUNT 3 STREAMS pt:sync >");
  cr_assert(rep != NULL && rep->type == REDIS_REPLY_ARRAY &&
                rep->element[0]->element[1]->elements == 3,
            "the three entries were not read");
  freeReplyObject(rep);
  pt_test_sleep_ms(1500); /* idle past sync.claim_idle_ms */

  pt_stack_add_worker(&stack);
  cr_assert(pt_mongo_task(e, 30, &doc),
            "the entry behind the refused ones was never claimed and written");
  bson_destroy(&doc);
  cr_assert(!pt_mongo_task(b, 0, &doc), "MongoDB took an empty key");
  cr_assert_eq(pt_stack_stop(&stack), 0, "a process did not stop cleanly");
  freeReplyObject(redisCommand(r, "DEL pt:task:%s pt:task:%s", b, d));
  redisFree(r);
}

/* The index `paytask replay` selects by (FAILED tasks created in a time
 * range) is made by the workers' sync, so that a replay does not read
 * every task ever synced. */
Test(sync, the_workers_make_the_replay_index) {
  /* A database of its own, which no earlier worker gave the index. */
  char db[64], uri[512];
  const char *base = pt_test_uri("PAYTASK_MONGODB_URI", "MongoDB");
  const char *host = strstr(base, "://");
  cr_assert_not_null(host, "%s", base);
  const char *path = strchr(host + 3, '/');
  const char *query = strchr(host + 3, '?');
  int n = path != NULL ? (int)(path - base)
                       : query != NULL ? (int)(query - base) : (int)strlen(base);
  pt_test_unique("pt_index", db, sizeof db);
  for (char *p = db; *p; p++)
    if (*p == '-')
      *p = '_';
  snprintf(uri, sizeof uri, "%.*s/%s%s", n, base, db, query ? query : "");
  setenv("PAYTASK_MONGODB_URI", uri, 1);
  cr_assert(!pt_mongo_has_index("status_1_created_at_1", 0),
            "a new database has the index already");
  pt_stack_start(&stack, 1, NULL);
  cr_assert(pt_mongo_has_index("status_1_created_at_1", 30),
            "no index on status and created_at in MongoDB");
  pt_mongo_drop_database();
}

/* The sync stream deleted under running workers (a FLUSHDB, an eviction,
 * an operator): the next final task makes it again, without the sync's
 * group. The sync reads NOGROUP, pauses and makes the group again, and
 * the task still reaches MongoDB; before, it read again at once, for
 * ever, and no task was synced any more. */
Test(sync, a_deleted_sync_stream_is_made_again) {
  char first[24], second[24];
  bson_t doc;
  pt_stack_start(&stack, 1, NULL);
  pt_run_task(&stack, pt_unique("SYNCDEL"), 101, NULL, NULL, first, &doc);
  bson_destroy(&doc);
  cr_assert(pt_mongo_task(first, 30, &doc), "the first task was not synced");
  bson_destroy(&doc);
  redisContext *c = pt_test_redis();
  freeReplyObject(redisCommand(c, "DEL pt:sync"));
  redisFree(c);
  pt_run_task(&stack, pt_unique("SYNCDEL"), 102, NULL, NULL, second, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  cr_assert(pt_mongo_task(second, 30, &doc),
            "a task finished after the stream was deleted never reached "
            "MongoDB");
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  /* Said once, with Redis's reason (NOGROUP; or UNBLOCKED, when the
   * deletion ended a read waiting on the stream) and the retry. */
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "grep -Eq 'event=sync_redis_failed err=\"(NOGROUP|UNBLOCKED).*"
           "retry_in_ms' "
           "%s/worker0.log && ! grep -q 'event=sync_read_failed' "
           "%s/worker0.log",
           stack.logdir, stack.logdir);
  cr_assert_eq(system(cmd), 0, "the pause was not said once with its reason "
               "(log: %s/worker0.log)", stack.logdir);
}
