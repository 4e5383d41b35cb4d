/* The `notify` runner: tells the business system a trade's final result
 * by POSTing JSON to the task's notify_url, signed so the receiver can
 * check it came from paytask:
 *
 *   X-Paytask-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>
 *
 * over "<t>.<body>" with the client's secret (notify.secrets). The receiver
 * answers 200 with the body `success`; anything else is retried on
 * notify.schedule and, after the last try, given up loudly: the task is
 * FAILED (and sent to the dead queue for replay), the trade's
 * notify_status is NOTIFY_FAILED, paytask_notify_given_up_total counts it
 * and an error is logged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pt_crypto.h"
#include "core/pt_id.h"
#include "core/pt_log.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "tasks/pt_registry.h"

typedef struct {
  pt_attempt_t *attempt;
} notify_t;

static void on_delivered(const pt_http_response_t *res, void *arg) {
  notify_t *n = arg;
  char msg[200];
  /* Not a receiver's failure that a later try may not meet: the address
   * is the task's own, and only an operator's notify.allow_networks can
   * let it through. Given up at once, loudly, for replay once allowed. */
  if (res->status == PT_EREFUSED) {
    snprintf(msg, sizeof msg, "%s (notify.allow_networks does not list it)",
             res->error);
    pt_attempt_done(n->attempt, PT_OUTCOME_FAIL, NULL, "notify_url_refused",
                    msg);
    return;
  }
  if (res->status != 0) {
    pt_attempt_done(n->attempt, PT_OUTCOME_RETRY, NULL, "notify_unreachable",
                    res->error ? res->error : pt_strerror(res->status));
    return;
  }
  if (res->http_code == 200 && res->body_len == 7 &&
      memcmp(res->body, "success", 7) == 0) {
    bson_t r = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&r, "delivered", "success");
    BSON_APPEND_INT32(&r, "http_status", 200);
    pt_attempt_done(n->attempt, PT_OUTCOME_SUCCESS, &r, NULL, NULL);
    bson_destroy(&r);
    return;
  }
  snprintf(msg, sizeof msg,
           "the receiver answered HTTP %ld without the body \"success\"",
           res->http_code);
  pt_attempt_done(n->attempt, PT_OUTCOME_RETRY, NULL, "notify_rejected", msg);
}

/* The body: the trade's final result, as the business system needs it. */
static char *notify_body(const pt_task_t *t, const redisReply *trade,
                         size_t *len) {
  bson_t doc = BSON_INITIALIZER;
  char ts[32], parent[21];
  const char *v;
  pt_id_format(t->parent_id, parent);
  BSON_APPEND_UTF8(&doc, "notify_id", t->id_str);
  BSON_APPEND_UTF8(&doc, "task_id", parent);
  BSON_APPEND_UTF8(&doc, "channel", t->channel);
  BSON_APPEND_UTF8(&doc, "out_trade_no", t->out_trade_no);
  BSON_APPEND_INT64(&doc, "amount", t->amount);
  BSON_APPEND_UTF8(&doc, "currency", t->currency);
  BSON_APPEND_UTF8(&doc, "trade_status",
                   pt_store_hash_field(trade, "status"));
  if ((v = pt_store_hash_field(trade, "trade_no")) != NULL && v[0])
    BSON_APPEND_UTF8(&doc, "trade_no", v);
  if ((v = pt_store_hash_field(trade, "settled_at")) != NULL) {
    pt_time_rfc3339(strtoll(v, NULL, 10), ts);
    BSON_APPEND_UTF8(&doc, "settled_at", ts);
  }
  char *json = bson_as_relaxed_extended_json(&doc, len);
  bson_destroy(&doc);
  return json;
}

static void on_trade(redisReply *reply, void *arg) {
  notify_t *n = arg;
  const pt_task_t *t = pt_attempt_task(n->attempt);
  const pt_runner_env_t *env = pt_attempt_env(n->attempt);
  if (reply == NULL) {
    pt_attempt_done(n->attempt, PT_OUTCOME_RETRY, NULL, "redis_unavailable",
                    "could not read the trade");
    return;
  }
  const char *st = pt_store_hash_field(reply, "status");
  if (st == NULL) {
    pt_attempt_done(n->attempt, PT_OUTCOME_FAIL, NULL, "trade_missing",
                    "the trade this notification is for is gone");
    return;
  }
  const char *secret;
  size_t slen;
  /* A client without a secret is this worker's configuration missing one
   * (a token given a new client before notify.secrets has it): retried on
   * notify.schedule like a refused delivery, so that the fix has hours to
   * arrive, then given up loudly (dead queue, NOTIFY_FAILED). It used to
   * fail at once, with no copy to replay. */
  if (pt_config_notify_secret(env->cfg, t->client[0] ? t->client : "default",
                              &secret, &slen) != 0) {
    pt_attempt_done(n->attempt, PT_OUTCOME_RETRY, NULL, "no_notify_secret",
                    "notify.secrets has no secret for this task's client");
    return;
  }
  size_t len;
  char *body = notify_body(t, reply, &len);
  char ts[24], sig[PT_CRYPTO_HMAC_SHA256_HEX_LEN + 1], h_sig[160], h_id[64];
  snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
  size_t tl = strlen(ts);
  char *signed_text = malloc(tl + 1 + len + 1);
  if (body == NULL || signed_text == NULL) {
    bson_free(body);
    free(signed_text);
    pt_attempt_done(n->attempt, PT_OUTCOME_RETRY, NULL, "out_of_memory", NULL);
    return;
  }
  memcpy(signed_text, ts, tl);
  signed_text[tl] = '.';
  memcpy(signed_text + tl + 1, body, len + 1);
  int rc = pt_crypto_hmac_sha256_hex(secret, slen, signed_text, tl + 1 + len,
                                     sig, NULL);
  free(signed_text);
  snprintf(h_sig, sizeof h_sig, "X-Paytask-Signature: t=%s,v1=%s", ts, sig);
  snprintf(h_id, sizeof h_id, "X-Paytask-Notify-Id: %s", t->id_str);
  const char *headers[] = {"Content-Type: application/json", h_sig, h_id,
                           NULL};
  pt_http_request_t hr = {.method = "POST",
                          .url = t->notify_url,
                          .headers = headers,
                          .body = body,
                          .body_len = len,
                          .timeout_ms = env->cfg->notify_timeout_ms,
                          .public_only = &env->cfg->notify_allow};
  if (rc != 0 || env->http == NULL ||
      pt_http_request(env->http, &hr, on_delivered, n) != 0)
    pt_attempt_done(n->attempt, PT_OUTCOME_RETRY, NULL, "start_failed",
                    "could not send the notification");
  bson_free(body);
}

static int notify_do_task(pt_attempt_t *a) {
  notify_t *n = pt_attempt_priv(a);
  const pt_task_t *t = pt_attempt_task(a);
  const pt_runner_env_t *env = pt_attempt_env(a);
  char parent[21];
  n->attempt = a;
  if (t->notify_url == NULL || t->parent_id == 0)
    return PT_EINVAL;
  pt_id_format(t->parent_id, parent);
  redisAsyncContext *ac = env->redis ? pt_redis_ctx(env->redis) : NULL;
  if (ac == NULL)
    return PT_EREDIS;
  return pt_store_get_trade(ac, parent, on_trade, n);
}

/* Retry k waits notify.schedule[k-1] seconds; after the last, give up. */
static int notify_retry_delay(const pt_task_t *t, const pt_config_t *cfg,
                              int attempt, pt_outcome_t o) {
  (void)t;
  return pt_schedule_retry_delay(cfg->notify_schedule, attempt, o);
}

const pt_runner_ops_t pt_notify_runner = {
    .type = "notify",
    .priv_size = sizeof(notify_t),
    .do_task = notify_do_task,
    .retry_delay = notify_retry_delay,
    .internal = 1,
};
