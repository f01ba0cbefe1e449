/**
 * `moe-ep launch`: runs N ranks of a script on this machine, the way torchrun
 * does. Each rank is a child Node process with RANK, WORLD_SIZE, LOCAL_RANK,
 * LOCAL_WORLD_SIZE, MASTER_ADDR (127.0.0.1), MASTER_PORT (a free port) and
 * MOE_EP_RUN_ID (fresh and random, the store namespace of this run); its
 * output lines are prefixed with "[rank R] ". When a rank fails, the others
 * get SIGTERM and, after a grace period, SIGKILL.
 */
import { spawn, type ChildProcess } from "child_process";
import { randomBytes } from "crypto";
import { createServer } from "net";
import { constants as osConstants } from "os";
import * as path from "path";
import type { Writable, Readable } from "stream";

const USAGE = `usage: moe-ep launch -n N [--store file://DIR|tcp] [--master-port P] script.js [script args]

  -n, --nproc N      number of ranks to start on this machine
  --store URL        file://DIR: rendezvous through files in DIR (MOE_EP_STORE);
                     tcp (default): rank 0 serves the store on MASTER_ADDR:MASTER_PORT
  --master-port P    the port of the tcp store (default: a free port)`;

/** Time a rank gets between SIGTERM and SIGKILL once another rank has failed. */
const GRACE_MS = 2000;
const MASTER_ADDR = "127.0.0.1";

interface Plan {
  nproc: number;
  store?: string;
  masterPort?: number;
  script: string;
  scriptArgs: string[];
}

class UsageError extends Error {}

function parseInteger(flag: string, text: string | undefined, min: number, max: number): number {
  if (text === undefined) throw new UsageError(`${flag} needs a value`);
  const v = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new UsageError(`expected an integer in [${min}, ${max}] for ${flag} but received "${text}"`);
  }
  return v;
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

function parse(args: string[]): Plan | "help" {
  let nproc: number | undefined;
  let store: string | undefined;
  let masterPort: number | undefined;
  let i = 0;
  for (; i < args.length; ++i) {
    const arg = args[i];
    if (arg === "--") {
      ++i;
      break;
    }
    if (!arg.startsWith("-") || arg === "-") break;
    const eq = arg.indexOf("=");
    const flag = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    const value = (): string | undefined => (arg.startsWith("--") && eq > 0 ? arg.slice(eq + 1) : args[++i]);
    switch (flag) {
      case "-h":
      case "--help":
        return "help";
      case "-n":
      case "--nproc":
      case "--nproc-per-node":
        nproc = parseInteger(flag, value(), 1, 1024);
        break;
      case "--store":
        store = parseStore(value());
        break;
      case "--master-port":
        masterPort = parseInteger(flag, value(), 1, 65535);
        break;
      default:
        throw new UsageError(`unknown option ${arg}`);
    }
  }
  if (nproc === undefined) throw new UsageError("-n N is required");
  if (i >= args.length) throw new UsageError("no script given");
  return { nproc, store, masterPort, script: args[i], scriptArgs: args.slice(i + 1) };
}

/** A free port on the loopback address (bound to port 0, then released). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, MASTER_ADDR, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Copies a child's stream to `out` line by line, each line prefixed. */
function prefixLines(from: Readable, out: Writable, prefix: string): void {
  let pending = "";
  from.setEncoding("utf8");
  from.on("data", (chunk: string) => {
    const text = pending + chunk;
    const lines = text.split("\n");
    pending = lines.pop() ?? "";
    if (lines.length) out.write(lines.map((l) => prefix + l + "\n").join(""));
  });
  from.on("end", () => {
    if (pending) out.write(prefix + pending + "\n");
    pending = "";
  });
}

function signalNumber(signal: NodeJS.Signals): number {
  return (osConstants.signals as Record<string, number>)[signal] ?? 1;
}

/**
 * Runs `moe-ep launch` with its arguments (those after "launch") and resolves
 * with the exit code for the CLI: 0 when every rank exits 0; otherwise the
 * failed rank's code (128 + signal number for a signal), after a line on
 * stderr naming the rank; 2 for bad arguments.
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
  const { nproc, store, script, scriptArgs } = plan;
  const masterPort = plan.masterPort ?? (await freePort());
  const runId = randomBytes(12).toString("hex");

  const children: ChildProcess[] = [];
  const running = new Set<number>();
  let failure: { rank: number; code: number; how: string } | undefined;
  let interrupted: NodeJS.Signals | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  const stopOthers = (): void => {
    for (const r of running) children[r].kill("SIGTERM");
    killTimer = setTimeout(() => {
      for (const r of running) children[r].kill("SIGKILL");
    }, GRACE_MS);
  };

  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) {
      for (const r of running) children[r].kill("SIGKILL"); // a second signal: stop now
      return;
    }
    interrupted = signal;
    for (const r of running) children[r].kill(signal);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const done = Array.from({ length: nproc }, (_, rank) => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      RANK: String(rank),
      WORLD_SIZE: String(nproc),
      LOCAL_RANK: String(rank),
      LOCAL_WORLD_SIZE: String(nproc),
      MASTER_ADDR,
      MASTER_PORT: String(masterPort),
      MOE_EP_RUN_ID: runId,
    };
    // The launcher decides the rendezvous: a store url inherited from outside is dropped.
    delete env.MOE_EP_STORE;
    if (store) env.MOE_EP_STORE = store;
    const child = spawn(process.execPath, [script, ...scriptArgs], { env, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    running.add(rank);
    const prefix = `[rank ${rank}] `;
    prefixLines(child.stdout!, process.stdout, prefix);
    prefixLines(child.stderr!, process.stderr, prefix);
    return new Promise<void>((resolve) => {
      let exited = false;
      const exit = (code: number | null, signal: NodeJS.Signals | null, error?: Error): void => {
        if (exited) return;
        exited = true;
        running.delete(rank);
        const failed = error !== undefined || signal !== null || code !== 0;
        if (failed && !failure && !interrupted) {
          const how = error
            ? `could not start (${error.message})`
            : signal
              ? `was killed by ${signal}`
              : `exited with code ${code}`;
          failure = { rank, code: signal ? 128 + signalNumber(signal) : code || 1, how };
          if (running.size) {
            process.stderr.write(`moe-ep launch: rank ${rank} ${how}; stopping the other ranks\n`);
            stopOthers();
          }
        }
      };
      child.on("error", (e) => {
        exit(null, null, e);
        resolve();
      });
      child.on("exit", (code, signal) => exit(code, signal));
      // 'close' follows 'exit' once the rank's output has been read to the end.
      child.on("close", (code, signal) => {
        exit(code, signal);
        resolve();
      });
    });
  });

  try {
    await Promise.all(done);
  } finally {
    if (killTimer) clearTimeout(killTimer);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  if (interrupted) return 128 + signalNumber(interrupted);
  if (failure) {
    process.stderr.write(`moe-ep launch: failed: rank ${failure.rank} ${failure.how}\n`);
    return failure.code;
  }
  return 0;
}
