/**
 * A small RESP2 client over Deno.connect, for the project's own checker and
 * fuzzer (tests/redis/checker.ts, fuzz.ts) and the demo. Written here from the
 * protocol description; it depends on nothing but Deno.
 * @module
 */

/** A decoded RESP2 reply. Bulk strings are decoded as UTF-8 text. */
export type Reply =
  | { type: "simple"; value: string }
  | { type: "error"; value: string }
  | { type: "int"; value: bigint }
  | { type: "bulk"; value: string | null }
  | { type: "array"; value: Reply[] | null };

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The RESP2 encoding of one command. */
export function encodeCommand(args: readonly (string | Uint8Array)[]): Uint8Array {
  const parts: Uint8Array[] = [enc.encode(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = typeof a === "string" ? enc.encode(a) : a;
    parts.push(enc.encode(`$${b.length}\r\n`), b, enc.encode("\r\n"));
  }
  return concat(parts);
}

/** Concatenation of byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** The connection failed or the server closed it. */
export class ConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConnectionError";
  }
}

/** One client connection; commands may be pipelined (replies come in order). */
export class RespConn {
  #conn: Deno.TcpConn;
  #buf = new Uint8Array(0);
  #closed = false;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  static async connect(host: string, port: number, timeoutMs = 10_000): Promise<RespConn> {
    const timer = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new ConnectionError(`connect timeout ${host}:${port}`)), timeoutMs)
    );
    let c: Deno.TcpConn;
    try {
      c = await Promise.race([Deno.connect({ hostname: host, port }), timer]);
    } catch (e) {
      throw e instanceof ConnectionError ? e : new ConnectionError(String(e));
    }
    c.setNoDelay(true);
    return new RespConn(c);
  }

  /** Writes raw bytes. */
  async write(bytes: Uint8Array): Promise<void> {
    try {
      let off = 0;
      while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
    } catch (e) {
      throw new ConnectionError(`write: ${e}`);
    }
  }

  /** Sends a command and returns its reply. */
  async command(...args: (string | Uint8Array)[]): Promise<Reply> {
    await this.write(encodeCommand(args));
    return await this.read();
  }

  /** Reads one reply (throws ConnectionError when the stream ends first). */
  async read(): Promise<Reply> {
    for (;;) {
      const r = parseReply(this.#buf, 0);
      if (r) {
        this.#buf = this.#buf.subarray(r.end);
        return r.reply;
      }
      await this.#fill();
    }
  }

  /**
   * Reads whatever arrives until the server closes or `ms` pass. Returns the
   * bytes and whether the stream ended.
   */
  async drain(ms: number): Promise<{ bytes: number; closed: boolean }> {
    let bytes = this.#buf.length;
    this.#buf = new Uint8Array(0);
    const deadline = Date.now() + ms;
    const chunk = new Uint8Array(65536);
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) return { bytes, closed: false };
      let timer: ReturnType<typeof setTimeout> | undefined;
      const t = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), left)));
      try {
        const n = await Promise.race([this.#conn.read(chunk), t]);
        if (n === "timeout") return { bytes, closed: false };
        if (n === null) return { bytes, closed: true };
        bytes += n;
      } catch {
        return { bytes, closed: true };
      } finally {
        clearTimeout(timer);
      }
    }
  }

  async #fill(): Promise<void> {
    const chunk = new Uint8Array(65536);
    let n: number | null;
    try {
      n = await this.#conn.read(chunk);
    } catch (e) {
      throw new ConnectionError(`read: ${e}`);
    }
    if (n === null) throw new ConnectionError("the server closed the connection");
    const b = new Uint8Array(this.#buf.length + n);
    b.set(this.#buf);
    b.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = b;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }
}

function lineEnd(buf: Uint8Array, from: number): number {
  for (let i = from; i + 1 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10) return i;
  }
  return -1;
}

/** Parses one reply at buf[at..]; null when it is incomplete. Throws on garbage. */
export function parseReply(buf: Uint8Array, at: number): { reply: Reply; end: number } | null {
  if (at >= buf.length) return null;
  const e = lineEnd(buf, at + 1);
  if (e < 0) return null;
  const line = dec.decode(buf.subarray(at + 1, e));
  const next = e + 2;
  switch (buf[at]) {
    case 43: // +
      return { reply: { type: "simple", value: line }, end: next };
    case 45: // -
      return { reply: { type: "error", value: line }, end: next };
    case 58: // :
      return { reply: { type: "int", value: BigInt(line) }, end: next };
    case 36: { // $
      const n = Number(line);
      if (n < 0) return { reply: { type: "bulk", value: null }, end: next };
      if (buf.length < next + n + 2) return null;
      return {
        reply: { type: "bulk", value: dec.decode(buf.subarray(next, next + n)) },
        end: next + n + 2,
      };
    }
    case 42: { // *
      const n = Number(line);
      if (n < 0) return { reply: { type: "array", value: null }, end: next };
      const items: Reply[] = [];
      let pos = next;
      for (let i = 0; i < n; i++) {
        const r = parseReply(buf, pos);
        if (!r) return null;
        items.push(r.reply);
        pos = r.end;
      }
      return { reply: { type: "array", value: items }, end: pos };
    }
    default:
      throw new Error(`bad reply type byte ${buf[at]}`);
  }
}

/** A short text form of a reply, for messages. */
export function show(r: Reply): string {
  switch (r.type) {
    case "simple":
      return `+${r.value}`;
    case "error":
      return `-${r.value}`;
    case "int":
      return `:${r.value}`;
    case "bulk":
      return r.value === null ? "(nil)" : JSON.stringify(r.value);
    case "array":
      return r.value === null ? "(nil array)" : `[${r.value.map(show).join(", ")}]`;
  }
}
