#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_config.h"
#include "tests/support/pt_test.h"

static const char *write_tmp(const char *text) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/pt-test-conf-%d.conf", (int)getpid());
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
  return path;
}

Test(config, shipped_file_is_valid_and_matches_defaults) {
  pt_config_t file, def;
  pt_error_t err;
  char path[1024];
  const char *src = getenv("PAYTASK_SOURCE_DIR");
  snprintf(path, sizeof path, "%s/conf/paytask.conf", src ? src : ".");
  unsetenv("PAYTASK_AMQP_URI");
  unsetenv("PAYTASK_REDIS_URI");
  unsetenv("PAYTASK_MONGODB_URI");
  cr_assert_eq(pt_config_load(&file, path, &err), 0, "%s", err.message);
  pt_config_defaults(&def);
  cr_assert_str_eq(file.api_listen, def.api_listen);
  cr_assert_eq(file.amqp_prefetch, def.amqp_prefetch);
  cr_assert_str_eq(file.api_tokens, "dev-token-change-me");
}

Test(config, unknown_key_is_an_error_naming_it) {
  pt_config_t cfg;
  pt_error_t err;
  const char *p = write_tmp("api.listen = 127.0.0.1:9\napi.lisen = x\n");
  cr_assert_neq(pt_config_load(&cfg, p, &err), 0);
  cr_assert(strstr(err.message, "api.lisen") != NULL, "%s", err.message);
  cr_assert(strstr(err.message, ":2:") != NULL, "line number: %s",
            err.message);
}

Test(config, bad_values_are_errors) {
  pt_config_t cfg;
  pt_error_t err;
  pt_config_defaults(&cfg);
  cr_assert_neq(pt_config_set(&cfg, "amqp.prefetch", "lots", &err), 0);
  cr_assert(strstr(err.message, "amqp.prefetch") != NULL);
  cr_assert_neq(pt_config_set(&cfg, "amqp.prefetch", "0", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "amqp.queue_type", "fast", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "api.listen", "nohost", &err), 0);
  /* A name passed here and failed later, at the listen, without naming the
   * key; the address must be numeric. IPv6 in brackets is one. */
  cr_assert_neq(pt_config_set(&cfg, "api.listen", "localhost:8080", &err), 0);
  cr_assert(strstr(err.message, "api.listen") != NULL &&
                strstr(err.message, "numeric") != NULL,
            "%s", err.message);
  cr_assert_neq(
      pt_config_set(&cfg, "worker.metrics_listen", "example.com:9100", &err),
      0);
  cr_assert_eq(pt_config_set(&cfg, "api.listen", "[::1]:8080", &err), 0,
               "%s", err.message);
  char host[64];
  int port = 0;
  cr_assert_eq(pt_config_hostport(cfg.api_listen, host, sizeof host, &port),
               0);
  cr_assert_str_eq(host, "::1");
  cr_assert_eq(port, 8080);
  cr_assert_eq(pt_config_set(&cfg, "api.listen", "0.0.0.0:8080", &err), 0);
  /* Brackets exactly around IPv6. */
  cr_assert_neq(pt_config_set(&cfg, "api.listen", "::1:8080", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "api.listen", "[127.0.0.1]:8080", &err),
                0);
  cr_assert_neq(pt_config_set(&cfg, "api.listen", "[]:8080", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "log.level", "loud", &err), 0);
  cr_assert_eq(pt_config_set(&cfg, "amqp.queue_type", "quorum", &err), 0);
  /* The trade and channel keys. */
  cr_assert_neq(pt_config_set(&cfg, "query.schedule", "5,,10", &err), 0);
  cr_assert(strstr(err.message, "query.schedule") != NULL, "%s", err.message);
  cr_assert_neq(pt_config_set(&cfg, "notify.schedule", "0", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "notify.schedule", "15,x", &err), 0);
  cr_assert_eq(pt_config_set(&cfg, "notify.schedule", "1, 2,3", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "notify.secrets", "shop", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "notify.secrets", "a=1,=2", &err), 0);
  cr_assert_eq(pt_config_set(&cfg, "notify.secrets", "a=1,b=2", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "channel.wechat.apiv3_key", "short", &err),
                0);
  cr_assert_neq(pt_config_set(&cfg, "sim.dialect", "paypal", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "events.exchange", "", &err), 0);
  cr_assert_neq(pt_config_set(&cfg, "trade.expire_in", "10", &err), 0);
}

Test(config, token_clients_and_notify_secrets) {
  pt_config_t cfg;
  pt_error_t err;
  char client[32];
  const char *secret;
  size_t len;
  pt_config_defaults(&cfg);
  cr_assert_eq(pt_config_set(&cfg, "api.tokens",
                             "t1:submit+read:shop,t2:admin,t3", &err), 0);
  cr_assert_eq(pt_config_token_scopes(&cfg, "t1", 2),
               PT_SCOPE_SUBMIT | PT_SCOPE_READ);
  cr_assert_eq(pt_config_token_lookup(&cfg, "t1", 2, client, sizeof client),
               PT_SCOPE_SUBMIT | PT_SCOPE_READ);
  cr_assert_str_eq(client, "shop");
  cr_assert_eq(pt_config_token_lookup(&cfg, "t2", 2, client, sizeof client),
               PT_SCOPE_ADMIN);
  cr_assert_str_eq(client, "default");
  cr_assert_eq(pt_config_token_scopes(&cfg, "t3", 2), PT_SCOPE_ALL);
  cr_assert_eq(pt_config_set(&cfg, "notify.secrets", "default=d1,shop=s2",
                             &err), 0);
  cr_assert_eq(pt_config_notify_secret(&cfg, "shop", &secret, &len), 0);
  cr_assert_eq(len, 2);
  cr_assert_eq(memcmp(secret, "s2", 2), 0);
  cr_assert_eq(pt_config_notify_secret(&cfg, "nobody", &secret, &len),
               PT_ENOTFOUND);
}

/* A mistake in api.tokens or notify.secrets stops the process, naming the
 * key and the entry (by number: a token is a secret). Before, a misspelt
 * scope was dropped, a long client name became "default" (and its
 * notifications were signed with the default secret), and a space stayed
 * in a token or a secret. */
Test(config, token_and_secret_mistakes_are_errors) {
  pt_config_t cfg;
  pt_error_t err;
  pt_config_defaults(&cfg);
  const char *bad_tokens[] = {
      "t1:admn",                     /* misspelt scope */
      "t1:submit+raed",              /* one misspelt of two */
      "t1:submit+",                  /* a dangling '+' */
      "t1:submit:0123456789012345678901234567890123456789", /* long client */
      "t1:submit:sh op",             /* a space in the client */
      "t1:read:shop:x",              /* a ':' in the client */
      "t1 ,t2",                      /* a space after a token */
      "t1,,t2",                      /* an empty entry */
      ":read",                       /* no token */
  };
  for (size_t i = 0; i < sizeof bad_tokens / sizeof bad_tokens[0]; i++) {
    cr_assert_neq(pt_config_set(&cfg, "api.tokens", bad_tokens[i], &err), 0,
                  "api.tokens \"%s\" was taken", bad_tokens[i]);
    cr_assert(strstr(err.message, "api.tokens: entry") != NULL, "%s",
              err.message);
    cr_assert(strstr(err.message, "t1") == NULL && strstr(err.message, "t2")
                  == NULL, "the error shows a token: %s", err.message);
  }
  cr_assert_eq(pt_config_set(&cfg, "api.tokens",
                             "t1:submit+read:shop.cn-1, t2:admin,t3,t4::x",
                             &err), 0, "%s", err.message);
  cr_assert_eq(pt_config_set(&cfg, "api.tokens", "", &err), 0, "%s",
               err.message);
  const char *bad_secrets[] = {
      "default=abc ,shop=xyz", /* a space after a secret */
      "default= abc",          /* a space before one */
      "0123456789012345678901234567890123456789=s", /* a long client */
      "sh op=s",               /* a space in a client */
  };
  for (size_t i = 0; i < sizeof bad_secrets / sizeof bad_secrets[0]; i++) {
    cr_assert_neq(pt_config_set(&cfg, "notify.secrets", bad_secrets[i], &err),
                  0, "notify.secrets \"%s\" was taken", bad_secrets[i]);
    cr_assert(strstr(err.message, "notify.secrets") != NULL, "%s",
              err.message);
  }
}

Test(config, environment_overrides_file) {
  pt_config_t cfg;
  pt_error_t err;
  const char *p = write_tmp("amqp.prefetch = 10\n");
  setenv("PAYTASK_AMQP_PREFETCH", "42", 1);
  cr_assert_eq(pt_config_load(&cfg, p, &err), 0, "%s", err.message);
  cr_assert_eq(cfg.amqp_prefetch, 42);
  setenv("PAYTASK_AMQP_PREFETCH", "-3", 1);
  cr_assert_neq(pt_config_load(&cfg, p, &err), 0);
  cr_assert(strstr(err.message, "PAYTASK_AMQP_PREFETCH") != NULL, "%s",
            err.message);
  unsetenv("PAYTASK_AMQP_PREFETCH");
}

Test(config, print_masks_secrets) {
  pt_config_t cfg;
  char buf[8192] = "";
  pt_config_defaults(&cfg);
  cr_assert_eq(pt_config_set(&cfg, "api.tokens", "s3cret-token", NULL), 0);
  cr_assert_eq(
      pt_config_set(&cfg, "amqp.uri", "amqp://user:hunter2@10.0.0.1:5672/",
                    NULL),
      0);
  FILE *f = fmemopen(buf, sizeof buf - 1, "w");
  pt_config_print(&cfg, f);
  fclose(f);
  cr_assert(strstr(buf, "s3cret") == NULL, "token printed");
  cr_assert(strstr(buf, "hunter2") == NULL, "password printed");
  cr_assert(strstr(buf, "10.0.0.1:5672") != NULL, "host hidden too");
}

Test(config, tokens) {
  pt_config_t cfg;
  pt_config_defaults(&cfg);
  pt_config_set(&cfg, "api.tokens", "alpha, beta", NULL);
  cr_assert(pt_config_token_ok(&cfg, "alpha", 5));
  cr_assert(pt_config_token_ok(&cfg, "beta", 4));
  cr_assert(!pt_config_token_ok(&cfg, "alph", 4));
  cr_assert(!pt_config_token_ok(&cfg, "", 0));
  cr_assert(!pt_config_token_ok(&cfg, "gamma", 5));
}

Test(config, token_scopes) {
  pt_config_t cfg;
  pt_config_defaults(&cfg);
  pt_config_set(&cfg, "api.tokens", "shop:submit+read, sre:read+admin, all",
                NULL);
  cr_assert_eq(pt_config_token_scopes(&cfg, "shop", 4),
               PT_SCOPE_SUBMIT | PT_SCOPE_READ);
  cr_assert_eq(pt_config_token_scopes(&cfg, "sre", 3),
               PT_SCOPE_READ | PT_SCOPE_ADMIN);
  cr_assert_eq(pt_config_token_scopes(&cfg, "all", 3), PT_SCOPE_ALL);
  cr_assert_eq(pt_config_token_scopes(&cfg, "submit", 6), 0);
}

/* A PAYTASK_ variable that names no key (a typo) is said, not silently
 * ignored while the process runs on the default. */
Test(config, an_unknown_paytask_variable_is_said) {
  char out[16384];
  pt_test_paytask("PAYTASK_REDIS_URL=redis://elsewhere", 0, "config check",
                  out, sizeof out);
  cr_assert(strstr(out, "config_env_unknown name=PAYTASK_REDIS_URL") != NULL,
            "%s", out);
  cr_assert(strstr(out, "name=PAYTASK_CONFIG") == NULL,
            "a variable paytask reads was called unknown: %s", out);
}
