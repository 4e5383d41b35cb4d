#include "tasks/pt_registry.h"

#include <stdio.h>
#include <string.h>

extern const pt_runner_ops_t pt_pay_runner;
extern const pt_channel_ops_t pt_sim_channel;

const pt_runner_ops_t *const pt_runners[] = {&pt_pay_runner, NULL};
const pt_channel_ops_t *const pt_channels[] = {&pt_sim_channel, NULL};

const pt_runner_ops_t *pt_runner_find(const char *type) {
  for (size_t i = 0; pt_runners[i] != NULL; i++)
    if (strcmp(pt_runners[i]->type, type) == 0)
      return pt_runners[i];
  return NULL;
}

const pt_channel_ops_t *pt_channel_find(const char *code) {
  for (size_t i = 0; pt_channels[i] != NULL; i++)
    if (strcmp(pt_channels[i]->code, code) == 0)
      return pt_channels[i];
  return NULL;
}

int pt_registry_check(const pt_task_t *t, pt_input_error_t *ie) {
  const pt_runner_ops_t *r = pt_runner_find(t->type);
  if (r == NULL) {
    ie->code = "invalid_task_type";
    snprintf(ie->message, sizeof ie->message, "unknown task type \"%s\"",
             t->type);
    return PT_EINVAL;
  }
  if (pt_channel_find(t->channel) == NULL) {
    ie->code = "invalid_channel";
    snprintf(ie->message, sizeof ie->message, "unknown channel \"%s\"",
             t->channel);
    return PT_EINVAL;
  }
  return r->validate != NULL ? r->validate(t, ie) : 0;
}
