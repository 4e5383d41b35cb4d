#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <string.h>

#include "runner/pt_runner.h"
#include "runner/pt_topology.h"
#include "tasks/pt_registry.h"

static pt_task_t task_with(int need, int times) {
  pt_task_t t;
  pt_task_init(&t);
  t.need_retry = need;
  t.retry_times = times;
  return t;
}

Test(retry, linear_delays_up_to_retry_times) {
  pt_task_t t = task_with(1, 3);
  cr_assert_eq(pt_retry_delay(&t, 1, PT_OUTCOME_RETRY), 1);
  cr_assert_eq(pt_retry_delay(&t, 2, PT_OUTCOME_UNKNOWN), 2);
  cr_assert_eq(pt_retry_delay(&t, 3, PT_OUTCOME_RETRY), 3);
  cr_assert_eq(pt_retry_delay(&t, 4, PT_OUTCOME_RETRY), -1,
               "3 retries = 4 attempts");
  pt_task_destroy(&t);
}

Test(retry, never_for_final_outcomes_or_when_disabled) {
  pt_task_t t = task_with(1, 5);
  cr_assert_eq(pt_retry_delay(&t, 1, PT_OUTCOME_FAIL), -1);
  cr_assert_eq(pt_retry_delay(&t, 1, PT_OUTCOME_SUCCESS), -1);
  cr_assert_eq(pt_retry_delay(&t, 5, PT_OUTCOME_RETRY), 5);
  cr_assert_eq(pt_retry_delay(&t, 6, PT_OUTCOME_RETRY), -1);
  t.need_retry = 0;
  cr_assert_eq(pt_retry_delay(&t, 1, PT_OUTCOME_RETRY), -1);
  pt_task_destroy(&t);
}

Test(retry, every_delay_has_a_queue) {
  pt_task_t t = task_with(1, PT_RETRY_MAX);
  for (int k = 1; k <= PT_RETRY_MAX; k++) {
    int d = pt_retry_delay(&t, k, PT_OUTCOME_RETRY);
    cr_assert(d >= 1 && d <= PT_DELAY_LEVELS, "delay %d has no queue", d);
  }
  char name[64];
  pt_topology_delay_queue(3, name, sizeof name);
  cr_assert_str_eq(name, "paytask.delay.3s");
  pt_task_destroy(&t);
}

/* Every runner table: required slots set, types unique. (The channel
 * tables are checked in test_channels.) */
ParameterizedTestParameters(tables, runners) {
  static size_t idx[16];
  size_t n = 0;
  while (n < sizeof idx / sizeof *idx && pt_runners[n] != NULL)
    idx[n] = n, n++;
  return cr_make_param_array(size_t, idx, n);
}

/* The parameterised test above passes on an empty table: the four task
 * types are there, and the table fits its parameters. */
Test(tables, every_task_type_has_its_runner) {
  static const char *const types[] = {"pay", "query", "close", "notify"};
  size_t n = 0;
  while (pt_runners[n] != NULL)
    n++;
  cr_assert_lt(n, 16, "more runners than the parameterised test checks");
  for (size_t i = 0; i < sizeof types / sizeof *types; i++)
    cr_assert_not_null(pt_runner_find(types[i]), "no runner for %s",
                       types[i]);
}

ParameterizedTest(size_t *i, tables, runners) {
  const pt_runner_ops_t *r = pt_runners[*i];
  cr_assert_not_null(r->type);
  cr_assert_not_null(r->do_task, "%s: do_task is required", r->type);
  cr_assert_eq(pt_runner_find(r->type), r);
  for (size_t j = 0; pt_runners[j] != NULL; j++)
    if (j != *i)
      cr_assert_str_neq(pt_runners[j]->type, r->type, "duplicate type");
}

/* close and notify retry on their schedules: entry k after attempt k,
 * nothing after a success, a final failure or the schedule's end. */
Test(tables, a_schedule_gives_the_delay_of_each_retry) {
  cr_assert_eq(pt_schedule_retry_delay("5,10", 1, PT_OUTCOME_RETRY), 5);
  cr_assert_eq(pt_schedule_retry_delay("5,10", 2, PT_OUTCOME_UNKNOWN), 10);
  cr_assert_eq(pt_schedule_retry_delay("5,10", 3, PT_OUTCOME_RETRY), -1);
  cr_assert_eq(pt_schedule_retry_delay("5,10", 1, PT_OUTCOME_SUCCESS), -1);
  cr_assert_eq(pt_schedule_retry_delay("5,10", 1, PT_OUTCOME_FAIL), -1);
  cr_assert_eq(pt_schedule_retry_delay("5,10", 0, PT_OUTCOME_RETRY), -1);
  pt_config_t cfg;
  pt_config_defaults(&cfg);
  cr_assert_eq(pt_runner_find("close")->retry_delay(NULL, &cfg, 8,
                                                    PT_OUTCOME_RETRY),
               3600, "close.schedule's default ends at an hour");
  cr_assert_eq(pt_runner_find("close")->retry_delay(NULL, &cfg, 9,
                                                    PT_OUTCOME_RETRY),
               -1);
}

Test(tables, unknown_codes_are_null_and_checked) {
  pt_task_t t;
  pt_input_error_t ie;
  cr_assert_null(pt_runner_find("refund"));
  cr_assert_null(pt_channel_find("paypal"));
  pt_task_init(&t);
  strcpy(t.type, "pay");
  strcpy(t.channel, "paypal");
  cr_assert_neq(pt_registry_check(&t, NULL, &ie), 0);
  cr_assert_str_eq(ie.code, "invalid_channel");
  strcpy(t.type, "refund");
  cr_assert_neq(pt_registry_check(&t, NULL, &ie), 0);
  cr_assert_str_eq(ie.code, "invalid_task_type");
  pt_task_destroy(&t);
}
