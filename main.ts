/**
 * kemari: keeps a standby VM identical to a running one, and fails over to it.
 * This file only parses the subcommand and dispatches to cli/.
 * @module
 */

import { EXIT_CODE, report, UsageError } from "./cli/common.ts";

const HELP = `kemari — don't drop the VMs!

Usage: kemari <command> [options]

Commands:
  run         boot a guest unprotected and show its console
  resume      restore a saved VM (from 'run --save-at') and run it on
  primary     run a guest protected by a standby
  standby     follow a primary and take over when it dies
  status      show what a primary or standby is doing (--json)
  switchover  swap roles on purpose (maintenance), nothing lost
  unprotect   end protection of a running primary
  tap         attach, detach or list tap plug-ins of a running primary
  keygen      write a pre-shared key for the replication link
  demo        the failover demo on this machine (kill -9 of a primary)
  help        this text

'kemari <command> --help' describes each command.`;

type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, () => Promise<Command>> = {
  run: async () => (await import("./cli/run.ts")).run,
  resume: async () => (await import("./cli/resume.ts")).resume,
  primary: async () => (await import("./cli/primary.ts")).primary,
  standby: async () => (await import("./cli/standby.ts")).standby,
  status: async () => (await import("./cli/status.ts")).status,
  switchover: async () => (await import("./cli/unprotect.ts")).switchover,
  unprotect: async () => (await import("./cli/unprotect.ts")).unprotect,
  tap: async () => (await import("./cli/tap.ts")).tap,
  keygen: async () => (await import("./cli/keygen.ts")).keygen,
  demo: async () => (await import("./cli/demo.ts")).demo,
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    console.log(HELP);
    return name === undefined ? EXIT_CODE.usage : EXIT_CODE.ok;
  }
  const load = COMMANDS[name];
  if (!load) {
    report(`unknown command "${name}" (try 'kemari help')`);
    return EXIT_CODE.usage;
  }
  try {
    return await (await load())(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      report(e.message);
      return EXIT_CODE.usage;
    }
    report(e instanceof Error ? e.message : String(e));
    return EXIT_CODE.failure;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
