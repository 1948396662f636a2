/**
 * Save in one process, restore in another, again and again at random moments
 * (seeded: KEMARI_TEST_SEED), and at chosen doorbells (requests in flight).
 * logwriter must go on with no gap, no duplicate, identical SIMD values and
 * a clock that never goes back.
 */

import assert from "node:assert/strict";
import { mulberry32 } from "../support/rng.ts";
import { consoleRecords, haveKvm, kemari, readLog, simdFold, tempDir } from "../support/kemari.ts";
import { readStateMeta } from "../../machine/state_file.ts";

const ignore = !haveKvm();
const SEED = Number(Deno.env.get("KEMARI_TEST_SEED") ?? Math.floor(Math.random() * 2 ** 31));

interface Chain {
  name: string;
  args: string;
  records: number;
  doorbell: "ioeventfd" | "exit";
  /** Save plan for hop i: CLI arguments. */
  plan: (random: () => number) => string[];
  hops: number;
}

const CHAINS: Chain[] = [
  {
    name: "busy logwriter, random times",
    args: "records=4000 rate=0 dirty=16",
    records: 4000,
    doorbell: "ioeventfd",
    plan: (r) => ["--save-at", `${Math.floor(20 + r() * 150)}ms`],
    hops: 8,
  },
  {
    name: "sleeping logwriter, random times, exit doorbells",
    args: "records=400 rate=500 dirty=64",
    records: 400,
    doorbell: "exit",
    plan: (r) => ["--save-at", `${Math.floor(20 + r() * 80)}ms`],
    hops: 6,
  },
  {
    name: "requests in flight: save at a chosen doorbell",
    args: "records=600 rate=0 dirty=4",
    records: 600,
    doorbell: "exit",
    plan: (r) => ["--save-on-doorbell", `${1 + Math.floor(r() * 120)}`],
    hops: 8,
  },
];

for (const chain of CHAINS) {
  Deno.test({
    name: `save/restore across processes: ${chain.name} (seed ${SEED})`,
    ignore,
    async fn() {
      const random = mulberry32(SEED ^ chain.records);
      await using dir = await tempDir();
      const disk = `${dir.path}/disk.img`;
      let out = "";
      const states = new Set<string>();
      let state: string | undefined;
      for (let hop = 0; hop <= chain.hops; hop++) {
        const next = `${dir.path}/state-${hop}.kst`;
        const save = hop < chain.hops ? [...chain.plan(random), "--state", next] : [];
        const common = ["--disk", disk, "--doorbell", chain.doorbell, ...save];
        const r = state === undefined
          ? await kemari([
            "run",
            "--guest",
            "logwriter",
            "--args",
            chain.args,
            "--create-disk",
            "8M",
            ...common,
          ])
          : await kemari(["resume", state, ...common]);
        assert.equal(r.code, 0, `hop ${hop}: ${r.stderr}`);
        out += r.stdout;
        if (/logwriter: done/.test(r.stdout)) break;
        const meta = readStateMeta(next) as { pausedFrom: string };
        states.add(meta.pausedFrom);
        state = next;
      }
      assert.match(out, new RegExp(`logwriter: done ${chain.records}`));
      const seen = consoleRecords(out);
      assert.deepEqual(seen, Array.from({ length: chain.records }, (_, i) => i + 1));
      const log = readLog(disk);
      assert.equal(log.length, chain.records);
      let last = 0n;
      for (const rec of log) {
        assert.equal(rec.simd, simdFold(rec.seq), `SIMD fold of record ${rec.seq}`);
        assert.ok(rec.timeNs >= last, `clock went back at record ${rec.seq}`);
        last = rec.timeNs;
      }
      console.log(`  paused from: ${[...states].sort().join(", ")}`);
    },
  });
}

Deno.test({
  name: `save/restore across processes: a running (busy-looping) vCPU (seed ${SEED})`,
  ignore,
  async fn() {
    const random = mulberry32(SEED ^ 0x5151);
    await using dir = await tempDir();
    const states = new Set<string>();
    let out = "";
    let state: string | undefined;
    for (let hop = 0; hop <= 6; hop++) {
      const next = `${dir.path}/spin-${hop}.kst`;
      const save = hop < 6
        ? ["--save-at", `${Math.floor(30 + random() * 200)}ms`, "--state", next]
        : [];
      const r = state === undefined
        ? await kemari(["run", "--guest", "spin", "--args", "seconds=2", ...save])
        : await kemari(["resume", state, ...save]);
      assert.equal(r.code, 0, `hop ${hop}: ${r.stderr}`);
      out += r.stdout;
      if (/spin: done/.test(r.stdout)) break;
      states.add((readStateMeta(next) as { pausedFrom: string }).pausedFrom);
      state = next;
    }
    assert.match(out, /spin: done \d+/);
    const counts = [...out.matchAll(/^spin (\d+)$/gm)].map((m) => Number(m[1]));
    for (let i = 1; i < counts.length; i++) {
      assert.ok(counts[i] > counts[i - 1], "spin count went back");
    }
    assert.ok(states.has("running"), `expected a save from the running state, got ${[...states]}`);
  },
});
