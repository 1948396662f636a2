/**
 * Resolves `--guest` to an image path: a file path as given, or the name of a
 * reference guest program, built on demand from guest/.
 * @module
 */

import { UsageError } from "./common.ts";

const NAME = /^[a-z][a-z0-9_]*$/;

/** Names of the reference guest programs (guest/programs/*.c). */
export function programNames(): string[] {
  const dir = new URL("../guest/programs/", import.meta.url);
  return [...Deno.readDirSync(dir)]
    .filter((e) => e.isFile && e.name.endsWith(".c"))
    .map((e) => e.name.slice(0, -2))
    .sort();
}

/** Path of the ELF image for `guest` (a program name or a path). */
export async function resolveGuest(guest: string): Promise<string> {
  if (!NAME.test(guest)) {
    try {
      Deno.statSync(guest);
    } catch {
      throw new UsageError(`guest image ${guest} does not exist`);
    }
    return guest;
  }
  const names = programNames();
  if (!names.includes(guest)) {
    throw new UsageError(`no reference guest program "${guest}" (have: ${names.join(", ")})`);
  }
  const { buildGuest, guestPath } = await import("../guest/build.ts");
  await buildGuest();
  return guestPath(guest);
}
