/**
 * The block backend: a blkif shared ring at GPA.block served from a raw
 * image file with synchronous I/O.
 *
 * Every request taken is completed (disk I/O done, response written) inside
 * the same service() call, so between calls nothing is in flight and every
 * request up to req_cons is answered, was abandoned by an overrun, or is
 * held (below) with its data copied out; that is what lets a checkpoint
 * happen between calls.
 *
 * Re-issue rule: requests the guest has published but the backend has not
 * yet taken live only in guest RAM (their ring slots and req_prod), and the
 * backend's saved state holds req_cons. After a restore the memory image
 * and req_cons come back together, so the next service() simply takes those
 * requests then, as if they had just been posted. Apart from held requests
 * (shared mode, below), which the saved state carries and reissueHeld()
 * performs and answers once on the side that goes on, nothing is replayed
 * from the backend's side and nothing is answered twice.
 *
 * Disk modes ({@link DiskMode}, set with {@link BlockBackend.setDiskMode}):
 *
 * - "local": unprotected; every request is performed and answered at once.
 * - "shared": primary and standby open the same image. While the gate is
 *   holding, a WRITE, WRITE_BARRIER or FLUSH_DISKCACHE is taken, its data
 *   copied out of guest memory and *held* (not performed, not answered);
 *   {@link BlockBackend.release} performs and answers the held requests the
 *   standby has committed. Reads are answered at once and see held data.
 *   Held requests are device state, so a standby that takes over re-issues
 *   them ({@link BlockBackend.reissueHeld}): performed again, in order, at
 *   least once, which is harmless as they write the same data.
 * - "replicated": each side has its own image. Requests are performed and
 *   answered at once, and every performed write and flush is also recorded
 *   in a {@link DiskDelta} that the engine takes at each checkpoint
 *   ({@link BlockBackend.takeDiskDelta}) and the standby applies at commit
 *   ({@link BlockBackend.applyDiskDelta}).
 *
 * Bounded memory: held requests are bounded by the gate's mayHold() and by
 * the ring (at most nr_ents owed responses, each at most 11 pages of data).
 * The disk delta is bounded by `maxDiskDeltaBytes`: the engine should force
 * a checkpoint when {@link BlockBackend.diskDeltaBytes} passes a soft limit
 * of its own; at the hard limit further writes wait in the ring (reads
 * before them still go on) until the delta is taken, so the delta never
 * exceeds the limit by more than one request (44 KiB).
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { GPA, PAGE_SIZE } from "../machine/layout.ts";
import {
  BLKIF_MAX_SEGMENTS,
  BLKIF_OP,
  BLKIF_REQUEST_SIZE,
  BLKIF_RESPONSE_SIZE,
  BLKIF_RSP,
  decodeRequest,
  encodeResponse,
  SECTOR_SIZE,
} from "./blkif.ts";
import { type BlockLimits, type BlockPlan, type Extent, planRequest } from "./block_plan.ts";
import type { Device, DeviceObserver, DeviceState } from "./device.ts";
import type { DiskImage } from "./disk.ts";
import {
  type DiskDelta,
  type DiskDeltaEntry,
  DiskDeltaError,
  type DiskDeltaSummary,
  validateDiskDelta,
} from "./disk_delta.ts";
import type { EventPage } from "./events.ts";
import {
  checkEpoch,
  type HeldSummary,
  holdEpoch,
  OPEN_GATE,
  type OutputGate,
} from "./output_gate.ts";
import { BackRing, owedResponses, type PendingRequests, ringIndexProblem } from "./ring.ts";
import { encodeBase64, StateReader } from "./state_reader.ts";

/** How the image relates to the standby's (see the module notes). */
export type DiskMode = "local" | "shared" | "replicated";

/** Every {@link DiskMode}. */
export const DISK_MODES: readonly DiskMode[] = ["local", "shared", "replicated"];

/** Default hard cap on {@link BlockBackend.diskDeltaBytes}. */
export const DISK_DELTA_LIMIT = 64 * 1024 * 1024;

/** Most data one blkif request carries (11 segments of a page). */
export const BLKIF_MAX_REQUEST_BYTES = BLKIF_MAX_SEGMENTS * PAGE_SIZE;

/** Why the last service() left requests in the ring. */
export type BlockStall =
  /** Shared mode, holding: the gate's mayHold() said no, or nr_ents requests are held. */
  | "hold-limit"
  /** Shared mode: requests are held but the gate no longer holds; release or reissue first. */
  | "release-pending"
  /** Replicated mode: the disk delta reached maxDiskDeltaBytes; take it first. */
  | "delta-limit";

/** A taken, validated WRITE / WRITE_BARRIER / FLUSH_DISKCACHE awaiting release. */
interface HeldRequest {
  /** The checkpoint that covers it. */
  epoch: number;
  id: bigint;
  /** BLKIF_OP.write, writeBarrier or flushDiskcache. */
  op: number;
  /** First sector written (0 for a flush without data). */
  sector: bigint;
  /** The data, copied out of guest memory at take time (empty for a pure flush). */
  data: Uint8Array;
}

/** A request's I/O, with the data of a write already copied out. */
type Io =
  | { kind: "read"; sector: bigint; extents: Extent[]; bytes: number }
  | { kind: "write"; sector: bigint; data: Uint8Array; flushBefore: boolean; flushAfter: boolean }
  | { kind: "flush" };

const HELD_OPS: readonly number[] = [
  BLKIF_OP.write,
  BLKIF_OP.writeBarrier,
  BLKIF_OP.flushDiskcache,
];

/** Options of {@link BlockBackend}. */
export interface BlockBackendOptions {
  /**
   * Most requests taken in one service() call (default 4 ring's worth), so
   * a guest that keeps posting cannot hold the VMM's thread forever. When
   * the budget runs out, {@link BlockBackend.needsService} is true.
   */
  maxRequestsPerService?: number;
  /**
   * Hard cap on {@link BlockBackend.diskDeltaBytes} in replicated mode
   * (default {@link DISK_DELTA_LIMIT}); at the cap, writes wait in the ring
   * until the delta is taken.
   */
  maxDiskDeltaBytes?: number;
}

/** Block counters for status and metrics. */
export interface BlockCounters {
  /** READ requests completed. */
  reads: number;
  /** Requests that wrote data (WRITE, WRITE_BARRIER, FLUSH with data). */
  writes: number;
  /** fdatasync calls. */
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Responses with a non-zero status, for any reason. */
  errors: number;
  /** Requests refused as malformed (each also counted on the event page). */
  badRequests: number;
  /** Host I/O failures. */
  ioErrors: number;
  /** Ring overruns (req_prod more than a ring ahead of req_cons). */
  overruns: number;
}

const COUNTER_NAMES: readonly (keyof BlockCounters)[] = [
  "reads",
  "writes",
  "flushes",
  "bytesRead",
  "bytesWritten",
  "errors",
  "badRequests",
  "ioErrors",
  "overruns",
];

function zeroCounters(): BlockCounters {
  return {
    reads: 0,
    writes: 0,
    flushes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    errors: 0,
    badRequests: 0,
    ioErrors: 0,
    overruns: 0,
  };
}

/** Backend of the guest's block device. */
export class BlockBackend implements Device {
  readonly name = "block";
  /** The blkif ring at GPA.block. */
  readonly ring: BackRing;
  readonly #limits: BlockLimits;
  readonly #budget: number;
  #counters = zeroCounters();
  #lastError = "";
  #needsService = false;
  readonly #maxDeltaBytes: number;
  #gate: OutputGate = OPEN_GATE;
  #mode: DiskMode = "local";
  #held: HeldRequest[] = [];
  #heldBytes = 0;
  #delta: DiskDeltaEntry[] = [];
  #deltaBytes = 0;
  #stall: BlockStall | null = null;

  /** A block device at GPA.block served from `disk`. */
  constructor(
    readonly mem: GuestMemory,
    readonly events: EventPage,
    readonly disk: DiskImage,
    options: BlockBackendOptions = {},
  ) {
    this.ring = new BackRing(mem, GPA.block, BLKIF_REQUEST_SIZE, BLKIF_RESPONSE_SIZE);
    this.#limits = { ramBytes: mem.size, diskSectors: disk.sectors, readOnly: disk.readOnly };
    this.#budget = options.maxRequestsPerService ?? 4 * this.ring.nrEnts;
    if (!Number.isSafeInteger(this.#budget) || this.#budget < 1) {
      throw new RangeError(`maxRequestsPerService ${this.#budget} must be a positive integer`);
    }
    this.#maxDeltaBytes = options.maxDiskDeltaBytes ?? DISK_DELTA_LIMIT;
    if (!Number.isSafeInteger(this.#maxDeltaBytes) || this.#maxDeltaBytes < 1) {
      throw new RangeError(`maxDiskDeltaBytes ${this.#maxDeltaBytes} must be a positive integer`);
    }
  }

  /**
   * Takes, completes and answers every published request (up to the
   * budget), then notifies the guest once if anything was answered. In
   * shared mode while the gate holds, writes and flushes are taken and held
   * instead of answered, and the gate is told of each (after the ring is
   * updated). Stops early, leaving requests in the ring, at the first write
   * or flush that may not be taken now (see {@link stalled}).
   */
  service(): boolean {
    let budget = this.#budget;
    let answered = 0;
    const heldNow: number[] = [];
    this.#needsService = false;
    this.#stall = null;
    // Whether writes are held, and under which epoch, is fixed for the whole
    // call (validated before anything is taken).
    const epoch = this.#holding() ? holdEpoch(this.#gate, this.#held.at(-1)?.epoch) : null;
    for (;;) {
      const pending = this.ring.pendingRequests();
      if (!pending.ok) {
        this.#overrun(pending);
        budget--;
      }
      const count = pending.ok ? Math.min(pending.count, budget) : 0;
      let taken = 0;
      while (taken < count) {
        const outcome = this.#takeOne(epoch);
        if (outcome === "stalled") break;
        taken++;
        if (outcome === "answered") answered++;
        else heldNow.push(outcome);
      }
      budget -= taken;
      this.ring.pushResponses();
      if (this.#stall !== null) break;
      if (budget <= 0) {
        this.#needsService = this.ring.pendingRequests().count > 0;
        break;
      }
      if (!this.ring.finalCheckForRequests()) break;
    }
    // The event page is a counter, not an interrupt, so the guest is told
    // whenever responses were posted; pushResponses()'s rsp_event check is
    // what a Xen event channel would use.
    if (answered > 0) this.events.notify();
    for (const bytes of heldNow) this.#gate.outputHeld(this.name, bytes);
    return answered > 0;
  }

  /** The output gate in use (default {@link OPEN_GATE}). */
  get gate(): OutputGate {
    return this.#gate;
  }

  /**
   * Switches the gate; takes effect at the next service(). Held requests
   * stay held: when protection ends the engine calls {@link releaseAll}.
   */
  setGate(gate: OutputGate): void {
    this.#gate = gate;
  }

  /** The disk mode (default "local"). */
  get diskMode(): DiskMode {
    return this.#mode;
  }

  /**
   * Switches the disk mode. Refused (Error) while requests are held, and
   * when leaving "replicated" with a disk delta not yet taken: release or
   * reissue them, take the delta, then switch.
   */
  setDiskMode(mode: DiskMode): void {
    if (!DISK_MODES.includes(mode)) throw new RangeError(`unknown disk mode ${String(mode)}`);
    if (mode === this.#mode) return;
    if (this.#held.length > 0) {
      throw new Error(
        `block: ${this.#held.length} requests are held; release or reissue them before switching to ${mode}`,
      );
    }
    if (this.#delta.length > 0) {
      throw new Error(
        `block: the disk delta holds ${this.#delta.length} entries; take it before switching to ${mode}`,
      );
    }
    this.#mode = mode;
  }

  /**
   * Performs, in order, the held requests of epochs up to `committedEpoch`
   * (through {@link performWrite} / {@link performFlush}), answers them,
   * notifies the guest once, and returns how many were answered. Held epochs
   * never decrease along the queue, so these are a prefix of it. A host I/O
   * error answers that request with status ERROR, as at once would have.
   *
   * The guest may have requests waiting in the ring (see {@link stalled});
   * it will not ring again for them, so the caller should call service()
   * after.
   */
  release(committedEpoch: number): number {
    checkEpoch(committedEpoch, "committedEpoch");
    return this.#release(committedEpoch);
  }

  /** Performs and answers every held request, whatever its epoch (protection ends). */
  releaseAll(): number {
    return this.#release(Number.POSITIVE_INFINITY);
  }

  /**
   * On a standby that takes over, right after restore(): performs every held
   * request of the restored checkpoint again, in order, and answers it (the
   * old primary may have performed some already; writing the same data again
   * is harmless). Same as {@link releaseAll}.
   */
  reissueHeld(): number {
    return this.releaseAll();
  }

  /** Held requests: data bytes, count, and the epoch of the oldest (null if none). */
  get held(): HeldSummary {
    return {
      bytes: this.#heldBytes,
      count: this.#held.length,
      oldestEpoch: this.#held[0]?.epoch ?? null,
    };
  }

  /** Why the last service() left requests in the ring, or null if it did not. */
  get stalled(): BlockStall | null {
    return this.#stall;
  }

  /**
   * Returns the writes and flushes performed since the last call, in order,
   * and starts a new list. The engine calls it with the vCPU paused at each
   * checkpoint, so the delta holds exactly the writes that checkpoint covers.
   * Consecutive flushes are recorded once. Writes that failed with a host
   * I/O error are not recorded (the guest was told ERROR; the range's
   * content is undefined for it).
   */
  takeDiskDelta(): DiskDelta {
    const writes = this.#delta;
    this.#delta = [];
    this.#deltaBytes = 0;
    return { writes };
  }

  /** Data bytes in the disk delta not yet taken. */
  get diskDeltaBytes(): number {
    return this.#deltaBytes;
  }

  /** Entries in the disk delta not yet taken. */
  get diskDeltaEntries(): number {
    return this.#delta.length;
  }

  /**
   * Applies a delta to this backend's image (the standby's, at commit): the
   * whole delta is validated against this disk first (DiskDeltaError, and
   * nothing written, if any entry is bad), then every write is performed in
   * order through {@link performWrite}, then, if the delta contains a flush,
   * one fdatasync ({@link performFlush}) at the end. One sync suffices: the
   * standby acknowledges the checkpoint only after the whole delta is
   * applied, so the order of durability inside it is never observable, and
   * every flush the guest was told of is durable by then. A host I/O error
   * mid-way is thrown with part of the delta applied: the standby's image is
   * then unusable and the engine must treat the standby as failed.
   */
  applyDiskDelta(delta: DiskDelta): DiskDeltaSummary {
    const summary = validateDiskDelta(delta, { diskSectors: this.#limits.diskSectors });
    if (summary.writes > 0 && this.#limits.readOnly) {
      throw new DiskDeltaError(`${summary.writes} writes for a read-only disk`);
    }
    for (const entry of delta.writes) {
      if (!("flush" in entry)) this.performWrite(entry.sector, entry.data);
    }
    if (summary.flushes > 0) this.performFlush();
    return summary;
  }

  /** True when the last service() stopped at its budget with requests left. */
  get needsService(): boolean {
    return this.#needsService;
  }

  /**
   * Writes `data` at `sector`. The only place the image is written, so an
   * output-commit layer can intercept (e.g. buffer until the checkpoint that
   * covers the write is acknowledged). Throws on a host I/O error.
   */
  performWrite(sector: bigint, data: Uint8Array): void {
    this.onEvent?.({
      device: "disk",
      direction: "out",
      kind: "write",
      bytes: data.length,
      sector,
      data,
    });
    this.disk.writeAt(Number(sector) * SECTOR_SIZE, data);
  }

  /** fdatasync of the image; the only place it is flushed. */
  performFlush(): void {
    this.onEvent?.({ device: "disk", direction: "out", kind: "flush", bytes: 0 });
    this.disk.flush();
    this.#counters.flushes++;
  }

  /** Observer of disk events (taps): writes and flushes leaving, reads arriving. */
  onEvent: DeviceObserver | undefined;

  /** The held writes and flushes that release(committedEpoch) would perform, in order. */
  releasable(
    committedEpoch: number,
  ): Array<{ kind: "write" | "flush"; sector: bigint; data: Uint8Array }> {
    const out: Array<{ kind: "write" | "flush"; sector: bigint; data: Uint8Array }> = [];
    for (const h of this.#held) {
      if (h.epoch > committedEpoch) break;
      out.push({ kind: h.data.length ? "write" : "flush", sector: h.sector, data: h.data });
    }
    return out;
  }

  /** A copy of the counters. */
  get counters(): BlockCounters {
    return { ...this.#counters };
  }

  /** Message of the last host I/O error ("" if none). */
  get lastError(): string {
    return this.#lastError;
  }

  /**
   * Version 2: version 1 plus `diskMode` and `held`, the held requests in
   * order as `{ epoch, id, op, sector, data }` (id and sector decimal
   * strings, data base64). The disk delta is not part of the state: it
   * travels beside the checkpoint (takeDiskDelta).
   */
  save(): DeviceState {
    const { reqCons, rspProdPvt, skipped } = this.ring.indexes();
    return {
      version: 2,
      reqCons,
      rspProdPvt,
      skipped,
      diskSectors: this.#limits.diskSectors.toString(),
      readOnly: this.#limits.readOnly,
      counters: { ...this.#counters },
      diskMode: this.#mode,
      held: this.#held.map((h) => ({
        epoch: h.epoch,
        id: h.id.toString(),
        op: h.op,
        sector: h.sector.toString(),
        data: encodeBase64(h.data),
      })),
    };
  }

  /**
   * Accepts version 2, and version 1 (before output commit: local mode,
   * nothing held). The held requests must be exactly the responses owed by
   * the ring indexes, only in shared mode, with known operations, data
   * lengths that are multiples of 512 (non-zero except for a pure flush)
   * within the disk, and non-decreasing epochs. On success the disk delta
   * is emptied (it described writes relative to the replaced state); the
   * gate is not part of the state and is left as it is.
   */
  restore(state: unknown): void {
    const reader = StateReader.of(this.name, state);
    const version = reader.versionIn([1, 2]);
    const indexes = {
      reqCons: reader.u32("reqCons"),
      rspProdPvt: reader.u32("rspProdPvt"),
      skipped: reader.u32("skipped"),
    };
    const problem = ringIndexProblem(indexes, this.ring.nrEnts);
    if (problem !== null) reader.fail(problem);
    const owed = owedResponses(indexes);
    const diskSectors = reader.u64("diskSectors");
    if (diskSectors !== this.#limits.diskSectors) {
      reader.fail(`saved disk has ${diskSectors} sectors, this one ${this.#limits.diskSectors}`);
    }
    if (reader.bool("readOnly") !== this.#limits.readOnly) {
      reader.fail(`saved disk read-only flag differs from this one's (${this.#limits.readOnly})`);
    }
    const counters = readCounters(reader.object("counters"));
    const mode = version === 1 ? "local" : reader.oneOf("diskMode", DISK_MODES);
    const held = version === 1 ? [] : readHeld(reader, this.#limits, this.ring.nrEnts);
    if (owed !== held.length) {
      reader.fail(
        `${owed} requests are owed responses, but ${
          held.length === 0 ? "no" : held.length
        } held requests are saved`,
      );
    }
    if (held.length > 0 && mode !== "shared") {
      reader.fail(`${held.length} held requests in disk mode ${mode} (only shared holds)`);
    }
    this.ring.adopt(indexes);
    this.#counters = counters;
    this.#mode = mode;
    this.#held = held;
    this.#heldBytes = held.reduce((sum, h) => sum + h.data.length, 0);
    this.#delta = [];
    this.#deltaBytes = 0;
    this.#stall = null;
    this.#needsService = false;
  }

  /** True when writes and flushes are held rather than performed now. */
  #holding(): boolean {
    return this.#mode === "shared" && this.#gate.holding;
  }

  /**
   * Why a valid write or flush may not be taken now, or null. Reads are
   * always taken; a write that stalls stops the ring there (it is FIFO).
   */
  #outputStall(holding: boolean): BlockStall | null {
    switch (this.#mode) {
      case "local":
        return null;
      case "replicated":
        return this.#deltaBytes >= this.#maxDeltaBytes ? "delta-limit" : null;
      case "shared":
        if (!holding) return this.#held.length > 0 ? "release-pending" : null;
        if (this.#held.length >= this.ring.nrEnts) return "hold-limit";
        return this.#gate.mayHold(this.name, this.#heldBytes, this.#held.length)
          ? null
          : "hold-limit";
    }
  }

  /**
   * Looks at the request at req_cons and either leaves it (a write or flush
   * that may not be taken now: "stalled"), or takes it and answers it
   * ("answered") or holds it under `epoch` (returns its data bytes); a null
   * epoch means nothing is held in this call.
   */
  #takeOne(epoch: number | null): "answered" | "stalled" | number {
    const request = decodeRequest(this.ring.peekRequest());
    const verdict = planRequest(request, this.#limits);
    if (verdict.ok && verdict.plan.kind !== "read") {
      const stall = this.#outputStall(epoch !== null);
      if (stall !== null) {
        this.#stall = stall;
        return "stalled";
      }
    }
    this.ring.consumeRequest();
    if (!verdict.ok) {
      this.#counters.badRequests++;
      this.events.badRequest(`block: request id ${request.id}: ${verdict.reason}`);
      this.#respond(request.id, request.operation, verdict.status);
      return "answered";
    }
    const io = this.#ioOf(verdict.plan);
    if (io.kind !== "read" && epoch !== null) {
      const data = io.kind === "write" ? io.data : new Uint8Array(0);
      const sector = io.kind === "write" ? io.sector : 0n;
      this.#held.push({ epoch, id: request.id, op: request.operation, sector, data });
      this.#heldBytes += data.length;
      return data.length;
    }
    this.#respond(request.id, request.operation, this.#perform(io));
    return "answered";
  }

  #release(committedEpoch: number): number {
    let done = 0;
    try {
      while (done < this.#held.length && this.#held[done].epoch <= committedEpoch) {
        const h = this.#held[done++];
        this.#heldBytes -= h.data.length;
        const flushing = h.op !== BLKIF_OP.write;
        const io: Io = h.data.length === 0 ? { kind: "flush" } : {
          kind: "write",
          sector: h.sector,
          data: h.data,
          flushBefore: flushing,
          flushAfter: flushing,
        };
        this.#respond(h.id, h.op, this.#perform(io));
      }
    } finally {
      this.#held.splice(0, done);
      if (done > 0) {
        this.ring.pushResponses();
        this.events.notify();
      }
    }
    return done;
  }

  #respond(id: bigint, operation: number, status: number): void {
    if (status !== BLKIF_RSP.okay) this.#counters.errors++;
    this.ring.putResponse(encodeResponse({ id, operation, status }));
  }

  #overrun(pending: Extract<PendingRequests, { ok: false }>): void {
    this.#counters.overruns++;
    this.#counters.badRequests++;
    this.ring.skipTo(pending.reqProd);
    this.events.badRequest(
      `block: ring overrun: req_prod ${pending.reqProd} is ${pending.count} past req_cons ${pending.reqCons}`,
    );
  }

  /** A validated plan with a write's data copied out of guest memory. */
  #ioOf(plan: BlockPlan): Io {
    if (plan.kind !== "write") return plan;
    const { sector, flushBefore, flushAfter } = plan;
    return {
      kind: "write",
      sector,
      data: this.#gather(plan.extents, plan.bytes),
      flushBefore,
      flushAfter,
    };
  }

  /**
   * Performs a request's I/O; a host I/O error becomes status ERROR. In
   * replicated mode every write and flush performed is also recorded in the
   * disk delta.
   */
  #perform(io: Io): number {
    try {
      switch (io.kind) {
        case "read":
          this.#read(io.sector, io.extents, io.bytes);
          this.#counters.reads++;
          this.#counters.bytesRead += io.bytes;
          break;
        case "write":
          if (io.flushBefore) this.#flush();
          this.performWrite(io.sector, io.data);
          this.#record({ sector: io.sector, data: io.data });
          if (io.flushAfter) this.#flush();
          this.#counters.writes++;
          this.#counters.bytesWritten += io.data.length;
          break;
        case "flush":
          this.#flush();
          break;
      }
      return BLKIF_RSP.okay;
    } catch (error) {
      this.#counters.ioErrors++;
      this.#lastError = error instanceof Error ? error.message : String(error);
      return BLKIF_RSP.error;
    }
  }

  #flush(): void {
    this.performFlush();
    this.#record({ flush: true });
  }

  /** Appends a performed write or flush to the disk delta (replicated mode only). */
  #record(entry: DiskDeltaEntry): void {
    if (this.#mode !== "replicated") return;
    if ("flush" in entry) {
      if (!("flush" in (this.#delta.at(-1) ?? {}))) this.#delta.push(entry);
      return;
    }
    this.#delta.push(entry);
    this.#deltaBytes += entry.data.length;
  }

  /**
   * Reads straight into the guest pages (marking them dirty), then lays the
   * data of held writes over it, oldest first (newest last), so a read
   * sees every write taken before it, performed yet or not.
   */
  #read(sector: bigint, extents: Extent[], bytes: number): void {
    this.onEvent?.({ device: "disk", direction: "in", kind: "read", bytes, sector });
    let offset = Number(sector) * SECTOR_SIZE;
    for (const extent of extents) {
      this.disk.readAt(offset, this.mem.writable(extent.gpa, extent.length));
      offset += extent.length;
    }
    if (this.#held.length > 0) this.#overlay(Number(sector) * SECTOR_SIZE, extents, bytes);
  }

  /** Copies the parts of held writes that fall in disk bytes [start, start+bytes) into `extents`. */
  #overlay(start: number, extents: Extent[], bytes: number): void {
    const end = start + bytes;
    for (const h of this.#held) {
      if (h.data.length === 0) continue;
      const writeStart = Number(h.sector) * SECTOR_SIZE;
      const from = Math.max(start, writeStart);
      const to = Math.min(end, writeStart + h.data.length);
      if (from >= to) continue;
      let extentStart = start;
      for (const extent of extents) {
        const a = Math.max(from, extentStart);
        const b = Math.min(to, extentStart + extent.length);
        if (a < b) {
          this.mem.write(
            extent.gpa + (a - extentStart),
            h.data.subarray(a - writeStart, b - writeStart),
          );
        }
        extentStart += extent.length;
      }
    }
  }

  /** Copies the data of a write out of guest memory, so the guest cannot change it mid-write. */
  #gather(extents: Extent[], bytes: number): Uint8Array {
    const data = new Uint8Array(bytes);
    let at = 0;
    for (const extent of extents) {
      data.set(this.mem.read(extent.gpa, extent.length), at);
      at += extent.length;
    }
    return data;
  }
}

function readHeld(reader: StateReader, limits: BlockLimits, nrEnts: number): HeldRequest[] {
  const held: HeldRequest[] = [];
  for (const [i, r] of reader.objects("held", nrEnts).entries()) {
    const where = `held[${i}]`;
    const epoch = r.count("epoch");
    const id = r.u64("id");
    const op = r.int("op", 0, 255);
    if (!HELD_OPS.includes(op)) reader.fail(`${where}: operation ${op} is never held`);
    const sector = r.u64("sector");
    const data = r.bytes("data", BLKIF_MAX_REQUEST_BYTES);
    if (data.length % SECTOR_SIZE !== 0) {
      reader.fail(`${where}: ${data.length} data bytes, not a multiple of ${SECTOR_SIZE}`);
    }
    if (data.length === 0 && op !== BLKIF_OP.flushDiskcache) {
      reader.fail(`${where}: operation ${op} without data`);
    }
    if (data.length === 0 && sector !== 0n) reader.fail(`${where}: a pure flush has sector 0`);
    const end = sector + BigInt(data.length / SECTOR_SIZE);
    if (end > limits.diskSectors) {
      reader.fail(`${where}: sectors ${sector}..${end} beyond the disk's ${limits.diskSectors}`);
    }
    if (data.length > 0 && limits.readOnly) reader.fail(`${where}: a write to a read-only disk`);
    const previous = held.at(-1)?.epoch ?? 0;
    if (epoch < previous) reader.fail(`${where}: epoch ${epoch} is before ${previous}`);
    held.push({ epoch, id, op, sector, data });
  }
  return held;
}

function readCounters(reader: StateReader): BlockCounters {
  const counters = zeroCounters();
  for (const name of COUNTER_NAMES) counters[name] = reader.count(name);
  return counters;
}
