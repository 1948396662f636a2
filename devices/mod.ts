/**
 * Paravirtual device backends: console, block, network (netif + TAP), PV
 * clock and the event page, over Xen's shared-ring ABI in guest RAM, with
 * output commit (held outputs, disk modes and disk deltas) for replication.
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
export {
  decodeRxRequest,
  decodeRxResponse,
  decodeTxRequest,
  decodeTxResponse,
  encodeRxRequest,
  encodeRxResponse,
  encodeTxRequest,
  encodeTxResponse,
  NETIF,
  NETIF_RING_SLOTS,
  NETIF_RSP,
  NETIF_RX_REQUEST_SIZE,
  NETIF_RX_RESPONSE_SIZE,
  NETIF_TX_REQUEST_SIZE,
  NETIF_TX_RESPONSE_SIZE,
  type NetifRxRequest,
  type NetifRxResponse,
  type NetifTxRequest,
  type NetifTxResponse,
  NETRXF,
  NETTXF,
} from "./netif.ts";
export {
  arpAnnouncements,
  arpFrame,
  ETH_HEADER,
  formatMac,
  type FrameIo,
  NET_DEFAULT_MTU,
  NET_HELD_CAP,
  NET_MAX_MTU,
  NET_MIN_MTU,
  NET_RX_QUEUE_FRAMES,
  NetBackend,
  type NetBackendOptions,
  type NetCounters,
  type NetStall,
  parseIpv4,
  parseMac,
  rarpAnnouncement,
  type RxOutcome,
} from "./net.ts";
export {
  decodeIfreqName,
  encodeIfreq,
  IFF_NO_PI,
  IFF_TAP,
  IFNAMSIZ,
  IFREQ,
  TAP_READ_MAX,
  TapDevice,
  TapError,
  tapNameProblem,
  type TapOpenOptions,
  TUN_DEVICE,
  TUNSETIFF,
} from "./tuntap.ts";
