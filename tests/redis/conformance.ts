/**
 * Protocol conformance checks for the guest's Redis server, run inside the
 * test namespace against a live server (host harness or VM):
 *
 *   deno run -A tests/redis/conformance.ts --host 10.77.9.2 [--port 6379]
 *
 * Every supported command with its exact RESP2 reply, the error replies
 * (unknown command, arity, types, limits), inline commands with quoting,
 * pipelining (1,000 commands in one write), requests split byte by byte
 * across writes, a request spanning many TCP segments, 64 concurrent
 * connections, QUIT, and a protocol error closing the connection.
 * Output: CONFORMANCE_RESULT {"ok":bool,"checks":n,"failures":[...]}.
 * @module
 */

import { parseArgs } from "node:util";
import { concat, encodeCommand, type Reply, RespConn, show } from "./resp.ts";

const enc = new TextEncoder();

export async function conformance(host: string, port: number): Promise<{
  ok: boolean;
  checks: number;
  failures: string[];
}> {
  const failures: string[] = [];
  let checks = 0;
  const expect = (what: string, got: Reply, want: string | RegExp) => {
    checks++;
    const s = show(got);
    const good = typeof want === "string" ? s === want : want.test(s);
    if (!good) failures.push(`${what}: got ${s}, want ${want}`);
  };
  const c = await RespConn.connect(host, port);
  const cmd = (...a: string[]) => c.command(...a);
  const p = `cf${Date.now() % 100000}`;
  try {
    expect("PING", await cmd("PING"), "+PONG");
    expect("PING msg", await cmd("PING", "hi"), '"hi"');
    expect("ECHO", await cmd("ECHO", "hello world"), '"hello world"');
    expect("ECHO binary", await cmd("ECHO", "a\r\nb\u0000c"), JSON.stringify("a\r\nb\u0000c"));
    expect("SET", await cmd("SET", `${p}:a`, "1"), "+OK");
    expect("GET", await cmd("GET", `${p}:a`), '"1"');
    expect("GET missing", await cmd("GET", `${p}:none`), "(nil)");
    expect("SET empty", await cmd("SET", `${p}:empty`, ""), "+OK");
    expect("GET empty", await cmd("GET", `${p}:empty`), '""');
    expect("INCR", await cmd("INCR", `${p}:a`), ":2");
    expect("INCR new", await cmd("INCR", `${p}:n`), ":1");
    expect("INCRBY", await cmd("INCRBY", `${p}:n`, "41"), ":42");
    expect("INCRBY negative", await cmd("INCRBY", `${p}:n`, "-50"), ":-8");
    expect("DECR", await cmd("DECR", `${p}:n`), ":-9");
    expect("DECRBY", await cmd("DECRBY", `${p}:n`, "1"), ":-10");
    expect("GET counter", await cmd("GET", `${p}:n`), '"-10"');
    expect("INCR not int", await cmd("INCR", `${p}:empty`), /^-ERR value is not an integer/);
    expect("INCRBY bad arg", await cmd("INCRBY", `${p}:n`, "1.5"), /^-ERR value is not an integer/);
    await cmd("SET", `${p}:max`, "9223372036854775807");
    expect(
      "INCR overflow",
      await cmd("INCR", `${p}:max`),
      /^-ERR increment or decrement would overflow/,
    );
    expect("MSET", await cmd("MSET", `${p}:x`, "X", `${p}:y`, "Y"), "+OK");
    expect(
      "MSET odd",
      await cmd("MSET", `${p}:x`, "X", `${p}:y`),
      /^-ERR wrong number of arguments/,
    );
    expect("MGET", await cmd("MGET", `${p}:x`, `${p}:none`, `${p}:y`), '["X", (nil), "Y"]');
    expect("EXISTS", await cmd("EXISTS", `${p}:x`, `${p}:none`, `${p}:x`), ":2");
    expect("DEL", await cmd("DEL", `${p}:x`, `${p}:none`, `${p}:x`), ":1");
    expect("EXISTS after DEL", await cmd("EXISTS", `${p}:x`), ":0");
    expect("SET NX existing", await cmd("SET", `${p}:y`, "Z", "NX"), "(nil)");
    expect("SET XX missing", await cmd("SET", `${p}:zz`, "Z", "XX"), "(nil)");
    expect("SET GET", await cmd("SET", `${p}:y`, "Z", "GET"), '"Y"');
    expect("SET EX", await cmd("SET", `${p}:y`, "Z", "EX", "10"), /^-ERR key expiry/);
    expect("SET syntax", await cmd("SET", `${p}:y`, "Z", "BOGUS"), "-ERR syntax error");
    expect("DBSIZE", await cmd("DBSIZE"), /^:\d+$/);
    expect(
      "unknown",
      await cmd("NOSUCH", "a", "b"),
      "-ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' ",
    );
    expect("arity", await cmd("GET"), "-ERR wrong number of arguments for 'get' command");
    expect("case", await cmd("gEt", `${p}:y`), '"Z"');
    expect("CONFIG GET save", await cmd("CONFIG", "GET", "save"), '["save", ""]');
    expect(
      "CONFIG GET appendonly",
      await cmd("CONFIG", "GET", "appendonly"),
      '["appendonly", "yes"]',
    );
    expect("CONFIG GET none", await cmd("CONFIG", "GET", "nosuchparam"), "[]");
    expect(
      "CONFIG GET glob",
      await cmd("CONFIG", "GET", "max*"),
      /^\["maxclients", "128", "maxmemory", "\d+", "maxmemory-policy", "noeviction"\]$/,
    );
    expect("INFO", await cmd("INFO"), /redis_version:7\.0\.0.*kemari_log_sync:(each|batch)/s);
    expect("COMMAND", await cmd("COMMAND", "DOCS"), "[]");
    expect("CLIENT SETNAME", await cmd("CLIENT", "SETNAME", "x"), "+OK");
    expect("SELECT 0", await cmd("SELECT", "0"), "+OK");
    expect("SELECT 1", await cmd("SELECT", "1"), "-ERR DB index is out of range");
    expect("key too long", await cmd("SET", "k".repeat(1025), "v"), /^-ERR key too long/);
    expect(
      "value too long",
      await cmd("SET", `${p}:big`, "v".repeat(33_000)),
      /^-ERR value too long/,
    );
    expect("value at limit", await cmd("SET", `${p}:big`, "v".repeat(32_768)), "+OK");
    const big = await cmd("GET", `${p}:big`);
    checks++;
    if (big.type !== "bulk" || big.value?.length !== 32_768) failures.push("GET 32 KiB value");

    // Inline commands, with quoting.
    await c.write(
      enc.encode(`SET ${p}:q "a b\\x41\\n" \r\nGET ${p}:q\r\nGET '${p}:q'\r\n\r\nPING\r\n`),
    );
    expect("inline SET", await c.read(), "+OK");
    expect("inline GET", await c.read(), JSON.stringify("a bA\n"));
    expect("inline single quotes", await c.read(), JSON.stringify("a bA\n"));
    expect("inline PING", await c.read(), "+PONG");

    // Pipelining: 1,000 commands in one write, replies in order.
    const pipe = [];
    for (let i = 0; i < 1000; i++) pipe.push(encodeCommand(["INCR", `${p}:pipe`]));
    await c.write(concat(pipe));
    let inOrder = true;
    for (let i = 1; i <= 1000; i++) {
      const r = await c.read();
      if (show(r) !== `:${i}`) inOrder = false;
    }
    checks++;
    if (!inOrder) failures.push("pipelined INCR replies out of order");

    // A request split byte by byte, and one spanning many segments.
    const split = concat([
      encodeCommand(["SET", `${p}:split`, "x".repeat(300)]),
      encodeCommand(["GET", `${p}:split`]),
    ]);
    for (let i = 0; i < split.length; i += 1 + (i % 3)) {
      await c.write(split.subarray(i, i + 1 + (i % 3)));
    }
    expect("split SET", await c.read(), "+OK");
    expect("split GET", await c.read(), JSON.stringify("x".repeat(300)));
    const mset: string[] = ["MSET"];
    for (let i = 0; i < 300; i++) mset.push(`${p}:m${i}`, "v".repeat(150));
    expect("large MSET", await c.command(...mset), "+OK");
    expect(
      "large MGET",
      await c.command("MGET", `${p}:m0`, `${p}:m299`),
      JSON.stringify(["v".repeat(150), "v".repeat(150)]).replace(/,/g, ", "),
    );

    // 64 concurrent connections.
    const many = await Promise.all(Array.from({ length: 64 }, () => RespConn.connect(host, port)));
    const replies = await Promise.all(
      many.map((m, i) => m.command("INCRBY", `${p}:many`, String(i + 1))),
    );
    for (const m of many) m.close();
    const total = await cmd("GET", `${p}:many`);
    expect("64 connections", total, `"${(64 * 65) / 2}"`);
    checks++;
    if (replies.some((r) => r.type !== "int")) {
      failures.push("64 connections: a reply was not an integer");
    }

    // QUIT, and a protocol error that closes the connection.
    const q = await RespConn.connect(host, port);
    expect("QUIT", await q.command("QUIT"), "+OK");
    const qd = await q.drain(2000);
    checks++;
    if (!qd.closed) failures.push("QUIT did not close the connection");
    q.close();
    const e = await RespConn.connect(host, port);
    await e.write(enc.encode("*2\r\n$3\r\nGET\r\n$-7\r\n"));
    expect("protocol error", await e.read(), "-ERR Protocol error: invalid bulk length");
    const ed = await e.drain(2000);
    checks++;
    if (!ed.closed) failures.push("a protocol error did not close the connection");
    e.close();

    expect("FLUSHALL", await cmd("FLUSHALL"), "+OK");
    expect("DBSIZE after FLUSHALL", await cmd("DBSIZE"), ":0");
  } catch (e) {
    failures.push(`exception: ${e}`);
  } finally {
    c.close();
  }
  return { ok: failures.length === 0, checks, failures };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { host: { type: "string" }, port: { type: "string", default: "6379" } },
  });
  const r = await conformance(values.host ?? "127.0.0.1", Number(values.port));
  console.log(`CONFORMANCE_RESULT ${JSON.stringify(r)}`);
  Deno.exit(r.ok ? 0 : 1);
}
