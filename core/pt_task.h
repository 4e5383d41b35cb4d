/* The task model: what a client submits, how it is checked, and its JSON
 * forms (the spec that travels in broker messages and Redis, and the full
 * answer of the api). JSON is read and written with libbson only. */
#ifndef PT_TASK_H
#define PT_TASK_H

#include "core/pt_net.h"

#include <bson/bson.h>
#include <stdint.h>

#include "core/pt_error.h"

#define PT_OUT_TRADE_NO_MAX 64
#define PT_SUBJECT_MAX 256
#define PT_URL_MAX 1024
#define PT_PARAMS_MAX 8192
/* Levels of objects and arrays params may nest, itself included. */
#define PT_PARAMS_DEPTH 32
#define PT_RETRY_MAX 5
/* Scheduled kinds (query, close, notify) follow their own schedules,
 * longer than a client's retries. */
#define PT_ATTEMPT_MAX 40
#define PT_RETRY_DEFAULT 3

typedef enum {
  PT_ST_PENDING = 0,
  PT_ST_RUNNING,
  PT_ST_RETRY_WAIT,
  PT_ST_SUCCEEDED,
  PT_ST_FAILED,
  PT_ST_CANCELLED
} pt_status_t;

const char *pt_status_name(pt_status_t s);
/* Returns -1 if unknown. */
int pt_status_parse(const char *s);
int pt_status_final(pt_status_t s);

typedef struct {
  uint64_t id;
  char id_str[21];
  char type[16];
  char channel[16];
  char out_trade_no[PT_OUT_TRADE_NO_MAX + 1];
  int64_t amount; /* minor units */
  char currency[4];
  /* Owned (pt_task_destroy frees them) and sized to fit: a worker holds
   * a task per call in flight, and fixed buffers of the largest sizes
   * allowed (1.3 KB) were over half of each one's memory. */
  char *subject;    /* NULL only before a parse */
  char *notify_url; /* NULL when absent */
  int need_retry;
  int retry_times;
  bson_t params; /* empty document when absent */
  int has_params;
  int64_t created_at_ms;
  int attempt; /* in a message: the attempt it asks for (1-based) */
  uint64_t replay_of; /* 0 unless this task replays another */
  int replay_count;   /* the how-many-th replay of replay_of */
  int64_t expire_in;  /* payment window in seconds; 0: trade.expire_in */
  char client[32];    /* whose task: the name of the submitting token's
                         client ("default" when unnamed) */
  uint64_t parent_id; /* query, close, notify: the pay task they follow */
} pt_task_t;

/* An input error as the api reports it: a stable code and a sentence. */
typedef struct {
  const char *code; /* e.g. "invalid_amount" */
  char message[240];
} pt_input_error_t;

typedef enum {
  PT_PARSE_SUBMIT,  /* a client's body: no task_id, created_at or attempt */
  PT_PARSE_MESSAGE  /* a broker message: task_id, created_at and attempt required */
} pt_parse_mode_t;

void pt_task_init(pt_task_t *t);
void pt_task_destroy(pt_task_t *t); /* frees params and the strings; t
                                      itself is the caller's */

/* Replaces *field (subject, notify_url) with a copy of s (NULL: none);
 * returns PT_ENOMEM or 0. */
int pt_task_set_str(char **field, const char *s);

/* Parses and checks JSON text into t (initialised by this call). On failure
 * returns PT_EINVAL and fills *ie; t is then destroyed already. max_amount
 * bounds the amount (0: no bound beyond int64). */
int pt_task_parse(const char *json, size_t len, pt_parse_mode_t mode,
                  int64_t max_amount, pt_task_t *t, pt_input_error_t *ie);

/* A submitted notify_url that names a refused address outright (an IP
 * literal or localhost, see pt_net_refused_host): PT_EINVAL with *ie
 * filled, nothing else checked. A host name is checked by the worker when
 * it connects. 0 without a notify_url. */
int pt_task_check_notify_url(const pt_task_t *t, const pt_net_list_t *allow,
                             pt_input_error_t *ie);

/* Parses text that must be exactly one JSON object (no trailing data) into
 * *doc (initialised by this call); returns 0 or PT_EINVAL with *ie filled. */
int pt_json_parse_object(const char *json, size_t len, bson_t *doc,
                         pt_input_error_t *ie);

/* Appends the spec fields (what the client asked, plus task_id and
 * created_at) to doc, in the canonical order. */
void pt_task_append_spec(const pt_task_t *t, bson_t *doc);

/* The spec as JSON text (bson_free the result); with attempt > 0 it also
 * carries "attempt", which makes it a broker message. */
char *pt_task_spec_json(const pt_task_t *t, int attempt, size_t *len);

/* Relaxed extended JSON of a document (bson_free the result). */
char *pt_json_of(const bson_t *doc, size_t *len);

#endif
