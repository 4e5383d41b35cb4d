/* Which addresses a merchant's notify_url may reach: the public internet,
 * and the networks notify.allow_networks lists. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "core/pt_config.h"
#include "core/pt_net.h"
#include "core/pt_task.h"

/* Every kind of address that is not public, as a URL writes it, and a few
 * public ones beside them. */
Test(net, addresses_that_are_not_public_are_named) {
  static const struct {
    const char *host, *kind; /* kind NULL: public */
  } cases[] = {
      {"8.8.8.8", NULL},
      {"172.32.0.1", NULL},
      {"100.128.0.1", NULL},
      {"[2606:4700::1111]", NULL},
      {"shop.example", NULL}, /* a name: checked when resolved */
      {"127.0.0.1", "loopback"},
      {"127.255.255.254", "loopback"},
      {"10.1.2.3", "private"},
      {"172.16.0.1", "private"},
      {"172.31.255.255", "private"},
      {"192.168.1.1", "private"},
      {"100.64.0.1", "private"},
      {"169.254.169.254", "link-local"},
      {"0.0.0.0", "unspecified"},
      {"224.0.0.1", "multicast"},
      {"255.255.255.255", "reserved"},
      {"192.0.2.1", "documentation"},
      {"[::1]", "loopback"},
      {"::1", "loopback"},
      {"[::]", "unspecified"},
      {"[fd12:3456::1]", "private"},
      {"[fe80::1]", "link-local"},
      {"[fe80::1%25eth0]", "link-local"},
      {"[ff02::1]", "multicast"},
      {"[::ffff:10.0.0.1]", "private"},   /* IPv4-mapped */
      {"[::ffff:8.8.8.8]", NULL},
      {"[64:ff9b::7f00:1]", "loopback"},  /* NAT64 of 127.0.0.1 */
      {"[2002:a9fe:a9fe::1]", "link-local"}, /* 6to4 of 169.254.169.254 */
      {"localhost", "loopback"},
      {"LOCALHOST.", "loopback"},
      {"shop.localhost", "loopback"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *got = pt_net_refused_host(cases[i].host, NULL);
    if (cases[i].kind == NULL)
      cr_expect_null(got, "%s: refused as %s", cases[i].host, got);
    else
      cr_expect(got != NULL && strcmp(got, cases[i].kind) == 0,
                "%s: %s, want %s", cases[i].host, got ? got : "public",
                cases[i].kind);
  }
}

/* An operator's networks let their addresses through, and only them. */
Test(net, listed_networks_are_reached) {
  pt_net_list_t l;
  char why[160];
  cr_assert_eq(pt_net_list_parse(" 10.20.0.0/16 , ::1,fd00::/8", &l, why,
                                 sizeof why),
               0, "%s", why);
  cr_assert_eq(l.n, 3);
  cr_expect_null(pt_net_refused_host("10.20.5.5", &l));
  cr_expect_null(pt_net_refused_host("[::ffff:10.20.0.9]", &l));
  cr_expect_str_eq(pt_net_refused_host("10.21.0.1", &l), "private");
  cr_expect_null(pt_net_refused_host("[::1]", &l));
  cr_expect_str_eq(pt_net_refused_host("127.0.0.1", &l), "loopback");
  cr_expect_null(pt_net_refused_host("[fdff::1]", &l));
  cr_expect_str_eq(pt_net_refused_host("[fc00::1]", &l), "private");
  cr_assert_eq(pt_net_list_parse("", &l, why, sizeof why), 0);
  cr_assert_eq(l.n, 0);
}

Test(net, a_bad_list_is_an_error_that_says_which_entry) {
  static const char *bad[] = {
      "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/-1",
      "host.example", "10.0.0.0/8,,1.2.3.4", "10.0.0.0/8, 300.1.1.1"};
  char why[160];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    why[0] = '\0';
    cr_expect_neq(pt_net_list_parse(bad[i], NULL, why, sizeof why), 0,
                  "\"%s\" was taken", bad[i]);
    cr_expect_not_null(strstr(why, "entry"), "%s: %s", bad[i], why);
  }
  char many[400] = "";
  for (int i = 0; i <= PT_NET_LIST_MAX; i++)
    snprintf(many + strlen(many), sizeof many - strlen(many), "%s10.%d.0.0/16",
             i ? "," : "", i);
  cr_expect_neq(pt_net_list_parse(many, NULL, why, sizeof why), 0);
  cr_expect_not_null(strstr(why, "at most"), "%s", why);

  /* The configuration key refuses them by name, and keeps a good list. */
  pt_config_t cfg;
  pt_error_t err;
  pt_config_defaults(&cfg);
  cr_assert_eq(cfg.notify_allow.n, 0, "the default reaches public ones only");
  cr_assert_neq(pt_config_set(&cfg, "notify.allow_networks", "10.0.0.0/33",
                              &err), 0);
  cr_expect_not_null(strstr(err.message, "notify.allow_networks"), "%s",
                     err.message);
  cr_assert_eq(pt_config_set(&cfg, "notify.allow_networks",
                             "10.0.0.0/8,::1", &err), 0, "%s", err.message);
  cr_expect_eq(cfg.notify_allow.n, 2);
  cr_expect_null(pt_net_refused_host("10.9.9.9", &cfg.notify_allow));
}

/* A submitted notify_url naming such an address outright is refused,
 * however the address is written. */
Test(net, a_notify_url_at_an_internal_address_is_refused_at_submit) {
  static const struct {
    const char *url;
    int refused;
  } cases[] = {
      {"https://shop.example/notify", 0},
      {"http://203.0.114.5:8080/n", 0},
      {"http://10.0.0.7/n", 1},
      {"http://169.254.169.254/latest/meta-data/", 1},
      {"http://[::1]:8080/n", 1},
      {"http://localhost:9/n", 1},
      {"http://2130706433/n", 1},  /* 127.0.0.1 as one number */
      {"http://0x7f.1/n", 1},      /* and in hex */
      {"http://[::ffff:127.0.0.1]/n", 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char body[512];
    pt_task_t t;
    pt_input_error_t ie;
    snprintf(body, sizeof body,
             "{\"type\":\"pay\",\"channel\":\"sim\",\"out_trade_no\":\"A\","
             "\"amount\":1,\"currency\":\"CNY\",\"subject\":\"s\","
             "\"notify_url\":\"%s\"}",
             cases[i].url);
    cr_assert_eq(
        pt_task_parse(body, strlen(body), PT_PARSE_SUBMIT, 0, &t, &ie), 0,
        "%s: %s", cases[i].url, ie.message);
    int rc = pt_task_check_notify_url(&t, NULL, &ie);
    if (cases[i].refused) {
      cr_expect_eq(rc, PT_EINVAL, "%s was taken", cases[i].url);
      if (rc != 0)
        cr_expect_str_eq(ie.code, "invalid_notify_url");
    } else {
      cr_expect_eq(rc, 0, "%s: %s", cases[i].url, ie.message);
    }
    pt_task_destroy(&t);
  }
}
