/**
 * The KVM VM fd: memory slots, manual-protect dirty logging, ioeventfds,
 * vCPU creation.
 * @module
 */

import { close } from "../../ffi/libc.ts";
import {
  CAP,
  IOCTL,
  IOEVENTFD_FLAG_PIO,
  LAYOUT,
  MANUAL_PROTECT_ENABLE,
  MEM_LOG_DIRTY_PAGES,
} from "./abi.ts";
import { ioctlBuf, ioctlInt, struct } from "./ioctl.ts";
import type { KvmSystem } from "./system.ts";

/** A KVM virtual machine. */
export class KvmVm {
  constructor(readonly system: KvmSystem, readonly fd: number) {}

  static create(system: KvmSystem): KvmVm {
    return new KvmVm(system, system.createVmFd());
  }

  /** KVM_ENABLE_CAP on the VM with one argument. */
  enableCap(cap: number, arg0: bigint | number): void {
    const { buf, dv } = struct(LAYOUT.kvm_enable_cap.size);
    dv.setUint32(LAYOUT.kvm_enable_cap.fields.cap, cap, true);
    dv.setBigUint64(LAYOUT.kvm_enable_cap.fields.args, BigInt(arg0), true);
    ioctlBuf(this.fd, IOCTL.ENABLE_CAP, "KVM_ENABLE_CAP", buf);
  }

  /**
   * Turns on manual-protect dirty logging. Pages start clean (no INIT_SET):
   * the slot is registered while RAM is still empty, so the first harvest
   * reports exactly the pages written since.
   */
  enableManualDirtyProtect(): void {
    this.enableCap(CAP.MANUAL_DIRTY_LOG_PROTECT2, MANUAL_PROTECT_ENABLE);
  }

  /** KVM_SET_USER_MEMORY_REGION. */
  setMemoryRegion(slot: number, gpa: number, size: number, host: bigint, logDirty: boolean): void {
    const f = LAYOUT.kvm_userspace_memory_region.fields;
    const { buf, dv } = struct(LAYOUT.kvm_userspace_memory_region.size);
    dv.setUint32(f.slot, slot, true);
    dv.setUint32(f.flags, logDirty ? MEM_LOG_DIRTY_PAGES : 0, true);
    dv.setBigUint64(f.guest_phys_addr, BigInt(gpa), true);
    dv.setBigUint64(f.memory_size, BigInt(size), true);
    dv.setBigUint64(f.userspace_addr, host, true);
    ioctlBuf(this.fd, IOCTL.SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", buf);
  }

  /** KVM_GET_DIRTY_LOG into `bitmap` (one bit per page of the slot). */
  getDirtyLog(slot: number, bitmap: Uint8Array): void {
    const f = LAYOUT.kvm_dirty_log.fields;
    const { buf, dv } = struct(LAYOUT.kvm_dirty_log.size);
    dv.setUint32(f.slot, slot, true);
    dv.setBigUint64(
      f.dirty_bitmap,
      BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bitmap))),
      true,
    );
    ioctlBuf(this.fd, IOCTL.GET_DIRTY_LOG, "KVM_GET_DIRTY_LOG", buf);
  }

  /** KVM_CLEAR_DIRTY_LOG: re-protects the pages set in `bitmap` (whole slot). */
  clearDirtyLog(slot: number, pages: number, bitmap: Uint8Array): void {
    const f = LAYOUT.kvm_clear_dirty_log.fields;
    const { buf, dv } = struct(LAYOUT.kvm_clear_dirty_log.size);
    dv.setUint32(f.slot, slot, true);
    dv.setUint32(f.num_pages, pages, true);
    dv.setBigUint64(f.first_page, 0n, true);
    dv.setBigUint64(
      f.dirty_bitmap,
      BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bitmap))),
      true,
    );
    ioctlBuf(this.fd, IOCTL.CLEAR_DIRTY_LOG, "KVM_CLEAR_DIRTY_LOG", buf);
  }

  /** KVM_IOEVENTFD: a write of any value to `port` signals `eventFd` in the kernel. */
  addPortEventFd(port: number, length: number, eventFd: number): void {
    const f = LAYOUT.kvm_ioeventfd.fields;
    const { buf, dv } = struct(LAYOUT.kvm_ioeventfd.size);
    dv.setBigUint64(f.addr, BigInt(port), true);
    dv.setUint32(f.len, length, true);
    dv.setInt32(f.fd, eventFd, true);
    dv.setUint32(f.flags, IOEVENTFD_FLAG_PIO, true);
    ioctlBuf(this.fd, IOCTL.IOEVENTFD, "KVM_IOEVENTFD", buf);
  }

  /** KVM_CREATE_VCPU: the vCPU fd. */
  createVcpuFd(id: number): number {
    return ioctlInt(this.fd, IOCTL.CREATE_VCPU, "KVM_CREATE_VCPU", id);
  }

  close(): void {
    close(this.fd);
  }
}
