/**
 * Fault injection: cuts and drops surface as LinkError, partitions stall
 * and heal without losing bytes, corruption is caught by the MAC, delays
 * add latency, and a seed always puts the faults at the same bytes.
 */

import assert from "node:assert/strict";
import {
  AuthError,
  type FaultEvent,
  FaultyStream,
  FaultyTransport,
  FRAME_HEADER_BYTES,
  type Link,
  LinkClosedError,
  LinkError,
  type Listener,
  memoryPair,
  MemoryTransport,
  mulberry32,
  type SecureLink,
  TAG_BYTES,
  TcpTransport,
} from "../../transport/mod.ts";
import { handshakeBytes, options, pattern } from "./helpers.ts";

async function accept(listener: Listener): Promise<Link> {
  const r = await listener[Symbol.asyncIterator]().next();
  assert.ok(!r.done);
  return r.value;
}

/** A memory listener plus a faulty client link to it. */
async function faultyPair(spec: ConstructorParameters<typeof FaultyTransport>[1]) {
  const mem = new MemoryTransport({ isolated: true });
  const listener = mem.listen("", options());
  const ft = new FaultyTransport(mem, spec);
  const [c, s] = await Promise.all([ft.connect(listener.address, options()), accept(listener)]);
  return { ft, listener, c: c as SecureLink, s: s as SecureLink, stream: ft.streams[0] };
}

const H = handshakeBytes();
const FRAME = (n: number) => FRAME_HEADER_BYTES + n + TAG_BYTES;

Deno.test("mulberry32: deterministic per seed, different across seeds, in [0, 1)", () => {
  const a = mulberry32(42), b = mulberry32(42), c = mulberry32(43);
  const xs = Array.from({ length: 1000 }, () => a());
  assert.deepEqual(xs, Array.from({ length: 1000 }, () => b()));
  assert.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, () => c()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05);
});

Deno.test("cut: after N outgoing bytes (mid-frame) receive() rejects with LinkError", async () => {
  const cutAt = H + FRAME(100) + 500; // inside the second message
  const { listener, c, s, stream } = await faultyPair({
    seed: 1,
    cut: { afterBytes: cutAt, direction: "out" },
  });
  await c.send([pattern(100)]);
  const second = c.send([pattern(2000)]);
  await assert.rejects(second, LinkClosedError);
  assert.deepEqual(await s.receive(), pattern(100));
  await assert.rejects(s.receive(), (e) => {
    assert.ok(e instanceof LinkError && !(e instanceof AuthError));
    assert.match(e.message, /lost in the middle of a frame/);
    return true;
  });
  assert.deepEqual(stream.events, [{ kind: "cut", offset: cutAt }]);
  assert.equal(stream.bytesOut, cutAt);
  await assert.rejects(c.receive(), LinkError);
  c.close();
  s.close();
  listener.close();
});

Deno.test("cut: exactly at a frame boundary is still a failure, not an orderly close", async () => {
  const cutAt = H + FRAME(10);
  const { listener, c, s } = await faultyPair({
    seed: 1,
    cut: { afterBytes: cutAt, direction: "out" },
  });
  await c.send([pattern(10)]);
  assert.deepEqual(await s.receive(), pattern(10));
  await assert.rejects(s.receive(), /without a goodbye/);
  c.close();
  s.close();
  listener.close();
});

Deno.test("cut: incoming direction — the faulty side's receive() rejects with LinkError", async () => {
  const cutAt = H + FRAME(300) + 50;
  const { listener, c, s, stream } = await faultyPair({
    seed: 2,
    cut: { afterBytes: cutAt, direction: "in" },
  });
  await s.send([pattern(300)]);
  await s.send([pattern(300)]);
  assert.deepEqual(await c.receive(), pattern(300));
  await assert.rejects(c.receive(), (e) => {
    assert.ok(e instanceof LinkError);
    assert.match(e.message, /cut after \d+ bytes by fault injection|lost in the middle/);
    return true;
  });
  assert.equal(stream.bytesIn, cutAt);
  // The other side sees the connection end without a goodbye.
  await assert.rejects(s.receive(), LinkError);
  c.close();
  s.close();
  listener.close();
});

Deno.test("cut: both directions counted together", async () => {
  const { listener, c, s, stream } = await faultyPair({
    seed: 3,
    cut: { afterBytes: 2 * H + 100 },
  });
  await s.send([pattern(200)]).catch(() => {});
  await assert.rejects(c.receive(), LinkError);
  assert.equal(stream.bytesIn + stream.bytesOut, 2 * H + 100);
  c.close();
  s.close();
  listener.close();
});

Deno.test("drop: the connection dies at a seeded random offset; receive() rejects with LinkError", async () => {
  const spec = { seed: 77, drop: { minBytes: 1000, maxBytes: 50_000 } };
  const { listener, c, s, stream } = await faultyPair(spec);
  const at = stream.dropOffset;
  assert.ok(at >= 1000 && at <= 50_000);
  const sends = Array.from({ length: 20 }, () => c.send([pattern(4000)]).catch((e) => e));
  let got = 0;
  const err = await (async () => {
    while (true) {
      const m = await s.receive();
      if (!m) return null;
      got++;
    }
  })().catch((e) => e);
  assert.ok(err instanceof LinkError, String(err));
  assert.equal(got, Math.floor((at - H) / FRAME(4000)));
  assert.deepEqual(stream.events, [{ kind: "drop", offset: at }]);
  const results = await Promise.all(sends);
  assert.ok(results.some((r) => r instanceof LinkClosedError));
  c.close();
  s.close();
  listener.close();
});

/** One scripted session under faults; returns what is observable. */
async function scenario(seed: number) {
  const { listener, c, s, stream } = await faultyPair({
    seed,
    drop: { minBytes: 5_000, maxBytes: 200_000 },
    delay: { minMs: 0, maxMs: 2 },
    corrupt: { offset: 300_000 },
  });
  const sends = Array.from(
    { length: 60 },
    (_, i) => c.send([pattern(3000 + i * 7, i)]).catch(() => {}),
  );
  const received: number[] = [];
  const err = await (async () => {
    while (true) {
      const m = await s.receive();
      if (!m) return;
      received.push(m.length);
    }
  })().catch((e: Error) => e.name);
  await Promise.all(sends);
  c.close();
  s.close();
  listener.close();
  return { events: stream.events as FaultEvent[], dropAt: stream.dropOffset, received, err };
}

Deno.test("determinism: the same seed gives the same fault points and outcome; another seed differs", async () => {
  const a = await scenario(1234);
  const b = await scenario(1234);
  const c = await scenario(999);
  assert.deepEqual(a, b);
  assert.equal(a.events.length, 1);
  assert.equal(a.events[0].kind, "drop");
  assert.notEqual(a.dropAt, c.dropAt);
  // Per-stream seeds of a transport: stream i uses seed + i.
  const mem = new MemoryTransport({ isolated: true });
  const listener = mem.listen("", options());
  const drop = { minBytes: 1e6, maxBytes: 1e9 };
  const t = new FaultyTransport(mem, { seed: 10, drop });
  const links = [
    await t.connect(listener.address, options()),
    await t.connect(listener.address, options()),
  ];
  const [x] = memoryPair();
  assert.equal(t.streams[1].dropOffset, new FaultyStream(x, { seed: 11, drop }).dropOffset);
  assert.notEqual(t.streams[0].dropOffset, t.streams[1].dropOffset);
  for (const l of links) l.close();
  listener.close();
});

Deno.test("partition: traffic stalls without closing, then heals with nothing lost", async () => {
  const { listener, c, s, stream } = await faultyPair({ seed: 5 });
  stream.partition();
  assert.ok(stream.partitioned);
  const sent = c.send([pattern(5000)]);
  const got = s.receive();
  const early = await Promise.race([
    got.then(() => "arrived"),
    new Promise((r) => setTimeout(() => r("stalled"), 100)),
  ]);
  assert.equal(early, "stalled");
  // The reply direction is stalled too.
  await s.send([new Uint8Array([1])]);
  const reply = c.receive();
  const early2 = await Promise.race([
    reply.then(() => "arrived"),
    new Promise((r) => setTimeout(() => r("stalled"), 50)),
  ]);
  assert.equal(early2, "stalled");
  stream.heal();
  assert.deepEqual(await got, pattern(5000));
  assert.deepEqual(await reply, new Uint8Array([1]));
  await sent;
  assert.deepEqual(stream.events.map((e) => e.kind), ["partition", "heal"]);
  // The link goes on working.
  await c.send([new Uint8Array([2])]);
  assert.deepEqual(await s.receive(), new Uint8Array([2]));
  c.close();
  assert.equal(await s.receive(), null);
  s.close();
  listener.close();
});

Deno.test("partition: a timed partition heals by itself; an automatic one starts at byte N", async () => {
  const at = H + FRAME(10) + 3;
  const { listener, c, s, stream } = await faultyPair({
    seed: 6,
    partition: { afterBytes: at, durationMs: 150 },
  });
  await c.send([pattern(10)]);
  assert.deepEqual(await s.receive(), pattern(10));
  const t0 = performance.now();
  const sent = c.send([pattern(20)]);
  assert.deepEqual(await s.receive(), pattern(20));
  const waited = performance.now() - t0;
  assert.ok(waited >= 140, `waited ${waited} ms`);
  await sent;
  assert.deepEqual(stream.events.map((e) => [e.kind, e.offset]), [["partition", at], ["heal", at]]);
  c.close();
  s.close();
  listener.close();
});

Deno.test("partition: FaultyTransport.partition()/heal() act on every stream, over TCP too", async () => {
  const tcp = new TcpTransport();
  const listener = tcp.listen("127.0.0.1:0", options());
  const ft = new FaultyTransport(tcp, { seed: 8 });
  const [c, s] = await Promise.all([ft.connect(listener.address, options()), accept(listener)]);
  ft.partition();
  const got = s.receive();
  const sent = c.send([pattern(1 << 20)]);
  const early = await Promise.race([
    got.then(() => "arrived"),
    new Promise((r) => setTimeout(() => r("stalled"), 100)),
  ]);
  assert.equal(early, "stalled");
  ft.heal();
  assert.deepEqual(await got, pattern(1 << 20));
  await sent;
  c.close();
  assert.equal(await s.receive(), null);
  s.close();
  await (c as SecureLink).closed;
  listener.close();
});

Deno.test("corrupt: over TCP, a flipped byte in a 1 MiB message is caught by the MAC", async () => {
  const tcp = new TcpTransport();
  const so = options();
  const listener = tcp.listen("127.0.0.1:0", so);
  const ft = new FaultyTransport(tcp, {
    seed: 4,
    corrupt: { offset: H + FRAME_HEADER_BYTES + 777_777 },
  });
  const [c, s] = await Promise.all([ft.connect(listener.address, options()), accept(listener)]);
  const msg = pattern(1 << 20);
  const copy = msg.slice();
  await c.send([msg]);
  assert.deepEqual(msg, copy, "the sender's buffer is never modified");
  await assert.rejects(s.receive(), AuthError);
  c.close();
  await (c as SecureLink).closed;
  listener.close();
});

Deno.test("corrupt: incoming direction is caught too", async () => {
  const { listener, c, s, stream } = await faultyPair({
    seed: 4,
    corrupt: { offset: H + 20, direction: "in" },
  });
  await s.send([pattern(64)]);
  await assert.rejects(c.receive(), /tampered frame/);
  assert.equal(stream.events[0].kind, "corrupt");
  c.close();
  s.close();
  listener.close();
});

Deno.test("delay: each write waits the seeded latency", async () => {
  const { listener, c, s } = await faultyPair({ seed: 7, delay: { minMs: 30, maxMs: 30 } });
  const t0 = performance.now();
  await c.send([pattern(10)]);
  await s.receive();
  assert.ok(performance.now() - t0 >= 29);
  c.close();
  s.close();
  listener.close();
});
