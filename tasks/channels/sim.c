/* The channel simulator's dialect: a small JSON API that behaves like a
 * payment channel (see sim/ for the server).
 *
 *   create  POST {base}/v1/trades            200 trade | 503 SYSTEM_ERROR |
 *                                            4xx business error (final)
 *   query   GET  {base}/v1/trades/{no}       200 trade | 404 TRADE_NOT_EXIST
 *   close   POST {base}/v1/trades/{no}/close 200 trade | 4xx
 */
#include <stdio.h>
#include <string.h>

#include "tasks/pt_channel.h"

static int sim_build(pt_chan_op_t op, const pt_task_t *t,
                     const pt_config_t *cfg, pt_chan_req_t *req,
                     pt_error_t *err) {
  const char *base = cfg->channel_sim_url;
  int n;
  pt_chan_req_init(req);
  pt_chan_req_header(req, "Content-Type", "application/json");
  pt_chan_req_header(req, "Accept", "application/json");
  switch (op) {
  case PT_CHAN_CREATE: {
    bson_t body = BSON_INITIALIZER;
    bson_iter_t it;
    req->method = "POST";
    n = snprintf(req->url, sizeof req->url, "%s/v1/trades", base);
    BSON_APPEND_UTF8(&body, "out_trade_no", t->out_trade_no);
    BSON_APPEND_INT64(&body, "amount", t->amount);
    BSON_APPEND_UTF8(&body, "currency", t->currency);
    BSON_APPEND_UTF8(&body, "subject", t->subject);
    /* The simulator takes per-trade instructions from params.sim. */
    if (t->has_params && bson_iter_init_find(&it, &t->params, "sim") &&
        BSON_ITER_HOLDS_DOCUMENT(&it))
      bson_append_iter(&body, "sim", 3, &it);
    req->body = bson_as_relaxed_extended_json(&body, &req->body_len);
    bson_destroy(&body);
    break;
  }
  case PT_CHAN_QUERY:
    req->method = "GET";
    n = snprintf(req->url, sizeof req->url, "%s/v1/trades/%s", base,
                 t->out_trade_no);
    break;
  case PT_CHAN_CLOSE:
    req->method = "POST";
    n = snprintf(req->url, sizeof req->url, "%s/v1/trades/%s/close", base,
                 t->out_trade_no);
    break;
  default:
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "sim: unknown operation %d", (int)op);
  }
  if (n < 0 || (size_t)n >= sizeof req->url)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.sim.url is too long");
  return 0;
}

/* Reads {"code": …, "message": …} from an error body, if there is one. */
static void error_fields(const pt_http_response_t *res, char *code,
                         size_t clen, char *msg, size_t mlen) {
  bson_t doc;
  bson_error_t e;
  bson_iter_t it;
  code[0] = msg[0] = '\0';
  if (res->body_len == 0 ||
      !bson_init_from_json(&doc, res->body, (ssize_t)res->body_len, &e))
    return;
  if (bson_iter_init_find(&it, &doc, "code") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(code, clen, "%s", bson_iter_utf8(&it, NULL));
  if (bson_iter_init_find(&it, &doc, "message") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(msg, mlen, "%s", bson_iter_utf8(&it, NULL));
  bson_destroy(&doc);
}

/* A trade answer must carry out_trade_no (ours), status and, for a created
 * trade, qr_code; anything else is a damaged reply. */
static int read_trade(const pt_task_t *t, const pt_http_response_t *res,
                      bson_t *result) {
  bson_t doc;
  bson_error_t e;
  bson_iter_t it;
  int ok = 0;
  if (!bson_init_from_json(&doc, res->body, (ssize_t)res->body_len, &e))
    return 0;
  if (bson_iter_init_find(&it, &doc, "out_trade_no") &&
      BSON_ITER_HOLDS_UTF8(&it) &&
      strcmp(bson_iter_utf8(&it, NULL), t->out_trade_no) == 0) {
    const char *fields[] = {"trade_no", "status", "qr_code"};
    ok = 1;
    for (size_t i = 0; i < 3; i++) {
      if (bson_iter_init_find(&it, &doc, fields[i]) &&
          BSON_ITER_HOLDS_UTF8(&it))
        BSON_APPEND_UTF8(result, fields[i], bson_iter_utf8(&it, NULL));
      else
        ok = 0;
    }
  }
  bson_destroy(&doc);
  return ok;
}

static void sim_parse(pt_chan_op_t op, const pt_task_t *t,
                      const pt_http_response_t *res, pt_chan_res_t *out) {
  char code[64], msg[200];
  if (res->status != 0) {
    /* A refused connection means nothing reached the channel; a timeout or
     * a broken exchange leaves the outcome unknown. */
    if (res->status == PT_ECONNECT)
      pt_chan_res_set(out, PT_OUTCOME_RETRY, "channel_unreachable",
                      res->error);
    else if (res->status == PT_ETIMEDOUT)
      pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "channel_timeout",
                      "the channel did not answer in time");
    else
      pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "channel_error", res->error);
    return;
  }
  error_fields(res, code, sizeof code, msg, sizeof msg);
  if (res->http_code >= 500) {
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, code[0] ? code : "SYSTEM_ERROR",
                    msg[0] ? msg : "the channel answered a server error");
    return;
  }
  if (op == PT_CHAN_QUERY && res->http_code == 404) {
    out->not_found = 1;
    pt_chan_res_set(out, PT_OUTCOME_FAIL, code[0] ? code : "TRADE_NOT_EXIST",
                    msg);
    return;
  }
  if (res->http_code >= 400) {
    pt_chan_res_set(out, PT_OUTCOME_FAIL, code[0] ? code : "channel_refused",
                    msg[0] ? msg : "the channel refused the request");
    return;
  }
  if (res->http_code != 200 || !read_trade(t, res, &out->result)) {
    bson_reinit(&out->result);
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_channel_reply",
                    "the channel's answer could not be read");
    return;
  }
  pt_chan_res_set(out, PT_OUTCOME_SUCCESS, NULL, NULL);
}

const pt_channel_ops_t pt_sim_channel = {
    .code = "sim",
    .name = "channel simulator",
    .build = sim_build,
    .parse = sim_parse,
};
