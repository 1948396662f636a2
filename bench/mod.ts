/**
 * Runs every kemari benchmark in sequence, each in its own process so one
 * benchmark's VMs, Workers and memory cannot disturb the next:
 * doorbell, pause, dirty, save_restore, transport_bulk, replication, net, redis. Output (tables and BENCH_JSON lines)
 * goes straight to this process's stdout. Exits non-zero if one failed.
 *
 *   deno run -A bench/mod.ts            (deno task bench)
 * @module
 */

const BENCHES = [
  "doorbell.ts",
  "pause.ts",
  "dirty.ts",
  "save_restore.ts",
  "transport_bulk.ts",
  "replication.ts",
  "net.ts",
  "redis.ts",
];

let failed = 0;
for (const name of BENCHES) {
  const script = new URL(name, import.meta.url).pathname;
  const t0 = performance.now();
  console.log(`\n=== bench/${name}`);
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script],
    stdout: "inherit",
    stderr: "inherit",
    stdin: "null",
  }).output();
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`=== bench/${name}: ${code === 0 ? "done" : `FAILED (exit ${code})`} in ${s} s`);
  if (code !== 0) failed++;
}
Deno.exit(failed === 0 ? 0 : 1);
