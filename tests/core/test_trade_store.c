/* The trade's compare-and-set against a real Redis (issue 5): a trade
 * moves only forward, so a duplicate or late callback and a late query
 * answer change nothing once it is final; a notification whose amount
 * differs from the trade's is refused; a final state writes exactly one
 * trade event to the outbox. */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_id.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "tests/support/pt_test.h"

static uv_loop_t loop;
static pt_redis_t *redis;
static redisContext *sync_redis;
static char pay[32], query[32], otn[48];

static redisReply *cmd(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(sync_redis, fmt, ap);
  va_end(ap);
  cr_assert_not_null(r, "redis: %s", sync_redis->errstr);
  return r;
}

static const char *trade_field(const char *field, char *buf, size_t len) {
  redisReply *r = cmd("HGET %s%s %s", PT_KEY_TRADE, pay, field);
  snprintf(buf, len, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
  freeReplyObject(r);
  return buf;
}

static void setup(void) {
  pt_error_t err;
  const char *uri = pt_test_uri("PAYTASK_REDIS_URI", "Redis");
  uv_loop_init(&loop);
  redis = pt_redis_connect(&loop, uri, NULL, NULL, &err);
  cr_assert_not_null(redis, "Redis: %s", err.message);
  sync_redis = pt_redis_connect_sync(uri, 2000, &err);
  cr_assert_not_null(sync_redis, "Redis: %s", err.message);
  pt_store_load_scripts(pt_redis_ctx(redis));
  long long t = (long long)(pt_now_ms() % 1000000000000LL);
  snprintf(pay, sizeof pay, "8%012lld%d", t, (int)(getpid() % 10));
  snprintf(query, sizeof query, "7%012lld%d", t, (int)(getpid() % 10));
  snprintf(otn, sizeof otn, "CAS-%s", pay);
  /* A trade as a pay task's finish leaves it: NOTPAY, 15.00, no
   * notify_url (so no notify task is scheduled). */
  freeReplyObject(cmd("HSET %s%s status NOTPAY task_id %s amount 1500 "
                      "notify_url %s spec {\"task_id\":\"%s\",\"type\":"
                      "\"pay\",\"channel\":\"alipay\"}",
                      PT_KEY_TRADE, pay, pay, "", pay));
  freeReplyObject(cmd("SET %salipay:%s %s", PT_KEY_OTN, otn, pay));
}

static void teardown(void) {
  /* This test's outbox entries, so no worker relays them later. */
  redisReply *r = cmd("XRANGE %s - +", PT_STREAM_OUTBOX);
  for (size_t i = 0; i < r->elements; i++) {
    const redisReply *e = r->element[i];
    const char *tid = pt_store_hash_field(e->element[1], "task_id");
    const char *parent = pt_store_hash_field(e->element[1], "parent");
    if ((tid != NULL && (strcmp(tid, pay) == 0 || strcmp(tid, query) == 0)) ||
        (parent != NULL && strcmp(parent, pay) == 0))
      freeReplyObject(cmd("XDEL %s %s", PT_STREAM_OUTBOX, e->element[0]->str));
  }
  freeReplyObject(r);
  freeReplyObject(cmd("DEL %s%s %salipay:%s %s%s %s%s", PT_KEY_TRADE, pay,
                      PT_KEY_OTN, otn, PT_KEY_TASK, query, PT_KEY_FIN, query));
  redisFree(sync_redis);
  pt_redis_destroy(redis);
  pt_test_run_loop(&loop, 10000, "Redis");
  pt_test_close_loop(&loop);
}

TestSuite(trade_store, .init = setup, .fini = teardown, .timeout = 30);


static pt_verdict_t notify(const char *o, const char *state, int64_t amount) {
  pt_test_verdict_t r = {0};
  pt_store_notify_t nt = {.out_trade_no = o,
                          .state = state,
                          .trade_no = "2026120122001",
                          .amount = amount,
                          .notify_id = "n-1",
                          .notify_task_id = "123",
                          .now_ms = pt_now_ms()};
  cr_assert_eq(pt_store_notify(pt_redis_ctx(redis), "alipay", &nt, pt_test_on_verdict, &r),
               0);
  pt_test_wait_verdict(&loop, &r);
  return r.v;
}

/* A follow-up task of the trade (mode "query", "close", "notify")
 * finishing with what the channel said (state MAY be NULL). */
static void finish_child(const char *mode, const char *state) {
  pt_test_verdict_t r = {0};
  const char *spec = "{\"task_id\":\"1\"}";
  /* Each call is a follow-up of its own (under the one id). */
  freeReplyObject(cmd("DEL %s%s %s%s", PT_KEY_TASK, query, PT_KEY_FIN, query));
  cr_assert_eq(pt_store_start(pt_redis_ctx(redis), query, 1, 0, pt_now_ms(),
                              2, NULL, spec, strlen(spec), pt_test_on_verdict,
                              &r),
               0);
  pt_test_wait_verdict(&loop, &r);
  cr_assert_eq(r.v, PT_V_RUN);
  memset(&r, 0, sizeof r);
  char *h = pt_store_history_json(1, 1, 2, "success", NULL, NULL);
  pt_store_trade_t tr = {.mode = mode,
                         .trade_id = pay,
                         .state = state,
                         .source = "query",
                         .notify_task_id = "124",
                         .channel = "alipay",
                         .out_trade_no = otn};
  pt_store_finish_t f = {.attempt = 1,
                         .status = "SUCCEEDED",
                         .history_json = h,
                         .now_ms = pt_now_ms(),
                         .trade = &tr};
  cr_assert_eq(pt_store_finish(pt_redis_ctx(redis), query, &f, pt_test_on_verdict, &r), 0);
  pt_test_wait_verdict(&loop, &r);
  cr_assert_eq(r.v, PT_V_OK);
  bson_free(h);
}

/* A query task of the trade finishing with what the channel said. */
static void late_query(const char *state) { finish_child("query", state); }

/* How many of the trade's events carry field = value. */
static int trade_events_with(const char *field, const char *value) {
  int n = 0;
  redisReply *r = cmd("XRANGE %s - +", PT_STREAM_OUTBOX);
  for (size_t i = 0; i < r->elements; i++) {
    const redisReply *f = r->element[i]->element[1];
    const char *tid = pt_store_hash_field(f, "task_id");
    const char *v = pt_store_hash_field(f, field);
    n += tid != NULL && v != NULL && strcmp(tid, pay) == 0 &&
         strcmp(v, value) == 0;
  }
  freeReplyObject(r);
  return n;
}

static int trade_events(void) { return trade_events_with("subject", "trade"); }

Test(trade_store, forward_only_once_final) {
  char buf[64];
  /* The wrong amount is refused and changes nothing. */
  cr_assert_eq(notify(otn, "SUCCEEDED", 1499), PT_V_MISMATCH);
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "NOTPAY");
  /* An unknown trade is reported as such. */
  cr_assert_eq(notify("CAS-nobody", "SUCCEEDED", 1500), PT_V_NOTFOUND);
  /* PAYING is a step forward, not final: no event yet. */
  cr_assert_eq(notify(otn, "PAYING", 1500), PT_V_OK);
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "PAYING");
  cr_assert_eq(trade_events(), 0);
  /* The callback settles it. */
  cr_assert_eq(notify(otn, "SUCCEEDED", 1500), PT_V_OK);
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "SUCCEEDED");
  cr_assert_str_eq(trade_field("settled_by", buf, sizeof buf), "callback");
  cr_assert_eq(trade_events(), 1);
  /* A duplicate callback, a late lower state and a late query answer
   * change nothing, and write no second event. */
  cr_assert_eq(notify(otn, "SUCCEEDED", 1500), PT_V_STALE);
  cr_assert_eq(notify(otn, "NOTPAY", 1500), PT_V_STALE);
  late_query("CLOSED");
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "SUCCEEDED");
  cr_assert_str_eq(trade_field("settled_by", buf, sizeof buf), "callback");
  cr_assert_eq(trade_events(), 1);
}

Test(trade_store, a_query_settles_what_no_callback_did) {
  char buf[64];
  late_query("CLOSED");
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "CLOSED");
  cr_assert_str_eq(trade_field("settled_by", buf, sizeof buf), "query");
  cr_assert_eq(trade_events(), 1);
  /* A late CLOSED or FAILED answer changes nothing. */
  late_query("FAILED");
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "CLOSED");
  cr_assert_eq(trade_events(), 1);
}

/* The buyer paid after paytask closed the trade (a scan in the last
 * second before a local close): the channel's SUCCEEDED wins, loudly,
 * instead of being acknowledged as a duplicate and dropped. */
Test(trade_store, a_payment_after_the_close_reopens_the_trade_as_paid) {
  char buf[64];
  late_query("CLOSED");
  cr_assert_eq(trade_events(), 1);
  /* The amount is still checked first. */
  cr_assert_eq(notify(otn, "SUCCEEDED", 1499), PT_V_MISMATCH);
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "CLOSED");
  cr_assert_eq(notify(otn, "SUCCEEDED", 1500), PT_V_REOPENED,
               "a payment after the close was dropped");
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "SUCCEEDED");
  cr_assert_str_eq(trade_field("paid_after", buf, sizeof buf), "CLOSED");
  cr_assert_str_eq(trade_field("settled_by", buf, sizeof buf), "callback");
  cr_assert_eq(trade_events(), 2, "no second trade event for the payment");
  cr_assert_eq(trade_events_with("previous", "CLOSED"), 1);
  /* Once paid, it stays paid. */
  cr_assert_eq(notify(otn, "SUCCEEDED", 1500), PT_V_STALE);
  late_query("CLOSED");
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "SUCCEEDED");
  cr_assert_eq(trade_events(), 2);
}

/* The same through a query's answer, after a FAILED. */
Test(trade_store, a_query_finding_paid_after_a_failure_reopens_the_trade) {
  char buf[64];
  late_query("FAILED");
  late_query("SUCCEEDED");
  cr_assert_str_eq(trade_field("status", buf, sizeof buf), "SUCCEEDED");
  cr_assert_str_eq(trade_field("paid_after", buf, sizeof buf), "FAILED");
  cr_assert_eq(trade_events(), 2);
}

Test(trade_store, a_notify_task_outliving_its_trade_makes_no_trade_record) {
  /* The trade expired (30 days) before a replayed notify task ran. */
  freeReplyObject(cmd("DEL %s%s", PT_KEY_TRADE, pay));
  finish_child("notify", NULL);
  redisReply *r = cmd("EXISTS %s%s", PT_KEY_TRADE, pay);
  cr_assert_eq(r->integer, 0, "a trade record without expiry was made");
  freeReplyObject(r);
}

/* A reopened trade has two notifications: the one about the close, and
 * the one about the payment. An older one's end does not say whether the
 * merchant was told what the trade is now; the latest one's, or a
 * replay's (newer still), does. Task ids grow with time. */
Test(trade_store, an_older_notification_does_not_set_the_notify_status) {
  char buf[64];
  freeReplyObject(cmd("HSET %s%s notify_url https://merchant.example/n",
                      PT_KEY_TRADE, pay));
  late_query("CLOSED");
  cr_assert_str_eq(trade_field("notify_task", buf, sizeof buf), "124");
  cr_assert_eq(notify(otn, "SUCCEEDED", 1500), PT_V_REOPENED);
  cr_assert_str_eq(trade_field("notify_task", buf, sizeof buf), "123");
  cr_assert_str_eq(trade_field("notify_status", buf, sizeof buf), "PENDING");
  /* The latest notification is newer than finish_child's task (the pay
   * id begins with 8, the child's with 7, at the same time). */
  freeReplyObject(cmd("HSET %s%s notify_task %s", PT_KEY_TRADE, pay, pay));
  finish_child("notify", NULL);
  cr_assert_str_eq(trade_field("notify_status", buf, sizeof buf), "PENDING",
                   "an older notification's end spoke for the latest");
  /* A replay of it is newer than the latest. */
  freeReplyObject(cmd("HSET %s%s notify_task 123", PT_KEY_TRADE, pay));
  finish_child("notify", NULL);
  cr_assert_str_eq(trade_field("notify_status", buf, sizeof buf),
                   "DELIVERED");
}

/* The index from the channel's out_trade_no to the trade lives as long as
 * the trade: a settled trade's TTL starts again, and so does its index's
 * (it expired first, and a late callback found no trade, or a new pay
 * task was let take the out_trade_no of a trade still kept). */
static long long otn_ttl(void) {
  redisReply *r = cmd("TTL %salipay:%s", PT_KEY_OTN, otn);
  long long t = r->integer;
  freeReplyObject(r);
  return t;
}

Test(trade_store, a_settled_trade_keeps_its_index_as_long_as_itself) {
  freeReplyObject(cmd("EXPIRE %salipay:%s 100", PT_KEY_OTN, otn));
  late_query("CLOSED");
  cr_assert_gt(otn_ttl(), PT_TRADE_TTL_S - 60, "settled by a query: TTL %lld",
               otn_ttl());
}

Test(trade_store, a_paid_trade_keeps_its_index_as_long_as_itself) {
  freeReplyObject(cmd("EXPIRE %salipay:%s 100", PT_KEY_OTN, otn));
  cr_assert_eq(notify(otn, "SUCCEEDED", 1500), PT_V_OK);
  cr_assert_gt(otn_ttl(), PT_TRADE_TTL_S - 60,
               "settled by a callback: TTL %lld", otn_ttl());
}
