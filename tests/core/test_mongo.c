/* MongoDB off the loop: work on the libuv thread pool (issue 2). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "core/pt_mongo.h"
#include "tests/support/pt_test.h"

#define N 10000

typedef struct {
  char coll[96];
  long found, sum;
  int ticks_during_work;
  int working;
  int done;
  uv_timer_t ticker;
  pt_mongo_t *m;
} ctx_t;

static int insert_work(mongoc_client_t *client, void *arg, pt_error_t *err) {
  ctx_t *c = arg;
  bson_error_t e;
  mongoc_collection_t *col =
      mongoc_client_get_collection(client, pt_mongo_dbname(c->m), c->coll);
  mongoc_bulk_operation_t *bulk =
      mongoc_collection_create_bulk_operation_with_opts(col, NULL);
  for (int i = 0; i < N; i++) {
    bson_t d = BSON_INITIALIZER;
    BSON_APPEND_INT32(&d, "_id", i);
    BSON_APPEND_INT32(&d, "n", i);
    BSON_APPEND_UTF8(&d, "pad", "payment task document");
    mongoc_bulk_operation_insert(bulk, &d);
    bson_destroy(&d);
  }
  bson_t reply;
  int ok = mongoc_bulk_operation_execute(bulk, &reply, &e) != 0;
  bson_destroy(&reply);
  mongoc_bulk_operation_destroy(bulk);
  mongoc_collection_destroy(col);
  return ok ? 0 : pt_error_set(err, PT_DOMAIN_MONGO, PT_EMONGO, "%s",
                               e.message);
}

static int read_work(mongoc_client_t *client, void *arg, pt_error_t *err) {
  ctx_t *c = arg;
  bson_error_t e;
  const bson_t *d;
  bson_iter_t it;
  mongoc_collection_t *col =
      mongoc_client_get_collection(client, pt_mongo_dbname(c->m), c->coll);
  bson_t q = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, &q, NULL, NULL);
  while (mongoc_cursor_next(cur, &d)) {
    if (bson_iter_init_find(&it, d, "n"))
      c->sum += bson_iter_int32(&it);
    c->found++;
  }
  int rc = mongoc_cursor_error(cur, &e)
               ? pt_error_set(err, PT_DOMAIN_MONGO, PT_EMONGO, "%s", e.message)
               : 0;
  mongoc_cursor_destroy(cur);
  bson_destroy(&q);
  mongoc_collection_drop(col, NULL);
  mongoc_collection_destroy(col);
  return rc;
}

static void on_tick(uv_timer_t *t) {
  ctx_t *c = t->data;
  if (c->working)
    c->ticks_during_work++;
}

static void on_read(int status, const pt_error_t *err, void *arg) {
  ctx_t *c = arg;
  cr_assert_eq(status, 0, "MongoDB read: %s", err ? err->message : "");
  c->working = 0;
  c->done = 1;
  uv_close((uv_handle_t *)&c->ticker, NULL);
}

static void on_inserted(int status, const pt_error_t *err, void *arg) {
  ctx_t *c = arg;
  cr_assert_eq(status, 0, "MongoDB insert: %s", err ? err->message : "");
  cr_assert_eq(pt_mongo_submit(c->m, read_work, on_read, c), 0);
}

Test(mongo, bulk_insert_and_read_back_without_blocking_the_loop,
     .timeout = 120) {
  uv_loop_t loop;
  pt_error_t err;
  ctx_t c = {0};
  uv_loop_init(&loop);
  pt_test_unique("test_bulk", c.coll, sizeof c.coll);
  for (char *p = c.coll; *p; p++)
    if (*p == '-')
      *p = '_';
  c.m = pt_mongo_new(&loop, pt_test_uri("PAYTASK_MONGODB_URI", "MongoDB"),
                     &err);
  cr_assert_not_null(c.m, "MongoDB: %s", err.message);
  uv_timer_init(&loop, &c.ticker);
  c.ticker.data = &c;
  uv_timer_start(&c.ticker, on_tick, 2, 2);
  c.working = 1;
  cr_assert_eq(pt_mongo_submit(c.m, insert_work, on_inserted, &c), 0);
  pt_test_run_loop(&loop, 100000, "MongoDB");
  cr_assert(c.done);
  cr_assert_eq(c.found, N, "read back %ld of %d documents", c.found, N);
  cr_assert_eq(c.sum, (long)N * (N - 1) / 2, "contents differ");
  /* A blocked loop would not have ticked at all while the work ran. */
  cr_assert_gt(c.ticks_during_work, 0, "the loop never ticked while MongoDB "
               "worked");
  cr_assert_eq(pt_mongo_pending(c.m), 0);
  pt_mongo_destroy(c.m);
  pt_test_close_loop(&loop);
}

static int ping_work(mongoc_client_t *client, void *arg, pt_error_t *err) {
  bson_t cmd = BSON_INITIALIZER;
  bson_error_t e;
  (void)arg;
  BSON_APPEND_INT32(&cmd, "ping", 1);
  bool ok = mongoc_client_command_simple(client, "admin", &cmd, NULL, NULL, &e);
  bson_destroy(&cmd);
  return ok ? 0 : pt_error_set(err, PT_DOMAIN_MONGO, PT_EMONGO, "%s", e.message);
}

static void on_ping(int status, const pt_error_t *err, void *arg) {
  int *out = arg;
  *out = status;
  cr_assert(status == 0 || (err != NULL && err->message[0]));
}

Test(mongo, dead_server_fails_within_the_selection_timeout, .timeout = 30) {
  uv_loop_t loop;
  pt_error_t err;
  int status = 1;
  uv_loop_init(&loop);
  cr_assert_null(pt_mongo_new(&loop, "notmongo://x", &err));
  cr_assert_gt(strlen(err.message), 5);
  pt_mongo_t *m = pt_mongo_new(
      &loop, "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=500", &err);
  cr_assert_not_null(m);
  cr_assert_eq(pt_mongo_submit(m, ping_work, on_ping, &status), 0);
  pt_test_run_loop(&loop, 10000, "MongoDB on a closed port");
  cr_assert_lt(status, 0);
  pt_mongo_destroy(m);
  pt_test_close_loop(&loop);
}
