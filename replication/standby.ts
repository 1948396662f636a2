/**
 * The standby: keeps a ready VM whose memory follows the primary's
 * checkpoints, applies a checkpoint only when it is complete and verified,
 * watches the primary on every heartbeat path, and takes over — restore from
 * the last committed checkpoint, re-issue held outputs, resume — when all of
 * them fall silent. After a takeover it is a primary itself.
 * @module
 */

import { Machine, type NetConfig } from "../machine/machine.ts";
import type { SavedMachine } from "../machine/saved_machine.ts";
import type { ConsoleSink } from "../devices/console_sink.ts";
import { AuthError, type Link, type Transport } from "../transport/types.ts";
import { FailureDetector } from "./detector.ts";
import { HeartbeatLink } from "./heartbeat.ts";
import { LeaseClaimant, type LeaseHolder } from "./lease.ts";
import { apply, savedMachineCheck, Stager } from "./staging.ts";
import {
  decideHandshake,
  decodeMessage,
  type DiskMode,
  encodeMessage,
  HEADER_BYTES,
  type Hello,
  ProtocolError,
  readHeader,
} from "./protocol.ts";
import { crc32 } from "node:zlib";
import type { Status } from "./status.ts";
import { Metrics } from "./metrics.ts";
import { DiskReceiver } from "./disk_sync.ts";
import { failpoint } from "./failpoints.ts";
import { decodeDiskDelta } from "../devices/disk_delta.ts";

export interface StandbyOptions {
  name: string;
  /** The primary's replication address. */
  primary: string;
  /** The primary's heartbeat addresses (each one a path). */
  heartbeatPaths: string[];
  key: Uint8Array;
  transport: Transport;
  ramBytes: number;
  diskMode: DiskMode;
  disk?: string;
  console: ConsoleSink;
  /** The network device (a TAP in this host's namespace); inactive until takeover. */
  net?: NetConfig;
  lease?: { path: string; leaseMs: number };
  heartbeatMs: number;
  timeoutMs: number;
  log: (line: string) => void;
}

type StandbyState = "connecting" | "syncing" | "ready" | "taking-over" | "active" | "stopped";

/** The result of a standby's life: it took over (and runs the guest), or it stopped. */
export type StandbyOutcome =
  | {
    kind: "took-over";
    machine: Machine;
    generation: bigint;
    epoch: number;
    /** The shared-disk lease it won (shared-disk mode). */
    lease: LeaseHolder | null;
  }
  | { kind: "stopped"; reason: string; failed: boolean };

const MAX_STAGING = 1024 * 1024 * 1024;

export class Standby {
  state: StandbyState = "connecting";
  readonly machine: Machine;
  #generation = 0n;
  #committed: { epoch: number; state: SavedMachine } | null = null;
  #detector: FailureDetector | null = null;
  #link: Link | null = null;
  #heartbeats: HeartbeatLink[] = [];
  #claimant: LeaseClaimant | null = null;
  #stopped = false;
  #resolve!: (o: StandbyOutcome) => void;
  readonly outcome: Promise<StandbyOutcome>;
  #applyMs: number | null = null;
  #verify = { checked: 0, mismatches: 0 };
  #diskReceiver: DiskReceiver | null = null;
  #receivedAt = 0;
  /** Timings (ms): commit = last message of a checkpoint received → ACK sent. */
  readonly metrics = new Metrics();

  constructor(readonly options: StandbyOptions) {
    this.machine = Machine.prepare({
      ramBytes: options.ramBytes,
      disk: options.disk,
      console: options.console,
      net: options.net,
      standby: true,
    });
    this.outcome = new Promise((r) => (this.#resolve = r));
  }

  get generation(): bigint {
    return this.#generation;
  }

  hello(channel: "replication" | "heartbeat"): Hello {
    const m = this.machine;
    return {
      protocol: 1,
      role: "standby",
      channel,
      vm: { name: this.options.name, bootId: this.#committed ? m.bootId.toString() : "" },
      memoryBytes: m.backend.memory.size,
      cpuFeatures: m.backend.cpuFeatures,
      generation: this.#generation,
      disk: {
        mode: this.options.diskMode,
        sectors: this.options.diskMode === "none" ? 0n : m.disk?.sectors ?? 0n,
      },
      committed: this.#committed ? { epoch: BigInt(this.#committed.epoch) } : null,
    };
  }

  /** Connects (retrying) and follows the primary until a takeover or stop. */
  async run(): Promise<StandbyOutcome> {
    if (this.options.lease) {
      this.#claimant = new LeaseClaimant(
        this.options.lease.path,
        `${this.options.name}-standby-${Deno.pid}`,
        {
          leaseMs: this.options.lease.leaseMs,
        },
      );
    }
    this.#stager = this.#newStager();
    this.#follow().catch((e) => this.#stop(e instanceof Error ? e.message : String(e), true));
    return await this.outcome;
  }

  stop(reason = "stopped by request"): void {
    this.#stop(reason);
  }

  #stop(reason: string, failed = false): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.state = "stopped";
    this.#closeLinks();
    this.machine.shutdown().catch(() => {});
    this.#resolve({ kind: "stopped", reason, failed });
  }

  #closeLinks(): void {
    for (const h of this.#heartbeats) h.stop();
    this.#heartbeats = [];
    this.#link?.close();
    this.#link = null;
  }

  async #connect(channel: "replication" | "heartbeat", address: string): Promise<Link> {
    const link = await this.options.transport.connect(address, {
      key: this.options.key,
      channel,
      log: this.options.log,
    });
    await link.send([encodeMessage({ type: "HELLO", hello: this.hello(channel) })]);
    const bytes = await link.receive();
    if (bytes === null) throw new Error(`the primary at ${address} closed the link`);
    const m = decodeMessage(bytes);
    if (m.type === "REFUSE") {
      link.close();
      throw new RefusedError(`the primary refused: ${m.reason}`);
    }
    if (m.type !== "WELCOME") throw new ProtocolError("type", `expected WELCOME, got ${m.type}`);
    const d = decideHandshake(this.hello(channel), m.hello);
    if (!("accept" in d)) {
      link.close();
      throw new RefusedError(`refusing the primary: ${"refuse" in d ? d.refuse : d.stop}`);
    }
    if (m.hello.generation > this.#generation) this.#generation = m.hello.generation;
    return link;
  }

  /**
   * Follows the primary: connects (retrying), receives, and on a broken link
   * reconnects; the heartbeat paths and the detector decide about takeover.
   */
  async #follow(): Promise<void> {
    let announced = false;
    let watch: Promise<void> | null = null;
    while (!this.#stopped && this.state !== "taking-over" && this.state !== "active") {
      let link: Link;
      try {
        link = await this.#connect("replication", this.options.primary);
      } catch (e) {
        if (e instanceof RefusedError) throw e;
        // A wrong key does not get better by retrying.
        if (e instanceof AuthError) throw new RefusedError(e.message);
        if (!announced) {
          this.options.log(`kemari: waiting for the primary at ${this.options.primary}`);
          announced = true;
        }
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      announced = false;
      this.#link = link;
      if (this.state === "connecting") this.state = "syncing";
      this.options.log(`kemari: standby connected to ${link.peer}`);
      if (!watch) {
        await this.#startHeartbeats();
        watch = this.#watch();
      }
      const beat = setInterval(() => this.#beat(link), this.options.heartbeatMs);
      try {
        await this.#receive(link);
      } catch (e) {
        this.#stager.discard();
        if (e instanceof ProtocolError) {
          this.options.log(`kemari: closing the link: ${e.message}; nothing of it was applied`);
          await link.send([encodeMessage({ type: "BYE", reason: e.message })]).catch(() => {});
        } else if (!this.#stopped && (this.state as StandbyState) !== "taking-over") {
          this.options.log(`kemari: replication link: ${e instanceof Error ? e.message : e}`);
        }
      } finally {
        clearInterval(beat);
        link.close();
        if (this.#link === link) this.#link = null;
      }
    }
    await watch;
  }

  #beatSeq = 0n;
  #beat(link: Link): void {
    link.send([encodeMessage({
      type: "HEARTBEAT",
      seq: ++this.#beatSeq,
      generation: this.#generation,
      timeNs: BigInt(Math.floor(performance.now() * 1e6)),
      committedEpoch: BigInt(this.#committed?.epoch ?? 0),
    })]).catch(() => {});
  }

  async #startHeartbeats(): Promise<void> {
    const paths = this.options.heartbeatPaths;
    this.#detector = new FailureDetector(
      ["replication", ...paths],
      this.options.timeoutMs,
      performance.now(),
    );
    for (const address of paths) this.#keepHeartbeat(address);
    await Promise.resolve();
  }

  /** Keeps a heartbeat link up to `address`, reconnecting while following. */
  async #keepHeartbeat(address: string): Promise<void> {
    let warned = false;
    while (!this.#stopped && this.state !== "taking-over" && this.state !== "active") {
      try {
        const link = await this.#connect("heartbeat", address);
        warned = false;
        const hb = new HeartbeatLink(address, link, this.options.heartbeatMs, {
          generation: () => this.#generation,
          committedEpoch: () => BigInt(this.#committed?.epoch ?? 0),
          heard: (path) => this.#detector?.heard(path, performance.now()),
          log: this.options.log,
        });
        this.#heartbeats.push(hb);
        await hb.done;
        this.#heartbeats = this.#heartbeats.filter((h) => h !== hb);
      } catch (e) {
        if (e instanceof RefusedError) return;
        if (!warned) {
          this.options.log(
            `kemari: heartbeat path ${address} is down: ${e instanceof Error ? e.message : e}`,
          );
          warned = true;
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Takes over when every path has been silent for the timeout. */
  async #watch(): Promise<void> {
    let warned = false;
    while (!this.#stopped && this.state !== "taking-over" && this.state !== "active") {
      await new Promise((r) => setTimeout(r, Math.min(25, this.options.timeoutMs / 4)));
      this.#claimant?.observe();
      const d = this.#detector;
      if (!d || !d.lost(performance.now())) {
        warned = false;
        continue;
      }
      if (!this.#committed) {
        if (!warned) {
          this.options.log(
            "kemari: the primary is silent and no checkpoint is committed yet: nothing to take over",
          );
          warned = true;
        }
        continue;
      }
      await this.#takeOver(`no word from the primary for ${this.options.timeoutMs} ms on any path`);
      return;
    }
  }

  #stager!: Stager;

  #newStager(): Stager {
    const pages = this.machine.backend.memory.pages;
    return new Stager(pages, MAX_STAGING, { checkState: savedMachineCheck(pages) });
  }

  async #receive(link: Link): Promise<void> {
    this.#stager ??= this.#newStager();
    for (;;) {
      const batch = await link.receive();
      if (batch === null) throw new Error("the primary closed the link");
      this.#receivedAt = performance.now();
      this.#detector?.heard("replication", this.#receivedAt);
      for (const bytes of splitMessages(batch)) {
        if (await this.#handle(link, bytes) === "stop") return;
      }
    }
  }

  /** One protocol message from the primary. */
  async #handle(link: Link, bytes: Uint8Array): Promise<"stop" | void> {
    const ram = this.machine.backend.memory;
    {
      const m = decodeMessage(bytes, { ramPages: ram.pages });
      if (m.type === "HEARTBEAT" || m.type === "ACK") return;
      if (m.type === "BYE") {
        this.options.log(`kemari: the primary ended protection: ${m.reason}`);
        this.#stop(`the primary ended protection (${m.reason})`);
        return "stop";
      }
      if ((m.type === "PRECOPY" || m.type === "DISK") && this.#committed) {
        // A full resync replaces what was committed: no takeover until the
        // next checkpoint commits.
        this.options.log(
          `kemari: full resync from the primary; checkpoint ${this.#committed.epoch} is discarded`,
        );
        this.#committed = null;
        this.#stager = this.#newStager();
        this.state = "syncing";
      }
      if (m.type === "DISK") {
        this.#diskReceiver ??= new DiskReceiver(this.machine.disk!);
        this.#diskReceiver.accept(m);
        return;
      }
      const ev = this.#stager.accept(m);
      if (ev.kind === "error") throw new ProtocolError("sequence", ev.reason);
      if (ev.kind === "precopy") {
        apply(ev, ram.bytes);
        this.machine.markTouched(ev.pages);
        return;
      }
      if (ev.kind !== "complete") return;
      const t0 = performance.now();
      if (ev.pages.length > 1) {
        // A standby dying mid-apply (the kill tests) leaves half the pages in.
        const half = ev.pages.length >> 1;
        apply(
          { pages: ev.pages.subarray(0, half), data: ev.data.subarray(0, half * 4096) },
          ram.bytes,
        );
        failpoint("mid-apply");
        apply({ pages: ev.pages.subarray(half), data: ev.data.subarray(half * 4096) }, ram.bytes);
      } else {
        apply(ev, ram.bytes);
      }
      if (ev.diskDelta.length > 0) {
        this.machine.block?.applyDiskDelta(decodeDiskDelta(ev.diskDelta));
      }
      this.machine.markTouched(ev.pages);
      const state = ev.state as SavedMachine & { verify?: { crc: number } };
      if (state.verify) this.#check(state.verify.crc, ev.epoch);
      this.#committed = { epoch: Number(ev.epoch), state };
      this.machine.bootId = state.bootId;
      this.#applyMs = performance.now() - t0;
      if (this.state === "syncing") {
        this.state = "ready";
        this.options.log(`kemari: standby ready: checkpoint ${ev.epoch} committed`);
      }
      await link.send([encodeMessage({ type: "ACK", epoch: ev.epoch })]);
      this.metrics.add("commit", performance.now() - this.#receivedAt);
    }
  }

  #check(expected: number, epoch: bigint): void {
    this.#verify.checked++;
    const actual = crc32(this.machine.backend.memory.bytes);
    if (actual !== expected) {
      this.#verify.mismatches++;
      this.options.log(
        `kemari: VERIFY FAILED at epoch ${epoch}: standby memory crc ${
          actual.toString(16)
        } != primary ${expected.toString(16)}`,
      );
    }
  }

  async #takeOver(why: string): Promise<void> {
    if (this.state === "taking-over" || this.state === "active" || this.#stopped) return;
    this.state = "taking-over";
    const committed = this.#committed!;
    this.options.log(`kemari: TAKEOVER: ${why}; resuming from checkpoint ${committed.epoch}`);
    this.#closeLinks();
    let lease: LeaseHolder | null = null;
    if (this.#claimant) {
      for (;;) {
        const holder = this.#claimant.tryClaim(Number(this.#generation) + 1);
        if (holder) {
          this.#generation = BigInt(holder.generation);
          lease = holder;
          break;
        }
        if (this.#stopped) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    } else {
      this.#generation += 1n;
    }
    await this.machine.activate(committed.state);
    this.state = "active";
    // Take over the guest's MAC and IP on the segment (a bridge learns the
    // new port from these; a port just up may drop the first ones).
    const net = this.machine.net;
    if (net) { for (const ms of [0, 50, 200]) setTimeout(() => net.announce(), ms); }
    this.options.log(
      `kemari: the guest runs here now (generation ${this.#generation}); re-issued held output`,
    );
    this.#resolve({
      kind: "took-over",
      machine: this.machine,
      generation: this.#generation,
      epoch: committed.epoch,
      lease,
    });
  }

  status(): Status {
    const now = performance.now();
    return {
      role: "standby",
      name: this.options.name,
      state: this.state,
      mode: "-",
      diskMode: this.options.diskMode,
      generation: Number(this.#generation),
      epoch: this.#committed?.epoch ?? 0,
      lastPauseMs: this.#applyMs,
      held: { bytes: 0, count: 0 },
      standbyLagMs: null,
      link: {
        state: this.#link ? "connected" : "down",
        peer: this.#link?.peer ?? null,
        bytesSent: this.#link?.stats.bytesSent ?? 0,
        bytesReceived: this.#link?.stats.bytesReceived ?? 0,
      },
      heartbeat: this.#detector?.status(now) ?? {},
      checkpoints: this.#committed?.epoch ?? 0,
      syncProgress: null,
      verify: this.#verify.checked ? { ...this.#verify } : null,
      guest: { vcpu: this.machine.backend.vcpuState(), console: this.machine.console.lastLine },
      metrics: this.metrics.summary(),
    };
  }
}

/** The primary refused this standby (or the other way round): do not retry. */
export class RefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RefusedError";
  }
}

/**
 * The protocol messages in one transport message: a small checkpoint travels
 * as several messages back to back (each with its own header and length).
 */
export function* splitMessages(batch: Uint8Array): Generator<Uint8Array> {
  let off = 0;
  while (off < batch.length) {
    if (batch.length - off < HEADER_BYTES) {
      throw new ProtocolError("length", `${batch.length - off} stray bytes after a message`);
    }
    const h = readHeader(batch.subarray(off));
    const end = off + HEADER_BYTES + h.length;
    if (end > batch.length) {
      throw new ProtocolError(
        "length",
        `message declares ${h.length} bytes, ${batch.length - off - HEADER_BYTES} left`,
      );
    }
    yield batch.subarray(off, end);
    off = end;
  }
}
