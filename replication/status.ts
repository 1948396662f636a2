/**
 * The status a primary or standby reports (`kemari status`), and its human form.
 * @module
 */

export interface Status {
  role: "primary" | "standby";
  name: string;
  /** primary: unprotected | syncing | protected; standby: connecting | syncing | ready | active. */
  state: string;
  mode: string;
  diskMode: string;
  generation: number;
  /** primary: last acknowledged epoch; standby: last committed epoch. */
  epoch: number;
  /** Guest stop time of the last checkpoint, ms. */
  lastPauseMs: number | null;
  held: { bytes: number; count: number };
  /** primary: time since the standby last committed, ms. */
  standbyLagMs: number | null;
  link: { state: string; peer: string | null; bytesSent: number; bytesReceived: number };
  heartbeat: Record<string, number>;
  checkpoints: number;
  syncProgress: { round: number; pagesSent: number; pagesLeft: number } | null;
  verify: { checked: number; mismatches: number } | null;
  guest: { vcpu: string; console: string };
  /** Timing summaries in ms (primary): stop, harvest, copy, state, send, ack, release, output, pause. */
  metrics?: Record<string, { count: number; p50: number; p99: number; max: number }>;
}

function ms(v: number | null): string {
  return v === null ? "-" : `${v.toFixed(2)} ms`;
}

/** Multi-line human text for a status. */
export function formatStatus(s: Status): string {
  const lines = [
    `${s.name}: ${s.role}, ${s.state} (generation ${s.generation})`,
    `  sync mode      ${s.mode}, disk ${s.diskMode}`,
    `  epoch          ${s.epoch} (${s.checkpoints} checkpoints)`,
    `  last pause     ${ms(s.lastPauseMs)}`,
    `  held output    ${s.held.count} (${s.held.bytes} bytes)`,
    `  standby lag    ${ms(s.standbyLagMs)}`,
    `  link           ${s.link.state}${
      s.link.peer ? ` to ${s.link.peer}` : ""
    }, ${s.link.bytesSent} B sent, ${s.link.bytesReceived} B received`,
    `  heartbeat      ${
      Object.entries(s.heartbeat).map(([p, t]) => `${p}: ${t.toFixed(0)} ms ago`).join(", ") || "-"
    }`,
  ];
  if (s.syncProgress) {
    lines.push(
      `  initial sync   round ${s.syncProgress.round}, ${s.syncProgress.pagesSent} pages sent, ${s.syncProgress.pagesLeft} left`,
    );
  }
  if (s.verify) {
    lines.push(`  verify         ${s.verify.checked} checked, ${s.verify.mismatches} mismatches`);
  }
  lines.push(`  guest          vCPU ${s.guest.vcpu}; console: ${s.guest.console}`);
  const pause = s.metrics?.pause, output = s.metrics?.output;
  if (pause) {
    lines.push(
      `  pauses         p50 ${pause.p50.toFixed(3)} ms, p99 ${
        pause.p99.toFixed(3)
      } ms (${pause.count})`,
    );
  }
  if (output) {
    lines.push(`  output delay   p50 ${output.p50.toFixed(3)} ms, p99 ${output.p99.toFixed(3)} ms`);
  }
  return lines.join("\n");
}
