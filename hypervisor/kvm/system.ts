/**
 * The /dev/kvm system fd: capability checks, the supported CPUID table and
 * the MSR list, and VM creation.
 * @module
 */

import { close, O_CLOEXEC, O_RDWR, open } from "../../ffi/libc.ts";
import { OsError } from "../../ffi/errno.ts";
import { API_VERSION, IOCTL, LAYOUT } from "./abi.ts";
import { ioctlBuf, ioctlInt, struct } from "./ioctl.ts";

/** KVM cannot be used on this machine. */
export class KvmUnavailableError extends Error {
  constructor(detail: string) {
    super(`KVM is not available: ${detail}`);
    this.name = "KvmUnavailableError";
  }
}

const MAX_CPUID = 256;
const MAX_MSRS = 512;

/** An open /dev/kvm. */
export class KvmSystem {
  private constructor(readonly fd: number) {}

  /** Opens `path` (default /dev/kvm) and checks the API version. */
  static open(path = "/dev/kvm"): KvmSystem {
    let fd: number;
    try {
      fd = open(path, O_RDWR | O_CLOEXEC);
    } catch (e) {
      if (e instanceof OsError) throw new KvmUnavailableError(`${path}: ${e.message}`);
      throw e;
    }
    const version = ioctlInt(fd, IOCTL.GET_API_VERSION, "KVM_GET_API_VERSION");
    if (version !== API_VERSION) {
      close(fd);
      throw new KvmUnavailableError(`${path}: API version ${version}, expected ${API_VERSION}`);
    }
    return new KvmSystem(fd);
  }

  /** KVM_CHECK_EXTENSION: 0 when absent. */
  checkExtension(cap: number): number {
    return ioctlInt(this.fd, IOCTL.CHECK_EXTENSION, "KVM_CHECK_EXTENSION", cap);
  }

  /** Size of the kvm_run mapping of a vCPU fd. */
  vcpuMmapSize(): number {
    return ioctlInt(this.fd, IOCTL.GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE");
  }

  /** KVM_GET_SUPPORTED_CPUID as a ready kvm_cpuid2 buffer (nent filled in). */
  supportedCpuid(): Uint8Array<ArrayBuffer> {
    const entry = LAYOUT.kvm_cpuid_entry2.size;
    const { buf, dv } = struct(LAYOUT.kvm_cpuid2.size + MAX_CPUID * entry);
    dv.setUint32(0, MAX_CPUID, true);
    ioctlBuf(this.fd, IOCTL.GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID", buf);
    const nent = dv.getUint32(0, true);
    return buf.slice(0, LAYOUT.kvm_cpuid2.size + nent * entry);
  }

  /** KVM_GET_MSR_INDEX_LIST. */
  msrIndexList(): number[] {
    const { buf, dv } = struct(4 + MAX_MSRS * 4);
    dv.setUint32(0, MAX_MSRS, true);
    ioctlBuf(this.fd, IOCTL.GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST", buf);
    const n = dv.getUint32(0, true);
    return Array.from({ length: n }, (_, i) => dv.getUint32(4 + 4 * i, true));
  }

  /** KVM_CREATE_VM: the new VM's fd. */
  createVmFd(): number {
    return ioctlInt(this.fd, IOCTL.CREATE_VM, "KVM_CREATE_VM", 0);
  }

  close(): void {
    close(this.fd);
  }
}
