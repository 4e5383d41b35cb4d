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
 * the channel's and the runner's own validate slots. With cfg (MAY be
 * NULL), the channel must also be configured. */
int pt_registry_check(const pt_task_t *t, const pt_config_t *cfg,
                      pt_input_error_t *ie);

/* Calls every channel's init (loads keys from the files the configuration
 * names; it may block, so call it before the loop runs) and stops at the
 * first failure, with err naming the config key and file; what was loaded
 * is freed then. A channel that is not configured loads nothing. */
int pt_channels_init(const pt_config_t *cfg, pt_error_t *err);

/* Frees what pt_channels_init loaded; safe to call twice or without init. */
void pt_channels_cleanup(void);

#endif
