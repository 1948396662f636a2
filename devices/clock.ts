/**
 * The PV clock page (struct kemari_clock at GPA.clock).
 *
 * The guest computes ns = ns_base + (((rdtsc - tsc_base) * mul) >> shift),
 * with the product taken at full width (64 x 32 -> 96 bits, as Linux's
 * pvclock does): with mul close to 2^32 a plain 64-bit product would wrap
 * after about 2^32 ticks. The VMM rewrites the page only while the vCPU is
 * paused, bracketed by seq going odd then even.
 *
 * The guest's rdtsc is the raw host TSC (kvm-pvm cannot offset or scale
 * it), so a restore on another host would see an unrelated TSC. The saved
 * state therefore carries guest nanoseconds, not TSC values: restore()
 * re-anchors the page at (new host TSC now, saved ns), and the guest clock
 * continues from where it stopped, never backwards.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { CLOCK, GPA } from "../machine/layout.ts";
import type { Device, DeviceState } from "./device.ts";
import { SharedWords } from "./shared_words.ts";
import { StateReader } from "./state_reader.ts";

/** The host's time stamp counter, as the guest sees it. */
export interface ClockSource {
  /** TSC frequency in kHz. */
  readonly tscKhz: number;
  /** Current TSC value (u64). */
  readTsc(): bigint;
}

/** ns = (ticks * mul) >> shift. */
export interface ClockScale {
  /** < 2^32. */
  mul: number;
  shift: number;
}

/** Highest TSC frequency accepted, in kHz (as tsc_khz must fit in u32 here). */
export const MAX_TSC_KHZ = 2 ** 32 - 1;
const U64_MAX = 2n ** 64n - 1n;

/**
 * The most precise scale for a TSC of `tscKhz`: the largest shift for which
 * mul = round(10^6 * 2^shift / tscKhz) stays below 2^32.
 */
export function clockScale(tscKhz: number): ClockScale {
  checkKhz(tscKhz);
  const khz = BigInt(tscKhz);
  const mulFor = (shift: number) => ((1_000_000n << BigInt(shift)) + khz / 2n) / khz;
  let shift = 0;
  while (shift < 63 && mulFor(shift + 1) < 2n ** 32n) shift++;
  return { mul: Number(mulFor(shift)), shift };
}

/** Converts TSC ticks to ns with a scale, exactly as the guest does (full-width product). */
export function scaleTicks(ticks: bigint, scale: ClockScale): bigint {
  return (ticks * BigInt(scale.mul)) >> BigInt(scale.shift);
}

/** Writer of the guest's clock page. */
export class PvClock implements Device {
  readonly name = "clock";
  readonly #words: SharedWords;
  #source: ClockSource;
  #scale: ClockScale;
  #tscBase = 0n;
  #nsBase = 0n;
  #anchored = false;

  /** A clock page at GPA.clock driven by `source`; call start() or restore() next. */
  constructor(readonly mem: GuestMemory, source: ClockSource) {
    mem.check(GPA.clock, CLOCK.tscKhz + 8);
    this.#words = new SharedWords(mem);
    this.#source = source;
    this.#scale = clockScale(source.tscKhz);
  }

  /** Starts guest time at 0 ns now and writes the page. */
  start(): void {
    this.#anchor(this.#source, 0n);
  }

  /** Guest time now, in ns (what the guest would compute from the page). */
  now(): bigint {
    if (!this.#anchored) throw new Error("clock: now() before start() or restore()");
    const ticks = readTsc(this.#source) - this.#tscBase;
    // A TSC that went backwards must not take guest time with it.
    return this.#nsBase + (ticks > 0n ? scaleTicks(ticks, this.#scale) : 0n);
  }

  /**
   * Re-anchors the page at (TSC now, now()) on the same source; call only
   * while the vCPU is paused. Keeps (rdtsc - tsc_base) small for guests.
   */
  rebase(): void {
    this.#anchor(this.#source, this.now());
  }

  /** The page's current parameters. */
  get params(): { tscBase: bigint; nsBase: bigint; scale: ClockScale; tscKhz: number } {
    return {
      tscBase: this.#tscBase,
      nsBase: this.#nsBase,
      scale: { ...this.#scale },
      tscKhz: this.#source.tscKhz,
    };
  }

  service(): boolean {
    return false;
  }

  /**
   * Guest time at the moment of saving (call with the vCPU paused: it is
   * then >= every value the guest has read) and the TSC frequency, for
   * information. The host TSC is deliberately not saved.
   */
  save(): DeviceState {
    return { version: 1, ns: this.now().toString(), tscKhz: this.#source.tscKhz };
  }

  /**
   * Validates `state`, then continues guest time from the saved ns on
   * `source` (the new host's TSC; default: the current source).
   */
  restore(state: unknown, source: ClockSource = this.#source): void {
    const reader = StateReader.of(this.name, state);
    reader.version(1);
    const ns = reader.u64("ns");
    reader.int("tscKhz", 1, MAX_TSC_KHZ);
    this.#anchor(source, ns);
  }

  #anchor(source: ClockSource, ns: bigint): void {
    const scale = clockScale(source.tscKhz);
    const tsc = readTsc(source);
    this.#source = source;
    this.#scale = scale;
    this.#tscBase = tsc;
    this.#nsBase = ns;
    this.#anchored = true;
    this.#writePage();
  }

  /** Writes the page under the seq protocol: odd while changing, even when done. */
  #writePage(): void {
    const seqGpa = GPA.clock + CLOCK.seq;
    const odd = (this.#words.load(seqGpa) + 1) | 1;
    this.#words.store(seqGpa, odd);
    this.mem.setU32(GPA.clock + CLOCK.shift, this.#scale.shift);
    this.mem.setU64(GPA.clock + CLOCK.tscBase, this.#tscBase);
    this.mem.setU64(GPA.clock + CLOCK.nsBase, this.#nsBase);
    this.mem.setU64(GPA.clock + CLOCK.mul, BigInt(this.#scale.mul));
    this.mem.setU64(GPA.clock + CLOCK.tscKhz, BigInt(this.#source.tscKhz));
    this.#words.store(seqGpa, (odd + 1) >>> 0);
  }
}

function readTsc(source: ClockSource): bigint {
  const tsc = source.readTsc();
  if (typeof tsc !== "bigint" || tsc < 0n || tsc > U64_MAX) {
    throw new RangeError(`clock source returned an invalid TSC ${String(tsc)}`);
  }
  return tsc;
}

function checkKhz(tscKhz: number): void {
  if (!Number.isSafeInteger(tscKhz) || tscKhz < 1 || tscKhz > MAX_TSC_KHZ) {
    throw new RangeError(`TSC frequency ${tscKhz} kHz is not an integer in [1, ${MAX_TSC_KHZ}]`);
  }
}
