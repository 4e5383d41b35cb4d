#include "tasks/pt_channel.h"

#include <stdio.h>
#include <string.h>

#include "tasks/pt_chan_util.h"

void pt_chan_req_init(pt_chan_req_t *req) { memset(req, 0, sizeof *req); }

void pt_chan_req_clear(pt_chan_req_t *req) {
  bson_free(req->body);
  req->body = NULL;
}

int pt_chan_req_header(pt_chan_req_t *req, const char *name,
                       const char *value) {
  for (int i = 0; i < PT_CHAN_MAX_HEADERS; i++) {
    if (req->headers[i] != NULL)
      continue;
    int n = snprintf(req->header_buf[i], sizeof req->header_buf[i], "%s: %s",
                     name, value);
    if (n < 0 || (size_t)n >= sizeof req->header_buf[i])
      return PT_EINVAL;
    req->headers[i] = req->header_buf[i];
    req->headers[i + 1] = NULL;
    return 0;
  }
  return PT_EINVAL;
}

void pt_chan_res_set(pt_chan_res_t *out, pt_outcome_t o, const char *code,
                     const char *message) {
  out->outcome = o;
  pt_utf8_copy(out->code, sizeof out->code, code ? code : "");
  pt_utf8_copy(out->message, sizeof out->message, message ? message : "");
}

static const char *const trade_names[] = {"UNKNOWN", "NOTPAY",  "PAYING",
                                          "SUCCEEDED", "CLOSED", "FAILED"};

const char *pt_trade_state_name(pt_trade_state_t s) {
  return (unsigned)s < sizeof trade_names / sizeof trade_names[0]
             ? trade_names[s]
             : "UNKNOWN";
}

pt_trade_state_t pt_trade_state_parse(const char *name) {
  for (size_t i = 0; i < sizeof trade_names / sizeof trade_names[0]; i++)
    if (strcmp(trade_names[i], name) == 0)
      return (pt_trade_state_t)i;
  return PT_TRADE_UNKNOWN;
}

int pt_trade_state_final(pt_trade_state_t s) {
  return s == PT_TRADE_SUCCEEDED || s == PT_TRADE_CLOSED ||
         s == PT_TRADE_FAILED;
}
