/**
 * One ioctl entry point for the KVM wrappers: buffer or integer argument,
 * errno as an {@link OsError}.
 * @module
 */

import { check, libc } from "../../ffi/libc.ts";

/** ioctl(fd, request, buffer). Returns the non-negative result. */
export function ioctlBuf(fd: number, request: number, name: string, buf: Uint8Array): number {
  return check(name, libc().ioctl(fd, BigInt(request), Deno.UnsafePointer.of(buf)));
}

/** ioctl(fd, request, integer). Returns the non-negative result. */
export function ioctlInt(fd: number, request: number, name: string, arg = 0): number {
  return check(name, libc().ioctl_int(fd, BigInt(request), BigInt(arg)));
}

/** Little-endian struct helper over a fresh buffer of `size` bytes. */
export function struct(size: number): { buf: Uint8Array<ArrayBuffer>; dv: DataView } {
  const buf = new Uint8Array(size);
  return { buf, dv: new DataView(buf.buffer) };
}
