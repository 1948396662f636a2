/**
 * `kemari run`: boots a guest unprotected and shows its console.
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
import { consoleSink } from "./protection.ts";
import { createImage } from "../devices/disk.ts";
import { Machine } from "../machine/machine.ts";
import { runToCompletion, type SavePlan } from "./supervise.ts";

export const RUN_HELP = `Usage: kemari run [options]

Boots the reference guest (or any guest image for the kemari ABI) under KVM,
unprotected, and shows its console until the guest exits.

Options:
  --guest NAME|PATH    guest program (hello, logwriter, pingpong, spin, crash,
                       badreq, dirty, dirtier, netsvc) or an ELF image path
                                                             [default: hello]
  --args "K=V ..."     arguments passed to the guest
  --memory SIZE        guest RAM, a multiple of 2M            [default: 256M]
  --disk PATH          raw disk image for the PV block device
  --create-disk SIZE   create (or replace) --disk with this size first
  --readonly           attach the disk read-only
  --console SINK       stdout | file:PATH | null              [default: stdout]
  --doorbell MODE      ioeventfd | exit                       [default: ioeventfd]
  --tuntap NAME        a network device on this host's TAP device (created if missing)
  --mac MAC            the guest's MAC                [default: derived from --tuntap]
  --mtu N              the network device's MTU       [default: 1500]
  --save-at TIME       save the VM to --state after TIME (e.g. 300ms) and stop
  --save-on-doorbell N save to --state when the Nth doorbell arrives, before
                       the devices see it (a testing aid: requests in flight)
  --state PATH         state file written by --save-at / --save-on-doorbell
  -h, --help           this help

Exit status: the guest's exit code; 1 on an error, 2 on bad arguments,
3 when the guest crashes, 4 when it panics.`;

const OPTIONS = {
  guest: { type: "string" },
  args: { type: "string" },
  memory: { type: "string" },
  disk: { type: "string" },
  "create-disk": { type: "string" },
  readonly: { type: "boolean" },
  console: { type: "string" },
  doorbell: { type: "string" },
  "save-at": { type: "string" },
  "save-on-doorbell": { type: "string" },
  state: { type: "string" },
  ...NET_OPTIONS,
  help: { type: "boolean", short: "h" },
} as const;

/** Parses `--doorbell`. */
export function doorbellMode(v: unknown): "ioeventfd" | "exit" {
  const mode = str(v, "ioeventfd");
  if (mode !== "ioeventfd" && mode !== "exit") {
    throw new UsageError(`--doorbell must be ioeventfd or exit, not "${mode}"`);
  }
  return mode;
}

/** Parses `--save-at` / `--save-on-doorbell` and `--state` together. */
export function saveOptions(values: Record<string, unknown>): SavePlan | undefined {
  const at = str(values["save-at"]);
  const bell = str(values["save-on-doorbell"]);
  const path = str(values.state);
  if (at === undefined && bell === undefined && path === undefined) return undefined;
  if ((at === undefined && bell === undefined) || path === undefined) {
    throw new UsageError("--save-at (or --save-on-doorbell) and --state go together");
  }
  if (at !== undefined && bell !== undefined) {
    throw new UsageError("--save-at and --save-on-doorbell exclude each other");
  }
  if (bell !== undefined) {
    const n = Number(bell);
    if (!Number.isSafeInteger(n) || n < 1) {
      throw new UsageError(`--save-on-doorbell: "${bell}" is not a positive whole number`);
    }
    return { onDoorbell: n, path };
  }
  return { at: parseDuration(at!, "--save-at"), path };
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(argv, OPTIONS);
  if (values.help) {
    console.log(RUN_HELP);
    return 0;
  }
  const ramBytes = parseSize(str(values.memory, "256M"), "--memory");
  const disk = str(values.disk);
  const create = str(values["create-disk"]);
  if (create !== undefined) {
    if (!disk) throw new UsageError("--create-disk needs --disk");
    createImage(disk, parseSize(create, "--create-disk"), { overwrite: true });
  }
  const doorbell = doorbellMode(values.doorbell);
  const save = saveOptions(values);
  const console_ = consoleSink(values);
  const guest = await resolveGuest(str(values.guest, "hello"));
  const machine = await Machine.boot({
    ramBytes,
    guest,
    args: str(values.args, ""),
    disk,
    diskReadOnly: values.readonly === true,
    console: console_,
    doorbell,
    net: netOptions(values),
  });
  return await runToCompletion(machine, save);
}
