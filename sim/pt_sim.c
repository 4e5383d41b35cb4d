#include "sim/pt_sim.h"

#include <bson/bson.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "core/pt_config.h"
#include "core/pt_crypto.h"
#include "core/pt_http_client.h"
#include "core/pt_httpd.h"
#include "core/pt_id.h"
#include "core/pt_log.h"
#include "core/pt_task.h"
#include "sim/pt_sim_dialect.h"

/* What the buyer and the channel do for one trade (or, for "*", for every
 * trade without a rule of its own); each field counts only when set. */
typedef struct {
  int has_pay_after, pay_after_ms; /* -1: never */
  int has_withhold, withhold;      /* pays but sends no notification */
  int has_dups, dups;              /* notifications sent again once acked */
  int has_fail, fail_times;        /* first creates answer a system error */
  int has_latency, latency_ms;
} rule_t;

typedef struct trade {
  pt_sim_trade_t pub; /* first: the dialects see only this part */
  struct sim *sim;
  rule_t rule;
  int fail_left;
  int lost_left; /* queries and closes still to answer "no such trade" */
  uv_timer_t pay_timer; /* the buyer pays when it fires */
  int pay_timer_on;
  uv_timer_t notify_timer; /* the next attempt of the notification */
  int notify_timer_on;
  int notify_busy;    /* a notification is being delivered */
  int notify_attempt; /* resends of it so far */
  int dups_left;
  char notify_id[33];
  UT_hash_handle hh;
} trade_t;

typedef struct sim {
  uv_loop_t *loop;
  pt_httpd_t *httpd;
  pt_http_client_t *http; /* notifications */
  const pt_config_t *cfg;
  const pt_sim_dialect_ops_t *dialect;
  void *dstate;
  trade_t *trades;
  rule_t defrule;
  int latency_ms, pay_after_ms;
  double error_rate;
  int64_t schedule[PT_SCHEDULE_MAX]; /* ms between notification attempts */
  int nschedule;
  uint64_t seq;
  long create_calls, creates_after_created, query_calls, close_calls;
  long callbacks_sent, callbacks_acked, paid;
  long in_flight, max_in_flight; /* answers being delayed right now */
  /* in_flight integrated over time (calls × µs) up to in_flight_since, so
   * that a reader can take the mean number in flight over any window */
  uint64_t in_flight_area_us, in_flight_since_us;
  uv_signal_t sigterm, sigint;
  unsigned rng;
  struct later *laters;
  int outage; /* every call answers a system error while set (plain: creates) */
  int64_t clock_behind_ms; /* the channel's clock, this far behind ours */
  int stopping;
} sim_t;

/* ---- answers ---------------------------------------------------------- */

/* An answer sent after a delay; kept in a list so shutdown can send it. */
typedef struct later {
  sim_t *sim;
  pt_httpd_req_t *req;
  int status;
  char *body, *ctype;
  size_t len;
  char **headers; /* NULL-terminated name, value pairs */
  uv_timer_t timer;
  struct later *prev, *next;
} later_t;

static void free_strings(char **v) {
  for (int i = 0; v != NULL && v[i] != NULL; i++)
    free(v[i]);
  free(v);
}

static void on_later_closed(uv_handle_t *h) {
  later_t *l = h->data;
  if (l->prev != NULL)
    l->prev->next = l->next;
  else
    l->sim->laters = l->next;
  if (l->next != NULL)
    l->next->prev = l->prev;
  free(l->body);
  free(l->ctype);
  free_strings(l->headers);
  free(l);
}

/* Moves the count of answers in flight by delta, integrating the count
 * it leaves over the time it held. */
static void in_flight_move(sim_t *sim, long delta) {
  uint64_t now = uv_hrtime() / 1000;
  if (sim->in_flight_since_us != 0)
    sim->in_flight_area_us +=
        (uint64_t)sim->in_flight * (now - sim->in_flight_since_us);
  sim->in_flight_since_us = now;
  sim->in_flight += delta;
  if (sim->in_flight > sim->max_in_flight)
    sim->max_in_flight = sim->in_flight;
}

/* An answer leaves the count in flight as it is sent, not when its timer's
 * close callback runs: a worker that has its answer may send its next
 * call within the same loop turn, and that call must not be counted
 * alongside the one it follows. */
static void on_later(uv_timer_t *t) {
  later_t *l = t->data;
  in_flight_move(l->sim, -1);
  pt_httpd_respond(l->req, l->status, l->ctype, l->body, l->len,
                   (const char *const *)l->headers);
  uv_close((uv_handle_t *)t, on_later_closed);
}

static char *dup_bytes(const char *s, size_t len) {
  char *d = malloc(len + 1);
  if (d != NULL) {
    if (len > 0)
      memcpy(d, s, len);
    d[len] = '\0';
  }
  return d;
}

void pt_sim_respond(pt_sim_t *sim, pt_httpd_req_t *req, int status,
                    const char *content_type, const char *body, size_t len,
                    const char *const *headers, int delay_ms) {
  later_t *l = delay_ms > 0 ? calloc(1, sizeof *l) : NULL;
  int n = 0, ok = l != NULL;
  while (headers != NULL && headers[n] != NULL)
    n++;
  if (ok) {
    l->body = dup_bytes(body, len);
    l->ctype = content_type ? dup_bytes(content_type, strlen(content_type))
                            : NULL;
    l->headers = calloc((size_t)n + 1, sizeof *l->headers);
    ok = l->body != NULL && (content_type == NULL || l->ctype != NULL) &&
         l->headers != NULL;
    for (int i = 0; ok && i < n; i++)
      ok = (l->headers[i] = dup_bytes(headers[i], strlen(headers[i]))) != NULL;
  }
  if (!ok) {
    /* Now rather than never (no delay asked, or out of memory). */
    if (l != NULL) {
      free(l->body);
      free(l->ctype);
      free_strings(l->headers);
      free(l);
    }
    pt_httpd_respond(req, status, content_type, body, len, headers);
    return;
  }
  l->sim = sim;
  l->req = req;
  l->status = status;
  l->len = len;
  in_flight_move(sim, +1);
  l->next = sim->laters;
  if (l->next != NULL)
    l->next->prev = l;
  sim->laters = l;
  uv_timer_init(sim->loop, &l->timer);
  l->timer.data = l;
  /* The loop's clock is the start of this turn, which a busy turn leaves
   * behind: the delay counts from now, as a channel's would. */
  uv_update_time(sim->loop);
  uv_timer_start(&l->timer, on_later, (uint64_t)delay_ms, 0);
}

void pt_sim_answer_json(pt_sim_t *sim, pt_httpd_req_t *req, int status,
                        const bson_t *doc, int delay_ms) {
  size_t len;
  char *json = bson_as_relaxed_extended_json(doc, &len);
  pt_sim_respond(sim, req, status, "application/json", json, len, NULL,
                 delay_ms);
  bson_free(json);
}

void pt_sim_answer_error(pt_sim_t *sim, pt_httpd_req_t *req, int status,
                         const char *code, const char *message, int delay) {
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "code", code);
  BSON_APPEND_UTF8(&d, "message", message);
  pt_sim_answer_json(sim, req, status, &d, delay);
  bson_destroy(&d);
}

/* ---- small services for the dialects ---------------------------------- */

const pt_config_t *pt_sim_config(const pt_sim_t *sim) { return sim->cfg; }

int pt_sim_outage(const pt_sim_t *sim) { return sim->outage; }

int64_t pt_sim_channel_now_ms(const pt_sim_t *sim) {
  return pt_sim_now_ms() - sim->clock_behind_ms;
}

const char *pt_sim_state_name(pt_sim_state_t s) {
  static const char *const names[] = {
      [PT_SIM_NONE] = "NONE",       [PT_SIM_CREATED] = "CREATED",
      [PT_SIM_SCANNED] = "SCANNED", [PT_SIM_PAID] = "PAID",
      [PT_SIM_CLOSED] = "CLOSED"};
  return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "NONE";
}

uint64_t pt_sim_next_seq(pt_sim_t *sim) { return ++sim->seq; }

/* ---- the trade table and the buyer ------------------------------------ */

static int rule_latency(const sim_t *sim, const trade_t *t) {
  if (t != NULL && t->rule.has_latency)
    return t->rule.latency_ms;
  return sim->defrule.has_latency ? sim->defrule.latency_ms : sim->latency_ms;
}

static int rule_pay_after(const sim_t *sim, const trade_t *t) {
  if (t->rule.has_pay_after)
    return t->rule.pay_after_ms;
  return sim->defrule.has_pay_after ? sim->defrule.pay_after_ms
                                    : sim->pay_after_ms;
}

static int rule_withhold(const sim_t *sim, const trade_t *t) {
  if (t->rule.has_withhold)
    return t->rule.withhold;
  return sim->defrule.has_withhold && sim->defrule.withhold;
}

static int rule_dups(const sim_t *sim, const trade_t *t) {
  if (t->rule.has_dups)
    return t->rule.dups;
  return sim->defrule.has_dups ? sim->defrule.dups : 0;
}

int pt_sim_latency(const pt_sim_t *sim, const pt_sim_trade_t *t) {
  return rule_latency(sim, (const trade_t *)t);
}

static void stop_pay_timer(trade_t *t) {
  if (t->pay_timer_on)
    uv_timer_stop(&t->pay_timer);
}

/* Closes an unpaid trade whose expiry has passed by the channel's clock,
 * as the channels do. */
static void refresh(const sim_t *sim, trade_t *t) {
  if ((t->pub.state == PT_SIM_CREATED || t->pub.state == PT_SIM_SCANNED) &&
      t->pub.expire_ms > 0 && pt_sim_channel_now_ms(sim) >= t->pub.expire_ms) {
    t->pub.state = PT_SIM_CLOSED;
    stop_pay_timer(t);
  }
}

static trade_t *find(sim_t *sim, const char *no) {
  trade_t *t;
  HASH_FIND_STR(sim->trades, no, t);
  if (t != NULL)
    refresh(sim, t);
  return t;
}

/* Finds or adds the trade; NULL only when out of memory. */
static trade_t *trade_get(sim_t *sim, const char *no) {
  trade_t *t = find(sim, no);
  if (t != NULL)
    return t;
  t = calloc(1, sizeof *t);
  if (t == NULL)
    return NULL;
  snprintf(t->pub.no, sizeof t->pub.no, "%s", no);
  t->sim = sim;
  t->fail_left = sim->defrule.has_fail ? sim->defrule.fail_times : 0;
  HASH_ADD_KEYPTR(hh, sim->trades, t->pub.no, strlen(t->pub.no), t);
  return t;
}

pt_sim_trade_t *pt_sim_trade_get(pt_sim_t *sim, const char *no) {
  trade_t *t = trade_get(sim, no);
  return t != NULL ? &t->pub : NULL;
}

int pt_sim_lost(pt_sim_trade_t *pub) {
  trade_t *t = (trade_t *)pub;
  if (t == NULL || t->lost_left <= 0)
    return 0;
  t->lost_left--;
  return 1;
}

void pt_sim_trade_fail_times(pt_sim_trade_t *t, int n) {
  ((trade_t *)t)->fail_left = n;
}

pt_sim_trade_t *pt_sim_trade_find(pt_sim_t *sim, const char *no) {
  trade_t *t = find(sim, no);
  return t != NULL ? &t->pub : NULL;
}

pt_sim_trade_t *pt_sim_trade_find_by_trade_no(pt_sim_t *sim,
                                              const char *trade_no) {
  trade_t *t, *tmp;
  HASH_ITER(hh, sim->trades, t, tmp) {
    if (t->pub.trade_no[0] != '\0' && strcmp(t->pub.trade_no, trade_no) == 0) {
      refresh(sim, t);
      return &t->pub;
    }
  }
  return NULL;
}

static double rnd(sim_t *sim) {
  sim->rng = sim->rng * 1103515245u + 12345u;
  return (double)((sim->rng >> 8) & 0xffffff) / (double)0x1000000;
}

int pt_sim_create_count(pt_sim_t *sim, pt_sim_trade_t *pub) {
  trade_t *t = (trade_t *)pub;
  t->pub.create_calls++;
  sim->create_calls++;
  if (t->pub.state == PT_SIM_NONE)
    return 0;
  /* A correct client never sends it (it queries first), so it is counted
   * apart. */
  t->pub.creates_after_created++;
  sim->creates_after_created++;
  return 1;
}

int pt_sim_create_fails(pt_sim_t *sim, pt_sim_trade_t *pub) {
  trade_t *t = (trade_t *)pub;
  if (sim->outage)
    return 1;
  if (t->fail_left > 0) {
    t->fail_left--;
    return 1;
  }
  return sim->error_rate > 0 && rnd(sim) < sim->error_rate;
}

pt_sim_create_t pt_sim_create_begin(pt_sim_t *sim, const char *no,
                                    pt_sim_trade_t **out) {
  trade_t *t = trade_get(sim, no);
  *out = t != NULL ? &t->pub : NULL;
  if (t == NULL)
    return PT_SIM_CREATE_FAIL;
  if (pt_sim_create_count(sim, &t->pub))
    return PT_SIM_CREATE_REPEAT;
  return pt_sim_create_fails(sim, &t->pub) ? PT_SIM_CREATE_FAIL
                                           : PT_SIM_CREATE_NEW;
}

static void trade_pay(sim_t *sim, trade_t *t);

static void on_pay_timer(uv_timer_t *h) {
  trade_t *t = h->data;
  trade_pay(t->sim, t);
}

/* Arms (or, with -1, disarms) the buyer's payment of an unpaid trade. */
static void arm_pay(sim_t *sim, trade_t *t, int after_ms) {
  stop_pay_timer(t);
  if (after_ms < 0 || sim->stopping)
    return;
  if (!t->pay_timer_on) {
    uv_timer_init(sim->loop, &t->pay_timer);
    t->pay_timer.data = t;
    t->pay_timer_on = 1;
  }
  uv_timer_start(&t->pay_timer, on_pay_timer, (uint64_t)after_ms, 0);
}

void pt_sim_trade_created(pt_sim_t *sim, pt_sim_trade_t *pub) {
  trade_t *t = (trade_t *)pub;
  t->pub.state = PT_SIM_CREATED;
  t->pub.create_ok++;
  t->pub.created_ms = pt_sim_now_ms();
  arm_pay(sim, t, rule_pay_after(sim, t));
}

void pt_sim_count(pt_sim_t *sim, pt_sim_trade_t *t, pt_sim_call_t call) {
  if (call == PT_SIM_CALL_QUERY) {
    sim->query_calls++;
    if (t != NULL)
      t->query_calls++;
  } else {
    sim->close_calls++;
    if (t != NULL)
      t->close_calls++;
  }
}

void pt_sim_trade_close(pt_sim_t *sim, pt_sim_trade_t *pub) {
  trade_t *t = (trade_t *)pub;
  (void)sim;
  if (t->pub.state == PT_SIM_CREATED || t->pub.state == PT_SIM_SCANNED) {
    t->pub.state = PT_SIM_CLOSED;
    stop_pay_timer(t);
  }
}

/* ---- notifications ---------------------------------------------------- */

static void notify_send(sim_t *sim, trade_t *t);

static void on_notify_timer(uv_timer_t *h) {
  trade_t *t = h->data;
  notify_send(t->sim, t);
}

/* After an attempt: the next resend, the next duplicate, or the end. */
static void notify_next(sim_t *sim, trade_t *t, int acked) {
  int64_t delay;
  if (sim->stopping)
    return;
  if (acked) {
    t->pub.callbacks_acked++;
    sim->callbacks_acked++;
    if (t->dups_left <= 0) {
      t->notify_busy = 0;
      return;
    }
    /* The same notification again, as when the channel lost the ack. */
    t->dups_left--;
    t->notify_attempt = 0;
    delay = sim->schedule[0];
  } else if (t->notify_attempt >= sim->nschedule) {
    PT_WARN("sim_notify_given_up", "out_trade_no=%s notify_id=%s attempts=%d",
            t->pub.no, t->notify_id, t->notify_attempt + 1);
    t->notify_busy = 0;
    return;
  } else {
    delay = sim->schedule[t->notify_attempt++];
  }
  if (!t->notify_timer_on) {
    uv_timer_init(sim->loop, &t->notify_timer);
    t->notify_timer.data = t;
    t->notify_timer_on = 1;
  }
  uv_timer_start(&t->notify_timer, on_notify_timer, (uint64_t)delay, 0);
}

static void on_notify_done(const pt_http_response_t *res, void *arg) {
  trade_t *t = arg;
  sim_t *sim = t->sim;
  if (sim->stopping)
    return;
  int ok = res->status == 0 &&
           sim->dialect->notify_acked(res->http_code, res->body, res->body_len);
  if (res->status != 0)
    PT_INFO("sim_notify_unreachable", "out_trade_no=%s notify_id=%s error=%s",
            t->pub.no, t->notify_id, pt_err_name(res->status));
  else
    PT_INFO("sim_notify_answer",
            "out_trade_no=%s notify_id=%s http=%ld acked=%d", t->pub.no,
            t->notify_id, res->http_code, ok);
  notify_next(sim, t, ok);
}

static void notify_send(sim_t *sim, trade_t *t) {
  pt_sim_notice_t n;
  if (sim->stopping)
    return;
  memset(&n, 0, sizeof n);
  int rc = sim->dialect->notify_build(sim, sim->dstate, &t->pub, t->notify_id,
                                      &n);
  if (rc == 0) {
    pt_http_request_t r = {.method = "POST",
                           .url = t->pub.notify_url,
                           .headers = (const char *const *)n.headers,
                           .body = n.body,
                           .body_len = n.len,
                           .timeout_ms = 5000};
    rc = pt_http_request(sim->http, &r, on_notify_done, t);
  }
  pt_sim_notice_clear(&n);
  if (rc != 0) {
    PT_WARN("sim_notify_failed", "out_trade_no=%s error=%s", t->pub.no,
            pt_err_name(rc));
    notify_next(sim, t, 0);
    return;
  }
  t->pub.callbacks_sent++;
  sim->callbacks_sent++;
}

/* The buyer pays: an unpaid trade becomes PAID and its notification goes
 * out unless withheld. Returns 0, PT_ENOTFOUND or PT_ECONFLICT (closed or
 * paid already). */
static int pay_now(sim_t *sim, trade_t *t) {
  refresh(sim, t);
  if (t->pub.state == PT_SIM_NONE)
    return PT_ENOTFOUND;
  if (t->pub.state != PT_SIM_CREATED && t->pub.state != PT_SIM_SCANNED)
    return PT_ECONFLICT;
  stop_pay_timer(t);
  t->pub.state = PT_SIM_PAID;
  t->pub.scanned = 1;
  t->pub.paid_ms = pt_sim_now_ms();
  t->pub.paid_count++;
  sim->paid++;
  PT_INFO("sim_paid", "out_trade_no=%s amount=%lld", t->pub.no,
          (long long)t->pub.amount);
  if (sim->dialect->notify_build == NULL || t->pub.notify_url[0] == '\0' ||
      rule_withhold(sim, t) || t->notify_busy || sim->stopping)
    return 0;
  t->notify_busy = 1;
  t->dups_left = rule_dups(sim, t);
  t->notify_attempt = 0;
  if (pt_crypto_random_alnum(t->notify_id, 32, NULL) != 0)
    snprintf(t->notify_id, sizeof t->notify_id, "%032llu",
             (unsigned long long)pt_sim_next_seq(sim));
  notify_send(sim, t);
  return 0;
}

static void trade_pay(sim_t *sim, trade_t *t) { (void)pay_now(sim, t); }

static const pt_sim_dialect_ops_t *const dialects[] = {
    &pt_sim_plain_dialect, &pt_sim_alipay_dialect, &pt_sim_wechat_dialect,
    NULL};

/* ---- control endpoints (/v1/sim/…: plain JSON, no signatures) ---------- */

/* A rule as it applies now; create_fail_times is what is left of it. */
static void rule_doc(const sim_t *sim, const trade_t *t, bson_t *d) {
  static const trade_t none; /* "*": the defaults alone */
  int fail = t != NULL ? t->fail_left
                       : (sim->defrule.has_fail ? sim->defrule.fail_times : 0);
  if (t == NULL)
    t = &none;
  BSON_APPEND_INT32(d, "pay_after_ms", rule_pay_after(sim, t));
  BSON_APPEND_UTF8(d, "callback", rule_withhold(sim, t) ? "withhold" : "send");
  BSON_APPEND_INT32(d, "duplicate_callbacks", rule_dups(sim, t));
  BSON_APPEND_INT32(d, "create_fail_times", fail);
  BSON_APPEND_INT32(d, "latency_ms", rule_latency(sim, t));
}

static void stats_doc(const sim_t *sim, const trade_t *t, bson_t *d) {
  const pt_sim_trade_t *p = &t->pub;
  BSON_APPEND_UTF8(d, "out_trade_no", p->no);
  BSON_APPEND_UTF8(d, "status", pt_sim_state_name(p->state));
  BSON_APPEND_UTF8(d, "trade_no", p->trade_no);
  BSON_APPEND_INT64(d, "amount", p->amount);
  BSON_APPEND_INT64(d, "creates", p->create_calls);
  BSON_APPEND_INT64(d, "create_calls", p->create_calls);
  BSON_APPEND_INT64(d, "create_ok", p->create_ok);
  BSON_APPEND_INT64(d, "creates_after_created", p->creates_after_created);
  BSON_APPEND_INT64(d, "queries", p->query_calls);
  BSON_APPEND_INT64(d, "query_calls", p->query_calls);
  BSON_APPEND_INT64(d, "closes", p->close_calls);
  BSON_APPEND_INT64(d, "callbacks_sent", p->callbacks_sent);
  BSON_APPEND_INT64(d, "callbacks_acked", p->callbacks_acked);
  BSON_APPEND_INT64(d, "paid_count", p->paid_count);
  BSON_APPEND_UTF8(d, "notify_url", p->notify_url);
  bson_t r;
  BSON_APPEND_DOCUMENT_BEGIN(d, "rule", &r);
  rule_doc(sim, t, &r);
  bson_append_document_end(d, &r);
}

static void handle_stats(sim_t *sim, pt_httpd_req_t *req) {
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "dialect", sim->dialect->name);
  BSON_APPEND_INT64(&d, "trades", (int64_t)HASH_COUNT(sim->trades));
  BSON_APPEND_INT64(&d, "create_calls", sim->create_calls);
  BSON_APPEND_INT64(&d, "creates_after_created", sim->creates_after_created);
  BSON_APPEND_INT64(&d, "query_calls", sim->query_calls);
  BSON_APPEND_INT64(&d, "close_calls", sim->close_calls);
  BSON_APPEND_INT64(&d, "paid", sim->paid);
  BSON_APPEND_INT64(&d, "callbacks_sent", sim->callbacks_sent);
  BSON_APPEND_INT64(&d, "callbacks_acked", sim->callbacks_acked);
  BSON_APPEND_INT64(&d, "in_flight", sim->in_flight);
  BSON_APPEND_INT64(&d, "max_in_flight", sim->max_in_flight);
  in_flight_move(sim, 0);
  BSON_APPEND_INT64(&d, "in_flight_area_us", (int64_t)sim->in_flight_area_us);
  BSON_APPEND_INT64(&d, "connections", pt_httpd_accepted(sim->httpd));
  pt_sim_answer_json(sim, req, 200, &d, 0);
  bson_destroy(&d);
}

/* Reads an integer field in [lo, hi]; 0 if absent, 1 if read, -1 if bad. */
static int int_field(const bson_iter_t *it, int lo, int hi, int *out) {
  if (!BSON_ITER_HOLDS_INT32(it) && !BSON_ITER_HOLDS_INT64(it))
    return -1;
  int64_t v = bson_iter_as_int64(it);
  if (v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 1;
}

/* The request's body as one JSON object into *doc (0), or a 400 answered
 * (-1). */
static int body_object(sim_t *sim, pt_httpd_req_t *req, bson_t *doc) {
  size_t blen;
  const char *body = pt_httpd_body(req, &blen);
  pt_input_error_t ie;
  if (pt_json_parse_object(body, blen, doc, &ie) == 0)
    return 0;
  pt_sim_answer_error(sim, req, 400, "PARAM_ERROR", ie.message, 0);
  return -1;
}

/* POST /v1/sim/clock {"behind_ms": N}: the channel's clock runs N ms
 * (0..86400000) behind ours from now on, as a real channel's may. It
 * decides when a trade's payment window has ended there: a trade paytask
 * closed locally at the end of the window it sent may still be paid at
 * the channel for N ms. */
static void handle_clock(sim_t *sim, pt_httpd_req_t *req) {
  bson_t doc;
  bson_iter_t it;
  if (body_object(sim, req, &doc) != 0)
    return;
  int64_t v = -1;
  int n = 0;
  bson_iter_init(&it, &doc);
  while (bson_iter_next(&it)) {
    n++;
    if (strcmp(bson_iter_key(&it), "behind_ms") == 0 &&
        (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it)))
      v = bson_iter_as_int64(&it);
  }
  bson_destroy(&doc);
  if (n != 1 || v < 0 || v > 86400000) {
    pt_sim_answer_error(sim, req, 400, "PARAM_ERROR",
                        "expected {\"behind_ms\": 0..86400000}", 0);
    return;
  }
  sim->clock_behind_ms = v;
  PT_INFO("sim_clock", "behind_ms=%lld", (long long)v);
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_INT64(&d, "behind_ms", v);
  pt_sim_answer_json(sim, req, 200, &d, 0);
  bson_destroy(&d);
}

/* POST /v1/sim/rules {"out_trade_no": NO or "*", "pay_after_ms": N,
 * "callback": "send"|"withhold", "duplicate_callbacks": N,
 * "create_fail_times": N, "latency_ms": N, "lost_times": N}: every field
 * but out_trade_no is optional; a rule adds to what was set before.
 * lost_times (a trade's own rule only): its next N queries and closes are
 * answered as if the channel did not know it, as a lagging replica of a
 * real one may. */
static void handle_rules(sim_t *sim, pt_httpd_req_t *req) {
  bson_t doc;
  bson_iter_t it;
  rule_t r;
  const char *no = NULL, *bad = NULL;
  int has_lost = 0, lost = 0;
  memset(&r, 0, sizeof r);
  if (body_object(sim, req, &doc) != 0)
    return;
  bson_iter_init(&it, &doc);
  while (bad == NULL && bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (strcmp(k, "out_trade_no") == 0) {
      no = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : NULL;
      if (no == NULL || no[0] == '\0' || strlen(no) > PT_OUT_TRADE_NO_MAX)
        bad = k;
    } else if (strcmp(k, "pay_after_ms") == 0) {
      if ((r.has_pay_after = int_field(&it, -1, 86400000, &r.pay_after_ms)) <
          0)
        bad = k;
    } else if (strcmp(k, "callback") == 0) {
      const char *v = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : "";
      r.has_withhold = 1;
      r.withhold = strcmp(v, "withhold") == 0;
      if (!r.withhold && strcmp(v, "send") != 0)
        bad = k;
    } else if (strcmp(k, "duplicate_callbacks") == 0) {
      if ((r.has_dups = int_field(&it, 0, 100, &r.dups)) < 0)
        bad = k;
    } else if (strcmp(k, "create_fail_times") == 0) {
      if ((r.has_fail = int_field(&it, 0, 1000000, &r.fail_times)) < 0)
        bad = k;
    } else if (strcmp(k, "latency_ms") == 0) {
      if ((r.has_latency = int_field(&it, 0, 600000, &r.latency_ms)) < 0)
        bad = k;
    } else if (strcmp(k, "lost_times") == 0) {
      if ((has_lost = int_field(&it, 0, 1000000, &lost)) < 0)
        bad = k;
    } else {
      bad = k;
    }
  }
  if (bad == NULL && no != NULL && has_lost && strcmp(no, "*") == 0)
    bad = "lost_times (a trade's own rule only)";
  if (bad != NULL || no == NULL) {
    char msg[200];
    snprintf(msg, sizeof msg, "%s%s", bad ? "bad or unknown field: " : "",
             bad ? bad : "out_trade_no (a trade or \"*\") is required");
    bson_destroy(&doc);
    pt_sim_answer_error(sim, req, 400, "PARAM_ERROR", msg, 0);
    return;
  }
  trade_t *t = strcmp(no, "*") == 0 ? NULL : trade_get(sim, no);
  bson_destroy(&doc);
  rule_t *into = t != NULL ? &t->rule : &sim->defrule;
#define MERGE(has, f)                                                         \
  if (r.has) {                                                               \
    into->has = 1;                                                           \
    into->f = r.f;                                                           \
  }
  MERGE(has_pay_after, pay_after_ms)
  MERGE(has_withhold, withhold)
  MERGE(has_dups, dups)
  MERGE(has_fail, fail_times)
  MERGE(has_latency, latency_ms)
#undef MERGE
  if (t != NULL && r.has_fail)
    t->fail_left = r.fail_times;
  if (t != NULL && has_lost)
    t->lost_left = lost;
  /* A trade waiting for its buyer follows its new rule from now. */
  if (t != NULL && r.has_pay_after &&
      (t->pub.state == PT_SIM_CREATED || t->pub.state == PT_SIM_SCANNED))
    arm_pay(sim, t, r.pay_after_ms);
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "out_trade_no", no);
  rule_doc(sim, t, &d);
  pt_sim_answer_json(sim, req, 200, &d, 0);
  bson_destroy(&d);
}

/* GET /v1/sim/trades/{no}, POST /v1/sim/trades/{no}/pay and …/scan. */
static void handle_trade(sim_t *sim, pt_httpd_req_t *req, const char *rest,
                         int is_get, int is_post) {
  char no[PT_OUT_TRADE_NO_MAX + 1];
  const char *slash = strchr(rest, '/');
  const char *action = slash ? slash + 1 : NULL;
  size_t nlen = slash ? (size_t)(slash - rest) : strlen(rest);
  if (nlen == 0 || pt_sim_path_decode(rest, nlen, no, sizeof no) != 0 ||
      (action == NULL ? !is_get
                      : !is_post || (strcmp(action, "pay") != 0 &&
                                     strcmp(action, "scan") != 0))) {
    pt_sim_answer_error(sim, req, 404, "NOT_FOUND", "no such endpoint", 0);
    return;
  }
  trade_t *t = find(sim, no);
  if (t == NULL || (action != NULL && t->pub.state == PT_SIM_NONE)) {
    pt_sim_answer_error(sim, req, 404, "TRADE_NOT_EXIST", "no such trade", 0);
    return;
  }
  if (action != NULL && strcmp(action, "pay") == 0) {
    if (pay_now(sim, t) != 0) {
      pt_sim_answer_error(
          sim, req, 409,
          t->pub.state == PT_SIM_PAID ? "TRADE_PAID" : "TRADE_CLOSED",
          "the trade cannot be paid now", 0);
      return;
    }
  } else if (action != NULL) {
    if (t->pub.state != PT_SIM_CREATED && t->pub.state != PT_SIM_SCANNED) {
      pt_sim_answer_error(
          sim, req, 409,
          t->pub.state == PT_SIM_PAID ? "TRADE_PAID" : "TRADE_CLOSED",
          "the trade cannot be scanned now", 0);
      return;
    }
    t->pub.state = PT_SIM_SCANNED;
    t->pub.scanned = 1;
  }
  bson_t d = BSON_INITIALIZER;
  stats_doc(sim, t, &d);
  pt_sim_answer_json(sim, req, 200, &d, 0);
  bson_destroy(&d);
}

static void on_request(pt_httpd_req_t *req, void *arg) {
  sim_t *sim = arg;
  size_t mlen, plen;
  const char *m = pt_httpd_method(req, &mlen);
  const char *p = pt_httpd_path(req, &plen);
  char path[256];
  int is_post = mlen == 4 && memcmp(m, "POST", 4) == 0;
  int is_get = mlen == 3 && memcmp(m, "GET", 3) == 0;
  if (plen < 8 || memcmp(p, "/v1/sim/", 8) != 0) {
    if (is_get && plen == 8 && memcmp(p, "/healthz", 8) == 0)
      pt_httpd_respond(req, 200, "application/json", "{\"status\":\"ok\"}",
                       15, NULL);
    else
      sim->dialect->handle(sim, sim->dstate, req);
    return;
  }
  if (plen >= sizeof path) {
    pt_sim_answer_error(sim, req, 404, "NOT_FOUND", "no such endpoint", 0);
    return;
  }
  memcpy(path, p, plen);
  path[plen] = '\0';
  if (is_get && strcmp(path, "/v1/sim/stats") == 0) {
    handle_stats(sim, req);
  } else if (strncmp(path, "/v1/sim/trades/", 15) == 0) {
    handle_trade(sim, req, path + 15, is_get, is_post);
  } else if (is_post && strcmp(path, "/v1/sim/rules") == 0) {
    handle_rules(sim, req);
  } else if (is_post && strcmp(path, "/v1/sim/clock") == 0) {
    handle_clock(sim, req);
  } else if (is_post && strcmp(path, "/v1/sim/outage") == 0) {
    /* {"on": true} makes every create fail until {"on": false}. */
    size_t blen;
    const char *b = pt_httpd_body(req, &blen);
    sim->outage = memmem(b, blen, "true", 4) != NULL;
    bson_t d = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&d, "outage", sim->outage);
    pt_sim_answer_json(sim, req, 200, &d, 0);
    bson_destroy(&d);
  } else {
    pt_sim_answer_error(sim, req, 404, "NOT_FOUND", "no such endpoint", 0);
  }
}

/* ---- the process ------------------------------------------------------ */

static void on_signal(uv_signal_t *s, int signum) {
  sim_t *sim = s->data;
  PT_INFO("sim_stopping", "signal=%d", signum);
  sim->stopping = 1;
  uv_close((uv_handle_t *)&sim->sigterm, NULL);
  uv_close((uv_handle_t *)&sim->sigint, NULL);
  /* Held and delayed answers go out now, so their requests are freed. */
  for (later_t *l = sim->laters; l != NULL; l = l->next) {
    if (uv_is_closing((uv_handle_t *)&l->timer))
      continue;
    uv_timer_stop(&l->timer);
    in_flight_move(sim, -1);
    pt_httpd_respond(l->req, 503, "application/json", "{}", 2, NULL);
    uv_close((uv_handle_t *)&l->timer, on_later_closed);
  }
  trade_t *t, *tmp;
  HASH_ITER(hh, sim->trades, t, tmp) {
    if (t->pay_timer_on)
      uv_close((uv_handle_t *)&t->pay_timer, NULL);
    if (t->notify_timer_on)
      uv_close((uv_handle_t *)&t->notify_timer, NULL);
  }
  /* Notifications in flight are cancelled (their callbacks see stopping). */
  pt_http_client_destroy(sim->http);
  sim->http = NULL;
  pt_httpd_destroy(sim->httpd);
  sim->httpd = NULL;
}

/* "500,1000,2000": milliseconds, 1..86400000 each, at most PT_SCHEDULE_MAX. */
static int parse_schedule_ms(const char *s, int64_t *out, int *n) {
  *n = 0;
  while (*s != '\0') {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno != 0 || v < 1 || v > 86400000 ||
        *n >= PT_SCHEDULE_MAX || (*end != ',' && *end != '\0'))
      return -1;
    out[(*n)++] = v;
    s = *end == ',' ? end + 1 : end;
    if (*end == ',' && *s == '\0')
      return -1;
  }
  return *n > 0 ? 0 : -1;
}

/* Without --listen or a sim.listen of its own, a dialect listens where the
 * configuration's channel URL points (channel.alipay.gateway,
 * channel.wechat.base_url: by default the simulator itself), so that
 * `paytask sim --dialect alipay` is what the default configuration calls. */
static const char *default_listen(const pt_config_t *cfg, const char *dialect,
                                  char *buf, size_t len) {
  pt_config_t def;
  char host[128];
  int port;
  pt_config_defaults(&def);
  const char *url = strcmp(dialect, "alipay") == 0   ? cfg->alipay_gateway
                    : strcmp(dialect, "wechat") == 0 ? cfg->wechat_base_url
                                                     : NULL;
  if (url == NULL || strcmp(cfg->sim_listen, def.sim_listen) != 0 ||
      sscanf(url, "http://%127[0-9.]:%d", host, &port) != 2)
    return cfg->sim_listen;
  snprintf(buf, len, "%s:%d", host, port);
  return buf;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: paytask sim [--dialect plain|alipay|wechat] "
          "[--listen ADDR:PORT]\n"
          "                   [--latency-ms N] [--error-rate P] "
          "[--pay-after-ms N]\n"
          "                   [--notify-schedule-ms MS,MS,...] "
          "[--config FILE]\n"
          "  --pay-after-ms N   the buyer pays each trade N ms after it is "
          "created\n"
          "                     (default -1: only when told, POST "
          "/v1/sim/trades/{no}/pay)\n"
          "  --notify-schedule-ms  delays between notification resends "
          "(default 500,1000,2000,5000)\n");
}

int pt_sim_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"listen", required_argument, 0, 'l'},
      {"latency-ms", required_argument, 0, 'L'},
      {"error-rate", required_argument, 0, 'e'},
      {"config", required_argument, 0, 'c'},
      {"dialect", required_argument, 0, 'd'},
      {"pay-after-ms", required_argument, 0, 'p'},
      {"notify-schedule-ms", required_argument, 0, 'n'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  sim_t sim;
  pt_config_t cfg;
  pt_error_t err;
  const char *listen = NULL, *path = NULL, *dialect = NULL;
  const char *schedule = "500,1000,2000,5000";
  char *end, lbuf[160];
  int c, rc = 0;
  memset(&sim, 0, sizeof sim);
  sim.rng = 12345;
  sim.pay_after_ms = -1;
  while ((c = getopt_long(argc, argv, "l:L:e:c:d:p:n:h", opts, NULL)) != -1) {
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
    case 'd':
      dialect = optarg;
      break;
    case 'p':
      sim.pay_after_ms = (int)strtol(optarg, &end, 10);
      if (*end != '\0' || sim.pay_after_ms < -1 ||
          sim.pay_after_ms > 86400000) {
        fprintf(stderr, "paytask sim: --pay-after-ms takes -1..86400000\n");
        return 2;
      }
      break;
    case 'n':
      schedule = optarg;
      break;
    default:
      usage(c == 'h' ? stdout : stderr);
      return c == 'h' ? 0 : 2;
    }
  }
  if (parse_schedule_ms(schedule, sim.schedule, &sim.nschedule) != 0) {
    fprintf(stderr, "paytask sim: --notify-schedule-ms takes comma-separated "
                    "milliseconds (1..86400000, at most %d)\n",
            PT_SCHEDULE_MAX);
    return 2;
  }
  if (pt_config_load(&cfg, path, &err) != 0) {
    fprintf(stderr, "paytask sim: %s\n", err.message);
    return 2;
  }
  if (dialect == NULL)
    dialect = cfg.sim_dialect;
  for (int i = 0; dialects[i] != NULL; i++)
    if (strcmp(dialects[i]->name, dialect) == 0)
      sim.dialect = dialects[i];
  if (sim.dialect == NULL) {
    fprintf(stderr, "paytask sim: --dialect takes plain, alipay or wechat\n");
    return 2;
  }
  pt_log_setup((pt_log_level_t)pt_log_level_parse(cfg.log_level),
               PT_LOG_LOGFMT, "sim");
  sim.cfg = &cfg;
  if (sim.dialect->state_size > 0 &&
      (sim.dstate = calloc(1, sim.dialect->state_size)) == NULL) {
    fprintf(stderr, "paytask sim: out of memory\n");
    return 1;
  }
  if (sim.dialect->init != NULL &&
      sim.dialect->init(sim.dstate, &cfg, &err) != 0) {
    fprintf(stderr, "paytask sim: %s dialect: %s\n", sim.dialect->name,
            err.message);
    rc = 2;
    goto done;
  }
  char host[256];
  int port;
  if (listen == NULL)
    listen = default_listen(&cfg, sim.dialect->name, lbuf, sizeof lbuf);
  if (pt_config_hostport(listen, host, sizeof host, &port) != 0) {
    fprintf(stderr, "paytask sim: --listen takes ADDR:PORT\n");
    rc = 2;
    goto done;
  }
  sim.loop = malloc(sizeof *sim.loop);
  uv_loop_init(sim.loop);
  sim.http = pt_http_client_new(sim.loop, &err);
  pt_httpd_opts_t ho = {.host = host,
                        .port = port,
                        .max_body = 65536,
                        .handler = on_request,
                        .arg = &sim};
  sim.httpd = sim.http != NULL ? pt_httpd_new(sim.loop, &ho, &err) : NULL;
  if (sim.httpd == NULL) {
    fprintf(stderr, "paytask sim: %s\n", err.message);
    pt_http_client_destroy(sim.http);
    uv_run(sim.loop, UV_RUN_DEFAULT);
    rc = 1;
    goto done;
  }
  uv_signal_init(sim.loop, &sim.sigterm);
  uv_signal_init(sim.loop, &sim.sigint);
  sim.sigterm.data = sim.sigint.data = &sim;
  uv_signal_start(&sim.sigterm, on_signal, SIGTERM);
  uv_signal_start(&sim.sigint, on_signal, SIGINT);
  PT_INFO("sim_listening",
          "addr=%s:%d dialect=%s latency_ms=%d error_rate=%g pay_after_ms=%d",
          host, pt_httpd_port(sim.httpd), sim.dialect->name, sim.latency_ms,
          sim.error_rate, sim.pay_after_ms);
  uv_run(sim.loop, UV_RUN_DEFAULT);

done:
  if (sim.loop != NULL) {
    uv_loop_close(sim.loop);
    free(sim.loop);
  }
  trade_t *t, *tmp;
  HASH_ITER(hh, sim.trades, t, tmp) {
    HASH_DEL(sim.trades, t);
    free(t);
  }
  if (sim.dialect->cleanup != NULL)
    sim.dialect->cleanup(sim.dstate);
  free(sim.dstate);
  return rc;
}
