import { deepStrictEqual, equal, ok as assert, throws } from "node:assert/strict";
import {
  clockScale,
  type ClockSource,
  DeviceStateError,
  PvClock,
  scaleTicks,
} from "../../devices/mod.ts";
import type { GuestMemory } from "../../hypervisor/guest_memory.ts";
import { CLOCK, GPA } from "../../machine/layout.ts";
import { copyMemory, harvest, newMemory } from "./guest.ts";

const HOST_KHZ = 2_596_136;
const HOUR_NS = 3_600_000_000_000n;

/** A settable TSC. */
class FakeTsc implements ClockSource {
  constructor(readonly tscKhz: number, public tsc: bigint) {}
  readTsc(): bigint {
    return this.tsc;
  }
  /** Ticks in `ns` nanoseconds at this frequency. */
  ticks(ns: bigint): bigint {
    return (ns * BigInt(this.tscKhz)) / 1_000_000n;
  }
  advance(ns: bigint): void {
    this.tsc += this.ticks(ns);
  }
}

/** What the guest computes from the page at TSC `tsc` (seqlock, full-width product). */
function guestRead(mem: GuestMemory, tsc: bigint): bigint {
  const v = mem.view;
  const seq = v.getUint32(GPA.clock + CLOCK.seq, true);
  assert(seq % 2 === 0, "seq is even when the guest can read");
  const shift = v.getUint32(GPA.clock + CLOCK.shift, true);
  const tscBase = v.getBigUint64(GPA.clock + CLOCK.tscBase, true);
  const nsBase = v.getBigUint64(GPA.clock + CLOCK.nsBase, true);
  const mul = v.getBigUint64(GPA.clock + CLOCK.mul, true) & 0xffff_ffffn;
  equal(v.getUint32(GPA.clock + CLOCK.seq, true), seq, "no concurrent update");
  return nsBase + (((tsc - tscBase) * mul) >> BigInt(shift));
}

Deno.test("clock: clockScale gives mul < 2^32 and sub-ppm accuracy", () => {
  for (const khz of [1, 3, 1000, 999_999, 1_000_000, HOST_KHZ, 3_000_000, 2 ** 32 - 1]) {
    const scale = clockScale(khz);
    assert(scale.mul < 2 ** 32 && scale.mul >= 2 ** 31, `mul for ${khz}`);
    const oneSecond = scaleTicks(BigInt(khz) * 1000n, scale);
    const error = Number(oneSecond - 1_000_000_000n);
    assert(Math.abs(error) <= 1, `${khz} kHz: 1 s -> ${oneSecond} ns`);
  }
  throws(() => clockScale(0), RangeError);
  throws(() => clockScale(1.5), RangeError);
  throws(() => clockScale(2 ** 32), RangeError);
});

Deno.test("clock: start writes the page under the seq protocol and dirties it", () => {
  const mem = newMemory();
  const tsc = new FakeTsc(HOST_KHZ, 10n ** 14n);
  const clock = new PvClock(mem, tsc);
  throws(() => clock.now(), /before start/);
  harvest(mem);
  clock.start();
  deepStrictEqual(harvest(mem), [GPA.clock / 4096]);
  const v = mem.view;
  equal(v.getUint32(GPA.clock + CLOCK.seq, true), 2);
  equal(v.getBigUint64(GPA.clock + CLOCK.tscBase, true), 10n ** 14n);
  equal(v.getBigUint64(GPA.clock + CLOCK.nsBase, true), 0n);
  equal(v.getBigUint64(GPA.clock + CLOCK.tscKhz, true), BigInt(HOST_KHZ));
  deepStrictEqual(
    {
      mul: Number(v.getBigUint64(GPA.clock + CLOCK.mul, true)),
      shift: v.getUint32(GPA.clock + CLOCK.shift, true),
    },
    clockScale(HOST_KHZ),
  );
  equal(clock.now(), 0n);
  tsc.advance(1_500_000_000n);
  const now = clock.now();
  equal(guestRead(mem, tsc.tsc), now);
  assert(now >= 1_499_999_999n && now <= 1_500_000_000n);
  clock.rebase();
  equal(v.getUint32(GPA.clock + CLOCK.seq, true), 4);
  equal(clock.now(), now, "rebase keeps time continuous");
  tsc.tsc -= 1000n; // a TSC that steps back does not take guest time with it
  equal(clock.now(), now);
});

for (
  const [label, direction, newKhz] of [
    ["+1 h", 1n, 3_000_000],
    ["-1 h", -1n, 1_000_000],
    ["+1 h, same kHz", 1n, HOST_KHZ],
  ] as const
) {
  Deno.test(`clock: monotonic across save/restore onto a TSC offset by ${label} (${newKhz} kHz)`, () => {
    const mem = newMemory();
    const oldHost = new FakeTsc(HOST_KHZ, 10n ** 14n);
    const clock = new PvClock(mem, oldHost);
    clock.start();
    const reads: bigint[] = [];
    for (let i = 0; i < 5; i++) {
      oldHost.advance(1_000_000_007n);
      reads.push(guestRead(mem, oldHost.tsc));
    }
    const saved = JSON.parse(JSON.stringify(clock.save()));
    const savedNs = BigInt(saved.ns);
    assert(savedNs >= reads[reads.length - 1], "save() is at least anything the guest read");

    const newHost = new FakeTsc(
      newKhz,
      oldHost.tsc + direction * new FakeTsc(newKhz, 0n).ticks(HOUR_NS),
    );
    const restoredMem = copyMemory(mem);
    const restored = new PvClock(restoredMem, new FakeTsc(HOST_KHZ, 0n));
    harvest(restoredMem);
    restored.restore(saved, newHost);
    deepStrictEqual(harvest(restoredMem), [GPA.clock / 4096]);
    equal(
      restoredMem.view.getUint32(GPA.clock + CLOCK.seq, true),
      4,
      "seq moved on by 2 from the copy",
    );
    equal(restoredMem.view.getBigUint64(GPA.clock + CLOCK.tscKhz, true), BigInt(newKhz));
    equal(guestRead(restoredMem, newHost.tsc), savedNs, "continues exactly where it was saved");
    for (let i = 0; i < 5; i++) {
      newHost.advance(250_000_000n);
      reads.push(guestRead(restoredMem, newHost.tsc));
      equal(reads[reads.length - 1], restored.now());
    }
    for (let i = 1; i < reads.length; i++) {
      assert(reads[i] >= reads[i - 1], `read ${i} went backwards`);
    }
    const elapsed = reads[reads.length - 1] - savedNs;
    assert(
      elapsed >= 1_249_999_990n && elapsed <= 1_250_000_000n,
      `elapsed ${elapsed} ns at the new rate`,
    );
  });
}

Deno.test("clock: restore rejects corrupt states and leaves the page alone", () => {
  const mem = newMemory();
  const tsc = new FakeTsc(HOST_KHZ, 5n ** 20n);
  const clock = new PvClock(mem, tsc);
  clock.start();
  tsc.advance(10n ** 9n);
  const good = JSON.parse(JSON.stringify(clock.save()));
  const before = mem.bytes.slice(GPA.clock, GPA.clock + 40);
  const cases: unknown[] = [
    null,
    [],
    "1",
    {},
    { ...good, version: 0 },
    { ...good, ns: undefined },
    { ...good, ns: 1000 },
    { ...good, ns: "-1" },
    { ...good, ns: "1e9" },
    { ...good, ns: "0x10" },
    { ...good, ns: "007" },
    { ...good, ns: " 1" },
    { ...good, ns: "18446744073709551616" },
    { ...good, ns: "9".repeat(400) },
    { ...good, tscKhz: 0 },
    { ...good, tscKhz: -2_000_000 },
    { ...good, tscKhz: 1.5 },
    { ...good, tscKhz: "2596136" },
    { ...good, tscKhz: 2 ** 32 },
    { ...good, tscKhz: undefined },
  ];
  for (const bad of cases) throws(() => clock.restore(bad), DeviceStateError, JSON.stringify(bad));
  deepStrictEqual(mem.bytes.slice(GPA.clock, GPA.clock + 40), before);
  clock.restore({ ...good, ns: "18446744073709551615" });
  equal(clock.now(), 2n ** 64n - 1n);
});
