/* The `close` runner: when a trade's payment window ends, close it at the
 * channel. If the channel refuses because the trade was paid (or for any
 * other reason), the trade is queried and what the channel says wins: a
 * trade paid just before its close is SUCCEEDED, not CLOSED. A trade the
 * channel never heard of (Alipay before the payer scans) is closed
 * locally; on a channel where every created trade exists (WeChat Pay),
 * "no such trade" is tried again. */
#include <string.h>

#include "tasks/pt_chan_call.h"
#include "tasks/pt_registry.h"

static void done_state(pt_chan_call_t *c, pt_chan_res_t *out,
                       pt_trade_state_t st, const char *note) {
  out->trade_state = st;
  pt_chan_res_note_trade(out);
  if (note != NULL)
    BSON_APPEND_UTF8(&out->result, "note", note);
  pt_attempt_done(c->attempt, PT_OUTCOME_SUCCESS, &out->result, NULL, NULL);
}

/* The channel says it does not know the trade: closed locally where that
 * means no payer saw it (Alipay before a scan); elsewhere tried again,
 * since paytask created it. */
static void not_found(pt_chan_call_t *c, pt_chan_res_t *out) {
  if (c->chan->unseen_until_scanned) {
    done_state(c, out, PT_TRADE_CLOSED,
               "the channel never saw a payment: closed locally");
    return;
  }
  pt_attempt_done(c->attempt, PT_OUTCOME_RETRY, NULL, "order_not_found",
                  "the channel does not know a trade it created; not "
                  "closed locally, the close is tried again");
}

static void on_answer(pt_chan_call_t *c, pt_chan_res_t *out) {
  if (c->op == PT_CHAN_CLOSE) {
    if (out->outcome == PT_OUTCOME_SUCCESS) {
      done_state(c, out, PT_TRADE_CLOSED, NULL);
      return;
    }
    if (out->not_found) {
      not_found(c, out);
      return;
    }
    if (out->outcome == PT_OUTCOME_FAIL) {
      /* Refused, perhaps because it was paid: ask. */
      if (pt_chan_call(c, PT_CHAN_QUERY) != 0)
        pt_attempt_done(c->attempt, PT_OUTCOME_RETRY, NULL, "start_failed",
                        "could not send the query");
      return;
    }
    pt_attempt_done(c->attempt, PT_OUTCOME_RETRY, NULL, out->code,
                    out->message);
    return;
  }
  /* The query after a refused close. */
  if (out->not_found) {
    not_found(c, out);
    return;
  }
  if (out->outcome == PT_OUTCOME_SUCCESS &&
      pt_trade_state_final(out->trade_state)) {
    done_state(c, out, out->trade_state, NULL);
    return;
  }
  pt_attempt_done(c->attempt, PT_OUTCOME_RETRY, NULL,
                  out->code[0] ? out->code : "close_refused",
                  out->message[0] ? out->message
                                  : "the channel refused the close and the "
                                    "trade is not final");
}

static int close_do_task(pt_attempt_t *a) {
  pt_chan_call_t *c = pt_attempt_priv(a);
  if (pt_chan_call_init(c, a, on_answer) != 0)
    return PT_EINVAL;
  return pt_chan_call(c, PT_CHAN_CLOSE);
}

/* Retry k waits close.schedule[k-1] seconds; after the last, the close
 * fails to the dead queue. (The retry policy of submitted tasks, 1 to 5
 * seconds, gave a channel outage 15 s at a trade's expiry before the
 * close was given up and the trade left unclosed.) */
static int close_retry_delay(const pt_task_t *t, const pt_config_t *cfg,
                             int attempt, pt_outcome_t o) {
  (void)t;
  return pt_schedule_retry_delay(cfg->close_schedule, attempt, o);
}

const pt_runner_ops_t pt_close_runner = {
    .type = "close",
    .priv_size = sizeof(pt_chan_call_t),
    .do_task = close_do_task,
    .retry_delay = close_retry_delay,
    .internal = 1,
};
