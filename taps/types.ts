/**
 * Tap plug-ins: modules that watch disk, net and console events (the seed's
 * "event channel tapping"). A tap names the device classes and the direction
 * it monitors, is called on each event, may hold an event until a promise it
 * returns settles (bounded by a timeout), and never changes device state: it
 * gets copies. Output commit is not a tap's business; it belongs to the
 * replication engine and stays on whatever taps do.
 * @module
 */

export type TapDevice = "disk" | "net" | "console";
export type TapDirection = "in" | "out" | "both";

/** One device event as a tap sees it. */
export interface TapEvent {
  device: TapDevice;
  direction: "in" | "out";
  /** What happened: "write", "flush", "read", "bytes" (console), "frame" (net). */
  kind: string;
  bytes: number;
  /** Checkpoint epoch that covers the event (0 when unprotected). */
  epoch: number;
  /** performance.now() when the event was emitted. */
  timeMs: number;
  sector?: bigint;
  /** A copy of the payload, when the device has one. */
  data?: Uint8Array;
}

/** A tap plug-in. */
export interface Tap {
  readonly name: string;
  readonly devices: readonly TapDevice[];
  readonly direction: TapDirection;
  /** Return a promise to hold the event until it settles (or the timeout passes). */
  onEvent(event: TapEvent): void | Promise<unknown>;
  /** Called when the tap is detached. */
  close?(): void | Promise<void>;
}

/** A tap module's default export: a tap, or a factory taking options. */
export type TapModule = Tap | ((options: Record<string, string>) => Tap | Promise<Tap>);
