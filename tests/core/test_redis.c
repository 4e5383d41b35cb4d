/* Redis on a libuv loop through hiredis (issue 2), with pt_redis.c's copy
 * of its libuv adapter. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/pt_config.h"
#include "core/pt_lease.h"
#include "core/pt_redis.h"
#include "tests/support/pt_stack.h"
#include "tests/support/pt_test.h"

#define N 10000

typedef struct {
  int replies, in_order, errors;
  long long last;
  pt_redis_t *r;
  char key[96];
} ctx_t;

static void on_incr(redisAsyncContext *ac, void *reply, void *arg) {
  ctx_t *c = arg;
  redisReply *r = reply;
  (void)ac;
  if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
    c->errors++;
    return;
  }
  c->in_order += r->integer == c->last + 1;
  c->last = r->integer;
  c->replies++;
}

static void on_final(redisAsyncContext *ac, void *reply, void *arg) {
  ctx_t *c = arg;
  redisReply *r = reply;
  cr_assert(r != NULL && r->type == REDIS_REPLY_STRING, "GET failed");
  cr_assert_str_eq(r->str, "10000");
  redisAsyncCommand(ac, NULL, NULL, "DEL %s", c->key);
  /* Destroy from a callback: hiredis finishes the DEL, then disconnects. */
  pt_redis_destroy(c->r);
}

Test(redis, ten_thousand_pipelined_commands, .timeout = 60) {
  uv_loop_t loop;
  pt_error_t err;
  ctx_t c = {0};
  uv_loop_init(&loop);
  pt_test_unique("pt:test:incr", c.key, sizeof c.key);
  c.r = pt_redis_connect(&loop, pt_test_uri("PAYTASK_REDIS_URI", "Redis"),
                         NULL, NULL, &err);
  cr_assert_not_null(c.r, "Redis: %s", err.message);
  redisAsyncContext *ac = pt_redis_ctx(c.r);
  /* All 10,000 are queued before any reply is read: one pipeline. */
  for (int i = 0; i < N; i++)
    cr_assert_eq(redisAsyncCommand(ac, on_incr, &c, "INCR %s", c.key),
                 REDIS_OK);
  redisAsyncCommand(ac, on_final, &c, "GET %s", c.key);
  pt_test_run_loop(&loop, 30000, "Redis");
  cr_assert_eq(c.errors, 0);
  cr_assert_eq(c.replies, N);
  cr_assert_eq(c.in_order, N, "replies out of order");
  pt_test_close_loop(&loop);
}

typedef struct {
  int lost, status;
} lost_t;

static void on_lost(pt_redis_t *r, int status, const char *why, void *arg) {
  lost_t *l = arg;
  (void)r;
  (void)why;
  l->lost++;
  l->status = status;
}

static void on_null(redisAsyncContext *ac, void *reply, void *arg) {
  (void)ac;
  *(int *)arg = reply == NULL ? 1 : 2;
}

Test(redis, closed_port_reports_failure_not_a_hang, .timeout = 30) {
  uv_loop_t loop;
  pt_error_t err;
  lost_t l = {0};
  int got = 0;
  uv_loop_init(&loop);
  pt_redis_t *r = pt_redis_connect(&loop, "redis://127.0.0.1:1/0", on_lost,
                                   &l, &err);
  cr_assert_not_null(r);
  redisAsyncCommand(pt_redis_ctx(r), on_null, &got, "PING");
  pt_test_run_loop(&loop, 10000, "Redis on a closed port");
  cr_assert_eq(l.lost, 1);
  cr_assert_eq(l.status, PT_ECONNECT);
  cr_assert_eq(got, 1, "the pending command must get a NULL reply");
  cr_assert_null(pt_redis_ctx(r));
  pt_redis_destroy(r);
  pt_test_close_loop(&loop);
}

/* Runs the loop until *flag is set or ms pass. */
static void run_until(uv_loop_t *loop, const int *flag, int ms) {
  for (int t = 0; !*flag && t < ms; t += 10) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(10000);
  }
}

/* A Redis that resets the connection (a kill -9 with unread data, a
 * firewall) must be reported lost, and its pending commands answered with
 * NULL: hiredis 0.14's libuv adapter dropped the socket error, so nothing
 * ever ran again on that connection. */
Test(redis, a_reset_connection_is_reported_lost, .timeout = 30) {
  uv_loop_t loop;
  pt_error_t err;
  lost_t l = {0};
  int got = 0, up = 0;
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert(ls >= 0 && bind(ls, (struct sockaddr *)&a, sizeof a) == 0 &&
            listen(ls, 1) == 0 &&
            getsockname(ls, (struct sockaddr *)&a, &alen) == 0);
  char uri[64];
  snprintf(uri, sizeof uri, "redis://127.0.0.1:%d/0", ntohs(a.sin_port));
  uv_loop_init(&loop);
  pt_redis_t *r = pt_redis_connect(&loop, uri, on_lost, &l, &err);
  cr_assert_not_null(r, "%s", err.message);
  for (int t = 0; !up && t < 3000; t += 10) {
    uv_run(&loop, UV_RUN_NOWAIT);
    up = pt_redis_is_up(r);
    usleep(10000);
  }
  cr_assert(up, "never connected to the fake Redis");
  int s = accept(ls, NULL, NULL);
  cr_assert(s >= 0);
  redisAsyncCommand(pt_redis_ctx(r), on_null, &got, "PING");
  uv_run(&loop, UV_RUN_NOWAIT); /* the PING is sent, never answered */
  struct linger lg = {1, 0};
  setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(s); /* a reset, not a clean close */
  run_until(&loop, &l.lost, 5000);
  cr_assert_eq(l.lost, 1, "a reset connection was never reported lost");
  cr_assert_eq(l.status, PT_ECLOSED);
  cr_assert_eq(got, 1, "the pending command must get a NULL reply");
  cr_assert_not(pt_redis_is_up(r));
  pt_redis_destroy(r);
  close(ls);
  pt_test_run_loop(&loop, 5000, "Redis");
  pt_test_close_loop(&loop);
}

/* A password Redis refuses is a connection that failed, reported as lost,
 * not a connection "up" whose every command fails. */
Test(redis, a_refused_password_is_reported_lost, .timeout = 30) {
  uv_loop_t loop;
  pt_error_t err;
  pt_redis_uri_t u;
  lost_t l = {0};
  char uri[320];
  cr_assert_eq(pt_redis_uri_parse(pt_test_uri("PAYTASK_REDIS_URI", "Redis"),
                                  &u, &err), 0);
  snprintf(uri, sizeof uri, "redis://:not-the-password@%s:%d/0", u.host,
           u.port);
  uv_loop_init(&loop);
  pt_redis_t *r = pt_redis_connect(&loop, uri, on_lost, &l, &err);
  cr_assert_not_null(r, "%s", err.message);
  run_until(&loop, &l.lost, 5000);
  cr_assert_eq(l.lost, 1, "a refused AUTH was not reported");
  cr_assert_eq(l.status, PT_ECONNECT);
  cr_assert_not(pt_redis_is_up(r));
  pt_redis_destroy(r);
  pt_test_run_loop(&loop, 5000, "Redis");
  pt_test_close_loop(&loop);
}

Test(redis, uri_parsing) {
  pt_redis_uri_t u;
  pt_error_t err;
  cr_assert_eq(pt_redis_uri_parse("redis://127.0.0.1:6382/3", &u, &err), 0);
  cr_assert_str_eq(u.host, "127.0.0.1");
  cr_assert_eq(u.port, 6382);
  cr_assert_eq(u.db, 3);
  cr_assert_eq(pt_redis_uri_parse("redis://:s3cret@localhost", &u, &err), 0);
  cr_assert_str_eq(u.password, "s3cret");
  cr_assert_str_eq(u.host, "127.0.0.1");
  cr_assert_eq(u.port, 6379);
  cr_assert_eq(pt_redis_uri_parse("redis://default:pw@10.0.0.1:7000/", &u,
                                  &err),
               0);
  cr_assert_str_eq(u.password, "pw");
  cr_assert_neq(pt_redis_uri_parse("http://x", &u, &err), 0);
  cr_assert_neq(pt_redis_uri_parse("redis://h:0/", &u, &err), 0);
  cr_assert_neq(pt_redis_uri_parse("redis://h:99999", &u, &err), 0);
  cr_assert_neq(pt_redis_uri_parse("redis://h/16", &u, &err), 0);
  cr_assert_neq(pt_redis_uri_parse("redis://h/x", &u, &err), 0);
  cr_assert_neq(pt_redis_uri_parse("redis://user@h", &u, &err), 0);
  cr_assert(strstr(err.message, "password") != NULL, "%s", err.message);
  uv_loop_t loop;
  uv_loop_init(&loop);
  cr_assert_null(pt_redis_connect(&loop, "redis://redis.example:6379", NULL,
                                  NULL, &err),
                 "a name would need a blocking lookup on the loop");
  pt_test_close_loop(&loop);
}

static void on_set(redisAsyncContext *ac, void *reply, void *arg) {
  pt_redis_t *r = arg;
  (void)ac;
  cr_assert_not_null(reply);
  pt_redis_destroy(r);
}

Test(redis, sync_connect_honours_the_database, .timeout = 30) {
  char uri[320], key[96];
  const char *base = pt_test_uri("PAYTASK_REDIS_URI", "Redis");
  pt_error_t err;
  uv_loop_t loop;
  /* The same server, database 5. */
  pt_redis_uri_t u;
  cr_assert_eq(pt_redis_uri_parse(base, &u, &err), 0);
  snprintf(uri, sizeof uri, "redis://%s:%d/5", u.host, u.port);
  pt_test_unique("pt:test:db", key, sizeof key);
  uv_loop_init(&loop);
  pt_redis_t *r = pt_redis_connect(&loop, uri, NULL, NULL, &err);
  cr_assert_not_null(r);
  redisAsyncCommand(pt_redis_ctx(r), on_set, r, "SET %s here", key);
  pt_test_run_loop(&loop, 10000, "Redis");
  pt_test_close_loop(&loop);

  redisContext *c = pt_redis_connect_sync(uri, 2000, &err);
  cr_assert_not_null(c, "%s", err.message);
  redisReply *rep = redisCommand(c, "GET %s", key);
  cr_assert(rep != NULL && rep->type == REDIS_REPLY_STRING);
  cr_assert_str_eq(rep->str, "here");
  freeReplyObject(rep);
  rep = redisCommand(c, "DEL %s", key);
  freeReplyObject(rep);
  redisFree(c);
  /* Database 0 does not have it. */
  snprintf(uri, sizeof uri, "redis://%s:%d/0", u.host, u.port);
  c = pt_redis_connect_sync(uri, 2000, &err);
  rep = redisCommand(c, "EXISTS %s", key);
  cr_assert_eq(rep->integer, 0);
  freeReplyObject(rep);
  redisFree(c);
  cr_assert_null(pt_redis_connect_sync("redis://127.0.0.1:1/0", 500, &err));
  cr_assert(strstr(err.message, "127.0.0.1:1") != NULL, "%s", err.message);
}

/* ---- the node id lease (core/pt_lease.c) ---------------------------- */

static void on_lease_lost(void *arg) { (*(int *)arg)++; }

static void on_get(redisAsyncContext *ac, void *reply, void *arg) {
  char *out = arg;
  const redisReply *r = reply;
  (void)ac;
  snprintf(out, 96, "%s",
           r != NULL && r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
}

/* The lease key's value after what was sent before (replies in order). */
static void lease_value(uv_loop_t *loop, redisAsyncContext *ac,
                        const char *key, char out[96]) {
  out[0] = '\0';
  redisAsyncCommand(ac, on_get, out, "GET %s", key);
  for (int i = 0; i < 5000 && out[0] == '\0'; i++)
    uv_run(loop, UV_RUN_ONCE);
  cr_assert(out[0] != '\0', "Redis did not answer");
}

/* A configured node.id is leased as well: a second process given the
 * same one (a worker pool started with it) would issue the same task ids,
 * and one of two follow-ups with one id would be dropped. It is refused
 * at start, naming the node id and who holds it. */
Test(redis, a_configured_node_id_in_use_is_refused, .timeout = 30) {
  pt_error_t err;
  pt_config_t cfg;
  pt_idgen_t ids;
  pt_lease_t first, second;
  pt_config_defaults(&cfg);
  /* High ids: the processes of other tests lease from 0 upwards. */
  cfg.node_id = 1000 + getpid() % 24;
  snprintf(cfg.redis_uri, sizeof cfg.redis_uri, "%s",
           pt_test_uri("PAYTASK_REDIS_URI", "Redis"));
  redisContext *rc = pt_test_redis();
  freeReplyObject(redisCommand(rc, "DEL pt:node:%d", (int)cfg.node_id));
  cr_assert_eq(pt_lease_node(&cfg, &ids, &first, &err), 0, "%s", err.message);
  char want[32];
  snprintf(want, sizeof want, "pt:node:%d", (int)cfg.node_id);
  cr_assert_str_eq(first.key, want, "the configured node id was not leased");
  cr_assert_eq(pt_lease_node(&cfg, &ids, &second, &err), PT_EBUSY,
               "a node id in use was given to a second process");
  cr_assert_not_null(strstr(err.message, "node.id"), "%s", err.message);
  cr_assert_not_null(strstr(err.message, first.val), "%s", err.message);
  freeReplyObject(redisCommand(rc, "DEL %s", want));
  cr_assert_eq(pt_lease_node(&cfg, &ids, &second, &err), 0,
               "a free configured node id was refused: %s", err.message);
  /* A holder of this host that is gone (a crash, its lease not lapsed):
   * the restarted process takes the id over. One of another host is
   * refused until its lease lapses. */
  char host[64] = "host";
  gethostname(host, sizeof host - 1);
  pid_t gone = fork();
  if (gone == 0)
    _exit(0);
  waitpid(gone, NULL, 0);
  freeReplyObject(redisCommand(rc, "SET %s %s:%ld EX 60", want, host,
                               (long)gone));
  cr_assert_eq(pt_lease_node(&cfg, &ids, &second, &err), 0,
               "the id of a process gone was not taken over: %s", err.message);
  freeReplyObject(redisCommand(rc, "SET %s other-host:%ld EX 60", want,
                               (long)gone));
  cr_assert_eq(pt_lease_node(&cfg, &ids, &second, &err), PT_EBUSY,
               "another host's lease was taken over");
  freeReplyObject(redisCommand(rc, "DEL %s", want));
  redisFree(rc);
}

/* A process cut off from Redis for over a minute finds its node id leased
 * by another: it must neither take it back (both would issue the same
 * ids) nor delete the other's lease, and it is told. A lapsed lease nobody
 * took is simply taken again. */
Test(redis, a_node_lease_another_process_took_is_left_to_it, .timeout = 30) {
  uv_loop_t loop;
  pt_error_t err;
  pt_config_t cfg;
  pt_idgen_t ids;
  pt_lease_t lease;
  char v[96];
  int lost = 0;
  pt_config_defaults(&cfg);
  cfg.node_id = -1;
  snprintf(cfg.redis_uri, sizeof cfg.redis_uri, "%s",
           pt_test_uri("PAYTASK_REDIS_URI", "Redis"));
  cr_assert_eq(pt_lease_node(&cfg, &ids, &lease, &err), 0, "%s", err.message);
  lease.lost = on_lease_lost;
  lease.lost_arg = &lost;
  uv_loop_init(&loop);
  pt_redis_t *r = pt_redis_connect(&loop, cfg.redis_uri, NULL, NULL, &err);
  cr_assert_not_null(r, "Redis: %s", err.message);
  redisAsyncContext *ac = pt_redis_ctx(r);

  pt_lease_renew(&lease, ac);
  lease_value(&loop, ac, lease.key, v);
  cr_assert_str_eq(v, lease.val);
  cr_assert_eq(lost, 0);

  redisAsyncCommand(ac, NULL, NULL, "SET %s other-host:1 EX 60", lease.key);
  pt_lease_renew(&lease, ac);
  lease_value(&loop, ac, lease.key, v);
  cr_assert_str_eq(v, "other-host:1", "the renewal took another's lease");
  cr_assert_eq(lost, 1, "the process was not told its lease was lost");
  pt_lease_release(&lease, ac);
  lease_value(&loop, ac, lease.key, v);
  cr_assert_str_eq(v, "other-host:1", "the release deleted another's lease");

  redisAsyncCommand(ac, NULL, NULL, "DEL %s", lease.key);
  pt_lease_renew(&lease, ac);
  lease_value(&loop, ac, lease.key, v);
  cr_assert_str_eq(v, lease.val, "a lapsed lease was not taken again");
  cr_assert_eq(lost, 1);
  pt_lease_release(&lease, ac);
  lease_value(&loop, ac, lease.key, v);
  cr_assert_str_eq(v, "(nil)");
  pt_redis_destroy(r);
  pt_test_run_loop(&loop, 10000, "Redis");
  pt_test_close_loop(&loop);
}
