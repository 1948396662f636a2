import { deepStrictEqual, equal, ok as assert } from "node:assert/strict";
import {
  BLKIF_OP,
  BLKIF_RSP,
  type BlkifRequest,
  type BlkifSegment,
  BlockBackend,
} from "../../devices/mod.ts";
import { GPA, PAGE_SIZE } from "../../machine/layout.ts";
import { withBlock } from "./block_fixture.ts";
import { harvest, pattern, seg } from "./guest.ts";

function request(
  operation: number,
  id: bigint,
  sectorNumber: bigint,
  segments: BlkifSegment[],
): BlkifRequest {
  return { operation, nrSegments: segments.length, handle: 0, id, sectorNumber, segments };
}

const SRC = 0x100000;
const DST = 0x200000;

Deno.test("block: write then read back through guest pages", async () => {
  await withBlock({}, async ({ mem, block, front, path, events }) => {
    const source = pattern(3 * PAGE_SIZE, 1);
    mem.bytes.set(source, SRC);
    const written = new Uint8Array([
      ...source.subarray(2 * 512, 8 * 512),
      ...source.subarray(PAGE_SIZE, 2 * PAGE_SIZE),
      ...source.subarray(2 * PAGE_SIZE, 2 * PAGE_SIZE + 4 * 512),
    ]);
    equal(written.length, 18 * 512);
    front.post(request(BLKIF_OP.write, 1n, 100n, [
      seg(SRC, 2, 7),
      seg(SRC + PAGE_SIZE),
      seg(SRC + 2 * PAGE_SIZE, 0, 3),
    ]));
    front.publish();
    equal(block.service(), true);
    deepStrictEqual(front.responses(), [{ id: 1n, operation: BLKIF_OP.write, status: 0 }]);
    const file = await Deno.readFile(path);
    deepStrictEqual(file.subarray(100 * 512, 118 * 512), written);

    mem.bytes.fill(0xee, DST, DST + 3 * PAGE_SIZE);
    front.post(
      request(BLKIF_OP.read, 2n, 100n, [
        seg(DST),
        seg(DST + PAGE_SIZE),
        seg(DST + 2 * PAGE_SIZE, 5, 6),
      ]),
    );
    front.publish();
    equal(block.service(), true);
    deepStrictEqual(front.responses(), [{ id: 2n, operation: BLKIF_OP.read, status: 0 }]);
    const back = new Uint8Array([
      ...mem.bytes.subarray(DST, DST + 2 * PAGE_SIZE),
      ...mem.bytes.subarray(DST + 2 * PAGE_SIZE + 5 * 512, DST + 2 * PAGE_SIZE + 7 * 512),
    ]);
    deepStrictEqual(back, written);
    const third = mem.bytes.subarray(DST + 2 * PAGE_SIZE, DST + 3 * PAGE_SIZE);
    assert(third.subarray(0, 5 * 512).every((b) => b === 0xee), "sectors 0..4 untouched");
    assert(third.subarray(7 * 512).every((b) => b === 0xee), "sector 7 untouched");
    const c = block.counters;
    deepStrictEqual(
      [c.reads, c.writes, c.bytesRead, c.bytesWritten, c.errors, c.badRequests],
      [1, 1, 18 * 512, 18 * 512, 0, 0],
    );
    equal(events.seq, 2, "one notify per service");
    equal(events.badRequests, 0);
  });
});

Deno.test("block: a full ring in one service, one notify; u32 index wrap", async () => {
  await withBlock({}, ({ mem, block, front, events }) => {
    const start = 0xffff_fff0;
    front.resetAt(start);
    block.restore({ ...block.save(), reqCons: start, rspProdPvt: start });
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 32; i++) {
        const page = SRC + i * PAGE_SIZE;
        mem.bytes.fill(round * 32 + i, page, page + 512);
        front.post(
          request(BLKIF_OP.write, BigInt(round * 32 + i), BigInt(round * 32 + i), [
            seg(page, 0, 0),
          ]),
        );
      }
      front.publish();
      block.service();
      const responses = front.responses();
      equal(responses.length, 32);
      responses.forEach((r, i) =>
        deepStrictEqual(r, { id: BigInt(round * 32 + i), operation: 1, status: 0 })
      );
    }
    equal(events.seq, 3);
    equal(front.rspCons, (start + 96) >>> 0);
    const end = (start + 96) >>> 0;
    deepStrictEqual(block.ring.indexes(), { reqCons: end, rspProdPvt: end, skipped: 0 });
    front.post(request(BLKIF_OP.read, 999n, 0n, [seg(DST, 0, 0)]));
    front.publish();
    block.service();
    equal(front.responses()[0].status, 0);
    equal(mem.bytes[DST], 0);
    equal(mem.bytes[DST + 511], 0);
  });
});

Deno.test("block: flush, barrier and flush-with-data call fdatasync and count", async () => {
  await withBlock({}, async ({ mem, block, front, path }) => {
    mem.bytes.fill(0x11, SRC, SRC + PAGE_SIZE);
    front.post({
      operation: BLKIF_OP.flushDiskcache,
      nrSegments: 0,
      handle: 0,
      id: 1n,
      sectorNumber: 0n,
      segments: [],
    });
    front.post(request(BLKIF_OP.writeBarrier, 2n, 8n, [seg(SRC)]));
    front.post(request(BLKIF_OP.flushDiskcache, 3n, 16n, [seg(SRC, 0, 1)]));
    front.publish();
    block.service();
    deepStrictEqual(front.responses().map((r) => [r.id, r.operation, r.status]), [
      [1n, 3, 0],
      [2n, 2, 0],
      [3n, 3, 0],
    ]);
    const c = block.counters;
    deepStrictEqual([c.flushes, c.writes, c.bytesWritten], [5, 2, 10 * 512]);
    const file = await Deno.readFile(path);
    assert(file.subarray(8 * 512, 18 * 512).every((b) => b === 0x11));
  });
});

Deno.test("block: dirty pages after READ include the targets, the ring and the event page", async () => {
  await withBlock({}, ({ mem, block, front }) => {
    harvest(mem);
    front.post(request(BLKIF_OP.read, 1n, 0n, [seg(0x150000), seg(0x151000), seg(0x152000, 3, 3)]));
    front.publish();
    block.service();
    deepStrictEqual(
      harvest(mem),
      [GPA.events, GPA.block, 0x150000, 0x151000, 0x152000].map((g) => g / PAGE_SIZE),
    );
    front.responses();
    front.post(request(BLKIF_OP.write, 2n, 0n, [seg(0x160000)]));
    front.publish();
    block.service();
    deepStrictEqual(
      harvest(mem),
      [GPA.events / PAGE_SIZE, GPA.block / PAGE_SIZE],
      "a WRITE dirties no data pages",
    );
    block.service();
    deepStrictEqual(harvest(mem), [], "an idle service writes nothing");
  });
});

Deno.test("block: performWrite is the interception point; I/O errors become status -1", async () => {
  const seen: [bigint, number][] = [];
  class Recording extends BlockBackend {
    override performWrite(sector: bigint, data: Uint8Array): void {
      seen.push([sector, data.length]);
      if (sector === 66n) throw new Error("injected EIO");
      super.performWrite(sector, data);
    }
  }
  await withBlock({ make: (m, e, d) => new Recording(m, e, d) }, ({ block, front, events }) => {
    front.post(request(BLKIF_OP.write, 1n, 65n, [seg(SRC, 0, 0)]));
    front.post(request(BLKIF_OP.write, 2n, 66n, [seg(SRC, 0, 1)]));
    front.publish();
    block.service();
    deepStrictEqual(front.responses().map((r) => r.status), [0, BLKIF_RSP.error]);
    deepStrictEqual(seen, [[65n, 512], [66n, 1024]]);
    const c = block.counters;
    deepStrictEqual([c.writes, c.ioErrors, c.errors, c.badRequests], [1, 1, 1, 0]);
    equal(events.badRequests, 0, "a host error is not the guest's fault");
    equal(block.lastError, "injected EIO");
  });
});

Deno.test("block: the per-service budget bounds the work and reports the backlog", async () => {
  await withBlock({ maxRequestsPerService: 5 }, ({ block, front }) => {
    for (let i = 0; i < 12; i++) {
      front.post(request(BLKIF_OP.read, BigInt(i), 0n, [seg(DST, 0, 0)]));
    }
    front.publish();
    const counts: number[] = [];
    const backlog: boolean[] = [];
    while (block.service()) {
      counts.push(front.responses().length);
      backlog.push(block.needsService);
    }
    deepStrictEqual(counts, [5, 5, 2]);
    deepStrictEqual(backlog, [true, true, false]);
  });
});
