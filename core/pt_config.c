#include "core/pt_config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_log.h"

typedef enum { CFG_STR, CFG_INT } cfg_type_t;

typedef struct {
  const char *key;
  cfg_type_t type;
  size_t offset;
  size_t size; /* for strings */
  const char *def;
  int64_t min, max; /* for integers */
  int secret;
  const char *doc;
} cfg_key_t;

#define S(field) CFG_STR, offsetof(pt_config_t, field), sizeof(((pt_config_t *)0)->field)
#define I(field) CFG_INT, offsetof(pt_config_t, field), 0

/* Every key, its default and what it means. conf/paytask.conf repeats these
 * docs in place; `paytask config check` prints the effective values. */
static const cfg_key_t keys[] = {
    {"node.id", I(node_id), "-1", -1, 1023, 0,
     "snowflake node id (0-1023); -1 leases a free one in Redis"},
    {"api.listen", S(api_listen), "127.0.0.1:8080", 0, 0, 0,
     "address:port the api listens on"},
    {"api.tokens", S(api_tokens), "dev-token-change-me", 0, 0, 1,
     "comma-separated bearer tokens, each TOKEN, TOKEN:SCOPE+SCOPE "
     "(submit, read, admin; none given: all) or TOKEN:SCOPES:CLIENT (the "
     "client whose notify secret signs its notifications; else default); "
     "the shipped development token is accepted only on a loopback "
     "address"},
    {"api.max_body", I(api_max_body), "65536", 1024, 16777216, 0,
     "largest request body in bytes (413 above)"},
    {"api.max_amount", I(api_max_amount), "100000000", 1, INT64_MAX / 2, 0,
     "largest amount of one task, in minor units"},
    {"api.max_wait", I(api_max_wait), "30", 0, 300, 0,
     "longest ?wait= a GET may hold, in seconds"},
    {"api.idempotency_ttl", I(api_idempotency_ttl), "86400", 60, 2592000, 0,
     "how long an Idempotency-Key is remembered, in seconds"},
    {"amqp.uri", S(amqp_uri), "amqp://guest:guest@127.0.0.1:5682/", 0, 0, 1,
     "RabbitMQ URI"},
    {"amqp.queue_type", S(amqp_queue_type), "classic", 0, 0, 0,
     "classic or quorum (quorum for a cluster)"},
    {"amqp.prefetch", I(amqp_prefetch), "500", 1, 65535, 0,
     "unacknowledged tasks one worker holds at once"},
    {"amqp.confirm_timeout_ms", I(amqp_confirm_timeout_ms), "30000", 1000,
     600000, 0,
     "a publish the broker has not confirmed after this long drops the "
     "connection (its publishes fail and are withdrawn or retried)"},
    {"redis.uri", S(redis_uri), "redis://127.0.0.1:6382/0", 0, 0, 1,
     "Redis URI"},
    {"mongodb.uri", S(mongodb_uri), "mongodb://127.0.0.1:27027/paytask", 0, 0,
     1, "MongoDB URI; the path names the database"},
    {"worker.max_redeliveries", I(worker_max_redeliveries), "5", 1, 100, 0,
     "times a task may be redelivered after crashes before it goes to the "
     "dead queue"},
    {"worker.attempt_timeout_ms", I(worker_attempt_timeout_ms), "10000", 100,
     600000, 0, "longest one channel call may take"},
    {"worker.concurrency", I(worker_concurrency), "1000", 0, 65535, 0,
     "tasks one worker works on at once (scripts, channel calls); "
     "deliveries beyond it, up to amqp.prefetch, wait as received, a few "
     "hundred bytes each (0: no limit but the prefetch)"},
    {"worker.drain_timeout_ms", I(worker_drain_timeout_ms), "30000", 0,
     3600000, 0,
     "on SIGTERM, how long in-flight attempts may run before they are "
     "returned to the broker as interrupted"},
    {"worker.metrics_listen", S(worker_metrics_listen), "", 0, 0, 0,
     "address:port where a worker serves GET /metrics (empty: off); "
     "worker i of a pool uses port + i"},
    {"sync.batch", I(sync_batch), "500", 1, 10000, 0,
     "final states written to MongoDB per bulk write"},
    {"sync.linger_ms", I(sync_linger_ms), "100", 0, 1000, 0,
     "after a batch smaller than sync.batch, wait this long before reading "
     "the next (bigger bulk writes, later documents)"},
    {"sync.evict_grace_s", I(sync_evict_grace_s), "60", 0, 86400, 0,
     "seconds a synced task stays in Redis before it is evicted"},
    {"sync.claim_idle_ms", I(sync_claim_idle_ms), "30000", 1000, 3600000, 0,
     "stream entries idle this long are claimed from a dead sync consumer"},
    {"api.public_url", S(api_public_url), "http://127.0.0.1:8080", 0, 0, 0,
     "the api's base URL as the channels reach it; the notify_url given to "
     "a channel is this plus /v1/channels/{channel}/notify"},
    {"channel.sim.url", S(channel_sim_url), "http://127.0.0.1:8090", 0, 0, 0,
     "base URL of the channel simulator"},
    {"channel.alipay.gateway", S(alipay_gateway),
     "http://127.0.0.1:8091/gateway.do", 0, 0, 0,
     "Alipay's gateway URL (production: https://openapi.alipay.com/gateway.do;"
     " the default is the simulator in its alipay dialect)"},
    {"channel.alipay.app_id", S(alipay_app_id), "", 0, 0, 0,
     "Alipay app id (empty: the alipay channel is not configured)"},
    {"channel.alipay.private_key_file", S(alipay_private_key_file), "", 0, 0,
     0, "PEM file of the app's RSA private key (requests are signed with it)"},
    {"channel.alipay.public_key_file", S(alipay_public_key_file), "", 0, 0, 0,
     "PEM file of Alipay's RSA public key (answers and notifications are "
     "verified with it)"},
    {"channel.alipay.seller_id", S(alipay_seller_id), "", 0, 0, 0,
     "when set, a notification's seller_id must equal it"},
    {"channel.wechat.base_url", S(wechat_base_url), "http://127.0.0.1:8092", 0,
     0, 0,
     "WeChat Pay API base URL (production: https://api.mch.weixin.qq.com; "
     "the default is the simulator in its wechat dialect)"},
    {"channel.wechat.mchid", S(wechat_mchid), "", 0, 0, 0,
     "WeChat Pay merchant id (empty: the wechat channel is not configured)"},
    {"channel.wechat.appid", S(wechat_appid), "", 0, 0, 0,
     "WeChat app id the trades are made for"},
    {"channel.wechat.serial_no", S(wechat_serial_no), "", 0, 0, 0,
     "serial number of the merchant certificate (in the Authorization "
     "header)"},
    {"channel.wechat.private_key_file", S(wechat_private_key_file), "", 0, 0,
     0, "PEM file of the merchant's RSA private key"},
    {"channel.wechat.platform_serial", S(wechat_platform_serial), "", 0, 0, 0,
     "Wechatpay-Serial of the platform key (certificate serial or "
     "PUB_KEY_ID_...)"},
    {"channel.wechat.platform_public_key_file",
     S(wechat_platform_public_key_file), "", 0, 0, 0,
     "PEM file of the platform public key (or certificate) that signs "
     "answers and notifications"},
    {"channel.wechat.apiv3_key", S(wechat_apiv3_key), "", 0, 0, 1,
     "the 32-byte APIv3 key that decrypts notifications"},
    {"trade.expire_in", I(trade_expire_in), "1800", 60, 604800, 0,
     "payment window in seconds when a task gives no expire_in; the trade "
     "is closed at the channel when it ends unpaid"},
    {"query.schedule", S(query_schedule), "5,10,30,60,600,1200", 0, 0, 0,
     "seconds between the queries of a created trade, until it is final"},
    {"close.schedule", S(close_schedule), "5,10,30,60,300,600,1800,3600", 0,
     0, 0,
     "seconds before each retry of a trade's close at the channel; after the "
     "last one the close task fails to the dead queue"},
    {"notify.schedule", S(notify_schedule),
     "15,15,30,180,600,1200,1800,3600,7200,21600", 0, 0, 0,
     "seconds before each retry of a merchant notification; after the last "
     "one it is given up (status NOTIFY_FAILED, metric, error log)"},
    {"notify.secrets", S(notify_secrets), "default=dev-notify-secret", 0, 0,
     1,
     "comma-separated CLIENT=SECRET pairs: the HMAC-SHA256 key for the "
     "notifications of each client (a token's client, see api.tokens)"},
    {"notify.timeout_ms", I(notify_timeout_ms), "5000", 100, 60000, 0,
     "longest one merchant notification may take"},
    {"notify.allow_networks", S(notify_allow_networks), "", 0, 0, 0,
     "comma-separated networks (10.1.0.0/16, fd00::/8, 127.0.0.1) a "
     "notify_url may reach besides the public internet; any other "
     "loopback, private, link-local or reserved address is refused"},
    {"events.exchange", S(events_exchange), "paytask.results", 0, 0, 0,
     "durable fanout exchange the final results are published to"},
    {"sim.listen", S(sim_listen), "127.0.0.1:8090", 0, 0, 0,
     "address:port the channel simulator listens on"},
    {"sim.dialect", S(sim_dialect), "plain", 0, 0, 0,
     "what the simulator speaks: plain (the sim channel), alipay or wechat"},
    {"sim.alipay.app_public_key_file", S(sim_alipay_app_public_key_file), "",
     0, 0, 0, "simulator (alipay): the app's public key, to verify requests"},
    {"sim.alipay.private_key_file", S(sim_alipay_private_key_file), "", 0, 0,
     0, "simulator (alipay): Alipay's private key, to sign answers"},
    {"sim.wechat.merchant_public_key_file",
     S(sim_wechat_merchant_public_key_file), "", 0, 0, 0,
     "simulator (wechat): the merchant's public key, to verify requests"},
    {"sim.wechat.private_key_file", S(sim_wechat_private_key_file), "", 0, 0,
     0, "simulator (wechat): the platform private key, to sign answers"},
    {"log.level", S(log_level), "info", 0, 0, 0, "debug, info, warn or error"},
    {"log.format", S(log_format), "logfmt", 0, 0, 0, "logfmt or json"},
};

#undef S
#undef I

static const cfg_key_t *find_key(const char *key) {
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (strcmp(keys[i].key, key) == 0)
      return &keys[i];
  return NULL;
}

/* Walks a comma-separated list: sets *e and *n to the next entry (leading
 * spaces skipped) and returns 1, or returns 0 at the end. *p starts at the
 * list and is moved past the entry. */
static int next_entry(const char **p, const char **e, size_t *n) {
  const char *s = *p;
  if (s == NULL || *s == '\0')
    return 0;
  const char *comma = strchr(s, ',');
  size_t len = comma ? (size_t)(comma - s) : strlen(s);
  *p = comma ? comma + 1 : s + len;
  while (len > 0 && *s == ' ') {
    s++;
    len--;
  }
  *e = s;
  *n = len;
  return 1;
}

/* One scope's bit, or 0 for a name that is not a scope. */
static int scope_bit(const char *p, size_t k) {
  if (k == 6 && memcmp(p, "submit", 6) == 0)
    return PT_SCOPE_SUBMIT;
  if (k == 4 && memcmp(p, "read", 4) == 0)
    return PT_SCOPE_READ;
  if (k == 5 && memcmp(p, "admin", 5) == 0)
    return PT_SCOPE_ADMIN;
  return 0;
}

/* A client name (api.tokens' CLIENT, notify.secrets' CLIENT): what a task
 * records and its notifications' secret is found by. */
static int client_ok(const char *c, size_t n) {
  if (n == 0 || n > PT_CLIENT_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)c[i]) && c[i] != '_' && c[i] != '-' &&
        c[i] != '.')
      return 0;
  return 1;
}

#define CLIENT_RULE "1 to 31 letters, digits, '_', '-' or '.'"

/* api.tokens: TOKEN[:SCOPES[:CLIENT]] entries. A mistake here used to
 * pass silently: a misspelt scope dropped, a long client name turned into
 * "default" (whose secret then signed that client's notifications), a
 * space kept in a token. Entries are named by number: they are secrets. */
static int check_tokens(const char *key, const char *value, pt_error_t *err) {
  const char *p = value, *e;
  size_t n;
  for (int i = 1; next_entry(&p, &e, &n); i++) {
    if (n == 0 || memchr(e, ' ', n) != NULL || memchr(e, '\t', n) != NULL)
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                          "%s: entry %d is empty or holds a space (entries are "
                          "TOKEN[:SCOPES[:CLIENT]], separated by commas)",
                          key, i);
    const char *colon = memchr(e, ':', n);
    if (colon == e)
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                          "%s: entry %d has no token", key, i);
    if (colon == NULL)
      continue;
    const char *rest = colon + 1, *end = e + n;
    const char *c2 = memchr(rest, ':', (size_t)(end - rest));
    const char *scopes_end = c2 ? c2 : end;
    while (rest < scopes_end) {
      const char *plus = memchr(rest, '+', (size_t)(scopes_end - rest));
      size_t k = (size_t)((plus ? plus : scopes_end) - rest);
      if (scope_bit(rest, k) == 0) /* not shown: it may be a token */
        return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                            "%s: entry %d names a scope that is not submit, "
                            "read or admin (joined by '+')",
                            key, i);
      rest += k + (plus != NULL);
      if (plus != NULL && rest == scopes_end)
        return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                            "%s: entry %d: a scope list ends with '+'", key,
                            i);
    }
    if (c2 != NULL && !client_ok(c2 + 1, (size_t)(end - c2 - 1)))
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                          "%s: entry %d: a client is " CLIENT_RULE, key, i);
  }
  return 0;
}

static int check_value(const cfg_key_t *k, const char *value,
                       pt_error_t *err) {
  if (strcmp(k->key, "amqp.queue_type") == 0 &&
      strcmp(value, "classic") != 0 && strcmp(value, "quorum") != 0)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: must be classic or quorum, not \"%s\"", k->key,
                        value);
  if (strcmp(k->key, "sim.dialect") == 0 && strcmp(value, "plain") != 0 &&
      strcmp(value, "alipay") != 0 && strcmp(value, "wechat") != 0)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: must be plain, alipay or wechat", k->key);
  if ((strcmp(k->key, "query.schedule") == 0 ||
       strcmp(k->key, "close.schedule") == 0 ||
       strcmp(k->key, "notify.schedule") == 0) &&
      pt_config_schedule(value, NULL, 0) <= 0)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: expected comma-separated seconds (1..86400, at "
                        "most %d), got \"%s\"", k->key, PT_SCHEDULE_MAX, value);
  if (strcmp(k->key, "notify.allow_networks") == 0) {
    char why[160];
    if (pt_net_list_parse(value, NULL, why, sizeof why) != 0)
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s: %s",
                          k->key, why);
  }
  if (strcmp(k->key, "events.exchange") == 0 && value[0] == '\0')
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: must name an exchange", k->key);
  if (strcmp(k->key, "notify.secrets") == 0) {
    /* CLIENT=SECRET pairs, comma-separated, neither side empty. */
    const char *p = value, *e;
    size_t n;
    for (int i = 1; next_entry(&p, &e, &n); i++) {
      const char *eq = memchr(e, '=', n);
      if (eq == NULL || eq == e || eq == e + n - 1)
        return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                            "%s: expected CLIENT=SECRET pairs separated by "
                            "commas",
                            k->key);
      if (!client_ok(e, (size_t)(eq - e)))
        return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                            "%s: entry %d: a client is " CLIENT_RULE, k->key,
                            i);
      if (eq[1] == ' ' || e[n - 1] == ' ')
        return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                            "%s: entry %d: the secret starts or ends with a "
                            "space",
                            k->key, i);
    }
  }
  if (strcmp(k->key, "api.tokens") == 0) {
    int rc = check_tokens(k->key, value, err);
    if (rc != 0)
      return rc;
  }
  if (strcmp(k->key, "channel.wechat.apiv3_key") == 0 && value[0] != '\0' &&
      strlen(value) != 32)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: must be exactly 32 bytes", k->key);
  if (strcmp(k->key, "log.level") == 0 && pt_log_level_parse(value) < 0)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: must be debug, info, warn or error", k->key);
  if (strcmp(k->key, "log.format") == 0 && strcmp(value, "logfmt") != 0 &&
      strcmp(value, "json") != 0)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: must be logfmt or json", k->key);
  if (strcmp(k->key, "api.listen") == 0 || strcmp(k->key, "sim.listen") == 0 ||
      (strcmp(k->key, "worker.metrics_listen") == 0 && value[0] != '\0')) {
    char host[256];
    int port;
    if (pt_config_hostport(value, host, sizeof host, &port) != 0)
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                          "%s: expected address:port, got \"%s\"", k->key,
                          value);
    unsigned char a[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                          "%s: the address must be numeric (127.0.0.1, "
                          "0.0.0.0, [::1]), got \"%s\"", k->key, host);
  }
  return 0;
}

int pt_config_set(pt_config_t *cfg, const char *key, const char *value,
                  pt_error_t *err) {
  const cfg_key_t *k = find_key(key);
  if (k == NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "unknown configuration key \"%s\"", key);
  int rc = check_value(k, value, err);
  if (rc != 0)
    return rc;
  char *field = (char *)cfg + k->offset;
  if (k->type == CFG_STR) {
    size_t n = strlen(value);
    if (n >= k->size)
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                          "%s: value longer than %zu bytes", key, k->size - 1);
    memcpy(field, value, n + 1);
    if (strcmp(key, "notify.allow_networks") == 0)
      pt_net_list_parse(value, &cfg->notify_allow, NULL, 0); /* checked */
    return 0;
  }
  char *end = NULL;
  errno = 0;
  long long v = strtoll(value, &end, 10);
  if (errno != 0 || end == value || *end != '\0')
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: expected an integer, got \"%s\"", key, value);
  if (v < k->min || v > k->max)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s: %lld is outside %lld..%lld", key, v,
                        (long long)k->min, (long long)k->max);
  *(int64_t *)(void *)field = (int64_t)v;
  return 0;
}

void pt_config_defaults(pt_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    int rc = pt_config_set(cfg, keys[i].key, keys[i].def, NULL);
    (void)rc; /* defaults are valid by construction */
  }
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

static int load_file(pt_config_t *cfg, const char *path, pt_error_t *err) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s: %s", path,
                        strerror(errno));
  char line[2048];
  int lineno = 0, rc = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    lineno++;
    char *s = trim(line);
    if (*s == '\0' || *s == '#')
      continue;
    char *eq = strchr(s, '=');
    if (eq == NULL) {
      rc = pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "%s:%d: expected key = value", path, lineno);
      break;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    pt_error_t e;
    rc = pt_config_set(cfg, key, value, &e);
    if (rc != 0) {
      pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG, "%s:%d: %s", path,
                   lineno, e.message);
      break;
    }
  }
  fclose(f);
  return rc;
}

static void env_name(const char *key, char *out, size_t len) {
  size_t j = 0;
  const char *prefix = "PAYTASK_";
  for (size_t i = 0; prefix[i] && j + 1 < len; i++)
    out[j++] = prefix[i];
  for (size_t i = 0; key[i] && j + 1 < len; i++)
    out[j++] = key[i] == '.' ? '_' : (char)toupper((unsigned char)key[i]);
  out[j] = '\0';
}

/* The PAYTASK_ variables that are not configuration keys: read by the
 * commands themselves (the config file, the api's address and token for
 * the client commands, a test's fault) and by the test suite. */
static const char *const env_not_keys[] = {
    "PAYTASK_CONFIG", "PAYTASK_API_URL", "PAYTASK_TOKEN", "PAYTASK_FAULT",
    "PAYTASK_BIN",    "PAYTASK_SOURCE_DIR", NULL};

/* A PAYTASK_ variable that names no key (PAYTASK_REDIS_URL for
 * PAYTASK_REDIS_URI) was ignored without a word, and the process ran on
 * the default: it is said, once per load. */
static void warn_unknown_env(void) {
  extern char **environ;
  for (char **e = environ; e != NULL && *e != NULL; e++) {
    if (strncmp(*e, "PAYTASK_", 8) != 0)
      continue;
    size_t n = strcspn(*e, "=");
    int known = 0;
    char name[128];
    for (size_t i = 0; !known && i < sizeof keys / sizeof keys[0]; i++) {
      env_name(keys[i].key, name, sizeof name);
      known = strlen(name) == n && memcmp(name, *e, n) == 0;
    }
    for (size_t i = 0; !known && env_not_keys[i] != NULL; i++)
      known = strlen(env_not_keys[i]) == n &&
              memcmp(env_not_keys[i], *e, n) == 0;
    if (!known)
      PT_WARN("config_env_unknown", "name=%.*s note=\"no configuration key "
              "has this name; it is ignored (keys: paytask config check)\"",
              (int)(n > 64 ? 64 : n), *e);
  }
}

int pt_config_load(pt_config_t *cfg, const char *path, pt_error_t *err) {
  pt_config_defaults(cfg);
  warn_unknown_env();
  if (path == NULL)
    path = getenv("PAYTASK_CONFIG");
  if (path == NULL || *path == '\0') {
    FILE *f = fopen("conf/paytask.conf", "r");
    if (f != NULL) {
      fclose(f);
      path = "conf/paytask.conf";
    }
  }
  if (path != NULL && *path != '\0') {
    int rc = load_file(cfg, path, err);
    if (rc != 0)
      return rc;
  }
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    char name[128];
    env_name(keys[i].key, name, sizeof name);
    const char *v = getenv(name);
    if (v == NULL)
      continue;
    pt_error_t e;
    if (pt_config_set(cfg, keys[i].key, v, &e) != 0)
      return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                          "environment %s: %s", name, e.message);
  }
  return 0;
}

void pt_config_print(const pt_config_t *cfg, FILE *out) {
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    const cfg_key_t *k = &keys[i];
    const char *field = (const char *)cfg + k->offset;
    fprintf(out, "# %s\n", k->doc);
    if (k->type == CFG_INT)
      fprintf(out, "%s = %lld\n", k->key,
              (long long)*(const int64_t *)(const void *)field);
    else if (k->secret && strcmp(k->key, "amqp.uri") != 0 &&
             strcmp(k->key, "redis.uri") != 0 &&
             strcmp(k->key, "mongodb.uri") != 0)
      fprintf(out, "%s = ********\n", k->key);
    else if (k->secret) {
      /* URIs: mask the password only, so the address stays readable. */
      const char *at = strrchr(field, '@');
      const char *scheme = strstr(field, "://");
      const char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
      if (at != NULL && colon != NULL && colon < at)
        fprintf(out, "%s = %.*s:********%s\n", k->key, (int)(colon - field),
                field, at);
      else
        fprintf(out, "%s = %s\n", k->key, field);
    } else
      fprintf(out, "%s = %s\n", k->key, field);
  }
}

int pt_config_hostport(const char *s, char *host, size_t hostlen, int *port) {
  const char *colon = strrchr(s, ':');
  if (colon == NULL || colon == s || (size_t)(colon - s) >= hostlen)
    return PT_EINVAL;
  char *end = NULL;
  long p = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end != '\0' || p < 0 || p > 65535)
    return PT_EINVAL;
  size_t hn = (size_t)(colon - s);
  if (s[0] == '[') { /* an IPv6 address: [::1]:8080 */
    if (hn < 3 || s[hn - 1] != ']' || memchr(s + 1, ':', hn - 2) == NULL)
      return PT_EINVAL;
    s++;
    hn -= 2;
  } else if (memchr(s, ':', hn) != NULL) {
    return PT_EINVAL; /* IPv6 without brackets: where does the port start? */
  }
  memcpy(host, s, hn);
  host[hn] = '\0';
  *port = (int)p;
  return 0;
}

static int parse_scopes(const char *p, size_t n) {
  int scopes = 0;
  while (n > 0) {
    const char *plus = memchr(p, '+', n);
    size_t k = plus ? (size_t)(plus - p) : n;
    scopes |= scope_bit(p, k);
    if (plus == NULL)
      break;
    n -= k + 1;
    p = plus + 1;
  }
  return scopes;
}

/* One api.tokens entry, TOKEN[:SCOPES[:CLIENT]], split: the token is the
 * entry's first tn bytes; no scopes listed is every scope; client is
 * NULL (cn 0) when the entry names none. */
typedef struct {
  size_t tn;
  int scopes;
  const char *client;
  size_t cn;
} token_entry_t;

static void split_token_entry(const char *e, size_t n, token_entry_t *t) {
  const char *colon = memchr(e, ':', n);
  t->tn = colon ? (size_t)(colon - e) : n;
  size_t sn = colon ? n - t->tn - 1 : 0;
  const char *c2 = colon ? memchr(colon + 1, ':', sn) : NULL;
  t->client = NULL;
  t->cn = 0;
  if (c2 != NULL) {
    t->client = c2 + 1;
    t->cn = n - (size_t)(c2 + 1 - e);
    sn = (size_t)(c2 - colon - 1);
  }
  t->scopes = colon && sn > 0 ? parse_scopes(colon + 1, sn) : PT_SCOPE_ALL;
}

int pt_config_token_lookup(const pt_config_t *cfg, const char *token,
                           size_t len, char *client, size_t clen) {
  const char *p = cfg->api_tokens, *e;
  size_t n;
  int found = 0;
  if (client != NULL && clen > 0)
    snprintf(client, clen, "default");
  while (next_entry(&p, &e, &n)) {
    token_entry_t t;
    split_token_entry(e, n, &t);
    if (t.tn != len || t.tn == 0)
      continue;
    unsigned char diff = 0;
    for (size_t i = 0; i < t.tn; i++)
      diff |= (unsigned char)(e[i] ^ token[i]);
    if (diff != 0)
      continue;
    if (client != NULL && t.cn > 0 && t.cn < clen) {
      memcpy(client, t.client, t.cn);
      client[t.cn] = '\0';
    }
    found |= t.scopes;
  }
  return found;
}

int pt_config_token_for(const pt_config_t *cfg, int scopes, char *out,
                        size_t len) {
  const char *p = cfg->api_tokens, *e;
  size_t n;
  while (next_entry(&p, &e, &n)) {
    token_entry_t t;
    split_token_entry(e, n, &t);
    if (t.tn > 0 && t.tn < len && (t.scopes & scopes) == scopes) {
      memcpy(out, e, t.tn);
      out[t.tn] = '\0';
      return 0;
    }
  }
  if (len > 0)
    out[0] = '\0';
  return PT_ENOTFOUND;
}

int pt_config_token_scopes(const pt_config_t *cfg, const char *token,
                           size_t len) {
  return pt_config_token_lookup(cfg, token, len, NULL, 0);
}

int pt_config_token_ok(const pt_config_t *cfg, const char *token, size_t len) {
  return pt_config_token_scopes(cfg, token, len) != 0;
}

int pt_config_schedule(const char *s, int64_t *out, int max) {
  int n = 0;
  const char *p = s;
  while (*p) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (errno != 0 || end == p || v < 1 || v > 86400 || n >= PT_SCHEDULE_MAX)
      return -1;
    if (out != NULL && n < max)
      out[n] = v;
    n++;
    while (*end == ' ')
      end++;
    if (*end == '\0')
      break;
    if (*end != ',')
      return -1;
    p = end + 1;
    while (*p == ' ')
      p++;
  }
  return n;
}

int pt_config_notify_secret(const pt_config_t *cfg, const char *client,
                            const char **secret, size_t *len) {
  const char *p = cfg->notify_secrets, *e;
  size_t n, cl = strlen(client);
  while (next_entry(&p, &e, &n)) {
    const char *eq = memchr(e, '=', n);
    if (eq != NULL && (size_t)(eq - e) == cl && memcmp(e, client, cl) == 0 &&
        n - cl - 1 > 0) {
      *secret = eq + 1;
      *len = n - cl - 1;
      return 0;
    }
  }
  return PT_ENOTFOUND;
}
