/*
 * net_probe: the Linux-side client for tests/guest/net_stack_test.ts. Runs
 * inside the test's network namespace (ip netns exec) against netsvc.
 *
 *   net_probe ping   IP COUNT                 ICMP echo over a raw socket
 *   net_probe udp    IP PORT                  UDP echo, several sizes
 *   net_probe echo   IP PORT BYTES SEED       TCP echo of BYTES random bytes
 *   net_probe stream IP PORT MS               read the counter stream for MS
 *   net_probe many   IP PORT N BYTES          N concurrent echo connections
 *   net_probe zerowin IP PORT STALL_MS READ_MS  small receive buffer, stop
 *                                             reading for STALL_MS, resume
 *   net_probe fuzz   IFNAME MAC IP COUNT SEED SESSIONS
 *                                             malformed + random frames and
 *                                             hostile TCP sessions, written
 *                                             raw into the TAP (AF_PACKET)
 *
 * Prints one "ok ..." line and exits 0, or "FAIL: ..." and exits 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("FAIL: ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  fflush(stdout);
  exit(1);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t rng = 0x1234567887654321ull;
static uint64_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void fill_random(uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(rnd() >> 24);
}

static struct sockaddr_in addr_of(const char *ip, int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) die("bad address %s", ip);
  return a;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* Connects (5 s limit) and returns a non-blocking socket. */
static int tcp_connect(const char *ip, int port, int rcvbuf) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  set_nonblock(fd);
  struct sockaddr_in a = addr_of(ip, port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
    die("connect %s:%d: %s", ip, port, strerror(errno));
  }
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  if (poll(&p, 1, 5000) != 1) die("connect %s:%d: timeout", ip, port);
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) die("connect %s:%d: %s", ip, port, strerror(err));
  return fd;
}

/* ---- checksums ---- */

static uint32_t sum16(uint32_t s, const uint8_t *p, size_t n) {
  for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]);
  if (n & 1) s += (uint32_t)p[n - 1] << 8;
  return s;
}

static uint16_t fold(uint32_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (uint16_t)~s;
}

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static void put32(uint8_t *p, uint32_t v) {
  put16(p, (uint16_t)(v >> 16));
  put16(p + 2, (uint16_t)v);
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

/* ---- ping ---- */

static int cmd_ping(const char *ip, int count) {
  int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  if (fd < 0) die("raw socket: %s", strerror(errno));
  struct sockaddr_in a = addr_of(ip, 0);
  uint16_t id = (uint16_t)getpid();
  int got = 0;
  for (int seq = 1; seq <= count; seq++) {
    uint8_t pkt[64];
    memset(pkt, 0, sizeof pkt);
    pkt[0] = 8;
    put16(pkt + 4, id);
    put16(pkt + 6, (uint16_t)seq);
    for (int i = 8; i < 64; i++) pkt[i] = (uint8_t)(i * seq);
    put16(pkt + 2, fold(sum16(0, pkt, sizeof pkt)));
    if (sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&a, sizeof a) < 0) {
      die("sendto: %s", strerror(errno));
    }
    uint64_t deadline = now_ms() + 1000;
    while (now_ms() < deadline) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (poll(&p, 1, (int)(deadline - now_ms())) != 1) break;
      uint8_t buf[256];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n < 20) continue;
      size_t hl = (size_t)(buf[0] & 15) * 4;
      if ((size_t)n < hl + 64) continue;
      const uint8_t *r = buf + hl;
      if (r[0] != 0 || get16(r + 4) != id || get16(r + 6) != seq) continue;
      if (memcmp(r + 8, pkt + 8, 56) != 0) die("ping %d: payload differs", seq);
      got++;
      break;
    }
  }
  if (got != count) die("ping: %d of %d replies", got, count);
  printf("ok ping %d/%d\n", got, count);
  return 0;
}

/* ---- UDP echo ---- */

static int cmd_udp(const char *ip, int port) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = addr_of(ip, port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("udp connect: %s", strerror(errno));
  static const int sizes[] = {1, 7, 64, 512, 1000, 1472, 0};
  int n_ok = 0;
  for (int i = 0; sizes[i]; i++) {
    uint8_t out[1500], in[1600];
    fill_random(out, (size_t)sizes[i]);
    int done = 0;
    for (int attempt = 0; attempt < 3 && !done; attempt++) {
      send(fd, out, (size_t)sizes[i], 0);
      struct pollfd p = {.fd = fd, .events = POLLIN};
      while (poll(&p, 1, 1000) == 1) {
        ssize_t n = recv(fd, in, sizeof in, 0);
        if (n == sizes[i] && memcmp(in, out, (size_t)n) == 0) {
          done = 1;
          break;
        }
      }
    }
    if (!done) die("udp: no echo for %d bytes", sizes[i]);
    n_ok++;
  }
  printf("ok udp %d sizes\n", n_ok);
  return 0;
}

/* ---- TCP echo, one or many connections ---- */

struct echo_conn {
  int fd;
  uint8_t *data;
  size_t len, sent, recvd;
  int shut, eof;
};

static void echo_start(struct echo_conn *c, const char *ip, int port, size_t len) {
  c->fd = tcp_connect(ip, port, 0);
  c->data = malloc(len ? len : 1);
  if (!c->data) die("malloc");
  fill_random(c->data, len);
  c->len = len;
  c->sent = c->recvd = 0;
  c->shut = c->eof = 0;
}

/* One step; returns 1 when the connection is finished. */
static int echo_step(struct echo_conn *c, short revents, int idx) {
  if ((revents & POLLOUT) && c->sent < c->len) {
    size_t chunk = c->len - c->sent;
    if (chunk > 65536) chunk = 65536;
    ssize_t n = send(c->fd, c->data + c->sent, chunk, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN) die("conn %d: send: %s", idx, strerror(errno));
    if (n > 0) c->sent += (size_t)n;
  }
  if (c->sent == c->len && !c->shut) {
    shutdown(c->fd, SHUT_WR);
    c->shut = 1;
  }
  if (revents & (POLLIN | POLLHUP | POLLERR)) {
    uint8_t buf[65536];
    for (;;) {
      ssize_t n = recv(c->fd, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EAGAIN) break;
        die("conn %d: recv after %zu bytes: %s", idx, c->recvd, strerror(errno));
      }
      if (n == 0) {
        c->eof = 1;
        break;
      }
      if (c->recvd + (size_t)n > c->len) die("conn %d: %zu bytes too many", idx, (size_t)n);
      if (memcmp(buf, c->data + c->recvd, (size_t)n) != 0) {
        size_t k = 0;
        while (buf[k] == c->data[c->recvd + k]) k++;
        die("conn %d: echo differs at byte %zu", idx, c->recvd + k);
      }
      c->recvd += (size_t)n;
    }
  }
  if (c->eof && c->recvd != c->len) {
    die("conn %d: EOF after %zu of %zu bytes", idx, c->recvd, c->len);
  }
  return c->eof;
}

static int run_echo(const char *ip, int port, int n, size_t bytes, int timeout_ms) {
  struct echo_conn *c = calloc((size_t)n, sizeof *c);
  struct pollfd *p = calloc((size_t)n, sizeof *p);
  for (int i = 0; i < n; i++) echo_start(&c[i], ip, port, bytes);
  uint64_t start = now_ms(), deadline = start + (uint64_t)timeout_ms;
  int done = 0;
  while (done < n) {
    if (now_ms() > deadline) {
      for (int i = 0; i < n; i++) {
        if (!c[i].eof) die("conn %d: timeout (sent %zu, echoed %zu)", i, c[i].sent, c[i].recvd);
      }
    }
    for (int i = 0; i < n; i++) {
      p[i].fd = c[i].eof ? -1 : c[i].fd;
      p[i].events = (short)(POLLIN | (c[i].sent < c[i].len ? POLLOUT : 0));
      p[i].revents = 0;
    }
    poll(p, (nfds_t)n, 200);
    for (int i = 0; i < n; i++) {
      if (c[i].eof) continue;
      if (echo_step(&c[i], p[i].revents, i)) {
        close(c[i].fd);
        done++;
      }
    }
  }
  uint64_t ms = now_ms() - start;
  printf("ok echo conns=%d bytes=%zu ms=%llu\n", n, bytes, (unsigned long long)ms);
  return 0;
}

/* ---- counter stream ---- */

struct stream_check {
  uint64_t pos;
};

static void stream_verify(struct stream_check *s, const uint8_t *buf, size_t n) {
  for (size_t i = 0; i < n; i++, s->pos++) {
    uint8_t want = (uint8_t)((s->pos >> 3) >> (8 * (7 - (s->pos & 7))));
    if (buf[i] != want) {
      die("stream: byte %llu is %u, expected %u (counter %llu)", (unsigned long long)s->pos,
          buf[i], want, (unsigned long long)(s->pos >> 3));
    }
  }
}

/* Reads for ms (or until min_bytes when ms == 0); returns bytes read. */
static uint64_t stream_read(int fd, struct stream_check *s, uint64_t ms, uint64_t min_bytes) {
  uint64_t start = now_ms(), got = 0;
  uint8_t buf[65536];
  for (;;) {
    uint64_t t = now_ms();
    if (ms && t - start >= ms) break;
    if (!ms && got >= min_bytes) break;
    if (!ms && t - start > 10000) die("stream: only %llu bytes in 10 s", (unsigned long long)got);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    poll(&p, 1, 100);
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) die("stream: EOF");
    if (n < 0) {
      if (errno == EAGAIN) continue;
      die("stream: recv: %s", strerror(errno));
    }
    stream_verify(s, buf, (size_t)n);
    got += (uint64_t)n;
  }
  return got;
}

static int cmd_stream(const char *ip, int port, int ms) {
  int fd = tcp_connect(ip, port, 0);
  struct stream_check s = {0};
  uint64_t got = stream_read(fd, &s, (uint64_t)ms, 0);
  if (got < 65536) die("stream: only %llu bytes", (unsigned long long)got);
  close(fd);
  printf("ok stream bytes=%llu counters=%llu\n", (unsigned long long)got,
         (unsigned long long)(got / 8));
  return 0;
}

static int cmd_zerowin(const char *ip, int port, int stall_ms, int read_ms) {
  int fd = tcp_connect(ip, port, 4096);
  struct stream_check s = {0};
  uint64_t before = stream_read(fd, &s, 0, 256 * 1024);
  usleep((useconds_t)stall_ms * 1000); /* the receive buffer fills: zero window */
  uint64_t after = stream_read(fd, &s, (uint64_t)read_ms, 0);
  if (after < 256 * 1024) {
    die("zerowin: only %llu bytes after the stall", (unsigned long long)after);
  }
  close(fd);
  printf("ok zerowin before=%llu after=%llu\n", (unsigned long long)before,
         (unsigned long long)after);
  return 0;
}

/* ---- raw frames ---- */

struct raw {
  int tx, rx, ifindex;
  uint8_t dst_mac[6];
  uint32_t dst_ip, net; /* net: first three octets of the /24 */
  unsigned sent;
};

static void raw_send(struct raw *r, const uint8_t *f, size_t len) {
  struct sockaddr_ll sa;
  memset(&sa, 0, sizeof sa);
  sa.sll_family = AF_PACKET;
  sa.sll_ifindex = r->ifindex;
  sa.sll_halen = 6;
  memcpy(sa.sll_addr, f, 6);
  if (sendto(r->tx, f, len, 0, (struct sockaddr *)&sa, sizeof sa) < 0) {
    if (errno != EINVAL && errno != EMSGSIZE && errno != ENOBUFS) {
      die("packet sendto (%zu bytes): %s", len, strerror(errno));
    }
  }
  if (++r->sent % 32 == 0) usleep(1000); /* let the harness keep up */
}

static void rand_mac(uint8_t mac[6]) {
  fill_random(mac, 6);
  mac[0] = (uint8_t)((mac[0] & 0xfe) | 0x02);
}

static size_t eth(uint8_t *f, const uint8_t *dst, const uint8_t *src, uint16_t type) {
  memcpy(f, dst, 6);
  memcpy(f + 6, src, 6);
  put16(f + 12, type);
  return 14;
}

/* IPv4 header at f + 14 for an l4len-byte payload already at f + 34. */
static size_t ipv4(uint8_t *f, uint32_t src, uint32_t dst, uint8_t proto, size_t l4len) {
  uint8_t *h = f + 14;
  memset(h, 0, 20);
  h[0] = 0x45;
  put16(h + 2, (uint16_t)(20 + l4len));
  put16(h + 4, (uint16_t)rnd());
  h[8] = 64;
  h[9] = proto;
  put32(h + 12, src);
  put32(h + 16, dst);
  put16(h + 10, fold(sum16(0, h, 20)));
  return 34 + l4len;
}

static uint16_t l4_csum(uint32_t src, uint32_t dst, uint8_t proto, const uint8_t *p, size_t n) {
  uint32_t s = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + (uint32_t)n;
  return fold(sum16(s, p, n));
}

/* Recomputes the IP header checksum and the TCP/UDP/ICMP checksum of a
 * (possibly mutated) frame, as far as its own length fields allow. */
static void fix_checksums(uint8_t *f, size_t len) {
  if (len < 34 || get16(f + 12) != 0x0800) return;
  uint8_t *h = f + 14;
  size_t hl = (size_t)(h[0] & 15) * 4;
  if (hl < 20 || 14 + hl > len) return;
  put16(h + 10, 0);
  put16(h + 10, fold(sum16(0, h, hl)));
  size_t total = get16(h + 2);
  if (total < hl || 14 + total > len) return;
  uint8_t *l4 = h + hl;
  size_t n = total - hl;
  uint32_t src = get32(h + 12), dst = get32(h + 16);
  if (h[9] == 6 && n >= 20) {
    put16(l4 + 16, 0);
    put16(l4 + 16, l4_csum(src, dst, 6, l4, n));
  } else if (h[9] == 17 && n >= 8) {
    put16(l4 + 6, 0);
    uint16_t c = l4_csum(src, dst, 17, l4, n);
    put16(l4 + 6, c ? c : 0xffff); /* 0 would mean "no checksum" */
  } else if (h[9] == 1 && n >= 4) {
    put16(l4 + 2, 0);
    put16(l4 + 2, fold(sum16(0, l4, n)));
  }
}

static size_t tcp_seg(uint8_t *f, const uint8_t *smac, uint32_t sip, uint32_t dip,
                      uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
                      uint16_t win, const uint8_t *opt, size_t optlen, const uint8_t *data,
                      size_t dlen, const uint8_t *dmac) {
  eth(f, dmac, smac, 0x0800);
  uint8_t *t = f + 34;
  size_t hl = 20 + ((optlen + 3) & ~(size_t)3);
  memset(t, 0, hl);
  put16(t, sport);
  put16(t + 2, dport);
  put32(t + 4, seq);
  put32(t + 8, ack);
  t[12] = (uint8_t)((hl / 4) << 4);
  t[13] = flags;
  put16(t + 14, win);
  if (optlen) memcpy(t + 20, opt, optlen);
  if (dlen) memcpy(t + hl, data, dlen);
  put16(t + 16, l4_csum(sip, dip, 6, t, hl + dlen));
  return ipv4(f, sip, dip, 6, hl + dlen);
}

static uint32_t fake_ip(struct raw *r) { return r->net | (uint32_t)(100 + rnd() % 100); }

/* Each frame here must be dropped and counted by the stack. */
static unsigned send_malformed(struct raw *r) {
  uint8_t f[1600], smac[6];
  rand_mac(smac);
  uint32_t sip = fake_ip(r), dip = r->dst_ip;
  unsigned n = 0;
  size_t len;
#define SEND(l) (raw_send(r, f, (l)), n++)

  /* IPv4 headers */
  memset(f, 0, sizeof f);
  eth(f, r->dst_mac, smac, 0x0800);
  SEND(14 + 10); /* shorter than an IP header */
  static const uint8_t bad_vihl[] = {0x65, 0x44, 0x4f, 0x41};
  for (size_t i = 0; i < sizeof bad_vihl; i++) {
    memset(f + 14, 0, 60);
    len = ipv4(f, sip, dip, 17, 20);
    f[14] = bad_vihl[i];
    put16(f + 24, 0);
    put16(f + 24, fold(sum16(0, f + 14, 20)));
    SEND(i == 3 ? 14 + 20 : len); /* version 6, IHL 4, IHL 15, IHL 1 */
  }
  static const uint16_t bad_total[] = {19, 1000, 65535};
  for (size_t i = 0; i < 3; i++) {
    memset(f + 14, 0, 60);
    len = ipv4(f, sip, dip, 17, 20);
    put16(f + 16, bad_total[i]);
    put16(f + 24, 0);
    put16(f + 24, fold(sum16(0, f + 14, 20)));
    SEND(len);
  }
  memset(f + 14, 0, 60);
  len = ipv4(f, sip, dip, 1, 20);
  f[24] ^= 0x55; /* header checksum */
  SEND(len);
  static const uint16_t frag[] = {0x2000, 0x0001, 0x3fff};
  for (size_t i = 0; i < 3; i++) {
    memset(f + 14, 0, 60);
    len = ipv4(f, sip, dip, 17, 20);
    put16(f + 20, frag[i]);
    fix_checksums(f, len);
    SEND(len);
  }
  static const uint32_t bad_src[] = {0, 0xffffffffu, 0x7f000001u, 0xe0000001u, 0};
  for (size_t i = 0; i < 5; i++) {
    memset(f + 14, 0, 60);
    len = ipv4(f, i == 4 ? dip : bad_src[i], dip, 17, 8);
    fix_checksums(f, len);
    SEND(len);
  }
  /* ICMP */
  memset(f + 34, 0, 64);
  f[34] = 8;
  len = ipv4(f, sip, dip, 1, 4);
  fix_checksums(f, len);
  SEND(len); /* 4-byte ICMP */
  len = ipv4(f, sip, dip, 1, 16);
  fix_checksums(f, len);
  f[36] ^= 1;
  SEND(len); /* bad checksum */
  /* UDP */
  static const uint16_t bad_ulen[] = {7, 0, 200};
  for (size_t i = 0; i < 3; i++) {
    memset(f + 34, 0, 64);
    put16(f + 34, 5555);
    put16(f + 36, 7);
    put16(f + 38, bad_ulen[i]);
    len = ipv4(f, sip, dip, 17, 16);
    SEND(len);
  }
  memset(f + 34, 0, 64);
  put16(f + 34, 5555);
  put16(f + 36, 7);
  put16(f + 38, 16);
  len = ipv4(f, sip, dip, 17, 16);
  fix_checksums(f, len);
  f[42] ^= 0x10; /* payload changed after the checksum */
  SEND(len);
  put16(f + 34, 0); /* source port 0 */
  fix_checksums(f, len);
  SEND(len);
  /* TCP */
  memset(f + 34, 0, 64);
  len = ipv4(f, sip, dip, 6, 10);
  SEND(len); /* 10 bytes */
  uint8_t none[1];
  len = tcp_seg(f, smac, sip, dip, 40000, 9000, 1, 0, 0x02, 1000, none, 0, none, 0, r->dst_mac);
  f[34 + 12] = 0x40; /* data offset 4 */
  fix_checksums(f, len);
  SEND(len);
  f[34 + 12] = 0xf0; /* data offset 15 > segment */
  fix_checksums(f, len);
  SEND(len);
  len = tcp_seg(f, smac, sip, dip, 0, 9000, 1, 0, 0x02, 1000, none, 0, none, 0, r->dst_mac);
  SEND(len); /* port 0 */
  len = tcp_seg(f, smac, sip, dip, 40000, 9000, 1, 0, 0x02, 1000, none, 0, none, 0, r->dst_mac);
  f[34 + 17] ^= 0x20;
  SEND(len); /* bad checksum */
  static const uint8_t bad_opts[][4] = {
      {2, 0, 0, 0},   /* length 0 */
      {3, 1, 0, 0},   /* length 1 */
      {8, 255, 0, 0}, /* past the header */
      {2, 3, 5, 0},   /* MSS of length 3 */
      {1, 1, 1, 8},   /* kind without a length byte */
  };
  for (size_t i = 0; i < 5; i++) {
    len = tcp_seg(f, smac, sip, dip, 40000, 9000, 1, 0, 0x02, 1000, bad_opts[i], 4, none, 0,
                  r->dst_mac);
    SEND(len);
  }
  static const uint8_t bad_flags[] = {0x03, 0x06, 0x00, 0x01, 0x29};
  for (size_t i = 0; i < 5; i++) {
    len = tcp_seg(f, smac, sip, dip, 40000, 9000, 1, 0, bad_flags[i], 1000, none, 0, none, 0,
                  r->dst_mac);
    SEND(len);
  }
  /* ARP */
  memset(f, 0, 80);
  eth(f, r->dst_mac, smac, 0x0806);
  SEND(14 + 20); /* short */
  for (int i = 0; i < 4; i++) {
    uint8_t *a = f + 14;
    put16(a, 1);
    put16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, 1);
    memcpy(a + 8, smac, 6);
    put32(a + 14, sip);
    put32(a + 24, dip);
    if (i == 0) a[4] = 5;
    if (i == 1) put16(a + 2, 0x86dd);
    if (i == 2) put16(a + 6, 3);
    if (i == 3) a[8] = 0x01; /* multicast sender */
    SEND(14 + 28);
  }
  /* Ethernet source */
  len = ipv4(f, sip, dip, 17, 8);
  f[6] = 0x01;
  SEND(len);
  memcpy(f + 6, r->dst_mac, 6);
  SEND(len);
#undef SEND
  return n;
}

static void send_random(struct raw *r, unsigned count) {
  uint8_t f[1600], smac[6], data[1500];
  for (unsigned i = 0; i < count; i++) {
    rand_mac(smac);
    uint32_t sip = rnd() % 4 ? fake_ip(r) : (uint32_t)rnd();
    size_t len = 0;
    unsigned kind = (unsigned)(rnd() % 10);
    const uint8_t *dmac = rnd() % 8 ? r->dst_mac : (const uint8_t *)"\xff\xff\xff\xff\xff\xff";
    memset(f, 0, sizeof f);
    switch (kind) {
      case 0: { /* ARP */
        eth(f, dmac, smac, 0x0806);
        uint8_t *a = f + 14;
        put16(a, 1);
        put16(a + 2, 0x0800);
        a[4] = 6;
        a[5] = 4;
        put16(a + 6, (uint16_t)(1 + rnd() % 2));
        memcpy(a + 8, smac, 6);
        put32(a + 14, rnd() % 2 ? sip : r->dst_ip);
        put32(a + 24, rnd() % 2 ? r->dst_ip : sip);
        len = 14 + 28;
        break;
      }
      case 1: /* ICMP echo */
        eth(f, dmac, smac, 0x0800);
        f[34] = 8;
        fill_random(f + 38, 200);
        len = ipv4(f, sip, r->dst_ip, 1, 8 + rnd() % 200);
        break;
      case 2:
      case 3: { /* UDP */
        eth(f, dmac, smac, 0x0800);
        size_t n = 8 + rnd() % 600;
        put16(f + 34, (uint16_t)(1 + rnd() % 65535));
        put16(f + 36, kind == 2 ? 7 : (uint16_t)rnd());
        put16(f + 38, (uint16_t)n);
        fill_random(f + 42, n - 8);
        len = ipv4(f, sip, rnd() % 8 ? r->dst_ip : 0xffffffffu, 17, n);
        break;
      }
      case 4:
      case 5:
      case 6:
      case 7: { /* TCP with random flags and options */
        uint8_t opt[40];
        size_t optlen = (size_t)(rnd() % 41);
        fill_random(opt, optlen);
        if (rnd() % 2 && optlen >= 4) { /* mostly well-formed options */
          opt[0] = 2;
          opt[1] = 4;
        }
        size_t dlen = rnd() % 4 ? 0 : rnd() % 1000;
        fill_random(data, dlen);
        uint16_t dport = kind == 4 ? 9000 : kind == 5 ? 9001 : (uint16_t)rnd();
        len = tcp_seg(f, smac, sip, r->dst_ip, (uint16_t)(1024 + rnd() % 60000), dport,
                      (uint32_t)rnd(), (uint32_t)rnd(), (uint8_t)rnd(), (uint16_t)rnd(), opt,
                      optlen, data, dlen, dmac);
        break;
      }
      case 8: /* IPv4 ethertype, random contents */
        eth(f, dmac, smac, 0x0800);
        len = 14 + rnd() % 200;
        fill_random(f + 14, len - 14);
        f[14] = (uint8_t)(0x40 | (f[14] & 15));
        break;
      default: /* anything */
        len = 14 + rnd() % 1500;
        fill_random(f, len);
        if (rnd() % 2) memcpy(f, r->dst_mac, 6);
        break;
    }
    /* Mutations. */
    if (len > 14 && rnd() % 2) {
      int flips = 1 + (int)(rnd() % 4);
      for (int k = 0; k < flips; k++) f[14 + rnd() % (len - 14)] ^= (uint8_t)(1u << (rnd() % 8));
    }
    if (rnd() % 5 == 0) len = 14 + rnd() % (len - 13);     /* truncate */
    if (rnd() % 8 == 0 && len < 1400) len += rnd() % 100;  /* trailing junk */
    if (rnd() % 3) fix_checksums(f, len);                   /* get past the checksums */
    /* Never claim the Linux side's address in ARP: that would (legitimately)
     * redirect the harness's traffic for it and break the checks after. */
    if (len >= 42 && get16(f + 12) == 0x0806 && get32(f + 28) == (r->net | 1)) {
      put32(f + 28, r->net | 150);
    }
    raw_send(r, f, len);
  }
}

/* Receives frames from the harness to (sip, sport); returns the TCP header
 * offset, or 0 on timeout. */
static size_t raw_recv_tcp(struct raw *r, uint8_t *f, size_t cap, uint32_t sip, uint16_t sport,
                           int timeout_ms, size_t *flen) {
  uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    int left = (int)(deadline - now_ms());
    if (left <= 0) return 0;
    struct pollfd p = {.fd = r->rx, .events = POLLIN};
    if (poll(&p, 1, left) != 1) return 0;
    ssize_t n = recv(r->rx, f, cap, MSG_DONTWAIT);
    if (n < 54 || get16(f + 12) != 0x0800 || f[23] != 6) continue;
    size_t hl = (size_t)(f[14] & 15) * 4;
    if (get32(f + 26) != r->dst_ip || get32(f + 30) != sip) continue;
    if ((size_t)n < 14 + hl + 20) continue;
    const uint8_t *t = f + 14 + hl;
    if (get16(t + 2) != sport) continue;
    *flen = (size_t)n;
    return 14 + hl;
  }
}

/* A hostile peer: completes a handshake from a fake address, then sends
 * random segments around the right sequence numbers, and resets at the end. */
static unsigned hostile_session(struct raw *r, int idx) {
  uint8_t f[2048], smac[6], data[1400];
  rand_mac(smac);
  uint32_t sip = r->net | (uint32_t)(200 + idx % 50);
  uint16_t sport = (uint16_t)(20000 + rnd() % 40000);
  uint16_t dport = rnd() % 2 ? 9000 : 9001;
  /* Make the harness learn our MAC: ask for its address. */
  memset(f, 0, 64);
  eth(f, r->dst_mac, smac, 0x0806);
  put16(f + 14, 1);
  put16(f + 16, 0x0800);
  f[18] = 6;
  f[19] = 4;
  put16(f + 20, 1);
  memcpy(f + 22, smac, 6);
  put32(f + 28, sip);
  put32(f + 38, r->dst_ip);
  raw_send(r, f, 42);
  uint32_t isn = (uint32_t)rnd();
  static const uint8_t mss[] = {2, 4, 0x05, 0xb4};
  size_t len = tcp_seg(f, smac, sip, r->dst_ip, sport, dport, isn, 0, 0x02, 8192, mss, 4, data,
                       0, r->dst_mac);
  raw_send(r, f, len);
  size_t flen, off = raw_recv_tcp(r, f, sizeof f, sip, sport, 1000, &flen);
  if (!off || (f[off + 13] & 0x12) != 0x12) return 0; /* no SYN-ACK */
  uint32_t iss = get32(f + off + 4);
  uint32_t snd = isn + 1, peer_ack = snd;
  uint32_t rcv = iss + 1;
  len = tcp_seg(f, smac, sip, r->dst_ip, sport, dport, snd, rcv, 0x10, 8192, mss, 0, data, 0,
                r->dst_mac);
  raw_send(r, f, len);
  for (int k = 0; k < 60; k++) {
    uint32_t seq = snd, ack = rcv;
    uint8_t flags = 0x10;
    uint16_t win = (uint16_t)(rnd() % 4 ? 8192 : rnd() % 3 ? 0 : rnd());
    size_t dlen = rnd() % 3 ? rnd() % 1400 : 0;
    uint8_t opt[40];
    size_t optlen = 0;
    switch (rnd() % 12) {
      case 0: seq = snd + (uint32_t)(rnd() % 20000); break;         /* out of order */
      case 1: seq = snd - (uint32_t)(rnd() % 20000); break;         /* old */
      case 2: seq = (uint32_t)rnd(); break;                         /* anywhere */
      case 3: flags = 0x04; seq = snd + 1 + (uint32_t)(rnd() % 5000); dlen = 0; break;
      case 4: flags = 0x12; break;                                  /* SYN in window */
      case 5: ack = rcv + 100000 + (uint32_t)(rnd() % 100000); break; /* acks unsent data */
      case 6: ack = rcv - (uint32_t)(rnd() % 100000); break;        /* old ack */
      case 7: flags = 0x11; break;                                  /* FIN */
      case 8: flags = 0x30; break;                                  /* URG */
      case 9: /* valid odd options */
        optlen = 12;
        memcpy(opt, "\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00", 12);
        break;
      default: break; /* in order */
    }
    fill_random(data, dlen);
    len = tcp_seg(f, smac, sip, r->dst_ip, sport, dport, seq, ack, flags, win, opt, optlen, data,
                  dlen, r->dst_mac);
    raw_send(r, f, len);
    if (seq == snd && !(flags & 0x06)) snd += (uint32_t)dlen + ((flags & 0x01) ? 1u : 0u);
    /* Track what the harness acknowledges (and its sequence numbers). */
    while ((off = raw_recv_tcp(r, f, sizeof f, sip, sport, 2, &flen)) != 0) {
      if (f[off + 13] & 0x10) peer_ack = get32(f + off + 8);
      uint32_t s = get32(f + off + 4);
      size_t thl = (size_t)(f[off + 12] >> 4) * 4;
      size_t tot = get16(f + 16), ihl = off - 14;
      uint32_t end = s + (uint32_t)(tot > ihl + thl ? tot - ihl - thl : 0);
      if ((int32_t)(end - rcv) > 0) rcv = end;
    }
    if ((int32_t)(peer_ack - snd) > 0) snd = peer_ack;
  }
  len = tcp_seg(f, smac, sip, r->dst_ip, sport, dport, peer_ack, 0, 0x04, 0, data, 0, data, 0,
                r->dst_mac);
  raw_send(r, f, len);
  return 1;
}

static int cmd_fuzz(const char *ifname, const char *mac, const char *ip, unsigned count,
                    uint64_t seed, int sessions) {
  struct raw r;
  memset(&r, 0, sizeof r);
  rng = seed ? seed : 1;
  unsigned m[6];
  if (sscanf(mac, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
    die("bad mac %s", mac);
  }
  for (int i = 0; i < 6; i++) r.dst_mac[i] = (uint8_t)m[i];
  struct sockaddr_in a = addr_of(ip, 0);
  r.dst_ip = ntohl(a.sin_addr.s_addr);
  r.net = r.dst_ip & 0xffffff00u;
  r.ifindex = (int)if_nametoindex(ifname);
  if (!r.ifindex) die("no interface %s", ifname);
  r.tx = socket(AF_PACKET, SOCK_RAW, 0);
  r.rx = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (r.tx < 0 || r.rx < 0) die("packet socket: %s", strerror(errno));
  struct sockaddr_ll sa;
  memset(&sa, 0, sizeof sa);
  sa.sll_family = AF_PACKET;
  sa.sll_protocol = htons(ETH_P_ALL);
  sa.sll_ifindex = r.ifindex;
  if (bind(r.rx, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind: %s", strerror(errno));
  unsigned malformed = send_malformed(&r);
  send_random(&r, count);
  unsigned done = 0;
  for (int i = 0; i < sessions; i++) done += hostile_session(&r, i);
  printf("ok fuzz malformed=%u random=%u sessions=%u/%d frames=%u\n", malformed, count, done,
         sessions, r.sent);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) die("usage: net_probe ping|udp|echo|stream|many|zerowin|fuzz ...");
  const char *cmd = argv[1];
  if (!strcmp(cmd, "ping") && argc == 4) return cmd_ping(argv[2], atoi(argv[3]));
  if (!strcmp(cmd, "udp") && argc == 4) return cmd_udp(argv[2], atoi(argv[3]));
  if (!strcmp(cmd, "echo") && argc == 6) {
    rng = strtoull(argv[5], NULL, 0) | 1;
    return run_echo(argv[2], atoi(argv[3]), 1, strtoull(argv[4], NULL, 0), 60000);
  }
  if (!strcmp(cmd, "stream") && argc == 5) return cmd_stream(argv[2], atoi(argv[3]), atoi(argv[4]));
  if (!strcmp(cmd, "many") && argc == 6) {
    return run_echo(argv[2], atoi(argv[3]), atoi(argv[4]), strtoull(argv[5], NULL, 0), 60000);
  }
  if (!strcmp(cmd, "zerowin") && argc == 6) {
    return cmd_zerowin(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  }
  if (!strcmp(cmd, "fuzz") && argc == 8) {
    return cmd_fuzz(argv[2], argv[3], argv[4], (unsigned)atoi(argv[5]),
                    strtoull(argv[6], NULL, 0), atoi(argv[7]));
  }
  die("bad arguments for %s", cmd);
  return 1;
}
