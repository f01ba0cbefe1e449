/**
 * The command line as a user runs it (dist/cli.js): --version from
 * package.json, --help on every subcommand (usage on stdout, exit 0, every
 * flag of the subcommand's table listed), and usage errors (an unknown flag,
 * a missing or bad value, an unknown command) on stderr naming the flag,
 * exit 2. launch passes the script's own arguments on untouched.
 */
import * as fs from "fs";
import * as path from "path";
import { BENCH_ALLTOALL_FLAGS } from "../lib/bench/alltoall-cli";
import { BENCH_GROUPED_GEMM_FLAGS } from "../lib/bench/grouped-gemm-cli";
import { BENCH_LAYER_FLAGS } from "../lib/bench/layer-cli";
import { BENCH_OPS_FLAGS } from "../lib/bench/ops-cli";
import { parseOptions, UsageError, type Flag } from "../lib/cli-options";
import { LAUNCH_FLAGS } from "../lib/launch/args";
import { buildDist, freePort, root, runNode, script, tempDir } from "./procs";

const cli = path.join(root, "dist", "cli.js");
const moeEp = (args: string[], env: NodeJS.ProcessEnv = {}) => runNode([cli, ...args], { env, limitMs: 20000 });

let work: string;
beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-cli-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

test("--version prints package.json's version", async () => {
  const { version } = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
  const run = await moeEp(["--version"]);
  expect(run.code).toBe(0);
  expect(run.stdout.trim()).toBe(version);
});

describe("--help", () => {
  const tables: Array<[string[], readonly Flag[]]> = [
    [["info"], [{ name: "json", kind: { type: "boolean" }, help: "" }]],
    [["launch"], LAUNCH_FLAGS],
    [["bench", "grouped-gemm"], BENCH_GROUPED_GEMM_FLAGS],
    [["bench", "ops"], BENCH_OPS_FLAGS],
    [
      ["bench", "alltoall"],
      [...BENCH_ALLTOALL_FLAGS, ...LAUNCH_FLAGS.filter((f) => f.name !== "nproc-per-node")],
    ],
    [["bench", "layer"], BENCH_LAYER_FLAGS],
    [["bench", "all"], BENCH_ALLTOALL_FLAGS],
  ];
  test.each(tables)("moe-ep %p --help: usage on stdout listing every flag, exit 0", async (words, flags) => {
    for (const help of ["--help", "-h"]) {
      const run = await moeEp([...words, help]);
      expect(run.code).toBe(0);
      expect(run.stderr).toBe("");
      expect(run.stdout).toMatch(new RegExp(`^usage: moe-ep ${words[0]}`));
      for (const f of flags) expect(run.stdout).toContain(`--${f.name}`);
      expect(run.stdout).toContain("--help");
    }
  });

  test.each([[["--help"]], [["-h"]], [["help"]], [["bench", "--help"]], [["help", "launch"]]])(
    "moe-ep %p prints a usage and exits 0",
    async (args) => {
      const run = await moeEp(args);
      expect(run.code).toBe(0);
      expect(run.stdout).toMatch(/^usage: moe-ep/);
    },
  );

  test("--help after other flags still wins; bench --help names every benchmark", async () => {
    const run = await moeEp(["bench", "layer", "--tokens", "8", "--help"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^usage: moe-ep bench layer/);
    const bench = await moeEp(["bench", "--help"]);
    for (const kind of ["grouped-gemm", "ops", "alltoall", "layer", "all"]) expect(bench.stdout).toContain(kind);
  });
});

describe("usage errors exit 2 and name the flag", () => {
  test.each([
    [["info", "--bogus"], /moe-ep info: unknown option --bogus/],
    [["info", "--json=yes"], /--json takes no value/],
    [["bench", "ops", "--bogus", "1"], /moe-ep bench ops: unknown option --bogus/],
    [["bench", "grouped-gemm", "-x"], /unknown option -x/],
    [["bench", "layer", "--tokens"], /moe-ep bench layer: --tokens needs a value/],
    [["bench", "layer", "--tokens", "0"], /\[1, 9007199254740991\] for --tokens but received "0"/],
    [["bench", "layer", "--tokens", "12x"], /for --tokens but received "12x"/],
    [["bench", "layer", "--activation", "tanh"], /one of relu, .* for --activation but received "tanh"/],
    [["bench", "layer", "stray"], /unexpected argument "stray"/],
    [["bench", "alltoall", "-n"], /-n needs a value/],
    [["bench", "alltoall", "--nnodes"], /--nnodes needs a value/],
    [["bench", "ops", "--runs"], /--runs needs a value/],
    [["bench", "--bogus"], /moe-ep bench: unknown option --bogus/],
    [["bench", "nope"], /expected one of grouped-gemm, ops, alltoall, layer, all but received "nope"/],
    [["launch", "-n"], /moe-ep launch: -n needs a value/],
    [["launch", "--bogus", "-n", "1", "x.js"], /moe-ep launch: unknown option --bogus/],
    [["launch", "--nnodes"], /--nnodes needs a value/],
    [["frobnicate"], /unknown command "frobnicate"/],
    [["--bogus"], /unknown option --bogus/],
  ])("moe-ep %p", async (args, message) => {
    const run = await moeEp(args);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(run.stdout).toBe("");
  });

  test("no command prints the usage and exits 2", async () => {
    const run = await moeEp([]);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/^usage: moe-ep/);
  });
});

test("launch passes everything from the script on untouched, flags that look like its own included", async () => {
  const file = script(work, "args.js", `console.log(JSON.stringify(process.argv.slice(2)));`);
  const scriptArgs = ["--help", "-n", "7", "--bogus", "--", "x y", "--nnodes=3"];
  for (const args of [
    ["-n", "1", file, ...scriptArgs],
    ["-n", "1", "--", file, ...scriptArgs],
    ["--nproc-per-node=1", file, ...scriptArgs],
  ]) {
    const run = await moeEp(["launch", ...args]);
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout.replace(/^\[rank 0\] /, ""))).toEqual(scriptArgs);
  }
});

test("bench alltoall passes its launcher flags on: 2 ranks on a given --master-port, sizes up to --max-bytes", async () => {
  const port = await freePort();
  const run = await runNode(
    [cli, "bench", "alltoall", "-n", "2", "--max-bytes", "2048", "--master-port", String(port)],
    {
      limitMs: 60000,
    },
  );
  expect(run.code).toBe(0);
  const rows = run.stdout.split("\n").filter((l) => /^\s+\d+\s+\d+\s+float/.test(l));
  // 1 KiB and 2 KiB per rank, float32: 256 and 512 elements, none wrong
  expect(rows.map((l) => l.trim().split(/\s+/).slice(0, 2).map(Number))).toEqual([
    [1024, 256],
    [2048, 512],
  ]);
  for (const l of rows) expect(Number(l.trim().split(/\s+/)[6])).toBe(0);
  expect(run.stdout).toMatch(/2 ranks on this machine/);
}, 90000);

describe("parseOptions: one table entry per flag", () => {
  const table: Flag[] = [
    { name: "floor", kind: { type: "number", min: 0, max: 1 }, value: "F", help: "" },
    {
      name: "size",
      short: "s",
      aliases: ["count"],
      key: "n",
      kind: { type: "int", min: 1, max: 8 },
      value: "N",
      help: "",
    },
    { name: "mode", kind: { type: "choice", choices: ["a", "b"] }, value: "M", help: "" },
    { name: "dry", kind: { type: "boolean" }, help: "" },
  ];

  test("values are converted, aliases land on the key, the last one given wins", () => {
    const p = parseOptions(table, ["--floor", "0.25", "-s", "3", "--count=5", "--mode", "b", "--dry"]);
    expect(p.values).toEqual({ floor: 0.25, n: 5, mode: "b", dry: true });
    expect(p.spelled.n).toBe("--count");
    expect(p.help).toBe(false);
  });

  test.each([
    [["--floor", "1.5"], /number in \[0, 1\] for --floor but received "1.5"/],
    [["--floor", ""], /for --floor but received ""/],
    [["-s", "9"], /integer in \[1, 8\] for -s but received "9"/],
    [["--mode", "c"], /one of a, b for --mode but received "c"/],
    [["--floor"], /--floor needs a value/],
    [["--nope"], /unknown option --nope/],
    [["x"], /unexpected argument "x"/],
  ])("%p is a UsageError", (args, message) => {
    expect(() => parseOptions(table, args)).toThrow(UsageError);
    expect(() => parseOptions(table, args)).toThrow(message);
  });
});
