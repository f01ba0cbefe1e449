/**
 * Ranks started the way torchrun starts them: an agent process that holds
 * MASTER_PORT open (torchrun's own TCPStore lives there) and gives each rank
 * torchrun's variables. Our store then moves to MASTER_PORT + 1 on every rank
 * without their talking; MOE_EP_STORE_PORT overrides it; a port in use is an
 * error naming MOE_EP_STORE_PORT. Everything on 127.0.0.1, bounded in time.
 */
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import { rendezvousFromEnv } from "../lib/comm";
import { buildDist, freePort, root, runNode, script, tempDir } from "./procs";

let work: string;
let agent: string;
let rank: string;

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-torchrun-");
  rank = script(
    work,
    "rank.js",
    `
const { initProcessGroup, Tensor, rendezvousFromEnv } = require(${JSON.stringify(path.join(root, "dist"))});
(async () => {
  const r = rendezvousFromEnv();
  const pg = await initProcessGroup({ timeoutMs: 4000 });
  const t = Tensor.from([pg.rank + 1, 10 * (pg.rank + 1)], [2]);
  await pg.allReduce(t, "sum");
  console.log(JSON.stringify({ rank: pg.rank, size: pg.size, store: r.storeUrl, sum: Array.from(t.toFloat32()) }));
  pg.destroy();
})().catch((e) => {
  console.log(JSON.stringify({ rank: Number(process.env.RANK), code: e.code, message: e.message }));
  process.exit(1);
});
`,
  );
  // The agent: binds MASTER_PORT and keeps it open (accepting and ignoring
  // connections, as a store it does not speak would), sets torchrun's
  // variables, runs the ranks, stops the others when one fails (as torchrun
  // does), and exits with the first failure's code.
  agent = script(
    work,
    "agent.js",
    `
const net = require("net");
const { spawn } = require("child_process");
const [script, n, port, extra] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), JSON.parse(process.argv[5])];
const held = [];
const server = net.createServer((c) => held.push(c));
server.listen(port, "127.0.0.1", () => {
  let left = n, code = 0;
  const kids = [];
  for (let r = 0; r < n; ++r) {
    const env = {
      ...process.env, RANK: String(r), LOCAL_RANK: String(r), WORLD_SIZE: String(n), LOCAL_WORLD_SIZE: String(n),
      GROUP_RANK: "0", ROLE_RANK: String(r), ROLE_WORLD_SIZE: String(n), GROUP_WORLD_SIZE: "1", ROLE_NAME: "default",
      MASTER_ADDR: "127.0.0.1", MASTER_PORT: String(port), TORCHELASTIC_RUN_ID: "none",
      TORCHELASTIC_RESTART_COUNT: "0", TORCHELASTIC_MAX_RESTARTS: "0", TORCHELASTIC_USE_AGENT_STORE: "True",
      ...extra,
    };
    for (const [k, v] of Object.entries(extra)) if (v === null) delete env[k];
    const kid = spawn(process.execPath, [script], { env, stdio: ["ignore", "inherit", "inherit"] });
    kids.push(kid);
    kid.on("exit", (c, s) => {
      if ((c !== 0 || s) && code === 0) {
        code = c || 1;
        for (const k of kids) if (k !== kid) k.kill("SIGTERM");
      }
      if (--left === 0) {
        for (const c of held) c.destroy();
        server.close(() => process.exit(code));
      }
    });
  }
});
`,
  );
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** A port p with p + 1 free too on 127.0.0.1 a moment ago. */
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

function runAgent(n: number, port: number, extra: Record<string, string | null> = {}) {
  return runNode([agent, rank, String(n), String(port), JSON.stringify(extra)], { limitMs: 30000 });
}

function reports(stdout: string): any[] {
  return stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l))
    .sort((a, b) => a.rank - b.rank);
}

describe("under torchrun's agent", () => {
  test("2 ranks meet on MASTER_PORT + 1 while the agent holds MASTER_PORT, and all-reduce", async () => {
    const port = await freePortPair();
    const run = await runAgent(2, port);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const r = reports(run.stdout);
    // rank-encoded values: rank r sends (r + 1, 10 (r + 1)); the sum over 2 ranks is (3, 30) on each
    expect(r).toEqual([0, 1].map((i) => ({ rank: i, size: 2, store: `tcp://127.0.0.1:${port + 1}`, sum: [3, 30] })));
  });

  test("MOE_EP_STORE_PORT puts the store elsewhere", async () => {
    const port = await freePortPair();
    const other = await freePort();
    const run = await runAgent(2, port, { MOE_EP_STORE_PORT: String(other) });
    expect(run.code).toBe(0);
    expect(reports(run.stdout).map((r) => r.store)).toEqual([0, 1].map(() => `tcp://127.0.0.1:${other}`));
  });

  test("MASTER_PORT + 1 taken: rank 0's error names the port's origin and MOE_EP_STORE_PORT", async () => {
    const port = await freePortPair();
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(port + 1, "127.0.0.1", resolve));
    try {
      const run = await runAgent(2, port);
      expect(run.code).toBe(1);
      const r0 = reports(run.stdout).find((r) => r.rank === 0);
      expect(r0.code).toBe("ERR_MOE_VALUE");
      expect(r0.message).toContain(`127.0.0.1:${port + 1}`);
      expect(r0.message).toContain("MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT)");
      expect(r0.message).toContain("set MOE_EP_STORE_PORT to a free port");
    } finally {
      squatter.close();
    }
  });

  test("without torchrun's variables the store would take MASTER_PORT, which the agent holds: named in the error", async () => {
    const port = await freePortPair();
    const run = await runAgent(2, port, { TORCHELASTIC_RUN_ID: null });
    expect(run.code).toBe(1);
    const r0 = reports(run.stdout).find((r) => r.rank === 0);
    expect(r0.message).toContain(`cannot listen on 127.0.0.1:${port}`);
    expect(r0.message).toContain("The store's port is MASTER_PORT; set MOE_EP_STORE_PORT");
  });
});

describe("rendezvousFromEnv and torchrun", () => {
  const torchrun = {
    RANK: "1",
    WORLD_SIZE: "2",
    LOCAL_RANK: "1",
    LOCAL_WORLD_SIZE: "2",
    GROUP_RANK: "0",
    MASTER_ADDR: "10.1.2.3",
    MASTER_PORT: "29500",
    TORCHELASTIC_RUN_ID: "job7",
    TORCHELASTIC_RESTART_COUNT: "0",
    TORCHELASTIC_MAX_RESTARTS: "3",
  };

  test("the store is on MASTER_PORT + 1, or MOE_EP_STORE_PORT, or MOE_EP_STORE", () => {
    expect(rendezvousFromEnv(torchrun)).toMatchObject({
      rank: 1,
      worldSize: 2,
      storeUrl: "tcp://10.1.2.3:29501",
      masterPort: 29500,
      torchrun: true,
    });
    expect(rendezvousFromEnv({ ...torchrun, MOE_EP_STORE_PORT: "4000" }).storeUrl).toBe("tcp://10.1.2.3:4000");
    expect(rendezvousFromEnv({ ...torchrun, MOE_EP_STORE: "tcp://10.9.9.9:7" }).storeUrl).toBe("tcp://10.9.9.9:7");
    const { TORCHELASTIC_RUN_ID: _, ...plain } = torchrun;
    expect(rendezvousFromEnv(plain)).toMatchObject({ storeUrl: "tcp://10.1.2.3:29500", torchrun: false });
    // MOE_EP_STORE_PORT works under any launcher, MASTER_PORT then unneeded
    const { MASTER_PORT: _p, ...noPort } = plain;
    expect(rendezvousFromEnv({ ...noPort, MOE_EP_STORE_PORT: "4000" }).storeUrl).toBe("tcp://10.1.2.3:4000");
  });

  test("MASTER_PORT 65535 under torchrun, or a bad MOE_EP_STORE_PORT, is an ERR_MOE_VALUE naming the variable", () => {
    expect(() => rendezvousFromEnv({ ...torchrun, MASTER_PORT: "65535" })).toThrow(
      /MASTER_PORT below 65535 under torchrun .* received 65535; set MOE_EP_STORE_PORT/,
    );
    for (const bad of ["0", "65536", "x"])
      expect(() => rendezvousFromEnv({ ...torchrun, MOE_EP_STORE_PORT: bad })).toThrow(
        expect.objectContaining({ code: "ERR_MOE_VALUE", message: expect.stringContaining("MOE_EP_STORE_PORT") }),
      );
  });
});
