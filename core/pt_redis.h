/* Redis on a libuv loop: hiredis's async API attached with its libuv
 * adapter (redisLibuvAttach). Also a blocking connect for threads that own
 * no loop (the sync thread).
 *
 * URIs: redis://[:password@]host[:port][/db]; host must be a numeric
 * address or "localhost" (hiredis 0.14 resolves names with a blocking
 * getaddrinfo, so pt_redis_connect resolves once, before the loop runs
 * commands). */
#ifndef PT_REDIS_H
#define PT_REDIS_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "core/pt_error.h"

typedef struct {
  char host[256];
  int port;
  int db;
  char password[256];
} pt_redis_uri_t;

int pt_redis_uri_parse(const char *uri, pt_redis_uri_t *out, pt_error_t *err);

typedef struct pt_redis pt_redis_t;

/* Called once if the connection is lost (negative status: a reset, a
 * connect that failed or timed out, AUTH or SELECT refused). Not called
 * after pt_redis_destroy. */
typedef void (*pt_redis_lost_cb)(pt_redis_t *r, int status, const char *why,
                                 void *arg);

/* Starts an async connection on loop. AUTH and SELECT, when the URI asks for
 * them, are queued first, so commands may be sent at once. Returns NULL and
 * fills err on a bad URI or when the connection cannot even be started. */
pt_redis_t *pt_redis_connect(uv_loop_t *loop, const char *uri,
                             pt_redis_lost_cb on_lost, void *arg,
                             pt_error_t *err);

/* The hiredis context, for redisAsyncCommand and friends; NULL once lost. */
redisAsyncContext *pt_redis_ctx(pt_redis_t *r);

/* 1 while the connection is usable. */
int pt_redis_is_up(const pt_redis_t *r);

/* Disconnects and frees r after hiredis has closed its handle;
 * destroy(NULL) does nothing. Connected, the disconnect is graceful:
 * commands already sent are still answered, with their real replies, after
 * this returns (so callbacks must not outlive what they point to); before
 * the connection is up, pending callbacks get a NULL reply. */
void pt_redis_destroy(pt_redis_t *r);

/* Blocking connection for a thread without a loop: AUTH and SELECT done.
 * Returns NULL and fills err on failure. Free with redisFree. */
redisContext *pt_redis_connect_sync(const char *uri, int timeout_ms,
                                    pt_error_t *err);

#endif
