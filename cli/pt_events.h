#ifndef PT_EVENTS_H
#define PT_EVENTS_H

/* paytask events tail [--queue NAME] [--count N] [--config FILE]: prints
 * the result events published to events.exchange, one JSON line each. */
int pt_events_main(int argc, char **argv);

#endif
