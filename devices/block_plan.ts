/**
 * Validation of one blkif request against the guest's RAM and the disk,
 * turning it into an I/O plan or a refusal. Pure: it touches neither guest
 * memory nor the disk, so every guest-controlled field is checked before any
 * I/O starts.
 * @module
 */

import { GPA, PAGE_SHIFT, PAGE_SIZE } from "../machine/layout.ts";
import {
  BLKIF_MAX_SEGMENTS,
  BLKIF_OP,
  BLKIF_RSP,
  type BlkifRequest,
  type BlkifSegment,
  SECTOR_SIZE,
  SECTORS_PER_PAGE,
} from "./blkif.ts";

/** What a request is checked against. */
export interface BlockLimits {
  /** Bytes of guest RAM. */
  ramBytes: number;
  /** Disk size in sectors. */
  diskSectors: bigint;
  readOnly: boolean;
}

/** A run of bytes in guest RAM that maps to consecutive disk bytes. */
export interface Extent {
  gpa: number;
  length: number;
}

/** The I/O a valid request asks for. */
export type BlockPlan =
  | { kind: "read"; sector: bigint; extents: Extent[]; bytes: number }
  | {
    kind: "write";
    sector: bigint;
    extents: Extent[];
    bytes: number;
    /** Flush before writing (WRITE_BARRIER, FLUSH_DISKCACHE with data). */
    flushBefore: boolean;
    /** Flush after writing (WRITE_BARRIER, FLUSH_DISKCACHE with data). */
    flushAfter: boolean;
  }
  | { kind: "flush" };

/** The outcome of validation. */
export type BlockVerdict =
  | { ok: true; plan: BlockPlan }
  | { ok: false; status: number; reason: string };

/**
 * Checks every guest-controlled field of `request`.
 *
 * READ, WRITE and WRITE_BARRIER need 1..11 segments; FLUSH_DISKCACHE takes
 * 0 (a pure flush) or 1..11 (flush, write, flush, as blkback treats a flush
 * carrying data). Each segment must name a whole page of guest RAM at or
 * above GPA.guestFree with first_sect <= last_sect <= 7, and the sector range
 * must lie inside the disk. Other operations (DISCARD, INDIRECT, ...) are
 * not offered and get EOPNOTSUPP.
 */
export function planRequest(request: BlkifRequest, limits: BlockLimits): BlockVerdict {
  const op = request.operation;
  const isFlush = op === BLKIF_OP.flushDiskcache;
  if (op !== BLKIF_OP.read && op !== BLKIF_OP.write && op !== BLKIF_OP.writeBarrier && !isFlush) {
    return refuse(BLKIF_RSP.eopnotsupp, `unsupported operation ${op}`);
  }
  if (isFlush && request.nrSegments === 0) return { ok: true, plan: { kind: "flush" } };
  if (request.nrSegments < 1 || request.nrSegments > BLKIF_MAX_SEGMENTS) {
    return refuse(
      BLKIF_RSP.error,
      `nr_segments ${request.nrSegments} not in 1..${BLKIF_MAX_SEGMENTS}`,
    );
  }
  if (op !== BLKIF_OP.read && limits.readOnly) {
    return refuse(BLKIF_RSP.error, `operation ${op} writes to a read-only disk`);
  }
  const extents: Extent[] = [];
  for (const [i, segment] of request.segments.entries()) {
    const problem = segmentProblem(segment, limits.ramBytes);
    if (problem !== null) return refuse(BLKIF_RSP.error, `segment ${i}: ${problem}`);
    extents.push(extentOf(segment));
  }
  const bytes = extents.reduce((sum, extent) => sum + extent.length, 0);
  const end = request.sectorNumber + BigInt(bytes / SECTOR_SIZE);
  if (end > limits.diskSectors) {
    return refuse(
      BLKIF_RSP.error,
      `sectors ${request.sectorNumber}..${end} beyond the disk's ${limits.diskSectors}`,
    );
  }
  const sector = request.sectorNumber;
  if (op === BLKIF_OP.read) return { ok: true, plan: { kind: "read", sector, extents, bytes } };
  const flushing = op !== BLKIF_OP.write;
  return {
    ok: true,
    plan: { kind: "write", sector, extents, bytes, flushBefore: flushing, flushAfter: flushing },
  };
}

/** Why a segment is invalid, or null. */
function segmentProblem(segment: BlkifSegment, ramBytes: number): string | null {
  const gpa = segment.gref * PAGE_SIZE;
  if (gpa < GPA.guestFree || gpa + PAGE_SIZE > ramBytes) {
    return `gref 0x${segment.gref.toString(16)} (gpa 0x${gpa.toString(16)}) is outside ` +
      `[0x${GPA.guestFree.toString(16)}, 0x${ramBytes.toString(16)})`;
  }
  if (segment.firstSect > segment.lastSect || segment.lastSect >= SECTORS_PER_PAGE) {
    return `sectors ${segment.firstSect}..${segment.lastSect} are not within 0..${
      SECTORS_PER_PAGE - 1
    }`;
  }
  return null;
}

function extentOf(segment: BlkifSegment): Extent {
  return {
    gpa: segment.gref * 2 ** PAGE_SHIFT + segment.firstSect * SECTOR_SIZE,
    length: (segment.lastSect - segment.firstSect + 1) * SECTOR_SIZE,
  };
}

function refuse(status: number, reason: string): BlockVerdict {
  return { ok: false, status, reason };
}
