/** `moe-ep bench grouped-gemm`: FMA peak, one sgemm and the grouped GEMM's three products (benchGroupedGemm). */
import { type Command, type Flag } from "../cli-options";
import { benchGroupedGemm, type BenchGroupedGemmOptions } from "./grouped-gemm";

const INT = { type: "int", min: 1 } as const;

/** `bench grouped-gemm`'s flags, one line each; the key is BenchGroupedGemmOptions'. */
export const BENCH_GROUPED_GEMM_FLAGS: readonly Flag[] = [
  { name: "experts", kind: INT, value: "L", help: "local experts (default 8)" },
  { name: "rows", key: "rowsPerExpert", kind: INT, value: "M", help: "rows per expert (default 512)" },
  { name: "k-dim", key: "k", kind: INT, value: "K", help: "inner dimension (default 1024)" },
  { name: "n-dim", key: "n", kind: INT, value: "N", help: "output dimension (default 2048)" },
  { name: "runs", kind: INT, value: "R", help: "timed rounds; medians are reported (default 5)" },
];

export function benchGroupedGemmCommand(printInfo: () => Promise<void>): Command {
  return {
    usage: "moe-ep bench grouped-gemm [options]",
    flags: BENCH_GROUPED_GEMM_FLAGS,
    run: async (parsed) => {
      await printInfo();
      await benchGroupedGemm(parsed.values as BenchGroupedGemmOptions);
      return 0;
    },
  };
}
