/* `paytask bench`: measures paytask on the local servers (scripts/bench
 * starts them). It runs its own simulator, api and workers (this binary,
 * on free ports) and reports, in a table and one JSON line:
 *   1. broker baseline: persistent, confirmed publishes of task-sized
 *      messages while a consumer acknowledges them (same confirm window and
 *      prefetch as paytask) — every throughput is also given as a ratio to
 *      it, since absolute figures move from machine to machine;
 *   2. throughput: N pay tasks through the api (closed loop, keep-alive
 *      connections) to the last final status in Redis and the last
 *      document in MongoDB, and the sync lag between the two;
 *   3. latency: an open loop at a fixed rate (default half of 2), submit
 *      to final measured with ?wait, and a single unloaded task;
 *   4. slow channel: the simulator answers after 200 ms, one worker;
 *   5. memory: peak RSS of the api and worker processes in 2 and 4. */
#ifndef PT_BENCH_H
#define PT_BENCH_H

int pt_bench_main(int argc, char **argv);

#endif
