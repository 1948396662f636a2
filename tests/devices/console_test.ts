import { deepStrictEqual, equal, ok as assert, throws } from "node:assert/strict";
import {
  ConsoleBackend,
  DeviceStateError,
  EventPage,
  FileSink,
  MemorySink,
  NullSink,
  parseConsoleSink,
  StdoutSink,
  XENCONS,
} from "../../devices/mod.ts";
import type { GuestMemory } from "../../hypervisor/guest_memory.ts";
import { GPA } from "../../machine/layout.ts";
import { ConsoleFront, copyMemory, harvest, LogCapture, newMemory, pattern } from "./guest.ts";

const text = new TextEncoder();

function setup(mem: GuestMemory = newMemory()) {
  const log = new LogCapture();
  const events = new EventPage(mem, () => {}, { logger: log.logger });
  const sink = new MemorySink();
  const console = new ConsoleBackend(mem, events, sink);
  return { mem, events, sink, console, guest: new ConsoleFront(mem), log };
}

Deno.test("console: output reaches the sink in order across wraparound", () => {
  const { console, guest, sink, events } = setup();
  const data = pattern(10_000, 42);
  let sent = 0;
  let services = 0;
  while (sent < data.length) {
    sent += guest.write(data.subarray(sent, sent + 700));
    if (console.service()) services++;
  }
  deepStrictEqual(sink.bytes(), data);
  equal(guest.outCons, 10_000);
  equal(console.counters.bytesOut, 10_000);
  equal(events.seq, services, "one notify per service that consumed output");
  equal(console.service(), false, "nothing left");
});

Deno.test("console: a full 2048-byte ring is accepted, also across the u32 wrap", () => {
  const { console, guest, sink } = setup();
  console.restore({ ...console.save(), outCons: 0xffff_fc00 });
  guest.resetAt(0xffff_fc00, 0);
  const data = pattern(2048, 7);
  equal(guest.write(data), 2048);
  equal(console.service(), true);
  deepStrictEqual(sink.bytes(), data);
  equal(guest.outCons, 0x400);
});

Deno.test("console: an overrun is a bad request and skips to out_prod", () => {
  const { console, guest, sink, events, log } = setup();
  guest.write(text.encode("ok\n"));
  console.service();
  guest.setOutProd(3 + 2049);
  equal(console.service(), true);
  equal(events.badRequests, 1);
  equal(console.counters.overruns, 1);
  equal(guest.outCons, 3 + 2049);
  equal(sink.text(), "ok\n", "nothing from the overrun reaches the sink");
  equal(log.lines.length, 1);
  assert(log.lines[0].includes("console"));
  guest.write(text.encode("after\n"));
  console.service();
  equal(sink.text(), "ok\nafter\n");
});

Deno.test("console: the last line and byte counts are kept for status", () => {
  const { console, guest } = setup();
  guest.write(text.encode("first line\r\nsecond li"));
  console.service();
  equal(console.lastLine, "first line");
  guest.write(text.encode("ne\x1b[0m\nthird"));
  console.service();
  equal(console.lastLine, "second line?[0m");
  equal(console.counters.bytesOut, 21 + 12);
  guest.write(new Uint8Array(600).fill(0x41));
  guest.write(text.encode("\n"));
  console.service();
  equal(console.lastLine, "third" + "A".repeat(251), "capped at 256 bytes");
});

Deno.test("console: input is written into in[], in_prod bumped and the guest notified", () => {
  const { console, guest, events, mem } = setup();
  harvest(mem);
  equal(console.push(text.encode("hello")), 5);
  equal(guest.inProd, 5);
  equal(events.seq, 1);
  deepStrictEqual(harvest(mem), [GPA.events / 4096, GPA.console / 4096]);
  deepStrictEqual(guest.read(), text.encode("hello"));
  const big = pattern(2000, 3);
  equal(console.push(big), 1024, "only a ring's worth fits");
  equal(console.counters.inputDropped, 976);
  equal(console.push(text.encode("x")), 0, "full");
  equal(events.seq, 2, "nothing accepted, no notify");
  deepStrictEqual(guest.read(), big.subarray(0, 1024), "wrapped correctly");
  equal(console.push(big.subarray(0, 1000)), 1000);
  deepStrictEqual(guest.read(), big.subarray(0, 1000));
  equal(console.counters.bytesIn, 2029);
});

Deno.test("console: a bogus in_cons is a bad request and accepts nothing", () => {
  const { console, guest, events } = setup();
  guest.setInCons(0x8000_0000);
  equal(console.push(text.encode("abc")), 0);
  equal(events.badRequests, 1);
  equal(guest.inProd, 0);
});

Deno.test("console: save -> restore over a memory copy continues exactly", () => {
  const a = setup();
  a.guest.write(text.encode("before\npart"));
  a.console.service();
  a.console.push(text.encode("in1"));
  a.guest.write(text.encode("ial\nposted before the save\n")); // posted, not yet taken
  const saved = JSON.parse(JSON.stringify(a.console.save()));
  const b = setup(copyMemory(a.mem));
  b.console.restore(saved);
  deepStrictEqual(b.console.indexes, a.console.indexes);
  equal(b.console.lastLine, "before");
  b.console.service();
  equal(b.sink.text(), "ial\nposted before the save\n");
  equal(b.console.lastLine, "posted before the save");
  equal(b.console.counters.bytesOut, 11 + 27);
  b.console.push(text.encode("in2"));
  deepStrictEqual(b.guest.read(), text.encode("in1in2"));
});

Deno.test("console: restore rejects corrupt states and keeps the old one", () => {
  const { console } = setup();
  const good = console.save() as Record<string, unknown>;
  const counters = good.counters as Record<string, unknown>;
  const cases: unknown[] = [
    undefined,
    null,
    42,
    [],
    { ...good, version: "1" },
    { ...good, outCons: undefined },
    { ...good, outCons: -1 },
    { ...good, outCons: 2 ** 32 },
    { ...good, inProd: "7" },
    { ...good, inProd: Number.NaN },
    { ...good, counters: null },
    { ...good, counters: { ...counters, bytesOut: -5 } },
    { ...good, counters: { ...counters, overruns: undefined } },
    { ...good, lastLine: 3 },
    { ...good, lastLine: "x".repeat(257) },
    { ...good, partialLine: null },
  ];
  for (const bad of cases) {
    throws(() => console.restore(bad), DeviceStateError, JSON.stringify(bad));
  }
  deepStrictEqual(console.save(), good);
});

Deno.test("console: sinks", async () => {
  assert(parseConsoleSink("stdout") instanceof StdoutSink);
  assert(parseConsoleSink("null") instanceof NullSink);
  assert(parseConsoleSink("memory") instanceof MemorySink);
  throws(() => parseConsoleSink("tcp:1.2.3.4:5"), /unknown console sink/);
  throws(() => parseConsoleSink("file:"), /unknown console sink/);
  new StdoutSink().write(new Uint8Array(0));
  const dir = await Deno.makeTempDir({ prefix: "kemari-console-" });
  try {
    const path = `${dir}/console.log`;
    await Deno.writeTextFile(path, "old\n");
    const sink = parseConsoleSink(`file:${path}`);
    assert(sink instanceof FileSink);
    sink.write(text.encode("new "));
    sink.write(text.encode("bytes\n"));
    sink.close();
    equal(await Deno.readTextFile(path), "old\nnew bytes\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("console: layout constants match xencons_interface", () => {
  equal(XENCONS.out, XENCONS.in + XENCONS.inSize);
  equal(XENCONS.inCons, XENCONS.out + XENCONS.outSize);
  equal(XENCONS.outProd + 4, 3088);
});
