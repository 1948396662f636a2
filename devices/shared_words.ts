/**
 * 32-bit index words in shared guest pages (ring producer/consumer indexes,
 * event counters, seqlocks), accessed with sequentially consistent atomics.
 *
 * JavaScript has no explicit memory fences; `Atomics.load`/`Atomics.store`
 * are seq-cst (V8 emits `xchg` for the store on x86-64), so an index store
 * also orders every earlier write of the backend. Every store is recorded as
 * a VMM write in {@link GuestMemory} so the checkpoint copies the page.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";

/** Atomic u32 access to aligned words of guest RAM. */
export class SharedWords {
  readonly #words: Int32Array;

  /** Word access to all of `mem`. */
  constructor(readonly mem: GuestMemory) {
    this.#words = new Int32Array(mem.buffer, 0, Math.floor(mem.size / 4));
  }

  /** Reads the u32 at `gpa` (4-byte aligned, inside RAM). */
  load(gpa: number): number {
    return Atomics.load(this.#words, this.#index(gpa)) >>> 0;
  }

  /** Writes the u32 at `gpa` and marks its page dirty. */
  store(gpa: number, value: number): void {
    const index = this.#index(gpa);
    this.mem.markDirty(gpa, 4);
    Atomics.store(this.#words, index, value | 0);
  }

  /** Adds `delta` modulo 2^32 to the u32 at `gpa`, marks it dirty, returns the new value. */
  add(gpa: number, delta: number): number {
    const index = this.#index(gpa);
    this.mem.markDirty(gpa, 4);
    return (Atomics.add(this.#words, index, delta | 0) + delta) >>> 0;
  }

  #index(gpa: number): number {
    this.mem.check(gpa, 4);
    if (gpa % 4 !== 0) throw new RangeError(`shared word at 0x${gpa.toString(16)} is not aligned`);
    return gpa / 4;
  }
}

/** `a - b` on free-running u32 indexes. */
export function u32Distance(a: number, b: number): number {
  return (a - b) >>> 0;
}
