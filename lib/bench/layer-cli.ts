/**
 * `moe-ep bench layer`: runs benchLayer on N local processes (default 2),
 * through the launcher, each process with its share of the cores
 * (MOE_EP_NUM_THREADS = cores / N unless set), the experts sharded over them.
 *
 *   moe-ep bench layer [--nproc 2] [--tokens 2048] [--d-model 1024] [--d-ff 2048]
 *                      [--experts 8] [--top-k 2] [--ep-size N] [--etp-size 1] [--runs 3]
 *                      [--activation relu]
 */
import * as os from "os";
import * as path from "path";
import { ACTIVATION_KINDS, type ActivationKind } from "../ops/activation";
import { initProcessGroup } from "../comm/process-group";
import { benchLayer, type BenchLayerOptions } from "./layer";

const FLAGS: Record<string, keyof BenchLayerOptions | "nproc"> = {
  "--nproc": "nproc",
  "--tokens": "tokens",
  "--d-model": "dModel",
  "--d-ff": "dFF",
  "--experts": "numExperts",
  "--top-k": "topK",
  "--ep-size": "epSize",
  "--etp-size": "etpSize",
  "--runs": "runs",
  "--activation": "activation",
};

function parse(args: string[]): { nproc: number; options: BenchLayerOptions } {
  const options: Record<string, unknown> = {};
  let nproc = 2;
  for (let i = 0; i < args.length; i += 2) {
    const key = FLAGS[args[i]];
    const value = args[i + 1];
    if (!key || value === undefined)
      throw new Error(
        `moe-ep bench layer: unknown option or missing value at "${args[i]}" (options: ${Object.keys(FLAGS).join(", ")})`,
      );
    if (key === "activation") {
      if (!(ACTIVATION_KINDS as readonly string[]).includes(value))
        throw new Error(`moe-ep bench layer: --activation expects one of ${ACTIVATION_KINDS.join(", ")}`);
      options.activation = value as ActivationKind;
    } else {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1)
        throw new Error(`moe-ep bench layer: ${args[i]} expects an integer >= 1 but received "${value}"`);
      if (key === "nproc") nproc = n;
      else options[key] = n;
    }
  }
  return { nproc, options: options as BenchLayerOptions };
}

/** The CLI's entry: as a launched rank (RANK set) it runs its share; otherwise it launches the ranks. */
export async function benchLayerCli(args: string[], printInfo: () => void): Promise<number> {
  const { nproc, options } = parse(args);
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
  printInfo();
  if (nproc === 1) {
    await benchLayer(options);
    return 0;
  }
  if (!process.env.MOE_EP_NUM_THREADS)
    process.env.MOE_EP_NUM_THREADS = String(Math.max(1, Math.floor(os.cpus().length / nproc)));
  const cli = path.join(__dirname, "..", "cli.js");
  const { launch } = await import("../launch");
  return launch(["-n", String(nproc), cli, "bench", "layer", ...args]);
}
