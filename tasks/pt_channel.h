/* A payment channel is a strategy chosen by its code ("sim", "alipay",
 * "wechat"): how to build and sign a request and how to read an answer and
 * map it onto paytask's outcomes. The description (code, name) is kept
 * apart from the functions, and a channel is pure: it does no I/O, so the
 * runners drive the HTTP calls and every strategy can be tested on bytes.
 * Adding a channel means one file in tasks/channels/ with one table at its
 * bottom, registered in tasks/pt_registry.c. */
#ifndef PT_CHANNEL_H
#define PT_CHANNEL_H

#include <bson/bson.h>

#include "core/pt_config.h"
#include "core/pt_http_client.h"
#include "core/pt_task.h"
#include "runner/pt_runner.h"

typedef enum { PT_CHAN_CREATE = 0, PT_CHAN_QUERY, PT_CHAN_CLOSE } pt_chan_op_t;

#define PT_CHAN_MAX_HEADERS 8

/* A request to send; the strategy fills it, the runner sends it and then
 * calls pt_chan_req_clear. */
typedef struct {
  const char *method;
  char url[1024];
  char *body; /* bson_malloc'ed; MAY be NULL */
  size_t body_len;
  const char *headers[PT_CHAN_MAX_HEADERS + 1]; /* NULL-terminated */
  char header_buf[PT_CHAN_MAX_HEADERS][256];
} pt_chan_req_t;

/* What the channel said. */
typedef struct {
  pt_outcome_t outcome;
  int not_found; /* query: the trade does not exist at the channel */
  bson_t result; /* initialised by the caller; what the payer needs, or the
                    trade's state */
  char code[64];
  char message[240];
} pt_chan_res_t;

typedef struct pt_channel_ops {
  /* MUST: the code clients put in "channel". */
  const char *code;
  /* MUST: a name for people and logs. */
  const char *name;
  /* MUST: fills req for op on task t. Returns 0, or a negative code with
   * err filled when the request cannot be built (a configuration error). */
  int (*build)(pt_chan_op_t op, const pt_task_t *t, const pt_config_t *cfg,
               pt_chan_req_t *req, pt_error_t *err);
  /* MUST: reads the answer to op (or its transport failure: res->status
   * != 0) into out. A timeout, a 5xx or a "system busy" is UNKNOWN for a
   * create: the trade may exist. */
  void (*parse)(pt_chan_op_t op, const pt_task_t *t,
                const pt_http_response_t *res, pt_chan_res_t *out);
} pt_channel_ops_t;

void pt_chan_req_init(pt_chan_req_t *req);
void pt_chan_req_clear(pt_chan_req_t *req);
/* Adds "Name: value" to req's headers; returns PT_EINVAL when full. */
int pt_chan_req_header(pt_chan_req_t *req, const char *name, const char *value);
void pt_chan_res_set(pt_chan_res_t *out, pt_outcome_t o, const char *code,
                     const char *message);

#endif
