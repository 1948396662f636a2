/**
 * The project's own Redis checker: it runs next to a load (redis-benchmark),
 * over its own connections, and records every write the server acknowledged;
 * at the end it reads all of them back.
 *
 *   deno run -A tests/redis/checker.ts --host 10.77.8.2 [--port 6379]
 *     [--conns 8] [--duration-ms 10000] [--prefix chk] [--keys 2000]
 *     [--progress-ms 250]
 *
 * Each connection c loops: `SET <prefix>:c<c>:s<j % keys> <value>` then
 * `INCR <prefix>:ctr:<c>`, one command at a time. It keeps the last
 * acknowledged value of every key it set, and checks that the INCR replies
 * of the connection are 1, 2, 3, ... with no gap or repeat (also across a
 * failover). The longest time between two replies on a connection is the
 * outage the client saw.
 *
 * The load stops after --duration-ms, or at SIGTERM / SIGINT; then a fresh
 * connection reads every recorded key (MGET in chunks) and every counter
 * (GET) and compares.
 *
 * Output (stdout, one JSON object per line):
 *   CHECKER_PROGRESS {"t":ms,"ops":n,"sets":n,"incrs":n,"errors":n,"maxGapMs":ms,"sinceLastMs":ms}
 *   CHECKER_RESULT {"ok":bool,"ops":n,"sets":n,"incrs":n,"connErrors":n,"errorReplies":n,
 *     "incrBreaks":n,"maxGapMs":ms,"maxGapAtMs":ms,"keysChecked":n,"countersChecked":n,
 *     "mismatches":n,"problems":[...first 10...]}
 * Exit code 0 when ok, 1 otherwise.
 * @module
 */

import { parseArgs } from "node:util";
import { ConnectionError, type Reply, RespConn, show } from "./resp.ts";

export interface CheckerResult {
  ok: boolean;
  ops: number;
  sets: number;
  incrs: number;
  connErrors: number;
  errorReplies: number;
  incrBreaks: number;
  maxGapMs: number;
  /** When the longest gap began, ms after the checker started. */
  maxGapAtMs: number;
  keysChecked: number;
  countersChecked: number;
  mismatches: number;
  problems: string[];
  durationMs: number;
}

export interface CheckerProgress {
  t: number;
  ops: number;
  sets: number;
  incrs: number;
  errors: number;
  maxGapMs: number;
  sinceLastMs: number;
}

interface Options {
  host: string;
  port: number;
  conns: number;
  durationMs: number;
  prefix: string;
  keys: number;
  progressMs: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function connectRetry(o: Options, deadline: number): Promise<RespConn> {
  for (;;) {
    try {
      return await RespConn.connect(o.host, o.port, 5000);
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(200);
    }
  }
}

/** Runs the checker until duration or stop(); returns the result. */
export async function runChecker(
  o: Options,
  stopSignal: { stopped: boolean },
  onProgress: (p: CheckerProgress) => void,
): Promise<CheckerResult> {
  const t0 = performance.now();
  const acked = new Map<string, string>();
  const counters = new Map<string, bigint>();
  /** Keys whose last SET got no reply (connection lost): either value is right. */
  const uncertain = new Map<string, string>();
  const problems: string[] = [];
  const problem = (p: string) => {
    if (problems.length < 10) problems.push(p);
  };
  let ops = 0, sets = 0, incrs = 0, connErrors = 0, errorReplies = 0, incrBreaks = 0;
  let maxGapMs = 0, maxGapAtMs = 0, lastReply = performance.now();
  const stopAt = t0 + o.durationMs;
  const stopping = () => stopSignal.stopped || performance.now() >= stopAt;
  const tag = Math.random().toString(36).slice(2, 8);

  const worker = async (c: number) => {
    const ctr = `${o.prefix}:ctr:${c}`;
    let last = 0n;
    let conn: RespConn | null = null;
    let prevReply = performance.now();
    const onReply = () => {
      const now = performance.now();
      const gap = now - prevReply;
      if (gap > maxGapMs) {
        maxGapMs = gap;
        maxGapAtMs = prevReply - t0;
      }
      prevReply = now;
      lastReply = now;
      ops++;
    };
    let stage: "set" | "incr" = "set", key = "", value = "";
    let incrSlack = false; // an INCR whose reply was lost may have been done
    for (let j = 0; !stopping(); j++) {
      try {
        if (!conn) {
          conn = await connectRetry(o, Date.now() + 30_000);
          prevReply = performance.now();
        }
        key = `${o.prefix}:c${c}:s${j % o.keys}`;
        value = `${tag}-${c}-${j}`;
        stage = "set";
        const r1: Reply = await conn.command("SET", key, value);
        onReply();
        if (r1.type === "simple" && r1.value === "OK") {
          acked.set(key, value);
          uncertain.delete(key);
          sets++;
        } else {
          errorReplies++;
          problem(`SET ${key}: ${show(r1)}`);
        }
        stage = "incr";
        const r2: Reply = await conn.command("INCR", ctr);
        onReply();
        if (r2.type === "int") {
          const slack = incrSlack && r2.value === last + 2n;
          incrSlack = false;
          if (r2.value !== last + 1n && !slack) {
            incrBreaks++;
            problem(`connection ${c}: INCR ${ctr} replied ${r2.value} after ${last}`);
          }
          last = r2.value;
          counters.set(ctr, last);
          incrs++;
        } else {
          errorReplies++;
          problem(`INCR ${ctr}: ${show(r2)}`);
        }
      } catch (e) {
        if (!(e instanceof ConnectionError)) throw e;
        connErrors++;
        problem(`connection ${c}: ${e.message}`);
        // The command in flight may or may not have been done.
        if (stage === "set") uncertain.set(key, value);
        else incrSlack = true;
        conn?.close();
        conn = null;
        await sleep(100);
      }
    }
    conn?.close();
  };

  const timer = setInterval(() => {
    const now = performance.now();
    onProgress({
      t: Math.round(now - t0),
      ops,
      sets,
      incrs,
      errors: connErrors + errorReplies + incrBreaks,
      maxGapMs: Math.round(maxGapMs),
      sinceLastMs: Math.round(now - lastReply),
    });
  }, o.progressMs);
  try {
    await Promise.all(Array.from({ length: o.conns }, (_, c) => worker(c)));
  } finally {
    clearInterval(timer);
  }

  // Read everything back on a fresh connection.
  let keysChecked = 0, countersChecked = 0, mismatches = 0;
  const reader = await connectRetry(o, Date.now() + 30_000);
  try {
    const keys = [...acked.keys()];
    for (let i = 0; i < keys.length; i += 500) {
      const chunk = keys.slice(i, i + 500);
      const r = await reader.command("MGET", ...chunk);
      if (r.type !== "array" || r.value === null || r.value.length !== chunk.length) {
        mismatches += chunk.length;
        problem(`MGET of ${chunk.length} keys: ${show(r).slice(0, 200)}`);
        continue;
      }
      r.value.forEach((v, k) => {
        keysChecked++;
        const want = acked.get(chunk[k]);
        const alt = uncertain.get(chunk[k]);
        if (v.type !== "bulk" || (v.value !== want && (alt === undefined || v.value !== alt))) {
          mismatches++;
          problem(`${chunk[k]}: read ${show(v)}, acknowledged ${JSON.stringify(want)}`);
        }
      });
    }
    for (const [key, want] of counters) {
      const r = await reader.command("GET", key);
      countersChecked++;
      if (r.type !== "bulk" || r.value !== String(want)) {
        mismatches++;
        problem(`${key}: read ${show(r)}, last INCR reply ${want}`);
      }
    }
  } finally {
    reader.close();
  }
  const result: CheckerResult = {
    ok: connErrors === 0 && errorReplies === 0 && incrBreaks === 0 && mismatches === 0 &&
      sets > 0 && incrs > 0,
    ops,
    sets,
    incrs,
    connErrors,
    errorReplies,
    incrBreaks,
    maxGapMs: Math.round(maxGapMs),
    maxGapAtMs: Math.round(maxGapAtMs),
    keysChecked,
    countersChecked,
    mismatches,
    problems,
    durationMs: Math.round(performance.now() - t0),
  };
  return result;
}

/** Parses a CHECKER_RESULT / CHECKER_PROGRESS line, or null. */
export function parseCheckerLine(
  line: string,
): { kind: "progress"; p: CheckerProgress } | { kind: "result"; r: CheckerResult } | null {
  if (line.startsWith("CHECKER_PROGRESS ")) {
    return { kind: "progress", p: JSON.parse(line.slice(17)) };
  }
  if (line.startsWith("CHECKER_RESULT ")) return { kind: "result", r: JSON.parse(line.slice(15)) };
  return null;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      host: { type: "string" },
      port: { type: "string", default: "6379" },
      conns: { type: "string", default: "8" },
      "duration-ms": { type: "string", default: "10000" },
      prefix: { type: "string", default: "chk" },
      keys: { type: "string", default: "2000" },
      "progress-ms": { type: "string", default: "250" },
    },
  });
  if (!values.host) {
    console.error("checker: --host is required");
    Deno.exit(2);
  }
  const stop = { stopped: false };
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(sig, () => (stop.stopped = true));
  }
  const result = await runChecker(
    {
      host: values.host,
      port: Number(values.port),
      conns: Number(values.conns),
      durationMs: Number(values["duration-ms"]),
      prefix: values.prefix!,
      keys: Number(values.keys),
      progressMs: Number(values["progress-ms"]),
    },
    stop,
    (p) => console.log(`CHECKER_PROGRESS ${JSON.stringify(p)}`),
  );
  console.log(`CHECKER_RESULT ${JSON.stringify(result)}`);
  Deno.exit(result.ok ? 0 : 1);
}
