/* Shared helpers for the Criterion suites. Tests talk to the real servers
 * named by the environment that scripts/test exports (.run/env). */
#ifndef PT_TEST_H
#define PT_TEST_H

#include <stdint.h>
#include <uv.h>

/* The value of an environment variable naming a server's URI, e.g.
 * pt_test_uri("PAYTASK_REDIS_URI", "Redis"). Fails the test with a message
 * naming the server if it is not set. */
const char *pt_test_uri(const char *var, const char *server);

/* Runs loop until it has nothing left to do, or fails the test after
 * timeout_ms with a message naming `what` (so a dead server makes a test
 * fail, never hang). The watchdog timer is closed before returning. */
void pt_test_run_loop(uv_loop_t *loop, uint64_t timeout_ms, const char *what);

/* Closes every handle still open on loop, runs it until they are closed,
 * and asserts uv_loop_close() == 0. */
void pt_test_close_loop(uv_loop_t *loop);

/* A name unique to this process and call, for queues, keys and collections. */
const char *pt_test_unique(const char *prefix, char *buf, size_t len);

#endif
