#include "worker/pt_sync.h"

#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pt_log.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"

#define SYNC_GROUP "paytask-sync"

struct pt_sync {
  pthread_t thread;
  atomic_int stop;
  atomic_long written;
  atomic_long bulk_writes;
  const pt_config_t *cfg;
  char consumer[96];
  char reply_err[160]; /* an error reply that failed the batch, said once by
                          the caller with its retry */
  redisContext *redis;
  mongoc_client_t *mongo;
  mongoc_collection_t *tasks;
  int64_t last_claim_ms;
  char claim_from[48]; /* where the next XAUTOCLAIM starts */
  int indexed;           /* the replay index exists */
  int64_t last_index_ms; /* the last try, while it failed */
};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* (Re)connects Redis; returns 0 when usable. */
static int ensure_redis(pt_sync_t *s) {
  pt_error_t err;
  if (s->redis != NULL && s->redis->err == 0)
    return 0;
  if (s->redis != NULL)
    redisFree(s->redis);
  s->redis = pt_redis_connect_sync(s->cfg->redis_uri, 2000, &err);
  if (s->redis == NULL) {
    PT_ERROR("sync_redis_unavailable", "err=\"%s\"", err.message);
    return -1;
  }
  redisReply *r = redisCommand(s->redis, "XGROUP CREATE %s %s 0 MKSTREAM",
                               PT_STREAM_SYNC, SYNC_GROUP);
  if (r == NULL) {
    redisFree(s->redis);
    s->redis = NULL;
    return -1;
  }
  freeReplyObject(r); /* BUSYGROUP when it exists already: fine */
  return 0;
}

typedef struct {
  char entry[48];
  char id[24];
  bson_t doc;
  int has_doc;
  int refused; /* the driver or the server refused the document: never
                 acknowledged nor evicted */
} item_t;

static void free_docs(item_t *items, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (items[i].has_doc)
      bson_destroy(&items[i].doc);
}

/* Reads the task hashes of a batch (pipelined) and builds the documents. */
static int load_docs(pt_sync_t *s, item_t *items, size_t n) {
  for (size_t i = 0; i < n; i++)
    redisAppendCommand(s->redis, "HGETALL %s%s", PT_KEY_TASK, items[i].id);
  for (size_t i = 0; i < n; i++) {
    redisReply *r = NULL;
    if (redisGetReply(s->redis, (void **)&r) != REDIS_OK || r == NULL) {
      free_docs(items, i);
      return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
      /* Not "gone" (-BUSY: a script running too long): the batch is
       * read again later; taken as gone, its entries were acknowledged
       * with no document written. */
      snprintf(s->reply_err, sizeof s->reply_err, "%s", r->str);
      freeReplyObject(r);
      free_docs(items, i);
      return -1;
    }
    int final = 0;
    pt_error_t err;
    bson_init(&items[i].doc);
    BSON_APPEND_UTF8(&items[i].doc, "_id", items[i].id);
    int built = r->type == REDIS_REPLY_ARRAY
                    ? pt_store_doc_from_hash(r, &items[i].doc, &final, &err)
                    : PT_EPROTO;
    if (built == 0 && final) {
      items[i].has_doc = 1;
    } else {
      bson_destroy(&items[i].doc);
      items[i].has_doc = 0;
      /* Gone already (synced and evicted by another consumer): nothing to
       * write. A hash that is there but is no final task is kept pending
       * and said, not acknowledged as gone: its hash would never be
       * synced nor expire. */
      if (r->type != REDIS_REPLY_ARRAY || r->elements > 0) {
        items[i].refused = 1;
        PT_ERROR("sync_bad_document",
                 "task_id=%s entry=%s err=\"%s\" note=\"kept pending; "
                 "the task's hash is damaged or not final\"",
                 items[i].id, items[i].entry,
                 r->type != REDIS_REPLY_ARRAY ? "not a hash"
                 : built != 0                 ? err.message
                                              : "not final");
      }
    }
    freeReplyObject(r);
  }
  return 0;
}

/* Reads the per-document errors of a failed unordered bulk insert. A
 * duplicate key (11000) means the document is there already. Any other
 * error is that document's own (the server refused it, e.g. a key it does
 * not allow): it is marked refused, and the rest of the batch counts as
 * written. ops[k] is the item of the bulk's k-th insert. Returns 1 if the
 * batch counts as written, 0 if it must be retried (no per-document
 * errors: the server or the link failed; or a write concern error). */
static int settle_write_errors(const bson_t *reply, item_t *items,
                               const size_t *ops, size_t nops) {
  bson_iter_t it, errs, e;
  int seen = 0;
  if (bson_iter_init_find(&it, reply, "writeConcernErrors") &&
      BSON_ITER_HOLDS_ARRAY(&it)) {
    uint32_t len;
    const uint8_t *data;
    bson_iter_array(&it, &len, &data);
    if (len > 5) /* a non-empty array */
      return 0;
  }
  if (!bson_iter_init_find(&it, reply, "writeErrors") ||
      !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &errs))
    return 0;
  while (bson_iter_next(&errs)) {
    int64_t code = -1, index = -1;
    const char *msg = "";
    if (!bson_iter_recurse(&errs, &e))
      return 0;
    while (bson_iter_next(&e)) {
      const char *k = bson_iter_key(&e);
      if (strcmp(k, "code") == 0)
        code = bson_iter_as_int64(&e);
      else if (strcmp(k, "index") == 0)
        index = bson_iter_as_int64(&e);
      else if (strcmp(k, "errmsg") == 0 && BSON_ITER_HOLDS_UTF8(&e))
        msg = bson_iter_utf8(&e, NULL);
    }
    if (index < 0 || (size_t)index >= nops)
      return 0;
    seen++;
    if (code == 11000)
      continue;
    item_t *item = &items[ops[index]];
    item->refused = 1;
    PT_ERROR("sync_bad_document",
             "task_id=%s code=%lld err=\"%s\" kept_in_redis=1", item->id,
             (long long)code, msg);
  }
  /* Every insert accounted for, written or refused: otherwise part of the
   * bulk never reached the server (a link lost between its batches) and
   * the whole is retried, its written documents then being duplicates. */
  int64_t inserted = -1;
  if (bson_iter_init_find(&it, reply, "nInserted"))
    inserted = bson_iter_as_int64(&it);
  return seen > 0 && inserted >= 0 && (size_t)inserted + (size_t)seen == nops;
}

/* Writes the batch as one unordered bulk insert keyed by _id = task id. A
 * task's final document never changes, so a duplicate key means an earlier
 * sync (a crashed consumer, a claimed entry) already wrote it: success.
 * Inserting rather than replacing also keeps clear of FerretDB 1.24, whose
 * SQLite backend hangs on a multi-statement update over existing
 * documents. */
static int write_docs(pt_sync_t *s, item_t *items, size_t n) {
  bson_t opts = BSON_INITIALIZER, reply;
  bson_error_t e;
  BSON_APPEND_BOOL(&opts, "ordered", false);
  mongoc_bulk_operation_t *bulk =
      mongoc_collection_create_bulk_operation_with_opts(s->tasks, &opts);
  bson_destroy(&opts);
  size_t ops = 0;
  size_t *op_item = malloc((n > 0 ? n : 1) * sizeof *op_item);
  if (op_item == NULL) {
    mongoc_bulk_operation_destroy(bulk);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    if (!items[i].has_doc || items[i].refused)
      continue;
    if (!mongoc_bulk_operation_insert_with_opts(bulk, &items[i].doc, NULL,
                                                &e)) {
      /* Its entry stays pending and its hash in Redis, where the task can
       * still be read; it comes back with every claim, logged each time,
       * until the document is repaired or written by hand. */
      items[i].refused = 1;
      PT_ERROR("sync_bad_document", "task_id=%s err=\"%s\" kept_in_redis=1",
               items[i].id, e.message);
    } else {
      op_item[ops++] = i;
    }
  }
  int ok = 1;
  if (ops > 0) {
    ok = mongoc_bulk_operation_execute(bulk, &reply, &e) != 0 ||
         settle_write_errors(&reply, items, op_item, ops);
    if (ok) /* a write retried while MongoDB is down counts once */
      atomic_fetch_add(&s->bulk_writes, 1);
    else
      PT_ERROR("sync_write_failed", "batch=%zu err=\"%s\"", ops, e.message);
    bson_destroy(&reply);
  }
  mongoc_bulk_operation_destroy(bulk);
  free(op_item);
  return ok ? 0 : -1;
}

/* Reads the replies of `cmds` pipelined commands: 0, or -1 if the link
 * failed or one answered an error (kept in s->reply_err). */
static int read_replies(pt_sync_t *s, size_t cmds) {
  int rc = 0;
  for (size_t i = 0; i < cmds; i++) {
    redisReply *r = NULL;
    if (redisGetReply(s->redis, (void **)&r) != REDIS_OK || r == NULL)
      return -1; /* the link is gone: the caller reconnects */
    if (r->type == REDIS_REPLY_ERROR && rc == 0) {
      snprintf(s->reply_err, sizeof s->reply_err, "%s", r->str);
      rc = -1;
    }
    freeReplyObject(r);
  }
  return rc;
}

/* Lets the synced hashes expire, then acknowledges and deletes the
 * entries: an entry is let go only once its hash will expire. */
static int ack_batch(pt_sync_t *s, item_t *items, size_t n) {
  long long grace = (long long)s->cfg->sync_evict_grace_s;
  size_t cmds = 0;
  if (n == 0)
    return 0;
  /* Set to expire only if still there: another sync consumer that
   * claimed the same entry may have evicted it already. EXPIRE alone:
   * Redis at maxmemory refuses a script's HSET (it once marked the hash
   * "synced" first), and the hash then never expired. */
  static const char mark_lua[] =
      "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
      "  redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
      "end\n"
      "return 0\n";
  for (size_t i = 0; i < n; i++) {
    if (items[i].has_doc && !items[i].refused) {
      redisAppendCommand(s->redis, "EVAL %s 1 %s%s %lld", mark_lua,
                         PT_KEY_TASK, items[i].id, grace);
      cmds += 1;
    }
  }
  if (read_replies(s, cmds) != 0)
    return -1;
  cmds = 0;
  /* One XACK and one XDEL for the whole batch. */
  const char **av = malloc((n + 3) * sizeof *av);
  if (av == NULL)
    return -1;
  av[0] = "XACK";
  av[1] = PT_STREAM_SYNC;
  av[2] = SYNC_GROUP;
  size_t nack = 0;
  for (size_t i = 0; i < n; i++)
    if (!items[i].refused)
      av[3 + nack++] = items[i].entry;
  if (nack > 0) {
    redisAppendCommandArgv(s->redis, (int)nack + 3, av, NULL);
    av[1] = "XDEL";
    av[2] = PT_STREAM_SYNC;
    redisAppendCommandArgv(s->redis, (int)nack + 2, av + 1, NULL);
    cmds += 2;
  }
  free(av);
  return read_replies(s, cmds);
}

/* Takes the entries of an XREADGROUP / XAUTOCLAIM entry list. */
static size_t collect(const redisReply *list, item_t *items, size_t max) {
  size_t n = 0;
  if (list == NULL || list->type != REDIS_REPLY_ARRAY)
    return 0;
  for (size_t i = 0; i < list->elements && n < max; i++) {
    const redisReply *e = list->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
      continue;
    memset(&items[n], 0, sizeof items[n]);
    snprintf(items[n].entry, sizeof items[n].entry, "%s", e->element[0]->str);
    const redisReply *f = e->element[1];
    /* A claimed entry that was deleted meanwhile has no fields. */
    if (f->type == REDIS_REPLY_ARRAY && f->elements == 2 &&
        f->element[1]->type == REDIS_REPLY_STRING)
      snprintf(items[n].id, sizeof items[n].id, "%s", f->element[1]->str);
    n++;
  }
  return n;
}

/* process() when asked to stop before MongoDB took the batch: its entries
 * stay pending, and the thread ends without reading more. */
#define SYNC_STOPPED_UNWRITTEN (-2)

/* Processes one batch until it is written (retrying while MongoDB is
 * down, unless asked to stop). Returns the batch size, -1 on a Redis
 * failure, or SYNC_STOPPED_UNWRITTEN. */
static long process(pt_sync_t *s, item_t *items, size_t n) {
  if (n == 0)
    return 0;
  if (load_docs(s, items, n) != 0)
    return -1;
  long rc = (long)n;
  int backoff = 250;
  while (write_docs(s, items, n) != 0) {
    /* While stopping, leave the entries pending: a restarted worker, or
     * another one (XAUTOCLAIM), writes them once MongoDB is back. */
    if (atomic_load(&s->stop)) {
      rc = SYNC_STOPPED_UNWRITTEN;
      goto out;
    }
    for (int slept = 0; slept < backoff && !atomic_load(&s->stop); slept += 50)
      sleep_ms(50);
    backoff = backoff < 5000 ? backoff * 2 : 5000;
  }
  if (ack_batch(s, items, n) != 0) {
    rc = -1;
    goto out;
  }
  long written = 0;
  for (size_t i = 0; i < n; i++)
    written += !items[i].refused;
  atomic_fetch_add(&s->written, written);
out:
  free_docs(items, n);
  return rc;
}

static long read_batch(pt_sync_t *s, item_t *items, size_t max,
                       const char *from, int block_ms) {
  redisReply *r;
  if (block_ms > 0)
    r = redisCommand(s->redis,
                     "XREADGROUP GROUP %s %s COUNT %d BLOCK %d STREAMS %s %s",
                     SYNC_GROUP, s->consumer, (int)max, block_ms, PT_STREAM_SYNC,
                     from);
  else
    r = redisCommand(s->redis,
                     "XREADGROUP GROUP %s %s COUNT %d STREAMS %s %s",
                     SYNC_GROUP, s->consumer, (int)max, PT_STREAM_SYNC, from);
  if (r == NULL)
    return -1;
  size_t n = 0;
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
      r->element[0]->type == REDIS_REPLY_ARRAY &&
      r->element[0]->elements == 2)
    n = collect(r->element[0]->element[1], items, max);
  if (r->type == REDIS_REPLY_ERROR) {
    /* NOGROUP: the stream was deleted and made again by the next XADD,
     * without the group. Taken as a failed command, it gets the caller's
     * pause and reconnect, which creates the group again; read again at
     * once, it spun and synced nothing more. */
    snprintf(s->reply_err, sizeof s->reply_err, "%s", r->str);
    freeReplyObject(r);
    return -1;
  }
  freeReplyObject(r);
  return process(s, items, n);
}

/* Claims entries a dead consumer left pending. Each claim goes on from
 * where the last one stopped (its cursor; "0-0" once the end is reached):
 * always started at "0-0", claims saw only the first entries of the
 * pending list, and entries refused again and again there (documents
 * MongoDB will not take) hid those behind them. */
static long claim_batch(pt_sync_t *s, item_t *items, size_t max) {
  redisReply *r = redisCommand(
      s->redis, "XAUTOCLAIM %s %s %s %lld %s COUNT %d", PT_STREAM_SYNC,
      SYNC_GROUP, s->consumer, (long long)s->cfg->sync_claim_idle_ms,
      s->claim_from, (int)max);
  if (r == NULL)
    return -1;
  if (r->type == REDIS_REPLY_ERROR) {
    /* Not "nothing to claim" (a Redis without XAUTOCLAIM, NOPERM, BUSY):
     * what dead consumers left would never be synced, and unsaid. */
    snprintf(s->reply_err, sizeof s->reply_err, "%s", r->str);
    freeReplyObject(r);
    return -1;
  }
  size_t n = 0;
  if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
    if (r->element[0]->type == REDIS_REPLY_STRING &&
        r->element[0]->len < sizeof s->claim_from)
      snprintf(s->claim_from, sizeof s->claim_from, "%s", r->element[0]->str);
    n = collect(r->element[1], items, max);
  }
  freeReplyObject(r);
  if (n > 0)
    PT_INFO("sync_claimed", "entries=%zu", n);
  return process(s, items, n);
}

/* The index `paytask replay` selects by: FAILED tasks created in a time
 * range. createIndexes does nothing when it exists; tried at the start and
 * every 30 s until it works (MongoDB may be down). */
static void ensure_index(pt_sync_t *s) {
  bson_t cmd = BSON_INITIALIZER, arr, ix, key;
  bson_error_t e;
  if (s->indexed || (s->last_index_ms != 0 &&
                     mono_ms() - s->last_index_ms < 30000))
    return;
  s->last_index_ms = mono_ms();
  BSON_APPEND_UTF8(&cmd, "createIndexes", "tasks");
  BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &arr);
  BSON_APPEND_DOCUMENT_BEGIN(&arr, "0", &ix);
  BSON_APPEND_DOCUMENT_BEGIN(&ix, "key", &key);
  BSON_APPEND_INT32(&key, "status", 1);
  BSON_APPEND_INT32(&key, "created_at", 1);
  bson_append_document_end(&ix, &key);
  BSON_APPEND_UTF8(&ix, "name", "status_1_created_at_1");
  bson_append_document_end(&arr, &ix);
  bson_append_array_end(&cmd, &arr);
  if (mongoc_collection_write_command_with_opts(s->tasks, &cmd, NULL, NULL,
                                                &e)) {
    s->indexed = 1;
  } else {
    PT_WARN("sync_index_failed", "err=\"%s\" retry_in_ms=30000", e.message);
  }
  bson_destroy(&cmd);
}

static void *sync_main(void *arg) {
  pt_sync_t *s = arg;
  size_t max = (size_t)s->cfg->sync_batch;
  item_t *items = calloc(max, sizeof *items);
  int own_pending_done = 0;
  /* Where the next read of this consumer's own pending entries starts:
   * past the last batch, so that an entry left pending (a refused
   * document, a stop while MongoDB is down) is not read again forever. */
  char pending_from[48] = "0";
  while (items != NULL) {
    int stopping = atomic_load(&s->stop);
    if (ensure_redis(s) != 0) {
      for (int slept = 0; slept < 1000 && !atomic_load(&s->stop); slept += 50)
        sleep_ms(50);
      if (atomic_load(&s->stop))
        break;
      continue;
    }
    long n;
    if (!stopping)
      ensure_index(s);
    if (!own_pending_done) {
      /* Entries this consumer read before a restart come first. */
      n = read_batch(s, items, max, pending_from, 0);
      if (n == 0)
        own_pending_done = 1;
      else if (n > 0)
        snprintf(pending_from, sizeof pending_from, "%s",
                 items[n - 1].entry);
    } else if (!stopping && mono_ms() - s->last_claim_ms > 5000) {
      s->last_claim_ms = mono_ms();
      n = claim_batch(s, items, max);
    } else {
      n = read_batch(s, items, max, ">", stopping ? 0 : 500);
    }
    if (n == SYNC_STOPPED_UNWRITTEN)
      break;
    if (n < 0) {
      PT_ERROR("sync_redis_failed", "err=\"%s\" retry_in_ms=1000",
               s->redis->errstr[0] ? s->redis->errstr
               : s->reply_err[0]   ? s->reply_err
                                   : "command failed");
      s->reply_err[0] = '\0';
      redisFree(s->redis);
      s->redis = NULL;
      for (int slept = 0; slept < 1000 && !atomic_load(&s->stop); slept += 50)
        sleep_ms(50);
      if (atomic_load(&s->stop))
        break;
      continue;
    }
    if (stopping && n == 0)
      break; /* drained */
    /* A short batch: let the stream fill a little before the next read, so
     * that each bulk write carries more documents. */
    for (int64_t slept = 0; n > 0 && (size_t)n < max &&
                            slept < s->cfg->sync_linger_ms &&
                            !atomic_load(&s->stop);
         slept += 10)
      sleep_ms(10);
  }
  free(items);
  return NULL;
}

pt_sync_t *pt_sync_start(const pt_config_t *cfg, const char *consumer,
                         pt_error_t *err) {
  bson_error_t e;
  pt_sync_t *s = calloc(1, sizeof *s);
  if (s == NULL)
    return NULL;
  s->cfg = cfg;
  snprintf(s->consumer, sizeof s->consumer, "%s", consumer);
  snprintf(s->claim_from, sizeof s->claim_from, "0-0");
  mongoc_uri_t *uri = mongoc_uri_new_with_error(cfg->mongodb_uri, &e);
  if (uri == NULL) {
    pt_error_set(err, PT_DOMAIN_MONGO, PT_ECONFIG, "mongodb.uri: %s",
                 e.message);
    free(s);
    return NULL;
  }
  const char *db = mongoc_uri_get_database(uri);
  s->mongo = mongoc_client_new_from_uri(uri);
  mongoc_client_set_appname(s->mongo, "paytask-sync");
  s->tasks = mongoc_client_get_collection(s->mongo, db ? db : "paytask",
                                          "tasks");
  mongoc_uri_destroy(uri);
  if (pthread_create(&s->thread, NULL, sync_main, s) != 0) {
    mongoc_collection_destroy(s->tasks);
    mongoc_client_destroy(s->mongo);
    free(s);
    pt_error_set(err, PT_DOMAIN_SYSTEM, PT_ENOMEM, "cannot start sync thread");
    return NULL;
  }
  return s;
}

void pt_sync_stop(pt_sync_t *s) {
  if (s == NULL)
    return;
  atomic_store(&s->stop, 1);
  pthread_join(s->thread, NULL);
  if (s->redis != NULL)
    redisFree(s->redis);
  mongoc_collection_destroy(s->tasks);
  mongoc_client_destroy(s->mongo);
  free(s);
}

long pt_sync_written(const pt_sync_t *s) { return atomic_load(&s->written); }

long pt_sync_bulk_writes(const pt_sync_t *s) {
  return atomic_load(&s->bulk_writes);
}
