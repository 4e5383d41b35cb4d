#include "tests/support/pt_simproc.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_buf.h"
#include "tests/support/pt_test.h"

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the simulator process --------------------------------------------- */

void pt_simproc_start(pt_simproc_t *p, const char *const *args,
                      const char *const *env) {
  static int seq;
  const char *bin = getenv("PAYTASK_BIN");
  const char *dir = getenv("PT_TEST_LOGDIR");
  const char *argv[40];
  char listen[64];
  int n = 0;
  cr_assert_not_null(bin, "PAYTASK_BIN is not set (run through ctest)");
  memset(p, 0, sizeof *p);
  p->port = pt_test_free_port();
  snprintf(p->url, sizeof p->url, "http://127.0.0.1:%d", p->port);
  snprintf(listen, sizeof listen, "--listen=127.0.0.1:%d", p->port);
  snprintf(p->log, sizeof p->log, "%s/sim-%d-%d.log",
           dir ? dir : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp"),
           (int)getpid(), seq++);
  argv[n++] = bin;
  argv[n++] = "sim";
  argv[n++] = listen;
  for (int i = 0; args != NULL && args[i] != NULL && n < 38; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    /* A test that dies takes its simulator with it. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    setenv("PAYTASK_CONFIG", "/dev/null", 1);
    for (int i = 0; env != NULL && env[i] != NULL; i++)
      putenv((char *)env[i]);
    execv(bin, (char *const *)argv);
    _exit(127);
  }
  p->pid = pid;
  char url[128];
  snprintf(url, sizeof url, "%s/healthz", p->url);
  for (int waited = 0; waited < 20000; waited += 50) {
    if (pt_simproc_http("GET", url, NULL, NULL, 0, NULL, NULL) == 200)
      return;
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      p->pid = 0;
      char cmd[600];
      snprintf(cmd, sizeof cmd, "tail -n 20 %s >&2", p->log);
      if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
      cr_assert_fail("paytask sim exited at start (log: %s)", p->log);
    }
    pt_test_sleep_ms(50);
  }
  cr_assert_fail("paytask sim did not answer /healthz (log: %s)", p->log);
}

int pt_simproc_stop(pt_simproc_t *p) {
  int status = 0;
  if (p->pid <= 0)
    return 0;
  kill(p->pid, SIGTERM);
  for (int waited = 0; waited < 20000; waited += 50) {
    if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
      p->pid = 0;
      return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
    }
    pt_test_sleep_ms(50);
  }
  kill(p->pid, SIGKILL);
  waitpid(p->pid, &status, 0);
  p->pid = 0;
  return 1;
}

const char *pt_simproc_key_path(const char *name, char *buf, size_t len) {
  const char *src = getenv("PAYTASK_SOURCE_DIR");
  cr_assert_not_null(src, "PAYTASK_SOURCE_DIR is not set (run through ctest)");
  snprintf(buf, len, "%s/conf/dev-keys/%s", src, name);
  return buf;
}

char *pt_simproc_key_pem(const char *name, size_t *len) {
  char path[512], chunk[4096];
  pt_buf_t b = {NULL, 0};
  size_t n;
  FILE *f = fopen(pt_simproc_key_path(name, path, sizeof path), "rb");
  cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    cr_assert_eq(pt_buf_append(&b, chunk, n), 0);
  fclose(f);
  cr_assert_not_null(b.data, "%s is empty", path);
  *len = b.len;
  return b.data;
}

/* ---- HTTP client ---------------------------------------------------------- */

long pt_simproc_http(const char *method, const char *url,
                     const char *const *headers, const char *body,
                     size_t body_len, char **out_body, char **out_headers) {
  static const char *const expect[] = {"Expect:", NULL};
  const char *all[32];
  pt_test_headers(all, 32, expect, headers);
  return pt_test_http(method, url, all, body, body_len, 30, out_body,
                      out_headers);
}

const char *pt_simproc_header(const char *block, const char *name, char *buf,
                              size_t len) {
  size_t nl = strlen(name);
  for (const char *p = block; p != NULL && *p != '\0';) {
    const char *eol = strchr(p, '\n');
    size_t ll = eol ? (size_t)(eol - p) : strlen(p);
    if (ll > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
      const char *v = p + nl + 1, *ve = p + ll;
      while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
        ve--;
      snprintf(buf, len, "%.*s", (int)(ve - v), v);
      return buf;
    }
    p = eol ? eol + 1 : NULL;
  }
  return NULL;
}

/* ---- notification receiver ------------------------------------------------ */

/* Reads one request (head and Content-Length body) from fd; 0 or -1. */
static int read_request(int fd, pt_sink_req_t *r) {
  pt_buf_t b = {NULL, 0};
  char chunk[4096];
  const char *end = NULL;
  size_t need = 0;
  for (;;) {
    if (b.data != NULL && end == NULL &&
        (end = strstr(b.data, "\r\n\r\n")) != NULL) {
      const char *cl = NULL;
      for (const char *p = b.data; p < end; p++)
        if ((p == b.data || p[-1] == '\n') &&
            strncasecmp(p, "Content-Length:", 15) == 0)
          cl = p + 15;
      need = (size_t)(end - b.data) + 4 + (cl ? strtoul(cl, NULL, 10) : 0);
    }
    if (end != NULL && b.len >= need)
      break;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 5000) <= 0)
      break;
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n <= 0)
      break;
    if (pt_buf_append(&b, chunk, (size_t)n) != 0)
      break;
  }
  if (end == NULL || b.len < need) {
    free(b.data);
    return -1;
  }
  size_t hl = (size_t)(end - b.data);
  r->head = strndup(b.data, hl);
  r->body_len = need - hl - 4;
  r->body = strndup(end + 4, r->body_len);
  free(b.data);
  return 0;
}

static void *sink_main(void *arg) {
  pt_sink_t *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->lock);
    int stop = s->stop;
    pthread_mutex_unlock(&s->lock);
    if (stop)
      break;
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    if (poll(&pfd, 1, 50) <= 0)
      continue;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0)
      continue;
    pt_sink_req_t r = {NULL, NULL, 0, 0};
    if (read_request(c, &r) == 0) {
      pthread_mutex_lock(&s->lock);
      int i = s->nreqs, a = i < s->nanswers ? i : s->nanswers - 1;
      int status = s->status[a];
      const char *body = s->answer[a] ? s->answer[a] : "";
      r.at_ms = now_ms() - s->started_ms;
      if (s->nreqs < PT_SINK_MAX)
        s->reqs[s->nreqs++] = r;
      else {
        free(r.head);
        free(r.body);
      }
      pthread_mutex_unlock(&s->lock);
      char resp[512];
      int n = snprintf(resp, sizeof resp,
                       "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n"
                       "Connection: close\r\n\r\n%s",
                       status, strlen(body), body);
      if (write(c, resp, (size_t)n) < 0)
        perror("sink write");
    }
    close(c);
  }
  return NULL;
}

void pt_sink_start(pt_sink_t *s, int n, const int *status,
                   const char *const *answer) {
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t len = sizeof a;
  memset(s, 0, sizeof *s);
  cr_assert(n >= 1 && n <= 8);
  s->nanswers = n;
  for (int i = 0; i < n; i++) {
    s->status[i] = status[i];
    s->answer[i] = answer[i];
  }
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  s->fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert(s->fd >= 0);
  cr_assert_eq(bind(s->fd, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(listen(s->fd, 16), 0);
  getsockname(s->fd, (struct sockaddr *)&a, &len);
  s->port = ntohs(a.sin_port);
  snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d/notify", s->port);
  s->started_ms = now_ms();
  pthread_mutex_init(&s->lock, NULL);
  cr_assert_eq(pthread_create(&s->thread, NULL, sink_main, s), 0);
}

int pt_sink_count(pt_sink_t *s) {
  pthread_mutex_lock(&s->lock);
  int n = s->nreqs;
  pthread_mutex_unlock(&s->lock);
  return n;
}

int pt_sink_wait(pt_sink_t *s, int n, int timeout_ms) {
  long end = now_ms() + timeout_ms;
  int got;
  while ((got = pt_sink_count(s)) < n && now_ms() < end)
    pt_test_sleep_ms(20);
  return got;
}

void pt_sink_stop(pt_sink_t *s) {
  pthread_mutex_lock(&s->lock);
  s->stop = 1;
  pthread_mutex_unlock(&s->lock);
  pthread_join(s->thread, NULL);
  close(s->fd);
  for (int i = 0; i < s->nreqs; i++) {
    free(s->reqs[i].head);
    free(s->reqs[i].body);
  }
  s->nreqs = 0;
  pthread_mutex_destroy(&s->lock);
}
