#!/usr/bin/env node
/**
 * moe-ep's command line: `moe-ep info` (the capability report),
 * `moe-ep bench <grouped-gemm|ops|alltoall|layer|all>` (benchmarks that print
 * the machine's limit beside every figure) and `moe-ep launch` (ranks on this
 * host or on several, the way torchrun starts them).
 *
 * Every subcommand reads its flags from one table (lib/cli-options.ts) with
 * node:util's parseArgs and answers --help on stdout with exit code 0. An
 * unknown flag, a missing or bad value is a usage error: a line on stderr
 * naming the flag, exit code 2. Other failures exit 1.
 */
import * as fs from "fs";
import * as path from "path";
import { commandHelp, runCommand, UsageError, type Command, type Flag } from "./cli-options";

const USAGE = `usage: moe-ep <command> [options]

commands:
  info [--json]            what was found: threads, BLAS and its core, CUDA (or why not), Gloo
  bench grouped-gemm       FMA peak, one large sgemm, grouped GEMM at 8 x 512 x 1024 x 2048 (fwd, dX, dW)
  bench ops                route, permute, unpermute at 8192 tokens x 1024 x 64 experts, top-8, vs memcpy
  bench ops --floor        the per-op floor: awaited add on 1 element and route on 64 x 8, top-2 (median, p90 in µs;
                           --device cuda:0 for CUDA tensors)
  bench alltoall [-n N]    all-to-all-v over N local ranks (default 2), 1 KiB to 64 MiB per rank, as nccl-tests;
                           with launch's --nnodes, --node-rank, --master-addr ... on every host: N ranks on each
  bench layer [--nproc 2]  MoE layer fwd + bwd on N processes (8 experts, top-2, 2048 tokens x 1024 x 2048 per rank) vs the GEMM roofline
  bench all                every benchmark above but layer
  launch -n N script.js    run N local ranks of script.js (RANK, WORLD_SIZE, MASTER_ADDR/PORT set)
  launch --nnodes K --node-rank I --nproc-per-node N --master-addr A [--master-port P] script.js
                           the same on each of K hosts

options:
  -h, --help               this help; \`moe-ep <command> --help\` for a command's options
  --version                the package's version
`;

/** Says so, with the factor measured now, when OpenBLAS runs a core older than the CPU supports. */
async function printSlowCoreWarning(): Promise<void> {
  const blas = (await import("./info")).info().blas;
  if (!blas.loaded) return;
  const warning = await (await import("./bench/blas-core")).slowCoreWarning(blas.core);
  if (warning) console.log(warning);
}

const printInfo = async (): Promise<void> => {
  console.log((await import("./info")).formatInfo());
  await printSlowCoreWarning();
};

function version(): string {
  const file = path.join(__dirname, "..", "package.json");
  return (JSON.parse(fs.readFileSync(file, "utf8")) as { version: string }).version;
}

const INFO: Command = {
  usage: "moe-ep info [--json]",
  flags: [{ name: "json", kind: { type: "boolean" }, help: "print the report as JSON" }] satisfies Flag[],
  run: async ({ values }) => {
    const { formatInfo, info } = await import("./info");
    console.log(values.json ? JSON.stringify(info(), null, 2) : formatInfo());
    if (!values.json) await printSlowCoreWarning();
    return 0;
  },
};

const BENCH_KINDS = ["grouped-gemm", "ops", "alltoall", "layer", "all"] as const;
const BENCH_USAGE = `usage: moe-ep bench <${BENCH_KINDS.join("|")}> [options]

  grouped-gemm   FMA peak, one large sgemm, the grouped GEMM's forward, dX and dW
  ops            route, permute, unpermute (and their backward passes) vs memcpy
  alltoall       all-to-all-v over N ranks per host, 1 KiB to 64 MiB per rank, as nccl-tests
  layer          the MoE layer, forward + backward, on N processes vs the GEMM roofline
  all            grouped-gemm, ops and alltoall (the default; takes alltoall's options)

\`moe-ep bench <kind> --help\` lists a benchmark's options.
`;

async function benchCommand(kind: string): Promise<Command> {
  switch (kind) {
    case "grouped-gemm":
      return (await import("./bench/grouped-gemm-cli")).benchGroupedGemmCommand(printInfo);
    case "ops":
      return (await import("./bench/ops-cli")).benchOpsCommand(printInfo);
    case "alltoall":
      return (await import("./bench/alltoall-cli")).benchAlltoallCommand(printInfo);
    case "layer":
      return (await import("./bench/layer-cli")).benchLayerCommand(printInfo);
    default: {
      const { ALLTOALL_AND_LAUNCH_FLAGS, runAlltoall } = await import("./bench/alltoall-cli");
      return {
        usage: "moe-ep bench [all] [alltoall's options]",
        flags: ALLTOALL_AND_LAUNCH_FLAGS,
        run: async (parsed) => {
          await printInfo();
          await (await import("./bench/grouped-gemm")).benchGroupedGemm();
          await (await import("./bench/ops")).benchOps();
          await runAlltoall(parsed);
          return 0;
        },
      };
    }
  }
}

/** Runs the command line; resolves with the exit code. `where` names the command for error messages. */
async function main(argv: string[], where: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case "info":
      where.push("info");
      return runCommand(INFO, rest);
    case "launch":
      // launch prints its own usage errors (with the usage) and returns 2.
      return (await import("./launch")).launch(rest);
    case "bench": {
      where.push("bench");
      const first = rest[0];
      if (first === "-h" || first === "--help" || first === "help") {
        process.stdout.write(BENCH_USAGE);
        return 0;
      }
      const explicit = first !== undefined && !first.startsWith("-");
      const kind = explicit ? first : "all";
      if (!(BENCH_KINDS as readonly string[]).includes(kind))
        throw new UsageError(`expected one of ${BENCH_KINDS.join(", ")} but received "${kind}"`);
      if (explicit) where.push(kind);
      return runCommand(await benchCommand(kind), explicit ? rest.slice(1) : rest);
    }
    case "help":
    case "--help":
    case "-h":
      if (rest[0] === "launch") process.stdout.write((await import("./launch/args")).USAGE + "\n");
      else if (rest[0] === "bench") process.stdout.write(BENCH_USAGE);
      else if (rest[0] === "info") process.stdout.write(commandHelp(INFO));
      else process.stdout.write(USAGE);
      return 0;
    case "--version":
    case "-v":
      console.log(version());
      return 0;
    case undefined:
      process.stderr.write(USAGE);
      return 2;
    default:
      throw new UsageError(
        cmd.startsWith("-") ? `unknown option ${cmd}` : `unknown command "${cmd}" (expected info, bench or launch)`,
      );
  }
}

const where = ["moe-ep"];
main(process.argv.slice(2), where).then(
  (code) => {
    process.exitCode = code;
  },
  (e: Error & { code?: string }) => {
    const name = where.join(" ");
    if (e instanceof UsageError) {
      console.error(`${name}: ${e.message}\n(\`${name} --help\` lists the options)`);
      process.exitCode = 2;
    } else {
      console.error(`${name}: ${e.code ? e.code + ": " : ""}${e.message}`);
      process.exitCode = 1;
    }
  },
);
