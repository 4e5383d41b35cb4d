/* Snowflake node ids must be unique among running processes: each process
 * that issues ids (the api, every worker) leases one in Redis with
 * SET pt:node:<n> NX EX 60 and renews it every 20 s while it is its own
 * (DESIGN.md, ids). */
#ifndef PT_LEASE_H
#define PT_LEASE_H

#include <hiredis/async.h>

#include "core/pt_config.h"
#include "core/pt_id.h"

typedef struct {
  char key[32]; /* "" before a lease */
  char val[96];
  /* Called when a renewal finds the node id leased by another process
   * (this one lost Redis for over a minute and another took it): ids
   * from it would collide. MAY be NULL. */
  void (*lost)(void *arg);
  void *lost_arg;
} pt_lease_t;

/* Before the loop runs (it blocks): initialises ids with node.id, leased
 * in Redis (PT_EBUSY, said in err, if another process holds it), or with
 * the first free node id leased there. */
int pt_lease_node(const pt_config_t *cfg, pt_idgen_t *ids, pt_lease_t *lease,
                  pt_error_t *err);

/* Renews (every 20 s) and releases the lease on an async connection,
 * both only while the lease is this process's own: a lapsed lease that
 * nobody took is taken again; one another process holds is left to it,
 * and lease->lost is called. */
void pt_lease_renew(const pt_lease_t *lease, redisAsyncContext *ac);
void pt_lease_release(const pt_lease_t *lease, redisAsyncContext *ac);

#endif
