/**
 * The back end of a Xen generic shared ring (`DEFINE_RING_TYPES`) living in
 * one page of guest RAM.
 *
 * Shared header: req_prod@0, req_event@4, rsp_prod@8, rsp_event@12, padding
 * to 64, then `nr_ents` slots of max(request, response) bytes. Indexes are
 * free-running u32s. The guest owns req_prod and rsp_event; the backend owns
 * req_event and rsp_prod. The backend's own positions (`req_cons`,
 * `rsp_prod_pvt`) are private: the guest can neither see nor corrupt them.
 *
 * Anything read from the shared page is untrusted and may change under our
 * feet, so requests are copied out before anyone looks at them.
 * @module
 */

import type { GuestMemory } from "../hypervisor/guest_memory.ts";
import { PAGE_SIZE } from "../machine/layout.ts";
import { SharedWords, u32Distance } from "./shared_words.ts";

/** Bytes of the shared ring header before the first slot. */
export const RING_HEADER_BYTES = 64;

/** Offsets of the shared ring header words. */
export const RING = {
  reqProd: 0,
  reqEvent: 4,
  rspProd: 8,
  rspEvent: 12,
} as const;

/** Result of {@link BackRing.pendingRequests}. */
export type PendingRequests =
  | { readonly ok: true; readonly count: number }
  | {
    /** The guest claims more unconsumed requests than the ring holds. */
    readonly ok: false;
    readonly reqProd: number;
    readonly reqCons: number;
    readonly count: number;
  };

/**
 * The backend's private ring positions, for save/restore. Every request up
 * to req_cons was either answered (rsp_prod_pvt), abandoned by an overrun
 * (skipped), or is still owed a response, so
 * `req_cons - rsp_prod_pvt - skipped` (mod 2^32) counts the owed ones.
 */
export interface BackRingIndexes {
  reqCons: number;
  rspProdPvt: number;
  /** Requests abandoned by overruns, modulo 2^32. */
  skipped: number;
}

/** `__RING_SIZE`: slots of `entrySize` bytes that fit in `bytes`, rounded down to a power of 2. */
export function ringEntries(bytes: number, entrySize: number): number {
  const fit = Math.floor((bytes - RING_HEADER_BYTES) / entrySize);
  if (fit < 1) throw new RangeError(`ring entry of ${entrySize} bytes does not fit in ${bytes}`);
  return 2 ** Math.floor(Math.log2(fit));
}

/** Back-end view of a one-page Xen shared ring. */
export class BackRing {
  /** Slots in the ring (a power of 2). */
  readonly nrEnts: number;
  /** Bytes per slot: max(request, response). */
  readonly entrySize: number;
  readonly #words: SharedWords;
  #reqCons = 0;
  #rspProdPvt = 0;
  #skipped = 0;

  /** A ring in the page at `gpa` with the given request and response sizes. */
  constructor(
    readonly mem: GuestMemory,
    readonly gpa: number,
    readonly requestSize: number,
    readonly responseSize: number,
  ) {
    for (const size of [requestSize, responseSize]) {
      if (!Number.isSafeInteger(size) || size <= 0) {
        throw new RangeError(`bad ring entry size ${size}`);
      }
    }
    if (gpa % PAGE_SIZE !== 0) {
      throw new RangeError(`ring at 0x${gpa.toString(16)} is not page aligned`);
    }
    mem.check(gpa, PAGE_SIZE);
    this.entrySize = Math.max(requestSize, responseSize);
    this.nrEnts = ringEntries(PAGE_SIZE, this.entrySize);
    this.#words = new SharedWords(mem);
  }

  /** The next request the backend will take. */
  get reqCons(): number {
    return this.#reqCons;
  }

  /** The next response slot the backend will fill. */
  get rspProdPvt(): number {
    return this.#rspProdPvt;
  }

  /**
   * Requests the guest has published and the backend has not taken. An
   * overrun (`req_prod - req_cons > nr_ents`) is reported, not thrown: the
   * caller counts a bad request and calls {@link skipTo}.
   */
  pendingRequests(): PendingRequests {
    const reqProd = this.#words.load(this.gpa + RING.reqProd);
    const count = u32Distance(reqProd, this.#reqCons);
    if (count > this.nrEnts) return { ok: false, reqProd, reqCons: this.#reqCons, count };
    return { ok: true, count };
  }

  /**
   * Abandons every request up to `reqProd` (after an overrun): they get no
   * responses, and rsp_prod_pvt stays where it is.
   */
  skipTo(reqProd: number): void {
    this.#skipped = (this.#skipped + u32Distance(reqProd, this.#reqCons)) >>> 0;
    this.#reqCons = reqProd >>> 0;
  }

  /** Copies the request at req_cons out of guest memory and advances req_cons. */
  takeRequest(): Uint8Array {
    const copy = this.peekRequest();
    this.#reqCons = (this.#reqCons + 1) >>> 0;
    return copy;
  }

  /**
   * Copies the request at req_cons out of guest memory without taking it,
   * so the caller can decide whether to take it now. The caller then either
   * leaves it (req_cons does not move) or calls {@link consumeRequest} and
   * works from this copy; it must not read the slot again, as the guest may
   * have changed it meanwhile.
   */
  peekRequest(): Uint8Array {
    return this.mem.read(this.#slot(this.#reqCons), this.requestSize).slice();
  }

  /** Advances req_cons past the request last returned by {@link peekRequest}. */
  consumeRequest(): void {
    this.#reqCons = (this.#reqCons + 1) >>> 0;
  }

  /** Writes a response into the slot at rsp_prod_pvt (not yet visible to the guest). */
  putResponse(response: Uint8Array): void {
    if (response.length !== this.responseSize) {
      throw new RangeError(`response is ${response.length} bytes, expected ${this.responseSize}`);
    }
    this.mem.write(this.#slot(this.#rspProdPvt), response);
    this.#rspProdPvt = (this.#rspProdPvt + 1) >>> 0;
  }

  /**
   * Publishes the responses written so far (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
   * Returns true if the guest asked to be notified (rsp_event crossed).
   */
  pushResponses(): boolean {
    const old = this.#words.load(this.gpa + RING.rspProd);
    const next = this.#rspProdPvt;
    if (old === next) return false;
    this.#words.store(this.gpa + RING.rspProd, next);
    const event = this.#words.load(this.gpa + RING.rspEvent);
    return u32Distance(next, event) < u32Distance(next, old);
  }

  /**
   * `RING_FINAL_CHECK_FOR_REQUESTS`: if nothing is pending, asks the guest
   * to notify on its next request (req_event = req_cons + 1), then looks
   * again to close the race. Returns true if there is work (or an overrun).
   */
  finalCheckForRequests(): boolean {
    if (this.#unconsumed()) return true;
    const want = (this.#reqCons + 1) >>> 0;
    if (this.#words.load(this.gpa + RING.reqEvent) !== want) {
      this.#words.store(this.gpa + RING.reqEvent, want);
    }
    return this.#unconsumed();
  }

  /** The private positions, for save. */
  indexes(): BackRingIndexes {
    return { reqCons: this.#reqCons, rspProdPvt: this.#rspProdPvt, skipped: this.#skipped };
  }

  /**
   * Adopts saved private positions. The caller has validated them (see
   * {@link ringIndexProblem}).
   */
  adopt(indexes: BackRingIndexes): void {
    this.#reqCons = indexes.reqCons >>> 0;
    this.#rspProdPvt = indexes.rspProdPvt >>> 0;
    this.#skipped = indexes.skipped >>> 0;
  }

  #unconsumed(): boolean {
    return this.#words.load(this.gpa + RING.reqProd) !== this.#reqCons;
  }

  #slot(index: number): number {
    return this.gpa + RING_HEADER_BYTES + (index & (this.nrEnts - 1)) * this.entrySize;
  }
}

/** Requests taken but not yet answered: `req_cons - skipped - rsp_prod_pvt` (mod 2^32). */
export function owedResponses(indexes: BackRingIndexes): number {
  return u32Distance(u32Distance(indexes.reqCons, indexes.skipped), indexes.rspProdPvt);
}

/**
 * Why a set of saved private positions is impossible, or null if it is
 * possible: the owed responses must number 0..nr_ents.
 */
export function ringIndexProblem(indexes: BackRingIndexes, nrEnts: number): string | null {
  const owed = owedResponses(indexes);
  if (owed > nrEnts) {
    return `rsp_prod_pvt ${indexes.rspProdPvt} is ahead of req_cons ${indexes.reqCons}` +
      ` (less ${indexes.skipped} skipped) or more than ${nrEnts} behind`;
  }
  return null;
}
