import { deepStrictEqual, equal, throws } from "node:assert/strict";
import { createImage, DiskImage } from "../../devices/mod.ts";

async function inTempDir(body: (dir: string) => void | Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "kemari-disk-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("disk: createImage makes a sparse zero image of whole sectors", async () => {
  await inTempDir(async (dir) => {
    const path = `${dir}/a.img`;
    createImage(path, 64 * 1024 * 1024);
    const info = await Deno.stat(path);
    equal(info.size, 64 * 1024 * 1024);
    if (info.blocks !== null) equal(info.blocks < 64, true, "sparse");
    throws(() => createImage(path, 4096), Deno.errors.AlreadyExists);
    createImage(path, 4096, { overwrite: true });
    equal((await Deno.stat(path)).size, 4096);
    throws(() => createImage(`${dir}/b.img`, 1000), RangeError);
    throws(() => createImage(`${dir}/b.img`, 0), RangeError);
  });
});

Deno.test("disk: open checks the size; reads and writes stay inside", async () => {
  await inTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/odd.img`, new Uint8Array(1000));
    throws(() => DiskImage.open(`${dir}/odd.img`), /not a positive multiple of 512/);
    throws(() => DiskImage.open(dir, { readOnly: true }), /not a regular file/);
    throws(() => DiskImage.open(dir), Deno.errors.IsADirectory);
    createImage(`${dir}/d.img`, 8192);
    const disk = DiskImage.open(`${dir}/d.img`);
    try {
      equal(disk.sectors, 16n);
      disk.writeAt(512, new Uint8Array([1, 2, 3]));
      disk.flush();
      const back = new Uint8Array(4);
      disk.readAt(511, back);
      deepStrictEqual(back, new Uint8Array([0, 1, 2, 3]));
      throws(() => disk.readAt(8190, new Uint8Array(3)), RangeError);
      throws(() => disk.writeAt(-1, new Uint8Array(1)), RangeError);
    } finally {
      disk.close();
    }
    const readOnly = DiskImage.open(`${dir}/d.img`, { readOnly: true });
    try {
      throws(() => readOnly.writeAt(0, new Uint8Array(1)), /read-only/);
      readOnly.flush();
    } finally {
      readOnly.close();
    }
  });
});
