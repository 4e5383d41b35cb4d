#include "tasks/pt_chan_call.h"

#include <string.h>
#include <time.h>

#include "core/pt_log.h"
#include "tasks/pt_chan_util.h"
#include "tasks/pt_registry.h"

int pt_chan_call_init(pt_chan_call_t *c, pt_attempt_t *a, pt_chan_call_cb cb) {
  memset(c, 0, sizeof *c);
  c->attempt = a;
  c->cb = cb;
  c->chan = pt_channel_find(pt_attempt_task(a)->channel);
  return c->chan != NULL ? 0 : PT_EINVAL;
}

static void res_init(pt_chan_res_t *out) {
  memset(out, 0, sizeof *out);
  bson_init(&out->result);
  out->amount = -1;
}

void pt_chan_res_note_trade(pt_chan_res_t *out) {
  bson_iter_t it;
  if (out->trade_state != PT_TRADE_UNKNOWN &&
      !bson_iter_init_find(&it, &out->result, "trade_status"))
    BSON_APPEND_UTF8(&out->result, "trade_status",
                     pt_trade_state_name(out->trade_state));
  if (out->trade_no[0] && !bson_iter_init_find(&it, &out->result, "trade_no"))
    BSON_APPEND_UTF8(&out->result, "trade_no", out->trade_no);
}

static void on_answer(const pt_http_response_t *res, void *arg) {
  pt_chan_call_t *c = arg;
  pt_chan_res_t out;
  res_init(&out);
  c->chan->parse(c->op, pt_attempt_task(c->attempt), res, &out);
  pt_chan_res_check_amount(pt_attempt_task(c->attempt), c->chan->code, &out);
  c->cb(c, &out);
  bson_destroy(&out.result);
}

int pt_chan_call(pt_chan_call_t *c, pt_chan_op_t op) {
  const pt_runner_env_t *env = pt_attempt_env(c->attempt);
  pt_error_t err;
  pt_chan_req_t req;
  c->op = op;
  pt_chan_req_init(&req);
  req.now_s = (int64_t)time(NULL);
  if (c->chan->build(op, pt_attempt_task(c->attempt), env->cfg, &req,
                     &err) != 0) {
    PT_ERROR("channel_build_failed", "channel=%s err=\"%s\"", c->chan->code,
             err.message);
    pt_chan_req_clear(&req);
    return PT_ECONFIG;
  }
  if (req.method == NULL) {
    /* A page API: nothing to send, the signed URL is the answer. */
    pt_chan_res_t out;
    res_init(&out);
    out.outcome = PT_OUTCOME_SUCCESS;
    out.trade_state = PT_TRADE_NOTPAY;
    BSON_APPEND_UTF8(&out.result, "pay_url", req.url);
    pt_chan_req_clear(&req);
    c->cb(c, &out);
    bson_destroy(&out.result);
    return 0;
  }
  if (env->http == NULL) {
    pt_chan_req_clear(&req);
    return PT_ECANCELED; /* the worker is past its drain deadline */
  }
  pt_http_request_t hr = {.method = req.method,
                          .url = req.url,
                          .headers = req.headers,
                          .body = req.body,
                          .body_len = req.body_len,
                          .timeout_ms = env->cfg->worker_attempt_timeout_ms};
  int rc = pt_http_request(env->http, &hr, on_answer, c);
  pt_chan_req_clear(&req); /* curl copied what it needs */
  return rc;
}
