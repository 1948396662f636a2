import {
  deepStrictEqual,
  equal,
  notDeepStrictEqual,
  ok as assert,
  throws,
} from "node:assert/strict";
import {
  decodeRxRequest,
  decodeRxResponse,
  decodeTxRequest,
  decodeTxResponse,
  DeviceStateError,
  encodeBase64,
  encodeRxRequest,
  encodeRxResponse,
  encodeTxRequest,
  encodeTxResponse,
  EventPage,
  type FrameIo,
  NET_HELD_CAP,
  NetBackend,
  type NetBackendOptions,
  NETIF,
  NETIF_RING_SLOTS,
  NETIF_RSP,
  NETIF_RX_REQUEST_SIZE,
  NETIF_RX_RESPONSE_SIZE,
  NETIF_TX_REQUEST_SIZE,
  NETIF_TX_RESPONSE_SIZE,
  type NetifRxResponse,
  type NetifTxRequest,
  type NetifTxResponse,
  NETRXF,
  NETTXF,
  OPEN_GATE,
  parseIpv4,
  parseMac,
  RING,
  RING_HEADER_BYTES,
} from "../../devices/mod.ts";
import type { GuestMemory } from "../../hypervisor/guest_memory.ts";
import { GPA, PAGE_SIZE } from "../../machine/layout.ts";
import { checkAgainstC, type ProbeCheck } from "../support/c_probe.ts";
import { FakeGate } from "./fake_gate.ts";
import { copyMemory, gref, harvest, LogCapture, newMemory, pattern, RAM_BYTES } from "./guest.ts";

const roundTrip = <T>(value: T): T => JSON.parse(JSON.stringify(value));

const GUEST_MAC = "02:4b:45:4d:00:01";
const OTHER_MAC = "02:4b:45:4d:00:99";
const BUF = 0x180000; // tx/rx data pages live from here
const page = (n: number): number => BUF + n * PAGE_SIZE;

/** An Ethernet frame of `length` bytes to `dst` from `src` with a patterned payload. */
function frame(length: number, seed: number, dst = GUEST_MAC, src = OTHER_MAC): Uint8Array {
  const bytes = pattern(length, seed);
  const mac = (text: string) => text.split(":").map((part) => parseInt(part, 16));
  bytes.set(mac(dst).slice(0, length), 0);
  if (length >= 12) bytes.set(mac(src), 6);
  if (length >= 14) bytes.set([0x08, 0x00], 12);
  return bytes;
}

/** A FrameIo that records writes and plays back injected frames. */
class FakeTap implements FrameIo {
  readonly sent: Uint8Array[] = [];
  failWrites = false;
  closed = false;
  readonly #incoming: Uint8Array[] = [];
  #pending: { resolve: (f: Uint8Array | null) => void; reject: (e: Error) => void } | null = null;
  #readError: Error | null = null;

  write(frame: Uint8Array): void {
    if (this.failWrites) throw new Error("write to TAP fake failed: EIO");
    this.sent.push(frame.slice());
  }

  read(): Promise<Uint8Array | null> {
    if (this.#pending !== null) throw new Error("two reads pending");
    if (this.#readError !== null) return Promise.reject(this.#readError);
    const next = this.#incoming.shift();
    if (next !== undefined) return Promise.resolve(next);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => this.#pending = { resolve, reject });
  }

  #take() {
    const pending = this.#pending;
    this.#pending = null;
    return pending;
  }

  /** A frame arrives from the network. */
  inject(frame: Uint8Array): void {
    const pending = this.#take();
    if (pending !== null) pending.resolve(frame);
    else this.#incoming.push(frame);
  }

  /** The pending read and every later one fail. */
  failRead(error: Error): void {
    this.#readError = error;
    this.#take()?.reject(error);
  }

  close(): void {
    this.closed = true;
    this.#take()?.resolve(null);
  }
}

/** The guest side of the netif rings. */
class NetFront {
  txProd = 0;
  txRspCons = 0;
  rxProd = 0;
  rxRspCons = 0;

  constructor(readonly mem: GuestMemory) {}

  #slot(ring: number, index: number, size: number): number {
    return ring + RING_HEADER_BYTES + (index & (NETIF_RING_SLOTS - 1)) * size;
  }

  /** Sets every shared index of both rings to `index`. */
  resetAt(index: number): void {
    for (const ring of [GPA.netTx, GPA.netRx]) {
      this.mem.view.setUint32(ring + RING.reqProd, index, true);
      this.mem.view.setUint32(ring + RING.rspProd, index, true);
      this.mem.view.setUint32(ring + RING.reqEvent, index + 1, true);
      this.mem.view.setUint32(ring + RING.rspEvent, index + 1, true);
    }
    this.txProd =
      this.txRspCons =
      this.rxProd =
      this.rxRspCons =
        index;
  }

  /** Copies `frame` into the guest at `gpa` and posts a tx request for it. */
  send(id: number, gpa: number, data: Uint8Array, flags = 0): void {
    this.mem.bytes.set(data, gpa);
    this.postTx({
      gref: gref(gpa - (gpa % PAGE_SIZE)),
      offset: gpa % PAGE_SIZE,
      flags,
      id,
      size: data.length,
    });
  }

  postTx(request: NetifTxRequest): void {
    this.mem.bytes.set(encodeTxRequest(request), this.#slot(GPA.netTx, this.txProd, 12));
    this.txProd = (this.txProd + 1) >>> 0;
  }

  postRx(id: number, pageGpa: number): void {
    const bytes = encodeRxRequest({ id, gref: gref(pageGpa) });
    this.mem.bytes.set(bytes, this.#slot(GPA.netRx, this.rxProd, 8));
    this.rxProd = (this.rxProd + 1) >>> 0;
  }

  postRxRaw(id: number, grefValue: number): void {
    const bytes = encodeRxRequest({ id, gref: grefValue });
    this.mem.bytes.set(bytes, this.#slot(GPA.netRx, this.rxProd, 8));
    this.rxProd = (this.rxProd + 1) >>> 0;
  }

  publish(): void {
    this.mem.view.setUint32(GPA.netTx + RING.reqProd, this.txProd, true);
    this.mem.view.setUint32(GPA.netRx + RING.reqProd, this.rxProd, true);
  }

  txResponses(): NetifTxResponse[] {
    const prod = this.mem.view.getUint32(GPA.netTx + RING.rspProd, true);
    const out: NetifTxResponse[] = [];
    while (this.txRspCons !== prod) {
      const at = this.#slot(GPA.netTx, this.txRspCons, 12);
      out.push(decodeTxResponse(this.mem.bytes.slice(at, at + 4)));
      this.txRspCons = (this.txRspCons + 1) >>> 0;
    }
    return out;
  }

  rxResponses(): NetifRxResponse[] {
    const prod = this.mem.view.getUint32(GPA.netRx + RING.rspProd, true);
    const out: NetifRxResponse[] = [];
    while (this.rxRspCons !== prod) {
      const at = this.#slot(GPA.netRx, this.rxRspCons, 8);
      out.push(decodeRxResponse(this.mem.bytes.slice(at, at + 8)));
      this.rxRspCons = (this.rxRspCons + 1) >>> 0;
    }
    return out;
  }
}

function setup(options: NetBackendOptions = {}, mem: GuestMemory = newMemory()) {
  const log = new LogCapture();
  const events = new EventPage(mem, () => {}, { logger: log.logger, maxPerWindow: 100 });
  const tap = new FakeTap();
  const net = new NetBackend(mem, events, tap, GUEST_MAC, options);
  return { mem, events, tap, net, guest: new NetFront(mem), log };
}

// ---- layouts -------------------------------------------------------------

const NETIF_C = `
typedef uint32_t grant_ref_t;
struct netif_tx_request { grant_ref_t gref; uint16_t offset; uint16_t flags; uint16_t id; uint16_t size; };
struct netif_tx_response { uint16_t id; int16_t status; };
struct netif_rx_request { uint16_t id; uint16_t pad; grant_ref_t gref; };
struct netif_rx_response { uint16_t id; uint16_t offset; uint16_t flags; int16_t status; };
union netif_tx_entry { struct netif_tx_request req; struct netif_tx_response rsp; };
union netif_rx_entry { struct netif_rx_request req; struct netif_rx_response rsp; };
static unsigned long rounddown_pow2(unsigned long n) { unsigned long p = 1; while (p * 2 <= n) p *= 2; return p; }
`;

Deno.test("netif: struct sizes and offsets agree with C", async () => {
  const checks: ProbeCheck[] = [
    { name: "tx_request.size", expr: "sizeof(struct netif_tx_request)", expected: 12 },
    { name: "tx_response.size", expr: "sizeof(struct netif_tx_response)", expected: 4 },
    { name: "rx_request.size", expr: "sizeof(struct netif_rx_request)", expected: 8 },
    { name: "rx_response.size", expr: "sizeof(struct netif_rx_response)", expected: 8 },
    {
      name: "tx_slots",
      expr: "rounddown_pow2((4096 - 64) / sizeof(union netif_tx_entry))",
      expected: NETIF_RING_SLOTS,
    },
    {
      name: "rx_slots",
      expr: "rounddown_pow2((4096 - 64) / sizeof(union netif_rx_entry))",
      expected: NETIF_RING_SLOTS,
    },
  ];
  const structs = {
    txRequest: "netif_tx_request",
    txResponse: "netif_tx_response",
    rxRequest: "netif_rx_request",
    rxResponse: "netif_rx_response",
  } as const;
  for (const [key, struct] of Object.entries(structs)) {
    for (const [field, offset] of Object.entries(NETIF[key as keyof typeof structs])) {
      checks.push({
        name: `${struct}.${field}`,
        expr: `offsetof(struct ${struct}, ${field})`,
        expected: offset,
      });
    }
  }
  await checkAgainstC("netif layouts", ["<stdint.h>"], [], checks, NETIF_C);
  equal(NETIF_TX_REQUEST_SIZE, 12);
  equal(NETIF_TX_RESPONSE_SIZE, 4);
  equal(NETIF_RX_REQUEST_SIZE, 8);
  equal(NETIF_RX_RESPONSE_SIZE, 8);
  deepStrictEqual(NETTXF, { csumBlank: 1, dataValidated: 2, moreData: 4, extraInfo: 8 });
  deepStrictEqual(NETRXF, {
    dataValidated: 1,
    csumBlank: 2,
    moreData: 4,
    extraInfo: 8,
    gsoPrefix: 16,
  });
  deepStrictEqual(NETIF_RSP, { dropped: -2, error: -1, okay: 0, null: 1 });
});

Deno.test("netif: codecs are little-endian at the documented offsets", () => {
  const tx = encodeTxRequest({ gref: 0x12345678, offset: 0x0abc, flags: 2, id: 0xbeef, size: 60 });
  deepStrictEqual([...tx], [0x78, 0x56, 0x34, 0x12, 0xbc, 0x0a, 2, 0, 0xef, 0xbe, 60, 0]);
  deepStrictEqual(decodeTxRequest(tx), {
    gref: 0x12345678,
    offset: 0xabc,
    flags: 2,
    id: 0xbeef,
    size: 60,
  });
  const txr = encodeTxResponse({ id: 7, status: NETIF_RSP.error });
  deepStrictEqual([...txr], [7, 0, 0xff, 0xff]);
  deepStrictEqual(decodeTxResponse(txr), { id: 7, status: -1 });
  const rx = encodeRxRequest({ id: 0x0102, gref: 0x180 });
  deepStrictEqual([...rx], [2, 1, 0, 0, 0x80, 1, 0, 0]);
  deepStrictEqual(decodeRxRequest(rx.with(2, 0xaa)), { id: 0x0102, gref: 0x180 }, "pad ignored");
  const rxr = encodeRxResponse({ id: 3, offset: 0, flags: 1, status: 1514 });
  deepStrictEqual([...rxr], [3, 0, 0, 0, 1, 0, 0xea, 0x05]);
  deepStrictEqual(decodeRxResponse(rxr), { id: 3, offset: 0, flags: 1, status: 1514 });
  throws(() => decodeTxRequest(new Uint8Array(11)), RangeError);
});

// ---- tx --------------------------------------------------------------------

Deno.test("net tx: unprotected frames go out at once, in order, after the responses", () => {
  const { net, guest, tap, events } = setup();
  equal(net.tx.nrEnts, 256);
  equal(net.rx.nrEnts, 256);
  const frames = [frame(60, 1), frame(1514, 2), frame(14, 3)];
  guest.send(1, page(0), frames[0]);
  guest.send(2, page(1) + 100, frames[1]);
  guest.send(3, page(0) + 4096 - 14, frames[2], NETTXF.dataValidated);
  guest.publish();
  equal(net.service(), true);
  deepStrictEqual(guest.txResponses(), [1, 2, 3].map((id) => ({ id, status: 0 })));
  deepStrictEqual(tap.sent, frames);
  equal(events.seq, 1, "one notify per service");
  equal(events.badRequests, 0);
  const c = net.counters;
  deepStrictEqual([c.txFrames, c.txBytes, c.txHeld, c.badRequests], [3, 60 + 1514 + 14, 0, 0]);
  deepStrictEqual(net.tx.indexes(), { reqCons: 3, rspProdPvt: 3, skipped: 0 });
  equal(net.service(), false, "nothing more");
});

Deno.test("net tx: a frame is copied out, so the guest may reuse its page at once", () => {
  const { net, guest, tap } = setup();
  const f = frame(100, 4);
  guest.send(1, page(2), f);
  guest.publish();
  net.setGate(new FakeGate({ epoch: 1 }));
  net.service();
  guest.mem.bytes.fill(0, page(2), page(3));
  equal(net.release(1), 1);
  deepStrictEqual(tap.sent, [f]);
});

Deno.test("net tx: dirty pages are the tx ring and the event page only", () => {
  const { net, guest, mem } = setup();
  harvest(mem);
  guest.send(1, page(0), frame(64, 5));
  guest.publish();
  net.service();
  deepStrictEqual(
    harvest(mem),
    [GPA.events, GPA.netTx].map((g) => g / PAGE_SIZE).sort((x, y) => x - y),
  );
});

Deno.test("net tx: protected frames are held until release(E) with E >= their epoch", () => {
  const { net, guest, tap, events } = setup();
  const gate = new FakeGate({ epoch: 5 });
  net.setGate(gate);
  equal(net.gate, gate);
  const frames = [frame(60, 10), frame(61, 11), frame(62, 12)];
  guest.send(1, page(0), frames[0]);
  guest.send(2, page(1), frames[1]);
  guest.publish();
  equal(net.service(), true);
  deepStrictEqual(guest.txResponses(), [{ id: 1, status: 0 }, { id: 2, status: 0 }]);
  equal(events.seq, 1, "answered at once");
  deepStrictEqual(tap.sent, [], "nothing leaves yet");
  deepStrictEqual(net.held, { bytes: 121, count: 2, oldestEpoch: 5 });
  deepStrictEqual(gate.held, [["net", 60], ["net", 61]]);
  deepStrictEqual(gate.asked, [["net", 0, 0], ["net", 60, 1]]);
  gate.epoch = 6;
  guest.send(3, page(2), frames[2]);
  guest.publish();
  net.service();
  deepStrictEqual(net.held, { bytes: 183, count: 3, oldestEpoch: 5 });
  equal(net.release(4), 0);
  deepStrictEqual(tap.sent, []);
  equal(net.release(5), 2);
  deepStrictEqual(tap.sent, frames.slice(0, 2));
  equal(net.release(5), 0, "nothing twice");
  equal(net.release(7), 1);
  deepStrictEqual(tap.sent, frames);
  deepStrictEqual(net.held, { bytes: 0, count: 0, oldestEpoch: null });
  const c = net.counters;
  deepStrictEqual([c.txHeld, c.txFrames], [3, 3]);
  throws(() => net.release(-1), RangeError);
  throws(() => net.release(1.5), RangeError);
});

Deno.test("net tx: a gate whose epoch goes back never lets a frame overtake", () => {
  const { net, guest, tap } = setup();
  const gate = new FakeGate({ epoch: 9 });
  net.setGate(gate);
  guest.send(1, page(0), frame(60, 20));
  guest.publish();
  net.service();
  gate.epoch = 3;
  guest.send(2, page(1), frame(60, 21));
  guest.publish();
  net.service();
  equal(net.release(3), 0, "the second is tagged 9, behind the first");
  equal(net.release(9), 2);
  deepStrictEqual(tap.sent.map((f) => f[14]), [frame(60, 20)[14], frame(60, 21)[14]]);
});

Deno.test("net tx: at the hold bound requests stay in the ring until a release", () => {
  const { net, guest, tap } = setup();
  const gate = new FakeGate({ epoch: 2, maxCount: 1 });
  net.setGate(gate);
  for (let i = 0; i < 3; i++) guest.send(i, page(i), frame(60, 30 + i));
  guest.publish();
  net.service();
  equal(net.stalled, "hold-limit");
  deepStrictEqual(guest.txResponses(), [{ id: 0, status: 0 }]);
  deepStrictEqual(net.tx.indexes(), { reqCons: 1, rspProdPvt: 1, skipped: 0 });
  equal(net.release(2), 1);
  net.service();
  deepStrictEqual(guest.txResponses(), [{ id: 1, status: 0 }]);
  equal(net.release(2), 1);
  net.service();
  equal(net.release(2), 1);
  deepStrictEqual(guest.txResponses(), [{ id: 2, status: 0 }]);
  deepStrictEqual(tap.sent, [0, 1, 2].map((i) => frame(60, 30 + i)));
  gate.maxCount = Number.POSITIVE_INFINITY;
  gate.maxBytes = 100;
  guest.send(9, page(0), frame(200, 39));
  guest.send(10, page(1), frame(60, 40));
  guest.publish();
  net.service();
  deepStrictEqual(net.held.count, 1, "the byte bound stops the second");
  equal(net.stalled, "hold-limit");
});

Deno.test("net tx: held frames block new output once unprotected, until releaseAll", () => {
  const { net, guest, tap } = setup();
  const gate = new FakeGate({ epoch: 1 });
  net.setGate(gate);
  guest.send(1, page(0), frame(60, 41));
  guest.publish();
  net.service();
  net.setGate(OPEN_GATE);
  guest.send(2, page(1), frame(60, 42));
  guest.publish();
  equal(net.service(), false);
  equal(net.stalled, "release-pending");
  deepStrictEqual(tap.sent, []);
  equal(net.releaseAll(), 1);
  net.service();
  deepStrictEqual(tap.sent, [frame(60, 41), frame(60, 42)]);
  equal(net.stalled, null);
});

Deno.test("net tx: every malformed request gets an error response and a bad-request count", () => {
  const { net, guest, tap, events, log } = setup({ mtu: 1500 });
  const good = frame(60, 50);
  guest.mem.bytes.set(good, page(0));
  const base = { gref: gref(page(0)), offset: 0, id: 0, size: 60, flags: 0 };
  const bad: NetifTxRequest[] = [
    { ...base, id: 1, flags: NETTXF.moreData },
    { ...base, id: 2, flags: NETTXF.extraInfo },
    { ...base, id: 3, flags: NETTXF.csumBlank },
    { ...base, id: 4, flags: 0x100 },
    { ...base, id: 5, gref: gref(GPA.guestFree) - 1 },
    { ...base, id: 6, gref: gref(GPA.netTx) },
    { ...base, id: 7, gref: RAM_BYTES / PAGE_SIZE },
    { ...base, id: 8, gref: 0xffffffff },
    { ...base, id: 9, offset: 4000, size: 97 },
    { ...base, id: 10, size: 13 },
    { ...base, id: 11, size: 0 },
    { ...base, id: 12, size: 1515 },
  ];
  for (const request of bad) guest.postTx(request);
  guest.postTx({ ...base, id: 99 });
  guest.publish();
  net.service();
  deepStrictEqual(guest.txResponses(), [
    ...bad.map((r) => ({ id: r.id, status: NETIF_RSP.error })),
    { id: 99, status: 0 },
  ]);
  deepStrictEqual(tap.sent, [good], "only the good frame leaves");
  equal(events.badRequests, bad.length);
  equal(net.counters.badRequests, bad.length);
  assert(log.lines.some((l) => l.includes("moreData")), log.lines.join("\n"));
  assert(log.lines.some((l) => l.includes("below free guest memory")));
  assert(log.lines.some((l) => l.includes("beyond RAM")));
  assert(log.lines.some((l) => l.includes("crosses the page end")));
  assert(log.lines.some((l) => l.includes("longer than MTU")));
  deepStrictEqual(
    harvest(guest.mem),
    [GPA.events, GPA.netTx].map((g) => g / PAGE_SIZE).sort((x, y) => x - y),
  );
});

Deno.test("net tx: a size of exactly mtu + 14 passes; a smaller MTU lowers the limit", () => {
  const { net, guest, tap } = setup({ mtu: 576 });
  equal(net.mtu, 576);
  guest.send(1, page(0), frame(590, 60));
  guest.send(2, page(1), frame(591, 61));
  guest.publish();
  net.service();
  deepStrictEqual(guest.txResponses().map((r) => r.status), [0, -1]);
  equal(tap.sent.length, 1);
  throws(() => setup({ mtu: 67 }), RangeError);
  throws(() => setup({ mtu: 4083 }), RangeError);
});

Deno.test("net tx: a ring overrun is counted, answered with nothing, and skipped", () => {
  const { net, guest, events } = setup();
  guest.txProd = 300;
  guest.publish();
  net.service();
  deepStrictEqual(guest.txResponses(), []);
  equal(events.badRequests, 1);
  deepStrictEqual([net.counters.overruns, net.counters.badRequests], [1, 1]);
  deepStrictEqual(net.tx.indexes(), { reqCons: 300, rspProdPvt: 0, skipped: 300 });
  guest.txRspCons = 0;
  guest.send(1, page(0), frame(60, 62));
  guest.publish();
  net.service();
  deepStrictEqual(guest.txResponses(), [{ id: 1, status: 0 }]);
});

Deno.test("net tx: a TAP write error loses the frame, counted; the guest was answered", () => {
  const { net, guest, tap } = setup();
  tap.failWrites = true;
  guest.send(1, page(0), frame(60, 63));
  guest.publish();
  net.service();
  deepStrictEqual(guest.txResponses(), [{ id: 1, status: 0 }]);
  equal(net.counters.txErrors, 1);
  equal(net.counters.txFrames, 0);
  assert(net.lastError.includes("EIO"));
});

Deno.test("net tx: the per-service budget bounds the work; u32 indexes wrap", () => {
  const { net, guest, tap, mem, events } = setup({ maxRequestsPerService: 5 });
  const start = 0xffff_fffe;
  guest.resetAt(start);
  net.restore({
    ...net.save(),
    tx: { reqCons: start, rspProdPvt: start, skipped: 0 },
    rx: { reqCons: start, rspProdPvt: start, skipped: 0 },
  });
  for (let i = 0; i < 12; i++) guest.send(i, page(i), frame(60, 70 + i));
  guest.publish();
  const counts: number[] = [];
  while (net.service()) {
    counts.push(guest.txResponses().length);
    if (!net.needsService) break;
  }
  while (net.needsService) {
    net.service();
    counts.push(guest.txResponses().length);
  }
  deepStrictEqual(counts, [5, 5, 2]);
  equal(tap.sent.length, 12);
  deepStrictEqual(net.tx.indexes(), { reqCons: 10, rspProdPvt: 10, skipped: 0 });
  guest.postRx(1, page(20));
  guest.publish();
  equal(net.receive(frame(60, 99)), "delivered");
  deepStrictEqual(guest.rxResponses(), [{ id: 1, offset: 0, flags: 0, status: 60 }]);
  deepStrictEqual(net.rx.indexes(), { reqCons: start + 1, rspProdPvt: start + 1, skipped: 0 });
  equal(mem.bytes[page(20) + 20], frame(60, 99)[20]);
  assert(events.seq > 0);
});

// ---- rx --------------------------------------------------------------------

Deno.test("net rx: frames fill posted buffers from offset 0 and dirty those pages", () => {
  const { net, guest, mem, events } = setup();
  guest.postRx(7, page(10));
  guest.postRx(8, page(11));
  guest.publish();
  mem.bytes.fill(0xee, page(10), page(12));
  harvest(mem);
  const a = frame(1514, 80);
  const b = frame(42, 81, "ff:ff:ff:ff:ff:ff");
  equal(net.receive(a), "delivered");
  equal(events.seq, 1, "the guest is told");
  equal(net.receive(b), "delivered");
  deepStrictEqual(guest.rxResponses(), [
    { id: 7, offset: 0, flags: 0, status: 1514 },
    { id: 8, offset: 0, flags: 0, status: 42 },
  ]);
  deepStrictEqual(mem.bytes.slice(page(10), page(10) + 1514), a);
  deepStrictEqual(mem.bytes.slice(page(11), page(11) + 42), b);
  equal(mem.bytes[page(11) + 42], 0xee, "nothing past the frame");
  deepStrictEqual(
    harvest(mem),
    [GPA.events, GPA.netRx, page(10), page(11)].map((g) => g / PAGE_SIZE).sort((x, y) => x - y),
  );
  const c = net.counters;
  deepStrictEqual([c.rxFrames, c.rxBytes, c.rxNoBuffer], [2, 1556, 0]);
});

Deno.test("net rx: with no buffer posted the frame is dropped and counted", () => {
  const { net, guest, mem, events } = setup();
  harvest(mem);
  equal(net.receive(frame(60, 82)), "dropped");
  equal(net.counters.rxNoBuffer, 1);
  equal(events.seq, 0, "nothing to tell");
  deepStrictEqual(guest.rxResponses(), []);
  equal(mem.view.getUint32(GPA.netRx + RING.reqEvent, true), 1, "asks to be told of buffers");
  guest.postRx(1, page(0));
  guest.publish();
  equal(net.receive(frame(60, 83)), "delivered");
});

Deno.test("net rx: only frames for the guest's MAC, broadcast or multicast pass", () => {
  const { net, guest } = setup();
  for (let i = 0; i < 4; i++) guest.postRx(i, page(i));
  guest.publish();
  equal(net.receive(frame(60, 84, OTHER_MAC, GUEST_MAC)), "dropped");
  equal(net.receive(frame(60, 85, "01:00:5e:00:00:01")), "delivered");
  equal(net.receive(frame(60, 86, "ff:ff:ff:ff:ff:ff")), "delivered");
  equal(net.receive(frame(60, 87)), "delivered");
  equal(net.receive(frame(13, 88)), "dropped");
  equal(net.receive(frame(1515, 89)), "dropped");
  const c = net.counters;
  deepStrictEqual([c.rxFiltered, c.rxMalformed, c.rxFrames], [1, 2, 3]);
  const promiscuous = setup({ promiscuous: true });
  promiscuous.guest.postRx(1, page(0));
  promiscuous.guest.publish();
  equal(promiscuous.net.receive(frame(60, 90, OTHER_MAC)), "delivered");
});

Deno.test("net rx: an inactive backend drops every frame until activated", () => {
  const { net, guest, mem } = setup({ active: false });
  equal(net.active, false);
  guest.postRx(1, page(0));
  guest.publish();
  harvest(mem);
  equal(net.receive(frame(60, 91)), "dropped");
  equal(net.counters.rxInactive, 1);
  deepStrictEqual(harvest(mem), [], "guest memory untouched");
  net.setActive(true);
  equal(net.receive(frame(60, 92)), "delivered");
  deepStrictEqual(guest.rxResponses().map((r) => r.status), [60]);
});

Deno.test("net rx: frozen, frames are queued (bounded, oldest dropped) and memory stays still", () => {
  const { net, guest, mem, events } = setup({ rxQueueFrames: 2 });
  for (let i = 0; i < 3; i++) guest.postRx(i, page(i));
  guest.publish();
  harvest(mem);
  net.freeze();
  equal(net.frozen, true);
  equal(net.receive(frame(60, 93)), "queued");
  equal(net.receive(frame(61, 94)), "queued");
  equal(net.receive(frame(62, 95)), "queued");
  equal(net.queued, 2);
  equal(net.counters.rxQueueDropped, 1);
  deepStrictEqual(harvest(mem), [], "no guest page written while frozen");
  equal(net.service(), false, "service() delivers nothing while frozen");
  deepStrictEqual(harvest(mem), [GPA.netTx / PAGE_SIZE], "only tx ring bookkeeping");
  equal(events.seq, 0);
  equal(net.thaw(), 2);
  equal(net.frozen, false);
  deepStrictEqual(guest.rxResponses().map((r) => [r.id, r.status]), [[0, 61], [1, 62]]);
  equal(events.seq, 1, "one notify for the batch");
  deepStrictEqual(mem.bytes.slice(page(0), page(0) + 61), frame(61, 94));
  net.freeze();
  net.receive(frame(60, 96));
  net.setActive(false);
  equal(net.queued, 0, "deactivating drops the queue");
  net.setActive(true);
  equal(net.thaw(), 0);
});

Deno.test("net rx: malformed rx buffers are answered with errors; the frame takes the next", () => {
  const { net, guest, events, mem } = setup();
  guest.postRxRaw(1, gref(GPA.guestFree) - 1);
  guest.postRxRaw(2, RAM_BYTES / PAGE_SIZE);
  guest.postRx(3, page(5));
  guest.publish();
  const f = frame(100, 97);
  equal(net.receive(f), "delivered");
  deepStrictEqual(guest.rxResponses(), [
    { id: 1, offset: 0, flags: 0, status: NETIF_RSP.error },
    { id: 2, offset: 0, flags: 0, status: NETIF_RSP.error },
    { id: 3, offset: 0, flags: 0, status: 100 },
  ]);
  equal(events.badRequests, 2);
  equal(net.counters.badRequests, 2);
  deepStrictEqual(mem.bytes.slice(page(5), page(5) + 100), f);
  // Only bad buffers: answered with errors, the frame is dropped.
  guest.postRxRaw(4, 0);
  guest.publish();
  equal(net.receive(f), "dropped");
  deepStrictEqual(guest.rxResponses(), [{ id: 4, offset: 0, flags: 0, status: -1 }]);
  equal(net.counters.rxNoBuffer, 1);
  // An rx ring overrun is counted and skipped.
  guest.rxProd = (guest.rxProd + 300) >>> 0;
  guest.publish();
  equal(net.receive(f), "dropped");
  equal(net.counters.overruns, 1);
  equal(events.badRequests, 4);
});

Deno.test("net rx: the pump delivers TAP frames until closed; a read error stops it", async () => {
  const { net, guest, tap } = setup();
  for (let i = 0; i < 2; i++) guest.postRx(i, page(i));
  guest.publish();
  const pump = net.start();
  equal(net.start(), pump, "one pump");
  equal(net.pumping, true);
  tap.inject(frame(60, 100));
  tap.inject(frame(70, 101));
  for (let i = 0; i < 10 && net.counters.rxFrames < 2; i++) await Promise.resolve();
  deepStrictEqual(guest.rxResponses().map((r) => r.status), [60, 70]);
  await net.close();
  await pump;
  equal(net.pumping, false);
  equal(tap.closed, true);

  const failing = setup();
  failing.tap.failRead(new Error("read from TAP fake failed: EBADFD"));
  await failing.net.start();
  equal(failing.net.counters.rxErrors, 1);
  assert(failing.net.lastError.includes("EBADFD"));
  await failing.net.close();
});

// ---- announce ----------------------------------------------------------------

Deno.test("net announce: gratuitous ARP request and reply with an IP, RARP without", () => {
  const { net, tap } = setup({ ip: "10.80.5.20" });
  equal(net.ip, "10.80.5.20");
  equal(net.announce(), 2);
  const [request, reply] = tap.sent;
  const mac = parseMac(GUEST_MAC);
  const ip = parseIpv4("10.80.5.20")!;
  for (const f of [request, reply]) {
    equal(f.length, 60);
    deepStrictEqual(f.subarray(0, 6), new Uint8Array(6).fill(0xff), "broadcast");
    deepStrictEqual(f.subarray(6, 12), mac, "from the guest's MAC");
    deepStrictEqual([...f.subarray(12, 22)], [8, 6, 0, 1, 8, 0, 6, 4, 0, f[21]]);
    deepStrictEqual(f.subarray(22, 28), mac);
    deepStrictEqual(f.subarray(28, 32), ip);
    deepStrictEqual(f.subarray(38, 42), ip);
  }
  equal(request[21], 1);
  deepStrictEqual(request.subarray(32, 38), new Uint8Array(6));
  equal(reply[21], 2);
  equal(net.counters.announcements, 1);

  net.setIp(null);
  equal(net.announce(), 1);
  const rarp = tap.sent[2];
  deepStrictEqual([...rarp.subarray(12, 14)], [0x80, 0x35]);
  equal(rarp[21], 3);
  deepStrictEqual(rarp.subarray(32, 38), mac);
  throws(() => net.setIp("10.0.0.256"), RangeError);
  throws(() => net.setIp("010.0.0.1"), RangeError);
  throws(() => setup({ ip: "fe80::1" }), RangeError);
});

Deno.test("net: MACs are validated", () => {
  equal(setup().net.mac, GUEST_MAC);
  const mem = newMemory();
  const events = new EventPage(mem, () => {});
  for (const bad of ["01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00", "xx"]) {
    throws(() => new NetBackend(mem, events, new FakeTap(), bad), RangeError, bad);
  }
  equal(
    new NetBackend(mem, events, new FakeTap(), parseMac("02-AB-00-00-00-01")).mac,
    "02:ab:00:00:00:01",
  );
});

// ---- state -----------------------------------------------------------------

Deno.test("net state: save -> restore -> reissueHeld sends the same frames in order", () => {
  const a = setup({ ip: "10.80.1.9" });
  const gate = new FakeGate({ epoch: 3 });
  a.net.setGate(gate);
  const frames = [frame(60, 110), frame(1514, 111), frame(99, 112)];
  a.guest.send(1, page(0), frames[0]);
  a.guest.send(2, page(1), frames[1]);
  a.guest.publish();
  a.net.service();
  gate.epoch = 4;
  a.guest.send(3, page(2), frames[2]);
  a.guest.publish();
  a.net.service();
  a.guest.postRx(1, page(3));
  a.guest.publish();
  a.net.receive(frame(60, 113));
  const state = roundTrip(a.net.save());
  equal(state.version, 1);
  deepStrictEqual(state.held, [
    { epoch: 3, frame: encodeBase64(frames[0]) },
    { epoch: 3, frame: encodeBase64(frames[1]) },
    { epoch: 4, frame: encodeBase64(frames[2]) },
  ]);

  const b = setup({ active: false }, copyMemory(a.mem));
  b.net.restore(state);
  deepStrictEqual(b.net.save(), a.net.save());
  equal(b.net.ip, "10.80.1.9");
  deepStrictEqual(b.net.held, a.net.held);
  deepStrictEqual(b.net.tx.indexes(), a.net.tx.indexes());
  deepStrictEqual(b.net.rx.indexes(), a.net.rx.indexes());
  b.net.setActive(true);
  equal(b.net.reissueHeld(), 3);
  deepStrictEqual(b.tap.sent, frames);
  deepStrictEqual(b.net.held, { bytes: 0, count: 0, oldestEpoch: null });
  // The restored backend goes on where the saved one was.
  b.guest.txProd = b.guest.txRspCons = 3;
  b.guest.send(4, page(4), frame(60, 114));
  b.guest.publish();
  b.net.service();
  deepStrictEqual(b.guest.txResponses(), [{ id: 4, status: 0 }]);
  equal(b.tap.sent.length, 4);
});

Deno.test("net state: corrupt or foreign states are refused and change nothing", () => {
  const { net, guest } = setup({ ip: "10.1.2.3" });
  net.setGate(new FakeGate({ epoch: 2 }));
  guest.send(1, page(0), frame(60, 120));
  guest.publish();
  net.service();
  // deno-lint-ignore no-explicit-any
  const good: any = roundTrip(net.save());
  const before = JSON.stringify(net.save());
  const f60 = encodeBase64(frame(60, 121));
  const bad: [string, unknown][] = [
    ["null", null],
    ["array", []],
    ["version", { ...good, version: 2 }],
    ["mac", { ...good, mac: OTHER_MAC }],
    ["mac type", { ...good, mac: 5 }],
    ["mtu", { ...good, mtu: 9000 }],
    ["ip", { ...good, ip: "300.1.1.1" }],
    ["ip type", { ...good, ip: 7 }],
    ["tx missing", { ...good, tx: undefined }],
    ["tx reqCons", { ...good, tx: { ...good.tx, reqCons: -1 } }],
    ["tx owed", { ...good, tx: { ...good.tx, reqCons: 2 } }],
    ["rx owed", { ...good, rx: { reqCons: 5, rspProdPvt: 0, skipped: 0 } }],
    ["rx ahead", { ...good, rx: { reqCons: 0, rspProdPvt: 5, skipped: 0 } }],
    ["counter", { ...good, counters: { ...good.counters, txFrames: -1 } }],
    ["counter missing", { ...good, counters: { ...good.counters, rxFrames: undefined } }],
    ["held type", { ...good, held: {} }],
    ["held base64", { ...good, held: [{ epoch: 1, frame: "!!!" }] }],
    ["held short", { ...good, held: [{ epoch: 1, frame: encodeBase64(new Uint8Array(13)) }] }],
    ["held long", { ...good, held: [{ epoch: 1, frame: encodeBase64(new Uint8Array(1515)) }] }],
    ["held epoch", { ...good, held: [{ epoch: 3, frame: f60 }, { epoch: 2, frame: f60 }] }],
    ["held epoch type", { ...good, held: [{ epoch: "3", frame: f60 }] }],
    [
      "held count",
      {
        ...good,
        held: Array.from({ length: NET_HELD_CAP.count + 1 }, () => ({ epoch: 1, frame: f60 })),
      },
    ],
  ];
  for (const [what, state] of bad) {
    throws(() => net.restore(roundTrip(state)), DeviceStateError, what);
    equal(JSON.stringify(net.save()), before, `${what}: nothing adopted`);
  }
  notDeepStrictEqual(good.held, []);
  net.restore(good);
  equal(JSON.stringify(net.save()), before);
});
