#include "worker/pt_worker.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_amqp.h"
#include "core/pt_http_client.h"
#include "core/pt_id.h"
#include "core/pt_lease.h"
#include "core/pt_httpd.h"
#include "core/pt_log.h"
#include "core/pt_metrics.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "runner/pt_runner.h"
#include "runner/pt_topology.h"
#include "tasks/pt_chan_util.h"
#include "tasks/pt_registry.h"
#include "worker/pt_supervisor.h"
#include "worker/pt_relay.h"
#include "worker/pt_sync.h"

typedef struct {
  uv_loop_t *loop;
  const pt_config_t *cfg;
  pt_amqp_t *amqp;
  pt_redis_t *redis;
  pt_http_client_t *http;
  pt_runner_env_t env;
  pt_sync_t *sync;
  pt_relay_t *relay;
  int relay_stopping, relay_idle; /* draining: the relay's last entries */
  pt_idgen_t ids; /* follow-up task ids */
  pt_lease_t lease;
  int lease_lost; /* another process holds our node id: issue no ids */
  int fault_exit_after_final; /* tests: die between state and publish */
  uv_signal_t sigterm, sigint;
  uv_timer_t retry_timer; /* reconnects */
  uv_timer_t drain_timer; /* SIGTERM deadline */
  int interrupting;       /* past the deadline: return work, don't finish */
  pt_metrics_t *metrics;
  pt_httpd_t *metrics_httpd; /* GET /metrics, when configured */
  uv_timer_t heartbeat;      /* status for `paytask inspect`, in Redis */
  uv_timer_t lease_timer;    /* renews the node id lease */
  char consumer[96];
  /* This process's claim on the attempts it starts (pt_store_start): its
   * heartbeat carries run, a token no other process has. */
  char run[17];
  pt_store_owner_t owner;
  long finals_per_s[60];     /* final states per second, last minute */
  int64_t finals_sec;        /* the second finals_per_s[finals_sec % 60] is */
  long finals_total;
  long connects_seen; /* channel connections already counted in metrics */
  long bulk_writes_seen; /* MongoDB bulk writes already counted */
  unsigned gen;           /* AMQP connection generation */
  size_t inflight;
  /* worker.concurrency: jobs (deliveries past parsing) at once, and the
   * deliveries waiting for one of those slots, oldest first */
  size_t working, waiting;
  struct kept *wait_head, *wait_tail;
  int admitting;
  int draining;
  int exit_code;
} worker_t;

/* One delivery in flight. */
typedef struct job {
  worker_t *w;
  unsigned gen;
  uint64_t tag;
  int redelivered;
  pt_task_t task;
  const pt_runner_ops_t *runner;
  /* the attempt's record, kept until Redis has it */
  const char *status;
  char *result_json;
  char *error_json;
  char *history_json;
  int64_t next_at_ms;
  uv_timer_t backoff;             /* see job_after_a_second */
  void (*after)(struct job *j);   /* what runs when it has passed */
  /* what this attempt does to its trade (see pt_store_trade_t) */
  pt_store_trade_t trade;
  int has_trade;
  char trade_id[21], trade_state[16], trade_no[65];
  char ids[3][21]; /* query, close, notify task ids */
  char *spec_json;
  int spec_sent; /* the start script was given the spec (see start_job) */
  int busy_polls; /* times start answered that another worker runs it */
  int copy_attempt; /* the copy publish_copy waits to publish while the */
  int copy_dead;    /* broker blocks publishers (to the dead queue) */
  /* why this worker cannot run the task (its configuration lacks the
   * channel, say): it ends FAILED once started, see fail_refused */
  int refused;
  pt_input_error_t refusal;
} job_t;

static void admit_waiting(worker_t *w);

static void job_free(job_t *j) {
  worker_t *w = j->w;
  w->inflight--;
  w->working--;
  pt_task_destroy(&j->task);
  bson_free(j->result_json);
  bson_free(j->error_json);
  bson_free(j->history_json);
  bson_free(j->spec_json);
  free(j);
  admit_waiting(w);
}

static void maybe_finish_drain(worker_t *w);

/* 1 if a delivery that came on connection gen can still be acknowledged
 * or given back: that connection still stands (delivery tags belong to one
 * channel). Otherwise the broker redelivers it on the new one. */
static int delivery_ours(const worker_t *w, unsigned gen) {
  return gen == w->gen && pt_amqp_is_ready(w->amqp);
}

/* Ends a job: acknowledges its delivery if its connection still stands,
 * otherwise leaves it to the broker's redelivery, which the start script
 * recognises. */
static void job_ack(job_t *j) {
  worker_t *w = j->w;
  if (delivery_ours(w, j->gen))
    pt_amqp_ack(w->amqp, j->tag);
  job_free(j);
  maybe_finish_drain(w);
}

/* Gives a delivery back to the broker at once, untouched in Redis. */
static void job_give_back(job_t *j) {
  worker_t *w = j->w;
  if (delivery_ours(w, j->gen))
    pt_amqp_nack(w->amqp, j->tag, 1);
  job_free(j);
  maybe_finish_drain(w);
}

/* The timer is closed before `after` runs, which may free the job or
 * wait again. */
static void on_waited(uv_handle_t *h) {
  job_t *j = h->data;
  j->after(j);
}

static void on_wait_timer(uv_timer_t *t) {
  uv_close((uv_handle_t *)t, on_waited);
}

/* Runs after(j) in a second: the pause before a delivery goes back (so an
 * outage does not spin), or between two tries of a step that waits for
 * something (the attempt's owner, the broker's unblocking). */
static void job_after(job_t *j, uint64_t ms, void (*after)(job_t *j)) {
  j->after = after;
  uv_timer_init(j->w->loop, &j->backoff);
  j->backoff.data = j;
  uv_timer_start(&j->backoff, on_wait_timer, ms, 0);
}

static void job_after_a_second(job_t *j, void (*after)(job_t *j)) {
  job_after(j, 1000, after);
}

static void on_released(int status, pt_verdict_t v, const char *detail,
                        void *arg) {
  job_t *j = arg;
  worker_t *w = j->w;
  /* The n-th release of the task waits 2^(n-1) s (at most a minute)
   * before the give-back, which runs the attempt again. */
  long n = status == 0 && v == PT_V_OK ? strtol(detail, NULL, 10) : 1;
  uint64_t pause_ms = n <= 1 ? 1000 : n >= 7 ? 60000 : 1000u << (n - 1);
  if (status != 0)
    PT_WARN("claim_release_failed", "task_id=%s attempt=%d err=\"%s\" "
            "note=\"a redelivered copy waits until the claim lapses\"",
            j->task.id_str, j->task.attempt, detail);
  if (!delivery_ours(w, j->gen)) { /* the broker redelivers it */
    job_free(j);
    maybe_finish_drain(w);
    return;
  }
  if (w->draining) { /* no pause holds a stop back */
    job_give_back(j);
    return;
  }
  if (pause_ms > 1000)
    PT_WARN("attempt_given_back_again", "task_id=%s attempt=%d releases=%ld "
            "pause_ms=%llu", j->task.id_str, j->task.attempt, n,
            (unsigned long long)pause_ms);
  job_after(j, pause_ms, job_give_back);
}

/* The job ends without its outcome recorded (Redis could not record it, or
 * a copy it published was not confirmed): it drops its claim on the
 * attempt, so that the redelivered message resumes it at once rather than
 * wait for the claim to lapse, and gives the message back to the broker
 * after a pause (1 s, doubling with each release of the task up to a
 * minute), so that an outage or a broker refusing every copy does not
 * spin, nor repeat the attempt's channel call every second. */
static void job_requeue_later(job_t *j) {
  redisAsyncContext *ac = pt_redis_ctx(j->w->redis);
  if (ac == NULL || pt_store_release(ac, j->task.id_str, j->task.attempt,
                                     j->w->run, on_released, j) != 0)
    on_released(PT_EREDIS, PT_V_OK, "redis unavailable", j);
}

/* Moves the per-second ring of final states to second sec, zeroing the
 * seconds that passed, so it always holds exactly the last minute. */
static void advance_finals(worker_t *w, int64_t sec) {
  if (sec - w->finals_sec >= 60) {
    memset(w->finals_per_s, 0, sizeof w->finals_per_s);
  } else {
    for (int64_t t = w->finals_sec + 1; t <= sec; t++)
      w->finals_per_s[t % 60] = 0;
  }
  if (sec > w->finals_sec)
    w->finals_sec = sec;
}

static void count(job_t *j, const char *name, const char *help,
                  const char *extra) {
  char labels[320];
  snprintf(labels, sizeof labels, "type=\"%s\",channel=\"%s\"%s%s",
           j->task.type, j->task.channel, extra ? "," : "", extra ? extra : "");
  pt_metrics_inc(j->w->metrics, name, help, labels, 1);
}

static void log_job(const char *event, const job_t *j, const char *extra) {
  PT_INFO(event, "task_id=%s type=%s channel=%s attempt=%d %s",
          j->task.id_str, j->task.type, j->task.channel, j->task.attempt,
          extra ? extra : "");
}

static void on_finished(int status, pt_verdict_t v, const char *detail,
                        void *arg) {
  job_t *j = arg;
  if (status != 0) {
    PT_ERROR("state_write_failed", "task_id=%s attempt=%d err=\"%s\"",
             j->task.id_str, j->task.attempt, detail);
    job_requeue_later(j);
    return;
  }
  if (v == PT_V_LOST) {
    /* Its outcome has nowhere to go: given back, the delivery rebuilds the
     * hash from the message and resumes the attempt (query first). */
    PT_ERROR("task_hash_lost", "task_id=%s attempt=%d status=%s note=\"Redis "
             "lost the task's record while the attempt ran; the attempt is "
             "given back and resumes\"", j->task.id_str, j->task.attempt,
             j->status);
    job_requeue_later(j);
    return;
  }
  if (v == PT_V_STALE) {
    log_job("finish_stale", j, "note=\"another delivery moved the task on\"");
  } else if (strcmp(j->status, "RETRY_WAIT") == 0) {
    count(j, "paytask_tasks_retried_total", "attempts scheduled again", NULL);
  } else {
    worker_t *w = j->w;
    if (w->fault_exit_after_final) {
      /* Tests only: die after the state change, before the relay reads
       * the outbox and before the delivery is acknowledged. */
      PT_WARN("fault_injected", "task_id=%s note=\"exiting after the final "
              "state\"", j->task.id_str);
      _exit(137);
    }
    pt_relay_kick(w->relay);
    if (strncmp(detail, "reopened:", 9) == 0)
      PT_ERROR("trade_paid_after_final",
               "task_id=%s trade=%s was=%s note=\"the channel says paid; "
               "the trade is SUCCEEDED now and the merchant notified "
               "again: deliver or refund\"",
               j->task.id_str, j->trade_id, detail + 9);
    if (strcmp(j->task.type, "notify") == 0 &&
        strcmp(j->status, "FAILED") == 0) {
      PT_ERROR("notify_given_up",
               "task_id=%s parent=%s url=\"%s\" attempts=%d note=\"the "
               "merchant was not told; replay the notify task\"",
               j->task.id_str, j->trade_id,
               j->task.notify_url ? j->task.notify_url : "",
               j->task.attempt);
      count(j, "paytask_notify_given_up_total",
            "merchant notifications given up after the last retry", NULL);
    }
    int64_t sec = pt_now_ms() / 1000;
    advance_finals(w, sec);
    w->finals_per_s[sec % 60]++;
    w->finals_total++;
    char st[40];
    snprintf(st, sizeof st, "status=\"%s\"", j->status);
    count(j, "paytask_tasks_final_total", "tasks that reached a final status",
          st);
    char labels[64];
    snprintf(labels, sizeof labels, "type=\"%s\",channel=\"%s\"",
             j->task.type, j->task.channel);
    pt_metrics_observe(j->w->metrics, "paytask_submit_to_final_seconds",
                       "from submit to final status", labels,
                       (double)(pt_now_ms() - j->task.created_at_ms) / 1000.0);
  }
  job_ack(j);
}

static void write_finish(job_t *j) {
  pt_store_finish_t f = {.attempt = j->task.attempt,
                         .status = j->status,
                         .result_json = j->result_json,
                         .error_json = j->error_json,
                         .history_json = j->history_json,
                         .now_ms = pt_now_ms(),
                         .next_attempt_at_ms = j->next_at_ms,
                         .trade = j->has_trade ? &j->trade : NULL};
  redisAsyncContext *ac = pt_redis_ctx(j->w->redis);
  if (ac == NULL ||
      pt_store_finish(ac, j->task.id_str, &f, on_finished, j) != 0) {
    PT_ERROR("state_write_failed", "task_id=%s err=\"redis unavailable\"",
             j->task.id_str);
    job_requeue_later(j);
  }
}

static void on_copy_confirmed(pt_amqp_t *c, int status, void *arg) {
  job_t *j = arg;
  worker_t *w = j->w;
  (void)c;
  if (status != 0) {
    /* The copy may not exist: record nothing and let the broker redeliver
     * the original, which resumes the attempt. A refusal (PT_ENACK) leaves
     * the connection up and the delivery ours: it goes back after a pause,
     * as after a Redis failure, or it would keep its prefetch slot, and
     * the task stay RUNNING, until the connection ends. */
    PT_WARN("publish_unconfirmed", "task_id=%s attempt=%d err=\"%s\"%s",
            j->task.id_str, j->task.attempt, pt_strerror(status),
            delivery_ours(w, j->gen) ? " note=\"returned to the broker in 1 s\""
                                     : "");
    job_requeue_later(j);
    return;
  }
  write_finish(j);
}

static void publish_copy(job_t *j, int attempt, const pt_route_t *route);

static void publish_copy_again(job_t *j) {
  pt_route_t route;
  if (!j->copy_dead)
    pt_topology_route(j->next_at_ms, pt_now_ms(), &route);
  publish_copy(j, j->copy_attempt, j->copy_dead ? NULL : &route);
}

/* Publishes a copy of the task (attempt `attempt`), confirmed, then
 * writes the job's state: to the way route says (a retry, due later), or
 * to the dead queue when route is NULL. While the broker blocks publishers
 * (a memory or disk alarm) the job keeps its outcome and tries again every
 * second: giving the delivery back would only run the attempt again. */
static void publish_copy(job_t *j, int attempt, const pt_route_t *route) {
  worker_t *w = j->w;
  if (j->gen == w->gen && pt_amqp_is_blocked(w->amqp) && !w->interrupting) {
    if (j->copy_attempt == 0)
      log_job("copy_waits_for_broker", j, "note=\"the broker blocks "
              "publishers; trying again every second\"");
    j->copy_attempt = attempt;
    j->copy_dead = route == NULL;
    job_after_a_second(j, publish_copy_again);
    return;
  }
  size_t len;
  char mid[48];
  const char *exchange = route ? route->exchange : "";
  const char *key = route ? route->routing_key : PT_QUEUE_DEAD;
  char *body = pt_task_spec_json(&j->task, attempt, &len);
  snprintf(mid, sizeof mid, "%s:%d", j->task.id_str, attempt);
  pt_amqp_msg_t msg = {.persistent = 1,
                       .mandatory = 1, /* a copy no queue takes is lost */
                       .message_id = mid,
                       .headers = route ? (amqp_table_t *)&route->headers
                                        : NULL};
  int rc = j->gen == w->gen
               ? pt_amqp_publish(w->amqp, exchange, key, body, len, &msg,
                                 on_copy_confirmed, j)
               : PT_ECLOSED;
  bson_free(body);
  if (rc != 0) {
    PT_WARN("publish_failed", "task_id=%s queue=%s err=\"%s\"",
            j->task.id_str, key, pt_strerror(rc));
    job_requeue_later(j);
  }
}

static void on_interrupted(int status, pt_verdict_t v, const char *detail,
                           void *arg) {
  job_t *j = arg;
  worker_t *w = j->w;
  (void)v;
  (void)detail;
  if (status != 0)
    PT_ERROR("interrupt_write_failed", "task_id=%s", j->task.id_str);
  if (delivery_ours(w, j->gen))
    pt_amqp_nack(w->amqp, j->tag, 1);
  log_job("attempt_interrupted", j, "note=\"returned to the broker\"");
  job_free(j);
  maybe_finish_drain(w);
}

/* Past the drain deadline: undo the attempt's start in Redis and give the
 * message back, so another worker runs it without counting it. */
static void interrupt_job(job_t *j) {
  redisAsyncContext *ac = pt_redis_ctx(j->w->redis);
  if (ac == NULL || pt_store_interrupt(ac, j->task.id_str, j->task.attempt,
                                       pt_now_ms(), on_interrupted, j) != 0)
    on_interrupted(PT_EREDIS, PT_V_OK, "", j);
}

/* 0, or -1 when the clock stepped back too far to issue an id. */
static int next_id(worker_t *w, char out[21]) {
  uint64_t id = 0;
  if (w->lease_lost || pt_idgen_next(&w->ids, &id) != 0) {
    PT_ERROR("id_unavailable", "note=\"the clock stepped back, or the node "
             "id lease was lost; the attempt is given back and resumed\"");
    return -1;
  }
  pt_id_format(id, out);
  return 0;
}

static void result_str(const bson_t *result, const char *key, char *out,
                       size_t len) {
  bson_iter_t it;
  out[0] = '\0';
  if (bson_iter_init_find(&it, result, key) && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(out, len, "%s", bson_iter_utf8(&it, NULL));
}

/* What the attempt does to its trade, written with its state in one step:
 * a pay task of a channel that follows trades creates the trade and
 * schedules its first query and its close; query and close apply the
 * channel's answer; notify records whether the merchant got it. */
static int prepare_trade(job_t *j, const pt_attempt_report_t *rep) {
  worker_t *w = j->w;
  const pt_task_t *t = &j->task;
  pt_store_trade_t *tr = &j->trade;
  memset(tr, 0, sizeof *tr);
  result_str(rep->result, "trade_status", j->trade_state,
             sizeof j->trade_state);
  result_str(rep->result, "trade_no", j->trade_no, sizeof j->trade_no);
  if (strcmp(t->type, "pay") == 0) {
    const pt_channel_ops_t *chan = pt_channel_find(t->channel);
    if (rep->outcome != PT_OUTCOME_SUCCESS || chan == NULL ||
        !chan->follows_trades)
      return 0;
    int64_t s[PT_SCHEDULE_MAX];
    pt_config_schedule(w->cfg->query_schedule, s, PT_SCHEDULE_MAX);
    snprintf(j->trade_id, sizeof j->trade_id, "%s", t->id_str);
    j->spec_json = pt_task_spec_json(t, 0, NULL);
    tr->mode = "create";
    tr->source = "create";
    tr->channel = t->channel;
    tr->out_trade_no = t->out_trade_no;
    tr->notify_url = t->notify_url;
    tr->spec_json = j->spec_json;
    tr->amount = t->amount;
    /* The same window the channel was given: it closes the trade then. */
    tr->expire_at_ms =
        pt_chan_trade_expiry(t, w->cfg, pt_now_ms() / 1000) * 1000;
    tr->first_query_at_ms = pt_now_ms() + s[0] * 1000;
    if (next_id(w, j->ids[0]) != 0 || next_id(w, j->ids[1]) != 0)
      return -1;
    tr->query_task_id = j->ids[0];
    tr->close_task_id = j->ids[1];
  } else if (t->parent_id != 0 && (strcmp(t->type, "query") == 0 ||
                                   strcmp(t->type, "close") == 0 ||
                                   strcmp(t->type, "notify") == 0)) {
    pt_id_format(t->parent_id, j->trade_id);
    tr->mode = t->type;
    tr->source = t->type;
    /* The trade's index, whose TTL a settling query or close renews. */
    tr->channel = t->channel;
    tr->out_trade_no = t->out_trade_no;
  } else {
    return 0;
  }
  /* The id of the notify task a final trade spawns (a notify task's own
   * finish spawns none). */
  if (strcmp(tr->mode, "notify") != 0 && next_id(w, j->ids[2]) != 0)
    return -1;
  tr->notify_task_id = j->ids[2];
  tr->trade_id = j->trade_id;
  tr->state = j->trade_state[0] ? j->trade_state : NULL;
  tr->trade_no = j->trade_no[0] ? j->trade_no : NULL;
  j->has_trade = 1;
  return 0;
}

static void on_attempt_done(const pt_attempt_report_t *rep, void *arg) {
  job_t *j = arg;
  const char *outcome = pt_outcome_name(rep->outcome);
  char extra[400];

  if (j->w->interrupting) {
    interrupt_job(j);
    return;
  }

  j->history_json = pt_store_history_json(
      j->task.attempt, rep->started_ms, rep->ended_ms, outcome,
      rep->outcome == PT_OUTCOME_SUCCESS ? NULL : rep->error_code,
      rep->error_message);
  snprintf(extra, sizeof extra, "outcome=%s duration_ms=%lld code=%s",
           outcome, (long long)(rep->ended_ms - rep->started_ms),
           rep->error_code ? rep->error_code : "-");
  log_job("attempt_done", j, extra);
  {
    char labels[160], code[96];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    count(j, "paytask_attempts_total", "attempts that ended, by outcome",
          labels);
    snprintf(labels, sizeof labels, "type=\"%s\",channel=\"%s\"",
             j->task.type, j->task.channel);
    pt_metrics_observe(j->w->metrics, "paytask_attempt_duration_seconds",
                       "how long one attempt took", labels,
                       (double)(rep->ended_ms - rep->started_ms) / 1000.0);
    if (rep->outcome != PT_OUTCOME_SUCCESS && rep->error_code != NULL) {
      pt_metrics_label(code, sizeof code, rep->error_code);
      snprintf(labels, sizeof labels, "channel=\"%s\",code=\"%s\"",
               j->task.channel, code);
      pt_metrics_inc(j->w->metrics, "paytask_channel_errors_total",
                     "channel answers other than success, by code", labels, 1);
    }
  }

  if (prepare_trade(j, rep) != 0) {
    /* No ids for its follow-ups: nothing is recorded (a follow-up with id
     * 0 would collide with every other); the redelivered message resumes
     * the attempt, querying first. */
    job_requeue_later(j);
    return;
  }
  if (rep->outcome == PT_OUTCOME_SUCCESS) {
    j->status = "SUCCEEDED";
    j->result_json = pt_json_of(rep->result, NULL);
    write_finish(j);
    return;
  }
  j->error_json = pt_store_error_json(
      rep->error_code ? rep->error_code : "unknown_error", rep->error_message);
  if (rep->outcome == PT_OUTCOME_FAIL) {
    j->status = "FAILED";
    /* A notification that ends without being delivered (its address
     * refused, its trade gone) is given up as one that ran out of tries
     * is: dead-lettered too. */
    if (strcmp(j->task.type, "notify") == 0) {
      count(j, "paytask_tasks_dead_total", "tasks sent to the dead queue",
            "reason=\"notify_failed\"");
      publish_copy(j, j->task.attempt, NULL);
      return;
    }
    write_finish(j);
    return;
  }
  int delay = j->runner->retry_delay != NULL
                  ? j->runner->retry_delay(&j->task, j->w->cfg,
                                           j->task.attempt, rep->outcome)
                  : pt_retry_delay(&j->task, j->task.attempt, rep->outcome);
  if (delay > 0) {
    pt_route_t route;
    j->status = "RETRY_WAIT";
    j->next_at_ms = rep->ended_ms + (int64_t)delay * 1000;
    pt_topology_route(j->next_at_ms, rep->ended_ms, &route);
    publish_copy(j, j->task.attempt + 1, &route);
    return;
  }
  /* Out of attempts: FAILED, and a copy goes to the dead queue for
   * replay. */
  count(j, "paytask_tasks_dead_total", "tasks sent to the dead queue",
        "reason=\"retries_exhausted\"");
  j->status = "FAILED";
  publish_copy(j, j->task.attempt, NULL);
}

static void run_attempt(job_t *j, int resumed) {
  worker_t *w = j->w;
  count(j, "paytask_attempts_started_total", "attempts started", NULL);
  pt_runner_run(j->runner, &w->env, &j->task, j->task.attempt,
                j->task.attempt > 1 || resumed, on_attempt_done, j);
}

/* A query or close of a trade that a callback (or another query) settled
 * already has nothing to ask: it ends at once, without a channel call. */
static void on_trade_status(redisAsyncContext *ac, void *reply, void *arg) {
  job_t *j = arg;
  redisReply *r = reply;
  (void)ac;
  if (r != NULL && r->type == REDIS_REPLY_STRING &&
      pt_trade_state_final(pt_trade_state_parse(r->str))) {
    bson_t result = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&result, "trade_status", r->str);
    BSON_APPEND_UTF8(&result, "note", "settled before this ran");
    pt_attempt_report_t rep = {PT_OUTCOME_SUCCESS, &result, NULL, NULL,
                               pt_now_ms(), pt_now_ms()};
    on_attempt_done(&rep, j);
    bson_destroy(&result);
    return;
  }
  if (j->w->interrupting || j->w->env.http == NULL) {
    interrupt_job(j);
    return;
  }
  run_attempt(j, 0);
}

static void on_started(int status, pt_verdict_t v, const char *detail,
                       void *arg);

/* Runs the start script for the job's attempt. The spec goes along only
 * when the script asked for it (Redis lost the hash): written as JSON for
 * every delivery, it was the largest single cost of starting a task (6%
 * of the slow-channel worker's CPU, docs/BENCHMARKS.md). */
static void start_job(job_t *j, int with_spec) {
  worker_t *w = j->w;
  size_t len = 0;
  char *spec = with_spec ? pt_task_spec_json(&j->task, 0, &len) : NULL;
  j->spec_sent = with_spec;
  redisAsyncContext *ac = pt_redis_ctx(w->redis);
  int rc = ac == NULL ? PT_EREDIS
                      : pt_store_start(ac, j->task.id_str, j->task.attempt,
                                       j->redelivered, pt_now_ms(),
                                       (int)w->cfg->worker_max_redeliveries,
                                       &w->owner, spec, len, on_started, j);
  bson_free(spec);
  if (rc != 0) {
    PT_ERROR("state_read_failed", "task_id=%s err=\"redis unavailable\"",
             j->task.id_str);
    job_requeue_later(j);
  }
}

static void ask_owner_again(job_t *j) {
  /* Draining, another worker waits for the owner instead; and a delivery
   * whose connection dropped meanwhile is redelivered anyway. */
  if (j->w->draining || !delivery_ours(j->w, j->gen)) {
    job_give_back(j);
    return;
  }
  start_job(j, 0);
}

/* A redelivered attempt whose worker is alive and may still be running
 * it (the broker redelivers on a lost connection too): running it here as
 * well would make two calls to the channel at once, and count a crash that
 * did not happen. It waits, and asks start again every second, until the
 * owner has finished it (skip), has given it up, has died (its heartbeat
 * lapses within 10 s), or the claim's hold has passed (resume). */
static void wait_for_owner(job_t *j, const char *owner) {
  worker_t *w = j->w;
  if (j->busy_polls++ == 0)
    PT_INFO("attempt_busy", "task_id=%s attempt=%d owner=%s note=\"this "
            "attempt (or an earlier one) still runs in a live worker; asking "
            "again every second\"",
            j->task.id_str, j->task.attempt, owner);
  if (w->draining) {
    job_give_back(j);
    return;
  }
  job_after_a_second(j, ask_owner_again);
}

/* Ends the attempt FAILED without running it (code and message say why),
 * and sends a copy to the dead queue; the state is written once the copy
 * is confirmed. */
static void fail_to_dead(job_t *j, const char *code, const char *message) {
  /* Its trade learns of the end as of any other: a notification ended
   * this way is NOTIFY_FAILED, as one that ran out of tries (it stayed
   * PENDING, where no operator looks). */
  bson_t none = BSON_INITIALIZER;
  pt_attempt_report_t rep = {PT_OUTCOME_FAIL, &none,      code,
                             message,         pt_now_ms(), pt_now_ms()};
  int rc = prepare_trade(j, &rep);
  bson_destroy(&none);
  if (rc != 0) {
    job_requeue_later(j); /* no ids for its follow-ups: resumed later */
    return;
  }
  j->status = "FAILED";
  j->error_json = pt_store_error_json(code, message);
  j->history_json = pt_store_history_json(j->task.attempt, pt_now_ms(),
                                          pt_now_ms(), "failed", code,
                                          message);
  publish_copy(j, j->task.attempt, NULL);
}

/* A task that this worker cannot run although the api took it: the two
 * were configured differently (a channel configured at the api only, a
 * newer api's task type). Left as it was, the task would stay PENDING for
 * good while its message sat in the dead queue. It ends FAILED, loudly,
 * with no channel called, and its copy goes to the dead queue: once the
 * workers' configuration is fixed, `paytask replay --error-code
 * worker_refused` runs it again. */
static void fail_refused(job_t *j) {
  char extra[400];
  count(j, "paytask_tasks_dead_total", "tasks sent to the dead queue",
        "reason=\"worker_refused\"");
  snprintf(extra, sizeof extra, "code=%s err=\"%s\" note=\"this worker's "
           "configuration cannot run the task; FAILED and sent to the dead "
           "queue, to be replayed once fixed\"",
           j->refusal.code, j->refusal.message);
  PT_ERROR("task_refused", "task_id=%s type=%s channel=%s attempt=%d %s",
           j->task.id_str, j->task.type, j->task.channel, j->task.attempt,
           extra);
  char message[300];
  snprintf(message, sizeof message, "a worker could not run the task: %s",
           j->refusal.message);
  fail_to_dead(j, "worker_refused", message);
}

static void on_started(int status, pt_verdict_t v, const char *detail,
                       void *arg) {
  job_t *j = arg;
  worker_t *w = j->w;
  char extra[160];
  if (status != 0) {
    PT_ERROR("state_read_failed", "task_id=%s err=\"%s\"", j->task.id_str,
             detail);
    job_requeue_later(j);
    return;
  }
  switch (v) {
  case PT_V_NOSPEC:
    if (j->spec_sent) { /* cannot happen: the script writes a given spec */
      PT_ERROR("state_read_failed", "task_id=%s err=\"start asked for the "
               "spec twice\"", j->task.id_str);
      job_requeue_later(j);
      return;
    }
    PT_WARN("task_hash_rebuilt", "task_id=%s attempt=%d note=\"Redis had no "
            "record of the task and no tombstone; rebuilt from the message\"",
            j->task.id_str, j->task.attempt);
    start_job(j, 1);
    return;
  case PT_V_BUSY:
    wait_for_owner(j, detail);
    return;
  case PT_V_RUN:
  case PT_V_RESUME:
    if (w->interrupting || w->env.http == NULL) {
      interrupt_job(j);
      return;
    }
    if (j->refused) {
      fail_refused(j);
      return;
    }
    if (v == PT_V_RESUME)
      log_job("attempt_resumed", j, "note=\"redelivered after a crash\"");
    if (j->task.parent_id != 0 && (strcmp(j->task.type, "query") == 0 ||
                                   strcmp(j->task.type, "close") == 0)) {
      char parent[21];
      redisAsyncContext *ac = pt_redis_ctx(w->redis);
      pt_id_format(j->task.parent_id, parent);
      if (ac != NULL &&
          redisAsyncCommand(ac, on_trade_status, j, "HGET %s%s status",
                            PT_KEY_TRADE, parent) == REDIS_OK)
        return;
    }
    run_attempt(j, v == PT_V_RESUME);
    return;
  case PT_V_DEAD:
    count(j, "paytask_tasks_dead_total", "tasks sent to the dead queue",
          "reason=\"redelivery_limit\"");
    snprintf(extra, sizeof extra, "crashes=%s", detail);
    log_job("redelivery_limit", j, extra);
    fail_to_dead(j, "redelivery_limit",
                 "the task was redelivered too many times after worker "
                 "crashes");
    return;
  default:
    snprintf(extra, sizeof extra, "verdict=%d status=%s", (int)v,
             detail[0] ? detail : "-");
    PT_DEBUG("delivery_skipped", "task_id=%s attempt=%d %s", j->task.id_str,
             j->task.attempt, extra);
    job_ack(j);
    return;
  }
}

/* A delivery published on as it came: a message that cannot be a task, to
 * the dead queue, or an early one, to its next delay level. */
typedef struct {
  worker_t *w;
  unsigned gen;
  uint64_t tag;
  int status;
  uv_timer_t pause;
} poison_t;

static void passed_on_end(poison_t *p) {
  worker_t *w = p->w;
  free(p);
  w->inflight--;
  maybe_finish_drain(w);
}

static void on_pause_closed(uv_handle_t *h) { passed_on_end(h->data); }

static void on_pause(uv_timer_t *t) {
  poison_t *p = t->data;
  if (delivery_ours(p->w, p->gen) &&
      pt_amqp_nack(p->w->amqp, p->tag, 1) == 0)
    PT_WARN("publish_unconfirmed", "tag=%llu err=\"%s\" note=\"returned "
            "to the broker\"", (unsigned long long)p->tag,
            pt_strerror(p->status));
  uv_close((uv_handle_t *)t, on_pause_closed);
}

/* The delivery is acknowledged once the broker has its copy. If the broker
 * refuses the copy on a live connection, the delivery goes back to it after
 * a pause (as a job's does after a Redis failure), which delivers it again,
 * instead of keeping its prefetch slot until the connection ends; the
 * pause keeps a queue that refuses every copy from making a busy loop. */
static void on_passed_on(pt_amqp_t *c, int status, void *arg) {
  poison_t *p = arg;
  if (p->gen == p->w->gen && status != 0) {
    p->status = status;
    uv_timer_init(p->w->loop, &p->pause);
    p->pause.data = p;
    uv_timer_start(&p->pause, on_pause, 1000, 0);
    return;
  }
  if (p->gen == p->w->gen)
    pt_amqp_ack(c, p->tag);
  passed_on_end(p);
}

/* A message that cannot be a task goes to the dead queue as it came, so
 * that nothing is dropped silently, and is acknowledged once confirmed. */
static void reject_message(worker_t *w, const pt_amqp_delivery_t *d,
                           const pt_input_error_t *ie) {
  PT_ERROR("message_rejected", "tag=%llu code=%s err=\"%s\"",
           (unsigned long long)d->delivery_tag, ie->code, ie->message);
  poison_t *p = malloc(sizeof *p);
  char mid[48];
  /* Mandatory, as every task message: a dead queue that was deleted
   * returns the copy, and the delivery goes back to the broker. */
  snprintf(mid, sizeof mid, "rejected:%u:%llu", w->gen,
           (unsigned long long)d->delivery_tag);
  pt_amqp_msg_t msg = {.persistent = 1, .message_id = mid, .mandatory = 1};
  if (p == NULL)
    return; /* left unacked: the broker keeps it */
  *p = (poison_t){.w = w, .gen = w->gen, .tag = d->delivery_tag};
  w->inflight++;
  int rc = pt_amqp_publish(w->amqp, "", PT_QUEUE_DEAD, d->body, d->body_len,
                           &msg, on_passed_on, p);
  if (rc != 0) /* not even sent (the broker blocks publishers): back to the
                  broker after the pause, instead of holding its slot until
                  the connection ends */
    on_passed_on(NULL, rc, p);
}

/* A delivery kept as it came (body and tag), unacknowledged, to be worked
 * on later: when its due time comes (held) or when a slot frees
 * (waiting, see worker.concurrency). */
typedef struct kept {
  struct kept *next; /* the waiting FIFO */
  unsigned gen;
  int redelivered;
  uint64_t tag;
  size_t len;
  char body[];
} kept_t;

static kept_t *keep(const worker_t *w, const pt_amqp_delivery_t *d) {
  kept_t *k = malloc(sizeof *k + d->body_len + 1);
  if (k == NULL)
    return NULL;
  *k = (kept_t){NULL, w->gen, d->redelivered, d->delivery_tag, d->body_len};
  memcpy(k->body, d->body, d->body_len);
  k->body[d->body_len] = '\0';
  return k;
}

/* The kept delivery, if the connection it came on still stands: 1 and *d
 * filled, or 0 (the broker redelivers it on the new connection). */
static int kept_delivery(const worker_t *w, const kept_t *k,
                         pt_amqp_delivery_t *d) {
  if (!delivery_ours(w, k->gen))
    return 0;
  *d = (pt_amqp_delivery_t){.delivery_tag = k->tag,
                            .redelivered = k->redelivered,
                            .body = k->body,
                            .body_len = k->len};
  return 1;
}

/* The last second before a due time is waited out here, on a timer, with
 * the delivery held (unacknowledged): no delay level is that short, and a
 * close must never run before its trade's window ends. */
typedef struct {
  worker_t *w;
  kept_t *k;
  int64_t due; /* Unix ms */
  uv_timer_t timer;
} held_t;

static void process_delivery(worker_t *w, const pt_amqp_delivery_t *d);
static void admit(worker_t *w, const pt_amqp_delivery_t *d, kept_t **kept);
static void drop_waiting(worker_t *w);

static void on_held_closed(uv_handle_t *h) {
  held_t *hd = h->data;
  free(hd->k);
  free(hd);
}

static void on_held_due(uv_timer_t *t) {
  held_t *hd = t->data;
  worker_t *w = hd->w;
  pt_amqp_delivery_t d;
  /* A timer counts from the loop's time, taken at the start of its turn,
   * and the wall clock may differ from the loop's: it can fire a few ms
   * before the due time, and a task ran before it was due. */
  int64_t left = hd->due - pt_now_ms();
  if (left > 0) {
    uv_update_time(w->loop);
    uv_timer_start(t, on_held_due, (uint64_t)left, 0);
    return;
  }
  w->inflight--;
  if (kept_delivery(w, hd->k, &d))
    admit(w, &d, &hd->k);
  uv_close((uv_handle_t *)t, on_held_closed);
  maybe_finish_drain(w);
}

/* Returns 0, or PT_ENOMEM (nothing is held then). */
static int hold_until_due(worker_t *w, const pt_amqp_delivery_t *d,
                          int64_t due, int64_t wait) {
  held_t *hd = calloc(1, sizeof *hd);
  if (hd == NULL || (hd->k = keep(w, d)) == NULL) {
    free(hd);
    return PT_ENOMEM;
  }
  hd->w = w;
  hd->due = due;
  uv_timer_init(w->loop, &hd->timer);
  hd->timer.data = hd;
  uv_update_time(w->loop);
  uv_timer_start(&hd->timer, on_held_due, (uint64_t)wait, 0);
  w->inflight++;
  return 0;
}

/* Publishes d as it came, its own headers included, to the delay level
 * that fits the time left (at least 1 s); on_passed_on settles d. Returns
 * 0, or the code of a publish that did not start. */
static int send_on(worker_t *w, const pt_amqp_delivery_t *d, int64_t due,
                   int64_t now) {
  pt_route_t route;
  char mid[128];
  poison_t *p = malloc(sizeof *p);
  if (p == NULL)
    return PT_ENOMEM;
  *p = (poison_t){.w = w, .gen = w->gen, .tag = d->delivery_tag};
  pt_topology_route(due, now, &route);
  pt_amqp_msg_t msg = {.persistent = 1,
                       .headers = (amqp_table_t *)&d->props->headers};
  if (d->props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
    snprintf(mid, sizeof mid, "%.*s", (int)d->props->message_id.len,
             (const char *)d->props->message_id.bytes);
    msg.message_id = mid;
    msg.mandatory = strlen(mid) < 64; /* a return is matched by its id */
  }
  w->inflight++;
  int rc = pt_amqp_publish(w->amqp, route.exchange, route.routing_key,
                           d->body, d->body_len, &msg, on_passed_on, p);
  if (rc != 0) {
    w->inflight--;
    free(p);
  }
  return rc;
}

/* A delayed message that arrived before its due time (the delay was
 * longer than the level it waited in) goes on to the next level, or is
 * held here through its last second. Returns 0 when d is due (the caller
 * runs it), else 1: d is taken even if it could not be sent on or held
 * (the connection broke in this read, or memory ran out). It then goes
 * back to the broker, or stays with it when the connection is gone, and
 * comes again: run early, a close would end its trade's window while the
 * buyer may still pay. */
static int forward_early(worker_t *w, const pt_amqp_delivery_t *d) {
  int64_t due = pt_topology_due(d->props), now = pt_now_ms();
  int64_t wait = due - now;
  if (due <= 0 || wait <= 0)
    return 0;
  int rc = wait < 1000 ? hold_until_due(w, d, due, wait)
                        : send_on(w, d, due, now);
  if (rc != 0) {
    int back = pt_amqp_nack(w->amqp, d->delivery_tag, 1) == 0;
    PT_WARN("early_not_forwarded", "tag=%llu due_in_ms=%lld err=\"%s\" "
            "note=\"%s\"", (unsigned long long)d->delivery_tag,
            (long long)wait, pt_strerror(rc),
            back ? "returned to the broker"
                 : "the connection is lost: the broker redelivers it");
  }
  return 1;
}

/* ---- worker.concurrency ---------------------------------------------------
 * A delivery beyond the limit waits here as it came (its body and tag, a
 * few hundred bytes), still unacknowledged, until a job ends: the prefetch
 * can hold thousands of tasks while only `worker.concurrency` of them hold
 * a parsed task, Redis scripts and a channel call (a curl handle and its
 * connection, several KB). A wait from a connection that has since been
 * lost is dropped when it comes up: the broker redelivers it. */
static int at_limit(const worker_t *w) {
  return w->cfg->worker_concurrency > 0 &&
         w->working >= (size_t)w->cfg->worker_concurrency;
}

/* Works on d now, or queues it. kept, when not NULL, is d's own copy: a
 * queued delivery then takes it over (*kept becomes NULL) instead of being
 * copied again. */
static void admit(worker_t *w, const pt_amqp_delivery_t *d, kept_t **kept) {
  if (!at_limit(w) && w->wait_head == NULL) {
    process_delivery(w, d);
    return;
  }
  kept_t *q = kept != NULL ? *kept : keep(w, d);
  if (q == NULL)
    return; /* left unacked: redelivered when this connection ends */
  if (kept != NULL)
    *kept = NULL;
  if (w->wait_tail != NULL)
    w->wait_tail->next = q;
  else
    w->wait_head = q;
  w->wait_tail = q;
  w->waiting++;
  w->inflight++;
}

/* Takes the oldest waiting delivery off the FIFO (the caller frees it). */
static kept_t *wait_pop(worker_t *w) {
  kept_t *q = w->wait_head;
  w->wait_head = q->next;
  if (w->wait_head == NULL)
    w->wait_tail = NULL;
  w->waiting--;
  w->inflight--;
  return q;
}

/* Called whenever a job ends; not re-entered from the jobs it starts. */
static void admit_waiting(worker_t *w) {
  if (w->admitting)
    return;
  w->admitting = 1;
  while (w->wait_head != NULL && !at_limit(w)) {
    kept_t *q = wait_pop(w);
    pt_amqp_delivery_t d;
    if (kept_delivery(w, q, &d))
      process_delivery(w, &d);
    free(q);
  }
  w->admitting = 0;
}

static void drop_waiting(worker_t *w) {
  while (w->wait_head != NULL)
    free(wait_pop(w));
}

static void on_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d, void *arg) {
  worker_t *w = arg;
  (void)c;
  if (!forward_early(w, d))
    admit(w, d, NULL);
}

static void process_delivery(worker_t *w, const pt_amqp_delivery_t *d) {
  pt_input_error_t ie;
  job_t *j = calloc(1, sizeof *j);
  if (j == NULL)
    return; /* unacked: redelivered when this connection ends */
  if (pt_task_parse(d->body, d->body_len, PT_PARSE_MESSAGE, 0, &j->task,
                    &ie) != 0) {
    free(j); /* the parser already released the task */
    reject_message(w, d, &ie);
    return;
  }
  /* A task this worker cannot run is still a task: it is started, and
   * ends FAILED (fail_refused) instead of waiting PENDING for good. */
  if (pt_registry_check(&j->task, w->cfg, &j->refusal) != 0)
    j->refused = 1;
  j->w = w;
  w->working++;
  j->gen = w->gen;
  j->tag = d->delivery_tag;
  j->redelivered = d->redelivered;
  j->runner = pt_runner_find(j->task.type);
  w->inflight++;
  start_job(j, 0);
}

/* ---- heartbeat ------------------------------------------------------------ */

/* Every 2 s a worker writes its state to pt:worker:<consumer> (expiring
 * after 10 s, so a dead worker disappears): what `paytask inspect`
 * shows. */
static void on_heartbeat(uv_timer_t *t) {
  worker_t *w = t->data;
  redisAsyncContext *ac = pt_redis_ctx(w->redis);
  long last_min = 0;
  advance_finals(w, pt_now_ms() / 1000);
  for (int i = 0; i < 60; i++)
    last_min += w->finals_per_s[i];
  if (ac == NULL)
    return;
  redisAsyncCommand(ac, NULL, NULL,
                    "HSET pt:worker:%s pid %ld inflight %ld calls %ld "
                    "finals %ld finals_1m %ld draining %d updated_at %lld "
                    "waiting %ld run %s",
                    w->consumer, (long)getpid(), (long)w->inflight,
                    w->http ? (long)pt_http_client_inflight(w->http) : 0L,
                    w->finals_total, last_min, w->draining,
                    (long long)pt_now_ms(), (long)w->waiting, w->run);
  redisAsyncCommand(ac, NULL, NULL, "EXPIRE pt:worker:%s 10", w->consumer);
}

static void on_lease_renew(uv_timer_t *t) {
  worker_t *w = t->data;
  pt_lease_renew(&w->lease, pt_redis_ctx(w->redis));
}

/* ---- metrics ------------------------------------------------------------ */

static void on_metrics_request(pt_httpd_req_t *req, void *arg) {
  worker_t *w = arg;
  size_t plen, len;
  const char *p = pt_httpd_path(req, &plen);
  if (plen != 8 || memcmp(p, "/metrics", 8) != 0) {
    pt_httpd_respond(req, 404, "text/plain", "not found\n", 10, NULL);
    return;
  }
  pt_metrics_set(w->metrics, "paytask_worker_inflight",
                 "deliveries being worked on", NULL, (double)w->inflight);
  pt_metrics_set(w->metrics, "paytask_worker_waiting",
                 "deliveries received and waiting for a slot "
                 "(worker.concurrency)",
                 NULL, (double)w->waiting);
  pt_metrics_set(w->metrics, "paytask_worker_channel_calls_inflight",
                 "channel calls in flight", NULL,
                 w->http ? (double)pt_http_client_inflight(w->http) : 0);
  long opened = w->http ? pt_http_client_connects(w->http) : 0;
  pt_metrics_inc(w->metrics, "paytask_worker_channel_connections_total",
                 "connections opened to channels and merchants' notify "
                 "URLs (each a TCP and, for https, a TLS handshake)",
                 NULL, (double)(opened - w->connects_seen));
  w->connects_seen = opened;
  pt_metrics_set(w->metrics, "paytask_worker_broker_up",
                 "1 while the broker connection is ready", NULL,
                 pt_amqp_is_ready(w->amqp));
  pt_metrics_set(w->metrics, "paytask_sync_written",
                 "final states this worker's sync thread wrote to MongoDB",
                 NULL, (double)pt_sync_written(w->sync));
  long bulk = pt_sync_bulk_writes(w->sync);
  pt_metrics_inc(w->metrics, "paytask_sync_bulk_writes_total",
                 "bulk writes of this worker's sync thread that MongoDB accepted "
                 "(documents per write: see sync.linger_ms)",
                 NULL, (double)(bulk - w->bulk_writes_seen));
  w->bulk_writes_seen = bulk;
  char *text = pt_metrics_render(w->metrics, &len);
  pt_httpd_respond(req, 200, "text/plain; version=0.0.4", text ? text : "",
                   text ? len : 0, NULL);
  free(text);
}

static int start_metrics(worker_t *w, int index, pt_error_t *err) {
  char host[256];
  int port;
  if (w->cfg->worker_metrics_listen[0] == '\0')
    return 0;
  if (pt_config_hostport(w->cfg->worker_metrics_listen, host, sizeof host,
                         &port) != 0)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "worker.metrics_listen: expected address:port");
  if (port > 0 && port + index > 65535)
    return pt_error_set(err, PT_DOMAIN_CONFIG, PT_ECONFIG,
                        "worker.metrics_listen: port %d + worker index %d is "
                        "past 65535",
                        port, index);
  pt_httpd_opts_t o = {.host = host,
                       .port = port ? port + index : 0,
                       .max_body = 1024,
                       .handler = on_metrics_request,
                       .arg = w};
  w->metrics_httpd = pt_httpd_new(w->loop, &o, err);
  if (w->metrics_httpd == NULL)
    return PT_EIO;
  PT_INFO("worker_metrics", "addr=%s:%d", host, pt_httpd_port(w->metrics_httpd));
  return 0;
}

/* ---- connections and lifecycle --------------------------------------- */

static void connect_amqp(worker_t *w);

/* The retry timer's callback: its data is the worker. */
static void on_retry_connect(uv_timer_t *t) { connect_amqp(t->data); }

static void on_amqp_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  worker_t *w = arg;
  if (status != 0) {
    PT_ERROR("broker_connect_failed", "err=\"%s\" retry_in_ms=2000",
             err ? err->message : pt_strerror(status));
    if (!w->draining)
      uv_timer_start(&w->retry_timer, on_retry_connect, 2000, 0);
    return;
  }
  w->gen++;
  if (w->draining)
    return;
  if (pt_amqp_consume(c, PT_QUEUE_TASKS, (uint16_t)w->cfg->amqp_prefetch,
                      on_deliver, w) != 0)
    PT_ERROR("consume_failed", "queue=%s", PT_QUEUE_TASKS);
  else
    PT_INFO("worker_consuming", "queue=%s prefetch=%lld", PT_QUEUE_TASKS,
            (long long)w->cfg->amqp_prefetch);
}

static void connect_amqp(worker_t *w) {
  if (pt_amqp_start(w->amqp, on_amqp_ready, w) != 0)
    uv_timer_start(&w->retry_timer, on_retry_connect, 2000, 0);
}

static void on_amqp_lost(pt_amqp_t *c, int status, const pt_error_t *err,
                         void *arg) {
  worker_t *w = arg;
  (void)c;
  w->gen++; /* in-flight deliveries can no longer be acknowledged */
  drop_waiting(w);
  PT_ERROR("broker_lost", "err=\"%s\" retry_in_ms=1000",
           err ? err->message : pt_strerror(status));
  if (!w->draining)
    uv_timer_start(&w->retry_timer, on_retry_connect, 1000, 0);
}

/* Stops consuming and exits 1 once the jobs in flight have ended, so that
 * the supervisor starts a worker afresh. */
static void drain_to_restart(worker_t *w) {
  if (w->draining)
    return;
  w->exit_code = 1;
  w->draining = 1;
  pt_amqp_cancel_consume(w->amqp);
  maybe_finish_drain(w);
}

static void on_redis_lost(pt_redis_t *r, int status, const char *why,
                          void *arg) {
  worker_t *w = arg;
  (void)r;
  if (status != 0)
    PT_ERROR("redis_lost", "err=\"%s\"", why ? why : "");
  /* Jobs that need Redis requeue themselves; a new process gets a fresh
   * connection. */
  if (status != 0)
    drain_to_restart(w);
}

/* Another process holds this worker's node id: stop issuing ids from it;
 * the new process leases a free one. */
static void on_lease_lost(void *arg) {
  worker_t *w = arg;
  w->lease_lost = 1;
  drain_to_restart(w);
}

static void close_all(worker_t *w) {
  drop_waiting(w);
  uv_close((uv_handle_t *)&w->heartbeat, NULL);
  redisAsyncContext *ac = pt_redis_ctx(w->redis);
  if (ac != NULL)
    redisAsyncCommand(ac, NULL, NULL, "DEL pt:worker:%s", w->consumer);
  uv_close((uv_handle_t *)&w->drain_timer, NULL);
  uv_close((uv_handle_t *)&w->sigterm, NULL);
  uv_close((uv_handle_t *)&w->sigint, NULL);
  uv_close((uv_handle_t *)&w->retry_timer, NULL);
  uv_close((uv_handle_t *)&w->lease_timer, NULL);
  pt_lease_release(&w->lease, ac);
  pt_relay_destroy(w->relay);
  w->relay = NULL;
  pt_amqp_destroy(w->amqp);
  w->amqp = NULL;
  pt_redis_destroy(w->redis);
  w->redis = NULL;
  pt_http_client_destroy(w->http);
  w->http = NULL;
  w->env.http = NULL;
  pt_httpd_destroy(w->metrics_httpd);
  w->metrics_httpd = NULL;
}

/* The drain deadline: attempts still talking to a channel are cut off
 * (their callbacks run now with PT_ECANCELED and take the interrupt
 * path); the rest finish normally. */
static void on_drain_deadline(uv_timer_t *t) {
  worker_t *w = t->data;
  PT_WARN("drain_deadline", "inflight=%zu", w->inflight);
  w->interrupting = 1;
  pt_http_client_t *http = w->http;
  w->http = NULL;
  w->env.http = NULL;
  pt_http_client_destroy(http);
  maybe_finish_drain(w); /* if only the relay was still being waited for */
}

static void on_relay_idle(void *arg) {
  worker_t *w = arg;
  w->relay_idle = 1;
  maybe_finish_drain(w);
}

/* Once no attempt is left, the relay stops reading and ends the entries
 * it is publishing: closed with them in flight, it left them pending, to
 * be claimed and sent again 40 s later (an event twice, a follow-up late).
 * Past the drain deadline, or with Redis gone (nothing could be
 * acknowledged), nothing more is waited for. */
static void maybe_finish_drain(worker_t *w) {
  if (w == NULL || !w->draining || w->inflight > 0 || w->amqp == NULL)
    return;
  if (!w->relay_idle && !w->interrupting &&
      pt_redis_ctx(w->redis) != NULL) {
    if (!w->relay_stopping) {
      w->relay_stopping = 1;
      pt_relay_stop(w->relay, on_relay_idle, w);
    }
    return;
  }
  PT_INFO("worker_drained", "exit_code=%d", w->exit_code);
  close_all(w);
}

static void on_signal(uv_signal_t *s, int signum) {
  worker_t *w = s->data;
  if (w->draining)
    return;
  PT_INFO("worker_draining", "signal=%d inflight=%zu", signum, w->inflight);
  w->draining = 1;
  uv_timer_stop(&w->retry_timer);
  if (pt_amqp_is_ready(w->amqp))
    pt_amqp_cancel_consume(w->amqp);
  uv_timer_start(&w->drain_timer, on_drain_deadline,
                 (uint64_t)w->cfg->worker_drain_timeout_ms, 0);
  maybe_finish_drain(w);
}

/* A start that failed: closes what was opened (nothing runs yet) and
 * returns 1. */
static int start_failed(worker_t *w, const char *event, const pt_error_t *err) {
  PT_ERROR(event, "err=\"%s\"", err->message);
  pt_relay_destroy(w->relay);
  pt_amqp_destroy(w->amqp);
  pt_redis_destroy(w->redis);
  pt_http_client_destroy(w->http);
  pt_httpd_destroy(w->metrics_httpd);
  uv_run(w->loop, UV_RUN_DEFAULT);
  pt_channels_cleanup();
  pt_metrics_destroy(w->metrics);
  uv_loop_close(w->loop);
  free(w->loop);
  return 1;
}

/* 16 hex digits no other worker process has (the claim's run token; a
 * host and pid can come back after a restart, in a container). */
static void new_run_token(char out[17]) {
  unsigned char b[8] = {0};
  if (uv_random(NULL, NULL, b, sizeof b, 0, NULL) != 0) {
    uint64_t x = (uint64_t)pt_now_ms() ^ ((uint64_t)getpid() << 40);
    memcpy(b, &x, sizeof b);
  }
  for (int i = 0; i < 8; i++)
    snprintf(out + 2 * i, 3, "%02x", b[i]);
}

int pt_worker_run(const pt_config_t *cfg, int index) {
  worker_t w;
  pt_error_t err;
  char consumer[96], host[64] = "host";
  memset(&w, 0, sizeof w);
  w.cfg = cfg;
  /* A SIGTERM or SIGINT that comes while the worker starts waits until its
   * handlers are in place, and then drains it like any other: it does not
   * kill a worker half started. */
  sigset_t stops;
  sigemptyset(&stops);
  sigaddset(&stops, SIGTERM);
  sigaddset(&stops, SIGINT);
  sigprocmask(SIG_BLOCK, &stops, NULL);
  w.loop = malloc(sizeof *w.loop);
  uv_loop_init(w.loop);
  gethostname(host, sizeof host - 1);
  snprintf(consumer, sizeof consumer, "%s-%ld", host, (long)getpid());

  pt_amqp_opts_t ao = {.uri = cfg->amqp_uri,
                       .setup = pt_topology_declare,
                       .setup_arg = (void *)cfg,
                       .on_lost = on_amqp_lost,
                       .lost_arg = &w,
                       .confirm_timeout_ms = (int)cfg->amqp_confirm_timeout_ms};
  w.amqp = pt_amqp_new(w.loop, &ao);
  w.redis = pt_redis_connect(w.loop, cfg->redis_uri, on_redis_lost, &w, &err);
  w.http = pt_http_client_new(w.loop, &err);
  if (w.amqp == NULL || w.redis == NULL || w.http == NULL)
    return start_failed(&w, "worker_start_failed", &err);
  /* As many connections kept as calls can be in flight: a burst after a
   * lull reuses them instead of paying a TCP (and, to a real channel, a
   * TLS) handshake for a share of its calls. */
  pt_http_client_keep_connections(w.http, cfg->worker_concurrency > 0
                                              ? (long)cfg->worker_concurrency
                                              : (long)cfg->amqp_prefetch);
  pt_store_load_scripts(pt_redis_ctx(w.redis));
  if (pt_lease_node(cfg, &w.ids, &w.lease, &err) != 0 ||
      pt_channels_init(cfg, &err) != 0)
    return start_failed(&w, "worker_start_failed", &err);
  w.lease.lost = on_lease_lost;
  w.lease.lost_arg = &w;
  const char *fault = getenv("PAYTASK_FAULT");
  w.fault_exit_after_final =
      fault != NULL && strcmp(fault, "exit_after_final") == 0;
  w.env = (pt_runner_env_t){w.loop, w.http, cfg, w.redis};
  w.relay = pt_relay_new(w.loop, cfg, w.redis, w.amqp, consumer);
  if (w.relay == NULL) {
    pt_error_set(&err, PT_DOMAIN_SYSTEM, PT_ENOMEM, "no memory for the relay");
    return start_failed(&w, "worker_start_failed", &err);
  }
  w.metrics = pt_metrics_new();
  if (start_metrics(&w, index, &err) != 0)
    return start_failed(&w, "worker_start_failed", &err);
  w.sync = pt_sync_start(cfg, consumer, &err);
  if (w.sync == NULL)
    return start_failed(&w, "sync_start_failed", &err);
  uv_signal_init(w.loop, &w.sigterm);
  uv_signal_init(w.loop, &w.sigint);
  w.sigterm.data = w.sigint.data = &w;
  uv_signal_start(&w.sigterm, on_signal, SIGTERM);
  uv_signal_start(&w.sigint, on_signal, SIGINT);
  sigprocmask(SIG_UNBLOCK, &stops, NULL);
  uv_timer_init(w.loop, &w.retry_timer);
  w.retry_timer.data = &w;
  uv_timer_init(w.loop, &w.drain_timer);
  w.drain_timer.data = &w;
  snprintf(w.consumer, sizeof w.consumer, "%s", consumer);
  new_run_token(w.run);
  /* An attempt makes at most two channel calls (a query before a create),
   * each cut off at its timeout; past twice that and 10 s more, a claim
   * no longer holds back a redelivered copy even if its worker lives. */
  w.owner = (pt_store_owner_t){
      .worker = w.consumer,
      .run = w.run,
      .hold_ms = 2 * (cfg->worker_attempt_timeout_ms > cfg->notify_timeout_ms
                          ? cfg->worker_attempt_timeout_ms
                          : cfg->notify_timeout_ms) +
                 10000};
  uv_timer_init(w.loop, &w.heartbeat);
  w.heartbeat.data = &w;
  uv_timer_start(&w.heartbeat, on_heartbeat, 0, 2000);
  uv_timer_init(w.loop, &w.lease_timer);
  w.lease_timer.data = &w;
  uv_timer_start(&w.lease_timer, on_lease_renew, 20000, 20000);
  PT_INFO("worker_started", "consumer=%s pid=%ld", consumer, (long)getpid());
  connect_amqp(&w);
  uv_run(w.loop, UV_RUN_DEFAULT);
  pt_sync_stop(w.sync);
  pt_channels_cleanup();
  pt_metrics_destroy(w.metrics);
  int rc = uv_loop_close(w.loop);
  if (rc != 0)
    PT_WARN("loop_close", "err=\"%s\"", uv_strerror(rc));
  free(w.loop);
  PT_INFO("worker_stopped", "exit_code=%d", w.exit_code);
  return w.exit_code;
}

int pt_worker_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'},
      {"processes", required_argument, 0, 'n'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *path = NULL;
  long processes = 0;
  char *end;
  int c;
  while ((c = getopt_long(argc, argv, "c:n:h", opts, NULL)) != -1) {
    if (c == 'c') {
      path = optarg;
    } else if (c == 'n') {
      processes = strtol(optarg, &end, 10);
      if (*end != '\0' || processes < 1 || processes > 64) {
        fprintf(stderr, "paytask worker: --processes takes 1..64\n");
        return 2;
      }
    } else {
      fprintf(stderr,
              "usage: paytask worker [--config FILE] [--processes N]\n"
              "  with --processes: SIGTTIN adds a worker, SIGTTOU removes "
              "one, SIGTERM drains all\n");
      return c == 'h' ? 0 : 2;
    }
  }
  pt_config_t cfg;
  pt_error_t err;
  if (pt_config_load(&cfg, path, &err) != 0) {
    fprintf(stderr, "paytask worker: %s\n", err.message);
    return 2;
  }
  pt_log_setup((pt_log_level_t)pt_log_level_parse(cfg.log_level),
               strcmp(cfg.log_format, "json") == 0 ? PT_LOG_JSON
                                                   : PT_LOG_LOGFMT,
               "worker");
  if (processes > 0)
    return pt_supervisor_run(&cfg, (int)processes);
  return pt_worker_run(&cfg, 0);
}
