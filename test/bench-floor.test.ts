/** bench ops --floor: the per-op floor figures and their limit, and the option handling of `bench ops`. */
import { benchFloor } from "../lib/bench/floor";
import { runCommand, UsageError } from "../lib/cli-options";
import { benchOpsCommand } from "../lib/bench/ops-cli";

test("the floor of add and route: µs per awaited call, never below an await of a resolved Promise", async () => {
  const r = await benchFloor({ calls: 200, log: null });
  expect(r.calls).toBe(200);
  expect(r.ops.map((o) => o.op)).toEqual(["add, 1 element", "route, 64 tokens x 8 experts, top-2"]);
  for (const f of [r.awaitResolved, ...r.ops]) {
    expect(f.medianUs).toBeGreaterThan(0);
    expect(f.p90Us).toBeGreaterThanOrEqual(f.medianUs);
  }
  for (const f of r.ops) expect(f.medianUs).toBeGreaterThanOrEqual(r.awaitResolved.medianUs);
});

test("bench ops takes --floor and refuses a misspelling of it", async () => {
  const cmd = benchOpsCommand(async () => undefined);
  expect(cmd.flags.map((f) => f.name)).toContain("floor");
  await expect(runCommand(cmd, ["--flor"])).rejects.toThrow(UsageError);
  await expect(runCommand(cmd, ["--flor"])).rejects.toThrow(/--flor/);
  await expect(benchFloor({ calls: 0 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
});
