import { deepStrictEqual, equal, throws } from "node:assert/strict";
import { DeviceStateError, EventPage, RateLimitedLog } from "../../devices/mod.ts";
import { EVENTS, GPA } from "../../machine/layout.ts";
import { harvest, LogCapture, newMemory } from "./guest.ts";

Deno.test("events: notify adds 1 to seq, wakes, and dirties the event page", () => {
  const mem = newMemory();
  let wakes = 0;
  const events = new EventPage(mem, () => wakes++);
  mem.view.setUint32(GPA.events + EVENTS.seq, 0xffff_ffff, true);
  events.notify();
  equal(events.seq, 0, "seq wraps as a u32");
  events.notify();
  equal(mem.view.getUint32(GPA.events + EVENTS.seq, true), 1);
  equal(wakes, 2);
  deepStrictEqual(harvest(mem), [GPA.events / 4096]);
});

Deno.test("events: badRequest counts, logs one line and notifies", () => {
  const mem = newMemory();
  const log = new LogCapture();
  let wakes = 0;
  const events = new EventPage(mem, () => wakes++, { logger: log.logger });
  events.badRequest("block: something odd");
  equal(events.badRequests, 1);
  equal(mem.view.getUint32(GPA.events + EVENTS.badRequests, true), 1);
  equal(events.seq, 1);
  equal(wakes, 1);
  deepStrictEqual(log.lines, ["kemari: refused guest request: block: something odd"]);
  deepStrictEqual(events.counters, { notifications: 1, badRequests: 1 });
});

Deno.test("events: bad-request logging is limited to 10 lines per second", () => {
  const mem = newMemory();
  const log = new LogCapture();
  let now = 5_000;
  const events = new EventPage(mem, () => {}, { logger: log.logger, now: () => now });
  for (let i = 0; i < 25; i++) events.badRequest(`r${i}`);
  equal(log.lines.length, 10);
  equal(events.badRequests, 25, "every request is still counted");
  now += 999;
  events.badRequest("still the same window");
  equal(log.lines.length, 10);
  now += 1;
  events.badRequest("next window");
  deepStrictEqual(log.lines.slice(10), [
    "(16 more suppressed)",
    "kemari: refused guest request: next window",
  ]);
  events.flushLog();
  equal(log.lines.length, 12, "nothing pending to flush");
});

Deno.test("events: RateLimitedLog.flush emits the pending count", () => {
  const log = new LogCapture();
  const limiter = new RateLimitedLog({ logger: log.logger, now: () => 0, maxPerWindow: 2 });
  for (let i = 0; i < 5; i++) limiter.log(`l${i}`);
  equal(limiter.suppressed, 3);
  limiter.flush();
  deepStrictEqual(log.lines, ["l0", "l1", "(3 more suppressed)"]);
});

Deno.test("events: save/restore round-trips and rejects corrupt states", () => {
  const mem = newMemory();
  const events = new EventPage(mem, () => {}, { logger: () => {} });
  events.notify();
  events.badRequest("x");
  const saved = events.save();
  const other = new EventPage(newMemory(), () => {});
  other.restore(JSON.parse(JSON.stringify(saved)));
  deepStrictEqual(other.counters, { notifications: 2, badRequests: 1 });
  for (
    const bad of [
      null,
      [],
      "x",
      {},
      { version: 1, notifications: 1 },
      { version: 2, notifications: 1, badRequests: 0 },
      { version: 1, notifications: -1, badRequests: 0 },
      { version: 1, notifications: 1.5, badRequests: 0 },
      { version: 1, notifications: "1", badRequests: 0 },
    ]
  ) {
    throws(() => other.restore(bad), DeviceStateError, JSON.stringify(bad));
  }
  deepStrictEqual(other.counters, { notifications: 2, badRequests: 1 });
});
