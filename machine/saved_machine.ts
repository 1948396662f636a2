/**
 * The metadata of a saved machine, and its validation as untrusted input.
 * Device and vCPU sections are validated by their own restore().
 * @module
 */

import { ABI_VERSION, MAX_RAM_BYTES, MIN_RAM_BYTES } from "./layout.ts";
import { StateFileError } from "./state_file.ts";

export interface SavedMachine {
  kind: "kemari-vm";
  abiVersion: number;
  ramBytes: number;
  guest: string;
  args: string;
  bootId: bigint;
  disk: { sectors: bigint; readOnly: boolean } | null;
  cpu: unknown;
  clock: unknown;
  devices: { events: unknown; console: unknown; block: unknown; net?: unknown };
  savedAt: string;
  /** Where the vCPU was when the pause was asked for (information only). */
  pausedFrom: string;
}

/** Checks the shape of a SavedMachine read from `path`. */
export function validateSavedMachine(v: unknown, path: string): SavedMachine {
  const bad = (what: string) => new StateFileError(path, `metadata: ${what}`);
  if (typeof v !== "object" || v === null) throw bad("not an object");
  const s = v as Record<string, unknown>;
  if (s.kind !== "kemari-vm") throw bad("not a saved kemari VM");
  if (s.abiVersion !== ABI_VERSION) throw bad(`guest ABI ${s.abiVersion}, expected ${ABI_VERSION}`);
  if (
    typeof s.ramBytes !== "number" || !Number.isSafeInteger(s.ramBytes) ||
    s.ramBytes < MIN_RAM_BYTES || s.ramBytes > MAX_RAM_BYTES
  ) throw bad("ramBytes out of range");
  if (typeof s.guest !== "string" || typeof s.args !== "string") throw bad("guest or args");
  if (typeof s.bootId !== "bigint") throw bad("bootId");
  if (s.disk !== null) {
    const d = s.disk as Record<string, unknown> | undefined;
    if (typeof d !== "object" || typeof d.sectors !== "bigint" || typeof d.readOnly !== "boolean") {
      throw bad("disk");
    }
  }
  const devices = s.devices as Record<string, unknown> | undefined;
  if (typeof devices !== "object" || devices === null) throw bad("devices");
  if (typeof s.savedAt !== "string") throw bad("savedAt");
  return s as unknown as SavedMachine;
}
