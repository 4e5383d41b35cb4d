/* The benchmark tool works (issue 4). Figures are never asserted here:
 * machines are shared and noisy; docs/BENCHMARKS.md has the measurements. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

/* A figure of the bench's JSON line, by dotted path; fails if missing. */
static double figure(const bson_t *d, const char *path) {
  bson_iter_t it, f;
  cr_assert(bson_iter_init(&it, d) && bson_iter_find_descendant(&it, path, &f),
            "missing %s", path);
  return bson_iter_as_double(&f);
}

Test(bench, quick_run_reports_every_scenario, .timeout = 300) {
  char cmd[1024], line[8192], json[8192] = "", said[4096] = "";
  const char *bin = getenv("PAYTASK_BIN");
  const char *logs = getenv("PT_TEST_LOGDIR");
  cr_assert_not_null(bin);
  pt_test_uri("PAYTASK_AMQP_URI", "RabbitMQ");
  snprintf(cmd, sizeof cmd, "PT_BENCH_LOGDIR=%s %s bench --quick 2>&1",
           logs ? logs : "/tmp", bin);
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  while (fgets(line, sizeof line, p) != NULL) {
    if (line[0] == '{')
      snprintf(json, sizeof json, "%s", line);
    else if (strncmp(line, "bench: ", 7) == 0 && strlen(said) + strlen(line) < sizeof said)
      strcat(said, line); /* the tool's progress and its reasons to fail */
  }
  int rc = pclose(p);
  cr_assert_eq(rc, 0, "paytask bench failed:\n%s", said);
  bson_t d;
  pt_json(json, &d);
  bson_iter_t it;
  cr_assert(bson_iter_init_find(&it, &d, "ok") && bson_iter_bool(&it));
  const char *keys[] = {"baseline_msgs_per_s", "throughput_tasks_per_s",
                        "throughput_mongo_tasks_per_s", "latency_p99_ms",
                        "unloaded_p50_ms", "slow_tasks_per_s",
                        "slow_max_in_flight", "rss_worker_kb",
                        "rss_worker_slow_anon_kb"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    cr_assert(bson_iter_init_find(&it, &d, keys[i]), "missing %s", keys[i]);
    cr_assert_gt(bson_iter_as_double(&it), 0, "%s is not positive", keys[i]);
  }
  /* Scenario 5 gives every worker's peak, and the summary is the largest. */
  bson_iter_t each;
  double largest = 0;
  int nw = 0;
  cr_assert(bson_iter_init_find(&it, &d, "rss_workers_kb") &&
                BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &each),
            "missing rss_workers_kb");
  while (bson_iter_next(&each)) {
    double kb = bson_iter_as_double(&each);
    cr_assert_gt(kb, 0, "worker %d's peak RSS is not positive", nw);
    largest = kb > largest ? kb : largest;
    nw++;
  }
  cr_assert_eq(nw, (int)figure(&d, "workers"), "one peak per worker");
  cr_assert_eq(largest, figure(&d, "rss_worker_kb"));
  /* Scenario 4 by Little's law: the mean number of calls at the channel
   * is at most the most at once, and each call spent about the
   * simulator's 200 ms there (the mean from its integral over the run). */
  double mean = figure(&d, "slow_mean_in_flight");
  cr_assert(mean > 0 && mean <= figure(&d, "slow_max_in_flight"),
            "mean calls in flight %.1f out of range", mean);
  double at = figure(&d, "slow_at_channel_ms");
  cr_assert_geq(at, 190,
                "a call spent %.1f ms at a channel that answers in 200 ms", at);
  cr_assert_geq(figure(&d, "slow_slot_ms"), at);
  /* The latency scenario again with one request per task (POST ?wait). */
  const char *one[] = {"latency_one_request.p50_ms",
                       "latency_one_request.p99_ms",
                       "latency_one_request.unloaded_p50_ms"};
  for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
    cr_assert_gt(figure(&d, one[i]), 0, "%s is not positive", one[i]);
  /* Where each half's slowest 1% sat in time, and the CPU then. */
  const char *tails[] = {"latency_tail", "latency_one_request.tail"};
  for (size_t i = 0; i < 2; i++) {
    char k[96];
    snprintf(k, sizeof k, "%s.slow_tasks", tails[i]);
    cr_assert_gt(figure(&d, k), 0, "%s: no slow task found", tails[i]);
    snprintf(k, sizeof k, "%s.windows", tails[i]);
    double w = figure(&d, k);
    snprintf(k, sizeof k, "%s.of_windows", tails[i]);
    cr_assert(w > 0 && w <= figure(&d, k), "%s: windows out of range", tails[i]);
    snprintf(k, sizeof k, "%s.worst_window_ms", tails[i]);
    cr_assert_gt(figure(&d, k), 0, "%s: no window measured", tails[i]);
    snprintf(k, sizeof k, "%s.cpu_pct_run.worker", tails[i]);
    cr_assert_gt(figure(&d, k), 0, "%s: the worker's CPU was not sampled",
                 tails[i]);
  }
  /* Where the CPU went: the machine was busy and the worker did the work. */
  cr_assert_gt(figure(&d, "cpu_throughput.busy_cores"), 0, "no core was busy");
  cr_assert_gt(figure(&d, "cpu_throughput.cpu_ms_per_item.worker"), 0,
               "the worker used no CPU");
  /* and how long each process waited for a CPU (a share of the time) */
  const char *waited[] = {"cpu_throughput.wait_pct.worker",
                          "cpu_throughput.wait_pct.api",
                          "cpu_slow.wait_pct.worker"};
  for (size_t i = 0; i < sizeof waited / sizeof waited[0]; i++)
    cr_assert_geq(figure(&d, waited[i]), 0, "%s was not measured", waited[i]);
  /* The latency scenario's stages were read from the tasks' hashes (-1: no
   * task could be timed), and Redis's forks in each scenario (-1: Redis did
   * not say). */
  const char *counted[] = {"latency_stages_ms.to_submit_script.p99",
                           "latency_stages_ms.to_start.p99",
                           "latency_stages_ms.to_final.p99",
                           "latency_stages_ms.to_answer.p99",
                           "latency_final_before_202",
                           "latency_one_request.stages_ms.to_answer.p99",
                           "redis_forks.throughput",
                           "redis_forks.latency",
                           "redis_forks.latency_one_request",
                           "redis_forks.slow"};
  for (size_t i = 0; i < sizeof counted / sizeof counted[0]; i++)
    cr_assert_geq(figure(&d, counted[i]), 0, "%s was not measured",
                  counted[i]);
  /* The connections the workers opened to the simulator, against the
   * calls made on them: at least one, and none without a call. */
  const char *scen[] = {"throughput", "slow"};
  for (size_t i = 0; i < 2; i++) {
    char c[64], k[64];
    snprintf(c, sizeof c, "channel_connections.%s.connections", scen[i]);
    snprintf(k, sizeof k, "channel_connections.%s.calls", scen[i]);
    cr_assert_gt(figure(&d, c), 0, "%s was not measured", c);
    cr_assert_geq(figure(&d, k), figure(&d, c), "%s: fewer calls than connections",
                  scen[i]);
  }
  bson_destroy(&d);
}
