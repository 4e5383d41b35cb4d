#include "worker/pt_supervisor.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/pt_log.h"
#include "worker/pt_worker.h"

#define MAX_PROCESSES 64
#define CRASH_WINDOW_S 60
#define CRASH_LIMIT 5
#define BACKOFF_MAX_S 30

/* Crashes are counted per slot: one event that ends every worker at once
 * (Redis restarted: each exits to reconnect) is one crash of each, not a
 * crash loop of the pool. */
typedef struct {
  pid_t pid;          /* 0: slot empty */
  int stopping;       /* sent SIGTERM by a scale-down or shutdown */
  time_t started_at;  /* when its worker was started */
  time_t restart_at;  /* a crashed slot waiting for its backoff */
  int backoff_s;
  time_t crashes[CRASH_LIMIT + 1];
  int ncrash;
} slot_t;

static slot_t slots[MAX_PROCESSES];
static int wanted;

static pid_t start_worker(const pt_config_t *cfg, sigset_t *old, int index) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    /* The child starts from a clean signal state and runs one worker;
     * SIGTERM and SIGINT stay blocked until the worker handles them (a
     * scale-down may come at once). */
    sigset_t mask = *old;
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    signal(SIGTTIN, SIG_IGN); /* default would stop the process */
    signal(SIGTTOU, SIG_IGN);
    /* A supervisor killed outright leaves no orphan: its workers drain. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
      _exit(0);
    _exit(pt_worker_run(cfg, index));
  }
  if (pid > 0)
    PT_INFO("worker_spawned", "pid=%ld", (long)pid);
  else
    PT_ERROR("worker_spawn_failed", "err=\"%s\"", strerror(errno));
  return pid;
}

static int running(void) {
  int n = 0;
  for (int i = 0; i < MAX_PROCESSES; i++)
    n += (slots[i].pid > 0 && !slots[i].stopping) || slots[i].restart_at > 0;
  return n;
}

static int alive(void) {
  int n = 0;
  for (int i = 0; i < MAX_PROCESSES; i++)
    n += slots[i].pid > 0;
  return n;
}

/* Seconds on the monotonic clock (never 0: restart_at 0 means "none"). A
 * wall clock stepped back by NTP held restarts for as long as the step;
 * stepped forward, it restarted at once and cut a crash loop short. */
static time_t mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1;
}

/* 1 when more than CRASH_LIMIT crashes of slot s fell within
 * CRASH_WINDOW_S. */
static int crash_loop(slot_t *s, time_t now) {
  if (s->ncrash == CRASH_LIMIT + 1) {
    memmove(s->crashes, s->crashes + 1, CRASH_LIMIT * sizeof s->crashes[0]);
    s->ncrash--;
  }
  s->crashes[s->ncrash++] = now;
  return s->ncrash == CRASH_LIMIT + 1 &&
         now - s->crashes[0] < CRASH_WINDOW_S;
}

/* Slot i starts again after its backoff: 1 s, doubling up to 30 s. */
static void schedule_restart(int i, time_t now) {
  int b = slots[i].backoff_s ? slots[i].backoff_s * 2 : 1;
  slots[i].backoff_s = b > BACKOFF_MAX_S ? BACKOFF_MAX_S : b;
  slots[i].pid = 0;
  slots[i].restart_at = now + slots[i].backoff_s;
}

/* A fork that fails (the unit's process limit, no memory) is tried again
 * after the slot's backoff, as a crash is: retried at once, it made the
 * loop spin and never reach the signals (SIGTERM, SIGCHLD). */
static void spawn(const pt_config_t *cfg, sigset_t *old, int i, time_t now) {
  slots[i].pid = start_worker(cfg, old, i);
  slots[i].started_at = now;
  if (slots[i].pid < 0)
    schedule_restart(i, now);
}

static void stop_all(void) {
  for (int i = 0; i < MAX_PROCESSES; i++) {
    slots[i].restart_at = 0;
    if (slots[i].pid > 0 && !slots[i].stopping) {
      kill(slots[i].pid, SIGTERM);
      slots[i].stopping = 1;
    }
  }
}

int pt_supervisor_run(const pt_config_t *cfg, int processes) {
  sigset_t set, old;
  int shutting_down = 0, exit_code = 0;
  if (processes < 1 || processes > MAX_PROCESSES) {
    PT_ERROR("supervisor_refused", "err=\"--processes takes 1..%d\"",
             MAX_PROCESSES);
    return 2;
  }
  /* Worker i serves its metrics on worker.metrics_listen's port + i: no
   * more workers than ports up to 65535 (past it, a worker failed at
   * start, or listened on a port nobody scrapes). */
  int most = MAX_PROCESSES;
  char host[256];
  int port = 0;
  if (cfg->worker_metrics_listen[0] != '\0' &&
      pt_config_hostport(cfg->worker_metrics_listen, host, sizeof host,
                         &port) == 0 &&
      port > 0 && 65535 - port + 1 < most)
    most = 65535 - port + 1;
  if (processes > most) {
    PT_ERROR("supervisor_refused", "err=\"worker.metrics_listen's port %d "
             "leaves room for %d worker(s) (worker i listens on port + i, "
             "at most 65535), not %d\"",
             port, most, processes);
    return 2;
  }
  wanted = processes;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTTIN);
  sigaddset(&set, SIGTTOU);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, &old);
  PT_INFO("supervisor_started", "pid=%ld processes=%d", (long)getpid(),
          processes);

  for (;;) {
    time_t now = mono_s();
    /* Reap every child that ended. */
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      for (int i = 0; i < MAX_PROCESSES; i++) {
        if (slots[i].pid != pid)
          continue;
        int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        PT_INFO("worker_exited", "pid=%ld status=%d signal=%d expected=%d",
                (long)pid, WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                WIFSIGNALED(status) ? WTERMSIG(status) : 0, slots[i].stopping);
        if (slots[i].stopping || shutting_down) {
          memset(&slots[i], 0, sizeof slots[i]);
        } else {
          /* Died on its own: restart after a backoff, which starts again
           * at 1 s after a worker that ran a whole crash window. */
          if (!clean && crash_loop(&slots[i], now)) {
            PT_ERROR("supervisor_crash_loop",
                     "slot=%d crashes=%d window_s=%d note=\"giving up; see "
                     "the workers' logs\"",
                     i, CRASH_LIMIT + 1, CRASH_WINDOW_S);
            shutting_down = 1;
            exit_code = 1;
            stop_all();
            slots[i].pid = 0;
            break;
          }
          if (now - slots[i].started_at >= CRASH_WINDOW_S)
            slots[i].backoff_s = 0;
          schedule_restart(i, now);
          PT_WARN("worker_restart_scheduled", "in_s=%d", slots[i].backoff_s);
        }
      }
    }
    if (shutting_down && alive() == 0)
      break;
    if (!shutting_down) {
      /* Restarts that are due, then the count the operator wants. */
      for (int i = 0; i < MAX_PROCESSES; i++)
        if (slots[i].restart_at > 0 && slots[i].restart_at <= now) {
          slots[i].restart_at = 0;
          spawn(cfg, &old, i, now);
        }
      while (running() < wanted) {
        int i = 0;
        while (i < MAX_PROCESSES &&
               (slots[i].pid > 0 || slots[i].restart_at > 0))
          i++;
        /* A slot still draining holds its index (its metrics port): past
         * `most`, wait for it. */
        if (i >= most)
          break;
        memset(&slots[i], 0, sizeof slots[i]);
        spawn(cfg, &old, i, now);
      }
      while (running() > wanted) {
        /* The newest one drains and goes. */
        int i = MAX_PROCESSES - 1;
        while (i >= 0 && !(slots[i].pid > 0 && !slots[i].stopping) &&
               slots[i].restart_at == 0)
          i--;
        if (i < 0)
          break;
        if (slots[i].restart_at > 0) {
          slots[i].restart_at = 0;
          continue;
        }
        kill(slots[i].pid, SIGTERM);
        slots[i].stopping = 1;
        PT_INFO("worker_scaled_down", "pid=%ld", (long)slots[i].pid);
      }
    }
    struct timespec wait = {1, 0};
    siginfo_t info;
    int sig = sigtimedwait(&set, &info, &wait);
    if (sig == SIGTERM || sig == SIGINT) {
      PT_INFO("supervisor_draining", "signal=%d workers=%d", sig, alive());
      shutting_down = 1;
      stop_all();
    } else if (sig == SIGTTIN && !shutting_down) {
      wanted = wanted < most ? wanted + 1 : wanted;
      PT_INFO("supervisor_scale", "processes=%d", wanted);
    } else if (sig == SIGTTOU && !shutting_down) {
      wanted = wanted > 1 ? wanted - 1 : 1;
      PT_INFO("supervisor_scale", "processes=%d", wanted);
    }
  }
  PT_INFO("supervisor_stopped", "exit_code=%d", exit_code);
  return exit_code;
}
