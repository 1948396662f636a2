/**
 * The console backend: a Xen `xencons_interface` at GPA.console.
 *
 * The guest produces `out[]` (out_prod) and consumes `in[]` (in_cons); the
 * backend consumes `out[]` and produces `in[]`. The backend's own indexes
 * (out_cons, in_prod) are kept privately and only copied to the page, so a
 * guest scribbling on them cannot confuse the backend.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { GPA } from "../machine/layout.ts";
import type { Device, DeviceState } from "./device.ts";
import type { ConsoleSink } from "./console_sink.ts";
import type { EventPage } from "./events.ts";
import { SharedWords, u32Distance } from "./shared_words.ts";
import { StateReader } from "./state_reader.ts";

/** Layout of struct xencons_interface. */
export const XENCONS = {
  in: 0,
  inSize: 1024,
  out: 1024,
  outSize: 2048,
  inCons: 3072,
  inProd: 3076,
  outCons: 3080,
  outProd: 3084,
} as const;

/** Longest line kept for status, in bytes. */
export const STATUS_LINE_MAX = 256;

/** Console counters for status and metrics. */
export interface ConsoleCounters {
  /** Bytes handed to the sink. */
  bytesOut: number;
  /** Bytes accepted by push(). */
  bytesIn: number;
  /** Input bytes push() could not fit. */
  inputDropped: number;
  /** Times the guest's out_prod was more than a ring ahead. */
  overruns: number;
}

/** Backend of the guest console. */
export class ConsoleBackend implements Device {
  readonly name = "console";
  readonly #words: SharedWords;
  readonly #base = GPA.console;
  #outCons = 0;
  #inProd = 0;
  #counters: ConsoleCounters = { bytesOut: 0, bytesIn: 0, inputDropped: 0, overruns: 0 };
  readonly #line = new LineTracker();

  /** A console at GPA.console whose output goes to `sink`. */
  constructor(readonly mem: GuestMemory, readonly events: EventPage, readonly sink: ConsoleSink) {
    this.#words = new SharedWords(mem);
    mem.check(this.#base, XENCONS.outProd + 4);
  }

  /**
   * Moves everything in out[out_cons..out_prod) to the sink and notifies the
   * guest (it may be waiting for room). True if out_cons moved. out_cons is
   * advanced before the sink is called, so a sink that throws (a host I/O
   * error, passed on to the caller) loses that chunk but never repeats it.
   */
  service(): boolean {
    const outProd = this.#words.load(this.#base + XENCONS.outProd);
    const count = u32Distance(outProd, this.#outCons);
    if (count === 0) return false;
    if (count > XENCONS.outSize) {
      const reason =
        `console: out_prod ${outProd} is ${count} bytes past out_cons ${this.#outCons}`;
      this.#counters.overruns++;
      this.#setOutCons(outProd);
      this.events.badRequest(reason);
      return true;
    }
    const bytes = this.#copyOut(count);
    this.#setOutCons((this.#outCons + count) >>> 0);
    this.events.notify();
    this.#counters.bytesOut += count;
    this.#line.feed(bytes);
    this.sink.write(bytes);
    return true;
  }

  /**
   * Queues input for the guest. Returns how many leading bytes fit; the rest
   * is dropped (and counted). Notifies the guest if anything was accepted.
   */
  push(bytes: Uint8Array): number {
    const inCons = this.#words.load(this.#base + XENCONS.inCons);
    const used = u32Distance(this.#inProd, inCons);
    if (used > XENCONS.inSize) {
      this.#counters.inputDropped += bytes.length;
      this.events.badRequest(
        `console: in_cons ${inCons} is ${used} bytes behind in_prod ${this.#inProd}`,
      );
      return 0;
    }
    const accepted = Math.min(bytes.length, XENCONS.inSize - used);
    this.#copyIn(bytes.subarray(0, accepted));
    this.#counters.inputDropped += bytes.length - accepted;
    if (accepted === 0) return 0;
    this.#inProd = (this.#inProd + accepted) >>> 0;
    this.#words.store(this.#base + XENCONS.inProd, this.#inProd);
    this.#counters.bytesIn += accepted;
    this.events.notify();
    return accepted;
  }

  /** A copy of the counters. */
  get counters(): ConsoleCounters {
    return { ...this.#counters };
  }

  /** The last complete line of output (control characters replaced), for status. */
  get lastLine(): string {
    return this.#line.last;
  }

  /** The backend's out_cons and in_prod. */
  get indexes(): { outCons: number; inProd: number } {
    return { outCons: this.#outCons, inProd: this.#inProd };
  }

  save(): DeviceState {
    return {
      version: 1,
      outCons: this.#outCons,
      inProd: this.#inProd,
      counters: { ...this.#counters },
      lastLine: this.#line.last,
      partialLine: this.#line.partial(),
    };
  }

  restore(state: unknown): void {
    const reader = StateReader.of(this.name, state);
    reader.version(1);
    const outCons = reader.u32("outCons");
    const inProd = reader.u32("inProd");
    const c = reader.object("counters");
    const counters: ConsoleCounters = {
      bytesOut: c.count("bytesOut"),
      bytesIn: c.count("bytesIn"),
      inputDropped: c.count("inputDropped"),
      overruns: c.count("overruns"),
    };
    const lastLine = reader.string("lastLine", STATUS_LINE_MAX);
    const partialLine = reader.string("partialLine", STATUS_LINE_MAX);
    this.#outCons = outCons;
    this.#inProd = inProd;
    this.#counters = counters;
    this.#line.adopt(lastLine, partialLine);
  }

  #setOutCons(value: number): void {
    this.#outCons = value;
    this.#words.store(this.#base + XENCONS.outCons, value);
  }

  /** Copies `count` bytes starting at out_cons out of the ring (at most two pieces). */
  #copyOut(count: number): Uint8Array {
    const out = new Uint8Array(count);
    const start = this.#outCons & (XENCONS.outSize - 1);
    const first = Math.min(count, XENCONS.outSize - start);
    out.set(this.mem.read(this.#base + XENCONS.out + start, first));
    out.set(this.mem.read(this.#base + XENCONS.out, count - first), first);
    return out;
  }

  /** Copies `bytes` into in[] starting at in_prod (at most two pieces). */
  #copyIn(bytes: Uint8Array): void {
    const start = this.#inProd & (XENCONS.inSize - 1);
    const first = Math.min(bytes.length, XENCONS.inSize - start);
    this.mem.write(this.#base + XENCONS.in + start, bytes.subarray(0, first));
    if (first < bytes.length) this.mem.write(this.#base + XENCONS.in, bytes.subarray(first));
  }
}

/** Remembers the last complete line of a byte stream, capped in length. */
class LineTracker {
  last = "";
  #pending = new Uint8Array(STATUS_LINE_MAX);
  #length = 0;

  feed(bytes: Uint8Array): void {
    for (const byte of bytes) {
      if (byte === 0x0a) {
        this.last = this.partial();
        this.#length = 0;
      } else if (byte !== 0x0d && this.#length < STATUS_LINE_MAX) {
        this.#pending[this.#length++] = byte;
      }
    }
  }

  /** The incomplete line so far, decoded. */
  partial(): string {
    return printable(new TextDecoder().decode(this.#pending.subarray(0, this.#length)))
      .slice(0, STATUS_LINE_MAX);
  }

  adopt(last: string, partial: string): void {
    this.last = last;
    const bytes = new TextEncoder().encode(partial).subarray(0, STATUS_LINE_MAX);
    this.#pending.set(bytes);
    this.#length = bytes.length;
  }
}

/** Replaces C0 control characters (except tab) and DEL with "?". */
function printable(text: string): string {
  let out = "";
  for (const ch of text) {
    const code = ch.codePointAt(0) ?? 0;
    out += (code < 0x20 && code !== 0x09) || code === 0x7f ? "?" : ch;
  }
  return out;
}
