/**
 * A Linux TAP device, opened through FFI: the host end of the guest's NIC.
 *
 * {@link TapDevice.open} opens `/dev/net/tun` (O_RDWR | O_CLOEXEC |
 * O_NONBLOCK) and attaches it to the TAP interface `name` of the calling
 * process's network namespace with TUNSETIFF (IFF_TAP | IFF_NO_PI): an
 * existing persistent TAP of that name is attached to, otherwise a new one
 * is created that lives as long as the file descriptor. Each read or write
 * on the descriptor is one whole Ethernet frame without FCS.
 *
 * Reads never block the JS thread: {@link TapDevice.read} tries a
 * non-blocking read(2), and when nothing is queued waits in poll(2) run as a
 * `nonblocking` FFI call (on a Deno worker thread) over the TAP descriptor
 * and an eventfd. {@link TapDevice.close} writes the eventfd, so a pending
 * read resolves with null at once; the descriptors are closed only after
 * that poll has returned, so no FFI call is left pending and no descriptor
 * number is reused under a poll.
 *
 * The TAP device keeps its own (kernel-chosen) MAC address: the guest's MAC
 * appears only in the frames the guest sends, so it is never configured on
 * the host side. Never create a TAP with routable addresses in the root
 * network namespace from tests; see tests/support/netns.ts.
 * @module
 */

import { errnoName } from "../ffi/errno.ts";
import type { FrameIo } from "./net.ts";

/** `TUNSETIFF` = _IOW('T', 202, int). */
export const TUNSETIFF = 0x400454ca;
/** ifr_flags: a TAP (Ethernet) device. */
export const IFF_TAP = 0x0002;
/** ifr_flags: no struct tun_pi before each frame. */
export const IFF_NO_PI = 0x1000;
/** Bytes of an interface name including its NUL. */
export const IFNAMSIZ = 16;
/** sizeof(struct ifreq) on x86-64, and the offsets kemari uses. */
export const IFREQ = { size: 40, name: 0, flags: 16 } as const;
/** The TUN/TAP clone device. */
export const TUN_DEVICE = "/dev/net/tun";
/** The largest frame a read returns (longer ones are cut by the kernel). */
export const TAP_READ_MAX = 65536;

const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const POLLIN = 0x001;
const POLLFD_SIZE = 8;

const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  ENXIO: 6,
  EAGAIN: 11,
  EACCES: 13,
  EBUSY: 16,
  ENODEV: 19,
  EINVAL: 22,
} as const;

const symbols = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll_async: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof symbols>["symbols"];
let library: Deno.DynamicLibrary<typeof symbols> | undefined;

function libc(): Libc {
  library ??= Deno.dlopen("libc.so.6", symbols);
  return library.symbols;
}

/** errno of the calling (JS) thread, read right after a synchronous call. */
function errno(): number {
  const p = libc().__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** A TAP operation failed; the message is one line and says what to do. */
export class TapError extends Error {
  constructor(message: string, readonly errno: number | null = null) {
    super(message);
    this.name = "TapError";
  }
}

/**
 * Why `name` cannot name a TAP interface, or null if it can: 1 to 15 bytes
 * of printable ASCII without '/', ':' or whitespace, not "." or "..", with
 * at most one "%d" (the kernel then picks the number).
 */
export function tapNameProblem(name: string): string | null {
  if (typeof name !== "string" || name.length === 0) return "it is empty";
  if (name.length >= IFNAMSIZ) return `it is longer than ${IFNAMSIZ - 1} characters`;
  if (!/^[\x21-\x7e]+$/.test(name)) return "it has characters other than printable ASCII";
  if (/[/:]/.test(name)) return "it contains '/' or ':'";
  if (name === "." || name === "..") return "it is . or ..";
  const percents = name.match(/%/g)?.length ?? 0;
  if (percents > 1 || (percents === 1 && !name.includes("%d"))) {
    return "'%' may only appear once, as %d";
  }
  return null;
}

/** A struct ifreq with `ifr_name` = name and `ifr_flags` = flags. */
export function encodeIfreq(name: string, flags: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(IFREQ.size);
  const encoded = new TextEncoder().encode(name);
  if (encoded.length >= IFNAMSIZ) throw new RangeError(`interface name ${name} is too long`);
  bytes.set(encoded, IFREQ.name);
  new DataView(bytes.buffer).setInt16(IFREQ.flags, flags, true);
  return bytes;
}

/** ifr_name of a struct ifreq. */
export function decodeIfreqName(bytes: Uint8Array): string {
  const field = bytes.subarray(IFREQ.name, IFREQ.name + IFNAMSIZ);
  const end = field.indexOf(0);
  return new TextDecoder().decode(field.subarray(0, end < 0 ? IFNAMSIZ : end));
}

/** Options of {@link TapDevice.open}. */
export interface TapOpenOptions {
  /** The clone device (default {@link TUN_DEVICE}); tests point it elsewhere. */
  device?: string;
}

/** An open TAP device: one whole Ethernet frame per read or write. */
export class TapDevice implements FrameIo {
  readonly #fd: number;
  readonly #wakeFd: number;
  readonly #buffer = new Uint8Array(TAP_READ_MAX);
  /** struct pollfd[2]: the TAP, then the eventfd; kept alive while a poll runs. */
  readonly #pollfds = new Uint8Array(2 * POLLFD_SIZE);
  #closed = false;
  #fdsClosed = false;
  /** The running read(), if any. */
  #reading: Promise<Uint8Array | null> | null = null;

  private constructor(readonly name: string, fd: number, wakeFd: number) {
    this.#fd = fd;
    this.#wakeFd = wakeFd;
    const view = new DataView(this.#pollfds.buffer);
    view.setInt32(0, fd, true);
    view.setInt16(4, POLLIN, true);
    view.setInt32(POLLFD_SIZE, wakeFd, true);
    view.setInt16(POLLFD_SIZE + 4, POLLIN, true);
  }

  /**
   * Opens (creating if needed) the TAP interface `name` in the current
   * network namespace. Throws {@link TapError} with a one-line reason: a bad
   * name, a missing `/dev/net/tun`, no permission (CAP_NET_ADMIN), a busy
   * TAP, or an interface of that name that is not a TAP.
   */
  static open(name: string, options: TapOpenOptions = {}): TapDevice {
    const problem = tapNameProblem(name);
    if (problem !== null) throw new TapError(`bad TAP name ${JSON.stringify(name)}: ${problem}`);
    const device = options.device ?? TUN_DEVICE;
    const lib = libc();
    const fd = lib.open(
      new TextEncoder().encode(device + "\0"),
      O_RDWR | O_CLOEXEC | O_NONBLOCK,
      0,
    );
    if (fd < 0) throw openError(device, errno());
    let wakeFd = -1;
    try {
      const ifreq = encodeIfreq(name, IFF_TAP | IFF_NO_PI);
      if (lib.ioctl(fd, BigInt(TUNSETIFF), ifreq) < 0) throw attachError(name, errno());
      wakeFd = lib.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (wakeFd < 0) {
        const e = errno();
        throw new TapError(`TAP ${name}: eventfd failed: ${errnoName(e)}`, e);
      }
      return new TapDevice(decodeIfreqName(ifreq), fd, wakeFd);
    } catch (error) {
      lib.close(fd);
      throw error;
    }
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Sends one frame (synchronously). Throws {@link TapError} on failure,
   * e.g. EIO while the interface is down.
   */
  write(frame: Uint8Array): void {
    if (this.#closed) throw new TapError(`TAP ${this.name} is closed`);
    for (;;) {
      const rc = Number(
        libc().write(this.#fd, frame as Uint8Array<ArrayBuffer>, BigInt(frame.length)),
      );
      if (rc === frame.length) return;
      if (rc >= 0) {
        throw new TapError(`TAP ${this.name}: short write (${rc} of ${frame.length} bytes)`);
      }
      const e = errno();
      if (e === ERRNO.EINTR) continue;
      throw new TapError(`write to TAP ${this.name} failed: ${errnoName(e)}`, e);
    }
  }

  /**
   * The next frame, or null once the device is closed (also when closed
   * while waiting). One read at a time: a second concurrent call throws.
   * Rejects with {@link TapError} on a read error (e.g. the interface was
   * deleted).
   */
  read(): Promise<Uint8Array | null> {
    if (this.#reading !== null) {
      return Promise.reject(new TapError(`TAP ${this.name}: a read is already pending`));
    }
    if (this.#closed) return Promise.resolve(null);
    const reading = this.#readLoop().finally(() => {
      this.#reading = null;
    });
    this.#reading = reading;
    return reading;
  }

  /**
   * Discards every frame queued on the device now, without waiting, and
   * returns how many (a standby drops what arrived before its takeover).
   * Not while a read is pending.
   */
  drain(): number {
    if (this.#reading !== null || this.#closed) return 0;
    let n = 0;
    while (this.#readNow() !== null) n++;
    return n;
  }

  /**
   * Closes the device: a pending read resolves with null, then both
   * descriptors are closed (a non-persistent TAP interface disappears).
   * Resolves when nothing is left pending. Idempotent.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      const one = new Uint8Array(8);
      one[0] = 1;
      libc().write(this.#wakeFd, one, 8n);
    }
    const reading = this.#reading;
    if (reading !== null) await reading.catch(() => null);
    this.#closeFds();
  }

  async #readLoop(): Promise<Uint8Array | null> {
    const lib = libc();
    let failures = 0;
    for (;;) {
      if (this.#closed) return null;
      const frame = this.#readNow();
      if (frame !== null) return frame;
      const rc = await lib.poll_async(this.#pollfds, 2n, -1);
      if (rc < 0 && ++failures > 1000) {
        throw new TapError(`TAP ${this.name}: poll keeps failing`);
      }
    }
  }

  /** One non-blocking read: a frame, or null when nothing is queued. */
  #readNow(): Uint8Array | null {
    const lib = libc();
    for (;;) {
      const rc = Number(lib.read(this.#fd, this.#buffer, BigInt(this.#buffer.length)));
      if (rc >= 0) return this.#buffer.slice(0, rc);
      const e = errno();
      if (e === ERRNO.EINTR) continue;
      if (e === ERRNO.EAGAIN) return null;
      throw new TapError(`read from TAP ${this.name} failed: ${errnoName(e)}`, e);
    }
  }

  #closeFds(): void {
    if (this.#fdsClosed) return;
    this.#fdsClosed = true;
    libc().close(this.#fd);
    libc().close(this.#wakeFd);
  }
}

function openError(device: string, e: number): TapError {
  switch (e) {
    case ERRNO.ENOENT:
      return new TapError(
        `${device} does not exist: this host has no TUN/TAP device (load the "tun" kernel module)`,
        e,
      );
    case ERRNO.ENODEV:
    case ERRNO.ENXIO:
      return new TapError(
        `${device}: the TUN/TAP driver is not available (load the "tun" kernel module)`,
        e,
      );
    case ERRNO.EACCES:
    case ERRNO.EPERM:
      return new TapError(`cannot open ${device}: permission denied (run kemari as root)`, e);
    default:
      return new TapError(`cannot open ${device}: ${errnoName(e)}`, e);
  }
}

function attachError(name: string, e: number): TapError {
  switch (e) {
    case ERRNO.EPERM:
      return new TapError(
        `TAP ${name}: permission denied (creating or attaching a TAP needs CAP_NET_ADMIN)`,
        e,
      );
    case ERRNO.EBUSY:
      return new TapError(`TAP ${name} is already attached to another process`, e);
    case ERRNO.EINVAL:
      return new TapError(
        `TAP ${name}: an interface of that name exists and is not a TAP without packet info`,
        e,
      );
    default:
      return new TapError(`TAP ${name}: TUNSETIFF failed: ${errnoName(e)}`, e);
  }
}
