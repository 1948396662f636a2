/*
 * spin: a CPU-bound guest for checkpoint/failover tests.
 *
 * Args: seconds=S (default 0 = forever).
 * Busy loop: each iteration adds 1 to a counter in memory and to every u64
 * lane of zmm21 (8 lanes, kept only in the register; the compiler never uses
 * vector registers). Every 4096 iterations it checks all lanes == counter
 * (panic "SIMD state lost: zmm21 lane <i> = <v>, expected <c>") and that the
 * PV clock did not go backwards (panic "clock went backwards: ...").
 *
 * Console output:
 *   spin <count>        every 100 ms of PV-clock time (count = iterations)
 *   spin: done <count>  when S seconds have passed (then exit code 0)
 */
#include "kemari.h"

#define BATCH 4096
#define PRINT_NS (100 * NS_PER_MS)

static volatile uint64_t counter;

static void zmm21_zero(void) { __asm__ volatile("vpxorq %%zmm21, %%zmm21, %%zmm21" ::); }

static void zmm21_increment(void) {
  __asm__ volatile("vpternlogq $0xff, %%zmm0, %%zmm0, %%zmm0\n\t" /* zmm0 = -1 */
                   "vpsubq %%zmm0, %%zmm21, %%zmm21" ::);          /* zmm21 += 1 */
}

static void zmm21_check(uint64_t want) {
  uint64_t lanes[8];
  __asm__ volatile("vmovdqu64 %%zmm21, %0" : "=m"(lanes));
  for (int i = 0; i < 8; i++) {
    if (lanes[i] != want) {
      panic("SIMD state lost: zmm21 lane %d = %lu, expected %lu", i, lanes[i], want);
    }
  }
}

int kemari_main(void) {
  uint64_t seconds = arg_u64("seconds", 0);
  if (!cpu_has_avx512()) panic("spin: the CPU lacks AVX-512F/BW (or XCR0)");
  if (seconds > 1000000000ull) panic("spin: seconds=%lu is too large", seconds);

  zmm21_zero();
  counter = 0;
  uint64_t start = clock_ns();
  uint64_t prev = start;
  uint64_t next_print = start + PRINT_NS;
  uint64_t end = seconds ? start + seconds * NS_PER_SEC : UINT64_MAX;
  for (;;) {
    for (int j = 0; j < BATCH; j++) {
      counter = counter + 1;
      zmm21_increment();
    }
    zmm21_check(counter);
    uint64_t now = clock_ns();
    if (now < prev) panic("clock went backwards: %lu -> %lu", prev, now);
    prev = now;
    if (now >= next_print) {
      printf("spin %lu\n", counter);
      while (next_print <= now) next_print += PRINT_NS;
    }
    if (now >= end) break;
  }
  printf("spin: done %lu\n", counter);
  return 0;
}
