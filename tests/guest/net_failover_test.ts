/**
 * End to end: netsvc.elf in a real kemari VM, protected by a standby, and a
 * failover in the middle of live TCP transfers.
 *
 * In a fresh network namespace a bridge br0 (10.77.7.1/24) joins the
 * primary's TAP (tapP) and the standby's (tapS); the namespace's kernel is the
 * client (tests/guest/net_probe.c). The primary is SIGKILLed while an 8 MiB
 * echo, the counter stream and 64 concurrent echo connections run; the
 * standby takes over from its last checkpoint (the guest's stack state is in
 * guest memory) and every transfer must complete byte-exact, with every
 * stream counter consecutive.
 *
 * Needs what net_stack_test.ts needs plus /dev/kvm; skipped otherwise.
 */

import { ok } from "node:assert/strict";
import { existsSync } from "node:fs";
import * as path from "node:path";
import { buildGuest, guestPath } from "../../guest/build.ts";
import { buildProbe, Netns, netnsSkipReason, type Proc, ROOT, sleep } from "./net_support.ts";

function skipReason(): string | null {
  return netnsSkipReason() ?? (existsSync("/dev/kvm") ? null : "no /dev/kvm");
}

const SKIP = skipReason();
if (SKIP) console.warn(`net_failover_test: skipped: ${SKIP}`);

Deno.test({
  name: "net stack: TCP connections survive a kemari failover",
  ignore: SKIP !== null,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "kemari-netfo-" });
    const ns = new Netns();
    const procs: Proc[] = [];
    try {
      await buildGuest();
      const probe = await buildProbe(tmp);
      await ns.create();
      await ns.exec(["ip", "link", "add", "br0", "type", "bridge"]);
      await ns.exec(["ip", "addr", "add", "10.77.7.1/24", "dev", "br0"]);
      await ns.exec(["ip", "link", "set", "br0", "up"]);
      const key = path.join(tmp, "key");
      const kemari = [Deno.execPath(), "run", "-A", path.join(ROOT, "main.ts")];
      await ns.exec([...kemari, "keygen", key]);
      const name = `netfo-${crypto.randomUUID().slice(0, 8)}`;

      const primary = ns.spawn([
        ...kemari,
        "primary",
        "--guest",
        guestPath("netsvc"),
        "--args",
        "ip=10.77.7.2/24 status=1",
        "--tuntap",
        "tapP",
        "--mac",
        "52:54:00:77:07:02",
        "--listen",
        "127.0.0.1:7700",
        "--key",
        key,
        "--name",
        name,
        "--control",
        path.join(tmp, "primary.sock"),
      ]);
      procs.push(primary);
      await primary.waitFor(/netsvc: ip 10\.77\.7\.2 mac 52:54:00:77:07:02 ready/, 30_000);
      const standby = ns.spawn([
        ...kemari,
        "standby",
        "--primary",
        "127.0.0.1:7700",
        "--key",
        key,
        "--listen",
        "127.0.0.1:7710",
        "--tuntap",
        "tapS",
        "--name",
        name,
        "--control",
        path.join(tmp, "standby.sock"),
      ]);
      procs.push(standby);
      await standby.waitFor(/standby ready: checkpoint/, 60_000);
      for (const tap of ["tapP", "tapS"]) {
        await ns.exec(["ip", "link", "set", tap, "master", "br0"]);
        await ns.exec(["ip", "link", "set", tap, "up"]);
      }

      const probeRun = (args: string[], timeoutMs = 90_000) => ns.exec([probe, ...args], timeoutMs);
      ok((await probeRun(["ping", "10.77.7.2", "3"])).includes("ok ping 3/3"));
      const first = await probeRun(["echo", "10.77.7.2", "9000", "262144", "3"]);
      ok(first.includes("ok echo conns=1"), first);

      const jobs = [
        probeRun(["echo", "10.77.7.2", "9000", String(8 << 20), "5"]),
        probeRun(["stream", "10.77.7.2", "9001", "6000"]),
        probeRun(["many", "10.77.7.2", "9000", "64", "131072"]),
      ];
      await sleep(1000);
      primary.signal("SIGKILL");
      await standby.waitFor(/TAKEOVER/, 20_000);
      const outs = await Promise.all(jobs);
      ok(outs[0].includes("ok echo conns=1 bytes=8388608"), outs[0]);
      ok(outs[1].includes("ok stream"), outs[1]);
      ok(outs[2].includes("ok echo conns=64"), outs[2]);
      console.log(outs.map((o) => o.trim()).join("\n"));

      ok((await probeRun(["ping", "10.77.7.2", "3"])).includes("ok ping 3/3"));
      const after = await probeRun(["echo", "10.77.7.2", "9000", "262144", "9"]);
      ok(after.includes("ok echo conns=1"), after);
      ok(!standby.exited, standby.tail());
    } finally {
      for (const p of procs) await p.stop();
      await ns.destroy();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
