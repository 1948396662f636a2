/**
 * VmBackend on KVM (kvm-pvm): one VM, one vCPU running in a Worker, guest RAM
 * in a memfd with manual-protect dirty logging.
 * @module
 */

import { check, close, EFD_CLOEXEC, libc, SIGUSR2, tgkill } from "../../ffi/libc.ts";
import { CAP, LAYOUT, MSR_IA32_TSC, XCR0_GUEST } from "./abi.ts";
import { KvmSystem, KvmUnavailableError } from "./system.ts";
import { KvmVm } from "./vm.ts";
import { KvmVcpu } from "./vcpu.ts";
import { KvmRam } from "./memory.ts";
import {
  cpuFeatures,
  normalizeCpuid,
  restoreCpu,
  saveCpu,
  savedMsrs,
  validateCpu,
} from "./cpu_state.ts";
import type { GuestMemory } from "../guest_memory.ts";
import type { BootRegisters, VcpuCounters, VcpuStateName, VmBackend, VmOptions } from "../types.ts";
import {
  CTL,
  newControl,
  Request,
  STATE_NAMES,
  type StopReport,
  VcpuState,
  type WorkerInit,
  type WorkerMessage,
} from "../../machine/vcpu_control.ts";
import { initialSegments, type Segment } from "../../machine/setup.ts";

const REQUIRED_CAPS: Array<[number, string]> = [
  [CAP.MANUAL_DIRTY_LOG_PROTECT2, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"],
  [CAP.SYNC_REGS, "KVM_CAP_SYNC_REGS"],
  [CAP.IOEVENTFD, "KVM_CAP_IOEVENTFD"],
];

let kickListener = false;
const ignoreKick = () => {};

/** A KVM VM with one vCPU. */
export class KvmBackend implements VmBackend {
  readonly name = "kvm";
  readonly memory: GuestMemory;
  readonly tscKhz: number;
  readonly stopped: Promise<StopReport>;
  #resolveStopped!: (r: StopReport) => void;
  #control = newControl();
  #worker: Worker | undefined;
  #eventFd = -1;
  #eventBuf = new BigUint64Array(1);
  #closed = false;
  #interrupted = false;
  #features: string;
  #msrList: number[];
  #xsaveSize: number;

  private constructor(
    readonly system: KvmSystem,
    readonly vm: KvmVm,
    readonly ram: KvmRam,
    readonly vcpu: KvmVcpu,
    readonly options: VmOptions,
  ) {
    this.memory = ram.memory;
    this.stopped = new Promise((resolve) => this.#resolveStopped = resolve);
    const cpuid = normalizeCpuid(system.supportedCpuid());
    vcpu.setCpuid(cpuid);
    vcpu.setXcr0(XCR0_GUEST);
    this.#features = cpuFeatures(cpuid);
    this.#msrList = savedMsrs(system.msrIndexList());
    this.#xsaveSize = Math.max(system.checkExtension(CAP.XSAVE2), LAYOUT.kvm_xsave.size);
    this.tscKhz = vcpu.getTscKhz();
  }

  /**
   * Opens /dev/kvm (or $KEMARI_KVM_DEVICE) and builds the VM. Throws
   * KvmUnavailableError with a clear reason.
   */
  static create(
    options: VmOptions,
    devicePath = Deno.env.get("KEMARI_KVM_DEVICE") ?? "/dev/kvm",
  ): KvmBackend {
    const system = KvmSystem.open(devicePath);
    for (const [cap, name] of REQUIRED_CAPS) {
      if (system.checkExtension(cap) <= 0) {
        system.close();
        throw new KvmUnavailableError(`${devicePath} lacks ${name}`);
      }
    }
    const vm = KvmVm.create(system);
    const ram = KvmRam.create(vm, options.ramBytes);
    const vcpu = new KvmVcpu(vm.createVcpuFd(0), system.vcpuMmapSize());
    const backend = new KvmBackend(system, vm, ram, vcpu, options);
    if (options.doorbell === "ioeventfd") {
      backend.#eventFd = check("eventfd", libc().eventfd(0, EFD_CLOEXEC));
      for (const port of Object.values(options.doorbellPorts)) {
        vm.addPortEventFd(port, 1, backend.#eventFd);
      }
    }
    return backend;
  }

  /**
   * The TSC as the guest's rdtsc sees it (MSR 0x10 of the vCPU; kvm-pvm does
   * not virtualize it). A vCPU ioctl: call it only while the vCPU is not in
   * KVM_RUN (before start, or paused), or it waits for the next exit.
   */
  /** Fingerprint of the CPU features the guest sees (CPUID and XCR0). */
  get cpuFeatures(): string {
    return this.#features;
  }

  readTsc(): bigint {
    return this.vcpu.getMsrs([MSR_IA32_TSC])[0];
  }

  harvestDirty(): Uint8Array {
    return this.ram.harvest();
  }

  setBootRegisters(boot: BootRegisters): void {
    const s = initialSegments();
    const sregs = this.vcpu.getSregs();
    const dv = new DataView(sregs.buffer);
    const F = LAYOUT.kvm_sregs.fields;
    const put = (off: number, seg: Segment) => writeSegment(dv, off, seg);
    put(F.cs, s.code);
    for (const off of [F.ds, F.es, F.fs, F.gs, F.ss]) put(off, s.data);
    put(F.tr, s.tr);
    put(F.ldt, s.ldt);
    dv.setBigUint64(F.gdt, s.gdt.base, true);
    dv.setUint16(F.gdt + 8, s.gdt.limit, true);
    dv.setBigUint64(F.idt, s.idt.base, true);
    dv.setUint16(F.idt + 8, s.idt.limit, true);
    dv.setBigUint64(F.cr0, s.cr0, true);
    dv.setBigUint64(F.cr3, s.cr3, true);
    dv.setBigUint64(F.cr4, s.cr4, true);
    dv.setBigUint64(F.efer, s.efer, true);
    this.vcpu.setSregs(sregs);
    const regs = new Uint8Array(LAYOUT.kvm_regs.size);
    const rv = new DataView(regs.buffer);
    const R = LAYOUT.kvm_regs.fields;
    rv.setBigUint64(R.rip, BigInt(boot.entry), true);
    rv.setBigUint64(R.rsp, BigInt(boot.stackTop), true);
    rv.setBigUint64(R.rflags, 0x2n, true);
    this.vcpu.setRegs(regs);
  }

  async start(): Promise<void> {
    // Installed once for the life of the process: a kick can still be in
    // flight after a vCPU stops, and SIGUSR2's default action kills.
    if (!kickListener) {
      Deno.addSignalListener("SIGUSR2", ignoreKick);
      kickListener = true;
    }
    const worker = new Worker(new URL("../../machine/vcpu_worker.ts", import.meta.url), {
      type: "module",
    });
    this.#worker = worker;
    const ready = new Promise<void>((resolve, reject) => {
      worker.onmessage = (e: MessageEvent<WorkerMessage>) => {
        const msg = e.data;
        if (msg.type === "ready") resolve();
        else if (msg.type === "stop") {
          this.#resolveStopped(msg.report);
          resolve(); // a guest that stops at once has still started
        }
      };
      worker.onerror = (e) => {
        e.preventDefault();
        const report: StopReport = { kind: "error", message: `vCPU thread failed: ${e.message}` };
        this.#resolveStopped(report);
        reject(new Error(report.message));
      };
    });
    const init: WorkerInit = {
      control: this.#control,
      vcpuFd: this.vcpu.fd,
      mmapSize: this.vcpu.runBytes.length,
      ramAddress: this.ram.hostAddress,
      ramBytes: this.ram.size,
      doorbellPorts: this.options.doorbell === "exit" ? invert(this.options.doorbellPorts) : {},
    };
    worker.postMessage(init);
    await ready;
  }

  /** Sends the pause/stop request and kicks the vCPU out of wherever it is. */
  #request(req: number): void {
    const ctl = this.#control;
    Atomics.store(ctl, CTL.request, req);
    this.vcpu.immediateExit = true;
    const state = Atomics.load(ctl, CTL.state);
    if (state === VcpuState.RUNNING) {
      Atomics.add(ctl, CTL.kicks, 1);
      tgkill(Atomics.load(ctl, CTL.tid), SIGUSR2);
    }
    Atomics.add(ctl, CTL.wake, 1);
    Atomics.notify(ctl, CTL.wake);
  }

  async #waitState(accept: number[]): Promise<void> {
    const ctl = this.#control;
    for (;;) {
      const s = Atomics.load(ctl, CTL.state);
      if (accept.includes(s)) return;
      // A pending waitAsync does not keep Deno's event loop alive; the
      // timer does.
      const r = Atomics.waitAsync(ctl, CTL.state, s, 50);
      if (r.async) await raceTimer(r.value, 60);
      // A vCPU that ignored the kick (it was between states) is kicked again.
      if (Atomics.load(ctl, CTL.state) === VcpuState.RUNNING) {
        const req = Atomics.load(ctl, CTL.request);
        if (req !== Request.NONE) this.#request(req);
      }
    }
  }

  async pause(): Promise<void> {
    if (Atomics.load(this.#control, CTL.state) === VcpuState.STOPPED) return;
    this.#request(Request.PAUSE);
    await this.#waitState([VcpuState.PAUSED, VcpuState.STOPPED]);
  }

  resume(): void {
    const ctl = this.#control;
    Atomics.store(ctl, CTL.request, Request.NONE);
    Atomics.notify(ctl, CTL.request);
  }

  async stop(): Promise<void> {
    if (!this.#worker) return;
    if (Atomics.load(this.#control, CTL.state) !== VcpuState.STOPPED) {
      this.#request(Request.STOP);
      Atomics.notify(this.#control, CTL.request);
      await this.#waitState([VcpuState.STOPPED]);
    }
    await this.stopped;
  }

  async nextDoorbell(): Promise<number> {
    if (this.#eventFd >= 0) {
      const n = await libc().read_async(
        this.#eventFd,
        Deno.UnsafePointer.of(this.#eventBuf),
        8n,
      );
      if (n !== 8n) return 0;
      return -1;
    }
    const ctl = this.#control;
    for (;;) {
      const bits = Atomics.exchange(ctl, CTL.doorbells, 0);
      if (bits !== 0) return bits;
      if (this.#interrupted) return 0;
      const r = Atomics.waitAsync(ctl, CTL.doorbells, 0, 1000);
      if (r.async) await raceTimer(r.value, 1000);
      if (this.#interrupted) return 0;
    }
  }

  /** Makes a pending nextDoorbell() return (used at shutdown). */
  interruptDoorbell(): void {
    this.#interrupted = true;
    if (this.#eventFd >= 0) {
      const one = new BigUint64Array([1n]);
      libc().write(this.#eventFd, Deno.UnsafePointer.of(one), 8n);
    } else {
      Atomics.notify(this.#control, CTL.doorbells);
    }
  }

  wakeGuest(): void {
    const ctl = this.#control;
    Atomics.add(ctl, CTL.wake, 1);
    Atomics.notify(ctl, CTL.wake);
  }

  vcpuState(): VcpuStateName {
    return STATE_NAMES[Atomics.load(this.#control, CTL.state)] ?? "stopped";
  }

  counters(): VcpuCounters {
    const ctl = this.#control;
    return {
      exits: Atomics.load(ctl, CTL.exits),
      ioExits: Atomics.load(ctl, CTL.ioExits),
      hypercalls: Atomics.load(ctl, CTL.hypercalls),
      waits: Atomics.load(ctl, CTL.waits),
      kicks: Atomics.load(ctl, CTL.kicks),
    };
  }

  saveCpu(): unknown {
    return saveCpu(this.vcpu, this.#features, this.#msrList, this.#xsaveSize);
  }

  restoreCpu(state: unknown): void {
    restoreCpu(this.vcpu, validateCpu(state, this.#features, this.#msrList));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#eventFd >= 0) {
      this.interruptDoorbell();
    }
    // Memory can be unmapped only when no vCPU thread can touch it: never
    // started, or stopped (its thread has left KVM_RUN for good).
    const state = Atomics.load(this.#control, CTL.state);
    const quiet = !this.#worker || state === VcpuState.STOPPED;
    this.#worker?.terminate();
    this.vcpu.close(quiet);
    this.vm.close();
    this.system.close();
    if (this.#eventFd >= 0) close(this.#eventFd);
    if (quiet) this.ram.unmap();
    close(this.ram.memfd);
  }
}

function invert(ports: Record<number, number>): Record<number, number> {
  const out: Record<number, number> = {};
  for (const [bit, port] of Object.entries(ports)) out[port] = Number(bit);
  return out;
}

function writeSegment(dv: DataView, off: number, s: Segment): void {
  const F = LAYOUT.kvm_segment.fields;
  dv.setBigUint64(off + F.base, s.base, true);
  dv.setUint32(off + F.limit, s.limit, true);
  dv.setUint16(off + F.selector, s.selector, true);
  dv.setUint8(off + F.type, s.type);
  dv.setUint8(off + F.present, s.present);
  dv.setUint8(off + F.dpl, s.dpl);
  dv.setUint8(off + F.db, s.db);
  dv.setUint8(off + F.s, s.s);
  dv.setUint8(off + F.l, s.l);
  dv.setUint8(off + F.g, s.g);
  dv.setUint8(off + F.avl, 0);
  dv.setUint8(off + F.avl + 1, s.present ? 0 : 1); // unusable
}

/** Waits for `p` or `ms`, whichever is first, leaving no timer behind. */
async function raceTimer(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([p, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}
