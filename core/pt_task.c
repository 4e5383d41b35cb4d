#include "core/pt_task.h"

#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/pt_id.h"

static const char *const status_names[] = {"PENDING",   "RUNNING",
                                           "RETRY_WAIT", "SUCCEEDED",
                                           "FAILED",    "CANCELLED"};

const char *pt_status_name(pt_status_t s) {
  return (unsigned)s < 6 ? status_names[s] : "UNKNOWN";
}

int pt_status_parse(const char *s) {
  for (int i = 0; i < 6; i++)
    if (strcmp(s, status_names[i]) == 0)
      return i;
  return -1;
}

int pt_status_final(pt_status_t s) {
  return s == PT_ST_SUCCEEDED || s == PT_ST_FAILED || s == PT_ST_CANCELLED;
}

void pt_task_init(pt_task_t *t) {
  memset(t, 0, sizeof *t);
  bson_init(&t->params);
  t->need_retry = 1;
  t->retry_times = PT_RETRY_DEFAULT;
}

void pt_task_destroy(pt_task_t *t) {
  if (t == NULL)
    return;
  bson_destroy(&t->params);
  bson_free(t->subject);
  bson_free(t->notify_url);
  t->subject = t->notify_url = NULL;
}

int pt_task_set_str(char **field, const char *s) {
  char *copy = NULL;
  if (s != NULL && (copy = bson_strdup(s)) == NULL)
    return PT_ENOMEM;
  bson_free(*field);
  *field = copy;
  return 0;
}

static int fail(pt_input_error_t *ie, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The message echoes what the client sent (a key, say), so it may be cut:
 * at a character boundary, or the JSON of the answer could not be written.
 * It is formatted with one byte more than it keeps, for the cut to see
 * whether that byte continues a character. */
static int fail(pt_input_error_t *ie, const char *code, const char *fmt, ...) {
  if (ie != NULL) {
    char full[sizeof ie->message + 1];
    va_list ap;
    ie->code = code;
    va_start(ap, fmt);
    vsnprintf(full, sizeof full, fmt, ap);
    va_end(ap);
    pt_utf8_copy(ie->message, sizeof ie->message, full);
  }
  return PT_EINVAL;
}

int pt_json_parse_object(const char *json, size_t len, bson_t *doc,
                         pt_input_error_t *ie) {
  size_t i = 0;
  bson_init(doc);
  while (i < len && (json[i] == ' ' || json[i] == '\t' || json[i] == '\r' ||
                     json[i] == '\n'))
    i++;
  if (i == len || json[i] != '{')
    return fail(ie, "invalid_json", "the body must be one JSON object");
  /* A reader, unlike bson_init_from_json, tells us whether anything follows
   * the first document, so "{} {}" is refused. */
  bson_json_reader_t *r = bson_json_data_reader_new(false, 0);
  bson_error_t e;
  bson_json_data_reader_ingest(r, (const uint8_t *)json, len);
  int rc = bson_json_reader_read(r, doc, &e);
  if (rc != 1) {
    bson_json_reader_destroy(r);
    bson_destroy(doc);
    bson_init(doc); /* empty and inline: owns no memory */
    return fail(ie, "invalid_json", "the body is not valid JSON: %s",
                rc < 0 ? e.message : "empty");
  }
  bson_t extra = BSON_INITIALIZER;
  rc = bson_json_reader_read(r, &extra, &e);
  bson_destroy(&extra);
  bson_json_reader_destroy(r);
  if (rc != 0) {
    bson_destroy(doc);
    bson_init(doc); /* empty and inline: owns no memory */
    return fail(ie, "invalid_json", "the body must hold exactly one JSON object");
  }
  return 0;
}

/* Copies a string field, checking type, UTF-8, NULs and length. */
static int get_string(bson_iter_t *it, const char *name, char *out, size_t max,
                      size_t min, pt_input_error_t *ie) {
  uint32_t n;
  if (!BSON_ITER_HOLDS_UTF8(it))
    return fail(ie, "invalid_type", "%s must be a string", name);
  const char *s = bson_iter_utf8(it, &n);
  if (!bson_utf8_validate(s, n, false))
    return fail(ie, "invalid_type", "%s must be valid UTF-8 without NUL",
                name);
  if (n > max)
    return fail(ie, "field_too_long", "%s is longer than %zu bytes", name,
                max);
  if (n < min)
    return fail(ie, "missing_field", "%s must not be empty", name);
  memcpy(out, s, n);
  out[n] = '\0';
  return 0;
}

/* get_string into an owned copy of the string's own size (the message
 * bounds it; get_string makes every check). */
static int get_string_dup(bson_iter_t *it, const char *name, char **out,
                          size_t max, size_t min, pt_input_error_t *ie) {
  uint32_t n;
  if (!BSON_ITER_HOLDS_UTF8(it))
    return fail(ie, "invalid_type", "%s must be a string", name);
  bson_iter_utf8(it, &n);
  char *s = bson_malloc((size_t)n + 1);
  int rc = get_string(it, name, s, max, min, ie);
  if (rc != 0) {
    bson_free(s);
    return rc;
  }
  bson_free(*out);
  *out = s;
  return 0;
}

static int is_ident(const char *s) {
  if (*s == '\0')
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
      return 0;
  return 1;
}

static int check_out_trade_no(const char *s) {
  /* The intersection of what Alipay and WeChat Pay accept. */
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.' ||
          *s == '|' || *s == '*'))
      return 0;
  return 1;
}

static int get_int(bson_iter_t *it, const char *name, int64_t *out,
                   const char *code, pt_input_error_t *ie) {
  if (BSON_ITER_HOLDS_INT32(it))
    *out = bson_iter_int32(it);
  else if (BSON_ITER_HOLDS_INT64(it))
    *out = bson_iter_int64(it);
  else
    return fail(ie, code, "%s must be an integer", name);
  return 0;
}

static int parse_retry(bson_iter_t *it, pt_task_t *t, pt_input_error_t *ie) {
  bson_iter_t c;
  if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &c))
    return fail(ie, "invalid_retry", "retry must be an object");
  int seen_need = 0, seen_times = 0;
  while (bson_iter_next(&c)) {
    const char *k = bson_iter_key(&c);
    if (strcmp(k, "need_retry") == 0 && !seen_need++) {
      if (!BSON_ITER_HOLDS_BOOL(&c))
        return fail(ie, "invalid_retry", "retry.need_retry must be a boolean");
      t->need_retry = bson_iter_bool(&c);
    } else if (strcmp(k, "retry_times") == 0 && !seen_times++) {
      int64_t v = 0;
      if (get_int(&c, "retry.retry_times", &v, "invalid_retry", ie) != 0)
        return PT_EINVAL;
      if (v < 0 || v > PT_RETRY_MAX)
        return fail(ie, "invalid_retry",
                    "retry.retry_times must be between 0 and %d, got %lld",
                    PT_RETRY_MAX, (long long)v);
      t->retry_times = (int)v;
    } else {
      return fail(ie, "invalid_retry", "retry.%s is not a known field", k);
    }
  }
  return 0;
}

/* Refuses, in params and every object or array within it, what the
 * MongoDB server (FerretDB among them) would refuse in the task's record
 * later, when nothing can be said to the client any more, and the task
 * would stay in Redis unsynced:
 * - a key that is empty, starts with '$' or holds a '.' (a key with a
 *   NUL never gets here: the JSON reader refuses it);
 * - a value that is not JSON's (a string, a number, true, false, null,
 *   an object, an array): extended JSON's $oid, $date, $binary, $regex,
 *   $numberDecimal and the like; a string holding a NUL; NaN or an
 *   infinity; an array directly inside an array.
 * Nesting is bounded too, which bounds this recursion. */
static int check_params(bson_iter_t *it, int depth, int in_array,
                        pt_input_error_t *ie) {
  if (depth > PT_PARAMS_DEPTH)
    return fail(ie, "invalid_params", "params nests more than %d levels",
                PT_PARAMS_DEPTH);
  while (bson_iter_next(it)) {
    const char *k = bson_iter_key(it);
    bson_iter_t child;
    uint32_t n;
    const char *str;
    if (!in_array && (k[0] == '\0' || k[0] == '$' || strchr(k, '.') != NULL))
      return fail(ie, "invalid_params",
                  "a key in params must not be empty, start with \"$\" or "
                  "hold \".\": \"%s\"",
                  k);
    switch (bson_iter_type(it)) {
    case BSON_TYPE_UTF8:
      str = bson_iter_utf8(it, &n);
      if (memchr(str, '\0', n) != NULL)
        return fail(ie, "invalid_params",
                    "a string in params holds a NUL character (\\u0000)");
      continue;
    case BSON_TYPE_DOUBLE:
      if (!isfinite(bson_iter_double(it)))
        return fail(ie, "invalid_params",
                    "a number in params is NaN or infinite");
      continue;
    case BSON_TYPE_INT32:
    case BSON_TYPE_INT64:
    case BSON_TYPE_BOOL:
    case BSON_TYPE_NULL:
      continue;
    case BSON_TYPE_ARRAY:
      if (in_array)
        return fail(ie, "invalid_params",
                    "params holds an array directly inside an array, which "
                    "the task store cannot keep");
      break;
    case BSON_TYPE_DOCUMENT:
      break;
    default:
      return fail(ie, "invalid_params",
                  "a value in params (at \"%s\") is not a JSON string, "
                  "number, boolean, null, object or array",
                  k);
    }
    if (!bson_iter_recurse(it, &child))
      return fail(ie, "invalid_params", "params is not a valid object");
    if (check_params(&child, depth + 1, BSON_ITER_HOLDS_ARRAY(it), ie) != 0)
      return PT_EINVAL;
  }
  return 0;
}

/* url's host as libcurl parses it (curl_free it), or NULL. */
static char *url_host(const char *url) {
  CURLU *u = curl_url();
  char *host = NULL;
  if (u == NULL || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    host = NULL;
  curl_url_cleanup(u);
  return host;
}

/* 1 if libcurl parses url into a scheme and a host. */
static int url_usable(const char *url) {
  char *host = url_host(url);
  int ok = host != NULL && host[0] != '\0';
  curl_free(host);
  return ok;
}

int pt_task_check_notify_url(const pt_task_t *t, const pt_net_list_t *allow,
                             pt_input_error_t *ie) {
  if (t->notify_url == NULL)
    return 0;
  char *host = url_host(t->notify_url);
  const char *kind = host != NULL ? pt_net_refused_host(host, allow) : NULL;
  int rc = kind == NULL ? 0
                        : fail(ie, "invalid_notify_url",
                               "notify_url names a %s address (%s), which "
                               "notify.allow_networks does not list",
                               kind, host);
  curl_free(host);
  return rc;
}

/* The top-level fields, one bit each. parse_fields dispatches on the bit,
 * and names a missing required field from the table below, the first in
 * its order. */
enum {
  F_TYPE = 1 << 0,
  F_CHANNEL = 1 << 1,
  F_OTN = 1 << 2,
  F_AMOUNT = 1 << 3,
  F_CURRENCY = 1 << 4,
  F_SUBJECT = 1 << 5,
  F_ID = 1 << 6,
  F_CREATED = 1 << 7,
  F_ATTEMPT = 1 << 8,
  F_NOTIFY_URL = 1 << 9,
  F_RETRY = 1 << 10,
  F_PARAMS = 1 << 11,
  F_EXPIRE_IN = 1 << 12,
  F_CREATED_AT = 1 << 13,
  F_REPLAY_COUNT = 1 << 14,
  F_CLIENT = 1 << 15,
  F_PARENT_ID = 1 << 16,
  F_REPLAY_OF = 1 << 17
};

static const struct {
  const char *name;
  unsigned bit;
  int message_only; /* a broker message's field, unknown in a submit */
} fields[] = {{"type", F_TYPE, 0},
              {"channel", F_CHANNEL, 0},
              {"out_trade_no", F_OTN, 0},
              {"amount", F_AMOUNT, 0},
              {"currency", F_CURRENCY, 0},
              {"subject", F_SUBJECT, 0},
              {"notify_url", F_NOTIFY_URL, 0},
              {"retry", F_RETRY, 0},
              {"params", F_PARAMS, 0},
              {"expire_in", F_EXPIRE_IN, 0},
              {"task_id", F_ID, 1},
              {"created_at_ms", F_CREATED, 1},
              {"created_at", F_CREATED_AT, 1},
              {"attempt", F_ATTEMPT, 1},
              {"replay_count", F_REPLAY_COUNT, 1},
              {"client", F_CLIENT, 1},
              {"parent_id", F_PARENT_ID, 1},
              {"replay_of", F_REPLAY_OF, 1}};

/* The bit of a known field, 0 for a key this mode does not know. The table
 * is small and fixed, so a body is checked in time linear in its keys: an
 * unknown key is refused as it comes, a known one given twice by its bit.
 * (Comparing every key with every other one took 130 s for a 1 MB body of
 * distinct keys, on the loop thread.) */
static unsigned field_bit(const char *k, pt_parse_mode_t mode) {
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (strcmp(k, fields[i].name) == 0)
      return mode == PT_PARSE_SUBMIT && fields[i].message_only ? 0
                                                               : fields[i].bit;
  return 0;
}

static int parse_fields(const bson_t *doc, pt_parse_mode_t mode,
                        int64_t max_amount, pt_task_t *t,
                        pt_input_error_t *ie) {
  bson_iter_t it;
  unsigned seen = 0;

  bson_iter_init(&it, doc);
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    unsigned bit = field_bit(k, mode);
    int64_t v = 0;
    if (bit == 0)
      return fail(ie, "unknown_field", "\"%s\" is not a known field", k);
    if (seen & bit)
      return fail(ie, "invalid_json", "%s appears twice", k);
    seen |= bit;
    switch (bit) {
    case F_TYPE:
      if (get_string(&it, "type", t->type, sizeof t->type - 1, 1, ie) != 0)
        return PT_EINVAL;
      if (!is_ident(t->type))
        return fail(ie, "invalid_task_type", "unknown task type \"%s\"",
                    t->type);
      break;
    case F_CHANNEL:
      if (get_string(&it, "channel", t->channel, sizeof t->channel - 1, 1,
                     ie) != 0)
        return PT_EINVAL;
      if (!is_ident(t->channel))
        return fail(ie, "invalid_channel", "unknown channel \"%s\"",
                    t->channel);
      break;
    case F_OTN:
      if (get_string(&it, "out_trade_no", t->out_trade_no,
                     PT_OUT_TRADE_NO_MAX, 1, ie) != 0)
        return PT_EINVAL;
      if (!check_out_trade_no(t->out_trade_no))
        return fail(ie, "invalid_out_trade_no",
                    "out_trade_no may hold only letters, digits and _-.|*");
      break;
    case F_AMOUNT:
      if (get_int(&it, "amount", &v, "invalid_amount", ie) != 0)
        return fail(ie, "invalid_amount",
                    "amount must be an integer number of minor units "
                    "(e.g. 1299 for 12.99)");
      if (v <= 0)
        return fail(ie, "invalid_amount", "amount must be greater than 0");
      if (max_amount > 0 && v > max_amount)
        return fail(ie, "invalid_amount", "amount must not exceed %lld",
                    (long long)max_amount);
      t->amount = v;
      break;
    case F_CURRENCY:
      if (get_string(&it, "currency", t->currency, 3, 1, ie) != 0)
        return fail(ie, "invalid_currency",
                    "currency must be an ISO 4217 code such as \"CNY\"");
      if (strlen(t->currency) != 3 || t->currency[0] < 'A' ||
          t->currency[0] > 'Z' || t->currency[1] < 'A' ||
          t->currency[1] > 'Z' || t->currency[2] < 'A' || t->currency[2] > 'Z')
        return fail(ie, "invalid_currency",
                    "currency must be three capital letters (ISO 4217)");
      break;
    case F_SUBJECT:
      if (get_string_dup(&it, "subject", &t->subject, PT_SUBJECT_MAX, 1,
                         ie) != 0)
        return PT_EINVAL;
      break;
    case F_NOTIFY_URL:
      if (BSON_ITER_HOLDS_NULL(&it))
        continue;
      if (get_string_dup(&it, "notify_url", &t->notify_url, PT_URL_MAX, 1,
                         ie) != 0)
        return PT_EINVAL;
      if (strncmp(t->notify_url, "http://", 7) != 0 &&
          strncmp(t->notify_url, "https://", 8) != 0)
        return fail(ie, "invalid_notify_url",
                    "notify_url must be an http:// or https:// URL");
      /* A client's URL is parsed as the worker's libcurl will parse it,
       * so that one it cannot call is refused now, not after hours of
       * retries. A message is not held to it: a task accepted before
       * this check must still run. */
      if (mode == PT_PARSE_SUBMIT && !url_usable(t->notify_url))
        return fail(ie, "invalid_notify_url",
                    "notify_url is not a URL with a host that can be called");
      break;
    case F_RETRY:
      if (parse_retry(&it, t, ie) != 0)
        return PT_EINVAL;
      break;
    case F_PARAMS: {
      uint32_t n;
      const uint8_t *data;
      if (BSON_ITER_HOLDS_NULL(&it))
        continue;
      if (!BSON_ITER_HOLDS_DOCUMENT(&it))
        return fail(ie, "invalid_params", "params must be an object");
      bson_iter_document(&it, &n, &data);
      if (n > PT_PARAMS_MAX)
        return fail(ie, "field_too_long", "params is larger than %d bytes",
                    PT_PARAMS_MAX);
      bson_t view;
      bson_iter_t keys;
      if (!bson_init_static(&view, data, n) || !bson_iter_init(&keys, &view))
        return fail(ie, "invalid_params", "params is not a valid object");
      if (check_params(&keys, 1, 0, ie) != 0)
        return PT_EINVAL;
      /* Own a copy (doc is freed before t). A bson_t is never copied by
       * value: an allocated one points into itself. */
      bson_destroy(&t->params);
      bson_copy_to(&view, &t->params);
      t->has_params = 1;
      break;
    }
    case F_ID: {
      char buf[21];
      if (get_string(&it, "task_id", buf, 20, 1, ie) != 0 ||
          pt_id_parse(buf, strlen(buf), &t->id) != 0)
        return fail(ie, "invalid_task_id", "task_id must be a decimal id");
      memcpy(t->id_str, buf, sizeof buf);
      break;
    }
    case F_CREATED:
      if (get_int(&it, "created_at_ms", &t->created_at_ms, "invalid_type",
                  ie) != 0)
        return PT_EINVAL;
      break;
    case F_CREATED_AT:
      continue; /* derived from created_at_ms */
    case F_ATTEMPT:
      if (get_int(&it, "attempt", &v, "invalid_type", ie) != 0)
        return PT_EINVAL;
      if (v < 1 || v > PT_ATTEMPT_MAX)
        return fail(ie, "invalid_type", "attempt %lld is out of range",
                    (long long)v);
      t->attempt = (int)v;
      break;
    case F_REPLAY_COUNT:
      if (get_int(&it, "replay_count", &v, "invalid_type", ie) != 0)
        return PT_EINVAL;
      t->replay_count = (int)v;
      break;
    case F_EXPIRE_IN:
      if (BSON_ITER_HOLDS_NULL(&it))
        continue;
      if (get_int(&it, "expire_in", &v, "invalid_expire_in", ie) != 0)
        return PT_EINVAL;
      if (v < 5 || v > 604800)
        return fail(ie, "invalid_expire_in",
                    "expire_in must be between 5 and 604800 seconds");
      t->expire_in = v;
      break;
    case F_CLIENT:
      if (get_string(&it, "client", t->client, sizeof t->client - 1, 1, ie) !=
          0)
        return PT_EINVAL;
      break;
    case F_PARENT_ID: {
      char buf[21];
      if (get_string(&it, "parent_id", buf, 20, 1, ie) != 0 ||
          pt_id_parse(buf, strlen(buf), &t->parent_id) != 0)
        return fail(ie, "invalid_type", "parent_id must be a decimal id");
      break;
    }
    case F_REPLAY_OF: {
      char buf[21];
      if (get_string(&it, "replay_of", buf, 20, 1, ie) != 0 ||
          pt_id_parse(buf, strlen(buf), &t->replay_of) != 0)
        return fail(ie, "invalid_type", "replay_of must be a decimal id");
      break;
    }
    }
  }
  unsigned need = F_TYPE | F_CHANNEL | F_OTN | F_AMOUNT | F_CURRENCY |
                  F_SUBJECT;
  if (mode != PT_PARSE_SUBMIT)
    need |= F_ID | F_CREATED | F_ATTEMPT;
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if ((need & fields[i].bit) && !(seen & fields[i].bit))
      return fail(ie, "missing_field", "%s is required", fields[i].name);
  if (!t->need_retry)
    t->retry_times = 0;
  return 0;
}

int pt_task_parse(const char *json, size_t len, pt_parse_mode_t mode,
                  int64_t max_amount, pt_task_t *t, pt_input_error_t *ie) {
  bson_t doc;
  pt_task_init(t);
  if (pt_json_parse_object(json, len, &doc, ie) != 0) {
    pt_task_destroy(t);
    return PT_EINVAL;
  }
  int rc = parse_fields(&doc, mode, max_amount, t, ie);
  bson_destroy(&doc);
  if (rc != 0)
    pt_task_destroy(t);
  return rc;
}

void pt_task_append_spec(const pt_task_t *t, bson_t *doc) {
  char ts[32];
  bson_t retry;
  BSON_APPEND_UTF8(doc, "task_id", t->id_str);
  BSON_APPEND_UTF8(doc, "type", t->type);
  BSON_APPEND_UTF8(doc, "channel", t->channel);
  BSON_APPEND_UTF8(doc, "out_trade_no", t->out_trade_no);
  BSON_APPEND_INT64(doc, "amount", t->amount);
  BSON_APPEND_UTF8(doc, "currency", t->currency);
  BSON_APPEND_UTF8(doc, "subject", t->subject ? t->subject : "");
  if (t->notify_url != NULL)
    BSON_APPEND_UTF8(doc, "notify_url", t->notify_url);
  else
    BSON_APPEND_NULL(doc, "notify_url");
  BSON_APPEND_DOCUMENT_BEGIN(doc, "retry", &retry);
  BSON_APPEND_BOOL(&retry, "need_retry", t->need_retry);
  BSON_APPEND_INT32(&retry, "retry_times", t->retry_times);
  bson_append_document_end(doc, &retry);
  if (t->has_params)
    BSON_APPEND_DOCUMENT(doc, "params", &t->params);
  else
    BSON_APPEND_NULL(doc, "params");
  if (t->replay_of) {
    char r[21];
    pt_id_format(t->replay_of, r);
    BSON_APPEND_UTF8(doc, "replay_of", r);
    BSON_APPEND_INT32(doc, "replay_count", t->replay_count);
  }
  if (t->expire_in > 0)
    BSON_APPEND_INT64(doc, "expire_in", t->expire_in);
  if (t->client[0])
    BSON_APPEND_UTF8(doc, "client", t->client);
  if (t->parent_id) {
    char r[21];
    pt_id_format(t->parent_id, r);
    BSON_APPEND_UTF8(doc, "parent_id", r);
  }
  pt_time_rfc3339(t->created_at_ms, ts);
  BSON_APPEND_UTF8(doc, "created_at", ts);
  BSON_APPEND_INT64(doc, "created_at_ms", t->created_at_ms);
}

char *pt_json_of(const bson_t *doc, size_t *len) {
  return bson_as_relaxed_extended_json(doc, len);
}

char *pt_task_spec_json(const pt_task_t *t, int attempt, size_t *len) {
  bson_t doc = BSON_INITIALIZER;
  pt_task_append_spec(t, &doc);
  if (attempt > 0)
    BSON_APPEND_INT32(&doc, "attempt", attempt);
  char *s = pt_json_of(&doc, len);
  bson_destroy(&doc);
  return s;
}
