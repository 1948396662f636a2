/**
 * Destinations for guest console output.
 * @module
 */

/** Receives guest console bytes, in order. */
export interface ConsoleSink {
  /** Takes a copy-safe chunk of output; may throw on a host I/O error. */
  write(bytes: Uint8Array): void;
  /** Releases host resources. */
  close(): void;
}

/** Anything with a synchronous, possibly partial write. */
interface SyncWriter {
  writeSync(bytes: Uint8Array): number;
}

/** Writes all of `bytes`, looping over partial writes. */
function writeAll(writer: SyncWriter, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += writer.writeSync(bytes.subarray(done));
}

/** Writes to the VMM's standard output. */
export class StdoutSink implements ConsoleSink {
  write(bytes: Uint8Array): void {
    writeAll(Deno.stdout, bytes);
  }
  close(): void {}
}

/** Appends to a file, creating it if needed. */
export class FileSink implements ConsoleSink {
  readonly #file: Deno.FsFile;

  constructor(readonly path: string) {
    this.#file = Deno.openSync(path, { append: true, create: true });
  }

  write(bytes: Uint8Array): void {
    writeAll(this.#file, bytes);
  }

  close(): void {
    this.#file.close();
  }
}

/** Discards everything. */
export class NullSink implements ConsoleSink {
  write(_bytes: Uint8Array): void {}
  close(): void {}
}

/** Keeps every byte in memory (tests). */
export class MemorySink implements ConsoleSink {
  readonly chunks: Uint8Array[] = [];

  write(bytes: Uint8Array): void {
    this.chunks.push(bytes.slice());
  }

  close(): void {}

  /** All bytes received, concatenated. */
  bytes(): Uint8Array {
    const total = this.chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  }

  /** All bytes received, decoded as UTF-8. */
  text(): string {
    return new TextDecoder().decode(this.bytes());
  }
}

/** Builds a sink from "stdout", "null", "memory" or "file:/path". */
export function parseConsoleSink(spec: string): ConsoleSink {
  if (spec === "stdout") return new StdoutSink();
  if (spec === "null") return new NullSink();
  if (spec === "memory") return new MemorySink();
  if (spec.startsWith("file:") && spec.length > "file:".length) {
    return new FileSink(spec.slice("file:".length));
  }
  throw new Error(`unknown console sink "${spec}" (use stdout, null, memory or file:/path)`);
}
