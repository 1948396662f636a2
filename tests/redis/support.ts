/**
 * Shared helpers of the Redis tests (tests/redis/) and bench/redis.ts:
 * prerequisites (redis-tools installed with apt-get when missing), the host
 * harness build (guest/programs/redis.c on a TAP with ASan/UBSan), a network
 * namespace with a bridge, guests under `kemari run --tuntap` or a primary +
 * standby pair, and the exact client runs (redis-cli, redis-benchmark, the
 * project's checker and fuzzer) inside the namespace.
 * @module
 */

import { existsSync } from "node:fs";
import * as path from "node:path";
import {
  cc,
  mustRun,
  Netns,
  netnsSkipReason,
  onPath,
  Proc,
  ROOT,
  run,
  sleep,
} from "../guest/net_support.ts";

export { Proc, ROOT, run, sleep };

const NET_DIR = path.join(ROOT, "guest", "net");
const INCLUDE_DIR = path.join(ROOT, "guest", "include");
const REDIS_C = path.join(ROOT, "guest", "programs", "redis.c");
const HOST_DISK_C = path.join(ROOT, "tests", "redis", "host_disk.c");
/** The checker and fuzzer scripts (run inside the namespace). */
export const CHECKER = path.join(ROOT, "tests", "redis", "checker.ts");
export const FUZZ = path.join(ROOT, "tests", "redis", "fuzz.ts");
/** `deno run -A main.ts`: the kemari CLI. */
export const KEMARI = [Deno.execPath(), "run", "-A", path.join(ROOT, "main.ts")];

let toolsChecked: Promise<string | null> | null = null;

/**
 * Why redis-cli / redis-benchmark are unavailable, or null. When they are
 * missing, tries `apt-get install -y redis-tools` once per process.
 */
export function redisToolsSkipReason(): Promise<string | null> {
  toolsChecked ??= (async () => {
    if (onPath("redis-cli") && onPath("redis-benchmark")) return null;
    if (Deno.uid() !== 0) return "redis-tools missing and not root (apt-get install redis-tools)";
    console.warn("redis tests: redis-tools missing; running apt-get install -y redis-tools");
    const env = { DEBIAN_FRONTEND: "noninteractive" };
    try {
      let r = await new Deno.Command("apt-get", {
        args: ["install", "-y", "-q", "redis-tools"],
        env,
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(240_000),
      }).output();
      if (!r.success) {
        await new Deno.Command("apt-get", {
          args: ["update", "-q"],
          env,
          stdout: "null",
          stderr: "null",
          signal: AbortSignal.timeout(240_000),
        }).output();
        r = await new Deno.Command("apt-get", {
          args: ["install", "-y", "-q", "redis-tools"],
          env,
          stdout: "piped",
          stderr: "piped",
          signal: AbortSignal.timeout(240_000),
        }).output();
      }
      if (!r.success) {
        return `apt-get install -y redis-tools failed: ${
          new TextDecoder().decode(r.stderr).trim().split("\n").pop()
        }`;
      }
    } catch (e) {
      return `apt-get install -y redis-tools failed: ${e}`;
    }
    return onPath("redis-benchmark") ? null : "redis-tools installed but redis-benchmark missing";
  })();
  return toolsChecked;
}

/** Why the host-harness tests cannot run (root, TAP, iproute2, gcc). */
export function hostSkipReason(): string | null {
  return netnsSkipReason();
}

/** Why the VM tests cannot run (also /dev/kvm). */
export function vmSkipReason(): string | null {
  return netnsSkipReason() ?? (existsSync("/dev/kvm") ? null : "no /dev/kvm");
}

/** Compiles guest/programs/redis.c with the net stack on a TAP (ASan/UBSan) into dir. */
export async function buildRedisHost(dir: string): Promise<string> {
  const stack: string[] = [];
  for await (const e of Deno.readDir(NET_DIR)) {
    if (e.isFile && e.name.endsWith(".c") && e.name !== "netif.c") {
      stack.push(path.join(NET_DIR, e.name));
    }
  }
  stack.sort();
  const out = path.join(dir, "redis-host");
  await mustRun(cc(), [
    "-std=gnu11",
    "-O1",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-DKEMARI_NET_HOST",
    "-I",
    INCLUDE_DIR,
    "-I",
    NET_DIR,
    "-o",
    out,
    path.join(NET_DIR, "hosttest", "host.c"),
    ...stack,
    REDIS_C,
    HOST_DISK_C,
  ], 180_000);
  return out;
}

/** Creates (or replaces) a sparse disk image of `bytes`. */
export async function makeDisk(file: string, bytes: number): Promise<void> {
  const f = await Deno.create(file);
  await f.truncate(bytes);
  f.close();
}

/** One reply line per redis-benchmark test: ops/s and latencies in ms. */
export interface BenchRow {
  test: string;
  rps: number;
  avg: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** Parses `redis-benchmark --csv` output. */
export function parseBenchCsv(out: string): BenchRow[] {
  const rows: BenchRow[] = [];
  for (const line of out.split(/[\r\n]+/)) {
    const m = line.match(
      /^"([A-Z_]+)","([\d.]+)","([\d.]+)","[\d.]+","([\d.]+)","([\d.]+)","([\d.]+)","([\d.]+)"/,
    );
    if (!m) continue;
    rows.push({
      test: m[1],
      rps: Number(m[2]),
      avg: Number(m[3]),
      p50: Number(m[4]),
      p95: Number(m[5]),
      p99: Number(m[6]),
      max: Number(m[7]),
    });
  }
  return rows;
}

/** Lines of redis-benchmark output that report a failure. */
export function benchErrors(out: string): string[] {
  return out.split(/[\r\n]+/).filter((l) =>
    /error|reset|refused|timed out|closed|cannot|could not/i.test(l) &&
    !/^"test"/.test(l)
  );
}

/** A namespace with a bridge br0 (`<subnet>.1/24`) where guests' TAPs are plugged in. */
export class RedisNet {
  readonly ns = new Netns();
  readonly gateway: string;

  constructor(readonly subnet: string) {
    this.gateway = `${subnet}.1`;
  }

  get name(): string {
    return this.ns.name;
  }

  async create(): Promise<void> {
    await this.ns.create();
    await this.ns.exec(["ip", "link", "add", "br0", "type", "bridge"]);
    await this.ns.exec(["ip", "addr", "add", `${this.gateway}/24`, "dev", "br0"]);
    await this.ns.exec(["ip", "link", "set", "br0", "up"]);
  }

  /** Puts a TAP (made by kemari) on the bridge, waiting for it to exist. */
  async attach(tap: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await run("ip", ["netns", "exec", this.name, "ip", "link", "show", tap]);
      if (r.code === 0) break;
      if (Date.now() > deadline) throw new Error(`TAP ${tap} never appeared`);
      await sleep(50);
    }
    await this.ns.exec(["ip", "link", "set", tap, "master", "br0"]);
    await this.ns.exec(["ip", "link", "set", tap, "up"]);
  }

  exec(args: string[], timeoutMs = 60_000): Promise<string> {
    return this.ns.exec(args, timeoutMs);
  }

  /** Runs a command in the namespace; returns code and output. */
  run(args: string[], timeoutMs = 60_000): Promise<{ code: number; out: string }> {
    return run("ip", ["netns", "exec", this.name, ...args], timeoutMs);
  }

  spawn(args: string[]): Proc {
    return this.ns.spawn(args);
  }

  /** redis-cli against host (stdout of a non-tty run). */
  async cli(host: string, args: string[], port = 6379): Promise<string> {
    const r = await this.run(["redis-cli", "-h", host, "-p", String(port), ...args], 30_000);
    if (r.code !== 0) throw new Error(`redis-cli ${args.join(" ")}: exit ${r.code}: ${r.out}`);
    return r.out.replace(/\n$/, "");
  }

  /** `redis-benchmark -h host --csv ...args`: exit code, output and the parsed rows. */
  async benchmark(
    host: string,
    args: string[],
    timeoutMs = 300_000,
  ): Promise<{ code: number; out: string; rows: BenchRow[] }> {
    const r = await this.run(["redis-benchmark", "-h", host, "--csv", ...args], timeoutMs);
    return { ...r, rows: parseBenchCsv(r.out) };
  }

  async destroy(): Promise<void> {
    await this.ns.destroy();
  }
}

/** Options of a guest run. */
export interface GuestOptions {
  ip: string;
  tap: string;
  disk: string;
  mac?: string;
  memory?: string;
  /** Extra guest args (sync=each, status=1, ...). */
  args?: string;
}

function guestArgs(net: RedisNet, o: GuestOptions): string {
  return `ip=${o.ip}/24 gw=${net.gateway} ${o.args ?? ""}`.trim();
}

/** `kemari run --guest redis --tuntap` in the namespace; resolves once the guest is ready. */
export async function startUnprotected(net: RedisNet, o: GuestOptions): Promise<Proc> {
  const p = net.spawn([
    ...KEMARI,
    "run",
    "--guest",
    "redis",
    "--args",
    guestArgs(net, o),
    "--memory",
    o.memory ?? "128M",
    "--disk",
    o.disk,
    "--tuntap",
    o.tap,
    ...(o.mac ? ["--mac", o.mac] : []),
  ]);
  try {
    await p.waitFor(/redis: ip .* ready/, 60_000);
    await net.attach(o.tap);
  } catch (e) {
    await p.stop();
    throw e;
  }
  return p;
}

/** A primary and a standby running the redis guest, both TAPs on the bridge. */
export interface RedisPair {
  primary: Proc;
  standby: Proc;
  primaryControl: string;
  standbyControl: string;
}

export interface PairOptions extends GuestOptions {
  dir: string;
  mode?: "kemari" | "remus" | "hybrid";
  standbyDisk: string;
  standbyTap: string;
  /** Failure detection time (default 1s: a loaded 2-CPU host can starve 500 ms heartbeats). */
  timeout?: string;
  /** Extra options for both sides (e.g. ["--interval", "25ms"]). */
  extra?: string[];
  port?: number;
}

/** Starts the primary, then the standby; resolves when the standby is ready. */
export async function startPair(net: RedisNet, o: PairOptions): Promise<RedisPair> {
  const key = path.join(o.dir, "key");
  if (!existsSync(key)) await net.exec([...KEMARI, "keygen", key]);
  const port = o.port ?? 7700;
  const name = `redis-${crypto.randomUUID().slice(0, 8)}`;
  const common = [
    "--key",
    key,
    "--memory",
    o.memory ?? "128M",
    "--mode",
    o.mode ?? "kemari",
    "--timeout",
    o.timeout ?? "1s",
    "--name",
    name,
    ...(o.extra ?? []),
  ];
  const primaryControl = path.join(o.dir, `primary-${port}.sock`);
  const standbyControl = path.join(o.dir, `standby-${port}.sock`);
  const primary = net.spawn([
    ...KEMARI,
    "primary",
    "--guest",
    "redis",
    "--args",
    guestArgs(net, o),
    "--disk",
    o.disk,
    "--tuntap",
    o.tap,
    "--mac",
    o.mac ?? "52:54:00:77:09:02",
    "--listen",
    `127.0.0.1:${port}`,
    "--control",
    primaryControl,
    ...common,
  ]);
  let standby: Proc | null = null;
  try {
    await primary.waitFor(/redis: ip .* ready/, 60_000);
    await net.attach(o.tap);
    standby = net.spawn([
      ...KEMARI,
      "standby",
      "--primary",
      `127.0.0.1:${port}`,
      "--listen",
      `127.0.0.1:${port + 10}`,
      "--disk",
      o.standbyDisk,
      "--tuntap",
      o.standbyTap,
      "--control",
      standbyControl,
      ...common,
    ]);
    await standby.waitFor(/standby ready: checkpoint/, 120_000);
    await net.attach(o.standbyTap);
  } catch (e) {
    await primary.stop();
    await standby?.stop();
    throw e;
  }
  return { primary, standby, primaryControl, standbyControl };
}

/** Starts the checker in the namespace (see checker.ts for the options). */
export function spawnChecker(net: RedisNet, host: string, args: string[]): Proc {
  return net.spawn([Deno.execPath(), "run", "-A", CHECKER, "--host", host, ...args]);
}

/** The CHECKER_RESULT of a finished checker process. */
export async function checkerResult(p: Proc, timeoutMs: number): Promise<
  import("./checker.ts").CheckerResult
> {
  const m = await p.waitFor(/^CHECKER_RESULT (.*)$/, timeoutMs);
  return JSON.parse(m[1]);
}

/** Runs the fuzzer in the namespace and returns its FUZZ_RESULT. */
export async function runFuzz(
  net: RedisNet,
  host: string,
  iterations: number,
  seed: number,
): Promise<import("./fuzz.ts").FuzzResult> {
  const r = await net.run(
    [
      Deno.execPath(),
      "run",
      "-A",
      FUZZ,
      "--host",
      host,
      "--iterations",
      String(iterations),
      "--seed",
      String(seed),
    ],
    300_000,
  );
  const m = r.out.match(/FUZZ_RESULT (.*)/);
  if (!m) throw new Error(`fuzz: no result (exit ${r.code}):\n${r.out}`);
  return JSON.parse(m[1]);
}
