#include "core/pt_lease.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_log.h"
#include "core/pt_redis.h"

/* Sets the lease to ARGV[2] only if ARGV[1] still holds it. */
static const char takeover_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
    "redis.call('SET', KEYS[1], ARGV[2], 'EX', 60)\n"
    "return 1\n";

/* 1 if holder ("host:pid", a lease's value) is a process of this host
 * that no longer runs: one that crashed, whose lease has not lapsed yet.
 * A restart of a process with a configured node.id (a supervisor's
 * worker, an api under systemd) takes it over instead of failing for up
 * to 60 s (and a supervisor's crash-loop rule stopping the pool). */
static int holder_gone(const char *holder, const char *host) {
  const char *colon = strrchr(holder, ':');
  if (colon == NULL || (size_t)(colon - holder) != strlen(host) ||
      strncmp(holder, host, strlen(host)) != 0)
    return 0;
  char *end;
  long pid = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end != '\0' || pid <= 0)
    return 0;
  return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

int pt_lease_node(const pt_config_t *cfg, pt_idgen_t *ids, pt_lease_t *lease,
                  pt_error_t *err) {
  char host[64] = "host";
  lease->key[0] = '\0';
  lease->lost = NULL;
  lease->lost_arg = NULL;
  /* A configured node.id is leased too, that one only: two processes
   * given the same one (a worker pool started with it, or the api and a
   * worker sharing an environment) would issue the same task ids, and the
   * start script would drop one of two follow-ups with one id. */
  int first = 0, last = PT_ID_MAX_NODE;
  if (cfg->node_id >= 0)
    first = last = (int)cfg->node_id;
  redisContext *rc = pt_redis_connect_sync(cfg->redis_uri, 2000, err);
  if (rc == NULL)
    return PT_EREDIS;
  gethostname(host, sizeof host - 1);
  snprintf(lease->val, sizeof lease->val, "%s:%ld", host, (long)getpid());
  int node = -1;
  char holder[96] = "";
  for (int n = first; n <= last && node < 0; n++) {
    snprintf(lease->key, sizeof lease->key, "pt:node:%d", n);
    redisReply *r =
        redisCommand(rc, "SET %s %s NX EX 60", lease->key, lease->val);
    if (r == NULL)
      break;
    if (r->type == REDIS_REPLY_STATUS)
      node = n;
    freeReplyObject(r);
  }
  if (node < 0 && cfg->node_id >= 0) {
    redisReply *r = redisCommand(rc, "GET %s", lease->key);
    if (r != NULL && r->type == REDIS_REPLY_STRING)
      snprintf(holder, sizeof holder, "%s", r->str);
    freeReplyObject(r);
    if (holder_gone(holder, host) &&
        (r = redisCommand(rc, "EVAL %s 1 %s %s %s", takeover_lua, lease->key,
                          holder, lease->val)) != NULL) {
      if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        node = (int)cfg->node_id;
        PT_WARN("node_lease_taken_over", "node=%d from=%s note=\"its holder, "
                "a process of this host, is gone (a crash: its lease had not "
                "lapsed yet)\"", node, holder);
      }
      freeReplyObject(r);
    }
  }
  redisFree(rc);
  if (node < 0) {
    lease->key[0] = '\0';
    if (cfg->node_id >= 0)
      return pt_error_set(err, PT_DOMAIN_REDIS, PT_EBUSY,
                          "node.id %d is in use by another process (%s): its "
                          "task ids would collide; give each process a "
                          "node.id of its own, or -1 to lease a free one (a "
                          "holder that died on another host lets its lease "
                          "lapse within 60 s)",
                          (int)cfg->node_id, holder[0] ? holder : "unknown");
    return pt_error_set(err, PT_DOMAIN_REDIS, PT_EBUSY,
                        "no free node id could be leased in Redis");
  }
  pt_idgen_init(ids, node);
  PT_INFO("node_leased", "node=%d", node);
  return 0;
}

static const char renew_lua[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v and v ~= ARGV[1] then return 0 end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', 60)\n"
    "return 1\n";

static const char release_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  redis.call('DEL', KEYS[1]) end\n"
    "return 1\n";

static void on_renewed(redisAsyncContext *ac, void *reply, void *arg) {
  const pt_lease_t *lease = arg;
  const redisReply *r = reply;
  (void)ac;
  if (r == NULL || r->type != REDIS_REPLY_INTEGER || r->integer != 0)
    return;
  PT_ERROR("node_lease_lost", "key=%s note=\"another process holds this "
           "node id: its ids would collide with ours; starting afresh\"",
           lease->key);
  if (lease->lost != NULL)
    lease->lost(lease->lost_arg);
}

void pt_lease_renew(const pt_lease_t *lease, redisAsyncContext *ac) {
  if (ac != NULL && lease->key[0])
    redisAsyncCommand(ac, on_renewed, (void *)lease, "EVAL %s 1 %s %s",
                      renew_lua, lease->key, lease->val);
}

void pt_lease_release(const pt_lease_t *lease, redisAsyncContext *ac) {
  if (ac != NULL && lease->key[0])
    redisAsyncCommand(ac, NULL, NULL, "EVAL %s 1 %s %s", release_lua,
                      lease->key, lease->val);
}
