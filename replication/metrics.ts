/**
 * Timing samples of the replication engine (pause, per-stage times, output
 * latency), kept in bounded windows and summarized as p50/p99/max for
 * `kemari status --json` and the benchmarks.
 * @module
 */

export interface Summary {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/** Bounded windows of samples by name. */
export class Metrics {
  #windows = new Map<string, number[]>();
  #totals = new Map<string, number>();

  constructor(readonly size = 4096) {}

  add(name: string, value: number): void {
    let w = this.#windows.get(name);
    if (!w) this.#windows.set(name, w = []);
    w.push(value);
    if (w.length > this.size) w.splice(0, w.length - this.size);
    this.#totals.set(name, (this.#totals.get(name) ?? 0) + 1);
  }

  /** Count of samples ever added under `name`. */
  total(name: string): number {
    return this.#totals.get(name) ?? 0;
  }

  summary(): Record<string, Summary> {
    const out: Record<string, Summary> = {};
    for (const [name, w] of this.#windows) {
      const s = [...w].sort((a, b) => a - b);
      const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))];
      out[name] = { count: this.total(name), p50: at(0.5), p99: at(0.99), max: s[s.length - 1] };
    }
    return out;
  }

  reset(): void {
    this.#windows.clear();
    this.#totals.clear();
  }
}
