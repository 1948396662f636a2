/**
 * The network backend: the netif tx ring at GPA.netTx and rx ring at
 * GPA.netRx (Xen layout, 256 slots each), bridged to a TAP device (or any
 * {@link FrameIo}).
 *
 * tx (guest → network). {@link NetBackend.service} takes each tx request,
 * validates it (the page must lie in free guest memory, `offset + size` in
 * one page, `size` from 14 to mtu + 14, no flags but data_validated), copies
 * the frame out of guest memory and answers the request at once: from then
 * on the frame is the VMM's. Sending it is an output event under the
 * output-commit rule, exactly like console bytes:
 *
 * - unprotected (the gate does not hold), the frame is written to the TAP
 *   right after the responses are published;
 * - protected, it is *held*, tagged with the gate's epoch (the checkpoint
 *   that covers it), the gate is told (`outputHeld`), and it is written at
 *   {@link NetBackend.release}(E) for E ≥ its epoch, in order. When the
 *   gate's `mayHold` says no, requests stay in the ring and the guest waits.
 *
 * Held frames are device state: they travel in every checkpoint, and a
 * standby that takes over sends them again ({@link NetBackend.reissueHeld}),
 * at least once, in order.
 *
 * rx (network → guest). Receiving is an input event, delivered without a
 * checkpoint. An async pump ({@link NetBackend.start}) reads frames from
 * the TAP and hands each to {@link NetBackend.receive}, which copies it into
 * the next rx buffer the guest posted (from offset 0, through
 * GuestMemory.writable so the page is marked dirty), answers that request
 * with status = frame length and notifies the guest. A frame is dropped (and
 * counted) when no buffer is posted, when it is not for the guest's MAC (not
 * unicast to it, broadcast or multicast; unless `promiscuous`), when it is
 * shorter than an Ethernet header or longer than mtu + 14, and whenever the
 * backend is not {@link NetBackend.active} (a standby's backend drops all
 * until takeover).
 *
 * Unlike the other backends, the pump writes guest memory outside
 * service(). So the VMM calls {@link NetBackend.freeze} before it pauses
 * the guest for a checkpoint or a save: received frames are then queued
 * (bounded, oldest dropped) instead of delivered, and guest memory and the
 * rx ring stay still; {@link NetBackend.thaw} (or the next service())
 * delivers the queue. Queued frames are input, not state: they are not
 * saved (a takeover loses them, as a network may).
 *
 * {@link NetBackend.announce} sends a gratuitous ARP request and an
 * unsolicited ARP reply for the guest's MAC and IPv4 address (or, with no
 * known address, a RARP request as a bare MAC announcement), so that a
 * bridge moves its forwarding entry for the guest's MAC to this host's port
 * after a takeover. The TAP device itself keeps a MAC of its own.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { GPA, PAGE_SIZE } from "../machine/layout.ts";
import type { Device, DeviceObserver, DeviceState } from "./device.ts";
import type { EventPage } from "./events.ts";
import {
  decodeRxRequest,
  decodeTxRequest,
  encodeRxResponse,
  encodeTxResponse,
  NETIF_RSP,
  NETIF_RX_REQUEST_SIZE,
  NETIF_RX_RESPONSE_SIZE,
  NETIF_TX_REQUEST_SIZE,
  NETIF_TX_RESPONSE_SIZE,
  type NetifTxRequest,
  NETTXF,
} from "./netif.ts";
import {
  checkEpoch,
  type HeldSummary,
  holdEpoch,
  OPEN_GATE,
  type OutputGate,
} from "./output_gate.ts";
import { BackRing, type BackRingIndexes, type PendingRequests, ringIndexProblem } from "./ring.ts";
import { encodeBase64, StateReader } from "./state_reader.ts";

/** Where frames come from and go to: a TAP device, or a fake in tests. */
export interface FrameIo {
  /** Sends one whole Ethernet frame (no FCS). Throws on failure. */
  write(frame: Uint8Array): void;
  /** The next frame, or null once closed. At most one read is pending at a time. */
  read(): Promise<Uint8Array | null>;
  /** Closes; a pending read resolves with null. */
  close(): void | Promise<void>;
}

/** Bytes of an Ethernet II header (destination, source, ethertype). */
export const ETH_HEADER = 14;
/** Smallest MTU accepted (IPv4's minimum). */
export const NET_MIN_MTU = 68;
/** Largest MTU: a frame must fit in one page. */
export const NET_MAX_MTU = PAGE_SIZE - ETH_HEADER;
/** Default MTU. */
export const NET_DEFAULT_MTU = 1500;
/** Default bound of the queue of frames received while frozen. */
export const NET_RX_QUEUE_FRAMES = 256;

/**
 * Hard caps on held tx frames, whatever the gate says: service() leaves
 * requests in the ring rather than pass them, and restore() refuses a state
 * beyond them.
 */
export const NET_HELD_CAP = { bytes: 64 * 1024 * 1024, count: 16384 } as const;

const ETHERTYPE_ARP = 0x0806;
const ETHERTYPE_RARP = 0x8035;
/** Frames are padded to the Ethernet minimum (without FCS). */
const ETH_MIN_FRAME = 60;

/** Why the last service() left tx requests in the ring. */
export type NetStall =
  /** The gate's mayHold() said no (or {@link NET_HELD_CAP} was reached). */
  | "hold-limit"
  /** Frames are held but the gate no longer holds: the engine must releaseAll() first. */
  | "release-pending";

/** What {@link NetBackend.receive} did with a frame. */
export type RxOutcome = "delivered" | "queued" | "dropped";

/** Net counters for status and metrics. */
export interface NetCounters {
  /** Frames written to the TAP (guest frames, re-issued frames and announcements). */
  txFrames: number;
  txBytes: number;
  /** Guest frames that were held under the gate. */
  txHeld: number;
  /** TAP writes that failed (the frame is lost). */
  txErrors: number;
  /** Frames copied into guest rx buffers. */
  rxFrames: number;
  rxBytes: number;
  /** Frames dropped because no rx buffer was posted. */
  rxNoBuffer: number;
  /** Frames dropped because the backend was inactive. */
  rxInactive: number;
  /** Frames dropped because they were not for the guest's MAC. */
  rxFiltered: number;
  /** Frames dropped for being shorter than 14 or longer than mtu + 14 bytes. */
  rxMalformed: number;
  /** Oldest frames dropped from a full queue while frozen. */
  rxQueueDropped: number;
  /** TAP read errors (the pump stopped). */
  rxErrors: number;
  /** Requests refused as malformed, tx and rx (each also counted on the event page). */
  badRequests: number;
  /** Ring overruns, tx and rx. */
  overruns: number;
  /** announce() calls that sent something. */
  announcements: number;
}

const COUNTER_NAMES: readonly (keyof NetCounters)[] = [
  "txFrames",
  "txBytes",
  "txHeld",
  "txErrors",
  "rxFrames",
  "rxBytes",
  "rxNoBuffer",
  "rxInactive",
  "rxFiltered",
  "rxMalformed",
  "rxQueueDropped",
  "rxErrors",
  "badRequests",
  "overruns",
  "announcements",
];

function zeroCounters(): NetCounters {
  const counters = {} as NetCounters;
  for (const name of COUNTER_NAMES) counters[name] = 0;
  return counters;
}

/** Options of {@link NetBackend}. */
export interface NetBackendOptions {
  /** Largest IP packet (default 1500; 68..4082): frames are at most mtu + 14 bytes. */
  mtu?: number;
  /** The guest's IPv4 address, for announce() (default unknown). */
  ip?: string | null;
  /** Start active (default true; a standby's backend starts inactive). */
  active?: boolean;
  /** Deliver every frame, not only those for the guest's MAC (default false). */
  promiscuous?: boolean;
  /** Frames queued while frozen before the oldest is dropped (default 256). */
  rxQueueFrames?: number;
  /** Most tx requests taken in one service() (default 4 rings' worth). */
  maxRequestsPerService?: number;
}

/** A held tx frame. */
interface HeldFrame {
  epoch: number;
  frame: Uint8Array;
}

/** Backend of the guest's network device. */
export class NetBackend implements Device {
  readonly name = "net";
  /** The tx ring at GPA.netTx. */
  readonly tx: BackRing;
  /** The rx ring at GPA.netRx. */
  readonly rx: BackRing;
  readonly #mac: Uint8Array;
  readonly #mtu: number;
  readonly #promiscuous: boolean;
  readonly #queueMax: number;
  readonly #budget: number;
  #ip: Uint8Array | null = null;
  #active: boolean;
  #frozen = false;
  #queue: Uint8Array[] = [];
  #gate: OutputGate = OPEN_GATE;
  #held: HeldFrame[] = [];
  #heldBytes = 0;
  #stall: NetStall | null = null;
  #needsService = false;
  #counters = zeroCounters();
  #lastError = "";
  #rxUnpublished = 0;
  #pump: Promise<void> | null = null;
  #pumpDone = false;
  #closing = false;

  /** A network device whose frames go to and come from `tap`; `mac` is the guest's. */
  constructor(
    readonly mem: GuestMemory,
    readonly events: EventPage,
    readonly tap: FrameIo,
    mac: string | Uint8Array,
    options: NetBackendOptions = {},
  ) {
    this.#mac = parseMac(mac);
    this.#mtu = options.mtu ?? NET_DEFAULT_MTU;
    if (!Number.isSafeInteger(this.#mtu) || this.#mtu < NET_MIN_MTU || this.#mtu > NET_MAX_MTU) {
      throw new RangeError(`MTU ${this.#mtu} is outside ${NET_MIN_MTU}..${NET_MAX_MTU}`);
    }
    this.#queueMax = options.rxQueueFrames ?? NET_RX_QUEUE_FRAMES;
    if (!Number.isSafeInteger(this.#queueMax) || this.#queueMax < 0) {
      throw new RangeError(`rxQueueFrames ${this.#queueMax} must be a non-negative integer`);
    }
    this.tx = new BackRing(mem, GPA.netTx, NETIF_TX_REQUEST_SIZE, NETIF_TX_RESPONSE_SIZE);
    this.rx = new BackRing(mem, GPA.netRx, NETIF_RX_REQUEST_SIZE, NETIF_RX_RESPONSE_SIZE);
    this.#budget = options.maxRequestsPerService ?? 4 * this.tx.nrEnts;
    if (!Number.isSafeInteger(this.#budget) || this.#budget < 1) {
      throw new RangeError(`maxRequestsPerService ${this.#budget} must be a positive integer`);
    }
    this.#active = options.active ?? true;
    this.#promiscuous = options.promiscuous ?? false;
    this.setIp(options.ip ?? null);
  }

  /** The guest's MAC, "xx:xx:xx:xx:xx:xx". */
  get mac(): string {
    return formatMac(this.#mac);
  }

  /** The largest IP packet the device carries. */
  get mtu(): number {
    return this.#mtu;
  }

  /** The guest's IPv4 address as the VMM knows it, or null. */
  get ip(): string | null {
    return this.#ip === null ? null : this.#ip.join(".");
  }

  /** Sets (or, with null, forgets) the guest's IPv4 address used by announce(). */
  setIp(ip: string | null): void {
    if (ip === null) {
      this.#ip = null;
      return;
    }
    const parsed = parseIpv4(ip);
    if (parsed === null) throw new RangeError(`${JSON.stringify(ip)} is not an IPv4 address`);
    this.#ip = parsed;
  }

  // ---- tx ----------------------------------------------------------------

  /**
   * Delivers frames queued while frozen (if active and not frozen), then
   * takes and answers every published tx request (up to the budget) and
   * notifies the guest once. Unprotected, the frames are written to the TAP
   * after the responses are published; protected, they are held and the
   * gate is told. Stops early, leaving requests in the ring, when a frame
   * may not be held now or held frames wait for releaseAll() (see
   * {@link stalled}). True if it posted responses (tx or rx).
   */
  service(): boolean {
    const delivered = this.#flushQueue() > 0;
    return this.#serviceTx() || delivered;
  }

  #serviceTx(): boolean {
    let budget = this.#budget;
    let answered = 0;
    const send: Uint8Array[] = [];
    const heldNow: number[] = [];
    this.#needsService = false;
    this.#stall = null;
    const holding = this.#gate.holding;
    const epoch = holding ? holdEpoch(this.#gate, this.#held.at(-1)?.epoch) : 0;
    for (;;) {
      const pending = this.tx.pendingRequests();
      if (!pending.ok) {
        this.#overrun(this.tx, "tx", pending);
        budget--;
      }
      const count = pending.ok ? Math.min(pending.count, budget) : 0;
      let taken = 0;
      while (taken < count) {
        const raw = this.tx.peekRequest();
        const request = decodeTxRequest(raw);
        const problem = this.#txProblem(request);
        if (problem === null) {
          const stall = this.#outputStall(holding);
          if (stall !== null) {
            this.#stall = stall;
            break;
          }
        }
        this.tx.consumeRequest();
        taken++;
        answered++;
        if (problem !== null) {
          this.#counters.badRequests++;
          this.events.badRequest(`net: tx request id ${request.id}: ${problem}`);
          this.tx.putResponse(encodeTxResponse({ id: request.id, status: NETIF_RSP.error }));
          continue;
        }
        const gpa = request.gref * PAGE_SIZE + request.offset;
        const frame = this.mem.read(gpa, request.size).slice();
        this.tx.putResponse(encodeTxResponse({ id: request.id, status: NETIF_RSP.okay }));
        if (holding) {
          this.#held.push({ epoch, frame });
          this.#heldBytes += frame.length;
          this.#counters.txHeld++;
          heldNow.push(frame.length);
        } else {
          send.push(frame);
        }
      }
      budget -= taken;
      this.tx.pushResponses();
      if (this.#stall !== null) break;
      if (budget <= 0) {
        this.#needsService = this.tx.pendingRequests().count > 0;
        break;
      }
      if (!this.tx.finalCheckForRequests()) break;
    }
    if (answered > 0) this.events.notify();
    for (const frame of send) this.#send(frame);
    for (const bytes of heldNow) this.#gate.outputHeld(this.name, bytes);
    return answered > 0;
  }

  /** Why a tx request is malformed, or null. */
  #txProblem(request: NetifTxRequest): string | null {
    const unsupported = request.flags & ~NETTXF.dataValidated;
    if (unsupported !== 0) {
      const names = Object.entries(NETTXF)
        .filter(([, bit]) => (unsupported & bit) !== 0)
        .map(([name]) => name);
      const unknown = unsupported & ~0xf;
      if (unknown !== 0) names.push(`0x${unknown.toString(16)}`);
      return `unsupported flags ${names.join(", ")}`;
    }
    const page = this.#pageProblem(request.gref);
    if (page !== null) return page;
    if (request.offset + request.size > PAGE_SIZE) {
      return `offset ${request.offset} + size ${request.size} crosses the page end`;
    }
    if (request.size < ETH_HEADER) {
      return `a frame of ${request.size} bytes is shorter than an Ethernet header`;
    }
    if (request.size > this.#mtu + ETH_HEADER) {
      return `a frame of ${request.size} bytes is longer than MTU ${this.#mtu} + ${ETH_HEADER}`;
    }
    return null;
  }

  /** Why page `gref` may not carry frames, or null. */
  #pageProblem(gref: number): string | null {
    const gpa = gref * PAGE_SIZE;
    if (gpa < GPA.guestFree) {
      return `gref 0x${gref.toString(16)} is below free guest memory (0x${
        (GPA.guestFree / PAGE_SIZE).toString(16)
      })`;
    }
    if (gpa + PAGE_SIZE > this.mem.size) return `gref 0x${gref.toString(16)} is beyond RAM`;
    return null;
  }

  /** Why a valid tx request may not be taken now, or null. */
  #outputStall(holding: boolean): NetStall | null {
    if (!holding) return this.#held.length > 0 ? "release-pending" : null;
    const underCap = this.#heldBytes + this.#mtu + ETH_HEADER <= NET_HELD_CAP.bytes &&
      this.#held.length < NET_HELD_CAP.count;
    if (!underCap) return "hold-limit";
    return this.#gate.mayHold(this.name, this.#heldBytes, this.#held.length) ? null : "hold-limit";
  }

  /** The output gate in use (default {@link OPEN_GATE}). */
  get gate(): OutputGate {
    return this.#gate;
  }

  /**
   * Switches the gate; takes effect at the next service(). Held frames stay
   * held: when protection ends the engine calls {@link releaseAll}.
   */
  setGate(gate: OutputGate): void {
    this.#gate = gate;
  }

  /**
   * Writes to the TAP, in order, every held frame of an epoch up to
   * `committedEpoch`, and returns how many were released. Epochs never
   * decrease along the queue, so these are a prefix of it. A frame whose
   * write fails is lost (counted in txErrors), as on a real network.
   *
   * The guest may have requests waiting in the ring (see {@link stalled});
   * it will not ring again for them, so the caller should call service()
   * after.
   */
  release(committedEpoch: number): number {
    checkEpoch(committedEpoch, "committedEpoch");
    return this.#release(committedEpoch);
  }

  /** Writes every held frame, whatever its epoch (protection ends). */
  releaseAll(): number {
    return this.#release(Number.POSITIVE_INFINITY);
  }

  /**
   * On a standby that takes over, right after restore(): sends every held
   * frame of the restored checkpoint (the old primary may have sent some
   * already: at least once, in order). Same as {@link releaseAll}.
   */
  reissueHeld(): number {
    return this.releaseAll();
  }

  #release(committedEpoch: number): number {
    let taken = 0;
    try {
      while (taken < this.#held.length && this.#held[taken].epoch <= committedEpoch) {
        const held = this.#held[taken++];
        this.#heldBytes -= held.frame.length;
        this.#send(held.frame);
      }
    } finally {
      this.#held.splice(0, taken);
    }
    return taken;
  }

  /** Held frames: bytes, count, and the epoch of the oldest (null if none). */
  get held(): HeldSummary {
    return {
      bytes: this.#heldBytes,
      count: this.#held.length,
      oldestEpoch: this.#held[0]?.epoch ?? null,
    };
  }

  /** Why the last service() left tx requests in the ring, or null. */
  get stalled(): NetStall | null {
    return this.#stall;
  }

  /** True when the last service() stopped at its budget with tx requests left. */
  get needsService(): boolean {
    return this.#needsService;
  }

  /** Observer of network events (taps): frames leaving, frames arriving. */
  onEvent: DeviceObserver | undefined;

  /** The held frames that release(committedEpoch) would send, in order. */
  releasable(committedEpoch: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const h of this.#held) {
      if (h.epoch > committedEpoch) break;
      out.push(h.frame);
    }
    return out;
  }

  /** Writes one frame to the TAP; a failure is counted, not thrown. */
  #send(frame: Uint8Array): boolean {
    this.onEvent?.({
      device: "net",
      direction: "out",
      kind: "frame",
      bytes: frame.length,
      data: frame,
    });
    try {
      this.tap.write(frame);
      this.#counters.txFrames++;
      this.#counters.txBytes += frame.length;
      return true;
    } catch (error) {
      this.#counters.txErrors++;
      this.#lastError = error instanceof Error ? error.message : String(error);
      return false;
    }
  }

  // ---- rx ----------------------------------------------------------------

  /** True while received frames are delivered to the guest. */
  get active(): boolean {
    return this.#active;
  }

  /**
   * Activates (takeover) or deactivates (standby) the backend. Deactivating
   * drops the frames queued while frozen.
   */
  setActive(active: boolean): void {
    this.#active = active;
    if (!active && this.#queue.length > 0) {
      this.#counters.rxInactive += this.#queue.length;
      this.#queue = [];
    }
  }

  /** True between freeze() and thaw(). */
  get frozen(): boolean {
    return this.#frozen;
  }

  /** Frames received while frozen, waiting for thaw() or service(). */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Stops delivering into guest memory: received frames are queued (at most
   * `rxQueueFrames`, oldest dropped). Call before pausing the guest for a
   * checkpoint or a save. Idempotent.
   */
  freeze(): void {
    this.#frozen = true;
  }

  /** Ends freeze() and delivers the queued frames; returns how many were delivered. */
  thaw(): number {
    this.#frozen = false;
    return this.#flushQueue();
  }

  /**
   * Takes one frame from the network: delivered into the next posted rx
   * buffer (the guest is notified), queued while frozen, or dropped and
   * counted (inactive, not for the guest, malformed, no buffer posted).
   */
  receive(frame: Uint8Array): RxOutcome {
    if (!this.#active) {
      this.#counters.rxInactive++;
      return "dropped";
    }
    if (frame.length < ETH_HEADER || frame.length > this.#mtu + ETH_HEADER) {
      this.#counters.rxMalformed++;
      return "dropped";
    }
    if (!this.#promiscuous && !this.#forGuest(frame)) {
      this.#counters.rxFiltered++;
      return "dropped";
    }
    if (this.#frozen) {
      this.#enqueue(frame);
      return "queued";
    }
    this.#flushQueue();
    const delivered = this.#deliver(frame);
    this.#publishRx();
    return delivered ? "delivered" : "dropped";
  }

  #forGuest(frame: Uint8Array): boolean {
    if ((frame[0] & 1) !== 0) return true; // broadcast or multicast
    for (let i = 0; i < 6; i++) if (frame[i] !== this.#mac[i]) return false;
    return true;
  }

  #enqueue(frame: Uint8Array): void {
    this.#queue.push(frame);
    while (this.#queue.length > this.#queueMax) {
      this.#queue.shift();
      this.#counters.rxQueueDropped++;
    }
  }

  /** Delivers the queue (unless frozen or inactive); returns frames delivered. */
  #flushQueue(): number {
    if (this.#frozen || !this.#active || this.#queue.length === 0) return 0;
    const queue = this.#queue;
    this.#queue = [];
    let delivered = 0;
    for (const frame of queue) if (this.#deliver(frame)) delivered++;
    this.#publishRx();
    return delivered;
  }

  /**
   * Copies a frame into the next valid posted rx buffer and writes its
   * response (not yet published). Malformed buffers on the way are answered
   * with an error. False (frame dropped) when no buffer is posted.
   */
  #deliver(frame: Uint8Array): boolean {
    this.onEvent?.({
      device: "net",
      direction: "in",
      kind: "frame",
      bytes: frame.length,
      data: frame,
    });
    // Bounded: a guest racing req_prod cannot keep the VMM here.
    for (let tries = 0; tries <= this.rx.nrEnts; tries++) {
      const pending = this.rx.pendingRequests();
      if (!pending.ok) {
        this.#overrun(this.rx, "rx", pending);
        continue;
      }
      if (pending.count === 0) {
        this.#counters.rxNoBuffer++;
        this.rx.finalCheckForRequests();
        return false;
      }
      const request = decodeRxRequest(this.rx.takeRequest());
      const problem = this.#pageProblem(request.gref);
      if (problem !== null) {
        this.#counters.badRequests++;
        this.events.badRequest(`net: rx request id ${request.id}: ${problem}`);
        this.#rxRespond(request.id, NETIF_RSP.error);
        continue;
      }
      this.mem.writable(request.gref * PAGE_SIZE, frame.length).set(frame);
      this.#rxRespond(request.id, frame.length);
      this.#counters.rxFrames++;
      this.#counters.rxBytes += frame.length;
      return true;
    }
    this.#counters.rxNoBuffer++;
    return false;
  }

  /** Writes an rx response (offset 0, no flags), not yet published. */
  #rxRespond(id: number, status: number): void {
    this.rx.putResponse(encodeRxResponse({ id, offset: 0, flags: 0, status }));
    this.#rxUnpublished++;
  }

  /** Publishes the rx responses written since the last call and notifies the guest of them. */
  #publishRx(): void {
    if (this.#rxUnpublished === 0) return;
    this.#rxUnpublished = 0;
    this.rx.pushResponses();
    this.events.notify();
  }

  #overrun(
    ring: BackRing,
    which: string,
    pending: Extract<PendingRequests, { ok: false }>,
  ): void {
    this.#counters.overruns++;
    this.#counters.badRequests++;
    ring.skipTo(pending.reqProd);
    this.events.badRequest(
      `net: ${which} ring overrun: req_prod ${pending.reqProd} is ${pending.count} past req_cons ${pending.reqCons}`,
    );
  }

  /**
   * Starts the rx pump: reads frames from the TAP and passes each to
   * {@link receive} until the TAP is closed or fails (a read error is
   * counted in rxErrors and kept in {@link lastError}). Returns the pump's
   * promise, which never rejects; calling again returns the same promise.
   */
  start(): Promise<void> {
    this.#pump ??= this.#runPump();
    return this.#pump;
  }

  /** True while the rx pump runs. */
  get pumping(): boolean {
    return this.#pump !== null && !this.#pumpDone;
  }

  async #runPump(): Promise<void> {
    try {
      while (!this.#closing) {
        let frame: Uint8Array | null;
        try {
          frame = await this.tap.read();
        } catch (error) {
          this.#counters.rxErrors++;
          this.#lastError = error instanceof Error ? error.message : String(error);
          return;
        }
        if (frame === null || this.#closing) return;
        this.receive(frame);
      }
    } finally {
      this.#pumpDone = true;
    }
  }

  /** Stops the pump and closes the TAP; resolves when nothing is pending. Idempotent. */
  async close(): Promise<void> {
    this.#closing = true;
    await this.tap.close();
    if (this.#pump !== null) await this.#pump;
  }

  // ---- announcements -------------------------------------------------------

  /**
   * Tells the network where the guest now is (after a takeover): with a
   * known IPv4 address, a gratuitous ARP request and an unsolicited ARP
   * reply from the guest's MAC; without one, a RARP request from it. Not
   * subject to the gate (the frames carry no guest output). Returns the
   * number of frames sent.
   */
  announce(): number {
    const frames = this.#ip === null
      ? [rarpAnnouncement(this.#mac)]
      : arpAnnouncements(this.#mac, this.#ip);
    let sent = 0;
    for (const frame of frames) if (this.#send(frame)) sent++;
    if (sent > 0) this.#counters.announcements++;
    return sent;
  }

  // ---- status and state ----------------------------------------------------

  /** A copy of the counters. */
  get counters(): NetCounters {
    return { ...this.#counters };
  }

  /** Message of the last TAP error ("" if none). */
  get lastError(): string {
    return this.#lastError;
  }

  /**
   * Version 1: `{ version, mac, mtu, ip, tx, rx, counters, held }`, with
   * each ring's private indexes `{ reqCons, rspProdPvt, skipped }` and the
   * held frames in order as `{ epoch, frame }` (frame in base64). Frames
   * queued while frozen are input, not state, and are not saved. Save while
   * frozen (or with the pump stopped) for a state consistent with memory.
   */
  save(): DeviceState {
    return {
      version: 1,
      mac: this.mac,
      mtu: this.#mtu,
      ip: this.ip,
      tx: { ...this.tx.indexes() },
      rx: { ...this.rx.indexes() },
      counters: { ...this.#counters },
      held: this.#held.map((h) => ({ epoch: h.epoch, frame: encodeBase64(h.frame) })),
    };
  }

  /**
   * Validates `state` as untrusted input, then adopts it. The MAC and MTU
   * must be this backend's; every request taken must have been answered
   * (no owed responses on either ring); held frames must be valid frames
   * (14..mtu+14 bytes) with non-decreasing epochs within
   * {@link NET_HELD_CAP}. The gate, `active`, the frozen flag and the
   * queue are not part of the state and are left as they are.
   */
  restore(state: unknown): void {
    const reader = StateReader.of(this.name, state);
    reader.version(1);
    const mac = reader.string("mac", 17);
    if (mac !== this.mac) reader.fail(`saved MAC ${mac} is not this device's ${this.mac}`);
    const mtu = reader.int("mtu", 0, 65535);
    if (mtu !== this.#mtu) reader.fail(`saved MTU ${mtu} is not this device's ${this.#mtu}`);
    const ipValue = reader.field("ip");
    let ip: Uint8Array | null = null;
    if (ipValue !== null) {
      ip = parseIpv4(reader.string("ip", 15));
      if (ip === null) reader.fail(`state.ip: ${JSON.stringify(ipValue)} is not an IPv4 address`);
    }
    const tx = readIndexes(reader.object("tx"), this.tx.nrEnts);
    const rx = readIndexes(reader.object("rx"), this.rx.nrEnts);
    const c = reader.object("counters");
    const counters = zeroCounters();
    for (const name of COUNTER_NAMES) counters[name] = c.count(name);
    const held = readHeld(reader, this.#mtu + ETH_HEADER);
    this.tx.adopt(tx);
    this.rx.adopt(rx);
    this.#ip = ip;
    this.#counters = counters;
    this.#held = held;
    this.#heldBytes = held.reduce((sum, h) => sum + h.frame.length, 0);
    this.#stall = null;
    this.#needsService = false;
  }
}

function readIndexes(reader: StateReader, nrEnts: number): BackRingIndexes {
  const indexes = {
    reqCons: reader.u32("reqCons"),
    rspProdPvt: reader.u32("rspProdPvt"),
    skipped: reader.u32("skipped"),
  };
  const problem = ringIndexProblem(indexes, nrEnts);
  if (problem !== null) reader.fail(`${reader.path}: ${problem}`);
  const owed = (indexes.reqCons - indexes.skipped - indexes.rspProdPvt) >>> 0;
  if (owed !== 0) {
    reader.fail(`${reader.path}: ${owed} requests taken but not answered (net answers at once)`);
  }
  return indexes;
}

function readHeld(reader: StateReader, maxFrame: number): HeldFrame[] {
  const held: HeldFrame[] = [];
  let total = 0;
  for (const [i, h] of reader.objects("held", NET_HELD_CAP.count).entries()) {
    const epoch = h.count("epoch");
    const frame = h.bytes("frame", maxFrame);
    if (frame.length < ETH_HEADER) {
      reader.fail(`held[${i}]: a frame of ${frame.length} bytes is shorter than ${ETH_HEADER}`);
    }
    const previous = held.at(-1)?.epoch ?? 0;
    if (epoch < previous) reader.fail(`held[${i}]: epoch ${epoch} is before ${previous}`);
    total += frame.length;
    if (total > NET_HELD_CAP.bytes) reader.fail(`held frames exceed ${NET_HELD_CAP.bytes} bytes`);
    held.push({ epoch, frame });
  }
  return held;
}

// ---- addresses and announcement frames --------------------------------------

/**
 * A unicast MAC from "xx:xx:xx:xx:xx:xx" (or '-' separated) or 6 bytes.
 * Throws RangeError for anything else, a multicast MAC or all zeros.
 */
export function parseMac(mac: string | Uint8Array): Uint8Array {
  let bytes: Uint8Array;
  if (typeof mac === "string") {
    if (!/^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$/.test(mac)) {
      throw new RangeError(`${JSON.stringify(mac)} is not a MAC address`);
    }
    bytes = new Uint8Array(mac.split(/[:-]/).map((part) => parseInt(part, 16)));
  } else {
    if (mac.length !== 6) throw new RangeError(`a MAC address is 6 bytes, not ${mac.length}`);
    bytes = mac.slice();
  }
  if ((bytes[0] & 1) !== 0) throw new RangeError(`MAC ${formatMac(bytes)} is multicast`);
  if (bytes.every((b) => b === 0)) throw new RangeError("MAC 00:00:00:00:00:00 is not valid");
  return bytes;
}

/** "xx:xx:xx:xx:xx:xx" (lower case). */
export function formatMac(mac: Uint8Array): string {
  return [...mac.subarray(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** The 4 bytes of a dotted-quad IPv4 address, or null. */
export function parseIpv4(ip: string): Uint8Array | null {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (match === null) return null;
  const parts = match.slice(1).map(Number);
  if (parts.some((p, i) => p > 255 || (match[i + 1].length > 1 && match[i + 1][0] === "0"))) {
    return null;
  }
  return new Uint8Array(parts);
}

const BROADCAST = new Uint8Array(6).fill(0xff);
const ZERO_MAC = new Uint8Array(6);

/** An Ethernet frame carrying an ARP/RARP packet for IPv4 over Ethernet, padded to 60 bytes. */
export function arpFrame(fields: {
  ethertype?: number;
  destination: Uint8Array;
  source: Uint8Array;
  operation: number;
  senderMac: Uint8Array;
  senderIp: Uint8Array;
  targetMac: Uint8Array;
  targetIp: Uint8Array;
}): Uint8Array {
  const frame = new Uint8Array(ETH_MIN_FRAME);
  const view = new DataView(frame.buffer);
  frame.set(fields.destination, 0);
  frame.set(fields.source, 6);
  view.setUint16(12, fields.ethertype ?? ETHERTYPE_ARP);
  view.setUint16(14, 1); // hardware: Ethernet
  view.setUint16(16, 0x0800); // protocol: IPv4
  frame[18] = 6;
  frame[19] = 4;
  view.setUint16(20, fields.operation);
  frame.set(fields.senderMac, 22);
  frame.set(fields.senderIp, 28);
  frame.set(fields.targetMac, 32);
  frame.set(fields.targetIp, 38);
  return frame;
}

/**
 * A gratuitous ARP request (who-has ip, tell ip) and an unsolicited ARP
 * reply (ip is-at mac), both broadcast from `mac`.
 */
export function arpAnnouncements(mac: Uint8Array, ip: Uint8Array): Uint8Array[] {
  const common = {
    destination: BROADCAST,
    source: mac,
    senderMac: mac,
    senderIp: ip,
    targetIp: ip,
  };
  return [
    arpFrame({ ...common, operation: 1, targetMac: ZERO_MAC }),
    arpFrame({ ...common, operation: 2, targetMac: BROADCAST }),
  ];
}

/** A RARP request ("who is mac") broadcast from `mac`: a MAC announcement without an IP. */
export function rarpAnnouncement(mac: Uint8Array): Uint8Array {
  const zero = new Uint8Array(4);
  return arpFrame({
    ethertype: ETHERTYPE_RARP,
    destination: BROADCAST,
    source: mac,
    operation: 3,
    senderMac: mac,
    senderIp: zero,
    targetMac: mac,
    targetIp: zero,
  });
}
