/* End-to-end test harness: starts the real `paytask sim`, `paytask api`
 * and N `paytask worker` processes (the binary named by $PAYTASK_BIN) on
 * free loopback ports, against the servers of .run/env, and offers blocking
 * helpers to talk to them. Tests may block: they own no loop. */
#ifndef PT_STACK_H
#define PT_STACK_H

#include <amqp.h>
#include <bson/bson.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <sys/types.h>

#define PT_STACK_MAX_WORKERS 8
#define PT_STACK_MAX_ENV 40

/* The api's development token, which the stack's api accepts. */
#define PT_TEST_TOKEN "dev-token-change-me"

typedef struct {
  pid_t sim, api, workers[PT_STACK_MAX_WORKERS];
  int nworkers;
  int api_port, sim_port;
  char api_url[64], sim_url[64];
  char logdir[256];
  char extra_env[PT_STACK_MAX_ENV][600];
  int nextra;
  char vhost[96]; /* pt_stack_vhost's, deleted by pt_stack_stop */
} pt_stack_t;

/* Sets an extra PAYTASK_… variable for the processes started after it. */
void pt_stack_env(pt_stack_t *s, const char *name, const char *value);

/* Starts sim (with sim_args, e.g. "--latency-ms=200", MAY be NULL), api and
 * nworkers workers, and waits until the api's /readyz and the sim's
 * /healthz answer 200. Fails the test on error. */
void pt_stack_start(pt_stack_t *s, int nworkers, const char *sim_args);
/* Starts one more worker; returns its index. */
int pt_stack_add_worker(pt_stack_t *s);
/* Starts an api (no worker) whose broker is unreachable, on the same
 * Redis and MongoDB. */
void pt_stack_start_without_broker(pt_stack_t *s);
/* Starts `paytask worker --processes N` (a supervisor and its pool) as one
 * more worker entry; returns its index. */
int pt_stack_add_pool(pt_stack_t *s, int processes);
/* Sends SIGTERM to worker i and waits for it; returns its exit status
 * (-1 if it had to be killed after timeout_s). */
int pt_stack_stop_worker(pt_stack_t *s, int i, int timeout_s);
/* Sends sig to worker i and, for SIGKILL, reaps it. */
void pt_stack_signal_worker(pt_stack_t *s, int i, int sig);
/* SIGTERM to everything, then waits (SIGKILL after 20 s), and deletes the
 * virtual host of pt_stack_vhost. Returns the number of processes that did
 * not exit 0 by themselves. */
int pt_stack_stop(pt_stack_t *s);
/* Waits up to timeout_s for a line of the stack's log file (worker0.log,
 * api.log…) holding every one of the NULL-terminated needles; returns 1 if
 * one came. */
int pt_stack_log_wait(pt_stack_t *s, const char *file,
                      const char *const *needles, int timeout_s);
/* A suite's fini: pt_stack_stop, and the test program fails (aborts) if a
 * process did not exit 0 by itself (a crash, a sanitizer's report, a hang
 * on SIGTERM). */
void pt_stack_fini(pt_stack_t *s);

/* The virtual host that PAYTASK_AMQP_URI names ("/" for an empty path). */
const char *pt_amqp_vhost(void);
/* A RabbitMQ virtual host of the test's own, for a test that changes the
 * broker (a policy) where the processes of other tests must not see it:
 * made now (guest may use it), and PAYTASK_AMQP_URI names it for the rest
 * of the test (its own process runs each test): the helpers below and the
 * processes started after it. Call before pt_stack_start. Returns its
 * name. */
const char *pt_stack_vhost(pt_stack_t *s);
/* Publishes a persistent message as something other than paytask would
 * (headers MAY be NULL); fails the test if the broker does not take it. */
void pt_amqp_publish_raw(const char *exchange, const char *routing_key,
                         const void *body, size_t len,
                         const amqp_table_t *headers);

/* One HTTP request (libcurl easy). Returns the status, or -1 when nothing
 * answered; *body (MAY be NULL) gets the answer, to free(). */
long pt_http(const char *method, const char *url, const char *token,
             const char *body, const char *const *headers, char **out);

/* Convenience wrappers on the api with the development token. */
long pt_api_submit(pt_stack_t *s, const char *json, const char *idem_key,
                   char **out);
long pt_api_get(pt_stack_t *s, const char *id, int wait_s, char **out);
/* A submit with a query string ("wait=5"; NULL for none). */
long pt_api_submit_query(pt_stack_t *s, const char *json, const char *idem_key,
                         const char *query, char **out);

/* Reads a JSON body into doc (fails the test if it is not an object). */
void pt_json(const char *text, bson_t *doc);
/* Field by dotted path ("error.code", "history.0.outcome"), or NULL. */
const char *pt_json_str(const bson_t *doc, const char *path);
int64_t pt_json_int(const bson_t *doc, const char *path, int64_t def);
/* Number of elements of an array field, or -1. */
int pt_json_len(const bson_t *doc, const char *path);

/* A task body for the sim channel; params_sim is the JSON of params.sim
 * (MAY be NULL), retry the JSON of retry (MAY be NULL). */
char *pt_task_body(const char *out_trade_no, int64_t amount,
                   const char *params_sim, const char *retry);
/* Submits a body and returns the task id (fails the test if not 202). */
void pt_submit_ok(pt_stack_t *s, const char *body, char id[24]);
/* Submits as a client does while the api is unavailable: retries every
 * 100 ms, for up to 30 s, with the same idempotency key while it answers
 * 503 or nothing; fails the test on any other answer. */
void pt_submit_until_taken(pt_stack_t *s, const char *body,
                           const char *idem_key, char id[24]);
/* Waits (?wait, repeated) until the task is final; fills doc. */
void pt_wait_final(pt_stack_t *s, const char *id, int timeout_s, bson_t *doc);
/* Submits pt_task_body(otn, amount, params_sim, retry), then waits up to
 * 30 s until it is final: its id into id, the final task into doc. */
void pt_run_task(pt_stack_t *s, const char *otn, int64_t amount,
                 const char *params_sim, const char *retry, char id[24],
                 bson_t *doc);

/* Sim statistics for one trade ("create_calls", …), or -1 if unknown. */
int64_t pt_sim_stat(pt_stack_t *s, const char *out_trade_no, const char *key);
/* Fails the test unless the simulator saw exactly one successful create
 * for each of the n trades, and no create after it. */
void pt_assert_created_once(pt_stack_t *s, char otns[][64], int n);

/* Messages waiting in a queue (passive declare), or -1. */
long pt_queue_depth(const char *queue);
/* Takes every message from queue, acknowledging it; returns how many
 * carried message_id. The test fails if the queue cannot be read. */
int pt_queue_drain_count(const char *queue, const char *message_id);

/* The task's document in MongoDB (collection tasks), waiting up to
 * timeout_s for the sync; returns 1 and fills doc if found. */
int pt_mongo_task(const char *id, int timeout_s, bson_t *doc);
/* Waits up to timeout_s until MongoDB holds all n tasks (one count query
 * with $in, not n lookups); returns how many it holds. */
long pt_mongo_count_tasks(char ids[][24], int n, int timeout_s);
/* Whether the tasks collection has the index called name, waiting up to
 * timeout_s for it. */
int pt_mongo_has_index(const char *name, int timeout_s);
/* Drops the database of PAYTASK_MONGODB_URI (a test's own). */
void pt_mongo_drop_database(void);
/* A connection to the test Redis (fails the test when there is none). */
redisContext *pt_test_redis(void);
/* Whether the task's hash is still in Redis. */
int pt_redis_has_task(const char *id);
/* Whether Redis holds the key. */
int pt_redis_has_key(const char *key);
/* Deletes the task's hash, as if Redis had lost it. */
void pt_redis_lose_task(const char *id);
/* A field of the worker's heartbeat (pt:worker:<consumer>, what `paytask
 * inspect` shows) for the worker process pid, or -1 while it has none. */
long pt_worker_heartbeat(pid_t pid, const char *field);

/* A string unique to this test process. */
const char *pt_unique(const char *prefix);

#endif
