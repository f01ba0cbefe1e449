/** bench ops --floor: the per-op floor figures and their limit, and the option handling of `bench ops`. */
import { benchFloor } from "../lib/bench/floor";
import { benchOpsCli } from "../lib/bench/ops";

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

test("bench ops takes --floor and refuses other options", async () => {
  const err = jest.spyOn(console, "error").mockImplementation(() => undefined);
  try {
    expect(await benchOpsCli(["--flor"])).toBe(2);
    expect(err.mock.calls[0][0]).toMatch(/expected no option or --floor but received --flor/);
  } finally {
    err.mockRestore();
  }
  await expect(benchFloor({ calls: 0 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
});
