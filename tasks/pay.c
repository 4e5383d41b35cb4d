/* The `pay` runner: create the trade at the channel and return what the
 * payer needs (a QR code, a prepay id). When an earlier attempt may have
 * reached the channel (its outcome was unknown, or its worker died), the
 * trade is queried first, so a retry never creates a trade twice; the
 * channel's own out_trade_no check is the second guard. */
#include <string.h>

#include "core/pt_log.h"
#include "tasks/pt_channel.h"
#include "tasks/pt_registry.h"

typedef struct {
  pt_attempt_t *attempt;
  const pt_channel_ops_t *chan;
  pt_chan_req_t req;
  pt_chan_op_t op;
} pay_t;

static int send_op(pay_t *p, pt_chan_op_t op);

static void on_answer(const pt_http_response_t *res, void *arg) {
  pay_t *p = arg;
  const pt_task_t *t = pt_attempt_task(p->attempt);
  pt_chan_res_t out;
  memset(&out, 0, sizeof out);
  bson_init(&out.result);
  pt_chan_req_clear(&p->req);
  p->chan->parse(p->op, t, res, &out);
  if (p->op == PT_CHAN_QUERY) {
    if (out.not_found) {
      /* The earlier attempt never created it: create it now. */
      bson_destroy(&out.result);
      if (send_op(p, PT_CHAN_CREATE) != 0)
        pt_attempt_done(p->attempt, PT_OUTCOME_RETRY, NULL, "start_failed",
                        "could not send the create request");
      return;
    }
    if (out.outcome == PT_OUTCOME_FAIL) {
      /* A refused query says nothing about the trade: stay careful. */
      out.outcome = PT_OUTCOME_UNKNOWN;
    }
  }
  pt_attempt_done(p->attempt, out.outcome, &out.result,
                  out.outcome == PT_OUTCOME_SUCCESS ? NULL : out.code,
                  out.outcome == PT_OUTCOME_SUCCESS ? NULL : out.message);
  bson_destroy(&out.result);
}

static int send_op(pay_t *p, pt_chan_op_t op) {
  const pt_runner_env_t *env = pt_attempt_env(p->attempt);
  pt_error_t err;
  p->op = op;
  if (p->chan->build(op, pt_attempt_task(p->attempt), env->cfg, &p->req,
                     &err) != 0) {
    PT_ERROR("channel_build_failed", "channel=%s err=\"%s\"", p->chan->code,
             err.message);
    return PT_ECONFIG;
  }
  if (env->http == NULL) {
    pt_chan_req_clear(&p->req);
    return PT_ECANCELED; /* the worker is past its drain deadline */
  }
  pt_http_request_t hr = {.method = p->req.method,
                          .url = p->req.url,
                          .headers = p->req.headers,
                          .body = p->req.body,
                          .body_len = p->req.body_len,
                          .timeout_ms = env->cfg->worker_attempt_timeout_ms};
  int rc = pt_http_request(env->http, &hr, on_answer, p);
  if (rc != 0)
    pt_chan_req_clear(&p->req);
  return rc;
}

static int pay_do_task(pt_attempt_t *a) {
  pay_t *p = pt_attempt_priv(a);
  p->attempt = a;
  p->chan = pt_channel_find(pt_attempt_task(a)->channel);
  if (p->chan == NULL)
    return PT_EINVAL; /* checked before dispatch; kept as a guard */
  return send_op(p, pt_attempt_must_query(a) ? PT_CHAN_QUERY : PT_CHAN_CREATE);
}

const pt_runner_ops_t pt_pay_runner = {
    .type = "pay",
    .priv_size = sizeof(pay_t),
    .validate = NULL,
    .do_task = pay_do_task,
};
