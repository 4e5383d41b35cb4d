/* `paytask worker --processes N`: a supervisor and N worker processes.
 *
 *   SIGTTIN / SIGTTOU   one worker more / one fewer (as gunicorn does);
 *                       the one removed drains (SIGTERM) before it exits
 *   SIGTERM / SIGINT    every worker drains, then the supervisor exits 0
 *   a worker that dies  is restarted after a backoff (1 s, doubling to
 *                       30 s); more than 5 crashes within 60 s is a crash
 *                       loop: the supervisor stops the others and exits 1,
 *                       loudly, instead of restarting forever
 *
 * The supervisor runs no event loop and holds no connection: it forks the
 * workers before any of them connects. */
#ifndef PT_SUPERVISOR_H
#define PT_SUPERVISOR_H

#include "core/pt_config.h"

int pt_supervisor_run(const pt_config_t *cfg, int processes);

#endif
