#include "core/pt_mongo.h"

#include <stdlib.h>
#include <string.h>

#include "core/pt_log.h"

struct pt_mongo {
  uv_loop_t *loop;
  mongoc_client_pool_t *pool;
  mongoc_uri_t *uri;
  char db[128];
  size_t pending;
};

typedef struct {
  uv_work_t req;
  pt_mongo_t *m;
  pt_mongo_work_fn work;
  pt_mongo_done_cb done;
  void *arg;
  int status;
  pt_error_t err;
} job_t;

/* libmongoc's own messages, in our one-line format. FerretDB does not know
 * endSessions, which the driver sends at shutdown: that one is debug. */
static void on_mongoc_log(mongoc_log_level_t level, const char *domain,
                          const char *message, void *arg) {
  pt_log_level_t l = PT_LOG_DEBUG;
  (void)arg;
  if (level <= MONGOC_LOG_LEVEL_CRITICAL)
    l = PT_LOG_ERROR;
  else if (level == MONGOC_LOG_LEVEL_WARNING &&
           strstr(message, "endSessions") == NULL)
    l = PT_LOG_WARN;
  PT_LOG(l, "mongoc", "domain=%s msg=\"%s\"", domain, message);
}

void pt_mongo_global_init(void) {
  mongoc_init();
  mongoc_log_set_handler(on_mongoc_log, NULL);
}
void pt_mongo_global_cleanup(void) { mongoc_cleanup(); }

pt_mongo_t *pt_mongo_new(uv_loop_t *loop, const char *uri, pt_error_t *err) {
  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(uri, &e);
  if (u == NULL) {
    pt_error_set(err, PT_DOMAIN_MONGO, PT_EINVAL, "mongodb URI: %s",
                 e.message);
    return NULL;
  }
  /* A dead server fails a request instead of hanging it. */
  if (!mongoc_uri_has_option(u, MONGOC_URI_SERVERSELECTIONTIMEOUTMS))
    mongoc_uri_set_option_as_int32(u, MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                   5000);
  pt_mongo_t *m = calloc(1, sizeof *m);
  if (m == NULL) {
    mongoc_uri_destroy(u);
    return NULL;
  }
  m->loop = loop;
  m->uri = u;
  const char *db = mongoc_uri_get_database(u);
  snprintf(m->db, sizeof m->db, "%s", db ? db : "paytask");
  m->pool = mongoc_client_pool_new(u);
  mongoc_client_pool_set_error_api(m->pool, MONGOC_ERROR_API_VERSION_2);
  mongoc_client_pool_set_appname(m->pool, "paytask");
  return m;
}

static void run_work(uv_work_t *req) {
  job_t *j = req->data;
  mongoc_client_t *c = mongoc_client_pool_pop(j->m->pool);
  j->status = j->work(c, j->arg, &j->err);
  mongoc_client_pool_push(j->m->pool, c);
}

static void after_work(uv_work_t *req, int status) {
  job_t *j = req->data;
  j->m->pending--;
  if (status == UV_ECANCELED && j->status == 0)
    j->status = pt_error_set(&j->err, PT_DOMAIN_MONGO, PT_ECANCELED,
                             "canceled");
  j->done(j->status, j->status != 0 ? &j->err : NULL, j->arg);
  free(j);
}

int pt_mongo_submit(pt_mongo_t *m, pt_mongo_work_fn work, pt_mongo_done_cb done,
                    void *arg) {
  job_t *j = calloc(1, sizeof *j);
  if (j == NULL)
    return PT_ENOMEM;
  j->m = m;
  j->work = work;
  j->done = done;
  j->arg = arg;
  j->req.data = j;
  int rc = uv_queue_work(m->loop, &j->req, run_work, after_work);
  if (rc != 0) {
    free(j);
    return PT_EIO;
  }
  m->pending++;
  return 0;
}

const char *pt_mongo_dbname(const pt_mongo_t *m) { return m->db; }
size_t pt_mongo_pending(const pt_mongo_t *m) { return m->pending; }

void pt_mongo_destroy(pt_mongo_t *m) {
  if (m == NULL)
    return;
  mongoc_client_pool_destroy(m->pool);
  mongoc_uri_destroy(m->uri);
  free(m);
}
