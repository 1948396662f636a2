/**
 * The vCPU thread: a Worker that calls KVM_RUN synchronously and handles the
 * exits that need no host I/O (hypercalls, doorbells, crashes) where they
 * happen. Device work is handed to the main thread through the control block.
 * @module
 */

/// <reference lib="deno.worker" />

import { gettid } from "../ffi/libc.ts";
import { EXIT, IO_OUT, LAYOUT, MSR_IA32_TSC, SYNC_X86_REGS } from "../hypervisor/kvm/abi.ts";
import { KvmVcpu } from "../hypervisor/kvm/vcpu.ts";
import { GuestMemory } from "../hypervisor/guest_memory.ts";
import { guestNow } from "./clock_read.ts";
import { ABI_VERSION, EVENTS, GPA, HC, PORT } from "./layout.ts";
import {
  CTL,
  Request,
  type StopReport,
  VcpuState,
  vectorName,
  type WorkerInit,
  type WorkerMessage,
} from "./vcpu_control.ts";

const RUN = LAYOUT.kvm_run.fields;
const REGS = LAYOUT.kvm_run.fields.s + LAYOUT.kvm_sync_regs.fields.regs;
const SREGS = LAYOUT.kvm_run.fields.s + LAYOUT.kvm_sync_regs.fields.sregs;
const R = LAYOUT.kvm_regs.fields;
const MAX_PANIC_MESSAGE = 4096;

function post(msg: WorkerMessage): void {
  self.postMessage(msg);
}

self.onmessage = (e: MessageEvent<WorkerInit>) => {
  const init = e.data;
  let report: StopReport;
  try {
    report = runLoop(init);
  } catch (err) {
    report = { kind: "error", message: err instanceof Error ? err.message : String(err) };
  }
  Atomics.store(init.control, CTL.state, VcpuState.STOPPED);
  Atomics.notify(init.control, CTL.state);
  post({ type: "stop", report });
  self.close();
};

function runLoop(init: WorkerInit): StopReport {
  const ctl = init.control;
  const vcpu = KvmVcpu.attach(init.vcpuFd, init.mmapSize);
  const ram = Deno.UnsafePointerView.getArrayBuffer(
    Deno.UnsafePointer.create(init.ramAddress)!,
    init.ramBytes,
  );
  const mem = new GuestMemory(ram, init.ramBytes);
  const run = vcpu.run;
  vcpu.enableSyncRegs();
  Atomics.store(ctl, CTL.tid, gettid());
  post({ type: "ready", tid: gettid() });

  let pendingExit = false;
  for (;;) {
    vcpu.immediateExit = false;
    const req = Atomics.load(ctl, CTL.request);
    if (req !== Request.NONE) {
      if (pendingExit) {
        // Complete the in-flight port access before anything is saved.
        vcpu.immediateExit = true;
        vcpu.runOnce();
        pendingExit = false;
        continue;
      }
      if (req === Request.STOP) return { kind: "stopped" };
      Atomics.store(ctl, CTL.state, VcpuState.PAUSED);
      Atomics.add(ctl, CTL.parks, 1);
      Atomics.notify(ctl, CTL.state);
      Atomics.notify(ctl, CTL.parks);
      Atomics.wait(ctl, CTL.request, req);
      continue;
    }
    Atomics.store(ctl, CTL.state, VcpuState.RUNNING);
    // Re-check after publishing RUNNING: a request stored before this point
    // is seen here; one stored after it also sets immediate_exit and kicks.
    if (Atomics.load(ctl, CTL.request) !== Request.NONE) continue;
    const reason = vcpu.runOnce();
    Atomics.store(ctl, CTL.state, VcpuState.EXIT);
    pendingExit = false;
    if (reason < 0) continue; // kicked
    Atomics.add(ctl, CTL.exits, 1);
    switch (reason) {
      case EXIT.IO: {
        Atomics.add(ctl, CTL.ioExits, 1);
        pendingExit = true;
        const dir = run.getUint8(RUN["io.direction"]);
        const port = run.getUint16(RUN["io.port"], true);
        if (dir !== IO_OUT) {
          // Unknown input port: reads as all ones.
          const size = run.getUint8(RUN["io.size"]);
          const off = Number(run.getBigUint64(RUN["io.data_offset"], true));
          vcpu.runBytes.fill(0xff, off, off + size * run.getUint32(RUN["io.count"], true));
          break;
        }
        if (port === PORT.hypercall) {
          const stop = hypercall();
          if (stop) return stop;
        } else if (port === PORT.crash) {
          return crashReport();
        } else {
          const bit = init.doorbellPorts[port];
          if (bit !== undefined) {
            Atomics.or(ctl, CTL.doorbells, 1 << bit);
            Atomics.notify(ctl, CTL.doorbells);
          }
        }
        break;
      }
      case EXIT.SHUTDOWN:
        return shutdownReport();
      case EXIT.MMIO: {
        const addr = run.getBigUint64(RUN["mmio.phys_addr"], true);
        return {
          kind: "crash",
          vector: -1,
          errorCode: 0,
          rip: reg(R.rip),
          cr2: addr,
          detail: `access outside guest RAM at 0x${addr.toString(16)}`,
        };
      }
      case EXIT.INTERNAL_ERROR:
        return {
          kind: "error",
          message: `KVM internal error, suberror ${run.getUint32(RUN["internal.suberror"], true)}`,
        };
      case EXIT.FAIL_ENTRY:
        return { kind: "error", message: "KVM failed to enter the guest" };
      default:
        return { kind: "error", message: `unexpected KVM exit ${reason}` };
    }
  }

  function reg(off: number): bigint {
    return run.getBigUint64(REGS + off, true);
  }

  function setRax(value: bigint): void {
    run.setBigUint64(REGS + R.rax, BigInt.asUintN(64, value), true);
    run.setBigUint64(RUN.kvm_dirty_regs, BigInt(SYNC_X86_REGS), true);
  }

  function hypercall(): StopReport | undefined {
    Atomics.add(ctl, CTL.hypercalls, 1);
    const nr = reg(R.rax);
    switch (nr) {
      case BigInt(HC.version):
        setRax(BigInt(ABI_VERSION));
        return undefined;
      case BigInt(HC.wait):
        setRax(BigInt(waitForEvent(reg(R.rdi), Number(reg(R.rsi) & 0xffffffffn))));
        return undefined;
      case BigInt(HC.exit):
        return { kind: "exit", code: Number(reg(R.rdi) & 0xffn) };
      case BigInt(HC.panic): {
        const gpa = Number(reg(R.rdi));
        const len = Math.min(Number(reg(R.rsi)), MAX_PANIC_MESSAGE);
        const message = mem.contains(gpa, len)
          ? new TextDecoder().decode(mem.read(gpa, len))
          : `(message at 0x${gpa.toString(16)} is outside guest RAM)`;
        return { kind: "panic", message };
      }
      default:
        setRax(BigInt(HC.bad));
        return undefined;
    }
  }

  /** HC_WAIT: until the event seq moves, the deadline passes, or a request arrives. */
  function waitForEvent(deadline: bigint, seen: number): number {
    Atomics.add(ctl, CTL.waits, 1);
    for (;;) {
      const wake = Atomics.load(ctl, CTL.wake);
      const seq = mem.u32(GPA.events + EVENTS.seq);
      if (seq !== seen || Atomics.load(ctl, CTL.request) !== Request.NONE) return seq;
      const now = guestNow(mem, vcpu.getMsrs([MSR_IA32_TSC])[0]);
      if (now >= deadline) return seq;
      const ms = Number(deadline - now) / 1e6;
      Atomics.store(ctl, CTL.state, VcpuState.BLOCKED);
      Atomics.wait(ctl, CTL.wake, wake, Math.min(ms, 1000));
      Atomics.store(ctl, CTL.state, VcpuState.EXIT);
    }
  }

  function crashReport(): StopReport {
    const rsp = Number(reg(R.rsp));
    const cr2 = run.getBigUint64(SREGS + LAYOUT.kvm_sregs.fields.cr2, true);
    if (!mem.contains(rsp, 7 * 8)) {
      return {
        kind: "error",
        message: `crash with ring-0 stack outside RAM (rsp 0x${rsp.toString(16)})`,
      };
    }
    const vector = Number(mem.u64(rsp));
    const errorCode = Number(mem.u64(rsp + 8));
    const rip = mem.u64(rsp + 16);
    return {
      kind: "crash",
      vector,
      errorCode,
      rip,
      cr2,
      detail: `${vectorName(vector)}, error code 0x${errorCode.toString(16)}`,
    };
  }

  function shutdownReport(): StopReport {
    const events = vcpu.getEvents();
    const f = LAYOUT.kvm_vcpu_events.fields;
    const vector = events[f["exception.nr"]];
    const errorCode = new DataView(events.buffer).getUint32(f["exception.error_code"], true);
    return {
      kind: "crash",
      vector,
      errorCode,
      rip: reg(R.rip),
      cr2: run.getBigUint64(SREGS + LAYOUT.kvm_sregs.fields.cr2, true),
      detail: `triple fault (${vectorName(vector)})`,
    };
  }
}
