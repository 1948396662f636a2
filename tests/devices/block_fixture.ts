/**
 * A block backend over a temporary image, with the guest's front end.
 * @module
 */

import {
  BlockBackend,
  type BlockBackendOptions,
  createImage,
  DiskImage,
  EventPage,
} from "../../devices/mod.ts";
import type { GuestMemory } from "../../hypervisor/guest_memory.ts";
import { BlockFront, LogCapture, newMemory } from "./guest.ts";

export const DISK_BYTES = 1024 * 1024;
export const DISK_SECTORS = DISK_BYTES / 512;

/** Everything a block test touches. */
export interface BlockFixture {
  dir: string;
  path: string;
  mem: GuestMemory;
  log: LogCapture;
  events: EventPage;
  disk: DiskImage;
  block: BlockBackend;
  front: BlockFront;
}

/** Options of {@link withBlock}. */
export interface FixtureOptions extends BlockBackendOptions {
  readOnly?: boolean;
  mem?: GuestMemory;
  /** An existing image to open instead of creating one. */
  path?: string;
  /** Builds the backend (e.g. a subclass); default BlockBackend. */
  make?: (mem: GuestMemory, events: EventPage, disk: DiskImage) => BlockBackend;
}

/** Opens a backend (without creating a temp dir). */
export function openBlock(path: string, dir: string, options: FixtureOptions = {}): BlockFixture {
  const mem = options.mem ?? newMemory();
  const log = new LogCapture();
  const events = new EventPage(mem, () => {}, { logger: log.logger });
  const disk = DiskImage.open(path, { readOnly: options.readOnly ?? false });
  const block = options.make?.(mem, events, disk) ?? new BlockBackend(mem, events, disk, options);
  return { dir, path, mem, log, events, disk, block, front: new BlockFront(mem) };
}

/** Runs `body` with a fresh 1 MiB image in a temp dir, removed afterwards. */
export async function withBlock(
  options: FixtureOptions,
  body: (fixture: BlockFixture) => void | Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "kemari-block-" });
  const path = options.path ?? `${dir}/disk.img`;
  if (options.path === undefined) createImage(path, DISK_BYTES);
  const fixture = openBlock(path, dir, options);
  try {
    await body(fixture);
  } finally {
    fixture.disk.close();
    await Deno.remove(dir, { recursive: true });
  }
}
