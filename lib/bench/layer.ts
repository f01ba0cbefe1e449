/**
 * MoE layer benchmark: forward + backward tokens/s, the time of each stage
 * (route, permute, dispatch, the expert-tensor-parallel gather and
 * reduce-scatter, experts, combine, unpermute), and the whole
 * against the GEMM roofline: the layer's GEMM FLOPs at the sgemm rate measured
 * in the same run, by the same processes at the same time, on the same
 * threads. With a process group, every rank runs it (see `moe-ep bench layer`).
 */
import { PerformanceObserver } from "perf_hooks";
import { checkInteger, checkSafeInteger, invalid } from "../errors";
import { loadNative } from "../native";
import { isGated } from "../ops/activation";
import { fillRandom } from "../ops/random";
import { MoELayer } from "../layer/moe-layer";
import { STAGES, type Stage } from "../layer/stage-clock";
import type { CollectiveGroup } from "../layer/group";
import { Tensor } from "../tensor";
import { sgemmRate } from "./peak";

export interface BenchLayerOptions {
  dModel?: number;
  dFF?: number;
  numExperts?: number;
  topK?: number;
  /** Tokens per rank per step (default 2048). */
  tokens?: number;
  /** Default: the group's size over etpSize (every rank, or ETP group, holds different experts). */
  epSize?: number;
  /** Expert tensor parallelism: ranks each expert is split over along dFF (default 1). */
  etpSize?: number;
  activation?: "relu" | "gelu" | "silu" | "swiglu" | "geglu";
  /** Timed rounds (default 7; each a step between two measurements of the sgemm rate); medians are reported. */
  runs?: number;
  /** Untimed steps first (default 1). */
  warmup?: number;
  /** The world group when several processes run the benchmark together. */
  group?: CollectiveGroup & { barrier(): Promise<void> };
  /** Where rank 0's report goes (default console.log; null for none). */
  log?: ((line: string) => void) | null;
  /** Also report each native op's time per step (cpp/core/op_clock.h). */
  profile?: boolean;
  /** Evaluation: forward only, no saved state for backward. */
  forwardOnly?: boolean;
}

/** What one step asked of memory, from the host allocator's counters (mean over the ranks, median of the rounds). */
export interface StepMemory {
  /** Minor page faults of the process during the step: pages fresh from the system. */
  minorFaults: number;
  /** Bytes handed out by the host allocator (mostly from its cache). */
  allocatedBytes: number;
  /** Of which newly taken from the system. */
  systemBytes: number;
  /** Bytes the core filled with zeros. */
  zeroedBytes: number;
  /** V8 garbage collections during the step (any kind), and their total pause in ms. */
  collections: number;
  collectionMs: number;
}

export interface BenchLayerResult {
  shape: {
    dModel: number;
    dFF: number;
    numExperts: number;
    topK: number;
    tokens: number;
    epSize: number;
    etpSize: number;
    ranks: number;
  };
  threads: number;
  blasCore: string;
  /** Median seconds of one forward + backward step (the slowest rank's). */
  stepSeconds: number;
  /** Tokens of every rank per second, forward + backward. */
  tokensPerSecond: number;
  /** Median milliseconds of each stage, forward and backward, on this rank. */
  forwardMs: Record<Stage, number>;
  backwardMs: Record<Stage, number>;
  /** GEMM FLOPs of one step on this rank (router, experts, forward and backward). */
  gemmFlops: number;
  /** The sgemm rate (median of the rounds; each the mean of the rates before and after its step) at the experts' GEMM shape. */
  sgemmGflops: number;
  /** The ranks' mean time of their GEMM FLOPs at their sgemm rates, over the step time (median of the rounds). */
  roofline: number;
  /** The lowest and highest round. */
  rooflineRange: [number, number];
  /** The same for this rank alone. */
  rankRoofline: number;
  /** Per step, after the warm-up. */
  memory: StepMemory;
  /** With profile: this rank's native time per op and step (median ms), by op name. */
  opMs?: Record<string, number>;
  forwardOnly: boolean;
}

function median(a: number[]): number {
  const s = [...a].sort((p, q) => p - q);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** The sum of a value over the group (every rank gets it). */
async function groupSum(group: CollectiveGroup | undefined, v: number): Promise<number> {
  if (!group || group.size === 1) return v;
  const t = Tensor.from(Float32Array.of(v), [1]);
  try {
    await group.allReduce(t, "sum");
    return t.toFloat32()[0];
  } finally {
    t.dispose();
  }
}

/** The maximum of a value over the group (every rank gets it). */
async function groupMax(group: CollectiveGroup | undefined, v: number): Promise<number> {
  if (!group || group.size === 1) return v;
  const t = Tensor.from(Float32Array.of(v), [1]);
  try {
    await group.allReduce(t, "max");
    return t.toFloat32()[0];
  } finally {
    t.dispose();
  }
}

/**
 * Runs the layer benchmark on this rank (with the other ranks of `group`, when given) and
 * resolves with the figures; rank 0 prints the report through `log`.
 */
export async function benchLayer(options: BenchLayerOptions = {}): Promise<BenchLayerResult> {
  if (options === null || typeof options !== "object")
    throw invalid("an options object", "benchLayer options", options);
  const group = options.group;
  const ranks = group?.size ?? 1;
  const rank = group?.rank ?? 0;
  const D = checkInteger("dModel", options.dModel ?? 1024, 1);
  const F = checkInteger("dFF", options.dFF ?? 2048, 1);
  const E = checkInteger("numExperts", options.numExperts ?? 8, 1);
  const k = checkSafeInteger("topK", options.topK ?? 2); // its range: the layer's
  const T = checkInteger("tokens", options.tokens ?? 2048, 1);
  const Q = checkInteger("etpSize", options.etpSize ?? 1, 1, ranks);
  const P = checkInteger("epSize", options.epSize ?? Math.max(1, Math.floor(ranks / Q)), 1, ranks);
  const runs = checkInteger("runs", options.runs ?? 7, 1, 1000);
  const warmup = checkInteger("warmup", options.warmup ?? 1, 0, 1000);
  const activation = options.activation ?? "relu";
  const forwardOnly = options.forwardOnly ?? false;
  const profile = options.profile ?? false;
  if (typeof forwardOnly !== "boolean") throw invalid("a boolean", "forwardOnly", forwardOnly);
  if (typeof profile !== "boolean") throw invalid("a boolean", "profile", profile);
  const native = loadNative();
  const log =
    rank !== 0
      ? () => undefined
      : options.log === undefined
        ? (line: string) => console.log(line)
        : (options.log ?? (() => undefined));

  const layer = await MoELayer.create(
    { dModel: D, dFF: F, numExperts: E, topK: k, epSize: P, etpSize: Q, activation, seed: 1, initStd: 0.02 },
    group,
  );
  const x = Tensor.empty([T, D]);
  const dy = Tensor.empty([T, D]);
  // V8's collections, from performance entries of type "gc" (delivered after the collection).
  const gcObserver = new PerformanceObserver(() => undefined);
  gcObserver.observe({ entryTypes: ["gc"] });
  try {
    await fillRandom(x, { seed: 100 + rank, key: 1 });
    await fillRandom(dy, { seed: 200 + rank, key: 2, std: 1e-3 });
    layer.profile = true;
    const L = E / P;
    // Each rank's slice of the experts (the whole of them without expert tensor parallelism).
    const Fs = F / Q;
    const F1 = isGated(activation) ? 2 * Fs : Fs;
    const steps: number[] = [];
    const rates: number[] = [];
    const ratios: number[] = [];
    const mine: number[] = [];
    const fwd: Record<Stage, number[]> = Object.fromEntries(STAGES.map((s) => [s, []])) as unknown as Record<
      Stage,
      number[]
    >;
    const bwd: Record<Stage, number[]> = Object.fromEntries(STAGES.map((s) => [s, []])) as unknown as Record<
      Stage,
      number[]
    >;
    let rows = 0;
    let gemmFlops = 0;
    const memory: Record<keyof StepMemory, number[]> = {
      minorFaults: [],
      allocatedBytes: [],
      systemBytes: [],
      zeroedBytes: [],
      collections: [],
      collectionMs: [],
    };
    const collectionsIn = async (t0: number, t1: number): Promise<[number, number]> => {
      await new Promise((r) => setImmediate(r));
      const during = gcObserver.takeRecords().filter((e) => e.startTime >= t0 && e.startTime < t1);
      return [during.length, during.reduce((sum, e) => sum + e.duration, 0)];
    };
    const opMs = new Map<string, number[]>();
    let core = "";
    // The first step fixes the GEMM shape of the rate measurements (rows per local expert).
    const measureRate = async (): Promise<number> => {
      await group?.barrier();
      const r = await sgemmRate({ m: Math.max(1, Math.round(rows / L)), n: F1, k: D, iterations: 3 });
      core = r.core;
      return r.gflops;
    };
    // Rounds: the sgemm rate, a layer step, the rate again, every rank at once on the same threads;
    // each step is set against the mean rate of its own moment (the machine may be shared).
    let before = 0;
    for (let i = 0; i < warmup + runs; i++) {
      if (i >= warmup) before = before || (await measureRate());
      await group?.barrier();
      for (const s of STAGES) layer.timings.forward[s] = layer.timings.backward[s] = 0;
      native.opTimes(true);
      const c0 = native.hostCounters();
      const t0 = performance.now();
      const r = await layer.forward(x, { training: !forwardOnly });
      const dx = forwardOnly ? undefined : await layer.backward(dy);
      const ms = performance.now() - t0;
      // The rows this rank's experts computed: with expert tensor parallelism, its ETP group's.
      rows = Q > 1 ? await groupSum(layer.etpGroup, r.stats.rowsReceived) : r.stats.rowsReceived;
      r.output.dispose();
      dx?.dispose();
      if (!forwardOnly) await layer.zeroGrad();
      const c1 = native.hostCounters();
      const ops = native.opTimes(true);
      if (i < warmup) continue;
      memory.minorFaults.push((await groupSum(group, c1.minorFaults - c0.minorFaults)) / ranks);
      memory.allocatedBytes.push((await groupSum(group, c1.allocatedBytes - c0.allocatedBytes)) / ranks);
      memory.systemBytes.push((await groupSum(group, c1.systemBytes - c0.systemBytes)) / ranks);
      memory.zeroedBytes.push((await groupSum(group, c1.zeroedBytes - c0.zeroedBytes)) / ranks);
      const [collections, collectionMs] = await collectionsIn(t0, t0 + ms);
      memory.collections.push((await groupSum(group, collections)) / ranks);
      memory.collectionMs.push((await groupSum(group, collectionMs)) / ranks);
      for (const o of ops) {
        if (!opMs.has(o.name)) opMs.set(o.name, []);
        opMs.get(o.name)!.push(o.ms);
      }
      const step = await groupMax(group, ms / 1000);
      steps.push(step);
      for (const s of STAGES) {
        fwd[s].push(layer.timings.forward[s]);
        bwd[s].push(layer.timings.backward[s]);
      }
      // GEMM FLOPs of the step on this rank: router gate (x·Wg; backward dx and dWg) and the two
      // expert GEMMs (forward; backward dX and dW of each) over the rows its experts received.
      // Forward only: one of the three of each. With expert tensor parallelism, F1 and Fs are this rank's slice.
      gemmFlops = (forwardOnly ? 1 : 3) * (2 * T * D * E + 2 * rows * D * F1 + 2 * rows * Fs * D);
      const after = await measureRate();
      const rate = (before + after) / 2;
      before = after;
      rates.push(rate);
      const gemmSeconds = gemmFlops / (rate * 1e9);
      mine.push(gemmSeconds / step);
      // The whole: the ranks' mean GEMM time at their rates over the (common) step time.
      ratios.push((await groupSum(group, gemmSeconds)) / ranks / step);
    }
    const step = median(steps);
    const roofline = median(ratios);
    const m = Math.max(1, Math.round(rows / L));
    const rateMedian = median(rates);
    const info = loadNative().info();
    const result: BenchLayerResult = {
      shape: { dModel: D, dFF: F, numExperts: E, topK: k, tokens: T, epSize: P, etpSize: Q, ranks },
      threads: info.threads,
      blasCore: info.blas.core,
      stepSeconds: step,
      tokensPerSecond: (T * ranks) / step,
      forwardMs: Object.fromEntries(STAGES.map((s) => [s, median(fwd[s])])) as Record<Stage, number>,
      backwardMs: Object.fromEntries(STAGES.map((s) => [s, median(bwd[s])])) as Record<Stage, number>,
      gemmFlops,
      sgemmGflops: rateMedian,
      roofline,
      rooflineRange: [Math.min(...ratios), Math.max(...ratios)],
      rankRoofline: median(mine),
      memory: {
        minorFaults: median(memory.minorFaults),
        allocatedBytes: median(memory.allocatedBytes),
        systemBytes: median(memory.systemBytes),
        zeroedBytes: median(memory.zeroedBytes),
        collections: median(memory.collections),
        collectionMs: median(memory.collectionMs),
      },
      forwardOnly,
    };
    if (profile) result.opMs = Object.fromEntries([...opMs].map(([name, v]) => [name, median(v)]));
    const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
    log(
      `\nMoE layer, ${forwardOnly ? "forward only (evaluation)" : "forward + backward"}: dModel ${D}, dFF ${F}, ${E} experts, top-${k}, ${T} tokens per rank, ` +
        `epSize ${P}${Q > 1 ? `, etpSize ${Q}` : ""} on ${ranks} process(es), ${info.threads} thread(s) each, ${activation}`,
    );
    log(
      `  step ${(step * 1000).toFixed(1)} ms (median of ${runs}, slowest rank)   ${result.tokensPerSecond.toFixed(0)} tokens/s over all ranks`,
    );
    log(`  stage         forward ms   backward ms${forwardOnly ? " (forward only)" : ""}`);
    for (const s of STAGES)
      log(
        `  ${s.padEnd(12)} ${result.forwardMs[s].toFixed(1).padStart(10)}   ${result.backwardMs[s].toFixed(1).padStart(11)}`,
      );
    log(
      `  GEMM roofline (rank 0): ${(gemmFlops / 1e9).toFixed(1)} GFLOP per step at the sgemm rate ${rateMedian.toFixed(1)} GFLOP/s ` +
        `(${m} x ${F1} x ${D}, ${core || "reference"}, measured before and after each step by every rank at once, same threads) = ` +
        `${((gemmFlops / (rateMedian * 1e9)) * 1000).toFixed(1)} ms, ${pct(result.rankRoofline)} of the step`,
    );
    const mb = (v: number) => `${(v / 2 ** 20).toFixed(1)} MiB`;
    log(
      `  memory per step (mean of the ranks): ${result.memory.minorFaults.toFixed(0)} minor page faults, ` +
        `${mb(result.memory.allocatedBytes)} allocated, ${mb(result.memory.systemBytes)} new from the system, ` +
        `${mb(result.memory.zeroedBytes)} zeroed, ${result.memory.collections.toFixed(1)} V8 collections ` +
        `(${result.memory.collectionMs.toFixed(1)} ms)`,
    );
    if (result.opMs) {
      const stepMs = step * 1000;
      log(`  native ops on rank 0 (ms per step, median; the ops' own wall time on the CPU stream):`);
      for (const [name, v] of Object.entries(result.opMs).sort((a, b) => b[1] - a[1]))
        log(`    ${name.padEnd(26)} ${v.toFixed(1).padStart(8)}   ${pct(v / stepMs).padStart(6)} of the step`);
    }
    log(
      `  the layer runs at ${pct(roofline)} of the GEMM roofline (all ranks; median of ${runs} rounds, ` +
        `from ${pct(result.rooflineRange[0])} to ${pct(result.rooflineRange[1])})`,
    );
    log(
      `  summary: ${pct(roofline)} of roofline, ${result.memory.minorFaults.toFixed(0)} faults/step, ` +
        `${result.memory.zeroedBytes.toFixed(0)} bytes zeroed/step, ${(step * 1000).toFixed(1)} ms/step, core ${core || "reference"}`,
    );
    return result;
  } finally {
    gcObserver.disconnect();
    x.dispose();
    dy.dispose();
    layer.dispose();
  }
}
