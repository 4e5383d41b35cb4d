/* The simulator speaks "plain": the JSON of the `sim` channel of
 * tasks/channels/sim.c, unsigned, with no notifications.
 *
 *   POST /v1/trades {"out_trade_no", "amount", "currency", "sim"}  200 trade
 *   GET  /v1/trades/{no}                                           200 trade
 *   POST /v1/trades/{no}/close                                     200 trade
 *
 * A trade is {"trade_no", "out_trade_no", "status" (NONE, CREATED, PAID,
 * CLOSED; a scanned trade is still CREATED), "amount", "currency",
 * "qr_code"}; an error is {"code", "message"}, as on the control endpoints.
 *
 * The create's optional "sim" object carries the trade's own instructions,
 * which win over the rules of POST /v1/sim/rules:
 *   {"fail_times": N}  the first N creates answer 503 SYSTEM_ERROR (read
 *                      only on the trade's first create)
 *   {"decline": true}  402 DECLINED, a business refusal, final
 *   {"latency_ms": N}  answers after N ms
 *   {"timeout": true}  held unanswered: 504 TIMEOUT after ten minutes
 *                      (the caller has long given up), 503 {} if the
 *                      simulator stops first
 * A repeated create answers the trade as it is, like Alipay's precreate,
 * or 400 OUT_TRADE_NO_USED when the amount differs. Errors: 400
 * PARAM_ERROR, 404 TRADE_NOT_EXIST / NOT_FOUND, 409 TRADE_PAID (closing a
 * paid trade), 503 SYSTEM_ERROR (outage, fail_times, --error-rate). */
#include <bson/bson.h>
#include <stdio.h>
#include <string.h>

#include "core/pt_task.h"
#include "sim/pt_sim_dialect.h"

/* A "timeout" request is held until the process ends or ten minutes pass,
 * then answered (the caller has long given up). */
#define HOLD_MS 600000

/* The simulator's names, but the plain channel does not tell a scanned
 * trade from a created one. */
static const char *plain_status(pt_sim_state_t s) {
  return pt_sim_state_name(s == PT_SIM_SCANNED ? PT_SIM_CREATED : s);
}

static void trade_doc(const pt_sim_trade_t *t, bson_t *d) {
  char qr[160];
  snprintf(qr, sizeof qr, "https://qr.sim.paytask.local/%s", t->trade_no);
  BSON_APPEND_UTF8(d, "trade_no", t->trade_no);
  BSON_APPEND_UTF8(d, "out_trade_no", t->no);
  BSON_APPEND_UTF8(d, "status", plain_status(t->state));
  BSON_APPEND_INT64(d, "amount", t->amount);
  BSON_APPEND_UTF8(d, "currency", t->currency);
  BSON_APPEND_UTF8(d, "qr_code", qr);
}

static void answer_trade(pt_sim_t *sim, pt_httpd_req_t *req,
                         const pt_sim_trade_t *t, int delay_ms) {
  bson_t d = BSON_INITIALIZER;
  trade_doc(t, &d);
  pt_sim_answer_json(sim, req, 200, &d, delay_ms);
  bson_destroy(&d);
}

static void create(pt_sim_t *sim, pt_httpd_req_t *req) {
  size_t blen;
  const char *body = pt_httpd_body(req, &blen);
  bson_t doc;
  bson_iter_t it, s;
  pt_input_error_t ie;
  const char *no = NULL;
  int64_t amount = 0;
  char cur[4] = "CNY";
  int fail_times = -1, decline = 0, latency = -1, timeout = 0;

  if (pt_json_parse_object(body, blen, &doc, &ie) != 0) {
    pt_sim_answer_error(sim, req, 400, "PARAM_ERROR", ie.message, 0);
    return;
  }
  if (bson_iter_init_find(&it, &doc, "out_trade_no") &&
      BSON_ITER_HOLDS_UTF8(&it))
    no = bson_iter_utf8(&it, NULL);
  if (bson_iter_init_find(&it, &doc, "amount") &&
      (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it)))
    amount = bson_iter_as_int64(&it);
  if (bson_iter_init_find(&it, &doc, "currency") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(cur, sizeof cur, "%s", bson_iter_utf8(&it, NULL));
  if (bson_iter_init_find(&it, &doc, "sim") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
      bson_iter_recurse(&it, &s)) {
    while (bson_iter_next(&s)) {
      const char *k = bson_iter_key(&s);
      if (strcmp(k, "fail_times") == 0 && BSON_ITER_HOLDS_INT32(&s))
        fail_times = bson_iter_int32(&s);
      else if (strcmp(k, "decline") == 0 && BSON_ITER_HOLDS_BOOL(&s))
        decline = bson_iter_bool(&s);
      else if (strcmp(k, "latency_ms") == 0 && BSON_ITER_HOLDS_INT32(&s))
        latency = bson_iter_int32(&s);
      else if (strcmp(k, "timeout") == 0 && BSON_ITER_HOLDS_BOOL(&s))
        timeout = bson_iter_bool(&s);
    }
  }
  if (no == NULL || strlen(no) > PT_OUT_TRADE_NO_MAX || amount <= 0 ||
      strlen(cur) != 3) {
    bson_destroy(&doc);
    pt_sim_answer_error(sim, req, 400, "PARAM_ERROR",
                        "out_trade_no, amount > 0 and currency are required",
                        0);
    return;
  }
  pt_sim_trade_t *t = pt_sim_trade_get(sim, no);
  bson_destroy(&doc);
  if (t == NULL) {
    pt_sim_answer_error(sim, req, 503, "SYSTEM_ERROR", "out of memory", 0);
    return;
  }
  /* The request's own instructions win over the rules. */
  if (fail_times >= 0 && t->create_calls == 0)
    pt_sim_trade_fail_times(t, fail_times);
  if (latency < 0)
    latency = pt_sim_latency(sim, t);
  if (pt_sim_create_count(sim, t)) {
    /* Like Alipay's precreate, the same trade comes back. */
    if (t->amount != amount) {
      pt_sim_answer_error(sim, req, 400, "OUT_TRADE_NO_USED",
                          "out_trade_no was used with another amount",
                          latency);
      return;
    }
    answer_trade(sim, req, t, latency);
    return;
  }
  /* Held before the failures are drawn, so that it uses none of them. */
  if (timeout) {
    pt_sim_answer_error(sim, req, 504, "TIMEOUT", "held", HOLD_MS);
    return;
  }
  if (pt_sim_create_fails(sim, t)) {
    pt_sim_answer_error(sim, req, 503, "SYSTEM_ERROR",
                        pt_sim_outage(sim) ? "channel outage"
                                           : "system busy, try again",
                        latency);
    return;
  }
  if (decline) {
    pt_sim_answer_error(sim, req, 402, "DECLINED",
                        "the payer's bank declined", latency);
    return;
  }
  snprintf(t->trade_no, sizeof t->trade_no, "SIM%014llu",
           (unsigned long long)pt_sim_next_seq(sim));
  snprintf(t->currency, sizeof t->currency, "%s", cur);
  t->amount = amount;
  pt_sim_trade_created(sim, t);
  answer_trade(sim, req, t, latency);
}

static void query_close(pt_sim_t *sim, pt_httpd_req_t *req, const char *no,
                        int close) {
  pt_sim_trade_t *t = pt_sim_trade_find(sim, no);
  int latency = pt_sim_latency(sim, t);
  pt_sim_count(sim, t, close ? PT_SIM_CALL_CLOSE : PT_SIM_CALL_QUERY);
  if (t == NULL || t->state == PT_SIM_NONE) {
    pt_sim_answer_error(sim, req, 404, "TRADE_NOT_EXIST", "no such trade",
                        latency);
    return;
  }
  if (close && t->state == PT_SIM_PAID) {
    pt_sim_answer_error(sim, req, 409, "TRADE_PAID", "the trade is paid",
                        latency);
    return;
  }
  if (close)
    pt_sim_trade_close(sim, t);
  answer_trade(sim, req, t, latency);
}

/* POST /v1/trades, GET /v1/trades/{no}, POST /v1/trades/{no}/close. */
static void plain_handle(pt_sim_t *sim, void *state, pt_httpd_req_t *req) {
  size_t mlen, plen;
  const char *m = pt_httpd_method(req, &mlen);
  const char *p = pt_httpd_path(req, &plen);
  char path[256], no[PT_OUT_TRADE_NO_MAX + 1];
  int is_post = mlen == 4 && memcmp(m, "POST", 4) == 0;
  int is_get = mlen == 3 && memcmp(m, "GET", 3) == 0;
  (void)state;
  if (plen >= sizeof path) {
    pt_sim_answer_error(sim, req, 404, "NOT_FOUND", "no such endpoint", 0);
    return;
  }
  memcpy(path, p, plen);
  path[plen] = '\0';
  const char *rest = strncmp(path, "/v1/trades/", 11) == 0 ? path + 11 : NULL;
  const char *slash = rest ? strchr(rest, '/') : NULL;
  if (is_post && strcmp(path, "/v1/trades") == 0) {
    create(sim, req);
  } else if (is_get && rest != NULL && slash == NULL &&
             strlen(rest) <= PT_OUT_TRADE_NO_MAX) {
    snprintf(no, sizeof no, "%s", rest);
    query_close(sim, req, no, 0);
  } else if (is_post && slash != NULL && strcmp(slash, "/close") == 0 &&
             (size_t)(slash - rest) <= PT_OUT_TRADE_NO_MAX) {
    snprintf(no, sizeof no, "%.*s", (int)(slash - rest), rest);
    query_close(sim, req, no, 1);
  } else {
    pt_sim_answer_error(sim, req, 404, "NOT_FOUND", "no such endpoint", 0);
  }
}

const pt_sim_dialect_ops_t pt_sim_plain_dialect = {
    .name = "plain",
    .handle = plain_handle,
};
