/*
 * netsvc: network services for testing the guest TCP/IP stack (guest/net/).
 *
 * Args:
 *   ip=A.B.C.D/prefix  our address and subnet                    (required)
 *   gw=A.B.C.D         default gateway                           (optional)
 *   tcp_port=P         TCP echo on P, counter stream on P + 1    (default 9000)
 *   udp_port=U         UDP echo                                  (default 7)
 *   status=S           seconds between status lines; 0 = none   (default 5)
 *
 * Services:
 *   ICMP echo     answered by the stack.
 *   UDP  udp_port every datagram is sent back to its sender unchanged.
 *   TCP  tcp_port every byte received is sent back (echo). When the client
 *                 closes its side, the server closes after the echo.
 *   TCP  tcp_port+1  an endless stream of 8-byte big-endian counters 0, 1,
 *                 2, ... (byte i of the stream is byte i % 8 of counter
 *                 i / 8); anything the client sends is discarded.
 *
 * Console output:
 *   netsvc: ip <a.b.c.d> mac <xx:xx:xx:xx:xx:xx> ready
 *   netsvc: status conns=<n> in=<frames> out=<frames> drops=<n> rto=<n>
 *           fast=<n> probes=<n> ooo=<n> resets=<n>     (one line, every S s)
 * The program runs forever; it returns only when the NIC is missing or the
 * args are unusable (exit code 2).
 *
 * The same file builds into the Linux host harness (guest/net/hosttest/),
 * where net_device_open() is a TAP device.
 */
#include "net.h"

#define BACKLOG 64
#define CHUNK NET_TCP_SNDBUF

enum { SVC_NONE, SVC_ECHO, SVC_STREAM };

struct svc_conn {
  uint8_t kind;
  uint64_t pos; /* stream: bytes produced so far */
};

static struct svc_conn svc[NET_TCP_CONNS];
static uint8_t buf[CHUNK];

static void udp_echo(void *arg, uint32_t src_ip, uint16_t src_port, uint16_t dst_port,
                     const uint8_t *data, uint32_t len) {
  (void)arg;
  udp_sendto(dst_port, src_ip, src_port, data, len);
}

static void svc_close(int h) {
  tcp_close(h);
  svc[h].kind = SVC_NONE;
}

/* Returns 1 when it moved data. */
static int serve_echo(int h) {
  uint32_t space = tcp_send_space(h);
  if (space == 0) { /* flow control: leave the data in the receive window */
    if (tcp_error(h) < 0) {
      svc_close(h);
      return 1;
    }
    return 0;
  }
  int n = tcp_recv(h, buf, space < CHUNK ? space : CHUNK);
  if (n == NET_EAGAIN) return 0;
  if (n <= 0) { /* end of stream or error */
    svc_close(h);
    return 1;
  }
  tcp_send(h, buf, (uint32_t)n); /* fits: n <= space */
  return 1;
}

static int serve_stream(int h) {
  int moved = 0;
  for (;;) { /* discard input */
    int n = tcp_recv(h, buf, CHUNK);
    if (n == NET_EAGAIN) break;
    if (n <= 0) {
      svc_close(h);
      return 1;
    }
    moved = 1;
  }
  uint32_t space = tcp_send_space(h);
  if (space == 0) return moved;
  if (space > CHUNK) space = CHUNK;
  uint64_t pos = svc[h].pos;
  for (uint32_t i = 0; i < space; i++, pos++) {
    buf[i] = (uint8_t)((pos >> 3) >> (8 * (7 - (pos & 7))));
  }
  int n = tcp_send(h, buf, space);
  if (n > 0) svc[h].pos += (uint32_t)n;
  return 1;
}

static void accept_all(int listener, uint8_t kind) {
  for (;;) {
    int h = tcp_accept(listener);
    if (h < 0) return;
    svc[h].kind = kind;
    svc[h].pos = 0;
  }
}

static void status_line(void) {
  printf("netsvc: status conns=%u in=%lu out=%lu drops=%lu rto=%lu fast=%lu probes=%lu "
         "ooo=%lu resets=%lu\n",
         tcp_conn_count(), (unsigned long)net_counter(NET_C_RX_FRAMES),
         (unsigned long)net_counter(NET_C_TX_FRAMES), (unsigned long)net_drops(),
         (unsigned long)net_counter(NET_C_TCP_RETRANS),
         (unsigned long)net_counter(NET_C_TCP_FAST_RETRANS),
         (unsigned long)net_counter(NET_C_TCP_PROBES), (unsigned long)net_counter(NET_C_TCP_OOO),
         (unsigned long)net_counter(NET_C_TCP_RESETS));
}

int kemari_main(void) {
  struct net_config cfg = {0, 0, 0};
  const char *ip = arg_str("ip", 0);
  if (!ip || !strchr(ip, '/') || net_parse_ip(ip, &cfg.ip, &cfg.prefix) < 0) {
    printf("netsvc: ip=A.B.C.D/prefix is required (got '%s')\n", ip ? ip : "");
    return 2;
  }
  const char *gw = arg_str("gw", 0);
  if (gw && net_parse_ip(gw, &cfg.gw, 0) < 0) {
    printf("netsvc: bad gw=%s\n", gw);
    return 2;
  }
  uint64_t tcp_port = arg_u64("tcp_port", 9000);
  uint64_t udp_port = arg_u64("udp_port", 7);
  uint64_t status_s = arg_u64("status", 5);
  if (tcp_port == 0 || tcp_port >= 65535 || udp_port == 0 || udp_port > 65535) {
    printf("netsvc: bad port\n");
    return 2;
  }

  struct net_driver drv;
  if (net_device_open(&drv) < 0) {
    printf("netsvc: no network device\n");
    return 2;
  }
  int rc = net_init(&drv, &cfg);
  if (rc < 0) {
    printf("netsvc: bad address configuration (%d)\n", rc);
    return 2;
  }
  int echo = tcp_listen((uint16_t)tcp_port, BACKLOG);
  int stream = tcp_listen((uint16_t)(tcp_port + 1), BACKLOG);
  if (echo < 0 || stream < 0 || udp_bind((uint16_t)udp_port, udp_echo, 0) < 0) {
    printf("netsvc: cannot open the service ports\n");
    return 2;
  }

  char ipbuf[16], macbuf[18];
  net_format_ip(ipbuf, sizeof ipbuf, cfg.ip);
  net_format_mac(macbuf, sizeof macbuf, drv.mac);
  printf("netsvc: ip %s mac %s ready\n", ipbuf, macbuf);

  uint64_t period = status_s * NS_PER_SEC;
  uint64_t next_status = period ? clock_ns() + period : UINT64_MAX;
  for (;;) {
    int busy = net_poll() > 0;
    accept_all(echo, SVC_ECHO);
    accept_all(stream, SVC_STREAM);
    for (int h = 0; h < NET_TCP_CONNS; h++) {
      if (svc[h].kind == SVC_ECHO) busy |= serve_echo(h);
      else if (svc[h].kind == SVC_STREAM) busy |= serve_stream(h);
    }
    uint64_t now = clock_ns();
    if (now >= next_status) {
      status_line();
      next_status += period;
      if (next_status <= now) next_status = now + period;
    }
    if (!busy) net_wait(next_status);
  }
}
