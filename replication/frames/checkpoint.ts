/**
 * The checkpoint messages and ACK.
 *
 *   CKPT_BEGIN  u64 epoch · u32 total pages · u32 state length · u32 disk delta length   (20 bytes)
 *   CKPT_PAGES  a page batch (see pages.ts)
 *   CKPT_STATE  u32 state length · u32 disk delta length · state JSON · disk delta
 *   CKPT_END    u64 epoch · u32 crc32 · u32 page count · u64 byte count                (24 bytes)
 *   ACK         u64 epoch                                                               (8 bytes)
 *
 * The CKPT_END crc32 runs over every payload byte of the checkpoint's
 * CKPT_BEGIN, CKPT_PAGES… and CKPT_STATE in order; the byte count is the sum
 * of those payload lengths.
 * @module
 */

import { crc32 } from "node:zlib";
import { decodeJson, encodeJson } from "../../machine/state_file.ts";
import {
  type Frame,
  HEADER_BYTES,
  MAX_DISK_DELTA_BYTES,
  MAX_STATE_BYTES,
  MsgType,
  type MsgTypeName,
  newMessage,
  ProtocolError,
  readHeader,
  writeHeader,
} from "./header.ts";

/** CKPT_BEGIN: what the checkpoint will carry. */
export interface BeginInfo {
  totalPages: number;
  stateLength: number;
  diskDeltaLength: number;
}

/** CKPT_STATE: the machine state (decoded JSON) and the opaque disk delta. */
export interface StateInfo {
  state: unknown;
  diskDelta: Uint8Array;
}

/** CKPT_END: what the receiver must have seen. */
export interface EndInfo {
  crc: number;
  pageCount: number;
  byteCount: number;
}

export const BEGIN_BYTES = 20;
export const END_BYTES = 24;
export const ACK_BYTES = 8;
const STATE_HEAD = 8;

function view(payload: Uint8Array): DataView {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

function exact(payload: Uint8Array, what: MsgTypeName, size: number): DataView {
  if (payload.length !== size) {
    throw new ProtocolError(
      "length",
      `${what} payload of ${payload.length} bytes, expected ${size}`,
    );
  }
  return view(payload);
}

function sameEpoch(what: MsgTypeName, inPayload: bigint, inHeader: bigint): void {
  if (inPayload !== inHeader) {
    throw new ProtocolError(
      "epoch",
      `${what} payload epoch ${inPayload} differs from header epoch ${inHeader}`,
    );
  }
}

/** Decodes a CKPT_BEGIN payload (`ramPages` bounds the page total when known). */
export function decodeBegin(
  payload: Uint8Array,
  epoch: bigint,
  ramPages: number | undefined,
): BeginInfo {
  const dv = exact(payload, "CKPT_BEGIN", BEGIN_BYTES);
  sameEpoch("CKPT_BEGIN", dv.getBigUint64(0, true), epoch);
  const totalPages = dv.getUint32(8, true);
  const stateLength = dv.getUint32(12, true);
  const diskDeltaLength = dv.getUint32(16, true);
  if (ramPages !== undefined && totalPages > ramPages) {
    throw new ProtocolError(
      "range",
      `CKPT_BEGIN for epoch ${epoch} with ${totalPages} pages (RAM has ${ramPages} pages)`,
    );
  }
  checkStateLengths(stateLength, diskDeltaLength, "CKPT_BEGIN");
  return { totalPages, stateLength, diskDeltaLength };
}

function checkStateLengths(stateLength: number, diskDeltaLength: number, what: MsgTypeName): void {
  if (stateLength < 2 || stateLength > MAX_STATE_BYTES) {
    throw new ProtocolError(
      "limit",
      `${what} state length ${stateLength} out of range (2..${MAX_STATE_BYTES})`,
    );
  }
  if (diskDeltaLength > MAX_DISK_DELTA_BYTES) {
    throw new ProtocolError(
      "limit",
      `${what} disk delta of ${diskDeltaLength} bytes exceeds ${MAX_DISK_DELTA_BYTES}`,
    );
  }
}

/** Decodes a CKPT_STATE payload; `diskDelta` is a view into `payload`. */
export function decodeState(payload: Uint8Array, epoch: bigint): StateInfo {
  if (payload.length < STATE_HEAD) {
    throw new ProtocolError("length", `CKPT_STATE payload of ${payload.length} bytes is too short`);
  }
  const dv = view(payload);
  const stateLength = dv.getUint32(0, true), diskDeltaLength = dv.getUint32(4, true);
  checkStateLengths(stateLength, diskDeltaLength, "CKPT_STATE");
  if (payload.length !== STATE_HEAD + stateLength + diskDeltaLength) {
    throw new ProtocolError(
      "length",
      `CKPT_STATE payload of ${payload.length} bytes for state ${stateLength} + delta ${diskDeltaLength}`,
    );
  }
  let state: unknown;
  try {
    state = decodeJson(payload.subarray(STATE_HEAD, STATE_HEAD + stateLength));
  } catch {
    throw new ProtocolError("json", `CKPT_STATE for epoch ${epoch}: state is not valid JSON`);
  }
  if (typeof state !== "object" || state === null || Array.isArray(state)) {
    throw new ProtocolError("json", `CKPT_STATE for epoch ${epoch}: state is not a JSON object`);
  }
  return { state, diskDelta: payload.subarray(STATE_HEAD + stateLength) };
}

/** Decodes a CKPT_END payload. */
export function decodeEnd(payload: Uint8Array, epoch: bigint): EndInfo {
  const dv = exact(payload, "CKPT_END", END_BYTES);
  sameEpoch("CKPT_END", dv.getBigUint64(0, true), epoch);
  const byteCount = dv.getBigUint64(16, true);
  if (byteCount > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError("range", `CKPT_END byte count ${byteCount} out of range`);
  }
  return {
    crc: dv.getUint32(8, true),
    pageCount: dv.getUint32(12, true),
    byteCount: Number(byteCount),
  };
}

/** Decodes an ACK payload. */
export function decodeAck(payload: Uint8Array, epoch: bigint): void {
  sameEpoch("ACK", exact(payload, "ACK", ACK_BYTES).getBigUint64(0, true), epoch);
}

/** A CKPT_BEGIN message. */
export function encodeBegin(epoch: bigint, info: BeginInfo): Uint8Array {
  const m = newMessage("CKPT_BEGIN", epoch, BEGIN_BYTES);
  const dv = view(m.subarray(HEADER_BYTES));
  dv.setBigUint64(0, epoch, true);
  dv.setUint32(8, info.totalPages, true);
  dv.setUint32(12, info.stateLength, true);
  dv.setUint32(16, info.diskDeltaLength, true);
  return m;
}

/** A CKPT_STATE frame: [header + lengths, state JSON, disk delta (not copied)]. */
export function encodeStateFrame(
  epoch: bigint,
  stateJson: Uint8Array,
  diskDelta: Uint8Array,
): Frame {
  if (stateJson.length < 2 || stateJson.length > MAX_STATE_BYTES) {
    throw new RangeError(`state JSON of ${stateJson.length} bytes is out of range`);
  }
  if (diskDelta.length > MAX_DISK_DELTA_BYTES) {
    throw new RangeError(`disk delta of ${diskDelta.length} bytes exceeds ${MAX_DISK_DELTA_BYTES}`);
  }
  const head = new Uint8Array(HEADER_BYTES + STATE_HEAD);
  writeHeader(head, "CKPT_STATE", epoch, STATE_HEAD + stateJson.length + diskDelta.length);
  const dv = view(head.subarray(HEADER_BYTES));
  dv.setUint32(0, stateJson.length, true);
  dv.setUint32(4, diskDelta.length, true);
  return [head, stateJson, diskDelta];
}

/** A CKPT_END message. */
export function encodeEnd(epoch: bigint, info: EndInfo): Uint8Array {
  const m = newMessage("CKPT_END", epoch, END_BYTES);
  const dv = view(m.subarray(HEADER_BYTES));
  dv.setBigUint64(0, epoch, true);
  dv.setUint32(8, info.crc >>> 0, true);
  dv.setUint32(12, info.pageCount, true);
  dv.setBigUint64(16, BigInt(info.byteCount), true);
  return m;
}

/** An ACK message. */
export function encodeAck(epoch: bigint): Uint8Array {
  const m = newMessage("ACK", epoch, ACK_BYTES);
  view(m.subarray(HEADER_BYTES)).setBigUint64(0, epoch, true);
  return m;
}

/** Running crc32 and length of a frame's payload (everything after the header). */
function payloadSum(frame: Frame, crc: number): { crc: number; bytes: number } {
  let skip = HEADER_BYTES, bytes = 0;
  for (const part of frame) {
    const p = skip >= part.length ? part.subarray(part.length) : part.subarray(skip);
    skip = Math.max(0, skip - part.length);
    if (p.length) crc = crc32(p, crc);
    bytes += p.length;
  }
  return { crc, bytes };
}

/**
 * The whole checkpoint `epoch` as frames: CKPT_BEGIN, `pageFrames` (from
 * {@link gatherPages} with this epoch), CKPT_STATE (`state` through
 * encodeJson, then `diskDelta`) and CKPT_END with the crc32 and counts.
 */
export function encodeCheckpoint(
  epoch: bigint,
  pageFrames: Frame[],
  state: unknown,
  diskDelta: Uint8Array = new Uint8Array(0),
): Frame[] {
  if (epoch < 1n) throw new RangeError(`checkpoint epoch ${epoch} must be ≥ 1`);
  let totalPages = 0;
  for (const f of pageFrames) {
    const head = f[0];
    const h = readHeader(head);
    if (h.type !== MsgType.CKPT_PAGES || h.epoch !== epoch || head.length < HEADER_BYTES + 4) {
      throw new RangeError(`page frame is not CKPT_PAGES for epoch ${epoch}`);
    }
    totalPages += view(head).getUint32(HEADER_BYTES, true);
  }
  const stateJson = encodeJson(state);
  const begin = [encodeBegin(epoch, {
    totalPages,
    stateLength: stateJson.length,
    diskDeltaLength: diskDelta.length,
  })];
  const stateFrame = encodeStateFrame(epoch, stateJson, diskDelta);
  let crc = 0, bytes = 0;
  for (const f of [begin, ...pageFrames, stateFrame]) {
    const s = payloadSum(f, crc);
    crc = s.crc;
    bytes += s.bytes;
  }
  const end = encodeEnd(epoch, { crc, pageCount: totalPages, byteCount: bytes });
  return [begin, ...pageFrames, stateFrame, [end]];
}
