/**
 * Rewrites the metadata of a kemari state file with valid checksums, so tests
 * can hand restore a well-formed file whose content is hostile or foreign.
 * @module
 */

import { crc32 } from "node:zlib";
import { decodeJson, encodeJson } from "../../machine/state_file.ts";

const HEADER = 16, SECTION = 24;
const META = 0x4154454d, END = 0x21444e45;

/** Applies `edit` to the metadata of `src` and writes the result to `dst`. */
export function editStateMeta(
  src: string,
  dst: string,
  edit: (meta: Record<string, unknown>) => void,
): void {
  const bytes = Deno.readFileSync(src);
  const parts: Uint8Array[] = [bytes.subarray(0, HEADER)];
  let off = HEADER;
  for (;;) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset + off, SECTION);
    const tag = dv.getUint32(0, true);
    const length = Number(dv.getBigUint64(8, true));
    if (tag === END) break;
    const payload = bytes.subarray(off + SECTION, off + SECTION + length);
    if (tag === META) {
      const meta = decodeJson(payload) as Record<string, unknown>;
      edit(meta);
      const json = encodeJson(meta);
      parts.push(sectionHeader(META, json.length, crc32(json)), json);
    } else {
      parts.push(bytes.subarray(off, off + SECTION + length));
    }
    off += SECTION + length;
  }
  let all = 0;
  for (const p of parts) all = crc32(p, all);
  parts.push(sectionHeader(END, 0, all));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  Deno.writeFileSync(dst, out);
}

function sectionHeader(tag: number, length: number, crc: number): Uint8Array {
  const h = new Uint8Array(SECTION);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, tag, true);
  dv.setBigUint64(8, BigInt(length), true);
  dv.setUint32(16, crc >>> 0, true);
  return h;
}
