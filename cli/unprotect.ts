/**
 * `kemari unprotect` and `kemari switchover`: requests to a running primary.
 * @module
 */

import { parse, str } from "./common.ts";
import { controlPath, controlRequest } from "../control/server.ts";

const COMMON = `  --name NAME       the VM name                              [default: vm]
  --control PATH    the control socket        [default: /run/kemari/NAME.sock]
  -h, --help        this help`;

export const UNPROTECT_HELP = `Usage: kemari unprotect [--name NAME | --control PATH]

Ends protection of a running primary: held output is released, the standby
is told to stop, and the guest runs on unprotected. The only way to end output
commit.

${COMMON}`;

export const SWITCHOVER_HELP = `Usage: kemari switchover [--name NAME | --control PATH]

Planned role swap (maintenance): the primary freezes the guest, the standby
commits a final checkpoint and runs the guest from it, re-issuing held output;
nothing is lost and the guest stops only for that checkpoint. The old primary
exits; run 'kemari standby' on its host to protect the guest again.

${COMMON}`;

function request(cmd: string, help: string) {
  return async (argv: string[]): Promise<number> => {
    const { values } = parse(argv, {
      name: { type: "string" },
      control: { type: "string" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(help);
      return 0;
    }
    const path = str(values.control) ?? controlPath(str(values.name, "vm"));
    const result = await controlRequest(path, { cmd }, 30_000);
    console.log(`kemari: ${cmd}: ${JSON.stringify(result)}`);
    return 0;
  };
}

export const unprotect = request("unprotect", UNPROTECT_HELP);
export const switchover = request("switchover", SWITCHOVER_HELP);
