/**
 * Builds the CPL-3 long-mode environment the reference guest runs in: page
 * tables, GDT, IDT with ring-0 crash stubs, the TSS with its I/O bitmap (kvm-pvm
 * checks the bitmap and ignores IOPL), and the initial register state.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { GPA, PAGE_SIZE, PORT, SEL } from "./layout.ts";

const P = 1n, RW = 2n, US = 4n, PS = 0x80n;
const MiB2 = 2 * 1024 * 1024;
const GiB = 1024 ** 3;

/** Writes the page tables: identity map of all RAM; see kemari_abi.h. */
export function writePageTables(mem: GuestMemory): void {
  const ram = mem.size;
  mem.setU64(GPA.pml4, BigInt(GPA.pdpt) | P | RW | US);
  const gibs = Math.ceil(ram / GiB);
  for (let g = 0; g < gibs; g++) {
    const pd = GPA.pd + g * PAGE_SIZE;
    mem.setU64(GPA.pdpt + 8 * g, BigInt(pd) | P | RW | US);
    for (let i = 0; i < 512; i++) {
      const base = g * GiB + i * MiB2;
      if (base >= ram) break;
      mem.setU64(pd + 8 * i, BigInt(base) | P | RW | US | PS);
    }
  }
  // The first 2 MiB in 4 KiB pages: null page absent, system pages
  // supervisor-only, boot/clock/event pages read-only for the guest.
  mem.setU64(GPA.pd, BigInt(GPA.pt0) | P | RW | US);
  for (let i = 0; i < 512; i++) {
    const gpa = i * PAGE_SIZE;
    let flags: bigint;
    if (i === 0) flags = 0n;
    else if (gpa < GPA.boot) flags = P | RW;
    else if (gpa === GPA.boot || gpa === GPA.clock || gpa === GPA.events) flags = P | US;
    else flags = P | RW | US;
    mem.setU64(GPA.pt0 + 8 * i, flags === 0n ? 0n : BigInt(gpa) | flags);
  }
}

const TSS_IOMAP = 0x68;
/** TSS limit: header, 8 KiB bitmap, and the closing 0xff byte. */
export const TSS_LIMIT = TSS_IOMAP + 8192;

/** Vectors for which the CPU pushes an error code. */
const HAS_ERROR_CODE = new Set([8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
const STUB_SIZE = 16;
const VECTORS = 32;

/** Writes GDT, TSS (with an all-zero I/O bitmap: every port allowed), IDT and stubs. */
export function writeSystemTables(mem: GuestMemory): void {
  const gdt = [
    0n,
    0x00af9a000000ffffn, // 0x08 kernel code, 64-bit
    0x00cf92000000ffffn, // 0x10 kernel data
    0x00affa000000ffffn, // 0x18 user code, 64-bit, DPL 3
    0x00cff2000000ffffn, // 0x20 user data, DPL 3
  ];
  gdt.forEach((d, i) => mem.setU64(GPA.gdt + 8 * i, d));
  // 0x28: 64-bit available TSS (16 bytes).
  const base = BigInt(GPA.tss), limit = BigInt(TSS_LIMIT);
  const low = (limit & 0xffffn) | ((base & 0xffffffn) << 16n) | (0x89n << 40n) |
    (((limit >> 16n) & 0xfn) << 48n) | (((base >> 24n) & 0xffn) << 56n);
  mem.setU64(GPA.gdt + SEL.tss, low);
  mem.setU64(GPA.gdt + SEL.tss + 8, base >> 32n);

  // TSS: rsp0 for the crash stubs, I/O map base, zero bitmap, 0xff terminator.
  mem.writable(GPA.tss, TSS_LIMIT + 1).fill(0);
  mem.setU64(GPA.tss + 4, BigInt(GPA.ring0StackTop));
  mem.writable(GPA.tss + 0x66, 2).set([TSS_IOMAP & 0xff, TSS_IOMAP >> 8]);
  mem.writable(GPA.tss + TSS_LIMIT, 1)[0] = 0xff;

  // Stubs: [push $0]; push $vector; out %al, $crash; jmp .
  for (let v = 0; v < VECTORS; v++) {
    const code: number[] = [];
    if (!HAS_ERROR_CODE.has(v)) code.push(0x6a, 0x00);
    code.push(0x68, v, 0, 0, 0, 0xe6, PORT.crash, 0xeb, 0xfe);
    const stub = GPA.stubs + v * STUB_SIZE;
    mem.write(stub, new Uint8Array(code));
    // 64-bit interrupt gate; DPL 3 for #BP and #OF so int3/into report themselves.
    const dpl = v === 3 || v === 4 ? 3n : 0n;
    const off = BigInt(stub);
    const gLow = (off & 0xffffn) | (BigInt(SEL.kernelCode) << 16n) |
      ((0x8en | (dpl << 5n)) << 40n) | (((off >> 16n) & 0xffffn) << 48n);
    mem.setU64(GPA.idt + 16 * v, gLow);
    mem.setU64(GPA.idt + 16 * v + 8, off >> 32n);
  }
}

/** A kvm_segment value. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
}

/** Segment and control-register values for the guest's first instruction. */
export function initialSegments(): {
  code: Segment;
  data: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: { base: bigint; limit: number };
  idt: { base: bigint; limit: number };
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
} {
  const flat = { base: 0n, limit: 0xffffffff, present: 1, dpl: 3, s: 1, g: 1 };
  return {
    code: { ...flat, selector: SEL.userCode, type: 11, db: 0, l: 1 },
    data: { ...flat, selector: SEL.userData, type: 3, db: 1, l: 0 },
    tr: {
      base: BigInt(GPA.tss),
      limit: TSS_LIMIT,
      selector: SEL.tss,
      type: 11,
      present: 1,
      dpl: 0,
      db: 0,
      s: 0,
      l: 0,
      g: 0,
    },
    ldt: { base: 0n, limit: 0, selector: 0, type: 2, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0 },
    gdt: { base: BigInt(GPA.gdt), limit: SEL.tss + 16 - 1 },
    idt: { base: BigInt(GPA.idt), limit: VECTORS * 16 - 1 },
    cr0: 0x80050033n,
    cr3: BigInt(GPA.pml4),
    cr4: 0x50620n,
    efer: 0xd01n,
  };
}
