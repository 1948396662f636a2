/**
 * A raw disk image file: synchronous positioned reads and writes, and
 * fdatasync. Sizes are whole 512-byte sectors.
 * @module
 */

import { SECTOR_SIZE } from "./blkif.ts";

/** Options of {@link DiskImage.open}. */
export interface DiskOpenOptions {
  readOnly?: boolean;
}

/** An open raw image. */
export class DiskImage {
  private constructor(
    readonly path: string,
    readonly readOnly: boolean,
    readonly bytes: number,
    readonly file: Deno.FsFile,
  ) {}

  /** Opens an existing image; its size must be a whole number of sectors. */
  static open(path: string, options: DiskOpenOptions = {}): DiskImage {
    const readOnly = options.readOnly ?? false;
    const file = Deno.openSync(path, { read: true, write: !readOnly });
    try {
      const info = file.statSync();
      if (!info.isFile) throw new Error(`disk image ${path} is not a regular file`);
      checkImageSize(path, info.size);
      return new DiskImage(path, readOnly, info.size, file);
    } catch (error) {
      file.close();
      throw error;
    }
  }

  /** Size in 512-byte sectors. */
  get sectors(): bigint {
    return BigInt(this.bytes / SECTOR_SIZE);
  }

  /** Fills `into` from byte `offset`; the range must lie inside the image. */
  readAt(offset: number, into: Uint8Array): void {
    this.#checkRange(offset, into.length);
    this.file.seekSync(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < into.length) {
      const n = this.file.readSync(into.subarray(done));
      if (n === null) throw new Error(`unexpected end of ${this.path} at byte ${offset + done}`);
      done += n;
    }
  }

  /** Writes `data` at byte `offset`; the range must lie inside the image. */
  writeAt(offset: number, data: Uint8Array): void {
    if (this.readOnly) throw new Error(`disk image ${this.path} is read-only`);
    this.#checkRange(offset, data.length);
    this.file.seekSync(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < data.length) done += this.file.writeSync(data.subarray(done));
  }

  /** fdatasync: makes written data durable. */
  flush(): void {
    this.file.syncDataSync();
  }

  /** Closes the file. */
  close(): void {
    this.file.close();
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.bytes) {
      throw new RangeError(
        `disk access at ${offset}+${length} is outside ${this.path} (${this.bytes} bytes)`,
      );
    }
  }
}

/** Options of {@link createImage}. */
export interface CreateImageOptions {
  /** Replace an existing file (default: refuse). */
  overwrite?: boolean;
}

/** Creates a sparse, zero-filled image of `bytes` (a multiple of 512). */
export function createImage(path: string, bytes: number, options: CreateImageOptions = {}): void {
  checkImageSize(path, bytes);
  const overwrite = options.overwrite ?? false;
  const file = Deno.openSync(path, {
    write: true,
    create: overwrite,
    createNew: !overwrite,
    truncate: overwrite,
  });
  try {
    file.truncateSync(bytes);
  } finally {
    file.close();
  }
}

function checkImageSize(path: string, bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % SECTOR_SIZE !== 0) {
    throw new RangeError(
      `disk image ${path}: size ${bytes} is not a positive multiple of ${SECTOR_SIZE}`,
    );
  }
}
