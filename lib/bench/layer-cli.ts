/**
 * `moe-ep bench layer`: runs benchLayer on N local processes (default 2),
 * through the launcher, each process with its share of the cores
 * (MOE_EP_NUM_THREADS = cores / N unless set), the experts sharded over them.
 *
 * `moe-ep bench layer --help` lists the options (BENCH_LAYER_FLAGS).
 */
import * as os from "os";
import * as path from "path";
import { type Command, type Flag, type Parsed } from "../cli-options";
import { ACTIVATION_KINDS } from "../ops/activation";
import { initProcessGroup } from "../comm/process-group";
import { benchLayer, type BenchLayerOptions } from "./layer";

const INT = { type: "int", min: 1 } as const;

/** `bench layer`'s flags, one line each: the key is BenchLayerOptions' (nproc: the processes). */
export const BENCH_LAYER_FLAGS: readonly Flag[] = [
  { name: "nproc", kind: INT, value: "N", help: "processes, the experts sharded over them (default 2)" },
  { name: "tokens", kind: INT, value: "T", help: "tokens per rank per step (default 2048)" },
  { name: "d-model", key: "dModel", kind: INT, value: "D", help: "model width (default 1024)" },
  { name: "d-ff", key: "dFF", kind: INT, value: "F", help: "expert FFN width (default 2048)" },
  { name: "experts", key: "numExperts", kind: INT, value: "E", help: "experts (default 8)" },
  { name: "top-k", key: "topK", kind: INT, value: "K", help: "experts per token (default 2)" },
  {
    name: "ep-size",
    key: "epSize",
    kind: INT,
    value: "N",
    help: "expert-parallel group size (default: every process)",
  },
  {
    name: "etp-size",
    key: "etpSize",
    kind: INT,
    value: "N",
    help: "expert tensor parallel size: ranks each expert's FFN is split over along dFF (default 1)",
  },
  { name: "runs", kind: INT, value: "R", help: "timed rounds; medians are reported (default 7)" },
  {
    name: "activation",
    kind: { type: "choice", choices: ACTIVATION_KINDS },
    value: "KIND",
    help: ACTIVATION_KINDS.join(" | ") + " (default relu)",
  },
  {
    name: "profile",
    kind: { type: "boolean" },
    help: "add each native op's time per step to the stage table (the GEMM backward split into dX, dW, bias)",
  },
  {
    name: "forward-only",
    key: "forwardOnly",
    kind: { type: "boolean" },
    help: "time evaluation forwards only (no backward), with the split by stage",
  },
];

/** The CLI's entry: as a launched rank (RANK set) it runs its share; otherwise it launches the ranks. */
export function benchLayerCommand(printInfo: () => Promise<void>): Command {
  return {
    usage: "moe-ep bench layer [options]",
    flags: BENCH_LAYER_FLAGS,
    run: (parsed) => run(parsed, printInfo),
  };
}

async function run(parsed: Parsed, printInfo: () => Promise<void>): Promise<number> {
  const { nproc: n, ...options } = parsed.values as BenchLayerOptions & { nproc?: number };
  const nproc = n ?? 2;
  if (process.env.RANK !== undefined && process.env.WORLD_SIZE !== undefined) {
    const world = Number(process.env.WORLD_SIZE);
    const group = world > 1 ? await initProcessGroup() : undefined;
    try {
      await benchLayer({ ...options, group });
    } finally {
      group?.destroy();
    }
    return 0;
  }
  await printInfo();
  if (nproc === 1) {
    await benchLayer(options);
    return 0;
  }
  if (!process.env.MOE_EP_NUM_THREADS)
    process.env.MOE_EP_NUM_THREADS = String(Math.max(1, Math.floor(os.cpus().length / nproc)));
  const cli = path.join(__dirname, "..", "cli.js");
  const { launch } = await import("../launch");
  return launch(["-n", String(nproc), cli, "bench", "layer", ...parsed.args]);
}
