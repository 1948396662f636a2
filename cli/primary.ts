/**
 * `kemari primary`: runs a guest protected by a standby.
 * @module
 */

import {
  NET_OPTIONS,
  netOptions,
  parse,
  parseDuration,
  parseSize,
  str,
  UsageError,
} from "./common.ts";
import { resolveGuest } from "./guest_image.ts";
import { parseConsoleSink } from "../devices/console_sink.ts";
import { createImage } from "../devices/disk.ts";
import { Machine } from "../machine/machine.ts";
import { Primary } from "../replication/primary.ts";
import type { SyncMode } from "../replication/policy.ts";
import { readKey } from "./keygen.ts";
import { transportByName } from "../transport/mod.ts";
import { controlPath, ControlServer } from "../control/server.ts";
import { TapBus } from "../taps/bus.ts";
import { loadTap, parseTapOptions } from "../taps/loader.ts";
import { describeStop, exitCodeFor } from "./supervise.ts";
import { EXIT_CODE, report } from "./common.ts";
import { tapHandlers } from "./tap.ts";
import type { DiskMode } from "../replication/protocol.ts";

export const PRIMARY_HELP = `Usage: kemari primary --listen HOST:PORT --key FILE [options]

Runs a guest and keeps a standby identical to it. The standby connects to
--listen ('kemari standby --primary HOST:PORT'); heartbeats use PORT+1 unless
--heartbeat-listen says otherwise. Output (console bytes, disk writes in
shared-disk mode) leaves only after the standby has committed a checkpoint
taken after it. Without a standby the guest runs unprotected, and kemari says so.

Guest (as 'kemari run'):
  --guest NAME|PATH    reference guest program or ELF image     [default: logwriter]
  --args "K=V ..."     guest arguments
  --resume FILE        start from a state file instead of booting
  --memory SIZE        guest RAM                                [default: 256M]
  --disk PATH          disk image; --create-disk SIZE creates it
  --console SINK       stdout | file:PATH | null                [default: stdout]
  --tuntap NAME        a network device on this host's TAP device (created if missing)
  --mac MAC            the guest's MAC                [default: derived from --tuntap]
  --mtu N              the network device's MTU       [default: 1500]
Protection:
  --listen HOST:PORT   where the standby connects               (required)
  --heartbeat-listen A extra heartbeat address (repeatable)     [default: PORT+1]
  --key FILE           pre-shared key (kemari keygen)           (required)
  --mode MODE          kemari | remus | hybrid                  [default: kemari]
  --interval TIME      remus epoch length                       [default: 25ms]
  --max-interval TIME  hybrid: longest time between checkpoints [default: 100ms]
  --disk-mode MODE     shared | replicated | none   [default: replicated with --disk]
  --lease-ms N         shared-disk lease time                   [default: 500]
  --timeout TIME       standby silent this long is lost         [default: 500ms]
  --verify N           compare memory hashes of both sides every N epochs
  --tap SPEC           attach a tap at start: metrics, trace or a module path
                       (repeatable); --tap-options k=v,k=v for the last one
  --name NAME          VM name (control socket /run/kemari/NAME.sock) [default: vm]
  --control PATH       control socket path
  --transport NAME     tcp                                      [default: tcp]
  -h, --help           this help`;

const OPTIONS = {
  guest: { type: "string" },
  args: { type: "string" },
  resume: { type: "string" },
  memory: { type: "string" },
  disk: { type: "string" },
  "create-disk": { type: "string" },
  console: { type: "string" },
  listen: { type: "string" },
  "heartbeat-listen": { type: "string", multiple: true },
  key: { type: "string" },
  mode: { type: "string" },
  interval: { type: "string" },
  "max-interval": { type: "string" },
  "disk-mode": { type: "string" },
  "lease-ms": { type: "string" },
  timeout: { type: "string" },
  verify: { type: "string" },
  tap: { type: "string", multiple: true },
  "tap-options": { type: "string", multiple: true },
  name: { type: "string" },
  control: { type: "string" },
  transport: { type: "string" },
  ...NET_OPTIONS,
  help: { type: "boolean", short: "h" },
} as const;

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

export async function primary(argv: string[]): Promise<number> {
  const { values } = parse(argv, OPTIONS);
  if (values.help) {
    console.log(PRIMARY_HELP);
    return 0;
  }
  const listen = str(values.listen);
  if (!listen) throw new UsageError("--listen HOST:PORT is required");
  const keyPath = str(values.key);
  if (!keyPath) throw new UsageError("--key FILE is required (see kemari keygen)");
  const key = readKey(keyPath);
  const disk = str(values.disk);
  const create = str(values["create-disk"]);
  if (create !== undefined) {
    if (!disk) throw new UsageError("--create-disk needs --disk");
    createImage(disk, parseSize(create, "--create-disk"), { overwrite: true });
  }
  const mode = syncMode(values.mode);
  const dmode = diskMode(values["disk-mode"], disk !== undefined);
  const timeoutMs = parseDuration(str(values.timeout, "500ms"), "--timeout");
  const name = str(values.name, "vm");
  const transport = transportByName(str(values.transport, "tcp"));
  let sink;
  try {
    sink = parseConsoleSink(str(values.console, "stdout"));
  } catch (e) {
    throw new UsageError(`--console: ${e instanceof Error ? e.message : e}`);
  }
  const taps = new TapBus();
  const tapSpecs = (values.tap as string[] | undefined) ?? [];
  const tapOptions = (values["tap-options"] as string[] | undefined) ?? [];
  for (let i = 0; i < tapSpecs.length; i++) {
    taps.attach(await loadTap(tapSpecs[i], parseTapOptions(tapOptions[i])));
  }
  const resumeFrom = str(values.resume);
  const machine = resumeFrom
    ? await Machine.restore(resumeFrom, { disk, console: sink, net: netOptions(values) })
    : await Machine.boot({
      ramBytes: parseSize(str(values.memory, "256M"), "--memory"),
      guest: await resolveGuest(str(values.guest, "logwriter")),
      args: str(values.args, ""),
      disk,
      console: sink,
      net: netOptions(values),
    });
  const p = new Primary(machine, {
    name,
    listen,
    heartbeatListen: (values["heartbeat-listen"] as string[] | undefined) ?? [nextPort(listen)],
    key,
    transport,
    policy: {
      mode,
      intervalMs: parseDuration(str(values.interval, "25ms"), "--interval"),
      maxIntervalMs: parseDuration(str(values["max-interval"], "100ms"), "--max-interval"),
    },
    diskMode: dmode,
    lease: dmode === "shared"
      ? { path: `${disk}.lease`, leaseMs: positiveInt(values["lease-ms"], "--lease-ms", 500) }
      : undefined,
    generation: 1n,
    heartbeatMs: Math.max(10, Math.floor(timeoutMs / 5)),
    timeoutMs,
    verifyEvery: positiveInt(values.verify, "--verify", 0),
    taps,
    log: (line) => console.error(line),
    progress: progressPrinter(),
  });
  return await serve(p, machine, name, str(values.control), taps);
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
  const onSignal = (sig: string) => () => {
    signalled = sig;
    machine.shutdown().catch(() => {});
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
