/* JSON answers of the api, built with libbson. */
#ifndef PT_API_REPLY_H
#define PT_API_REPLY_H

#include <bson/bson.h>

#include "core/pt_httpd.h"

/* {"error": {"code": code, "message": message}} with the given status. */
void pt_reply_error(pt_httpd_req_t *r, int status, const char *code,
                    const char *message);
/* A document as JSON, skipping a top-level "_id". One that libbson cannot
 * write (a string that is not UTF-8) is answered as an internal_error, with
 * status 500 instead of a success status. */
void pt_reply_doc(pt_httpd_req_t *r, int status, const bson_t *doc);

#endif
