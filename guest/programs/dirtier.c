/*
 * dirtier: rewrites a region of memory as fast as it can, with no I/O, to
 * test that the initial synchronization converges (by throttling the guest)
 * when the guest dirties memory faster than the link carries it.
 *
 * Args: pages=N (default 4096), seconds=S (default 0 = forever).
 * Console: "dirtier <passes>" once a second; "dirtier: done <passes>" at the end.
 * Each pass writes the pass number into the first 8 bytes of every page and
 * checks the previous value first (panic "memory lost at page ..." otherwise),
 * so a page missed by the synchronization shows after a failover.
 */
#include "kemari.h"

int kemari_main(void) {
  uint64_t pages = arg_u64("pages", 4096);
  uint64_t seconds = arg_u64("seconds", 0);
  volatile uint64_t *region = (volatile uint64_t *)heap_alloc(pages * 4096, 4096);
  uint64_t start = clock_ns(), next_print = start + NS_PER_SEC, pass = 0;
  for (;;) {
    for (uint64_t p = 0; p < pages; p++) {
      volatile uint64_t *w = region + p * 512;
      if (*w != pass) panic("memory lost at page %lu: %lu != %lu", p, *w, pass);
      *w = pass + 1;
    }
    pass++;
    uint64_t now = clock_ns();
    if (now >= next_print) {
      printf("dirtier %lu\n", pass);
      next_print += NS_PER_SEC;
    }
    if (seconds && now - start >= seconds * NS_PER_SEC) break;
  }
  printf("dirtier: done %lu\n", pass);
  return 0;
}
