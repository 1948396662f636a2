/**
 * Dirty tracking misses nothing: a shadow copy of guest RAM that is updated
 * only with the pages each harvest reports (KVM's log ∪ pages the VMM's
 * backends wrote) stays byte-identical to the real RAM, epoch after epoch,
 * while the guest writes its disk log, reads it back and prints.
 */

import assert from "node:assert/strict";
import { Machine } from "../../machine/machine.ts";
import { NullSink } from "../../devices/console_sink.ts";
import { createImage } from "../../devices/disk.ts";
import { buildGuest, guestPath } from "../../guest/build.ts";
import { dirtyPages } from "../../hypervisor/kvm/memory.ts";
import { GPA, PAGE_SIZE } from "../../machine/layout.ts";
import { haveKvm, tempDir } from "../support/kemari.ts";

Deno.test({
  name: "dirty: harvests (KVM ∪ backends) keep a shadow copy identical to guest RAM",
  ignore: !haveKvm(),
  async fn() {
    await buildGuest();
    await using dir = await tempDir();
    const disk = `${dir.path}/disk.img`;
    createImage(disk, 1 << 20);
    // First boot writes a log, so the second boot's verify pass makes the
    // block backend write guest pages (disk reads) as well.
    const ram = 16 << 20;
    for (const args of ["records=100 rate=0", "records=400 rate=2000 dirty=32"]) {
      const m = await Machine.boot({
        ramBytes: ram,
        guest: guestPath("logwriter"),
        args,
        disk,
        console: new NullSink(),
      });
      const mem = m.backend.memory.bytes;
      const shadow = new Uint8Array(ram);
      let epochs = 0, vmmPages = 0;
      while (!m.report) {
        await m.pause();
        const pages = dirtyPages(m.harvest(), ram / PAGE_SIZE);
        for (const p of pages) {
          shadow.set(mem.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), p * PAGE_SIZE);
        }
        if (pages.includes(GPA.events / PAGE_SIZE)) vmmPages++;
        assert.ok(equal(shadow, mem), `epoch ${epochs}: shadow differs from guest RAM`);
        epochs++;
        m.resume();
        await new Promise((r) => setTimeout(r, 3));
      }
      const report = await m.wait();
      await m.shutdown();
      assert.deepEqual(report, { kind: "exit", code: 0 });
      assert.ok(epochs > 5, `only ${epochs} epochs`);
      assert.ok(vmmPages > 0, "the VMM-written event page was never reported dirty");
    }
  },
});

function equal(a: Uint8Array, b: Uint8Array): boolean {
  const x = new BigUint64Array(a.buffer, a.byteOffset, a.length / 8);
  const y = new BigUint64Array(b.buffer, b.byteOffset, b.length / 8);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}
