/** bench ops --floor: the per-op floor figures and their limit, and the option handling of `bench ops`. */
import { benchFloor } from "../lib/bench/floor";
import { runCommand, UsageError } from "../lib/cli-options";
import { benchOpsCommand } from "../lib/bench/ops-cli";
import { info } from "../lib";

const cuda = info().cuda;

test("the floor of add and route: µs per awaited call, never below an await of a resolved Promise", async () => {
  const r = await benchFloor({ calls: 200, log: null });
  expect(r.calls).toBe(200);
  expect(r.device).toBe("cpu");
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

(cuda.available ? test : test.skip)(
  `the floor on cuda:0: the same two ops, their outputs on the device${cuda.available ? "" : ` (skipped: CUDA unavailable: ${cuda.reason})`}`,
  async () => {
    const lines: string[] = [];
    const r = await benchFloor({ calls: 50, device: "cuda:0", log: (l) => lines.push(l) });
    expect(r.device).toBe("cuda:0");
    expect(r.ops.map((o) => o.op)).toEqual(["add, 1 element", "route, 64 tokens x 8 experts, top-2"]);
    for (const f of r.ops) expect(f.medianUs).toBeGreaterThanOrEqual(r.awaitResolved.medianUs);
    expect(lines.join("\n")).toMatch(/per-op floor on cuda:0/);
  },
);

test("bench ops --device goes with --floor only; a bad device is ERR_MOE_DEVICE", async () => {
  const cmd = benchOpsCommand(async () => undefined);
  await expect(runCommand(cmd, ["--device", "cpu"])).rejects.toThrow(/--device goes with --floor only/);
  await expect(benchFloor({ calls: 1, device: "gpu" as never, log: null })).rejects.toMatchObject({
    code: "ERR_MOE_DEVICE",
  });
});
