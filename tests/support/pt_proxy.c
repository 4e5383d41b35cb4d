#include "tests/support/pt_proxy.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/support/pt_test.h"

#define MAX_PAIRS 64

struct pt_proxy {
  pthread_t thread;
  int listen_fd, stop_pipe[2], port;
  struct sockaddr_in server;
  char marker[128];
  int delay_ms;
  pthread_mutex_t mu;
  int fired;
  struct {
    int client, server;
    int doomed;       /* the marker passed: nothing more goes back */
    int64_t close_at; /* when both sides are closed */
  } pairs[MAX_PAIRS];
  int npairs;
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *b, ssize_t n) {
  while (n > 0) {
    ssize_t w = write(fd, b, (size_t)n);
    if (w <= 0)
      return -1;
    b += w;
    n -= w;
  }
  return 0;
}

/* Shut down, not only closed: the stack's processes, forked while the
 * pair was open, may hold copies of its descriptors. */
static void drop_pair(pt_proxy_t *p, int i) {
  shutdown(p->pairs[i].client, SHUT_RDWR);
  shutdown(p->pairs[i].server, SHUT_RDWR);
  close(p->pairs[i].client);
  close(p->pairs[i].server);
  p->pairs[i] = p->pairs[--p->npairs];
}

static void accept_one(pt_proxy_t *p) {
  int c = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
  if (c < 0)
    return;
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->npairs == MAX_PAIRS || s < 0 ||
      connect(s, (struct sockaddr *)&p->server, sizeof p->server) != 0) {
    close(c);
    if (s >= 0)
      close(s);
    return;
  }
  p->pairs[p->npairs].client = c;
  p->pairs[p->npairs].server = s;
  p->pairs[p->npairs].doomed = 0;
  p->npairs++;
}

/* Passes what fd (one side of pair i) has to the other side; 0, or -1
 * when the pair is to be dropped. */
static int pass(pt_proxy_t *p, int i, int from_client) {
  char buf[65536];
  int from = from_client ? p->pairs[i].client : p->pairs[i].server;
  int to = from_client ? p->pairs[i].server : p->pairs[i].client;
  ssize_t n = read(from, buf, sizeof buf);
  if (n <= 0)
    return -1;
  if (p->pairs[i].doomed && !from_client)
    return 0; /* the lost answer */
  if (write_all(to, buf, n) != 0)
    return -1;
  pthread_mutex_lock(&p->mu);
  int fire = from_client && !p->fired && p->marker[0] != '\0' &&
             memmem(buf, (size_t)n, p->marker, strlen(p->marker)) != NULL;
  if (fire)
    p->fired = 1;
  pthread_mutex_unlock(&p->mu);
  if (fire) {
    p->pairs[i].doomed = 1;
    p->pairs[i].close_at = now_ms() + p->delay_ms;
  }
  return 0;
}

static void *run(void *arg) {
  pt_proxy_t *p = arg;
  for (;;) {
    struct pollfd fds[2 + 2 * MAX_PAIRS];
    int n = 0;
    fds[n++] = (struct pollfd){.fd = p->stop_pipe[0], .events = POLLIN};
    fds[n++] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
    for (int i = 0; i < p->npairs; i++) {
      fds[n++] = (struct pollfd){.fd = p->pairs[i].client, .events = POLLIN};
      fds[n++] = (struct pollfd){.fd = p->pairs[i].server, .events = POLLIN};
    }
    if (poll(fds, (nfds_t)n, 20) < 0)
      continue;
    if (fds[0].revents)
      break;
    int64_t now = now_ms();
    /* Pairs are handled from the last, so that dropping one (which moves
     * the last into its place) skips none. */
    for (int i = p->npairs - 1; i >= 0; i--) {
      short rc = fds[2 + 2 * i].revents, rs = fds[3 + 2 * i].revents;
      /* The server's side first: answers that arrived before the marker
       * was read pass; only those after it are lost. */
      if ((p->pairs[i].doomed && now >= p->pairs[i].close_at) ||
          (rs && pass(p, i, 0) != 0) || (rc && pass(p, i, 1) != 0))
        drop_pair(p, i);
    }
    if (fds[1].revents)
      accept_one(p);
  }
  while (p->npairs > 0)
    drop_pair(p, p->npairs - 1);
  return NULL;
}

pt_proxy_t *pt_proxy_start(const char *host, int port, const char *marker,
                           int delay_ms) {
  pt_proxy_t *p = calloc(1, sizeof *p);
  cr_assert_not_null(p);
  snprintf(p->marker, sizeof p->marker, "%s", marker);
  p->delay_ms = delay_ms;
  pthread_mutex_init(&p->mu, NULL);
  p->server.sin_family = AF_INET;
  p->server.sin_port = htons((uint16_t)port);
  cr_assert_eq(inet_pton(AF_INET, host, &p->server.sin_addr), 1,
               "proxy: %s is not an IPv4 address", host);
  p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  cr_assert(p->listen_fd >= 0);
  int one = 1;
  setsockopt(p->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  p->port = pt_test_free_port();
  a.sin_port = htons((uint16_t)p->port);
  cr_assert_eq(bind(p->listen_fd, (struct sockaddr *)&a, sizeof a), 0,
               "proxy: cannot listen on port %d", p->port);
  cr_assert_eq(listen(p->listen_fd, 64), 0);
  cr_assert_eq(pipe2(p->stop_pipe, O_CLOEXEC), 0);
  cr_assert_eq(pthread_create(&p->thread, NULL, run, p), 0);
  return p;
}

int pt_proxy_port(const pt_proxy_t *p) { return p->port; }

void pt_proxy_arm(pt_proxy_t *p, const char *marker) {
  pthread_mutex_lock(&p->mu);
  snprintf(p->marker, sizeof p->marker, "%s", marker);
  pthread_mutex_unlock(&p->mu);
}

int pt_proxy_fired(pt_proxy_t *p) {
  pthread_mutex_lock(&p->mu);
  int f = p->fired;
  pthread_mutex_unlock(&p->mu);
  return f;
}

void pt_proxy_stop(pt_proxy_t *p) {
  if (p == NULL)
    return;
  cr_assert_eq(write(p->stop_pipe[1], "x", 1), 1);
  pthread_join(p->thread, NULL);
  close(p->listen_fd);
  close(p->stop_pipe[0]);
  close(p->stop_pipe[1]);
  pthread_mutex_destroy(&p->mu);
  free(p);
}
