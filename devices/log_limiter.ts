/**
 * A rate-limited line logger, so that a misbehaving guest cannot flood the
 * host's log: at most `maxPerWindow` lines per one-second window, then one
 * "(N more suppressed)" line when the next window begins (or on flush()).
 * @module
 */

/** Where log lines go. */
export type LogSink = (line: string) => void;

/** Options of {@link RateLimitedLog}. */
export interface RateLimitOptions {
  /** Receives each emitted line (default console.error). */
  logger?: LogSink;
  /** Milliseconds clock (default performance.now). */
  now?: () => number;
  /** Lines per window (default 10). */
  maxPerWindow?: number;
  /** Window length in milliseconds (default 1000). */
  windowMs?: number;
}

/** Logs lines, dropping (and later counting) those over the rate limit. */
export class RateLimitedLog {
  readonly #logger: LogSink;
  readonly #now: () => number;
  readonly #max: number;
  readonly #windowMs: number;
  #windowStart = Number.NEGATIVE_INFINITY;
  #emitted = 0;
  #suppressed = 0;

  /** Defaults: console.error, performance.now, 10 lines per 1000 ms. */
  constructor(options: RateLimitOptions = {}) {
    this.#logger = options.logger ?? ((line) => console.error(line));
    this.#now = options.now ?? (() => performance.now());
    this.#max = options.maxPerWindow ?? 10;
    this.#windowMs = options.windowMs ?? 1000;
  }

  /** Logs `line` unless this window's budget is spent. */
  log(line: string): void {
    const now = this.#now();
    if (now - this.#windowStart >= this.#windowMs) {
      this.flush();
      this.#windowStart = now;
      this.#emitted = 0;
    }
    if (this.#emitted < this.#max) {
      this.#emitted++;
      this.#logger(line);
    } else {
      this.#suppressed++;
    }
  }

  /** Emits the pending "(N more suppressed)" line, if any. */
  flush(): void {
    if (this.#suppressed === 0) return;
    this.#logger(`(${this.#suppressed} more suppressed)`);
    this.#suppressed = 0;
  }

  /** Lines dropped in the current window so far. */
  get suppressed(): number {
    return this.#suppressed;
  }
}
