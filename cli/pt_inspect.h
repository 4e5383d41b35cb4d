/* `paytask inspect [--watch [SECONDS]]`: one screen for operators — queue
 * depths and consumers (work, delay levels, dead queue), the sync backlog
 * and its lag, and every live worker with what it has in flight and how
 * many tasks it finished in the last minute. Blocking calls are fine here:
 * this command owns no loop. */
#ifndef PT_INSPECT_H
#define PT_INSPECT_H

int pt_inspect_main(int argc, char **argv);

#endif
