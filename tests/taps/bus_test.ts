import assert from "node:assert/strict";
import { loadTap, parseTapOptions, TapBus, TapError } from "../../taps/mod.ts";
import type { Tap, TapEvent } from "../../taps/mod.ts";
import { tempDir } from "../support/kemari.ts";

const event = (over: Partial<TapEvent> = {}): TapEvent => ({
  device: "console",
  direction: "out",
  kind: "bytes",
  bytes: 3,
  epoch: 1,
  timeMs: 0,
  data: new Uint8Array([1, 2, 3]),
  ...over,
});

function recorder(name: string, devices: Tap["devices"], direction: Tap["direction"]) {
  const seen: TapEvent[] = [];
  const tap: Tap = { name, devices, direction, onEvent: (e) => void seen.push(e) };
  return { tap, seen };
}

Deno.test("taps: events reach only taps that watch that device and direction", () => {
  const bus = new TapBus();
  const out = recorder("out", ["console"], "out");
  const disk = recorder("disk", ["disk"], "both");
  bus.attach(out.tap);
  bus.attach(disk.tap);
  assert.equal(bus.emit(event()), null, "nobody held the event");
  bus.emit(event({ direction: "in" }));
  bus.emit(event({ device: "disk", kind: "write" }));
  assert.equal(out.seen.length, 1);
  assert.equal(disk.seen.length, 1);
  assert.equal(bus.wants("net", "out"), false);
});

Deno.test("taps: a tap gets a copy and cannot change the payload", () => {
  const bus = new TapBus();
  bus.attach({
    name: "vandal",
    devices: ["console"],
    direction: "out",
    onEvent: (e) => void e.data!.fill(0),
  });
  const e = event();
  bus.emit(e);
  assert.deepEqual([...e.data!], [1, 2, 3]);
});

Deno.test("taps: a hold lasts until the promise settles, bounded by the timeout", async () => {
  const lines: string[] = [];
  const bus = new TapBus(50, (l) => lines.push(l));
  let release!: () => void;
  bus.attach({
    name: "slow",
    devices: ["disk"],
    direction: "out",
    onEvent: () => new Promise<void>((r) => (release = r)),
  });
  let done = false;
  const p = bus.emit(event({ device: "disk" }))!.then(() => (done = true));
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(done, false, "still held");
  release();
  await p;
  assert.equal(done, true);
  bus.attach({
    name: "hung",
    devices: ["disk"],
    direction: "out",
    onEvent: () => new Promise(() => {}),
  });
  const t0 = performance.now();
  await bus.emit(event({ device: "disk" }));
  assert.ok(performance.now() - t0 < 1000);
  assert.match(lines.join("\n"), /tap hung held an event past 50 ms/);
  const stats = bus.list().find((s) => s.name === "hung")!;
  assert.equal(stats.timeouts, 1);
});

Deno.test("taps: a throwing tap is logged and does not stop others", () => {
  const lines: string[] = [];
  const bus = new TapBus(100, (l) => lines.push(l));
  bus.attach({
    name: "bad",
    devices: ["console"],
    direction: "both",
    onEvent: () => {
      throw new Error("boom");
    },
  });
  const good = recorder("good", ["console"], "both");
  bus.attach(good.tap);
  bus.emit(event());
  assert.equal(good.seen.length, 1);
  assert.match(lines[0], /tap bad failed: boom/);
});

Deno.test("taps: attach and detach at runtime; names are unique; shapes are checked", async () => {
  const bus = new TapBus();
  const a = recorder("a", ["net"], "in");
  bus.attach(a.tap);
  assert.throws(() => bus.attach(a.tap), /already attached/);
  assert.throws(
    () => bus.attach({ name: "x", devices: ["floppy"], direction: "in", onEvent() {} } as never),
    TapError,
  );
  await bus.detach("a");
  bus.emit(event({ device: "net", direction: "in" }));
  assert.equal(a.seen.length, 0);
  await assert.rejects(() => bus.detach("a"), /no tap named a/);
});

Deno.test("taps: modules load from a path; built-ins metrics and trace work", async () => {
  await using dir = await tempDir();
  const mod = `${dir.path}/my_tap.ts`;
  await Deno.writeTextFile(
    mod,
    `export default (o) => ({ name: o.name ?? "mine", devices: ["disk"], direction: "out", onEvent() {} });`,
  );
  const tap = await loadTap(mod, parseTapOptions("name=custom"));
  assert.equal(tap.name, "custom");
  await assert.rejects(() => loadTap(`${dir.path}/nope.ts`), /does not exist/);
  await Deno.writeTextFile(`${dir.path}/bad.ts`, `export default { name: "b" };`);
  await assert.rejects(() => loadTap(`${dir.path}/bad.ts`), /devices must list/);

  const metrics = await loadTap("metrics") as ReturnType<
    typeof import("../../taps/metrics.ts").metricsTap
  >;
  const bus = new TapBus();
  bus.attach(metrics);
  const trace = await loadTap("trace", { file: `${dir.path}/trace.jsonl` });
  bus.attach(trace);
  bus.emit(event());
  bus.emit(event({ device: "disk", kind: "write", bytes: 512, sector: 7n }));
  assert.deepEqual(metrics.counts()["disk/out/write"], { events: 1, bytes: 512 });
  await bus.closeAll();
  const lines = (await Deno.readTextFile(`${dir.path}/trace.jsonl`)).trim().split("\n");
  assert.equal(lines.length, 2);
  assert.equal(JSON.parse(lines[1]).sector, "7");
});
