/*
 * The kemari guest network stack: Ethernet, ARP, IPv4, ICMP echo, UDP and
 * TCP, polled and single-threaded (see guest/net/README.md).
 *
 * All state lives in ordinary memory (static data plus buffers taken from the
 * heap at net_init), so a checkpoint of the guest carries every connection:
 * after a failover the stack simply goes on, and TCP retransmission repairs
 * whatever frames were lost in flight.
 *
 * The same sources build for the guest (runtime: kemari.h) and for a Linux
 * host harness (-DKEMARI_NET_HOST, guest/net/hosttest/), which provides the
 * few runtime functions the stack uses: clock_ns, heap_alloc, printf, panic,
 * arg_*, and the mem* / str* functions.
 *
 * IPv4 addresses are uint32_t in host byte order (10.77.0.2 == 0x0a4d0002);
 * ports are host byte order too.
 */
#ifndef KEMARI_NET_H
#define KEMARI_NET_H

#include "kemari.h"

/* ---- Errors (negative return values) ---- */
#define NET_EAGAIN (-1)    /* nothing to read / no buffer space now; retry later */
#define NET_ECLOSED (-2)   /* not open for this operation (e.g. send after close) */
#define NET_ERESET (-3)    /* the peer reset the connection */
#define NET_ETIMEDOUT (-4) /* retransmissions or probes went unanswered */
#define NET_EINVAL (-5)    /* bad handle or argument */
#define NET_ENOMEM (-6)    /* no free slot (connection, listener, binding) */
#define NET_EINUSE (-7)    /* port already bound / listening */
#define NET_EDEV (-8)      /* no network device, or the device failed */

/* ---- Link driver ----
 *
 * A frame is a whole Ethernet II frame without FCS: 14-byte header plus at
 * most `mtu` bytes of payload. The stack calls the driver only from net_init,
 * net_poll, net_wait and the socket calls (single-threaded).
 */
struct net_driver {
  void *ctx;
  /* Queue one frame. 0 when queued, < 0 when it was dropped. */
  int (*send)(void *ctx, const void *frame, uint32_t len);
  /* Copy the next received frame into frame[0..cap). Returns its length,
   * 0 when there is none, < 0 when a frame was dropped (e.g. > cap). */
  int (*recv)(void *ctx, void *frame, uint32_t cap);
  /* Block until a frame may have arrived or deadline_ns (clock_ns) passed.
   * May return early. Must not lose a wakeup: a frame that arrives after the
   * caller's last recv() returned 0 makes wait return. */
  void (*wait)(void *ctx, uint64_t deadline_ns);
  uint8_t mac[6]; /* the NIC's address */
  uint32_t mtu;   /* largest IP packet the link carries (<= NET_MTU_MAX) */
  uint64_t seed;  /* entropy for initial sequence numbers and IP ids */
};

#define NET_FRAME_MAX 4096u          /* bytes, Ethernet header included */
#define NET_MTU_MAX (NET_FRAME_MAX - 14u)
#define NET_MTU_MIN 68u

/* The platform's NIC: the netif frontend in the guest (guest/net/netif.c), a
 * TAP device in the host harness. Fills *drv; returns 0 or NET_EDEV. */
int net_device_open(struct net_driver *drv);

/* ---- Stack ---- */

struct net_config {
  uint32_t ip;     /* our address */
  uint32_t prefix; /* netmask length, 1..31 (0 or 32 is refused) */
  uint32_t gw;     /* default gateway, 0 = none (on-link traffic only) */
};

/* Starts the stack on a driver (copied). Takes its TCP buffers from the heap
 * (NET_TCP_CONNS * (NET_TCP_RCVBUF + NET_TCP_SNDBUF) bytes). Sends one
 * gratuitous ARP. Returns 0 or NET_EINVAL. Call once. */
int net_init(const struct net_driver *drv, const struct net_config *cfg);

/* Receives and processes the waiting frames (at most a batch), runs the
 * timers that are due and sends pending ACKs. Returns the frames processed. */
uint32_t net_poll(void);

/* Sleeps until a frame may have arrived, the next stack timer, or
 * deadline_ns, whichever comes first. Call after net_poll() found nothing to
 * do and the application has serviced its sockets. */
void net_wait(uint64_t deadline_ns);

/* Earliest pending stack timer (clock_ns), UINT64_MAX if none. */
uint64_t net_next_timer(void);

/* "a.b.c.d" or "a.b.c.d/prefix". Returns 0 or NET_EINVAL; *prefix is set to
 * 32 when the string has none (prefix may be NULL if none is allowed). */
int net_parse_ip(const char *s, uint32_t *ip, uint32_t *prefix);
/* Writes "a.b.c.d" (at most 16 bytes with the NUL). */
void net_format_ip(char *buf, size_t size, uint32_t ip);
/* Writes "xx:xx:xx:xx:xx:xx" (at most 18 bytes with the NUL). */
void net_format_mac(char *buf, size_t size, const uint8_t mac[6]);

/* ---- Counters ---- */
enum net_counter {
  NET_C_RX_FRAMES,
  NET_C_TX_FRAMES,
  NET_C_RX_BYTES,
  NET_C_TX_BYTES,
  NET_C_TX_FAIL,      /* the driver refused a frame */
  NET_C_RX_DRIVER,    /* the driver dropped a frame (too long, ring error) */
  /* Dropped as malformed or hostile (every one counts in net_drops()). */
  NET_C_ETH_SHORT,
  NET_C_ETH_BAD_SRC,  /* source MAC multicast/broadcast or ours */
  NET_C_ARP_BAD,
  NET_C_IP_SHORT,
  NET_C_IP_BAD_HDR,   /* version, header length, total length */
  NET_C_IP_BAD_CSUM,
  NET_C_IP_FRAG,
  NET_C_IP_BAD_SRC,
  NET_C_ICMP_BAD,
  NET_C_UDP_BAD,
  NET_C_TCP_BAD_HDR,  /* lengths, ports */
  NET_C_TCP_BAD_CSUM,
  NET_C_TCP_BAD_OPT,
  NET_C_TCP_BAD_FLAGS,
  NET_C_DROP_LAST_ = NET_C_TCP_BAD_FLAGS,
  /* Valid but not for us / not handled. */
  NET_C_ETH_IGNORED,  /* other ethertype, or not addressed to us */
  NET_C_IP_IGNORED,   /* other protocol or destination */
  NET_C_ICMP_IGNORED,
  NET_C_UDP_NO_PORT,
  NET_C_ARP_CONFLICT, /* someone else claims our IP */
  NET_C_ARP_UNRESOLVED, /* frames dropped because ARP got no answer */
  NET_C_NO_ROUTE,
  NET_C_TCP_RST_SENT,
  NET_C_TCP_SYN_DROPPED, /* listener backlog or connection table full */
  NET_C_TCP_OOW,      /* unacceptable segments (answered with an ACK) */
  NET_C_TCP_OOO,      /* out-of-order segments kept */
  NET_C_TCP_OOO_DROP, /* out-of-order segments that did not fit */
  NET_C_TCP_RETRANS,  /* retransmission timeouts */
  NET_C_TCP_FAST_RETRANS,
  NET_C_TCP_PROBES,   /* zero-window probes */
  NET_C_TCP_ACCEPTED,
  NET_C_TCP_RESETS,   /* connections reset by the peer */
  NET_C_TCP_TIMEOUTS, /* connections given up */
  NET_C_COUNT
};

uint64_t net_counter(enum net_counter c);
const char *net_counter_name(enum net_counter c);
uint64_t net_drops(void); /* sum of the malformed/hostile counters */

/* ---- UDP ---- */

/* Called from net_poll for each datagram to a bound port; data is valid only
 * during the call. src_ip/src_port are the sender's. */
typedef void (*udp_handler)(void *arg, uint32_t src_ip, uint16_t src_port, uint16_t dst_port,
                            const uint8_t *data, uint32_t len);

#define NET_UDP_BINDINGS 8
int udp_bind(uint16_t port, udp_handler fn, void *arg); /* 0 or NET_EINUSE / NET_ENOMEM */
/* Sends one datagram (len <= mtu - 28). Returns 0 or < 0. */
int udp_sendto(uint16_t src_port, uint32_t dst_ip, uint16_t dst_port, const void *data,
               uint32_t len);

/* ---- TCP ----
 *
 * Passive open only (listen/accept). Handles are small integers. A handle
 * returned by tcp_accept belongs to the application until tcp_close or
 * tcp_abort, after which it must not be used again.
 */
#define NET_TCP_CONNS 128          /* connections, TIME_WAIT and half-open included */
#define NET_TCP_LISTENERS 8
#define NET_TCP_RCVBUF (32u * 1024u) /* receive buffer = largest window (no scaling) */
#define NET_TCP_SNDBUF (32u * 1024u)

/* Returns a listener handle (>= 0) or < 0. backlog: connections not yet
 * accepted (half-open included), 1..NET_TCP_CONNS. */
int tcp_listen(uint16_t port, uint32_t backlog);
/* Next established connection of a listener, or NET_EAGAIN. */
int tcp_accept(int listener);
/* > 0 bytes read, 0 at end of stream (the peer sent FIN), NET_EAGAIN when
 * nothing is buffered yet, or the connection's error. */
int tcp_recv(int conn, void *buf, uint32_t len);
/* Bytes queued (may be fewer than len), NET_EAGAIN when the send buffer is
 * full, NET_ECLOSED after tcp_close's FIN was queued, or the error. */
int tcp_send(int conn, const void *buf, uint32_t len);
uint32_t tcp_send_space(int conn); /* bytes tcp_send would take now */
/* Graceful close: FIN after the queued data; the stack finishes the
 * connection on its own (FIN_WAIT, TIME_WAIT). Unread received data turns the
 * close into an abort (RST), as RFC 2525 asks. Always releases the handle. */
int tcp_close(int conn);
void tcp_abort(int conn); /* RST now, releases the handle */
/* The connection's error (NET_ERESET, NET_ETIMEDOUT), 0 while it is fine,
 * NET_EINVAL for a bad handle. */
int tcp_error(int conn);
/* Remote address of a connection (0 if the handle is invalid). */
uint32_t tcp_peer(int conn, uint16_t *port);
uint32_t tcp_conn_count(void); /* connection slots in use (any state) */

#endif
