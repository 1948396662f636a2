/**
 * Resolves `--guest` to an image path: a file path as given, or the name of a
 * reference guest program, built on demand from guest/.
 * @module
 */

import { UsageError } from "./common.ts";

const NAME = /^[a-z][a-z0-9_]*$/;

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
  const { buildGuest, guestPath, programNames } = await import("../guest/build.ts");
  const names = programNames();
  if (!names.includes(guest)) {
    throw new UsageError(`no reference guest program "${guest}" (have: ${names.join(", ")})`);
  }
  await buildGuest({ quiet: true });
  return guestPath(guest);
}
