#include "cli/pt_inspect.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pt_amqp.h"
#include "core/pt_config.h"
#include "core/pt_id.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "runner/pt_topology.h"

/* Each part returns 0, or -1 when it could not see what it shows: the
 * command then exits 1, so that a script or a probe does not take an
 * unreachable server for a healthy one. */
static int show_queues(const pt_config_t *cfg) {
  pt_error_t err;
  printf("%-24s %10s %10s\n", "queue", "messages", "consumers");
  amqp_connection_state_t c = pt_amqp_connect_sync(cfg->amqp_uri, 3000, &err);
  if (c == NULL) {
    printf("  (%s)\n", err.message);
    return -1;
  }
  pt_queue_depth_t q[PT_TOPOLOGY_QUEUES];
  int n = pt_topology_queue_depths(c, q), seen = 0;
  for (int i = 0; i < n; i++) {
    if (q[i].messages >= 0)
      printf("%-24s %10ld %10ld\n", q[i].name, q[i].messages, q[i].consumers);
    else
      printf("%-24s %10s\n", q[i].name, "(missing)");
    seen += q[i].messages >= 0;
  }
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  /* None seen: the connection dropped or the user may not see them. */
  return seen > 0 ? 0 : -1;
}

static int show_redis(const pt_config_t *cfg) {
  pt_error_t err;
  redisContext *c = pt_redis_connect_sync(cfg->redis_uri, 2000, &err);
  if (c == NULL) {
    printf("\n(Redis unreachable: %s)\n", err.message);
    return -1;
  }
  redisReply *r = redisCommand(c, "XLEN %s", PT_STREAM_SYNC);
  if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
    printf("\n(Redis: %s)\n",
           r == NULL ? c->errstr
                     : r->type == REDIS_REPLY_ERROR ? r->str : "unexpected "
                                                               "reply");
    freeReplyObject(r);
    redisFree(c);
    return -1;
  }
  long long backlog = r->integer;
  freeReplyObject(r);
  long long lag_ms = 0;
  r = redisCommand(c, "XRANGE %s - + COUNT 1", PT_STREAM_SYNC);
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
      r->element[0]->type == REDIS_REPLY_ARRAY &&
      r->element[0]->element[0]->type == REDIS_REPLY_STRING)
    lag_ms = pt_now_ms() - strtoll(r->element[0]->element[0]->str, NULL, 10);
  freeReplyObject(r);
  printf("\nsync to MongoDB: %lld final states waiting, oldest %.1f s\n",
         backlog, (double)lag_ms / 1000.0);

  printf("\n%-32s %7s %9s %9s %9s %10s %s\n", "worker", "pid", "in flight",
         "calls", "finished", "per min", "state");
  long long cursor = 0;
  int workers = 0;
  do {
    r = redisCommand(c, "SCAN %lld MATCH pt:worker:* COUNT 100", cursor);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
      freeReplyObject(r);
      break;
    }
    cursor = strtoll(r->element[0]->str, NULL, 10);
    for (size_t i = 0; i < r->element[1]->elements; i++) {
      const char *key = r->element[1]->element[i]->str;
      redisReply *h = redisCommand(
          c, "HMGET %s pid inflight calls finals finals_1m draining", key);
      if (h && h->type == REDIS_REPLY_ARRAY && h->elements == 6) {
        const char *v[6];
        for (int k = 0; k < 6; k++)
          v[k] = h->element[k]->type == REDIS_REPLY_STRING ? h->element[k]->str
                                                            : "-";
        printf("%-32s %7s %9s %9s %9s %10s %s\n", key + 10, v[0], v[1], v[2],
               v[3], v[4], strcmp(v[5], "1") == 0 ? "draining" : "running");
        workers++;
      }
      freeReplyObject(h);
    }
    freeReplyObject(r);
  } while (cursor != 0);
  if (workers == 0)
    printf("  (no live worker)\n");
  redisFree(c);
  return 0;
}

int pt_inspect_main(int argc, char **argv) {
  static const struct option opts[] = {{"watch", optional_argument, 0, 'w'},
                                       {"config", required_argument, 0, 'c'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *path = NULL;
  long watch = 0;
  char *end;
  int c;
  while ((c = getopt_long(argc, argv, "w::c:h", opts, NULL)) != -1) {
    if (c == 'w') {
      watch = 2;
      if (optarg != NULL) {
        watch = strtol(optarg, &end, 10);
        if (*end != '\0' || watch < 1 || watch > 3600) {
          fprintf(stderr, "paytask inspect: --watch takes 1..3600 seconds\n");
          return 2;
        }
      }
    } else if (c == 'c') {
      path = optarg;
    } else {
      fprintf(stderr, "usage: paytask inspect [--watch[=SECONDS]] "
                      "[--config FILE]\n");
      return c == 'h' ? 0 : 2;
    }
  }
  pt_config_t cfg;
  pt_error_t err;
  if (pt_config_load(&cfg, path, &err) != 0) {
    fprintf(stderr, "paytask inspect: %s\n", err.message);
    return 2;
  }
  for (;;) {
    char ts[32];
    if (watch)
      printf("\033[H\033[2J"); /* clear the screen between refreshes */
    pt_time_rfc3339(pt_now_ms(), ts);
    printf("paytask inspect  %s\n\n", ts);
    int bad = show_queues(&cfg) != 0;
    bad |= show_redis(&cfg) != 0;
    fflush(stdout);
    if (!watch)
      return bad ? 1 : 0;
    sleep((unsigned)watch);
  }
}
