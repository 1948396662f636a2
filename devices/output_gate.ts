/**
 * Output commit, as the device backends see it.
 *
 * An output (console bytes; a disk write or flush in shared-disk mode; later
 * net frames) may leave the VM only after the standby has committed a
 * checkpoint taken after the output was produced. While protection is on, a
 * backend *holds* each output, tagged with {@link OutputGate.epoch} (the
 * number of the next checkpoint, which will cover it), tells the gate, and
 * releases it when the replication engine calls the backend's
 * `release(committedEpoch)`. Held outputs are device state: they travel in
 * every checkpoint, and a standby that takes over re-issues them in order.
 *
 * Unprotected (no gate, or `holding` false), outputs leave at once.
 * @module
 */

/** What a backend needs from the replication engine. */
export interface OutputGate {
  /** True while outputs must be held (protection on). */
  readonly holding: boolean;
  /** Number of the next checkpoint: outputs produced now are covered by it. */
  readonly epoch: number;
  /**
   * A backend now holds a new output. In kemari mode this asks for a sync;
   * in remus mode it only counts.
   */
  outputHeld(device: string, bytes: number): void;
  /**
   * True when the backend may hold more (held bytes and count are under the
   * bounds). When false the backend leaves further requests in the guest's
   * ring, so the guest waits instead of VMM memory growing.
   */
  mayHold(device: string, heldBytes: number, heldCount: number): boolean;
}

/** Limits on held output per device (defaults used by the engine). */
export const HOLD_LIMITS = { bytes: 16 * 1024 * 1024, count: 4096 } as const;

/** A gate that never holds: unprotected operation. */
export const OPEN_GATE: OutputGate = {
  holding: false,
  epoch: 0,
  outputHeld() {},
  mayHold: () => true,
};

/** A backend's held output, for status and the engine. */
export interface HeldSummary {
  /** Bytes held (payload). */
  bytes: number;
  /** Held outputs (console chunks, block requests). */
  count: number;
  /** Epoch of the oldest held output, or null when nothing is held. */
  oldestEpoch: number | null;
}

/** Throws a RangeError unless `epoch` is a non-negative safe integer. */
export function checkEpoch(epoch: number, what: string): void {
  if (!Number.isSafeInteger(epoch) || epoch < 0) {
    throw new RangeError(`${what} ${epoch} is not a non-negative safe integer`);
  }
}

/**
 * The epoch to tag a new held output with: the gate's, but never below the
 * epoch of the newest output already held, so epochs never decrease along a
 * held queue (a gate whose epoch went back only delays a release, never
 * lets an output overtake an earlier one).
 */
export function holdEpoch(gate: OutputGate, newestHeld: number | undefined): number {
  checkEpoch(gate.epoch, "gate epoch");
  return Math.max(gate.epoch, newestHeld ?? 0);
}
