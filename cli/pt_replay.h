/* `paytask replay`: for SREs. Finds FAILED tasks in MongoDB (by id, a file
 * of ids, time range, channel, type, error code), shows which also sit in
 * the dead queue, and with --dry-run prints them; otherwise replays each
 * through POST /v1/tasks/{id}/replay (a new task, same trade number, with
 * its lineage) at a rate limit, with a progress bar and a summary, and
 * takes the replayed tasks out of the dead queue. */
#ifndef PT_REPLAY_H
#define PT_REPLAY_H

int pt_replay_main(int argc, char **argv);

#endif
