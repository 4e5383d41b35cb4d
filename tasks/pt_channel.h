/* A payment channel is a strategy chosen by its code ("sim", "alipay",
 * "wechat"): how to build and sign a request and how to read an answer and
 * map it onto paytask's outcomes. The description (code, name) is kept
 * apart from the functions, and a channel is pure: it does no I/O, so the
 * runners drive the HTTP calls and every strategy can be tested on bytes.
 * Adding a channel means one file in tasks/channels/ with one table at its
 * bottom, registered in tasks/pt_registry.c. */
#ifndef PT_CHANNEL_H
#define PT_CHANNEL_H

#include <bson/bson.h>

#include "core/pt_config.h"
#include "core/pt_http_client.h"
#include "core/pt_task.h"
#include "runner/pt_runner.h"

typedef enum { PT_CHAN_CREATE = 0, PT_CHAN_QUERY, PT_CHAN_CLOSE } pt_chan_op_t;

/* A trade's state at the channel in paytask's words. It only moves forward
 * (pt_trade_state_rank): NOTPAY < PAYING < one of the final states. */
typedef enum {
  PT_TRADE_UNKNOWN = 0, /* the answer did not say */
  PT_TRADE_NOTPAY,      /* created, waiting for the payer (WAIT_BUYER_PAY,
                           NOTPAY) */
  PT_TRADE_PAYING,      /* the payer is paying (USERPAYING, Alipay 10003) */
  PT_TRADE_SUCCEEDED,   /* paid (TRADE_SUCCESS, TRADE_FINISHED, SUCCESS, and
                           REFUND: it was paid) */
  PT_TRADE_CLOSED,      /* closed unpaid (TRADE_CLOSED, CLOSED, REVOKED) */
  PT_TRADE_FAILED       /* the payment failed (PAYERROR) */
} pt_trade_state_t;

const char *pt_trade_state_name(pt_trade_state_t s);
pt_trade_state_t pt_trade_state_parse(const char *name);
int pt_trade_state_final(pt_trade_state_t s);

#define PT_CHAN_MAX_HEADERS 8

/* A request to send; the strategy fills it, the runner sends it and then
 * calls pt_chan_req_clear. */
typedef struct {
  const char *method; /* NULL: nothing to send, url is the answer (a page
                         API such as alipay.trade.wap.pay: the signed URL
                         the payer opens) */
  char url[4096];
  char *body; /* bson_malloc'ed; MAY be NULL */
  size_t body_len;
  const char *headers[PT_CHAN_MAX_HEADERS + 1]; /* NULL-terminated */
  char header_buf[PT_CHAN_MAX_HEADERS][1024];
  int64_t now_s; /* set by the caller before build: the time to sign with */
} pt_chan_req_t;

/* What the channel said. */
typedef struct {
  pt_outcome_t outcome;
  int not_found; /* query: the trade does not exist at the channel */
  bson_t result; /* initialised by the caller; what the payer needs, or the
                    trade's state */
  char code[64];
  char message[240];
  /* query and close: what the channel says of the trade (create: NOTPAY
   * unless the channel settled it at once) */
  pt_trade_state_t trade_state;
  char trade_no[65]; /* the channel's own trade number, "" if not said */
  int64_t amount;    /* minor units the channel reports, -1 if not said */
} pt_chan_res_t;

/* A channel's asynchronous notification, as the api received it. */
typedef struct {
  const char *body;
  size_t body_len;
  /* Looks a request header up by name (case-insensitive); returns NULL when
   * absent, else the value (not NUL-terminated) and its length. */
  const char *(*header)(void *ctx, const char *name, size_t *len);
  void *header_ctx;
  int64_t now_s;
} pt_chan_notify_in_t;

/* What a verified notification says. */
typedef struct {
  char out_trade_no[PT_OUT_TRADE_NO_MAX + 1];
  char trade_no[65];
  char notify_id[129]; /* the channel's id of this notification */
  pt_trade_state_t trade_state;
  char raw_state[32]; /* the channel's own word, e.g. TRADE_SUCCESS */
  int64_t amount;     /* minor units, -1 when absent */
  char app_id[64];    /* app_id (alipay) or appid (wechat), "" if absent */
} pt_chan_notify_t;

/* How to answer a notification. */
typedef struct {
  int http_status;
  const char *content_type; /* NULL: no body */
  char body[256];
  size_t body_len;
} pt_chan_ack_t;

typedef struct pt_channel_ops {
  /* MUST: the code clients put in "channel". */
  const char *code;
  /* MUST: a name for people and logs. */
  const char *name;
  /* MUST: fills req for op on task t. Returns 0, or a negative code with
   * err filled when the request cannot be built (a configuration error). */
  int (*build)(pt_chan_op_t op, const pt_task_t *t, const pt_config_t *cfg,
               pt_chan_req_t *req, pt_error_t *err);
  /* MUST: reads the answer to op (or its transport failure: res->status
   * != 0) into out. A timeout, a 5xx or a "system busy" is UNKNOWN for a
   * create: the trade may exist. */
  void (*parse)(pt_chan_op_t op, const pt_task_t *t,
                const pt_http_response_t *res, pt_chan_res_t *out);
  /* MAY be NULL: loads what build and parse need (keys from the files the
   * configuration names) once, before the loop runs (it may block). A
   * channel that is not configured returns 0 and refuses in build. */
  int (*init)(const pt_config_t *cfg, pt_error_t *err);
  /* MAY be NULL: frees what init loaded. */
  void (*cleanup)(void);
  /* MAY be NULL: checks of this channel at submit (currency, params) and,
   * when cfg is not NULL, that the channel is configured. */
  int (*validate)(const pt_task_t *t, const pt_config_t *cfg,
                  pt_input_error_t *ie);
  /* MAY be NULL (the channel sends no notifications): verifies a
   * notification (signature, timestamp, decryption, app id / mchid /
   * seller_id against cfg) and reads it into out. Returns 0, PT_ECRYPTO
   * (not authentic, stale) or PT_EINVAL (malformed), with err filled. */
  int (*notify_parse)(const pt_config_t *cfg, const pt_chan_notify_in_t *in,
                      pt_chan_notify_t *out, pt_error_t *err);
  /* MUST when notify_parse is set: the answer the channel expects; ok = 1
   * when the notification was taken (or was a duplicate), 0 when refused
   * (the channel will resend). why MAY be NULL. */
  void (*notify_ack)(int ok, const char *why, pt_chan_ack_t *ack);
  /* 1 when a created trade must be followed (queried until final, closed at
   * its expiry); the plain simulator's trades are not. */
  int follows_trades;
  /* 1 when a trade the channel says it does not know, at its close, was
   * never seen by a payer and is closed locally (Alipay: a precreated
   * trade exists there only once scanned). 0: such an answer about a
   * trade paytask created is an anomaly (a lagging replica), not proof
   * that nobody can pay it, and the close is tried again. */
  int unseen_until_scanned;
} pt_channel_ops_t;

void pt_chan_req_init(pt_chan_req_t *req);
void pt_chan_req_clear(pt_chan_req_t *req);
/* Adds "Name: value" to req's headers; returns PT_EINVAL when full. */
int pt_chan_req_header(pt_chan_req_t *req, const char *name, const char *value);
/* Sets out's outcome, code and message (NULL: ""). A code or message too
 * long for out is cut at a UTF-8 character boundary, never inside a
 * character: it goes into JSON later. */
void pt_chan_res_set(pt_chan_res_t *out, pt_outcome_t o, const char *code,
                     const char *message);

#endif
