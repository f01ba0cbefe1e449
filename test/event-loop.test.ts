import { Tensor, ops } from "../lib";

/**
 * The ops run on the core's own worker thread: while a grouped GEMM of hundreds
 * of milliseconds runs, JavaScript keeps running (here: a 5 ms timer keeps firing).
 */
describe("the JS thread stays free while native work runs", () => {
  test("a 5 ms timer keeps firing during a large grouped GEMM", async () => {
    // 8 experts x 1024 rows, K = 2048, N = 2048: about 69 GFLOP, several hundred ms on two cores.
    const [L, rows, K, N] = [8, 1024, 2048, 2048];
    const R = L * rows;
    const x = Tensor.from(new Float32Array(R * K).fill(0.5), [R, K]);
    const w = Tensor.from(new Float32Array(L * K * N).fill(0.25), [L, K, N]);
    const counts = Tensor.from(new Int32Array(L).fill(rows), [L], { dtype: "int32" });
    try {
      const ticks: number[] = [];
      const timer = setInterval(() => ticks.push(performance.now()), 5);
      await new Promise((r) => setTimeout(r, 20)); // the timer is running
      const start = performance.now();
      const pending = ops.groupedGemm(x, w, counts);
      const returnedAfter = performance.now() - start; // the call itself only queues the work
      const y = await pending;
      const end = performance.now();
      clearInterval(timer);
      const during = ticks.filter((t) => t > start && t < end);
      const elapsed = end - start;
      // The check only means something if the GEMM took a while.
      expect(elapsed).toBeGreaterThan(100);
      expect(returnedAfter).toBeLessThan(50);
      // A blocked JS thread would give at most one tick; a free one about elapsed / 5.
      expect(during.length).toBeGreaterThanOrEqual(Math.max(10, Math.floor(elapsed / 5 / 4)));
      // And no long silence: the largest gap between ticks is far below the GEMM's time.
      const marks = [start, ...during, end];
      const gaps = marks.slice(1).map((t, i) => t - marks[i]);
      expect(Math.max(...gaps)).toBeLessThan(elapsed / 3);
      // The result is right too: every element is K · 0.5 · 0.25.
      const v = y.toArray();
      expect(v[0]).toBe(K * 0.125);
      expect(v[v.length - 1]).toBe(K * 0.125);
      y.dispose();
    } finally {
      x.dispose();
      w.dispose();
      counts.dispose();
    }
  });
});
