/* A task's state in Redis: one hash per task (pt:task:{id}), moved only by
 * the Lua scripts in pt_store.c, each one atomic compare-and-set step:
 *
 *   submit  (api)    create the hash PENDING, remember the Idempotency-Key
 *   abandon (api)    the publish failed: CANCELLED with broker_unavailable
 *   start   (worker) decide whether a delivered attempt runs, resumes after
 *                    a crash, is a duplicate, or goes to the dead queue
 *   finish  (worker) record an attempt's outcome; a final status also goes
 *                    to the sync stream (pt:sync), a tombstone
 *                    (pt:fin:{id}) and the pub/sub channel pt:final
 *   cancel  (api)    PENDING or RETRY_WAIT → CANCELLED
 *   interrupt (worker) an attempt cut off by the drain deadline is undone
 *   release (worker) a job that gave up drops its claim on its attempt
 *
 * Hash fields: spec (the task spec JSON), status, attempts, created_at,
 * updated_at, started_at, next_attempt_at (ms), result and error (JSON),
 * h:<n> (JSON history entry of attempt n), crashes, synced, owner and
 * owner_run (the worker running the attempt, see pt_store_start). */
#ifndef PT_STORE_H
#define PT_STORE_H

#include <bson/bson.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdint.h>

#include "core/pt_error.h"
#include "core/pt_task.h"

#define PT_KEY_TASK "pt:task:"
#define PT_KEY_FIN "pt:fin:"
#define PT_KEY_IDEM "pt:idem:"
#define PT_STREAM_SYNC "pt:sync"
#define PT_CHANNEL_FINAL "pt:final"
#define PT_TOMBSTONE_TTL_S 604800 /* 7 days */
#define PT_KEY_TRADE "pt:trade:"   /* pt:trade:{pay task id}: the trade */
#define PT_KEY_OTN "pt:otn:"       /* pt:otn:{channel}:{out_trade_no} → id */
#define PT_STREAM_OUTBOX "pt:outbox" /* events and tasks to publish */
#define PT_TRADE_TTL_S 2592000      /* 30 days */

/* Queues SCRIPT LOAD of every script on a new connection; commands sent
 * after it see the scripts (Redis runs a connection's commands in order). */
int pt_store_load_scripts(redisAsyncContext *ac);

/* Verdicts. */
typedef enum {
  PT_V_OK = 0,
  PT_V_DUP,        /* submit: the idempotency key is known (value given) */
  PT_V_EXISTS,     /* submit: task id already used */
  PT_V_TAKEN,      /* submit: another pay task holds this out_trade_no on
                      its channel (detail: its id) */
  PT_V_RUN,        /* start: run the attempt */
  PT_V_RESUME,     /* start: run it again after a crash; outcome was unknown */
  PT_V_SKIP_FINAL, /* start: the task is final or cancelled */
  PT_V_SKIP_DONE,  /* start: this attempt already finished */
  PT_V_SKIP_DUP,   /* start: another delivery is running this attempt */
  PT_V_BUSY,       /* start: redelivered, but the attempt's worker is alive
                      and may still run it (detail: that worker) */
  PT_V_DEAD,       /* start: redelivered too often after crashes */
  PT_V_NOSPEC,     /* start: the hash is lost; start again with the spec */
  PT_V_STALE,      /* finish: the task moved on without us */
  PT_V_LOST,       /* finish: the hash is gone and no tombstone says the
                      task ended: Redis lost it while the attempt ran */
  PT_V_NOTFOUND,   /* cancel */
  PT_V_CONFLICT,   /* cancel: not cancellable (detail holds the status) */
  PT_V_SAME,       /* trade: no step forward (detail: its status) */
  PT_V_MISMATCH,   /* notify: the amount differs from the trade's */
  PT_V_REOPENED    /* notify: the channel says SUCCEEDED for a trade recorded
                      CLOSED or FAILED; now SUCCEEDED (detail: "<task
                      id>:<what it was>") */
} pt_verdict_t;

/* status < 0: Redis failed (detail says why); else verdict is set. detail
 * lives only during the callback. */
typedef void (*pt_store_cb)(int status, pt_verdict_t verdict,
                            const char *detail, void *arg);

int pt_store_submit(redisAsyncContext *ac, const char *id, const char *spec,
                    size_t spec_len, int64_t now_ms, const char *idem_key,
                    const char *idem_val, int64_t idem_ttl_s, pt_store_cb cb,
                    void *arg);
/* Reads an Idempotency-Key without recording anything: PT_V_DUP with the
 * value the submit script stored ("<sha256 of the body>:<task id>"), or
 * PT_V_NOTFOUND. */
int pt_store_idem_get(redisAsyncContext *ac, const char *idem_key,
                      pt_store_cb cb, void *arg);

/* pt_store_submit for a pay task, which also takes its out_trade_no on its
 * channel (otn_key: pt_store_otn_key; NULL takes nothing): PT_V_TAKEN when
 * another pay task holds it and did not end FAILED or CANCELLED without a
 * trade. */
int pt_store_submit_pay(redisAsyncContext *ac, const char *id,
                        const char *spec, size_t spec_len, int64_t now_ms,
                        const char *idem_key, const char *idem_val,
                        int64_t idem_ttl_s, const char *otn_key,
                        pt_store_cb cb, void *arg);
/* A first submit that was not queued (its publish not confirmed, or its
 * submit script unanswered): withdraws the task (final CANCELLED, with the
 * error code and message) and frees its Idempotency-Key, but only if no
 * worker ever took it and no retry queued it:
 * PT_V_CONFLICT (detail: its status) otherwise, when it was accepted after
 * all; PT_V_NOTFOUND when it is gone from Redis with no trace of an end
 * (or was never recorded). */
int pt_store_abandon(redisAsyncContext *ac, const char *id,
                     const char *idem_key, int64_t now_ms, const char *code,
                     const char *message, pt_store_cb cb, void *arg);
/* A retry (same Idempotency-Key) published a PENDING task again and the
 * broker confirmed it: marks it so that abandon leaves it. PT_V_OK,
 * detail: the task's status ("" if gone). */
int pt_store_mark_queued(redisAsyncContext *ac, const char *id,
                         pt_store_cb cb, void *arg);
/* Who starts an attempt: the worker's name (its heartbeat is
 * pt:worker:<worker>) and a token unique to the process (the heartbeat's
 * `run` field), and how long a claim holds at most (ms). */
typedef struct {
  const char *worker;
  const char *run;
  int64_t hold_ms;
} pt_store_owner_t;

/* Decides what delivered attempt `attempt` does (PT_V_RUN, PT_V_RESUME,
 * PT_V_SKIP_*, PT_V_BUSY, PT_V_DEAD), and claims a started attempt for
 * owner (MAY be NULL: no claim, and a redelivered RUNNING attempt always
 * resumes). PT_V_BUSY: redelivered while the claiming worker's heartbeat
 * is alive and the attempt younger than its hold; nothing is written, and
 * the caller asks again later. spec MAY be NULL: if Redis lost the task's
 * hash, the answer is then PT_V_NOSPEC and nothing is written; start again
 * with the spec from the message, which rebuilds the hash. */
int pt_store_start(redisAsyncContext *ac, const char *id, int attempt,
                   int redelivered, int64_t now_ms, int max_crashes,
                   const pt_store_owner_t *owner, const char *spec,
                   size_t spec_len, pt_store_cb cb, void *arg);
/* Drops the claim of the worker with token run on RUNNING attempt
 * `attempt` (PT_V_STALE if it holds none): the job ends without its
 * outcome recorded, and the redelivered copy may resume it at once. */
int pt_store_release(redisAsyncContext *ac, const char *id, int attempt,
                     const char *run, pt_store_cb cb, void *arg);

/* What a finishing attempt does to its trade (all strings MAY be NULL). */
typedef struct {
  const char *mode;     /* "create" (a pay task made the trade), "query",
                           "close", "notify", or NULL: no trade */
  const char *trade_id; /* the pay task's id */
  const char *state;    /* the trade's state as the channel said it */
  const char *source;   /* "create", "query", "close" */
  const char *trade_no;
  const char *notify_task_id; /* a fresh id, used if the trade becomes final
                                 and has a notify_url */
  /* the trade's index (a create sets it; a settling query or close
   * renews its TTL with the trade's) */
  const char *channel, *out_trade_no;
  /* create only */
  const char *notify_url, *spec_json;
  int64_t amount, expire_at_ms, first_query_at_ms;
  const char *query_task_id, *close_task_id;
} pt_store_trade_t;

typedef struct {
  int attempt;
  const char *status;      /* "SUCCEEDED", "FAILED" or "RETRY_WAIT" */
  const char *result_json; /* MAY be NULL */
  const char *error_json;  /* MAY be NULL */
  const char *history_json;
  int64_t now_ms;
  int64_t next_attempt_at_ms; /* RETRY_WAIT only */
  const pt_store_trade_t *trade; /* MAY be NULL */
} pt_store_finish_t;

/* Records attempt f->attempt's outcome. PT_V_STALE if the task moved on
 * (another delivery finished the attempt, or the task ended); PT_V_LOST if
 * its hash is gone with no tombstone: nothing is written, and the delivery
 * must go back so that the start rebuilds the hash and resumes. */
int pt_store_finish(redisAsyncContext *ac, const char *id,
                    const pt_store_finish_t *f, pt_store_cb cb, void *arg);
/* PENDING or RETRY_WAIT → CANCELLED. PT_V_CONFLICT with the status when
 * past them, or with "internal" when the task's type is one of
 * refused_types (",query,close,notify,"; NULL: none). With a client (NULL:
 * any), PT_V_NOTFOUND for another client's task, whatever its status. */
int pt_store_cancel(redisAsyncContext *ac, const char *id, int64_t now_ms,
                    const char *refused_types, const char *client,
                    pt_store_cb cb, void *arg);
/* The drain deadline cut attempt n off: RUNNING goes back to PENDING or
 * RETRY_WAIT with attempts n-1 and a flag that makes the next start say
 * PT_V_RESUME (query before create). PT_V_STALE if the task moved on. */
int pt_store_interrupt(redisAsyncContext *ac, const char *id, int attempt,
                       int64_t now_ms, pt_store_cb cb, void *arg);

typedef void (*pt_store_hash_cb)(redisReply *reply, void *arg);

/* A channel's verified notification: applies its state to the trade found
 * by (channel, out_trade_no). Verdicts: OK (applied; detail is the pay
 * task id), SAME/STALE (nothing to do: a duplicate or a late arrival),
 * MISMATCH (the amount differs), NOTFOUND (no such trade yet). */
typedef struct {
  const char *out_trade_no;
  const char *state; /* pt_trade_state_name */
  const char *trade_no;
  int64_t amount; /* minor units, -1: not said */
  const char *notify_id;
  const char *notify_task_id; /* a fresh id for the notify task */
  int64_t now_ms;
} pt_store_notify_t;
int pt_store_notify(redisAsyncContext *ac, const char *channel,
                    const pt_store_notify_t *nt, pt_store_cb cb, void *arg);

void pt_store_otn_key(char *buf, size_t len, const char *channel,
                      const char *out_trade_no);

/* The value of field name in an HGETALL reply (or any flat field/value
 * array, such as a stream entry's), or NULL. */
const char *pt_store_hash_field(const redisReply *r, const char *name);

/* HGETALL of the trade of pay task id (an empty array when none). */
int pt_store_get_trade(redisAsyncContext *ac, const char *id,
                       pt_store_hash_cb cb, void *arg);

/* HGETALL of the task's hash; reply is the hiredis reply (an empty array
 * when the task is not in Redis), or NULL on failure. */
int pt_store_get(redisAsyncContext *ac, const char *id, pt_store_hash_cb cb,
                 void *arg);

/* Builds the api's task document from an HGETALL reply. Returns PT_ENOTFOUND
 * for an empty hash, PT_EPROTO if the hash is damaged. *final is set to 1
 * when the status is final. */
int pt_store_doc_from_hash(const redisReply *r, bson_t *doc, int *final,
                           pt_error_t *err);

/* The document of a task just submitted (PENDING), laid out exactly as
 * pt_store_doc_from_hash lays out a stored one. */
void pt_store_doc_pending(const pt_task_t *t, bson_t *doc);

/* A history entry for attempt n. */
char *pt_store_history_json(int attempt, int64_t started_ms, int64_t ended_ms,
                            const char *outcome, const char *error_code,
                            const char *error_message);
/* {"code": …, "message": …} */
char *pt_store_error_json(const char *code, const char *message);

#endif
