#include "api/pt_api.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>
#include <unistd.h>

#include "api/pt_api_reply.h"
#include "core/pt_amqp.h"
#include "core/pt_crypto.h"
#include "core/pt_httpd.h"
#include "core/pt_id.h"
#include "core/pt_lease.h"
#include "core/pt_log.h"
#include "core/pt_metrics.h"
#include "core/pt_mongo.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "runner/pt_topology.h"
#include "tasks/pt_chan_util.h"
#include "tasks/pt_registry.h"

#define DEV_TOKEN "dev-token-change-me"
#define DEV_NOTIFY_SECRET "dev-notify-secret"

typedef struct waiter waiter_t;

typedef struct {
  uv_loop_t *loop;
  const pt_config_t *cfg;
  pt_httpd_t *httpd;
  pt_amqp_t *amqp;
  pt_redis_t *redis;
  pt_redis_t *sub; /* pub/sub: final states, for ?wait */
  pt_mongo_t *mongo;
  pt_idgen_t ids;
  pt_lease_t lease;
  uv_timer_t lease_timer, amqp_retry, stop_timer, redis_retry;
  uv_signal_t sigterm, sigint;
  waiter_t *waiters; /* by task id */
  /* queue depths for /metrics, read every 5 s on a thread-pool thread */
  uv_timer_t depth_timer;
  uv_work_t depth_work;
  int depth_busy;
  amqp_connection_state_t depth_conn; /* used only by the work function */
  pt_queue_depth_t depths[PT_TOPOLOGY_QUEUES];
  int ndepths;
  pt_metrics_t *metrics;
  size_t inflight;   /* requests not yet answered */
  int stopping;
  int exit_code; /* 1 after the node id lease was lost */
  /* The types a client may not cancel (",query,close,notify,"). */
  char internal_types[128];
  /* First submits whose submit script got no answer, to be withdrawn
   * (see remember_unanswered) */
  struct unanswered *unanswered;
  size_t nunanswered;
  size_t withdrawing; /* their abandon scripts in flight */
  uv_timer_t withdraw_timer;
} api_t;

/* A request in progress (submit, get, cancel). */
typedef struct op {
  api_t *api;
  pt_httpd_req_t *req;
  char id[21];
  pt_task_t task;
  int has_task;
  char idem_key[256];
  int has_idem;
  /* get, and submit with ?wait */
  int wait_s;
  int answered;
  int status_ok; /* HTTP status of a successful answer (200) */
  /* A submit with ?wait answers 202, not status_ok, when the task is not
   * final yet: PT_SUBMITTED when this request queued it (a failed read
   * answers the 202 of an accepted task), PT_REPEATED when it found the
   * task past PENDING (a failed read is an error: its state is unknown). */
  enum { PT_NOT_SUBMIT, PT_SUBMITTED, PT_REPEATED } pending_202;
  /* Why a submit is refused while the broker cannot take it (a literal). */
  const char *broker_refusal;
  bson_t mongo_doc;
  int mongo_found;
  /* When set, a task read (Redis, then MongoDB) goes here instead of to
   * the client. */
  void (*on_doc)(struct op *op, const bson_t *doc);
  int republished; /* a retried submit published its PENDING task again */
  int force;
  /* A replay that set its source's mark (pt:replays:{source}) to
   * task.replay_count: an error answer takes the mark back first. */
  int replay_marked;
  char client[PT_CLIENT_MAX + 1]; /* the token's client */
  int admin; /* the token has the admin scope: it sees every client's tasks */
  const pt_channel_ops_t *chan; /* a channel notification */
  pt_chan_notify_t note;
} op_t;

/* Waiters of one task id: GETs and submits holding with ?wait. */
typedef struct wait_entry {
  op_t *op;
  uv_timer_t timer;
  struct wait_entry *next;
  waiter_t *owner;
  /* The entry is freed when its timer is closed and its first read has
   * come back, whichever is last. */
  int reading, removed, closed;
} wait_entry_t;

struct waiter {
  char id[21];
  wait_entry_t *list;
  UT_hash_handle hh;
};

static op_t *op_new(api_t *api, pt_httpd_req_t *req) {
  op_t *op = calloc(1, sizeof *op);
  if (op == NULL)
    return NULL;
  op->api = api;
  op->req = req;
  op->status_ok = 200;
  api->inflight++;
  return op;
}

static void maybe_stop(api_t *api);

static void op_free(op_t *op) {
  api_t *api = op->api;
  if (op->has_task)
    pt_task_destroy(&op->task);
  if (op->mongo_found)
    bson_destroy(&op->mongo_doc);
  free(op);
  api->inflight--;
  maybe_stop(api);
}

static void unmark_replay(op_t *op, int status, const char *code,
                          const char *message);

static void op_error(op_t *op, int status, const char *code,
                     const char *message) {
  char labels[96];
  if (op->replay_marked) {
    unmark_replay(op, status, code, message); /* nothing was replayed */
    return;
  }
  snprintf(labels, sizeof labels, "status=\"%d\",code=\"%s\"", status, code);
  pt_metrics_inc(op->api->metrics, "paytask_api_errors_total",
                 "requests answered with an error, by status and code",
                 labels, 1);
  pt_reply_error(op->req, status, code, message);
  op_free(op);
}

/* ---- reading a task: Redis, then MongoDB ------------------------------ */

static void read_task(op_t *op);
static void reply_task(op_t *op, const bson_t *doc);

typedef struct {
  char id[21];
  bson_t doc;
  int found;
  const char *db;
} mongo_find_t;

static int mongo_find_work(mongoc_client_t *client, void *arg,
                           pt_error_t *err) {
  op_t *op = arg;
  bson_error_t e;
  bson_t filter = BSON_INITIALIZER;
  const bson_t *doc;
  mongoc_collection_t *c = mongoc_client_get_collection(
      client, pt_mongo_dbname(op->api->mongo), "tasks");
  BSON_APPEND_UTF8(&filter, "_id", op->id);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL,
                                                          NULL);
  int rc = 0;
  if (mongoc_cursor_next(cur, &doc)) {
    bson_copy_to(doc, &op->mongo_doc);
    op->mongo_found = 1;
  } else if (mongoc_cursor_error(cur, &e)) {
    rc = pt_error_set(err, PT_DOMAIN_MONGO, PT_EMONGO, "%s", e.message);
  }
  mongoc_cursor_destroy(cur);
  mongoc_collection_destroy(c);
  bson_destroy(&filter);
  return rc;
}

static void on_mongo_found(int status, const pt_error_t *err, void *arg) {
  op_t *op = arg;
  if (status != 0) {
    PT_ERROR("mongo_read_failed", "task_id=%s err=\"%s\"", op->id,
             err ? err->message : "");
    op_error(op, 503, "store_unavailable",
             "the task store (MongoDB) is unavailable; try again");
    return;
  }
  if (!op->mongo_found) {
    op_error(op, 404, "task_not_found", "no task has this id");
    return;
  }
  if (op->on_doc != NULL) {
    op->on_doc(op, &op->mongo_doc);
    return;
  }
  reply_task(op, &op->mongo_doc);
}

static void read_from_mongo(op_t *op) {
  if (pt_mongo_submit(op->api->mongo, mongo_find_work, on_mongo_found, op) !=
      0)
    op_error(op, 503, "store_unavailable", "the task store is unavailable");
}

static void waiter_remove(api_t *api, wait_entry_t *we);

/* ---- a pay task's trade ---------------------------------------------- */

typedef struct {
  op_t *op;
  bson_t *doc; /* bson_copy: a bson_t wants more alignment than malloc's */
} trade_read_t;

static void on_trade_hash(redisReply *reply, void *arg) {
  trade_read_t *tr = arg;
  op_t *op = tr->op;
  const char *v;
  if (reply != NULL && (v = pt_store_hash_field(reply, "status")) != NULL) {
    bson_t t;
    char ts[32];
    BSON_APPEND_DOCUMENT_BEGIN(tr->doc, "trade", &t);
    BSON_APPEND_UTF8(&t, "status", v);
    static const char *const strs[] = {"trade_no", "settled_by",
                                       "notify_status", "notify_task",
                                       "paid_after"};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
      if ((v = pt_store_hash_field(reply, strs[i])) != NULL && v[0])
        BSON_APPEND_UTF8(&t, strs[i], v);
    static const char *const times[] = {"settled_at", "expire_at"};
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++)
      if ((v = pt_store_hash_field(reply, times[i])) != NULL && v[0]) {
        pt_time_rfc3339(strtoll(v, NULL, 10), ts);
        BSON_APPEND_UTF8(&t, times[i], ts);
      }
    bson_append_document_end(tr->doc, &t);
  }
  pt_reply_doc(op->req, op->status_ok, tr->doc);
  bson_destroy(tr->doc);
  free(tr);
  op_free(op);
}

/* 1 if doc is a pay task on a channel that follows trades: only those
 * have a trade to show (the sim channel's, polled the most, do not). */
static int has_trade(const bson_t *doc) {
  bson_iter_t it;
  const pt_channel_ops_t *chan;
  if (!bson_iter_init_find(&it, doc, "type") || !BSON_ITER_HOLDS_UTF8(&it) ||
      strcmp(bson_iter_utf8(&it, NULL), "pay") != 0 ||
      !bson_iter_init_find(&it, doc, "channel") || !BSON_ITER_HOLDS_UTF8(&it))
    return 0;
  chan = pt_channel_find(bson_iter_utf8(&it, NULL));
  return chan != NULL && chan->follows_trades;
}

/* 1 if op's token may see the task doc: its own client's, or any with
 * the admin scope. A task that names no client is the default client's. */
static int visible_to(const op_t *op, const bson_t *doc) {
  bson_iter_t it;
  const char *c = "default";
  if (op->admin)
    return 1;
  if (bson_iter_init_find(&it, doc, "client") && BSON_ITER_HOLDS_UTF8(&it))
    c = bson_iter_utf8(&it, NULL);
  return strcmp(c, op->client) == 0;
}

/* Answers 404 and returns 1 when op's token may not see doc: another
 * client's task is not found, as an unknown id is (ids are easy to
 * guess). */
static int hidden_from(op_t *op, const bson_t *doc) {
  if (visible_to(op, doc))
    return 0;
  op_error(op, 404, "task_not_found", "no task has this id");
  return 1;
}

/* Answers a task read; a pay task's answer carries its trade, if any. */
static void reply_task(op_t *op, const bson_t *doc) {
  redisAsyncContext *ac = pt_redis_ctx(op->api->redis);
  trade_read_t *tr;
  if (hidden_from(op, doc))
    return;
  if (ac != NULL && has_trade(doc) && (tr = malloc(sizeof *tr)) != NULL) {
    tr->op = op;
    tr->doc = bson_copy(doc);
    if (pt_store_get_trade(ac, op->id, on_trade_hash, tr) == 0)
      return;
    bson_destroy(tr->doc);
    free(tr);
  }
  pt_reply_doc(op->req, op->status_ok, doc);
  op_free(op);
}

/* The 202 of an accepted task: what the api knows of it without a read. */
static void reply_accepted(op_t *op) {
  bson_t doc = BSON_INITIALIZER;
  pt_store_doc_pending(&op->task, &doc);
  pt_reply_doc(op->req, 202, &doc);
  bson_destroy(&doc);
  op_free(op);
}

static void on_task_hash(redisReply *reply, void *arg) {
  op_t *op = arg;
  bson_t doc = BSON_INITIALIZER;
  int final = 0;
  pt_error_t err;
  int rc = reply == NULL ? PT_EREDIS
                         : pt_store_doc_from_hash(reply, &doc, &final, &err);
  if (op->pending_202 == PT_SUBMITTED) {
    if (rc != 0) {
      /* A submit with ?wait whose read failed: the task was accepted all
       * the same, and the client must not take an error for a refusal. */
      bson_destroy(&doc);
      reply_accepted(op);
      return;
    }
    if (!final)
      op->status_ok = 202;
    reply_task(op, &doc);
    bson_destroy(&doc);
    return;
  }
  if (reply == NULL) {
    bson_destroy(&doc);
    op_error(op, 503, "store_unavailable",
             "the task cache (Redis) is unavailable; try again");
    return;
  }
  if (rc == PT_ENOTFOUND) {
    bson_destroy(&doc);
    read_from_mongo(op);
    return;
  }
  if (rc != 0) {
    bson_destroy(&doc);
    PT_ERROR("task_damaged", "task_id=%s err=\"%s\"", op->id, err.message);
    op_error(op, 500, "internal_error", "the task's record is damaged");
    return;
  }
  if (op->pending_202 == PT_REPEATED && !final)
    op->status_ok = 202;
  if (op->on_doc != NULL) {
    op->on_doc(op, &doc);
    bson_destroy(&doc);
    return;
  }
  reply_task(op, &doc);
  bson_destroy(&doc);
}

static void read_task(op_t *op) {
  redisAsyncContext *ac = pt_redis_ctx(op->api->redis);
  if (ac != NULL && pt_store_get(ac, op->id, on_task_hash, op) == 0)
    return;
  if (op->pending_202 == PT_SUBMITTED)
    reply_accepted(op);
  else
    op_error(op, 503, "store_unavailable", "the task cache is unavailable");
}

/* ---- long poll ---------------------------------------------------------- */

static void wait_entry_finish(wait_entry_t *we) {
  op_t *op = we->op;
  free(we);
  /* The final read answers the request. */
  read_task(op);
}

static void on_wait_closed(uv_handle_t *h) {
  wait_entry_t *we = h->data;
  we->closed = 1;
  if (!we->reading)
    wait_entry_finish(we);
}

static void waiter_remove(api_t *api, wait_entry_t *we) {
  waiter_t *w = we->owner;
  we->removed = 1;
  wait_entry_t **pp = &w->list;
  while (*pp != we)
    pp = &(*pp)->next;
  *pp = we->next;
  if (w->list == NULL) {
    HASH_DEL(api->waiters, w);
    free(w);
  }
  uv_timer_stop(&we->timer);
  uv_close((uv_handle_t *)&we->timer, on_wait_closed);
}

static void on_wait_timeout(uv_timer_t *t) {
  wait_entry_t *we = t->data;
  waiter_remove(we->op->api, we);
}

/* Wakes every request waiting for id. */
static void wake_waiters(api_t *api, const char *id) {
  waiter_t *w;
  HASH_FIND_STR(api->waiters, id, w);
  while (w != NULL) {
    wait_entry_t *we = w->list;
    int last = we->next == NULL;
    waiter_remove(api, we); /* frees w with its last entry */
    if (last)
      break;
  }
}

static void on_final_message(redisAsyncContext *ac, void *r, void *privdata) {
  api_t *api = privdata;
  redisReply *reply = r;
  (void)ac;
  if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 3 || reply->element[0]->type != REDIS_REPLY_STRING ||
      strcmp(reply->element[0]->str, "message") != 0 ||
      reply->element[2]->type != REDIS_REPLY_STRING)
    return;
  wake_waiters(api, reply->element[2]->str);
}

/* First reply of a GET with ?wait: answer now if final (or unknown),
 * otherwise wait for the pub/sub message or the timeout. The waiter was
 * registered before the read, so a final state written in between is not
 * missed. */
static void on_wait_hash(redisReply *reply, void *arg) {
  wait_entry_t *we = arg;
  op_t *op = we->op;
  bson_t doc = BSON_INITIALIZER;
  int final = 0;
  pt_error_t err;
  we->reading = 0;
  if (we->removed) {
    /* Woken or timed out meanwhile. */
    bson_destroy(&doc);
    if (we->closed)
      wait_entry_finish(we);
    return;
  }
  if (reply != NULL && pt_store_doc_from_hash(reply, &doc, &final, &err) == 0 &&
      !final) {
    bson_destroy(&doc);
    return; /* keep waiting */
  }
  bson_destroy(&doc);
  waiter_remove(op->api, we); /* answers through read_task */
}

static void start_wait(op_t *op) {
  api_t *api = op->api;
  waiter_t *w;
  wait_entry_t *we = calloc(1, sizeof *we);
  if (we == NULL) {
    read_task(op);
    return;
  }
  HASH_FIND_STR(api->waiters, op->id, w);
  if (w == NULL) {
    w = calloc(1, sizeof *w);
    if (w == NULL) {
      free(we);
      read_task(op);
      return;
    }
    memcpy(w->id, op->id, sizeof w->id);
    HASH_ADD_STR(api->waiters, id, w);
  }
  we->op = op;
  we->owner = w;
  we->next = w->list;
  w->list = we;
  uv_timer_init(api->loop, &we->timer);
  we->timer.data = we;
  uv_timer_start(&we->timer, on_wait_timeout, (uint64_t)op->wait_s * 1000, 0);
  redisAsyncContext *ac = pt_redis_ctx(api->redis);
  we->reading = 1;
  if (ac == NULL || pt_store_get(ac, op->id, on_wait_hash, we) != 0) {
    we->reading = 0;
    waiter_remove(api, we);
  }
}

/* 1 if the request asked to wait for the final state and the api is not
 * stopping (then it answers at once). */
static int will_wait(const op_t *op) {
  return op->wait_s > 0 && !op->api->stopping;
}

/* A submit with ?wait, first or repeated: the answer waits for the final
 * state (200) or the end of the wait (202 with the state then), so that
 * 200 always means final. */
static void wait_for_submit(op_t *op, int repeated) {
  op->pending_202 = repeated ? PT_REPEATED : PT_SUBMITTED;
  if (will_wait(op))
    start_wait(op);
  else
    read_task(op); /* the api is stopping: the state now, 202 if not final */
}

/* Answers with the task: once it is final if the request waits, at once
 * otherwise. */
static void read_task_maybe_waiting(op_t *op) {
  if (will_wait(op))
    start_wait(op);
  else
    read_task(op);
}

/* ---- handlers ------------------------------------------------------------ */

/* Finds the query parameter `name`, matched whole ("force" is not
 * "noforce"): returns 1 and sets *val and *vlen to its value (empty for
 * "name" and "name="), 0 when it is absent, -1 when it is given twice.
 * Values are taken as sent, not percent-decoded: the api's are digits and
 * words. */
static int query_param(const pt_httpd_req_t *req, const char *name,
                       const char **val, size_t *vlen) {
  size_t qlen, nlen = strlen(name);
  const char *q = pt_httpd_query(req, &qlen);
  int found = 0;
  *val = NULL;
  *vlen = 0;
  while (q != NULL) {
    const char *amp = memchr(q, '&', qlen);
    size_t n = amp ? (size_t)(amp - q) : qlen;
    if (n >= nlen && memcmp(q, name, nlen) == 0 &&
        (n == nlen || q[nlen] == '=')) {
      if (found++)
        return -1;
      *val = n == nlen ? q + n : q + nlen + 1;
      *vlen = n == nlen ? 0 : n - nlen - 1;
    }
    if (amp == NULL)
      break;
    qlen -= n + 1;
    q = amp + 1;
  }
  return found;
}

/* ?wait: absent is 0; otherwise 1 to 4 digits, at most max. */
static int parse_wait(const pt_httpd_req_t *req, int max, int *out) {
  const char *v;
  size_t n;
  int rc = query_param(req, "wait", &v, &n), w = 0;
  *out = 0;
  if (rc == 0)
    return 0;
  if (rc < 0 || n == 0 || n > 4)
    return -1;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    w = w * 10 + (v[i] - '0');
  }
  if (w > max)
    return -1;
  *out = w;
  return 0;
}

/* Reads ?wait into op->wait_s; answers 400 and returns -1 if it is bad. */
static int wait_param(op_t *op) {
  char msg[96];
  if (parse_wait(op->req, (int)op->api->cfg->api_max_wait, &op->wait_s) == 0)
    return 0;
  snprintf(msg, sizeof msg, "wait must be a whole number of seconds, 0 to %d",
           (int)op->api->cfg->api_max_wait);
  op_error(op, 400, "invalid_wait", msg);
  return -1;
}

static void handle_get(op_t *op) {
  if (wait_param(op) == 0)
    read_task_maybe_waiting(op);
}

/* cancel */
static void not_cancellable(op_t *op, const char *status) {
  char msg[128];
  snprintf(msg, sizeof msg, "the task is %s and can no longer be cancelled",
           status);
  op_error(op, 409, "task_not_cancellable", msg);
}

/* A task found in MongoDB only is final (synced, then evicted from Redis):
 * refused as it is while in Redis. */
static void on_cancel_evicted(op_t *op, const bson_t *doc) {
  bson_iter_t it;
  op->on_doc = NULL;
  if (hidden_from(op, doc))
    return;
  not_cancellable(op, bson_iter_init_find(&it, doc, "status") &&
                              BSON_ITER_HOLDS_UTF8(&it)
                          ? bson_iter_utf8(&it, NULL)
                          : "final");
}

static void on_cancelled(int status, pt_verdict_t v, const char *detail,
                         void *arg) {
  op_t *op = arg;
  if (status != 0) {
    op_error(op, 503, "store_unavailable", "the task cache is unavailable");
    return;
  }
  if (v == PT_V_OK) {
    PT_INFO("task_cancelled", "task_id=%s", op->id);
    read_task(op);
  } else if (v == PT_V_CONFLICT && strcmp(detail, "internal") == 0) {
    op_error(op, 409, "task_not_cancellable",
             "paytask schedules this task itself for a trade (its query, "
             "close or merchant notification); it cannot be cancelled");
  } else if (v == PT_V_CONFLICT) {
    not_cancellable(op, detail);
  } else {
    /* Not in Redis: either unknown (404) or final and evicted. */
    op->on_doc = on_cancel_evicted;
    read_from_mongo(op);
  }
}

static void handle_cancel(op_t *op) {
  redisAsyncContext *ac = pt_redis_ctx(op->api->redis);
  if (ac == NULL || pt_store_cancel(ac, op->id, pt_now_ms(),
                                    op->api->internal_types,
                                    op->admin ? NULL : op->client,
                                    on_cancelled, op) != 0)
    op_error(op, 503, "store_unavailable", "the task cache is unavailable");
}

/* submit */
static void accepted(op_t *op, int taken);
static void publish_task(op_t *op);
static void on_retried_doc(op_t *op, const bson_t *doc);

/* The confirm failed and nothing withdrew the task (why: "it could not be
 * withdrawn", "its record is gone"): the broker may hold it. */
static void outcome_unknown(op_t *op, const char *why) {
  char msg[256];
  snprintf(msg, sizeof msg,
           "the message broker did not confirm the task and %s; it may still "
           "run: retry with the same Idempotency-Key, or read the task, to "
           "learn its state",
           why);
  /* A replay that may have happened keeps its mark: run again, it is
   * answered "already replayed" instead of making a second task. */
  op->replay_marked = 0;
  op_error(op, 503, "submit_outcome_unknown", msg);
}

static void on_abandoned(int status, pt_verdict_t v, const char *detail,
                         void *arg) {
  op_t *op = arg;
  if (status != 0) {
    PT_ERROR("abandon_failed", "task_id=%s", op->id);
    outcome_unknown(op, "it could not be withdrawn");
    return;
  }
  if (v == PT_V_CONFLICT) {
    /* The confirm was lost but the broker had the task: a worker took it
     * (or a retry queued it, or it was cancelled by its id). It was
     * accepted. */
    PT_WARN("submit_confirm_lost_task_taken", "task_id=%s status=%s", op->id,
            detail);
    accepted(op, 1);
    return;
  }
  if (v == PT_V_NOTFOUND) {
    /* Gone from Redis with no trace of an end: nothing says whether it
     * reached the broker. */
    PT_ERROR("abandon_task_missing", "task_id=%s", op->id);
    outcome_unknown(op, "its record is gone");
    return;
  }
  op_error(op, 503, "broker_unavailable",
           "the message broker did not confirm the task; nothing was "
           "accepted, try again");
}

static void abandon(op_t *op) {
  redisAsyncContext *ac = pt_redis_ctx(op->api->redis);
  if (ac == NULL ||
      pt_store_abandon(ac, op->id, op->has_idem ? op->idem_key : NULL,
                       pt_now_ms(), "broker_unavailable",
                       "the broker did not confirm the task; it was not "
                       "queued",
                       on_abandoned, op) != 0)
    on_abandoned(PT_EREDIS, PT_V_OK, "", op);
}

/* A retry's publish that the broker did not confirm withdraws nothing:
 * an earlier submit of the same task may have been queued (and answered
 * 202). The task stays PENDING for the next retry. */
static void republish_failed(op_t *op) {
  op_error(op, 503, "broker_unavailable",
           "the message broker did not take the task again; it may have "
           "been queued by an earlier submit: retry with the same "
           "Idempotency-Key, or read the task, to learn its state");
}

static void on_published(pt_amqp_t *c, int status, void *arg) {
  op_t *op = arg;
  (void)c;
  if (status != 0) {
    PT_WARN("submit_unconfirmed", "task_id=%s err=\"%s\" retry=%d", op->id,
            pt_strerror(status), op->republished);
    if (op->republished)
      republish_failed(op);
    else
      abandon(op);
    return;
  }
  accepted(op, 0);
}

static void on_marked_queued(int status, pt_verdict_t v, const char *detail,
                             void *arg) {
  op_t *op = arg;
  (void)v;
  (void)detail;
  if (status != 0)
    PT_WARN("submit_mark_queued_failed", "task_id=%s", op->id);
  /* A retried submit answers as any repeat does: 200 with the task, or
   * with ?wait as a first submit does. */
  if (op->wait_s > 0)
    wait_for_submit(op, 0);
  else
    read_task(op);
}

/* The broker has the task: count it and answer. taken: a worker took it
 * already, so the answer is its state read back, not PENDING. */
static void accepted(op_t *op, int taken) {
  if (op->republished) {
    /* Marked queued first, so that the first submit, if its confirm fails
     * later, does not withdraw what this one queued. */
    redisAsyncContext *ac = pt_redis_ctx(op->api->redis);
    if (ac == NULL ||
        pt_store_mark_queued(ac, op->id, on_marked_queued, op) != 0)
      on_marked_queued(PT_EREDIS, PT_V_OK, "", op);
    return;
  }
  PT_DEBUG("task_submitted", "task_id=%s type=%s channel=%s", op->id,
           op->task.type, op->task.channel);
  char labels[64];
  snprintf(labels, sizeof labels, "type=\"%s\",channel=\"%s\"", op->task.type,
           op->task.channel);
  pt_metrics_inc(op->api->metrics, "paytask_tasks_submitted_total",
                 "tasks accepted (the broker confirmed them)", labels, 1);
  if (will_wait(op)) {
    wait_for_submit(op, 0);
    return;
  }
  if (taken) {
    op->pending_202 = PT_SUBMITTED;
    read_task(op);
    return;
  }
  reply_accepted(op);
}

/* ---- submits Redis did not answer ----------------------------------------
 *
 * A first submit whose submit script got no answer (Redis's connection
 * dropped once the command was sent) is answered 503, and nothing is
 * published; but the script may have run. Its task would then wait
 * PENDING for good, never queued, holding its out_trade_no (a new submit
 * of it answered 409) and its Idempotency-Key. So the api keeps the ids
 * of such submits and, once Redis answers again, withdraws each with the
 * abandon script: only a task still untouched (PENDING, never taken, not
 * queued by a retry with its key) becomes CANCELLED, which frees both. A
 * retry with the key that queued it first keeps it. Kept in this process
 * only: an api that stops with some left logs their ids. */

#define UNANSWERED_MAX 10000

typedef struct unanswered {
  struct unanswered *next;
  api_t *api;
  char id[21];
  char idem_key[256];
  int has_idem;
  /* a replay's: its source and the mark it set (see unmark_lua) */
  uint64_t replay_of;
  int replay_count;
} unanswered_t;

/* Takes the mark back only if it is still the one this replay set: DEL for
 * the first replay, DECR for a forced one, nothing if another replay has
 * marked the source since. */
static const char unmark_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
    "if ARGV[1] == '1' then return redis.call('DEL', KEYS[1]) end\n"
    "return redis.call('DECR', KEYS[1])\n";

/* Runs unmark_lua for the mark a replay of source replay_of set
 * (replay_count); cb MAY be NULL. */
static int send_unmark(redisAsyncContext *ac, uint64_t replay_of,
                       int replay_count, redisCallbackFn *cb, void *arg) {
  char source[21];
  pt_id_format(replay_of, source);
  return redisAsyncCommand(ac, cb, arg, "EVAL %s 1 pt:replays:%s %d",
                           unmark_lua, source, replay_count);
}

static void withdraw_unanswered(uv_timer_t *t);

static void unanswered_push(api_t *api, unanswered_t *u) {
  u->next = api->unanswered;
  api->unanswered = u;
  api->nunanswered++;
  if (!api->stopping && !uv_is_active((uv_handle_t *)&api->withdraw_timer))
    uv_timer_start(&api->withdraw_timer, withdraw_unanswered, 1000, 0);
}

static void remember_unanswered(op_t *op) {
  api_t *api = op->api;
  unanswered_t *u =
      api->nunanswered < UNANSWERED_MAX ? calloc(1, sizeof *u) : NULL;
  if (u == NULL) {
    PT_ERROR("submit_unanswered_not_kept", "task_id=%s note=\"the task may be "
             "recorded PENDING and never queued; cancel it (POST "
             "/v1/tasks/%s/cancel)\"", op->id, op->id);
    return;
  }
  u->api = api;
  memcpy(u->id, op->id, sizeof u->id);
  if (op->has_idem) {
    memcpy(u->idem_key, op->idem_key, sizeof u->idem_key);
    u->has_idem = 1;
  }
  if (op->replay_marked) {
    u->replay_of = op->task.replay_of;
    u->replay_count = op->task.replay_count;
  }
  PT_WARN("submit_unanswered", "task_id=%s note=\"Redis did not answer the "
          "submit script; if it recorded the task, it is withdrawn once "
          "Redis answers\"", u->id);
  unanswered_push(api, u);
}

static void on_unanswered_withdrawn(int status, pt_verdict_t v,
                                    const char *detail, void *arg) {
  unanswered_t *u = arg;
  api_t *api = u->api;
  api->withdrawing--;
  if (status != 0 && !api->stopping) {
    unanswered_push(api, u); /* tried again in a second */
    return;
  }
  if (status != 0) {
    PT_ERROR("submit_not_withdrawn", "task_id=%s note=\"the api stopped; the "
             "task may be recorded PENDING and never queued: cancel it\"",
             u->id);
  } else if (v == PT_V_OK) {
    PT_WARN("submit_withdrawn", "task_id=%s note=\"recorded although its "
            "submit was answered 503; withdrawn (CANCELLED), its "
            "out_trade_no and Idempotency-Key freed\"", u->id);
    /* A replay withdrawn: its mark goes too (taking it back when the 503
     * was answered failed with the connection), or the next replay of
     * its source would be answered "already replayed" although nothing
     * runs. */
    redisAsyncContext *ac = pt_redis_ctx(api->redis);
    if (u->replay_of != 0 && ac != NULL)
      send_unmark(ac, u->replay_of, u->replay_count, NULL, NULL);
  } else if (v == PT_V_CONFLICT) {
    PT_INFO("submit_unanswered_kept", "task_id=%s status=%s note=\"queued by "
            "a retry with its Idempotency-Key\"", u->id, detail);
  }
  /* PT_V_NOTFOUND: the script never ran; there is nothing to withdraw. */
  free(u);
  maybe_stop(api);
}

static void withdraw_unanswered(uv_timer_t *t) {
  api_t *api = t->data;
  redisAsyncContext *ac = pt_redis_ctx(api->redis);
  if (ac == NULL) { /* Redis still away: ask again in a second */
    uv_timer_start(&api->withdraw_timer, withdraw_unanswered, 1000, 0);
    return;
  }
  unanswered_t *list = api->unanswered;
  api->unanswered = NULL;
  api->nunanswered = 0;
  /* Held for the loop: a script that fails at once calls back here, and
   * while stopping, the last callback could otherwise close the api (and
   * free ac) before the rest of the list was sent. */
  api->withdrawing++;
  while (list != NULL) {
    unanswered_t *u = list;
    list = u->next;
    api->withdrawing++;
    if (pt_store_abandon(ac, u->id, u->has_idem ? u->idem_key : NULL,
                         pt_now_ms(), "store_unavailable",
                         "the task cache did not answer its submit, which was "
                         "answered 503; it was not queued",
                         on_unanswered_withdrawn, u) != 0)
      on_unanswered_withdrawn(PT_EREDIS, PT_V_OK, "", u);
  }
  api->withdrawing--;
  maybe_stop(api);
}

/* At the api's end: the submits not withdrawn, for an operator to cancel. */
static void drop_unanswered(api_t *api) {
  while (api->unanswered != NULL) {
    unanswered_t *u = api->unanswered;
    api->unanswered = u->next;
    PT_ERROR("submit_not_withdrawn", "task_id=%s note=\"the api stopped "
             "before Redis answered again; the task may be recorded PENDING "
             "and never queued: cancel it\"", u->id);
    free(u);
  }
  api->nunanswered = 0;
}

/* A submit whose Idempotency-Key is known: detail is the key's value,
 * "<sha256 of the body>:<task id>". The same body answers its task;
 * another is a conflict. */
static void repeat_of_key(op_t *op, const char *detail) {
  const char *colon = strchr(detail, ':');
  size_t blen;
  const char *body = pt_httpd_body(op->req, &blen);
  char hex[PT_CRYPTO_SHA256_HEX_LEN + 1];
  pt_crypto_sha256_hex(body, blen, hex);
  if (colon == NULL || (size_t)(colon - detail) != PT_CRYPTO_SHA256_HEX_LEN ||
      memcmp(detail, hex, PT_CRYPTO_SHA256_HEX_LEN) != 0 ||
      strlen(colon + 1) > 20) {
    op_error(op, 409, "idempotency_conflict",
             "this Idempotency-Key was used with a different body");
    return;
  }
  snprintf(op->id, sizeof op->id, "%s", colon + 1);
  op->on_doc = on_retried_doc;
  read_task(op);
}

static void on_submitted(int status, pt_verdict_t v, const char *detail,
                         void *arg) {
  op_t *op = arg;
  if (status != 0) {
    remember_unanswered(op);
    op_error(op, 503, "store_unavailable",
             "the task cache (Redis) is unavailable; nothing was accepted");
    return;
  }
  if (v == PT_V_DUP) {
    repeat_of_key(op, detail);
    return;
  }
  if (v == PT_V_TAKEN) {
    char msg[PT_OUT_TRADE_NO_MAX + 512];
    snprintf(msg, sizeof msg,
             "out_trade_no \"%s\" is already used on channel %s by pay task "
             "%.20s; to retry a submit, send it again with the same "
             "Idempotency-Key; if that task is one whose submit was "
             "answered 5xx and it is to run no more, cancel it "
             "(POST /v1/tasks/%.20s/cancel) and submit again; for a new "
             "trade, use a new out_trade_no",
             op->task.out_trade_no, op->task.channel, detail, detail);
    op_error(op, 409, "out_trade_no_in_use", msg);
    return;
  }
  if (v != PT_V_OK) {
    op_error(op, 500, "internal_error", "task id collision; try again");
    return;
  }
  publish_task(op);
}

/* A retried submit (same Idempotency-Key and body) whose task is still
 * PENDING: its first submit may never have reached the broker (the client
 * got no answer, or a 503 whose Redis reply was lost), so the message is
 * published again, and the answer waits for the broker's confirm as a
 * first submit's does. A second copy is harmless: the start script runs
 * one copy of an attempt. Past PENDING, a worker took it: the answer is
 * the task. */
static int doc_is_final(const bson_t *doc) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "status") || !BSON_ITER_HOLDS_UTF8(&it))
    return 0;
  int st = pt_status_parse(bson_iter_utf8(&it, NULL));
  return st >= 0 && pt_status_final((pt_status_t)st);
}

static void on_retried_doc(op_t *op, const bson_t *doc) {
  bson_iter_t it;
  uint64_t id;
  op->on_doc = NULL;
  if (!bson_iter_init_find(&it, doc, "status") || !BSON_ITER_HOLDS_UTF8(&it) ||
      strcmp(bson_iter_utf8(&it, NULL), "PENDING") != 0 ||
      pt_id_parse(op->id, strlen(op->id), &id) != 0) {
    if (op->wait_s > 0 && !doc_is_final(doc))
      wait_for_submit(op, 1);
    else
      reply_task(op, doc);
    return;
  }
  op->task.id = id;
  pt_id_format(op->task.id, op->task.id_str);
  op->task.created_at_ms = pt_id_time_ms(op->task.id);
  op->republished = 1;
  publish_task(op);
}

static void publish_task(op_t *op) {
  size_t len;
  char *msg_body = pt_task_spec_json(&op->task, 1, &len);
  char mid[32];
  snprintf(mid, sizeof mid, "%s:1", op->id);
  /* Mandatory: a task no queue takes (the queue or its binding deleted)
   * is not answered 202. */
  pt_amqp_msg_t msg = {.persistent = 1, .message_id = mid, .mandatory = 1};
  int rc = pt_amqp_publish(op->api->amqp, PT_EXCHANGE_WORK, PT_ROUTE_TASK,
                           msg_body, len, &msg, on_published, op);
  bson_free(msg_body);
  if (rc != 0) {
    if (op->republished)
      republish_failed(op);
    else
      abandon(op);
  }
}

static int idem_key_ok(const char *k, size_t n) {
  if (n == 0 || n > 200)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (k[i] < 0x21 || k[i] > 0x7e)
      return 0;
  return 1;
}

static void submit_task(op_t *op, const char *body, size_t blen);

/* What the api checks of a parsed task, submitted or replayed, beyond its
 * fields: its channel and type (pt_registry_check) and its notify_url's
 * address (notify.allow_networks). */
static int task_refused(const op_t *op, pt_input_error_t *ie) {
  return pt_registry_check(&op->task, op->api->cfg, ie) != 0 ||
         pt_task_check_notify_url(&op->task, &op->api->cfg->notify_allow,
                                  ie) != 0;
}

/* Neither the broker nor Redis can answer: a repeat cannot be told from a
 * new submit. */
static void idem_unchecked(op_t *op) {
  op_error(op, 503, "store_unavailable",
           "the message broker cannot take tasks and the Idempotency-Key "
           "could not be checked (Redis); nothing new was accepted: send "
           "this again with the same key");
}

/* The broker cannot take a new task: a known key answers as a repeat
 * (a task still PENDING is published again, which fails and says so). */
static void on_idem_read(int status, pt_verdict_t v, const char *detail,
                         void *arg) {
  op_t *op = arg;
  if (status == 0 && v == PT_V_DUP)
    repeat_of_key(op, detail);
  else if (status == 0)
    op_error(op, 503, "broker_unavailable", op->broker_refusal);
  else
    idem_unchecked(op);
}

static void handle_submit(op_t *op) {
  api_t *api = op->api;
  pt_input_error_t ie;
  size_t blen, klen;
  const char *body = pt_httpd_body(op->req, &blen);
  const char *key = pt_httpd_header(op->req, "idempotency-key", &klen);

  if (wait_param(op) != 0)
    return;
  if (key != NULL) {
    /* Two keys: whichever a proxy in front took, the api would take the
     * first; a repeat could then be a new task. */
    if (pt_httpd_header_repeated(op->req, "idempotency-key")) {
      op_error(op, 400, "invalid_idempotency_key",
               "send one Idempotency-Key header, not several");
      return;
    }
    if (!idem_key_ok(key, klen)) {
      op_error(op, 400, "invalid_idempotency_key",
               "Idempotency-Key must be 1 to 200 visible ASCII characters");
      return;
    }
    /* Keys are per client (a token's CLIENT): two clients that happen to
     * use one key must neither get each other's task nor a 409. The
     * default client's keys are stored as they always were; another's as
     * "CLIENT KEY", which no key can be (a key holds no space). */
    if (strcmp(op->client, "default") == 0)
      snprintf(op->idem_key, sizeof op->idem_key, "%.*s", (int)klen, key);
    else
      snprintf(op->idem_key, sizeof op->idem_key, "%s %.*s", op->client,
               (int)klen, key);
    op->has_idem = 1;
  }
  if (pt_task_parse(body, blen, PT_PARSE_SUBMIT, api->cfg->api_max_amount,
                    &op->task, &ie) != 0) {
    op_error(op, 400, ie.code, ie.message);
    return;
  }
  op->has_task = 1;
  if (task_refused(op, &ie)) {
    op_error(op, 400, ie.code, ie.message);
    return;
  }
  if (pt_runner_find(op->task.type)->internal) {
    op_error(op, 400, "invalid_task_type",
             "query, close and notify tasks are scheduled by paytask itself");
    return;
  }
  snprintf(op->task.client, sizeof op->task.client, "%s", op->client);
  submit_task(op, body, blen);
}

/* Gives op->task (checked) an id, records it PENDING and publishes it; the
 * client gets 202 once the broker confirmed. body is what idempotency
 * compares (MAY be empty). */
static void submit_task(op_t *op, const char *body, size_t blen) {
  api_t *api = op->api;
  if (!pt_amqp_is_ready(api->amqp) || pt_amqp_is_blocked(api->amqp)) {
    /* Nothing new can be queued (a publish to a blocked broker would stall
     * the loop until the alarm clears). A repeat of a submit that was
     * accepted is still answered its task. */
    op->broker_refusal =
        !pt_amqp_is_ready(api->amqp)
            ? "the message broker is unreachable; nothing was accepted"
            : "the message broker refuses publishes (a memory or disk "
              "alarm); nothing was accepted, try again later";
    redisAsyncContext *ac = pt_redis_ctx(api->redis);
    if (!op->has_idem)
      op_error(op, 503, "broker_unavailable", op->broker_refusal);
    else if (ac == NULL ||
             pt_store_idem_get(ac, op->idem_key, on_idem_read, op) != 0)
      idem_unchecked(op);
    return;
  }
  if (pt_idgen_next(&api->ids, &op->task.id) != 0) {
    PT_ERROR("clock_backwards", "note=\"refusing to issue task ids\"");
    op_error(op, 503, "clock_error",
             "the server clock moved backwards; try again shortly");
    return;
  }
  pt_id_format(op->task.id, op->task.id_str);
  memcpy(op->id, op->task.id_str, sizeof op->id);
  op->task.created_at_ms = pt_id_time_ms(op->task.id);

  char idem_val[100] = "";
  if (op->has_idem) {
    pt_crypto_sha256_hex(body, blen, idem_val);
    snprintf(idem_val + PT_CRYPTO_SHA256_HEX_LEN,
             sizeof idem_val - PT_CRYPTO_SHA256_HEX_LEN, ":%s", op->id);
  }
  size_t slen;
  char *spec = pt_task_spec_json(&op->task, 0, &slen);
  char otn_key[PT_OUT_TRADE_NO_MAX + 64];
  int pay = strcmp(op->task.type, "pay") == 0;
  if (pay) /* a pay task takes its out_trade_no on its channel */
    pt_store_otn_key(otn_key, sizeof otn_key, op->task.channel,
                     op->task.out_trade_no);
  redisAsyncContext *ac = pt_redis_ctx(api->redis);
  int rc = ac == NULL ? PT_EREDIS
                      : pt_store_submit_pay(ac, op->id, spec, slen,
                                            op->task.created_at_ms,
                                            op->has_idem ? op->idem_key : NULL,
                                            idem_val,
                                            api->cfg->api_idempotency_ttl,
                                            pay ? otn_key : NULL,
                                            on_submitted, op);
  bson_free(spec);
  if (rc != 0)
    op_error(op, 503, "store_unavailable", "the task cache is unavailable");
}

/* replay (admin): a FAILED task is submitted again as a new task with the
 * same trade number (the channel refuses a second charge), carrying its
 * lineage: replay_of and replay_count. A second replay needs ?force=true.
 * The source is marked (pt:replays:{id}, the replays made) before the
 * submit, so that two replays at once cannot both pass; a submit that
 * fails takes its mark back, or a retry would be refused as a second
 * replay although nothing was replayed. */


/* The error answer of a replay that waits for its mark to be taken back:
 * a client that tries again once answered finds no mark. */
typedef struct {
  op_t *op;
  int status;
  const char *code; /* a literal, as every error code */
  char message[256];
} unmark_t;

static void on_replay_unmarked(redisAsyncContext *ac, void *r,
                               void *privdata) {
  redisReply *reply = r;
  unmark_t *u = privdata;
  (void)ac;
  if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
    char source[21];
    pt_id_format(u->op->task.replay_of, source);
    PT_WARN("replay_unmark_failed",
            "task_id=%s err=\"%s\" note=\"a retry needs ?force=true\"",
            source, reply != NULL ? reply->str : "redis connection lost");
  }
  op_error(u->op, u->status, u->code, u->message);
  free(u);
}

static void unmark_replay(op_t *op, int status, const char *code,
                          const char *message) {
  redisAsyncContext *ac = pt_redis_ctx(op->api->redis);
  unmark_t *u = malloc(sizeof *u);
  op->replay_marked = 0;
  if (u == NULL) {
    op_error(op, status, code, message);
    return;
  }
  u->op = op;
  u->status = status;
  u->code = code;
  pt_utf8_copy(u->message, sizeof u->message, message);
  int rc = ac == NULL ? REDIS_ERR
                      : send_unmark(ac, op->task.replay_of,
                                    op->task.replay_count, on_replay_unmarked,
                                    u);
  if (rc != REDIS_OK)
    on_replay_unmarked(ac, NULL, u);
}

static void on_replay_marked(redisAsyncContext *ac, void *r, void *privdata) {
  op_t *op = privdata;
  redisReply *reply = r;
  (void)ac;
  if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
    op_error(op, 503, "store_unavailable", "the task cache is unavailable");
    return;
  }
  if (reply->type == REDIS_REPLY_NIL) {
    op_error(op, 409, "already_replayed",
             "this task was replayed already; add ?force=true to replay it "
             "again");
    return;
  }
  op->task.replay_count = reply->type == REDIS_REPLY_INTEGER
                              ? (int)reply->integer
                              : 1;
  op->replay_marked = 1;
  submit_task(op, "", 0);
}

static void on_replay_source(op_t *op, const bson_t *doc) {
  static const char *const fields[] = {"type", "channel", "out_trade_no",
                                       "amount", "currency", "subject",
                                       "notify_url", "retry", "params",
                                       "expire_in"};
  bson_iter_t it;
  pt_input_error_t ie;
  op->on_doc = NULL;
  if (!bson_iter_init_find(&it, doc, "status") || !BSON_ITER_HOLDS_UTF8(&it) ||
      strcmp(bson_iter_utf8(&it, NULL), "FAILED") != 0) {
    op_error(op, 409, "task_not_replayable",
             "only a FAILED task can be replayed");
    return;
  }
  /* The original request, rebuilt from the stored task and checked like a
   * new one. */
  bson_t req = BSON_INITIALIZER;
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (bson_iter_init_find(&it, doc, fields[i]) && !BSON_ITER_HOLDS_NULL(&it))
      bson_append_iter(&req, fields[i], -1, &it);
  size_t len;
  char *json = bson_as_relaxed_extended_json(&req, &len);
  bson_destroy(&req);
  int rc = pt_task_parse(json, len, PT_PARSE_SUBMIT, 0, &op->task, &ie);
  bson_free(json);
  if (rc != 0 || task_refused(op, &ie)) {
    if (rc == 0)
      pt_task_destroy(&op->task);
    op_error(op, 409, "task_not_replayable", ie.message);
    return;
  }
  op->has_task = 1;
  pt_id_parse(op->id, strlen(op->id), &op->task.replay_of);
  /* What the client could not have sent: whose task it is, and for a
   * query, close or notify task (a notification given up, say) the pay
   * task it belongs to. */
  if (bson_iter_init_find(&it, doc, "client") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(op->task.client, sizeof op->task.client, "%s",
             bson_iter_utf8(&it, NULL));
  if (bson_iter_init_find(&it, doc, "parent_id") &&
      BSON_ITER_HOLDS_UTF8(&it)) {
    const char *p = bson_iter_utf8(&it, NULL);
    pt_id_parse(p, strlen(p), &op->task.parent_id);
  }
  redisAsyncContext *ac = pt_redis_ctx(op->api->redis);
  int sent = ac != NULL &&
             (op->force ? redisAsyncCommand(ac, on_replay_marked, op,
                                            "INCR pt:replays:%s", op->id)
                        : redisAsyncCommand(ac, on_replay_marked, op,
                                            "SET pt:replays:%s 1 NX", op->id)) ==
                 REDIS_OK;
  if (!sent)
    op_error(op, 503, "store_unavailable", "the task cache is unavailable");
}

static void handle_replay(op_t *op) {
  const char *v;
  size_t n;
  int given = query_param(op->req, "force", &v, &n);
  int is_true = given == 1 && n == 4 && memcmp(v, "true", 4) == 0;
  int is_false = given == 1 && n == 5 && memcmp(v, "false", 5) == 0;
  /* A force given twice or as anything else was taken as no force, and
   * the answer said to add the ?force=true the caller had sent. */
  if (given < 0 || (given == 1 && !is_true && !is_false)) {
    op_error(op, 400, "invalid_force", "force must be given once, as "
                                       "force=true or force=false");
    return;
  }
  op->force = is_true;
  op->on_doc = on_replay_source;
  read_task(op);
}

/* readyz */
static int mongo_ping_work(mongoc_client_t *client, void *arg,
                           pt_error_t *err) {
  bson_t cmd = BSON_INITIALIZER;
  bson_error_t e;
  (void)arg;
  BSON_APPEND_INT32(&cmd, "ping", 1);
  bool ok = mongoc_client_command_simple(client, "admin", &cmd, NULL, NULL, &e);
  bson_destroy(&cmd);
  return ok ? 0 : pt_error_set(err, PT_DOMAIN_MONGO, PT_EMONGO, "%s", e.message);
}

static void on_mongo_ping(int status, const pt_error_t *err, void *arg) {
  op_t *op = arg;
  api_t *api = op->api;
  bson_t doc = BSON_INITIALIZER;
  int amqp = pt_amqp_is_ready(api->amqp), redis = pt_redis_is_up(api->redis);
  int blocked = pt_amqp_is_blocked(api->amqp);
  BSON_APPEND_UTF8(&doc, "broker",
                   !amqp ? "unreachable" : blocked ? "blocked" : "ok");
  amqp = amqp && !blocked;
  BSON_APPEND_UTF8(&doc, "redis", redis ? "ok" : "unreachable");
  /* The driver's message may name hosts and credentials' mechanisms, and
   * /readyz takes no token: it goes to the log. */
  if (status != 0)
    PT_WARN("readyz_mongodb", "err=\"%s\"", err ? err->message : "");
  BSON_APPEND_UTF8(&doc, "mongodb", status == 0 ? "ok" : "unreachable");
  pt_reply_doc(op->req, amqp && redis && status == 0 ? 200 : 503, &doc);
  bson_destroy(&doc);
  op_free(op);
}

/* GET /metrics: the sync backlog and the age of its oldest entry come from
 * Redis (one pipelined XLEN and XRANGE), then everything is rendered. */
/* ---- queue depths --------------------------------------------------- */

static void depth_work(uv_work_t *w) {
  api_t *api = w->data;
  pt_error_t err;
  if (api->depth_conn == NULL)
    api->depth_conn = pt_amqp_connect_sync(api->cfg->amqp_uri, 2000, &err);
  if (api->depth_conn == NULL) {
    api->ndepths = 0;
    return;
  }
  api->ndepths = pt_topology_queue_depths(api->depth_conn, api->depths);
  if (api->depths[0].messages < 0) {
    /* The connection is probably gone: make a new one next time. */
    pt_amqp_close_sync(api->depth_conn);
    api->depth_conn = NULL;
  }
}

static void depth_done(uv_work_t *w, int status) {
  api_t *api = w->data;
  char labels[64];
  api->depth_busy = 0;
  if (status != 0)
    return;
  for (int i = 0; i < api->ndepths; i++) {
    if (api->depths[i].messages < 0)
      continue;
    snprintf(labels, sizeof labels, "queue=\"%s\"", api->depths[i].name);
    pt_metrics_set(api->metrics, "paytask_queue_messages",
                   "messages waiting in each broker queue (read every 5 s)",
                   labels, (double)api->depths[i].messages);
    pt_metrics_set(api->metrics, "paytask_queue_consumers",
                   "consumers of each broker queue", labels,
                   (double)api->depths[i].consumers);
  }
}

static void on_depth_timer(uv_timer_t *t) {
  api_t *api = t->data;
  if (api->depth_busy || api->stopping)
    return;
  api->depth_busy = 1;
  api->depth_work.data = api;
  if (uv_queue_work(api->loop, &api->depth_work, depth_work, depth_done) != 0)
    api->depth_busy = 0;
}

static void on_outbox_len(redisAsyncContext *ac, void *r, void *privdata) {
  api_t *api = privdata;
  redisReply *reply = r;
  (void)ac;
  if (reply != NULL && reply->type == REDIS_REPLY_INTEGER)
    pt_metrics_set(api->metrics, "paytask_outbox_backlog",
                   "events and follow-up tasks not yet relayed to the broker",
                   NULL, (double)reply->integer);
}

static void render_metrics(op_t *op) {
  size_t len;
  char *text = pt_metrics_render(op->api->metrics, &len);
  pt_httpd_respond(op->req, 200, "text/plain; version=0.0.4",
                   text ? text : "", text ? len : 0, NULL);
  free(text);
  op_free(op);
}

static void on_sync_oldest(redisAsyncContext *ac, void *r, void *privdata) {
  op_t *op = privdata;
  redisReply *reply = r;
  double lag = 0;
  (void)ac;
  if (reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
      reply->elements == 1 && reply->element[0]->type == REDIS_REPLY_ARRAY &&
      reply->element[0]->elements > 0 &&
      reply->element[0]->element[0]->type == REDIS_REPLY_STRING)
    lag = (double)(pt_now_ms() -
                   strtoll(reply->element[0]->element[0]->str, NULL, 10)) /
          1000.0;
  pt_metrics_set(op->api->metrics, "paytask_sync_lag_seconds",
                 "age of the oldest final state not yet in MongoDB", NULL,
                 lag < 0 ? 0 : lag);
  render_metrics(op);
}

static void on_sync_backlog(redisAsyncContext *ac, void *r, void *privdata) {
  api_t *api = privdata;
  redisReply *reply = r;
  (void)ac;
  if (reply != NULL && reply->type == REDIS_REPLY_INTEGER)
    pt_metrics_set(api->metrics, "paytask_sync_backlog",
                   "final states waiting to be written to MongoDB", NULL,
                   (double)reply->integer);
}

/* ---- channel notifications ------------------------------------------ */

static const char *notify_header(void *ctx, const char *name, size_t *len) {
  return pt_httpd_header(ctx, name, len);
}

static void notify_answer(op_t *op, int ok, const char *why,
                          const char *result) {
  pt_chan_ack_t ack;
  char labels[96];
  memset(&ack, 0, sizeof ack);
  op->chan->notify_ack(ok, why, &ack);
  snprintf(labels, sizeof labels, "channel=\"%s\",result=\"%s\"",
           op->chan->code, result);
  pt_metrics_inc(op->api->metrics, "paytask_callbacks_total",
                 "channel notifications received, by result", labels, 1);
  pt_httpd_respond(op->req, ack.http_status, ack.content_type, ack.body,
                   ack.body_len, NULL);
  op_free(op);
}

static void on_notified(int status, pt_verdict_t v, const char *detail,
                        void *arg) {
  op_t *op = arg;
  const pt_chan_notify_t *n = &op->note;
  if (status != 0) {
    PT_ERROR("callback_store_failed", "channel=%s out_trade_no=%s err=\"%s\"",
             op->chan->code, n->out_trade_no, detail);
    notify_answer(op, 0, "temporarily unavailable", "error");
    return;
  }
  switch (v) {
  case PT_V_OK:
    PT_INFO("callback_applied",
            "channel=%s task_id=%s out_trade_no=%s trade_status=%s "
            "notify_id=%s",
            op->chan->code, detail, n->out_trade_no,
            pt_trade_state_name(n->trade_state), n->notify_id);
    notify_answer(op, 1, NULL, "applied");
    return;
  case PT_V_REOPENED:
    /* Paid after paytask recorded the trade CLOSED or FAILED: the money
     * was taken, so the trade is SUCCEEDED now and the merchant is told
     * again; someone must deliver or refund. */
    PT_ERROR("trade_paid_after_final",
             "channel=%s task=%s out_trade_no=%s trade_no=%s "
             "notify_id=%s note=\"the channel says paid; the trade is "
             "SUCCEEDED now and the merchant notified again: deliver or "
             "refund\"",
             op->chan->code, detail, n->out_trade_no, n->trade_no,
             n->notify_id);
    notify_answer(op, 1, NULL, "paid_after_final");
    return;
  case PT_V_SAME:
  case PT_V_STALE:
    PT_INFO("callback_duplicate",
            "channel=%s out_trade_no=%s trade_status=%s current=%s "
            "notify_id=%s note=\"nothing changed\"",
            op->chan->code, n->out_trade_no,
            pt_trade_state_name(n->trade_state), detail, n->notify_id);
    notify_answer(op, 1, NULL, "duplicate");
    return;
  case PT_V_MISMATCH:
    PT_ERROR("callback_refused",
             "channel=%s out_trade_no=%s reason=amount_mismatch amount=%lld "
             "expected=%s",
             op->chan->code, n->out_trade_no, (long long)n->amount, detail);
    notify_answer(op, 0, "the amount does not match the trade", "refused");
    return;
  default:
    PT_WARN("callback_refused",
            "channel=%s out_trade_no=%s reason=unknown_trade",
            op->chan->code, n->out_trade_no);
    notify_answer(op, 0, "no such trade", "refused");
    return;
  }
}

/* POST /v1/channels/{channel}/notify: a channel's asynchronous
 * notification. Its authenticity is its signature (no bearer token): the
 * channel's strategy verifies it; the trade is then found by out_trade_no,
 * the amount compared, and the state applied once, forward only. */
static void handle_channel_notify(op_t *op, const char *code, size_t clen) {
  api_t *api = op->api;
  char name[16];
  pt_error_t err;
  size_t blen;
  if (clen == 0 || clen >= sizeof name) {
    op_error(op, 404, "not_found", "no such channel");
    return;
  }
  memcpy(name, code, clen);
  name[clen] = '\0';
  op->chan = pt_channel_find(name);
  if (op->chan == NULL || op->chan->notify_parse == NULL) {
    op_error(op, 404, "not_found", "this channel sends no notifications");
    return;
  }
  const char *body = pt_httpd_body(op->req, &blen);
  pt_chan_notify_in_t in = {.body = body,
                            .body_len = blen,
                            .header = notify_header,
                            .header_ctx = op->req,
                            .now_s = pt_now_ms() / 1000};
  memset(&op->note, 0, sizeof op->note);
  if (op->chan->notify_parse(api->cfg, &in, &op->note, &err) != 0) {
    PT_WARN("callback_refused", "channel=%s reason=\"%s\"", op->chan->code,
            err.message);
    /* Which check failed is for the log, not for a caller whose
     * notification could not be verified (it may be forging one). */
    notify_answer(op, 0, "the notification could not be verified", "refused");
    return;
  }
  uint64_t child;
  char child_id[21];
  /* Stopping (perhaps because the node id lease was lost): the channel
   * sends it again, to an api that can issue the notify task's id. */
  if (api->exit_code != 0 || pt_idgen_next(&api->ids, &child) != 0) {
    notify_answer(op, 0, "temporarily unavailable", "error");
    return;
  }
  pt_id_format(child, child_id);
  pt_store_notify_t nt = {.out_trade_no = op->note.out_trade_no,
                          .state = pt_trade_state_name(op->note.trade_state),
                          .trade_no = op->note.trade_no,
                          .amount = op->note.amount,
                          .notify_id = op->note.notify_id,
                          .notify_task_id = child_id,
                          .now_ms = pt_now_ms()};
  redisAsyncContext *ac = pt_redis_ctx(api->redis);
  if (ac == NULL ||
      pt_store_notify(ac, op->chan->code, &nt, on_notified, op) != 0)
    notify_answer(op, 0, "temporarily unavailable", "error");
}

static int path_is(const char *p, size_t n, const char *lit) {
  return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

static void on_request(pt_httpd_req_t *req, void *arg) {
  api_t *api = arg;
  size_t mlen, plen, alen;
  const char *m = pt_httpd_method(req, &mlen);
  const char *p = pt_httpd_path(req, &plen);
  int is_get = path_is(m, mlen, "GET"), is_post = path_is(m, mlen, "POST");
  op_t *op = op_new(api, req);
  if (op == NULL) {
    pt_reply_error(req, 503, "overloaded", "out of memory");
    return;
  }
  if (path_is(p, plen, "/healthz")) {
    pt_httpd_respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15,
                     NULL);
    op_free(op);
    return;
  }
  if (path_is(p, plen, "/metrics")) {
    size_t len, nwait = 0;
    for (waiter_t *w = api->waiters; w != NULL; w = w->hh.next)
      for (wait_entry_t *we = w->list; we != NULL; we = we->next)
        nwait++;
    pt_metrics_set(api->metrics, "paytask_api_inflight_requests",
                   "requests not answered yet", NULL,
                   (double)(api->inflight - 1));
    pt_metrics_set(api->metrics, "paytask_api_waiting_polls",
                   "GET ?wait requests holding", NULL, (double)nwait);
    pt_metrics_set(api->metrics, "paytask_api_broker_up",
                   "1 while the broker connection is ready", NULL,
                   pt_amqp_is_ready(api->amqp));
    (void)len;
    redisAsyncContext *ac = pt_redis_ctx(api->redis);
    if (ac != NULL &&
        redisAsyncCommand(ac, on_sync_backlog, api, "XLEN %s",
                          PT_STREAM_SYNC) == REDIS_OK &&
        redisAsyncCommand(ac, on_outbox_len, api, "XLEN %s",
                          PT_STREAM_OUTBOX) == REDIS_OK &&
        redisAsyncCommand(ac, on_sync_oldest, op, "XRANGE %s - + COUNT 1",
                          PT_STREAM_SYNC) == REDIS_OK)
      return; /* answered from on_sync_oldest */
    render_metrics(op);
    return;
  }
  if (path_is(p, plen, "/readyz")) {
    if (pt_mongo_submit(api->mongo, mongo_ping_work, on_mongo_ping, op) != 0)
      on_mongo_ping(PT_EMONGO, NULL, op);
    return;
  }
  if (plen < 4 || memcmp(p, "/v1/", 4) != 0) {
    op_error(op, 404, "not_found", "no such endpoint");
    return;
  }
  if (plen > 19 && memcmp(p, "/v1/channels/", 13) == 0 &&
      memcmp(p + plen - 7, "/notify", 7) == 0) {
    if (!is_post) {
      op_error(op, 405, "method_not_allowed", "use POST");
      return;
    }
    handle_channel_notify(op, p + 13, plen - 20);
    return;
  }
  const char *auth = pt_httpd_header(req, "authorization", &alen);
  int scopes = 0;
  if (auth != NULL && alen >= 8 && strncasecmp(auth, "Bearer ", 7) == 0 &&
      !pt_httpd_header_repeated(req, "authorization")) {
    scopes = pt_config_token_lookup(api->cfg, auth + 7, alen - 7, op->client,
                                    sizeof op->client);
  }
  if (scopes == 0) {
    op_error(op, 401, "unauthorized",
             "send one Authorization: Bearer <token> header with a valid "
             "token");
    return;
  }
  op->admin = (scopes & PT_SCOPE_ADMIN) != 0;
  if (api->stopping) {
    op_error(op, 503, "shutting_down", "the api is shutting down; retry");
    return;
  }
  if (path_is(p, plen, "/v1/tasks")) {
    if (is_post && !(scopes & PT_SCOPE_SUBMIT)) {
      op_error(op, 403, "forbidden", "this token may not submit tasks");
      return;
    }
    if (!is_post) {
      op_error(op, 405, "method_not_allowed", "use POST to submit a task");
      return;
    }
    handle_submit(op);
    return;
  }
  if (plen > 10 && memcmp(p, "/v1/tasks/", 10) == 0) {
    const char *id = p + 10;
    size_t idlen = plen - 10;
    int cancel = 0, replay = 0;
    if (idlen > 7 && memcmp(id + idlen - 7, "/cancel", 7) == 0) {
      idlen -= 7;
      cancel = 1;
    } else if (idlen > 7 && memcmp(id + idlen - 7, "/replay", 7) == 0) {
      idlen -= 7;
      replay = 1;
    }
    int need = replay ? PT_SCOPE_ADMIN
                      : cancel ? PT_SCOPE_SUBMIT : PT_SCOPE_READ;
    if (!(scopes & need)) {
      op_error(op, 403, "forbidden",
               replay ? "replay needs a token with the admin scope"
                      : "this token may not do that");
      return;
    }
    uint64_t v;
    if (pt_id_parse(id, idlen, &v) != 0) {
      op_error(op, 404, "task_not_found", "no task has this id");
      return;
    }
    pt_id_format(v, op->id);
    if (replay && is_post)
      handle_replay(op);
    else if (cancel && is_post)
      handle_cancel(op);
    else if (!cancel && !replay && is_get)
      handle_get(op);
    else
      op_error(op, 405, "method_not_allowed",
               cancel || replay ? "use POST" : "use GET to read a task");
    return;
  }
  op_error(op, 404, "not_found", "no such endpoint");
}

/* ---- lifecycle ------------------------------------------------------------ */

static void on_redis_lost(pt_redis_t *r, int status, const char *why,
                          void *arg);

/* (Re)opens whichever Redis connection is missing: commands (with the
 * scripts loaded) and the pub/sub one that wakes long polls. */
static int connect_redis(api_t *api, pt_error_t *err) {
  if (api->redis == NULL) {
    api->redis = pt_redis_connect(api->loop, api->cfg->redis_uri,
                                  on_redis_lost, api, err);
    if (api->redis == NULL)
      return PT_EREDIS;
    pt_store_load_scripts(pt_redis_ctx(api->redis));
  }
  if (api->sub == NULL) {
    api->sub = pt_redis_connect(api->loop, api->cfg->redis_uri, on_redis_lost,
                                api, err);
    if (api->sub == NULL)
      return PT_EREDIS;
    redisAsyncCommand(pt_redis_ctx(api->sub), on_final_message, api,
                      "SUBSCRIBE %s", PT_CHANNEL_FINAL);
  }
  return 0;
}

static void on_redis_retry(uv_timer_t *t) {
  api_t *api = t->data;
  pt_error_t err;
  if (api->stopping)
    return;
  if (connect_redis(api, &err) != 0) {
    PT_ERROR("redis_connect_failed", "err=\"%s\" retry_in_ms=1000",
             err.message);
    uv_timer_start(&api->redis_retry, on_redis_retry, 1000, 0);
  }
}

static void on_redis_lost(pt_redis_t *r, int status, const char *why,
                          void *arg) {
  api_t *api = arg;
  if (api->stopping)
    return;
  PT_ERROR("redis_lost", "status=%d err=\"%s\" retry_in_ms=1000", status,
           why ? why : "");
  /* The handle is dropped now; requests meanwhile get 503. */
  if (r == api->redis)
    api->redis = NULL;
  else if (r == api->sub)
    api->sub = NULL;
  pt_redis_destroy(r);
  uv_timer_start(&api->redis_retry, on_redis_retry, 1000, 0);
}

static void connect_amqp(uv_timer_t *t);

static void on_amqp_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  api_t *api = arg;
  (void)c;
  if (status != 0) {
    PT_ERROR("broker_connect_failed", "err=\"%s\" retry_in_ms=2000",
             err ? err->message : pt_strerror(status));
    if (!api->stopping)
      uv_timer_start(&api->amqp_retry, connect_amqp, 2000, 0);
    return;
  }
  PT_INFO("broker_connected", "uri_host_only=1");
}

static void connect_amqp(uv_timer_t *t) {
  api_t *api = t->data;
  if (pt_amqp_start(api->amqp, on_amqp_ready, api) != 0)
    uv_timer_start(&api->amqp_retry, connect_amqp, 2000, 0);
}

static void on_amqp_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                         void *arg) {
  api_t *api = arg;
  (void)c;
  PT_ERROR("broker_lost", "err=\"%s\" retry_in_ms=1000",
           err ? err->message : pt_strerror(status));
  if (!api->stopping)
    uv_timer_start(&api->amqp_retry, connect_amqp, 1000, 0);
}

static void on_lease_renew(uv_timer_t *t) {
  api_t *api = t->data;
  pt_lease_renew(&api->lease, pt_redis_ctx(api->redis));
}

static void close_all(api_t *api) {
  uv_close((uv_handle_t *)&api->sigterm, NULL);
  uv_close((uv_handle_t *)&api->sigint, NULL);
  uv_close((uv_handle_t *)&api->lease_timer, NULL);
  uv_close((uv_handle_t *)&api->depth_timer, NULL);
  uv_close((uv_handle_t *)&api->amqp_retry, NULL);
  uv_close((uv_handle_t *)&api->stop_timer, NULL);
  uv_close((uv_handle_t *)&api->redis_retry, NULL);
  uv_close((uv_handle_t *)&api->withdraw_timer, NULL);
  drop_unanswered(api);
  redisAsyncContext *ac = pt_redis_ctx(api->redis);
  pt_lease_release(&api->lease, ac);
  pt_amqp_destroy(api->amqp);
  api->amqp = NULL;
  pt_redis_destroy(api->sub);
  api->sub = NULL;
  pt_redis_destroy(api->redis);
  api->redis = NULL;
}

/* Stops once every request in flight has been answered: a submit waiting
 * for its confirm still gets its 202. */
static void maybe_stop(api_t *api) {
  if (!api->stopping || api->inflight > 0 || api->amqp == NULL ||
      api->waiters != NULL || api->withdrawing > 0)
    return;
  pt_httpd_destroy(api->httpd);
  api->httpd = NULL;
  close_all(api);
}

static void on_stop_deadline(uv_timer_t *t) {
  api_t *api = t->data;
  PT_WARN("api_stop_deadline", "inflight=%zu", api->inflight);
  /* Waiters answer with what they have now. */
  while (api->waiters != NULL)
    waiter_remove(api, api->waiters->list);
}

static void begin_stop(api_t *api, const char *why) {
  if (api->stopping)
    return;
  api->stopping = 1;
  PT_INFO("api_stopping", "why=%s inflight=%zu", why, api->inflight);
  uv_timer_stop(&api->lease_timer);
  uv_timer_stop(&api->amqp_retry);
  uv_timer_stop(&api->redis_retry);
  /* New requests get 503 from now on; long polls end now with the
   * current state. */
  while (api->waiters != NULL)
    waiter_remove(api, api->waiters->list);
  uv_timer_start(&api->stop_timer, on_stop_deadline, 10000, 0);
  uv_unref((uv_handle_t *)&api->stop_timer);
  /* Submits Redis did not answer are withdrawn now if it answers again
   * (the stop waits for those scripts); otherwise their ids are logged. */
  uv_timer_stop(&api->withdraw_timer);
  if (api->unanswered != NULL)
    withdraw_unanswered(&api->withdraw_timer);
  maybe_stop(api);
}

static void on_signal(uv_signal_t *s, int signum) {
  begin_stop(s->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* Another process holds the api's node id: task ids from it could
 * collide. Submits are refused from now on (stopping), the requests in
 * flight are answered, and the api exits 1, so that its service manager
 * starts one that leases a free node id. */
static void on_lease_lost(void *arg) {
  api_t *api = arg;
  api->exit_code = 1;
  begin_stop(api, "node_lease_lost");
}

int pt_api_is_loopback(const char *host) {
  /* host is numeric (the configuration checks it) and unbracketed. */
  return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

int pt_api_run(const pt_config_t *cfg) {
  api_t api;
  pt_error_t err;
  char host[256];
  int port;
  memset(&api, 0, sizeof api);
  api.cfg = cfg;
  /* The runners paytask schedules itself, for cancel to refuse. */
  size_t n = snprintf(api.internal_types, sizeof api.internal_types, ",");
  for (size_t i = 0; pt_runners[i] != NULL; i++)
    if (pt_runners[i]->internal && n < sizeof api.internal_types)
      n += snprintf(api.internal_types + n, sizeof api.internal_types - n,
                    "%s,", pt_runners[i]->type);
  pt_config_hostport(cfg->api_listen, host, sizeof host, &port);
  if (strstr(cfg->api_tokens, DEV_TOKEN) != NULL && !pt_api_is_loopback(host)) {
    PT_ERROR("api_refused",
             "err=\"the development token %s is configured but api.listen "
             "(%s) is not a loopback address; set api.tokens\"",
             DEV_TOKEN, cfg->api_listen);
    return 2;
  }
  /* The shipped notification secret is public: a merchant checking with
   * it would take anyone's forged notification for paytask's. */
  if (strstr(cfg->notify_secrets, DEV_NOTIFY_SECRET) != NULL &&
      !pt_api_is_loopback(host)) {
    PT_ERROR("api_refused",
             "err=\"the development notification secret %s is configured "
             "but api.listen (%s) is not a loopback address; set "
             "notify.secrets\"",
             DEV_NOTIFY_SECRET, cfg->api_listen);
    return 2;
  }
  /* So are the channel keys conf/paytask.conf ships for the simulator:
   * with them, a forged "paid" notification passes as the channel's. */
  char dev_key[64];
  if (!pt_api_is_loopback(host) &&
      pt_chan_dev_credentials(cfg, dev_key, sizeof dev_key)) {
    PT_ERROR("api_refused",
             "err=\"%s is a development credential (conf/dev-keys or the "
             "sample APIv3 key), public with paytask's source, but api.listen "
             "(%s) is not a loopback address; set the channel's own\"",
             dev_key, cfg->api_listen);
    return 2;
  }
  if (pt_lease_node(api.cfg, &api.ids, &api.lease, &err) != 0 ||
      pt_channels_init(cfg, &err) != 0) {
    PT_ERROR("api_start_failed", "err=\"%s\"", err.message);
    return 1;
  }
  api.lease.lost = on_lease_lost;
  api.lease.lost_arg = &api;
  api.metrics = pt_metrics_new();
  api.loop = malloc(sizeof *api.loop);
  uv_loop_init(api.loop);
  pt_amqp_opts_t ao = {.uri = cfg->amqp_uri,
                       .setup = pt_topology_declare,
                       .setup_arg = (void *)cfg,
                       .on_lost = on_amqp_lost,
                       .lost_arg = &api,
                       .confirm_timeout_ms = (int)cfg->amqp_confirm_timeout_ms};
  api.amqp = pt_amqp_new(api.loop, &ao);
  uv_timer_init(api.loop, &api.redis_retry);
  api.redis_retry.data = &api;
  if (connect_redis(&api, &err) == 0)
    api.mongo = pt_mongo_new(api.loop, cfg->mongodb_uri, &err);
  pt_httpd_opts_t ho = {.host = host,
                        .port = port,
                        .max_body = (size_t)cfg->api_max_body,
                        .handler = on_request,
                        .arg = &api};
  if (api.amqp != NULL && api.mongo != NULL)
    api.httpd = pt_httpd_new(api.loop, &ho, &err);
  if (api.amqp == NULL || api.redis == NULL || api.sub == NULL ||
      api.mongo == NULL || api.httpd == NULL) {
    PT_ERROR("api_start_failed", "err=\"%s\"", err.message);
    /* Nothing was started: close what was opened, and exit. */
    uv_close((uv_handle_t *)&api.redis_retry, NULL);
    pt_amqp_destroy(api.amqp);
    pt_redis_destroy(api.sub);
    pt_redis_destroy(api.redis);
    uv_run(api.loop, UV_RUN_DEFAULT);
    pt_mongo_destroy(api.mongo);
    pt_metrics_destroy(api.metrics);
    pt_channels_cleanup();
    uv_loop_close(api.loop);
    free(api.loop);
    return 1;
  }
  uv_timer_init(api.loop, &api.lease_timer);
  uv_timer_init(api.loop, &api.depth_timer);
  api.depth_timer.data = &api;
  uv_timer_start(&api.depth_timer, on_depth_timer, 0, 5000);
  uv_timer_init(api.loop, &api.amqp_retry);
  uv_timer_init(api.loop, &api.stop_timer);
  uv_timer_init(api.loop, &api.withdraw_timer);
  api.lease_timer.data = api.amqp_retry.data = api.stop_timer.data = &api;
  api.withdraw_timer.data = &api;
  if (api.lease.key[0])
    uv_timer_start(&api.lease_timer, on_lease_renew, 20000, 20000);
  uv_signal_init(api.loop, &api.sigterm);
  uv_signal_init(api.loop, &api.sigint);
  api.sigterm.data = api.sigint.data = &api;
  uv_signal_start(&api.sigterm, on_signal, SIGTERM);
  uv_signal_start(&api.sigint, on_signal, SIGINT);
  connect_amqp(&api.amqp_retry);
  PT_INFO("api_listening", "addr=%s:%d pid=%ld", host,
          pt_httpd_port(api.httpd), (long)getpid());
  uv_run(api.loop, UV_RUN_DEFAULT);
  pt_mongo_destroy(api.mongo);
  pt_metrics_destroy(api.metrics);
  pt_channels_cleanup();
  if (api.depth_conn != NULL)
    pt_amqp_close_sync(api.depth_conn); /* the loop has ended */
  int rc = uv_loop_close(api.loop);
  if (rc != 0)
    PT_WARN("loop_close", "err=\"%s\"", uv_strerror(rc));
  free(api.loop);
  PT_INFO("api_stopped", "pid=%ld exit=%d", (long)getpid(), api.exit_code);
  return api.exit_code;
}

int pt_api_main(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *path = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    if (c == 'c')
      path = optarg;
    else {
      fprintf(stderr, "usage: paytask api [--config FILE]\n");
      return c == 'h' ? 0 : 2;
    }
  }
  pt_config_t cfg;
  pt_error_t err;
  if (pt_config_load(&cfg, path, &err) != 0) {
    fprintf(stderr, "paytask api: %s\n", err.message);
    return 2;
  }
  pt_log_setup((pt_log_level_t)pt_log_level_parse(cfg.log_level),
               strcmp(cfg.log_format, "json") == 0 ? PT_LOG_JSON
                                                   : PT_LOG_LOGFMT,
               "api");
  return pt_api_run(&cfg);
}
