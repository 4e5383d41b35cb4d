/* RabbitMQ on a libuv loop; see pt_amqp.h for the contract.
 *
 * Life of a handle: IDLE -> CONNECTING (a thread-pool job owns the
 * librabbitmq connection) -> READY (the loop owns it and polls its socket)
 * -> IDLE again when the connection is lost. pt_amqp_destroy() may come at
 * any point, including from inside one of our own callbacks, so the struct
 * is freed only when nothing refers to it any more: no callback of ours on
 * the stack (busy), no thread-pool job, no poll handle still closing
 * (hiredis's adapters/libuv.h frees in the last close callback likewise).
 */
#include "core/pt_amqp.h"

#include <amqp_tcp_socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_log.h"

#define FRAME_MAX 131072
#define CONSUMER_TAG "paytask"
/* Frames handled per readable event before the loop gets a turn, so that a
 * busy queue cannot starve timers and other sockets. */
#define DRAIN_BUDGET 1024

typedef enum { ST_IDLE, ST_CONNECTING, ST_READY } state_t;

typedef enum { CONSUMER_NONE, CONSUMER_ON, CONSUMER_CANCELLING } consumer_t;

/* What to tell the broker before the socket is closed. */
typedef enum { BYE_NONE, BYE_CLOSE, BYE_CLOSE_OK } bye_t;

/* A publish waiting for its confirm; `done` once its callback has run, so
 * that confirms arriving out of order can be settled in place. */
typedef struct {
  pt_amqp_confirm_cb cb;
  void *arg;
  int done;
  uint64_t at_ms; /* loop time of the publish */
  int mandatory;  /* published mandatory: the broker returns it unrouted */
  int returned;   /* it came back (basic.return): its ack reports that */
  char mid[64];   /* its message_id and */
  uint64_t route; /* route_hash(exchange, routing key): what a return is
                     matched by */
} pending_t;

/* A basic.return being received on the publish channel: its header and
 * body frames follow the method. */
typedef struct {
  int active, have_header;
  uint64_t body_size, got;
  uint64_t route; /* route_hash of the exchange and key it was sent to */
} returning_t;

/* FNV-1a of n bytes, going on from h. */
static uint64_t fnv1a(uint64_t h, const void *bytes, size_t n) {
  const unsigned char *p = bytes;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

/* FNV-1a over the exchange, a NUL and the routing key: a return names
 * both, so two publishes with one message_id on different routes (a dead
 * copy and an early forward of one task) are told apart. */
static uint64_t route_hash(const void *ex, size_t exlen, const void *rk,
                           size_t rklen) {
  uint64_t h = fnv1a(14695981039346656037ULL, ex, exlen);
  return fnv1a(fnv1a(h, "", 1), rk, rklen);
}

/* The message being assembled on the consumer channel: basic.deliver, then
 * a content header, then body frames until body_size bytes have come. */
typedef struct {
  int active;
  int have_header;
  pt_amqp_delivery_t d;
  uint64_t body_size;
  size_t got;
  char *buf; /* only when the body spans several frames */
} inbound_t;

struct pt_amqp {
  uv_loop_t *loop;
  char *uri;
  pt_amqp_setup_fn setup;
  void *setup_arg;
  pt_amqp_lost_cb on_lost;
  void *lost_arg;
  int connect_timeout_ms;
  int confirm_timeout_ms;

  state_t state;
  int destroyed;
  int busy;          /* our frames on the stack that will touch the struct */
  int polls_closing; /* handles (poll, timer) whose close callback is due */

  /* Connecting: written by the thread-pool job, read by after_connect. */
  uv_work_t work;
  amqp_connection_state_t work_conn;
  int work_status;
  pt_error_t work_err;
  pt_amqp_ready_cb ready_cb;
  void *ready_arg;

  /* Ready: owned by the loop thread. */
  amqp_connection_state_t conn;
  uv_poll_t *poll; /* one per connection, freed in its close callback */
  uv_timer_t *confirm_timer; /* likewise: checks the oldest confirm */
  int kicked;      /* also polling for UV_WRITABLE, see kick() */
  int broken;      /* a write failed; on_io reports it */
  int blocked;     /* connection.blocked: the broker reads no publishes */
  pt_error_t broken_err;

  /* Publisher confirms: ring[head] holds sequence number first_seq, the
   * ring holds len consecutive numbers; cap is a power of two. */
  pending_t *ring;
  size_t cap, head, len;
  uint64_t first_seq;
  size_t unconfirmed;

  consumer_t consumer;
  pt_amqp_deliver_cb deliver_cb;
  void *deliver_arg;
  inbound_t in;
  returning_t ret;
  int unrouted; /* a publish came back: reconnect once its ack is handled */
};

static void on_io(uv_poll_t *h, int status, int events);

/* URI */

/* Parses uri into info, whose strings point into *copy (amqp_parse_url
 * writes into its argument). The caller frees *copy, even on failure. */
static int parse_uri(const char *uri, char **copy,
                     struct amqp_connection_info *info, pt_error_t *err) {
  *copy = NULL;
  if (uri == NULL)
    return pt_error_set(err, PT_DOMAIN_AMQP, PT_EINVAL, "no AMQP URI");
  *copy = strdup(uri);
  if (*copy == NULL)
    return pt_error_set(err, PT_DOMAIN_AMQP, PT_ENOMEM, "out of memory");
  amqp_default_connection_info(info);
  /* The URI is left out of the messages: it holds the password. */
  if (amqp_parse_url(*copy, info) != AMQP_STATUS_OK)
    return pt_error_set(err, PT_DOMAIN_AMQP, PT_EINVAL,
                        "invalid AMQP URI (want "
                        "amqp://user:password@host:port/vhost)");
  if (info->ssl)
    return pt_error_set(err, PT_DOMAIN_AMQP, PT_EINVAL,
                        "amqps:// URIs are not supported");
  /* librabbitmq reads "amqp://host/" as the vhost "", which RabbitMQ
   * refuses; like pika, we take an empty path for the default vhost. */
  if (info->vhost[0] == '\0')
    info->vhost = "/";
  return 0;
}

int pt_amqp_uri_check(const char *uri, pt_error_t *err) {
  struct amqp_connection_info info;
  char *copy;
  int rc = parse_uri(uri, &copy, &info, err);
  free(copy);
  return rc;
}

int pt_amqp_reply_error(amqp_rpc_reply_t reply, const char *what,
                        pt_error_t *err) {
  switch (reply.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    return 0;
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    return pt_error_set(err, PT_DOMAIN_AMQP, PT_ECLOSED, "%s: %s", what,
                        amqp_error_string2(reply.library_error));
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      const amqp_connection_close_t *m = reply.reply.decoded;
      return pt_error_set(err, PT_DOMAIN_AMQP, PT_EBROKER,
                          "%s: broker closed the connection: %u %.*s", what,
                          (unsigned)m->reply_code, (int)m->reply_text.len,
                          (const char *)m->reply_text.bytes);
    }
    if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      const amqp_channel_close_t *m = reply.reply.decoded;
      return pt_error_set(err, PT_DOMAIN_AMQP, PT_EBROKER,
                          "%s: broker closed the channel: %u %.*s", what,
                          (unsigned)m->reply_code, (int)m->reply_text.len,
                          (const char *)m->reply_text.bytes);
    }
    return pt_error_set(err, PT_DOMAIN_AMQP, PT_EBROKER,
                        "%s: unexpected broker method 0x%08x", what,
                        (unsigned)reply.reply.id);
  default:
    return pt_error_set(err, PT_DOMAIN_AMQP, PT_EPROTO, "%s: no reply", what);
  }
}

/* Handle */

pt_amqp_t *pt_amqp_new(uv_loop_t *loop, const pt_amqp_opts_t *opts) {
  pt_amqp_t *c;
  if (loop == NULL || opts == NULL || opts->uri == NULL)
    return NULL;
  c = calloc(1, sizeof *c);
  if (c == NULL)
    return NULL;
  c->uri = strdup(opts->uri);
  if (c->uri == NULL) {
    free(c);
    return NULL;
  }
  c->loop = loop;
  c->setup = opts->setup;
  c->setup_arg = opts->setup_arg;
  c->on_lost = opts->on_lost;
  c->lost_arg = opts->lost_arg;
  c->confirm_timeout_ms =
      opts->confirm_timeout_ms > 0 ? opts->confirm_timeout_ms : 30000;
  c->connect_timeout_ms =
      opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
  c->first_seq = 1;
  return c;
}

int pt_amqp_is_ready(const pt_amqp_t *c) {
  return c != NULL && c->state == ST_READY && !c->broken;
}

int pt_amqp_is_blocked(const pt_amqp_t *c) {
  return c != NULL && c->state == ST_READY && c->blocked;
}

size_t pt_amqp_unconfirmed(const pt_amqp_t *c) {
  return c != NULL ? c->unconfirmed : 0;
}

/* Frees c once nothing can reach it any more; see the top of the file. */
static void maybe_free(pt_amqp_t *c) {
  if (!c->destroyed || c->busy > 0 || c->state == ST_CONNECTING ||
      c->polls_closing > 0)
    return;
  free(c->in.buf);
  free(c->ring);
  free(c->uri);
  free(c);
}

static void on_poll_close(uv_handle_t *h) {
  pt_amqp_t *c = h->data;
  free(h);
  c->polls_closing--;
  maybe_free(c);
}

/* Pending confirms */

static pending_t *pending_at(pt_amqp_t *c, uint64_t seq) {
  if (seq < c->first_seq || seq - c->first_seq >= c->len)
    return NULL;
  return &c->ring[(c->head + (size_t)(seq - c->first_seq)) & (c->cap - 1)];
}

static int pending_reserve(pt_amqp_t *c) {
  size_t cap, i;
  pending_t *ring;
  if (c->len < c->cap)
    return 0;
  cap = c->cap > 0 ? c->cap * 2 : 256;
  ring = malloc(cap * sizeof *ring);
  if (ring == NULL)
    return PT_ENOMEM;
  for (i = 0; i < c->len; i++)
    ring[i] = c->ring[(c->head + i) & (c->cap - 1)];
  free(c->ring);
  c->ring = ring;
  c->cap = cap;
  c->head = 0;
  return 0;
}

static void pending_pop_done(pt_amqp_t *c) {
  while (c->len > 0 && c->ring[c->head].done) {
    c->head = (c->head + 1) & (c->cap - 1);
    c->len--;
    c->first_seq++;
  }
}

/* Settles one publish and runs its callback, which may publish, lose or
 * destroy; callers re-read everything afterwards. */
static void settle(pt_amqp_t *c, pending_t *p, int status) {
  if (status == 0 && p->returned) {
    status = PT_EUNROUTED; /* acked, but it reached no queue */
    c->unrouted = 1;
  }
  pt_amqp_confirm_cb cb = p->cb;
  void *arg = p->arg;
  p->done = 1;
  c->unconfirmed--;
  pending_pop_done(c);
  if (cb != NULL)
    cb(c, status, arg);
}

/* Calls back every unsettled publish with status. The caller has already
 * left ST_READY, so callbacks cannot add new ones. */
static void fail_pending(pt_amqp_t *c, int status) {
  while (c->unconfirmed > 0) {
    uint64_t seq = c->first_seq;
    pending_t *p = pending_at(c, seq);
    while (p != NULL && p->done)
      p = pending_at(c, ++seq);
    if (p == NULL)
      break;
    settle(c, p, status);
  }
  c->head = 0;
  c->len = 0;
  c->unconfirmed = 0;
}

/* Connection teardown */

/* Sends a last method only if the socket takes it at once: a broker that
 * stopped reading must not hold the loop. */
static void say_bye(amqp_connection_state_t conn, bye_t bye) {
  struct pollfd p;
  p.fd = amqp_get_sockfd(conn);
  p.events = POLLOUT;
  if (bye == BYE_NONE || p.fd < 0 || poll(&p, 1, 0) != 1 ||
      (p.revents & (POLLERR | POLLHUP)) != 0)
    return;
  if (bye == BYE_CLOSE) {
    amqp_connection_close_t m;
    m.reply_code = AMQP_REPLY_SUCCESS;
    m.reply_text = amqp_cstring_bytes("paytask closing");
    m.class_id = 0;
    m.method_id = 0;
    amqp_send_method(conn, 0, AMQP_CONNECTION_CLOSE_METHOD, &m);
  } else {
    amqp_connection_close_ok_t m;
    m.dummy = 0;
    amqp_send_method(conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &m);
  }
}

/* Stops polling, then closes the socket (libuv forbids closing a polled
 * fd) and forgets the consumer and any half-received message. */
static void detach(pt_amqp_t *c, bye_t bye) {
  if (c->poll != NULL) {
    uv_close((uv_handle_t *)c->poll, on_poll_close);
    c->poll = NULL;
    c->polls_closing++;
  }
  if (c->confirm_timer != NULL) {
    uv_close((uv_handle_t *)c->confirm_timer, on_poll_close);
    c->confirm_timer = NULL;
    c->polls_closing++;
  }
  if (c->conn != NULL) {
    say_bye(c->conn, bye);
    amqp_destroy_connection(c->conn);
    c->conn = NULL;
  }
  free(c->in.buf);
  memset(&c->in, 0, sizeof c->in);
  memset(&c->ret, 0, sizeof c->ret);
  c->unrouted = 0;
  c->consumer = CONSUMER_NONE;
  c->deliver_cb = NULL;
  c->deliver_arg = NULL;
  c->kicked = 0;
  c->broken = 0;
}

/* The connection is gone: settle every publish with PT_ECLOSED, then tell
 * the owner once. Does nothing unless the handle was ready. */
static void lose(pt_amqp_t *c, bye_t bye, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void lose(pt_amqp_t *c, bye_t bye, int code, const char *fmt, ...) {
  pt_error_t err;
  va_list ap;
  if (c->state != ST_READY)
    return;
  err.domain = PT_DOMAIN_AMQP;
  err.code = code;
  va_start(ap, fmt);
  vsnprintf(err.message, sizeof err.message, fmt, ap);
  va_end(ap);
  c->state = ST_IDLE;
  c->blocked = 0;
  detach(c, bye);
  fail_pending(c, PT_ECLOSED);
  if (c->destroyed)
    return;
  if (c->on_lost != NULL)
    c->on_lost(c, code, &err, c->lost_arg);
  else /* Nobody else will hear of it, so this is where it is handled. */
    PT_WARN("amqp_lost", "code=%s", pt_err_name(code));
}

/* librabbitmq may hold input that the kernel no longer reports readable
 * (it reads ahead, and a write may read too when heartbeats are on). Also
 * polling for UV_WRITABLE makes the loop call on_io on its next turn
 * instead of waiting for more bytes; on_io drops it again. */
static void kick(pt_amqp_t *c) {
  if (c->poll == NULL || c->kicked)
    return;
  if (uv_poll_start(c->poll, UV_READABLE | UV_WRITABLE, on_io) == 0)
    c->kicked = 1;
}

/* A write failed. The stream may be cut mid-message, so the connection is
 * finished, but the caller is inside one of our functions: the loss is
 * reported from on_io, never from inside pt_amqp_publish() and friends. */
static int mark_broken(pt_amqp_t *c, int amqp_status, const char *what) {
  if (!c->broken) {
    c->broken = 1;
    pt_error_set(&c->broken_err, PT_DOMAIN_AMQP, PT_ECLOSED, "%s: %s", what,
                 amqp_error_string2(amqp_status));
    kick(c);
  }
  return PT_ECLOSED;
}

/* After a write, see whether librabbitmq queued input on the way. */
static void after_write(pt_amqp_t *c) {
  if (amqp_frames_enqueued(c->conn) || amqp_data_in_buffer(c->conn))
    kick(c);
}

/* Inbound frames */

static void on_confirm(pt_amqp_t *c, uint64_t tag, int multiple, int status) {
  uint64_t seq = multiple ? c->first_seq : tag;
  if (tag == 0 || tag >= c->first_seq + c->len) {
    lose(c, BYE_CLOSE, PT_EPROTO, "broker confirmed unknown publish %llu",
         (unsigned long long)tag);
    return;
  }
  for (; seq <= tag; seq++) {
    pending_t *p = pending_at(c, seq);
    if (p == NULL || p->done)
      continue;
    settle(c, p, status);
    if (c->state != ST_READY)
      return; /* lost or destroyed in the callback; the rest are settled */
  }
}

static void delivery_done(pt_amqp_t *c) {
  free(c->in.buf);
  memset(&c->in, 0, sizeof c->in);
}

/* Hands the assembled message to the consumer. */
static void deliver(pt_amqp_t *c, const void *body) {
  c->in.d.body = body;
  c->in.d.body_len = (size_t)c->in.body_size;
  if (c->deliver_cb != NULL)
    c->deliver_cb(c, &c->in.d, c->deliver_arg);
  /* The callback may have destroyed the handle or lost the connection;
   * both leave in zeroed, so this is safe either way. */
  delivery_done(c);
}

static void on_deliver(pt_amqp_t *c, const amqp_basic_deliver_t *m) {
  if (c->in.active) {
    lose(c, BYE_CLOSE, PT_EPROTO, "basic.deliver inside another message");
    return;
  }
  c->in.active = 1;
  c->in.d.delivery_tag = m->delivery_tag;
  c->in.d.redelivered = m->redelivered != 0;
  c->in.d.exchange = m->exchange;
  c->in.d.routing_key = m->routing_key;
}

/* A mandatory publish the broker could route to no queue comes back
 * (basic.return, then its header and body) before its ack. The return is
 * matched to the oldest unsettled mandatory publish with its message_id,
 * exchange and routing key, whose confirm then reports PT_EUNROUTED: a
 * task that reached no queue is not taken. */
static void on_return_header(pt_amqp_t *c, const amqp_frame_t *f) {
  const amqp_basic_properties_t *props = f->payload.properties.decoded;
  if (!c->ret.active || c->ret.have_header) {
    lose(c, BYE_CLOSE, PT_EPROTO, "unexpected content header on channel %u",
         (unsigned)f->channel);
    return;
  }
  c->ret.have_header = 1;
  c->ret.body_size = f->payload.properties.body_size;
  int has_id = props != NULL && (props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG);
  size_t id_len = has_id ? props->message_id.len : 0;
  const char *id = has_id ? props->message_id.bytes : "";
  int matched = 0;
  for (size_t i = 0; has_id && i < c->len && !matched; i++) {
    pending_t *p = &c->ring[(c->head + i) & (c->cap - 1)];
    if (!p->done && p->mandatory && !p->returned &&
        p->route == c->ret.route && id_len == strlen(p->mid) &&
        memcmp(id, p->mid, id_len) == 0)
      matched = p->returned = 1;
  }
  if (!matched)
    PT_WARN("amqp_return_unmatched", "message_id=\"%.*s\"", (int)id_len, id);
  if (c->ret.body_size == 0)
    memset(&c->ret, 0, sizeof c->ret);
}

static void on_return_body(pt_amqp_t *c, const amqp_frame_t *f) {
  size_t len = f->payload.body_fragment.len;
  if (!c->ret.have_header || len > c->ret.body_size - c->ret.got) {
    lose(c, BYE_CLOSE, PT_EPROTO, "unexpected content body on channel %u",
         (unsigned)f->channel);
    return;
  }
  c->ret.got += len;
  if (c->ret.got == c->ret.body_size)
    memset(&c->ret, 0, sizeof c->ret);
}

static void on_header(pt_amqp_t *c, const amqp_frame_t *f) {
  if (f->channel == PT_AMQP_PUB_CHANNEL) {
    on_return_header(c, f);
    return;
  }
  if (f->channel != PT_AMQP_CONSUME_CHANNEL || !c->in.active ||
      c->in.have_header) {
    lose(c, BYE_CLOSE, PT_EPROTO, "unexpected content header on channel %u",
         (unsigned)f->channel);
    return;
  }
  if (f->payload.properties.body_size > SIZE_MAX) {
    lose(c, BYE_CLOSE, PT_ENOMEM, "message of %llu bytes is too large",
         (unsigned long long)f->payload.properties.body_size);
    return;
  }
  c->in.have_header = 1;
  c->in.body_size = f->payload.properties.body_size;
  c->in.d.props = f->payload.properties.decoded;
  if (c->in.body_size == 0)
    deliver(c, "");
}

static void on_body(pt_amqp_t *c, const amqp_frame_t *f) {
  amqp_bytes_t frag = f->payload.body_fragment;
  if (f->channel == PT_AMQP_PUB_CHANNEL) {
    on_return_body(c, f);
    return;
  }
  if (f->channel != PT_AMQP_CONSUME_CHANNEL || !c->in.have_header ||
      frag.len > c->in.body_size - c->in.got) {
    lose(c, BYE_CLOSE, PT_EPROTO, "unexpected content body on channel %u",
         (unsigned)f->channel);
    return;
  }
  /* The usual case, one frame: hand over librabbitmq's buffer as it is. */
  if (c->in.got == 0 && frag.len == c->in.body_size) {
    deliver(c, frag.bytes);
    return;
  }
  if (c->in.buf == NULL) {
    c->in.buf = malloc((size_t)c->in.body_size);
    if (c->in.buf == NULL) {
      lose(c, BYE_CLOSE, PT_ENOMEM, "no memory for a message of %llu bytes",
           (unsigned long long)c->in.body_size);
      return;
    }
  }
  memcpy(c->in.buf + c->in.got, frag.bytes, frag.len);
  c->in.got += frag.len;
  if (c->in.got == c->in.body_size)
    deliver(c, c->in.buf);
}

/* Something of the topology is gone (a queue or a binding deleted): once
 * the publishes in flight are settled, a new connection runs the owner's
 * setup, which declares it again, instead of every later publish coming
 * back the same way. New publishes are refused meanwhile, so that the ones
 * in flight are confirmed rather than failed with the connection. */
static void maybe_redeclare(pt_amqp_t *c) {
  if (!c->unrouted || c->state != ST_READY || c->unconfirmed > 0)
    return;
  c->unrouted = 0;
  lose(c, BYE_CLOSE, PT_EUNROUTED,
       "a message reached no queue; reconnecting to declare the topology "
       "again");
}

static void on_method(pt_amqp_t *c, amqp_channel_t ch, const amqp_method_t *m) {
  switch (m->id) {
  case AMQP_BASIC_ACK_METHOD: {
    const amqp_basic_ack_t *a = m->decoded;
    if (ch == PT_AMQP_PUB_CHANNEL)
      on_confirm(c, a->delivery_tag, a->multiple, 0);
    maybe_redeclare(c);
    return;
  }
  case AMQP_BASIC_NACK_METHOD: {
    const amqp_basic_nack_t *n = m->decoded;
    if (ch == PT_AMQP_PUB_CHANNEL)
      on_confirm(c, n->delivery_tag, n->multiple, PT_ENACK);
    maybe_redeclare(c);
    return;
  }
  case AMQP_BASIC_RETURN_METHOD: {
    const amqp_basic_return_t *r = m->decoded;
    if (ch != PT_AMQP_PUB_CHANNEL || c->ret.active) {
      lose(c, BYE_CLOSE, PT_EPROTO, "unexpected basic.return on channel %u",
           (unsigned)ch);
      return;
    }
    c->ret.active = 1;
    c->ret.route = route_hash(r->exchange.bytes, r->exchange.len,
                              r->routing_key.bytes, r->routing_key.len);
    PT_WARN("amqp_returned", "exchange=\"%.*s\" routing_key=\"%.*s\" "
            "reply=\"%u %.*s\" note=\"no queue took the message\"",
            (int)r->exchange.len, (const char *)r->exchange.bytes,
            (int)r->routing_key.len, (const char *)r->routing_key.bytes,
            (unsigned)r->reply_code, (int)r->reply_text.len,
            (const char *)r->reply_text.bytes);
    return;
  }
  case AMQP_BASIC_DELIVER_METHOD:
    if (ch != PT_AMQP_CONSUME_CHANNEL) {
      lose(c, BYE_CLOSE, PT_EPROTO, "basic.deliver on channel %u",
           (unsigned)ch);
      return;
    }
    on_deliver(c, m->decoded);
    return;
  case AMQP_BASIC_CANCEL_OK_METHOD:
    c->consumer = CONSUMER_NONE;
    c->deliver_cb = NULL;
    c->deliver_arg = NULL;
    return;
  case AMQP_BASIC_CANCEL_METHOD:
    /* The broker ends a consumer when its queue is deleted; the owner
     * must declare it again, which a reconnect does. */
    lose(c, BYE_CLOSE, PT_EBROKER, "the broker cancelled the consumer");
    return;
  case AMQP_CHANNEL_CLOSE_METHOD: {
    const amqp_channel_close_t *cc = m->decoded;
    lose(c, BYE_CLOSE, PT_EBROKER, "broker closed channel %u: %u %.*s",
         (unsigned)ch, (unsigned)cc->reply_code, (int)cc->reply_text.len,
         (const char *)cc->reply_text.bytes);
    return;
  }
  case AMQP_CONNECTION_CLOSE_METHOD: {
    const amqp_connection_close_t *cc = m->decoded;
    lose(c, BYE_CLOSE_OK, PT_EBROKER, "broker closed the connection: %u %.*s",
         (unsigned)cc->reply_code, (int)cc->reply_text.len,
         (const char *)cc->reply_text.bytes);
    return;
  }
  case AMQP_CONNECTION_BLOCKED_METHOD: {
    /* A resource alarm: the broker stops reading this connection, and
     * publishes would fill the socket buffer and then block the loop in
     * librabbitmq's poll(), on the loop: pt_amqp_publish refuses with
     * PT_EBUSY until connection.unblocked. */
    const amqp_connection_blocked_t *b = m->decoded;
    c->blocked = 1;
    PT_WARN("amqp_blocked", "reason=\"%.*s\" note=\"broker blocks publishers\"",
            (int)b->reason.len, (const char *)b->reason.bytes);
    return;
  }
  case AMQP_CONNECTION_UNBLOCKED_METHOD:
    c->blocked = 0;
    PT_INFO("amqp_unblocked", "note=\"broker accepts publishers again\"");
    return;
  default:
    /* basic.qos-ok, basic.consume-ok: nothing to do; the sender did not
     * wait for them. Anything else is not ours to answer. */
    return;
  }
}

static void dispatch(pt_amqp_t *c, const amqp_frame_t *f) {
  switch (f->frame_type) {
  case AMQP_FRAME_METHOD:
    on_method(c, f->channel, &f->payload.method);
    return;
  case AMQP_FRAME_HEADER:
    on_header(c, f);
    return;
  case AMQP_FRAME_BODY:
    on_body(c, f);
    return;
  default:
    return;
  }
}

/* Reads every frame librabbitmq can give without waiting: the frames it
 * already buffered and whatever the socket holds. uv_poll reports only the
 * socket, so stopping early would strand buffered frames. */
static void drain(pt_amqp_t *c) {
  static const struct timeval zero = {0, 0};
  int n;
  for (n = 0; n < DRAIN_BUDGET && c->state == ST_READY; n++) {
    amqp_frame_t f;
    int rc = amqp_simple_wait_frame_noblock(c->conn, &f, &zero);
    if (rc == AMQP_STATUS_TIMEOUT)
      return;
    if (rc != AMQP_STATUS_OK) {
      lose(c, BYE_NONE, PT_ECLOSED, "reading from the broker: %s",
           amqp_error_string2(rc));
      return;
    }
    dispatch(c, &f);
    if (c->state != ST_READY)
      return;
    /* Decoded frames live in per-channel pools until released; a message
     * being assembled keeps its channel's pool until it is delivered. */
    if (!(f.channel == PT_AMQP_CONSUME_CHANNEL && c->in.active))
      amqp_maybe_release_buffers_on_channel(c->conn, f.channel);
  }
  if (c->state == ST_READY)
    kick(c); /* budget spent; more may be buffered */
}

static void on_io(uv_poll_t *h, int status, int events) {
  pt_amqp_t *c = h->data;
  (void)events;
  c->busy++;
  if (status < 0) {
    lose(c, BYE_NONE, PT_ECLOSED, "polling the broker socket: %s",
         uv_strerror(status));
  } else if (c->broken) {
    lose(c, BYE_NONE, PT_ECLOSED, "%s", c->broken_err.message);
  } else {
    if (c->kicked && uv_poll_start(h, UV_READABLE, on_io) == 0)
      c->kicked = 0;
    drain(c);
  }
  c->busy--;
  maybe_free(c);
}

/* Connecting (thread pool) */

static int open_channel(amqp_connection_state_t conn, amqp_channel_t ch,
                        pt_error_t *err) {
  char what[48];
  snprintf(what, sizeof what, "opening channel %u", (unsigned)ch);
  amqp_channel_open(conn, ch);
  return pt_amqp_reply_error(amqp_get_rpc_reply(conn), what, err);
}

/* The connection runs without AMQP heartbeats (librabbitmq sends them
 * only from inside its own blocking waits, which the loop never makes), so
 * TCP notices a broker that vanished without a reset: keepalive probes
 * after 30 s idle, 10 s apart, 3 of them; and data unacknowledged for
 * 60 s. The socket then fails, and the connection is remade. */
static void set_keepalive(int fd) {
  int on = 1, idle = 30, intvl = 10, cnt = 3;
  unsigned int user_timeout_ms = 60000;
  if (fd < 0)
    return;
  if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms,
                 sizeof user_timeout_ms) != 0)
    PT_WARN("amqp_keepalive_unset", "fd=%d", fd);
}

/* Everything that blocks: socket, login, channels, confirms, setup. */
static int connect_blocking(const pt_amqp_t *c, amqp_connection_state_t *out,
                            pt_error_t *err) {
  struct amqp_connection_info info;
  struct timeval tv;
  amqp_connection_state_t conn = NULL;
  amqp_socket_t *sock;
  char what[300];
  char *copy;
  int logged_in = 0;
  int rc;

  *out = NULL;
  rc = parse_uri(c->uri, &copy, &info, err);
  if (rc < 0)
    goto out;
  tv.tv_sec = c->connect_timeout_ms / 1000;
  tv.tv_usec = (c->connect_timeout_ms % 1000) * 1000;
  conn = amqp_new_connection();
  sock = conn != NULL ? amqp_tcp_socket_new(conn) : NULL;
  if (sock == NULL) {
    rc = pt_error_set(err, PT_DOMAIN_AMQP, PT_ENOMEM, "out of memory");
    goto out;
  }
  rc = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
  if (rc != AMQP_STATUS_OK) {
    rc = pt_error_set(err, PT_DOMAIN_AMQP, PT_ECONNECT,
                      "cannot connect to %s:%d: %s", info.host, info.port,
                      amqp_error_string2(rc));
    goto out;
  }
  set_keepalive(amqp_get_sockfd(conn));
  /* Every later RPC, the setup hook's included, gives up after the same
   * time, so a broker that accepts and then stalls cannot pin a pool
   * thread (and pt_amqp_destroy, which waits for it) for ever. */
  amqp_set_handshake_timeout(conn, &tv);
  amqp_set_rpc_timeout(conn, &tv);
  snprintf(what, sizeof what, "login to %s:%d", info.host, info.port);
  /* Ask for connection.blocked notices (librabbitmq does not by default),
   * so that a resource alarm is known rather than felt as a stall, and for
   * basic.cancel when the broker ends a consumer (its queue deleted, or
   * the node holding it lost): without it the consumer is dropped without
   * a word and the connection stays up, consuming nothing. */
  amqp_table_entry_t cap[2] = {
      {.key = amqp_cstring_bytes("connection.blocked"),
       .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value = {.boolean = 1}}},
      {.key = amqp_cstring_bytes("consumer_cancel_notify"),
       .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value = {.boolean = 1}}}};
  amqp_table_entry_t prop = {
      .key = amqp_cstring_bytes("capabilities"),
      .value = {.kind = AMQP_FIELD_KIND_TABLE,
                .value = {.table = {.num_entries = 2, .entries = cap}}}};
  amqp_table_t props = {.num_entries = 1, .entries = &prop};
  rc = pt_amqp_reply_error(
      amqp_login_with_properties(conn, info.vhost, 0, FRAME_MAX, 0, &props,
                                 AMQP_SASL_METHOD_PLAIN, info.user,
                                 info.password),
      what, err);
  if (rc < 0) {
    if (err != NULL)
      err->code = PT_ECONNECT;
    rc = PT_ECONNECT;
    goto out;
  }
  logged_in = 1;
  rc = open_channel(conn, PT_AMQP_PUB_CHANNEL, err);
  if (rc < 0)
    goto out;
  rc = open_channel(conn, PT_AMQP_CONSUME_CHANNEL, err);
  if (rc < 0)
    goto out;
  amqp_confirm_select(conn, PT_AMQP_PUB_CHANNEL);
  rc = pt_amqp_reply_error(amqp_get_rpc_reply(conn), "confirm.select", err);
  if (rc < 0)
    goto out;
  if (c->setup != NULL) {
    if (err != NULL)
      err->message[0] = '\0';
    rc = c->setup(conn, c->setup_arg, err);
    if (rc < 0) {
      if (err != NULL && err->message[0] == '\0')
        pt_error_set(err, PT_DOMAIN_AMQP, rc, "setup hook: %s",
                     pt_strerror(rc));
      goto out;
    }
    rc = 0;
  }

out:
  if (rc < 0 && conn != NULL) {
    if (logged_in) /* bounded by the RPC timeout */
      amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
  } else if (rc == 0) {
    *out = conn;
  }
  free(copy);
  return rc;
}

static void connect_work(uv_work_t *w) {
  pt_amqp_t *c = w->data;
  c->work_status = connect_blocking(c, &c->work_conn, &c->work_err);
}

/* A broker that confirms nothing for confirm_timeout_ms is taken for gone,
 * as a missed heartbeat would be: the connection is dropped, so that its
 * publishes fail (their owners withdraw or retry them) and a new one is
 * made, instead of requests waiting without end. */
static void on_confirm_check(uv_timer_t *t) {
  pt_amqp_t *c = t->data;
  if (c->state != ST_READY || c->unconfirmed == 0 || c->len == 0)
    return;
  uint64_t age = uv_now(c->loop) - c->ring[c->head].at_ms;
  if (age <= (uint64_t)c->confirm_timeout_ms)
    return;
  c->busy++;
  lose(c, BYE_CLOSE, PT_ETIMEDOUT,
       "the broker confirmed no publish for %llu ms (%zu waiting)",
       (unsigned long long)age, c->unconfirmed);
  c->busy--;
  maybe_free(c);
}

/* Hands conn to the loop: polls its socket and numbers publishes afresh.
 * On failure conn is closed. */
static int attach(pt_amqp_t *c, amqp_connection_state_t conn, pt_error_t *err) {
  int rc;
  c->conn = conn;
  c->poll = malloc(sizeof *c->poll);
  if (c->poll == NULL) {
    rc = pt_error_set(err, PT_DOMAIN_AMQP, PT_ENOMEM, "out of memory");
    goto fail;
  }
  rc = uv_poll_init(c->loop, c->poll, amqp_get_sockfd(conn));
  if (rc < 0) {
    free(c->poll); /* never initialised, so not closed */
    c->poll = NULL;
  } else {
    c->poll->data = c;
    rc = uv_poll_start(c->poll, UV_READABLE, on_io);
  }
  if (rc < 0) {
    rc = pt_error_set(err, PT_DOMAIN_AMQP, PT_ECONNECT,
                      "cannot poll the broker socket: %s", uv_strerror(rc));
    goto fail;
  }
  c->confirm_timer = malloc(sizeof *c->confirm_timer);
  if (c->confirm_timer == NULL) {
    rc = pt_error_set(err, PT_DOMAIN_AMQP, PT_ENOMEM, "out of memory");
    goto fail;
  }
  uv_timer_init(c->loop, c->confirm_timer);
  c->confirm_timer->data = c;
  uv_timer_start(c->confirm_timer, on_confirm_check, 1000, 1000);
  c->state = ST_READY;
  c->first_seq = 1; /* confirm.select numbers publishes from 1 */
  c->head = 0;
  c->len = 0;
  return 0;

fail:
  detach(c, BYE_CLOSE);
  return rc;
}

/* Back on the loop: attach the connection, or report the failure. */
static void after_connect(uv_work_t *w, int status) {
  pt_amqp_t *c = w->data;
  amqp_connection_state_t conn = c->work_conn;
  pt_amqp_ready_cb cb = c->ready_cb;
  void *arg = c->ready_arg;
  pt_error_t err;
  int rc;

  c->work_conn = NULL;
  c->ready_cb = NULL;
  c->ready_arg = NULL;
  c->state = ST_IDLE;
  c->busy++;
  if (c->destroyed || status == UV_ECANCELED) {
    /* pt_amqp_destroy already called cb with PT_ECANCELED. */
    if (conn != NULL) {
      say_bye(conn, BYE_CLOSE);
      amqp_destroy_connection(conn);
    }
  } else if (c->work_status < 0) {
    cb(c, c->work_status, &c->work_err, arg);
  } else if ((rc = attach(c, conn, &err)) < 0) {
    cb(c, rc, &err, arg);
  } else {
    cb(c, 0, NULL, arg);
    /* Frames that came in with the last setup reply sit in librabbitmq's
     * buffer, where the poll cannot see them. */
    if (c->state == ST_READY)
      drain(c);
  }
  c->busy--;
  maybe_free(c);
}

int pt_amqp_start(pt_amqp_t *c, pt_amqp_ready_cb cb, void *arg) {
  if (c == NULL || cb == NULL || c->destroyed)
    return PT_EINVAL;
  if (c->state != ST_IDLE)
    return PT_EBUSY;
  c->ready_cb = cb;
  c->ready_arg = arg;
  c->work_conn = NULL;
  c->work_status = 0;
  memset(&c->work_err, 0, sizeof c->work_err);
  c->work.data = c;
  if (uv_queue_work(c->loop, &c->work, connect_work, after_connect) < 0) {
    c->ready_cb = NULL;
    c->ready_arg = NULL;
    return PT_EINVAL;
  }
  c->state = ST_CONNECTING;
  return 0;
}

/* Publishing and consuming (loop thread) */

static int name_ok(const char *s) { return s != NULL && strlen(s) <= 255; }

int pt_amqp_publish(pt_amqp_t *c, const char *exchange, const char *routing_key,
                    const void *body, size_t len, const pt_amqp_msg_t *msg,
                    pt_amqp_confirm_cb cb, void *arg) {
  amqp_basic_properties_t props;
  amqp_bytes_t bytes;
  pending_t *p;
  int rc;

  if (c == NULL || !name_ok(exchange) || !name_ok(routing_key) ||
      (body == NULL && len > 0))
    return PT_EINVAL;
  if (msg != NULL && msg->mandatory &&
      (msg->message_id == NULL ||
       strlen(msg->message_id) >= sizeof c->ring[0].mid))
    return PT_EINVAL; /* a return is matched by its message_id */
  if (!pt_amqp_is_ready(c))
    return PT_ECLOSED;
  if (c->blocked) /* the write could wait in librabbitmq's poll() */
    return PT_EBUSY;
  if (c->unrouted) /* reconnecting once the publishes in flight are done */
    return PT_EUNROUTED;
  if (pending_reserve(c) < 0)
    return PT_ENOMEM;

  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.content_type =
      amqp_cstring_bytes(msg != NULL && msg->content_type != NULL
                             ? msg->content_type
                             : "application/json");
  props.delivery_mode = msg != NULL && msg->persistent
                            ? AMQP_DELIVERY_PERSISTENT
                            : AMQP_DELIVERY_NONPERSISTENT;
  if (msg != NULL && msg->message_id != NULL) {
    props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
    props.message_id = amqp_cstring_bytes(msg->message_id);
  }
  if (msg != NULL && msg->expiration != NULL) {
    props._flags |= AMQP_BASIC_EXPIRATION_FLAG;
    props.expiration = amqp_cstring_bytes(msg->expiration);
  }
  if (msg != NULL && msg->headers != NULL) {
    props._flags |= AMQP_BASIC_HEADERS_FLAG;
    props.headers = *msg->headers;
  }
  bytes.len = len;
  bytes.bytes = (void *)body;
  int mandatory = msg != NULL && msg->mandatory;
  rc = amqp_basic_publish(c->conn, PT_AMQP_PUB_CHANNEL,
                          amqp_cstring_bytes(exchange),
                          amqp_cstring_bytes(routing_key), mandatory, 0,
                          &props, bytes);
  if (rc != AMQP_STATUS_OK)
    return mark_broken(c, rc, "publishing");
  /* The broker numbers confirms in the order it received the publishes. */
  p = &c->ring[(c->head + c->len) & (c->cap - 1)];
  p->cb = cb;
  p->arg = arg;
  p->done = 0;
  p->at_ms = uv_now(c->loop);
  p->mandatory = mandatory;
  p->returned = 0;
  if (mandatory) {
    snprintf(p->mid, sizeof p->mid, "%s", msg->message_id);
    p->route = route_hash(exchange, strlen(exchange), routing_key,
                          strlen(routing_key));
  }
  c->len++;
  c->unconfirmed++;
  after_write(c);
  return 0;
}

int pt_amqp_consume(pt_amqp_t *c, const char *queue, uint16_t prefetch,
                    pt_amqp_deliver_cb cb, void *arg) {
  amqp_basic_qos_t qos;
  amqp_basic_consume_t m;
  int rc;

  if (c == NULL || !name_ok(queue) || cb == NULL)
    return PT_EINVAL;
  if (!pt_amqp_is_ready(c))
    return PT_ECLOSED;
  if (c->consumer != CONSUMER_NONE)
    return PT_EBUSY;
  /* amqp_basic_qos and amqp_basic_consume would wait for their -ok
   * replies; the methods are sent bare and on_method takes the replies. */
  qos.prefetch_size = 0;
  qos.prefetch_count = prefetch;
  qos.global = 0;
  rc = amqp_send_method(c->conn, PT_AMQP_CONSUME_CHANNEL,
                        AMQP_BASIC_QOS_METHOD, &qos);
  if (rc != AMQP_STATUS_OK)
    return mark_broken(c, rc, "sending basic.qos");
  memset(&m, 0, sizeof m);
  m.queue = amqp_cstring_bytes(queue);
  /* Our own tag, so that a cancel needs no reply to have arrived first. */
  m.consumer_tag = amqp_cstring_bytes(CONSUMER_TAG);
  m.no_ack = 0;
  m.arguments = amqp_empty_table;
  rc = amqp_send_method(c->conn, PT_AMQP_CONSUME_CHANNEL,
                        AMQP_BASIC_CONSUME_METHOD, &m);
  if (rc != AMQP_STATUS_OK)
    return mark_broken(c, rc, "sending basic.consume");
  c->consumer = CONSUMER_ON;
  c->deliver_cb = cb;
  c->deliver_arg = arg;
  after_write(c);
  return 0;
}

int pt_amqp_cancel_consume(pt_amqp_t *c) {
  amqp_basic_cancel_t m;
  int rc;
  if (c == NULL)
    return PT_EINVAL;
  if (!pt_amqp_is_ready(c))
    return PT_ECLOSED;
  if (c->consumer != CONSUMER_ON)
    return PT_EINVAL;
  m.consumer_tag = amqp_cstring_bytes(CONSUMER_TAG);
  m.nowait = 0;
  rc = amqp_send_method(c->conn, PT_AMQP_CONSUME_CHANNEL,
                        AMQP_BASIC_CANCEL_METHOD, &m);
  if (rc != AMQP_STATUS_OK)
    return mark_broken(c, rc, "sending basic.cancel");
  c->consumer = CONSUMER_CANCELLING;
  after_write(c);
  return 0;
}

int pt_amqp_ack(pt_amqp_t *c, uint64_t delivery_tag) {
  int rc;
  if (c == NULL)
    return PT_EINVAL;
  if (!pt_amqp_is_ready(c))
    return PT_ECLOSED;
  rc = amqp_basic_ack(c->conn, PT_AMQP_CONSUME_CHANNEL, delivery_tag, 0);
  if (rc != AMQP_STATUS_OK)
    return mark_broken(c, rc, "sending basic.ack");
  after_write(c);
  return 0;
}

int pt_amqp_nack(pt_amqp_t *c, uint64_t delivery_tag, int requeue) {
  int rc;
  if (c == NULL)
    return PT_EINVAL;
  if (!pt_amqp_is_ready(c))
    return PT_ECLOSED;
  rc = amqp_basic_nack(c->conn, PT_AMQP_CONSUME_CHANNEL, delivery_tag, 0,
                       requeue != 0);
  if (rc != AMQP_STATUS_OK)
    return mark_broken(c, rc, "sending basic.nack");
  after_write(c);
  return 0;
}

void pt_amqp_destroy(pt_amqp_t *c) {
  if (c == NULL || c->destroyed)
    return;
  c->destroyed = 1;
  c->busy++;
  if (c->state == ST_CONNECTING) {
    pt_amqp_ready_cb cb = c->ready_cb;
    void *arg = c->ready_arg;
    pt_error_t err;
    /* A job not yet started is dropped; a running one finishes and
     * after_connect closes what it opened. */
    uv_cancel((uv_req_t *)&c->work);
    c->ready_cb = NULL;
    c->ready_arg = NULL;
    pt_error_set(&err, PT_DOMAIN_AMQP, PT_ECANCELED,
                 "destroyed while connecting");
    if (cb != NULL)
      cb(c, PT_ECANCELED, &err, arg);
  } else if (c->state == ST_READY) {
    c->state = ST_IDLE;
    detach(c, BYE_CLOSE);
    fail_pending(c, PT_ECANCELED);
  }
  c->busy--;
  maybe_free(c);
}

amqp_connection_state_t pt_amqp_connect_sync(const char *uri, int timeout_ms,
                                             pt_error_t *err) {
  struct amqp_connection_info ci;
  char *copy = strdup(uri ? uri : "");
  if (copy == NULL || amqp_parse_url(copy, &ci) != AMQP_STATUS_OK) {
    free(copy);
    pt_error_set(err, PT_DOMAIN_AMQP, PT_EINVAL, "amqp URI cannot be read");
    return NULL;
  }
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s = c ? amqp_tcp_socket_new(c) : NULL;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  /* Every later request and its reply too (channel.open, queue.declare,
   * basic.get): a broker that stops answering fails the command instead
   * of hanging it. */
  int ok = s != NULL && amqp_set_handshake_timeout(c, &tv) == AMQP_STATUS_OK &&
           amqp_set_rpc_timeout(c, &tv) == AMQP_STATUS_OK &&
           amqp_socket_open_noblock(s, ci.host, ci.port, &tv) == AMQP_STATUS_OK;
  if (ok)
    ok = amqp_login(c, ci.vhost[0] ? ci.vhost : "/", 0, 131072, 0,
                    AMQP_SASL_METHOD_PLAIN, ci.user, ci.password)
             .reply_type == AMQP_RESPONSE_NORMAL;
  if (ok)
    ok = amqp_channel_open(c, 1) != NULL;
  if (!ok) {
    pt_error_set(err, PT_DOMAIN_AMQP, PT_ECONNECT,
                 "cannot connect to the broker at %s:%d", ci.host, ci.port);
    if (c != NULL)
      amqp_destroy_connection(c);
    free(copy);
    return NULL;
  }
  free(copy);
  return c;
}

void pt_amqp_close_sync(amqp_connection_state_t conn) {
  if (conn == NULL)
    return;
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}
