/**
 * Guest RAM as the VMM and device backends see it: a bounds-checked view over
 * one contiguous region, with a record of every page the VMM itself writes.
 *
 * KVM's dirty log never sees writes made by the VMM, so every backend write
 * goes through this class (or calls {@link GuestMemory.markDirty}); the
 * checkpoint harvests the union of both.
 * @module
 */

import { PAGE_SIZE } from "../machine/layout.ts";

/** A guest-controlled address or length fell outside guest RAM. */
export class GuestAccessError extends Error {
  constructor(readonly gpa: number, readonly length: number, readonly size: number) {
    super(`guest access out of range: gpa 0x${gpa.toString(16)} length ${length} (RAM ${size})`);
    this.name = "GuestAccessError";
  }
}

/** Guest RAM plus the set of pages the VMM has written since the last harvest. */
export class GuestMemory {
  /** Every byte of guest RAM. */
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly pages: number;
  /** One bit per page written by the VMM since the last {@link takeDirty}. */
  #vmmDirty: Uint8Array;
  #anyDirty = false;

  constructor(readonly buffer: ArrayBuffer, readonly size: number = buffer.byteLength) {
    if (size % PAGE_SIZE !== 0 || size > buffer.byteLength) {
      throw new RangeError(`guest RAM size ${size} is not a whole number of pages`);
    }
    this.bytes = new Uint8Array(buffer, 0, size);
    this.view = new DataView(buffer, 0, size);
    this.pages = size / PAGE_SIZE;
    this.#vmmDirty = new Uint8Array(Math.ceil(this.pages / 8));
  }

  /** Throws {@link GuestAccessError} unless [gpa, gpa+length) lies in RAM. */
  check(gpa: number, length: number): void {
    if (
      !Number.isSafeInteger(gpa) || !Number.isSafeInteger(length) || gpa < 0 || length < 0 ||
      gpa + length > this.size
    ) {
      throw new GuestAccessError(gpa, length, this.size);
    }
  }

  /** True when [gpa, gpa+length) lies in RAM. */
  contains(gpa: number, length: number): boolean {
    return Number.isSafeInteger(gpa) && Number.isSafeInteger(length) && gpa >= 0 && length >= 0 &&
      gpa + length <= this.size;
  }

  /** A live read-only-by-convention view; the caller must not write through it. */
  read(gpa: number, length: number): Uint8Array {
    this.check(gpa, length);
    return this.bytes.subarray(gpa, gpa + length);
  }

  /** A live view that the caller will write into: its pages are marked dirty. */
  writable(gpa: number, length: number): Uint8Array {
    this.check(gpa, length);
    this.markDirty(gpa, length);
    return this.bytes.subarray(gpa, gpa + length);
  }

  /** Copies data into guest RAM and marks the pages dirty. */
  write(gpa: number, data: Uint8Array): void {
    this.writable(gpa, data.length).set(data);
  }

  u32(gpa: number): number {
    this.check(gpa, 4);
    return this.view.getUint32(gpa, true);
  }

  u64(gpa: number): bigint {
    this.check(gpa, 8);
    return this.view.getBigUint64(gpa, true);
  }

  setU32(gpa: number, value: number): void {
    this.check(gpa, 4);
    this.markDirty(gpa, 4);
    this.view.setUint32(gpa, value >>> 0, true);
  }

  setU64(gpa: number, value: bigint): void {
    this.check(gpa, 8);
    this.markDirty(gpa, 8);
    this.view.setBigUint64(gpa, BigInt.asUintN(64, value), true);
  }

  /** Records that the VMM wrote [gpa, gpa+length). */
  markDirty(gpa: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(gpa / PAGE_SIZE);
    const last = Math.floor((gpa + length - 1) / PAGE_SIZE);
    for (let p = first; p <= last; p++) this.#vmmDirty[p >> 3] |= 1 << (p & 7);
    this.#anyDirty = true;
  }

  /**
   * ORs the VMM's dirty pages into `bitmap` (one bit per page, little-endian
   * bit order as KVM's log) and clears the VMM's record.
   */
  takeDirty(bitmap: Uint8Array): void {
    if (!this.#anyDirty) return;
    const src = this.#vmmDirty;
    const words = src.length >> 2;
    const s32 = new Uint32Array(src.buffer, src.byteOffset, words);
    for (let w = 0; w < words; w++) {
      if (s32[w] === 0) continue;
      for (let i = w * 4; i < w * 4 + 4; i++) bitmap[i] |= src[i];
      s32[w] = 0;
    }
    for (let i = words * 4; i < src.length; i++) {
      bitmap[i] |= src[i];
      src[i] = 0;
    }
    this.#anyDirty = false;
  }

  /** Bytes of a dirty bitmap covering this RAM. */
  get bitmapBytes(): number {
    return Math.ceil(this.pages / 8);
  }
}
