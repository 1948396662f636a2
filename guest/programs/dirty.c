/*
 * dirty: dirties a chosen number of pages per round, for the dirty-tracking,
 * pause and save benchmarks (bench/dirty.ts, bench/save_restore.ts).
 *
 * Args:
 *   pages=N   distinct 4 KiB pages written per round          (default 1000)
 *   stride=S  distance between written pages, in pages        (default 1)
 *   log=L     1: print a line when HC_WAIT returns without an event
 *             (after a pause, a save or a restore)             (default 0)
 *
 * The region is N*S pages of heap (N=100000 with S=1 needs 391 MiB; a guest
 * without that much heap panics with heap_alloc's message). Each round
 * writes 8 bytes (the round number) at the start of each of the N pages.
 * Round 1 runs at start; every later round is started by one byte of console
 * input (the VMM's ConsoleBackend.push()), so console output and other
 * events never start a round. Between rounds the guest waits in HC_WAIT with
 * no deadline: a VMM sees it blocked.
 *
 * Console output:
 *   dirty: pages=<N> stride=<S> region=0x<gpa>     at start
 *   dirty: resumed round=<r>                        (log=1) see above
 */
#include "kemari.h"

int kemari_main(void) {
  uint64_t pages = arg_u64("pages", 1000);
  uint64_t stride = arg_u64("stride", 1);
  int verbose = arg_u64("log", 0) != 0;
  if (stride == 0) panic("dirty: stride must be at least 1");
  if (pages > (1ull << 32) / stride) panic("dirty: pages*stride is too large");
  uint64_t span = pages * stride * KEMARI_PAGE_SIZE;
  volatile uint64_t *region = span ? heap_alloc(span, KEMARI_PAGE_SIZE) : 0;
  const uint64_t step = stride * (KEMARI_PAGE_SIZE / sizeof(uint64_t));
  printf("dirty: pages=%lu stride=%lu region=0x%lx\n", pages, stride, (uint64_t)(uintptr_t)region);

  for (uint64_t round = 1;; round++) {
    for (uint64_t i = 0; i < pages; i++) region[i * step] = round;
    for (;;) {
      char c;
      uint32_t seen = event_seq();
      if (console_read(&c, 1) == 1) break;
      uint32_t seq = hc_wait(UINT64_MAX, seen);
      if (verbose && seq == seen) printf("dirty: resumed round=%lu\n", round);
    }
  }
}
