/*
 * Console over xencons_interface at KEMARI_CONSOLE_GPA.
 *
 * The guest produces out[] (index & 2047) and advances out_prod; the backend
 * consumes out[out_cons..out_prod) and advances out_cons. The guest keeps no
 * private state: out_prod is read back from the page (only the guest writes
 * it), so the ring stays consistent even after the VMM resets out_cons.
 *
 * While the ring is full the writer sleeps in HC_WAIT with a short (1 ms)
 * deadline, so it makes progress even if the backend does not bump
 * events->seq when it advances out_cons.
 */
#include "kemari.h"

#define CONSOLE_POLL_NS (1 * NS_PER_MS)

void console_write(const void *buf, size_t len) {
  struct xencons_interface *con = KEMARI_CONSOLE;
  const char *s = buf;
  while (len > 0) {
    uint32_t seen = event_seq(); /* before looking at the ring: no lost wakeup */
    uint32_t prod = __atomic_load_n(&con->out_prod, __ATOMIC_SEQ_CST);
    uint32_t cons = __atomic_load_n(&con->out_cons, __ATOMIC_SEQ_CST);
    uint32_t used = prod - cons;
    /* used > size only after a deliberate overrun (badreq) until the backend
     * resets out_cons; treat it as full and wait. */
    uint32_t space = used <= XENCONS_OUT_SIZE ? XENCONS_OUT_SIZE - used : 0;
    if (space == 0) {
      doorbell_console();
      hc_wait(clock_ns() + CONSOLE_POLL_NS, seen);
      continue;
    }
    uint32_t n = len < space ? (uint32_t)len : space;
    for (uint32_t i = 0; i < n; i++) con->out[(prod + i) & (XENCONS_OUT_SIZE - 1)] = s[i];
    /* seq_cst store: the bytes above are visible before the new index. */
    __atomic_store_n(&con->out_prod, prod + n, __ATOMIC_SEQ_CST);
    doorbell_console();
    s += n;
    len -= n;
  }
}

void console_puts(const char *s) { console_write(s, strlen(s)); }

int console_flush(uint64_t timeout_ns) {
  struct xencons_interface *con = KEMARI_CONSOLE;
  uint64_t deadline = timeout_ns ? clock_ns() + timeout_ns : UINT64_MAX;
  int rang = 0;
  for (;;) {
    uint32_t seen = event_seq();
    uint32_t prod = __atomic_load_n(&con->out_prod, __ATOMIC_SEQ_CST);
    uint32_t cons = __atomic_load_n(&con->out_cons, __ATOMIC_SEQ_CST);
    if (prod == cons) return 1;
    uint64_t now = clock_ns();
    if (now >= deadline) return 0;
    if (!rang) {
      doorbell_console();
      rang = 1;
    }
    uint64_t until = now + CONSOLE_POLL_NS;
    hc_wait(until < deadline ? until : deadline, seen);
  }
}

size_t console_read(void *buf, size_t len) {
  struct xencons_interface *con = KEMARI_CONSOLE;
  char *d = buf;
  uint32_t cons = __atomic_load_n(&con->in_cons, __ATOMIC_SEQ_CST);
  uint32_t prod = __atomic_load_n(&con->in_prod, __ATOMIC_SEQ_CST);
  uint32_t avail = prod - cons;
  if (avail > XENCONS_IN_SIZE) {
    /* Backend overran in[]: drop everything rather than read garbage. */
    __atomic_store_n(&con->in_cons, prod, __ATOMIC_SEQ_CST);
    return 0;
  }
  size_t n = avail < len ? avail : len;
  for (size_t i = 0; i < n; i++) d[i] = con->in[(cons + i) & (XENCONS_IN_SIZE - 1)];
  if (n) {
    __atomic_store_n(&con->in_cons, cons + (uint32_t)n, __ATOMIC_SEQ_CST);
    doorbell_console();
  }
  return n;
}
