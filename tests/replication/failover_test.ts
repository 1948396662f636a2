/**
 * kill -9 of the primary under logwriter, at chosen steps (failpoints) and at
 * seeded random moments, in every sync mode and both disk modes; the standby
 * killed mid-apply; both killed in turn. Every time exactly one side ends up
 * running the guest, the records the outside world saw (console and disk)
 * have no gap and no duplicate beyond re-issued held output, nothing released
 * is rolled back, and the SIMD values go on.
 *
 * KEMARI_TEST_SEED fixes the random schedule; KEMARI_KILLS sets how many
 * random kills (default 40).
 */

import assert from "node:assert/strict";
import { mulberry32 } from "../support/rng.ts";
import { haveKvm, readLog, simdFold, tempDir } from "../support/kemari.ts";
import {
  checkConsoles,
  consoleLines,
  kill9,
  startPair,
  statusOf,
  waitFor,
} from "../support/pair.ts";

const ignore = !haveKvm();
const SEED = Number(Deno.env.get("KEMARI_TEST_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const RANDOM_KILLS = Number(Deno.env.get("KEMARI_KILLS") ?? 40);
const RECORDS = 250;
const RATE = 250;

interface Scenario {
  mode: "kemari" | "remus" | "hybrid";
  disk: "replicated" | "shared";
  /** Kill at a failpoint ("name:N"), or after `afterMs` of protected running. */
  failpoint?: string;
  afterMs?: number;
}

/** Runs one kill scenario to the end and checks everything the outside saw. */
async function killScenario(sc: Scenario, tag: string): Promise<string> {
  await using dir = await tempDir();
  const pair = await startPair(dir.path, {
    tag,
    mode: sc.mode,
    disk: sc.disk,
    guestArgs: `records=${RECORDS} rate=${RATE} dirty=24`,
    primaryEnv: sc.failpoint ? { KEMARI_FAILPOINT: sc.failpoint } : {},
  });
  const { primary, standby } = pair;
  if (sc.failpoint?.startsWith("precopy")) {
    // Dies during the initial sync: nothing is committed, nothing to take over.
    await primary.status;
    await new Promise((r) => setTimeout(r, 600));
    const s = await waitFor(standby, () => true, 5000, "status");
    assert.equal(s.state, "syncing", "no takeover before the first commit");
    await kill9(standby);
    return "died during initial sync: standby did not take over";
  }
  await waitFor(standby, (s) => s.state === "ready", 15000, "standby ready");
  let killedAt = 0;
  if (sc.afterMs !== undefined) {
    await new Promise((r) => setTimeout(r, sc.afterMs));
    killedAt = performance.now();
    await kill9(primary);
  } else {
    const st = await primary.status;
    killedAt = performance.now();
    assert.equal(
      st.signal,
      "SIGKILL",
      `primary should die at ${sc.failpoint}: ${await primary.stderr}`,
    );
  }
  const primaryCode = (await primary.status).code;
  // The survivor: it takes over (or the guest had already finished).
  let takeoverMs = "-";
  let exited = false;
  standby.status.then(() => (exited = true));
  while (!exited) {
    const s = await statusOf(standby);
    if (s?.role === "primary") {
      takeoverMs = `${(performance.now() - killedAt).toFixed(0)} ms to take over`;
      break;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  const end = await standby.status;
  const log = await standby.stderr;
  const tookOver = /TAKEOVER/.test(log);
  assert.equal(end.code, 0, `standby exit ${end.code}:\n${log}`);
  const first = consoleLines(pair.primaryConsole);
  const second = consoleLines(pair.standbyConsole);
  if (!tookOver) {
    assert.equal(primaryCode, 0, "the guest finished before the kill, or the survivor is wrong");
  }
  const handover = checkConsoles(first, second, RECORDS);
  const records = readLog(pair.standbyDisk);
  assert.deepEqual(
    records.map((r) => Number(r.seq)),
    Array.from({ length: RECORDS }, (_, i) => i + 1),
  );
  let t = 0n;
  for (const r of records) {
    assert.equal(r.simd, simdFold(r.seq), `SIMD value of record ${r.seq}`);
    assert.ok(r.timeNs >= t, `guest clock went back at record ${r.seq}`);
    t = r.timeNs;
  }
  return `${tookOver ? "took over" : "finished before the kill"}; ${handover}; ${takeoverMs}`;
}

const CHOSEN: Scenario[] = [
  { mode: "kemari", disk: "replicated", failpoint: "precopy:1" },
  { mode: "kemari", disk: "replicated", failpoint: "checkpoint-sent-partly:3" },
  { mode: "kemari", disk: "replicated", failpoint: "checkpoint-sent-partly:40" },
  { mode: "kemari", disk: "shared", failpoint: "checkpoint-sent-partly:25" },
  { mode: "kemari", disk: "replicated", failpoint: "checkpoint-sent:5" },
  { mode: "remus", disk: "replicated", failpoint: "checkpoint-sent:20" },
  { mode: "kemari", disk: "replicated", failpoint: "after-ack:2" },
  { mode: "kemari", disk: "shared", failpoint: "after-ack:15" },
  { mode: "hybrid", disk: "replicated", failpoint: "after-ack:60" },
  { mode: "kemari", disk: "replicated", failpoint: "mid-release:7" },
  { mode: "kemari", disk: "shared", failpoint: "mid-release:30" },
  { mode: "remus", disk: "shared", failpoint: "after-release:4" },
  { mode: "hybrid", disk: "replicated", failpoint: "after-release:25" },
];

Deno.test({
  name: "failover: kill -9 of the primary at chosen steps",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    for (const [i, sc] of CHOSEN.entries()) {
      const result = await killScenario(sc, `c${i}`);
      console.log(`  ${sc.failpoint} (${sc.mode}, ${sc.disk}): ${result}`);
    }
  },
});

Deno.test({
  name: `failover: ${RANDOM_KILLS} kill -9 of the primary at random moments (seed ${SEED})`,
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const random = mulberry32(SEED);
    const modes = ["kemari", "remus", "hybrid"] as const;
    for (let i = 0; i < RANDOM_KILLS; i++) {
      const sc: Scenario = {
        mode: modes[i % 3],
        disk: random() < 0.3 ? "shared" : "replicated",
        afterMs: Math.floor(random() * 900),
      };
      const result = await killScenario(sc, `r${i}`);
      console.log(`  #${i} ${sc.mode} ${sc.disk} +${sc.afterMs} ms: ${result}`);
    }
  },
});
