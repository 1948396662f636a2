/**
 * `kemari resume`: restores a VM saved by `kemari run --save-at` in this
 * process and lets it go on.
 * @module
 */

import { NET_OPTIONS, netOptions, parse, str, UsageError } from "./common.ts";
import { consoleSink } from "./protection.ts";
import { Machine } from "../machine/machine.ts";
import { doorbellMode, saveOptions } from "./run.ts";
import { runToCompletion } from "./supervise.ts";

export const RESUME_HELP = `Usage: kemari resume STATE_FILE [options]

Restores a VM saved with 'kemari run --save-at' (in any process) and runs it on
from the exact point it was saved: registers, SIMD state, memory, device rings
and clock. Requests the guest had posted but no backend had taken are taken now.

Options:
  --disk PATH          the disk image the VM was saved with
  --console SINK       stdout | file:PATH | null              [default: stdout]
  --doorbell MODE      ioeventfd | exit                       [default: ioeventfd]
  --tuntap NAME        the TAP device for the VM's network device (if it has one)
  --save-at TIME       save again to --state after TIME and stop
  --save-on-doorbell N save to --state at the Nth doorbell (testing aid)
  --state PATH         state file written by --save-at / --save-on-doorbell
  -h, --help           this help`;

const OPTIONS = {
  disk: { type: "string" },
  console: { type: "string" },
  doorbell: { type: "string" },
  "save-at": { type: "string" },
  "save-on-doorbell": { type: "string" },
  state: { type: "string" },
  ...NET_OPTIONS,
  help: { type: "boolean", short: "h" },
} as const;

export async function resume(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, OPTIONS, true);
  if (values.help) {
    console.log(RESUME_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError("resume takes exactly one state file");
  const sink = consoleSink(values);
  const machine = await Machine.restore(positionals[0], {
    disk: str(values.disk),
    console: sink,
    doorbell: doorbellMode(values.doorbell),
    net: netOptions(values),
  });
  return await runToCompletion(machine, saveOptions(values));
}
