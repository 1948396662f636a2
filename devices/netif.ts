/**
 * The Xen netif wire format (x86-64 layout): constants and byte codecs for
 * the tx and rx rings' requests and responses. Decoding only reads bytes;
 * validation is the backend's job.
 *
 * | struct | layout | size |
 * |---|---|---|
 * | netif_tx_request | gref u32@0, offset u16@4, flags u16@6, id u16@8, size u16@10 | 12 |
 * | netif_tx_response | id u16@0, status i16@2 | 4 |
 * | netif_rx_request | id u16@0, (pad)@2, gref u32@4 | 8 |
 * | netif_rx_response | id u16@0, offset u16@2, flags u16@4, status i16@6 | 8 |
 *
 * One 4 KiB page holds 256 slots of either ring.
 * @module
 */

/** sizeof(netif_tx_request). */
export const NETIF_TX_REQUEST_SIZE = 12;
/** sizeof(netif_tx_response). */
export const NETIF_TX_RESPONSE_SIZE = 4;
/** sizeof(netif_rx_request). */
export const NETIF_RX_REQUEST_SIZE = 8;
/** sizeof(netif_rx_response). */
export const NETIF_RX_RESPONSE_SIZE = 8;
/** Slots of each netif ring in one page. */
export const NETIF_RING_SLOTS = 256;

/** Field offsets of the four netif structs. */
export const NETIF = {
  txRequest: { gref: 0, offset: 4, flags: 6, id: 8, size: 10 },
  txResponse: { id: 0, status: 2 },
  rxRequest: { id: 0, gref: 4 },
  rxResponse: { id: 0, offset: 2, flags: 4, status: 6 },
} as const;

/** netif_tx_request.flags (NETTXF_*). */
export const NETTXF = {
  csumBlank: 1,
  dataValidated: 2,
  moreData: 4,
  extraInfo: 8,
} as const;

/** netif_rx_response.flags (NETRXF_*). */
export const NETRXF = {
  dataValidated: 1,
  csumBlank: 2,
  moreData: 4,
  extraInfo: 8,
  gsoPrefix: 16,
} as const;

/** Response statuses (NETIF_RSP_*); an rx response's positive status is the frame length. */
export const NETIF_RSP = {
  dropped: -2,
  error: -1,
  okay: 0,
  null: 1,
} as const;

/** A netif_tx_request: `size` bytes of page `gref` from `offset`. */
export interface NetifTxRequest {
  gref: number;
  offset: number;
  flags: number;
  id: number;
  size: number;
}

/** A netif_tx_response. */
export interface NetifTxResponse {
  id: number;
  status: number;
}

/** A netif_rx_request: an empty buffer, page `gref`. */
export interface NetifRxRequest {
  id: number;
  gref: number;
}

/** A netif_rx_response: the frame is at `offset` of the buffer; status = length or < 0. */
export interface NetifRxResponse {
  id: number;
  offset: number;
  flags: number;
  status: number;
}

function viewOf(bytes: Uint8Array, size: number, what: string): DataView {
  if (bytes.length < size) {
    throw new RangeError(`${what} is ${bytes.length} bytes, need ${size}`);
  }
  return new DataView(bytes.buffer, bytes.byteOffset, size);
}

function fresh(size: number): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(size);
  return { bytes, view: new DataView(bytes.buffer) };
}

/** Decodes a tx request from its 12 bytes. */
export function decodeTxRequest(bytes: Uint8Array): NetifTxRequest {
  const view = viewOf(bytes, NETIF_TX_REQUEST_SIZE, "netif_tx_request");
  const f = NETIF.txRequest;
  return {
    gref: view.getUint32(f.gref, true),
    offset: view.getUint16(f.offset, true),
    flags: view.getUint16(f.flags, true),
    id: view.getUint16(f.id, true),
    size: view.getUint16(f.size, true),
  };
}

/** Encodes a tx request (what a frontend writes; used by tests and TS guests). */
export function encodeTxRequest(request: NetifTxRequest): Uint8Array {
  const { bytes, view } = fresh(NETIF_TX_REQUEST_SIZE);
  const f = NETIF.txRequest;
  view.setUint32(f.gref, request.gref >>> 0, true);
  view.setUint16(f.offset, request.offset, true);
  view.setUint16(f.flags, request.flags, true);
  view.setUint16(f.id, request.id, true);
  view.setUint16(f.size, request.size, true);
  return bytes;
}

/** Encodes a tx response into its 4 bytes. */
export function encodeTxResponse(response: NetifTxResponse): Uint8Array {
  const { bytes, view } = fresh(NETIF_TX_RESPONSE_SIZE);
  view.setUint16(NETIF.txResponse.id, response.id, true);
  view.setInt16(NETIF.txResponse.status, response.status, true);
  return bytes;
}

/** Decodes a tx response (what a frontend reads). */
export function decodeTxResponse(bytes: Uint8Array): NetifTxResponse {
  const view = viewOf(bytes, NETIF_TX_RESPONSE_SIZE, "netif_tx_response");
  return {
    id: view.getUint16(NETIF.txResponse.id, true),
    status: view.getInt16(NETIF.txResponse.status, true),
  };
}

/** Decodes an rx request from its 8 bytes (the pad is ignored). */
export function decodeRxRequest(bytes: Uint8Array): NetifRxRequest {
  const view = viewOf(bytes, NETIF_RX_REQUEST_SIZE, "netif_rx_request");
  return {
    id: view.getUint16(NETIF.rxRequest.id, true),
    gref: view.getUint32(NETIF.rxRequest.gref, true),
  };
}

/** Encodes an rx request (what a frontend writes). */
export function encodeRxRequest(request: NetifRxRequest): Uint8Array {
  const { bytes, view } = fresh(NETIF_RX_REQUEST_SIZE);
  view.setUint16(NETIF.rxRequest.id, request.id, true);
  view.setUint32(NETIF.rxRequest.gref, request.gref >>> 0, true);
  return bytes;
}

/** Encodes an rx response into its 8 bytes. */
export function encodeRxResponse(response: NetifRxResponse): Uint8Array {
  const { bytes, view } = fresh(NETIF_RX_RESPONSE_SIZE);
  const f = NETIF.rxResponse;
  view.setUint16(f.id, response.id, true);
  view.setUint16(f.offset, response.offset, true);
  view.setUint16(f.flags, response.flags, true);
  view.setInt16(f.status, response.status, true);
  return bytes;
}

/** Decodes an rx response (what a frontend reads). */
export function decodeRxResponse(bytes: Uint8Array): NetifRxResponse {
  const view = viewOf(bytes, NETIF_RX_RESPONSE_SIZE, "netif_rx_response");
  const f = NETIF.rxResponse;
  return {
    id: view.getUint16(f.id, true),
    offset: view.getUint16(f.offset, true),
    flags: view.getUint16(f.flags, true),
    status: view.getInt16(f.status, true),
  };
}
