/**
 * The guest <-> VMM ABI (version 1), mirrored from guest/include/kemari_abi.h.
 * tests/machine/layout_test.ts checks every value here against the C header.
 * @module
 */

export const ABI_VERSION = 1;
export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

/** Guest-physical addresses of the fixed pages. */
export const GPA = {
  gdt: 0x1000,
  idt: 0x2000,
  tss: 0x3000, // 0x68 bytes, then the 8 KiB I/O bitmap and a 0xff byte
  stubs: 0x6000, // ring-0 crash stubs
  ring0StackTop: 0x9000, // stack page 0x8000..0x9000
  pml4: 0x9000,
  pdpt: 0xa000,
  pt0: 0xb000, // 4 KiB page table for the first 2 MiB
  pd: 0x10000, // one page directory per GiB of RAM
  boot: 0x60000,
  clock: 0x61000,
  events: 0x62000,
  console: 0x63000,
  block: 0x64000,
  netTx: 0x65000,
  netRx: 0x66000,
  guestFree: 0x100000,
  image: 0x200000,
} as const;

/** The largest RAM the page-table area can map (PDs from 0x10000 to 0x60000). */
export const MAX_RAM_BYTES = 80 * 1024 ** 3;
export const MIN_RAM_BYTES = 4 * 1024 * 1024;

export const PORT = {
  crash: 0xf0,
  hypercall: 0xf1,
  doorbellConsole: 0xf2,
  doorbellBlock: 0xf3,
  doorbellNet: 0xf4,
} as const;

export const HC = {
  version: 0,
  wait: 1,
  exit: 2,
  panic: 3,
  bad: -1,
} as const;

export const BOOT_MAGIC = 0x54424952414d454bn; // "KEMARIBT"
export const ARGS_OFFSET = 0x400;
export const ARGS_MAX = 1024;
export const DISK_READONLY = 1;
export const NET_PRESENT = 1;

/** Field offsets of struct kemari_boot. */
export const BOOT = {
  magic: 0,
  abiVersion: 8,
  flags: 12,
  ramBytes: 16,
  heapStart: 24,
  stackTop: 32,
  diskSectors: 40,
  diskFlags: 48,
  consoleSlots: 52,
  bootId: 56,
  mac: 64,
  netFlags: 70,
  netMtu: 72,
  reserved0: 76,
} as const;

/** Field offsets of struct kemari_clock. */
export const CLOCK = {
  seq: 0,
  shift: 4,
  tscBase: 8,
  nsBase: 16,
  mul: 24,
  tscKhz: 32,
} as const;

/** Field offsets of struct kemari_events. */
export const EVENTS = {
  seq: 0,
  badRequests: 4,
} as const;

/** GDT selectors. */
export const SEL = {
  kernelCode: 0x08,
  kernelData: 0x10,
  userCode: 0x18 | 3,
  userData: 0x20 | 3,
  tss: 0x28,
} as const;
