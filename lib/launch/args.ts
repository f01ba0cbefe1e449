/** `moe-ep launch`'s arguments and the environment variables that stand in for them. */
import * as path from "path";
import { MoEError, invalid } from "../errors";

export const USAGE = `usage: moe-ep launch --nproc-per-node N [options] script.js [script args]

  -n, --nproc-per-node N  ranks to start on this host (also --nproc; env NPROC_PER_NODE)
  --nnodes K              hosts taking part, each running this launcher (env NNODES; default 1)
  --node-rank I           this host's place among them, 0 to K-1 (env NODE_RANK; default 0);
                          host I runs the ranks I*N to I*N+N-1
  --master-addr A         host 0's address, which every host reaches (env MASTER_ADDR;
                          default 127.0.0.1, required when K > 1)
  --master-port P         rank 0's tcp store on A:P; with K > 1 the launchers meet on A:P+1
                          (env MASTER_PORT; default a free port on one host, 29500 on several)
  --local-addr B          this host's address for Gloo (env MOE_EP_GLOO_HOSTNAME; default with
                          K > 1: the address of the interface that routes to A; else 127.0.0.1)
  --store URL             file://DIR: rendezvous through files in DIR (MOE_EP_STORE);
                          tcp (default): rank 0 serves the store on A:P`;

/** A bad argument of `moe-ep launch` (ERR_MOE_VALUE); the CLI prints it with the usage. */
export class UsageError extends MoEError {
  constructor(message: string) {
    super(message, "ERR_MOE_VALUE");
    this.name = "UsageError";
  }
}

export interface Plan {
  /** Hosts in the run. */
  nnodes: number;
  /** This host's index. */
  nodeRank: number;
  /** Ranks on each host. */
  nproc: number;
  masterAddr: string;
  /** Undefined: a free port (one host only). */
  masterPort?: number;
  /** This host's Gloo address when given; else chosen at launch. */
  localAddr?: string;
  /** MOE_EP_STORE for the ranks, when not the tcp store. */
  store?: string;
  script: string;
  scriptArgs: string[];
}

/** Port 29500, torchrun's default, when several hosts must agree on one without being told. */
export const DEFAULT_MASTER_PORT = 29500;
const ADDRESS = /^[A-Za-z0-9._-]+$/;

function parseInteger(name: string, text: string | undefined, min: number, max: number): number {
  if (text === undefined) throw new UsageError(`${name} needs a value`);
  const v = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new UsageError(`expected an integer in [${min}, ${max}] for ${name} but received "${text}"`);
  }
  return v;
}

function parseAddress(name: string, text: string | undefined): string {
  if (text === undefined) throw new UsageError(`${name} needs a value`);
  if (!ADDRESS.test(text))
    throw new UsageError(`expected a host name or IPv4 address for ${name} but received "${text}"`);
  return text;
}

function parseStore(text: string | undefined): string | undefined {
  if (text === undefined) throw new UsageError("--store needs a value");
  if (text === "tcp") return undefined;
  if (text.startsWith("file://")) {
    const dir = text.slice("file://".length);
    if (dir === "") throw new UsageError("--store file://DIR needs a directory");
    return "file://" + path.resolve(dir);
  }
  throw new UsageError(`expected file://DIR or tcp for --store but received "${text}"`);
}

const FLAGS: Record<string, string> = {
  "-n": "nproc",
  "--nproc": "nproc",
  "--nproc-per-node": "nproc",
  "--nnodes": "nnodes",
  "--node-rank": "nodeRank",
  "--master-addr": "masterAddr",
  "--master-port": "masterPort",
  "--local-addr": "localAddr",
  "--store": "store",
};

/** The environment variable read when a flag is absent. */
const ENV: Record<string, string> = {
  nproc: "NPROC_PER_NODE",
  nnodes: "NNODES",
  nodeRank: "NODE_RANK",
  masterAddr: "MASTER_ADDR",
  masterPort: "MASTER_PORT",
  localAddr: "MOE_EP_GLOO_HOSTNAME",
};

/** Reads the flags (before the script), falling back on the environment. */
export function parse(args: string[], env: NodeJS.ProcessEnv = process.env): Plan | "help" {
  if (!Array.isArray(args) || args.some((a) => typeof a !== "string"))
    throw invalid("an array of strings", "launch arguments", args);
  if (env === null || typeof env !== "object") throw invalid("an environment object", "env", env);
  const given: Record<string, { name: string; text: string | undefined }> = {};
  let i = 0;
  for (; i < args.length; ++i) {
    const arg = args[i];
    if (arg === "--") {
      ++i;
      break;
    }
    if (!arg.startsWith("-") || arg === "-") break;
    if (arg === "-h" || arg === "--help") return "help";
    const eq = arg.indexOf("=");
    const flag = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    const key = FLAGS[flag];
    if (!key) throw new UsageError(`unknown option ${arg}`);
    given[key] = { name: flag, text: arg.startsWith("--") && eq > 0 ? arg.slice(eq + 1) : args[++i] };
  }
  const read = (key: string): { name: string; text: string | undefined } | undefined => {
    if (given[key]) return given[key];
    const text = ENV[key] ? env[ENV[key]] : undefined;
    return text === undefined || text === "" ? undefined : { name: `the environment variable ${ENV[key]}`, text };
  };
  const integer = (key: string, min: number, max: number): number | undefined => {
    const v = read(key);
    return v && parseInteger(v.name, v.text, min, max);
  };

  const nproc = integer("nproc", 1, 1024);
  if (nproc === undefined) throw new UsageError("-n N is required (--nproc-per-node N, or NPROC_PER_NODE)");
  const nnodes = integer("nnodes", 1, 1024) ?? 1;
  const nodeRank = integer("nodeRank", 0, nnodes - 1) ?? 0;
  const addr = read("masterAddr");
  if (nnodes > 1 && !addr) throw new UsageError("--master-addr (or MASTER_ADDR) is required with --nnodes above 1");
  const masterAddr = addr ? parseAddress(addr.name, addr.text) : "127.0.0.1";
  // Several hosts use the port and the one above it.
  const masterPort =
    integer("masterPort", 1, nnodes > 1 ? 65534 : 65535) ?? (nnodes > 1 ? DEFAULT_MASTER_PORT : undefined);
  const local = read("localAddr");
  const localAddr = local && parseAddress(local.name, local.text);
  const store = given.store ? parseStore(given.store.text) : undefined;
  if (i >= args.length) throw new UsageError("no script given");
  return {
    nnodes,
    nodeRank,
    nproc,
    masterAddr,
    masterPort,
    localAddr,
    store,
    script: args[i],
    scriptArgs: args.slice(i + 1),
  };
}
