/* The `pay` runner: create the trade at the channel and return what the
 * payer needs (a QR code, a prepay id, a signed page URL). When an earlier
 * attempt may have reached the channel (its outcome was unknown, or its
 * worker died), the trade is queried first, so a retry never creates a
 * trade twice; the channel's own out_trade_no check is the second guard.
 * A trade found unpaid is asked for again with the same create, which the
 * channels answer with what the payer needs instead of a second trade.
 * For a channel that follows trades, the worker then records the trade
 * and schedules its queries and its close (tasks/query.c, tasks/close.c). */
#include <string.h>

#include "tasks/pt_chan_call.h"
#include "tasks/pt_registry.h"

static void on_answer(pt_chan_call_t *c, pt_chan_res_t *out) {
  if (c->op == PT_CHAN_QUERY) {
    if (out->not_found) {
      /* The earlier attempt never created it: create it now. */
      if (pt_chan_call(c, PT_CHAN_CREATE) != 0)
        pt_attempt_done(c->attempt, PT_OUTCOME_RETRY, NULL, "start_failed",
                        "could not send the create request");
      return;
    }
    if (out->outcome == PT_OUTCOME_SUCCESS &&
        out->trade_state == PT_TRADE_NOTPAY) {
      /* The earlier create reached the channel but its answer never came
       * back: the trade waits for a payer who has nothing to pay with.
       * The same create again (same out_trade_no, same parameters) is
       * answered with the trade's code_url, prepay_id or qr_code. */
      if (pt_chan_call(c, PT_CHAN_CREATE) != 0)
        pt_attempt_done(c->attempt, PT_OUTCOME_RETRY, NULL, "start_failed",
                        "could not send the create request");
      return;
    }
    if (out->outcome == PT_OUTCOME_FAIL) {
      /* A refused query says nothing about the trade: stay careful. */
      out->outcome = PT_OUTCOME_UNKNOWN;
    }
  } else if (out->outcome == PT_OUTCOME_SUCCESS &&
             out->trade_state == PT_TRADE_UNKNOWN) {
    out->trade_state = PT_TRADE_NOTPAY; /* just created */
  }
  if (out->outcome == PT_OUTCOME_SUCCESS && c->chan->follows_trades)
    pt_chan_res_note_trade(out);
  pt_attempt_done(c->attempt, out->outcome, &out->result,
                  out->outcome == PT_OUTCOME_SUCCESS ? NULL : out->code,
                  out->outcome == PT_OUTCOME_SUCCESS ? NULL : out->message);
}

static int pay_do_task(pt_attempt_t *a) {
  pt_chan_call_t *c = pt_attempt_priv(a);
  if (pt_chan_call_init(c, a, on_answer) != 0)
    return PT_EINVAL; /* checked before dispatch; kept as a guard */
  return pt_chan_call(c, pt_attempt_must_query(a) ? PT_CHAN_QUERY
                                                  : PT_CHAN_CREATE);
}

const pt_runner_ops_t pt_pay_runner = {
    .type = "pay",
    .priv_size = sizeof(pt_chan_call_t),
    .validate = NULL,
    .do_task = pay_do_task,
};
