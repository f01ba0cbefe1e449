/**
 * The rendezvous store: ranks publish small values under string keys and wait
 * for each other's (docs/architecture.md#process-groups). `file:///abs/dir` for
 * one machine, `tcp://host:port` for several (rank 0 serves from its own
 * process, bound to exactly that host's address). Every run has its own
 * namespace, its run id, so nothing an earlier run left behind is ever read.
 *
 * Bounds (docs/architecture.md#stores): a tcp server holds at most maxBytes
 * for its run and drops any client past it, or that sends anything but a
 * HELLO before its handshake; a file store's directory is removed once every
 * rank has closed its store.
 */
import "../polyfill";
import type { NativeStoreHandle } from "../addon";
import { MoEError, checkInteger, invalid, orDefault } from "../errors";
import { loadNative } from "../native";
import { intVar } from "./env";

export type { NativeStoreHandle };

export interface StoreOptions {
  /** This process's rank; rank 0 serves a tcp store. Default 0. */
  rank?: number;
  /** Number of ranks. Default 1. */
  worldSize?: number;
  /** The run's namespace; default MOE_EP_RUN_ID. Required by file:// stores. */
  runId?: string;
  /** Default timeout of every call, and of connecting, in ms. Default: the core's, 5 minutes (cpp/comm/store.h). */
  timeoutMs?: number;
  /**
   * tcp:// on rank 0: the most the server holds for the run, in bytes (keys,
   * values and their bookkeeping, values being received included); a client
   * past it is dropped. Default MOE_EP_STORE_MAX_BYTES, else 256 MiB.
   */
  maxBytes?: number;
}

/**
 * Largest key and value, in bytes (UTF-8 for strings), and the bounds on what
 * a tcp store's run may hold: the default, and the least one can set. A value
 * also counts against that bound, so below 16 MiB the bound is the largest value.
 */
export const STORE_LIMITS = {
  keyBytes: 4096,
  valueBytes: 16 * 1024 * 1024,
  maxBytes: 256 * 1024 * 1024,
  minMaxBytes: 64 * 1024,
} as const;

/** MOE_EP_STORE_MAX_BYTES when set, else the default. */
function defaultMaxBytes(): number {
  const max = Number.MAX_SAFE_INTEGER;
  return intVar(process.env, "MOE_EP_STORE_MAX_BYTES", STORE_LIMITS.minMaxBytes, max, false) ?? STORE_LIMITS.maxBytes;
}

function checkKey(key: unknown, name = "key"): string {
  if (typeof key !== "string" || key.length === 0) throw invalid("a non-empty string", name, key);
  return key;
}

function checkKeys(keys: unknown): string[] {
  if (!Array.isArray(keys)) throw invalid("an array of strings", "keys", keys);
  keys.forEach((k, i) => checkKey(k, `keys[${i}]`));
  return keys as string[];
}

function checkTimeout(timeoutMs: unknown): number | undefined {
  return timeoutMs === undefined ? undefined : checkInteger("timeoutMs", timeoutMs, 0);
}

const decoder = new TextDecoder();

/**
 * A store. Every call returns a Promise that settles from a native thread, so
 * a get that waits for another rank never blocks the event loop; calls that
 * time out reject with ERR_MOE_TIMEOUT naming the key, calls on a closed store
 * with ERR_MOE_DISPOSED, and a lost tcp server gives ERR_MOE_PEER_LOST.
 */
export class Store {
  /** The native handle, for process groups built on this store. */
  readonly handle: NativeStoreHandle;

  constructor(handle: NativeStoreHandle) {
    this.handle = handle;
  }

  /** The store's address; for a tcp server opened on port 0, the port it bound. */
  get url(): string {
    return this.handle.url;
  }

  get timeoutMs(): number {
    return this.handle.timeoutMs;
  }

  get closed(): boolean {
    return this.handle.closed;
  }

  /** Sets key to value (bytes, or a string stored as UTF-8). */
  async set(key: string, value: Uint8Array | string): Promise<void> {
    this.live("set");
    checkKey(key);
    if (typeof value !== "string" && !(value instanceof Uint8Array))
      throw invalid("a Uint8Array or a string", "value", value);
    return this.handle.set(key, value);
  }

  /** The value of key, waiting up to timeoutMs (default: the store's) for it to be set. */
  async get(key: string, timeoutMs?: number): Promise<Uint8Array> {
    this.live("get");
    return this.handle.get(checkKey(key), checkTimeout(timeoutMs));
  }

  /** get, decoded as UTF-8. */
  async getString(key: string, timeoutMs?: number): Promise<string> {
    return decoder.decode(await this.get(key, timeoutMs));
  }

  /** Waits until every key is set. */
  async wait(keys: string[], timeoutMs?: number): Promise<void> {
    this.live("wait");
    return this.handle.wait(checkKeys(keys), checkTimeout(timeoutMs));
  }

  /** Are all the keys set now? */
  async check(keys: string[]): Promise<boolean> {
    this.live("check");
    return this.handle.check(checkKeys(keys));
  }

  /**
   * Adds delta to the integer counter at key (0 when unset), atomically across
   * every rank, and returns the new value. The counter is kept as decimal
   * text, so get(key) reads e.g. "3".
   */
  async add(key: string, delta: number): Promise<number> {
    this.live("add");
    checkKey(key);
    if (typeof delta !== "number" || !Number.isSafeInteger(delta)) throw invalid("a safe integer", "delta", delta);
    return this.handle.add(key, delta);
  }

  private live(op: string): void {
    if (this.handle.closed)
      throw new MoEError(`store ${op}: expected an open store but ${this.url} was closed`, "ERR_MOE_DISPOSED");
  }

  /**
   * Ends the store: pending and later calls reject with ERR_MOE_DISPOSED; a
   * tcp server stops (its keys go with it); the last of a file store's run to
   * close removes the run's directory (see openStore).
   */
  close(): void {
    this.handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens a store: `file:///abs/dir` (keys are files in dir/<runId>/) or
 * `tcp://host:port` (rank 0 listens on exactly host's address, the others
 * connect, retrying until timeoutMs). Opening does not wait for other ranks.
 * A file store's dir/<runId>/ is removed when the last of the run's stores
 * closes, once every rank of worldSize has opened one; until then each rank's
 * keys stay readable by the others.
 */
export function openStore(url: string, options: StoreOptions = {}): Store {
  if (typeof url !== "string") throw invalid('a store url ("file:///abs/dir" or "tcp://host:port")', "url", url);
  if (typeof options !== "object" || options === null) throw invalid("an options object", "options", options);
  const worldSize = checkInteger("worldSize", orDefault(options.worldSize, 1), 1);
  const rank = checkInteger("rank", orDefault(options.rank, 0), 0, worldSize - 1);
  const runId = options.runId === undefined ? (process.env.MOE_EP_RUN_ID ?? "") : options.runId;
  if (typeof runId !== "string") throw invalid("a string", "runId", runId);
  const timeoutMs = checkTimeout(options.timeoutMs);
  const maxBytes = checkInteger("maxBytes", options.maxBytes ?? defaultMaxBytes(), STORE_LIMITS.minMaxBytes);
  return new Store(loadNative().openStore(url, { rank, worldSize, runId, timeoutMs, maxBytes }));
}
