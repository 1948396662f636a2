/**
 * The reference guest under KVM, through the CLI: boot and print, the crash
 * path, the disk log, malformed requests.
 */

import assert from "node:assert/strict";
import { consoleRecords, haveKvm, kemari, readLog, simdFold, tempDir } from "../support/kemari.ts";

const ignore = !haveKvm();

for (const doorbell of ["ioeventfd", "exit"]) {
  Deno.test({
    name: `guest: hello boots and prints (doorbell ${doorbell})`,
    ignore,
    async fn() {
      const r = await kemari([
        "run",
        "--guest",
        "hello",
        "--args",
        "x=1 y=two",
        "--doorbell",
        doorbell,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^hello from the kemari guest\nargs: x=1 y=two\nclock: \d+\n$/);
      const ns = Number(/clock: (\d+)/.exec(r.stdout)![1]);
      assert.ok(ns > 0 && ns < 60e9, `guest clock ${ns} ns should count from boot`);
    },
  });
}

const CRASHES: Array<[string, number, RegExp]> = [
  ["ud", 3, /guest crashed: #UD invalid opcode, error code 0x0 at rip 0x2[0-9a-f]{5}, cr2 0x0$/],
  ["gp", 3, /guest crashed: #GP general protection, error code 0x0 at rip 0x2[0-9a-f]{5}/],
  ["pf", 3, /guest crashed: #PF page fault, error code 0x6 at rip 0x2[0-9a-f]{5}, cr2 0x0$/],
  ["de", 3, /guest crashed: #DE divide error/],
  ["bp", 3, /guest crashed: #BP breakpoint/],
  ["panic", 4, /guest panicked: deliberate panic$/],
];

for (const [mode, code, pattern] of CRASHES) {
  Deno.test({
    name: `guest: crash mode=${mode} is reported with vector and RIP`,
    ignore,
    async fn() {
      const r = await kemari(["run", "--guest", "crash", "--args", `mode=${mode}`]);
      assert.equal(r.code, code, r.stderr);
      assert.match(r.stdout, new RegExp(`crash: mode=${mode}`));
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], pattern);
    },
  });
}

Deno.test({
  name: "guest: logwriter leaves a complete, checksummed log and continues it after a reboot",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const disk = `${dir.path}/disk.img`;
    const first = await kemari([
      "run",
      "--guest",
      "logwriter",
      "--args",
      "records=50 rate=0 dirty=8",
      "--disk",
      disk,
      "--create-disk",
      "4M",
    ]);
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(consoleRecords(first.stdout), range(1, 50));
    const log = readLog(disk);
    assert.deepEqual(log.map((r) => Number(r.seq)), range(1, 50));
    for (const r of log) assert.equal(r.simd, simdFold(r.seq));
    for (let i = 1; i < log.length; i++) assert.ok(log[i].timeNs >= log[i - 1].timeNs);

    const second = await kemari([
      "run",
      "--guest",
      "logwriter",
      "--args",
      "records=10 rate=0",
      "--disk",
      disk,
    ]);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /logwriter: verified 50 records/);
    assert.deepEqual(consoleRecords(second.stdout), range(51, 60));
    const after = readLog(disk);
    assert.deepEqual(after.map((r) => Number(r.seq)), range(1, 60));
    assert.notEqual(after[55].bootId, after[5].bootId, "each boot has its own boot id");
  },
});

Deno.test({
  name: "guest: a corrupted log on the disk is detected by logwriter at start",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const disk = `${dir.path}/disk.img`;
    const args = ["run", "--guest", "logwriter", "--args", "records=5 rate=0", "--disk", disk];
    assert.equal((await kemari([...args, "--create-disk", "1M"])).code, 0);
    const f = await Deno.open(disk, { read: true, write: true });
    await f.seek(3 * 512 + 100, Deno.SeekMode.Start);
    await f.write(new Uint8Array([0xee]));
    f.close();
    const r = await kemari(args);
    assert.equal(r.code, 4);
    assert.match(r.stderr, /guest panicked: log corrupt at sector 3/);
  },
});

Deno.test({
  name: "guest: malformed requests get error responses and the VMM keeps working",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const r = await kemari([
      "run",
      "--guest",
      "badreq",
      "--disk",
      `${dir.path}/disk.img`,
      "--create-disk",
      "1M",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const checks = Number(/badreq: ok (\d+) checks/.exec(r.stdout)?.[1] ?? 0);
    assert.ok(checks >= 40, r.stdout);
    assert.match(r.stderr, /kemari: refused guest request/);
  },
});

function range(a: number, b: number): number[] {
  return Array.from({ length: b - a + 1 }, (_, i) => a + i);
}
