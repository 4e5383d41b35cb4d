/* The WeChat Pay API v3 channel, as shared/CHANNELS.md describes it: JSON
 * requests signed with the merchant's key in the Authorization header,
 * answers and notifications signed by the platform key (Wechatpay-*
 * headers), notifications' payload encrypted with the APIv3 key.
 *
 *   create  POST /v3/pay/transactions/native    → code_url  (params.product
 *           POST /v3/pay/transactions/jsapi     → prepay_id   "native" or
 *                                                             "jsapi")
 *   query   GET  /v3/pay/transactions/out-trade-no/{no}?mchid=…
 *                                               → trade_state, …; 404
 *                                                 ORDER_NOT_EXIST
 *   close   POST /v3/pay/transactions/out-trade-no/{no}/close → 204
 *
 * An answer that carries the Wechatpay-* headers must verify whatever its
 * status. One without them is believed only when it cannot move money: a
 * 2xx or a "no such order" must be signed; other refusals need not be
 * (WeChat Pay's own SDKs check signatures on successes only, and a proxy
 * in front of the API answers errors unsigned). */
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pt_buf.h"
#include "core/pt_crypto.h"
#include "tasks/pt_chan_util.h"
#include "tasks/pt_channel.h"

#define NOTIFY_PATH "/v1/channels/wechat/notify"
#define MAX_SKEW_S 300 /* CHANNELS.md: reject timestamps 5 min away */
#define DESCRIPTION_MAX 127 /* characters WeChat Pay takes in description */
#define OPENID_MAX 128

/* Loaded by init. parse gets no configuration, so what it checks answers
 * against is copied here too. */
static struct {
  pt_crypto_key_t *merchant_key; /* ours: signs requests */
  pt_crypto_key_t *platform_key; /* WeChat Pay's: verifies answers and
                                    notifications */
  char mchid[64];
  char platform_serial[128];
} wx;

/* ---- small helpers ---- */

static int doc_has(const bson_t *doc, const char *key) {
  bson_iter_t it, d;
  return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, key, &d);
}

/* The integer at key (dotted for a descendant): 1 when present and an
 * integer >= 0, 0 when absent, -1 otherwise. */
static int doc_count(const bson_t *doc, const char *key, int64_t *v) {
  bson_iter_t it, d;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, key, &d))
    return 0;
  if (BSON_ITER_HOLDS_INT32(&d))
    *v = bson_iter_int32(&d);
  else if (BSON_ITER_HOLDS_INT64(&d))
    *v = bson_iter_int64(&d);
  else
    return -1;
  return *v >= 0 ? 1 : -1;
}

static int is_jsapi(const pt_task_t *t) {
  const char *p = pt_chan_param_str(t, "product");
  return p != NULL && strcmp(p, "jsapi") == 0;
}

/* A value that may stand between double quotes in a header. */
static int header_safe(const char *s) {
  for (; *s != '\0'; s++)
    if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e || *s == '"')
      return 0;
  return 1;
}

/* ---- keys ---- */

static void wechat_cleanup(void) {
  pt_crypto_key_destroy(wx.merchant_key);
  pt_crypto_key_destroy(wx.platform_key);
  memset(&wx, 0, sizeof wx);
}

static int wechat_init(const pt_config_t *cfg, pt_error_t *err) {
  wechat_cleanup();
  if (cfg->wechat_mchid[0] == '\0')
    return 0; /* not configured: build refuses */
  const char *const need[][2] = {
      {"channel.wechat.appid", cfg->wechat_appid},
      {"channel.wechat.serial_no", cfg->wechat_serial_no},
      {"channel.wechat.platform_serial", cfg->wechat_platform_serial},
      {"channel.wechat.apiv3_key", cfg->wechat_apiv3_key},
  };
  for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
    if (need[i][1][0] == '\0')
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s is not set",
                          need[i][0]);
  if (!header_safe(cfg->wechat_mchid) || !header_safe(cfg->wechat_serial_no))
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.wechat.mchid and serial_no must be printable "
                        "ASCII without spaces or quotes");
  if (strlen(cfg->wechat_apiv3_key) != 32)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.wechat.apiv3_key must be exactly 32 bytes");
  int rc = pt_chan_load_key("channel.wechat.private_key_file",
                            cfg->wechat_private_key_file, PT_CHAN_KEY_PRIVATE,
                            &wx.merchant_key, err);
  /* WeChat Pay hands out its platform key as a PUBLIC KEY or a
   * CERTIFICATE. */
  if (rc == 0)
    rc = pt_chan_load_key("channel.wechat.platform_public_key_file",
                          cfg->wechat_platform_public_key_file,
                          PT_CHAN_KEY_PUBLIC_OR_CERT, &wx.platform_key, err);
  if (rc != 0) {
    wechat_cleanup();
    return rc;
  }
  snprintf(wx.mchid, sizeof wx.mchid, "%s", cfg->wechat_mchid);
  snprintf(wx.platform_serial, sizeof wx.platform_serial, "%s",
           cfg->wechat_platform_serial);
  return 0;
}

/* ---- submit checks ---- */

static int invalid(pt_input_error_t *ie, const char *code, const char *msg) {
  ie->code = code;
  snprintf(ie->message, sizeof ie->message, "%s", msg);
  return PT_EINVAL;
}

static size_t utf8_chars(const char *s) {
  size_t n = 0;
  for (; *s != '\0'; s++)
    n += ((unsigned char)*s & 0xC0) != 0x80;
  return n;
}

static int wechat_validate(const pt_task_t *t, const pt_config_t *cfg,
                           pt_input_error_t *ie) {
  bson_iter_t it;
  size_t otn = strlen(t->out_trade_no);
  if (cfg != NULL && cfg->wechat_mchid[0] == '\0')
    return invalid(ie, "invalid_channel",
                   "the wechat channel is not configured "
                   "(channel.wechat.mchid)");
  if (strcmp(t->currency, "CNY") != 0)
    return invalid(ie, "invalid_currency",
                   "the wechat channel takes only CNY");
  /* WeChat Pay's out_trade_no is 6 to 32 of [0-9A-Za-z_-|*]. */
  if (otn < 6 || otn > 32 || strchr(t->out_trade_no, '.') != NULL)
    return invalid(ie, "invalid_out_trade_no",
                   "the wechat channel needs an out_trade_no of 6 to 32 "
                   "letters, digits or _-|*");
  if (utf8_chars(t->subject) > DESCRIPTION_MAX)
    return invalid(ie, "invalid_subject",
                   "the wechat channel takes a subject of at most 127 "
                   "characters");
  if (t->has_params && bson_iter_init_find(&it, &t->params, "product")) {
    const char *p = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : "";
    if (strcmp(p, "native") != 0 && strcmp(p, "jsapi") != 0)
      return invalid(ie, "invalid_params",
                     "params.product must be \"native\" or \"jsapi\"");
  }
  if (is_jsapi(t)) {
    const char *openid = pt_chan_param_str(t, "openid");
    if (openid == NULL || openid[0] == '\0' || strlen(openid) > OPENID_MAX)
      return invalid(ie, "invalid_params",
                     "params.product \"jsapi\" needs params.openid, a string "
                     "of at most 128 bytes");
  }
  return 0;
}

/* ---- requests ---- */

static int append(pt_buf_t *out, const char *s) {
  return pt_buf_append(out, s, strlen(s));
}

/* 32 characters of [0-9A-Za-z]; bytes >= 248 are skipped so that every
 * character is equally likely. */
static int make_nonce(char nonce[33]) {
  static const char abc[] =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  unsigned char r[64];
  size_t n = 0;
  while (n < 32) {
    if (RAND_bytes(r, sizeof r) != 1)
      return PT_ECRYPTO;
    for (size_t i = 0; i < sizeof r && n < 32; i++)
      if (r[i] < 248)
        nonce[n++] = abc[r[i] % 62];
  }
  nonce[32] = '\0';
  return 0;
}

static char *create_body(const pt_task_t *t, const pt_config_t *cfg,
                         int64_t now_s) {
  char expire[40], notify_url[PT_CFG_STR_MAX + sizeof NOTIFY_PATH];
  bson_t b = BSON_INITIALIZER, amount, payer;
  char *json;
  if (pt_chan_beijing_time(pt_chan_trade_expiry(t, cfg, now_s),
                           PT_CHAN_TIME_RFC3339, expire, sizeof expire) != 0)
    return NULL;
  snprintf(notify_url, sizeof notify_url, "%s%s", cfg->api_public_url,
           NOTIFY_PATH);
  BSON_APPEND_UTF8(&b, "appid", cfg->wechat_appid);
  BSON_APPEND_UTF8(&b, "mchid", cfg->wechat_mchid);
  BSON_APPEND_UTF8(&b, "description", t->subject);
  BSON_APPEND_UTF8(&b, "out_trade_no", t->out_trade_no);
  BSON_APPEND_UTF8(&b, "time_expire", expire);
  BSON_APPEND_UTF8(&b, "notify_url", notify_url);
  BSON_APPEND_DOCUMENT_BEGIN(&b, "amount", &amount);
  BSON_APPEND_INT64(&amount, "total", t->amount);
  BSON_APPEND_UTF8(&amount, "currency", "CNY");
  bson_append_document_end(&b, &amount);
  if (is_jsapi(t)) {
    const char *openid = pt_chan_param_str(t, "openid");
    BSON_APPEND_DOCUMENT_BEGIN(&b, "payer", &payer);
    BSON_APPEND_UTF8(&payer, "openid", openid != NULL ? openid : "");
    bson_append_document_end(&b, &payer);
  }
  json = bson_as_relaxed_extended_json(&b, NULL);
  bson_destroy(&b);
  return json;
}

/* Signs the request (CHANNELS.md: METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n)
 * and adds the Authorization header. canonical is the path and query. */
static int authorize(pt_chan_req_t *req, const char *canonical,
                     const pt_config_t *cfg, pt_error_t *err) {
  char ts[24], nonce[33], value[1024];
  char *msg = NULL, *sig = NULL;
  size_t msg_len, sig_len;
  int rc, n;
  snprintf(ts, sizeof ts, "%lld", (long long)req->now_s);
  if (make_nonce(nonce) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_ECRYPTO,
                        "wechat: no random bytes for the nonce");
  rc = pt_crypto_wechat_request_message(req->method, canonical, ts, nonce,
                                        req->body, req->body_len, &msg,
                                        &msg_len, err);
  if (rc == 0)
    rc = pt_crypto_rsa_sign(wx.merchant_key, PT_CRYPTO_SHA256, msg, msg_len,
                            &sig, &sig_len, err);
  if (rc == 0) {
    n = snprintf(value, sizeof value,
                 "WECHATPAY2-SHA256-RSA2048 mchid=\"%s\",nonce_str=\"%s\","
                 "timestamp=\"%s\",serial_no=\"%s\",signature=\"%s\"",
                 cfg->wechat_mchid, nonce, ts, cfg->wechat_serial_no, sig);
    if (n < 0 || (size_t)n >= sizeof value ||
        pt_chan_req_header(req, "Authorization", value) != 0)
      rc = pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "wechat: the Authorization header does not fit");
  }
  free(msg);
  free(sig);
  return rc;
}

/* The API's path and query for op, and the body to send (NULL for a
 * GET). Returns 0 or PT_ENOMEM. */
static int api_request(pt_chan_op_t op, const pt_task_t *t,
                       const pt_config_t *cfg, pt_chan_req_t *req,
                       pt_buf_t *path) {
  bson_t b = BSON_INITIALIZER;
  int rc = 0;
  if (op == PT_CHAN_CREATE) {
    req->method = "POST";
    rc = append(path, is_jsapi(t) ? "/v3/pay/transactions/jsapi"
                                  : "/v3/pay/transactions/native");
    req->body = create_body(t, cfg, req->now_s);
  } else {
    req->method = op == PT_CHAN_QUERY ? "GET" : "POST";
    if (append(path, "/v3/pay/transactions/out-trade-no/") != 0 ||
        pt_chan_url_encode(path, t->out_trade_no) != 0 ||
        append(path, op == PT_CHAN_QUERY ? "?mchid=" : "/close") != 0 ||
        (op == PT_CHAN_QUERY &&
         pt_chan_url_encode(path, cfg->wechat_mchid) != 0))
      rc = PT_ENOMEM;
    if (op == PT_CHAN_CLOSE) {
      BSON_APPEND_UTF8(&b, "mchid", cfg->wechat_mchid);
      req->body = bson_as_relaxed_extended_json(&b, NULL);
    }
  }
  bson_destroy(&b);
  if (rc == 0 && op != PT_CHAN_QUERY && req->body == NULL)
    rc = PT_ENOMEM;
  req->body_len = req->body != NULL ? strlen(req->body) : 0;
  return rc;
}

static int wechat_build(pt_chan_op_t op, const pt_task_t *t,
                        const pt_config_t *cfg, pt_chan_req_t *req,
                        pt_error_t *err) {
  const char *base = cfg->wechat_base_url;
  size_t base_len = strlen(base), prefix_len = 0;
  pt_buf_t path = {NULL, 0};
  int rc = 0;
  pt_chan_req_reset(req);
  if (cfg->wechat_mchid[0] == '\0')
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.wechat.mchid is not set");
  if (wx.merchant_key == NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "wechat: keys not loaded (channels not initialised)");
  if (op != PT_CHAN_CREATE && op != PT_CHAN_QUERY && op != PT_CHAN_CLOSE)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: unknown operation %d", (int)op);
  /* The signed URL is the path as the server sees it: the base URL's own
   * path (if any) followed by the API's. */
  while (base_len > 0 && base[base_len - 1] == '/')
    base_len--;
  const char *host = strstr(base, "://");
  host = host != NULL ? host + 3 : base;
  if ((size_t)(host - base) >= base_len) /* "https://": read past its end */
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "channel.wechat.base_url has no host: \"%s\"", base);
  const char *prefix = memchr(host, '/', base_len - (size_t)(host - base));
  if (prefix != NULL) {
    prefix_len = base_len - (size_t)(prefix - base);
    rc = pt_buf_append(&path, prefix, prefix_len);
  }
  if (rc != 0 || api_request(op, t, cfg, req, &path) != 0) {
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                      "wechat: the request could not be built");
    goto done;
  }
  int n = snprintf(req->url, sizeof req->url, "%.*s%s", (int)base_len, base,
                   path.data + prefix_len);
  if (n < 0 || (size_t)n >= sizeof req->url) {
    rc = pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                      "channel.wechat.base_url is too long");
    goto done;
  }
  if ((rc = authorize(req, path.data, cfg, err)) == 0 &&
      (pt_chan_req_header(req, "Accept", "application/json") != 0 ||
       pt_chan_req_header(req, "Content-Type", "application/json") != 0 ||
       pt_chan_req_header(req, "User-Agent", "paytask") != 0))
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                      "wechat: too many headers");
done:
  if (rc != 0) {
    pt_chan_req_clear(req);
    req->url[0] = '\0';
  }
  free(path.data);
  return rc;
}

/* ---- signatures of answers and notifications ---- */

/* The Wechatpay-* headers, NUL-terminated. */
typedef struct {
  char timestamp[24];
  char nonce[128];
  char signature[1024];
  char serial[128];
  int present; /* how many of the four were there */
} wx_sig_t;

/* Copies one header value; 0 when absent, -1 when unusable, 1 when kept. */
static int keep_header(const char *v, long n, char *dst, size_t size) {
  if (v == NULL || n < 0)
    return 0;
  if (n == 0 || (size_t)n >= size || memchr(v, '\0', (size_t)n) != NULL)
    return -1;
  memcpy(dst, v, (size_t)n);
  dst[n] = '\0';
  return 1;
}

/* Checks the platform's signature: the serial names our platform key, the
 * timestamp is within MAX_SKEW_S of now, and the signature over
 * TIMESTAMP\nNONCE\nBODY\n verifies. Returns 0, or PT_ECRYPTO with *why. */
static int check_signature(const wx_sig_t *s, const char *serial,
                           const char *body, size_t body_len, int64_t now,
                           const char **why) {
  char *msg = NULL;
  size_t msg_len, i;
  int64_t ts = 0;
  if (s->present != 4) {
    *why = "the Wechatpay-* signature headers are missing or unusable";
    return PT_ECRYPTO;
  }
  if (wx.platform_key == NULL || strcmp(s->serial, serial) != 0) {
    *why = "Wechatpay-Serial names no key we hold";
    return PT_ECRYPTO;
  }
  for (i = 0; s->timestamp[i] != '\0' && i < 12; i++) {
    if (s->timestamp[i] < '0' || s->timestamp[i] > '9')
      break;
    ts = ts * 10 + (s->timestamp[i] - '0');
  }
  if (i == 0 || s->timestamp[i] != '\0' || ts < now - MAX_SKEW_S ||
      ts > now + MAX_SKEW_S) {
    *why = "Wechatpay-Timestamp is more than 5 minutes away";
    return PT_ECRYPTO;
  }
  if (pt_crypto_wechat_response_message(s->timestamp, s->nonce, body,
                                        body_len, &msg, &msg_len, NULL) != 0 ||
      pt_crypto_rsa_verify(wx.platform_key, PT_CRYPTO_SHA256, msg, msg_len,
                           s->signature, NULL) != 0) {
    free(msg);
    *why = "Wechatpay-Signature does not verify";
    return PT_ECRYPTO;
  }
  free(msg);
  return 0;
}

static const char *const sig_headers[] = {
    "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature",
    "Wechatpay-Serial"};

/* Fills s from header values got by name; returns -1 when one is
 * unusable. */
static int keep_sig_header(wx_sig_t *s, size_t i, const char *v, long n) {
  char *dst[] = {s->timestamp, s->nonce, s->signature, s->serial};
  size_t size[] = {sizeof s->timestamp, sizeof s->nonce, sizeof s->signature,
                   sizeof s->serial};
  int k = keep_header(v, n, dst[i], size[i]);
  if (k > 0)
    s->present++;
  return k;
}

/* ---- answers ---- */

static pt_trade_state_t map_state(const char *s) {
  static const struct {
    const char *word;
    pt_trade_state_t state;
  } map[] = {{"SUCCESS", PT_TRADE_SUCCEEDED}, {"REFUND", PT_TRADE_SUCCEEDED},
             {"NOTPAY", PT_TRADE_NOTPAY},     {"USERPAYING", PT_TRADE_PAYING},
             {"CLOSED", PT_TRADE_CLOSED},     {"REVOKED", PT_TRADE_CLOSED},
             /* A payment that failed (the bank refused it) leaves the
              * order payable: final FAILED told the merchant to make a
              * new order while the buyer could still pay this one, and
              * skipped its close. It is still being paid for until the
              * window ends and the close closes it at WeChat Pay (the
              * case WeChat Pay's close API is documented for). */
             {"PAYERROR", PT_TRADE_PAYING}};
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (strcmp(s, map[i].word) == 0)
      return map[i].state;
  return PT_TRADE_UNKNOWN;
}

/* A verified 200 to a create. */
static void read_created(const pt_task_t *t, const bson_t *doc,
                         pt_chan_res_t *out) {
  const char *field = is_jsapi(t) ? "prepay_id" : "code_url";
  const char *v = pt_chan_doc_str(doc, field);
  if (v == NULL || v[0] == '\0') {
    pt_chan_res_bad_reply(out, is_jsapi(t) ? "the answer has no prepay_id"
                                           : "the answer has no code_url");
    return;
  }
  BSON_APPEND_UTF8(&out->result, field, v);
  out->trade_state = PT_TRADE_NOTPAY;
  pt_chan_res_set(out, PT_OUTCOME_SUCCESS, NULL, NULL);
}

/* A verified 200 to a query: the transaction. USERPAYING is a SUCCESS of
 * the query (the channel answered); the runner asks again later. */
static void read_trade(const pt_task_t *t, const bson_t *doc,
                       pt_chan_res_t *out) {
  const char *otn = pt_chan_doc_str(doc, "out_trade_no");
  const char *mchid = pt_chan_doc_str(doc, "mchid");
  const char *state = pt_chan_doc_str(doc, "trade_state");
  const char *trade_no = pt_chan_doc_str(doc, "transaction_id");
  if (otn == NULL || strcmp(otn, t->out_trade_no) != 0 || mchid == NULL ||
      strcmp(mchid, wx.mchid) != 0) {
    pt_chan_res_bad_reply(out, "the answer is about another trade or merchant");
    return;
  }
  if (state == NULL || map_state(state) == PT_TRADE_UNKNOWN) {
    pt_chan_res_bad_reply(out, "the answer has no known trade_state");
    return;
  }
  if (trade_no != NULL && strlen(trade_no) >= sizeof out->trade_no) {
    pt_chan_res_bad_reply(out, "transaction_id is too long");
    return;
  }
  int has_amount = doc_count(doc, "amount.total", &out->amount);
  if (has_amount < 0) {
    out->amount = -1;
    pt_chan_res_bad_reply(out, "amount.total is not an amount");
    return;
  }
  if (has_amount == 0 && map_state(state) == PT_TRADE_SUCCEEDED) {
    /* Paid, but for how much? Not settled from it, as a notification
     * without one is not. */
    pt_chan_res_bad_reply(out, "the answer says paid but has no "
                               "amount.total");
    return;
  }
  snprintf(out->trade_no, sizeof out->trade_no, "%s", trade_no ? trade_no : "");
  out->trade_state = map_state(state);
  BSON_APPEND_UTF8(&out->result, "trade_status",
                   pt_trade_state_name(out->trade_state));
  BSON_APPEND_UTF8(&out->result, "channel_status", state);
  BSON_APPEND_UTF8(&out->result, "trade_no", out->trade_no);
  pt_chan_res_set(out, PT_OUTCOME_SUCCESS, NULL, NULL);
}

/* A 4xx: {"code", "message"} when the body has them. verified says whether
 * the answer was signed. */
static void read_refusal(pt_chan_op_t op, const pt_http_response_t *res,
                         int verified, pt_chan_res_t *out) {
  bson_t doc = BSON_INITIALIZER;
  const char *code = NULL, *msg = NULL;
  if (res->body_len > 0 &&
      pt_chan_parse_object(res->body, res->body_len, 1, &doc) == 0) {
    code = pt_chan_doc_str(&doc, "code");
    msg = pt_chan_doc_str(&doc, "message");
  }
  if (res->http_code == 429) {
    /* Rate limited: nothing was done, try again later. */
    pt_chan_res_set(out, PT_OUTCOME_RETRY, code ? code : "FREQUENCY_LIMITED",
                    msg);
  } else if (res->http_code == 404 && op != PT_CHAN_CREATE && code != NULL &&
             (strcmp(code, "ORDER_NOT_EXIST") == 0 ||
              strcmp(code, "RESOURCE_NOT_EXISTS") == 0)) {
    /* Leads to a second create or a local close: believe it signed only. */
    if (verified) {
      out->not_found = 1;
      pt_chan_res_set(out, PT_OUTCOME_FAIL, code, msg);
    } else {
      pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_signature",
                      "an unsigned answer says the order does not exist");
    }
  } else {
    /* 401 SIGN_ERROR, 400 OUT_TRADE_NO_USED, ORDER_PAID on close (the
     * runner then queries), PARAM_ERROR: final. */
    const char *dflt = res->http_code == 401 ? "SIGN_ERROR" : "channel_refused";
    pt_chan_res_set(out, PT_OUTCOME_FAIL, code ? code : dflt,
                    msg ? msg : "WeChat Pay refused the request");
  }
  bson_destroy(&doc);
}

static void wechat_parse(pt_chan_op_t op, const pt_task_t *t,
                         const pt_http_response_t *res, pt_chan_res_t *out) {
  wx_sig_t sig = {.present = 0};
  const char *why = NULL;
  int verified = 0, usable = 1;
  long code = res->http_code;
  pt_chan_res_reset_trade(out);
  if (pt_chan_res_unanswered(out, res, "WeChat Pay"))
    return;
  /* Every answer carrying the signature headers is verified, an empty
   * one (a close's 204: WeChat Pay signs "ts\nnonce\n\n") too. */
  for (size_t i = 0; i < 4 && res->headers != NULL; i++) {
    const char *v = NULL;
    long n = pt_http_response_header(res, sig_headers[i], &v);
    if (keep_sig_header(&sig, i, v, n) < 0)
      usable = 0;
  }
  if (sig.present > 0 || !usable) {
    if (check_signature(&sig, wx.platform_serial,
                        res->body != NULL ? res->body : "", res->body_len,
                        (int64_t)time(NULL), &why) != 0) {
      pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_signature", why);
      return;
    }
    verified = 1;
  }
  if (code >= 400) {
    read_refusal(op, res, verified, out);
    return;
  }
  if (code < 200 || code >= 300) {
    pt_chan_res_bad_reply(out, "unexpected HTTP status");
    return;
  }
  if (!verified) {
    /* A 2xx (the close's empty 204 too) is trusted only when signed:
     * an unsigned "closed" from whatever sits in between would close a
     * trade the payer may still pay. */
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_signature",
                    "the answer is not signed");
    return;
  }
  if (op == PT_CHAN_CLOSE && code == 204 && res->body_len == 0) {
    out->trade_state = PT_TRADE_CLOSED; /* 204: closed */
    BSON_APPEND_UTF8(&out->result, "trade_status",
                     pt_trade_state_name(PT_TRADE_CLOSED));
    pt_chan_res_set(out, PT_OUTCOME_SUCCESS, NULL, NULL);
    return;
  }
  bson_t doc = BSON_INITIALIZER;
  if (op == PT_CHAN_CLOSE) {
    /* Only the 204 closes: another 2xx (202 USERPAYING, the buyer is
     * entering a password) did not, and the trade may yet be paid. The
     * close is tried again. */
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "close_not_confirmed",
                    "WeChat Pay answered the close with a body, not 204");
  } else if (code != 200 ||
             pt_chan_parse_object(res->body, res->body_len, 1, &doc) != 0) {
    pt_chan_res_bad_reply(out, "the answer is not a JSON object");
  } else if (op == PT_CHAN_CREATE) {
    read_created(t, &doc, out);
  } else {
    read_trade(t, &doc, out);
  }
  bson_destroy(&doc);
}

/* ---- notifications ---- */

static int notify_fields(const pt_config_t *cfg, const bson_t *tx,
                         pt_chan_notify_t *out, pt_error_t *err) {
  const char *mchid = pt_chan_doc_str(tx, "mchid");
  const char *appid = pt_chan_doc_str(tx, "appid");
  const char *otn = pt_chan_doc_str(tx, "out_trade_no");
  const char *trade_no = pt_chan_doc_str(tx, "transaction_id");
  const char *state = pt_chan_doc_str(tx, "trade_state");
  if (mchid == NULL || strcmp(mchid, cfg->wechat_mchid) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: mchid does not match");
  if (appid == NULL || strcmp(appid, cfg->wechat_appid) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: appid does not match");
  if (otn == NULL || otn[0] == '\0' || strlen(otn) > PT_OUT_TRADE_NO_MAX ||
      (trade_no != NULL && strlen(trade_no) >= sizeof out->trade_no) ||
      state == NULL || strlen(state) >= sizeof out->raw_state ||
      map_state(state) == PT_TRADE_UNKNOWN)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: the transaction lacks out_trade_no or a "
                        "known trade_state");
  int has_amount = doc_count(tx, "amount.total", &out->amount);
  if (has_amount < 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: amount.total is not an amount");
  /* A payment is compared with its trade: one that names no amount is
   * refused rather than taken unchecked. */
  if (has_amount == 0 && map_state(state) == PT_TRADE_SUCCEEDED)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: a payment without amount.total");
  snprintf(out->out_trade_no, sizeof out->out_trade_no, "%s", otn);
  snprintf(out->trade_no, sizeof out->trade_no, "%s", trade_no ? trade_no : "");
  snprintf(out->raw_state, sizeof out->raw_state, "%s", state);
  snprintf(out->app_id, sizeof out->app_id, "%s", appid);
  out->trade_state = map_state(state);
  return 0;
}

/* Reads the envelope and decrypts its resource into *plain (free()). */
static int open_envelope(const pt_config_t *cfg, const bson_t *env,
                         pt_chan_notify_t *out, char **plain,
                         size_t *plain_len, pt_error_t *err) {
  const char *id = pt_chan_doc_str(env, "id");
  const char *event = pt_chan_doc_str(env, "event_type");
  const char *algorithm = pt_chan_doc_str(env, "resource.algorithm");
  const char *ct = pt_chan_doc_str(env, "resource.ciphertext");
  const char *nonce = pt_chan_doc_str(env, "resource.nonce");
  const char *ad = pt_chan_doc_str(env, "resource.associated_data");
  if (id == NULL || id[0] == '\0' || strlen(id) >= sizeof out->notify_id)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: the notification has no usable id");
  /* Refunds and other events have other payloads; only payments are ours. */
  if (event == NULL || strncmp(event, "TRANSACTION.", 12) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: not a payment notification");
  if (algorithm == NULL || strcmp(algorithm, "AEAD_AES_256_GCM") != 0 ||
      ct == NULL || nonce == NULL ||
      (ad == NULL && doc_has(env, "resource.associated_data")))
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                        "wechat: the notification's resource is malformed");
  snprintf(out->notify_id, sizeof out->notify_id, "%s", id);
  if (pt_crypto_wechat_decrypt(cfg->wechat_apiv3_key, nonce, ad ? ad : "",
                               ct, plain, plain_len, NULL) != 0)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_ECRYPTO,
                        "wechat: the notification's resource does not "
                        "decrypt");
  return 0;
}

static int wechat_notify_parse(const pt_config_t *cfg,
                               const pt_chan_notify_in_t *in,
                               pt_chan_notify_t *out, pt_error_t *err) {
  wx_sig_t sig = {.present = 0};
  const char *why = NULL;
  bson_t env = BSON_INITIALIZER, tx = BSON_INITIALIZER;
  char *plain = NULL;
  size_t plain_len = 0;
  int rc = 0;
  memset(out, 0, sizeof *out);
  out->amount = -1;
  if (wx.platform_key == NULL || cfg->wechat_mchid[0] == '\0' ||
      strlen(cfg->wechat_apiv3_key) != 32)
    return pt_error_set(err, PT_DOMAIN_PAYTASK, PT_ECRYPTO,
                        "wechat: the channel is not configured, nothing to "
                        "verify the notification with");
  for (size_t i = 0; i < 4 && in->header != NULL; i++) {
    size_t n = 0;
    const char *v = in->header(in->header_ctx, sig_headers[i], &n);
    keep_sig_header(&sig, i, v, v != NULL ? (long)n : -1);
  }
  if (check_signature(&sig, cfg->wechat_platform_serial, in->body,
                      in->body_len, in->now_s, &why) != 0) {
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_ECRYPTO, "wechat: %s", why);
    goto done;
  }
  if (pt_chan_parse_object(in->body, in->body_len, 1, &env) != 0) {
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                      "wechat: the notification is not a JSON object");
    goto done;
  }
  if ((rc = open_envelope(cfg, &env, out, &plain, &plain_len, err)) != 0)
    goto done;
  if (pt_chan_parse_object(plain, plain_len, 1, &tx) != 0) {
    rc = pt_error_set(err, PT_DOMAIN_PAYTASK, PT_EINVAL,
                      "wechat: the decrypted transaction is not JSON");
    goto done;
  }
  rc = notify_fields(cfg, &tx, out, err);
done:
  free(plain);
  bson_destroy(&env);
  bson_destroy(&tx);
  if (rc != 0) {
    memset(out, 0, sizeof *out);
    out->amount = -1;
  }
  return rc;
}

/* WeChat Pay takes 2xx without a body as received; a refusal is 4xx with
 * {"code":"FAIL","message":…}, and it resends. */
static void wechat_notify_ack(int ok, const char *why, pt_chan_ack_t *ack) {
  char msg[sizeof ack->body];
  memset(ack, 0, sizeof *ack);
  if (ok) {
    ack->http_status = 204;
    return;
  }
  ack->http_status = 400;
  ack->content_type = "application/json";
  pt_utf8_copy(msg, sizeof msg, why != NULL ? why : "refused");
  /* Shortens the message until the JSON fits the body. */
  for (;;) {
    bson_t b = BSON_INITIALIZER;
    size_t len = 0;
    BSON_APPEND_UTF8(&b, "code", "FAIL");
    BSON_APPEND_UTF8(&b, "message", msg);
    char *json = bson_as_relaxed_extended_json(&b, &len);
    bson_destroy(&b);
    if (json != NULL && len < sizeof ack->body) {
      memcpy(ack->body, json, len + 1);
      ack->body_len = len;
      bson_free(json);
      return;
    }
    int not_utf8 = json == NULL; /* json is not read once freed */
    bson_free(json);
    if (not_utf8)
      snprintf(msg, sizeof msg, "refused");
    else
      pt_utf8_copy(msg, strlen(msg) / 2 + 1, msg); /* cut it in half */
  }
}

const pt_channel_ops_t pt_wechat_channel = {
    .code = "wechat",
    .name = "WeChat Pay (API v3)",
    .build = wechat_build,
    .parse = wechat_parse,
    .init = wechat_init,
    .cleanup = wechat_cleanup,
    .validate = wechat_validate,
    .notify_parse = wechat_notify_parse,
    .notify_ack = wechat_notify_ack,
    .follows_trades = 1,
};
