/**
 * Test network topologies in network namespaces, built with iproute2.
 *
 * {@link NetTopology.create} makes four namespaces, `kemari-<tag>-client`,
 * `-primary`, `-standby` and `-net`, where the tag `<label>-<pid>-<serial>`
 * is unique per topology (the pid lets leftovers of a dead run be recognised
 * and swept; the serial has random digits, as test workers share a pid):
 *
 * ```
 *              net: bridge br0 (10.80.X.0/24 LAN, no address of its own)
 *          p-client      p-primary       p-standby      (bridge ports, veths)
 *             |              |               |
 *  client: lan0 .1   primary: lan0─br0 .2   standby: lan0─br0 .3
 *                             tap0 (addTap)          tap0 (addTap)
 *                    primary: repl0 ════════ standby: repl0   (10.80.X+128.0/30)
 * ```
 *
 * The primary's and standby's LAN ports are enslaved to a bridge `br0` of
 * their own, so a VM's TAP added with {@link NetTopology.addTap} sits on the
 * LAN beside its host; the central bridge then learns the guest's MAC on
 * `p-primary` or `p-standby` ({@link NetTopology.portOf}). The replication
 * link is a separate veth pair that {@link NetTopology.cut} and
 * {@link NetTopology.heal} take down and up.
 *
 * Nothing is created in, or changed in, the root namespace: every link is
 * created inside a test namespace (`ip -n`), and every address lives there.
 * IPv6 is off in every namespace unless asked for, so TAPs see no stray
 * router solicitations.
 *
 * Cleanup: {@link NetTopology.destroy} kills what still runs inside the
 * namespaces (processes the tests started there) and deletes them; handlers
 * for `unload`, `error` and `unhandledrejection` do the same for every
 * topology still alive when the process ends, and {@link sweepStale}
 * (called by create) deletes the namespaces of runs whose process is gone
 * (SIGKILL). {@link TestNamespace} is a single namespace with the same
 * cleanup, e.g. for a lone TAP.
 * @module
 */

/** A host namespace of the topology. */
export type HostRole = "client" | "primary" | "standby";
/** Any namespace of the topology. */
export type NsRole = HostRole | "net";

/** The four roles, in creation order. */
export const NS_ROLES: readonly NsRole[] = ["net", "client", "primary", "standby"];
const HOST_ROLES: readonly HostRole[] = ["client", "primary", "standby"];

/** Names of the interfaces inside the namespaces. */
export const IFACE = {
  /** The central bridge (in `-net`) and the host-local bridges (primary, standby). */
  bridge: "br0",
  /** A host's LAN veth. */
  lan: "lan0",
  /** The replication veth, in primary and standby. */
  replication: "repl0",
} as const;

/** The central bridge's port towards each host. */
export const PORT_OF: Readonly<Record<HostRole, string>> = {
  client: "p-client",
  primary: "p-primary",
  standby: "p-standby",
};

/** Names made here: `kemari-<label>-<pid>-<n>-<role>`. */
const NAME_PATTERN = /^kemari-([a-z0-9]+)-(\d+)-(\d+)-(client|primary|standby|net|solo)$/;

/** Turns IPv6 off in the namespace it runs in (and for links made later). */
const DISABLE_IPV6 = "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && " +
  "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6";

/** What a command printed and how it ended. */
export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A learned (or static) entry of the central bridge's forwarding database. */
export interface FdbEntry {
  mac: string;
  /** The bridge port (interface name). */
  port: string;
  /** The host behind that port, if it is one of ours. */
  role: HostRole | null;
  /** "permanent", "static", "" (learned) ... as `bridge fdb` says. */
  state: string;
}

/** Options of {@link NetTopology.create}. */
export interface TopologyOptions {
  /** A short label in the namespace names (letters, digits; default "t"). */
  label?: string;
  /** X of the LAN 10.80.X.0/24, 1..127 (default: picked per topology). */
  subnet?: number;
  /** Keep IPv6 on (default false). */
  ipv6?: boolean;
}

const live = new Set<{ destroySync(): void }>();
let counter = 0;
let portCounter = 0;
let unloadInstalled = false;
const decoder = new TextDecoder();

/** Runs a command (no shell) and collects its output; never throws for a non-zero exit. */
export async function execHost(cmd: readonly string[], stdin?: string): Promise<ExecResult> {
  const [program, ...args] = cmd;
  const child = new Deno.Command(program, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

function execHostSync(cmd: readonly string[]): ExecResult {
  const [program, ...args] = cmd;
  try {
    const out = new Deno.Command(program, { args, stdout: "piped", stderr: "piped" }).outputSync();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } catch (error) {
    return { code: -1, stdout: "", stderr: String(error) };
  }
}

function oneLine(text: string): string {
  return text.trim().split("\n").at(-1) ?? "";
}

/** Every network namespace name (`ip netns list`). */
export function listNamespaces(): string[] {
  const out = execHostSync(["ip", "netns", "list"]);
  if (out.code !== 0) return [];
  return out.stdout.split("\n").map((line) => line.split(" ")[0]).filter((name) => name !== "");
}

function processAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** Kills the processes still inside namespace `ns` (started there by tests) and deletes it. */
function deleteNamespaceSync(ns: string): void {
  const pids = execHostSync(["ip", "netns", "pids", ns]);
  for (const pid of pids.stdout.split("\n").map(Number).filter((p) => p > 1)) {
    if (pid === Deno.pid) continue;
    try {
      Deno.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  execHostSync(["ip", "netns", "delete", ns]);
}

/**
 * Deletes the namespaces left by topologies of processes that no longer
 * exist. Returns how many were deleted.
 */
export function sweepStale(): number {
  let swept = 0;
  for (const ns of listNamespaces()) {
    const match = NAME_PATTERN.exec(ns);
    if (match === null) continue;
    const pid = Number(match[2]);
    if (pid === Deno.pid || processAlive(pid)) continue;
    deleteNamespaceSync(ns);
    swept++;
  }
  return swept;
}

function destroyAllSync(): void {
  for (const owner of [...live]) owner.destroySync();
}

/**
 * Cleans up on the way out: at unload (normal end, Deno.exit) and on an
 * uncaught error or unhandled rejection (which end the process without an
 * unload). A SIGKILLed run leaves its namespaces to {@link sweepStale}.
 */
function installUnload(): void {
  if (unloadInstalled) return;
  unloadInstalled = true;
  globalThis.addEventListener("unload", destroyAllSync);
  globalThis.addEventListener("error", destroyAllSync);
  globalThis.addEventListener("unhandledrejection", destroyAllSync);
}

/** A run-unique number for names: a counter and random digits (workers share the pid). */
function nextSerial(): string {
  const random = crypto.getRandomValues(new Uint32Array(1))[0] % 1_000_000;
  return `${++counter}${random.toString().padStart(6, "0")}`;
}

function checkLabel(label: string): string {
  if (!/^[a-z0-9]{1,16}$/.test(label)) {
    throw new Error(`namespace label ${JSON.stringify(label)}: use 1-16 lower-case letters/digits`);
  }
  return label;
}

/**
 * One empty network namespace `kemari-<label>-<pid>-<n>-solo` with only
 * `lo` up (and IPv6 off unless asked), for tests that need a private
 * network stack, e.g. a TAP. Cleaned up like a topology.
 */
export class TestNamespace {
  #destroyed = false;

  private constructor(readonly name: string) {}

  static async create(label = "ns", options: { ipv6?: boolean } = {}): Promise<TestNamespace> {
    const tag = `${checkLabel(label)}-${Deno.pid}-${nextSerial()}`;
    sweepStale();
    installUnload();
    const ns = new TestNamespace(`kemari-${tag}-solo`);
    live.add(ns);
    try {
      const added = await execHost(["ip", "netns", "add", ns.name]);
      if (added.code !== 0) {
        throw new Error(`ip netns add ${ns.name} failed: ${oneLine(added.stderr)}`);
      }
      if (!(options.ipv6 ?? false)) await ns.run(["sh", "-c", DISABLE_IPV6]);
      await ns.run(["ip", "link", "set", "lo", "up"]);
    } catch (error) {
      ns.destroySync();
      throw error;
    }
    return ns;
  }

  /** Runs `cmd` inside the namespace; never throws for a non-zero exit. */
  exec(cmd: readonly string[], stdin?: string): Promise<ExecResult> {
    if (this.#destroyed) throw new Error(`namespace ${this.name} was destroyed`);
    return execHost(["ip", "netns", "exec", this.name, ...cmd], stdin);
  }

  /** Like {@link exec}, but throws unless the command exits 0; returns stdout. */
  async run(cmd: readonly string[]): Promise<string> {
    const out = await this.exec(cmd);
    if (out.code !== 0) {
      throw new Error(
        `[${this.name}] ${cmd.join(" ")} failed (exit ${out.code}): ${oneLine(out.stderr)}`,
      );
    }
    return out.stdout;
  }

  /** True while the namespace exists. */
  exists(): boolean {
    return listNamespaces().includes(this.name);
  }

  /** Kills what runs inside and deletes the namespace. Idempotent. */
  destroy(): Promise<void> {
    this.destroySync();
    return Promise.resolve();
  }

  /** destroy(), synchronously. */
  destroySync(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    live.delete(this);
    deleteNamespaceSync(this.name);
  }
}

/** A client, a primary and a standby on one bridged LAN, plus a replication link. */
export class NetTopology {
  /** Namespace names by role. */
  readonly ns: Readonly<Record<NsRole, string>>;
  /** X of the LAN 10.80.X.0/24. */
  readonly subnet: number;
  /** Each host's LAN address (prefix 24). */
  readonly addr: Readonly<Record<HostRole, string>>;
  /** The interface that holds a host's LAN address (lan0 on the client, br0 on the others). */
  readonly lanIf: Readonly<Record<HostRole, string>>;
  /** Replication link addresses (prefix 30), on `repl0`. */
  readonly replAddr: Readonly<{ primary: string; standby: string }>;
  #destroyed = false;
  #replicationUp = true;

  private constructor(readonly tag: string, subnet: number) {
    this.subnet = subnet;
    const ns = {} as Record<NsRole, string>;
    for (const role of NS_ROLES) ns[role] = `kemari-${tag}-${role}`;
    this.ns = ns;
    this.addr = {
      client: `10.80.${subnet}.1`,
      primary: `10.80.${subnet}.2`,
      standby: `10.80.${subnet}.3`,
    };
    this.lanIf = { client: IFACE.lan, primary: IFACE.bridge, standby: IFACE.bridge };
    this.replAddr = { primary: `10.80.${subnet + 128}.1`, standby: `10.80.${subnet + 128}.2` };
  }

  /** Builds the topology; on any failure deletes what it made and throws. */
  static async create(options: TopologyOptions = {}): Promise<NetTopology> {
    const label = checkLabel(options.label ?? "t");
    const serial = nextSerial();
    const subnet = options.subnet ?? (Number(serial) % 127) + 1;
    if (!Number.isInteger(subnet) || subnet < 1 || subnet > 127) {
      throw new RangeError(`subnet ${subnet} is outside 1..127`);
    }
    sweepStale();
    installUnload();
    const topology = new NetTopology(`${label}-${Deno.pid}-${serial}`, subnet);
    live.add(topology);
    try {
      await topology.#build(options.ipv6 ?? false);
    } catch (error) {
      await topology.destroy();
      throw error;
    }
    return topology;
  }

  async #build(ipv6: boolean): Promise<void> {
    const { ns } = this;
    for (const role of NS_ROLES) {
      await this.#host(["ip", "netns", "add", ns[role]]);
      if (!ipv6) {
        await this.run(role, ["sh", "-c", DISABLE_IPV6]);
      }
      await this.ip(role, "link", "set", "lo", "up");
    }
    await this.#bridge("net");
    for (const role of HOST_ROLES) {
      await this.ip(
        "net",
        ...["link", "add", PORT_OF[role], "type", "veth"],
        ...["peer", "name", IFACE.lan, "netns", ns[role]],
      );
      await this.ip("net", "link", "set", PORT_OF[role], "master", IFACE.bridge);
      await this.ip("net", "link", "set", PORT_OF[role], "up");
      if (role !== "client") {
        await this.#bridge(role);
        await this.ip(role, "link", "set", IFACE.lan, "master", IFACE.bridge);
      }
      await this.ip(role, "link", "set", IFACE.lan, "up");
      await this.ip(role, "addr", "add", `${this.addr[role]}/24`, "dev", this.lanIf[role]);
    }
    await this.ip(
      "primary",
      ...["link", "add", IFACE.replication, "type", "veth"],
      ...["peer", "name", IFACE.replication, "netns", ns.standby],
    );
    for (const role of ["primary", "standby"] as const) {
      await this.ip(role, "addr", "add", `${this.replAddr[role]}/30`, "dev", IFACE.replication);
      await this.ip(role, "link", "set", IFACE.replication, "up");
    }
  }

  async #bridge(role: NsRole): Promise<void> {
    await this.ip(
      role,
      ...["link", "add", IFACE.bridge, "type", "bridge"],
      ...["forward_delay", "0", "stp_state", "0"],
    );
    await this.ip(role, "link", "set", IFACE.bridge, "up");
  }

  async #host(cmd: readonly string[]): Promise<string> {
    const out = await execHost(cmd);
    if (out.code !== 0) {
      throw new Error(`${cmd.join(" ")} failed (exit ${out.code}): ${oneLine(out.stderr)}`);
    }
    return out.stdout;
  }

  /** The namespace name for a role (a plain name is passed through). */
  nsName(ns: NsRole | string): string {
    return (this.ns as Record<string, string>)[ns] ?? ns;
  }

  /** Runs `cmd` inside namespace `ns` (`ip netns exec`); never throws for a non-zero exit. */
  exec(ns: NsRole | string, cmd: readonly string[], stdin?: string): Promise<ExecResult> {
    this.#checkAlive();
    return execHost(["ip", "netns", "exec", this.nsName(ns), ...cmd], stdin);
  }

  /** Like {@link exec}, but throws with the command's stderr unless it exits 0; returns stdout. */
  async run(ns: NsRole | string, cmd: readonly string[]): Promise<string> {
    const out = await this.exec(ns, cmd);
    if (out.code !== 0) {
      throw new Error(
        `[${this.nsName(ns)}] ${cmd.join(" ")} failed (exit ${out.code}): ${oneLine(out.stderr)}`,
      );
    }
    return out.stdout;
  }

  /** `ip -n <ns> args...`, throwing on failure. */
  ip(ns: NsRole | string, ...args: string[]): Promise<string> {
    this.#checkAlive();
    return this.#host(["ip", "-n", this.nsName(ns), ...args]);
  }

  /**
   * Starts a long-running process inside namespace `ns`. The caller waits
   * for or kills it; destroy() kills whatever still runs there.
   */
  spawn(ns: NsRole | string, cmd: readonly string[], options: Deno.CommandOptions = {}) {
    this.#checkAlive();
    return new Deno.Command("ip", {
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      ...options,
      args: ["netns", "exec", this.nsName(ns), ...cmd],
    }).spawn();
  }

  /**
   * Adds a persistent TAP `name` in the primary's or standby's namespace,
   * enslaved to that host's bridge and up, for a VMM there to open by name
   * (TapDevice.open attaches to it). Returns the name.
   */
  async addTap(role: "primary" | "standby", name = "tap0"): Promise<string> {
    await this.ip(role, "tuntap", "add", "dev", name, "mode", "tap");
    await this.ip(role, "link", "set", name, "master", IFACE.bridge);
    await this.ip(role, "link", "set", name, "up");
    return name;
  }

  /** True unless {@link cut} took the replication link down. */
  get replicationUp(): boolean {
    return this.#replicationUp;
  }

  /** Takes the replication link down (both ends). */
  async cut(): Promise<void> {
    for (const role of ["primary", "standby"] as const) {
      await this.ip(role, "link", "set", IFACE.replication, "down");
    }
    this.#replicationUp = false;
  }

  /** Brings the replication link back up (both ends; addresses are kept). */
  async heal(): Promise<void> {
    for (const role of ["primary", "standby"] as const) {
      await this.ip(role, "link", "set", IFACE.replication, "up");
    }
    this.#replicationUp = true;
  }

  /** The central bridge's forwarding entries on its ports (bridge-local "self" entries left out). */
  async fdb(): Promise<FdbEntry[]> {
    const text = await this.#host(
      ["bridge", "-n", this.ns.net, "-j", "fdb", "show", "br", IFACE.bridge],
    );
    const roles = new Map(HOST_ROLES.map((role) => [PORT_OF[role], role] as const));
    const parsed: unknown = JSON.parse(text.trim() === "" ? "[]" : text);
    if (!Array.isArray(parsed)) throw new Error(`bridge fdb printed ${text.slice(0, 80)}`);
    const entries: FdbEntry[] = [];
    for (const item of parsed as Record<string, unknown>[]) {
      const flags = Array.isArray(item.flags) ? item.flags : [];
      if (flags.includes("self") || typeof item.mac !== "string") continue;
      const port = String(item.ifname ?? "");
      entries.push({
        mac: item.mac.toLowerCase(),
        port,
        role: roles.get(port) ?? null,
        state: String(item.state ?? ""),
      });
    }
    return entries;
  }

  /**
   * The host behind the central bridge port that has learned `mac` (or the
   * port's name if it is not a host's), or null if no port has it.
   */
  async portOf(mac: string): Promise<HostRole | string | null> {
    const want = mac.toLowerCase();
    const entry = (await this.fdb()).find((e) => e.mac === want && e.state !== "permanent");
    return entry === undefined ? null : entry.role ?? entry.port;
  }

  /** Polls {@link portOf} until it is `role` or `timeoutMs` passes; returns the last answer. */
  async waitPortOf(
    mac: string,
    role: HostRole,
    timeoutMs = 5000,
  ): Promise<HostRole | string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const port = await this.portOf(mac);
      if (port === role || Date.now() >= deadline) return port;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /**
   * True if a TCP connection from namespace `from` reaches a listener on
   * `toAddr` in namespace `to` and echoes a line back (a ping that needs
   * no ping binary: both ends are short Deno scripts).
   */
  async reachable(from: NsRole, to: NsRole, toAddr: string, timeoutMs = 3000): Promise<boolean> {
    const port = 20000 + ((Deno.pid + portCounter++) % 20000);
    const deno = Deno.execPath();
    const server = this.spawn(to, [
      deno,
      "eval",
      `const l = Deno.listen({ hostname: ${JSON.stringify(toAddr)}, port: ${port} });
       const t = setTimeout(() => Deno.exit(3), ${timeoutMs + 2000});
       console.log("ready");
       const c = await l.accept();
       const b = new Uint8Array(64);
       const n = await c.read(b);
       await c.write(b.subarray(0, n ?? 0));
       c.close(); l.close(); clearTimeout(t);`,
    ]);
    try {
      const reader = server.stdout.getReader();
      const first = await reader.read();
      reader.releaseLock();
      if (first.done || !decoder.decode(first.value).includes("ready")) return false;
      const client = await this.exec(from, [
        deno,
        "eval",
        `const t = setTimeout(() => Deno.exit(2), ${timeoutMs});
         const c = await Deno.connect({ hostname: ${JSON.stringify(toAddr)}, port: ${port} });
         await c.write(new TextEncoder().encode("kemari-ping"));
         const b = new Uint8Array(64);
         const n = await c.read(b);
         console.log(new TextDecoder().decode(b.subarray(0, n ?? 0)));
         c.close(); clearTimeout(t);`,
      ]);
      return client.code === 0 && client.stdout.includes("kemari-ping");
    } finally {
      try {
        server.kill("SIGKILL");
      } catch {
        // already exited
      }
      await server.status;
      await server.stdout.cancel().catch(() => {});
      await server.stderr.cancel().catch(() => {});
    }
  }

  /** True once destroy() ran. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Kills what runs inside the namespaces and deletes them. Idempotent. */
  destroy(): Promise<void> {
    this.destroySync();
    return Promise.resolve();
  }

  /** destroy(), synchronously (for the unload handler). */
  destroySync(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    live.delete(this);
    for (const role of [...NS_ROLES].reverse()) deleteNamespaceSync(this.ns[role]);
  }

  /** Namespaces of this topology that still exist. */
  remaining(): string[] {
    const mine = new Set(Object.values(this.ns));
    return listNamespaces().filter((name) => mine.has(name));
  }

  #checkAlive(): void {
    if (this.#destroyed) throw new Error(`topology ${this.tag} was destroyed`);
  }
}

/** Runs `fn` with a fresh topology and always destroys it afterwards. */
export async function withTopology<T>(
  options: TopologyOptions,
  fn: (topology: NetTopology) => Promise<T> | T,
): Promise<T> {
  const topology = await NetTopology.create(options);
  try {
    return await fn(topology);
  } finally {
    await topology.destroy();
  }
}
