/**
 * TCP transport: `Deno.connect`/`Deno.listen` on "host:port" (IPv6 as
 * "[::1]:7000"), `setNoDelay(true)` on both ends, a 4 MiB read buffer per
 * link, write loops for partial writes (in the secure layer), a connect +
 * handshake deadline and one-line errors for unreachable peers.
 * @module
 */

import { LinkError, type LinkOptions } from "./types.ts";
import { type RawConnection, type StreamListener, StreamTransportBase } from "./base.ts";
import type { ByteStream } from "./stream.ts";

/** Read buffer per TCP link: large enough that one read can drain a socket buffer. */
export const TCP_READ_BUFFER_BYTES = 4 << 20;

/** "host:port" → parts; throws LinkError on anything else. */
export function parseHostPort(address: string): { hostname: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:\[\]]*):(\d+)$/.exec(address);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new LinkError(`bad address "${address}": expected host:port (IPv6 as [addr]:port)`);
  }
  return { hostname: m[1] === "" ? "0.0.0.0" : m[1], port };
}

/** "host:port" of a Deno address. */
export function formatAddr(a: Deno.Addr): string {
  if (a.transport !== "tcp" && a.transport !== "udp") return String(a.transport);
  return a.hostname.includes(":") ? `[${a.hostname}]:${a.port}` : `${a.hostname}:${a.port}`;
}

/** The reason part of "cannot reach …: <reason>". */
export function reachReason(e: unknown): string {
  if (e instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (e instanceof Deno.errors.NetworkUnreachable) return "network unreachable";
  if (e instanceof Deno.errors.TimedOut) return "timed out";
  if (e instanceof Deno.errors.ConnectionReset) return "connection reset";
  if (e instanceof Deno.errors.AddrNotAvailable) return "address not available";
  const msg = e instanceof Error ? e.message : String(e);
  if (/lookup address|Name or service not known|No address associated/i.test(msg)) {
    return "unknown host";
  }
  if (/No route to host|Host is unreachable/i.test(msg)) return "host unreachable";
  return msg.replace(/\s*\(os error \d+\)$/, "").toLowerCase();
}

/** A TCP connection as a ByteStream (close is idempotent). */
export class TcpStream implements ByteStream {
  #closed = false;
  constructor(readonly conn: Deno.TcpConn) {}

  read(into: Uint8Array): Promise<number | null> {
    return this.conn.read(into);
  }

  write(data: Uint8Array): Promise<number> {
    return this.conn.write(data);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }
}

class TcpStreamListener implements StreamListener {
  readonly address: string;
  #closed = false;

  constructor(readonly listener: Deno.TcpListener) {
    this.address = formatAddr(listener.addr);
  }

  async accept(): Promise<RawConnection | null> {
    while (true) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.listener.accept();
      } catch (e) {
        if (this.#closed || e instanceof Deno.errors.BadResource) return null;
        // A connection that died in the backlog is not the listener's failure.
        if (
          e instanceof Deno.errors.ConnectionAborted || e instanceof Deno.errors.ConnectionReset
        ) {
          continue;
        }
        throw e;
      }
      try {
        conn.setNoDelay(true);
      } catch {
        conn.close();
        continue;
      }
      return { stream: new TcpStream(conn), peer: formatAddr(conn.remoteAddr) };
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.listener.close();
    } catch {
      // already closed
    }
  }
}

/** The TCP transport ("tcp"). */
export class TcpTransport extends StreamTransportBase {
  readonly name = "tcp";
  readonly readBufferBytes: number;

  constructor(options: { readBufferBytes?: number } = {}) {
    super();
    this.readBufferBytes = options.readBufferBytes ?? TCP_READ_BUFFER_BYTES;
  }

  async dial(address: string, opts: LinkOptions, signal: AbortSignal): Promise<RawConnection> {
    const { hostname, port } = parseHostPort(address);
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname, port, signal });
    } catch (e) {
      const who = opts.peerRole ? `${opts.peerRole} ${address}` : address;
      throw new LinkError(`cannot reach ${who}: ${reachReason(e)}`, { cause: e });
    }
    if (signal.aborted) {
      conn.close();
      throw new LinkError(`connecting to ${address} was aborted`);
    }
    conn.setNoDelay(true);
    return { stream: new TcpStream(conn), peer: formatAddr(conn.remoteAddr) };
  }

  bind(address: string, _opts: LinkOptions): StreamListener {
    const { hostname, port } = parseHostPort(address);
    let l: Deno.TcpListener;
    try {
      l = Deno.listen({ hostname, port, transport: "tcp" });
    } catch (e) {
      const why = e instanceof Deno.errors.AddrInUse
        ? "address in use"
        : e instanceof Deno.errors.AddrNotAvailable
        ? "address not available on this host"
        : e instanceof Deno.errors.PermissionDenied
        ? "permission denied"
        : reachReason(e);
      throw new LinkError(`cannot listen on ${address}: ${why}`, { cause: e });
    }
    return new TcpStreamListener(l);
  }
}
