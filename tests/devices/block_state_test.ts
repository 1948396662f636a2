import { deepStrictEqual, equal, throws } from "node:assert/strict";
import { BLKIF_OP, type BlkifRequest, DeviceStateError } from "../../devices/mod.ts";
import { PAGE_SIZE } from "../../machine/layout.ts";
import { DISK_SECTORS, openBlock, withBlock } from "./block_fixture.ts";
import { copyMemory, gref, pattern } from "./guest.ts";

function rw(operation: number, id: bigint, sector: bigint, gpa: number, sectors = 8): BlkifRequest {
  return {
    operation,
    nrSegments: 1,
    handle: 0,
    id,
    sectorNumber: sector,
    segments: [{ gref: gref(gpa), firstSect: 0, lastSect: sectors - 1 }],
  };
}

const roundTrip = <T>(value: T): T => JSON.parse(JSON.stringify(value));

Deno.test("block: save -> restore over a memory copy continues exactly (re-issue rule)", async () => {
  await withBlock({}, async (a) => {
    for (let i = 0; i < 3; i++) {
      a.mem.bytes.set(pattern(PAGE_SIZE, i + 1), 0x100000 + i * PAGE_SIZE);
      a.front.post(rw(BLKIF_OP.write, BigInt(10 + i), BigInt(8 * i), 0x100000 + i * PAGE_SIZE));
    }
    a.front.publish();
    a.block.service();
    equal(a.front.responses().length, 3);
    // Posted but not taken at save time:
    a.mem.bytes.set(pattern(PAGE_SIZE, 99), 0x110000);
    a.front.post(rw(BLKIF_OP.write, 20n, 40n, 0x110000));
    a.front.post(rw(BLKIF_OP.read, 21n, 8n, 0x120000));
    a.front.publish();

    const saved = { events: roundTrip(a.events.save()), block: roundTrip(a.block.save()) };
    const copyPath = `${a.dir}/standby.img`;
    await Deno.copyFile(a.path, copyPath);
    const b = openBlock(copyPath, a.dir, { mem: copyMemory(a.mem) });
    try {
      b.events.restore(saved.events);
      b.block.restore(saved.block);
      deepStrictEqual(b.block.ring.indexes(), a.block.ring.indexes());
      deepStrictEqual(b.block.counters, a.block.counters);

      equal(b.block.service(), true, "the posted requests are taken after restore");
      equal(a.block.service(), true, "the primary does the same");
      deepStrictEqual(b.front.responses(), [
        { id: 20n, operation: BLKIF_OP.write, status: 0 },
        { id: 21n, operation: BLKIF_OP.read, status: 0 },
      ]);
      deepStrictEqual(b.mem.bytes.subarray(0x120000, 0x121000), pattern(PAGE_SIZE, 2));
      deepStrictEqual(
        new Uint8Array(b.mem.buffer),
        new Uint8Array(a.mem.buffer),
        "same guest memory",
      );
      deepStrictEqual(await Deno.readFile(copyPath), await Deno.readFile(a.path), "same disk");
      deepStrictEqual(b.block.save(), a.block.save());
      deepStrictEqual(b.events.counters, a.events.counters);
    } finally {
      b.disk.close();
    }
  });
});

Deno.test("block: restore rejects corrupted states and keeps the current one", async () => {
  await withBlock({}, ({ block }) => {
    block.restore({ ...block.save(), reqCons: 7, rspProdPvt: 7 });
    const good = roundTrip(block.save()) as Record<string, unknown>;
    const counters = good.counters as Record<string, unknown>;
    const cases: [string, unknown][] = [
      ["undefined", undefined],
      ["null", null],
      ["a string", "state"],
      ["an array", [good]],
      ["empty", {}],
      ["no version", { ...good, version: undefined }],
      ["future version", { ...good, version: 3 }],
      ["missing reqCons", { ...good, reqCons: undefined }],
      ["string reqCons", { ...good, reqCons: "7" }],
      ["negative reqCons", { ...good, reqCons: -1, rspProdPvt: -1 }],
      ["reqCons 2^32", { ...good, reqCons: 2 ** 32, rspProdPvt: 2 ** 32 }],
      ["fractional rspProdPvt", { ...good, rspProdPvt: 7.5 }],
      ["NaN rspProdPvt", { ...good, rspProdPvt: Number.NaN }],
      ["Infinity reqCons", { ...good, reqCons: Number.POSITIVE_INFINITY }],
      ["rsp_prod_pvt ahead of req_cons", { ...good, rspProdPvt: 8 }],
      ["rsp_prod_pvt far behind", { ...good, rspProdPvt: 7 - 40 + 2 ** 32 }],
      ["responses owed", { ...good, rspProdPvt: 5 }],
      ["skipped inconsistent", { ...good, skipped: 3 }],
      ["skipped missing", { ...good, skipped: undefined }],
      ["disk size differs", { ...good, diskSectors: String(DISK_SECTORS + 8) }],
      ["disk size as number", { ...good, diskSectors: DISK_SECTORS }],
      ["disk size not decimal", { ...good, diskSectors: "0x800" }],
      ["disk size beyond u64", { ...good, diskSectors: "18446744073709551616" }],
      ["read-only differs", { ...good, readOnly: true }],
      ["read-only not boolean", { ...good, readOnly: "false" }],
      ["counters missing", { ...good, counters: undefined }],
      ["counters an array", { ...good, counters: [] }],
      ["counter negative", { ...good, counters: { ...counters, reads: -1 } }],
      ["counter unsafe", { ...good, counters: { ...counters, bytesRead: 2 ** 60 } }],
      ["counter missing", { ...good, counters: { ...counters, overruns: undefined } }],
      ["counter string", { ...good, counters: { ...counters, errors: "0" } }],
    ];
    for (const [name, bad] of cases) {
      throws(() => block.restore(bad), DeviceStateError, name);
    }
    deepStrictEqual(roundTrip(block.save()), good, "a failed restore changes nothing");
    throws(
      () => block.restore({ ...good, rspProdPvt: 8 }),
      /rsp_prod_pvt 8 is ahead of req_cons 7/,
    );
  });
});
