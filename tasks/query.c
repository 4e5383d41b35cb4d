/* The `query` runner: asks the channel for a created trade's state on the
 * schedule query.schedule (5 s, 10 s, 30 s, 1 m, 10 m, 20 m by default)
 * until the trade is final. The worker applies what it learns to the trade
 * with a compare-and-set that only moves forward, and skips the query
 * altogether once a callback has settled the trade. A trade still unpaid
 * after the last query is left to its close at expiry. */
#include <string.h>

#include "tasks/pt_chan_call.h"
#include "tasks/pt_registry.h"

static int schedule(const pt_config_t *cfg, int64_t *out) {
  return pt_config_schedule(cfg->query_schedule, out, PT_SCHEDULE_MAX);
}

static void on_answer(pt_chan_call_t *c, pt_chan_res_t *out) {
  const pt_runner_env_t *env = pt_attempt_env(c->attempt);
  int64_t s[PT_SCHEDULE_MAX];
  int last = pt_attempt_number(c->attempt) >= schedule(env->cfg, s);
  if (out->not_found) {
    /* Alipay: the trade exists only once the payer scanned the code. */
    out->outcome = PT_OUTCOME_SUCCESS;
    out->trade_state = PT_TRADE_NOTPAY;
  }
  if (out->outcome != PT_OUTCOME_SUCCESS) {
    /* A query is always safe to repeat. */
    pt_attempt_done(c->attempt, last ? PT_OUTCOME_FAIL : PT_OUTCOME_RETRY,
                    NULL, out->code, out->message);
    return;
  }
  pt_chan_res_note_trade(out);
  if (pt_trade_state_final(out->trade_state) || last) {
    if (!pt_trade_state_final(out->trade_state))
      BSON_APPEND_UTF8(&out->result, "note",
                       "not final after the last query: left to the close "
                       "at expiry");
    pt_attempt_done(c->attempt, PT_OUTCOME_SUCCESS, &out->result, NULL, NULL);
    return;
  }
  pt_attempt_done(c->attempt, PT_OUTCOME_RETRY, &out->result, "trade_pending",
                  pt_trade_state_name(out->trade_state));
}

static int query_do_task(pt_attempt_t *a) {
  pt_chan_call_t *c = pt_attempt_priv(a);
  if (pt_chan_call_init(c, a, on_answer) != 0)
    return PT_EINVAL;
  return pt_chan_call(c, PT_CHAN_QUERY);
}

/* After query k comes query k+1, schedule[k] seconds later. */
static int query_retry_delay(const pt_task_t *t, const pt_config_t *cfg,
                             int attempt, pt_outcome_t o) {
  int64_t s[PT_SCHEDULE_MAX];
  int n = schedule(cfg, s);
  (void)t;
  if (o == PT_OUTCOME_SUCCESS || o == PT_OUTCOME_FAIL || attempt >= n)
    return -1;
  return (int)s[attempt];
}

const pt_runner_ops_t pt_query_runner = {
    .type = "query",
    .priv_size = sizeof(pt_chan_call_t),
    .do_task = query_do_task,
    .retry_delay = query_retry_delay,
    .internal = 1,
};
