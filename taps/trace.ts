/**
 * The built-in trace tap: one JSON line per event to a file
 * (`--tap trace --tap-options file=/tmp/trace.jsonl`).
 * @module
 */

import { TapError } from "./bus.ts";
import type { Tap, TapEvent } from "./types.ts";

export function traceTap(options: Record<string, string> = {}): Tap {
  const path = options.file;
  if (!path) throw new TapError("the trace tap needs file=PATH");
  const file = Deno.openSync(path, { append: true, create: true });
  const encoder = new TextEncoder();
  return {
    name: options.name ?? "trace",
    devices: ["disk", "net", "console"],
    direction: (options.direction as Tap["direction"]) ?? "both",
    onEvent(e: TapEvent) {
      const line = JSON.stringify({
        t: Number(e.timeMs.toFixed(3)),
        device: e.device,
        dir: e.direction,
        kind: e.kind,
        bytes: e.bytes,
        epoch: e.epoch,
        ...(e.sector !== undefined ? { sector: e.sector.toString() } : {}),
      });
      const data = encoder.encode(line + "\n");
      let done = 0;
      while (done < data.length) done += file.writeSync(data.subarray(done));
    },
    close() {
      file.close();
    },
  };
}
