/**
 * Guest networking through a kill -9 of the primary, on three hosts.
 *
 * Each test builds its own topology (tests/net/cluster.ts): a client, a
 * primary and a standby namespace on one bridge, `kemari primary` running
 * netsvc (kemari mode, 32M, --timeout 400ms) on the primary's TAP,
 * `kemari standby` on the standby's TAP replicating over the separate
 * repl0 link, and the clients in the client's namespace. The primary is
 * SIGKILLed while traffic runs; the standby takes over from its last
 * committed checkpoint and announces the guest's MAC.
 *
 * 1. ping: replies before, loss only inside the takeover window, replies
 *    after (net_tool's 10 ms pinger, and Debian's ping beside it); the
 *    longest gap is printed. The window, by send time, runs from the last
 *    request answered before the kill to the first request sent after the
 *    kill that was answered: no request outside it may be lost.
 * 2. TCP numbered data both ways with a real client: socat to the echo
 *    port (the test writes 8-byte counters into it and checks every byte
 *    that comes back) and socat reading the counter stream, plus
 *    net_probe's echo and stream checkers: no reset (socat exits 0 / is
 *    still running), no gap, no duplicate, no reordering.
 * 3. 64 concurrent echo connections, all established before the kill, all
 *    complete byte-exact after it.
 * 6. zero-window receivers across the failover: net_probe's zerowin (4 KiB
 *    receive buffer, stops reading) and socat whose output the test stops
 *    reading; the client's zero window is seen on the wire before the kill,
 *    both streams resume intact after the takeover.
 * 7. the central bridge's forwarding entry for the guest MAC is on the
 *    primary's port before and on the standby's port after the takeover,
 *    and unicast frames for the guest then reach only the standby's port
 *    (captured on both bridge ports: no flooding makes this pass).
 *
 * Needs root, /dev/net/tun, /dev/kvm, iproute2 and gcc; skipped otherwise.
 * Tests 2 and 6 also need socat (skipped with a warning without it), test 1
 * runs Debian's ping beside its own pinger when iputils-ping is there.
 * @module
 */

import { ok } from "node:assert/strict";
import { onPath, sleep } from "../guest/net_support.ts";
import {
  type Cluster,
  counterBytes,
  CounterCheck,
  describeLoss,
  endCapture,
  gapReport,
  parseProbeLines,
  realUs,
  skipReason,
  startCapture,
  withCluster,
} from "./cluster.ts";

const SKIP = skipReason();
if (SKIP) console.warn(`tests/net/failover_test: skipped: ${SKIP}`);
/** The real-client tests need socat (Debian: apt-get install socat). */
const NO_SOCAT = SKIP ?? (onPath("socat") ? null : "no socat (apt-get install socat)");
if (NO_SOCAT && !SKIP) console.warn(`tests/net/failover_test: socat tests skipped: ${NO_SOCAT}`);

function ms(us: number): string {
  return `${(us / 1000).toFixed(1)} ms`;
}

/** Reads a child's stdout through a counter check, recording (time, bytes so far). */
async function readCounters(
  stream: ReadableStream<Uint8Array>,
  check: CounterCheck,
  log: { tUs: number; pos: number }[],
  gate?: () => Promise<void>,
): Promise<void> {
  const reader = stream.getReader();
  try {
    for (;;) {
      if (gate) await gate();
      const { value, done } = await reader.read();
      if (done) return;
      check.check(value);
      log.push({ tUs: realUs(), pos: check.pos });
    }
  } finally {
    reader.releaseLock();
  }
}

/** Longest time between two arrivals in a (time, pos) log, µs. */
function longestStall(log: { tUs: number }[]): number {
  let longest = 0;
  for (let i = 1; i < log.length; i++) longest = Math.max(longest, log[i].tUs - log[i - 1].tUs);
  return longest;
}

/** Number of TCP connections established from the client to `ip:port`. */
async function established(c: Cluster, port: number): Promise<number> {
  const out = await c.client(["ss", "-Htn", "state", "established", "dst", `${c.guestIp}:${port}`]);
  return out.out.split("\n").filter((l) => l.trim() !== "").length;
}

Deno.test({
  name: "net failover: ping through a kill -9 of the primary",
  ignore: SKIP !== null,
  async fn() {
    await withCluster({ label: "ping" }, async (c) => {
      const pinger = c.tool(["ping", c.guestIp, "10000", "4000"]);
      const debian = onPath("ping")
        ? c.client(["ping", "-n", "-D", "-i", "0.05", "-w", "5", c.guestIp], 20_000)
        : null;
      await sleep(1500);
      const kill = await c.killPrimary();
      const takeover = await c.waitTakeover();
      const out = await pinger;
      ok(out.includes("ok ping"), out.slice(-500));
      const lines = parseProbeLines(out);
      const r = gapReport(lines, kill);
      console.log(
        `ping: ${describeLoss(r, kill)}; takeover logged ${ms(takeover - kill)} after the kill`,
      );
      ok(r.before >= 100, `only ${r.before} replies before the kill`);
      ok(r.after >= 100, `only ${r.after} replies after`);
      ok(r.window.from !== null && r.window.to !== null && r.window.to - kill < 5_000_000);
      ok(
        r.lostOutside.length === 0,
        `requests lost outside the takeover window: ${
          r.lostOutside.map((l) => `${l.seq} sent ${ms(l.sentUs - kill)} from the kill`).join(", ")
        }`,
      );
      ok(r.longestGapMs < 5000, `longest gap ${r.longestGapMs} ms`);

      // Debian's ping, beside it: replies on both sides of the kill.
      if (debian === null) {
        console.warn("no ping binary (iputils-ping): Debian's ping not run");
        return;
      }
      const deb = await debian;
      const stamps = [...deb.out.matchAll(/^\[(\d+\.\d+)\] .*icmp_seq=\d+/gm)]
        .map((m) => Math.round(Number(m[1]) * 1e6));
      const summary = deb.out.match(/\d+ packets transmitted, \d+ received.*/)?.[0];
      console.log(`Debian ping: ${summary}`);
      ok(stamps.some((t) => t < kill), `no Debian ping reply before the kill:\n${deb.out}`);
      ok(stamps.some((t) => t > takeover), `no Debian ping reply after the takeover:\n${deb.out}`);
    });
  },
});

Deno.test({
  name: "net failover: TCP numbered data both ways through a kill -9 (socat + net_probe)",
  ignore: NO_SOCAT !== null,
  async fn() {
    await withCluster({ label: "tcp" }, async (c) => {
      const ip = c.guestIp;
      const WRITE_MS = 4000, CHUNK = 16384;

      // socat to the echo port: the test writes counters, checks the echo.
      const echo = c.spawnPiped(
        "client",
        ["socat", "-t", "30", "-b", "65536", "STDIO", `TCP4:${ip}:9000`],
        true,
      );
      const echoErr = new Response(echo.stderr).text();
      const echoCheck = new CounterCheck("socat echo");
      const echoLog: { tUs: number; pos: number }[] = [];
      const echoRead = readCounters(echo.stdout, echoCheck, echoLog);
      const writer = echo.stdin.getWriter();
      let sent = 0;
      const echoWrite = (async () => {
        const end = performance.now() + WRITE_MS;
        while (performance.now() < end) {
          await writer.write(counterBytes(sent, CHUNK));
          sent += CHUNK;
          await sleep(5);
        }
        await writer.close();
      })();

      // socat reading the counter stream.
      const stream = c.spawnPiped("client", ["socat", "-u", `TCP4:${ip}:9001`, "STDOUT"]);
      const streamErr = new Response(stream.stderr).text();
      let streamExited = false;
      stream.status.then(() => (streamExited = true));
      const streamCheck = new CounterCheck("socat stream");
      const streamLog: { tUs: number; pos: number }[] = [];
      const streamRead = readCounters(stream.stdout, streamCheck, streamLog);

      // The project's checkers beside them.
      const probes = [
        c.probe(["echo", ip, "9000", String(4 << 20), "17"]),
        c.probe(["stream", ip, "9001", "5000"]),
      ];

      await sleep(1500);
      ok(streamLog.length > 0 && echoLog.length > 0, "no data before the kill");
      const kill = await c.killPrimary();
      const takeover = await c.waitTakeover();
      await echoWrite;
      const echoStatus = await echo.status;
      await echoRead;
      await sleep(Math.max(0, 4500 - (realUs() - kill) / 1000));
      const streamEarly = streamExited;
      if (!streamEarly) stream.kill("SIGTERM");
      await stream.status;
      await streamRead;
      ok(!streamEarly, `socat on the stream exited early: ${await streamErr}`);
      const [probeEcho, probeStream] = await Promise.all(probes);

      const echoErrText = await echoErr;
      console.log(
        `socat echo: ${sent} bytes written, ${echoCheck.pos} echoed in order, exit ${echoStatus.code}, ` +
          `longest stall ${ms(longestStall(echoLog))}; socat stream: ${streamCheck.pos} bytes in ` +
          `order, longest stall ${ms(longestStall(streamLog))}; takeover ${ms(takeover - kill)} ` +
          `after the kill\n${probeEcho.trim()}\n${probeStream.trim()}`,
      );
      ok(echoStatus.code === 0, `socat echo exited ${echoStatus.code}: ${echoErrText}`);
      ok(!/reset|E /.test(echoErrText), echoErrText);
      ok(echoCheck.pos === sent, `echoed ${echoCheck.pos} of ${sent} bytes`);
      const echoAfter = echoLog.filter((e) => e.tUs > takeover);
      ok(echoAfter.length > 0, "no echo after the takeover");
      const streamErrText = await streamErr;
      ok(!/reset|E /.test(streamErrText), streamErrText);
      const before = streamLog.filter((e) => e.tUs < kill).at(-1)?.pos ?? 0;
      ok(streamCheck.pos - before >= 65536, `only ${streamCheck.pos - before} stream bytes after`);
      ok(probeEcho.includes(`ok echo conns=1 bytes=${4 << 20}`), probeEcho);
      ok(probeStream.includes("ok stream"), probeStream);
      ok(!c.standby!.exited, c.standby!.tail());
    });
  },
});

Deno.test({
  name: "net failover: 64 concurrent connections across a kill -9",
  ignore: SKIP !== null,
  async fn() {
    await withCluster({ label: "many" }, async (c) => {
      const start = realUs();
      const job = c.probe(["many", c.guestIp, "9000", "64", String(256 << 10)], 120_000);
      let open = 0;
      for (let i = 0; i < 100 && open < 64; i++) {
        await sleep(20);
        open = await established(c, 9000);
      }
      ok(open === 64, `only ${open} connections established`);
      await sleep(200);
      const kill = await c.killPrimary();
      const takeover = await c.waitTakeover();
      const out = await job;
      const done = realUs();
      console.log(
        `${out.trim()}; kill ${ms(kill - start)} after the start, takeover ${
          ms(takeover - kill)
        } later, finished ${ms(done - takeover)} after the takeover`,
      );
      ok(out.includes("ok echo conns=64"), out);
      ok(done > takeover, "the transfers ended before the takeover");
      ok(!c.standby!.exited, c.standby!.tail());
    });
  },
});

Deno.test({
  name: "net failover: zero-window receivers (net_probe, socat) across a kill -9",
  ignore: NO_SOCAT !== null,
  async fn() {
    await withCluster({ label: "zwin" }, async (c) => {
      const ip = c.guestIp;
      const capture = await startCapture(c, "client", "lan0", 60_000, c.mac);
      // net_probe: 4 KiB receive buffer, reads 256 KiB, stops 4 s, reads 1.5 s.
      const zerowin = c.probe(["zerowin", ip, "9001", "4000", "1500"]);
      // socat: the test reads 256 KiB of its output, stops reading for 4.5 s, then reads again.
      const socat = c.spawnPiped("client", ["socat", "-u", `TCP4:${ip}:9001`, "STDOUT"]);
      const socatErr = new Response(socat.stderr).text();
      const check = new CounterCheck("socat zero-window stream");
      const log: { tUs: number; pos: number }[] = [];
      let resumeAt = Infinity;
      const reading = readCounters(socat.stdout, check, log, async () => {
        if (check.pos >= 256 << 10 && realUs() < resumeAt) {
          if (resumeAt === Infinity) resumeAt = realUs() + 4_500_000;
          await sleep((resumeAt - realUs()) / 1000);
        }
      });
      // Both receivers need time to fill their buffers and advertise a zero
      // window (longer on a loaded machine); both stay stalled for 4 s.
      await sleep(2500);
      const stalledAt = check.pos;
      const kill = await c.killPrimary();
      const takeover = await c.waitTakeover();
      const zout = await zerowin;
      while (realUs() < resumeAt + 1_500_000) await sleep(50);
      socat.kill("SIGTERM");
      await socat.status;
      await reading;
      const { frames, summary } = await endCapture(capture);

      // The client's window went to 0 before the kill, on both connections.
      const zeroWindows = frames.filter((f) =>
        f.src !== c.mac && f.info[0] === "tcp" && f.info[2] === "9001" && f.info[7] === "0" &&
        f.tUs < kill
      );
      const ports = new Set(zeroWindows.map((f) => f.info[1]));
      // Probes: one-byte segments from the guest while the window was 0.
      const probes = frames.filter((f) =>
        f.src === c.mac && f.info[0] === "tcp" && f.info[1] === "9001" && f.info[6] === "1"
      );
      const probesAfter = probes.filter((f) => f.tUs > takeover);
      const after = check.pos - (log.filter((e) => e.tUs < resumeAt).at(-1)?.pos ?? 0);
      console.log(
        `${zout.trim()}; socat: ${stalledAt} bytes before the stall, ${after} after it, ` +
          `${check.pos} in order; zero-window advertisements before the kill on ${ports.size} ` +
          `connections; guest window probes ${probes.length} (${probesAfter.length} after the ` +
          `takeover, ${ms(takeover - kill)} after the kill); ${summary}`,
      );
      ok(zout.includes("ok zerowin"), zout);
      ok(ports.size >= 2, `zero window seen on ${ports.size} connections before the kill`);
      ok(after >= 256 << 10, `socat read only ${after} bytes after the stall`);
      ok(!/reset|E /.test(await socatErr));
      ok(probes.length > 0, "the guest sent no zero-window probe");
      ok(!c.standby!.exited, c.standby!.tail());
    });
  },
});

Deno.test({
  name: "net failover: the bridge's forwarding entry moves to the standby's port",
  ignore: SKIP !== null,
  async fn() {
    await withCluster({ label: "fdb" }, async (c) => {
      const { topo, mac } = c;
      /** Unicast frames for the guest seen on each bridge port while pinging. */
      const unicastPerPort = async (pings: number) => {
        const caps = await Promise.all([
          startCapture(c, "net", "p-primary", 30_000, mac),
          startCapture(c, "net", "p-standby", 30_000, mac),
        ]);
        const out = await c.probe(["ping", c.guestIp, String(pings)]);
        const [onPrimary, onStandby] = await Promise.all(caps.map(endCapture));
        const toGuest = (fs: typeof onPrimary.frames) => fs.filter((f) => f.dst === mac).length;
        return { out, primary: toGuest(onPrimary.frames), standby: toGuest(onStandby.frames) };
      };

      ok(await topo.waitPortOf(mac, "primary") === "primary", JSON.stringify(await topo.fdb()));
      const before = await unicastPerPort(10);
      ok(before.out.includes("ok ping 10/10"), before.out);
      ok(before.primary >= 10 && before.standby === 0, `before: ${JSON.stringify(before)}`);

      const announce = await startCapture(c, "net", "p-standby", 30_000, mac);
      const kill = await c.killPrimary();
      const takeover = await c.waitTakeover();
      let moved: number | null = null;
      let port = await topo.portOf(mac);
      while (port !== "standby" && realUs() - kill < 10_000_000) {
        await sleep(5);
        port = await topo.portOf(mac);
      }
      if (port === "standby") moved = realUs();
      const entries = (await topo.fdb()).filter((e) => e.mac === mac);
      // The standby announces three times (0, 50 and 200 ms after it resumes the guest).
      await sleep(Math.max(0, 600 - (realUs() - takeover) / 1000));
      const { frames } = await endCapture(announce);
      const garp = frames.filter((f) =>
        f.src === mac && f.info[0] === "arp" && f.info[2] === c.guestIp && f.info[3] === c.guestIp
      );
      console.log(
        `fdb: ${mac} on ${port} ${moved ? ms(moved - kill) : "never"} after the kill ` +
          `(takeover logged at ${ms(takeover - kill)}); entries ${JSON.stringify(entries)}; ` +
          `${garp.length} gratuitous ARP frames from the standby`,
      );
      ok(port === "standby", `the guest MAC is on ${port}: ${JSON.stringify(entries)}`);
      ok(entries.length === 1 && entries[0].port === "p-standby", JSON.stringify(entries));
      ok(garp.length >= 6, `${garp.length} gratuitous ARP frames seen (3 announcements expected)`);

      const after = await unicastPerPort(10);
      ok(after.out.includes("ok ping 10/10"), after.out);
      ok(after.primary === 0 && after.standby >= 10, `after: ${JSON.stringify(after)}`);
      ok(await topo.portOf(mac) === "standby");
    });
  },
});
