/**
 * Loads a guest ELF64 image (x86-64, PT_LOAD segments only) into guest RAM.
 * The image is untrusted input: every offset and size is checked.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { GPA, PAGE_SIZE } from "./layout.ts";

/** The guest image cannot be loaded. */
export class GuestImageError extends Error {
  constructor(message: string) {
    super(`guest image: ${message}`);
    this.name = "GuestImageError";
  }
}

export interface LoadedImage {
  entry: number;
  /** First page-aligned byte after the highest segment. */
  end: number;
}

const PT_LOAD = 1;
const STACK_RESERVE = 1024 * 1024;

/** Copies the PT_LOAD segments of `elf` into `mem`, zero-filling bss. */
export function loadElf(mem: GuestMemory, elf: Uint8Array): LoadedImage {
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (elf.length < 64 || dv.getUint32(0, false) !== 0x7f454c46) {
    throw new GuestImageError("not an ELF file");
  }
  if (elf[4] !== 2 || elf[5] !== 1) throw new GuestImageError("not a little-endian ELF64 file");
  if (dv.getUint16(18, true) !== 62) throw new GuestImageError("not an x86-64 executable");
  const entry = Number(dv.getBigUint64(24, true));
  const phoff = Number(dv.getBigUint64(32, true));
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  if (phentsize < 56 || phoff + phnum * phentsize > elf.length) {
    throw new GuestImageError("program headers out of range");
  }
  const limit = mem.size - STACK_RESERVE;
  let end: number = GPA.image;
  let entryInside = false;
  for (let i = 0; i < phnum; i++) {
    const h = phoff + i * phentsize;
    if (dv.getUint32(h, true) !== PT_LOAD) continue;
    const offset = Number(dv.getBigUint64(h + 8, true));
    const vaddr = Number(dv.getBigUint64(h + 16, true));
    const filesz = Number(dv.getBigUint64(h + 32, true));
    const memsz = Number(dv.getBigUint64(h + 40, true));
    if (filesz > memsz || offset + filesz > elf.length) {
      throw new GuestImageError(`segment ${i} has bad sizes`);
    }
    if (vaddr < GPA.image || vaddr + memsz > limit) {
      throw new GuestImageError(
        `segment ${i} at 0x${vaddr.toString(16)}+${memsz} is outside 0x${
          GPA.image.toString(16)
        }..0x${limit.toString(16)} (too little RAM?)`,
      );
    }
    mem.write(vaddr, elf.subarray(offset, offset + filesz));
    mem.writable(vaddr + filesz, memsz - filesz).fill(0);
    end = Math.max(end, vaddr + memsz);
    if (entry >= vaddr && entry < vaddr + memsz) entryInside = true;
  }
  if (!entryInside) throw new GuestImageError(`entry 0x${entry.toString(16)} is in no segment`);
  return { entry, end: Math.ceil(end / PAGE_SIZE) * PAGE_SIZE };
}
