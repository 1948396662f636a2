/**
 * Doorbell round trip: the `pingpong` guest posts a 1-sector READ, rings the
 * block doorbell and waits (HC_WAIT) for the response, n=5000 times, and
 * prints its own p50/p99/max (guest PV clock). The round trip is guest →
 * vCPU Worker (exit mode) or kernel eventfd (ioeventfd mode) → main thread
 * (block backend) → event page notify → vCPU Worker wakes → guest.
 *
 * kemari runs as a subprocess (`deno run -A main.ts run --guest pingpong`),
 * 5 runs per configuration: doorbell ioeventfd vs exit, each unpinned and
 * with the whole process pinned to CPU 0 (`taskset -c 0`). taskset pins every
 * thread of the process together; the vCPU thread cannot be given its own
 * CPU from outside, so "pinned" means main thread and vCPU thread share CPU 0.
 * Reported: median of the per-run p50 (and p99, max) with min–max across runs.
 *
 *   deno run -A bench/doorbell.ts [--runs 5] [--n 5000]
 * @module
 */

import { parseArgs } from "node:util";
import { createImage } from "../devices/disk.ts";
import {
  emitJson,
  fmt,
  MAIN,
  median,
  printHost,
  printTable,
  runDeno,
  summarize,
} from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { runs: { type: "string", default: "5" }, n: { type: "string", default: "5000" } },
});
const RUNS = Number(values.runs);
const N = Number(values.n);

interface RunResult {
  p50: number;
  p99: number;
  max: number;
}

const LINE = /pingpong: n=(\d+) p50_ns=(\d+) p99_ns=(\d+) max_ns=(\d+)/;

async function once(doorbell: string, cpus: string | undefined, disk: string): Promise<RunResult> {
  const args = ["run", "--guest", "pingpong", "--args", `n=${N}`, "--disk", disk];
  const out = await runDeno(MAIN, [...args, "--doorbell", doorbell], cpus);
  const m = LINE.exec(out);
  if (!m) throw new Error(`no pingpong line in kemari output:\n${out}`);
  return { p50: Number(m[2]) / 1e3, p99: Number(m[3]) / 1e3, max: Number(m[4]) / 1e3 };
}

printHost("doorbell → backend → resume round trip (pingpong guest, µs, guest PV clock)");
const disk = await Deno.makeTempFile({ prefix: "kemari-bench-pp-", suffix: ".img" });
createImage(disk, 1 << 20, { overwrite: true });
const configs = [
  { doorbell: "ioeventfd", pin: "unpinned", cpus: undefined },
  { doorbell: "ioeventfd", pin: "taskset -c 0", cpus: "0" },
  { doorbell: "exit", pin: "unpinned", cpus: undefined },
  { doorbell: "exit", pin: "taskset -c 0", cpus: "0" },
];
const results: Record<string, unknown>[] = [];
const rows: string[][] = [];
try {
  await once("ioeventfd", undefined, disk); // warm-up: guest build and module cache
  const runs = new Map<(typeof configs)[number], RunResult[]>(configs.map((c) => [c, []]));
  // Interleave the configurations so slow drifts hit all of them alike.
  for (let r = 0; r < RUNS; r++) {
    for (const c of configs) runs.get(c)!.push(await once(c.doorbell, c.cpus, disk));
  }
  for (const c of configs) {
    const rs = runs.get(c)!;
    const p50 = summarize(rs.map((x) => x.p50));
    const p99 = rs.map((x) => x.p99), max = rs.map((x) => x.max);
    rows.push([
      c.doorbell,
      c.pin,
      `${fmt(p50.p50)} (${fmt(p50.min)}–${fmt(p50.max)})`,
      `${fmt(median(p99))} (${fmt(Math.min(...p99))}–${fmt(Math.max(...p99))})`,
      `${fmt(median(max))} (${fmt(Math.min(...max))}–${fmt(Math.max(...max))})`,
    ]);
    results.push({ doorbell: c.doorbell, pin: c.pin, runs: rs });
  }
} finally {
  await Deno.remove(disk).catch(() => {});
}
console.log(`n=${N} round trips per run, ${RUNS} runs per row; median of runs (min–max of runs)`);
printTable(["doorbell", "pinning", "p50 µs", "p99 µs", "max µs"], rows);
console.log(
  "pinning: taskset on the whole kemari process (all threads on CPU 0); no per-thread pinning.",
);
emitJson({ bench: "doorbell", n: N, runsPerConfig: RUNS, unit: "us", results });
