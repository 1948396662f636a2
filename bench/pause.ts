/**
 * Pause latency by vCPU state, in-process with the Machine API: 200
 * pause/resume cycles per guest with a random 1–5 ms gap; each
 * `await machine.pause()` is timed with performance.now() and grouped by the
 * state `machine.backend.vcpuState()` reported just before the pause.
 *
 * Guests: `spin` (busy loop: running), `logwriter rate=10` without a disk
 * (sleeps in HC_WAIT: blocked), and `pingpong` with doorbell=exit and
 * doorbell=ioeventfd (a userspace exit or a wait every few µs: exit/blocked).
 * The kick count is the delta of backend.counters().kicks (tgkill of the vCPU thread).
 *
 * The whole measurement runs twice in child processes: unpinned, and with
 * `taskset -c 0` (every thread of the process, main and vCPU Worker, on CPU 0;
 * taskset cannot pin the vCPU thread alone).
 *
 *   deno run -A bench/pause.ts [--cycles 200]
 * @module
 */

import { parseArgs } from "node:util";
import { Machine } from "../machine/machine.ts";
import { NullSink } from "../devices/console_sink.ts";
import { createImage } from "../devices/disk.ts";
import { buildGuest, guestPath } from "../guest/build.ts";
import {
  allowedCpus,
  emitJson,
  fmt,
  lastJson,
  printHost,
  printTable,
  runDeno,
  sleep,
  summarize,
} from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { cycles: { type: "string", default: "200" }, child: { type: "boolean" } },
});
const CYCLES = Number(values.cycles);

interface Scenario {
  name: string;
  guest: string;
  args: string;
  doorbell: "ioeventfd" | "exit";
  disk: boolean;
}

const SCENARIOS: Scenario[] = [
  { name: "spin", guest: "spin", args: "", doorbell: "ioeventfd", disk: false },
  {
    name: "logwriter rate=10",
    guest: "logwriter",
    args: "rate=10",
    doorbell: "ioeventfd",
    disk: false,
  },
  {
    name: "pingpong exit",
    guest: "pingpong",
    args: "n=100000",
    doorbell: "exit",
    disk: true,
  },
  {
    name: "pingpong ioeventfd",
    guest: "pingpong",
    args: "n=100000",
    doorbell: "ioeventfd",
    disk: true,
  },
];

interface ScenarioResult {
  scenario: string;
  /** Pause times in µs, by the state observed just before the pause. */
  byState: Record<string, number[]>;
  kicks: number;
  exits: number;
}

async function measure(s: Scenario, disk: string): Promise<ScenarioResult> {
  const machine = await Machine.boot({
    ramBytes: 256 << 20,
    guest: guestPath(s.guest),
    args: s.args,
    disk: s.disk ? disk : undefined,
    console: new NullSink(),
    doorbell: s.doorbell,
  });
  try {
    await sleep(50); // past the guest's start-up
    const before = machine.backend.counters();
    const byState: Record<string, number[]> = {};
    for (let i = 0; i < CYCLES; i++) {
      await sleep(1 + Math.random() * 4);
      const state = machine.backend.vcpuState();
      const t0 = performance.now();
      await machine.pause();
      const us = (performance.now() - t0) * 1e3;
      machine.resume();
      (byState[state] ??= []).push(us);
    }
    const after = machine.backend.counters();
    return {
      scenario: s.name,
      byState,
      kicks: after.kicks - before.kicks,
      exits: after.exits - before.exits,
    };
  } finally {
    await machine.shutdown();
  }
}

async function child(): Promise<void> {
  const disk = await Deno.makeTempFile({ prefix: "kemari-bench-pause-", suffix: ".img" });
  createImage(disk, 1 << 20, { overwrite: true });
  const results: ScenarioResult[] = [];
  try {
    for (const s of SCENARIOS) results.push(await measure(s, disk));
  } finally {
    await Deno.remove(disk).catch(() => {});
  }
  emitJson({ bench: "pause-child", allowedCpus: allowedCpus(), results });
}

async function parent(): Promise<void> {
  printHost("pause latency by vCPU state (Machine.pause(), µs)");
  await buildGuest();
  const script = new URL(import.meta.url).pathname;
  const pins = [{ pin: "unpinned", cpus: undefined }, { pin: "taskset -c 0", cpus: "0" }];
  const rows: string[][] = [];
  const out: Record<string, unknown>[] = [];
  for (const p of pins) {
    const args = ["--child", "--cycles", String(CYCLES)];
    const res = lastJson(await runDeno(script, args, p.cpus)).results as ScenarioResult[];
    for (const r of res) {
      const states = Object.keys(r.byState).sort();
      for (const state of states) {
        const s = summarize(r.byState[state]);
        rows.push([p.pin, r.scenario, state, String(s.n), fmt(s.p50), fmt(s.p99), fmt(s.max)]);
        out.push({ pin: p.pin, scenario: r.scenario, state, ...s });
      }
      rows.push([p.pin, r.scenario, "(kicks/exits)", `${r.kicks}/${r.exits}`, "", "", ""]);
      out.push({ pin: p.pin, scenario: r.scenario, kicks: r.kicks, exits: r.exits });
    }
  }
  console.log(
    `${CYCLES} pause/resume cycles per guest, random 1–5 ms gap; state read before pause`,
  );
  printTable(["pinning", "guest", "state before", "n", "p50 µs", "p99 µs", "max µs"], rows);
  console.log(
    "pinning: taskset on the whole process (main thread and vCPU Worker share CPU 0) or none.",
  );
  emitJson({ bench: "pause", cycles: CYCLES, unit: "us", results: out });
}

if (values.child) await child();
else await parent();
