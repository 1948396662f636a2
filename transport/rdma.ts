/**
 * RDMA transport — status: **not runnable here, data path not written.**
 *
 * The machines kemari is developed on have no RDMA device and a kernel built
 * without InfiniBand (`# CONFIG_INFINIBAND is not set`, no modules), so no
 * verbs call past `ibv_get_device_list` can be exercised. What is here is
 * what can be checked on such a machine:
 *
 * - the FFI symbol tables of the control path of libibverbs and librdmacm
 *   (rdma-core 44, opened by soname), verified by a test that dlopens them
 *   against the installed libraries;
 * - the byte offsets of the inline data-path verbs in `struct ibv_context`
 *   (`ibv_post_send` etc. are `static inline` and not exported), verified by
 *   a test that compiles a C probe against the real headers;
 * - {@link RdmaTransport.available}, which dlopens both libraries and asks
 *   for devices, and returns a one-line reason when RDMA cannot run;
 * - `connect`/`listen`, which throw that reason.
 *
 * The planned design (registered staging slots on the standby, RDMA WRITE +
 * WRITE_WITH_IMM per batch, credits in the ACK) is in README.md and
 * `../shared/reference/rdma-core-44-abi.md`; it will be written and tested
 * on a host with an RDMA NIC or a kernel with `CONFIG_RDMA_RXE`.
 * @module
 */

import { errno } from "../ffi/libc.ts";
import { errnoName } from "../ffi/errno.ts";
import { type Link, LinkError, type LinkOptions, type Listener, type Transport } from "./types.ts";

/** Sonames (the unversioned .so links come only with the -dev packages). */
export const LIBIBVERBS_SONAME = "libibverbs.so.1";
export const LIBRDMACM_SONAME = "librdmacm.so.1";

/**
 * libibverbs control-path exports (default `@@` versions, which is what
 * `dlsym` returns). `buffer` parameters are out-parameters or structs
 * marshalled by the caller.
 */
export const IBVERBS_SYMBOLS = {
  ibv_get_device_list: { parameters: ["buffer"], result: "pointer" }, // (int *num)
  ibv_free_device_list: { parameters: ["pointer"], result: "void" },
  ibv_get_device_name: { parameters: ["pointer"], result: "pointer" },
  ibv_open_device: { parameters: ["pointer"], result: "pointer" },
  ibv_close_device: { parameters: ["pointer"], result: "i32" },
  ibv_query_device: { parameters: ["pointer", "buffer"], result: "i32" }, // ibv_device_attr, 232 B
  ibv_query_port: { parameters: ["pointer", "u8", "buffer"], result: "i32" }, // compat layout, >= 52 B
  ibv_alloc_pd: { parameters: ["pointer"], result: "pointer" },
  ibv_dealloc_pd: { parameters: ["pointer"], result: "i32" },
  // (pd, addr, length, iova, access); ibv_reg_mr is a macro in the headers.
  ibv_reg_mr_iova2: {
    parameters: ["pointer", "pointer", "usize", "u64", "u32"],
    result: "pointer",
  },
  ibv_dereg_mr: { parameters: ["pointer"], result: "i32" },
  ibv_create_comp_channel: { parameters: ["pointer"], result: "pointer" },
  ibv_destroy_comp_channel: { parameters: ["pointer"], result: "i32" },
  // (ctx, cqe, cq_context, channel, comp_vector)
  ibv_create_cq: { parameters: ["pointer", "i32", "pointer", "pointer", "i32"], result: "pointer" },
  ibv_destroy_cq: { parameters: ["pointer"], result: "i32" },
  // (channel, struct ibv_cq **cq, void **cq_context): -1 + errno
  ibv_get_cq_event: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  ibv_ack_cq_events: { parameters: ["pointer", "u32"], result: "void" },
  ibv_create_qp: { parameters: ["pointer", "buffer"], result: "pointer" }, // ibv_qp_init_attr, 64 B
  ibv_destroy_qp: { parameters: ["pointer"], result: "i32" },
  ibv_wc_status_str: { parameters: ["i32"], result: "pointer" },
  ibv_fork_init: { parameters: [], result: "i32" },
  ibv_is_fork_initialized: { parameters: [], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** librdmacm connection-manager exports (return 0, or -1 with errno set). */
export const RDMACM_SYMBOLS = {
  rdma_create_event_channel: { parameters: [], result: "pointer" },
  rdma_destroy_event_channel: { parameters: ["pointer"], result: "void" },
  // (channel, struct rdma_cm_id **id, void *context, enum rdma_port_space ps)
  rdma_create_id: { parameters: ["pointer", "buffer", "pointer", "i32"], result: "i32" },
  rdma_destroy_id: { parameters: ["pointer"], result: "i32" },
  rdma_bind_addr: { parameters: ["pointer", "buffer"], result: "i32" }, // struct sockaddr *
  rdma_listen: { parameters: ["pointer", "i32"], result: "i32" },
  // (id, struct sockaddr *src or NULL, struct sockaddr *dst, int timeout_ms)
  rdma_resolve_addr: { parameters: ["pointer", "pointer", "buffer", "i32"], result: "i32" },
  rdma_resolve_route: { parameters: ["pointer", "i32"], result: "i32" },
  rdma_create_qp: { parameters: ["pointer", "pointer", "buffer"], result: "i32" },
  rdma_destroy_qp: { parameters: ["pointer"], result: "void" },
  rdma_connect: { parameters: ["pointer", "buffer"], result: "i32" }, // rdma_conn_param, 24 B
  rdma_accept: { parameters: ["pointer", "buffer"], result: "i32" },
  rdma_reject: { parameters: ["pointer", "pointer", "u8"], result: "i32" },
  rdma_disconnect: { parameters: ["pointer"], result: "i32" },
  rdma_get_cm_event: { parameters: ["pointer", "buffer"], result: "i32" }, // struct rdma_cm_event **
  rdma_ack_cm_event: { parameters: ["pointer"], result: "i32" },
  rdma_event_str: { parameters: ["i32"], result: "pointer" },
  rdma_get_devices: { parameters: ["buffer"], result: "pointer" }, // (int *num)
  rdma_free_devices: { parameters: ["pointer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * Byte offsets of the data-path function pointers from a `struct
 * ibv_context *` (`ctx->ops.*`): `ibv_post_send` and friends are static
 * inline, so a caller loads `*(ctx + offset)` and calls it (or uses a C shim).
 */
export const IBV_CONTEXT_OPS = {
  poll_cq: 96,
  req_notify_cq: 104,
  post_srq_recv: 168,
  post_send: 208,
  post_recv: 216,
} as const;

/** Struct sizes the data path marshals (x86_64, rdma-core 44). */
export const RDMA_SIZES = {
  ibv_sge: 16,
  ibv_send_wr: 128,
  ibv_recv_wr: 32,
  ibv_wc: 48,
  ibv_qp_init_attr: 64,
  rdma_conn_param: 24,
  rdma_cm_event: 80,
} as const;

/** Result of {@link RdmaTransport.available}. */
export type RdmaAvailability =
  | { ok: true; devices: string[] }
  | { ok: false; reason: string };

/** Thrown by connect/listen when RDMA cannot run; the message is the one-line reason. */
export class RdmaUnavailableError extends LinkError {
  constructor(reason: string) {
    super(`RDMA transport unavailable: ${reason}`);
    this.name = "RdmaUnavailableError";
  }
}

function dlopenReason(soname: string, e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  if (/cannot open shared object file|No such file/i.test(msg)) {
    return `${soname} not installed (Debian: apt-get install ${
      soname.startsWith("librdmacm") ? "librdmacm1" : "libibverbs1 ibverbs-providers"
    })`;
  }
  return `cannot load ${soname}: ${msg.split("\n")[0]}`;
}

/** The RDMA transport ("rdma"): reports why it can't run; no data path yet. */
export class RdmaTransport implements Transport {
  readonly name = "rdma";

  /**
   * Whether RDMA can run here: dlopens libibverbs and librdmacm and lists the
   * verbs devices. Never throws. The sonames can be overridden (tests use a
   * missing one to check the "not installed" reason).
   */
  static available(
    sonames: { ibverbs?: string; rdmacm?: string } = {},
  ): RdmaAvailability {
    const verbsName = sonames.ibverbs ?? LIBIBVERBS_SONAME;
    const cmName = sonames.rdmacm ?? LIBRDMACM_SONAME;
    let verbs: Deno.DynamicLibrary<typeof IBVERBS_SYMBOLS>;
    try {
      verbs = Deno.dlopen(verbsName, IBVERBS_SYMBOLS);
    } catch (e) {
      return { ok: false, reason: dlopenReason(verbsName, e) };
    }
    try {
      try {
        Deno.dlopen(cmName, RDMACM_SYMBOLS).close();
      } catch (e) {
        return { ok: false, reason: dlopenReason(cmName, e) };
      }
      const num = new Int32Array(1);
      const list = verbs.symbols.ibv_get_device_list(num);
      if (list === null) {
        const err = errno();
        const why = err === 38 ? ": this kernel has no InfiniBand/RDMA support" : "";
        return {
          ok: false,
          reason: `no RDMA device (ibv_get_device_list failed with ${errnoName(err)}${why})`,
        };
      }
      try {
        if (num[0] === 0) {
          return { ok: false, reason: "no RDMA device (ibv_get_device_list returned 0 devices)" };
        }
        const view = new Deno.UnsafePointerView(list);
        const devices: string[] = [];
        for (let i = 0; i < num[0]; i++) {
          const dev = view.getPointer(i * 8);
          const name = dev && verbs.symbols.ibv_get_device_name(dev);
          devices.push(name ? Deno.UnsafePointerView.getCString(name) : `device${i}`);
        }
        return { ok: true, devices };
      } finally {
        verbs.symbols.ibv_free_device_list(list);
      }
    } finally {
      verbs.close();
    }
  }

  #unavailable(): RdmaUnavailableError {
    const a = RdmaTransport.available();
    return new RdmaUnavailableError(
      a.ok
        ? `the RDMA data path is not implemented yet (devices found: ${a.devices.join(", ")})`
        : a.reason,
    );
  }

  connect(_address: string, _opts: LinkOptions): Promise<Link> {
    return Promise.reject(this.#unavailable());
  }

  listen(_address: string, _opts: LinkOptions): Listener {
    throw this.#unavailable();
  }
}
