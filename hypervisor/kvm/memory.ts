/**
 * Guest RAM for a KVM VM: a memfd (so another process can map it), one memory
 * slot with manual-protect dirty logging, and the dirty harvest that joins
 * KVM's log with the pages the VMM wrote.
 * @module
 */

import { check, cstring, libc, MFD_CLOEXEC, mmapShared, munmap } from "../../ffi/libc.ts";
import { GuestMemory } from "../guest_memory.ts";
import type { KvmVm } from "./vm.ts";

const SLOT = 0;

/** Guest RAM in a memfd, registered with a VM. */
export class KvmRam {
  readonly memory: GuestMemory;
  readonly hostAddress: bigint;
  /** Reused bitmap buffers: one per harvest, never allocated on the hot path. */
  #kvmBitmap: Uint8Array<ArrayBuffer>;

  #mapping: Deno.PointerObject;

  private constructor(readonly vm: KvmVm, readonly memfd: number, readonly size: number) {
    const p = mmapShared(memfd, size);
    this.#mapping = p;
    this.hostAddress = BigInt(Deno.UnsafePointer.value(p));
    this.memory = new GuestMemory(Deno.UnsafePointerView.getArrayBuffer(p, size), size);
    this.#kvmBitmap = new Uint8Array(Math.ceil(this.memory.pages / 64) * 8);
  }

  /**
   * Unmaps guest RAM. Every view of it (GuestMemory, Workers' views) is dead
   * afterwards: call only when nothing touches guest memory any more.
   */
  unmap(): void {
    munmap(this.#mapping, this.size);
  }

  /** Creates `size` bytes of zeroed RAM with dirty logging on (every page starts dirty). */
  static create(vm: KvmVm, size: number): KvmRam {
    const fd = check("memfd_create", libc().memfd_create(cstring("kemari-guest-ram"), MFD_CLOEXEC));
    check("ftruncate", libc().ftruncate(fd, BigInt(size)));
    const ram = new KvmRam(vm, fd, size);
    vm.enableManualDirtyProtect();
    vm.setMemoryRegion(SLOT, 0, size, ram.hostAddress, true);
    return ram;
  }

  /**
   * Returns the pages dirtied since the last harvest (KVM's log ∪ the VMM's
   * writes) as a bitmap, and re-arms tracking for them. Call with the vCPU
   * paused. The returned buffer is reused by the next call.
   */
  harvest(): Uint8Array<ArrayBuffer> {
    const bitmap = this.#kvmBitmap;
    this.vm.getDirtyLog(SLOT, bitmap);
    this.vm.clearDirtyLog(SLOT, this.memory.pages, bitmap);
    this.memory.takeDirty(bitmap);
    return bitmap;
  }
}

/** Page numbers set in `bitmap`, in ascending order. */
export function dirtyPages(bitmap: Uint8Array, pages: number): number[] {
  const out: number[] = [];
  const words = new Uint32Array(bitmap.buffer, bitmap.byteOffset, bitmap.byteLength >> 2);
  for (let w = 0; w < words.length; w++) {
    let v = words[w];
    while (v !== 0) {
      const bit = 31 - Math.clz32(v & -v);
      const page = w * 32 + bit;
      if (page < pages) out.push(page);
      v &= v - 1;
    }
  }
  return out;
}
