/**
 * Redis benchmark (issue 5): unmodified redis-benchmark against the redis
 * guest, unprotected vs kemari vs remus (25 ms epochs) vs hybrid, in one run.
 *
 * For each mode the guest boots on fresh disk images (in --disk-dir, default
 * the system temp dir) with its TAP on a bridge in a fresh network namespace,
 * and redis-benchmark runs there, in this order:
 *
 *   redis-benchmark -t ping,set,get,incr -c 1        -n <n>
 *   redis-benchmark -t ping,set,get,incr -c 50       -n <n>
 *   redis-benchmark -t ping,set,get,incr -c 50 -P 16 -n <n>
 *
 * with -n sized per mode so the whole bench stays near 3 minutes (listed in
 * the output). The guest's log policy is --sync (default batch: one WRITE +
 * FLUSH per event-loop iteration before its replies), stated in every table.
 * Protected runs use --timeout 2s (failure detection), and the bench checks
 * afterwards that no takeover happened; a run where one did is marked.
 *
 * Prints a table per run (ops/s, p50, p99 for each test), the medians with
 * their spread (min–max) over --runs runs, the goals at -c 50 (kemari ≥ 50 %
 * of unprotected, ≥ 20× remus), a BENCH_JSON line, and writes a bar chart
 * to docs/redis-benchmark.svg (--svg PATH, or --no-svg). --markdown prints
 * the docs/BENCHMARKS.md section.
 *
 *   deno run -A bench/redis.ts [--runs 1] [--sync batch|each] [--disk-dir DIR]
 *
 * Needs root, /dev/kvm, /dev/net/tun, iproute2, gcc and redis-tools (it tries
 * apt-get install -y redis-tools when they are missing).
 * @module
 */

import { parseArgs } from "node:util";
import * as path from "node:path";
import { emitJson, fmt, hostInfo, printHost, printTable, ROOT, summarize } from "./common.ts";
import { buildGuest } from "../guest/build.ts";
import { controlRequest } from "../control/server.ts";
import type { Status } from "../replication/status.ts";
import {
  makeDisk,
  type Proc,
  RedisNet,
  redisToolsSkipReason,
  startPair,
  startUnprotected,
  vmSkipReason,
} from "../tests/redis/support.ts";

type Mode = "unprotected" | "kemari" | "remus" | "hybrid";
const MODES: Mode[] = ["unprotected", "kemari", "remus", "hybrid"];
const CONFIGS = [
  { id: "c1", label: "-c 1", args: ["-c", "1"] },
  { id: "c50", label: "-c 50", args: ["-c", "50"] },
  { id: "c50p16", label: "-c 50 -P 16", args: ["-c", "50", "-P", "16"] },
] as const;
type ConfigId = typeof CONFIGS[number]["id"];
const TESTS = ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"];
const LABEL: Record<string, string> = { PING_INLINE: "PING inl", PING_MBULK: "PING mb" };

/** Requests per test, per mode and config: about 3–6 s per redis-benchmark run. */
const REQUESTS: Record<Mode, Record<ConfigId, number>> = {
  unprotected: { c1: 3000, c50: 30000, c50p16: 300000 },
  kemari: { c1: 500, c50: 6000, c50p16: 60000 },
  remus: { c1: 50, c50: 2000, c50p16: 30000 },
  hybrid: { c1: 500, c50: 6000, c50p16: 60000 },
};
/** With sync=each every SET/INCR waits for its own FLUSH (~0.5 ms here): fewer requests. */
const REQUESTS_EACH: Record<Mode, Record<ConfigId, number>> = {
  unprotected: { c1: 3000, c50: 8000, c50p16: 8000 },
  kemari: { c1: 500, c50: 4000, c50p16: 6000 },
  remus: { c1: 50, c50: 2000, c50p16: 6000 },
  hybrid: { c1: 500, c50: 4000, c50p16: 6000 },
};

interface Cell {
  rps: number;
  p50: number;
  p99: number;
}
/** results[mode][config][test] = one Cell per run. */
type Results = Record<string, Record<string, Record<string, Cell[]>>>;

const { values: opts } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "1" },
    sync: { type: "string", default: "batch" },
    "disk-dir": { type: "string" },
    svg: { type: "string", default: path.join(ROOT, "docs", "redis-benchmark.svg") },
    "no-svg": { type: "boolean", default: false },
    markdown: { type: "boolean", default: false },
  },
});
const RUNS = Math.max(1, Number(opts.runs));
const SYNC = opts.sync === "each" ? "each" : "batch";
const N = SYNC === "each" ? REQUESTS_EACH : REQUESTS;
const IP = "10.77.12.2";

async function status(control: string): Promise<Status | null> {
  try {
    return await controlRequest(control, { cmd: "status" }, 2000) as Status;
  } catch {
    return null;
  }
}

/** Boots the guest in `mode`; returns what to stop, and a check that it stayed protected. */
async function boot(
  net: RedisNet,
  dir: string,
  mode: Mode,
): Promise<{ procs: Proc[]; healthy: () => Promise<string | null> }> {
  const disk = path.join(dir, `${mode}-p.img`), sdisk = path.join(dir, `${mode}-s.img`);
  await makeDisk(disk, 64 << 20);
  const base = { ip: IP, tap: "btap0", disk, args: `sync=${SYNC}` };
  if (mode === "unprotected") {
    const p = await startUnprotected(net, base);
    return { procs: [p], healthy: () => Promise.resolve(p.exited ? "the VMM exited" : null) };
  }
  await makeDisk(sdisk, 64 << 20);
  const pair = await startPair(net, {
    ...base,
    dir,
    mode,
    standbyDisk: sdisk,
    standbyTap: "btap1",
    timeout: "2s",
    extra: mode === "remus" ? ["--interval", "25ms"] : [],
  });
  return {
    procs: [pair.primary, pair.standby],
    healthy: async () => {
      if (pair.standby.lines.some((l) => l.includes("TAKEOVER"))) return "the standby took over";
      const s = await status(pair.primaryControl);
      return s?.state === "protected" ? null : `primary state ${s?.state ?? "gone"}`;
    },
  };
}

/** Processes of the mode being measured (stopped on SIGINT too). */
const live: Proc[] = [];

async function runMode(net: RedisNet, dir: string, mode: Mode, results: Results, run: number) {
  const { procs, healthy } = await boot(net, dir, mode);
  live.push(...procs);
  const rows: string[][] = [];
  try {
    for (const c of CONFIGS) {
      const n = N[mode][c.id];
      const b = await net.benchmark(IP, [...c.args, "-n", String(n), "-t", "ping,set,get,incr"]);
      if (b.code !== 0 || b.rows.length !== TESTS.length) {
        throw new Error(`${mode} ${c.label}: redis-benchmark failed (${b.code}):\n${b.out}`);
      }
      for (const r of b.rows) {
        ((results[mode] ??= {})[c.id] ??= {})[r.test] ??= [];
        results[mode][c.id][r.test].push({ rps: r.rps, p50: r.p50, p99: r.p99 });
        rows.push([mode, c.label, String(n), r.test, fmt(r.rps), fmt(r.p50, 2), fmt(r.p99, 2)]);
      }
    }
    const problem = await healthy();
    if (problem) {
      console.log(`# WARNING: ${mode} run ${run}: ${problem}; its figures are not protected ones`);
    }
  } finally {
    for (const p of procs) await p.stop();
    live.length = 0;
  }
  printTable(["mode", "clients", "n", "test", "ops/s", "p50 ms", "p99 ms"], rows);
}

function med(cells: Cell[] | undefined, k: keyof Cell): number {
  return cells && cells.length ? summarize(cells.map((c) => c[k])).p50 : NaN;
}

function spreadOf(cells: Cell[] | undefined, k: keyof Cell, digits = 1): string {
  if (!cells || !cells.length) return "n/a";
  const s = summarize(cells.map((c) => c[k]));
  return cells.length === 1
    ? fmt(s.p50, digits)
    : `${fmt(s.p50, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

/** Geometric mean of the median ops/s of the five tests (one figure per mode and config). */
function gmean(results: Results, mode: Mode, config: ConfigId): number {
  const xs = TESTS.map((t) => med(results[mode]?.[config]?.[t], "rps")).filter(Number.isFinite);
  return xs.length ? Math.exp(xs.reduce((a, x) => a + Math.log(x), 0) / xs.length) : NaN;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** A plain SVG bar chart: one panel per config, bars per test and mode, log scale. */
export function svgChart(results: Results, subtitle: string): string {
  const colors: Record<Mode, string> = {
    unprotected: "#7f7f7f",
    kemari: "#1f77b4",
    remus: "#d62728",
    hybrid: "#2ca02c",
  };
  const W = 960, H = 420, top = 60, bottom = 70, left = 70, gap = 30;
  const panelW = (W - left - 20 - gap * (CONFIGS.length - 1)) / CONFIGS.length;
  const plotH = H - top - bottom;
  const all = MODES.flatMap((m) =>
    CONFIGS.flatMap((c) => TESTS.map((t) => med(results[m]?.[c.id]?.[t], "rps")))
  ).filter((x) => Number.isFinite(x) && x > 0);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...all, 10))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...all, 100))));
  const y = (v: number) =>
    top + plotH * (1 - (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)));
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
  );
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(
    `<text x="${
      W / 2
    }" y="20" text-anchor="middle" font-size="15" font-weight="bold">redis-benchmark against the kemari redis guest: ops/s (log scale, median of runs)</text>`,
  );
  out.push(
    `<text x="${W / 2}" y="38" text-anchor="middle" fill="#444">${escapeXml(subtitle)}</text>`,
  );
  for (let d = lo; d <= hi; d *= 10) {
    const yy = y(d).toFixed(1);
    out.push(`<line x1="${left}" x2="${W - 20}" y1="${yy}" y2="${yy}" stroke="#ddd"/>`);
    out.push(
      `<text x="${left - 6}" y="${yy}" text-anchor="end" dominant-baseline="middle">${
        d >= 1000 ? `${d / 1000}k` : d
      }</text>`,
    );
  }
  out.push(
    `<text x="16" y="${top + plotH / 2}" transform="rotate(-90 16 ${
      top + plotH / 2
    })" text-anchor="middle">ops/s</text>`,
  );
  CONFIGS.forEach((c, ci) => {
    const x0 = left + ci * (panelW + gap);
    const groupW = panelW / TESTS.length;
    const barW = (groupW - 8) / MODES.length;
    out.push(
      `<text x="${(x0 + panelW / 2).toFixed(1)}" y="${
        H - bottom + 34
      }" text-anchor="middle" font-weight="bold">redis-benchmark ${c.label}</text>`,
    );
    TESTS.forEach((t, ti) => {
      const gx = x0 + ti * groupW + 4;
      out.push(
        `<text x="${(gx + (groupW - 8) / 2).toFixed(1)}" y="${
          H - bottom + 14
        }" text-anchor="middle" font-size="9">${LABEL[t] ?? t}</text>`,
      );
      MODES.forEach((m, mi) => {
        const v = med(results[m]?.[c.id]?.[t], "rps");
        if (!Number.isFinite(v) || v <= 0) return;
        const bx = gx + mi * barW, by = y(v);
        out.push(
          `<rect x="${bx.toFixed(1)}" y="${by.toFixed(1)}" width="${
            (barW - 1).toFixed(1)
          }" height="${(top + plotH - by).toFixed(1)}" fill="${
            colors[m]
          }"><title>${m} ${c.label} ${t}: ${fmt(v)} ops/s</title></rect>`,
        );
      });
    });
    out.push(
      `<line x1="${x0}" x2="${x0 + panelW}" y1="${top + plotH}" y2="${
        top + plotH
      }" stroke="#333"/>`,
    );
  });
  MODES.forEach((m, mi) => {
    const lx = left + mi * 150;
    out.push(`<rect x="${lx}" y="${H - 18}" width="12" height="12" fill="${colors[m]}"/>`);
    out.push(`<text x="${lx + 16}" y="${H - 8}">${m === "remus" ? "remus (25 ms)" : m}</text>`);
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}

function markdown(results: Results, info: Record<string, string | number>): string {
  const lines: string[] = [];
  lines.push(`| mode | clients | test | ops/s | p50 ms | p99 ms |`);
  lines.push(`| ---- | ------- | ---- | ----: | -----: | -----: |`);
  for (const m of MODES) {
    for (const c of CONFIGS) {
      for (const t of TESTS) {
        const cells = results[m]?.[c.id]?.[t];
        lines.push(
          `| ${m} | ${c.label} | ${t} | ${spreadOf(cells, "rps")} | ${
            spreadOf(cells, "p50", 2)
          } | ${spreadOf(cells, "p99", 2)} |`,
        );
      }
    }
  }
  lines.push("");
  lines.push(
    `Host: ${info.cpu}, ${info.cpus} CPUs, Linux ${info.kernel}, load average ${info.loadavg}.`,
  );
  return lines.join("\n");
}

async function main(): Promise<number> {
  printHost("redis benchmark: redis-benchmark vs the redis guest (issue 5)");
  const skip = vmSkipReason() ?? await redisToolsSkipReason();
  if (skip) {
    console.log(`# skipped: ${skip}`);
    return 0;
  }
  const diskDir = opts["disk-dir"] ?? Deno.env.get("TMPDIR") ?? "/tmp";
  console.log(
    `# log policy: sync=${SYNC} (${
      SYNC === "batch"
        ? "one WRITE + FLUSH per event-loop iteration, before its replies"
        : "WRITE + FLUSH before the reply of each write"
    }); ` +
      `disk images in ${diskDir} (replicated disk mode); remus --interval 25ms; hybrid --max-interval 100ms (default); ` +
      `failure detection 2s; ${RUNS} run(s)`,
  );
  console.log(
    `# requests per test (-n): ${
      MODES.map((m) => `${m} ${CONFIGS.map((c) => `${c.label}: ${N[m][c.id]}`).join(", ")}`)
        .join("; ")
    }`,
  );
  await buildGuest();
  const results: Results = {};
  const net = new RedisNet("10.77.12");
  const dir = await Deno.makeTempDir({ prefix: "kemari-bench-redis-", dir: diskDir });
  const onSignal = () => {
    Promise.all(live.map((p) => p.stop()))
      .then(() => net.destroy())
      .then(() => Deno.remove(dir, { recursive: true }))
      .finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  const t0 = performance.now();
  try {
    await net.create();
    for (let run = 1; run <= RUNS; run++) {
      for (const mode of MODES) {
        console.log(`\n## run ${run}/${RUNS}: ${mode}`);
        await runMode(net, dir, mode, results, run);
      }
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    await net.destroy();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  console.log(`\n## medians over ${RUNS} run(s) (min–max), log sync=${SYNC}`);
  const rows: string[][] = [];
  for (const m of MODES) {
    for (const c of CONFIGS) {
      for (const t of TESTS) {
        const cells = results[m]?.[c.id]?.[t];
        rows.push([
          m,
          c.label,
          t,
          spreadOf(cells, "rps"),
          spreadOf(cells, "p50", 2),
          spreadOf(cells, "p99", 2),
        ]);
      }
    }
  }
  printTable(["mode", "clients", "test", "ops/s", "p50 ms", "p99 ms"], rows);

  console.log(`\n## per mode and clients: geometric mean of the five tests' ops/s`);
  const g: Record<string, Record<string, number>> = {};
  const grows: string[][] = [];
  for (const m of MODES) {
    g[m] = {};
    for (const c of CONFIGS) g[m][c.id] = gmean(results, m, c.id);
    grows.push([m, ...CONFIGS.map((c) => fmt(g[m][c.id]))]);
  }
  printTable(["mode", ...CONFIGS.map((c) => c.label)], grows);
  const ratioU = g.kemari.c50 / g.unprotected.c50;
  const ratioR = g.kemari.c50 / g.remus.c50;
  console.log(`\n## goals at -c 50 (log sync=${SYNC})`);
  console.log(
    `kemari / unprotected = ${(ratioU * 100).toFixed(0)} % (goal ≥ 50 %): ${
      ratioU >= 0.5 ? "met" : "NOT met"
    }`,
  );
  console.log(
    `kemari / remus (25 ms) = ${ratioR.toFixed(1)}× (goal ≥ 20×): ${
      ratioR >= 20 ? "met" : "NOT met"
    }`,
  );
  for (const t of TESTS) {
    const k = med(results.kemari?.c50?.[t], "rps");
    console.log(
      `  ${t.padEnd(11)} kemari/unprotected ${
        (100 * k / med(results.unprotected?.c50?.[t], "rps")).toFixed(0)
      } %, kemari/remus ${(k / med(results.remus?.c50?.[t], "rps")).toFixed(1)}×`,
    );
  }
  const seconds = (performance.now() - t0) / 1000;
  console.log(`\n# wall time ${seconds.toFixed(0)} s`);

  const info = hostInfo();
  if (!opts["no-svg"]) {
    const subtitle =
      `log sync=${SYNC}; -t ping,set,get,incr; ${RUNS} run(s); ${info.cpu}, ${info.cpus} CPUs; load ${info.loadavg}`;
    await Deno.writeTextFile(opts.svg!, svgChart(results, subtitle));
    console.log(`# wrote ${opts.svg}`);
  }
  if (opts.markdown) console.log(`\n${markdown(results, info)}`);
  emitJson({
    bench: "redis",
    sync: SYNC,
    runs: RUNS,
    requests: N,
    results,
    geomean: g,
    goals: { kemariOverUnprotectedC50: ratioU, kemariOverRemusC50: ratioR },
    seconds,
  });
  return 0;
}

if (import.meta.main) Deno.exit(await main());
