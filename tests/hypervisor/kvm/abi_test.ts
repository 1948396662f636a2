/**
 * Checks hypervisor/kvm/abi.ts against <linux/kvm.h>: a C program generated
 * from the TS tables prints every ioctl number, capability, exit reason,
 * constant, struct size and field offset, and each must equal the TS value.
 * New entries in the tables are checked without touching this file.
 */

import { deepStrictEqual, equal, ok as assert, throws } from "node:assert/strict";
import * as abi from "../../../hypervisor/kvm/abi.ts";
import {
  assertProbe,
  compareProbe,
  type ProbeCheck,
  type ProbeReport,
  probeSource,
  runCProbe,
} from "../../support/c_probe.ts";

const HEADERS = ["<linux/kvm.h>", "<asm/kvm_para.h>"];

/** Top-level numeric exports whose C macro is not simply KVM_<NAME>. */
const MACRO_OF: Readonly<Record<string, string>> = {
  MANUAL_PROTECT_ENABLE: "KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE",
  IO_IN: "KVM_EXIT_IO_IN",
  IO_OUT: "KVM_EXIT_IO_OUT",
};

/** Top-level numeric exports that are not KVM_* macros; checked by the plausibility test. */
const NOT_KVM_MACROS = new Set(["XCR0_GUEST", "MSR_KVM_ASYNC_PF_INT", "MSR_IA32_TSC"]);

/** Table exports and the prefix of their C macros. */
const TABLES = { IOCTL: "KVM_", CAP: "KVM_CAP_", EXIT: "KVM_EXIT_" } as const;

/** Exports checked by dedicated code below. */
const SPECIAL_EXPORTS = new Set(["LAYOUT", "REG_NAMES"]);

const MEMBER_PATH = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]+\])*$/;

/** Every ioctl, cap, exit reason and top-level KVM constant, as a macro check. */
function macroChecks(): ProbeCheck[] {
  const checks: ProbeCheck[] = [];
  for (const [table, prefix] of Object.entries(TABLES)) {
    const values = abi[table as keyof typeof TABLES] as Readonly<Record<string, number>>;
    for (const [key, value] of Object.entries(values)) {
      const macro = `${prefix}${key}`;
      checks.push({ name: `${table}.${key}`, expr: macro, expected: value, ifdef: macro });
    }
  }
  for (const [name, value] of Object.entries(abi)) {
    if (typeof value !== "number" && typeof value !== "bigint") continue;
    if (NOT_KVM_MACROS.has(name)) continue;
    const macro = MACRO_OF[name] ?? `KVM_${name}`;
    checks.push({ name, expr: macro, expected: value, ifdef: macro });
  }
  return checks;
}

/** sizeof and offsetof for every struct and field in LAYOUT. */
function layoutChecks(): ProbeCheck[] {
  const checks: ProbeCheck[] = [];
  const layouts: Readonly<Record<string, abi.Layout>> = abi.LAYOUT;
  for (const [struct, layout] of Object.entries(layouts)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(struct)) throw new Error(`bad struct name ${struct}`);
    checks.push({
      name: `LAYOUT.${struct}.size`,
      expr: `sizeof(struct ${struct})`,
      expected: layout.size,
    });
    for (const [field, offset] of Object.entries(layout.fields)) {
      if (!MEMBER_PATH.test(field)) throw new Error(`bad member path ${struct}.${field}`);
      checks.push({
        name: `LAYOUT.${struct}.fields.${field}`,
        expr: `offsetof(struct ${struct}, ${field})`,
        expected: offset,
      });
    }
  }
  return checks;
}

/** REG_NAMES[i] must be the member of struct kvm_regs at offset 8 * i, and cover all of it. */
function regNameChecks(): ProbeCheck[] {
  const checks: ProbeCheck[] = abi.REG_NAMES.map((reg, i) => ({
    name: `REG_NAMES[${i}]=${reg}`,
    expr: `offsetof(struct kvm_regs, ${reg})`,
    expected: 8 * i,
  }));
  checks.push({
    name: "REG_NAMES.length*8",
    expr: "sizeof(struct kvm_regs)",
    expected: 8 * abi.REG_NAMES.length,
  });
  return checks;
}

/** The one non-KVM_* value with a uapi header: the async-PF interrupt MSR (asm/kvm_para.h). */
function msrChecks(): ProbeCheck[] {
  return [{
    name: "MSR_KVM_ASYNC_PF_INT",
    expr: "MSR_KVM_ASYNC_PF_INT",
    expected: abi.MSR_KVM_ASYNC_PF_INT,
    ifdef: "MSR_KVM_ASYNC_PF_INT",
  }];
}

const GROUPS = {
  macros: macroChecks(),
  layout: layoutChecks(),
  regNames: regNameChecks(),
  msrs: msrChecks(),
};

/** One compile and run for all the tests in this file. */
let probe: Promise<Map<string, bigint | "MISSING">> | undefined;
function probed(): Promise<Map<string, bigint | "MISSING">> {
  probe ??= runCProbe(probeSource(HEADERS, Object.values(GROUPS).flat()), []);
  return probe;
}

async function check(group: keyof typeof GROUPS, what: string): Promise<ProbeReport> {
  const report = compareProbe(GROUPS[group], await probed());
  assertProbe(report, what);
  return report;
}

Deno.test("kvm abi: every export of abi.ts is checked by this test", () => {
  const unchecked: string[] = [];
  for (const [name, value] of Object.entries(abi)) {
    if (name in TABLES || SPECIAL_EXPORTS.has(name)) continue;
    if (typeof value === "number" || typeof value === "bigint") continue;
    unchecked.push(`${name} (${typeof value})`);
  }
  deepStrictEqual(unchecked, [], `abi.ts exports values this test does not know how to check`);
  for (const table of Object.keys(TABLES)) {
    assert(table in abi, `abi.ts no longer exports ${table}`);
  }
  for (const name of NOT_KVM_MACROS) assert(name in abi, `abi.ts no longer exports ${name}`);
});

Deno.test("kvm abi: ioctls, caps, exit reasons and constants match <linux/kvm.h>", async () => {
  const report = await check("macros", "KVM macros");
  // Every table entry and every top-level constant is among the checks.
  const tableEntries = Object.keys(TABLES)
    .map((t) => Object.keys(abi[t as keyof typeof TABLES]).length)
    .reduce((a, b) => a + b, 0);
  assert(GROUPS.macros.length > tableEntries, "top-level constants are checked too");
  equal(report.matched.length + report.missing.length, GROUPS.macros.length);
});

Deno.test("kvm abi: struct sizes and field offsets match <linux/kvm.h>", async () => {
  const report = await check("layout", "KVM struct layouts");
  equal(report.missing.length, 0);
  equal(report.matched.length, GROUPS.layout.length);
});

Deno.test("kvm abi: REG_NAMES follows the member order of struct kvm_regs", async () => {
  equal(new Set(abi.REG_NAMES).size, abi.REG_NAMES.length, "REG_NAMES has duplicates");
  await check("regNames", "REG_NAMES");
  // LAYOUT.kvm_regs agrees with REG_NAMES where both name a register.
  const fields: Readonly<Record<string, number>> = abi.LAYOUT.kvm_regs.fields;
  abi.REG_NAMES.forEach((reg, i) => {
    if (reg in fields) equal(fields[reg], 8 * i, `LAYOUT.kvm_regs.fields.${reg}`);
  });
});

Deno.test("kvm abi: XCR0_GUEST and MSR numbers are plausible", async () => {
  // No C header defines XCR0_GUEST or MSR_IA32_TSC; check them against the architecture.
  const x87 = 1n << 0n, sse = 1n << 1n, avx = 1n << 2n;
  const opmask = 1n << 5n, zmmHi256 = 1n << 6n, hi16Zmm = 1n << 7n;
  const xcr0 = abi.XCR0_GUEST;
  equal(
    xcr0,
    x87 | sse | avx | opmask | zmmHi256 | hi16Zmm,
    "x87|SSE|AVX|opmask|ZMM_Hi256|Hi16_ZMM",
  );
  // Architectural XSETBV rules: x87 always set; AVX needs SSE; AVX-512 state is all or nothing
  // and needs AVX; MPX (bits 3, 4) both or neither.
  assert((xcr0 & x87) !== 0n, "XCR0 bit 0 (x87) must be set");
  assert((xcr0 & avx) === 0n || (xcr0 & sse) !== 0n, "AVX requires SSE");
  const avx512 = xcr0 & (opmask | zmmHi256 | hi16Zmm);
  assert(avx512 === 0n || avx512 === (opmask | zmmHi256 | hi16Zmm), "AVX-512 bits all or none");
  assert(avx512 === 0n || (xcr0 & avx) !== 0n, "AVX-512 requires AVX");
  const mpx = xcr0 & (3n << 3n);
  assert(mpx === 0n || mpx === 3n << 3n, "MPX bits both or neither");
  equal(abi.MSR_IA32_TSC, 0x10, "IA32_TIME_STAMP_COUNTER is MSR 0x10");
  // KVM's paravirtual MSRs live at 0x4b564d00 + n ("KVM\0" in the high bytes).
  equal(abi.MSR_KVM_ASYNC_PF_INT & ~0xff, 0x4b564d00, "a KVM PV MSR");
  await check("msrs", "KVM PV MSRs");
});

Deno.test("kvm abi: the comparison names every mismatch and skips absent macros", () => {
  const checks: ProbeCheck[] = [
    { name: "IOCTL.GET_REGS", expr: "KVM_GET_REGS", expected: 0x8090ae81, ifdef: "KVM_GET_REGS" },
    { name: "IOCTL.RUN", expr: "KVM_RUN", expected: 0xae81, ifdef: "KVM_RUN" },
    { name: "CAP.FUTURE", expr: "KVM_CAP_FUTURE", expected: 999, ifdef: "KVM_CAP_FUTURE" },
    { name: "LAYOUT.kvm_run.size", expr: "sizeof(struct kvm_run)", expected: 2048 },
    { name: "HC.bad", expr: "-1", expected: -1 },
    { name: "never.printed", expr: "0", expected: 0 },
  ];
  const fabricated = new Map<string, bigint | "MISSING">([
    ["IOCTL.GET_REGS", 0x8090ae81n],
    ["IOCTL.RUN", 0xae80n],
    ["CAP.FUTURE", "MISSING"],
    ["LAYOUT.kvm_run.size", 2352n],
    ["HC.bad", 0xffffffffffffffffn],
  ]);
  const report = compareProbe(checks, fabricated);
  deepStrictEqual(report.matched, ["IOCTL.GET_REGS", "HC.bad"]);
  deepStrictEqual(report.missing, ["CAP.FUTURE (KVM_CAP_FUTURE not defined)"]);
  equal(report.mismatches.length, 3);
  assert(
    report.mismatches[0].startsWith("IOCTL.RUN: TS has 44673 (0xae81), C (KVM_RUN) has 44672"),
  );
  assert(report.mismatches[1].startsWith("LAYOUT.kvm_run.size: TS has 2048"));
  assert(report.mismatches[2].startsWith("never.printed: the probe printed nothing"));
  throws(
    () => assertProbe(report, "fabricated"),
    (error: Error) =>
      error.message.includes("3 mismatch(es)") && error.message.includes("IOCTL.RUN") &&
      error.message.includes("LAYOUT.kvm_run.size") && !error.message.includes("IOCTL.GET_REGS"),
  );
});

Deno.test("kvm abi: a wrong TS value fails against the real header", async () => {
  const wrong: ProbeCheck[] = [
    { name: "IOCTL.GET_REGS", expr: "KVM_GET_REGS", expected: abi.IOCTL.GET_REGS + 1 },
    {
      name: "LAYOUT.kvm_run.io.port",
      expr: "offsetof(struct kvm_run, io.port)",
      expected: abi.LAYOUT.kvm_run.fields["io.port"] + 2,
    },
  ];
  const report = compareProbe(wrong, await probed());
  deepStrictEqual(report.matched, []);
  equal(report.mismatches.length, 2);
});
