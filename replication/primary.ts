/**
 * The primary's replication engine around a running Machine: accepts a
 * standby, synchronizes it (iterative pre-copy, then stop-and-copy), then
 * checkpoints as the sync mode says and releases held output only when the
 * standby has committed the checkpoint that covers it. Losing the standby
 * makes it run on unprotected (it says so) until a standby comes back.
 *
 * The decisions live in {@link CheckpointPolicy} (pure); this file is the
 * I/O around it.
 * @module
 */

import type { Machine } from "../machine/machine.ts";
import type { Link, Listener, Transport } from "../transport/types.ts";
import type { OutputGate } from "../devices/output_gate.ts";
import { HOLD_LIMITS } from "../devices/output_gate.ts";
import { dirtyPages } from "../hypervisor/kvm/memory.ts";
import { PAGE_SIZE } from "../machine/layout.ts";
import { CheckpointPolicy, type PolicyOptions } from "./policy.ts";
import { Signal } from "./signal.ts";
import { HeartbeatLink } from "./heartbeat.ts";
import { LeaseHolder, LeaseLostError } from "./lease.ts";
import {
  decideHandshake,
  type DecodedMessage,
  decodeMessage,
  type DiskMode,
  encodeCheckpoint,
  encodeMessage,
  gatherPages,
  type Hello,
} from "./protocol.ts";
import { crc32 } from "node:zlib";
import type { Status } from "./status.ts";
import { Metrics } from "./metrics.ts";
import type { TapBus } from "../taps/bus.ts";
import type { TapEvent } from "../taps/types.ts";
import type { DeviceEvent } from "../devices/device.ts";
import { sendDisk } from "./disk_sync.ts";
import { failpoint } from "./failpoints.ts";
import { encodeDiskDelta } from "../devices/disk_delta.ts";

export interface PrimaryOptions {
  name: string;
  /** Replication listen address ("host:port"). */
  listen: string;
  /** Heartbeat listen addresses (at least one). */
  heartbeatListen: string[];
  key: Uint8Array;
  transport: Transport;
  policy: PolicyOptions;
  diskMode: DiskMode;
  /** Shared-disk fencing. */
  lease?: { path: string; leaseMs: number; holder?: LeaseHolder };
  generation: bigint;
  heartbeatMs: number;
  /** Standby silent this long (all paths): it is lost. */
  timeoutMs: number;
  /** Compare memory hashes of both sides every N epochs (0: off). */
  verifyEvery: number;
  taps?: TapBus;
  log: (line: string) => void;
  /** Progress lines during initial sync. */
  progress?: (line: string, done: boolean) => void;
}

type PrimaryState = "unprotected" | "syncing" | "protected" | "link-down" | "stopped";

/** The primary stopped because it met a higher generation or lost its lease. */
export class FencedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FencedError";
  }
}

const CONVERGED_PAGES = 1024;
/** Checkpoints up to this size travel as one transport message. */
const BATCH_BYTES = 2 * 1024 * 1024;
/** Force a checkpoint when the replicated disk's delta passes this. */
const DELTA_SOFT_LIMIT = 16 * 1024 * 1024;
const MAX_ROUNDS = 30;

export class Primary implements OutputGate {
  state: PrimaryState = "unprotected";
  #policy: CheckpointPolicy;
  #wake = new Signal();
  #link: Link | null = null;
  #listener: Listener | null = null;
  #hbListeners: Listener[] = [];
  #heartbeats = new Set<HeartbeatLink>();
  #standbyHeard = 0;
  #lease: LeaseHolder | null = null;
  #leaseTimer: ReturnType<typeof setInterval> | undefined;
  #buffers: Uint8Array[][] = [[], []];
  #flip = 0;
  #stopping = false;
  #fenced: FencedError | null = null;
  #lastPauseMs: number | null = null;
  /** Per-stage timings (ms): pause, harvest, copy, state, send, ack, release, output. */
  readonly metrics = new Metrics();
  /** When the oldest output still waiting for a checkpoint was held. */
  #outputSince: number | null = null;
  #sentAt = 0;
  #coveredSince: number | null = null;
  #lastCommitAt: number | null = null;
  #checkpoints = 0;
  #sync: Status["syncProgress"] = null;
  #verify = { checked: 0, mismatches: 0 };
  generation: bigint;

  constructor(readonly machine: Machine, readonly options: PrimaryOptions) {
    this.#policy = new CheckpointPolicy(options.policy, performance.now());
    this.generation = options.generation;
  }

  // ---- OutputGate ----

  get holding(): boolean {
    return this.state === "protected" || this.state === "link-down" ||
      this.options.diskMode === "shared";
  }

  get epoch(): number {
    return this.#policy.nextEpoch;
  }

  outputHeld(): void {
    this.#outputSince ??= performance.now();
    this.#policy.outputHeld();
    this.#wake.notify();
  }

  mayHold(_device: string, heldBytes: number, heldCount: number): boolean {
    return heldBytes < HOLD_LIMITS.bytes && heldCount < HOLD_LIMITS.count;
  }

  // ---- life cycle ----

  /** Runs until the guest stops or the primary is fenced. */
  async run(): Promise<void> {
    const m = this.machine;
    m.console.setGate(this);
    m.block?.setGate(this);
    m.net?.setGate(this);
    m.console.onEvent = (e) => this.#observe(e);
    if (m.block) m.block.onEvent = (e) => this.#observe(e);
    if (m.net) m.net.onEvent = (e) => this.#observe(e);
    if (this.options.diskMode === "replicated") m.block?.setDiskMode("replicated");
    if (this.options.diskMode === "shared") m.block?.setDiskMode("shared");
    if (this.options.lease) this.#startLease();
    const opts = { key: this.options.key, log: this.options.log };
    this.#listener = this.options.transport.listen(this.options.listen, {
      ...opts,
      channel: "replication",
    });
    for (const a of this.options.heartbeatListen) {
      this.#hbListeners.push(
        this.options.transport.listen(a, { ...opts, channel: "heartbeat" }),
      );
    }
    this.options.log(
      `kemari: primary ${this.options.name} (generation ${this.generation}) waits for a standby on ${this.#listener.address}`,
    );
    const accepting = this.#acceptStandbys();
    const hb = this.#hbListeners.map((l) => this.#acceptHeartbeats(l));
    const loop = this.#engineLoop();
    let guestDone = false;
    const guest = m.wait().then((r) => {
      guestDone = true;
      return r;
    });
    await Promise.race([guest, loop]);
    if (guestDone && !this.#fenced) await this.#drain(await guest);
    this.#stopping = true;
    this.#wake.notify();
    await loop.catch(() => {});
    this.#closeNetwork();
    await Promise.allSettled([accepting, ...hb]);
    if (this.#fenced) throw this.#fenced;
  }

  /**
   * The guest stopped: a last checkpoint so its last output is committed and
   * released, then BYE so the standby stops too instead of taking over.
   */
  async #drain(report: { kind: string }): Promise<void> {
    // After a switchover the held output is the new primary's to send.
    if (this.state === "stopped") return;
    const deadline = performance.now() + 4 * this.options.timeoutMs;
    const held = () => this.#heldCount();
    while (held() > 0 && performance.now() < deadline) {
      if (this.state === "protected") this.#policy.force();
      this.#wake.notify();
      await new Promise((r) => setTimeout(r, 2));
    }
    const link = this.#link;
    const reason = `the guest stopped (${describe(report)})`;
    if (link) await link.send([encodeMessage({ type: "BYE", reason })]).catch(() => {});
  }

  /**
   * Planned role swap: freeze the guest, commit a final checkpoint (held
   * output stays held: the new primary re-issues it), then offer the standby
   * the VM. This side stops without releasing anything more.
   */
  async switchover(): Promise<{ generation: string; finalEpoch: number }> {
    if (this.state !== "protected" || !this.#link) {
      throw new Error(`no switchover while ${this.state}: a protected standby is needed`);
    }
    this.#switching = true;
    const link = this.#link;
    await this.machine.pause();
    this.#policy.force();
    this.#wake.notify();
    const deadline = performance.now() + 4 * this.options.timeoutMs;
    const epoch = this.#policy.nextEpoch;
    while (this.#policy.committed < epoch) {
      if (performance.now() > deadline || this.#link !== link) {
        this.#switching = false;
        this.machine.resume();
        throw new Error("the standby did not commit the final checkpoint; switchover cancelled");
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    const generation = this.generation + 1n;
    await link.send([encodeMessage({
      type: "SWITCHOVER",
      phase: "offer",
      generation,
      finalEpoch: BigInt(epoch),
    })]);
    this.options.log(
      `kemari: switched over: the guest now runs on the standby (generation ${generation}) from checkpoint ${epoch}; this host is free`,
    );
    this.generation = generation;
    this.state = "stopped";
    this.#stopping = true;
    this.#wake.notify();
    setTimeout(() => this.machine.halt().catch(() => {}), 50);
    return { generation: generation.toString(), finalEpoch: epoch };
  }
  #switching = false;

  /** Ends protection for good: outputs flow at once, the standby is told. */
  async unprotect(): Promise<void> {
    this.options.log("kemari: protection ended by request (unprotect)");
    this.#stopping = true;
    const link = this.#link;
    if (link) {
      await link.send([encodeMessage({ type: "BYE", reason: "unprotect" })]).catch(() => {});
    }
    this.#dropStandby("unprotect");
    this.#closeNetwork();
  }

  #closeNetwork(): void {
    clearInterval(this.#leaseTimer);
    this.#listener?.close();
    for (const l of this.#hbListeners) l.close();
    for (const h of this.#heartbeats) h.stop();
    this.#link?.close();
  }

  #startLease(): void {
    const { path, leaseMs, holder } = this.options.lease!;
    this.#lease = holder ??
      LeaseHolder.create(path, `${this.options.name}-${Deno.pid}`, Number(this.generation), {
        leaseMs,
      });
    this.#leaseTimer = setInterval(() => {
      try {
        this.#lease!.renew();
      } catch (e) {
        this.#fence(e instanceof Error ? e.message : String(e));
      }
    }, Math.max(10, leaseMs / 5));
  }

  #fence(why: string): void {
    if (this.#fenced) return;
    this.#fenced = new FencedError(`fenced: ${why}; stopping before releasing anything more`);
    this.options.log(`kemari: ${this.#fenced.message}`);
    this.#stopping = true;
    this.machine.halt().catch(() => {});
    this.#wake.notify();
  }

  // ---- standby connections ----

  async #acceptStandbys(): Promise<void> {
    try {
      for await (const link of this.#listener!) {
        if (this.#stopping) {
          link.close();
          break;
        }
        if (this.#link) {
          await link.send([
            encodeMessage({ type: "REFUSE", reason: "a standby is already attached" }),
          ])
            .catch(() => {});
          link.close();
          continue;
        }
        this.#session(link).catch((e) => {
          this.options.log(`kemari: standby ${link.peer}: ${e instanceof Error ? e.message : e}`);
          this.#dropStandby(e instanceof Error ? e.message : String(e));
        });
      }
    } catch (e) {
      if (!this.#stopping) this.options.log(`kemari: listener failed: ${e}`);
    }
  }

  async #acceptHeartbeats(listener: Listener): Promise<void> {
    try {
      for await (const link of listener) {
        const hello = await this.#handshake(link, "heartbeat");
        if (!hello) continue;
        const hb = new HeartbeatLink(link.peer, link, this.options.heartbeatMs, {
          generation: () => this.generation,
          committedEpoch: () => BigInt(this.#policy.committed),
          heard: (_path, generation) => this.#heard(generation),
          log: this.options.log,
        });
        this.#heartbeats.add(hb);
        hb.done.then(() => this.#heartbeats.delete(hb));
      }
    } catch (e) {
      if (!this.#stopping) this.options.log(`kemari: heartbeat listener failed: ${e}`);
    }
  }

  #heard(generation: bigint): void {
    this.#standbyHeard = performance.now();
    if (generation > this.generation) this.#fence(`met generation ${generation}`);
  }

  hello(channel: "replication" | "heartbeat"): Hello {
    const m = this.machine;
    return {
      protocol: 1,
      role: "primary",
      channel,
      vm: { name: this.options.name, bootId: m.bootId.toString() },
      memoryBytes: m.backend.memory.size,
      cpuFeatures: m.backend.cpuFeatures,
      generation: this.generation,
      disk: {
        mode: this.options.diskMode,
        sectors: this.options.diskMode === "none" ? 0n : m.disk?.sectors ?? 0n,
      },
      committed: null,
    };
  }

  /** HELLO in, WELCOME or REFUSE out. Returns the peer's hello if accepted. */
  async #handshake(link: Link, channel: "replication" | "heartbeat"): Promise<Hello | null> {
    const bytes = await link.receive();
    if (bytes === null) return null;
    const m = decodeMessage(bytes);
    if (m.type !== "HELLO") throw new Error(`expected HELLO, got ${m.type}`);
    const local = this.hello(channel);
    const d = decideHandshake(local, m.hello);
    if ("accept" in d) {
      await link.send([encodeMessage({ type: "WELCOME", hello: local })]);
      return m.hello;
    }
    const reason = "refuse" in d ? d.refuse : d.stop;
    await link.send([encodeMessage({ type: "REFUSE", reason })]).catch(() => {});
    link.close();
    this.options.log(`kemari: refused standby ${link.peer}: ${reason}`);
    if ("stop" in d) this.#fence(reason);
    return null;
  }

  async #session(link: Link): Promise<void> {
    const hello = await this.#handshake(link, "replication");
    if (!hello) return;
    this.#standbyHeard = performance.now();
    const theirs = hello.committed === null ? -1 : Number(hello.committed.epoch);
    const sameVm = hello.vm.bootId === this.machine.bootId.toString();
    if (this.state === "link-down" && sameVm && this.#policy.acknowledgedLate(theirs)) {
      // It committed the checkpoint whose ACK the broken link lost.
      this.#unacked = null;
      this.#lastCommitAt = performance.now();
    }
    const resume = this.state === "link-down" && sameVm && theirs === this.#policy.committed;
    if (!resume && this.state === "link-down") this.#dropStandby("a different standby came", true);
    this.#link = link;
    const receiving = this.#receiveLoop(link);
    const beat = setInterval(() => this.#beat(link), this.options.heartbeatMs);
    try {
      if (resume) {
        // The same standby is back before the timeout: checkpoints go on
        // from its committed epoch; no output was released meanwhile.
        this.state = "protected";
        this.#linkDownSince = null;
        this.#policy.rewind();
        this.options.log(
          `kemari: standby ${link.peer} is back at epoch ${this.#policy.committed}; checkpoints resume`,
        );
        this.#wake.notify();
      } else {
        // Epochs start at 1 for every new standby.
        this.#policy = new CheckpointPolicy(this.options.policy, performance.now());
        this.#unacked = null;
        this.options.log(`kemari: standby ${link.peer} attached; initial synchronization`);
        await this.#initialSync(link);
      }
      await receiving;
    } finally {
      clearInterval(beat);
    }
  }

  /** A heartbeat on the replication link too (it is one more path). */
  #beat(link: Link): void {
    link.send([encodeMessage({
      type: "HEARTBEAT",
      seq: ++this.#beatSeq,
      generation: this.generation,
      timeNs: BigInt(Math.floor(performance.now() * 1e6)),
      committedEpoch: BigInt(this.#policy.committed),
    })]).catch(() => {});
  }
  #beatSeq = 0n;

  /** ACKs (and BYE) from the standby. */
  async #receiveLoop(link: Link): Promise<void> {
    try {
      for (;;) {
        const bytes = await link.receive();
        if (bytes === null) throw new Error("the standby closed the link");
        const m: DecodedMessage = decodeMessage(bytes);
        this.#standbyHeard = performance.now();
        if (m.type === "ACK") {
          if (this.#policy.acknowledged(Number(m.epoch))) {
            this.metrics.add("ack", performance.now() - this.#sentAt);
            this.#unacked = null;
            this.#lastCommitAt = performance.now();
            this.#wake.notify();
          } else {
            throw new Error(`ACK for epoch ${m.epoch}, none in flight`);
          }
        } else if (m.type === "HEARTBEAT") {
          this.#heard(m.generation);
        } else if (m.type === "BYE") {
          throw new Error(`the standby left: ${m.reason}`);
        } else {
          throw new Error(`unexpected ${m.type} from the standby`);
        }
      }
    } catch (e) {
      if (this.#link === link) this.#dropStandby(e instanceof Error ? e.message : String(e));
    }
  }

  /**
   * The replication link broke. A protected primary keeps holding output for
   * up to the timeout, waiting for the same standby to come back (`link-down`);
   * otherwise, or with `lost`, the standby is gone: run unprotected.
   */
  #dropStandby(why: string, lost = false): void {
    const link = this.#link;
    this.#link = null;
    link?.close();
    if (this.state === "stopped") return;
    this.#policy.linkLost();
    if (this.state === "protected" && !lost && !this.#stopping) {
      this.state = "link-down";
      this.#linkDownSince = performance.now();
      this.options.log(
        `kemari: replication link down (${why}); holding output for up to ${this.options.timeoutMs} ms`,
      );
    } else if (this.state !== "unprotected") {
      this.state = "unprotected";
      this.#sync = null;
      this.#unacked = null;
      this.#linkDownSince = null;
      if (!this.#stopping) {
        this.options.log(
          `kemari: standby lost (${why}); running UNPROTECTED until a standby returns`,
        );
      }
    }
    this.#wake.notify();
  }
  #linkDownSince: number | null = null;
  /** Pages of the checkpoint in flight: re-sent if the link breaks before its ACK. */
  #unacked: Uint8Array | null = null;

  // ---- initial synchronization ----

  async #initialSync(link: Link): Promise<void> {
    const m = this.machine;
    this.state = "syncing";
    const pages = m.backend.memory.pages;
    if (this.options.diskMode === "replicated" && m.block && m.disk) {
      // Writes from now on travel in checkpoint 1's delta, after the image.
      m.block.takeDiskDelta();
      await sendDisk(
        link,
        m.disk,
        (done, total) => this.options.progress?.(`initial sync: disk ${bar(done, total)}`, false),
      );
    }
    // Round 0: every page ever written; then what was dirtied meanwhile.
    let bitmap = union(m.touched, m.harvest());
    let throttle = false, slice = 16;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const list = dirtyPages(bitmap, pages);
      this.#sync = { round, pagesSent: 0, pagesLeft: list.length };
      if (round > 0 && list.length <= CONVERGED_PAGES) break;
      // Still more than CONVERGED_PAGES after three rounds: the guest dirties
      // memory faster than the link carries it.
      if (round >= 3 && !throttle) {
        throttle = true;
        this.options.log(
          `kemari: the guest dirties memory faster than the link; throttling it to converge`,
        );
      }
      // Throttled, the guest is paused while a round is sent and then runs a
      // shrinking slice (8, 4, 2, 1 ms, then none), so the dirty set shrinks
      // whatever the guest does.
      if (throttle) await m.pause();
      try {
        await this.#sendRound(link, list, round);
      } finally {
        if (throttle) {
          slice >>= 1;
          m.resume();
          if (slice > 0) await new Promise((r) => setTimeout(r, slice));
        }
      }
      if (this.#link !== link) return;
      if (throttle && slice === 0) {
        // No slice left: the rest goes in the stop-and-copy.
        bitmap = m.harvest().slice();
        break;
      }
      bitmap = m.harvest().slice();
    }
    // Stop-and-copy: checkpoint 1 carries what is left plus all device state.
    this.#pendingBitmap = bitmap;
    this.#policy.force();
    this.#wake.notify();
    this.options.progress?.("initial sync: final stop-and-copy", true);
  }

  async #sendRound(link: Link, list: number[], round: number): Promise<void> {
    const m = this.machine;
    const sync = this.#sync!;
    for (let i = 0; i < list.length; i += 4096) {
      const part = list.slice(i, i + 4096);
      const frames = gatherPages(m.backend.memory.bytes, part, this.#buffers[0]);
      for (const f of frames) await link.send(f);
      failpoint("precopy");
      sync.pagesSent += part.length;
      sync.pagesLeft -= part.length;
      this.options.progress?.(
        `initial sync: round ${round} ${bar(sync.pagesSent, list.length)} (${
          ((list.length * PAGE_SIZE) / 2 ** 20).toFixed(1)
        } MiB)`,
        false,
      );
    }
  }

  /** Pages dirtied before checkpoint 1 that checkpoint 1 must carry. */
  #pendingBitmap: Uint8Array | null = null;

  // ---- checkpoints ----

  async #engineLoop(): Promise<void> {
    while (!this.#stopping) {
      this.#checkStandbySilence();
      if (this.state === "unprotected" || (this.state === "syncing" && !this.#pendingBitmap)) {
        // No standby can take over yet: outputs leave at once.
        await this.#releaseAll();
        // A future standby gets the whole disk: no delta to keep meanwhile.
        if (this.state === "unprotected" && this.machine.block?.diskMode === "replicated") {
          this.machine.block.takeDiskDelta();
        }
        await this.#wake.wait(this.options.heartbeatMs);
        continue;
      }
      if (
        (this.machine.block?.diskDeltaBytes ?? 0) > DELTA_SOFT_LIMIT && this.state === "protected"
      ) {
        this.#policy.force();
      }
      const action = this.#policy.next(performance.now());
      if (action.kind === "release" && this.#switching) {
        // Held output of the final checkpoint is the new primary's to send.
        this.#policy.released(action.epoch);
      } else if (action.kind === "release") {
        await this.#release(action.epoch);
      } else if (action.kind === "checkpoint" && this.#link && this.state !== "link-down") {
        await this.#checkpoint(this.#link, action.epoch);
      } else {
        const until = action.kind === "wait" ? action.untilMs : null;
        const wait = until === null
          ? this.options.heartbeatMs
          : Math.min(this.options.heartbeatMs, until - performance.now());
        await this.#wake.wait(wait);
      }
    }
  }

  #checkStandbySilence(): void {
    const now = performance.now();
    if (this.state === "link-down" && now - this.#linkDownSince! > this.options.timeoutMs) {
      this.#dropStandby(`not back within ${this.options.timeoutMs} ms`, true);
    } else if (this.#link && now - this.#standbyHeard > this.options.timeoutMs) {
      this.#dropStandby(`silent for ${this.options.timeoutMs} ms`, true);
    }
  }

  async #checkpoint(link: Link, epoch: number): Promise<void> {
    const m = this.machine;
    const t0 = performance.now();
    await m.pause();
    const tPaused = performance.now();
    this.metrics.add("stop", tPaused - t0);
    let pageFrames, state, delta;
    try {
      const bitmap = union(
        m.harvest(),
        this.#unacked ?? this.#pendingBitmap ?? m.touched.subarray(0, 0),
      );
      this.#pendingBitmap = null;
      this.#unacked = bitmap;
      const list = dirtyPages(bitmap, m.backend.memory.pages);
      const tHarvest = performance.now();
      this.metrics.add("harvest", tHarvest - tPaused);
      this.metrics.add("pages", list.length);
      const buffers = this.#buffers[this.#flip ^= 1];
      pageFrames = gatherPages(m.backend.memory.bytes, list, buffers, {
        epoch: BigInt(epoch),
      });
      const tCopy = performance.now();
      this.metrics.add("copy", tCopy - tHarvest);
      state = m.saveState() as unknown as Record<string, unknown>;
      this.metrics.add("state", performance.now() - tCopy);
      if (this.options.verifyEvery > 0 && epoch % this.options.verifyEvery === 0) {
        state.verify = { crc: crc32(m.backend.memory.bytes) };
      }
      delta = this.options.diskMode === "replicated" && m.block ? m.block.takeDiskDelta() : null;
      if (this.state === "syncing") this.state = "protected";
      this.#policy.taken(epoch, performance.now());
      // Outputs held so far are covered by this checkpoint.
      this.#coveredSince = this.#outputSince;
      this.#outputSince = null;
    } finally {
      m.resume();
    }
    // The guest runs again: pages and state are copies, encoding can wait.
    this.#lastPauseMs = performance.now() - t0;
    this.metrics.add("pause", this.#lastPauseMs);
    const tSend = performance.now();
    const frames = encodeCheckpoint(
      BigInt(epoch),
      pageFrames,
      state,
      delta ? encodeDiskDelta(delta) : undefined,
    );
    this.#checkpoints++;
    try {
      const total = frames.reduce((n, f) => n + f.reduce((m, p) => m + p.length, 0), 0);
      if (total <= BATCH_BYTES) {
        // A small checkpoint goes as one transport message: one MAC, one write.
        await link.send(frames.flat());
        failpoint("checkpoint-sent-partly");
      } else {
        for (let i = 0; i < frames.length; i++) {
          await link.send(frames[i]);
          if (i === frames.length >> 1) failpoint("checkpoint-sent-partly");
        }
      }
      failpoint("checkpoint-sent");
      this.#sentAt = performance.now();
      this.metrics.add("send", this.#sentAt - tSend);
    } catch (e) {
      this.#dropStandby(e instanceof Error ? e.message : String(e));
    }
  }

  async #release(epoch: number): Promise<void> {
    if (this.#lease && !this.#lease.valid()) {
      this.#fence("the shared-disk lease could not be renewed in time");
      return;
    }
    const m = this.machine;
    const tRelease = performance.now();
    failpoint("after-ack");
    await this.#emitTaps(epoch, () => {
      m.console.release(epoch);
      failpoint("mid-release");
      m.block?.release(epoch);
      m.net?.release(epoch);
    });
    failpoint("after-release");
    this.#policy.released(epoch);
    const now = performance.now();
    this.metrics.add("release", now - tRelease);
    if (this.#coveredSince !== null) {
      this.metrics.add("output", now - this.#coveredSince);
      this.#coveredSince = null;
    }
    // Requests left in the rings while output was held go now.
    m.service();
  }

  /** Unprotected: outputs leave at once (shared-disk mode still checks the lease). */
  async #releaseAll(): Promise<void> {
    const m = this.machine;
    if (this.#heldCount() === 0) return;
    if (this.#lease && !this.#lease.valid()) {
      this.#fence("the shared-disk lease could not be renewed in time");
      return;
    }
    await this.#emitTaps(Infinity, () => {
      m.console.releaseAll();
      m.block?.releaseAll();
      m.net?.releaseAll();
    });
    m.service();
  }

  /**
   * Shows the outputs about to be released to the taps, waits for the holds
   * they ask for (bounded by the bus timeout), then releases. Events the
   * devices report while releasing are not shown twice.
   */
  async #emitTaps(epoch: number, release: () => void): Promise<void> {
    const taps = this.options.taps;
    const m = this.machine;
    if (taps) {
      const holds: Promise<void>[] = [];
      const timeMs = performance.now();
      const show = (e: Omit<TapEvent, "epoch" | "timeMs">) => {
        const h = taps.emit({ ...e, epoch, timeMs });
        if (h) holds.push(h);
      };
      if (taps.wants("console", "out")) {
        for (const data of m.console.releasable(epoch)) {
          show({ device: "console", direction: "out", kind: "bytes", bytes: data.length, data });
        }
      }
      if (m.block && taps.wants("disk", "out")) {
        for (const w of m.block.releasable(epoch)) {
          show({
            device: "disk",
            direction: "out",
            kind: w.kind,
            bytes: w.data.length,
            sector: w.sector,
            data: w.data,
          });
        }
      }
      if (m.net && taps.wants("net", "out")) {
        for (const data of m.net.releasable(epoch)) {
          show({ device: "net", direction: "out", kind: "frame", bytes: data.length, data });
        }
      }
      if (holds.length) await Promise.all(holds);
    }
    this.#releasing = true;
    try {
      release();
    } finally {
      this.#releasing = false;
    }
  }
  #releasing = false;

  /** Device events outside a release (input; output while unprotected): shown, not held. */
  #observe(e: DeviceEvent): void {
    const taps = this.options.taps;
    if (!taps || this.#releasing || !taps.wants(e.device, e.direction)) return;
    taps.emit({ ...e, epoch: this.#policy.nextEpoch, timeMs: performance.now() });
  }

  #heldCount(): number {
    const m = this.machine;
    return m.console.held.count + (m.block?.held.count ?? 0) + (m.net?.held.count ?? 0);
  }

  status(): Status {
    const m = this.machine;
    const now = performance.now();
    return {
      role: "primary",
      name: this.options.name,
      state: this.state,
      mode: this.options.policy.mode,
      diskMode: this.options.diskMode,
      generation: Number(this.generation),
      epoch: this.#policy.committed,
      lastPauseMs: this.#lastPauseMs,
      held: {
        bytes: m.console.held.bytes + (m.block?.held.bytes ?? 0) + (m.net?.held.bytes ?? 0),
        count: this.#heldCount(),
      },
      standbyLagMs: this.#lastCommitAt === null ? null : now - this.#lastCommitAt,
      link: {
        state: this.#link ? this.state : "no standby",
        peer: this.#link?.peer ?? null,
        bytesSent: this.#link?.stats.bytesSent ?? 0,
        bytesReceived: this.#link?.stats.bytesReceived ?? 0,
      },
      heartbeat: this.#link ? { standby: now - this.#standbyHeard } : {},
      checkpoints: this.#checkpoints,
      syncProgress: this.state === "syncing" ? this.#sync : null,
      verify: this.options.verifyEvery > 0 ? { ...this.#verify } : null,
      guest: { vcpu: m.backend.vcpuState(), console: m.console.lastLine },
      metrics: this.metrics.summary(),
    };
  }
}

function describe(r: { kind: string; code?: number }): string {
  return r.kind === "exit" ? `exit code ${r.code}` : r.kind;
}

/** a ∪ b as a new bitmap (b may be shorter, e.g. empty). */
function union(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = a.slice();
  for (let i = 0; i < b.length; i++) out[i] |= b[i];
  return out;
}

function bar(done: number, total: number): string {
  const width = 24;
  const f = total === 0 ? 1 : Math.min(1, done / total);
  const n = Math.round(f * width);
  return `[${"#".repeat(n)}${"-".repeat(width - n)}] ${(f * 100).toFixed(0)}%`;
}

export { LeaseLostError };
