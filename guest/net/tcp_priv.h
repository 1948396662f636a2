/*
 * TCP internals shared by tcp.c (connections, API, output, timers) and
 * tcp_input.c (segment arrival). See guest/net/README.md for the design.
 */
#ifndef KEMARI_TCP_PRIV_H
#define KEMARI_TCP_PRIV_H

#include "net_priv.h"

#define TCP_HLEN 20u
#define TH_FIN 0x01u
#define TH_SYN 0x02u
#define TH_RST 0x04u
#define TH_PSH 0x08u
#define TH_ACK 0x10u
#define TH_URG 0x20u

#define TCP_RCV NET_TCP_RCVBUF
#define TCP_SND NET_TCP_SNDBUF
_Static_assert(TCP_RCV <= 65535 && TCP_SND >= 1, "receive buffer must fit an unscaled window");

#define TCP_OOO_MAX 4                   /* out-of-order ranges kept per connection */
#define TCP_DEFAULT_MSS 536u            /* peer sent no MSS option */
#define TCP_MIN_MSS 64u                 /* floor for a peer's MSS option */
#define TCP_RTO_INIT (1ull * NS_PER_SEC)
#define TCP_RTO_MIN (200ull * NS_PER_MS)
#define TCP_RTO_MAX (60ull * NS_PER_SEC)
#define TCP_MSL_NS (2ull * NS_PER_SEC)  /* TIME_WAIT lasts 2 * MSL */
#define TCP_FIN_WAIT_2_NS (60ull * NS_PER_SEC)
#define TCP_MAX_RETRIES 15              /* retransmission timeouts before giving up */
#define TCP_SYN_RETRIES 5               /* SYN-ACK retransmissions */
#define TCP_MAX_PROBES 15               /* unanswered zero-window probes */
#define TCP_CWND_MAX (4u * 65535u)

enum tcp_state {
  TCP_CLOSED = 0,
  TCP_SYN_RCVD,
  TCP_ESTABLISHED,
  TCP_FIN_WAIT_1,
  TCP_FIN_WAIT_2,
  TCP_CLOSE_WAIT,
  TCP_CLOSING,
  TCP_LAST_ACK,
  TCP_TIME_WAIT,
};

struct tcp_range {
  uint32_t start, end; /* sequence numbers [start, end) */
};

/*
 * A slot is free when state == TCP_CLOSED and app == 0. The send buffer is a
 * ring holding the bytes [snd_una, snd_una + sb_len) (after the SYN); the
 * receive buffer a ring holding rb_len in-order bytes not yet read, followed
 * by free space in which out-of-order data is stored at its final position:
 * sequence s lives at (rb_head + rb_len + (s - rcv_nxt)) mod TCP_RCV.
 */
struct tcp_conn {
  uint8_t state;
  uint8_t app;         /* the application holds the handle */
  uint8_t accepted;    /* handed out by tcp_accept (app == 0 then means closed) */
  uint8_t fin_queued;  /* tcp_close: our FIN has sequence fin_seq */
  uint8_t fin_acked;
  uint8_t peer_fin;    /* the peer's FIN was received in order */
  uint8_t ack_pending; /* a pure ACK is due (sent at the end of net_poll) */
  uint8_t dupacks;
  uint8_t probe_byte;  /* a zero-window probe byte at snd_una may be acked */
  uint8_t rtt_active;
  uint8_t backoff;     /* RTO doubling count */
  uint8_t persist_shift;
  uint8_t n_ooo;
  uint8_t in_recovery; /* fast recovery until snd_una reaches recover */
  int8_t listener;
  int err; /* NET_ERESET / NET_ETIMEDOUT for the application */
  uint32_t raddr;
  uint16_t rport, lport;
  uint16_t mss; /* largest segment we send */
  uint64_t order; /* creation order, for accept */

  /* send side */
  uint32_t iss, snd_una, snd_nxt, snd_max, fin_seq;
  uint32_t snd_wnd, snd_wl1, snd_wl2, max_sndwnd;
  uint32_t cwnd, ssthresh, recover;
  uint8_t *sbuf;
  uint32_t sb_head, sb_len;

  /* receive side */
  uint32_t irs, rcv_nxt, rcv_adv; /* rcv_adv: right edge advertised so far */
  uint8_t *rbuf;
  uint32_t rb_head, rb_len;
  struct tcp_range ooo[TCP_OOO_MAX];

  /* timers (clock_ns deadlines, 0 = off) and round-trip estimation */
  uint64_t t_rtx, t_persist, t_wait;
  uint32_t retries, probes;
  uint64_t srtt, rttvar, rto_base;
  uint32_t rtt_seq;
  uint64_t rtt_start;
};

struct tcp_listener {
  uint8_t used;
  uint16_t port;
  uint32_t backlog;
};

extern struct tcp_conn tcp_conns[NET_TCP_CONNS];
extern struct tcp_listener tcp_listeners[NET_TCP_LISTENERS];

static inline int tcp_can_send_data(const struct tcp_conn *c) {
  return c->state == TCP_ESTABLISHED || c->state == TCP_CLOSE_WAIT ||
         c->state == TCP_FIN_WAIT_1 || c->state == TCP_CLOSING || c->state == TCP_LAST_ACK;
}

/* tcp.c */
struct tcp_conn *tcp_new_conn(int listener, uint32_t raddr, uint16_t rport, uint16_t lport);
void tcp_free(struct tcp_conn *c);
void tcp_drop(struct tcp_conn *c, int err); /* to CLOSED; freed unless the app holds it */
void tcp_time_wait(struct tcp_conn *c, uint64_t now);
void tcp_output(struct tcp_conn *c); /* sends what the windows allow, updates timers */
void tcp_send_ack(struct tcp_conn *c);
void tcp_send_rst(struct tcp_conn *c);
void tcp_rst_reply(uint32_t raddr, uint16_t lport, uint16_t rport, uint32_t seq, uint32_t ack,
                   uint8_t flags);
void tcp_fast_retransmit(struct tcp_conn *c, uint64_t now);
void tcp_retransmit_first(struct tcp_conn *c, uint64_t now);
void tcp_rtt_sample(struct tcp_conn *c, uint64_t rtt);
uint64_t tcp_rto(const struct tcp_conn *c); /* rto_base with backoff, clamped */
uint32_t tcp_our_mss(void);

#endif
