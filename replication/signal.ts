/**
 * A wake-up signal for an async loop: notify() from anywhere, wait() until
 * notified or a deadline passes. A notify with nobody waiting is kept for the
 * next wait, so no wake-up is lost.
 * @module
 */

export class Signal {
  #waiters = new Set<() => void>();
  #pending = false;

  notify(): void {
    if (this.#waiters.size === 0) {
      this.#pending = true;
      return;
    }
    const w = [...this.#waiters];
    this.#waiters.clear();
    for (const f of w) f();
  }

  /** Resolves on the next notify (or at once if one is pending), or after `ms`. */
  wait(ms: number | null): Promise<void> {
    if (this.#pending) {
      this.#pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#waiters.add(wake);
      if (ms !== null) {
        timer = setTimeout(() => {
          this.#waiters.delete(wake);
          resolve();
        }, Math.max(0, ms));
      }
    });
  }
}
