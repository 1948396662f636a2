/**
 * The guest's Redis server (guest/programs/redis.c) built as a Linux program
 * on a TAP device with ASan/UBSan (the same source, the guest TCP/IP stack,
 * and a file for the disk: tests/redis/host_disk.c), so that any memory error
 * aborts it. In a fresh network namespace:
 *
 * - protocol conformance (tests/redis/conformance.ts) and redis-cli;
 * - redis-benchmark -c 50 and the checker (8 more connections) at once;
 * - malformed RESP fuzzed from the client side (2 seeds): the server must
 *   stay up and answer;
 * - restart after a crash (SIGKILL) replays the log; a torn last record is
 *   dropped and everything before it kept; the log is compacted when it
 *   fills its region and replays after that; a full log refuses writes
 *   with an error and keeps every acknowledged one.
 *
 * Needs root, /dev/net/tun, iproute2, gcc and redis-tools (installed with
 * apt-get if missing); skipped otherwise.
 */

import { deepEqual, equal, ok } from "node:assert/strict";
import * as path from "node:path";
import {
  buildRedisHost,
  checkerResult,
  hostSkipReason,
  makeDisk,
  type Proc,
  RedisNet,
  redisToolsSkipReason,
  ROOT,
  runFuzz,
  spawnChecker,
} from "./support.ts";
import { readRedisLog } from "./log.ts";

const SKIP = hostSkipReason() ?? await redisToolsSkipReason();
if (SKIP) console.warn(`redis host_test: skipped: ${SKIP}`);

const IP = "10.77.9.2";

Deno.test({
  name: "redis (host harness, ASan): protocol, clients, fuzzing, log replay and compaction",
  ignore: SKIP !== null,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "kemari-redis-host-" });
    const net = new RedisNet("10.77.9");
    let server: Proc | null = null;
    const start = async (disk: string, extra: string[] = []) => {
      const p = net.spawn([
        path.join(tmp, "redis-host"),
        "tap=rtap0",
        `ip=${IP}/24`,
        `disk=${disk}`,
        "mem=67108864",
        ...extra,
      ]);
      await p.waitFor(/redis: ip .* ready/, 30_000);
      await net.attach("rtap0");
      return p;
    };
    const stop = async () => {
      await server?.stop();
      server = null;
    };
    try {
      await buildRedisHost(tmp);
      await net.create();
      const disk = path.join(tmp, "disk.img");
      await makeDisk(disk, 8 << 20);
      server = await start(disk);
      ok(server.lines.some((l) => l.startsWith("redis: new log on 16384 sectors")), server.tail());

      // Conformance and redis-cli.
      const conf = await net.run([
        Deno.execPath(),
        "run",
        "-A",
        path.join(ROOT, "tests/redis/conformance.ts"),
        "--host",
        IP,
      ]);
      ok(conf.out.includes('CONFORMANCE_RESULT {"ok":true'), conf.out);
      equal(await net.cli(IP, ["PING"]), "PONG");
      equal(await net.cli(IP, ["SET", "hello", "world"]), "OK");
      equal(await net.cli(IP, ["GET", "hello"]), "world");

      // 58 concurrent clients: redis-benchmark -c 50 and the checker at once.
      // (The stack has 128 connection slots; between two redis-benchmark tests
      // the old connections are still closing while the new ones arrive.)
      const checker = spawnChecker(net, IP, [
        "--conns",
        "8",
        "--duration-ms",
        "3000",
        "--prefix",
        "h",
      ]);
      const bench = await net.benchmark(IP, ["-c", "50", "-n", "6000", "-t", "ping,set,get,incr"]);
      equal(bench.code, 0, bench.out);
      deepEqual(bench.rows.map((r) => r.test), ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"]);
      const cr = await checkerResult(checker, 60_000);
      ok(cr.ok, JSON.stringify(cr));

      // Fuzzing from the client side; ASan aborts the server on any memory error.
      for (const seed of [1, 2]) {
        const f = await runFuzz(net, IP, 700, seed);
        ok(f.ok, JSON.stringify(f));
        ok(!server.exited, server.tail());
      }
      equal(await net.cli(IP, ["GET", "hello"]), "world");
      const info = await net.cli(IP, ["INFO"]);
      ok(/kemari_protocol_errors:[1-9]/.test(info), info);

      // Crash and restart: the log replays.
      equal(await net.cli(IP, ["SET", "persist", "yes"]), "OK");
      equal(await net.cli(IP, ["INCRBY", "ctr", "41"]), "41");
      equal(await net.cli(IP, ["MSET", "m1", "a", "m2", "b"]), "OK");
      equal(await net.cli(IP, ["DEL", "m2"]), "1");
      const before = await net.cli(IP, ["DBSIZE"]);
      await stop();
      const log = readRedisLog(disk)!;
      ok(log && log.records.length > 10, "log readable");
      equal(log.keys.get("persist"), "yes");
      equal(log.keys.get("ctr"), "41");
      equal(log.keys.has("m2"), false);
      server = await start(disk);
      ok(
        server.lines.some((l) => l.includes(`replayed ${log.records.length} records`)),
        server.tail(),
      );
      equal(await net.cli(IP, ["DBSIZE"]), before);
      equal(await net.cli(IP, ["GET", "persist"]), "yes");
      equal(await net.cli(IP, ["INCR", "ctr"]), "42");
      equal(await net.cli(IP, ["GET", "m1"]), "a");
      equal(await net.cli(IP, ["EXISTS", "m2"]), "0");

      // A torn last record is dropped, and the log goes on after it.
      equal(await net.cli(IP, ["SET", "torn", "x"]), "OK");
      await stop();
      const l2 = readRedisLog(disk)!;
      const last = l2.records[l2.records.length - 1];
      const img = await Deno.readFile(disk);
      img[l2.regionStart * 512 + last.offset + last.len - 6] ^= 0x55; // inside the record
      await Deno.writeFile(disk, img);
      server = await start(disk);
      ok(
        server.lines.some((l) => l.includes(`replayed ${l2.records.length - 1} records`)),
        server.tail(),
      );
      equal(await net.cli(IP, ["EXISTS", "torn"]), "0");
      equal(await net.cli(IP, ["GET", "ctr"]), "42");
      equal(await net.cli(IP, ["SET", "after", "torn"]), "OK");
      await stop();
      server = await start(disk);
      equal(await net.cli(IP, ["GET", "after"]), "torn");
      equal(await net.cli(IP, ["GET", "persist"]), "yes");
      await stop();

      // A small disk: compaction keeps the log going; replay after it.
      const small = path.join(tmp, "small.img");
      await makeDisk(small, 64 << 10); // 2 regions of 63 sectors
      server = await start(small);
      equal(await net.cli(IP, ["SET", "keep", "me"]), "OK");
      const incr = await net.run([
        "redis-benchmark",
        "-h",
        IP,
        "-c",
        "4",
        "-n",
        "3000",
        "-t",
        "incr",
        "-q",
      ]);
      equal(incr.code, 0, incr.out);
      const n = Number(await net.cli(IP, ["GET", "counter:__rand_int__"]));
      equal(n, 3000);
      await stop();
      const l3 = readRedisLog(small)!;
      ok(l3.gen > 1n, "compacted");
      equal(l3.keys.get("counter:__rand_int__"), "3000");
      server = await start(small);
      ok(server.lines.some((l) => /replayed \d+ records, 2 keys/.test(l)), server.tail());
      equal(await net.cli(IP, ["GET", "counter:__rand_int__"]), "3000");
      equal(await net.cli(IP, ["GET", "keep"]), "me");

      // Fill it: writes are refused with an error, acknowledged ones stay.
      const acked = new Map<string, string>();
      let full = "";
      for (let i = 0; i < 200 && !full; i++) {
        const v = `${i}-${"v".repeat(500)}`;
        const r = await net.cli(IP, ["SET", `fill${i}`, v]);
        if (r === "OK") acked.set(`fill${i}`, v);
        else full = r;
      }
      ok(/^ERR disk log full/.test(full), `expected a full log, got ${full}`);
      ok(acked.size > 5, `${acked.size} writes before the log was full`);
      await stop();
      server = await start(small);
      for (const [k, v] of acked) equal(await net.cli(IP, ["GET", k]), v);
      equal(await net.cli(IP, ["GET", "keep"]), "me");
      equal(await net.cli(IP, ["DEL", ...acked.keys()]), String(acked.size));
      equal(await net.cli(IP, ["SET", "room", "again"]), "OK");
    } finally {
      await stop();
      await net.destroy();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
