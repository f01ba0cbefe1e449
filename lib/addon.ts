/**
 * Everything the native addon exports (binding/*.cc, registered through
 * binding/addon.cc), with the arguments the facade passes and what comes
 * back. lib/native.ts loads the addon as an Addon; the facade validates the
 * JavaScript types before calling, the core validates ranges and shapes and
 * throws MoEError itself.
 *
 * ADDON_KEYS lists the exports at run time (test/addon.test.ts compares it
 * with the loaded addon, lib/native.ts checks a loaded file against it); the
 * checks at the end of this file keep it and the Addon type the same set.
 */
import type { ActivationKind } from "./ops/activation";
import type { DropPolicy } from "./ops/permute";
import type { Distribution } from "./ops/random";
import type { ScoreFunction } from "./ops/route";
import type { ReduceOp } from "./comm/process-group";
import type { DType } from "./tensor";
import type { MoEError } from "./errors";

// ---- tensors --------------------------------------------------------------------

/** A core tensor (binding/tensor_handle.cc). */
export interface NativeTensorHandle {
  readonly dtype: DType;
  readonly shape: number[];
  /** "cpu", "cuda:N", or "none" once disposed. */
  readonly device: string;
  readonly disposed: boolean;
  /** The elements converted to `dtype`, in a new buffer. */
  read(dtype: DType): ArrayBuffer;
  dispose(): void;
}

export type H = NativeTensorHandle;

export interface NativeTensorClass {
  /** Uninitialised, zeroed (zero), or converted from data (whose elements are dataDtype). */
  new (
    dtype: DType,
    shape: number[],
    device: string,
    data?: ArrayBufferView | null,
    dataDtype?: DType,
    zero?: boolean,
  ): NativeTensorHandle;
}

export interface NativeMemoryStats {
  tensors: number;
  bytes: number;
  peakBytes: number;
  /** Freed large blocks kept for reuse (see emptyCache). */
  cachedBytes: number;
  /** Tensor storages ever allocated on the device: a mark for `madeSince`. */
  made: number;
}

/** The host allocator's running totals since the process started, and its page faults (getrusage). */
export interface NativeHostCounters {
  /** Bytes the host allocator holds from the system now: live blocks and cached ones. */
  heldBytes: number;
  /** What this environment has added to V8's external memory for them: heldBytes, in steps of 1 MiB or more. */
  reportedBytes: number;
  /** V8's count of external memory in this isolate (reportedBytes and what others report). */
  v8ExternalBytes: number;
  /** Bytes handed out for CPU tensors and the ops' scratch (from the cache or the system). */
  allocatedBytes: number;
  /** Of which newly taken from the system: pages that fault (and are zeroed by the kernel) on first touch. */
  systemBytes: number;
  /** Bytes the core filled with zeros (zeros(), zeroInPlace, padding rows, empty experts' dW). */
  zeroedBytes: number;
  minorFaults: number;
  majorFaults: number;
}

/** One CPU op's native time since the last reset (cpp/core/op_clock.h). */
export interface NativeOpTime {
  name: string;
  calls: number;
  ms: number;
}

/** A CUDA timing event (binding/device.cc): opaque, only passed back to eventElapsedMs. */
export interface NativeEvent {
  readonly __nativeEvent: never;
}

// ---- what the core found ----------------------------------------------------------

export interface NativeInfo {
  threads: number;
  blas: {
    loaded: boolean;
    library: string;
    core: string;
    coretype: string;
    coretypeSetByMoeEp: boolean;
    threads: number;
    reason: string;
  };
  cuda: {
    built: boolean;
    available: boolean;
    /** The kernels run on the CPU emulator (a build with MOE_EP_CUDA=EMULATE): for tests, not for speed. */
    emulated: boolean;
    deviceCount: number;
    runtimeVersion: number;
    driverVersion: number;
    archs: string;
    reason: string;
  };
  /** plugin: Gloo lives in moe_ep_gloo.so, opened with the first CPU process group (the prebuilt addon). */
  gloo: { built: boolean; plugin?: boolean };
}

export interface NcclStatus {
  /** Every check passed: NCCL communicators can be made in this process. */
  available: boolean;
  /** The library itself passed (loaded, new enough, complete), whether or not there is a device. */
  loaded: boolean;
  /** "2.18.1"; empty when the version could not be read. */
  version: string;
  /** The code ncclGetVersion returned (e.g. 21801), 0 when unknown. */
  versionCode: number;
  /** The file opened, or the name that was tried. */
  library: string;
  /**
   * Why NCCL is unavailable; empty when available. Starts with one of
   * "library not found", "library could not be loaded", "missing symbol",
   * "version unknown", "version too old", "no device".
   */
  reason: string;
  /** The library is NCCL >= 2.10.3, which has bfloat16. */
  supportsBf16: boolean;
  /** The library has ncclCommInitRankConfig (NCCL >= 2.14): calls never block, so hangs can be aborted. */
  nonBlocking: boolean;
}

// ---- ops ------------------------------------------------------------------------------

/** The choice options of route; numGroups and topkGroups absent (or 0) mean no group limit. */
export interface NativeChoiceOptions {
  topK: number;
  numGroups?: number;
  topkGroups?: number;
}

export interface NativeRouteOptions extends NativeChoiceOptions {
  scoreFunction: ScoreFunction;
  renormalize: boolean;
  selectionNoise?: H;
  noiseFrom?: number;
}

export interface NativeRouteResult {
  indices: H;
  weights: H;
  scores: H;
  tokensPerExpert: H;
  auxLoss: H;
  zLoss: H;
}

export interface NativeRouteBackwardOptions {
  scoreFunction: ScoreFunction;
  renormalize: boolean;
  auxLossGrad: number;
  zLossGrad: number;
}

export interface NativePermuteOptions {
  numExperts: number;
  /** Absent: dropless. */
  capacityFactor?: number;
  /** C is at least this (default 0). */
  minCapacity?: number;
  dropPolicy: DropPolicy;
  padToCapacity: boolean;
}

export interface NativePermuted {
  rows: H;
  rowsPerExpert: H;
  pairToRow: H;
  rowToPair: H;
  dropped: number;
  capacity: number;
}

export interface NativeFillRandomOptions {
  seed: number;
  key: number;
  distribution: Distribution;
  /** normal: mean; uniform: low. */
  a: number;
  /** normal: std; uniform: high. */
  b: number;
  sliceSize: number;
  firstSlice: number;
}

export interface NativeJitterOptions {
  eps: number;
  seed: number;
  key: number;
  slice: number;
}

export interface NativeAdamWOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
}

// ---- stores and process groups ----------------------------------------------------------

/** Absent timeouts are the core's default (cpp/comm/store.h, kDefaultTimeout). */
export interface NativeStoreOptions {
  rank: number;
  worldSize: number;
  runId: string;
  timeoutMs?: number;
  maxBytes?: number;
}

/** A rendezvous store (binding/store.cc); its calls settle from the core's blocking pool. */
export interface NativeStoreHandle {
  readonly url: string;
  readonly timeoutMs: number;
  readonly closed: boolean;
  set(key: string, value: Uint8Array | string): Promise<void>;
  get(key: string, timeoutMs?: number): Promise<Uint8Array>;
  wait(keys: string[], timeoutMs?: number): Promise<void>;
  check(keys: string[]): Promise<boolean>;
  add(key: string, delta: number): Promise<number>;
  close(): void;
}

export interface NativeGlooGroupOptions {
  rank: number;
  worldSize: number;
  prefix: string;
  hostname: string;
  timeoutMs?: number;
}

export interface NativeNcclGroupOptions {
  rank: number;
  worldSize: number;
  prefix: string;
  /** "cuda:N" */
  device: string;
  timeoutMs?: number;
}

/** A process group of either backend (binding/process_group.cc). */
export interface NativeProcessGroupHandle {
  readonly rank: number;
  readonly size: number;
  readonly ranks: number[];
  readonly name: string;
  readonly timeoutMs: number;
  /** The address Gloo binds ("" for NCCL, which picks its own interfaces). */
  readonly hostname: string;
  /** The device whose tensors the group moves: "cpu" for Gloo, "cuda:N" for NCCL. */
  readonly device: string;
  readonly destroyed: boolean;
  readonly fault: { code: string; message: string } | null;
  /** Whether allToAllV moves its rows through shared memory (Gloo, ranks of one machine). */
  readonly sharedMemory: boolean;
  allToAllV(
    x: H,
    sendCounts: number[],
    recvCounts?: number[],
    chunks?: { sendChunks?: number[]; recvChunks?: number[] },
  ): Promise<{ output: H; recvCounts: number[] }>;
  allToAll(x: H): Promise<H>;
  allGatherV(x: H): Promise<{ output: H; counts: number[] }>;
  reduceScatterV(x: H, counts: number[]): Promise<H>;
  allReduce(t: H, op: ReduceOp): Promise<void>;
  broadcast(t: H, root: number): Promise<void>;
  barrier(): Promise<void>;
  /** Absent timeoutMs: this group's. */
  newGroup(ranks: number[], options: { timeoutMs?: number }): Promise<NativeProcessGroupHandle>;
  destroy(): void;
}

// ---- measurements (binding/bench.cc) ------------------------------------------------------

export interface FmaPeakResult {
  /** GFLOP/s of all threads together (an FMA counts 2 FLOPs). */
  gflops: number;
  /** The instruction set the loop used: "avx512f", "avx2+fma" or "scalar". */
  isa: string;
  threads: number;
  seconds: number;
}

export interface MemcpyBandwidthResult {
  /** GB/s (1e9 bytes), counting the bytes read plus the bytes written: 2 × bytes per copy. */
  gbps: number;
  counted: "read+write";
  /** The size of one copy: the source and the destination each. */
  bytes: number;
  threads: number;
  repetitions: number;
  seconds: number;
}

export interface SgemmRateResult {
  /** Median GFLOP/s (2·m·n·k per GEMM) over the timed iterations. */
  gflops: number;
  bestGflops: number;
  iterations: number;
  /** The OpenBLAS core in use ("" for the built-in reference GEMM). */
  core: string;
}

/** Device time of one launch, from batches of reps launches between events. */
export interface NativeKernelTime {
  medianUs: number;
  bestUs: number;
  reps: number;
  batches: number;
}

export interface NativeCopyRate {
  /** GB/s, read + write bytes counted. */
  gbps: number;
  medianUs: number;
  bytes: number;
  counted: "read+write";
}

// ---- the addon ---------------------------------------------------------------------------

export interface Addon {
  /** Hands over MoEError, the class every native error is made with. */
  setErrorClass(cls: typeof MoEError): void;

  // binding/tensor_handle.cc, view.cc, device.cc
  NativeTensor: NativeTensorClass;
  reshape(t: H, shape: number[]): H;
  toDevice(t: H, device: string): Promise<H>;
  clone(t: H): Promise<H>;
  recordEvent(device: string): Promise<NativeEvent>;
  eventElapsedMs(start: NativeEvent, end: NativeEvent): Promise<number>;

  // binding/info.cc
  info(): NativeInfo;
  memoryStats(device: string, madeSince?: number): NativeMemoryStats;
  hostCounters(): NativeHostCounters;
  /** The CPU ops' native time since the last reset; reset: start the counters again afterwards. */
  opTimes(reset?: boolean): NativeOpTime[];
  emptyCache(): void;
  synchronize(): Promise<void>;

  // binding/gate.cc, route.cc
  gate(x: H, wg: H): Promise<H>;
  gateBackward(x: H, wg: H, dlogits: H): Promise<{ dx: H; dwg: H }>;
  /** Throws the ERR_MOE_VALUE route would for these options, naming op. */
  checkRouteOptions(op: string, options: NativeChoiceOptions & { numExperts: number }): void;
  route(logits: H, expertBias: H | undefined, options: NativeRouteOptions): Promise<NativeRouteResult>;
  routeBackward(
    logits: H,
    indices: H,
    tokensPerExpert: H,
    dWeights: H | undefined,
    options: NativeRouteBackwardOptions,
  ): Promise<H>;

  // binding/permute.cc
  permute(x: H, indices: H, weights: H, options: NativePermuteOptions): Promise<NativePermuted>;
  permuteBackward(dRows: H, pairToRow: H): Promise<H>;
  unpermute(rows: H, pairToRow: H, weights: H): Promise<H>;
  unpermuteBackward(dy: H, rows: H, pairToRow: H, weights: H): Promise<{ dRows: H; dWeights: H }>;

  // binding/residual.cc
  renormalizeKept(weights: H, pairToRow: H): Promise<H>;
  renormalizeKeptBackward(weights: H, pairToRow: H, dKept: H): Promise<H>;
  residualMix(moe: H, mlp: H, logits: H, bias: H): Promise<H>;
  residualMixBackward(dy: H, moe: H, mlp: H, logits: H, bias: H): Promise<{ dMoe: H; dMlp: H; dLogits: H; dBias: H }>;

  // binding/grouped_gemm.cc, activation.cc
  groupedGemm(x: H, w: H, rowsPerExpert: H, bias?: H): Promise<H>;
  groupedGemmBackward(
    dy: H,
    x: H,
    w: H,
    rowsPerExpert: H,
    options: { needDx: boolean; needDw: boolean; needDbias: boolean; dwInto?: H; accumulate?: boolean },
  ): Promise<{ dx?: H; dw?: H; dbias?: H }>;
  /** Whether the CUDA grouped GEMM takes these operands, and if not why (cuda/grouped_gemm_plan.h's rule). */
  groupedGemmCudaSupport(options: { dtype: DType; k: number; n: number; needDbias: boolean }): {
    supported: boolean;
    reason: string;
  };
  activation(x: H, kind: ActivationKind): Promise<H>;
  activationBackward(dh: H, x: H, kind: ActivationKind, reuseDh?: boolean): Promise<H>;

  // binding/elementwise.cc, chunks.cc, random.cc, adamw.cc
  add(a: H, b: H): Promise<H>;
  axpby(y: H, x: H | undefined, options: { alpha: number; beta: number }): Promise<void>;
  sumSquares(tensors: H[]): Promise<H>;
  chunkTranspose(x: H, counts: H): Promise<H>;
  expertBiasUpdate(bias: H, load: H, options: { rate: number }): Promise<void>;
  fillRandom(t: H, options: NativeFillRandomOptions): Promise<void>;
  jitter(x: H, options: NativeJitterOptions): Promise<H>;
  adamw(param: H, grad: H, expAvg: H, expAvgSq: H, options: NativeAdamWOptions): Promise<void>;

  // binding/store.cc, process_group.cc, nccl.cc
  openStore(url: string, options: NativeStoreOptions): NativeStoreHandle;
  createGlooGroup(store: NativeStoreHandle, options: NativeGlooGroupOptions): Promise<NativeProcessGroupHandle>;
  createNcclGroup(store: NativeStoreHandle, options: NativeNcclGroupOptions): Promise<NativeProcessGroupHandle>;
  ncclStatus(): NcclStatus;
  /** The local IPv4 address of the route to host:port (cpp/comm/net.h). */
  addressToward(host: string, port: number): string;

  // binding/bench.cc
  fmaPeak(options: { threads: number; seconds: number }): Promise<FmaPeakResult>;
  memcpyBandwidth(options: { bytes: number; threads: number }): Promise<MemcpyBandwidthResult>;
  sgemmRate(options: { m: number; n: number; k: number; iterations: number }): Promise<SgemmRateResult>;
  cudaRouteKernel(options: {
    device: string;
    tokens: number;
    experts: number;
    topK: number;
    reps: number;
    batches: number;
  }): Promise<NativeKernelTime>;
  cudaCopyRate(options: { device: string; bytes: number; reps: number; batches: number }): Promise<NativeCopyRate>;
}

/** Every export of the addon. */
export const ADDON_KEYS = [
  "setErrorClass",
  "NativeTensor",
  "reshape",
  "toDevice",
  "clone",
  "recordEvent",
  "eventElapsedMs",
  "info",
  "memoryStats",
  "hostCounters",
  "opTimes",
  "emptyCache",
  "synchronize",
  "gate",
  "gateBackward",
  "checkRouteOptions",
  "route",
  "routeBackward",
  "permute",
  "permuteBackward",
  "unpermute",
  "unpermuteBackward",
  "residualMix",
  "residualMixBackward",
  "renormalizeKept",
  "renormalizeKeptBackward",
  "groupedGemm",
  "groupedGemmBackward",
  "groupedGemmCudaSupport",
  "activation",
  "activationBackward",
  "add",
  "axpby",
  "sumSquares",
  "chunkTranspose",
  "expertBiasUpdate",
  "fillRandom",
  "jitter",
  "adamw",
  "openStore",
  "createGlooGroup",
  "createNcclGroup",
  "ncclStatus",
  "addressToward",
  "fmaPeak",
  "memcpyBandwidth",
  "sgemmRate",
  "cudaRouteKernel",
  "cudaCopyRate",
] as const satisfies readonly (keyof Addon)[];

/**
 * The exports only some builds have (declared optional in Addon). Every build
 * registers all of them today; one that a build flag adds goes here too.
 */
export const OPTIONAL_ADDON_KEYS = [] as const satisfies readonly OptionalKeys<Addon>[];

type OptionalKeys<T> = { [K in keyof T]-?: object extends Pick<T, K> ? K : never }[keyof T];

// Compile-time: every key of Addon is in ADDON_KEYS, and every optional one in OPTIONAL_ADDON_KEYS.
type Unlisted = Exclude<keyof Addon, (typeof ADDON_KEYS)[number]>;
type UnlistedOptional = Exclude<OptionalKeys<Addon>, (typeof OPTIONAL_ADDON_KEYS)[number]>;
const everyKeyListed: [Unlisted, UnlistedOptional] extends [never, never] ? true : [Unlisted, UnlistedOptional] = true;
void everyKeyListed;

/** The exports every loaded addon must have. */
export const REQUIRED_ADDON_KEYS: readonly (keyof Addon)[] = ADDON_KEYS.filter(
  (k) => !(OPTIONAL_ADDON_KEYS as readonly string[]).includes(k),
);
