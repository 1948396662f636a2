/**
 * The libc symbols kemari calls through FFI, and thin typed wrappers that turn
 * a -1 return into an {@link OsError}.
 * @module
 */

import { OsError } from "./errno.ts";

const symbols = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "pointer"], result: "i32" },
  ioctl_blocking: { name: "ioctl", parameters: ["i32", "u64", "pointer"], result: "i32" },
  ioctl_int: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  read: { parameters: ["i32", "pointer", "usize"], result: "isize" },
  read_async: {
    name: "read",
    parameters: ["i32", "pointer", "usize"],
    result: "isize",
    nonblocking: true,
  },
  write: { parameters: ["i32", "pointer", "usize"], result: "isize" },
  getpid: { parameters: [], result: "i32" },
  gettid: { parameters: [], result: "i32" },
  tgkill: { parameters: ["i32", "i32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  sched_setaffinity: { parameters: ["i32", "usize", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

let lib: Deno.DynamicLibrary<typeof symbols> | undefined;

/** The libc library, opened on first use. */
export function libc(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  lib ??= Deno.dlopen("libc.so.6", symbols);
  return lib.symbols;
}

/** The calling thread's errno. */
export function errno(): number {
  const p = libc().__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** Throws OsError(call, errno) when `rc` is negative; otherwise returns rc. */
export function check(call: string, rc: number): number {
  if (rc < 0) throw new OsError(call, errno());
  return rc;
}

const encoder = new TextEncoder();

/** A NUL-terminated copy of `s` for C. */
export function cstring(s: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(s + "\0");
}

export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_FAILED = 0xffffffffffffffffn;
export const MFD_CLOEXEC = 1;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const MADV_HUGEPAGE = 14;
/** The vCPU kick. Not SIGUSR1: Deno (like Node) opens its debugger on SIGUSR1. */
export const SIGUSR2 = 12;

/** open(2). */
export function open(path: string, flags: number): number {
  return check(`open ${path}`, libc().open(cstring(path), flags, 0));
}

/** close(2); errors ignored (nothing useful can follow a failed close). */
export function close(fd: number): void {
  libc().close(fd);
}

/** mmap(2) of a shared read/write mapping. */
export function mmapShared(fd: number, length: number, offset = 0): Deno.PointerObject {
  const p = libc().mmap(
    null,
    BigInt(length),
    PROT_READ | PROT_WRITE,
    MAP_SHARED,
    fd,
    BigInt(offset),
  );
  if (p === null || Deno.UnsafePointer.value(p) === MAP_FAILED) {
    throw new OsError("mmap", errno());
  }
  return p;
}

/** munmap(2). */
export function munmap(p: Deno.PointerObject, length: number): void {
  check("munmap", libc().munmap(p, BigInt(length)));
}

/** The calling thread's kernel thread id. */
export function gettid(): number {
  return libc().gettid();
}

/** Sends `signal` to one thread of this process. */
export function tgkill(tid: number, signal: number): void {
  check("tgkill", libc().tgkill(libc().getpid(), tid, signal));
}
