/**
 * Complete vCPU state for kvm-pvm: save() gathers every state ioctl's blob;
 * restore() validates a saved state as untrusted input and applies it in the
 * order kvm-pvm needs (kvm-pvm-facts §1): CPUID, SREGS, REGS, XCRS, XSAVE,
 * MSRS, DEBUGREGS, VCPU_EVENTS, MP_STATE.
 * @module
 */

import { createHash } from "node:crypto";
import { LAYOUT, MSR_IA32_TSC, MSR_KVM_ASYNC_PF_INT, XCR0_GUEST } from "./abi.ts";
import type { KvmVcpu } from "./vcpu.ts";

/** Plain saved state of one vCPU. Binary blobs are the KVM structs. */
export interface CpuState {
  /** SHA-256 of the CPUID table and XCR0 the vCPU ran with. */
  cpuFeatures: string;
  regs: Uint8Array;
  sregs: Uint8Array;
  xsave: Uint8Array;
  xcrs: Uint8Array;
  debugregs: Uint8Array;
  events: Uint8Array;
  mpState: Uint8Array;
  msrs: Array<[number, bigint]>;
}

/** A saved vCPU state is malformed or from an incompatible host. */
export class CpuStateError extends Error {
  constructor(message: string) {
    super(`vCPU state: ${message}`);
    this.name = "CpuStateError";
  }
}

/**
 * Sets the APIC-ID fields of a kvm_cpuid2 table to vCPU 0's (0), in place:
 * KVM_GET_SUPPORTED_CPUID reports the ID of whichever host CPU ran the ioctl
 * (leaf 1 EBX[31:24], leaves 0xB and 0x1F EDX), which must not make two
 * identical hosts look different.
 */
export function normalizeCpuid(cpuid: Uint8Array): Uint8Array {
  const dv = new DataView(cpuid.buffer, cpuid.byteOffset, cpuid.byteLength);
  const E = LAYOUT.kvm_cpuid_entry2;
  const n = dv.getUint32(LAYOUT.kvm_cpuid2.fields.nent, true);
  for (let i = 0; i < n; i++) {
    const o = LAYOUT.kvm_cpuid2.fields.entries + i * E.size;
    const fn = dv.getUint32(o + E.fields.function, true);
    if (fn === 1) {
      dv.setUint32(o + E.fields.ebx, dv.getUint32(o + E.fields.ebx, true) & 0x00ffffff, true);
    } else if (fn === 0xb || fn === 0x1f) {
      dv.setUint32(o + E.fields.edx, 0, true);
    }
  }
  return cpuid;
}

/** Fingerprint of the CPU features a guest may have used. */
export function cpuFeatures(cpuid: Uint8Array, xcr0: bigint = XCR0_GUEST): string {
  return createHash("sha256").update(cpuid).update(`xcr0=${xcr0}`).digest("hex");
}

/** The MSRs kemari saves: KVM's list less the TSC (not virtualized) and ASYNC_PF_INT. */
export function savedMsrs(list: readonly number[]): number[] {
  return list.filter((m) => m !== MSR_IA32_TSC && m !== MSR_KVM_ASYNC_PF_INT);
}

/** Reads the whole vCPU state. The vCPU must not be running. */
export function saveCpu(
  vcpu: KvmVcpu,
  features: string,
  msrList: readonly number[],
  xsaveSize: number,
): CpuState {
  const values = vcpu.getMsrs(msrList);
  return {
    cpuFeatures: features,
    regs: vcpu.getRegs(),
    sregs: vcpu.getSregs(),
    xsave: vcpu.getXsave(xsaveSize),
    xcrs: vcpu.getXcrs(),
    debugregs: vcpu.getDebugRegs(),
    events: vcpu.getEvents(),
    mpState: vcpu.getMpState(),
    msrs: msrList.map((m, i) => [m, values[i]]),
  };
}

function blob(v: unknown, name: string, size: number, atLeast = false): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new CpuStateError(`${name} is missing`);
  if (atLeast ? v.length < size : v.length !== size) {
    throw new CpuStateError(`${name} has ${v.length} bytes, expected ${size}`);
  }
  return v;
}

/** Validates an untrusted value as a CpuState for this host. */
export function validateCpu(
  v: unknown,
  features: string,
  msrList: readonly number[],
): CpuState {
  if (typeof v !== "object" || v === null) throw new CpuStateError("not an object");
  const s = v as Record<string, unknown>;
  if (typeof s.cpuFeatures !== "string") throw new CpuStateError("cpuFeatures is missing");
  if (s.cpuFeatures !== features) {
    throw new CpuStateError(
      "saved on a host with different CPU features (CPUID or XCR0 differ); refusing to restore",
    );
  }
  const xcrs = blob(s.xcrs, "xcrs", LAYOUT.kvm_xcrs.size);
  const xdv = new DataView(xcrs.buffer, xcrs.byteOffset, xcrs.byteLength);
  const nr = xdv.getUint32(0, true);
  if (nr < 1 || nr > 16) throw new CpuStateError(`xcrs count ${nr} out of range`);
  const xcr0 = xdv.getBigUint64(LAYOUT.kvm_xcrs.fields.xcrs + LAYOUT.kvm_xcr.fields.value, true);
  if (xcr0 !== XCR0_GUEST) {
    throw new CpuStateError(`saved XCR0 0x${xcr0.toString(16)} differs from this host's 0xe7`);
  }
  if (!Array.isArray(s.msrs)) throw new CpuStateError("msrs is missing");
  const allowed = new Set(msrList);
  const msrs: Array<[number, bigint]> = [];
  for (const e of s.msrs as unknown[]) {
    if (
      !Array.isArray(e) || e.length !== 2 || typeof e[0] !== "number" || typeof e[1] !== "bigint"
    ) {
      throw new CpuStateError("malformed MSR entry");
    }
    if (!allowed.has(e[0])) throw new CpuStateError(`MSR 0x${e[0].toString(16)} is not restorable`);
    msrs.push([e[0], e[1]]);
  }
  return {
    cpuFeatures: s.cpuFeatures,
    regs: blob(s.regs, "regs", LAYOUT.kvm_regs.size),
    sregs: blob(s.sregs, "sregs", LAYOUT.kvm_sregs.size),
    xsave: blob(s.xsave, "xsave", LAYOUT.kvm_xsave.size, true),
    xcrs,
    debugregs: blob(s.debugregs, "debugregs", LAYOUT.kvm_debugregs.size),
    events: blob(s.events, "events", LAYOUT.kvm_vcpu_events.size),
    mpState: blob(s.mpState, "mpState", LAYOUT.kvm_mp_state.size),
    msrs,
  };
}

/** Applies a validated state. CPUID must already be set on the vCPU. */
export function restoreCpu(vcpu: KvmVcpu, s: CpuState): void {
  vcpu.setSregs(s.sregs);
  vcpu.setRegs(s.regs);
  vcpu.setXcrs(s.xcrs);
  vcpu.setXsave(s.xsave);
  vcpu.setMsrs(s.msrs);
  vcpu.setDebugRegs(s.debugregs);
  vcpu.setEvents(s.events);
  vcpu.setMpState(s.mpState);
}
