/**
 * `kemari standby`: follows a primary, keeps a ready copy of its VM, and
 * takes over when the primary dies; then runs as the primary itself.
 * @module
 */

import { parse, parseSize, report, str, UsageError } from "./common.ts";
import { Standby } from "../replication/standby.ts";
import { Primary } from "../replication/primary.ts";
import { controlPath, ControlServer } from "../control/server.ts";
import { TapBus } from "../taps/bus.ts";
import { nextPort, PROTECTION_OPTIONS, protectionSettings, serve } from "./protection.ts";

export const STANDBY_HELP = `Usage: kemari standby --primary HOST:PORT --key FILE [options]

Connects to a primary ('kemari primary --listen HOST:PORT'), receives the
initial synchronization and every checkpoint, and applies each one only when it
is complete and verified. When the primary falls silent on every heartbeat path
for --timeout, it takes over from the last committed checkpoint: held output is
re-issued and the guest goes on here. From then on it is the primary and
listens on --listen for a new standby.

Options:
  --primary HOST:PORT  the primary's replication address        (required)
  --heartbeat A        a heartbeat path to the primary (repeatable) [default: PORT+1]
  --key FILE           pre-shared key (kemari keygen)           (required)
  --listen HOST:PORT   where to accept a standby after a takeover (required)
  --memory SIZE        guest RAM, as the primary's             [default: 256M]
  --disk PATH          this side's disk image (replicated) or the shared one
  --create-disk SIZE   create --disk first (replicated mode)
  --disk-mode MODE     shared | replicated | none   [default: replicated with --disk]
  --console SINK       where the guest's console goes after a takeover [default: stdout]
  --tuntap NAME        this host's TAP device for the guest's network device; frames for
                       the guest are dropped until a takeover, then its MAC is announced
  --timeout TIME       silence on every path before a takeover  [default: 500ms]
  --lease-ms N         shared-disk lease time                   [default: 500]
  --mode MODE, --interval, --max-interval   sync mode once this side is primary
  --name NAME          VM name                                  [default: vm]
  --control PATH       control socket path
  --transport NAME     tcp                                      [default: tcp]
  -h, --help           this help`;

const OPTIONS = {
  ...PROTECTION_OPTIONS,
  primary: { type: "string" },
  heartbeat: { type: "string", multiple: true },
} as const;

export async function standby(argv: string[]): Promise<number> {
  const { values } = parse(argv, OPTIONS);
  if (values.help) {
    console.log(STANDBY_HELP);
    return 0;
  }
  const primaryAddr = str(values.primary);
  if (!primaryAddr) throw new UsageError("--primary HOST:PORT is required");
  const listen = str(values.listen);
  if (!listen) throw new UsageError("--listen HOST:PORT is required (used after a takeover)");
  const c = protectionSettings(values);
  const { name } = c.engine;
  const s = new Standby({
    name,
    primary: primaryAddr,
    heartbeatPaths: (values.heartbeat as string[] | undefined) ?? [nextPort(primaryAddr)],
    key: c.engine.key,
    transport: c.engine.transport,
    ramBytes: parseSize(str(values.memory, "256M"), "--memory"),
    diskMode: c.diskMode,
    disk: c.disk,
    console: c.sink,
    net: c.net,
    lease: c.lease(),
    heartbeatMs: c.engine.heartbeatMs,
    timeoutMs: c.engine.timeoutMs,
    log: c.engine.log,
  });
  const controlAt = str(values.control) ?? controlPath(name);
  const server = new ControlServer(controlAt, { status: () => s.status() });
  const stopOn = () => s.stop("stopped by signal");
  for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, stopOn);
  let outcome;
  try {
    outcome = await s.run();
  } finally {
    for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.removeSignalListener(sig, stopOn);
    await server.close();
  }
  if (outcome.kind === "stopped") {
    const byGuest = /the guest stopped \(exit code (\d+)\)/.exec(outcome.reason);
    report(`standby stopped: ${outcome.reason}`);
    return byGuest ? Number(byGuest[1]) : outcome.failed ? 1 : 0;
  }
  // This side is the primary now.
  const taps = new TapBus();
  const p = new Primary(outcome.machine, {
    ...c.engine,
    listen,
    heartbeatListen: [nextPort(listen)],
    lease: c.lease(outcome.lease ?? undefined),
    generation: outcome.generation,
    verifyEvery: 0,
    taps,
  });
  return await serve(p, outcome.machine, name, controlAt, taps);
}
