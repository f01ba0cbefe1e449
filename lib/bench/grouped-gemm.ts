/**
 * Grouped GEMM benchmark: the cores' FMA peak, one large sgemm of the same total
 * size and its share of the peak, then the grouped GEMM's forward, dX and dW
 * products through the TypeScript API, each with its share of the single GEMM.
 */
import { checkInteger, checkNumber, invalid } from "../errors";
import { loadNative } from "../native";
import { groupedGemm, groupedGemmBackward } from "../ops/grouped-gemm";
import { Tensor } from "../tensor";
import { fmaPeak, sgemmRate } from "./peak";

export interface BenchGroupedGemmOptions {
  /** Local experts L (default 8). */
  experts?: number;
  /** Rows per expert (default 512). */
  rowsPerExpert?: number;
  /** Inner dim K (default 1024). */
  k?: number;
  /** Output dim N (default 2048). */
  n?: number;
  /** Timed rounds (each: one single sgemm, then forward, dX and dW); medians are reported (default 5). */
  runs?: number;
  /** Untimed rounds first (default 1). */
  warmup?: number;
  /** Seconds of the FMA loop, split over three measurements of which the best counts (default 0.6). */
  fmaSeconds?: number;
  /** Where the report's lines go (default console.log; null for none). */
  log?: ((line: string) => void) | null;
}

export interface GroupedGemmRate {
  /** Median GFLOP/s, 2·R·K·N per product. */
  gflops: number;
  /** Median milliseconds per call. */
  ms: number;
  /** gflops as a percentage of the single large sgemm. */
  percentOfSingle: number;
}

export interface BenchGroupedGemmResult {
  shape: { experts: number; rowsPerExpert: number; k: number; n: number };
  threads: number;
  blasCore: string;
  fma: { gflops: number; isa: string; threads: number };
  single: { gflops: number; bestGflops: number; percentOfPeak: number };
  forward: GroupedGemmRate;
  dx: GroupedGemmRate;
  dw: GroupedGemmRate;
}

function median(a: number[]): number {
  const s = [...a].sort((p, q) => p - q);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Deterministic values in [-0.5, 0.5): the rate does not depend on them. */
function filled(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 4294967296 - 0.5;
  }
  return a;
}

/**
 * Measures and prints (through `log`) the FMA peak, one large sgemm of the same total size
 * (R = experts · rowsPerExpert rows) and the grouped forward, dX and dW products; returns the figures.
 */
export async function benchGroupedGemm(options: BenchGroupedGemmOptions = {}): Promise<BenchGroupedGemmResult> {
  if (options === null || typeof options !== "object")
    throw invalid("an options object", "benchGroupedGemm options", options);
  const L = checkInteger("experts", options.experts ?? 8, 1, 4096);
  const rows = checkInteger("rowsPerExpert", options.rowsPerExpert ?? 512, 1, 1 << 20);
  const K = checkInteger("k", options.k ?? 1024, 1, 65536);
  const N = checkInteger("n", options.n ?? 2048, 1, 65536);
  const runs = checkInteger("runs", options.runs ?? 5, 1, 1000);
  const warmup = checkInteger("warmup", options.warmup ?? 1, 0, 1000);
  const fmaSeconds = checkNumber(
    "fmaSeconds",
    options.fmaSeconds ?? 0.6,
    (v) => v > 0 && v <= 60,
    "a number in (0, 60]",
  );
  const log = options.log === undefined ? (line: string) => console.log(line) : (options.log ?? (() => undefined));
  const R = L * rows;
  const flops = 2 * R * K * N;
  const info = loadNative().info();

  // The peak is a maximum: on a shared machine other work can only lower a measurement, so take the best of three.
  let fma = await fmaPeak({ threads: info.threads, seconds: fmaSeconds / 3 });
  for (let i = 0; i < 2; i++) {
    const f = await fmaPeak({ threads: info.threads, seconds: fmaSeconds / 3 });
    if (f.gflops > fma.gflops) fma = f;
  }
  log(`cpu: ${info.threads} threads, FMA peak ${fma.gflops.toFixed(1)} GFLOP/s (${fma.isa}, best of 3)`);

  const x = Tensor.from(filled(R * K, 1), [R, K]);
  const w = Tensor.from(filled(L * K * N, 2), [L, K, N]);
  const dy = Tensor.from(filled(R * N, 3), [R, N]);
  const counts = Tensor.from(new Int32Array(L).fill(rows), [L], { dtype: "int32" });
  try {
    // One round: the single large sgemm (C preallocated, as BLAS benchmarks do), then the three
    // grouped products through the TypeScript API (each allocating its output, as every op does).
    // Rounds interleave the four so that load from elsewhere hits them alike.
    const products: Array<[string, () => Promise<void>]> = [
      ["forward", async () => (await groupedGemm(x, w, counts)).dispose()],
      ["dX", async () => (await groupedGemmBackward(dy, x, w, counts, { needDx: true, needDw: false })).dx?.dispose()],
      ["dW", async () => (await groupedGemmBackward(dy, x, w, counts, { needDx: false, needDw: true })).dw?.dispose()],
    ];
    const singleRates: number[] = [];
    let core = "";
    const ms: number[][] = products.map(() => []);
    for (let round = 0; round < warmup + runs; round++) {
      const s = await sgemmRate({ m: R, n: N, k: K, iterations: 1 });
      core = s.core;
      if (round >= warmup) singleRates.push(s.gflops);
      for (let p = 0; p < products.length; p++) {
        const t0 = process.hrtime.bigint();
        await products[p][1]();
        if (round >= warmup) ms[p].push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    }
    const singleGflops = median(singleRates);
    const percentOfPeak = (100 * singleGflops) / fma.gflops;
    log(
      `sgemm ${R}x${N}x${K} (OpenBLAS ${core || "unavailable: built-in GEMM"}): ` +
        `${singleGflops.toFixed(1)} GFLOP/s median of ${runs}, ${percentOfPeak.toFixed(1)}% of FMA peak`,
    );
    const rates = products.map(([label], p): GroupedGemmRate => {
      const m = median(ms[p]);
      const gflops = flops / (m * 1e6);
      const r = { gflops, ms: m, percentOfSingle: (100 * gflops) / singleGflops };
      log(
        `grouped ${label.padEnd(7)} ${L} x ${rows} x ${K} x ${N}: ${gflops.toFixed(1)} GFLOP/s ` +
          `(${m.toFixed(1)} ms median of ${runs}), ${r.percentOfSingle.toFixed(1)}% of the single sgemm`,
      );
      return r;
    });
    return {
      shape: { experts: L, rowsPerExpert: rows, k: K, n: N },
      threads: info.threads,
      blasCore: core,
      fma: { gflops: fma.gflops, isa: fma.isa, threads: fma.threads },
      single: { gflops: singleGflops, bestGflops: Math.max(...singleRates), percentOfPeak },
      forward: rates[0],
      dx: rates[1],
      dw: rates[2],
    };
  } finally {
    x.dispose();
    w.dispose();
    dy.dispose();
    counts.dispose();
  }
}
