/**
 * The kemari replication wire protocol (version 1): every message as a typed
 * value, {@link encodeMessage} and the strict {@link decodeMessage}, plus the
 * hot-path encoders of the primary. docs/PROTOCOL.md is the specification.
 *
 * Links deliver whole messages, authenticated and in order; a message is
 * still untrusted, and anything malformed is a {@link ProtocolError}.
 * @module
 */

import {
  EPOCH_TYPES,
  frameBytes,
  HEADER_BYTES,
  MAX_PAYLOAD_BYTES,
  newMessage,
  PROTOCOL_VERSION,
  ProtocolError,
  readHeader,
  typeName,
} from "./frames/header.ts";
import { decodeHelloBody, encodeHelloBody, type Hello } from "./frames/hello.ts";
import { decodePageBatch, encodePageMessage } from "./frames/pages.ts";
import {
  type BeginInfo,
  decodeAck,
  decodeBegin,
  decodeEnd,
  decodeState,
  encodeAck,
  encodeBegin,
  encodeEnd,
  encodeStateFrame,
  type EndInfo,
} from "./frames/checkpoint.ts";
import {
  decodeHeartbeat,
  decodeReason,
  decodeSwitchover,
  encodeHeartbeat,
  encodeReason,
  encodeSwitchover,
  type HeartbeatInfo,
  type SwitchoverInfo,
} from "./frames/control.ts";
import { encodeJson } from "../machine/state_file.ts";
import { decodeDisk, encodeDisk } from "./frames/disk.ts";

export * from "./frames/header.ts";
export * from "./frames/hello.ts";
export * from "./frames/pages.ts";
export * from "./frames/checkpoint.ts";
export * from "./frames/control.ts";
export * from "./frames/disk.ts";

/** Every protocol message, by type. */
export type Message =
  | { type: "HELLO"; hello: Hello }
  | { type: "WELCOME"; hello: Hello }
  | { type: "REFUSE"; reason: string }
  | { type: "PRECOPY"; pages: Uint32Array; data: Uint8Array }
  | ({ type: "CKPT_BEGIN"; epoch: bigint } & BeginInfo)
  | { type: "CKPT_PAGES"; epoch: bigint; pages: Uint32Array; data: Uint8Array }
  | { type: "CKPT_STATE"; epoch: bigint; state: unknown; diskDelta: Uint8Array }
  | ({ type: "CKPT_END"; epoch: bigint } & EndInfo)
  | { type: "ACK"; epoch: bigint }
  | ({ type: "HEARTBEAT" } & HeartbeatInfo)
  | ({ type: "SWITCHOVER" } & SwitchoverInfo)
  | { type: "BYE"; reason: string }
  | { type: "DISK"; offset: number; data: Uint8Array };

/**
 * A decoded message: its fields plus `payload`, a view of the payload bytes
 * (the stager's checksum runs over it). Byte fields (`data`, `diskDelta`) are
 * views into the decoded buffer: copy them before the buffer is reused.
 */
export type DecodedMessage = Message & { payload: Uint8Array };

/** Options of {@link decodeMessage}. */
export interface DecodeOptions {
  /** Guest RAM in pages; page messages are refused until it is known. */
  ramPages?: number;
}

/**
 * Decodes one whole message, checking magic, version, type, flags, the
 * header epoch, the declared length against the actual one and every payload
 * field. Throws {@link ProtocolError} (only) with a one-line reason.
 */
export function decodeMessage(bytes: Uint8Array, options: DecodeOptions = {}): DecodedMessage {
  const h = readHeader(bytes);
  if (h.version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      "version",
      `protocol version ${h.version} (this kemari speaks ${PROTOCOL_VERSION})`,
    );
  }
  const type = typeName(h.type);
  if (type === undefined) throw new ProtocolError("type", `unknown message type ${h.type}`);
  if (h.flags !== 0) {
    throw new ProtocolError("flags", `${type} with flags 0x${h.flags.toString(16)} (none defined)`);
  }
  if (h.length > MAX_PAYLOAD_BYTES) {
    throw new ProtocolError("limit", `${type} payload of ${h.length} bytes exceeds the limit`);
  }
  if (bytes.length - HEADER_BYTES !== h.length) {
    throw new ProtocolError(
      "length",
      `${type} declares ${h.length} payload bytes, message has ${bytes.length - HEADER_BYTES}`,
    );
  }
  const epoch = h.epoch;
  if (EPOCH_TYPES.has(type) ? epoch === 0n : epoch !== 0n) {
    throw new ProtocolError("epoch", `${type} with header epoch ${epoch}`);
  }
  const payload = bytes.subarray(HEADER_BYTES);
  const m = decodePayload(type, epoch, payload, options.ramPages) as DecodedMessage;
  m.payload = payload;
  return m;
}

function decodePayload(
  type: Message["type"],
  epoch: bigint,
  payload: Uint8Array,
  ramPages: number | undefined,
): Message {
  switch (type) {
    case "HELLO":
    case "WELCOME":
      return { type, hello: decodeHelloBody(payload, type) };
    case "REFUSE":
    case "BYE":
      return { type, reason: decodeReason(payload, type) };
    case "PRECOPY":
      return { type, ...decodePageBatch(payload, type, ramPages) };
    case "CKPT_BEGIN":
      return { type, epoch, ...decodeBegin(payload, epoch, ramPages) };
    case "CKPT_PAGES":
      return { type, epoch, ...decodePageBatch(payload, type, ramPages) };
    case "CKPT_STATE":
      return { type, epoch, ...decodeState(payload, epoch) };
    case "CKPT_END":
      return { type, epoch, ...decodeEnd(payload, epoch) };
    case "ACK":
      decodeAck(payload, epoch);
      return { type, epoch };
    case "HEARTBEAT":
      return { type, ...decodeHeartbeat(payload) };
    case "SWITCHOVER":
      return { type, ...decodeSwitchover(payload) };
    case "DISK":
      return { type, ...decodeDisk(payload) };
  }
}

/**
 * Encodes any message into one buffer (convenient; the primary's hot path
 * uses {@link gatherPages} and {@link encodeCheckpoint} instead). A value that
 * cannot be encoded is a local bug: RangeError.
 */
export function encodeMessage(m: Message): Uint8Array {
  switch (m.type) {
    case "HELLO":
    case "WELCOME": {
      const body = encodeHelloBody(m.hello);
      const out = newMessage(m.type, 0n, body.length);
      out.set(body, HEADER_BYTES);
      return out;
    }
    case "REFUSE":
    case "BYE":
      return encodeReason(m.type, m.reason);
    case "PRECOPY":
    case "CKPT_PAGES": {
      const epoch = m.type === "PRECOPY" ? 0n : m.epoch;
      if (m.type === "CKPT_PAGES" && epoch === 0n) {
        throw new RangeError("CKPT_PAGES needs an epoch");
      }
      return encodePageMessage(m.pages, m.data, { epoch });
    }
    case "CKPT_BEGIN":
      return encodeBegin(m.epoch, m);
    case "CKPT_STATE":
      return frameBytes(encodeStateFrame(m.epoch, encodeJson(m.state), m.diskDelta));
    case "CKPT_END":
      return encodeEnd(m.epoch, m);
    case "ACK":
      return encodeAck(m.epoch);
    case "HEARTBEAT":
      return encodeHeartbeat(m);
    case "SWITCHOVER":
      return encodeSwitchover(m);
    case "DISK":
      return encodeDisk(m.offset, m.data);
  }
}
