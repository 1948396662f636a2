/**
 * JSON for plain states that hold byte arrays and bigints: a Uint8Array is
 * written as {"$b64": "..."} and a bigint as {"$big": "123"}. Decoding
 * treats the input as untrusted: only objects with exactly that one key are
 * converted, and their strings are checked.
 * @module
 */

import { Buffer } from "node:buffer";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Converts byte arrays and bigints into their JSON stand-ins (a copy). */
function lower(v: unknown): unknown {
  if (typeof v === "bigint") return { $big: v.toString() };
  if (v instanceof Uint8Array) return { $b64: Buffer.from(v).toString("base64") };
  if (Array.isArray(v)) return v.map(lower);
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const k in v) {
      const x = (v as Record<string, unknown>)[k];
      if (x !== undefined) out[k] = lower(x);
    }
    return out;
  }
  return v;
}

const BIG = /^-?\d{1,40}$/;

/** Converts the stand-ins back, in place; throws on a malformed one. */
function raise(v: unknown): unknown {
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = raise(v[i]);
    return v;
  }
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if ("$big" in o || "$b64" in o) {
      const keys = Object.keys(o);
      if (keys.length === 1 && typeof o.$big === "string") {
        if (!BIG.test(o.$big)) throw new Error("bad bigint");
        return BigInt(o.$big);
      }
      if (keys.length === 1 && typeof o.$b64 === "string") return fromBase64(o.$b64);
    }
    for (const k in o) o[k] = raise(o[k]);
  }
  return v;
}

function fromBase64(s: string): Uint8Array {
  if (s.length % 4 !== 0) throw new Error("bad base64");
  const bytes = new Uint8Array(Buffer.from(s, "base64"));
  // Canonical only: what decodes must encode back to the same text.
  const pad = s.endsWith("==") ? 2 : s.endsWith("=") ? 1 : 0;
  if (bytes.length !== (s.length / 4) * 3 - pad) throw new Error("bad base64");
  return bytes;
}

/** JSON bytes of `value`, with Uint8Array and bigint values. */
export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(lower(value)));
}

/** Inverse of encodeJson; throws on malformed input. */
export function decodeJson(bytes: Uint8Array): unknown {
  return raise(JSON.parse(decoder.decode(bytes)));
}
