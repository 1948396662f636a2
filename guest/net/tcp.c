/*
 * TCP (RFC 793/9293): connection table, application API, segment output and
 * timers. Segment arrival is in tcp_input.c.
 *
 * Output: data is sent from snd_nxt while it fits min(peer window, cwnd),
 * at most mss per segment, with no Nagle and no sender SWS delay. The FIN
 * goes with (or after) the last byte. Pure ACKs carry snd_max as sequence
 * number, so they stay acceptable to the peer after a go-back.
 *
 * Timers, one of each per connection:
 *   t_rtx     retransmission (RFC 6298): RTO = SRTT + 4 RTTVAR, 200 ms..60 s,
 *             1 s before the first sample, doubled per timeout (Karn: no
 *             samples from retransmitted data). On expiry everything from
 *             snd_una is resent (go-back-N) with cwnd = 1 MSS. 15 timeouts
 *             (5 for a SYN-ACK) abort the connection.
 *   t_persist zero-window probing: while the peer's window is 0, nothing is
 *             in flight and data is waiting, one byte at snd_una is sent
 *             every RTO << n (capped at 60 s). Any ACK resets the count;
 *             15 unanswered probes abort.
 *   t_wait    TIME_WAIT (2 * MSL = 4 s) and the FIN_WAIT_2 limit (60 s).
 */
#include "tcp_priv.h"

struct tcp_conn tcp_conns[NET_TCP_CONNS];
struct tcp_listener tcp_listeners[NET_TCP_LISTENERS];
static uint64_t conn_order;

int tcp_init(void) {
  memset(tcp_conns, 0, sizeof tcp_conns);
  memset(tcp_listeners, 0, sizeof tcp_listeners);
  size_t per = (size_t)TCP_RCV + TCP_SND;
  uint8_t *mem = heap_alloc(per * NET_TCP_CONNS, 4096);
  if (!mem) return NET_ENOMEM;
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    tcp_conns[i].rbuf = mem + per * (size_t)i;
    tcp_conns[i].sbuf = tcp_conns[i].rbuf + TCP_RCV;
    tcp_conns[i].listener = -1;
  }
  return 0;
}

uint32_t tcp_our_mss(void) { return min_u32(net_g.mtu - IP_HLEN - TCP_HLEN, 65535); }

void tcp_free(struct tcp_conn *c) {
  uint8_t *r = c->rbuf, *s = c->sbuf;
  memset(c, 0, sizeof *c);
  c->rbuf = r;
  c->sbuf = s;
  c->listener = -1;
}

void tcp_drop(struct tcp_conn *c, int err) {
  if (!c->app) {
    tcp_free(c);
    return;
  }
  c->state = TCP_CLOSED;
  c->err = err;
  c->t_rtx = c->t_persist = c->t_wait = 0;
  c->rb_len = 0;
  c->sb_len = 0;
  c->n_ooo = 0;
  c->ack_pending = 0;
}

void tcp_time_wait(struct tcp_conn *c, uint64_t now) {
  c->state = TCP_TIME_WAIT;
  c->t_rtx = c->t_persist = 0;
  c->t_wait = now + 2 * TCP_MSL_NS;
  c->sb_len = 0;
}

/* Oldest half-open connection (of listener l, or of any when l < 0). */
static struct tcp_conn *oldest_syn_rcvd(int l) {
  struct tcp_conn *best = 0;
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    struct tcp_conn *c = &tcp_conns[i];
    if (c->state == TCP_SYN_RCVD && (l < 0 || c->listener == l) &&
        (!best || c->order < best->order)) {
      best = c;
    }
  }
  return best;
}

/* A slot for a new passive connection. When the listener's backlog or the
 * table is full, the oldest half-open connection makes room (a SYN flood
 * cannot lock out real clients); established ones are never evicted. */
struct tcp_conn *tcp_new_conn(int l, uint32_t raddr, uint16_t rport, uint16_t lport) {
  uint32_t pending = 0;
  struct tcp_conn *free_slot = 0;
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    struct tcp_conn *c = &tcp_conns[i];
    if (c->state == TCP_CLOSED && !c->app) {
      if (!free_slot) free_slot = c;
    } else if (c->listener == l && !c->accepted) {
      pending++;
    }
  }
  if (pending >= tcp_listeners[l].backlog || !free_slot) {
    struct tcp_conn *victim = oldest_syn_rcvd(pending >= tcp_listeners[l].backlog ? l : -1);
    net_count(NET_C_TCP_SYN_DROPPED);
    if (!victim) return 0;
    tcp_free(victim);
    free_slot = victim;
  }
  struct tcp_conn *c = free_slot;
  tcp_free(c);
  c->listener = (int8_t)l;
  c->raddr = raddr;
  c->rport = rport;
  c->lport = lport;
  c->order = ++conn_order;
  c->rto_base = TCP_RTO_INIT;
  return c;
}

uint64_t tcp_rto(const struct tcp_conn *c) {
  uint64_t r = c->rto_base;
  for (int i = 0; i < c->backoff && r < TCP_RTO_MAX; i++) r *= 2;
  if (r < TCP_RTO_MIN) r = TCP_RTO_MIN;
  if (r > TCP_RTO_MAX) r = TCP_RTO_MAX;
  return r;
}

void tcp_rtt_sample(struct tcp_conn *c, uint64_t r) {
  if (r == 0) r = 1;
  if (c->srtt == 0) {
    c->srtt = r;
    c->rttvar = r / 2;
  } else {
    uint64_t d = c->srtt > r ? c->srtt - r : r - c->srtt;
    c->rttvar = (3 * c->rttvar + d) / 4;
    c->srtt = (7 * c->srtt + r) / 8;
    if (c->srtt == 0) c->srtt = 1;
  }
  uint64_t var = 4 * c->rttvar;
  if (var < NS_PER_MS) var = NS_PER_MS; /* clock granularity G */
  uint64_t rto = c->srtt + var;
  if (rto < TCP_RTO_MIN) rto = TCP_RTO_MIN;
  if (rto > TCP_RTO_MAX) rto = TCP_RTO_MAX;
  c->rto_base = rto;
}

/* The window to advertise; never shrinks the right edge we announced, and
 * avoids silly windows (less than min(buffer/2, mss) is announced as 0). */
static uint16_t tcp_window(struct tcp_conn *c) {
  uint32_t free_space = TCP_RCV - c->rb_len;
  uint32_t wnd = free_space >= min_u32(TCP_RCV / 2, c->mss) ? free_space : 0;
  uint32_t cur = seq_gt(c->rcv_adv, c->rcv_nxt) ? c->rcv_adv - c->rcv_nxt : 0;
  if (wnd < cur) wnd = cur;
  if (wnd > 65535) wnd = 65535;
  if (seq_gt(c->rcv_nxt + wnd, c->rcv_adv)) c->rcv_adv = c->rcv_nxt + wnd;
  return (uint16_t)wnd;
}

/* Builds and sends one segment; data comes from the send ring at offset off
 * from snd_una. A SYN carries the MSS option. */
static void tcp_emit(struct tcp_conn *c, uint32_t seq, uint8_t flags, uint32_t off,
                     uint32_t dlen) {
  uint8_t *t = ip_payload();
  uint32_t hl = TCP_HLEN + ((flags & TH_SYN) ? 4u : 0u);
  wr16(t, c->lport);
  wr16(t + 2, c->rport);
  wr32(t + 4, seq);
  wr32(t + 8, (flags & TH_ACK) ? c->rcv_nxt : 0);
  t[12] = (uint8_t)((hl / 4) << 4);
  t[13] = flags;
  wr16(t + 14, (flags & TH_RST) ? 0 : tcp_window(c));
  wr16(t + 16, 0);
  wr16(t + 18, 0);
  if (flags & TH_SYN) {
    t[20] = 2;
    t[21] = 4;
    wr16(t + 22, (uint16_t)tcp_our_mss());
  }
  if (dlen) {
    uint32_t pos = (c->sb_head + off) % TCP_SND;
    uint32_t first = min_u32(dlen, TCP_SND - pos);
    memcpy(t + hl, c->sbuf + pos, first);
    if (first < dlen) memcpy(t + hl + first, c->sbuf, dlen - first);
  }
  uint32_t len = hl + dlen;
  wr16(t + 16, csum_fold(csum_add(csum_pseudo(net_g.ip, c->raddr, IP_PROTO_TCP, len), t, len)));
  if (flags & TH_ACK) c->ack_pending = 0;
  if (flags & TH_RST) net_count(NET_C_TCP_RST_SENT);
  ip_send(c->raddr, IP_PROTO_TCP, len);
}

void tcp_rst_reply(uint32_t raddr, uint16_t lport, uint16_t rport, uint32_t seq, uint32_t ack,
                   uint8_t flags) {
  uint8_t *t = ip_payload();
  wr16(t, lport);
  wr16(t + 2, rport);
  wr32(t + 4, seq);
  wr32(t + 8, ack);
  t[12] = (TCP_HLEN / 4) << 4;
  t[13] = flags;
  wr16(t + 14, 0);
  wr16(t + 16, 0);
  wr16(t + 18, 0);
  wr16(t + 16,
       csum_fold(csum_add(csum_pseudo(net_g.ip, raddr, IP_PROTO_TCP, TCP_HLEN), t, TCP_HLEN)));
  net_count(NET_C_TCP_RST_SENT);
  ip_send(raddr, IP_PROTO_TCP, TCP_HLEN);
}

void tcp_send_ack(struct tcp_conn *c) {
  if (c->state == TCP_CLOSED) return;
  if (c->state == TCP_SYN_RCVD) {
    tcp_emit(c, c->iss, TH_SYN | TH_ACK, 0, 0);
  } else {
    tcp_emit(c, c->snd_max, TH_ACK, 0, 0);
  }
}

void tcp_send_rst(struct tcp_conn *c) {
  if (c->state == TCP_CLOSED || c->state == TCP_SYN_RCVD) return;
  tcp_emit(c, c->snd_max, TH_RST | TH_ACK, 0, 0);
}

static uint32_t tcp_unsent(const struct tcp_conn *c) {
  uint32_t off = c->snd_nxt - c->snd_una;
  return off < c->sb_len ? c->sb_len - off : 0;
}

static uint64_t persist_interval(const struct tcp_conn *c) {
  uint64_t r = c->rto_base;
  for (int i = 0; i < c->persist_shift && r < TCP_RTO_MAX; i++) r *= 2;
  if (r < TCP_RTO_MIN) r = TCP_RTO_MIN;
  if (r > TCP_RTO_MAX) r = TCP_RTO_MAX;
  return r;
}

/* Retransmission timer while something is in flight, else the persist timer
 * while the peer's window is closed on waiting data. */
static void tcp_set_timers(struct tcp_conn *c, uint64_t now) {
  if (c->state == TCP_CLOSED || c->state == TCP_TIME_WAIT) {
    c->t_rtx = c->t_persist = 0;
    return;
  }
  if (c->snd_nxt != c->snd_una) {
    c->t_persist = 0;
    c->persist_shift = 0;
    if (!c->t_rtx) c->t_rtx = now + tcp_rto(c);
    return;
  }
  c->t_rtx = 0;
  if (tcp_can_send_data(c) && c->snd_wnd == 0 && tcp_unsent(c) > 0) {
    if (!c->t_persist) c->t_persist = now + persist_interval(c);
  } else {
    c->t_persist = 0;
    c->persist_shift = 0;
    c->probes = 0;
  }
}

void tcp_output(struct tcp_conn *c) {
  uint64_t now = clock_ns();
  if (c->state == TCP_SYN_RCVD) {
    if (c->snd_nxt == c->iss) {
      tcp_emit(c, c->iss, TH_SYN | TH_ACK, 0, 0);
      c->snd_nxt = c->iss + 1;
      if (seq_gt(c->snd_nxt, c->snd_max)) c->snd_max = c->snd_nxt;
    }
  } else if (tcp_can_send_data(c)) {
    for (;;) {
      uint32_t off = c->snd_nxt - c->snd_una; /* bytes in flight */
      if (off > c->sb_len) break;             /* the FIN is out too */
      uint32_t avail = c->sb_len - off;
      uint32_t wnd = min_u32(c->snd_wnd, c->cwnd);
      uint32_t usable = wnd > off ? wnd - off : 0;
      uint32_t len = min_u32(min_u32(avail, usable), c->mss);
      uint32_t fin = c->fin_queued && len == avail ? 1u : 0u;
      if (len == 0 && !fin) break;
      if (!c->rtt_active && seq_ge(c->snd_nxt, c->snd_max)) {
        c->rtt_active = 1;
        c->rtt_seq = c->snd_nxt;
        c->rtt_start = now;
      }
      uint8_t flags = (uint8_t)(TH_ACK | (fin ? TH_FIN : 0) | (len && len == avail ? TH_PSH : 0));
      tcp_emit(c, c->snd_nxt, flags, off, len);
      c->probe_byte = 0;
      c->snd_nxt += len + fin;
      if (seq_gt(c->snd_nxt, c->snd_max)) c->snd_max = c->snd_nxt;
      if (fin) break;
    }
  }
  tcp_set_timers(c, now);
}

/* Resends the first unacknowledged segment (data only; a lone FIN is left
 * to the retransmission timer). */
void tcp_retransmit_first(struct tcp_conn *c, uint64_t now) {
  if (c->sb_len == 0) return;
  c->rtt_active = 0; /* Karn */
  tcp_emit(c, c->snd_una, TH_ACK, 0, min_u32(c->mss, c->sb_len));
  c->t_rtx = now + tcp_rto(c);
}

/* Third duplicate ACK: fast retransmit and enter fast recovery (RFC 5681,
 * with the NewReno partial-ACK rule of RFC 6582 in tcp_input.c). */
void tcp_fast_retransmit(struct tcp_conn *c, uint64_t now) {
  if (c->sb_len == 0 || c->in_recovery || seq_le(c->snd_una, c->recover)) return;
  net_count(NET_C_TCP_FAST_RETRANS);
  uint32_t flight = c->snd_max - c->snd_una;
  c->ssthresh = max_u32(flight / 2, 2u * c->mss);
  c->cwnd = c->ssthresh + 3u * c->mss;
  c->in_recovery = 1;
  c->recover = c->snd_max;
  tcp_retransmit_first(c, now);
}

static void tcp_rtx_timeout(struct tcp_conn *c) {
  c->t_rtx = 0;
  c->retries++;
  if (c->retries > (c->state == TCP_SYN_RCVD ? TCP_SYN_RETRIES : TCP_MAX_RETRIES)) {
    if (c->state != TCP_SYN_RCVD) net_count(NET_C_TCP_TIMEOUTS);
    tcp_send_rst(c);
    tcp_drop(c, NET_ETIMEDOUT);
    return;
  }
  net_count(NET_C_TCP_RETRANS);
  if (c->backoff < 16) c->backoff++;
  uint32_t flight = c->snd_max - c->snd_una;
  c->ssthresh = max_u32(flight / 2, 2u * c->mss);
  c->cwnd = c->mss;
  c->dupacks = 0;
  c->in_recovery = 0;
  c->recover = c->snd_max;
  c->rtt_active = 0; /* Karn */
  c->snd_nxt = c->snd_una;
  tcp_output(c);
}

static void tcp_persist_timeout(struct tcp_conn *c, uint64_t now) {
  c->t_persist = 0;
  if (++c->probes > TCP_MAX_PROBES) {
    net_count(NET_C_TCP_TIMEOUTS);
    tcp_send_rst(c);
    tcp_drop(c, NET_ETIMEDOUT);
    return;
  }
  if (c->snd_nxt == c->snd_una && tcp_unsent(c) > 0) {
    net_count(NET_C_TCP_PROBES);
    tcp_emit(c, c->snd_una, TH_ACK, 0, 1);
    c->probe_byte = 1;
  }
  if (c->persist_shift < 16) c->persist_shift++;
  tcp_set_timers(c, now);
}

uint64_t tcp_timers(uint64_t now) {
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    struct tcp_conn *c = &tcp_conns[i];
    if (c->state == TCP_CLOSED) continue;
    if (c->t_wait && now >= c->t_wait) {
      c->t_wait = 0;
      if (c->state == TCP_TIME_WAIT || c->state == TCP_FIN_WAIT_2) {
        tcp_drop(c, 0);
        continue;
      }
    }
    if (c->t_rtx && now >= c->t_rtx) tcp_rtx_timeout(c);
    if (c->state != TCP_CLOSED && c->t_persist && now >= c->t_persist) {
      tcp_persist_timeout(c, now);
    }
  }
  return tcp_next_timer();
}

uint64_t tcp_next_timer(void) {
  uint64_t t = UINT64_MAX;
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    const struct tcp_conn *c = &tcp_conns[i];
    if (c->state == TCP_CLOSED) continue;
    if (c->t_rtx && c->t_rtx < t) t = c->t_rtx;
    if (c->t_persist && c->t_persist < t) t = c->t_persist;
    if (c->t_wait && c->t_wait < t) t = c->t_wait;
  }
  return t;
}

void tcp_flush_acks(void) {
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    if (tcp_conns[i].ack_pending) tcp_send_ack(&tcp_conns[i]);
  }
}

/* ---- Application API ---- */

static struct tcp_conn *app_conn(int h) {
  if (h < 0 || h >= NET_TCP_CONNS || !tcp_conns[h].app) return 0;
  return &tcp_conns[h];
}

int tcp_listen(uint16_t port, uint32_t backlog) {
  if (!net_g.up) return NET_EDEV;
  if (port == 0 || backlog == 0 || backlog > NET_TCP_CONNS) return NET_EINVAL;
  int slot = -1;
  for (int i = 0; i < NET_TCP_LISTENERS; i++) {
    if (tcp_listeners[i].used && tcp_listeners[i].port == port) return NET_EINUSE;
    if (!tcp_listeners[i].used && slot < 0) slot = i;
  }
  if (slot < 0) return NET_ENOMEM;
  tcp_listeners[slot].used = 1;
  tcp_listeners[slot].port = port;
  tcp_listeners[slot].backlog = backlog;
  return slot;
}

int tcp_accept(int l) {
  if (l < 0 || l >= NET_TCP_LISTENERS || !tcp_listeners[l].used) return NET_EINVAL;
  struct tcp_conn *best = 0;
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    struct tcp_conn *c = &tcp_conns[i];
    if (c->listener == l && !c->accepted &&
        (c->state == TCP_ESTABLISHED || c->state == TCP_CLOSE_WAIT) &&
        (!best || c->order < best->order)) {
      best = c;
    }
  }
  if (!best) return NET_EAGAIN;
  best->accepted = 1;
  best->app = 1;
  net_count(NET_C_TCP_ACCEPTED);
  return (int)(best - tcp_conns);
}

int tcp_recv(int h, void *buf, uint32_t len) {
  struct tcp_conn *c = app_conn(h);
  if (!c || !buf || len == 0) return NET_EINVAL;
  if (c->rb_len > 0) {
    uint32_t n = min_u32(len, c->rb_len);
    uint32_t first = min_u32(n, TCP_RCV - c->rb_head);
    memcpy(buf, c->rbuf + c->rb_head, first);
    if (first < n) memcpy((uint8_t *)buf + first, c->rbuf, n - first);
    c->rb_head = (c->rb_head + n) % TCP_RCV;
    c->rb_len -= n;
    /* Window update when the window grew by min(buffer/2, 2 mss) over what
     * the peer knows (it is sent with the next segment, or by net_poll /
     * net_wait at the latest). */
    if (!c->peer_fin && c->state != TCP_CLOSED && c->state != TCP_SYN_RCVD) {
      uint32_t free_space = TCP_RCV - c->rb_len;
      uint32_t cur = seq_gt(c->rcv_adv, c->rcv_nxt) ? c->rcv_adv - c->rcv_nxt : 0;
      if (free_space >= min_u32(TCP_RCV / 2, c->mss) &&
          free_space - cur >= min_u32(TCP_RCV / 2, 2u * c->mss)) {
        c->ack_pending = 1;
      }
    }
    return (int)n;
  }
  if (c->err) return c->err;
  if (c->peer_fin) return 0;
  if (c->state == TCP_CLOSED) return NET_ECLOSED;
  return NET_EAGAIN;
}

int tcp_send(int h, const void *buf, uint32_t len) {
  struct tcp_conn *c = app_conn(h);
  if (!c || (!buf && len)) return NET_EINVAL;
  if (c->err) return c->err;
  if (c->fin_queued || (c->state != TCP_ESTABLISHED && c->state != TCP_CLOSE_WAIT)) {
    return NET_ECLOSED;
  }
  uint32_t n = min_u32(len, TCP_SND - c->sb_len);
  if (n == 0) return len ? NET_EAGAIN : 0;
  uint32_t pos = (c->sb_head + c->sb_len) % TCP_SND;
  uint32_t first = min_u32(n, TCP_SND - pos);
  memcpy(c->sbuf + pos, buf, first);
  if (first < n) memcpy(c->sbuf, (const uint8_t *)buf + first, n - first);
  c->sb_len += n;
  tcp_output(c);
  return (int)n;
}

uint32_t tcp_send_space(int h) {
  struct tcp_conn *c = app_conn(h);
  if (!c || c->err || c->fin_queued ||
      (c->state != TCP_ESTABLISHED && c->state != TCP_CLOSE_WAIT)) {
    return 0;
  }
  return TCP_SND - c->sb_len;
}

int tcp_close(int h) {
  struct tcp_conn *c = app_conn(h);
  if (!c) return NET_EINVAL;
  c->app = 0;
  if (c->state == TCP_CLOSED) {
    tcp_free(c);
    return 0;
  }
  if (c->rb_len > 0) { /* unread data: abort (RFC 2525) */
    tcp_send_rst(c);
    tcp_free(c);
    return 0;
  }
  if (c->state == TCP_ESTABLISHED || c->state == TCP_CLOSE_WAIT) {
    c->fin_queued = 1;
    c->fin_seq = c->snd_una + c->sb_len;
    c->state = c->state == TCP_ESTABLISHED ? TCP_FIN_WAIT_1 : TCP_LAST_ACK;
    tcp_output(c);
  }
  return 0;
}

void tcp_abort(int h) {
  struct tcp_conn *c = app_conn(h);
  if (!c) return;
  c->app = 0;
  tcp_send_rst(c);
  tcp_free(c);
}

int tcp_error(int h) {
  struct tcp_conn *c = app_conn(h);
  if (!c) return NET_EINVAL;
  return c->err;
}

uint32_t tcp_peer(int h, uint16_t *port) {
  struct tcp_conn *c = app_conn(h);
  if (!c) return 0;
  if (port) *port = c->rport;
  return c->raddr;
}

uint32_t tcp_conn_count(void) {
  uint32_t n = 0;
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    if (tcp_conns[i].state != TCP_CLOSED || tcp_conns[i].app) n++;
  }
  return n;
}
