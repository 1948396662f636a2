/**
 * Paravirtual device backends: console, block, PV clock and the event page,
 * over Xen's shared-ring ABI in guest RAM, with output commit (held outputs,
 * disk modes and disk deltas) for replication.
 * @module
 */

export { type Device, type DeviceState, DeviceStateError } from "./device.ts";
export {
  BackRing,
  type BackRingIndexes,
  owedResponses,
  type PendingRequests,
  RING,
  RING_HEADER_BYTES,
  ringEntries,
  ringIndexProblem,
} from "./ring.ts";
export { SharedWords, u32Distance } from "./shared_words.ts";
export { decodeBase64, encodeBase64, StateReader } from "./state_reader.ts";
export {
  checkEpoch,
  type HeldSummary,
  HOLD_LIMITS,
  holdEpoch,
  OPEN_GATE,
  type OutputGate,
} from "./output_gate.ts";
export { type LogSink, RateLimitedLog, type RateLimitOptions } from "./log_limiter.ts";
export { type EventCounters, EventPage, type EventPageOptions } from "./events.ts";
export {
  type ConsoleSink,
  FileSink,
  MemorySink,
  NullSink,
  parseConsoleSink,
  StdoutSink,
} from "./console_sink.ts";
export {
  CONSOLE_CHUNK_MAX,
  CONSOLE_HELD_CAP,
  ConsoleBackend,
  type ConsoleCounters,
  type ConsoleStall,
  STATUS_LINE_MAX,
  XENCONS,
} from "./console.ts";
export {
  BLKIF_MAX_SEGMENTS,
  BLKIF_OP,
  BLKIF_REQUEST_SIZE,
  BLKIF_RESPONSE_SIZE,
  BLKIF_RSP,
  type BlkifRequest,
  type BlkifResponse,
  type BlkifSegment,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  SECTOR_SIZE,
  SECTORS_PER_PAGE,
} from "./blkif.ts";
export {
  type BlockLimits,
  type BlockPlan,
  type BlockVerdict,
  type Extent,
  planRequest,
} from "./block_plan.ts";
export { createImage, type CreateImageOptions, DiskImage, type DiskOpenOptions } from "./disk.ts";
export {
  decodeDiskDelta,
  DISK_DELTA_DEFAULTS,
  DISK_DELTA_KIND,
  type DiskDelta,
  diskDeltaEncodedSize,
  type DiskDeltaEntry,
  DiskDeltaError,
  type DiskDeltaLimits,
  type DiskDeltaSummary,
  encodeDiskDelta,
  validateDiskDelta,
} from "./disk_delta.ts";
export {
  BLKIF_MAX_REQUEST_BYTES,
  BlockBackend,
  type BlockBackendOptions,
  type BlockCounters,
  type BlockStall,
  DISK_DELTA_LIMIT,
  DISK_MODES,
  type DiskMode,
} from "./block.ts";
export {
  type ClockScale,
  clockScale,
  type ClockSource,
  MAX_TSC_KHZ,
  PvClock,
  scaleTicks,
} from "./clock.ts";
