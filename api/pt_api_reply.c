#include "api/pt_api_reply.h"

#include <string.h>

#include "core/pt_log.h"

void pt_reply_error(pt_httpd_req_t *r, int status, const char *code,
                    const char *message) {
  bson_t doc = BSON_INITIALIZER, e;
  BSON_APPEND_DOCUMENT_BEGIN(&doc, "error", &e);
  BSON_APPEND_UTF8(&e, "code", code);
  BSON_APPEND_UTF8(&e, "message", message);
  bson_append_document_end(&doc, &e);
  pt_reply_doc(r, status, &doc);
  bson_destroy(&doc);
}

void pt_reply_doc(pt_httpd_req_t *r, int status, const bson_t *doc) {
  bson_iter_t it;
  bson_t out = BSON_INITIALIZER;
  size_t len;
  bson_iter_init(&it, doc);
  while (bson_iter_next(&it))
    if (strcmp(bson_iter_key(&it), "_id") != 0)
      bson_append_iter(&out, bson_iter_key(&it), -1, &it);
  char *json = bson_as_relaxed_extended_json(&out, &len);
  bson_destroy(&out);
  if (json == NULL) {
    /* A string that is not UTF-8 (libbson writes none): an error the
     * client can read rather than an empty body. A success cannot be
     * told, so it becomes a 500; a refusal keeps its status. */
    PT_ERROR("reply_not_json", "status=%d", status);
    pt_reply_error(r, status < 400 ? 500 : status, "internal_error",
                   "the answer could not be written as JSON");
    return;
  }
  pt_httpd_respond(r, status, "application/json", json, len, NULL);
  bson_free(json);
}
