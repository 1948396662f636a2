/**
 * Writes the boot info page (struct kemari_boot) the guest reads at start.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import {
  ABI_VERSION,
  ARGS_MAX,
  ARGS_OFFSET,
  BOOT,
  BOOT_MAGIC,
  DISK_READONLY,
  GPA,
  NET_PRESENT,
} from "./layout.ts";

export interface BootInfo {
  heapStart: number;
  stackTop: number;
  diskSectors: bigint;
  diskReadOnly: boolean;
  bootId: bigint;
  args: string;
  /** The network device, when the VM has one. */
  net?: { mac: string; mtu: number };
}

/** The guest arguments are too long for the boot page. */
export class GuestArgsError extends Error {
  constructor(length: number) {
    super(`guest arguments are ${length} bytes; at most ${ARGS_MAX - 1} fit`);
    this.name = "GuestArgsError";
  }
}

export function writeBootPage(mem: GuestMemory, info: BootInfo): void {
  const b = GPA.boot;
  mem.setU64(b + BOOT.magic, BOOT_MAGIC);
  mem.setU32(b + BOOT.abiVersion, ABI_VERSION);
  mem.setU32(b + BOOT.flags, 0);
  mem.setU64(b + BOOT.ramBytes, BigInt(mem.size));
  mem.setU64(b + BOOT.heapStart, BigInt(info.heapStart));
  mem.setU64(b + BOOT.stackTop, BigInt(info.stackTop));
  mem.setU64(b + BOOT.diskSectors, info.diskSectors);
  mem.setU32(b + BOOT.diskFlags, info.diskReadOnly ? DISK_READONLY : 0);
  mem.setU32(b + BOOT.consoleSlots, 0);
  mem.setU64(b + BOOT.bootId, info.bootId);
  const mac = info.net ? info.net.mac.split(":").map((x) => parseInt(x, 16)) : [0, 0, 0, 0, 0, 0];
  mem.write(b + BOOT.mac, new Uint8Array(mac));
  mem.writable(b + BOOT.netFlags, 2).set([info.net ? NET_PRESENT : 0, 0]);
  mem.setU32(b + BOOT.netMtu, info.net?.mtu ?? 0);
  const args = new TextEncoder().encode(info.args);
  if (args.length >= ARGS_MAX) throw new GuestArgsError(args.length);
  const area = mem.writable(b + ARGS_OFFSET, ARGS_MAX);
  area.fill(0);
  area.set(args);
}
