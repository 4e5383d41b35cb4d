#include "runner/pt_topology.h"

#include <stdio.h>
#include <string.h>

#include "core/pt_amqp.h"
#include "core/pt_config.h"

const int pt_delay_levels[PT_DELAY_LEVELS] = {1,  2,   3,   4,    5,    10,
                                              30, 60, 300, 600, 1800, 3600};

void pt_topology_delay_queue(int seconds, char *buf, size_t len) {
  snprintf(buf, len, "paytask.delay.%ds", seconds);
}

int pt_topology_delay_pick(int64_t remaining_ms) {
  int pick = pt_delay_levels[0];
  for (int i = 0; i < PT_DELAY_LEVELS; i++)
    if ((int64_t)pt_delay_levels[i] * 1000 <= remaining_ms)
      pick = pt_delay_levels[i];
  return pick;
}

static int rpc_failed(amqp_connection_state_t conn, const char *what,
                      pt_error_t *err) {
  return pt_amqp_reply_error(amqp_get_rpc_reply(conn), what, err);
}

static int declare_queue(amqp_connection_state_t conn, const char *name,
                         const char *qtype, int ttl_ms, pt_error_t *err) {
  amqp_table_entry_t e[4];
  int n = 0;
  e[n].key = amqp_cstring_bytes("x-queue-type");
  e[n].value.kind = AMQP_FIELD_KIND_UTF8;
  e[n].value.value.bytes = amqp_cstring_bytes(qtype);
  n++;
  if (ttl_ms > 0) {
    e[n].key = amqp_cstring_bytes("x-message-ttl");
    e[n].value.kind = AMQP_FIELD_KIND_I32;
    e[n].value.value.i32 = ttl_ms;
    n++;
    e[n].key = amqp_cstring_bytes("x-dead-letter-exchange");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n].value.value.bytes = amqp_cstring_bytes(PT_EXCHANGE_WORK);
    n++;
    e[n].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n].value.value.bytes = amqp_cstring_bytes(PT_ROUTE_TASK);
    n++;
  }
  amqp_table_t args = {n, e};
  amqp_queue_declare(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(name), 0,
                     1 /* durable */, 0, 0, args);
  char what[128];
  snprintf(what, sizeof what, "declaring queue %s", name);
  return rpc_failed(conn, what, err);
}

int pt_topology_declare(amqp_connection_state_t conn, void *arg,
                        pt_error_t *err) {
  const pt_config_t *cfg = arg;
  const char *qtype = cfg != NULL ? cfg->amqp_queue_type : "classic";
  int rc;
  if (cfg != NULL && cfg->events_exchange[0] != '\0') {
    amqp_exchange_declare(conn, PT_AMQP_PUB_CHANNEL,
                          amqp_cstring_bytes(cfg->events_exchange),
                          amqp_cstring_bytes("fanout"), 0, 1 /* durable */, 0,
                          0, amqp_empty_table);
    if ((rc = rpc_failed(conn, "declaring the events exchange", err)))
      return rc;
  }
  amqp_exchange_declare(conn, PT_AMQP_PUB_CHANNEL,
                        amqp_cstring_bytes(PT_EXCHANGE_WORK),
                        amqp_cstring_bytes("direct"), 0, 1 /* durable */, 0,
                        0, amqp_empty_table);
  if ((rc = rpc_failed(conn, "declaring exchange " PT_EXCHANGE_WORK, err)))
    return rc;
  if ((rc = declare_queue(conn, PT_QUEUE_TASKS, qtype, 0, err)) ||
      (rc = declare_queue(conn, PT_QUEUE_DEAD, qtype, 0, err)))
    return rc;
  amqp_queue_bind(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(PT_QUEUE_TASKS),
                  amqp_cstring_bytes(PT_EXCHANGE_WORK),
                  amqp_cstring_bytes(PT_ROUTE_TASK), amqp_empty_table);
  if ((rc = rpc_failed(conn, "binding " PT_QUEUE_TASKS, err)))
    return rc;
  for (int i = 0; i < PT_DELAY_LEVELS; i++) {
    char name[64];
    pt_topology_delay_queue(pt_delay_levels[i], name, sizeof name);
    if ((rc = declare_queue(conn, name, qtype, pt_delay_levels[i] * 1000,
                            err)))
      return rc;
  }
  return 0;
}

void pt_topology_route(int64_t due_ms, int64_t now_ms, pt_route_t *r) {
  int64_t wait = due_ms - now_ms;
  r->exchange = PT_EXCHANGE_WORK;
  r->routing_key = PT_ROUTE_TASK;
  r->queue[0] = '\0';
  r->due.key = amqp_cstring_bytes(PT_HEADER_DUE);
  r->due.value.kind = AMQP_FIELD_KIND_I64;
  r->due.value.value.i64 = due_ms;
  r->headers.entries = &r->due;
  r->headers.num_entries = wait > 0 ? 1 : 0;
  if (wait >= 1000) {
    pt_topology_delay_queue(pt_topology_delay_pick(wait), r->queue,
                            sizeof r->queue);
    r->exchange = "";
    r->routing_key = r->queue;
  }
}

int64_t pt_topology_due(const amqp_basic_properties_t *p) {
  if (p == NULL || !(p->_flags & AMQP_BASIC_HEADERS_FLAG))
    return 0;
  for (int i = 0; i < p->headers.num_entries; i++) {
    const amqp_table_entry_t *e = &p->headers.entries[i];
    if (e->key.len != sizeof PT_HEADER_DUE - 1 ||
        memcmp(e->key.bytes, PT_HEADER_DUE, e->key.len) != 0)
      continue;
    switch (e->value.kind) {
    case AMQP_FIELD_KIND_I64:
      return e->value.value.i64;
    case AMQP_FIELD_KIND_U64:
      return (int64_t)e->value.value.u64;
    case AMQP_FIELD_KIND_I32:
      return e->value.value.i32;
    default:
      return 0;
    }
  }
  return 0;
}

int pt_topology_queue_depths(amqp_connection_state_t conn,
                             pt_queue_depth_t out[PT_TOPOLOGY_QUEUES]) {
  int n = 0;
  snprintf(out[n++].name, sizeof out[0].name, "%s", PT_QUEUE_TASKS);
  for (int i = 0; i < PT_DELAY_LEVELS; i++)
    pt_topology_delay_queue(pt_delay_levels[i], out[n++].name,
                            sizeof out[0].name);
  snprintf(out[n++].name, sizeof out[0].name, "%s", PT_QUEUE_DEAD);
  for (int i = 0; i < n; i++) {
    /* A channel per queue, opened and closed each time. */
    amqp_channel_t ch = (amqp_channel_t)(i + 2);
    out[i].messages = out[i].consumers = -1;
    if (amqp_channel_open(conn, ch) == NULL)
      continue;
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(
        conn, ch, amqp_cstring_bytes(out[i].name), 1, 0, 0, 0,
        amqp_empty_table);
    if (ok != NULL) {
      out[i].messages = (long)ok->message_count;
      out[i].consumers = (long)ok->consumer_count;
      amqp_channel_close(conn, ch, AMQP_REPLY_SUCCESS);
    }
  }
  return n;
}
