/**
 * Runs a booted or restored machine until the guest stops, a signal arrives,
 * or a requested save is done; turns the outcome into an exit code and one line.
 * @module
 */

import type { Machine } from "../machine/machine.ts";
import type { StopReport } from "../machine/vcpu_control.ts";
import { EXIT_CODE, report } from "./common.ts";

/** One line describing why the guest stopped. */
export function describeStop(r: StopReport): string {
  switch (r.kind) {
    case "exit":
      return `guest exited with code ${r.code}`;
    case "panic":
      return `guest panicked: ${r.message}`;
    case "crash":
      return `guest crashed: ${r.detail} at rip 0x${r.rip.toString(16)}, cr2 0x${
        r.cr2.toString(16)
      }`;
    case "error":
      return `vCPU error: ${r.message}`;
    case "stopped":
      return "guest stopped";
  }
}

/** Exit code for a stop report. */
export function exitCodeFor(r: StopReport): number {
  switch (r.kind) {
    case "exit":
      return r.code;
    case "panic":
      return EXIT_CODE.guestPanic;
    case "crash":
      return EXIT_CODE.guestCrash;
    case "error":
      return EXIT_CODE.failure;
    case "stopped":
      return EXIT_CODE.ok;
  }
}

/** When to save the VM and stop: after `at` ms, or at the Nth doorbell. */
export type SavePlan = { at: number; path: string } | { onDoorbell: number; path: string };

/** Runs `machine` to the end; with `save`, saves as planned and stops. */
export async function runToCompletion(machine: Machine, save?: SavePlan): Promise<number> {
  let signalled: string | undefined;
  const onSignal = (name: string) => () => {
    signalled = name;
    machine.shutdown().catch(() => {});
  };
  const handlers = (["SIGINT", "SIGTERM"] as const).map((s) => [s, onSignal(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let saved: Promise<void> | undefined;
  const saveNow = () => {
    saved ??= machine.saveTo(save!.path, true).then(() => machine.shutdown());
  };
  if (save && "at" in save) timer = setTimeout(saveNow, save.at);
  if (save && "onDoorbell" in save) {
    // saveTo() freezes the devices at once, so this doorbell's requests
    // stay untaken: they are in flight in the saved state.
    machine.onDoorbell = (count) => {
      if (count === save.onDoorbell) saveNow();
    };
  }
  try {
    const r = await machine.wait();
    if (saved) {
      await saved;
      console.error(`kemari: saved the VM to ${save!.path}`);
      return EXIT_CODE.ok;
    }
    if (signalled) {
      report(`stopped by ${signalled}`);
      return EXIT_CODE.ok;
    }
    await machine.shutdown();
    if (r.kind !== "exit" || r.code !== 0) report(describeStop(r));
    return exitCodeFor(r);
  } finally {
    clearTimeout(timer);
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  }
}
