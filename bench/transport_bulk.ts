/**
 * Bulk push over loopback TCP: 1 GiB in 1 MiB messages, three ways —
 *
 * - `raw`:  plain Deno TCP, 1 MiB `conn.write` loops (the same write size),
 *           4 MiB reads, no framing;
 * - `off`:  a kemari TCP link with `authenticate: false` (framing, sequence
 *           numbers, one fresh array per received message; no MAC);
 * - `on`:   a kemari TCP link with authentication (ChaCha20-Poly1305 tag per
 *           frame, computed by the sender and verified by the receiver).
 *
 * Sender and receiver are two separate `deno run` subprocesses of this
 * script, pinned with `taskset` (default: sender on CPU 0, receiver on CPU 1;
 * `--pin same` puts both on CPU 0, `--pin none` leaves them unpinned). The
 * sender keeps up to two messages in flight and times from its first write to
 * the receiver's 1-byte acknowledgement after the last byte (connection set-up
 * and the handshake are not timed). Modes are interleaved run by run.
 * Reported: GB/s (10^9 bytes/s) median and min–max over the runs.
 *
 * With `--mac`, it instead measures the candidate frame MACs of node:crypto
 * in this process (the measurement behind the choice in transport/README.md):
 * HMAC-SHA256, AES-256-GCM as GMAC (payload as AAD, empty plaintext) and
 * ChaCha20-Poly1305 the same way, on 64 B, 4 KiB, 64 KiB and 1 MiB frames, on
 * one reused buffer ("hot") and, for 1 MiB, on a fresh array per frame as a
 * receiver sees it.
 *
 *   deno run -A bench/transport_bulk.ts [--runs 5] [--mib 1024] [--msg-kib 1024] [--pin cross,same,none]
 *   deno run -A bench/transport_bulk.ts --mac [--runs 5]
 * @module
 */

import { parseArgs } from "node:util";
import { cpuUsage } from "node:process";
import { createCipheriv, createHmac, randomFillSync } from "node:crypto";
import { emitJson, fmt, median, pinPrefix, printHost, printTable, summarize } from "./common.ts";
import { type Link, TcpTransport } from "../transport/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    role: { type: "string", default: "main" },
    mode: { type: "string", default: "raw" },
    port: { type: "string", default: "0" },
    runs: { type: "string", default: "5" },
    mib: { type: "string", default: "1024" },
    "msg-kib": { type: "string", default: "1024" },
    pin: { type: "string", default: "cross" },
    mac: { type: "boolean", default: false },
  },
});

const TOTAL = Number(values.mib) * 2 ** 20;
const MSG = Number(values["msg-kib"]) * 1024;
const COUNT = Math.floor(TOTAL / MSG);
const KEY = new Uint8Array(32).fill(0x5a);
const MODES = ["raw", "off", "on"] as const;
type Mode = typeof MODES[number];

function linkOptions(mode: Mode) {
  return { key: KEY, channel: "bench", authenticate: mode === "on", maxMessageBytes: MSG };
}

async function writeAll(conn: Deno.Conn, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await conn.write(off === 0 ? b : b.subarray(off));
}

type CpuUsage = { user: number; system: number };
/** CPU time (user + system) this process used since `from`, in ms. */
function cpuSince(from: CpuUsage): number {
  const now = cpuUsage();
  return (now.user - from.user + now.system - from.system) / 1e3;
}

// ---- receiver (subprocess) ----
async function receiver(mode: Mode): Promise<void> {
  if (mode === "raw") {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    console.log(`PORT ${(l.addr as Deno.NetAddr).port}`);
    const conn = await l.accept();
    conn.setNoDelay(true);
    const buf = new Uint8Array(4 << 20);
    let got = 0;
    let cpu0: CpuUsage | null = null;
    while (got < COUNT * MSG) {
      const n = await conn.read(buf);
      if (n === null) throw new Error(`raw: stream ended after ${got} bytes`);
      cpu0 ??= cpuUsage();
      got += n;
    }
    const cpuMs = cpuSince(cpu0!);
    await writeAll(conn, new Uint8Array([1]));
    await conn.read(buf); // wait for the sender to hang up
    conn.close();
    l.close();
    emitJson({ role: "recv", mode, bytes: got, cpuMs });
    return;
  }
  const listener = new TcpTransport().listen("127.0.0.1:0", linkOptions(mode));
  console.log(`PORT ${listener.address.split(":").at(-1)}`);
  const link = (await listener[Symbol.asyncIterator]().next()).value as Link;
  let got = 0;
  let cpu0: CpuUsage | null = null;
  for (let i = 0; i < COUNT; i++) {
    const m = await link.receive();
    if (m === null || m.length !== MSG) throw new Error(`message ${i}: ${m?.length ?? "end"}`);
    cpu0 ??= cpuUsage();
    got += m.length;
  }
  const cpuMs = cpuSince(cpu0!);
  await link.send([new Uint8Array([1])]);
  if ((await link.receive()) !== null) throw new Error("expected the sender's goodbye");
  link.close();
  listener.close();
  emitJson({ role: "recv", mode, bytes: got, cpuMs });
}

// ---- sender (subprocess) ----
async function sender(mode: Mode, port: number): Promise<void> {
  const payload = new Uint8Array(MSG);
  for (let o = 0; o < MSG; o += 65536) randomFillSync(payload.subarray(o, o + 65536));
  let seconds: number;
  let cpu0: CpuUsage;
  let cpuMs: number;
  if (mode === "raw") {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    const ack = new Uint8Array(1);
    cpu0 = cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < COUNT; i++) await writeAll(conn, payload);
    if ((await conn.read(ack)) !== 1) throw new Error("raw: no ack");
    seconds = (performance.now() - t0) / 1e3;
    cpuMs = cpuSince(cpu0);
    conn.close();
  } else {
    const link = await new TcpTransport().connect(`127.0.0.1:${port}`, linkOptions(mode));
    const inflight: Promise<void>[] = [];
    cpu0 = cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < COUNT; i++) {
      inflight.push(link.send([payload]));
      if (inflight.length >= 2) await inflight.shift();
    }
    await Promise.all(inflight);
    const ack = await link.receive();
    if (!ack || ack[0] !== 1) throw new Error("no ack");
    seconds = (performance.now() - t0) / 1e3;
    cpuMs = cpuSince(cpu0);
    link.close();
    await (link as unknown as { closed: Promise<void> }).closed;
  }
  emitJson({ role: "send", mode, seconds, bytes: COUNT * MSG, cpuMs });
}

// ---- orchestrator ----
const PINS: Record<string, { send?: string; recv?: string; what: string }> = {
  cross: { send: "0", recv: "1", what: "sender taskset -c 0, receiver taskset -c 1" },
  same: { send: "0", recv: "0", what: "sender and receiver both taskset -c 0" },
  none: { what: "unpinned" },
};

function spawn(role: string, mode: Mode, cpus: string | undefined, port = 0) {
  const argv = [
    ...pinPrefix(cpus),
    Deno.execPath(),
    "run",
    "-A",
    new URL(import.meta.url).pathname,
    "--role",
    role,
    "--mode",
    mode,
    "--port",
    String(port),
    "--mib",
    String(values.mib),
    "--msg-kib",
    String(values["msg-kib"]),
  ];
  return new Deno.Command(argv[0], { args: argv.slice(1), stdout: "piped", stderr: "piped" })
    .spawn();
}

async function collect(child: Deno.ChildProcess, what: string): Promise<Record<string, unknown>> {
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${what} failed (${out.code}):\n${new TextDecoder().decode(out.stderr)}`);
  }
  return lastJsonLine(text, what);
}

/** One run: throughput, and CPU seconds per GiB each side spent while data flowed. */
interface Run {
  gbps: number;
  sendCpu: number;
  recvCpu: number;
}

function lastJsonLine(text: string, what: string): Record<string, unknown> {
  const line = text.split("\n").findLast((l) => l.startsWith("BENCH_JSON "));
  if (!line) throw new Error(`${what}: no result line in:\n${text}`);
  return JSON.parse(line.slice("BENCH_JSON ".length));
}

async function once(mode: Mode, pin: string): Promise<Run> {
  const p = PINS[pin];
  const recv = spawn("recv", mode, p.recv);
  const reader = recv.stdout.getReader();
  let text = "";
  let port = 0;
  while (!port) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    const m = /PORT (\d+)/.exec(text);
    if (m) port = Number(m[1]);
  }
  if (!port) throw new Error(`receiver (${mode}) printed no port`);
  const send = spawn("send", mode, p.send, port);
  const [s, r] = await Promise.all([
    collect(send, `sender (${mode})`),
    (async () => {
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      const status = await recv.status;
      const err = new TextDecoder().decode(await new Response(recv.stderr).arrayBuffer());
      if (!status.success) throw new Error(`receiver (${mode}) failed:\n${err}`);
      const r = lastJsonLine(text, `receiver (${mode})`);
      if (r.bytes !== COUNT * MSG) throw new Error(`receiver (${mode}) got ${r.bytes} bytes`);
      return r;
    })(),
  ]);
  const gib = (s.bytes as number) / 2 ** 30;
  return {
    gbps: (s.bytes as number) / (s.seconds as number) / 1e9,
    sendCpu: (s.cpuMs as number) / 1e3 / gib,
    recvCpu: (r.cpuMs as number) / 1e3 / gib,
  };
}

async function main(): Promise<void> {
  const runs = Number(values.runs);
  const pins = String(values.pin).split(",");
  printHost(
    `bulk push over loopback TCP: ${COUNT} × ${MSG / 1024} KiB = ${
      fmt(COUNT * MSG / 2 ** 30, 2)
    } GiB, GB/s`,
  );
  console.log(
    "# sender and receiver: separate `deno run` subprocesses (not Workers); " +
      "sender keeps 2 messages in flight; CPU = user+system s per GiB while data flowed",
  );
  const results: Record<string, Record<Mode, Run[]>> = {};
  for (const pin of pins) {
    if (!PINS[pin]) throw new Error(`--pin ${pin}: expected cross, same or none`);
    results[pin] = { raw: [], off: [], on: [] };
    for (let r = 0; r < runs; r++) {
      for (const mode of MODES) results[pin][mode].push(await once(mode, pin));
    }
  }
  const label: Record<Mode, string> = {
    raw: "raw Deno TCP (1 MiB writes)",
    off: "kemari tcp, authenticate: false",
    on: "kemari tcp, authenticated",
  };
  const pick = (rs: Run[], k: keyof Run) => rs.map((r) => r[k]);
  for (const pin of pins) {
    console.log(`\n## pinning: ${PINS[pin].what} (${runs} runs each, modes interleaved)`);
    const rawMedian = median(pick(results[pin].raw, "gbps"));
    printTable(
      ["mode", "GB/s median", "min–max", "vs raw", "send CPU s/GiB", "recv CPU s/GiB"],
      MODES.map((m) => {
        const g = summarize(pick(results[pin][m], "gbps"));
        return [
          label[m],
          fmt(g.p50, 2),
          `${fmt(g.min, 2)}–${fmt(g.max, 2)}`,
          `${fmt(g.p50 / rawMedian, 2)}×`,
          fmt(median(pick(results[pin][m], "sendCpu")), 2),
          fmt(median(pick(results[pin][m], "recvCpu")), 2),
        ];
      }),
    );
  }
  const round = (x: number) => +x.toFixed(3);
  emitJson({
    bench: "transport_bulk",
    bytes: COUNT * MSG,
    messageBytes: MSG,
    runs,
    receiver: "subprocess",
    pinning: Object.fromEntries(pins.map((p) => [p, PINS[p].what])),
    results: Object.fromEntries(
      pins.map((p) => [
        p,
        Object.fromEntries(MODES.map((m) => {
          const g = summarize(pick(results[p][m], "gbps"));
          return [m, {
            gbpsMedian: round(g.p50),
            gbpsMin: round(g.min),
            gbpsMax: round(g.max),
            gbps: pick(results[p][m], "gbps").map(round),
            sendCpuPerGiB: round(median(pick(results[p][m], "sendCpu"))),
            recvCpuPerGiB: round(median(pick(results[p][m], "recvCpu"))),
          }];
        })),
      ]),
    ),
  });
}

// ---- MAC candidates ----
type MacFn = (key: Uint8Array, seq: number, data: Uint8Array) => Uint8Array;
const MACS: Record<string, MacFn> = {
  "HMAC-SHA256": (key, _seq, data) => createHmac("sha256", key).update(data).digest(),
  "AES-256-GCM (GMAC)": (key, seq, data) => {
    const iv = new Uint8Array(12);
    new DataView(iv.buffer).setUint32(8, seq, true);
    const c = createCipheriv("aes-256-gcm", key, iv);
    c.setAAD(data);
    c.final();
    return c.getAuthTag();
  },
  "ChaCha20-Poly1305 (AAD only)": (key, seq, data) => {
    const iv = new Uint8Array(12);
    new DataView(iv.buffer).setUint32(8, seq, true);
    const c = createCipheriv("chacha20-poly1305", key, iv, { authTagLength: 16 });
    c.setAAD(data, { plaintextLength: 0 });
    c.final();
    return c.getAuthTag();
  },
};

function macBench(): void {
  const runs = Number(values.runs);
  printHost("frame MAC candidates in node:crypto (Deno), one thread, this process");
  const sizes = [64, 4096, 65536, 1 << 20];
  const rows: string[][] = [];
  const json: Record<string, Record<string, number>> = {};
  for (const [name, mac] of Object.entries(MACS)) {
    json[name] = {};
    for (const fresh of [false, true]) {
      for (const size of fresh ? [1 << 20] : sizes) {
        const hot = new Uint8Array(size);
        randomFillSync(hot);
        const frames = Math.min(20_000, Math.max(64, Math.floor((256 << 20) / size)));
        for (let i = 0; i < 32; i++) mac(KEY, i, hot);
        const gbps: number[] = [];
        const usPerFrame: number[] = [];
        for (let r = 0; r < runs; r++) {
          let ms = 0;
          for (let i = 0; i < frames; i++) {
            let data = hot;
            if (fresh) {
              data = new Uint8Array(size);
              data.set(hot);
            }
            const t0 = performance.now();
            mac(KEY, i, data);
            ms += performance.now() - t0;
          }
          gbps.push((frames * size) / (ms / 1e3) / 1e9);
          usPerFrame.push((ms * 1e3) / frames);
        }
        const label = fresh
          ? "1 MiB fresh"
          : size >= 1 << 20
          ? "1 MiB"
          : size >= 1024
          ? `${size / 1024} KiB`
          : `${size} B`;
        rows.push([
          name,
          label,
          fmt(median(gbps), 2),
          `${fmt(Math.min(...gbps), 2)}–${fmt(Math.max(...gbps), 2)}`,
          fmt(median(usPerFrame), 1),
        ]);
        json[name][label] = +median(gbps).toFixed(3);
      }
    }
  }
  printTable(["MAC", "frame", "GB/s median", "min–max", "µs/frame"], rows);
  emitJson({ bench: "transport_mac", runs, gbps: json });
}

if (values.mac) macBench();
else if (values.role === "recv") await receiver(values.mode as Mode);
else if (values.role === "send") await sender(values.mode as Mode, Number(values.port));
else await main();
