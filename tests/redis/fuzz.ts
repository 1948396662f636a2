/**
 * Malformed-RESP fuzzer for the guest's Redis server: many short connections,
 * each sending a hostile request stream (random bytes, mutated valid
 * commands, absurd lengths and counts, unbalanced quotes, oversized lines and
 * values, partial commands cut at random points, abrupt closes), and every
 * so often a sanity check (PING on a fresh connection must answer PONG).
 *
 *   deno run -A tests/redis/fuzz.ts --host 10.77.8.2 [--port 6379]
 *     [--iterations 400] [--parallel 6] [--seed 1]
 *
 * Output: FUZZ_RESULT {"ok":bool,"iterations":n,"bytes":n,"closedByServer":n,
 *   "errorReplies":n,"checks":n,"failures":[...]}; exit 0 when every sanity
 *   check passed.
 * @module
 */

import { parseArgs } from "node:util";
import { Rng } from "../support/rng.ts";
import { concat, encodeCommand, RespConn } from "./resp.ts";

const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const COMMANDS = [
  "GET",
  "SET",
  "INCR",
  "INCRBY",
  "DEL",
  "EXISTS",
  "MSET",
  "MGET",
  "PING",
  "ECHO",
  "DBSIZE",
  "CONFIG",
  "INFO",
  "COMMAND",
  "CLIENT",
  "SELECT",
  "DECRBY",
  "NOSUCH",
];

function valid(rng: Rng): Uint8Array {
  const cmd = rng.pick(COMMANDS);
  const n = rng.int(5);
  const args: string[] = [cmd];
  for (let i = 0; i < n; i++) {
    args.push(rng.int(3) === 0 ? String(rng.int(1000) - 500) : `fz:${rng.int(50)}`);
  }
  return encodeCommand(args);
}

/** A changed copy: flipped bytes, a cut, inserted CR/LF/$/* bytes, or random growth. */
function mutate(rng: Rng, msg: Uint8Array): Uint8Array {
  let b: Uint8Array = msg.slice();
  switch (rng.int(5)) {
    case 0:
      for (let n = 1 + rng.int(4); n > 0 && b.length; n--) b[rng.int(b.length)] ^= 1 + rng.int(255);
      break;
    case 1:
      b = b.slice(0, rng.int(b.length));
      break;
    case 2: {
      const at = rng.int(b.length + 1);
      const ins = enc.encode(rng.pick(["\r\n", "\r", "\n", "$", "*", "-1", "99999", "\0"]));
      b = concat([b.subarray(0, at), ins, b.subarray(at)]);
      break;
    }
    case 3: {
      const g = new Uint8Array(b.length + 1 + rng.int(2000));
      g.set(b);
      rng.fill(g.subarray(b.length));
      b = g;
      break;
    }
    default: { // a digit of a length replaced
      const digits = [...b.keys()].filter((i) => b[i] >= 48 && b[i] <= 57);
      if (digits.length) b[rng.pick(digits)] = rng.pick([48, 57, 45, 120]);
    }
  }
  return b;
}

function randomBytes(rng: Rng, n: number): Uint8Array {
  const b = new Uint8Array(n);
  rng.fill(b);
  return b;
}

/** One hostile request stream. */
export function hostile(rng: Rng): Uint8Array {
  const big = (n: number, c = "A") => enc.encode(c.repeat(n));
  switch (rng.int(22)) {
    case 0:
      return randomBytes(rng, 1 + rng.int(3000));
    case 1:
      return mutate(rng, valid(rng));
    case 2:
      return concat([valid(rng), valid(rng), mutate(rng, valid(rng)), valid(rng)]);
    case 3:
      return enc.encode(rng.pick(["*-1\r\n", "*0\r\n", "*-99\r\n", "*\r\n", "*x\r\n", "*1x\r\n"]));
    case 4:
      return enc.encode(`*${rng.pick(["99999999999", "4097", "2147483648", "-2147483649"])}\r\n`);
    case 5:
      return enc.encode(`*2\r\n$3\r\nGET\r\n$${rng.pick(["-1", "-5", "99999999", "x", ""])}\r\n`);
    case 6:
      return enc.encode(`*1\r\n$4\r\nPING${rng.pick(["", "\r", "XX", "\n\n"])}`);
    case 7:
      return enc.encode(`*2\r\n${rng.pick([":1", "+OK", "*1", "-E", "$"])}\r\n$3\r\nfoo\r\n`);
    case 8:
      return enc.encode(`${rng.pick(['SET "a b', "GET 'x", 'ECHO "\\x4', 'SET "a"b c'])}\r\n`);
    case 9:
      return big(70_000 + rng.int(10_000)); // an inline line with no end
    case 10:
      return concat([enc.encode("*3\r\n$3\r\nSET\r\n$2\r\nfz\r\n$40000\r\n"), big(40_000)]);
    case 11:
      return concat([
        enc.encode(`*3\r\n$3\r\nSET\r\n$1100\r\n`),
        big(1100),
        enc.encode("\r\n$1\r\nv\r\n"),
      ]);
    case 12: { // many arguments
      const n = 4000 + rng.int(200);
      const parts = [enc.encode(`*${n}\r\n`)];
      for (let i = 0; i < n; i++) parts.push(enc.encode("$1\r\nx\r\n"));
      return concat(parts);
    }
    case 13: // a valid pipeline then garbage
      return concat([
        ...Array.from({ length: 50 + rng.int(200) }, () => valid(rng)),
        randomBytes(rng, 100),
      ]);
    case 14:
      return enc.encode(`*1\r\n*1\r\n*1\r\n$4\r\nPING\r\n`);
    case 15:
      return enc.encode(
        `INCRBY fz:n ${
          rng.pick([
            "9223372036854775807",
            "-9223372036854775808",
            "1e5",
            "0x10",
            " 1",
            "+1",
            "007",
          ])
        }\r\nINCRBY fz:n 9223372036854775807\r\n`,
      );
    case 16:
      return enc.encode(`${"\r\n".repeat(rng.int(100))}PING\r\n\n\n\r\r\n`);
    case 17:
      return concat([enc.encode("*2\r\n$4\r\nECHO\r\n$65536\r\n"), big(65536)]);
    case 18: // a request larger than the input buffer, made of many small args
      return concat([
        enc.encode("*3000\r\n"),
        ...Array.from({ length: 3000 }, () => enc.encode("$30\r\n" + "z".repeat(30) + "\r\n")),
      ]);
    case 19:
      return enc.encode(`CONFIG GET ${"*".repeat(rng.int(3000))}a${"*?".repeat(rng.int(500))}\r\n`);
    case 20:
      return enc.encode(
        `MGET ${Array.from({ length: 3000 }, (_, i) => `fz:${i % 50}`).join(" ")}\r\n`,
      );
    default:
      return concat([valid(rng), randomBytes(rng, rng.int(50)), valid(rng)]);
  }
}

export interface FuzzResult {
  ok: boolean;
  iterations: number;
  bytes: number;
  closedByServer: number;
  checks: number;
  failures: string[];
}

async function sanity(host: string, port: number): Promise<string | null> {
  try {
    const c = await RespConn.connect(host, port, 5000);
    try {
      const r = await Promise.race([
        c.command("PING"),
        sleep(10_000).then(() => null),
      ]);
      if (!r || r.type !== "simple" || r.value !== "PONG") {
        return `PING answered ${JSON.stringify(r)}`;
      }
      return null;
    } finally {
      c.close();
    }
  } catch (e) {
    return `sanity check: ${e}`;
  }
}

/** Runs `iterations` hostile connections, `parallel` at a time. */
export async function fuzz(
  host: string,
  port: number,
  iterations: number,
  parallel: number,
  seed: number,
): Promise<FuzzResult> {
  const res: FuzzResult = {
    ok: true,
    iterations: 0,
    bytes: 0,
    closedByServer: 0,
    checks: 0,
    failures: [],
  };
  let next = 0;
  const one = async (i: number) => {
    const rng = new Rng(seed * 1_000_003 + i);
    const payload = hostile(rng);
    let c: RespConn;
    try {
      c = await RespConn.connect(host, port, 5000);
    } catch (e) {
      res.failures.push(`iteration ${i}: connect: ${e}`);
      return;
    }
    try {
      // Send in random pieces, sometimes with pauses (partial requests).
      let off = 0;
      while (off < payload.length) {
        const n = 1 + rng.int(Math.min(payload.length - off, rng.int(2) ? 64 : 20_000));
        await c.write(payload.subarray(off, off + n));
        off += n;
        if (rng.int(8) === 0) await sleep(rng.int(20));
      }
      res.bytes += payload.length;
      const mode = rng.int(3);
      if (mode > 0) {
        const d = await c.drain(mode === 1 ? 50 : 300);
        if (d.closed) res.closedByServer++;
      }
    } catch {
      // the server may close or reset hostile connections: that is fine
    } finally {
      c.close();
      res.iterations++;
    }
  };
  const workers = Array.from({ length: parallel }, async () => {
    for (;;) {
      const i = next++;
      if (i >= iterations) return;
      await one(i);
      if (i % 50 === 49) {
        res.checks++;
        const f = await sanity(host, port);
        if (f) res.failures.push(`after iteration ${i}: ${f}`);
      }
    }
  });
  await Promise.all(workers);
  res.checks++;
  const f = await sanity(host, port);
  if (f) res.failures.push(`at the end: ${f}`);
  res.ok = res.failures.length === 0;
  return res;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      host: { type: "string" },
      port: { type: "string", default: "6379" },
      iterations: { type: "string", default: "400" },
      parallel: { type: "string", default: "6" },
      seed: { type: "string", default: "1" },
    },
  });
  if (!values.host) {
    console.error("fuzz: --host is required");
    Deno.exit(2);
  }
  const r = await fuzz(
    values.host,
    Number(values.port),
    Number(values.iterations),
    Number(values.parallel),
    Number(values.seed),
  );
  console.log(`FUZZ_RESULT ${JSON.stringify(r)}`);
  Deno.exit(r.ok ? 0 : 1);
}
