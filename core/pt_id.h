/* Snowflake task ids: 1 unused sign bit, 41 bits of milliseconds since
 * PT_ID_EPOCH_MS, 10 bits of node id, 12 bits of sequence. One generator per
 * process; it is not thread-safe (only the loop thread issues ids). */
#ifndef PT_ID_H
#define PT_ID_H

#include <stddef.h>
#include <stdint.h>

#include "core/pt_error.h"

#define PT_ID_EPOCH_MS 1704067200000LL /* 2024-01-01T00:00:00Z */
#define PT_ID_NODE_BITS 10
#define PT_ID_SEQ_BITS 12
#define PT_ID_MAX_NODE ((1 << PT_ID_NODE_BITS) - 1)
/* A clock that steps back by up to this much is waited out; further back,
 * the generator refuses to issue ids (PT_ECLOCK) until it catches up. */
#define PT_ID_MAX_BACKSTEP_MS 10

typedef int64_t (*pt_clock_fn)(void *arg);

typedef struct {
  int node;
  int64_t last_ms;
  int seq;
  pt_clock_fn clock; /* NULL: the real clock */
  void *clock_arg;
} pt_idgen_t;

void pt_idgen_init(pt_idgen_t *g, int node);

/* Issues the next id into *out; 0 or PT_ECLOCK (clock far behind). May spin
 * for up to PT_ID_MAX_BACKSTEP_MS or to the next millisecond when 4096 ids
 * were issued in one millisecond. */
int pt_idgen_next(pt_idgen_t *g, uint64_t *out);

/* Parts of an id. */
int64_t pt_id_time_ms(uint64_t id);
int pt_id_node(uint64_t id);

/* Decimal id; buf needs 21 bytes. Parse accepts only plain digits that fit
 * in 63 bits. */
void pt_id_format(uint64_t id, char buf[21]);
int pt_id_parse(const char *s, size_t len, uint64_t *out);

/* Wall-clock milliseconds since the Unix epoch. */
int64_t pt_now_ms(void);
/* RFC 3339 UTC with milliseconds ("2026-11-25T03:30:00.123Z"); buf 32 bytes. */
void pt_time_rfc3339(int64_t ms, char buf[32]);

#endif
