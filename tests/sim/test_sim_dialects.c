/* The channel simulator's alipay and wechat dialects, end to end: the test
 * plays paytask (it signs requests with the merchant's development keys
 * and checks every answer with the channel's public keys), runs the real
 * `paytask sim`, and receives the notifications on a small HTTP server. */
#include <bson/bson.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_buf.h"
#include "core/pt_crypto.h"
#include "tests/support/pt_simproc.h"

#define APP_ID "2021000000000001"
#define SELLER_ID "2088000000000099"
#define MCHID "1900000001"
#define APPID "wx0000000000000001"
#define MERCHANT_SERIAL "5157F09EFDC096DE15EBE81A47057A72SIM"
#define PLATFORM_SERIAL "PUB_KEY_ID_0114232134912410000000000001"
#define APIV3_KEY "0123456789abcdefABCDEF0123456789"
#define FAST_SCHEDULE "--notify-schedule-ms=150,300,300,300"

static char env[12][600];
static const char *envp[13];

static void set_env(int i, const char *name, const char *value) {
  snprintf(env[i], sizeof env[i], "%s=%s", name, value);
  envp[i] = env[i];
  envp[i + 1] = NULL;
}

static void set_key_env(int i, const char *name, const char *file) {
  char path[512];
  set_env(i, name, pt_simproc_key_path(file, path, sizeof path));
}

static void start_alipay(pt_simproc_t *sim, const char *extra) {
  const char *args[] = {"--dialect=alipay", FAST_SCHEDULE, extra, NULL};
  set_env(0, "PAYTASK_CHANNEL_ALIPAY_APP_ID", APP_ID);
  set_env(1, "PAYTASK_CHANNEL_ALIPAY_SELLER_ID", SELLER_ID);
  set_key_env(2, "PAYTASK_SIM_ALIPAY_APP_PUBLIC_KEY_FILE",
              "alipay_app_public.pem");
  set_key_env(3, "PAYTASK_SIM_ALIPAY_PRIVATE_KEY_FILE",
              "alipay_platform_private.pem");
  pt_simproc_start(sim, args, envp);
}

static void start_wechat(pt_simproc_t *sim, const char *extra) {
  const char *args[] = {FAST_SCHEDULE, extra, NULL};
  /* The dialect from the configuration this time, not the flag. */
  set_env(0, "PAYTASK_SIM_DIALECT", "wechat");
  set_env(1, "PAYTASK_CHANNEL_WECHAT_MCHID", MCHID);
  set_env(2, "PAYTASK_CHANNEL_WECHAT_APPID", APPID);
  set_env(3, "PAYTASK_CHANNEL_WECHAT_SERIAL_NO", MERCHANT_SERIAL);
  set_env(4, "PAYTASK_CHANNEL_WECHAT_PLATFORM_SERIAL", PLATFORM_SERIAL);
  set_env(5, "PAYTASK_CHANNEL_WECHAT_APIV3_KEY", APIV3_KEY);
  set_key_env(6, "PAYTASK_SIM_WECHAT_MERCHANT_PUBLIC_KEY_FILE",
              "wechat_merchant_public.pem");
  set_key_env(7, "PAYTASK_SIM_WECHAT_PRIVATE_KEY_FILE",
              "wechat_platform_private.pem");
  pt_simproc_start(sim, args, envp);
}

static void stop(pt_simproc_t *sim) {
  cr_assert_eq(pt_simproc_stop(sim), 0, "the simulator did not exit cleanly "
                                        "(log: %s)", sim->log);
}

static pt_crypto_key_t *key(const char *file, int private_key) {
  size_t len;
  char *pem = pt_simproc_key_pem(file, &len);
  pt_crypto_key_t *k = NULL;
  pt_error_t err;
  int rc = private_key ? pt_crypto_key_new_private(pem, len, &k, &err)
                       : pt_crypto_key_new_public(pem, len, &k, &err);
  free(pem);
  cr_assert_eq(rc, 0, "%s: %s", file, err.message);
  return k;
}

static void unique_no(char *buf, size_t len, const char *prefix) {
  static unsigned n;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(buf, len, "%s%ld%06ld%u", prefix, (long)getpid() % 100000,
           ts.tv_nsec / 1000 % 1000000, n++);
}

static void json(const char *text, bson_t *doc) {
  bson_error_t e;
  cr_assert(text != NULL && bson_init_from_json(doc, text, -1, &e),
            "not JSON: %s", text ? text : "(null)");
}

static const char *str(const bson_t *doc, const char *path) {
  bson_iter_t it, f;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &f) ||
      !BSON_ITER_HOLDS_UTF8(&f))
    return NULL;
  return bson_iter_utf8(&f, NULL);
}

static int64_t num(const bson_t *doc, const char *path) {
  bson_iter_t it, f;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &f) ||
      !(BSON_ITER_HOLDS_INT32(&f) || BSON_ITER_HOLDS_INT64(&f)))
    return -1;
  return bson_iter_as_int64(&f);
}

static void str_eq(const bson_t *doc, const char *path, const char *want) {
  const char *got = str(doc, path);
  cr_assert(got != NULL && strcmp(got, want) == 0, "%s: \"%s\", not \"%s\"",
            path, got ? got : "(absent)", want);
}

/* ---- the control endpoints ---------------------------------------------- */

static long control(pt_simproc_t *sim, const char *method, const char *path,
                    const char *body, bson_t *out) {
  char url[256], *resp = NULL;
  const char *h[] = {"Content-Type: application/json", NULL};
  snprintf(url, sizeof url, "%s%s", sim->url, path);
  long st = pt_simproc_http(method, url, h, body, body ? strlen(body) : 0,
                            &resp, NULL);
  if (out != NULL)
    json(resp, out);
  free(resp);
  return st;
}

static int64_t stat_of(pt_simproc_t *sim, const char *no, const char *key) {
  char path[160];
  bson_t d;
  snprintf(path, sizeof path, "/v1/sim/trades/%s", no);
  long st = control(sim, "GET", path, NULL, &d);
  const char *code = str(&d, "code");
  if (st == 404 && code != NULL && strcmp(code, "TRADE_NOT_EXIST") == 0) {
    bson_destroy(&d); /* no such trade */
    return -1;
  }
  cr_assert_eq(st, 200, "the simulator answered %ld for trade %s", st, no);
  int64_t v = num(&d, key);
  cr_assert_geq(v, 0, "trade %s has no %s", no, key);
  bson_destroy(&d);
  return v;
}

static long pay(pt_simproc_t *sim, const char *no, const char *action) {
  char path[160];
  snprintf(path, sizeof path, "/v1/sim/trades/%s/%s", no, action);
  return control(sim, "POST", path, NULL, NULL);
}

static void rule(pt_simproc_t *sim, const char *json_rule) {
  bson_t d;
  long st = control(sim, "POST", "/v1/sim/rules", json_rule, &d);
  cr_assert_eq(st, 200, "rule %s answered %ld", json_rule, st);
  bson_destroy(&d);
}

/* ---- Alipay, as paytask speaks it ----------------------------------------- */

typedef struct {
  const char *app_id;      /* NULL: APP_ID */
  const char *sign_file;   /* NULL: alipay_app_private.pem */
  const char *timestamp;   /* NULL: now, GMT+8 */
  const char *notify_url;  /* MAY be NULL */
  const char *tamper_biz;  /* sent instead of the signed biz_content */
  int no_sign;
} ali_opts_t;

static void cst_now(char out[20], long offset_s) {
  time_t t = time(NULL) + 8 * 3600 + offset_s;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 20, "%Y-%m-%d %H:%M:%S", &tm);
}

static void form_add(pt_buf_t *b, const char *k, const char *v) {
  static const char hex[] = "0123456789ABCDEF";
  if (b->len > 0)
    pt_buf_append(b, "&", 1);
  pt_buf_append(b, k, strlen(k));
  pt_buf_append(b, "=", 1);
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
        (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.')
      pt_buf_append(b, p, 1);
    else
      pt_buf_append(b, e, 3);
  }
}

/* Calls the gateway; returns the HTTP status, *out gets the body. */
static long alipay_call(pt_simproc_t *sim, const char *method,
                        const char *biz, const ali_opts_t *o, char **out) {
  static const ali_opts_t none;
  char ts[20], url[128], *sts = NULL, *sig = NULL;
  size_t slen, siglen;
  pt_buf_t form = {NULL, 0};
  if (o == NULL)
    o = &none;
  cst_now(ts, 0);
  pt_crypto_kv_t kv[] = {
      {"app_id", o->app_id ? o->app_id : APP_ID},
      {"method", method},
      {"format", "JSON"},
      {"charset", "utf-8"},
      {"sign_type", "RSA2"},
      {"timestamp", o->timestamp ? o->timestamp : ts},
      {"version", "1.0"},
      {"notify_url", o->notify_url},
      {"biz_content", biz},
  };
  size_t n = sizeof kv / sizeof kv[0];
  pt_crypto_key_t *k =
      key(o->sign_file ? o->sign_file : "alipay_app_private.pem", 1);
  cr_assert_eq(pt_crypto_alipay_string_to_sign(kv, n, 0, &sts, &slen, NULL),
               0);
  cr_assert_eq(
      pt_crypto_rsa_sign(k, PT_CRYPTO_SHA256, sts, slen, &sig, &siglen, NULL),
      0);
  pt_crypto_key_destroy(k);
  if (o->tamper_biz != NULL)
    kv[n - 1].value = o->tamper_biz;
  for (size_t i = 0; i < n; i++)
    if (kv[i].value != NULL)
      form_add(&form, kv[i].key, kv[i].value);
  if (!o->no_sign)
    form_add(&form, "sign", sig);
  free(sts);
  free(sig);
  const char *h[] = {
      "Content-Type: application/x-www-form-urlencoded;charset=utf-8", NULL};
  snprintf(url, sizeof url, "%s/gateway.do", sim->url);
  long st = pt_simproc_http("POST", url, h, form.data, form.len, out, NULL);
  free(form.data);
  return st;
}

/* The end of the JSON value starting at p ('{'), or NULL. */
static const char *object_end(const char *p) {
  int depth = 0, in_str = 0;
  for (; *p != '\0'; p++) {
    if (in_str) {
      if (*p == '\\' && p[1] != '\0')
        p++;
      else if (*p == '"')
        in_str = 0;
    } else if (*p == '"') {
      in_str = 1;
    } else if (*p == '{') {
      depth++;
    } else if (*p == '}' && --depth == 0) {
      return p + 1;
    }
  }
  return NULL;
}

/* Checks {"<key>":{…},"sign":"…"}: the sign verifies over the raw bytes of
 * the inner object with Alipay's public key; *inner gets that object. */
static void alipay_open(const char *body, const char *resp_key, bson_t *inner) {
  char prefix[128], sig[1024];
  snprintf(prefix, sizeof prefix, "{\"%s\":", resp_key);
  cr_assert(strncmp(body, prefix, strlen(prefix)) == 0,
            "the answer is not %s…: %s", prefix, body);
  const char *start = body + strlen(prefix);
  const char *end = object_end(start);
  cr_assert_not_null(end, "unbalanced answer: %s", body);
  cr_assert(sscanf(end, ",\"sign\":\"%1023[^\"]\"}", sig) == 1,
            "no sign after the object: %s", end);
  cr_assert_str_eq(end + 9 + strlen(sig), "\"}");
  pt_crypto_key_t *k = key("alipay_platform_public.pem", 0);
  cr_assert_eq(pt_crypto_rsa_verify(k, PT_CRYPTO_SHA256, start,
                                    (size_t)(end - start), sig, NULL),
               0, "the answer's sign does not verify: %s", body);
  pt_crypto_key_destroy(k);
  bson_error_t e;
  cr_assert(bson_init_from_json(inner, start, end - start, &e), "%s",
            e.message);
}

static char *biz_json(const char *no, const char *amount) {
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "out_trade_no", no);
  if (amount != NULL) {
    BSON_APPEND_UTF8(&d, "total_amount", amount);
    BSON_APPEND_UTF8(&d, "subject", "Course: C in depth / 课程");
    BSON_APPEND_UTF8(&d, "timeout_express", "30m");
  }
  char *s = bson_as_relaxed_extended_json(&d, NULL);
  bson_destroy(&d);
  return s;
}

/* One call whose answer must be signed; fills inner and returns its code. */
static void alipay_ok(pt_simproc_t *sim, const char *method, const char *no,
                      const char *amount, const ali_opts_t *o, bson_t *inner) {
  char key_name[96], *out = NULL;
  char *biz = biz_json(no, amount);
  long st = alipay_call(sim, method, biz, o, &out);
  bson_free(biz);
  cr_assert_eq(st, 200, "%s answered %ld: %s", method, st, out);
  snprintf(key_name, sizeof key_name, "%s_response", method);
  for (char *p = key_name; *p; p++)
    if (*p == '.')
      *p = '_';
  alipay_open(out, key_name, inner);
  free(out);
}

Test(sim_alipay, precreate_is_signed_and_idempotent, .timeout = 60) {
  pt_simproc_t sim;
  char no[64];
  bson_t r;
  start_alipay(&sim, NULL);
  unique_no(no, sizeof no, "AP");

  alipay_ok(&sim, "alipay.trade.precreate", no, "12.34", NULL, &r);
  str_eq(&r, "code", "10000");
  str_eq(&r, "msg", "Success");
  str_eq(&r, "out_trade_no", no);
  char qr[256];
  snprintf(qr, sizeof qr, "%s", str(&r, "qr_code"));
  cr_assert(strncmp(qr, "https://qr.alipay.com/", 22) == 0, "qr_code %s", qr);
  bson_destroy(&r);

  /* The same create again: the same code, no second trade. */
  alipay_ok(&sim, "alipay.trade.precreate", no, "12.34", NULL, &r);
  str_eq(&r, "code", "10000");
  str_eq(&r, "qr_code", qr);
  bson_destroy(&r);
  /* Another amount under the same out_trade_no is refused. */
  alipay_ok(&sim, "alipay.trade.precreate", no, "12.35", NULL, &r);
  str_eq(&r, "code", "40004");
  str_eq(&r, "sub_code", "ACQ.CONTEXT_INCONSISTENT");
  bson_destroy(&r);

  cr_assert_eq(stat_of(&sim, no, "creates"), 3);
  cr_assert_eq(stat_of(&sim, no, "creates_after_created"), 2);
  cr_assert_eq(stat_of(&sim, no, "amount"), 1234);
  stop(&sim);
}

Test(sim_alipay, bad_requests_are_refused, .timeout = 60) {
  pt_simproc_t sim;
  char no[64], old[20], *out = NULL;
  bson_t r;
  start_alipay(&sim, NULL);
  unique_no(no, sizeof no, "AB");
  char *biz = biz_json(no, "1.00");

  ali_opts_t tamper = {.tamper_biz = "{\"out_trade_no\":\"x\","
                                     "\"total_amount\":\"0.01\","
                                     "\"subject\":\"s\"}"};
  alipay_ok(&sim, "alipay.trade.precreate", no, "1.00", &tamper, &r);
  str_eq(&r, "code", "40002");
  str_eq(&r, "msg", "Invalid Arguments");
  str_eq(&r, "sub_code", "isv.invalid-signature");
  bson_destroy(&r);

  ali_opts_t wrong_key = {.sign_file = "alipay_platform_private.pem"};
  alipay_ok(&sim, "alipay.trade.precreate", no, "1.00", &wrong_key, &r);
  str_eq(&r, "sub_code", "isv.invalid-signature");
  bson_destroy(&r);

  ali_opts_t app = {.app_id = "2021000000009999"};
  alipay_ok(&sim, "alipay.trade.precreate", no, "1.00", &app, &r);
  str_eq(&r, "sub_code", "isv.invalid-app-id");
  bson_destroy(&r);

  ali_opts_t unsigned_req = {.no_sign = 1};
  alipay_ok(&sim, "alipay.trade.precreate", no, "1.00", &unsigned_req, &r);
  str_eq(&r, "code", "40001");
  str_eq(&r, "sub_code", "isv.missing-signature");
  bson_destroy(&r);

  cst_now(old, -3600);
  ali_opts_t stale = {.timestamp = old};
  alipay_ok(&sim, "alipay.trade.precreate", no, "1.00", &stale, &r);
  str_eq(&r, "sub_code", "isv.invalid-timestamp");
  bson_destroy(&r);

  cr_assert_eq(alipay_call(&sim, "alipay.trade.pay", biz, NULL, &out), 200);
  alipay_open(out, "error_response", &r);
  str_eq(&r, "sub_code", "isv.invalid-method");
  bson_destroy(&r);
  free(out);

  /* A form that does not parse. */
  char url[128];
  const char *h[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
  snprintf(url, sizeof url, "%s/gateway.do", sim.url);
  cr_assert_eq(pt_simproc_http("POST", url, h, "method=%zz", 10, &out, NULL),
               200);
  alipay_open(out, "error_response", &r);
  str_eq(&r, "code", "40002");
  bson_destroy(&r);
  free(out);

  /* Bad biz_content fields are a business error. */
  alipay_ok(&sim, "alipay.trade.precreate", no, "1.001", NULL, &r);
  str_eq(&r, "code", "40004");
  str_eq(&r, "sub_code", "ACQ.INVALID_PARAMETER");
  bson_destroy(&r);

  /* Nothing was created by any of these. */
  cr_assert(stat_of(&sim, no, "create_ok") <= 0);
  bson_free(biz);
  stop(&sim);
}

Test(sim_alipay, query_and_close_follow_the_buyer, .timeout = 60) {
  pt_simproc_t sim;
  char a[64], b[64], c[64];
  bson_t r;
  start_alipay(&sim, NULL);
  unique_no(a, sizeof a, "AQ");
  unique_no(b, sizeof b, "AQ");
  unique_no(c, sizeof c, "AQ");

  /* Unknown, and created but not scanned: the trade does not exist yet. */
  alipay_ok(&sim, "alipay.trade.query", a, NULL, NULL, &r);
  str_eq(&r, "code", "40004");
  str_eq(&r, "sub_code", "ACQ.TRADE_NOT_EXIST");
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.precreate", a, "5.00", NULL, &r);
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.query", a, NULL, NULL, &r);
  str_eq(&r, "sub_code", "ACQ.TRADE_NOT_EXIST");
  bson_destroy(&r);

  /* Scanned: WAIT_BUYER_PAY; closed: TRADE_CLOSED; then it cannot be paid. */
  cr_assert_eq(pay(&sim, a, "scan"), 200);
  alipay_ok(&sim, "alipay.trade.query", a, NULL, NULL, &r);
  str_eq(&r, "code", "10000");
  str_eq(&r, "trade_status", "WAIT_BUYER_PAY");
  str_eq(&r, "total_amount", "5.00");
  cr_assert_not_null(str(&r, "trade_no"));
  cr_assert_null(str(&r, "send_pay_date"));
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.close", a, NULL, NULL, &r);
  str_eq(&r, "code", "10000");
  str_eq(&r, "out_trade_no", a);
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.query", a, NULL, NULL, &r);
  str_eq(&r, "trade_status", "TRADE_CLOSED");
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, a, "pay"), 409);

  /* Paid: TRADE_SUCCESS with its date; close is refused. */
  alipay_ok(&sim, "alipay.trade.precreate", b, "0.01", NULL, &r);
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, b, "pay"), 200);
  cr_assert_eq(pay(&sim, b, "pay"), 409, "a trade is paid once");
  alipay_ok(&sim, "alipay.trade.query", b, NULL, NULL, &r);
  str_eq(&r, "trade_status", "TRADE_SUCCESS");
  str_eq(&r, "total_amount", "0.01");
  cr_assert_not_null(str(&r, "send_pay_date"));
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.close", b, NULL, NULL, &r);
  str_eq(&r, "code", "40004");
  str_eq(&r, "sub_code", "ACQ.TRADE_STATUS_ERROR");
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.precreate", b, "0.01", NULL, &r);
  str_eq(&r, "sub_code", "ACQ.TRADE_HAS_SUCCESS");
  bson_destroy(&r);

  /* Closing an unscanned trade: "does not exist", and, as at Alipay, its
   * code stays payable until its own expiry. */
  alipay_ok(&sim, "alipay.trade.precreate", c, "1.00", NULL, &r);
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.close", c, NULL, NULL, &r);
  str_eq(&r, "sub_code", "ACQ.TRADE_NOT_EXIST");
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, c, "pay"), 200);
  alipay_ok(&sim, "alipay.trade.query", c, NULL, NULL, &r);
  str_eq(&r, "trade_status", "TRADE_SUCCESS");
  bson_destroy(&r);

  /* The first query came before the trade was known to the simulator. */
  cr_assert_eq(stat_of(&sim, a, "queries"), 3);
  cr_assert_eq(stat_of(&sim, a, "closes"), 1);
  cr_assert_eq(stat_of(&sim, b, "paid_count"), 1);
  stop(&sim);
}

/* Precreates no with a time_expire `in_s` seconds from now (our clock). */
static void precreate_expiring(pt_simproc_t *sim, const char *no, int in_s) {
  char until[20], *out = NULL;
  cst_now(until, in_s);
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "out_trade_no", no);
  BSON_APPEND_UTF8(&d, "total_amount", "2.00");
  BSON_APPEND_UTF8(&d, "subject", "s");
  BSON_APPEND_UTF8(&d, "time_expire", until);
  char *biz = bson_as_relaxed_extended_json(&d, NULL);
  bson_destroy(&d);
  cr_assert_eq(alipay_call(sim, "alipay.trade.precreate", biz, NULL, &out),
               200, "%s", out);
  cr_assert_not_null(strstr(out, "\"10000\""), "%s", out);
  bson_free(biz);
  free(out);
}

/* A code is payable until its time_expire by the channel's clock: with
 * that clock behind ours (POST /v1/sim/clock), past our time_expire. */
Test(sim_alipay, a_code_expires_by_the_channels_clock, .timeout = 60) {
  pt_simproc_t sim;
  char ours[64], behind[64];
  bson_t d;
  start_alipay(&sim, NULL);
  unique_no(ours, sizeof ours, "AE");
  unique_no(behind, sizeof behind, "AE");
  precreate_expiring(&sim, ours, 2);
  precreate_expiring(&sim, behind, 2);
  cr_assert_eq(control(&sim, "POST", "/v1/sim/clock", "{\"behind_ms\":-1}",
                       NULL), 400);
  cr_assert_eq(control(&sim, "POST", "/v1/sim/clock", "{\"behind\":5}", NULL),
               400);
  cr_assert_eq(pay(&sim, ours, "scan"), 200);
  sleep(3); /* both past their time_expire by our clock */
  cr_assert_eq(pay(&sim, ours, "pay"), 409, "paid after its expiry");
  cr_assert_eq(control(&sim, "POST", "/v1/sim/clock",
                       "{\"behind_ms\":60000}", &d), 200);
  bson_destroy(&d);
  cr_assert_eq(pay(&sim, behind, "pay"), 200,
               "not payable before its expiry by the channel's clock");
  stop(&sim);
}

/* Decodes a form value in place ('+' and %XX). */
static void form_decode(char *s) {
  char *o = s;
  for (; *s; s++) {
    if (*s == '+') {
      *o++ = ' ';
    } else if (*s == '%' && s[1] && s[2]) {
      char h[3] = {s[1], s[2], 0};
      *o++ = (char)strtol(h, NULL, 16);
      s += 2;
    } else {
      *o++ = *s;
    }
  }
  *o = '\0';
}

/* Checks one Alipay notification as paytask must: URL-decode, drop sign
 * and sign_type, verify; returns its notify_id (static). */
static const char *check_alipay_notice(const pt_sink_req_t *req,
                                       const char *no, const char *amount) {
  static char notify_id[128];
  pt_crypto_kv_t kv[40];
  size_t n = 0;
  char *copy = strdup(req->body), *save = NULL, *sts = NULL;
  const char *sign = NULL, *sign_type = NULL, *status = NULL, *otn = NULL,
             *total = NULL, *app = NULL, *nid = NULL, *seller = NULL;
  size_t slen;
  cr_assert(strstr(req->head, "POST /notify") == req->head, "%s", req->head);
  cr_assert(strstr(req->head, "application/x-www-form-urlencoded") != NULL);
  for (char *p = strtok_r(copy, "&", &save); p && n < 40;
       p = strtok_r(NULL, "&", &save)) {
    char *eq = strchr(p, '=');
    cr_assert_not_null(eq, "bad pair %s", p);
    *eq = '\0';
    form_decode(p);
    form_decode(eq + 1);
    kv[n].key = p;
    kv[n++].value = eq + 1;
    if (strcmp(p, "sign") == 0)
      sign = eq + 1;
    else if (strcmp(p, "sign_type") == 0)
      sign_type = eq + 1;
    else if (strcmp(p, "trade_status") == 0)
      status = eq + 1;
    else if (strcmp(p, "out_trade_no") == 0)
      otn = eq + 1;
    else if (strcmp(p, "total_amount") == 0)
      total = eq + 1;
    else if (strcmp(p, "app_id") == 0)
      app = eq + 1;
    else if (strcmp(p, "notify_id") == 0)
      nid = eq + 1;
    else if (strcmp(p, "seller_id") == 0)
      seller = eq + 1;
  }
  cr_assert(sign && sign_type && status && otn && total && app && nid &&
                seller,
            "fields missing: %s", req->body);
  cr_assert_str_eq(sign_type, "RSA2");
  cr_assert_str_eq(status, "TRADE_SUCCESS");
  cr_assert_str_eq(otn, no);
  cr_assert_str_eq(total, amount);
  cr_assert_str_eq(app, APP_ID);
  cr_assert_str_eq(seller, SELLER_ID);
  cr_assert_eq(pt_crypto_alipay_string_to_sign(
                   kv, n, PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE, &sts, &slen, NULL),
               0);
  cr_assert(strstr(sts, "sign_type=") == NULL);
  cr_assert(strstr(sts, "notify_time=20") != NULL, "%s", sts);
  pt_crypto_key_t *k = key("alipay_platform_public.pem", 0);
  cr_assert_eq(pt_crypto_rsa_verify(k, PT_CRYPTO_SHA256, sts, slen, sign, NULL),
               0, "the notification's sign does not verify: %s", sts);
  pt_crypto_key_destroy(k);
  snprintf(notify_id, sizeof notify_id, "%s", nid);
  free(sts);
  free(copy);
  return notify_id;
}

Test(sim_alipay, notification_is_resent_until_success, .timeout = 60) {
  pt_simproc_t sim;
  pt_sink_t sink;
  char no[64], first[128];
  bson_t r;
  const int status[] = {200, 500, 200};
  const char *answers[] = {"fail", "", "success"};
  start_alipay(&sim, NULL);
  pt_sink_start(&sink, 3, status, answers);
  unique_no(no, sizeof no, "AN");
  ali_opts_t o = {.notify_url = sink.url};
  alipay_ok(&sim, "alipay.trade.precreate", no, "88.80", &o, &r);
  str_eq(&r, "code", "10000");
  bson_destroy(&r);
  cr_assert_eq(pt_sink_count(&sink), 0, "nothing before the buyer pays");

  cr_assert_eq(pay(&sim, no, "pay"), 200);
  cr_assert_eq(pt_sink_wait(&sink, 3, 10000), 3);
  snprintf(first, sizeof first, "%s",
           check_alipay_notice(&sink.reqs[0], no, "88.80"));
  for (int i = 1; i < 3; i++)
    cr_assert_str_eq(check_alipay_notice(&sink.reqs[i], no, "88.80"), first,
                     "a resend keeps its notify_id");
  /* The first resend waits the first step of the schedule (150 ms). */
  cr_assert_geq(sink.reqs[1].at_ms - sink.reqs[0].at_ms, 100);
  /* Acknowledged: no more. */
  usleep(1200 * 1000);
  cr_assert_eq(pt_sink_count(&sink), 3);
  cr_assert_eq(stat_of(&sim, no, "callbacks_sent"), 3);
  cr_assert_eq(stat_of(&sim, no, "callbacks_acked"), 1);
  cr_assert_eq(stat_of(&sim, no, "paid_count"), 1);
  stop(&sim);
  pt_sink_stop(&sink);
}

Test(sim_alipay, rules_drive_the_buyer_and_the_channel, .timeout = 60) {
  pt_simproc_t sim;
  pt_sink_t sink;
  char a[64], b[64], rj[256];
  bson_t r;
  const int status[] = {200};
  const char *answers[] = {"success"};
  start_alipay(&sim, NULL);
  pt_sink_start(&sink, 1, status, answers);
  unique_no(a, sizeof a, "AR");
  unique_no(b, sizeof b, "AR");
  ali_opts_t o = {.notify_url = sink.url};

  /* Two failed creates (20000: outcome unknown), then the trade; the buyer
   * pays 100 ms later and the notification comes twice. */
  snprintf(rj, sizeof rj,
           "{\"out_trade_no\":\"%s\",\"create_fail_times\":2,"
           "\"pay_after_ms\":100,\"duplicate_callbacks\":1}",
           a);
  rule(&sim, rj);
  for (int i = 0; i < 2; i++) {
    alipay_ok(&sim, "alipay.trade.precreate", a, "3.00", &o, &r);
    str_eq(&r, "code", "20000");
    bson_destroy(&r);
  }
  alipay_ok(&sim, "alipay.trade.precreate", a, "3.00", &o, &r);
  str_eq(&r, "code", "10000");
  bson_destroy(&r);
  cr_assert_eq(pt_sink_wait(&sink, 2, 10000), 2);
  char id0[128];
  snprintf(id0, sizeof id0, "%s", check_alipay_notice(&sink.reqs[0], a, "3.00"));
  /* A duplicate is the same notification again (as when an ack is lost). */
  cr_assert_str_eq(check_alipay_notice(&sink.reqs[1], a, "3.00"), id0);
  cr_assert_eq(stat_of(&sim, a, "callbacks_acked"), 2);
  cr_assert_eq(stat_of(&sim, a, "paid_count"), 1);

  /* Withheld: paid, but no notification; query tells. */
  rule(&sim, "{\"out_trade_no\":\"*\",\"callback\":\"withhold\"}");
  alipay_ok(&sim, "alipay.trade.precreate", b, "4.00", &o, &r);
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, b, "pay"), 200);
  alipay_ok(&sim, "alipay.trade.query", b, NULL, NULL, &r);
  str_eq(&r, "trade_status", "TRADE_SUCCESS");
  bson_destroy(&r);
  usleep(500 * 1000);
  cr_assert_eq(pt_sink_count(&sink), 2);
  cr_assert_eq(stat_of(&sim, b, "callbacks_sent"), 0);

  /* An outage: every create answers 20000, and so does a query or a
   * close of a trade that exists (b, paid above). */
  cr_assert_eq(control(&sim, "POST", "/v1/sim/outage", "{\"on\":true}", NULL),
               200);
  alipay_ok(&sim, "alipay.trade.query", b, NULL, NULL, &r);
  str_eq(&r, "code", "20000");
  bson_destroy(&r);
  alipay_ok(&sim, "alipay.trade.close", b, NULL, NULL, &r);
  str_eq(&r, "code", "20000");
  bson_destroy(&r);
  unique_no(b, sizeof b, "AR");
  alipay_ok(&sim, "alipay.trade.precreate", b, "4.00", &o, &r);
  str_eq(&r, "code", "20000");
  bson_destroy(&r);
  stop(&sim);
  pt_sink_stop(&sink);
}

/* ---- WeChat Pay, as paytask speaks it ------------------------------------- */

typedef struct {
  const char *sign_file; /* NULL: wechat_merchant_private.pem */
  const char *mchid;     /* NULL: MCHID */
  long ts_offset;
  const char *tamper_body;
  int no_auth;
} wx_opts_t;

static long wx_call(pt_simproc_t *sim, const char *method, const char *url_path,
                    const char *body, const wx_opts_t *o, char **out,
                    char **headers) {
  static const wx_opts_t none;
  char ts[24], nonce[33], auth[2048], url[512], *msg = NULL, *sig = NULL;
  size_t mlen, slen;
  if (o == NULL)
    o = &none;
  snprintf(ts, sizeof ts, "%ld", (long)time(NULL) + o->ts_offset);
  cr_assert_eq(pt_crypto_random_alnum(nonce, 32, NULL), 0);
  cr_assert_eq(pt_crypto_wechat_request_message(method, url_path, ts, nonce,
                                                body, body ? strlen(body) : 0,
                                                &msg, &mlen, NULL),
               0);
  pt_crypto_key_t *k =
      key(o->sign_file ? o->sign_file : "wechat_merchant_private.pem", 1);
  cr_assert_eq(pt_crypto_rsa_sign(k, PT_CRYPTO_SHA256, msg, mlen, &sig, &slen,
                                  NULL),
               0);
  pt_crypto_key_destroy(k);
  snprintf(auth, sizeof auth,
           "Authorization: WECHATPAY2-SHA256-RSA2048 mchid=\"%s\","
           "nonce_str=\"%s\",signature=\"%s\",timestamp=\"%s\","
           "serial_no=\"%s\"",
           o->mchid ? o->mchid : MCHID, nonce, sig, ts, MERCHANT_SERIAL);
  free(msg);
  free(sig);
  const char *h[] = {"Accept: application/json",
                     "Content-Type: application/json", o->no_auth ? NULL : auth,
                     NULL};
  const char *sent = o->tamper_body ? o->tamper_body : body;
  snprintf(url, sizeof url, "%s%s", sim->url, url_path);
  return pt_simproc_http(method, url, h, sent, sent ? strlen(sent) : 0, out,
                         headers);
}

/* Checks the platform's signature of an answer or notification. */
static void wx_verify(const char *headers, const char *body, size_t len) {
  char ts[64], nonce[64], sig[1024], serial[128], *msg = NULL;
  size_t mlen;
  cr_assert_not_null(pt_simproc_header(headers, "Wechatpay-Timestamp", ts,
                                       sizeof ts),
                     "no Wechatpay-Timestamp in %s", headers);
  cr_assert_not_null(
      pt_simproc_header(headers, "Wechatpay-Nonce", nonce, sizeof nonce));
  cr_assert_not_null(
      pt_simproc_header(headers, "Wechatpay-Signature", sig, sizeof sig));
  cr_assert_not_null(
      pt_simproc_header(headers, "Wechatpay-Serial", serial, sizeof serial));
  cr_assert_str_eq(serial, PLATFORM_SERIAL);
  cr_assert(labs(strtol(ts, NULL, 10) - (long)time(NULL)) < 300);
  cr_assert_eq(pt_crypto_wechat_response_message(ts, nonce, body, len, &msg,
                                                 &mlen, NULL),
               0);
  pt_crypto_key_t *k = key("wechat_platform_public.pem", 0);
  cr_assert_eq(pt_crypto_rsa_verify(k, PT_CRYPTO_SHA256, msg, mlen, sig, NULL),
               0, "the platform signature does not verify");
  pt_crypto_key_destroy(k);
  free(msg);
}

/* A signed call; checks the answer's signature, parses its body (if any)
 * into doc (else an empty doc) and returns the status. */
static long wx(pt_simproc_t *sim, const char *method, const char *path,
               const char *body, const wx_opts_t *o, bson_t *doc) {
  char *out = NULL, *hdrs = NULL;
  long st = wx_call(sim, method, path, body, o, &out, &hdrs);
  cr_assert(st > 0, "%s %s: no answer", method, path);
  wx_verify(hdrs, out, strlen(out));
  if (out[0] != '\0')
    json(out, doc);
  else
    bson_init(doc);
  free(out);
  free(hdrs);
  return st;
}

static char *prepay_body(const char *no, int64_t total, const char *openid,
                         const char *notify_url) {
  bson_t d = BSON_INITIALIZER, a, p;
  BSON_APPEND_UTF8(&d, "appid", APPID);
  BSON_APPEND_UTF8(&d, "mchid", MCHID);
  BSON_APPEND_UTF8(&d, "description", "Course: C in depth");
  BSON_APPEND_UTF8(&d, "out_trade_no", no);
  BSON_APPEND_UTF8(&d, "time_expire", "2099-06-08T10:34:56+08:00");
  BSON_APPEND_UTF8(&d, "notify_url",
                   notify_url ? notify_url : "https://example.com/notify");
  BSON_APPEND_DOCUMENT_BEGIN(&d, "amount", &a);
  BSON_APPEND_INT64(&a, "total", total);
  BSON_APPEND_UTF8(&a, "currency", "CNY");
  bson_append_document_end(&d, &a);
  if (openid != NULL) {
    BSON_APPEND_DOCUMENT_BEGIN(&d, "payer", &p);
    BSON_APPEND_UTF8(&p, "openid", openid);
    bson_append_document_end(&d, &p);
  }
  char *s = bson_as_relaxed_extended_json(&d, NULL);
  bson_destroy(&d);
  return s;
}

static long wx_native(pt_simproc_t *sim, const char *no, int64_t total,
                      const char *notify_url, bson_t *doc) {
  char *body = prepay_body(no, total, NULL, notify_url);
  long st = wx(sim, "POST", "/v3/pay/transactions/native", body, NULL, doc);
  bson_free(body);
  return st;
}

static long wx_query(pt_simproc_t *sim, const char *no, bson_t *doc) {
  char path[160];
  snprintf(path, sizeof path,
           "/v3/pay/transactions/out-trade-no/%s?mchid=" MCHID, no);
  return wx(sim, "GET", path, NULL, NULL, doc);
}

static long wx_close(pt_simproc_t *sim, const char *no, bson_t *doc) {
  char path[160];
  snprintf(path, sizeof path, "/v3/pay/transactions/out-trade-no/%s/close",
           no);
  return wx(sim, "POST", path, "{\"mchid\":\"" MCHID "\"}", NULL, doc);
}

Test(sim_wechat, prepay_is_signed_and_idempotent, .timeout = 60) {
  pt_simproc_t sim;
  char a[64], b[64], code_url[256];
  bson_t r;
  start_wechat(&sim, NULL);
  unique_no(a, sizeof a, "WP");
  unique_no(b, sizeof b, "WP");

  cr_assert_eq(wx_native(&sim, a, 1234, NULL, &r), 200);
  const char *cu = str(&r, "code_url");
  cr_assert(cu && strncmp(cu, "weixin://wxpay/bizpayurl?pr=", 28) == 0,
            "code_url %s", cu ? cu : "(absent)");
  snprintf(code_url, sizeof code_url, "%s", cu);
  bson_destroy(&r);
  cr_assert_eq(wx_native(&sim, a, 1234, NULL, &r), 200);
  str_eq(&r, "code_url", code_url);
  bson_destroy(&r);
  cr_assert_eq(wx_native(&sim, a, 999, NULL, &r), 400);
  str_eq(&r, "code", "OUT_TRADE_NO_USED");
  bson_destroy(&r);

  char *body = prepay_body(b, 100, NULL, NULL);
  cr_assert_eq(wx(&sim, "POST", "/v3/pay/transactions/jsapi", body, NULL, &r),
               400);
  str_eq(&r, "code", "PARAM_ERROR");
  bson_destroy(&r);
  bson_free(body);
  body = prepay_body(b, 100, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", NULL);
  cr_assert_eq(wx(&sim, "POST", "/v3/pay/transactions/jsapi", body, NULL, &r),
               200);
  const char *pid = str(&r, "prepay_id");
  cr_assert(pid && strncmp(pid, "wx", 2) == 0 && strlen(pid) > 20);
  bson_destroy(&r);
  bson_free(body);

  /* A short out_trade_no is refused as WeChat does (6..32). */
  cr_assert_eq(wx_native(&sim, "T-1", 100, NULL, &r), 400);
  str_eq(&r, "code", "PARAM_ERROR");
  bson_destroy(&r);

  cr_assert_eq(stat_of(&sim, a, "creates"), 3);
  cr_assert_eq(stat_of(&sim, a, "create_ok"), 1);
  stop(&sim);
}

Test(sim_wechat, forged_requests_get_401, .timeout = 60) {
  pt_simproc_t sim;
  char no[64];
  bson_t r;
  start_wechat(&sim, NULL);
  unique_no(no, sizeof no, "WF");
  char *body = prepay_body(no, 100, NULL, NULL);
  const wx_opts_t forged[] = {
      {.sign_file = "wechat_platform_private.pem"},
      {.mchid = "1900009999"},
      {.ts_offset = -600},
      {.tamper_body = "{\"appid\":\"" APPID "\"}"},
      {.no_auth = 1},
  };
  for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
    cr_assert_eq(
        wx(&sim, "POST", "/v3/pay/transactions/native", body, &forged[i], &r),
        401, "forgery %zu was accepted", i);
    str_eq(&r, "code", "SIGN_ERROR");
    cr_assert_not_null(str(&r, "message"));
    bson_destroy(&r);
  }
  bson_free(body);
  /* Queries are signed too (an empty body, the query string in the URL). */
  char path[160];
  snprintf(path, sizeof path,
           "/v3/pay/transactions/out-trade-no/%s?mchid=" MCHID, no);
  wx_opts_t stale = {.ts_offset = 400};
  cr_assert_eq(wx(&sim, "GET", path, NULL, &stale, &r), 401);
  bson_destroy(&r);
  cr_assert_eq(stat_of(&sim, no, "creates"), -1, "nothing reached the trade");
  stop(&sim);
}

Test(sim_wechat, query_and_close, .timeout = 60) {
  pt_simproc_t sim;
  char a[64], b[64], u[64];
  bson_t r;
  start_wechat(&sim, NULL);
  unique_no(a, sizeof a, "WQ");
  unique_no(b, sizeof b, "WQ");
  unique_no(u, sizeof u, "WQ");

  cr_assert_eq(wx_query(&sim, u, &r), 404);
  str_eq(&r, "code", "ORDER_NOT_EXIST");
  bson_destroy(&r);

  cr_assert_eq(wx_native(&sim, a, 500, NULL, &r), 200);
  bson_destroy(&r);
  cr_assert_eq(wx_query(&sim, a, &r), 200);
  str_eq(&r, "trade_state", "NOTPAY");
  str_eq(&r, "out_trade_no", a);
  str_eq(&r, "mchid", MCHID);
  str_eq(&r, "appid", APPID);
  str_eq(&r, "trade_type", "NATIVE");
  cr_assert_eq(num(&r, "amount.total"), 500);
  cr_assert_null(str(&r, "transaction_id"));
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, a, "scan"), 200);
  cr_assert_eq(wx_query(&sim, a, &r), 200);
  str_eq(&r, "trade_state", "USERPAYING");
  bson_destroy(&r);
  cr_assert_eq(wx_close(&sim, a, &r), 204);
  bson_destroy(&r);
  cr_assert_eq(wx_close(&sim, a, &r), 204, "closing again is fine");
  bson_destroy(&r);
  cr_assert_eq(wx_query(&sim, a, &r), 200);
  str_eq(&r, "trade_state", "CLOSED");
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, a, "pay"), 409);
  cr_assert_eq(wx_native(&sim, a, 500, NULL, &r), 400);
  str_eq(&r, "code", "ORDER_CLOSED");
  bson_destroy(&r);

  cr_assert_eq(wx_native(&sim, b, 700, NULL, &r), 200);
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, b, "pay"), 200);
  cr_assert_eq(wx_query(&sim, b, &r), 200);
  str_eq(&r, "trade_state", "SUCCESS");
  cr_assert_not_null(str(&r, "transaction_id"));
  cr_assert_not_null(str(&r, "success_time"));
  cr_assert_eq(num(&r, "amount.payer_total"), 700);
  str_eq(&r, "amount.currency", "CNY");
  bson_destroy(&r);
  cr_assert_eq(wx_close(&sim, b, &r), 400);
  str_eq(&r, "code", "ORDER_PAID");
  bson_destroy(&r);
  cr_assert_eq(wx_close(&sim, u, &r), 404);
  bson_destroy(&r);

  /* The query string must name this merchant. */
  char path[160];
  snprintf(path, sizeof path, "/v3/pay/transactions/out-trade-no/%s?mchid=1",
           b);
  cr_assert_eq(wx(&sim, "GET", path, NULL, NULL, &r), 400);
  bson_destroy(&r);
  cr_assert_eq(stat_of(&sim, a, "closes"), 2);
  cr_assert_eq(stat_of(&sim, b, "paid_count"), 1);

  /* An out_trade_no with '|' and '*', percent-encoded in the paths. */
  char base[48], odd[64], enc[80];
  unique_no(base, sizeof base, "WO");
  snprintf(odd, sizeof odd, "%s|x*", base);
  snprintf(enc, sizeof enc, "%s%%7Cx%%2A", base);
  cr_assert_eq(wx_native(&sim, odd, 300, NULL, &r), 200);
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, enc, "pay"), 200);
  cr_assert_eq(wx_query(&sim, enc, &r), 200);
  str_eq(&r, "out_trade_no", odd);
  str_eq(&r, "trade_state", "SUCCESS");
  bson_destroy(&r);
  stop(&sim);
}

/* Checks one WeChat notification as paytask must: the platform signature
 * over the raw body, then the resource decrypted with the APIv3 key;
 * returns its id (static). */
static const char *check_wechat_notice(const pt_sink_req_t *req,
                                       const char *no, int64_t total) {
  static char id[128];
  bson_t d, tx;
  char *plain = NULL;
  size_t plen;
  pt_error_t err;
  cr_assert(strstr(req->head, "POST /notify") == req->head, "%s", req->head);
  wx_verify(req->head, req->body, req->body_len);
  json(req->body, &d);
  str_eq(&d, "event_type", "TRANSACTION.SUCCESS");
  str_eq(&d, "resource_type", "encrypt-resource");
  str_eq(&d, "resource.algorithm", "AEAD_AES_256_GCM");
  str_eq(&d, "resource.original_type", "transaction");
  str_eq(&d, "resource.associated_data", "transaction");
  cr_assert_eq(strlen(str(&d, "resource.nonce")), 12);
  cr_assert_not_null(str(&d, "create_time"));
  cr_assert_eq(pt_crypto_wechat_decrypt(
                   APIV3_KEY, str(&d, "resource.nonce"),
                   str(&d, "resource.associated_data"),
                   str(&d, "resource.ciphertext"), &plain, &plen, &err),
               0, "%s", err.message);
  json(plain, &tx);
  str_eq(&tx, "out_trade_no", no);
  str_eq(&tx, "trade_state", "SUCCESS");
  str_eq(&tx, "mchid", MCHID);
  str_eq(&tx, "appid", APPID);
  cr_assert_not_null(str(&tx, "transaction_id"));
  cr_assert_eq(num(&tx, "amount.total"), total);
  cr_assert_eq(num(&tx, "amount.payer_total"), total);
  snprintf(id, sizeof id, "%s", str(&d, "id"));
  bson_destroy(&tx);
  bson_destroy(&d);
  free(plain);
  return id;
}

Test(sim_wechat, notification_is_resent_until_acknowledged, .timeout = 60) {
  pt_simproc_t sim;
  pt_sink_t sink;
  char no[64], first[128];
  bson_t r;
  const int status[] = {500, 400, 204};
  const char *answers[] = {"{\"code\":\"FAIL\",\"message\":\"busy\"}",
                           "{\"code\":\"FAIL\",\"message\":\"no\"}", ""};
  start_wechat(&sim, NULL);
  pt_sink_start(&sink, 3, status, answers);
  unique_no(no, sizeof no, "WN");
  cr_assert_eq(wx_native(&sim, no, 4321, sink.url, &r), 200);
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, no, "pay"), 200);
  cr_assert_eq(pt_sink_wait(&sink, 3, 10000), 3);
  snprintf(first, sizeof first, "%s",
           check_wechat_notice(&sink.reqs[0], no, 4321));
  for (int i = 1; i < 3; i++)
    cr_assert_str_eq(check_wechat_notice(&sink.reqs[i], no, 4321), first);
  usleep(1200 * 1000);
  cr_assert_eq(pt_sink_count(&sink), 3, "acknowledged: no more");
  cr_assert_eq(stat_of(&sim, no, "callbacks_sent"), 3);
  cr_assert_eq(stat_of(&sim, no, "callbacks_acked"), 1);
  stop(&sim);
  pt_sink_stop(&sink);
}

Test(sim_wechat, rules_failures_and_duplicates, .timeout = 60) {
  pt_simproc_t sim;
  pt_sink_t sink;
  char no[64], rj[256];
  bson_t r;
  const int status[] = {200};
  const char *answers[] = {""};
  start_wechat(&sim, "--pay-after-ms=50");
  pt_sink_start(&sink, 1, status, answers);
  unique_no(no, sizeof no, "WR");
  snprintf(rj, sizeof rj,
           "{\"out_trade_no\":\"%s\",\"create_fail_times\":1,"
           "\"duplicate_callbacks\":2,\"latency_ms\":100}",
           no);
  rule(&sim, rj);
  cr_assert_eq(wx_native(&sim, no, 100, sink.url, &r), 500);
  str_eq(&r, "code", "SYSTEM_ERROR");
  bson_destroy(&r);
  cr_assert_eq(wx_native(&sim, no, 100, sink.url, &r), 200);
  bson_destroy(&r);
  /* --pay-after-ms: the buyer pays by itself; 1 + 2 duplicates. */
  cr_assert_eq(pt_sink_wait(&sink, 3, 10000), 3);
  for (int i = 0; i < 3; i++)
    check_wechat_notice(&sink.reqs[i], no, 100);
  usleep(600 * 1000);
  cr_assert_eq(pt_sink_count(&sink), 3);
  cr_assert_eq(stat_of(&sim, no, "callbacks_acked"), 3);
  cr_assert_eq(stat_of(&sim, no, "paid_count"), 1);
  cr_assert_eq(stat_of(&sim, no, "creates"), 2);
  bson_t s;
  cr_assert_eq(control(&sim, "GET", "/v1/sim/stats", NULL, &s), 200);
  str_eq(&s, "dialect", "wechat");
  bson_destroy(&s);
  stop(&sim);
  pt_sink_stop(&sink);
}

/* ---- the plain dialect is unchanged; control endpoints work there too ---- */

Test(sim_plain, still_speaks_plain, .timeout = 60) {
  pt_simproc_t sim;
  char no[64], body[256];
  bson_t r;
  pt_simproc_start(&sim, NULL, NULL);
  unique_no(no, sizeof no, "PL");
  snprintf(body, sizeof body,
           "{\"out_trade_no\":\"%s\",\"amount\":100,\"currency\":\"CNY\","
           "\"sim\":{\"fail_times\":1}}",
           no);
  cr_assert_eq(control(&sim, "POST", "/v1/trades", body, &r), 503);
  bson_destroy(&r);
  cr_assert_eq(control(&sim, "POST", "/v1/trades", body, &r), 200);
  str_eq(&r, "status", "CREATED");
  bson_destroy(&r);
  cr_assert_eq(pay(&sim, no, "pay"), 200);
  char path[128];
  snprintf(path, sizeof path, "/v1/trades/%s", no);
  cr_assert_eq(control(&sim, "GET", path, NULL, &r), 200);
  str_eq(&r, "status", "PAID");
  bson_destroy(&r);
  cr_assert_eq(stat_of(&sim, no, "create_calls"), 2);
  cr_assert_eq(stat_of(&sim, no, "create_ok"), 1);
  cr_assert_eq(control(&sim, "POST", "/v1/sim/rules",
                       "{\"out_trade_no\":\"*\",\"bogus\":1}", NULL),
               400);
  stop(&sim);
}

/* ---- the encryption the simulator added to core/pt_crypto --------------- */

Test(sim_crypto, aes_gcm_encrypt_matches_the_wechat_vector) {
  char *b64 = NULL, *plain = NULL;
  size_t len, plen;
  /* wechatpay-java AeadAesCipherTest (vectors/wechat_aesgcm.json). */
  cr_assert_eq(pt_crypto_wechat_encrypt("a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb",
                                        "uluk4a9R25RW", "associatedData",
                                        "message", 7, &b64, &len, NULL),
               0);
  cr_assert_str_eq(b64, "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=");
  cr_assert_eq(pt_crypto_wechat_decrypt(APIV3_KEY, "0123456789ab", NULL,
                                        "AAAA", &plain, &plen, NULL),
               PT_EINVAL);
  free(b64);
  /* Round trip with an empty plaintext and no associated data. */
  cr_assert_eq(pt_crypto_wechat_encrypt(APIV3_KEY, "0123456789ab", NULL, "", 0,
                                        &b64, &len, NULL),
               0);
  cr_assert_eq(pt_crypto_wechat_decrypt(APIV3_KEY, "0123456789ab", NULL, b64,
                                        &plain, &plen, NULL),
               0);
  cr_assert_eq(plen, 0);
  free(plain);
  free(b64);
  char nonce[33];
  cr_assert_eq(pt_crypto_random_alnum(nonce, 32, NULL), 0);
  cr_assert_eq(strlen(nonce), 32);
  cr_assert_eq(pt_crypto_aes_gcm_encrypt("short", 5, "0123456789ab", 12, NULL,
                                         0, "x", 1, (unsigned char **)&plain,
                                         &plen, NULL),
               PT_EINVAL);
}
