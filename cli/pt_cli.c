#include "cli/pt_cli.h"

#include <bson/bson.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/pt_cli_http.h"
#include "core/pt_buf.h"
#include "core/pt_config.h"
#include "core/pt_task.h"

typedef struct {
  char api[PT_CFG_STR_MAX + 16];
  char token[PT_CFG_STR_MAX];
} client_t;

/* The api's base URL and a token: flags, then PAYTASK_API_URL and
 * PAYTASK_TOKEN, then the configuration (conf_path, or as
 * pt_config_load finds it): api.listen, and the first token of api.tokens
 * with the scopes the command needs. */
static int client_init(client_t *c, const char *conf_path, const char *api,
                       const char *token, int scopes) {
  pt_config_t cfg;
  pt_error_t err;
  if (pt_config_load(&cfg, conf_path, &err) != 0) {
    fprintf(stderr, "paytask: %s\n", err.message);
    return -1;
  }
  if (api == NULL)
    api = getenv("PAYTASK_API_URL");
  if (api != NULL)
    snprintf(c->api, sizeof c->api, "%s", api);
  else
    snprintf(c->api, sizeof c->api, "http://%s", cfg.api_listen);
  if (token == NULL)
    token = getenv("PAYTASK_TOKEN");
  if (token != NULL) {
    snprintf(c->token, sizeof c->token, "%s", token);
  } else if (pt_config_token_for(&cfg, scopes, c->token, sizeof c->token) !=
             0) {
    fprintf(stderr, "paytask: no token of api.tokens has the %s scope; give "
                    "--token or PAYTASK_TOKEN\n",
            scopes == PT_SCOPE_SUBMIT ? "submit" : "read");
    return -1;
  }
  return 0;
}

/* Sends one request and prints the answer's body; returns the HTTP status,
 * or -1 when the api could not be reached. */
static long call(const client_t *c, const char *method, const char *path,
                 const char *body, const char *idem, long timeout_s) {
  char url[2048];
  pt_buf_t out;
  const char *why;
  snprintf(url, sizeof url, "%s%s", c->api, path);
  pt_cli_req_t r = {method, url, c->token, idem, body, timeout_s * 1000};
  long status = pt_cli_http(&r, &out, &why);
  if (status >= 0)
    printf("%s\n", out.data ? out.data : "");
  else
    fprintf(stderr, "paytask: cannot reach the api at %s: %s\n", c->api, why);
  free(out.data);
  return status;
}

static char *read_file(const char *path) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
  pt_buf_t b = {NULL, 0};
  char chunk[4096];
  size_t n;
  if (f == NULL) {
    fprintf(stderr, "paytask: %s: %s\n", path, strerror(errno));
    return NULL;
  }
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    if (pt_buf_append(&b, chunk, n) != 0)
      break;
  if (f != stdin)
    fclose(f);
  return b.data ? b.data : calloc(1, 1);
}

static void submit_usage(void) {
  fprintf(stderr,
          "usage: paytask submit [--file TASK.json | fields] [options]\n"
          "fields: --type pay --channel sim --out-trade-no NO --amount FEN\n"
          "        --currency CNY --subject TEXT [--notify-url URL]\n"
          "        [--retry-times N] [--no-retry] [--params JSON]\n"
          "options: --idempotency-key KEY --wait SECONDS (answer once the\n"
          "         task is final, or with its state after SECONDS)\n"
          "         --api URL --token TOKEN --config FILE\n");
}

int pt_cli_submit(int argc, char **argv) {
  static const struct option opts[] = {
      {"file", required_argument, 0, 'f'},
      {"type", required_argument, 0, 't'},
      {"channel", required_argument, 0, 'C'},
      {"out-trade-no", required_argument, 0, 'o'},
      {"amount", required_argument, 0, 'a'},
      {"currency", required_argument, 0, 'u'},
      {"subject", required_argument, 0, 's'},
      {"notify-url", required_argument, 0, 'n'},
      {"retry-times", required_argument, 0, 'r'},
      {"no-retry", no_argument, 0, 'R'},
      {"params", required_argument, 0, 'p'},
      {"idempotency-key", required_argument, 0, 'k'},
      {"api", required_argument, 0, 'A'},
      {"token", required_argument, 0, 'T'},
      {"wait", required_argument, 0, 'w'},
      {"config", required_argument, 0, 'c'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *file = NULL, *type = "pay", *channel = "sim", *otn = NULL,
             *currency = "CNY", *subject = NULL, *notify = NULL,
             *params = NULL, *idem = NULL, *api = NULL, *token = NULL,
             *conf = NULL;
  long long amount = 0;
  long retry_times = -1, wait = 0;
  int no_retry = 0, c;
  char *end;
  while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
    switch (c) {
    case 'f': file = optarg; break;
    case 't': type = optarg; break;
    case 'C': channel = optarg; break;
    case 'o': otn = optarg; break;
    case 'a':
      errno = 0;
      amount = strtoll(optarg, &end, 10);
      if (errno != 0 || *end != '\0') {
        fprintf(stderr, "paytask submit: --amount takes whole minor units "
                        "(1299 for 12.99)\n");
        return 2;
      }
      break;
    case 'u': currency = optarg; break;
    case 's': subject = optarg; break;
    case 'n': notify = optarg; break;
    case 'r':
      retry_times = strtol(optarg, &end, 10);
      if (*end != '\0') {
        fprintf(stderr, "paytask submit: --retry-times takes a number\n");
        return 2;
      }
      break;
    case 'R': no_retry = 1; break;
    case 'p': params = optarg; break;
    case 'k': idem = optarg; break;
    case 'A': api = optarg; break;
    case 'T': token = optarg; break;
    case 'c': conf = optarg; break;
    case 'w':
      wait = strtol(optarg, &end, 10);
      if (*end != '\0' || optarg[0] == '\0' || wait < 0 || wait > 300) {
        fprintf(stderr, "paytask submit: --wait takes seconds\n");
        return 2;
      }
      break;
    default:
      submit_usage();
      return c == 'h' ? 0 : 2;
    }
  }
  client_t cl;
  if (client_init(&cl, conf, api, token, PT_SCOPE_SUBMIT) != 0)
    return 2;
  char *body;
  if (file != NULL) {
    body = read_file(file);
    if (body == NULL)
      return 2;
  } else {
    if (otn == NULL || amount == 0 || subject == NULL) {
      submit_usage();
      return 2;
    }
    /* The api checks every field; the CLI only assembles them. */
    bson_t d = BSON_INITIALIZER, r, p;
    pt_input_error_t ie;
    BSON_APPEND_UTF8(&d, "type", type);
    BSON_APPEND_UTF8(&d, "channel", channel);
    BSON_APPEND_UTF8(&d, "out_trade_no", otn);
    BSON_APPEND_INT64(&d, "amount", amount);
    BSON_APPEND_UTF8(&d, "currency", currency);
    BSON_APPEND_UTF8(&d, "subject", subject);
    if (notify != NULL)
      BSON_APPEND_UTF8(&d, "notify_url", notify);
    if (retry_times >= 0 || no_retry) {
      BSON_APPEND_DOCUMENT_BEGIN(&d, "retry", &r);
      BSON_APPEND_BOOL(&r, "need_retry", !no_retry);
      if (retry_times >= 0)
        BSON_APPEND_INT32(&r, "retry_times", (int32_t)retry_times);
      bson_append_document_end(&d, &r);
    }
    if (params != NULL) {
      if (pt_json_parse_object(params, strlen(params), &p, &ie) != 0) {
        fprintf(stderr, "paytask submit: --params: %s\n", ie.message);
        bson_destroy(&d);
        return 2;
      }
      BSON_APPEND_DOCUMENT(&d, "params", &p);
      bson_destroy(&p);
    }
    body = bson_as_relaxed_extended_json(&d, NULL);
    bson_destroy(&d);
  }
  char path[32];
  snprintf(path, sizeof path, "/v1/tasks?wait=%ld", wait);
  long status = call(&cl, "POST", wait > 0 ? path : "/v1/tasks", body, idem,
                     wait + 30);
  free(body);
  return status >= 200 && status < 300 ? 0 : 1;
}

int pt_cli_get(int argc, char **argv) {
  static const struct option opts[] = {{"wait", required_argument, 0, 'w'},
                                       {"api", required_argument, 0, 'A'},
                                       {"token", required_argument, 0, 'T'},
                                       {"config", required_argument, 0, 'c'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *api = NULL, *token = NULL, *conf = NULL;
  long wait = 0;
  int c;
  char *end;
  while ((c = getopt_long(argc, argv, "w:h", opts, NULL)) != -1) {
    switch (c) {
    case 'w':
      wait = strtol(optarg, &end, 10);
      if (*end != '\0' || wait < 0 || wait > 300) {
        fprintf(stderr, "paytask get: --wait takes seconds\n");
        return 2;
      }
      break;
    case 'A': api = optarg; break;
    case 'T': token = optarg; break;
    case 'c': conf = optarg; break;
    default:
      fprintf(stderr, "usage: paytask get TASK_ID [--wait SECONDS] "
                      "[--api URL] [--token TOKEN] [--config FILE]\n");
      return c == 'h' ? 0 : 2;
    }
  }
  if (optind >= argc) {
    fprintf(stderr, "usage: paytask get TASK_ID [--wait SECONDS]\n");
    return 2;
  }
  client_t cl;
  if (client_init(&cl, conf, api, token, PT_SCOPE_READ) != 0)
    return 2;
  char path[128];
  for (const char *p = argv[optind]; *p; p++)
    if (*p < '0' || *p > '9' || p - argv[optind] > 19) {
      fprintf(stderr, "paytask get: a task id is a decimal number\n");
      return 2;
    }
  snprintf(path, sizeof path, "/v1/tasks/%s?wait=%ld", argv[optind], wait);
  long status = call(&cl, "GET", path, NULL, NULL, wait + 30);
  return status == 200 ? 0 : 1;
}

int pt_cli_config(int argc, char **argv) {
  pt_config_t cfg;
  pt_error_t err;
  const char *path = NULL;
  if (argc < 2 || strcmp(argv[1], "check") != 0) {
    fprintf(stderr, "usage: paytask config check [FILE]\n");
    return 2;
  }
  if (argc > 2)
    path = argv[2];
  if (pt_config_load(&cfg, path, &err) != 0) {
    fprintf(stderr, "paytask config: %s\n", err.message);
    return 1;
  }
  pt_config_print(&cfg, stdout);
  return 0;
}
