import assert from "node:assert/strict";
import { LeaseClaimant, LeaseHolder, LeaseLostError } from "../../replication/lease.ts";
import { tempDir } from "../support/kemari.ts";

Deno.test("lease: a renewing holder cannot be displaced; a silent one can, and then stops", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/disk.lease`;
  let t = 0;
  const now = () => t;
  const holder = LeaseHolder.create(path, "primary", 1, { leaseMs: 500, now });
  const claimant = new LeaseClaimant(path, "standby", { leaseMs: 500, now });
  for (t = 100; t <= 2000; t += 100) {
    holder.renew();
    assert.equal(claimant.tryClaim(1), null, `claimed at ${t} while the holder renews`);
    assert.equal(holder.valid(), true);
  }
  // The holder goes silent (its host died, or it hangs).
  t += 300;
  assert.equal(holder.valid(), false, "a holder 300 ms past renewal may not release output");
  assert.equal(claimant.tryClaim(1), null, "not yet: the lease time has not passed");
  t += 300;
  const won = claimant.tryClaim(1);
  assert.ok(won);
  assert.equal(won.generation, 2, "the claim raises the generation");
  assert.throws(() => holder.renew(), LeaseLostError);
  assert.throws(
    () => LeaseHolder.create(path, "primary", 1, { now }),
    /held by standby at generation 2/,
  );
});
