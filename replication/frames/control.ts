/**
 * The small control messages.
 *
 *   REFUSE      UTF-8 reason (1..1024 bytes, no control characters)       — frozen in every version
 *   BYE         UTF-8 reason (0..1024 bytes, no control characters)
 *   HEARTBEAT   u64 seq · u64 generation · u64 sender time ns · u64 last committed epoch  (32 bytes)
 *   SWITCHOVER  u32 phase (1 request, 2 offer, 3 decline) · u32 0 · u64 generation · u64 final epoch
 *                                                                                     (24 bytes)
 * @module
 */

import {
  checkU64,
  HEADER_BYTES,
  MAX_REASON_BYTES,
  type MsgTypeName,
  newMessage,
  ProtocolError,
} from "./header.ts";

/** HEARTBEAT body, sent both ways on the heartbeat channel. */
export interface HeartbeatInfo {
  /** Increases by 1 per heartbeat of the sender, from 1. */
  seq: bigint;
  /** The sender's generation. */
  generation: bigint;
  /** The sender's monotonic clock in nanoseconds (for round-trip estimates only). */
  timeNs: bigint;
  /** Standby: its last committed epoch; primary: the last epoch acknowledged to it (0: none). */
  committedEpoch: bigint;
}

/** Phases of a planned role swap. */
export type SwitchoverPhase = "request" | "offer" | "decline";
const PHASES: readonly SwitchoverPhase[] = ["request", "offer", "decline"];

/** SWITCHOVER body. */
export interface SwitchoverInfo {
  phase: SwitchoverPhase;
  /** The generation the new primary will run (request: the requester's proposal). */
  generation: bigint;
  /** Offer: the last checkpoint of the old primary (the VM stays paused after it); else 0. */
  finalEpoch: bigint;
}

export const HEARTBEAT_BYTES = 32;
export const SWITCHOVER_BYTES = 24;

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Decodes a REFUSE or BYE reason. */
export function decodeReason(payload: Uint8Array, what: MsgTypeName): string {
  if (payload.length > MAX_REASON_BYTES) {
    throw new ProtocolError(
      "limit",
      `${what} reason of ${payload.length} bytes exceeds ${MAX_REASON_BYTES}`,
    );
  }
  if (what === "REFUSE" && payload.length === 0) {
    throw new ProtocolError("payload", "REFUSE without a reason");
  }
  let reason: string;
  try {
    reason = new TextDecoder("utf-8", { fatal: true }).decode(payload);
  } catch {
    throw new ProtocolError("payload", `${what} reason is not UTF-8`);
  }
  if (CONTROL.test(reason)) {
    throw new ProtocolError("payload", `${what} reason has control characters`);
  }
  return reason;
}

/** A REFUSE or BYE message (the reason is cut to fit and stripped of control characters). */
export function encodeReason(what: "REFUSE" | "BYE", reason: string): Uint8Array {
  // deno-lint-ignore no-control-regex
  let clean = reason.replace(/[\u0000-\u001f\u007f]/g, " ");
  if (what === "REFUSE" && clean === "") clean = "refused";
  let bytes = new TextEncoder().encode(clean);
  while (bytes.length > MAX_REASON_BYTES) {
    clean = clean.slice(0, -1);
    bytes = new TextEncoder().encode(clean);
  }
  const m = newMessage(what, 0n, bytes.length);
  m.set(bytes, HEADER_BYTES);
  return m;
}

function exact(payload: Uint8Array, what: MsgTypeName, size: number): DataView {
  if (payload.length !== size) {
    throw new ProtocolError(
      "length",
      `${what} payload of ${payload.length} bytes, expected ${size}`,
    );
  }
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

/** Decodes a HEARTBEAT payload. */
export function decodeHeartbeat(payload: Uint8Array): HeartbeatInfo {
  const dv = exact(payload, "HEARTBEAT", HEARTBEAT_BYTES);
  return {
    seq: dv.getBigUint64(0, true),
    generation: dv.getBigUint64(8, true),
    timeNs: dv.getBigUint64(16, true),
    committedEpoch: dv.getBigUint64(24, true),
  };
}

/** A HEARTBEAT message. */
export function encodeHeartbeat(hb: HeartbeatInfo): Uint8Array {
  const m = newMessage("HEARTBEAT", 0n, HEARTBEAT_BYTES);
  const dv = new DataView(m.buffer, HEADER_BYTES, HEARTBEAT_BYTES);
  const fields = [hb.seq, hb.generation, hb.timeNs, hb.committedEpoch];
  fields.forEach((v, i) => {
    checkU64(v, "heartbeat field");
    dv.setBigUint64(8 * i, v, true);
  });
  return m;
}

/** Decodes a SWITCHOVER payload. */
export function decodeSwitchover(payload: Uint8Array): SwitchoverInfo {
  const dv = exact(payload, "SWITCHOVER", SWITCHOVER_BYTES);
  const phase = PHASES[dv.getUint32(0, true) - 1];
  if (phase === undefined) {
    throw new ProtocolError("payload", `SWITCHOVER phase ${dv.getUint32(0, true)} is unknown`);
  }
  if (dv.getUint32(4, true) !== 0) {
    throw new ProtocolError("payload", "SWITCHOVER reserved field set");
  }
  const generation = dv.getBigUint64(8, true), finalEpoch = dv.getBigUint64(16, true);
  if ((phase === "offer") !== (finalEpoch !== 0n)) {
    throw new ProtocolError("payload", "SWITCHOVER final epoch must be set exactly in an offer");
  }
  return { phase, generation, finalEpoch };
}

/** A SWITCHOVER message. */
export function encodeSwitchover(s: SwitchoverInfo): Uint8Array {
  checkU64(s.generation, "generation");
  checkU64(s.finalEpoch, "final epoch");
  if (!PHASES.includes(s.phase) || (s.phase === "offer") !== (s.finalEpoch !== 0n)) {
    throw new RangeError(`SWITCHOVER ${s.phase} with final epoch ${s.finalEpoch}`);
  }
  const m = newMessage("SWITCHOVER", 0n, SWITCHOVER_BYTES);
  const dv = new DataView(m.buffer, HEADER_BYTES, SWITCHOVER_BYTES);
  dv.setUint32(0, PHASES.indexOf(s.phase) + 1, true);
  dv.setBigUint64(8, s.generation, true);
  dv.setBigUint64(16, s.finalEpoch, true);
  return m;
}
