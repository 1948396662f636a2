/*
 * kemari guest <-> VMM ABI, version 1.
 *
 * The one contract between the reference guest and the kemari VMM. The
 * TypeScript mirror is machine/layout.ts; tests/machine/layout_test.ts compiles
 * this header with gcc and checks every constant and offset against it.
 *
 * The guest runs at CPL 3 in 64-bit mode with paging; virtual == physical.
 * Guest-physical map (all addresses are GPAs):
 *
 *   0x000000  null page, not mapped
 *   0x001000  GDT, IDT, TSS + I/O bitmap, ring-0 crash stubs,
 *             ring-0 stack, page tables             (supervisor only)
 *   0x060000  boot info page                         (user, read-only)
 *   0x061000  PV clock page                          (user, read-only)
 *   0x062000  event page                             (user, read-only)
 *   0x063000  console ring (xencons_interface)       (user, read-write)
 *   0x064000  block ring (blkif shared ring, 32 slots)
 *   0x065000  net tx ring, 0x066000 net rx ring      (reserved)
 *   0x100000  free guest memory (I/O buffers may live here)
 *   0x200000  guest image (ELF PT_LOAD segments); heap after it;
 *             stack at the top of RAM, growing down
 */
#ifndef KEMARI_ABI_H
#define KEMARI_ABI_H

#ifndef __ASSEMBLER__
#include <stdint.h>
#endif

#define KEMARI_ABI_VERSION 1u

#define KEMARI_PAGE_SIZE 4096u
#define KEMARI_BOOT_GPA 0x60000u
#define KEMARI_CLOCK_GPA 0x61000u
#define KEMARI_EVENT_GPA 0x62000u
#define KEMARI_CONSOLE_GPA 0x63000u
#define KEMARI_BLOCK_GPA 0x64000u
#define KEMARI_NET_TX_GPA 0x65000u
#define KEMARI_NET_RX_GPA 0x66000u
#define KEMARI_GUEST_FREE_GPA 0x100000u
#define KEMARI_IMAGE_GPA 0x200000u

/* Ports (the TSS I/O bitmap allows all of them). */
#define KEMARI_PORT_CRASH 0xf0u     /* ring-0 crash stubs only */
#define KEMARI_PORT_HYPERCALL 0xf1u /* out %eax: rax=nr, rdi, rsi, rdx args */
#define KEMARI_PORT_DB_CONSOLE 0xf2u /* doorbells: any value, write only */
#define KEMARI_PORT_DB_BLOCK 0xf3u
#define KEMARI_PORT_DB_NET 0xf4u

/* Hypercalls. Every hypercall is idempotent: repeating one is harmless. */
#define KEMARI_HC_VERSION 0u /* -> KEMARI_ABI_VERSION */
#define KEMARI_HC_WAIT 1u    /* (deadline_ns, seen_seq) -> current event seq */
#define KEMARI_HC_EXIT 2u    /* (code): the guest is done; the VMM keeps code & 0xff */
#define KEMARI_HC_PANIC 3u   /* (msg_gpa, len <= 4096): guest-detected failure */
#define KEMARI_HC_BAD -1     /* unknown hypercall: rax = 0xffffffffffffffff */

#define KEMARI_BOOT_MAGIC 0x54424952414d454bull /* "KEMARIBT" */
#define KEMARI_ARGS_OFFSET 0x400u
#define KEMARI_ARGS_MAX 1024u

#define KEMARI_DISK_READONLY 1u
#define KEMARI_NET_PRESENT 1u

/*
 * Network device (netif rings, Xen layout; see xen_ring.h): a tx ring at
 * KEMARI_NET_TX_GPA and an rx ring at KEMARI_NET_RX_GPA, 256 slots each. In
 * KVM mode every gref is a guest page frame number (GPA >> 12) of a page at
 * or above KEMARI_GUEST_FREE_GPA. tx: the guest posts netif_tx_request
 * {gref, offset, flags, id, size} for a whole Ethernet frame in one page
 * (offset + size <= 4096, no more_data), rings KEMARI_PORT_DB_NET; the VMM
 * answers netif_tx_response {id, status}. rx: the guest posts
 * netif_rx_request {id, gref} buffers and rings the doorbell; the VMM fills a
 * buffer with one frame from offset 0 and answers netif_rx_response {id,
 * offset 0, flags, status = frame length, or < 0 on error}. Frames are
 * Ethernet II without FCS, at most net_mtu + 14 bytes.
 */

#ifndef __ASSEMBLER__
/* Boot info page, written by the VMM before the first instruction. */
struct kemari_boot {
  uint64_t magic;          /* 0   KEMARI_BOOT_MAGIC */
  uint32_t abi_version;    /* 8 */
  uint32_t flags;          /* 12  reserved, 0 */
  uint64_t ram_bytes;      /* 16 */
  uint64_t heap_start;     /* 24  first free byte after the image */
  uint64_t stack_top;      /* 32 */
  uint64_t disk_sectors;   /* 40  512-byte sectors; 0 = no disk */
  uint32_t disk_flags;     /* 48  KEMARI_DISK_* */
  uint32_t console_slots;  /* 52  reserved, 0 */
  uint64_t boot_id;        /* 56  random per VM, kept across restore */
  uint8_t mac[6];          /* 64  the guest NIC's MAC (net_flags & KEMARI_NET_PRESENT) */
  uint16_t net_flags;      /* 70  KEMARI_NET_* */
  uint32_t net_mtu;        /* 72  largest frame payload (IP packet) the NIC carries */
  uint32_t reserved0;      /* 76 */
  /* args: NUL-terminated "key=value key=value" at KEMARI_ARGS_OFFSET */
};

/*
 * PV clock page:
 *   ns = ns_base + (((rdtsc - tsc_base) * mul) >> shift)
 * with the product taken in 128 bits, and a delta of 0 when rdtsc < tsc_base.
 * seq is odd while the VMM rewrites it (only while the vCPU is paused). After
 * a restore on another host the VMM rewrites tsc_base for that host's TSC and
 * ns_base to the guest time at the save, so guest time never goes back.
 */
struct kemari_clock {
  uint32_t seq;      /* 0 */
  uint32_t shift;    /* 4 */
  uint64_t tsc_base; /* 8 */
  uint64_t ns_base;  /* 16 */
  uint64_t mul;      /* 24 (only the low 32 bits are used) */
  uint64_t tsc_khz;  /* 32 */
};

/*
 * Event page: the VMM adds 1 to seq whenever it posts anything to the guest
 * (responses, console input, console output consumed). bad_requests counts
 * every refused request plus each ring overrun, and moves before the
 * response to the refused request is posted.
 *
 * I/O data pages (blkif segment grefs are guest page frame numbers in KVM
 * mode) must lie at or above KEMARI_GUEST_FREE_GPA.
 *
 * Ring overrun (req_prod - req_cons > ring size, u32): the backend counts a
 * bad request, sets its req_cons to the req_prod it read, posts no response
 * and leaves rsp_prod alone; the guest re-syncs from the shared ring. A
 * console out_prod more than 2048 bytes ahead: out_cons = out_prod.
 */
struct kemari_events {
  uint32_t seq;          /* 0 */
  uint32_t bad_requests; /* 4  malformed requests the VMM refused */
};
#endif

#endif
