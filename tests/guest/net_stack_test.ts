/**
 * Tests of the guest network stack (guest/net/) over a real Linux peer.
 *
 * The stack and netsvc are compiled for Linux userspace (the host harness in
 * guest/net/hosttest/, with AddressSanitizer and UBSan) and run inside a
 * fresh network namespace on TAP devices; the namespace's own kernel is the
 * client, driven by tests/guest/net_probe.c:
 *
 *   ktap0  10.77.0.1/24  <->  harness 10.77.0.2  (lossless)
 *   ktap1  10.77.1.1/24  <->  harness 10.77.1.2  (loss=2: 2% of the frames
 *                                                 in each direction dropped)
 *
 * Checks: ping, UDP echo, 1 MiB TCP echo byte-exact, the counter stream for
 * 2 s, 64 concurrent connections, a client that stops reading (the server
 * must probe the zero window and resume), transfers across a 2 s SIGSTOP of
 * the harness (a failover-like pause), the same over the lossy link, and
 * malformed / random / hostile frames written raw into the TAP: every
 * malformed one is counted as a drop, and the harness survives and still
 * answers. Nothing leaves the namespace.
 *
 * Needs root, /dev/net/tun, iproute2 and gcc; skipped otherwise. Also checks
 * that `guest/build.ts` builds netsvc.elf for the guest.
 */

import { equal, ok } from "node:assert/strict";
import { buildGuest, guestPath } from "../../guest/build.ts";
import {
  buildHarness,
  buildProbe,
  cc,
  Netns,
  netnsSkipReason,
  onPath,
  type Proc,
  sleep,
  statusAfter,
} from "./net_support.ts";

const SKIP = netnsSkipReason();
if (SKIP) console.warn(`net_stack_test: skipped: ${SKIP}`);

Deno.test({
  name: "net stack: netsvc builds for the guest with the stack linked in",
  ignore: !onPath(cc()),
  async fn() {
    await buildGuest();
    const st = await Deno.stat(guestPath("netsvc"));
    ok(st.isFile && st.size > 0);
  },
});

Deno.test({
  name: "net stack: host harness on TAP against the Linux kernel",
  ignore: SKIP !== null,
  async fn(t) {
    const tmp = await Deno.makeTempDir({ prefix: "kemari-net-" });
    const ns = new Netns();
    const procs: Proc[] = [];
    try {
      const [harness, probe] = await Promise.all([buildHarness(tmp), buildProbe(tmp)]);
      await ns.create();
      for (const [tap, net] of [["ktap0", "10.77.0"], ["ktap1", "10.77.1"]]) {
        await ns.exec(["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
        await ns.exec(["ip", "addr", "add", `${net}.1/24`, "dev", tap]);
        await ns.exec(["ip", "link", "set", tap, "up"]);
      }
      const start = (tap: string, ip: string, extra: string[] = []) => {
        const args = [`tap=${tap}`, `ip=${ip}/24`, "tcp_port=9000", "udp_port=7", "status=1"];
        const p = ns.spawn([harness, ...args, ...extra]);
        procs.push(p);
        return p;
      };
      const h0 = start("ktap0", "10.77.0.2");
      const h1 = start("ktap1", "10.77.1.2", ["loss=2"]);
      const ready = await h0.waitFor(/netsvc: ip 10\.77\.0\.2 mac ([0-9a-f:]{17}) ready/, 10_000);
      const mac0 = ready[1];
      await h1.waitFor(/netsvc: ip 10\.77\.1\.2 mac [0-9a-f:]{17} ready/, 10_000);

      const probeRun = (args: string[], timeoutMs = 60_000) => ns.exec([probe, ...args], timeoutMs);
      const alive = (h: Proc) => ok(!h.exited, `harness exited:\n${h.tail()}`);

      await t.step("ping", async () => {
        const ping = onPath("ping");
        if (ping) {
          const out = await ns.exec([ping, "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.2"]);
          ok(/3 packets transmitted, 3 received/.test(out), out);
        }
        ok((await probeRun(["ping", "10.77.0.2", "3"])).includes("ok ping 3/3"));
      });

      await t.step("UDP echo", async () => {
        ok((await probeRun(["udp", "10.77.0.2", "7"])).includes("ok udp"));
      });

      await t.step("TCP echo of 1 MiB, byte-exact", async () => {
        const out = await probeRun(["echo", "10.77.0.2", "9000", String(1 << 20), "7"]);
        ok(out.includes("ok echo conns=1 bytes=1048576"), out);
      });

      await t.step("counter stream for 2 s, every counter consecutive", async () => {
        const out = await probeRun(["stream", "10.77.0.2", "9001", "2000"]);
        ok(out.includes("ok stream"), out);
      });

      await t.step("64 concurrent echo connections", async () => {
        const out = await probeRun(["many", "10.77.0.2", "9000", "64", "65536"]);
        ok(out.includes("ok echo conns=64"), out);
      });

      await t.step("zero window: the server probes and resumes", async () => {
        const before = await statusAfter(h0, 0);
        const out = await probeRun(["zerowin", "10.77.0.2", "9001", "3000", "1000"]);
        ok(out.includes("ok zerowin"), out);
        const after = await statusAfter(h0);
        ok(after.probes > before.probes, `no zero-window probes: ${JSON.stringify(after)}`);
      });

      await t.step("transfers survive a 2 s pause of the harness", async () => {
        const jobs = [
          probeRun(["echo", "10.77.0.2", "9000", String(4 << 20), "11"]),
          probeRun(["stream", "10.77.0.2", "9001", "4000"]),
          probeRun(["many", "10.77.0.2", "9000", "16", "131072"]),
        ];
        await sleep(300);
        h0.signal("SIGSTOP");
        await sleep(2000);
        h0.signal("SIGCONT");
        const outs = await Promise.all(jobs);
        ok(outs[0].includes("ok echo conns=1"), outs[0]);
        ok(outs[1].includes("ok stream"), outs[1]);
        ok(outs[2].includes("ok echo conns=16"), outs[2]);
        alive(h0);
      });

      await t.step("lossy link: echo, stream, concurrent connections", async () => {
        const outs = await Promise.all([
          probeRun(["echo", "10.77.1.2", "9000", String(1 << 20), "13"], 120_000),
          probeRun(["stream", "10.77.1.2", "9001", "2000"]),
          probeRun(["many", "10.77.1.2", "9000", "16", "32768"], 120_000),
        ]);
        ok(outs[0].includes("ok echo conns=1 bytes=1048576"), outs[0]);
        ok(outs[1].includes("ok stream"), outs[1]);
        ok(outs[2].includes("ok echo conns=16"), outs[2]);
        alive(h1);
      });

      await t.step("malformed frames are dropped and counted, one each", async () => {
        const before = await statusAfter(h0, 0);
        const out = await probeRun(["fuzz", "ktap0", mac0, "10.77.0.2", "0", "3", "0"]);
        const m = out.match(/ok fuzz malformed=(\d+)/);
        ok(m, out);
        const after = await statusAfter(h0);
        equal(after.drops - before.drops, Number(m[1]), `${JSON.stringify(before)} -> ${out}`);
      });

      await t.step("random and hostile frames: the harness survives", async () => {
        const seed = String(Date.now() % 1_000_000 + 1);
        const out = await probeRun(["fuzz", "ktap0", mac0, "10.77.0.2", "20000", seed, "20"]);
        ok(/ok fuzz .* sessions=\d+\/20/.test(out), out);
        const st = await statusAfter(h0);
        alive(h0);
        ok(st.drops > 0);
        ok((await probeRun(["ping", "10.77.0.2", "3"])).includes("ok ping 3/3"), `seed ${seed}`);
        const echo = await probeRun(["echo", "10.77.0.2", "9000", "65536", "5"]);
        ok(echo.includes("ok echo conns=1"), `seed ${seed}: ${echo}`);
        alive(h0);
      });

      for (const h of procs) alive(h);
    } finally {
      for (const p of procs) await p.stop();
      await ns.destroy();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
