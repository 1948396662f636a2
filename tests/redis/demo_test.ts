/**
 * `kemari demo` end to end, shortened: the Redis demo (its own namespace,
 * primary + standby, redis-benchmark and the checker, kill -9, takeover,
 * summary) must succeed and leave no namespace, process or temporary
 * directory behind; `--workload logwriter` still runs the first demo.
 *
 * Needs root, /dev/kvm, /dev/net/tun, iproute2, gcc; redis-tools are
 * installed by the demo itself when missing (the test skips when that is
 * impossible: not root).
 */

import { equal, match, ok } from "node:assert/strict";
import { existsSync } from "node:fs";
import { KEMARI, redisToolsSkipReason, run, vmSkipReason } from "./support.ts";

const SKIP = vmSkipReason() ?? await redisToolsSkipReason();
if (SKIP) console.warn(`redis demo_test: skipped: ${SKIP}`);

async function demo(args: string[], timeoutMs: number) {
  const child = new Deno.Command(KEMARI[0], {
    args: [...KEMARI.slice(1), "demo", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).spawn();
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, pid: child.pid, out: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

Deno.test({
  name: "kemari demo: the redis failover demo, and --workload logwriter",
  ignore: SKIP !== null,
  async fn() {
    const r = await demo(["--duration", "8s", "--kill-after", "3s"], 180_000);
    equal(r.code, 0, r.out);
    match(r.out, /the standby took over [\d.]+ s after the kill/);
    match(r.out, /client errors +0 /);
    match(r.out, /acknowledged writes +verified: [\d,]+ SETs/);
    match(r.out, /counter:__rand_int__ = (\d+), = the/);
    match(r.out, /^ok: no client error, no acknowledged write lost$/m);
    // Nothing left behind.
    const ns = (await run("ip", ["netns", "list"])).out;
    ok(!ns.includes(`kemari-demo-${r.pid}-`), ns);
    const dir = r.out.match(/disk images in (\S+)/)?.[1];
    ok(dir && !existsSync(dir), `temp dir ${dir} removed`);
    const ps = (await run("ps", ["-eo", "args"])).out;
    ok(!ps.includes("--prefix demo"), "no checker left");

    const l = await demo([
      "--workload",
      "logwriter",
      "--records",
      "200",
      "--rate",
      "100",
      "--kill-after",
      "1s",
    ], 120_000);
    equal(l.code, 0, l.out);
    match(l.out, /console gaps +none/);
  },
});
