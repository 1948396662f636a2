/**
 * The redis guest in a real VM without protection (`kemari run --tuntap`),
 * its TAP on a bridge in a fresh network namespace:
 *
 * - protocol conformance, and redis-cli;
 * - the exact benchmark runs: `redis-benchmark -t ping,set,get,incr` at
 *   -c 1, -c 50 and -c 50 -P 16, each complete with no error, while the
 *   project's checker runs beside the -c 50 one;
 * - malformed RESP fuzzed from the client side: the guest keeps answering
 *   and neither it nor the VMM dies;
 * - a crash of the VMM (SIGKILL) and a new boot on the same disk: the log
 *   replays and every acknowledged write is there.
 *
 * Needs root, /dev/kvm, /dev/net/tun, iproute2, gcc, redis-tools (installed
 * with apt-get if missing); skipped otherwise.
 */

import { deepEqual, equal, ok } from "node:assert/strict";
import * as path from "node:path";
import { buildGuest } from "../../guest/build.ts";
import {
  checkerResult,
  makeDisk,
  type Proc,
  RedisNet,
  redisToolsSkipReason,
  ROOT,
  runFuzz,
  spawnChecker,
  startUnprotected,
  vmSkipReason,
} from "./support.ts";
import { readRedisLog } from "./log.ts";

const SKIP = vmSkipReason() ?? await redisToolsSkipReason();
if (SKIP) console.warn(`redis vm_test: skipped: ${SKIP}`);

const IP = "10.77.10.2";
const TESTS = ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"];

Deno.test({
  name: "redis guest (kemari run --tuntap): clients, benchmark, fuzzing, reboot replays the log",
  ignore: SKIP !== null,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "kemari-redis-vm-" });
    const net = new RedisNet("10.77.10");
    let vm: Proc | null = null;
    try {
      await buildGuest();
      await net.create();
      const disk = path.join(tmp, "vm.img");
      await makeDisk(disk, 32 << 20);
      const boot = () => startUnprotected(net, { ip: IP, tap: "rtap0", disk, args: "sync=batch" });
      vm = await boot();

      const conf = await net.run([
        Deno.execPath(),
        "run",
        "-A",
        path.join(ROOT, "tests/redis/conformance.ts"),
        "--host",
        IP,
      ], 120_000);
      ok(conf.out.includes('CONFORMANCE_RESULT {"ok":true'), conf.out);
      equal(await net.cli(IP, ["SET", "greeting", "hello"]), "OK");
      equal(await net.cli(IP, ["GET", "greeting"]), "hello");

      for (const args of [["-c", "1", "-n", "300"], ["-c", "50", "-n", "3000"]]) {
        const checker = args[1] === "50"
          ? spawnChecker(net, IP, ["--conns", "8", "--duration-ms", "3000", "--prefix", "vm"])
          : null;
        const b = await net.benchmark(IP, [...args, "-t", "ping,set,get,incr"]);
        equal(b.code, 0, b.out);
        deepEqual(b.rows.map((r) => r.test), TESTS, b.out);
        ok(b.rows.every((r) => r.rps > 0), b.out);
        if (checker) {
          const r = await checkerResult(checker, 90_000);
          ok(r.ok, JSON.stringify(r));
        }
      }
      const p16 = await net.benchmark(IP, [
        "-c",
        "50",
        "-P",
        "16",
        "-n",
        "20000",
        "-t",
        "ping,set,get,incr",
      ]);
      equal(p16.code, 0, p16.out);
      deepEqual(p16.rows.map((r) => r.test), TESTS, p16.out);
      equal(await net.cli(IP, ["GET", "counter:__rand_int__"]), String(3000 + 300 + 20000));

      const f = await runFuzz(net, IP, 300, 7);
      ok(f.ok, JSON.stringify(f));
      ok(!vm.exited, vm.tail());
      ok(!vm.lines.some((l) => /panic|crash/i.test(l)), vm.tail());
      equal(await net.cli(IP, ["GET", "greeting"]), "hello");

      // Crash (SIGKILL of the VMM) and boot again on the same disk.
      equal(await net.cli(IP, ["MSET", "a", "1", "b", "2"]), "OK");
      equal(await net.cli(IP, ["INCRBY", "n", "5"]), "5");
      equal(await net.cli(IP, ["DEL", "b"]), "1");
      const dbsize = await net.cli(IP, ["DBSIZE"]);
      await vm.stop();
      const log = readRedisLog(disk)!;
      ok(log, "the disk holds a log");
      equal(log.keys.get("greeting"), "hello");
      equal(String(log.keys.size), dbsize);
      vm = await boot();
      const replayed = vm.lines.find((l) => l.includes("replayed"));
      ok(replayed?.includes(`replayed ${log.records.length} records, ${dbsize} keys`), vm.tail());
      equal(await net.cli(IP, ["DBSIZE"]), dbsize);
      equal(await net.cli(IP, ["GET", "a"]), "1");
      equal(await net.cli(IP, ["EXISTS", "b"]), "0");
      equal(await net.cli(IP, ["INCR", "n"]), "6");
      equal(await net.cli(IP, ["GET", "counter:__rand_int__"]), String(3000 + 300 + 20000));
    } finally {
      await vm?.stop();
      await net.destroy();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
