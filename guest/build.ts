/**
 * Builds the kemari reference guest: every `guest/programs/<name>.c` is linked
 * with the runtime (`guest/runtime/*.c`, `*.S`) into `guest/build/<name>.elf`;
 * programs that include "net.h" also get the network stack (`guest/net/*.c`).
 *
 * Run it directly (`deno run -A guest/build.ts`) or import it:
 *
 * ```ts
 * import { buildGuest, guestPath } from "../guest/build.ts";
 * await buildGuest();
 * const elf = guestPath("logwriter");
 * ```
 *
 * A program is rebuilt only when its ELF is missing or older than one of its
 * inputs (its source, the runtime, the headers, link.ld or this script).
 * Outputs are written to a temporary name and renamed, so concurrent builds
 * (parallel tests) never see a half-written ELF. Uses only Deno built-ins and
 * node: modules.
 * @module
 */

import * as path from "node:path";
import { fileURLToPath } from "node:url";

const GUEST_DIR = path.dirname(fileURLToPath(import.meta.url));
const BUILD_DIR = path.join(GUEST_DIR, "build");
const INCLUDE_DIR = path.join(GUEST_DIR, "include");
const RUNTIME_DIR = path.join(GUEST_DIR, "runtime");
const PROGRAMS_DIR = path.join(GUEST_DIR, "programs");
/** The network stack: linked into programs that include "net.h". */
const NET_DIR = path.join(GUEST_DIR, "net");
const LINK_SCRIPT = path.join(GUEST_DIR, "link.ld");
const THIS_FILE = fileURLToPath(import.meta.url);

/** The compiler; override with KEMARI_GUEST_CC. */
function compiler(): string {
  return Deno.env.get("KEMARI_GUEST_CC") ?? "gcc";
}

/** Flags shared by every guest program. */
export const GUEST_CFLAGS: readonly string[] = [
  "-std=gnu11",
  "-ffreestanding",
  "-nostdlib",
  "-static",
  "-fno-pic",
  "-no-pie",
  "-fno-stack-protector",
  // The compiler must never touch x87/SSE/AVX/opmask registers: programs keep
  // state in them with explicit asm, and the checkpoint test relies on that.
  "-mgeneral-regs-only",
  "-mno-red-zone",
  "-fno-asynchronous-unwind-tables",
  "-fno-unwind-tables",
  "-O2",
  "-g",
  "-Wall",
  "-Wextra",
  "-Werror",
  "-Wl,--build-id=none",
  "-Wl,-z,max-page-size=4096",
  "-Wl,-z,noexecstack",
  "-Wl,--fatal-warnings",
];

/** A program failed to compile; the message carries gcc's output. */
export class GuestBuildError extends Error {
  constructor(readonly program: string, readonly output: string) {
    super(`guest build failed for ${program}:\n${output}`);
    this.name = "GuestBuildError";
  }
}

/** Path of the built ELF for a program name (e.g. "logwriter"). */
export function guestPath(name: string): string {
  return path.join(BUILD_DIR, `${name}.elf`);
}

/** The build directory (guest/build). */
export function guestBuildDir(): string {
  return BUILD_DIR;
}

async function listFiles(dir: string, exts: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && exts.some((e) => entry.name.endsWith(e))) {
      out.push(path.join(dir, entry.name));
    }
  }
  return out.sort();
}

/** Like listFiles, but an absent directory has no files. */
async function listFilesIfAny(dir: string, exts: readonly string[]): Promise<string[]> {
  try {
    return await listFiles(dir, exts);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
}

/** A program that includes "net.h" is linked with the network stack (guest/net/*.c). */
function usesNet(source: string): boolean {
  return /^\s*#\s*include\s+"net\.h"/m.test(source);
}

/** mtime in ms, or null when the file does not exist. */
async function mtimeOf(file: string): Promise<number | null> {
  try {
    const st = await Deno.stat(file);
    return st.mtime?.getTime() ?? 0;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

async function newest(files: readonly string[]): Promise<number> {
  let t = 0;
  for (const f of files) {
    const m = await mtimeOf(f);
    if (m === null) throw new Error(`guest build input missing: ${f}`);
    if (m > t) t = m;
  }
  return t;
}

async function compile(name: string, source: string, runtime: readonly string[]): Promise<void> {
  const out = guestPath(name);
  const tmp = `${out}.tmp-${Deno.pid}-${crypto.randomUUID()}`;
  const args = [
    ...GUEST_CFLAGS,
    "-I",
    INCLUDE_DIR,
    "-T",
    LINK_SCRIPT,
    "-o",
    tmp,
    ...runtime,
    source,
  ];
  let result: Deno.CommandOutput;
  try {
    result = await new Deno.Command(compiler(), { args, stdout: "piped", stderr: "piped" })
      .output();
  } catch (e) {
    throw new GuestBuildError(name, `cannot run ${compiler()}: ${(e as Error).message}`);
  }
  const text = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
  if (!result.success) {
    await Deno.remove(tmp).catch(() => {});
    throw new GuestBuildError(name, text.trim() || `${compiler()} exited with ${result.code}`);
  }
  await Deno.rename(tmp, out);
  if (text.trim()) console.error(text.trim());
}

/**
 * Builds every out-of-date program and returns the build directory.
 * Throws {@link GuestBuildError} (with gcc's message) when a program fails.
 */
export async function buildGuest(): Promise<string> {
  const runtime = await listFiles(RUNTIME_DIR, [".c", ".S"]);
  const headers = await listFiles(INCLUDE_DIR, [".h"]);
  const programs = await listFiles(PROGRAMS_DIR, [".c"]);
  const netSources = await listFilesIfAny(NET_DIR, [".c"]);
  const netInputs = [...netSources, ...await listFilesIfAny(NET_DIR, [".h"])];
  const commonTime = await newest([...runtime, ...headers, LINK_SCRIPT, THIS_FILE]);
  await Deno.mkdir(BUILD_DIR, { recursive: true });

  const results = await Promise.allSettled(programs.map(async (source) => {
    const name = path.basename(source, ".c");
    const net = usesNet(await Deno.readTextFile(source));
    const inputTime = Math.max(commonTime, await newest([source, ...(net ? netInputs : [])]));
    const outTime = await mtimeOf(guestPath(name));
    if (outTime !== null && outTime > inputTime) return;
    await compile(name, source, net ? [...runtime, ...netSources] : runtime);
    console.log(`guest: built ${path.relative(Deno.cwd(), guestPath(name))}`);
  }));

  const failures = results.flatMap((r) => r.status === "rejected" ? [r.reason] : []);
  if (failures.length === 1) throw failures[0];
  if (failures.length > 1) {
    throw new Error(failures.map((f) => (f as Error).message).join("\n\n"));
  }
  return BUILD_DIR;
}

if (import.meta.main) {
  try {
    await buildGuest();
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
