/*
 * net_tool: timing instruments for the three-host network tests
 * (tests/net/). Runs inside a test namespace (ip netns exec); every time it
 * prints is CLOCK_REALTIME in microseconds, so lines from several namespaces
 * and from the test process (performance.timeOrigin + performance.now())
 * can be put on one time line.
 *
 *   net_tool ping IP INTERVAL_US DURATION_MS
 *       ICMP echo requests every INTERVAL_US for DURATION_MS (raw socket),
 *       then waits 1 s for late replies. One line per request:
 *         p SEQ SENT_US RECV_US|-1 DUPS
 *       then "ok ping sent=N got=M dups=D".
 *   net_tool udpping IP PORT INTERVAL_US DURATION_MS
 *       The same over UDP echo: each datagram carries its sequence number
 *       and a fixed pattern; an echo must come back unchanged. Lines
 *         u SEQ SENT_US RECV_US|-1 DUPS
 *       then "ok udpping sent=N got=M dups=D bad=B".
 *   net_tool capture IFNAME DURATION_MS [MAC]
 *       Every frame seen on IFNAME (AF_PACKET, both directions), with the
 *       kernel's receive timestamp (SO_TIMESTAMPNS), until DURATION_MS
 *       passed or SIGTERM/SIGINT. With MAC, only frames from or to MAC.
 *       Prints "ready" once bound, then one line per frame:
 *         f T_US PKTTYPE SRC DST ETHERTYPE LEN PROTO-FIELDS...
 *       (PKTTYPE: 0 host, 1 broadcast, 2 multicast, 3 other host,
 *       4 outgoing; PROTO-FIELDS: "icmp TYPE ID SEQ SRC DST",
 *       "udp SPORT DPORT SRC DST LEN", "tcp SPORT DPORT SEQ ACK FLAGS LEN WIN",
 *       "arp OP SENDER-IP TARGET-IP" or "-"), and at the end
 *       "ok capture frames=N kernel_drops=D".
 *   net_tool rr IP PORT SIZE DURATION_MS
 *       Request/response over one TCP connection (TCP_NODELAY) to an echo
 *       port: send SIZE bytes, read the SIZE bytes back (checked), for
 *       DURATION_MS. Prints "v RTT_US,RTT_US,..." then "ok rr n=N".
 *   net_tool streamgap IP PORT DURATION_MS
 *       Reads netsvc's counter stream for DURATION_MS, checking every byte,
 *       and reports the longest time without data:
 *       "ok streamgap bytes=B longest_us=G at_us=T" (T: when it began).
 *
 * Prints "FAIL: ..." and exits 1 on a setup error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
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

static int64_t real_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static void put32(uint8_t *p, uint32_t v) {
  put16(p, (uint16_t)(v >> 16));
  put16(p + 2, (uint16_t)v);
}

static uint16_t csum(const uint8_t *p, size_t n) {
  uint32_t s = 0;
  for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]);
  if (n & 1) s += (uint32_t)p[n - 1] << 8;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (uint16_t)~s;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) die("bad address %s", ip);
  return a;
}

/* ---- request/response probes (ICMP and UDP) ---- */

struct probe {
  int64_t sent, recv;
  int dups;
};

#define PAYLOAD 56
#define MAX_PROBES 65536

static void fill_payload(uint8_t *p, uint32_t seq) {
  put32(p, seq);
  for (int i = 4; i < PAYLOAD; i++) p[i] = (uint8_t)(seq * 31 + (uint32_t)i);
}

static int payload_ok(const uint8_t *p, uint32_t seq) {
  uint8_t want[PAYLOAD];
  fill_payload(want, seq);
  return memcmp(p, want, PAYLOAD) == 0;
}

static void record(struct probe *pr, uint32_t n, uint32_t seq) {
  if (seq >= n) return;
  if (pr[seq].recv >= 0) {
    pr[seq].dups++;
  } else {
    pr[seq].recv = real_us();
  }
}

static int run_probes(int is_udp, const char *ip, int port, int interval_us, int duration_ms) {
  int fd = is_udp ? socket(AF_INET, SOCK_DGRAM, 0) : socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  if (fd < 0) die("socket: %s", strerror(errno));
  struct sockaddr_in a = addr_of(ip, port);
  if (is_udp && connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    die("udp connect: %s", strerror(errno));
  }
  int rcv = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  uint32_t n = (uint32_t)((int64_t)duration_ms * 1000 / interval_us) + 1;
  if (n > MAX_PROBES) die("too many probes (%u)", n);
  struct probe *pr = calloc(n, sizeof *pr);
  for (uint32_t i = 0; i < n; i++) pr[i].recv = -1;
  uint16_t id = (uint16_t)getpid();
  uint32_t next = 0;
  int bad = 0;
  int64_t start = mono_us();
  int64_t end = start + (int64_t)duration_ms * 1000 + 1000000;
  for (;;) {
    int64_t now = mono_us();
    if (now >= end) break;
    if (next < n && now >= start + (int64_t)next * interval_us) {
      uint8_t pkt[8 + PAYLOAD];
      if (is_udp) {
        fill_payload(pkt, next);
        pr[next].sent = real_us();
        if (send(fd, pkt, PAYLOAD, 0) < 0 && errno != ECONNREFUSED) {
          die("udp send: %s", strerror(errno));
        }
      } else {
        memset(pkt, 0, sizeof pkt);
        pkt[0] = 8;
        put16(pkt + 4, id);
        put16(pkt + 6, (uint16_t)next);
        fill_payload(pkt + 8, next);
        put16(pkt + 2, csum(pkt, sizeof pkt));
        pr[next].sent = real_us();
        if (sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&a, sizeof a) < 0) {
          die("sendto: %s", strerror(errno));
        }
      }
      next++;
      continue;
    }
    int64_t due = next < n ? start + (int64_t)next * interval_us : end;
    int wait_ms = (int)((due - now + 999) / 1000);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms < 0 ? 0 : wait_ms) != 1) continue;
    uint8_t buf[2048];
    ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (got < 0) continue;
    if (is_udp) {
      if (got != PAYLOAD) {
        bad++;
        continue;
      }
      uint32_t seq = get32(buf);
      if (seq >= n || !payload_ok(buf, seq)) {
        bad++;
        continue;
      }
      record(pr, n, seq);
    } else {
      if (got < 20) continue;
      size_t hl = (size_t)(buf[0] & 15) * 4;
      if ((size_t)got < hl + 8 + PAYLOAD) continue;
      const uint8_t *r = buf + hl;
      if (r[0] != 0 || get16(r + 4) != id) continue;
      uint32_t seq = get32(r + 8);
      if (seq >= n || (uint16_t)seq != get16(r + 6) || !payload_ok(r + 8, seq)) {
        bad++;
        continue;
      }
      record(pr, n, seq);
    }
  }
  uint32_t replies = 0;
  int dups = 0;
  for (uint32_t i = 0; i < next; i++) {
    printf("%c %u %lld %lld %d\n", is_udp ? 'u' : 'p', i, (long long)pr[i].sent,
           (long long)pr[i].recv, pr[i].dups);
    if (pr[i].recv >= 0) replies++;
    dups += pr[i].dups;
  }
  printf("ok %s sent=%u got=%u dups=%d bad=%d\n", is_udp ? "udpping" : "ping", next, replies,
         dups, bad);
  return 0;
}

/* ---- TCP request/response and stream stalls ---- */

static int tcp_connect(const char *ip, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = addr_of(ip, port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    die("connect %s:%d: %s", ip, port, strerror(errno));
  }
  struct timeval tv = {.tv_sec = 10, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

static int cmd_rr(const char *ip, int port, int size, int duration_ms) {
  if (size < 1 || size > 65536) die("size %d", size);
  int fd = tcp_connect(ip, port);
  uint8_t *out = malloc((size_t)size), *in = malloc((size_t)size);
  size_t cap = 1 << 20, n = 0;
  int64_t *rtt = malloc(cap * sizeof *rtt);
  int64_t end = mono_us() + (int64_t)duration_ms * 1000;
  while (mono_us() < end && n < cap) {
    for (int i = 0; i < size; i++) out[i] = (uint8_t)(n * 7 + (size_t)i);
    int64_t t0 = mono_us();
    if (send(fd, out, (size_t)size, MSG_NOSIGNAL) != size) die("send: %s", strerror(errno));
    int got = 0;
    while (got < size) {
      ssize_t r = recv(fd, in + got, (size_t)(size - got), 0);
      if (r <= 0) die("recv after %zu round trips: %s", n, r == 0 ? "EOF" : strerror(errno));
      got += (int)r;
    }
    rtt[n++] = mono_us() - t0;
    if (memcmp(in, out, (size_t)size) != 0) die("round trip %zu: echo differs", n);
  }
  printf("v ");
  for (size_t i = 0; i < n; i++) printf("%s%lld", i ? "," : "", (long long)rtt[i]);
  printf("\nok rr n=%zu\n", n);
  close(fd);
  return 0;
}

static int cmd_streamgap(const char *ip, int port, int duration_ms) {
  int fd = tcp_connect(ip, port);
  uint64_t pos = 0;
  int64_t start = mono_us(), last = start, longest = 0, longest_at = 0;
  int64_t end = start + (int64_t)duration_ms * 1000;
  uint8_t buf[65536];
  for (;;) {
    int64_t now = mono_us();
    if (now >= end) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ms = (int)((end - now) / 1000) + 1;
    if (poll(&p, 1, ms) != 1) continue;
    ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r == 0) die("stream: EOF after %llu bytes", (unsigned long long)pos);
    if (r < 0) {
      if (errno == EAGAIN) continue;
      die("stream: recv after %llu bytes: %s", (unsigned long long)pos, strerror(errno));
    }
    int64_t t = mono_us();
    if (t - last > longest) {
      longest = t - last;
      longest_at = real_us() - (t - last);
    }
    last = t;
    for (ssize_t i = 0; i < r; i++, pos++) {
      uint8_t want = (uint8_t)((pos >> 3) >> (8 * (7 - (pos & 7))));
      if (buf[i] != want) die("stream: byte %llu is %u, expected %u", (unsigned long long)pos,
                              buf[i], want);
    }
  }
  close(fd);
  printf("ok streamgap bytes=%llu longest_us=%lld at_us=%lld\n", (unsigned long long)pos,
         (long long)longest, (long long)longest_at);
  return 0;
}

/* ---- capture ---- */

static volatile sig_atomic_t stop_capture;
static void on_signal(int sig) {
  (void)sig;
  stop_capture = 1;
}

static int parse_mac(const char *s, uint8_t mac[6]) {
  unsigned m[6];
  if (sscanf(s, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) return -1;
  for (int i = 0; i < 6; i++) mac[i] = (uint8_t)m[i];
  return 0;
}

static void fmt_mac(char *out, const uint8_t *m) {
  sprintf(out, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

static void fmt_ip(char *out, const uint8_t *p) { sprintf(out, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]); }

/* Protocol fields of a frame, "-" when not IPv4/ARP or too short. */
static void describe(char *out, size_t cap, const uint8_t *f, size_t len) {
  snprintf(out, cap, "-");
  if (len < 14) return;
  uint16_t type = get16(f + 12);
  char a[16], b[16];
  if (type == 0x0806 && len >= 42) {
    fmt_ip(a, f + 28);
    fmt_ip(b, f + 38);
    snprintf(out, cap, "arp %u %s %s", get16(f + 20), a, b);
    return;
  }
  if (type != 0x0800 || len < 34) return;
  const uint8_t *h = f + 14;
  size_t hl = (size_t)(h[0] & 15) * 4;
  if (hl < 20 || 14 + hl > len) return;
  size_t total = get16(h + 2);
  if (total < hl || 14 + total > len) return;
  const uint8_t *l4 = h + hl;
  size_t n = total - hl;
  fmt_ip(a, h + 12);
  fmt_ip(b, h + 16);
  if (h[9] == 1 && n >= 8) {
    snprintf(out, cap, "icmp %u %u %u %s %s", l4[0], get16(l4 + 4), get16(l4 + 6), a, b);
  } else if (h[9] == 17 && n >= 8) {
    snprintf(out, cap, "udp %u %u %s %s %zu", get16(l4), get16(l4 + 2), a, b, n - 8);
  } else if (h[9] == 6 && n >= 20) {
    size_t thl = (size_t)(l4[12] >> 4) * 4;
    size_t dlen = n > thl ? n - thl : 0;
    snprintf(out, cap, "tcp %u %u %u %u %02x %zu %u", get16(l4), get16(l4 + 2), get32(l4 + 4),
             get32(l4 + 8), l4[13], dlen, get16(l4 + 14));
  } else {
    snprintf(out, cap, "ip %u %s %s", h[9], a, b);
  }
}

static int cmd_capture(const char *ifname, int duration_ms, const char *mac_arg) {
  uint8_t mac[6];
  int filter = mac_arg != NULL;
  if (filter && parse_mac(mac_arg, mac) < 0) die("bad mac %s", mac_arg);
  int ifindex = (int)if_nametoindex(ifname);
  if (!ifindex) die("no interface %s", ifname);
  int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (fd < 0) die("packet socket: %s", strerror(errno));
  int rcv = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv);
  int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0) {
    die("SO_TIMESTAMPNS: %s", strerror(errno));
  }
  struct sockaddr_ll sa;
  memset(&sa, 0, sizeof sa);
  sa.sll_family = AF_PACKET;
  sa.sll_protocol = htons(ETH_P_ALL);
  sa.sll_ifindex = ifindex;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind: %s", strerror(errno));
  struct sigaction act;
  memset(&act, 0, sizeof act);
  act.sa_handler = on_signal;
  sigaction(SIGTERM, &act, NULL);
  sigaction(SIGINT, &act, NULL);
  printf("ready\n");
  fflush(stdout);
  int64_t end = mono_us() + (int64_t)duration_ms * 1000;
  unsigned frames = 0;
  while (!stop_capture && mono_us() < end) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 50) != 1) continue;
    for (;;) {
      uint8_t f[65536];
      char ctrl[256];
      struct sockaddr_ll from;
      struct iovec iov = {.iov_base = f, .iov_len = sizeof f};
      struct msghdr msg;
      memset(&msg, 0, sizeof msg);
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = ctrl;
      msg.msg_controllen = sizeof ctrl;
      ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
      if (n < 0) break;
      if (n < 14) continue;
      if (filter && memcmp(f, mac, 6) != 0 && memcmp(f + 6, mac, 6) != 0) continue;
      int64_t t = -1;
      for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
          struct timespec ts;
          memcpy(&ts, CMSG_DATA(c), sizeof ts);
          t = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
        }
      }
      if (t < 0) t = real_us();
      char src[18], dst[18], what[160];
      fmt_mac(dst, f);
      fmt_mac(src, f + 6);
      describe(what, sizeof what, f, (size_t)n);
      printf("f %lld %u %s %s %04x %zd %s\n", (long long)t, from.sll_pkttype, src, dst,
             get16(f + 12), n, what);
      frames++;
    }
  }
  struct tpacket_stats st;
  socklen_t sl = sizeof st;
  memset(&st, 0, sizeof st);
  getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
  printf("ok capture frames=%u kernel_drops=%u\n", frames, st.tp_drops);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOFBF, 1 << 16);
  if (argc < 2) die("usage: net_tool ping|udpping|rr|streamgap|capture ...");
  const char *cmd = argv[1];
  int rc = 1;
  if (!strcmp(cmd, "ping") && argc == 5) {
    rc = run_probes(0, argv[2], 0, atoi(argv[3]), atoi(argv[4]));
  } else if (!strcmp(cmd, "udpping") && argc == 6) {
    rc = run_probes(1, argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  } else if (!strcmp(cmd, "rr") && argc == 6) {
    rc = cmd_rr(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  } else if (!strcmp(cmd, "streamgap") && argc == 5) {
    rc = cmd_streamgap(argv[2], atoi(argv[3]), atoi(argv[4]));
  } else if (!strcmp(cmd, "capture") && (argc == 4 || argc == 5)) {
    rc = cmd_capture(argv[2], atoi(argv[3]), argc == 5 ? argv[4] : NULL);
  } else {
    die("bad arguments for %s", cmd);
  }
  fflush(stdout);
  return rc;
}
