/* One call to a channel on behalf of an attempt: build the request with the
 * channel's strategy, send it on the worker's HTTP client, parse the answer
 * and hand the result to the runner. Shared by the pay, query and close
 * runners; kept in the runner's private state. */
#ifndef PT_CHAN_CALL_H
#define PT_CHAN_CALL_H

#include "tasks/pt_channel.h"

typedef struct pt_chan_call pt_chan_call_t;

/* out lives only during the callback; the callback may start another call
 * on the same pt_chan_call_t. */
typedef void (*pt_chan_call_cb)(pt_chan_call_t *c, pt_chan_res_t *out);

struct pt_chan_call {
  pt_attempt_t *attempt;
  const pt_channel_ops_t *chan;
  pt_chan_call_cb cb;
  pt_chan_op_t op;
  /* No pt_chan_req_t here: the request (12 KiB of buffers) lives on the
   * stack only while it is built and handed to curl, which copies it, so
   * an attempt in flight costs little memory. */
};

/* Sets c up for attempt a on the task's channel; PT_EINVAL if the channel
 * is unknown. */
int pt_chan_call_init(pt_chan_call_t *c, pt_attempt_t *a, pt_chan_call_cb cb);

/* Starts op; 0, or a negative code when nothing was sent (the callback
 * will not run then). A page API (no request to send) answers through the
 * callback at once, with the signed URL as result.pay_url. */
int pt_chan_call(pt_chan_call_t *c, pt_chan_op_t op);

/* Adds trade_status (and trade_no) from out to out->result, for the task's
 * record and the worker's trade step. */
void pt_chan_res_note_trade(pt_chan_res_t *out);

#endif
