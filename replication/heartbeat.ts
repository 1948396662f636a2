/**
 * Heartbeats on their own links (never queued behind bulk data): each side
 * sends HEARTBEAT every `intervalMs` on every heartbeat link it has and
 * reports every one it receives, per path.
 * @module
 */

import type { Link } from "../transport/types.ts";
import { decodeMessage, encodeMessage } from "./protocol.ts";

export interface HeartbeatState {
  generation: () => bigint;
  committedEpoch: () => bigint;
  /** A heartbeat (or anything authenticated) arrived on `path`. */
  heard: (path: string, generation: bigint) => void;
  log: (line: string) => void;
}

/** Runs heartbeats on one link until it fails or `stop()`. */
export class HeartbeatLink {
  #seq = 1n;
  #timer: ReturnType<typeof setInterval>;
  #closed = false;
  readonly done: Promise<void>;

  constructor(
    readonly path: string,
    readonly link: Link,
    readonly intervalMs: number,
    readonly state: HeartbeatState,
  ) {
    this.#timer = setInterval(() => this.#send(), intervalMs);
    this.#send();
    this.done = this.#receive();
  }

  #send(): void {
    if (this.#closed) return;
    const msg = encodeMessage({
      type: "HEARTBEAT",
      seq: this.#seq++,
      generation: this.state.generation(),
      timeNs: BigInt(Math.floor(performance.now() * 1e6)),
      committedEpoch: this.state.committedEpoch(),
    });
    this.link.send([msg]).catch(() => this.stop());
  }

  async #receive(): Promise<void> {
    try {
      for (;;) {
        const bytes = await this.link.receive();
        if (bytes === null) break;
        const m = decodeMessage(bytes);
        if (m.type === "HEARTBEAT") this.state.heard(this.path, m.generation);
        else if (m.type === "BYE") break;
        else throw new Error(`${m.type} on a heartbeat link`);
      }
    } catch (e) {
      if (!this.#closed) {
        this.state.log(
          `kemari: heartbeat path ${this.path}: ${e instanceof Error ? e.message : e}`,
        );
      }
    } finally {
      this.stop();
    }
  }

  stop(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.link.close();
  }
}
