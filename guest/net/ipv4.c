/*
 * IPv4 (RFC 791) and the Internet checksum (RFC 1071).
 *
 * Input checks, in order: at least 20 bytes, version 4, 5 <= IHL and
 * IHL*4 <= received length, IHL*4 <= total length <= received length (the
 * rest is Ethernet padding and is cut off), header checksum, no fragment
 * (MF set or offset != 0: fragments are dropped, reassembly is not
 * implemented), a unicast source that is not ours. Options are accepted and
 * skipped. Unicast to us goes to ICMP/TCP/UDP; broadcast (255.255.255.255 or
 * the subnet's) only to UDP; anything else is ignored.
 *
 * Output: 20-byte header, DF set, TTL 64; on-link destinations directly,
 * others through the gateway (dropped when there is none).
 */
#include "net_priv.h"

uint32_t csum_add(uint32_t sum, const uint8_t *p, uint32_t len) {
  uint64_t s = sum;
  uint32_t i = 0;
  for (; i + 1 < len; i += 2) s += (uint32_t)((p[i] << 8) | p[i + 1]);
  if (i < len) s += (uint32_t)p[i] << 8;
  while (s >> 32) s = (s & 0xffffffffu) + (s >> 32);
  return (uint32_t)s;
}

uint16_t csum_fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

uint32_t csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint32_t len) {
  uint64_t s = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + len;
  while (s >> 32) s = (s & 0xffffffffu) + (s >> 32);
  return (uint32_t)s;
}

int ip_is_broadcast(uint32_t a) {
  return a == 0xffffffffu || (net_g.mask && a == (net_g.ip | ~net_g.mask));
}

/* Sources we never answer: zero, broadcast, multicast/reserved, loopback,
 * our own address. */
static int bad_source(uint32_t a) {
  return a == 0 || ip_is_broadcast(a) || (a >> 28) >= 14 || (a >> 24) == 127 || a == net_g.ip;
}

void ip_input(const uint8_t *p, uint32_t len) {
  if (len < IP_HLEN) {
    net_count(NET_C_IP_SHORT);
    return;
  }
  uint32_t hl = (uint32_t)(p[0] & 15) * 4;
  if ((p[0] >> 4) != 4 || hl < IP_HLEN || hl > len) {
    net_count(NET_C_IP_BAD_HDR);
    return;
  }
  uint32_t total = rd16(p + 2);
  if (total < hl || total > len) {
    net_count(NET_C_IP_BAD_HDR);
    return;
  }
  if (csum_fold(csum_add(0, p, hl)) != 0) {
    net_count(NET_C_IP_BAD_CSUM);
    return;
  }
  if (rd16(p + 6) & 0x3fff) { /* MF or a fragment offset */
    net_count(NET_C_IP_FRAG);
    return;
  }
  uint32_t src = rd32(p + 12), dst = rd32(p + 16);
  if (bad_source(src)) {
    net_count(NET_C_IP_BAD_SRC);
    return;
  }
  uint8_t proto = p[9];
  const uint8_t *payload = p + hl;
  uint32_t plen = total - hl;
  if (dst == net_g.ip) {
    switch (proto) {
      case IP_PROTO_ICMP: icmp_input(src, payload, plen); return;
      case IP_PROTO_TCP: tcp_input(src, dst, payload, plen); return;
      case IP_PROTO_UDP: udp_input(src, dst, payload, plen); return;
      default: break;
    }
  } else if (ip_is_broadcast(dst) && proto == IP_PROTO_UDP) {
    udp_input(src, dst, payload, plen);
    return;
  }
  net_count(NET_C_IP_IGNORED);
}

int ip_send(uint32_t dst, uint8_t proto, uint32_t l4len) {
  if (!net_g.up) return NET_EDEV;
  if (l4len > net_g.mtu - IP_HLEN) return NET_EINVAL;
  uint8_t *h = net_g.tx + ETH_HLEN;
  uint32_t total = IP_HLEN + l4len;
  h[0] = 0x45;
  h[1] = 0;
  wr16(h + 2, (uint16_t)total);
  wr16(h + 4, net_g.ip_id++);
  wr16(h + 6, 0x4000); /* DF */
  h[8] = 64;
  h[9] = proto;
  wr16(h + 10, 0);
  wr32(h + 12, net_g.ip);
  wr32(h + 16, dst);
  wr16(h + 10, csum_fold(csum_add(0, h, IP_HLEN)));
  uint32_t len = ETH_HLEN + total;
  if (ip_is_broadcast(dst)) return eth_send(eth_broadcast, ETHERTYPE_IPV4, net_g.tx, len);
  uint32_t hop = dst;
  if ((dst & net_g.mask) != (net_g.ip & net_g.mask)) {
    if (!net_g.gw) {
      net_count(NET_C_NO_ROUTE);
      return NET_EINVAL;
    }
    hop = net_g.gw;
  }
  if (bad_source(hop)) { /* never ARP for ourselves, zero or multicast */
    net_count(NET_C_NO_ROUTE);
    return NET_EINVAL;
  }
  return arp_output(hop, len);
}
