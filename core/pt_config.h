/* Configuration: one file (conf/paytask.conf, `key = value` lines, `#`
 * comments), every key documented in the table in pt_config.c and in the
 * file, each overridable by an environment variable named PAYTASK_ plus the
 * key upper-cased with dots as underscores (amqp.uri → PAYTASK_AMQP_URI).
 * An unknown key or a bad value is an error that names the key. */
#ifndef PT_CONFIG_H
#define PT_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "core/pt_error.h"
#include "core/pt_net.h"

#define PT_CFG_STR_MAX 512

typedef struct {
  /* node */
  int64_t node_id; /* -1: lease one in Redis */
  /* api */
  char api_listen[PT_CFG_STR_MAX];
  char api_tokens[PT_CFG_STR_MAX];
  int64_t api_max_body;
  int64_t api_max_amount;
  int64_t api_max_wait;
  int64_t api_idempotency_ttl;
  /* servers */
  char amqp_uri[PT_CFG_STR_MAX];
  char amqp_queue_type[16];
  int64_t amqp_prefetch;
  int64_t amqp_confirm_timeout_ms;
  char redis_uri[PT_CFG_STR_MAX];
  char mongodb_uri[PT_CFG_STR_MAX];
  /* worker */
  int64_t worker_max_redeliveries;
  int64_t worker_attempt_timeout_ms;
  int64_t worker_drain_timeout_ms;
  int64_t worker_concurrency;
  char worker_metrics_listen[PT_CFG_STR_MAX];
  /* sync */
  int64_t sync_batch;
  int64_t sync_linger_ms;
  int64_t sync_evict_grace_s;
  int64_t sync_claim_idle_ms;
  char api_public_url[PT_CFG_STR_MAX];
  /* channels */
  char channel_sim_url[PT_CFG_STR_MAX];
  char alipay_gateway[PT_CFG_STR_MAX];
  char alipay_app_id[64];
  char alipay_private_key_file[PT_CFG_STR_MAX];
  char alipay_public_key_file[PT_CFG_STR_MAX];
  char alipay_seller_id[64];
  char wechat_base_url[PT_CFG_STR_MAX];
  char wechat_mchid[64];
  char wechat_appid[64];
  char wechat_serial_no[128];
  char wechat_private_key_file[PT_CFG_STR_MAX];
  char wechat_platform_serial[128];
  char wechat_platform_public_key_file[PT_CFG_STR_MAX];
  char wechat_apiv3_key[64];
  /* the life of a trade */
  int64_t trade_expire_in;
  char query_schedule[PT_CFG_STR_MAX];
  char close_schedule[PT_CFG_STR_MAX];
  char notify_schedule[PT_CFG_STR_MAX];
  char notify_secrets[PT_CFG_STR_MAX];
  int64_t notify_timeout_ms;
  char notify_allow_networks[PT_CFG_STR_MAX];
  pt_net_list_t notify_allow; /* notify.allow_networks, parsed */
  char events_exchange[128];
  /* simulator */
  char sim_listen[PT_CFG_STR_MAX];
  char sim_dialect[16];
  char sim_alipay_app_public_key_file[PT_CFG_STR_MAX];
  char sim_alipay_private_key_file[PT_CFG_STR_MAX];
  char sim_wechat_merchant_public_key_file[PT_CFG_STR_MAX];
  char sim_wechat_private_key_file[PT_CFG_STR_MAX];
  /* logs */
  char log_level[16];
  char log_format[16];
} pt_config_t;

/* Sets every key to its default. */
void pt_config_defaults(pt_config_t *cfg);

/* Loads defaults, then the file at path (NULL: $PAYTASK_CONFIG, else
 * conf/paytask.conf if it exists, else no file), then the environment. */
int pt_config_load(pt_config_t *cfg, const char *path, pt_error_t *err);

/* Sets one key from text, checking it; used by the loader and by tests. */
int pt_config_set(pt_config_t *cfg, const char *key, const char *value,
                  pt_error_t *err);

/* Prints the effective configuration, secrets masked. */
void pt_config_print(const pt_config_t *cfg, FILE *out);

/* Splits "host:port"; returns 0 or PT_EINVAL. */
int pt_config_hostport(const char *s, char *host, size_t hostlen, int *port);

/* Token scopes. api.tokens is a comma-separated list of TOKEN or
 * TOKEN:SCOPE+SCOPE… entries; a token without scopes has them all. */
#define PT_SCOPE_SUBMIT 1
#define PT_SCOPE_READ 2
#define PT_SCOPE_ADMIN 4
#define PT_SCOPE_ALL 7
/* The longest client name (api.tokens' CLIENT, notify.secrets' CLIENT). */
#define PT_CLIENT_MAX 31

/* The scopes of the bearer token (0 if it is not configured); compared in
 * constant time per token. */
int pt_config_token_scopes(const pt_config_t *cfg, const char *token,
                           size_t len);
/* Both at once, in one pass: returns the scopes (as
 * pt_config_token_scopes) and, when client is not NULL, fills it with the
 * client the token belongs to (TOKEN:SCOPES:CLIENT), else "default". */
int pt_config_token_lookup(const pt_config_t *cfg, const char *token,
                           size_t len, char *client, size_t clen);
/* The first configured token that has every scope of `scopes`, for the
 * command-line tools: 0, or PT_ENOTFOUND (out is then empty). */
int pt_config_token_for(const pt_config_t *cfg, int scopes, char *out,
                        size_t len);
/* 1 if the token is configured at all. */
int pt_config_token_ok(const pt_config_t *cfg, const char *token, size_t len);

/* Schedules ("5,10,30"): parses up to max delays in seconds into out (MAY
 * be NULL) and returns how many the text holds, or -1 if it is malformed. */
#define PT_SCHEDULE_MAX 32
int pt_config_schedule(const char *s, int64_t *out, int max);

/* The notification secret of a client (notify.secrets); 0 or PT_ENOTFOUND.
 * *secret points into cfg and is not NUL-terminated at *len. */
int pt_config_notify_secret(const pt_config_t *cfg, const char *client,
                            const char **secret, size_t *len);

#endif
