/**
 * Dirty harvest time for 256 MiB and 4 GiB guests with 0, 1,000 and 100,000
 * dirty pages, for two methods:
 *
 * - manual-protect: kemari's own path. Machine.boot + the `dirty` guest; per
 *   round: one byte of console input (ConsoleBackend.push) starts a round,
 *   wait until the vCPU is blocked in HC_WAIT again, Machine.pause(), time
 *   `backend.harvestDirty()` (KvmRam.harvest: KVM_GET_DIRTY_LOG +
 *   KVM_CLEAR_DIRTY_LOG + the VMM's own pages). The GET/CLEAR split comes
 *   from timing wrappers on that VM's two methods. "+list" is the extra
 *   time of turning the bitmap into page numbers (dirtyPages()).
 * - dirty ring: bench/ring_vm.ts, a harness that runs KVM_RUN synchronously
 *   on the main thread (kemari's vCPU Worker knows no ring); the harvest is
 *   walking the ring + KVM_RESET_DIRTY_RINGS + the VMM's pages. Rounds of
 *   more than ~65,472 pages also take KVM_EXIT_DIRTY_RING_FULL exits whose
 *   harvests are reported separately.
 *
 * The 256 MiB guest cannot hold 100,000 pages (391 MiB): it uses 60,000.
 * The first round after boot (first touch, pages not yet write-protected) is
 * discarded. Unpinned; add `--cpus 0` to run under `taskset -c 0`.
 *
 *   deno run -A bench/dirty.ts [--harvests 20] [--big-harvests 5] [--cpus LIST]
 *
 * Each dirtied page costs the guest one write-protect fault (~23 µs on this
 * host), so one 100,000-page round takes ~2.4 s: the default takes 5
 * harvests for the 60k/100k rows to stay near a minute;
 * `--big-harvests 20` gives 20 there too (about 3 minutes).
 * @module
 */

import { parseArgs } from "node:util";
import { Machine } from "../machine/machine.ts";
import { NullSink } from "../devices/console_sink.ts";
import { buildGuest, guestPath } from "../guest/build.ts";
import type { KvmBackend } from "../hypervisor/kvm/backend.ts";
import { KvmVm } from "../hypervisor/kvm/vm.ts";
import { dirtyPages } from "../hypervisor/kvm/memory.ts";
import { RingVm } from "./ring_vm.ts";
import {
  allowedCpus,
  emitJson,
  fmt,
  median,
  printHost,
  printTable,
  reexecPinned,
  spread,
  waitUntil,
} from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    harvests: { type: "string", default: "20" },
    "big-harvests": { type: "string", default: "5" },
    cpus: { type: "string" },
    pinned: { type: "boolean" },
  },
});
const HARVESTS = Number(values.harvests);
const BIG_HARVESTS = Number(values["big-harvests"]);
const RING_ENTRIES = 65536;
/** One byte of console input starts one round of the dirty guest. */
const ROUND = Uint8Array.of(0x2e);
const SIZES = [
  { label: "256 MiB", bytes: 256 * 2 ** 20, cap: 60_000 },
  { label: "4 GiB", bytes: 4 * 2 ** 30, cap: 100_000 },
];
const COUNTS = [0, 1000, 100_000];

/** One measured harvest; times in µs. */
interface Sample {
  pages: number;
  totalUs: number;
  /** manual: GET, CLEAR, VMM pages, bitmap → page list; ring: walk, reset, VMM pages. */
  parts: Record<string, number>;
  /** Guest time to dirty the pages of this round, µs per page (ring: exact; manual: + polling). */
  roundUsPerPage: number;
}

async function manual(ram: number, n: number, harvests: number): Promise<Sample[]> {
  const m = await Machine.boot({
    ramBytes: ram,
    guest: guestPath("dirty"),
    args: `pages=${n}`,
    console: new NullSink(),
  });
  const b = m.backend as KvmBackend;
  const split = { get: 0, clear: 0 };
  // Time KvmRam.harvest's two ioctls from inside it (instance overrides).
  b.vm.getDirtyLog = (slot, bitmap) => {
    const t = performance.now();
    KvmVm.prototype.getDirtyLog.call(b.vm, slot, bitmap);
    split.get = performance.now() - t;
  };
  b.vm.clearDirtyLog = (slot, pages, bitmap) => {
    const t = performance.now();
    KvmVm.prototype.clearDirtyLog.call(b.vm, slot, pages, bitmap);
    split.clear = performance.now() - t;
  };
  const out: Sample[] = [];
  const blocked = () => b.vcpuState() === "blocked";
  try {
    // Boot round (first touch), then one harvest that write-protects it all.
    await waitUntil("the guest's first wait", blocked, 60_000);
    await m.pause();
    b.harvestDirty();
    m.resume();
    for (let i = 0; i < harvests; i++) {
      await waitUntil("blocked", blocked, 60_000);
      const w0 = b.counters().waits;
      const t0 = performance.now();
      m.console.push(ROUND);
      await waitUntil("a round", () => b.counters().waits > w0 && blocked(), 60_000);
      const round = performance.now() - t0;
      await m.pause();
      const t1 = performance.now();
      const bitmap = b.harvestDirty();
      const t2 = performance.now();
      const pages = dirtyPages(bitmap, b.memory.pages).length;
      const t3 = performance.now();
      m.resume();
      const total = (t2 - t1) * 1e3;
      out.push({
        pages,
        totalUs: total,
        parts: {
          get: split.get * 1e3,
          clear: split.clear * 1e3,
          vmm: total - (split.get + split.clear) * 1e3,
          list: (t3 - t2) * 1e3,
        },
        roundUsPerPage: round * 1e3 / n,
      });
    }
  } finally {
    await m.shutdown();
  }
  return out;
}

function ring(ram: number, n: number, harvests: number, elf: Uint8Array): Sample[] {
  const vm = RingVm.create(ram, elf, `pages=${n}`, RING_ENTRIES);
  const out: Sample[] = [];
  try {
    vm.runUntilBlocked(); // boot round (first touch)
    vm.harvest();
    for (let i = 0; i < harvests; i++) {
      vm.full = { exits: 0, entries: 0, ms: 0 };
      vm.input();
      const t = performance.now();
      vm.runUntilBlocked();
      const round = performance.now() - t;
      const h = vm.harvest();
      const full = vm.full;
      out.push({
        pages: h.entries + full.entries,
        totalUs: (h.collectMs + h.resetMs + h.vmmMs) * 1e3,
        parts: {
          walk: h.collectMs * 1e3,
          reset: h.resetMs * 1e3,
          vmm: h.vmmMs * 1e3,
          fullExits: full.exits,
          fullUs: full.ms * 1e3,
        },
        roundUsPerPage: round * 1e3 / n,
      });
    }
  } finally {
    vm.close();
  }
  return out;
}

const med = (xs: Sample[], f: (s: Sample) => number) => median(xs.map(f));

async function main(): Promise<void> {
  if (await reexecPinned(new URL(import.meta.url).pathname, values.cpus, values.pinned)) return;
  printHost("dirty harvest time: manual-protect dirty log vs KVM dirty ring (µs)");
  await buildGuest();
  const elf = Deno.readFileSync(guestPath("dirty"));
  const rows: string[][] = [];
  const results: Record<string, unknown>[] = [];
  for (const size of SIZES) {
    for (const asked of COUNTS) {
      const n = Math.min(asked, size.cap);
      const h = n >= 10_000 ? BIG_HARVESTS : HARVESTS;
      const nLabel = n === asked ? String(n) : `${asked}→${n}`;
      const man = await manual(size.bytes, n, h);
      const rng = ring(size.bytes, n, h, elf);
      const perPage = (xs: Sample[]) => n ? fmt(med(xs, (s) => s.roundUsPerPage)) : "–";
      rows.push([
        size.label,
        nLabel,
        "manual-protect",
        String(h),
        String(med(man, (s) => s.pages)),
        spread(man.map((s) => s.totalUs)),
        `GET ${fmt(med(man, (s) => s.parts.get))} CLEAR ${fmt(med(man, (s) => s.parts.clear))}` +
        ` VMM ${fmt(med(man, (s) => s.parts.vmm))}; +list ${fmt(med(man, (s) => s.parts.list))}`,
        perPage(man),
      ]);
      const fulls = med(rng, (s) => s.parts.fullExits);
      rows.push([
        "",
        "",
        "dirty ring",
        String(h),
        String(med(rng, (s) => s.pages)),
        spread(rng.map((s) => s.totalUs)),
        `walk ${fmt(med(rng, (s) => s.parts.walk))} RESET ${fmt(med(rng, (s) => s.parts.reset))}` +
        ` VMM ${fmt(med(rng, (s) => s.parts.vmm))}` +
        (fulls ? `; +${fulls} ring-full exits ${fmt(med(rng, (s) => s.parts.fullUs))}` : ""),
        perPage(rng),
      ]);
      results.push({ ram: size.bytes, asked, pages: n, manual: man, ring: rng });
    }
  }
  console.log(
    `harvest µs: median (min–max) of the harvests; "pages" = median pages (ring: entries) seen`,
  );
  printTable(
    [
      "RAM",
      "dirty N",
      "method",
      "harvests",
      "pages",
      "harvest µs",
      "median parts µs",
      "guest µs/page",
    ],
    rows,
  );
  console.log(
    "C reference (kvm-pvm-facts.md §2, 1 GiB / 4 GiB slot, N=0/1000/100000): GET+CLEAR " +
      "8/33/2412 and 24–27/49–72/2424–2836 µs; ring harvest+RESET 1/35/1157 (34.5k entries).",
  );
  console.log(
    `pinning: ${values.pinned ? `taskset -c ${values.cpus} (whole process)` : "none"}` +
      ` (CPUs ${allowedCpus()}); ring harness runs KVM_RUN on the main thread, no Worker.`,
  );
  emitJson({
    bench: "dirty",
    unit: "us",
    ringEntries: RING_ENTRIES,
    pinned: values.pinned ? values.cpus : null,
    results,
  });
}

await main();
