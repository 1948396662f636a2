/**
 * TAP device tests: struct ifreq and the ioctl constants against the kernel
 * headers, errors, and a real TAP in a private network namespace. Deno
 * cannot enter a namespace, so the TAP side runs in a child started with
 * `ip netns exec <ns> deno run -A <this file> --tap-child <mode> ...`; the
 * child prints one JSON line. Under `deno run`, Deno.test is a no-op, so the
 * same file serves both roles. Also: a smoke test of tests/support/netns.ts.
 */

import { deepStrictEqual, equal, match, ok as assert, throws } from "node:assert/strict";
import {
  decodeIfreqName,
  encodeIfreq,
  EventPage,
  IFF_NO_PI,
  IFF_TAP,
  IFNAMSIZ,
  IFREQ,
  NetBackend,
  TapDevice,
  TapError,
  tapNameProblem,
  TUNSETIFF,
} from "../../devices/mod.ts";
import { arpFrame, parseIpv4, parseMac } from "../../devices/net.ts";
import { GuestMemory } from "../../hypervisor/guest_memory.ts";
import { checkAgainstC, coverageChecks } from "../support/c_probe.ts";
import { listNamespaces, NetTopology, TestNamespace } from "../support/netns.ts";

const THIS_FILE = new URL(import.meta.url).pathname;
const FAKE_MAC = "02:00:5e:10:00:42";
const TAP_ADDR = "10.81.0.1";
const PEER_ADDR = "10.81.0.2";

/** Root, /dev/net/tun and iproute2: what the namespace tests need. */
function netnsAvailable(): boolean {
  try {
    if (Deno.uid() !== 0) return false;
    Deno.statSync("/dev/net/tun");
    return new Deno.Command("ip", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}
const NETNS = !import.meta.main && netnsAvailable();

// ---- layouts and errors ------------------------------------------------------

Deno.test("tuntap: struct ifreq and the TUN ioctls agree with <linux/if.h> and <linux/if_tun.h>", async () => {
  await checkAgainstC(
    "ifreq",
    ["<sys/ioctl.h>", "<sys/socket.h>", "<linux/if.h>", "<linux/if_tun.h>"],
    [],
    [
      { name: "TUNSETIFF", expr: "TUNSETIFF", expected: TUNSETIFF },
      { name: "IFF_TAP", expr: "IFF_TAP", expected: IFF_TAP },
      { name: "IFF_NO_PI", expr: "IFF_NO_PI", expected: IFF_NO_PI },
      { name: "IFNAMSIZ", expr: "IFNAMSIZ", expected: IFNAMSIZ },
      { name: "sizeof_ifreq", expr: "sizeof(struct ifreq)", expected: IFREQ.size },
      { name: "ifr_name", expr: "offsetof(struct ifreq, ifr_name)", expected: IFREQ.name },
      { name: "ifr_flags", expr: "offsetof(struct ifreq, ifr_flags)", expected: IFREQ.flags },
      { name: "ifr_name_size", expr: "sizeof(((struct ifreq *)0)->ifr_name)", expected: IFNAMSIZ },
      { name: "ifr_flags_size", expr: "sizeof(((struct ifreq *)0)->ifr_flags)", expected: 2 },
      ...coverageChecks("ifreq", "struct ifreq", [
        { ts: "name", c: "ifr_ifrn", offset: IFREQ.name },
        { ts: "union", c: "ifr_ifru", offset: IFREQ.flags },
      ]),
    ],
  );
});

Deno.test("tuntap: ifreq encoding and name rules", () => {
  const ifreq = encodeIfreq("tap0", IFF_TAP | IFF_NO_PI);
  equal(ifreq.length, 40);
  deepStrictEqual([...ifreq.subarray(0, 5)], [0x74, 0x61, 0x70, 0x30, 0]);
  deepStrictEqual([...ifreq.subarray(16, 18)], [0x02, 0x10]);
  equal(decodeIfreqName(ifreq), "tap0");
  equal(decodeIfreqName(encodeIfreq("a".repeat(15), 0)), "a".repeat(15));
  for (const good of ["tap0", "kemari-vm1", "tap%d", "t".repeat(15)]) {
    equal(tapNameProblem(good), null, good);
  }
  for (const bad of ["", "t".repeat(16), "a/b", "a:b", "a b", ".", "..", "é", "a%s", "%d%d"]) {
    assert(tapNameProblem(bad) !== null, bad);
  }
});

Deno.test("tuntap: a bad name or a missing /dev/net/tun is a one-line TapError", () => {
  throws(() => TapDevice.open("bad/name"), (e: unknown) => {
    assert(e instanceof TapError);
    match(e.message, /^bad TAP name "bad\/name": it contains/);
    return true;
  });
  throws(() => TapDevice.open("x".repeat(16)), TapError);
  throws(() => TapDevice.open("tap0", { device: "/nonexistent/net/tun" }), (e: unknown) => {
    assert(e instanceof TapError);
    equal(e.errno, 2);
    match(e.message, /^\/nonexistent\/net\/tun does not exist: .*"tun" kernel module/);
    assert(!e.message.includes("\n"));
    return true;
  });
});

// ---- a real TAP ------------------------------------------------------------------

async function child(ns: string, args: string[], prefix: string[] = []) {
  const out = await new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      ns,
      ...prefix,
      Deno.execPath(),
      "run",
      "-A",
      THIS_FILE,
      "--tap-child",
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  const line = stdout.trim().split("\n").at(-1) ?? "";
  let result: Record<string, unknown> | null = null;
  try {
    result = JSON.parse(line);
  } catch {
    // reported below
  }
  assert(
    result !== null,
    `child ${args.join(" ")} (exit ${out.code}) printed ${stdout}\n${stderr}`,
  );
  return result;
}

Deno.test({
  name: "tuntap: a real TAP in a namespace: ARP request in, the kernel's ARP reply out",
  ignore: !NETNS,
  fn: async () => {
    const ns = await TestNamespace.create("tap");
    try {
      const result = await child(ns.name, ["arp"]);
      equal(result.error, undefined, String(result.error));
      equal(result.name, "ktap0");
      const reply = new Uint8Array(result.reply as number[]);
      deepStrictEqual(reply.subarray(0, 6), parseMac(FAKE_MAC), "to the asker");
      deepStrictEqual([...reply.subarray(12, 14)], [0x08, 0x06], "ARP");
      equal(reply[21], 2, "a reply");
      deepStrictEqual(reply.subarray(28, 32), parseIpv4(TAP_ADDR), "for the TAP's address");
      deepStrictEqual(reply.subarray(32, 38), parseMac(FAKE_MAC));
      deepStrictEqual(reply.subarray(38, 42), parseIpv4(PEER_ADDR));
      const tapMac = String(result.tapMac);
      deepStrictEqual(reply.subarray(6, 12), parseMac(tapMac), "from the TAP's own MAC");
      assert(tapMac !== FAKE_MAC);
      equal(result.afterClose, null, "a pending read resolves with null on close");
      assert(Number(result.unblockMs) < 1000, `close took ${result.unblockMs} ms to unblock`);
      equal(result.gone, true, "the non-persistent TAP disappears with its descriptor");
    } finally {
      await ns.destroy();
    }
    equal(ns.exists(), false);
  },
});

Deno.test({
  name: "tuntap: without CAP_NET_ADMIN, TUNSETIFF's EPERM is a one-line TapError",
  ignore: !NETNS,
  fn: async () => {
    const ns = await TestNamespace.create("tapperm");
    try {
      const result = await child(ns.name, ["eperm"], [
        "setpriv",
        "--inh-caps=-net_admin",
        "--bounding-set=-net_admin",
      ]);
      equal(result.errno, 1, JSON.stringify(result));
      match(String(result.message), /^TAP ktap0: permission denied \(.*CAP_NET_ADMIN\)$/);
    } finally {
      await ns.destroy();
    }
  },
});

// ---- the topology helper ----------------------------------------------------------

async function linkMac(topology: NetTopology, role: "client" | "primary", ifname: string) {
  const links = JSON.parse(await topology.ip(role, "-j", "link", "show", ifname));
  return String(links[0].address);
}

Deno.test({
  name: "netns: topology smoke test: bridge, replication cut/heal, fdb moves, cleanup",
  ignore: !NETNS,
  fn: async () => {
    const topology = await NetTopology.create({ label: "smoke" });
    const names = Object.values(topology.ns);
    try {
      deepStrictEqual(listNamespaces().filter((n) => names.includes(n)).sort(), [...names].sort());
      assert(
        await topology.reachable("client", "primary", topology.addr.primary),
        "client→primary",
      );
      assert(await topology.reachable("standby", "client", topology.addr.client), "standby→client");
      assert(
        await topology.reachable("primary", "standby", topology.replAddr.standby),
        "replication link",
      );
      await topology.cut();
      equal(topology.replicationUp, false);
      equal(
        await topology.reachable("primary", "standby", topology.replAddr.standby, 1000),
        false,
        "cut",
      );
      assert(
        await topology.reachable("client", "standby", topology.addr.standby),
        "the LAN is not cut",
      );
      await topology.heal();
      let healed = false;
      for (let i = 0; i < 20 && !healed; i++) {
        healed = await topology.reachable("primary", "standby", topology.replAddr.standby, 1000);
      }
      assert(healed, "healed");

      equal(await topology.portOf(await linkMac(topology, "client", "lan0")), "client");
      equal(await topology.portOf(await linkMac(topology, "primary", "br0")), "primary");
      equal(await topology.portOf("02:00:00:00:00:ee"), null);

      // A guest's announcement through a real TAP moves its MAC between ports.
      const guestMac = "02:4b:45:4d:00:07";
      for (const role of ["primary", "standby"] as const) {
        const tap = await topology.addTap(role);
        const result = await child(topology.ns[role], ["announce", tap, guestMac, "10.80.9.9"]);
        equal(result.sent, 2, JSON.stringify(result));
        equal(await topology.waitPortOf(guestMac, role), role, `guest MAC on ${role}`);
      }
    } finally {
      await topology.destroy();
    }
    equal(topology.destroyed, true);
    deepStrictEqual(topology.remaining(), []);
    deepStrictEqual(listNamespaces().filter((n) => names.includes(n)), []);
  },
});

// ---- the child side ----------------------------------------------------------------

async function ip(...args: string[]): Promise<string> {
  const out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Sends an ARP request from FAKE_MAC into a new TAP and reads the kernel's reply. */
async function childArp(): Promise<Record<string, unknown>> {
  const tap = TapDevice.open("ktap%d");
  try {
    await ip("link", "set", tap.name, "up");
    await ip("addr", "add", `${TAP_ADDR}/24`, "dev", tap.name);
    const tapMac = JSON.parse(await ip("-j", "link", "show", tap.name))[0].address;
    const mac = parseMac(FAKE_MAC);
    tap.write(arpFrame({
      destination: new Uint8Array(6).fill(0xff),
      source: mac,
      operation: 1,
      senderMac: mac,
      senderIp: parseIpv4(PEER_ADDR)!,
      targetMac: new Uint8Array(6),
      targetIp: parseIpv4(TAP_ADDR)!,
    }));
    const timer = setTimeout(() => tap.close(), 5000);
    let reply: Uint8Array | null = null;
    while (reply === null) {
      const frame = await tap.read();
      if (frame === null) break;
      if (frame.length >= 42 && frame[12] === 0x08 && frame[13] === 0x06 && frame[21] === 2) {
        reply = frame;
      }
    }
    clearTimeout(timer);
    const pending = tap.read();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const t0 = performance.now();
    await tap.close();
    const afterClose = await pending;
    const unblockMs = performance.now() - t0;
    const links = await new Deno.Command("ip", { args: ["link", "show", tap.name], stderr: "null" })
      .output();
    return {
      name: tap.name,
      tapMac,
      reply: reply === null ? null : [...reply],
      afterClose,
      unblockMs,
      gone: !links.success,
    };
  } finally {
    await tap.close();
  }
}

async function bridgePort(name: string): Promise<string> {
  const out = await new Deno.Command("bridge", {
    args: ["-j", "link", "show", "dev", name],
    stdout: "piped",
    stderr: "null",
  }).output();
  const ports = JSON.parse(new TextDecoder().decode(out.stdout) || "[]");
  return JSON.stringify(ports[0] ?? null);
}

/** Announces a guest MAC/IP through a NetBackend over an existing TAP. */
async function childAnnounce(name: string, mac: string, ipAddr: string) {
  const mem = new GuestMemory(new ArrayBuffer(4 * 1024 * 1024));
  const tap = TapDevice.open(name);
  const net = new NetBackend(mem, new EventPage(mem, () => {}), tap, mac, { ip: ipAddr });
  try {
    // The bridge port forwards only once it has seen the carrier the open
    // brought (the kernel reports that with a delay of up to a second).
    for (let i = 0; i < 60; i++) {
      const port = JSON.parse(await bridgePort(name));
      if (port?.state === "forwarding") break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return { sent: net.announce(), errors: net.counters.txErrors, lastError: net.lastError };
  } finally {
    await net.close();
  }
}

function childEperm(): Record<string, unknown> {
  try {
    const tap = TapDevice.open("ktap0");
    tap.close();
    return { opened: true };
  } catch (e) {
    return e instanceof TapError ? { errno: e.errno, message: e.message } : { other: String(e) };
  }
}

if (import.meta.main && Deno.args[0] === "--tap-child") {
  const [mode, ...rest] = Deno.args.slice(1);
  let result: unknown;
  try {
    if (mode === "arp") result = await childArp();
    else if (mode === "announce") result = await childAnnounce(rest[0], rest[1], rest[2]);
    else if (mode === "eperm") result = childEperm();
    else result = { error: `unknown mode ${mode}` };
  } catch (e) {
    result = { error: e instanceof Error ? e.message : String(e) };
  }
  console.log(JSON.stringify(result));
}
