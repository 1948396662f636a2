/**
 * A test stand-in for the replication engine's output gate: the test sets
 * holding, epoch and bounds; every outputHeld and mayHold call is recorded.
 * @module
 */

import type { OutputGate } from "../../devices/mod.ts";

export class FakeGate implements OutputGate {
  holding = true;
  epoch = 1;
  /** mayHold() says yes while heldBytes < maxBytes and heldCount < maxCount. */
  maxBytes = Number.POSITIVE_INFINITY;
  maxCount = Number.POSITIVE_INFINITY;
  /** Every outputHeld(device, bytes) call, in order. */
  readonly held: [string, number][] = [];
  /** Every mayHold(device, heldBytes, heldCount) call, in order. */
  readonly asked: [string, number, number][] = [];

  constructor(init: Partial<Pick<FakeGate, "holding" | "epoch" | "maxBytes" | "maxCount">> = {}) {
    Object.assign(this, init);
  }

  outputHeld(device: string, bytes: number): void {
    this.held.push([device, bytes]);
  }

  mayHold(device: string, heldBytes: number, heldCount: number): boolean {
    this.asked.push([device, heldBytes, heldCount]);
    return heldBytes < this.maxBytes && heldCount < this.maxCount;
  }
}
