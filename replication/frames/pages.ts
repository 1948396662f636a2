/**
 * Page batches: the payload of PRECOPY and CKPT_PAGES.
 *
 *   u32 count (1..256) · count × u32 page number (strictly increasing) · count × 4096-byte page
 *
 * Two encoders for the primary: {@link encodePages} sends views into guest
 * memory (no copy; for pre-copy, where a page changed during the send is dirty
 * and sent again later) and {@link gatherPages} copies pages into reusable
 * chunk buffers (for checkpoints: the copy is taken while the VM is paused,
 * and the VM resumes before the send).
 * @module
 */

import { PAGE_SIZE } from "../../machine/layout.ts";
import {
  type Frame,
  HEADER_BYTES,
  MAX_PAGES_PER_MESSAGE,
  type MsgTypeName,
  pageBatchBytes,
  ProtocolError,
  writeHeader,
} from "./header.ts";

/** Pages and their contents: page `pages[i]` is `data[i*4096 .. (i+1)*4096)`. */
export interface PageBatch {
  pages: Uint32Array;
  data: Uint8Array;
}

/** Options of the page encoders. */
export interface PageFrameOptions {
  /** The checkpoint the pages belong to (CKPT_PAGES); omitted or 0n: PRECOPY. */
  epoch?: bigint;
}

/** Bytes of a chunk buffer: the largest page message, header included. */
export const CHUNK_BYTES = HEADER_BYTES + pageBatchBytes(MAX_PAGES_PER_MESSAGE);

/**
 * Decodes a page-batch payload. Page numbers are checked against `ramPages`;
 * without it (RAM size not known yet) any page message is refused. `data` is
 * a view into `payload`; `pages` is a copy.
 */
export function decodePageBatch(
  payload: Uint8Array,
  what: MsgTypeName,
  ramPages: number | undefined,
): PageBatch {
  if (payload.length < 4) throw new ProtocolError("length", `${what} payload has no page count`);
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const count = dv.getUint32(0, true);
  if (count === 0) throw new ProtocolError("payload", `${what} with 0 pages`);
  if (count > MAX_PAGES_PER_MESSAGE) {
    throw new ProtocolError(
      "limit",
      `${what} with ${count} pages (limit ${MAX_PAGES_PER_MESSAGE})`,
    );
  }
  if (payload.length !== pageBatchBytes(count)) {
    throw new ProtocolError(
      "length",
      `${what} payload of ${payload.length} bytes for ${count} pages (expected ${
        pageBatchBytes(count)
      })`,
    );
  }
  if (ramPages === undefined) {
    throw new ProtocolError("state", `${what} before the RAM size is known`);
  }
  const pages = new Uint32Array(count);
  let prev = -1;
  for (let i = 0; i < count; i++) {
    const p = dv.getUint32(4 + 4 * i, true);
    if (p >= ramPages) {
      throw new ProtocolError("range", `page ${p} out of range (RAM has ${ramPages} pages)`);
    }
    if (p <= prev) {
      throw new ProtocolError("order", `${what} page ${p} after page ${prev} (must increase)`);
    }
    pages[i] = prev = p;
  }
  const at = 4 + 4 * count;
  return { pages, data: payload.subarray(at, at + count * PAGE_SIZE) };
}

/** Checks that `pages` is strictly increasing and inside `memory` (a local bug otherwise). */
function checkPages(pages: ArrayLike<number>, memory: Uint8Array): void {
  const ramPages = Math.floor(memory.length / PAGE_SIZE);
  let prev = -1;
  for (let i = 0; i < pages.length; i++) {
    const p = pages[i];
    if (!Number.isInteger(p) || p <= prev || p >= ramPages) {
      throw new RangeError(`page list: page ${p} at index ${i} is out of order or out of range`);
    }
    prev = p;
  }
}

function typeOf(options: PageFrameOptions): { type: MsgTypeName; epoch: bigint } {
  const epoch = options.epoch ?? 0n;
  return { type: epoch === 0n ? "PRECOPY" : "CKPT_PAGES", epoch };
}

/** Writes header, count and page numbers of batch `pages[from, from+count)` into `into`. */
function writeBatchHead(
  into: Uint8Array,
  type: MsgTypeName,
  epoch: bigint,
  pages: ArrayLike<number>,
  from: number,
  count: number,
): void {
  writeHeader(into, type, epoch, pageBatchBytes(count));
  const dv = new DataView(into.buffer, into.byteOffset + HEADER_BYTES, 4 + 4 * count);
  dv.setUint32(0, count, true);
  for (let i = 0; i < count; i++) dv.setUint32(4 + 4 * i, pages[from + i], true);
}

/**
 * One page message (PRECOPY, or CKPT_PAGES with `options.epoch`) holding
 * `pages` (1..256, ascending) whose contents are `data`, copied into one buffer.
 */
export function encodePageMessage(
  pages: ArrayLike<number>,
  data: Uint8Array,
  options: PageFrameOptions = {},
): Uint8Array {
  const count = pages.length;
  if (count < 1 || count > MAX_PAGES_PER_MESSAGE || data.length !== count * PAGE_SIZE) {
    throw new RangeError(`a page message of ${count} pages with ${data.length} bytes`);
  }
  let prev = -1;
  for (let i = 0; i < count; i++) {
    if (!Number.isInteger(pages[i]) || pages[i] <= prev || pages[i] > 0xffffffff) {
      throw new RangeError(`page list: page ${pages[i]} at index ${i} is out of order or range`);
    }
    prev = pages[i];
  }
  const { type, epoch } = typeOf(options);
  const out = new Uint8Array(HEADER_BYTES + pageBatchBytes(count));
  writeBatchHead(out, type, epoch, pages, 0, count);
  out.set(data, HEADER_BYTES + 4 + 4 * count);
  return out;
}

/**
 * Page messages for `pageNumbers` (ascending) of `memory` without copying
 * page contents: each frame is [header + index table, views into `memory`
 * (one per run of consecutive pages)]. The views are live: send them before
 * the pages may change, or accept that a changed page is resent (pre-copy).
 */
export function encodePages(
  pageNumbers: ArrayLike<number>,
  memory: Uint8Array,
  options: PageFrameOptions = {},
): Frame[] {
  checkPages(pageNumbers, memory);
  const { type, epoch } = typeOf(options);
  const frames: Frame[] = [];
  for (let from = 0; from < pageNumbers.length; from += MAX_PAGES_PER_MESSAGE) {
    const count = Math.min(MAX_PAGES_PER_MESSAGE, pageNumbers.length - from);
    const head = new Uint8Array(HEADER_BYTES + 4 + 4 * count);
    writeBatchHead(head, type, epoch, pageNumbers, from, count);
    const frame: Frame = [head];
    let runStart = pageNumbers[from], runLength = 1;
    for (let i = from + 1; i <= from + count; i++) {
      const p = i < from + count ? pageNumbers[i] : -1;
      if (p === runStart + runLength) {
        runLength++;
        continue;
      }
      frame.push(memory.subarray(runStart * PAGE_SIZE, (runStart + runLength) * PAGE_SIZE));
      runStart = p;
      runLength = 1;
    }
    frames.push(frame);
  }
  return frames;
}

/**
 * Copies `pages` (ascending) of `mem` into chunk buffers and returns one
 * single-part frame per message (a view into its chunk). Call it while the VM
 * is paused; afterwards guest memory may change freely.
 *
 * `into` holds chunk buffers of {@link CHUNK_BYTES} reused across calls (it is
 * extended when more are needed): the frames of the previous call become
 * invalid, so use two arrays to send one checkpoint while gathering the next.
 */
export function gatherPages(
  mem: Uint8Array,
  pages: ArrayLike<number>,
  into: Uint8Array[] = [],
  options: PageFrameOptions = {},
): Frame[] {
  checkPages(pages, mem);
  const { type, epoch } = typeOf(options);
  const frames: Frame[] = [];
  for (let from = 0, n = 0; from < pages.length; from += MAX_PAGES_PER_MESSAGE, n++) {
    const count = Math.min(MAX_PAGES_PER_MESSAGE, pages.length - from);
    if (!into[n] || into[n].length < CHUNK_BYTES) into[n] = new Uint8Array(CHUNK_BYTES);
    const chunk = into[n];
    writeBatchHead(chunk, type, epoch, pages, from, count);
    let at = HEADER_BYTES + 4 + 4 * count;
    for (let i = from; i < from + count;) {
      let run = 1;
      while (i + run < from + count && pages[i + run] === pages[i] + run) run++;
      chunk.set(mem.subarray(pages[i] * PAGE_SIZE, (pages[i] + run) * PAGE_SIZE), at);
      at += run * PAGE_SIZE;
      i += run;
    }
    frames.push([chunk.subarray(0, at)]);
  }
  return frames;
}
