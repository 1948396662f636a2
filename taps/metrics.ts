/**
 * The built-in metrics tap: event counts and bytes per device, direction and
 * kind. Hold times are measured by the bus for every tap (`kemari tap list`).
 * @module
 */

import type { Tap, TapEvent } from "./types.ts";

export interface MetricsTap extends Tap {
  /** "device/direction/kind" -> { events, bytes }. */
  counts(): Record<string, { events: number; bytes: number }>;
}

export function metricsTap(options: Record<string, string> = {}): MetricsTap {
  const counts = new Map<string, { events: number; bytes: number }>();
  return {
    name: options.name ?? "metrics",
    devices: ["disk", "net", "console"],
    direction: "both",
    onEvent(e: TapEvent) {
      const key = `${e.device}/${e.direction}/${e.kind}`;
      const c = counts.get(key) ?? { events: 0, bytes: 0 };
      c.events++;
      c.bytes += e.bytes;
      counts.set(key, c);
    },
    counts: () => Object.fromEntries([...counts].map(([k, v]) => [k, { ...v }])),
  };
}
