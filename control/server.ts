/**
 * The control socket of a running kemari process: a root-only Unix socket
 * that answers one JSON request per line with one JSON line (status, tap
 * attach/detach, switchover, unprotect).
 * @module
 */

/** A request handler: gets the request, returns the response body. */
export type ControlHandler = (request: Record<string, unknown>) => Promise<unknown> | unknown;

/** Default socket path for a VM name. */
export function controlPath(name: string): string {
  return `/run/kemari/${name}.sock`;
}

/** Serves `handlers` (by `cmd`) on a Unix socket at `path`, mode 0600. */
export class ControlServer {
  #listener: Deno.UnixListener;
  #done: Promise<void>;

  constructor(readonly path: string, readonly handlers: Record<string, ControlHandler>) {
    Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")) || "/", { recursive: true, mode: 0o700 });
    try {
      Deno.removeSync(path);
    } catch { /* not there */ }
    this.#listener = Deno.listen({ transport: "unix", path });
    Deno.chmodSync(path, 0o600);
    this.#done = this.#accept();
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) this.#serve(conn).catch(() => {});
    } catch { /* closed */ }
  }

  async #serve(conn: Deno.UnixConn): Promise<void> {
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of conn.readable) {
        buffer += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          const reply = await this.#handle(line);
          await writeAll(conn, new TextEncoder().encode(JSON.stringify(reply, bigintJson) + "\n"));
        }
      }
    } finally {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }

  async #handle(line: string): Promise<unknown> {
    let request: Record<string, unknown>;
    try {
      request = JSON.parse(line);
    } catch {
      return { ok: false, error: "request is not JSON" };
    }
    const handler = typeof request.cmd === "string" ? this.handlers[request.cmd] : undefined;
    if (!handler) return { ok: false, error: `unknown command ${JSON.stringify(request.cmd)}` };
    try {
      return { ok: true, result: await handler(request) };
    } catch (e) {
      return { ok: false, error: e instanceof Error ? e.message : String(e) };
    }
  }

  async close(): Promise<void> {
    try {
      this.#listener.close();
    } catch { /* closed */ }
    await this.#done;
    try {
      Deno.removeSync(this.path);
    } catch { /* gone */ }
  }
}

/** JSON.stringify replacer for bigint values. */
export function bigintJson(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) done += await conn.write(data.subarray(done));
}

/** Sends one request to the control socket at `path` and returns the result. */
export async function controlRequest(
  path: string,
  request: Record<string, unknown>,
  timeoutMs = 5000,
): Promise<unknown> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path });
  } catch (e) {
    throw new Error(
      `no kemari process answers on ${path} (${e instanceof Error ? e.message : e})`,
    );
  }
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    await writeAll(conn, new TextEncoder().encode(JSON.stringify(request) + "\n"));
    const decoder = new TextDecoder();
    let text = "";
    for await (const chunk of conn.readable) {
      text += decoder.decode(chunk, { stream: true });
      if (text.includes("\n")) break;
    }
    const reply = JSON.parse(text.slice(0, text.indexOf("\n"))) as {
      ok: boolean;
      result?: unknown;
      error?: string;
    };
    if (!reply.ok) throw new Error(reply.error ?? "request failed");
    return reply.result;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
}
