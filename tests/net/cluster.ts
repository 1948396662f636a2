/**
 * The three-host setup of the guest-networking tests: a {@link NetTopology}
 * (client, primary and standby namespaces on one bridge, plus the separate
 * replication link repl0), `kemari primary` running netsvc inside the
 * primary's namespace on its TAP, `kemari standby` inside the standby's on
 * its own TAP, replicating over repl0, and the client tools
 * (tests/guest/net_probe.c, tests/net/net_tool.c, socat) run in the
 * client's namespace.
 *
 * ```
 *  client ns            net ns: br0                 primary ns              standby ns
 *  lan0 10.80.X.1 ── p-client  p-primary ── lan0─br0─tap0 ◄ kemari primary
 *                              p-standby ── lan0─br0─tap0 ◄ kemari standby
 *                                     primary repl0 10.80.X+128.1 ═══ standby repl0 .2
 * ```
 *
 * The guest is 10.80.X.10/24 (no gateway: it can answer nothing off the
 * LAN) with MAC 52:54:00:80:X:0a on both TAPs. Nothing runs or listens
 * outside the test namespaces; the control sockets are files in a temporary
 * directory. {@link withCluster} always tears everything down.
 * @module
 */

import { existsSync } from "node:fs";
import * as path from "node:path";
import { buildGuest, guestPath } from "../../guest/build.ts";
import { controlRequest } from "../../control/server.ts";
import type { Status } from "../../replication/status.ts";
import { NetTopology } from "../support/netns.ts";
import {
  buildProbe,
  cc,
  mustRun,
  netnsSkipReason,
  onPath,
  Proc,
  ROOT,
  run,
  sleep,
} from "../guest/net_support.ts";

/** Why these tests cannot run here, or null. */
export function skipReason(): string | null {
  return netnsSkipReason() ?? (existsSync("/dev/kvm") ? null : "no /dev/kvm") ??
    (onPath("bridge") ? null : "no bridge (iproute2)");
}

/** CLOCK_REALTIME in µs, on the same time line as net_tool's timestamps. */
export function realUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

const MAIN = path.join(ROOT, "main.ts");
const TOOL_C = new URL("./net_tool.c", import.meta.url).pathname;
const FORWARD = new URL("./delay_forward.ts", import.meta.url).pathname;
const REPL_PORT = 7700;
const STANDBY_PORT = 7710;
const FORWARD_PORT = 7720;

/** Paths of the client tools, built once per test process. */
export interface Tools {
  /** tests/guest/net_probe.c */
  probe: string;
  /** tests/net/net_tool.c */
  tool: string;
}

let tools: Promise<Tools> | null = null;

/** Builds the guest (netsvc.elf), net_probe and net_tool once per process. */
export function buildTools(): Promise<Tools> {
  tools ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "kemari-nettools-" });
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch { /* gone */ }
    });
    await buildGuest();
    const tool = path.join(dir, "net_tool");
    const flags = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"];
    const [probe] = await Promise.all([
      buildProbe(dir),
      mustRun(cc(), [...flags, "-o", tool, TOOL_C], 60_000),
    ]);
    return { probe, tool };
  })();
  return tools;
}

/** Options of {@link Cluster.start}. */
export interface ClusterOptions {
  /** Namespace label (1-16 lower-case letters/digits). */
  label: string;
  /** Sync mode (default kemari). */
  mode?: "kemari" | "remus" | "hybrid";
  /** Remus epoch (default 25ms). */
  interval?: string;
  /** Guest RAM (default 32M). */
  memory?: string;
  /** Failure-detection timeout (default 400ms). */
  timeout?: string;
  /** Extra netsvc args (default "status=0": no console output, so no checkpoints for it). */
  guestArgs?: string;
  /** Start a standby (default true). */
  standby?: boolean;
  /**
   * Let the standby reach the primary's replication port through
   * delay_forward.ts in the standby's namespace, which delays the standby's
   * ACKs by this many ms (heartbeats go direct).
   */
  ackDelayMs?: number;
}

/** A running primary (and standby) with netsvc, in a fresh three-host topology. */
export class Cluster {
  readonly guestIp: string;
  readonly mac: string;
  readonly control: { primary: string; standby: string };
  primary!: Proc;
  standby: Proc | null = null;
  forwarder: Proc | null = null;
  readonly #procs: Proc[] = [];
  readonly #children: Deno.ChildProcess[] = [];

  private constructor(
    readonly topo: NetTopology,
    readonly dir: string,
    readonly tools: Tools,
    readonly options: ClusterOptions,
  ) {
    this.guestIp = `10.80.${topo.subnet}.10`;
    this.mac = `52:54:00:80:${topo.subnet.toString(16).padStart(2, "0")}:0a`;
    this.control = {
      primary: path.join(dir, "primary.sock"),
      standby: path.join(dir, "standby.sock"),
    };
  }

  /** Builds the topology and starts the primary (and standby, protected and ready). */
  static async start(options: ClusterOptions): Promise<Cluster> {
    const built = await buildTools();
    const topo = await NetTopology.create({ label: options.label });
    let dir: string | null = null;
    try {
      dir = await Deno.makeTempDir({ prefix: `kemari-net-${options.label}-` });
      const c = new Cluster(topo, dir, built, options);
      await c.#start();
      return c;
    } catch (error) {
      await topo.destroy();
      if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw error;
    }
  }

  /** Settings both kemari processes share. */
  #common(): string[] {
    const o = this.options;
    return [
      ...["--key", path.join(this.dir, "key"), "--memory", o.memory ?? "32M"],
      ...["--disk-mode", "none", "--timeout", o.timeout ?? "400ms"],
      ...["--mode", o.mode ?? "kemari", "--interval", o.interval ?? "25ms"],
      ...["--tuntap", "tap0", "--mac", this.mac],
    ];
  }

  async #start(): Promise<void> {
    const { topo } = this;
    const deno = Deno.execPath();
    await mustRun(deno, ["run", "-A", MAIN, "keygen", path.join(this.dir, "key")]);
    await topo.addTap("primary");
    await topo.addTap("standby");
    const args = `ip=${this.guestIp}/24 ${this.options.guestArgs ?? "status=0"}`;
    this.primary = this.spawn("primary", [
      ...[deno, "run", "-A", MAIN, "primary", "--guest", guestPath("netsvc"), "--args", args],
      ...["--listen", `${topo.replAddr.primary}:${REPL_PORT}`, ...this.#common()],
      ...["--name", "netvm", "--control", this.control.primary],
    ]);
    await this.primary.waitFor(/netsvc: ip \S+ mac \S+ ready/, 30_000);
    if (this.options.standby ?? true) {
      await this.startStandby();
    }
    // The guest talks once, so the bridge learns its MAC on the primary's port.
    await this.probe(["ping", this.guestIp, "2"]);
  }

  /** Starts the standby (and the delaying forwarder) and waits until it is ready. */
  async startStandby(): Promise<void> {
    const { topo } = this;
    const deno = Deno.execPath();
    let replication = `${topo.replAddr.primary}:${REPL_PORT}`;
    if (this.options.ackDelayMs !== undefined) {
      this.forwarder = this.spawn("standby", [
        ...[deno, "run", "-A", FORWARD, String(FORWARD_PORT), replication],
        String(this.options.ackDelayMs),
      ]);
      await this.forwarder.waitFor(/listening/, 20_000);
      replication = `127.0.0.1:${FORWARD_PORT}`;
    }
    this.standby = this.spawn("standby", [
      ...[deno, "run", "-A", MAIN, "standby", "--primary", replication],
      ...["--heartbeat", `${topo.replAddr.primary}:${REPL_PORT + 1}`],
      ...["--listen", `${topo.replAddr.standby}:${STANDBY_PORT}`, ...this.#common()],
      ...["--name", "netvm", "--control", this.control.standby],
    ]);
    await this.standby.waitFor(/standby ready: checkpoint/, 60_000);
    await this.waitStatus("primary", (s) => s.state === "protected", 20_000, "protected");
  }

  /** Starts a long-running command in a namespace of the topology. */
  spawn(role: "client" | "primary" | "standby" | "net", cmd: string[]): Proc {
    const p = new Proc("ip", ["netns", "exec", this.topo.ns[role], ...cmd]);
    this.#procs.push(p);
    return p;
  }

  /**
   * Starts a command in a namespace with binary pipes (stdin piped when
   * asked, stdout and stderr piped); killed at {@link close} if still running.
   */
  spawnPiped(
    role: "client" | "primary" | "standby" | "net",
    cmd: string[],
    stdin = false,
  ): Deno.ChildProcess {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", this.topo.ns[role], ...cmd],
      stdin: stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#children.push(child);
    return child;
  }

  /** Runs a command in the client's namespace; its exit code and output. */
  client(cmd: string[], timeoutMs = 60_000): Promise<{ code: number; out: string }> {
    return run("ip", ["netns", "exec", this.topo.ns.client, ...cmd], timeoutMs);
  }

  /** Runs net_probe in the client's namespace; its output (also when it fails). */
  async probe(args: string[], timeoutMs = 90_000): Promise<string> {
    return (await this.client([this.tools.probe, ...args], timeoutMs)).out;
  }

  /** Runs net_tool in the client's namespace; its output. */
  async tool(args: string[], timeoutMs = 90_000): Promise<string> {
    return (await this.client([this.tools.tool, ...args], timeoutMs)).out;
  }

  /** Status of the primary or standby over its control socket, or null if it does not answer. */
  async status(role: "primary" | "standby", timeoutMs = 2000): Promise<Status | null> {
    try {
      return await controlRequest(this.control[role], { cmd: "status" }, timeoutMs) as Status;
    } catch {
      return null;
    }
  }

  /** Polls a status until `pred` holds; throws with the process's output after `ms`. */
  async waitStatus(
    role: "primary" | "standby",
    pred: (s: Status) => boolean,
    ms: number,
    what: string,
  ): Promise<Status> {
    const proc = role === "primary" ? this.primary : this.standby;
    const deadline = performance.now() + ms;
    for (;;) {
      const s = await this.status(role);
      if (s && pred(s)) return s;
      if (proc?.exited || performance.now() > deadline) {
        throw new Error(`${role}: no ${what} (last ${JSON.stringify(s)}):\n${proc?.tail(40)}`);
      }
      await sleep(20);
    }
  }

  /** SIGKILLs the primary (the host dies); returns when, in µs (realUs). */
  async killPrimary(): Promise<number> {
    const at = realUs();
    this.primary.signal("SIGKILL");
    await this.primary.stop();
    return at;
  }

  /**
   * Waits for the standby's takeover (its log says the guest runs there) and
   * returns the time it was seen, in µs (realUs).
   */
  async waitTakeover(ms = 20_000): Promise<number> {
    const standby = this.standby!;
    await standby.waitFor(/the guest runs here now/, ms);
    return realUs();
  }

  /** Kills every process started here, deletes the namespaces and the temp dir. */
  async close(): Promise<void> {
    for (const child of this.#children) {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
    }
    for (const p of this.#procs) await p.stop();
    await this.topo.destroy();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** Runs `fn` with a fresh cluster and always tears it down. */
export async function withCluster<T>(
  options: ClusterOptions,
  fn: (c: Cluster) => Promise<T>,
): Promise<T> {
  const c = await Cluster.start(options);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/** Parses net_tool's ping/udpping lines: one entry per request. */
export interface ProbeLine {
  seq: number;
  sentUs: number;
  /** -1: no reply. */
  recvUs: number;
  dups: number;
}

/** The per-request lines of `net_tool ping|udpping` output. */
export function parseProbeLines(out: string): ProbeLine[] {
  const lines: ProbeLine[] = [];
  for (const m of out.matchAll(/^[pu] (\d+) (-?\d+) (-?\d+) (\d+)$/gm)) {
    lines.push({ seq: +m[1], sentUs: +m[2], recvUs: +m[3], dups: +m[4] });
  }
  return lines;
}

/** What a request/response run across a failover looked like. */
export interface GapReport {
  sent: number;
  answered: number;
  /** Requests without an answer. */
  lost: ProbeLine[];
  /** Longest time between two consecutive answers (by arrival), ms. */
  longestGapMs: number;
  /** Answers that arrived before the kill, and at or after the first one after it. */
  before: number;
  after: number;
  /** The first answer that arrived after the kill, µs (or null). */
  firstAfterKillUs: number | null;
  /**
   * The takeover window as the client saw it, by send time (µs): from the
   * last request answered before the kill to the first request sent after
   * the kill that was answered. Null ends when there is no such request.
   */
  window: { from: number | null; to: number | null };
  /** Lost requests sent outside the window. */
  lostOutside: ProbeLine[];
}

/** Summarizes probe lines around a kill at `killUs`. */
export function gapReport(lines: ProbeLine[], killUs: number): GapReport {
  const answered = lines.filter((l) => l.recvUs >= 0);
  const arrivals = answered.map((l) => l.recvUs).sort((a, b) => a - b);
  let longest = 0;
  for (let i = 1; i < arrivals.length; i++) {
    longest = Math.max(longest, arrivals[i] - arrivals[i - 1]);
  }
  const firstAfter = arrivals.find((t) => t > killUs) ?? null;
  const answeredBefore = answered.filter((l) => l.recvUs < killUs).map((l) => l.sentUs);
  const answeredAfter = answered.filter((l) => l.sentUs > killUs).map((l) => l.sentUs);
  const from = answeredBefore.length ? Math.max(...answeredBefore) : null;
  const to = answeredAfter.length ? Math.min(...answeredAfter) : null;
  const lost = lines.filter((l) => l.recvUs < 0);
  return {
    sent: lines.length,
    answered: answered.length,
    lost,
    longestGapMs: longest / 1000,
    before: answered.filter((l) => l.recvUs < killUs).length,
    after: firstAfter === null ? 0 : answered.filter((l) => l.recvUs >= firstAfter).length,
    firstAfterKillUs: firstAfter,
    window: { from, to },
    lostOutside: lost.filter((l) =>
      from === null || to === null || l.sentUs <= from || l.sentUs >= to
    ),
  };
}

/** One line about the loss of a {@link GapReport}, times from the kill. */
export function describeLoss(r: GapReport, killUs: number): string {
  const ms = (us: number | null) => us === null ? "?" : `${((us - killUs) / 1000).toFixed(1)} ms`;
  const sent = r.lost.map((l) => l.sentUs);
  const lost = r.lost.length === 0
    ? "none lost"
    : `${r.lost.length} lost, sent ${ms(Math.min(...sent))} to ${ms(Math.max(...sent))}`;
  return `${r.answered}/${r.sent} answered (${r.before} before the kill, ${r.after} after); ` +
    `${lost}; takeover window by send time ${ms(r.window.from)} to ${ms(r.window.to)}; ` +
    `first answer after the kill at ${ms(r.firstAfterKillUs)}; longest gap between answers ` +
    `${r.longestGapMs.toFixed(1)} ms (times from the kill)`;
}

/** One frame of `net_tool capture`. */
export interface Frame {
  tUs: number;
  pktType: number;
  src: string;
  dst: string;
  ethertype: number;
  len: number;
  /** Protocol fields ("icmp 0 ID SEQ SRC DST", "arp OP ...", "-"...). */
  info: string[];
}

/** Parses `net_tool capture` output. */
export function parseFrames(out: string): Frame[] {
  const frames: Frame[] = [];
  for (const line of out.split("\n")) {
    if (!line.startsWith("f ")) continue;
    const p = line.split(" ");
    frames.push({
      tUs: +p[1],
      pktType: +p[2],
      src: p[3],
      dst: p[4],
      ethertype: parseInt(p[5], 16),
      len: +p[6],
      info: p.slice(7),
    });
  }
  return frames;
}

/**
 * Starts `net_tool capture IFNAME MS [MAC]` in namespace `role` and waits
 * until it is bound. Stop it with SIGTERM and read `proc.lines`.
 */
export async function startCapture(
  c: Cluster,
  role: "client" | "primary" | "standby" | "net",
  ifname: string,
  ms: number,
  mac?: string,
): Promise<Proc> {
  const p = c.spawn(role, [c.tools.tool, "capture", ifname, String(ms), ...(mac ? [mac] : [])]);
  await p.waitFor(/^ready$/, 10_000);
  return p;
}

/** Ends a capture (SIGTERM) and returns its frames. */
export async function endCapture(p: Proc): Promise<{ frames: Frame[]; summary: string }> {
  p.signal("SIGTERM");
  const deadline = performance.now() + 5000;
  while (!p.exited && performance.now() < deadline) await sleep(20);
  await p.stop();
  const out = p.lines.join("\n");
  return { frames: parseFrames(out), summary: out.match(/ok capture .*/)?.[0] ?? "no summary" };
}

/**
 * Checks a byte stream against netsvc's counter stream (byte i is byte
 * i % 8 of the big-endian 64-bit counter i / 8): every byte in order, none
 * missing, none repeated. Throws at the first wrong byte.
 */
export class CounterCheck {
  /** Bytes checked so far. */
  pos = 0;

  constructor(readonly what: string) {}

  check(chunk: Uint8Array): void {
    let pos = this.pos;
    for (let i = 0; i < chunk.length; i++, pos++) {
      const want = counterByte(pos);
      if (chunk[i] !== want) {
        throw new Error(
          `${this.what}: byte ${pos} is ${chunk[i]}, expected ${want} (counter ${
            Math.floor(pos / 8)
          })`,
        );
      }
    }
    this.pos = pos;
  }
}

/** Byte `pos` of the counter stream (counters stay below 2^32 here). */
export function counterByte(pos: number): number {
  const k = pos % 8;
  if (k < 4) return 0;
  return (Math.floor(pos / 8) >>> (8 * (7 - k))) & 0xff;
}

/** `len` bytes of the counter stream from byte `from`. */
export function counterBytes(from: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = counterByte(from + i);
  return out;
}
