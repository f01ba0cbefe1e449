import { fmaPeak, memcpyBandwidth, sgemmRate } from "../lib/bench/peak";

/** The measuring helpers run on the core's worker and report in the units they name. */
describe("machine-limit helpers (FMA peak, memcpy bandwidth, sgemm rate)", () => {
  test("each returns a Promise at once and a positive figure", async () => {
    const t0 = performance.now();
    const pending = fmaPeak({ threads: 1, seconds: 0.05 });
    expect(performance.now() - t0).toBeLessThan(25); // queued, not run on the JS thread
    const f = await pending;
    expect(f.gflops).toBeGreaterThan(0);
    expect(["avx512f", "avx2+fma", "scalar"]).toContain(f.isa);
    expect(f.threads).toBe(1);
    expect(f.seconds).toBeGreaterThanOrEqual(0.05);

    const m = await memcpyBandwidth({ bytes: 4 * 2 ** 20, threads: 2 });
    expect(m).toMatchObject({ counted: "read+write", bytes: 4 * 2 ** 20, threads: 2 });
    expect(m.gbps).toBeGreaterThan(0);
    // gbps counts both directions: 2 · bytes · repetitions / seconds.
    expect(m.gbps).toBeCloseTo((2 * m.bytes * m.repetitions) / m.seconds / 1e9, 6);

    const s = await sgemmRate({ m: 128, n: 128, k: 128, iterations: 3 });
    expect(s.gflops).toBeGreaterThan(0);
    expect(s.bestGflops).toBeGreaterThanOrEqual(s.gflops);
    expect(s.iterations).toBe(3);
  });

  test("bad options get typed errors", async () => {
    await expect(fmaPeak({ threads: 0 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/threads/),
    });
    await expect(fmaPeak({ seconds: -1 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(memcpyBandwidth({ bytes: 1000 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/bytes/),
    });
    await expect(sgemmRate({ m: 1.5 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(sgemmRate({ iterations: 0 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
  });
});
