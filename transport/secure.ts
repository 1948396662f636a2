/**
 * Authentication and replay protection over any {@link ByteStream}.
 *
 * Handshake (each side sends, then reads, both messages at once; no
 * round-trip ordering between the two sides):
 *
 * ```
 * HELLO  0  "kemari-L"         8  magic
 *        8  u16 version = 1
 *       10  u8  role            0 = connecting side (client), 1 = accepting side (server)
 *       11  u8  flags           bit 0: authenticate frames
 *       12  u8  channel length  1..255
 *       13  3 bytes zero
 *       16  32-byte fresh random nonce
 *       48  channel (UTF-8)
 * PROOF  32 bytes = HMAC-SHA256(key, "kemari-link/1 proof <role>\0" ‖ T)
 *        T = SHA-256("kemari-link/1\0" ‖ HELLO_client ‖ HELLO_server)
 * ```
 *
 * Both sides check magic, version, roles, channel and flags, then each
 * verifies the other's proof in constant time. The per-direction session keys
 * are `HMAC-SHA256(key, "kemari-link/1 key c2s\0" ‖ T)` and `… s2c …`; T holds
 * both nonces and the channel, so a recorded session never verifies against a
 * new handshake, and a heartbeat connection never passes as a replication one.
 *
 * Frame (little-endian):
 *
 * ```
 * u32 length | flags   bit 31 = CLOSE (the authenticated goodbye), bits 0..30 payload length
 * u64 sequence         0, 1, 2, … per direction
 * payload
 * tag (16 bytes)       ChaCha20-Poly1305 of an empty plaintext with
 *                      key   = the direction's session key,
 *                      nonce = u32 direction (0 c2s, 1 s2c) ‖ u64 sequence,
 *                      AAD   = the 12-byte header ‖ payload
 *                      (absent when authenticate is false)
 * ```
 *
 * The tag covers length, flags, sequence, direction (nonce and key) and
 * payload. A (key, nonce) pair is never reused: keys are per session and per
 * direction, sequences only grow. The receiver requires sequence ==
 * expected, so replayed, reordered or dropped frames fail, and closes the
 * link with AuthError on any failure. Why ChaCha20-Poly1305 and not
 * HMAC-SHA256 or GMAC: it was the fastest in node:crypto here (README.md).
 * @module
 */

import { createCipheriv, createHash, createHmac, randomFillSync } from "node:crypto";
import {
  AuthError,
  DEFAULT_MAX_MESSAGE_BYTES,
  type Link,
  LinkClosedError,
  LinkError,
  type LinkOptions,
} from "./types.ts";
import {
  BufferedReader,
  type ByteStream,
  deferred,
  DIRECT_READ_MIN,
  GatherWriter,
  ShortReadError,
  SMALL_FILL_BYTES,
  writeAll,
} from "./stream.ts";

/** Protocol version in HELLO. */
export const PROTOCOL_VERSION = 1;
/** HELLO magic. */
export const MAGIC = new TextEncoder().encode("kemari-L");
/** Fixed part of HELLO (the channel follows). */
export const HELLO_FIXED_BYTES = 48;
/** PROOF length. */
export const PROOF_BYTES = 32;
/** Frame header length: u32 length|flags, u64 sequence. */
export const FRAME_HEADER_BYTES = 12;
/** Frame tag length when authenticating. */
export const TAG_BYTES = 16;
/** Bit 31 of the length word: the goodbye frame. */
export const FLAG_CLOSE = 0x8000_0000;
/** Largest payload the length field can carry. */
export const MAX_FRAME_PAYLOAD = 0x7fff_ffff;
/** Minimum pre-shared key length. */
export const MIN_KEY_BYTES = 32;

const LABEL = "kemari-link/1";
const enc = new TextEncoder();
const dec = new TextDecoder();
const EMPTY = new Uint8Array(0);

/** Which end of the handshake. */
export type Role = "client" | "server";

/** Direction numbers used in the MAC nonce. */
const DIR_C2S = 0;
const DIR_S2C = 1;

/** Throws TypeError if options can't make a link. Returns the encoded channel. */
export function checkOptions(opts: LinkOptions): Uint8Array {
  if (!(opts.key instanceof Uint8Array) || opts.key.length < MIN_KEY_BYTES) {
    throw new TypeError(
      `the pre-shared key must be at least ${MIN_KEY_BYTES} bytes (got ${opts.key?.length ?? 0})`,
    );
  }
  const ch = enc.encode(opts.channel ?? "");
  if (ch.length < 1 || ch.length > 255) {
    throw new TypeError(`the channel name must be 1..255 bytes of UTF-8 (got ${ch.length})`);
  }
  const max = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  if (!Number.isInteger(max) || max < 0 || max > MAX_FRAME_PAYLOAD) {
    throw new TypeError(`maxMessageBytes must be an integer in 0..${MAX_FRAME_PAYLOAD}`);
  }
  return ch;
}

/** Builds a HELLO with a fresh nonce. */
export function encodeHello(role: Role, authenticate: boolean, channel: Uint8Array): Uint8Array {
  const h = new Uint8Array(HELLO_FIXED_BYTES + channel.length);
  const dv = new DataView(h.buffer);
  h.set(MAGIC, 0);
  dv.setUint16(8, PROTOCOL_VERSION, true);
  h[10] = role === "client" ? 0 : 1;
  h[11] = authenticate ? 1 : 0;
  h[12] = channel.length;
  randomFillSync(h.subarray(16, 48));
  h.set(channel, HELLO_FIXED_BYTES);
  return h;
}

/** HMAC-SHA256(key, label ‖ 0 ‖ data). */
function prf(key: Uint8Array, label: string, data: Uint8Array): Uint8Array {
  const h = createHmac("sha256", key);
  h.update(enc.encode(`${LABEL} ${label}\0`));
  h.update(data);
  return new Uint8Array(h.digest());
}

/** Equality that takes the same time wherever the arrays differ. */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * The frame tag: ChaCha20-Poly1305 over an empty plaintext, with the header
 * and payload as additional data (Poly1305 also binds their total length).
 */
export function frameTag(
  key: Uint8Array,
  direction: number,
  header: Uint8Array,
  parts: readonly Uint8Array[],
): Uint8Array {
  const nonce = new Uint8Array(12);
  nonce[0] = direction;
  nonce.set(header.subarray(4, 12), 4); // the sequence, as sent
  const c = createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(header, { plaintextLength: 0 });
  for (const p of parts) if (p.length > 0) c.setAAD(p, { plaintextLength: 0 });
  c.final();
  return new Uint8Array(c.getAuthTag());
}

/** Writes a frame header. */
export function encodeHeader(into: Uint8Array, length: number, flags: number, seq: number): void {
  const dv = new DataView(into.buffer, into.byteOffset, FRAME_HEADER_BYTES);
  dv.setUint32(0, (length | flags) >>> 0, true);
  dv.setUint32(4, seq % 0x1_0000_0000, true);
  dv.setUint32(8, Math.floor(seq / 0x1_0000_0000), true);
}

/** Everything the handshake settled. */
export interface Session {
  sendKey: Uint8Array;
  recvKey: Uint8Array;
  sendDir: number;
  recvDir: number;
  authenticate: boolean;
  channel: string;
}

/** Turns any error from below into a LinkError (AuthError and LinkError pass through). */
function asLinkError(e: unknown, what: string): LinkError {
  if (e instanceof LinkError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new LinkError(`${what}: ${msg}`, { cause: e });
}

/**
 * Runs the handshake on `stream` (reading through `reader`, which keeps any
 * bytes that follow). Rejects with AuthError (wrong key, channel or
 * authentication setting) or LinkError; the caller closes the stream.
 */
export async function runHandshake(
  stream: ByteStream,
  reader: BufferedReader,
  role: Role,
  opts: LinkOptions,
  peer: string,
): Promise<Session> {
  const channel = checkOptions(opts);
  const authenticate = opts.authenticate ?? true;
  const mine = encodeHello(role, authenticate, channel);
  const readFull = async (n: number, what: string) => {
    const b = new Uint8Array(n);
    let ok: boolean;
    try {
      ok = await reader.readExact(b);
    } catch (e) {
      if (e instanceof ShortReadError) ok = false;
      else throw asLinkError(e, `handshake with ${peer} failed`);
    }
    if (!ok) throw new LinkError(`${peer} closed the connection during the handshake (${what})`);
    return b;
  };
  const send = async (b: Uint8Array) => {
    try {
      await writeAll(stream, b);
    } catch (e) {
      throw asLinkError(e, `handshake with ${peer} failed`);
    }
  };
  await send(mine);
  const fixed = await readFull(HELLO_FIXED_BYTES, "hello");
  if (!constantTimeEqual(fixed.subarray(0, 8), MAGIC)) {
    throw new LinkError(`${peer} is not a kemari transport endpoint (bad magic)`);
  }
  const version = new DataView(fixed.buffer).getUint16(8, true);
  if (version !== PROTOCOL_VERSION) {
    throw new LinkError(
      `protocol version mismatch with ${peer}: it speaks v${version}, this end v${PROTOCOL_VERSION}`,
    );
  }
  const peerRole = fixed[10] === 0 ? "client" : fixed[10] === 1 ? "server" : "?";
  if (peerRole === role || peerRole === "?") {
    throw new LinkError(`${peer} is also a ${role} (both ends connected or both accepted)`);
  }
  const peerChannelBytes = await readFull(fixed[12], "channel");
  const theirs = new Uint8Array(HELLO_FIXED_BYTES + peerChannelBytes.length);
  theirs.set(fixed, 0);
  theirs.set(peerChannelBytes, HELLO_FIXED_BYTES);
  const peerChannel = dec.decode(peerChannelBytes);
  if (peerChannel !== opts.channel) {
    throw new AuthError(
      `channel mismatch with ${peer}: this end is "${opts.channel}", the peer's is "${peerChannel}"`,
    );
  }
  const peerAuth = (fixed[11] & 1) === 1;
  if (peerAuth !== authenticate) {
    throw new AuthError(
      `authentication setting mismatch with ${peer}: this end has authenticate=${authenticate}, ` +
        `the peer ${peerAuth}`,
    );
  }
  const [helloC, helloS] = role === "client" ? [mine, theirs] : [theirs, mine];
  const th = createHash("sha256");
  th.update(enc.encode(`${LABEL}\0`));
  th.update(helloC);
  th.update(helloS);
  const transcript = new Uint8Array(th.digest());
  const other: Role = role === "client" ? "server" : "client";
  await send(prf(opts.key, `proof ${role}`, transcript));
  const proof = await readFull(PROOF_BYTES, "proof");
  if (!constantTimeEqual(proof, prf(opts.key, `proof ${other}`, transcript))) {
    throw new AuthError(`bad key or unauthenticated peer: ${peer} failed the key proof`);
  }
  const c2s = prf(opts.key, "key c2s", transcript);
  const s2c = prf(opts.key, "key s2c", transcript);
  return role === "client"
    ? {
      sendKey: c2s,
      recvKey: s2c,
      sendDir: DIR_C2S,
      recvDir: DIR_S2C,
      authenticate,
      channel: opts.channel,
    }
    : {
      sendKey: s2c,
      recvKey: c2s,
      sendDir: DIR_S2C,
      recvDir: DIR_C2S,
      authenticate,
      channel: opts.channel,
    };
}

/** How long close() waits for the goodbye frame to be written before closing anyway. */
export const GOODBYE_TIMEOUT_MS = 2000;

/** A {@link Link} over a stream after a successful handshake. */
export class SecureLink implements Link {
  readonly peer: string;
  readonly stats = { bytesSent: 0, bytesReceived: 0, messagesSent: 0, messagesReceived: 0 };
  readonly #stream: ByteStream;
  readonly #reader: BufferedReader;
  readonly #writer: GatherWriter;
  readonly #s: Session;
  readonly #max: number;
  readonly #log: (line: string) => void;
  #sendSeq = 0;
  #recvSeq = 0;
  #writeChain: Promise<void> = Promise.resolve();
  #readChain: Promise<void> = Promise.resolve();
  /** Set when the link failed (I/O, protocol, authentication). */
  #failure: LinkError | null = null;
  #closedLocally = false;
  #peerClosed = false;
  #streamClosed = false;
  /** The receive() in progress, so close() and failures can end it at once. */
  #pending: ReturnType<typeof deferred<Uint8Array | null>> | null = null;
  readonly #streamDone = deferred<void>();
  readonly #hdr = new Uint8Array(FRAME_HEADER_BYTES);
  readonly #tag = new Uint8Array(TAG_BYTES);

  constructor(
    stream: ByteStream,
    reader: BufferedReader,
    session: Session,
    peer: string,
    opts: LinkOptions,
  ) {
    this.#stream = stream;
    this.#reader = reader;
    this.#writer = new GatherWriter(stream);
    this.#s = session;
    this.peer = peer;
    this.#max = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#log = opts.log ?? (() => {});
  }

  /** The channel this link was authenticated for. */
  get channel(): string {
    return this.#s.channel;
  }

  /** Whether frames carry MAC tags. */
  get authenticated(): boolean {
    return this.#s.authenticate;
  }

  send(parts: readonly Uint8Array[]): Promise<void> {
    if (this.#closedLocally) {
      return Promise.reject(new LinkClosedError(`link to ${this.peer} is closed`));
    }
    if (this.#failure) {
      return Promise.reject(
        new LinkClosedError(`link to ${this.peer} is closed: ${this.#failure.message}`),
      );
    }
    if (this.#peerClosed) {
      return Promise.reject(new LinkClosedError(`${this.peer} closed the link`));
    }
    let total = 0;
    for (const p of parts) total += p.length;
    if (total > this.#max) {
      return Promise.reject(
        new LinkError(`message of ${total} bytes exceeds maxMessageBytes (${this.#max})`),
      );
    }
    const segs = this.#frame(total, 0, parts);
    const done = this.#writeChain.then(() => {
      if (this.#failure || this.#streamClosed) {
        throw new LinkClosedError(
          `link to ${this.peer} is closed${this.#failure ? `: ${this.#failure.message}` : ""}`,
        );
      }
      return this.#writer.write(segs);
    });
    this.#writeChain = done.catch(() => {});
    return done.then(
      () => {
        this.stats.bytesSent += total;
        this.stats.messagesSent++;
      },
      (e) => {
        if (e instanceof LinkClosedError) throw e;
        const err = asLinkError(e, `sending to ${this.peer} failed`);
        this.#fail(err);
        throw new LinkClosedError(`link to ${this.peer} is closed: ${err.message}`, { cause: e });
      },
    );
  }

  /** Header, parts and tag of the next frame (the tag computed now, over the parts as they are). */
  #frame(length: number, flags: number, parts: readonly Uint8Array[]): Uint8Array[] {
    const header = new Uint8Array(FRAME_HEADER_BYTES);
    encodeHeader(header, length, flags, this.#sendSeq++);
    const segs = [header, ...parts];
    if (this.#s.authenticate) segs.push(frameTag(this.#s.sendKey, this.#s.sendDir, header, parts));
    return segs;
  }

  receive(): Promise<Uint8Array | null> {
    const p = this.#readChain.then(() => this.#receiveOne());
    this.#readChain = p.then(() => {}, () => {}); // settles with nothing: holds no message
    return p;
  }

  async #receiveOne(): Promise<Uint8Array | null> {
    if (this.#closedLocally) throw new LinkClosedError(`link to ${this.peer} is closed`);
    if (this.#failure) throw this.#failure;
    if (this.#peerClosed) return null;
    try {
      // Not Promise.race with a long-lived promise: every race would leave a
      // reaction on it holding the message, so no message could be collected.
      const d = deferred<Uint8Array | null>();
      this.#pending = d;
      this.#readFrame().then(d.resolve, d.reject);
      try {
        return await d.promise;
      } finally {
        this.#pending = null;
      }
    } catch (e) {
      if (e instanceof LinkClosedError && this.#closedLocally) throw e;
      const err = asLinkError(e, `receiving from ${this.peer} failed`);
      this.#fail(err);
      throw err;
    }
  }

  async #readFull(into: Uint8Array, atStart: boolean): Promise<void> {
    let ok: boolean;
    try {
      ok = await this.#reader.readExact(into);
    } catch (e) {
      if (e instanceof ShortReadError) ok = false;
      else throw e;
      atStart = false;
    }
    if (ok) return;
    if (atStart) {
      throw new LinkError(
        `${this.peer} closed the connection without a goodbye (peer died or link cut)`,
      );
    }
    throw new LinkError(`connection to ${this.peer} lost in the middle of a frame`);
  }

  async #readFrame(): Promise<Uint8Array | null> {
    const hdr = this.#hdr;
    await this.#readFull(hdr, true);
    const dv = new DataView(hdr.buffer);
    const word = dv.getUint32(0, true);
    const seq = dv.getUint32(4, true) + dv.getUint32(8, true) * 0x1_0000_0000;
    if (seq !== this.#recvSeq) {
      throw new AuthError(
        `replayed or out-of-order frame from ${this.peer}: sequence ${seq}, expected ${this.#recvSeq}`,
      );
    }
    const close = (word & FLAG_CLOSE) !== 0;
    const len = word & MAX_FRAME_PAYLOAD;
    if (len > this.#max) {
      throw new LinkError(
        `frame of ${len} bytes from ${this.peer} exceeds maxMessageBytes (${this.#max}); link closed`,
      );
    }
    if (close && len !== 0) throw new LinkError(`malformed goodbye frame from ${this.peer}`);
    const payload = len === 0 ? EMPTY : new Uint8Array(len);
    if (len > 0) await this.#readFull(payload, false);
    if (this.#s.authenticate) {
      await this.#readFull(this.#tag, false);
      const want = frameTag(this.#s.recvKey, this.#s.recvDir, hdr, [payload]);
      if (!constantTimeEqual(this.#tag, want)) {
        throw new AuthError(`tampered frame from ${this.peer}: bad MAC on frame ${seq}`);
      }
    }
    this.#recvSeq++;
    // After a large frame, keep buffered reads short so the next payload is read in place.
    this.#reader.fillLimit = len >= DIRECT_READ_MIN ? SMALL_FILL_BYTES : Infinity;
    if (close) {
      this.#peerClosed = true;
      this.#log(`transport: ${this.peer} (${this.#s.channel}) closed the link`);
      this.#closeStream();
      return null;
    }
    this.stats.bytesReceived += len;
    this.stats.messagesReceived++;
    return len === 0 ? new Uint8Array(0) : payload;
  }

  #fail(err: LinkError): void {
    if (this.#failure || this.#closedLocally || this.#peerClosed) return;
    this.#failure = err;
    this.#log(
      `transport: link with ${this.peer} (${this.#s.channel}) failed: ${err.name}: ${err.message}`,
    );
    this.#pending?.reject(err);
    this.#closeStream();
  }

  #closeStream(): void {
    if (this.#streamClosed) return;
    this.#streamClosed = true;
    try {
      this.#stream.close();
    } catch {
      // already closed
    }
    this.#streamDone.resolve();
  }

  /** Resolves once the underlying stream is closed (after the goodbye, a failure or the peer's goodbye). */
  get closed(): Promise<void> {
    return this.#streamDone.promise;
  }

  close(): void {
    if (this.#closedLocally) return;
    this.#closedLocally = true;
    this.#pending?.reject(new LinkClosedError(`link to ${this.peer} was closed locally`));
    if (this.#failure || this.#peerClosed || this.#streamClosed) {
      this.#closeStream();
      return;
    }
    const segs = this.#frame(0, FLAG_CLOSE, []);
    const bye = this.#writeChain.then(() => this.#writer.write(segs));
    this.#writeChain = bye.catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const limit = new Promise<void>((r) => timer = setTimeout(r, GOODBYE_TIMEOUT_MS));
    Promise.race([bye, limit]).catch(() => {}).finally(() => {
      clearTimeout(timer);
      this.#closeStream();
    });
  }
}

/**
 * Handshake + link: what a transport does with each fresh stream. On failure
 * the stream is closed and the error (AuthError or LinkError) rethrown.
 */
export async function secureStream(
  stream: ByteStream,
  role: Role,
  opts: LinkOptions,
  peer: string,
  readBufferBytes = 4 << 20,
): Promise<SecureLink> {
  const reader = new BufferedReader(stream, readBufferBytes);
  try {
    const session = await runHandshake(stream, reader, role, opts, peer);
    return new SecureLink(stream, reader, session, peer, opts);
  } catch (e) {
    try {
      stream.close();
    } catch {
      // already closed
    }
    throw e;
  }
}
