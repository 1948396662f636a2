/*
 * badreq: sends malformed block requests and ring-index abuse, and checks
 * that the VMM refuses each one and keeps working. Needs a writable disk of
 * at least 128 sectors. Panics ("badreq: <case>: ...") on any unexpected
 * outcome or when a response does not arrive within 2 s of PV-clock time.
 *
 * Console output: one "badreq: <case>: ok" line per case, then
 *   badreq: ok <n> checks
 *
 * ---- Contract with the VMM (the backend) ----
 *
 * Per-request errors. Every request gets exactly one response with the
 * request's id and operation echoed.
 *   - unknown operation (99, and ops this VMM does not implement)
 *       -> BLKIF_RSP_EOPNOTSUPP (-2); for 4 (RESERVED_1), 5 (DISCARD) and
 *          6 (INDIRECT) either -2 or BLKIF_RSP_ERROR (-1) is accepted;
 *   - READ/WRITE with nr_segments 0 or > 11, a gref outside guest RAM or
 *     below 0x100000 >> 12, first_sect > last_sect, last_sect > 7, a range
 *     past the disk end, or sector_number + length overflowing u64
 *       -> BLKIF_RSP_ERROR (-1), with no data moved: a refused READ leaves
 *          every data page untouched, a refused WRITE leaves the disk alone.
 *   events->bad_requests may count these (this program only requires that
 *   it never decreases, and that it does not move across valid requests).
 *
 * Block ring overrun. If req_prod - req_cons (u32 arithmetic) exceeds the
 * ring size (32) when the backend looks at the ring, the backend:
 *   - increments events->bad_requests (and bumps events->seq),
 *   - consumes nothing: it sets its req_cons to the req_prod value it read,
 *   - posts no response: rsp_prod is left unchanged.
 * The guest then re-syncs from the shared ring: its rsp_cons becomes the
 * current rsp_prod and it continues producing at the current req_prod. The
 * runtime's block helpers do this on every request anyway (they derive both
 * private indexes from the shared page), so after an overrun the next request
 * sits in slot req_prod & 31 and its response arrives in slot rsp_prod & 31.
 * Moving req_prod backwards is also an overrun under this rule (the u32
 * difference is huge) and is tested too.
 *
 * Console overrun. If out_prod - out_cons exceeds 2048, the backend
 * increments events->bad_requests, discards the ring contents by setting
 * out_cons = out_prod (the value it read) and carries on.
 */
#include "kemari.h"

#define TIMEOUT_NS (2 * NS_PER_SEC)
#define POLL_NS (10 * NS_PER_MS)
#define BIG_ID 0xfedcba9876543210ull

static uint8_t buf[KEMARI_PAGE_SIZE * 2] __attribute__((aligned(4096)));
static uint8_t save0[512] __attribute__((aligned(512)));
static uint8_t check0[512] __attribute__((aligned(512)));
static uint8_t mwrite[KEMARI_PAGE_SIZE * 6] __attribute__((aligned(4096)));
static uint8_t mread[KEMARI_PAGE_SIZE * 6] __attribute__((aligned(4096)));
static uint8_t msave[KEMARI_PAGE_SIZE * 6] __attribute__((aligned(4096)));

static unsigned checks;
static uint64_t disk;
static uint64_t ram_pages;

static void passed(const char *what) {
  checks++;
  printf("badreq: %s: ok\n", what);
}

static uint32_t gfn_of(const void *p) { return (uint32_t)((uintptr_t)p >> 12); }

/* A valid one-sector READ of sector 0 into buf (page 0, sector 0). */
static struct blkif_request valid_read(void) {
  struct blkif_request req;
  memset(&req, 0, sizeof req);
  req.operation = BLKIF_OP_READ;
  req.nr_segments = 1;
  req.id = blk_next_id();
  req.sector_number = 0;
  req.seg[0].gref = gfn_of(buf);
  req.seg[0].first_sect = 0;
  req.seg[0].last_sect = 0;
  return req;
}

static struct blkif_response submit(const char *what, const struct blkif_request *req) {
  struct blkif_response rsp;
  if (blk_submit(req, &rsp, TIMEOUT_NS) == BLK_TIMEOUT) {
    panic("badreq: %s: no response within 2 s", what);
  }
  /* blk_submit already checked that the id was echoed. */
  if (rsp.operation != req->operation) {
    panic("badreq: %s: response operation %u, request operation %u", what, rsp.operation,
          req->operation);
  }
  return rsp;
}

static void check_bad_not_decreased(const char *what, uint32_t before) {
  uint32_t now = bad_requests();
  if ((int32_t)(now - before) < 0) {
    panic("badreq: %s: bad_requests went down: %u -> %u", what, before, now);
  }
}

/* The VMM still serves a valid request, and a valid request is not counted
 * as bad. */
static void check_alive(const char *what) {
  uint32_t bad0 = bad_requests();
  struct blkif_request req = valid_read();
  struct blkif_response rsp = submit(what, &req);
  if (rsp.status != BLKIF_RSP_OKAY) {
    panic("badreq: %s: valid READ afterwards failed with status %d", what, rsp.status);
  }
  if (bad_requests() != bad0) {
    panic("badreq: %s: a valid READ changed bad_requests %u -> %u", what, bad0, bad_requests());
  }
  checks++;
}

/* Posts a malformed request; its status must be want or also. */
static void expect_refused(const char *what, const struct blkif_request *req, int want,
                           int also) {
  uint32_t bad0 = bad_requests();
  memset(buf, 0xa5, sizeof buf);
  struct blkif_response rsp = submit(what, req);
  if (rsp.status != want && rsp.status != also) {
    panic("badreq: %s: status %d, expected %d", what, rsp.status, want);
  }
  check_bad_not_decreased(what, bad0);
  for (size_t i = 0; i < sizeof buf; i++) {
    if (buf[i] != 0xa5) panic("badreq: %s: refused request changed the data page at %lu", what, i);
  }
  passed(what);
  check_alive(what);
}

static void refused(const char *what, const struct blkif_request *req) {
  expect_refused(what, req, BLKIF_RSP_ERROR, BLKIF_RSP_ERROR);
}

/* ---- waiting on the event page ---- */

static uint32_t wait_bad0;
static int bad_moved(void) { return bad_requests() != wait_bad0; }
static int console_reset(void) {
  struct xencons_interface *con = KEMARI_CONSOLE;
  return bad_moved() && __atomic_load_n(&con->out_cons, __ATOMIC_SEQ_CST) ==
                            __atomic_load_n(&con->out_prod, __ATOMIC_SEQ_CST);
}

static void wait_for(const char *what, int (*cond)(void)) {
  uint64_t deadline = clock_ns() + TIMEOUT_NS;
  for (;;) {
    uint32_t seen = event_seq();
    if (cond()) return;
    uint64_t now = clock_ns();
    if (now >= deadline) panic("badreq: %s: timed out after 2 s", what);
    uint64_t until = now + POLL_NS;
    hc_wait(until < deadline ? until : deadline, seen);
  }
}

/* ---- cases ---- */

static void segment_cases(void) {
  struct blkif_request r;

  r = valid_read();
  r.nr_segments = 0;
  refused("nr_segments=0", &r);

  r = valid_read();
  r.nr_segments = 12;
  for (int i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) r.seg[i] = r.seg[0];
  refused("nr_segments=12", &r);

  r = valid_read();
  r.seg[0].gref = (uint32_t)ram_pages;
  refused("gref at the end of RAM", &r);

  r = valid_read();
  r.seg[0].gref = 0xffffffffu;
  refused("gref 0xffffffff", &r);

  r = valid_read();
  r.seg[0].gref = KEMARI_BOOT_GPA >> 12;
  refused("READ into the boot page (gref 0x60)", &r);

  r = valid_read();
  r.seg[0].gref = (KEMARI_BLOCK_GPA >> 12);
  refused("READ into the block ring page (gref 0x64)", &r);

  /* WRITE from below 1 MiB: must not reach the disk. */
  int st = blk_read(0, save0, 1);
  if (st != BLKIF_RSP_OKAY) panic("badreq: read of sector 0 failed: status %d", st);
  r = valid_read();
  r.operation = BLKIF_OP_WRITE;
  r.seg[0].gref = (KEMARI_GUEST_FREE_GPA >> 12) - 1;
  refused("WRITE from gref 0xff", &r);
  st = blk_read(0, check0, 1);
  if (st != BLKIF_RSP_OKAY) panic("badreq: read of sector 0 failed: status %d", st);
  if (memcmp(save0, check0, 512) != 0) panic("badreq: refused WRITE changed sector 0");
  passed("refused WRITE left the disk alone");

  r = valid_read();
  r.nr_segments = 2;
  r.seg[1].gref = KEMARI_BOOT_GPA >> 12;
  r.seg[1].first_sect = 0;
  r.seg[1].last_sect = 0;
  refused("second segment in the boot page", &r);

  r = valid_read();
  r.seg[0].first_sect = 3;
  r.seg[0].last_sect = 2;
  refused("first_sect > last_sect", &r);

  r = valid_read();
  r.seg[0].first_sect = 0;
  r.seg[0].last_sect = 8;
  refused("last_sect=8", &r);

  r = valid_read();
  r.seg[0].first_sect = 8;
  r.seg[0].last_sect = 8;
  refused("first_sect=8", &r);
}

static void range_cases(void) {
  struct blkif_request r;

  r = valid_read();
  r.sector_number = disk;
  refused("sector at the disk end", &r);

  r = valid_read();
  r.sector_number = disk - 1;
  r.seg[0].last_sect = 1;
  refused("two sectors straddling the disk end", &r);

  r = valid_read();
  r.sector_number = UINT64_MAX - 3;
  r.seg[0].last_sect = 7; /* 8 sectors: the end wraps to 4 */
  refused("sector + length overflows u64", &r);

  r = valid_read();
  r.sector_number = UINT64_MAX;
  refused("sector_number = 2^64-1", &r);
}

static void op_cases(void) {
  struct blkif_request r;

  r = valid_read();
  r.operation = 99;
  expect_refused("unknown operation 99", &r, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_EOPNOTSUPP);

  r = valid_read();
  r.operation = BLKIF_OP_RESERVED_1;
  expect_refused("operation 4 (RESERVED_1)", &r, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR);

  r = valid_read();
  r.operation = BLKIF_OP_DISCARD;
  expect_refused("operation 5 (DISCARD)", &r, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR);

  r = valid_read();
  r.operation = BLKIF_OP_INDIRECT;
  expect_refused("operation 6 (INDIRECT)", &r, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR);

  /* A huge id is fine and must be echoed (blk_submit checks the echo). */
  r = valid_read();
  r.id = BIG_ID;
  uint32_t bad0 = bad_requests();
  struct blkif_response rsp = submit("huge id", &r);
  if (rsp.status != BLKIF_RSP_OKAY) panic("badreq: huge id: status %d", rsp.status);
  if (rsp.id != BIG_ID) panic("badreq: huge id: echoed as 0x%lx", rsp.id);
  if (bad_requests() != bad0) panic("badreq: huge id: counted as a bad request");
  passed("huge id echoed");
}

/* req_prod moved by delta without writing requests: the backend must count
 * it, consume nothing and post nothing (contract above). */
static void overrun_case(const char *what, uint32_t delta) {
  struct blkif_sring *ring = KEMARI_BLOCK_RING;
  wait_bad0 = bad_requests();
  uint32_t prod = __atomic_load_n(&ring->req_prod, __ATOMIC_SEQ_CST);
  uint32_t rsp0 = __atomic_load_n(&ring->rsp_prod, __ATOMIC_SEQ_CST);
  __atomic_store_n(&ring->req_prod, prod + delta, __ATOMIC_SEQ_CST);
  doorbell_block();
  wait_for(what, bad_moved);
  uint32_t rsp1 = __atomic_load_n(&ring->rsp_prod, __ATOMIC_SEQ_CST);
  if (rsp1 != rsp0) {
    panic("badreq: %s: backend posted %u responses for garbage", what, rsp1 - rsp0);
  }
  passed(what);
  check_alive(what); /* re-synced from the shared ring by blk_submit */
  check_alive(what);
}

static void console_overrun_case(void) {
  const char *what = "console out_prod +100000";
  struct xencons_interface *con = KEMARI_CONSOLE;
  /* Drain first so the discard loses nothing; print nothing until reset. */
  if (!console_flush(TIMEOUT_NS)) panic("badreq: console did not drain within 2 s");
  wait_bad0 = bad_requests();
  uint32_t prod = __atomic_load_n(&con->out_prod, __ATOMIC_SEQ_CST);
  __atomic_store_n(&con->out_prod, prod + 100000u, __ATOMIC_SEQ_CST);
  doorbell_console();
  wait_for(what, console_reset);
  passed(what);
}

static void fill(uint8_t *p, size_t n, uint32_t salt) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)((i * 7 + salt + (i >> 9)) & 0xff);
}

/* Valid I/O after all of the above: one sector at sector 0, then a
 * multi-segment transfer near the disk end (content restored afterwards). */
static void valid_io_cases(void) {
  int st;
  fill(buf, 512, 0x3c);
  st = blk_write(0, buf, 1);
  if (st != BLKIF_RSP_OKAY) panic("badreq: WRITE of sector 0 failed: status %d", st);
  memset(check0, 0, 512);
  st = blk_read(0, check0, 1);
  if (st != BLKIF_RSP_OKAY) panic("badreq: READ of sector 0 failed: status %d", st);
  if (memcmp(buf, check0, 512) != 0) panic("badreq: sector 0 read back differs");
  passed("valid WRITE + READ of sector 0");
  st = blk_write(0, save0, 1); /* put the old content back */
  if (st != BLKIF_RSP_OKAY) panic("badreq: restoring sector 0 failed: status %d", st);

  st = blk_flush();
  if (st != BLKIF_RSP_OKAY) panic("badreq: FLUSH failed: status %d", st);
  passed("FLUSH");

  /* 37 sectors from 3 sectors into a page: 5 segments (5+8+8+8+8). */
  const uint32_t n = 37;
  const uint64_t sector = disk - 40;
  st = blk_read(sector, msave, n);
  if (st != BLKIF_RSP_OKAY) panic("badreq: multi-segment save failed: status %d", st);
  uint8_t *src = mwrite + 3 * 512;
  fill(src, n * 512, 0x91);
  st = blk_write(sector, src, n);
  if (st != BLKIF_RSP_OKAY) panic("badreq: multi-segment WRITE failed: status %d", st);
  /* Read back through the bounce buffer (unaligned destination). */
  memset(mread, 0, sizeof mread);
  st = blk_read(sector, mread + 1, n);
  if (st != BLKIF_RSP_OKAY) panic("badreq: multi-segment READ failed: status %d", st);
  if (memcmp(src, mread + 1, n * 512) != 0) panic("badreq: multi-segment read back differs");
  st = blk_write(sector, msave, n);
  if (st != BLKIF_RSP_OKAY) panic("badreq: multi-segment restore failed: status %d", st);
  passed("multi-segment WRITE + READ");
}

int kemari_main(void) {
  disk = blk_sectors();
  ram_pages = KEMARI_BOOT->ram_bytes >> 12;
  if (disk < 128 || blk_readonly()) {
    panic("badreq: needs a writable disk of at least 128 sectors (have %lu%s)", disk,
          blk_readonly() ? ", read-only" : "");
  }

  check_alive("baseline");
  segment_cases();
  range_cases();
  op_cases();
  overrun_case("req_prod +1000", 1000);
  overrun_case("req_prod +33", 33);
  overrun_case("req_prod -5", (uint32_t)-5);
  console_overrun_case();
  valid_io_cases();

  printf("badreq: ok %u checks\n", checks);
  return 0;
}
