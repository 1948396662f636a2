/*
 * Stack setup and the event loop: net_init, net_poll (receive a batch of
 * frames, run due timers, send pending ACKs), net_wait (sleep in the driver
 * until a frame or the next timer), counters, address parsing/formatting.
 */
#include "net_priv.h"

#ifdef KEMARI_NET_HOST
/* Host harness: each frame is processed from an exact-size heap copy, so
 * AddressSanitizer flags any read past the received length. */
void *malloc(size_t size);
void free(void *p);
#endif

#define RX_BATCH 64 /* frames per net_poll */

struct net_state net_g;

static const char *const counter_names[NET_C_COUNT] = {
    [NET_C_RX_FRAMES] = "rx_frames",
    [NET_C_TX_FRAMES] = "tx_frames",
    [NET_C_RX_BYTES] = "rx_bytes",
    [NET_C_TX_BYTES] = "tx_bytes",
    [NET_C_TX_FAIL] = "tx_fail",
    [NET_C_RX_DRIVER] = "rx_driver_drop",
    [NET_C_ETH_SHORT] = "eth_short",
    [NET_C_ETH_BAD_SRC] = "eth_bad_src",
    [NET_C_ARP_BAD] = "arp_bad",
    [NET_C_IP_SHORT] = "ip_short",
    [NET_C_IP_BAD_HDR] = "ip_bad_hdr",
    [NET_C_IP_BAD_CSUM] = "ip_bad_csum",
    [NET_C_IP_FRAG] = "ip_frag",
    [NET_C_IP_BAD_SRC] = "ip_bad_src",
    [NET_C_ICMP_BAD] = "icmp_bad",
    [NET_C_UDP_BAD] = "udp_bad",
    [NET_C_TCP_BAD_HDR] = "tcp_bad_hdr",
    [NET_C_TCP_BAD_CSUM] = "tcp_bad_csum",
    [NET_C_TCP_BAD_OPT] = "tcp_bad_opt",
    [NET_C_TCP_BAD_FLAGS] = "tcp_bad_flags",
    [NET_C_ETH_IGNORED] = "eth_ignored",
    [NET_C_IP_IGNORED] = "ip_ignored",
    [NET_C_ICMP_IGNORED] = "icmp_ignored",
    [NET_C_UDP_NO_PORT] = "udp_no_port",
    [NET_C_ARP_CONFLICT] = "arp_conflict",
    [NET_C_ARP_UNRESOLVED] = "arp_unresolved",
    [NET_C_NO_ROUTE] = "no_route",
    [NET_C_TCP_RST_SENT] = "tcp_rst_sent",
    [NET_C_TCP_SYN_DROPPED] = "tcp_syn_dropped",
    [NET_C_TCP_OOW] = "tcp_out_of_window",
    [NET_C_TCP_OOO] = "tcp_ooo_kept",
    [NET_C_TCP_OOO_DROP] = "tcp_ooo_dropped",
    [NET_C_TCP_RETRANS] = "tcp_rto",
    [NET_C_TCP_FAST_RETRANS] = "tcp_fast_retrans",
    [NET_C_TCP_PROBES] = "tcp_probes",
    [NET_C_TCP_ACCEPTED] = "tcp_accepted",
    [NET_C_TCP_RESETS] = "tcp_peer_resets",
    [NET_C_TCP_TIMEOUTS] = "tcp_timeouts",
};

uint64_t net_counter(enum net_counter c) {
  return (unsigned)c < NET_C_COUNT ? net_g.counters[c] : 0;
}

const char *net_counter_name(enum net_counter c) {
  return (unsigned)c < NET_C_COUNT && counter_names[c] ? counter_names[c] : "?";
}

uint64_t net_drops(void) {
  uint64_t n = 0;
  for (int c = NET_C_ETH_SHORT; c <= NET_C_DROP_LAST_; c++) n += net_g.counters[c];
  return n;
}

uint64_t net_random(void) {
  uint64_t x = net_g.rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  net_g.rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

int net_init(const struct net_driver *drv, const struct net_config *cfg) {
  if (!drv || !cfg || !drv->send || !drv->recv || !drv->wait) return NET_EINVAL;
  if (cfg->prefix < 1 || cfg->prefix > 31) return NET_EINVAL;
  uint32_t mask = ~0u << (32 - cfg->prefix);
  uint32_t ip = cfg->ip;
  /* A unicast host address of its subnet. */
  if (ip == 0 || (ip >> 28) >= 14 || (ip >> 24) == 127 || (ip & ~mask) == 0 ||
      (ip & ~mask) == ~mask) {
    return NET_EINVAL;
  }
  if (cfg->gw && ((cfg->gw & mask) != (ip & mask) || cfg->gw == ip)) return NET_EINVAL;
  uint32_t mtu = drv->mtu ? drv->mtu : 1500;
  if (mtu > NET_MTU_MAX) mtu = NET_MTU_MAX;
  if (mtu < NET_MTU_MIN) return NET_EINVAL;
  if (drv->mac[0] & 1) return NET_EINVAL; /* multicast MAC */

  memset(&net_g, 0, sizeof net_g);
  net_g.drv = *drv;
  net_g.ip = ip;
  net_g.mask = mask;
  net_g.gw = cfg->gw;
  net_g.mtu = mtu;
  net_g.rng = drv->seed ? drv->seed : 0x9e3779b97f4a7c15ull;
  net_g.ip_id = (uint16_t)net_random();
  int rc = tcp_init();
  if (rc < 0) return rc;
  net_g.up = 1;
  arp_announce();
  return 0;
}

uint64_t net_next_timer(void) {
  if (!net_g.up) return UINT64_MAX;
  uint64_t t = tcp_next_timer();
  uint64_t a = arp_next_timer();
  return t < a ? t : a;
}

uint32_t net_poll(void) {
  if (!net_g.up) return 0;
  uint32_t n = 0;
  while (n < RX_BATCH) {
    int len = net_g.drv.recv(net_g.drv.ctx, net_g.rx, sizeof net_g.rx);
    if (len == 0) break;
    n++;
    if (len < 0 || (uint32_t)len > sizeof net_g.rx) {
      net_count(NET_C_RX_DRIVER);
      continue;
    }
    net_count(NET_C_RX_FRAMES);
    net_g.counters[NET_C_RX_BYTES] += (uint32_t)len;
#ifdef KEMARI_NET_HOST
    uint8_t *copy = malloc((size_t)len ? (size_t)len : 1);
    if (!copy) panic("net: out of memory");
    memcpy(copy, net_g.rx, (size_t)len);
    eth_input(copy, (uint32_t)len);
    free(copy);
#else
    eth_input(net_g.rx, (uint32_t)len);
#endif
  }
  uint64_t now = clock_ns();
  arp_timers(now);
  tcp_timers(now);
  tcp_flush_acks();
  return n;
}

void net_wait(uint64_t deadline_ns) {
  if (!net_g.up) return;
  tcp_flush_acks(); /* window updates the application's reads made due */
  uint64_t t = net_next_timer();
  if (t < deadline_ns) deadline_ns = t;
  net_g.drv.wait(net_g.drv.ctx, deadline_ns);
}

/* ---- Addresses ---- */

static int parse_dec(const char **sp, uint32_t max, uint32_t *out) {
  const char *s = *sp;
  uint32_t v = 0;
  int digits = 0;
  while (*s >= '0' && *s <= '9') {
    v = v * 10 + (uint32_t)(*s - '0');
    if (v > max || ++digits > 3) return -1;
    s++;
  }
  if (digits == 0) return -1;
  *sp = s;
  *out = v;
  return 0;
}

int net_parse_ip(const char *s, uint32_t *ip, uint32_t *prefix) {
  if (!s || !ip) return NET_EINVAL;
  uint32_t a = 0;
  for (int i = 0; i < 4; i++) {
    uint32_t part;
    if (parse_dec(&s, 255, &part) < 0) return NET_EINVAL;
    a = (a << 8) | part;
    if (i < 3 && *s++ != '.') return NET_EINVAL;
  }
  uint32_t pfx = 32;
  if (*s == '/') {
    if (!prefix) return NET_EINVAL;
    s++;
    if (parse_dec(&s, 32, &pfx) < 0) return NET_EINVAL;
  }
  if (*s != 0) return NET_EINVAL;
  *ip = a;
  if (prefix) *prefix = pfx;
  return 0;
}

void net_format_ip(char *buf, size_t size, uint32_t ip) {
  snprintf(buf, size, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

void net_format_mac(char *buf, size_t size, const uint8_t mac[6]) {
  snprintf(buf, size, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
           mac[5]);
}
