/**
 * The rendezvous a launcher hands each rank through the environment:
 * `moe-ep launch` sets all of it; Slurm, mpirun or a scheduler must set RANK,
 * WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (and MOE_EP_RUN_ID for a
 * file store), as torchrun's scripts expect.
 *
 * Under torchrun (TORCHELASTIC_RUN_ID set) the agent already serves its own
 * store on MASTER_PORT, so rank 0 serves ours on MASTER_PORT + 1: every rank
 * derives the same port without talking. MOE_EP_STORE_PORT names another port
 * (under any launcher); MOE_EP_STORE another store altogether.
 */
import { MoEError, invalid, rangeText } from "../errors";
import { openStore, type Store, type StoreOptions } from "./store";

export interface Rendezvous {
  rank: number;
  worldSize: number;
  localRank: number;
  /** LOCAL_WORLD_SIZE when the launcher sets it. */
  localWorldSize?: number;
  /** MASTER_ADDR / MASTER_PORT; optional only when MOE_EP_STORE names the store. */
  masterAddr?: string;
  masterPort?: number;
  /** The run's namespace in the store. */
  runId: string;
  /** MOE_EP_STORE, else tcp://MASTER_ADDR:port (see storePortFrom). */
  storeUrl: string;
  /** Where a tcp store's port came from, when MOE_EP_STORE is unset: for errors. */
  storePortFrom?: string;
  /** Set by torchrun (TORCHELASTIC_RUN_ID): its agent holds MASTER_PORT. */
  torchrun: boolean;
}

const VARIABLES = "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT";
const RUN_ID = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$/;

function missing(name: string, why = ""): MoEError {
  return new MoEError(
    `Expected the environment variable ${name} to be set${why}. \`moe-ep launch\` sets it; ` +
      `another launcher must set ${VARIABLES} (and MOE_EP_RUN_ID for a file:// store).`,
    "ERR_MOE_VALUE",
  );
}

/** An integer environment variable in [min, max]; unset or empty is `undefined`, or an error when required. */
export function intVar(env: NodeJS.ProcessEnv, name: string, min: number, max: number, required: true): number;
export function intVar(
  env: NodeJS.ProcessEnv,
  name: string,
  min: number,
  max: number,
  required: false,
): number | undefined;
export function intVar(
  env: NodeJS.ProcessEnv,
  name: string,
  min: number,
  max: number,
  required: boolean,
): number | undefined {
  const text = env[name];
  if (text === undefined || text === "") {
    if (required) throw missing(name);
    return undefined;
  }
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`an integer in ${rangeText(min, max)}`, `the environment variable ${name}`, text);
  }
  return value;
}

/** Reads and checks the rendezvous variables; each problem is an ERR_MOE_VALUE naming its variable. */
export function rendezvousFromEnv(env: NodeJS.ProcessEnv = process.env): Rendezvous {
  if (env === null || typeof env !== "object") throw invalid("an environment object", "env", env);
  const worldSize = intVar(env, "WORLD_SIZE", 1, Number.MAX_SAFE_INTEGER, true);
  const rank = intVar(env, "RANK", 0, worldSize - 1, true);
  const localWorldSize = intVar(env, "LOCAL_WORLD_SIZE", 1, Number.MAX_SAFE_INTEGER, false);
  const localRank = intVar(env, "LOCAL_RANK", 0, (localWorldSize ?? worldSize) - 1, true);

  let storeUrl = env.MOE_EP_STORE || undefined;
  if (storeUrl !== undefined && !/^(file:\/\/\/|tcp:\/\/)/.test(storeUrl)) {
    throw invalid('"file:///abs/dir" or "tcp://host:port"', "the environment variable MOE_EP_STORE", storeUrl);
  }
  const needMaster = storeUrl === undefined;
  const masterAddr = env.MASTER_ADDR || undefined;
  if (masterAddr === undefined && needMaster) throw missing("MASTER_ADDR", " (or MOE_EP_STORE)");
  if (masterAddr !== undefined && !/^[A-Za-z0-9._-]+$/.test(masterAddr)) {
    throw invalid("a host name or IPv4 address", "the environment variable MASTER_ADDR", masterAddr);
  }
  const storePort = intVar(env, "MOE_EP_STORE_PORT", 1, 65535, false);
  const masterPort =
    needMaster && storePort === undefined
      ? intVar(env, "MASTER_PORT", 1, 65535, true)
      : intVar(env, "MASTER_PORT", 1, 65535, false);
  const torchrun = !!env.TORCHELASTIC_RUN_ID;
  let storePortFrom: string | undefined;
  if (storeUrl === undefined) {
    let port: number;
    if (storePort !== undefined) {
      port = storePort;
      storePortFrom = "MOE_EP_STORE_PORT";
    } else if (torchrun) {
      // torchrun's agent listens on MASTER_PORT; every rank takes the next one.
      if (masterPort! >= 65535) {
        throw new MoEError(
          `Expected MASTER_PORT below 65535 under torchrun (the store takes MASTER_PORT + 1) but received ` +
            `${masterPort}; set MOE_EP_STORE_PORT to a free port on ${masterAddr}, the same on every rank.`,
          "ERR_MOE_VALUE",
        );
      }
      port = masterPort! + 1;
      storePortFrom = "MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT)";
    } else {
      port = masterPort!;
      storePortFrom = "MASTER_PORT";
    }
    storeUrl = `tcp://${masterAddr}:${port}`;
  }

  let runId = env.MOE_EP_RUN_ID || undefined;
  if (runId !== undefined && !RUN_ID.test(runId)) {
    throw invalid(
      "1 to 128 letters, digits, '-', '_' or '.' (not starting with '.')",
      "the environment variable MOE_EP_RUN_ID",
      runId,
    );
  }
  if (runId === undefined) {
    if (storeUrl.startsWith("file://")) {
      throw missing("MOE_EP_RUN_ID", " for the file:// store, so that files of an earlier run are never read");
    }
    // A tcp store lives in rank 0's memory and starts empty, so the server's
    // address is namespace enough when the launcher gives no run id.
    const where = storeUrl.slice("tcp://".length).replace(/[^A-Za-z0-9_.-]/g, "-");
    runId = `tcp-${where}`.slice(0, 128);
  }
  return {
    rank,
    worldSize,
    localRank,
    localWorldSize,
    masterAddr,
    masterPort,
    runId,
    storeUrl,
    storePortFrom,
    torchrun,
  };
}

/**
 * Opens the store of a rendezvous; when rank 0 cannot listen on a tcp store's
 * port, the error says where the port came from and names MOE_EP_STORE_PORT.
 */
export function openRendezvousStore(r: Rendezvous, options: Omit<StoreOptions, "rank" | "worldSize">): Store {
  try {
    return openStore(r.storeUrl, { ...options, rank: r.rank, worldSize: r.worldSize });
  } catch (e) {
    if (!(e instanceof MoEError) || r.storePortFrom === undefined || !/cannot listen on/.test(e.message)) throw e;
    throw new MoEError(
      `${e.message}. The store's port is ${r.storePortFrom}; set MOE_EP_STORE_PORT to a free port ` +
        `on ${r.masterAddr}, the same on every rank (or MOE_EP_STORE to another store).`,
      e.code,
      { cause: e },
    );
  }
}

/** Opens the store the environment names, as this rank. */
export function openStoreFromEnv(options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Store {
  if (options === null || typeof options !== "object") throw invalid("an options object", "options", options);
  const r = rendezvousFromEnv(options.env ?? process.env);
  return openRendezvousStore(r, { runId: r.runId, timeoutMs: options.timeoutMs });
}
