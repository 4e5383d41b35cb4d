/* A TCP proxy on a free loopback port in front of a server, which loses
 * one answer: the first time the bytes a client sends hold `marker`, they
 * are passed on to the server, and delay_ms later that connection is
 * closed on both sides with nothing passed back. The server ran the
 * command; the client never learns it. Every other byte passes as it
 * came. It runs on a thread of its own. */
#ifndef PT_PROXY_H
#define PT_PROXY_H

typedef struct pt_proxy pt_proxy_t;

/* Fails the test if it cannot listen. */
pt_proxy_t *pt_proxy_start(const char *host, int port, const char *marker,
                           int delay_ms);
int pt_proxy_port(const pt_proxy_t *p);
/* Sets the marker from now on (the one given at start MAY be "": none
 * until armed). */
void pt_proxy_arm(pt_proxy_t *p, const char *marker);
/* How many times an answer was lost (0 or 1). */
int pt_proxy_fired(pt_proxy_t *p);
void pt_proxy_stop(pt_proxy_t *p);

#endif
