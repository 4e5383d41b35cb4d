#include "worker/pt_relay.h"

#include <bson/bson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_id.h"
#include "core/pt_log.h"
#include "core/pt_store.h"
#include "runner/pt_topology.h"

struct pt_relay {
  uv_loop_t *loop;
  const pt_config_t *cfg;
  pt_redis_t *redis;
  pt_amqp_t *amqp;
  char consumer[96];
  uv_timer_t timer;
  int group_ok, reading, closing, timer_closed;
  int claiming; /* the read in flight is an XAUTOCLAIM */
  size_t inflight;
  int handling; /* handle_entries is starting a batch's entries */
  /* A batch with an entry that could not be relayed (a refused publish,
   * a Redis error) is followed, after a backoff, by a pass over this
   * relay's own pending entries in order (XREADGROUP from "0"), not by
   * more new entries: a refusing broker does not pull the whole outbox
   * into the pending list, and what failed is retried here within
   * seconds, not claimed 40 s later. */
  int batch_failed;
  long batch_ok;
  int own_pass;          /* reading own pending entries, from own_from */
  char own_from[48];
  long pass_ok, pass_failed;
  /* A pass in which nothing could be relayed is followed by one new entry
   * (the probe): relayed, the cause was those entries alone, and new ones
   * are read again; not, the pass starts over. */
  int probing;
  int backoff_ms;        /* 0 while all goes well; 200 ms doubling to 5 s */
  uint64_t next_read_ms; /* loop time (monotonic): no read before it */
  /* pt_relay_stop: no new reads; idle_cb once nothing is in flight */
  int stopping;
  void (*idle_cb)(void *);
  void *idle_arg;
  long sent;
  uint64_t last_claim_ms; /* loop time of the last XAUTOCLAIM */
  char claim_from[48]; /* XAUTOCLAIM's cursor: where its next call starts */
  int64_t last_error_ms; /* read errors are logged once per 10 s */
  /* entries done, acknowledged and deleted in one XACK and one XDEL when
   * the batch in flight is done */
  char done[PT_RELAY_BATCH][48];
  int ndone;
};

typedef struct {
  pt_relay_t *r;
  char id[48];
  char type[16], parent[21], task_id[21];
  int64_t due_ms;
  int64_t wait_ms;    /* a follow-up: how long until it is due, when sent */
  int64_t created_ms; /* the follow-up's creation time, the same in its
                         stored spec and in its message */
  char *spec;
  size_t spec_len;
} entry_t;

static void flush_done(pt_relay_t *r) {
  redisAsyncContext *ac = pt_redis_ctx(r->redis);
  if (r->ndone == 0)
    return;
  if (ac != NULL) {
    const char *av[PT_RELAY_BATCH + 3];
    int n = 0;
    av[n++] = "XACK";
    av[n++] = PT_STREAM_OUTBOX;
    av[n++] = PT_RELAY_GROUP;
    for (int i = 0; i < r->ndone; i++)
      av[n++] = r->done[i];
    redisAsyncCommandArgv(ac, NULL, NULL, n, av, NULL);
    av[1] = "XDEL";
    av[2] = PT_STREAM_OUTBOX;
    redisAsyncCommandArgv(ac, NULL, NULL, n - 1, av + 1, NULL);
  }
  /* Redis gone: the entries stay pending and are claimed again; a
   * subscriber may see them twice, never not at all. */
  r->ndone = 0;
}

static void maybe_free(pt_relay_t *r) {
  if (r->closing && r->timer_closed && r->inflight == 0 && !r->reading &&
      !r->handling)
    free(r);
}

/* The wait after a batch that failed: 200 ms, doubling up to 5 s. */
static int next_backoff_ms(const pt_relay_t *r) {
  return r->backoff_ms == 0 ? 200 : r->backoff_ms >= 2500 ? 5000
                                                          : 2 * r->backoff_ms;
}

/* ---- fields ------------------------------------------------------------- */

static const char *field_str(const redisReply *fields, const char *name) {
  const char *v = pt_store_hash_field(fields, name);
  return v != NULL ? v : "";
}

/* Appends a JSON text as a sub-document when it is one. */
static void append_json_doc(bson_t *doc, const char *key, const char *json) {
  bson_t sub;
  bson_error_t e;
  if (json == NULL || json[0] == '\0' ||
      !bson_init_from_json(&sub, json, -1, &e))
    return;
  bson_append_document(doc, key, -1, &sub);
  bson_destroy(&sub);
}

char *pt_relay_event_json(const char *entry_id, const redisReply *fields,
                          size_t *len) {
  const char *subject = field_str(fields, "subject");
  const char *task_id = field_str(fields, "task_id");
  const char *status = field_str(fields, "status");
  const char *spec = field_str(fields, "spec");
  bson_t sp, doc = BSON_INITIALIZER;
  bson_error_t e;
  bson_iter_t it;
  char ts[32];
  if (subject[0] == '\0' || task_id[0] == '\0' || status[0] == '\0' ||
      !bson_init_from_json(&sp, spec, -1, &e)) {
    bson_destroy(&doc);
    return NULL;
  }
  int64_t at = strtoll(field_str(fields, "at"), NULL, 10);
  BSON_APPEND_UTF8(&doc, "event_id", entry_id);
  BSON_APPEND_UTF8(&doc, "event", strcmp(subject, "trade") == 0
                                      ? "trade.final"
                                      : "task.final");
  BSON_APPEND_UTF8(&doc, "task_id", task_id);
  static const char *const copied[] = {"type",     "channel", "out_trade_no",
                                       "amount",   "currency", "client",
                                       "parent_id"};
  for (size_t i = 0; i < sizeof copied / sizeof copied[0]; i++)
    if (bson_iter_init_find(&it, &sp, copied[i]))
      bson_append_iter(&doc, copied[i], -1, &it);
  if (strcmp(subject, "trade") == 0) {
    BSON_APPEND_UTF8(&doc, "trade_status", status);
    BSON_APPEND_UTF8(&doc, "settled_by", field_str(fields, "source"));
    if (field_str(fields, "trade_no")[0])
      BSON_APPEND_UTF8(&doc, "trade_no", field_str(fields, "trade_no"));
    /* Paid after it was recorded CLOSED or FAILED (a second trade.final). */
    if (field_str(fields, "previous")[0])
      BSON_APPEND_UTF8(&doc, "previous_status", field_str(fields, "previous"));
  } else {
    BSON_APPEND_UTF8(&doc, "status", status);
    append_json_doc(&doc, "result", field_str(fields, "result"));
    append_json_doc(&doc, "error", field_str(fields, "error"));
  }
  pt_time_rfc3339(at, ts);
  BSON_APPEND_UTF8(&doc, "at", ts);
  BSON_APPEND_INT64(&doc, "at_ms", at);
  char *json = bson_as_relaxed_extended_json(&doc, len);
  bson_destroy(&doc);
  bson_destroy(&sp);
  return json;
}

/* ---- ending an entry ---------------------------------------------------- */

static void add_done(pt_relay_t *r, const char *id) {
  if (r->ndone == PT_RELAY_BATCH)
    flush_done(r);
  snprintf(r->done[r->ndone++], sizeof r->done[0], "%s", id);
}

/* A pass over this relay's own pending entries, from the first. */
static void start_pass(pt_relay_t *r) {
  r->own_pass = 1;
  r->probing = 0;
  snprintf(r->own_from, sizeof r->own_from, "0");
  r->pass_ok = r->pass_failed = 0;
}

/* Back to new entries, with no backoff. */
static void end_pass(pt_relay_t *r) {
  r->own_pass = 0;
  r->probing = 0;
  r->backoff_ms = 0;
}

/* Every entry of a batch has ended: acknowledge those done, and choose
 * what to read next. */
static void batch_end(pt_relay_t *r) {
  flush_done(r);
  if (r->probing) {
    /* The probe's one new entry: relayed, new entries flow again (what
     * still fails is retried by the next pass or claimed); not, the pass
     * starts over. */
    if (r->batch_ok > 0)
      end_pass(r);
    else
      start_pass(r);
  }
  if (r->batch_failed) {
    r->backoff_ms = next_backoff_ms(r);
    r->next_read_ms = uv_now(r->loop) + (uint64_t)r->backoff_ms;
    if (!r->own_pass)
      start_pass(r);
  } else if (!r->own_pass) {
    r->backoff_ms = 0;
  }
  r->batch_failed = 0;
  r->batch_ok = 0;
  pt_relay_kick(r);
}

static void entry_end(entry_t *en, int done) {
  pt_relay_t *r = en->r;
  if (done) {
    add_done(r, en->id);
    r->sent++;
    r->batch_ok++;
  } else {
    /* It stays pending: this relay's next pass over its own pending
     * entries retries it (or another relay claims it, if this one dies). */
    r->batch_failed = 1;
  }
  if (r->own_pass) {
    if (done)
      r->pass_ok++;
    else
      r->pass_failed++;
  }
  free(en->spec);
  free(en);
  r->inflight--;
  if (r->inflight == 0 && !r->handling)
    batch_end(r);
  maybe_free(r);
}

/* An entry that could not be relayed stays pending. The failure is said
 * for the first entry of a batch that fails (the rest of a batch mostly
 * fail alike), and the batch is retried after a backoff. */
static void entry_failed(entry_t *en, const char *event, const char *err) {
  pt_relay_t *r = en->r;
  if (!r->batch_failed) {
    if (r->closing || r->stopping)
      PT_WARN(event, "entry=%s err=\"%s\" note=\"left pending; another "
              "relay claims it\"", en->id, err);
    else
      PT_WARN(event, "entry=%s err=\"%s\" retry_in_ms=%d note=\"left "
              "pending; this relay retries its pending entries\"", en->id,
              err, next_backoff_ms(r));
  }
  entry_end(en, 0);
}

static void on_confirmed(pt_amqp_t *c, int status, void *arg) {
  entry_t *en = arg;
  (void)c;
  if (status != 0) {
    entry_failed(en, "outbox_publish_unconfirmed", pt_strerror(status));
    return;
  }
  if (en->type[0] != '\0') /* a follow-up, said once the broker has it */
    PT_INFO("task_scheduled", "task_id=%s type=%s parent=%s in_ms=%lld",
            en->task_id, en->type, en->parent, (long long)en->wait_ms);
  entry_end(en, 1);
}

/* An entry whose publish could not even start. */
static void publish_failed(entry_t *en, int rc) {
  entry_failed(en, "outbox_publish_failed", pt_strerror(rc));
}

/* ---- events ------------------------------------------------------------- */

static void relay_event(entry_t *en, const redisReply *fields) {
  pt_relay_t *r = en->r;
  size_t len;
  char *json = pt_relay_event_json(en->id, fields, &len);
  if (json == NULL) {
    /* Damaged entries cannot become good: drop them loudly. */
    PT_ERROR("outbox_entry_damaged", "entry=%s", en->id);
    entry_end(en, 1);
    return;
  }
  pt_amqp_msg_t msg = {.persistent = 1, .message_id = en->id};
  int rc = pt_amqp_publish(r->amqp, r->cfg->events_exchange, "", json, len,
                           &msg, on_confirmed, en);
  bson_free(json);
  if (rc != 0)
    publish_failed(en, rc);
}

/* ---- follow-up tasks ---------------------------------------------------- */

/* The spec of a follow-up task: the pay task's spec with its own id, type,
 * creation time and parent. */
static char *child_spec(const entry_t *en, int attempt, size_t *len) {
  bson_t sp, doc = BSON_INITIALIZER, retry;
  bson_error_t e;
  bson_iter_t it;
  char ts[32];
  if (!bson_init_from_json(&sp, en->spec, (ssize_t)en->spec_len, &e))
    return NULL;
  BSON_APPEND_UTF8(&doc, "task_id", en->task_id);
  BSON_APPEND_UTF8(&doc, "type", en->type);
  bson_iter_init(&it, &sp);
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (strcmp(k, "task_id") == 0 || strcmp(k, "type") == 0 ||
        strcmp(k, "created_at") == 0 || strcmp(k, "created_at_ms") == 0 ||
        strcmp(k, "retry") == 0 || strcmp(k, "replay_of") == 0 ||
        strcmp(k, "replay_count") == 0 || strcmp(k, "parent_id") == 0)
      continue;
    bson_append_iter(&doc, k, -1, &it);
  }
  /* Scheduled kinds follow their own schedules; retry is kept for the
   * spec's shape. */
  BSON_APPEND_DOCUMENT_BEGIN(&doc, "retry", &retry);
  BSON_APPEND_BOOL(&retry, "need_retry", true);
  BSON_APPEND_INT32(&retry, "retry_times", PT_RETRY_MAX);
  bson_append_document_end(&doc, &retry);
  BSON_APPEND_UTF8(&doc, "parent_id", en->parent);
  pt_time_rfc3339(en->created_ms, ts);
  BSON_APPEND_UTF8(&doc, "created_at", ts);
  BSON_APPEND_INT64(&doc, "created_at_ms", en->created_ms);
  if (attempt > 0)
    BSON_APPEND_INT32(&doc, "attempt", attempt);
  char *json = bson_as_relaxed_extended_json(&doc, len);
  bson_destroy(&doc);
  bson_destroy(&sp);
  return json;
}

static void publish_child(entry_t *en) {
  pt_relay_t *r = en->r;
  size_t len;
  char *body = child_spec(en, 1, &len);
  if (body == NULL) {
    PT_ERROR("outbox_entry_damaged", "entry=%s parent=%s", en->id,
             en->parent);
    entry_end(en, 1);
    return;
  }
  char mid[48];
  int64_t now = pt_now_ms(), wait = en->due_ms - now;
  pt_route_t route;
  snprintf(mid, sizeof mid, "%s:1", en->task_id);
  pt_topology_route(en->due_ms, now, &route);
  pt_amqp_msg_t msg = {.persistent = 1,
                       .mandatory = 1,
                       .message_id = mid,
                       .headers = &route.headers};
  int rc = pt_amqp_publish(r->amqp, route.exchange, route.routing_key, body,
                           len, &msg, on_confirmed, en);
  bson_free(body);
  en->wait_ms = wait > 0 ? wait : 0;
  if (rc != 0)
    publish_failed(en, rc);
}

static void on_child_stored(int status, pt_verdict_t v, const char *detail,
                            void *arg) {
  entry_t *en = arg;
  if (en->r->closing) { /* the broker handle is gone; claimed again later */
    entry_end(en, 0);
    return;
  }
  if (status != 0) {
    entry_failed(en, "outbox_store_failed", detail);
    return;
  }
  (void)v; /* OK or EXISTS (a relay before us stored it): publish either way;
              the start script drops a duplicate delivery */
  publish_child(en);
}

static void on_parent_spec(redisAsyncContext *ac, void *reply, void *arg) {
  entry_t *en = arg;
  redisReply *rep = reply;
  (void)ac;
  if (en->r->closing) {
    entry_end(en, 0);
    return;
  }
  if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
    entry_failed(en, "outbox_store_failed",
                 rep != NULL ? rep->str : "redis connection lost");
    return;
  }
  if (rep->type != REDIS_REPLY_STRING) {
    PT_ERROR("outbox_parent_missing",
             "entry=%s parent=%s type=%s note=\"the trade is gone; the "
             "follow-up task cannot be made\"",
             en->id, en->parent, en->type);
    entry_end(en, 1);
    return;
  }
  en->spec = malloc(rep->len + 1);
  if (en->spec == NULL) {
    entry_end(en, 0);
    return;
  }
  memcpy(en->spec, rep->str, rep->len + 1);
  en->spec_len = rep->len;
  size_t len;
  char *spec = child_spec(en, 0, &len);
  redisAsyncContext *c = pt_redis_ctx(en->r->redis);
  if (spec == NULL || c == NULL ||
      pt_store_submit(c, en->task_id, spec, len, pt_now_ms(), NULL, NULL, 0,
                      on_child_stored, en) != 0) {
    if (spec == NULL)
      PT_ERROR("outbox_entry_damaged", "entry=%s parent=%s", en->id,
               en->parent);
    entry_end(en, spec == NULL);
  }
  bson_free(spec);
}

static void relay_spawn(entry_t *en, const redisReply *fields) {
  redisAsyncContext *ac = pt_redis_ctx(en->r->redis);
  uint64_t v;
  snprintf(en->type, sizeof en->type, "%s", field_str(fields, "type"));
  snprintf(en->parent, sizeof en->parent, "%s", field_str(fields, "parent"));
  snprintf(en->task_id, sizeof en->task_id, "%s",
           field_str(fields, "task_id"));
  en->due_ms = strtoll(field_str(fields, "due"), NULL, 10);
  en->created_ms = pt_now_ms();
  if (pt_id_parse(en->parent, strlen(en->parent), &v) != 0 ||
      pt_id_parse(en->task_id, strlen(en->task_id), &v) != 0 ||
      en->type[0] == '\0') {
    PT_ERROR("outbox_entry_damaged", "entry=%s", en->id);
    entry_end(en, 1);
    return;
  }
  if (ac == NULL || redisAsyncCommand(ac, on_parent_spec, en, "HGET %s%s spec",
                                      PT_KEY_TRADE, en->parent) != REDIS_OK)
    entry_end(en, 0);
}

/* ---- reading ------------------------------------------------------------ */

/* Starts every entry of a batch. Returns the number of entries listed,
 * deleted ones included. */
static size_t handle_entries(pt_relay_t *r, const redisReply *entries) {
  size_t listed = 0;
  if (entries == NULL || entries->type != REDIS_REPLY_ARRAY)
    return 0;
  r->handling = 1;
  for (size_t i = 0; i < entries->elements; i++) {
    const redisReply *e = entries->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
      continue; /* XAUTOCLAIM lists deleted entries as nil */
    const redisReply *fields = e->element[1];
    entry_t *en = NULL;
    if (fields->type == REDIS_REPLY_ARRAY &&
        (en = calloc(1, sizeof *en)) == NULL) {
      r->batch_failed = 1; /* the rest stay pending, read again */
      break;
    }
    listed++;
    if (r->own_pass && !r->probing)
      snprintf(r->own_from, sizeof r->own_from, "%s", e->element[0]->str);
    if (en == NULL) {
      /* A pending entry since deleted (XREADGROUP from "0" lists it with
       * no fields): nothing to relay, only to acknowledge. */
      add_done(r, e->element[0]->str);
      continue;
    }
    en->r = r;
    snprintf(en->id, sizeof en->id, "%s", e->element[0]->str);
    r->inflight++;
    const char *kind = field_str(fields, "kind");
    if (strcmp(kind, "event") == 0)
      relay_event(en, fields);
    else if (strcmp(kind, "spawn") == 0)
      relay_spawn(en, fields);
    else {
      PT_ERROR("outbox_entry_damaged", "entry=%s kind=\"%s\"", en->id, kind);
      entry_end(en, 1);
    }
  }
  r->handling = 0;
  if (r->inflight == 0)
    batch_end(r);
  return listed;
}

/* The outbox cannot be read (Redis refuses: out of memory, a wrong type):
 * retried every 100 ms, said at most every 10 s. */
static void read_failed(pt_relay_t *r, const char *why) {
  int64_t now = pt_now_ms();
  if (now - r->last_error_ms < 10000)
    return;
  r->last_error_ms = now;
  PT_ERROR("outbox_read_failed", "err=\"%s\" note=\"events and follow-up "
           "tasks wait in pt:outbox\"", why);
}

/* A pass over this relay's own pending entries reached their end. If
 * nothing in it could be relayed, the cause may be the broker or Redis
 * (refusing everything) or those entries alone: one new entry is tried
 * (the probe, see batch_end) before new entries are read again, so a
 * refusing broker does not pull the outbox into the pending list, and
 * one entry that keeps failing does not hold up the others. Otherwise
 * new entries are read again; an entry that still fails waits for the
 * next pass or a claim. */
static void own_pass_done(pt_relay_t *r) {
  if (r->pass_failed > 0 && r->pass_ok == 0)
    r->probing = 1;
  else
    end_pass(r);
  pt_relay_kick(r);
}

static void on_read(redisAsyncContext *ac, void *reply, void *arg) {
  pt_relay_t *r = arg;
  redisReply *rep = reply;
  (void)ac;
  r->reading = 0;
  if (r->closing) {
    maybe_free(r);
    return;
  }
  if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
    r->claiming = 0;
    if (rep != NULL && strstr(rep->str, "NOGROUP") != NULL)
      r->group_ok = 0;
    else
      read_failed(r, rep != NULL ? rep->str : "redis connection lost");
    return;
  }
  int probe = r->probing && !r->claiming;
  int own = r->own_pass && !r->claiming && !probe;
  r->claiming = 0;
  size_t listed = 0;
  /* XREADGROUP: [[stream, entries]] (nil: no new entries); XAUTOCLAIM:
   * [next, entries, …], whose next is the cursor of the following claim
   * ("0-0": the stream is done, start again from its beginning). */
  if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
      rep->element[0]->type == REDIS_REPLY_STRING) {
    snprintf(r->claim_from, sizeof r->claim_from, "%s",
             rep->element[0]->str);
    handle_entries(r, rep->element[1]);
  } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 &&
      rep->element[0]->type == REDIS_REPLY_ARRAY &&
      rep->element[0]->elements == 2)
    listed = handle_entries(r, rep->element[0]->element[1]);
  if (own && listed == 0)
    own_pass_done(r);
  if (probe && listed == 0) { /* no new entry waits: the pass starts over */
    start_pass(r);
    pt_relay_kick(r);
  }
  maybe_free(r);
}

static void on_group(redisAsyncContext *ac, void *reply, void *arg) {
  pt_relay_t *r = arg;
  redisReply *rep = reply;
  (void)ac;
  r->reading = 0;
  if (rep != NULL && (rep->type == REDIS_REPLY_STATUS ||
                      (rep->type == REDIS_REPLY_ERROR &&
                       strstr(rep->str, "BUSYGROUP") != NULL)))
    r->group_ok = 1;
  else
    read_failed(r, rep == NULL ? "redis connection lost"
                   : rep->type == REDIS_REPLY_ERROR ? rep->str
                                                    : "XGROUP CREATE failed");
  if (r->closing) {
    maybe_free(r);
    return;
  }
  if (r->group_ok)
    pt_relay_kick(r);
}

static void on_tick(uv_timer_t *t) {
  pt_relay_t *r = t->data;
  redisAsyncContext *ac = pt_redis_ctx(r->redis);
  if (r->stopping) {
    if (!r->reading && r->inflight == 0 && r->idle_cb != NULL) {
      void (*cb)(void *) = r->idle_cb;
      r->idle_cb = NULL;
      uv_timer_stop(&r->timer);
      cb(r->idle_arg);
    }
    return;
  }
  if (r->closing || r->reading || r->inflight > 0 || ac == NULL ||
      !pt_amqp_is_ready(r->amqp) || pt_amqp_is_blocked(r->amqp) ||
      uv_now(r->loop) < r->next_read_ms)
    return; /* blocked: the entries wait in the outbox until it clears */
  r->reading = 1;
  int rc;
  if (!r->group_ok) {
    rc = redisAsyncCommand(ac, on_group, r, "XGROUP CREATE %s %s 0 MKSTREAM",
                           PT_STREAM_OUTBOX, PT_RELAY_GROUP);
  } else if (r->probing) {
    rc = redisAsyncCommand(ac, on_read, r,
                           "XREADGROUP GROUP %s %s COUNT 1 STREAMS %s >",
                           PT_RELAY_GROUP, r->consumer, PT_STREAM_OUTBOX);
  } else if (r->own_pass) {
    rc = redisAsyncCommand(ac, on_read, r,
                           "XREADGROUP GROUP %s %s COUNT %d STREAMS %s %s",
                           PT_RELAY_GROUP, r->consumer, PT_RELAY_BATCH,
                           PT_STREAM_OUTBOX, r->own_from);
  } else if (uv_now(r->loop) - r->last_claim_ms > 5000) {
    r->last_claim_ms = uv_now(r->loop);
    r->claiming = 1;
    /* Idle longer than a live relay may wait for its confirm, so only
     * entries of a relay that is gone are taken. */
    rc = redisAsyncCommand(ac, on_read, r,
                           "XAUTOCLAIM %s %s %s %lld %s COUNT 100",
                           PT_STREAM_OUTBOX, PT_RELAY_GROUP, r->consumer,
                           (long long)(r->cfg->amqp_confirm_timeout_ms +
                                       PT_RELAY_CLAIM_IDLE_MS),
                           r->claim_from);
  } else {
    rc = redisAsyncCommand(ac, on_read, r,
                           "XREADGROUP GROUP %s %s COUNT %d STREAMS %s >",
                           PT_RELAY_GROUP, r->consumer, PT_RELAY_BATCH,
                           PT_STREAM_OUTBOX);
  }
  if (rc != REDIS_OK)
    r->reading = r->claiming = 0;
}

pt_relay_t *pt_relay_new(uv_loop_t *loop, const pt_config_t *cfg,
                         pt_redis_t *redis, pt_amqp_t *amqp,
                         const char *consumer) {
  pt_relay_t *r = calloc(1, sizeof *r);
  if (r == NULL)
    return NULL;
  r->loop = loop;
  r->cfg = cfg;
  r->redis = redis;
  r->amqp = amqp;
  snprintf(r->consumer, sizeof r->consumer, "%s", consumer);
  snprintf(r->claim_from, sizeof r->claim_from, "0-0");
  uv_timer_init(loop, &r->timer);
  r->timer.data = r;
  uv_timer_start(&r->timer, on_tick, 0, 100);
  return r;
}

void pt_relay_kick(pt_relay_t *r) {
  if (r != NULL && !r->closing)
    uv_timer_start(&r->timer, on_tick, 0, 100);
}

size_t pt_relay_inflight(const pt_relay_t *r) { return r ? r->inflight : 0; }

void pt_relay_stop(pt_relay_t *r, void (*idle_cb)(void *), void *arg) {
  if (r == NULL || r->closing)
    return;
  r->stopping = 1;
  r->idle_cb = idle_cb;
  r->idle_arg = arg;
  uv_timer_start(&r->timer, on_tick, 0, 100);
}

long pt_relay_sent(const pt_relay_t *r) { return r ? r->sent : 0; }

static void on_timer_closed(uv_handle_t *h) {
  pt_relay_t *r = h->data;
  r->timer_closed = 1;
  maybe_free(r);
}

void pt_relay_destroy(pt_relay_t *r) {
  if (r == NULL)
    return;
  r->closing = 1;
  uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}
