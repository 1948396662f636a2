/**
 * The TCP transport on 127.0.0.1 (port 0, the bound port read back): round
 * trips, 32 MiB messages, ordering, refusals, replay of a recorded session
 * over a real socket, and one-line errors for unreachable peers.
 */

import assert from "node:assert/strict";
import {
  AuthError,
  constantTimeEqual,
  FRAME_HEADER_BYTES,
  type Link,
  LinkError,
  type Listener,
  parseHostPort,
  type SecureLink,
  secureStream,
  TcpTransport,
} from "../../transport/mod.ts";
import { handshakeBytes, options, pattern, Recorder, waitFor } from "./helpers.ts";

const tcp = new TcpTransport();

async function accept(listener: Listener): Promise<Link> {
  const r = await listener[Symbol.asyncIterator]().next();
  assert.ok(!r.done);
  return r.value;
}

/** A listener on an ephemeral port and one connected, authenticated pair. */
async function connected(co = options(), so = options()) {
  const listener = tcp.listen("127.0.0.1:0", so);
  const port = parseHostPort(listener.address).port;
  assert.ok(port > 0, listener.address);
  const [c, s] = await Promise.all([tcp.connect(listener.address, co), accept(listener)]);
  return { listener, c: c as SecureLink, s: s as SecureLink };
}

async function shutdown(listener: Listener, ...links: Link[]): Promise<void> {
  for (const l of links) l.close();
  await Promise.all(links.map((l) => (l as SecureLink).closed));
  listener.close();
}

Deno.test("tcp: listen on port 0 reports the bound port; messages round-trip both ways", async () => {
  const co = options();
  const so = options();
  const { listener, c, s } = await connected(co, so);
  assert.match(listener.address, /^127\.0\.0\.1:\d+$/);
  assert.equal(c.peer, listener.address);
  await c.send([new TextEncoder().encode("checkpoint "), new TextEncoder().encode("1")]);
  assert.equal(new TextDecoder().decode((await s.receive())!), "checkpoint 1");
  await s.send([new TextEncoder().encode("ack 1")]);
  assert.equal(new TextDecoder().decode((await c.receive())!), "ack 1");
  assert.ok(co.lines.some((l) => l.includes("connected to") && l.includes("authenticated")));
  assert.ok(so.lines.some((l) => l.includes("accepted")));
  c.close();
  assert.equal(await s.receive(), null);
  await shutdown(listener, c, s);
});

Deno.test("tcp: a 32 MiB message of 3 parts arrives intact", async () => {
  const { listener, c, s } = await connected();
  const big = pattern(32 << 20, 11);
  const sent = c.send([big.subarray(0, 100), big.subarray(100, 20 << 20), big.subarray(20 << 20)]);
  const got = await s.receive();
  await sent;
  assert.ok(got && got.length === big.length && constantTimeEqual(got, big));
  assert.equal(s.stats.bytesReceived, 32 << 20);
  await shutdown(listener, c, s);
});

Deno.test("tcp: 20000 small messages of mixed sizes arrive in order", async () => {
  const { listener, c, s } = await connected();
  const n = 20_000;
  const sizes = (i: number) => (i % 97 === 0 ? 70_000 : 4 + (i % 300));
  const sending = (async () => {
    const inflight: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const m = pattern(sizes(i), i);
      new DataView(m.buffer).setUint32(0, i, true);
      inflight.push(c.send([m]));
      if (inflight.length >= 64) await inflight.shift();
    }
    await Promise.all(inflight);
  })();
  for (let i = 0; i < n; i++) {
    const m = (await s.receive())!;
    assert.equal(m.length, sizes(i));
    assert.equal(new DataView(m.buffer).getUint32(0, true), i);
  }
  await sending;
  await shutdown(listener, c, s);
});

Deno.test("tcp: a wrong key is refused on both sides with AuthError and a log line", async () => {
  const so = options({ key: new Uint8Array(32).fill(1) });
  const co = options();
  const listener = tcp.listen("127.0.0.1:0", so);
  const err = await tcp.connect(listener.address, co).catch((e) => e);
  assert.ok(err instanceof AuthError, String(err));
  assert.match(err.message, /bad key or unauthenticated peer/);
  assert.ok(co.lines.some((l) => /refused: AuthError: bad key/.test(l)));
  await waitFor("server refusal", () => so.lines.some((l) => l.includes("refused")));
  assert.match(
    so.lines.find((l) => l.includes("refused"))!,
    /AuthError: bad key or unauthenticated peer/,
  );
  listener.close();
});

Deno.test("tcp: a recorded session replayed over a fresh socket is refused", async () => {
  const so = options();
  const listener = tcp.listen("127.0.0.1:0", so);
  // Session 1: a client whose every written byte is recorded (what a wire tap sees).
  const raw = await tcp.dial(listener.address, options(), new AbortController().signal);
  const rec = new Recorder(raw.stream);
  const [c, s] = await Promise.all([
    secureStream(rec, "client", options(), raw.peer),
    accept(listener),
  ]);
  await c.send([pattern(2000)]);
  assert.equal((await s.receive())!.length, 2000);
  c.close();
  assert.equal(await s.receive(), null);
  await c.closed;
  s.close();
  const recording = rec.bytes();
  assert.ok(recording.length > handshakeBytes() + FRAME_HEADER_BYTES + 2000);
  // Session 2: the same bytes on a new connection meet a new server nonce.
  const refusals = () => so.lines.filter((l) => l.includes("refused"));
  const port = parseHostPort(listener.address).port;
  const attacker = await Deno.connect({ hostname: "127.0.0.1", port });
  await attacker.write(recording).catch(() => 0);
  await waitFor("replay refused", () => refusals().length > 0);
  assert.match(refusals()[0], /AuthError: bad key or unauthenticated peer/);
  // Nothing but the server's HELLO and PROOF came back before it hung up.
  const buf = new Uint8Array(4096);
  let total = 0;
  while (true) {
    const n = await attacker.read(buf).catch(() => null);
    if (n === null) break;
    total += n;
  }
  assert.ok(total <= handshakeBytes(), `${total} bytes came back`);
  attacker.close();
  listener.close();
});

Deno.test("tcp: connection refused is one clear line", async () => {
  // Bind and close a listener to find a port that is (almost certainly) closed.
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const err = await tcp.connect(`127.0.0.1:${port}`, options({ peerRole: "standby" })).catch((e) =>
    e
  );
  assert.ok(err instanceof LinkError);
  assert.equal(err.message, `cannot reach standby 127.0.0.1:${port}: connection refused`);
  const quiet = options();
  const err2 = await tcp.connect(`127.0.0.1:${port}`, quiet).catch((e) => e);
  assert.equal(err2.message, `cannot reach 127.0.0.1:${port}: connection refused`);
  assert.deepEqual(quiet.lines, [], "callers retry: an unreachable peer is not logged per attempt");
});

Deno.test("tcp: bad addresses, unknown hosts and ports in use are one-line LinkErrors", async () => {
  await assert.rejects(
    tcp.connect("localhost", options()),
    /bad address "localhost": expected host:port/,
  );
  await assert.rejects(tcp.connect("127.0.0.1:99999", options()), /bad address/);
  const err = await tcp.connect("no-such-host.invalid:7000", options()).catch((e) => e);
  assert.ok(err instanceof LinkError);
  assert.match(err.message, /^cannot reach no-such-host\.invalid:7000: unknown host$/);
  const l = tcp.listen("127.0.0.1:0", options());
  assert.throws(
    () => tcp.listen(l.address, options()),
    /cannot listen on 127\.0\.0\.1:\d+: address in use/,
  );
  l.close();
  assert.deepEqual(parseHostPort("[::1]:7000"), { hostname: "::1", port: 7000 });
});

Deno.test("tcp: a peer that never answers the handshake times out", async () => {
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (silent.addr as Deno.NetAddr).port;
  const accepted = silent.accept();
  const t0 = performance.now();
  const err = await tcp.connect(`127.0.0.1:${port}`, options({ timeoutMs: 300 })).catch((e) => e);
  assert.ok(err instanceof LinkError);
  assert.match(
    err.message,
    /connecting to 127\.0\.0\.1:\d+ \(replication\) timed out after 300 ms/,
  );
  assert.ok(performance.now() - t0 < 3000);
  (await accepted).close();
  silent.close();
});

Deno.test("tcp: a client that never speaks is dropped by the listener's handshake deadline", async () => {
  const so = options({ timeoutMs: 200 });
  const listener = tcp.listen("127.0.0.1:0", so);
  const mute = await Deno.connect({
    hostname: "127.0.0.1",
    port: parseHostPort(listener.address).port,
  });
  await waitFor("deadline", () => so.lines.some((l) => l.includes("timed out")));
  assert.match(
    so.lines.find((l) => l.includes("refused"))!,
    /handshake with .* timed out after 200 ms/,
  );
  // A good client still gets in afterwards.
  const c = await tcp.connect(listener.address, options());
  const s = await accept(listener);
  await c.send([new Uint8Array([7])]);
  assert.deepEqual(await s.receive(), new Uint8Array([7]));
  mute.close();
  await shutdown(listener, c, s);
});

Deno.test("tcp: listener.close() ends iteration and closes links nobody took", async () => {
  const listener = tcp.listen("127.0.0.1:0", options());
  const c = await tcp.connect(listener.address, options());
  await new Promise((r) => setTimeout(r, 20)); // the server side is now queued
  listener.close();
  const r = await listener[Symbol.asyncIterator]().next();
  assert.equal(r.done, true);
  assert.equal(await c.receive(), null); // the queued server link said goodbye
  c.close();
  await (c as SecureLink).closed;
});
