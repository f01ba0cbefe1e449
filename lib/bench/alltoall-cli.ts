/**
 * `moe-ep bench alltoall`: all-to-all-v over N ranks per host (benchAlltoall).
 * `-n N` is the ranks per host; the launcher's options for several hosts
 * (--nnodes, --node-rank, --master-addr, ...) are passed on to it.
 */
import { type Command, type Flag, type Parsed } from "../cli-options";
import { LAUNCH_FLAGS } from "../launch/args";
import { benchAlltoall } from "./alltoall";

const INT = { type: "int", min: 1 } as const;

/** The keys of `moe-ep launch`'s flags that bench alltoall passes on. */
const PASSED_ON = LAUNCH_FLAGS.filter((f) => f.key !== "nproc");

/** `bench alltoall`'s own flags, one line each; the key is BenchAlltoallOptions'. */
export const BENCH_ALLTOALL_FLAGS: readonly Flag[] = [
  {
    name: "nproc-per-node",
    short: "n",
    aliases: ["nproc"],
    key: "worldSize",
    kind: INT,
    value: "N",
    help: "ranks on this host (default 2)",
  },
  { name: "min-bytes", key: "minBytes", kind: INT, value: "B", help: "smallest size per rank (default 1024)" },
  { name: "max-bytes", key: "maxBytes", kind: INT, value: "B", help: "largest size per rank (default 64 MiB)" },
];

/** The flags of `bench alltoall` (and `bench all`): its own, then the launcher's for several hosts. */
export const ALLTOALL_AND_LAUNCH_FLAGS: readonly Flag[] = [...BENCH_ALLTOALL_FLAGS, ...PASSED_ON];

/** benchAlltoall with the values of those flags. */
export async function runAlltoall(parsed: Parsed): Promise<void> {
  const own = new Set(BENCH_ALLTOALL_FLAGS.map((f) => f.key ?? f.name));
  const options: Record<string, number> = {};
  const launchArgs: string[] = [];
  for (const [key, value] of Object.entries(parsed.values)) {
    if (own.has(key)) options[key] = value as number;
    else launchArgs.push(parsed.spelled[key], String(value));
  }
  await benchAlltoall({ ...options, launchArgs });
}

export function benchAlltoallCommand(printInfo: () => Promise<void>): Command {
  return {
    usage:
      "moe-ep bench alltoall [-n N] [options]\n" +
      "       on several hosts, on each: moe-ep bench alltoall -n N --nnodes K --node-rank I --master-addr A",
    flags: ALLTOALL_AND_LAUNCH_FLAGS,
    run: async (parsed) => {
      await printInfo();
      await runAlltoall(parsed);
      return 0;
    },
  };
}
