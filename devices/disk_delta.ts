/**
 * Disk deltas: the writes and flushes a replicated-disk primary performed on
 * its own image during one epoch, shipped with the checkpoint that covers
 * them and applied to the standby's image when that checkpoint commits.
 *
 * Binary form (little-endian):
 *
 * ```
 * "KDL1"  u32 entry count
 * entry:  u8 kind (1 = write, 2 = flush)  u64 sector  u32 length  data[length]
 * ```
 *
 * A flush entry has sector 0 and length 0. A write's length is a non-zero
 * multiple of 512 and its sectors lie inside the disk. The bytes are
 * untrusted input: {@link decodeDiskDelta} checks every field against
 * {@link DiskDeltaLimits} before it allocates anything large, and refuses
 * trailing bytes.
 * @module
 */

import { SECTOR_SIZE } from "./blkif.ts";

/** One performed write, or a flush (fdatasync) in order between writes. */
export type DiskDeltaEntry = { sector: bigint; data: Uint8Array } | { flush: true };

/** The writes and flushes of one epoch, in the order they were performed. */
export type DiskDelta = { writes: DiskDeltaEntry[] };

/** A disk delta failed validation. */
export class DiskDeltaError extends Error {
  constructor(message: string) {
    super(`disk delta: ${message}`);
    this.name = "DiskDeltaError";
  }
}

/** What a delta is checked against. */
export interface DiskDeltaLimits {
  /** Size of the target disk in sectors: every write must lie inside it. */
  diskSectors: bigint;
  /** Most data bytes in all writes together (default {@link DISK_DELTA_DEFAULTS}.maxBytes). */
  maxBytes?: number;
  /** Most entries (default {@link DISK_DELTA_DEFAULTS}.maxEntries). */
  maxEntries?: number;
  /** Most data bytes in one write (default {@link DISK_DELTA_DEFAULTS}.maxWriteBytes). */
  maxWriteBytes?: number;
}

/** Default caps of {@link DiskDeltaLimits}. */
export const DISK_DELTA_DEFAULTS = {
  maxBytes: 1024 * 1024 * 1024,
  maxEntries: 1 << 20,
  maxWriteBytes: 4 * 1024 * 1024,
} as const;

/** What {@link validateDiskDelta} found. */
export interface DiskDeltaSummary {
  /** Write entries. */
  writes: number;
  /** Flush entries. */
  flushes: number;
  /** Data bytes in all writes. */
  bytes: number;
}

/** Entry kinds on the wire. */
export const DISK_DELTA_KIND = { write: 1, flush: 2 } as const;

/** Limits that accept any sector range a u64 can address. */
const ANY_DISK: DiskDeltaLimits = { diskSectors: 2n ** 64n };

const MAGIC = [0x4b, 0x44, 0x4c, 0x31]; // "KDL1"
const HEADER_BYTES = 8;
const ENTRY_HEADER_BYTES = 13;

/** Bytes of the binary form of `delta`. */
export function diskDeltaEncodedSize(delta: DiskDelta): number {
  let size = HEADER_BYTES;
  for (const entry of delta.writes) {
    size += ENTRY_HEADER_BYTES + ("flush" in entry ? 0 : entry.data.length);
  }
  return size;
}

/**
 * Checks an in-memory delta (every entry's shape, sectors inside the disk,
 * lengths, totals) and summarises it. Throws {@link DiskDeltaError}.
 */
export function validateDiskDelta(delta: unknown, limits: DiskDeltaLimits): DiskDeltaSummary {
  const caps = capsOf(limits);
  if (typeof delta !== "object" || delta === null || !Array.isArray((delta as DiskDelta).writes)) {
    throw new DiskDeltaError("expected { writes: [...] }");
  }
  const entries = (delta as DiskDelta).writes as unknown[];
  if (entries.length > caps.maxEntries) {
    throw new DiskDeltaError(`${entries.length} entries, at most ${caps.maxEntries} allowed`);
  }
  const summary: DiskDeltaSummary = { writes: 0, flushes: 0, bytes: 0 };
  entries.forEach((entry, i) => {
    if (typeof entry !== "object" || entry === null) {
      throw new DiskDeltaError(`entry ${i}: not an object`);
    }
    const e = entry as Record<string, unknown>;
    if ("flush" in e) {
      if (e.flush !== true || "data" in e || "sector" in e) {
        throw new DiskDeltaError(`entry ${i}: a flush is exactly { flush: true }`);
      }
      summary.flushes++;
      return;
    }
    if (typeof e.sector !== "bigint" || !(e.data instanceof Uint8Array)) {
      throw new DiskDeltaError(`entry ${i}: expected { sector: bigint, data: Uint8Array }`);
    }
    checkWrite(i, e.sector, e.data.length, limits.diskSectors, caps);
    summary.writes++;
    summary.bytes += e.data.length;
    if (summary.bytes > caps.maxBytes) {
      throw new DiskDeltaError(`more than ${caps.maxBytes} data bytes`);
    }
  });
  return summary;
}

/**
 * Encodes `delta`, validated first against `limits` (default: any sector
 * range a u64 can address, default caps). Throws {@link DiskDeltaError}.
 */
export function encodeDiskDelta(
  delta: DiskDelta,
  limits: DiskDeltaLimits = ANY_DISK,
): Uint8Array {
  validateDiskDelta(delta, limits);
  const out = new Uint8Array(diskDeltaEncodedSize(delta));
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  view.setUint32(4, delta.writes.length, true);
  let at = HEADER_BYTES;
  for (const entry of delta.writes) {
    if ("flush" in entry) {
      view.setUint8(at, DISK_DELTA_KIND.flush);
      at += ENTRY_HEADER_BYTES;
      continue;
    }
    view.setUint8(at, DISK_DELTA_KIND.write);
    view.setBigUint64(at + 1, entry.sector, true);
    view.setUint32(at + 9, entry.data.length, true);
    out.set(entry.data, at + ENTRY_HEADER_BYTES);
    at += ENTRY_HEADER_BYTES + entry.data.length;
  }
  return out;
}

/**
 * Decodes and validates untrusted bytes against `limits` (default: any
 * sector that fits in a u64, default caps; BlockBackend.applyDiskDelta
 * checks again against its own disk). The returned writes' data are views
 * into `bytes` (no copy): keep `bytes` unchanged while the delta is in use.
 * Throws {@link DiskDeltaError}.
 */
export function decodeDiskDelta(
  bytes: Uint8Array,
  limits: DiskDeltaLimits = ANY_DISK,
): DiskDelta {
  const caps = capsOf(limits);
  if (bytes.length < HEADER_BYTES) {
    throw new DiskDeltaError(`${bytes.length} bytes, shorter than the ${HEADER_BYTES}-byte header`);
  }
  if (MAGIC.some((b, i) => bytes[i] !== b)) throw new DiskDeltaError("bad magic (not KDL1)");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(4, true);
  const room = Math.floor((bytes.length - HEADER_BYTES) / ENTRY_HEADER_BYTES);
  if (count > caps.maxEntries || count > room) {
    throw new DiskDeltaError(
      `claims ${count} entries; at most ${Math.min(caps.maxEntries, room)} possible`,
    );
  }
  const writes: DiskDeltaEntry[] = [];
  let total = 0;
  let at = HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    if (at + ENTRY_HEADER_BYTES > bytes.length) {
      throw new DiskDeltaError(`entry ${i}: truncated header at byte ${at}`);
    }
    const kind = view.getUint8(at);
    const sector = view.getBigUint64(at + 1, true);
    const length = view.getUint32(at + 9, true);
    at += ENTRY_HEADER_BYTES;
    if (kind === DISK_DELTA_KIND.flush) {
      if (sector !== 0n || length !== 0) {
        throw new DiskDeltaError(`entry ${i}: a flush must have sector 0 and length 0`);
      }
      writes.push({ flush: true });
      continue;
    }
    if (kind !== DISK_DELTA_KIND.write) {
      throw new DiskDeltaError(`entry ${i}: unknown kind ${kind}`);
    }
    checkWrite(i, sector, length, limits.diskSectors, caps);
    total += length;
    if (total > caps.maxBytes) throw new DiskDeltaError(`more than ${caps.maxBytes} data bytes`);
    if (at + length > bytes.length) {
      throw new DiskDeltaError(`entry ${i}: ${length} data bytes, only ${bytes.length - at} left`);
    }
    writes.push({ sector, data: bytes.subarray(at, at + length) });
    at += length;
  }
  if (at !== bytes.length) {
    throw new DiskDeltaError(`${bytes.length - at} trailing bytes after ${count} entries`);
  }
  return { writes };
}

type Caps = Required<Omit<DiskDeltaLimits, "diskSectors">>;

function capsOf(limits: DiskDeltaLimits): Caps {
  if (typeof limits.diskSectors !== "bigint" || limits.diskSectors < 0n) {
    throw new RangeError(`diskSectors ${limits.diskSectors} must be a non-negative bigint`);
  }
  return {
    maxBytes: limits.maxBytes ?? DISK_DELTA_DEFAULTS.maxBytes,
    maxEntries: limits.maxEntries ?? DISK_DELTA_DEFAULTS.maxEntries,
    maxWriteBytes: limits.maxWriteBytes ?? DISK_DELTA_DEFAULTS.maxWriteBytes,
  };
}

function checkWrite(i: number, sector: bigint, length: number, diskSectors: bigint, caps: Caps) {
  if (length === 0 || length % SECTOR_SIZE !== 0) {
    throw new DiskDeltaError(
      `entry ${i}: length ${length} is not a positive multiple of ${SECTOR_SIZE}`,
    );
  }
  if (length > caps.maxWriteBytes) {
    throw new DiskDeltaError(`entry ${i}: ${length} bytes, at most ${caps.maxWriteBytes} allowed`);
  }
  const end = sector + BigInt(length / SECTOR_SIZE);
  if (sector < 0n || end > diskSectors) {
    throw new DiskDeltaError(
      `entry ${i}: sectors ${sector}..${end} are outside the disk's ${diskSectors}`,
    );
  }
}
