/**
 * The tap bus: the taps attached to one VM, attachable and detachable while
 * it runs, and the one place events reach them.
 * @module
 */

import type { Tap, TapDevice, TapEvent } from "./types.ts";

/** Per-tap counters (metrics). */
export interface TapStats {
  name: string;
  devices: readonly TapDevice[];
  direction: string;
  events: number;
  holds: number;
  timeouts: number;
  errors: number;
  holdMsTotal: number;
  holdMsMax: number;
}

/** The tap is malformed or the name is taken. */
export class TapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TapError";
  }
}

const DEVICES = new Set(["disk", "net", "console"]);

/** Checks that `v` has the shape of a Tap. */
export function validateTap(v: unknown, origin: string): Tap {
  const t = v as Partial<Tap> | null;
  if (!t || typeof t !== "object") throw new TapError(`${origin}: not a tap object`);
  if (typeof t.name !== "string" || !/^[\w.-]{1,64}$/.test(t.name)) {
    throw new TapError(`${origin}: a tap needs a name of 1-64 letters, digits, . _ -`);
  }
  if (
    !Array.isArray(t.devices) || t.devices.length === 0 || !t.devices.every((d) => DEVICES.has(d))
  ) {
    throw new TapError(`${origin}: devices must list some of disk, net, console`);
  }
  if (t.direction !== "in" && t.direction !== "out" && t.direction !== "both") {
    throw new TapError(`${origin}: direction must be in, out or both`);
  }
  if (typeof t.onEvent !== "function") throw new TapError(`${origin}: onEvent must be a function`);
  return t as Tap;
}

export class TapBus {
  #taps = new Map<string, { tap: Tap; stats: TapStats }>();

  constructor(
    readonly holdTimeoutMs = 1000,
    readonly log: (line: string) => void = (l) => console.error(l),
  ) {}

  attach(tap: Tap): void {
    validateTap(tap, "tap");
    if (this.#taps.has(tap.name)) throw new TapError(`a tap named ${tap.name} is already attached`);
    this.#taps.set(tap.name, {
      tap,
      stats: {
        name: tap.name,
        devices: [...tap.devices],
        direction: tap.direction,
        events: 0,
        holds: 0,
        timeouts: 0,
        errors: 0,
        holdMsTotal: 0,
        holdMsMax: 0,
      },
    });
  }

  async detach(name: string): Promise<void> {
    const entry = this.#taps.get(name);
    if (!entry) throw new TapError(`no tap named ${name} is attached`);
    this.#taps.delete(name);
    try {
      await entry.tap.close?.();
    } catch (e) {
      this.log(`kemari: tap ${name}: close failed: ${e instanceof Error ? e.message : e}`);
    }
  }

  list(): TapStats[] {
    return [...this.#taps.values()].map((e) => ({ ...e.stats }));
  }

  /** True when some tap watches this device and direction (so callers can skip copying). */
  wants(device: TapDevice, direction: "in" | "out"): boolean {
    for (const { tap } of this.#taps.values()) {
      if (
        tap.devices.includes(device) && (tap.direction === "both" || tap.direction === direction)
      ) {
        return true;
      }
    }
    return false;
  }

  /**
   * Calls every interested tap. Returns null when none holds the event, or a
   * promise that resolves when every hold settled or timed out. Never rejects.
   */
  emit(event: TapEvent): Promise<void> | null {
    const holds: Promise<void>[] = [];
    for (const { tap, stats } of this.#taps.values()) {
      if (!tap.devices.includes(event.device)) continue;
      if (tap.direction !== "both" && tap.direction !== event.direction) continue;
      stats.events++;
      let r: void | Promise<unknown>;
      try {
        r = tap.onEvent({ ...event, data: event.data?.slice() });
      } catch (e) {
        stats.errors++;
        this.log(`kemari: tap ${tap.name} failed: ${e instanceof Error ? e.message : e}`);
        continue;
      }
      if (r && typeof (r as Promise<unknown>).then === "function") {
        stats.holds++;
        holds.push(this.#bounded(tap.name, stats, r as Promise<unknown>));
      }
    }
    return holds.length ? Promise.all(holds).then(() => {}) : null;
  }

  #bounded(name: string, stats: TapStats, p: Promise<unknown>): Promise<void> {
    const start = performance.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), this.holdTimeoutMs);
    });
    return Promise.race([p.then(() => "ok" as const, () => "error" as const), timeout]).then(
      (r) => {
        clearTimeout(timer);
        const held = performance.now() - start;
        stats.holdMsTotal += held;
        stats.holdMsMax = Math.max(stats.holdMsMax, held);
        if (r === "timeout") {
          stats.timeouts++;
          this.log(`kemari: tap ${name} held an event past ${this.holdTimeoutMs} ms; let it go`);
        } else if (r === "error") {
          stats.errors++;
          this.log(`kemari: tap ${name} rejected an event hold; let it go`);
        }
      },
    );
  }

  async closeAll(): Promise<void> {
    for (const name of [...this.#taps.keys()]) await this.detach(name);
  }
}
