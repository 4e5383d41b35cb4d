/* pt_amqp against the RabbitMQ named by PAYTASK_AMQP_URI: publisher
 * confirms and manual-ack consumption on one loop, connection failures,
 * redelivery after a nack, and the callback rules of pt_amqp.h (a failed
 * call never calls back; a started one calls back exactly once). */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/pt_amqp.h"
#include "tests/support/pt_test.h"

static uv_loop_t loop;

static void loop_init(void) { cr_assert_eq(uv_loop_init(&loop), 0); }

TestSuite(amqp, .init = loop_init);

static const char *amqp_uri(void) {
  return pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ");
}

static int bytes_eq(amqp_bytes_t b, const char *s) {
  size_t n = strlen(s);
  return b.len == n && (n == 0 || memcmp(b.bytes, s, n) == 0);
}

/* Setup hooks (thread pool) */

/* A durable queue that RabbitMQ drops after five idle minutes, so that a
 * test killed before its cleanup leaves nothing behind for long. */
static int declare_durable(amqp_connection_state_t conn, void *arg,
                           pt_error_t *err) {
  amqp_table_entry_t expires;
  amqp_table_t args;
  expires.key = amqp_cstring_bytes("x-expires");
  expires.value.kind = AMQP_FIELD_KIND_I32;
  expires.value.value.i32 = 300000;
  args.num_entries = 1;
  args.entries = &expires;
  amqp_queue_declare(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(arg), 0, 1,
                     0, 0, args);
  return pt_amqp_reply_error(amqp_get_rpc_reply(conn), "queue.declare", err);
}

/* An exclusive queue: the broker deletes it with the connection. */
static int declare_exclusive(amqp_connection_state_t conn, void *arg,
                             pt_error_t *err) {
  amqp_queue_declare(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(arg), 0, 0,
                     1, 0, amqp_empty_table);
  return pt_amqp_reply_error(amqp_get_rpc_reply(conn), "queue.declare", err);
}

static int delete_queue(amqp_connection_state_t conn, void *arg,
                        pt_error_t *err) {
  amqp_queue_delete(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(arg), 0, 0);
  return pt_amqp_reply_error(amqp_get_rpc_reply(conn), "queue.delete", err);
}

/* Deleting a queue: a second connection whose setup hook does the work. */

typedef struct {
  int calls;
  int status;
  char message[256];
} outcome_t;

/* Records a start callback's outcome in o. On failure it also keeps the
 * error and closes the handle, and returns 1: the callback returns. */
static int ready_failed(outcome_t *o, pt_amqp_t *c, int status,
                        const pt_error_t *err) {
  o->calls++;
  o->status = status;
  if (status >= 0)
    return 0;
  snprintf(o->message, sizeof o->message, "%s", err->message);
  pt_amqp_destroy(c);
  return 1;
}

/* A start callback that records the outcome and closes the handle. */
static void on_outcome(pt_amqp_t *c, int status, const pt_error_t *err,
                       void *arg) {
  outcome_t *o = arg;
  o->calls++;
  o->status = status;
  if (err != NULL)
    snprintf(o->message, sizeof o->message, "%s", err->message);
  pt_amqp_destroy(c);
}

static void start_delete_queue(const char *queue, outcome_t *o) {
  pt_amqp_opts_t opts = {.uri = amqp_uri(),
                         .setup = delete_queue,
                         .setup_arg = (void *)queue};
  pt_amqp_t *c = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_start(c, on_outcome, o), 0);
}

/* 1. Ten thousand persistent messages, confirmed and consumed */

#define BULK_N 10000
#define BULK_WINDOW 1000
#define BULK_PREFETCH 500

typedef struct {
  pt_amqp_t *amqp;
  char queue[96];
  outcome_t ready;
  outcome_t cleanup;
  int lost;
  int sent;
  int confirmed;
  int confirm_errors;
  int received;
  int duplicates;
  int malformed;
  int finished;
  uint64_t t0;
  uint64_t elapsed_ns;
  size_t max_unconfirmed;
  unsigned char seen[BULK_N];
} bulk_t;

static void bulk_pump(bulk_t *b);

static void bulk_maybe_finish(bulk_t *b) {
  if (b->finished || b->received < BULK_N || b->confirmed < BULK_N)
    return;
  b->finished = 1;
  b->elapsed_ns = uv_hrtime() - b->t0;
  /* Usually called from inside the deliver callback: destroy must cope. */
  pt_amqp_destroy(b->amqp);
  b->amqp = NULL;
  start_delete_queue(b->queue, &b->cleanup);
}

static void bulk_on_confirm(pt_amqp_t *c, int status, void *arg) {
  bulk_t *b = arg;
  b->confirmed++;
  if (status != 0)
    b->confirm_errors++;
  bulk_pump(b);
  bulk_maybe_finish(b);
}

/* Keeps at most BULK_WINDOW publishes unconfirmed: the broker, not the
 * publisher's memory, absorbs a slow disk. */
static void bulk_pump(bulk_t *b) {
  while (!b->finished && b->sent < BULK_N &&
         pt_amqp_unconfirmed(b->amqp) < BULK_WINDOW) {
    char body[16];
    pt_amqp_msg_t msg = {.persistent = 1, .message_id = body};
    int n = snprintf(body, sizeof body, "%d", b->sent);
    int rc = pt_amqp_publish(b->amqp, "", b->queue, body, (size_t)n, &msg,
                             bulk_on_confirm, b);
    cr_assert_eq(rc, 0, "publish %d: %s", b->sent, pt_err_name(rc));
    b->sent++;
    if (pt_amqp_unconfirmed(b->amqp) > b->max_unconfirmed)
      b->max_unconfirmed = pt_amqp_unconfirmed(b->amqp);
  }
}

static void bulk_on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                            void *arg) {
  bulk_t *b = arg;
  char text[16];
  char *end;
  long i;

  b->received++;
  cr_assert_eq(pt_amqp_ack(c, d->delivery_tag), 0);
  if (d->body_len == 0 || d->body_len >= sizeof text) {
    b->malformed++;
    goto out;
  }
  memcpy(text, d->body, d->body_len);
  text[d->body_len] = '\0';
  errno = 0;
  i = strtol(text, &end, 10);
  if (errno != 0 || *end != '\0' || i < 0 || i >= BULK_N ||
      d->props == NULL || !(d->props->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) ||
      d->props->delivery_mode != AMQP_DELIVERY_PERSISTENT ||
      !bytes_eq(d->props->content_type, "application/json") ||
      !bytes_eq(d->props->message_id, text) ||
      !bytes_eq(d->routing_key, b->queue)) {
    b->malformed++;
    goto out;
  }
  if (b->seen[i]++ > 0)
    b->duplicates++;
out:
  bulk_maybe_finish(b);
}

static void bulk_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  bulk_t *b = arg;
  if (ready_failed(&b->ready, c, status, err)) {
    b->amqp = NULL;
    return;
  }
  b->t0 = uv_hrtime();
  cr_assert_eq(pt_amqp_consume(c, b->queue, BULK_PREFETCH, bulk_on_deliver, b),
               0);
  bulk_pump(b);
}

static void bulk_on_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                         void *arg) {
  bulk_t *b = arg;
  b->lost++;
  cr_log_error("connection lost: %s", err->message);
  pt_amqp_destroy(c);
  b->amqp = NULL;
}

Test(amqp, ten_thousand_confirmed_and_consumed, .timeout = 180) {
  bulk_t *b = calloc(1, sizeof *b);
  pt_amqp_opts_t opts = {.uri = amqp_uri(),
                         .setup = declare_durable,
                         .on_lost = bulk_on_lost};
  int missing = 0;

  cr_assert_not_null(b);
  opts.setup_arg = b->queue;
  opts.lost_arg = b;
  pt_test_unique("pt-test-bulk", b->queue, sizeof b->queue);
  b->amqp = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(b->amqp);
  cr_assert_eq(pt_amqp_start(b->amqp, bulk_on_ready, b), 0);
  pt_test_run_loop(&loop, 150000, "RabbitMQ (10k publish/consume)");

  cr_assert_eq(b->ready.calls, 1);
  cr_assert_eq(b->ready.status, 0, "connect: %s", b->ready.message);
  cr_assert_eq(b->lost, 0);
  cr_assert_eq(b->sent, BULK_N);
  cr_assert_eq(b->confirmed, BULK_N, "confirms: %d", b->confirmed);
  cr_assert_eq(b->confirm_errors, 0);
  cr_assert_leq(b->max_unconfirmed, BULK_WINDOW);
  cr_assert_eq(b->received, BULK_N, "received: %d", b->received);
  cr_assert_eq(b->malformed, 0);
  cr_assert_eq(b->duplicates, 0);
  for (int i = 0; i < BULK_N; i++)
    missing += b->seen[i] != 1;
  cr_assert_eq(missing, 0);
  cr_assert_eq(b->cleanup.calls, 1);
  cr_assert_eq(b->cleanup.status, 0, "queue.delete: %s", b->cleanup.message);
  cr_log_info("%d messages published, confirmed, consumed and acked in "
              "%.3f s",
              BULK_N, (double)b->elapsed_ns / 1e9);
  pt_test_close_loop(&loop);
  free(b);
}

/* 2. Nothing listens: the start callback says so, quickly */

Test(amqp, connect_refused_reports_error, .timeout = 30) {
  outcome_t o = {0};
  pt_amqp_opts_t opts = {.uri = "amqp://guest:guest@127.0.0.1:1/",
                         .connect_timeout_ms = 2000};
  pt_amqp_t *c = pt_amqp_new(&loop, &opts);

  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_start(c, on_outcome, &o), 0);
  cr_assert_eq(pt_amqp_start(c, on_outcome, &o), PT_EBUSY);
  pt_test_run_loop(&loop, 10000, "connect to a closed port");
  cr_assert_eq(o.calls, 1);
  cr_assert_eq(o.status, PT_ECONNECT, "status %s", pt_err_name(o.status));
  cr_assert_neq(strstr(o.message, "127.0.0.1:1"), NULL, "message: %s",
                o.message);
  cr_assert_eq(strstr(o.message, "guest"), NULL, "message leaks credentials");
  pt_test_close_loop(&loop);
}

/* 3. Calls made before the connection is ready fail and never call back */

typedef struct {
  outcome_t ready;
  int confirms;
  int ready_seen;
} early_t;

static void early_on_confirm(pt_amqp_t *c, int status, void *arg) {
  early_t *e = arg;
  e->confirms++;
}

static void early_on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                             void *arg) {}

static void early_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                           void *arg) {
  early_t *e = arg;
  e->ready_seen = pt_amqp_is_ready(c);
  on_outcome(c, status, err, &e->ready);
}

Test(amqp, publish_before_ready_fails_without_callback, .timeout = 30) {
  early_t e = {0};
  pt_amqp_opts_t opts = {.uri = amqp_uri()};
  pt_amqp_t *c = pt_amqp_new(&loop, &opts);

  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_is_ready(c), 0);
  cr_assert_eq(pt_amqp_publish(c, "", "q", "x", 1, NULL, early_on_confirm, &e),
               PT_ECLOSED);
  cr_assert_eq(pt_amqp_start(c, early_on_ready, &e), 0);
  /* Connecting is not connected either. */
  cr_assert_eq(pt_amqp_publish(c, "", "q", "x", 1, NULL, early_on_confirm, &e),
               PT_ECLOSED);
  cr_assert_eq(pt_amqp_consume(c, "q", 1, early_on_deliver, &e), PT_ECLOSED);
  cr_assert_eq(pt_amqp_ack(c, 1), PT_ECLOSED);
  cr_assert_eq(pt_amqp_unconfirmed(c), 0);
  pt_test_run_loop(&loop, 15000, "RabbitMQ connect");
  cr_assert_eq(e.ready.calls, 1);
  cr_assert_eq(e.ready.status, 0, "connect: %s", e.ready.message);
  cr_assert_eq(e.ready_seen, 1);
  cr_assert_eq(e.confirms, 0);
  pt_test_close_loop(&loop);
}

/* Destroying a connecting handle cancels the start callback at once, and
 * the thread-pool job's connection is closed without leaking. */
Test(amqp, destroy_while_connecting, .timeout = 30) {
  outcome_t o = {0};
  pt_amqp_opts_t opts = {.uri = amqp_uri()};
  pt_amqp_t *c = pt_amqp_new(&loop, &opts);

  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_start(c, on_outcome, &o), 0);
  pt_amqp_destroy(c);
  cr_assert_eq(o.calls, 1);
  cr_assert_eq(o.status, PT_ECANCELED);
  pt_test_run_loop(&loop, 15000, "RabbitMQ connect");
  cr_assert_eq(o.calls, 1);
  pt_test_close_loop(&loop);
}

/* 4. A nacked message is requeued and comes back marked redelivered */

typedef struct {
  pt_amqp_t *amqp;
  char queue[96];
  outcome_t ready;
  int lost;
  int confirms;
  int confirm_status;
  int deliveries;
  int redelivered[2];
  uint64_t tags[2];
  char body[2][32];
} nack_t;

static void nack_maybe_finish(nack_t *n) {
  if (n->deliveries == 2 && n->confirms == 1 && n->amqp != NULL) {
    pt_amqp_destroy(n->amqp);
    n->amqp = NULL;
  }
}

static void nack_on_confirm(pt_amqp_t *c, int status, void *arg) {
  nack_t *n = arg;
  n->confirms++;
  n->confirm_status = status;
  nack_maybe_finish(n);
}

static void nack_on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                            void *arg) {
  nack_t *n = arg;
  int i = n->deliveries++;
  cr_assert_lt(i, 2, "delivered more than twice");
  n->redelivered[i] = d->redelivered;
  n->tags[i] = d->delivery_tag;
  snprintf(n->body[i], sizeof n->body[i], "%.*s", (int)d->body_len,
           (const char *)d->body);
  if (i == 0)
    cr_assert_eq(pt_amqp_nack(c, d->delivery_tag, 1), 0);
  else
    cr_assert_eq(pt_amqp_ack(c, d->delivery_tag), 0);
  nack_maybe_finish(n);
}

static void nack_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  nack_t *n = arg;
  if (ready_failed(&n->ready, c, status, err)) {
    n->amqp = NULL;
    return;
  }
  cr_assert_eq(pt_amqp_consume(c, n->queue, 1, nack_on_deliver, n), 0);
  cr_assert_eq(pt_amqp_publish(c, "", n->queue, "retry me", 8, NULL,
                               nack_on_confirm, n),
               0);
}

static void nack_on_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                         void *arg) {
  nack_t *n = arg;
  n->lost++;
  cr_log_error("connection lost: %s", err->message);
  pt_amqp_destroy(c);
  n->amqp = NULL;
}

Test(amqp, nack_requeue_redelivers, .timeout = 30) {
  nack_t n = {0};
  pt_amqp_opts_t opts = {.uri = amqp_uri(),
                         .setup = declare_exclusive,
                         .setup_arg = n.queue,
                         .on_lost = nack_on_lost,
                         .lost_arg = &n};

  pt_test_unique("pt-test-nack", n.queue, sizeof n.queue);
  n.amqp = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(n.amqp);
  cr_assert_eq(pt_amqp_start(n.amqp, nack_on_ready, &n), 0);
  pt_test_run_loop(&loop, 20000, "RabbitMQ nack/redeliver");
  cr_assert_eq(n.ready.status, 0, "connect: %s", n.ready.message);
  cr_assert_eq(n.lost, 0);
  cr_assert_eq(n.confirms, 1);
  cr_assert_eq(n.confirm_status, 0);
  cr_assert_eq(n.deliveries, 2);
  cr_assert_eq(n.redelivered[0], 0);
  cr_assert_eq(n.redelivered[1], 1);
  cr_assert_neq(n.tags[0], n.tags[1]);
  cr_assert_str_eq(n.body[0], "retry me");
  cr_assert_str_eq(n.body[1], "retry me");
  pt_test_close_loop(&loop);
}

/* A broker-side error after ready (consuming a queue that does not exist)
 * is reported once to on_lost, after the pending confirm was settled, and
 * the same handle connects again. */

typedef struct {
  pt_amqp_t *amqp;
  outcome_t ready;
  int lost;
  int lost_status;
  char lost_message[256];
  int ready_in_lost;
  int confirms;
  int confirms_at_lost;
  int restart_rc;
} lost_t;

static void lost_on_confirm(pt_amqp_t *c, int status, void *arg) {
  lost_t *l = arg;
  l->confirms++;
  cr_assert(status == 0 || status == PT_ECLOSED, "confirm %s",
            pt_err_name(status));
}

static void lost_on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                            void *arg) {}

static void lost_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  lost_t *l = arg;
  char queue[96];
  l->ready.calls++;
  l->ready.status = status;
  if (status < 0 || l->ready.calls == 2) {
    if (err != NULL)
      snprintf(l->ready.message, sizeof l->ready.message, "%s", err->message);
    pt_amqp_destroy(c);
    return;
  }
  pt_test_unique("pt-test-missing", queue, sizeof queue);
  cr_assert_eq(pt_amqp_publish(c, "", queue, "{}", 2, NULL, lost_on_confirm, l),
               0);
  cr_assert_eq(pt_amqp_consume(c, queue, 1, lost_on_deliver, l), 0);
}

static void lost_on_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                         void *arg) {
  lost_t *l = arg;
  l->lost++;
  l->lost_status = status;
  snprintf(l->lost_message, sizeof l->lost_message, "%s", err->message);
  l->ready_in_lost = pt_amqp_is_ready(c);
  l->confirms_at_lost = l->confirms;
  l->restart_rc = pt_amqp_start(c, lost_on_ready, l);
}

Test(amqp, broker_error_reports_lost_then_reconnects, .timeout = 30) {
  lost_t l = {0};
  pt_amqp_opts_t opts = {
      .uri = amqp_uri(), .on_lost = lost_on_lost, .lost_arg = &l};

  l.amqp = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(l.amqp);
  cr_assert_eq(pt_amqp_start(l.amqp, lost_on_ready, &l), 0);
  pt_test_run_loop(&loop, 20000, "RabbitMQ channel error");
  cr_assert_eq(l.lost, 1);
  cr_assert_eq(l.lost_status, PT_EBROKER);
  cr_assert_neq(strstr(l.lost_message, "404"), NULL, "lost: %s",
                l.lost_message);
  cr_assert_eq(l.ready_in_lost, 0);
  cr_assert_eq(l.confirms_at_lost, 1);
  cr_assert_eq(l.confirms, 1);
  cr_assert_eq(l.restart_rc, 0);
  cr_assert_eq(l.ready.calls, 2);
  cr_assert_eq(l.ready.status, 0, "reconnect: %s", l.ready.message);
  pt_test_close_loop(&loop);
}

/* A body larger than frame_max arrives in several body frames and is
 * reassembled; headers and expiration make the trip too. */

#define BIG_LEN (3 * 131072 + 777)

typedef struct {
  pt_amqp_t *amqp;
  char queue[96];
  outcome_t ready;
  int lost;
  int heartbeat;
  int frame_max;
  int confirms;
  int confirm_status;
  int deliveries;
  int body_ok;
  int props_ok;
  unsigned char *body;
} big_t;

static int big_setup(amqp_connection_state_t conn, void *arg,
                     pt_error_t *err) {
  big_t *g = arg;
  /* Published to the loop by uv_queue_work's completion. */
  g->heartbeat = amqp_get_heartbeat(conn);
  g->frame_max = amqp_get_frame_max(conn);
  return declare_exclusive(conn, g->queue, err);
}

static void big_maybe_finish(big_t *g) {
  if (g->deliveries == 1 && g->confirms == 1 && g->amqp != NULL) {
    pt_amqp_destroy(g->amqp);
    g->amqp = NULL;
  }
}

static void big_on_confirm(pt_amqp_t *c, int status, void *arg) {
  big_t *g = arg;
  g->confirms++;
  g->confirm_status = status;
  big_maybe_finish(g);
}

static void big_on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                           void *arg) {
  big_t *g = arg;
  const amqp_basic_properties_t *p = d->props;
  g->deliveries++;
  g->body_ok = d->body_len == BIG_LEN && memcmp(d->body, g->body, BIG_LEN) == 0;
  g->props_ok = p != NULL && (p->_flags & AMQP_BASIC_HEADERS_FLAG) &&
                p->headers.num_entries == 1 &&
                bytes_eq(p->headers.entries[0].key, "x-attempt") &&
                p->headers.entries[0].value.kind == AMQP_FIELD_KIND_I32 &&
                p->headers.entries[0].value.value.i32 == 3 &&
                (p->_flags & AMQP_BASIC_EXPIRATION_FLAG) &&
                bytes_eq(p->expiration, "60000") &&
                bytes_eq(p->content_type, "application/octet-stream");
  cr_assert_eq(pt_amqp_ack(c, d->delivery_tag), 0);
  big_maybe_finish(g);
}

static void big_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                         void *arg) {
  big_t *g = arg;
  amqp_table_entry_t attempt;
  amqp_table_t headers;
  pt_amqp_msg_t msg = {.content_type = "application/octet-stream",
                       .expiration = "60000",
                       .headers = &headers};
  if (ready_failed(&g->ready, c, status, err)) {
    g->amqp = NULL;
    return;
  }
  attempt.key = amqp_cstring_bytes("x-attempt");
  attempt.value.kind = AMQP_FIELD_KIND_I32;
  attempt.value.value.i32 = 3;
  headers.num_entries = 1;
  headers.entries = &attempt;
  cr_assert_eq(pt_amqp_consume(c, g->queue, 10, big_on_deliver, g), 0);
  cr_assert_eq(pt_amqp_publish(c, "", g->queue, g->body, BIG_LEN, &msg,
                               big_on_confirm, g),
               0);
}

static void big_on_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                        void *arg) {
  big_t *g = arg;
  g->lost++;
  cr_log_error("connection lost: %s", err->message);
  pt_amqp_destroy(c);
  g->amqp = NULL;
}

Test(amqp, large_body_and_properties, .timeout = 30) {
  big_t g = {0};
  pt_amqp_opts_t opts = {.uri = amqp_uri(),
                         .setup = big_setup,
                         .setup_arg = &g,
                         .on_lost = big_on_lost,
                         .lost_arg = &g};

  g.body = malloc(BIG_LEN);
  cr_assert_not_null(g.body);
  for (size_t i = 0; i < BIG_LEN; i++)
    g.body[i] = (unsigned char)(i * 31 + i / 251);
  pt_test_unique("pt-test-big", g.queue, sizeof g.queue);
  g.amqp = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(g.amqp);
  cr_assert_eq(pt_amqp_start(g.amqp, big_on_ready, &g), 0);
  pt_test_run_loop(&loop, 20000, "RabbitMQ large message");
  cr_assert_eq(g.ready.status, 0, "connect: %s", g.ready.message);
  cr_assert_eq(g.heartbeat, 0);
  cr_assert_eq(g.frame_max, 131072);
  cr_assert_eq(g.lost, 0);
  cr_assert_eq(g.confirms, 1);
  cr_assert_eq(g.confirm_status, 0);
  cr_assert_eq(g.deliveries, 1);
  cr_assert(g.body_ok, "body differs after reassembly");
  cr_assert(g.props_ok, "properties differ");
  pt_test_close_loop(&loop);
  free(g.body);
}

/* A setup hook's failure reaches the start callback with its message, and
 * the half-made connection is closed (no leak, no handle left). */

static int declare_missing(amqp_connection_state_t conn, void *arg,
                           pt_error_t *err) {
  /* Passive: only checks that the queue exists; the broker closes the
   * channel with 404 when it does not. */
  amqp_queue_declare(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(arg), 1, 0,
                     0, 0, amqp_empty_table);
  return pt_amqp_reply_error(amqp_get_rpc_reply(conn), "queue.declare", err);
}

Test(amqp, setup_failure_reaches_ready, .timeout = 30) {
  outcome_t o = {0};
  char queue[96];
  pt_amqp_opts_t opts = {
      .uri = amqp_uri(), .setup = declare_missing, .setup_arg = queue};
  pt_amqp_t *c;

  pt_test_unique("pt-test-absent", queue, sizeof queue);
  c = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_start(c, on_outcome, &o), 0);
  pt_test_run_loop(&loop, 15000, "RabbitMQ setup failure");
  cr_assert_eq(o.calls, 1);
  cr_assert_eq(o.status, PT_EBROKER, "status %s", pt_err_name(o.status));
  cr_assert_neq(strstr(o.message, "404"), NULL, "message: %s", o.message);
  pt_test_close_loop(&loop);
}

/* A queue that refuses publishes beyond its length makes the broker nack
 * them: those confirms report PT_ENACK, the accepted one 0. */

static int declare_tiny(amqp_connection_state_t conn, void *arg,
                        pt_error_t *err) {
  amqp_table_entry_t e[2];
  amqp_table_t args;
  e[0].key = amqp_cstring_bytes("x-max-length");
  e[0].value.kind = AMQP_FIELD_KIND_I32;
  e[0].value.value.i32 = 1;
  e[1].key = amqp_cstring_bytes("x-overflow");
  e[1].value.kind = AMQP_FIELD_KIND_UTF8;
  e[1].value.value.bytes = amqp_cstring_bytes("reject-publish");
  args.num_entries = 2;
  args.entries = e;
  amqp_queue_declare(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(arg), 0, 0,
                     1, 0, args);
  return pt_amqp_reply_error(amqp_get_rpc_reply(conn), "queue.declare", err);
}

typedef struct {
  outcome_t ready;
  char queue[96];
  int status[3];
  int calls[3];
  int settled;
} tiny_t;

typedef struct {
  tiny_t *t;
  int i;
} tiny_ref_t;

static void tiny_on_confirm(pt_amqp_t *c, int status, void *arg) {
  tiny_ref_t *r = arg;
  r->t->calls[r->i]++;
  r->t->status[r->i] = status;
  if (++r->t->settled == 3)
    pt_amqp_destroy(c);
}

static tiny_ref_t tiny_refs[3];

static void tiny_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  tiny_t *t = arg;
  if (ready_failed(&t->ready, c, status, err))
    return;
  for (int i = 0; i < 3; i++) {
    tiny_refs[i].t = t;
    tiny_refs[i].i = i;
    cr_assert_eq(pt_amqp_publish(c, "", t->queue, "{}", 2, NULL,
                                 tiny_on_confirm, &tiny_refs[i]),
                 0);
  }
  cr_assert_eq(pt_amqp_unconfirmed(c), 3);
}

/* Runs a client whose setup declares t->queue (named from prefix) and
 * whose on_ready publishes three messages, until the loop ends; checks
 * that it connected and that each confirm ran once. */
static void run_three_confirms(tiny_t *t, pt_amqp_setup_fn setup,
                               const char *prefix, pt_amqp_ready_cb on_ready,
                               const char *what) {
  pt_amqp_opts_t opts = {.uri = amqp_uri(), .setup = setup,
                         .setup_arg = t->queue};
  pt_test_unique(prefix, t->queue, sizeof t->queue);
  pt_amqp_t *c = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_start(c, on_ready, t), 0);
  pt_test_run_loop(&loop, 15000, what);
  cr_assert_eq(t->ready.status, 0, "connect: %s", t->ready.message);
  for (int i = 0; i < 3; i++)
    cr_assert_eq(t->calls[i], 1, "confirm %d ran %d times", i, t->calls[i]);
}

Test(amqp, refused_publish_is_nacked, .timeout = 30) {
  tiny_t t = {0};
  run_three_confirms(&t, declare_tiny, "pt-test-tiny", tiny_on_ready,
                     "RabbitMQ reject-publish");
  cr_assert_eq(t.status[0], 0);
  cr_assert_eq(t.status[1], PT_ENACK);
  cr_assert_eq(t.status[2], PT_ENACK);
  pt_test_close_loop(&loop);
}

/* A mandatory message that no queue takes comes back from the broker:
 * its confirm reports PT_EUNROUTED, not success (a task published to a
 * deleted queue must not be answered 202). Without the flag the broker's
 * ack is all there is. */
static void publish_routed_and_not(pt_amqp_t *c, tiny_t *t,
                                   const char *routed_id,
                                   const char *unrouted_id) {
  char none[128];
  snprintf(none, sizeof none, "%s-no-such-queue", t->queue);
  pt_amqp_msg_t to_queue = {.message_id = routed_id, .mandatory = 1};
  pt_amqp_msg_t to_none = {.message_id = unrouted_id, .mandatory = 1};
  pt_amqp_msg_t no_id = {.mandatory = 1};
  cr_assert_eq(pt_amqp_publish(c, "", none, "{}", 2, &no_id, NULL, NULL),
               PT_EINVAL, "a mandatory publish needs its message_id");
  for (int i = 0; i < 3; i++) {
    tiny_refs[i].t = t;
    tiny_refs[i].i = i;
  }
  /* The returned one last: its ack drops the connection (to declare the
   * topology again), which would fail the publishes after it. */
  cr_assert_eq(pt_amqp_publish(c, "", t->queue, "{}", 2, &to_queue,
                               tiny_on_confirm, &tiny_refs[0]),
               0);
  cr_assert_eq(pt_amqp_publish(c, "", none, "{}", 2, NULL, tiny_on_confirm,
                               &tiny_refs[2]),
               0);
  cr_assert_eq(pt_amqp_publish(c, "", none, "{\"a task\":1}", 12, &to_none,
                               tiny_on_confirm, &tiny_refs[1]),
               0);
}

static void unrouted_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                              void *arg) {
  if (!ready_failed(&((tiny_t *)arg)->ready, c, status, err))
    publish_routed_and_not(c, arg, "m-0", "m-1");
}

/* One message_id on two routes, as a task's dead copy and an early forward
 * of it can have: the return names the route it came back from, and only
 * the publish on that route is reported unrouted. */
static void same_id_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                             void *arg) {
  if (!ready_failed(&((tiny_t *)arg)->ready, c, status, err))
    publish_routed_and_not(c, arg, "m-same", "m-same");
}

/* Three publishes, one of them returned: only its confirm says so. */
static void check_one_returned(pt_amqp_ready_cb on_ready) {
  tiny_t t = {0};
  run_three_confirms(&t, declare_exclusive, "pt-test-mandatory", on_ready,
                     "RabbitMQ mandatory publishes");
  cr_assert_eq(t.status[0], 0, "routed: %s", pt_err_name(t.status[0]));
  cr_assert_eq(t.status[1], PT_EUNROUTED, "unrouted: %s",
               pt_err_name(t.status[1]));
  cr_assert_eq(t.status[2], 0, "not mandatory: %s", pt_err_name(t.status[2]));
  pt_test_close_loop(&loop);
}

Test(amqp, a_mandatory_message_no_queue_takes_is_reported, .timeout = 30) {
  check_one_returned(unrouted_on_ready);
}

Test(amqp, a_return_is_matched_by_its_route_too, .timeout = 30) {
  check_one_returned(same_id_on_ready);
}

/* A backlog consumed without a prefetch limit arrives faster than one
 * readable event may handle (the drain budget): the rest must still be
 * drained, not stranded in librabbitmq's buffer. Cancelling the consumer
 * and consuming again works once the broker has confirmed the cancel. */

#define BACKLOG_N 3000

typedef struct {
  pt_amqp_t *amqp;
  char queue[96];
  outcome_t ready;
  int lost;
  int sent;
  int confirmed;
  int received;
  int cancelled;
  int busy_retries;
  int second_round;
  uv_timer_t retry;
} backlog_t;

static void backlog_on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                               void *arg);

static void backlog_retry(uv_timer_t *t) {
  backlog_t *b = t->data;
  int rc = pt_amqp_consume(b->amqp, b->queue, 0, backlog_on_deliver, b);
  if (rc == PT_EBUSY) { /* cancel-ok not in yet */
    b->busy_retries++;
    return;
  }
  cr_assert_eq(rc, 0, "consume again: %s", pt_err_name(rc));
  uv_close((uv_handle_t *)t, NULL);
  cr_assert_eq(pt_amqp_publish(b->amqp, "", b->queue, "last", 4, NULL, NULL,
                               NULL),
               0);
}

static void backlog_on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                               void *arg) {
  backlog_t *b = arg;
  cr_assert_eq(pt_amqp_ack(c, d->delivery_tag), 0);
  if (b->second_round) {
    cr_assert_eq(d->body_len, 4);
    pt_amqp_destroy(c);
    b->amqp = NULL;
    return;
  }
  if (++b->received < BACKLOG_N)
    return;
  cr_assert_eq(pt_amqp_cancel_consume(c), 0);
  cr_assert_eq(pt_amqp_cancel_consume(c), PT_EINVAL);
  cr_assert_eq(pt_amqp_consume(c, b->queue, 0, backlog_on_deliver, b),
               PT_EBUSY);
  b->cancelled = 1;
  b->second_round = 1;
  uv_timer_init(&loop, &b->retry);
  b->retry.data = b;
  uv_timer_start(&b->retry, backlog_retry, 5, 5);
}

static void backlog_on_confirm(pt_amqp_t *c, int status, void *arg) {
  backlog_t *b = arg;
  cr_assert_eq(status, 0);
  if (++b->confirmed == BACKLOG_N)
    cr_assert_eq(pt_amqp_consume(c, b->queue, 0, backlog_on_deliver, b), 0);
}

static void backlog_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                             void *arg) {
  backlog_t *b = arg;
  if (ready_failed(&b->ready, c, status, err)) {
    b->amqp = NULL;
    return;
  }
  for (; b->sent < BACKLOG_N; b->sent++)
    cr_assert_eq(pt_amqp_publish(c, "", b->queue, "{\"n\":1}", 7, NULL,
                                 backlog_on_confirm, b),
                 0);
}

static void backlog_on_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                            void *arg) {
  backlog_t *b = arg;
  b->lost++;
  cr_log_error("connection lost: %s", err->message);
  pt_amqp_destroy(c);
  b->amqp = NULL;
}

Test(amqp, backlog_drains_and_consume_restarts, .timeout = 60) {
  backlog_t b = {0};
  pt_amqp_opts_t opts = {.uri = amqp_uri(),
                         .setup = declare_exclusive,
                         .setup_arg = b.queue,
                         .on_lost = backlog_on_lost,
                         .lost_arg = &b};

  pt_test_unique("pt-test-backlog", b.queue, sizeof b.queue);
  b.amqp = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(b.amqp);
  cr_assert_eq(pt_amqp_start(b.amqp, backlog_on_ready, &b), 0);
  pt_test_run_loop(&loop, 40000, "RabbitMQ backlog");
  cr_assert_eq(b.ready.status, 0, "connect: %s", b.ready.message);
  cr_assert_eq(b.lost, 0);
  cr_assert_eq(b.confirmed, BACKLOG_N);
  cr_assert_eq(b.received, BACKLOG_N);
  cr_assert(b.cancelled);
  cr_assert_null(b.amqp, "the message published after the restart");
  pt_test_close_loop(&loop);
}

/* Destroying a ready handle settles every unconfirmed publish with
 * PT_ECANCELED before it returns; those callbacks may call in again. */

typedef struct {
  outcome_t ready;
  int calls;
  int cancelled;
  int republish_rc;
  int destroyed;
} pending_test_t;

static void pending_on_confirm(pt_amqp_t *c, int status, void *arg) {
  pending_test_t *p = arg;
  p->calls++;
  p->cancelled += status == PT_ECANCELED;
  p->republish_rc =
      pt_amqp_publish(c, "", "nowhere", "x", 1, NULL, pending_on_confirm, p);
  pt_amqp_destroy(c); /* a second destroy does nothing */
}

static void pending_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                             void *arg) {
  pending_test_t *p = arg;
  if (ready_failed(&p->ready, c, status, err))
    return;
  for (int i = 0; i < 5; i++)
    cr_assert_eq(pt_amqp_publish(c, "", "nowhere", "x", 1, NULL,
                                 pending_on_confirm, p),
                 0);
  pt_amqp_destroy(c);
  p->destroyed = 1;
}

Test(amqp, destroy_cancels_pending_confirms, .timeout = 30) {
  pending_test_t p = {0};
  pt_amqp_opts_t opts = {.uri = amqp_uri()};
  pt_amqp_t *c = pt_amqp_new(&loop, &opts);

  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_start(c, pending_on_ready, &p), 0);
  pt_test_run_loop(&loop, 15000, "RabbitMQ connect");
  cr_assert_eq(p.ready.status, 0, "connect: %s", p.ready.message);
  cr_assert(p.destroyed);
  cr_assert_eq(p.calls, 5);
  cr_assert_eq(p.cancelled, 5);
  cr_assert_eq(p.republish_rc, PT_ECLOSED);
  pt_test_close_loop(&loop);
}

/* A broker that confirms nothing (here: a memory alarm, which stops it
 * reading publishes) drops the connection after confirm_timeout_ms: the
 * publish fails with PT_ECLOSED and on_lost says why, instead of the
 * publish waiting for as long as the alarm lasts. */

typedef struct {
  outcome_t ready;
  int confirms, confirm_status;
  int lost, lost_status;
  char lost_message[256];
  pt_amqp_t *c;
  uv_timer_t watch; /* looks for connection.blocked */
  int saw_blocked, blocked_publish_rc;
} stall_t;

/* Once the broker has said the connection is blocked, a publish must be
 * refused at once (it would wait in librabbitmq's poll() on the loop). */
static void stall_watch(uv_timer_t *t) {
  stall_t *st = t->data;
  if (st->lost || !pt_amqp_is_blocked(st->c))
    return;
  st->saw_blocked = 1;
  st->blocked_publish_rc =
      pt_amqp_publish(st->c, "", "nowhere", "y", 1, NULL, NULL, NULL);
  uv_close((uv_handle_t *)t, NULL);
}

static void lift_alarm(void) {
  pt_rabbitmqctl("set_vm_memory_high_watermark 0.4");
}

static void stall_on_confirm(pt_amqp_t *c, int status, void *arg) {
  stall_t *st = arg;
  (void)c;
  st->confirms++;
  st->confirm_status = status;
}

static void stall_on_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  stall_t *st = arg;
  st->lost++;
  st->lost_status = status;
  snprintf(st->lost_message, sizeof st->lost_message, "%s", err->message);
  if (!uv_is_closing((uv_handle_t *)&st->watch))
    uv_close((uv_handle_t *)&st->watch, NULL);
  pt_amqp_destroy(c);
}

static void stall_on_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                           void *arg) {
  stall_t *st = arg;
  if (ready_failed(&st->ready, c, status, err))
    return;
  pt_rabbitmqctl("set_vm_memory_high_watermark absolute 1");
  cr_assert_eq(pt_amqp_publish(c, "", "nowhere", "x", 1, NULL,
                               stall_on_confirm, st),
               0);
  st->c = c;
  uv_timer_init(&loop, &st->watch);
  st->watch.data = st;
  uv_timer_start(&st->watch, stall_watch, 20, 20);
}

Test(amqp, a_broker_that_confirms_nothing_is_dropped, .timeout = 60,
     .fini = lift_alarm) {
  stall_t st = {0};
  pt_amqp_opts_t opts = {.uri = amqp_uri(),
                         .on_lost = stall_on_lost,
                         .lost_arg = &st,
                         .confirm_timeout_ms = 6000};
  pt_amqp_t *c = pt_amqp_new(&loop, &opts);
  cr_assert_not_null(c);
  cr_assert_eq(pt_amqp_start(c, stall_on_ready, &st), 0);
  pt_test_run_loop(&loop, 40000, "the unconfirmed publish");
  cr_assert_eq(st.ready.status, 0, "connect: %s", st.ready.message);
  cr_assert_eq(st.confirms, 1);
  cr_assert_eq(st.confirm_status, PT_ECLOSED);
  cr_assert_eq(st.lost, 1);
  cr_assert_eq(st.lost_status, PT_ETIMEDOUT, "lost: %s", st.lost_message);
  cr_assert_neq(strstr(st.lost_message, "confirmed no publish"), NULL, "%s",
                st.lost_message);
  cr_assert(st.saw_blocked, "the broker never said connection.blocked");
  cr_assert_eq(st.blocked_publish_rc, PT_EBUSY,
               "a publish while blocked must be refused, not written");
  pt_test_close_loop(&loop);
}

/* URIs (no server) */

Test(amqp, uri_check) {
  pt_error_t err;
  cr_assert_eq(pt_amqp_uri_check("amqp://guest:guest@127.0.0.1:5672/", &err),
               0);
  cr_assert_eq(pt_amqp_uri_check("amqp://localhost", NULL), 0);
  cr_assert_eq(pt_amqp_uri_check("amqp://u:p@h:5672/%2f", NULL), 0);
  cr_assert_eq(pt_amqp_uri_check("http://h/", &err), PT_EINVAL);
  cr_assert_eq(strstr(err.message, "http"), NULL, "message echoes the URI");
  cr_assert_eq(pt_amqp_uri_check("amqp://h:notaport/", NULL), PT_EINVAL);
  cr_assert_eq(pt_amqp_uri_check("amqps://h/", &err), PT_EINVAL);
  cr_assert_eq(pt_amqp_uri_check(NULL, NULL), PT_EINVAL);
  cr_assert_null(pt_amqp_new(&loop, &(pt_amqp_opts_t){.uri = NULL}));
  pt_amqp_destroy(NULL);
  pt_test_close_loop(&loop);
}
