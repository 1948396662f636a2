/**
 * HELLO (standby → primary) and WELCOME (primary → standby): who is talking,
 * about which VM, and whether the two can replicate; and the pure decision
 * each side takes on the other's introduction.
 *
 * The body is plain JSON (u64 values as decimal strings):
 *
 *   { "protocol": 1, "role": "standby", "channel": "replication",
 *     "vm": { "name": "web1", "bootId": "1234" }, "memoryBytes": 268435456,
 *     "cpuFeatures": "9f3a…", "generation": "3",
 *     "disk": { "mode": "replicated", "sectors": "32768" },
 *     "committed": { "epoch": "812" } }
 * @module
 */

import { MAX_RAM_BYTES, MIN_RAM_BYTES, PAGE_SIZE } from "../../machine/layout.ts";
import { checkU64, MAX_HELLO_BYTES, PROTOCOL_VERSION, ProtocolError, U64_MAX } from "./header.ts";

/** A side's role in the pair. */
export type Role = "standby" | "primary";
/** The connection a handshake opens. */
export type Channel = "replication" | "heartbeat";
/** How the disk follows the VM: one shared disk, a replicated copy, or no disk. */
export type DiskMode = "shared" | "replicated" | "none";

/** A HELLO or WELCOME body. */
export interface Hello {
  /** The protocol version the sender speaks. */
  protocol: number;
  role: Role;
  channel: Channel;
  /**
   * The VM: a name, and the boot id (a u64 in decimal) of the instance the
   * sender runs or holds; "" for a standby that holds nothing.
   */
  vm: { name: string; bootId: string };
  /** Guest RAM size; a multiple of the page size. */
  memoryBytes: number;
  /** Fingerprint of the CPU features the VM may use (lowercase hex). */
  cpuFeatures: string;
  /** The highest primary generation the sender knows of. */
  generation: bigint;
  /** Disk mode and size in 512-byte sectors (0 with mode "none"). */
  disk: { mode: DiskMode; sectors: bigint };
  /** Standby only: the epoch of the checkpoint it holds committed, or null. Primaries send null. */
  committed: { epoch: bigint } | null;
}

const KEYS = [
  "protocol",
  "role",
  "channel",
  "vm",
  "memoryBytes",
  "cpuFeatures",
  "generation",
  "disk",
  "committed",
];
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const HEX = /^[0-9a-f]{1,128}$/;
const U64 = /^(0|[1-9][0-9]{0,19})$/;

/** The JSON bytes of a HELLO/WELCOME body (validated first: a bad body is a local bug). */
export function encodeHelloBody(h: Hello): Uint8Array {
  checkU64(h.generation, "generation");
  checkU64(h.disk.sectors, "disk sectors");
  if (h.committed) checkU64(h.committed.epoch, "committed epoch");
  const json = {
    protocol: h.protocol,
    role: h.role,
    channel: h.channel,
    vm: { name: h.vm.name, bootId: h.vm.bootId },
    memoryBytes: h.memoryBytes,
    cpuFeatures: h.cpuFeatures,
    generation: h.generation.toString(),
    disk: { mode: h.disk.mode, sectors: h.disk.sectors.toString() },
    committed: h.committed ? { epoch: h.committed.epoch.toString() } : null,
  };
  const bytes = new TextEncoder().encode(JSON.stringify(json));
  try {
    decodeHelloBody(bytes, "HELLO");
  } catch (e) {
    throw new RangeError(`cannot encode handshake: ${(e as Error).message}`);
  }
  return bytes;
}

/** Parses and validates a HELLO/WELCOME body; throws {@link ProtocolError}. */
export function decodeHelloBody(bytes: Uint8Array, what: "HELLO" | "WELCOME"): Hello {
  const bad = (msg: string) => new ProtocolError("payload", `${what}: ${msg}`);
  if (bytes.length > MAX_HELLO_BYTES) {
    throw new ProtocolError(
      "limit",
      `${what} body of ${bytes.length} bytes exceeds ${MAX_HELLO_BYTES}`,
    );
  }
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ProtocolError("json", `${what} body is not valid JSON`);
  }
  const o = object(v);
  if (!o) throw bad("body is not a JSON object");
  for (const k of Object.keys(o)) if (!KEYS.includes(k)) throw bad(`unknown field "${k}"`);
  if (
    !Number.isInteger(o.protocol) || (o.protocol as number) < 1 || (o.protocol as number) > 0xffff
  ) {
    throw bad("protocol is not a version number");
  }
  if (o.role !== "standby" && o.role !== "primary") throw bad("role is not standby or primary");
  if (o.channel !== "replication" && o.channel !== "heartbeat") throw bad("unknown channel");
  const vm = object(o.vm);
  if (!vm || Object.keys(vm).length !== 2) throw bad("vm is not {name, bootId}");
  if (typeof vm.name !== "string" || !NAME.test(vm.name)) throw bad("vm name is malformed");
  const bootId = vm.bootId;
  if (typeof bootId !== "string" || (bootId !== "" && !u64(bootId))) {
    throw bad("bootId is malformed");
  }
  const mem = o.memoryBytes;
  if (
    typeof mem !== "number" || !Number.isSafeInteger(mem) || mem % PAGE_SIZE !== 0 ||
    mem < MIN_RAM_BYTES || mem > MAX_RAM_BYTES
  ) throw bad("memoryBytes out of range");
  if (typeof o.cpuFeatures !== "string" || !HEX.test(o.cpuFeatures)) {
    throw bad("cpuFeatures is not lowercase hex");
  }
  const generation = typeof o.generation === "string" ? u64(o.generation) : undefined;
  if (generation === undefined) throw bad("generation is not a u64 string");
  const disk = object(o.disk);
  if (!disk || Object.keys(disk).length !== 2) throw bad("disk is not {mode, sectors}");
  const mode = disk.mode;
  if (mode !== "shared" && mode !== "replicated" && mode !== "none") throw bad("unknown disk mode");
  const sectors = typeof disk.sectors === "string" ? u64(disk.sectors) : undefined;
  if (sectors === undefined) throw bad("disk sectors is not a u64 string");
  if ((mode === "none") !== (sectors === 0n)) {
    throw bad("disk sectors must be 0 exactly when mode is none");
  }
  let committed: Hello["committed"] = null;
  if (o.committed !== null) {
    const c = object(o.committed);
    const epoch = c && Object.keys(c).length === 1 && typeof c.epoch === "string"
      ? u64(c.epoch)
      : undefined;
    if (epoch === undefined || epoch === 0n) throw bad("committed is not null or {epoch}");
    if (o.role !== "standby") throw bad("only a standby holds a committed state");
    if (bootId === "") throw bad("a committed state needs a bootId");
    committed = { epoch };
  }
  if (bootId === "" && o.role === "primary") throw bad("a primary needs a bootId");
  return {
    protocol: o.protocol as number,
    role: o.role,
    channel: o.channel,
    vm: { name: vm.name, bootId },
    memoryBytes: mem,
    cpuFeatures: o.cpuFeatures,
    generation,
    disk: { mode, sectors },
    committed,
  };
}

function object(v: unknown): Record<string, unknown> | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? v as Record<string, unknown>
    : undefined;
}

function u64(s: string): bigint | undefined {
  if (!U64.test(s)) return undefined;
  const v = BigInt(s);
  return v <= U64_MAX ? v : undefined;
}

/** What a side does with the peer's HELLO/WELCOME. */
export type HandshakeDecision = { accept: true } | { refuse: string } | { stop: string };

/**
 * Decides, on `local`'s side, what to do with the peer's introduction
 * `remote` (both already validated). Pure. In order:
 *
 * 1. another protocol version, another channel, another VM name: refuse;
 * 2. a primary that meets a higher generation stops (whatever the peer's role);
 * 3. two primaries (the other one not newer) or two standbys: refuse;
 * 4. a standby refuses a primary of a generation older than it knows;
 * 5. RAM size, CPU features, disk mode or disk size differ: refuse;
 * 6. a standby holding a committed state of another boot of the VM refuses
 *    to have it overwritten (clear the standby to replace it).
 */
export function decideHandshake(local: Hello, remote: Hello): HandshakeDecision {
  if (remote.protocol !== PROTOCOL_VERSION) {
    return {
      refuse: `protocol version ${remote.protocol} (this kemari speaks ${PROTOCOL_VERSION})`,
    };
  }
  if (remote.channel !== local.channel) {
    return { refuse: `peer opened the ${remote.channel} channel, expected ${local.channel}` };
  }
  if (remote.vm.name !== local.vm.name) {
    return { refuse: `peer replicates VM "${remote.vm.name}", this side VM "${local.vm.name}"` };
  }
  if (local.role === "primary" && remote.generation > local.generation) {
    return {
      stop: `met generation ${remote.generation} (this primary is generation ${local.generation})`,
    };
  }
  if (remote.role === local.role) {
    return { refuse: `both sides are ${local.role} (generation ${local.generation})` };
  }
  const [primary, standby] = local.role === "primary" ? [local, remote] : [remote, local];
  if (local.role === "standby" && remote.generation < local.generation) {
    return {
      refuse:
        `stale primary of generation ${remote.generation} (this standby knows ${local.generation})`,
    };
  }
  if (remote.memoryBytes !== local.memoryBytes) {
    return { refuse: `RAM ${remote.memoryBytes} bytes, this side ${local.memoryBytes}` };
  }
  if (remote.cpuFeatures !== local.cpuFeatures) return { refuse: "CPU features differ" };
  if (remote.disk.mode !== local.disk.mode) {
    return { refuse: `disk mode ${remote.disk.mode}, this side ${local.disk.mode}` };
  }
  if (remote.disk.sectors !== local.disk.sectors) {
    return { refuse: `disk of ${remote.disk.sectors} sectors, this side ${local.disk.sectors}` };
  }
  if (standby.committed && standby.vm.bootId !== primary.vm.bootId) {
    return {
      refuse: `standby holds a committed state of boot ${standby.vm.bootId}, ` +
        `primary runs boot ${primary.vm.bootId}`,
    };
  }
  return { accept: true };
}
