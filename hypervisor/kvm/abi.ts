/**
 * Raw KVM ABI for x86-64: ioctl numbers, capability and exit codes, and the
 * struct layouts kemari reads and writes. Nothing here calls anything.
 * tests/hypervisor/kvm/abi_test.ts checks every number and layout against
 * <linux/kvm.h> with a C program compiled by gcc.
 * @module
 */

/** ioctl request numbers. */
export const IOCTL = {
  // system fd
  GET_API_VERSION: 0xae00,
  CREATE_VM: 0xae01,
  GET_MSR_INDEX_LIST: 0xc004ae02,
  CHECK_EXTENSION: 0xae03,
  GET_VCPU_MMAP_SIZE: 0xae04,
  GET_SUPPORTED_CPUID: 0xc008ae05,
  // vm fd
  CREATE_VCPU: 0xae41,
  GET_DIRTY_LOG: 0x4010ae42,
  SET_USER_MEMORY_REGION: 0x4020ae46,
  SET_TSS_ADDR: 0xae47,
  IOEVENTFD: 0x4040ae79,
  GET_CLOCK: 0x8030ae7c,
  ENABLE_CAP: 0x4068aea3,
  CLEAR_DIRTY_LOG: 0xc018aec0,
  RESET_DIRTY_RINGS: 0xaec7,
  // vcpu fd
  RUN: 0xae80,
  GET_REGS: 0x8090ae81,
  SET_REGS: 0x4090ae82,
  GET_SREGS: 0x8138ae83,
  SET_SREGS: 0x4138ae84,
  GET_MSRS: 0xc008ae88,
  SET_MSRS: 0x4008ae89,
  SET_CPUID2: 0x4008ae90,
  GET_FPU: 0x81a0ae8c,
  GET_MP_STATE: 0x8004ae98,
  SET_MP_STATE: 0x4004ae99,
  GET_VCPU_EVENTS: 0x8040ae9f,
  SET_VCPU_EVENTS: 0x4040aea0,
  GET_DEBUGREGS: 0x8080aea1,
  SET_DEBUGREGS: 0x4080aea2,
  GET_TSC_KHZ: 0xaea3,
  GET_XSAVE: 0x9000aea4,
  SET_XSAVE: 0x5000aea5,
  GET_XCRS: 0x8188aea6,
  SET_XCRS: 0x4188aea7,
  GET_XSAVE2: 0x9000aecf,
} as const;

export const API_VERSION = 12;

/** Capabilities (KVM_CAP_*). */
export const CAP = {
  IOEVENTFD: 36,
  SYNC_REGS: 74,
  MANUAL_DIRTY_LOG_PROTECT2: 168,
  DIRTY_LOG_RING: 192,
  XSAVE2: 208,
} as const;

export const MANUAL_PROTECT_ENABLE = 1;
export const MEM_LOG_DIRTY_PAGES = 1;
export const SYNC_X86_REGS = 1;
export const SYNC_X86_SREGS = 2;
export const SYNC_X86_EVENTS = 4;
export const IOEVENTFD_FLAG_PIO = 2;

/** Exit reasons (kvm_run.exit_reason). */
export const EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  DIRTY_RING_FULL: 31,
} as const;

export const IO_IN = 0;
export const IO_OUT = 1;

/** A struct: its size and the offsets of the fields kemari touches. */
export interface Layout {
  readonly size: number;
  readonly fields: Readonly<Record<string, number>>;
}

/** Struct layouts (x86-64). Names are the C names. */
export const LAYOUT = {
  kvm_run: {
    size: 2352,
    fields: {
      immediate_exit: 1,
      exit_reason: 8,
      "io.direction": 32,
      "io.size": 33,
      "io.port": 34,
      "io.count": 36,
      "io.data_offset": 40,
      "mmio.phys_addr": 32,
      "mmio.data": 40,
      "mmio.len": 48,
      "mmio.is_write": 52,
      "internal.suberror": 32,
      "fail_entry.hardware_entry_failure_reason": 32,
      kvm_valid_regs: 288,
      kvm_dirty_regs: 296,
      s: 304,
    },
  },
  kvm_regs: {
    size: 144,
    fields: {
      rax: 0,
      rbx: 8,
      rcx: 16,
      rdx: 24,
      rsi: 32,
      rdi: 40,
      rsp: 48,
      rbp: 56,
      r8: 64,
      r15: 120,
      rip: 128,
      rflags: 136,
    },
  },
  kvm_segment: {
    size: 24,
    fields: {
      base: 0,
      limit: 8,
      selector: 12,
      type: 14,
      present: 15,
      dpl: 16,
      db: 17,
      s: 18,
      l: 19,
      g: 20,
      avl: 21,
    },
  },
  kvm_dtable: { size: 16, fields: { base: 0, limit: 8 } },
  kvm_sregs: {
    size: 312,
    fields: {
      cs: 0,
      ds: 24,
      es: 48,
      fs: 72,
      gs: 96,
      ss: 120,
      tr: 144,
      ldt: 168,
      gdt: 192,
      idt: 208,
      cr0: 224,
      cr2: 232,
      cr3: 240,
      cr4: 248,
      cr8: 256,
      efer: 264,
      apic_base: 272,
      interrupt_bitmap: 280,
    },
  },
  kvm_xsave: { size: 4096, fields: { region: 0 } },
  kvm_xcrs: { size: 392, fields: { nr_xcrs: 0, flags: 4, xcrs: 8 } },
  kvm_xcr: { size: 16, fields: { xcr: 0, value: 8 } },
  kvm_msrs: { size: 8, fields: { nmsrs: 0, entries: 8 } },
  kvm_msr_entry: { size: 16, fields: { index: 0, data: 8 } },
  kvm_msr_list: { size: 4, fields: { nmsrs: 0, indices: 4 } },
  kvm_debugregs: { size: 128, fields: { db: 0, dr6: 32, dr7: 40, flags: 48 } },
  kvm_vcpu_events: {
    size: 64,
    fields: {
      "exception.injected": 0,
      "exception.nr": 1,
      "exception.has_error_code": 2,
      "exception.error_code": 4,
      flags: 20,
    },
  },
  kvm_mp_state: { size: 4, fields: { mp_state: 0 } },
  kvm_cpuid2: { size: 8, fields: { nent: 0, entries: 8 } },
  kvm_cpuid_entry2: {
    size: 40,
    fields: { function: 0, index: 4, flags: 8, eax: 12, ebx: 16, ecx: 20, edx: 24 },
  },
  kvm_userspace_memory_region: {
    size: 32,
    fields: { slot: 0, flags: 4, guest_phys_addr: 8, memory_size: 16, userspace_addr: 24 },
  },
  kvm_dirty_log: { size: 16, fields: { slot: 0, dirty_bitmap: 8 } },
  kvm_clear_dirty_log: {
    size: 24,
    fields: { slot: 0, num_pages: 4, first_page: 8, dirty_bitmap: 16 },
  },
  kvm_ioeventfd: { size: 64, fields: { datamatch: 0, addr: 8, len: 16, fd: 20, flags: 24 } },
  kvm_enable_cap: { size: 104, fields: { cap: 0, flags: 4, args: 8 } },
  kvm_clock_data: { size: 48, fields: { clock: 0, flags: 8, realtime: 16, host_tsc: 24 } },
  kvm_sync_regs: { size: 520, fields: { regs: 0, sregs: 144, events: 456 } },
} as const satisfies Record<string, Layout>;

/** Byte offsets of the general registers inside struct kvm_regs, in order. */
export const REG_NAMES = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
  "rflags",
] as const;
export type RegName = typeof REG_NAMES[number];

/** XCR0 the guest needs for x87|SSE|AVX|opmask|ZMM_Hi256|Hi16_ZMM (kvm-pvm-facts §1). */
export const XCR0_GUEST = 0xe7n;
/** MSR that needs an in-kernel LAPIC; never restore it (kvm-pvm-facts §1). */
export const MSR_KVM_ASYNC_PF_INT = 0x4b564d06;
export const MSR_IA32_TSC = 0x10;
