/**
 * Test helpers: run the kemari CLI in a subprocess, make temp dirs, and read
 * the reference guest's disk log.
 * @module
 */

import { crc32 } from "node:zlib";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `kemari ...args` (deno run -A main.ts) to completion. */
export async function kemari(
  args: string[],
  options: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<RunResult> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: options.env,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  });
  const child = cmd.spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, options.timeoutMs ?? 60_000);
  const out = await child.output();
  clearTimeout(timer);
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** A fresh temporary directory, removed by the returned function. */
export async function tempDir(): Promise<{ path: string; [Symbol.asyncDispose](): Promise<void> }> {
  const path = await Deno.makeTempDir({ prefix: "kemari-test-" });
  return {
    path,
    async [Symbol.asyncDispose]() {
      await Deno.remove(path, { recursive: true }).catch(() => {});
    },
  };
}

/** True when this machine has KVM. */
export function haveKvm(): boolean {
  try {
    Deno.statSync("/dev/kvm");
    return true;
  } catch {
    return false;
  }
}

/** One logwriter record as found on the disk. */
export interface LogRecord {
  seq: bigint;
  timeNs: bigint;
  simd: bigint;
  bootId: bigint;
}

const KLOG = 0x474f4c4b;

/**
 * Reads the logwriter log from a disk image: records at sectors 1, 2, ...
 * until the first sector without the magic. Throws on a bad checksum or a
 * sequence number that is not its sector.
 */
export function readLog(image: string): LogRecord[] {
  const bytes = Deno.readFileSync(image);
  const out: LogRecord[] = [];
  for (let sector = 1; (sector + 1) * 512 <= bytes.length; sector++) {
    const rec = bytes.subarray(sector * 512, (sector + 1) * 512);
    const dv = new DataView(rec.buffer, rec.byteOffset, 512);
    if (dv.getUint32(0, true) !== KLOG) break;
    const seq = dv.getBigUint64(8, true);
    if (seq !== BigInt(sector)) throw new Error(`record at sector ${sector} has seq ${seq}`);
    if (crc32(rec.subarray(0, 508)) !== dv.getUint32(508, true)) {
      throw new Error(`record at sector ${sector} has a bad checksum`);
    }
    out.push({
      seq,
      timeNs: dv.getBigUint64(16, true),
      simd: dv.getBigUint64(24, true),
      bootId: dv.getBigUint64(32, true),
    });
  }
  return out;
}

/** Sequence numbers of the "rec N ..." console lines, in order. */
export function consoleRecords(text: string): number[] {
  return [...text.matchAll(/^rec (\d+) /gm)].map((m) => Number(m[1]));
}

/** The SIMD fold logwriter writes for `seq` (guest/programs/logwriter.c). */
export function simdFold(seq: bigint): bigint {
  return BigInt.asUintN(64, (14n * seq) ^ (seq << 32n));
}
