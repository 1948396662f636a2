/**
 * The fixed message header of the kemari replication protocol, the message
 * types, the limits every receiver enforces, and {@link ProtocolError}.
 *
 *   offset 0  u32 magic "KMRP"     offset 8   u32 flags (0 in version 1)
 *          4  u16 version (1)             12  u64 epoch (0 unless a checkpoint message)
 *          6  u16 type                    20  u32 payload length
 *
 * All integers little-endian. The header and the REFUSE message keep this
 * layout in every version, so any two versions can refuse each other.
 * @module
 */

import { PAGE_SIZE } from "../../machine/layout.ts";

/** "KMRP" read as a little-endian u32. */
export const MAGIC = 0x50524d4b;
/** The protocol version this kemari speaks. */
export const PROTOCOL_VERSION = 1;
/** Bytes in the fixed header. */
export const HEADER_BYTES = 24;

/** Message type numbers on the wire. */
export const MsgType = {
  HELLO: 1,
  WELCOME: 2,
  REFUSE: 3,
  PRECOPY: 4,
  CKPT_BEGIN: 5,
  CKPT_PAGES: 6,
  CKPT_STATE: 7,
  CKPT_END: 8,
  ACK: 9,
  HEARTBEAT: 10,
  SWITCHOVER: 11,
  BYE: 12,
  DISK: 13,
} as const;

/** A message type name. */
export type MsgTypeName = keyof typeof MsgType;

const NAMES: readonly (MsgTypeName | undefined)[] = (() => {
  const names: (MsgTypeName | undefined)[] = [];
  for (const [name, code] of Object.entries(MsgType)) names[code] = name as MsgTypeName;
  return names;
})();

/** The name of type number `code`, or undefined when the type is unknown. */
export function typeName(code: number): MsgTypeName | undefined {
  return NAMES[code];
}

/** Types whose header epoch names a checkpoint (must be ≥ 1); all others carry epoch 0. */
export const EPOCH_TYPES: ReadonlySet<MsgTypeName> = new Set([
  "CKPT_BEGIN",
  "CKPT_PAGES",
  "CKPT_STATE",
  "CKPT_END",
  "ACK",
]);

/** Most pages in one PRECOPY or CKPT_PAGES message (1 MiB of page data). */
export const MAX_PAGES_PER_MESSAGE = 256;
/** Largest HELLO/WELCOME JSON body. */
export const MAX_HELLO_BYTES = 64 * 1024;
/** Largest REFUSE/BYE reason (UTF-8 bytes). */
export const MAX_REASON_BYTES = 1024;
/** Largest machine-state JSON in CKPT_STATE. */
export const MAX_STATE_BYTES = 16 * 1024 * 1024;
/** Largest disk delta in CKPT_STATE. */
export const MAX_DISK_DELTA_BYTES = 64 * 1024 * 1024;
/** Bytes of a page-batch payload holding `count` pages. */
export function pageBatchBytes(count: number): number {
  return 4 + count * 4 + count * PAGE_SIZE;
}
/** Largest payload of any message (a CKPT_STATE at both limits). */
export const MAX_PAYLOAD_BYTES = 8 + MAX_STATE_BYTES + MAX_DISK_DELTA_BYTES;
/** Largest u64. */
export const U64_MAX = (1n << 64n) - 1n;

/** Why a message was refused. */
export type ProtocolErrorCode =
  | "magic"
  | "version"
  | "type"
  | "flags"
  | "length"
  | "payload"
  | "range"
  | "order"
  | "limit"
  | "json"
  | "epoch"
  | "sequence"
  | "checksum"
  | "state";

/** A message broke the protocol. The message is one line; nothing was adopted. */
export class ProtocolError extends Error {
  constructor(readonly code: ProtocolErrorCode, message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** The fixed header as read from the wire. */
export interface Header {
  version: number;
  /** The type number (may be unknown; see {@link typeName}). */
  type: number;
  flags: number;
  epoch: bigint;
  /** Payload length declared by the header. */
  length: number;
}

/**
 * Reads the header of `bytes` checking only the magic and that 24 bytes are
 * there. A connection uses it to answer a peer of another version with
 * REFUSE; {@link decodeMessage} checks the rest.
 */
export function readHeader(bytes: Uint8Array): Header {
  if (bytes.length < HEADER_BYTES) {
    throw new ProtocolError("length", `message of ${bytes.length} bytes is shorter than a header`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const magic = dv.getUint32(0, true);
  if (magic !== MAGIC) {
    throw new ProtocolError("magic", `bad magic 0x${hex32(magic)} (not a kemari message)`);
  }
  return {
    version: dv.getUint16(4, true),
    type: dv.getUint16(6, true),
    flags: dv.getUint32(8, true),
    epoch: dv.getBigUint64(12, true),
    length: dv.getUint32(20, true),
  };
}

/** Writes a header for `type` into the first 24 bytes of `into`. */
export function writeHeader(
  into: Uint8Array,
  type: MsgTypeName,
  epoch: bigint,
  length: number,
  version = PROTOCOL_VERSION,
): void {
  checkU64(epoch, "epoch");
  if (EPOCH_TYPES.has(type) ? epoch === 0n : epoch !== 0n) {
    throw new RangeError(`${type} cannot carry epoch ${epoch}`);
  }
  if (!Number.isInteger(length) || length < 0 || length > 0xffffffff) {
    throw new RangeError(`payload length ${length} does not fit a u32`);
  }
  const dv = new DataView(into.buffer, into.byteOffset, HEADER_BYTES);
  dv.setUint32(0, MAGIC, true);
  dv.setUint16(4, version, true);
  dv.setUint16(6, MsgType[type], true);
  dv.setUint32(8, 0, true);
  dv.setBigUint64(12, epoch, true);
  dv.setUint32(20, length, true);
}

/** A new message buffer: header for `type` followed by `payloadLength` zero bytes. */
export function newMessage(type: MsgTypeName, epoch: bigint, payloadLength: number): Uint8Array {
  const m = new Uint8Array(HEADER_BYTES + payloadLength);
  writeHeader(m, type, epoch, payloadLength);
  return m;
}

/** Throws RangeError (a local bug, not a peer's) unless `v` fits a u64. */
export function checkU64(v: bigint, what: string): void {
  if (typeof v !== "bigint" || v < 0n || v > U64_MAX) {
    throw new RangeError(`${what} ${v} does not fit a u64`);
  }
}

/** Lowercase 8-digit hex of a u32. */
export function hex32(v: number): string {
  return (v >>> 0).toString(16).padStart(8, "0");
}

/**
 * One message as parts to be written in order (e.g. with writev): the
 * concatenation is the message. Hot-path encoders return views instead of
 * copies.
 */
export type Frame = Uint8Array[];

/** Total bytes of a frame. */
export function frameLength(frame: Frame): number {
  let n = 0;
  for (const part of frame) n += part.length;
  return n;
}

/** The frame as one contiguous buffer (a copy unless it has one part). */
export function frameBytes(frame: Frame): Uint8Array {
  if (frame.length === 1) return frame[0];
  const out = new Uint8Array(frameLength(frame));
  let at = 0;
  for (const part of frame) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
