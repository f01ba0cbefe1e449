/**
 * `moe-ep launch`: N local ranks with the rendezvous environment, prefixed
 * output, and a failed rank stopping the others; and rendezvousFromEnv's
 * checks of that environment.
 */
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import { MoEError } from "../lib";
import { rendezvousFromEnv } from "../lib/comm";
import { alive, buildDist, commDir, freePort, root, runNode, script, tempDir, type Run } from "./procs";

let work: string;

// The launcher as the CLI runs it: `launch(argv after "launch")` -> exit code.
function launcher(args: string[], options: Parameters<typeof runNode>[1] = {}): Promise<Run> {
  const entry = `require(${JSON.stringify(path.join(root, "dist", "launch"))}).launch(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;
  return runNode(["-e", entry, "--", ...args], options);
}

/** A port p with p + 1 free too on 127.0.0.1 a moment ago: the store's and the launchers'. */
async function freePortPair(): Promise<number> {
  const bindable = (port: number): Promise<boolean> =>
    new Promise((resolve) => {
      const s = net.createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
  for (;;) {
    const p = await freePort();
    if (p < 65535 && (await bindable(p + 1))) return p;
  }
}

/** "[rank R] text" lines of a stream, grouped by rank. */
function byRank(text: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (const line of text.split("\n")) {
    const m = /^\[rank (\d+)\] (.*)$/.exec(line);
    if (!m) continue;
    const r = Number(m[1]);
    out.set(r, [...(out.get(r) ?? []), m[2]]);
  }
  return out;
}

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-launch-");
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const ENV_RANK = `
const { rendezvousFromEnv, openStoreFromEnv } = require(${JSON.stringify(commDir)});
const e = process.env;
const r = rendezvousFromEnv();
(async () => {
  // The rendezvous works: every rank reads every other rank's value through the store.
  const s = openStoreFromEnv({ timeoutMs: 10000 });
  await s.set("rank/" + r.rank, String(process.pid));
  const pids = [];
  for (let i = 0; i < r.worldSize; ++i) pids.push(Number(await s.getString("rank/" + i)));
  await s.set("done/" + r.rank, "1");
  if (r.rank === 0) await s.wait([...Array(r.worldSize).keys()].map((i) => "done/" + i));
  s.close();
  const vars = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MOE_EP_RUN_ID", "MOE_EP_STORE"];
  console.log(JSON.stringify({ env: Object.fromEntries(vars.map((v) => [v, e[v]])), r, pids, args: process.argv.slice(2) }));
  process.stdout.write("second line\\n");
  process.stderr.write("warning one\\nwarning two\\nno newline at the end");
})().catch((err) => { console.error(err.code, err.message); process.exit(1); });
`;

describe("moe-ep launch", () => {
  test("3 ranks get RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT and one run id; every output line is prefixed", async () => {
    const file = script(work, "env.js", ENV_RANK);
    const run = await launcher(["-n", "3", file, "--flag", "value with space"], {
      env: { MOE_EP_STORE: "file:///should/be/dropped" },
    });
    expect(run.stderr.split("\n").filter((l) => l && !l.startsWith("[rank "))).toEqual([]);
    expect(run.code).toBe(0);
    const out = byRank(run.stdout);
    const err = byRank(run.stderr);
    expect([...out.keys()].sort()).toEqual([0, 1, 2]);
    expect(run.stdout.split("\n").filter((l) => l !== "" && !/^\[rank [0-2]\] /.test(l))).toEqual([]);
    const reports = [0, 1, 2].map((r) => JSON.parse(out.get(r)![0]));
    const port = Number(reports[0].env.MASTER_PORT);
    const runId = reports[0].env.MOE_EP_RUN_ID;
    expect(port).toBeGreaterThan(0);
    expect(runId).toMatch(/^[0-9a-f]{16,}$/);
    for (const r of [0, 1, 2]) {
      const rep = reports[r];
      expect(rep.env).toEqual({
        RANK: String(r),
        WORLD_SIZE: "3",
        LOCAL_RANK: String(r),
        LOCAL_WORLD_SIZE: "3",
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
        MOE_EP_RUN_ID: runId,
      });
      expect(rep.r).toEqual({
        rank: r,
        worldSize: 3,
        localRank: r,
        localWorldSize: 3,
        masterAddr: "127.0.0.1",
        masterPort: port,
        runId,
        storeUrl: `tcp://127.0.0.1:${port}`,
        storePortFrom: "MASTER_PORT",
        torchrun: false,
      });
      expect(rep.args).toEqual(["--flag", "value with space"]);
      expect(out.get(r)![1]).toBe("second line");
      expect(err.get(r)).toEqual(["warning one", "warning two", "no newline at the end"]);
    }
    // Each rank saw the same three processes through the store.
    expect(reports[1].pids).toEqual(reports[0].pids);
    expect(new Set(reports[0].pids).size).toBe(3);
  });

  test("--store file://DIR gives every rank MOE_EP_STORE and a fresh run id per launch", async () => {
    const file = script(work, "env.js", ENV_RANK);
    const dir = path.join(work, "file-store");
    const runIds = [];
    for (let i = 0; i < 2; ++i) {
      const run = await launcher(["-n", "2", "--store", `file://${dir}`, file]);
      expect(run.code).toBe(0);
      const reports = [0, 1].map((r) => JSON.parse(byRank(run.stdout).get(r)![0]));
      expect(reports.map((x) => x.env.MOE_EP_STORE)).toEqual([`file://${dir}`, `file://${dir}`]);
      expect(reports[0].r.storeUrl).toBe(`file://${dir}`);
      runIds.push(reports[0].env.MOE_EP_RUN_ID);
    }
    expect(runIds[0]).not.toBe(runIds[1]);
    // Every rank closed its store, so each run's last close removed the run's directory.
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test("a failing rank ends the others quickly (SIGTERM, then SIGKILL) and the code names it", async () => {
    const file = script(
      work,
      "fail.js",
      `const r = Number(process.env.RANK);
       console.log("pid " + process.pid);
       if (r === 1) setTimeout(() => { console.error("rank 1 fails"); process.exit(3); }, 300);
       else if (r === 2) { process.on("SIGTERM", () => console.log("ignoring SIGTERM")); setTimeout(() => console.log("woke"), 60000); }
       else setTimeout(() => console.log("woke"), 60000);`,
    );
    const run = await launcher(["-n", "3", file], { limitMs: 15000 });
    expect(run.code).toBe(3);
    expect(run.stderr).toMatch(/rank 1 exited with code 3/);
    expect(run.stdout).not.toMatch(/woke/);
    // Rank 2 ignored SIGTERM and was killed after the 2 s grace period; the whole run took well under its 60 s sleep.
    expect(run.stdout).toMatch(/\[rank 2\] ignoring SIGTERM/);
    expect(run.ms).toBeLessThan(8000);
    const pids = [...byRank(run.stdout).values()].map((lines) => Number(lines[0].slice(4)));
    expect(pids).toHaveLength(3);
    for (const pid of pids) expect(alive(pid)).toBe(false);
  });

  test("a rank killed by a signal fails the run with 128 + the signal's number", async () => {
    const file = script(
      work,
      "kill.js",
      `if (process.env.RANK === "0") process.kill(process.pid, "SIGKILL"); else setTimeout(() => {}, 60000);`,
    );
    const run = await launcher(["-n", "2", file], { limitMs: 15000 });
    expect(run.code).toBe(137);
    expect(run.stderr).toMatch(/rank 0 was killed by SIGKILL/);
    expect(run.ms).toBeLessThan(8000);
  });

  test("SIGTERM to the launcher reaches every rank", async () => {
    const file = script(
      work,
      "term.js",
      `process.on("SIGTERM", () => { console.log("got SIGTERM"); process.exit(0); });
       console.log("ready"); setTimeout(() => {}, 60000);`,
    );
    let sent = false;
    const run = await launcher(["-n", "2", file], {
      limitMs: 15000,
      onStdout: (text, child) => {
        if (!sent && (text.match(/ready/g) ?? []).length === 2) {
          sent = true;
          child.kill("SIGTERM");
        }
      },
    });
    expect(run.code).toBe(143);
    expect([...byRank(run.stdout).entries()].sort()).toEqual([
      [0, ["ready", "got SIGTERM"]],
      [1, ["ready", "got SIGTERM"]],
    ]);
  });

  test("two launchers (--nnodes 2, one by flags, one by the environment) run ranks 0-1 and 2-3 of one run", async () => {
    const file = script(work, "env.js", ENV_RANK);
    const port = await freePortPair();
    const [a, b] = await Promise.all([
      launcher([
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        `--master-port=${port}`,
        file,
      ]),
      launcher([file, "x"], {
        env: { NNODES: "2", NODE_RANK: "1", NPROC_PER_NODE: "2", MASTER_ADDR: "127.0.0.1", MASTER_PORT: String(port) },
      }),
    ]);
    expect([a.code, a.stderr.split("\n").filter((l) => l && !l.startsWith("[rank "))]).toEqual([0, []]);
    expect([b.code, b.stderr.split("\n").filter((l) => l && !l.startsWith("[rank "))]).toEqual([0, []]);
    expect([...byRank(a.stdout).keys()].sort()).toEqual([0, 1]);
    expect([...byRank(b.stdout).keys()].sort()).toEqual([2, 3]);
    const reports = [0, 1, 2, 3].map((r) => JSON.parse(byRank(r < 2 ? a.stdout : b.stdout).get(r)![0]));
    const runId = reports[0].env.MOE_EP_RUN_ID;
    expect(runId).toMatch(/^[0-9a-f]{16,}$/);
    for (const r of [0, 1, 2, 3]) {
      expect(reports[r].env).toEqual({
        RANK: String(r),
        WORLD_SIZE: "4",
        LOCAL_RANK: String(r % 2),
        LOCAL_WORLD_SIZE: "2",
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
        MOE_EP_RUN_ID: runId,
      });
      expect(reports[r].r.storeUrl).toBe(`tcp://127.0.0.1:${port}`);
    }
    // All four met in rank 0's store.
    expect(new Set(reports.map((x) => JSON.stringify(x.pids))).size).toBe(1);
    expect(new Set(reports[0].pids).size).toBe(4);
    expect(reports[3].args).toEqual(["x"]);
  });

  test("GROUP_RANK and the Gloo address: the interface that routes to MASTER_ADDR unless --local-addr names one", async () => {
    const file = script(
      work,
      "where.js",
      `console.log(JSON.stringify([process.env.GROUP_RANK, process.env.MOE_EP_GLOO_HOSTNAME || null]));`,
    );
    const port = await freePortPair();
    const host = (node: number, extra: string[]) =>
      launcher([
        "--nnodes",
        "2",
        "--node-rank",
        String(node),
        "-n",
        "1",
        "--master-addr",
        "localhost",
        "--master-port",
        String(port),
        ...extra,
        file,
      ]);
    const [a, b] = await Promise.all([host(0, []), host(1, ["--local-addr", "127.0.0.2"])]);
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(JSON.parse(byRank(a.stdout).get(0)![0])).toEqual(["0", "127.0.0.1"]);
    expect(JSON.parse(byRank(b.stdout).get(1)![0])).toEqual(["1", "127.0.0.2"]);
    // One host: Gloo keeps its default (loopback) unless told.
    const one = await launcher(["-n", "1", file], { env: { MOE_EP_GLOO_HOSTNAME: "" } });
    expect(JSON.parse(byRank(one.stdout).get(0)![0])).toEqual(["0", null]);
  });

  test("host 1's launcher killed: host 0's launcher stops its ranks and exits 1, naming the lost host", async () => {
    const file = script(
      work,
      "sleep.js",
      `console.log("pid " + process.pid); setTimeout(() => console.log("woke"), 60000);`,
    );
    const port = await freePortPair();
    const args = (node: number) => [
      "--nnodes",
      "2",
      "--node-rank",
      String(node),
      "-n",
      "1",
      "--master-addr",
      "127.0.0.1",
      "--master-port",
      String(port),
      file,
    ];
    // Host 1's launcher is killed once both ranks run (each has printed its pid).
    let bPid = 0;
    let aStarted = false;
    let bLauncher: { kill(signal: NodeJS.Signals): void } | undefined;
    const killB = (): void => {
      if (bPid && aStarted && bLauncher) {
        bLauncher.kill("SIGKILL");
        bLauncher = undefined;
      }
    };
    const b = launcher(args(1), {
      limitMs: 15000,
      onStdout: (text, child) => {
        const m = /\[rank 1\] pid (\d+)/.exec(text);
        if (m && !bPid) {
          bPid = Number(m[1]);
          bLauncher = child;
          killB();
        }
      },
    });
    const a = await launcher(args(0), {
      limitMs: 15000,
      onStdout: (text) => {
        if (!aStarted && /\[rank 0\] pid \d+/.test(text)) {
          aStarted = true;
          killB();
        }
      },
    });
    await b;
    if (bPid) process.kill(bPid, "SIGKILL"); // its launcher is gone: the orphan is the test's to end
    expect(a.code).toBe(1);
    expect(a.stderr).toMatch(/failed: host 1's launcher lost its connection/);
    expect(a.stdout).not.toMatch(/woke/);
    expect(a.ms).toBeLessThan(8000);
    const pid = Number(/\[rank 0\] pid (\d+)/.exec(a.stdout)![1]);
    expect(alive(pid)).toBe(false);
  });

  test.each([
    [["script.js"], /-n N is required/],
    [["-n", "2"], /no script/],
    [["-n", "0", "x.js"], /-n/],
    [["-n", "2", "--store", "redis://x", "x.js"], /--store/],
    [["-n", "2", "--bogus", "x.js"], /unknown option --bogus/],
    [["-n", "2", "--nnodes", "2", "x.js"], /--master-addr \(or MASTER_ADDR\) is required/],
    [["-n", "2", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "x.js"], /\[0, 1\] for --node-rank/],
    [["-n", "2", "--nnodes", "2", "--master-addr", "a b", "x.js"], /host name or IPv4 address for --master-addr/],
    [["-n", "2", "--nnodes", "2", "--master-addr", "h", "--master-port", "65535", "x.js"], /--master-port/],
  ])("bad arguments %p exit 2 with the usage", async (args, message) => {
    const run = await launcher(args as string[]);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(run.stderr).toMatch(/usage: moe-ep launch/);
  });

  test.each([
    [{ NODE_RANK: "one" }, /environment variable NODE_RANK but received "one"/],
    [{ NNODES: "2", NODE_RANK: "1" }, /MASTER_ADDR\) is required/],
    [{ NPROC_PER_NODE: "0" }, /environment variable NPROC_PER_NODE/],
  ])("a bad environment %p exits 2, naming the variable", async (env, message) => {
    const run = await launcher(["x.js"], { env: { NPROC_PER_NODE: "2", ...env } });
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
  });
});

describe("rendezvousFromEnv", () => {
  const base = {
    RANK: "1",
    WORLD_SIZE: "4",
    LOCAL_RANK: "1",
    MASTER_ADDR: "10.0.0.2",
    MASTER_PORT: "29500",
    MOE_EP_RUN_ID: "abc123",
  };

  function errorOf(env: NodeJS.ProcessEnv): MoEError {
    try {
      rendezvousFromEnv(env);
    } catch (e) {
      expect(e).toBeInstanceOf(MoEError);
      expect((e as MoEError).code).toBe("ERR_MOE_VALUE");
      return e as MoEError;
    }
    throw new Error("expected rendezvousFromEnv to throw");
  }

  test("reads the variables and defaults the store to tcp://MASTER_ADDR:MASTER_PORT", () => {
    expect(rendezvousFromEnv(base)).toEqual({
      rank: 1,
      worldSize: 4,
      localRank: 1,
      localWorldSize: undefined,
      masterAddr: "10.0.0.2",
      masterPort: 29500,
      runId: "abc123",
      storeUrl: "tcp://10.0.0.2:29500",
      storePortFrom: "MASTER_PORT",
      torchrun: false,
    });
    expect(rendezvousFromEnv({ ...base, MOE_EP_STORE: "file:///tmp/s" }).storeUrl).toBe("file:///tmp/s");
    // Without MASTER_* when MOE_EP_STORE names the store.
    const { MASTER_ADDR: _a, MASTER_PORT: _p, ...noMaster } = base;
    expect(rendezvousFromEnv({ ...noMaster, MOE_EP_STORE: "file:///tmp/s" }).masterPort).toBeUndefined();
    // A tcp store without MOE_EP_RUN_ID (Slurm, mpirun) gets a run id from the server's address.
    const { MOE_EP_RUN_ID: _r, ...noRun } = base;
    expect(rendezvousFromEnv(noRun).runId).toBe("tcp-10.0.0.2-29500");
  });

  test.each([
    ["RANK", { RANK: undefined }, /RANK to be set/],
    ["RANK", { RANK: "one" }, /environment variable RANK but received one/],
    ["RANK", { RANK: "4" }, /integer in \[0, 3\] for the environment variable RANK/],
    ["WORLD_SIZE", { WORLD_SIZE: undefined }, /WORLD_SIZE to be set/],
    ["WORLD_SIZE", { WORLD_SIZE: "0" }, /environment variable WORLD_SIZE/],
    ["LOCAL_RANK", { LOCAL_RANK: undefined }, /LOCAL_RANK to be set/],
    ["LOCAL_RANK", { LOCAL_RANK: "-1" }, /environment variable LOCAL_RANK/],
    ["MASTER_ADDR", { MASTER_ADDR: undefined }, /MASTER_ADDR to be set/],
    ["MASTER_ADDR", { MASTER_ADDR: "a b" }, /environment variable MASTER_ADDR/],
    ["MASTER_PORT", { MASTER_PORT: undefined }, /MASTER_PORT to be set/],
    ["MASTER_PORT", { MASTER_PORT: "70000" }, /integer in \[1, 65535\] for the environment variable MASTER_PORT/],
    ["MOE_EP_STORE", { MOE_EP_STORE: "redis://x" }, /environment variable MOE_EP_STORE/],
    ["MOE_EP_RUN_ID", { MOE_EP_RUN_ID: "../up" }, /environment variable MOE_EP_RUN_ID/],
    ["MOE_EP_RUN_ID", { MOE_EP_RUN_ID: undefined, MOE_EP_STORE: "file:///tmp/s" }, /MOE_EP_RUN_ID to be set/],
  ])("%s: %p is an ERR_MOE_VALUE naming the variable", (_name, change, message) => {
    const env: NodeJS.ProcessEnv = { ...base };
    for (const [k, v] of Object.entries(change)) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    expect(errorOf(env).message).toMatch(message);
  });
});
