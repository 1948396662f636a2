/**
 * When to take a checkpoint, and which held outputs may go: the pure core of
 * the primary's replication engine. No I/O, no clock: the caller feeds events
 * and the current time and performs the actions it gets back.
 *
 * Modes:
 * - `kemari`: sync before each output. A held output asks for a checkpoint at
 *   once; outputs held while one is in flight share the next.
 * - `remus`: periodic epochs every `intervalMs`; every output waits for the
 *   epoch that covers it.
 * - `hybrid`: like kemari, plus a checkpoint whenever `maxIntervalMs` passes
 *   without one, so a compute-only guest keeps the standby fresh.
 *
 * At most one checkpoint is in flight (the standby stages at most one).
 * @module
 */

export type SyncMode = "kemari" | "remus" | "hybrid";

export interface PolicyOptions {
  mode: SyncMode;
  /** remus: epoch length. */
  intervalMs: number;
  /** hybrid: longest time without a checkpoint. */
  maxIntervalMs: number;
}

export const DEFAULT_POLICY: PolicyOptions = { mode: "kemari", intervalMs: 25, maxIntervalMs: 100 };

/** What the engine should do next. */
export type PolicyAction =
  | { kind: "checkpoint"; epoch: number }
  | { kind: "release"; epoch: number }
  | { kind: "wait"; untilMs: number | null };

/** The checkpoint schedule of one protected VM. */
export class CheckpointPolicy {
  /** Epoch of the next checkpoint: outputs held now are covered by it. */
  #next = 1;
  /** Epoch sent and not yet acknowledged. */
  #inFlight: number | null = null;
  /** Highest acknowledged (committed on the standby) epoch. */
  #committed = 0;
  /** Highest epoch whose outputs were released. */
  #released = 0;
  /** Epoch that held outputs are waiting for (0 = none waiting). */
  #pendingOutputEpoch = 0;
  #lastCheckpointMs: number;
  #forced = false;

  constructor(readonly options: PolicyOptions, nowMs: number) {
    if (!(options.intervalMs > 0) || !(options.maxIntervalMs > 0)) {
      throw new RangeError("checkpoint intervals must be positive");
    }
    this.#lastCheckpointMs = nowMs;
  }

  get nextEpoch(): number {
    return this.#next;
  }
  get inFlight(): number | null {
    return this.#inFlight;
  }
  get committed(): number {
    return this.#committed;
  }

  /** A device now holds an output produced before checkpoint `nextEpoch`. */
  outputHeld(): void {
    this.#pendingOutputEpoch = this.#next;
  }

  /** Ask for a checkpoint soon whatever the mode (e.g. the disk delta grew large). */
  force(): void {
    this.#forced = true;
  }

  /** The next action at time `nowMs`. */
  next(nowMs: number): PolicyAction {
    if (this.#committed > this.#released) return { kind: "release", epoch: this.#committed };
    if (this.#inFlight !== null) return { kind: "wait", untilMs: null };
    const due = this.#dueAt();
    if (this.#forced || (due !== null && nowMs >= due)) {
      return { kind: "checkpoint", epoch: this.#next };
    }
    return { kind: "wait", untilMs: due };
  }

  #dueAt(): number | null {
    const outputs = this.#pendingOutputEpoch >= this.#next;
    switch (this.options.mode) {
      case "kemari":
        return outputs ? this.#lastCheckpointMs : null;
      case "remus":
        return this.#lastCheckpointMs + this.options.intervalMs;
      case "hybrid":
        return outputs
          ? this.#lastCheckpointMs
          : this.#lastCheckpointMs + this.options.maxIntervalMs;
    }
  }

  /** The checkpoint `epoch` was snapshotted (the guest runs again) and is being sent. */
  taken(epoch: number, nowMs: number): void {
    if (epoch !== this.#next || this.#inFlight !== null) {
      throw new Error(`checkpoint ${epoch} taken out of order (next ${this.#next})`);
    }
    this.#inFlight = epoch;
    this.#next = epoch + 1;
    this.#lastCheckpointMs = nowMs;
    this.#forced = false;
  }

  /** The standby acknowledged `epoch`. Returns false for a stale or unknown ack. */
  acknowledged(epoch: number): boolean {
    if (epoch !== this.#inFlight) return false;
    this.#inFlight = null;
    this.#committed = epoch;
    return true;
  }

  /** Outputs up to `epoch` were released. */
  released(epoch: number): void {
    this.#released = Math.max(this.#released, epoch);
  }

  /** The link failed: the in-flight checkpoint will never be acknowledged. */
  linkLost(): void {
    this.#inFlight = null;
  }

  /**
   * A returning standby says it committed `epoch`, the checkpoint that was
   * in flight when the link broke (its ACK was lost): take it as acknowledged.
   */
  acknowledgedLate(epoch: number): boolean {
    if (epoch !== this.#next - 1 || epoch !== this.#committed + 1) return false;
    this.#inFlight = null;
    this.#committed = epoch;
    return true;
  }

  /**
   * The same standby is back holding checkpoint `committed`: number the next
   * checkpoint right after it (it re-sends what the lost one carried).
   */
  rewind(): void {
    this.#inFlight = null;
    this.#next = this.#committed + 1;
    this.#forced = true;
  }
}
