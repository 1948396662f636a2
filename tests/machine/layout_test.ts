/**
 * Checks machine/layout.ts against guest/include/kemari_abi.h, and the Xen
 * ring mirrors (devices/blkif.ts, devices/console.ts, devices/ring.ts)
 * against guest/include/xen_ring.h: a generated C program prints each macro,
 * sizeof and offsetof, and every value must equal its TS mirror.
 */

import { deepStrictEqual, equal, ok as assert } from "node:assert/strict";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as layout from "../../machine/layout.ts";
import * as blkif from "../../devices/blkif.ts";
import { XENCONS } from "../../devices/console.ts";
import { RING, RING_HEADER_BYTES, ringEntries } from "../../devices/ring.ts";
import {
  assertProbe,
  compareProbe,
  coverageChecks,
  type ProbeCheck,
  type ProbeReport,
  probeSource,
  runCProbe,
  snakeCase,
} from "../support/c_probe.ts";

const INCLUDE_DIR = fileURLToPath(new URL("../../guest/include", import.meta.url));
const KEMARI_ABI_H = `${INCLUDE_DIR}/kemari_abi.h`;
const XEN_RING_H = `${INCLUDE_DIR}/xen_ring.h`;
const HAVE_XEN_RING = existsSync(XEN_RING_H);

// ---- kemari_abi.h <-> machine/layout.ts ----

/** Top-level constants of layout.ts and their macros. */
const TOP_MACROS: Readonly<Record<string, string>> = {
  ABI_VERSION: "KEMARI_ABI_VERSION",
  PAGE_SIZE: "KEMARI_PAGE_SIZE",
  BOOT_MAGIC: "KEMARI_BOOT_MAGIC",
  ARGS_OFFSET: "KEMARI_ARGS_OFFSET",
  ARGS_MAX: "KEMARI_ARGS_MAX",
  DISK_READONLY: "KEMARI_DISK_READONLY",
  NET_PRESENT: "KEMARI_NET_PRESENT",
};

/** Table entries of layout.ts and their macros. */
const TABLE_MACROS = {
  GPA: {
    boot: "KEMARI_BOOT_GPA",
    clock: "KEMARI_CLOCK_GPA",
    events: "KEMARI_EVENT_GPA",
    console: "KEMARI_CONSOLE_GPA",
    block: "KEMARI_BLOCK_GPA",
    netTx: "KEMARI_NET_TX_GPA",
    netRx: "KEMARI_NET_RX_GPA",
    guestFree: "KEMARI_GUEST_FREE_GPA",
    image: "KEMARI_IMAGE_GPA",
  },
  PORT: {
    crash: "KEMARI_PORT_CRASH",
    hypercall: "KEMARI_PORT_HYPERCALL",
    doorbellConsole: "KEMARI_PORT_DB_CONSOLE",
    doorbellBlock: "KEMARI_PORT_DB_BLOCK",
    doorbellNet: "KEMARI_PORT_DB_NET",
  },
  HC: {
    version: "KEMARI_HC_VERSION",
    wait: "KEMARI_HC_WAIT",
    exit: "KEMARI_HC_EXIT",
    panic: "KEMARI_HC_PANIC",
    bad: "KEMARI_HC_BAD",
  },
} as const satisfies Partial<Record<keyof typeof layout, Readonly<Record<string, string>>>>;

/** Field-offset tables of layout.ts and their structs (fields are camelCase of the C members). */
const STRUCTS = {
  BOOT: "struct kemari_boot",
  CLOCK: "struct kemari_clock",
  EVENTS: "struct kemari_events",
} as const satisfies Partial<Record<keyof typeof layout, string>>;

/** What layout.ts has that the guest ABI header does not (VMM-private layout). */
const TS_ONLY: Readonly<Record<string, true | readonly string[]>> = {
  PAGE_SHIFT: true,
  MAX_RAM_BYTES: true,
  MIN_RAM_BYTES: true,
  SEL: true,
  GPA: ["gdt", "idt", "tss", "stubs", "ring0StackTop", "pml4", "pdpt", "pt0", "pd"],
};

/** Macros of kemari_abi.h that have no TS mirror on purpose. */
const C_ONLY = new Set(["KEMARI_ABI_H"]);

function table(name: string): Readonly<Record<string, number | bigint>> {
  return (layout as Record<string, unknown>)[name] as Readonly<Record<string, number | bigint>>;
}

function kemariChecks(): ProbeCheck[] {
  const checks: ProbeCheck[] = [];
  for (const [name, macro] of Object.entries(TOP_MACROS)) {
    const value = (layout as Record<string, unknown>)[name];
    if (typeof value !== "number" && typeof value !== "bigint") {
      throw new Error(`layout.ts has no numeric export ${name}`);
    }
    checks.push({ name, expr: macro, expected: value, ifdef: macro });
  }
  for (const [tableName, macros] of Object.entries(TABLE_MACROS)) {
    const values = table(tableName);
    for (const [key, macro] of Object.entries(macros)) {
      if (!(key in values)) throw new Error(`layout.ts has no ${tableName}.${key}`);
      checks.push({
        name: `${tableName}.${key}`,
        expr: macro,
        expected: values[key],
        ifdef: macro,
      });
    }
  }
  for (const [tableName, struct] of Object.entries(STRUCTS)) {
    const fields = Object.entries(table(tableName)).map(([ts, offset]) => ({
      ts,
      c: snakeCase(ts),
      offset: Number(offset),
    }));
    for (const field of fields) {
      checks.push({
        name: `${tableName}.${field.ts}`,
        expr: `offsetof(${struct}, ${field.c})`,
        expected: field.offset,
      });
    }
    checks.push(...coverageChecks(tableName, struct, fields));
  }
  return checks;
}

// ---- xen_ring.h <-> devices/{blkif,console,ring}.ts ----

/** A request and response with every field distinct, for byte-level codec checks. */
const SAMPLE_REQUEST: blkif.BlkifRequest = {
  operation: blkif.BLKIF_OP.write,
  nrSegments: blkif.BLKIF_MAX_SEGMENTS,
  handle: 0xa1b2,
  id: 0x8877665544332211n,
  sectorNumber: 0x0123456789abcdefn,
  segments: Array.from({ length: blkif.BLKIF_MAX_SEGMENTS }, (_, i) => ({
    gref: 0x10203000 + 0x101 * i,
    firstSect: i % 8,
    lastSect: 7 - (i % 3),
  })),
};
const SAMPLE_RESPONSE: blkif.BlkifResponse = {
  id: 0xfedcba9876543210n,
  operation: blkif.BLKIF_OP.flushDiskcache,
  status: blkif.BLKIF_RSP.eopnotsupp,
};

function samplePrelude(): string {
  const r = SAMPLE_REQUEST;
  const segs = r.segments.map((s) =>
    `    { .gref = ${s.gref}u, .first_sect = ${s.firstSect}, .last_sect = ${s.lastSect} },`
  );
  const p = SAMPLE_RESPONSE;
  return [
    "static const struct blkif_request sample_request = {",
    `  .operation = ${r.operation},`,
    `  .nr_segments = ${r.nrSegments},`,
    `  .handle = ${r.handle},`,
    `  .id = ${r.id}ull,`,
    `  .sector_number = ${r.sectorNumber}ull,`,
    "  .seg = {",
    ...segs,
    "  },",
    "};",
    "static const struct blkif_response sample_response = {",
    `  .id = ${p.id}ull,`,
    `  .operation = ${p.operation},`,
    `  .status = ${p.status},`,
    "};",
    "#define SAMPLE_BYTE(object, i) (((const unsigned char *)&(object))[i])",
  ].join("\n");
}

function byteChecks(label: string, object: string, bytes: Uint8Array): ProbeCheck[] {
  return Array.from(bytes, (byte, i) => ({
    name: `${label}.bytes[${i}]`,
    expr: `SAMPLE_BYTE(${object}, ${i})`,
    expected: byte,
  }));
}

function upperSnake(name: string): string {
  return snakeCase(name).toUpperCase();
}

function xenChecks(): ProbeCheck[] {
  const checks: ProbeCheck[] = [];
  const macro = (name: string, value: number, cMacro: string) =>
    checks.push({ name, expr: cMacro, expected: value, ifdef: cMacro });
  const expr = (name: string, value: number, cExpr: string) =>
    checks.push({ name, expr: cExpr, expected: value });

  // blkif.ts
  for (const [key, value] of Object.entries(blkif.BLKIF_OP)) {
    macro(`BLKIF_OP.${key}`, value, `BLKIF_OP_${upperSnake(key)}`);
  }
  for (const [key, value] of Object.entries(blkif.BLKIF_RSP)) {
    macro(`BLKIF_RSP.${key}`, value, `BLKIF_RSP_${upperSnake(key)}`);
  }
  expr("BLKIF_REQUEST_SIZE", blkif.BLKIF_REQUEST_SIZE, "sizeof(struct blkif_request)");
  expr("BLKIF_RESPONSE_SIZE", blkif.BLKIF_RESPONSE_SIZE, "sizeof(struct blkif_response)");
  macro("BLKIF_MAX_SEGMENTS", blkif.BLKIF_MAX_SEGMENTS, "BLKIF_MAX_SEGMENTS_PER_REQUEST");
  expr(
    "BLKIF_MAX_SEGMENTS:seg[]",
    blkif.BLKIF_MAX_SEGMENTS,
    "sizeof(((struct blkif_request *)0)->seg) / sizeof(struct blkif_request_segment)",
  );
  macro("SECTOR_SIZE", blkif.SECTOR_SIZE, "BLKIF_SECTOR_SIZE");
  macro("SECTORS_PER_PAGE", blkif.SECTORS_PER_PAGE, "BLKIF_SECTORS_PER_PAGE");
  // The codecs: TS encoding of the sample must be the bytes of the C struct.
  checks.push(
    ...byteChecks("blkif_request", "sample_request", blkif.encodeRequest(SAMPLE_REQUEST)),
  );
  checks.push(
    ...byteChecks("blkif_response", "sample_response", blkif.encodeResponse(SAMPLE_RESPONSE)),
  );

  // console.ts: struct xencons_interface
  const xencons = "struct xencons_interface";
  const consFields: { ts: string; c: string; offset: number }[] = [];
  for (const [key, value] of Object.entries(XENCONS)) {
    const sized = /^(.*)Size$/.exec(key);
    if (sized !== null) {
      macro(`XENCONS.${key}`, value, `XENCONS_${upperSnake(sized[1])}_SIZE`);
      expr(`XENCONS.${key}:sizeof`, value, `sizeof(((${xencons} *)0)->${snakeCase(sized[1])})`);
    } else {
      expr(`XENCONS.${key}`, value, `offsetof(${xencons}, ${snakeCase(key)})`);
      consFields.push({ ts: key, c: snakeCase(key), offset: value });
    }
  }
  checks.push(...coverageChecks("XENCONS", xencons, consFields));

  // ring.ts: the generic shared ring header, standalone and inside the blkif ring.
  const ringFields: { ts: string; c: string; offset: number }[] = [];
  for (const [key, value] of Object.entries(RING)) {
    expr(`RING.${key}`, value, `offsetof(struct xen_sring_header, ${snakeCase(key)})`);
    expr(`RING.${key}:blkif_sring`, value, `offsetof(struct blkif_sring, ${snakeCase(key)})`);
    ringFields.push({ ts: key, c: snakeCase(key), offset: value });
  }
  // The four indexes are contiguous u32s and the last one ends where the private area starts.
  checks.push(
    ...coverageChecks("RING", "struct xen_sring_header", ringFields).slice(0, -1),
    {
      name: "RING.rspEvent:ends_at_pvt",
      expr: "offsetof(struct xen_sring_header, pvt)",
      expected: Math.max(...Object.values(RING)) + 4,
    },
  );
  expr("RING_HEADER_BYTES", RING_HEADER_BYTES, "sizeof(struct xen_sring_header)");
  expr(
    "RING_HEADER_BYTES:blkif_sring.ring",
    RING_HEADER_BYTES,
    "offsetof(struct blkif_sring, ring)",
  );
  const entry = Math.max(blkif.BLKIF_REQUEST_SIZE, blkif.BLKIF_RESPONSE_SIZE);
  expr("blkif_sring_entry:size", entry, "sizeof(union blkif_sring_entry)");
  const slots = ringEntries(layout.PAGE_SIZE, entry);
  macro("ringEntries(PAGE_SIZE,blkif)", slots, "BLKIF_RING_SIZE");
  expr(
    "ringEntries(PAGE_SIZE,blkif):blkif_sring.ring[]",
    slots,
    "sizeof(((struct blkif_sring *)0)->ring) / sizeof(union blkif_sring_entry)",
  );
  expr("blkif_sring:size", RING_HEADER_BYTES + slots * entry, "sizeof(struct blkif_sring)");
  return checks;
}

const GROUPS = {
  kemari: kemariChecks(),
  xen: HAVE_XEN_RING ? xenChecks() : [],
};

let probe: Promise<Map<string, bigint | "MISSING">> | undefined;
function probed(): Promise<Map<string, bigint | "MISSING">> {
  const headers = [`"kemari_abi.h"`, ...(HAVE_XEN_RING ? [`"xen_ring.h"`] : [])];
  const prelude = HAVE_XEN_RING ? samplePrelude() : "";
  probe ??= runCProbe(probeSource(headers, Object.values(GROUPS).flat(), prelude), [INCLUDE_DIR]);
  return probe;
}

async function check(group: keyof typeof GROUPS, what: string): Promise<ProbeReport> {
  const report = compareProbe(GROUPS[group], await probed());
  assertProbe(report, what);
  return report;
}

Deno.test("layout: every export of layout.ts is mirrored in kemari_abi.h or declared VMM-only", () => {
  const unmapped: string[] = [];
  for (const [name, value] of Object.entries(layout)) {
    if (name in TOP_MACROS || name in STRUCTS || TS_ONLY[name] === true) continue;
    if (typeof value === "object" && value !== null) {
      const mapped: Readonly<Record<string, string>> =
        (TABLE_MACROS as Record<string, Record<string, string>>)[name] ?? {};
      const vmmOnly = TS_ONLY[name];
      for (const key of Object.keys(value)) {
        if (key in mapped || (Array.isArray(vmmOnly) && vmmOnly.includes(key))) continue;
        unmapped.push(`${name}.${key}`);
      }
    } else {
      unmapped.push(name);
    }
  }
  deepStrictEqual(unmapped, [], "layout.ts values with no C macro and not declared VMM-only");
  equal(2 ** layout.PAGE_SHIFT, layout.PAGE_SIZE, "PAGE_SHIFT");
});

Deno.test("layout: every KEMARI_* macro of kemari_abi.h has a TS mirror", async () => {
  const header = await Deno.readTextFile(KEMARI_ABI_H);
  const defined = [...header.matchAll(/^\s*#\s*define\s+(KEMARI_\w+)/gm)].map((m) => m[1]);
  assert(defined.length > 0, "no KEMARI_* macros found");
  const mirrored = new Set([
    ...Object.values(TOP_MACROS),
    ...Object.values(TABLE_MACROS).flatMap((macros) => Object.values(macros)),
  ]);
  const unmirrored = defined.filter((name) => !mirrored.has(name) && !C_ONLY.has(name));
  deepStrictEqual(unmirrored, [], "kemari_abi.h macros missing from machine/layout.ts");
});

Deno.test("layout: constants, GPAs, ports, hypercalls and struct offsets match kemari_abi.h", async () => {
  const report = await check("kemari", "kemari_abi.h");
  equal(report.missing.length, 0, "every mapped macro is defined in kemari_abi.h");
  equal(report.matched.length, GROUPS.kemari.length);
});

Deno.test({
  name: "layout: blkif, console and ring mirrors match xen_ring.h",
  ignore: !HAVE_XEN_RING,
  fn: async () => {
    const report = await check("xen", "xen_ring.h");
    equal(report.missing.length, 0, "every mapped macro is defined in xen_ring.h");
    equal(report.matched.length, GROUPS.xen.length);
  },
});

Deno.test({
  name: "layout: blkif decoders read the C struct bytes back",
  ignore: !HAVE_XEN_RING,
  fn: async () => {
    const values = await probed();
    const bytesOf = (label: string, size: number) =>
      Uint8Array.from({ length: size }, (_, i) => {
        const value = values.get(`${label}.bytes[${i}]`);
        if (typeof value !== "bigint") throw new Error(`probe printed no ${label}.bytes[${i}]`);
        return Number(value);
      });
    deepStrictEqual(
      blkif.decodeRequest(bytesOf("blkif_request", blkif.BLKIF_REQUEST_SIZE)),
      SAMPLE_REQUEST,
    );
    deepStrictEqual(
      blkif.decodeResponse(bytesOf("blkif_response", blkif.BLKIF_RESPONSE_SIZE)),
      SAMPLE_RESPONSE,
    );
  },
});

Deno.test("layout: a wrong TS value fails against the real header", async () => {
  const wrong: ProbeCheck[] = [
    { name: "GPA.boot", expr: "KEMARI_BOOT_GPA", expected: layout.GPA.boot + 0x1000 },
    { name: "HC.bad", expr: "KEMARI_HC_BAD", expected: 0xffffffff },
    { name: "BOOT.bootId", expr: "offsetof(struct kemari_boot, boot_id)", expected: 48 },
  ];
  const report = compareProbe(wrong, await probed());
  deepStrictEqual(report.matched, []);
  equal(report.mismatches.length, 3);
  // A struct mirror that skips a member leaves a gap the coverage checks report.
  const gapped = coverageChecks("BOOT", "struct kemari_boot", [
    { ts: "magic", c: "magic", offset: 0 },
    { ts: "flags", c: "flags", offset: 12 },
  ]);
  const source = probeSource([`"kemari_abi.h"`], gapped);
  const gaps = compareProbe(gapped, await runCProbe(source, [INCLUDE_DIR]));
  deepStrictEqual(gaps.mismatches, [
    "BOOT.magic:size_up_to_flags: TS has 12 (0xc), C (sizeof(((struct kemari_boot *)0)->magic)) has 8",
    "BOOT.flags:bytes_after_last_field: TS has 0, C (sizeof(struct kemari_boot) - " +
    "offsetof(struct kemari_boot, flags) - sizeof(((struct kemari_boot *)0)->flags)) has 64 (0x40)",
  ]);
});
