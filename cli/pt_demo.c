#include "cli/pt_demo.h"

#include <bson/bson.h>
#include <curl/curl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_buf.h"
#include "core/pt_config.h"
#include "core/pt_id.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"
#include "core/pt_task.h"

#define CONCURRENCY 64

typedef struct {
  char id[24];
  char *body; /* request, then answer */
  size_t len;
  int status; /* final task status index, -1 until known */
  int attempts;
  int64_t created_ms, final_ms;
  int64_t submitted_ms;
} item_t;

typedef struct {
  item_t *item;
  pt_buf_t out;
  struct curl_slist *hdrs;
} xfer_t;

static void progress(const char *what, int done, int total) {
  int width = 40, fill = total ? done * width / total : width;
  if (!isatty(2) && done != total && done % (total / 10 ? total / 10 : 1))
    return;
  fprintf(stderr, "\r%-9s [", what);
  for (int i = 0; i < width; i++)
    fputc(i < fill ? '#' : '.', stderr);
  fprintf(stderr, "] %d/%d", done, total);
  if (done == total)
    fputc('\n', stderr);
  fflush(stderr);
}

static int64_t ms_of(const char *ts) {
  struct tm tm = {0};
  int ms = 0;
  if (ts == NULL || sscanf(ts, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year,
                           &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                           &tm.tm_sec, &ms) != 7)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm) * 1000 + ms;
}

static const char *str_of(const bson_t *d, const char *key) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, d, key) && BSON_ITER_HOLDS_UTF8(&it))
    return bson_iter_utf8(&it, NULL);
  return NULL;
}

/* Runs one request per item through a curl multi handle, CONCURRENCY at a
 * time; done() reads each answer. */
static int run_all(const char *what, item_t *items, int n, const char *api,
                   const char *token, int get,
                   void (*done)(item_t *, long, const char *)) {
  CURLM *m = curl_multi_init();
  int next = 0, running = 0, finished = 0;
  char auth[600];
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
  curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)CONCURRENCY);
  while (finished < n) {
    while (next < n && running < CONCURRENCY) {
      item_t *it = &items[next++];
      xfer_t *x = calloc(1, sizeof *x);
      CURL *h = curl_easy_init();
      char url[PT_CFG_STR_MAX + 128];
      x->item = it;
      x->hdrs = curl_slist_append(NULL, auth);
      x->hdrs = curl_slist_append(x->hdrs, "Content-Type: application/json");
      if (get) {
        snprintf(url, sizeof url, "%s/v1/tasks/%s?wait=30", api, it->id);
      } else {
        snprintf(url, sizeof url, "%s/v1/tasks", api);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, it->body);
        it->submitted_ms = pt_now_ms();
      }
      curl_easy_setopt(h, CURLOPT_URL, url);
      curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->hdrs);
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, pt_buf_curl_write);
      curl_easy_setopt(h, CURLOPT_WRITEDATA, &x->out);
      curl_easy_setopt(h, CURLOPT_PRIVATE, x);
      curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
      curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
      curl_multi_add_handle(m, h);
      running++;
    }
    int still;
    curl_multi_perform(m, &still);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      CURL *h = msg->easy_handle;
      xfer_t *x;
      long code = -1;
      curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&x);
      if (msg->data.result == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
      done(x->item, code, x->out.data ? x->out.data : "");
      curl_multi_remove_handle(m, h);
      curl_easy_cleanup(h);
      curl_slist_free_all(x->hdrs);
      free(x->out.data);
      free(x);
      running--;
      progress(what, ++finished, n);
    }
    if (running > 0)
      curl_multi_poll(m, NULL, 0, 100, NULL);
  }
  curl_multi_cleanup(m);
  return 0;
}

static int submit_failures;

static void on_submitted(item_t *it, long code, const char *body) {
  bson_t d;
  bson_error_t e;
  if (code != 202 || !bson_init_from_json(&d, body, -1, &e)) {
    submit_failures++;
    if (submit_failures <= 3)
      fprintf(stderr, "\nsubmit answered %ld: %s\n", code, body);
    return;
  }
  const char *id = str_of(&d, "task_id");
  snprintf(it->id, sizeof it->id, "%s", id ? id : "");
  bson_destroy(&d);
}

static void on_final(item_t *it, long code, const char *body) {
  bson_t d;
  bson_error_t e;
  bson_iter_t i;
  if (code != 200 || !bson_init_from_json(&d, body, -1, &e))
    return;
  const char *st = str_of(&d, "status");
  it->status = st ? pt_status_parse(st) : -1;
  if (bson_iter_init_find(&i, &d, "attempts"))
    it->attempts = (int)bson_iter_as_int64(&i);
  it->created_ms = ms_of(str_of(&d, "created_at"));
  it->final_ms = ms_of(str_of(&d, "updated_at"));
  bson_destroy(&d);
}

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static void show_from_redis(const pt_config_t *cfg, const char *id) {
  pt_error_t err;
  redisContext *c = pt_redis_connect_sync(cfg->redis_uri, 2000, &err);
  if (c == NULL) {
    printf("  (Redis: %s)\n", err.message);
    return;
  }
  redisReply *r = redisCommand(c, "HGETALL %s%s", PT_KEY_TASK, id);
  bson_t doc = BSON_INITIALIZER;
  int final;
  if (r != NULL && pt_store_doc_from_hash(r, &doc, &final, &err) == 0) {
    char *j = bson_as_relaxed_extended_json(&doc, NULL);
    printf("  task %s, read from Redis (hash %s%s):\n  %s\n", id, PT_KEY_TASK,
           id, j);
    bson_free(j);
  } else {
    printf("  task %s is no longer in Redis (already synced and evicted)\n",
           id);
  }
  bson_destroy(&doc);
  freeReplyObject(r);
  redisFree(c);
}

static void show_from_mongo(const pt_config_t *cfg, const char *id) {
  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(cfg->mongodb_uri, &e);
  if (u == NULL) {
    printf("  (MongoDB: %s)\n", e.message);
    return;
  }
  mongoc_client_t *cl = mongoc_client_new_from_uri(u);
  const char *db = mongoc_uri_get_database(u);
  mongoc_collection_t *col =
      mongoc_client_get_collection(cl, db ? db : "paytask", "tasks");
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  int found = 0;
  for (int tries = 0; tries < 100 && !found; tries++) {
    const bson_t *d;
    mongoc_cursor_t *cur =
        mongoc_collection_find_with_opts(col, &filter, NULL, NULL);
    if (mongoc_cursor_next(cur, &d)) {
      char *j = bson_as_relaxed_extended_json(d, NULL);
      printf("  task %s, read from MongoDB (%s.tasks) after the sync:\n  %s\n",
             id, db ? db : "paytask", j);
      bson_free(j);
      found = 1;
    }
    mongoc_cursor_destroy(cur);
    if (!found)
      usleep(100 * 1000);
  }
  if (!found)
    printf("  task %s has not reached MongoDB after 10 s\n", id);
  bson_destroy(&filter);
  mongoc_collection_destroy(col);
  mongoc_client_destroy(cl);
  mongoc_uri_destroy(u);
}

int pt_demo_main(int argc, char **argv) {
  static const struct option opts[] = {{"tasks", required_argument, 0, 'n'},
                                       {"api", required_argument, 0, 'a'},
                                       {"trades", no_argument, 0, 't'},
                                       {"config", required_argument, 0, 'c'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  long n = 2000;
  int c;
  char *end, api[PT_CFG_STR_MAX + 16], token[PT_CFG_STR_MAX];
  const char *api_arg = NULL, *conf = NULL;
  pt_config_t cfg;
  pt_error_t err;
  int trades = 0;
  while ((c = getopt_long(argc, argv, "n:a:th", opts, NULL)) != -1) {
    if (c == 't') {
      trades = 1;
    } else if (c == 'n') {
      n = strtol(optarg, &end, 10);
      if (*end != '\0' || n < 1 || n > 1000000) {
        fprintf(stderr, "paytask demo: --tasks takes 1..1000000\n");
        return 2;
      }
    } else if (c == 'a') {
      api_arg = optarg;
    } else if (c == 'c') {
      conf = optarg;
    } else {
      fprintf(stderr, "usage: paytask demo [--tasks N] [--api URL] [--trades] "
                      "[--config FILE]\n");
      return c == 'h' ? 0 : 2;
    }
  }
  if (pt_config_load(&cfg, conf, &err) != 0) {
    fprintf(stderr, "paytask demo: %s\n", err.message);
    return 2;
  }
  snprintf(api, sizeof api, "%s", api_arg ? api_arg : "");
  if (api_arg == NULL)
    snprintf(api, sizeof api, "http://%s", cfg.api_listen);
  if (pt_config_token_for(&cfg, PT_SCOPE_SUBMIT | PT_SCOPE_READ, token,
                          sizeof token) != 0) {
    fprintf(stderr, "paytask demo: no token of api.tokens has the submit "
                    "and read scopes\n");
    return 2;
  }

  /* Every 10th task fails once, every 25th twice, every 50th is declined:
   * the rest succeed at the first attempt. */
  item_t *items = calloc((size_t)n, sizeof *items);
  char run[32];
  snprintf(run, sizeof run, "DEMO%lld", (long long)pt_now_ms());
  for (long i = 0; i < n; i++) {
    bson_t d = BSON_INITIALIZER, p, sim;
    char otn[64];
    snprintf(otn, sizeof otn, "%s-%06ld", run, i);
    BSON_APPEND_UTF8(&d, "type", "pay");
    BSON_APPEND_UTF8(&d, "channel", "sim");
    BSON_APPEND_UTF8(&d, "out_trade_no", otn);
    BSON_APPEND_INT64(&d, "amount", 100 + i % 9900);
    BSON_APPEND_UTF8(&d, "currency", "CNY");
    BSON_APPEND_UTF8(&d, "subject", "paytask demo order");
    if (i % 10 == 3 || i % 25 == 7 || i % 50 == 11) {
      BSON_APPEND_DOCUMENT_BEGIN(&d, "params", &p);
      BSON_APPEND_DOCUMENT_BEGIN(&p, "sim", &sim);
      if (i % 50 == 11)
        BSON_APPEND_BOOL(&sim, "decline", true);
      else
        BSON_APPEND_INT32(&sim, "fail_times", i % 25 == 7 ? 2 : 1);
      bson_append_document_end(&p, &sim);
      bson_append_document_end(&d, &p);
    }
    items[i].body = bson_as_relaxed_extended_json(&d, &items[i].len);
    items[i].status = -1;
    bson_destroy(&d);
  }
  int64_t t0 = pt_now_ms();
  run_all("submit", items, (int)n, api, token, 0, on_submitted);
  int64_t t1 = pt_now_ms();
  if (submit_failures > 0) {
    fprintf(stderr, "paytask demo: %d submits failed\n", submit_failures);
    for (long i = 0; i < n; i++)
      bson_free(items[i].body);
    free(items);
    return 1;
  }
  run_all("complete", items, (int)n, api, token, 1, on_final);
  int64_t t2 = pt_now_ms();

  long count[6] = {0}, unknown = 0, retries = 0;
  int64_t *lat = calloc((size_t)n, sizeof *lat), last_final = 0;
  long nlat = 0;
  for (long i = 0; i < n; i++) {
    if (items[i].status < 0 || !pt_status_final(items[i].status)) {
      unknown++;
      continue;
    }
    count[items[i].status]++;
    retries += items[i].attempts > 1 ? items[i].attempts - 1 : 0;
    lat[nlat++] = items[i].final_ms - items[i].created_ms;
    if (items[i].final_ms > last_final)
      last_final = items[i].final_ms;
  }
  qsort(lat, (size_t)nlat, sizeof *lat, cmp64);
  printf("\n== paytask demo: %ld pay tasks on the sim channel ==\n", n);
  printf("  submitted in %.2f s (%.0f tasks/s through the api)\n",
         (double)(t1 - t0) / 1000, (double)n * 1000 / (double)(t1 - t0 + 1));
  printf("  SUCCEEDED %ld   FAILED %ld   CANCELLED %ld   not final %ld\n",
         count[PT_ST_SUCCEEDED], count[PT_ST_FAILED], count[PT_ST_CANCELLED],
         unknown);
  printf("  retries taken: %ld (linear delays: 1 s, then 2 s)\n", retries);
  printf("  first submit to last final status: %.2f s (%.0f tasks/s, "
         "retry delays included)\n",
         (double)(last_final - t0) / 1000,
         (double)n * 1000 / (double)(last_final - t0 + 1));
  if (nlat > 0)
    printf("  submit-to-final latency: p50 %lld ms  p95 %lld ms  p99 %lld ms  "
           "max %lld ms\n",
           (long long)lat[nlat / 2], (long long)lat[nlat * 95 / 100],
           (long long)lat[nlat * 99 / 100], (long long)lat[nlat - 1]);
  (void)t2;
  printf("\n");
  show_from_redis(&cfg, items[n - 1].id);
  printf("\n");
  show_from_mongo(&cfg, items[0].id);
  int rc = unknown == 0 ? 0 : 1;
  if (trades && pt_demo_trades(&cfg, api, token) != 0)
    rc = 1;
  for (long i = 0; i < n; i++)
    bson_free(items[i].body);
  free(items);
  free(lat);
  return rc;
}
