/**
 * Fault-injection points for the kill tests: `KEMARI_FAILPOINT=name:N` makes
 * the process SIGKILL itself the Nth time it reaches `failpoint(name)` — the
 * same death as a host losing power at exactly that step. Unset (always, in
 * production) it costs one comparison.
 *
 * Points: precopy, checkpoint-sent-partly, checkpoint-sent, after-ack,
 * mid-release, after-release (primary); mid-apply (standby).
 * @module
 */

const spec = Deno.env.get("KEMARI_FAILPOINT") ?? "";
const [target, countText] = spec.split(":");
let left = Number(countText ?? "1") || 1;

/** Dies here if this is the configured failpoint's Nth hit. */
export function failpoint(name: string): void {
  if (target !== name) return;
  if (--left > 0) return;
  console.error(`kemari: failpoint ${name}: killing this process`);
  Deno.kill(Deno.pid, "SIGKILL");
}
