/* The second half of the demo: the life of real-channel trades against the
 * simulator in its alipay and wechat dialects (started by scripts/demo on
 * the ports channel.alipay.gateway and channel.wechat.base_url name). Some
 * buyers pay (the channel's signed callback settles the trade), one never
 * does (its trade is closed when its 5-second window ends). A CLI: blocking
 * libcurl calls, no loop. */
#include "cli/pt_demo.h"

#include <bson/bson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/pt_cli_http.h"
#include "core/pt_buf.h"
#include "core/pt_id.h"

/* One request; returns the status (-1: no answer) and the body in doc
 * (initialised when the body is a JSON object). */
static long request(const char *method, const char *url, const char *token,
                    const char *body, bson_t *doc, int *has_doc) {
  pt_buf_t out;
  bson_error_t e;
  pt_cli_req_t r = {method, url, token, NULL, body, 10000};
  long code = pt_cli_http(&r, &out, NULL);
  *has_doc = 0;
  if (out.len > 0 && doc != NULL &&
      bson_init_from_json(doc, out.data, (ssize_t)out.len, &e))
    *has_doc = 1;
  free(out.data);
  return code;
}

static const char *get_str(const bson_t *d, const char *path) {
  bson_iter_t it, f;
  if (bson_iter_init(&it, d) && bson_iter_find_descendant(&it, path, &f) &&
      BSON_ITER_HOLDS_UTF8(&f))
    return bson_iter_utf8(&f, NULL);
  return NULL;
}

typedef struct {
  const char *channel;
  int pays;
  int expire_in;
  char otn[64], id[24];
  char code[72];
  char trade[16], settled_by[16];
} trade_t;

/* The simulator's base URL for a channel, from the configuration. */
static void sim_base(const pt_config_t *cfg, const char *channel, char *out,
                     size_t len) {
  if (strcmp(channel, "alipay") == 0) {
    snprintf(out, len, "%s", cfg->alipay_gateway);
    char *p = strstr(out, "/gateway.do");
    if (p != NULL)
      *p = '\0';
  } else {
    snprintf(out, len, "%s", cfg->wechat_base_url);
  }
}

int pt_demo_trades(const pt_config_t *cfg, const char *api,
                   const char *token) {
#define T(ch, p, e) {.channel = ch, .pays = p, .expire_in = e}
  trade_t t[] = {T("alipay", 1, 600), T("alipay", 1, 600),
                 T("wechat", 1, 600), T("wechat", 1, 600),
                 T("alipay", 0, 5),   T("wechat", 0, 5)};
#undef T
  size_t n = sizeof t / sizeof t[0];
  char url[PT_CFG_STR_MAX + 64], base[PT_CFG_STR_MAX], body[512];
  bson_t doc;
  int has, rc = 0;
  long run = (long)(pt_now_ms() % 100000000);

  printf("\n== the life of a trade: Alipay and WeChat Pay (simulated, signed "
         "on the wire) ==\n");
  for (size_t i = 0; i < n; i++) {
    snprintf(t[i].otn, sizeof t[i].otn, "DEMO%ld%c%zu", run,
             t[i].channel[0], i);
    sim_base(cfg, t[i].channel, base, sizeof base);
    /* The buyer: pays one second after the code is shown, or never. */
    snprintf(url, sizeof url, "%s/v1/sim/rules", base);
    snprintf(body, sizeof body,
             "{\"out_trade_no\":\"%s\",\"pay_after_ms\":%d}", t[i].otn,
             t[i].pays ? 1000 : -1);
    if (request("POST", url, NULL, body, NULL, &has) != 200) {
      fprintf(stderr,
              "paytask demo: the %s simulator does not answer at %s\n",
              t[i].channel, base);
      return 1;
    }
    snprintf(body, sizeof body,
             "{\"type\":\"pay\",\"channel\":\"%s\",\"out_trade_no\":\"%s\","
             "\"amount\":%zu,\"currency\":\"CNY\",\"subject\":\"demo "
             "order\",\"expire_in\":%d}",
             t[i].channel, t[i].otn, 1999 + i * 100, t[i].expire_in);
    snprintf(url, sizeof url, "%s/v1/tasks", api);
    long st = request("POST", url, token, body, &doc, &has);
    const char *id = has ? get_str(&doc, "task_id") : NULL;
    if (st != 202 || id == NULL) {
      fprintf(stderr, "paytask demo: submit answered %ld\n", st);
      if (has)
        bson_destroy(&doc);
      return 1;
    }
    snprintf(t[i].id, sizeof t[i].id, "%s", id);
    bson_destroy(&doc);
  }
  /* Wait until every trade is final (callbacks within seconds; the unpaid
   * ones at the end of their 5-second window). */
  for (int round = 0; round < 300; round++) {
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
      if (t[i].trade[0] && strcmp(t[i].trade, "NOTPAY") != 0) {
        done++;
        continue;
      }
      snprintf(url, sizeof url, "%s/v1/tasks/%s", api, t[i].id);
      if (request("GET", url, token, NULL, &doc, &has) != 200 || !has) {
        if (has)
          bson_destroy(&doc);
        continue;
      }
      const char *v;
      if ((v = get_str(&doc, "result.qr_code")) != NULL ||
          (v = get_str(&doc, "result.code_url")) != NULL)
        snprintf(t[i].code, sizeof t[i].code, "%s", v);
      if ((v = get_str(&doc, "trade.status")) != NULL)
        snprintf(t[i].trade, sizeof t[i].trade, "%s", v);
      if ((v = get_str(&doc, "trade.settled_by")) != NULL)
        snprintf(t[i].settled_by, sizeof t[i].settled_by, "%s", v);
      bson_destroy(&doc);
    }
    if (done == n)
      break;
    usleep(100000);
  }
  printf("  %-7s %-20s %-44s %-10s %s\n", "channel", "out_trade_no",
         "what the payer scans", "trade", "settled by");
  for (size_t i = 0; i < n; i++) {
    int ok = strcmp(t[i].trade, t[i].pays ? "SUCCEEDED" : "CLOSED") == 0;
    printf("  %-7s %-20s %-44.44s %-10s %s\n", t[i].channel, t[i].otn,
           t[i].code[0] ? t[i].code : "-", t[i].trade[0] ? t[i].trade : "-",
           t[i].settled_by[0] ? t[i].settled_by : "-");
    if (!ok)
      rc = 1;
  }
  printf("  paid trades are settled by the channel's signed callback; unpaid "
         "ones are closed\n  at the channel when their window ends. Every "
         "final result is also an event on\n  the paytask.results exchange "
         "(paytask events tail).\n");
  return rc;
}
