/**
 * kemari transports: authenticated, ordered, message-oriented links from the
 * primary to the standby. See README.md.
 * @module
 */

export * from "./types.ts";
export * from "./stream.ts";
export * from "./secure.ts";
export * from "./base.ts";
export * from "./tcp.ts";
export * from "./memory.ts";
export * from "./faulty.ts";
export * from "./rdma.ts";

import type { Transport } from "./types.ts";
import { TcpTransport } from "./tcp.ts";
import { MemoryTransport } from "./memory.ts";
import { RdmaTransport } from "./rdma.ts";

/** Names {@link transportByName} knows. */
export const TRANSPORT_NAMES = ["tcp", "memory", "rdma"] as const;

/**
 * The transport called `name`. "memory" transports share one process-wide
 * address table, so a listener and a connector made by separate calls meet.
 * Throws TypeError for an unknown name.
 */
export function transportByName(name: string): Transport {
  switch (name) {
    case "tcp":
      return new TcpTransport();
    case "memory":
      return new MemoryTransport();
    case "rdma":
      return new RdmaTransport();
    default:
      throw new TypeError(`unknown transport "${name}" (known: ${TRANSPORT_NAMES.join(", ")})`);
  }
}
