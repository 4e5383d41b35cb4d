#include "core/pt_id.h"

#include <stdio.h>
#include <time.h>

int64_t pt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pt_time_rfc3339(int64_t ms, char buf[32]) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  /* strftime cannot print milliseconds; the fields are bounded by gmtime. */
  size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

static int64_t real_clock(void *arg) {
  (void)arg;
  return pt_now_ms();
}

void pt_idgen_init(pt_idgen_t *g, int node) {
  g->node = node & PT_ID_MAX_NODE;
  g->last_ms = 0;
  g->seq = 0;
  g->clock = real_clock;
  g->clock_arg = NULL;
}

int pt_idgen_next(pt_idgen_t *g, uint64_t *out) {
  int64_t now = g->clock(g->clock_arg);
  if (now < g->last_ms) {
    if (g->last_ms - now > PT_ID_MAX_BACKSTEP_MS)
      return PT_ECLOCK;
    /* A small step back (NTP slew, a VM pause) is waited out: issuing ids
     * from the past could repeat one. */
    while (now < g->last_ms)
      now = g->clock(g->clock_arg);
  }
  if (now == g->last_ms) {
    g->seq = (g->seq + 1) & ((1 << PT_ID_SEQ_BITS) - 1);
    if (g->seq == 0) {
      /* 4096 ids in this millisecond: wait for the next one. */
      while (now <= g->last_ms)
        now = g->clock(g->clock_arg);
    }
  } else {
    g->seq = 0;
  }
  g->last_ms = now;
  *out = ((uint64_t)(now - PT_ID_EPOCH_MS) << (PT_ID_NODE_BITS + PT_ID_SEQ_BITS)) |
         ((uint64_t)g->node << PT_ID_SEQ_BITS) | (uint64_t)g->seq;
  return 0;
}

int64_t pt_id_time_ms(uint64_t id) {
  return (int64_t)(id >> (PT_ID_NODE_BITS + PT_ID_SEQ_BITS)) + PT_ID_EPOCH_MS;
}

int pt_id_node(uint64_t id) {
  return (int)((id >> PT_ID_SEQ_BITS) & PT_ID_MAX_NODE);
}

void pt_id_format(uint64_t id, char buf[21]) {
  snprintf(buf, 21, "%llu", (unsigned long long)id);
}

int pt_id_parse(const char *s, size_t len, uint64_t *out) {
  uint64_t v = 0;
  if (len == 0 || len > 19)
    return PT_EINVAL;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return PT_EINVAL;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > (uint64_t)INT64_MAX)
    return PT_EINVAL;
  *out = v;
  return 0;
}
