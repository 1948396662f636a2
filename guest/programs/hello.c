/*
 * hello: the smallest guest. Prints three lines and exits with code 0:
 *   hello from the kemari guest
 *   args: <the args string as passed>
 *   clock: <PV clock ns>
 */
#include "kemari.h"

int kemari_main(void) {
  printf("hello from the kemari guest\n");
  printf("args: %s\n", args_raw());
  printf("clock: %lu\n", clock_ns());
  return 0;
}
