/* The Alipay Open Platform channel (RSA2), as shared/CHANNELS.md describes
 * it: every request is a form of public parameters plus a JSON biz_content,
 * signed with the app's private key and POSTed to the gateway; every answer
 * is {"<method>_response": {…}, "sign": "…"}, signed by Alipay over the raw
 * bytes of the response object; notifications are signed forms.
 *
 *   create  alipay.trade.precreate  → qr_code          (params.product
 *           alipay.trade.wap.pay    → a signed URL,      "precreate" or
 *                                     nothing is sent    "wap")
 *   query   alipay.trade.query      → trade_status, trade_no, total_amount
 *   close   alipay.trade.close      → closed; ACQ.TRADE_NOT_EXIST means the
 *                                     payer never scanned: safe to close
 *
 * The payment window is sent as time_expire, an absolute time (created_at_ms
 * + expire_in), rather than timeout_express: a create retried later must
 * not give the payer a longer window than the one paytask closes at. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_buf.h"
#include "core/pt_crypto.h"
#include "tasks/pt_amount.h"
#include "tasks/pt_chan_util.h"
#include "tasks/pt_channel.h"

#define NOTIFY_PATH "/v1/channels/alipay/notify"
#define FORM_MAX_PARAMS 64

/* Loaded by init, read by build, parse and notify_parse. */
static struct {
  pt_crypto_key_t *app_key;    /* ours: signs requests */
  pt_crypto_key_t *alipay_key; /* Alipay's: verifies answers and
                                  notifications */
} keys;

/* ---- small helpers ---- */

static int is_wap(const pt_task_t *t) {
  const char *p = pt_chan_param_str(t, "product");
  return p != NULL && strcmp(p, "wap") == 0;
}

/* ---- keys ---- */

static void alipay_cleanup(void) {
  pt_crypto_key_destroy(keys.app_key);
  pt_crypto_key_destroy(keys.alipay_key);
  keys.app_key = keys.alipay_key = NULL;
}

static int alipay_init(const pt_config_t *cfg, pt_error_t *err) {
  alipay_cleanup();
  if (cfg->alipay_app_id[0] == '\0')
    return 0; /* not configured: build refuses */
  int rc = pt_chan_load_key("channel.alipay.private_key_file",
                            cfg->alipay_private_key_file, PT_CHAN_KEY_PRIVATE,
                            &keys.app_key, err);
  if (rc == 0)
    rc = pt_chan_load_key("channel.alipay.public_key_file",
                          cfg->alipay_public_key_file, PT_CHAN_KEY_PUBLIC,
                          &keys.alipay_key, err);
  if (rc != 0)
    alipay_cleanup();
  return rc;
}

/* ---- submit checks ---- */

static int alipay_validate(const pt_task_t *t, const pt_config_t *cfg,
                           pt_input_error_t *ie) {
  if (cfg != NULL && cfg->alipay_app_id[0] == '\0') {
    ie->code = "invalid_channel";
    snprintf(ie->message, sizeof ie->message,
             "the alipay channel is not configured (channel.alipay.app_id)");
    return PT_EINVAL;
  }
  if (strcmp(t->currency, "CNY") != 0) {
    ie->code = "invalid_currency";
    snprintf(ie->message, sizeof ie->message,
             "the alipay channel takes only CNY, not %s", t->currency);
    return PT_EINVAL;
  }
  /* Alipay documents these as forbidden in subject. */
  if (strpbrk(t->subject, "/=&") != NULL) {
    ie->code = "invalid_subject";
    snprintf(ie->message, sizeof ie->message,
             "the alipay channel takes no / = or & in subject");
    return PT_EINVAL;
  }
  bson_iter_t it;
  if (t->has_params && bson_iter_init_find(&it, &t->params, "product")) {
    const char *p = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : "";
    if (strcmp(p, "precreate") != 0 && strcmp(p, "wap") != 0) {
      ie->code = "invalid_params";
      snprintf(ie->message, sizeof ie->message,
               "params.product must be \"precreate\" or \"wap\"");
      return PT_EINVAL;
    }
  }
  const char *urls[] = {"return_url", "quit_url"};
  for (size_t i = 0; i < 2; i++) {
    if (t->has_params && bson_iter_init_find(&it, &t->params, urls[i])) {
      uint32_t len = 0;
      if (!BSON_ITER_HOLDS_UTF8(&it) || (bson_iter_utf8(&it, &len), len == 0) ||
          len > PT_URL_MAX) {
        ie->code = "invalid_params";
        snprintf(ie->message, sizeof ie->message,
                 "params.%s must be a URL of at most %d bytes", urls[i],
                 PT_URL_MAX);
        return PT_EINVAL;
      }
    }
  }
  return 0;
}

/* ---- requests ---- */

static const char *method_of(pt_chan_op_t op, const pt_task_t *t) {
  switch (op) {
  case PT_CHAN_CREATE:
    return is_wap(t) ? "alipay.trade.wap.pay" : "alipay.trade.precreate";
  case PT_CHAN_QUERY:
    return "alipay.trade.query";
  case PT_CHAN_CLOSE:
    return "alipay.trade.close";
  }
  return NULL;
}

/* biz_content: the JSON of the operation's own parameters. */
static char *biz_content(pt_chan_op_t op, const pt_task_t *t,
                         const pt_config_t *cfg, int64_t now_s,
                         pt_error_t *err) {
  bson_t b = BSON_INITIALIZER;
  char *json = NULL;
  BSON_APPEND_UTF8(&b, "out_trade_no", t->out_trade_no);
  if (op == PT_CHAN_CREATE) {
    char yuan[PT_AMOUNT_YUAN_MAX], expire[32];
    if (pt_amount_to_yuan(t->amount, yuan, sizeof yuan) != 0 ||
        pt_chan_beijing_time(pt_chan_trade_expiry(t, cfg, now_s),
                             PT_CHAN_TIME_PLAIN, expire, sizeof expire) != 0) {
      pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                   "alipay: bad amount or payment window");
      goto done;
    }
    BSON_APPEND_UTF8(&b, "total_amount", yuan);
    BSON_APPEND_UTF8(&b, "subject", t->subject);
    BSON_APPEND_UTF8(&b, "time_expire", expire);
    if (is_wap(t)) {
      const char *quit = pt_chan_param_str(t, "quit_url");
      BSON_APPEND_UTF8(&b, "product_code", "QUICK_WAP_WAY");
      if (quit != NULL)
        BSON_APPEND_UTF8(&b, "quit_url", quit);
    }
  }
  json = bson_as_relaxed_extended_json(&b, NULL);
  if (json == NULL)
    pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                 "alipay: the request is not valid UTF-8");
done:
  bson_destroy(&b);
  return json;
}

/* The parameters as a form: k=v&k=v, values percent-encoded; NULL values
 * are left out. */
static int encode_form(const pt_crypto_kv_t *kv, size_t n, pt_buf_t *form) {
  for (size_t i = 0; i < n; i++) {
    if (kv[i].value == NULL)
      continue;
    if ((form->len > 0 && pt_buf_append(form, "&", 1) != 0) ||
        pt_buf_append(form, kv[i].key, strlen(kv[i].key)) != 0 ||
        pt_buf_append(form, "=", 1) != 0 ||
        pt_chan_url_encode(form, kv[i].value) != 0)
      return PT_ENOMEM;
  }
  return form->data != NULL ? 0 : PT_ENOMEM;
}

static int alipay_build(pt_chan_op_t op, const pt_task_t *t,
                        const pt_config_t *cfg, pt_chan_req_t *req,
                        pt_error_t *err) {
  const char *method = method_of(op, t);
  char timestamp[32], notify_url[PT_CFG_STR_MAX + sizeof NOTIFY_PATH];
  char *biz = NULL, *tosign = NULL, *sign = NULL;
  pt_buf_t form = {NULL, 0};
  size_t tosign_len, sign_len;
  int rc = 0;
  pt_chan_req_reset(req);
  if (cfg->alipay_app_id[0] == '\0')
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.alipay.app_id is not set");
  if (keys.app_key == NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "alipay: keys not loaded (channels not initialised)");
  if (method == NULL)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: unknown operation %d", (int)op);
  if (pt_chan_beijing_time(req->now_s, PT_CHAN_TIME_PLAIN, timestamp,
                           sizeof timestamp) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: bad request time");
  snprintf(notify_url, sizeof notify_url, "%s%s", cfg->api_public_url,
           NOTIFY_PATH);
  biz = biz_content(op, t, cfg, req->now_s, err);
  if (biz == NULL)
    return PT_EINVAL;

  pt_crypto_kv_t kv[] = {
      {"app_id", cfg->alipay_app_id},
      {"method", method},
      {"format", "JSON"},
      {"charset", "utf-8"},
      {"sign_type", "RSA2"},
      {"timestamp", timestamp},
      {"version", "1.0"},
      {"notify_url", op == PT_CHAN_CREATE ? notify_url : NULL},
      {"return_url", op == PT_CHAN_CREATE && is_wap(t)
                         ? pt_chan_param_str(t, "return_url")
                         : NULL},
      {"biz_content", biz},
      {"sign", NULL}, /* last: filled below */
  };
  const size_t n = sizeof kv / sizeof kv[0];
  rc = pt_crypto_alipay_string_to_sign(kv, n, 0, &tosign, &tosign_len, err);
  if (rc == 0)
    rc = pt_crypto_rsa_sign(keys.app_key, PT_CRYPTO_SHA256, tosign, tosign_len,
                            &sign, &sign_len, err);
  if (rc != 0)
    goto done;
  kv[n - 1].value = sign;
  if (encode_form(kv, n, &form) != 0) {
    rc = pt_error_set(err, PT_DOMAIN_SYSTEM, PT_ENOMEM, "out of memory");
    goto done;
  }
  if (op == PT_CHAN_CREATE && is_wap(t)) {
    /* A page API: the payer's browser opens the signed URL; we send
     * nothing. */
    const char *sep = strchr(cfg->alipay_gateway, '?') ? "&" : "?";
    int len = snprintf(req->url, sizeof req->url, "%s%s%s",
                       cfg->alipay_gateway, sep, form.data);
    req->method = NULL;
    if (len < 0 || (size_t)len >= sizeof req->url)
      rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: the pay URL is longer than %zu bytes",
                        sizeof req->url - 1);
  } else {
    int len = snprintf(req->url, sizeof req->url, "%s", cfg->alipay_gateway);
    req->method = "POST";
    req->body = bson_strndup(form.data, form.len); /* the runner bson_frees */
    req->body_len = form.len;
    if (len < 0 || (size_t)len >= sizeof req->url)
      rc = pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.alipay.gateway is too long");
    else
      rc = pt_chan_req_header(
          req, "Content-Type",
          "application/x-www-form-urlencoded;charset=utf-8");
  }
done:
  if (rc != 0) {
    pt_chan_req_clear(req);
    req->url[0] = '\0';
  }
  free(form.data);
  bson_free(biz);
  free(tosign);
  free(sign);
  return rc;
}

/* ---- answers ---- */

static int is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t skip_ws(const char *s, size_t i, size_t n) {
  while (i < n && is_ws(s[i]))
    i++;
  return i;
}

/* The index just past the string that starts at s[i] ('"'), or 0 when it
 * does not end. */
static size_t skip_string(const char *s, size_t i, size_t n) {
  for (i++; i < n; i++) {
    if (s[i] == '\\')
      i++; /* the escaped character, whatever it is */
    else if (s[i] == '"')
      return i + 1;
  }
  return 0;
}

/* The index just past the JSON value that starts at s[i], or 0 when it does
 * not end. Brackets are matched outside strings only; the text has been
 * parsed as JSON already, so they nest properly. */
static size_t skip_value(const char *s, size_t i, size_t n) {
  if (i >= n)
    return 0;
  if (s[i] == '"')
    return skip_string(s, i, n);
  if (s[i] == '{' || s[i] == '[') {
    size_t depth = 0;
    while (i < n) {
      if (s[i] == '"') {
        if ((i = skip_string(s, i, n)) == 0)
          return 0;
        continue;
      }
      if (s[i] == '{' || s[i] == '[')
        depth++;
      else if ((s[i] == '}' || s[i] == ']') && --depth == 0)
        return i + 1;
      i++;
    }
    return 0;
  }
  while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && !is_ws(s[i]))
    i++;
  return i;
}

/* Finds the top-level members of the JSON object s[0..n) whose key is
 * written exactly as name, and points *at and *len at the raw text of the
 * first one's value. Returns how many there are, or -1 when s is not an
 * object. */
static int find_member(const char *s, size_t n, const char *name,
                       const char **at, size_t *len) {
  size_t nl = strlen(name), i = skip_ws(s, 0, n);
  int count = 0;
  if (i >= n || s[i] != '{')
    return -1;
  i = skip_ws(s, i + 1, n);
  if (i < n && s[i] == '}')
    return 0;
  for (;;) {
    if (i >= n || s[i] != '"')
      return -1;
    size_t kend = skip_string(s, i, n);
    if (kend == 0)
      return -1;
    int match = kend - i - 2 == nl && memcmp(s + i + 1, name, nl) == 0;
    i = skip_ws(s, kend, n);
    if (i >= n || s[i] != ':')
      return -1;
    i = skip_ws(s, i + 1, n);
    size_t vend = skip_value(s, i, n);
    if (vend == 0 || vend == i)
      return -1;
    if (match && count++ == 0) {
      *at = s + i;
      *len = vend - i;
    }
    i = skip_ws(s, vend, n);
    if (i < n && s[i] == ',') {
      i = skip_ws(s, i + 1, n);
      continue;
    }
    if (i < n && s[i] == '}')
      return count;
    return -1;
  }
}

/* Verifies Alipay's signature over the raw bytes of the response object.
 * Alipay's own SDK retries with "\/" unescaped, because the gateway has
 * been seen to escape slashes after signing; the JSON means the same. */
static int verify_raw(const char *raw, size_t len, const char *sign) {
  if (pt_crypto_rsa_verify(keys.alipay_key, PT_CRYPTO_SHA256, raw, len, sign,
                           NULL) == 0)
    return 0;
  if (memmem(raw, len, "\\/", 2) == NULL)
    return PT_ECRYPTO;
  char *alt = malloc(len);
  if (alt == NULL)
    return PT_ENOMEM;
  size_t m = 0;
  for (size_t i = 0; i < len; i++) {
    if (raw[i] == '\\' && i + 1 < len && raw[i + 1] == '/')
      continue;
    alt[m++] = raw[i];
  }
  int rc = pt_crypto_rsa_verify(keys.alipay_key, PT_CRYPTO_SHA256, alt, m,
                                sign, NULL);
  free(alt);
  return rc == 0 ? 0 : PT_ECRYPTO;
}

static pt_trade_state_t map_status(const char *s) {
  if (strcmp(s, "WAIT_BUYER_PAY") == 0)
    return PT_TRADE_NOTPAY;
  if (strcmp(s, "TRADE_SUCCESS") == 0 || strcmp(s, "TRADE_FINISHED") == 0)
    return PT_TRADE_SUCCEEDED;
  if (strcmp(s, "TRADE_CLOSED") == 0)
    return PT_TRADE_CLOSED;
  return PT_TRADE_UNKNOWN;
}

/* A verified 10000 answer to op. */
static void read_success(pt_chan_op_t op, const pt_task_t *t,
                         const bson_t *resp, pt_chan_res_t *out) {
  const char *otn = pt_chan_doc_str(resp, "out_trade_no");
  const char *trade_no = pt_chan_doc_str(resp, "trade_no");
  const char *tn = trade_no != NULL ? trade_no : "";
  if ((otn == NULL && op != PT_CHAN_CLOSE) ||
      (otn != NULL && strcmp(otn, t->out_trade_no) != 0)) {
    pt_chan_res_bad_reply(out, "the answer is about another trade");
    return;
  }
  if (trade_no != NULL && strlen(trade_no) >= sizeof out->trade_no) {
    pt_chan_res_bad_reply(out, "trade_no is too long");
    return;
  }
  if (op == PT_CHAN_CREATE) {
    const char *qr = pt_chan_doc_str(resp, "qr_code");
    if (qr == NULL || qr[0] == '\0') {
      pt_chan_res_bad_reply(out, "the answer has no qr_code");
      return;
    }
    BSON_APPEND_UTF8(&out->result, "qr_code", qr);
    BSON_APPEND_UTF8(&out->result, "out_trade_no", otn);
    out->trade_state = PT_TRADE_NOTPAY;
  } else if (op == PT_CHAN_QUERY) {
    const char *status = pt_chan_doc_str(resp, "trade_status");
    const char *total = pt_chan_doc_str(resp, "total_amount");
    if (status == NULL || map_status(status) == PT_TRADE_UNKNOWN) {
      pt_chan_res_bad_reply(out, "the answer has no known trade_status");
      return;
    }
    if (total != NULL &&
        pt_amount_from_yuan(total, strlen(total), &out->amount) != 0) {
      out->amount = -1;
      pt_chan_res_bad_reply(out, "total_amount is not an amount");
      return;
    }
    if (map_status(status) == PT_TRADE_SUCCEEDED && total == NULL) {
      /* Paid, but for how much? Not settled from it, as a notification
       * without one is not. */
      pt_chan_res_bad_reply(out, "the answer says paid but has no "
                                 "total_amount");
      return;
    }
    out->trade_state = map_status(status);
    BSON_APPEND_UTF8(&out->result, "trade_status",
                     pt_trade_state_name(out->trade_state));
    BSON_APPEND_UTF8(&out->result, "channel_status", status);
    BSON_APPEND_UTF8(&out->result, "trade_no", tn);
  } else {
    out->trade_state = PT_TRADE_CLOSED;
    BSON_APPEND_UTF8(&out->result, "trade_status",
                     pt_trade_state_name(PT_TRADE_CLOSED));
    BSON_APPEND_UTF8(&out->result, "channel_status", "TRADE_CLOSED");
    BSON_APPEND_UTF8(&out->result, "trade_no", tn);
  }
  snprintf(out->trade_no, sizeof out->trade_no, "%s", tn);
  pt_chan_res_set(out, PT_OUTCOME_SUCCESS, NULL, NULL);
}

/* Maps the gateway code of a response object whose signature has been
 * checked (verified = 1) or was absent (verified = 0). */
static void read_response(pt_chan_op_t op, const pt_task_t *t,
                          const bson_t *resp, int verified,
                          pt_chan_res_t *out) {
  const char *code = pt_chan_doc_str(resp, "code");
  const char *msg = pt_chan_doc_str(resp, "msg");
  const char *sub_code = pt_chan_doc_str(resp, "sub_code");
  const char *sub_msg = pt_chan_doc_str(resp, "sub_msg");
  const char *why = sub_msg ? sub_msg : msg;
  if (code == NULL) {
    pt_chan_res_bad_reply(out, "the answer has no code");
    return;
  }
  if (strcmp(code, "10000") == 0) {
    /* Only a signed answer may say a trade exists or was paid. */
    if (!verified)
      pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_signature",
                      "the answer is not signed");
    else
      read_success(op, t, resp, out);
  } else if (strcmp(code, "10003") == 0) {
    out->trade_state = PT_TRADE_PAYING;
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, sub_code ? sub_code : code,
                    why ? why : "waiting for the payer");
  } else if (strcmp(code, "20000") == 0) {
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, sub_code ? sub_code : code,
                    why ? why : "Alipay is unavailable");
  } else if (strcmp(code, "40004") == 0 && sub_code != NULL &&
             strcmp(sub_code, "ACQ.TRADE_NOT_EXIST") == 0 &&
             op != PT_CHAN_CREATE) {
    /* Leads to a local close or a second create: trust it only signed. */
    if (!verified) {
      pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_signature",
                      "the answer is not signed");
      return;
    }
    out->not_found = 1;
    pt_chan_res_set(out, PT_OUTCOME_FAIL, sub_code, why);
  } else if (strcmp(code, "40004") == 0 && sub_code != NULL &&
             (strcmp(sub_code, "ACQ.SYSTEM_ERROR") == 0 ||
              strcmp(sub_code, "aop.ACQ.SYSTEM_ERROR") == 0)) {
    /* Alipay's own fault, answered "try again": whether it did anything is
     * unknown, so the next attempt queries before it creates. */
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, sub_code,
                    why ? why : "Alipay had a system error");
  } else if (strcmp(code, "40001") == 0 || strcmp(code, "40002") == 0 ||
             strcmp(code, "40004") == 0 || strcmp(code, "40006") == 0) {
    /* E.g. ACQ.TRADE_STATUS_ERROR on close: the trade was paid; the runner
     * queries. */
    pt_chan_res_set(out, PT_OUTCOME_FAIL, sub_code ? sub_code : code,
                    why ? why : "Alipay refused the request");
  } else {
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, code,
                    why ? why : "unknown Alipay code");
  }
}

static void alipay_parse(pt_chan_op_t op, const pt_task_t *t,
                         const pt_http_response_t *res, pt_chan_res_t *out) {
  char name[64];
  const char *raw = NULL, *sign_raw = NULL, *sign = NULL;
  size_t raw_len = 0, sign_len = 0;
  bson_t body = BSON_INITIALIZER, resp = BSON_INITIALIZER;
  pt_chan_res_reset_trade(out);
  if (pt_chan_res_unanswered(out, res, "Alipay"))
    return;
  if (op == PT_CHAN_CREATE && is_wap(t)) {
    pt_chan_res_bad_reply(out, "alipay.trade.wap.pay has no answer to read");
    return;
  }
  if (res->http_code != 200 || res->body == NULL ||
      pt_chan_parse_object(res->body, res->body_len, 0, &body) != 0) {
    pt_chan_res_bad_reply(out, "the answer is not a JSON object");
    goto done;
  }
  /* The response object, under its method's name or error_response. */
  snprintf(name, sizeof name, "%s_response", method_of(op, t));
  for (char *p = name; *p; p++)
    if (*p == '.')
      *p = '_';
  int found = find_member(res->body, res->body_len, name, &raw, &raw_len);
  if (found == 0)
    found = find_member(res->body, res->body_len, "error_response", &raw,
                        &raw_len);
  int signs = find_member(res->body, res->body_len, "sign", &sign_raw,
                          &sign_len);
  if (found != 1 || signs > 1 || raw[0] != '{' ||
      pt_chan_parse_object(raw, raw_len, 0, &resp) != 0) {
    pt_chan_res_bad_reply(out, "the answer has no single response object");
    goto done;
  }
  bson_iter_t it;
  if (bson_iter_init_find(&it, &body, "sign")) {
    if (!BSON_ITER_HOLDS_UTF8(&it)) {
      pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_signature",
                      "sign is no string");
      goto done;
    }
    sign = bson_iter_utf8(&it, NULL);
  }
  if (sign != NULL && verify_raw(raw, raw_len, sign) != 0) {
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_signature",
                    "Alipay's signature does not verify");
    goto done;
  }
  read_response(op, t, &resp, sign != NULL, out);
done:
  bson_destroy(&body);
  bson_destroy(&resp);
}

/* ---- notifications ---- */

/* A decoded form: keys and values are NUL-terminated, malloc'd. */
typedef struct {
  pt_crypto_kv_t kv[FORM_MAX_PARAMS];
  size_t n;
} form_t;

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* Decodes n bytes of form text ('+' is a space, %XX a byte); NULL when an
 * escape is bad or the result holds a NUL or is not UTF-8. */
static char *form_decode(const char *s, size_t n) {
  char *d = malloc(n + 1);
  size_t m = 0;
  if (d == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '+') {
      d[m++] = ' ';
    } else if (s[i] == '%') {
      int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
      int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
      if (hi < 0 || lo < 0)
        goto bad;
      d[m++] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      d[m++] = s[i];
    }
  }
  d[m] = '\0';
  if (bson_utf8_validate(d, m, false))
    return d;
bad:
  free(d);
  return NULL;
}

static void form_free(form_t *f) {
  for (size_t i = 0; i < f->n; i++) {
    free((char *)f->kv[i].key);
    free((char *)f->kv[i].value);
  }
  f->n = 0;
}

static const char *form_get(const form_t *f, const char *key) {
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->kv[i].key, key) == 0)
      return f->kv[i].value;
  return NULL;
}

/* Splits and decodes an x-www-form-urlencoded body strictly: every part is
 * name=value with a name, and no name comes twice (which value would the
 * signature be about?). The caller frees f even on failure. */
static int form_parse(const char *body, size_t len, form_t *f,
                      pt_error_t *err) {
  const char *p = body, *end = body + len;
  f->n = 0;
  if (body == NULL || len == 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: the notification is empty");
  for (;;) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *stop = amp != NULL ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(stop - p));
    if (eq == NULL || eq == p)
      return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                          "alipay: a notification field is not name=value");
    if (f->n == FORM_MAX_PARAMS)
      return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                          "alipay: the notification has over %d fields",
                          FORM_MAX_PARAMS);
    char *k = form_decode(p, (size_t)(eq - p));
    char *v = form_decode(eq + 1, (size_t)(stop - eq - 1));
    if (k == NULL || v == NULL || form_get(f, k) != NULL) {
      int dup = k != NULL && v != NULL;
      free(k);
      free(v);
      return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL, "alipay: %s",
                          dup ? "a notification field appears twice"
                              : "bad percent-escape or text that is not "
                                "UTF-8 in the notification");
    }
    f->kv[f->n].key = k;
    f->kv[f->n].value = v;
    f->n++;
    if (amp == NULL)
      return 0;
    p = amp + 1;
  }
}

/* Copies a notification field into dst; PT_EINVAL when it is too long, or
 * missing and required. */
static int take(char *dst, size_t size, const form_t *f, const char *key,
                int required, pt_error_t *err) {
  const char *v = form_get(f, key);
  dst[0] = '\0';
  if (v == NULL || v[0] == '\0')
    return required ? pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                                   "alipay: the notification has no %s", key)
                    : 0;
  if (strlen(v) >= size)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: %s is too long", key);
  memcpy(dst, v, strlen(v) + 1);
  return 0;
}

/* Fields of a verified notification. */
static int read_notification(const pt_config_t *cfg, const form_t *f,
                             pt_chan_notify_t *out, pt_error_t *err) {
  const char *seller = form_get(f, "seller_id");
  const char *type = form_get(f, "notify_type");
  const char *total = form_get(f, "total_amount");
  int rc;
  if ((rc = take(out->app_id, sizeof out->app_id, f, "app_id", 1, err)) != 0)
    return rc;
  if (strcmp(out->app_id, cfg->alipay_app_id) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: app_id does not match");
  if (cfg->alipay_seller_id[0] != '\0' &&
      (seller == NULL || strcmp(seller, cfg->alipay_seller_id) != 0))
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: seller_id does not match");
  if (type != NULL && strcmp(type, "trade_status_sync") != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: not a trade notification");
  if ((rc = take(out->out_trade_no, sizeof out->out_trade_no, f,
                 "out_trade_no", 1, err)) != 0 ||
      (rc = take(out->trade_no, sizeof out->trade_no, f, "trade_no", 0,
                 err)) != 0 ||
      (rc = take(out->notify_id, sizeof out->notify_id, f, "notify_id", 1,
                 err)) != 0 ||
      (rc = take(out->raw_state, sizeof out->raw_state, f, "trade_status", 1,
                 err)) != 0)
    return rc;
  out->trade_state = map_status(out->raw_state);
  if (out->trade_state == PT_TRADE_UNKNOWN)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: unknown trade_status");
  if (total != NULL &&
      pt_amount_from_yuan(total, strlen(total), &out->amount) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: total_amount is not an amount");
  /* A payment is compared with its trade: one that names no amount is
   * refused rather than taken unchecked. */
  if (out->trade_state == PT_TRADE_SUCCEEDED && out->amount < 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "alipay: a payment without total_amount");
  return 0;
}

static int alipay_notify_parse(const pt_config_t *cfg,
                               const pt_chan_notify_in_t *in,
                               pt_chan_notify_t *out, pt_error_t *err) {
  form_t f = {.n = 0};
  char *tosign = NULL;
  size_t tosign_len;
  int rc;
  memset(out, 0, sizeof *out);
  out->amount = -1;
  if (keys.alipay_key == NULL || cfg->alipay_app_id[0] == '\0')
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_ECRYPTO,
                        "alipay: the channel is not configured, nothing to "
                        "verify the notification with");
  rc = form_parse(in->body, in->body_len, &f, err);
  if (rc != 0)
    goto done;
  const char *sign = form_get(&f, "sign");
  const char *sign_type = form_get(&f, "sign_type");
  const char *charset = form_get(&f, "charset");
  if (sign == NULL || sign[0] == '\0' ||
      (sign_type != NULL && strcmp(sign_type, "RSA2") != 0)) {
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_ECRYPTO,
                      "alipay: the notification is not signed with RSA2");
    goto done;
  }
  if (charset != NULL && strcmp(charset, "utf-8") != 0 &&
      strcmp(charset, "UTF-8") != 0) {
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                      "alipay: the notification's charset is not utf-8");
    goto done;
  }
  rc = pt_crypto_alipay_string_to_sign(f.kv, f.n,
                                       PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE,
                                       &tosign, &tosign_len, err);
  if (rc != 0)
    goto done;
  if (pt_crypto_rsa_verify(keys.alipay_key, PT_CRYPTO_SHA256, tosign,
                           tosign_len, sign, NULL) != 0) {
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_ECRYPTO,
                      "alipay: the notification's signature does not verify");
    goto done;
  }
  rc = read_notification(cfg, &f, out, err);
done:
  form_free(&f);
  free(tosign);
  if (rc != 0) {
    memset(out, 0, sizeof *out);
    out->amount = -1;
  }
  return rc;
}

/* Alipay resends until it reads exactly "success". */
static void alipay_notify_ack(int ok, const char *why, pt_chan_ack_t *ack) {
  (void)why;
  memset(ack, 0, sizeof *ack);
  ack->http_status = 200;
  ack->content_type = "text/plain";
  ack->body_len = (size_t)snprintf(ack->body, sizeof ack->body, "%s",
                                   ok ? "success" : "fail");
}

const pt_channel_ops_t pt_alipay_channel = {
    .code = "alipay",
    .name = "Alipay (Open Platform, RSA2)",
    .build = alipay_build,
    .parse = alipay_parse,
    .init = alipay_init,
    .cleanup = alipay_cleanup,
    .validate = alipay_validate,
    .notify_parse = alipay_notify_parse,
    .notify_ack = alipay_notify_ack,
    .follows_trades = 1,
    .unseen_until_scanned = 1,
};
