/**
 * Other launchers, as the README's recipes run them: the `bash -c '...'`
 * of its Open MPI block under a real mpirun (2 ranks, loopback only), and
 * the one of its Slurm block (one task per rank) under the variables srun
 * sets, set here by hand. Each rank all-reduces rank-encoded data.
 */
import { execFileSync, spawn } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { buildDist, freePort, root, script, tempDir } from "./procs";

let work: string;
let rank: string;
const readme = fs.readFileSync(path.join(root, "README.md"), "utf8");

/** The script of the `bash -c '...'` in the README's code block that contains `marker`, its `node train.js` made `node <rank>`. */
function recipe(marker: string, port: number): string {
  const block = readme.split("```").find((b) => b.startsWith("sh\n") && b.includes(marker));
  if (!block) throw new Error(`no sh block with ${marker} in README.md`);
  const m = /bash -c '([^']*)'/.exec(block);
  if (!m) throw new Error(`no bash -c '...' in README.md's block with ${marker}`);
  expect(m[1]).toContain("node train.js");
  return m[1]
    .replace("node train.js", `${JSON.stringify(process.execPath)} ${JSON.stringify(rank)}`)
    .replace("MASTER_PORT=29500", `MASTER_PORT=${port}`);
}

function has(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

interface Out {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, limitMs = 30000): Promise<Out> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${cmd} ran past ${limitMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, limitMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function reports(stdout: string): any[] {
  return stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l))
    .sort((a, b) => a.rank - b.rank);
}

/** What 2 ranks must report: their rendezvous, and the sum of (r + 1, 10 (r + 1)) over both. */
function expected(port: number, runId?: string) {
  return [0, 1].map((r) => ({
    rank: r,
    size: 2,
    localRank: r,
    store: `tcp://127.0.0.1:${port}`,
    gloo: "127.0.0.1",
    ...(runId ? { runId } : {}),
    sum: [3, 30],
  }));
}

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-launchers-");
  rank = script(
    work,
    "rank.js",
    `
const { initProcessGroup, Tensor, rendezvousFromEnv } = require(${JSON.stringify(path.join(root, "dist"))});
(async () => {
  const r = rendezvousFromEnv();
  const pg = await initProcessGroup({ timeoutMs: 5000 });
  const t = Tensor.from([pg.rank + 1, 10 * (pg.rank + 1)], [2]);
  await pg.allReduce(t, "sum");
  const runId = process.env.MOE_EP_RUN_ID;
  console.log(JSON.stringify({ rank: pg.rank, size: pg.size, localRank: r.localRank, store: r.storeUrl,
    gloo: process.env.MOE_EP_GLOO_HOSTNAME, ...(runId ? { runId } : {}), sum: Array.from(t.toFloat32()) }));
  pg.destroy();
})().catch((e) => { console.error(e.code, e.message); process.exit(1); });
`,
  );
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const mpirun = has("mpirun", ["--version"]);
const ip = has("ip", ["-V"]);
const mpiTest = mpirun && ip ? test : test.skip;
if (!mpirun) console.log("launchers.test.ts: mpirun is not installed (Debian: openmpi-bin); its test is skipped");
if (!ip) console.log("launchers.test.ts: ip is not installed (Debian: iproute2); the recipes need it; skipped");

mpiTest("the README's mpirun recipe: 2 ranks from OMPI_COMM_WORLD_* all-reduce", async () => {
  const port = await freePort();
  const out = await run(
    "mpirun",
    [
      "--allow-run-as-root",
      "--oversubscribe",
      "-n",
      "2",
      "--mca",
      "btl_tcp_if_include",
      "lo",
      "--mca",
      "oob_tcp_if_include",
      "lo",
      "-x",
      "MASTER_ADDR=127.0.0.1",
      "-x",
      `MASTER_PORT=${port}`,
      "bash",
      "-c",
      recipe("mpirun -np", port),
    ],
    { OMPI_MCA_rmaps_base_oversubscribe: "1" },
  );
  expect(out.code).toBe(0);
  expect(reports(out.stdout)).toEqual(expected(port));
});

(ip ? test : test.skip)(
  "the README's srun recipe (one task per rank) under the variables srun sets: 2 ranks all-reduce",
  async () => {
    const port = await freePort();
    const script = recipe("srun --ntasks=", port);
    const slurm = (r: number) => ({
      SLURM_PROCID: String(r),
      SLURM_NTASKS: "2",
      SLURM_LOCALID: String(r),
      SLURM_NODEID: "0",
      SLURM_NNODES: "1",
      SLURM_JOB_ID: "4242",
      SLURM_STEP_ID: "0",
      SLURM_JOB_NODELIST: "localhost",
      MASTER_ADDR: "127.0.0.1",
    });
    const outs = await Promise.all([0, 1].map((r) => run("bash", ["-c", script], slurm(r))));
    for (const o of outs) expect(o.code).toBe(0);
    expect(reports(outs.map((o) => o.stdout).join("\n"))).toEqual(expected(port, "4242.0"));
  },
);
