/* RabbitMQ on a libuv loop (librabbitmq-c).
 *
 * One pt_amqp_t is one AMQP connection owned by one loop thread. It opens
 * two channels: PT_AMQP_PUB_CHANNEL (publisher confirms on) and
 * PT_AMQP_CONSUME_CHANNEL (consumer, manual acks), so that publish sequence
 * numbers and delivery tags never share a space.
 *
 * Connecting, logging in and declaring topology are blocking RPCs in
 * librabbitmq, so pt_amqp_start() runs them on the libuv thread pool and
 * hands the connection to the loop when they are done; from then on the
 * loop polls the socket and, each time it is readable, drains every frame
 * that is already buffered (librabbitmq reads ahead) before waiting again.
 * Writes (publish, ack) go straight to the socket: on loopback or a LAN the
 * kernel buffer absorbs them; librabbitmq waits in poll() only if it is
 * full (for instance while the broker blocks publishers on a memory
 * alarm), and that wait does block the loop.
 *
 * Heartbeats are off (0): librabbitmq services them only inside its own
 * blocking waits, which the loop never makes, so it would neither send
 * them on time nor notice a silent peer. A dead broker is noticed by a
 * failed read or write, or by TCP keepalive, which librabbitmq turns on.
 *
 * The vhost is the URI path, percent-decoded ("%2f" is "/"); an empty path
 * ("amqp://host:5672/" or no path at all) means the default vhost "/".
 * amqps:// is refused.
 *
 * Callback contract (libuv, hiredis): if a function that takes a callback
 * fails, the callback never runs; otherwise it runs exactly once, on the
 * loop thread. Data handed to a callback lives only during the callback.
 */
#ifndef PT_AMQP_H
#define PT_AMQP_H

#include <amqp.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/pt_error.h"

#define PT_AMQP_PUB_CHANNEL 1
#define PT_AMQP_CONSUME_CHANNEL 2

typedef struct pt_amqp pt_amqp_t;

/* Runs on a thread-pool thread while the connection is being set up, after
 * both channels are open: declare exchanges, queues and bindings with the
 * blocking librabbitmq calls on `conn` (channel PT_AMQP_PUB_CHANNEL; each
 * RPC gives up after connect_timeout_ms). It MUST NOT touch the loop.
 * Return 0, or a negative code and fill err (pt_amqp_reply_error helps). */
typedef int (*pt_amqp_setup_fn)(amqp_connection_state_t conn, void *arg,
                                pt_error_t *err);

/* The connection is ready (status 0) or could not be made (status < 0,
 * err says why: PT_ECONNECT for the socket or the login, PT_EBROKER when
 * the broker refused a channel, the setup hook's own code, PT_ECANCELED
 * when pt_amqp_destroy() ran first). */
typedef void (*pt_amqp_ready_cb)(pt_amqp_t *c, int status,
                                 const pt_error_t *err, void *arg);

/* The broker confirmed (status 0) or refused (PT_ENACK) a publish, or the
 * connection was lost before it did (PT_ECLOSED): then the outcome is
 * unknown and the message may or may not have been queued. */
typedef void (*pt_amqp_confirm_cb)(pt_amqp_t *c, int status, void *arg);

/* One message, valid only during the deliver callback (the bytes live in
 * librabbitmq's buffers). */
typedef struct {
  uint64_t delivery_tag;
  int redelivered;
  amqp_bytes_t exchange;
  amqp_bytes_t routing_key;
  const amqp_basic_properties_t *props; /* may be NULL */
  const void *body;
  size_t body_len;
} pt_amqp_delivery_t;

typedef void (*pt_amqp_deliver_cb)(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                                   void *arg);

/* The connection failed after it was ready: PT_ECLOSED (socket error or
 * EOF), PT_EBROKER (the broker closed the connection or a channel, or
 * cancelled our consumer, e.g. because the queue was deleted), PT_EPROTO
 * or PT_ENOMEM. Every pending confirm has already been called back with
 * PT_ECLOSED and the consumer is gone; unacked deliveries will be
 * redelivered by the broker. Called once per lost connection, never after
 * pt_amqp_destroy(). The handle stays valid; pt_amqp_start() may be called
 * again (from this callback too) to reconnect. */
typedef void (*pt_amqp_lost_cb)(pt_amqp_t *c, int status, const pt_error_t *err,
                                void *arg);

typedef struct {
  const char *uri;           /* amqp://user:pass@host:port/vhost */
  pt_amqp_setup_fn setup;    /* MAY be NULL */
  void *setup_arg;
  pt_amqp_lost_cb on_lost;   /* MAY be NULL */
  void *lost_arg;
  int connect_timeout_ms;    /* 0: 5000 */
  /* A publish unconfirmed for this long drops the connection: every
   * waiting publish fails with PT_ECLOSED, and on_lost is called. 0: 30000 */
  int confirm_timeout_ms;
} pt_amqp_opts_t;

/* Allocates a handle; nothing connects yet. The strings in opts are copied.
 * Returns NULL if opts->uri is NULL or memory runs out (a bad URI is
 * reported by pt_amqp_start's callback, or earlier by pt_amqp_uri_check). */
pt_amqp_t *pt_amqp_new(uv_loop_t *loop, const pt_amqp_opts_t *opts);

/* Connects off the loop (thread pool), runs setup, then calls cb on the
 * loop. Returns PT_EBUSY if already connected or connecting. */
int pt_amqp_start(pt_amqp_t *c, pt_amqp_ready_cb cb, void *arg);

/* 1 when connected and usable. */
int pt_amqp_is_ready(const pt_amqp_t *c);

/* 1 while the broker blocks this connection's publishes (a memory or disk
 * alarm, connection.blocked): a publish now would stall until it clears. */
int pt_amqp_is_blocked(const pt_amqp_t *c);

typedef struct {
  int persistent;           /* delivery_mode 2 */
  const char *message_id;   /* MAY be NULL */
  const char *content_type; /* NULL: application/json */
  const char *expiration;   /* TTL in ms, as a string; MAY be NULL */
  amqp_table_t *headers;    /* MAY be NULL */
  /* The broker returns it if no queue takes it, and its confirm callback
   * then gets PT_EUNROUTED instead of 0. Needs a message_id (under 64
   * bytes), by which the return is matched. */
  int mandatory;
} pt_amqp_msg_t;

/* Publishes on the confirm channel. cb (MAY be NULL) runs once when the
 * broker confirms (0), refuses (PT_ENACK) or returns (PT_EUNROUTED, a
 * mandatory message that reached no queue) it, when the connection is
 * lost (PT_ECLOSED) or when the handle is destroyed (PT_ECANCELED); never
 * from inside this call. msg MAY be NULL (transient, application/json).
 * A returned message also makes the handle reconnect (the owner's setup
 * then declares the topology again) once the publishes in flight are
 * confirmed; until then publishes are refused with PT_EUNROUTED.
 * Returns PT_EINVAL for a name longer than 255 bytes, PT_EBUSY while the
 * broker blocks publishers (pt_amqp_is_blocked: the write could stall the
 * loop until the alarm clears), PT_ECLOSED if not connected or if the
 * write failed (cb never runs; the loss is then reported to on_lost from
 * the loop, not from inside this call). */
int pt_amqp_publish(pt_amqp_t *c, const char *exchange, const char *routing_key,
                    const void *body, size_t len, const pt_amqp_msg_t *msg,
                    pt_amqp_confirm_cb cb, void *arg);

/* Starts consuming `queue` on PT_AMQP_CONSUME_CHANNEL with manual acks and
 * the given prefetch, 0 for no limit (basic.qos then basic.consume, sent
 * without waiting; the loop handles the replies). cb runs once per message
 * until the consumer is cancelled or the connection lost. A missing queue
 * closes the channel, which is reported to on_lost. Returns PT_EBUSY if a
 * consumer is already active or still being cancelled, PT_ECLOSED if not
 * connected. */
int pt_amqp_consume(pt_amqp_t *c, const char *queue, uint16_t prefetch,
                    pt_amqp_deliver_cb cb, void *arg);
/* Stops delivering new messages (basic.cancel); unacked ones stay ours.
 * Messages already on the wire still reach the deliver callback until the
 * broker's cancel-ok arrives; after that pt_amqp_consume() may be called
 * again. Returns PT_EINVAL if there is no consumer. */
int pt_amqp_cancel_consume(pt_amqp_t *c);

/* Settle a delivery, from the deliver callback or later. Return PT_ECLOSED
 * if not connected or if the write failed (reported to on_lost later). */
int pt_amqp_ack(pt_amqp_t *c, uint64_t delivery_tag);
int pt_amqp_nack(pt_amqp_t *c, uint64_t delivery_tag, int requeue);

/* Number of publishes waiting for a confirm. */
size_t pt_amqp_unconfirmed(const pt_amqp_t *c);

/* Closes the connection and frees the handle once its libuv handles are
 * closed and a running connect job has returned; destroy(NULL) does
 * nothing. It never waits for the broker: it sends connection.close only if
 * the socket can take it at once, then closes the socket. Before it
 * returns, a pending start callback gets PT_ECANCELED and so does every
 * pending confirm. It may be called from any of this handle's loop
 * callbacks (not from the setup hook); the handle must not be used
 * afterwards. */
void pt_amqp_destroy(pt_amqp_t *c);

/* A blocking connection for commands that own no loop (inspect, replay,
 * tests): connects with a timeout, logs in ("amqp://host/" means vhost
 * "/") and opens channel 1; every later request waits for its reply at
 * most timeout_ms too. Returns NULL and fills err on failure; close
 * with pt_amqp_close_sync. Never call it on a loop thread. */
amqp_connection_state_t pt_amqp_connect_sync(const char *uri, int timeout_ms,
                                             pt_error_t *err);
void pt_amqp_close_sync(amqp_connection_state_t conn);

/* Parses and checks an amqp:// URI without connecting (PT_EINVAL). */
int pt_amqp_uri_check(const char *uri, pt_error_t *err);

/* Turns the reply of a blocking librabbitmq RPC (amqp_get_rpc_reply) into
 * 0, or a code with a message that starts with `what`: PT_EBROKER when the
 * broker closed the channel or connection, PT_ECLOSED for a library or
 * socket error. For setup hooks. */
int pt_amqp_reply_error(amqp_rpc_reply_t reply, const char *what,
                        pt_error_t *err);

#endif
