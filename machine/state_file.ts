/**
 * The kemari state file: a saved VM (metadata, vCPU, devices, memory) in one
 * file, restorable by another process.
 *
 *   header   "KEMARIST" u32 version u32 reserved
 *   section  u32 tag, u32 reserved, u64 length, u32 crc32(payload), u32 reserved, payload
 *   ...      "META" (JSON), "MEMR" (memory runs), "END!" (length 0, crc32 of all bytes before it)
 *
 * All integers little-endian. MEMR holds runs: u32 first page, u32 page count,
 * then the pages. Everything read is untrusted: sizes, tags, checksums and
 * page numbers are checked, and a truncated or corrupted file is refused with
 * one clear line.
 * @module
 */

import { crc32 } from "node:zlib";
import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { PAGE_SIZE } from "./layout.ts";
import { dirtyPages } from "../hypervisor/kvm/memory.ts";

const MAGIC = "KEMARIST";
export const STATE_VERSION = 1;
const HEADER = 16;
const SECTION = 24;
const TAG = { META: 0x4154454d, MEMR: 0x524d454d, END: 0x21444e45 } as const;
/** Largest META section accepted (a corrupt length must not allocate gigabytes). */
const MAX_META = 16 * 1024 * 1024;
const CHUNK_PAGES = 256;

/** The state file is unreadable, truncated, corrupt or from another version. */
export class StateFileError extends Error {
  constructor(path: string, message: string) {
    super(`state file ${path}: ${message}`);
    this.name = "StateFileError";
  }
}

export { decodeJson, encodeJson } from "./plain_json.ts";
import { decodeJson, encodeJson } from "./plain_json.ts";

/** Streams sections into a file with running checksums. */
class Writer {
  #crcAll = 0;
  constructor(readonly file: Deno.FsFile) {}

  raw(bytes: Uint8Array): void {
    this.#crcAll = crc32(bytes, this.#crcAll);
    let done = 0;
    while (done < bytes.length) done += this.file.writeSync(bytes.subarray(done));
  }

  section(tag: number, length: number, crc: number): void {
    const h = new Uint8Array(SECTION);
    const dv = new DataView(h.buffer);
    dv.setUint32(0, tag, true);
    dv.setBigUint64(8, BigInt(length), true);
    dv.setUint32(16, crc >>> 0, true);
    this.raw(h);
  }

  get crcAll(): number {
    return this.#crcAll;
  }
}

/**
 * Writes `meta` and the pages set in `pages` (a bitmap) of `mem` to `path`
 * (atomically: a temporary file renamed into place).
 */
export function writeStateFile(
  path: string,
  meta: unknown,
  mem: GuestMemory,
  pages: Uint8Array,
): void {
  const tmp = `${path}.tmp-${Deno.pid}`;
  const file = Deno.openSync(tmp, { write: true, create: true, truncate: true });
  try {
    const w = new Writer(file);
    const header = new Uint8Array(HEADER);
    header.set(new TextEncoder().encode(MAGIC));
    new DataView(header.buffer).setUint32(8, STATE_VERSION, true);
    w.raw(header);
    const json = encodeJson(meta);
    w.section(TAG.META, json.length, crc32(json));
    w.raw(json);
    const runs = pageRuns(dirtyPages(pages, mem.pages));
    let length = 0, crc = 0;
    for (const [first, count] of runs) {
      const rh = runHeader(first, count);
      crc = crc32(mem.read(first * PAGE_SIZE, count * PAGE_SIZE), crc32(rh, crc));
      length += 8 + count * PAGE_SIZE;
    }
    w.section(TAG.MEMR, length, crc);
    for (const [first, count] of runs) {
      w.raw(runHeader(first, count));
      w.raw(mem.read(first * PAGE_SIZE, count * PAGE_SIZE));
    }
    w.section(TAG.END, 0, w.crcAll);
    file.syncSync();
  } finally {
    file.close();
  }
  Deno.renameSync(tmp, path);
}

function runHeader(first: number, count: number): Uint8Array {
  const rh = new Uint8Array(8);
  const dv = new DataView(rh.buffer);
  dv.setUint32(0, first, true);
  dv.setUint32(4, count, true);
  return rh;
}

/** Groups sorted page numbers into [first, count] runs of at most CHUNK_PAGES. */
export function pageRuns(pages: number[]): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (const p of pages) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === p && last[1] < CHUNK_PAGES) last[1]++;
    else runs.push([p, 1]);
  }
  return runs;
}

/** Reads exactly `into.length` bytes or reports truncation. */
function readFull(file: Deno.FsFile, into: Uint8Array, path: string): void {
  let done = 0;
  while (done < into.length) {
    const n = file.readSync(into.subarray(done));
    if (n === null) throw new StateFileError(path, "truncated");
    done += n;
  }
}

/** Reads the metadata of a state file (without memory). */
export function readStateMeta(path: string): unknown {
  return readStateFile(path, undefined);
}

/**
 * Reads a state file. With `mem`, memory runs are copied into it (RAM sizes
 * must match; the caller checks that from the metadata first via
 * readStateMeta) and each restored page is marked dirty. Returns the metadata.
 */
export function readStateFile(path: string, mem: GuestMemory | undefined): unknown {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (e) {
    throw new StateFileError(path, e instanceof Error ? e.message : String(e));
  }
  try {
    return new Reader(file, path).read(mem);
  } finally {
    file.close();
  }
}

/** Reads sections in order, keeping the running checksum of the whole file. */
class Reader {
  #crcAll = 0;
  constructor(readonly file: Deno.FsFile, readonly path: string) {}

  #bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    this.#into(b);
    return b;
  }

  #into(b: Uint8Array): void {
    readFull(this.file, b, this.path);
    this.#crcAll = crc32(b, this.#crcAll);
  }

  #fail(message: string): StateFileError {
    return new StateFileError(this.path, message);
  }

  read(mem: GuestMemory | undefined): unknown {
    const header = this.#bytes(HEADER);
    if (new TextDecoder().decode(header.subarray(0, 8)) !== MAGIC) {
      throw this.#fail("not a kemari state file");
    }
    const version = new DataView(header.buffer).getUint32(8, true);
    if (version !== STATE_VERSION) {
      throw this.#fail(`version ${version}, this kemari reads ${STATE_VERSION}`);
    }
    let meta: unknown = undefined;
    for (;;) {
      const crcBefore = this.#crcAll;
      const dv = new DataView(this.#bytes(SECTION).buffer);
      const tag = dv.getUint32(0, true);
      const length = Number(dv.getBigUint64(8, true));
      const crc = dv.getUint32(16, true);
      if (tag === TAG.END) {
        if (crc !== crcBefore >>> 0) throw this.#fail("checksum mismatch (corrupt)");
        if (meta === undefined) throw this.#fail("no metadata");
        return meta;
      } else if (tag === TAG.META) {
        meta = this.#meta(length, crc);
      } else if (tag === TAG.MEMR) {
        if (meta === undefined) throw this.#fail("memory before metadata");
        if (!mem) return meta;
        this.#memory(mem, length, crc);
      } else {
        throw this.#fail(`unknown section 0x${tag.toString(16)}`);
      }
    }
  }

  #meta(length: number, crc: number): unknown {
    if (length > MAX_META) throw this.#fail(`metadata length ${length} too large`);
    const json = this.#bytes(length);
    if (crc32(json) !== crc) throw this.#fail("metadata checksum mismatch (corrupt)");
    try {
      return decodeJson(json);
    } catch {
      throw this.#fail("metadata is not valid JSON");
    }
  }

  #memory(mem: GuestMemory, length: number, crc: number): void {
    let left = length, sum = 0;
    while (left > 0) {
      if (left < 8) throw this.#fail("memory section is malformed");
      const rh = this.#bytes(8);
      const dv = new DataView(rh.buffer);
      const first = dv.getUint32(0, true), count = dv.getUint32(4, true);
      const bytes = count * PAGE_SIZE;
      if (count === 0 || count > CHUNK_PAGES || 8 + bytes > left) {
        throw this.#fail("memory run is malformed");
      }
      if (!mem.contains(first * PAGE_SIZE, bytes)) {
        throw this.#fail(`memory run at page ${first} is outside guest RAM`);
      }
      const dest = mem.writable(first * PAGE_SIZE, bytes);
      this.#into(dest);
      sum = crc32(dest, crc32(rh, sum));
      left -= 8 + bytes;
    }
    if (sum !== crc) throw this.#fail("memory checksum mismatch (corrupt)");
  }
}
