#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_task.h"

#define GOOD                                                                 \
  "{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"ORDER-1001\","   \
  "\"amount\":1299,\"currency\":\"CNY\",\"subject\":\"Course: C in depth\""

Test(task, parses_a_good_body_with_defaults) {
  pt_task_t t;
  pt_input_error_t ie;
  const char *b = GOOD "}";
  cr_assert_eq(pt_task_parse(b, strlen(b), PT_PARSE_SUBMIT, 0, &t, &ie), 0,
               "%s", ie.message);
  cr_assert_str_eq(t.out_trade_no, "ORDER-1001");
  cr_assert_eq(t.amount, 1299);
  cr_assert_eq(t.need_retry, 1);
  cr_assert_eq(t.retry_times, 3);
  cr_assert_eq(t.has_params, 0);
  pt_task_destroy(&t);
}

/* Every kind of JSON value is taken in params, at any depth. */
Test(task, params_take_every_json_value) {
  pt_task_t t;
  pt_input_error_t ie;
  const char *b = GOOD ",\"params\":{\"s\":\"中\",\"i\":1,\"big\":"
                  "9007199254740993,\"d\":1.5,\"t\":true,\"n\":null,"
                  "\"o\":{\"a\":[1,\"x\",{\"b\":[false]}]},\"e\":[]}}";
  cr_assert_eq(pt_task_parse(b, strlen(b), PT_PARSE_SUBMIT, 0, &t, &ie), 0,
               "%s", ie.message);
  cr_assert_eq(t.has_params, 1);
  pt_task_destroy(&t);
}

/* Gives t an id and a creation time, writes it as the broker message of
 * attempt n and parses that back into u. */
static void as_message(pt_task_t *t, int attempt, pt_task_t *u) {
  pt_input_error_t ie;
  size_t len;
  t->id = 42;
  strcpy(t->id_str, "42");
  t->created_at_ms = 1704067200000;
  char *msg = pt_task_spec_json(t, attempt, &len);
  cr_assert_eq(pt_task_parse(msg, len, PT_PARSE_MESSAGE, 0, u, &ie), 0,
               "%s: %s", ie.message, msg);
  bson_free(msg);
}

Test(task, message_round_trip) {
  pt_task_t t, u;
  pt_input_error_t ie;
  const char *b = GOOD ",\"params\":{\"sim\":{\"fail_times\":2}},"
                       "\"retry\":{\"need_retry\":true,\"retry_times\":5}}";
  cr_assert_eq(pt_task_parse(b, strlen(b), PT_PARSE_SUBMIT, 0, &t, &ie), 0);
  as_message(&t, 2, &u);
  cr_assert_eq(u.attempt, 2);
  cr_assert_eq(u.id, 42);
  cr_assert_eq(u.retry_times, 5);
  cr_assert_eq(u.has_params, 1);
  cr_assert_eq(u.created_at_ms, 1704067200000);
  pt_task_destroy(&t);
  pt_task_destroy(&u);
}

Test(task, a_client_cannot_set_internal_fields) {
  pt_task_t t;
  pt_input_error_t ie;
  const char *b = GOOD ",\"attempt\":3}";
  cr_assert_neq(pt_task_parse(b, strlen(b), PT_PARSE_SUBMIT, 0, &t, &ie), 0);
  cr_assert_str_eq(ie.code, "unknown_field");
}

typedef struct {
  char body[400];
  char code[32];
} bad_case_t;

ParameterizedTestParameters(task, bad_bodies) {
  static bad_case_t cases[] = {
      {"", "invalid_json"},
      {"not json", "invalid_json"},
      {"[1,2]", "invalid_json"},
      {"{} {}", "invalid_json"},
      {GOOD, "invalid_json"},
      {GOOD ",\"amount\":5}", "invalid_json"},
      {GOOD ",\"notify_url\":null,\"notify_url\":\"https://a.example/\"}",
       "invalid_json"},
      {GOOD ",\"params\":null,\"params\":{}}", "invalid_json"},
      {GOOD ",\"retry\":{},\"retry\":{}}", "invalid_json"},
      /* An unknown key is refused before a later key is looked at. */
      {GOOD ",\"x\":1,\"amount\":5}", "unknown_field"},
      {"{\"channel\":\"sim\",\"out_trade_no\":\"A\",\"amount\":1,"
       "\"currency\":\"CNY\",\"subject\":\"s\"}",
       "missing_field"},
      {GOOD ",\"x\":1}", "unknown_field"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":12.5,\"currency\":\"CNY\",\"subject\":\"s\"}",
       "invalid_amount"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":\"12\",\"currency\":\"CNY\",\"subject\":\"s\"}",
       "invalid_amount"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":0,\"currency\":\"CNY\",\"subject\":\"s\"}",
       "invalid_amount"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":-5,\"currency\":\"CNY\",\"subject\":\"s\"}",
       "invalid_amount"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":1000000000,\"currency\":\"CNY\",\"subject\":\"s\"}",
       "invalid_amount"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":1,\"currency\":\"cny\",\"subject\":\"s\"}",
       "invalid_currency"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":1,\"currency\":\"CNYY\",\"subject\":\"s\"}",
       "invalid_currency"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A B\","
       "\"amount\":1,\"currency\":\"CNY\",\"subject\":\"s\"}",
       "invalid_out_trade_no"},
      {"{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":1,\"currency\":\"CNY\",\"subject\":7}",
       "invalid_type"},
      {"{\"type\":\"Pay!\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
       "\"amount\":1,\"currency\":\"CNY\",\"subject\":\"s\"}",
       "invalid_task_type"},
      {GOOD ",\"retry\":{\"retry_times\":6}}", "invalid_retry"},
      {GOOD ",\"retry\":{\"retry_times\":-1}}", "invalid_retry"},
      {GOOD ",\"retry\":{\"need_retry\":1}}", "invalid_retry"},
      {GOOD ",\"retry\":{\"tries\":1}}", "invalid_retry"},
      {GOOD ",\"retry\":5}", "invalid_retry"},
      {GOOD ",\"notify_url\":\"ftp://x\"}", "invalid_notify_url"},
      /* What libcurl could not call: no host, a space, a bad port. */
      {GOOD ",\"notify_url\":\"http://\"}", "invalid_notify_url"},
      {GOOD ",\"notify_url\":\"http://a b/\"}", "invalid_notify_url"},
      {GOOD ",\"notify_url\":\"http://shop.example:99999/n\"}",
       "invalid_notify_url"},
      {GOOD ",\"params\":[1]}", "invalid_params"},
      /* Keys MongoDB refuses, at any depth, in objects and in arrays. */
      {GOOD ",\"params\":{\"\":1}}", "invalid_params"},
      {GOOD ",\"params\":{\"$set\":1}}", "invalid_params"},
      {GOOD ",\"params\":{\"a.b\":1}}", "invalid_params"},
      {GOOD ",\"params\":{\"a\":{\"b\":{\"\":1}}}}", "invalid_params"},
      {GOOD ",\"params\":{\"a\":[1,{\"$x\":1}]}}", "invalid_params"},
      {GOOD ",\"params\":{\"a\":[[{\"x.y\":1}]]}}", "invalid_params"},
      {GOOD ",\"params\":{\"a\\u0000b\":1}}", "invalid_json"},
      /* Values the task store cannot keep (FerretDB refuses each; the
       * task would never leave Redis), or that JSON has not. */
      {GOOD ",\"params\":{\"a\":\"x\\u0000y\"}}", "invalid_params"},
      {GOOD ",\"params\":{\"a\":{\"$numberDouble\":\"NaN\"}}}",
       "invalid_params"},
      {GOOD ",\"params\":{\"a\":[{\"$numberDouble\":\"-Infinity\"}]}}",
       "invalid_params"},
      {GOOD ",\"params\":{\"a\":[1,[2]]}}", "invalid_params"},
      {GOOD ",\"params\":{\"a\":{\"$oid\":\"5f1b2c3d4e5f6a7b8c9d0e1f\"}}}",
       "invalid_params"},
      {GOOD ",\"params\":{\"a\":{\"$date\":\"2026-01-01T00:00:00Z\"}}}",
       "invalid_params"},
      {GOOD ",\"params\":{\"a\":{\"$numberDecimal\":\"1.5\"}}}",
       "invalid_params"},
      {GOOD ",\"subject\":\"\"}", "invalid_json"},
  };
  return cr_make_param_array(bad_case_t, cases,
                             sizeof cases / sizeof cases[0]);
}

ParameterizedTest(bad_case_t *c, task, bad_bodies) {
  pt_task_t t;
  pt_input_error_t ie = {0};
  cr_assert_neq(pt_task_parse(c->body, strlen(c->body), PT_PARSE_SUBMIT,
                              100000000, &t, &ie),
                0, "accepted: %s", c->body);
  cr_assert_str_eq(ie.code, c->code, "%s → %s (%s)", c->body, ie.code,
                   ie.message);
  cr_assert_gt(strlen(ie.message), 5);
}

/* A broker message repeating one of its own fields is refused like a body
 * repeating a client's field. */
Test(task, a_message_field_given_twice_is_refused) {
  pt_task_t t;
  pt_input_error_t ie;
  const char *m = GOOD ",\"task_id\":\"42\",\"created_at_ms\":1,"
                       "\"attempt\":1,\"attempt\":2}";
  cr_assert_neq(pt_task_parse(m, strlen(m), PT_PARSE_MESSAGE, 0, &t, &ie), 0);
  cr_assert_str_eq(ie.code, "invalid_json", "%s", ie.message);
}

/* A body of many distinct keys is refused as it is read: it took a compare
 * of every key with every other one first (130 s for 1 MB, far past the
 * timeout). */
Test(task, a_large_body_of_distinct_keys_is_refused_in_linear_time,
     .timeout = 60) {
  size_t cap = 1024 * 1024, len = 0;
  char *b = malloc(cap + 32);
  pt_task_t t;
  pt_input_error_t ie;
  b[len++] = '{';
  for (int i = 0; len < cap; i++)
    len += (size_t)snprintf(b + len, 32, "%s\"k%d\":1", i ? "," : "", i);
  b[len++] = '}';
  cr_assert_neq(pt_task_parse(b, len, PT_PARSE_SUBMIT, 0, &t, &ie), 0);
  cr_assert_str_eq(ie.code, "unknown_field", "%s", ie.message);
  free(b);
}

/* params of `levels` nested objects and arrays ({"a":[{"a":[…]}]}), in
 * a body. */
static char *nested_params(int levels, size_t *len) {
  static char b[1024];
  size_t n = (size_t)snprintf(b, sizeof b, "%s", GOOD ",\"params\":");
  for (int i = 0; i < levels; i++)
    n += (size_t)snprintf(b + n, sizeof b - n, "%s",
                          i % 2 ? "[" : i + 1 < levels ? "{\"a\":" : "{");
  for (int i = levels - 1; i >= 0; i--)
    n += (size_t)snprintf(b + n, sizeof b - n, "%s", i % 2 ? "]" : "}");
  n += (size_t)snprintf(b + n, sizeof b - n, "}");
  *len = n;
  return b;
}

Test(task, params_nest_a_bounded_number_of_levels) {
  pt_task_t t;
  pt_input_error_t ie;
  size_t len;
  char *b = nested_params(PT_PARAMS_DEPTH, &len);
  cr_assert_eq(pt_task_parse(b, len, PT_PARSE_SUBMIT, 0, &t, &ie), 0, "%s: %s",
               ie.message, b);
  pt_task_destroy(&t);
  b = nested_params(PT_PARAMS_DEPTH + 1, &len);
  cr_assert_neq(pt_task_parse(b, len, PT_PARSE_SUBMIT, 0, &t, &ie), 0);
  cr_assert_str_eq(ie.code, "invalid_params", "%s", ie.message);
  /* A typed value in extended JSON is a value, not a "$" key. */
  const char *typed = GOOD ",\"params\":{\"n\":{\"$numberLong\":\"5\"}}}";
  cr_assert_eq(pt_task_parse(typed, strlen(typed), PT_PARSE_SUBMIT, 0, &t, &ie),
               0, "%s", ie.message);
  pt_task_destroy(&t);
}

/* Parses a submit body with this subject and notify_url (NULL: absent). */
static int parse_with(const char *subject, const char *notify_url,
                      pt_task_t *t, pt_input_error_t *ie) {
  static char body[4096];
  char url[PT_URL_MAX + 32] = "";
  if (notify_url != NULL)
    snprintf(url, sizeof url, ",\"notify_url\":\"%s\"", notify_url);
  snprintf(body, sizeof body,
           "{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
           "\"amount\":1,\"currency\":\"CNY\",\"subject\":\"%s\"%s}",
           subject, url);
  return pt_task_parse(body, strlen(body), PT_PARSE_SUBMIT, 0, t, ie);
}

/* An error message echoes the client's key; cut to fit, it still ends on
 * a whole character, or the answer's JSON could not be written. */
Test(task, a_message_cut_to_fit_ends_on_a_whole_character) {
  char b[600];
  pt_task_t t;
  pt_input_error_t ie;
  size_t n = (size_t)snprintf(b, sizeof b, "{\"");
  for (int i = 0; i < 100; i++)
    n += (size_t)snprintf(b + n, sizeof b - n, "中");
  n += (size_t)snprintf(b + n, sizeof b - n, "\":1}");
  cr_assert_neq(pt_task_parse(b, n, PT_PARSE_SUBMIT, 0, &t, &ie), 0);
  cr_assert_str_eq(ie.code, "unknown_field");
  size_t len = strlen(ie.message);
  cr_assert_gt(len, sizeof ie.message - 4, "cut far too short: %zu", len);
  cr_assert(bson_utf8_validate(ie.message, len, false),
            "the message ends in half a character");
}

Test(task, long_strings_are_refused) {
  char subj[300];
  pt_task_t t;
  pt_input_error_t ie;
  memset(subj, 'x', 257);
  subj[257] = '\0';
  cr_assert_neq(parse_with(subj, NULL, &t, &ie), 0);
  cr_assert_str_eq(ie.code, "field_too_long");
}

/* subject and notify_url are held in buffers of their own size: the
 * largest allowed survive a round trip through a broker message whole, one
 * byte more is refused, and an absent notify_url stays absent. */
Test(task, subject_and_notify_url_round_trip_at_their_limits) {
  static char subj[PT_SUBJECT_MAX + 2], url[PT_URL_MAX + 2];
  pt_task_t t, u;
  pt_input_error_t ie;
  memset(subj, 's', PT_SUBJECT_MAX);
  memcpy(url, "https://", 8);
  memset(url + 8, 'u', PT_URL_MAX - 8);
  cr_assert_eq(parse_with(subj, url, &t, &ie), 0, "%s", ie.message);
  as_message(&t, 1, &u);
  cr_assert_str_eq(u.subject, subj);
  cr_assert_str_eq(u.notify_url, url);
  pt_task_destroy(&t);
  pt_task_destroy(&u);

  url[PT_URL_MAX] = 'u'; /* one byte over */
  cr_assert_neq(parse_with("s", url, &t, &ie), 0);
  cr_assert_str_eq(ie.code, "field_too_long");

  const char *plain = GOOD "}";
  cr_assert_eq(pt_task_parse(plain, strlen(plain), PT_PARSE_SUBMIT, 0, &t, &ie),
               0);
  cr_assert_null(t.notify_url);
  cr_assert_str_eq(t.subject, "Course: C in depth");
  size_t len;
  char *msg = pt_task_spec_json(&t, 0, &len);
  cr_assert_not_null(strstr(msg, "\"notify_url\" : null"), "%s", msg);
  bson_free(msg);
  pt_task_destroy(&t);
}

Test(task, statuses) {
  cr_assert_eq(pt_status_parse("RETRY_WAIT"), PT_ST_RETRY_WAIT);
  cr_assert_eq(pt_status_parse("nope"), -1);
  cr_assert(pt_status_final(PT_ST_CANCELLED));
  cr_assert(!pt_status_final(PT_ST_RETRY_WAIT));
}
