/*
 * The kemari reference guest runtime.
 *
 * A program provides `int kemari_main(void)`; the runtime checks the boot
 * page, parses the args, calls it, drains the console and exits with its
 * return value (HC_EXIT). Everything is single-threaded and polled: there are
 * no interrupts, so "waiting" means HC_WAIT until the event page's seq moves
 * or a PV-clock deadline passes, then re-checking.
 *
 * The whole guest is built with -mgeneral-regs-only: the compiler never
 * touches an x87/SSE/AVX/opmask register, so programs may keep state in
 * vector registers across the whole run with explicit inline asm.
 */
#ifndef KEMARI_H
#define KEMARI_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "kemari_abi.h"
#include "xen_ring.h"

#define KEMARI_NORETURN __attribute__((noreturn))
#define KEMARI_PRINTF(f, a) __attribute__((format(printf, f, a)))

#define NS_PER_SEC 1000000000ull
#define NS_PER_MS 1000000ull

/* ---- Fixed pages ---- */
#define KEMARI_BOOT ((const volatile struct kemari_boot *)(uintptr_t)KEMARI_BOOT_GPA)
#define KEMARI_CLOCK ((const volatile struct kemari_clock *)(uintptr_t)KEMARI_CLOCK_GPA)
#define KEMARI_EVENTS ((const volatile struct kemari_events *)(uintptr_t)KEMARI_EVENT_GPA)
#define KEMARI_CONSOLE ((struct xencons_interface *)(uintptr_t)KEMARI_CONSOLE_GPA)
#define KEMARI_BLOCK_RING ((struct blkif_sring *)(uintptr_t)KEMARI_BLOCK_GPA)

/* The program's entry point. Its return value becomes the HC_EXIT code. */
int kemari_main(void);

/* ---- Hypercalls (out %eax, $0xf1; rax=nr, rdi, rsi, rdx; result in rax) ---- */
uint64_t hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2);
uint64_t hc_version(void);
/* Returns when events->seq != seen_seq, the PV clock passed deadline_ns, or
 * spuriously. Returns the current event seq. Always loop and re-check. */
uint32_t hc_wait(uint64_t deadline_ns, uint32_t seen_seq);
KEMARI_NORETURN void hc_exit(uint64_t code);
/* Raw HC_PANIC: msg must be in guest memory (it is: virtual == physical). */
KEMARI_NORETURN void hc_panic(const char *msg, size_t len);

/* Doorbells (any value, write only). */
void doorbell_console(void);
void doorbell_block(void);

/* ---- Event page ---- */
uint32_t event_seq(void);    /* seq_cst load of events->seq */
uint32_t bad_requests(void); /* seq_cst load of events->bad_requests */

/* ---- Time (PV clock page; rdtsc is used for nothing else) ---- */
uint64_t clock_ns(void);
void sleep_until(uint64_t deadline_ns); /* returns once clock_ns() >= deadline */
void sleep_ns(uint64_t ns);

/* ---- Args: "key=value key=value" from the boot page ---- */
const char *args_raw(void); /* the whole string as the VMM passed it */
int arg_has(const char *key);
/* The value of the last "key=..." (a bare "key" has value ""), else def. */
const char *arg_str(const char *key, const char *def);
/* Decimal or 0x-hex; panics on a malformed value. */
uint64_t arg_u64(const char *key, uint64_t def);

/* ---- Console (xencons_interface out[]) ---- */
/* Blocks while the ring is full; rings the console doorbell. */
void console_write(const void *buf, size_t len);
void console_puts(const char *s);
/* Waits until the backend consumed everything (out_cons == out_prod).
 * Returns 1 when drained, 0 on timeout. */
int console_flush(uint64_t timeout_ns);
/* Non-blocking read of in[]; returns the number of bytes copied. */
size_t console_read(void *buf, size_t len);

/* ---- Formatted output ----
 * Conversions: %d %i %u %x %X %c %s %p %%, length l/ll/z/h (ignored for
 * narrower types), flags '-' and '0', a width (number or '*'), and a
 * precision for %s only. l and ll are both 64-bit. */
int printf(const char *fmt, ...) KEMARI_PRINTF(1, 2);
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) KEMARI_PRINTF(3, 4);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
/* Formats the message, drains the console briefly and calls HC_PANIC. */
KEMARI_NORETURN void panic(const char *fmt, ...) KEMARI_PRINTF(1, 2);

/* ---- Freestanding libc subset (gcc may emit calls to the mem* ones) ---- */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);

/* zlib-compatible CRC-32 (IEEE, reflected 0xEDB88320): crc32(0, buf, len). */
uint32_t crc32(uint32_t crc, const void *buf, size_t len);

/* ---- Heap: a bump allocator over [boot->heap_start, stack_top - 1 MiB) ---- */
#define KEMARI_STACK_RESERVE (1024u * 1024u)
void *heap_alloc(size_t size, size_t align); /* panics when exhausted */
uint64_t heap_free_bytes(void);

/* ---- CPU ---- */
void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *a, uint32_t *b, uint32_t *c,
           uint32_t *d);
/* 1 if AVX2, AVX-512F and AVX-512BW are present and enabled in XCR0. */
int cpu_has_avx512(void);

/* ---- Block device (blkif ring at KEMARI_BLOCK_GPA) ----
 *
 * The helpers are synchronous: one request in flight at a time. Because of
 * that the private indexes are re-derived from the shared ring on every
 * request: req_prod_pvt = sring->req_prod (only the guest writes it) and
 * rsp_cons = sring->rsp_prod (nothing is outstanding between calls). After a
 * ring overrun the backend sets its req_cons to req_prod and leaves rsp_prod
 * alone; the next request simply continues from there.
 */
#define BLK_TIMEOUT (-1000) /* blk_submit: no response before the deadline */

uint64_t blk_sectors(void); /* boot->disk_sectors; 0 = no disk */
int blk_readonly(void);

/* Posts *req (its id is used as given), rings the doorbell and waits for the
 * response, copying it to *rsp. timeout_ns == 0 waits forever. Returns 0 or
 * BLK_TIMEOUT. Panics if the response id does not match the request. */
int blk_submit(const struct blkif_request *req, struct blkif_response *rsp,
               uint64_t timeout_ns);

/* Read/write nsect sectors starting at sector. Any buffer works: a 512-byte
 * aligned buffer at or above 0x100000 is used directly (up to 11 pages per
 * request), anything else goes through an internal bounce buffer. Large
 * transfers are split into several requests. Returns the first non-zero
 * BLKIF_RSP_* status, or 0. */
int blk_read(uint64_t sector, void *buf, uint32_t nsect);
int blk_write(uint64_t sector, const void *buf, uint32_t nsect);
int blk_flush(void); /* FLUSH_DISKCACHE, no segments */
uint64_t blk_next_id(void);

/* Internal: called once by the runtime before kemari_main. */
void kemari_args_init(void);
void kemari_heap_init(void);
void kemari_block_init(void);

#endif
