/**
 * Full save and restore of 256 MiB and 4 GiB guests running `dirty
 * pages=10000 log=1` (about 40 MiB of written memory; the guest prints
 * "dirty: resumed ..." whenever its wait returns without an event, so the
 * first console line after a restore marks the guest running again).
 *
 * - save: `Machine.saveTo(file in /tmp)` (pause, vCPU + device state, dirty
 *   harvest, write every page ever written, resume), 5 times.
 * - restore in-process: `Machine.restore(file)` until it resolves, and until
 *   the guest's first console line, 5 times.
 * - `kemari resume FILE` as a subprocess until its first stdout line, 5
 *   times, next to `deno run -A main.ts help` (Deno start-up alone).
 *
 * Reports medians (min–max) and the state-file size. Unpinned; add
 * `--cpus 0` to run under `taskset -c 0` (the subprocesses inherit it).
 *
 *   deno run -A bench/save_restore.ts [--reps 5] [--cpus LIST]
 * @module
 */

import { parseArgs } from "node:util";
import { Machine } from "../machine/machine.ts";
import type { ConsoleSink } from "../devices/console_sink.ts";
import { buildGuest, guestPath } from "../guest/build.ts";
import {
  allowedCpus,
  emitJson,
  MAIN,
  printHost,
  printTable,
  reexecPinned,
  spread,
  waitUntil,
} from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    reps: { type: "string", default: "5" },
    cpus: { type: "string" },
    pinned: { type: "boolean" },
  },
});
const REPS = Number(values.reps);
const SIZES = [{ label: "256 MiB", bytes: 256 * 2 ** 20 }, { label: "4 GiB", bytes: 4 * 2 ** 30 }];

/** A sink that records when the first complete line arrived. */
class FirstLineSink implements ConsoleSink {
  firstLineAt: number | undefined;
  write(bytes: Uint8Array): void {
    if (this.firstLineAt === undefined && bytes.includes(10)) this.firstLineAt = performance.now();
  }
  close(): void {}
}

/** ms from spawning `deno run -A main.ts args` to its first stdout line (then SIGTERM). */
async function firstLine(args: string[]): Promise<number> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  let at: number | undefined;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (value.includes(10)) {
      at = performance.now();
      break;
    }
  }
  reader.releaseLock();
  try {
    child.kill("SIGTERM");
  } catch { /* already exited */ }
  await child.stdout.cancel().catch(() => {});
  await child.status;
  if (at === undefined) throw new Error(`kemari ${args.join(" ")} printed no line`);
  return at - t0;
}

async function measure(ramBytes: number, path: string) {
  const sink = new FirstLineSink();
  const m = await Machine.boot({
    ramBytes,
    guest: guestPath("dirty"),
    args: "pages=10000 log=1",
    console: sink,
  });
  const save: number[] = [];
  try {
    await waitUntil("the guest's first wait", () => m.backend.vcpuState() === "blocked", 60_000);
    for (let i = 0; i < REPS; i++) {
      const t0 = performance.now();
      await m.saveTo(path);
      save.push(performance.now() - t0);
      await waitUntil("blocked", () => m.backend.vcpuState() === "blocked", 60_000);
    }
  } finally {
    await m.shutdown();
  }
  const bytes = Deno.statSync(path).size;
  const restore: number[] = [], restoreLine: number[] = [];
  for (let i = 0; i < REPS; i++) {
    const s = new FirstLineSink();
    const t0 = performance.now();
    const r = await Machine.restore(path, { console: s });
    restore.push(performance.now() - t0);
    try {
      await waitUntil("the first line after restore", () => s.firstLineAt !== undefined);
      restoreLine.push(s.firstLineAt! - t0);
    } finally {
      await r.shutdown();
    }
  }
  const resume: number[] = [];
  for (let i = 0; i < REPS; i++) resume.push(await firstLine(["resume", path]));
  return { bytes, save, restore, restoreLine, resume };
}

async function main(): Promise<void> {
  if (await reexecPinned(new URL(import.meta.url).pathname, values.cpus, values.pinned)) return;
  printHost("full save and restore (ms)");
  await buildGuest();
  const dir = await Deno.makeTempDir({ prefix: "kemari-bench-save-" });
  const rows: string[][] = [];
  const results: Record<string, unknown>[] = [];
  try {
    const startup: number[] = [];
    for (let i = 0; i < REPS; i++) startup.push(await firstLine(["help"]));
    for (const size of SIZES) {
      const r = await measure(size.bytes, `${dir}/vm.state`);
      const mib = r.bytes / 2 ** 20;
      rows.push([size.label, "Machine.saveTo", `${mib.toFixed(1)} MiB`, spread(r.save)]);
      rows.push([size.label, "Machine.restore", "", spread(r.restore)]);
      rows.push([size.label, "restore → first guest line", "", spread(r.restoreLine)]);
      rows.push([size.label, "kemari resume → first line", "", spread(r.resume)]);
      results.push({ ram: size.bytes, ...r });
    }
    rows.push(["–", "deno run main.ts help → first line", "", spread(startup)]);
    results.push({ startupMs: startup });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  console.log(`guest: dirty pages=10000 log=1; ${REPS} repetitions; median (min–max) ms`);
  printTable(["RAM", "operation", "state file", "ms"], rows);
  console.log(
    `pinning: ${values.pinned ? `taskset -c ${values.cpus} (whole process)` : "none"}` +
      ` (CPUs ${allowedCpus()}); state file in ${dir.replace(/[^/]*$/, "")}`,
  );
  emitJson({ bench: "save_restore", unit: "ms", reps: REPS, results });
}

await main();
