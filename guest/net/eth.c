/*
 * Ethernet II: check the 14-byte header of a received frame and dispatch it
 * by ethertype; fill the header of an outgoing frame and pad it to 60 bytes.
 *
 * Accepted: frames to our MAC or to the broadcast address, from a unicast
 * source MAC that is not ours, with ethertype IPv4 or ARP. Other multicast
 * (IPv6 neighbour discovery, ...) and other ethertypes (IPv6, VLAN tags) are
 * ignored and counted. The frame length from the driver is the only length
 * trusted; any Ethernet padding is trimmed by the IPv4 total length.
 */
#include "net_priv.h"

const uint8_t eth_broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

void eth_input(const uint8_t *f, uint32_t len) {
  if (len < ETH_HLEN) {
    net_count(NET_C_ETH_SHORT);
    return;
  }
  const uint8_t *dst = f, *src = f + 6;
  if (memcmp(dst, net_g.drv.mac, 6) != 0 && memcmp(dst, eth_broadcast, 6) != 0) {
    net_count(NET_C_ETH_IGNORED);
    return;
  }
  if ((src[0] & 1) || memcmp(src, net_g.drv.mac, 6) == 0) {
    net_count(NET_C_ETH_BAD_SRC);
    return;
  }
  uint16_t type = rd16(f + 12);
  if (type == ETHERTYPE_IPV4) {
    ip_input(f + ETH_HLEN, len - ETH_HLEN);
  } else if (type == ETHERTYPE_ARP) {
    arp_input(f + ETH_HLEN, len - ETH_HLEN);
  } else {
    net_count(NET_C_ETH_IGNORED);
  }
}

int eth_send(const uint8_t dst[6], uint16_t type, uint8_t *frame, uint32_t len) {
  if (len < ETH_HLEN || len > NET_FRAME_MAX) return NET_EINVAL;
  memcpy(frame, dst, 6);
  memcpy(frame + 6, net_g.drv.mac, 6);
  wr16(frame + 12, type);
  if (len < ETH_MIN_FRAME) {
    memset(frame + len, 0, ETH_MIN_FRAME - len);
    len = ETH_MIN_FRAME;
  }
  int rc = net_g.drv.send(net_g.drv.ctx, frame, len);
  if (rc < 0) {
    net_count(NET_C_TX_FAIL);
    return NET_EDEV;
  }
  net_count(NET_C_TX_FRAMES);
  net_g.counters[NET_C_TX_BYTES] += len;
  return 0;
}
