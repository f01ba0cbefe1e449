/**
 * `moe-ep launch`: starts the ranks of a script the way torchrun does, on one
 * host or on several (one launcher per host, the same arguments but
 * --node-rank). Each rank is a child Node process with RANK, WORLD_SIZE,
 * LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK (the host's index), MASTER_ADDR,
 * MASTER_PORT and MOE_EP_RUN_ID (fresh and random, the store namespace of the
 * run), and on several hosts MOE_EP_GLOO_HOSTNAME: the address of this host's
 * interface that routes to MASTER_ADDR, unless --local-addr names one. Output
 * lines are prefixed with "[rank R] ".
 *
 * One failing rank ends the run everywhere: on its host the launcher sends
 * the other ranks SIGTERM and, after a grace period, SIGKILL. On several
 * hosts the launchers hold one TCP connection each to host 0's launcher, on
 * MASTER_ADDR:MASTER_PORT+1 (see launch/nodes.ts): a failure travels over it
 * to host 0, which tells every other host to stop its ranks; a launcher whose
 * connection drops takes that as a failure too. Every launcher then exits with
 * the code of the first failure it learned of, normally the failing rank's.
 */
import { randomBytes } from "crypto";
import { createServer } from "net";
import { addressToward } from "./launch/address";
import { parse, UsageError, USAGE, type Plan } from "./launch/args";
import { Hub, RendezvousError, Spoke, type NodeFailure } from "./launch/nodes";
import { LocalRanks, signalNumber, type Failure } from "./launch/ranks";

/** How long the launchers of several hosts wait for each other before giving up. */
const JOIN_TIMEOUT_MS = 300000;

/** A free port on addr (bound to port 0, then released). */
function freePort(addr: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, addr, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** The variables every rank of this host shares. */
function rankEnv(plan: Plan, masterPort: number, runId: string, localAddr: string | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    WORLD_SIZE: String(plan.nnodes * plan.nproc),
    LOCAL_WORLD_SIZE: String(plan.nproc),
    GROUP_RANK: String(plan.nodeRank),
    MASTER_ADDR: plan.masterAddr,
    MASTER_PORT: String(masterPort),
    MOE_EP_RUN_ID: runId,
  };
  // The launcher decides the rendezvous: a store url inherited from outside is dropped.
  delete env.MOE_EP_STORE;
  if (plan.store) env.MOE_EP_STORE = plan.store;
  if (localAddr) env.MOE_EP_GLOO_HOSTNAME = localAddr;
  return env;
}

/** SIGINT and SIGTERM go to the ranks (a second one: SIGKILL) until `done` settles. */
async function forwardSignals(ranks: () => LocalRanks, onFirst: (s: NodeJS.Signals) => void, done: Promise<unknown>) {
  let interrupted: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return ranks().kill();
    interrupted = signal;
    ranks().forward(signal);
    onFirst(signal);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    await done;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  return interrupted;
}

async function oneHost(plan: Plan): Promise<number> {
  const masterPort = plan.masterPort ?? (await freePort(plan.masterAddr));
  let failure: Failure | undefined;
  const ranks: LocalRanks = new LocalRanks({
    firstRank: 0,
    count: plan.nproc,
    env: rankEnv(plan, masterPort, randomBytes(12).toString("hex"), plan.localAddr),
    script: plan.script,
    scriptArgs: plan.scriptArgs,
    onFailure: (f) => {
      failure = f;
      if (ranks.size) process.stderr.write(`moe-ep launch: rank ${f.rank} ${f.how}; stopping the other ranks\n`);
      ranks.stop();
    },
  });
  const interrupted = await forwardSignals(
    () => ranks,
    () => undefined,
    ranks.done,
  );
  if (interrupted) return 128 + signalNumber(interrupted);
  if (failure) {
    process.stderr.write(`moe-ep launch: failed: rank ${failure.rank} ${failure.how}\n`);
    return failure.code;
  }
  return 0;
}

function describe(f: NodeFailure): string {
  return f.rank >= 0 ? `rank ${f.rank} (host ${f.node}) ${f.how}` : `host ${f.node}'s launcher ${f.how}`;
}

async function severalHosts(plan: Plan): Promise<number> {
  const { nnodes, nodeRank, nproc, masterAddr } = plan;
  const masterPort = plan.masterPort!;
  const layout = { nnodes, nproc };
  let localAddr = plan.localAddr;
  try {
    localAddr ??= await addressToward(masterAddr, masterPort);
  } catch (e) {
    process.stderr.write(
      `moe-ep launch: no route from this host to --master-addr ${masterAddr}: ${(e as Error).message}\n`,
    );
    return 1;
  }
  let hub: Hub | undefined;
  let spoke: Spoke | undefined;
  let runId: string;
  try {
    if (nodeRank === 0) {
      runId = randomBytes(12).toString("hex");
      hub = await Hub.open(masterAddr, masterPort + 1, layout, runId, JOIN_TIMEOUT_MS);
    } else {
      ({ spoke, runId } = await Spoke.join(masterAddr, masterPort + 1, nodeRank, layout, JOIN_TIMEOUT_MS));
    }
  } catch (e) {
    if (!(e instanceof RendezvousError)) throw e;
    process.stderr.write(`moe-ep launch: ${e.message}\n`);
    return e.code;
  }

  let failure: NodeFailure | undefined;
  let endCode: number | undefined;
  let wake: () => void = () => undefined;
  const settled = new Promise<void>((resolve) => (wake = resolve));
  // The first failure anywhere ends the run; later ones are its consequences.
  const fail = (f: NodeFailure, here: boolean, stop = (): void => ranks.stop()): void => {
    if (failure) return;
    failure = f;
    if (ranks.size) process.stderr.write(`moe-ep launch: ${describe(f)}; stopping the ranks on this host\n`);
    stop();
    if (here) spoke?.failed(f);
    hub?.abort(f);
    wake();
  };
  const ranks: LocalRanks = new LocalRanks({
    firstRank: nodeRank * nproc,
    count: nproc,
    env: rankEnv(plan, masterPort, runId, localAddr),
    script: plan.script,
    scriptArgs: plan.scriptArgs,
    onFailure: (f) => fail({ ...f, node: nodeRank }, true),
  });
  if (hub) {
    hub.onEvent = (e) =>
      fail(e.type === "failed" ? e.failure : { node: e.node, rank: -1, code: 1, how: "lost its connection" }, false);
  }
  if (spoke) {
    spoke.onEvent = (e) => {
      if (e.type === "abort") fail(e.failure, false);
      else if (e.type === "lost") fail({ node: 0, rank: -1, code: 1, how: "lost its connection" }, false);
      else {
        endCode = e.code;
        wake();
      }
    };
  }
  const onInterrupt = (signal: NodeJS.Signals): void =>
    fail({ node: nodeRank, rank: -1, code: 128 + signalNumber(signal), how: `got ${signal}` }, true, () => undefined);
  await forwardSignals(() => ranks, onInterrupt, ranks.done);

  // Every rank here has exited: wait for the other hosts' verdict unless a failure is already known.
  if (hub) {
    if (!failure) await Promise.race([hub.allDone(), settled]);
    hub.end(failure ? failure.code : 0);
  } else if (spoke) {
    if (!failure) {
      spoke.done();
      await settled;
    }
    spoke.close();
  }
  if (failure) {
    process.stderr.write(`moe-ep launch: failed: ${describe(failure)}\n`);
    return failure.code;
  }
  return endCode ?? 0;
}

/**
 * Runs `moe-ep launch` with its arguments (those after "launch") and resolves
 * with the exit code for the CLI: 0 when every rank on every host exits 0;
 * otherwise the failed rank's code (128 + signal number for a signal), after
 * a line on stderr naming the rank; 2 for bad arguments or hosts that
 * disagree on them.
 */
export async function launch(args: string[]): Promise<number> {
  let plan: Plan | "help";
  try {
    plan = parse(args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`moe-ep launch: ${e.message}\n${USAGE}\n`);
    return 2;
  }
  if (plan === "help") {
    process.stdout.write(USAGE + "\n");
    return 0;
  }
  return plan.nnodes === 1 ? oneHost(plan) : severalHosts(plan);
}
