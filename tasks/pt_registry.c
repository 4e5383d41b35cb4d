#include "tasks/pt_registry.h"

#include <stdio.h>
#include <string.h>

extern const pt_runner_ops_t pt_pay_runner;
extern const pt_runner_ops_t pt_query_runner;
extern const pt_runner_ops_t pt_close_runner;
extern const pt_runner_ops_t pt_notify_runner;
extern const pt_channel_ops_t pt_sim_channel;
extern const pt_channel_ops_t pt_alipay_channel;
extern const pt_channel_ops_t pt_wechat_channel;

const pt_runner_ops_t *const pt_runners[] = {
    &pt_pay_runner, &pt_query_runner, &pt_close_runner, &pt_notify_runner,
    NULL};
const pt_channel_ops_t *const pt_channels[] = {
    &pt_sim_channel, &pt_alipay_channel, &pt_wechat_channel, NULL};

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

int pt_registry_check(const pt_task_t *t, const pt_config_t *cfg,
                      pt_input_error_t *ie) {
  const pt_runner_ops_t *r = pt_runner_find(t->type);
  if (r == NULL) {
    ie->code = "invalid_task_type";
    snprintf(ie->message, sizeof ie->message, "unknown task type \"%s\"",
             t->type);
    return PT_EINVAL;
  }
  const pt_channel_ops_t *c = pt_channel_find(t->channel);
  if (c == NULL) {
    ie->code = "invalid_channel";
    snprintf(ie->message, sizeof ie->message, "unknown channel \"%s\"",
             t->channel);
    return PT_EINVAL;
  }
  if (c->validate != NULL) {
    int rc = c->validate(t, cfg, ie);
    if (rc != 0)
      return rc;
  }
  return r->validate != NULL ? r->validate(t, ie) : 0;
}

int pt_channels_init(const pt_config_t *cfg, pt_error_t *err) {
  for (size_t i = 0; pt_channels[i] != NULL; i++) {
    if (pt_channels[i]->init == NULL)
      continue;
    int rc = pt_channels[i]->init(cfg, err);
    if (rc != 0) {
      pt_channels_cleanup();
      return rc;
    }
  }
  return 0;
}

void pt_channels_cleanup(void) {
  for (size_t i = 0; pt_channels[i] != NULL; i++)
    if (pt_channels[i]->cleanup != NULL)
      pt_channels[i]->cleanup();
}
