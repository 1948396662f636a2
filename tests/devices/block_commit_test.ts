import { deepStrictEqual, equal, ok as assert, throws } from "node:assert/strict";
import {
  BLKIF_MAX_REQUEST_BYTES,
  BLKIF_OP,
  BLKIF_RSP,
  type BlkifRequest,
  BlockBackend,
  DeviceStateError,
  encodeBase64,
  OPEN_GATE,
} from "../../devices/mod.ts";
import { PAGE_SIZE } from "../../machine/layout.ts";
import { type BlockFixture, DISK_SECTORS, openBlock, withBlock } from "./block_fixture.ts";
import { FakeGate } from "./fake_gate.ts";
import { copyMemory, pattern, req, roundTrip, seg } from "./guest.ts";

const SRC = 0x100000;
const DST = 0x200000;
const W = BLKIF_OP.write;
const R = BLKIF_OP.read;
const flush = (id: bigint): BlkifRequest => req(BLKIF_OP.flushDiskcache, id, 0n, []);

/** Puts `data` in guest page `gpa` and posts a one-page write of it at `sector`. */
function postWrite(f: BlockFixture, id: bigint, sector: bigint, gpa: number, data: Uint8Array) {
  f.mem.bytes.set(data, gpa);
  f.front.post(req(W, id, sector, [seg(gpa, 0, data.length / 512 - 1)]));
}

/** [id, op, status] of every new response. */
function answers(f: BlockFixture): [bigint, number, number][] {
  return f.front.responses().map((r) => [r.id, r.operation, r.status]);
}

function sectors(file: Uint8Array, first: number, count: number): Uint8Array {
  return file.subarray(first * 512, (first + count) * 512);
}

/** A shared-mode backend whose gate holds. */
function share(f: BlockFixture, gate = new FakeGate()): FakeGate {
  f.block.setDiskMode("shared");
  f.block.setGate(gate);
  return gate;
}

/** Records the order of image writes and flushes. */
class Recording extends BlockBackend {
  readonly ops: string[] = [];
  override performWrite(sector: bigint, data: Uint8Array): void {
    this.ops.push(`write ${sector}+${data.length / 512}`);
    super.performWrite(sector, data);
  }
  override performFlush(): void {
    this.ops.push("flush");
    super.performFlush();
  }
}

Deno.test("shared disk: a held write is neither on the image nor answered until release", async () => {
  await withBlock({}, async (f) => {
    const gate = share(f);
    equal(f.block.diskMode, "shared");
    const data = pattern(PAGE_SIZE, 1);
    postWrite(f, 1n, 8n, SRC, data);
    f.front.publish();
    equal(f.block.service(), false, "no response posted");
    f.mem.bytes.fill(0xff, SRC, SRC + PAGE_SIZE); // the guest reuses its buffer
    deepStrictEqual(answers(f), []);
    assert(sectors(await Deno.readFile(f.path), 8, 8).every((b) => b === 0), "not on the image");
    deepStrictEqual(gate.held, [["block", PAGE_SIZE]]);
    deepStrictEqual(f.block.held, { bytes: PAGE_SIZE, count: 1, oldestEpoch: 1 });
    deepStrictEqual(f.block.ring.indexes(), { reqCons: 1, rspProdPvt: 0, skipped: 0 });
    equal(f.block.counters.writes, 0);
    const seq = f.events.seq;

    equal(f.block.release(0), 0);
    deepStrictEqual(answers(f), []);
    equal(f.block.release(1), 1);
    deepStrictEqual(answers(f), [[1n, W, 0]]);
    equal(f.events.seq, seq + 1, "the guest is notified");
    deepStrictEqual(
      sectors(await Deno.readFile(f.path), 8, 8),
      data,
      "the copy taken at hold time",
    );
    deepStrictEqual(f.block.held, { bytes: 0, count: 0, oldestEpoch: null });
    deepStrictEqual(f.block.ring.indexes(), { reqCons: 1, rspProdPvt: 1, skipped: 0 });
    equal(f.block.counters.writes, 1);
    equal(f.block.counters.bytesWritten, PAGE_SIZE);
  });
});

Deno.test("shared disk: reads are answered at once and see held writes, newest last", async () => {
  await withBlock({}, async (f) => {
    const base = pattern(2 * PAGE_SIZE, 10);
    f.block.setDiskMode("shared"); // not holding yet: performed at once
    f.mem.bytes.set(base, SRC);
    f.front.post(req(W, 1n, 0n, [seg(SRC), seg(SRC + PAGE_SIZE)]));
    f.front.publish();
    f.block.service();
    deepStrictEqual(answers(f), [[1n, W, 0]]);

    share(f);
    const b = pattern(4 * 512, 11);
    const c = pattern(4 * 512, 12);
    postWrite(f, 2n, 4n, SRC + 2 * PAGE_SIZE, b); // sectors 4..7
    postWrite(f, 3n, 6n, SRC + 3 * PAGE_SIZE, c); // sectors 6..9, over part of b
    f.front.post(req(R, 4n, 0n, [seg(DST), seg(DST + PAGE_SIZE)])); // sectors 0..15
    f.front.post(req(R, 5n, 5n, [seg(DST + 2 * PAGE_SIZE, 2, 4), seg(DST + 3 * PAGE_SIZE, 0, 2)]));
    f.front.publish();
    equal(f.block.service(), true);
    deepStrictEqual(answers(f), [[4n, R, 0], [5n, R, 0]], "reads overtake the held writes");

    const expected = base.slice();
    expected.set(b, 4 * 512);
    expected.set(c, 6 * 512);
    deepStrictEqual(f.mem.bytes.subarray(DST, DST + 2 * PAGE_SIZE), expected);
    const split = new Uint8Array([
      ...f.mem.bytes.subarray(DST + 2 * PAGE_SIZE + 2 * 512, DST + 2 * PAGE_SIZE + 5 * 512),
      ...f.mem.bytes.subarray(DST + 3 * PAGE_SIZE, DST + 3 * PAGE_SIZE + 3 * 512),
    ]);
    deepStrictEqual(split, expected.subarray(5 * 512, 11 * 512), "overlay across two extents");
    deepStrictEqual(sectors(await Deno.readFile(f.path), 0, 16), base, "image still old");

    equal(f.block.release(1), 2);
    deepStrictEqual(answers(f), [[2n, W, 0], [3n, W, 0]]);
    deepStrictEqual(sectors(await Deno.readFile(f.path), 0, 16), expected, "same as the read saw");
  });
});

Deno.test("shared disk: flushes and barriers are held too and performed in ring order", async () => {
  await withBlock({ make: (m, e, d) => new Recording(m, e, d) }, (f) => {
    const block = f.block as Recording;
    const gate = share(f);
    f.front.post(flush(1n));
    f.mem.bytes.fill(0x22, SRC, SRC + PAGE_SIZE);
    f.front.post(req(BLKIF_OP.writeBarrier, 2n, 8n, [seg(SRC)]));
    f.front.publish();
    f.block.service(); // epoch 1 for the two above
    gate.epoch = 2;
    postWrite(f, 3n, 16n, SRC + PAGE_SIZE, pattern(512, 3));
    f.front.post(req(BLKIF_OP.flushDiskcache, 4n, 24n, [seg(SRC, 0, 1)]));
    f.front.publish();
    f.block.service();
    deepStrictEqual(gate.held, [["block", 0], ["block", PAGE_SIZE], ["block", 512], [
      "block",
      1024,
    ]]);
    deepStrictEqual(block.ops, [], "nothing touches the image while held");
    deepStrictEqual(f.block.held, { bytes: PAGE_SIZE + 1536, count: 4, oldestEpoch: 1 });

    equal(f.block.release(1), 2);
    deepStrictEqual(block.ops, ["flush", "flush", "write 8+8", "flush"]);
    equal(f.block.release(2), 2);
    deepStrictEqual(block.ops.slice(4), ["write 16+1", "flush", "write 24+2", "flush"]);
    deepStrictEqual(answers(f), [[1n, 3, 0], [2n, 2, 0], [3n, 1, 0], [4n, 3, 0]]);
    deepStrictEqual([f.block.counters.flushes, f.block.counters.writes], [5, 3]);
  });
});

Deno.test("shared disk: at the bound writes stay in the ring (FIFO), and resume after release", async () => {
  await withBlock({}, (f) => {
    const gate = share(f, new FakeGate({ maxCount: 2 }));
    f.front.post(req(R, 1n, 0n, [seg(DST)]));
    for (let i = 2; i <= 4; i++) postWrite(f, BigInt(i), BigInt(8 * i), SRC, pattern(PAGE_SIZE, i));
    f.front.post(req(R, 5n, 0n, [seg(DST)]));
    f.front.publish();
    equal(f.block.service(), true);
    deepStrictEqual(answers(f), [[1n, R, 0]], "the read before the writes is served");
    equal(f.block.stalled, "hold-limit");
    equal(f.block.needsService, false, "a stall is not a backlog to spin on");
    deepStrictEqual(f.block.ring.indexes(), { reqCons: 3, rspProdPvt: 1, skipped: 0 });
    deepStrictEqual(gate.held.map(([, n]) => n), [PAGE_SIZE, PAGE_SIZE]);
    deepStrictEqual(gate.asked.at(-1), ["block", 2 * PAGE_SIZE, 2]);
    f.block.service();
    deepStrictEqual(f.block.ring.indexes().reqCons, 3, "still waiting");

    equal(f.block.release(1), 2);
    deepStrictEqual(answers(f), [[2n, W, 0], [3n, W, 0]]);
    f.block.service();
    equal(f.block.stalled, null);
    deepStrictEqual(answers(f), [[5n, R, 0]]);
    deepStrictEqual(f.block.held, { bytes: PAGE_SIZE, count: 1, oldestEpoch: 1 });
  });
});

Deno.test("shared disk: never more than nr_ents requests are held, even for a guest that overfills", async () => {
  await withBlock({}, (f) => {
    share(f);
    for (let i = 0; i < 32; i++) postWrite(f, BigInt(i), BigInt(i), SRC, pattern(512, i));
    f.front.publish();
    f.block.service();
    equal(f.block.held.count, 32);
    postWrite(f, 99n, 99n, SRC, pattern(512, 99)); // ignores RING_FULL
    f.front.publish();
    f.block.service();
    equal(f.block.stalled, "hold-limit");
    equal(f.block.held.count, 32);
    const saved = roundTrip(f.block.save());
    f.block.restore(saved); // still a valid state
    equal(f.block.releaseAll(), 32);
    equal(f.front.responses().length, 32);
    // The overfilling guest's 33rd request shared slot 0 with the first
    // response, so what is taken now is garbage: refused, not a crash.
    f.block.service();
    equal(f.block.ring.indexes().reqCons, 33);
    deepStrictEqual(f.front.responses().map((r) => r.status), [BLKIF_RSP.error]);
    equal(f.events.badRequests, 1);
  });
});

Deno.test("shared disk: when the gate stops holding, reads go on but writes wait for releaseAll", async () => {
  await withBlock({}, async (f) => {
    share(f);
    const data = pattern(PAGE_SIZE, 7);
    postWrite(f, 1n, 0n, SRC, data);
    f.front.publish();
    f.block.service();
    f.block.setGate(OPEN_GATE);
    throws(() => f.block.setDiskMode("local"), /1 requests are held/);
    f.front.post(req(R, 2n, 0n, [seg(DST)]));
    postWrite(f, 3n, 0n, SRC + PAGE_SIZE, pattern(PAGE_SIZE, 8));
    f.front.publish();
    f.block.service();
    equal(f.block.stalled, "release-pending");
    deepStrictEqual(answers(f), [[2n, R, 0]]);
    deepStrictEqual(
      f.mem.bytes.subarray(DST, DST + PAGE_SIZE),
      data,
      "the read sees the held write",
    );
    equal(f.block.releaseAll(), 1);
    f.block.service();
    deepStrictEqual(answers(f), [[1n, W, 0], [3n, W, 0]]);
    deepStrictEqual(sectors(await Deno.readFile(f.path), 0, 8), pattern(PAGE_SIZE, 8), "in order");
    f.block.setDiskMode("local");
  });
});

/** Runs a shared-mode workload on `f` up to a checkpoint; returns the expected final image part. */
function workload(f: BlockFixture, gate: FakeGate): void {
  postWrite(f, 10n, 0n, SRC, pattern(PAGE_SIZE, 1));
  f.front.post(flush(11n));
  f.front.post(req(R, 12n, 0n, [seg(DST)]));
  f.front.publish();
  f.block.service();
  gate.epoch = 2;
  postWrite(f, 13n, 4n, SRC + PAGE_SIZE, pattern(PAGE_SIZE, 2)); // overlaps the first
  f.mem.bytes.set(pattern(2 * PAGE_SIZE, 3), SRC + 2 * PAGE_SIZE);
  f.front.post(
    req(BLKIF_OP.writeBarrier, 14n, 100n, [
      seg(SRC + 2 * PAGE_SIZE),
      seg(SRC + 3 * PAGE_SIZE, 0, 3),
    ]),
  );
  f.front.publish();
  f.block.service();
  // Posted after the checkpoint's service: taken by whoever runs next.
  f.front.post(req(R, 15n, 2n, [seg(DST + PAGE_SIZE)]));
  f.front.publish();
}

Deno.test("shared disk: save -> restore on a fresh backend, reissueHeld = release on the original", async () => {
  await withBlock({}, async (a) => {
    const gate = share(a);
    workload(a, gate);
    deepStrictEqual(a.front.responses().map((r) => r.id), [12n]);
    a.front.rspCons = 0; // both fronts read every response below
    const saved = roundTrip(a.block.save());
    equal(saved.version, 2);
    equal(saved.diskMode, "shared");
    equal((saved.held as unknown[]).length, 4);
    const standbyPath = `${a.dir}/standby.img`;
    await Deno.copyFile(a.path, standbyPath);
    const b = openBlock(standbyPath, a.dir, { mem: copyMemory(a.mem) });
    try {
      b.events.restore(roundTrip(a.events.save()));
      b.block.restore(saved);
      equal(b.block.diskMode, "shared");
      deepStrictEqual(b.block.held, a.block.held);
      equal(b.block.reissueHeld(), 4);
      equal(a.block.release(2), 4);
      deepStrictEqual(await Deno.readFile(standbyPath), await Deno.readFile(a.path), "same image");
      deepStrictEqual(new Uint8Array(b.mem.buffer), new Uint8Array(a.mem.buffer), "same RAM");
      deepStrictEqual(b.block.save(), a.block.save());
      b.front.rspCons = 0;
      const responses = a.front.responses();
      deepStrictEqual(b.front.responses(), responses);
      deepStrictEqual(responses.map((r) => r.id), [12n, 10n, 11n, 13n, 14n]);

      a.block.setGate(OPEN_GATE);
      a.block.service();
      b.block.service();
      deepStrictEqual(new Uint8Array(b.mem.buffer), new Uint8Array(a.mem.buffer));
      deepStrictEqual(b.front.responses(), a.front.responses());
      deepStrictEqual(b.events.counters, a.events.counters);
    } finally {
      b.disk.close();
    }
  });
});

Deno.test("shared disk: a takeover re-issues writes the old primary already performed, harmlessly", async () => {
  await withBlock({}, async (a) => {
    const gate = share(a);
    workload(a, gate);
    const checkpoint = roundTrip(a.block.save());
    const memory = copyMemory(a.mem);
    // Epoch 1 commits; the primary performs it, then dies before epoch 2 commits.
    equal(a.block.release(1), 2);
    const expected = (await Deno.readFile(a.path)).slice();
    const b = openBlock(a.path, a.dir, { mem: memory }); // the same (shared) image
    try {
      b.block.restore(checkpoint);
      equal(b.block.reissueHeld(), 4, "epoch 1 again, and epoch 2");
      const image = await Deno.readFile(a.path);
      deepStrictEqual(sectors(image, 0, 4), sectors(expected, 0, 4));
      deepStrictEqual(sectors(image, 4, 8), pattern(PAGE_SIZE, 2), "the later write wins");
      deepStrictEqual(sectors(image, 100, 12), pattern(2 * PAGE_SIZE, 3).subarray(0, 12 * 512));
      deepStrictEqual(b.front.responses().map((r) => [r.id, r.status]), [
        [10n, 0],
        [11n, 0],
        [13n, 0],
        [14n, 0],
      ]);
    } finally {
      b.disk.close();
    }
  });
});

Deno.test("shared disk: restore refuses corrupt held requests and changes nothing", async () => {
  await withBlock({}, (f) => {
    const gate = share(f);
    postWrite(f, 1n, 8n, SRC, pattern(PAGE_SIZE, 1));
    f.front.post(flush(2n));
    f.front.publish();
    f.block.service();
    gate.epoch = 3;
    const good = roundTrip(f.block.save()) as Record<string, unknown>;
    const [w, fl] = good.held as Record<string, unknown>[];
    const withHeld = (...held: unknown[]) => ({ ...good, held });
    const data = (n: number) => encodeBase64(new Uint8Array(n).fill(7));
    const cases: [string, unknown][] = [
      ["future version", { ...good, version: 3 }],
      ["disk mode missing", { ...good, diskMode: undefined }],
      ["disk mode unknown", { ...good, diskMode: "san" }],
      ["disk mode a number", { ...good, diskMode: 1 }],
      ["held missing", { ...good, held: undefined }],
      ["held an object", { ...good, held: { 0: w } }],
      ["held in local mode", { ...good, diskMode: "local" }],
      ["held in replicated mode", { ...good, diskMode: "replicated" }],
      ["fewer held than owed", withHeld(w)],
      ["more held than owed", withHeld(w, fl, w)],
      ["too many held", withHeld(...Array(33).fill(w))],
      ["entry null", withHeld(w, null)],
      ["epoch negative", withHeld({ ...w, epoch: -1 }, fl)],
      ["epoch fractional", withHeld({ ...w, epoch: 0.5 }, fl)],
      ["epoch unsafe", withHeld({ ...w, epoch: 2 ** 53 }, fl)],
      ["epoch a string", withHeld({ ...w, epoch: "1" }, fl)],
      ["epochs decreasing", withHeld({ ...w, epoch: 2 }, fl)],
      ["id a number", withHeld({ ...w, id: 1 }, fl)],
      ["id negative", withHeld({ ...w, id: "-1" }, fl)],
      ["id beyond u64", withHeld({ ...w, id: "18446744073709551616" }, fl)],
      ["op read", withHeld({ ...w, op: BLKIF_OP.read }, fl)],
      ["op discard", withHeld({ ...w, op: BLKIF_OP.discard }, fl)],
      ["op 256", withHeld({ ...w, op: 256 }, fl)],
      ["op a string", withHeld({ ...w, op: "1" }, fl)],
      ["sector a number", withHeld({ ...w, sector: 8 }, fl)],
      ["sector past the disk", withHeld({ ...w, sector: String(DISK_SECTORS - 7) }, fl)],
      ["sector at u64 max", withHeld({ ...w, sector: "18446744073709551615" }, fl)],
      ["data not a sector multiple", withHeld({ ...w, data: data(1000) }, fl)],
      ["data empty for a write", withHeld({ ...w, data: "" }, fl)],
      ["data too large", withHeld({ ...w, data: data(BLKIF_MAX_REQUEST_BYTES + 512) }, fl)],
      ["data not base64", withHeld({ ...w, data: "*".repeat(8) }, fl)],
      ["data non-canonical", withHeld({ ...w, data: (w.data as string).slice(0, -2) + "B=" }, fl)],
      ["data a number array", withHeld({ ...w, data: [1, 2, 3] }, fl)],
      ["pure flush with a sector", withHeld(w, { ...fl, sector: "5" })],
      ["missing data", withHeld(w, { ...fl, data: undefined })],
    ];
    for (const [name, bad] of cases) {
      throws(() => f.block.restore(bad), DeviceStateError, name);
    }
    deepStrictEqual(roundTrip(f.block.save()), good, "a failed restore changes nothing");
    throws(() => f.block.restore(withHeld(w)), /2 requests are owed responses, but 1 held/);
    // Legal variants are accepted.
    f.block.restore(withHeld(w, { ...fl, epoch: 9 }));
    deepStrictEqual(f.block.held, { bytes: PAGE_SIZE, count: 2, oldestEpoch: 1 });
    f.block.restore(withHeld({ ...w, data: data(BLKIF_MAX_REQUEST_BYTES) }, fl));
    equal(f.block.held.bytes, BLKIF_MAX_REQUEST_BYTES);
    // A version-1 state (before output commit): local mode, nothing held.
    const { held: _h, diskMode: _m, ...v1 } = good;
    f.block.restore({ ...v1, version: 1, reqCons: 2, rspProdPvt: 2 });
    equal(f.block.diskMode, "local");
    deepStrictEqual(f.block.held, { bytes: 0, count: 0, oldestEpoch: null });
    throws(() => f.block.restore({ ...v1, version: 1 }), /no held requests are saved/);
  });
});

Deno.test("shared disk: a held write to a read-only disk is refused on restore", async () => {
  await withBlock({}, (rw) => {
    const gate = share(rw);
    postWrite(rw, 1n, 8n, SRC, pattern(PAGE_SIZE, 1));
    rw.front.publish();
    rw.block.service();
    equal(gate.held.length, 1);
    const state = roundTrip(rw.block.save()) as Record<string, unknown>;
    const ro = openBlock(rw.path, rw.dir, { readOnly: true });
    try {
      const before = ro.block.save();
      throws(() => ro.block.restore({ ...state, readOnly: true }), /read-only disk/);
      deepStrictEqual(ro.block.save(), before);
    } finally {
      ro.disk.close();
    }
  });
});

Deno.test("shared disk: release validates its epoch; an invalid gate epoch takes nothing", async () => {
  await withBlock({}, (f) => {
    const gate = share(f);
    for (const bad of [-1, 0.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      throws(() => f.block.release(bad), RangeError);
    }
    gate.epoch = -3;
    postWrite(f, 1n, 0n, SRC, pattern(512, 1));
    f.front.publish();
    throws(() => f.block.service(), RangeError);
    deepStrictEqual(f.block.ring.indexes(), { reqCons: 0, rspProdPvt: 0, skipped: 0 });
    gate.epoch = 4;
    f.block.service();
    gate.epoch = 2; // went back: the next hold is still tagged 4
    postWrite(f, 2n, 1n, SRC, pattern(512, 2));
    f.front.publish();
    f.block.service();
    equal(f.block.release(3), 0);
    equal(f.block.release(4), 2);
  });
});

Deno.test("ring: peekRequest copies without taking; consumeRequest takes the peeked request", async () => {
  await withBlock({}, (f) => {
    f.front.post(req(R, 7n, 0n, [seg(DST)]));
    f.front.publish();
    const peeked = f.block.ring.peekRequest();
    equal(f.block.ring.reqCons, 0);
    deepStrictEqual(f.block.ring.peekRequest(), peeked);
    f.block.ring.consumeRequest();
    equal(f.block.ring.reqCons, 1);
    deepStrictEqual(f.block.ring.pendingRequests(), { ok: true, count: 0 });
  });
});
