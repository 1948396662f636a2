/**
 * Fault injection under the secure layer, driven by a seeded PRNG so a given
 * seed always puts the faults at the same bytes:
 *
 * - **drop**: the connection dies at a random byte offset of the outgoing
 *   stream, drawn from [minBytes, maxBytes];
 * - **delay**: each write waits a random latency in [minMs, maxMs];
 * - **cut**: the connection dies after exactly N bytes went out, came in, or
 *   both together;
 * - **partition**: all traffic (both ways) stalls without closing, for a
 *   duration or until {@link FaultyStream.heal}; automatically after N
 *   outgoing bytes, or by calling {@link FaultyStream.partition};
 * - **corrupt**: one byte at stream offset N (outgoing or incoming) is XORed
 *   with a random non-zero value (the caller's buffer is never modified).
 *
 * A dead connection closes the wrapped stream (the peer sees the stream end)
 * and local reads and writes then reject with a {@link FaultError}.
 * Offsets count every byte of the stream, the handshake included.
 * @module
 */

import {
  type RawConnection,
  type StreamListener,
  type StreamTransport,
  StreamTransportBase,
} from "./base.ts";
import type { LinkOptions } from "./types.ts";
import { type ByteStream, deferred, writeAll } from "./stream.ts";

/** mulberry32: a small 32-bit PRNG; returns floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t = (t + Math.imul(t ^ (t >>> 7), t | 61)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

/** Which bytes a fault counts. */
export type FaultDirection = "out" | "in" | "both";

/** The faults of one stream (or of every stream of a {@link FaultyTransport}). */
export interface FaultSpec {
  seed: number;
  drop?: { minBytes: number; maxBytes: number };
  delay?: { minMs: number; maxMs: number };
  cut?: { afterBytes: number; direction?: FaultDirection };
  partition?: { afterBytes: number; durationMs?: number };
  corrupt?: { offset: number; direction?: "out" | "in" };
}

/** What was injected, where (offset in the stream of the fault's direction). */
export interface FaultEvent {
  kind: "drop" | "cut" | "corrupt" | "partition" | "heal";
  offset: number;
  /** corrupt: the XOR value; partition: the duration in ms (0 = until healed). */
  value?: number;
}

/** Raised by reads and writes on a connection the injector killed. */
export class FaultError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FaultError";
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A fault-injecting wrapper over any ByteStream. */
export class FaultyStream implements ByteStream {
  /** Every fault injected so far, in order. */
  readonly events: FaultEvent[] = [];
  /** Bytes written through / read through so far. */
  bytesOut = 0;
  bytesIn = 0;
  readonly #inner: ByteStream;
  readonly #spec: FaultSpec;
  readonly #delayRng: () => number;
  readonly #dropAt: number;
  readonly #xor: number;
  #partitioned: ReturnType<typeof deferred<void>> | null = null;
  #healTimer: ReturnType<typeof setTimeout> | undefined;
  #autoPartitionDone = false;
  #dead: FaultError | null = null;
  #closed = false;

  constructor(inner: ByteStream, spec: FaultSpec) {
    this.#inner = inner;
    this.#spec = spec;
    const rng = mulberry32(spec.seed);
    this.#delayRng = mulberry32((spec.seed ^ 0x5bd1e995) >>> 0);
    const d = spec.drop;
    this.#dropAt = d ? d.minBytes + Math.floor(rng() * (d.maxBytes - d.minBytes + 1)) : Infinity;
    this.#xor = 1 + Math.floor(rng() * 255);
  }

  /** The byte offset (outgoing) where the drop fault will hit, or Infinity. */
  get dropOffset(): number {
    return this.#dropAt;
  }

  /** Whether the injector killed the connection. */
  get dead(): boolean {
    return this.#dead !== null;
  }

  /** Stalls all traffic (no bytes lost, nothing closed) for `durationMs`, or until heal(). */
  partition(durationMs?: number): void {
    if (this.#partitioned || this.#closed) return;
    this.#partitioned = deferred();
    this.events.push({ kind: "partition", offset: this.bytesOut, value: durationMs ?? 0 });
    if (durationMs !== undefined) this.#healTimer = setTimeout(() => this.heal(), durationMs);
  }

  /** Ends a partition; stalled reads and writes go on. */
  heal(): void {
    if (!this.#partitioned) return;
    clearTimeout(this.#healTimer);
    this.#healTimer = undefined;
    const p = this.#partitioned;
    this.#partitioned = null;
    if (!this.#closed) this.events.push({ kind: "heal", offset: this.bytesOut });
    p.resolve();
  }

  /** Whether traffic is currently stalled. */
  get partitioned(): boolean {
    return this.#partitioned !== null;
  }

  async #gate(): Promise<void> {
    while (this.#partitioned) await this.#partitioned.promise;
    if (this.#closed) throw new FaultError("stream closed");
    if (this.#dead) throw this.#dead;
  }

  #kill(kind: "drop" | "cut", offset: number, what: string): void {
    if (this.#dead) return;
    this.#dead = new FaultError(`connection ${what} by fault injection`);
    this.events.push({ kind, offset });
    try {
      this.#inner.close();
    } catch {
      // already closed
    }
  }

  /** Bytes a direction may still carry before the cut (Infinity if no cut applies). */
  #cutRoom(dir: "out" | "in"): number {
    const c = this.#spec.cut;
    if (!c) return Infinity;
    const cd = c.direction ?? "both";
    if (cd === "both") return c.afterBytes - this.bytesOut - this.bytesIn;
    return cd === dir ? c.afterBytes - (dir === "out" ? this.bytesOut : this.bytesIn) : Infinity;
  }

  async write(data: Uint8Array): Promise<number> {
    await this.#gate();
    const dl = this.#spec.delay;
    if (dl) {
      const ms = dl.minMs + this.#delayRng() * (dl.maxMs - dl.minMs);
      if (ms > 0) await sleep(ms);
      await this.#gate();
    }
    // The earliest fault inside this write decides how much of it goes out.
    const end = this.bytesOut + data.length;
    let stopAt = end;
    let after: (() => void) | null = null;
    const cutRoom = this.#cutRoom("out");
    if (this.bytesOut + cutRoom <= end) {
      stopAt = this.bytesOut + Math.max(0, cutRoom);
      const at = stopAt;
      after = () => this.#kill("cut", at, `cut after ${this.#spec.cut!.afterBytes} bytes`);
    }
    if (this.#dropAt <= end && this.#dropAt < stopAt) {
      stopAt = Math.max(this.bytesOut, this.#dropAt);
      const at = stopAt;
      after = () => this.#kill("drop", at, `dropped at byte ${at}`);
    }
    const p = this.#spec.partition;
    if (p && !this.#autoPartitionDone && p.afterBytes < end && p.afterBytes < stopAt) {
      stopAt = Math.max(this.bytesOut, p.afterBytes);
      after = () => {
        this.#autoPartitionDone = true;
        this.partition(p.durationMs);
      };
    }
    const n = stopAt - this.bytesOut;
    let chunk = n === data.length ? data : data.subarray(0, n);
    const c = this.#spec.corrupt;
    if (
      c && (c.direction ?? "out") === "out" && c.offset >= this.bytesOut &&
      c.offset < this.bytesOut + n
    ) {
      chunk = chunk.slice();
      chunk[c.offset - this.bytesOut] ^= this.#xor;
      this.events.push({ kind: "corrupt", offset: c.offset, value: this.#xor });
    }
    if (n > 0) {
      try {
        // The whole chunk, so the fault lands exactly at its offset.
        await writeAll(this.#inner, chunk);
      } catch (e) {
        if (this.#dead) throw this.#dead;
        throw e;
      }
      this.bytesOut += n;
    }
    if (after) after();
    if (n === 0) {
      await this.#gate();
      return this.write(data);
    }
    return n;
  }

  async read(into: Uint8Array): Promise<number | null> {
    await this.#gate();
    let view = into;
    const room = this.#cutRoom("in");
    if (room <= 0) {
      this.#kill("cut", this.bytesIn, `cut after ${this.#spec.cut!.afterBytes} bytes`);
      throw this.#dead!;
    }
    if (room < into.length) view = into.subarray(0, room);
    let n: number | null;
    try {
      n = await this.#inner.read(view);
    } catch (e) {
      if (this.#dead) throw this.#dead;
      throw e;
    }
    // Bytes that arrive during a partition are held until it heals.
    while (this.#partitioned) await this.#partitioned.promise;
    if (this.#dead) throw this.#dead;
    if (n === null) return null;
    const c = this.#spec.corrupt;
    if (c && c.direction === "in" && c.offset >= this.bytesIn && c.offset < this.bytesIn + n) {
      into[c.offset - this.bytesIn] ^= this.#xor;
      this.events.push({ kind: "corrupt", offset: c.offset, value: this.#xor });
    }
    this.bytesIn += n;
    if (this.#cutRoom("in") <= 0) {
      this.#kill("cut", this.bytesIn, `cut after ${this.#spec.cut!.afterBytes} bytes`);
    }
    return n;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#healTimer);
    this.#partitioned?.resolve();
    this.#partitioned = null;
    try {
      this.#inner.close();
    } catch {
      // already closed
    }
  }
}

/**
 * Wraps the raw layer of another transport (TCP, memory): every stream it
 * dials or accepts is a {@link FaultyStream}; the secure layer runs on top,
 * so corruption is caught by the MAC like on a real wire. Stream i gets the
 * seed `spec.seed + i` (in the order connections are made).
 */
export class FaultyTransport extends StreamTransportBase {
  readonly name: string;
  readonly readBufferBytes: number;
  /** Every stream made so far, in order. */
  readonly streams: FaultyStream[] = [];
  readonly #inner: StreamTransport;
  readonly #spec: FaultSpec;

  constructor(inner: StreamTransport, spec: FaultSpec) {
    super();
    this.#inner = inner;
    this.#spec = spec;
    this.name = `faulty(${inner.name})`;
    this.readBufferBytes = inner.readBufferBytes;
  }

  #wrap(c: RawConnection): RawConnection {
    const s = new FaultyStream(c.stream, {
      ...this.#spec,
      seed: (this.#spec.seed + this.streams.length) >>> 0,
    });
    this.streams.push(s);
    return { stream: s, peer: c.peer };
  }

  async dial(address: string, opts: LinkOptions, signal: AbortSignal): Promise<RawConnection> {
    return this.#wrap(await this.#inner.dial(address, opts, signal));
  }

  bind(address: string, opts: LinkOptions): StreamListener {
    const l = this.#inner.bind(address, opts);
    return {
      address: l.address,
      accept: async () => {
        const c = await l.accept();
        return c && this.#wrap(c);
      },
      close: () => l.close(),
    };
  }

  /** Partitions every stream made so far. */
  partition(durationMs?: number): void {
    for (const s of this.streams) s.partition(durationMs);
  }

  /** Heals every stream. */
  heal(): void {
    for (const s of this.streams) s.heal();
  }
}
