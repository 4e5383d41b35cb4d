/* The sync thread: reads final states from the Redis stream pt:sync through
 * the consumer group "paytask-sync", writes them to MongoDB in bulk
 * (unordered inserts keyed by task id, history included; a duplicate key
 * means an earlier sync wrote it), acknowledges and deletes
 * the stream entries, then lets Redis evict the task's hash after a grace
 * period (EXPIRE). Entries left pending by a dead consumer are claimed
 * (XAUTOCLAIM) once idle for sync.claim_idle_ms. MongoDB down: the batch
 * is retried with a backoff and nothing is acknowledged, so nothing is
 * lost. After a batch smaller than sync.batch the thread waits
 * sync.linger_ms before reading again, so that at moderate rates each bulk
 * write carries more documents (MongoDB's cost is largely per write).
 * The thread owns blocking clients (hiredis, libmongoc) and no loop. */
#ifndef PT_SYNC_H
#define PT_SYNC_H

#include "core/pt_config.h"

typedef struct pt_sync pt_sync_t;

/* Starts the thread; consumer names the consumer in the group. */
pt_sync_t *pt_sync_start(const pt_config_t *cfg, const char *consumer,
                         pt_error_t *err);

/* Asks the thread to finish: it drains what is in the stream now (unless
 * MongoDB is down), then exits; joins it and frees. destroy(NULL) does
 * nothing. */
void pt_sync_stop(pt_sync_t *s);

/* Entries written to MongoDB so far (for logs and tests). */
long pt_sync_written(const pt_sync_t *s);

/* Bulk writes MongoDB accepted so far (for metrics). */
long pt_sync_bulk_writes(const pt_sync_t *s);

#endif
