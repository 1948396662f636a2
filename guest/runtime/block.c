/*
 * Block device: synchronous blkif frontend over the shared ring at
 * KEMARI_BLOCK_GPA (32 slots of 112-byte requests / 16-byte responses).
 *
 * One request is in flight at a time. The private frontend indexes are not
 * kept in guest variables but re-derived from the shared page for each
 * request:
 *   req_prod_pvt = sring->req_prod   (only the guest writes it)
 *   rsp_cons     = sring->rsp_prod   (every earlier response was consumed)
 * So the helpers stay correct after a ring overrun, where the backend sets
 * its req_cons to req_prod, consumes nothing and leaves rsp_prod unchanged:
 * the next request goes into slot req_prod & 31 and its response is expected
 * at slot rsp_prod & 31, which need not be the same slot.
 *
 * Notification: rsp_event is set to rsp_cons + 1 before each request (we want
 * to hear about the very next response) and the block doorbell is rung for
 * every request regardless of req_event.
 */
#include "kemari.h"

#define MAX_SEGS BLKIF_MAX_SEGMENTS_PER_REQUEST
#define WAIT_SLICE_NS NS_PER_SEC /* re-check at least once a second */

static uint64_t next_id = 1;
/* Bounce buffer for callers whose buffer is not 512-aligned or below 1 MiB.
 * It is in the image (>= 0x200000), as the VMM requires. */
static uint8_t bounce[MAX_SEGS * KEMARI_PAGE_SIZE] __attribute__((aligned(4096)));

uint64_t blk_sectors(void) { return KEMARI_BOOT->disk_sectors; }

int blk_readonly(void) { return (KEMARI_BOOT->disk_flags & KEMARI_DISK_READONLY) != 0; }

uint64_t blk_next_id(void) { return next_id++; }

void kemari_block_init(void) {
  struct blkif_sring *r = KEMARI_BLOCK_RING;
  /* Like SHARED_RING_INIT, but only for a pristine ring: a restored guest
   * never gets here, and a ring the VMM already set up is left alone. */
  if (r->req_prod == 0 && r->rsp_prod == 0 && r->req_event == 0 && r->rsp_event == 0) {
    __atomic_store_n(&r->req_event, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&r->rsp_event, 1, __ATOMIC_SEQ_CST);
  }
}

int blk_submit(const struct blkif_request *req, struct blkif_response *rsp,
               uint64_t timeout_ns) {
  struct blkif_sring *r = KEMARI_BLOCK_RING;
  uint32_t prod = __atomic_load_n(&r->req_prod, __ATOMIC_SEQ_CST);
  uint32_t rsp_cons = __atomic_load_n(&r->rsp_prod, __ATOMIC_SEQ_CST);

  r->ring[prod & (BLKIF_RING_SIZE - 1)].req = *req;
  __atomic_store_n(&r->rsp_event, rsp_cons + 1, __ATOMIC_SEQ_CST);
  /* seq_cst store: the request body is visible before the new index. */
  __atomic_store_n(&r->req_prod, prod + 1, __ATOMIC_SEQ_CST);
  doorbell_block();

  uint64_t deadline = timeout_ns ? clock_ns() + timeout_ns : UINT64_MAX;
  uint32_t ready;
  for (;;) {
    uint32_t seen = event_seq(); /* before looking at the ring: no lost wakeup */
    ready = __atomic_load_n(&r->rsp_prod, __ATOMIC_SEQ_CST) - rsp_cons;
    if (ready != 0) break;
    uint64_t now = clock_ns();
    if (now >= deadline) return BLK_TIMEOUT;
    uint64_t until = now + WAIT_SLICE_NS;
    hc_wait(until < deadline ? until : deadline, seen);
  }
  if (ready != 1) {
    panic("block: backend posted %u responses for one request (id %lu)", ready, req->id);
  }
  *rsp = r->ring[rsp_cons & (BLKIF_RING_SIZE - 1)].rsp;
  __asm__ volatile("" : : : "memory"); /* data pages were written by the VMM */
  if (rsp->id != req->id) {
    panic("block: response id %lu does not match request id %lu", rsp->id, req->id);
  }
  return 0;
}

/* Waits forever and returns the response status. */
static int submit_status(const struct blkif_request *req) {
  struct blkif_response rsp;
  blk_submit(req, &rsp, 0);
  if (rsp.operation != req->operation) {
    panic("block: response operation %u does not match request operation %u",
          rsp.operation, req->operation);
  }
  return rsp.status;
}

static uint32_t gfn(uintptr_t addr) {
  uint64_t f = (uint64_t)addr >> 12;
  if (f > UINT32_MAX) panic("block: buffer %p beyond the 32-bit gref range", (void *)addr);
  return (uint32_t)f;
}

static int blk_rw(uint8_t op, uint64_t sector, uintptr_t addr, uint32_t nsect) {
  int direct = (addr % BLKIF_SECTOR_SIZE) == 0 && addr >= KEMARI_GUEST_FREE_GPA;
  while (nsect > 0) {
    struct blkif_request req;
    memset(&req, 0, sizeof req);
    req.operation = op;
    req.id = blk_next_id();
    req.sector_number = sector;
    uint32_t done = 0;
    if (direct) {
      uintptr_t a = addr;
      while (done < nsect && req.nr_segments < MAX_SEGS) {
        uint32_t first = (uint32_t)(a & (KEMARI_PAGE_SIZE - 1)) / BLKIF_SECTOR_SIZE;
        uint32_t n = BLKIF_SECTORS_PER_PAGE - first;
        if (n > nsect - done) n = nsect - done;
        struct blkif_request_segment *s = &req.seg[req.nr_segments++];
        s->gref = gfn(a);
        s->first_sect = (uint8_t)first;
        s->last_sect = (uint8_t)(first + n - 1);
        a += (uintptr_t)n * BLKIF_SECTOR_SIZE;
        done += n;
      }
    } else {
      done = nsect < MAX_SEGS * BLKIF_SECTORS_PER_PAGE ? nsect
                                                       : MAX_SEGS * BLKIF_SECTORS_PER_PAGE;
      if (op == BLKIF_OP_WRITE) memcpy(bounce, (const void *)addr, done * BLKIF_SECTOR_SIZE);
      for (uint32_t i = 0; i * BLKIF_SECTORS_PER_PAGE < done; i++) {
        uint32_t left = done - i * BLKIF_SECTORS_PER_PAGE;
        struct blkif_request_segment *s = &req.seg[req.nr_segments++];
        s->gref = gfn((uintptr_t)bounce + i * KEMARI_PAGE_SIZE);
        s->first_sect = 0;
        s->last_sect = (uint8_t)((left < BLKIF_SECTORS_PER_PAGE ? left
                                                                : BLKIF_SECTORS_PER_PAGE) - 1);
      }
    }
    int status = submit_status(&req);
    if (status != BLKIF_RSP_OKAY) return status;
    if (!direct && op == BLKIF_OP_READ) memcpy((void *)addr, bounce, done * BLKIF_SECTOR_SIZE);
    addr += (uintptr_t)done * BLKIF_SECTOR_SIZE;
    sector += done;
    nsect -= done;
  }
  return BLKIF_RSP_OKAY;
}

int blk_read(uint64_t sector, void *buf, uint32_t nsect) {
  return blk_rw(BLKIF_OP_READ, sector, (uintptr_t)buf, nsect);
}

int blk_write(uint64_t sector, const void *buf, uint32_t nsect) {
  return blk_rw(BLKIF_OP_WRITE, sector, (uintptr_t)buf, nsect);
}

int blk_flush(void) {
  struct blkif_request req;
  memset(&req, 0, sizeof req);
  req.operation = BLKIF_OP_FLUSH_DISKCACHE;
  req.id = blk_next_id();
  return submit_status(&req);
}
