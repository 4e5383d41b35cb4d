/* Inside the channel simulator: what a dialect (the wire format of one
 * channel) provides, and what the shared part in pt_sim.c offers it (its
 * stateless helpers — time, keys, paths, notice headers — live in
 * pt_sim_util.c).
 *
 * pt_sim.c owns the trade table, the buyer (rules, pay timers), latency,
 * outages, the control endpoints under /v1/sim/ and the delivery of
 * notifications (schedule, retries, duplicates, counters). A dialect only
 * speaks: it reads and checks the channel's requests, moves trades through
 * the calls below, and writes the channel's answers and notifications.
 * Everything runs on the simulator's loop thread. Internal to sim/. */
#ifndef PT_SIM_DIALECT_H
#define PT_SIM_DIALECT_H

#include <bson/bson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/pt_config.h"
#include "core/pt_crypto.h"
#include "core/pt_error.h"
#include "core/pt_httpd.h"
#include "core/pt_task.h"

typedef struct sim pt_sim_t;

/* Where a trade is. A dialect names these in its own words (Alipay
 * WAIT_BUYER_PAY / TRADE_SUCCESS / TRADE_CLOSED, WeChat NOTPAY / USERPAYING
 * / SUCCESS / CLOSED). */
typedef enum {
  PT_SIM_NONE = 0, /* known (a failed create, a rule) but never created */
  PT_SIM_CREATED,  /* created, the buyer has not scanned it */
  PT_SIM_SCANNED,  /* the buyer scanned it and is paying */
  PT_SIM_PAID,
  PT_SIM_CLOSED /* closed unpaid (by the merchant or at its expiry) */
} pt_sim_state_t;

/* One trade, by out_trade_no. The fields below are the dialects' to fill at
 * create; the counters are kept by pt_sim.c. */
typedef struct {
  char no[PT_OUT_TRADE_NO_MAX + 1];
  pt_sim_state_t state;
  int scanned;       /* the buyer has seen it (Alipay: the trade "exists") */
  char trade_no[40]; /* the channel's number for it */
  int64_t amount;    /* minor units */
  char currency[4];
  char kind[16];     /* the dialect's trade type: PRECREATE, NATIVE, JSAPI */
  char payer[128];   /* the buyer's id at the channel (openid) */
  char code[256];    /* what the create answered: qr_code, code_url, … */
  char params[1024]; /* what a repeated create must match, dialect's form */
  char notify_url[PT_URL_MAX + 1]; /* "" when the create gave none */
  int64_t created_ms, paid_ms, expire_ms; /* Unix ms; expire_ms 0: never */
  long create_calls, create_ok, creates_after_created;
  long query_calls, close_calls;
  long callbacks_sent, callbacks_acked, paid_count;
} pt_sim_trade_t;

/* A notification to send: the body and its headers, malloc'd. */
#define PT_SIM_NOTICE_MAX_HEADERS 8
typedef struct {
  char *body;
  size_t len;
  char *headers[PT_SIM_NOTICE_MAX_HEADERS + 1]; /* "Name: value", NULL-ended */
  int nheaders;
} pt_sim_notice_t;

typedef struct pt_sim_dialect_ops {
  /* MUST: the dialect's name, as --dialect and sim.dialect spell it. */
  const char *name;
  /* MAY be 0: bytes of private state pt_sim.c allocates (zeroed) for the
   * dialect and passes to every slot as `state`. */
  size_t state_size;
  /* MAY be NULL: loads keys and settings from cfg before the loop runs (it
   * may block). A failure stops the simulator with err's message. */
  int (*init)(void *state, const pt_config_t *cfg, pt_error_t *err);
  /* MAY be NULL: frees what init loaded; runs even if init failed. */
  void (*cleanup)(void *state);
  /* MUST: answers req, any request that is not under /v1/sim/ nor
   * /healthz, exactly once (pt_sim_respond), in the channel's own form,
   * unknown paths included. */
  void (*handle)(pt_sim_t *sim, void *state, pt_httpd_req_t *req);
  /* MAY be NULL (the dialect sends no notifications): builds one attempt
   * of the payment notification of paid trade t into out (zeroed by the
   * caller). notify_id names the notification and stays the same across
   * its resends. Called again for each resend, so that it may be signed
   * afresh. Returns 0, or a negative code (the attempt is then skipped and
   * counted as failed). */
  int (*notify_build)(pt_sim_t *sim, void *state, const pt_sim_trade_t *t,
                      const char *notify_id, pt_sim_notice_t *out);
  /* MUST when notify_build is set: 1 if the receiver's answer (status,
   * body) acknowledges the notification, 0 to resend it. */
  int (*notify_acked)(long http_code, const char *body, size_t len);
} pt_sim_dialect_ops_t;

extern const pt_sim_dialect_ops_t pt_sim_plain_dialect;
extern const pt_sim_dialect_ops_t pt_sim_alipay_dialect;
extern const pt_sim_dialect_ops_t pt_sim_wechat_dialect;

/* ---- What pt_sim.c offers the dialects ---- */

/* The configuration the simulator was started with. */
const pt_config_t *pt_sim_config(const pt_sim_t *sim);

/* Answers req after delay_ms (now when <= 0); body and headers (a
 * NULL-terminated list of "Name", "value" pairs, MAY be NULL) are copied. */
void pt_sim_respond(pt_sim_t *sim, pt_httpd_req_t *req, int status,
                    const char *content_type, const char *body, size_t len,
                    const char *const *headers, int delay_ms);

/* Answers doc as JSON after delay_ms (now when <= 0); takes nothing from
 * doc. */
void pt_sim_answer_json(pt_sim_t *sim, pt_httpd_req_t *req, int status,
                        const bson_t *doc, int delay_ms);
/* Answers {"code": code, "message": message} the same way: the errors of
 * the control endpoints and of the plain dialect. */
void pt_sim_answer_error(pt_sim_t *sim, pt_httpd_req_t *req, int status,
                         const char *code, const char *message, int delay);

/* The simulator's own name of a state, as GET /v1/sim/trades/{no} gives
 * it: "NONE", "CREATED", "SCANNED", "PAID" or "CLOSED". */
const char *pt_sim_state_name(pt_sim_state_t s);

/* The latency to answer a call about t with (its rule's, the default
 * rule's or --latency-ms); t MAY be NULL. */
int pt_sim_latency(const pt_sim_t *sim, const pt_sim_trade_t *t);

/* A trade by out_trade_no or by the channel's trade_no, or NULL. An unpaid
 * trade whose expiry has passed is closed first. */
pt_sim_trade_t *pt_sim_trade_find(pt_sim_t *sim, const char *no);
pt_sim_trade_t *pt_sim_trade_find_by_trade_no(pt_sim_t *sim,
                                              const char *trade_no);

typedef enum {
  PT_SIM_CREATE_NEW = 0, /* create it: fill t, then pt_sim_trade_created */
  PT_SIM_CREATE_REPEAT,  /* t was created before (or is final): answer with
                            what it is, in the channel's way */
  PT_SIM_CREATE_FAIL     /* answer a system error (outage, rule or random
                            failure); the trade stays uncreated */
} pt_sim_create_t;

/* Starts a create call for no (adding the trade if it is new) and counts
 * it; says how to answer and sets *t. */
pt_sim_create_t pt_sim_create_begin(pt_sim_t *sim, const char *no,
                                    pt_sim_trade_t **t);
/* The steps of pt_sim_create_begin, for a dialect whose request carries
 * instructions of its own that apply between them (plain's "sim" object):
 * pt_sim_trade_get finds or adds the trade (NULL only when out of memory);
 * pt_sim_create_count counts a create call and returns 1 if t was created
 * before (REPEAT); pt_sim_create_fails returns 1 if this create must answer
 * a system error (FAIL), using up one of t's failures. */
pt_sim_trade_t *pt_sim_trade_get(pt_sim_t *sim, const char *no);
int pt_sim_create_count(pt_sim_t *sim, pt_sim_trade_t *t);
int pt_sim_create_fails(pt_sim_t *sim, pt_sim_trade_t *t);
/* The next n creates of t answer a system error, whatever its rule's
 * create_fail_times left. */
void pt_sim_trade_fail_times(pt_sim_trade_t *t, int n);
/* 1 if this query or close of t must answer as if the channel did not
 * know it (the trade's rule lost_times), using one of them up. */
int pt_sim_lost(pt_sim_trade_t *t);
/* 1 while POST /v1/sim/outage has every call fail (a create, and in the
 * alipay and wechat dialects a query or close). */
int pt_sim_outage(const pt_sim_t *sim);
/* Now by the channel's clock (POST /v1/sim/clock), in Unix ms: what a
 * trade's expiry is compared with. */
int64_t pt_sim_channel_now_ms(const pt_sim_t *sim);

/* Marks t created once the dialect has filled it: the buyer's rule for it
 * starts now (pay_after_ms). */
void pt_sim_trade_created(pt_sim_t *sim, pt_sim_trade_t *t);

typedef enum { PT_SIM_CALL_QUERY = 0, PT_SIM_CALL_CLOSE } pt_sim_call_t;
/* Counts a query or close call; t MAY be NULL (an unknown trade). */
void pt_sim_count(pt_sim_t *sim, pt_sim_trade_t *t, pt_sim_call_t call);

/* Closes an unpaid trade (CREATED or SCANNED): the buyer can no longer
 * pay it. */
void pt_sim_trade_close(pt_sim_t *sim, pt_sim_trade_t *t);

/* A number unique in this process (1, 2, …). */
uint64_t pt_sim_next_seq(pt_sim_t *sim);

/* ---- Stateless helpers, in pt_sim_util.c ---- */

/* Now, in Unix milliseconds. */
int64_t pt_sim_now_ms(void);

/* Time ms in China Standard Time (GMT+8), the channels' zone:
 * "yyyy-MM-dd HH:mm:ss" (Alipay) or RFC 3339 "yyyy-MM-ddTHH:mm:ss+08:00"
 * (WeChat). */
void pt_sim_time_alipay(int64_t ms, char out[20]);
void pt_sim_time_rfc3339(int64_t ms, char out[26]);

/* Loads an RSA key (private_key: 1, else public) from the PEM file at
 * path; what names the configuration key in errors. */
int pt_sim_load_key(const char *what, const char *path, int private_key,
                    pt_crypto_key_t **out, pt_error_t *err);

/* Decodes the %XX escapes of len bytes of a path segment into out (size
 * outlen, NUL-terminated); -1 if it does not fit or holds %00. Other bytes,
 * bad escapes included, are copied as they are. */
int pt_sim_path_decode(const char *s, size_t len, char *out, size_t outlen);

/* Adds "Name: value" to a notice; PT_EINVAL when full, PT_ENOMEM. */
int pt_sim_notice_header(pt_sim_notice_t *n, const char *name,
                         const char *value);
/* Frees what a notice holds and zeroes it. */
void pt_sim_notice_clear(pt_sim_notice_t *n);

#endif
