/* Which addresses a merchant's notify_url may reach. A notify_url is the
 * submitting client's text: unchecked, one submit could make the workers
 * POST to whatever sits beside them (a cloud metadata service on
 * 169.254.169.254, an admin port on 127.0.0.1, a database on 10.x). Only
 * public addresses are reached, and the networks an operator lists in
 * notify.allow_networks (where the business systems' receivers are). */
#ifndef PT_NET_H
#define PT_NET_H

#include <stddef.h>
#include <sys/socket.h>

#define PT_NET_LIST_MAX 16

typedef struct {
  int family;              /* AF_INET or AF_INET6 */
  unsigned char addr[16];  /* 4 bytes used for AF_INET */
  int prefix;
} pt_net_t;

typedef struct {
  int n;
  pt_net_t net[PT_NET_LIST_MAX];
} pt_net_list_t;

/* Parses comma-separated networks ("10.0.0.0/8, ::1/128"; an address
 * alone is one host) into list (MAY be NULL: check only). The empty text
 * is the empty list. 0, or -1 with why filled. */
int pt_net_list_parse(const char *s, pt_net_list_t *list, char *why,
                      size_t whylen);

/* NULL when sa may be reached: a public address, or one inside a network
 * of allow (MAY be NULL). Otherwise what kind of address it is:
 * "loopback", "private", "link-local", … */
const char *pt_net_refused(const struct sockaddr *sa,
                           const pt_net_list_t *allow);

/* The same for a URL's host as written: an IPv4 or IPv6 literal (the
 * latter in brackets or not), or "localhost" and its subdomains, which
 * are loopback. NULL for any other name: its addresses are checked when
 * it is resolved, at connect. */
const char *pt_net_refused_host(const char *host, const pt_net_list_t *allow);

#endif
