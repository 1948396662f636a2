/**
 * `kemari demo`: the failover demo on one machine.
 *
 * The default workload, redis, builds a network namespace of its own (a
 * bridge with the TAPs of a primary and a standby, and the clients), runs
 * the reference guest's Redis server under protection, drives it with
 * unmodified redis-benchmark plus the project's checker
 * (tests/redis/checker.ts), kills the primary with SIGKILL mid-run, shows
 * the standby taking over while the load goes on, and verifies every
 * acknowledged write at the end. `--workload logwriter` runs the first demo
 * unchanged: logwriter records on two processes over loopback, checked on
 * console and disk.
 * @module
 */

import { parse, parseDuration, str, UsageError } from "./common.ts";
import { controlRequest } from "../control/server.ts";
import type { Status } from "../replication/status.ts";
import { crc32 } from "node:zlib";

export const DEMO_HELP = `Usage: kemari demo [--workload redis|logwriter] [options]

The failover demo on this machine (as root, with /dev/kvm). With the default
workload, redis, it builds its own network namespace (a bridge, the TAPs of a
primary and a standby, and the clients; no traffic leaves it), boots the
reference guest's Redis server (guest/programs/redis.c) under protection,
runs unmodified redis-benchmark (-c 50, again and again) and the project's
own checker against it, kills the primary with SIGKILL in the middle, shows
the standby taking over while the load goes on, and ends with a summary:
operations, client errors, failover time as the clients saw it, and every
acknowledged write read back. It installs redis-tools with apt-get when
redis-benchmark is missing (and falls back to the checker alone when that
fails). Everything it made (processes, namespace, temporary files) goes away
at the end, also on Ctrl-C or SIGTERM.

Options (redis):
  --duration TIME    how long the client load runs        [default: 15s]
  --kill-after TIME  kill the primary this long into it   [default: 5s]
  --mode MODE        kemari | remus | hybrid              [default: kemari]
  --sync POLICY      the guest's log: each | batch        [default: batch]
  --clients N        redis-benchmark connections          [default: 50]
  --timeout TIME     failure detection of the standby     [default: 1s]
  --workload W       redis | logwriter                    [default: redis]
  -h, --help         this help

--workload logwriter runs the first demo (logwriter records on console and
disk; see 'kemari demo --workload logwriter --help').`;

const CHECKER = new URL("../tests/redis/checker.ts", import.meta.url).pathname;
const GUEST_IP = "10.99.0.2";
const BRIDGE_IP = "10.99.0.1";
const BENCH_CHUNK = 2000;

/** Splits `--workload X` (or `--workload=X`) off the arguments. */
function takeWorkload(argv: string[]): { workload: string; rest: string[] } {
  const rest: string[] = [];
  let workload = "redis";
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--workload") {
      if (i + 1 >= argv.length) {
        throw new UsageError("--workload needs a value (redis or logwriter)");
      }
      workload = argv[++i];
    } else if (a.startsWith("--workload=")) {
      workload = a.slice("--workload=".length);
    } else {
      rest.push(a);
    }
  }
  return { workload, rest };
}

export async function demo(argv: string[]): Promise<number> {
  const { workload, rest } = takeWorkload(argv);
  if (workload === "logwriter") return await logwriterDemo(rest);
  if (workload !== "redis") {
    throw new UsageError(`--workload must be redis or logwriter, not "${workload}"`);
  }
  return await redisDemo(rest);
}

/** A child process whose stdout and stderr lines are collected. */
class Proc {
  readonly lines: string[] = [];
  exited: Deno.CommandStatus | null = null;
  readonly done: Promise<Deno.CommandStatus>;
  readonly #child: Deno.ChildProcess;
  readonly #readers: Promise<void>[];

  constructor(readonly name: string, cmd: string, args: string[], onLine?: (l: string) => void) {
    this.#child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
    const read = async (s: ReadableStream<Uint8Array>) => {
      let partial = "";
      for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
        const parts = (partial + chunk).split("\n");
        partial = parts.pop() ?? "";
        for (const l of parts) {
          this.lines.push(l);
          onLine?.(l);
        }
      }
      if (partial) this.lines.push(partial);
    };
    this.#readers = [read(this.#child.stdout), read(this.#child.stderr)];
    this.done = this.#child.status.then((s) => (this.exited = s));
  }

  async waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray> {
    const deadline = performance.now() + ms;
    for (;;) {
      for (const l of this.lines) {
        const m = l.match(re);
        if (m) return m;
      }
      if (this.exited) {
        throw new Error(`${this.name} exited (${this.exited.code}):\n${this.tail()}`);
      }
      if (performance.now() > deadline) throw new Error(`${this.name}: no ${re}:\n${this.tail()}`);
      await sleep(25);
    }
  }

  /** The exit status, once all output was read. */
  async wait(): Promise<Deno.CommandStatus> {
    const st = await this.done;
    await Promise.all(this.#readers).catch(() => {});
    return st;
  }

  tail(n = 15): string {
    return this.lines.slice(-n).join("\n");
  }

  kill(sig: Deno.Signal = "SIGKILL"): void {
    try {
      if (!this.exited) this.#child.kill(sig);
    } catch { /* gone */ }
  }

  async stop(): Promise<void> {
    this.kill("SIGKILL");
    await this.done;
    await Promise.all(this.#readers).catch(() => {});
  }
}

async function runCmd(cmd: string, args: string[], timeoutMs = 60_000) {
  const r = await new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).output();
  const dec = new TextDecoder();
  return { ok: r.success, code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

function onPath(bin: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/sbin"])) {
    try {
      if (Deno.statSync(`${dir}/${bin}`).isFile) return true;
    } catch { /* not here */ }
  }
  return false;
}

/** Installs redis-tools when redis-benchmark is missing; false when that failed. */
async function ensureRedisTools(): Promise<boolean> {
  if (onPath("redis-benchmark") && onPath("redis-cli")) return true;
  console.log(
    "redis-tools (redis-benchmark, redis-cli) is not installed: " +
      "installing it with apt-get install -y redis-tools …",
  );
  const env = ["env", "DEBIAN_FRONTEND=noninteractive"];
  let r = await runCmd(
    env[0],
    [...env.slice(1), "apt-get", "install", "-y", "-q", "redis-tools"],
    300_000,
  )
    .catch((e) => ({ ok: false, code: -1, out: String(e) }));
  if (!r.ok) {
    await runCmd(env[0], [...env.slice(1), "apt-get", "update", "-q"], 300_000).catch(() => {});
    r = await runCmd(
      env[0],
      [...env.slice(1), "apt-get", "install", "-y", "-q", "redis-tools"],
      300_000,
    )
      .catch((e) => ({ ok: false, code: -1, out: String(e) }));
  }
  if (r.ok && onPath("redis-benchmark")) return true;
  console.log(
    `apt-get failed (${r.out.trim().split("\n").pop()}); ` +
      "falling back to the project's own load generator (tests/redis/checker.ts)",
  );
  return false;
}

async function statusAt(control: string): Promise<Status | null> {
  try {
    return await controlRequest(control, { cmd: "status" }, 1000) as Status;
  } catch {
    return null;
  }
}

interface CheckerProgress {
  ops: number;
  errors: number;
  sinceLastMs: number;
  maxGapMs: number;
}

interface CheckerResult {
  ok: boolean;
  ops: number;
  sets: number;
  incrs: number;
  connErrors: number;
  errorReplies: number;
  incrBreaks: number;
  maxGapMs: number;
  keysChecked: number;
  countersChecked: number;
  mismatches: number;
  problems: string[];
}

const n = (x: number) => Math.round(x).toLocaleString("en-US");
const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

async function redisDemo(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    duration: { type: "string" },
    "kill-after": { type: "string" },
    mode: { type: "string" },
    sync: { type: "string" },
    clients: { type: "string" },
    timeout: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  const duration = parseDuration(str(values.duration, "15s"), "--duration");
  const killAfter = parseDuration(str(values["kill-after"], "5s"), "--kill-after");
  const mode = str(values.mode, "kemari");
  const sync = str(values.sync, "batch");
  const clients = Number(str(values.clients, "50"));
  const timeout = str(values.timeout, "1s");
  parseDuration(timeout, "--timeout");
  if (!["kemari", "remus", "hybrid"].includes(mode)) {
    throw new UsageError(`--mode must be kemari, remus or hybrid, not "${mode}"`);
  }
  if (sync !== "each" && sync !== "batch") throw new UsageError(`--sync must be each or batch`);
  if (!Number.isInteger(clients) || clients < 1 || clients > 100) {
    throw new UsageError("--clients must be 1..100 (the guest's stack has 128 connection slots)");
  }
  if (killAfter >= duration) throw new UsageError("--kill-after must be shorter than --duration");
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) {
    throw new Error("the demo needs root on Linux (network namespaces, TAP devices, /dev/kvm)");
  }
  for (const f of ["/dev/kvm", "/dev/net/tun"]) {
    try {
      Deno.statSync(f);
    } catch {
      throw new Error(`the demo needs ${f}`);
    }
  }
  if (!onPath("ip")) throw new Error("the demo needs iproute2 (ip)");

  const haveBench = await ensureRedisTools();
  const { buildGuest, guestPath } = await import("../guest/build.ts");
  await buildGuest();

  // Everything the demo makes, for the cleanup.
  const ns = `kemari-demo-${Deno.pid}-${crypto.randomUUID().slice(0, 6)}`;
  let nsMade = false;
  const tmpBase = (() => {
    try {
      return Deno.statSync("/dev/shm").isDirectory ? "/dev/shm" : undefined;
    } catch {
      return undefined;
    }
  })();
  const dir = await Deno.makeTempDir({ prefix: "kemari-demo-", dir: tmpBase });
  const procs: Proc[] = [];
  let stopping = false;
  const cleanup = async () => {
    stopping = true;
    for (const p of procs) await p.stop();
    if (nsMade) await runCmd("ip", ["netns", "del", ns]).catch(() => {});
    nsMade = false;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    console.log("\ninterrupted: cleaning up");
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const inNs = (args: string[]) => ["netns", "exec", ns, ...args];
  const must = async (args: string[]) => {
    const r = await runCmd("ip", args);
    if (!r.ok) throw new Error(`ip ${args.join(" ")}: ${r.out.trim()}`);
  };
  const spawn = (name: string, args: string[], onLine?: (l: string) => void) => {
    const p = new Proc(name, "ip", inNs(args), onLine);
    procs.push(p);
    return p;
  };
  const attach = async (tap: string) => {
    for (let i = 0; i < 400; i++) {
      if ((await runCmd("ip", ["-n", ns, "link", "show", tap])).ok) break;
      await sleep(25);
    }
    await must(["-n", ns, "link", "set", tap, "master", "br0"]);
    await must(["-n", ns, "link", "set", tap, "up"]);
  };

  try {
    await must(["netns", "add", ns]);
    nsMade = true;
    await must(["-n", ns, "link", "set", "lo", "up"]);
    await must(["-n", ns, "link", "add", "br0", "type", "bridge"]);
    await must(["-n", ns, "addr", "add", `${BRIDGE_IP}/24`, "dev", "br0"]);
    await must(["-n", ns, "link", "set", "br0", "up"]);

    const key = `${dir}/key`;
    Deno.writeTextFileSync(
      key,
      Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, "0"))
        .join(""),
    );
    for (const d of ["primary.img", "standby.img"]) {
      const f = Deno.createSync(`${dir}/${d}`);
      f.truncateSync(64 << 20);
      f.close();
    }
    const kemari = [Deno.execPath(), "run", "-A", MAIN];
    const common = ["--key", key, "--memory", "128M", "--mode", mode, "--timeout", timeout];
    console.log(
      `kemari demo (redis): namespace ${ns}, bridge ${BRIDGE_IP}/24; the guest is ${GUEST_IP}:6379 ` +
        `(guest/programs/redis.c, log sync=${sync}); ${mode} mode, failure detection ${timeout}`,
    );
    console.log(`  disk images in ${dir} (${tmpBase ? "tmpfs" : "temp dir"})`);
    const primaryControl = `${dir}/primary.sock`, standbyControl = `${dir}/standby.sock`;
    const primary = spawn("primary", [
      ...kemari,
      "primary",
      "--guest",
      guestPath("redis"),
      "--args",
      `ip=${GUEST_IP}/24 gw=${BRIDGE_IP} sync=${sync}`,
      "--disk",
      `${dir}/primary.img`,
      "--tuntap",
      "tapP",
      "--mac",
      "52:54:00:99:00:02",
      "--listen",
      "127.0.0.1:7700",
      "--control",
      primaryControl,
      ...common,
    ]);
    await primary.waitFor(/redis: ip .* ready/, 60_000);
    await attach("tapP");
    console.log("primary: the redis guest is up");
    const standby = spawn("standby", [
      ...kemari,
      "standby",
      "--primary",
      "127.0.0.1:7700",
      "--listen",
      "127.0.0.1:7710",
      "--disk",
      `${dir}/standby.img`,
      "--tuntap",
      "tapS",
      "--control",
      standbyControl,
      ...common,
    ]);
    await standby.waitFor(/standby ready: checkpoint/, 120_000);
    await attach("tapS");
    console.log("standby: ready, the guest is protected");

    // The load: the checker (8 connections, every acknowledged write
    // recorded), and redis-benchmark -c N in back-to-back runs.
    let progress: CheckerProgress = { ops: 0, errors: 0, sinceLastMs: 0, maxGapMs: 0 };
    let checkerResult: CheckerResult | null = null;
    const loadConns = haveBench ? 8 : Math.max(8, clients);
    const t0 = performance.now();
    const checker = spawn("checker", [
      Deno.execPath(),
      "run",
      "-A",
      CHECKER,
      "--host",
      GUEST_IP,
      "--conns",
      String(loadConns),
      "--duration-ms",
      String(duration),
      "--progress-ms",
      "200",
      "--prefix",
      "demo",
    ], (l) => {
      if (l.startsWith("CHECKER_PROGRESS ")) progress = JSON.parse(l.slice(17));
      if (l.startsWith("CHECKER_RESULT ")) checkerResult = JSON.parse(l.slice(15));
    });
    const bench = {
      runs: 0,
      failed: 0,
      ops: 0,
      incrs: 0,
      maxLatencyMs: 0,
      failures: [] as string[],
    };
    const benchLoop = (async () => {
      if (!haveBench) return;
      while (!stopping && performance.now() - t0 < duration) {
        const p = spawn("redis-benchmark", [
          "redis-benchmark",
          "-h",
          GUEST_IP,
          "-c",
          String(clients),
          "-n",
          String(BENCH_CHUNK),
          "-t",
          "set,get,incr",
          "--csv",
        ]);
        const st = await p.wait();
        procs.splice(procs.indexOf(p), 1);
        if (stopping) break;
        bench.runs++;
        const rows = p.lines.filter((l) => /^"(SET|GET|INCR)",/.test(l));
        const bad = p.lines.filter((l) => /error|reset|refused|closed/i.test(l));
        if (st.code !== 0 || rows.length !== 3 || bad.length) {
          bench.failed++;
          bench.failures.push(`run ${bench.runs}: exit ${st.code}: ${bad.join(" ") || p.tail(3)}`);
          continue;
        }
        bench.ops += 3 * BENCH_CHUNK;
        bench.incrs += BENCH_CHUNK;
        for (const r of rows) {
          bench.maxLatencyMs = Math.max(
            bench.maxLatencyMs,
            Number(r.split(",")[7].replaceAll('"', "")),
          );
        }
      }
    })();

    // Live status, the kill, the takeover.
    const tty = Deno.stdout.isTerminal();
    const enc = new TextEncoder();
    let killedAt = -1, tookOverMs = -1, lastPrint = 0;
    let pstat: Status | null = null;
    /** (time, ops) samples of the last 3 s, for the rate (benchmark runs finish in steps). */
    const samples: Array<[number, number]> = [];
    while (performance.now() - t0 < duration + 500 && !checkerResult) {
      const now = performance.now();
      if (killedAt < 0 && now - t0 >= killAfter) {
        if (tty) Deno.stdout.writeSync(enc.encode("\n"));
        console.log(`killing the primary (SIGKILL) at t=${secs(now - t0)} …`);
        primary.kill("SIGKILL");
        killedAt = performance.now();
      }
      if (killedAt < 0) pstat = await statusAt(primaryControl);
      else if (tookOverMs < 0) {
        const s = await statusAt(standbyControl);
        if (s?.role === "primary") {
          tookOverMs = performance.now() - killedAt;
          if (tty) Deno.stdout.writeSync(enc.encode("\n"));
          console.log(
            `the standby took over ${secs(tookOverMs)} after the kill; the load goes on there`,
          );
        }
      }
      const ops = bench.ops + progress.ops;
      samples.push([now, ops]);
      while (samples.length > 2 && now - samples[0][0] > 3000) samples.shift();
      const span = now - samples[0][0];
      const rate = span > 500 ? (ops - samples[0][1]) * 1000 / span : 0;
      if (tty || now - lastPrint >= 1000) {
        lastPrint = now;
        const where = killedAt < 0
          ? `primary epoch ${pstat?.epoch ?? "?"} (${pstat?.state ?? "?"}), pause ${
            pstat?.lastPauseMs?.toFixed(2) ?? "-"
          } ms`
          : tookOverMs < 0
          ? `primary killed ${secs(now - killedAt)} ago, standby taking over`
          : "the former standby runs the guest (unprotected now: no standby)";
        const line = `  t=${secs(now - t0)}  ops ${n(ops)} (${n(rate)}/s)  client errors ${
          bench.failed + progress.errors
        }  last reply ${secs(progress.sinceLastMs)} ago  ${where}`;
        Deno.stdout.writeSync(enc.encode(tty ? `\r\x1b[2K${line}` : `${line}\n`));
      }
      await sleep(tty ? 100 : 200);
    }
    if (tty) Deno.stdout.writeSync(enc.encode("\n"));
    await benchLoop;
    console.log("load stopped; the checker reads every acknowledged write back …");
    await checker.waitFor(/^CHECKER_RESULT /, 120_000).catch(() => {});
    const cr = checkerResult as CheckerResult | null;
    let counter = "-";
    if (haveBench) {
      const r = await runCmd(
        "ip",
        inNs(["redis-cli", "-h", GUEST_IP, "GET", "counter:__rand_int__"]),
      );
      counter = r.out.trim();
    }
    const counterOk = !haveBench || counter === String(bench.incrs);
    const clientErrors = bench.failed + (cr ? cr.connErrors + cr.errorReplies : 1);

    console.log("\nsummary");
    console.log(
      `  operations            ${n(bench.ops + (cr?.ops ?? 0))}` +
        (haveBench
          ? ` (redis-benchmark -c ${clients}: ${n(bench.ops)} in ${bench.runs} runs; checker: ${
            n(cr?.ops ?? 0)
          })`
          : ` (the project's checker, ${loadConns} connections; redis-tools unavailable)`),
    );
    console.log(
      `  client errors         ${clientErrors}` +
        ` (redis-benchmark runs failed: ${bench.failed}; checker connection errors: ${
          cr?.connErrors ?? "?"
        }, error replies: ${cr?.errorReplies ?? "?"})`,
    );
    for (const f of [...bench.failures, ...(cr?.problems ?? [])].slice(0, 5)) {
      console.log(`    ${f}`);
    }
    console.log(
      `  failover              takeover ${
        tookOverMs >= 0 ? secs(tookOverMs) : "NOT SEEN"
      } after the kill -9; ` +
        `clients saw at most ${secs(cr?.maxGapMs ?? NaN)} without a reply` +
        (haveBench ? `, redis-benchmark's slowest request took ${secs(bench.maxLatencyMs)}` : ""),
    );
    console.log(
      `  acknowledged writes   ${
        cr && cr.mismatches === 0 && cr.keysChecked > 0 ? "verified" : "NOT verified"
      }: ${n(cr?.sets ?? 0)} SETs (${n(cr?.keysChecked ?? 0)} keys read back), ${
        n(cr?.incrs ?? 0)
      } INCRs (${cr?.countersChecked ?? 0} counters read back), ${
        cr?.mismatches ?? "?"
      } mismatches; ` +
        `INCR replies ${
          cr?.incrBreaks === 0 ? "consecutive on every connection" : `broke ${cr?.incrBreaks} times`
        }`,
    );
    if (haveBench) {
      console.log(
        `  redis-benchmark INCRs counter:__rand_int__ = ${counter}, ${counterOk ? "=" : "≠"} the ${
          n(bench.incrs)
        } INCRs it was acknowledged`,
      );
    }
    const ok = tookOverMs >= 0 && clientErrors === 0 && cr?.ok === true && counterOk;
    console.log(ok ? "\nok: no client error, no acknowledged write lost" : "\nFAILED");
    return ok ? 0 : 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await cleanup();
  }
}

const LOGWRITER_HELP =
  `Usage: kemari demo --workload logwriter [--records N] [--rate R] [--kill-after TIME] [--mode MODE]

The first failover demo, unchanged: a standby and a primary (separate
processes on 127.0.0.1), the logwriter guest writing checksummed records to its
disk and console, a kill -9 of the primary after --kill-after, the takeover,
and a summary that verifies every record the outside world saw.

Options:
  --records N        records the guest writes            [default: 600]
  --rate R           records per second                  [default: 100]
  --kill-after TIME  when to kill the primary            [default: 2500ms]
  --mode MODE        kemari | remus | hybrid             [default: kemari]
  -h, --help         this help`;

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Child {
  name: string;
  proc: Deno.ChildProcess;
  log: Promise<string>;
  control: string;
}

function start(name: string, args: string[], control: string): Child {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args, "--control", control],
    stdout: "null",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  return { name, proc, log: new Response(proc.stderr).text(), control };
}

async function status(c: Child): Promise<Status | null> {
  try {
    return await controlRequest(c.control, { cmd: "status" }, 1000) as Status;
  } catch {
    return null;
  }
}

function freePort(): number {
  for (;;) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    try {
      Deno.listen({ hostname: "127.0.0.1", port: port + 1 }).close();
      return port;
    } catch { /* taken: try another */ }
  }
}

function lines(path: string): string[] {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l.startsWith("rec "));
  } catch {
    return [];
  }
}

/** The logwriter demo (`--workload logwriter`), as it was before the Redis demo. */
async function logwriterDemo(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    records: { type: "string" },
    rate: { type: "string" },
    "kill-after": { type: "string" },
    mode: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(LOGWRITER_HELP);
    return 0;
  }
  const records = Number(str(values.records, "600"));
  const rate = Number(str(values.rate, "100"));
  if (!Number.isInteger(records) || records < 10 || !Number.isInteger(rate) || rate < 1) {
    throw new UsageError("--records must be ≥ 10 and --rate ≥ 1");
  }
  const killAfter = parseDuration(str(values["kill-after"], "2500ms"), "--kill-after");
  const mode = str(values.mode, "kemari");
  const dir = await Deno.makeTempDir({ prefix: "kemari-demo-" });
  const children: Child[] = [];
  const cleanup = async () => {
    for (const c of children) {
      try {
        c.proc.kill("SIGKILL");
      } catch { /* gone */ }
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const onSignal = () => {
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    const key = `${dir}/key`;
    Deno.writeTextFileSync(
      key,
      Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, "0"))
        .join(""),
    );
    const port = freePort(), port2 = freePort();
    const common = ["--key", key, "--memory", "64M", "--mode", mode];
    for (const d of ["primary.img", "standby.img"]) {
      const f = Deno.createSync(`${dir}/${d}`);
      f.truncateSync(8 << 20);
      f.close();
    }
    console.log(
      `kemari demo: primary and standby on 127.0.0.1:${port}, logwriter ${records} records at ${rate}/s, ${mode} mode`,
    );
    const standby = start("standby", [
      "standby",
      "--primary",
      `127.0.0.1:${port}`,
      "--listen",
      `127.0.0.1:${port2}`,
      "--disk",
      `${dir}/standby.img`,
      "--console",
      `file:${dir}/standby.txt`,
      ...common,
    ], `${dir}/standby.sock`);
    children.push(standby);
    const primary = start("primary", [
      "primary",
      "--listen",
      `127.0.0.1:${port}`,
      "--guest",
      "logwriter",
      "--args",
      `records=${records} rate=${rate} dirty=32`,
      "--disk",
      `${dir}/primary.img`,
      "--console",
      `file:${dir}/primary.txt`,
      ...common,
    ], `${dir}/primary.sock`);
    children.push(primary);

    let ready: Status | null = null;
    for (let i = 0; i < 600 && !(ready?.state === "ready"); i++) {
      await sleep(50);
      ready = await status(standby);
    }
    if (ready?.state !== "ready") {
      throw new Error(`the standby never got ready:\n${await standby.log}`);
    }
    console.log("standby ready: the guest is protected");
    const t0 = performance.now();
    const tty = Deno.stdout.isTerminal();
    let printed = 0;
    while (performance.now() - t0 < killAfter) {
      const s = await status(primary);
      const now = performance.now();
      if (s && (tty || now - printed >= 1000)) {
        printed = now;
        const line = `  primary: epoch ${s.epoch}, last pause ${
          s.lastPauseMs?.toFixed(2) ?? "-"
        } ms, held ${s.held.count}, console "${s.guest.console}"`;
        Deno.stdout.writeSync(new TextEncoder().encode(tty ? `\r\x1b[2K${line}` : `${line}\n`));
      }
      await sleep(100);
    }
    console.log("\nkilling the primary (SIGKILL) …");
    const killedAt = performance.now();
    primary.proc.kill("SIGKILL");
    await primary.proc.status;
    let tookOver = -1;
    for (let i = 0; i < 400; i++) {
      const s = await status(standby);
      if (s?.role === "primary") {
        tookOver = performance.now() - killedAt;
        break;
      }
      await sleep(5);
    }
    if (tookOver < 0) throw new Error(`no takeover:\n${await standby.log}`);
    console.log(`the standby took over after ${tookOver.toFixed(0)} ms; the guest goes on there`);
    const end = await standby.proc.status;
    const a = lines(`${dir}/primary.txt`), b = lines(`${dir}/standby.txt`);
    const seen = new Map<number, string>();
    for (const l of [...a, ...b]) seen.set(Number(l.split(" ")[1]), l);
    const gaps = [];
    for (let n = 1; n <= records; n++) if (!seen.has(n)) gaps.push(n);
    const verified = verifyLog(`${dir}/standby.img`, records);
    console.log("\nsummary");
    console.log(
      `  records written       ${records} (primary showed ${a.length}, standby ${b.length})`,
    );
    console.log(
      `  console gaps          ${gaps.length === 0 ? "none" : gaps.slice(0, 10).join(", ")}`,
    );
    console.log(`  disk log verified     ${verified}`);
    console.log(
      `  failover time         ${tookOver.toFixed(0)} ms (kill → guest running on the standby)`,
    );
    console.log(`  guest exit            ${end.code === 0 ? "clean" : `code ${end.code}`}`);
    return gaps.length === 0 && verified.startsWith("ok") && end.code === 0 ? 0 : 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await cleanup();
  }
}

/** Checks the logwriter records 1..n on an image: magic, sequence, checksum. */
function verifyLog(path: string, n: number): string {
  const bytes = Deno.readFileSync(path);
  for (let seq = 1; seq <= n; seq++) {
    const rec = bytes.subarray(seq * 512, seq * 512 + 512);
    const dv = new DataView(rec.buffer, rec.byteOffset, 512);
    if (dv.getUint32(0, true) !== 0x474f4c4b) return `MISSING record ${seq}`;
    if (dv.getBigUint64(8, true) !== BigInt(seq)) return `WRONG sequence at record ${seq}`;
    if (crc32(rec.subarray(0, 508)) !== dv.getUint32(508, true)) return `BAD checksum at ${seq}`;
  }
  return `ok, ${n} records, all checksums good`;
}
