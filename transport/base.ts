/**
 * The part every stream-based transport shares: a raw layer that dials and
 * accepts {@link ByteStream}s ({@link StreamTransport}), and on top of it
 * `connect`/`listen` that run the secure handshake with a deadline and hand
 * out authenticated links. TCP, memory and the faulty wrapper only provide
 * the raw layer.
 * @module
 */

import {
  AuthError,
  DEFAULT_TIMEOUT_MS,
  type Link,
  LinkError,
  type LinkOptions,
  type Listener,
  type Transport,
} from "./types.ts";
import { checkOptions, secureStream } from "./secure.ts";
import type { ByteStream } from "./stream.ts";

/** A raw connection and who is at the other end (for logs). */
export interface RawConnection {
  stream: ByteStream;
  peer: string;
}

/** Accepts raw connections. */
export interface StreamListener {
  readonly address: string;
  /** The next connection, or null once closed. */
  accept(): Promise<RawConnection | null>;
  close(): void;
}

/** The raw layer of a transport: unauthenticated byte streams. */
export interface StreamTransport {
  readonly name: string;
  /** Read buffer per link (TCP: 4 MiB, so a read can take a whole socket buffer). */
  readonly readBufferBytes: number;
  /** Opens a raw connection; rejects with LinkError. `signal` aborts it (deadline). */
  dial(address: string, opts: LinkOptions, signal: AbortSignal): Promise<RawConnection>;
  /** Binds; throws LinkError. */
  bind(address: string, opts: LinkOptions): StreamListener;
}

/** Rejects with LinkError after `ms`, aborting `ac`. */
function deadline<T>(work: Promise<T>, ms: number, ac: AbortController, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      ac.abort();
      reject(new LinkError(`${what} timed out after ${ms} ms`));
    }, ms);
  });
  return Promise.race([work, expired]).finally(() => clearTimeout(timer));
}

/** Dials through `raw` and runs the client handshake, all within `opts.timeoutMs`. */
export async function secureConnect(
  raw: StreamTransport,
  address: string,
  opts: LinkOptions,
): Promise<Link> {
  checkOptions(opts);
  const ms = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const ac = new AbortController();
  let conn: RawConnection | null = null;
  const work = (async () => {
    conn = await raw.dial(address, opts, ac.signal);
    if (ac.signal.aborted) throw new LinkError("aborted");
    return await secureStream(conn.stream, "client", opts, conn.peer, raw.readBufferBytes);
  })();
  try {
    const link = await deadline(work, ms, ac, `connecting to ${address} (${opts.channel})`);
    opts.log?.(
      `transport: connected to ${link.peer} (${opts.channel}, ${raw.name}, ` +
        `${opts.authenticate === false ? "frames NOT authenticated" : "authenticated"})`,
    );
    return link;
  } catch (e) {
    work.then((l) => l.close(), () => {});
    (conn as RawConnection | null)?.stream.close();
    const err = e instanceof LinkError ? e : new LinkError(String(e), { cause: e });
    // The caller gets the error; only refusals on security grounds are also logged here
    // (callers retry unreachable peers, and a line per attempt would flood the log).
    if (err instanceof AuthError) {
      opts.log?.(
        `transport: connecting to ${address} (${opts.channel}) refused: ${err.name}: ${err.message}`,
      );
    }
    throw err;
  }
}

/**
 * Accepts raw connections, authenticates each one concurrently (a slow or
 * hostile peer never blocks the others) and yields the links that passed.
 * Refused connections are logged, with the error's class and message.
 */
export class SecureListener implements Listener {
  readonly #raw: StreamListener;
  readonly #opts: LinkOptions;
  readonly #transport: StreamTransport;
  readonly #ready: Link[] = [];
  readonly #waiters: {
    resolve: (r: IteratorResult<Link>) => void;
    reject: (e: unknown) => void;
  }[] = [];
  #closed = false;
  #error: LinkError | null = null;
  readonly #loopDone: Promise<void>;

  constructor(transport: StreamTransport, address: string, opts: LinkOptions) {
    checkOptions(opts);
    this.#transport = transport;
    this.#opts = opts;
    this.#raw = transport.bind(address, opts);
    this.#loopDone = this.#acceptLoop();
  }

  /** Resolves when the listener stopped accepting (after close() or a failure). */
  get closed(): Promise<void> {
    return this.#loopDone;
  }

  get address(): string {
    return this.#raw.address;
  }

  async #acceptLoop(): Promise<void> {
    const log = this.#opts.log;
    while (!this.#closed) {
      let conn: RawConnection | null;
      try {
        conn = await this.#raw.accept();
      } catch (e) {
        if (this.#closed) return;
        this.#error = new LinkError(
          `listener on ${this.address} failed: ${e instanceof Error ? e.message : e}`,
          { cause: e },
        );
        log?.(`transport: ${this.#error.message}`);
        this.#wakeAll();
        return;
      }
      if (conn === null) break;
      this.#authenticate(conn);
    }
    this.close();
  }

  async #authenticate(conn: RawConnection): Promise<void> {
    const opts = this.#opts;
    const ms = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const ac = new AbortController();
    ac.signal.addEventListener("abort", () => conn.stream.close());
    const work = secureStream(
      conn.stream,
      "server",
      opts,
      conn.peer,
      this.#transport.readBufferBytes,
    );
    try {
      const link = await deadline(work, ms, ac, `handshake with ${conn.peer}`);
      if (this.#closed) {
        link.close();
        return;
      }
      opts.log?.(
        `transport: accepted ${link.peer} on ${this.address} (${opts.channel}, ` +
          `${opts.authenticate === false ? "frames NOT authenticated" : "authenticated"})`,
      );
      const w = this.#waiters.shift();
      if (w) w.resolve({ value: link, done: false });
      else this.#ready.push(link);
    } catch (e) {
      work.then((l) => l.close(), () => {});
      conn.stream.close();
      const err = e instanceof Error ? e : new Error(String(e));
      opts.log?.(
        `transport: refused ${conn.peer} on ${this.address} (${opts.channel}): ${err.name}: ${err.message}`,
      );
    }
  }

  #wakeAll(): void {
    for (const w of this.#waiters.splice(0)) {
      if (this.#error) w.reject(this.#error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** The next authenticated link; done after close(). */
  next(): Promise<IteratorResult<Link>> {
    const link = this.#ready.shift();
    if (link) return Promise.resolve({ value: link, done: false });
    if (this.#error) return Promise.reject(this.#error);
    if (this.#closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<Link> {
    return { next: () => this.next() };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#raw.close();
    } catch {
      // already closed
    }
    for (const l of this.#ready.splice(0)) l.close();
    this.#wakeAll();
  }
}

/**
 * Base class of the stream transports: subclasses implement the raw layer,
 * this adds the authenticated {@link Transport} API.
 */
export abstract class StreamTransportBase implements Transport, StreamTransport {
  abstract readonly name: string;
  abstract readonly readBufferBytes: number;
  abstract dial(address: string, opts: LinkOptions, signal: AbortSignal): Promise<RawConnection>;
  abstract bind(address: string, opts: LinkOptions): StreamListener;

  connect(address: string, opts: LinkOptions): Promise<Link> {
    return secureConnect(this, address, opts);
  }

  listen(address: string, opts: LinkOptions): Listener {
    return new SecureListener(this, address, opts);
  }
}
