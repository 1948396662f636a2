/**
 * `kemari status`: what a running primary or standby is doing.
 * @module
 */

import { parse, str } from "./common.ts";
import { controlPath, controlRequest } from "../control/server.ts";
import { formatStatus, type Status } from "../replication/status.ts";

export const STATUS_HELP = `Usage: kemari status [--name NAME | --control PATH] [--json]

Shows the role, sync mode, generation, epoch, last pause, held outputs,
standby lag and link state of a running 'kemari primary' or 'kemari standby'.

Options:
  --name NAME       the VM name given to primary/standby     [default: vm]
  --control PATH    the control socket        [default: /run/kemari/NAME.sock]
  --json            machine-readable output
  -h, --help        this help`;

export async function status(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    name: { type: "string" },
    control: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(STATUS_HELP);
    return 0;
  }
  const path = str(values.control) ?? controlPath(str(values.name, "vm"));
  const result = await controlRequest(path, { cmd: "status" }) as Status;
  console.log(values.json ? JSON.stringify(result, null, 2) : formatStatus(result));
  return 0;
}
