import { deepStrictEqual, equal, ok as assert, throws } from "node:assert/strict";
import {
  CONSOLE_CHUNK_MAX,
  CONSOLE_HELD_CAP,
  ConsoleBackend,
  type ConsoleSink,
  DeviceStateError,
  encodeBase64,
  EventPage,
  MemorySink,
  OPEN_GATE,
  XENCONS,
} from "../../devices/mod.ts";
import type { GuestMemory } from "../../hypervisor/guest_memory.ts";
import { FakeGate } from "./fake_gate.ts";
import { ConsoleFront, copyMemory, LogCapture, newMemory, pattern } from "./guest.ts";

const text = new TextEncoder();
const roundTrip = <T>(value: T): T => JSON.parse(JSON.stringify(value));

function setup(mem: GuestMemory = newMemory(), sink: ConsoleSink = new MemorySink()) {
  const log = new LogCapture();
  const events = new EventPage(mem, () => {}, { logger: log.logger });
  const console = new ConsoleBackend(mem, events, sink);
  const gate = new FakeGate();
  console.setGate(gate);
  return { mem, events, sink: sink as MemorySink, console, guest: new ConsoleFront(mem), gate };
}

Deno.test("console commit: held bytes reach the sink only at release(E) with E >= their epoch", () => {
  const { console, guest, sink, gate, events } = setup();
  equal(console.gate, gate);
  guest.write(text.encode("one\n"));
  equal(console.service(), true, "out_cons moved");
  equal(guest.outCons, 4, "the ring is freed at once");
  equal(events.seq, 1, "the guest is told there is room");
  equal(sink.text(), "", "nothing leaves yet");
  deepStrictEqual(gate.held, [["console", 4]]);
  deepStrictEqual(gate.asked, [["console", 0, 0]]);
  deepStrictEqual(console.held, { bytes: 4, count: 1, oldestEpoch: 1 });

  gate.epoch = 2;
  guest.write(text.encode("two"));
  console.service();
  guest.write(text.encode("!\n"));
  console.service();
  deepStrictEqual(console.held, { bytes: 9, count: 2, oldestEpoch: 1 }, "same epoch merged");
  deepStrictEqual(gate.held, [["console", 4], ["console", 3], ["console", 2]]);

  equal(console.release(0), 0);
  equal(sink.text(), "");
  equal(console.release(1), 4);
  equal(sink.text(), "one\n");
  equal(console.lastLine, "one");
  equal(console.release(1), 0, "nothing more of epoch 1");
  deepStrictEqual(console.held, { bytes: 5, count: 1, oldestEpoch: 2 });
  equal(console.release(7), 5);
  equal(sink.text(), "one\ntwo!\n");
  deepStrictEqual(sink.chunks.map((c) => c.length), [4, 5], "written in order, chunk by chunk");
  deepStrictEqual(console.held, { bytes: 0, count: 0, oldestEpoch: null });
  equal(console.counters.bytesOut, 9);
  equal(console.lastLine, "two!");
  equal(console.stalled, null);
});

Deno.test("console commit: chunks of one epoch merge up to CONSOLE_CHUNK_MAX; release keeps order", () => {
  const { console, guest, sink, gate } = setup();
  const data = pattern(3 * CONSOLE_CHUNK_MAX + 100, 5);
  let sent = 0;
  while (sent < data.length) {
    sent += guest.write(data.subarray(sent, sent + 1000));
    console.service();
    if (sent > data.length / 2) gate.epoch = 2;
  }
  const held = console.held;
  equal(held.bytes, data.length);
  assert(held.count >= 4 && held.count <= 6, `count ${held.count}`);
  equal(console.release(2), data.length);
  deepStrictEqual(sink.bytes(), data);
  assert(sink.chunks.every((c) => c.length <= CONSOLE_CHUNK_MAX));
});

Deno.test("console commit: at the bound the backend stops consuming, then resumes after release", () => {
  const { console, guest, sink, gate } = setup();
  gate.maxBytes = 20;
  const first = pattern(15, 1);
  guest.write(first);
  equal(console.service(), true);
  const second = pattern(10, 2);
  guest.write(second);
  equal(console.service(), true, "15 < 20: may hold more");
  deepStrictEqual(console.held, { bytes: 25, count: 1, oldestEpoch: 1 });
  const third = pattern(XENCONS.outSize, 3);
  const accepted = guest.write(third);
  equal(accepted, XENCONS.outSize - 0, "the ring was empty");
  equal(console.service(), false, "bound reached: nothing taken");
  equal(console.stalled, "hold-limit");
  equal(guest.outCons, 25, "out_cons does not move");
  equal(guest.write(new Uint8Array([1])), 0, "the guest waits on a full ring");
  equal(gate.held.length, 2, "no output announced for what was left in the ring");
  equal(console.service(), false, "still stalled");

  equal(console.release(1), 25);
  equal(console.service(), true, "room again: the backlog is taken");
  equal(console.stalled, null);
  equal(guest.outCons, 25 + XENCONS.outSize);
  deepStrictEqual(console.held, { bytes: XENCONS.outSize, count: 1, oldestEpoch: 1 });
  console.release(1);
  deepStrictEqual(sink.bytes(), new Uint8Array([...first, ...second, ...third]));
});

Deno.test("console commit: after the gate stops holding, new output waits for releaseAll", () => {
  const { console, guest, sink, gate } = setup();
  guest.write(text.encode("held "));
  console.service();
  console.setGate(OPEN_GATE);
  guest.write(text.encode("new\n"));
  equal(console.service(), false);
  equal(console.stalled, "release-pending");
  equal(sink.text(), "", "held output is neither dropped nor overtaken");
  equal(console.releaseAll(), 5);
  equal(console.service(), true);
  equal(sink.text(), "held new\n");
  equal(gate.held.length, 1, "unprotected output is not announced");
  deepStrictEqual(console.held, { bytes: 0, count: 0, oldestEpoch: null });
});

Deno.test("console commit: epochs never decrease along the queue; bad epochs are refused", () => {
  const { console, guest, sink, gate } = setup();
  gate.epoch = 5;
  guest.write(text.encode("a"));
  console.service();
  gate.epoch = 3; // a gate whose epoch went back
  guest.write(text.encode("b"));
  console.service();
  deepStrictEqual(console.held, { bytes: 2, count: 1, oldestEpoch: 5 }, "tagged 5, not 3");
  equal(console.release(4), 0, "'b' may not overtake 'a'");
  equal(console.release(5), 2);
  equal(sink.text(), "ab");

  for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
    throws(() => console.release(bad), RangeError, String(bad));
    gate.epoch = bad;
    guest.write(text.encode("x"));
    const before = guest.outCons;
    throws(() => console.service(), RangeError, String(bad));
    equal(guest.outCons, before, "nothing taken");
    gate.epoch = 1;
    console.service();
    console.releaseAll();
  }
  equal(sink.text(), "abxxxxx");
});

Deno.test("console commit: a sink that throws on release loses that chunk only", () => {
  let calls = 0;
  const inner = new MemorySink();
  const flaky: ConsoleSink = {
    write(bytes) {
      if (++calls === 2) throw new Error("EIO");
      inner.write(bytes);
    },
    close() {},
  };
  const { console, guest, gate } = setup(newMemory(), flaky);
  for (const [epoch, s] of [[1, "a"], [2, "b"], [3, "c"]] as const) {
    gate.epoch = epoch;
    guest.write(text.encode(s));
    console.service();
  }
  throws(() => console.release(3), /EIO/);
  deepStrictEqual(console.held, { bytes: 1, count: 1, oldestEpoch: 3 });
  equal(console.release(3), 1);
  equal(inner.text(), "ac");
});

Deno.test("console commit: held chunks survive save -> restore; releaseAll there equals release here", () => {
  const a = setup();
  a.guest.write(text.encode("epoch one\n"));
  a.console.service();
  a.gate.epoch = 2;
  a.guest.write(pattern(3000, 9).subarray(0, 1500));
  a.console.service();
  a.guest.write(text.encode("posted, not taken\n"));
  const saved = roundTrip(a.console.save());
  equal(saved.version, 2);
  const held = saved.held as { epoch: number; bytes: unknown }[];
  deepStrictEqual(held.map((c) => c.epoch), [1, 2]);
  assert(held.every((c) => typeof c.bytes === "string"), "bytes are base64 strings");

  const b = setup(copyMemory(a.mem));
  b.console.setGate(OPEN_GATE);
  b.console.restore(saved);
  deepStrictEqual(b.console.held, a.console.held);
  deepStrictEqual(b.console.save(), a.console.save());
  equal(b.console.reissueHeld(), 1510, "the standby re-issues every held chunk");
  equal(a.console.release(2), 1510);
  deepStrictEqual(b.sink.bytes(), a.sink.bytes());
  a.console.setGate(OPEN_GATE);
  a.console.service();
  b.console.service();
  deepStrictEqual(b.sink.bytes(), a.sink.bytes());
  equal(b.sink.text().endsWith("posted, not taken\n"), true);
  deepStrictEqual(b.console.save(), a.console.save());
  deepStrictEqual(new Uint8Array(b.mem.buffer), new Uint8Array(a.mem.buffer));
});

Deno.test("console commit: restore refuses corrupt held chunks and keeps the current state", () => {
  const { console, guest, gate } = setup();
  guest.write(text.encode("kept"));
  console.service();
  gate.epoch = 2;
  guest.write(text.encode("too"));
  console.service();
  const good = roundTrip(console.save()) as Record<string, unknown>;
  const chunk = (epoch: unknown, bytes: unknown) => ({ epoch, bytes });
  const b64 = (n: number) => encodeBase64(new Uint8Array(n).fill(0x41));
  const cases: [string, unknown][] = [
    ["future version", { ...good, version: 3 }],
    ["held missing", { ...good, held: undefined }],
    ["held an object", { ...good, held: {} }],
    ["held a string", { ...good, held: "QUJD" }],
    ["entry null", { ...good, held: [null] }],
    ["entry an array", { ...good, held: [[1, "QQ=="]] }],
    ["epoch negative", { ...good, held: [chunk(-1, "QQ==")] }],
    ["epoch fractional", { ...good, held: [chunk(1.5, "QQ==")] }],
    ["epoch unsafe", { ...good, held: [chunk(2 ** 53, "QQ==")] }],
    ["epoch a string", { ...good, held: [chunk("1", "QQ==")] }],
    ["epoch missing", { ...good, held: [{ bytes: "QQ==" }] }],
    ["epochs decreasing", { ...good, held: [chunk(3, "QQ=="), chunk(2, "QQ==")] }],
    ["bytes missing", { ...good, held: [{ epoch: 1 }] }],
    ["bytes a number array", { ...good, held: [chunk(1, [65])] }],
    ["bytes not base64", { ...good, held: [chunk(1, "!!!!")] }],
    ["bytes unpadded", { ...good, held: [chunk(1, "QQ")] }],
    ["bytes non-canonical", { ...good, held: [chunk(1, "QR==")] }],
    ["bytes with whitespace", { ...good, held: [chunk(1, "QU JD")] }],
    ["bytes empty", { ...good, held: [chunk(1, "")] }],
    ["chunk too large", { ...good, held: [chunk(1, b64(CONSOLE_CHUNK_MAX + 1))] }],
    [
      "too many chunks",
      { ...good, held: Array.from({ length: CONSOLE_HELD_CAP.count + 1 }, () => chunk(1, "QQ==")) },
    ],
  ];
  for (const [name, bad] of cases) {
    throws(() => console.restore(bad), DeviceStateError, name);
  }
  deepStrictEqual(roundTrip(console.save()), good, "a failed restore changes nothing");
  deepStrictEqual(console.held, { bytes: 7, count: 2, oldestEpoch: 1 });
  throws(() => console.restore({ ...good, held: [chunk(1, "QR==")] }), /not canonical base64/);

  // A version-1 state (before output commit) is still read: nothing held.
  const { held: _held, ...v1 } = good;
  console.restore({ ...v1, version: 1 });
  deepStrictEqual(console.held, { bytes: 0, count: 0, oldestEpoch: null });
  // The largest legal chunk is accepted.
  console.restore({ ...good, held: [chunk(0, b64(CONSOLE_CHUNK_MAX))] });
  deepStrictEqual(console.held, { bytes: CONSOLE_CHUNK_MAX, count: 1, oldestEpoch: 0 });
});
