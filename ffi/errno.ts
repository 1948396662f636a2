/**
 * errno as a typed error. Every failing libc or ioctl call in kemari becomes
 * an {@link OsError} that names the call and the errno.
 * @module
 */

/** errno numbers kemari checks for by name (Linux x86-64). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  ENOTTY: 25,
  E2BIG: 7,
  ENOSYS: 38,
  EOPNOTSUPP: 95,
} as const;

const NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Errno).map(([name, value]) => [value, name]),
);

/** Name of an errno value, e.g. "EINVAL", or "errno 123". */
export function errnoName(errno: number): string {
  return NAMES[errno] ?? `errno ${errno}`;
}

/** A system call failed. */
export class OsError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed: ${errnoName(errno)} (${errno})`);
    this.name = "OsError";
  }

  /** True when this error carries `errno`. */
  is(errno: number): boolean {
    return this.errno === errno;
  }
}
