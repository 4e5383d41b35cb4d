/* The runner framework. A runner executes one kind of task; it is a table
 * of function pointers (curl's protocol handlers are the model): the
 * framework owns `run` (start an attempt, time it, collect its outcome) and
 * the retry policy (pt_retry_delay); each task kind supplies do_task, which
 * starts the work and later reports through pt_attempt_done(). do_task is
 * asynchronous: it must never block the loop. */
#ifndef PT_RUNNER_H
#define PT_RUNNER_H

#include <bson/bson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/pt_config.h"
#include "core/pt_http_client.h"
#include "core/pt_task.h"

/* How an attempt ended. A task's outcome is not a program error. */
typedef enum {
  PT_OUTCOME_SUCCESS = 0, /* done; result set */
  PT_OUTCOME_RETRY,       /* retryable failure: nothing happened at the channel */
  PT_OUTCOME_UNKNOWN,     /* retryable, but the channel may have acted: the
                             next attempt must query before it creates */
  PT_OUTCOME_FAIL         /* final failure */
} pt_outcome_t;

const char *pt_outcome_name(pt_outcome_t o);

typedef struct pt_attempt pt_attempt_t;

/* What an attempt may use: owned by the worker, shared by its attempts. */
typedef struct pt_redis pt_redis_t;

typedef struct {
  uv_loop_t *loop;
  pt_http_client_t *http;
  const pt_config_t *cfg;
  pt_redis_t *redis; /* for runners that read a trade (notify) */
} pt_runner_env_t;

typedef struct pt_runner_ops {
  /* MUST: the task type this runner executes ("pay"). */
  const char *type;
  /* MAY be 0: bytes of private state per attempt, zeroed by the framework
   * and freed by it after pt_attempt_done. */
  size_t priv_size;
  /* MAY be NULL: checks of this kind only, run at submit after the checks
   * common to every task. Return 0 or PT_EINVAL with *ie filled. */
  int (*validate)(const pt_task_t *t, pt_input_error_t *ie);
  /* MUST: start the attempt. It MUST call pt_attempt_done exactly once,
   * now or later from a callback. Returning non-zero means nothing was
   * started and pt_attempt_done will not be called; the framework then
   * reports a retryable failure. */
  int (*do_task)(pt_attempt_t *a);
  /* MAY be NULL (then pt_retry_delay): seconds to wait after attempt k
   * ended with o before attempt k+1, or -1 when the task ends now. */
  int (*retry_delay)(const pt_task_t *t, const pt_config_t *cfg, int attempt,
                     pt_outcome_t o);
  /* 1 for the kinds paytask schedules itself (query, close, notify): a
   * client cannot submit them. */
  int internal;
} pt_runner_ops_t;

/* Accessors for do_task. */
const pt_task_t *pt_attempt_task(const pt_attempt_t *a);
int pt_attempt_number(const pt_attempt_t *a);
/* 1 when an earlier attempt may have acted at the channel (its outcome was
 * unknown, or it died mid-way): query before creating. */
int pt_attempt_must_query(const pt_attempt_t *a);
void *pt_attempt_priv(pt_attempt_t *a);
const pt_runner_env_t *pt_attempt_env(const pt_attempt_t *a);

/* Reports the attempt's end. result (MAY be NULL) is copied. error_code and
 * error_message MAY be NULL on success. */
void pt_attempt_done(pt_attempt_t *a, pt_outcome_t o, const bson_t *result,
                     const char *error_code, const char *error_message);

/* What the framework hands back to its caller (the worker). Lives only
 * during the callback. */
typedef struct {
  pt_outcome_t outcome;
  const bson_t *result; /* empty when none */
  const char *error_code;
  const char *error_message;
  int64_t started_ms, ended_ms;
} pt_attempt_report_t;

typedef void (*pt_runner_done_cb)(const pt_attempt_report_t *rep, void *arg);

/* run: looks up nothing (the caller passes the runner), starts attempt
 * number `attempt` of task t (borrowed until done runs), and calls done
 * exactly once. */
void pt_runner_run(const pt_runner_ops_t *ops, const pt_runner_env_t *env,
                   const pt_task_t *t, int attempt, int must_query,
                   pt_runner_done_cb done, void *arg);

/* The retry policy, linear: after attempt k (1-based) ended with o, returns
 * k (seconds to wait before attempt k+1) when the task may try again, or -1
 * when it ends now. retry_times counts retries, so a task makes at most
 * 1 + retry_times attempts. */
int pt_retry_delay(const pt_task_t *t, int attempt, pt_outcome_t o);

/* A retry policy on a schedule ("15,30,60", pt_config_schedule): after
 * attempt k ended with a retryable outcome, schedule[k-1] seconds; -1
 * after a success or a final failure, or once the schedule is spent. */
int pt_schedule_retry_delay(const char *schedule, int attempt, pt_outcome_t o);

#endif
