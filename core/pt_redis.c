#include "core/pt_redis.h"

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>

/* hiredis 0.14's libuv adapter drops a poll error on the floor, and libuv
 * reports a refused connect exactly that way, so a failed connect would
 * never be reported. A watchdog timer checks the socket's SO_ERROR until
 * the connection is up, and gives up after CONNECT_TIMEOUT_MS.
 *
 * The struct is freed when its owner has destroyed it, its timer is
 * closed and hiredis is done with the context (refs counts the three). */
#define CONNECT_TIMEOUT_MS 5000
#define CONNECT_CHECK_MS 20

struct pt_redis {
  redisAsyncContext *ac; /* NULL once hiredis has freed it */
  int up;
  int destroyed;
  int refs;
  uint64_t waited_ms;
  uv_timer_t watchdog;
  pt_redis_lost_cb on_lost;
  void *arg;
  char refused[160]; /* AUTH or SELECT refused: why, reported when lost */
};

static void unref(pt_redis_t *r) {
  if (--r->refs == 0)
    free(r);
}

static void on_watchdog_closed(uv_handle_t *h) { unref(h->data); }

static void stop_watchdog(pt_redis_t *r) {
  if (!uv_is_closing((uv_handle_t *)&r->watchdog))
    uv_close((uv_handle_t *)&r->watchdog, on_watchdog_closed);
}

int pt_redis_uri_parse(const char *uri, pt_redis_uri_t *out, pt_error_t *err) {
  const char *p;
  memset(out, 0, sizeof *out);
  out->port = 6379;
  if (uri == NULL || strncmp(uri, "redis://", 8) != 0)
    return pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                        "redis URI must start with redis://");
  p = uri + 8;
  const char *at = strchr(p, '@');
  if (at != NULL) {
    /* [user]:password@ — the user is ignored (Redis 6 "default"). */
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon == NULL)
      return pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                          "redis URI: expected [user]:password@ before the "
                          "host");
    size_t n = (size_t)(at - colon - 1);
    if (n >= sizeof out->password)
      return pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                          "redis URI: password too long");
    memcpy(out->password, colon + 1, n);
    out->password[n] = '\0';
    p = at + 1;
  }
  size_t hl = strcspn(p, ":/");
  if (hl == 0 || hl >= sizeof out->host)
    return pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                        "redis URI: missing or overlong host");
  memcpy(out->host, p, hl);
  out->host[hl] = '\0';
  p += hl;
  if (*p == ':') {
    char *end;
    long port = strtol(p + 1, &end, 10);
    if (end == p + 1 || port < 1 || port > 65535 || (*end && *end != '/'))
      return pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                          "redis URI: bad port");
    out->port = (int)port;
    p = end;
  }
  if (*p == '/' && p[1] != '\0') {
    char *end;
    long db = strtol(p + 1, &end, 10);
    if (end == p + 1 || *end != '\0' || db < 0 || db > 15)
      return pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                          "redis URI: the database must be 0..15");
    out->db = (int)db;
  } else if (*p != '\0' && strcmp(p, "/") != 0) {
    return pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                        "redis URI: unexpected \"%s\"", p);
  }
  if (strcmp(out->host, "localhost") == 0)
    snprintf(out->host, sizeof out->host, "127.0.0.1");
  return 0;
}

/* An IPv4 or IPv6 address, which hiredis connects to without a (blocking)
 * name lookup; "cafe" or "db" are names. */
static int numeric_host(const char *h) {
  unsigned char a[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, h, a) == 1 || inet_pton(AF_INET6, h, a) == 1;
}

/* ---- hiredis on libuv ----------------------------------------------------
 * hiredis 0.14's own libuv adapter (adapters/libuv.h) drops a poll error:
 * libuv reports a socket error (a reset from Redis) as status < 0 and
 * stops the poll handle, and the adapter returns without telling hiredis,
 * so the connection is dead but never reported lost (pending callbacks
 * never run). This copy hands the error to hiredis as the events it was
 * waiting for, as hiredis 1.x's adapter does: its read or write fails,
 * and hiredis disconnects with the error. */
typedef struct {
  redisAsyncContext *context;
  uv_poll_t handle;
  int events;
} uv_events_t;

static void uv_on_poll(uv_poll_t *handle, int status, int events) {
  uv_events_t *p = handle->data;
  int ev = status < 0 ? p->events : events;
  if (p->context != NULL && (ev & UV_READABLE))
    redisAsyncHandleRead(p->context);
  if (p->context != NULL && (ev & UV_WRITABLE))
    redisAsyncHandleWrite(p->context);
}

static void uv_set_events(uv_events_t *p, int events) {
  p->events = events;
  if (events != 0)
    uv_poll_start(&p->handle, events, uv_on_poll);
  else
    uv_poll_stop(&p->handle);
}

static void uv_add_read(void *d) {
  uv_events_t *p = d;
  uv_set_events(p, p->events | UV_READABLE);
}

static void uv_del_read(void *d) {
  uv_events_t *p = d;
  uv_set_events(p, p->events & ~UV_READABLE);
}

static void uv_add_write(void *d) {
  uv_events_t *p = d;
  uv_set_events(p, p->events | UV_WRITABLE);
}

static void uv_del_write(void *d) {
  uv_events_t *p = d;
  uv_set_events(p, p->events & ~UV_WRITABLE);
}

static void uv_on_close(uv_handle_t *h) { free(h->data); }

static void uv_cleanup(void *d) {
  uv_events_t *p = d;
  p->context = NULL; /* hiredis frees it after this */
  uv_close((uv_handle_t *)&p->handle, uv_on_close);
}

static int uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  if (ac->ev.data != NULL)
    return REDIS_ERR;
  uv_events_t *p = calloc(1, sizeof *p);
  if (p == NULL)
    return REDIS_ERR;
  if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
    free(p);
    return REDIS_ERR;
  }
  p->handle.data = p;
  p->context = ac;
  ac->ev.addRead = uv_add_read;
  ac->ev.delRead = uv_del_read;
  ac->ev.addWrite = uv_add_write;
  ac->ev.delWrite = uv_del_write;
  ac->ev.cleanup = uv_cleanup;
  ac->ev.data = p;
  return REDIS_OK;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  pt_redis_t *r = ac->data;
  if (r == NULL)
    return;
  stop_watchdog(r);
  if (status != REDIS_OK) {
    /* hiredis frees the context after this callback. */
    r->ac = NULL;
    r->up = 0;
    if (r->on_lost != NULL)
      r->on_lost(r, PT_ECONNECT, ac->errstr, r->arg);
    unref(r);
    return;
  }
  r->up = 1;
}

static void on_watchdog(uv_timer_t *t) {
  pt_redis_t *r = t->data;
  int soerr = 0;
  socklen_t len = sizeof soerr;
  char why[128];
  if (r->up || r->ac == NULL) {
    stop_watchdog(r);
    return;
  }
  r->waited_ms += CONNECT_CHECK_MS;
  getsockopt(r->ac->c.fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
  if (soerr == 0 && r->waited_ms < CONNECT_TIMEOUT_MS)
    return;
  snprintf(why, sizeof why, "cannot connect: %s",
           soerr ? strerror(soerr) : "timed out");
  stop_watchdog(r);
  redisAsyncContext *ac = r->ac;
  r->ac = NULL;
  ac->data = NULL;
  /* Pending commands get their callbacks with a NULL reply. */
  redisAsyncFree(ac);
  if (r->on_lost != NULL)
    r->on_lost(r, PT_ECONNECT, why, r->arg);
  unref(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  pt_redis_t *r = ac->data;
  if (r == NULL)
    return;
  r->ac = NULL;
  r->up = 0;
  if (!r->destroyed && r->on_lost != NULL) {
    if (r->refused[0])
      r->on_lost(r, PT_ECONNECT, r->refused, r->arg);
    else
      r->on_lost(r, status == REDIS_OK ? 0 : PT_ECLOSED, ac->errstr, r->arg);
  }
  unref(r);
}

/* AUTH or SELECT answered with an error (a wrong password or database):
 * every later command would fail with it, so the connection is dropped
 * and reported lost, as if it never came up. */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *arg) {
  redisReply *rep = reply;
  pt_redis_t *r = ac->data;
  if (rep == NULL || rep->type != REDIS_REPLY_ERROR || r == NULL ||
      r->refused[0])
    return;
  snprintf(r->refused, sizeof r->refused, "%s refused: %s", (const char *)arg,
           rep->str);
  r->up = 0;
  redisAsyncDisconnect(ac);
}

pt_redis_t *pt_redis_connect(uv_loop_t *loop, const char *uri,
                             pt_redis_lost_cb on_lost, void *arg,
                             pt_error_t *err) {
  pt_redis_uri_t u;
  if (pt_redis_uri_parse(uri, &u, err) != 0)
    return NULL;
  if (!numeric_host(u.host)) {
    pt_error_set(err, PT_DOMAIN_REDIS, PT_EINVAL,
                 "redis URI: host \"%s\" must be a numeric address or "
                 "localhost (no blocking name lookup on the loop)",
                 u.host);
    return NULL;
  }
  pt_redis_t *r = calloc(1, sizeof *r);
  if (r == NULL)
    return NULL;
  r->on_lost = on_lost;
  r->arg = arg;
  redisAsyncContext *ac = redisAsyncConnect(u.host, u.port);
  if (ac == NULL || ac->err) {
    pt_error_set(err, PT_DOMAIN_REDIS, PT_ECONNECT, "redis %s:%d: %s", u.host,
                 u.port, ac ? ac->errstr : "out of memory");
    if (ac != NULL)
      redisAsyncFree(ac);
    free(r);
    return NULL;
  }
  if (uv_attach(ac, loop) != REDIS_OK) {
    pt_error_set(err, PT_DOMAIN_REDIS, PT_ENOMEM, "redis: cannot watch the "
                 "socket");
    redisAsyncFree(ac);
    free(r);
    return NULL;
  }
  ac->data = r;
  r->ac = ac;
  r->refs = 3; /* the owner, the watchdog and the context */
  uv_timer_init(loop, &r->watchdog);
  r->watchdog.data = r;
  uv_timer_start(&r->watchdog, on_watchdog, CONNECT_CHECK_MS,
                 CONNECT_CHECK_MS);
  /* A Redis host that vanishes without closing (a partition) is noticed by
   * TCP keepalive (probes after 15 s idle). */
  redisEnableKeepAlive(&ac->c);
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  /* Queued before anything else, so every later command runs
   * authenticated and in the right database. */
  if (u.password[0])
    redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s", u.password);
  if (u.db != 0)
    redisAsyncCommand(ac, on_setup_reply, "SELECT", "SELECT %d", u.db);
  return r;
}

redisAsyncContext *pt_redis_ctx(pt_redis_t *r) {
  return r != NULL && !r->destroyed ? r->ac : NULL;
}

int pt_redis_is_up(const pt_redis_t *r) { return r != NULL && r->up; }

void pt_redis_destroy(pt_redis_t *r) {
  if (r == NULL || r->destroyed)
    return;
  r->destroyed = 1;
  stop_watchdog(r);
  if (r->ac != NULL && r->up) {
    /* Graceful: pending commands are written and answered, then hiredis
     * calls on_disconnect, which drops the context's reference. */
    redisAsyncDisconnect(r->ac);
  } else if (r->ac != NULL) {
    /* Not connected yet: nothing to flush. Pending callbacks get NULL. */
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    ac->data = NULL;
    redisAsyncFree(ac);
    r->refs--; /* the context's; the owner's, below, is the one that frees */
  }
  unref(r); /* the owner's */
}

redisContext *pt_redis_connect_sync(const char *uri, int timeout_ms,
                                    pt_error_t *err) {
  pt_redis_uri_t u;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  if (pt_redis_uri_parse(uri, &u, err) != 0)
    return NULL;
  redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
  if (c == NULL || c->err) {
    pt_error_set(err, PT_DOMAIN_REDIS, PT_ECONNECT, "redis %s:%d: %s", u.host,
                 u.port, c ? c->errstr : "out of memory");
    if (c != NULL)
      redisFree(c);
    return NULL;
  }
  redisSetTimeout(c, tv);
  const char *what[2] = {NULL, NULL};
  redisReply *rp;
  if (u.password[0]) {
    rp = redisCommand(c, "AUTH %s", u.password);
    what[0] = rp == NULL || rp->type == REDIS_REPLY_ERROR ? "AUTH" : NULL;
    freeReplyObject(rp);
  }
  if (what[0] == NULL && u.db != 0) {
    rp = redisCommand(c, "SELECT %d", u.db);
    what[0] = rp == NULL || rp->type == REDIS_REPLY_ERROR ? "SELECT" : NULL;
    freeReplyObject(rp);
  }
  if (what[0] != NULL) {
    pt_error_set(err, PT_DOMAIN_REDIS, PT_ECONNECT, "redis %s:%d: %s failed",
                 u.host, u.port, what[0]);
    redisFree(c);
    return NULL;
  }
  /* Blocking calls after this wait at most a little longer than a
   * BLOCK timeout the caller uses. */
  struct timeval rtv = {(timeout_ms / 1000) + 5, 0};
  redisSetTimeout(c, rtv);
  return c;
}
