/**
 * The console backend: a Xen `xencons_interface` at GPA.console.
 *
 * The guest produces `out[]` (out_prod) and consumes `in[]` (in_cons); the
 * backend consumes `out[]` and produces `in[]`. The backend's own indexes
 * (out_cons, in_prod) are kept privately and only copied to the page, so a
 * guest scribbling on them cannot confuse the backend.
 *
 * Output commit: while the {@link OutputGate} is holding, bytes taken from
 * out[] are not written to the sink but kept in a queue of held chunks, each
 * tagged with the epoch (next checkpoint) that covers it, and written when
 * the engine calls {@link ConsoleBackend.release}. Held chunks are device
 * state: they are saved and restored with the rest, and a standby that takes
 * over writes them with {@link ConsoleBackend.releaseAll} (at least once, in
 * order).
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { GPA } from "../machine/layout.ts";
import type { Device, DeviceObserver, DeviceState } from "./device.ts";
import type { ConsoleSink } from "./console_sink.ts";
import type { EventPage } from "./events.ts";
import {
  checkEpoch,
  type HeldSummary,
  holdEpoch,
  OPEN_GATE,
  type OutputGate,
} from "./output_gate.ts";
import { SharedWords, u32Distance } from "./shared_words.ts";
import { encodeBase64, StateReader } from "./state_reader.ts";

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

/**
 * Largest held chunk: output of one epoch taken by consecutive service()
 * calls is merged into the last chunk up to this size, so line-at-a-time
 * output does not use one chunk per line.
 */
export const CONSOLE_CHUNK_MAX = 4096;

/**
 * Hard caps on held console output, whatever the gate says: service()
 * leaves bytes in the ring rather than pass them, and restore() refuses a
 * state beyond them.
 */
export const CONSOLE_HELD_CAP = { bytes: 64 * 1024 * 1024, count: 16384 } as const;

/** Why the last service() left output in the ring. */
export type ConsoleStall =
  /** The gate's mayHold() said no (or the hard cap was reached). */
  | "hold-limit"
  /** Chunks are held but the gate no longer holds: the engine must releaseAll() first. */
  | "release-pending";

/** One chunk of held output. */
interface HeldChunk {
  epoch: number;
  bytes: Uint8Array;
}

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
  #gate: OutputGate = OPEN_GATE;
  #held: HeldChunk[] = [];
  #heldBytes = 0;
  #stall: ConsoleStall | null = null;

  /** A console at GPA.console whose output goes to `sink`. */
  constructor(readonly mem: GuestMemory, readonly events: EventPage, readonly sink: ConsoleSink) {
    this.#words = new SharedWords(mem);
    mem.check(this.#base, XENCONS.outProd + 4);
  }

  /**
   * Takes everything in out[out_cons..out_prod) and notifies the guest (it
   * may be waiting for room). True if out_cons moved.
   *
   * Unprotected, the bytes go to the sink at once. out_cons is advanced
   * before the sink is called, so a sink that throws (a host I/O error,
   * passed on to the caller) loses that chunk but never repeats it.
   *
   * While the gate is holding, the bytes are held (see {@link release}) and
   * the gate is told; if the gate's mayHold() says no, or the hard cap
   * {@link CONSOLE_HELD_CAP} is reached, nothing is taken and the guest
   * waits on its full ring. If chunks are still held but the gate no longer
   * holds, nothing is taken either (output must not overtake held output)
   * until the engine calls {@link releaseAll}. See {@link stalled}.
   */
  service(): boolean {
    this.#stall = null;
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
    const gate = this.#gate;
    if (!gate.holding) {
      if (this.#held.length > 0) {
        this.#stall = "release-pending";
        return false;
      }
      const bytes = this.#copyOut(count);
      this.#setOutCons((this.#outCons + count) >>> 0);
      this.events.notify();
      this.#emit(bytes);
      return true;
    }
    const epoch = holdEpoch(gate, this.#held.at(-1)?.epoch);
    const underCap = this.#heldBytes + XENCONS.outSize <= CONSOLE_HELD_CAP.bytes &&
      this.#held.length < CONSOLE_HELD_CAP.count;
    if (!underCap || !gate.mayHold(this.name, this.#heldBytes, this.#held.length)) {
      this.#stall = "hold-limit";
      return false;
    }
    const bytes = this.#copyOut(count);
    this.#setOutCons((this.#outCons + count) >>> 0);
    this.#hold(epoch, bytes);
    this.events.notify();
    gate.outputHeld(this.name, count);
    return true;
  }

  /** The output gate in use (default {@link OPEN_GATE}). */
  get gate(): OutputGate {
    return this.#gate;
  }

  /**
   * Switches the gate; takes effect at the next service(). Held chunks stay
   * held: when protection ends the engine calls {@link releaseAll}.
   */
  setGate(gate: OutputGate): void {
    this.#gate = gate;
  }

  /**
   * Writes to the sink, in order, every held chunk of an epoch up to
   * `committedEpoch`, drops them and returns the number of bytes written.
   * Chunk epochs never decrease along the queue, so these are a prefix of
   * it. A chunk is dropped before the sink is called: a sink that throws
   * loses that chunk (never repeats it), the later ones stay held.
   *
   * The guest may have output waiting in the ring (see {@link stalled}); it
   * will not ring again for it, so the caller should call service() after.
   */
  release(committedEpoch: number): number {
    checkEpoch(committedEpoch, "committedEpoch");
    return this.#release(committedEpoch);
  }

  /**
   * Writes every held chunk, whatever its epoch: when protection ends, or on
   * a standby that takes over (the re-issue of its last checkpoint's output).
   */
  releaseAll(): number {
    return this.#release(Number.POSITIVE_INFINITY);
  }

  /**
   * On a standby that takes over, right after restore(): writes every held
   * chunk of the restored checkpoint (the old primary may have written some
   * already: at least once, in order). Same as {@link releaseAll}.
   */
  reissueHeld(): number {
    return this.releaseAll();
  }

  /** Held output: total bytes, chunks, and the epoch of the oldest chunk (null if none). */
  get held(): HeldSummary {
    return {
      bytes: this.#heldBytes,
      count: this.#held.length,
      oldestEpoch: this.#held[0]?.epoch ?? null,
    };
  }

  /** Why the last service() left output in the ring, or null if it did not. */
  get stalled(): ConsoleStall | null {
    return this.#stall;
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
    if (accepted > 0) {
      this.onEvent?.({
        device: "console",
        direction: "in",
        kind: "bytes",
        bytes: accepted,
        data: bytes.subarray(0, accepted),
      });
    }
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

  /**
   * Version 2: version 1 plus `held`, the held chunks in order as
   * `{ epoch, bytes }` with the bytes in base64.
   */
  save(): DeviceState {
    return {
      version: 2,
      outCons: this.#outCons,
      inProd: this.#inProd,
      counters: { ...this.#counters },
      lastLine: this.#line.last,
      partialLine: this.#line.partial(),
      held: this.#held.map((chunk) => ({ epoch: chunk.epoch, bytes: encodeBase64(chunk.bytes) })),
    };
  }

  /**
   * Accepts version 2, and version 1 (before output commit: nothing held).
   * Held chunks must be non-empty, at most {@link CONSOLE_CHUNK_MAX} bytes,
   * with non-decreasing epochs, within {@link CONSOLE_HELD_CAP}. The gate is
   * not part of the state and is left as it is.
   */
  restore(state: unknown): void {
    const reader = StateReader.of(this.name, state);
    const version = reader.versionIn([1, 2]);
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
    const held = version === 1 ? [] : readHeld(reader);
    this.#outCons = outCons;
    this.#inProd = inProd;
    this.#counters = counters;
    this.#line.adopt(lastLine, partialLine);
    this.#held = held;
    this.#heldBytes = held.reduce((sum, chunk) => sum + chunk.bytes.length, 0);
    this.#stall = null;
  }

  /** Appends to the held queue, merging into the last chunk of the same epoch while small. */
  #hold(epoch: number, bytes: Uint8Array): void {
    const last = this.#held.at(-1);
    if (last && last.epoch === epoch && last.bytes.length + bytes.length <= CONSOLE_CHUNK_MAX) {
      const merged = new Uint8Array(last.bytes.length + bytes.length);
      merged.set(last.bytes);
      merged.set(bytes, last.bytes.length);
      last.bytes = merged;
    } else {
      this.#held.push({ epoch, bytes });
    }
    this.#heldBytes += bytes.length;
  }

  #release(committedEpoch: number): number {
    let taken = 0;
    let released = 0;
    try {
      while (taken < this.#held.length && this.#held[taken].epoch <= committedEpoch) {
        const chunk = this.#held[taken++];
        this.#heldBytes -= chunk.bytes.length;
        released += chunk.bytes.length;
        this.#emit(chunk.bytes);
      }
    } finally {
      this.#held.splice(0, taken);
    }
    return released;
  }

  /** Hands bytes to the sink (counting them and tracking the last line first). */
  #emit(bytes: Uint8Array): void {
    this.#counters.bytesOut += bytes.length;
    this.#line.feed(bytes);
    this.onEvent?.({
      device: "console",
      direction: "out",
      kind: "bytes",
      bytes: bytes.length,
      data: bytes,
    });
    this.sink.write(bytes);
  }

  /** Observer of console events (taps): bytes leaving, input arriving. */
  onEvent: DeviceObserver | undefined;

  /** The held chunks that release(committedEpoch) would write, in order (copies not made). */
  releasable(committedEpoch: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const chunk of this.#held) {
      if (chunk.epoch > committedEpoch) break;
      out.push(chunk.bytes);
    }
    return out;
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

function readHeld(reader: StateReader): HeldChunk[] {
  const held: HeldChunk[] = [];
  let total = 0;
  for (const [i, chunk] of reader.objects("held", CONSOLE_HELD_CAP.count).entries()) {
    const epoch = chunk.count("epoch");
    const bytes = chunk.bytes("bytes", CONSOLE_CHUNK_MAX);
    if (bytes.length === 0) reader.fail(`held[${i}]: empty chunk`);
    const previous = held.at(-1)?.epoch ?? 0;
    if (epoch < previous) reader.fail(`held[${i}]: epoch ${epoch} is before ${previous}`);
    total += bytes.length;
    if (total > CONSOLE_HELD_CAP.bytes) {
      reader.fail(`held output exceeds ${CONSOLE_HELD_CAP.bytes} bytes`);
    }
    held.push({ epoch, bytes });
  }
  return held;
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
