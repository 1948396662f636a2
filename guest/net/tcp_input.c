/*
 * TCP segment arrival (RFC 9293 3.10.7, with the RFC 5961 checks).
 *
 * Validation before any connection state is touched: at least 20 bytes,
 * 20 <= data offset * 4 <= segment length, non-zero ports, checksum over the
 * pseudo header, well-formed options (each option's length within the
 * header; MSS exactly 4 bytes; anything else is skipped), and sane flags
 * (SYN with FIN or RST, or none of SYN/ACK/RST, is dropped). URG is ignored:
 * urgent data is delivered as ordinary data.
 *
 * Then, for a connection: sequence acceptability against the receive window
 * (an unacceptable segment gets an ACK), RST only at exactly rcv_nxt (in
 * window: challenge ACK), a SYN in a synchronized state gets a challenge
 * ACK, ACK processing (send window, RTT, congestion window, three duplicate
 * ACKs -> fast retransmit), then data and FIN.
 *
 * Out-of-order data is kept: up to TCP_OOO_MAX disjoint ranges are written
 * straight into the receive ring at their final position and become readable
 * when the gap is filled. A segment that would need a fifth range is dropped
 * (the peer retransmits it). A FIN is only taken in order.
 */
#include "tcp_priv.h"

static struct tcp_conn *tcp_lookup(uint32_t raddr, uint16_t rport, uint16_t lport) {
  for (int i = 0; i < NET_TCP_CONNS; i++) {
    struct tcp_conn *c = &tcp_conns[i];
    if (c->state != TCP_CLOSED && c->raddr == raddr && c->rport == rport && c->lport == lport) {
      return c;
    }
  }
  return 0;
}

static int find_listener(uint16_t port) {
  for (int i = 0; i < NET_TCP_LISTENERS; i++) {
    if (tcp_listeners[i].used && tcp_listeners[i].port == port) return i;
  }
  return -1;
}

/* Returns 0 and the MSS option (0 if absent), or -1 when malformed. */
static int parse_options(const uint8_t *o, uint32_t n, uint32_t *mss) {
  uint32_t i = 0;
  *mss = 0;
  while (i < n) {
    uint8_t kind = o[i];
    if (kind == 0) break; /* end of option list */
    if (kind == 1) {      /* no-op */
      i++;
      continue;
    }
    if (n - i < 2) return -1;
    uint32_t l = o[i + 1];
    if (l < 2 || l > n - i) return -1;
    if (kind == 2) {
      if (l != 4) return -1;
      *mss = rd16(o + i + 2);
    }
    i += l;
  }
  return 0;
}

/* A SYN for a listening port (or anything else without a connection). */
static void tcp_no_conn(uint32_t src, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                        uint8_t flags, uint16_t win, uint32_t mss_opt, uint32_t dlen) {
  if (flags & TH_RST) return;
  int l = find_listener(dport);
  if (l < 0 || (flags & TH_ACK) || !(flags & TH_SYN)) {
    if (flags & TH_ACK) {
      tcp_rst_reply(src, dport, sport, ack, 0, TH_RST);
    } else {
      uint32_t seglen = dlen + ((flags & TH_SYN) ? 1u : 0u) + ((flags & TH_FIN) ? 1u : 0u);
      tcp_rst_reply(src, dport, sport, 0, seq + seglen, TH_RST | TH_ACK);
    }
    return;
  }
  struct tcp_conn *c = tcp_new_conn(l, src, sport, dport);
  if (!c) return;
  c->state = TCP_SYN_RCVD;
  c->irs = seq;
  c->rcv_nxt = seq + 1; /* data on the SYN is not kept; the peer resends it */
  c->rcv_adv = c->rcv_nxt;
  c->iss = (uint32_t)net_random();
  c->snd_una = c->snd_nxt = c->snd_max = c->iss;
  c->snd_wnd = win;
  c->max_sndwnd = win;
  c->snd_wl1 = seq;
  c->snd_wl2 = c->iss;
  uint32_t mss = mss_opt ? max_u32(mss_opt, TCP_MIN_MSS) : TCP_DEFAULT_MSS;
  c->mss = (uint16_t)min_u32(mss, tcp_our_mss());
  c->cwnd = min_u32(10u * c->mss, max_u32(2u * c->mss, 14600u)); /* RFC 6928 */
  c->ssthresh = 65535;
  c->recover = c->iss;
  tcp_output(c); /* SYN-ACK */
}

/* Copies n bytes for sequence rcv_nxt + off into the receive ring. */
static void ring_write(struct tcp_conn *c, uint32_t off, const uint8_t *data, uint32_t n) {
  uint32_t pos = (c->rb_head + c->rb_len + off) % TCP_RCV;
  uint32_t first = min_u32(n, TCP_RCV - pos);
  memcpy(c->rbuf + pos, data, first);
  if (first < n) memcpy(c->rbuf, data + first, n - first);
}

/* Keeps an out-of-order segment [seq, seq + n), seq > rcv_nxt, already cut
 * to the window. Overlapping or touching ranges merge. */
static void ooo_insert(struct tcp_conn *c, uint32_t seq, const uint8_t *data, uint32_t n) {
  uint32_t start = seq, end = seq + n;
  uint32_t keep = 0;
  for (uint32_t i = 0; i < c->n_ooo; i++) {
    const struct tcp_range *r = &c->ooo[i];
    if (seq_gt(r->start, end) || seq_lt(r->end, start)) keep++;
  }
  if (keep + 1 > TCP_OOO_MAX) {
    net_count(NET_C_TCP_OOO_DROP);
    return;
  }
  struct tcp_range out[TCP_OOO_MAX];
  uint32_t k = 0;
  for (uint32_t i = 0; i < c->n_ooo; i++) {
    const struct tcp_range *r = &c->ooo[i];
    if (seq_gt(r->start, end) || seq_lt(r->end, start)) {
      out[k++] = *r;
    } else {
      if (seq_lt(r->start, start)) start = r->start;
      if (seq_gt(r->end, end)) end = r->end;
    }
  }
  out[k].start = start;
  out[k].end = end;
  k++;
  ring_write(c, seq - c->rcv_nxt, data, n);
  memcpy(c->ooo, out, sizeof(out[0]) * k);
  c->n_ooo = (uint8_t)k;
  net_count(NET_C_TCP_OOO);
}

/* Moves every range that now touches rcv_nxt into the readable data. */
static void ooo_absorb(struct tcp_conn *c) {
  int moved;
  do {
    moved = 0;
    for (uint32_t i = 0; i < c->n_ooo; i++) {
      struct tcp_range *r = &c->ooo[i];
      if (seq_gt(r->start, c->rcv_nxt)) continue;
      if (seq_gt(r->end, c->rcv_nxt)) {
        uint32_t adv = r->end - c->rcv_nxt;
        c->rb_len += adv;
        c->rcv_nxt = r->end;
      }
      c->ooo[i] = c->ooo[--c->n_ooo];
      moved = 1;
      break;
    }
  } while (moved);
}

/* Data and FIN of an acceptable segment (ESTABLISHED, FIN_WAIT_1/2). */
static void tcp_receive(struct tcp_conn *c, uint32_t seq, const uint8_t *data, uint32_t dlen,
                        uint32_t fin, uint64_t now) {
  if (c->accepted && !c->app && dlen > 0) {
    /* The application closed: nobody will read this. */
    tcp_send_rst(c);
    tcp_drop(c, 0);
    return;
  }
  /* Cut what we already have. */
  if (seq_lt(seq, c->rcv_nxt)) {
    uint32_t d = c->rcv_nxt - seq;
    if (d > dlen) { /* everything old, FIN included */
      d = dlen;
      fin = 0;
    }
    data += d;
    dlen -= d;
    seq += d;
  }
  /* Cut what does not fit the window. */
  uint32_t wnd = TCP_RCV - c->rb_len;
  uint32_t off = seq - c->rcv_nxt;
  int cut = 0;
  if (off > wnd) {
    cut = 1;
    dlen = 0;
    fin = 0;
  } else if (dlen > wnd - off) {
    cut = 1;
    dlen = wnd - off;
    fin = 0;
  }
  if (cut) c->ack_pending = 1; /* e.g. a zero-window probe: answer it */
  if (off > 0) {
    if (dlen > 0) ooo_insert(c, seq, data, dlen);
    tcp_send_ack(c); /* duplicate ACK at once: lets the peer fast-retransmit */
    return;
  }
  if (dlen > 0) {
    ring_write(c, 0, data, dlen);
    c->rb_len += dlen;
    c->rcv_nxt += dlen;
    c->ack_pending = 1;
    if (c->n_ooo) {
      ooo_absorb(c);
      tcp_send_ack(c); /* a hole was filled: tell the peer now */
    }
  }
  if (!fin || c->n_ooo || c->rcv_nxt != seq + dlen) return;
  c->rcv_nxt++;
  c->peer_fin = 1;
  c->ack_pending = 1;
  switch (c->state) {
    case TCP_ESTABLISHED: c->state = TCP_CLOSE_WAIT; break;
    case TCP_FIN_WAIT_1: c->state = TCP_CLOSING; break;
    case TCP_FIN_WAIT_2: tcp_time_wait(c, now); break;
    default: break;
  }
  tcp_send_ack(c);
}

static int in_window(uint32_t s, uint32_t start, uint32_t wnd) {
  return seq_ge(s, start) && seq_lt(s, start + wnd);
}

static void tcp_segment(struct tcp_conn *c, uint32_t seq, uint32_t ack, uint8_t flags,
                        uint16_t win, const uint8_t *data, uint32_t dlen) {
  uint64_t now = clock_ns();
  if (c->state == TCP_SYN_RCVD && (flags & TH_SYN) && !(flags & TH_ACK)) {
    if (seq == c->irs) { /* our SYN-ACK was lost: send it again */
      c->snd_nxt = c->iss;
      tcp_output(c);
    }
    return;
  }

  /* 1. Sequence number acceptable? */
  uint32_t fin = (flags & TH_FIN) ? 1u : 0u;
  uint32_t seglen = dlen + fin + ((flags & TH_SYN) ? 1u : 0u);
  uint32_t wnd = TCP_RCV - c->rb_len;
  int ok;
  if (seglen == 0) {
    ok = wnd == 0 ? seq == c->rcv_nxt : in_window(seq, c->rcv_nxt, wnd);
  } else if (wnd == 0) {
    ok = seq == c->rcv_nxt; /* take its ACK; the data is cut below */
  } else {
    ok = in_window(seq, c->rcv_nxt, wnd) || in_window(seq + seglen - 1, c->rcv_nxt, wnd);
  }
  if (!ok) {
    net_count(NET_C_TCP_OOW);
    if (!(flags & TH_RST)) {
      if (c->state == TCP_TIME_WAIT && fin) c->t_wait = now + 2 * TCP_MSL_NS;
      tcp_send_ack(c);
    }
    return;
  }

  /* 2. RST: only at exactly rcv_nxt; elsewhere in the window, challenge. */
  if (flags & TH_RST) {
    if (seq != c->rcv_nxt) {
      tcp_send_ack(c);
      return;
    }
    if (c->state != TCP_SYN_RCVD) net_count(NET_C_TCP_RESETS);
    c->state = TCP_CLOSED; /* no RST back */
    tcp_drop(c, NET_ERESET);
    return;
  }

  /* 3. SYN in a synchronized state: challenge ACK. */
  if (flags & TH_SYN) {
    tcp_send_ack(c);
    return;
  }
  if (!(flags & TH_ACK)) return;

  /* 4. ACK. */
  c->probes = 0;
  int syn_acked = 0;
  if (c->state == TCP_SYN_RCVD) {
    if (seq_le(ack, c->snd_una) || seq_gt(ack, c->snd_max)) {
      tcp_rst_reply(c->raddr, c->lport, c->rport, ack, 0, TH_RST);
      return;
    }
    c->state = TCP_ESTABLISHED;
    c->snd_wnd = win;
    c->snd_wl1 = seq;
    c->snd_wl2 = ack;
    c->max_sndwnd = max_u32(c->max_sndwnd, win);
    c->retries = 0;
    syn_acked = 1;
  }
  uint32_t limit = c->snd_max;
  if (c->probe_byte && seq_gt(c->snd_una + 1, limit)) limit = c->snd_una + 1;
  if (seq_gt(ack, limit)) { /* acks something never sent */
    tcp_send_ack(c);
    return;
  }
  if (seq_gt(ack, c->snd_una)) {
    uint32_t acked = ack - c->snd_una - (uint32_t)syn_acked;
    uint32_t data_acked = min_u32(acked, c->sb_len);
    c->sb_head = (c->sb_head + data_acked) % TCP_SND;
    c->sb_len -= data_acked;
    if (c->fin_queued && seq_gt(ack, c->fin_seq)) c->fin_acked = 1;
    c->snd_una = ack;
    if (seq_gt(ack, c->snd_max)) c->snd_max = ack;
    if (seq_lt(c->snd_nxt, c->snd_una)) c->snd_nxt = c->snd_una;
    c->probe_byte = 0;
    if (c->rtt_active && seq_gt(ack, c->rtt_seq)) {
      c->rtt_active = 0;
      tcp_rtt_sample(c, now - c->rtt_start);
    }
    c->retries = 0;
    c->backoff = 0;
    c->dupacks = 0;
    c->t_rtx = 0; /* restarted by tcp_output while data is still in flight */
    if (c->in_recovery) {
      if (seq_ge(ack, c->recover)) { /* everything up to the loss point: done */
        c->in_recovery = 0;
        c->cwnd = c->ssthresh;
      } else { /* partial ACK: the next hole is lost too */
        c->cwnd = c->cwnd > acked ? c->cwnd - acked + c->mss : c->mss;
        tcp_retransmit_first(c, now);
      }
    } else if (acked > 0) {
      /* Past the last loss point: keep recover just behind snd_una, so the
       * comparison stays meaningful however far the stream goes (mod 2^32). */
      if (seq_gt(ack, c->recover)) c->recover = ack - 1;
      if (c->cwnd < c->ssthresh) {
        c->cwnd += min_u32(acked, c->mss);
      } else {
        c->cwnd += max_u32(1, (uint32_t)c->mss * c->mss / c->cwnd);
      }
      if (c->cwnd > TCP_CWND_MAX) c->cwnd = TCP_CWND_MAX;
    }
  } else if (ack == c->snd_una && dlen == 0 && !fin && win == c->snd_wnd &&
             c->snd_nxt != c->snd_una) {
    if (++c->dupacks == 3) {
      tcp_fast_retransmit(c, now);
    } else if (c->dupacks > 3 && c->in_recovery && c->cwnd < TCP_CWND_MAX) {
      c->cwnd += c->mss; /* a segment left the network */
    }
  }
  if (seq_ge(ack, c->snd_una) &&
      (seq_lt(c->snd_wl1, seq) || (c->snd_wl1 == seq && seq_le(c->snd_wl2, ack)))) {
    c->snd_wnd = win;
    c->snd_wl1 = seq;
    c->snd_wl2 = ack;
    c->max_sndwnd = max_u32(c->max_sndwnd, win);
  }
  if (c->fin_acked) {
    switch (c->state) {
      case TCP_FIN_WAIT_1:
        c->state = TCP_FIN_WAIT_2;
        c->t_wait = now + TCP_FIN_WAIT_2_NS;
        break;
      case TCP_CLOSING: tcp_time_wait(c, now); break;
      case TCP_LAST_ACK: tcp_drop(c, 0); return;
      default: break;
    }
  }

  /* 5. Data and FIN. After the peer's FIN nothing more is taken. */
  if ((dlen || fin) && (c->state == TCP_ESTABLISHED || c->state == TCP_FIN_WAIT_1 ||
                        c->state == TCP_FIN_WAIT_2)) {
    tcp_receive(c, seq, data, dlen, fin, now);
    if (c->state == TCP_CLOSED) return;
  }
  tcp_output(c);
}

void tcp_input(uint32_t src, uint32_t dst, const uint8_t *p, uint32_t len) {
  if (len < TCP_HLEN) {
    net_count(NET_C_TCP_BAD_HDR);
    return;
  }
  uint16_t sport = rd16(p), dport = rd16(p + 2);
  uint32_t hl = (uint32_t)(p[12] >> 4) * 4;
  if (hl < TCP_HLEN || hl > len || sport == 0 || dport == 0) {
    net_count(NET_C_TCP_BAD_HDR);
    return;
  }
  if (csum_fold(csum_add(csum_pseudo(src, dst, IP_PROTO_TCP, len), p, len)) != 0) {
    net_count(NET_C_TCP_BAD_CSUM);
    return;
  }
  uint32_t mss_opt;
  if (parse_options(p + TCP_HLEN, hl - TCP_HLEN, &mss_opt) < 0) {
    net_count(NET_C_TCP_BAD_OPT);
    return;
  }
  uint8_t flags = p[13] & 0x3f; /* ECE/CWR are ignored */
  if (((flags & TH_SYN) && (flags & (TH_FIN | TH_RST))) ||
      !(flags & (TH_SYN | TH_ACK | TH_RST))) {
    net_count(NET_C_TCP_BAD_FLAGS);
    return;
  }
  uint32_t seq = rd32(p + 4), ack = rd32(p + 8);
  uint16_t win = rd16(p + 14);
  const uint8_t *data = p + hl;
  uint32_t dlen = len - hl;

  struct tcp_conn *c = tcp_lookup(src, sport, dport);
  if (c && c->state == TCP_TIME_WAIT && (flags & TH_SYN) && !(flags & TH_ACK) &&
      seq_gt(seq, c->rcv_nxt)) {
    tcp_free(c); /* a new incarnation may reuse the pair (RFC 1122 4.2.2.13) */
    c = 0;
  }
  if (!c) {
    tcp_no_conn(src, sport, dport, seq, ack, flags, win, mss_opt, dlen);
    return;
  }
  tcp_segment(c, seq, ack, flags, win, data, dlen);
}
