/**
 * Shared helpers of the guest network tests (net_stack_test.ts,
 * net_failover_test.ts): prerequisites, commands, the host harness and probe
 * builds, long-running processes, netsvc status lines, and a throwaway
 * network namespace.
 * @module
 */

import { existsSync, statSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const NET_DIR = path.join(ROOT, "guest", "net");
const INCLUDE_DIR = path.join(ROOT, "guest", "include");
const NETSVC_C = path.join(ROOT, "guest", "programs", "netsvc.c");
const PROBE_C = fileURLToPath(new URL("./net_probe.c", import.meta.url));

const CC_FLAGS = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"];
const SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"];
/** Environment for every child: sanitizer failures abort the harness. */
const ENV = {
  ASAN_OPTIONS: "detect_leaks=0:abort_on_error=1",
  UBSAN_OPTIONS: "print_stacktrace=1:halt_on_error=1",
};

/** The C compiler (KEMARI_GUEST_CC, as guest/build.ts). */
export function cc(): string {
  return Deno.env.get("KEMARI_GUEST_CC") ?? "gcc";
}

/** Full path of an executable on PATH (or in /usr/sbin, /sbin), else null. */
export function onPath(bin: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/sbin"])) {
    const p = path.join(dir, bin);
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

/** Why namespace + TAP tests cannot run here, or null when they can. */
export function netnsSkipReason(): string | null {
  if (Deno.build.os !== "linux") return "not Linux";
  if (Deno.uid() !== 0) return "needs root (network namespaces, TAP)";
  if (!existsSync("/dev/net/tun")) return "no /dev/net/tun";
  if (!onPath("ip")) return "no iproute2";
  if (!onPath(cc())) return "no C compiler";
  return null;
}

const dec = new TextDecoder();

export async function run(
  cmd: string,
  args: string[],
  timeoutMs = 30_000,
): Promise<{ code: number; out: string }> {
  const result = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: ENV,
    signal: AbortSignal.timeout(timeoutMs),
  }).output();
  return { code: result.code, out: dec.decode(result.stdout) + dec.decode(result.stderr) };
}

/** Runs a command; throws with its output unless it exits 0. */
export async function mustRun(cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}):\n${r.out}`);
  return r.out;
}

/** Compiles tests/guest/net_probe.c into dir. */
export async function buildProbe(dir: string): Promise<string> {
  const probe = path.join(dir, "net_probe");
  await mustRun(cc(), [...CC_FLAGS, "-o", probe, PROBE_C], 60_000);
  return probe;
}

/** Compiles the host harness (stack + netsvc on a TAP, with ASan/UBSan) into dir. */
export async function buildHarness(dir: string): Promise<string> {
  const stack: string[] = [];
  for await (const e of Deno.readDir(NET_DIR)) {
    if (e.isFile && e.name.endsWith(".c") && e.name !== "netif.c") {
      stack.push(path.join(NET_DIR, e.name));
    }
  }
  stack.sort();
  const harness = path.join(dir, "netsvc-host");
  const sources = [path.join(NET_DIR, "hosttest", "host.c"), ...stack, NETSVC_C];
  const flags = [...CC_FLAGS, ...SANITIZE, "-DKEMARI_NET_HOST", "-I", INCLUDE_DIR, "-I", NET_DIR];
  await mustRun(cc(), [...flags, "-o", harness, ...sources], 120_000);
  return harness;
}

/** A long-running process whose output is collected line by line. */
export class Proc {
  readonly lines: string[] = [];
  exited: Deno.CommandStatus | null = null;
  readonly #child: Deno.ChildProcess;
  readonly #readers: Promise<void>[];
  readonly #status: Promise<Deno.CommandStatus>;

  constructor(cmd: string, args: string[]) {
    this.#child = new Deno.Command(cmd, {
      args,
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
      env: ENV,
    }).spawn();
    this.#readers = [this.#read(this.#child.stdout), this.#read(this.#child.stderr)];
    this.#status = this.#child.status.then((s) => (this.exited = s));
  }

  async #read(stream: ReadableStream<Uint8Array>): Promise<void> {
    let partial = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      partial += chunk;
      const parts = partial.split("\n");
      partial = parts.pop() ?? "";
      this.lines.push(...parts);
    }
    if (partial) this.lines.push(partial);
  }

  /** Waits for a line matching re at index >= from; returns the match. */
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = from; i < this.lines.length; i++) {
        const m = this.lines[i].match(re);
        if (m) return m;
      }
      if (this.exited) throw new Error(`process exited (${this.exited.code}):\n${this.tail()}`);
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${re}:\n${this.tail()}`);
      await sleep(20);
    }
  }

  tail(n = 30): string {
    return this.lines.slice(-n).join("\n");
  }

  signal(sig: Deno.Signal): void {
    if (!this.exited) this.#child.kill(sig);
  }

  /** Kills the process (SIGKILL) and waits for it and its output. */
  async stop(): Promise<void> {
    try {
      this.signal("SIGCONT");
      this.signal("SIGKILL");
    } catch {
      // already gone
    }
    await this.#status;
    await Promise.all(this.#readers);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The counters of a "netsvc: status ..." line. */
export interface Status {
  conns: number;
  in: number;
  out: number;
  drops: number;
  rto: number;
  probes: number;
}

const STATUS_RE =
  /netsvc: status conns=(\d+) in=(\d+) out=(\d+) drops=(\d+) rto=(\d+) fast=\d+ probes=(\d+)/;

/** The first status line printed after `settleMs` from now (netsvc status=1). */
export async function statusAfter(p: Proc, settleMs = 1200): Promise<Status> {
  await sleep(settleMs);
  const m = await p.waitFor(STATUS_RE, 5000, p.lines.length);
  return {
    conns: Number(m[1]),
    in: Number(m[2]),
    out: Number(m[3]),
    drops: Number(m[4]),
    rto: Number(m[5]),
    probes: Number(m[6]),
  };
}

/** A fresh network namespace named kemari-test-<random>, with lo up. */
export class Netns {
  readonly name = `kemari-test-${crypto.randomUUID().slice(0, 8)}`;
  #created = false;

  async create(): Promise<void> {
    await mustRun("ip", ["netns", "add", this.name]);
    this.#created = true;
    await this.exec(["ip", "link", "set", "lo", "up"]);
  }

  /** Runs a command inside the namespace; throws unless it exits 0. */
  exec(args: string[], timeoutMs = 30_000): Promise<string> {
    return mustRun("ip", ["netns", "exec", this.name, ...args], timeoutMs);
  }

  /** Starts a long-running command inside the namespace. */
  spawn(args: string[]): Proc {
    return new Proc("ip", ["netns", "exec", this.name, ...args]);
  }

  async destroy(): Promise<void> {
    if (this.#created) await run("ip", ["netns", "del", this.name]);
    this.#created = false;
  }
}
