/* Client commands that talk to the api over HTTP: `paytask submit` and
 * `paytask get`. They own no loop, so they use libcurl's easy interface. */
#ifndef PT_CLI_H
#define PT_CLI_H

int pt_cli_submit(int argc, char **argv);
int pt_cli_get(int argc, char **argv);
int pt_cli_config(int argc, char **argv);

#endif
