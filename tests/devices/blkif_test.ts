import { deepStrictEqual, equal } from "node:assert/strict";
import {
  BLKIF_OP,
  BLKIF_RSP,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  planRequest,
} from "../../devices/mod.ts";

Deno.test("blkif: request and response codecs follow the x86-64 layout", () => {
  const bytes = encodeRequest({
    operation: 1,
    nrSegments: 2,
    handle: 0x1234,
    id: 0x0102030405060708n,
    sectorNumber: 0xfffffffffffffff0n,
    segments: [{ gref: 0x100, firstSect: 1, lastSect: 6 }, {
      gref: 0xdeadbeef,
      firstSect: 0,
      lastSect: 7,
    }],
  });
  equal(bytes.length, 112);
  deepStrictEqual([...bytes.subarray(0, 4)], [1, 2, 0x34, 0x12]);
  equal(bytes[8], 8);
  equal(bytes[15], 1);
  equal(bytes[16], 0xf0);
  deepStrictEqual([...bytes.subarray(24, 30)], [0, 1, 0, 0, 1, 6]);
  deepStrictEqual([...bytes.subarray(32, 38)], [0xef, 0xbe, 0xad, 0xde, 0, 7]);
  const decoded = decodeRequest(bytes);
  equal(decoded.sectorNumber, 0xfffffffffffffff0n);
  equal(decoded.segments.length, 2);
  equal(decodeRequest(bytes.with(1, 200)).segments.length, 11, "never more than 11 decoded");

  const rsp = encodeResponse({ id: 5n, operation: 3, status: BLKIF_RSP.eopnotsupp });
  deepStrictEqual([...rsp], [5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0xfe, 0xff, 0, 0, 0, 0]);
  deepStrictEqual(decodeResponse(rsp), { id: 5n, operation: 3, status: -2 });
});

Deno.test("blkif: planRequest builds extents for valid requests", () => {
  const limits = { ramBytes: 8 << 20, diskSectors: 2048n, readOnly: false };
  const verdict = planRequest({
    operation: BLKIF_OP.writeBarrier,
    nrSegments: 2,
    handle: 0,
    id: 1n,
    sectorNumber: 2040n,
    segments: [{ gref: 0x100, firstSect: 6, lastSect: 7 }, {
      gref: 0x7ff,
      firstSect: 0,
      lastSect: 5,
    }],
  }, limits);
  deepStrictEqual(verdict, {
    ok: true,
    plan: {
      kind: "write",
      sector: 2040n,
      extents: [{ gpa: 0x100c00, length: 1024 }, { gpa: 0x7ff000, length: 3072 }],
      bytes: 4096,
      flushBefore: true,
      flushAfter: true,
    },
  });
});
