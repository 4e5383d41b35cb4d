/* paytask: one binary, one subcommand per process kind. The subcommands
 * arrive with the pipeline. */
#include <stdio.h>

int main(int argc, char **argv) {
  (void)argv;
  fprintf(stderr, "usage: paytask COMMAND [options]\n");
  return argc < 2 ? 2 : 0;
}
