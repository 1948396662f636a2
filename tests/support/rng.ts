/**
 * Seeded pseudo-random numbers for tests: `mulberry32` for schedules and
 * `Rng` (xorshift32) with the message mutations the fuzz tests use.
 * @module
 */

/** mulberry32: a function returning floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seeded PRNG (xorshift32) with the mutations the fuzz tests use. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.#s = x >>> 0);
  }
  /** 0 ≤ result < n. */
  int(n: number): number {
    return n <= 0 ? 0 : this.next() % n;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  fill(b: Uint8Array): void {
    for (let i = 0; i < b.length; i++) b[i] = this.next() & 0xff;
  }
  /** A changed copy of `msg`: flipped bytes, a header field or payload word set, cut or grown. */
  mutate(msg: Uint8Array): Uint8Array {
    let b = msg.slice();
    const dv = () => new DataView(b.buffer, b.byteOffset, b.byteLength);
    const interesting = [0, 1, 2, 0xff, 0x100, 0x101, 0x7fffffff, 0xffffffff, this.next()];
    switch (this.int(6)) {
      case 0:
        for (let n = 1 + this.int(4); n > 0; n--) b[this.int(b.length)] ^= 1 + this.int(255);
        break;
      case 1:
        b = b.slice(0, this.int(b.length));
        break;
      case 2: {
        const g = new Uint8Array(b.length + 1 + this.int(5000));
        g.set(b);
        this.fill(g.subarray(b.length));
        b = g;
        break;
      }
      case 3: {
        const field = this.pick([4, 6, 8, 12, 20]);
        if (field === 4 || field === 6) dv().setUint16(field, this.int(16), true);
        else if (field === 12) dv().setBigUint64(12, BigInt(this.int(10)), true);
        else dv().setUint32(field, this.pick(interesting), true);
        break;
      }
      case 4:
        if (b.length >= 28) {
          dv().setUint32(24 + 4 * this.int((b.length - 24) >> 2), this.pick(interesting), true);
        } else b[0] ^= 1;
        break;
      default: {
        const cut = b.slice(0, 24 + this.int(b.length - 23));
        new DataView(cut.buffer).setUint32(20, cut.length - 24, true);
        b = cut;
      }
    }
    if (b.length === msg.length && b.every((v, i) => v === msg[i])) b[this.int(b.length)] ^= 0x80;
    return b;
  }
}
