/**
 * Shared CLI plumbing: argument parsing with one-line errors, sizes, exit codes.
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";

/** A bad command line: printed as one line, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export const EXIT_CODE = { ok: 0, failure: 1, usage: 2, guestCrash: 3, guestPanic: 4 } as const;

type Options = NonNullable<ParseArgsConfig["options"]>;

/** node:util parseArgs with errors turned into UsageError. */
export function parse<O extends Options>(
  argv: string[],
  options: O,
  allowPositionals = false,
): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options, allowPositionals, strict: true });
    return {
      values: r.values as Record<string, string | boolean | undefined>,
      positionals: r.positionals,
    };
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message.split("\n")[0] : String(e));
  }
}

/** Parses "256M", "4G", "512K", "4096" into bytes. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${what}: "${text}" is not a size (like 256M or 4G)`);
  const unit = (m[2] ?? "").charAt(0).toUpperCase();
  const mult = unit === "K" ? 1024 : unit === "M" ? 1024 ** 2 : unit === "G" ? 1024 ** 3 : 1;
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n)) throw new UsageError(`${what}: "${text}" is too large`);
  return n;
}

/** Parses a duration "250ms", "2s", "1.5s", "300" (ms). */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${what}: "${text}" is not a duration (like 250ms or 2s)`);
  return Number(m[1]) * (m[2] === "s" ? 1000 : 1);
}

/** A string option or its default. */
export function str(v: unknown, fallback: string): string;
export function str(v: unknown): string | undefined;
export function str(v: unknown, fallback?: string): string | undefined {
  return typeof v === "string" ? v : fallback;
}

/** Reports an error in one line on stderr. */
export function report(message: string): void {
  console.error(`kemari: ${message}`);
}

/** The --tuntap/--mac/--mtu options as a NetConfig, or undefined without --tuntap. */
export function netOptions(
  values: Record<string, unknown>,
): { tap: string; mac?: string; mtu?: number } | undefined {
  const tap = str(values.tuntap);
  const mac = str(values.mac);
  const mtuText = str(values.mtu);
  if (!tap) {
    if (mac || mtuText) throw new UsageError("--mac and --mtu need --tuntap");
    return undefined;
  }
  if (mac && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(mac)) {
    throw new UsageError(`--mac: "${mac}" is not a MAC address like 52:54:00:12:34:56`);
  }
  if (mac && (parseInt(mac.slice(0, 2), 16) & 1) === 1) {
    throw new UsageError(`--mac: ${mac} is a multicast address`);
  }
  const mtu = mtuText === undefined ? undefined : Number(mtuText);
  if (mtu !== undefined && !Number.isInteger(mtu)) {
    throw new UsageError(`--mtu: "${mtuText}" is not a number`);
  }
  return { tap, mac: mac?.toLowerCase(), mtu };
}

/** The parseArgs options of the network device. */
export const NET_OPTIONS = {
  tuntap: { type: "string" },
  mac: { type: "string" },
  mtu: { type: "string" },
} as const;
