/**
 * The secure layer over in-memory streams: round trips, framing, the
 * handshake's refusals (wrong key, channel, authentication setting), and
 * tampered, replayed, dropped and oversized frames.
 */

import assert from "node:assert/strict";
import { createDecipheriv } from "node:crypto";
import {
  AuthError,
  constantTimeEqual,
  FaultyTransport,
  FRAME_HEADER_BYTES,
  frameTag,
  type Link,
  LinkClosedError,
  LinkError,
  type LinkOptions,
  memoryPair,
  MemoryTransport,
  type SecureLink,
  secureStream,
  TAG_BYTES,
} from "../../transport/mod.ts";
import type { ByteStream } from "../../transport/stream.ts";
import { handshakeBytes, options, pattern, Recorder, testKey, waitFor } from "./helpers.ts";

/** Client and server over one in-memory pair; `wrap` can interpose on the client's stream. */
async function pair(
  client: LinkOptions = options(),
  server: LinkOptions = options(),
  wrap: (s: ByteStream) => ByteStream = (s) => s,
): Promise<[SecureLink, SecureLink]> {
  const [a, b] = memoryPair();
  return await Promise.all([
    secureStream(wrap(a), "client", client, "server"),
    secureStream(b, "server", server, "client"),
  ]);
}

/** Both handshake outcomes, for refusal tests. */
async function pairSettled(client: LinkOptions, server: LinkOptions) {
  const [a, b] = memoryPair();
  return await Promise.allSettled([
    secureStream(a, "client", client, "server"),
    secureStream(b, "server", server, "client"),
  ]);
}

function closeBoth(...links: Link[]): void {
  for (const l of links) l.close();
}

Deno.test("memory: messages of several parts round-trip both ways", async () => {
  const [c, s] = await pair();
  await c.send([new Uint8Array([1, 2]), new Uint8Array(0), new Uint8Array([3])]);
  await s.send([new TextEncoder().encode("pong")]);
  assert.deepEqual(await s.receive(), new Uint8Array([1, 2, 3]));
  assert.equal(new TextDecoder().decode((await c.receive())!), "pong");
  await c.send([]);
  assert.deepEqual(await s.receive(), new Uint8Array(0));
  assert.deepEqual(c.stats, {
    bytesSent: 3,
    bytesReceived: 4,
    messagesSent: 2,
    messagesReceived: 1,
  });
  assert.deepEqual(s.stats, {
    bytesSent: 4,
    bytesReceived: 3,
    messagesSent: 1,
    messagesReceived: 2,
  });
  closeBoth(c, s);
});

Deno.test("memory: a 32 MiB message arrives intact", async () => {
  const [c, s] = await pair();
  const big = pattern(32 << 20, 5);
  const half = big.length / 2;
  const sent = c.send([big.subarray(0, half), big.subarray(half)]);
  const got = await s.receive();
  await sent;
  assert.ok(got && got.length === big.length);
  assert.ok(constantTimeEqual(got, big));
  closeBoth(c, s);
});

Deno.test("memory: 10000 small messages arrive in order (sends not awaited one by one)", async () => {
  const [c, s] = await pair();
  const n = 10_000;
  const sending = Promise.all(
    Array.from({ length: n }, (_, i) => {
      const m = new Uint8Array(8);
      new DataView(m.buffer).setUint32(0, i, true);
      return c.send([m, new Uint8Array([i & 0xff])]);
    }),
  );
  for (let i = 0; i < n; i++) {
    const m = (await s.receive())!;
    assert.equal(m.length, 9);
    assert.equal(new DataView(m.buffer).getUint32(0, true), i);
    assert.equal(m[8], i & 0xff);
  }
  await sending;
  assert.equal(s.stats.messagesReceived, n);
  closeBoth(c, s);
});

Deno.test("close: the peer's receive() returns null after queued messages; then sends fail", async () => {
  const [c, s] = await pair();
  const sent = c.send([new Uint8Array([9])]);
  c.close();
  c.close(); // idempotent
  await sent;
  assert.deepEqual(await s.receive(), new Uint8Array([9]));
  assert.equal(await s.receive(), null);
  assert.equal(await s.receive(), null);
  await assert.rejects(c.send([new Uint8Array(1)]), LinkClosedError);
  await assert.rejects(c.receive(), LinkClosedError);
  await assert.rejects(s.send([new Uint8Array(1)]), LinkClosedError);
  await c.closed;
  s.close();
});

Deno.test("close: a pending receive() rejects with LinkClosedError on local close", async () => {
  const [c, s] = await pair();
  const pending = c.receive();
  c.close();
  await assert.rejects(pending, LinkClosedError);
  assert.equal(await s.receive(), null);
  s.close();
});

Deno.test("close: a stream that ends without the goodbye frame is a LinkError, not an orderly close", async () => {
  const [a, b] = memoryPair();
  const [c, s] = await Promise.all([
    secureStream(a, "client", options(), "server"),
    secureStream(b, "server", options(), "client"),
  ]);
  await c.send([new Uint8Array([1])]);
  a.close(); // the connection dies: no goodbye
  assert.deepEqual(await s.receive(), new Uint8Array([1]));
  await assert.rejects(s.receive(), (e) => {
    assert.ok(e instanceof LinkError && !(e instanceof AuthError));
    assert.match(e.message, /without a goodbye/);
    return true;
  });
  // The failure is sticky and sends are refused.
  await assert.rejects(s.receive(), /without a goodbye/);
  await assert.rejects(s.send([new Uint8Array(1)]), LinkClosedError);
  c.close();
  s.close();
});

Deno.test("handshake: a wrong key is refused on both sides with AuthError, and logged", async () => {
  const co = options();
  const so = options({ key: testKey(8) });
  const [rc, rs] = await pairSettled(co, so);
  for (const r of [rc, rs]) {
    assert.equal(r.status, "rejected");
    const e = (r as PromiseRejectedResult).reason;
    assert.ok(e instanceof AuthError, String(e));
    assert.match(e.message, /bad key or unauthenticated peer/);
    assert.ok(!e.message.includes("\n"));
  }
  // Through a transport, the listener logs the refusal.
  const mem = new MemoryTransport();
  const lo = options({ key: testKey(8) });
  const listener = mem.listen("", lo);
  const err = await mem.connect(listener.address, options()).catch((e) => e);
  assert.ok(err instanceof AuthError);
  await waitFor("refusal logged", () => lo.lines.some((l) => l.includes("refused")));
  const line = lo.lines.find((l) => l.includes("refused"))!;
  assert.match(line, /AuthError: bad key or unauthenticated peer/);
  listener.close();
});

Deno.test("handshake: a channel mismatch is refused (a heartbeat link can't pose as replication)", async () => {
  const [rc, rs] = await pairSettled(options({ channel: "heartbeat" }), options());
  for (const r of [rc, rs]) {
    assert.equal(r.status, "rejected");
    const e = (r as PromiseRejectedResult).reason;
    assert.ok(e instanceof AuthError);
    assert.match(e.message, /channel mismatch/);
  }
});

Deno.test("handshake: authenticate=false on one side only is refused (no downgrade)", async () => {
  const [rc, rs] = await pairSettled(options({ authenticate: false }), options());
  for (const r of [rc, rs]) {
    assert.equal(r.status, "rejected");
    assert.match((r as PromiseRejectedResult).reason.message, /authentication setting mismatch/);
  }
});

Deno.test("handshake: bad options are refused before any I/O", async () => {
  const mem = new MemoryTransport();
  await assert.rejects(mem.connect("x", options({ key: new Uint8Array(16) })), /at least 32 bytes/);
  await assert.rejects(mem.connect("x", options({ channel: "" })), /channel name/);
  assert.throws(() => mem.listen("", options({ maxMessageBytes: 2 ** 31 })), /maxMessageBytes/);
});

Deno.test("handshake: a peer that is not kemari is refused with one line", async () => {
  const [a, b] = memoryPair();
  const server = secureStream(b, "server", options(), "client");
  await a.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n".padEnd(60, " ")));
  await assert.rejects(server, /not a kemari transport endpoint/);
  a.close();
});

Deno.test("authenticate=false: frames carry no tag, and still round-trip", async () => {
  const rec: Recorder[] = [];
  const [c, s] = await pair(
    options({ authenticate: false }),
    options({ authenticate: false }),
    (x) => {
      const r = new Recorder(x);
      rec.push(r);
      return r;
    },
  );
  const before = rec[0].bytes().length;
  await c.send([pattern(1000)]);
  assert.deepEqual(await s.receive(), pattern(1000));
  assert.equal(rec[0].bytes().length - before, FRAME_HEADER_BYTES + 1000);
  assert.equal(c.authenticated, false);
  closeBoth(c, s);
});

Deno.test("frame tag: matches an independent ChaCha20-Poly1305 verification", () => {
  const key = testKey(3);
  const header = new Uint8Array(12);
  header.set([5, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0]);
  const payload = pattern(5);
  const tag = frameTag(key, 1, header, [payload.subarray(0, 2), payload.subarray(2)]);
  const nonce = new Uint8Array(12);
  nonce[0] = 1;
  nonce[4] = 42;
  const d = createDecipheriv("chacha20-poly1305", key, nonce, { authTagLength: 16 });
  d.setAAD(new Uint8Array([...header, ...payload]), { plaintextLength: 0 });
  d.setAuthTag(tag);
  d.final(); // throws if the tag were wrong
  // Other direction or sequence: another tag.
  assert.ok(!constantTimeEqual(tag, frameTag(key, 0, header, [payload])));
});

Deno.test("tampering: a corrupted payload byte (faulty corrupt) fails the MAC", async () => {
  const mem = new MemoryTransport();
  const so = options();
  const listener = mem.listen("", so);
  // Offset: handshake, one frame header, then 50 bytes into the payload.
  const offset = handshakeBytes() + FRAME_HEADER_BYTES + 50;
  const ft = new FaultyTransport(mem, { seed: 1, corrupt: { offset } });
  const c = await ft.connect(listener.address, options());
  const s = (await listener[Symbol.asyncIterator]().next()).value as Link;
  await c.send([pattern(100)]);
  await assert.rejects(s.receive(), (e) => {
    assert.ok(e instanceof AuthError);
    assert.match(e.message, /tampered frame/);
    return true;
  });
  assert.deepEqual(ft.streams[0].events.map((e) => [e.kind, e.offset]), [["corrupt", offset]]);
  await waitFor("failure logged", () => so.lines.some((l) => l.includes("tampered frame")));
  c.close();
  listener.close();
});

Deno.test("tampering: a corrupted tag, header length or sequence is refused", async () => {
  const cases: [string, number, RegExp][] = [
    ["tag", handshakeBytes() + FRAME_HEADER_BYTES + 100 + 3, /tampered frame/],
    ["length", handshakeBytes() + 1, /tampered frame/],
    ["sequence", handshakeBytes() + 4, /replayed or out-of-order frame/],
    ["handshake nonce", 20, /bad key or unauthenticated peer/],
  ];
  for (const [what, offset, want] of cases) {
    const mem = new MemoryTransport({ isolated: true });
    const listener = mem.listen("", options());
    const ft = new FaultyTransport(mem, { seed: 9, corrupt: { offset } });
    const it = listener[Symbol.asyncIterator]();
    const c = await ft.connect(listener.address, options()).catch((e) => e);
    if (c instanceof Error) {
      assert.match(c.message, want, what);
      listener.close();
      continue;
    }
    const s = (await it.next()).value as Link;
    // A second message supplies the bytes a corrupted (larger) length asks for.
    const sent = Promise.all([c.send([pattern(100)]), c.send([pattern(70_000)])]).catch(() => {});
    await assert.rejects(s.receive(), want, what);
    await sent;
    c.close();
    listener.close();
  }
});

Deno.test("replay: a re-sent captured frame is refused", async () => {
  let rec!: Recorder;
  const [c, s] = await pair(options(), options(), (x) => rec = new Recorder(x));
  const start = rec.bytes().length;
  await c.send([new Uint8Array([1, 1, 1])]);
  await c.send([new Uint8Array([2, 2])]);
  const frame0 = rec.bytes().subarray(start, start + FRAME_HEADER_BYTES + 3 + TAG_BYTES);
  await rec.inner.write(frame0); // the attacker replays frame 0
  assert.deepEqual(await s.receive(), new Uint8Array([1, 1, 1]));
  assert.deepEqual(await s.receive(), new Uint8Array([2, 2]));
  await assert.rejects(s.receive(), (e) => {
    assert.ok(e instanceof AuthError);
    assert.match(e.message, /replayed or out-of-order frame.*sequence 0, expected 2/);
    return true;
  });
  closeBoth(c, s);
});

Deno.test("replay: a dropped frame makes the next one out of order", async () => {
  let rec!: Recorder;
  const [c, s] = await pair(options(), options(), (x) => rec = new Recorder(x));
  await c.send([new Uint8Array([1])]);
  rec.swallow = true;
  await c.send([new Uint8Array([2])]); // lost on the wire
  rec.swallow = false;
  await c.send([new Uint8Array([3])]);
  assert.deepEqual(await s.receive(), new Uint8Array([1]));
  await assert.rejects(s.receive(), /replayed or out-of-order frame.*sequence 2, expected 1/);
  closeBoth(c, s);
});

Deno.test("replay: a whole recorded session replayed to the listener is refused", async () => {
  const mem = new MemoryTransport();
  const so = options();
  const listener = mem.listen("", so);
  const it = listener[Symbol.asyncIterator]();
  // Session 1, recorded on the wire from the client.
  const raw = mem.dialRaw(listener.address);
  const rec = new Recorder(raw.stream);
  const [c, s] = await Promise.all([
    secureStream(rec, "client", options(), raw.peer),
    it.next().then((r) => r.value as Link),
  ]);
  await c.send([new TextEncoder().encode("transfer epoch 1")]);
  assert.equal(new TextDecoder().decode((await s.receive())!), "transfer epoch 1");
  c.close();
  assert.equal(await s.receive(), null);
  s.close();
  const recording = rec.bytes();
  // Session 2: the attacker replays every byte the client sent.
  const attacker = mem.dialRaw(listener.address);
  await attacker.stream.write(recording).catch(() => {});
  await waitFor("replay refused", () => so.lines.some((l) => l.includes("refused")));
  assert.match(
    so.lines.find((l) => l.includes("refused"))!,
    /AuthError: bad key or unauthenticated peer/,
  );
  attacker.stream.close();
  listener.close();
});

Deno.test("size limit: a frame over the receiver's maxMessageBytes is refused and the link closed", async () => {
  const so = options({ maxMessageBytes: 1 << 20 });
  const [c, s] = await pair(options(), so);
  await s.send([new Uint8Array([1])]); // a message in flight the other way is fine
  c.send([new Uint8Array(2 << 20)]).catch(() => {});
  await assert.rejects(s.receive(), (e) => {
    assert.ok(e instanceof LinkError);
    assert.match(
      e.message,
      /frame of 2097152 bytes .* exceeds maxMessageBytes \(1048576\); link closed/,
    );
    return true;
  });
  assert.ok(so.lines.some((l) => l.includes("exceeds maxMessageBytes")));
  // The receiver hung up: the sender's link fails too (its send or its next receive).
  await assert.rejects(
    (async () => {
      while (true) await c.receive();
    })(),
    LinkError,
  );
  closeBoth(c, s);
});

Deno.test("size limit: the sender refuses a message over its own limit and the link stays usable", async () => {
  const [c, s] = await pair(options({ maxMessageBytes: 10 }), options());
  await assert.rejects(
    c.send([new Uint8Array(6), new Uint8Array(5)]),
    /exceeds maxMessageBytes \(10\)/,
  );
  await c.send([new Uint8Array(10)]);
  assert.equal((await s.receive())!.length, 10);
  closeBoth(c, s);
});

Deno.test("memory use: received messages are not retained by the link (512 MiB through)", async () => {
  const [c, s] = await pair();
  const msg = new Uint8Array(1 << 20);
  const rss0 = Deno.memoryUsage().rss;
  let peak = 0;
  const sending = (async () => {
    for (let i = 0; i < 512; i++) await c.send([msg]);
  })();
  for (let i = 0; i < 512; i++) {
    assert.equal((await s.receive())!.length, 1 << 20);
    if (i % 32 === 31) peak = Math.max(peak, Deno.memoryUsage().rss - rss0);
  }
  await sending;
  // Retaining every message would grow RSS by 512 MiB or more.
  assert.ok(peak < 300 << 20, `RSS grew by ${(peak / 2 ** 20).toFixed(0)} MiB`);
  closeBoth(c, s);
});
