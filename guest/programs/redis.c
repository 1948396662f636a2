/*
 * redis: a Redis-protocol key/value server on the guest TCP/IP stack, with
 * an append-only log on the PV disk that is replayed at boot.
 *
 * Args:
 *   ip=A.B.C.D/N    our address and subnet                          (required)
 *   gw=A.B.C.D      default gateway                                 (optional)
 *   port=P          the TCP port                                    (default 6379)
 *   sync=each|batch log sync policy (below)                         (default batch)
 *   status=S        seconds between console status lines; 0 = none (default 0)
 *
 * Protocol: RESP2 requests (`*N\r\n$len\r\n...`) and inline commands (a line
 * of words, with "..." and '...' quoting as redis-cli sends), pipelined
 * freely: a read may carry many commands, and a command may span reads.
 * Commands: PING ECHO SET GET INCR INCRBY DECR DECRBY DEL EXISTS MSET MGET
 * DBSIZE FLUSHALL FLUSHDB, and what clients send around them: CONFIG GET,
 * CONFIG SET/RESETSTAT, INFO, COMMAND, CLIENT, SELECT 0, QUIT. Anything
 * else gets `-ERR unknown command '<name>', with args beginning with: ...`.
 * A malformed request gets `-ERR Protocol error: ...` and the connection is
 * closed (after that reply), as Redis does.
 *
 * Limits: keys up to 1 KiB and values up to 32 KiB (longer ones get an error
 * reply; a bulk string over 36 KiB is a protocol error), a command up to
 * 64 KiB, up to 4096 arguments, NET_TCP_CONNS (128) connections. Data lives in
 * a chained hash table in guest memory; when it is full, writes get -OOM.
 *
 * Durability: every write (SET, INCR & co, DEL, MSET, FLUSHALL) appends a
 * checksummed record to the disk log, and its reply is queued only after the
 * record was written and flushed:
 *   sync=each   WRITE + FLUSH_DISKCACHE before the reply of each write;
 *   sync=batch  every record of one event-loop iteration is written, then one
 *               FLUSH_DISKCACHE, then the replies of that iteration go out
 *               (group commit).
 * Replies of reads in the same iteration wait too, so no client ever sees
 * data that is not yet durable.
 *
 * Disk layout (512-byte sectors, little endian):
 *   sector 0: superblock  @0 u32 magic "KRSB" (0x4253524b), @4 u32 version 1,
 *             @8 u64 gen, @16 u32 region (0/1), @20 u32 reserved,
 *             @24 u64 region_sectors, @508 u32 crc32 of bytes 0..507.
 *   region r = sectors [1 + r * R, 1 + (r + 1) * R), R = (disk - 1) / 2.
 *   The active region holds a byte stream of records from its first byte:
 *     @0 u32 magic "KRDR" (0x5244524b)  @4 u32 len (whole record)
 *     @8 u64 seq (1, 2, ... in this gen) @16 u64 gen
 *     @24 u16 op (1 = SET pairs, 2 = DEL keys, 3 = FLUSHALL) @26 u16 0
 *     @28 u32 count
 *     @32 items: SET: u32 klen, u32 vlen, key, value; DEL: u32 klen, key
 *     @len-4 u32 crc32 of bytes 0..len-5
 *   INCR and friends are logged as SET of the new value. Replay reads records
 *   until the first one whose magic, length, seq, gen, contents or crc is
 *   wrong (a torn or never-written tail), applies them, then zeroes the rest
 *   of that sector so stale bytes can never come back as records.
 *   When a write does not fit the active region, the log is compacted: a
 *   snapshot of every key (SET records, gen + 1) is written to the other
 *   region and flushed, then the superblock is switched and flushed. A crash
 *   in between leaves the old region and superblock in force. When the live
 *   data passes 3/4 of a region, writes get `-ERR disk log full`; DEL and
 *   FLUSHALL still work (their compaction writes the smaller key space).
 *
 * Memory: the stack takes ~10 MiB, the connection buffers 16 MiB, the log,
 * reply and transmit buffers ~2.5 MiB; the key space gets the rest of the
 * heap but 1 MiB (CONFIG GET maxmemory): 0.5 MiB in a 32 MiB VM, about
 * 96 MiB in the 128 MiB VMs of the tests and the demo.
 *
 * Network: the replies of one event-loop iteration are sent after its log
 * flush, and the frames the stack produces are posted to the NIC together at
 * the end of the iteration; a pure ACK that a later frame of the same
 * connection in that batch supersedes is dropped (the ACK rides on the
 * reply). Under kemari each posted frame is an output that needs a
 * checkpoint, so this keeps it to about one checkpoint per iteration.
 * INFO reports the log (kemari_log_*), idle time (kemari_idle_ms) and merged
 * ACKs (kemari_acks_merged) besides the usual fields.
 *
 * Console:
 *   redis: log gen <g> region <r>: replayed <n> records, <k> keys in <ms> ms
 *   redis: new log on <sectors> sectors (gen <g>)    (blank or foreign disk)
 *   redis: no disk: writes are kept in memory only
 *   redis: ip <ip> mac <mac> port <p> sync=<each|batch> ready
 *   redis: status conns=.. cmds=.. keys=.. writes=.. flushes=.. perr=..
 *   redis: log compacted: gen <g> region <r>, <k> keys in <bytes> bytes
 * It returns 2 only when the args are unusable or there is no NIC.
 *
 * The same file builds for the Linux host harness (-DKEMARI_NET_HOST; see
 * tests/redis/), where the disk is a file.
 */
#include "net.h"

#define DEFAULT_PORT 6379
#define BACKLOG 128
#define MAX_CONNS NET_TCP_CONNS
#define IN_BUF (64u * 1024u)
#define OUT_BUF (64u * 1024u)
#define MAX_ARGS 4096
#define MAX_KEY 1024u
#define MAX_VALUE (32u * 1024u)
#define MAX_BULK (MAX_VALUE + 4096u)
#define LINE_MAX_LEN 64u /* "*<count>\r\n" / "$<len>\r\n" lines */

/* ====================================================================== */
/* Small helpers                                                          */
/* ====================================================================== */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Case-insensitive compare of a counted string with a C string. */
static int eq_nocase(const uint8_t *s, uint32_t n, const char *lit) {
  uint32_t i = 0;
  for (; i < n; i++) {
    if (lit[i] == 0 || lower(s[i]) != lower((uint8_t)lit[i])) return 0;
  }
  return lit[i] == 0;
}

/* Strict int64 parse (no spaces, no '+', no leading zeros, no "-0"). */
static int parse_i64(const uint8_t *s, uint32_t n, int64_t *out) {
  if (n == 0 || n > 20) return 0;
  uint32_t i = 0;
  int neg = 0;
  if (s[0] == '-') {
    neg = 1;
    i = 1;
    if (n == 1) return 0;
  }
  if (s[i] == '0' && (n - i > 1 || neg)) return 0;
  uint64_t v = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    uint64_t d = (uint64_t)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return 0;
    v = v * 10 + d;
  }
  if (neg) {
    if (v > (uint64_t)INT64_MAX + 1) return 0;
    *out = (int64_t)(0 - v);
  } else {
    if (v > (uint64_t)INT64_MAX) return 0;
    *out = (int64_t)v;
  }
  return 1;
}

/* Decimal of v into buf (>= 21 bytes); returns the length. */
static uint32_t fmt_i64(char *buf, int64_t v) {
  char tmp[24];
  uint32_t n = 0;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  uint32_t len = 0;
  if (v < 0) buf[len++] = '-';
  while (n) buf[len++] = tmp[--n];
  return len;
}

/* Case-insensitive glob match ('*', '?'), iterative, O(n*m). */
static int glob_match(const uint8_t *p, uint32_t pn, const char *s) {
  uint32_t sn = (uint32_t)strlen(s), pi = 0, si = 0;
  uint32_t star = UINT32_MAX, mark = 0;
  while (si < sn) {
    if (pi < pn && (p[pi] == '?' || lower(p[pi]) == lower((uint8_t)s[si]))) {
      pi++;
      si++;
    } else if (pi < pn && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != UINT32_MAX) {
      pi = star + 1;
      si = ++mark;
    } else {
      return 0;
    }
  }
  while (pi < pn && p[pi] == '*') pi++;
  return pi == pn;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t get64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* ====================================================================== */
/* Memory: power-of-two size classes over one arena, with free lists      */
/* ====================================================================== */

#define MIN_CLASS 5  /* 32 bytes */
#define MAX_CLASS 24 /* 16 MiB */

static uint8_t *arena_top, *arena_end;
static uint64_t arena_bytes;
static void *free_list[MAX_CLASS + 1];
static uint64_t free_count[MAX_CLASS + 1];
static uint64_t mem_used; /* bytes handed out (whole classes) */

static int size_class(uint64_t n) {
  int c = MIN_CLASS;
  while (c <= MAX_CLASS && ((uint64_t)1 << c) < n) c++;
  return c; /* MAX_CLASS + 1 when too big */
}

static void *mem_alloc_class(int c) {
  if (c > MAX_CLASS) return 0;
  void *p = free_list[c];
  if (p) {
    free_list[c] = *(void **)p;
    free_count[c]--;
  } else {
    uint64_t sz = (uint64_t)1 << c;
    if ((uint64_t)(arena_end - arena_top) < sz) return 0;
    p = arena_top;
    arena_top += sz;
  }
  mem_used += (uint64_t)1 << c;
  return p;
}

static void mem_free_class(void *p, int c) {
  *(void **)p = free_list[c];
  free_list[c] = p;
  free_count[c]++;
  mem_used -= (uint64_t)1 << c;
}

/* Whether allocations of need[c] blocks of every class c would succeed. */
static int mem_can_alloc(const uint32_t *need) {
  uint64_t bump = 0;
  for (int c = MIN_CLASS; c <= MAX_CLASS; c++) {
    if (need[c] > free_count[c]) bump += (uint64_t)(need[c] - free_count[c]) << c;
  }
  return bump <= (uint64_t)(arena_end - arena_top);
}

/* ====================================================================== */
/* The key space: chained hash table                                      */
/* ====================================================================== */

struct entry {
  struct entry *next;
  uint64_t hash;
  uint32_t klen, vlen;
  uint8_t cls;
  uint8_t data[]; /* key, then value */
};
#define ENTRY_HDR (__builtin_offsetof(struct entry, data))
#define INIT_BUCKETS 1024u

static struct entry **buckets;
static uint64_t nbuckets; /* power of two */
static int buckets_cls;
static uint64_t nkeys;
static uint64_t db_bytes; /* sum of key + value lengths */
static uint64_t hash_seed;

static uint64_t hash_key(const uint8_t *k, uint32_t n) {
  uint64_t h = 0xcbf29ce484222325ull ^ hash_seed;
  for (uint32_t i = 0; i < n; i++) {
    h ^= k[i];
    h *= 0x100000001b3ull;
  }
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return h;
}

static void db_init(void) {
  buckets_cls = size_class(INIT_BUCKETS * sizeof(struct entry *));
  buckets = mem_alloc_class(buckets_cls);
  if (!buckets) panic("redis: no memory for the hash table");
  nbuckets = INIT_BUCKETS;
  memset(buckets, 0, nbuckets * sizeof(struct entry *));
}

static struct entry *db_find(const uint8_t *k, uint32_t n) {
  uint64_t h = hash_key(k, n);
  for (struct entry *e = buckets[h & (nbuckets - 1)]; e; e = e->next) {
    if (e->hash == h && e->klen == n && memcmp(e->data, k, n) == 0) return e;
  }
  return 0;
}

static void db_grow(void) {
  uint64_t n2 = nbuckets * 2;
  int c2 = size_class(n2 * sizeof(struct entry *));
  struct entry **b2 = mem_alloc_class(c2);
  if (!b2) return; /* longer chains, still correct */
  memset(b2, 0, n2 * sizeof(struct entry *));
  for (uint64_t i = 0; i < nbuckets; i++) {
    struct entry *e = buckets[i];
    while (e) {
      struct entry *next = e->next;
      uint64_t j = e->hash & (n2 - 1);
      e->next = b2[j];
      b2[j] = e;
      e = next;
    }
  }
  mem_free_class(buckets, buckets_cls);
  buckets = b2;
  nbuckets = n2;
  buckets_cls = c2;
}

/* Class a key/value pair needs, or MAX_CLASS + 1. */
static int entry_class(uint32_t klen, uint32_t vlen) {
  return size_class(ENTRY_HDR + (uint64_t)klen + vlen);
}

/* Whether db_set(k, vlen) must allocate (given the entry as it is now). */
static int set_needs_alloc(const struct entry *e, uint32_t klen, uint32_t vlen) {
  if (!e) return 1;
  return entry_class(klen, vlen) > e->cls;
}

/* Sets k to v. Returns 0, or -1 when out of memory (nothing changed). */
static int db_set(const uint8_t *k, uint32_t kn, const uint8_t *v, uint32_t vn) {
  uint64_t h = hash_key(k, kn);
  struct entry **pp = &buckets[h & (nbuckets - 1)];
  struct entry *e = *pp;
  for (; e; pp = &e->next, e = e->next) {
    if (e->hash == h && e->klen == kn && memcmp(e->data, k, kn) == 0) break;
  }
  int c = entry_class(kn, vn);
  if (e && c <= e->cls && c + 2 > e->cls) { /* in place (not wastefully large) */
    memmove(e->data + kn, v, vn);
    db_bytes = db_bytes - e->vlen + vn;
    e->vlen = vn;
    return 0;
  }
  struct entry *n = mem_alloc_class(c);
  if (!n) {
    if (e && c <= e->cls) { /* could not shrink: keep the big block */
      memmove(e->data + kn, v, vn);
      db_bytes = db_bytes - e->vlen + vn;
      e->vlen = vn;
      return 0;
    }
    return -1;
  }
  n->hash = h;
  n->klen = kn;
  n->vlen = vn;
  n->cls = (uint8_t)c;
  memcpy(n->data, k, kn);
  memmove(n->data + kn, v, vn);
  if (e) {
    n->next = e->next;
    *pp = n;
    db_bytes = db_bytes - e->vlen + vn;
    mem_free_class(e, e->cls);
  } else {
    n->next = buckets[h & (nbuckets - 1)];
    buckets[h & (nbuckets - 1)] = n;
    nkeys++;
    db_bytes += kn + vn;
    if (nkeys > nbuckets) db_grow();
  }
  return 0;
}

static int db_del(const uint8_t *k, uint32_t kn) {
  uint64_t h = hash_key(k, kn);
  struct entry **pp = &buckets[h & (nbuckets - 1)];
  for (struct entry *e = *pp; e; pp = &e->next, e = e->next) {
    if (e->hash == h && e->klen == kn && memcmp(e->data, k, kn) == 0) {
      *pp = e->next;
      nkeys--;
      db_bytes -= e->klen + e->vlen;
      mem_free_class(e, e->cls);
      return 1;
    }
  }
  return 0;
}

static void db_flush(void) {
  for (uint64_t i = 0; i < nbuckets; i++) {
    struct entry *e = buckets[i];
    while (e) {
      struct entry *next = e->next;
      mem_free_class(e, e->cls);
      e = next;
    }
  }
  memset(buckets, 0, nbuckets * sizeof(struct entry *));
  nkeys = 0;
  db_bytes = 0;
}

/* ====================================================================== */
/* The disk log                                                           */
/* ====================================================================== */

#define SB_MAGIC 0x4253524bu  /* "KRSB" */
#define REC_MAGIC 0x5244524bu /* "KRDR" */
#define SB_VERSION 1u
#define REC_HDR 32u
#define REC_MIN (REC_HDR + 4u)
#define MAX_REC (IN_BUF + 1024u)
#define SNAP_REC 16384u /* target payload of a snapshot record */
#define LBUF_SIZE (1024u * 1024u)
#define OP_SET 1u
#define OP_DEL 2u
#define OP_FLUSHALL 3u

enum sync_policy { SYNC_EACH, SYNC_BATCH };

static struct {
  int enabled;
  enum sync_policy policy;
  uint64_t disk_sectors;
  uint64_t region_sectors;
  uint32_t region;
  uint64_t gen;
  uint64_t seq;          /* last record appended */
  uint8_t *buf;          /* staging: sectors from buf_sector on */
  uint64_t buf_sector;   /* absolute sector of buf[0] */
  uint32_t buf_len;      /* bytes staged (the tail of the log) */
  uint32_t buf_written;  /* of those, already on disk */
  int unflushed;         /* written since the last FLUSH */
  uint8_t *rec;          /* record being built (inside buf) */
  /* statistics */
  uint64_t records, writes, flushes, bytes, compactions, replayed;
} lg;

static uint8_t sb_buf[512] __attribute__((aligned(512)));

static uint64_t region_start(uint32_t r) { return 1 + (uint64_t)r * lg.region_sectors; }

/* Byte offset of the end of the log within the active region. */
static uint64_t log_end(void) {
  return (lg.buf_sector - region_start(lg.region)) * 512 + lg.buf_len;
}

static void disk_check(int st, const char *what, uint64_t sector) {
  if (st != BLKIF_RSP_OKAY) {
    panic("redis: disk %s at sector %lu failed: status %d", what, sector, st);
  }
}

/* Writes the staged sectors that changed (no flush). */
static void log_write_out(void) {
  if (!lg.enabled || lg.buf_len == lg.buf_written) return;
  uint32_t first = lg.buf_written / 512; /* a partial sector is rewritten whole */
  uint32_t nsect = (lg.buf_len + 511) / 512;
  uint32_t pad = nsect * 512 - lg.buf_len;
  if (pad) memset(lg.buf + lg.buf_len, 0, pad);
  disk_check(blk_write(lg.buf_sector + first, lg.buf + first * 512, nsect - first), "write",
             lg.buf_sector + first);
  lg.writes++;
  lg.unflushed = 1;
  uint32_t full = lg.buf_len / 512;
  uint32_t part = lg.buf_len % 512;
  if (full) {
    if (part) memmove(lg.buf, lg.buf + full * 512, part);
    lg.buf_sector += full;
  }
  lg.buf_len = part;
  lg.buf_written = part;
}

static void log_flush(void) {
  if (!lg.enabled || !lg.unflushed) return;
  disk_check(blk_flush(), "flush", 0);
  lg.flushes++;
  lg.unflushed = 0;
}

/* Everything appended so far is on the disk and flushed. */
static void log_sync(void) {
  log_write_out();
  log_flush();
}

static void sb_write(uint64_t gen, uint32_t region) {
  memset(sb_buf, 0, sizeof sb_buf);
  put32(sb_buf, SB_MAGIC);
  put32(sb_buf + 4, SB_VERSION);
  put64(sb_buf + 8, gen);
  put32(sb_buf + 16, region);
  put64(sb_buf + 24, lg.region_sectors);
  put32(sb_buf + 508, crc32(0, sb_buf, 508));
  disk_check(blk_write(0, sb_buf, 1), "write", 0);
  disk_check(blk_flush(), "flush", 0);
  lg.flushes++;
}

/* Starts a record of at most max_len bytes at the end of the staging buffer
 * (the caller checked the region has room). Returns the payload pointer. */
static uint8_t *rec_begin(uint32_t op, uint32_t max_len) {
  if (lg.buf_len + max_len > LBUF_SIZE) log_write_out();
  lg.rec = lg.buf + lg.buf_len;
  put32(lg.rec, REC_MAGIC);
  put64(lg.rec + 8, lg.seq + 1);
  put64(lg.rec + 16, lg.gen);
  put32(lg.rec + 24, op);
  put32(lg.rec + 28, 0);
  return lg.rec + REC_HDR;
}

static void rec_end(uint8_t *payload_end, uint32_t count) {
  uint32_t len = (uint32_t)(payload_end - lg.rec) + 4;
  if (len > MAX_REC) panic("redis: record of %u bytes", len); /* callers check */
  put32(lg.rec + 4, len);
  put32(lg.rec + 28, count);
  put32(lg.rec + len - 4, crc32(0, lg.rec, len - 4));
  lg.buf_len += len;
  lg.seq++;
  lg.records++;
  lg.bytes += len;
}

static uint8_t *put_item(uint8_t *p, const uint8_t *k, uint32_t kn, const uint8_t *v,
                         uint32_t vn, int with_value) {
  put32(p, kn);
  p += 4;
  if (with_value) {
    put32(p, vn);
    p += 4;
  }
  memcpy(p, k, kn);
  p += kn;
  if (with_value) {
    memcpy(p, v, vn);
    p += vn;
  }
  return p;
}

/* Writes a snapshot of the key space as the new generation in the other
 * region and switches to it, leaving room for a record of `then` bytes.
 * Returns 0, or -1 when that would leave the region nearly full (the old log
 * stays in force, nothing changed). `force` skips that check: the snapshot
 * always fits after deletions, as every live pair is in the current log. */
static int log_compact(uint32_t then, int force) {
  uint64_t need = db_bytes + nkeys * 8 + (db_bytes / SNAP_REC + nkeys / 256 + 2) * REC_MIN;
  /* Unforced, keep a quarter of the region free for new records, so that
   * compactions cannot follow each other on every write. */
  if (!force && need + then > lg.region_sectors * 512 / 4 * 3) return -1;
  log_write_out();
  lg.region = 1 - lg.region;
  lg.gen++;
  lg.seq = 0;
  lg.buf_sector = region_start(lg.region);
  lg.buf_len = lg.buf_written = 0;
  uint8_t *p = 0;
  uint32_t count = 0;
  for (uint64_t i = 0; i < nbuckets; i++) {
    for (struct entry *e = buckets[i]; e; e = e->next) {
      uint32_t item = 8 + e->klen + e->vlen;
      if (p && (uint32_t)(p - lg.rec) + item + 4 > SNAP_REC + REC_HDR) {
        rec_end(p, count);
        p = 0;
      }
      if (!p) {
        p = rec_begin(OP_SET, REC_HDR + SNAP_REC + MAX_KEY + MAX_VALUE + 16);
        count = 0;
      }
      p = put_item(p, e->data, e->klen, e->data + e->klen, e->vlen, 1);
      count++;
    }
  }
  if (p) rec_end(p, count);
  if (log_end() > lg.region_sectors * 512) panic("redis: log snapshot overflowed its region");
  log_write_out();
  log_flush();
  sb_write(lg.gen, lg.region);
  lg.compactions++;
  printf("redis: log compacted: gen %lu region %u, %lu keys in %lu bytes\n", lg.gen, lg.region,
         nkeys, log_end());
  return 0;
}

/* Room for a record of len bytes: 1, or 0 when the log is full. */
static int log_reserve(uint32_t len) {
  if (!lg.enabled) return 1;
  if (log_end() + len <= lg.region_sectors * 512) return 1;
  if (log_compact(len, 0) < 0) return 0;
  return log_end() + len <= lg.region_sectors * 512;
}

/* ---- Replay ---- */

struct reader {
  uint64_t next_sector; /* next sector to read */
  uint64_t end_sector;  /* region end */
  uint32_t off, len;    /* valid bytes buf[off..len) */
  uint64_t base;        /* region byte offset of buf[0] */
};

/* Makes n bytes available at buf[off]; 0 when the region ends first. */
static int reader_need(struct reader *r, uint32_t n) {
  while (r->len - r->off < n) {
    if (r->next_sector >= r->end_sector) return 0;
    if (r->off >= 512) { /* slide whole sectors out */
      uint32_t drop = r->off / 512 * 512;
      memmove(lg.buf, lg.buf + drop, r->len - drop);
      r->len -= drop;
      r->off -= drop;
      r->base += drop;
    }
    uint32_t room = (LBUF_SIZE - r->len) / 512;
    uint64_t left = r->end_sector - r->next_sector;
    uint32_t ns = room < 256 ? room : 256;
    if (ns > left) ns = (uint32_t)left;
    if (ns == 0) return 0;
    disk_check(blk_read(r->next_sector, lg.buf + r->len, ns), "read", r->next_sector);
    r->next_sector += ns;
    r->len += ns * 512;
  }
  return 1;
}

/* Checks a record's items; applies them when apply is set. */
static int rec_items(const uint8_t *rec, uint32_t len, int apply) {
  uint32_t op = get32(rec + 24) & 0xffff, count = get32(rec + 28);
  const uint8_t *p = rec + REC_HDR, *end = rec + len - 4;
  if (op == OP_FLUSHALL) {
    if (count != 0 || p != end) return 0;
    if (apply) db_flush();
    return 1;
  }
  if (op != OP_SET && op != OP_DEL) return 0;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t hdr = op == OP_SET ? 8 : 4;
    if ((uint64_t)(end - p) < hdr) return 0;
    uint32_t kn = get32(p), vn = op == OP_SET ? get32(p + 4) : 0;
    if (kn > MAX_KEY || vn > MAX_VALUE || (uint64_t)(end - p) < (uint64_t)hdr + kn + vn) return 0;
    if (apply) {
      if (op == OP_SET) {
        if (db_set(p + hdr, kn, p + hdr + kn, vn) < 0) {
          panic("redis: replay: out of memory at record %lu (%lu keys)", lg.seq + 1, nkeys);
        }
      } else {
        db_del(p + hdr, kn);
      }
    }
    p += hdr + kn + vn;
  }
  return p == end;
}

static void log_replay(void) {
  struct reader r = {region_start(lg.region), region_start(lg.region) + lg.region_sectors, 0, 0,
                     0};
  for (;;) {
    if (!reader_need(&r, REC_MIN)) break;
    const uint8_t *h = lg.buf + r.off;
    uint32_t len = get32(h + 4);
    if (get32(h) != REC_MAGIC || len < REC_MIN || len > MAX_REC || get64(h + 8) != lg.seq + 1 ||
        get64(h + 16) != lg.gen) {
      break;
    }
    if (!reader_need(&r, len)) break;
    h = lg.buf + r.off;
    if (crc32(0, h, len - 4) != get32(h + len - 4) || !rec_items(h, len, 0)) break;
    rec_items(h, len, 1);
    lg.seq++;
    lg.replayed++;
    r.off += len;
  }
  /* The log ends at region offset base + off; keep its partial sector. */
  uint64_t end = r.base + r.off;
  uint32_t part = (uint32_t)(end % 512);
  uint8_t tail[512];
  memset(tail, 0, sizeof tail);
  if (part) memcpy(tail, lg.buf + (r.off - part), part);
  lg.buf_sector = region_start(lg.region) + end / 512;
  memcpy(lg.buf, tail, 512);
  lg.buf_len = part;
  lg.buf_written = part;
  /* Seal: zero the rest of the tail sector on the disk. */
  if (end < lg.region_sectors * 512) {
    disk_check(blk_write(lg.buf_sector, lg.buf, 1), "write", lg.buf_sector);
    disk_check(blk_flush(), "flush", 0);
    lg.writes++;
    lg.flushes++;
  }
}

static void log_open(uint64_t seed) {
  uint64_t disk = blk_sectors();
  if (disk < 64 || blk_readonly()) {
    printf("redis: %s: writes are kept in memory only\n", disk ? "read-only disk" : "no disk");
    return;
  }
  lg.enabled = 1;
  lg.disk_sectors = disk;
  lg.region_sectors = (disk - 1) / 2;
  uint64_t t0 = clock_ns();
  disk_check(blk_read(0, sb_buf, 1), "read", 0);
  if (get32(sb_buf) == SB_MAGIC && get32(sb_buf + 4) == SB_VERSION &&
      crc32(0, sb_buf, 508) == get32(sb_buf + 508) && get32(sb_buf + 16) <= 1 &&
      get64(sb_buf + 24) == lg.region_sectors) {
    lg.gen = get64(sb_buf + 8);
    lg.region = get32(sb_buf + 16);
    log_replay();
    printf("redis: log gen %lu region %u: replayed %lu records, %lu keys in %lu ms\n", lg.gen,
           lg.region, lg.replayed, nkeys, (uint64_t)((clock_ns() - t0) / NS_PER_MS));
    return;
  }
  lg.gen = (seed | 1) & 0x7fffffffffffffffull;
  lg.region = 0;
  lg.buf_sector = region_start(0);
  memset(lg.buf, 0, 512);
  disk_check(blk_write(lg.buf_sector, lg.buf, 1), "write", lg.buf_sector); /* empty log */
  sb_write(lg.gen, lg.region);
  printf("redis: new log on %lu sectors (gen %lu)\n", disk, lg.gen);
}

/* ====================================================================== */
/* Connections and the protocol                                           */
/* ====================================================================== */

enum { C_FREE, C_OPEN, C_CLOSING };

/*
 * Buffers. Most requests and replies never touch per-connection memory: a
 * connection's bytes are read into one shared scratch buffer, its replies go
 * into one shared reply area (a contiguous segment per connection and
 * iteration), and only what is left over (a partial request, replies the TCP
 * send buffer did not take) is copied into the connection's own buffers.
 * Fewer pages written per request means fewer pages per checkpoint.
 */
struct conn {
  uint8_t state;
  uint8_t peer_done;  /* the peer sent FIN: close once the replies are out */
  uint8_t *pend;      /* leftover input, IN_BUF bytes */
  uint32_t pend_len;
  uint8_t *out;       /* leftover replies, OUT_BUF bytes */
  uint32_t out_off, out_len;
  uint32_t seg_off, seg_len; /* this iteration's replies in the shared area */
};

#define REPLY_AREA (256u * 1024u)

static struct conn conns[MAX_CONNS];
static struct conn *cur; /* the connection whose command runs */
static uint8_t *scratch; /* IN_BUF */
static uint8_t *replies; /* REPLY_AREA */
static uint32_t replies_used;

static const uint8_t *argv[MAX_ARGS];
static uint32_t argl[MAX_ARGS];
static int argc;

static struct {
  uint64_t conns_total, cmds, write_cmds, perr, unknown, rejected, started_ns;
  uint64_t idle_ns; /* time spent waiting for work (net_wait) */
} st;
static uint64_t txq_elided; /* pure ACKs merged into a later frame (see txq_flush) */

/* ---- Replies ---- */

/* Bytes the current connection may still add in this iteration. */
static uint32_t out_room(void) {
  uint32_t area = REPLY_AREA - replies_used;
  uint32_t conn = OUT_BUF - (replies_used - cur->seg_off);
  return area < conn ? area : conn;
}

static void out_bytes(const void *p, uint32_t n) {
  if (n > out_room()) panic("redis: reply overflow (%u bytes)", n); /* never: reserved */
  memcpy(replies + replies_used, p, n);
  replies_used += n;
}

static void out_str(const char *s) { out_bytes(s, (uint32_t)strlen(s)); }

static void reply_int(int64_t v) {
  char b[32];
  b[0] = ':';
  uint32_t n = 1 + fmt_i64(b + 1, v);
  b[n++] = '\r';
  b[n++] = '\n';
  out_bytes(b, n);
}

static void reply_len(char kind, int64_t v) {
  char b[32];
  b[0] = kind;
  uint32_t n = 1 + fmt_i64(b + 1, v);
  b[n++] = '\r';
  b[n++] = '\n';
  out_bytes(b, n);
}

static void reply_bulk(const void *p, uint32_t n) {
  reply_len('$', n);
  out_bytes(p, n);
  out_bytes("\r\n", 2);
}

static void reply_cstr(const char *s) { reply_bulk(s, (uint32_t)strlen(s)); }

static void reply_nil(void) { out_str("$-1\r\n"); }

/* An error line; anything that could break the framing becomes ' '. */
static void reply_err(const char *fmt, ...) KEMARI_PRINTF(1, 2);
static void reply_err(const char *fmt, ...) {
  char b[400];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b + 1, sizeof b - 3, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if (n > (int)sizeof b - 4) n = (int)sizeof b - 4;
  b[0] = '-';
  for (int i = 1; i <= n; i++) {
    if (b[i] == '\r' || b[i] == '\n') b[i] = ' ';
  }
  b[n + 1] = '\r';
  b[n + 2] = '\n';
  out_bytes(b, (uint32_t)n + 3);
}

/* A printable, quoted-safe copy of an argument for an error message. */
static const char *printable(const uint8_t *s, uint32_t n, char *buf, uint32_t cap) {
  uint32_t j = 0;
  for (uint32_t i = 0; i < n && j + 4 < cap; i++) buf[j++] = s[i] >= 32 && s[i] < 127 ? s[i] : '?';
  if (n > cap - 4) {
    buf[j++] = '.';
    buf[j++] = '.';
  }
  buf[j] = 0;
  return buf;
}

/* ---- Commands ---- */

static const char *sync_name(void) { return lg.policy == SYNC_EACH ? "each" : "batch"; }

static void write_done(void) {
  st.write_cmds++;
  if (lg.policy == SYNC_EACH) log_sync();
}

static void cmd_ping(void) {
  if (argc > 2) {
    reply_err("ERR wrong number of arguments for 'ping' command");
  } else if (argc == 2) {
    reply_bulk(argv[1], argl[1]);
  } else {
    out_str("+PONG\r\n");
  }
}

static void cmd_echo(void) { reply_bulk(argv[1], argl[1]); }

static int key_ok(uint32_t i) {
  if (argl[i] > MAX_KEY) {
    reply_err("ERR key too long (%u bytes; at most %u)", argl[i], MAX_KEY);
    return 0;
  }
  return 1;
}

static int value_ok(uint32_t i) {
  if (argl[i] > MAX_VALUE) {
    reply_err("ERR value too long (%u bytes; at most %u)", argl[i], MAX_VALUE);
    return 0;
  }
  return 1;
}

enum { W_OK = 0, W_FULL = -1, W_OOM = -2 };

static void reply_write_error(int r) {
  if (r == W_FULL) {
    reply_err("ERR disk log full; the write was not done");
  } else {
    reply_err("OOM command not allowed when used memory > 'maxmemory'.");
  }
}

/* Logs and applies SET k v: W_OK, or W_FULL / W_OOM with nothing changed. */
static int do_set(const uint8_t *k, uint32_t kn, const uint8_t *v, uint32_t vn) {
  uint32_t len = REC_MIN + 8 + kn + vn;
  struct entry *e = db_find(k, kn);
  if (set_needs_alloc(e, kn, vn)) {
    uint32_t need[MAX_CLASS + 1] = {0};
    int c = entry_class(kn, vn);
    if (c > MAX_CLASS) return W_OOM;
    need[c]++;
    if (!mem_can_alloc(need)) return W_OOM;
  }
  if (!log_reserve(len)) return W_FULL;
  if (lg.enabled) {
    uint8_t *p = rec_begin(OP_SET, len);
    rec_end(put_item(p, k, kn, v, vn, 1), 1);
  }
  if (db_set(k, kn, v, vn) < 0) panic("redis: allocation failed after the check");
  return W_OK;
}

static void cmd_set(void) {
  int nx = 0, xx = 0, get = 0;
  for (int i = 3; i < argc; i++) {
    if (eq_nocase(argv[i], argl[i], "NX")) {
      nx = 1;
    } else if (eq_nocase(argv[i], argl[i], "XX")) {
      xx = 1;
    } else if (eq_nocase(argv[i], argl[i], "GET")) {
      get = 1;
    } else if (eq_nocase(argv[i], argl[i], "EX") || eq_nocase(argv[i], argl[i], "PX") ||
               eq_nocase(argv[i], argl[i], "EXAT") || eq_nocase(argv[i], argl[i], "PXAT") ||
               eq_nocase(argv[i], argl[i], "KEEPTTL")) {
      reply_err("ERR key expiry is not supported by this server");
      return;
    } else {
      reply_err("ERR syntax error");
      return;
    }
  }
  if (nx && xx) {
    reply_err("ERR syntax error");
    return;
  }
  if (!key_ok(1) || !value_ok(2)) return;
  struct entry *e = db_find(argv[1], argl[1]);
  if ((nx && e) || (xx && !e)) {
    if (get && e) {
      reply_bulk(e->data + e->klen, e->vlen);
    } else {
      reply_nil();
    }
    return;
  }
  /* SET ... GET: the old value is the reply; copy it before it changes. */
  uint32_t mark = replies_used;
  if (get) {
    if (e) {
      reply_bulk(e->data + e->klen, e->vlen);
    } else {
      reply_nil();
    }
  }
  int r = do_set(argv[1], argl[1], argv[2], argl[2]);
  if (r != W_OK) {
    replies_used = mark;
    reply_write_error(r);
    return;
  }
  write_done();
  if (!get) out_str("+OK\r\n");
}

static void cmd_get(void) {
  struct entry *e = db_find(argv[1], argl[1]);
  if (e) {
    reply_bulk(e->data + e->klen, e->vlen);
  } else {
    reply_nil();
  }
}

static void incr_by(int64_t by) {
  if (!key_ok(1)) return;
  struct entry *e = db_find(argv[1], argl[1]);
  int64_t v = 0;
  if (e && !parse_i64(e->data + e->klen, e->vlen, &v)) {
    reply_err("ERR value is not an integer or out of range");
    return;
  }
  if ((by > 0 && v > INT64_MAX - by) || (by < 0 && v < INT64_MIN - by)) {
    reply_err("ERR increment or decrement would overflow");
    return;
  }
  v += by;
  char num[24];
  uint32_t n = fmt_i64(num, v);
  int r = do_set(argv[1], argl[1], (const uint8_t *)num, n);
  if (r != W_OK) {
    reply_write_error(r);
    return;
  }
  write_done();
  reply_int(v);
}

static void cmd_incr(void) { incr_by(1); }
static void cmd_decr(void) { incr_by(-1); }

static int arg_int(int i, int64_t *v) {
  if (!parse_i64(argv[i], argl[i], v)) {
    reply_err("ERR value is not an integer or out of range");
    return 0;
  }
  return 1;
}

static void cmd_incrby(void) {
  int64_t by;
  if (arg_int(2, &by)) incr_by(by);
}

static void cmd_decrby(void) {
  int64_t by;
  if (!arg_int(2, &by)) return;
  if (by == INT64_MIN) {
    reply_err("ERR decrement would overflow");
    return;
  }
  incr_by(-by);
}

static void cmd_del(void) {
  uint64_t len = REC_MIN;
  int any = 0;
  for (int i = 1; i < argc; i++) {
    if (db_find(argv[i], argl[i])) {
      len += 4 + argl[i];
      any = 1;
    }
  }
  if (!any) {
    reply_int(0);
    return;
  }
  if (len > MAX_REC) {
    reply_err("ERR command too large");
    return;
  }
  if (!log_reserve((uint32_t)len)) {
    /* The log is full: delete, then compact (the snapshot is the record). */
    int64_t n = 0;
    for (int i = 1; i < argc; i++) n += db_del(argv[i], argl[i]);
    log_compact(0, 1);
    write_done();
    reply_int(n);
    return;
  }
  uint8_t *p = lg.enabled ? rec_begin(OP_DEL, (uint32_t)len) : 0;
  uint32_t count = 0;
  int64_t deleted = 0;
  for (int i = 1; i < argc; i++) {
    if (!db_find(argv[i], argl[i])) continue; /* also a repeat already deleted */
    if (p) p = put_item(p, argv[i], argl[i], 0, 0, 0);
    count++;
    deleted += db_del(argv[i], argl[i]);
  }
  if (p) rec_end(p, count);
  write_done();
  reply_int(deleted);
}

static void cmd_exists(void) {
  int64_t n = 0;
  for (int i = 1; i < argc; i++) n += db_find(argv[i], argl[i]) != 0;
  reply_int(n);
}

static void cmd_mset(void) {
  if (argc % 2 != 1) {
    reply_err("ERR wrong number of arguments for 'mset' command");
    return;
  }
  uint64_t len = REC_MIN;
  uint32_t need[MAX_CLASS + 1] = {0};
  for (int i = 1; i < argc; i += 2) {
    if (!key_ok((uint32_t)i) || !value_ok((uint32_t)i + 1)) return;
    len += 8 + argl[i] + argl[i + 1];
    if (set_needs_alloc(db_find(argv[i], argl[i]), argl[i], argl[i + 1])) {
      int c = entry_class(argl[i], argl[i + 1]);
      if (c > MAX_CLASS) {
        reply_write_error(W_OOM);
        return;
      }
      need[c]++;
    }
  }
  if (len > MAX_REC) {
    reply_err("ERR command too large");
    return;
  }
  if (!mem_can_alloc(need)) {
    reply_write_error(W_OOM);
    return;
  }
  if (!log_reserve((uint32_t)len)) {
    reply_write_error(W_FULL);
    return;
  }
  if (lg.enabled) {
    uint8_t *p = rec_begin(OP_SET, (uint32_t)len);
    for (int i = 1; i < argc; i += 2) {
      p = put_item(p, argv[i], argl[i], argv[i + 1], argl[i + 1], 1);
    }
    rec_end(p, (uint32_t)(argc - 1) / 2);
  }
  for (int i = 1; i < argc; i += 2) {
    if (db_set(argv[i], argl[i], argv[i + 1], argl[i + 1]) < 0) {
      panic("redis: allocation failed after the check");
    }
  }
  write_done();
  out_str("+OK\r\n");
}

static void cmd_mget(void) {
  reply_len('*', argc - 1);
  for (int i = 1; i < argc; i++) {
    struct entry *e = db_find(argv[i], argl[i]);
    if (e) {
      reply_bulk(e->data + e->klen, e->vlen);
    } else {
      reply_nil();
    }
  }
}

static void cmd_dbsize(void) { reply_int((int64_t)nkeys); }

static void cmd_flushall(void) {
  if (argc > 2 || (argc == 2 && !eq_nocase(argv[1], argl[1], "SYNC") &&
                   !eq_nocase(argv[1], argl[1], "ASYNC"))) {
    reply_err("ERR syntax error");
    return;
  }
  if (!log_reserve(REC_MIN)) { /* full: the empty snapshot is the record */
    db_flush();
    log_compact(0, 1);
  } else {
    if (lg.enabled) {
      uint8_t *p = rec_begin(OP_FLUSHALL, REC_MIN);
      rec_end(p, 0);
    }
    db_flush();
  }
  write_done();
  out_str("+OK\r\n");
}

/* CONFIG GET parameters: name and value (computed). */
static const char *config_value(const char *name, char *buf, uint32_t cap) {
  if (!strcmp(name, "save")) return "";
  if (!strcmp(name, "appendonly")) return lg.enabled ? "yes" : "no";
  if (!strcmp(name, "appendfsync")) return "always";
  if (!strcmp(name, "databases")) return "1";
  if (!strcmp(name, "maxclients")) {
    snprintf(buf, cap, "%u", (unsigned)MAX_CONNS);
    return buf;
  }
  if (!strcmp(name, "maxmemory")) {
    snprintf(buf, cap, "%lu", arena_bytes);
    return buf;
  }
  if (!strcmp(name, "maxmemory-policy")) return "noeviction";
  if (!strcmp(name, "proto-max-bulk-len")) {
    snprintf(buf, cap, "%u", MAX_BULK);
    return buf;
  }
  if (!strcmp(name, "kemari-log-sync")) return sync_name();
  return 0;
}

static const char *const config_names[] = {"save",        "appendonly", "appendfsync",
                                           "databases",   "maxclients", "maxmemory",
                                           "maxmemory-policy", "proto-max-bulk-len",
                                           "kemari-log-sync"};
#define N_CONFIG (sizeof config_names / sizeof config_names[0])

static void cmd_config(void) {
  if (eq_nocase(argv[1], argl[1], "GET")) {
    if (argc < 3) {
      reply_err("ERR wrong number of arguments for 'config|get' command");
      return;
    }
    uint8_t hit[N_CONFIG] = {0};
    int n = 0;
    for (uint32_t j = 0; j < N_CONFIG; j++) {
      for (int i = 2; i < argc && !hit[j]; i++) {
        if (glob_match(argv[i], argl[i], config_names[j])) {
          hit[j] = 1;
          n++;
        }
      }
    }
    reply_len('*', 2 * n);
    for (uint32_t j = 0; j < N_CONFIG; j++) {
      if (!hit[j]) continue;
      char buf[32];
      reply_cstr(config_names[j]);
      reply_cstr(config_value(config_names[j], buf, sizeof buf));
    }
  } else if (eq_nocase(argv[1], argl[1], "RESETSTAT")) {
    out_str("+OK\r\n");
  } else if (eq_nocase(argv[1], argl[1], "SET")) {
    reply_err("ERR CONFIG SET is not supported by this server");
  } else {
    char b[40];
    reply_err("ERR unknown subcommand '%s'. Try CONFIG HELP.",
              printable(argv[1], argl[1], b, sizeof b));
  }
}

static void cmd_info(void) {
  static char b[2048];
  uint64_t up = (uint64_t)((clock_ns() - st.started_ns) / NS_PER_SEC);
  uint32_t open = 0;
  for (int i = 0; i < MAX_CONNS; i++) open += conns[i].state != C_FREE;
  int n = snprintf(b, sizeof b,
                   "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n"
                   "os:kemari reference guest\r\narch_bits:64\r\nmultiplexing_api:polled\r\n"
                   "uptime_in_seconds:%lu\r\nkemari_idle_ms:%lu\r\n\r\n"
                   "# Clients\r\nconnected_clients:%u\r\nmaxclients:%u\r\n\r\n"
                   "# Memory\r\nused_memory:%lu\r\nmaxmemory:%lu\r\n"
                   "maxmemory_policy:noeviction\r\n\r\n"
                   "# Persistence\r\nloading:0\r\naof_enabled:%d\r\nkemari_log_sync:%s\r\n"
                   "kemari_log_gen:%lu\r\nkemari_log_region:%u\r\nkemari_log_seq:%lu\r\n"
                   "kemari_log_bytes:%lu\r\nkemari_log_replayed:%lu\r\n"
                   "kemari_log_writes:%lu\r\nkemari_log_flushes:%lu\r\n"
                   "kemari_log_compactions:%lu\r\n\r\n"
                   "# Stats\r\ntotal_connections_received:%lu\r\n"
                   "total_commands_processed:%lu\r\nkemari_write_commands:%lu\r\n"
                   "kemari_protocol_errors:%lu\r\nkemari_unknown_commands:%lu\r\n"
                   "kemari_acks_merged:%lu\r\nrejected_connections:%lu\r\n\r\n"
                   "# Keyspace\r\n",
                   up, (uint64_t)(st.idle_ns / NS_PER_MS), open, (unsigned)MAX_CONNS, mem_used, arena_bytes, lg.enabled, sync_name(),
                   lg.gen, lg.region, lg.seq, log_end(), lg.replayed, lg.writes, lg.flushes,
                   lg.compactions, st.conns_total, st.cmds, st.write_cmds, st.perr, st.unknown,
                   txq_elided, st.rejected);
  if (n < 0 || n >= (int)sizeof b) n = (int)sizeof b - 1;
  if (nkeys) {
    int m = snprintf(b + n, sizeof b - (uint32_t)n, "db0:keys=%lu,expires=0,avg_ttl=0\r\n", nkeys);
    if (m > 0 && n + m < (int)sizeof b) n += m;
  }
  reply_bulk(b, (uint32_t)n);
}

static void cmd_command(void) {
  if (argc == 1 || eq_nocase(argv[1], argl[1], "DOCS") || eq_nocase(argv[1], argl[1], "INFO")) {
    out_str("*0\r\n");
  } else if (eq_nocase(argv[1], argl[1], "COUNT")) {
    reply_int(24);
  } else {
    char b[40];
    reply_err("ERR unknown subcommand '%s'. Try COMMAND HELP.",
              printable(argv[1], argl[1], b, sizeof b));
  }
}

static void cmd_client(void) {
  if (eq_nocase(argv[1], argl[1], "ID")) {
    reply_int(cur - conns);
  } else if (eq_nocase(argv[1], argl[1], "GETNAME")) {
    reply_nil();
  } else if (eq_nocase(argv[1], argl[1], "SETNAME") || eq_nocase(argv[1], argl[1], "SETINFO")) {
    out_str("+OK\r\n");
  } else {
    char b[40];
    reply_err("ERR unknown subcommand '%s'. Try CLIENT HELP.",
              printable(argv[1], argl[1], b, sizeof b));
  }
}

static void cmd_select(void) {
  int64_t db;
  if (!parse_i64(argv[1], argl[1], &db)) {
    reply_err("ERR value is not an integer or out of range");
  } else if (db != 0) {
    reply_err("ERR DB index is out of range");
  } else {
    out_str("+OK\r\n");
  }
}

static void cmd_quit(void) {
  out_str("+OK\r\n");
  cur->state = C_CLOSING;
}

struct command {
  const char *name;
  int arity; /* > 0 exact, < 0 at least -arity (command name included) */
  void (*fn)(void);
};

static const struct command commands[] = {
    {"get", 2, cmd_get},         {"set", -3, cmd_set},         {"incr", 2, cmd_incr},
    {"ping", -1, cmd_ping},      {"mget", -2, cmd_mget},       {"mset", -3, cmd_mset},
    {"incrby", 3, cmd_incrby},   {"decr", 2, cmd_decr},        {"decrby", 3, cmd_decrby},
    {"del", -2, cmd_del},        {"exists", -2, cmd_exists},   {"echo", 2, cmd_echo},
    {"dbsize", 1, cmd_dbsize},   {"flushall", -1, cmd_flushall}, {"flushdb", -1, cmd_flushall},
    {"config", -2, cmd_config},  {"info", -1, cmd_info},       {"command", -1, cmd_command},
    {"client", -2, cmd_client},  {"select", 2, cmd_select},    {"quit", -1, cmd_quit},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const struct command *lookup(const uint8_t *name, uint32_t n) {
  for (uint32_t i = 0; i < N_COMMANDS; i++) {
    if (eq_nocase(name, n, commands[i].name)) return &commands[i];
  }
  return 0;
}

/* Upper bound of the reply's size, so it always fits the output buffer. */
static uint64_t reply_bound(const struct command *cmd) {
  uint64_t n = 512;
  if (!cmd) return n;
  if (cmd->fn == cmd_get || cmd->fn == cmd_mget || cmd->fn == cmd_set) {
    int last = cmd->fn == cmd_mget ? argc - 1 : 1; /* SET ... GET: the old value */
    for (int i = 1; i <= last && i < argc; i++) {
      struct entry *e = db_find(argv[i], argl[i]);
      n += 32 + (e ? e->vlen : 0);
    }
  } else if (cmd->fn == cmd_echo || cmd->fn == cmd_ping) {
    for (int i = 1; i < argc; i++) n += 32 + argl[i];
  } else if (cmd->fn == cmd_info || cmd->fn == cmd_config) {
    n += 2048;
  }
  return n;
}

/* Runs the parsed command. Returns 0 when it ran, -1 when the output buffer
 * lacks room (the caller keeps the command and retries later). */
static int execute(void) {
  const struct command *cmd = lookup(argv[0], argl[0]);
  uint64_t bound = reply_bound(cmd);
  if (bound > OUT_BUF - 64) {
    if (out_room() < 512) return -1;
    reply_err("ERR reply too large for this server (%lu bytes)", bound);
    return 0;
  }
  if (bound > out_room()) return -1;
  st.cmds++;
  if (!cmd) {
    char name[70], args[140];
    uint32_t used = 0;
    args[0] = 0;
    for (int i = 1; i < argc && used + 4 < sizeof args; i++) {
      char b[40];
      int m = snprintf(args + used, sizeof args - used, "'%s' ",
                       printable(argv[i], argl[i], b, sizeof b));
      if (m < 0) break;
      used += (uint32_t)m;
      if (used >= sizeof args) used = sizeof args - 1;
    }
    st.unknown++;
    reply_err("ERR unknown command '%s', with args beginning with: %s",
              printable(argv[0], argl[0], name, sizeof name), args);
    return 0;
  }
  if ((cmd->arity > 0 && argc != cmd->arity) || (cmd->arity < 0 && argc < -cmd->arity)) {
    reply_err("ERR wrong number of arguments for '%s' command", cmd->name);
    return 0;
  }
  cmd->fn();
  return 0;
}

/* ---- Request parsing ---- */

enum { P_DONE = 1, P_MORE = 0, P_ERROR = -1 };
static char perr_msg[96];

static int perr(const char *msg) {
  snprintf(perr_msg, sizeof perr_msg, "%s", msg);
  return P_ERROR;
}

/* Index of "\r\n" in p[0..n), or -1. */
static int64_t find_crlf(const uint8_t *p, uint32_t n) {
  for (uint32_t i = 0; i + 1 < n; i++) {
    if (p[i] == '\r' && p[i + 1] == '\n') return i;
  }
  return -1;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static int is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Splits an inline line (modified in place) into argv. */
static int split_inline(uint8_t *s, uint32_t n) {
  uint32_t i = 0;
  argc = 0;
  for (;;) {
    while (i < n && is_space(s[i])) i++;
    if (i >= n) return P_DONE;
    if (argc == MAX_ARGS) return perr("Protocol error: too many arguments");
    uint8_t *w = s + i, *start = w;
    if (s[i] == '"') {
      i++;
      for (;;) {
        if (i >= n) return perr("Protocol error: unbalanced quotes in request");
        if (s[i] == '\\' && i + 3 < n && s[i + 1] == 'x' && hexval(s[i + 2]) >= 0 &&
            hexval(s[i + 3]) >= 0) {
          *w++ = (uint8_t)(hexval(s[i + 2]) * 16 + hexval(s[i + 3]));
          i += 4;
        } else if (s[i] == '\\' && i + 1 < n) {
          uint8_t e = s[i + 1];
          *w++ = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e == 'b' ? '\b'
                 : e == 'a' ? '\a' : e;
          i += 2;
        } else if (s[i] == '"') {
          i++;
          if (i < n && !is_space(s[i])) {
            return perr("Protocol error: unbalanced quotes in request");
          }
          break;
        } else {
          *w++ = s[i++];
        }
      }
    } else if (s[i] == '\'') {
      i++;
      for (;;) {
        if (i >= n) return perr("Protocol error: unbalanced quotes in request");
        if (s[i] == '\\' && i + 1 < n && s[i + 1] == '\'') {
          *w++ = '\'';
          i += 2;
        } else if (s[i] == '\'') {
          i++;
          if (i < n && !is_space(s[i])) {
            return perr("Protocol error: unbalanced quotes in request");
          }
          break;
        } else {
          *w++ = s[i++];
        }
      }
    } else {
      while (i < n && !is_space(s[i])) *w++ = s[i++];
    }
    argv[argc] = start;
    argl[argc] = (uint32_t)(w - start);
    argc++;
  }
}

/* Parses one request at buf[0..len). P_DONE with *used bytes consumed (argc
 * may be 0: an empty request), P_MORE, or P_ERROR (perr_msg). */
static int parse_request(uint8_t *buf, uint32_t len, uint32_t *used) {
  if (len == 0) return P_MORE;
  if (buf[0] != '*') {
    uint32_t nl = 0;
    while (nl < len && buf[nl] != '\n') nl++;
    if (nl == len) return len >= IN_BUF ? perr("Protocol error: too big inline request") : P_MORE;
    *used = nl + 1;
    return split_inline(buf, nl);
  }
  int64_t e = find_crlf(buf + 1, len - 1 < LINE_MAX_LEN ? len - 1 : LINE_MAX_LEN);
  if (e < 0) {
    return len - 1 >= LINE_MAX_LEN ? perr("Protocol error: invalid multibulk length") : P_MORE;
  }
  int64_t count;
  if (!parse_i64(buf + 1, (uint32_t)e, &count) || count > MAX_ARGS) {
    return perr("Protocol error: invalid multibulk length");
  }
  uint32_t pos = (uint32_t)e + 3;
  if (count <= 0) {
    argc = 0;
    *used = pos;
    return P_DONE;
  }
  for (int64_t i = 0; i < count; i++) {
    if (pos >= len) return P_MORE;
    if (buf[pos] != '$') {
      char m[64];
      snprintf(m, sizeof m, "Protocol error: expected '$', got '%c'",
               buf[pos] >= 32 && buf[pos] < 127 ? buf[pos] : '?');
      return perr(m);
    }
    uint32_t avail = len - pos - 1;
    e = find_crlf(buf + pos + 1, avail < LINE_MAX_LEN ? avail : LINE_MAX_LEN);
    if (e < 0) return avail >= LINE_MAX_LEN ? perr("Protocol error: invalid bulk length") : P_MORE;
    int64_t blen;
    if (!parse_i64(buf + pos + 1, (uint32_t)e, &blen) || blen < 0 || blen > MAX_BULK) {
      return perr("Protocol error: invalid bulk length");
    }
    pos += (uint32_t)e + 3;
    if ((uint64_t)pos + (uint64_t)blen + 2 > IN_BUF) {
      return perr("Protocol error: request too big for this server");
    }
    if ((uint64_t)len - pos < (uint64_t)blen + 2) return P_MORE;
    if (buf[pos + blen] != '\r' || buf[pos + blen + 1] != '\n') {
      return perr("Protocol error: expected CRLF after a bulk string");
    }
    argv[i] = buf + pos;
    argl[i] = (uint32_t)blen;
    pos += (uint32_t)blen + 2;
  }
  argc = (int)count;
  *used = pos;
  return P_DONE;
}

/* ---- Connection handling ---- */

static void conn_open(int h) {
  struct conn *c = &conns[h];
  c->state = C_OPEN;
  c->peer_done = 0;
  c->pend_len = 0;
  c->out_off = c->out_len = 0;
  c->seg_off = c->seg_len = 0;
  st.conns_total++;
}

static void conn_release(int h) {
  tcp_close(h);
  conns[h].state = C_FREE;
}

/* Reads into buf[*len..IN_BUF). Returns 1 when anything happened, -1 when
 * the connection failed (released). */
static int conn_read(int h, uint8_t *buf, uint32_t *len) {
  struct conn *c = &conns[h];
  int did = 0;
  while (!c->peer_done && *len < IN_BUF) {
    int n = tcp_recv(h, buf + *len, IN_BUF - *len);
    if (n == NET_EAGAIN) break;
    did = 1;
    if (n == 0) {
      c->peer_done = 1;
      break;
    }
    if (n < 0) {
      conn_release(h);
      return -1;
    }
    *len += (uint32_t)n;
  }
  return did;
}

/* Reads and runs the connection's requests; their replies go to the shared
 * area. Returns 1 when it did anything. */
static int conn_serve(int h) {
  struct conn *c = &conns[h];
  c->seg_off = replies_used;
  c->seg_len = 0;
  if (c->out_off < c->out_len) return 0; /* replies still queued: wait for them */
  /* A partial request continues in the connection's own buffer, anything
   * else starts in the scratch buffer. */
  uint8_t *buf = c->pend_len ? c->pend : scratch;
  uint32_t len = c->pend_len;
  int did = conn_read(h, buf, &len);
  if (did < 0) return 1;
  cur = c;
  uint32_t off = 0;
  while (c->state == C_OPEN && off < len) {
    uint32_t used = 0;
    int r = parse_request(buf + off, len - off, &used);
    if (r == P_MORE && len - off >= IN_BUF) {
      r = perr("Protocol error: request too big for this server");
    }
    if (r == P_MORE) {
      if (c->peer_done) { /* a partial request the client will never finish */
        off = len;
        c->state = C_CLOSING;
      }
      break;
    }
    if (r == P_ERROR) {
      if (out_room() < 512) break; /* report it once there is room */
      st.perr++;
      reply_err("ERR %s", perr_msg);
      c->state = C_CLOSING;
      did = 1;
      break;
    }
    if (argc > 0 && execute() < 0) break;
    off += used;
    did = 1;
  }
  if (c->state != C_OPEN) off = len; /* the rest is discarded */
  if (buf == c->pend) {
    if (off) memmove(c->pend, c->pend + off, len - off);
  } else if (len > off) {
    memcpy(c->pend, scratch + off, len - off);
  }
  c->pend_len = len - off;
  c->seg_len = replies_used - c->seg_off;
  return did;
}

/* Sends replies (after the log sync), finishes closing connections.
 * Returns 1 when anything happened. */
static int conn_flush(int h) {
  struct conn *c = &conns[h];
  int did = 0;
  if (c->seg_len) { /* this iteration's replies; keep what TCP does not take */
    int n = tcp_send(h, replies + c->seg_off, c->seg_len);
    if (n < 0 && n != NET_EAGAIN) {
      conn_release(h);
      return 1;
    }
    uint32_t sent = n > 0 ? (uint32_t)n : 0;
    memcpy(c->out, replies + c->seg_off + sent, c->seg_len - sent);
    c->out_off = 0;
    c->out_len = c->seg_len - sent;
    c->seg_len = 0;
    did = 1;
  } else {
    while (c->out_off < c->out_len) {
      int n = tcp_send(h, c->out + c->out_off, c->out_len - c->out_off);
      if (n == NET_EAGAIN || n == 0) break;
      if (n < 0) {
        conn_release(h);
        return 1;
      }
      c->out_off += (uint32_t)n;
      did = 1;
    }
  }
  if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
  if (c->state == C_CLOSING) { /* discard input so the close is a FIN, not a RST */
    while (tcp_recv(h, scratch, IN_BUF) > 0) did = 1;
    c->pend_len = 0;
  }
  if (c->out_len == 0 && (c->state == C_CLOSING || (c->peer_done && c->pend_len == 0))) {
    conn_release(h); /* done, and every reply is queued in TCP */
    return 1;
  }
  if (tcp_error(h) < 0) {
    conn_release(h);
    return 1;
  }
  return did;
}

/* ---- Transmit batching ----
 *
 * The stack hands frames to this shim instead of the NIC driver; they are
 * queued and posted together at the end of the event-loop iteration (or
 * before the loop sleeps). Under kemari every frame is an output that starts
 * a checkpoint, so posting an iteration's replies in one burst lets one
 * checkpoint cover them all. In the same pass, a pure ACK is left out when a
 * later frame of the batch, on the same connection, carries data or FIN and
 * acknowledges at least as much: the ACK of a request then rides on its
 * reply, as with a delayed ACK, and half the frames go away.
 */
#define TXQ_FRAMES 512u
#define TXQ_BYTES (512u * 1024u)

static struct net_driver nic;
static uint8_t *txq_data;
static uint32_t txq_off[TXQ_FRAMES], txq_len[TXQ_FRAMES], txq_n, txq_used;

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) { return be16(p) << 16 | be16(p + 2); }

/* TCP facts of a frame: 0 when it is not a plain IPv4/TCP frame. */
struct tcp_facts {
  uint32_t saddr, daddr, ports, ack, payload;
  uint8_t flags;
};

static int tcp_facts_of(const uint8_t *f, uint32_t len, struct tcp_facts *t) {
  if (len < 14 + 20 || be16(f + 12) != 0x0800 || (f[14] >> 4) != 4 || f[23] != 6) return 0;
  uint32_t ihl = (uint32_t)(f[14] & 15) * 4, total = be16(f + 16);
  if (ihl < 20 || total < ihl + 20 || 14 + total > len) return 0;
  const uint8_t *tcp = f + 14 + ihl;
  uint32_t doff = (uint32_t)(tcp[12] >> 4) * 4;
  if (doff < 20 || ihl + doff > total) return 0;
  t->saddr = be32(f + 26);
  t->daddr = be32(f + 30);
  t->ports = be32(tcp);
  t->ack = be32(tcp + 8);
  t->flags = tcp[13];
  t->payload = total - ihl - doff;
  return 1;
}

#define TH_FIN 0x01
#define TH_ACK 0x10

/* Whether frame i is a pure ACK that a later queued frame supersedes. */
static int txq_redundant(uint32_t i) {
  struct tcp_facts a, b;
  if (!tcp_facts_of(txq_data + txq_off[i], txq_len[i], &a)) return 0;
  if (a.flags != TH_ACK || a.payload != 0) return 0;
  for (uint32_t j = i + 1; j < txq_n; j++) {
    if (!tcp_facts_of(txq_data + txq_off[j], txq_len[j], &b)) continue;
    if (b.saddr != a.saddr || b.daddr != a.daddr || b.ports != a.ports) continue;
    if ((b.flags & TH_ACK) && (b.payload > 0 || (b.flags & TH_FIN)) &&
        (int32_t)(b.ack - a.ack) >= 0) {
      return 1;
    }
  }
  return 0;
}

static void txq_flush(void) {
  for (uint32_t i = 0; i < txq_n; i++) {
    if (txq_redundant(i)) {
      txq_elided++;
      continue;
    }
    nic.send(nic.ctx, txq_data + txq_off[i], txq_len[i]);
  }
  txq_n = txq_used = 0;
}

static int txq_send(void *ctx, const void *frame, uint32_t len) {
  (void)ctx;
  if (len > NET_FRAME_MAX) return -1;
  if (txq_n == TXQ_FRAMES || txq_used + len > TXQ_BYTES) txq_flush();
  memcpy(txq_data + txq_used, frame, len);
  txq_off[txq_n] = txq_used;
  txq_len[txq_n] = len;
  txq_n++;
  txq_used += len;
  return 0;
}

static int txq_recv(void *ctx, void *frame, uint32_t cap) {
  (void)ctx;
  return nic.recv(nic.ctx, frame, cap);
}

static void txq_wait(void *ctx, uint64_t deadline_ns) {
  (void)ctx;
  txq_flush(); /* never sleep on queued frames */
  nic.wait(nic.ctx, deadline_ns);
}

static void status_line(void) {
  uint32_t open = 0;
  for (int i = 0; i < MAX_CONNS; i++) open += conns[i].state != C_FREE;
  printf("redis: status conns=%u cmds=%lu keys=%lu writes=%lu log_seq=%lu flushes=%lu "
         "perr=%lu drops=%lu rto=%lu fast=%lu rx=%lu tx=%lu txfail=%lu syndrop=%lu "
         "acks_merged=%lu\n",
         open, st.cmds, nkeys, st.write_cmds, lg.seq, lg.flushes, st.perr,
         (unsigned long)net_drops(), (unsigned long)net_counter(NET_C_TCP_RETRANS),
         (unsigned long)net_counter(NET_C_TCP_FAST_RETRANS),
         (unsigned long)net_counter(NET_C_RX_FRAMES), (unsigned long)net_counter(NET_C_TX_FRAMES),
         (unsigned long)net_counter(NET_C_TX_FAIL),
         (unsigned long)net_counter(NET_C_TCP_SYN_DROPPED), txq_elided);
}

int kemari_main(void) {
  struct net_config cfg = {0, 0, 0};
  const char *ip = arg_str("ip", 0);
  if (!ip || !strchr(ip, '/') || net_parse_ip(ip, &cfg.ip, &cfg.prefix) < 0) {
    printf("redis: ip=A.B.C.D/prefix is required (got '%s')\n", ip ? ip : "");
    return 2;
  }
  const char *gw = arg_str("gw", 0);
  if (gw && net_parse_ip(gw, &cfg.gw, 0) < 0) {
    printf("redis: bad gw=%s\n", gw);
    return 2;
  }
  uint64_t port = arg_u64("port", DEFAULT_PORT);
  if (port == 0 || port > 65535) {
    printf("redis: bad port=%lu\n", port);
    return 2;
  }
  const char *sync = arg_str("sync", "batch");
  if (!strcmp(sync, "each")) {
    lg.policy = SYNC_EACH;
  } else if (!strcmp(sync, "batch")) {
    lg.policy = SYNC_BATCH;
  } else {
    printf("redis: sync must be each or batch (got '%s')\n", sync);
    return 2;
  }
  uint64_t status_s = arg_u64("status", 0);

  struct net_driver drv;
  if (net_device_open(&nic) < 0) {
    printf("redis: no network device\n");
    return 2;
  }
  txq_data = heap_alloc(TXQ_BYTES, 4096);
  drv = nic;
  drv.ctx = 0;
  drv.send = txq_send;
  drv.recv = txq_recv;
  drv.wait = txq_wait;
  int rc = net_init(&drv, &cfg);
  if (rc < 0) {
    printf("redis: bad address configuration (%d)\n", rc);
    return 2;
  }
  int listener = tcp_listen((uint16_t)port, BACKLOG);
  if (listener < 0) {
    printf("redis: cannot listen on port %lu (%d)\n", port, listener);
    return 2;
  }
  for (int i = 0; i < MAX_CONNS; i++) {
    conns[i].pend = heap_alloc(IN_BUF, 4096);
    conns[i].out = heap_alloc(OUT_BUF, 4096);
  }
  scratch = heap_alloc(IN_BUF, 4096);
  replies = heap_alloc(REPLY_AREA, 4096);
  lg.buf = heap_alloc(LBUF_SIZE, 4096);
  /* The key space gets the rest of the heap but 1 MiB. */
  uint64_t room = heap_free_bytes();
  arena_bytes = room > (2u << 20) ? room - (1u << 20) : room / 2;
  arena_top = heap_alloc(arena_bytes, 4096);
  arena_end = arena_top + arena_bytes;
  uint64_t seed = clock_ns() * 0x9e3779b97f4a7c15ull ^ drv.seed;
#ifndef KEMARI_NET_HOST
  seed ^= KEMARI_BOOT->boot_id;
#endif
  hash_seed = seed;
  db_init();
  log_open(seed);
  st.started_ns = clock_ns();

  char ipbuf[16], macbuf[18];
  net_format_ip(ipbuf, sizeof ipbuf, cfg.ip);
  net_format_mac(macbuf, sizeof macbuf, drv.mac);
  printf("redis: ip %s mac %s port %lu sync=%s ready\n", ipbuf, macbuf, port, sync_name());

  uint64_t period = status_s * NS_PER_SEC;
  uint64_t next_status = period ? clock_ns() + period : UINT64_MAX;
  uint32_t first = 0;
  for (;;) {
    int busy = net_poll() > 0;
    for (;;) {
      int h = tcp_accept(listener);
      if (h < 0) break;
      if (h >= MAX_CONNS) { /* cannot happen: handles index the table */
        tcp_abort(h);
        st.rejected++;
        continue;
      }
      conn_open(h);
      busy = 1;
    }
    /* Serve every connection, starting at a different one each time so
     * that a full reply area never starves the same connections. */
    replies_used = 0;
    for (int i = 0; i < MAX_CONNS; i++) {
      int h = (int)((first + (uint32_t)i) % MAX_CONNS);
      if (conns[h].state == C_OPEN) busy |= conn_serve(h);
    }
    first = (first + 1) % MAX_CONNS;
    /* Group commit: the records of this iteration are durable before any
     * reply of this iteration leaves. */
    log_sync();
    for (int h = 0; h < MAX_CONNS; h++) {
      if (conns[h].state != C_FREE) busy |= conn_flush(h);
    }
    txq_flush();
    uint64_t now = clock_ns();
    if (now >= next_status) {
      status_line();
      next_status += period;
      if (next_status <= now) next_status = now + period;
    }
    if (!busy) {
      uint64_t t = clock_ns();
      net_wait(next_status);
      st.idle_ns += clock_ns() - t;
    }
  }
}
