/**
 * A running guest: the hypervisor backend, the PV devices, and the loop that
 * services doorbells. Boot from an ELF image, or restore from a state file;
 * pause, save and resume at any moment.
 * @module
 */

import type { VcpuStateName, VmBackend, VmOptions } from "../hypervisor/types.ts";
import { KvmBackend } from "../hypervisor/kvm/backend.ts";
import { EventPage } from "../devices/events.ts";
import { ConsoleBackend } from "../devices/console.ts";
import type { ConsoleSink } from "../devices/console_sink.ts";
import { BlockBackend } from "../devices/block.ts";
import { DiskImage } from "../devices/disk.ts";
import { NetBackend } from "../devices/net.ts";
import { TapDevice } from "../devices/tuntap.ts";
import { crc32 } from "node:zlib";
import { PvClock } from "../devices/clock.ts";
import type { Device } from "../devices/device.ts";
import { loadElf } from "./elf.ts";
import { writeBootPage } from "./boot_page.ts";
import { writePageTables, writeSystemTables } from "./setup.ts";
import { ABI_VERSION, MAX_RAM_BYTES, MIN_RAM_BYTES, PORT } from "./layout.ts";
import type { StopReport } from "./vcpu_control.ts";
import { readStateFile, readStateMeta, writeStateFile } from "./state_file.ts";
import { type SavedMachine, validateSavedMachine } from "./saved_machine.ts";

/** Everything needed to boot or restore a guest. */
export interface MachineConfig {
  ramBytes: number;
  /** Path of the guest ELF image (boot only). */
  guest?: string;
  /** Guest arguments, "key=value ..." (boot only). */
  args?: string;
  disk?: string;
  diskReadOnly?: boolean;
  console: ConsoleSink;
  doorbell?: VmOptions["doorbell"];
  /** The network device: a host TAP device (in this network namespace). */
  net?: NetConfig;
  /** Standby: the network device drops frames for the guest until takeover. */
  standby?: boolean;
}

/** Network device settings. */
export interface NetConfig {
  /** Host TAP device name (created if missing, e.g. "tap0" or "kemari%d"). */
  tap: string;
  /** The guest's MAC; default: a locally administered one derived from the TAP name. */
  mac?: string;
  mtu?: number;
}

/** The configuration is unusable (RAM size, files). */
export class MachineConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MachineConfigError";
  }
}

const MiB2 = 2 * 1024 * 1024;
const DOORBELL_PORTS: Record<number, number> = {
  0: PORT.doorbellConsole,
  1: PORT.doorbellBlock,
  2: PORT.doorbellNet,
};
const MIN_MTU = 576;

function checkRam(bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes < MIN_RAM_BYTES || bytes > MAX_RAM_BYTES) {
    throw new MachineConfigError(
      `memory size ${bytes} is outside ${MIN_RAM_BYTES >> 20} MiB..${MAX_RAM_BYTES / 2 ** 30} GiB`,
    );
  }
  if (bytes % MiB2 !== 0) throw new MachineConfigError("memory size must be a multiple of 2 MiB");
}

/** A guest VM and its devices. */
export class Machine {
  readonly events: EventPage;
  readonly console: ConsoleBackend;
  readonly block: BlockBackend | undefined;
  net: NetBackend | undefined;
  readonly clock: PvClock;
  readonly devices: Device[];
  /** Pages ever written (guest or VMM), so a save writes only those. */
  readonly touched: Uint8Array;
  #frozen = false;
  #pendingService = false;
  #doorbells = 0;
  #loop: Promise<void> | undefined;
  #stopped = false;
  #report: StopReport | undefined;
  /**
   * Called on every doorbell before the devices are serviced (a testing aid:
   * a save from here catches requests in flight).
   */
  onDoorbell: ((count: number) => Promise<void> | void) | undefined;

  private constructor(
    readonly backend: VmBackend,
    readonly disk: DiskImage | undefined,
    tap: TapDevice | undefined,
    readonly config: MachineConfig,
    public bootId: bigint,
    public guestName: string,
    public args: string,
  ) {
    const mem = backend.memory;
    this.events = new EventPage(mem, () => backend.wakeGuest());
    this.console = new ConsoleBackend(mem, this.events, config.console);
    this.block = disk ? new BlockBackend(mem, this.events, disk) : undefined;
    this.net = tap
      ? new NetBackend(mem, this.events, tap, config.net!.mac ?? macFor(tap.name), {
        mtu: config.net!.mtu ?? 1500,
        active: !config.standby,
      })
      : undefined;
    this.clock = new PvClock(mem, { tscKhz: backend.tscKhz, readTsc: () => backend.readTsc() });
    this.devices = [
      this.console,
      ...(this.block ? [this.block] : []),
      ...(this.net ? [this.net] : []),
    ];
    this.touched = new Uint8Array(Math.ceil(mem.pages / 64) * 8);
  }

  static #open(
    config: MachineConfig,
  ): { backend: VmBackend; disk: DiskImage | undefined; tap: TapDevice | undefined } {
    checkRam(config.ramBytes);
    const mtu = config.net?.mtu ?? 1500;
    if (config.net && (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > 9000)) {
      throw new MachineConfigError(`MTU ${mtu} is outside ${MIN_MTU}..9000`);
    }
    const disk = config.disk ? openDisk(config.disk, config.diskReadOnly ?? false) : undefined;
    let tap: TapDevice | undefined;
    try {
      if (config.net) tap = TapDevice.open(config.net.tap);
      const backend = KvmBackend.create({
        ramBytes: config.ramBytes,
        doorbell: config.doorbell ?? "ioeventfd",
        doorbellPorts: DOORBELL_PORTS,
      });
      return { backend, disk, tap };
    } catch (e) {
      disk?.close();
      tap?.close();
      throw e;
    }
  }

  /** Builds a fresh VM running `config.guest`. */
  static async boot(config: MachineConfig): Promise<Machine> {
    if (!config.guest) throw new MachineConfigError("no guest image given");
    let elf: Uint8Array;
    try {
      elf = Deno.readFileSync(config.guest);
    } catch (e) {
      throw new MachineConfigError(
        `guest image ${config.guest}: ${e instanceof Error ? e.message : e}`,
      );
    }
    const { backend, disk, tap } = Machine.#open(config);
    const bootId = BigInt.asUintN(64, crypto.getRandomValues(new BigUint64Array(1))[0]);
    const m = new Machine(backend, disk, tap, config, bootId, config.guest, config.args ?? "");
    try {
      const mem = backend.memory;
      writePageTables(mem);
      writeSystemTables(mem);
      const image = loadElf(mem, elf);
      writeBootPage(mem, {
        heapStart: image.end,
        stackTop: mem.size,
        diskSectors: disk ? disk.sectors : 0n,
        diskReadOnly: disk?.readOnly ?? false,
        bootId,
        args: m.args,
        net: m.net ? { mac: m.net.mac, mtu: m.net.mtu } : undefined,
      });
      m.net?.setIp(guestIp(m.args));
      m.clock.start();
      backend.setBootRegisters({ entry: image.entry, stackTop: mem.size });
      await m.#start();
      return m;
    } catch (e) {
      m.#closeResources();
      throw e;
    }
  }

  /**
   * A VM whose RAM and devices exist but whose vCPU has not started: a
   * standby's ready VM. Fill its memory, then {@link activate} it.
   */
  static prepare(config: MachineConfig): Machine {
    const { backend, disk, tap } = Machine.#open(config);
    return new Machine(backend, disk, tap, config, 0n, config.guest ?? "", config.args ?? "");
  }

  /** Restores a VM saved by {@link saveTo}, in this (possibly another) process. */
  static async restore(path: string, config: Omit<MachineConfig, "ramBytes">): Promise<Machine> {
    const saved = validateSavedMachine(readStateMeta(path), path);
    if (saved.disk && !config.disk) {
      throw new MachineConfigError(`${path} was saved with a disk; give the same disk image`);
    }
    if (!saved.disk && config.disk) {
      throw new MachineConfigError(`${path} was saved without a disk`);
    }
    const m = Machine.prepare({
      ...config,
      ramBytes: saved.ramBytes,
      diskReadOnly: saved.disk?.readOnly,
    });
    try {
      readStateFile(path, m.backend.memory);
      await m.activate(saved);
      return m;
    } catch (e) {
      m.#closeResources();
      throw e;
    }
  }

  /**
   * Adopts a saved state over the memory already in place (a prepared VM)
   * and starts the vCPU. Outputs the state still held are re-issued, and
   * requests the guest posted that no backend took yet are taken now: "the
   * secondary will redo the same operation".
   */
  async activate(saved: SavedMachine): Promise<void> {
    if (saved.ramBytes !== this.backend.memory.size) {
      throw new MachineConfigError(
        `the saved VM has ${saved.ramBytes} bytes of RAM; this one has ${this.backend.memory.size}`,
      );
    }
    const disk = this.disk;
    if (saved.disk && disk && disk.sectors !== saved.disk.sectors) {
      throw new MachineConfigError(
        `disk ${disk.path} has ${disk.sectors} sectors; the saved VM had ${saved.disk.sectors}`,
      );
    }
    this.bootId = saved.bootId;
    this.guestName = saved.guest;
    this.args = saved.args;
    this.backend.restoreCpu(saved.cpu);
    this.events.restore(saved.devices.events);
    this.console.restore(saved.devices.console);
    if (this.block) this.block.restore(saved.devices.block);
    const savedNet = (saved.devices as { net?: unknown }).net ?? null;
    if (this.net && savedNet === null) {
      throw new MachineConfigError("the saved VM has no network device");
    }
    if (!this.net && savedNet !== null) {
      throw new MachineConfigError("the saved VM has a network device; give it a --tap");
    }
    if (this.net) {
      // Frames that reached this (standby) TAP before the takeover were
      // meant for the old primary's guest: never deliver them late.
      (this.net.tap as { drain?: () => number }).drain?.();
      // The guest keeps its MAC whatever this host's default would be.
      const mac = (savedNet as { mac?: unknown }).mac;
      if (typeof mac === "string" && mac !== this.net.mac) this.#renewNet(mac);
      this.net.restore(savedNet);
      this.net.setIp(guestIp(this.args));
      this.net.setActive(true);
    }
    this.clock.restore(saved.clock);
    await this.#start();
    this.reissueHeldOutputs();
    this.#serviceAll();
  }

  /** A new (not yet started) network backend on the same TAP, with `mac`. */
  #renewNet(mac: string): void {
    const old = this.net!;
    this.net = new NetBackend(this.backend.memory, this.events, old.tap, mac, {
      mtu: old.mtu,
      active: true,
    });
    this.devices[this.devices.indexOf(old)] = this.net;
  }

  /** Sends every output the devices still hold (after a takeover). */
  reissueHeldOutputs(): void {
    this.console.reissueHeld();
    this.block?.reissueHeld();
    this.net?.reissueHeld();
  }

  async #start(): Promise<void> {
    await this.backend.start();
    this.backend.stopped.then((r) => {
      this.#report = r;
      this.#stopped = true;
      (this.backend as KvmBackend).interruptDoorbell?.();
    });
    this.#loop = this.#doorbellLoop();
    this.net?.start();
  }

  async #doorbellLoop(): Promise<void> {
    while (!this.#stopped) {
      const bits = await this.backend.nextDoorbell();
      if (this.#stopped) break;
      if (bits === 0) continue;
      this.#doorbells++;
      if (this.onDoorbell) await this.onDoorbell(this.#doorbells);
      if (this.#frozen) this.#pendingService = true;
      else this.#serviceAll();
    }
    // Drain what the guest wrote before it stopped (its last console lines).
    if (!this.#frozen) this.#serviceAll();
  }

  /** Lets the backends take what the guest posted (e.g. after held output was released). */
  service(): void {
    if (!this.#frozen) this.#serviceAll();
  }

  #serviceAll(): void {
    for (const d of this.devices) d.service();
    // A backend with work left over (its budget ran out) goes again.
    if (this.block?.needsService || this.net?.needsService) {
      queueMicrotask(() => this.#frozen || this.#serviceAll());
    }
  }

  /** Number of doorbells seen so far. */
  get doorbells(): number {
    return this.#doorbells;
  }

  /** The vCPU state seen by the last pause() just before it asked. */
  pausedFrom: VcpuStateName | undefined;

  #pauseDepth = 0;

  /**
   * Pauses the vCPU and freezes the backends: guest memory stops changing.
   * Pauses nest: the guest runs again after as many resume() calls.
   */
  async pause(): Promise<void> {
    if (this.#pauseDepth++ > 0) return await this.backend.pause();
    this.#frozen = true;
    // The rx pump writes guest memory outside service(): hold it too.
    this.net?.freeze();
    this.pausedFrom = this.backend.vcpuState();
    await this.backend.pause();
  }

  /** Undoes one pause(). */
  resume(): void {
    if (this.#pauseDepth === 0) return;
    if (--this.#pauseDepth > 0) return;
    this.backend.resume();
    this.#frozen = false;
    this.net?.thaw();
    if (this.#pendingService) {
      this.#pendingService = false;
      this.#serviceAll();
    }
  }

  /** The whole machine state as plain data (paused). */
  saveState(): SavedMachine {
    return {
      kind: "kemari-vm",
      abiVersion: ABI_VERSION,
      ramBytes: this.backend.memory.size,
      guest: this.guestName,
      args: this.args,
      bootId: this.bootId,
      disk: this.disk ? { sectors: this.disk.sectors, readOnly: this.disk.readOnly } : null,
      cpu: this.backend.saveCpu(),
      clock: this.clock.save(),
      devices: {
        events: this.events.save(),
        console: this.console.save(),
        block: this.block ? this.block.save() : null,
        net: this.net ? this.net.save() : null,
      },
      savedAt: new Date().toISOString(),
      pausedFrom: this.pausedFrom ?? "new",
    };
  }

  /**
   * Records pages written into RAM behind the VMM's back (a standby applying
   * checkpoints), so that a later full sync from this machine sends them.
   */
  markTouched(pages: ArrayLike<number>): void {
    const t = this.touched;
    for (let i = 0; i < pages.length; i++) t[pages[i] >> 3] |= 1 << (pages[i] & 7);
  }

  /** Harvests dirty pages (hypervisor ∪ VMM) and adds them to `touched`. */
  harvest(): Uint8Array {
    const bitmap = this.backend.harvestDirty();
    const t = this.touched;
    for (let i = 0; i < bitmap.length; i++) t[i] |= bitmap[i];
    return bitmap;
  }

  /** Pauses, writes a state file, and resumes unless `stay` is set. */
  async saveTo(path: string, stay = false): Promise<void> {
    await this.pause();
    try {
      const state = this.saveState();
      this.harvest();
      writeStateFile(path, state, this.backend.memory, this.touched);
    } finally {
      if (!stay) this.resume();
    }
  }

  /** Resolves when the guest stops (exit, panic, crash, error). */
  async wait(): Promise<StopReport> {
    const r = await this.backend.stopped;
    await this.#loop;
    return r;
  }

  /** The stop report, once stopped. */
  get report(): StopReport | undefined {
    return this.#report;
  }

  /**
   * Stops the guest's vCPU but keeps every resource: the replication engine
   * still takes a last checkpoint of the stopped guest and releases its
   * output before {@link shutdown}.
   */
  async halt(): Promise<void> {
    await this.backend.stop();
  }

  /** Stops the guest and releases everything. */
  async shutdown(): Promise<void> {
    this.#shutdown ??= (async () => {
      await this.backend.stop();
      await this.#loop;
      await this.net?.close();
      this.#closeResources();
    })();
    await this.#shutdown;
  }
  #shutdown: Promise<void> | undefined;
  #closed = false;

  #closeResources(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.backend.close();
    this.disk?.close();
    this.net?.close();
    this.events.flushLog();
  }
}

/** The guest's IPv4 address from its "ip=A.B.C.D/prefix" argument, or null. */
export function guestIp(args: string): string | null {
  const m = /(?:^|\s)ip=(\d{1,3}(?:\.\d{1,3}){3})(?:\/\d{1,2})?(?:\s|$)/.exec(args);
  return m ? m[1] : null;
}

/** A stable, locally administered unicast MAC for a TAP name. */
export function macFor(name: string): string {
  const h = crc32(new TextEncoder().encode(name));
  const b = [0x52, 0x54, 0x00, (h >>> 16) & 0xff, (h >>> 8) & 0xff, h & 0xff];
  return b.map((x) => x.toString(16).padStart(2, "0")).join(":");
}

function openDisk(path: string, readOnly: boolean): DiskImage {
  try {
    return DiskImage.open(path, { readOnly });
  } catch (e) {
    throw new MachineConfigError(`disk image ${path}: ${e instanceof Error ? e.message : e}`);
  }
}
