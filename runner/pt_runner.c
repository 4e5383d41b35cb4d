#include "runner/pt_runner.h"

#include <stdlib.h>
#include <string.h>

#include "core/pt_id.h"

struct pt_attempt {
  const pt_runner_ops_t *ops;
  const pt_runner_env_t *env;
  const pt_task_t *task;
  int number;
  int must_query;
  int64_t started_ms;
  pt_runner_done_cb done;
  void *done_arg;
  int reported;
  /* priv follows, aligned */
  max_align_t priv[];
};

const char *pt_outcome_name(pt_outcome_t o) {
  switch (o) {
  case PT_OUTCOME_SUCCESS:
    return "success";
  case PT_OUTCOME_RETRY:
    return "retry";
  case PT_OUTCOME_UNKNOWN:
    return "unknown";
  case PT_OUTCOME_FAIL:
    return "failed";
  }
  return "invalid";
}

const pt_task_t *pt_attempt_task(const pt_attempt_t *a) { return a->task; }
int pt_attempt_number(const pt_attempt_t *a) { return a->number; }
int pt_attempt_must_query(const pt_attempt_t *a) { return a->must_query; }
void *pt_attempt_priv(pt_attempt_t *a) { return a->priv; }
const pt_runner_env_t *pt_attempt_env(const pt_attempt_t *a) {
  return a->env;
}

static void report(pt_attempt_t *a, pt_outcome_t o, const bson_t *result,
                   const char *code, const char *msg) {
  bson_t empty = BSON_INITIALIZER;
  pt_attempt_report_t rep = {o,   result ? result : &empty, code, msg,
                             a->started_ms, pt_now_ms()};
  a->done(&rep, a->done_arg);
  bson_destroy(&empty);
}

void pt_attempt_done(pt_attempt_t *a, pt_outcome_t o, const bson_t *result,
                     const char *error_code, const char *error_message) {
  /* Exactly once: a second report is a runner bug, not an input error. */
  if (a->reported++)
    abort();
  report(a, o, result, error_code, error_message);
  free(a);
}

void pt_runner_run(const pt_runner_ops_t *ops, const pt_runner_env_t *env,
                   const pt_task_t *t, int attempt, int must_query,
                   pt_runner_done_cb done, void *arg) {
  pt_attempt_t *a = calloc(1, sizeof *a + ops->priv_size);
  if (a == NULL) {
    pt_attempt_t tmp = {.started_ms = pt_now_ms(), .done = done,
                        .done_arg = arg};
    report(&tmp, PT_OUTCOME_RETRY, NULL, "out_of_memory",
           "could not start the attempt");
    return;
  }
  a->ops = ops;
  a->env = env;
  a->task = t;
  a->number = attempt;
  a->must_query = must_query;
  a->started_ms = pt_now_ms();
  a->done = done;
  a->done_arg = arg;
  if (ops->do_task(a) != 0) {
    report(a, PT_OUTCOME_RETRY, NULL, "start_failed",
           "the runner could not start the attempt");
    free(a);
  }
}

int pt_schedule_retry_delay(const char *schedule, int attempt,
                            pt_outcome_t o) {
  int64_t s[PT_SCHEDULE_MAX];
  int n = pt_config_schedule(schedule, s, PT_SCHEDULE_MAX);
  if (o == PT_OUTCOME_SUCCESS || o == PT_OUTCOME_FAIL || attempt < 1 ||
      attempt > n)
    return -1;
  return (int)s[attempt - 1];
}

int pt_retry_delay(const pt_task_t *t, int attempt, pt_outcome_t o) {
  if (o != PT_OUTCOME_RETRY && o != PT_OUTCOME_UNKNOWN)
    return -1;
  if (!t->need_retry || attempt > t->retry_times || attempt > PT_RETRY_MAX)
    return -1;
  return attempt;
}
