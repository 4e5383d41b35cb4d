#include "sim/pt_sim.h"

#include <bson/bson.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "core/pt_config.h"
#include "core/pt_httpd.h"
#include "core/pt_id.h"
#include "core/pt_log.h"
#include "core/pt_task.h"

typedef struct {
  char no[PT_OUT_TRADE_NO_MAX + 1];
  char trade_no[32];
  int64_t amount;
  char currency[4];
  char status[16]; /* "" until created, then CREATED, PAID, CLOSED */
  int fail_left;
  long create_calls, create_ok, creates_after_created, query_calls;
  UT_hash_handle hh;
} trade_t;

typedef struct sim {
  uv_loop_t *loop;
  pt_httpd_t *httpd;
  trade_t *trades;
  int latency_ms;
  double error_rate;
  uint64_t seq;
  long create_calls, creates_after_created, query_calls, held;
  long in_flight, max_in_flight; /* answers being delayed right now */
  uv_signal_t sigterm, sigint;
  unsigned rng;
  struct later *laters;
  int outage; /* every create answers 503 while set */
} sim_t;

/* An answer sent after a delay; kept in a list so shutdown can send it. */
typedef struct later {
  sim_t *sim;
  pt_httpd_req_t *req;
  int status;
  char *body;
  size_t len;
  uv_timer_t timer;
  struct later *prev, *next;
} later_t;

static void on_later_closed(uv_handle_t *h) {
  later_t *l = h->data;
  l->sim->in_flight--;
  if (l->prev != NULL)
    l->prev->next = l->next;
  else
    l->sim->laters = l->next;
  if (l->next != NULL)
    l->next->prev = l->prev;
  bson_free(l->body);
  free(l);
}

static void on_later(uv_timer_t *t) {
  later_t *l = t->data;
  pt_httpd_respond(l->req, l->status, "application/json", l->body, l->len,
                   NULL);
  uv_close((uv_handle_t *)t, on_later_closed);
}

/* Answers doc after delay_ms (now when 0); takes nothing from doc. */
static void answer(sim_t *sim, pt_httpd_req_t *req, int status,
                   const bson_t *doc, int delay_ms) {
  size_t len;
  char *json = bson_as_relaxed_extended_json(doc, &len);
  if (delay_ms <= 0) {
    pt_httpd_respond(req, status, "application/json", json, len, NULL);
    bson_free(json);
    return;
  }
  later_t *l = calloc(1, sizeof *l);
  if (l == NULL) {
    pt_httpd_respond(req, status, "application/json", json, len, NULL);
    bson_free(json);
    return;
  }
  *l = (later_t){
      .sim = sim, .req = req, .status = status, .body = json, .len = len};
  if (++sim->in_flight > sim->max_in_flight)
    sim->max_in_flight = sim->in_flight;
  l->next = sim->laters;
  if (l->next != NULL)
    l->next->prev = l;
  sim->laters = l;
  uv_timer_init(sim->loop, &l->timer);
  l->timer.data = l;
  uv_timer_start(&l->timer, on_later, (uint64_t)delay_ms, 0);
}

static void answer_error(sim_t *sim, pt_httpd_req_t *req, int status,
                         const char *code, const char *message, int delay) {
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "code", code);
  BSON_APPEND_UTF8(&d, "message", message);
  answer(sim, req, status, &d, delay);
  bson_destroy(&d);
}

static void trade_doc(const trade_t *t, bson_t *d) {
  char qr[160];
  snprintf(qr, sizeof qr, "https://qr.sim.paytask.local/%s", t->trade_no);
  BSON_APPEND_UTF8(d, "trade_no", t->trade_no);
  BSON_APPEND_UTF8(d, "out_trade_no", t->no);
  BSON_APPEND_UTF8(d, "status", t->status);
  BSON_APPEND_INT64(d, "amount", t->amount);
  BSON_APPEND_UTF8(d, "currency", t->currency);
  BSON_APPEND_UTF8(d, "qr_code", qr);
}

static double rnd(sim_t *sim) {
  sim->rng = sim->rng * 1103515245u + 12345u;
  return (double)((sim->rng >> 8) & 0xffffff) / (double)0x1000000;
}

/* A "timeout" request is held until the process ends or ten minutes pass,
 * then answered (the caller has long given up). */
#define HOLD_MS 600000

static void handle_create(sim_t *sim, pt_httpd_req_t *req) {
  size_t blen;
  const char *body = pt_httpd_body(req, &blen);
  bson_t doc;
  bson_iter_t it, s;
  pt_input_error_t ie;
  const char *no = NULL;
  int64_t amount = 0;
  char cur[4] = "CNY";
  int fail_times = 0, decline = 0, latency = sim->latency_ms, timeout = 0;

  if (pt_json_parse_object(body, blen, &doc, &ie) != 0) {
    answer_error(sim, req, 400, "PARAM_ERROR", ie.message, 0);
    return;
  }
  if (bson_iter_init_find(&it, &doc, "out_trade_no") &&
      BSON_ITER_HOLDS_UTF8(&it))
    no = bson_iter_utf8(&it, NULL);
  if (bson_iter_init_find(&it, &doc, "amount") &&
      (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it)))
    amount = bson_iter_as_int64(&it);
  if (bson_iter_init_find(&it, &doc, "currency") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(cur, sizeof cur, "%s", bson_iter_utf8(&it, NULL));
  if (bson_iter_init_find(&it, &doc, "sim") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
      bson_iter_recurse(&it, &s)) {
    while (bson_iter_next(&s)) {
      const char *k = bson_iter_key(&s);
      if (strcmp(k, "fail_times") == 0 && BSON_ITER_HOLDS_INT32(&s))
        fail_times = bson_iter_int32(&s);
      else if (strcmp(k, "decline") == 0 && BSON_ITER_HOLDS_BOOL(&s))
        decline = bson_iter_bool(&s);
      else if (strcmp(k, "latency_ms") == 0 && BSON_ITER_HOLDS_INT32(&s))
        latency = bson_iter_int32(&s);
      else if (strcmp(k, "timeout") == 0 && BSON_ITER_HOLDS_BOOL(&s))
        timeout = bson_iter_bool(&s);
    }
  }
  if (no == NULL || strlen(no) > PT_OUT_TRADE_NO_MAX || amount <= 0 ||
      strlen(cur) != 3) {
    bson_destroy(&doc);
    answer_error(sim, req, 400, "PARAM_ERROR",
                 "out_trade_no, amount > 0 and currency are required", 0);
    return;
  }
  trade_t *t;
  HASH_FIND_STR(sim->trades, no, t);
  if (t == NULL) {
    t = calloc(1, sizeof *t);
    snprintf(t->no, sizeof t->no, "%s", no);
    t->fail_left = fail_times;
    HASH_ADD_STR(sim->trades, no, t);
  }
  bson_destroy(&doc);
  t->create_calls++;
  sim->create_calls++;
  if (t->status[0] != '\0') {
    /* A second create for an existing trade: like Alipay's precreate, the
     * same trade comes back; it is counted, since a correct client never
     * sends it. */
    t->creates_after_created++;
    sim->creates_after_created++;
    if (t->amount != amount) {
      answer_error(sim, req, 400, "OUT_TRADE_NO_USED",
                   "out_trade_no was used with another amount", latency);
      return;
    }
    bson_t d = BSON_INITIALIZER;
    trade_doc(t, &d);
    answer(sim, req, 200, &d, latency);
    bson_destroy(&d);
    return;
  }
  if (timeout) {
    sim->held++;
    answer_error(sim, req, 504, "TIMEOUT", "held", HOLD_MS);
    return;
  }
  if (sim->outage) {
    answer_error(sim, req, 503, "SYSTEM_ERROR", "channel outage", latency);
    return;
  }
  if (t->fail_left > 0) {
    t->fail_left--;
    answer_error(sim, req, 503, "SYSTEM_ERROR", "system busy, try again",
                 latency);
    return;
  }
  if (sim->error_rate > 0 && rnd(sim) < sim->error_rate) {
    answer_error(sim, req, 503, "SYSTEM_ERROR", "random failure", latency);
    return;
  }
  if (decline) {
    answer_error(sim, req, 402, "DECLINED", "the payer's bank declined",
                 latency);
    return;
  }
  snprintf(t->trade_no, sizeof t->trade_no, "SIM%014llu",
           (unsigned long long)++sim->seq);
  snprintf(t->status, sizeof t->status, "CREATED");
  snprintf(t->currency, sizeof t->currency, "%s", cur);
  t->amount = amount;
  t->create_ok++;
  bson_t d = BSON_INITIALIZER;
  trade_doc(t, &d);
  answer(sim, req, 200, &d, latency);
  bson_destroy(&d);
}

static void handle_query(sim_t *sim, pt_httpd_req_t *req, const char *no) {
  trade_t *t;
  HASH_FIND_STR(sim->trades, no, t);
  sim->query_calls++;
  if (t != NULL)
    t->query_calls++;
  if (t == NULL || t->status[0] == '\0') {
    answer_error(sim, req, 404, "TRADE_NOT_EXIST", "no such trade",
                 sim->latency_ms);
    return;
  }
  bson_t d = BSON_INITIALIZER;
  trade_doc(t, &d);
  answer(sim, req, 200, &d, sim->latency_ms);
  bson_destroy(&d);
}

static void handle_stats(sim_t *sim, pt_httpd_req_t *req, const char *no) {
  bson_t d = BSON_INITIALIZER;
  if (no == NULL) {
    BSON_APPEND_INT64(&d, "trades", (int64_t)HASH_COUNT(sim->trades));
    BSON_APPEND_INT64(&d, "create_calls", sim->create_calls);
    BSON_APPEND_INT64(&d, "creates_after_created", sim->creates_after_created);
    BSON_APPEND_INT64(&d, "query_calls", sim->query_calls);
    BSON_APPEND_INT64(&d, "in_flight", sim->in_flight);
    BSON_APPEND_INT64(&d, "max_in_flight", sim->max_in_flight);
    answer(sim, req, 200, &d, 0);
  } else {
    trade_t *t;
    HASH_FIND_STR(sim->trades, no, t);
    if (t == NULL) {
      bson_destroy(&d);
      answer_error(sim, req, 404, "TRADE_NOT_EXIST", "no such trade", 0);
      return;
    }
    BSON_APPEND_UTF8(&d, "out_trade_no", t->no);
    BSON_APPEND_UTF8(&d, "status", t->status[0] ? t->status : "NONE");
    BSON_APPEND_INT64(&d, "create_calls", t->create_calls);
    BSON_APPEND_INT64(&d, "create_ok", t->create_ok);
    BSON_APPEND_INT64(&d, "creates_after_created", t->creates_after_created);
    BSON_APPEND_INT64(&d, "query_calls", t->query_calls);
    answer(sim, req, 200, &d, 0);
  }
  bson_destroy(&d);
}

static void on_request(pt_httpd_req_t *req, void *arg) {
  sim_t *sim = arg;
  size_t mlen, plen;
  const char *m = pt_httpd_method(req, &mlen);
  const char *p = pt_httpd_path(req, &plen);
  char path[256], no[PT_OUT_TRADE_NO_MAX + 1];
  int is_post = mlen == 4 && memcmp(m, "POST", 4) == 0;
  int is_get = mlen == 3 && memcmp(m, "GET", 3) == 0;
  if (plen >= sizeof path) {
    answer_error(sim, req, 404, "NOT_FOUND", "no such endpoint", 0);
    return;
  }
  memcpy(path, p, plen);
  path[plen] = '\0';
  if (is_post && strcmp(path, "/v1/trades") == 0) {
    handle_create(sim, req);
  } else if (is_get && strncmp(path, "/v1/trades/", 11) == 0 &&
             strlen(path + 11) <= PT_OUT_TRADE_NO_MAX &&
             strchr(path + 11, '/') == NULL) {
    snprintf(no, sizeof no, "%s", path + 11);
    handle_query(sim, req, no);
  } else if (is_get && strcmp(path, "/v1/sim/stats") == 0) {
    handle_stats(sim, req, NULL);
  } else if (is_get && strncmp(path, "/v1/sim/trades/", 15) == 0 &&
             strlen(path + 15) <= PT_OUT_TRADE_NO_MAX) {
    snprintf(no, sizeof no, "%s", path + 15);
    handle_stats(sim, req, no);
  } else if (is_post && strcmp(path, "/v1/sim/outage") == 0) {
    /* {"on": true} makes every create fail with 503 until {"on": false}. */
    size_t blen;
    const char *b = pt_httpd_body(req, &blen);
    sim->outage = memmem(b, blen, "true", 4) != NULL;
    bson_t d = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&d, "outage", sim->outage);
    answer(sim, req, 200, &d, 0);
    bson_destroy(&d);
  } else if (is_get && strcmp(path, "/healthz") == 0) {
    pt_httpd_respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15,
                     NULL);
  } else {
    answer_error(sim, req, 404, "NOT_FOUND", "no such endpoint", 0);
  }
}


static void on_signal(uv_signal_t *s, int signum) {
  sim_t *sim = s->data;
  PT_INFO("sim_stopping", "signal=%d", signum);
  uv_close((uv_handle_t *)&sim->sigterm, NULL);
  uv_close((uv_handle_t *)&sim->sigint, NULL);
  /* Held and delayed answers go out now, so their requests are freed. */
  for (later_t *l = sim->laters; l != NULL; l = l->next) {
    if (uv_is_closing((uv_handle_t *)&l->timer))
      continue;
    uv_timer_stop(&l->timer);
    pt_httpd_respond(l->req, 503, "application/json", "{}", 2, NULL);
    uv_close((uv_handle_t *)&l->timer, on_later_closed);
  }
  pt_httpd_destroy(sim->httpd);
  sim->httpd = NULL;
}

int pt_sim_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"listen", required_argument, 0, 'l'},
      {"latency-ms", required_argument, 0, 'L'},
      {"error-rate", required_argument, 0, 'e'},
      {"config", required_argument, 0, 'c'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  sim_t sim;
  pt_config_t cfg;
  pt_error_t err;
  const char *listen = NULL, *path = NULL;
  char *end;
  int c;
  memset(&sim, 0, sizeof sim);
  sim.rng = 12345;
  while ((c = getopt_long(argc, argv, "l:L:e:c:h", opts, NULL)) != -1) {
    switch (c) {
    case 'l':
      listen = optarg;
      break;
    case 'L':
      sim.latency_ms = (int)strtol(optarg, &end, 10);
      if (*end != '\0' || sim.latency_ms < 0 || sim.latency_ms > 600000) {
        fprintf(stderr, "paytask sim: --latency-ms takes 0..600000\n");
        return 2;
      }
      break;
    case 'e':
      sim.error_rate = strtod(optarg, &end);
      if (*end != '\0' || sim.error_rate < 0 || sim.error_rate > 1) {
        fprintf(stderr, "paytask sim: --error-rate takes 0..1\n");
        return 2;
      }
      break;
    case 'c':
      path = optarg;
      break;
    default:
      fprintf(stderr, "usage: paytask sim [--listen ADDR:PORT] "
                      "[--latency-ms N] [--error-rate P] [--config FILE]\n");
      return c == 'h' ? 0 : 2;
    }
  }
  if (pt_config_load(&cfg, path, &err) != 0) {
    fprintf(stderr, "paytask sim: %s\n", err.message);
    return 2;
  }
  pt_log_setup((pt_log_level_t)pt_log_level_parse(cfg.log_level),
               PT_LOG_LOGFMT, "sim");
  char host[256];
  int port;
  if (pt_config_hostport(listen ? listen : cfg.sim_listen, host, sizeof host,
                         &port) != 0) {
    fprintf(stderr, "paytask sim: --listen takes ADDR:PORT\n");
    return 2;
  }
  sim.loop = malloc(sizeof *sim.loop);
  uv_loop_init(sim.loop);
  pt_httpd_opts_t ho = {.host = host,
                        .port = port,
                        .max_body = 65536,
                        .handler = on_request,
                        .arg = &sim};
  sim.httpd = pt_httpd_new(sim.loop, &ho, &err);
  if (sim.httpd == NULL) {
    fprintf(stderr, "paytask sim: %s\n", err.message);
    return 1;
  }
  uv_signal_init(sim.loop, &sim.sigterm);
  uv_signal_init(sim.loop, &sim.sigint);
  sim.sigterm.data = sim.sigint.data = &sim;
  uv_signal_start(&sim.sigterm, on_signal, SIGTERM);
  uv_signal_start(&sim.sigint, on_signal, SIGINT);
  PT_INFO("sim_listening", "addr=%s:%d latency_ms=%d error_rate=%g", host,
          pt_httpd_port(sim.httpd), sim.latency_ms, sim.error_rate);
  uv_run(sim.loop, UV_RUN_DEFAULT);
  trade_t *t, *tmp;
  HASH_ITER(hh, sim.trades, t, tmp) {
    HASH_DEL(sim.trades, t);
    free(t);
  }
  uv_loop_close(sim.loop);
  free(sim.loop);
  return 0;
}
