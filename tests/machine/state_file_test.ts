/**
 * A saved VM is untrusted input on restore: truncated, corrupted, tampered
 * and foreign state files are refused with one clear line; a state from a
 * host whose clock differs restores with a clock that goes on.
 */

import assert from "node:assert/strict";
import {
  consoleRecords,
  haveKvm,
  kemari,
  readLog,
  type RunResult,
  tempDir,
} from "../support/kemari.ts";
import { editStateMeta } from "../support/state_edit.ts";

const ignore = !haveKvm();

/** Boots logwriter, saves it after 150 ms; returns the paths. */
async function savedVm(dir: string): Promise<{ state: string; disk: string; first: string }> {
  const disk = `${dir}/disk.img`, state = `${dir}/vm.kst`;
  const r = await kemari([
    "run",
    "--guest",
    "logwriter",
    "--args",
    "records=120 rate=400",
    "--disk",
    disk,
    "--create-disk",
    "2M",
    "--save-at",
    "150ms",
    "--state",
    state,
  ]);
  assert.equal(r.code, 0, r.stderr);
  return { state, disk, first: r.stdout };
}

function refused(r: RunResult, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], pattern);
}

Deno.test({
  name: "state file: truncated, bit-flipped and foreign files are refused",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const { state, disk } = await savedVm(dir.path);
    const bytes = await Deno.readFile(state);
    const bad = `${dir.path}/bad.kst`;
    const resume = () => kemari(["resume", bad, "--disk", disk, "--console", "null"]);

    await Deno.writeFile(bad, bytes.subarray(0, bytes.length - 5000));
    refused(await resume(), /state file .*bad\.kst: truncated/);

    for (const at of [bytes.length - 2000, Math.floor(bytes.length / 2)]) {
      const flipped = bytes.slice();
      flipped[at] ^= 0x40;
      await Deno.writeFile(bad, flipped);
      refused(await resume(), /checksum mismatch \(corrupt\)/);
    }

    const version = bytes.slice();
    version[8] = 99;
    await Deno.writeFile(bad, version);
    refused(await resume(), /version 99, this kemari reads 1/);
  },
});

Deno.test({
  name: "state file: tampered content with valid checksums is refused",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const { state, disk } = await savedVm(dir.path);
    const bad = `${dir.path}/tampered.kst`;
    const cases: Array<[string, (m: Record<string, unknown>) => void, RegExp]> = [
      [
        "other CPU features",
        (m) => ((m.cpu as Record<string, unknown>).cpuFeatures = "0".repeat(64)),
        /saved on a host with different CPU features/,
      ],
      [
        "other XCR0",
        (m) => {
          const xcrs = (m.cpu as Record<string, Uint8Array>).xcrs;
          new DataView(xcrs.buffer, xcrs.byteOffset).setBigUint64(16, 7n, true);
        },
        /saved XCR0 0x7 differs from this host's 0xe7/,
      ],
      [
        "short register blob",
        (m) => ((m.cpu as Record<string, unknown>).regs = new Uint8Array(10)),
        /regs has 10 bytes, expected 144/,
      ],
      [
        "RAM size",
        (m) => (m.ramBytes = 12345),
        /ramBytes out of range/,
      ],
      [
        "block ring index",
        (m) => {
          const block = (m.devices as Record<string, Record<string, unknown>>).block;
          block.reqCons = "99999999999";
        },
        /block: invalid saved state/,
      ],
      [
        "disk size",
        (m) => ((m.disk as Record<string, unknown>).sectors = 7n),
        /disk .* has 4096 sectors; the saved VM had 7/,
      ],
    ];
    for (const [what, edit, pattern] of cases) {
      editStateMeta(state, bad, edit);
      const r = await kemari(["resume", bad, "--disk", disk, "--console", "null"]);
      assert.equal(r.code, 1, `${what}: ${r.stderr}`);
      assert.match(r.stderr.trim(), pattern, what);
      assert.equal(r.stderr.trim().split("\n").length, 1, `${what}: ${r.stderr}`);
    }
  },
});

Deno.test({
  name: "state file: a standby whose host clock differs keeps guest time going forward",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const { state, disk, first } = await savedVm(dir.path);
    const foreign = `${dir.path}/foreign.kst`;
    let savedNs = 0n;
    editStateMeta(state, foreign, (m) => {
      const clock = m.clock as Record<string, unknown>;
      // The saved clock carries guest time only, never a host TSC value.
      assert.deepEqual(Object.keys(clock).sort(), ["ns", "tscKhz", "version"]);
      savedNs = BigInt(clock.ns as string);
      // The source host's TSC ran at a third of this host's rate.
      clock.tscKhz = Math.floor((clock.tscKhz as number) / 3);
    });
    const r = await kemari(["resume", foreign, "--disk", disk]);
    assert.equal(r.code, 0, r.stderr);
    const records = [...consoleRecords(first), ...consoleRecords(r.stdout)];
    assert.deepEqual(records, Array.from({ length: 120 }, (_, i) => i + 1));
    const log = readLog(disk);
    const resumedAt = log.findIndex((x) => x.timeNs > savedNs);
    assert.ok(resumedAt > 0);
    for (let i = 1; i < log.length; i++) assert.ok(log[i].timeNs >= log[i - 1].timeNs);
    // Guest time after the restore continues from the saved time, at this
    // host's rate: 120 records at 400/s take about 300 ms in all.
    const total = Number(log[log.length - 1].timeNs - log[0].timeNs) / 1e6;
    assert.ok(total > 250 && total < 5000, `guest time span ${total} ms`);
  },
});
