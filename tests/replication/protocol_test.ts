/**
 * The replication wire protocol: every message round-trips, every validation
 * rule refuses a crafted bad message with one line, the hot-path encoders
 * produce what the decoder expects, the handshake decides by the rules, and
 * thousands of random mutations yield nothing but ProtocolError.
 */

import assert from "node:assert/strict";
import { Rng } from "../support/rng.ts";
import { crc32 } from "node:zlib";
import {
  CHUNK_BYTES,
  decideHandshake,
  decodeMessage,
  encodeCheckpoint,
  encodeMessage,
  encodePages,
  frameBytes,
  gatherPages,
  HEADER_BYTES,
  type Hello,
  MAX_PAGES_PER_MESSAGE,
  type Message,
  MsgType,
  ProtocolError,
  type ProtocolErrorCode,
  readHeader,
} from "../../replication/protocol.ts";

const PAGE = 4096;
const RAM_PAGES = 64;

function hello(over: Partial<Hello> = {}): Hello {
  return {
    protocol: 1,
    role: "standby",
    channel: "replication",
    vm: { name: "web1", bootId: "1234567890123456789" },
    memoryBytes: 256 * 1024 * 1024,
    cpuFeatures: "9f3a00c1",
    generation: 3n,
    disk: { mode: "replicated", sectors: 32768n },
    committed: { epoch: 812n },
    ...over,
  };
}

function pageData(pages: number[], seed: number): Uint8Array {
  const d = new Uint8Array(pages.length * PAGE);
  new Rng(seed).fill(d);
  return d;
}

/** One valid message of every type. */
function samples(): Message[] {
  return [
    { type: "HELLO", hello: hello() },
    { type: "WELCOME", hello: hello({ role: "primary", committed: null }) },
    { type: "REFUSE", reason: "protocol version 2 (this kemari speaks 1)" },
    { type: "PRECOPY", pages: Uint32Array.of(0, 5, 6, 63), data: pageData([0, 5, 6, 63], 1) },
    { type: "CKPT_BEGIN", epoch: 7n, totalPages: 3, stateLength: 40, diskDeltaLength: 512 },
    {
      type: "CKPT_PAGES",
      epoch: 7n,
      pages: Uint32Array.of(1, 2, 40),
      data: pageData([1, 2, 40], 2),
    },
    {
      type: "CKPT_STATE",
      epoch: 7n,
      state: { kind: "kemari-vm", bootId: 42n, blob: new Uint8Array([1, 2, 3]) },
      diskDelta: new Uint8Array(512).fill(9),
    },
    { type: "CKPT_END", epoch: 7n, crc: 0xdeadbeef, pageCount: 3, byteCount: 12345 },
    { type: "ACK", epoch: 7n },
    {
      type: "HEARTBEAT",
      seq: 9n,
      generation: 3n,
      timeNs: 1_700_000_000_000_000_000n,
      committedEpoch: 6n,
    },
    { type: "SWITCHOVER", phase: "request", generation: 4n, finalEpoch: 0n },
    { type: "SWITCHOVER", phase: "offer", generation: 4n, finalEpoch: 99n },
    { type: "SWITCHOVER", phase: "decline", generation: 4n, finalEpoch: 0n },
    { type: "BYE", reason: "" },
    { type: "BYE", reason: "operator stop" },
    { type: "DISK", offset: 1024 * 1024, data: new Uint8Array(1024).fill(7) },
  ];
}

function decode(bytes: Uint8Array) {
  return decodeMessage(bytes, { ramPages: RAM_PAGES });
}

/** Strips the payload view so a decoded message compares with its source. */
function fields(m: ReturnType<typeof decodeMessage>): Message {
  const { payload: _payload, ...rest } = m;
  return rest as Message;
}

function refuses(
  bytes: Uint8Array,
  code: ProtocolErrorCode,
  text?: string | RegExp,
  ramPages = RAM_PAGES,
) {
  assert.throws(
    () => decodeMessage(bytes, { ramPages }),
    (e: unknown) => {
      assert.ok(e instanceof ProtocolError, `not a ProtocolError: ${e}`);
      assert.equal(e.code, code, e.message);
      assert.ok(!e.message.includes("\n"));
      if (typeof text === "string") assert.equal(e.message, text);
      else if (text) assert.match(e.message, text);
      return true;
    },
  );
}

function sample(type: Message["type"]): Uint8Array {
  return encodeMessage(samples().find((m) => m.type === type)!);
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** `bytes` with its header's payload length set to what follows the header. */
function fixLength(bytes: Uint8Array): Uint8Array {
  dv(bytes).setUint32(20, bytes.length - HEADER_BYTES, true);
  return bytes;
}

Deno.test("every message type round-trips", () => {
  const seen = new Set<string>();
  for (const m of samples()) {
    const bytes = encodeMessage(m);
    const h = readHeader(bytes);
    assert.equal(h.version, 1);
    assert.equal(h.type, MsgType[m.type]);
    assert.equal(h.length, bytes.length - HEADER_BYTES);
    const d = decode(bytes);
    assert.deepEqual(fields(d), m);
    assert.equal(d.payload.length, bytes.length - HEADER_BYTES);
    seen.add(m.type);
  }
  assert.deepEqual([...seen].sort(), Object.keys(MsgType).sort());
});

Deno.test("header layout is the documented one", () => {
  const b = encodeMessage({ type: "ACK", epoch: 0x0102030405060708n });
  assert.deepEqual(
    [...b.subarray(0, 24)],
    [0x4b, 0x4d, 0x52, 0x50, 1, 0, 9, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 8, 0, 0, 0],
  );
  assert.equal(new TextDecoder().decode(b.subarray(0, 4)), "KMRP");
});

Deno.test("header: bad magic, other version, unknown type, flags, epoch", () => {
  const bad = sample("ACK");
  bad[0] ^= 0xff;
  refuses(bad, "magic", /^bad magic 0x/);
  const v2 = sample("HELLO");
  dv(v2).setUint16(4, 2, true);
  refuses(v2, "version", "protocol version 2 (this kemari speaks 1)");
  assert.equal(readHeader(v2).version, 2, "the header is still readable to answer REFUSE");
  const unknown = sample("ACK");
  dv(unknown).setUint16(6, 14, true);
  refuses(unknown, "type", "unknown message type 14");
  dv(unknown).setUint16(6, 0, true);
  refuses(unknown, "type", "unknown message type 0");
  const flags = sample("BYE");
  dv(flags).setUint32(8, 1, true);
  refuses(flags, "flags", /BYE with flags 0x1/);
  const helloEpoch = sample("HELLO");
  dv(helloEpoch).setBigUint64(12, 5n, true);
  refuses(helloEpoch, "epoch", "HELLO with header epoch 5");
  const zeroEpoch = sample("CKPT_BEGIN");
  dv(zeroEpoch).setBigUint64(12, 0n, true);
  refuses(zeroEpoch, "epoch", "CKPT_BEGIN with header epoch 0");
});

Deno.test("length: truncated, extended, declared length mismatch, limit", () => {
  refuses(new Uint8Array(0), "length", "message of 0 bytes is shorter than a header");
  refuses(sample("ACK").subarray(0, 23), "length");
  refuses(
    sample("CKPT_PAGES").subarray(0, 100),
    "length",
    /declares \d+ payload bytes, message has 76/,
  );
  const longer = new Uint8Array(sample("ACK").length + 1);
  longer.set(sample("ACK"));
  refuses(longer, "length", "ACK declares 8 payload bytes, message has 9");
  const wrongDecl = sample("HEARTBEAT");
  dv(wrongDecl).setUint32(20, 31, true);
  refuses(wrongDecl, "length");
  const huge = sample("CKPT_STATE");
  dv(huge).setUint32(20, 0xffffffff, true);
  refuses(huge, "limit");
  // Payload sizes that do not match the type (header length consistent).
  refuses(fixLength(sample("ACK").slice(0, 30)), "length", "ACK payload of 6 bytes, expected 8");
  refuses(fixLength(sample("CKPT_BEGIN").slice(0, 40)), "length");
  refuses(fixLength(sample("CKPT_END").slice(0, 47)), "length");
  refuses(fixLength(sample("HEARTBEAT").slice(0, 50)), "length");
  refuses(fixLength(sample("SWITCHOVER").slice(0, 40)), "length");
});

Deno.test("page batches: range, order, counts, sizes", () => {
  const big = encodeMessage({
    type: "CKPT_PAGES",
    epoch: 7n,
    pages: Uint32Array.of(999999),
    data: new Uint8Array(PAGE),
  });
  refuses(big, "range", "page 999999 out of range (RAM has 65536 pages)", 65536);
  assert.throws(
    () => decodeMessage(big),
    /^ProtocolError: CKPT_PAGES before the RAM size is known$/,
  );
  const unsorted = sample("PRECOPY");
  dv(unsorted).setUint32(HEADER_BYTES + 4, 7, true); // pages 7, 5, 6, 63
  refuses(unsorted, "order", "PRECOPY page 5 after page 7 (must increase)");
  const dup = sample("CKPT_PAGES");
  dv(dup).setUint32(HEADER_BYTES + 8, 1, true); // pages 1, 1, 40
  refuses(dup, "order");
  const zero = fixLength(sample("PRECOPY").slice(0, HEADER_BYTES + 4));
  dv(zero).setUint32(HEADER_BYTES, 0, true);
  refuses(zero, "payload", "PRECOPY with 0 pages");
  const many = sample("PRECOPY");
  dv(many).setUint32(HEADER_BYTES, MAX_PAGES_PER_MESSAGE + 1, true);
  refuses(many, "limit", "PRECOPY with 257 pages (limit 256)");
  const count = sample("PRECOPY");
  dv(count).setUint32(HEADER_BYTES, 3, true);
  refuses(count, "length", /PRECOPY payload of 16404 bytes for 3 pages/);
  refuses(fixLength(sample("PRECOPY").slice(0, HEADER_BYTES + 2)), "length");
});

Deno.test("checkpoint payloads: epochs, lengths, JSON", () => {
  const begin = sample("CKPT_BEGIN");
  dv(begin).setBigUint64(HEADER_BYTES, 8n, true);
  refuses(begin, "epoch", "CKPT_BEGIN payload epoch 8 differs from header epoch 7");
  const tooMany = sample("CKPT_BEGIN");
  dv(tooMany).setUint32(HEADER_BYTES + 8, RAM_PAGES + 1, true);
  refuses(tooMany, "range", /with 65 pages \(RAM has 64 pages\)/);
  const bigState = sample("CKPT_BEGIN");
  dv(bigState).setUint32(HEADER_BYTES + 12, 0x7fffffff, true);
  refuses(bigState, "limit");
  const bigDelta = sample("CKPT_BEGIN");
  dv(bigDelta).setUint32(HEADER_BYTES + 16, 0x7fffffff, true);
  refuses(bigDelta, "limit");
  const end = sample("CKPT_END");
  dv(end).setBigUint64(HEADER_BYTES, 6n, true);
  refuses(end, "epoch");
  const endBytes = sample("CKPT_END");
  dv(endBytes).setBigUint64(HEADER_BYTES + 16, 1n << 60n, true);
  refuses(endBytes, "range");
  const ack = sample("ACK");
  dv(ack).setBigUint64(HEADER_BYTES, 1n, true);
  refuses(ack, "epoch", "ACK payload epoch 1 differs from header epoch 7");

  const state = (json: string, delta = 0) => {
    const j = new TextEncoder().encode(json);
    const b = new Uint8Array(HEADER_BYTES + 8 + j.length + delta);
    b.set(sample("CKPT_STATE").subarray(0, HEADER_BYTES));
    dv(b).setUint32(HEADER_BYTES, j.length, true);
    dv(b).setUint32(HEADER_BYTES + 4, delta, true);
    b.set(j, HEADER_BYTES + 8);
    return fixLength(b);
  };
  assert.deepEqual(fields(decode(state('{"a":1}', 3))), {
    type: "CKPT_STATE",
    epoch: 7n,
    state: { a: 1 },
    diskDelta: new Uint8Array(3),
  });
  refuses(state('{"a":1'), "json", "CKPT_STATE for epoch 7: state is not valid JSON");
  refuses(state("\x00\xff garbage"), "json");
  refuses(state('{"x":{"$big":"12a"}}'), "json");
  refuses(state("[1,2]"), "json", "CKPT_STATE for epoch 7: state is not a JSON object");
  refuses(state("null"), "json");
  const split = state('{"a":1}', 3);
  dv(split).setUint32(HEADER_BYTES + 4, 4, true);
  refuses(split, "length");
  refuses(fixLength(state("{}").slice(0, HEADER_BYTES + 5)), "length");
});

Deno.test("HELLO/WELCOME bodies are validated", () => {
  const body = (json: unknown, type: "HELLO" | "WELCOME" = "HELLO") => {
    const j = new TextEncoder().encode(typeof json === "string" ? json : JSON.stringify(json));
    const b = new Uint8Array(HEADER_BYTES + j.length);
    b.set(sample(type).subarray(0, HEADER_BYTES));
    b.set(j, HEADER_BYTES);
    return fixLength(b);
  };
  const good = JSON.parse(new TextDecoder().decode(sample("HELLO").subarray(HEADER_BYTES)));
  assert.equal(good.generation, "3");
  assert.equal(good.vm.bootId, "1234567890123456789");
  assert.deepEqual(fields(decode(body(good))), { type: "HELLO", hello: hello() });
  refuses(body("{not json"), "json", "HELLO body is not valid JSON");
  refuses(body("[]"), "payload", "HELLO: body is not a JSON object");
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ extra: 1 }, /unknown field "extra"/],
    [{ protocol: "1" }, /protocol/],
    [{ role: "boss" }, /role/],
    [{ channel: "video" }, /channel/],
    [{ vm: { name: "a b", bootId: "1" } }, /vm name/],
    [{ vm: { name: "web1", bootId: "-1" } }, /bootId/],
    [{ vm: { name: "web1", bootId: "18446744073709551616" } }, /bootId/],
    [{ memoryBytes: 4097 }, /memoryBytes/],
    [{ memoryBytes: 1e20 }, /memoryBytes/],
    [{ cpuFeatures: "XYZ" }, /cpuFeatures/],
    [{ generation: 3 }, /generation/],
    [{ generation: "007" }, /generation/],
    [{ disk: { mode: "floppy", sectors: "1" } }, /disk mode/],
    [{ disk: { mode: "none", sectors: "5" } }, /sectors/],
    [{ committed: { epoch: "0" } }, /committed/],
    [{ committed: { epoch: "3" }, vm: { name: "web1", bootId: "" } }, /bootId/],
    [{ role: "primary" }, /only a standby/],
    [
      { role: "primary", committed: null, vm: { name: "web1", bootId: "" } },
      /primary needs a bootId/,
    ],
  ];
  for (const [change, why] of cases) refuses(body({ ...good, ...change }), "payload", why);
  refuses(body(" ".repeat(70000) + "{}"), "limit");
});

Deno.test("REFUSE, BYE, HEARTBEAT and SWITCHOVER payloads are validated", () => {
  const reason = (type: "REFUSE" | "BYE", bytes: Uint8Array) => {
    const b = new Uint8Array(HEADER_BYTES + bytes.length);
    b.set(sample(type).subarray(0, HEADER_BYTES));
    b.set(bytes, HEADER_BYTES);
    return fixLength(b);
  };
  refuses(reason("REFUSE", new Uint8Array(0)), "payload", "REFUSE without a reason");
  refuses(reason("REFUSE", new Uint8Array([0xc3, 0x28])), "payload", "REFUSE reason is not UTF-8");
  refuses(reason("BYE", new TextEncoder().encode("a\nb")), "payload", /control characters/);
  refuses(reason("BYE", new Uint8Array(1025).fill(65)), "limit");
  // The encoder makes any reason fit.
  const r = decode(encodeMessage({ type: "REFUSE", reason: "x\n".repeat(2000) }));
  assert.equal(r.type === "REFUSE" && r.reason.length, 1024);
  const sw = sample("SWITCHOVER");
  dv(sw).setUint32(HEADER_BYTES, 4, true);
  refuses(sw, "payload", "SWITCHOVER phase 4 is unknown");
  dv(sw).setUint32(HEADER_BYTES, 1, true);
  dv(sw).setUint32(HEADER_BYTES + 4, 1, true);
  refuses(sw, "payload");
  const offer = encodeMessage({
    type: "SWITCHOVER",
    phase: "offer",
    generation: 2n,
    finalEpoch: 5n,
  });
  dv(offer).setBigUint64(HEADER_BYTES + 16, 0n, true);
  refuses(offer, "payload", /final epoch/);
  assert.throws(() => encodeMessage({ type: "ACK", epoch: 0n }), RangeError);
  assert.throws(() => encodeMessage({ type: "ACK", epoch: 1n << 64n }), RangeError);
});

Deno.test("encodePages sends views into guest memory, gatherPages copies", () => {
  const mem = testRam(RAM_PAGES, 11);
  const pages = [0, 1, 2, 9, 30, 31, 63];
  const frames = encodePages(pages, mem);
  assert.equal(frames.length, 1);
  assert.equal(frames[0].length, 1 + 4, "one view per run of consecutive pages");
  assert.equal(frames[0][1].buffer, mem.buffer, "page data is not copied");
  const d = decode(frameBytes(frames[0]));
  assert.equal(d.type, "PRECOPY");
  if (d.type !== "PRECOPY") return;
  assert.deepEqual([...d.pages], pages);
  pages.forEach((p, i) => {
    assert.deepEqual(
      d.data.subarray(i * PAGE, (i + 1) * PAGE),
      mem.subarray(p * PAGE, (p + 1) * PAGE),
    );
  });

  const chunks: Uint8Array[] = [];
  const all = Array.from({ length: RAM_PAGES }, (_, i) => i);
  const g = gatherPages(mem, all, chunks, { epoch: 3n });
  assert.equal(chunks.length, 1);
  assert.equal(chunks[0].length, CHUNK_BYTES);
  assert.equal(g[0].length, 1);
  assert.equal(g[0][0].buffer, chunks[0].buffer);
  const before = frameBytes(g[0]).slice();
  mem.fill(0xee); // the VM resumes and writes
  assert.deepEqual(frameBytes(g[0]), before, "gathered pages do not follow guest memory");
  const dd = decode(before);
  assert.ok(dd.type === "CKPT_PAGES" && dd.epoch === 3n && dd.pages.length === RAM_PAGES);
  // Reuse: a second gather writes into the same chunk buffers.
  const g2 = gatherPages(mem, [5], chunks, { epoch: 4n });
  assert.equal(g2[0][0].buffer, chunks[0].buffer);
  assert.equal(chunks.length, 1);
});

Deno.test("page encoders split at 256 pages and refuse bad page lists", () => {
  const ramPages = 1000;
  const mem = testRam(ramPages, 5);
  const pages = Array.from({ length: 600 }, (_, i) => i + (i > 300 ? 50 : 0));
  for (
    const frames of [
      encodePages(pages, mem, { epoch: 2n }),
      gatherPages(mem, pages, [], { epoch: 2n }),
    ]
  ) {
    assert.equal(frames.length, 3);
    const got: number[] = [];
    for (const f of frames) {
      const m = decodeMessage(frameBytes(f), { ramPages });
      assert.ok(m.type === "CKPT_PAGES");
      if (m.type !== "CKPT_PAGES") continue;
      assert.ok(m.pages.length <= MAX_PAGES_PER_MESSAGE);
      m.pages.forEach((p, i) => {
        assert.deepEqual(
          m.data.subarray(i * PAGE, (i + 1) * PAGE),
          mem.subarray(p * PAGE, (p + 1) * PAGE),
        );
      });
      got.push(...m.pages);
    }
    assert.deepEqual(got, pages);
  }
  assert.throws(() => encodePages([3, 2], mem), RangeError);
  assert.throws(() => gatherPages(mem, [ramPages]), RangeError);
  assert.deepEqual(encodePages([], mem), []);
});

Deno.test("encodeCheckpoint: BEGIN, PAGES, STATE, END with crc32 over the payloads", () => {
  const mem = testRam(RAM_PAGES, 3);
  const delta = new Uint8Array(1000).fill(7);
  const frames = encodeCheckpoint(
    1n,
    gatherPages(mem, [1, 4, 5], [], { epoch: 1n }),
    { kind: "test", big: 5n },
    delta,
  );
  const msgs = frames.map((f) => decode(frameBytes(f)));
  assert.deepEqual(msgs.map((m) => m.type), ["CKPT_BEGIN", "CKPT_PAGES", "CKPT_STATE", "CKPT_END"]);
  const [begin, , state, end] = msgs;
  assert.ok(
    begin.type === "CKPT_BEGIN" && begin.totalPages === 3 && begin.diskDeltaLength === 1000,
  );
  assert.ok(state.type === "CKPT_STATE");
  assert.deepEqual(state.type === "CKPT_STATE" && state.state, { kind: "test", big: 5n });
  assert.equal(frames[2][2], delta, "the disk delta is not copied");
  let crc = 0, bytes = 0;
  for (const m of msgs.slice(0, 3)) {
    crc = crc32(m.payload, crc);
    bytes += m.payload.length;
  }
  assert.ok(end.type === "CKPT_END");
  if (end.type !== "CKPT_END") return;
  assert.equal(end.crc, crc);
  assert.equal(end.byteCount, bytes);
  assert.equal(end.pageCount, 3);
  assert.throws(
    () => encodeCheckpoint(2n, gatherPages(mem, [1], [], { epoch: 1n }), {}),
    RangeError,
  );
  assert.throws(() => encodeCheckpoint(0n, [], {}), RangeError);
});

Deno.test("decideHandshake follows the rules", () => {
  const standby = hello();
  const primary = hello({
    role: "primary",
    committed: null,
    vm: { name: "web1", bootId: "1234567890123456789" },
  });
  assert.deepEqual(decideHandshake(standby, primary), { accept: true });
  assert.deepEqual(decideHandshake(primary, standby), { accept: true });
  const refuse = (l: Hello, r: Hello, why: RegExp) => {
    const d = decideHandshake(l, r);
    assert.ok("refuse" in d, JSON.stringify(d, (_k, v) => typeof v === "bigint" ? `${v}` : v));
    assert.match(d.refuse, why);
  };
  refuse(primary, { ...standby, protocol: 2 }, /protocol version 2 \(this kemari speaks 1\)/);
  refuse(primary, { ...standby, channel: "heartbeat" }, /channel/);
  refuse(primary, { ...standby, vm: { name: "db", bootId: "1" } }, /VM "db"/);
  refuse(primary, { ...standby, memoryBytes: 128 * 1024 * 1024 }, /RAM/);
  refuse(primary, { ...standby, cpuFeatures: "ff" }, /CPU features/);
  refuse(primary, { ...standby, disk: { mode: "shared", sectors: 32768n } }, /disk mode/);
  refuse(primary, { ...standby, disk: { mode: "replicated", sectors: 1n } }, /sectors/);
  refuse(standby, { ...standby }, /both sides are standby/);
  refuse(primary, { ...primary }, /both sides are primary/);
  refuse(primary, { ...standby, vm: { name: "web1", bootId: "77" } }, /committed state of boot 77/);
  // A fresh standby (no committed state, no boot id) is welcome.
  assert.deepEqual(
    decideHandshake(primary, { ...standby, committed: null, vm: { name: "web1", bootId: "" } }),
    { accept: true },
  );
  // Generations: a primary that meets a higher one stops; a standby refuses an older primary.
  const newer = { ...standby, generation: 4n };
  assert.deepEqual(decideHandshake(primary, newer), {
    stop: "met generation 4 (this primary is generation 3)",
  });
  refuse(newer, primary, /stale primary of generation 3 \(this standby knows 4\)/);
  const otherPrimary = { ...primary, generation: 5n };
  assert.ok("stop" in decideHandshake(primary, otherPrimary));
  refuse(otherPrimary, primary, /both sides are primary/);
  // A standby that knows an older generation accepts the newer primary.
  assert.deepEqual(decideHandshake({ ...standby, generation: 1n }, primary), { accept: true });
});

Deno.test("fuzz: mutated messages decode or fail with ProtocolError only", () => {
  const rng = new Rng(0x5eed);
  const valid = samples().map(encodeMessage);
  const mem = testRam(RAM_PAGES, 9);
  for (
    const f of encodeCheckpoint(1n, gatherPages(mem, [0, 3, 63], [], { epoch: 1n }), { a: [1n] })
  ) {
    valid.push(frameBytes(f).slice());
  }
  let decoded = 0, refused = 0;
  for (let i = 0; i < 4000; i++) {
    const bytes = rng.mutate(rng.pick(valid));
    try {
      decode(bytes);
      decoded++;
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw new Error(`iteration ${i}: ${e}`);
      assert.ok(!e.message.includes("\n") && e.message.length < 300, e.message);
      refused++;
    }
  }
  for (let i = 0; i < 500; i++) {
    const junk = new Uint8Array(rng.int(80));
    rng.fill(junk);
    if (junk.length >= 4 && rng.int(2)) dv(junk).setUint32(0, 0x50524d4b, true);
    assert.throws(() => decode(junk), ProtocolError);
  }
  assert.ok(refused > 3000, `only ${refused} refused`);
  assert.ok(decoded > 0);
});

/** `pages` pages of seeded random RAM. */
function testRam(pages: number, seed: number): Uint8Array {
  const ram = new Uint8Array(pages * 4096);
  new Rng(seed).fill(ram);
  return ram;
}

Deno.test("a transport message may carry several protocol messages back to back", async () => {
  const { splitMessages } = await import("../../replication/standby.ts");
  const a = encodeMessage({ type: "ACK", epoch: 3n });
  const b = encodeMessage({ type: "BYE", reason: "done" });
  const both = new Uint8Array(a.length + b.length);
  both.set(a);
  both.set(b, a.length);
  assert.deepEqual([...splitMessages(both)].map((m) => m.length), [a.length, b.length]);
  assert.throws(() => [...splitMessages(both.subarray(0, both.length - 1))], /declares/);
  assert.throws(() => [...splitMessages(both.subarray(0, a.length + 5))], /stray bytes/);
});
