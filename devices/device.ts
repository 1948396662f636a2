/**
 * What every paravirtual device backend offers the VMM.
 *
 * Backends run on the VMM's main thread. The VMM calls {@link Device.service}
 * when the guest rings the device's doorbell (and after a restore); a backend
 * finishes each request it takes inside one service() call, so between two
 * calls no request is half done and no backend writes guest memory. That is
 * what lets a save happen between any two calls.
 * @module
 */

/** Plain, JSON-serialisable state of one device. */
export type DeviceState = Record<string, unknown>;

/** A device state failed validation on restore. */
export class DeviceStateError extends Error {
  constructor(device: string, message: string) {
    super(`${device}: invalid saved state: ${message}`);
    this.name = "DeviceStateError";
  }
}

export interface Device {
  /** Short unique name, e.g. "console", "block". */
  readonly name: string;
  /** Takes and completes everything the guest has posted. Returns true if it posted responses. */
  service(): boolean;
  /** Plain state: ring positions, counters, held requests. */
  save(): DeviceState;
  /** Validates `state` as untrusted input, then adopts it. Throws DeviceStateError. */
  restore(state: unknown): void;
}

/** A device event as taps see it (see taps/types.ts). */
export interface DeviceEvent {
  device: "disk" | "net" | "console";
  direction: "in" | "out";
  /** "bytes" (console), "write", "flush", "read" (disk), "frame" (net). */
  kind: string;
  bytes: number;
  sector?: bigint;
  /** The payload (a view: observers copy what they keep). */
  data?: Uint8Array;
}

/** Called when a device event happens: output leaving, input arriving. */
export type DeviceObserver = (event: DeviceEvent) => void;
