/**
 * `kemari tap attach|detach|list`: tap plug-ins on a running primary,
 * through its control socket.
 * @module
 */

import { parse, str, UsageError } from "./common.ts";
import { controlPath, controlRequest } from "../control/server.ts";
import type { ControlHandler } from "../control/server.ts";
import type { TapBus, TapStats } from "../taps/bus.ts";
import { loadTap, parseTapOptions } from "../taps/loader.ts";

export const TAP_HELP = `Usage: kemari tap attach SPEC [--options k=v,...] | detach NAME | list
                [--name NAME | --control PATH]

Attaches a tap plug-in to a running primary (SPEC: metrics, trace, or a module
path on the primary's host), detaches one by name, or lists them with their
counters. Output commit is not affected: it belongs to the replication engine.`;

/** Control-socket handlers for a tap bus. */
export function tapHandlers(taps: TapBus): Record<string, ControlHandler> {
  return {
    "tap-list": () => taps.list(),
    "tap-attach": async (req) => {
      const spec = String(req.spec ?? "");
      const tap = await loadTap(spec, parseTapOptions(req.options as string | undefined));
      taps.attach(tap);
      return { attached: tap.name };
    },
    "tap-detach": async (req) => {
      await taps.detach(String(req.tap ?? ""));
      return { detached: req.tap };
    },
  };
}

export async function tap(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    name: { type: "string" },
    control: { type: "string" },
    options: { type: "string" },
    help: { type: "boolean", short: "h" },
  }, true);
  if (values.help) {
    console.log(TAP_HELP);
    return 0;
  }
  const path = str(values.control) ?? controlPath(str(values.name, "vm"));
  const [verb, arg] = positionals;
  if (verb === "list" && positionals.length === 1) {
    const list = await controlRequest(path, { cmd: "tap-list" }) as TapStats[];
    if (list.length === 0) console.log("no taps attached");
    for (const t of list) {
      console.log(
        `${t.name}: ${
          t.devices.join(",")
        } ${t.direction}; ${t.events} events, ${t.holds} holds (max ${
          t.holdMsMax.toFixed(1)
        } ms), ${t.timeouts} timeouts, ${t.errors} errors`,
      );
    }
    return 0;
  }
  if (verb === "attach" && arg && positionals.length === 2) {
    const spec = /^[a-z]+$/.test(arg) ? arg : new URL(arg, `file://${Deno.cwd()}/`).pathname;
    const r = await controlRequest(path, { cmd: "tap-attach", spec, options: str(values.options) });
    console.log(`attached ${(r as { attached: string }).attached}`);
    return 0;
  }
  if (verb === "detach" && arg && positionals.length === 2) {
    await controlRequest(path, { cmd: "tap-detach", tap: arg });
    console.log(`detached ${arg}`);
    return 0;
  }
  throw new UsageError("usage: kemari tap attach SPEC | detach NAME | list");
}
