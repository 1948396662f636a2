/**
 * The KVM dirty ring (KVM_CAP_DIRTY_LOG_RING): a per-vCPU ring of dirtied
 * guest frames, mmapped from the vCPU fd, as an alternative to the dirty
 * bitmap (KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG).
 *
 * Use: {@link enableDirtyRing} on the VM before any vCPU exists, register
 * slots with KVM_MEM_LOG_DIRTY_PAGES, create the vCPU, then
 * `new KvmDirtyRing(vcpuFd, entries)`. {@link KvmDirtyRing.harvest} collects
 * the dirtied frames and re-protects them (KVM_RESET_DIRTY_RINGS). When the
 * ring is nearly full KVM_RUN returns KVM_EXIT_DIRTY_RING_FULL (31): harvest,
 * then run again. Once the ring is on, KVM_GET_DIRTY_LOG fails with ENXIO.
 *
 * Entry (struct kvm_dirty_gfn, 16 bytes): u32 flags, u32 slot, u64 offset
 * (page number inside the slot). KVM sets flags to DIRTY; the VMM sets RESET
 * after reading the entry; KVM_RESET_DIRTY_RINGS returns such entries to KVM.
 * @module
 */

import { mmapShared, munmap } from "../../ffi/libc.ts";
import { CAP, IOCTL } from "./abi.ts";
import { ioctlInt } from "./ioctl.ts";
import type { KvmVm } from "./vm.ts";

/** KVM_DIRTY_LOG_PAGE_OFFSET: the ring's page offset in the vCPU fd mapping. */
export const DIRTY_RING_PAGE_OFFSET = 64;
/** sizeof(struct kvm_dirty_gfn). */
export const DIRTY_GFN_SIZE = 16;
/** kvm_dirty_gfn.flags bits. */
export const DIRTY_GFN_FLAG = { DIRTY: 1, RESET: 2 } as const;

const PAGE = 4096;

/**
 * Turns the dirty ring on for `vm` with `entries` entries per vCPU (a power
 * of two, at most what KVM_CHECK_EXTENSION allows). Call before creating any
 * vCPU. Throws when the host lacks the capability.
 */
export function enableDirtyRing(vm: KvmVm, entries: number): void {
  const maxBytes = vm.system.checkExtension(CAP.DIRTY_LOG_RING);
  const bytes = entries * DIRTY_GFN_SIZE;
  if (maxBytes <= 0) throw new Error("KVM_CAP_DIRTY_LOG_RING is not available");
  if (!Number.isSafeInteger(entries) || entries < 1 || (entries & (entries - 1)) !== 0) {
    throw new RangeError(`dirty ring size ${entries} is not a power of two`);
  }
  if (bytes > maxBytes || bytes % PAGE !== 0) {
    throw new RangeError(`dirty ring of ${bytes} bytes: KVM allows 4096..${maxBytes}`);
  }
  vm.enableCap(CAP.DIRTY_LOG_RING, bytes);
}

/** The dirty ring of one vCPU. */
export class KvmDirtyRing {
  readonly #bytes: number;
  readonly #pointer: Deno.PointerObject;
  /** The ring as 32-bit words: entry i is flags, slot, offset low, offset high at 4*i. */
  readonly #words: Int32Array;
  /** Free-running index of the next entry to read. */
  #fetch = 0;
  #closed = false;

  /** Maps the ring of the vCPU `vcpuFd`; `entries` as given to enableDirtyRing(). */
  constructor(vcpuFd: number, readonly entries: number) {
    this.#bytes = entries * DIRTY_GFN_SIZE;
    this.#pointer = mmapShared(vcpuFd, this.#bytes, DIRTY_RING_PAGE_OFFSET * PAGE);
    const buffer = Deno.UnsafePointerView.getArrayBuffer(this.#pointer, this.#bytes);
    this.#words = new Int32Array(buffer);
  }

  /**
   * Reads the dirty entries in order, writes their page numbers (the slot is
   * ignored; kemari has one) to `pages` from index 0, and marks each entry
   * RESET. Stops early when `pages` is full. Returns the number written.
   * The vCPU must not be in KVM_RUN.
   */
  collect(pages: Uint32Array): number {
    const mask = this.entries - 1;
    const words = this.#words;
    let n = 0;
    while (n < pages.length) {
      const w = (this.#fetch & mask) * 4;
      // Acquire: the entry's other fields are valid once DIRTY is seen.
      if ((Atomics.load(words, w) & DIRTY_GFN_FLAG.DIRTY) === 0) break;
      if (words[w + 3] !== 0) {
        throw new RangeError(`dirty ring entry ${w / 4} has a page offset above 2^32`);
      }
      pages[n++] = words[w + 2] >>> 0;
      Atomics.store(words, w, DIRTY_GFN_FLAG.RESET);
      this.#fetch++;
    }
    return n;
  }

  /**
   * KVM_RESET_DIRTY_RINGS on `vm`: gives the collected entries back to KVM and
   * write-protects their pages again. Returns the number of entries reset.
   */
  static reset(vm: KvmVm): number {
    return ioctlInt(vm.fd, IOCTL.RESET_DIRTY_RINGS, "KVM_RESET_DIRTY_RINGS");
  }

  /**
   * collect() then reset(): the pages dirtied since the last harvest. If
   * `pages` fills up, the rest stays in the ring for the next call.
   */
  harvest(vm: KvmVm, pages: Uint32Array): number {
    const n = this.collect(pages);
    KvmDirtyRing.reset(vm);
    return n;
  }

  /** Unmaps the ring (the vCPU fd stays open). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    munmap(this.#pointer, this.#bytes);
  }
}
