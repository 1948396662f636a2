/**
 * Reads the redis guest's disk log from an image (format: the header comment
 * of guest/programs/redis.c): the superblock, then the records of the active
 * region until the first invalid one, and the key space they rebuild.
 * @module
 */

import { crc32 } from "node:zlib";

const SB_MAGIC = 0x4253524b;
const REC_MAGIC = 0x5244524b;
const REC_HDR = 32;

export interface LogRecord {
  seq: bigint;
  op: number;
  count: number;
  /** Byte offset in the region. */
  offset: number;
  len: number;
}

export interface RedisLog {
  gen: bigint;
  region: number;
  regionSectors: number;
  /** First sector of the active region. */
  regionStart: number;
  records: LogRecord[];
  /** Region offset where the valid log ends. */
  end: number;
  /** The key space after replaying the records. */
  keys: Map<string, string>;
}

/** Parses the log; null when the image has no valid superblock. */
export function readRedisLog(image: string | Uint8Array): RedisLog | null {
  const bytes = typeof image === "string" ? Deno.readFileSync(image) : image;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 512 || dv.getUint32(0, true) !== SB_MAGIC) return null;
  if (crc32(bytes.subarray(0, 508)) !== dv.getUint32(508, true)) return null;
  const gen = dv.getBigUint64(8, true);
  const region = dv.getUint32(16, true);
  const regionSectors = Number(dv.getBigUint64(24, true));
  const regionStart = 1 + region * regionSectors;
  const base = regionStart * 512;
  const limit = base + regionSectors * 512;
  const dec = new TextDecoder();
  const keys = new Map<string, string>();
  const records: LogRecord[] = [];
  let off = 0;
  for (let seq = 1n;; seq++) {
    const at = base + off;
    if (at + REC_HDR + 4 > limit) break;
    const len = dv.getUint32(at + 4, true);
    if (
      dv.getUint32(at, true) !== REC_MAGIC || len < REC_HDR + 4 || at + len > limit ||
      dv.getBigUint64(at + 8, true) !== seq || dv.getBigUint64(at + 16, true) !== gen
    ) break;
    if (crc32(bytes.subarray(at, at + len - 4)) !== dv.getUint32(at + len - 4, true)) break;
    const op = dv.getUint16(at + 24, true);
    const count = dv.getUint32(at + 28, true);
    let p = at + REC_HDR;
    if (op === 3) keys.clear();
    for (let i = 0; i < count; i++) {
      const kn = dv.getUint32(p, true);
      const vn = op === 1 ? dv.getUint32(p + 4, true) : 0;
      const h = op === 1 ? 8 : 4;
      const k = dec.decode(bytes.subarray(p + h, p + h + kn));
      if (op === 1) keys.set(k, dec.decode(bytes.subarray(p + h + kn, p + h + kn + vn)));
      else keys.delete(k);
      p += h + kn + vn;
    }
    records.push({ seq, op, count, offset: off, len });
    off += len;
  }
  return { gen, region, regionSectors, regionStart, records, end: off, keys };
}
