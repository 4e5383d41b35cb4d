/* The simulator speaks WeChat Pay API v3: JSON requests signed in the
 * Authorization header (WECHATPAY2-SHA256-RSA2048), every answer signed
 * with the platform key (Wechatpay-Timestamp, -Nonce, -Signature,
 * -Serial), and payment notifications whose resource is encrypted with the
 * APIv3 key (AEAD_AES_256_GCM). See /work/shared/CHANNELS.md ("WeChat").
 *
 *   POST /v3/pay/transactions/native            200 {"code_url"}
 *   POST /v3/pay/transactions/jsapi             200 {"prepay_id"}
 *   GET  /v3/pay/transactions/out-trade-no/{no}?mchid=…   200 transaction
 *   POST /v3/pay/transactions/out-trade-no/{no}/close     204
 *
 * Where it plays the channel rather than copies it:
 * - A repeated prepay with the same appid, amount, currency, description,
 *   trade type and openid answers what the first did; other values answer
 *   400 OUT_TRADE_NO_USED; a paid trade 400 ORDER_PAID, a closed one 400
 *   ORDER_CLOSED. time_expire and notify_url are not compared.
 * - out_trade_no must be 6..32 characters; notify_url may be http:// (the
 *   real one must be https://).
 * - Close: 204 for an unpaid or closed trade, 400 ORDER_PAID for a paid
 *   one, 404 ORDER_NOT_EXIST for an unknown one (or a known one, while
 *   its rule's lost_times lasts: a lagging replica); the 204 is signed
 *   too (over an empty body).
 * - The buyer "scanning" (POST /v1/sim/trades/{no}/scan) shows as
 *   USERPAYING.
 * - Errors: 400 PARAM_ERROR (field named in message), 400
 *   APPID_MCHID_NOT_MATCH, 401 SIGN_ERROR, 404 ORDER_NOT_EXIST / NOT_FOUND,
 *   500 SYSTEM_ERROR (outage, create_fail_times, --error-rate); an outage
 *   fails queries and closes too. */
#include <bson/bson.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/pt_crypto.h"
#include "core/pt_log.h"
#include "sim/pt_sim_dialect.h"

#define MAX_SKEW_S 300
#define SCHEME "WECHATPAY2-SHA256-RSA2048"

typedef struct {
  pt_crypto_key_t *merchant_public;  /* verifies requests */
  pt_crypto_key_t *platform_private; /* signs answers and notifications */
} wechat_t;

/* ---- answers ---------------------------------------------------------- */

typedef struct {
  char ts[24], nonce[33];
  char *sig;
} signature_t;

/* Signs TS\nNONCE\nBODY\n with the platform key. */
static int sign_message(const wechat_t *w, const char *body, size_t len,
                        signature_t *s) {
  char *msg = NULL;
  size_t mlen, slen;
  s->sig = NULL;
  snprintf(s->ts, sizeof s->ts, "%lld",
           (long long)(pt_sim_now_ms() / 1000));
  int rc = pt_crypto_random_alnum(s->nonce, 32, NULL);
  if (rc == 0)
    rc = pt_crypto_wechat_response_message(s->ts, s->nonce, body, len, &msg,
                                           &mlen, NULL);
  if (rc == 0)
    rc = pt_crypto_rsa_sign(w->platform_private, PT_CRYPTO_SHA256, msg, mlen,
                            &s->sig, &slen, NULL);
  free(msg);
  return rc;
}

static void reply_raw(pt_sim_t *sim, const wechat_t *w, pt_httpd_req_t *req,
                      int status, const char *body, size_t len, int delay) {
  signature_t s;
  if (sign_message(w, body, len, &s) != 0) {
    pt_sim_respond(sim, req, 500, "text/plain", "signing failed", 14, NULL, 0);
    return;
  }
  const char *headers[] = {"Wechatpay-Timestamp", s.ts,
                           "Wechatpay-Nonce",     s.nonce,
                           "Wechatpay-Signature", s.sig,
                           "Wechatpay-Serial",
                           pt_sim_config(sim)->wechat_platform_serial,
                           NULL};
  pt_sim_respond(sim, req, status, len > 0 ? "application/json" : NULL, body,
                 len, headers, delay);
  free(s.sig);
}

static void reply(pt_sim_t *sim, const wechat_t *w, pt_httpd_req_t *req,
                  int status, const bson_t *d, int delay) {
  size_t len;
  char *json = bson_as_relaxed_extended_json(d, &len);
  reply_raw(sim, w, req, status, json, len, delay);
  bson_free(json);
}

static void reply_error(pt_sim_t *sim, const wechat_t *w, pt_httpd_req_t *req,
                        int status, const char *code, const char *message,
                        int delay) {
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "code", code);
  BSON_APPEND_UTF8(&d, "message", message);
  reply(sim, w, req, status, &d, delay);
  bson_destroy(&d);
}

/* ---- the Authorization header ----------------------------------------- */

typedef struct {
  char mchid[64], nonce[64], ts[24], serial[128], sig[1024];
} auth_t;

/* Reads `WECHATPAY2-SHA256-RSA2048 k="v",k="v",…` into a; -1 if malformed
 * or a field is missing. */
static int parse_auth(const char *h, size_t len, auth_t *a) {
  static const struct {
    const char *key;
    size_t off, size;
  } fields[] = {{"mchid", offsetof(auth_t, mchid), sizeof a->mchid},
                {"nonce_str", offsetof(auth_t, nonce), sizeof a->nonce},
                {"timestamp", offsetof(auth_t, ts), sizeof a->ts},
                {"serial_no", offsetof(auth_t, serial), sizeof a->serial},
                {"signature", offsetof(auth_t, sig), sizeof a->sig}};
  const char *p = h, *end = h + len;
  unsigned seen = 0;
  memset(a, 0, sizeof *a);
  if (len <= sizeof SCHEME || memcmp(p, SCHEME " ", sizeof SCHEME) != 0)
    return -1;
  p += sizeof SCHEME;
  for (;;) {
    while (p < end && *p == ' ')
      p++;
    const char *k = p;
    while (p < end && (islower((unsigned char)*p) || *p == '_'))
      p++;
    size_t klen = (size_t)(p - k);
    if (klen == 0 || end - p < 2 || p[0] != '=' || p[1] != '"')
      return -1;
    const char *v = p + 2, *q = memchr(v, '"', (size_t)(end - v));
    if (q == NULL)
      return -1;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
      if (strlen(fields[i].key) != klen || memcmp(fields[i].key, k, klen) != 0)
        continue;
      if ((seen & (1u << i)) || (size_t)(q - v) >= fields[i].size)
        return -1;
      seen |= 1u << i;
      memcpy((char *)a + fields[i].off, v, (size_t)(q - v));
    }
    p = q + 1;
    if (p == end)
      break;
    if (*p++ != ',')
      return -1;
  }
  return seen == 31 ? 0 : -1;
}

/* Verifies the request's signature; on failure answers 401 and returns -1. */
static int check_auth(pt_sim_t *sim, const wechat_t *w, pt_httpd_req_t *req) {
  const pt_config_t *cfg = pt_sim_config(sim);
  size_t hlen, mlen, plen, qlen, blen;
  const char *h = pt_httpd_header(req, "Authorization", &hlen);
  const char *m = pt_httpd_method(req, &mlen);
  const char *p = pt_httpd_path(req, &plen);
  const char *q = pt_httpd_query(req, &qlen);
  const char *body = pt_httpd_body(req, &blen);
  const char *why = NULL;
  char method[16], url[2048], *msg = NULL, *end;
  size_t msglen;
  auth_t a;
  if (h == NULL)
    why = "the Authorization header is missing";
  else if (parse_auth(h, hlen, &a) != 0)
    why = "the Authorization header is malformed (" SCHEME
          " mchid=,nonce_str=,timestamp=,serial_no=,signature=)";
  else if (strcmp(a.mchid, cfg->wechat_mchid) != 0)
    why = "mchid in the Authorization header is not this merchant";
  else if (cfg->wechat_serial_no[0] != '\0' &&
           strcmp(a.serial, cfg->wechat_serial_no) != 0)
    why = "serial_no is not the merchant certificate's serial";
  if (why == NULL) {
    long long ts = strtoll(a.ts, &end, 10);
    long long now = (long long)(pt_sim_now_ms() / 1000);
    if (end == a.ts || *end != '\0' || ts < now - MAX_SKEW_S ||
        ts > now + MAX_SKEW_S)
      why = "timestamp is more than 5 minutes away from now";
  }
  if (why == NULL) {
    snprintf(method, sizeof method, "%.*s", (int)mlen, m);
    int n = q != NULL ? snprintf(url, sizeof url, "%.*s?%.*s", (int)plen, p,
                                 (int)qlen, q)
                      : snprintf(url, sizeof url, "%.*s", (int)plen, p);
    if (n < 0 || (size_t)n >= sizeof url ||
        pt_crypto_wechat_request_message(method, url, a.ts, a.nonce, body,
                                         blen, &msg, &msglen, NULL) != 0 ||
        pt_crypto_rsa_verify(w->merchant_public, PT_CRYPTO_SHA256, msg, msglen,
                             a.sig, NULL) != 0)
      why = "signature verification failed (METHOD\\nURL\\nTIMESTAMP\\nNONCE"
            "\\nBODY\\n with the merchant key)";
    free(msg);
  }
  if (why == NULL)
    return 0;
  reply_error(sim, w, req, 401, "SIGN_ERROR", why, 0);
  return -1;
}

/* ---- transactions ----------------------------------------------------- */

static const char *trade_state(pt_sim_state_t s, const char **desc) {
  switch (s) {
  case PT_SIM_PAID:
    *desc = "支付成功";
    return "SUCCESS";
  case PT_SIM_CLOSED:
    *desc = "订单已关闭";
    return "CLOSED";
  case PT_SIM_SCANNED:
    *desc = "用户支付中";
    return "USERPAYING";
  default:
    *desc = "订单未支付";
    return "NOTPAY";
  }
}

/* The transaction JSON of query and of the notification's resource. */
static void transaction_doc(const pt_config_t *cfg, const pt_sim_trade_t *t,
                            bson_t *d) {
  const char *desc, *state = trade_state(t->state, &desc);
  int paid = t->state == PT_SIM_PAID;
  char when[26];
  bson_t sub;
  BSON_APPEND_UTF8(d, "appid", cfg->wechat_appid);
  BSON_APPEND_UTF8(d, "mchid", cfg->wechat_mchid);
  BSON_APPEND_UTF8(d, "out_trade_no", t->no);
  if (paid)
    BSON_APPEND_UTF8(d, "transaction_id", t->trade_no);
  BSON_APPEND_UTF8(d, "trade_type", t->kind);
  BSON_APPEND_UTF8(d, "trade_state", state);
  BSON_APPEND_UTF8(d, "trade_state_desc", desc);
  if (paid) {
    pt_sim_time_rfc3339(t->paid_ms, when);
    BSON_APPEND_UTF8(d, "bank_type", "OTHERS");
    BSON_APPEND_UTF8(d, "attach", "");
    BSON_APPEND_UTF8(d, "success_time", when);
    BSON_APPEND_DOCUMENT_BEGIN(d, "payer", &sub);
    BSON_APPEND_UTF8(&sub, "openid", t->payer[0] ? t->payer : "oSimBuyer0001");
    bson_append_document_end(d, &sub);
  }
  BSON_APPEND_DOCUMENT_BEGIN(d, "amount", &sub);
  BSON_APPEND_INT64(&sub, "total", t->amount);
  if (paid)
    BSON_APPEND_INT64(&sub, "payer_total", t->amount);
  BSON_APPEND_UTF8(&sub, "currency", t->currency);
  BSON_APPEND_UTF8(&sub, "payer_currency", t->currency);
  bson_append_document_end(d, &sub);
}

static const char *str_at(const bson_t *doc, const char *path) {
  bson_iter_t it, f;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &f) &&
      BSON_ITER_HOLDS_UTF8(&f))
    return bson_iter_utf8(&f, NULL);
  return NULL;
}

static size_t utf8_chars(const char *s) {
  size_t n = 0;
  for (; *s != '\0'; s++)
    n += ((unsigned char)*s & 0xc0) != 0x80;
  return n;
}

static int no_ok(const char *no) {
  size_t n = strlen(no);
  if (n < 6 || n > 32)
    return 0;
  for (; *no != '\0'; no++)
    if (!isalnum((unsigned char)*no) && strchr("_-|*.", *no) == NULL)
      return 0;
  return 1;
}

/* RFC 3339 ("2018-06-08T10:34:56+08:00", "…Z") to Unix ms; -1 if bad. */
static int64_t parse_rfc3339(const char *s) {
  struct tm tm;
  int n = 0, oh = 0, om = 0;
  char sign = 0;
  memset(&tm, 0, sizeof tm);
  if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
             &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
      n != 19 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
      tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
    return -1;
  s += n;
  if (*s == '.') /* fractions of a second are allowed, and ignored */
    for (s++; isdigit((unsigned char)*s); s++)
      ;
  if (strcmp(s, "Z") != 0) {
    if ((s[0] != '+' && s[0] != '-') || strlen(s) != 6 || s[3] != ':' ||
        sscanf(s + 1, "%2d:%2d", &oh, &om) != 2 || oh > 23 || om > 59)
      return -1;
    sign = s[0];
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  int64_t t = (int64_t)timegm(&tm) - (sign == '-' ? -1 : 1) *
                                         (sign ? (oh * 3600 + om * 60) : 0);
  return t * 1000;
}

static void prepay(pt_sim_t *sim, const wechat_t *w, pt_httpd_req_t *req,
                   int jsapi) {
  const pt_config_t *cfg = pt_sim_config(sim);
  size_t blen;
  const char *body = pt_httpd_body(req, &blen);
  bson_t doc;
  bson_iter_t it;
  pt_input_error_t ie;
  if (pt_json_parse_object(body, blen, &doc, &ie) != 0) {
    reply_error(sim, w, req, 400, "PARAM_ERROR", ie.message, 0);
    return;
  }
  const char *appid = str_at(&doc, "appid"), *mchid = str_at(&doc, "mchid");
  const char *desc = str_at(&doc, "description");
  const char *no = str_at(&doc, "out_trade_no");
  const char *expire = str_at(&doc, "time_expire");
  const char *url = str_at(&doc, "notify_url");
  const char *cur = str_at(&doc, "amount.currency");
  const char *openid = jsapi ? str_at(&doc, "payer.openid") : "";
  int64_t total = -1, expire_ms = 0, now = pt_sim_channel_now_ms(sim);
  if (bson_iter_init(&it, &doc) &&
      bson_iter_find_descendant(&it, "amount.total", &it) &&
      (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it)))
    total = bson_iter_as_int64(&it);
  const char *bad = NULL, *code = "PARAM_ERROR";
  if (appid == NULL || mchid == NULL)
    bad = "appid and mchid are required";
  else if (strcmp(appid, cfg->wechat_appid) != 0 ||
           strcmp(mchid, cfg->wechat_mchid) != 0)
    code = "APPID_MCHID_NOT_MATCH", bad = "appid和mch_id不匹配";
  else if (desc == NULL || desc[0] == '\0' || utf8_chars(desc) > 127)
    bad = "description is required (at most 127 characters)";
  else if (no == NULL || !no_ok(no))
    bad = "out_trade_no must be 6..32 of [0-9A-Za-z_-|*.]";
  else if (expire != NULL && (expire_ms = parse_rfc3339(expire)) <= now)
    bad = "time_expire must be RFC 3339 (yyyy-MM-ddTHH:mm:ss+08:00) and in "
          "the future";
  else if (url == NULL || strlen(url) > 255 ||
           (strncmp(url, "https://", 8) != 0 &&
            strncmp(url, "http://", 7) != 0))
    bad = "notify_url must be an http(s) URL of at most 255 bytes";
  else if (total < 1 || total > 10000000000LL)
    bad = "amount.total must be an integer number of fen >= 1";
  else if (cur != NULL && strcmp(cur, "CNY") != 0)
    bad = "amount.currency must be CNY";
  else if (openid == NULL || (jsapi && (openid[0] == '\0' ||
                                        strlen(openid) >= 128)))
    bad = "payer.openid is required";
  if (bad != NULL) {
    reply_error(sim, w, req, 400, code, bad, pt_sim_latency(sim, NULL));
    bson_destroy(&doc);
    return;
  }
  char params[1024];
  snprintf(params, sizeof params, "%s|%s|%lld|%s|%s|%s",
           jsapi ? "JSAPI" : "NATIVE", appid, (long long)total, "CNY", openid,
           desc);
  pt_sim_trade_t *t;
  pt_sim_create_t r = pt_sim_create_begin(sim, no, &t);
  int delay = pt_sim_latency(sim, t);
  if (r == PT_SIM_CREATE_FAIL) {
    reply_error(sim, w, req, 500, "SYSTEM_ERROR", "系统错误", delay);
  } else if (r == PT_SIM_CREATE_REPEAT && t->state == PT_SIM_PAID) {
    reply_error(sim, w, req, 400, "ORDER_PAID", "该订单已支付", delay);
  } else if (r == PT_SIM_CREATE_REPEAT && t->state == PT_SIM_CLOSED) {
    reply_error(sim, w, req, 400, "ORDER_CLOSED", "订单已关闭", delay);
  } else if (r == PT_SIM_CREATE_REPEAT && strcmp(t->params, params) != 0) {
    reply_error(sim, w, req, 400, "OUT_TRADE_NO_USED", "商户订单号重复",
                delay);
  } else {
    if (r == PT_SIM_CREATE_NEW) {
      char day[26], rnd[19];
      pt_sim_time_rfc3339(now, day);
      snprintf(t->trade_no, sizeof t->trade_no, "4200000%.4s%.2s%.2s%013llu",
               day, day + 5, day + 8,
               (unsigned long long)pt_sim_next_seq(sim));
      if (pt_crypto_random_alnum(rnd, 18, NULL) != 0)
        snprintf(rnd, sizeof rnd, "%018llu",
                 (unsigned long long)pt_sim_next_seq(sim));
      if (jsapi)
        snprintf(t->code, sizeof t->code, "wx%.4s%.2s%.2s%.2s%.2s%.2s%s", day,
                 day + 5, day + 8, day + 11, day + 14, day + 17, rnd);
      else
        snprintf(t->code, sizeof t->code, "weixin://wxpay/bizpayurl?pr=%.7s",
                 rnd);
      snprintf(t->params, sizeof t->params, "%s", params);
      snprintf(t->kind, sizeof t->kind, "%s", jsapi ? "JSAPI" : "NATIVE");
      snprintf(t->payer, sizeof t->payer, "%s", openid);
      snprintf(t->currency, sizeof t->currency, "CNY");
      snprintf(t->notify_url, sizeof t->notify_url, "%s", url);
      t->amount = total;
      t->expire_ms = expire_ms;
      pt_sim_trade_created(sim, t);
    }
    bson_t d = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&d, jsapi ? "prepay_id" : "code_url", t->code);
    reply(sim, w, req, 200, &d, delay);
    bson_destroy(&d);
  }
  bson_destroy(&doc);
}

static void query(pt_sim_t *sim, const wechat_t *w, pt_httpd_req_t *req,
                  const char *no) {
  const pt_config_t *cfg = pt_sim_config(sim);
  size_t qlen;
  const char *q = pt_httpd_query(req, &qlen);
  pt_sim_trade_t *t = pt_sim_trade_find(sim, no);
  int delay = pt_sim_latency(sim, t);
  size_t mlen = strlen(cfg->wechat_mchid);
  pt_sim_count(sim, t, PT_SIM_CALL_QUERY);
  if (pt_sim_outage(sim)) { /* an outage fails every call */
    reply_error(sim, w, req, 500, "SYSTEM_ERROR", "系统错误", delay);
    return;
  }
  if (q == NULL || qlen != 6 + mlen || memcmp(q, "mchid=", 6) != 0 ||
      memcmp(q + 6, cfg->wechat_mchid, mlen) != 0) {
    reply_error(sim, w, req, 400, "PARAM_ERROR",
                "the query string must be mchid=<this merchant>", delay);
    return;
  }
  if (t == NULL || t->state == PT_SIM_NONE || pt_sim_lost(t)) {
    reply_error(sim, w, req, 404, "ORDER_NOT_EXIST", "订单不存在", delay);
    return;
  }
  bson_t d = BSON_INITIALIZER;
  transaction_doc(cfg, t, &d);
  reply(sim, w, req, 200, &d, delay);
  bson_destroy(&d);
}

static void close_trade(pt_sim_t *sim, const wechat_t *w, pt_httpd_req_t *req,
                        const char *no) {
  const pt_config_t *cfg = pt_sim_config(sim);
  size_t blen;
  const char *body = pt_httpd_body(req, &blen);
  pt_sim_trade_t *t = pt_sim_trade_find(sim, no);
  int delay = pt_sim_latency(sim, t);
  bson_t doc;
  pt_input_error_t ie;
  pt_sim_count(sim, t, PT_SIM_CALL_CLOSE);
  if (pt_sim_outage(sim)) {
    reply_error(sim, w, req, 500, "SYSTEM_ERROR", "系统错误", delay);
    return;
  }
  if (pt_json_parse_object(body, blen, &doc, &ie) != 0) {
    reply_error(sim, w, req, 400, "PARAM_ERROR", ie.message, delay);
    return;
  }
  const char *mchid = str_at(&doc, "mchid");
  int ok = mchid != NULL && strcmp(mchid, cfg->wechat_mchid) == 0;
  bson_destroy(&doc);
  if (!ok)
    reply_error(sim, w, req, 400, "PARAM_ERROR",
                "the body must be {\"mchid\": <this merchant>}", delay);
  else if (t == NULL || t->state == PT_SIM_NONE || pt_sim_lost(t))
    reply_error(sim, w, req, 404, "ORDER_NOT_EXIST", "订单不存在", delay);
  else if (t->state == PT_SIM_PAID)
    reply_error(sim, w, req, 400, "ORDER_PAID", "订单已支付", delay);
  else {
    pt_sim_trade_close(sim, t);
    reply_raw(sim, w, req, 204, "", 0, delay);
  }
}

static void wechat_handle(pt_sim_t *sim, void *state, pt_httpd_req_t *req) {
  const wechat_t *w = state;
  static const char by_no[] = "/v3/pay/transactions/out-trade-no/";
  size_t mlen, plen;
  const char *m = pt_httpd_method(req, &mlen);
  const char *p = pt_httpd_path(req, &plen);
  int is_post = mlen == 4 && memcmp(m, "POST", 4) == 0;
  int is_get = mlen == 3 && memcmp(m, "GET", 3) == 0;
  char path[256], no[PT_OUT_TRADE_NO_MAX + 1] = "";
  int op = 0; /* 1 native, 2 jsapi, 3 query, 4 close */
  if (plen < sizeof path) {
    memcpy(path, p, plen);
    path[plen] = '\0';
  } else {
    path[0] = '\0';
  }
  if (is_post && strcmp(path, "/v3/pay/transactions/native") == 0) {
    op = 1;
  } else if (is_post && strcmp(path, "/v3/pay/transactions/jsapi") == 0) {
    op = 2;
  } else if (strncmp(path, by_no, sizeof by_no - 1) == 0) {
    const char *rest = path + sizeof by_no - 1;
    const char *slash = strchr(rest, '/');
    size_t nlen = slash ? (size_t)(slash - rest) : strlen(rest);
    /* A client may percent-encode the out_trade_no in the path (the
     * signature covers the path as sent). */
    if (nlen > 0 && pt_sim_path_decode(rest, nlen, no, sizeof no) == 0) {
      if (is_get && slash == NULL)
        op = 3;
      else if (is_post && slash != NULL && strcmp(slash, "/close") == 0)
        op = 4;
    }
  }
  if (op == 0) {
    reply_error(sim, w, req, 404, "NOT_FOUND", "no such API", 0);
    return;
  }
  if (check_auth(sim, w, req) != 0)
    return;
  if (op <= 2)
    prepay(sim, w, req, op == 2);
  else if (op == 3)
    query(sim, w, req, no);
  else
    close_trade(sim, w, req, no);
}

/* ---- notifications ---------------------------------------------------- */

static int wechat_notify_build(pt_sim_t *sim, void *state,
                               const pt_sim_trade_t *t, const char *notify_id,
                               pt_sim_notice_t *out) {
  const wechat_t *w = state;
  const pt_config_t *cfg = pt_sim_config(sim);
  char nonce[13], when[26], *ct = NULL, *plain;
  size_t ctlen, plen, blen;
  bson_t tx = BSON_INITIALIZER, d = BSON_INITIALIZER, r;
  signature_t s = {.sig = NULL};
  transaction_doc(cfg, t, &tx);
  plain = bson_as_relaxed_extended_json(&tx, &plen);
  int rc = pt_crypto_random_alnum(nonce, 12, NULL);
  if (rc == 0)
    rc = pt_crypto_wechat_encrypt(cfg->wechat_apiv3_key, nonce, "transaction",
                                  plain, plen, &ct, &ctlen, NULL);
  bson_free(plain);
  bson_destroy(&tx);
  if (rc != 0)
    return rc;
  pt_sim_time_rfc3339(t->paid_ms, when);
  BSON_APPEND_UTF8(&d, "id", notify_id);
  BSON_APPEND_UTF8(&d, "create_time", when);
  BSON_APPEND_UTF8(&d, "resource_type", "encrypt-resource");
  BSON_APPEND_UTF8(&d, "event_type", "TRANSACTION.SUCCESS");
  BSON_APPEND_UTF8(&d, "summary", "支付成功");
  BSON_APPEND_DOCUMENT_BEGIN(&d, "resource", &r);
  BSON_APPEND_UTF8(&r, "original_type", "transaction");
  BSON_APPEND_UTF8(&r, "algorithm", "AEAD_AES_256_GCM");
  BSON_APPEND_UTF8(&r, "ciphertext", ct);
  BSON_APPEND_UTF8(&r, "associated_data", "transaction");
  BSON_APPEND_UTF8(&r, "nonce", nonce);
  bson_append_document_end(&d, &r);
  free(ct);
  char *json = bson_as_relaxed_extended_json(&d, &blen);
  bson_destroy(&d);
  rc = sign_message(w, json, blen, &s);
  const char *headers[] = {"Content-Type",        "application/json",
                           "Wechatpay-Timestamp", s.ts,
                           "Wechatpay-Nonce",     s.nonce,
                           "Wechatpay-Signature", s.sig,
                           "Wechatpay-Serial",    cfg->wechat_platform_serial,
                           "Wechatpay-Signature-Type", SCHEME};
  for (size_t i = 0; rc == 0 && i < sizeof headers / sizeof headers[0]; i += 2)
    rc = pt_sim_notice_header(out, headers[i], headers[i + 1]);
  free(s.sig);
  if (rc == 0) {
    out->body = malloc(blen + 1);
    if (out->body == NULL)
      rc = PT_ENOMEM;
    else {
      memcpy(out->body, json, blen + 1);
      out->len = blen;
    }
  }
  bson_free(json);
  return rc;
}

/* WeChat Pay takes 200 or 204 as the acknowledgement. */
static int wechat_notify_acked(long http_code, const char *body, size_t len) {
  (void)body;
  (void)len;
  return http_code == 200 || http_code == 204;
}

/* ---- set-up ----------------------------------------------------------- */

static int wechat_init(void *state, const pt_config_t *cfg, pt_error_t *err) {
  wechat_t *w = state;
  const char *missing = cfg->wechat_mchid[0] == '\0'    ? "channel.wechat.mchid"
                        : cfg->wechat_appid[0] == '\0' ? "channel.wechat.appid"
                        : cfg->wechat_platform_serial[0] == '\0'
                            ? "channel.wechat.platform_serial"
                        : strlen(cfg->wechat_apiv3_key) != 32
                            ? "channel.wechat.apiv3_key (32 bytes)"
                            : NULL;
  if (missing != NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s is not set",
                        missing);
  int rc = pt_sim_load_key("sim.wechat.merchant_public_key_file",
                    cfg->sim_wechat_merchant_public_key_file, 0,
                    &w->merchant_public, err);
  if (rc == 0)
    rc = pt_sim_load_key("sim.wechat.private_key_file",
                  cfg->sim_wechat_private_key_file, 1, &w->platform_private,
                  err);
  return rc;
}

static void wechat_cleanup(void *state) {
  wechat_t *w = state;
  pt_crypto_key_destroy(w->merchant_public);
  pt_crypto_key_destroy(w->platform_private);
}

const pt_sim_dialect_ops_t pt_sim_wechat_dialect = {
    .name = "wechat",
    .state_size = sizeof(wechat_t),
    .init = wechat_init,
    .cleanup = wechat_cleanup,
    .handle = wechat_handle,
    .notify_build = wechat_notify_build,
    .notify_acked = wechat_notify_acked,
};
