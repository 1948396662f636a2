/**
 * Backend-neutral view of a hypervisor, as the machine and the replication
 * engine use it. KVM (hypervisor/kvm/) implements it today; Xen
 * (hypervisor/xen/) will implement the same interface with log-dirty
 * bitmaps, foreign mappings and HVM context blobs.
 * @module
 */

import type { GuestMemory } from "./guest_memory.ts";
import type { StopReport } from "../machine/vcpu_control.ts";

/** Where the vCPU is, as the VMM sees it. */
export type VcpuStateName = "new" | "running" | "exit" | "blocked" | "paused" | "stopped";

/** Counters for status and benchmarks. */
export interface VcpuCounters {
  exits: number;
  ioExits: number;
  hypercalls: number;
  waits: number;
  kicks: number;
}

/** Initial register state of a freshly booted guest. */
export interface BootRegisters {
  entry: number;
  stackTop: number;
}

/** One VM with one vCPU. */
export interface VmBackend {
  readonly name: string;
  readonly memory: GuestMemory;
  /** Fingerprint of the CPU features the guest sees; both sides of a pair must match. */
  readonly cpuFeatures: string;
  /** Host TSC frequency in kHz. */
  readonly tscKhz: number;
  /** The host TSC now (what the guest's rdtsc returns); vCPU not running. */
  readTsc(): bigint;
  /** Pages dirtied since the last call (hypervisor log ∪ VMM writes); vCPU paused. */
  harvestDirty(): Uint8Array;
  /** Sets the registers for the guest's first instruction. */
  setBootRegisters(regs: BootRegisters): void;
  /** Starts the vCPU thread. */
  start(): Promise<void>;
  /** Pauses the vCPU from whatever state it is in; resolves when parked. */
  pause(): Promise<void>;
  resume(): void;
  /** Stops the vCPU thread for good. */
  stop(): Promise<void>;
  /** Resolves when the vCPU thread stops, with the reason. */
  readonly stopped: Promise<StopReport>;
  /** Resolves with a bit mask of devices whose doorbell rang. */
  nextDoorbell(): Promise<number>;
  /** Tells a vCPU blocked in the wait hypercall that an event was posted. */
  wakeGuest(): void;
  vcpuState(): VcpuStateName;
  counters(): VcpuCounters;
  /** Complete vCPU state (vCPU paused), plain and serialisable. */
  saveCpu(): unknown;
  /** Validates and applies a saved vCPU state (before start()). */
  restoreCpu(state: unknown): void;
  /** Releases every host resource. */
  close(): void;
}

/** Options common to every backend. */
export interface VmOptions {
  ramBytes: number;
  /** How guest doorbells reach the VMM: a kernel eventfd, or a userspace exit. */
  doorbell: "ioeventfd" | "exit";
  /** Port of each device doorbell, by bit number. */
  doorbellPorts: Record<number, number>;
}
