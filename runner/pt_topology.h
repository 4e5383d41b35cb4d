/* The broker's topology, declared (idempotently) by every process that
 * publishes or consumes, before it does:
 *
 *   exchange paytask.work (direct, durable)
 *     └─ key "task" → queue paytask.tasks          the work queue
 *   queue paytask.delay.<N>s, N in pt_delay_levels delays: message TTL N s,
 *     dead-letter to paytask.work / "task"         (one TTL per queue, so
 *                                                   none waits behind another)
 *   exchange paytask.results (fanout, durable;    final results, for
 *     events.exchange)                             subscribers
 *
 * A delay longer than a level is a chain of levels: the message carries its
 * due time in the header x-pt-due (ms since the epoch); a worker that
 * receives it early sends it on to the next level instead of running it,
 * so any delay (a 30-minute payment window, a 6-hour notify retry) costs
 * no polling and survives restarts, since the queues are durable.
 *   queue paytask.dead                             out of attempts, or
 *                                                   redelivered too often
 *
 * Messages are published persistent to the default exchange with the
 * queue's name as routing key, except new tasks, which go through
 * paytask.work so that a binding decides where work lands. */
#ifndef PT_TOPOLOGY_H
#define PT_TOPOLOGY_H

#include <amqp.h>
#include <stdint.h>

#include "core/pt_error.h"

#define PT_EXCHANGE_WORK "paytask.work"
#define PT_ROUTE_TASK "task"
#define PT_QUEUE_TASKS "paytask.tasks"
#define PT_QUEUE_DEAD "paytask.dead"
#define PT_DELAY_LEVELS 12
#define PT_HEADER_DUE "x-pt-due"

/* The delay levels in seconds, ascending. */
extern const int pt_delay_levels[PT_DELAY_LEVELS];

/* Name of the delay queue of a level (seconds) into buf. */
void pt_topology_delay_queue(int seconds, char *buf, size_t len);

/* The level to wait in for a delay of remaining_ms: the longest level not
 * longer than it (the shortest level when remaining_ms is smaller). */
int pt_topology_delay_pick(int64_t remaining_ms);

/* Where a message due at due_ms goes at now_ms: the delay level that fits
 * the time left; within the last second (shorter than any level) the work
 * queue itself, where the worker that takes it waits out the rest; when it
 * is due already, the work queue with no header. headers carries the due
 * time (x-pt-due) whenever it is in the future. Fill with
 * pt_topology_route; the struct points into itself, so do not copy it. */
typedef struct {
  const char *exchange;
  const char *routing_key;
  char queue[64];
  amqp_table_entry_t due;
  amqp_table_t headers; /* num_entries 0 when due already */
} pt_route_t;

void pt_topology_route(int64_t due_ms, int64_t now_ms, pt_route_t *r);

/* The due time (ms) a delayed message carries, 0 if none. */
int64_t pt_topology_due(const amqp_basic_properties_t *p);

/* Depth of paytask's queues, read with passive declares on a blocking
 * connection (inspect; the api on a thread-pool thread). */
#define PT_TOPOLOGY_QUEUES (PT_DELAY_LEVELS + 2)
typedef struct {
  char name[32];
  long messages; /* -1: the queue is missing */
  long consumers;
} pt_queue_depth_t;

/* Fills out[PT_TOPOLOGY_QUEUES] (tasks, each delay level, dead); uses
 * channels 2.. of conn (a missing queue closes its channel). Returns the
 * count. */
int pt_topology_queue_depths(amqp_connection_state_t conn,
                             pt_queue_depth_t out[PT_TOPOLOGY_QUEUES]);

/* The pt_amqp_setup_fn: arg is the const pt_config_t * (queue type, events
 * exchange). */
int pt_topology_declare(amqp_connection_state_t conn, void *arg,
                        pt_error_t *err);

#endif
