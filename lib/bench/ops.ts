/**
 * Routing and permutation benchmark: route, permute and unpermute (and their
 * backward passes) at 8192 tokens × dModel 1024 × 64 experts, top-8, through
 * the TypeScript API, each as GB/s of the bytes it must read and write, beside
 * the memcpy bandwidth measured in the same run (read + write counted alike).
 */
import { checkInteger, invalid } from "../errors";
import { gate } from "../ops/gate";
import { permute, permuteBackward, unpermute, unpermuteBackward } from "../ops/permute";
import { checkRouteOptions, route, routeBackward } from "../ops/route";
import { Tensor } from "../tensor";
import { memcpyBandwidth } from "./peak";

export interface BenchOpsOptions {
  tokens?: number;
  dModel?: number;
  experts?: number;
  topK?: number;
  runs?: number;
  log?: ((line: string) => void) | null;
}

export interface OpRate {
  op: string;
  ms: number;
  bytes: number;
  gbps: number;
  percentOfMemcpy: number;
}

export interface BenchOpsResult {
  shape: { tokens: number; dModel: number; experts: number; topK: number };
  memcpyGbps: number;
  ops: OpRate[];
}

function median(a: number[]): number {
  const s = [...a].sort((p, q) => p - q);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function filled(n: number, seed: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = scale * (s / 4294967296 - 0.5);
  }
  return a;
}

/** Median ms of `runs` calls after one warm-up; each call's outputs are disposed. */
async function time(runs: number, fn: () => Promise<unknown>): Promise<number> {
  const dispose = (v: unknown): void => {
    if (v instanceof Tensor) v.dispose();
    else if (v && typeof v === "object") for (const x of Object.values(v)) dispose(x);
  };
  dispose(await fn());
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    const out = await fn();
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    dispose(out);
  }
  return median(ms);
}

export async function benchOps(options: BenchOpsOptions = {}): Promise<BenchOpsResult> {
  if (options === null || typeof options !== "object") throw invalid("an options object", "benchOps options", options);
  const T = checkInteger("tokens", options.tokens ?? 8192, 1, 1 << 20);
  const D = checkInteger("dModel", options.dModel ?? 1024, 1, 1 << 16);
  const E = checkInteger("experts", options.experts ?? 64, 1, 4096);
  const K = options.topK ?? 8;
  checkRouteOptions("benchOps", E, { topK: K });
  const runs = checkInteger("runs", options.runs ?? 7, 1, 1000);
  const log = options.log === undefined ? console.log : options.log;

  const rows = T * K;
  const mem = await memcpyBandwidth({ bytes: Math.max(rows * D * 4, 1 << 20) });
  const x = Tensor.from(filled(T * D, 1), [T, D]);
  const wg = Tensor.from(filled(D * E, 2, 0.1), [D, E]);
  const logits = await gate(x, wg);
  const r = await route(logits, { topK: K });
  const p = await permute(x, r.indices, r.weights, { numExperts: E });
  const y = await unpermute(p.rows, p.pairToRow, r.weights);
  const f = 4; // float32 bytes; int32 indices are 4 bytes too

  // Bytes each op must read plus write, the same counting as memcpy's.
  const measured: Array<[string, number, () => Promise<unknown>]> = [
    ["route", T * E * f * 2 + T * K * f * 2 + E * f, () => route(logits, { topK: K })],
    [
      "route backward",
      T * E * f * 2 + T * K * f * 2 + E * f,
      () => routeBackward(logits, r.indices, r.tokensPerExpert, r.weights, { auxLossGrad: 0.01 }),
    ],
    ["permute", rows * D * f * 2 + T * K * f * 3, () => permute(x, r.indices, r.weights, { numExperts: E })],
    ["permute backward", rows * D * f + T * D * f + T * K * f, () => permuteBackward(p.rows, p.pairToRow)],
    ["unpermute", rows * D * f + T * D * f + T * K * f * 2, () => unpermute(p.rows, p.pairToRow, r.weights)],
    [
      "unpermute backward",
      T * D * f + rows * D * f * 2 + T * K * f * 3,
      () => unpermuteBackward(y, p.rows, p.pairToRow, r.weights),
    ],
  ];
  const out: OpRate[] = [];
  for (const [op, bytes, fn] of measured) {
    const ms = await time(runs, fn);
    const gbps = bytes / (ms * 1e6);
    out.push({ op, ms, bytes, gbps, percentOfMemcpy: (100 * gbps) / mem.gbps });
  }
  for (const t of [x, wg, logits, y]) t.dispose();
  for (const t of Object.values(r)) t.dispose();
  for (const t of [p.rows, p.rowsPerExpert, p.pairToRow, p.rowToPair]) t.dispose();

  if (log) {
    log(
      `\nroute / permute / unpermute: ${T} tokens x dModel ${D} x ${E} experts, top-${K}, float32 (median of ${runs})`,
    );
    log(
      `memcpy ${(mem.bytes / 2 ** 20).toFixed(0)} MiB on ${mem.threads} threads: ${mem.gbps.toFixed(1)} GB/s (read + write)`,
    );
    log(
      `${"op".padEnd(20)}${"ms".padStart(9)}${"MB moved".padStart(11)}${"GB/s".padStart(8)}${"% memcpy".padStart(10)}`,
    );
    for (const o of out) {
      log(
        `${o.op.padEnd(20)}${o.ms.toFixed(2).padStart(9)}${(o.bytes / 1e6).toFixed(1).padStart(11)}${o.gbps.toFixed(1).padStart(8)}${o.percentOfMemcpy.toFixed(0).padStart(9)}%`,
      );
    }
  }
  return { shape: { tokens: T, dModel: D, experts: E, topK: K }, memcpyGbps: mem.gbps, ops: out };
}

/**
 * `moe-ep bench ops [--floor]`: the routing and permutation rates, or with
 * --floor the per-op floor (lib/bench/floor.ts). Returns the exit code.
 */
export async function benchOpsCli(args: readonly string[]): Promise<number> {
  const unknown = args.filter((a) => a !== "--floor");
  if (unknown.length > 0) {
    console.error(`moe-ep bench ops: expected no option or --floor but received ${unknown.join(" ")}`);
    return 2;
  }
  if (args.includes("--floor")) await (await import("./floor")).benchFloor();
  else await benchOps();
  return 0;
}
