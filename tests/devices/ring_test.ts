import { deepStrictEqual, equal, notStrictEqual, ok as assert, throws } from "node:assert/strict";
import {
  BackRing,
  owedResponses,
  RING,
  RING_HEADER_BYTES,
  ringEntries,
  ringIndexProblem,
} from "../../devices/mod.ts";
import { GPA } from "../../machine/layout.ts";
import { harvest, newMemory } from "./guest.ts";

const REQ = 112;
const RSP = 16;

function setup() {
  const mem = newMemory();
  return { mem, ring: new BackRing(mem, GPA.block, REQ, RSP) };
}

function setReqProd(ring: BackRing, value: number): void {
  ring.mem.view.setUint32(ring.gpa + RING.reqProd, value >>> 0, true);
}

Deno.test("ring: nr_ents is rounded down to a power of two", () => {
  equal(ringEntries(4096, 112), 32);
  equal(ringEntries(4096, 12), 256);
  equal(ringEntries(4096, 8), 256);
  equal(ringEntries(4096, 4032), 1);
  throws(() => ringEntries(4096, 4033), RangeError);
  equal(setup().ring.nrEnts, 32);
  equal(setup().ring.entrySize, 112);
});

Deno.test("ring: constructor rejects unaligned or out-of-RAM rings and bad sizes", () => {
  const mem = newMemory();
  throws(() => new BackRing(mem, GPA.block + 4, REQ, RSP), RangeError);
  throws(() => new BackRing(mem, mem.size, REQ, RSP));
  throws(() => new BackRing(mem, GPA.block, 0, RSP), RangeError);
  throws(() => new BackRing(mem, GPA.block, 5000, RSP), RangeError);
});

Deno.test("ring: requests are copied out of guest memory", () => {
  const { mem, ring } = setup();
  const slot = GPA.block + RING_HEADER_BYTES;
  mem.bytes.fill(7, slot, slot + REQ);
  setReqProd(ring, 1);
  deepStrictEqual(ring.pendingRequests(), { ok: true, count: 1 });
  const request = ring.takeRequest();
  mem.bytes.fill(9, slot, slot + REQ); // the guest scribbles after the copy
  deepStrictEqual(request, new Uint8Array(REQ).fill(7));
  equal(ring.reqCons, 1);
  deepStrictEqual(ring.pendingRequests(), { ok: true, count: 0 });
});

Deno.test("ring: an overrun is reported and skipTo abandons the requests", () => {
  const { mem, ring } = setup();
  setReqProd(ring, 33);
  const pending = ring.pendingRequests();
  deepStrictEqual(pending, { ok: false, reqProd: 33, reqCons: 0, count: 33 });
  ring.skipTo(33);
  deepStrictEqual(ring.indexes(), { reqCons: 33, rspProdPvt: 0, skipped: 33 });
  equal(mem.view.getUint32(GPA.block + RING.rspProd, true), 0);
  // exactly a ring's worth is fine
  setReqProd(ring, 33 + 32);
  deepStrictEqual(ring.pendingRequests(), { ok: true, count: 32 });
  // "negative" distances are huge u32 distances: an overrun too
  setReqProd(ring, 10);
  equal(ring.pendingRequests().ok, false);
});

Deno.test("ring: indexes are free-running u32 and wrap", () => {
  const { mem, ring } = setup();
  ring.adopt({ reqCons: 0xffff_fffe, rspProdPvt: 0xffff_fffe, skipped: 0 });
  mem.view.setUint32(GPA.block + RING.rspProd, 0xffff_fffe, true);
  setReqProd(ring, 2);
  deepStrictEqual(ring.pendingRequests(), { ok: true, count: 4 });
  for (let i = 0; i < 4; i++) {
    ring.takeRequest();
    ring.putResponse(new Uint8Array(RSP).fill(i + 1));
  }
  deepStrictEqual(ring.indexes(), { reqCons: 2, rspProdPvt: 2, skipped: 0 });
  ring.pushResponses();
  equal(mem.view.getUint32(GPA.block + RING.rspProd, true), 2);
  // index 0xfffffffe lands in slot 30, index 1 in slot 1
  equal(mem.bytes[GPA.block + RING_HEADER_BYTES + 30 * REQ], 1);
  equal(mem.bytes[GPA.block + RING_HEADER_BYTES + 1 * REQ], 4);
});

Deno.test("ring: pushResponses honours rsp_event and marks the page dirty", () => {
  const { mem, ring } = setup();
  harvest(mem);
  mem.view.setUint32(GPA.block + RING.rspEvent, 1, true);
  ring.putResponse(new Uint8Array(RSP));
  equal(ring.pushResponses(), true, "rsp_event 1 crossed by 0 -> 1");
  deepStrictEqual(harvest(mem), [GPA.block / 4096]);
  mem.view.setUint32(GPA.block + RING.rspEvent, 100, true);
  ring.putResponse(new Uint8Array(RSP));
  equal(ring.pushResponses(), false, "rsp_event 100 not crossed by 1 -> 2");
  equal(ring.pushResponses(), false, "nothing new");
  throws(() => ring.putResponse(new Uint8Array(RSP + 1)), RangeError);
});

Deno.test("ring: finalCheckForRequests sets req_event and re-checks", () => {
  const { mem, ring } = setup();
  equal(ring.finalCheckForRequests(), false);
  equal(mem.view.getUint32(GPA.block + RING.reqEvent, true), 1);
  setReqProd(ring, 1);
  equal(ring.finalCheckForRequests(), true);
  ring.takeRequest();
  harvest(mem);
  equal(ring.finalCheckForRequests(), false);
  equal(mem.view.getUint32(GPA.block + RING.reqEvent, true), 2);
  deepStrictEqual(harvest(mem), [GPA.block / 4096]);
  equal(ring.finalCheckForRequests(), false);
  deepStrictEqual(harvest(mem), [], "an unchanged req_event is not rewritten");
});

Deno.test("ring: ringIndexProblem accepts owed responses up to nr_ents only", () => {
  const at = (reqCons: number, rspProdPvt: number, skipped = 0) => ({
    reqCons,
    rspProdPvt,
    skipped,
  });
  equal(ringIndexProblem(at(5, 5), 32), null);
  equal(ringIndexProblem(at(37, 5), 32), null);
  equal(ringIndexProblem(at(3, 0xffff_fff0), 32), null);
  notStrictEqual(ringIndexProblem(at(5, 6), 32), null);
  notStrictEqual(ringIndexProblem(at(38, 5), 32), null);
  assert(ringIndexProblem(at(5, 6), 32)?.includes("ahead"));
  // after overruns, skipped requests account for the gap
  equal(ringIndexProblem(at(1000, 5, 995), 32), null);
  equal(owedResponses(at(1000, 5, 990)), 5);
  notStrictEqual(ringIndexProblem(at(2, 0xffff_fff0, 0x8000_0000), 32), null);
  notStrictEqual(ringIndexProblem(at(1000, 5, 996), 32), null);
});

Deno.test("ring: skipTo accumulates skipped modulo 2^32", () => {
  const { ring } = setup();
  ring.adopt({ reqCons: 0xffff_fff0, rspProdPvt: 0xffff_fff8, skipped: 0xffff_fff8 });
  equal(owedResponses(ring.indexes()), 0);
  ring.skipTo(0x20);
  deepStrictEqual(ring.indexes(), { reqCons: 0x20, rspProdPvt: 0xffff_fff8, skipped: 0x28 });
  equal(owedResponses(ring.indexes()), 0);
});
