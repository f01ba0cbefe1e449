/** `moe-ep bench ops`: routing and permutation against memcpy (benchOps), its options from one table. */
import { UsageError, type Command, type Flag } from "../cli-options";
import type { DeviceName } from "../tensor";
import { benchOps, type BenchOpsOptions } from "./ops";

const INT = { type: "int", min: 1 } as const;

/** `bench ops`'s flags, one line each; the key is BenchOpsOptions'. */
export const BENCH_OPS_FLAGS: readonly Flag[] = [
  { name: "tokens", kind: INT, value: "T", help: "tokens (default 8192)" },
  { name: "d-model", key: "dModel", kind: INT, value: "D", help: "model width (default 1024)" },
  { name: "experts", kind: INT, value: "E", help: "experts (default 64)" },
  { name: "top-k", key: "topK", kind: INT, value: "K", help: "experts per token (default 8)" },
  { name: "runs", kind: INT, value: "R", help: "timed calls of each op; the median is reported (default 7)" },
  {
    name: "floor",
    kind: { type: "boolean" },
    help: "instead: the per-op floor, awaited add on 1 element and route on 64 x 8, top-2 (median, p90 in µs)",
  },
  { name: "device", kind: { type: "string" }, value: "D", help: "with --floor: cpu (default) or cuda:N" },
];

export function benchOpsCommand(printInfo: () => Promise<void>): Command {
  return {
    usage: "moe-ep bench ops [options]",
    flags: BENCH_OPS_FLAGS,
    run: async (parsed) => {
      await printInfo();
      const { floor, device, ...options } = parsed.values as BenchOpsOptions & { floor?: boolean; device?: string };
      if (floor) await (await import("./floor")).benchFloor({ device: device as DeviceName | undefined });
      else if (device !== undefined) throw new UsageError("--device goes with --floor only");
      else await benchOps(options);
      return 0;
    },
  };
}
