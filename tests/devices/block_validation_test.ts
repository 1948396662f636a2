import { deepStrictEqual, equal, ok as assert } from "node:assert/strict";
import {
  BLKIF_OP,
  BLKIF_RSP,
  type BlkifRequest,
  type BlkifSegment,
  RING,
} from "../../devices/mod.ts";
import { GPA, PAGE_SIZE } from "../../machine/layout.ts";
import { DISK_BYTES, DISK_SECTORS, withBlock } from "./block_fixture.ts";
import { damagedCanary, fillCanaries, gref, harvest, pattern, RAM_BYTES } from "./guest.ts";

const DATA = 0x100000; // first guest-free page
const LAST = RAM_BYTES - PAGE_SIZE; // last page of RAM
const good: BlkifSegment = { gref: gref(DATA), firstSect: 0, lastSect: 7 };
const RAM_PAGES = RAM_BYTES / PAGE_SIZE;

interface Case {
  name: string;
  operation: number;
  segments: BlkifSegment[];
  nrSegments?: number;
  sector?: bigint;
  status: number;
}

const seg = (g: number, firstSect = 0, lastSect = 7): BlkifSegment => ({
  gref: g,
  firstSect,
  lastSect,
});
const R = BLKIF_OP.read;
const W = BLKIF_OP.write;
const ERR = BLKIF_RSP.error;
const NOTSUP = BLKIF_RSP.eopnotsupp;

const CASES: Case[] = [
  { name: "reserved operation 4", operation: 4, segments: [good], status: NOTSUP },
  { name: "discard (not offered)", operation: BLKIF_OP.discard, segments: [good], status: NOTSUP },
  {
    name: "indirect (not offered)",
    operation: BLKIF_OP.indirect,
    segments: [good],
    status: NOTSUP,
  },
  { name: "operation 7", operation: 7, segments: [good], status: NOTSUP },
  { name: "operation 255", operation: 255, segments: [good], status: NOTSUP },
  { name: "read with 0 segments", operation: R, segments: [], status: ERR },
  { name: "write with 0 segments", operation: W, segments: [], status: ERR },
  { name: "barrier with 0 segments", operation: BLKIF_OP.writeBarrier, segments: [], status: ERR },
  {
    name: "read with 12 segments",
    operation: R,
    segments: Array(11).fill(good),
    nrSegments: 12,
    status: ERR,
  },
  {
    name: "write with 255 segments",
    operation: W,
    segments: Array(11).fill(good),
    nrSegments: 255,
    status: ERR,
  },
  { name: "read into gref 0", operation: R, segments: [seg(0)], status: ERR },
  {
    name: "read into the event page",
    operation: R,
    segments: [seg(gref(GPA.events))],
    status: ERR,
  },
  { name: "read into the block ring", operation: R, segments: [seg(gref(GPA.block))], status: ERR },
  { name: "read into the clock page", operation: R, segments: [seg(gref(GPA.clock))], status: ERR },
  {
    name: "read into the page below guest-free",
    operation: R,
    segments: [seg(gref(DATA) - 1)],
    status: ERR,
  },
  {
    name: "read into the first page past RAM",
    operation: R,
    segments: [seg(RAM_PAGES)],
    status: ERR,
  },
  { name: "read into gref 0xffffffff", operation: R, segments: [seg(0xffff_ffff)], status: ERR },
  { name: "write from past RAM", operation: W, segments: [seg(RAM_PAGES + 1)], status: ERR },
  { name: "write from the boot page", operation: W, segments: [seg(gref(GPA.boot))], status: ERR },
  {
    name: "read: a good segment then one past RAM",
    operation: R,
    segments: [good, seg(gref(LAST)), seg(RAM_PAGES)],
    status: ERR,
  },
  { name: "first_sect > last_sect", operation: R, segments: [seg(gref(DATA), 3, 2)], status: ERR },
  { name: "last_sect 8", operation: R, segments: [seg(gref(DATA), 0, 8)], status: ERR },
  {
    name: "first_sect = last_sect = 8",
    operation: W,
    segments: [seg(gref(DATA), 8, 8)],
    status: ERR,
  },
  { name: "last_sect 255", operation: R, segments: [seg(gref(DATA), 0, 255)], status: ERR },
  {
    name: "sector at the end of the disk",
    operation: R,
    segments: [seg(gref(DATA), 0, 0)],
    sector: BigInt(DISK_SECTORS),
    status: ERR,
  },
  {
    name: "range crossing the end",
    operation: W,
    segments: [seg(gref(DATA), 0, 1)],
    sector: BigInt(DISK_SECTORS - 1),
    status: ERR,
  },
  {
    name: "sector 2^64-1 (overflow)",
    operation: W,
    segments: [good],
    sector: 2n ** 64n - 1n,
    status: ERR,
  },
  {
    name: "sector 2^64-8 (wraps to 0 in u64)",
    operation: R,
    segments: [good],
    sector: 2n ** 64n - 8n,
    status: ERR,
  },
  { name: "sector 2^63", operation: R, segments: [good], sector: 2n ** 63n, status: ERR },
  { name: "sector 2^53+1", operation: W, segments: [good], sector: 2n ** 53n + 1n, status: ERR },
  {
    name: "flush carrying a bad segment",
    operation: BLKIF_OP.flushDiskcache,
    segments: [seg(gref(GPA.events))],
    status: ERR,
  },
];

function toRequest(c: Case, id: bigint): BlkifRequest {
  return {
    operation: c.operation,
    nrSegments: c.nrSegments ?? c.segments.length,
    handle: 0,
    id,
    sectorNumber: c.sector ?? 0n,
    segments: c.segments,
  };
}

Deno.test("block: every malformed request is refused, echoed, counted and harmless", async () => {
  await withBlock({}, async ({ mem, block, front, events, path, log }) => {
    fillCanaries(mem);
    const dataPage = pattern(PAGE_SIZE, 9);
    mem.bytes.set(dataPage, DATA);
    mem.bytes.set(dataPage, LAST);
    harvest(mem);
    for (const [i, c] of CASES.entries()) {
      const id = 0xfeed_0000_0000_0000n + BigInt(i);
      front.post(toRequest(c, id));
      front.publish();
      equal(block.service(), true, c.name);
      deepStrictEqual(
        front.responses(),
        [{ id, operation: c.operation, status: c.status }],
        c.name,
      );
      equal(events.badRequests, i + 1, c.name);
      equal(damagedCanary(mem), -1, c.name);
      deepStrictEqual(mem.bytes.subarray(DATA, DATA + PAGE_SIZE), dataPage, c.name);
      deepStrictEqual(mem.bytes.subarray(LAST, LAST + PAGE_SIZE), dataPage, c.name);
      deepStrictEqual(harvest(mem), [GPA.events / PAGE_SIZE, GPA.block / PAGE_SIZE], c.name);
    }
    const c = block.counters;
    deepStrictEqual(
      [c.badRequests, c.errors, c.reads, c.writes, c.flushes],
      [CASES.length, CASES.length, 0, 0, 0],
    );
    equal(log.lines.length, 10, "logging is rate limited");
    assert(log.lines.every((line) => line.includes("block: request id")));
    deepStrictEqual(await Deno.readFile(path), new Uint8Array(DISK_BYTES), "disk untouched");
  });
});

Deno.test("block: a read-only disk refuses writes and allows reads and pure flushes", async () => {
  await withBlock({}, async ({ path, dir }) => {
    await withBlock({ readOnly: true, path }, async ({ mem, block, front, events }) => {
      mem.bytes.fill(0x77, DATA, DATA + PAGE_SIZE);
      front.post(toRequest({ name: "", operation: W, segments: [good], status: 0 }, 1n));
      front.post(
        toRequest({ name: "", operation: BLKIF_OP.writeBarrier, segments: [good], status: 0 }, 2n),
      );
      front.post(
        toRequest(
          { name: "", operation: BLKIF_OP.flushDiskcache, segments: [good], status: 0 },
          3n,
        ),
      );
      front.post(
        toRequest({ name: "", operation: BLKIF_OP.flushDiskcache, segments: [], status: 0 }, 4n),
      );
      front.post(toRequest({ name: "", operation: R, segments: [good], status: 0 }, 5n));
      front.publish();
      block.service();
      deepStrictEqual(front.responses().map((r) => [r.id, r.status]), [
        [1n, ERR],
        [2n, ERR],
        [3n, ERR],
        [4n, 0],
        [5n, 0],
      ]);
      equal(events.badRequests, 3);
      assert(
        mem.bytes.subarray(DATA, DATA + PAGE_SIZE).every((b) => b === 0),
        "read zeros from disk",
      );
      deepStrictEqual(await Deno.readFile(path), new Uint8Array(DISK_BYTES));
    });
    assert(dir.length > 0);
  });
});

Deno.test("block: a ring overrun is a bad request; req_cons jumps, responses untouched", async () => {
  await withBlock({}, ({ mem, block, front, events }) => {
    front.post(toRequest({ name: "", operation: R, segments: [good], status: 0 }, 1n));
    front.publish();
    block.service();
    front.responses();
    harvest(mem);
    front.reqProd = (front.reqProd + 33) >>> 0;
    front.publish();
    equal(block.service(), false, "no responses posted");
    equal(events.badRequests, 1);
    equal(block.counters.overruns, 1);
    deepStrictEqual(block.ring.indexes(), { reqCons: 34, rspProdPvt: 1, skipped: 33 });
    equal(mem.view.getUint32(GPA.block + RING.rspProd, true), 1);
    deepStrictEqual(front.responses(), []);
    deepStrictEqual(harvest(mem), [GPA.events / PAGE_SIZE, GPA.block / PAGE_SIZE]);
    // The backend keeps working: the next request is answered at rsp_prod_pvt.
    front.post(toRequest({ name: "", operation: R, segments: [good], status: 0 }, 2n));
    front.publish();
    block.service();
    equal(mem.view.getUint32(GPA.block + RING.rspProd, true), 2);
    deepStrictEqual(front.responses(), [{ id: 2n, operation: R, status: 0 }]);
    // A guest that overran cannot make its own state unrestorable.
    const saved = JSON.parse(JSON.stringify(block.save()));
    block.restore(saved);
    deepStrictEqual(block.ring.indexes(), { reqCons: 35, rspProdPvt: 2, skipped: 33 });
  });
});

Deno.test("block: an overrun by a 'negative' distance is handled the same way", async () => {
  await withBlock({}, ({ block, front, events }) => {
    front.reqProd = 0xffff_ff00;
    front.publish();
    equal(block.service(), false);
    equal(events.badRequests, 1);
    deepStrictEqual(block.ring.indexes(), {
      reqCons: 0xffff_ff00,
      rspProdPvt: 0,
      skipped: 0xffff_ff00,
    });
    block.restore(JSON.parse(JSON.stringify(block.save())));
  });
});
