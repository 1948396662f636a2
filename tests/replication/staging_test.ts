/**
 * The standby's stager: complete checkpoints reproduce the primary's pages
 * exactly; anything malformed, out of order, oversized, corrupt or cut short
 * is refused and discarded without touching RAM or the committed epoch; and
 * thousands of random mutations of checkpoint streams never get past it.
 */

import assert from "node:assert/strict";
import { Rng } from "../support/rng.ts";
import {
  decodeMessage,
  encodeCheckpoint,
  encodeMessage,
  encodePages,
  frameBytes,
  gatherPages,
  HEADER_BYTES,
  type Message,
} from "../../replication/protocol.ts";
import {
  apply,
  savedMachineCheck,
  Stager,
  type StagerEvent,
  stagingSize,
} from "../../replication/staging.ts";

const PAGE = 4096;
const RAM_PAGES = 64;
const LIMIT = 1 << 20;

/** The messages of checkpoint `epoch` of `pages` of `mem`. */
function checkpoint(
  epoch: bigint,
  mem: Uint8Array,
  pages: number[],
  state: unknown = { kind: "test", epoch },
  delta = new Uint8Array(0),
): Uint8Array[] {
  return encodeCheckpoint(epoch, gatherPages(mem, pages, [], { epoch }), state, delta)
    .map((f) => frameBytes(f).slice());
}

function feed(stager: Stager, msgs: Uint8Array[]): StagerEvent[] {
  return msgs.map((m) => stager.acceptBytes(m));
}

function last(events: StagerEvent[]): StagerEvent {
  return events[events.length - 1];
}

function errorOf(e: StagerEvent): string {
  assert.equal(e.kind, "error", JSON.stringify(e.kind));
  return e.kind === "error" ? e.reason : "";
}

/** A stager that has completed `epochs` small checkpoints, with its RAM. */
function advanced(epochs: number): { stager: Stager; mem: Uint8Array; ram: Uint8Array } {
  const mem = testRam(RAM_PAGES, 1), ram = new Uint8Array(mem.length);
  const stager = new Stager(RAM_PAGES, LIMIT);
  for (const f of encodePages(Array.from({ length: RAM_PAGES }, (_, i) => i), mem)) {
    const e = stager.acceptBytes(frameBytes(f));
    assert.ok(e.kind === "precopy");
    if (e.kind === "precopy") apply(e, ram);
  }
  for (let e = 1; e <= epochs; e++) {
    const done = last(feed(stager, checkpoint(BigInt(e), mem, [e % RAM_PAGES])));
    assert.equal(done.kind, "complete");
    if (done.kind === "complete") apply(done, ram);
  }
  return { stager, mem, ram };
}

Deno.test("pre-copy then checkpoints reproduce the primary's RAM exactly", () => {
  const rng = new Rng(7);
  const mem = testRam(RAM_PAGES, 2), ram = new Uint8Array(mem.length);
  const stager = new Stager(RAM_PAGES, LIMIT);
  const all = Array.from({ length: RAM_PAGES }, (_, i) => i);
  for (const f of encodePages(all, mem)) {
    const e = stager.acceptBytes(frameBytes(f));
    assert.equal(e.kind, "precopy");
    if (e.kind === "precopy") apply(e, ram);
  }
  assert.deepEqual(ram, mem);
  let scribbled = false;
  for (let epoch = 1n; epoch <= 21n; epoch++) {
    const dirty = all.filter((p) => (p === 0 && scribbled) || rng.int(3) === 0);
    for (const p of dirty) {
      if (p !== 0 || !scribbled) rng.fill(mem.subarray(p * PAGE, (p + 1) * PAGE));
    }
    const state = { kind: "test", epoch, regs: new Uint8Array([1, 2, 3]), big: 1n << 63n };
    const delta = new Uint8Array(rng.int(3000));
    rng.fill(delta);
    const msgs = checkpoint(epoch, mem, dirty, state, delta);
    const snapshot = mem.slice();
    // The VM resumes and writes page 0 (dirty for the next epoch); the gathered copy is sent.
    scribbled = epoch < 21n;
    if (scribbled) mem.fill(Number(epoch), 0, PAGE);
    const events = feed(stager, msgs);
    assert.deepEqual(events.slice(0, -1).map((e) => e.kind), msgs.slice(0, -1).map(() => "staged"));
    const done = last(events);
    assert.equal(done.kind, "complete");
    if (done.kind !== "complete") return;
    assert.equal(done.epoch, epoch);
    assert.deepEqual([...done.pages], dirty);
    assert.deepEqual(done.state, state);
    assert.deepEqual(done.diskDelta, delta);
    assert.equal(stager.lastEpoch, epoch);
    assert.equal(stager.openEpoch, null);
    apply(done, ram);
    assert.deepEqual(ram, snapshot, `epoch ${epoch}: RAM is the primary's RAM at the pause`);
  }
  assert.deepEqual(ram, mem);
});

Deno.test("a checkpoint with no pages completes", () => {
  const { stager } = advanced(0);
  const msgs = checkpoint(1n, new Uint8Array(RAM_PAGES * PAGE), []);
  assert.equal(msgs.length, 3);
  const done = last(feed(stager, msgs));
  assert.ok(done.kind === "complete" && done.pages.length === 0 && done.data.length === 0);
});

Deno.test("epochs: skip, repeat, other epoch mid-checkpoint", () => {
  const { stager, mem } = advanced(5);
  assert.equal(
    errorOf(stager.acceptBytes(checkpoint(7n, mem, [1])[0])),
    "CKPT_BEGIN for epoch 7, expected epoch 6",
  );
  assert.equal(
    errorOf(stager.acceptBytes(checkpoint(5n, mem, [1])[0])),
    "CKPT_BEGIN for epoch 5, expected epoch 6",
  );
  const six = checkpoint(6n, mem, [1, 2]);
  assert.equal(stager.acceptBytes(six[0]).kind, "staged");
  assert.equal(stager.openEpoch, 6n);
  assert.equal(
    errorOf(stager.acceptBytes(checkpoint(7n, mem, [1])[1])),
    "CKPT_PAGES for epoch 7 while staging epoch 6",
  );
  assert.equal(stager.openEpoch, null, "the partial checkpoint is discarded");
  assert.equal(
    errorOf(stager.acceptBytes(six[1])),
    "CKPT_PAGES for epoch 6 with no checkpoint open (expecting CKPT_BEGIN for epoch 6)",
  );
  assert.equal(last(feed(stager, six)).kind, "complete");
  assert.equal(stager.lastEpoch, 6n);
});

Deno.test("a second CKPT_BEGIN while one is open is an error and discards both", () => {
  const { stager, mem, ram } = advanced(1);
  const before = ram.slice();
  const two = checkpoint(2n, mem, [3]);
  assert.equal(stager.acceptBytes(two[0]).kind, "staged");
  assert.equal(
    errorOf(stager.acceptBytes(two[0])),
    "CKPT_BEGIN for epoch 2 while epoch 2 is still open",
  );
  assert.equal(stager.openEpoch, null);
  assert.equal(stager.lastEpoch, 1n);
  assert.deepEqual(ram, before);
  assert.equal(last(feed(stager, two)).kind, "complete");
});

Deno.test("CKPT_END with a wrong crc, page count or byte count is refused", () => {
  const { stager, mem } = advanced(1);
  const edit = (field: number, value: number) => {
    const msgs = checkpoint(2n, mem, [3, 4]);
    const end = msgs[msgs.length - 1];
    const dv = new DataView(end.buffer, end.byteOffset + HEADER_BYTES);
    if (field === 16) dv.setBigUint64(16, BigInt(value), true);
    else dv.setUint32(field, value, true);
    return feed(stager, msgs);
  };
  assert.match(
    errorOf(last(edit(8, 0x12345678))),
    /^CKPT_END for epoch 2: crc32 0x12345678 does not match 0x[0-9a-f]{8} \(corrupt\)$/,
  );
  assert.match(errorOf(last(edit(12, 3))), /counts 3 pages, 2 were staged/);
  assert.match(errorOf(last(edit(16, 5))), /counts 5 bytes, \d+ were received/);
  assert.equal(stager.lastEpoch, 1n);
  // A flipped bit in a page is caught by the crc.
  const msgs = checkpoint(2n, mem, [3, 4]);
  msgs[1][msgs[1].length - 1] ^= 1;
  assert.match(errorOf(last(feed(stager, msgs))), /crc32/);
  assert.equal(stager.lastEpoch, 1n);
});

Deno.test("CKPT_STATE garbage, wrong lengths, wrong order", () => {
  const { stager, mem } = advanced(1);
  const msgs = checkpoint(2n, mem, [3, 4], { a: 1 }, new Uint8Array(10));
  const garbage = msgs[2].slice();
  garbage[HEADER_BYTES + 8] = 0x7b ^ 0xff;
  feed(stager, msgs.slice(0, 2));
  assert.equal(
    errorOf(stager.acceptBytes(garbage)),
    "CKPT_STATE for epoch 2: state is not valid JSON",
  );
  assert.equal(stager.openEpoch, null);
  // STATE before all pages.
  stager.acceptBytes(msgs[0]);
  assert.equal(errorOf(stager.acceptBytes(msgs[2])), "CKPT_STATE for epoch 2 after 0 of 2 pages");
  // END before STATE; PAGES after STATE; second STATE.
  feed(stager, msgs.slice(0, 2));
  assert.equal(errorOf(stager.acceptBytes(msgs[3])), "CKPT_END for epoch 2 before CKPT_STATE");
  feed(stager, msgs.slice(0, 3));
  assert.equal(errorOf(stager.acceptBytes(msgs[1])), "CKPT_PAGES for epoch 2 after CKPT_STATE");
  feed(stager, msgs.slice(0, 3));
  assert.equal(errorOf(stager.acceptBytes(msgs[2])), "second CKPT_STATE for epoch 2");
  // STATE whose lengths differ from BEGIN's.
  const other = checkpoint(2n, mem, [3, 4], { a: 12 }, new Uint8Array(10));
  feed(stager, msgs.slice(0, 2));
  assert.match(
    errorOf(stager.acceptBytes(other[2])),
    /state 8 \+ delta 10 bytes, CKPT_BEGIN declared 7 \+ 10/,
  );
  assert.equal(stager.lastEpoch, 1n);
  assert.equal(last(feed(stager, msgs)).kind, "complete");
});

Deno.test("pages: out of range, unsorted across messages, more than declared", () => {
  const { stager, mem } = advanced(1);
  const msgs = checkpoint(2n, mem, Array.from({ length: 40 }, (_, i) => i));
  const pages = decodeMessage(msgs[1], { ramPages: RAM_PAGES });
  assert.ok(pages.type === "CKPT_PAGES");
  if (pages.type !== "CKPT_PAGES") return;
  const one = (p: number[], epoch = 2n) =>
    encodeMessage({
      type: "CKPT_PAGES",
      epoch,
      pages: Uint32Array.from(p),
      data: new Uint8Array(p.length * PAGE),
    });
  stager.acceptBytes(msgs[0]);
  assert.equal(stager.acceptBytes(one([5, 6])).kind, "staged");
  assert.equal(
    errorOf(stager.acceptBytes(one([6, 7]))),
    "CKPT_PAGES for epoch 2 page 6 after page 6",
  );
  stager.acceptBytes(msgs[0]);
  assert.equal(errorOf(stager.acceptBytes(one([64]))), "page 64 out of range (RAM has 64 pages)");
  // A decoder told a larger RAM: the stager still checks.
  stager.acceptBytes(msgs[0]);
  assert.equal(
    errorOf(stager.accept(decodeMessage(one([100]), { ramPages: 1000 }))),
    "page 100 out of range (RAM has 64 pages)",
  );
  const small = checkpoint(2n, mem, [1]);
  stager.acceptBytes(small[0]);
  assert.match(errorOf(stager.acceptBytes(one([2, 3]))), /2 pages, CKPT_BEGIN declared 1/);
  stager.acceptBytes(msgs[0]);
  assert.equal(stager.acceptBytes(one([5])).kind, "staged");
  assert.equal(
    errorOf(stager.acceptBytes(one([8], 0n + 3n))),
    "CKPT_PAGES for epoch 3 while staging epoch 2",
  );
  assert.equal(stager.lastEpoch, 1n);
});

Deno.test("oversized checkpoints are refused at CKPT_BEGIN; staging stays bounded", () => {
  const mem = testRam(RAM_PAGES, 4);
  const ten = Array.from({ length: 10 }, (_, i) => i);
  const fits = checkpoint(1n, mem, ten);
  const stateLength = new DataView(fits[0].buffer).getUint32(HEADER_BYTES + 12, true);
  const size = stagingSize({ totalPages: 10, stateLength, diskDeltaLength: 0 });
  assert.equal(size, 10 * (PAGE + 4) + stateLength);
  const stager = new Stager(RAM_PAGES, size);
  assert.equal(last(feed(stager, fits)).kind, "complete");
  assert.ok(stager.stagingBytes <= size && stager.stagingBytes >= 10 * PAGE);
  const eleven = checkpoint(2n, mem, [...ten, 11]);
  assert.equal(
    errorOf(stager.acceptBytes(eleven[0])),
    `CKPT_BEGIN for epoch 2 needs ${size + PAGE + 4} staging bytes (limit ${size})`,
  );
  const withDelta = checkpoint(
    2n,
    mem,
    [1],
    { kind: "test", epoch: 2n },
    new Uint8Array(10 * PAGE),
  );
  assert.match(errorOf(stager.acceptBytes(withDelta[0])), /needs \d+ staging bytes/);
  // The buffer is reused for a checkpoint of similar size and shrinks for a much smaller one.
  const big = stager.stagingBytes;
  assert.equal(last(feed(stager, checkpoint(2n, mem, ten.slice(1)))).kind, "complete");
  assert.equal(stager.stagingBytes, big);
  assert.equal(last(feed(stager, checkpoint(3n, mem, [7]))).kind, "complete");
  assert.ok(stager.stagingBytes <= PAGE + 4, `${stager.stagingBytes}`);
  // More pages than RAM.
  const tiny = new Stager(4, LIMIT);
  assert.equal(
    errorOf(tiny.acceptBytes(checkpoint(1n, mem, ten)[0])),
    "CKPT_BEGIN for epoch 1 with 10 pages (RAM has 4 pages)",
  );
});

Deno.test("a checkpoint cut before CKPT_END is discarded; RAM and epoch stand", () => {
  const { stager, mem, ram } = advanced(3);
  const before = ram.slice();
  mem.fill(0x55);
  const msgs = checkpoint(4n, mem, [0, 1, 2, 3]);
  for (const e of feed(stager, msgs.slice(0, -1))) assert.equal(e.kind, "staged");
  assert.equal(stager.openEpoch, 4n);
  stager.discard(); // the link died
  assert.equal(stager.openEpoch, null);
  assert.equal(stager.lastEpoch, 3n);
  assert.deepEqual(ram, before);
  assert.match(errorOf(stager.acceptBytes(msgs[msgs.length - 1])), /with no checkpoint open/);
  const done = last(feed(stager, msgs));
  assert.ok(done.kind === "complete");
  if (done.kind === "complete") apply(done, ram);
  assert.deepEqual(ram.subarray(0, 4 * PAGE), mem.subarray(0, 4 * PAGE));
});

Deno.test("pre-copy only before the first checkpoint; other messages are refused", () => {
  const { stager, mem } = advanced(0);
  const pre = frameBytes(encodePages([1], mem)[0]);
  const msgs = checkpoint(1n, mem, [1]);
  stager.acceptBytes(msgs[0]);
  assert.equal(errorOf(stager.acceptBytes(pre)), "PRECOPY while staging epoch 1");
  assert.equal(errorOf(stager.acceptBytes(pre)), "PRECOPY after the first checkpoint");
  const others: Message[] = [
    { type: "ACK", epoch: 1n },
    { type: "BYE", reason: "x" },
    { type: "HEARTBEAT", seq: 1n, generation: 1n, timeNs: 1n, committedEpoch: 0n },
  ];
  for (const m of others) {
    assert.equal(
      errorOf(stager.acceptBytes(encodeMessage(m))),
      `${m.type} is not a checkpoint message`,
    );
  }
  assert.equal(
    errorOf(stager.acceptBytes(new Uint8Array(3))),
    "message of 3 bytes is shorter than a header",
  );
});

Deno.test("checkState refuses a state before its pages are handed out", () => {
  const mem = testRam(1024, 8);
  const stager = new Stager(1024, 64 * PAGE, { checkState: savedMachineCheck(1024) });
  const bad = checkpoint(1n, mem, [1], { kind: "kemari-vm", abiVersion: 999 });
  assert.match(
    errorOf(last(feed(stager, bad))),
    /^CKPT_STATE for epoch 1 refused: .*guest ABI 999/,
  );
  assert.equal(stager.lastEpoch, 0n);
  const saved = {
    kind: "kemari-vm",
    abiVersion: 1,
    ramBytes: 1024 * PAGE,
    guest: "logwriter",
    args: "",
    bootId: 5n,
    disk: null,
    cpu: {},
    clock: {},
    devices: { events: {}, console: {}, block: null },
    savedAt: "2026-01-01T00:00:00Z",
    pausedFrom: "running",
  };
  assert.match(
    errorOf(last(feed(stager, checkpoint(1n, mem, [1], { ...saved, ramBytes: 2048 * PAGE })))),
    /machine of 8388608 bytes of RAM, standby has 4194304/,
  );
  assert.equal(last(feed(stager, checkpoint(1n, mem, [1], saved))).kind, "complete");
});

Deno.test("apply refuses a batch that does not fit RAM", () => {
  const ram = new Uint8Array(4 * PAGE);
  assert.throws(
    () => apply({ pages: Uint32Array.of(4), data: new Uint8Array(PAGE) }, ram),
    RangeError,
  );
  assert.throws(
    () => apply({ pages: Uint32Array.of(1), data: new Uint8Array(2) }, ram),
    RangeError,
  );
  apply({ pages: Uint32Array.of(1, 2, 3), data: new Uint8Array(3 * PAGE).fill(9) }, ram);
  assert.deepEqual([ram[PAGE - 1], ram[PAGE], ram[4 * PAGE - 1]], [0, 9, 9]);
});

Deno.test("fuzz: mutated checkpoint streams never corrupt the committed state", () => {
  const rng = new Rng(0xc0ffee);
  const mem = testRam(RAM_PAGES, 3);
  const ram = new Uint8Array(mem.length);
  const committed = new Uint8Array(mem.length); // the model: RAM as of the last commit
  const stager = new Stager(RAM_PAGES, LIMIT);
  for (const f of encodePages(Array.from({ length: RAM_PAGES }, (_, i) => i), mem)) {
    const e = stager.acceptBytes(frameBytes(f));
    if (e.kind === "precopy") apply(e, ram);
  }
  committed.set(ram);
  const pending = new Set<number>();
  let completes = 0, errors = 0;
  for (let i = 0; i < 3000; i++) {
    for (let n = rng.int(6); n > 0; n--) {
      const p = rng.int(RAM_PAGES);
      rng.fill(mem.subarray(p * PAGE, (p + 1) * PAGE));
      pending.add(p);
    }
    const epoch = stager.lastEpoch + 1n;
    const pages = [...pending].sort((a, b) => a - b);
    const state = { kind: "test", epoch, n: i };
    const delta = new Uint8Array(rng.int(64));
    rng.fill(delta);
    const msgs = checkpoint(epoch, mem, pages, state, delta);
    const stream = rng.int(8) === 0 ? msgs : mutateStream(rng, msgs);
    for (const m of stream) {
      const e = stager.acceptBytes(m);
      assert.ok(["staged", "complete", "error"].includes(e.kind), `iteration ${i}: ${e.kind}`);
      if (e.kind === "error") {
        errors++;
        assert.ok(!e.reason.includes("\n"));
      }
      if (e.kind !== "complete") continue;
      // Only the genuine checkpoint can complete.
      assert.equal(e.epoch, epoch);
      assert.deepEqual([...e.pages], pages);
      pages.forEach((p, k) => {
        assert.deepEqual(
          e.data.subarray(k * PAGE, (k + 1) * PAGE),
          mem.subarray(p * PAGE, (p + 1) * PAGE),
        );
      });
      assert.deepEqual(e.state, state);
      assert.deepEqual(e.diskDelta, delta);
      apply(e, ram);
      apply(e, committed);
      pending.clear();
      completes++;
    }
    stager.discard(); // a stream cut: whatever is open is dropped
    assert.deepEqual(ram, committed, `iteration ${i}: RAM differs from the committed state`);
    assert.equal(stager.lastEpoch, BigInt(completes));
  }
  assert.ok(completes > 300 && errors > 2000, `${completes} completes, ${errors} errors`);
  assert.equal(
    last(feed(stager, checkpoint(stager.lastEpoch + 1n, mem, [...pending].sort((a, b) => a - b))))
      .kind,
    "complete",
  );
});

/** Drops, repeats, swaps or mutates messages of a checkpoint stream. */
function mutateStream(rng: Rng, msgs: Uint8Array[]): Uint8Array[] {
  const s = msgs.slice();
  const k = rng.int(s.length);
  switch (rng.int(5)) {
    case 0:
      s.splice(k, 1);
      break;
    case 1:
      s.splice(k, 0, s[k]);
      break;
    case 2: {
      const j = rng.int(s.length);
      if (j === k) s.splice(k, 1);
      else [s[j], s[k]] = [s[k], s[j]];
      break;
    }
    default:
      s[k] = rng.mutate(s[k]);
  }
  return s;
}

/** `pages` pages of seeded random RAM. */
function testRam(pages: number, seed: number): Uint8Array {
  const ram = new Uint8Array(pages * 4096);
  new Rng(seed).fill(ram);
  return ram;
}
