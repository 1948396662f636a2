import { deepStrictEqual, equal, ok as assert, throws } from "node:assert/strict";
import {
  BLKIF_OP,
  BlockBackend,
  createImage,
  decodeDiskDelta,
  DISK_DELTA_DEFAULTS,
  type DiskDelta,
  diskDeltaEncodedSize,
  DiskDeltaError,
  encodeDiskDelta,
  validateDiskDelta,
} from "../../devices/mod.ts";
import { PAGE_SIZE } from "../../machine/layout.ts";
import {
  type BlockFixture,
  DISK_BYTES,
  DISK_SECTORS,
  openBlock,
  withBlock,
} from "./block_fixture.ts";
import { FakeGate } from "./fake_gate.ts";
import { pattern, req, roundTrip, seg } from "./guest.ts";

const SRC = 0x100000;
const DST = 0x200000;
const W = BLKIF_OP.write;
const R = BLKIF_OP.read;
const LIMITS = { diskSectors: BigInt(DISK_SECTORS) };
function postWrite(f: BlockFixture, id: bigint, sector: bigint, gpa: number, data: Uint8Array) {
  f.mem.bytes.set(data, gpa);
  f.front.post(req(W, id, sector, [seg(gpa, 0, data.length / 512 - 1)]));
}

/** Counts fdatasync calls. */
class Counting extends BlockBackend {
  syncs = 0;
  override performFlush(): void {
    this.syncs++;
    super.performFlush();
  }
}

Deno.test("replicated disk: writes hit the local image and the delta at once, and are answered", async () => {
  await withBlock({}, async (f) => {
    const gate = new FakeGate();
    f.block.setGate(gate);
    f.block.setDiskMode("replicated");
    const a = pattern(PAGE_SIZE, 1);
    postWrite(f, 1n, 8n, SRC, a);
    f.front.post(req(R, 2n, 8n, [seg(DST)]));
    f.front.publish();
    equal(f.block.service(), true);
    deepStrictEqual(f.front.responses().map((r) => r.id), [1n, 2n], "answered at once");
    deepStrictEqual((await Deno.readFile(f.path)).subarray(8 * 512, 16 * 512), a, "on the image");
    deepStrictEqual(f.mem.bytes.subarray(DST, DST + PAGE_SIZE), a);
    equal(f.block.diskDeltaBytes, PAGE_SIZE);
    equal(f.block.diskDeltaEntries, 1);
    deepStrictEqual(gate.held, [], "no output held, no sync asked for");
    deepStrictEqual(f.block.held, { bytes: 0, count: 0, oldestEpoch: null });

    f.mem.bytes.fill(0x33, SRC, SRC + PAGE_SIZE);
    f.front.post(req(BLKIF_OP.writeBarrier, 3n, 0n, [seg(SRC, 0, 1)]));
    f.front.post(req(BLKIF_OP.flushDiskcache, 4n, 0n, []));
    f.front.post(req(BLKIF_OP.flushDiskcache, 5n, 0n, []));
    f.front.publish();
    f.block.service();
    const delta = f.block.takeDiskDelta();
    deepStrictEqual(delta, {
      writes: [
        { sector: 8n, data: a },
        { flush: true },
        { sector: 0n, data: new Uint8Array(1024).fill(0x33) },
        { flush: true }, // barrier's flush-after, and the two flushes, recorded once
      ],
    });
    equal(f.block.diskDeltaBytes, 0);
    deepStrictEqual(f.block.takeDiskDelta(), { writes: [] }, "a new list each time");
    equal(f.block.counters.flushes, 4, "every flush was performed locally");
  });
});

Deno.test("replicated disk: applyDiskDelta on a second image makes it identical", async () => {
  await withBlock({}, async (a) => {
    a.block.setDiskMode("replicated");
    const standbyPath = `${a.dir}/standby.img`;
    createImage(standbyPath, DISK_BYTES);
    const b = openBlock(standbyPath, a.dir, { make: (m, e, d) => new Counting(m, e, d) });
    const standby = b.block as Counting;
    try {
      let seed = 1;
      for (let checkpoint = 0; checkpoint < 4; checkpoint++) {
        for (let i = 0; i < 20; i++) {
          const sectors = 1 + ((seed * 7) % 8);
          const sector = BigInt((seed * 97) % (DISK_SECTORS - 8));
          postWrite(
            a,
            BigInt(seed),
            sector,
            SRC + (i % 8) * PAGE_SIZE,
            pattern(sectors * 512, seed),
          );
          seed++;
        }
        if (checkpoint % 2 === 1) a.front.post(req(BLKIF_OP.flushDiskcache, 0n, 0n, []));
        a.front.publish();
        a.block.service();
        equal(a.front.responses().length, checkpoint % 2 === 1 ? 21 : 20);
        // Checkpoint: take the delta, ship it encoded, apply it at commit.
        const wire = encodeDiskDelta(a.block.takeDiskDelta(), LIMITS);
        const syncs = standby.syncs;
        const summary = b.block.applyDiskDelta(decodeDiskDelta(wire, LIMITS));
        deepStrictEqual(summary.writes, 20);
        equal(standby.syncs - syncs, checkpoint % 2, "one fdatasync iff the delta has a flush");
        deepStrictEqual(await Deno.readFile(standbyPath), await Deno.readFile(a.path));
      }
      deepStrictEqual(b.block.takeDiskDelta(), { writes: [] }, "applying records nothing");
    } finally {
      b.disk.close();
    }
  });
});

Deno.test("replicated disk: at maxDiskDeltaBytes writes wait in the ring until the delta is taken", async () => {
  await withBlock({ maxDiskDeltaBytes: 2 * PAGE_SIZE }, (f) => {
    f.block.setDiskMode("replicated");
    f.front.post(req(R, 1n, 0n, [seg(DST)]));
    for (let i = 2; i <= 4; i++) postWrite(f, BigInt(i), 0n, SRC, pattern(PAGE_SIZE, i));
    f.front.post(req(R, 5n, 0n, [seg(DST)]));
    f.front.publish();
    f.block.service();
    deepStrictEqual(f.front.responses().map((r) => r.id), [1n, 2n, 3n]);
    equal(f.block.stalled, "delta-limit");
    equal(f.block.needsService, false);
    equal(f.block.diskDeltaBytes, 2 * PAGE_SIZE);
    throws(() => f.block.setDiskMode("local"), /take it before switching/);
    equal(f.block.takeDiskDelta().writes.length, 2);
    f.block.service();
    equal(f.block.stalled, null);
    deepStrictEqual(f.front.responses().map((r) => r.id), [4n, 5n]);
    f.block.takeDiskDelta();
    f.block.setDiskMode("local");
    equal(f.block.diskMode, "local");
  });
});

Deno.test("replicated disk: the mode is saved; restore empties the delta; mode rules", async () => {
  await withBlock({}, (f) => {
    throws(() => f.block.setDiskMode("san" as "local"), RangeError);
    f.block.setDiskMode("replicated");
    postWrite(f, 1n, 0n, SRC, pattern(512, 1));
    f.front.publish();
    f.block.service();
    const saved = roundTrip(f.block.save());
    equal(saved.diskMode, "replicated");
    deepStrictEqual(saved.held, []);
    f.block.restore({ ...saved, diskMode: "local" });
    equal(f.block.diskMode, "local");
    equal(f.block.diskDeltaEntries, 0, "the delta belonged to the replaced state");
    f.block.restore(saved);
    equal(f.block.diskMode, "replicated");
    f.block.setDiskMode("replicated"); // no-op
    f.block.setDiskMode("shared");
    f.block.setDiskMode("local");
  });
});

Deno.test("replicated disk: a host I/O error is answered ERROR and not recorded", async () => {
  class Failing extends BlockBackend {
    override performWrite(sector: bigint, data: Uint8Array): void {
      if (sector === 7n) throw new Error("injected EIO");
      super.performWrite(sector, data);
    }
  }
  await withBlock({ make: (m, e, d) => new Failing(m, e, d) }, (f) => {
    f.block.setDiskMode("replicated");
    postWrite(f, 1n, 7n, SRC, pattern(512, 1));
    postWrite(f, 2n, 9n, SRC, pattern(512, 2));
    f.front.publish();
    f.block.service();
    deepStrictEqual(f.front.responses().map((r) => r.status), [-1, 0]);
    deepStrictEqual(f.block.takeDiskDelta().writes.map((e) => "sector" in e && e.sector), [9n]);
  });
});

Deno.test("disk delta: the binary form is compact and round-trips", () => {
  const delta: DiskDelta = {
    writes: [
      { sector: 3n, data: pattern(512, 1) },
      { flush: true },
      { sector: BigInt(DISK_SECTORS - 2), data: pattern(1024, 2) },
    ],
  };
  const bytes = encodeDiskDelta(delta, LIMITS);
  equal(bytes.length, diskDeltaEncodedSize(delta));
  equal(bytes.length, 8 + 3 * 13 + 1536);
  deepStrictEqual([...bytes.subarray(0, 8)], [0x4b, 0x44, 0x4c, 0x31, 3, 0, 0, 0]);
  deepStrictEqual([...bytes.subarray(8, 21)], [1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]);
  deepStrictEqual(
    [...bytes.subarray(8 + 13 + 512, 8 + 26 + 512)],
    [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
  );
  deepStrictEqual(decodeDiskDelta(bytes, LIMITS), delta);
  deepStrictEqual(decodeDiskDelta(encodeDiskDelta({ writes: [] }, LIMITS), LIMITS), { writes: [] });
  deepStrictEqual(validateDiskDelta(delta, LIMITS), { writes: 2, flushes: 1, bytes: 1536 });
});

/** A valid encoding with one write of `length` bytes at `sector`, then a flush. */
function encoded(sector: bigint, length: number): Uint8Array {
  const out = new Uint8Array(8 + 13 + length + 13);
  const view = new DataView(out.buffer);
  out.set([0x4b, 0x44, 0x4c, 0x31]);
  view.setUint32(4, 2, true);
  view.setUint8(8, 1);
  view.setBigUint64(9, sector, true);
  view.setUint32(17, length, true);
  out.fill(0x5a, 21, 21 + length);
  view.setUint8(21 + length, 2);
  return out;
}

function edit(bytes: Uint8Array, change: (view: DataView, bytes: Uint8Array) => void): Uint8Array {
  const copy = bytes.slice();
  change(new DataView(copy.buffer), copy);
  return copy;
}

Deno.test("disk delta: malformed or hostile bytes are refused with DiskDeltaError", () => {
  const good = encoded(10n, 1024);
  decodeDiskDelta(good, LIMITS);
  const cases: [string, Uint8Array, Parameters<typeof decodeDiskDelta>[1]?][] = [
    ["empty", new Uint8Array(0)],
    ["short header", good.subarray(0, 7)],
    ["bad magic", edit(good, (_, b) => (b[3] = 0x32))],
    ["count beyond the bytes", edit(good, (v) => v.setUint32(4, 3, true))],
    ["count 2^32-1", edit(good, (v) => v.setUint32(4, 0xffff_ffff, true))],
    ["count too small (trailing entry)", edit(good, (v) => v.setUint32(4, 1, true))],
    ["truncated data", good.subarray(0, 8 + 13 + 1000)],
    ["truncated flush header", good.subarray(0, good.length - 1)],
    ["trailing byte", new Uint8Array([...good, 0])],
    ["unknown kind 0", edit(good, (v) => v.setUint8(8, 0))],
    ["unknown kind 3", edit(good, (v) => v.setUint8(8, 3))],
    ["flush with a sector", edit(good, (v) => v.setBigUint64(good.length - 12, 1n, true))],
    ["flush with a length", edit(good, (v) => v.setUint32(good.length - 4, 512, true))],
    ["write of length 0", encoded(10n, 0)],
    ["write not a sector multiple", encoded(10n, 1000)],
    ["write claims 4 GiB", edit(good, (v) => v.setUint32(17, 0xffff_fe00, true))],
    ["write past the disk", encoded(BigInt(DISK_SECTORS - 1), 1024)],
    ["write at u64 max", encoded(2n ** 64n - 1n, 512)],
    ["write too large", encoded(0n, 1024), { ...LIMITS, maxWriteBytes: 512 }],
    ["total too large", encoded(0n, 1024), { ...LIMITS, maxBytes: 512 }],
    ["too many entries", good, { ...LIMITS, maxEntries: 1 }],
    ["a smaller disk", good, { diskSectors: 11n }],
  ];
  for (const [name, bytes, limits] of cases) {
    throws(() => decodeDiskDelta(bytes, limits ?? LIMITS), DiskDeltaError, name);
  }
  equal(DISK_DELTA_DEFAULTS.maxWriteBytes >= 11 * PAGE_SIZE, true);
});

Deno.test("disk delta: every single-byte corruption is refused or decodes to a valid delta", () => {
  const delta: DiskDelta = {
    writes: [{ sector: 5n, data: pattern(512, 3) }, { flush: true }, {
      sector: 100n,
      data: pattern(1024, 4),
    }],
  };
  const bytes = encodeDiskDelta(delta, LIMITS);
  let refused = 0;
  for (let i = 0; i < bytes.length; i++) {
    for (const flip of [0x01, 0x80, 0xff]) {
      const bad = edit(bytes, (_, b) => (b[i] ^= flip));
      try {
        validateDiskDelta(decodeDiskDelta(bad, LIMITS), LIMITS);
      } catch (error) {
        assert(error instanceof DiskDeltaError, `byte ${i} ^ ${flip}: ${error}`);
        refused++;
      }
    }
  }
  assert(refused > 0);
});

Deno.test("disk delta: applyDiskDelta refuses a bad delta and writes nothing", async () => {
  await withBlock({ make: (m, e, d) => new Counting(m, e, d) }, async (f) => {
    const before = await Deno.readFile(f.path);
    const ok = { sector: 0n, data: pattern(512, 1) };
    const cases: [string, unknown][] = [
      ["not an object", null],
      ["writes not an array", { writes: "x" }],
      ["entry null", { writes: [ok, null] }],
      ["sector a number", { writes: [ok, { sector: 1, data: new Uint8Array(512) }] }],
      ["data an array", { writes: [ok, { sector: 1n, data: [0] }] }],
      ["flush false", { writes: [ok, { flush: false }] }],
      ["flush with data", { writes: [ok, { flush: true, data: new Uint8Array(512) }] }],
      ["negative sector", { writes: [ok, { sector: -1n, data: new Uint8Array(512) }] }],
      ["past the disk", {
        writes: [ok, { sector: BigInt(DISK_SECTORS), data: new Uint8Array(512) }],
      }],
      ["odd length", { writes: [ok, { sector: 1n, data: new Uint8Array(100) }] }],
      ["empty write", { writes: [ok, { sector: 1n, data: new Uint8Array(0) }] }],
    ];
    for (const [name, bad] of cases) {
      throws(() => f.block.applyDiskDelta(bad as DiskDelta), DiskDeltaError, name);
    }
    deepStrictEqual(await Deno.readFile(f.path), before, "nothing written");
    equal((f.block as Counting).syncs, 0, "nothing synced");

    const ro = openBlock(f.path, f.dir, { readOnly: true });
    try {
      throws(() => ro.block.applyDiskDelta({ writes: [ok] }), /read-only/);
      deepStrictEqual(ro.block.applyDiskDelta({ writes: [{ flush: true }] }), {
        writes: 0,
        flushes: 1,
        bytes: 0,
      });
    } finally {
      ro.disk.close();
    }
    deepStrictEqual(await Deno.readFile(f.path), before);
  });
});

Deno.test("disk delta: without a disk size, encode and decode still check shapes and the u64 range", () => {
  const data = new Uint8Array(512);
  const bytes = encodeDiskDelta({ writes: [{ sector: 2n ** 64n - 1n, data }] });
  equal(bytes.length, 8 + 13 + 512);
  deepStrictEqual(decodeDiskDelta(bytes), { writes: [{ sector: 2n ** 64n - 1n, data }] });
  throws(() => decodeDiskDelta(bytes, LIMITS), DiskDeltaError, "but not on this disk");
  throws(() => encodeDiskDelta({ writes: [{ sector: 2n ** 64n, data }] }), DiskDeltaError);
  throws(() => encodeDiskDelta({ writes: [{ sector: -1n, data }] }), DiskDeltaError);
  throws(
    () => encodeDiskDelta({ writes: [{ sector: 0n, data: new Uint8Array(3) }] }),
    DiskDeltaError,
  );
});
