/**
 * Loads a tap plug-in from a module path (`--tap ./my_tap.ts` or
 * `kemari tap attach ./my_tap.ts`), or a built-in by name.
 * @module
 */

import { TapError, validateTap } from "./bus.ts";
import type { Tap, TapModule } from "./types.ts";
import { metricsTap } from "./metrics.ts";
import { traceTap } from "./trace.ts";

const BUILTIN: Record<string, (o: Record<string, string>) => Tap> = {
  metrics: metricsTap,
  trace: traceTap,
};

/** Parses "k=v,k=v" tap options. */
export function parseTapOptions(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (text ?? "").split(",").filter(Boolean)) {
    const eq = part.indexOf("=");
    if (eq <= 0) throw new TapError(`tap option "${part}" is not key=value`);
    out[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return out;
}

/** A tap from `spec`: "metrics", "trace", or a module path. */
export async function loadTap(spec: string, options: Record<string, string> = {}): Promise<Tap> {
  if (BUILTIN[spec]) return BUILTIN[spec](options);
  let url: URL;
  try {
    url = new URL(spec, `file://${Deno.cwd()}/`);
    Deno.statSync(url);
  } catch {
    throw new TapError(`tap module ${spec} does not exist (built-ins: metrics, trace)`);
  }
  let mod: { default?: TapModule };
  try {
    mod = await import(url.href);
  } catch (e) {
    throw new TapError(`tap module ${spec} failed to load: ${e instanceof Error ? e.message : e}`);
  }
  if (!mod.default) throw new TapError(`tap module ${spec} has no default export`);
  const tap = typeof mod.default === "function" ? await mod.default(options) : mod.default;
  return validateTap(tap, `tap module ${spec}`);
}
