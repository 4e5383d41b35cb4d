/* `paytask demo`: the client half of scripts/demo. Submits N pay tasks
 * through the api (some made to fail once or twice, some declined) with a
 * progress bar, waits for every one to be final, and prints a summary:
 * counts by status, retries, tasks per second, submit-to-final latency,
 * one task read from Redis and one read from MongoDB after the sync. */
#ifndef PT_DEMO_H
#define PT_DEMO_H

int pt_demo_main(int argc, char **argv);

#endif
