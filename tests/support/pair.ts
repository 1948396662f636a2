/**
 * A primary and a standby as separate kemari processes on loopback, for the
 * failover tests: start, wait for states through the control sockets, kill,
 * and read what the outside world saw.
 * @module
 */

import { controlRequest } from "../../control/server.ts";
import type { Status } from "../../replication/status.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** A free TCP port pair (p, p+1) on 127.0.0.1. */
export function freePorts(): number {
  for (let i = 0; i < 50; i++) {
    const a = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (a.addr as Deno.NetAddr).port;
    a.close();
    if (port >= 65534) continue;
    try {
      const b = Deno.listen({ hostname: "127.0.0.1", port: port + 1 });
      b.close();
      return port;
    } catch {
      continue;
    }
  }
  throw new Error("no free port pair");
}

export interface Proc {
  name: string;
  child: Deno.ChildProcess;
  control: string;
  stderr: Promise<string>;
  status: Promise<Deno.CommandStatus>;
}

/** Spawns `kemari ...args` with stderr collected. */
export function spawn(
  name: string,
  args: string[],
  control: string,
  env: Record<string, string> = {},
): Proc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args, "--control", control],
    stdout: "null",
    stderr: "piped",
    stdin: "null",
    env,
  }).spawn();
  const stderr = new Response(child.stderr).text();
  return { name, child, control, stderr, status: child.status };
}

/** The process's status over its control socket, or null when it does not answer. */
export async function statusOf(p: Proc): Promise<Status | null> {
  try {
    return await controlRequest(p.control, { cmd: "status" }, 2000) as Status;
  } catch {
    return null;
  }
}

/** Polls until `pred(status)` holds; throws with the process's stderr after `ms`. */
export async function waitFor(
  p: Proc,
  pred: (s: Status) => boolean,
  ms: number,
  what: string,
): Promise<Status> {
  const deadline = performance.now() + ms;
  let exited = false;
  p.status.then(() => (exited = true));
  while (performance.now() < deadline && !exited) {
    const s = await statusOf(p);
    if (s && pred(s)) return s;
    await new Promise((r) => setTimeout(r, 20));
  }
  try {
    p.child.kill("SIGKILL");
  } catch { /* gone */ }
  throw new Error(`${p.name}: timed out waiting for ${what}; stderr:\n${await p.stderr}`);
}

/** SIGKILL, as a host dying. */
export async function kill9(p: Proc): Promise<void> {
  try {
    p.child.kill("SIGKILL");
  } catch { /* already gone */ }
  await p.status;
}

/** Lines "rec N ..." of a console file. */
export function consoleLines(path: string): string[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(path);
  } catch { /* none yet */ }
  return text.split("\n").filter((l) => l.startsWith("rec "));
}

/**
 * Checks what the outside world saw on two consoles (old primary, then the
 * survivor): every record 1..n exactly in order across the handover, with
 * repeats only where the survivor re-issued output the old one had held —
 * byte-identical lines, never regenerated ones.
 */
export function checkConsoles(first: string[], second: string[], n: number): string {
  const num = (l: string) => Number(l.split(" ")[1]);
  for (let i = 0; i < first.length; i++) {
    if (num(first[i]) !== i + 1) throw new Error(`old primary's console: line ${i} is ${first[i]}`);
  }
  if (second.length === 0) {
    if (first.length !== n) throw new Error(`only ${first.length} of ${n} records were seen`);
    return "no handover output";
  }
  const start = num(second[0]);
  if (start > first.length + 1) {
    throw new Error(`gap: old primary showed up to ${first.length}, survivor starts at ${start}`);
  }
  for (let i = 0; i < second.length; i++) {
    if (num(second[i]) !== start + i) {
      throw new Error(`survivor's console: ${second[i]} out of order`);
    }
  }
  if (start + second.length - 1 !== n) {
    throw new Error(`survivor ended at ${start + second.length - 1}, expected ${n}`);
  }
  for (let s = start; s <= first.length; s++) {
    if (first[s - 1] !== second[s - start]) {
      throw new Error(
        `record ${s} differs across the handover (regenerated, not re-issued):\n  ${
          first[s - 1]
        }\n  ${second[s - start]}`,
      );
    }
  }
  return `${Math.max(0, first.length - start + 1)} re-issued`;
}

export interface PairOptions {
  tag: string;
  mode?: "kemari" | "remus" | "hybrid";
  disk?: "replicated" | "shared" | "none";
  guest?: string;
  guestArgs: string;
  memory?: string;
  timeout?: string;
  primaryEnv?: Record<string, string>;
  standbyEnv?: Record<string, string>;
  primaryArgs?: string[];
  standbyArgs?: string[];
  /** Size of each disk image (default 2 MiB). */
  diskBytes?: number;
  /** Start the standby this long after the primary. */
  standbyDelayMs?: number;
  /** Where the standby reaches the primary (a proxy), given the primary's port. */
  via?: (port: number) => { replication?: string; heartbeats?: string[] };
}

export interface Pair {
  dir: string;
  key: string;
  port: number;
  primary: Proc;
  standby: Proc;
  primaryConsole: string;
  standbyConsole: string;
  primaryDisk: string;
  standbyDisk: string;
  standbyListen: string;
  common: string[];
}

/** Starts a primary running logwriter and a standby following it. */
export async function startPair(dir: string, o: PairOptions): Promise<Pair> {
  const key = `${dir}/key`;
  await Deno.writeTextFile(key, "ab".repeat(32) + "\n");
  const port = freePorts();
  const sport = freePorts();
  const disk = o.disk ?? "replicated";
  const primaryDisk = `${dir}/primary-${o.tag}.img`;
  const standbyDisk = disk === "shared" ? primaryDisk : `${dir}/standby-${o.tag}.img`;
  const primaryConsole = `${dir}/primary-${o.tag}.txt`;
  const standbyConsole = `${dir}/standby-${o.tag}.txt`;
  // The images exist before either side opens them (shared mode: both do).
  for (const path of disk === "none" ? [] : new Set([primaryDisk, standbyDisk])) {
    const f = await Deno.create(path);
    await f.truncate(o.diskBytes ?? 2 << 20);
    f.close();
  }
  const common = [
    "--key",
    key,
    "--memory",
    o.memory ?? "32M",
    "--disk-mode",
    disk,
    "--timeout",
    o.timeout ?? "400ms",
  ];
  const primary = spawn(
    "primary",
    [
      "primary",
      "--listen",
      `127.0.0.1:${port}`,
      "--guest",
      o.guest ?? "logwriter",
      "--args",
      o.guestArgs,
      ...(disk === "none" ? [] : ["--disk", primaryDisk]),
      "--console",
      `file:${primaryConsole}`,
      "--mode",
      o.mode ?? "kemari",
      ...common,
      ...(o.primaryArgs ?? []),
    ],
    `${dir}/primary-${o.tag}.sock`,
    o.primaryEnv ?? {},
  );
  if (o.standbyDelayMs) await new Promise((r) => setTimeout(r, o.standbyDelayMs));
  const via = o.via?.(port) ?? {};
  const standby = spawn(
    "standby",
    [
      "standby",
      "--primary",
      via.replication ?? `127.0.0.1:${port}`,
      ...(via.heartbeats ?? [`127.0.0.1:${port + 1}`]).flatMap((h) => ["--heartbeat", h]),
      "--listen",
      `127.0.0.1:${sport}`,
      ...(disk === "none" ? [] : ["--disk", standbyDisk]),
      "--console",
      `file:${standbyConsole}`,
      ...common,
      ...(o.standbyArgs ?? []),
    ],
    `${dir}/standby-${o.tag}.sock`,
    o.standbyEnv ?? {},
  );
  return {
    dir,
    key,
    port,
    primary,
    standby,
    primaryConsole,
    standbyConsole,
    primaryDisk,
    standbyDisk,
    standbyListen: `127.0.0.1:${sport}`,
    common,
  };
}
