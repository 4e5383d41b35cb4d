/* Every bad input gets its status and error code, and nothing is published
 * (issue 3). No worker runs, so a published task would stay in the queue. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <pthread.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/pt_api_reply.h"
#include "core/pt_buf.h"
#include "core/pt_http_client.h"
#include "core/pt_httpd.h"
#include "core/pt_store.h"
#include "tests/support/pt_proxy.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

static pt_stack_t stack;
static pt_stack_t nobroker; /* an api that cannot reach the broker */

static void fini(void) {
  pt_stack_fini(&stack);
  pt_stack_fini(&nobroker);
}

TestSuite(api_input, .fini = fini, .timeout = 120);

#define B "\"type\":\"pay\",\"channel\":\"sim\",\"currency\":\"CNY\",\"subject\":\"s\""

typedef struct {
  char body[400];
  int status;
  char code[32];
} bad_t;

#define ZH10 "中中中中中中中中中中"

ParameterizedTestParameters(api_input, bad_bodies) {
  static bad_t cases[] = {
      {"{", 400, "invalid_json"},
      {"[]", 400, "invalid_json"},
      {"{" B "}", 400, "missing_field"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":12.5}", 400, "invalid_amount"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":0}", 400, "invalid_amount"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":-1}", 400, "invalid_amount"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":\"5\"}", 400, "invalid_amount"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":100000001}", 400,
       "invalid_amount"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"currency\":\"usd\","
       "\"subject\":\"s\",\"out_trade_no\":\"A1\",\"amount\":1}",
       400, "invalid_currency"},
      {"{\"type\":\"refund\",\"channel\":\"sim\",\"currency\":\"CNY\","
       "\"subject\":\"s\",\"out_trade_no\":\"A1\",\"amount\":1}",
       400, "invalid_task_type"},
      {"{\"type\":\"pay\",\"channel\":\"paypal\",\"currency\":\"CNY\","
       "\"subject\":\"s\",\"out_trade_no\":\"A1\",\"amount\":1}",
       400, "invalid_channel"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":1,\"retry\":{\"retry_times\":6}}",
       400, "invalid_retry"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":1,\"extra\":true}", 400,
       "unknown_field"},
      {"{" B ",\"out_trade_no\":\"has space\",\"amount\":1}", 400,
       "invalid_out_trade_no"},
      /* MongoDB would refuse the task's record for these keys. */
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":1,\"params\":{\"\":1}}",
       400, "invalid_params"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":1,"
       "\"params\":{\"a\":[{\"b.c\":1}]}}",
       400, "invalid_params"},
      /* A notify_url at an address that is neither public nor listed
       * (the stack lists 127.0.0.0/8 only). */
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":1,"
       "\"notify_url\":\"http://169.254.169.254/latest/meta-data/\"}",
       400, "invalid_notify_url"},
      {"{" B ",\"out_trade_no\":\"A1\",\"amount\":1,"
       "\"notify_url\":\"http://[::1]:8080/n\"}",
       400, "invalid_notify_url"},
      /* The message echoes the key, cut to fit: on a character boundary. */
      {"{\"" ZH10 ZH10 ZH10 ZH10 ZH10 ZH10 ZH10 ZH10 ZH10 ZH10 "\":1}", 400,
       "unknown_field"},
  };
  return cr_make_param_array(bad_t, cases, sizeof cases / sizeof cases[0]);
}

static void expect_error(long st, const char *out, int status,
                         const char *code) {
  bson_t doc;
  cr_assert_eq(st, status, "answered %ld, want %d: %s", st, status, out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), code, "%s", out);
  cr_assert_not_null(pt_json_str(&doc, "error.message"));
  bson_destroy(&doc);
}

ParameterizedTest(bad_t *c, api_input, bad_bodies) {
  char *out = NULL, key[96], idem[128];
  pt_stack_start(&stack, 0, NULL);
  long before = pt_queue_depth("paytask.tasks");
  cr_assert_geq(before, 0, "the work queue cannot be read");
  snprintf(key, sizeof key, "%s", pt_unique("bad"));
  long st = pt_api_submit(&stack, c->body, key, &out);
  expect_error(st, out, c->status, c->code);
  free(out);
  cr_assert_eq(pt_queue_depth("paytask.tasks"), before,
               "a refused task was published");
  snprintf(idem, sizeof idem, PT_KEY_IDEM "%s", key);
  cr_assert(!pt_redis_has_key(idem), "a refused task was recorded");
}

/* An answer libbson cannot write as JSON (a string that is not UTF-8) is
 * still a JSON error, never an empty body: pt_reply_doc on a server and a
 * client on one loop. */
typedef struct {
  pt_httpd_t *srv;
  pt_http_client_t *cli;
  long code;
  char body[256];
} unwritable_t;

static void answer_unwritable(pt_httpd_req_t *req, void *arg) {
  bson_t doc = BSON_INITIALIZER;
  (void)arg;
  bson_append_utf8(&doc, "subject", -1, "\xe4\xb8", 2); /* half of 中 */
  pt_reply_doc(req, 200, &doc);
  bson_destroy(&doc);
}

static void on_unwritable(const pt_http_response_t *res, void *arg) {
  unwritable_t *u = arg;
  u->code = res->http_code;
  snprintf(u->body, sizeof u->body, "%s", res->body ? res->body : "");
  pt_http_client_destroy(u->cli);
  pt_httpd_destroy(u->srv);
}

Test(api_input, an_answer_not_in_utf8_is_still_a_json_error) {
  uv_loop_t loop;
  pt_error_t err;
  unwritable_t u = {0};
  char url[64];
  uv_loop_init(&loop);
  pt_httpd_opts_t o = {.host = "127.0.0.1", .handler = answer_unwritable};
  u.srv = pt_httpd_new(&loop, &o, &err);
  cr_assert_not_null(u.srv, "%s", err.message);
  u.cli = pt_http_client_new(&loop, &err);
  cr_assert_not_null(u.cli, "%s", err.message);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", pt_httpd_port(u.srv));
  pt_http_request_t r = {.url = url};
  cr_assert_eq(pt_http_request(u.cli, &r, on_unwritable, &u), 0);
  pt_test_run_loop(&loop, 10000, "one answer");
  expect_error(u.code, u.body, 500, "internal_error");
  pt_test_close_loop(&loop);
}

Test(api_input, auth_size_and_routes) {
  char url[128], *out = NULL;
  /* A queue of this test's own: a message an earlier test left on its way
   * (a retry coming back from its delay queue) does not move its depth. */
  pt_stack_vhost(&stack);
  pt_stack_start(&stack, 0, NULL);
  long before = pt_queue_depth("paytask.tasks");
  cr_assert_geq(before, 0, "the work queue cannot be read");
  char *body = pt_task_body(pt_unique("AUTH"), 100, NULL, NULL);
  snprintf(url, sizeof url, "%s/v1/tasks", stack.api_url);
  {
    long st_ = pt_http("POST", url, NULL, body, NULL, &out);
    expect_error(st_, out, 401,
               "unauthorized");
  }
  free(out);
  {
    long st_ = pt_http("POST", url, "wrong-token", body, NULL, &out);
    expect_error(st_, out, 401,
               "unauthorized");
  }
  free(out);
  /* 64 KiB is the default limit. */
  size_t big = 70 * 1024;
  char *huge = malloc(big + 1);
  memset(huge, ' ', big);
  huge[0] = '{';
  huge[big - 1] = '}';
  huge[big] = '\0';
  long st = pt_http("POST", url, "dev-token-change-me", huge, NULL, &out);
  expect_error(st, out, 413, "body_too_large");
  free(out);
  free(huge);
  {
    long st_ = pt_http("GET", url, "dev-token-change-me", NULL, NULL, &out);
    expect_error(st_,
               out, 405, "method_not_allowed");
  }
  free(out);
  snprintf(url, sizeof url, "%s/v1/nothing", stack.api_url);
  {
    long st_ = pt_http("GET", url, "dev-token-change-me", NULL, NULL, &out);
    expect_error(st_,
               out, 404, "not_found");
  }
  free(out);
  snprintf(url, sizeof url, "%s/v1/tasks/1?wait=abc", stack.api_url);
  {
    long st_ = pt_http("GET", url, "dev-token-change-me", NULL, NULL, &out);
    expect_error(st_,
               out, 400, "invalid_wait");
  }
  free(out);
  snprintf(url, sizeof url, "%s/v1/tasks/1?wait=31", stack.api_url);
  {
    long st_ = pt_http("GET", url, "dev-token-change-me", NULL, NULL, &out);
    expect_error(st_,
               out, 400, "invalid_wait");
  }
  free(out);
  /* An empty wait, or two, is no wait of 0 (which would read task 1). */
  static const char *const bad_waits[] = {"wait=", "wait=1&wait=2",
                                          "x=1&wait="};
  for (size_t i = 0; i < sizeof bad_waits / sizeof bad_waits[0]; i++) {
    snprintf(url, sizeof url, "%s/v1/tasks/1?%s", stack.api_url, bad_waits[i]);
    long st_ = pt_http("GET", url, "dev-token-change-me", NULL, NULL, &out);
    expect_error(st_, out, 400, "invalid_wait");
    free(out);
    st_ = pt_api_submit_query(&stack, body, NULL, bad_waits[i], &out);
    expect_error(st_, out, 400, "invalid_wait");
    free(out);
  }
  /* A parameter whose name only ends in "wait" is not wait. */
  snprintf(url, sizeof url, "%s/v1/tasks/1?nowait=abc", stack.api_url);
  {
    long st_ = pt_http("GET", url, "dev-token-change-me", NULL, NULL, &out);
    expect_error(st_, out, 404, "task_not_found");
  }
  free(out);
  const char *bad_key[] = {"Idempotency-Key: has space", NULL};
  snprintf(url, sizeof url, "%s/v1/tasks", stack.api_url);
  {
    long st_ = pt_http("POST", url, "dev-token-change-me", body, bad_key,
                       &out);
    expect_error(st_,
               out, 400, "invalid_idempotency_key");
  }
  free(out);
  free(body);
  cr_assert_eq(pt_queue_depth("paytask.tasks"), before,
               "a refused task was published");
}

Test(api_input, broker_unreachable_is_503_and_nothing_accepted) {
  char *out = NULL, url[128];
  bson_t doc;
  /* The api starts, but its broker connection cannot be made. */
  pt_stack_start_without_broker(&stack);
  char *body = pt_task_body(pt_unique("NOBROKER"), 100, NULL, NULL);
  {
    long st_ = pt_api_submit(&stack, body, NULL, &out);
    expect_error(st_, out, 503,
               "broker_unavailable");
  }
  free(out);
  free(body);
  snprintf(url, sizeof url, "%s/readyz", stack.api_url);
  cr_assert_eq(pt_http("GET", url, NULL, NULL, NULL, &out), 503);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "broker"), "unreachable");
  bson_destroy(&doc);
  free(out);
}

/* A client retrying a submit whose answer it lost, while the broker is
 * down: the submit was accepted, so the retry answers its task, not "503,
 * nothing was accepted" (which would send the client to a new trade). A
 * task still PENDING cannot be queued again: 503, saying it may have been
 * queued. A new key is refused as before. */
Test(api_input, a_repeat_while_the_broker_is_down_answers_its_task) {
  char *out = NULL, done_key[64], pending_key[64], id[24], pending_id[24];
  bson_t doc;
  pt_stack_vhost(&stack); /* the PENDING task stays in a queue of its own */
  pt_stack_start(&stack, 1, NULL);
  snprintf(done_key, sizeof done_key, "%s", pt_unique("downdone"));
  char *done = pt_task_body(pt_unique("DOWNDONE"), 100, NULL, NULL);
  cr_assert_eq(pt_api_submit(&stack, done, done_key, &out), 202, "%s", out);
  pt_json(out, &doc);
  snprintf(id, sizeof id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);
  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  /* No worker from here on: the next task stays PENDING. */
  cr_assert_eq(pt_stack_stop_worker(&stack, 0, 20), 0);
  snprintf(pending_key, sizeof pending_key, "%s", pt_unique("downpend"));
  char *pending = pt_task_body(pt_unique("DOWNPEND"), 100, NULL, NULL);
  cr_assert_eq(pt_api_submit(&stack, pending, pending_key, &out), 202, "%s",
               out);
  pt_json(out, &doc);
  snprintf(pending_id, sizeof pending_id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);

  pt_stack_start_without_broker(&nobroker);

  cr_assert_eq(pt_api_submit(&nobroker, done, done_key, &out), 200, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "task_id"), id);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  free(out);
  /* With ?wait, the same final task. */
  cr_assert_eq(pt_api_submit_query(&nobroker, done, done_key, "wait=2", &out),
               200, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "task_id"), id);
  bson_destroy(&doc);
  free(out);
  /* The key with another body is a conflict, as ever. */
  char *other = pt_task_body(pt_unique("DOWNOTHER"), 100, NULL, NULL);
  long st = pt_api_submit(&nobroker, other, done_key, &out);
  expect_error(st, out, 409, "idempotency_conflict");
  free(out);
  /* PENDING: it cannot be queued again now. */
  st = pt_api_submit(&nobroker, pending, pending_key, &out);
  expect_error(st, out, 503, "broker_unavailable");
  cr_assert_not_null(strstr(out, "earlier submit"), "%s", out);
  free(out);
  cr_assert_eq(pt_api_get(&stack, pending_id, 0, &out), 200, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "PENDING");
  bson_destroy(&doc);
  free(out);
  /* A new key, and no key: nothing is accepted. */
  char new_key[64];
  snprintf(new_key, sizeof new_key, "%s", pt_unique("downnew"));
  st = pt_api_submit(&nobroker, other, new_key, &out);
  expect_error(st, out, 503, "broker_unavailable");
  free(out);
  st = pt_api_submit(&nobroker, other, NULL, &out);
  expect_error(st, out, 503, "broker_unavailable");
  free(out);
  free(done);
  free(pending);
  free(other);
}

/* RabbitMQ's default memory watermark, which the alarm test moved. */
static void lift_alarm(void) {
  pt_rabbitmqctl("set_vm_memory_high_watermark 0.4");
  pt_stack_fini(&stack);
}

/* What readyz says of the broker, waiting up to 20 s for want. */
static void wait_broker_state(const char *want) {
  char url[128], *out = NULL;
  const char *st = "";
  bson_t doc;
  snprintf(url, sizeof url, "%s/readyz", stack.api_url);
  for (int i = 0; i < 200; i++) {
    long code = pt_http("GET", url, NULL, NULL, NULL, &out);
    cr_assert(code == 200 || code == 503, "readyz answered %ld: %s", code,
              out ? out : "");
    pt_json(out, &doc);
    int done = strcmp(st = pt_json_str(&doc, "broker"), want) == 0;
    bson_destroy(&doc);
    free(out);
    if (done)
      return;
    usleep(100 * 1000);
  }
  cr_assert_fail("readyz never said the broker was %s", want);
}

typedef struct {
  const char *body;
  long status;
  char *out;
} submit_arg_t;

static void *submit_main(void *arg) {
  submit_arg_t *a = arg;
  a->status = pt_api_submit(&stack, a->body, NULL, &a->out);
  return NULL;
}

/* A memory alarm: the broker blocks publishers. It says so
 * (connection.blocked) once the api publishes; that task waits for its
 * confirm, readyz says the broker is blocked, and the next submits are
 * refused at once with 503 rather than stalling the api on a publish that
 * cannot go out. Once the alarm clears, the waiting task is accepted and
 * new ones are too. */
Test(api_input, a_broker_alarm_is_503_and_nothing_accepted,
     .fini = lift_alarm) {
  char *out = NULL;
  pthread_t th;
  pt_stack_vhost(&stack); /* a queue no other test's leftovers reach */
  pt_stack_start(&stack, 0, NULL);
  long before = pt_queue_depth("paytask.tasks");
  cr_assert_geq(before, 0, "the work queue cannot be read");
  pt_rabbitmqctl("set_vm_memory_high_watermark absolute 1");
  char *first = pt_task_body(pt_unique("ALARM"), 100, NULL, NULL);
  submit_arg_t a = {first, 0, NULL};
  cr_assert_eq(pthread_create(&th, NULL, submit_main, &a), 0);
  wait_broker_state("blocked");
  char *body = pt_task_body(pt_unique("ALARM"), 101, NULL, NULL);
  long st = pt_api_submit(&stack, body, NULL, &out);
  expect_error(st, out, 503, "broker_unavailable");
  free(out);
  pt_rabbitmqctl("set_vm_memory_high_watermark 0.4");
  pthread_join(th, NULL);
  cr_assert_eq(a.status, 202, "the task sent as the alarm began: %ld %s",
               a.status, a.out ? a.out : "");
  free(a.out);
  free(first);
  long after = pt_queue_depth("paytask.tasks");
  cr_assert_eq(after, before + 1,
               "only the task sent before the alarm was known is queued: "
               "%ld before, %ld after",
               before, after);
  wait_broker_state("ok");
  cr_assert_eq(pt_api_submit(&stack, body, NULL, &out), 202, "%s", out);
  free(out);
  free(body);
}

/* One request on a client's connection: its status, whether it opened a
 * new connection, and whether the answer said how long its body was. */
static long on_one_connection(CURL *e, const char *method, const char *url,
                              const char *body, long *connects,
                              pt_buf_t *out) {
  long code = 0;
  curl_off_t length = -1;
  out->len = 0;
  curl_easy_setopt(e, CURLOPT_URL, url);
  if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  } else {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  }
  cr_assert_eq(curl_easy_perform(e), CURLE_OK, "%s %s", method, url);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, connects);
  curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
  cr_assert_eq(length, (curl_off_t)out->len,
               "%s %s answered %ld without its length", method, url, code);
  return code;
}

/* A client keeps one connection across submits, refusals and reads (h2o
 * 2.2 closed it after every answer but a 200 until the api gave each
 * answer its length). */
Test(api_input, one_connection_carries_submits_refusals_and_reads) {
  char url[128], hdr[128];
  long connects = -1;
  pt_buf_t out = {0};
  pt_stack_start(&stack, 0, NULL);
  CURL *e = curl_easy_init();
  struct curl_slist *h = NULL;
  snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", PT_TEST_TOKEN);
  h = curl_slist_append(h, hdr);
  h = curl_slist_append(h, "Content-Type: application/json");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, pt_buf_curl_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &out);
  snprintf(url, sizeof url, "%s/v1/tasks", stack.api_url);
  char *body = pt_task_body(pt_unique("KEEP"), 100, NULL, NULL);

  cr_assert_eq(on_one_connection(e, "POST", url, body, &connects, &out), 202);
  cr_assert_eq(connects, 1);
  bson_t doc;
  pt_buf_append(&out, "", 1);
  pt_json(out.data, &doc);
  char task[128];
  snprintf(task, sizeof task, "%s/v1/tasks/%s", stack.api_url,
           pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);

  cr_assert_eq(on_one_connection(e, "POST", url, "{", &connects, &out), 400);
  cr_assert_eq(connects, 0, "a refusal closed the connection");
  cr_assert_eq(on_one_connection(e, "GET", task, NULL, &connects, &out), 200);
  cr_assert_eq(connects, 0, "the read after it needed a new connection");
  free(body);
  body = pt_task_body(pt_unique("KEEP"), 100, NULL, NULL);
  cr_assert_eq(on_one_connection(e, "POST", url, body, &connects, &out), 202);
  cr_assert_eq(connects, 0, "a second submit needed a new connection");
  free(body);
  free(out.data);
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
}

/* A pay task's out_trade_no is its trade at the channel: a second pay task
 * with the same one (a client that tried again without its
 * Idempotency-Key) is refused while the first may still make or has made
 * that trade. Before, both ran, got the channel's one trade, and one
 * payment settled both: two trade.final events, two notifications. One
 * that ended FAILED gives its out_trade_no up. */
Test(api_input, a_second_pay_task_for_one_out_trade_no_is_refused) {
  char otn[64], first[24], again[24], key[64], *out = NULL;
  bson_t doc;
  pt_stack_start(&stack, 1, NULL);
  snprintf(otn, sizeof otn, "%s", pt_unique("ONCE"));
  snprintf(key, sizeof key, "%s", pt_unique("once-key"));
  char *body = pt_task_body(otn, 100, NULL, NULL);
  cr_assert_eq(pt_api_submit(&stack, body, key, &out), 202, "%s", out);
  pt_json(out, &doc);
  snprintf(first, sizeof first, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);

  for (int round = 0; round < 2; round++) { /* PENDING or running, then
                                               SUCCEEDED */
    cr_assert_eq(pt_api_submit(&stack, body, NULL, &out), 409, "%s", out);
    pt_json(out, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "error.code"), "out_trade_no_in_use");
    cr_assert_not_null(strstr(pt_json_str(&doc, "error.message"), first),
                       "the refusal does not name the task: %s", out);
    bson_destroy(&doc);
    free(out);
    /* The same submit with its key is the first task, as before. */
    cr_assert_eq(pt_api_submit(&stack, body, key, &out), 200, "%s", out);
    pt_json(out, &doc);
    cr_assert_str_eq(pt_json_str(&doc, "task_id"), first);
    bson_destroy(&doc);
    free(out);
    if (round == 0) {
      pt_wait_final(&stack, first, 30, &doc);
      cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
      bson_destroy(&doc);
    }
  }
  free(body);

  /* Declined: FAILED with no trade; a new task may use it. */
  snprintf(otn, sizeof otn, "%s", pt_unique("DECLINED"));
  body = pt_task_body(otn, 100, "{\"decline\": true}", NULL);
  pt_submit_ok(&stack, body, first);
  pt_wait_final(&stack, first, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  bson_destroy(&doc);
  pt_submit_ok(&stack, body, again);
  cr_assert_str_neq(again, first);
  free(body);
  pt_wait_final(&stack, again, 30, &doc); /* nothing left in the queue */
  bson_destroy(&doc);
}

/* A submit whose script Redis ran but whose answer was lost (the
 * connection dropped) is answered 503, and nothing is published. Its task,
 * recorded PENDING, would hold its out_trade_no for good (every new submit
 * of it answered 409); it is withdrawn once Redis answers again, and the
 * submit, sent again, runs. */
/* Starts the stack (one worker) with its Redis connections through a
 * proxy that loses the answer to the first command naming marker. */
static pt_proxy_t *stack_through_proxy(const char *marker) {
  char uri[128], db[16] = "0";
  int port = 0;
  const char *real = getenv("PAYTASK_REDIS_URI");
  cr_assert(real != NULL &&
                sscanf(real, "redis://127.0.0.1:%d/%15s", &port, db) >= 1,
            "PAYTASK_REDIS_URI is not redis://127.0.0.1:PORT/DB: %s",
            real ? real : "(unset)");
  pt_proxy_t *px = pt_proxy_start("127.0.0.1", port, marker, 300);
  snprintf(uri, sizeof uri, "redis://127.0.0.1:%d/%s", pt_proxy_port(px), db);
  pt_stack_env(&stack, "PAYTASK_REDIS_URI", uri);
  pt_stack_start(&stack, 1, NULL);
  return px;
}

/* The task holding pay out_trade_no otn on the sim channel, in id; waits
 * until its status (read through the api) is no longer PENDING and
 * returns it in doc. Fails the test after 15 s. */
static void otn_holder_settled(const char *otn, char id[24], bson_t *doc) {
  char *out = NULL;
  redisContext *r = pt_test_redis();
  redisReply *rep = redisCommand(r, "GET %ssim:%s", PT_KEY_OTN, otn);
  cr_assert(rep != NULL && rep->type == REDIS_REPLY_STRING,
            "the submit script did not run (nothing to withdraw)");
  snprintf(id, 24, "%s", rep->str);
  freeReplyObject(rep);
  redisFree(r);
  for (int i = 0; i < 150; i++) {
    long code = pt_api_get(&stack, id, 0, &out);
    if (code == 503) { /* the api has not reconnected to Redis yet */
      free(out);
      pt_test_sleep_ms(100);
      continue;
    }
    cr_assert_eq(code, 200, "%s", out);
    pt_json(out, doc);
    free(out);
    const char *st = pt_json_str(doc, "status");
    if (st != NULL && strcmp(st, "PENDING") != 0)
      return;
    bson_destroy(doc);
    pt_test_sleep_ms(100);
  }
  cr_assert_fail("task %s is still PENDING after 15 s", id);
}

Test(api_input, a_submit_whose_answer_redis_lost_is_withdrawn) {
  char otn[64], id[24], again[24], *out = NULL;
  bson_t doc;
  snprintf(otn, sizeof otn, "%s", pt_unique("LOSTREPLY"));
  /* The api's (and the worker's) Redis connections go through a proxy
   * that loses the answer to the one command naming otn. */
  pt_proxy_t *px = stack_through_proxy(otn);
  char *body = pt_task_body(otn, 100, NULL, NULL);
  cr_assert_eq(pt_api_submit(&stack, body, NULL, &out), 503, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "store_unavailable");
  bson_destroy(&doc);
  free(out);
  cr_assert_eq(pt_proxy_fired(px), 1, "the submit script was not sent");

  /* The script ran: the out_trade_no names the task it recorded, which
   * is withdrawn. */
  otn_holder_settled(otn, id, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "CANCELLED");
  cr_assert_str_eq(pt_json_str(&doc, "error.code"), "store_unavailable");
  cr_assert_eq(pt_json_int(&doc, "attempts", -1), 0, "it ran");
  bson_destroy(&doc);

  /* Its out_trade_no is free: the submit sent again runs. */
  pt_submit_ok(&stack, body, again);
  cr_assert_str_neq(again, id);
  pt_wait_final(&stack, again, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "SUCCEEDED");
  bson_destroy(&doc);
  free(body);
  cr_assert_eq(pt_stack_stop(&stack), 0);
  pt_proxy_stop(px);
}

/* A replay whose submit lost its Redis answer (503) is withdrawn as any
 * such submit, and its source's replay mark goes with it: the replay run
 * again is taken, not answered "already replayed" while nothing runs. */
Test(api_input, a_replay_whose_answer_redis_lost_can_be_run_again) {
  char otn[64], id[24], rid[24], url[160], *out = NULL;
  bson_t doc;
  snprintf(otn, sizeof otn, "%s", pt_unique("LOSTREPLAY"));
  pt_proxy_t *px = stack_through_proxy(""); /* armed below */
  char *body = pt_task_body(otn, 100, "{\"decline\": true}", NULL);
  pt_submit_ok(&stack, body, id);
  free(body);
  pt_wait_final(&stack, id, 30, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "FAILED");
  bson_destroy(&doc);
  pt_proxy_arm(px, otn);
  snprintf(url, sizeof url, "%s/v1/tasks/%s/replay", stack.api_url, id);
  cr_assert_eq(pt_http("POST", url, PT_TEST_TOKEN, "", NULL, &out), 503, "%s",
               out);
  free(out);
  cr_assert_eq(pt_proxy_fired(px), 1, "the replay's submit was not sent");
  otn_holder_settled(otn, rid, &doc);
  cr_assert_str_neq(rid, id, "the replay's submit did not run");
  cr_assert_str_eq(pt_json_str(&doc, "status"), "CANCELLED");
  bson_destroy(&doc);
  long st = pt_http("POST", url, PT_TEST_TOKEN, "", NULL, &out);
  cr_assert_eq(st, 202, "the replay run again was refused: %s", out);
  pt_json(out, &doc);
  free(out);
  snprintf(rid, sizeof rid, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  pt_wait_final(&stack, rid, 30, &doc); /* declined again: FAILED */
  bson_destroy(&doc);
  cr_assert_eq(pt_stack_stop(&stack), 0);
  pt_proxy_stop(px);
}

/* A submit as token tok with Idempotency-Key key; the task id answered
 * (202 or 200, which it returns) goes to id. */
static long submit_as(const char *tok, const char *body, const char *key,
                      char id[24]) {
  char url[160], hdr[300], *out = NULL;
  const char *headers[] = {hdr, NULL};
  bson_t doc;
  snprintf(url, sizeof url, "%s/v1/tasks", stack.api_url);
  snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key);
  long st = pt_http("POST", url, tok, body, headers, &out);
  cr_assert(st == 200 || st == 202, "HTTP %ld: %s", st, out);
  pt_json(out, &doc);
  snprintf(id, 24, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(out);
  return st;
}

/* Idempotency keys are per client (tokens naming different clients): two
 * clients that happen to use one key each get a task of their own, not
 * the other's task nor a 409; each one's repeat answers its own task. */
Test(api_input, idempotency_keys_are_per_client) {
  char key[64], a[24], b[24], again[24];
  pt_stack_env(&stack, "PAYTASK_API_TOKENS",
               "tok-a:submit+read:shop-a,tok-b:submit+read:shop-b,"
               PT_TEST_TOKEN);
  pt_stack_start(&stack, 1, NULL);
  snprintf(key, sizeof key, "%s", pt_unique("shared-key"));
  char *body_a = pt_task_body(pt_unique("PERCLIENT-A"), 100, NULL, NULL);
  char *body_b = pt_task_body(pt_unique("PERCLIENT-B"), 200, NULL, NULL);
  cr_assert_eq(submit_as("tok-a", body_a, key, a), 202);
  cr_assert_eq(submit_as("tok-b", body_b, key, b), 202,
               "client b's first submit with its key was not taken");
  cr_assert_str_neq(a, b);
  cr_assert_eq(submit_as("tok-b", body_b, key, again), 200);
  cr_assert_str_eq(again, b);
  cr_assert_eq(submit_as("tok-a", body_a, key, again), 200);
  cr_assert_str_eq(again, a);
  free(body_a);
  free(body_b);
}

/* tok's request (method, /v1/tasks/{id} plus suffix); the status. */
static long task_call(const char *tok, const char *method, const char *id,
                      const char *suffix, char **out) {
  char url[200];
  snprintf(url, sizeof url, "%s/v1/tasks/%s%s", stack.api_url, id, suffix);
  return pt_http(method, url, tok, strcmp(method, "POST") == 0 ? "" : NULL,
                 NULL, out);
}

/* A client's tasks are its own: another client's token is told there is
 * no such task when it reads or cancels one (task ids are easy to guess),
 * and the task is unchanged; a token with the admin scope sees them all. */
Test(api_input, a_client_sees_and_cancels_only_its_own_tasks) {
  char a[24], *out = NULL;
  bson_t doc;
  pt_stack_env(&stack, "PAYTASK_API_TOKENS",
               "tok-a:submit+read:shop-a,tok-b:submit+read:shop-b,"
               "tok-ops:read+admin," PT_TEST_TOKEN);
  pt_stack_start(&stack, 0, NULL); /* no worker: the task stays PENDING */
  char *body = pt_task_body(pt_unique("OWN"), 100, NULL, NULL);
  cr_assert_eq(submit_as("tok-a", body, pt_unique("own-key"), a), 202);
  free(body);
  static const struct {
    const char *method, *suffix;
  } calls[] = {{"GET", ""}, {"GET", "?wait=1"}, {"POST", "/cancel"}};
  for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
    long st = task_call("tok-b", calls[i].method, a, calls[i].suffix, &out);
    expect_error(st, out, 404, "task_not_found");
    cr_assert_null(strstr(out, "PENDING"), "the answer tells: %s", out);
    free(out);
  }
  cr_assert_eq(task_call("tok-ops", "GET", a, "", &out), 200, "%s", out);
  free(out);
  cr_assert_eq(task_call("tok-a", "GET", a, "", &out), 200, "%s", out);
  pt_json(out, &doc);
  free(out);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "PENDING",
                   "another client's cancel changed the task");
  cr_assert_str_eq(pt_json_str(&doc, "client"), "shop-a");
  bson_destroy(&doc);
  cr_assert_eq(task_call("tok-a", "POST", a, "/cancel", &out), 200, "%s",
               out);
  free(out);
}

/* GET is a read only at /v1/tasks/{id}: on …/replay it is refused, not
 * answered with the task (replay needs the admin scope, a read does not). */
Test(api_input, a_get_on_replay_is_not_a_read) {
  char *out = NULL;
  pt_stack_start(&stack, 0, NULL);
  char *body = pt_task_body(pt_unique("GETREPLAY"), 100, NULL, NULL);
  cr_assert_eq(pt_api_submit(&stack, body, NULL, &out), 202, "%s", out);
  bson_t doc;
  pt_json(out, &doc);
  free(out);
  char id[24];
  snprintf(id, sizeof id, "%s", pt_json_str(&doc, "task_id"));
  bson_destroy(&doc);
  free(body);
  long st = task_call(PT_TEST_TOKEN, "GET", id, "/replay", &out);
  expect_error(st, out, 405, "method_not_allowed");
  free(out);
}

/* A header or a query parameter the api reads once, given twice or
 * with a value it does not know, is refused and changes nothing: a proxy
 * in front may read it otherwise than the api would. */
Test(api_input, headers_and_parameters_given_twice_are_refused) {
  char url[160], *out = NULL, key1[96], key2[96], idem[128];
  pt_stack_start(&stack, 0, NULL);
  long before = pt_queue_depth("paytask.tasks");
  snprintf(url, sizeof url, "%s/v1/tasks", stack.api_url);
  snprintf(key1, sizeof key1, "Idempotency-Key: %s", pt_unique("twice-a"));
  snprintf(key2, sizeof key2, "Idempotency-Key: %s", pt_unique("twice-b"));
  const char *keys[] = {key1, key2, NULL};
  char *body = pt_task_body(pt_unique("TWICE"), 100, NULL, NULL);
  long st = pt_http("POST", url, PT_TEST_TOKEN, body, keys, &out);
  expect_error(st, out, 400, "invalid_idempotency_key");
  free(out);
  snprintf(idem, sizeof idem, PT_KEY_IDEM "%s", key1 + 17);
  cr_assert(!pt_redis_has_key(idem), "a refused task was recorded");
  const char *auth[] = {"Authorization: Bearer " PT_TEST_TOKEN, NULL};
  st = pt_http("POST", url, PT_TEST_TOKEN, body, auth, &out);
  expect_error(st, out, 401, "unauthorized");
  free(out);
  free(body);
  cr_assert_eq(pt_queue_depth("paytask.tasks"), before,
               "a refused task was published");

  static const char *const forces[] = {"?force=true&force=true", "?force=1",
                                       "?force=yes", "?force"};
  for (size_t i = 0; i < sizeof forces / sizeof forces[0]; i++) {
    snprintf(url, sizeof url, "%s/v1/tasks/1/replay%s", stack.api_url,
             forces[i]);
    st = pt_http("POST", url, PT_TEST_TOKEN, "", NULL, &out);
    expect_error(st, out, 400, "invalid_force");
    free(out);
  }
}

/* /readyz takes no token: with MongoDB unreachable it says so, and not
 * the driver's message (hosts, the authentication it tried). */
Test(api_input, readyz_tells_no_server_details) {
  char url[160], *out = NULL;
  pt_stack_env(&stack, "PAYTASK_MONGODB_URI",
               "mongodb://127.0.0.1:1/paytask?serverSelectionTimeoutMS=300");
  setenv("PT_STACK_NO_READY_WAIT", "1", 1);
  pt_stack_start(&stack, 0, NULL);
  unsetenv("PT_STACK_NO_READY_WAIT");
  snprintf(url, sizeof url, "%s/readyz", stack.api_url);
  cr_assert_eq(pt_http("GET", url, NULL, NULL, NULL, &out), 503, "%s", out);
  bson_t doc;
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "mongodb"), "unreachable", "%s", out);
  bson_destroy(&doc);
  cr_assert_null(strstr(out, "127.0.0.1"), "%s", out);
  free(out);
}

/* Runs `paytask api` with the environment given and returns its exit
 * status, its output in out. */
static int api_exit(const char *env, char *out, size_t len) {
  return pt_test_paytask(env, 20, "api", out, len);
}

/* The shipped development token and notification secret are public: an
 * api listening beyond loopback with either refuses to start, naming the
 * key to set. The address is one of TEST-NET (RFC 5737), on no interface
 * here: an api that went past the check could not listen on it either. */
Test(api_input, public_dev_credentials_off_loopback_are_refused) {
  char out[4096], env[512];
  int port = pt_test_free_port();
  snprintf(env, sizeof env, "PAYTASK_API_LISTEN=192.0.2.1:%d", port);
  cr_assert_eq(api_exit(env, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "set api.tokens") != NULL, "%s", out);
  snprintf(env, sizeof env,
           "PAYTASK_API_LISTEN=192.0.2.1:%d PAYTASK_API_TOKENS=a-real-token",
           port);
  cr_assert_eq(api_exit(env, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "set notify.secrets") != NULL, "%s", out);
  /* The shipped channel keys are public too (a forged "paid" notification
   * would verify), wherever the file is. */
  const char *src = getenv("PAYTASK_SOURCE_DIR");
  cr_assert_not_null(src, "PAYTASK_SOURCE_DIR is not set (run through ctest)");
  snprintf(env, sizeof env,
           "PAYTASK_API_LISTEN=192.0.2.1:%d PAYTASK_API_TOKENS=a-real-token "
           "PAYTASK_NOTIFY_SECRETS=default=a-real-secret "
           "PAYTASK_CHANNEL_ALIPAY_APP_ID=2021000000000000 "
           "PAYTASK_CHANNEL_ALIPAY_PRIVATE_KEY_FILE=%s/conf/dev-keys/"
           "alipay_app_private.pem "
           "PAYTASK_CHANNEL_ALIPAY_PUBLIC_KEY_FILE=%s/conf/dev-keys/"
           "alipay_platform_public.pem",
           port, src, src);
  cr_assert_eq(api_exit(env, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "channel.alipay.public_key_file is a development "
                        "credential") != NULL,
            "%s", out);
}

/* The api speaks HTTP/1.1 only. h2o's default also took cleartext HTTP/2,
 * whose streams each buffer a body up to the size limit, many to one
 * connection. A client asking for h2c is answered in HTTP/1.1; one that
 * opens with HTTP/2's preface is refused. */
Test(api_input, the_api_speaks_http1_only) {
  char url[128];
  long code = 0, version = 0;
  pt_buf_t out = {0};
  pt_stack_start(&stack, 0, NULL);
  snprintf(url, sizeof url, "%s/healthz", stack.api_url);
  CURL *e = curl_easy_init();
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, pt_buf_curl_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &out);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 10L);

  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_0);
  cr_assert_eq(curl_easy_perform(e), CURLE_OK, "GET %s with Upgrade: h2c", url);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &version);
  cr_assert_eq(code, 200, "an h2c upgrade request was answered %ld", code);
  cr_assert_eq(version, (long)CURL_HTTP_VERSION_1_1,
               "an h2c upgrade request was answered in HTTP version %ld",
               version);

  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                   (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
  CURLcode rc = curl_easy_perform(e);
  version = 0;
  curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &version);
  cr_assert(rc != CURLE_OK || version != (long)CURL_HTTP_VERSION_2_0,
            "a request with HTTP/2's preface was served over HTTP/2");
  free(out.data);
  curl_easy_cleanup(e);
}

/* An api or a worker that cannot listen says why and exits 1, having
 * closed what it opened (under the sanitizers a leak would show here). */
Test(api_input, busy_port_is_refused_at_start) {
  static const char *const cmds[][2] = {
      {"api", "PAYTASK_API_LISTEN"},
      {"worker", "PAYTASK_WORKER_METRICS_LISTEN"}};
  char cmd[512], line[1024];
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t len = sizeof a;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
            listen(fd, 1) == 0 &&
            getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    int said = 0, leaked = 0;
    snprintf(cmd, sizeof cmd,
             "PAYTASK_CONFIG=/dev/null %s=127.0.0.1:%d timeout 30 %s %s 2>&1",
             cmds[i][1], ntohs(a.sin_port), getenv("PAYTASK_BIN"), cmds[i][0]);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    while (fgets(line, sizeof line, p) != NULL) {
      said += strstr(line, "_start_failed") != NULL &&
              strstr(line, "address already in use") != NULL;
      leaked += strstr(line, "LeakSanitizer") != NULL;
    }
    int st = pclose(p);
    cr_assert_eq(said, 1, "%s did not say why it could not start", cmds[i][0]);
    cr_assert_eq(leaked, 0, "%s leaked on its way out", cmds[i][0]);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s: exit status %d",
              cmds[i][0], st);
  }
  close(fd);
}

/* The work queue deleted under a running api (an operator's mistake): the
 * broker acknowledges a publish that reaches no queue, so without the
 * mandatory flag the task was answered 202 and lost. It is refused now,
 * and nothing waits PENDING for a message that does not exist. */
Test(api_input, a_task_no_queue_takes_is_refused) {
  char *out = NULL;
  bson_t doc;
  pt_stack_vhost(&stack); /* the queue deleted is this test's own */
  pt_stack_start(&stack, 0, NULL);
  pt_rabbitmqctl("delete_queue --vhost '%s' paytask.tasks", pt_amqp_vhost());
  char *body = pt_task_body(pt_unique("NOQUEUE"), 100, NULL, NULL);
  char key[64];
  snprintf(key, sizeof key, "%s", pt_unique("noqueue"));
  long st = pt_api_submit(&stack, body, key, &out);
  expect_error(st, out, 503, "broker_unavailable");
  free(out);
  /* The refused task is withdrawn: its key is free. The api reconnects
   * by itself, declaring the queue again, and the retried task is
   * taken. */
  char id[24];
  pt_submit_until_taken(&stack, body, key, id);
  cr_assert_eq(pt_api_get(&stack, id, 0, &out), 200, "%s", out);
  pt_json(out, &doc);
  cr_assert_str_eq(pt_json_str(&doc, "status"), "PENDING");
  bson_destroy(&doc);
  free(out);
  free(body);
  cr_assert_eq(pt_queue_depth("paytask.tasks"), 1,
               "the task taken must be in the queue");
}
