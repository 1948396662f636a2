/*
 * Program arguments: a NUL-terminated "key=value key=value" string at
 * KEMARI_BOOT_GPA + KEMARI_ARGS_OFFSET (at most KEMARI_ARGS_MAX bytes).
 * Tokens are separated by spaces or tabs; a token without '=' is a key with
 * the value "". When a key repeats, the last occurrence wins.
 */
#include "kemari.h"

#define MAX_ARGS 64

static char raw[KEMARI_ARGS_MAX];   /* the string as passed */
static char split[KEMARI_ARGS_MAX]; /* copy with NULs after keys and values */
static const char *keys[MAX_ARGS];
static const char *values[MAX_ARGS];
static int nargs;

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

void kemari_args_init(void) {
  const volatile char *src = (const volatile char *)(uintptr_t)(KEMARI_BOOT_GPA +
                                                                KEMARI_ARGS_OFFSET);
  size_t n = 0;
  while (n < KEMARI_ARGS_MAX - 1 && src[n] != 0) {
    raw[n] = src[n];
    n++;
  }
  raw[n] = 0;
  memcpy(split, raw, n + 1);

  char *p = split;
  nargs = 0;
  for (;;) {
    while (is_space(*p)) p++;
    if (*p == 0) break;
    if (nargs == MAX_ARGS) panic("too many args (max %d)", MAX_ARGS);
    char *key = p;
    while (*p && !is_space(*p) && *p != '=') p++;
    char *value = p; /* "" for a bare key */
    if (*p == '=') {
      *p++ = 0;
      value = p;
      while (*p && !is_space(*p)) p++;
    }
    int last = *p == 0;
    *p = 0;
    keys[nargs] = key;
    values[nargs] = value;
    nargs++;
    if (last) break;
    p++;
  }
}

const char *args_raw(void) { return raw; }

static int find(const char *key) {
  for (int i = nargs - 1; i >= 0; i--) {
    if (strcmp(keys[i], key) == 0) return i;
  }
  return -1;
}

int arg_has(const char *key) { return find(key) >= 0; }

const char *arg_str(const char *key, const char *def) {
  int i = find(key);
  return i >= 0 ? values[i] : def;
}

uint64_t arg_u64(const char *key, uint64_t def) {
  const char *s = arg_str(key, 0);
  if (!s) return def;
  const char *p = s;
  unsigned base = 10;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    base = 16;
    p += 2;
  }
  if (*p == 0) panic("arg %s: bad number '%s'", key, s);
  uint64_t v = 0;
  for (; *p; p++) {
    unsigned d;
    if (*p >= '0' && *p <= '9') d = (unsigned)(*p - '0');
    else if (base == 16 && *p >= 'a' && *p <= 'f') d = (unsigned)(*p - 'a' + 10);
    else if (base == 16 && *p >= 'A' && *p <= 'F') d = (unsigned)(*p - 'A' + 10);
    else panic("arg %s: bad number '%s'", key, s);
    if (v > (UINT64_MAX - d) / base) panic("arg %s: number too large '%s'", key, s);
    v = v * base + d;
  }
  return v;
}
