/*
 * Internal interfaces of the network stack (guest/net/). Not for programs.
 *
 * Parsing rule for every file: received bytes are only read through the
 * rd16/rd32 helpers or plain byte loads, at offsets that were checked against
 * the length actually received. Nothing is ever cast to a header struct.
 */
#ifndef KEMARI_NET_PRIV_H
#define KEMARI_NET_PRIV_H

#include "net.h"

#define ETH_HLEN 14u
#define ETH_MIN_FRAME 60u
#define ETHERTYPE_IPV4 0x0800u
#define ETHERTYPE_ARP 0x0806u
#define IP_HLEN 20u
#define IP_PROTO_ICMP 1u
#define IP_PROTO_TCP 6u
#define IP_PROTO_UDP 17u

/* ---- Byte access (network byte order) ---- */
static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static inline void wr32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* ---- Global state (one interface) ---- */
struct net_state {
  struct net_driver drv;
  int up;
  uint32_t ip, mask, gw, mtu;
  uint64_t rng;
  uint16_t ip_id;
  uint64_t counters[NET_C_COUNT];
  /* The frame being processed and the frame being built. Input handlers may
   * send (replies, ACKs) while the received frame is still in use, so the
   * two never share memory. */
  uint8_t rx[NET_FRAME_MAX] __attribute__((aligned(64)));
  uint8_t tx[NET_FRAME_MAX] __attribute__((aligned(64)));
};
extern struct net_state net_g;

static inline void net_count(enum net_counter c) { net_g.counters[c]++; }
uint64_t net_random(void); /* xorshift64*, seeded from drv.seed */

/* ---- Ethernet (eth.c) ---- */
extern const uint8_t eth_broadcast[6];
void eth_input(const uint8_t *frame, uint32_t len);
/* frame = net_g.tx (or an ARP-queued copy), header space included; fills the
 * Ethernet header and hands the frame to the driver. */
int eth_send(const uint8_t dst[6], uint16_t type, uint8_t *frame, uint32_t len);

/* ---- ARP (arp.c) ---- */
void arp_input(const uint8_t *p, uint32_t len);
/* Sends the IPv4 frame in net_g.tx (len bytes, Ethernet header space
 * included) to next_hop, resolving it first; queues one frame per
 * unresolved address. */
int arp_output(uint32_t next_hop, uint32_t len);
void arp_announce(void);
void arp_timers(uint64_t now);
uint64_t arp_next_timer(void);

/* ---- IPv4 (ipv4.c) ---- */
/* One's complement sum helpers: csum_add over bytes (an odd length pads the
 * last byte with zero, so only the last chunk may be odd), csum_fold gives
 * the final 16-bit checksum (~sum). */
uint32_t csum_add(uint32_t sum, const uint8_t *p, uint32_t len);
uint16_t csum_fold(uint32_t sum);
uint32_t csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint32_t len);
/* Where an outgoing transport header goes in net_g.tx. */
static inline uint8_t *ip_payload(void) { return net_g.tx + ETH_HLEN + IP_HLEN; }
/* Sends the l4len bytes at ip_payload(). 0 or < 0. */
int ip_send(uint32_t dst, uint8_t proto, uint32_t l4len);
void ip_input(const uint8_t *p, uint32_t len);
int ip_is_broadcast(uint32_t a);

/* ---- Transports ---- */
void icmp_input(uint32_t src, const uint8_t *p, uint32_t len);
void udp_input(uint32_t src, uint32_t dst, const uint8_t *p, uint32_t len);
void tcp_input(uint32_t src, uint32_t dst, const uint8_t *p, uint32_t len);
int tcp_init(void);
uint64_t tcp_timers(uint64_t now);
uint64_t tcp_next_timer(void);
void tcp_flush_acks(void);

/* Sequence arithmetic (mod 2^32). */
static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }
static inline int seq_gt(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }
static inline int seq_ge(uint32_t a, uint32_t b) { return (int32_t)(a - b) >= 0; }

static inline uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }
static inline uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }
static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

#endif
