#include "bench/pt_bench.h"

#include <bson/bson.h>
#include <dirent.h>
#include <getopt.h>
#include <mongoc/mongoc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include "cli/pt_cli_http.h"
#include "core/pt_amqp.h"
#include "core/pt_http_client.h"
#include "core/pt_httpd.h"
#include "core/pt_id.h"
#include "core/pt_redis.h"
#include "core/pt_store.h"

#define TOKEN "dev-token-change-me"

static int64_t now_us(void) { return (int64_t)(uv_hrtime() / 1000); }

/* ---- the processes under test ------------------------------------------- */

typedef struct {
  pid_t sim, api, workers[8];
  int nworkers;
  int api_port, sim_port;
  char api_url[64], sim_url[64];
  char logdir[256];
} procs_t;

static pid_t spawn(procs_t *p, const char *name, const char *const *args,
                   int prefetch) {
  char log[512];
  snprintf(log, sizeof log, "%s/%s.log", p->logdir, name);
  pid_t pid = fork();
  if (pid == 0) {
    char api[64], sim[64], simurl[80], pf[16];
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the bench */
    FILE *f = freopen(log, "a", stderr);
    (void)f;
    snprintf(api, sizeof api, "127.0.0.1:%d", p->api_port);
    snprintf(sim, sizeof sim, "127.0.0.1:%d", p->sim_port);
    snprintf(simurl, sizeof simurl, "http://127.0.0.1:%d", p->sim_port);
    snprintf(pf, sizeof pf, "%d", prefetch);
    setenv("PAYTASK_API_LISTEN", api, 1);
    setenv("PAYTASK_SIM_LISTEN", sim, 1);
    setenv("PAYTASK_CHANNEL_SIM_URL", simurl, 1);
    setenv("PAYTASK_AMQP_PREFETCH", pf, 1);
    setenv("PAYTASK_LOG_LEVEL", "warn", 1);
    /* As the systemd units run paytask (conf/systemd): GnuTLS, which
     * libcurl's librtmp loads and paytask never uses, skips the
     * initialisation it would do at load (about 1.3 MB resident). A
     * value already set wins, so that "=0" measures without it. */
    setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 0);
    /* Profiling aid: PT_BENCH_WRAP="heaptrack -o FILE" (or "perf record
     * ...") runs the slow-channel worker under that tool. Its peak RSS is
     * then the tool's, not the worker's. */
    const char *wrap = getenv("PT_BENCH_WRAP");
    if (wrap != NULL && *wrap != '\0' && strcmp(name, "bench-slow-worker") == 0) {
      /* The tool runs the worker as its child (heaptrack does not exec):
       * a process group of their own lets procs_stop signal both. */
      setpgid(0, 0);
      char cmd[1024], self[512];
      ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
      self[len > 0 ? len : 0] = '\0';
      snprintf(cmd, sizeof cmd, "exec %s %s worker", wrap, self);
      execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
      _exit(127);
    }
    execv("/proc/self/exe", (char *const *)args);
    _exit(127);
  }
  return pid;
}

static long http_get(const char *url, char **out) {
  pt_buf_t b;
  pt_cli_req_t r = {"GET", url, NULL, NULL, NULL, 5000};
  long code = pt_cli_http(&r, &b, NULL);
  if (out)
    *out = b.data;
  else
    free(b.data);
  return code;
}

static int wait_url(const char *url) {
  for (int i = 0; i < 300; i++) {
    if (http_get(url, NULL) == 200)
      return 0;
    usleep(100 * 1000);
  }
  return -1;
}

static int procs_start(procs_t *p, int nworkers, int sim_latency,
                       int prefetch) {
  char url[128], lat[32];
  memset(p, 0, sizeof *p);
  snprintf(p->logdir, sizeof p->logdir, "%s",
           getenv("PT_BENCH_LOGDIR") ? getenv("PT_BENCH_LOGDIR") : "/tmp");
  p->api_port = pt_httpd_free_port();
  p->sim_port = pt_httpd_free_port();
  if (p->api_port < 0 || p->sim_port < 0) {
    fprintf(stderr, "bench: no free loopback port below the ephemeral range\n");
    return -1;
  }
  snprintf(p->api_url, sizeof p->api_url, "http://127.0.0.1:%d", p->api_port);
  snprintf(p->sim_url, sizeof p->sim_url, "http://127.0.0.1:%d", p->sim_port);
  snprintf(lat, sizeof lat, "--latency-ms=%d", sim_latency);
  const char *sim[] = {"paytask", "sim", lat, NULL};
  const char *api[] = {"paytask", "api", NULL};
  const char *worker[] = {"paytask", "worker", NULL};
  p->sim = spawn(p, "bench-sim", sim, prefetch);
  snprintf(url, sizeof url, "%s/healthz", p->sim_url);
  if (wait_url(url) != 0)
    return -1;
  p->api = spawn(p, "bench-api", api, prefetch);
  snprintf(url, sizeof url, "%s/readyz", p->api_url);
  if (wait_url(url) != 0)
    return -1;
  for (int i = 0; i < nworkers && i < 8; i++)
    p->workers[p->nworkers++] = spawn(p, "bench-worker", worker, prefetch);
  usleep(500 * 1000); /* workers connect and start consuming */
  return 0;
}

static void procs_stop(procs_t *p) {
  pid_t all[10];
  int n = 0;
  for (int i = 0; i < p->nworkers; i++)
    all[n++] = p->workers[i];
  all[n++] = p->api;
  all[n++] = p->sim;
  for (int i = 0; i < n; i++)
    if (all[i] > 0 && kill(-all[i], SIGTERM) != 0) /* a wrapped worker's group */
      kill(all[i], SIGTERM);
  for (int i = 0; i < n; i++)
    if (all[i] > 0)
      waitpid(all[i], NULL, 0);
}

/* The simulator's /v1/sim/stats into *d (bson_destroy it): 0, or -1. */
static int sim_stats(const procs_t *p, bson_t *d) {
  char url[128], *body = NULL;
  bson_error_t e;
  snprintf(url, sizeof url, "%s/v1/sim/stats", p->sim_url);
  int ok = http_get(url, &body) == 200 && body != NULL &&
           bson_init_from_json(d, body, -1, &e);
  free(body);
  return ok ? 0 : -1;
}

/* A figure from the simulator's /v1/sim/stats, or -1. */
static long sim_stat(const procs_t *p, const char *key) {
  long v = -1;
  bson_t d;
  bson_iter_t it;
  if (sim_stats(p, &d) == 0) {
    if (bson_iter_init_find(&it, &d, key))
      v = (long)bson_iter_as_int64(&it);
    bson_destroy(&d);
  }
  return v;
}

/* The connections the simulator accepted, the channel calls it answered
 * and its calls in flight integrated over time, since it started (one
 * /v1/sim/stats read, whose own connection
 * is counted in it: the connection is accepted before the answer). */
typedef struct {
  long connections, calls;
  long area_us; /* calls in flight integrated over time (calls × µs) */
} chan_conns_t;

static chan_conns_t sim_conns(const procs_t *p) {
  chan_conns_t c = {-1, -1, -1};
  bson_t d;
  if (sim_stats(p, &d) == 0) {
    static const char *const calls[] = {"create_calls", "query_calls",
                                        "close_calls"};
    bson_iter_t it;
    if (bson_iter_init_find(&it, &d, "connections"))
      c.connections = (long)bson_iter_as_int64(&it);
    if (bson_iter_init_find(&it, &d, "in_flight_area_us"))
      c.area_us = (long)bson_iter_as_int64(&it);
    c.calls = 0;
    for (size_t i = 0; i < sizeof calls / sizeof *calls; i++)
      if (bson_iter_init_find(&it, &d, calls[i]))
        c.calls += (long)bson_iter_as_int64(&it);
    bson_destroy(&d);
  }
  return c;
}

/* What the workers opened and called between two reads: the second
 * read's own connection is taken off, as are the tool's own requests
 * before the first (waiting for the simulator, its stats). */
static chan_conns_t conns_between(chan_conns_t a, chan_conns_t b) {
  chan_conns_t d = {-1, -1, -1};
  if (a.connections >= 0 && b.connections > a.connections && a.calls >= 0 &&
      b.calls >= 0) {
    d.connections = b.connections - a.connections - 1;
    d.calls = b.calls - a.calls;
  }
  return d;
}

static void conns_json(bson_t *j, const char *key, chan_conns_t c) {
  bson_t d;
  BSON_APPEND_DOCUMENT_BEGIN(j, key, &d);
  BSON_APPEND_INT64(&d, "connections", c.connections);
  BSON_APPEND_INT64(&d, "calls", c.calls);
  bson_append_document_end(j, &d);
}

/* A "Name: N kB" figure of /proc/PID/status, in KiB, or -1. */
static long status_kb(pid_t pid, const char *field) {
  char path[64], line[256];
  size_t flen = strlen(field);
  long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
      kb = strtol(line + flen + 1, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

/* Peak resident set (VmHWM) of a live process, in KiB. */
static long peak_rss_kb(pid_t pid) { return status_kb(pid, "VmHWM"); }

/* ---- where the CPU goes ---------------------------------------------------
 * The machine is shared by paytask's processes, the load generator and the
 * three servers; each scenario reports the CPU time each of them used
 * (from /proc/PID/stat, children included, running or reaped, so a Redis
 * rewrite fork counts), how long its threads waited for a CPU while ready
 * to run (/proc/PID/task/TID/schedstat; not its children) and how many of
 * the machine's cores were busy (from /proc/stat).
 * The servers' PIDs come from PT_BENCH_SERVERS ("name=pid ..."), which
 * scripts/bench fills from scripts/services' PID files. */

#define CPU_MAX 16

typedef struct {
  char name[16];
  pid_t pid;
  int children; /* count its running children too (the servers) */
  long long t0, used; /* clock ticks */
  long long w0, waited; /* ns its threads spent runnable, waiting for a CPU */
} cpu_proc_t;

typedef struct {
  cpu_proc_t p[CPU_MAX];
  int n;
  long long busy0, total0;
  double busy_cores, seconds;
} cpu_probe_t;

static long long proc_ticks(pid_t pid);

/* The CPU ticks of pid's children still running (a Redis rewrite in
 * progress): /proc/PID/stat counts a child only once it was reaped. For
 * the servers only: the bench's own children are paytask's processes,
 * counted on their own. */
static long long live_children_ticks(pid_t pid) {
  char path[64];
  long long sum = 0;
  int child;
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  while (fscanf(f, "%d", &child) == 1) {
    long long t = proc_ticks((pid_t)child);
    sum += t > 0 ? t : 0;
  }
  fclose(f);
  return sum;
}

static long long proc_ticks(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  size_t len = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[len] = '\0';
  /* Fields after the command name, which may hold spaces: state is field 3,
   * utime 14, stime 15, cutime 16, cstime 17. */
  char *q = strrchr(buf, ')');
  long long ut, st, cut, cst;
  if (q == NULL || sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
                                 "%lld %lld %lld %lld", &ut, &st, &cut, &cst) != 4)
    return -1;
  return ut + st + cut + cst;
}

/* Busy (everything but idle and iowait, so the hypervisor's steal too)
 * and total ticks of all cores; *steal (MAY be NULL) gets the steal. */
static int machine_ticks_steal(long long *busy, long long *total,
                               long long *steal) {
  long long v[10] = {0};
  FILE *f = fopen("/proc/stat", "r");
  if (f == NULL)
    return -1;
  int k = fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld",
                 &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
                 &v[8], &v[9]);
  fclose(f);
  if (k < 5)
    return -1;
  /* guest time is already inside user and nice */
  *total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
  *busy = *total - v[3] - v[4];
  if (steal != NULL)
    *steal = v[7];
  return 0;
}

static int machine_ticks(long long *busy, long long *total) {
  return machine_ticks_steal(busy, total, NULL);
}

static long long cpu_proc_ticks(const cpu_proc_t *p) {
  long long t = proc_ticks(p->pid);
  return t >= 0 && p->children ? t + live_children_ticks(p->pid) : t;
}

/* Nanoseconds the process's threads spent on a run queue, ready to run
 * but waiting for a CPU (the second field of each thread's schedstat);
 * -1 if the kernel does not say. Children are not counted. */
static long long proc_wait_ns(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR *d = opendir(path);
  if (d == NULL)
    return -1;
  long long sum = 0;
  int found = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char f[96];
    unsigned long long run, wait;
    snprintf(f, sizeof f, "/proc/%d/task/%.20s/schedstat", (int)pid, e->d_name);
    FILE *fp = fopen(f, "r");
    if (fp == NULL)
      continue; /* the thread ended meanwhile */
    if (fscanf(fp, "%llu %llu", &run, &wait) == 2)
      sum += (long long)wait, found = 1;
    fclose(fp);
  }
  closedir(d);
  return found ? sum : -1;
}

static void cpu_add(cpu_probe_t *c, const char *name, pid_t pid) {
  if (c->n < CPU_MAX && pid > 0) {
    snprintf(c->p[c->n].name, sizeof c->p[c->n].name, "%s", name);
    c->p[c->n++].pid = pid;
  }
}

/* The servers and the bench itself; the caller adds paytask's processes. */
static void cpu_init(cpu_probe_t *c) {
  memset(c, 0, sizeof *c);
  cpu_add(c, "bench", getpid());
  const char *s = getenv("PT_BENCH_SERVERS");
  while (s != NULL && *s != '\0') {
    char name[16];
    int pid, used;
    if (sscanf(s, " %15[a-z]=%d%n", name, &pid, &used) != 2)
      break;
    int before = c->n;
    cpu_add(c, name, (pid_t)pid);
    if (c->n > before)
      c->p[before].children = 1;
    s += used;
  }
}

static void cpu_start(cpu_probe_t *c) {
  for (int i = 0; i < c->n; i++) {
    c->p[i].t0 = cpu_proc_ticks(&c->p[i]);
    c->p[i].w0 = proc_wait_ns(c->p[i].pid);
  }
  machine_ticks(&c->busy0, &c->total0);
  c->seconds = (double)now_us() / 1e6;
}

static void cpu_stop(cpu_probe_t *c) {
  long long busy = 0, total = 0;
  for (int i = 0; i < c->n; i++) {
    long long t = cpu_proc_ticks(&c->p[i]);
    c->p[i].used = t >= 0 && c->p[i].t0 >= 0 ? t - c->p[i].t0 : -1;
    long long w = proc_wait_ns(c->p[i].pid);
    c->p[i].waited = w >= 0 && c->p[i].w0 >= 0 ? w - c->p[i].w0 : -1;
  }
  c->seconds = (double)now_us() / 1e6 - c->seconds;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  if (machine_ticks(&busy, &total) == 0 && total > c->total0)
    c->busy_cores = (double)(busy - c->busy0) / (double)(total - c->total0) *
                    (double)(ncpu > 0 ? ncpu : 1);
}

/* CPU seconds of every process with the same name, summed (the workers). */
static double cpu_seconds(const cpu_probe_t *c, const char *name) {
  double hz = (double)sysconf(_SC_CLK_TCK), s = 0;
  int found = 0;
  for (int i = 0; i < c->n; i++)
    if (strcmp(c->p[i].name, name) == 0 && c->p[i].used >= 0)
      s += (double)c->p[i].used / hz, found = 1;
  return found ? s : -1;
}

/* Seconds their threads waited for a CPU, summed the same way. */
static double wait_seconds(const cpu_probe_t *c, const char *name) {
  double s = 0;
  int found = 0;
  for (int i = 0; i < c->n; i++)
    if (strcmp(c->p[i].name, name) == 0 && c->p[i].waited >= 0)
      s += (double)c->p[i].waited / 1e9, found = 1;
  return found ? s : -1;
}

static const char *const cpu_names[] = {"api", "worker", "sim", "bench",
                                        "redis", "rabbitmq", "mongo"};
#define CPU_NAMES (sizeof cpu_names / sizeof cpu_names[0])

/* One line per scenario: busy cores, then each process's share of the
 * machine and its CPU milliseconds per task (or per message). */
static void cpu_print(const cpu_probe_t *c, const char *label, long units) {
  printf("%s: %.2f of %ld cores busy over %.1f s; CPU %% of one core "
         "(ms per item):\n   ", label, c->busy_cores,
         sysconf(_SC_NPROCESSORS_ONLN), c->seconds);
  for (size_t i = 0; i < CPU_NAMES; i++) {
    double s = cpu_seconds(c, cpu_names[i]);
    if (s >= 0)
      printf(" %s %.0f%% (%.3f)", cpu_names[i], 100 * s / c->seconds,
             units > 0 ? 1000 * s / (double)units : 0);
  }
  printf("\n    waiting for a CPU (ready to run, on a run queue), %% of the "
         "time:\n   ");
  for (size_t i = 0; i < CPU_NAMES; i++) {
    double s = wait_seconds(c, cpu_names[i]);
    if (s >= 0)
      printf(" %s %.0f%%", cpu_names[i], 100 * s / c->seconds);
  }
  printf("\n");
}

static void cpu_json(bson_t *parent, const char *key, const cpu_probe_t *c,
                     long units) {
  bson_t d, ms;
  BSON_APPEND_DOCUMENT_BEGIN(parent, key, &d);
  BSON_APPEND_DOUBLE(&d, "busy_cores", c->busy_cores);
  BSON_APPEND_DOUBLE(&d, "seconds", c->seconds);
  BSON_APPEND_DOCUMENT_BEGIN(&d, "cpu_ms_per_item", &ms);
  for (size_t i = 0; i < CPU_NAMES; i++) {
    double s = cpu_seconds(c, cpu_names[i]);
    if (s >= 0 && units > 0)
      BSON_APPEND_DOUBLE(&ms, cpu_names[i], 1000 * s / (double)units);
  }
  bson_append_document_end(&d, &ms);
  BSON_APPEND_DOCUMENT_BEGIN(&d, "wait_pct", &ms);
  for (size_t i = 0; i < CPU_NAMES; i++) {
    double s = wait_seconds(c, cpu_names[i]);
    if (s >= 0 && c->seconds > 0)
      BSON_APPEND_DOUBLE(&ms, cpu_names[i], 100 * s / c->seconds);
  }
  bson_append_document_end(&d, &ms);
  bson_append_document_end(parent, &d);
}

/* ---- the load generator -------------------------------------------------- */

typedef struct bench bench_t;

typedef struct {
  bench_t *b;
  long idx;
  int64_t t_start;
  int phase; /* 0 submit, 1 wait */
  char id[24];
} call_t;

struct bench {
  uv_loop_t loop;
  pt_http_client_t *http;
  pt_redis_t *sub;
  const procs_t *p;
  char run[48];
  long n, issued, submitted, finals, errors;
  int conc, inflight;
  /* latency: WAIT_GET, a GET ?wait after each submit's 202; WAIT_POST,
   * the submit itself waits (POST /v1/tasks?wait=30, answered 200) */
  int wait_each;
  double rate;   /* open loop: tasks per second, 0 = closed loop */
  int64_t t0, t_last_final, t_last_done;
  char min_id[24], max_id[24];
  char (*ids)[24]; /* every submitted task's id, by submit order */
  int64_t *lat;
  long nlat;
  int64_t *confirm; /* latency mode: submit to 202 (the broker's confirm) */
  long nconfirm;
  /* latency mode, by task: wall clock (ms) at the POST, the 202 and the
   * ?wait answer, to set against the times the task's hash records */
  int64_t *sent_ms, *accepted_ms, *answered_ms;
  uv_timer_t ticker, watchdog;
  /* latency mode: every process's CPU ticks every WINDOW_MS */
  uv_timer_t sampler;
  cpu_probe_t *probe; /* the processes sampled; NULL: no sampling */
  /* per sample: each process's ticks, then the machine's busy and steal
   * ticks, then the time (ms) it was taken */
  long long (*samples)[CPU_MAX + 3];
  int nsamples;
  int finished;
  /* backlog mode: start one worker once every task is queued, and time
   * from then (the worker alone against a queue that is never empty) */
  procs_t *backlog_procs;
  int backlog_prefetch;
  cpu_probe_t *backlog_cpu; /* measured from the worker's start */
};

enum { WAIT_NONE, WAIT_GET, WAIT_POST };

static void maybe_done(bench_t *b) {
  int done = b->wait_each ? b->nlat + b->errors >= b->n
                          : b->finals >= b->n && b->submitted + b->errors >= b->n;
  if (done && !b->finished) {
    b->finished = 1;
    uv_stop(&b->loop);
  }
}

static void issue(bench_t *b);

/* A ?wait answer: the task must be final and SUCCEEDED. */
static void record_answer(bench_t *b, call_t *c, const pt_http_response_t *res) {
  if (res->status == 0 && res->http_code == 200 &&
      strstr(res->body, "\"SUCCEEDED\"") != NULL) {
    b->lat[b->nlat++] = now_us() - c->t_start;
    b->t_last_done = now_us();
    b->answered_ms[c->idx] = pt_now_ms();
  } else {
    if (b->errors++ < 3)
      fprintf(stderr, "bench: ?wait answered %ld: %s\n", res->http_code,
              res->status ? res->error : res->body);
  }
}

static void on_waited(const pt_http_response_t *res, void *arg) {
  call_t *c = arg;
  bench_t *b = c->b;
  b->inflight--;
  record_answer(b, c, res);
  free(c);
  issue(b);
  maybe_done(b);
}

static void on_submitted(const pt_http_response_t *res, void *arg) {
  call_t *c = arg;
  bench_t *b = c->b;
  bson_t d;
  bson_error_t e;
  bson_iter_t it;
  long expect = b->wait_each == WAIT_POST ? 200 : 202;
  if (res->status != 0 || res->http_code != expect ||
      !bson_init_from_json(&d, res->body, (ssize_t)res->body_len, &e)) {
    if (b->errors++ < 3)
      fprintf(stderr, "bench: submit answered %ld: %s\n", res->http_code,
              res->status ? res->error : res->body);
    b->inflight--;
    free(c);
    issue(b);
    maybe_done(b);
    return;
  }
  if (bson_iter_init_find(&it, &d, "task_id") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(c->id, sizeof c->id, "%s", bson_iter_utf8(&it, NULL));
  bson_destroy(&d);
  /* Ids of one run have the same number of digits: string order is id
   * order, which the MongoDB count below relies on. */
  if (b->min_id[0] == '\0' || strcmp(c->id, b->min_id) < 0)
    memcpy(b->min_id, c->id, sizeof b->min_id);
  if (strcmp(c->id, b->max_id) > 0)
    memcpy(b->max_id, c->id, sizeof b->max_id);
  memcpy(b->ids[c->idx], c->id, sizeof b->ids[0]);
  b->submitted++;
  if (b->backlog_procs != NULL && b->submitted == b->n) {
    static const char *const worker[] = {"paytask", "worker", NULL};
    procs_t *p = b->backlog_procs;
    p->workers[p->nworkers++] =
        spawn(p, "bench-slow-worker", worker, b->backlog_prefetch);
    b->t0 = now_us();
    if (b->backlog_cpu != NULL) {
      cpu_add(b->backlog_cpu, "worker", p->workers[p->nworkers - 1]);
      cpu_start(b->backlog_cpu);
    }
  }
  if (b->wait_each == WAIT_POST)
    record_answer(b, c, res);
  if (b->wait_each == WAIT_GET) {
    char url[160];
    b->confirm[b->nconfirm++] = now_us() - c->t_start;
    b->accepted_ms[c->idx] = pt_now_ms();
    snprintf(url, sizeof url, "%s/v1/tasks/%s?wait=30", b->p->api_url, c->id);
    static const char *const hdrs[] = {"Authorization: Bearer " TOKEN, NULL};
    pt_http_request_t r = {.method = "GET", .url = url, .headers = hdrs,
                           .timeout_ms = 40000};
    if (pt_http_request(b->http, &r, on_waited, c) == 0)
      return;
    b->errors++;
  }
  b->inflight--;
  free(c);
  issue(b);
  maybe_done(b);
}

static void submit_one(bench_t *b) {
  static const char *const hdrs[] = {"Authorization: Bearer " TOKEN,
                                     "Content-Type: application/json", NULL};
  char url[96], body[320];
  call_t *c = calloc(1, sizeof *c);
  c->b = b;
  c->idx = b->issued++;
  c->t_start = now_us();
  if (b->sent_ms != NULL)
    b->sent_ms[c->idx] = pt_now_ms();
  snprintf(url, sizeof url, "%s/v1/tasks%s", b->p->api_url,
           b->wait_each == WAIT_POST ? "?wait=30" : "");
  /* A task of the usual size; built once per task, as a client would. */
  bson_t d = BSON_INITIALIZER;
  char otn[80];
  snprintf(otn, sizeof otn, "%s-%ld", b->run, c->idx);
  BSON_APPEND_UTF8(&d, "type", "pay");
  BSON_APPEND_UTF8(&d, "channel", "sim");
  BSON_APPEND_UTF8(&d, "out_trade_no", otn);
  BSON_APPEND_INT64(&d, "amount", 1299);
  BSON_APPEND_UTF8(&d, "currency", "CNY");
  BSON_APPEND_UTF8(&d, "subject", "Course: C in depth");
  size_t len;
  char *json = bson_as_relaxed_extended_json(&d, &len);
  snprintf(body, sizeof body, "%s", json);
  bson_free(json);
  bson_destroy(&d);
  pt_http_request_t r = {.method = "POST", .url = url, .headers = hdrs,
                         .body = body, .body_len = strlen(body),
                         .timeout_ms = 60000};
  b->inflight++;
  if (pt_http_request(b->http, &r, on_submitted, c) != 0) {
    b->inflight--;
    b->errors++;
    free(c);
  }
}

static void issue(bench_t *b) {
  if (b->rate > 0) {
    /* Open loop: as many as the clock says are due, whatever is pending. */
    double due = (double)(now_us() - b->t0) / 1e6 * b->rate;
    while (b->issued < b->n && (double)b->issued < due)
      submit_one(b);
    return;
  }
  while (b->issued < b->n && b->inflight < b->conc)
    submit_one(b);
}

static void on_tick(uv_timer_t *t) { issue(t->data); }

#define WINDOW_MS 250
#define MAX_WINDOWS 4096

static void on_sample(uv_timer_t *t) {
  bench_t *b = t->data;
  if (b->nsamples >= MAX_WINDOWS)
    return;
  long long *row = b->samples[b->nsamples++], total = 0;
  for (int i = 0; i < b->probe->n; i++)
    row[i] = cpu_proc_ticks(&b->probe->p[i]);
  machine_ticks_steal(&row[CPU_MAX], &total, &row[CPU_MAX + 1]);
  row[CPU_MAX + 2] = pt_now_ms();
}

static void on_final(redisAsyncContext *ac, void *r, void *arg) {
  bench_t *b = arg;
  redisReply *reply = r;
  (void)ac;
  if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 3 || reply->element[0]->type != REDIS_REPLY_STRING ||
      strcmp(reply->element[0]->str, "message") != 0)
    return;
  b->finals++;
  b->t_last_final = now_us();
  maybe_done(b);
}

static void on_watchdog(uv_timer_t *t) {
  bench_t *b = t->data;
  fprintf(stderr, "bench: gave up waiting (%ld of %ld final)\n",
          b->wait_each ? b->nlat : b->finals, b->n);
  b->finished = -1;
  uv_stop(&b->loop);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Runs one load: closed loop (rate 0, conc in flight) or open loop. */
static int run_load(bench_t *b, const procs_t *p, long n, int conc,
                    double rate, int wait_each, const char *redis_uri) {
  pt_error_t err;
  procs_t *backlog = b->backlog_procs;
  int backlog_prefetch = b->backlog_prefetch;
  cpu_probe_t *backlog_cpu = b->backlog_cpu, *probe = b->probe;
  memset(b, 0, sizeof *b);
  b->probe = probe;
  b->backlog_procs = backlog;
  b->backlog_prefetch = backlog_prefetch;
  b->backlog_cpu = backlog_cpu;
  b->p = p;
  b->n = n;
  b->conc = conc;
  b->rate = rate;
  b->wait_each = wait_each;
  b->lat = calloc((size_t)n, sizeof *b->lat);
  b->ids = calloc((size_t)n, sizeof *b->ids);
  b->confirm = wait_each ? calloc((size_t)n, sizeof *b->confirm) : NULL;
  b->sent_ms = wait_each ? calloc((size_t)n, sizeof *b->sent_ms) : NULL;
  b->accepted_ms = wait_each ? calloc((size_t)n, sizeof *b->accepted_ms) : NULL;
  b->answered_ms = wait_each ? calloc((size_t)n, sizeof *b->answered_ms) : NULL;
  snprintf(b->run, sizeof b->run, "B%lld", (long long)pt_now_ms());
  uv_loop_init(&b->loop);
  b->http = pt_http_client_new(&b->loop, &err);
  if (!wait_each) {
    b->sub = pt_redis_connect(&b->loop, redis_uri, NULL, NULL, &err);
    if (b->sub == NULL) {
      fprintf(stderr, "bench: %s\n", err.message);
      return -1;
    }
    redisAsyncCommand(pt_redis_ctx(b->sub), on_final, b, "SUBSCRIBE %s",
                      PT_CHANNEL_FINAL);
    /* Let the subscription land before the first task can finish. */
    for (int i = 0; i < 20; i++)
      uv_run(&b->loop, UV_RUN_NOWAIT), usleep(5000);
  }
  uv_timer_init(&b->loop, &b->ticker);
  uv_timer_init(&b->loop, &b->watchdog);
  b->ticker.data = b->watchdog.data = b;
  uv_timer_start(&b->watchdog, on_watchdog, 600000, 0);
  if (rate > 0)
    uv_timer_start(&b->ticker, on_tick, 1, 1);
  uv_timer_init(&b->loop, &b->sampler);
  b->sampler.data = b;
  if (b->probe != NULL && wait_each) {
    b->samples = calloc(MAX_WINDOWS, sizeof *b->samples);
    on_sample(&b->sampler);
    uv_timer_start(&b->sampler, on_sample, WINDOW_MS, WINDOW_MS);
  }
  b->t0 = now_us();
  issue(b);
  uv_run(&b->loop, UV_RUN_DEFAULT);
  pt_http_client_destroy(b->http);
  pt_redis_destroy(b->sub);
  uv_walk(&b->loop, close_walk, NULL);
  uv_run(&b->loop, UV_RUN_DEFAULT);
  uv_loop_close(&b->loop);
  return b->finished == 1 && b->errors == 0 ? 0 : -1;
}

/* Frees what run_load allocated for its figures, once they are read. */
static void load_free(bench_t *b) {
  free(b->lat);
  free(b->ids);
  free(b->confirm);
  free(b->sent_ms);
  free(b->accepted_ms);
  free(b->answered_ms);
  free(b->samples);
  b->samples = NULL;
  b->nsamples = 0;
  b->lat = NULL;
  b->ids = NULL;
  b->confirm = NULL;
  b->sent_ms = b->accepted_ms = b->answered_ms = NULL;
}

/* Waits until the sync stream is empty: the sync threads delete an entry
 * only after MongoDB acknowledged its document. Polling Redis is cheap;
 * polling MongoDB with a count every 50 ms was not (FerretDB scans the
 * collection for it, and its CPU went into the figures). */
static void wait_sync_stream(const char *redis_uri) {
  pt_error_t err;
  redisContext *c = pt_redis_connect_sync(redis_uri, 2000, &err);
  if (c == NULL)
    return;
  for (int i = 0; i < 60000; i++) {
    redisReply *r = redisCommand(c, "XLEN %s", PT_STREAM_SYNC);
    long long len = r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    if (len == 0)
      break;
    usleep(10 * 1000);
  }
  redisFree(c);
}

/* Checks that MongoDB holds every task of the run, once the sync stream
 * is empty (at t_stream); returns when they were all there (µs): t_stream
 * if the first count finds them all, -1 if they never are. */
static int64_t wait_mongo(const char *uri, int64_t t_stream, const bench_t *b) {
  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(uri, &e);
  if (u == NULL)
    return -1;
  mongoc_client_t *cl = mongoc_client_new_from_uri(u);
  const char *db = mongoc_uri_get_database(u);
  mongoc_collection_t *col =
      mongoc_client_get_collection(cl, db ? db : "paytask", "tasks");
  int64_t when = -1;
  for (int i = 0; i < 6000; i++) {
    bson_t cmd = BSON_INITIALIZER, q, r, range;
    BSON_APPEND_UTF8(&cmd, "count", "tasks");
    BSON_APPEND_DOCUMENT_BEGIN(&cmd, "query", &q);
    BSON_APPEND_DOCUMENT_BEGIN(&q, "_id", &range);
    BSON_APPEND_UTF8(&range, "$gte", b->min_id);
    BSON_APPEND_UTF8(&range, "$lte", b->max_id);
    bson_append_document_end(&q, &range);
    bson_append_document_end(&cmd, &q);
    int64_t n = -1;
    bson_iter_t it;
    if (mongoc_collection_command_simple(col, &cmd, NULL, &r, &e) &&
        bson_iter_init_find(&it, &r, "n"))
      n = bson_iter_as_int64(&it);
    else if (i == 0)
      fprintf(stderr, "bench: counting the run's documents failed: %s\n",
              e.message);
    if (i == 0 && n >= 0 && n < b->n)
      fprintf(stderr,
              "bench: MongoDB held %lld of the %ld documents when the sync "
              "stream was empty; counting until it holds them all\n",
              (long long)n, b->n);
    bson_destroy(&cmd);
    bson_destroy(&r);
    if (n >= b->n) {
      when = i == 0 ? t_stream : now_us(); /* not the count's own time */
      break;
    }
    usleep(100 * 1000);
  }
  mongoc_collection_destroy(col);
  mongoc_client_destroy(cl);
  mongoc_uri_destroy(u);
  return when;
}

/* A figure counts final states, whatever they are: checks that every task
 * of the run SUCCEEDED, from the status in its Redis hash (pipelined, after
 * the timed window; a synced hash stays evict_grace_s). Returns 0, or -1
 * and says how many did not and what they were. */
static int check_succeeded(const char *redis_uri, const bench_t *b) {
  pt_error_t err;
  redisContext *c = pt_redis_connect_sync(redis_uri, 5000, &err);
  if (c == NULL) {
    fprintf(stderr, "bench: cannot check the tasks' outcome: %s\n",
            err.message);
    return -1;
  }
  long ok = 0, failed = 0, other = 0, gone = 0;
  for (long i = 0; i < b->n; i += 1000) {
    long end = i + 1000 < b->n ? i + 1000 : b->n;
    for (long k = i; k < end; k++)
      redisAppendCommand(c, "HGET %s%s status", PT_KEY_TASK, b->ids[k]);
    for (long k = i; k < end; k++) {
      redisReply *r = NULL;
      if (redisGetReply(c, (void **)&r) != REDIS_OK) {
        fprintf(stderr, "bench: cannot check the tasks' outcome: %s\n",
                c->errstr);
        redisFree(c);
        return -1;
      }
      if (r->type != REDIS_REPLY_STRING)
        gone++;
      else if (strcmp(r->str, "SUCCEEDED") == 0)
        ok++;
      else if (strcmp(r->str, "FAILED") == 0)
        failed++;
      else
        other++;
      freeReplyObject(r);
    }
  }
  redisFree(c);
  if (ok == b->n)
    return 0;
  fprintf(stderr,
          "bench: %ld of %ld tasks did not succeed (FAILED %ld, not final "
          "%ld, no longer in Redis or never submitted %ld); the figures of "
          "this run do not stand\n",
          b->n - ok, b->n, failed, other, gone);
  return -1;
}

/* How many times Redis has forked since it started (INFO stats
 * total_forks): an AOF rewrite is a fork whose child takes a core for a
 * second or more, which on this 2-core machine shows in the figures of the
 * scenario it falls in. -1 if Redis cannot say. */
static long redis_forks(const char *redis_uri) {
  pt_error_t err;
  redisContext *c = pt_redis_connect_sync(redis_uri, 2000, &err);
  if (c == NULL)
    return -1;
  long forks = -1;
  redisReply *r = redisCommand(c, "INFO stats");
  if (r != NULL && r->type == REDIS_REPLY_STRING) {
    const char *f = strstr(r->str, "\ntotal_forks:");
    if (f != NULL)
      forks = strtol(f + strlen("\ntotal_forks:"), NULL, 10);
  }
  freeReplyObject(r);
  redisFree(c);
  return forks;
}

static long forks_between(long before, long after) {
  return before < 0 || after < 0 ? -1 : after - before;
}

/* ---- 1. broker baseline ------------------------------------------------- */

#define BASE_QUEUE "paytask.bench.baseline"

typedef struct {
  uv_loop_t loop;
  pt_amqp_t *pub, *con;
  long n, published, confirmed, consumed;
  int window, ready, prefetch;
  size_t size;
  char *body;
  int64_t t0, t_end;
} base_t;

static int base_setup(amqp_connection_state_t conn, void *arg,
                      pt_error_t *err) {
  (void)arg;
  amqp_queue_declare(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(BASE_QUEUE),
                     0, 1, 0, 0, amqp_empty_table);
  int rc = pt_amqp_reply_error(amqp_get_rpc_reply(conn), "declare", err);
  if (rc == 0) {
    amqp_queue_purge(conn, PT_AMQP_PUB_CHANNEL, amqp_cstring_bytes(BASE_QUEUE));
    rc = pt_amqp_reply_error(amqp_get_rpc_reply(conn), "purge", err);
  }
  return rc;
}

static void base_publish(base_t *s);

static void on_base_confirm(pt_amqp_t *c, int status, void *arg) {
  base_t *s = arg;
  (void)c;
  if (status == 0)
    s->confirmed++;
  base_publish(s);
}

static void base_publish(base_t *s) {
  pt_amqp_msg_t msg = {.persistent = 1};
  while (s->published < s->n &&
         s->published - s->confirmed < (long)s->window) {
    if (pt_amqp_publish(s->pub, "", BASE_QUEUE, s->body, s->size, &msg,
                        on_base_confirm, s) != 0)
      return;
    s->published++;
  }
}

static void on_base_deliver(pt_amqp_t *c, const pt_amqp_delivery_t *d,
                            void *arg) {
  base_t *s = arg;
  pt_amqp_ack(c, d->delivery_tag);
  if (++s->consumed == s->n) {
    s->t_end = now_us();
    pt_amqp_destroy(s->pub);
    pt_amqp_destroy(s->con);
  }
}

static void on_base_ready(pt_amqp_t *c, int status, const pt_error_t *err,
                          void *arg) {
  base_t *s = arg;
  if (status != 0) {
    fprintf(stderr, "bench: broker: %s\n", err ? err->message : "?");
    uv_stop(&s->loop);
    return;
  }
  if (c == s->con)
    pt_amqp_consume(c, BASE_QUEUE, s->prefetch, on_base_deliver, s);
  if (++s->ready == 2) {
    s->t0 = now_us();
    base_publish(s);
  }
}

static double broker_baseline(const char *uri, long n, int window,
                              size_t size, int prefetch) {
  base_t s;
  memset(&s, 0, sizeof s);
  s.n = n;
  s.window = window;
  s.size = size;
  s.prefetch = prefetch;
  s.body = malloc(size);
  memset(s.body, 'x', size);
  uv_loop_init(&s.loop);
  pt_amqp_opts_t o = {.uri = uri, .setup = base_setup};
  s.pub = pt_amqp_new(&s.loop, &o);
  s.con = pt_amqp_new(&s.loop, &o);
  pt_amqp_start(s.pub, on_base_ready, &s);
  pt_amqp_start(s.con, on_base_ready, &s);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  uv_loop_close(&s.loop);
  free(s.body);
  if (s.consumed < n)
    return -1;
  return (double)n * 1e6 / (double)(s.t_end - s.t0);
}

/* ---- reporting ------------------------------------------------------------ */

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_ms(int64_t *v, long n, double p) {
  if (n == 0)
    return -1;
  long i = (long)(p * (double)(n - 1) + 0.5);
  return (double)v[i] / 1000.0;
}

/* A latency run's p50, p95, p99 and max (ms); sorts b->lat. */
static void lat_pcts(bench_t *b, double out[4]) {
  static const double ps[4] = {0.50, 0.95, 0.99, 1.0};
  qsort(b->lat, (size_t)b->nlat, sizeof *b->lat, cmp64);
  for (int k = 0; k < 4; k++)
    out[k] = pct_ms(b->lat, b->nlat, ps[k]);
}

/* Where the latency scenario's time went, task by task, from the times
 * the api and the worker wrote in the task's hash (ms, the same host
 * clock): POST to the submit script (created_at), to the start script
 * (started_at: the publish, routing and delivery, the worker's parse), to
 * the finish script (updated_at: the channel call), and from the later of
 * the final state and the 202 to the ?wait answer (the pt:final message,
 * the api's read and reply; or the GET's round trip when the task was
 * final before its 202). *before_202 counts the tasks that were final
 * before the api had the broker's confirm for them. */
enum { ST_SUBMIT, ST_QUEUE, ST_RUN, ST_ANSWER, ST_COUNT };
static const char *const stage_names[ST_COUNT] = {
    "to_submit_script", "to_start", "to_final", "to_answer"};

/* Where the slowest 1% of a latency run sat in time, and what the
 * processes were doing then: were they spread over the run (queueing) or
 * bunched in a few windows (a stall), and whose CPU rose in the window
 * that held most of them in flight. */
typedef struct {
  long slow;            /* tasks at or above the p99 */
  int windows, of;      /* windows they were sent in, of the run's */
  long worst_in_flight; /* of them in flight in the worst window */
  double worst_ms;      /* how long that window was */
  double late_ms;       /* the tool's loop: its sampler's worst lateness */
  double busy_worst, busy_avg, steal_worst, steal_avg; /* cores */
  double cpu_worst[CPU_NAMES], cpu_avg[CPU_NAMES]; /* % of one core, -1 */
} tail_t;

/* The window (between samples k and k + 1) that holds time ms. */
static int tail_window(const bench_t *b, int64_t ms) {
  int k = 0;
  while (k < b->nsamples - 2 && b->samples[k + 1][CPU_MAX + 2] <= ms)
    k++;
  return k;
}

static double tail_seconds(const bench_t *b, int k0, int k1) {
  double s = (double)(b->samples[k1][CPU_MAX + 2] - b->samples[k0][CPU_MAX + 2]) / 1000;
  return s > 0 ? s : (double)WINDOW_MS / 1000;
}

/* CPU % of one core of every process named name, samples k0 to k1. */
static double tail_cpu(const bench_t *b, const char *name, int k0, int k1) {
  double hz = (double)sysconf(_SC_CLK_TCK), ticks = 0;
  int found = 0;
  for (int i = 0; i < b->probe->n; i++)
    if (strcmp(b->probe->p[i].name, name) == 0 && b->samples[k0][i] >= 0 &&
        b->samples[k1][i] >= 0) {
      ticks += (double)(b->samples[k1][i] - b->samples[k0][i]);
      found = 1;
    }
  return found ? 100 * ticks / hz / tail_seconds(b, k0, k1) : -1;
}

/* Cores busy (col CPU_MAX) or stolen by the hypervisor (CPU_MAX + 1). */
static double tail_cores(const bench_t *b, int col, int k0, int k1) {
  double hz = (double)sysconf(_SC_CLK_TCK);
  return (double)(b->samples[k1][col] - b->samples[k0][col]) / hz /
         tail_seconds(b, k0, k1);
}

static int tail_of(const bench_t *b, tail_t *t) {
  memset(t, 0, sizeof *t);
  if (b->samples == NULL || b->nsamples < 3)
    return -1;
  int64_t *lat = calloc((size_t)b->n, sizeof *lat), *sorted;
  long m = 0;
  for (long i = 0; i < b->n; i++)
    if (b->answered_ms[i] > 0)
      lat[m++] = b->answered_ms[i] - b->sent_ms[i];
  sorted = calloc((size_t)(m > 0 ? m : 1), sizeof *sorted);
  memcpy(sorted, lat, (size_t)m * sizeof *lat);
  qsort(sorted, (size_t)m, sizeof *sorted, cmp64);
  int64_t p99 = m > 0 ? sorted[(long)((double)(m - 1) * 0.99)] : 0;
  free(sorted);
  int nw = b->nsamples - 1;
  long *sent = calloc((size_t)nw, sizeof *sent),
       *flying = calloc((size_t)nw, sizeof *flying);
  for (long i = 0, j = 0; i < b->n; i++) {
    if (b->answered_ms[i] <= 0)
      continue;
    if (lat[j++] < p99 || m == 0)
      continue;
    t->slow++;
    int w0 = tail_window(b, b->sent_ms[i]), w1 = tail_window(b, b->answered_ms[i]);
    sent[w0]++;
    for (int k = w0; k <= w1; k++)
      flying[k]++;
  }
  int worst = 0;
  for (int k = 0; k < nw; k++) {
    t->windows += sent[k] > 0;
    if (flying[k] > flying[worst])
      worst = k;
    double late = tail_seconds(b, k, k + 1) * 1000 - WINDOW_MS;
    t->late_ms = late > t->late_ms ? late : t->late_ms;
  }
  t->worst_ms = tail_seconds(b, worst, worst + 1) * 1000;
  t->of = nw;
  t->worst_in_flight = flying[worst];
  t->busy_worst = tail_cores(b, CPU_MAX, worst, worst + 1);
  t->busy_avg = tail_cores(b, CPU_MAX, 0, nw);
  t->steal_worst = tail_cores(b, CPU_MAX + 1, worst, worst + 1);
  t->steal_avg = tail_cores(b, CPU_MAX + 1, 0, nw);
  for (size_t i = 0; i < CPU_NAMES; i++) {
    t->cpu_worst[i] = tail_cpu(b, cpu_names[i], worst, worst + 1);
    t->cpu_avg[i] = tail_cpu(b, cpu_names[i], 0, nw);
  }
  free(sent);
  free(flying);
  free(lat);
  return 0;
}

static void tail_print(const tail_t *t) {
  printf("%-46s %5ld in %d/%d\n", "    slowest 1%: tasks, in windows (250 ms)",
         t->slow, t->windows, t->of);
  printf("    the tool's own loop late by up to %.0f ms (a stall of the load "
         "generator)\n", t->late_ms);
  printf("    window with most in flight (%ld, %.0f ms long): %.2f cores busy "
         "(run %.2f),\n    of it stolen %.2f (%.2f); CPU %% of one core, "
         "there (run):",
         t->worst_in_flight, t->worst_ms, t->busy_worst, t->busy_avg,
         t->steal_worst, t->steal_avg);
  for (size_t i = 0; i < CPU_NAMES; i++)
    if (t->cpu_worst[i] >= 0)
      printf(" %s %.0f (%.0f)", cpu_names[i], t->cpu_worst[i], t->cpu_avg[i]);
  printf("\n");
}

static void tail_json(bson_t *parent, const char *key, const tail_t *t) {
  bson_t d, w, a;
  BSON_APPEND_DOCUMENT_BEGIN(parent, key, &d);
  BSON_APPEND_INT64(&d, "slow_tasks", t->slow);
  BSON_APPEND_INT32(&d, "windows", t->windows);
  BSON_APPEND_INT32(&d, "of_windows", t->of);
  BSON_APPEND_INT64(&d, "worst_in_flight", t->worst_in_flight);
  BSON_APPEND_DOUBLE(&d, "worst_window_ms", t->worst_ms);
  BSON_APPEND_DOUBLE(&d, "tool_late_ms", t->late_ms);
  BSON_APPEND_DOUBLE(&d, "busy_cores_worst", t->busy_worst);
  BSON_APPEND_DOUBLE(&d, "busy_cores_run", t->busy_avg);
  BSON_APPEND_DOUBLE(&d, "steal_cores_worst", t->steal_worst);
  BSON_APPEND_DOUBLE(&d, "steal_cores_run", t->steal_avg);
  BSON_APPEND_DOCUMENT_BEGIN(&d, "cpu_pct_worst", &w);
  for (size_t i = 0; i < CPU_NAMES; i++)
    if (t->cpu_worst[i] >= 0)
      BSON_APPEND_DOUBLE(&w, cpu_names[i], t->cpu_worst[i]);
  bson_append_document_end(&d, &w);
  BSON_APPEND_DOCUMENT_BEGIN(&d, "cpu_pct_run", &a);
  for (size_t i = 0; i < CPU_NAMES; i++)
    if (t->cpu_avg[i] >= 0)
      BSON_APPEND_DOUBLE(&a, cpu_names[i], t->cpu_avg[i]);
  bson_append_document_end(&d, &a);
  bson_append_document_end(parent, &d);
}

/* The stages' p50 and p99 as a document under key. */
static void append_stages(bson_t *parent, const char *key,
                          const double p50[ST_COUNT],
                          const double p99[ST_COUNT]) {
  bson_t stages, one;
  BSON_APPEND_DOCUMENT_BEGIN(parent, key, &stages);
  for (int s = 0; s < ST_COUNT; s++) {
    BSON_APPEND_DOCUMENT_BEGIN(&stages, stage_names[s], &one);
    BSON_APPEND_DOUBLE(&one, "p50", p50[s]);
    BSON_APPEND_DOUBLE(&one, "p99", p99[s]);
    bson_append_document_end(&stages, &one);
  }
  bson_append_document_end(parent, &stages);
}

static int latency_stages(const char *redis_uri, const bench_t *b,
                          double p50[ST_COUNT], double p99[ST_COUNT],
                          long *before_202) {
  pt_error_t err;
  *before_202 = 0;
  for (int s = 0; s < ST_COUNT; s++)
    p50[s] = p99[s] = -1;
  redisContext *c = pt_redis_connect_sync(redis_uri, 5000, &err);
  if (c == NULL)
    return -1;
  int64_t *v[ST_COUNT];
  long nv = 0;
  for (int s = 0; s < ST_COUNT; s++)
    v[s] = calloc((size_t)b->n, sizeof *v[s]);
  for (long i = 0; i < b->n; i++)
    redisAppendCommand(c, "HMGET %s%s created_at started_at updated_at",
                       PT_KEY_TASK, b->ids[i]);
  for (long i = 0; i < b->n; i++) {
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK)
      break;
    int64_t t[3] = {0, 0, 0};
    for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k < 3 &&
                       k < r->elements;
         k++)
      if (r->element[k]->type == REDIS_REPLY_STRING)
        t[k] = strtoll(r->element[k]->str, NULL, 10);
    freeReplyObject(r);
    if (t[0] == 0 || t[1] == 0 || t[2] == 0 || b->answered_ms[i] == 0)
      continue; /* not answered, or not a task of this run */
    int64_t at[] = {b->sent_ms[i], t[0], t[1], t[2], b->answered_ms[i]};
    if (t[2] < b->accepted_ms[i]) {
      (*before_202)++;
      at[3] = b->accepted_ms[i];
    }
    for (int s = 0; s < ST_COUNT; s++)
      v[s][nv] = (at[s + 1] - at[s]) * 1000; /* µs, as pct_ms reads */
    nv++;
  }
  redisFree(c);
  for (int s = 0; s < ST_COUNT; s++) {
    qsort(v[s], (size_t)nv, sizeof *v[s], cmp64);
    p50[s] = pct_ms(v[s], nv, 0.50);
    p99[s] = pct_ms(v[s], nv, 0.99);
    free(v[s]);
  }
  return nv > 0 ? 0 : -1;
}

int pt_bench_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"tasks", required_argument, 0, 'n'},
      {"concurrency", required_argument, 0, 'c'},
      {"workers", required_argument, 0, 'w'},
      {"latency-seconds", required_argument, 0, 's'},
      {"latency-rate", required_argument, 0, 'r'},
      {"slow-tasks", required_argument, 0, 'S'},
      {"slow-prefetch", required_argument, 0, 'P'},
      {"slow-concurrency", required_argument, 0, 'C'},
      {"prefetch", required_argument, 0, 'p'},
      {"quick", no_argument, 0, 'q'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  long n = 100000, slow_n = 20000;
  int conc = 128, workers = 2, lat_s = 10, slow_prefetch = 2000, prefetch = 500;
  int slow_conc = -1; /* worker.concurrency in scenario 4; -1: configured */
  double rate = 0;
  int c;
  while ((c = getopt_long(argc, argv, "n:c:w:s:r:S:P:C:p:qh", opts, NULL)) != -1) {
    switch (c) {
    case 'n': n = strtol(optarg, NULL, 10); break;
    case 'c': conc = (int)strtol(optarg, NULL, 10); break;
    case 'w': workers = (int)strtol(optarg, NULL, 10); break;
    case 's': lat_s = (int)strtol(optarg, NULL, 10); break;
    case 'r': rate = strtod(optarg, NULL); break;
    case 'S': slow_n = strtol(optarg, NULL, 10); break;
    case 'P': slow_prefetch = (int)strtol(optarg, NULL, 10); break;
    case 'C': slow_conc = (int)strtol(optarg, NULL, 10); break;
    case 'p': prefetch = (int)strtol(optarg, NULL, 10); break;
    case 'q': n = 500; slow_n = 300; lat_s = 2; conc = 32; break;
    default:
      fprintf(stderr,
              "usage: paytask bench [--tasks N] [--concurrency C] [--workers W]\n"
              "  [--prefetch P] [--latency-seconds S] [--latency-rate R]\n"
              "  [--slow-tasks N] [--slow-prefetch P] [--slow-concurrency K]\n"
              "  [--quick]\n");
      return c == 'h' ? 0 : 2;
    }
  }
  if (n < 1 || slow_n < 1 || conc < 1 || workers < 1 || workers > 8 ||
      lat_s < 1 || prefetch < 1 || slow_prefetch < 1 || slow_prefetch > 65535 ||
      slow_conc < -1 || slow_conc > 65535) {
    fprintf(stderr, "paytask bench: a count is out of range\n");
    return 2;
  }
  const char *amqp = getenv("PAYTASK_AMQP_URI"), *redis = getenv("PAYTASK_REDIS_URI"),
             *mongo = getenv("PAYTASK_MONGODB_URI");
  if (!amqp || !redis || !mongo) {
    fprintf(stderr, "paytask bench: PAYTASK_AMQP_URI, PAYTASK_REDIS_URI and "
                    "PAYTASK_MONGODB_URI must be set (. .run/env)\n");
    return 2;
  }
  procs_t p;
  bench_t b;
  cpu_probe_t cpu_base, cpu_thr, cpu_slow;
  memset(&b, 0, sizeof b);
  int rc = 0;

  /* The size of a task message as the api publishes it; the confirm window
   * is the api's (one publish per request in flight, `conc` of them) and
   * the prefetch the workers'. */
  size_t msg_size = 420;
  fprintf(stderr, "bench: 1/5 broker baseline\n");
  long base_n = n < 50000 ? n : 50000;
  cpu_init(&cpu_base);
  cpu_start(&cpu_base);
  double base = broker_baseline(amqp, base_n, conc, msg_size, prefetch);
  cpu_stop(&cpu_base);

  fprintf(stderr, "bench: 2/5 throughput, %ld tasks, %d workers\n", n, workers);
  if (procs_start(&p, workers, 0, prefetch) != 0) {
    fprintf(stderr, "bench: the processes did not start (logs in %s)\n",
            p.logdir);
    procs_stop(&p);
    return 1;
  }
  cpu_init(&cpu_thr);
  cpu_add(&cpu_thr, "api", p.api);
  cpu_add(&cpu_thr, "sim", p.sim);
  for (int i = 0; i < p.nworkers; i++)
    cpu_add(&cpu_thr, "worker", p.workers[i]);
  chan_conns_t conns0 = sim_conns(&p);
  long forks0 = redis_forks(redis);
  cpu_start(&cpu_thr);
  rc |= run_load(&b, &p, n, conc, 0, WAIT_NONE, redis);
  double thr = b.finals * 1e6 / (double)(b.t_last_final - b.t0);
  wait_sync_stream(redis);
  cpu_stop(&cpu_thr); /* submit to last document in MongoDB */
  chan_conns_t conns_thr = conns_between(conns0, sim_conns(&p));
  long forks_thr = forks_between(forks0, redis_forks(redis));
  rc |= check_succeeded(redis, &b);
  fprintf(stderr, "bench: counting the run's documents in MongoDB (FerretDB "
                  "reads the whole collection for it: slow once it is big)\n");
  int64_t t_mongo = wait_mongo(mongo, now_us(), &b);
  double thr_mongo = t_mongo > 0 ? n * 1e6 / (double)(t_mongo - b.t0) : -1;
  double sync_lag_ms = t_mongo > 0 ? (double)(t_mongo - b.t_last_final) / 1000 : -1;
  /* Every worker's peak (the issue asks for each process), and the
   * largest of them for the one-figure summary. */
  long rss_api = peak_rss_kb(p.api), rss_worker = 0,
       rss_workers[sizeof p.workers / sizeof p.workers[0]];
  int nrss = p.nworkers;
  char rss_each[128] = "";
  for (int i = 0; i < nrss; i++) {
    rss_workers[i] = peak_rss_kb(p.workers[i]);
    rss_worker = rss_workers[i] > rss_worker ? rss_workers[i] : rss_worker;
    size_t at = strlen(rss_each);
    snprintf(rss_each + at, sizeof rss_each - at, "%s%.1f", i ? "/" : "",
             rss_workers[i] / 1024.0);
  }
  load_free(&b);

  fprintf(stderr, "bench: 3/5 latency\n");
  if (rate <= 0)
    rate = thr > 0 ? thr / 2 : 100;
  long lat_n = (long)(rate * lat_s);
  forks0 = redis_forks(redis);
  tail_t tail_two, tail_one;
  b.probe = &cpu_thr; /* the same processes as scenario 2 */
  rc |= run_load(&b, &p, lat_n, 1 << 30, rate, WAIT_GET, redis);
  int tails_ok = tail_of(&b, &tail_two) == 0;
  long forks_lat = forks_between(forks0, redis_forks(redis));
  double two_pct[4];
  lat_pcts(&b, two_pct);
  double p50 = two_pct[0], p95 = two_pct[1], p99 = two_pct[2],
         pmax = two_pct[3];
  qsort(b.confirm, (size_t)b.nconfirm, sizeof *b.confirm, cmp64);
  double conf50 = pct_ms(b.confirm, b.nconfirm, 0.50),
         conf99 = pct_ms(b.confirm, b.nconfirm, 0.99);
  double st50[ST_COUNT], st99[ST_COUNT];
  long before_202 = 0, lat_tasks = b.nlat;
  if (latency_stages(redis, &b, st50, st99, &before_202) != 0)
    fprintf(stderr, "bench: could not read the latency scenario's task "
                    "times from Redis\n");
  load_free(&b);
  /* The same load again, each submit waiting for its own final state: one
   * request per task instead of two. */
  double one_pct[4], one_st50[ST_COUNT], one_st99[ST_COUNT];
  long one_before;
  forks0 = redis_forks(redis);
  rc |= run_load(&b, &p, lat_n, 1 << 30, rate, WAIT_POST, redis);
  long forks_one = forks_between(forks0, redis_forks(redis));
  tails_ok &= tail_of(&b, &tail_one) == 0;
  b.probe = NULL;
  lat_pcts(&b, one_pct);
  if (latency_stages(redis, &b, one_st50, one_st99, &one_before) != 0)
    fprintf(stderr, "bench: could not read the latency scenario's task "
                    "times from Redis\n");
  load_free(&b);
  double single_pct[4], single_one_pct[4];
  rc |= run_load(&b, &p, 200, 1, 0, WAIT_GET, redis);
  lat_pcts(&b, single_pct);
  load_free(&b);
  rc |= run_load(&b, &p, 200, 1, 0, WAIT_POST, redis);
  lat_pcts(&b, single_one_pct);
  load_free(&b);
  double single_p50 = single_pct[0], single_one_p50 = single_one_pct[0];
  procs_stop(&p);

  fprintf(stderr, "bench: 4/5 slow channel (200 ms), 1 worker, prefetch %d\n",
          slow_prefetch);
  /* The worker is started once every task is queued: the figure is one
   * worker process against a channel answering in 200 ms with a queue that
   * is never empty, not the api's submit rate. */
  if (slow_conc >= 0) {
    char v[16];
    snprintf(v, sizeof v, "%d", slow_conc);
    setenv("PAYTASK_WORKER_CONCURRENCY", v, 1);
  }
  if (procs_start(&p, 0, 200, slow_prefetch) != 0) {
    procs_stop(&p);
    return 1;
  }
  memset(&b, 0, sizeof b);
  conns0 = sim_conns(&p);
  cpu_init(&cpu_slow);
  cpu_add(&cpu_slow, "sim", p.sim);
  b.backlog_procs = &p;
  b.backlog_prefetch = slow_prefetch;
  b.backlog_cpu = &cpu_slow;
  forks0 = redis_forks(redis);
  rc |= run_load(&b, &p, slow_n, conc, 0, WAIT_NONE, redis);
  cpu_stop(&cpu_slow);
  long forks_slow = forks_between(forks0, redis_forks(redis));
  rc |= check_succeeded(redis, &b);
  double slow = b.finals * 1e6 / (double)(b.t_last_final - b.t0);
  load_free(&b);
  chan_conns_t conns1 = sim_conns(&p);
  chan_conns_t conns_slow = conns_between(conns0, conns1);
  long max_in_flight = sim_stat(&p, "max_in_flight");
  /* Little's law over the run (the queue never empties, so every slot of
   * the worker stays taken): the mean number of calls at the channel, and
   * per task how long a slot was held against how long its call was at
   * the channel. No call is in flight before the worker starts or after
   * the last final, so the simulator's integral covers the run alone. */
  double run_us = (double)(b.t_last_final - b.t0);
  double mean_in_flight =
      conns0.area_us >= 0 && conns1.area_us >= conns0.area_us && run_us > 0
          ? (double)(conns1.area_us - conns0.area_us) / run_us
          : -1;
  double slot_ms = slow > 0 ? max_in_flight * 1000.0 / slow : -1;
  double at_channel_ms =
      slow > 0 && mean_in_flight >= 0 ? mean_in_flight * 1000.0 / slow : -1;
  long rss_slow = peak_rss_kb(p.workers[0]);
  /* Of which shared library pages (the same physical pages in every
   * worker on a host) and the worker's own memory, at the end. */
  long file_slow = status_kb(p.workers[0], "RssFile");
  long anon_slow = status_kb(p.workers[0], "RssAnon");
  procs_stop(&p);

  printf("\n%-46s %14s %10s\n", "scenario", "figure", "vs broker");
  printf("%-46s %11.0f/s %10s\n", "1 broker baseline (msgs, confirmed+acked)", base, "1.00");
  printf("%-46s %11.0f/s %10.2f\n", "2 throughput to final in Redis", thr, thr / base);
  printf("%-46s %11.0f/s %10.2f\n", "2 throughput to last doc in MongoDB", thr_mongo, thr_mongo / base);
  printf("%-46s %12.0fms\n", "2 sync lag at the end", sync_lag_ms);
  printf("%-46s %7ld/%ld\n", "2 channel: connections opened/calls made",
         conns_thr.connections, conns_thr.calls);
  printf("%-46s %11.0f/s\n", "3 latency: open-loop rate", rate);
  printf("%-46s %8.1f/%.1f/%.1f/%.1f ms\n", "3 latency p50/p95/p99/max", p50, p95, p99, pmax);
  printf("%-46s %8.1f/%.1f ms\n", "3 ... of which submit to 202 (confirm) p50/p99",
         conf50, conf99);
  printf("%-46s %12s\n", "3 ... by stage, p50/p99 (ms, from task times):", "");
  static const char *const stage_labels[ST_COUNT] = {
      "    POST to submit script (api)", "    to start script (broker, worker)",
      "    to final state (call, finish script)",
      "    from final (or 202) to the ?wait answer"};
  for (int s = 0; s < ST_COUNT; s++)
    printf("%-46s %8.0f/%.0f ms\n", stage_labels[s], st50[s], st99[s]);
  printf("%-46s %7ld of %ld\n", "    tasks final before their 202", before_202,
         lat_tasks);
  if (tails_ok)
    tail_print(&tail_two);
  printf("%-46s %8.1f/%.1f/%.1f/%.1f ms\n",
         "3 one request (POST ?wait) p50/p95/p99/max", one_pct[0],
         one_pct[1], one_pct[2], one_pct[3]);
  printf("%-46s %8.0f/%.0f ms\n", "    ... from final to the answer p50/p99",
         one_st50[ST_ANSWER], one_st99[ST_ANSWER]);
  if (tails_ok)
    tail_print(&tail_one);
  printf("%-46s %12.1fms\n", "3 unloaded single task p50", single_p50);
  printf("%-46s %12.1fms\n", "3 ... one request (POST ?wait)", single_one_p50);
  printf("%-46s %11.0f/s %10.2f\n", "4 slow channel (200 ms), 1 worker, full queue", slow, slow / base);
  printf("%-46s %14ld\n", "4 max calls in flight at the channel", max_in_flight);
  printf("%-46s %9.0f/%ld\n", "4 calls at the channel, mean/max",
         mean_in_flight, max_in_flight);
  printf("%-46s %6.0f/%.0f ms\n", "4 per task: slot held/call at the channel",
         slot_ms, at_channel_ms);
  printf("%-46s %7ld/%ld\n", "4 channel: connections opened/calls made",
         conns_slow.connections, conns_slow.calls);
  printf("%-46s %11.1fMB\n", "5 peak RSS api (scenario 2)", rss_api / 1024.0);
  printf("%-46s %12sMB\n", "5 peak RSS each worker (scenario 2)", rss_each);
  printf("%-46s %11.1fMB\n", "5 peak RSS worker (scenario 4)", rss_slow / 1024.0);
  printf("%-46s %6.1f/%.1fMB\n", "5 ... at its end: shared libraries/own (anon)",
         file_slow / 1024.0, anon_slow / 1024.0);
  printf("%-46s %6ld/%ld/%ld/%ld\n",
         "Redis forks (AOF rewrites) in 2/3/3 one request/4", forks_thr,
         forks_lat, forks_one, forks_slow);
  printf("\n");
  cpu_print(&cpu_base, "1 broker baseline, per message", base_n);
  cpu_print(&cpu_thr, "2 throughput, submit to last MongoDB doc, per task", n);
  cpu_print(&cpu_slow, "4 slow channel, per task", slow_n);

  bson_t j = BSON_INITIALIZER;
  BSON_APPEND_INT64(&j, "tasks", n);
  BSON_APPEND_INT32(&j, "workers", workers);
  BSON_APPEND_INT32(&j, "concurrency", conc);
  BSON_APPEND_INT32(&j, "prefetch", prefetch);
  BSON_APPEND_DOUBLE(&j, "baseline_msgs_per_s", base);
  BSON_APPEND_DOUBLE(&j, "throughput_tasks_per_s", thr);
  BSON_APPEND_DOUBLE(&j, "throughput_ratio", thr / base);
  BSON_APPEND_DOUBLE(&j, "throughput_mongo_tasks_per_s", thr_mongo);
  BSON_APPEND_DOUBLE(&j, "throughput_mongo_ratio", thr_mongo / base);
  BSON_APPEND_DOUBLE(&j, "sync_lag_ms", sync_lag_ms);
  BSON_APPEND_DOUBLE(&j, "latency_rate", rate);
  BSON_APPEND_DOUBLE(&j, "latency_p50_ms", p50);
  BSON_APPEND_DOUBLE(&j, "latency_p95_ms", p95);
  BSON_APPEND_DOUBLE(&j, "latency_p99_ms", p99);
  BSON_APPEND_DOUBLE(&j, "latency_submit_p50_ms", conf50);
  BSON_APPEND_DOUBLE(&j, "latency_submit_p99_ms", conf99);
  BSON_APPEND_DOUBLE(&j, "latency_max_ms", pmax);
  append_stages(&j, "latency_stages_ms", st50, st99);
  BSON_APPEND_INT64(&j, "latency_final_before_202", before_202);
  if (tails_ok)
    tail_json(&j, "latency_tail", &tail_two);
  /* The same scenario with one request per task (POST /v1/tasks?wait). */
  bson_t one_doc;
  BSON_APPEND_DOCUMENT_BEGIN(&j, "latency_one_request", &one_doc);
  static const char *const pct_names[] = {"p50_ms", "p95_ms", "p99_ms",
                                          "max_ms"};
  for (int k = 0; k < 4; k++)
    BSON_APPEND_DOUBLE(&one_doc, pct_names[k], one_pct[k]);
  append_stages(&one_doc, "stages_ms", one_st50, one_st99);
  if (tails_ok)
    tail_json(&one_doc, "tail", &tail_one);
  BSON_APPEND_DOUBLE(&one_doc, "unloaded_p50_ms", single_one_p50);
  bson_append_document_end(&j, &one_doc);
  BSON_APPEND_DOUBLE(&j, "unloaded_p50_ms", single_p50);
  BSON_APPEND_DOUBLE(&j, "slow_tasks_per_s", slow);
  BSON_APPEND_DOUBLE(&j, "slow_ratio", slow / base);
  BSON_APPEND_INT64(&j, "slow_max_in_flight", max_in_flight);
  BSON_APPEND_DOUBLE(&j, "slow_mean_in_flight", mean_in_flight);
  BSON_APPEND_DOUBLE(&j, "slow_slot_ms", slot_ms);
  BSON_APPEND_DOUBLE(&j, "slow_at_channel_ms", at_channel_ms);
  BSON_APPEND_INT32(&j, "slow_prefetch", slow_prefetch);
  BSON_APPEND_INT32(&j, "slow_concurrency", slow_conc);
  BSON_APPEND_INT64(&j, "rss_api_kb", rss_api);
  BSON_APPEND_INT64(&j, "rss_worker_kb", rss_worker);
  bson_t arr;
  BSON_APPEND_ARRAY_BEGIN(&j, "rss_workers_kb", &arr);
  for (int i = 0; i < nrss; i++) {
    char k[16];
    const char *key;
    bson_uint32_to_string((uint32_t)i, &key, k, sizeof k);
    BSON_APPEND_INT64(&arr, key, rss_workers[i]);
  }
  bson_append_array_end(&j, &arr);
  BSON_APPEND_INT64(&j, "rss_worker_slow_kb", rss_slow);
  BSON_APPEND_INT64(&j, "rss_worker_slow_file_kb", file_slow);
  BSON_APPEND_INT64(&j, "rss_worker_slow_anon_kb", anon_slow);
  bson_t conns;
  BSON_APPEND_DOCUMENT_BEGIN(&j, "channel_connections", &conns);
  conns_json(&conns, "throughput", conns_thr);
  conns_json(&conns, "slow", conns_slow);
  bson_append_document_end(&j, &conns);
  bson_t forks;
  BSON_APPEND_DOCUMENT_BEGIN(&j, "redis_forks", &forks);
  BSON_APPEND_INT64(&forks, "throughput", forks_thr);
  BSON_APPEND_INT64(&forks, "latency", forks_lat);
  BSON_APPEND_INT64(&forks, "latency_one_request", forks_one);
  BSON_APPEND_INT64(&forks, "slow", forks_slow);
  bson_append_document_end(&j, &forks);
  cpu_json(&j, "cpu_baseline", &cpu_base, base_n);
  cpu_json(&j, "cpu_throughput", &cpu_thr, n);
  cpu_json(&j, "cpu_slow", &cpu_slow, slow_n);
  BSON_APPEND_BOOL(&j, "ok", rc == 0);
  char *json = bson_as_relaxed_extended_json(&j, NULL);
  printf("%s\n", json);
  bson_free(json);
  bson_destroy(&j);
  return rc == 0 ? 0 : 1;
}
