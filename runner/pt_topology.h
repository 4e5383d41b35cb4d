/* The broker's topology, declared (idempotently) by every process that
 * publishes or consumes, before it does:
 *
 *   exchange paytask.work (direct, durable)
 *     └─ key "task" → queue paytask.tasks          the work queue
 *   queue paytask.delay.<N>s, N = 1..5             retry delays: message TTL
 *     N s, dead-letter to paytask.work / "task"    (one TTL per queue, so
 *                                                   none waits behind another)
 *   queue paytask.dead                             out of attempts, or
 *                                                   redelivered too often
 *
 * Messages are published persistent to the default exchange with the
 * queue's name as routing key, except new tasks, which go through
 * paytask.work so that a binding decides where work lands. */
#ifndef PT_TOPOLOGY_H
#define PT_TOPOLOGY_H

#include <amqp.h>

#include "core/pt_error.h"

#define PT_EXCHANGE_WORK "paytask.work"
#define PT_ROUTE_TASK "task"
#define PT_QUEUE_TASKS "paytask.tasks"
#define PT_QUEUE_DEAD "paytask.dead"
#define PT_DELAY_LEVELS 5

/* Name of the delay queue for `seconds` (1..PT_DELAY_LEVELS) into buf. */
void pt_topology_delay_queue(int seconds, char *buf, size_t len);

/* The pt_amqp_setup_fn: arg is the queue type, "classic" or "quorum". */
int pt_topology_declare(amqp_connection_state_t conn, void *arg,
                        pt_error_t *err);

#endif
