/**
 * Initial synchronization of the disk in replicated-disk mode: the primary
 * streams its whole image in DISK messages while the guest runs; writes made
 * meanwhile travel in the checkpoints' disk deltas, which the standby applies
 * after the image, so its copy ends up exact. This is also how a stale image
 * (an old primary's, after a failover) is resynchronized before it serves as
 * a standby.

 * @module
 */

import type { Link } from "../transport/types.ts";
import type { DiskImage } from "../devices/disk.ts";
import { DISK_CHUNK, encodeDisk, ProtocolError } from "./protocol.ts";

/** Streams the whole image over `link`, reporting progress. */
export async function sendDisk(
  link: Link,
  disk: DiskImage,
  progress?: (done: number, total: number) => void,
): Promise<void> {
  const buf = new Uint8Array(DISK_CHUNK);
  for (let offset = 0; offset < disk.bytes; offset += DISK_CHUNK) {
    const n = Math.min(DISK_CHUNK, disk.bytes - offset);
    const chunk = buf.subarray(0, n);
    disk.readAt(offset, chunk);
    // The first chunk always goes: it tells the standby to clear its image.
    if (offset === 0 || !isZero(chunk)) await link.send([encodeDisk(offset, chunk)]);
    progress?.(offset + n, disk.bytes);
  }
}

/**
 * The standby's side: writes chunks into its own image. Zero chunks are not
 * sent, so the receiver first zeroes its image (a stale image must not keep
 * old data where the primary's is empty).
 */
export class DiskReceiver {
  #cleared = false;
  constructor(readonly disk: DiskImage) {}

  accept(m: { offset: number; data: Uint8Array }): void {
    if (!this.#cleared) {
      this.disk.file.truncateSync(0);
      this.disk.file.truncateSync(this.disk.bytes);
      this.#cleared = true;
    }
    if (m.offset + m.data.length > this.disk.bytes) {
      throw new ProtocolError(
        "range",
        `DISK chunk at ${m.offset}+${m.data.length} is outside the ${this.disk.bytes}-byte image`,
      );
    }
    this.disk.writeAt(m.offset, m.data);
  }
}

function isZero(b: Uint8Array): boolean {
  const w = new BigUint64Array(b.buffer, b.byteOffset, b.length >> 3);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0n) return false;
  return true;
}
