/**
 * In-memory transport: pairs of in-process pipes with bounded buffers
 * (writes are partial when the buffer is full, like a socket), no timers and
 * no threads, so tests are deterministic. The same secure layer runs on top,
 * so tests over memory exercise the handshake and the MACs too.
 *
 * Addresses are names in a process-wide table: `listen("standby")`, then
 * `connect("standby")`. Listening on "" or "0" picks a fresh name.
 * @module
 */

import { LinkError, type LinkOptions } from "./types.ts";
import { type RawConnection, type StreamListener, StreamTransportBase } from "./base.ts";
import { type ByteStream, deferred } from "./stream.ts";

/** Default bytes a pipe holds before writes wait for the reader. */
export const MEMORY_PIPE_CAPACITY = 1 << 20;

/** One direction: a bounded byte queue. */
class Pipe {
  readonly #chunks: Uint8Array[] = [];
  #head = 0; // consumed bytes of chunks[0]
  #size = 0;
  #writerClosed = false;
  #readerClosed = false;
  #readWake = deferred();
  #writeWake = deferred();

  constructor(readonly capacity: number) {}

  #wakeReader(): void {
    this.#readWake.resolve();
    this.#readWake = deferred();
  }

  #wakeWriter(): void {
    this.#writeWake.resolve();
    this.#writeWake = deferred();
  }

  async read(into: Uint8Array): Promise<number | null> {
    while (true) {
      if (this.#readerClosed) throw new Error("stream closed");
      if (this.#size > 0) {
        let got = 0;
        while (got < into.length && this.#chunks.length > 0) {
          const c = this.#chunks[0];
          const n = Math.min(c.length - this.#head, into.length - got);
          into.set(c.subarray(this.#head, this.#head + n), got);
          got += n;
          this.#head += n;
          if (this.#head === c.length) {
            this.#chunks.shift();
            this.#head = 0;
          }
        }
        this.#size -= got;
        this.#wakeWriter();
        return got;
      }
      if (this.#writerClosed) return null;
      await this.#readWake.promise;
    }
  }

  async write(data: Uint8Array): Promise<number> {
    while (true) {
      if (this.#writerClosed) throw new Error("stream closed");
      if (this.#readerClosed) throw new Error("broken pipe: the peer closed the connection");
      if (data.length === 0) return 0;
      const space = this.capacity - this.#size;
      if (space > 0) {
        const n = Math.min(space, data.length);
        this.#chunks.push(data.slice(0, n));
        this.#size += n;
        this.#wakeReader();
        return n;
      }
      await this.#writeWake.promise;
    }
  }

  /** The writing end is done: the reader drains, then sees end of stream. */
  closeWriter(): void {
    this.#writerClosed = true;
    this.#wakeReader();
    this.#wakeWriter();
  }

  /** The reading end is gone: buffered bytes are dropped, writers fail. */
  closeReader(): void {
    this.#readerClosed = true;
    this.#chunks.length = 0;
    this.#size = 0;
    this.#wakeReader();
    this.#wakeWriter();
  }
}

/** One end of an in-memory connection. */
export class MemoryStream implements ByteStream {
  readonly #in: Pipe;
  readonly #out: Pipe;

  constructor(inbound: Pipe, outbound: Pipe) {
    this.#in = inbound;
    this.#out = outbound;
  }

  read(into: Uint8Array): Promise<number | null> {
    return this.#in.read(into);
  }

  write(data: Uint8Array): Promise<number> {
    return this.#out.write(data);
  }

  close(): void {
    this.#out.closeWriter();
    this.#in.closeReader();
  }
}

/** Two connected streams. */
export function memoryPair(capacity = MEMORY_PIPE_CAPACITY): [MemoryStream, MemoryStream] {
  const ab = new Pipe(capacity);
  const ba = new Pipe(capacity);
  return [new MemoryStream(ba, ab), new MemoryStream(ab, ba)];
}

class MemoryStreamListener implements StreamListener {
  readonly #queue: RawConnection[] = [];
  #wake = deferred();
  #closed = false;

  constructor(
    readonly address: string,
    private readonly table: Map<string, MemoryStreamListener>,
  ) {}

  offer(conn: RawConnection): void {
    this.#queue.push(conn);
    this.#wake.resolve();
    this.#wake = deferred();
  }

  async accept(): Promise<RawConnection | null> {
    while (true) {
      const c = this.#queue.shift();
      if (c) return c;
      if (this.#closed) return null;
      await this.#wake.promise;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.table.get(this.address) === this) this.table.delete(this.address);
    for (const c of this.#queue.splice(0)) c.stream.close();
    this.#wake.resolve();
  }
}

const defaultTable = new Map<string, MemoryStreamListener>();
let nextName = 1;
let nextConn = 1;

/** The in-memory transport ("memory"). Instances share one process-wide address table by default. */
export class MemoryTransport extends StreamTransportBase {
  readonly name = "memory";
  readonly readBufferBytes: number;
  readonly #table: Map<string, MemoryStreamListener>;
  readonly #capacity: number;

  constructor(
    options: { capacity?: number; readBufferBytes?: number; isolated?: boolean } = {},
  ) {
    super();
    this.#capacity = options.capacity ?? MEMORY_PIPE_CAPACITY;
    this.readBufferBytes = options.readBufferBytes ?? 256 << 10;
    this.#table = options.isolated ? new Map() : defaultTable;
  }

  /** A raw, unauthenticated connection to a listener (tests use it to replay recorded bytes). */
  dialRaw(address: string, role = ""): RawConnection {
    const l = this.#table.get(address);
    if (!l) {
      throw new LinkError(
        `cannot reach ${role ? role + " " : ""}${address}: nothing listens there (memory)`,
      );
    }
    const [a, b] = memoryPair(this.#capacity);
    const id = nextConn++;
    l.offer({ stream: b, peer: `memory:client#${id}` });
    return { stream: a, peer: `memory:${address}` };
  }

  dial(address: string, opts: LinkOptions, _signal: AbortSignal): Promise<RawConnection> {
    try {
      return Promise.resolve(this.dialRaw(address, opts.peerRole));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  bind(address: string, _opts: LinkOptions): StreamListener {
    let name = address;
    if (name === "" || name === "0") {
      do name = `mem-${nextName++}`; while (this.#table.has(name));
    }
    if (this.#table.has(name)) {
      throw new LinkError(`cannot listen on ${name}: address in use (memory)`);
    }
    const l = new MemoryStreamListener(name, this.#table);
    this.#table.set(name, l);
    return l;
  }
}
