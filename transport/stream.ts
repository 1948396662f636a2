/**
 * Byte streams under the secure layer: the {@link ByteStream} interface every
 * transport provides, a write loop for partial writes, a gathering writer
 * (the stand-in for `writev`, which Deno lacks) and a buffered reader that
 * reads large payloads straight into their destination.
 * @module
 */

/** A bidirectional byte stream (a TCP connection, an in-memory pipe, a faulty wrapper). */
export interface ByteStream {
  /** Reads up to `into.length` bytes; null at end of stream. */
  read(into: Uint8Array): Promise<number | null>;
  /** Writes some of `data` (at least one byte) and returns how many; may be partial. */
  write(data: Uint8Array): Promise<number>;
  /** Closes both directions; pending reads end or reject. Idempotent. */
  close(): void;
}

/** Writes all of `data`, looping over partial writes. */
export async function writeAll(stream: ByteStream, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const n = await stream.write(off === 0 ? data : data.subarray(off));
    if (n <= 0) throw new Error(`write returned ${n}`);
    off += n;
  }
}

/**
 * Segments shorter than this are copied into the staging buffer; longer ones
 * are written from where they are. On loopback a 1 MiB payload written in
 * place between a separate 12-byte header write and a 16-byte tag write ran
 * at the raw 1 MiB-write speed within the noise, while copying everything
 * into one buffer first ran at ~2.9 GB/s against ~4 (see README.md).
 */
export const DIRECT_WRITE_MIN = 64 << 10;

/**
 * Writes a sequence of segments with as few writes as possible: consecutive
 * small segments are gathered into one preallocated staging buffer, large
 * ones go out in place. One instance per stream; not reentrant (callers
 * serialize).
 */
export class GatherWriter {
  readonly #stream: ByteStream;
  readonly #stage: Uint8Array;
  #fill = 0;

  constructor(stream: ByteStream, stageBytes = 256 << 10) {
    this.#stream = stream;
    this.#stage = new Uint8Array(stageBytes);
  }

  /** Writes every segment, in order; resolves when all bytes were handed to the stream. */
  async write(segments: readonly Uint8Array[]): Promise<void> {
    for (const seg of segments) {
      if (seg.length >= DIRECT_WRITE_MIN) {
        await this.#flush();
        await writeAll(this.#stream, seg);
        continue;
      }
      let off = 0;
      while (off < seg.length) {
        const n = Math.min(seg.length - off, this.#stage.length - this.#fill);
        this.#stage.set(
          off === 0 && n === seg.length ? seg : seg.subarray(off, off + n),
          this.#fill,
        );
        this.#fill += n;
        off += n;
        if (this.#fill === this.#stage.length) await this.#flush();
      }
    }
    await this.#flush();
  }

  async #flush(): Promise<void> {
    if (this.#fill === 0) return;
    const n = this.#fill;
    this.#fill = 0;
    await writeAll(this.#stream, this.#stage.subarray(0, n));
  }
}

/** Reads of at least this many missing bytes go straight into the destination. */
export const DIRECT_READ_MIN = 64 << 10;

/**
 * Largest buffered read after a large frame. The next frame is then likely
 * large too, and whatever a buffered read takes of its payload has to be
 * copied out again; on loopback an unbounded 4 MiB read took most of the
 * stream through the buffer and doubled the receiver's copying.
 */
export const SMALL_FILL_BYTES = 64 << 10;

/** Why a {@link BufferedReader.readExact} stopped short. */
export class ShortReadError extends Error {
  constructor(readonly got: number, readonly wanted: number) {
    super(`stream ended after ${got} of ${wanted} bytes`);
    this.name = "ShortReadError";
  }
}

/**
 * A read buffer over a stream. Small reads are served from the buffer; the
 * bulk of a large payload is read directly into the caller's array, so it is
 * copied once (kernel → message), not twice.
 */
export class BufferedReader {
  readonly #stream: ByteStream;
  readonly #buf: Uint8Array;
  #start = 0;
  #end = 0;
  #eof = false;
  /**
   * How much one buffered read may take. Callers lower it to
   * {@link SMALL_FILL_BYTES} while large frames stream (their payloads are
   * read in place) and raise it for bursts of small frames.
   */
  fillLimit: number;

  constructor(stream: ByteStream, bufferBytes = 4 << 20) {
    this.#stream = stream;
    this.#buf = new Uint8Array(bufferBytes);
    this.fillLimit = bufferBytes;
  }

  /** Bytes buffered and not yet consumed. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /**
   * Fills `into` completely. Returns false if the stream ended before the
   * first byte (a clean end); throws {@link ShortReadError} if it ended later.
   */
  async readExact(into: Uint8Array): Promise<boolean> {
    let got = 0;
    while (got < into.length) {
      const avail = this.#end - this.#start;
      if (avail > 0) {
        const n = Math.min(avail, into.length - got);
        into.set(this.#buf.subarray(this.#start, this.#start + n), got);
        this.#start += n;
        got += n;
        continue;
      }
      if (this.#eof) {
        if (got === 0) return false;
        throw new ShortReadError(got, into.length);
      }
      const missing = into.length - got;
      if (missing >= DIRECT_READ_MIN) {
        const n = await this.#stream.read(into.subarray(got));
        if (n === null) this.#eof = true;
        else got += n;
      } else {
        this.#start = this.#end = 0;
        const lim = Math.max(1, Math.min(this.fillLimit, this.#buf.length));
        const n = await this.#stream.read(
          lim < this.#buf.length ? this.#buf.subarray(0, lim) : this.#buf,
        );
        if (n === null) this.#eof = true;
        else this.#end = n;
      }
    }
    return true;
  }
}

/** A promise with its resolve function exposed. */
export function deferred<T = void>(): {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
} {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
