#include "tasks/pt_chan_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pt_log.h"

#define PEM_MAX (64 * 1024)

/* ---- text ---- */

int pt_chan_url_encode(pt_buf_t *out, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    char enc[3] = {'%', hex[c >> 4], hex[c & 15]};
    int plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
                c == '~';
    if (pt_buf_append(out, plain ? s : enc, plain ? 1 : 3) != 0)
      return PT_ENOMEM;
  }
  return 0;
}

int pt_chan_beijing_time(int64_t unix_s, pt_chan_time_fmt_t fmt, char *buf,
                         size_t len) {
  time_t s = (time_t)(unix_s + 8 * 3600);
  struct tm tm;
  if (gmtime_r(&s, &tm) == NULL)
    return PT_EINVAL;
  size_t n = fmt == PT_CHAN_TIME_RFC3339
                 ? strftime(buf, len, "%Y-%m-%dT%H:%M:%S+08:00", &tm)
                 : strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
  return n != 0 ? 0 : PT_EINVAL;
}

/* ---- documents ---- */

const char *pt_chan_doc_str(const bson_t *doc, const char *key) {
  bson_iter_t it, d;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, key, &d) &&
      BSON_ITER_HOLDS_UTF8(&d))
    return bson_iter_utf8(&d, NULL);
  return NULL;
}

const char *pt_chan_param_str(const pt_task_t *t, const char *key) {
  bson_iter_t it;
  if (t->has_params && bson_iter_init_find(&it, &t->params, key) &&
      BSON_ITER_HOLDS_UTF8(&it))
    return bson_iter_utf8(&it, NULL);
  return NULL;
}

/* 1 when doc repeats a key (or, with nested, when a document within it
 * does). */
static int has_dup_keys(const bson_t *doc, int nested) {
  bson_iter_t a, b;
  if (!bson_iter_init(&a, doc))
    return 1;
  while (bson_iter_next(&a)) {
    if (nested && BSON_ITER_HOLDS_DOCUMENT(&a)) {
      bson_t sub;
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&a, &len, &data);
      if (!bson_init_static(&sub, data, len) || has_dup_keys(&sub, 1))
        return 1;
    }
    b = a;
    while (bson_iter_next(&b))
      if (strcmp(bson_iter_key(&a), bson_iter_key(&b)) == 0)
        return 1;
  }
  return 0;
}

int pt_chan_parse_object(const char *s, size_t len, int nested, bson_t *doc) {
  pt_input_error_t ie;
  size_t off;
  if (s == NULL) {
    bson_init(doc);
    return PT_EINVAL;
  }
  if (pt_json_parse_object(s, len, doc, &ie) != 0)
    return PT_EINVAL;
  if (has_dup_keys(doc, nested) ||
      !bson_validate(doc, BSON_VALIDATE_UTF8, &off)) {
    bson_reinit(doc);
    return PT_EINVAL;
  }
  return 0;
}

/* ---- keys ---- */

/* Reads the whole file at path into *pem (NUL-terminated, free()). */
static int read_pem(const char *name, const char *path, char **pem,
                    size_t *len, pt_error_t *err) {
  *pem = NULL;
  *len = 0;
  if (path[0] == '\0')
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s is not set",
                        name);
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: cannot open %s: %s", name, path, strerror(errno));
  char *buf = malloc(PEM_MAX + 1);
  size_t n = buf != NULL ? fread(buf, 1, PEM_MAX + 1, f) : 0;
  int bad = ferror(f);
  fclose(f);
  if (buf == NULL)
    return pt_error_set(err, PT_DOMAIN_SYSTEM, PT_ENOMEM, "out of memory");
  if (bad || n == 0 || n > PEM_MAX) {
    free(buf);
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: %s is %s", name, path,
                        bad ? "unreadable" : n == 0 ? "empty" : "too large");
  }
  buf[n] = '\0';
  *pem = buf;
  *len = n;
  return 0;
}

int pt_chan_load_key(const char *name, const char *path,
                     pt_chan_key_kind_t kind, pt_crypto_key_t **key,
                     pt_error_t *err) {
  char *pem;
  size_t len;
  pt_error_t e = {0};
  *key = NULL;
  int rc = read_pem(name, path, &pem, &len, err);
  if (rc != 0)
    return rc;
  if (kind == PT_CHAN_KEY_PRIVATE) {
    rc = pt_crypto_key_new_private(pem, len, key, &e);
  } else {
    rc = pt_crypto_key_new_public(pem, len, key, &e);
    if (rc != 0 && kind == PT_CHAN_KEY_PUBLIC_OR_CERT) {
      rc = pt_crypto_key_new_from_cert(pem, len, key, &e);
      if (rc != 0)
        snprintf(e.message, sizeof e.message,
                 "neither a PEM public key nor a certificate");
    }
  }
  free(pem);
  if (rc != 0)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s: %s: %s", name,
                        path, e.message);
  return 0;
}

/* SHA-256 of the public halves (DER) of conf/dev-keys/alipay_platform_public.pem
 * and conf/dev-keys/wechat_platform_public.pem, whose private halves ship
 * beside them for the simulator (test_channels checks these against the
 * files). */
static const char *const dev_platform_keys[] = {
    "86f0bac312bd4702b97081bc7e0a706fa7b18a83a58684b9521faffb4adfcce7",
    "fbc01f536a5dcbaf2ac125d6e249e1145e2d77b7411677a28e674546ce00e1c7",
};
#define DEV_APIV3_KEY "dev-apiv3-key-0123456789abcdefgh"

static int is_dev_key(const char *name, const char *path,
                      pt_chan_key_kind_t kind) {
  pt_crypto_key_t *key;
  pt_error_t err;
  char hex[PT_CRYPTO_SHA256_HEX_LEN + 1];
  if (path[0] == '\0' || pt_chan_load_key(name, path, kind, &key, &err) != 0)
    return 0;
  int rc = pt_crypto_key_sha256_hex(key, hex);
  pt_crypto_key_destroy(key);
  if (rc != 0)
    return 0;
  for (size_t i = 0; i < sizeof dev_platform_keys / sizeof *dev_platform_keys;
       i++)
    if (strcmp(hex, dev_platform_keys[i]) == 0)
      return 1;
  return 0;
}

int pt_chan_dev_credentials(const pt_config_t *cfg, char *what, size_t len) {
  const char *name = NULL;
  if (cfg->alipay_app_id[0] != '\0' &&
      is_dev_key("channel.alipay.public_key_file", cfg->alipay_public_key_file,
                 PT_CHAN_KEY_PUBLIC))
    name = "channel.alipay.public_key_file";
  else if (cfg->wechat_mchid[0] != '\0' &&
           is_dev_key("channel.wechat.platform_public_key_file",
                      cfg->wechat_platform_public_key_file,
                      PT_CHAN_KEY_PUBLIC_OR_CERT))
    name = "channel.wechat.platform_public_key_file";
  else if (cfg->wechat_mchid[0] != '\0' &&
           strcmp(cfg->wechat_apiv3_key, DEV_APIV3_KEY) == 0)
    name = "channel.wechat.apiv3_key";
  if (name == NULL)
    return 0;
  snprintf(what, len, "%s", name);
  return 1;
}

/* ---- requests ---- */

void pt_chan_req_reset(pt_chan_req_t *req) {
  int64_t now_s = req->now_s > 0 ? req->now_s : (int64_t)time(NULL);
  pt_chan_req_init(req);
  req->now_s = now_s;
}

int64_t pt_chan_trade_expiry(const pt_task_t *t, const pt_config_t *cfg,
                             int64_t now_s) {
  int64_t start = t->created_at_ms > 0 ? t->created_at_ms / 1000 : now_s;
  int64_t window = t->expire_in > 0 ? t->expire_in : cfg->trade_expire_in;
  return start + window;
}

/* ---- answers ---- */

void pt_chan_res_reset_trade(pt_chan_res_t *out) {
  out->not_found = 0;
  out->trade_state = PT_TRADE_UNKNOWN;
  out->trade_no[0] = '\0';
  out->amount = -1;
}

int pt_chan_res_unanswered(pt_chan_res_t *out, const pt_http_response_t *res,
                           const char *who) {
  char msg[sizeof out->message];
  if (res->status == PT_ECONNECT) {
    pt_chan_res_set(out, PT_OUTCOME_RETRY, "channel_unreachable", res->error);
  } else if (res->status == PT_ETIMEDOUT) {
    snprintf(msg, sizeof msg, "%s did not answer in time", who);
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "channel_timeout", msg);
  } else if (res->status != 0) {
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "channel_error", res->error);
  } else if (res->http_code >= 500) {
    snprintf(msg, sizeof msg, "%s answered a server error", who);
    pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "SYSTEM_ERROR", msg);
  } else {
    return 0;
  }
  return 1;
}

void pt_chan_res_bad_reply(pt_chan_res_t *out, const char *why) {
  bson_reinit(&out->result);
  pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "bad_channel_reply", why);
}

int pt_chan_res_check_amount(const pt_task_t *t, const char *channel,
                             pt_chan_res_t *out) {
  if (out->outcome != PT_OUTCOME_SUCCESS || out->amount < 0 ||
      out->amount == t->amount)
    return 0;
  PT_ERROR("channel_amount_mismatch",
           "task_id=%s channel=%s out_trade_no=%s reported=%lld "
           "expected=%lld note=\"the channel's trade is not the one asked "
           "for; nothing settled from it\"",
           t->id_str, channel, t->out_trade_no, (long long)out->amount,
           (long long)t->amount);
  char why[160];
  snprintf(why, sizeof why,
           "the channel reports %lld minor units for this out_trade_no, the "
           "task has %lld",
           (long long)out->amount, (long long)t->amount);
  bson_reinit(&out->result);
  out->trade_state = PT_TRADE_UNKNOWN;
  out->not_found = 0;
  pt_chan_res_set(out, PT_OUTCOME_UNKNOWN, "amount_mismatch", why);
  return -1;
}
