/*
 * pingpong: block-ring round-trip latency.
 *
 * Args: n=N round trips (default 10000, capped at 100000; at least 1).
 * Each round trip posts one 1-sector READ of sector 0, rings the block
 * doorbell and waits (HC_WAIT, no spinning) for its response; clock_ns() is
 * read before posting and after the response is seen.
 *
 * Console output:
 *   pingpong: n=<N> p50_ns=<p50> p99_ns=<p99> max_ns=<max>
 * with pXX = sorted[(N - 1) * XX / 100] (nearest rank, rounded down).
 */
#include "kemari.h"

#define MAX_N 100000

static uint64_t samples[MAX_N];
static uint8_t sector_buf[512] __attribute__((aligned(4096)));

/* In-place heapsort (no recursion, no allocation). */
static void sift_down(uint64_t *a, size_t root, size_t n) {
  for (;;) {
    size_t child = 2 * root + 1;
    if (child >= n) return;
    if (child + 1 < n && a[child + 1] > a[child]) child++;
    if (a[root] >= a[child]) return;
    uint64_t t = a[root];
    a[root] = a[child];
    a[child] = t;
    root = child;
  }
}

static void sort_u64(uint64_t *a, size_t n) {
  for (size_t i = n / 2; i-- > 0;) sift_down(a, i, n);
  for (size_t end = n; end-- > 1;) {
    uint64_t t = a[0];
    a[0] = a[end];
    a[end] = t;
    sift_down(a, 0, end);
  }
}

int kemari_main(void) {
  uint64_t n = arg_u64("n", 10000);
  if (n > MAX_N) n = MAX_N;
  if (n == 0) n = 1;
  if (blk_sectors() == 0) panic("pingpong: needs a disk");

  for (uint64_t i = 0; i < n; i++) {
    uint64_t t0 = clock_ns();
    int st = blk_read(0, sector_buf, 1);
    uint64_t t1 = clock_ns();
    if (st != BLKIF_RSP_OKAY) panic("pingpong: READ %lu failed: status %d", i, st);
    samples[i] = t1 - t0;
  }
  sort_u64(samples, n);
  printf("pingpong: n=%lu p50_ns=%lu p99_ns=%lu max_ns=%lu\n", n, samples[(n - 1) * 50 / 100],
         samples[(n - 1) * 99 / 100], samples[n - 1]);
  return 0;
}
