#include "cli/pt_replay.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <bson/bson.h>
#include <getopt.h>
#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/pt_cli_http.h"
#include "core/pt_amqp.h"
#include "core/pt_buf.h"
#include "core/pt_config.h"
#include "core/pt_id.h"
#include "core/pt_task.h"
#include "runner/pt_topology.h"

#define MAX_IDS 100000

typedef struct {
  char id[24];
  char channel[16], type[16], otn[PT_OUT_TRADE_NO_MAX + 1], code[64];
  char created[32];
  int64_t amount;
  int dead;         /* a copy sits in the dead queue */
  uint64_t tag;     /* its delivery tag while we hold it */
  int replayed;
} found_t;

/* An RFC 3339 time ("2026-11-25", "2026-11-25T08:00:00Z",
 * "2026-11-25T16:00:00.5+08:00") rewritten in the form the documents store
 * (UTC, milliseconds, "Z"), so that the two compare as strings. 0 if it
 * is not one. */
/* Whether s starts with shape, where 'd' stands for a digit. */
static int shaped(const char *s, const char *shape) {
  for (; *shape; s++, shape++)
    if (*shape == 'd' ? !(*s >= '0' && *s <= '9') : *s != *shape)
      return 0;
  return 1;
}

static int normalize_time(const char *in, char out[32]) {
  int y, mo, d, h = 0, mi = 0, sec = 0, n = 0, oh = 0, om = 0, sign = 1;
  long frac_ms = 0;
  if (!shaped(in, "dddd-dd-dd") ||
      sscanf(in, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10)
    return 0;
  const char *p = in + n;
  if (*p != '\0') {
    if ((*p != 'T' && *p != 't' && *p != ' ') || !shaped(p + 1, "dd:dd:dd") ||
        sscanf(p + 1, "%2d:%2d:%2d%n", &h, &mi, &sec, &n) != 3 || n != 8)
      return 0;
    p += 1 + n;
    if (*p == '.') {
      long scale = 100;
      for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
        frac_ms += (*p - '0') * scale;
      if (p[-1] == '.')
        return 0;
    }
    if (*p == 'Z' || *p == 'z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      sign = *p == '-' ? -1 : 1;
      if (!shaped(p + 1, "dd:dd") ||
          sscanf(p + 1, "%2d:%2d%n", &oh, &om, &n) != 2 || n != 5 ||
          oh > 23 || om > 59)
        return 0;
      p += 1 + n;
    } else {
      return 0; /* a time without its offset is ambiguous */
    }
    if (*p != '\0')
      return 0;
  }
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
                  .tm_hour = h, .tm_min = mi, .tm_sec = sec};
  time_t t = timegm(&tm);
  /* timegm normalises 2026-02-30 into March: refuse what moved */
  if (t == (time_t)-1 || tm.tm_year != y - 1900 || tm.tm_mon != mo - 1 ||
      tm.tm_mday != d || tm.tm_hour != h || tm.tm_min != mi ||
      tm.tm_sec != sec)
    return 0;
  t -= sign * (oh * 3600 + om * 60);
  pt_time_rfc3339((int64_t)t * 1000 + frac_ms, out);
  return 1;
}

static const char *str(const bson_t *d, const char *path, char *buf,
                       size_t len) {
  bson_iter_t it, f;
  buf[0] = '\0';
  if (bson_iter_init(&it, d) && bson_iter_find_descendant(&it, path, &f) &&
      BSON_ITER_HOLDS_UTF8(&f))
    snprintf(buf, len, "%s", bson_iter_utf8(&f, NULL));
  return buf;
}

/* FAILED tasks in MongoDB matching the filters. */
static long find_failed(const pt_config_t *cfg, char (*ids)[24], long nids,
                        const char *since, const char *until,
                        const char *channel, const char *type,
                        const char *code, found_t *out, long max) {
  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(cfg->mongodb_uri, &e);
  if (u == NULL) {
    fprintf(stderr, "paytask replay: mongodb.uri: %s\n", e.message);
    return -1;
  }
  mongoc_client_t *cl = mongoc_client_new_from_uri(u);
  if (cl == NULL) {
    fprintf(stderr, "paytask replay: mongodb.uri: cannot make a client\n");
    mongoc_uri_destroy(u);
    return -1;
  }
  const char *db = mongoc_uri_get_database(u);
  mongoc_collection_t *col =
      mongoc_client_get_collection(cl, db ? db : "paytask", "tasks");
  bson_t q = BSON_INITIALIZER, sub, arr;
  BSON_APPEND_UTF8(&q, "status", "FAILED");
  if (nids > 0) {
    BSON_APPEND_DOCUMENT_BEGIN(&q, "_id", &sub);
    BSON_APPEND_ARRAY_BEGIN(&sub, "$in", &arr);
    for (long i = 0; i < nids; i++) {
      char k[24];
      snprintf(k, sizeof k, "%ld", i);
      BSON_APPEND_UTF8(&arr, k, ids[i]);
    }
    bson_append_array_end(&sub, &arr);
    bson_append_document_end(&q, &sub);
  }
  if (since || until) {
    /* RFC 3339 times of one format compare as strings. */
    BSON_APPEND_DOCUMENT_BEGIN(&q, "created_at", &sub);
    if (since)
      BSON_APPEND_UTF8(&sub, "$gte", since);
    if (until)
      BSON_APPEND_UTF8(&sub, "$lt", until);
    bson_append_document_end(&q, &sub);
  }
  if (channel)
    BSON_APPEND_UTF8(&q, "channel", channel);
  if (type)
    BSON_APPEND_UTF8(&q, "type", type);
  if (code)
    BSON_APPEND_UTF8(&q, "error.code", code);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, &q, NULL, NULL);
  const bson_t *d;
  long n = 0;
  while (n < max && mongoc_cursor_next(cur, &d)) {
    found_t *f = &out[n++];
    bson_iter_t it;
    memset(f, 0, sizeof *f);
    str(d, "_id", f->id, sizeof f->id);
    str(d, "channel", f->channel, sizeof f->channel);
    str(d, "type", f->type, sizeof f->type);
    str(d, "out_trade_no", f->otn, sizeof f->otn);
    str(d, "error.code", f->code, sizeof f->code);
    str(d, "created_at", f->created, sizeof f->created);
    if (bson_iter_init_find(&it, d, "amount"))
      f->amount = bson_iter_as_int64(&it);
  }
  if (mongoc_cursor_error(cur, &e)) {
    fprintf(stderr, "paytask replay: MongoDB: %s\n", e.message);
    n = -1;
  } else if (n == max && mongoc_cursor_next(cur, &d)) {
    fprintf(stderr, "paytask replay: more than %ld tasks match; narrow the "
                    "filters (--since/--until) and run again\n", max);
    n = -1;
  }
  mongoc_cursor_destroy(cur);
  bson_destroy(&q);
  mongoc_collection_destroy(col);
  mongoc_client_destroy(cl);
  mongoc_uri_destroy(u);
  return n;
}

/* Dead-queue messages held that are not to be replayed: returned to the
 * queue by settle_dead, not before (a requeued message would come straight
 * back to the next basic.get). */
static uint64_t *others;
static long nothers, cap_others;

static int by_id(const void *a, const void *b) {
  return strcmp(((const found_t *)a)->id, ((const found_t *)b)->id);
}

/* Takes every dead-queue message (unacknowledged, so they stay ours until
 * settle_dead) and marks the found tasks that have one. */
static amqp_connection_state_t hold_dead(const pt_config_t *cfg, found_t *f,
                                         long n, long *held) {
  pt_error_t err;
  *held = 0;
  amqp_connection_state_t c = pt_amqp_connect_sync(cfg->amqp_uri, 3000, &err);
  if (c == NULL) {
    fprintf(stderr, "paytask replay: %s; the dead queue is left as it is\n",
            err.message);
    return NULL;
  }
  for (;;) {
    amqp_rpc_reply_t r =
        amqp_basic_get(c, 1, amqp_cstring_bytes(PT_QUEUE_DEAD), 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL ||
        r.reply.id != AMQP_BASIC_GET_OK_METHOD)
      break;
    uint64_t tag = ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag;
    amqp_message_t m;
    if (amqp_read_message(c, 1, &m, 0).reply_type != AMQP_RESPONSE_NORMAL)
      break;
    (*held)++;
    bson_t d;
    bson_error_t e;
    char id[24] = "";
    if (bson_init_from_json(&d, m.body.bytes, (ssize_t)m.body.len, &e)) {
      str(&d, "task_id", id, sizeof id);
      bson_destroy(&d);
    }
    found_t key;
    snprintf(key.id, sizeof key.id, "%s", id);
    found_t *hit = id[0] ? bsearch(&key, f, (size_t)n, sizeof *f, by_id)
                         : NULL;
    if (hit != NULL && !hit->dead) {
      hit->dead = 1;
      hit->tag = tag;
    } else { /* not ours to touch: back to the queue at the end */
      if (nothers == cap_others) {
        long cap = cap_others ? 2 * cap_others : 256;
        uint64_t *o = realloc(others, (size_t)cap * sizeof *o);
        if (o == NULL) { /* it goes back when the connection closes */
          amqp_destroy_message(&m);
          continue;
        }
        others = o;
        cap_others = cap;
      }
      others[nothers++] = tag;
    }
    amqp_destroy_message(&m);
    amqp_maybe_release_buffers(c);
  }
  return c;
}

/* Takes the dead copy of a task that has been replayed (now or before)
 * out of the dead queue, at once: a run cut short (Ctrl-C) leaves no copy
 * of a replayed task behind. Returns 0, or -1 (said) if the broker did not
 * take the acknowledgement: the copy goes back to the dead queue. */
static int drop_dead_copy(amqp_connection_state_t c, found_t *f) {
  if (c == NULL || !f->dead)
    return 0;
  f->dead = 0;
  if (amqp_basic_ack(c, 1, f->tag, 0) == AMQP_STATUS_OK)
    return 0;
  fprintf(stderr, "paytask replay: the broker did not take the "
                  "acknowledgement of %s's dead copy; it stays in %s\n",
          f->id, PT_QUEUE_DEAD);
  return -1;
}

/* Whether the channel holding the dead-queue messages still stands. The
 * broker closes it when a message was held past its consumer_timeout (30
 * minutes by default): the messages go back to the queue, and the
 * acknowledgements sent after that are dropped without an answer. A
 * passive declare is an exchange with the broker that tells. */
static int dead_channel_alive(amqp_connection_state_t c) {
  amqp_queue_declare(c, 1, amqp_cstring_bytes(PT_QUEUE_DEAD), 1, 0, 0, 0,
                     amqp_empty_table);
  return amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL;
}

/* Returns the held dead-queue messages not acknowledged (the others, and
 * the copies of tasks not replayed). Returns -1 (said) if the broker had
 * closed their channel: the dead copies of replayed tasks may be back in
 * the dead queue. */
static int settle_dead(amqp_connection_state_t c, found_t *f, long n) {
  if (c == NULL)
    return 0;
  if (!dead_channel_alive(c)) {
    fprintf(stderr, "paytask replay: the broker closed the channel that held "
                    "the dead queue's messages (held past its consumer_timeout,"
                    " 30 minutes by default?): they are back in %s, the dead "
                    "copies of tasks replayed here too. Run the same command "
                    "again: it answers those \"already replayed\" and takes "
                    "their copies out\n",
            PT_QUEUE_DEAD);
    free(others);
    others = NULL;
    nothers = cap_others = 0;
    pt_amqp_close_sync(c);
    return -1;
  }
  for (long i = 0; i < nothers; i++)
    amqp_basic_nack(c, 1, others[i], 0, 1);
  free(others);
  others = NULL;
  nothers = cap_others = 0;
  for (long i = 0; i < n; i++)
    if (f[i].dead)
      amqp_basic_nack(c, 1, f[i].tag, 0, 1);
  pt_amqp_close_sync(c);
  return 0;
}

static long replay_one(const char *api, const char *token, const char *id,
                       int force, char *newid, size_t len) {
  pt_buf_t out;
  char url[PT_CFG_STR_MAX + 96];
  snprintf(url, sizeof url, "%s/v1/tasks/%s/replay%s", api, id,
           force ? "?force=true" : "");
  pt_cli_req_t r = {"POST", url, token, NULL, "", 30000};
  long code = pt_cli_http(&r, &out, NULL);
  newid[0] = '\0';
  bson_t d;
  bson_error_t e;
  /* 202, or 200 when the broker's confirm was lost but a worker took the
   * new task already (the api answers with its state): replayed either
   * way. Counted failed, it kept its dead copy, and the README's "run it
   * again" made a second replay. */
  int replayed = code == 202 || code == 200;
  if (out.data && bson_init_from_json(&d, out.data, -1, &e)) {
    str(&d, replayed ? "task_id" : "error.code", newid, len);
    bson_destroy(&d);
  }
  free(out.data);
  return replayed && newid[0] != '\0' ? 202 : code;
}

static void usage(void) {
  fprintf(stderr,
          "usage: paytask replay [filters] [--dry-run] [--force] [--rate N]\n"
          "filters (all that are given must match; status is FAILED):\n"
          "  --id ID (repeatable)  --ids-file FILE  --since RFC3339\n"
          "  --until RFC3339  --channel C  --type T  --error-code CODE\n"
          "  --rate N   replays per second (default 50)\n"
          "  --api URL --token TOKEN (a token with the admin scope)\n"
          "  --config FILE (MongoDB, and the api and token when not given)\n");
}

int pt_replay_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"id", required_argument, 0, 'i'},       {"ids-file", required_argument, 0, 'f'},
      {"since", required_argument, 0, 's'},    {"until", required_argument, 0, 'u'},
      {"channel", required_argument, 0, 'C'},  {"type", required_argument, 0, 't'},
      {"error-code", required_argument, 0, 'e'}, {"dry-run", no_argument, 0, 'n'},
      {"force", no_argument, 0, 'F'},          {"rate", required_argument, 0, 'r'},
      {"api", required_argument, 0, 'A'},      {"token", required_argument, 0, 'T'},
      {"config", required_argument, 0, 'c'},   {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  static char ids[MAX_IDS][24];
  long nids = 0;
  const char *since = NULL, *until = NULL, *channel = NULL, *type = NULL,
             *code = NULL, *api = NULL, *token = NULL, *conf = NULL;
  int dry = 0, force = 0, c, filters = 0;
  double rate = 50;
  char *end, line[64], since_buf[32], until_buf[32];
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'i':
      if (nids == MAX_IDS || strlen(optarg) > 20) {
        fprintf(stderr, "paytask replay: --id %s: at most %d ids of 20 "
                        "digits\n", optarg, MAX_IDS);
        return 2;
      }
      snprintf(ids[nids++], sizeof ids[0], "%s", optarg);
      filters++;
      break;
    case 'f': {
      FILE *fp = fopen(optarg, "r");
      if (fp == NULL) {
        perror(optarg);
        return 2;
      }
      while (fgets(line, sizeof line, fp))
        if (sscanf(line, "%23s", ids[nids < MAX_IDS ? nids : 0]) == 1) {
          if (nids == MAX_IDS || strlen(ids[nids]) > 20) {
            fprintf(stderr, "paytask replay: %s: at most %d ids of 20 "
                            "digits, one per line\n", optarg, MAX_IDS);
            fclose(fp);
            return 2;
          }
          nids++;
        }
      fclose(fp);
      filters++;
      break;
    }
    case 's':
    case 'u':
      if (!normalize_time(optarg, c == 's' ? since_buf : until_buf)) {
        fprintf(stderr, "paytask replay: --%s %s: not an RFC 3339 time "
                        "(2026-11-25, 2026-11-25T08:00:00Z, "
                        "2026-11-25T16:00:00+08:00)\n",
                c == 's' ? "since" : "until", optarg);
        return 2;
      }
      if (c == 's')
        since = since_buf;
      else
        until = until_buf;
      filters++;
      break;
    case 'C': channel = optarg; filters++; break;
    case 't': type = optarg; filters++; break;
    case 'e': code = optarg; filters++; break;
    case 'n': dry = 1; break;
    case 'F': force = 1; break;
    case 'r':
      rate = strtod(optarg, &end);
      if (*end != '\0' || rate <= 0 || rate > 10000) {
        fprintf(stderr, "paytask replay: --rate takes 0 < N <= 10000\n");
        return 2;
      }
      break;
    case 'A': api = optarg; break;
    case 'T': token = optarg; break;
    case 'c': conf = optarg; break;
    default:
      usage();
      return c == 'h' ? 0 : 2;
    }
  }
  if (filters == 0) {
    fprintf(stderr, "paytask replay: give at least one filter (replaying "
                    "every failed task at once is rarely meant)\n");
    usage();
    return 2;
  }
  pt_config_t cfg;
  pt_error_t err;
  if (pt_config_load(&cfg, conf, &err) != 0) {
    fprintf(stderr, "paytask replay: %s\n", err.message);
    return 2;
  }
  char apibuf[PT_CFG_STR_MAX + 16], tokbuf[PT_CFG_STR_MAX];
  if (api == NULL)
    api = getenv("PAYTASK_API_URL");
  if (api == NULL) {
    snprintf(apibuf, sizeof apibuf, "http://%s", cfg.api_listen);
    api = apibuf;
  }
  if (token == NULL)
    token = getenv("PAYTASK_TOKEN");
  if (token == NULL) {
    if (pt_config_token_for(&cfg, PT_SCOPE_ADMIN, tokbuf, sizeof tokbuf) !=
        0) {
      fprintf(stderr, "paytask replay: no token of api.tokens has the admin "
                      "scope; give --token or PAYTASK_TOKEN\n");
      return 2;
    }
    token = tokbuf;
  }
  found_t *f = calloc(MAX_IDS, sizeof *f);
  if (f == NULL) {
    fprintf(stderr, "paytask replay: out of memory\n");
    return 1;
  }
  long n = find_failed(&cfg, ids, nids, since, until, channel, type, code, f,
                       MAX_IDS);
  if (n < 0) {
    free(f);
    return 1;
  }
  qsort(f, (size_t)n, sizeof *f, by_id); /* ids are in time order */
  long held = 0;
  amqp_connection_state_t dead = hold_dead(&cfg, f, n, &held);
  long in_dead = 0;
  for (long i = 0; i < n; i++)
    in_dead += f[i].dead;
  printf("%ld failed task(s) match; %ld of them in the dead queue (%ld "
         "messages there)\n",
         n, in_dead, held);
  if (dry) {
    printf("%-20s %-8s %-6s %-28s %10s %-20s %-24s %s\n", "task_id", "channel",
           "type", "out_trade_no", "amount", "error", "created_at", "dead");
    for (long i = 0; i < n; i++)
      printf("%-20s %-8s %-6s %-28s %10lld %-20s %-24s %s\n", f[i].id,
             f[i].channel, f[i].type, f[i].otn, (long long)f[i].amount,
             f[i].code, f[i].created, f[i].dead ? "yes" : "no");
    printf("dry run: nothing replayed\n");
    int rc = settle_dead(dead, f, n);
    free(f);
    return rc == 0 ? 0 : 1;
  }
  long ok = 0, already = 0, failed = 0, unknown = 0, kept = 0;
  int tty = isatty(2);
  struct timespec gap = {(time_t)(1 / rate),
                         (long)((1 / rate - (double)(time_t)(1 / rate)) * 1e9)};
  for (long i = 0; i < n; i++) {
    char newid[64];
    long st = replay_one(api, token, f[i].id, force, newid, sizeof newid);
    if (st == 202) {
      f[i].replayed = 1;
      ok++;
      printf("replayed %s -> %s\n", f[i].id, newid);
      fflush(stdout);
      kept += drop_dead_copy(dead, &f[i]) != 0;
    } else if (st == 409 && strcmp(newid, "already_replayed") == 0) {
      already++;
      kept += drop_dead_copy(dead, &f[i]) != 0;
    } else if (st == -2 ||
               (st >= 500 && strcmp(newid, "broker_unavailable") != 0)) {
      /* It may have gone through: a second try without --force says. */
      unknown++;
      fprintf(stderr, "replay of %s: outcome unknown (%s); run again "
                      "without --force: if it went through, the answer is "
                      "already replayed\n",
              f[i].id, st == -2 ? "no answer" : newid);
    } else {
      failed++;
      fprintf(stderr, "replay of %s failed: HTTP %ld %s\n", f[i].id, st,
              st < 0 ? "the api did not answer" : newid);
    }
    if (tty) {
      int w = 30, fill = (int)((i + 1) * w / n);
      fprintf(stderr, "\r[%.*s%*s] %ld/%ld", fill,
              "##############################", w - fill, "", i + 1, n);
    }
    nanosleep(&gap, NULL);
  }
  if (tty)
    fputc('\n', stderr);
  int lost = settle_dead(dead, f, n) != 0;
  printf("summary: %ld replayed, %ld already replayed (--force replays "
         "them again), %ld failed, %ld outcome unknown\n",
         ok, already, failed, unknown);
  if (kept > 0)
    printf("%ld dead copies of replayed tasks stay in %s\n", kept,
           PT_QUEUE_DEAD);
  if (lost)
    printf("dead copies of replayed tasks may stay in %s: run again\n",
           PT_QUEUE_DEAD);
  free(f);
  return failed == 0 && unknown == 0 && !lost ? 0 : 1;
}
