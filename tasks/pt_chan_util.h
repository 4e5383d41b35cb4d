/* What the channel strategies in tasks/channels/ have in common beyond
 * their table: JSON objects read strictly, keys loaded from PEM files, URL
 * encoding, Beijing time, the payment window, and the outcomes every HTTP
 * channel maps alike (text is cut at a character boundary by core's
 * pt_utf8_copy). None of it does I/O but pt_chan_load_key, which reads a
 * file (for init only). */
#ifndef PT_CHAN_UTIL_H
#define PT_CHAN_UTIL_H

#include <bson/bson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/pt_buf.h"
#include "core/pt_config.h"
#include "core/pt_crypto.h"
#include "core/pt_http_client.h"
#include "core/pt_task.h"
#include "tasks/pt_channel.h"

/* ---- text ---- */

/* Appends s percent-encoded for a form, a path or a query, keeping RFC
 * 3986's unreserved characters. Returns 0 or PT_ENOMEM. */
int pt_chan_url_encode(pt_buf_t *out, const char *s);

/* How a channel writes a time in Beijing time (UTC+8, which has no summer
 * time). */
typedef enum {
  PT_CHAN_TIME_PLAIN = 0, /* "2024-01-31 18:30:00" (Alipay) */
  PT_CHAN_TIME_RFC3339    /* "2024-01-31T18:30:00+08:00" (WeChat Pay) */
} pt_chan_time_fmt_t;

/* Writes unix_s in Beijing time as fmt says. Returns 0, or PT_EINVAL when
 * it does not fit in buf. */
int pt_chan_beijing_time(int64_t unix_s, pt_chan_time_fmt_t fmt, char *buf,
                         size_t len);

/* ---- documents ---- */

/* The string at key in doc, where a dotted key names a descendant
 * ("resource.nonce"); NULL when absent or not a string. */
const char *pt_chan_doc_str(const bson_t *doc, const char *key);

/* The string params.<key> of t (key is a top-level name, never dotted), or
 * NULL when t has no such string. */
const char *pt_chan_param_str(const pt_task_t *t, const char *key);

/* Parses s[0..len) that must be one JSON object with unique keys, whose
 * strings are UTF-8 without NUL. With nested set, every object within it
 * must have unique keys too (objects in arrays are not checked). doc is
 * initialised either way and left empty on failure; s MAY be NULL, which
 * is a failure. Returns 0 or PT_EINVAL. */
int pt_chan_parse_object(const char *s, size_t len, int nested, bson_t *doc);

/* ---- keys ---- */

/* What pt_chan_load_key expects to find in a file. */
typedef enum {
  PT_CHAN_KEY_PRIVATE = 0,   /* a PEM private key */
  PT_CHAN_KEY_PUBLIC,        /* a PEM public key */
  PT_CHAN_KEY_PUBLIC_OR_CERT /* a PEM public key, or a certificate that
                                holds one */
} pt_chan_key_kind_t;

/* Loads the key of the given kind from the PEM file at path (64 KiB at
 * most). It blocks: call it from init only. name is the setting that gave
 * path, for the messages ("channel.alipay.private_key_file"). Returns 0,
 * or PT_ECONFIG (PT_ENOMEM) with err filled; *key is NULL on failure. */
int pt_chan_load_key(const char *name, const char *path,
                     pt_chan_key_kind_t kind, pt_crypto_key_t **key,
                     pt_error_t *err);

/* The shipped development credentials (conf/dev-keys, the sample APIv3
 * key) are public: whoever has the repository can sign a "paid"
 * notification that a channel configured with them accepts. Returns 1 and
 * names the setting in `what` when a configured channel uses one, else 0
 * (a key that cannot be read is left to the channel's init to report).
 * It blocks (reads files): call it at start only. */
int pt_chan_dev_credentials(const pt_config_t *cfg, char *what, size_t len);

/* ---- requests ---- */

/* Clears req at the start of a build, as pt_chan_req_init does, but keeps
 * the time to sign with that the caller set in req->now_s (0: now). */
void pt_chan_req_reset(pt_chan_req_t *req);

/* The time (Unix seconds) at which the payer's window closes: when the task
 * was created plus its expire_in, or trade.expire_in when it has none;
 * now_s when the creation time is unknown. An absolute time, so that a
 * create retried later never gives the payer a longer window than the one
 * paytask closes the trade at. */
int64_t pt_chan_trade_expiry(const pt_task_t *t, const pt_config_t *cfg,
                             int64_t now_s);

/* ---- answers ---- */

/* Starts a parse: says nothing yet of the trade (not_found 0, state
 * UNKNOWN, no trade_no, amount -1). */
void pt_chan_res_reset_trade(pt_chan_res_t *out);

/* Maps what is no answer of the channel's: a transport failure
 * (res->status != 0) or a server error (5xx). A refused connection means
 * nothing reached the channel (RETRY); a timeout, a broken exchange or a
 * 5xx leave the outcome UNKNOWN, since a create may have made the trade.
 * who names the channel in messages ("WeChat Pay"). Returns 1 when it set
 * out, 0 when res is an answer for the strategy to read. */
int pt_chan_res_unanswered(pt_chan_res_t *out, const pt_http_response_t *res,
                           const char *who);

/* The answer cannot be read: drops what out->result holds so far and sets
 * the outcome UNKNOWN with the code bad_channel_reply and why. */
void pt_chan_res_bad_reply(pt_chan_res_t *out, const char *why);

/* A successful answer naming the trade's amount (a query's, a close's)
 * must name the task's: otherwise the channel's trade under this
 * out_trade_no is not the one the task asked for, and nothing may be
 * settled from it. Logs an error and sets the outcome UNKNOWN with the
 * code amount_mismatch (retried, then FAILED for a person to look at);
 * returns -1 then, 0 when the answer stands. */
int pt_chan_res_check_amount(const pt_task_t *t, const char *channel,
                             pt_chan_res_t *out);

#endif
