/* The whole life of a payment, end to end, against the simulator speaking
 * each real dialect (Alipay, WeChat Pay) with its real signatures: pay →
 * callback → SUCCEEDED → merchant notified → event published; the callback
 * withheld → settled by a query; unpaid → closed at expiry; paid just
 * before the close → SUCCEEDED; a notify receiver that fails three times;
 * forged, replayed and mismatched callbacks; a worker killed between the
 * state change and the event's publish. Real RabbitMQ, Redis and MongoDB;
 * real paytask processes. */
#include <amqp.h>
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_amqp.h"
#include "core/pt_crypto.h"
#include "core/pt_id.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

/* ---- the merchant's notify receiver --------------------------------------
 * A tiny HTTP server on a thread: records each notification and answers
 * "fail" (HTTP 500) to the first fail_first of them, then 200 "success". */

typedef struct {
  int fd, port;
  pthread_t thread;
  pthread_mutex_t mu;
  int fail_first;
  int received;
  char last_body[2048];
  char last_sig[256];
  volatile int stop;
} receiver_t;

static char *header_value(char *head, const char *name) {
  size_t n = strlen(name);
  for (char *p = head; (p = strchr(p, '\n')) != NULL;) {
    p++;
    if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
      char *v = p + n + 1;
      while (*v == ' ')
        v++;
      return v;
    }
  }
  return NULL;
}

static void *receiver_main(void *arg) {
  receiver_t *r = arg;
  while (!r->stop) {
    int c = accept(r->fd, NULL, NULL);
    if (c < 0)
      continue;
    char buf[8192];
    size_t got = 0;
    char *end = NULL;
    while (got < sizeof buf - 1) {
      ssize_t k = recv(c, buf + got, sizeof buf - 1 - got, 0);
      if (k <= 0)
        break;
      got += (size_t)k;
      buf[got] = '\0';
      if ((end = strstr(buf, "\r\n\r\n")) != NULL) {
        char *cl = header_value(buf, "Content-Length");
        size_t want = cl ? (size_t)atol(cl) : 0;
        if (got >= (size_t)(end + 4 - buf) + want)
          break;
      }
    }
    if (end != NULL) {
      pthread_mutex_lock(&r->mu);
      r->received++;
      int fail = r->received <= r->fail_first;
      snprintf(r->last_body, sizeof r->last_body, "%s", end + 4);
      *end = '\0';
      char *sig = header_value(buf, "X-Paytask-Signature");
      snprintf(r->last_sig, sizeof r->last_sig, "%.*s",
               sig ? (int)strcspn(sig, "\r\n") : 0, sig ? sig : "");
      pthread_mutex_unlock(&r->mu);
      const char *ans =
          fail ? "HTTP/1.1 500 Internal Server Error\r\nContent-Length: "
                 "4\r\nConnection: close\r\n\r\nfail"
               : "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: "
                 "close\r\n\r\nsuccess";
      ssize_t w = send(c, ans, strlen(ans), MSG_NOSIGNAL);
      (void)w;
    }
    close(c);
  }
  return NULL;
}

static void receiver_start(receiver_t *r, int fail_first) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  r->fail_first = fail_first;
  r->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  int one = 1;
  setsockopt(r->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  cr_assert_eq(bind(r->fd, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(listen(r->fd, 16), 0);
  getsockname(r->fd, (struct sockaddr *)&a, &al);
  r->port = ntohs(a.sin_port);
  struct timeval tv = {0, 200000};
  setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  pthread_create(&r->thread, NULL, receiver_main, r);
}

static void receiver_stop(receiver_t *r) {
  r->stop = 1;
  pthread_join(r->thread, NULL);
  close(r->fd);
  pthread_mutex_destroy(&r->mu);
}

static int receiver_count(receiver_t *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->received;
  pthread_mutex_unlock(&r->mu);
  return n;
}

/* ---- the stack in a dialect ------------------------------------------------ */

static const char *key_path(const char *name) {
  static char buf[8][600];
  static int i;
  const char *src = getenv("PAYTASK_SOURCE_DIR");
  char *p = buf[i++ % 8];
  snprintf(p, sizeof buf[0], "%s/conf/dev-keys/%s", src ? src : ".", name);
  return p;
}

#define APIV3_KEY "0123456789abcdefghijklmnopqrstuv"

/* The channels' configuration, the same on both sides: paytask holds the
 * app's / merchant's private key and the channel's public key; the
 * simulator the reverse. */
static void channel_env(pt_stack_t *s, const char *dialect,
                        const char *query_schedule) {
  pt_stack_env(s, "PAYTASK_SIM_DIALECT", dialect);
  pt_stack_env(s, "PAYTASK_CHANNEL_ALIPAY_APP_ID", "2021000000000001");
  pt_stack_env(s, "PAYTASK_CHANNEL_ALIPAY_PRIVATE_KEY_FILE",
               key_path("alipay_app_private.pem"));
  pt_stack_env(s, "PAYTASK_CHANNEL_ALIPAY_PUBLIC_KEY_FILE",
               key_path("alipay_platform_public.pem"));
  pt_stack_env(s, "PAYTASK_SIM_ALIPAY_APP_PUBLIC_KEY_FILE",
               key_path("alipay_app_public.pem"));
  pt_stack_env(s, "PAYTASK_SIM_ALIPAY_PRIVATE_KEY_FILE",
               key_path("alipay_platform_private.pem"));
  pt_stack_env(s, "PAYTASK_CHANNEL_WECHAT_MCHID", "1900000001");
  pt_stack_env(s, "PAYTASK_CHANNEL_WECHAT_APPID", "wxd678efh567hg6787");
  pt_stack_env(s, "PAYTASK_CHANNEL_WECHAT_SERIAL_NO", "MERCHANTSERIAL01");
  pt_stack_env(s, "PAYTASK_CHANNEL_WECHAT_PRIVATE_KEY_FILE",
               key_path("wechat_merchant_private.pem"));
  pt_stack_env(s, "PAYTASK_CHANNEL_WECHAT_PLATFORM_SERIAL",
               "PUB_KEY_ID_0000000000000001");
  pt_stack_env(s, "PAYTASK_CHANNEL_WECHAT_PLATFORM_PUBLIC_KEY_FILE",
               key_path("wechat_platform_public.pem"));
  pt_stack_env(s, "PAYTASK_CHANNEL_WECHAT_APIV3_KEY", APIV3_KEY);
  pt_stack_env(s, "PAYTASK_SIM_WECHAT_MERCHANT_PUBLIC_KEY_FILE",
               key_path("wechat_merchant_public.pem"));
  pt_stack_env(s, "PAYTASK_SIM_WECHAT_PRIVATE_KEY_FILE",
               key_path("wechat_platform_private.pem"));
  pt_stack_env(s, "PAYTASK_QUERY_SCHEDULE", query_schedule);
  pt_stack_env(s, "PAYTASK_NOTIFY_SCHEDULE", "1,1,1,1,1");
  pt_stack_env(s, "PAYTASK_NOTIFY_SECRETS", "default=test-notify-secret");
}

static void start(pt_stack_t *s, const char *dialect,
                  const char *query_schedule) {
  channel_env(s, dialect, query_schedule);
  pt_stack_start(s, 1, "--notify-schedule-ms=300,300,600,1000");
}

static void pay_body(char *buf, size_t len, const char *channel,
                     const char *otn, int64_t amount, int notify_port,
                     int expire_in) {
  char notify[96] = "null";
  if (notify_port > 0)
    snprintf(notify, sizeof notify, "\"http://127.0.0.1:%d/paid\"",
             notify_port);
  snprintf(buf, len,
           "{\"type\":\"pay\",\"channel\":\"%s\",\"out_trade_no\":\"%s\","
           "\"amount\":%lld,\"currency\":\"CNY\",\"subject\":\"e2e\","
           "\"notify_url\":%s,\"expire_in\":%d}",
           channel, otn, (long long)amount, notify, expire_in);
}

/* Waits until the pay task's trade has the status; returns the document
 * (caller destroys) or fails. */
static void wait_trade(pt_stack_t *s, const char *id, const char *status,
                       int timeout_s, bson_t *doc) {
  const char *last = "(none)";
  for (int i = 0; i < timeout_s * 10; i++) {
    char *out = NULL;
    long st = pt_api_get(s, id, 0, &out);
    if (st == 200) {
      pt_json(out, doc);
      free(out);
      const char *t = pt_json_str(doc, "trade.status");
      if (t != NULL && strcmp(t, status) == 0)
        return;
      static char seen[32];
      snprintf(seen, sizeof seen, "%s", t ? t : "(no trade)");
      last = seen;
      bson_destroy(doc);
    } else {
      free(out);
    }
    usleep(100000);
  }
  cr_assert_fail("task %s: trade never became %s (last %s)", id, status, last);
}

static long sim_post(pt_stack_t *s, const char *path, const char *body) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", s->sim_url, path);
  const char *h[] = {"Content-Type: application/json", NULL};
  return pt_http("POST", url, NULL, body, h, NULL);
}

static void sim_rule(pt_stack_t *s, const char *otn, const char *json_rest) {
  char body[512];
  snprintf(body, sizeof body, "{\"out_trade_no\":\"%s\"%s%s}", otn,
           json_rest[0] ? "," : "", json_rest);
  cr_assert_eq(sim_post(s, "/v1/sim/rules", body), 200);
}

static void buyer_pays(pt_stack_t *s, const char *otn) {
  char path[160];
  snprintf(path, sizeof path, "/v1/sim/trades/%s/pay", otn);
  cr_assert_eq(sim_post(s, path, "{}"), 200, "the simulated buyer could not pay");
}

/* ---- events ------------------------------------------------------------- */

/* A durable queue bound to the results exchange, emptied, for counting. */
static void events_queue(const char *name) {
  pt_error_t err;
  amqp_connection_state_t c =
      pt_amqp_connect_sync(pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ"), 3000,
                           &err);
  cr_assert_not_null(c, "%s", err.message);
  amqp_exchange_declare(c, 1, amqp_cstring_bytes("paytask.results"),
                        amqp_cstring_bytes("fanout"), 0, 1, 0, 0,
                        amqp_empty_table);
  /* Removed by the broker when unused for a minute, even if the test
   * stopped before reading it. */
  amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-expires"),
                          .value = {.kind = AMQP_FIELD_KIND_I32,
                                    .value.i32 = 60000}};
  amqp_table_t args = {1, &e};
  amqp_queue_declare(c, 1, amqp_cstring_bytes(name), 0, 0, 0, 1, args);
  amqp_queue_bind(c, 1, amqp_cstring_bytes(name),
                  amqp_cstring_bytes("paytask.results"), amqp_empty_bytes,
                  amqp_empty_table);
  cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
  pt_amqp_close_sync(c);
}

/* Counts, over timeout_s, the distinct and total events in queue whose body
 * holds both needles (e.g. the task id and "trade.final"). */
static void count_events(const char *queue, const char *n1, const char *n2,
                         int timeout_s, int *distinct, int *total) {
  pt_error_t err;
  char ids[32][64];
  int nids = 0;
  *distinct = *total = 0;
  amqp_connection_state_t c =
      pt_amqp_connect_sync(pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ"), 3000,
                           &err);
  cr_assert_not_null(c, "%s", err.message);
  amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 1,
                     0, amqp_empty_table);
  time_t until = time(NULL) + timeout_s;
  while (time(NULL) < until) {
    amqp_envelope_t env;
    struct timeval tv = {0, 200000};
    amqp_maybe_release_buffers(c);
    amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
      continue;
    char *body = strndup(env.message.body.bytes, env.message.body.len);
    if (strstr(body, n1) && strstr(body, n2)) {
      bson_t doc;
      pt_json(body, &doc);
      const char *eid = pt_json_str(&doc, "event_id");
      cr_assert_not_null(eid, "an event without event_id: %s", body);
      int seen = 0;
      for (int i = 0; i < nids; i++)
        seen |= strcmp(ids[i], eid) == 0;
      if (!seen && nids < 32)
        snprintf(ids[nids++], sizeof ids[0], "%s", eid);
      (*total)++;
      bson_destroy(&doc);
    }
    free(body);
    amqp_destroy_envelope(&env);
  }
  *distinct = nids;
  pt_amqp_close_sync(c);
}

/* ---- the scenarios ------------------------------------------------------ */

static void check_notification(receiver_t *r, const char *id) {
  pthread_mutex_lock(&r->mu);
  char body[2048], sig[256];
  snprintf(body, sizeof body, "%s", r->last_body);
  snprintf(sig, sizeof sig, "%s", r->last_sig);
  pthread_mutex_unlock(&r->mu);
  bson_t doc;
  pt_json(body, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "task_id"), id);
  cr_assert_str_eq(pt_json_str(&doc, "trade_status"), "SUCCEEDED");
  /* The receiver can check it: t=<ts>,v1=HMAC(secret, "<ts>.<body>"). */
  char ts[32], v1[80], hex[65], *signed_text;
  cr_assert_eq(sscanf(sig, "t=%31[0-9],v1=%64s", ts, v1), 2, "bad header %s",
               sig);
  cr_assert(asprintf(&signed_text, "%s.%s", ts, body) > 0);
  cr_assert_eq(pt_crypto_hmac_sha256_hex("test-notify-secret", 18, signed_text,
                                         strlen(signed_text), hex, NULL),
               0);
  free(signed_text);
  cr_assert_str_eq(v1, hex, "the notification's signature does not verify");
  bson_destroy(&doc);
}

static void paid_by_callback(const char *dialect) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  receiver_t r;
  char body[512], id[24], q[64];
  const char *otn = pt_unique("cb");
  snprintf(q, sizeof q, "test.events.%s", pt_unique("q"));
  events_queue(q);
  receiver_start(&r, 0);
  start(&s, dialect, "30");
  pay_body(body, sizeof body, dialect, otn, 1234, r.port, 600);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert(pt_json_str(&doc, strcmp(dialect, "alipay") == 0
                                  ? "result.qr_code"
                                  : "result.code_url") != NULL,
            "no payment code in the result");
  bson_destroy(&doc);

  buyer_pays(&s, otn);
  wait_trade(&s, id, "SUCCEEDED", 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.settled_by"), "callback");
  bson_destroy(&doc);
  for (int i = 0; i < 100 && receiver_count(&r) < 1; i++)
    usleep(100000);
  cr_assert_eq(receiver_count(&r), 1, "the merchant was not notified once");
  check_notification(&r, id);
  int distinct, total;
  count_events(q, id, "trade.final", 4, &distinct, &total);
  cr_assert_eq(distinct, 1, "trade.final events for the task: %d", distinct);
  cr_assert_eq(pt_sim_stat(&s, otn, "paid_count"), 1);
  /* While everything still runs: no second notification. */
  sleep(1);
  cr_assert_eq(receiver_count(&r), 1, "notified again after success");
  cr_assert_eq(pt_stack_stop(&s), 0);
  receiver_stop(&r);
}

Test(trades, alipay_paid_by_callback, .timeout = 120) {
  paid_by_callback("alipay");
}
Test(trades, wechat_paid_by_callback, .timeout = 120) {
  paid_by_callback("wechat");
}

static void settled_by_query(const char *dialect) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24];
  const char *otn = pt_unique("q");
  start(&s, dialect, "1,1,1,1,1,1,1,1,1,1");
  sim_rule(&s, otn, "\"callback\":\"withhold\"");
  pay_body(body, sizeof body, dialect, otn, 500, 0, 600);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  buyer_pays(&s, otn);
  wait_trade(&s, id, "SUCCEEDED", 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.settled_by"), "query");
  bson_destroy(&doc);
  cr_assert_eq(pt_sim_stat(&s, otn, "callbacks_sent"), 0);
  cr_assert_eq(pt_stack_stop(&s), 0);
}

Test(trades, alipay_settled_by_query, .timeout = 120) {
  settled_by_query("alipay");
}
Test(trades, wechat_settled_by_query, .timeout = 120) {
  settled_by_query("wechat");
}

/* Waits until the task's trade is CLOSED by its close task, and checks
 * that it was not closed before its window ended: the wait is a chain of
 * delay levels (for 5 s: 4 s, then the rest held in the worker), each hop
 * checked against the due time. Both times are RFC 3339 UTC with
 * milliseconds, so they compare as strings. */
static void wait_closed_after_window(pt_stack_t *s, const char *id,
                                     int timeout_s) {
  bson_t doc;
  wait_trade(s, id, "CLOSED", timeout_s, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.settled_by"), "close");
  const char *settled = pt_json_str(&doc, "trade.settled_at");
  const char *expire = pt_json_str(&doc, "trade.expire_at");
  cr_assert(settled != NULL && expire != NULL);
  cr_assert_geq(strcmp(settled, expire), 0, "closed at %s, before %s",
                settled, expire);
  bson_destroy(&doc);
}

static void closed_at_expiry(const char *dialect) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24];
  const char *otn = pt_unique("exp");
  start(&s, dialect, "30");
  pay_body(body, sizeof body, dialect, otn, 700, 0, 5);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  wait_closed_after_window(&s, id, 40);
  /* Too late now: the buyer cannot pay a closed trade. */
  char path[160];
  snprintf(path, sizeof path, "/v1/sim/trades/%s/pay", otn);
  cr_assert_neq(sim_post(&s, path, "{}"), 200);
  cr_assert_eq(pt_stack_stop(&s), 0);
}

Test(trades, alipay_closed_at_expiry, .timeout = 120) {
  closed_at_expiry("alipay");
}
Test(trades, wechat_closed_at_expiry, .timeout = 120) {
  closed_at_expiry("wechat");
}

/* The trade_status of the last notification r received. */
static void last_trade_status(receiver_t *r, char *out, size_t len) {
  bson_t doc;
  pthread_mutex_lock(&r->mu);
  pt_json(r->last_body, &doc);
  pthread_mutex_unlock(&r->mu);
  const char *st = pt_json_str(&doc, "trade_status");
  snprintf(out, len, "%s", st ? st : "(none)");
  bson_destroy(&doc);
}

static void wait_received(receiver_t *r, int n) {
  for (int i = 0; i < 200 && receiver_count(r) < n; i++)
    usleep(100000);
  cr_assert_eq(receiver_count(r), n, "the merchant got %d notifications, "
               "want %d", receiver_count(r), n);
}

/* Alipay keeps an unscanned QR code payable until its own time_expire, by
 * its own clock, and answers a close before the scan "no such trade": so
 * paytask closes such a trade locally at the end of the window it sent.
 * With Alipay's clock behind ours the buyer can pay after that close. The
 * channel's notification wins: the trade is SUCCEEDED, the merchant, told
 * CLOSED, is told SUCCEEDED, and an error says to deliver or refund. */
Test(trades, alipay_paid_after_its_local_close_reopens_the_trade,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  receiver_t r;
  char body[512], id[24], path[160], st[32];
  bson_t doc;
  const char *otn = pt_unique("reopen");
  receiver_start(&r, 0);
  start(&s, "alipay", "60");
  cr_assert_eq(sim_post(&s, "/v1/sim/clock", "{\"behind_ms\":60000}"), 200);
  pay_body(body, sizeof body, "alipay", otn, 800, r.port, 5);
  pt_submit_ok(&s, body, id);
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  wait_closed_after_window(&s, id, 40);
  wait_received(&r, 1);
  last_trade_status(&r, st, sizeof st);
  cr_assert_str_eq(st, "CLOSED");

  snprintf(path, sizeof path, "/v1/sim/trades/%s/pay", otn);
  cr_assert_eq(sim_post(&s, path, "{}"), 200,
               "the code was void at Alipay before its time_expire there");
  wait_trade(&s, id, "SUCCEEDED", 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.settled_by"), "callback");
  bson_destroy(&doc);
  wait_received(&r, 2);
  check_notification(&r, id);
  const char *logged[] = {"trade_paid_after_final", otn, NULL};
  cr_assert(pt_stack_log_wait(&s, "api.log", logged, 5),
            "no error says the closed trade was paid");
  cr_assert_eq(pt_sim_stat(&s, otn, "paid_count"), 1);
  cr_assert_eq(pt_stack_stop(&s), 0);
  receiver_stop(&r);
}

/* Starts s in the wechat dialect with close.schedule `close_schedule`
 * and creates a WeChat Pay trade for otn whose window ends in 5 s; id is
 * its pay task. */
static void wechat_trade_closing_in_5s(pt_stack_t *s,
                                       const char *close_schedule,
                                       const char *otn, char id[24]) {
  char body[512];
  bson_t doc;
  pt_stack_env(s, "PAYTASK_CLOSE_SCHEDULE", close_schedule);
  start(s, "wechat", "60");
  pay_body(body, sizeof body, "wechat", otn, 650, 0, 5);
  pt_submit_ok(s, body, id);
  pt_wait_final(s, id, 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
}

/* A channel outage at the end of a trade's window: the close is retried on
 * close.schedule until the channel answers. The retry policy of submitted
 * tasks gave it six tries within 15 s, then the dead queue, and the trade
 * stayed NOTPAY. */
Test(trades, a_close_during_an_outage_is_retried_until_it_goes_through,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char id[24];
  const char *otn = pt_unique("outclose");
  wechat_trade_closing_in_5s(
      &s, "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1", otn,
      id);
  cr_assert_eq(sim_post(&s, "/v1/sim/outage", "{\"on\":true}"), 200);
  cr_assert_eq(pt_sim_stat(&s, otn, "closes"), 0,
               "the close ran before the outage began");
  /* More failed closes than the old policy ever made. */
  int64_t closes = 0;
  for (int i = 0; i < 600 && closes < 8; i++) {
    usleep(100000);
    closes = pt_sim_stat(&s, otn, "closes");
  }
  cr_assert_geq(closes, 8, "the close was tried %lld times in the outage",
                (long long)closes);
  cr_assert_eq(sim_post(&s, "/v1/sim/outage", "{\"on\":false}"), 200);
  wait_closed_after_window(&s, id, 30);
  cr_assert_eq(pt_stack_stop(&s), 0);
}

/* WeChat Pay answering "no such order" for a trade paytask created (a
 * lagging replica) is no proof that nobody can pay it: the close is tried
 * again until WeChat Pay closes the order, which the buyer then cannot
 * pay. It was closed locally at the first answer, the order left open. */
Test(trades, wechat_not_found_at_close_is_tried_again, .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char id[24], path[160];
  const char *otn = pt_unique("lostwx");
  wechat_trade_closing_in_5s(&s, "1,1,1,1,1,1", otn, id);
  sim_rule(&s, otn, "\"lost_times\":2");
  wait_closed_after_window(&s, id, 40);
  cr_assert_eq(pt_sim_stat(&s, otn, "closes"), 3,
               "closed after %lld closes, want the two not found and one "
               "that closed it", (long long)pt_sim_stat(&s, otn, "closes"));
  snprintf(path, sizeof path, "/v1/sim/trades/%s/pay", otn);
  cr_assert_neq(sim_post(&s, path, "{}"), 200,
                "the order is still payable at WeChat Pay");
  cr_assert_eq(pt_stack_stop(&s), 0);
}

static void paid_just_before_close(const char *dialect) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24];
  const char *otn = pt_unique("late");
  start(&s, dialect, "60");
  sim_rule(&s, otn, "\"callback\":\"withhold\"");
  pay_body(body, sizeof body, dialect, otn, 900, 0, 6);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  buyer_pays(&s, otn); /* before the window ends; no callback, no query */
  wait_trade(&s, id, "SUCCEEDED", 40, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.settled_by"), "close",
                   "the close should have found it paid");
  bson_destroy(&doc);
  cr_assert_eq(pt_sim_stat(&s, otn, "paid_count"), 1);
  cr_assert_eq(pt_stack_stop(&s), 0);
}

Test(trades, alipay_paid_just_before_close, .timeout = 120) {
  paid_just_before_close("alipay");
}
Test(trades, wechat_paid_just_before_close, .timeout = 120) {
  paid_just_before_close("wechat");
}

/* WeChat Pay made the order but its answer came too late: the attempt's
 * outcome is unknown, so the retry queries first and finds the order
 * unpaid. It asks for it again (the same create, which WeChat Pay answers
 * with the same code_url) instead of ending SUCCEEDED with nothing for
 * the payer to pay with. */
Test(trades, wechat_create_answered_too_late_still_gives_the_code_url,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24], *out = NULL;
  const char *otn = pt_unique("lost");
  pt_stack_env(&s, "PAYTASK_WORKER_ATTEMPT_TIMEOUT_MS", "1000");
  start(&s, "wechat", "60");
  sim_rule(&s, otn, "\"latency_ms\":2500");
  pay_body(body, sizeof body, "wechat", otn, 650, 0, 600);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  const char *st = "";
  for (int i = 0; i < 100 && strcmp(st, "RETRY_WAIT") != 0; i++) {
    usleep(50000);
    cr_assert_eq(pt_api_get(&s, id, 0, &out), 200);
    pt_json(out, &doc);
    free(out);
    st = pt_json_str(&doc, "status");
    st = st != NULL && strcmp(st, "RETRY_WAIT") == 0 ? "RETRY_WAIT" : "";
    bson_destroy(&doc);
  }
  cr_assert_str_eq(st, "RETRY_WAIT", "the first create did not time out");
  sim_rule(&s, otn, "\"latency_ms\":0");
  pt_wait_final(&s, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert_not_null(pt_json_str(&doc, "result.code_url"),
                     "the pay task ended without a code_url");
  bson_destroy(&doc);
  cr_assert_geq(pt_sim_stat(&s, otn, "query_calls"), 1,
                "the retry created without asking first");
  cr_assert_eq(pt_stack_stop(&s), 0);
}

/* Waits until the trade of pay task id names its notify task (into nid)
 * and that task waits for a retry (RETRY_WAIT in its Redis hash), for up to
 * timeout_s in all. */
static void wait_notify_retry(pt_stack_t *s, const char *id, char nid[24],
                              int timeout_s) {
  char st[32] = "";
  bson_t doc;
  nid[0] = '\0';
  for (int i = 0; i < timeout_s * 50 && strcmp(st, "RETRY_WAIT") != 0; i++) {
    if (nid[0] == '\0') {
      char *out = NULL;
      pt_api_get(s, id, 0, &out);
      pt_json(out, &doc);
      free(out);
      const char *nt = pt_json_str(&doc, "trade.notify_task");
      if (nt != NULL)
        snprintf(nid, 24, "%s", nt);
      bson_destroy(&doc);
    }
    if (nid[0] != '\0') {
      redisContext *rc = pt_test_redis();
      redisReply *rr = redisCommand(rc, "HGET pt:task:%s status", nid);
      snprintf(st, sizeof st, "%s",
               rr != NULL && rr->str != NULL ? rr->str : "");
      freeReplyObject(rr);
      redisFree(rc);
    }
    if (strcmp(st, "RETRY_WAIT") != 0)
      usleep(20000);
  }
  cr_assert(nid[0] != '\0', "the trade never named its notify task");
  cr_assert_str_eq(st, "RETRY_WAIT", "the notify task %s never waited to "
                   "retry (last status \"%s\")", nid, st);
}

/* A close waits out the last second of its window held in the worker; when
 * it falls due while the worker's only slot (worker.concurrency = 1) is in a
 * slow call, it waits for the slot and then runs, once. */
Test(trades, close_due_while_at_concurrency_limit_waits_then_runs,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24], slow_id[24], otn[64], slow_otn[64];
  snprintf(otn, sizeof otn, "%s", pt_unique("lim")); /* a static buffer */
  snprintf(slow_otn, sizeof slow_otn, "%s", pt_unique("slow"));
  pt_stack_env(&s, "PAYTASK_WORKER_CONCURRENCY", "1");
  pt_stack_vhost(&s); /* queues no other test's leftovers reach */
  start(&s, "alipay", "60");
  pay_body(body, sizeof body, "alipay", otn, 800, 0, 5);
  int64_t t0 = pt_now_ms();
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  /* The one slot: a call of 8 s, across the close's due time (5 s). */
  sim_rule(&s, slow_otn, "\"latency_ms\":8000");
  pay_body(body, sizeof body, "alipay", slow_otn, 801, 0, 600);
  pt_submit_ok(&s, body, slow_id);
  long waiting = -1;
  for (int i = 0; i < 120 && waiting < 1; i++) {
    usleep(100000);
    waiting = pt_worker_heartbeat(s.workers[0], "waiting");
  }
  cr_assert_geq(waiting, 1, "the close never waited for the slot");
  /* Past the close's due time (5 s), the slow call still holds the slot:
   * the close has not run. */
  int64_t due_past = t0 + 6000 - pt_now_ms();
  if (due_past > 0)
    pt_test_sleep_ms((int)due_past);
  char *out = NULL;
  cr_assert_eq(pt_api_get(&s, slow_id, 0, &out), 200, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "RUNNING",
                   "the slow call no longer holds the slot: %s", out);
  bson_destroy(&doc);
  free(out);
  cr_assert_eq(pt_sim_stat(&s, otn, "closes"), 0,
               "the close ran while the only slot was taken");
  pt_wait_final(&s, slow_id, 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  wait_closed_after_window(&s, id, 20);
  cr_assert_eq(pt_sim_stat(&s, otn, "closes"), 1);
  /* Exit 0 under the sanitizers: the kept delivery was freed once. */
  cr_assert_eq(pt_stack_stop(&s), 0);
}

Test(trades, notify_retried_until_success, .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  receiver_t r;
  char body[512], id[24];
  const char *otn = pt_unique("nfy");
  receiver_start(&r, 3);
  start(&s, "alipay", "30");
  pay_body(body, sizeof body, "alipay", otn, 100, r.port, 600);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  buyer_pays(&s, otn);
  /* The notify task is paytask's own: a client cannot cancel it (which
   * would leave the merchant never told). Asked while it waits for its
   * next try, when a client's task could be cancelled. */
  char notify_task[24], url[160];
  wait_notify_retry(&s, id, notify_task, 11);
  char *refusal = NULL;
  snprintf(url, sizeof url, "%s/v1/tasks/%s/cancel", s.api_url, notify_task);
  cr_assert_eq(pt_http("POST", url, "dev-token-change-me", "", NULL, &refusal),
               409, "a notify task was cancelled: %s", refusal);
  cr_assert(strstr(refusal, "schedules this task itself") != NULL, "%s",
            refusal);
  free(refusal);
  for (int i = 0; i < 300 && receiver_count(&r) < 4; i++)
    usleep(100000);
  cr_assert_eq(receiver_count(&r), 4, "tries: %d", receiver_count(&r));
  for (int i = 0; i < 100; i++) {
    char *out = NULL;
    pt_api_get(&s, id, 0, &out);
    pt_json(out, &doc);
    free(out);
    const char *ns = pt_json_str(&doc, "trade.notify_status");
    int done = ns != NULL && strcmp(ns, "DELIVERED") == 0;
    bson_destroy(&doc);
    if (done)
      break;
    cr_assert(i < 99, "notify_status never became DELIVERED");
    usleep(100000);
  }
  check_notification(&r, id);
  sleep(2);
  cr_assert_eq(receiver_count(&r), 4, "delivered more than once");
  cr_assert_eq(pt_stack_stop(&s), 0);
  receiver_stop(&r);
}

/* The SRE replays notification task nid of pay task id: the replay is
 * delivered, the receiver has had `received` notifications in all, and
 * the trade says DELIVERED. */
static void replay_notification(pt_stack_t *s, receiver_t *r, const char *id,
                                const char *nid, int received) {
  char url[160], rid[24], *out = NULL;
  bson_t doc;
  snprintf(url, sizeof url, "%s/v1/tasks/%s/replay", s->api_url, nid);
  cr_assert_eq(pt_http("POST", url, PT_TEST_TOKEN, "", NULL, &out), 202, "%s",
               out);
  pt_json(out, &doc);
  free(out);
  snprintf(rid, sizeof rid, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  pt_wait_final(s, rid, 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert_str_eq(pt_json_str(&doc, "replay_of"), nid);
  bson_destroy(&doc);
  cr_assert_eq(receiver_count(r), received);
  check_notification(r, id);
  wait_trade(s, id, "SUCCEEDED", 5, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.notify_status"), "DELIVERED");
  bson_destroy(&doc);
}

/* A merchant that never answers "success": the notification is given up
 * loudly after the last retry, and an SRE replays it once the merchant is
 * fixed. */
Test(trades, notify_given_up_then_replayed, .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  receiver_t r;
  char body[512], id[24], nid[24], *out = NULL;
  const char *otn = pt_unique("gvup");
  receiver_start(&r, 1000);
  start(&s, "wechat", "30");
  pay_body(body, sizeof body, "wechat", otn, 300, r.port, 600);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  buyer_pays(&s, otn);
  /* 1 try + 5 retries a second apart (notify.schedule = 1,1,1,1,1). */
  const char *ns = NULL;
  for (int i = 0; i < 300; i++) {
    pt_api_get(&s, id, 0, &out);
    pt_json(out, &doc);
    free(out);
    ns = pt_json_str(&doc, "trade.notify_status");
    if (ns != NULL && strcmp(ns, "NOTIFY_FAILED") == 0)
      break;
    bson_destroy(&doc);
    ns = NULL;
    usleep(100000);
  }
  cr_assert_not_null(ns, "the notification was never given up");
  snprintf(nid, sizeof nid, "%s", pt_json_str(&doc, "trade.notify_task"));
  bson_destroy(&doc);
  cr_assert_eq(receiver_count(&r), 6, "tries: %d", receiver_count(&r));
  pt_api_get(&s, nid, 0, &out);
  pt_json(out, &doc);
  free(out);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "notify_rejected");
  cr_assert_str_eq(pt_json_str(&doc, "type"), "notify");
  bson_destroy(&doc);

  /* The merchant is fixed; the SRE replays the notification. */
  pthread_mutex_lock(&r.mu);
  r.fail_first = 0;
  pthread_mutex_unlock(&r.mu);
  replay_notification(&s, &r, id, nid, 7);
  char mid[48];
  snprintf(mid, sizeof mid, "%s:6", nid);
  cr_assert_eq(pt_queue_drain_count("paytask.dead", mid), 1,
               "the given-up notification is not in the dead queue");
  cr_assert_eq(pt_stack_stop(&s), 0);
  receiver_stop(&r);
}

/* Stack s started with the channels' configuration (channel_env) and the
 * extra variables given (NAME, VALUE pairs, NULL-ended), which win over
 * channel_env's; then an alipay trade for otn is created and paid, with
 * its notifications going to receiver r. */
static void paid_with_notify(pt_stack_t *s, receiver_t *r, const char *otn,
                             char id[24], const char *const *env) {
  char body[512];
  bson_t doc;
  channel_env(s, "alipay", "30");
  for (; env != NULL && env[0] != NULL; env += 2)
    pt_stack_env(s, env[0], env[1]);
  pt_stack_start(s, 1, "--notify-schedule-ms=300,300,600,1000");
  pay_body(body, sizeof body, "alipay", otn, 400, r->port, 600);
  pt_submit_ok(s, body, id);
  pt_wait_final(s, id, 20, &doc);
  bson_destroy(&doc);
  buyer_pays(s, otn);
}

/* A notification that ends in the dead queue without running out of
 * tries (here its retry reaches a worker that cannot run it) is given up
 * as loudly as one that ran out: its trade says NOTIFY_FAILED, not
 * PENDING for good. */
Test(trades, a_notification_sent_to_the_dead_queue_is_notify_failed,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  receiver_t r;
  char id[24], nid[24] = "";
  bson_t doc;
  const char *env[] = {"PAYTASK_NOTIFY_SCHEDULE", "5", NULL};
  receiver_start(&r, 1);
  /* Queues of its own: no retry left by another test reaches the
   * receiver (its port may be one that test's receiver had). */
  pt_stack_vhost(&s);
  paid_with_notify(&s, &r, pt_unique("deadnote"), id, env);
  /* The first try is refused by the merchant: the notification waits 5 s
   * for its retry. */
  wait_notify_retry(&s, id, nid, 20);
  /* Its retry reaches a worker without the alipay channel. */
  cr_assert_eq(pt_stack_stop_worker(&s, 0, 20), 0);
  pt_stack_env(&s, "PAYTASK_CHANNEL_ALIPAY_APP_ID", "");
  pt_stack_add_worker(&s);
  pt_wait_final(&s, nid, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "worker_refused");
  bson_destroy(&doc);
  wait_trade(&s, id, "SUCCEEDED", 5, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.notify_status"), "NOTIFY_FAILED");
  bson_destroy(&doc);
  cr_assert_eq(receiver_count(&r), 1);
  cr_assert_eq(pt_stack_stop(&s), 0);
  receiver_stop(&r);
}

/* Waits for the paid trade of pay task id to settle and for its
 * notification task (nid) to end, within 30 s; doc is that task. */
static void wait_notification_final(pt_stack_t *s, const char *id,
                                    char nid[24], bson_t *doc) {
  wait_trade(s, id, "SUCCEEDED", 10, doc);
  snprintf(nid, 24, "%s", pt_json_str(doc, "trade.notify_task"));
  bson_destroy(doc);
  /* The relay submits it a moment after the trade settled. */
  for (int i = 0; i < 100 && !pt_redis_has_task(nid); i++)
    usleep(100000);
  pt_wait_final(s, nid, 30, doc);
}

/* A notification whose client has no secret at the worker (a token given
 * a new client before notify.secrets has it) is not sent unsigned, and is
 * not dropped either: it is retried on notify.schedule, then given up
 * loudly, to be replayed once the secret is there. */
Test(trades, a_notification_without_its_secret_is_retried_then_dead,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  receiver_t r;
  char id[24], nid[24], mid[48], *out = NULL;
  bson_t doc;
  const char *env[] = {"PAYTASK_API_TOKENS", PT_TEST_TOKEN ":submit+read:shop",
                       "PAYTASK_NOTIFY_SCHEDULE", "1", NULL};
  receiver_start(&r, 0);
  pt_stack_vhost(&s); /* the dead queue counted is this test's own */
  paid_with_notify(&s, &r, pt_unique("nosecret"), id, env);
  wait_notification_final(&s, id, nid, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "no_notify_secret");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 2,
               "not retried on notify.schedule (1 retry)");
  bson_destroy(&doc);
  pt_api_get(&s, id, 0, &out);
  pt_json(out, &doc);
  free(out);
  cr_assert_str_eq(pt_json_str(&doc, "trade.notify_status"), "NOTIFY_FAILED");
  bson_destroy(&doc);
  cr_assert_eq(receiver_count(&r), 0, "a notification was sent unsigned");
  snprintf(mid, sizeof mid, "%s:2", nid);
  cr_assert_eq(pt_queue_drain_count("paytask.dead", mid), 1,
               "the notification is not in the dead queue to be replayed");
  cr_assert_eq(pt_stack_stop(&s), 0);
  receiver_stop(&r);
}

/* A notify_url at an address the workers may not reach (a name that
 * resolves to an internal address; here the api lists loopback and the
 * worker does not) is never connected to. The notification is given up at
 * once and loudly, not retried for hours, and it is replayed once the
 * operator lists the network. */
Test(trades, a_notification_to_a_refused_address_is_given_up_then_replayed,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  receiver_t r;
  char body[512], id[24], nid[24], mid[48];
  bson_t doc;
  const char *otn = pt_unique("refused");
  receiver_start(&r, 0);
  pt_stack_vhost(&s); /* the dead queue counted is this test's own */
  channel_env(&s, "alipay", "30");
  pt_stack_start(&s, 0, "--notify-schedule-ms=300,300,600,1000");
  pt_stack_env(&s, "PAYTASK_NOTIFY_ALLOW_NETWORKS", "");
  pt_stack_add_worker(&s);
  pay_body(body, sizeof body, "alipay", otn, 400, r.port, 600);
  pt_submit_ok(&s, body, id);
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  buyer_pays(&s, otn);
  /* notify.schedule is the default (15 s, 15 s, …): a retry would keep it
   * from ending within 30 s. */
  wait_notification_final(&s, id, nid, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "notify_url_refused");
  const char *msg = pt_json_str(&doc, "error.message");
  cr_assert(msg != NULL && strstr(msg, "127.0.0.1") != NULL &&
                strstr(msg, "loopback") != NULL &&
                strstr(msg, "notify.allow_networks") != NULL,
            "the error does not say what was refused: %s", msg);
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 1, "it was retried");
  bson_destroy(&doc);
  wait_trade(&s, id, "SUCCEEDED", 5, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.notify_status"), "NOTIFY_FAILED");
  bson_destroy(&doc);
  const char *given_up[] = {"notify_given_up", nid, NULL};
  cr_assert(pt_stack_log_wait(&s, "worker0.log", given_up, 5),
            "the worker did not log the notification given up");
  cr_assert_eq(receiver_count(&r), 0, "the refused address was reached");
  snprintf(mid, sizeof mid, "%s:1", nid);
  cr_assert_eq(pt_queue_drain_count("paytask.dead", mid), 1,
               "the notification is not in the dead queue to be replayed");

  /* The operator lists the merchant's network; the SRE replays. */
  cr_assert_eq(pt_stack_stop_worker(&s, 0, 20), 0);
  pt_stack_env(&s, "PAYTASK_NOTIFY_ALLOW_NETWORKS", "127.0.0.1");
  pt_stack_add_worker(&s);
  replay_notification(&s, &r, id, nid, 1);
  cr_assert_eq(pt_stack_stop(&s), 0);
  receiver_stop(&r);
}

/* ---- callbacks that must be refused ---------------------------------------- */

static char *read_file(const char *path) {
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "%s", path);
  static char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return strdup(buf);
}

static char *url_encode(const char *s) {
  char *out = malloc(strlen(s) * 3 + 1), *o = out;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~')
      *o++ = (char)c;
    else
      o += sprintf(o, "%%%02X", c);
  }
  *o = '\0';
  return out;
}

/* An Alipay notification for otn signed with the key in key_file. */
static char *alipay_notification(const char *key_file, const char *otn,
                                 const char *amount, const char *notify_id) {
  pt_crypto_kv_t kv[] = {{"notify_time", "2026-12-01 12:00:00"},
                         {"notify_type", "trade_status_sync"},
                         {"notify_id", notify_id},
                         {"app_id", "2021000000000001"},
                         {"charset", "utf-8"},
                         {"version", "1.0"},
                         {"sign_type", "RSA2"},
                         {"trade_no", "2026120122001400000000000001"},
                         {"out_trade_no", otn},
                         {"trade_status", "TRADE_SUCCESS"},
                         {"total_amount", amount}};
  size_t n = sizeof kv / sizeof kv[0];
  char *text, *sig;
  size_t len, slen;
  pt_crypto_key_t *key;
  char *pem = read_file(key_file);
  cr_assert_eq(pt_crypto_key_new_private(pem, strlen(pem), &key, NULL), 0);
  free(pem);
  cr_assert_eq(pt_crypto_alipay_string_to_sign(
                   kv, n, PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE, &text, &len, NULL),
               0);
  cr_assert_eq(
      pt_crypto_rsa_sign(key, PT_CRYPTO_SHA256, text, len, &sig, &slen, NULL),
      0);
  pt_crypto_key_destroy(key);
  free(text);
  char *form = calloc(1, 8192);
  for (size_t i = 0; i < n; i++) {
    char *v = url_encode(kv[i].value);
    snprintf(form + strlen(form), 8192 - strlen(form), "%s%s=%s",
             i ? "&" : "", kv[i].key, v);
    free(v);
  }
  char *v = url_encode(sig);
  snprintf(form + strlen(form), 8192 - strlen(form), "&sign=%s", v);
  free(v);
  free(sig);
  return form;
}

static long post_alipay(pt_stack_t *s, const char *form, char **out) {
  char url[128];
  const char *h[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  snprintf(url, sizeof url, "%s/v1/channels/alipay/notify", s->api_url);
  return pt_http("POST", url, NULL, form, h, out);
}

Test(trades, alipay_forged_replayed_mismatched_callbacks, .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24], q[64], *out = NULL;
  const char *otn = pt_unique("forge");
  snprintf(q, sizeof q, "test.events.%s", pt_unique("q"));
  events_queue(q);
  start(&s, "alipay", "60");
  sim_rule(&s, otn, "\"callback\":\"withhold\"");
  pay_body(body, sizeof body, "alipay", otn, 1500, 0, 600);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);

  /* Forged: signed with the app's key, not Alipay's. */
  char *f = alipay_notification(key_path("alipay_app_private.pem"), otn,
                                "15.00", "forged-1");
  cr_assert_eq(post_alipay(&s, f, &out), 200);
  cr_assert_str_neq(out, "success", "a forged notification was taken");
  free(out);
  free(f);
  /* Mismatched: Alipay's signature, but not the trade's amount. */
  f = alipay_notification(key_path("alipay_platform_private.pem"), otn,
                          "1.50", "mismatch-1");
  cr_assert_eq(post_alipay(&s, f, &out), 200);
  cr_assert_str_neq(out, "success", "a mismatched amount was taken");
  free(out);
  free(f);
  /* Tampered: a valid notification with one value changed after signing. */
  f = alipay_notification(key_path("alipay_platform_private.pem"), otn,
                          "15.00", "tamper-1");
  char *p = strstr(f, "TRADE_SUCCESS");
  cr_assert_not_null(p);
  memcpy(p, "TRADE_CLOSED\0", 13);
  memmove(p + 12, p + 13, strlen(p + 13) + 1);
  cr_assert_eq(post_alipay(&s, f, &out), 200);
  cr_assert_str_neq(out, "success", "a tampered notification was taken");
  free(out);
  free(f);
  /* Nothing changed. */
  pt_api_get(&s, id, 0, &out);
  pt_json(out, &doc);
  free(out);
  cr_assert_str_eq(pt_json_str(&doc, "trade.status"), "NOTPAY");
  bson_destroy(&doc);

  /* The genuine one is taken, and a replay of it changes nothing. */
  f = alipay_notification(key_path("alipay_platform_private.pem"), otn,
                          "15.00", "genuine-1");
  cr_assert_eq(post_alipay(&s, f, &out), 200);
  cr_assert_str_eq(out, "success");
  free(out);
  wait_trade(&s, id, "SUCCEEDED", 10, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "trade.settled_by"), "callback");
  bson_destroy(&doc);
  cr_assert_eq(post_alipay(&s, f, &out), 200);
  cr_assert_str_eq(out, "success", "a duplicate must be acknowledged");
  free(out);
  free(f);
  int distinct, total;
  count_events(q, id, "trade.final", 4, &distinct, &total);
  cr_assert_eq(distinct, 1, "trade events: %d", distinct);
  cr_assert_eq(pt_stack_stop(&s), 0);
}

/* The body of the api's last answer to post_wechat. */
static char wechat_ack[512];

static long post_wechat(pt_stack_t *s, const char *body, const char *ts,
                        const char *nonce, const char *sig,
                        const char *serial) {
  char url[128], h1[600], h2[80], h3[80], h4[96];
  snprintf(url, sizeof url, "%s/v1/channels/wechat/notify", s->api_url);
  snprintf(h1, sizeof h1, "Wechatpay-Signature: %s", sig);
  snprintf(h2, sizeof h2, "Wechatpay-Timestamp: %s", ts);
  snprintf(h3, sizeof h3, "Wechatpay-Nonce: %s", nonce);
  snprintf(h4, sizeof h4, "Wechatpay-Serial: %s", serial);
  const char *h[] = {"Content-Type: application/json", h1, h2, h3, h4, NULL};
  char *out = NULL;
  long st = pt_http("POST", url, NULL, body, h, &out);
  snprintf(wechat_ack, sizeof wechat_ack, "%s", out ? out : "");
  free(out);
  return st;
}

/* A WeChat Pay notification for otn, encrypted with the APIv3 key and
 * signed with the key in key_file at time ts. */
static char *wechat_notification(const char *otn, int64_t total) {
  char plain[1024];
  snprintf(plain, sizeof plain,
           "{\"mchid\":\"1900000001\",\"appid\":\"wxd678efh567hg6787\","
           "\"out_trade_no\":\"%s\",\"transaction_id\":"
           "\"4200000000202612010000000001\",\"trade_type\":\"NATIVE\","
           "\"trade_state\":\"SUCCESS\",\"trade_state_desc\":\"ok\","
           "\"success_time\":\"2026-12-01T12:00:00+08:00\",\"amount\":"
           "{\"total\":%lld,\"payer_total\":%lld,\"currency\":\"CNY\","
           "\"payer_currency\":\"CNY\"}}",
           otn, (long long)total, (long long)total);
  char *ct;
  size_t ctlen;
  cr_assert_eq(pt_crypto_aes_gcm_encrypt_b64(APIV3_KEY, 32, "abcdefghijkl",
                                             "transaction", plain,
                                             strlen(plain), &ct, &ctlen, NULL),
               0);
  char *out;
  cr_assert(asprintf(&out,
                     "{\"id\":\"EV-%s\",\"create_time\":\"2026-12-01T12:00:00+"
                     "08:00\",\"event_type\":\"TRANSACTION.SUCCESS\","
                     "\"resource_type\":\"encrypt-resource\",\"summary\":"
                     "\"ok\",\"resource\":{\"original_type\":\"transaction\","
                     "\"algorithm\":\"AEAD_AES_256_GCM\",\"ciphertext\":\"%s\","
                     "\"associated_data\":\"transaction\",\"nonce\":"
                     "\"abcdefghijkl\"}}",
                     otn, ct) > 0);
  free(ct);
  return out;
}

static char *wechat_sign(const char *key_file, const char *ts,
                         const char *nonce, const char *body) {
  pt_crypto_key_t *key;
  char *msg, *sig, *pem = read_file(key_file);
  size_t len, slen;
  cr_assert_eq(pt_crypto_key_new_private(pem, strlen(pem), &key, NULL), 0);
  free(pem);
  cr_assert_eq(pt_crypto_wechat_response_message(ts, nonce, body, strlen(body),
                                                 &msg, &len, NULL),
               0);
  cr_assert_eq(
      pt_crypto_rsa_sign(key, PT_CRYPTO_SHA256, msg, len, &sig, &slen, NULL),
      0);
  free(msg);
  pt_crypto_key_destroy(key);
  return sig;
}

Test(trades, wechat_forged_stale_mismatched_callbacks, .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24], now[24], stale[24], *out = NULL;
  const char *otn = pt_unique("wforge");
  const char *serial = "PUB_KEY_ID_0000000000000001";
  start(&s, "wechat", "60");
  sim_rule(&s, otn, "\"callback\":\"withhold\"");
  pay_body(body, sizeof body, "wechat", otn, 1500, 0, 600);
  pt_submit_ok(&s, body, id);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  snprintf(now, sizeof now, "%lld", (long long)time(NULL));
  snprintf(stale, sizeof stale, "%lld", (long long)time(NULL) - 3600);
  const char *plat = key_path("wechat_platform_private.pem");
  const char *merch = key_path("wechat_merchant_private.pem");

  char *n = wechat_notification(otn, 1500);
  char *sig = wechat_sign(merch, now, "nonce-forged", n);
  cr_assert_geq(post_wechat(&s, n, now, "nonce-forged", sig, serial), 400,
                "a forged notification was taken");
  /* Which check failed is in paytask's log, not told to the forger. */
  cr_assert_not_null(strstr(wechat_ack, "could not be verified"), "%s",
                     wechat_ack);
  cr_assert_null(strstr(wechat_ack, "ignature"), "%s", wechat_ack);
  free(sig);
  sig = wechat_sign(plat, stale, "nonce-stale", n);
  cr_assert_geq(post_wechat(&s, n, stale, "nonce-stale", sig, serial), 400,
                "a stale notification was taken");
  free(sig);
  sig = wechat_sign(plat, now, "nonce-serial", n);
  cr_assert_geq(post_wechat(&s, n, now, "nonce-serial", sig, "OTHER_SERIAL"),
                400, "a notification under an unknown serial was taken");
  free(sig);
  free(n);
  n = wechat_notification(otn, 15); /* not the trade's amount */
  sig = wechat_sign(plat, now, "nonce-amount", n);
  cr_assert_geq(post_wechat(&s, n, now, "nonce-amount", sig, serial), 400,
                "a mismatched amount was taken");
  free(sig);
  free(n);
  pt_api_get(&s, id, 0, &out);
  pt_json(out, &doc);
  free(out);
  cr_assert_str_eq(pt_json_str(&doc, "trade.status"), "NOTPAY");
  bson_destroy(&doc);

  n = wechat_notification(otn, 1500);
  sig = wechat_sign(plat, now, "nonce-good", n);
  long st = post_wechat(&s, n, now, "nonce-good", sig, serial);
  cr_assert(st == 200 || st == 204, "the genuine notification got %ld", st);
  wait_trade(&s, id, "SUCCEEDED", 10, &doc);
  bson_destroy(&doc);
  st = post_wechat(&s, n, now, "nonce-good", sig, serial); /* replayed */
  cr_assert(st == 200 || st == 204, "a duplicate must be acknowledged: %ld",
            st);
  free(sig);
  free(n);
  cr_assert_eq(pt_stack_stop(&s), 0);
}

/* ---- the outbox ------------------------------------------------------------ */

Test(trades, worker_killed_before_publish_event_still_once, .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char q[64], id[24];
  snprintf(q, sizeof q, "test.events.%s", pt_unique("q"));
  events_queue(q);
  pt_stack_env(&s, "PAYTASK_FAULT", "exit_after_final");
  pt_stack_start(&s, 1, NULL);
  char *body = pt_task_body(pt_unique("kill"), 100, NULL, NULL);
  pt_submit_ok(&s, body, id);
  free(body);
  /* The worker records the final state, then dies before anything reads
   * the outbox or acknowledges the delivery. */
  for (int i = 0; i < 100; i++) {
    if (waitpid(s.workers[0], NULL, WNOHANG) == s.workers[0]) {
      s.workers[0] = 0;
      break;
    }
    cr_assert(i < 99, "the faulty worker did not die");
    usleep(100000);
  }
  /* A healthy worker relays the event; the delivery is redelivered to it
   * and recognised as done. */
  s.nextra = 0;
  pt_stack_add_worker(&s);
  bson_t doc;
  pt_wait_final(&s, id, 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  int distinct, total;
  count_events(q, id, "task.final", 8, &distinct, &total);
  cr_assert_eq(distinct, 1, "task.final events: %d (total %d)", distinct,
               total);
  cr_assert_eq(total, 1, "the event was published %d times", total);
  cr_assert_eq(pt_stack_stop(&s), 0, "a process did not stop cleanly");
}

/* A follow-up the broker returns (its delay queue deleted: an operator's
 * mistake) stays pending in the outbox. The relay reads its own pending
 * entries again after a short backoff, once its reconnect has declared
 * the queue again: the trade's close is scheduled within seconds, where
 * it used to wait 40 s for another relay to claim it. */
Test(trades, a_refused_follow_up_is_sent_again_within_seconds,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24], otn[64];
  bson_t doc;
  snprintf(otn, sizeof otn, "%s", pt_unique("refused"));
  pt_stack_vhost(&s); /* the queue deleted is this test's own */
  start(&s, "alipay", "1,1,1,1,1,1,1,1,1,1");
  /* The close of a trade open for 600 s, due in a little less when it is
   * made, waits in the 300 s level. */
  pt_rabbitmqctl("delete_queue --vhost '%s' paytask.delay.300s",
                 pt_amqp_vhost());
  sim_rule(&s, otn, "\"callback\":\"withhold\"");
  pay_body(body, sizeof body, "alipay", otn, 500, 0, 600);
  pt_submit_ok(&s, body, id);
  pt_wait_final(&s, id, 20, &doc);
  bson_destroy(&doc);
  long depth = -1;
  for (int i = 0; i < 150 && depth != 1; i++) {
    usleep(100000);
    depth = pt_queue_depth("paytask.delay.300s");
  }
  cr_assert_eq(depth, 1,
               "the trade's close was not scheduled within 15 s (the delay "
               "queue holds %ld)", depth);
  cr_assert_eq(pt_stack_stop(&s), 0);
  /* Said scheduled once, when it was: not also when it was refused. */
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "test \"$(grep -c 'event=task_scheduled .*type=close' "
           "%s/worker0.log)\" -eq 1",
           s.logdir);
  cr_assert_eq(system(cmd), 0, "the close was not said scheduled once (log: "
               "%s/worker0.log)", s.logdir);
}

/* A worker whose configuration lacks a channel that the api has (a
 * configuration rolled out to the api first, say) cannot run that
 * channel's task. The task ends FAILED (worker_refused), loudly and with no
 * channel call, instead of staying PENDING for good while its message sat
 * in the dead queue; once a rightly configured worker runs, an SRE's
 * replay of it goes through. */
Test(trades, a_task_a_worker_cannot_run_fails_and_is_replayed,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char body[512], id[24], rid[24], otn[64], url[160], *out = NULL;
  bson_t doc;
  snprintf(otn, sizeof otn, "%s", pt_unique("skew"));
  pt_stack_vhost(&s); /* the dead queue counted is this test's own */
  channel_env(&s, "alipay", "30");
  pt_stack_start(&s, 0, NULL);
  pt_stack_env(&s, "PAYTASK_CHANNEL_ALIPAY_APP_ID", "");
  int unconfigured = pt_stack_add_worker(&s);
  pay_body(body, sizeof body, "alipay", otn, 700, 0, 600);
  pt_submit_ok(&s, body, id);
  pt_wait_final(&s, id, 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "worker_refused");
  const char *msg = pt_json_str(&doc, "error.message");
  cr_assert(msg != NULL && strstr(msg, "channel.alipay.app_id") != NULL,
            "the error does not say what the worker lacks: %s",
            msg ? msg : "(none)");
  bson_destroy(&doc);
  cr_assert_eq(pt_sim_stat(&s, otn, "create_ok"), -1,
               "the channel was called for a task the worker refused");
  cr_assert_eq(pt_queue_depth("paytask.dead"), 1,
               "the refused task is not in the dead queue");
  cr_assert_eq(pt_stack_stop_worker(&s, unconfigured, 20), 0);

  /* The workers' configuration is fixed; the SRE replays the task. */
  pt_stack_env(&s, "PAYTASK_CHANNEL_ALIPAY_APP_ID", "2021000000000001");
  pt_stack_add_worker(&s);
  snprintf(url, sizeof url, "%s/v1/tasks/%s/replay", s.api_url, id);
  cr_assert_eq(pt_http("POST", url, PT_TEST_TOKEN, "", NULL, &out), 202,
               "%s", out);
  pt_json(out, &doc);
  free(out);
  snprintf(rid, sizeof rid, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  pt_wait_final(&s, rid, 20, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  cr_assert_str_eq(pt_json_str(&doc, "replay_of"), id);
  bson_destroy(&doc);
  cr_assert_eq(pt_sim_stat(&s, otn, "create_ok"), 1);
  cr_assert_eq(pt_stack_stop(&s), 0);
}

/* How many times the relay's group read outbox entry `entry` (0: not
 * pending), waiting up to timeout_s for at least `want`. */
static long outbox_deliveries(redisContext *r, const char *entry, long want,
                              int timeout_s) {
  long n = 0;
  for (int t = 0; t <= timeout_s * 10; t++) {
    redisReply *rep =
        redisCommand(r, "XPENDING pt:outbox relay %s %s 1", entry, entry);
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_ARRAY, "XPENDING: %s",
              rep != NULL && rep->type == REDIS_REPLY_ERROR ? rep->str
                                                            : r->errstr);
    n = rep->elements == 1 && rep->element[0]->elements == 4
            ? (long)rep->element[0]->element[3]->integer
            : 0;
    freeReplyObject(rep);
    if (n >= want || t == timeout_s * 10)
      break;
    pt_test_sleep_ms(100);
  }
  return n;
}

/* An outbox entry that fails every time (here its trade's key holds the
 * wrong type, so reading its spec fails) is retried, but does not hold up
 * the entries after it: a task's result is still published. */
Test(trades, an_entry_that_always_fails_does_not_hold_up_the_rest,
     .timeout = 120) {
  pt_stack_t s;
  memset(&s, 0, sizeof s);
  char q[64], id[24], entry[48], parent[32];
  snprintf(q, sizeof q, "test.events.%s", pt_unique("q"));
  events_queue(q);
  snprintf(parent, sizeof parent, "%ld%ld", (long)getpid(),
           (long)time(NULL)); /* a task id: digits */
  redisContext *r = pt_test_redis();
  freeReplyObject(redisCommand(r, "SET pt:trade:%s not-a-hash", parent));
  redisReply *rep = redisCommand(r, "XADD pt:outbox * kind spawn type query "
                                    "parent %s task_id 2 due 0", parent);
  cr_assert(rep != NULL && rep->type == REDIS_REPLY_STRING);
  snprintf(entry, sizeof entry, "%s", rep->str);
  freeReplyObject(rep);
  pt_stack_start(&s, 1, NULL);
  /* The entry has failed and is being retried: read twice, still pending. */
  cr_assert_geq(outbox_deliveries(r, entry, 2, 20), 2,
                "the failing entry was not read again");
  char *body = pt_task_body(pt_unique("behind"), 100, NULL, NULL);
  pt_submit_ok(&s, body, id);
  free(body);
  int distinct, total;
  count_events(q, id, "task.final", 15, &distinct, &total);
  cr_assert_eq(distinct, 1, "the task's result was not published while an "
               "entry before it kept failing");
  /* Neither dropped nor taken for done. */
  cr_assert_geq(outbox_deliveries(r, entry, 1, 0), 1,
                "the failing entry is no longer pending");
  cr_assert_eq(pt_stack_stop(&s), 0);
  freeReplyObject(redisCommand(r, "XACK pt:outbox relay %s", entry));
  freeReplyObject(redisCommand(r, "XDEL pt:outbox %s", entry));
  freeReplyObject(redisCommand(r, "DEL pt:trade:%s", parent));
  redisFree(r);
}

/* `paytask events tail --queue q` with its output redirected to file;
 * returns its exit status. */
static int events_tail(const char *queue, const char *file) {
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "PAYTASK_CONFIG=/dev/null %s events tail --queue '%s' --count 1 "
           "> %s 2>/dev/null",
           getenv("PAYTASK_BIN"), queue, file);
  int st = system(cmd);
  cr_assert(WIFEXITED(st), "events tail did not exit");
  return WEXITSTATUS(st);
}

Test(trades, events_tail_acknowledges_only_what_it_wrote) {
  char q[64], out[96], line[256] = "";
  pt_error_t err;
  snprintf(q, sizeof q, "test.tail.%s", pt_unique("q"));
  snprintf(out, sizeof out, "/tmp/%s.out", q);
  /* The subscriber's queue, declared as events tail declares it. */
  amqp_connection_state_t c = pt_amqp_connect_sync(
      pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ"), 3000, &err);
  cr_assert_not_null(c, "%s", err.message);
  amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 0, 1, 0, 0,
                     amqp_empty_table);
  cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
  const char *event = "{\"event_id\":\"1-0\",\"event\":\"task.final\"}";
  pt_amqp_publish_raw("", q, event, strlen(event), NULL);

  cr_assert_eq(events_tail(q, "/dev/full"), 1,
               "writing to a full disk must fail");
  cr_assert_eq(pt_queue_depth(q), 1, "an event it could not write was lost");

  cr_assert_eq(events_tail(q, out), 0);
  FILE *f = fopen(out, "r");
  cr_assert_not_null(f);
  cr_assert_not_null(fgets(line, sizeof line, f));
  fclose(f);
  unlink(out);
  cr_assert_str_eq(line, "{\"event_id\":\"1-0\",\"event\":\"task.final\"}\n");
  cr_assert_eq(pt_queue_depth(q), 0, "a written event must be acknowledged");

  cr_assert_eq(events_tail("paytask.tasks", "/dev/null"), 2,
               "paytask's own queues are refused");
  amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0);
  pt_amqp_close_sync(c);
}
