/** transportByName and the error classes. */

import assert from "node:assert/strict";
import {
  AuthError,
  LinkClosedError,
  LinkError,
  MemoryTransport,
  RdmaTransport,
  TcpTransport,
  transportByName,
} from "../../transport/mod.ts";
import { options } from "./helpers.ts";

Deno.test("transportByName: tcp, memory, rdma; unknown names are refused", () => {
  assert.ok(transportByName("tcp") instanceof TcpTransport);
  assert.ok(transportByName("memory") instanceof MemoryTransport);
  assert.ok(transportByName("rdma") instanceof RdmaTransport);
  assert.equal(transportByName("tcp").name, "tcp");
  assert.throws(
    () => transportByName("udp"),
    /unknown transport "udp" \(known: tcp, memory, rdma\)/,
  );
});

Deno.test('transportByName("memory"): separate instances meet through the shared address table', async () => {
  const listener = transportByName("memory").listen("mod-test-standby", options());
  const c = await transportByName("memory").connect("mod-test-standby", options());
  const s = (await listener[Symbol.asyncIterator]().next()).value!;
  await c.send([new Uint8Array([42])]);
  assert.deepEqual(await s.receive(), new Uint8Array([42]));
  assert.throws(
    () => transportByName("memory").listen("mod-test-standby", options()),
    /address in use/,
  );
  c.close();
  assert.equal(await s.receive(), null);
  s.close();
  listener.close();
  await assert.rejects(
    transportByName("memory").connect("mod-test-standby", options({ peerRole: "primary" })),
    /^LinkError: cannot reach primary mod-test-standby: nothing listens there/,
  );
});

Deno.test("errors: AuthError and LinkClosedError are LinkErrors with their own names", () => {
  const a = new AuthError("tampered frame");
  const c = new LinkClosedError();
  assert.ok(a instanceof LinkError && c instanceof LinkError && a instanceof Error);
  assert.equal(a.name, "AuthError");
  assert.equal(c.name, "LinkClosedError");
  assert.equal(new LinkError("x").name, "LinkError");
  assert.equal(c.message, "link is closed");
});
