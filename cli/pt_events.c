/* `paytask events tail`: watch the result events. Without --queue it binds
 * a private, exclusive queue to the events exchange (it sees what is
 * published while it runs); with --queue it declares (durable) and drains
 * a named one, which keeps events while nobody watches — how a subscriber
 * is expected to consume them. Each event is printed as it came, one JSON
 * line; duplicates (the same event_id) are possible, gaps are not. A CLI:
 * blocking librabbitmq calls, no loop. */
#include "cli/pt_events.h"

#include <amqp.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "core/pt_amqp.h"
#include "core/pt_config.h"

static volatile sig_atomic_t stop;

static void on_stop(int sig) {
  (void)sig;
  stop = 1;
}

static int usage(FILE *out, int rc) {
  fprintf(out, "usage: paytask events tail [--queue NAME] [--count N] "
               "[--config FILE]\n"
               "  --queue NAME  consume a durable queue bound to the events "
               "exchange\n"
               "                (default: a private queue for this run)\n"
               "  --count N     exit after N events\n");
  return rc;
}

static int fail(amqp_connection_state_t c, const char *what) {
  pt_error_t err;
  pt_amqp_reply_error(amqp_get_rpc_reply(c), what, &err);
  fprintf(stderr, "paytask events: %s\n", err.message);
  pt_amqp_close_sync(c);
  return 1;
}

int pt_events_main(int argc, char **argv) {
  static const struct option opts[] = {{"queue", required_argument, 0, 'q'},
                                       {"count", required_argument, 0, 'n'},
                                       {"config", required_argument, 0, 'c'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *queue = NULL, *path = NULL;
  long count = 0;
  char *end;
  int c;
  if (argc < 2 || strcmp(argv[1], "tail") != 0)
    return usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr,
                 argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2);
  argc--;
  argv++;
  while ((c = getopt_long(argc, argv, "q:n:c:h", opts, NULL)) != -1) {
    if (c == 'q') {
      queue = optarg;
      /* Binding a queue of paytask's own (its work queue) to the events
       * exchange, then acknowledging what it holds, would delete tasks. */
      if (strncmp(queue, "paytask.", 8) == 0 || queue[0] == '\0' ||
          strlen(queue) > 255) {
        fprintf(stderr, "paytask events: --queue %s: names starting with "
                        "\"paytask.\" are paytask's own queues, and a name "
                        "is 1 to 255 bytes\n", queue);
        return 2;
      }
    } else if (c == 'n') {
      count = strtol(optarg, &end, 10);
      if (*end != '\0' || count < 1)
        return usage(stderr, 2);
    } else if (c == 'c') {
      path = optarg;
    } else {
      return usage(c == 'h' ? stdout : stderr, c == 'h' ? 0 : 2);
    }
  }
  pt_config_t cfg;
  pt_error_t err;
  if (pt_config_load(&cfg, path, &err) != 0) {
    fprintf(stderr, "paytask events: %s\n", err.message);
    return 2;
  }
  amqp_connection_state_t conn =
      pt_amqp_connect_sync(cfg.amqp_uri, 5000, &err);
  if (conn == NULL) {
    fprintf(stderr, "paytask events: %s\n", err.message);
    return 1;
  }
  amqp_exchange_declare(conn, 1, amqp_cstring_bytes(cfg.events_exchange),
                        amqp_cstring_bytes("fanout"), 0, 1, 0, 0,
                        amqp_empty_table);
  if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
    return fail(conn, "declaring the events exchange");
  amqp_queue_declare_ok_t *ok = amqp_queue_declare(
      conn, 1, queue ? amqp_cstring_bytes(queue) : amqp_empty_bytes, 0,
      queue != NULL /* durable */, queue == NULL /* exclusive */,
      queue == NULL /* auto-delete */, amqp_empty_table);
  if (ok == NULL)
    return fail(conn, "declaring the queue");
  amqp_bytes_t qname = amqp_bytes_malloc_dup(ok->queue);
  amqp_queue_bind(conn, 1, qname, amqp_cstring_bytes(cfg.events_exchange),
                  amqp_empty_bytes, amqp_empty_table);
  if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
    amqp_bytes_free(qname);
    return fail(conn, "binding the queue");
  }
  amqp_basic_qos(conn, 1, 0, 100, 0);
  amqp_basic_consume(conn, 1, qname, amqp_empty_bytes, 0, 0, 0,
                     amqp_empty_table);
  amqp_bytes_free(qname);
  if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
    return fail(conn, "consuming");
  fprintf(stderr, "paytask events: watching exchange %s%s%s (Ctrl-C stops)\n",
          cfg.events_exchange, queue ? " through queue " : "",
          queue ? queue : "");
  signal(SIGINT, on_stop);
  signal(SIGTERM, on_stop);
  long seen = 0;
  int rc = 0;
  while (!stop && (count == 0 || seen < count)) {
    amqp_envelope_t env;
    struct timeval tv = {0, 250000};
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_TIMEOUT)
      continue;
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      fprintf(stderr, "paytask events: the connection was lost\n");
      rc = 1;
      break;
    }
    /* Acknowledged only once written: an event that could not be (a full
     * disk, a closed pipe) stays in a --queue for the next run. */
    fwrite(env.message.body.bytes, 1, env.message.body.len, stdout);
    fputc('\n', stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
      fprintf(stderr, "paytask events: cannot write the event (%s); it was "
                      "not acknowledged\n", strerror(errno));
      amqp_destroy_envelope(&env);
      rc = 1;
      break;
    }
    if (amqp_basic_ack(conn, 1, env.delivery_tag, 0) != AMQP_STATUS_OK) {
      fprintf(stderr, "paytask events: the acknowledgement failed; the "
                      "event may come again\n");
      amqp_destroy_envelope(&env);
      rc = 1;
      break;
    }
    amqp_destroy_envelope(&env);
    seen++;
  }
  pt_amqp_close_sync(conn);
  return rc;
}
