/* The worker process: consumes tasks with manual acks and a bounded
 * prefetch, runs each through its runner, records every state change in
 * Redis before acknowledging, republishes retries to the delay queues and
 * exhausted tasks to the dead queue (each confirmed before the ack), and
 * runs the sync thread that moves final states to MongoDB. */
#ifndef PT_WORKER_H
#define PT_WORKER_H

#include "core/pt_config.h"

/* `paytask worker [--config FILE]`; returns the process exit code. */
int pt_worker_main(int argc, char **argv);

/* Runs one worker on the calling thread until SIGTERM/SIGINT drains it.
 * index is the worker's place in a pool (0 alone); its metrics listen on
 * worker.metrics_listen's port + index. */
int pt_worker_run(const pt_config_t *cfg, int index);

#endif
