/**
 * Failure detection: the primary is declared lost only when every configured
 * heartbeat path has been silent for the timeout. Pure: the caller reports
 * what it heard and when, and asks.
 * @module
 */

export class FailureDetector {
  #lastHeard = new Map<string, number>();

  constructor(readonly paths: readonly string[], readonly timeoutMs: number, nowMs: number) {
    if (paths.length === 0) throw new RangeError("at least one heartbeat path is needed");
    if (!(timeoutMs > 0)) throw new RangeError("the failure timeout must be positive");
    for (const p of paths) this.#lastHeard.set(p, nowMs);
  }

  /** Something authenticated arrived on `path` at `nowMs`. */
  heard(path: string, nowMs: number): void {
    if (!this.#lastHeard.has(path)) throw new RangeError(`unknown heartbeat path ${path}`);
    this.#lastHeard.set(path, Math.max(this.#lastHeard.get(path)!, nowMs));
  }

  /** Milliseconds since the most recent message on any path. */
  silenceMs(nowMs: number): number {
    return nowMs - Math.max(...this.#lastHeard.values());
  }

  /** True when every path has been silent for the timeout. */
  lost(nowMs: number): boolean {
    return this.silenceMs(nowMs) >= this.timeoutMs;
  }

  /** Per path: milliseconds of silence. */
  status(nowMs: number): Record<string, number> {
    return Object.fromEntries([...this.#lastHeard].map(([p, t]) => [p, nowMs - t]));
  }
}
