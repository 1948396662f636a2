/**
 * Pause works from every vCPU state (running, in an exit, blocked in the wait
 * hypercall), over and over, without the guest noticing; a 4 GiB guest runs
 * and survives a save/restore.
 */

import assert from "node:assert/strict";
import { Machine } from "../../machine/machine.ts";
import { MemorySink } from "../../devices/console_sink.ts";
import { createImage } from "../../devices/disk.ts";
import { buildGuest, guestPath } from "../../guest/build.ts";
import { consoleRecords, haveKvm, kemari, readLog, tempDir } from "../support/kemari.ts";

const ignore = !haveKvm();

async function pauseStorm(machine: Machine, rounds: number): Promise<Set<string>> {
  const states = new Set<string>();
  for (let i = 0; i < rounds && !machine.report; i++) {
    await new Promise((r) => setTimeout(r, 1 + (i % 4)));
    await machine.pause();
    states.add(machine.pausedFrom ?? "?");
    const state = machine.backend.vcpuState();
    assert.ok(state === "paused" || state === "stopped", `after pause: ${state}`);
    machine.resume();
  }
  return states;
}

Deno.test({
  name: "pause: from running, exit and blocked states, repeatedly, guest unaware",
  ignore,
  async fn() {
    await buildGuest();
    await using dir = await tempDir();
    const disk = `${dir.path}/disk.img`;
    createImage(disk, 1 << 20);
    const seen = new Set<string>();
    for (
      const [guest, args] of [
        ["spin", "seconds=1"],
        ["pingpong", "n=20000"],
        ["logwriter", "records=300 rate=1000"],
      ]
    ) {
      const sink = new MemorySink();
      const machine = await Machine.boot({
        ramBytes: 32 << 20,
        guest: guestPath(guest),
        args,
        disk: guest === "spin" ? undefined : disk,
        console: sink,
        doorbell: "exit",
      });
      for (const s of await pauseStorm(machine, 150)) seen.add(s);
      const report = await machine.wait();
      await machine.shutdown();
      assert.deepEqual(report, { kind: "exit", code: 0 }, `${guest}: ${sink.text()}`);
      if (guest === "logwriter") assert.equal(consoleRecords(sink.text()).length, 300);
    }
    for (const s of ["running", "blocked"]) assert.ok(seen.has(s), `never paused from ${s}`);
    console.log(`  paused from: ${[...seen].sort().join(", ")}`);
  },
});

Deno.test({
  name: "memory: a 4 GiB guest runs, saves and restores in another process",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const disk = `${dir.path}/disk.img`, state = `${dir.path}/big.kst`;
    const first = await kemari([
      "run",
      "--memory",
      "4G",
      "--guest",
      "logwriter",
      "--args",
      "records=200 rate=500 dirty=512",
      "--disk",
      disk,
      "--create-disk",
      "1M",
      "--save-at",
      "150ms",
      "--state",
      state,
    ]);
    assert.equal(first.code, 0, first.stderr);
    // Only touched pages are stored: far less than 4 GiB.
    const size = (await Deno.stat(state)).size;
    assert.ok(size > 2 << 20 && size < 64 << 20, `state file is ${size} bytes`);
    const second = await kemari(["resume", state, "--disk", disk]);
    assert.equal(second.code, 0, second.stderr);
    const records = [...consoleRecords(first.stdout), ...consoleRecords(second.stdout)];
    assert.deepEqual(records, Array.from({ length: 200 }, (_, i) => i + 1));
    assert.equal(readLog(disk).length, 200);
  },
});
