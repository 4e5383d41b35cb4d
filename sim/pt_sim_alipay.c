/* The simulator speaks Alipay (Open Platform, RSA2): one gateway,
 * POST /gateway.do, form-encoded public parameters and a JSON biz_content;
 * answers {"<method>_response":{…},"sign":"…"} signed over the exact bytes
 * of the inner object; notifications form-encoded to the create's
 * notify_url. See /work/shared/CHANNELS.md ("Alipay").
 *
 * Where it plays the channel rather than copies it:
 * - Until the buyer scans (POST /v1/sim/trades/{no}/scan or pays), query
 *   and close answer 40004 ACQ.TRADE_NOT_EXIST, as Alipay does, and the
 *   close changes nothing: the QR code stays payable until its own
 *   time_expire (or timeout_express) by the channel's clock, which POST
 *   /v1/sim/clock may set behind ours. A payment then is a trade paytask
 *   has closed locally and the channel calls paid.
 * - Closing a closed trade answers 10000 again; a paid one 40004
 *   ACQ.TRADE_STATUS_ERROR.
 * - A repeated precreate answers the same qr_code when the amount is the
 *   same, 40004 ACQ.CONTEXT_INCONSISTENT when it is not, and
 *   ACQ.TRADE_HAS_SUCCESS / ACQ.TRADE_HAS_CLOSE once paid / closed.
 * - Bad or missing biz_content fields answer 40004 ACQ.INVALID_PARAMETER.
 * - `timestamp` must be within 15 minutes of now (GMT+8).
 * - A system error (outage, create_fail_times, --error-rate) is HTTP 200
 *   with code 20000 isp.unknow-error, signed, as Alipay answers it. An
 *   outage fails queries and closes too. */
#include <bson/bson.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/pt_buf.h"
#include "core/pt_crypto.h"
#include "core/pt_log.h"
#include "sim/pt_sim_dialect.h"

#define MAX_PARAMS 64
#define TIMESTAMP_SKEW_S (15 * 60)

typedef struct {
  pt_crypto_key_t *app_public;     /* verifies requests */
  pt_crypto_key_t *alipay_private; /* signs answers and notifications */
} alipay_t;

/* ---- forms ------------------------------------------------------------ */

typedef struct {
  pt_crypto_kv_t kv[MAX_PARAMS];
  size_t n;
} form_t;

static void form_free(form_t *f) {
  for (size_t i = 0; i < f->n; i++) {
    free((char *)f->kv[i].key);
    free((char *)f->kv[i].value);
  }
  f->n = 0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = tolower(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes %XX and '+'; NULL on a bad escape or an encoded NUL. */
static char *form_decode(const char *s, size_t len) {
  char *out = malloc(len + 1), *o = out;
  if (out == NULL)
    return NULL;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '+') {
      *o++ = ' ';
    } else if (s[i] == '%') {
      int hi = i + 2 < len ? hexval((unsigned char)s[i + 1]) : -1;
      int lo = hi >= 0 ? hexval((unsigned char)s[i + 2]) : -1;
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
        free(out);
        return NULL;
      }
      *o++ = (char)(hi * 16 + lo);
      i += 2;
    } else {
      *o++ = s[i];
    }
  }
  *o = '\0';
  return out;
}

/* Adds the k=v pairs of s to f. Strict: every pair has a non-empty key and
 * an '=', no empty pairs, no key twice, valid escapes. */
static int form_parse(const char *s, size_t len, form_t *f) {
  size_t at = 0;
  if (len == 0)
    return 0;
  for (;;) {
    const char *amp = memchr(s + at, '&', len - at);
    size_t end = amp != NULL ? (size_t)(amp - s) : len;
    const char *eq = memchr(s + at, '=', end - at);
    if (eq == NULL || eq == s + at || f->n >= MAX_PARAMS)
      return -1;
    char *k = form_decode(s + at, (size_t)(eq - (s + at)));
    char *v = form_decode(eq + 1, (size_t)(s + end - (eq + 1)));
    int dup = 0;
    for (size_t i = 0; k != NULL && i < f->n; i++)
      dup |= strcmp(f->kv[i].key, k) == 0;
    if (k == NULL || v == NULL || dup) {
      free(k);
      free(v);
      return -1;
    }
    f->kv[f->n].key = k;
    f->kv[f->n++].value = v;
    if (amp == NULL)
      return 0;
    at = end + 1;
    if (at == len)
      return -1; /* a trailing '&' */
  }
}

static const char *form_get(const form_t *f, const char *key) {
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->kv[i].key, key) == 0)
      return f->kv[i].value;
  return NULL;
}

/* Appends s form-encoded (unreserved bytes as is, space as '+'). */
static int form_encode(pt_buf_t *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    char e[3] = {'%', hex[c >> 4], hex[c & 15]};
    int rc = isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~'
                 ? pt_buf_append(b, s, 1)
             : c == ' ' ? pt_buf_append(b, "+", 1)
                        : pt_buf_append(b, e, 3);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* ---- amounts and times ------------------------------------------------ */

/* "12.34" (at most two decimals, 0.01 .. 100000000.00) to fen; -1 if bad. */
static int64_t yuan_to_fen(const char *s) {
  int64_t yuan = 0, fen = 0;
  int digits = 0, decimals = 0;
  for (; isdigit((unsigned char)*s); s++, digits++)
    yuan = yuan * 10 + (*s - '0');
  if (digits == 0 || digits > 9)
    return -1;
  if (*s == '.') {
    for (s++; isdigit((unsigned char)*s); s++, decimals++)
      fen = fen * 10 + (*s - '0');
    if (decimals == 0 || decimals > 2)
      return -1;
    if (decimals == 1)
      fen *= 10;
  }
  int64_t v = yuan * 100 + fen;
  return *s != '\0' || v < 1 || v > 10000000000LL ? -1 : v;
}

static void fen_to_yuan(int64_t fen, char out[32]) {
  snprintf(out, 32, "%lld.%02lld", (long long)(fen / 100),
           (long long)(fen % 100));
}

/* "yyyy-MM-dd HH:mm:ss" in GMT+8 to Unix seconds; -1 if malformed. */
static int64_t parse_cst(const char *s) {
  struct tm tm;
  static const char shape[] = "dddd-dd-dd dd:dd:dd";
  if (strlen(s) != sizeof shape - 1)
    return -1;
  for (size_t i = 0; i < sizeof shape - 1; i++)
    if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
      return -1;
  memset(&tm, 0, sizeof tm);
  if (sscanf(s, "%4d-%2d-%2d %2d:%2d:%2d", &tm.tm_year, &tm.tm_mon,
             &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6 ||
      tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
      tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
    return -1;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm) - 8 * 3600;
}

/* timeout_express ("90m", "2h", "1d", "1c": the end of today, GMT+8) to
 * an expiry in Unix ms from now; -1 if malformed, outside 1m..15d. */
static int64_t parse_timeout_express(const char *s, int64_t now_ms) {
  char *end;
  long n = strtol(s, &end, 10);
  if (end == s || n < 1 || end[0] == '\0' || end[1] != '\0')
    return -1;
  int64_t ms;
  switch (end[0]) {
  case 'm':
    ms = (int64_t)n * 60000;
    break;
  case 'h':
    ms = (int64_t)n * 3600000;
    break;
  case 'd':
    ms = (int64_t)n * 86400000;
    break;
  case 'c': {
    int64_t day = 86400000, local = now_ms + 8 * 3600000LL;
    return n == 1 ? now_ms + (day - local % day) : -1;
  }
  default:
    return -1;
  }
  return ms < 60000 || ms > 15 * 86400000LL ? -1 : now_ms + ms;
}

/* ---- answers ---------------------------------------------------------- */

/* Answers {"<method>_response":<d as JSON>,"sign":"…"}; method NULL gives
 * error_response. The sign covers the inner object's bytes as sent, so the
 * outer object is the one place built by concatenation. */
static void reply(pt_sim_t *sim, alipay_t *a, pt_httpd_req_t *req,
                  const char *method, const bson_t *d, int delay) {
  char key[96];
  size_t len = 0, slen = 0;
  char *inner = bson_as_relaxed_extended_json(d, &len), *sig = NULL;
  pt_buf_t b = {NULL, 0};
  if (method != NULL) {
    snprintf(key, sizeof key, "%s_response", method);
    for (char *p = key; *p != '\0'; p++)
      if (*p == '.')
        *p = '_';
  } else {
    snprintf(key, sizeof key, "error_response");
  }
  int rc = pt_crypto_rsa_sign(a->alipay_private, PT_CRYPTO_SHA256, inner, len,
                              &sig, &slen, NULL);
  if (rc == 0 &&
      (pt_buf_append(&b, "{\"", 2) != 0 ||
       pt_buf_append(&b, key, strlen(key)) != 0 ||
       pt_buf_append(&b, "\":", 2) != 0 || pt_buf_append(&b, inner, len) != 0 ||
       pt_buf_append(&b, ",\"sign\":\"", 9) != 0 ||
       pt_buf_append(&b, sig, slen) != 0 || pt_buf_append(&b, "\"}", 2) != 0))
    rc = PT_ENOMEM;
  if (rc == 0)
    pt_sim_respond(sim, req, 200, "application/json;charset=utf-8", b.data,
                   b.len, NULL, delay);
  else
    pt_sim_respond(sim, req, 500, "text/plain", "signing failed", 14, NULL, 0);
  bson_free(inner);
  free(sig);
  free(b.data);
}

static const char *code_msg(const char *code) {
  if (strcmp(code, "10000") == 0)
    return "Success";
  if (strcmp(code, "20000") == 0)
    return "Service Currently Unavailable";
  if (strcmp(code, "40001") == 0)
    return "Missing Required Arguments";
  if (strcmp(code, "40002") == 0)
    return "Invalid Arguments";
  return "Business Failed";
}

static void reply_error(pt_sim_t *sim, alipay_t *a, pt_httpd_req_t *req,
                        const char *method, const char *code,
                        const char *sub_code, const char *sub_msg,
                        const char *out_trade_no, int delay) {
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "code", code);
  BSON_APPEND_UTF8(&d, "msg", code_msg(code));
  BSON_APPEND_UTF8(&d, "sub_code", sub_code);
  BSON_APPEND_UTF8(&d, "sub_msg", sub_msg);
  if (out_trade_no != NULL)
    BSON_APPEND_UTF8(&d, "out_trade_no", out_trade_no);
  reply(sim, a, req, method, &d, delay);
  bson_destroy(&d);
}

static void success_head(bson_t *d) {
  BSON_APPEND_UTF8(d, "code", "10000");
  BSON_APPEND_UTF8(d, "msg", "Success");
}

/* ---- the APIs --------------------------------------------------------- */

static const char *biz_str(const bson_t *biz, const char *key) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, biz, key) && BSON_ITER_HOLDS_UTF8(&it))
    return bson_iter_utf8(&it, NULL);
  return NULL;
}

/* The trade a query or close names (out_trade_no or trade_no), or NULL. */
static pt_sim_trade_t *named_trade(pt_sim_t *sim, const bson_t *biz) {
  const char *no = biz_str(biz, "out_trade_no");
  const char *tn = biz_str(biz, "trade_no");
  if (no != NULL && no[0] != '\0')
    return pt_sim_trade_find(sim, no);
  return tn != NULL && tn[0] != '\0' ? pt_sim_trade_find_by_trade_no(sim, tn)
                                     : NULL;
}

/* At Alipay a precreated trade exists once the buyer has scanned it. */
static int visible(const pt_sim_trade_t *t) {
  return t != NULL && t->state != PT_SIM_NONE && t->scanned;
}

static void precreate(pt_sim_t *sim, alipay_t *a, pt_httpd_req_t *req,
                      const char *method, const form_t *f, const bson_t *biz) {
  const char *no = biz_str(biz, "out_trade_no");
  const char *amount = biz_str(biz, "total_amount");
  const char *subject = biz_str(biz, "subject");
  const char *te = biz_str(biz, "timeout_express");
  const char *tx = biz_str(biz, "time_expire");
  const char *notify_url = form_get(f, "notify_url");
  int64_t fen = amount != NULL ? yuan_to_fen(amount) : -1;
  int64_t now = pt_sim_channel_now_ms(sim), expire = 0;
  const char *bad = NULL;
  if (no == NULL || no[0] == '\0' || strlen(no) > PT_OUT_TRADE_NO_MAX)
    bad = "out_trade_no is missing or longer than 64";
  else if (fen < 0)
    bad = "total_amount must be yuan with at most two decimals, "
          "0.01..100000000";
  else if (subject == NULL || subject[0] == '\0' || strlen(subject) > 256)
    bad = "subject is missing or longer than 256";
  else if (te != NULL && (expire = parse_timeout_express(te, now)) < 0)
    bad = "timeout_express must be like 30m, 2h, 1d or 1c (1m..15d)";
  else if (tx != NULL && te == NULL &&
           (expire = parse_cst(tx) * 1000) <= now)
    bad = "time_expire must be yyyy-MM-dd HH:mm:ss (GMT+8) in the future";
  else if (notify_url != NULL && strlen(notify_url) > PT_URL_MAX)
    bad = "notify_url is too long";
  if (bad != NULL) {
    reply_error(sim, a, req, method, "40004", "ACQ.INVALID_PARAMETER", bad,
                NULL, pt_sim_latency(sim, NULL));
    return;
  }
  pt_sim_trade_t *t;
  pt_sim_create_t r = pt_sim_create_begin(sim, no, &t);
  int delay = pt_sim_latency(sim, t);
  if (r == PT_SIM_CREATE_FAIL) {
    reply_error(sim, a, req, method, "20000", "isp.unknow-error", "系统繁忙",
                NULL, delay);
    return;
  }
  if (r == PT_SIM_CREATE_REPEAT) {
    const char *why = t->state == PT_SIM_PAID     ? "ACQ.TRADE_HAS_SUCCESS"
                      : t->state == PT_SIM_CLOSED ? "ACQ.TRADE_HAS_CLOSE"
                      : t->amount != fen ? "ACQ.CONTEXT_INCONSISTENT"
                                         : NULL;
    if (why != NULL) {
      reply_error(sim, a, req, method, "40004", why,
                  t->state == PT_SIM_PAID     ? "交易已被支付"
                  : t->state == PT_SIM_CLOSED ? "交易已经关闭"
                                              : "交易信息被篡改",
                  no, delay);
      return;
    }
  } else {
    char day[20], rnd[21];
    pt_sim_time_alipay(now, day);
    snprintf(t->trade_no, sizeof t->trade_no, "%.4s%.2s%.2s22001%015llu", day,
             day + 5, day + 8, (unsigned long long)pt_sim_next_seq(sim));
    if (pt_crypto_random_alnum(rnd, 20, NULL) != 0)
      snprintf(rnd, sizeof rnd, "%020llu",
               (unsigned long long)pt_sim_next_seq(sim));
    for (char *p = rnd; *p != '\0'; p++)
      *p = (char)tolower((unsigned char)*p);
    snprintf(t->code, sizeof t->code, "https://qr.alipay.com/bax%s", rnd);
    t->amount = fen;
    snprintf(t->currency, sizeof t->currency, "CNY");
    snprintf(t->kind, sizeof t->kind, "PRECREATE");
    snprintf(t->notify_url, sizeof t->notify_url, "%s",
             notify_url != NULL ? notify_url : "");
    t->expire_ms = expire;
    pt_sim_trade_created(sim, t);
  }
  bson_t d = BSON_INITIALIZER;
  success_head(&d);
  BSON_APPEND_UTF8(&d, "out_trade_no", t->no);
  BSON_APPEND_UTF8(&d, "qr_code", t->code);
  reply(sim, a, req, method, &d, delay);
  bson_destroy(&d);
}

static const char *trade_status(const pt_sim_trade_t *t) {
  return t->state == PT_SIM_PAID     ? "TRADE_SUCCESS"
         : t->state == PT_SIM_CLOSED ? "TRADE_CLOSED"
                                     : "WAIT_BUYER_PAY";
}

static void query(pt_sim_t *sim, alipay_t *a, pt_httpd_req_t *req,
                  const char *method, const bson_t *biz) {
  pt_sim_trade_t *t = named_trade(sim, biz);
  int delay = pt_sim_latency(sim, t);
  char total[32], when[20];
  pt_sim_count(sim, t, PT_SIM_CALL_QUERY);
  if (pt_sim_outage(sim)) { /* an outage fails every call */
    reply_error(sim, a, req, method, "20000", "isp.unknow-error", "系统繁忙",
                NULL, delay);
    return;
  }
  if (!visible(t)) {
    reply_error(sim, a, req, method, "40004", "ACQ.TRADE_NOT_EXIST",
                "交易不存在", biz_str(biz, "out_trade_no"), delay);
    return;
  }
  bson_t d = BSON_INITIALIZER;
  fen_to_yuan(t->amount, total);
  success_head(&d);
  BSON_APPEND_UTF8(&d, "trade_no", t->trade_no);
  BSON_APPEND_UTF8(&d, "out_trade_no", t->no);
  BSON_APPEND_UTF8(&d, "buyer_logon_id", "sim***@example.com");
  BSON_APPEND_UTF8(&d, "trade_status", trade_status(t));
  BSON_APPEND_UTF8(&d, "total_amount", total);
  if (t->state == PT_SIM_PAID) {
    pt_sim_time_alipay(t->paid_ms, when);
    BSON_APPEND_UTF8(&d, "buyer_pay_amount", total);
    BSON_APPEND_UTF8(&d, "receipt_amount", total);
    BSON_APPEND_UTF8(&d, "send_pay_date", when);
    BSON_APPEND_UTF8(&d, "buyer_user_id", "2088000000000001");
  }
  reply(sim, a, req, method, &d, delay);
  bson_destroy(&d);
}

static void close_trade(pt_sim_t *sim, alipay_t *a, pt_httpd_req_t *req,
                        const char *method, const bson_t *biz) {
  pt_sim_trade_t *t = named_trade(sim, biz);
  int delay = pt_sim_latency(sim, t);
  pt_sim_count(sim, t, PT_SIM_CALL_CLOSE);
  if (pt_sim_outage(sim)) {
    reply_error(sim, a, req, method, "20000", "isp.unknow-error", "系统繁忙",
                NULL, delay);
    return;
  }
  if (!visible(t)) {
    reply_error(sim, a, req, method, "40004", "ACQ.TRADE_NOT_EXIST",
                "交易不存在", biz_str(biz, "out_trade_no"), delay);
    return;
  }
  if (t->state == PT_SIM_PAID) {
    reply_error(sim, a, req, method, "40004", "ACQ.TRADE_STATUS_ERROR",
                "交易状态不合法", t->no, delay);
    return;
  }
  pt_sim_trade_close(sim, t);
  bson_t d = BSON_INITIALIZER;
  success_head(&d);
  BSON_APPEND_UTF8(&d, "trade_no", t->trade_no);
  BSON_APPEND_UTF8(&d, "out_trade_no", t->no);
  reply(sim, a, req, method, &d, delay);
  bson_destroy(&d);
}

/* ---- the gateway ------------------------------------------------------ */

static const char *const methods[] = {"alipay.trade.precreate",
                                      "alipay.trade.query",
                                      "alipay.trade.close", NULL};

/* Checks the public parameters and the signature; on failure answers and
 * returns -1. */
static int check_request(pt_sim_t *sim, alipay_t *a, pt_httpd_req_t *req,
                         const char *method, const form_t *f) {
  const pt_config_t *cfg = pt_sim_config(sim);
  const char *app_id = form_get(f, "app_id");
  const char *sign_type = form_get(f, "sign_type");
  const char *sign = form_get(f, "sign");
  const char *ts = form_get(f, "timestamp");
  const char *version = form_get(f, "version");
  const char *charset = form_get(f, "charset");
  const char *format = form_get(f, "format");
  const char *code = "40001", *sub = NULL, *msg = NULL;
  char *sts = NULL, buf[700];
  size_t slen;
  if (app_id == NULL)
    sub = "isv.missing-app-id", msg = "缺少AppID参数";
  else if (strcmp(app_id, cfg->alipay_app_id) != 0)
    code = "40002", sub = "isv.invalid-app-id", msg = "无效的AppID参数";
  else if (sign_type == NULL)
    sub = "isv.missing-signature-type", msg = "缺少签名类型参数";
  else if (strcmp(sign_type, "RSA2") != 0)
    code = "40002", sub = "isv.invalid-signature-type", msg = "无效的签名类型";
  else if (sign == NULL)
    sub = "isv.missing-signature", msg = "缺少签名参数";
  if (sub == NULL &&
      (pt_crypto_alipay_string_to_sign(f->kv, f->n, 0, &sts, &slen, NULL) !=
           0 ||
       pt_crypto_rsa_verify(a->app_public, PT_CRYPTO_SHA256, sts, slen, sign,
                            NULL) != 0)) {
    /* Like Alipay, say what was verified: it is the quickest way to find
     * a signing bug. */
    snprintf(buf, sizeof buf,
             "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，"
             "网关生成的验签字符串为：%.400s",
             sts != NULL ? sts : "");
    code = "40002", sub = "isv.invalid-signature", msg = buf;
  }
  free(sts);
  if (sub == NULL) {
    int64_t t = ts != NULL ? parse_cst(ts) : -1;
    int64_t now = pt_sim_now_ms() / 1000;
    if (ts == NULL)
      sub = "isv.missing-timestamp", msg = "缺少时间戳参数";
    else if (t < 0 || t < now - TIMESTAMP_SKEW_S || t > now + TIMESTAMP_SKEW_S)
      code = "40002", sub = "isv.invalid-timestamp",
      msg = "非法的时间戳参数 (yyyy-MM-dd HH:mm:ss, GMT+8, within 15 "
            "minutes of now)";
    else if (version == NULL)
      sub = "isv.missing-version", msg = "缺少版本参数";
    else if (strcmp(version, "1.0") != 0)
      code = "40002", sub = "isv.invalid-version", msg = "版本号错误";
    else if (charset != NULL && strcasecmp(charset, "utf-8") != 0)
      code = "40002", sub = "isv.invalid-charset", msg = "字符集错误";
    else if (format != NULL && strcasecmp(format, "JSON") != 0)
      code = "40002", sub = "isv.invalid-format", msg = "参数格式错误";
  }
  if (sub == NULL)
    return 0;
  reply_error(sim, a, req, method, code, sub, msg, NULL, 0);
  return -1;
}

static int is_form(pt_httpd_req_t *req) {
  size_t len;
  const char *ct = pt_httpd_header(req, "Content-Type", &len);
  static const char form[] = "application/x-www-form-urlencoded";
  return ct != NULL && len >= sizeof form - 1 &&
         strncasecmp(ct, form, sizeof form - 1) == 0 &&
         (len == sizeof form - 1 || ct[sizeof form - 1] == ';');
}

static void alipay_handle(pt_sim_t *sim, void *state, pt_httpd_req_t *req) {
  alipay_t *a = state;
  size_t mlen, plen, qlen, blen;
  const char *m = pt_httpd_method(req, &mlen);
  const char *p = pt_httpd_path(req, &plen);
  const char *q = pt_httpd_query(req, &qlen);
  const char *body = pt_httpd_body(req, &blen);
  form_t f = {.n = 0};
  if (plen != 11 || memcmp(p, "/gateway.do", 11) != 0 ||
      !((mlen == 4 && memcmp(m, "POST", 4) == 0) ||
        (mlen == 3 && memcmp(m, "GET", 3) == 0))) {
    pt_sim_respond(sim, req, 404, "text/plain", "not found", 9, NULL, 0);
    return;
  }
  /* Alipay's SDKs put the public parameters in the query string or in the
   * form; both are read, and a parameter may appear only once overall. */
  if ((q != NULL && form_parse(q, qlen, &f) != 0) ||
      (blen > 0 && (!is_form(req) || form_parse(body, blen, &f) != 0))) {
    form_free(&f);
    reply_error(sim, a, req, NULL, "40002", "isv.invalid-parameter",
                "the request is not a valid form "
                "(application/x-www-form-urlencoded, each key once)",
                NULL, 0);
    return;
  }
  const char *method = form_get(&f, "method");
  int known = 0;
  for (int i = 0; method != NULL && methods[i] != NULL; i++)
    known |= strcmp(method, methods[i]) == 0;
  if (!known) {
    reply_error(sim, a, req, NULL, method ? "40002" : "40001",
                method ? "isv.invalid-method" : "isv.missing-method",
                method ? "不存在的方法名" : "缺少方法名参数", NULL, 0);
    form_free(&f);
    return;
  }
  if (check_request(sim, a, req, method, &f) != 0) {
    form_free(&f);
    return;
  }
  const char *bc = form_get(&f, "biz_content");
  bson_t biz;
  pt_input_error_t ie;
  if (bc == NULL || pt_json_parse_object(bc, strlen(bc), &biz, &ie) != 0) {
    reply_error(sim, a, req, method, bc ? "40002" : "40001",
                bc ? "isv.invalid-biz-content" : "isv.missing-biz-content",
                bc ? "biz_content is not a JSON object" : "缺少biz_content参数",
                NULL, 0);
    form_free(&f);
    return;
  }
  if (strcmp(method, "alipay.trade.precreate") == 0)
    precreate(sim, a, req, method, &f, &biz);
  else if (strcmp(method, "alipay.trade.query") == 0)
    query(sim, a, req, method, &biz);
  else
    close_trade(sim, a, req, method, &biz);
  bson_destroy(&biz);
  form_free(&f);
}

/* ---- notifications ---------------------------------------------------- */

static int alipay_notify_build(pt_sim_t *sim, void *state,
                               const pt_sim_trade_t *t, const char *notify_id,
                               pt_sim_notice_t *out) {
  alipay_t *a = state;
  const pt_config_t *cfg = pt_sim_config(sim);
  char now[20], created[20], paid[20], total[32];
  pt_sim_time_alipay(pt_sim_now_ms(), now);
  pt_sim_time_alipay(t->created_ms, created);
  pt_sim_time_alipay(t->paid_ms, paid);
  fen_to_yuan(t->amount, total);
  pt_crypto_kv_t kv[] = {
      {"notify_time", now},
      {"notify_type", "trade_status_sync"},
      {"notify_id", notify_id},
      {"app_id", cfg->alipay_app_id},
      {"charset", "utf-8"},
      {"version", "1.0"},
      {"sign_type", "RSA2"},
      {"trade_no", t->trade_no},
      {"out_trade_no", t->no},
      {"trade_status", "TRADE_SUCCESS"},
      {"total_amount", total},
      {"receipt_amount", total},
      {"buyer_pay_amount", total},
      {"gmt_create", created},
      {"gmt_payment", paid},
      {"buyer_id", "2088000000000001"},
      {"seller_id", cfg->alipay_seller_id[0] ? cfg->alipay_seller_id : NULL},
      {"sign", NULL},
  };
  size_t n = sizeof kv / sizeof kv[0];
  char *sts = NULL, *sig = NULL;
  size_t slen, siglen;
  pt_buf_t b = {NULL, 0};
  int rc = pt_crypto_alipay_string_to_sign(
      kv, n, PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE, &sts, &slen, NULL);
  if (rc == 0)
    rc = pt_crypto_rsa_sign(a->alipay_private, PT_CRYPTO_SHA256, sts, slen,
                            &sig, &siglen, NULL);
  kv[n - 1].value = sig;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (kv[i].value == NULL)
      continue;
    if ((b.len > 0 && pt_buf_append(&b, "&", 1) != 0) ||
        form_encode(&b, kv[i].key) != 0 || pt_buf_append(&b, "=", 1) != 0 ||
        form_encode(&b, kv[i].value) != 0)
      rc = PT_ENOMEM;
  }
  if (rc == 0)
    rc = pt_sim_notice_header(
        out, "Content-Type", "application/x-www-form-urlencoded; charset=utf-8");
  free(sts);
  free(sig);
  if (rc != 0) {
    free(b.data);
    return rc;
  }
  out->body = b.data;
  out->len = b.len;
  return 0;
}

/* Alipay takes exactly "success" as the receiver's acknowledgement. */
static int alipay_notify_acked(long http_code, const char *body, size_t len) {
  return http_code == 200 && len == 7 && memcmp(body, "success", 7) == 0;
}

/* ---- set-up ----------------------------------------------------------- */

static int alipay_init(void *state, const pt_config_t *cfg, pt_error_t *err) {
  alipay_t *a = state;
  if (cfg->alipay_app_id[0] == '\0')
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.alipay.app_id is not set");
  int rc = pt_sim_load_key("sim.alipay.app_public_key_file",
                    cfg->sim_alipay_app_public_key_file, 0, &a->app_public,
                    err);
  if (rc == 0)
    rc = pt_sim_load_key("sim.alipay.private_key_file",
                  cfg->sim_alipay_private_key_file, 1, &a->alipay_private,
                  err);
  return rc;
}

static void alipay_cleanup(void *state) {
  alipay_t *a = state;
  pt_crypto_key_destroy(a->app_public);
  pt_crypto_key_destroy(a->alipay_private);
}

const pt_sim_dialect_ops_t pt_sim_alipay_dialect = {
    .name = "alipay",
    .state_size = sizeof(alipay_t),
    .init = alipay_init,
    .cleanup = alipay_cleanup,
    .handle = alipay_handle,
    .notify_build = alipay_notify_build,
    .notify_acked = alipay_notify_acked,
};
