/** `moe-ep launch`'s arguments and the environment variables that stand in for them. */
import * as path from "path";
import { describeFlags, parseOptions, UsageError, type Flag } from "../cli-options";
import { invalid } from "../errors";

export { UsageError };

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

const STRING = { type: "string" } as const;

/** launch's flags, one line each; parse reads their values, falling back on ENV. */
export const LAUNCH_FLAGS: readonly Flag[] = [
  {
    name: "nproc-per-node",
    short: "n",
    aliases: ["nproc"],
    key: "nproc",
    kind: STRING,
    value: "N",
    help: "ranks to start on this host (env NPROC_PER_NODE)",
  },
  {
    name: "nnodes",
    kind: STRING,
    value: "K",
    help: "hosts taking part, each running this launcher (env NNODES; default 1)",
  },
  {
    name: "node-rank",
    key: "nodeRank",
    kind: STRING,
    value: "I",
    help: "this host's place among them, 0 to K-1 (env NODE_RANK; default 0);\nhost I runs the ranks I*N to I*N+N-1",
  },
  {
    name: "master-addr",
    key: "masterAddr",
    kind: STRING,
    value: "A",
    help: "host 0's address, which every host reaches (env MASTER_ADDR;\ndefault 127.0.0.1, required when K > 1)",
  },
  {
    name: "master-port",
    key: "masterPort",
    kind: STRING,
    value: "P",
    help: "rank 0's tcp store on A:P; with K > 1 the launchers meet on A:P+1\n(env MASTER_PORT; default a free port on one host, 29500 on several)",
  },
  {
    name: "local-addr",
    key: "localAddr",
    kind: STRING,
    value: "B",
    help: "this host's address for Gloo (env MOE_EP_GLOO_HOSTNAME; default with\nK > 1: the address of the interface that routes to A; else 127.0.0.1)",
  },
  {
    name: "store",
    kind: STRING,
    value: "URL",
    help: "file://DIR: rendezvous through files in DIR (MOE_EP_STORE);\ntcp (default): rank 0 serves the store on A:P",
  },
];

export const USAGE = `usage: moe-ep launch --nproc-per-node N [options] script.js [script args]
       moe-ep launch [options] -- script.js [script args]

Everything from the script on is the script's own and passed on untouched.

${describeFlags(LAUNCH_FLAGS)}`;

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
  const parsed = parseOptions(LAUNCH_FLAGS, args, { rest: true });
  if (parsed.help) return "help";
  const given: Record<string, { name: string; text: string | undefined }> = {};
  for (const [key, text] of Object.entries(parsed.values))
    given[key] = { name: parsed.spelled[key], text: String(text) };
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
  if (parsed.rest.length === 0) throw new UsageError("no script given");
  return {
    nnodes,
    nodeRank,
    nproc,
    masterAddr,
    masterPort,
    localAddr,
    store,
    script: parsed.rest[0],
    scriptArgs: parsed.rest.slice(1),
  };
}
