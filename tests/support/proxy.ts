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

  constructor(readonly targetPort: number) {
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
    await Promise.allSettled([copy(inbound, outbound), copy(outbound, inbound)]);
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

async function copy(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(1 << 20);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) break;
    let done = 0;
    while (done < n) done += await to.write(buf.subarray(done, n));
  }
  try {
    to.closeWrite();
  } catch { /* closed */ }
}
