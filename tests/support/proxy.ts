/**
 * A TCP forwarder on 127.0.0.1 for the link-cut tests: it forwards to a
 * target and can cut every connection through it and refuse new ones for a
 * while (a broken cable), or for good.
 * @module
 */

export class CutProxy {
  readonly port: number;
  #listener: Deno.TcpListener;
  #conns = new Set<Deno.Conn>();
  #cutUntil = 0;
  #done: Promise<void>;

  /** @param rateBytesPerSec forward at most this fast (each direction); 0: no limit */
  constructor(readonly targetPort: number, readonly rateBytesPerSec = 0) {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#done = this.#accept();
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async #accept(): Promise<void> {
    try {
      for await (const inbound of this.#listener) {
        if (performance.now() < this.#cutUntil) {
          inbound.close();
          continue;
        }
        this.#pipe(inbound).catch(() => {});
      }
    } catch { /* closed */ }
  }

  async #pipe(inbound: Deno.TcpConn): Promise<void> {
    let outbound: Deno.TcpConn;
    try {
      outbound = await Deno.connect({ hostname: "127.0.0.1", port: this.targetPort });
    } catch {
      inbound.close();
      return;
    }
    inbound.setNoDelay(true);
    outbound.setNoDelay(true);
    this.#conns.add(inbound);
    this.#conns.add(outbound);
    const close = () => {
      for (const c of [inbound, outbound]) {
        this.#conns.delete(c);
        try {
          c.close();
        } catch { /* closed */ }
      }
    };
    const rate = this.rateBytesPerSec;
    await Promise.allSettled([copy(inbound, outbound, rate), copy(outbound, inbound, rate)]);
    close();
  }

  /** Breaks every connection now and refuses new ones for `ms` (Infinity: for good). */
  cut(ms: number): void {
    this.#cutUntil = performance.now() + ms;
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    this.#conns.clear();
  }

  async close(): Promise<void> {
    this.cut(Infinity);
    this.#listener.close();
    await this.#done;
  }
}

async function copy(from: Deno.Conn, to: Deno.Conn, rate: number): Promise<void> {
  const buf = new Uint8Array(rate ? 64 * 1024 : 1 << 20);
  const start = performance.now();
  let total = 0;
  for (;;) {
    const n = await from.read(buf);
    if (n === null) break;
    let done = 0;
    while (done < n) done += await to.write(buf.subarray(done, n));
    total += n;
    if (rate) {
      const due = start + (total / rate) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }
  try {
    to.closeWrite();
  } catch { /* closed */ }
}
