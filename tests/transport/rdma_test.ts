/**
 * The RDMA transport's honest status: `available()` gives a one-line reason
 * on this machine (no RDMA device, kernel without InfiniBand), connect and
 * listen throw it, and what can be checked without a device is checked —
 * the FFI symbol tables against the installed rdma-core libraries and the
 * inline verbs' offsets against the real headers.
 */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import {
  IBV_CONTEXT_OPS,
  IBVERBS_SYMBOLS,
  LIBIBVERBS_SONAME,
  LIBRDMACM_SONAME,
  LinkError,
  RDMA_SIZES,
  RDMACM_SYMBOLS,
  RdmaTransport,
  RdmaUnavailableError,
  transportByName,
} from "../../transport/mod.ts";
import {
  assertProbe,
  compareProbe,
  type ProbeCheck,
  probeSource,
  runCProbe,
} from "../support/c_probe.ts";
import { options } from "./helpers.ts";

function installed(soname: string): boolean {
  try {
    Deno.dlopen(soname, {}).close();
    return true;
  } catch {
    return false;
  }
}

const HAVE_VERBS = installed(LIBIBVERBS_SONAME);
const HAVE_RDMACM = installed(LIBRDMACM_SONAME);
const HAVE_HEADERS = existsSync("/usr/include/infiniband/verbs.h") &&
  existsSync("/usr/include/rdma/rdma_cma.h");
const HAVE_GCC = (() => {
  try {
    return new Deno.Command("gcc", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

Deno.test("rdma: available() says why RDMA can't run here, in one line", () => {
  const a = RdmaTransport.available();
  if (a.ok) {
    // A host with an RDMA device: the reason to refuse is the missing data path (below).
    assert.ok(a.devices.length > 0);
    return;
  }
  assert.ok(a.reason.length > 0 && !a.reason.includes("\n"), a.reason);
  if (!HAVE_VERBS) assert.match(a.reason, /^libibverbs\.so\.1 not installed/);
  else if (!HAVE_RDMACM) assert.match(a.reason, /^librdmacm\.so\.1 not installed/);
  else {assert.match(
      a.reason,
      /^no RDMA device \(ibv_get_device_list (returned 0 devices|failed with E[A-Z]+)/,
    );}
  console.log(`rdma here: ${a.reason}`);
});

Deno.test("rdma: on this kernel (no InfiniBand) the reason names ENOSYS", {
  ignore: !HAVE_VERBS || !HAVE_RDMACM || existsSync("/sys/class/infiniband"),
}, () => {
  const a = RdmaTransport.available();
  assert.equal(a.ok, false);
  assert.equal(
    (a as { reason: string }).reason,
    "no RDMA device (ibv_get_device_list failed with ENOSYS: this kernel has no InfiniBand/RDMA support)",
  );
});

Deno.test("rdma: a missing library is reported as not installed", () => {
  const a = RdmaTransport.available({ rdmacm: "librdmacm-kemari-missing.so.1" });
  assert.equal(a.ok, false);
  const reason = (a as { reason: string }).reason;
  if (HAVE_VERBS) {
    assert.match(
      reason,
      /^librdmacm-kemari-missing\.so\.1 not installed \(Debian: apt-get install librdmacm1\)$/,
    );
  }
  const b = RdmaTransport.available({ ibverbs: "libibverbs-kemari-missing.so.1" });
  assert.match((b as { reason: string }).reason, /^libibverbs-kemari-missing\.so\.1 not installed/);
});

Deno.test("rdma: connect rejects and listen throws one line (RdmaUnavailableError)", async () => {
  const t = transportByName("rdma");
  assert.equal(t.name, "rdma");
  const err = await t.connect("10.0.0.2:7000", options()).catch((e) => e);
  assert.ok(err instanceof RdmaUnavailableError && err instanceof LinkError);
  assert.match(err.message, /^RDMA transport unavailable: /);
  assert.ok(!err.message.includes("\n"));
  assert.throws(() => t.listen("0.0.0.0:7000", options()), RdmaUnavailableError);
  const a = RdmaTransport.available();
  if (!a.ok) assert.equal(err.message, `RDMA transport unavailable: ${a.reason}`);
  else assert.match(err.message, /data path is not implemented/);
});

Deno.test("rdma: every symbol of the FFI tables resolves in the installed libraries", {
  ignore: !HAVE_VERBS || !HAVE_RDMACM,
}, () => {
  const verbs = Deno.dlopen(LIBIBVERBS_SONAME, IBVERBS_SYMBOLS);
  const cm = Deno.dlopen(LIBRDMACM_SONAME, RDMACM_SYMBOLS);
  for (const name of Object.keys(IBVERBS_SYMBOLS)) {
    assert.equal(typeof (verbs.symbols as Record<string, unknown>)[name], "function", name);
  }
  for (const name of Object.keys(RDMACM_SYMBOLS)) {
    assert.equal(typeof (cm.symbols as Record<string, unknown>)[name], "function", name);
  }
  // Harmless calls: status strings.
  const s = verbs.symbols.ibv_wc_status_str(12);
  assert.equal(s && Deno.UnsafePointerView.getCString(s), "transport retry counter exceeded");
  const ev = cm.symbols.rdma_event_str(9);
  assert.equal(ev && Deno.UnsafePointerView.getCString(ev), "RDMA_CM_EVENT_ESTABLISHED");
  cm.close();
  verbs.close();
});

Deno.test("rdma: the data-path verbs are inline (not exported), hence the ops offsets", {
  ignore: !HAVE_VERBS,
}, () => {
  const sig = {
    parameters: ["pointer", "pointer", "pointer"],
    result: "i32",
    optional: true,
  } as const;
  const lib = Deno.dlopen(LIBIBVERBS_SONAME, {
    ibv_post_send: sig,
    ibv_post_recv: sig,
    ibv_poll_cq: { parameters: ["pointer", "i32", "pointer"], result: "i32", optional: true },
    ibv_reg_mr_iova2: {
      parameters: ["pointer", "pointer", "usize", "u64", "u32"],
      result: "pointer",
      optional: true,
    },
  });
  assert.equal(lib.symbols.ibv_post_send, null);
  assert.equal(lib.symbols.ibv_post_recv, null);
  assert.equal(lib.symbols.ibv_poll_cq, null);
  assert.notEqual(lib.symbols.ibv_reg_mr_iova2, null);
  lib.close();
});

Deno.test("rdma: ops offsets and struct sizes match the rdma-core headers (C probe)", {
  ignore: !HAVE_HEADERS || !HAVE_GCC,
}, async () => {
  const checks: ProbeCheck[] = [
    ...Object.entries(IBV_CONTEXT_OPS).map(([field, off]) => ({
      name: `ops.${field}`,
      expr: `offsetof(struct ibv_context, ops.${field})`,
      expected: off,
    })),
    ...Object.entries(RDMA_SIZES).map(([s, size]) => ({
      name: `sizeof.${s}`,
      expr: `sizeof(struct ${s})`,
      expected: size,
    })),
  ];
  const src = probeSource(["stddef.h", "infiniband/verbs.h", "rdma/rdma_cma.h"], checks);
  assertProbe(compareProbe(checks, await runCProbe(src, [])), "rdma-core layout");
});
