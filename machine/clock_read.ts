/**
 * Reads the guest's PV clock the way the guest does: from the clock page and
 * a host TSC value. Used by the vCPU thread to turn wait deadlines into time.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { CLOCK, GPA } from "./layout.ts";

/** Guest nanoseconds at host TSC `tsc`, per the clock page. */
export function guestNow(mem: GuestMemory, tsc: bigint): bigint {
  const base = GPA.clock;
  const shift = BigInt(mem.u32(base + CLOCK.shift));
  const tscBase = mem.u64(base + CLOCK.tscBase);
  const nsBase = mem.u64(base + CLOCK.nsBase);
  const mul = mem.u64(base + CLOCK.mul) & 0xffffffffn;
  const delta = tsc > tscBase ? tsc - tscBase : 0n;
  return nsBase + ((delta * mul) >> shift);
}
