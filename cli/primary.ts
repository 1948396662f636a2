/**
 * `kemari primary`: runs a guest protected by a standby.
 * @module
 */

import { parse, parseSize, str, UsageError } from "./common.ts";
import { resolveGuest } from "./guest_image.ts";
import { Machine } from "../machine/machine.ts";
import { Primary } from "../replication/primary.ts";
import { TapBus } from "../taps/bus.ts";
import { loadTap, parseTapOptions } from "../taps/loader.ts";
import {
  nextPort,
  positiveInt,
  PROTECTION_OPTIONS,
  protectionSettings,
  serve,
} from "./protection.ts";

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
  ...PROTECTION_OPTIONS,
  guest: { type: "string" },
  args: { type: "string" },
  resume: { type: "string" },
  "heartbeat-listen": { type: "string", multiple: true },
  verify: { type: "string" },
  tap: { type: "string", multiple: true },
  "tap-options": { type: "string", multiple: true },
} as const;

export async function primary(argv: string[]): Promise<number> {
  const { values } = parse(argv, OPTIONS);
  if (values.help) {
    console.log(PRIMARY_HELP);
    return 0;
  }
  const listen = str(values.listen);
  if (!listen) throw new UsageError("--listen HOST:PORT is required");
  const c = protectionSettings(values);
  const taps = new TapBus();
  const tapSpecs = (values.tap as string[] | undefined) ?? [];
  const tapOptions = (values["tap-options"] as string[] | undefined) ?? [];
  for (let i = 0; i < tapSpecs.length; i++) {
    taps.attach(await loadTap(tapSpecs[i], parseTapOptions(tapOptions[i])));
  }
  const resumeFrom = str(values.resume);
  const machine = resumeFrom
    ? await Machine.restore(resumeFrom, { disk: c.disk, console: c.sink, net: c.net })
    : await Machine.boot({
      ramBytes: parseSize(str(values.memory, "256M"), "--memory"),
      guest: await resolveGuest(str(values.guest, "logwriter")),
      args: str(values.args, ""),
      disk: c.disk,
      console: c.sink,
      net: c.net,
    });
  const p = new Primary(machine, {
    ...c.engine,
    listen,
    heartbeatListen: (values["heartbeat-listen"] as string[] | undefined) ?? [nextPort(listen)],
    lease: c.lease(),
    generation: 1n,
    verifyEvery: positiveInt(values.verify, "--verify", 0),
    taps,
  });
  return await serve(p, machine, c.engine.name, str(values.control), taps);
}
