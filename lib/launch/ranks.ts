/** The ranks one launcher starts on its own host: child Node processes, their output, their ends. */
import { spawn, type ChildProcess } from "child_process";
import { constants as osConstants } from "os";
import type { Readable, Writable } from "stream";

/** Time a rank gets between SIGTERM and SIGKILL once the run is stopping. */
export const GRACE_MS = 2000;

/** The first rank to fail, as every launcher of the run reports it. */
export interface Failure {
  rank: number;
  /** The code the launchers exit with: the rank's, or 128 + the signal's number. */
  code: number;
  /** "exited with code 3", "was killed by SIGKILL", ... */
  how: string;
}

export interface RanksOptions {
  /** The global rank of this host's first rank. */
  firstRank: number;
  count: number;
  /** Every variable the ranks share; RANK and LOCAL_RANK are added per rank. */
  env: NodeJS.ProcessEnv;
  script: string;
  scriptArgs: string[];
  /** Called once, for the first rank that fails before stop(). */
  onFailure: (failure: Failure) => void;
}

export function signalNumber(signal: NodeJS.Signals): number {
  return (osConstants.signals as Record<string, number>)[signal] ?? 1;
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

/**
 * Starts `count` ranks; their output lines go to this process's stdout and
 * stderr prefixed "[rank R] ". A rank that exits non-zero, is killed or cannot
 * start is reported once through onFailure; what happens to the others is the
 * caller's choice (stop()).
 */
export class LocalRanks {
  /** Resolves once every rank has exited and its output has been read. */
  readonly done: Promise<void>;
  private readonly children = new Map<number, ChildProcess>();
  private readonly running = new Set<number>();
  private stopping = false;
  private killTimer: NodeJS.Timeout | undefined;

  constructor(o: RanksOptions) {
    const starts = Array.from({ length: o.count }, (_, local) => {
      const rank = o.firstRank + local;
      const env = { ...o.env, RANK: String(rank), LOCAL_RANK: String(local) };
      const child = spawn(process.execPath, [o.script, ...o.scriptArgs], { env, stdio: ["ignore", "pipe", "pipe"] });
      this.children.set(rank, child);
      this.running.add(rank);
      prefixLines(child.stdout!, process.stdout, `[rank ${rank}] `);
      prefixLines(child.stderr!, process.stderr, `[rank ${rank}] `);
      return new Promise<void>((resolve) => {
        let exited = false;
        const exit = (code: number | null, signal: NodeJS.Signals | null, error?: Error): void => {
          if (exited) return;
          exited = true;
          this.running.delete(rank);
          const failed = error !== undefined || signal !== null || code !== 0;
          if (!failed || this.stopping) return;
          const how = error
            ? `could not start (${error.message})`
            : signal
              ? `was killed by ${signal}`
              : `exited with code ${code}`;
          this.stopping = true;
          o.onFailure({ rank, code: signal ? 128 + signalNumber(signal) : code || 1, how });
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
    this.done = Promise.all(starts).then(() => {
      if (this.killTimer) clearTimeout(this.killTimer);
    });
  }

  /** Ranks still running. */
  get size(): number {
    return this.running.size;
  }

  /** Ends the run here: SIGTERM to every running rank, SIGKILL after GRACE_MS; later failures are not reported. */
  stop(): void {
    this.stopping = true;
    if (this.killTimer || this.running.size === 0) return;
    for (const r of this.running) this.children.get(r)!.kill("SIGTERM");
    this.killTimer = setTimeout(() => this.kill(), GRACE_MS);
  }

  /** Passes a signal on to every running rank; their exits are then not failures. */
  forward(signal: NodeJS.Signals): void {
    this.stopping = true;
    for (const r of this.running) this.children.get(r)!.kill(signal);
  }

  kill(): void {
    this.stopping = true;
    for (const r of this.running) this.children.get(r)!.kill("SIGKILL");
  }
}
