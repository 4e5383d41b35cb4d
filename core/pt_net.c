#include "core/pt_net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The addresses that are not the public internet's (IANA's special-purpose
 * registries, RFC 6890 and its successors). An IPv6 address that carries
 * an IPv4 one (mapped, NAT64, 6to4) is judged by the IPv4 one. */
static const struct {
  int family;
  unsigned char addr[16];
  int prefix;
  const char *kind;
} special[] = {
    {AF_INET, {0}, 8, "unspecified"},
    {AF_INET, {10}, 8, "private"},
    {AF_INET, {100, 64}, 10, "private"}, /* carrier-grade NAT */
    {AF_INET, {127}, 8, "loopback"},
    {AF_INET, {169, 254}, 16, "link-local"},
    {AF_INET, {172, 16}, 12, "private"},
    {AF_INET, {192, 0, 0}, 24, "reserved"},
    {AF_INET, {192, 0, 2}, 24, "documentation"},
    {AF_INET, {192, 168}, 16, "private"},
    {AF_INET, {198, 18}, 15, "reserved"}, /* benchmarking */
    {AF_INET, {198, 51, 100}, 24, "documentation"},
    {AF_INET, {203, 0, 113}, 24, "documentation"},
    {AF_INET, {224}, 4, "multicast"},
    {AF_INET, {240}, 4, "reserved"}, /* and the broadcast address */
    {AF_INET6, {0}, 128, "unspecified"},
    {AF_INET6, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128,
     "loopback"},
    {AF_INET6, {0}, 96, "reserved"}, /* IPv4-compatible, deprecated */
    {AF_INET6, {0x01, 0x00}, 64, "reserved"}, /* discard-only */
    {AF_INET6, {0x20, 0x01, 0x0d, 0xb8}, 32, "documentation"},
    {AF_INET6, {0xfc}, 7, "private"}, /* unique local */
    {AF_INET6, {0xfe, 0x80}, 10, "link-local"},
    {AF_INET6, {0xfe, 0xc0}, 10, "private"}, /* site-local, deprecated */
    {AF_INET6, {0xff}, 8, "multicast"},
};

static int in_net(const unsigned char *a, const unsigned char *net,
                  int prefix) {
  int full = prefix / 8, rest = prefix % 8;
  if (memcmp(a, net, (size_t)full) != 0)
    return 0;
  if (rest == 0)
    return 1;
  unsigned char mask = (unsigned char)(0xff << (8 - rest));
  return (a[full] & mask) == (net[full] & mask);
}

/* The IPv4 address inside an IPv6 one, if it carries one. */
static const unsigned char *embedded_v4(const unsigned char *a) {
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0,
                                           0, 0, 0, 0, 0xff, 0xff};
  static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
  if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
    return a + 12;
  if (a[0] == 0x20 && a[1] == 0x02) /* 6to4 */
    return a + 2;
  return NULL;
}

static const char *refused_addr(int family, const unsigned char *a,
                                const pt_net_list_t *allow) {
  if (family == AF_INET6) {
    const unsigned char *v4 = embedded_v4(a);
    if (v4 != NULL)
      return refused_addr(AF_INET, v4, allow);
  }
  for (int i = 0; allow != NULL && i < allow->n; i++)
    if (allow->net[i].family == family &&
        in_net(a, allow->net[i].addr, allow->net[i].prefix))
      return NULL;
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
    if (special[i].family == family &&
        in_net(a, special[i].addr, special[i].prefix))
      return special[i].kind;
  return NULL;
}

const char *pt_net_refused(const struct sockaddr *sa,
                           const pt_net_list_t *allow) {
  if (sa->sa_family == AF_INET)
    return refused_addr(
        AF_INET,
        (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)
            ->sin_addr,
        allow);
  if (sa->sa_family == AF_INET6)
    return refused_addr(
        AF_INET6,
        ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr,
        allow);
  return "not an internet address";
}

/* An address as text: its family and bytes, or 0. */
static int parse_addr(const char *s, unsigned char *a) {
  if (inet_pton(AF_INET, s, a) == 1)
    return AF_INET;
  if (inet_pton(AF_INET6, s, a) == 1)
    return AF_INET6;
  return 0;
}

const char *pt_net_refused_host(const char *host,
                                const pt_net_list_t *allow) {
  char buf[64];
  size_t n = strlen(host);
  unsigned char a[16];
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
    if (n - 2 >= sizeof buf)
      return NULL;
    memcpy(buf, host + 1, n - 2);
    buf[n - 2] = '\0';
    /* A zone ("fe80::1%eth0") is not part of the address. */
    char *zone = strchr(buf, '%');
    if (zone != NULL)
      *zone = '\0';
    host = buf;
  }
  int family = parse_addr(host, a);
  if (family != 0)
    return refused_addr(family, a, allow);
  n = strlen(host);
  if (n > 0 && host[n - 1] == '.')
    n--;
  if ((n == 9 && strncasecmp(host, "localhost", 9) == 0) ||
      (n > 10 && strncasecmp(host + n - 10, ".localhost", 10) == 0)) {
    static const unsigned char lo[4] = {127, 0, 0, 1};
    return refused_addr(AF_INET, lo, allow);
  }
  return NULL;
}

int pt_net_list_parse(const char *s, pt_net_list_t *list, char *why,
                      size_t whylen) {
  pt_net_list_t tmp;
  pt_net_list_t *l = list != NULL ? list : &tmp;
  l->n = 0;
  for (int i = 1; *s != '\0'; i++) {
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    char entry[64];
    while (len > 0 && (*s == ' ' || *s == '\t')) {
      s++;
      len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
      len--;
    if (l->n == PT_NET_LIST_MAX) {
      snprintf(why, whylen, "at most %d networks", PT_NET_LIST_MAX);
      return -1;
    }
    if (len == 0 || len >= sizeof entry) {
      snprintf(why, whylen, "entry %d is %s", i,
               len == 0 ? "empty" : "too long");
      return -1;
    }
    memcpy(entry, s, len);
    entry[len] = '\0';
    pt_net_t *net = &l->net[l->n];
    memset(net, 0, sizeof *net);
    char *slash = strchr(entry, '/');
    if (slash != NULL)
      *slash = '\0';
    net->family = parse_addr(entry, net->addr);
    int max = net->family == AF_INET ? 32 : 128;
    net->prefix = max;
    if (slash != NULL) {
      char *end;
      long p = strtol(slash + 1, &end, 10);
      net->prefix = (slash[1] >= '0' && slash[1] <= '9' && *end == '\0' &&
                     p >= 0 && p <= max)
                        ? (int)p
                        : -1;
    }
    if (net->family == 0 || net->prefix < 0) {
      snprintf(why, whylen,
               "entry %d (\"%.*s\") is not an address or a network "
               "(10.0.0.0/8, fd00::/8)",
               i, (int)len, s);
      return -1;
    }
    l->n++;
    s = comma ? comma + 1 : s + strlen(s);
  }
  return 0;
}
