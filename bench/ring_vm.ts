/**
 * A minimal single-vCPU VM with the KVM dirty ring, for bench/dirty.ts only.
 *
 * kemari's vCPU Worker (machine/vcpu_worker.ts) knows neither the dirty ring
 * nor KVM_EXIT_DIRTY_RING_FULL, and KvmBackend turns on manual-protect
 * logging, so this harness builds its own VM from the kemari pieces
 * (hypervisor/kvm/{system,vm,vcpu,dirty_ring}.ts, machine/{setup,elf,
 * boot_page}.ts, devices/{clock,events,console}.ts) and runs KVM_RUN
 * synchronously on the calling (main) thread: no Worker, no timers, no kicks.
 * {@link RingVm.runUntilBlocked} returns when the guest calls HC_WAIT (port
 * 0xf1, rax=1) with nothing new to see; ring-full exits are harvested on the
 * way and counted.
 * @module
 */

import { check, cstring, libc, MFD_CLOEXEC, mmapShared } from "../ffi/libc.ts";
import {
  EXIT,
  IO_OUT,
  LAYOUT,
  MSR_IA32_TSC,
  SYNC_X86_REGS,
  XCR0_GUEST,
} from "../hypervisor/kvm/abi.ts";
import { KvmSystem } from "../hypervisor/kvm/system.ts";
import { KvmVm } from "../hypervisor/kvm/vm.ts";
import { KvmVcpu } from "../hypervisor/kvm/vcpu.ts";
import { KvmBackend } from "../hypervisor/kvm/backend.ts";
import { normalizeCpuid } from "../hypervisor/kvm/cpu_state.ts";
import { enableDirtyRing, KvmDirtyRing } from "../hypervisor/kvm/dirty_ring.ts";
import { GuestMemory } from "../hypervisor/guest_memory.ts";
import { writePageTables, writeSystemTables } from "../machine/setup.ts";
import { loadElf } from "../machine/elf.ts";
import { writeBootPage } from "../machine/boot_page.ts";
import { HC, PORT } from "../machine/layout.ts";
import { PvClock } from "../devices/clock.ts";
import { EventPage } from "../devices/events.ts";
import { ConsoleBackend } from "../devices/console.ts";
import { NullSink } from "../devices/console_sink.ts";

const RUN = LAYOUT.kvm_run.fields;
const REGS = RUN.s + LAYOUT.kvm_sync_regs.fields.regs;
const R = LAYOUT.kvm_regs.fields;

/** Times of one harvest, in ms, and the entries it returned. */
export interface RingHarvest {
  entries: number;
  collectMs: number;
  resetMs: number;
  vmmMs: number;
}

/** A VM whose vCPU runs on the caller's thread, with a dirty ring. */
export class RingVm {
  readonly mem: GuestMemory;
  readonly events: EventPage;
  readonly console: ConsoleBackend;
  readonly ring: KvmDirtyRing;
  /** KVM_EXIT_DIRTY_RING_FULL exits, the entries harvested there, and their cost. */
  full = { exits: 0, entries: 0, ms: 0 };
  /** Page numbers of the last harvest (first `entries` of them). */
  readonly pages: Uint32Array;
  readonly #vmmBits: Uint8Array;

  private constructor(
    readonly system: KvmSystem,
    readonly vm: KvmVm,
    readonly vcpu: KvmVcpu,
    readonly memfd: number,
    mem: GuestMemory,
    entries: number,
  ) {
    this.mem = mem;
    this.ring = new KvmDirtyRing(vcpu.fd, entries);
    this.pages = new Uint32Array(entries);
    this.#vmmBits = new Uint8Array(mem.bitmapBytes);
    this.events = new EventPage(mem, () => {});
    this.console = new ConsoleBackend(mem, this.events, new NullSink());
  }

  /** Builds the VM (ring enabled before the vCPU exists) and loads `elf`. */
  static create(ramBytes: number, elf: Uint8Array, args: string, entries: number): RingVm {
    const system = KvmSystem.open();
    const vm = KvmVm.create(system);
    enableDirtyRing(vm, entries);
    const memfd = check("memfd_create", libc().memfd_create(cstring("kemari-ring"), MFD_CLOEXEC));
    check("ftruncate", libc().ftruncate(memfd, BigInt(ramBytes)));
    const p = mmapShared(memfd, ramBytes);
    vm.setMemoryRegion(0, 0, ramBytes, BigInt(Deno.UnsafePointer.value(p)), true);
    const mem = new GuestMemory(Deno.UnsafePointerView.getArrayBuffer(p, ramBytes), ramBytes);
    const vcpu = new KvmVcpu(vm.createVcpuFd(0), system.vcpuMmapSize());
    vcpu.setCpuid(normalizeCpuid(system.supportedCpuid()));
    vcpu.setXcr0(XCR0_GUEST);
    const r = new RingVm(system, vm, vcpu, memfd, mem, entries);
    writePageTables(mem);
    writeSystemTables(mem);
    const image = loadElf(mem, elf);
    writeBootPage(mem, {
      heapStart: image.end,
      stackTop: mem.size,
      diskSectors: 0n,
      diskReadOnly: false,
      bootId: 1n,
      args,
    });
    const readTsc = () => vcpu.getMsrs([MSR_IA32_TSC])[0];
    new PvClock(mem, { tscKhz: vcpu.getTscKhz(), readTsc }).start();
    // KvmBackend.setBootRegisters only uses `this.vcpu`; borrow it rather
    // than copy the segment encoding (a TypeError here means that changed).
    KvmBackend.prototype.setBootRegisters.call(
      { vcpu } as unknown as KvmBackend,
      { entry: image.entry, stackTop: mem.size },
    );
    vcpu.enableSyncRegs();
    return r;
  }

  #reg(off: number): bigint {
    return this.vcpu.run.getBigUint64(REGS + off, true);
  }

  #setRax(v: bigint): void {
    this.vcpu.run.setBigUint64(REGS + R.rax, BigInt.asUintN(64, v), true);
    this.vcpu.run.setBigUint64(RUN.kvm_dirty_regs, BigInt(SYNC_X86_REGS), true);
  }

  /** Runs the guest until it waits (HC_WAIT) for an event that has not come. */
  runUntilBlocked(): void {
    const run = this.vcpu.run;
    for (;;) {
      const reason = this.vcpu.runOnce();
      if (reason < 0) continue; // a signal for this thread: just go on
      if (reason === EXIT.DIRTY_RING_FULL) {
        const t0 = performance.now();
        this.full.entries += this.ring.harvest(this.vm, this.pages);
        this.full.ms += performance.now() - t0;
        this.full.exits++;
        continue;
      }
      if (reason !== EXIT.IO) throw new Error(`ring VM: unexpected KVM exit ${reason}`);
      const port = run.getUint16(RUN["io.port"], true);
      if (run.getUint8(RUN["io.direction"]) !== IO_OUT) {
        const off = Number(run.getBigUint64(RUN["io.data_offset"], true));
        this.vcpu.runBytes.fill(0xff, off, off + run.getUint8(RUN["io.size"]));
      } else if (port === PORT.doorbellConsole) {
        this.console.service();
      } else if (port === PORT.hypercall) {
        const nr = this.#reg(R.rax);
        if (nr === BigInt(HC.version)) this.#setRax(1n);
        else if (nr === BigInt(HC.wait)) {
          const seq = this.events.seq;
          this.#setRax(BigInt(seq));
          if (seq === Number(this.#reg(R.rsi) & 0xffffffffn)) return;
        } else throw new Error(`ring VM: guest stopped (hypercall ${nr})`);
      } else if (port === PORT.crash) {
        throw new Error("ring VM: guest crashed");
      }
    }
  }

  /** One byte of console input (starts a round of the dirty guest); the pending HC_WAIT returns. */
  input(): void {
    this.console.push(Uint8Array.of(0x2e));
    this.#setRax(BigInt(this.events.seq));
  }

  /** Collects the ring into `pages`, resets it, and takes the VMM's own writes. */
  harvest(): RingHarvest {
    const t0 = performance.now();
    const entries = this.ring.collect(this.pages);
    const t1 = performance.now();
    KvmDirtyRing.reset(this.vm);
    const t2 = performance.now();
    this.mem.takeDirty(this.#vmmBits);
    const t3 = performance.now();
    return { entries, collectMs: t1 - t0, resetMs: t2 - t1, vmmMs: t3 - t2 };
  }

  close(): void {
    this.ring.close();
    this.vcpu.close();
    this.vm.close();
    this.system.close();
    libc().close(this.memfd);
  }
}
