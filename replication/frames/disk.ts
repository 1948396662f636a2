/**
 * DISK: one chunk of the primary's disk image during the initial sync of
 * replicated-disk mode. Payload: u64 byte offset, then the data (a multiple of
 * 512 bytes, 512 B..1 MiB). Epoch 0. Whether the chunk fits the image is the
 * receiver's check.
 * @module
 */

import { HEADER_BYTES, newMessage, ProtocolError } from "./header.ts";

export const DISK_CHUNK = 1024 * 1024;
const SECTOR = 512;

/** One DISK message for `data` at byte `offset`. */
export function encodeDisk(offset: number, data: Uint8Array): Uint8Array {
  const out = newMessage("DISK", 0n, 8 + data.length);
  new DataView(out.buffer).setBigUint64(HEADER_BYTES, BigInt(offset), true);
  out.set(data, HEADER_BYTES + 8);
  return out;
}

/** Decodes a DISK payload; checks alignment and size (the image bound is the receiver's). */
export function decodeDisk(payload: Uint8Array): { offset: number; data: Uint8Array } {
  if (payload.length < 8 + SECTOR || payload.length > 8 + DISK_CHUNK) {
    throw new ProtocolError("length", `DISK payload of ${payload.length} bytes`);
  }
  const dv = new DataView(payload.buffer, payload.byteOffset, 8);
  const offset = dv.getBigUint64(0, true);
  const data = payload.subarray(8);
  if (offset % BigInt(SECTOR) !== 0n || data.length % SECTOR !== 0) {
    throw new ProtocolError("range", `DISK chunk at ${offset} is not sector aligned`);
  }
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError("range", `DISK offset ${offset} out of range`);
  }
  return { offset: Number(offset), data };
}
