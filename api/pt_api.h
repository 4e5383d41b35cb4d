/* `paytask api`: the submit/poll HTTP API (JSON), /healthz and /readyz.
 *
 *   POST /v1/tasks                 submit; 202 after the broker confirmed
 *   GET  /v1/tasks/{id}[?wait=N]   Redis first, MongoDB after eviction
 *   POST /v1/tasks/{id}/cancel     PENDING or RETRY_WAIT → CANCELLED
 *   GET  /healthz                  the process is alive
 *   GET  /readyz                   broker, Redis and MongoDB reachable */
#ifndef PT_API_H
#define PT_API_H

#include "core/pt_config.h"

int pt_api_main(int argc, char **argv);
int pt_api_run(const pt_config_t *cfg);

/* 1 if host is a loopback address (127.0.0.0/8, ::1, localhost). */
int pt_api_is_loopback(const char *host);

#endif
