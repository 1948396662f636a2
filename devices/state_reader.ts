/**
 * Validation of saved device state, which is untrusted input: it may come
 * from another host, a corrupted file or an attacker. Every accessor checks
 * type and range and throws {@link DeviceStateError} with a one-line message.
 * @module
 */

import { Buffer } from "node:buffer";
import { DeviceStateError } from "./device.ts";

const U32_LIMIT = 2 ** 32;
const U64_LIMIT = 2n ** 64n;

/** Reads typed fields out of an untrusted, JSON-like state object. */
export class StateReader {
  readonly #fields: Record<string, unknown>;

  private constructor(
    readonly device: string,
    fields: Record<string, unknown>,
    readonly path: string,
  ) {
    this.#fields = fields;
  }

  /** Wraps `state`, which must be a plain (non-array) object. */
  static of(device: string, state: unknown, path = "state"): StateReader {
    if (typeof state !== "object" || state === null || Array.isArray(state)) {
      throw new DeviceStateError(device, `${path}: expected an object, got ${describe(state)}`);
    }
    return new StateReader(device, state as Record<string, unknown>, path);
  }

  /** Throws a DeviceStateError for this device. */
  fail(message: string): never {
    throw new DeviceStateError(this.device, message);
  }

  /** The raw value of a field that must be present. */
  field(key: string): unknown {
    if (!Object.hasOwn(this.#fields, key)) this.fail(`${this.#name(key)}: missing`);
    return this.#fields[key];
  }

  /** A nested object. */
  object(key: string): StateReader {
    return StateReader.of(this.device, this.field(key), this.#name(key));
  }

  /** An integer in [min, max]. */
  int(key: string, min: number, max: number): number {
    const value = this.field(key);
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
      this.fail(
        `${this.#name(key)}: expected an integer in [${min}, ${max}], got ${describe(value)}`,
      );
    }
    return value;
  }

  /** A free-running ring index: an integer in [0, 2^32). */
  u32(key: string): number {
    return this.int(key, 0, U32_LIMIT - 1);
  }

  /** A counter: a non-negative safe integer. */
  count(key: string): number {
    return this.int(key, 0, Number.MAX_SAFE_INTEGER);
  }

  /** A boolean. */
  bool(key: string): boolean {
    const value = this.field(key);
    if (typeof value !== "boolean") {
      this.fail(`${this.#name(key)}: expected a boolean, got ${describe(value)}`);
    }
    return value;
  }

  /** A string of at most `maxLength` UTF-16 units. */
  string(key: string, maxLength: number): string {
    const value = this.field(key);
    if (typeof value !== "string" || value.length > maxLength) {
      this.fail(
        `${this.#name(key)}: expected a string of at most ${maxLength} characters, got ${
          describe(value)
        }`,
      );
    }
    return value;
  }

  /** A u64 carried as a decimal string (JSON has no 64-bit integers). */
  u64(key: string): bigint {
    const value = this.field(key);
    if (typeof value !== "string" || !/^(0|[1-9][0-9]{0,19})$/.test(value)) {
      this.fail(`${this.#name(key)}: expected a decimal u64 string, got ${describe(value)}`);
    }
    const parsed = BigInt(value);
    if (parsed >= U64_LIMIT) this.fail(`${this.#name(key)}: ${value} does not fit in a u64`);
    return parsed;
  }

  /** One of a fixed set of strings. */
  oneOf<T extends string>(key: string, values: readonly T[]): T {
    const value = this.field(key);
    if (typeof value !== "string" || !(values as readonly string[]).includes(value)) {
      this.fail(`${this.#name(key)}: expected one of ${values.join(", ")}, got ${describe(value)}`);
    }
    return value as T;
  }

  /** An array of at most `maxLength` objects, each wrapped in a reader. */
  objects(key: string, maxLength: number): StateReader[] {
    const value = this.field(key);
    if (!Array.isArray(value) || value.length > maxLength) {
      this.fail(
        `${this.#name(key)}: expected an array of at most ${maxLength} entries, got ${
          describe(value)
        }${Array.isArray(value) ? ` of ${value.length}` : ""}`,
      );
    }
    return value.map((item, i) => StateReader.of(this.device, item, `${this.#name(key)}[${i}]`));
  }

  /**
   * Bytes carried as canonical base64 (what {@link encodeBase64} writes), at
   * most `maxBytes` of them. The string's length is checked before decoding.
   */
  bytes(key: string, maxBytes: number): Uint8Array {
    const value = this.field(key);
    const maxChars = 4 * Math.ceil(maxBytes / 3);
    if (typeof value !== "string" || value.length > maxChars) {
      this.fail(
        `${this.#name(key)}: expected base64 of at most ${maxBytes} bytes, got ${describe(value)}`,
      );
    }
    const bytes = decodeBase64(value);
    if (bytes === null) this.fail(`${this.#name(key)}: not canonical base64`);
    if (bytes.length > maxBytes) {
      this.fail(`${this.#name(key)}: ${bytes.length} bytes, at most ${maxBytes} allowed`);
    }
    return bytes;
  }

  /** Checks the state format version against the versions this build reads; returns it. */
  versionIn(versions: readonly number[]): number {
    const value = this.field("version");
    if (typeof value !== "number" || !versions.includes(value)) {
      this.fail(
        `${this.#name("version")}: expected one of ${versions.join(", ")}, got ${describe(value)}`,
      );
    }
    return value;
  }

  /** Checks the state format version. */
  version(expected: number): void {
    const value = this.field("version");
    if (value !== expected) {
      this.fail(`${this.#name("version")}: expected ${expected}, got ${describe(value)}`);
    }
  }

  #name(key: string): string {
    return `${this.path}.${key}`;
  }
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Standard base64 (with padding) of `bytes`: the compact JSON form of byte strings in states. */
export function encodeBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/**
 * Decodes canonical padded base64 into a fresh Uint8Array, or returns null
 * if `text` is not exactly what {@link encodeBase64} would write (stray
 * characters, missing padding, non-zero trailing bits).
 */
export function decodeBase64(text: string): Uint8Array | null {
  if (!BASE64.test(text)) return null;
  const decoded = Buffer.from(text, "base64");
  if (decoded.toString("base64") !== text) return null;
  return new Uint8Array(decoded);
}

/** A short, safe description of an untrusted value for error messages. */
function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string":
      return value.length > 40 ? `a string of ${value.length} characters` : JSON.stringify(value);
    case "number":
    case "boolean":
    case "bigint":
      return String(value);
    default:
      return typeof value;
  }
}
