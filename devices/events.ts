/**
 * The event page (struct kemari_events at GPA.events): the one notification
 * channel from the VMM to the guest. The guest waits (KEMARI_HC_WAIT) until
 * `seq` moves; every backend calls {@link EventPage.notify} after posting
 * anything. `bad_requests` counts malformed guest requests the VMM refused.
 *
 * Both words live in guest RAM (the page is read-only to the guest), so they
 * travel with the memory image; save() carries only host-side counters.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { EVENTS, GPA } from "../machine/layout.ts";
import type { Device, DeviceState } from "./device.ts";
import { RateLimitedLog, type RateLimitOptions } from "./log_limiter.ts";
import { SharedWords } from "./shared_words.ts";
import { StateReader } from "./state_reader.ts";

/** Host-side counters of the event page. */
export interface EventCounters {
  /** notify() calls (including those made by badRequest). */
  notifications: number;
  /** badRequest() calls. */
  badRequests: number;
}

/** Options of {@link EventPage}: where and how fast bad-request lines are logged. */
export type EventPageOptions = RateLimitOptions;

/** Writer of the guest's event page. */
export class EventPage implements Device {
  readonly name = "events";
  readonly #words: SharedWords;
  readonly #log: RateLimitedLog;
  #counters: EventCounters = { notifications: 0, badRequests: 0 };

  /** `wake` is called on every notify (e.g. to kick a vCPU blocked in KEMARI_HC_WAIT). */
  constructor(
    readonly mem: GuestMemory,
    readonly wake: () => void,
    options: EventPageOptions = {},
  ) {
    this.#words = new SharedWords(mem);
    this.#log = new RateLimitedLog(options);
  }

  /** Adds 1 to the guest-visible seq and wakes a waiting vCPU. */
  notify(): void {
    this.#words.add(GPA.events + EVENTS.seq, 1);
    this.#counters.notifications++;
    this.wake();
  }

  /** Counts a refused guest request, logs `reason` (rate limited) and notifies. */
  badRequest(reason: string): void {
    this.#words.add(GPA.events + EVENTS.badRequests, 1);
    this.#counters.badRequests++;
    this.#log.log(`kemari: refused guest request: ${reason}`);
    this.notify();
  }

  /** Emits a pending "(N more suppressed)" line. */
  flushLog(): void {
    this.#log.flush();
  }

  /** The guest-visible seq. */
  get seq(): number {
    return this.#words.load(GPA.events + EVENTS.seq);
  }

  /** The guest-visible bad_requests. */
  get badRequests(): number {
    return this.#words.load(GPA.events + EVENTS.badRequests);
  }

  /** A copy of the host-side counters. */
  get counters(): EventCounters {
    return { ...this.#counters };
  }

  /** The event page has no requests to take. */
  service(): boolean {
    return false;
  }

  /** Host-side counters (the guest-visible words are in guest RAM). */
  save(): DeviceState {
    return { version: 1, ...this.#counters };
  }

  /** Validates and adopts a saved state. Throws DeviceStateError. */
  restore(state: unknown): void {
    const reader = StateReader.of(this.name, state);
    reader.version(1);
    const counters = {
      notifications: reader.count("notifications"),
      badRequests: reader.count("badRequests"),
    };
    this.#counters = counters;
  }
}
