/**
 * Replication benchmark (issue 3), one run on loopback, unpinned (both
 * processes float over the 2 vCPUs; see machine-limits.md for why that makes
 * small-message latency bimodal — the spread is reported):
 *
 * 1. pause and output latency (p50/p99) with a per-stage breakdown for 1 to
 *    1,000 dirty pages per sync (logwriter rate=0 dirty=N, kemari mode), and
 *    syncs/s sustained;
 * 2. logwriter throughput unprotected vs kemari vs remus (25 ms) vs hybrid;
 * 3. failover time: kill -9 of the primary to the standby running the guest.
 *
 *   deno run -A bench/replication.ts
 * @module
 */

import { emitJson, fmt, printTable, spread, summarize } from "./common.ts";
import { kill9, startPair, statusOf, waitFor } from "../tests/support/pair.ts";
import type { Status } from "../replication/status.ts";

const RUN_MS = 3000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function protectedRun(
  dir: string,
  tag: string,
  mode: "kemari" | "remus" | "hybrid",
  args: string,
): Promise<{ status: Status; records: number; seconds: number }> {
  const pair = await startPair(dir, {
    tag,
    mode,
    memory: "256M",
    guestArgs: args,
    timeout: "1s",
    diskBytes: 256 << 20,
  });
  await waitFor(pair.standby, (s) => s.state === "ready", 30000, "ready");
  const before = (await statusOf(pair.primary))!;
  const lines0 = countLines(pair.primaryConsole);
  const t0 = performance.now();
  await sleep(RUN_MS);
  const status = (await statusOf(pair.primary))!;
  const seconds = (performance.now() - t0) / 1000;
  const records = countLines(pair.primaryConsole) - lines0;
  status.checkpoints -= before.checkpoints;
  pair.primary.child.kill("SIGTERM");
  await pair.primary.status;
  // The primary's BYE stops the standby; do not wait forever if it got lost.
  const timer = setTimeout(() => kill9(pair.standby), 5000);
  await pair.standby.status;
  clearTimeout(timer);
  return { status, records, seconds };
}

function countLines(path: string): number {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l.startsWith("rec ")).length;
  } catch {
    return 0;
  }
}

async function unprotectedRun(dir: string, args: string): Promise<number> {
  const out = `${dir}/unprotected.txt`;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../main.ts", import.meta.url).pathname,
      "run",
      "--memory",
      "256M",
      "--guest",
      "logwriter",
      "--args",
      args,
      "--disk",
      `${dir}/unprotected.img`,
      "--create-disk",
      "256M",
      "--console",
      `file:${out}`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await sleep(500);
  const l0 = countLines(out);
  const t0 = performance.now();
  await sleep(RUN_MS);
  const n = countLines(out) - l0;
  const s = (performance.now() - t0) / 1000;
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  await child.status;
  return n / s;
}

const dir = await Deno.makeTempDir({ prefix: "kemari-bench-" });
try {
  // 1. latency per dirty-page count
  console.log("pause and output latency, kemari mode, logwriter rate=0 (unpinned, 256 MiB guest)");
  const rows: string[][] = [];
  const latency: Record<string, unknown> = {};
  for (const dirty of [1, 16, 64, 256, 1000]) {
    const { status, seconds } = await protectedRun(
      dir,
      `lat${dirty}`,
      "kemari",
      `records=0 rate=0 dirty=${dirty}`,
    );
    const m = status.metrics!;
    const ms = (k: string) => `${fmt(m[k]?.p50 ?? NaN, 3)}/${fmt(m[k]?.p99 ?? NaN, 3)}`;
    rows.push([
      String(dirty),
      fmt(m.pages?.p50 ?? NaN, 0),
      ms("pause"),
      ms("output"),
      ms("stop"),
      ms("harvest"),
      ms("copy"),
      ms("state"),
      ms("send"),
      ms("ack"),
      ms("release"),
      fmt(status.checkpoints / seconds, 0),
    ]);
    latency[dirty] = { metrics: m, syncsPerSec: status.checkpoints / seconds };
  }
  printTable(
    [
      "dirty/rec",
      "pages/sync",
      "pause p50/p99 ms",
      "output p50/p99",
      "stop",
      "harvest",
      "copy",
      "state",
      "send",
      "ack",
      "release",
      "syncs/s",
    ],
    rows,
  );

  // 2. throughput per mode
  console.log(
    "\nlogwriter throughput (records/s; rate=0 dirty=16; each record = disk write + console line)",
  );
  const args = "records=0 rate=0 dirty=16";
  const through: Record<string, number[]> = { unprotected: [], kemari: [], remus: [], hybrid: [] };
  for (let run = 0; run < 3; run++) {
    through.unprotected.push(await unprotectedRun(dir, args));
    for (const mode of ["kemari", "remus", "hybrid"] as const) {
      const r = await protectedRun(dir, `t${mode}${run}`, mode, args);
      through[mode].push(r.records / r.seconds);
    }
  }
  printTable(
    ["mode", "records/s median (min–max), 3 runs"],
    Object.entries(through).map(([k, v]) => [k === "remus" ? "remus (25 ms)" : k, spread(v, 0)]),
  );

  // 3. failover time
  console.log(
    "\nfailover: kill -9 of the primary → the guest runs on the standby (timeout 500 ms)",
  );
  const failover: number[] = [];
  for (let i = 0; i < 5; i++) {
    const pair = await startPair(dir, {
      tag: `f${i}`,
      guestArgs: "records=0 rate=200",
      timeout: "500ms",
    });
    await waitFor(pair.standby, (s) => s.state === "ready", 30000, "ready");
    await sleep(300);
    const t0 = performance.now();
    await kill9(pair.primary);
    await waitFor(pair.standby, (s) => s.role === "primary", 5000, "takeover");
    failover.push(performance.now() - t0);
    pair.standby.child.kill("SIGTERM");
    await pair.standby.status;
  }
  const f = summarize(failover);
  console.log(`failover ms: median ${fmt(f.p50)} (min ${fmt(f.min)}, max ${fmt(f.max)}), 5 runs`);
  emitJson({
    bench: "replication",
    pinning: "none",
    latency,
    throughput: through,
    failoverMs: failover,
  });
} finally {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}
