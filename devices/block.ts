/**
 * The block backend: a blkif shared ring at GPA.block served from a raw
 * image file with synchronous I/O.
 *
 * Every request taken is completed (disk I/O done, response written) inside
 * the same service() call, so between calls nothing is in flight and every
 * request up to req_cons is answered or was abandoned by an overrun; that is
 * what lets a checkpoint happen between calls.
 *
 * Re-issue rule: requests the guest has published but the backend has not
 * yet taken live only in guest RAM (their ring slots and req_prod), and the
 * backend's saved state holds req_cons. After a restore the memory image
 * and req_cons come back together, so the next service() simply takes those
 * requests then, as if they had just been posted. Nothing is replayed from
 * the backend's side and nothing is answered twice.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { GPA } from "../machine/layout.ts";
import {
  BLKIF_REQUEST_SIZE,
  BLKIF_RESPONSE_SIZE,
  BLKIF_RSP,
  decodeRequest,
  encodeResponse,
  SECTOR_SIZE,
} from "./blkif.ts";
import { type BlockLimits, type BlockPlan, type Extent, planRequest } from "./block_plan.ts";
import type { Device, DeviceState } from "./device.ts";
import type { DiskImage } from "./disk.ts";
import type { EventPage } from "./events.ts";
import { BackRing, owedResponses, type PendingRequests, ringIndexProblem } from "./ring.ts";
import { StateReader } from "./state_reader.ts";

/** Options of {@link BlockBackend}. */
export interface BlockBackendOptions {
  /**
   * Most requests taken in one service() call (default 4 ring's worth), so
   * a guest that keeps posting cannot hold the VMM's thread forever. When
   * the budget runs out, {@link BlockBackend.needsService} is true.
   */
  maxRequestsPerService?: number;
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
  }

  /**
   * Takes, completes and answers every published request (up to the
   * budget), then notifies the guest once if anything was answered.
   */
  service(): boolean {
    let budget = this.#budget;
    let answered = 0;
    this.#needsService = false;
    for (;;) {
      const pending = this.ring.pendingRequests();
      if (!pending.ok) {
        this.#overrun(pending);
        budget--;
      }
      const count = pending.ok ? Math.min(pending.count, budget) : 0;
      for (let i = 0; i < count; i++) this.#handle(this.ring.takeRequest());
      answered += count;
      budget -= count;
      this.ring.pushResponses();
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
    return answered > 0;
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
    this.disk.writeAt(Number(sector) * SECTOR_SIZE, data);
  }

  /** fdatasync of the image; the only place it is flushed. */
  performFlush(): void {
    this.disk.flush();
    this.#counters.flushes++;
  }

  /** A copy of the counters. */
  get counters(): BlockCounters {
    return { ...this.#counters };
  }

  /** Message of the last host I/O error ("" if none). */
  get lastError(): string {
    return this.#lastError;
  }

  save(): DeviceState {
    const { reqCons, rspProdPvt, skipped } = this.ring.indexes();
    return {
      version: 1,
      reqCons,
      rspProdPvt,
      skipped,
      diskSectors: this.#limits.diskSectors.toString(),
      readOnly: this.#limits.readOnly,
      counters: { ...this.#counters },
    };
  }

  restore(state: unknown): void {
    const reader = StateReader.of(this.name, state);
    reader.version(1);
    const indexes = {
      reqCons: reader.u32("reqCons"),
      rspProdPvt: reader.u32("rspProdPvt"),
      skipped: reader.u32("skipped"),
    };
    const problem = ringIndexProblem(indexes, this.ring.nrEnts);
    if (problem !== null) reader.fail(problem);
    const owed = owedResponses(indexes);
    if (owed !== 0) {
      reader.fail(`${owed} requests are owed responses, but no held requests are saved`);
    }
    const diskSectors = reader.u64("diskSectors");
    if (diskSectors !== this.#limits.diskSectors) {
      reader.fail(`saved disk has ${diskSectors} sectors, this one ${this.#limits.diskSectors}`);
    }
    if (reader.bool("readOnly") !== this.#limits.readOnly) {
      reader.fail(`saved disk read-only flag differs from this one's (${this.#limits.readOnly})`);
    }
    const counters = readCounters(reader.object("counters"));
    this.ring.adopt(indexes);
    this.#counters = counters;
  }

  #overrun(pending: Extract<PendingRequests, { ok: false }>): void {
    this.#counters.overruns++;
    this.#counters.badRequests++;
    this.ring.skipTo(pending.reqProd);
    this.events.badRequest(
      `block: ring overrun: req_prod ${pending.reqProd} is ${pending.count} past req_cons ${pending.reqCons}`,
    );
  }

  /** Validates, performs and answers one request (already copied out of the ring). */
  #handle(raw: Uint8Array): void {
    const request = decodeRequest(raw);
    const verdict = planRequest(request, this.#limits);
    let status: number;
    if (verdict.ok) {
      status = this.#perform(verdict.plan);
    } else {
      this.#counters.badRequests++;
      this.events.badRequest(`block: request id ${request.id}: ${verdict.reason}`);
      status = verdict.status;
    }
    if (status !== BLKIF_RSP.okay) this.#counters.errors++;
    this.ring.putResponse(encodeResponse({ id: request.id, operation: request.operation, status }));
  }

  /** Runs a validated plan; a host I/O error becomes status ERROR. */
  #perform(plan: BlockPlan): number {
    try {
      switch (plan.kind) {
        case "read":
          this.#read(plan.sector, plan.extents);
          this.#counters.reads++;
          this.#counters.bytesRead += plan.bytes;
          break;
        case "write":
          if (plan.flushBefore) this.performFlush();
          this.performWrite(plan.sector, this.#gather(plan.extents, plan.bytes));
          if (plan.flushAfter) this.performFlush();
          this.#counters.writes++;
          this.#counters.bytesWritten += plan.bytes;
          break;
        case "flush":
          this.performFlush();
          break;
      }
      return BLKIF_RSP.okay;
    } catch (error) {
      this.#counters.ioErrors++;
      this.#lastError = error instanceof Error ? error.message : String(error);
      return BLKIF_RSP.error;
    }
  }

  /** Reads straight into the guest pages (marking them dirty). */
  #read(sector: bigint, extents: Extent[]): void {
    let offset = Number(sector) * SECTOR_SIZE;
    for (const extent of extents) {
      this.disk.readAt(offset, this.mem.writable(extent.gpa, extent.length));
      offset += extent.length;
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

function readCounters(reader: StateReader): BlockCounters {
  const counters = zeroCounters();
  for (const name of COUNTER_NAMES) counters[name] = reader.count(name);
  return counters;
}
