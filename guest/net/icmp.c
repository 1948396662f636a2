/*
 * ICMP (RFC 792): echo request -> echo reply, nothing else.
 *
 * The whole message must have a valid checksum and at least the 8-byte
 * header. Replies go only to unicast requests (ip_input never passes
 * broadcast ICMP here) and carry the request's identifier, sequence number
 * and data unchanged. Every other type is counted and ignored; in particular
 * destination-unreachable messages do not abort TCP connections.
 */
#include "net_priv.h"

#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8

void icmp_input(uint32_t src, const uint8_t *p, uint32_t len) {
  if (len < 8 || csum_fold(csum_add(0, p, len)) != 0) {
    net_count(NET_C_ICMP_BAD);
    return;
  }
  if (p[0] != ICMP_ECHO_REQUEST || p[1] != 0) {
    net_count(NET_C_ICMP_IGNORED);
    return;
  }
  if (len > net_g.mtu - IP_HLEN) { /* larger than we may send back */
    net_count(NET_C_ICMP_BAD);
    return;
  }
  uint8_t *r = ip_payload();
  memcpy(r, p, len);
  r[0] = ICMP_ECHO_REPLY;
  r[1] = 0;
  wr16(r + 2, 0);
  wr16(r + 2, csum_fold(csum_add(0, r, len)));
  ip_send(src, IP_PROTO_ICMP, len);
}
