/* The one place where runners and channels are registered. Lookups of an
 * unknown code return NULL; the caller turns that into a clear error. */
#ifndef PT_REGISTRY_H
#define PT_REGISTRY_H

#include <stddef.h>

#include "core/pt_task.h"
#include "runner/pt_runner.h"
#include "tasks/pt_channel.h"

const pt_runner_ops_t *pt_runner_find(const char *type);
const pt_channel_ops_t *pt_channel_find(const char *code);

/* The tables, for tests and listings; NULL-terminated. */
extern const pt_runner_ops_t *const pt_runners[];
extern const pt_channel_ops_t *const pt_channels[];

/* The checks that apply to every task, run once before dispatch (at submit
 * and again when a worker takes a message): known type, known channel, and
 * the runner's own validate slot. */
int pt_registry_check(const pt_task_t *t, pt_input_error_t *ie);

#endif
