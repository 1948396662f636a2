/**
 * The Xen blkif wire format (x86-64 layout): constants and byte codecs for
 * requests and responses. Decoding only reads bytes; validation is the
 * backend's job.
 * @module
 */

/** blkif operations. */
export const BLKIF_OP = {
  read: 0,
  write: 1,
  writeBarrier: 2,
  flushDiskcache: 3,
  discard: 5,
  indirect: 6,
} as const;

/** blkif response statuses. */
export const BLKIF_RSP = {
  okay: 0,
  error: -1,
  eopnotsupp: -2,
} as const;

/** sizeof(blkif_request) on x86-64. */
export const BLKIF_REQUEST_SIZE = 112;
/** sizeof(blkif_response) on x86-64. */
export const BLKIF_RESPONSE_SIZE = 16;
/** BLKIF_MAX_SEGMENTS_PER_REQUEST. */
export const BLKIF_MAX_SEGMENTS = 11;
/** blkif sectors are always 512 bytes. */
export const SECTOR_SIZE = 512;
/** Sectors in one 4 KiB page: a segment's last_sect is at most this minus 1. */
export const SECTORS_PER_PAGE = 8;

const SEGMENTS_OFFSET = 24;
const SEGMENT_SIZE = 8;

/** One blkif_request_segment: sectors first..last of guest page `gref`. */
export interface BlkifSegment {
  gref: number;
  firstSect: number;
  lastSect: number;
}

/** A decoded blkif_request. `segments` holds min(nrSegments, 11) entries. */
export interface BlkifRequest {
  operation: number;
  nrSegments: number;
  handle: number;
  id: bigint;
  sectorNumber: bigint;
  segments: BlkifSegment[];
}

/** A blkif_response. */
export interface BlkifResponse {
  id: bigint;
  operation: number;
  status: number;
}

/** Decodes a request from its 112 bytes. */
export function decodeRequest(bytes: Uint8Array): BlkifRequest {
  const view = viewOf(bytes, BLKIF_REQUEST_SIZE);
  const nrSegments = view.getUint8(1);
  const segments: BlkifSegment[] = [];
  for (let i = 0; i < Math.min(nrSegments, BLKIF_MAX_SEGMENTS); i++) {
    const at = SEGMENTS_OFFSET + i * SEGMENT_SIZE;
    segments.push({
      gref: view.getUint32(at, true),
      firstSect: view.getUint8(at + 4),
      lastSect: view.getUint8(at + 5),
    });
  }
  return {
    operation: view.getUint8(0),
    nrSegments,
    handle: view.getUint16(2, true),
    id: view.getBigUint64(8, true),
    sectorNumber: view.getBigUint64(16, true),
    segments,
  };
}

/** Encodes a request (what a frontend writes; used by tests and TS guests). */
export function encodeRequest(request: BlkifRequest): Uint8Array {
  const bytes = new Uint8Array(BLKIF_REQUEST_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, request.operation);
  view.setUint8(1, request.nrSegments);
  view.setUint16(2, request.handle, true);
  view.setBigUint64(8, BigInt.asUintN(64, request.id), true);
  view.setBigUint64(16, BigInt.asUintN(64, request.sectorNumber), true);
  request.segments.slice(0, BLKIF_MAX_SEGMENTS).forEach((segment, i) => {
    const at = SEGMENTS_OFFSET + i * SEGMENT_SIZE;
    view.setUint32(at, segment.gref, true);
    view.setUint8(at + 4, segment.firstSect);
    view.setUint8(at + 5, segment.lastSect);
  });
  return bytes;
}

/** Encodes a response into its 16 bytes. */
export function encodeResponse(response: BlkifResponse): Uint8Array {
  const bytes = new Uint8Array(BLKIF_RESPONSE_SIZE);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt.asUintN(64, response.id), true);
  view.setUint8(8, response.operation);
  view.setInt16(10, response.status, true);
  return bytes;
}

/** Decodes a response (what a frontend reads). */
export function decodeResponse(bytes: Uint8Array): BlkifResponse {
  const view = viewOf(bytes, BLKIF_RESPONSE_SIZE);
  return {
    id: view.getBigUint64(0, true),
    operation: view.getUint8(8),
    status: view.getInt16(10, true),
  };
}

function viewOf(bytes: Uint8Array, size: number): DataView {
  if (bytes.length < size) {
    throw new RangeError(`blkif message is ${bytes.length} bytes, need ${size}`);
  }
  return new DataView(bytes.buffer, bytes.byteOffset, size);
}
