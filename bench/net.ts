/**
 * Guest networking benchmark (issue 4): netsvc in a 32 MiB VM on the
 * three-host namespace topology of tests/net/cluster.ts (client, primary
 * and standby namespaces on one bridge, replication over the separate repl0
 * veth), one run covering every mode:
 *
 * 1. TCP stream throughput, guest → client: net_probe reads netsvc's
 *    counter stream (every byte checked) for --seconds;
 * 2. TCP echo throughput, both ways: net_probe echoes 4 MiB through netsvc;
 * 3. request/response latency: net_tool rr sends 64 bytes and waits for the
 *    echo on one TCP_NODELAY connection, back to back for --seconds (p50,
 *    p99 per run);
 * 4. failover as the client sees it (protected modes): the primary is
 *    SIGKILLed 1.5 s into a counter stream (net_tool streamgap, every byte
 *    checked) and a 10 ms ping; the longest stall of the stream, the
 *    longest gap between ping replies, and when the standby logged the
 *    takeover, all from the kill.
 *
 * Modes: unprotected (a primary without a standby), kemari, remus (25 ms
 * epochs) and hybrid (kemari + 100 ms at most between checkpoints). Every
 * round runs each mode on a fresh topology, rounds interleaved; the table
 * shows the median with the min–max across rounds. Timeout 400 ms.
 *
 * Pinning: none. The benchmark process, both kemari processes (each with a
 * vCPU worker thread) and the client tools all float over the host's CPUs;
 * nothing is pinned (see docs/BENCHMARKS.md for why placement matters on a
 * 2-CPU host). Wall-clock figures are reported, never asserted.
 *
 *   deno run -A bench/net.ts [--rounds 3] [--seconds 2]
 * @module
 */

import { parseArgs } from "node:util";
import { emitJson, fmt, printHost, printTable, spread, summarize } from "./common.ts";
import {
  type Cluster,
  gapReport,
  parseProbeLines,
  skipReason,
  withCluster,
} from "../tests/net/cluster.ts";

type Mode = "unprotected" | "kemari" | "remus" | "hybrid";
const MODES: readonly Mode[] = ["unprotected", "kemari", "remus", "hybrid"];

const { values } = parseArgs({
  args: Deno.args,
  options: { rounds: { type: "string", default: "3" }, seconds: { type: "string", default: "2" } },
});
const ROUNDS = Number(values.rounds);
const MS = Number(values.seconds) * 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Sample {
  streamMBps: number;
  echoMBps: number;
  rrP50Ms: number;
  rrP99Ms: number;
  rrCount: number;
  checkpointsPerSec: number | null;
  failover: { streamStallMs: number; pingGapMs: number; takeoverMs: number } | null;
}

function match(out: string, re: RegExp): RegExpMatchArray {
  const m = out.match(re);
  if (!m) throw new Error(`unexpected output:\n${out.slice(-400)}`);
  return m;
}

async function measure(c: Cluster, mode: Mode): Promise<Sample> {
  const ip = c.guestIp;
  const before = await c.status("primary");
  const t0 = performance.now();
  const stream = await c.probe(["stream", ip, "9001", String(MS)]);
  const seconds = (performance.now() - t0) / 1000;
  const after = await c.status("primary");
  const bytes = Number(match(stream, /ok stream bytes=(\d+)/)[1]);
  const echoBytes = 4 << 20;
  const echo = await c.probe(["echo", ip, "9000", String(echoBytes), "3"]);
  const echoMs = Number(match(echo, /ok echo conns=1 bytes=\d+ ms=(\d+)/)[1]);
  const rr = await c.tool(["rr", ip, "9000", "64", String(MS)]);
  const rtts = match(rr, /^v (.*)$/m)[1].split(",").map((v) => Number(v) / 1000);
  const s = summarize(rtts);
  const sample: Sample = {
    streamMBps: bytes / (MS / 1000) / 1e6,
    echoMBps: echoBytes / (echoMs / 1000) / 1e6,
    rrP50Ms: s.p50,
    rrP99Ms: s.p99,
    rrCount: s.n,
    checkpointsPerSec: mode === "unprotected" || !before || !after
      ? null
      : (after.checkpoints - before.checkpoints) / seconds,
    failover: null,
  };
  if (mode !== "unprotected") {
    const gap = c.tool(["streamgap", ip, "9001", "4000"]);
    const ping = c.tool(["ping", ip, "10000", "3500"]);
    await sleep(1500);
    const kill = await c.killPrimary();
    const takeover = await c.waitTakeover();
    const gapOut = await gap;
    const [, stallUs, stallAt] = match(
      gapOut,
      /ok streamgap bytes=\d+ longest_us=(\d+) at_us=(\d+)/,
    )
      .map(Number);
    if (stallAt + stallUs < kill) {
      console.warn(`note: the longest stream stall (${stallUs} µs) ended before the kill`);
    }
    const r = gapReport(parseProbeLines(await ping), kill);
    sample.failover = {
      streamStallMs: stallUs / 1000,
      pingGapMs: r.longestGapMs,
      takeoverMs: (takeover - kill) / 1000,
    };
  }
  return sample;
}

const skip = skipReason();
if (skip) {
  console.error(`bench/net.ts cannot run here: ${skip}`);
  Deno.exit(1);
}
printHost("guest networking: netsvc on a TAP, three namespaces, 32 MiB guest");
console.log(
  `# pinning: none (benchmark, kemari primary/standby and client tools float over all CPUs); ` +
    `${ROUNDS} rounds, modes interleaved; ${MS} ms per throughput/latency run`,
);
const samples: Record<Mode, Sample[]> = { unprotected: [], kemari: [], remus: [], hybrid: [] };
const loads: string[] = [];
for (let round = 0; round < ROUNDS; round++) {
  for (const mode of MODES) {
    const sample = await withCluster(
      {
        label: `bench${mode.slice(0, 3)}`,
        mode: mode === "unprotected" ? "kemari" : mode,
        standby: mode !== "unprotected",
      },
      (c) => measure(c, mode),
    );
    samples[mode].push(sample);
    console.log(`round ${round + 1} ${mode}: ${JSON.stringify(sample)}`);
  }
  loads.push(Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" "));
}

const col = (mode: Mode, f: (s: Sample) => number | null, digits = 1) => {
  const xs = samples[mode].map(f).filter((x): x is number => x !== null);
  return xs.length ? spread(xs, digits) : "–";
};
console.log();
printTable(
  [
    "mode",
    "stream MB/s",
    "echo MB/s",
    "rr p50 ms",
    "rr p99 ms",
    "ckpt/s (stream)",
    "TCP stall ms",
    "ping gap ms",
    "takeover ms",
  ],
  MODES.map((mode) => [
    mode === "remus" ? "remus (25 ms)" : mode,
    col(mode, (s) => s.streamMBps),
    col(mode, (s) => s.echoMBps),
    col(mode, (s) => s.rrP50Ms, 2),
    col(mode, (s) => s.rrP99Ms, 2),
    col(mode, (s) => s.checkpointsPerSec, 0),
    col(mode, (s) => s.failover?.streamStallMs ?? null, 0),
    col(mode, (s) => s.failover?.pingGapMs ?? null, 0),
    col(mode, (s) => s.failover?.takeoverMs ?? null, 0),
  ]),
);
console.log(
  `median (min–max) over ${ROUNDS} rounds; rr = 64-byte request/response on one TCP ` +
    `connection; stall/gap/takeover measured from the kill -9 (timeout 400 ms); ` +
    `load average after each round: ${loads.join(" | ")}; ${fmt(MS / 1000)} s runs`,
);
emitJson({ bench: "net", pinning: "none", rounds: ROUNDS, runMs: MS, samples, loads });
