/**
 * `kemari keygen`: writes a fresh pre-shared key for the replication link.
 * @module
 */

import { parse, UsageError } from "./common.ts";

export const KEYGEN_HELP = `Usage: kemari keygen FILE

Writes 32 random bytes (hex) to FILE with mode 0600. Give the same file to
'kemari primary --key' and 'kemari standby --key': the link is refused
without it.`;

export function keygen(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { help: { type: "boolean", short: "h" } }, true);
  if (values.help) {
    console.log(KEYGEN_HELP);
    return Promise.resolve(0);
  }
  if (positionals.length !== 1) throw new UsageError("keygen takes exactly one file name");
  const key = crypto.getRandomValues(new Uint8Array(32));
  const hex = Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");
  Deno.writeTextFileSync(positionals[0], hex + "\n", { mode: 0o600, createNew: true });
  console.log(`kemari: wrote a new key to ${positionals[0]}`);
  return Promise.resolve(0);
}

/** Reads a key file written by keygen (hex, at least 32 bytes). */
export function readKey(path: string): Uint8Array {
  let text: string;
  try {
    text = Deno.readTextFileSync(path).trim();
  } catch (e) {
    throw new UsageError(`--key ${path}: ${e instanceof Error ? e.message : e}`);
  }
  if (!/^([0-9a-f]{2}){32,}$/i.test(text)) {
    throw new UsageError(`--key ${path}: not a kemari key (64+ hex digits; see kemari keygen)`);
  }
  return new Uint8Array(text.match(/../g)!.map((h) => parseInt(h, 16)));
}
