/* MongoDB off the loop. libmongoc is blocking, so a pt_mongo_t runs each
 * piece of work on the libuv thread pool (uv_queue_work) with a client
 * popped from a mongoc_client_pool_t, and calls back on the loop thread. */
#ifndef PT_MONGO_H
#define PT_MONGO_H

#include <mongoc/mongoc.h>
#include <uv.h>

#include "core/pt_error.h"

typedef struct pt_mongo pt_mongo_t;

/* Runs on a pool thread with a client that is the work's alone until it
 * returns. Return 0 or a negative code (fill err). MUST NOT touch the loop. */
typedef int (*pt_mongo_work_fn)(mongoc_client_t *client, void *arg,
                                pt_error_t *err);
/* Runs on the loop thread after the work, with its status. */
typedef void (*pt_mongo_done_cb)(int status, const pt_error_t *err, void *arg);

/* Creates the client pool; connects lazily. The database name comes from
 * the URI's path (default "paytask"). Returns NULL and fills err on a bad
 * URI. Call once libmongoc is initialised (pt_mongo_global_init). */
pt_mongo_t *pt_mongo_new(uv_loop_t *loop, const char *uri, pt_error_t *err);

/* Queues work; done always runs once unless this returns an error. */
int pt_mongo_submit(pt_mongo_t *m, pt_mongo_work_fn work, pt_mongo_done_cb done,
                    void *arg);

/* The database name from the URI. */
const char *pt_mongo_dbname(const pt_mongo_t *m);

/* Number of works queued or running. */
size_t pt_mongo_pending(const pt_mongo_t *m);

/* Frees the pool. MUST be called only when no work is pending (run the
 * loop until pt_mongo_pending() is 0). destroy(NULL) does nothing. */
void pt_mongo_destroy(pt_mongo_t *m);

/* mongoc_init/mongoc_cleanup, once per process. */
void pt_mongo_global_init(void);
void pt_mongo_global_cleanup(void);

#endif
