/**
 * Fencing on shared storage (shared-disk mode): a lease file beside the
 * shared image. The holder renews it often; a standby may claim it only after
 * seeing no renewal for the whole lease time; a holder that cannot renew, or
 * finds the lease taken at a higher generation, must stop before it releases
 * any more output. So at no moment do two VMs release output.
 *
 * Times are each host's own monotonic clock; only "did the counter change"
 * crosses hosts, so the hosts' clocks need not agree.
 * @module
 */

/** What the lease file holds. */
export interface LeaseRecord {
  owner: string;
  generation: number;
  /** Bumped at every renewal. */
  counter: number;
}

/** The lease belongs to someone else now. */
export class LeaseLostError extends Error {
  constructor(readonly record: LeaseRecord | null, why: string) {
    super(`lost the shared-disk lease: ${why}`);
    this.name = "LeaseLostError";
  }
}

export interface LeaseOptions {
  /** How long a silent lease stays valid, ms (default 500). */
  leaseMs?: number;
  /** Clock, ms (default performance.now). */
  now?: () => number;
}

/** Reads a lease file; null when absent. Throws on garbage. */
export function readLease(path: string): LeaseRecord | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  const v = JSON.parse(text) as Partial<LeaseRecord>;
  if (
    typeof v.owner !== "string" || !Number.isSafeInteger(v.generation) ||
    !Number.isSafeInteger(v.counter)
  ) {
    throw new Error(`lease file ${path} is malformed`);
  }
  return v as LeaseRecord;
}

function writeLease(path: string, record: LeaseRecord): void {
  const tmp = `${path}.${record.owner}.tmp`;
  Deno.writeTextFileSync(tmp, JSON.stringify(record));
  Deno.renameSync(tmp, path);
}

/** The lease as its holder sees it. */
export class LeaseHolder {
  readonly leaseMs: number;
  #now: () => number;
  #record: LeaseRecord;
  #renewedAt: number;

  private constructor(readonly path: string, record: LeaseRecord, options: LeaseOptions) {
    this.leaseMs = options.leaseMs ?? 500;
    this.#now = options.now ?? (() => performance.now());
    this.#record = record;
    this.#renewedAt = this.#now();
  }

  /** Takes a fresh lease (first start: no lease file, or our own). */
  static create(path: string, owner: string, generation: number, options: LeaseOptions = {}) {
    const current = readLease(path);
    if (current && current.owner !== owner && current.generation >= generation) {
      throw new LeaseLostError(
        current,
        `held by ${current.owner} at generation ${current.generation}`,
      );
    }
    const record = { owner, generation, counter: 0 };
    writeLease(path, record);
    return new LeaseHolder(path, record, options);
  }

  /** Adopts a lease won by a {@link LeaseClaimant}. */
  static adopt(path: string, record: LeaseRecord, options: LeaseOptions = {}): LeaseHolder {
    return new LeaseHolder(path, record, options);
  }

  get generation(): number {
    return this.#record.generation;
  }

  /** Renews; throws LeaseLostError when another holder has taken the lease. */
  renew(): void {
    const current = readLease(this.path);
    if (
      !current || current.owner !== this.#record.owner ||
      current.generation !== this.#record.generation
    ) {
      throw new LeaseLostError(current, current ? `now held by ${current.owner}` : "file removed");
    }
    this.#record = { ...this.#record, counter: this.#record.counter + 1 };
    writeLease(this.path, this.#record);
    this.#renewedAt = this.#now();
  }

  /**
   * True while output may be released: the last renewal is recent enough
   * that no claimant can have taken over (half the lease time).
   */
  valid(): boolean {
    return this.#now() - this.#renewedAt < this.leaseMs / 2;
  }
}

/** A standby watching the lease, ready to claim it once it goes silent. */
export class LeaseClaimant {
  readonly leaseMs: number;
  #now: () => number;
  #last: LeaseRecord | null;
  #changedAt: number;

  constructor(readonly path: string, readonly owner: string, options: LeaseOptions = {}) {
    this.leaseMs = options.leaseMs ?? 500;
    this.#now = options.now ?? (() => performance.now());
    this.#last = readLease(path);
    this.#changedAt = this.#now();
  }

  /** Reads the lease file and notes whether it changed. Call often. */
  observe(): void {
    const current = readLease(this.path);
    if (JSON.stringify(current) !== JSON.stringify(this.#last)) {
      this.#last = current;
      this.#changedAt = this.#now();
    }
  }

  /** Milliseconds since the lease last changed. */
  silenceMs(): number {
    return this.#now() - this.#changedAt;
  }

  /**
   * Claims the lease if it has been silent for the whole lease time, at a
   * generation above every one seen. Returns the holder, or null if the
   * current holder is still renewing.
   */
  tryClaim(minGeneration: number, options: LeaseOptions = {}): LeaseHolder | null {
    this.observe();
    if (this.#last && this.silenceMs() < this.leaseMs) return null;
    const generation = Math.max(minGeneration, (this.#last?.generation ?? 0) + 1);
    const record = { owner: this.owner, generation, counter: 0 };
    writeLease(this.path, record);
    return LeaseHolder.adopt(this.path, record, {
      leaseMs: this.leaseMs,
      now: this.#now,
      ...options,
    });
  }
}
