/** Bad command lines and missing resources: one clear line, non-zero exit. */

import assert from "node:assert/strict";
import { kemari, tempDir } from "../support/kemari.ts";

function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  assert.match(lines[0], /^kemari: /);
  return lines[0];
}

const USAGE_CASES: Array<[string[], RegExp]> = [
  [["bogus"], /unknown command "bogus"/],
  [["run", "--memory", "3X"], /--memory: "3X" is not a size/],
  [["run", "--no-such-option"], /no-such-option/],
  [["run", "--doorbell", "carrier-pigeon"], /--doorbell must be ioeventfd or exit/],
  [
    ["run", "--guest", "/nonexistent/guest.elf"],
    /guest image \/nonexistent\/guest.elf does not exist/,
  ],
  [["run", "--guest", "nosuchprogram"], /no reference guest program "nosuchprogram"/],
  [["run", "--save-at", "10ms"], /--save-at \(or --save-on-doorbell\) and --state go together/],
  [["run", "--save-on-doorbell", "x", "--state", "/tmp/x"], /--save-on-doorbell: "x" is not/],
  [["run", "--create-disk", "1M"], /--create-disk needs --disk/],
  [["resume"], /exactly one state file/],
  [["run", "--console", "pigeon"], /--console: unknown console sink/],
];

for (const [args, pattern] of USAGE_CASES) {
  Deno.test(`cli: 'kemari ${args.join(" ")}' is a usage error`, async () => {
    const r = await kemari(args);
    assert.equal(r.code, 2, r.stderr);
    assert.match(oneLine(r.stderr), pattern);
  });
}

Deno.test("cli: no command prints help and exits 2", async () => {
  const r = await kemari([]);
  assert.equal(r.code, 2);
  assert.match(r.stdout, /Usage: kemari <command>/);
});

Deno.test("cli: every subcommand has --help", async () => {
  for (const cmd of ["run", "resume"]) {
    const r = await kemari([cmd, "--help"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`Usage: kemari ${cmd}`));
  }
});

Deno.test("cli: memory size out of range is refused", async () => {
  const r = await kemari(["run", "--memory", "2M"]);
  assert.equal(r.code, 1);
  assert.match(oneLine(r.stderr), /memory size \d+ is outside/);
  const odd = await kemari(["run", "--memory", "5M"]);
  assert.equal(odd.code, 1);
  assert.match(oneLine(odd.stderr), /multiple of 2 MiB/);
});

Deno.test("cli: a missing /dev/kvm is one clear line", async () => {
  const r = await kemari(["run"], { env: { KEMARI_KVM_DEVICE: "/nonexistent/kvm" } });
  assert.equal(r.code, 1);
  assert.match(oneLine(r.stderr), /KVM is not available: \/nonexistent\/kvm: .*ENOENT/);
});

Deno.test("cli: a missing or garbage state file is one clear line", async () => {
  await using dir = await tempDir();
  const missing = await kemari(["resume", `${dir.path}/none.kst`]);
  assert.equal(missing.code, 1);
  assert.match(oneLine(missing.stderr), /state file .*none\.kst/);
  const junk = `${dir.path}/junk.kst`;
  await Deno.writeTextFile(junk, "this is not a state file at all, not even close");
  const bad = await kemari(["resume", junk]);
  assert.equal(bad.code, 1);
  assert.match(oneLine(bad.stderr), /not a kemari state file/);
});
