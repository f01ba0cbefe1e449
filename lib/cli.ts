#!/usr/bin/env node
/**
 * moe-ep's command line: `moe-ep info` (the capability report),
 * `moe-ep bench <grouped-gemm|ops>` (benchmarks that print the machine's limit
 * beside every figure) and `moe-ep launch` (ranks on this host or on several, the
 * way torchrun starts them).
 */
import { formatInfo, info } from "./info";

const USAGE = `usage: moe-ep <command>

commands:
  info [--json]            what was found: threads, BLAS and its core, CUDA (or why not), Gloo
  bench grouped-gemm       FMA peak, one large sgemm, grouped GEMM at 8 x 512 x 1024 x 2048 (fwd, dX, dW)
  bench ops                route, permute, unpermute at 8192 tokens x 1024 x 64 experts, top-8, vs memcpy
  bench ops --floor        the per-op floor: awaited add on 1 element and route on 64 x 8, top-2 (median, p90 in µs)
  bench alltoall [-n N]    all-to-all-v over N local ranks (default 2), 1 KiB to 64 MiB per rank, as nccl-tests;
                           with launch's --nnodes, --node-rank, --master-addr ... on every host: N ranks on each
  bench layer [--nproc 2]  MoE layer fwd + bwd on N processes (8 experts, top-2, 2048 tokens x 1024 x 2048 per rank) vs the GEMM roofline
  bench all                every benchmark above but layer
  launch -n N script.js    run N local ranks of script.js (RANK, WORLD_SIZE, MASTER_ADDR/PORT set)
  launch --nnodes K --node-rank I --nproc-per-node N --master-addr A [--master-port P] script.js
                           the same on each of K hosts (launch --help for every option)
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case "info":
      console.log(rest.includes("--json") ? JSON.stringify(info(), null, 2) : formatInfo());
      return 0;
    case "launch":
      return (await import("./launch")).launch(rest);
    case "bench": {
      const what = rest[0] ?? "all";
      if (what === "layer")
        return (await import("./bench/layer-cli")).benchLayerCli(rest.slice(1), () => console.log(formatInfo()));
      const known = ["grouped-gemm", "ops", "alltoall", "layer", "all"];
      if (!known.includes(what)) {
        console.error(`moe-ep bench: expected one of ${known.join(", ")} but received "${what}"`);
        return 2;
      }
      console.log(formatInfo());
      if (what === "grouped-gemm" || what === "all") await (await import("./bench/grouped-gemm")).benchGroupedGemm();
      if (what === "ops" || what === "all") {
        const code = await (await import("./bench/ops")).benchOpsCli(what === "ops" ? rest.slice(1) : []);
        if (code !== 0) return code;
      }
      if (what === "alltoall" || what === "all") {
        // -n N is the ranks per host; every other option goes to the launcher.
        const args = rest.slice(1);
        const n = args.indexOf("-n");
        const worldSize = n >= 0 ? Number(args[n + 1]) : 2;
        const launchArgs = n >= 0 ? [...args.slice(0, n), ...args.slice(n + 2)] : args;
        await (await import("./bench/alltoall")).benchAlltoall({ worldSize, launchArgs });
      }
      return 0;
    }
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`moe-ep: unknown command "${cmd}"\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: Error & { code?: string }) => {
    console.error(`moe-ep: ${e.code ? e.code + ": " : ""}${e.message}`);
    process.exitCode = 1;
  },
);
