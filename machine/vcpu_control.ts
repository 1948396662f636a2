/**
 * The vCPU state machine, shared between the VMM's main thread and the vCPU
 * Worker through a SharedArrayBuffer, so the main thread always knows where
 * the vCPU is.
 *
 *   NEW -> RUNNING <-> EXIT (handling an exit in the Worker)
 *                  <-> BLOCKED (in the wait hypercall)
 *   any -> PAUSED  (on request; a pending exit is completed first)
 *   any -> STOPPED (guest exit, panic, crash, error, or stop request)
 * @module
 */

export const VcpuState = {
  NEW: 0,
  RUNNING: 1,
  EXIT: 2,
  BLOCKED: 3,
  PAUSED: 4,
  STOPPED: 5,
} as const;
export type VcpuStateValue = typeof VcpuState[keyof typeof VcpuState];

export const STATE_NAMES = ["new", "running", "exit", "blocked", "paused", "stopped"] as const;

export const Request = { NONE: 0, PAUSE: 1, STOP: 2 } as const;

/** Int32 slots of the control block. */
export const CTL = {
  state: 0,
  request: 1,
  tid: 2,
  /** Bumped by the main thread whenever it posts an event to the guest. */
  wake: 3,
  /** Bit per device whose doorbell exited to userspace (exit-mode doorbells). */
  doorbells: 4,
  exits: 5,
  hypercalls: 6,
  waits: 7,
  ioExits: 8,
  kicks: 9,
  /** Bumped by the worker each time it parks, so a waiter sees every pause. */
  parks: 10,
  length: 16,
} as const;

/** A new control block. */
export function newControl(): Int32Array<SharedArrayBuffer> {
  return new Int32Array(new SharedArrayBuffer(CTL.length * 4));
}

/** Why the vCPU stopped, as reported by the Worker. */
export type StopReport =
  | { kind: "exit"; code: number }
  | { kind: "panic"; message: string }
  | {
    kind: "crash";
    vector: number;
    errorCode: number;
    rip: bigint;
    cr2: bigint;
    detail: string;
  }
  | { kind: "error"; message: string }
  | { kind: "stopped" };

/** Messages from the Worker. */
export type WorkerMessage =
  | { type: "ready"; tid: number }
  | { type: "stop"; report: StopReport };

/** What the main thread sends to start the Worker. */
export interface WorkerInit {
  control: Int32Array<SharedArrayBuffer>;
  vcpuFd: number;
  mmapSize: number;
  ramAddress: bigint;
  ramBytes: number;
  /** Ports whose `out` is a doorbell: port -> bit. */
  doorbellPorts: Record<number, number>;
}

/** Human name of a crash vector. */
export function vectorName(v: number): string {
  const names: Record<number, string> = {
    0: "#DE divide error",
    1: "#DB debug",
    3: "#BP breakpoint",
    4: "#OF overflow",
    5: "#BR bound range",
    6: "#UD invalid opcode",
    7: "#NM device not available",
    8: "#DF double fault",
    10: "#TS invalid TSS",
    11: "#NP segment not present",
    12: "#SS stack fault",
    13: "#GP general protection",
    14: "#PF page fault",
    16: "#MF x87 error",
    17: "#AC alignment check",
    18: "#MC machine check",
    19: "#XM SIMD error",
  };
  return names[v] ?? `vector ${v}`;
}
