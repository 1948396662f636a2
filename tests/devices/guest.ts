/**
 * Test helpers that play the guest's role: they write the shared pages
 * directly through the raw buffer (guest writes are not VMM writes, so they
 * never show up in GuestMemory's dirty record).
 * @module
 */

import { GuestMemory } from "../../hypervisor/guest_memory.ts";
import { GPA, PAGE_SIZE } from "../../machine/layout.ts";
import {
  BLKIF_REQUEST_SIZE,
  type BlkifRequest,
  type BlkifResponse,
  type BlkifSegment,
  decodeResponse,
  encodeRequest,
  RING,
  RING_HEADER_BYTES,
  XENCONS,
} from "../../devices/mod.ts";

export const RAM_BYTES = 8 * 1024 * 1024;
/** Bytes past the end of RAM in the backing buffer, filled with a canary. */
export const TAIL_BYTES = 64 * 1024;
const CANARY = 0xa5;

/** 8 MiB of guest RAM over a larger buffer whose tail is a canary. */
export function newMemory(): GuestMemory {
  const buffer = new ArrayBuffer(RAM_BYTES + TAIL_BYTES);
  new Uint8Array(buffer, RAM_BYTES).fill(CANARY);
  return new GuestMemory(buffer, RAM_BYTES);
}

/** A second GuestMemory over a copy of `mem`'s buffer (what a standby would hold). */
export function copyMemory(mem: GuestMemory): GuestMemory {
  return new GuestMemory(mem.buffer.slice(0), mem.size);
}

/** Regions no backend may write: below the fixed pages' neighbours and past RAM. */
export const CANARY_REGIONS: readonly { gpa: number; length: number }[] = [
  { gpa: 0x0, length: GPA.clock }, // null page .. boot page
  { gpa: GPA.netTx, length: GPA.guestFree - GPA.netTx }, // reserved net rings .. guest free
  { gpa: RAM_BYTES, length: TAIL_BYTES }, // beyond RAM
];

/** Fills the canary regions inside RAM (the tail was filled by newMemory). */
export function fillCanaries(mem: GuestMemory): void {
  const all = new Uint8Array(mem.buffer);
  for (const { gpa, length } of CANARY_REGIONS) all.fill(CANARY, gpa, gpa + length);
}

/** Offset of the first canary byte that changed, or -1. */
export function damagedCanary(mem: GuestMemory): number {
  const all = new Uint8Array(mem.buffer);
  for (const { gpa, length } of CANARY_REGIONS) {
    for (let i = gpa; i < gpa + length; i++) if (all[i] !== CANARY) return i;
  }
  return -1;
}

/** Page numbers set in a dirty bitmap. */
export function dirtyPages(bitmap: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < bitmap.length * 8; i++) if (bitmap[i >> 3] & (1 << (i & 7))) pages.push(i);
  return pages;
}

/** Harvests the VMM's dirty pages. */
export function harvest(mem: GuestMemory): number[] {
  const bitmap = new Uint8Array(mem.bitmapBytes);
  mem.takeDirty(bitmap);
  return dirtyPages(bitmap);
}

/** The guest side of the blkif ring at GPA.block. */
export class BlockFront {
  readonly nrEnts = 32;
  reqProd: number;
  rspCons: number;

  constructor(readonly mem: GuestMemory) {
    this.reqProd = mem.view.getUint32(GPA.block + RING.reqProd, true);
    this.rspCons = mem.view.getUint32(GPA.block + RING.rspProd, true);
  }

  /** Sets every shared index to `index` (a fresh ring starting there). */
  resetAt(index: number): void {
    for (const offset of [RING.reqProd, RING.rspProd]) {
      this.mem.view.setUint32(GPA.block + offset, index, true);
    }
    this.mem.view.setUint32(GPA.block + RING.reqEvent, index + 1, true);
    this.mem.view.setUint32(GPA.block + RING.rspEvent, index + 1, true);
    this.reqProd = index;
    this.rspCons = index;
  }

  /** Writes a request into the next slot (not yet published). */
  post(request: BlkifRequest): void {
    this.postRaw(encodeRequest(request));
  }

  /** Writes raw request bytes into the next slot (not yet published). */
  postRaw(bytes: Uint8Array): void {
    const slot = GPA.block + RING_HEADER_BYTES +
      (this.reqProd & (this.nrEnts - 1)) * BLKIF_REQUEST_SIZE;
    this.mem.bytes.set(bytes, slot);
    this.reqProd = (this.reqProd + 1) >>> 0;
  }

  /** Publishes posted requests (req_prod). */
  publish(): void {
    this.mem.view.setUint32(GPA.block + RING.reqProd, this.reqProd, true);
  }

  /** Consumes every published response. */
  responses(): BlkifResponse[] {
    const rspProd = this.mem.view.getUint32(GPA.block + RING.rspProd, true);
    const out: BlkifResponse[] = [];
    while (this.rspCons !== rspProd) {
      const slot = GPA.block + RING_HEADER_BYTES +
        (this.rspCons & (this.nrEnts - 1)) * BLKIF_REQUEST_SIZE;
      out.push(decodeResponse(this.mem.bytes.slice(slot, slot + 16)));
      this.rspCons = (this.rspCons + 1) >>> 0;
    }
    return out;
  }
}

/** The guest side of the console at GPA.console. */
export class ConsoleFront {
  constructor(readonly mem: GuestMemory) {}

  #u32(offset: number): number {
    return this.mem.view.getUint32(GPA.console + offset, true);
  }

  #setU32(offset: number, value: number): void {
    this.mem.view.setUint32(GPA.console + offset, value >>> 0, true);
  }

  /** Writes as much of `bytes` as fits into out[]; returns the count written. */
  write(bytes: Uint8Array): number {
    const prod = this.#u32(XENCONS.outProd);
    const room = XENCONS.outSize - ((prod - this.#u32(XENCONS.outCons)) >>> 0);
    const n = Math.min(room, bytes.length);
    for (let i = 0; i < n; i++) {
      this.mem.bytes[GPA.console + XENCONS.out + ((prod + i) & (XENCONS.outSize - 1))] = bytes[i];
    }
    this.#setU32(XENCONS.outProd, prod + n);
    return n;
  }

  /** Sets out_prod directly (to misbehave). */
  setOutProd(value: number): void {
    this.#setU32(XENCONS.outProd, value);
  }

  /** Sets both out indexes and in indexes to start at the given values. */
  resetAt(out: number, input: number): void {
    this.#setU32(XENCONS.outCons, out);
    this.#setU32(XENCONS.outProd, out);
    this.#setU32(XENCONS.inCons, input);
    this.#setU32(XENCONS.inProd, input);
  }

  /** Reads everything in in[in_cons..in_prod) and advances in_cons. */
  read(): Uint8Array {
    const cons = this.#u32(XENCONS.inCons);
    const n = (this.#u32(XENCONS.inProd) - cons) >>> 0;
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = this.mem.bytes[GPA.console + XENCONS.in + ((cons + i) & (XENCONS.inSize - 1))];
    }
    this.#setU32(XENCONS.inCons, cons + n);
    return out;
  }

  /** Sets in_cons directly (to misbehave). */
  setInCons(value: number): void {
    this.#setU32(XENCONS.inCons, value);
  }

  get outCons(): number {
    return this.#u32(XENCONS.outCons);
  }

  get inProd(): number {
    return this.#u32(XENCONS.inProd);
  }
}

/** A deterministic byte pattern. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Page frame number (gref in KVM mode) of a GPA. */
export function gref(gpa: number): number {
  return gpa / PAGE_SIZE;
}

/** A captured log, for EventPage's logger. */
export class LogCapture {
  readonly lines: string[] = [];
  readonly logger = (line: string): void => {
    this.lines.push(line);
  };
}

/** A blkif segment covering sectors first..last of the page at `gpa`. */
export function seg(gpa: number, firstSect = 0, lastSect = 7): BlkifSegment {
  return { gref: gref(gpa), firstSect, lastSect };
}

/** A blkif request. */
export function req(
  op: number,
  id: bigint,
  sector: bigint,
  segments: BlkifSegment[],
): BlkifRequest {
  return {
    operation: op,
    nrSegments: segments.length,
    handle: 0,
    id,
    sectorNumber: sector,
    segments,
  };
}

/** A value through JSON and back (what a saved state goes through). */
export const roundTrip = <T>(value: T): T => JSON.parse(JSON.stringify(value));
