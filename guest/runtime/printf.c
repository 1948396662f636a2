/*
 * A small printf: %d %i %u %x %X %c %s %p %%, flags '-' and '0', width
 * (digits or '*'), precision for %s, length modifiers h/hh/l/ll/z/j/t.
 * l, ll, z, j and t all mean 64 bits; h and hh are read as int.
 *
 * printf formats into a 256-byte staging buffer that is written to the
 * console ring whenever it fills and at the end, so one printf call normally
 * costs one console doorbell.
 */
#include "kemari.h"

struct sink {
  char *buf;
  size_t cap;   /* buffer size */
  size_t pos;   /* bytes in buf */
  size_t total; /* bytes produced (what printf/snprintf return) */
  int console;  /* 1: flush buf to the console when full; 0: snprintf */
};

static void put(struct sink *s, char c) {
  s->total++;
  if (s->console) {
    s->buf[s->pos++] = c;
    if (s->pos == s->cap) {
      console_write(s->buf, s->pos);
      s->pos = 0;
    }
  } else if (s->pos + 1 < s->cap) {
    s->buf[s->pos++] = c;
  }
}

static void pad(struct sink *s, char c, int n) {
  while (n-- > 0) put(s, c);
}

/* Emits prefix + digits with width/zero/left handling. */
static void emit_number(struct sink *s, uint64_t v, unsigned base, int upper, int negative,
                        int width, int zero, int left, const char *prefix) {
  char tmp[24];
  int n = 0;
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    tmp[n++] = digits[v % base];
    v /= base;
  } while (v);
  int plen = (int)strlen(prefix) + (negative ? 1 : 0);
  int fill = width - n - plen;
  if (!left && !zero) pad(s, ' ', fill);
  if (negative) put(s, '-');
  for (const char *p = prefix; *p; p++) put(s, *p);
  if (!left && zero) pad(s, '0', fill);
  while (n) put(s, tmp[--n]);
  if (left) pad(s, ' ', fill);
}

static void format(struct sink *s, const char *fmt, va_list ap) {
  for (const char *f = fmt; *f; f++) {
    if (*f != '%') {
      put(s, *f);
      continue;
    }
    f++;
    int left = 0, zero = 0, width = 0, prec = -1, longs = 0;
    for (;; f++) {
      if (*f == '-') left = 1;
      else if (*f == '0') zero = 1;
      else if (*f == ' ' || *f == '+' || *f == '#') continue; /* accepted, ignored */
      else break;
    }
    if (*f == '*') {
      width = va_arg(ap, int);
      if (width < 0) {
        left = 1;
        width = -width;
      }
      f++;
    } else {
      while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
    }
    if (*f == '.') {
      f++;
      prec = 0;
      if (*f == '*') {
        prec = va_arg(ap, int);
        f++;
      } else {
        while (*f >= '0' && *f <= '9') prec = prec * 10 + (*f++ - '0');
      }
    }
    for (;; f++) {
      if (*f == 'l' || *f == 'z' || *f == 'j' || *f == 't') longs = 1;
      else if (*f == 'h') continue;
      else break;
    }
    if (left) zero = 0;
    switch (*f) {
    case 'd':
    case 'i': {
      int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
      uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
      emit_number(s, mag, 10, 0, v < 0, width, zero, left, "");
      break;
    }
    case 'u':
    case 'x':
    case 'X': {
      uint64_t v = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
      emit_number(s, v, *f == 'u' ? 10 : 16, *f == 'X', 0, width, zero, left, "");
      break;
    }
    case 'p': {
      uint64_t v = (uint64_t)(uintptr_t)va_arg(ap, void *);
      emit_number(s, v, 16, 0, 0, width, zero, left, "0x");
      break;
    }
    case 'c': {
      char c = (char)va_arg(ap, int);
      if (!left) pad(s, ' ', width - 1);
      put(s, c);
      if (left) pad(s, ' ', width - 1);
      break;
    }
    case 's': {
      const char *str = va_arg(ap, const char *);
      if (!str) str = "(null)";
      int n = 0;
      while (str[n] && (prec < 0 || n < prec)) n++;
      if (!left) pad(s, ' ', width - n);
      for (int i = 0; i < n; i++) put(s, str[i]);
      if (left) pad(s, ' ', width - n);
      break;
    }
    case '%':
      put(s, '%');
      break;
    case 0:
      return; /* lone '%' at the end */
    default:  /* unknown conversion: print it verbatim */
      put(s, '%');
      put(s, *f);
      break;
    }
  }
}

int vprintf(const char *fmt, va_list ap) {
  char buf[256];
  struct sink s = {buf, sizeof buf, 0, 0, 1};
  format(&s, fmt, ap);
  if (s.pos) console_write(buf, s.pos);
  return (int)s.total;
}

int printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vprintf(fmt, ap);
  va_end(ap);
  return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap) {
  struct sink s = {buf, size, 0, 0, 0};
  format(&s, fmt, ap);
  if (size) buf[s.pos] = 0;
  return (int)s.total;
}

int snprintf(char *buf, size_t size, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

/* ---- panic ---- */

static char panic_msg[512];
static int panicking;

void panic(const char *fmt, ...) {
  if (!panicking) {
    panicking = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(panic_msg, sizeof panic_msg, fmt, ap);
    va_end(ap);
    /* Give the backend a moment to show what the program printed before
     * the panic. Bounded, and skipped if the console ring is inconsistent
     * (then waiting could not help). */
    struct xencons_interface *con = KEMARI_CONSOLE;
    uint32_t used = __atomic_load_n(&con->out_prod, __ATOMIC_SEQ_CST) -
                    __atomic_load_n(&con->out_cons, __ATOMIC_SEQ_CST);
    if (used <= XENCONS_OUT_SIZE) console_flush(500 * NS_PER_MS);
  }
  /* A panic inside panic (impossible today) reports the first message. */
  hc_panic(panic_msg, strlen(panic_msg));
}
