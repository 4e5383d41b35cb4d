#include <criterion/criterion.h>
#include <string.h>

#include "core/pt_id.h"

typedef struct {
  int64_t t[16];
  int i, n;
} fake_clock_t;

static int64_t fake(void *arg) {
  fake_clock_t *c = arg;
  return c->t[c->i < c->n - 1 ? c->i++ : c->i];
}

Test(id, layout_and_order) {
  pt_idgen_t g;
  uint64_t a, b;
  pt_idgen_init(&g, 37);
  cr_assert_eq(pt_idgen_next(&g, &a), 0);
  cr_assert_eq(pt_idgen_next(&g, &b), 0);
  cr_assert_gt(b, a);
  cr_assert_eq(pt_id_node(a), 37);
  cr_assert_lt(a, (uint64_t)INT64_MAX, "sign bit must stay clear");
  int64_t now = pt_now_ms();
  cr_assert(pt_id_time_ms(a) <= now && pt_id_time_ms(a) > now - 1000);
}

/* A clock that stays in one millisecond for its first `until` reads. */
typedef struct {
  int64_t base;
  long reads, until;
} slow_clock_t;

static int64_t slow(void *arg) {
  slow_clock_t *c = arg;
  return ++c->reads <= c->until ? c->base : c->base + 1;
}

Test(id, sequence_overflow_waits_for_next_millisecond) {
  const long per_ms = 1L << PT_ID_SEQ_BITS;
  slow_clock_t c = {1704067300000, 0, per_ms + 20};
  pt_idgen_t g;
  uint64_t id, prev = 0;
  pt_idgen_init(&g, 1);
  g.clock = slow;
  g.clock_arg = &c;
  for (long i = 0; i < per_ms; i++) {
    cr_assert_eq(pt_idgen_next(&g, &id), 0);
    cr_assert_gt(id, prev, "ids must be unique and increasing");
    cr_assert_eq(pt_id_time_ms(id), c.base, "id %ld left the millisecond", i);
    prev = id;
  }
  /* The millisecond is full: the next id waits for the clock to move. */
  cr_assert_eq(pt_idgen_next(&g, &id), 0);
  cr_assert_gt(id, prev);
  cr_assert_eq(pt_id_time_ms(id), c.base + 1);
  cr_assert_eq(id & (uint64_t)(per_ms - 1), 0, "the sequence starts again");
  cr_assert_gt(c.reads, per_ms, "the generator did not wait on the clock");
}

Test(id, small_clock_step_back_is_waited_out) {
  fake_clock_t c = {{1704067300000, 1704067299995, 1704067299998,
                     1704067300000, 1704067300001},
                    0, 5};
  pt_idgen_t g;
  uint64_t a, b;
  pt_idgen_init(&g, 2);
  g.clock = fake;
  g.clock_arg = &c;
  cr_assert_eq(pt_idgen_next(&g, &a), 0);
  cr_assert_eq(pt_idgen_next(&g, &b), 0);
  cr_assert_gt(b, a);
  cr_assert_geq(pt_id_time_ms(b), pt_id_time_ms(a));
}

Test(id, large_clock_step_back_is_refused) {
  fake_clock_t c = {{1704067300000, 1704067200000}, 0, 2};
  pt_idgen_t g;
  uint64_t a, b;
  pt_idgen_init(&g, 2);
  g.clock = fake;
  g.clock_arg = &c;
  cr_assert_eq(pt_idgen_next(&g, &a), 0);
  cr_assert_eq(pt_idgen_next(&g, &b), PT_ECLOCK);
}

Test(id, format_and_parse) {
  char buf[21];
  uint64_t v;
  pt_id_format(1234567890123ULL, buf);
  cr_assert_str_eq(buf, "1234567890123");
  cr_assert_eq(pt_id_parse(buf, strlen(buf), &v), 0);
  cr_assert_eq(v, 1234567890123ULL);
  cr_assert_neq(pt_id_parse("12a", 3, &v), 0);
  cr_assert_neq(pt_id_parse("", 0, &v), 0);
  cr_assert_neq(pt_id_parse("99999999999999999999", 20, &v), 0);
  cr_assert_neq(pt_id_parse("9223372036854775808", 19, &v), 0);
}

Test(id, rfc3339) {
  char ts[32];
  pt_time_rfc3339(1704067200123LL, ts);
  cr_assert_str_eq(ts, "2024-01-01T00:00:00.123Z");
}
