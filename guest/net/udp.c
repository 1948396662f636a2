/*
 * UDP (RFC 768): a table of bound ports with a handler each, and sendto.
 *
 * Input checks: at least 8 bytes, 8 <= length field <= IP payload length
 * (bytes after it are ignored), a valid checksum unless it is 0 (no checksum,
 * allowed in IPv4), non-zero ports. Datagrams to unbound ports are counted
 * and dropped silently (no ICMP port unreachable).
 */
#include "net_priv.h"

#define UDP_HLEN 8u

struct udp_binding {
  uint16_t port;
  udp_handler fn;
  void *arg;
};

static struct udp_binding bindings[NET_UDP_BINDINGS];

int udp_bind(uint16_t port, udp_handler fn, void *arg) {
  if (port == 0 || !fn) return NET_EINVAL;
  struct udp_binding *free_slot = 0;
  for (int i = 0; i < NET_UDP_BINDINGS; i++) {
    if (bindings[i].fn && bindings[i].port == port) return NET_EINUSE;
    if (!bindings[i].fn && !free_slot) free_slot = &bindings[i];
  }
  if (!free_slot) return NET_ENOMEM;
  free_slot->port = port;
  free_slot->arg = arg;
  free_slot->fn = fn;
  return 0;
}

void udp_input(uint32_t src, uint32_t dst, const uint8_t *p, uint32_t len) {
  if (len < UDP_HLEN) {
    net_count(NET_C_UDP_BAD);
    return;
  }
  uint16_t sport = rd16(p), dport = rd16(p + 2);
  uint32_t ulen = rd16(p + 4);
  if (ulen < UDP_HLEN || ulen > len || sport == 0 || dport == 0) {
    net_count(NET_C_UDP_BAD);
    return;
  }
  if (rd16(p + 6) != 0 &&
      csum_fold(csum_add(csum_pseudo(src, dst, IP_PROTO_UDP, ulen), p, ulen)) != 0) {
    net_count(NET_C_UDP_BAD);
    return;
  }
  for (int i = 0; i < NET_UDP_BINDINGS; i++) {
    if (bindings[i].fn && bindings[i].port == dport) {
      bindings[i].fn(bindings[i].arg, src, sport, dport, p + UDP_HLEN, ulen - UDP_HLEN);
      return;
    }
  }
  net_count(NET_C_UDP_NO_PORT);
}

int udp_sendto(uint16_t src_port, uint32_t dst_ip, uint16_t dst_port, const void *data,
               uint32_t len) {
  if (!net_g.up) return NET_EDEV;
  if (src_port == 0 || dst_port == 0 || len > net_g.mtu - IP_HLEN - UDP_HLEN) return NET_EINVAL;
  uint8_t *u = ip_payload();
  uint32_t ulen = UDP_HLEN + len;
  wr16(u, src_port);
  wr16(u + 2, dst_port);
  wr16(u + 4, (uint16_t)ulen);
  wr16(u + 6, 0);
  memmove(u + UDP_HLEN, data, len); /* data may even be inside net_g.tx */
  uint16_t c = csum_fold(csum_add(csum_pseudo(net_g.ip, dst_ip, IP_PROTO_UDP, ulen), u, ulen));
  wr16(u + 6, c ? c : 0xffff);
  return ip_send(dst_ip, IP_PROTO_UDP, ulen);
}
