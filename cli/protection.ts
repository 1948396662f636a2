/**
 * What `kemari primary` and `kemari standby` share: the protection settings
 * (key, disk and disk mode, timeouts, transport, sync policy, console,
 * network device), and running a primary with its control socket.
 * @module
 */

import {
  EXIT_CODE,
  NET_OPTIONS,
  netOptions,
  parseDuration,
  parseSize,
  report,
  str,
  UsageError,
} from "./common.ts";
import { readKey } from "./keygen.ts";
import { createImage } from "../devices/disk.ts";
import { type ConsoleSink, parseConsoleSink } from "../devices/console_sink.ts";
import { transportByName } from "../transport/mod.ts";
import type { Transport } from "../transport/types.ts";
import type { Machine, NetConfig } from "../machine/machine.ts";
import type { Primary } from "../replication/primary.ts";
import type { PolicyOptions, SyncMode } from "../replication/policy.ts";
import type { DiskMode } from "../replication/protocol.ts";
import type { LeaseHolder } from "../replication/lease.ts";
import { controlPath, ControlServer } from "../control/server.ts";
import type { TapBus } from "../taps/bus.ts";
import { tapHandlers } from "./tap.ts";
import { describeStop, exitCodeFor } from "./supervise.ts";

/** The parseArgs options both roles share (read by {@link protectionSettings}). */
export const PROTECTION_OPTIONS = {
  listen: { type: "string" },
  key: { type: "string" },
  memory: { type: "string" },
  disk: { type: "string" },
  "create-disk": { type: "string" },
  "disk-mode": { type: "string" },
  console: { type: "string" },
  timeout: { type: "string" },
  "lease-ms": { type: "string" },
  mode: { type: "string" },
  interval: { type: "string" },
  "max-interval": { type: "string" },
  name: { type: "string" },
  control: { type: "string" },
  transport: { type: "string" },
  ...NET_OPTIONS,
  help: { type: "boolean", short: "h" },
} as const;

/** The settings both roles parse the same way. */
export interface ProtectionSettings {
  disk: string | undefined;
  diskMode: DiskMode;
  sink: ConsoleSink;
  net: NetConfig | undefined;
  leaseMs: number;
  /** Options common to every Primary this process runs. */
  engine: {
    name: string;
    key: Uint8Array;
    transport: Transport;
    policy: PolicyOptions;
    diskMode: DiskMode;
    heartbeatMs: number;
    timeoutMs: number;
    log: (line: string) => void;
    progress: (line: string, done: boolean) => void;
  };
  /** The shared-disk lease settings, or undefined in other disk modes. */
  lease(holder?: LeaseHolder): { path: string; leaseMs: number; holder?: LeaseHolder } | undefined;
}

/** Parses the common options (creating the disk when asked). */
export function protectionSettings(values: Record<string, unknown>): ProtectionSettings {
  const keyPath = str(values.key);
  if (!keyPath) throw new UsageError("--key FILE is required (see kemari keygen)");
  const key = readKey(keyPath);
  const disk = str(values.disk);
  const create = str(values["create-disk"]);
  if (create !== undefined) {
    if (!disk) throw new UsageError("--create-disk needs --disk");
    createImage(disk, parseSize(create, "--create-disk"), { overwrite: true });
  }
  const dmode = diskMode(values["disk-mode"], disk !== undefined);
  const timeoutMs = parseDuration(str(values.timeout, "500ms"), "--timeout");
  const leaseMs = positiveInt(values["lease-ms"], "--lease-ms", 500);
  return {
    disk,
    diskMode: dmode,
    sink: consoleSink(values),
    net: netOptions(values),
    leaseMs,
    engine: {
      name: str(values.name, "vm"),
      key,
      transport: transportByName(str(values.transport, "tcp")),
      policy: {
        mode: syncMode(values.mode),
        intervalMs: parseDuration(str(values.interval, "25ms"), "--interval"),
        maxIntervalMs: parseDuration(str(values["max-interval"], "100ms"), "--max-interval"),
      },
      diskMode: dmode,
      heartbeatMs: Math.max(10, Math.floor(timeoutMs / 5)),
      timeoutMs,
      log: (line) => console.error(line),
      progress: progressPrinter(),
    },
    lease: (holder) => dmode === "shared" ? { path: `${disk}.lease`, leaseMs, holder } : undefined,
  };
}

/** `--console` as a sink. */
export function consoleSink(values: Record<string, unknown>): ConsoleSink {
  try {
    return parseConsoleSink(str(values.console, "stdout"));
  } catch (e) {
    throw new UsageError(`--console: ${e instanceof Error ? e.message : e}`);
  }
}

/** "host:port" -> "host:port+1". */
export function nextPort(address: string): string {
  const i = address.lastIndexOf(":");
  const port = Number(address.slice(i + 1));
  if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65534) {
    throw new UsageError(`"${address}" is not HOST:PORT`);
  }
  return port === 0 ? `${address.slice(0, i)}:0` : `${address.slice(0, i)}:${port + 1}`;
}

export function syncMode(v: unknown): SyncMode {
  const mode = str(v, "kemari");
  if (mode !== "kemari" && mode !== "remus" && mode !== "hybrid") {
    throw new UsageError(`--mode must be kemari, remus or hybrid, not "${mode}"`);
  }
  return mode;
}

export function diskMode(v: unknown, haveDisk: boolean): DiskMode {
  const mode = str(v, haveDisk ? "replicated" : "none");
  if (mode !== "shared" && mode !== "replicated" && mode !== "none") {
    throw new UsageError(`--disk-mode must be shared, replicated or none, not "${mode}"`);
  }
  if (mode !== "none" && !haveDisk) throw new UsageError(`--disk-mode ${mode} needs --disk`);
  if (mode === "none" && haveDisk) throw new UsageError("--disk-mode none with a --disk");
  return mode;
}

export function positiveInt(v: unknown, what: string, fallback: number): number {
  const text = str(v);
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new UsageError(`${what}: "${text}" is not a whole number`);
  }
  return n;
}

/** Runs a Primary with its control socket and signal handling; the exit code. */
export async function serve(
  p: Primary,
  machine: Machine,
  name: string,
  control: string | undefined,
  taps: TapBus,
): Promise<number> {
  const server = new ControlServer(control ?? controlPath(name), {
    status: () => p.status(),
    unprotect: async () => {
      await p.unprotect();
      return { unprotected: true };
    },
    switchover: () => p.switchover(),
    ...tapHandlers(taps),
  });
  let signalled: string | undefined;
  // Only halt the guest here: the primary still commits and releases its
  // last output and tells the standby (BYE) before everything is closed.
  const onSignal = (sig: string) => () => {
    signalled = sig;
    machine.halt().catch(() => {});
  };
  const handlers = (["SIGINT", "SIGTERM"] as const).map((s) => [s, onSignal(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  try {
    await p.run();
    const r = machine.report ?? { kind: "stopped" as const };
    await machine.shutdown();
    if (signalled) {
      report(`stopped by ${signalled}`);
      return EXIT_CODE.ok;
    }
    if (r.kind !== "exit" || r.code !== 0) report(describeStop(r));
    return exitCodeFor(r);
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
    await server.close();
    await taps.closeAll();
  }
}

/** Progress lines on stderr: rewritten in place on a terminal, throttled otherwise. */
export function progressPrinter(): (line: string, done: boolean) => void {
  const tty = Deno.stderr.isTerminal();
  let last = 0;
  const enc = new TextEncoder();
  return (line, done) => {
    const now = performance.now();
    if (!done && now - last < (tty ? 100 : 1000)) return;
    last = now;
    Deno.stderr.writeSync(enc.encode(tty ? `\r\x1b[2K${line}${done ? "\n" : ""}` : `${line}\n`));
  };
}
