/**
 * A TCP forwarder that delays one direction, for the output-commit test
 * (output_commit_test.ts). Run inside the standby's namespace:
 *
 *   deno run -A tests/net/delay_forward.ts LISTEN_PORT TARGET_HOST:PORT DELAY_MS
 *
 * It listens on 127.0.0.1:LISTEN_PORT; for each connection it connects to
 * TARGET and copies both ways. Bytes from the accepted side to the target
 * (the standby's ACKs to the primary) are written DELAY_MS after they were
 * read, in order; the other direction (checkpoints) is not delayed. Prints
 * "listening" once ready. Runs until killed.
 * @module
 */

const [portArg, target, delayArg] = Deno.args;
const port = Number(portArg);
const delayMs = Number(delayArg);
const sep = target?.lastIndexOf(":") ?? -1;
if (!Number.isInteger(port) || sep < 0 || !(delayMs >= 0)) {
  console.error("usage: delay_forward.ts LISTEN_PORT TARGET_HOST:PORT DELAY_MS");
  Deno.exit(2);
}
const targetHost = target.slice(0, sep);
const targetPort = Number(target.slice(sep + 1));

/** Copies `from` to `to` as it comes. */
async function copy(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(1 << 20);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let done = 0;
      while (done < n) done += await to.write(buf.subarray(done, n));
    }
  } finally {
    try {
      to.closeWrite();
    } catch { /* closed */ }
  }
}

/** Copies `from` to `to`, each chunk `delayMs` after it was read. */
async function delayedCopy(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const queue: { due: number; data: Uint8Array | null }[] = [];
  let wake: (() => void) | null = null;
  const writer = (async () => {
    for (;;) {
      while (queue.length === 0) await new Promise<void>((r) => (wake = r));
      const head = queue[0];
      const wait = head.due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      queue.shift();
      if (head.data === null) break;
      let done = 0;
      while (done < head.data.length) done += await to.write(head.data.subarray(done));
    }
    try {
      to.closeWrite();
    } catch { /* closed */ }
  })();
  const push = (data: Uint8Array | null) => {
    queue.push({ due: performance.now() + delayMs, data });
    const w = wake;
    wake = null;
    w?.();
  };
  const buf = new Uint8Array(1 << 16);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      push(buf.slice(0, n));
    }
  } finally {
    push(null);
  }
  await writer;
}

async function serve(inbound: Deno.TcpConn): Promise<void> {
  let outbound: Deno.TcpConn;
  try {
    outbound = await Deno.connect({ hostname: targetHost, port: targetPort });
  } catch {
    inbound.close();
    return;
  }
  inbound.setNoDelay(true);
  outbound.setNoDelay(true);
  await Promise.allSettled([delayedCopy(inbound, outbound), copy(outbound, inbound)]);
  for (const c of [inbound, outbound]) {
    try {
      c.close();
    } catch { /* closed */ }
  }
}

const listener = Deno.listen({ hostname: "127.0.0.1", port });
console.log("listening");
for await (const conn of listener) serve(conn).catch(() => {});
