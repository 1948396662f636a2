/**
 * Shared helpers of the transport tests: keys, options with a captured log,
 * polling, and a recording stream wrapper for replay tests.
 * @module
 */

import type { ByteStream } from "../../transport/stream.ts";
import type { LinkOptions } from "../../transport/types.ts";

/** A fixed 32-byte key (`fill` distinguishes "wrong" keys). */
export function testKey(fill = 7): Uint8Array {
  return new Uint8Array(32).fill(fill);
}

/** Link options plus the log lines they produced. */
export function options(
  extra: Partial<LinkOptions> = {},
): LinkOptions & { lines: string[] } {
  const lines: string[] = [];
  return { key: testKey(), channel: "replication", log: (l) => lines.push(l), ...extra, lines };
}

/** Polls `cond` until true; throws after `ms`. */
export async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Bytes `n` long with a position-dependent pattern (so misplaced bytes show). */
export function pattern(n: number, salt = 0): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + salt + (i >>> 8)) & 0xff;
  return b;
}

/**
 * Records everything written through it; with `swallow` set, writes are
 * recorded but not forwarded (a frame "lost" on the wire).
 */
export class Recorder implements ByteStream {
  readonly written: Uint8Array[] = [];
  swallow = false;
  constructor(readonly inner: ByteStream) {}

  read(into: Uint8Array): Promise<number | null> {
    return this.inner.read(into);
  }

  async write(data: Uint8Array): Promise<number> {
    const n = this.swallow ? data.length : await this.inner.write(data);
    this.written.push(data.slice(0, n));
    return n;
  }

  close(): void {
    this.inner.close();
  }

  /** Everything written so far, concatenated. */
  bytes(): Uint8Array {
    const total = this.written.reduce((a, b) => a + b.length, 0);
    const out = new Uint8Array(total);
    let o = 0;
    for (const w of this.written) {
      out.set(w, o);
      o += w.length;
    }
    return out;
  }
}

/** Bytes of HELLO + PROOF for a channel name. */
export function handshakeBytes(channel = "replication"): number {
  return 48 + new TextEncoder().encode(channel).length + 32;
}
