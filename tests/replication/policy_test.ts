import assert from "node:assert/strict";
import { CheckpointPolicy } from "../../replication/policy.ts";
import { FailureDetector } from "../../replication/detector.ts";

Deno.test("policy kemari: an output asks for a checkpoint at once; release after the ack", () => {
  const p = new CheckpointPolicy({ mode: "kemari", intervalMs: 25, maxIntervalMs: 100 }, 0);
  assert.deepEqual(p.next(1000), { kind: "wait", untilMs: null }, "no output, no checkpoint");
  p.outputHeld();
  assert.deepEqual(p.next(1000), { kind: "checkpoint", epoch: 1 });
  p.taken(1, 1000);
  p.outputHeld(); // produced after the snapshot: waits for epoch 2
  assert.deepEqual(p.next(1001), { kind: "wait", untilMs: null });
  assert.equal(p.acknowledged(2), false, "an ack for an epoch not in flight is ignored");
  assert.equal(p.acknowledged(1), true);
  assert.deepEqual(p.next(1002), { kind: "release", epoch: 1 });
  p.released(1);
  assert.deepEqual(p.next(1002), { kind: "checkpoint", epoch: 2 });
});

Deno.test("policy remus: periodic epochs whatever the outputs", () => {
  const p = new CheckpointPolicy({ mode: "remus", intervalMs: 25, maxIntervalMs: 100 }, 0);
  p.outputHeld();
  assert.deepEqual(p.next(10), { kind: "wait", untilMs: 25 });
  assert.deepEqual(p.next(25), { kind: "checkpoint", epoch: 1 });
  p.taken(1, 25);
  p.acknowledged(1);
  assert.deepEqual(p.next(26), { kind: "release", epoch: 1 });
  p.released(1);
  assert.deepEqual(p.next(30), { kind: "wait", untilMs: 50 });
});

Deno.test("policy hybrid: event-driven plus a maximum interval", () => {
  const p = new CheckpointPolicy({ mode: "hybrid", intervalMs: 25, maxIntervalMs: 100 }, 0);
  assert.deepEqual(p.next(50), { kind: "wait", untilMs: 100 });
  assert.deepEqual(p.next(100), { kind: "checkpoint", epoch: 1 });
  p.taken(1, 100);
  p.acknowledged(1);
  p.released(1);
  p.outputHeld();
  assert.deepEqual(p.next(101), { kind: "checkpoint", epoch: 2 });
});

Deno.test("policy: one checkpoint in flight; a lost link drops it; order is enforced", () => {
  const p = new CheckpointPolicy({ mode: "kemari", intervalMs: 25, maxIntervalMs: 100 }, 0);
  p.outputHeld();
  p.taken(1, 0);
  assert.throws(() => p.taken(2, 1), /out of order/);
  p.linkLost();
  assert.equal(p.inFlight, null);
  p.force();
  assert.deepEqual(p.next(2), { kind: "checkpoint", epoch: 2 });
});

Deno.test("detector: lost only when every path is silent for the timeout", () => {
  const d = new FailureDetector(["link", "second"], 500, 0);
  d.heard("link", 100);
  d.heard("second", 400);
  assert.equal(d.lost(800), false, "the second path spoke 400 ms ago");
  assert.equal(d.lost(900), true);
  d.heard("link", 950);
  assert.equal(d.lost(1000), false);
  assert.throws(() => d.heard("nope", 1), /unknown heartbeat path/);
});
