/*
 * Runtime core: startup, hypercalls, event page, PV clock, heap, CPU checks.
 */
#include "kemari.h"

/* Linker-script symbol: first byte after the image (bss included). */
extern char __image_end[];

/* ---- Hypercalls and doorbells ---- */

uint64_t hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2) {
  uint64_t ret = nr;
  /* The VMM writes the result into rax. "memory": the VMM may read or write
   * guest memory (panic message, rings) as part of the call. */
  __asm__ volatile("outl %%eax, %[port]"
                   : "+a"(ret)
                   : [port] "i"(KEMARI_PORT_HYPERCALL), "D"(a0), "S"(a1), "d"(a2)
                   : "memory");
  return ret;
}

uint64_t hc_version(void) { return hypercall(KEMARI_HC_VERSION, 0, 0, 0); }

uint32_t hc_wait(uint64_t deadline_ns, uint32_t seen_seq) {
  return (uint32_t)hypercall(KEMARI_HC_WAIT, deadline_ns, seen_seq, 0);
}

void hc_exit(uint64_t code) {
  /* Hypercalls are idempotent; if the VMM ever resumes us (e.g. a backup
   * restored a checkpoint taken just after the out), simply ask again. */
  for (;;) hypercall(KEMARI_HC_EXIT, code, 0, 0);
}

void hc_panic(const char *msg, size_t len) {
  for (;;) hypercall(KEMARI_HC_PANIC, (uint64_t)(uintptr_t)msg, len, 0);
}

void doorbell_console(void) {
  __asm__ volatile("outb %%al, %[port]" : : "a"(0), [port] "i"(KEMARI_PORT_DB_CONSOLE)
                   : "memory");
}

void doorbell_block(void) {
  __asm__ volatile("outb %%al, %[port]" : : "a"(0), [port] "i"(KEMARI_PORT_DB_BLOCK)
                   : "memory");
}

/* ---- Event page ---- */

uint32_t event_seq(void) {
  return __atomic_load_n(&KEMARI_EVENTS->seq, __ATOMIC_SEQ_CST);
}

uint32_t bad_requests(void) {
  return __atomic_load_n(&KEMARI_EVENTS->bad_requests, __ATOMIC_SEQ_CST);
}

/* ---- PV clock ---- */

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  /* lfence keeps rdtsc from executing ahead of the seq/field loads. */
  __asm__ volatile("lfence\n\trdtsc" : "=a"(lo), "=d"(hi) : : "memory");
  return ((uint64_t)hi << 32) | lo;
}

/*
 * ns = ns_base + (((rdtsc - tsc_base) * (u32)mul) >> shift), the product taken
 * in 128 bits. The page is only rewritten while the vCPU is paused, so the seq
 * loop practically never retries, but it is cheap. A TSC below tsc_base (only
 * possible if the VMM set tsc_base in the future) counts as a delta of 0
 * rather than wrapping to an enormous value.
 */
uint64_t clock_ns(void) {
  const volatile struct kemari_clock *c = KEMARI_CLOCK;
  for (;;) {
    uint32_t s1 = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
    if (s1 & 1) continue;
    uint32_t shift = c->shift;
    uint64_t tsc_base = c->tsc_base;
    uint64_t ns_base = c->ns_base;
    uint32_t mul = (uint32_t)c->mul;
    uint64_t tsc = rdtsc();
    uint32_t s2 = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
    if (s1 != s2) continue;
    uint64_t delta = tsc > tsc_base ? tsc - tsc_base : 0;
    unsigned __int128 prod = (unsigned __int128)delta * mul;
    return ns_base + (uint64_t)(prod >> (shift & 127));
  }
}

void sleep_until(uint64_t deadline_ns) {
  for (;;) {
    uint32_t seen = event_seq();
    if (clock_ns() >= deadline_ns) return;
    hc_wait(deadline_ns, seen);
  }
}

void sleep_ns(uint64_t ns) { sleep_until(clock_ns() + ns); }

/* ---- Heap ---- */

static uint64_t heap_next, heap_limit;

void kemari_heap_init(void) {
  const volatile struct kemari_boot *b = KEMARI_BOOT;
  uint64_t start = b->heap_start;
  uint64_t image_end = (uint64_t)(uintptr_t)__image_end;
  if (start < image_end) start = image_end; /* never hand out our own bss */
  heap_next = (start + KEMARI_PAGE_SIZE - 1) & ~(uint64_t)(KEMARI_PAGE_SIZE - 1);
  uint64_t top = b->stack_top;
  heap_limit = top > KEMARI_STACK_RESERVE ? top - KEMARI_STACK_RESERVE : 0;
  if (heap_limit < heap_next) heap_limit = heap_next; /* empty heap */
}

void *heap_alloc(size_t size, size_t align) {
  if (align < 16) align = 16;
  if (align & (align - 1)) panic("heap_alloc: alignment %lu is not a power of two", align);
  uint64_t p = (heap_next + align - 1) & ~(uint64_t)(align - 1);
  if (p < heap_next || size > heap_limit || p > heap_limit - size) {
    panic("heap exhausted: want %lu bytes, %lu free", size, heap_free_bytes());
  }
  heap_next = p + size;
  return (void *)(uintptr_t)p;
}

uint64_t heap_free_bytes(void) { return heap_limit - heap_next; }

/* ---- CPU ---- */

void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *a, uint32_t *b, uint32_t *c,
           uint32_t *d) {
  __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(subleaf));
}

int cpu_has_avx512(void) {
  uint32_t a, b, c, d;
  cpuid(0, 0, &a, &b, &c, &d);
  if (a < 7) return 0;
  cpuid(1, 0, &a, &b, &c, &d);
  if (!(c & (1u << 27))) return 0; /* OSXSAVE: xgetbv usable */
  uint32_t xlo, xhi;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  /* XCR0: SSE(1) AVX(2) opmask(5) ZMM_Hi256(6) Hi16_ZMM(7) */
  if ((xlo & 0xe6) != 0xe6) return 0;
  cpuid(7, 0, &a, &b, &c, &d);
  int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1;
  return avx2 && avx512f && avx512bw;
}

/* ---- Startup ---- */

void kemari_start(void) __attribute__((noreturn, used));

void kemari_start(void) {
  const volatile struct kemari_boot *b = KEMARI_BOOT;
  if (b->magic != KEMARI_BOOT_MAGIC) panic("bad boot magic 0x%lx", (uint64_t)b->magic);
  if (b->abi_version != KEMARI_ABI_VERSION) {
    panic("boot page ABI version %u, guest expects %u", b->abi_version, KEMARI_ABI_VERSION);
  }
  uint64_t v = hc_version();
  if (v != KEMARI_ABI_VERSION) {
    panic("HC_VERSION returned %lu, guest expects %u", v, KEMARI_ABI_VERSION);
  }
  kemari_args_init();
  kemari_heap_init();
  kemari_block_init();
  int rc = kemari_main();
  console_flush(2 * NS_PER_SEC);
  hc_exit((uint64_t)(int64_t)rc);
}
