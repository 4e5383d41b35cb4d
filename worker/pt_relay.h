/* The outbox relay. The scripts that change a task's or a trade's state
 * write what must follow to the Redis stream pt:outbox in the same atomic
 * step (the transactional-outbox pattern), so nothing is lost between a
 * state change and its publish. Every worker process relays it:
 *
 *   kind=event  a final result: published as a persistent JSON event with
 *               publisher confirms to the events exchange (fanout); its
 *               event_id is the stream entry's id, so a re-sent event
 *               carries the same id
 *   kind=spawn  a follow-up task of a trade (query, close, notify): its
 *               hash is created PENDING and its first message published,
 *               through the delay chain when it is due later
 *
 * Entries are read through the consumer group "relay" and acknowledged and
 * deleted only after the broker confirmed. Those that could not be relayed
 * stay pending: after a backoff the relay reads its own pending entries
 * again, before any new one (see batch_end and own_pass_done). Those a dead worker had read are
 * claimed once idle for amqp.confirm_timeout_ms + PT_RELAY_CLAIM_IDLE_MS
 * (longer than a live relay waits for a confirm). A subscriber may see a
 * duplicate (same event_id), never a gap. */
#ifndef PT_RELAY_H
#define PT_RELAY_H

#include <uv.h>

#include "core/pt_amqp.h"
#include "core/pt_config.h"
#include "core/pt_redis.h"

#define PT_RELAY_GROUP "relay"
#define PT_RELAY_CLAIM_IDLE_MS 10000
#define PT_RELAY_BATCH 200 /* entries read (and acknowledged) at once */

typedef struct pt_relay pt_relay_t;

pt_relay_t *pt_relay_new(uv_loop_t *loop, const pt_config_t *cfg,
                         pt_redis_t *redis, pt_amqp_t *amqp,
                         const char *consumer);
/* Reads the outbox now (after this process wrote to it). */
void pt_relay_kick(pt_relay_t *r);
/* Entries being published. */
size_t pt_relay_inflight(const pt_relay_t *r);
/* Entries relayed since start. */
long pt_relay_sent(const pt_relay_t *r);
/* Stops reading new entries (a draining worker); idle_cb(arg) runs once
 * from the loop when no read and no entry is in flight any more. */
void pt_relay_stop(pt_relay_t *r, void (*idle_cb)(void *), void *arg);
/* Stops reading; entries in flight are abandoned (another relay claims
 * them). Closes its timer: the loop must run for r to be freed. */
void pt_relay_destroy(pt_relay_t *r);

/* Builds the event JSON (bson_free it) from an outbox entry's fields;
 * exposed for tests. NULL if the entry is damaged. */
char *pt_relay_event_json(const char *entry_id, const redisReply *fields,
                          size_t *len);

#endif
