/* paytask: one binary, one subcommand per process kind. main is thin: it
 * picks the subcommand, whose code lives in its own folder. */
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "api/pt_api.h"
#include "bench/pt_bench.h"
#include "cli/pt_cli.h"
#include "cli/pt_demo.h"
#include "cli/pt_events.h"
#include "cli/pt_inspect.h"
#include "cli/pt_replay.h"
#include "core/pt_mongo.h"
#include "sim/pt_sim.h"
#include "worker/pt_worker.h"

typedef struct {
  const char *name;
  int (*main)(int argc, char **argv);
  const char *help;
} command_t;

static const command_t commands[] = {
    {"api", pt_api_main, "run the submit/poll HTTP api"},
    {"worker", pt_worker_main, "run a worker (consume and execute tasks)"},
    {"sim", pt_sim_main, "run the payment channel simulator"},
    {"submit", pt_cli_submit, "submit a task through the api"},
    {"get", pt_cli_get, "read a task through the api (--wait N)"},
    {"replay", pt_replay_main, "find failed tasks and replay them (SREs)"},
    {"inspect", pt_inspect_main, "queues, sync backlog, workers (--watch)"},
    {"events", pt_events_main, "events tail: watch the result events"},
    {"config", pt_cli_config, "config check [FILE]: validate and print"},
    {"bench", pt_bench_main, "measure throughput, latency, memory (scripts/bench)"},
    {"demo", pt_demo_main, "submit demo tasks and summarise (scripts/demo)"},
};

static void usage(FILE *out) {
  fprintf(out, "usage: paytask COMMAND [options]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].help);
  fprintf(out, "\nconfiguration: conf/paytask.conf or --config FILE; every "
               "key may be overridden\nby PAYTASK_<KEY> (amqp.uri → "
               "PAYTASK_AMQP_URI).\n");
}

/* A worker keeps one connection per channel call in flight, and the api
 * one per client: lift the soft descriptor limit to the hard one. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int main(int argc, char **argv) {
  raise_nofile();
  /* A peer that resets its connection makes the next write() to it raise
   * SIGPIPE, which kills the process: hiredis and libuv (under h2o) write
   * without MSG_NOSIGNAL. Ignored, the write fails with EPIPE and the
   * connection is dropped like any other lost one. */
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2 || strcmp(argv[1], "help") == 0 ||
      strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
    if (strcmp(argv[1], commands[i].name) == 0) {
      curl_global_init(CURL_GLOBAL_DEFAULT);
      pt_mongo_global_init();
      int rc = commands[i].main(argc - 1, argv + 1);
      pt_mongo_global_cleanup();
      curl_global_cleanup();
      return rc;
    }
  }
  fprintf(stderr, "paytask: unknown command \"%s\"\n\n", argv[1]);
  usage(stderr);
  return 2;
}
