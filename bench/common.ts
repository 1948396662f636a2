/**
 * Shared helpers of the kemari benchmarks: percentiles, a plain text table,
 * the JSON result line, host facts, CPU pinning with taskset, and polling.
 * Benchmarks only report wall-clock numbers; nothing here asserts on them.
 * @module
 */

/** The repository root. */
export const ROOT = new URL("../", import.meta.url).pathname;
/** The kemari CLI entry point. */
export const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Percentiles of a sample, nearest rank rounded down (as the pingpong guest). */
export interface Summary {
  n: number;
  min: number;
  p50: number;
  p99: number;
  max: number;
}

/** p50/p99/min/max of `xs` (any unit). */
export function summarize(xs: readonly number[]): Summary {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s.length ? s[Math.floor((s.length - 1) * q)] : NaN;
  return { n: s.length, min: at(0), p50: at(0.5), p99: at(0.99), max: at(1) };
}

/** The median of `xs`. */
export function median(xs: readonly number[]): number {
  return summarize(xs).p50;
}

/** A number with up to `digits` decimals and no trailing noise. */
export function fmt(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return "n/a";
  return x >= 100 ? x.toFixed(0) : x.toFixed(digits);
}

/** "median (min–max)". */
export function spread(xs: readonly number[], digits = 1): string {
  const s = summarize(xs);
  return `${fmt(s.p50, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

/** Prints a left-aligned text table. */
export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  console.log(line(headers));
  console.log(line(widths.map((w) => "-".repeat(w))));
  for (const r of rows) console.log(line(r));
}

/** Prints the machine-readable result line `BENCH_JSON {...}`, with host facts (load at the end). */
export function emitJson(result: Record<string, unknown>): void {
  console.log(`BENCH_JSON ${JSON.stringify({ ...result, host: hostInfo() })}`);
}

/** CPUs this process may run on (Cpus_allowed_list), e.g. "0-1" or "0". */
export function allowedCpus(): string {
  const status = Deno.readTextFileSync("/proc/self/status");
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? "?";
}

/** Facts about this host for the report. */
export function hostInfo(): Record<string, string | number> {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  return {
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "?",
    cpus: (cpuinfo.match(/^processor\s*:/gm) ?? []).length,
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    allowedCpus: allowedCpus(),
    loadavg: Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" "),
  };
}

/** Prints the host line every benchmark starts with. */
export function printHost(title: string): void {
  const h = hostInfo();
  console.log(`# ${title}`);
  console.log(
    `# host: ${h.cpu}, ${h.cpus} CPUs, Linux ${h.kernel}, Deno ${h.deno}; ` +
      `this process may run on CPUs ${h.allowedCpus}; load average ${h.loadavg} ` +
      "(other work on this 2-CPU host disturbs every figure)",
  );
}

/** Command prefix that pins a whole process (all its threads) to `cpus`, or none. */
export function pinPrefix(cpus: string | undefined): string[] {
  return cpus === undefined ? [] : ["taskset", "-c", cpus];
}

/**
 * Runs `deno run -A script args` under `taskset -c cpus` (or unpinned) and
 * returns its stdout; throws with its stderr when it fails.
 */
export async function runDeno(
  script: string,
  args: string[],
  cpus?: string,
  timeoutMs = 120_000,
): Promise<string> {
  const argv = [...pinPrefix(cpus), Deno.execPath(), "run", "-A", script, ...args];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const stdout = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `${argv.join(" ")} failed (${out.code}):\n${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return stdout;
}

/**
 * For benchmarks with a `--cpus LIST` option: unless already pinned (the
 * `--pinned` flag), re-runs the calling script under `taskset -c LIST` with
 * `--pinned` added, prints its output, and returns true (the caller stops).
 */
export async function reexecPinned(
  script: string,
  cpus: string | undefined,
  pinned: boolean | undefined,
): Promise<boolean> {
  if (cpus === undefined || pinned) return false;
  console.log(await runDeno(script, [...Deno.args, "--pinned"], cpus, 900_000));
  return true;
}

/** The last `BENCH_JSON` object in a child's output. */
export function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.split("\n").filter((l) => l.startsWith("BENCH_JSON "));
  if (lines.length === 0) throw new Error(`no BENCH_JSON line in:\n${stdout}`);
  return JSON.parse(lines[lines.length - 1].slice("BENCH_JSON ".length));
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `ready` every `everyMs` until it is true; throws after `timeoutMs`. */
export async function waitUntil(
  what: string,
  ready: () => boolean,
  timeoutMs = 10_000,
  everyMs = 0.2,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!ready()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}
