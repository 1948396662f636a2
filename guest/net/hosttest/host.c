/*
 * Linux host harness for the guest network stack: the stack sources
 * (every guest/net source except netif.c) and guest/programs/netsvc.c compiled with
 * -DKEMARI_NET_HOST for userspace, on a TAP device instead of the netif rings.
 *
 * This file replaces the guest runtime functions the stack and netsvc use:
 *   clock_ns      clock_gettime(CLOCK_MONOTONIC)
 *   heap_alloc    aligned, zeroed calloc (never freed, like the guest heap)
 *   arg_*         from argv ("key=value" words, the last one wins)
 *   panic         message on stderr, abort()
 *   printf & co   glibc (stdout line buffered)
 * and provides net_device_open() over a TAP device:
 *   tap=NAME      the TAP interface to attach to (created if missing;
 *                 default ktap0), opened IFF_TAP | IFF_NO_PI, non-blocking
 *   mac=xx:..:xx  our MAC (default: random, locally administered)
 *   mtu=N         IP MTU (default 1500)
 *   loss=P        drop P percent of the frames in each direction (default 0),
 *                 to exercise retransmission
 * The driver's wait() is poll() on the TAP fd with the deadline as timeout.
 *
 * Build (see tests/guest/net_stack_test.ts, which adds the sanitizers):
 *   gcc -std=gnu11 -O2 -g -Wall -Wextra -Werror -DKEMARI_NET_HOST \
 *       -Iguest/include -Iguest/net -o netsvc-host \
 *       guest/net/hosttest/host.c <guest/net sources but netif.c> \
 *       guest/programs/netsvc.c
 *   ip netns exec NS ./netsvc-host tap=ktap0 ip=10.77.0.2/24
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "net.h"

/* ---- Runtime replacements ---- */

uint64_t clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

void *heap_alloc(size_t size, size_t align) {
  if (align < 16) align = 16;
  void *p = NULL;
  if (posix_memalign(&p, align, size ? size : 1) != 0) panic("heap_alloc: %zu bytes", size);
  memset(p, 0, size);
  return p;
}

void panic(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "panic: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  abort();
}

#define MAX_ARGS 64
static const char *keys[MAX_ARGS], *values[MAX_ARGS];
static int nargs;

static int find_arg(const char *key) {
  for (int i = nargs - 1; i >= 0; i--) {
    if (strcmp(keys[i], key) == 0) return i;
  }
  return -1;
}

int arg_has(const char *key) { return find_arg(key) >= 0; }

const char *arg_str(const char *key, const char *def) {
  int i = find_arg(key);
  return i >= 0 ? values[i] : def;
}

uint64_t arg_u64(const char *key, uint64_t def) {
  const char *s = arg_str(key, NULL);
  if (!s) return def;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s || *end) panic("arg %s: bad number '%s'", key, s);
  return v;
}

/* ---- TAP driver ---- */

struct tap {
  int fd;
  uint32_t loss_pct;
  uint64_t rng;
  uint8_t big[65536]; /* a TAP read truncates to the buffer: read whole */
};

static struct tap tap;

static int tap_lose(struct tap *t) {
  if (!t->loss_pct) return 0;
  t->rng ^= t->rng << 13;
  t->rng ^= t->rng >> 7;
  t->rng ^= t->rng << 17;
  return t->rng % 100 < t->loss_pct;
}

static int tap_send(void *ctx, const void *frame, uint32_t len) {
  struct tap *t = ctx;
  if (tap_lose(t)) return 0; /* lost on the wire */
  ssize_t n = write(t->fd, frame, len);
  return n == (ssize_t)len ? 0 : -1;
}

static int tap_recv(void *ctx, void *frame, uint32_t cap) {
  struct tap *t = ctx;
  for (;;) {
    ssize_t n = read(t->fd, t->big, sizeof t->big);
    if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    if (tap_lose(t)) continue;
    if ((size_t)n > cap) return -1;
    memcpy(frame, t->big, (size_t)n);
    return (int)n;
  }
}

static void tap_wait(void *ctx, uint64_t deadline_ns) {
  struct tap *t = ctx;
  uint64_t now = clock_ns();
  if (deadline_ns <= now) return;
  uint64_t ms = (deadline_ns - now + NS_PER_MS - 1) / NS_PER_MS;
  struct pollfd pfd = {.fd = t->fd, .events = POLLIN};
  poll(&pfd, 1, ms > 1000 ? 1000 : (int)ms);
}

static int parse_mac(const char *s, uint8_t mac[6]) {
  unsigned v[6];
  char tail;
  if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6) {
    return -1;
  }
  for (int i = 0; i < 6; i++) {
    if (v[i] > 255) return -1;
    mac[i] = (uint8_t)v[i];
  }
  return 0;
}

int net_device_open(struct net_driver *drv) {
  const char *name = arg_str("tap", "ktap0");
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    perror("netsvc-host: /dev/net/tun");
    return NET_EDEV;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    perror("netsvc-host: TUNSETIFF");
    close(fd);
    return NET_EDEV;
  }
  memset(drv, 0, sizeof *drv);
  uint64_t seed = 0;
  if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) seed = clock_ns();
  const char *mac = arg_str("mac", NULL);
  if (mac) {
    if (parse_mac(mac, drv->mac) < 0) {
      fprintf(stderr, "netsvc-host: bad mac=%s\n", mac);
      return NET_EDEV;
    }
  } else {
    for (int i = 0; i < 6; i++) drv->mac[i] = (uint8_t)(seed >> (8 * i));
    drv->mac[0] = (uint8_t)((drv->mac[0] & 0xfe) | 0x02);
  }
  tap.fd = fd;
  tap.loss_pct = (uint32_t)arg_u64("loss", 0);
  tap.rng = seed | 1;
  drv->ctx = &tap;
  drv->send = tap_send;
  drv->recv = tap_recv;
  drv->wait = tap_wait;
  drv->mtu = (uint32_t)arg_u64("mtu", 1500);
  drv->seed = seed;
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  for (int i = 1; i < argc && nargs < MAX_ARGS; i++) {
    char *eq = strchr(argv[i], '=');
    keys[nargs] = argv[i];
    values[nargs] = "";
    if (eq) {
      *eq = 0;
      values[nargs] = eq + 1;
    }
    nargs++;
  }
  return kemari_main();
}
