/* The alipay and wechat strategies on bytes: every request they build is
 * checked with the public half of the key that signed it, every answer and
 * notification is made here and signed with the dev keys of the side that
 * would send it (conf/dev-keys), then damaged to see it refused. Also the
 * channel table and the exact fen/yuan conversions. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_crypto.h"
#include "tasks/pt_amount.h"
#include "tasks/pt_chan_util.h"
#include "tasks/pt_registry.h"

#define APP_ID "2021000000000001"
#define SELLER_ID "2088000000000001"
#define MCHID "1900000001"
#define APPID "wx0000000000000001"
#define MERCHANT_SERIAL "5157F09EFDC096DE15EBE81A47057A72"
#define PLATFORM_SERIAL "PUB_KEY_ID_0001"
#define APIV3_KEY "0123456789abcdef0123456789ABCDEF"
#define OTN "T-000001"
#define NOW 1700000000 /* 2023-11-15 06:13:20 in Beijing */

/* ---- files and keys ---- */

/* The source tree: $PAYTASK_SOURCE_DIR (set by CTest), else where this file
 * was compiled from. */
static const char *source_dir(void) {
  static char dir[4096];
  const char *env = getenv("PAYTASK_SOURCE_DIR");
  if (env != NULL && env[0] != '\0')
    return env;
  snprintf(dir, sizeof dir, "%s", __FILE__);
  char *cut = strstr(dir, "/tests/tasks/");
  if (cut != NULL)
    *cut = '\0';
  return dir;
}

static const char *key_file(const char *name, char *buf, size_t len) {
  snprintf(buf, len, "%s/conf/dev-keys/%s", source_dir(), name);
  return buf;
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "cannot open %s", path);
  char *buf = malloc(1 << 16);
  cr_assert_not_null(buf);
  *len = fread(buf, 1, (1 << 16) - 1, f);
  buf[*len] = '\0';
  fclose(f);
  return buf;
}

static pt_crypto_key_t *dev_key(const char *name, int private_key) {
  char path[4096];
  size_t len;
  pt_crypto_key_t *k = NULL;
  pt_error_t e = {0};
  char *pem = read_file(key_file(name, path, sizeof path), &len);
  int rc = private_key ? pt_crypto_key_new_private(pem, len, &k, &e)
                       : pt_crypto_key_new_public(pem, len, &k, &e);
  free(pem);
  cr_assert_eq(rc, 0, "%s: %s", name, e.message);
  return k;
}

/* A base64 signature (free()) of msg with the private key in file name. */
static char *sign_with(const char *name, const void *msg, size_t len) {
  pt_crypto_key_t *k = dev_key(name, 1);
  char *sig = NULL;
  size_t sig_len;
  pt_error_t e = {0};
  cr_assert_eq(pt_crypto_rsa_sign(k, PT_CRYPTO_SHA256, msg, len, &sig,
                                  &sig_len, &e),
               0, "%s", e.message);
  pt_crypto_key_destroy(k);
  return sig;
}

static int verifies_with(const char *name, const void *msg, size_t len,
                         const char *sig) {
  pt_crypto_key_t *k = dev_key(name, 0);
  int rc = pt_crypto_rsa_verify(k, PT_CRYPTO_SHA256, msg, len, sig, NULL);
  pt_crypto_key_destroy(k);
  return rc == 0;
}

/* ---- configuration and tasks ---- */

static pt_config_t cfg;

static void set(const char *key, const char *value) {
  pt_error_t e = {0};
  cr_assert_eq(pt_config_set(&cfg, key, value, &e), 0, "%s: %s", key,
               e.message);
}

static void set_key(const char *key, const char *file) {
  char path[4096];
  set(key, key_file(file, path, sizeof path));
}

static void configure(void) {
  pt_config_defaults(&cfg);
  set("channel.alipay.app_id", APP_ID);
  set_key("channel.alipay.private_key_file", "alipay_app_private.pem");
  set_key("channel.alipay.public_key_file", "alipay_platform_public.pem");
  set("channel.wechat.mchid", MCHID);
  set("channel.wechat.appid", APPID);
  set("channel.wechat.serial_no", MERCHANT_SERIAL);
  set_key("channel.wechat.private_key_file", "wechat_merchant_private.pem");
  set("channel.wechat.platform_serial", PLATFORM_SERIAL);
  set_key("channel.wechat.platform_public_key_file",
          "wechat_platform_public.pem");
  set("channel.wechat.apiv3_key", APIV3_KEY);
}

static void setup(void) {
  pt_error_t e = {0};
  configure();
  cr_assert_eq(pt_channels_init(&cfg, &e), 0, "%s", e.message);
}

static void teardown(void) { pt_channels_cleanup(); }

/* A pay task of channel with params (JSON, MAY be NULL). */
static void task(pt_task_t *t, const char *channel, const char *params) {
  bson_error_t e;
  pt_task_init(t);
  snprintf(t->type, sizeof t->type, "pay");
  snprintf(t->channel, sizeof t->channel, "%s", channel);
  snprintf(t->out_trade_no, sizeof t->out_trade_no, OTN);
  t->amount = 1234;
  snprintf(t->currency, sizeof t->currency, "CNY");
  cr_assert_eq(pt_task_set_str(&t->subject, "Coffee 咖啡"), 0);
  t->created_at_ms = (int64_t)NOW * 1000;
  if (params != NULL) {
    bson_destroy(&t->params);
    cr_assert(bson_init_from_json(&t->params, params, -1, &e), "%s",
              e.message);
    t->has_params = 1;
  }
}

static const pt_channel_ops_t *chan(const char *code) {
  const pt_channel_ops_t *c = pt_channel_find(code);
  cr_assert_not_null(c, "channel %s is not registered", code);
  return c;
}

static void build_ok(const char *code, pt_chan_op_t op, const pt_task_t *t,
                     pt_chan_req_t *req) {
  pt_error_t e = {0};
  pt_chan_req_init(req);
  req->now_s = NOW;
  cr_assert_eq(chan(code)->build(op, t, &cfg, req, &e), 0, "%s", e.message);
}

/* The value of header name in req, or NULL. */
static const char *req_header(const pt_chan_req_t *req, const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; req->headers[i] != NULL; i++)
    if (strncasecmp(req->headers[i], name, n) == 0 &&
        req->headers[i][n] == ':')
      return req->headers[i] + n + 2;
  return NULL;
}

/* Runs parse on an answer; the caller destroys out->result. */
static void parse(const char *code, pt_chan_op_t op, const pt_task_t *t,
                  int status, long http_code, const char *headers,
                  const char *body, pt_chan_res_t *out) {
  pt_http_response_t r = {.status = status,
                          .http_code = http_code,
                          .body = body,
                          .body_len = body != NULL ? strlen(body) : 0,
                          .headers = headers,
                          .headers_len = headers != NULL ? strlen(headers) : 0,
                          .error = "transport"};
  memset(out, 0, sizeof *out);
  bson_init(&out->result);
  chan(code)->parse(op, t, &r, out);
}

static const char *result_str(const pt_chan_res_t *out, const char *key) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, &out->result, key) && BSON_ITER_HOLDS_UTF8(&it))
    return bson_iter_utf8(&it, NULL);
  return NULL;
}

static const char *doc_str(const bson_t *doc, const char *key) {
  bson_iter_t it, d;
  cr_assert(bson_iter_init(&it, doc));
  if (bson_iter_find_descendant(&it, key, &d) && BSON_ITER_HOLDS_UTF8(&d))
    return bson_iter_utf8(&d, NULL);
  return NULL;
}

/* ---- forms ---- */

typedef struct {
  pt_crypto_kv_t kv[32];
  size_t n;
} tform_t;

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static char *form_decode(const char *s, size_t n) {
  char *d = malloc(n + 1);
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%') {
      cr_assert(i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0,
                "bad escape in %.*s", (int)n, s);
      d[m++] = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
      i += 2;
    } else {
      cr_assert(s[i] != '+', "the sender encodes spaces as %%20");
      d[m++] = s[i];
    }
  }
  d[m] = '\0';
  return d;
}

static void tform_parse(const char *s, tform_t *f) {
  f->n = 0;
  while (*s != '\0') {
    const char *amp = strchr(s, '&');
    size_t len = amp != NULL ? (size_t)(amp - s) : strlen(s);
    const char *eq = memchr(s, '=', len);
    cr_assert_not_null(eq);
    cr_assert_lt(f->n, 32);
    f->kv[f->n].key = form_decode(s, (size_t)(eq - s));
    f->kv[f->n].value = form_decode(eq + 1, len - (size_t)(eq - s) - 1);
    f->n++;
    s += len + (amp != NULL);
  }
}

static const char *tform_get(const tform_t *f, const char *key) {
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->kv[i].key, key) == 0)
      return f->kv[i].value;
  return NULL;
}

static void tform_free(tform_t *f) {
  for (size_t i = 0; i < f->n; i++) {
    free((char *)f->kv[i].key);
    free((char *)f->kv[i].value);
  }
}

/* Checks an Alipay request form: signed by the app over the string to sign
 * with sign_type kept. */
static void assert_alipay_signed(const tform_t *f) {
  char *tosign;
  size_t len;
  pt_error_t e = {0};
  const char *sign = tform_get(f, "sign");
  cr_assert_not_null(sign);
  cr_assert_str_eq(tform_get(f, "sign_type"), "RSA2");
  cr_assert_eq(pt_crypto_alipay_string_to_sign(f->kv, f->n, 0, &tosign, &len,
                                               &e),
               0, "%s", e.message);
  cr_assert(strstr(tosign, "sign_type=RSA2") != NULL);
  cr_assert(verifies_with("alipay_app_public.pem", tosign, len, sign),
            "the request's sign does not verify over %s", tosign);
  free(tosign);
}

/* ---- the tables ---- */

ParameterizedTestParameters(channel_table, slots) {
  static size_t idx[16];
  size_t n = 0;
  while (n < sizeof idx / sizeof *idx && pt_channels[n] != NULL)
    idx[n] = n, n++;
  return cr_make_param_array(size_t, idx, n);
}

ParameterizedTest(size_t *i, channel_table, slots) {
  const pt_channel_ops_t *c = pt_channels[*i];
  cr_assert_not_null(c->code);
  cr_assert_not_null(c->name, "%s: name is required", c->code);
  cr_assert_not_null(c->build, "%s: build is required", c->code);
  cr_assert_not_null(c->parse, "%s: parse is required", c->code);
  if (c->notify_parse != NULL)
    cr_assert_not_null(c->notify_ack, "%s: notify_ack is required",
                       c->code);
  cr_assert_eq(pt_channel_find(c->code), c);
  for (size_t j = 0; pt_channels[j] != NULL; j++)
    if (j != *i)
      cr_assert_str_neq(pt_channels[j]->code, c->code, "duplicate code");
}

Test(channel_table, real_channels_are_registered_and_followed) {
  size_t n = 0;
  while (pt_channels[n] != NULL)
    n++;
  cr_assert_lt(n, 16, "more channels than the parameterised test checks");
  cr_assert_not_null(pt_channel_find("sim"));
  cr_assert(chan("alipay")->follows_trades);
  cr_assert(chan("wechat")->follows_trades);
}

Test(channel_table, unconfigured_channels_load_nothing_and_refuse_to_build) {
  pt_task_t t;
  pt_chan_req_t req;
  pt_error_t e = {0};
  pt_config_defaults(&cfg);
  cr_assert_eq(pt_channels_init(&cfg, &e), 0, "%s", e.message);
  task(&t, "alipay", NULL);
  pt_chan_req_init(&req);
  cr_assert_eq(chan("alipay")->build(PT_CHAN_CREATE, &t, &cfg, &req, &e),
               PT_ECONFIG);
  cr_assert_str_eq(e.message, "channel.alipay.app_id is not set");
  cr_assert_null(req.body);
  cr_assert_eq(chan("wechat")->build(PT_CHAN_CREATE, &t, &cfg, &req, &e),
               PT_ECONFIG);
  cr_assert_str_eq(e.message, "channel.wechat.mchid is not set");
  pt_task_destroy(&t);
  pt_channels_cleanup();
  pt_channels_cleanup(); /* twice is harmless */
}

Test(channel_table, a_missing_key_file_names_the_key_and_the_file) {
  pt_error_t e = {0};
  configure();
  set("channel.alipay.public_key_file", "/nonexistent/alipay.pem");
  cr_assert_eq(pt_channels_init(&cfg, &e), PT_ECONFIG);
  cr_assert(strstr(e.message, "channel.alipay.public_key_file") != NULL, "%s",
            e.message);
  cr_assert(strstr(e.message, "/nonexistent/alipay.pem") != NULL, "%s",
            e.message);
  configure();
  set_key("channel.wechat.private_key_file", "wechat_platform_public.pem");
  cr_assert_eq(pt_channels_init(&cfg, &e), PT_ECONFIG);
  cr_assert(strstr(e.message, "channel.wechat.private_key_file") != NULL,
            "%s", e.message);
  configure();
  set("channel.wechat.platform_serial", "");
  cr_assert_eq(pt_channels_init(&cfg, &e), PT_ECONFIG);
  cr_assert_str_eq(e.message, "channel.wechat.platform_serial is not set");
}

/* The shipped platform keys and APIv3 key are recognised (the
 * fingerprints compiled in match the files), by content: a copy of them
 * elsewhere is too. Another key, or an unconfigured channel, is not. */
Test(channel_table, the_shipped_development_credentials_are_recognised) {
  char what[64];
  pt_config_defaults(&cfg);
  cr_assert_eq(pt_chan_dev_credentials(&cfg, what, sizeof what), 0);
  set("channel.alipay.app_id", "2021000000000000");
  set_key("channel.alipay.public_key_file", "alipay_app_public.pem");
  cr_assert_eq(pt_chan_dev_credentials(&cfg, what, sizeof what), 0,
               "a key whose private half does not ship: %s", what);
  set_key("channel.alipay.public_key_file", "alipay_platform_public.pem");
  cr_assert_eq(pt_chan_dev_credentials(&cfg, what, sizeof what), 1);
  cr_assert_str_eq(what, "channel.alipay.public_key_file");

  pt_config_defaults(&cfg);
  set("channel.wechat.mchid", "1900000001");
  set_key("channel.wechat.platform_public_key_file",
          "wechat_platform_public.pem");
  cr_assert_eq(pt_chan_dev_credentials(&cfg, what, sizeof what), 1);
  cr_assert_str_eq(what, "channel.wechat.platform_public_key_file");
  set_key("channel.wechat.platform_public_key_file",
          "wechat_merchant_public.pem");
  set("channel.wechat.apiv3_key", "dev-apiv3-key-0123456789abcdefgh");
  cr_assert_eq(pt_chan_dev_credentials(&cfg, what, sizeof what), 1);
  cr_assert_str_eq(what, "channel.wechat.apiv3_key");
  set("channel.wechat.apiv3_key", "a-real-apiv3-key-0123456789abcde");
  cr_assert_eq(pt_chan_dev_credentials(&cfg, what, sizeof what), 0, "%s",
               what);
}

Test(channel_table, submit_checks_include_the_channels) {
  pt_task_t t;
  pt_input_error_t ie = {0};
  task(&t, "alipay", NULL);
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), 0, "%s", ie.message);
  snprintf(t.currency, sizeof t.currency, "USD");
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), PT_EINVAL);
  cr_assert_str_eq(ie.code, "invalid_currency");
  pt_task_destroy(&t);
  task(&t, "alipay", NULL);
  cr_assert_eq(pt_task_set_str(&t.subject, "tea & cake"), 0);
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), PT_EINVAL);
  cr_assert_str_eq(ie.code, "invalid_subject");
  pt_task_destroy(&t);

  task(&t, "alipay", "{\"product\":\"app\"}");
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), PT_EINVAL);
  cr_assert_str_eq(ie.code, "invalid_params");
  pt_task_destroy(&t);
  task(&t, "alipay", "{\"product\":\"wap\"}");
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), 0, "%s", ie.message);
  pt_task_destroy(&t);

  task(&t, "wechat", "{\"product\":\"jsapi\"}");
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), PT_EINVAL);
  cr_assert_str_eq(ie.code, "invalid_params");
  pt_task_destroy(&t);
  task(&t, "wechat", "{\"product\":\"jsapi\",\"openid\":\"o-1\"}");
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), 0, "%s", ie.message);
  pt_task_destroy(&t);
  task(&t, "wechat", "{\"product\":7}");
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), PT_EINVAL);
  pt_task_destroy(&t);
  task(&t, "wechat", NULL);
  snprintf(t.out_trade_no, sizeof t.out_trade_no, "T1");
  cr_assert_eq(pt_registry_check(&t, NULL, &ie), PT_EINVAL);
  cr_assert_str_eq(ie.code, "invalid_out_trade_no");
  pt_task_destroy(&t);
}

Test(channel_table, an_unconfigured_channel_is_refused_at_submit) {
  pt_config_t none;
  pt_task_t t;
  pt_input_error_t ie = {0};
  pt_config_defaults(&none); /* no app id, no mchid */
  task(&t, "alipay", NULL);
  cr_assert_eq(pt_registry_check(&t, &none, &ie), PT_EINVAL);
  cr_assert_str_eq(ie.code, "invalid_channel");
  cr_assert(strstr(ie.message, "channel.alipay.app_id") != NULL, "%s",
            ie.message);
  pt_task_destroy(&t);
  task(&t, "wechat", NULL);
  cr_assert_eq(pt_registry_check(&t, &none, &ie), PT_EINVAL);
  cr_assert(strstr(ie.message, "channel.wechat.mchid") != NULL, "%s",
            ie.message);
  pt_task_destroy(&t);
  task(&t, "sim", NULL);
  cr_assert_eq(pt_registry_check(&t, &none, &ie), 0, "%s", ie.message);
  pt_task_destroy(&t);
}

/* ---- amounts ---- */

Test(amount, fen_to_yuan_and_back) {
  static const struct {
    int64_t fen;
    const char *yuan;
  } cases[] = {{0, "0.00"},          {1, "0.01"},
               {10, "0.10"},         {99, "0.99"},
               {1234, "12.34"},      {10000, "100.00"},
               {100000001, "1000000.01"},
               {INT64_MAX, "92233720368547758.07"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char buf[PT_AMOUNT_YUAN_MAX];
    int64_t back;
    cr_assert_eq(pt_amount_to_yuan(cases[i].fen, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, cases[i].yuan);
    cr_assert_eq(pt_amount_from_yuan(buf, strlen(buf), &back), 0);
    cr_assert_eq(back, cases[i].fen);
  }
}

Test(amount, short_forms_are_read) {
  int64_t fen;
  cr_assert_eq(pt_amount_from_yuan("12", 2, &fen), 0);
  cr_assert_eq(fen, 1200);
  cr_assert_eq(pt_amount_from_yuan("12.3", 4, &fen), 0);
  cr_assert_eq(fen, 1230);
  cr_assert_eq(pt_amount_from_yuan("0", 1, &fen), 0);
  cr_assert_eq(fen, 0);
  cr_assert_eq(pt_amount_from_yuan("0.5", 3, &fen), 0);
  cr_assert_eq(fen, 50);
  /* len bounds the text: "12.345" cut at 5 bytes is "12.34". */
  cr_assert_eq(pt_amount_from_yuan("12.345", 5, &fen), 0);
  cr_assert_eq(fen, 1234);
}

Test(amount, refusals) {
  static const char *const bad[] = {
      "",     "-1",    "-0.01", "+1",   "1.234", "12.",  ".5",
      "1e3",  " 1",    "1 ",    "abc",  "1,00",  "012",  "00.10",
      "1.2a", "1..2",  "0x10",  "1.-1", "92233720368547758.08",
      "99999999999999999999", "92233720368547759"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int64_t fen = 7;
    cr_assert_eq(pt_amount_from_yuan(bad[i], strlen(bad[i]), &fen), PT_EINVAL,
                 "\"%s\" was accepted", bad[i]);
    cr_assert_eq(fen, -1);
  }
  char small[5];
  cr_assert_eq(pt_amount_to_yuan(-1, small, sizeof small), PT_EINVAL);
  cr_assert_eq(pt_amount_to_yuan(1234, small, sizeof small), PT_EINVAL);
  cr_assert_str_eq(small, "");
  cr_assert_eq(pt_amount_to_yuan(123, small, sizeof small), 0);
  cr_assert_str_eq(small, "1.23");
}

/* ---- alipay: requests ---- */

TestSuite(alipay, .init = setup, .fini = teardown);

Test(alipay, create_is_a_signed_form_with_sign_type_kept) {
  pt_task_t t;
  pt_chan_req_t req;
  tform_t f;
  bson_t biz;
  bson_error_t be;
  task(&t, "alipay", NULL);
  build_ok("alipay", PT_CHAN_CREATE, &t, &req);
  cr_assert_str_eq(req.method, "POST");
  cr_assert_str_eq(req.url, cfg.alipay_gateway);
  cr_assert_str_eq(req_header(&req, "Content-Type"),
                   "application/x-www-form-urlencoded;charset=utf-8");
  cr_assert_eq(strlen(req.body), req.body_len);
  tform_parse(req.body, &f);
  assert_alipay_signed(&f);
  cr_assert_str_eq(tform_get(&f, "app_id"), APP_ID);
  cr_assert_str_eq(tform_get(&f, "method"), "alipay.trade.precreate");
  cr_assert_str_eq(tform_get(&f, "format"), "JSON");
  cr_assert_str_eq(tform_get(&f, "charset"), "utf-8");
  cr_assert_str_eq(tform_get(&f, "version"), "1.0");
  cr_assert_str_eq(tform_get(&f, "timestamp"), "2023-11-15 06:13:20");
  cr_assert_str_eq(tform_get(&f, "notify_url"),
                   "http://127.0.0.1:8080/v1/channels/alipay/notify");
  cr_assert(bson_init_from_json(&biz, tform_get(&f, "biz_content"), -1, &be),
            "%s", be.message);
  cr_assert_str_eq(doc_str(&biz, "out_trade_no"), OTN);
  cr_assert_str_eq(doc_str(&biz, "total_amount"), "12.34");
  cr_assert_str_eq(doc_str(&biz, "subject"), "Coffee 咖啡");
  cr_assert_str_eq(doc_str(&biz, "time_expire"), "2023-11-15 06:43:20");
  bson_destroy(&biz);
  tform_free(&f);
  pt_chan_req_clear(&req);
  pt_task_destroy(&t);
}

Test(alipay, query_and_close_name_the_trade_only) {
  static const struct {
    pt_chan_op_t op;
    const char *method;
  } ops[] = {{PT_CHAN_QUERY, "alipay.trade.query"},
             {PT_CHAN_CLOSE, "alipay.trade.close"}};
  for (size_t i = 0; i < 2; i++) {
    pt_task_t t;
    pt_chan_req_t req;
    tform_t f;
    bson_t biz;
    bson_error_t be;
    task(&t, "alipay", NULL);
    build_ok("alipay", ops[i].op, &t, &req);
    cr_assert_str_eq(req.method, "POST");
    tform_parse(req.body, &f);
    assert_alipay_signed(&f);
    cr_assert_str_eq(tform_get(&f, "method"), ops[i].method);
    cr_assert_null(tform_get(&f, "notify_url"));
    cr_assert(bson_init_from_json(&biz, tform_get(&f, "biz_content"), -1,
                                  &be));
    cr_assert_str_eq(doc_str(&biz, "out_trade_no"), OTN);
    cr_assert_eq(bson_count_keys(&biz), 1);
    bson_destroy(&biz);
    tform_free(&f);
    pt_chan_req_clear(&req);
    pt_task_destroy(&t);
  }
}

Test(alipay, wap_gives_a_signed_url_and_sends_nothing) {
  pt_task_t t;
  pt_chan_req_t req;
  tform_t f;
  bson_t biz;
  bson_error_t be;
  size_t gw = strlen(cfg.alipay_gateway);
  task(&t, "alipay",
       "{\"product\":\"wap\",\"return_url\":\"https://shop.example/done\"}");
  build_ok("alipay", PT_CHAN_CREATE, &t, &req);
  cr_assert_null(req.method);
  cr_assert_null(req.body);
  cr_assert(strncmp(req.url, cfg.alipay_gateway, gw) == 0);
  cr_assert_eq(req.url[gw], '?');
  tform_parse(req.url + gw + 1, &f);
  assert_alipay_signed(&f);
  cr_assert_str_eq(tform_get(&f, "method"), "alipay.trade.wap.pay");
  cr_assert_str_eq(tform_get(&f, "return_url"), "https://shop.example/done");
  cr_assert(bson_init_from_json(&biz, tform_get(&f, "biz_content"), -1, &be));
  cr_assert_str_eq(doc_str(&biz, "product_code"), "QUICK_WAP_WAY");
  cr_assert_str_eq(doc_str(&biz, "total_amount"), "12.34");
  bson_destroy(&biz);
  tform_free(&f);
  pt_chan_req_clear(&req);
  pt_task_destroy(&t);
}

/* ---- alipay: answers ---- */

/* {"<name>": inner, "sign": …} with inner signed by Alipay's key (or by the
 * app's key when forged); malloc'd. */
static char *alipay_answer(const char *name, const char *inner, int forged) {
  char *sig = sign_with(forged ? "alipay_app_private.pem"
                               : "alipay_platform_private.pem",
                        inner, strlen(inner));
  size_t len = strlen(name) + strlen(inner) + strlen(sig) + 64;
  char *body = malloc(len);
  snprintf(body, len, "{\"%s\":%s,\"sign\":\"%s\"}", name, inner, sig);
  free(sig);
  return body;
}

static void alipay_parse_answer(pt_chan_op_t op, const char *body,
                                pt_chan_res_t *out) {
  pt_task_t t;
  task(&t, "alipay", NULL);
  parse("alipay", op, &t, 0, 200, NULL, body, out);
  pt_task_destroy(&t);
}

#define PRECREATE_OK                                                         \
  "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"" OTN          \
  "\",\"qr_code\":\"https://qr.alipay.com/bax01\"}"

Test(alipay, signed_precreate_gives_the_qr_code) {
  pt_chan_res_t out;
  char *body = alipay_answer("alipay_trade_precreate_response", PRECREATE_OK,
                             0);
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s %s", out.code,
               out.message);
  cr_assert_str_eq(result_str(&out, "qr_code"), "https://qr.alipay.com/bax01");
  cr_assert_str_eq(result_str(&out, "out_trade_no"), OTN);
  cr_assert_eq(out.trade_state, PT_TRADE_NOTPAY);
  cr_assert_eq(out.amount, -1);
  bson_destroy(&out.result);
  free(body);
}

Test(alipay, a_tampered_forged_or_missing_signature_is_never_trusted) {
  pt_chan_res_t out;
  char *body = alipay_answer("alipay_trade_precreate_response", PRECREATE_OK,
                             0);
  char *qr = strstr(body, "bax01");
  qr[3] = '2';
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_str_eq(out.code, "bad_signature");
  cr_assert_eq(bson_count_keys(&out.result), 0);
  bson_destroy(&out.result);
  free(body);

  body = alipay_answer("alipay_trade_precreate_response", PRECREATE_OK, 1);
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_str_eq(out.code, "bad_signature");
  bson_destroy(&out.result);
  free(body);

  alipay_parse_answer(PT_CHAN_CREATE,
                      "{\"alipay_trade_precreate_response\":" PRECREATE_OK
                      "}",
                      &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_str_eq(out.code, "bad_signature");
  bson_destroy(&out.result);
}

Test(alipay, raw_bytes_are_verified_with_strings_that_hold_braces) {
  /* Braces, quotes and backslashes inside strings must not end the object
   * early, and the signed bytes are the raw text, spaces and all. */
  const char *inner = "{ \"code\": \"10000\", \"msg\": \"a}\\\"{b\\\\\","
                      " \"out_trade_no\": \"" OTN "\","
                      " \"qr_code\": \"q}\" }";
  pt_chan_res_t out;
  char *body = alipay_answer("alipay_trade_precreate_response", inner, 0);
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s %s", out.code,
               out.message);
  cr_assert_str_eq(result_str(&out, "qr_code"), "q}");
  bson_destroy(&out.result);
  free(body);
}

Test(alipay, escaped_slashes_verify_as_alipay_signs_them) {
  const char *sent = "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no"
                     "\":\"" OTN "\",\"qr_code\":\"https:\\/\\/qr\"}";
  const char *signed_text = "{\"code\":\"10000\",\"msg\":\"Success\","
                            "\"out_trade_no\":\"" OTN
                            "\",\"qr_code\":\"https://qr\"}";
  char *sig = sign_with("alipay_platform_private.pem", signed_text,
                        strlen(signed_text));
  char body[1024];
  pt_chan_res_t out;
  snprintf(body, sizeof body,
           "{\"alipay_trade_precreate_response\":%s,\"sign\":\"%s\"}", sent,
           sig);
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s %s", out.code,
               out.message);
  cr_assert_str_eq(result_str(&out, "qr_code"), "https://qr");
  bson_destroy(&out.result);
  free(sig);
}

Test(alipay, an_answer_about_another_trade_is_refused) {
  pt_chan_res_t out;
  char *body = alipay_answer(
      "alipay_trade_precreate_response",
      "{\"code\":\"10000\",\"out_trade_no\":\"T-2\",\"qr_code\":\"q\"}", 0);
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_str_eq(out.code, "bad_channel_reply");
  bson_destroy(&out.result);
  free(body);
}

Test(alipay, waiting_and_unavailable_are_unknown) {
  pt_chan_res_t out;
  char *body = alipay_answer("alipay_trade_query_response",
                             "{\"code\":\"10003\",\"msg\":\"wait\"}", 0);
  alipay_parse_answer(PT_CHAN_QUERY, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_eq(out.trade_state, PT_TRADE_PAYING);
  bson_destroy(&out.result);
  free(body);
  body = alipay_answer("alipay_trade_precreate_response",
                       "{\"code\":\"20000\",\"msg\":\"Service Currently "
                       "Unavailable\",\"sub_code\":\"isp.unknow-error\"}",
                       0);
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_str_eq(out.code, "isp.unknow-error");
  bson_destroy(&out.result);
  free(body);
}

Test(alipay, a_trade_that_does_not_exist_is_not_found) {
  static const pt_chan_op_t ops[] = {PT_CHAN_QUERY, PT_CHAN_CLOSE};
  static const char *const names[] = {"alipay_trade_query_response",
                                      "alipay_trade_close_response"};
  const char *inner = "{\"code\":\"40004\",\"msg\":\"Business Failed\","
                      "\"sub_code\":\"ACQ.TRADE_NOT_EXIST\","
                      "\"sub_msg\":\"交易不存在\"}";
  for (size_t i = 0; i < 2; i++) {
    pt_chan_res_t out;
    char *body = alipay_answer(names[i], inner, 0);
    alipay_parse_answer(ops[i], body, &out);
    cr_assert(out.not_found);
    cr_assert_eq(out.outcome, PT_OUTCOME_FAIL);
    cr_assert_str_eq(out.code, "ACQ.TRADE_NOT_EXIST");
    cr_assert_str_eq(out.message, "交易不存在");
    bson_destroy(&out.result);
    free(body);
  }
  /* Unsigned, it could make paytask close a paid trade: not believed. */
  char body[512];
  pt_chan_res_t out;
  snprintf(body, sizeof body, "{\"alipay_trade_query_response\":%s}", inner);
  alipay_parse_answer(PT_CHAN_QUERY, body, &out);
  cr_assert_not(out.not_found);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&out.result);
}

Test(alipay, refusals_are_final) {
  pt_chan_res_t out;
  char *body = alipay_answer(
      "alipay_trade_close_response",
      "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ."
      "TRADE_STATUS_ERROR\",\"sub_msg\":\"paid\"}",
      0);
  alipay_parse_answer(PT_CHAN_CLOSE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_FAIL);
  cr_assert_not(out.not_found);
  cr_assert_str_eq(out.code, "ACQ.TRADE_STATUS_ERROR");
  bson_destroy(&out.result);
  free(body);
  /* The gateway's own errors may come unsigned. */
  alipay_parse_answer(PT_CHAN_CREATE,
                      "{\"error_response\":{\"code\":\"40002\",\"msg\":"
                      "\"Invalid Arguments\",\"sub_code\":\"isv.invalid-"
                      "signature\",\"sub_msg\":\"bad sign\"}}",
                      &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_FAIL);
  cr_assert_str_eq(out.code, "isv.invalid-signature");
  cr_assert_str_eq(out.message, "bad sign");
  bson_destroy(&out.result);
  /* Alipay's own system error says "try again": not a refusal. */
  body = alipay_answer(
      "alipay_trade_precreate_response",
      "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ."
      "SYSTEM_ERROR\",\"sub_msg\":\"system error\"}",
      0);
  alipay_parse_answer(PT_CHAN_CREATE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN,
               "a system error ended the pay task for good");
  cr_assert_str_eq(out.code, "ACQ.SYSTEM_ERROR");
  bson_destroy(&out.result);
  free(body);
}

/* A query's answer: the trade paid, 12.34 yuan. */
#define QUERY_PAID                                                           \
  "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"" OTN          \
  "\",\"trade_no\":\"2023111522001400001\",\"trade_status\":"              \
  "\"TRADE_SUCCESS\",\"total_amount\":\"12.34\"}"

/* A signed query answer that settles nothing: outcome unknown, no state. */
static void query_answer_is_unknown(const char *response, const char *why) {
  pt_chan_res_t out;
  char *body = alipay_answer("alipay_trade_query_response", response, 0);
  alipay_parse_answer(PT_CHAN_QUERY, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "%s", why);
  cr_assert_eq(out.trade_state, PT_TRADE_UNKNOWN, "%s", why);
  bson_destroy(&out.result);
  free(body);
}

Test(alipay, a_paid_trade_is_succeeded_with_its_amount) {
  pt_chan_res_t out;
  char *body = alipay_answer("alipay_trade_query_response",
                             QUERY_PAID, 0);
  alipay_parse_answer(PT_CHAN_QUERY, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s %s", out.code,
               out.message);
  cr_assert_eq(out.trade_state, PT_TRADE_SUCCEEDED);
  cr_assert_eq(out.amount, 1234);
  cr_assert_str_eq(out.trade_no, "2023111522001400001");
  cr_assert_str_eq(result_str(&out, "trade_status"), "SUCCEEDED");
  cr_assert_str_eq(result_str(&out, "channel_status"), "TRADE_SUCCESS");
  cr_assert_str_eq(result_str(&out, "trade_no"), "2023111522001400001");
  bson_destroy(&out.result);
  free(body);

  query_answer_is_unknown("{\"code\":\"10000\",\"out_trade_no\":\"" OTN
                          "\",\"trade_status\":\"WAIT_BUYER_PAY\","
                          "\"total_amount\":\"12.345\"}",
                          "a bad amount is no answer");
  /* Paid, with no amount to check against the task's: settles nothing. */
  query_answer_is_unknown("{\"code\":\"10000\",\"out_trade_no\":\"" OTN
                          "\",\"trade_no\":\"2023111522001400001\","
                          "\"trade_status\":\"TRADE_SUCCESS\"}",
                          "a payment without its amount was taken");
}

/* A query's answer naming another amount than the task's is not the
 * task's trade: nothing is settled from it. */
Test(alipay, a_trade_with_another_amount_settles_nothing) {
  pt_chan_res_t out;
  pt_task_t t;
  char *body = alipay_answer("alipay_trade_query_response",
                             QUERY_PAID, 0);
  task(&t, "alipay", NULL);
  parse("alipay", PT_CHAN_QUERY, &t, 0, 200, NULL, body, &out);
  cr_assert_eq(pt_chan_res_check_amount(&t, "alipay", &out), 0);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "the task's own amount");
  bson_destroy(&out.result);
  t.amount = 1500;
  parse("alipay", PT_CHAN_QUERY, &t, 0, 200, NULL, body, &out);
  cr_assert_eq(pt_chan_res_check_amount(&t, "alipay", &out), -1);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "another amount was taken");
  cr_assert_str_eq(out.code, "amount_mismatch");
  cr_assert_eq(out.trade_state, PT_TRADE_UNKNOWN);
  cr_assert_null(result_str(&out, "trade_status"));
  bson_destroy(&out.result);
  pt_task_destroy(&t);
  free(body);
}

Test(alipay, a_closed_trade) {
  pt_chan_res_t out;
  char *body = alipay_answer("alipay_trade_close_response",
                             "{\"code\":\"10000\",\"msg\":\"Success\","
                             "\"out_trade_no\":\"" OTN "\"}",
                             0);
  alipay_parse_answer(PT_CHAN_CLOSE, body, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS);
  cr_assert_eq(out.trade_state, PT_TRADE_CLOSED);
  bson_destroy(&out.result);
  free(body);
}

Test(alipay, transport_failures_and_damaged_answers) {
  pt_task_t t;
  pt_chan_res_t out;
  task(&t, "alipay", NULL);
  parse("alipay", PT_CHAN_CREATE, &t, PT_ECONNECT, 0, NULL, "", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_RETRY);
  bson_destroy(&out.result);
  parse("alipay", PT_CHAN_CREATE, &t, PT_ETIMEDOUT, 0, NULL, "", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&out.result);
  parse("alipay", PT_CHAN_CREATE, &t, 0, 502, NULL, "<html>", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&out.result);
  static const char *const junk[] = {
      "",
      "{",
      "[]",
      "null",
      "{\"alipay_trade_precreate_response\":\"x\",\"sign\":\"AA==\"}",
      "{\"alipay_trade_precreate_response\":{},"
      "\"alipay_trade_precreate_response\":{}}",
      "{\"other\":{}}",
      "{\"alipay_trade_precreate_response\":{\"code\":\"10000\"}} trailing",
      "{\"alipay_trade_precreate_response\":{\"code\":10000}}",
      "{\"alipay_trade_precreate_response\":{\"code\":\"10000\"},"
      "\"sign\":7}",
      "{\"alipay_trade_precreate_response\":{\"code\":\"10000\"},"
      "\"sign\":\"not base64!\"}",
  };
  for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
    parse("alipay", PT_CHAN_CREATE, &t, 0, 200, NULL, junk[i], &out);
    cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "accepted: %s", junk[i]);
    cr_assert_eq(bson_count_keys(&out.result), 0);
    bson_destroy(&out.result);
  }
  pt_task_destroy(&t);
}

/* ---- alipay: notifications ---- */

static void url_encode(char *out, size_t size, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = 0;
  for (; *s != '\0' && n + 4 < size; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == ' ') {
      out[n++] = '+';
    } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
               (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_') {
      out[n++] = (char)c;
    } else {
      out[n++] = '%';
      out[n++] = hex[c >> 4];
      out[n++] = hex[c & 15];
    }
  }
  out[n] = '\0';
}

/* A notification form signed as Alipay signs it (sign and sign_type left
 * out of the string to sign), with sign_type=RSA2 added. */
static char *alipay_notification(const pt_crypto_kv_t *kv, size_t n,
                                 const char *signer) {
  char *tosign, *sig, enc[2048];
  size_t len;
  cr_assert_eq(pt_crypto_alipay_string_to_sign(
                   kv, n, PT_CRYPTO_ALIPAY_DROP_SIGN_TYPE, &tosign, &len, NULL),
               0);
  sig = sign_with(signer, tosign, len);
  free(tosign);
  char *form = bson_malloc(8192);
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    url_encode(enc, sizeof enc, kv[i].value);
    at += (size_t)snprintf(form + at, 8192 - at, "%s=%s&", kv[i].key, enc);
  }
  url_encode(enc, sizeof enc, sig);
  at += (size_t)snprintf(form + at, 8192 - at, "sign_type=RSA2&sign=%s", enc);
  cr_assert_lt(at, 8192);
  free(sig);
  return form;
}

static int alipay_notify(const char *body, pt_chan_notify_t *out,
                         pt_error_t *e) {
  pt_chan_notify_in_t in = {.body = body,
                            .body_len = strlen(body),
                            .now_s = NOW};
  return chan("alipay")->notify_parse(&cfg, &in, out, e);
}

#define NOTIFY_FIELDS(app_id)                                                \
  {"notify_time", "2023-11-15 06:20:00"},                                   \
      {"notify_type", "trade_status_sync"},                                  \
      {"notify_id", "ac05099524730693a8b330c5ecf72da9786"},                  \
      {"app_id", app_id}, {"charset", "utf-8"}, {"version", "1.0"},          \
      {"trade_no", "2023111522001400001"}, {"out_trade_no", OTN},            \
      {"trade_status", "TRADE_SUCCESS"}, {"total_amount", "12.34"},          \
      {"subject", "Coffee 咖啡 & tea=yes"}, {"seller_id", SELLER_ID},        \
      {"buyer_logon_id", ""}

Test(alipay, a_signed_notification_is_read) {
  pt_crypto_kv_t kv[] = {NOTIFY_FIELDS(APP_ID)};
  pt_chan_notify_t out;
  pt_error_t e = {0};
  set("channel.alipay.seller_id", SELLER_ID);
  char *body = alipay_notification(kv, sizeof kv / sizeof kv[0],
                                   "alipay_platform_private.pem");
  cr_assert_eq(alipay_notify(body, &out, &e), 0, "%s", e.message);
  cr_assert_str_eq(out.out_trade_no, OTN);
  cr_assert_str_eq(out.trade_no, "2023111522001400001");
  cr_assert_str_eq(out.notify_id, "ac05099524730693a8b330c5ecf72da9786");
  cr_assert_str_eq(out.raw_state, "TRADE_SUCCESS");
  cr_assert_eq(out.trade_state, PT_TRADE_SUCCEEDED);
  cr_assert_eq(out.amount, 1234);
  cr_assert_str_eq(out.app_id, APP_ID);
  bson_free(body);
}

Test(alipay, forged_or_tampered_notifications_are_refused) {
  pt_crypto_kv_t kv[] = {NOTIFY_FIELDS(APP_ID)};
  pt_chan_notify_t out;
  pt_error_t e = {0};
  char *body = alipay_notification(kv, sizeof kv / sizeof kv[0],
                                   "alipay_app_private.pem");
  cr_assert_eq(alipay_notify(body, &out, &e), PT_ECRYPTO);
  cr_assert_str_eq(out.out_trade_no, "");
  bson_free(body);

  body = alipay_notification(kv, sizeof kv / sizeof kv[0],
                             "alipay_platform_private.pem");
  char *amount = strstr(body, "total_amount=12.34");
  amount[13] = '9';
  cr_assert_eq(alipay_notify(body, &out, &e), PT_ECRYPTO);
  bson_free(body);

  /* Unsigned. */
  cr_assert_eq(alipay_notify("out_trade_no=" OTN "&trade_status=TRADE_SUCCESS",
                             &out, &e),
               PT_ECRYPTO);
}

/* A payment must say how much was paid, to be compared with the trade. */
Test(alipay, a_payment_notification_without_its_amount_is_refused) {
  pt_crypto_kv_t all[] = {NOTIFY_FIELDS(APP_ID)}, kv[32];
  size_t n = 0;
  pt_chan_notify_t out;
  pt_error_t e = {0};
  set("channel.alipay.seller_id", SELLER_ID);
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i].key, "total_amount") != 0)
      kv[n++] = all[i];
  char *body = alipay_notification(kv, n, "alipay_platform_private.pem");
  cr_assert_eq(alipay_notify(body, &out, &e), PT_EINVAL,
               "a signed payment without total_amount was taken");
  cr_assert(strstr(e.message, "without total_amount") != NULL, "%s",
            e.message);
  bson_free(body);
}

Test(alipay, another_app_or_seller_is_refused) {
  pt_crypto_kv_t kv[] = {NOTIFY_FIELDS("2021000000000999")};
  pt_chan_notify_t out;
  pt_error_t e = {0};
  char *body = alipay_notification(kv, sizeof kv / sizeof kv[0],
                                   "alipay_platform_private.pem");
  cr_assert_eq(alipay_notify(body, &out, &e), PT_EINVAL);
  cr_assert(strstr(e.message, "app_id does not match") != NULL, "%s",
            e.message);
  bson_free(body);

  pt_crypto_kv_t ok[] = {NOTIFY_FIELDS(APP_ID)};
  set("channel.alipay.seller_id", "2088000000000999");
  body = alipay_notification(ok, sizeof ok / sizeof ok[0],
                             "alipay_platform_private.pem");
  cr_assert_eq(alipay_notify(body, &out, &e), PT_EINVAL);
  cr_assert(strstr(e.message, "seller_id") != NULL, "%s", e.message);
  bson_free(body);
}

Test(alipay, malformed_forms_are_refused) {
  static const char *const bad[] = {
      "",
      "a=1&&b=2",
      "a=1&",
      "=1",
      "a",
      "a=%4",
      "a=%G1",
      "a=%",
      "a=%FF%FE",      /* not UTF-8 */
      "a=%C3",         /* a cut character */
      "a=x%00y",       /* NUL */
      "a=1&a=1",       /* twice */
      "a=1&b=2&%61=3", /* twice, once escaped */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    pt_chan_notify_t out;
    pt_error_t e = {0};
    cr_assert_eq(alipay_notify(bad[i], &out, &e), PT_EINVAL, "accepted: %s",
                 bad[i]);
  }
}

Test(alipay, acks_are_the_words_alipay_reads) {
  pt_chan_ack_t ack;
  chan("alipay")->notify_ack(1, NULL, &ack);
  cr_assert_eq(ack.http_status, 200);
  cr_assert_eq(ack.body_len, 7);
  cr_assert_str_eq(ack.body, "success");
  chan("alipay")->notify_ack(0, "bad signature", &ack);
  cr_assert_eq(ack.http_status, 200);
  cr_assert_str_eq(ack.body, "fail");
}

/* ---- wechat: requests ---- */

TestSuite(wechat, .init = setup, .fini = teardown);

/* Pulls name="value" out of an Authorization header. */
static void auth_field(const char *auth, const char *name, char *out,
                       size_t size) {
  char key[64];
  snprintf(key, sizeof key, "%s=\"", name);
  const char *p = strstr(auth, key);
  cr_assert_not_null(p, "no %s in %s", name, auth);
  p += strlen(key);
  const char *q = strchr(p, '"');
  cr_assert_not_null(q);
  cr_assert_lt((size_t)(q - p), size);
  memcpy(out, p, (size_t)(q - p));
  out[q - p] = '\0';
}

/* Checks the Authorization header against the merchant's public key for
 * the canonical URL path. */
static void assert_wechat_signed(const pt_chan_req_t *req, const char *path) {
  char mchid[64], nonce[64], ts[32], serial[128], sig[1024];
  char *msg;
  size_t len;
  const char *auth = req_header(req, "Authorization");
  cr_assert_not_null(auth);
  cr_assert(strncmp(auth, "WECHATPAY2-SHA256-RSA2048 ", 26) == 0, "%s", auth);
  auth_field(auth, "mchid", mchid, sizeof mchid);
  auth_field(auth, "nonce_str", nonce, sizeof nonce);
  auth_field(auth, "timestamp", ts, sizeof ts);
  auth_field(auth, "serial_no", serial, sizeof serial);
  auth_field(auth, "signature", sig, sizeof sig);
  cr_assert_str_eq(mchid, MCHID);
  cr_assert_str_eq(serial, MERCHANT_SERIAL);
  cr_assert_str_eq(ts, "1700000000");
  cr_assert_eq(strlen(nonce), 32);
  cr_assert_eq(strspn(nonce, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij"
                             "klmnopqrstuvwxyz"),
               32);
  cr_assert_eq(pt_crypto_wechat_request_message(req->method, path, ts, nonce,
                                                req->body, req->body_len,
                                                &msg, &len, NULL),
               0);
  cr_assert(verifies_with("wechat_merchant_public.pem", msg, len, sig),
            "Authorization does not verify over %s", msg);
  free(msg);
  cr_assert_str_eq(req_header(req, "Accept"), "application/json");
  cr_assert_str_eq(req_header(req, "Content-Type"), "application/json");
}

Test(wechat, native_create_is_signed) {
  pt_task_t t;
  pt_chan_req_t req;
  bson_t body;
  bson_error_t be;
  bson_iter_t it, d;
  task(&t, "wechat", NULL);
  build_ok("wechat", PT_CHAN_CREATE, &t, &req);
  cr_assert_str_eq(req.method, "POST");
  cr_assert_str_eq(req.url, "http://127.0.0.1:8092/v3/pay/transactions/native");
  assert_wechat_signed(&req, "/v3/pay/transactions/native");
  cr_assert(bson_init_from_json(&body, req.body, (ssize_t)req.body_len, &be),
            "%s", be.message);
  cr_assert_str_eq(doc_str(&body, "appid"), APPID);
  cr_assert_str_eq(doc_str(&body, "mchid"), MCHID);
  cr_assert_str_eq(doc_str(&body, "description"), "Coffee 咖啡");
  cr_assert_str_eq(doc_str(&body, "out_trade_no"), OTN);
  cr_assert_str_eq(doc_str(&body, "time_expire"), "2023-11-15T06:43:20+08:00");
  cr_assert_str_eq(doc_str(&body, "notify_url"),
                   "http://127.0.0.1:8080/v1/channels/wechat/notify");
  cr_assert_str_eq(doc_str(&body, "amount.currency"), "CNY");
  cr_assert(bson_iter_init(&it, &body) &&
            bson_iter_find_descendant(&it, "amount.total", &d));
  cr_assert_eq(bson_iter_as_int64(&d), 1234);
  cr_assert(strstr(req.body, "$numberLong") == NULL, "%s", req.body);
  bson_destroy(&body);
  pt_chan_req_clear(&req);
  pt_task_destroy(&t);
}

Test(wechat, jsapi_create_names_the_payer) {
  pt_task_t t;
  pt_chan_req_t req;
  bson_t body;
  task(&t, "wechat", "{\"product\":\"jsapi\",\"openid\":\"oUpF8uMuAJO\"}");
  build_ok("wechat", PT_CHAN_CREATE, &t, &req);
  cr_assert_str_eq(req.url, "http://127.0.0.1:8092/v3/pay/transactions/jsapi");
  assert_wechat_signed(&req, "/v3/pay/transactions/jsapi");
  cr_assert(bson_init_from_json(&body, req.body, -1, NULL));
  cr_assert_str_eq(doc_str(&body, "payer.openid"), "oUpF8uMuAJO");
  bson_destroy(&body);
  pt_chan_req_clear(&req);
  pt_task_destroy(&t);
}

/* A base URL with no host is refused by name, not read past its end. */
Test(wechat, a_base_url_without_a_host_is_refused) {
  pt_task_t t;
  pt_chan_req_t req;
  pt_error_t e = {0};
  task(&t, "wechat", NULL);
  static const char *const bad[] = {"https://", "https:///", "http://"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    set("channel.wechat.base_url", bad[i]);
    pt_chan_req_init(&req);
    req.now_s = NOW;
    cr_assert_neq(chan("wechat")->build(PT_CHAN_QUERY, &t, &cfg, &req, &e), 0,
                  "%s was taken", bad[i]);
    cr_assert_not_null(strstr(e.message, "channel.wechat.base_url"), "%s",
                       e.message);
    pt_chan_req_clear(&req);
  }
  pt_task_destroy(&t);
}

Test(wechat, query_and_close_are_signed_on_path_and_query) {
  pt_task_t t;
  pt_chan_req_t req;
  bson_t body;
  set("channel.wechat.base_url", "https://api.example/wx/");
  task(&t, "wechat", NULL);
  build_ok("wechat", PT_CHAN_QUERY, &t, &req);
  cr_assert_str_eq(req.method, "GET");
  cr_assert_null(req.body);
  cr_assert_str_eq(req.url, "https://api.example/wx/v3/pay/transactions/"
                            "out-trade-no/" OTN "?mchid=" MCHID);
  assert_wechat_signed(&req, "/wx/v3/pay/transactions/out-trade-no/" OTN
                             "?mchid=" MCHID);
  pt_chan_req_clear(&req);
  build_ok("wechat", PT_CHAN_CLOSE, &t, &req);
  cr_assert_str_eq(req.method, "POST");
  cr_assert_str_eq(req.url, "https://api.example/wx/v3/pay/transactions/"
                            "out-trade-no/" OTN "/close");
  assert_wechat_signed(&req,
                       "/wx/v3/pay/transactions/out-trade-no/" OTN "/close");
  cr_assert(bson_init_from_json(&body, req.body, -1, NULL));
  cr_assert_str_eq(doc_str(&body, "mchid"), MCHID);
  cr_assert_eq(bson_count_keys(&body), 1);
  bson_destroy(&body);
  pt_chan_req_clear(&req);
  pt_task_destroy(&t);
}

/* ---- wechat: answers ---- */

/* A header block signed over TIMESTAMP\nNONCE\nBODY\n by signer. */
static void wechat_headers(char *out, size_t size, long http_code,
                           int64_t ts, const char *serial, const char *signer,
                           const char *body) {
  char stamp[32], *msg, *sig;
  size_t len;
  snprintf(stamp, sizeof stamp, "%lld", (long long)ts);
  cr_assert_eq(pt_crypto_wechat_response_message(stamp, "5K8264ILTKCH16CQ25",
                                                 body, strlen(body), &msg,
                                                 &len, NULL),
               0);
  sig = sign_with(signer, msg, len);
  snprintf(out, size,
           "HTTP/1.1 %ld X\r\nContent-Type: application/json\r\n"
           "Wechatpay-Nonce: 5K8264ILTKCH16CQ25\r\n"
           "Wechatpay-Signature: %s\r\nWechatpay-Timestamp: %s\r\n"
           "Wechatpay-Serial: %s\r\n\r\n",
           http_code, sig, stamp, serial);
  free(msg);
  free(sig);
}

static void wechat_parse_signed(pt_chan_op_t op, const char *params,
                                long http_code, const char *body,
                                pt_chan_res_t *out) {
  char headers[2048];
  pt_task_t t;
  wechat_headers(headers, sizeof headers, http_code, (int64_t)time(NULL),
                 PLATFORM_SERIAL, "wechat_platform_private.pem", body);
  task(&t, "wechat", params);
  parse("wechat", op, &t, 0, http_code, headers, body, out);
  pt_task_destroy(&t);
}

#define CODE_URL "{\"code_url\":\"weixin://wxpay/bizpayurl?pr=p4lpSuKzz\"}"

Test(wechat, a_signed_prepay_gives_code_url_or_prepay_id) {
  pt_chan_res_t out;
  wechat_parse_signed(PT_CHAN_CREATE, NULL, 200, CODE_URL, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s %s", out.code,
               out.message);
  cr_assert_str_eq(result_str(&out, "code_url"),
                   "weixin://wxpay/bizpayurl?pr=p4lpSuKzz");
  cr_assert_eq(out.trade_state, PT_TRADE_NOTPAY);
  bson_destroy(&out.result);
  wechat_parse_signed(PT_CHAN_CREATE,
                      "{\"product\":\"jsapi\",\"openid\":\"o\"}", 200,
                      "{\"prepay_id\":\"wx2617\"}", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS);
  cr_assert_str_eq(result_str(&out, "prepay_id"), "wx2617");
  bson_destroy(&out.result);
}

Test(wechat, bad_signatures_serials_and_times_are_unknown) {
  struct {
    int64_t skew;
    const char *serial, *signer;
  } cases[] = {
      {0, PLATFORM_SERIAL, "wechat_merchant_private.pem"},
      {0, "PUB_KEY_ID_0002", "wechat_platform_private.pem"},
      {-301, PLATFORM_SERIAL, "wechat_platform_private.pem"},
      {301, PLATFORM_SERIAL, "wechat_platform_private.pem"},
  };
  pt_task_t t;
  task(&t, "wechat", NULL);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char headers[2048];
    pt_chan_res_t out;
    wechat_headers(headers, sizeof headers, 200,
                   (int64_t)time(NULL) + cases[i].skew, cases[i].serial,
                   cases[i].signer, CODE_URL);
    parse("wechat", PT_CHAN_CREATE, &t, 0, 200, headers, CODE_URL, &out);
    cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "case %zu", i);
    cr_assert_str_eq(out.code, "bad_signature");
    cr_assert_eq(bson_count_keys(&out.result), 0);
    bson_destroy(&out.result);
  }
  /* Signed over other bytes. */
  char headers[2048];
  pt_chan_res_t out;
  wechat_headers(headers, sizeof headers, 200, (int64_t)time(NULL),
                 PLATFORM_SERIAL, "wechat_platform_private.pem", CODE_URL);
  parse("wechat", PT_CHAN_CREATE, &t, 0, 200, headers,
        "{\"code_url\":\"weixin://wxpay/bizpayurl?pr=evil\"}", &out);
  cr_assert_str_eq(out.code, "bad_signature");
  bson_destroy(&out.result);
  /* Not signed at all. */
  parse("wechat", PT_CHAN_CREATE, &t, 0, 200, "HTTP/1.1 200 OK\r\n\r\n",
        CODE_URL, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  cr_assert_str_eq(out.code, "bad_signature");
  bson_destroy(&out.result);
  pt_task_destroy(&t);
}

#define TRANSACTION(mchid, state)                                            \
  "{\"appid\":\"" APPID "\",\"mchid\":\"" mchid "\",\"out_trade_no\":\"" OTN \
  "\",\"transaction_id\":\"4200001234202311150000000001\",\"trade_type\":"   \
  "\"NATIVE\",\"trade_state\":\"" state "\",\"trade_state_desc\":\"ok\","    \
  "\"amount\":{\"total\":1234,\"payer_total\":1234,\"currency\":\"CNY\"}}"

Test(wechat, queries_map_trade_states) {
  static const struct {
    const char *body;
    pt_trade_state_t state;
  } cases[] = {
      {TRANSACTION(MCHID, "SUCCESS"), PT_TRADE_SUCCEEDED},
      {TRANSACTION(MCHID, "REFUND"), PT_TRADE_SUCCEEDED},
      {TRANSACTION(MCHID, "NOTPAY"), PT_TRADE_NOTPAY},
      {TRANSACTION(MCHID, "USERPAYING"), PT_TRADE_PAYING},
      {TRANSACTION(MCHID, "CLOSED"), PT_TRADE_CLOSED},
      {TRANSACTION(MCHID, "REVOKED"), PT_TRADE_CLOSED},
      /* Not final: the order stays payable until it is closed. */
      {TRANSACTION(MCHID, "PAYERROR"), PT_TRADE_PAYING},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    pt_chan_res_t out;
    wechat_parse_signed(PT_CHAN_QUERY, NULL, 200, cases[i].body, &out);
    cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "case %zu: %s", i,
                 out.message);
    cr_assert_eq(out.trade_state, cases[i].state, "case %zu", i);
    cr_assert_eq(out.amount, 1234);
    cr_assert_str_eq(out.trade_no, "4200001234202311150000000001");
    cr_assert_str_eq(result_str(&out, "trade_status"),
                     pt_trade_state_name(cases[i].state));
    cr_assert_str_eq(result_str(&out, "trade_no"), out.trade_no);
    bson_destroy(&out.result);
  }
  pt_chan_res_t out;
  wechat_parse_signed(PT_CHAN_QUERY, NULL, 200,
                      TRANSACTION("1900000999", "SUCCESS"), &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "another merchant's trade");
  cr_assert_eq(out.trade_state, PT_TRADE_UNKNOWN);
  bson_destroy(&out.result);
  wechat_parse_signed(PT_CHAN_QUERY, NULL, 200,
                      TRANSACTION(MCHID, "SOMETHING"), &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&out.result);
  /* Paid, with no amount to check against the task's: settles nothing;
   * unpaid, it needs none. */
  static const char *const no_amount[] = {
      "{\"appid\":\"" APPID "\",\"mchid\":\"" MCHID "\",\"out_trade_no\":\"" OTN
      "\",\"transaction_id\":\"4200001234202311150000000001\","
      "\"trade_state\":\"SUCCESS\"}",
      "{\"appid\":\"" APPID "\",\"mchid\":\"" MCHID "\",\"out_trade_no\":\"" OTN
      "\",\"trade_state\":\"NOTPAY\"}"};
  wechat_parse_signed(PT_CHAN_QUERY, NULL, 200, no_amount[0], &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN,
               "a payment without its amount was taken");
  cr_assert_eq(out.trade_state, PT_TRADE_UNKNOWN);
  bson_destroy(&out.result);
  wechat_parse_signed(PT_CHAN_QUERY, NULL, 200, no_amount[1], &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s", out.message);
  cr_assert_eq(out.trade_state, PT_TRADE_NOTPAY);
  bson_destroy(&out.result);
}

Test(wechat, a_missing_order_is_not_found_only_when_signed) {
  const char *body = "{\"code\":\"ORDER_NOT_EXIST\",\"message\":\"no\"}";
  pt_chan_res_t out;
  pt_task_t t;
  wechat_parse_signed(PT_CHAN_QUERY, NULL, 404, body, &out);
  cr_assert(out.not_found);
  cr_assert_eq(out.outcome, PT_OUTCOME_FAIL);
  cr_assert_str_eq(out.code, "ORDER_NOT_EXIST");
  bson_destroy(&out.result);
  task(&t, "wechat", NULL);
  parse("wechat", PT_CHAN_QUERY, &t, 0, 404, "HTTP/1.1 404 X\r\n\r\n", body,
        &out);
  cr_assert_not(out.not_found);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&out.result);
  pt_task_destroy(&t);
}

Test(wechat, close_and_refusals) {
  pt_chan_res_t out;
  pt_task_t t;
  task(&t, "wechat", NULL);
  /* WeChat Pay signs its 204 too; an unsigned or forged one is no close. */
  wechat_parse_signed(PT_CHAN_CLOSE, NULL, 204, "", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s %s", out.code,
               out.message);
  cr_assert_eq(out.trade_state, PT_TRADE_CLOSED);
  bson_destroy(&out.result);
  parse("wechat", PT_CHAN_CLOSE, &t, 0, 204, "HTTP/1.1 204 X\r\n\r\n", NULL,
        &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "an unsigned 204 closed it");
  cr_assert_str_eq(out.code, "bad_signature");
  bson_destroy(&out.result);
  char forged[2048];
  wechat_headers(forged, sizeof forged, 204, (int64_t)time(NULL),
                 PLATFORM_SERIAL, "wechat_merchant_private.pem", "");
  parse("wechat", PT_CHAN_CLOSE, &t, 0, 204, forged, NULL, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "a forged 204 closed it");
  bson_destroy(&out.result);
  /* Only the 204 closes: a signed 202 USERPAYING (the buyer is paying)
   * or an empty 200 is tried again. */
  wechat_parse_signed(PT_CHAN_CLOSE, NULL, 202,
                      "{\"code\":\"USERPAYING\",\"message\":\"paying\"}",
                      &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "a 202 closed the trade");
  cr_assert_neq(out.trade_state, PT_TRADE_CLOSED);
  bson_destroy(&out.result);
  wechat_parse_signed(PT_CHAN_CLOSE, NULL, 200, "", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "an empty 200 closed it");
  bson_destroy(&out.result);
  wechat_parse_signed(PT_CHAN_CLOSE, NULL, 400,
                      "{\"code\":\"ORDER_PAID\",\"message\":\"paid\"}", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_FAIL);
  cr_assert_str_eq(out.code, "ORDER_PAID");
  bson_destroy(&out.result);
  wechat_parse_signed(PT_CHAN_CREATE, NULL, 400,
                      "{\"code\":\"OUT_TRADE_NO_USED\",\"message\":\"used\"}",
                      &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_FAIL);
  cr_assert_str_eq(out.code, "OUT_TRADE_NO_USED");
  cr_assert_str_eq(out.message, "used");
  bson_destroy(&out.result);
  parse("wechat", PT_CHAN_CREATE, &t, 0, 401, "HTTP/1.1 401 X\r\n\r\n",
        "{\"code\":\"SIGN_ERROR\",\"message\":\"bad sign\"}", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_FAIL);
  cr_assert_str_eq(out.code, "SIGN_ERROR");
  bson_destroy(&out.result);
  parse("wechat", PT_CHAN_CREATE, &t, 0, 500, "HTTP/1.1 500 X\r\n\r\n",
        "{\"code\":\"SYSTEM_ERROR\"}", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&out.result);
  parse("wechat", PT_CHAN_CREATE, &t, 0, 429, "HTTP/1.1 429 X\r\n\r\n",
        "{\"code\":\"FREQUENCY_LIMITED\"}", &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_RETRY);
  bson_destroy(&out.result);
  parse("wechat", PT_CHAN_CREATE, &t, PT_ECONNECT, 0, NULL, NULL, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_RETRY);
  bson_destroy(&out.result);
  parse("wechat", PT_CHAN_CREATE, &t, PT_ETIMEDOUT, 0, NULL, NULL, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN);
  bson_destroy(&out.result);
  pt_task_destroy(&t);
  /* Signed junk is still junk. */
  static const char *const junk[] = {"[]", "{", "{\"code_url\":7}",
                                     "{\"a\":1,\"a\":2}", "{} {}"};
  for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
    wechat_parse_signed(PT_CHAN_CREATE, NULL, 200, junk[i], &out);
    cr_assert_eq(out.outcome, PT_OUTCOME_UNKNOWN, "accepted %s", junk[i]);
    bson_destroy(&out.result);
  }
}

Test(wechat, a_platform_certificate_works_as_the_key) {
  /* WeChat Pay hands out a certificate or a public key: make a certificate
   * of the platform key and load it instead. */
  char path[4096], cert_path[] = "/tmp/pt-test-wechat-cert-XXXXXX";
  size_t len;
  pt_error_t e = {0};
  char *pem = read_file(key_file("wechat_platform_private.pem", path,
                                 sizeof path),
                        &len);
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
  cr_assert_not_null(pkey);
  X509 *x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, pkey);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             (const unsigned char *)"Tenpay", -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  cr_assert(X509_sign(x, pkey, EVP_sha256()) > 0);
  int fd = mkstemp(cert_path);
  cr_assert_geq(fd, 0);
  FILE *f = fdopen(fd, "w");
  cr_assert(PEM_write_X509(f, x));
  fclose(f);
  X509_free(x);
  EVP_PKEY_free(pkey);
  BIO_free(bio);
  free(pem);

  set("channel.wechat.platform_public_key_file", cert_path);
  cr_assert_eq(pt_channels_init(&cfg, &e), 0, "%s", e.message);
  unlink(cert_path);
  pt_chan_res_t out;
  wechat_parse_signed(PT_CHAN_CREATE, NULL, 200, CODE_URL, &out);
  cr_assert_eq(out.outcome, PT_OUTCOME_SUCCESS, "%s", out.message);
  bson_destroy(&out.result);
}

/* ---- wechat: notifications ---- */

typedef struct {
  const char *names[4];
  char values[4][1024];
} hdrs_t;

static const char *get_header(void *ctx, const char *name, size_t *len) {
  hdrs_t *h = ctx;
  for (size_t i = 0; i < 4; i++)
    if (h->names[i] != NULL && strcasecmp(h->names[i], name) == 0) {
      *len = strlen(h->values[i]);
      return h->values[i];
    }
  return NULL;
}

/* Encrypts plain as WeChat Pay does (AES-256-GCM, ciphertext then tag,
 * base64); tamper flips a ciphertext bit. free() the result. */
static char *encrypt_resource(const char *plain, const char *nonce,
                              const char *aad, int tamper) {
  size_t len = strlen(plain);
  unsigned char *buf = malloc(len + 16);
  int n = 0, m = 0;
  char *b64;
  size_t b64_len;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  cr_assert(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL,
                               (const unsigned char *)APIV3_KEY,
                               (const unsigned char *)nonce));
  cr_assert(EVP_EncryptUpdate(c, NULL, &n, (const unsigned char *)aad,
                              (int)strlen(aad)));
  cr_assert(EVP_EncryptUpdate(c, buf, &n, (const unsigned char *)plain,
                              (int)len));
  cr_assert(EVP_EncryptFinal_ex(c, buf + n, &m));
  cr_assert(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, buf + len));
  EVP_CIPHER_CTX_free(c);
  if (tamper)
    buf[3] ^= 1;
  cr_assert_eq(pt_crypto_base64_encode(buf, len + 16, &b64, &b64_len, NULL),
               0);
  free(buf);
  return b64;
}

/* A notification envelope around transaction (encrypted), its signed
 * headers in h; bson_free() the result. */
static char *wechat_notification(const char *transaction, int tamper,
                                 int64_t ts, hdrs_t *h) {
  char *ct = encrypt_resource(transaction, "fdasflkja484", "transaction",
                              tamper);
  bson_t env = BSON_INITIALIZER, res;
  BSON_APPEND_UTF8(&env, "id", "EV-2018022511223320873");
  BSON_APPEND_UTF8(&env, "create_time", "2023-11-15T06:20:00+08:00");
  BSON_APPEND_UTF8(&env, "resource_type", "encrypt-resource");
  BSON_APPEND_UTF8(&env, "event_type", "TRANSACTION.SUCCESS");
  BSON_APPEND_UTF8(&env, "summary", "支付成功");
  BSON_APPEND_DOCUMENT_BEGIN(&env, "resource", &res);
  BSON_APPEND_UTF8(&res, "original_type", "transaction");
  BSON_APPEND_UTF8(&res, "algorithm", "AEAD_AES_256_GCM");
  BSON_APPEND_UTF8(&res, "ciphertext", ct);
  BSON_APPEND_UTF8(&res, "associated_data", "transaction");
  BSON_APPEND_UTF8(&res, "nonce", "fdasflkja484");
  bson_append_document_end(&env, &res);
  char *body = bson_as_relaxed_extended_json(&env, NULL);
  bson_destroy(&env);
  free(ct);

  char *msg, *sig;
  size_t len;
  memset(h, 0, sizeof *h);
  h->names[0] = "wechatpay-timestamp"; /* any case */
  h->names[1] = "Wechatpay-Nonce";
  h->names[2] = "Wechatpay-Signature";
  h->names[3] = "Wechatpay-Serial";
  snprintf(h->values[0], sizeof h->values[0], "%lld", (long long)ts);
  snprintf(h->values[1], sizeof h->values[1], "Q4PJ0CTvQdCKoT8w");
  cr_assert_eq(pt_crypto_wechat_response_message(h->values[0], h->values[1],
                                                 body, strlen(body), &msg,
                                                 &len, NULL),
               0);
  sig = sign_with("wechat_platform_private.pem", msg, len);
  snprintf(h->values[2], sizeof h->values[2], "%s", sig);
  snprintf(h->values[3], sizeof h->values[3], PLATFORM_SERIAL);
  free(msg);
  free(sig);
  return body;
}

static int wechat_notify(const char *body, hdrs_t *h, pt_chan_notify_t *out,
                         pt_error_t *e) {
  pt_chan_notify_in_t in = {.body = body,
                            .body_len = strlen(body),
                            .header = get_header,
                            .header_ctx = h,
                            .now_s = NOW};
  return chan("wechat")->notify_parse(&cfg, &in, out, e);
}

Test(wechat, an_encrypted_notification_is_read) {
  hdrs_t h;
  pt_chan_notify_t out;
  pt_error_t e = {0};
  char *body = wechat_notification(TRANSACTION(MCHID, "SUCCESS"), 0, NOW, &h);
  cr_assert_eq(wechat_notify(body, &h, &out, &e), 0, "%s", e.message);
  cr_assert_str_eq(out.out_trade_no, OTN);
  cr_assert_str_eq(out.trade_no, "4200001234202311150000000001");
  cr_assert_str_eq(out.notify_id, "EV-2018022511223320873");
  cr_assert_str_eq(out.raw_state, "SUCCESS");
  cr_assert_eq(out.trade_state, PT_TRADE_SUCCEEDED);
  cr_assert_eq(out.amount, 1234);
  cr_assert_str_eq(out.app_id, APPID);
  bson_free(body);
}

Test(wechat, tampered_stale_or_foreign_notifications_are_refused) {
  hdrs_t h;
  pt_chan_notify_t out;
  pt_error_t e = {0};
  /* The ciphertext was changed (and the envelope signed after). */
  char *body = wechat_notification(TRANSACTION(MCHID, "SUCCESS"), 1, NOW, &h);
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_ECRYPTO);
  cr_assert(strstr(e.message, "decrypt") != NULL, "%s", e.message);
  bson_free(body);
  /* The envelope was changed after it was signed. */
  body = wechat_notification(TRANSACTION(MCHID, "SUCCESS"), 0, NOW, &h);
  strstr(body, "EV-2018")[3] = '3';
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_ECRYPTO);
  bson_free(body);
  /* Too old, or from the future. */
  body = wechat_notification(TRANSACTION(MCHID, "SUCCESS"), 0, NOW - 301, &h);
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_ECRYPTO);
  bson_free(body);
  body = wechat_notification(TRANSACTION(MCHID, "SUCCESS"), 0, NOW + 301, &h);
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_ECRYPTO);
  bson_free(body);
  /* Another key's serial; a missing header. */
  body = wechat_notification(TRANSACTION(MCHID, "SUCCESS"), 0, NOW, &h);
  snprintf(h.values[3], sizeof h.values[3], "PUB_KEY_ID_0002");
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_ECRYPTO);
  h.names[3] = NULL;
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_ECRYPTO);
  bson_free(body);
  /* Authentic, but for another merchant or app. */
  body = wechat_notification(TRANSACTION("1900000999", "SUCCESS"), 0, NOW, &h);
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_EINVAL);
  cr_assert(strstr(e.message, "mchid") != NULL, "%s", e.message);
  cr_assert_str_eq(out.out_trade_no, "");
  bson_free(body);
  set("channel.wechat.appid", "wx0000000000000999");
  body = wechat_notification(TRANSACTION(MCHID, "SUCCESS"), 0, NOW, &h);
  cr_assert_eq(wechat_notify(body, &h, &out, &e), PT_EINVAL);
  bson_free(body);
}

Test(wechat, acks) {
  pt_chan_ack_t ack;
  bson_t doc;
  char why[600];
  chan("wechat")->notify_ack(1, NULL, &ack);
  cr_assert_eq(ack.http_status, 204);
  cr_assert_null(ack.content_type);
  cr_assert_eq(ack.body_len, 0);
  chan("wechat")->notify_ack(0, "signature does not verify", &ack);
  cr_assert_eq(ack.http_status, 400);
  cr_assert_str_eq(ack.content_type, "application/json");
  cr_assert(bson_init_from_json(&doc, ack.body, (ssize_t)ack.body_len, NULL));
  cr_assert_str_eq(doc_str(&doc, "code"), "FAIL");
  cr_assert_str_eq(doc_str(&doc, "message"), "signature does not verify");
  bson_destroy(&doc);
  /* A long reason, with quotes and Chinese, still gives valid JSON. */
  for (size_t i = 0, n = 0; i < 40; i++)
    n += (size_t)snprintf(why + n, sizeof why - n, "签名\"错\"");
  chan("wechat")->notify_ack(0, why, &ack);
  cr_assert_lt(ack.body_len, sizeof ack.body);
  cr_assert(bson_init_from_json(&doc, ack.body, (ssize_t)ack.body_len, NULL),
            "%s", ack.body);
  cr_assert_str_eq(doc_str(&doc, "code"), "FAIL");
  bson_destroy(&doc);
}
