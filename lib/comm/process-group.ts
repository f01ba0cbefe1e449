/**
 * ProcessGroup: the ranks of a run and the collectives between them
 * (docs/architecture.md#process-groups). Gloo moves CPU tensors over TCP; every
 * collective runs on the group's own native thread and returns a Promise, so
 * the event loop never waits on a peer.
 *
 * Faults are errors: every collective and every rendezvous wait has the
 * group's timeout (timeoutMs). A peer that dies is ERR_MOE_PEER_LOST naming
 * it, one that hangs ERR_MOE_TIMEOUT; either breaks the group, and every
 * later call fails at once with the same error. Ranks that disagree on what
 * they exchange (counts, shapes, dtypes, the collective itself) all fail
 * with the same typed error before any data moves, and the group stays usable.
 */
import "../polyfill";
import { ncclStatus } from "./nccl";
import { createNcclGroup, defaultNcclDevice } from "./nccl-group";
import { MoEError, checkInteger, checkOneOf, invalid, orDefault } from "../errors";
import type { NativeProcessGroupHandle } from "../addon";
import { loadNative } from "../native";
import { handle, wrap } from "../ops/common";
import { Tensor } from "../tensor";
import { openRendezvousStore, rendezvousFromEnv } from "./env";
import { expertParallelLayout } from "./layout";
import { openStore, Store, STORE_LIMITS } from "./store";

export type { NativeProcessGroupHandle };

export type Backend = "gloo" | "nccl";
export const BACKENDS: readonly Backend[] = ["gloo", "nccl"];
export type ReduceOp = "sum" | "avg" | "max";
export const REDUCE_OPS: readonly ReduceOp[] = ["sum", "avg", "max"];

/** Row counts, one per rank of the group: an array, an Int32Array / BigInt64Array, or an int32 / int64 tensor [size]. */
export type Counts = readonly number[] | Int32Array | BigInt64Array | Tensor;

export interface ProcessGroupOptions {
  /** "gloo" (CPU tensors, the default) or "nccl" (GPU tensors). */
  backend?: Backend;
  /** This process's rank; default RANK. */
  rank?: number;
  /** Number of ranks; default WORLD_SIZE. */
  worldSize?: number;
  /** The rendezvous: a store url ("file:///abs/dir", "tcp://host:port") or an open Store; default from the environment (MOE_EP_STORE, else MASTER_ADDR:MASTER_PORT). */
  store?: string | Store;
  /** The run's namespace in a store this call opens; default MOE_EP_RUN_ID. */
  runId?: string;
  /** Timeout of every collective and rendezvous wait, in ms. Default: the core's, 5 minutes (cpp/comm/store.h). */
  timeoutMs?: number;
  /**
   * For a tcp:// store this call opens on rank 0: the most its server holds
   * for the run, in bytes (StoreOptions.maxBytes). Default
   * MOE_EP_STORE_MAX_BYTES, else 256 MiB.
   */
  storeMaxBytes?: number;
  /**
   * The address this rank's sockets bind to and peers connect to. Default
   * MOE_EP_GLOO_HOSTNAME, else "127.0.0.1" (loopback: one machine). Ranks on
   * several machines name an address of their own machine that the others
   * reach. A name is resolved to its address (IPv4 first) before Gloo sees it;
   * one that does not resolve is ERR_MOE_VALUE naming it.
   */
  hostname?: string;
  /**
   * Backend "nccl" only: this rank's CUDA device, "cuda:N". Default
   * cuda:$LOCAL_RANK, else cuda:0. Every tensor passed to the group's
   * collectives must live there.
   */
  device?: string;
}

export interface AllToAllVOptions {
  /**
   * The rows this rank expects from each rank. When given (on any rank),
   * every rank checks what the others send against it before any row moves,
   * and all ranks fail with ERR_MOE_COUNT_MISMATCH naming the sender, the
   * receiver and both counts.
   */
  recvCounts?: Counts;
  /**
   * x's rows as chunks, [chunks, size] row-major: sendChunks[l * size + p] rows of chunk l go to
   * rank p. x holds them chunk-major (chunk 0 for every rank in rank order, then chunk 1...), and
   * rank p receives its chunks in chunk order. Its sums per rank must be sendCounts. The same as
   * chunkTranspose(x, sendChunks as [chunks, size]) before a plain allToAllV, without the copy
   * where the rows go through shared memory.
   */
  sendChunks?: Counts;
  /**
   * The output as chunks, [size, chunks] row-major: recvChunks[p * chunks + l] rows of chunk l
   * arrive from rank p, and the output holds them chunk-major (chunk 0 from every rank in rank
   * order, then chunk 1...). Needs recvCounts, its sums per rank. The same as chunkTranspose of a
   * plain allToAllV's output by recvChunks as [size, chunks].
   */
  recvChunks?: Counts;
}

export interface AllToAllVResult {
  /** [sum(recvCounts), ...x.shape.slice(1)], rows ordered by source rank. */
  output: Tensor;
  /** The rows that came from each rank. */
  recvCounts: number[];
}

export interface AllGatherVResult {
  /** Every rank's rows, in rank order: shape `[sum(counts), ...x.shape.slice(1)]`. */
  output: Tensor;
  /** The rows that came from each rank. */
  counts: number[];
}

export interface NewGroupOptions {
  /** Default: the parent group's timeout. */
  timeoutMs?: number;
}

export interface SplitOptions extends NewGroupOptions {
  /** Ranks per expert-parallel group; epSize × etpSize must divide the group's size. */
  epSize: number;
  /** Ranks per expert-tensor-parallel group (default 1). */
  etpSize?: number;
}

export interface ExpertParallelGroups {
  /** This rank's EP group: consecutive blocks of epSize ranks. */
  ep: ProcessGroup;
  /** This rank's expert-data-parallel group: the ranks holding the same expert slices. */
  expertDataParallel: ProcessGroup;
  /** This rank's expert-tensor-parallel group (consecutive blocks of etpSize ranks); only when etpSize > 1. */
  etp?: ProcessGroup;
}

/**
 * The one place the NCCL backend is chosen: the function that connects an
 * NCCL group when NCCL and a device are usable, else ERR_MOE_NCCL_UNAVAILABLE
 * with the reason (library not found, version too old, no device).
 */
function ncclBackend(): typeof createNcclGroup {
  const status = ncclStatus();
  if (!status.available) {
    throw new MoEError(
      `initProcessGroup: backend "nccl" is unavailable: ${status.reason}; use backend "gloo" for CPU tensors`,
      "ERR_MOE_NCCL_UNAVAILABLE",
    );
  }
  return createNcclGroup;
}

function checkDevice(value: unknown): string {
  if (typeof value !== "string" || !/^cuda(:\d+)?$/.test(value))
    throw invalid('a CUDA device ("cuda:N")', "device", value, "ERR_MOE_DEVICE");
  return value === "cuda" ? "cuda:0" : value;
}

function checkCounts(name: string, counts: unknown): number[] {
  if (counts instanceof Tensor) {
    if (counts.dtype !== "int32" && counts.dtype !== "int64") {
      throw invalid("an int32 or int64 tensor", name, counts, "ERR_MOE_DTYPE");
    }
    if (counts.shape.length !== 1) {
      throw new MoEError(`Expected ${name} of shape [size] but received [${counts.shape.join(", ")}]`, "ERR_MOE_SHAPE");
    }
    return Array.from(counts.toArray() as Int32Array | BigInt64Array, Number);
  }
  if (counts instanceof Int32Array) return Array.from(counts);
  if (counts instanceof BigInt64Array) return Array.from(counts, Number);
  if (!Array.isArray(counts)) throw invalid("an array of row counts, an Int32Array or an integer tensor", name, counts);
  counts.forEach((c, i) => {
    if (typeof c !== "number" || !Number.isSafeInteger(c)) throw invalid("an integer", `${name}[${i}]`, c);
  });
  return counts as number[];
}

function checkRanks(name: string, ranks: unknown): number[] {
  if (!Array.isArray(ranks)) throw invalid("an array of ranks", name, ranks);
  ranks.forEach((r, i) => checkInteger(`${name}[${i}]`, r, 0));
  return ranks as number[];
}

/** Absent: the parent group's, or for a new world the core's default (cpp/comm/store.h). */
function checkTimeout(value: unknown): number | undefined {
  return value === undefined ? undefined : checkInteger("timeoutMs", value, 1);
}

function optionsObject<T>(value: unknown, name: string): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw invalid("an options object", name, value);
  return value as Partial<T>;
}

/**
 * A group of ranks and its collectives. Made by initProcessGroup, newGroup
 * and split; every rank of a group calls its collectives in the same order.
 */
export class ProcessGroup implements Disposable {
  /** @internal */
  readonly handle: NativeProcessGroupHandle;
  /** "gloo" (CPU tensors) or "nccl" (CUDA tensors of one device); sub-groups keep their parent's. */
  readonly backend: Backend;
  private readonly children = new Set<ProcessGroup>();
  private readonly onDestroy: (() => void) | undefined;

  /** @internal Made by initProcessGroup, newGroup and split. */
  constructor(h: NativeProcessGroupHandle, onDestroy?: () => void, backend: Backend = "gloo") {
    this.handle = h;
    this.onDestroy = onDestroy;
    this.backend = backend;
  }

  /** This process's rank in the group. */
  get rank(): number {
    return this.handle.rank;
  }
  /** The number of ranks in the group. */
  get size(): number {
    return this.handle.size;
  }
  /** The group's members, as ranks of the world group (ranks[r] is group rank r). */
  get ranks(): number[] {
    return this.handle.ranks;
  }
  /** "world", or the world ranks of a sub-group: "[0, 2]". */
  get name(): string {
    return this.handle.name;
  }
  get timeoutMs(): number {
    return this.handle.timeoutMs;
  }
  /** The address the group's sockets are bound to. */
  get hostname(): string {
    return this.handle.hostname;
  }
  get destroyed(): boolean {
    return this.handle.destroyed;
  }
  /**
   * Whether allToAllV takes sendChunks and recvChunks (the MoE dispatcher then skips its own
   * regrouping): the Gloo engine's groups (CPU tensors) do, NCCL's do not.
   */
  get allToAllVChunks(): boolean {
    return this.handle.device === "cpu";
  }
  /**
   * Whether allToAllV moves its rows through shared memory: Gloo groups whose ranks share a
   * machine, from the group's second allToAllV on (the first sets it up), unless MOE_EP_SHM=0
   * on any rank. See docs/architecture.md#shared-memory.
   */
  get sharedMemory(): boolean {
    return this.handle.sharedMemory;
  }
  /** The error that broke the group, or null while it works. */
  get fault(): MoEError | null {
    const f = this.handle.fault;
    return f ? new MoEError(f.message, f.code as MoEError["code"]) : null;
  }

  /**
   * Variable all-to-all of rows: x [rows, ...] is cut by sendCounts (rows
   * for each rank, in rank order, zeros allowed, summing to rows); the
   * counts are exchanged first, then the rows. Any dtype.
   */
  async allToAllV(x: Tensor, sendCounts: Counts, options?: AllToAllVOptions): Promise<AllToAllVResult> {
    this.live("allToAllV");
    const o = optionsObject<AllToAllVOptions>(options, "allToAllV options");
    const send = checkCounts("sendCounts", sendCounts);
    const expected = o.recvCounts === undefined ? undefined : checkCounts("recvCounts", o.recvCounts);
    const chunks =
      o.sendChunks === undefined && o.recvChunks === undefined
        ? undefined
        : {
            sendChunks: o.sendChunks === undefined ? undefined : checkCounts("sendChunks", o.sendChunks),
            recvChunks: o.recvChunks === undefined ? undefined : checkCounts("recvChunks", o.recvChunks),
          };
    const r = await this.handle.allToAllV(handle(x, "x"), send, expected, chunks);
    return { output: wrap(r.output), recvCounts: r.recvCounts };
  }

  /**
   * All-to-all of equal blocks: x [size, ...]; block p goes to rank p, and
   * block p of the output came from rank p. For the per-expert count vectors
   * ([size] int32) and any dtype.
   */
  async allToAll(x: Tensor): Promise<Tensor> {
    this.live("allToAll");
    return wrap(await this.handle.allToAll(handle(x, "x")));
  }

  /**
   * Variable all-gather of rows: x [rows, ...] (rows may differ between
   * ranks, zero allowed); the counts are exchanged first, then every rank
   * receives every rank's rows, concatenated in rank order. Any dtype.
   */
  async allGatherV(x: Tensor): Promise<AllGatherVResult> {
    this.live("allGatherV");
    const r = await this.handle.allGatherV(handle(x, "x"));
    return { output: wrap(r.output), counts: r.counts };
  }

  /**
   * Variable reduce-scatter of rows (sum): x [sum(counts), ...] is cut by
   * counts (rows for each rank, in rank order; the same counts on every
   * rank), and rank p receives the sum over the ranks of their chunk p,
   * [counts[p], ...]. Ranks that pass other counts all fail with
   * ERR_MOE_COUNT_MISMATCH before data moves. Float and integer dtypes; Gloo
   * adds in rank order (bfloat16 / float16 in float32).
   */
  async reduceScatterV(x: Tensor, counts: Counts): Promise<Tensor> {
    this.live("reduceScatterV");
    const c = checkCounts("counts", counts);
    return wrap(await this.handle.reduceScatterV(handle(x, "x"), c));
  }

  /** Reduces t across the group in place: "sum" (default), "avg" (float dtypes) or "max". bfloat16 / float16 reduce in float32. */
  async allReduce(t: Tensor, op: ReduceOp = "sum"): Promise<void> {
    this.live("allReduce");
    const h = handle(t, "t");
    await this.handle.allReduce(h, checkOneOf("op", op, REDUCE_OPS));
  }

  /** Copies root's t into t on every rank, in place (root is a rank of this group). */
  async broadcast(t: Tensor, root = 0): Promise<void> {
    this.live("broadcast");
    const h = handle(t, "t");
    await this.handle.broadcast(h, checkInteger("root", root, 0, this.size - 1));
  }

  /** Resolves once every rank of the group has called it. */
  async barrier(): Promise<void> {
    this.live("barrier");
    await this.handle.barrier();
  }

  /**
   * A group of some of this group's ranks (ascending, given as ranks of this
   * group). Only the members call it, each the same number of times for the
   * same ranks, in the same order. The rendezvous goes through this group's
   * store, which must stay open until every member has connected.
   */
  async newGroup(ranks: number[], options?: NewGroupOptions): Promise<ProcessGroup> {
    this.live("newGroup");
    const o = optionsObject<NewGroupOptions>(options, "newGroup options");
    const members = checkRanks("ranks", ranks);
    const timeoutMs = checkTimeout(o.timeoutMs);
    return this.adopt(await this.handle.newGroup(members, { timeoutMs }));
  }

  /**
   * This rank's expert-parallel group and expert-data-parallel group (and, for
   * etpSize > 1, its expert-tensor-parallel group), laid out as Megatron-Core
   * does (see expertParallelLayout). Every rank of this group calls it.
   */
  async split(options: SplitOptions): Promise<ExpertParallelGroups> {
    this.live("split");
    const o = optionsObject<SplitOptions>(options, "split options");
    const epSize = checkInteger("epSize", o.epSize, 1, this.size);
    const etpSize = checkInteger("etpSize", o.etpSize ?? 1, 1, this.size);
    const timeoutMs = checkTimeout(o.timeoutMs);
    const layout = expertParallelLayout(this.size, epSize, etpSize);
    const mine = (groups: number[][]): number[] => groups.find((g) => g.includes(this.rank))!;
    const [ep, expertDataParallel, etp] = await Promise.all([
      this.newGroup(mine(layout.ep), { timeoutMs }),
      this.newGroup(mine(layout.expertDataParallel), { timeoutMs }),
      etpSize > 1 ? this.newGroup(mine(layout.etp), { timeoutMs }) : undefined,
    ]);
    // Every rank has connected its groups: the store is no longer needed for them.
    await this.barrier();
    return etp ? { ep, expertDataParallel, etp } : { ep, expertDataParallel };
  }

  /**
   * Ends the group and the sub-groups made from it: later calls reject with
   * ERR_MOE_DISPOSED and a collective in progress is aborted; a store that
   * initProcessGroup opened is closed.
   */
  destroy(): void {
    for (const c of this.children) c.destroy();
    this.children.clear();
    if (this.handle.destroyed) return;
    this.handle.destroy();
    this.onDestroy?.();
  }

  [Symbol.dispose](): void {
    this.destroy();
  }

  toString(): string {
    return `ProcessGroup(${this.backend} ${this.name}, rank ${this.rank} of ${this.size}${this.destroyed ? ", destroyed" : ""})`;
  }

  /** A destroyed group refuses every call with ERR_MOE_DISPOSED before its arguments are looked at. */
  private live(op: string): void {
    if (this.handle.destroyed)
      throw new MoEError(
        `${op}: expected a live process group but the group ${this.name} was destroyed`,
        "ERR_MOE_DISPOSED",
      );
  }

  private adopt(h: NativeProcessGroupHandle): ProcessGroup {
    const child = new ProcessGroup(h, () => this.children.delete(child), this.backend);
    this.children.add(child);
    return child;
  }
}

// Groups made over one store in this process, so that a second initProcessGroup
// over the same store and run reads none of the first one's keys.
const groupsByStore = new WeakMap<Store, number>();
const groupsByRun = new Map<string, number>();

function nextPrefix(counter: () => number): string {
  return `moe-ep/pg${counter()}`;
}

/**
 * Joins the run's process group. With no options, everything comes from the
 * environment that `moe-ep launch` (or torchrun-style launchers) set: RANK,
 * WORLD_SIZE, MASTER_ADDR, MASTER_PORT, MOE_EP_RUN_ID, MOE_EP_STORE.
 * Resolves once every rank has connected to every other.
 */
export async function initProcessGroup(options?: ProcessGroupOptions): Promise<ProcessGroup> {
  const o = optionsObject<ProcessGroupOptions>(options, "initProcessGroup options");
  const backend = checkOneOf("backend", orDefault(o.backend, "gloo"), BACKENDS);
  // The device's form is checked first (no NCCL needed), then whether NCCL is usable.
  const device = backend === "nccl" ? checkDevice(o.device === undefined ? defaultNcclDevice() : o.device) : undefined;
  const connectNccl = backend === "nccl" ? ncclBackend() : undefined;
  const timeoutMs = checkTimeout(o.timeoutMs);
  const storeMaxBytes =
    o.storeMaxBytes === undefined
      ? undefined
      : checkInteger("storeMaxBytes", o.storeMaxBytes, STORE_LIMITS.minMaxBytes);
  const hostname = o.hostname === undefined ? (process.env.MOE_EP_GLOO_HOSTNAME ?? "127.0.0.1") : o.hostname;
  if (typeof hostname !== "string" || !/^[A-Za-z0-9._:-]+$/.test(hostname)) {
    throw invalid("a host name or IP address", "hostname", hostname);
  }
  if (o.store !== undefined && typeof o.store !== "string" && !(o.store instanceof Store)) {
    throw invalid("a store url or a Store", "store", o.store);
  }
  const env =
    o.rank === undefined || o.worldSize === undefined || o.store === undefined ? rendezvousFromEnv() : undefined;
  const worldSize = checkInteger("worldSize", o.worldSize === undefined ? env!.worldSize : o.worldSize, 1);
  const rank = checkInteger("rank", o.rank === undefined ? env!.rank : o.rank, 0, worldSize - 1);

  let store: Store;
  let prefix: string;
  const owned = !(o.store instanceof Store);
  if (o.store instanceof Store) {
    store = o.store;
    prefix = nextPrefix(() => {
      const n = groupsByStore.get(store) ?? 0;
      groupsByStore.set(store, n + 1);
      return n;
    });
  } else {
    const url = o.store ?? env!.storeUrl;
    const runId = o.runId ?? (o.store === undefined ? env!.runId : undefined);
    const storeOptions = { rank, worldSize, runId, timeoutMs, maxBytes: storeMaxBytes };
    // From the environment alone: an error on listening names MOE_EP_STORE_PORT.
    store =
      o.store === undefined && env!.rank === rank && env!.worldSize === worldSize
        ? openRendezvousStore(env!, storeOptions)
        : openStore(url, storeOptions);
    const key = `${store.url}#${runId ?? process.env.MOE_EP_RUN_ID ?? ""}`;
    prefix = nextPrefix(() => {
      const n = groupsByRun.get(key) ?? 0;
      groupsByRun.set(key, n + 1);
      return n;
    });
  }
  try {
    const h = connectNccl
      ? await connectNccl(store.handle, { rank, worldSize, prefix, device: device!, timeoutMs })
      : await loadNative().createGlooGroup(store.handle, { rank, worldSize, prefix, hostname, timeoutMs });
    return new ProcessGroup(h, owned ? () => store.close() : undefined, backend);
  } catch (e) {
    if (owned) store.close();
    throw e;
  }
}
