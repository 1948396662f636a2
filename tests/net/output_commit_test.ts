/**
 * The output-commit rule for network sends, checked on the wire: no frame
 * from the guest leaves the primary's host before the standby has committed
 * a checkpoint that covers it.
 *
 * Setup (tests/net/cluster.ts): the three-host topology, netsvc protected in
 * kemari mode (32M, --timeout 400ms, status=0 so the console never asks for
 * checkpoints). The standby reaches the primary's replication port through
 * tests/net/delay_forward.ts inside the standby's namespace, which delays
 * the standby's ACKs (and nothing else) by ACK_DELAY_MS. That delay is what
 * makes the order visible at millisecond resolution: if the rule holds, the
 * standby reports a commit ACK_DELAY_MS before the primary may release the
 * frames it covers; if the primary released frames before (or without) the
 * commit, the frames would appear on the wire before the standby could say
 * it had committed.
 *
 * Three records on one clock (CLOCK_REALTIME, µs):
 * - the wire: `net_tool capture tap0` in the primary's namespace, on the
 *   guest's TAP, which is the TAP's port on the primary's bridge; every
 *   frame in both directions with the kernel's timestamp (SO_TIMESTAMPNS).
 *   Frames the VMM writes (from the guest) are stamped when the kernel
 *   receives them from the TAP, i.e. the moment they are released; frames
 *   to the guest are stamped when the bridge hands them to the TAP, before
 *   the VMM can read them.
 * - the standby's committed epoch: the test polls `status` on the standby's
 *   control socket back to back (what `kemari status --json` prints), and
 *   keeps (sent, received, epoch) for each answer. The standby sets its
 *   committed epoch before it sends the ACK, and epochs only grow.
 * - nothing from the primary: its own account is not evidence.
 *
 * Phase A, request/response. The client pings the guest every 100 ms, one
 * request outstanding at a time (ARP caches warm), so every frame the guest
 * sends is caused by a frame the client sent: an echo reply by its request
 * (same id and sequence), an ARP reply by the client's ARP request, any
 * other frame by the client's latest frame before it (its trigger, at tq).
 * For each guest frame r seen at tr:
 *
 * - lower bound of its covering epoch: r was produced after tq. The epoch
 *   that covers an output is the next checkpoint's number at the moment it
 *   is produced, which is more than every epoch committed by then; the
 *   last poll answered before tq saw epoch vZ <= committed(tq), so
 *   covering(r) >= vZ + 1 =: lower.
 * - upper bound: the first poll sent after tr saw epoch vA >= committed at
 *   tr (>= covering(r) if the rule holds). If vA < lower, r was on the wire
 *   before any checkpoint that could cover it was committed: a violation.
 *   Every frame is checked this way.
 * - when vA == lower the covering epoch is known exactly; the rule then
 *   requires the standby to have committed it before tr, and the test shows
 *   it did: some poll answered before tr already reported epoch >= lower.
 *   ("Proven": the standby said "committed" before the frame hit the wire.)
 *
 * Every frame must pass the violation check. The bounds meet only when the
 * polls around tq and tr are prompt; on a loaded host a slow poll widens
 * them, so the test asks for an exact epoch on at least 40% of the frames,
 * at least 12 proven frames, and a proof for at least 90% of the exact ones
 * (a poll stalled longer than ACK_DELAY_MS leaves a frame inconclusive, not
 * wrong). A primary that released frames at the checkpoint instead of at
 * the commit fails all three: its frames would reach the wire before the
 * standby could report their commit.
 *
 * Phase B, a stopped standby. With pings every 20 ms and net_probe's TCP
 * counter stream running, the standby is SIGSTOPped for 200 ms (less than
 * the timeout, so nobody declares anybody dead). No checkpoint can commit
 * meanwhile, so from ACK_DELAY_MS (+ slack) after the stop until the
 * SIGCONT the capture must show requests reaching the guest's TAP but not a
 * single frame from the guest; the first guest frame after the SIGCONT must
 * come after the standby reported a new commit; and every ping is answered
 * in the end (the replies were held, not lost).
 *
 * Needs root, /dev/net/tun, /dev/kvm, iproute2 and gcc; skipped otherwise.
 * @module
 */

import { ok } from "node:assert/strict";
import { sleep } from "../guest/net_support.ts";
import {
  type Cluster,
  endCapture,
  type Frame,
  parseProbeLines,
  realUs,
  skipReason,
  startCapture,
  withCluster,
} from "./cluster.ts";

const SKIP = skipReason();
if (SKIP) console.warn(`tests/net/output_commit_test: skipped: ${SKIP}`);

const ACK_DELAY_MS = 50;
const STOP_MS = 200;

interface Poll {
  sendUs: number;
  recvUs: number;
  epoch: number;
}

/** Polls the standby's committed epoch back to back until stop() is called. */
function pollStandby(c: Cluster): { polls: Poll[]; stop(): Promise<void> } {
  const polls: Poll[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const sendUs = realUs();
      const s = await c.status("standby", 5000);
      const recvUs = realUs();
      if (s) polls.push({ sendUs, recvUs, epoch: s.epoch });
      await sleep(0);
    }
  })();
  return {
    polls,
    async stop() {
      running = false;
      await loop;
    },
  };
}

/** Epoch of the last poll answered at or before `t` (-1 if none). */
function answeredBy(polls: Poll[], t: number): number {
  let epoch = -1;
  for (const p of polls) if (p.recvUs <= t) epoch = Math.max(epoch, p.epoch);
  return epoch;
}

/** Epoch of the first poll sent at or after `t` (null if none). */
function askedAfter(polls: Poll[], t: number): number | null {
  for (const p of polls) if (p.sendUs >= t) return p.epoch;
  return null;
}

/** The client frame that caused guest frame `r` (see the module doc), or null. */
function triggerOf(r: Frame, fromClient: Frame[]): Frame | null {
  const earlier = fromClient.filter((f) => f.tUs <= r.tUs && r.tUs - f.tUs < 1_000_000);
  let match: Frame[] = earlier;
  if (r.info[0] === "icmp" && r.info[1] === "0") {
    match = earlier.filter((f) =>
      f.info[0] === "icmp" && f.info[1] === "8" && f.info[2] === r.info[2] &&
      f.info[3] === r.info[3]
    );
  } else if (r.info[0] === "arp" && r.info[1] === "2") {
    match = earlier.filter((f) => f.info[0] === "arp" && f.info[1] === "1");
  }
  return match.at(-1) ?? null;
}

async function clientMac(c: Cluster): Promise<string> {
  const out = await c.topo.ip("client", "-j", "link", "show", "lan0");
  return (JSON.parse(out) as { address: string }[])[0].address.toLowerCase();
}

Deno.test({
  name: "net output commit: no guest frame on the wire before its checkpoint commits",
  ignore: SKIP !== null,
  async fn() {
    await withCluster({ label: "commit", ackDelayMs: ACK_DELAY_MS }, async (c) => {
      const client = await clientMac(c);
      const capture = await startCapture(c, "primary", "tap0", 60_000);
      const poller = pollStandby(c);
      let frames: Frame[] = [];
      let polls: Poll[] = [];
      const phaseA = { start: 0, end: 0 };
      const phaseB = { stop: 0, cont: 0, pings: "" };
      try {
        await c.probe(["ping", c.guestIp, "2"]); // warm ARP caches
        await sleep(200);
        phaseA.start = realUs();
        const pingA = await c.tool(["ping", c.guestIp, "100000", "3500"]);
        phaseA.end = realUs();
        ok(/ok ping sent=(\d+) got=\1 /.test(pingA), pingA.slice(-200));

        const pingB = c.tool(["ping", c.guestIp, "20000", "2000"]);
        const stream = c.probe(["stream", c.guestIp, "9001", "2000"]);
        await sleep(700);
        phaseB.stop = realUs();
        c.standby!.signal("SIGSTOP");
        await sleep(STOP_MS);
        phaseB.cont = realUs();
        c.standby!.signal("SIGCONT");
        phaseB.pings = await pingB;
        const streamOut = await stream;
        ok(streamOut.includes("ok stream"), streamOut);
        await sleep(300);
      } finally {
        c.standby!.signal("SIGCONT");
        await poller.stop();
        polls = poller.polls;
        frames = (await endCapture(capture)).frames;
      }
      const primary = await c.status("primary");
      ok(primary?.state === "protected", `the primary is ${primary?.state}`);

      const fromGuest = frames.filter((f) => f.src === c.mac);
      const fromClient = frames.filter((f) => f.src === client && f.pktType === 4);

      // Phase A: each guest frame against the standby's committed epochs.
      const inA = fromGuest.filter((f) => f.tUs >= phaseA.start && f.tUs <= phaseA.end);
      let exact = 0, proven = 0, unattributed = 0;
      const margins: number[] = [];
      const violations: string[] = [];
      const inconclusive: string[] = [];
      for (const r of inA) {
        const q = triggerOf(r, fromClient);
        if (q === null) {
          unattributed++;
          continue;
        }
        const lower = answeredBy(polls, q.tUs) + 1;
        const upper = askedAfter(polls, r.tUs);
        const seenBefore = answeredBy(polls, r.tUs);
        const what = `${r.info.join(" ")} at ${r.tUs}: covering epoch >= ${lower}, ` +
          `standby at ${upper} right after, ${seenBefore} right before`;
        if (upper !== null && upper < lower) violations.push(what);
        if (upper !== lower) continue;
        exact++;
        if (seenBefore >= lower) {
          proven++;
          const first = polls.find((p) => p.epoch >= lower)!;
          margins.push((r.tUs - first.recvUs) / 1000);
        } else {
          inconclusive.push(what);
        }
      }
      margins.sort((a, b) => a - b);
      const replies = inA.filter((f) => f.info[0] === "icmp" && f.info[1] === "0").length;
      console.log(
        `phase A: ${inA.length} guest frames (${replies} echo replies), ${polls.length} status ` +
          `polls in all (${
            (polls.reduce((s, p) => s + p.recvUs - p.sendUs, 0) / polls.length / 1000).toFixed(2)
          } ms each); covering epoch known exactly for ${exact}, committed on the standby ` +
          `before the frame was on the wire for ${proven} (margin min ${
            margins[0]?.toFixed(1)
          } ms, median ${margins[margins.length >> 1]?.toFixed(1)} ms); ${violations.length} ` +
          `violations, ${inconclusive.length} inconclusive, ${unattributed} without a trigger`,
      );
      ok(violations.length === 0, `frames released before their commit:\n${violations.join("\n")}`);
      ok(replies >= 30, `only ${replies} echo replies captured`);
      ok(exact >= 0.4 * (inA.length - unattributed) && proven >= 12, `epoch exact for ${exact}`);
      ok(
        proven >= 0.9 * exact,
        `proven for only ${proven} of ${exact}:\n${inconclusive.join("\n")}`,
      );

      // Phase B: nothing leaves while the standby cannot commit.
      const quietFrom = phaseB.stop + (ACK_DELAY_MS + 30) * 1000;
      const leaked = fromGuest.filter((f) => f.tUs > quietFrom && f.tUs < phaseB.cont);
      const requests = fromClient.filter((f) => f.tUs > quietFrom && f.tUs < phaseB.cont);
      const firstAfter = fromGuest.find((f) => f.tUs >= phaseB.cont);
      const epochAtStop = answeredBy(polls, phaseB.stop + 20_000);
      const commitAfter = polls.find((p) => p.epoch > epochAtStop && p.sendUs >= phaseB.cont);
      const pingsB = parseProbeLines(phaseB.pings);
      console.log(
        `phase B: standby stopped ${STOP_MS} ms; ${requests.length} client frames reached the ` +
          `guest's TAP and ${leaked.length} guest frames left between ${
            ((quietFrom - phaseB.stop) / 1000).toFixed(0)
          } ms after the stop and the SIGCONT; first guest frame ${
            firstAfter ? ((firstAfter.tUs - phaseB.cont) / 1000).toFixed(1) : "-"
          } ms after the SIGCONT, new commit reported ${
            commitAfter ? ((commitAfter.recvUs - phaseB.cont) / 1000).toFixed(1) : "-"
          } ms after it; ${phaseB.pings.match(/ok ping.*/)?.[0]}`,
      );
      ok(requests.length >= 3, `only ${requests.length} requests while the standby was stopped`);
      ok(
        leaked.length === 0,
        `guest frames left while no commit was possible:\n${
          leaked.map((f) => `${f.tUs - phaseB.stop} µs after the stop: ${f.info.join(" ")}`)
            .join("\n")
        }`,
      );
      ok(firstAfter && commitAfter, "no guest frame or no commit after the SIGCONT");
      ok(
        commitAfter.recvUs <= firstAfter.tUs,
        `first guest frame after the SIGCONT at +${(firstAfter.tUs - phaseB.cont) / 1000} ms ` +
          `came before the standby reported its commit (+${
            (commitAfter.recvUs - phaseB.cont) / 1000
          } ms)`,
      );
      ok(pingsB.length > 0 && pingsB.every((l) => l.recvUs >= 0), "a ping was lost in phase B");
    });
  },
});
