/*
 * logwriter: the first kemari workload. It appends numbered records to the
 * disk at a fixed rate, and checks on every record that nothing the guest
 * relies on was lost: the disk log, dirtied memory, vector/opmask registers,
 * and the monotonicity of the PV clock.
 *
 * Args (all optional):
 *   records=N  records to write in this boot; 0 = forever        (default 0)
 *   rate=R     records per second; 0 = as fast as possible       (default 100)
 *   dirty=P    heap pages dirtied per record                     (default 16)
 *   flush=K    FLUSH_DISKCACHE after every K records; 0 = never  (default 1)
 *   verify=V   1: verify the existing log and append to it;
 *              0: do not read the disk, start at seq 1            (default 1)
 *
 * Disk log: the record with sequence number n (n >= 1) is sector n; sector 0
 * is unused. A record is 512 bytes, little endian:
 *   @0   u32 magic 0x474f4c4b ("KLOG")
 *   @4   u32 reserved, 0
 *   @8   u64 seq
 *   @16  u64 time_ns   PV clock when the record was made
 *   @24  u64 simd      the SIMD fold below
 *   @32  u64 boot_id   from the boot page
 *   @40  468 bytes     byte i (40 <= i < 508) = (seq * 31 + i) & 0xff
 *   @508 u32 crc32 (zlib) of bytes 0..507
 *
 * Console output:
 *   logwriter: verified <count> records       (verify=1 with a disk)
 *   rec <seq> t=<time_ns> simd=<16 hex digits> (one per record, decimal seq/t)
 *   logwriter: done <last_seq>                 (after records=N records)
 *
 * SIMD state, kept only in registers for the whole run (the compiler never
 * uses vector registers: -mgeneral-regs-only):
 *   xmm8  2 x u64, ymm9 4 x u64, zmm20 8 x u64, opmask k3 (64 bits).
 * Before the first record every lane and k3 are set to first_seq - 1; each
 * record adds 1 to every lane and to k3 and then checks that all 14 lanes and
 * k3 equal the record's seq. The fold written to the record and console is
 *   simd = (sum of the 14 lanes) ^ (k3 << 32)            (mod 2^64)
 * which, when the state is intact, is
 *   simd = (14 * seq) ^ (seq << 32)                       (mod 2^64)
 * e.g. seq 1 -> 0x000000010000000e, seq 3 -> 0x000000030000002a.
 *
 * No disk (disk_sectors == 0): records are only printed (seq from 1).
 */
#include "kemari.h"

#define KLOG_MAGIC 0x474f4c4bu
#define VERIFY_BATCH 64 /* sectors per read while verifying */

struct klog_record {
  uint32_t magic;
  uint32_t reserved;
  uint64_t seq;
  uint64_t time_ns;
  uint64_t simd;
  uint64_t boot_id;
  uint8_t pattern[468];
  uint32_t crc;
};
_Static_assert(sizeof(struct klog_record) == 512, "record size");
_Static_assert(__builtin_offsetof(struct klog_record, pattern) == 40, "pattern offset");
_Static_assert(__builtin_offsetof(struct klog_record, crc) == 508, "crc offset");

static struct klog_record rec __attribute__((aligned(512)));
static uint8_t verify_buf[VERIFY_BATCH * 512] __attribute__((aligned(4096)));

/* ---- Records ---- */

static void record_fill(struct klog_record *r, uint64_t seq, uint64_t time_ns, uint64_t simd,
                        uint64_t boot_id) {
  r->magic = KLOG_MAGIC;
  r->reserved = 0;
  r->seq = seq;
  r->time_ns = time_ns;
  r->simd = simd;
  r->boot_id = boot_id;
  for (uint32_t i = 40; i < 508; i++) r->pattern[i - 40] = (uint8_t)(seq * 31 + i);
  r->crc = crc32(0, r, 508);
}

static int record_ok(const struct klog_record *r, uint64_t sector) {
  return r->magic == KLOG_MAGIC && r->seq == sector && crc32(0, r, 508) == r->crc;
}

/* Reads sectors 1, 2, ... until one without the KLOG magic; returns how many
 * valid records precede it. Panics on a corrupt record. */
static uint64_t verify_log(uint64_t disk) {
  uint64_t count = 0;
  for (uint64_t sector = 1; sector < disk;) {
    uint32_t n = disk - sector < VERIFY_BATCH ? (uint32_t)(disk - sector) : VERIFY_BATCH;
    int st = blk_read(sector, verify_buf, n);
    if (st != BLKIF_RSP_OKAY) {
      panic("logwriter: read of sectors %lu+%u failed: status %d", sector, n, st);
    }
    for (uint32_t i = 0; i < n; i++) {
      const struct klog_record *r = (const struct klog_record *)(verify_buf + i * 512);
      if (r->magic != KLOG_MAGIC) return count;
      if (!record_ok(r, sector + i)) {
        panic("log corrupt at sector %llu", (unsigned long long)(sector + i));
      }
      count++;
    }
    sector += n;
  }
  return count;
}

/* ---- SIMD state (see the header comment) ---- */

struct simd_state {
  uint64_t x[2]; /* xmm8 */
  uint64_t y[4]; /* ymm9 */
  uint64_t z[8]; /* zmm20 */
  uint64_t k;    /* k3 */
};

/* No clobber lists for vector registers: gcc rejects them under
 * -mgeneral-regs-only, and needs none since it never allocates them. */
static void simd_set(uint64_t v) {
  __asm__ volatile("vmovq %0, %%xmm8\n\t"
                   "vpbroadcastq %%xmm8, %%xmm8\n\t"
                   "vpbroadcastq %%xmm8, %%ymm9\n\t"
                   "vpbroadcastq %0, %%zmm20\n\t"
                   "kmovq %0, %%k3"
                   :
                   : "r"(v));
}

static void simd_increment(void) {
  uint64_t tmp;
  __asm__ volatile("vpcmpeqq %%ymm0, %%ymm0, %%ymm0\n\t"      /* ymm0 = all ones = -1 */
                   "vpsubq %%xmm0, %%xmm8, %%xmm8\n\t"        /* xmm8 -= -1 */
                   "vpsubq %%ymm0, %%ymm9, %%ymm9\n\t"        /* ymm9 -= -1 */
                   "vpternlogq $0xff, %%zmm0, %%zmm0, %%zmm0\n\t" /* zmm0 = -1 */
                   "vpsubq %%zmm0, %%zmm20, %%zmm20\n\t"      /* zmm20 -= -1 */
                   "kmovq %%k3, %0\n\t"
                   "incq %0\n\t"
                   "kmovq %0, %%k3"
                   : "=&r"(tmp)
                   :
                   : "cc");
}

/* Copies the registers out (the registers stay the source of truth). */
static void simd_read(struct simd_state *s) {
  __asm__ volatile("vmovdqu %%xmm8, %0" : "=m"(s->x));
  __asm__ volatile("vmovdqu %%ymm9, %0" : "=m"(s->y));
  __asm__ volatile("vmovdqu64 %%zmm20, %0" : "=m"(s->z));
  __asm__ volatile("kmovq %%k3, %0" : "=r"(s->k));
}

/* Checks every lane against seq and returns the fold. */
static uint64_t simd_check(uint64_t seq) {
  struct simd_state s;
  simd_read(&s);
  uint64_t sum = 0;
  for (int i = 0; i < 2; i++) {
    if (s.x[i] != seq) panic("SIMD state lost: xmm8 lane %d = %lu, expected %lu", i, s.x[i], seq);
    sum += s.x[i];
  }
  for (int i = 0; i < 4; i++) {
    if (s.y[i] != seq) panic("SIMD state lost: ymm9 lane %d = %lu, expected %lu", i, s.y[i], seq);
    sum += s.y[i];
  }
  for (int i = 0; i < 8; i++) {
    if (s.z[i] != seq) {
      panic("SIMD state lost: zmm20 lane %d = %lu, expected %lu", i, s.z[i], seq);
    }
    sum += s.z[i];
  }
  if (s.k != seq) panic("SIMD state lost: k3 = %lu, expected %lu", s.k, seq);
  return sum ^ (s.k << 32);
}

/* ---- Main ---- */

/* Offset of record i from the start: i * 1e9 / rate without overflow. */
static uint64_t schedule_ns(uint64_t i, uint64_t rate) {
  return (i / rate) * NS_PER_SEC + (i % rate) * NS_PER_SEC / rate;
}

int kemari_main(void) {
  uint64_t records = arg_u64("records", 0);
  uint64_t rate = arg_u64("rate", 100);
  uint64_t dirty = arg_u64("dirty", 16);
  uint64_t flush = arg_u64("flush", 1);
  uint64_t verify = arg_u64("verify", 1);
  if (verify > 1) panic("logwriter: verify must be 0 or 1");
  if (rate > NS_PER_SEC) panic("logwriter: rate %lu is above 1e9 records/s", rate);
  if (!cpu_has_avx512()) panic("logwriter: the CPU lacks AVX2/AVX-512F/AVX-512BW (or XCR0)");

  uint64_t disk = blk_sectors();
  uint64_t boot_id = KEMARI_BOOT->boot_id;
  if (disk && blk_readonly()) panic("logwriter: the disk is read-only");

  uint64_t first_seq = 1;
  if (disk && verify) {
    uint64_t count = verify_log(disk);
    printf("logwriter: verified %lu records\n", count);
    first_seq = count + 1;
  }
  if (disk && first_seq >= disk) panic("logwriter: disk full (%lu sectors)", disk);

  volatile uint64_t *region = 0;
  if (dirty) {
    if (dirty > heap_free_bytes() / KEMARI_PAGE_SIZE) {
      panic("logwriter: dirty=%lu pages do not fit in the heap (%lu bytes free)", dirty,
            heap_free_bytes());
    }
    region = heap_alloc(dirty * KEMARI_PAGE_SIZE, KEMARI_PAGE_SIZE);
    memset((void *)region, 0, dirty * KEMARI_PAGE_SIZE);
  }

  simd_set(first_seq - 1);
  uint64_t start = clock_ns();
  uint64_t prev = start;
  uint64_t last = 0;
  for (uint64_t i = 0; records == 0 || i < records; i++) {
    uint64_t seq = first_seq + i;

    /* (a) wait for the record's slot */
    if (rate) sleep_until(start + schedule_ns(i, rate));

    /* (f) the PV clock must never go backwards */
    uint64_t now = clock_ns();
    if (now < prev) panic("clock went backwards: %lu -> %lu", prev, now);
    prev = now;

    uint64_t simd;
    simd_increment();
    simd = simd_check(seq);

    if (disk) {
      if (seq >= disk) panic("logwriter: disk full at seq %lu (%lu sectors)", seq, disk);
      /* (b) one single-sector WRITE */
      record_fill(&rec, seq, now, simd, boot_id);
      int st = blk_write(seq, &rec, 1);
      if (st != BLKIF_RSP_OKAY) panic("logwriter: write of seq %lu failed: status %d", seq, st);
      /* (c) FLUSH every K records */
      if (flush && (i + 1) % flush == 0) {
        st = blk_flush();
        if (st != BLKIF_RSP_OKAY) panic("logwriter: flush after seq %lu failed: status %d", seq, st);
      }
    }

    /* (d) console */
    printf("rec %lu t=%lu simd=%016lx\n", seq, now, simd);

    /* (e) dirty P pages; each holds the seq that last wrote it */
    uint64_t expect = i == 0 ? 0 : seq - 1;
    for (uint64_t p = 0; p < dirty; p++) {
      volatile uint64_t *w = region + p * (KEMARI_PAGE_SIZE / 8);
      uint64_t old = *w;
      if (old != expect) {
        panic("memory lost at page %u: %llu != %llu", (unsigned)p, (unsigned long long)old,
              (unsigned long long)expect);
      }
      *w = seq;
    }
    last = seq;
  }
  printf("logwriter: done %lu\n", last);
  return 0;
}
