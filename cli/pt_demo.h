/* `paytask demo`: the client half of scripts/demo. Submits N pay tasks
 * through the api (some made to fail once or twice, some declined) with a
 * progress bar, waits for every one to be final, and prints a summary:
 * counts by status, retries, tasks per second, submit-to-final latency,
 * one task read from Redis and one read from MongoDB after the sync; then
 * (with --trades) the life of a few real-channel trades. */
#ifndef PT_DEMO_H
#define PT_DEMO_H

#include "core/pt_config.h"

int pt_demo_main(int argc, char **argv);

/* The trades part: a few Alipay and WeChat Pay trades against the
 * simulator's dialects, paid by callback or closed at expiry. 0 when each
 * ended as expected. */
int pt_demo_trades(const pt_config_t *cfg, const char *api,
                   const char *token);

#endif
