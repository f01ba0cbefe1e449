/**
 * Whether OpenBLAS runs a core older than the CPU supports (OPENBLAS_CORETYPE=Haswell
 * on an AVX-512 CPU, say), and by how much that costs: `moe-ep info` and the
 * benchmarks say so rather than run silently slow. OpenBLAS picks its kernels
 * once, when it loads, so the other core is measured in a child process with
 * the variable changed; this process's environment is never touched.
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as path from "path";

/** OpenBLAS x86 cores by the vector features their kernels use: 1 SSE3, 2 SSE4, 3 AVX, 4 AVX2 + FMA, 5 AVX-512. */
const CORE_LEVEL: Record<string, number> = {
  prescott: 1,
  core2: 1,
  penryn: 1,
  dunnington: 1,
  atom: 1,
  opteron: 1,
  barcelona: 1,
  nehalem: 2,
  sandybridge: 3,
  bulldozer: 3,
  piledriver: 3,
  steamroller: 3,
  excavator: 3,
  haswell: 4,
  zen: 4,
  skylakex: 5,
  cooperlake: 5,
  sapphirerapids: 5,
};

/** The CPU flags (as /proc/cpuinfo names them) each level needs. */
const LEVEL_FLAGS: Array<[number, string, readonly string[]]> = [
  [5, "SkylakeX", ["avx512f", "avx512vl", "avx512bw", "avx512dq"]],
  [4, "Haswell", ["avx2", "fma"]],
  [3, "Sandybridge", ["avx"]],
  [2, "Nehalem", ["sse4_2"]],
];

/** The vector level of an OpenBLAS core name (any case), or undefined for one this table does not know. */
export function coreLevel(core: string): number | undefined {
  return CORE_LEVEL[core.toLowerCase()];
}

/**
 * The fastest OpenBLAS core these CPU flags allow (the one cpp/core/blas.cpp sets when
 * OPENBLAS_CORETYPE is unset), with its level.
 */
export function bestCore(flags: ReadonlySet<string>): { core: string; level: number } {
  for (const [level, core, need] of LEVEL_FLAGS) if (need.every((f) => flags.has(f))) return { core, level };
  return { core: "Prescott", level: 1 };
}

export interface CoreCheck {
  /** The core OpenBLAS runs. */
  core: string;
  /** The fastest core the CPU supports. */
  best: string;
  /** True when `core` uses older vector instructions than `best` allows. */
  slower: boolean;
}

/** Compares the running core with what the CPU flags allow; undefined when either is unknown. */
export function checkCore(core: string, flags: ReadonlySet<string>): CoreCheck | undefined {
  const level = coreLevel(core);
  if (level === undefined || flags.size === 0) return undefined;
  const best = bestCore(flags);
  return { core, best: best.core, slower: level < best.level };
}

/** This machine's CPU flags from /proc/cpuinfo (empty where there is none). */
export function cpuFlags(cpuinfo = "/proc/cpuinfo"): Set<string> {
  try {
    const line = fs
      .readFileSync(cpuinfo, "utf8")
      .split("\n")
      .find((l) => /^flags\s*:/.test(l));
    return new Set(
      line
        ? line
            .replace(/^flags\s*:/, "")
            .trim()
            .split(/\s+/)
        : [],
    );
  } catch {
    return new Set();
  }
}

/**
 * The sgemm rate (GFLOP/s, the shape of `moe-ep bench grouped-gemm`'s sgemm halved in m) with
 * OPENBLAS_CORETYPE=core, in a child process on the same threads; undefined if it fails.
 */
export function sgemmRateWithCore(core: string, shape = { m: 2048, n: 2048, k: 1024 }): number | undefined {
  const peak = path.join(__dirname, "peak");
  const script =
    `require(${JSON.stringify(peak)}).sgemmRate({ m: ${shape.m}, n: ${shape.n}, k: ${shape.k}, iterations: 3 })` +
    `.then((r) => console.log(JSON.stringify(r)), (e) => { console.error(String(e)); process.exit(1); });`;
  const child = spawnSync(process.execPath, ["-e", script], {
    env: { ...process.env, OPENBLAS_CORETYPE: core },
    encoding: "utf8",
    timeout: 120_000,
  });
  if (child.status !== 0) return undefined;
  try {
    const r = JSON.parse(child.stdout.trim().split("\n").pop() ?? "") as { gflops: number; core: string };
    return r.core.toLowerCase() === core.toLowerCase() ? r.gflops : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The warning line for a core slower than the CPU allows, with the factor measured now (the running
 * core in this process, the best one in a child), or undefined when the core is the best one.
 */
export async function slowCoreWarning(core: string, flags = cpuFlags()): Promise<string | undefined> {
  const check = checkCore(core, flags);
  if (!check?.slower) return undefined;
  const { sgemmRate } = await import("./peak");
  const here = (await sgemmRate({ m: 2048, n: 2048, k: 1024, iterations: 3 })).gflops;
  const there = sgemmRateWithCore(check.best);
  const factor =
    there === undefined
      ? `(the ${check.best} measurement failed)`
      : `sgemm 2048 x 2048 x 1024 runs at ${here.toFixed(1)} GFLOP/s with ${core} and ${there.toFixed(1)} with ${check.best}: ${(there / here).toFixed(2)}x`;
  return (
    `WARNING: OpenBLAS runs core ${core} but this CPU supports ${check.best} ` +
    `(OPENBLAS_CORETYPE=${process.env.OPENBLAS_CORETYPE ?? ""}); ${factor}. Unset OPENBLAS_CORETYPE or set it to ${check.best}.`
  );
}
