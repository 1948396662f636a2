/**
 * `kemari demo`: the failover demo on one machine. Starts a standby and a
 * primary (two kemari processes on loopback, each with its own disk image),
 * runs the logwriter guest under protection, kills the primary with SIGKILL
 * mid-run, shows the standby taking over, and checks at the end that what
 * the outside world saw — console and disk — has no gap and no loss.
 * @module
 */

import { parse, parseDuration, str, UsageError } from "./common.ts";
import { controlRequest } from "../control/server.ts";
import type { Status } from "../replication/status.ts";
import { crc32 } from "node:zlib";

export const DEMO_HELP =
  `Usage: kemari demo [--records N] [--rate R] [--kill-after TIME] [--mode MODE]

Runs the failover demo on this machine: a standby and a primary (separate
processes on 127.0.0.1), the logwriter guest writing checksummed records to its
disk and console, a kill -9 of the primary after --kill-after, the takeover,
and a summary that verifies every record the outside world saw.

Options:
  --records N        records the guest writes            [default: 600]
  --rate R           records per second                  [default: 100]
  --kill-after TIME  when to kill the primary            [default: 2500ms]
  --mode MODE        kemari | remus | hybrid             [default: kemari]
  -h, --help         this help`;

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Child {
  name: string;
  proc: Deno.ChildProcess;
  log: Promise<string>;
  control: string;
}

function start(name: string, args: string[], control: string): Child {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args, "--control", control],
    stdout: "null",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  return { name, proc, log: new Response(proc.stderr).text(), control };
}

async function status(c: Child): Promise<Status | null> {
  try {
    return await controlRequest(c.control, { cmd: "status" }, 1000) as Status;
  } catch {
    return null;
  }
}

function freePort(): number {
  for (;;) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    try {
      Deno.listen({ hostname: "127.0.0.1", port: port + 1 }).close();
      return port;
    } catch { /* taken: try another */ }
  }
}

function lines(path: string): string[] {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l.startsWith("rec "));
  } catch {
    return [];
  }
}

export async function demo(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    records: { type: "string" },
    rate: { type: "string" },
    "kill-after": { type: "string" },
    mode: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  const records = Number(str(values.records, "600"));
  const rate = Number(str(values.rate, "100"));
  if (!Number.isInteger(records) || records < 10 || !Number.isInteger(rate) || rate < 1) {
    throw new UsageError("--records must be ≥ 10 and --rate ≥ 1");
  }
  const killAfter = parseDuration(str(values["kill-after"], "2500ms"), "--kill-after");
  const mode = str(values.mode, "kemari");
  const dir = await Deno.makeTempDir({ prefix: "kemari-demo-" });
  const children: Child[] = [];
  const cleanup = async () => {
    for (const c of children) {
      try {
        c.proc.kill("SIGKILL");
      } catch { /* gone */ }
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const onSignal = () => {
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    const key = `${dir}/key`;
    Deno.writeTextFileSync(
      key,
      Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, "0"))
        .join(""),
    );
    const port = freePort(), port2 = freePort();
    const common = ["--key", key, "--memory", "64M", "--mode", mode];
    for (const d of ["primary.img", "standby.img"]) {
      const f = Deno.createSync(`${dir}/${d}`);
      f.truncateSync(8 << 20);
      f.close();
    }
    console.log(
      `kemari demo: primary and standby on 127.0.0.1:${port}, logwriter ${records} records at ${rate}/s, ${mode} mode`,
    );
    const standby = start("standby", [
      "standby",
      "--primary",
      `127.0.0.1:${port}`,
      "--listen",
      `127.0.0.1:${port2}`,
      "--disk",
      `${dir}/standby.img`,
      "--console",
      `file:${dir}/standby.txt`,
      ...common,
    ], `${dir}/standby.sock`);
    children.push(standby);
    const primary = start("primary", [
      "primary",
      "--listen",
      `127.0.0.1:${port}`,
      "--guest",
      "logwriter",
      "--args",
      `records=${records} rate=${rate} dirty=32`,
      "--disk",
      `${dir}/primary.img`,
      "--console",
      `file:${dir}/primary.txt`,
      ...common,
    ], `${dir}/primary.sock`);
    children.push(primary);

    let ready: Status | null = null;
    for (let i = 0; i < 600 && !(ready?.state === "ready"); i++) {
      await sleep(50);
      ready = await status(standby);
    }
    if (ready?.state !== "ready") {
      throw new Error(`the standby never got ready:\n${await standby.log}`);
    }
    console.log("standby ready: the guest is protected");
    const t0 = performance.now();
    const tty = Deno.stdout.isTerminal();
    let printed = 0;
    while (performance.now() - t0 < killAfter) {
      const s = await status(primary);
      const now = performance.now();
      if (s && (tty || now - printed >= 1000)) {
        printed = now;
        const line = `  primary: epoch ${s.epoch}, last pause ${
          s.lastPauseMs?.toFixed(2) ?? "-"
        } ms, held ${s.held.count}, console "${s.guest.console}"`;
        Deno.stdout.writeSync(new TextEncoder().encode(tty ? `\r\x1b[2K${line}` : `${line}\n`));
      }
      await sleep(100);
    }
    console.log("\nkilling the primary (SIGKILL) …");
    const killedAt = performance.now();
    primary.proc.kill("SIGKILL");
    await primary.proc.status;
    let tookOver = -1;
    for (let i = 0; i < 400; i++) {
      const s = await status(standby);
      if (s?.role === "primary") {
        tookOver = performance.now() - killedAt;
        break;
      }
      await sleep(5);
    }
    if (tookOver < 0) throw new Error(`no takeover:\n${await standby.log}`);
    console.log(`the standby took over after ${tookOver.toFixed(0)} ms; the guest goes on there`);
    const end = await standby.proc.status;
    const a = lines(`${dir}/primary.txt`), b = lines(`${dir}/standby.txt`);
    const seen = new Map<number, string>();
    for (const l of [...a, ...b]) seen.set(Number(l.split(" ")[1]), l);
    const gaps = [];
    for (let n = 1; n <= records; n++) if (!seen.has(n)) gaps.push(n);
    const verified = verifyLog(`${dir}/standby.img`, records);
    console.log("\nsummary");
    console.log(
      `  records written       ${records} (primary showed ${a.length}, standby ${b.length})`,
    );
    console.log(
      `  console gaps          ${gaps.length === 0 ? "none" : gaps.slice(0, 10).join(", ")}`,
    );
    console.log(`  disk log verified     ${verified}`);
    console.log(
      `  failover time         ${tookOver.toFixed(0)} ms (kill → guest running on the standby)`,
    );
    console.log(`  guest exit            ${end.code === 0 ? "clean" : `code ${end.code}`}`);
    return gaps.length === 0 && verified.startsWith("ok") && end.code === 0 ? 0 : 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await cleanup();
  }
}

/** Checks the logwriter records 1..n on an image: magic, sequence, checksum. */
function verifyLog(path: string, n: number): string {
  const bytes = Deno.readFileSync(path);
  for (let seq = 1; seq <= n; seq++) {
    const rec = bytes.subarray(seq * 512, seq * 512 + 512);
    const dv = new DataView(rec.buffer, rec.byteOffset, 512);
    if (dv.getUint32(0, true) !== 0x474f4c4b) return `MISSING record ${seq}`;
    if (dv.getBigUint64(8, true) !== BigInt(seq)) return `WRONG sequence at record ${seq}`;
    if (crc32(rec.subarray(0, 508)) !== dv.getUint32(508, true)) return `BAD checksum at ${seq}`;
  }
  return `ok, ${n} records, all checksums good`;
}
