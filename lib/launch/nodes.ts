/**
 * How the launchers of a run on several hosts keep together. The launcher of
 * host 0 (the hub) listens on MASTER_ADDR:MASTER_PORT+1, on that address
 * only; every other launcher (a spoke) connects to it and stays connected for
 * the whole run. Messages are lines of JSON:
 *
 *   spoke -> hub: hello {node, nnodes, nproc}; failed {failure}; done
 *   hub -> spoke: start {runId}; refused {reason}; abort {failure}; end {code}
 *
 * The hub starts the run once every host has said hello with the same nnodes
 * and nproc, handing out one run id; it refuses the whole run when any host
 * disagrees. A spoke whose rank fails sends failed; the hub sends abort to
 * every spoke; a launcher that learns of a failure stops its ranks. A spoke
 * whose ranks all exited 0 sends done and waits for end, which the hub sends
 * once every host is done (code 0) or a failure is known (its code). A
 * connection that closes early is the loss of that launcher, a failure too.
 */
import * as net from "net";
import type { Failure } from "./ranks";

/** A failure and the host it happened on. */
export interface NodeFailure extends Failure {
  node: number;
}

export type HubEvent = { type: "failed"; failure: NodeFailure } | { type: "lost"; node: number };
export type SpokeEvent = { type: "abort"; failure: NodeFailure } | { type: "end"; code: number } | { type: "lost" };

/** The launchers could not start the run together (a host disagrees, or did not come in time). */
export class RendezvousError extends Error {
  constructor(
    message: string,
    /** The exit code: 2 for hosts that disagree, 1 for one that never came. */
    readonly code: number,
  ) {
    super(message);
  }
}

type Message = Record<string, unknown> & { type: string };

/** A longer line than any message is a connection from something else. */
const MAX_LINE = 65536;

/** One connection's messages, a line of JSON each. */
class Link {
  onMessage: (m: Message) => void = () => undefined;
  onClose: () => void = () => undefined;
  closed = false;
  private pending = "";

  constructor(readonly socket: net.Socket) {
    socket.setEncoding("utf8");
    socket.setNoDelay(true);
    socket.on("data", (chunk: string) => {
      const lines = (this.pending + chunk).split("\n");
      this.pending = lines.pop() ?? "";
      // Whatever does not speak this protocol is dropped, as a lost connection.
      if (this.pending.length > MAX_LINE) return void socket.destroy();
      for (const line of lines) {
        let m: unknown;
        try {
          m = JSON.parse(line);
        } catch {
          return void socket.destroy();
        }
        if (typeof m !== "object" || m === null || typeof (m as Message).type !== "string")
          return void socket.destroy();
        if (!this.closed) this.onMessage(m as Message);
      }
    });
    socket.on("error", () => undefined); // 'close' follows
    socket.on("close", () => {
      if (this.closed) return;
      this.closed = true;
      this.onClose();
    });
  }

  send(m: Message): void {
    if (!this.closed) this.socket.write(JSON.stringify(m) + "\n");
  }

  /** Sends the last message and closes once it is written. */
  end(m?: Message): void {
    if (this.closed) return;
    this.closed = true;
    if (m) this.socket.end(JSON.stringify(m) + "\n");
    else this.socket.end();
  }

  /** Closes at once; onClose is not called. */
  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}

function isFailure(f: unknown): f is NodeFailure {
  const o = f as NodeFailure;
  return (
    typeof o === "object" &&
    o !== null &&
    Number.isSafeInteger(o.rank) &&
    Number.isSafeInteger(o.code) &&
    Number.isSafeInteger(o.node) &&
    typeof o.how === "string"
  );
}

export interface Layout {
  nnodes: number;
  nproc: number;
}

/** Host 0's side: every other launcher's connection. */
export class Hub {
  onEvent: (e: HubEvent) => void = () => undefined;
  private readonly done = new Set<number>();
  private finished = false;

  private constructor(private readonly links: Map<number, Link>) {
    for (const [node, link] of links) {
      link.socket.setKeepAlive(true, 5000);
      link.onMessage = (m) => this.receive(node, m);
      link.onClose = () => {
        if (!this.done.has(node) && !this.finished) this.onEvent({ type: "lost", node });
      };
    }
  }

  /**
   * Listens on addr:port until the launchers of hosts 1 to nnodes-1 have all
   * said hello, then sends each the run id. Rejects with a RendezvousError
   * when one disagrees on the layout or they are not all there in timeoutMs.
   */
  static open(addr: string, port: number, layout: Layout, runId: string, timeoutMs: number): Promise<Hub> {
    return new Promise((resolve, reject) => {
      const joined = new Map<number, Link>();
      const everyone = new Set<Link>();
      let settled = false;
      const server = net.createServer();
      const fail = (e: RendezvousError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        for (const l of everyone) l.end({ type: "refused", reason: e.message });
        server.close();
        reject(e);
      };
      const timer = setTimeout(() => {
        const missing = Array.from({ length: layout.nnodes - 1 }, (_, i) => i + 1).filter((n) => !joined.has(n));
        fail(
          new RendezvousError(
            `the launchers of host(s) ${missing.join(", ")} did not connect to ${addr}:${port} within ${timeoutMs / 1000} s`,
            1,
          ),
        );
      }, timeoutMs);
      server.on("error", (e) =>
        fail(new RendezvousError(`could not listen on ${addr}:${port} for the other hosts: ${e.message}`, 1)),
      );
      server.on("connection", (socket) => {
        if (settled) return socket.destroy();
        const link = new Link(socket);
        link.onMessage = (m) => hello(m);
        link.onClose = () => {
          everyone.delete(link);
          for (const [n, l] of joined) if (l === link) joined.delete(n);
        };
        everyone.add(link);
        const hello = (m: Message): void => {
          if (m.type !== "hello" || !Number.isSafeInteger(m.node)) {
            everyone.delete(link);
            return link.destroy();
          }
          const node = m.node as number;
          const mismatch =
            m.nnodes !== layout.nnodes
              ? `--nnodes ${String(m.nnodes)} but host 0 has ${layout.nnodes}`
              : m.nproc !== layout.nproc
                ? `--nproc-per-node ${String(m.nproc)} but host 0 has ${layout.nproc}`
                : node < 1 || node >= layout.nnodes
                  ? `--node-rank ${node}, outside 1 to ${layout.nnodes - 1}`
                  : joined.has(node)
                    ? `--node-rank ${node}, which another host already has`
                    : undefined;
          if (mismatch) return fail(new RendezvousError(`a launcher connected with ${mismatch}`, 2));
          joined.set(node, link);
          if (joined.size < layout.nnodes - 1) return;
          settled = true;
          clearTimeout(timer);
          for (const l of joined.values()) l.send({ type: "start", runId });
          // Nothing else may join the run; the hub keeps only the links it has.
          server.close();
          resolve(new Hub(joined));
        };
      });
      server.listen(port, addr);
    });
  }

  private receive(node: number, m: Message): void {
    if (m.type === "failed" && isFailure(m.failure)) this.onEvent({ type: "failed", failure: m.failure });
    else if (m.type === "done") {
      this.done.add(node);
      this.onDone();
    }
  }

  private onDone: () => void = () => undefined;

  /** Resolves once every other host's ranks have all exited 0. */
  allDone(): Promise<void> {
    return new Promise((resolve) => {
      this.onDone = () => {
        if (this.done.size === this.links.size) resolve();
      };
      this.onDone();
    });
  }

  /** Tells every other host to stop its ranks. */
  abort(failure: NodeFailure): void {
    for (const l of this.links.values()) l.send({ type: "abort", failure });
  }

  /** Sends the run's exit code to every other host and closes. */
  end(code: number): void {
    this.finished = true;
    for (const l of this.links.values()) l.end({ type: "end", code });
  }
}

/** Another host's side: the connection to host 0's launcher. */
export class Spoke {
  onEvent: (e: SpokeEvent) => void = () => undefined;
  private ended = false;

  private constructor(private readonly link: Link) {}

  /**
   * Connects to host 0's launcher at addr:port, retrying until it listens,
   * says hello and waits for the run id. Rejects with a RendezvousError when
   * the hub refuses the run or is not there within timeoutMs.
   */
  static join(
    addr: string,
    port: number,
    node: number,
    layout: Layout,
    timeoutMs: number,
  ): Promise<{ spoke: Spoke; runId: string }> {
    const deadline = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      const attempt = (): void => {
        const socket = net.connect({ host: addr, port });
        const link = new Link(socket);
        link.onMessage = (m) => {
          if (m.type === "start" && typeof m.runId === "string") {
            socket.setKeepAlive(true, 5000);
            const spoke = new Spoke(link);
            link.onMessage = (later) => spoke.receive(later);
            link.onClose = () => spoke.lost();
            resolve({ spoke, runId: m.runId });
          } else if (m.type === "refused") {
            link.destroy();
            reject(new RendezvousError(`host 0's launcher refused the run: ${String(m.reason)}`, 2));
          }
        };
        link.onClose = () => {
          if (Date.now() < deadline) setTimeout(attempt, 250);
          else
            reject(
              new RendezvousError(
                `could not join host 0's launcher at ${addr}:${port} within ${timeoutMs / 1000} s`,
                1,
              ),
            );
        };
        socket.on("connect", () => link.send({ type: "hello", node, nnodes: layout.nnodes, nproc: layout.nproc }));
      };
      attempt();
    });
  }

  private receive(m: Message): void {
    if (m.type === "abort" && isFailure(m.failure)) this.onEvent({ type: "abort", failure: m.failure });
    else if (m.type === "end" && Number.isSafeInteger(m.code)) {
      this.ended = true;
      this.onEvent({ type: "end", code: m.code as number });
    }
  }

  private lost(): void {
    if (!this.ended) this.onEvent({ type: "lost" });
  }

  /** Tells host 0 that a rank here failed. */
  failed(failure: NodeFailure): void {
    this.link.send({ type: "failed", failure });
  }

  /** Tells host 0 that every rank here exited 0. */
  done(): void {
    this.link.send({ type: "done" });
  }

  /** Closes the connection once what was sent is written. */
  close(): void {
    this.ended = true;
    this.link.end();
  }
}
