/*
 * netif frontend: the guest's NIC driver over the Xen-layout tx/rx rings at
 * KEMARI_NET_TX_GPA / KEMARI_NET_RX_GPA (256 slots each), with the doorbell
 * on KEMARI_PORT_DB_NET. Guest only (the host harness uses a TAP device).
 *
 * Buffers: NETIF_SLOTS pages for tx and NETIF_SLOTS pages for rx, taken from
 * the heap (above KEMARI_GUEST_FREE_GPA); gref = GPA >> 12, and a buffer's
 * id is its index, so the page of a response is found from its id.
 *
 * tx: the frame is copied into the page of a free id, posted as one
 *     netif_tx_request {gref, offset 0, flags 0, id, size}; the page stays
 *     busy until the response for that id arrives. When all ids are busy,
 *     send() waits up to TX_WAIT_NS for responses and then drops the frame
 *     (TCP retransmits it).
 * rx: every id is posted at start. recv() takes the next response, checks
 *     it (known, posted id; status > 0; offset + length within the page and
 *     within the caller's buffer; no multi-slot flags), copies the frame out
 *     and reposts the same page at once. The doorbell is rung for reposts
 *     every RX_NOTIFY_BATCH buffers and whenever the ring is found empty.
 *
 * Everything the backend writes is untrusted: responses are copied out of
 * the shared page before they are looked at, and a response index more than
 * a ring ahead makes the driver resynchronise instead of reading garbage.
 *
 * State lives in guest memory with the rings, so a checkpoint holds a
 * consistent pair. After a restore the backend must treat every request in
 * [rsp_prod, req_prod) as still outstanding (or answer it).
 */
#include "net_priv.h"

#define NETIF_SLOTS 256u
#define TX_WAIT_NS (20ull * NS_PER_MS)
#define RX_NOTIFY_BATCH 32u

#define NETTXF_MORE_DATA 4u
#define NETRXF_MORE_DATA 4u
#define NETRXF_EXTRA_INFO 8u
#define NETIF_RSP_OKAY 0

struct netif_tx_request {
  uint32_t gref;   /* 0 */
  uint16_t offset; /* 4 */
  uint16_t flags;  /* 6 */
  uint16_t id;     /* 8 */
  uint16_t size;   /* 10 */
};
struct netif_tx_response {
  uint16_t id;    /* 0 */
  int16_t status; /* 2 */
};
union netif_tx_entry {
  struct netif_tx_request req;
  struct netif_tx_response rsp;
};
struct netif_tx_sring {
  RING_IDX req_prod, req_event, rsp_prod, rsp_event;
  uint8_t pvt[4];
  uint8_t pad[44];
  union netif_tx_entry ring[NETIF_SLOTS];
};

struct netif_rx_request {
  uint16_t id;   /* 0 */
  uint16_t pad;  /* 2 */
  uint32_t gref; /* 4 */
};
struct netif_rx_response {
  uint16_t id;     /* 0 */
  uint16_t offset; /* 2 */
  uint16_t flags;  /* 4 */
  int16_t status;  /* 6 */
};
union netif_rx_entry {
  struct netif_rx_request req;
  struct netif_rx_response rsp;
};
struct netif_rx_sring {
  RING_IDX req_prod, req_event, rsp_prod, rsp_event;
  uint8_t pvt[4];
  uint8_t pad[44];
  union netif_rx_entry ring[NETIF_SLOTS];
};

_Static_assert(sizeof(struct netif_tx_request) == 12, "netif_tx_request");
_Static_assert(__builtin_offsetof(struct netif_tx_request, id) == 8, "tx id");
_Static_assert(sizeof(struct netif_tx_response) == 4, "netif_tx_response");
_Static_assert(sizeof(union netif_tx_entry) == 12, "tx entry");
_Static_assert(__builtin_offsetof(struct netif_tx_sring, ring) == 64, "tx ring offset");
_Static_assert(sizeof(struct netif_tx_sring) <= KEMARI_PAGE_SIZE, "tx ring page");
_Static_assert(sizeof(struct netif_rx_request) == 8, "netif_rx_request");
_Static_assert(__builtin_offsetof(struct netif_rx_request, gref) == 4, "rx gref");
_Static_assert(sizeof(struct netif_rx_response) == 8, "netif_rx_response");
_Static_assert(__builtin_offsetof(struct netif_rx_response, status) == 6, "rx status");
_Static_assert(__builtin_offsetof(struct netif_rx_sring, ring) == 64, "rx ring offset");
_Static_assert(sizeof(struct netif_rx_sring) <= KEMARI_PAGE_SIZE, "rx ring page");

#define TX_RING ((struct netif_tx_sring *)(uintptr_t)KEMARI_NET_TX_GPA)
#define RX_RING ((struct netif_rx_sring *)(uintptr_t)KEMARI_NET_RX_GPA)

struct netif_state {
  uint32_t tx_prod, tx_cons; /* req_prod_pvt, rsp_cons */
  uint32_t rx_prod, rx_cons;
  uint32_t tx_nfree;
  uint16_t tx_free[NETIF_SLOTS];
  uint8_t tx_busy[NETIF_SLOTS];
  uint8_t rx_posted[NETIF_SLOTS];
  uint32_t rx_unnotified;
  uint8_t rx_skip; /* continuation slots of an unsupported multi-slot frame */
  uint8_t *tx_pages, *rx_pages;
  uint64_t tx_errors, rx_errors, bad_responses, resyncs;
};

static struct netif_state nf;

static void doorbell_net(void) {
  __asm__ volatile("outb %%al, %[port]" : : "a"(0), [port] "i"(KEMARI_PORT_DB_NET) : "memory");
}

static uint32_t gref_of(const uint8_t *page) { return (uint32_t)((uintptr_t)page >> 12); }

/* The backend broke the ring protocol (more responses than requests): start
 * over from its index, forgetting every outstanding request. */
static void tx_resync(uint32_t prod) {
  nf.resyncs++;
  nf.tx_cons = prod;
  nf.tx_prod = prod;
  __atomic_store_n(&TX_RING->req_prod, prod, __ATOMIC_SEQ_CST);
  for (uint32_t i = 0; i < NETIF_SLOTS; i++) {
    nf.tx_busy[i] = 0;
    nf.tx_free[i] = (uint16_t)(NETIF_SLOTS - 1 - i);
  }
  nf.tx_nfree = NETIF_SLOTS;
}

static void tx_reclaim(void) {
  struct netif_tx_sring *r = TX_RING;
  uint32_t prod = __atomic_load_n(&r->rsp_prod, __ATOMIC_SEQ_CST);
  if (prod - nf.tx_cons > nf.tx_prod - nf.tx_cons) {
    tx_resync(prod); /* answers to requests never made */
    return;
  }
  while (nf.tx_cons != prod) {
    struct netif_tx_response rsp = r->ring[nf.tx_cons & (NETIF_SLOTS - 1)].rsp;
    nf.tx_cons++;
    if (rsp.id >= NETIF_SLOTS || !nf.tx_busy[rsp.id]) {
      nf.bad_responses++;
      continue;
    }
    nf.tx_busy[rsp.id] = 0;
    nf.tx_free[nf.tx_nfree++] = rsp.id;
    if (rsp.status != NETIF_RSP_OKAY) nf.tx_errors++;
  }
  __atomic_store_n(&r->rsp_event, nf.tx_cons + 1, __ATOMIC_SEQ_CST);
}

static int tx_space(void) {
  return nf.tx_nfree > 0 && nf.tx_prod - nf.tx_cons < NETIF_SLOTS;
}

static int netif_send(void *ctx, const void *frame, uint32_t len) {
  (void)ctx;
  if (len < ETH_HLEN || len > KEMARI_PAGE_SIZE) return -1;
  tx_reclaim();
  if (!tx_space()) {
    uint64_t deadline = clock_ns() + TX_WAIT_NS;
    for (;;) {
      uint32_t seen = event_seq(); /* before looking at the ring */
      tx_reclaim();
      if (tx_space()) break;
      if (clock_ns() >= deadline) return -1;
      hc_wait(deadline, seen);
    }
  }
  uint16_t id = nf.tx_free[--nf.tx_nfree];
  nf.tx_busy[id] = 1;
  uint8_t *page = nf.tx_pages + (size_t)id * KEMARI_PAGE_SIZE;
  memcpy(page, frame, len);
  struct netif_tx_sring *r = TX_RING;
  struct netif_tx_request *req = &r->ring[nf.tx_prod & (NETIF_SLOTS - 1)].req;
  req->gref = gref_of(page);
  req->offset = 0;
  req->flags = 0;
  req->id = id;
  req->size = (uint16_t)len;
  nf.tx_prod++;
  /* seq_cst store: the request and the page are visible before the index. */
  __atomic_store_n(&r->req_prod, nf.tx_prod, __ATOMIC_SEQ_CST);
  doorbell_net();
  return 0;
}

static void rx_post(uint16_t id) {
  struct netif_rx_sring *r = RX_RING;
  struct netif_rx_request *req = &r->ring[nf.rx_prod & (NETIF_SLOTS - 1)].req;
  req->id = id;
  req->pad = 0;
  req->gref = gref_of(nf.rx_pages + (size_t)id * KEMARI_PAGE_SIZE);
  nf.rx_posted[id] = 1;
  nf.rx_prod++;
  __atomic_store_n(&r->req_prod, nf.rx_prod, __ATOMIC_SEQ_CST);
  if (++nf.rx_unnotified >= RX_NOTIFY_BATCH) {
    nf.rx_unnotified = 0;
    doorbell_net();
  }
}

static void rx_notify(void) {
  if (nf.rx_unnotified) {
    nf.rx_unnotified = 0;
    doorbell_net();
  }
}

static void rx_resync(uint32_t prod) {
  nf.resyncs++;
  nf.rx_cons = prod;
  nf.rx_prod = prod;
  nf.rx_skip = 0;
  memset(nf.rx_posted, 0, sizeof nf.rx_posted);
  for (uint32_t i = 0; i < NETIF_SLOTS; i++) rx_post((uint16_t)i);
  rx_notify();
}

static int netif_recv(void *ctx, void *frame, uint32_t cap) {
  (void)ctx;
  struct netif_rx_sring *r = RX_RING;
  for (;;) {
    uint32_t prod = __atomic_load_n(&r->rsp_prod, __ATOMIC_SEQ_CST);
    if (prod - nf.rx_cons > nf.rx_prod - nf.rx_cons) {
      rx_resync(prod);
      return -1;
    }
    if (prod == nf.rx_cons) {
      __atomic_store_n(&r->rsp_event, nf.rx_cons + 1, __ATOMIC_SEQ_CST);
      rx_notify();
      return 0;
    }
    struct netif_rx_response rsp = r->ring[nf.rx_cons & (NETIF_SLOTS - 1)].rsp;
    __asm__ volatile("" : : : "memory"); /* the page was written by the backend */
    nf.rx_cons++;
    if (rsp.id >= NETIF_SLOTS || !nf.rx_posted[rsp.id]) {
      nf.bad_responses++;
      continue;
    }
    nf.rx_posted[rsp.id] = 0;
    int len = rsp.status;
    uint8_t skip = nf.rx_skip;
    nf.rx_skip = (rsp.flags & NETRXF_MORE_DATA) ? 1 : 0;
    if (skip || (rsp.flags & (NETRXF_MORE_DATA | NETRXF_EXTRA_INFO)) || len <= 0 ||
        (uint32_t)rsp.offset + (uint32_t)len > KEMARI_PAGE_SIZE || (uint32_t)len > cap) {
      if (len <= 0) nf.rx_errors++;
      rx_post(rsp.id);
      return -1;
    }
    memcpy(frame, nf.rx_pages + (size_t)rsp.id * KEMARI_PAGE_SIZE + rsp.offset, (size_t)len);
    rx_post(rsp.id);
    return len;
  }
}

static void netif_wait(void *ctx, uint64_t deadline_ns) {
  (void)ctx;
  uint32_t seen = event_seq(); /* before looking at the ring: no lost wakeup */
  if (__atomic_load_n(&RX_RING->rsp_prod, __ATOMIC_SEQ_CST) != nf.rx_cons) return;
  rx_notify();
  if (clock_ns() >= deadline_ns) return;
  hc_wait(deadline_ns, seen);
}

static uint8_t *alloc_pages(void) {
  uint8_t *p = heap_alloc((size_t)NETIF_SLOTS * KEMARI_PAGE_SIZE, KEMARI_PAGE_SIZE);
  uint64_t end = (uint64_t)(uintptr_t)p + (uint64_t)NETIF_SLOTS * KEMARI_PAGE_SIZE;
  if ((uintptr_t)p < KEMARI_GUEST_FREE_GPA || (end >> 12) > UINT32_MAX) {
    panic("netif: buffers at %p are outside the gref range", (void *)p);
  }
  memset(p, 0, (size_t)NETIF_SLOTS * KEMARI_PAGE_SIZE);
  return p;
}

int net_device_open(struct net_driver *drv) {
  const volatile struct kemari_boot *b = KEMARI_BOOT;
  if (!(b->net_flags & KEMARI_NET_PRESENT)) return NET_EDEV;
  memset(drv, 0, sizeof *drv);
  for (int i = 0; i < 6; i++) drv->mac[i] = b->mac[i];
  uint32_t mtu = b->net_mtu ? b->net_mtu : 1500;
  drv->mtu = mtu > NET_MTU_MAX ? NET_MTU_MAX : mtu;
  drv->seed = b->boot_id ^ clock_ns() ^ ((uint64_t)(uintptr_t)&nf << 17);
  drv->ctx = &nf;
  drv->send = netif_send;
  drv->recv = netif_recv;
  drv->wait = netif_wait;

  memset(&nf, 0, sizeof nf);
  nf.tx_pages = alloc_pages();
  nf.rx_pages = alloc_pages();
  for (uint32_t i = 0; i < NETIF_SLOTS; i++) nf.tx_free[i] = (uint16_t)(NETIF_SLOTS - 1 - i);
  nf.tx_nfree = NETIF_SLOTS;

  struct netif_tx_sring *tx = TX_RING;
  struct netif_rx_sring *rx = RX_RING;
  /* Like SHARED_RING_INIT for a pristine ring; otherwise adopt the indexes
   * (requests of an earlier life stay unknown and their answers are
   * ignored). */
  if (tx->req_prod == 0 && tx->rsp_prod == 0 && tx->req_event == 0 && tx->rsp_event == 0) {
    __atomic_store_n(&tx->req_event, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&tx->rsp_event, 1, __ATOMIC_SEQ_CST);
  }
  if (rx->req_prod == 0 && rx->rsp_prod == 0 && rx->req_event == 0 && rx->rsp_event == 0) {
    __atomic_store_n(&rx->req_event, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&rx->rsp_event, 1, __ATOMIC_SEQ_CST);
  }
  nf.tx_prod = tx->req_prod;
  nf.tx_cons = tx->rsp_prod;
  nf.rx_prod = rx->req_prod;
  nf.rx_cons = rx->rsp_prod;
  if (nf.tx_prod - nf.tx_cons > NETIF_SLOTS) nf.tx_cons = nf.tx_prod;
  if (nf.rx_prod - nf.rx_cons > NETIF_SLOTS) nf.rx_cons = nf.rx_prod;
  for (uint32_t i = 0; i < NETIF_SLOTS && nf.rx_prod - nf.rx_cons < NETIF_SLOTS; i++) {
    rx_post((uint16_t)i);
  }
  rx_notify();
  return 0;
}
