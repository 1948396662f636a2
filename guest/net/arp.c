/*
 * ARP (RFC 826) for IPv4 over Ethernet, with a small cache.
 *
 * - ARP_ENTRIES entries, least recently used evicted. An entry is created
 *   only for a next hop we send to, or for a host in our subnet that asks
 *   for our address (it is about to talk to us).
 * - Every ARP packet whose sender is already cached updates that entry (the
 *   RFC 826 merge rule). That is how a gratuitous ARP (sender IP == target
 *   IP) from a host that moved (e.g. a failed-over peer) is honoured. Unknown
 *   senders of gratuitous ARPs are not added.
 * - A packet claiming our own IP from another MAC is counted as a conflict
 *   and answered with our own gratuitous ARP (at most once every 10 s).
 * - While an address is unresolved the last frame sent to it is kept (one per
 *   entry); requests are repeated every second, 3 times, then the frame is
 *   dropped and the entry freed. TCP retransmits anyway.
 * - A resolved entry is used for ARP_TTL_NS, then still used while a new
 *   request (at most one a second) refreshes it.
 */
#include "net_priv.h"

#define ARP_ENTRIES 16
#define ARP_TTL_NS (60ull * NS_PER_SEC)
#define ARP_RETRY_NS NS_PER_SEC
#define ARP_TRIES 3
#define ARP_DEFEND_NS (10ull * NS_PER_SEC)
#define ARP_LEN 28u

enum { ARP_FREE, ARP_PENDING, ARP_OK };

struct arp_entry {
  uint8_t state;
  uint8_t tries;
  uint8_t mac[6];
  uint32_t ip;
  uint64_t confirmed; /* ARP_OK: when the mapping was last heard */
  uint64_t last_req;  /* when we last asked */
  uint64_t used;      /* for LRU eviction */
  uint32_t pend_len;  /* queued frame (Ethernet header space included) */
  uint8_t pend[NET_FRAME_MAX];
};

static struct arp_entry arp_tab[ARP_ENTRIES];
static uint8_t arp_frame[ETH_MIN_FRAME];
static uint64_t last_defend;
static int defended;

static struct arp_entry *arp_find(uint32_t ip) {
  for (int i = 0; i < ARP_ENTRIES; i++) {
    if (arp_tab[i].state != ARP_FREE && arp_tab[i].ip == ip) return &arp_tab[i];
  }
  return 0;
}

static struct arp_entry *arp_alloc(uint32_t ip, uint64_t now) {
  struct arp_entry *victim = &arp_tab[0];
  for (int i = 0; i < ARP_ENTRIES; i++) {
    struct arp_entry *e = &arp_tab[i];
    if (e->state == ARP_FREE) {
      victim = e;
      break;
    }
    if (e->used < victim->used) victim = e;
  }
  if (victim->state == ARP_PENDING && victim->pend_len) net_count(NET_C_ARP_UNRESOLVED);
  victim->state = ARP_PENDING;
  victim->tries = 0;
  victim->ip = ip;
  victim->confirmed = 0;
  victim->last_req = 0;
  victim->used = now;
  victim->pend_len = 0;
  return victim;
}

/* op 1 request / 2 reply. */
static void arp_send(uint16_t op, const uint8_t *eth_dst, const uint8_t *tha, uint32_t tpa) {
  uint8_t *a = arp_frame + ETH_HLEN;
  wr16(a, 1);
  wr16(a + 2, ETHERTYPE_IPV4);
  a[4] = 6;
  a[5] = 4;
  wr16(a + 6, op);
  memcpy(a + 8, net_g.drv.mac, 6);
  wr32(a + 14, net_g.ip);
  memcpy(a + 18, tha, 6);
  wr32(a + 24, tpa);
  eth_send(eth_dst, ETHERTYPE_ARP, arp_frame, ETH_HLEN + ARP_LEN);
}

static void arp_request(struct arp_entry *e, uint64_t now) {
  static const uint8_t zero[6];
  e->last_req = now;
  if (e->tries < 255) e->tries++;
  arp_send(1, eth_broadcast, zero, e->ip);
}

void arp_announce(void) {
  static const uint8_t zero[6];
  arp_send(1, eth_broadcast, zero, net_g.ip);
}

static void arp_learn(struct arp_entry *e, const uint8_t *mac, uint64_t now) {
  memcpy(e->mac, mac, 6);
  e->state = ARP_OK;
  e->tries = 0;
  e->confirmed = now;
  e->used = now;
  if (e->pend_len) {
    uint32_t len = e->pend_len;
    e->pend_len = 0;
    eth_send(e->mac, ETHERTYPE_IPV4, e->pend, len);
  }
}

int arp_output(uint32_t next_hop, uint32_t len) {
  if (len > NET_FRAME_MAX) return NET_EINVAL;
  uint64_t now = clock_ns();
  struct arp_entry *e = arp_find(next_hop);
  if (e && e->state == ARP_OK) {
    e->used = now;
    if (now - e->confirmed >= ARP_TTL_NS && now - e->last_req >= ARP_RETRY_NS) {
      arp_request(e, now); /* refresh; keep using the old mapping meanwhile */
    }
    return eth_send(e->mac, ETHERTYPE_IPV4, net_g.tx, len);
  }
  if (!e) e = arp_alloc(next_hop, now);
  if (e->pend_len) net_count(NET_C_ARP_UNRESOLVED); /* replaced */
  memcpy(e->pend, net_g.tx, len);
  e->pend_len = len;
  e->used = now;
  if (e->tries == 0 || now - e->last_req >= ARP_RETRY_NS) arp_request(e, now);
  return 0;
}

void arp_timers(uint64_t now) {
  for (int i = 0; i < ARP_ENTRIES; i++) {
    struct arp_entry *e = &arp_tab[i];
    if (e->state != ARP_PENDING || now - e->last_req < ARP_RETRY_NS) continue;
    if (e->tries >= ARP_TRIES) {
      if (e->pend_len) net_count(NET_C_ARP_UNRESOLVED);
      e->pend_len = 0;
      e->state = ARP_FREE;
    } else {
      arp_request(e, now);
    }
  }
}

uint64_t arp_next_timer(void) {
  uint64_t t = UINT64_MAX;
  for (int i = 0; i < ARP_ENTRIES; i++) {
    const struct arp_entry *e = &arp_tab[i];
    if (e->state == ARP_PENDING && e->last_req + ARP_RETRY_NS < t) {
      t = e->last_req + ARP_RETRY_NS;
    }
  }
  return t;
}

void arp_input(const uint8_t *p, uint32_t len) {
  if (len < ARP_LEN || rd16(p) != 1 || rd16(p + 2) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4) {
    net_count(NET_C_ARP_BAD);
    return;
  }
  uint16_t op = rd16(p + 6);
  const uint8_t *sha = p + 8;
  uint32_t spa = rd32(p + 14);
  uint32_t tpa = rd32(p + 24);
  if ((op != 1 && op != 2) || (sha[0] & 1) || ip_is_broadcast(spa) || (spa >> 28) >= 14) {
    net_count(NET_C_ARP_BAD);
    return;
  }
  uint64_t now = clock_ns();
  if (spa == net_g.ip) {
    if (memcmp(sha, net_g.drv.mac, 6) != 0) {
      net_count(NET_C_ARP_CONFLICT);
      if (!defended || now - last_defend >= ARP_DEFEND_NS) {
        defended = 1;
        last_defend = now;
        arp_announce();
      }
    }
    return;
  }
  int merged = 0;
  if (spa != 0) {
    struct arp_entry *e = arp_find(spa);
    if (e) {
      arp_learn(e, sha, now);
      merged = 1;
    }
  }
  if (tpa != net_g.ip) return;
  if (!merged && spa != 0 && (spa & net_g.mask) == (net_g.ip & net_g.mask)) {
    arp_learn(arp_alloc(spa, now), sha, now);
  }
  if (op == 1) arp_send(2, sha, sha, spa); /* a probe (spa 0) gets tpa 0 */
}
