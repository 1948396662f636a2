/**
 * The standby's checkpoint stager: a pure state machine (no I/O) that takes
 * decoded messages of the replication channel and says what to do.
 *
 * Pre-copy batches (before the first checkpoint) go straight to RAM. A
 * checkpoint is CKPT_BEGIN → CKPT_PAGES* → CKPT_STATE → CKPT_END for the next
 * epoch; its pages and disk delta are copied into one reusable staging buffer
 * (never larger than the checkpoint itself, and refused beyond
 * `maxStagingBytes`), and only when CKPT_END's counts and crc32 match does the
 * stager hand out the whole checkpoint. Anything wrong discards the partial
 * checkpoint: RAM and the last committed state were never touched.
 * @module
 */

import { crc32 } from "node:zlib";
import { PAGE_SIZE } from "../machine/layout.ts";
import { validateSavedMachine } from "../machine/saved_machine.ts";
import {
  type BeginInfo,
  type DecodedMessage,
  decodeMessage,
  hex32,
  type PageBatch,
  ProtocolError,
  type ProtocolErrorCode,
} from "./protocol.ts";

/** A verified checkpoint. Its views stay valid until the stager accepts the next CKPT_BEGIN. */
export interface CompleteCheckpoint {
  kind: "complete";
  epoch: bigint;
  /** Page numbers, ascending. */
  pages: Uint32Array;
  /** Page `pages[i]` is `data[i*4096 .. (i+1)*4096)`. */
  data: Uint8Array;
  /** The machine state (decoded JSON, checked by `checkState`). */
  state: unknown;
  /** The opaque disk delta. */
  diskDelta: Uint8Array;
}

/** What the caller does after {@link Stager.accept}. */
export type StagerEvent =
  /** Copy these pages into RAM now (see {@link apply}); views into the message. */
  | ({ kind: "precopy" } & PageBatch)
  /** Part of a checkpoint was staged; nothing to do. */
  | {
    kind: "staged";
    epoch: bigint;
    stage: "begin" | "pages" | "state";
    /** Pages staged so far, of the declared total. */
    pages: number;
    total: number;
  }
  /** Apply the checkpoint (pages via {@link apply}, then the state), then ACK it. */
  | CompleteCheckpoint
  /** The message was refused and any partial checkpoint discarded; the committed state stands. */
  | { kind: "error"; code: ProtocolErrorCode; reason: string };

/** Options of a {@link Stager}. */
export interface StagerOptions {
  /**
   * Validates a checkpoint's machine state before the checkpoint is handed
   * out (throw to refuse it), so that a state that cannot be restored never
   * gets its pages applied. See {@link savedMachineCheck}.
   */
  checkState?: (state: unknown) => void;
}

/** The open checkpoint. */
interface Open {
  epoch: bigint;
  begin: BeginInfo;
  pages: Uint32Array;
  data: Uint8Array;
  delta: Uint8Array;
  received: number;
  lastPage: number;
  crc: number;
  bytes: number;
  state: unknown;
  stateSeen: boolean;
}

/**
 * Bytes a checkpoint holds on the standby while staged: pages with their
 * numbers, the state JSON and the disk delta.
 */
export function stagingSize(info: BeginInfo): number {
  return info.totalPages * (PAGE_SIZE + 4) + info.stateLength + info.diskDeltaLength;
}

/** Stages the checkpoints of one replication session (epochs 1, 2, 3…). */
export class Stager {
  #buffer = new ArrayBuffer(0);
  #open: Open | null = null;
  #last = 0n;
  #begun = false;
  readonly #checkState: ((state: unknown) => void) | undefined;

  /**
   * @param ramPages guest RAM in pages
   * @param maxStagingBytes the largest checkpoint (see {@link stagingSize}) accepted
   */
  constructor(
    readonly ramPages: number,
    readonly maxStagingBytes: number,
    options: StagerOptions = {},
  ) {
    if (!Number.isSafeInteger(ramPages) || ramPages < 1 || ramPages > 0xffffffff) {
      throw new RangeError(`ramPages ${ramPages} out of range`);
    }
    if (!Number.isSafeInteger(maxStagingBytes) || maxStagingBytes < 0) {
      throw new RangeError(`maxStagingBytes ${maxStagingBytes} out of range`);
    }
    this.#checkState = options.checkState;
  }

  /** The epoch of the last complete checkpoint (0: none yet). */
  get lastEpoch(): bigint {
    return this.#last;
  }

  /** The epoch being staged, or null. */
  get openEpoch(): bigint | null {
    return this.#open?.epoch ?? null;
  }

  /** Bytes of the staging buffer now allocated. */
  get stagingBytes(): number {
    return this.#buffer.byteLength;
  }

  /** Discards the open checkpoint, if any (e.g. the stream was cut before CKPT_END). */
  discard(): void {
    this.#open = null;
  }

  /** Decodes `bytes` and accepts the message; a decoding error is an error event. */
  acceptBytes(bytes: Uint8Array): StagerEvent {
    let msg: DecodedMessage;
    try {
      msg = decodeMessage(bytes, { ramPages: this.ramPages });
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return this.#fail(e.code, e.message);
    }
    return this.accept(msg);
  }

  /** Takes the next message of the replication stream. Never throws for a peer's fault. */
  accept(msg: DecodedMessage): StagerEvent {
    switch (msg.type) {
      case "PRECOPY":
        return this.#precopy(msg);
      case "CKPT_BEGIN":
        return this.#begin(msg);
      case "CKPT_PAGES":
        return this.#pages(msg);
      case "CKPT_STATE":
        return this.#state(msg);
      case "CKPT_END":
        return this.#end(msg);
      default:
        return this.#fail("sequence", `${msg.type} is not a checkpoint message`);
    }
  }

  #fail(code: ProtocolErrorCode, reason: string): StagerEvent {
    this.#open = null;
    return { kind: "error", code, reason };
  }

  /** Checks a page batch against RAM and (for a checkpoint) the pages before it. */
  #checkBatch(what: string, b: PageBatch, after: number): StagerEvent | undefined {
    if (b.pages.length === 0 || b.data.length !== b.pages.length * PAGE_SIZE) {
      return this.#fail(
        "length",
        `${what} with ${b.pages.length} pages and ${b.data.length} bytes`,
      );
    }
    let prev = after;
    for (const p of b.pages) {
      if (p >= this.ramPages) {
        return this.#fail("range", `page ${p} out of range (RAM has ${this.ramPages} pages)`);
      }
      if (p <= prev) return this.#fail("order", `${what} page ${p} after page ${prev}`);
      prev = p;
    }
    return undefined;
  }

  #precopy(msg: DecodedMessage & { type: "PRECOPY" }): StagerEvent {
    if (this.#open) {
      return this.#fail("sequence", `PRECOPY while staging epoch ${this.#open.epoch}`);
    }
    if (this.#begun) return this.#fail("sequence", "PRECOPY after the first checkpoint");
    return this.#checkBatch("PRECOPY", msg, -1) ??
      { kind: "precopy", pages: msg.pages, data: msg.data };
  }

  /** The open checkpoint if `epoch` is it, else the error to return. */
  #current(what: string, epoch: bigint): Open | StagerEvent {
    const open = this.#open;
    if (!open) {
      return this.#fail(
        "sequence",
        `${what} for epoch ${epoch} with no checkpoint open (expecting CKPT_BEGIN for epoch ${
          this.#last + 1n
        })`,
      );
    }
    if (open.epoch !== epoch) {
      return this.#fail("epoch", `${what} for epoch ${epoch} while staging epoch ${open.epoch}`);
    }
    return open;
  }

  #begin(msg: DecodedMessage & { type: "CKPT_BEGIN" }): StagerEvent {
    const { epoch } = msg;
    if (this.#open) {
      return this.#fail(
        "sequence",
        `CKPT_BEGIN for epoch ${epoch} while epoch ${this.#open.epoch} is still open`,
      );
    }
    if (epoch !== this.#last + 1n) {
      return this.#fail(
        "epoch",
        `CKPT_BEGIN for epoch ${epoch}, expected epoch ${this.#last + 1n}`,
      );
    }
    const begin = {
      totalPages: msg.totalPages,
      stateLength: msg.stateLength,
      diskDeltaLength: msg.diskDeltaLength,
    };
    if (begin.totalPages > this.ramPages) {
      return this.#fail(
        "range",
        `CKPT_BEGIN for epoch ${epoch} with ${begin.totalPages} pages (RAM has ${this.ramPages} pages)`,
      );
    }
    const size = stagingSize(begin);
    if (size > this.maxStagingBytes) {
      return this.#fail(
        "limit",
        `CKPT_BEGIN for epoch ${epoch} needs ${size} staging bytes (limit ${this.maxStagingBytes})`,
      );
    }
    const buffer = this.#reserve(begin.totalPages * (PAGE_SIZE + 4) + begin.diskDeltaLength);
    const dataBytes = begin.totalPages * PAGE_SIZE;
    this.#begun = true;
    this.#open = {
      epoch,
      begin,
      data: new Uint8Array(buffer, 0, dataBytes),
      pages: new Uint32Array(buffer, dataBytes, begin.totalPages),
      delta: new Uint8Array(buffer, dataBytes + 4 * begin.totalPages, begin.diskDeltaLength),
      received: 0,
      lastPage: -1,
      crc: crc32(msg.payload),
      bytes: msg.payload.length,
      state: undefined,
      stateSeen: false,
    };
    return { kind: "staged", epoch, stage: "begin", pages: 0, total: begin.totalPages };
  }

  /** The staging buffer, resized to `bytes` when too small or more than 4× too large. */
  #reserve(bytes: number): ArrayBuffer {
    const have = this.#buffer.byteLength;
    if (bytes > have || bytes < have / 4) this.#buffer = new ArrayBuffer(bytes);
    return this.#buffer;
  }

  #pages(msg: DecodedMessage & { type: "CKPT_PAGES" }): StagerEvent {
    const open = this.#current("CKPT_PAGES", msg.epoch);
    if ("kind" in open) return open;
    if (open.stateSeen) {
      return this.#fail("sequence", `CKPT_PAGES for epoch ${open.epoch} after CKPT_STATE`);
    }
    const count = msg.pages.length;
    if (open.received + count > open.begin.totalPages) {
      return this.#fail(
        "limit",
        `CKPT_PAGES for epoch ${open.epoch}: ${open.received + count} pages, ` +
          `CKPT_BEGIN declared ${open.begin.totalPages}`,
      );
    }
    const bad = this.#checkBatch(`CKPT_PAGES for epoch ${open.epoch}`, msg, open.lastPage);
    if (bad) return bad;
    open.pages.set(msg.pages, open.received);
    open.data.set(msg.data, open.received * PAGE_SIZE);
    open.received += count;
    open.lastPage = msg.pages[count - 1];
    open.crc = crc32(msg.payload, open.crc);
    open.bytes += msg.payload.length;
    return {
      kind: "staged",
      epoch: open.epoch,
      stage: "pages",
      pages: open.received,
      total: open.begin.totalPages,
    };
  }

  #state(msg: DecodedMessage & { type: "CKPT_STATE" }): StagerEvent {
    const open = this.#current("CKPT_STATE", msg.epoch);
    if ("kind" in open) return open;
    const { epoch, begin } = open;
    if (open.stateSeen) return this.#fail("sequence", `second CKPT_STATE for epoch ${epoch}`);
    if (open.received !== begin.totalPages) {
      return this.#fail(
        "sequence",
        `CKPT_STATE for epoch ${epoch} after ${open.received} of ${begin.totalPages} pages`,
      );
    }
    const stateLength = msg.payload.length - 8 - msg.diskDelta.length;
    if (stateLength !== begin.stateLength || msg.diskDelta.length !== begin.diskDeltaLength) {
      return this.#fail(
        "length",
        `CKPT_STATE for epoch ${epoch}: state ${stateLength} + delta ${msg.diskDelta.length} bytes, ` +
          `CKPT_BEGIN declared ${begin.stateLength} + ${begin.diskDeltaLength}`,
      );
    }
    open.delta.set(msg.diskDelta);
    open.state = msg.state;
    open.stateSeen = true;
    open.crc = crc32(msg.payload, open.crc);
    open.bytes += msg.payload.length;
    return { kind: "staged", epoch, stage: "state", pages: open.received, total: begin.totalPages };
  }

  #end(msg: DecodedMessage & { type: "CKPT_END" }): StagerEvent {
    const open = this.#current("CKPT_END", msg.epoch);
    if ("kind" in open) return open;
    const { epoch } = open;
    if (!open.stateSeen) {
      return this.#fail("sequence", `CKPT_END for epoch ${epoch} before CKPT_STATE`);
    }
    if (msg.pageCount !== open.received) {
      return this.#fail(
        "checksum",
        `CKPT_END for epoch ${epoch} counts ${msg.pageCount} pages, ${open.received} were staged`,
      );
    }
    if (msg.byteCount !== open.bytes) {
      return this.#fail(
        "checksum",
        `CKPT_END for epoch ${epoch} counts ${msg.byteCount} bytes, ${open.bytes} were received`,
      );
    }
    if (msg.crc !== open.crc) {
      return this.#fail(
        "checksum",
        `CKPT_END for epoch ${epoch}: crc32 0x${hex32(msg.crc)} does not match 0x${
          hex32(open.crc)
        } (corrupt)`,
      );
    }
    if (this.#checkState) {
      try {
        this.#checkState(open.state);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        return this.#fail("state", `CKPT_STATE for epoch ${epoch} refused: ${why}`);
      }
    }
    this.#open = null;
    this.#last = epoch;
    return {
      kind: "complete",
      epoch,
      pages: open.pages,
      data: open.data,
      state: open.state,
      diskDelta: open.delta,
    };
  }
}

/**
 * Copies a batch of pages (a pre-copy batch or a complete checkpoint) into
 * guest RAM `ram`. Throws RangeError if the batch does not fit (a caller bug:
 * the stager hands out only checked batches).
 */
export function apply(batch: PageBatch, ram: Uint8Array): void {
  const { pages, data } = batch;
  const ramPages = Math.floor(ram.length / PAGE_SIZE);
  if (data.length !== pages.length * PAGE_SIZE) {
    throw new RangeError(`${pages.length} pages with ${data.length} bytes of data`);
  }
  for (const p of pages) {
    if (p >= ramPages) throw new RangeError(`page ${p} out of range (RAM has ${ramPages} pages)`);
  }
  for (let i = 0; i < pages.length;) {
    let run = 1;
    while (i + run < pages.length && pages[i + run] === pages[i] + run) run++;
    ram.set(data.subarray(i * PAGE_SIZE, (i + run) * PAGE_SIZE), pages[i] * PAGE_SIZE);
    i += run;
  }
}

/**
 * A `checkState` for {@link StagerOptions}: the state must be a saved kemari
 * machine (machine/saved_machine.ts) of exactly `ramPages` pages of RAM.
 */
export function savedMachineCheck(ramPages: number): (state: unknown) => void {
  return (state) => {
    const m = validateSavedMachine(state, "checkpoint");
    if (m.ramBytes !== ramPages * PAGE_SIZE) {
      throw new Error(`machine of ${m.ramBytes} bytes of RAM, standby has ${ramPages * PAGE_SIZE}`);
    }
  };
}
