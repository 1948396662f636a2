/**
 * The interfaces the replication engine uses to talk to its peer, and the
 * errors a link reports. Every transport (TCP, in-memory, fault-injecting,
 * and one day RDMA) hands out the same {@link Link}: reliable, ordered,
 * message-oriented and authenticated (see `secure.ts` for the wire format).
 * @module
 */

/** A reliable, ordered, message-oriented, authenticated link. */
export interface Link {
  /**
   * Sends one message made of parts (sent as one unit, in order, no copying
   * into one buffer unless small). The parts must not change until the
   * returned promise settles. Rejects with LinkClosedError after close or
   * failure, and with LinkError (link left usable) when the message is larger
   * than `maxMessageBytes`.
   */
  send(parts: readonly Uint8Array[]): Promise<void>;
  /**
   * Next whole message, or null on orderly close by the peer (it called
   * `close()`). Rejects with LinkError on failure (including a connection that
   * ends without the peer's authenticated goodbye), AuthError on a bad MAC /
   * replay, LinkClosedError after a local `close()`.
   */
  receive(): Promise<Uint8Array | null>;
  /** Sends the goodbye frame after any queued messages, then closes. Idempotent. */
  close(): void;
  /** The remote address, for logs. */
  readonly peer: string;
  /** Payload bytes and whole messages (framing, MACs and the handshake not counted). */
  readonly stats: {
    bytesSent: number;
    bytesReceived: number;
    messagesSent: number;
    messagesReceived: number;
  };
}

/** Accepted, already authenticated links. Iteration ends when the listener is closed. */
export interface Listener extends AsyncIterable<Link> {
  /** The bound address, e.g. "127.0.0.1:40123" after listening on port 0. */
  readonly address: string;
  close(): void;
}

/** A way of reaching a peer. */
export interface Transport {
  readonly name: string;
  /** Connects and runs the handshake; rejects with LinkError (unreachable, timeout) or AuthError. */
  connect(address: string, opts: LinkOptions): Promise<Link>;
  /** Binds now (throws LinkError if it cannot); handshakes run per connection as they arrive. */
  listen(address: string, opts: LinkOptions): Listener;
}

/** Options of one link (both ends must agree on key, channel and `authenticate`). */
export interface LinkOptions {
  /** Pre-shared key, at least 32 bytes. */
  key: Uint8Array;
  /** Default true; false only for benchmarks of the cost (the handshake still proves the key). */
  authenticate?: boolean;
  /**
   * E.g. "replication" or "heartbeat": bound into the handshake so a heartbeat
   * connection can't be spliced into a replication one. At most 255 bytes of UTF-8.
   */
  channel: string;
  /** Default 64 MiB; larger frames are refused and the link closed. At most 2 GiB − 1. */
  maxMessageBytes?: number;
  /** Receives one line per notable event (established, refused, failed, closed). */
  log?: (line: string) => void;
  /** Connect + handshake deadline in ms (default 10000). */
  timeoutMs?: number;
  /** What the remote end is, for messages: "cannot reach standby 10.0.0.2:7000: …". */
  peerRole?: string;
}

/** A link failed: unreachable peer, I/O error, connection lost, protocol violation. */
export class LinkError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LinkError";
  }
}

/** The link was closed (locally, by the peer, or after a failure) and can no longer be used. */
export class LinkClosedError extends LinkError {
  constructor(message = "link is closed", options?: ErrorOptions) {
    super(message, options);
    this.name = "LinkClosedError";
  }
}

/** The peer could not prove the key, or a frame was tampered with, replayed or reordered. */
export class AuthError extends LinkError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AuthError";
  }
}

/** Default of {@link LinkOptions.maxMessageBytes}. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 << 20;
/** Default of {@link LinkOptions.timeoutMs}. */
export const DEFAULT_TIMEOUT_MS = 10_000;
