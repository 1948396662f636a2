/**
 * UDP echo and hostile input on the three-host topology (tests/net/cluster.ts:
 * client, primary and standby namespaces, kemari primary + standby running
 * netsvc in kemari mode, 32M, --timeout 400ms).
 *
 * 4. UDP echo: net_probe's sizes (1..1472 bytes) and a real client (socat)
 *    before and after a kill -9 of the primary, and net_tool's 10 ms UDP
 *    pinger through it: every echo unchanged, loss only inside the takeover
 *    window.
 * 5. Malformed and hostile frames from the client's side (net_probe fuzz,
 *    written raw into the client's LAN port: the 46 malformed frames, random
 *    mutated frames and hostile TCP sessions) reach the protected guest
 *    through the bridge and the primary's VMM; neither the guest nor either
 *    VMM crashes (processes alive, status answering, the standby still
 *    committing), and the guest still answers ping, UDP and TCP. Then the
 *    primary is killed and the guest, now on the former standby, is fuzzed
 *    again and still answers.
 *
 * Needs root, /dev/net/tun, /dev/kvm, iproute2 and gcc; skipped otherwise.
 * Without socat the real-client UDP checks are left out (a warning says so).
 * @module
 */

import { ok } from "node:assert/strict";
import { onPath, sleep } from "../guest/net_support.ts";
import {
  type Cluster,
  describeLoss,
  gapReport,
  parseProbeLines,
  skipReason,
  withCluster,
} from "./cluster.ts";

const SKIP = skipReason();
if (SKIP) console.warn(`tests/net/udp_fuzz_test: skipped: ${SKIP}`);
const SOCAT = onPath("socat") !== null;
if (!SOCAT && !SKIP) console.warn("tests/net/udp_fuzz_test: no socat: UDP echo without it");

/** Sends one line to the UDP echo with socat; returns what came back. */
async function socatUdp(c: Cluster, line: string): Promise<string> {
  if (!SOCAT) return line;
  const r = await c.client(
    ["sh", "-c", `printf '%s\\n' "$0" | socat -t 1 - UDP4:${c.guestIp}:7`, line],
    20_000,
  );
  return r.out;
}

/** Checks that the guest answers ICMP, UDP and TCP. */
async function answers(c: Cluster, what: string): Promise<void> {
  const ping = await c.probe(["ping", c.guestIp, "3"]);
  ok(ping.includes("ok ping 3/3"), `${what}: ${ping}`);
  const udp = await c.probe(["udp", c.guestIp, "7"]);
  ok(udp.includes("ok udp"), `${what}: ${udp}`);
  const echo = await c.probe(["echo", c.guestIp, "9000", "65536", "5"]);
  ok(echo.includes("ok echo conns=1 bytes=65536"), `${what}: ${echo}`);
}

Deno.test({
  name: "net: UDP echo before, through and after a kill -9 of the primary",
  ignore: SKIP !== null,
  async fn() {
    await withCluster({ label: "udp" }, async (c) => {
      const first = await c.probe(["udp", c.guestIp, "7"]);
      ok(first.includes("ok udp 6 sizes"), first);
      const line1 = `kemari-udp-${crypto.randomUUID()}`;
      ok((await socatUdp(c, line1)).includes(line1), "socat: no echo before the kill");

      const pinger = c.tool(["udpping", c.guestIp, "7", "10000", "3500"]);
      await sleep(1500);
      const kill = await c.killPrimary();
      await c.waitTakeover();
      const out = await pinger;
      ok(/ok udpping .* bad=0/.test(out), out.slice(-300));
      const r = gapReport(parseProbeLines(out), kill);
      console.log(`udp: ${describeLoss(r, kill)}; ${out.match(/ok udpping.*/)?.[0]}`);
      ok(r.before >= 100 && r.after >= 100, JSON.stringify({ ...r, lost: r.lost.length }));
      ok(r.window.from !== null && r.window.to !== null && r.window.to - kill < 5_000_000);
      ok(
        r.lostOutside.length === 0,
        `datagrams lost outside the takeover window: ${r.lostOutside.map((l) => l.seq)}`,
      );

      const after = await c.probe(["udp", c.guestIp, "7"]);
      ok(after.includes("ok udp 6 sizes"), after);
      const line2 = `kemari-udp-${crypto.randomUUID()}`;
      ok((await socatUdp(c, line2)).includes(line2), "socat: no echo after the takeover");
    });
  },
});

Deno.test({
  name: "net: fuzzed and hostile frames from the client crash neither guest nor VMM",
  ignore: SKIP !== null,
  async fn() {
    await withCluster({ label: "fuzz" }, async (c) => {
      const seed = String(Date.now() % 1_000_000 + 1);
      const before = (await c.status("standby"))!;
      const t0 = performance.now();
      const out = await c.probe(
        ["fuzz", "lan0", c.mac, c.guestIp, "20000", seed, "20"],
        120_000,
      );
      const fuzzMs = performance.now() - t0;
      ok(/ok fuzz malformed=\d+ random=20000 sessions=\d+\/20/.test(out), `seed ${seed}: ${out}`);
      ok(!c.primary.exited, `primary VMM exited (seed ${seed}):\n${c.primary.tail()}`);
      ok(!c.standby!.exited, `standby VMM exited (seed ${seed}):\n${c.standby!.tail()}`);
      const primary = await c.status("primary");
      ok(primary?.state === "protected", `seed ${seed}: ${JSON.stringify(primary)}`);
      ok(primary.guest.vcpu !== "stopped", `seed ${seed}: guest vCPU ${primary.guest.vcpu}`);
      await answers(c, `after fuzzing (seed ${seed})`);
      const standby = (await c.status("standby"))!;
      ok(standby.state === "ready", JSON.stringify(standby));
      ok(standby.epoch > before.epoch, `the standby stopped committing at ${standby.epoch}`);
      console.log(
        `seed ${seed}: ${out.trim()} in ${fuzzMs.toFixed(0)} ms; standby committed ` +
          `${standby.epoch - before.epoch} checkpoints meanwhile; guest answers`,
      );

      // The guest goes on on the standby's host, and survives more of it there.
      await c.killPrimary();
      await c.waitTakeover();
      await answers(c, "after the takeover");
      const seed2 = String(Number(seed) + 1);
      const out2 = await c.probe(["fuzz", "lan0", c.mac, c.guestIp, "5000", seed2, "5"], 60_000);
      ok(/ok fuzz .* sessions=\d+\/5/.test(out2), `seed ${seed2}: ${out2}`);
      ok(!c.standby!.exited, `former standby exited (seed ${seed2}):\n${c.standby!.tail()}`);
      const now = await c.status("standby");
      ok(now?.role === "primary", JSON.stringify(now));
      await answers(c, `after fuzzing the former standby (seed ${seed2})`);
      console.log(`seed ${seed2} after the takeover: ${out2.trim()}; guest answers`);
    });
  },
});
