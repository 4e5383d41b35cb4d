/* The sim strategy maps each kind of answer onto paytask's outcomes. */
#include <criterion/criterion.h>
#include <string.h>

#include "tasks/pt_registry.h"

static pt_task_t task(void) {
  pt_task_t t;
  pt_task_init(&t);
  strcpy(t.type, "pay");
  strcpy(t.channel, "sim");
  strcpy(t.out_trade_no, "T-1");
  t.amount = 100;
  strcpy(t.currency, "CNY");
  cr_assert_eq(pt_task_set_str(&t.subject, "s"), 0);
  return t;
}

static pt_chan_res_t parse(pt_chan_op_t op, int status, long code,
                           const char *body) {
  pt_task_t t = task();
  pt_http_response_t r = {.status = status,
                          .http_code = code,
                          .body = body,
                          .body_len = strlen(body),
                          .error = "x"};
  pt_chan_res_t out;
  memset(&out, 0, sizeof out);
  bson_init(&out.result);
  pt_channel_find("sim")->parse(op, &t, &r, &out);
  pt_task_destroy(&t);
  return out;
}


Test(sim_channel, created_trade_is_success_with_qr_code) {
  pt_chan_res_t r = parse(PT_CHAN_CREATE, 0, 200,
                          "{\"trade_no\":\"SIM1\",\"out_trade_no\":\"T-1\","
                          "\"status\":\"CREATED\",\"qr_code\":\"q\"}");
  bson_iter_t it;
  cr_assert_eq(r.outcome, PT_OUTCOME_SUCCESS);
  cr_assert(bson_iter_init_find(&it, &r.result, "qr_code"));
  bson_destroy(&r.result);
}

Test(sim_channel, answers_for_another_trade_are_not_trusted) {
  pt_chan_res_t r = parse(PT_CHAN_CREATE, 0, 200,
                          "{\"trade_no\":\"SIM1\",\"out_trade_no\":\"T-2\","
                          "\"status\":\"CREATED\",\"qr_code\":\"q\"}");
  cr_assert_eq(r.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_str_eq(r.code, "bad_channel_reply");
  bson_destroy(&r.result);
  r = parse(PT_CHAN_CREATE, 0, 200, "garbage");
  cr_assert_eq(r.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&r.result);
}

Test(sim_channel, server_errors_and_timeouts_are_unknown) {
  pt_chan_res_t r = parse(PT_CHAN_CREATE, 0, 503,
                          "{\"code\":\"SYSTEM_ERROR\",\"message\":\"busy\"}");
  cr_assert_eq(r.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_str_eq(r.code, "SYSTEM_ERROR");
  bson_destroy(&r.result);
  r = parse(PT_CHAN_CREATE, PT_ETIMEDOUT, 0, "");
  cr_assert_eq(r.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&r.result);
  r = parse(PT_CHAN_CREATE, PT_ECONNECT, 0, "");
  cr_assert_eq(r.outcome, PT_OUTCOME_RETRY);
  bson_destroy(&r.result);
}

Test(sim_channel, business_refusal_is_final) {
  pt_chan_res_t r =
      parse(PT_CHAN_CREATE, 0, 402, "{\"code\":\"DECLINED\",\"message\":\"no\"}");
  cr_assert_eq(r.outcome, PT_OUTCOME_FAIL);
  cr_assert_str_eq(r.code, "DECLINED");
  bson_destroy(&r.result);
}

Test(sim_channel, query_of_a_missing_trade_is_not_found) {
  pt_chan_res_t r =
      parse(PT_CHAN_QUERY, 0, 404, "{\"code\":\"TRADE_NOT_EXIST\"}");
  cr_assert(r.not_found);
  bson_destroy(&r.result);
}

Test(sim_channel, requests) {
  pt_task_t t = task();
  pt_config_t cfg;
  pt_chan_req_t req;
  pt_error_t err;
  pt_config_defaults(&cfg);
  const pt_channel_ops_t *c = pt_channel_find("sim");
  cr_assert_eq(c->build(PT_CHAN_QUERY, &t, &cfg, &req, &err), 0);
  cr_assert_str_eq(req.method, "GET");
  cr_assert(strstr(req.url, "/v1/trades/T-1") != NULL);
  pt_chan_req_clear(&req);
  cr_assert_eq(c->build(PT_CHAN_CREATE, &t, &cfg, &req, &err), 0);
  cr_assert_str_eq(req.method, "POST");
  cr_assert(strstr(req.body, "\"T-1\"") != NULL);
  pt_chan_req_clear(&req);
  pt_task_destroy(&t);
}
