/**
 * The KVM vCPU fd: KVM_RUN over the mmapped kvm_run page, and the state
 * ioctls as raw little-endian blobs (cpu_state.ts gives them meaning).
 * @module
 */

import { close, mmapShared, munmap } from "../../ffi/libc.ts";
import {
  IOCTL,
  LAYOUT,
  MSR_KVM_ASYNC_PF_INT,
  SYNC_X86_EVENTS,
  SYNC_X86_REGS,
  SYNC_X86_SREGS,
} from "./abi.ts";
import { ioctlBuf, ioctlInt, struct } from "./ioctl.ts";
import { errno, libc } from "../../ffi/libc.ts";
import { OsError } from "../../ffi/errno.ts";

const RUN = LAYOUT.kvm_run.fields;

/** A vCPU and its kvm_run page. */
export class KvmVcpu {
  /** The kvm_run page. */
  readonly run: DataView;
  readonly runBytes: Uint8Array;

  #mapping: Deno.PointerObject;
  #mapSize: number;

  constructor(readonly fd: number, mmapSize: number) {
    const p = mmapShared(fd, mmapSize);
    this.#mapping = p;
    this.#mapSize = mmapSize;
    const ab = Deno.UnsafePointerView.getArrayBuffer(p, mmapSize);
    this.run = new DataView(ab);
    this.runBytes = new Uint8Array(ab);
  }

  /** Re-attaches to a vCPU fd created elsewhere in this process (a Worker). */
  static attach(fd: number, mmapSize: number): KvmVcpu {
    return new KvmVcpu(fd, mmapSize);
  }

  /**
   * KVM_RUN. Returns the exit reason, or -1 when interrupted (EINTR: a kick
   * or immediate_exit).
   */
  runOnce(): number {
    const rc = libc().ioctl_int(this.fd, BigInt(IOCTL.RUN), 0n);
    if (rc < 0) {
      const err = new OsError("KVM_RUN", errno());
      if (err.errno === 4 || err.errno === 11) return -1;
      throw err;
    }
    return this.run.getUint32(RUN.exit_reason, true);
  }

  set immediateExit(on: boolean) {
    this.run.setUint8(RUN.immediate_exit, on ? 1 : 0);
  }

  /** Asks KVM to mirror regs, sregs and events into kvm_run at every exit. */
  enableSyncRegs(): void {
    this.run.setBigUint64(
      RUN.kvm_valid_regs,
      BigInt(SYNC_X86_REGS | SYNC_X86_SREGS | SYNC_X86_EVENTS),
      true,
    );
  }

  getBlob(request: number, name: string, size: number): Uint8Array<ArrayBuffer> {
    const { buf } = struct(size);
    ioctlBuf(this.fd, request, name, buf);
    return buf;
  }

  setBlob(request: number, name: string, blob: Uint8Array): void {
    ioctlBuf(this.fd, request, name, blob);
  }

  getRegs(): Uint8Array<ArrayBuffer> {
    return this.getBlob(IOCTL.GET_REGS, "KVM_GET_REGS", LAYOUT.kvm_regs.size);
  }
  setRegs(b: Uint8Array): void {
    this.setBlob(IOCTL.SET_REGS, "KVM_SET_REGS", b);
  }
  getSregs(): Uint8Array<ArrayBuffer> {
    return this.getBlob(IOCTL.GET_SREGS, "KVM_GET_SREGS", LAYOUT.kvm_sregs.size);
  }
  setSregs(b: Uint8Array): void {
    this.setBlob(IOCTL.SET_SREGS, "KVM_SET_SREGS", b);
  }
  /** KVM_GET_XSAVE2 with `size` from KVM_CHECK_EXTENSION(XSAVE2). */
  getXsave(size: number): Uint8Array<ArrayBuffer> {
    return this.getBlob(IOCTL.GET_XSAVE2, "KVM_GET_XSAVE2", Math.max(size, LAYOUT.kvm_xsave.size));
  }
  setXsave(b: Uint8Array): void {
    this.setBlob(IOCTL.SET_XSAVE, "KVM_SET_XSAVE", b);
  }
  getXcrs(): Uint8Array<ArrayBuffer> {
    return this.getBlob(IOCTL.GET_XCRS, "KVM_GET_XCRS", LAYOUT.kvm_xcrs.size);
  }
  setXcrs(b: Uint8Array): void {
    this.setBlob(IOCTL.SET_XCRS, "KVM_SET_XCRS", b);
  }
  /** Sets XCR0 alone. */
  setXcr0(value: bigint): void {
    const f = LAYOUT.kvm_xcrs.fields;
    const { buf, dv } = struct(LAYOUT.kvm_xcrs.size);
    dv.setUint32(f.nr_xcrs, 1, true);
    dv.setUint32(f.xcrs + LAYOUT.kvm_xcr.fields.xcr, 0, true);
    dv.setBigUint64(f.xcrs + LAYOUT.kvm_xcr.fields.value, value, true);
    this.setXcrs(buf);
  }
  getDebugRegs(): Uint8Array<ArrayBuffer> {
    return this.getBlob(IOCTL.GET_DEBUGREGS, "KVM_GET_DEBUGREGS", LAYOUT.kvm_debugregs.size);
  }
  setDebugRegs(b: Uint8Array): void {
    this.setBlob(IOCTL.SET_DEBUGREGS, "KVM_SET_DEBUGREGS", b);
  }
  getEvents(): Uint8Array<ArrayBuffer> {
    return this.getBlob(IOCTL.GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", LAYOUT.kvm_vcpu_events.size);
  }
  setEvents(b: Uint8Array): void {
    this.setBlob(IOCTL.SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", b);
  }
  getMpState(): Uint8Array<ArrayBuffer> {
    return this.getBlob(IOCTL.GET_MP_STATE, "KVM_GET_MP_STATE", LAYOUT.kvm_mp_state.size);
  }
  setMpState(b: Uint8Array): void {
    this.setBlob(IOCTL.SET_MP_STATE, "KVM_SET_MP_STATE", b);
  }
  setCpuid(cpuid2: Uint8Array): void {
    this.setBlob(IOCTL.SET_CPUID2, "KVM_SET_CPUID2", cpuid2);
  }

  /** KVM_GET_MSRS for `indices`: the values, in order. */
  getMsrs(indices: readonly number[]): bigint[] {
    const e = LAYOUT.kvm_msr_entry;
    const { buf, dv } = struct(LAYOUT.kvm_msrs.size + indices.length * e.size);
    dv.setUint32(0, indices.length, true);
    indices.forEach((index, i) => dv.setUint32(8 + i * e.size, index, true));
    const n = ioctlBuf(this.fd, IOCTL.GET_MSRS, "KVM_GET_MSRS", buf);
    if (n !== indices.length) throw new Error(`KVM_GET_MSRS read ${n} of ${indices.length} MSRs`);
    return indices.map((_, i) => dv.getBigUint64(8 + i * e.size + e.fields.data, true));
  }

  /** KVM_SET_MSRS one MSR at a time (a batch stops at the first failure). */
  setMsrs(entries: ReadonlyArray<readonly [number, bigint]>): void {
    for (const [index, value] of entries) {
      if (index === MSR_KVM_ASYNC_PF_INT) continue;
      const { buf, dv } = struct(LAYOUT.kvm_msrs.size + LAYOUT.kvm_msr_entry.size);
      dv.setUint32(0, 1, true);
      dv.setUint32(8, index, true);
      dv.setBigUint64(16, value, true);
      const n = ioctlBuf(this.fd, IOCTL.SET_MSRS, "KVM_SET_MSRS", buf);
      if (n !== 1) throw new Error(`KVM_SET_MSRS refused MSR 0x${index.toString(16)}`);
    }
  }

  getTscKhz(): number {
    return ioctlInt(this.fd, IOCTL.GET_TSC_KHZ, "KVM_GET_TSC_KHZ");
  }

  /** Closes the fd; with `unmap`, also the kvm_run mapping (no thread may be in KVM_RUN). */
  close(unmap = false): void {
    if (unmap) munmap(this.#mapping, this.#mapSize);
    close(this.fd);
  }
}
