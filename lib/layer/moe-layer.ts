/**
 * MoELayer: one Mixture-of-Experts layer with expert parallelism, composed of
 * the native ops (docs/math.md#layer-forward, docs/math.md#layer-backward):
 *
 *   forward   [jitter] → gate → route → permute → counts exchange → dispatch
 *             (all-to-all-v) → grouped expert FFN → combine (all-to-all-v)
 *             → unpermute, plus the shared experts
 *   backward  the same path reversed; parameter gradients accumulate, the
 *             router's and shared experts' summed over the world, the experts'
 *             over the expert-data-parallel group.
 *
 * Each rank holds numExperts / epSize experts (global experts
 * epRank·L … epRank·L + L − 1); the router is replicated. Work that needs
 * nothing from the all-to-all runs on the CPU stream while the rows travel:
 * the shared experts during the dispatch, the router's and shared experts'
 * backward during the gradients' exchange.
 */
import { performance } from "perf_hooks";
import { MoEError, invalid } from "../errors";
import { isGated } from "../ops/activation";
import { addInPlace, add, zeroInPlace } from "../ops/elementwise";
import { expertBiasUpdate } from "../ops/expert-bias";
import { gate, gateBackward } from "../ops/gate";
import { permute, permuteBackward, unpermute, unpermuteBackward } from "../ops/permute";
import { fillRandom, hashName, jitter } from "../ops/random";
import { route, routeBackward } from "../ops/route";
import { reshape } from "../ops/view";
import { Tensor } from "../tensor";
import { configOf, type MoELayerOptions, type ResolvedMoEConfig } from "./config";
import { combine, dispatch, planDispatch, type DispatchPlan } from "./dispatcher";
import { ffnBackward, ffnForward, type FFNSaved, type FFNWeights } from "./experts";
import { layoutOf, resolveGroups, worldOf, type CollectiveGroup, type LayerGroups } from "./group";
import { clipGradNorm } from "../optim/clip";
import { loadCheckpoint, saveCheckpoint, type CheckpointOptions } from "../checkpoint/checkpoint";

/**
 * A trainable parameter, its gradient (float32, accumulated by backward) and how it is sharded.
 * While a gradient is zero (after zeroGrad), backward may hand the entry a new gradient tensor
 * instead of adding into the old one (PyTorch's set-to-none): read entry.grad when using it.
 */
export interface ParameterEntry {
  /** Megatron-style name: router.weight, experts.w1, shared_experts.w2, ... (prefixed by the layer's name). */
  readonly name: string;
  readonly param: Tensor;
  readonly grad: Tensor;
  /** True for expert weights: each EP rank holds different ones (global norms sum them over `normGroup`). */
  readonly expert: boolean;
  /** For expert weights: the EP group over which their squared norms add up. */
  readonly normGroup?: CollectiveGroup;
  /** Whether AdamW decays it (weights yes, biases no, as Megatron groups them). */
  readonly weightDecay: boolean;
}

/** A tensor of the layer's state that is not trained by the optimizer (the expert bias). */
export interface BufferEntry {
  readonly name: string;
  readonly tensor: Tensor;
}

export type Stage = "route" | "permute" | "dispatch" | "experts" | "combine" | "unpermute" | "shared" | "reduce";
export const STAGES: readonly Stage[] = [
  "route",
  "permute",
  "dispatch",
  "experts",
  "combine",
  "unpermute",
  "shared",
  "reduce",
];
export type StageTimes = Record<Stage, number>;

export interface MoEStats {
  /** (token, choice) pairs that chose each expert, summed over every rank of the world. */
  tokensPerExpert: number[];
  /** The same on this rank only. */
  localTokensPerExpert: number[];
  /** Choices dropped by capacity, over the world. */
  dropped: number;
  localDropped: number;
  /** max / mean of tokensPerExpert (1 when perfectly balanced). */
  imbalance: number;
  /** Capacity C per expert on this rank, or -1 when dropless. */
  capacity: number;
  /** Rows this rank's experts processed (from every rank, padding included). */
  rowsReceived: number;
  /** The load-balancing loss and z-loss before their coefficients (aux is 1 when balanced). */
  auxLossUnscaled: number;
  zLossUnscaled: number;
}

export interface MoEForwardResult {
  /** [tokens, dModel] in x's dtype. */
  output: Tensor;
  /** auxLossCoef · aux (add it to the training loss; backward adds its gradient). */
  auxLoss: number;
  /** zLossCoef · z. */
  zLoss: number;
  stats: MoEStats;
}

export interface MoEForwardOptions {
  /** Overrides the layer's mode for this call (jitter and saving for backward only in training). */
  training?: boolean;
}

export interface MoEBackwardOptions {
  /** Which forward to differentiate (default: the latest one not yet differentiated). */
  result?: MoEForwardResult;
  /** Multiplies the aux and z losses' gradients (e.g. 1 / micro-batches); default 1. */
  lossScale?: number;
}

class Parameter implements ParameterEntry {
  normGroup?: CollectiveGroup;
  /** Whether the gradient is known to be zero (backward may then replace it rather than add). */
  zero = true;
  constructor(
    readonly name: string,
    readonly param: Tensor,
    private current: Tensor,
    readonly expert: boolean,
    readonly weightDecay: boolean,
  ) {}
  get grad(): Tensor {
    return this.current;
  }
  replaceGrad(g: Tensor): void {
    this.current.dispose();
    this.current = g;
    this.zero = false;
  }
}

interface Param {
  entry: Parameter;
  /** The grouped-GEMM view [1, ...] of a shared expert weight. */
  view?: Tensor;
  reduceOver: "world" | "expertDataParallel";
}

/** What one training forward keeps for its backward. */
interface Context {
  x: Tensor;
  gateInput: Tensor;
  jitterSlice: number;
  logits: Tensor;
  indices: Tensor;
  weights: Tensor;
  tokensPerExpert: Tensor;
  pairToRow: Tensor;
  plan: DispatchPlan;
  rowsPerExpert: Tensor;
  experts: FFNSaved;
  expertOut: Tensor;
  rowsBack: Tensor;
  shared?: FFNSaved;
  own: Set<Tensor>;
}

/**
 * Refuses, at construction, a configuration the device cannot run (ERR_MOE_UNSUPPORTED naming it): on
 * CUDA the experts' grouped GEMM takes bfloat16 or float16 operands with K and N multiples of 8 and no
 * bias terms, and collectives go through NCCL; a CPU layer takes no NCCL group. Never a silent fallback.
 */
function checkDeviceSupport(c: ResolvedMoEConfig, group: unknown): void {
  const backendOf = (g: unknown): string | undefined => {
    if (g === null || typeof g !== "object") return undefined;
    const b = (g as { backend?: unknown }).backend;
    if (typeof b === "string") return b;
    const w = (g as { world?: unknown }).world;
    return w !== null && typeof w === "object" && typeof (w as { backend?: unknown }).backend === "string"
      ? (w as { backend: string }).backend
      : undefined;
  };
  const backend = backendOf(group);
  const unsupported = (what: string) => new MoEError(`MoELayer on ${c.device}: ${what}`, "ERR_MOE_UNSUPPORTED");
  if (!c.device.startsWith("cuda")) {
    if (backend === "nccl")
      throw unsupported('expected a "gloo" process group for CPU tensors but received an "nccl" group');
    return;
  }
  if (c.dtype !== "bfloat16" && c.dtype !== "float16") {
    throw unsupported(
      `expected dtype "bfloat16" or "float16" (the CUDA grouped GEMM takes 16-bit operands) but received "${c.dtype}"`,
    );
  }
  if (c.bias)
    throw unsupported(
      "expected bias: false (the bias gradient of the CUDA grouped GEMM is not built) but received bias: true",
    );
  const widths: Array<[string, number]> = [
    ["dModel", c.dModel],
    ["dFF", c.dFF],
  ];
  if (c.sharedExpertFF > 0) widths.push(["sharedExpertFF", c.sharedExpertFF]);
  for (const [name, v] of widths) {
    if (v % 8 !== 0)
      throw unsupported(`expected ${name} to be a multiple of 8 (the CUDA grouped GEMM's K and N) but received ${v}`);
  }
  if (backend !== undefined && backend !== "nccl") {
    throw unsupported(
      `expected an "nccl" process group (or none, for one process) for CUDA tensors but received a "${backend}" group`,
    );
  }
}

/**
 * Promise.all that waits for every promise to settle before rejecting, so that no
 * branch still runs (and makes tensors) when the caller cleans up.
 */
async function settled<T extends readonly unknown[]>(promises: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

const zeroTimes = (): StageTimes => Object.fromEntries(STAGES.map((s) => [s, 0])) as StageTimes;

function prefixed(prefix: string, name: string): string {
  return prefix ? `${prefix}.${name}` : name;
}

export class MoELayer {
  /** The validated configuration, defaults filled in. */
  readonly config: ResolvedMoEConfig;
  /** Position in the layout: world rank and size, EP rank, experts held here. */
  readonly worldRank: number;
  readonly worldSize: number;
  readonly epRank: number;
  readonly epSize: number;
  readonly numLocalExperts: number;
  /** The global index of this rank's first expert. */
  readonly firstExpert: number;
  /** Resolves once the groups are split and the parameters initialised; every method awaits it. */
  readonly ready: Promise<void>;
  /** Training mode: jitter on, forwards saved for backward, loads counted for the expert bias. */
  training = true;
  /** When true, forward and backward add the wall time of each stage to `timings` (ms). */
  profile = false;
  readonly timings: { forward: StageTimes; backward: StageTimes; calls: number } = {
    forward: zeroTimes(),
    backward: zeroTimes(),
    calls: 0,
  };

  private groups?: LayerGroups;
  private readonly params = new Map<string, Param>();
  private readonly expertBias?: Tensor;
  private readonly contexts: Context[] = [];
  private readonly contextOf = new WeakMap<MoEForwardResult, Context>();
  private jitterCalls = 0;
  private loadSinceUpdate: Float64Array;
  private disposed = false;

  /**
   * config: the native options, or a Megatron-Core / DeepSpeed shaped config object (see
   * fromForeignConfig). group: the world ProcessGroup (split into EP and expert-data-parallel
   * groups for epSize), or { world, ep, expertDataParallel }, or nothing for one process.
   */
  constructor(config: MoELayerOptions | Record<string, unknown>, group?: unknown) {
    const c = configOf(config);
    this.config = c;
    checkDeviceSupport(c, group);
    const world = worldOf(group);
    const layout = layoutOf(world.rank, world.size, c.epSize);
    this.worldRank = world.rank;
    this.worldSize = world.size;
    this.epRank = layout.epRank;
    this.epSize = c.epSize;
    this.numLocalExperts = c.numExperts / c.epSize;
    this.firstExpert = this.epRank * this.numLocalExperts;
    this.loadSinceUpdate = new Float64Array(c.numExperts);

    const { dModel: D, dFF: F, numExperts: E, sharedExpertFF: S } = c;
    const L = this.numLocalExperts;
    const F1 = isGated(c.activation) ? 2 * F : F;
    const S1 = isGated(c.activation) ? 2 * S : S;
    const inits: Array<Promise<void>> = [];
    const opts = { device: c.device };
    const add = (
      name: string,
      shape: number[],
      dtype: "float32" | ParamDtype,
      how: { std?: number; slices?: number },
      expert: boolean,
      weightDecay: boolean,
    ) => {
      const full = prefixed(c.name, name);
      const param = Tensor.zeros(shape, { dtype, ...opts });
      const grad = Tensor.zeros(shape, opts);
      if (how.std !== undefined) {
        const numel = shape.reduce((a, b) => a * b, 1);
        inits.push(
          fillRandom(param, {
            seed: c.seed,
            key: hashName(full),
            std: how.std,
            sliceSize: how.slices ? numel / how.slices : 0,
            firstSlice: how.slices ? this.firstExpert : 0,
          }),
        );
      }
      const entry = new Parameter(full, param, grad, expert, weightDecay);
      this.params.set(name, { entry, reduceOver: expert ? "expertDataParallel" : "world" });
    };
    type ParamDtype = ResolvedMoEConfig["dtype"];
    add("router.weight", [D, E], "float32", { std: c.initStd }, false, true);
    add("experts.w1", [L, D, F1], c.dtype, { std: c.initStd, slices: L }, true, true);
    add("experts.w2", [L, F, D], c.dtype, { std: c.outputInitStd, slices: L }, true, true);
    if (c.bias) {
      add("experts.b1", [L, F1], c.dtype, {}, true, false);
      add("experts.b2", [L, D], c.dtype, {}, true, false);
    }
    if (S > 0) {
      add("shared_experts.w1", [D, S1], c.dtype, { std: c.initStd }, false, true);
      add("shared_experts.w2", [S, D], c.dtype, { std: c.outputInitStd }, false, true);
      if (c.bias) {
        add("shared_experts.b1", [S1], c.dtype, {}, false, false);
        add("shared_experts.b2", [D], c.dtype, {}, false, false);
      }
      // The shared FFN runs as a grouped GEMM of one group: [1, ...] views of its weights.
      for (const [name, p] of this.params) {
        if (!name.startsWith("shared_experts.")) continue;
        p.view = reshape(p.entry.param, [1, ...p.entry.param.shape]);
      }
    }
    if (c.expertBias) this.expertBias = Tensor.zeros([E], opts);
    this.ready = this.setUp(group, inits);
    // Surfaced by every method that awaits `ready`; not an unhandled rejection meanwhile.
    this.ready.catch(() => undefined);
  }

  /** Builds a layer and waits until it is ready. */
  static async create(config: MoELayerOptions | Record<string, unknown>, group?: unknown): Promise<MoELayer> {
    const layer = new MoELayer(config, group);
    await layer.ready;
    return layer;
  }

  private async setUp(group: unknown, inits: Array<Promise<void>>): Promise<void> {
    // The split starts now, in construction order (see resolveGroups), beside the initialisation.
    const [, groups] = await Promise.all([Promise.all(inits), resolveGroups(group, this.config.epSize)]);
    this.groups = groups;
    for (const p of this.params.values()) {
      if (p.entry.expert) p.entry.normGroup = this.groups.ep;
    }
  }

  /** The EP group, once ready. */
  get epGroup(): CollectiveGroup | undefined {
    return this.groups?.ep;
  }

  /** The world group, once ready. */
  get worldGroup(): CollectiveGroup | undefined {
    return this.groups?.world;
  }

  /** The expert-data-parallel group (ranks holding the same experts), once ready. */
  get expertDataParallelGroup(): CollectiveGroup | undefined {
    return this.groups?.expertDataParallel;
  }

  /** Clips this layer's gradients by their global norm across ranks; resolves with the norm before clipping. */
  async clipGradNorm(maxNorm: number): Promise<number> {
    this.check();
    await this.ready;
    return clipGradNorm(this.parameters(), maxNorm);
  }

  /** Saves the layer (and an optimizer's moments) as safetensors shards plus an index (see saveCheckpoint). */
  async save(dir: string, options: CheckpointOptions = {}): Promise<void> {
    this.check();
    return saveCheckpoint(dir, [this], options);
  }

  /** Loads a checkpoint written with any epSize (see loadCheckpoint). */
  async load(dir: string, options: CheckpointOptions = {}): Promise<void> {
    this.check();
    return loadCheckpoint(dir, [this], options);
  }

  train(): this {
    this.training = true;
    return this;
  }

  eval(): this {
    this.training = false;
    return this;
  }

  /** Trainable parameters with their gradients, by name (router, experts, shared experts). */
  parameters(): ParameterEntry[] {
    this.check();
    return [...this.params.values()].map((p) => p.entry);
  }

  /** State that is not trained by the optimizer: router.expert_bias when aux-loss-free balancing is on. */
  buffers(): BufferEntry[] {
    this.check();
    return this.expertBias ? [{ name: prefixed(this.config.name, "router.expert_bias"), tensor: this.expertBias }] : [];
  }

  private p(name: string): Tensor {
    return this.params.get(name)!.entry.param;
  }

  private expertWeights(): FFNWeights {
    const b = this.config.bias;
    return {
      w1: this.p("experts.w1"),
      w2: this.p("experts.w2"),
      b1: b ? this.p("experts.b1") : undefined,
      b2: b ? this.p("experts.b2") : undefined,
    };
  }

  private sharedWeights(): FFNWeights {
    const v = (n: string) => this.params.get(n)!.view!;
    const b = this.config.bias;
    return {
      w1: v("shared_experts.w1"),
      w2: v("shared_experts.w2"),
      b1: b ? v("shared_experts.b1") : undefined,
      b2: b ? v("shared_experts.b2") : undefined,
    };
  }

  /** Sets every gradient to zero. */
  async zeroGrad(): Promise<void> {
    this.check();
    await this.ready;
    // Every zeroing is queued (in order, on the stream) before anything else runs, so a
    // zeroGrad() that is not awaited still comes before the next backward's accumulation.
    await Promise.all(
      [...this.params.values()].map((p) => {
        p.entry.zero = true;
        return zeroInPlace(p.entry.grad);
      }),
    );
  }

  private check(): void {
    if (this.disposed) throw new MoEError("Expected a live MoELayer but it was disposed", "ERR_MOE_DISPOSED");
  }

  /**
   * Stage timing: tick(stage) charges the time since the last tick to a stage; timed(stage, fn)
   * charges fn's own duration (for work that overlaps other stages), and restarts the ticks.
   */
  private clock(into: StageTimes) {
    let t = performance.now();
    const profile = this.profile;
    return {
      tick(stage: Stage): void {
        if (!profile) return;
        const now = performance.now();
        into[stage] += now - t;
        t = now;
      },
      async timed<R>(stage: Stage, fn: () => Promise<R>): Promise<R> {
        const start = performance.now();
        try {
          return await fn();
        } finally {
          const end = performance.now();
          if (profile) into[stage] += end - start;
          t = Math.max(t, end);
        }
      },
    };
  }

  /**
   * x [tokens, dModel] (any float dtype; zero tokens allowed). Returns the output, the scaled aux and z
   * losses and the routing statistics. In training mode the intermediates are kept for backward().
   */
  async forward(input: Tensor, options: MoEForwardOptions = {}): Promise<MoEForwardResult> {
    this.check();
    await this.ready;
    if (!(input instanceof Tensor)) throw invalid("a Tensor", "x", input);
    if (input.disposed) throw new MoEError("Expected x to be a live tensor but it was disposed", "ERR_MOE_DISPOSED");
    let x = input;
    const c = this.config;
    if (x.shape.length !== 2 || x.shape[1] !== c.dModel) {
      throw new MoEError(
        `MoELayer.forward: expected x of shape [tokens, dModel = ${c.dModel}] but received [${x.shape.join(", ")}]`,
        "ERR_MOE_SHAPE",
      );
    }
    if (options === null || typeof options !== "object") throw invalid("an options object", "forward options", options);
    const training = options.training === undefined ? this.training : options.training;
    if (typeof training !== "boolean") throw invalid("a boolean", "training", training);
    const groups = this.groups!;
    const T = x.shape[0];
    const own = new Set<Tensor>();
    const keep = <T extends Tensor>(t: T): T => {
      own.add(t);
      return t;
    };
    const clock = this.clock(this.timings.forward);
    const tick = (stage: Stage) => clock.tick(stage);
    let ctx: Context | undefined;
    let sharedRun: Promise<unknown> | undefined;
    try {
      // A handle of our own on x's storage: the caller may dispose theirs before backward.
      if (training) x = keep(reshape(x, x.shape));
      // Router (docs/math.md#jitter): training-only jitter on the gate's input.
      const jitterSlice = this.jitterCalls;
      let gateInput = x;
      if (training && c.jitter > 0) {
        gateInput = keep(
          await jitter(x, { eps: c.jitter, seed: c.seed, key: this.jitterKey(), slice: jitterSlice % 2 ** 32 }),
        );
        this.jitterCalls++;
      }
      const logits = keep(await gate(gateInput, this.p("router.weight")));
      const r = await route(logits, {
        topK: c.topK,
        scoreFunction: c.scoreFunction,
        renormalize: c.renormalize,
        expertBias: this.expertBias,
        numGroups: c.numGroups,
        topkGroups: c.topkGroups,
      });
      for (const t of [r.indices, r.weights, r.scores, r.tokensPerExpert, r.auxLoss, r.zLoss]) keep(t);
      tick("route");

      const p = await permute(x, r.indices, r.weights, {
        numExperts: c.numExperts,
        capacityFactor: c.capacityFactor,
        dropPolicy: c.dropPolicy,
        padToCapacity: c.padToCapacity,
      });
      for (const t of [p.rows, p.rowsPerExpert, p.pairToRow, p.rowToPair]) keep(t);
      tick("permute");

      // The shared experts need only x: they run on the CPU stream while the rows travel.
      let sharedOut: { y: Tensor; saved: FFNSaved } | undefined;
      if (c.sharedExpertFF > 0) {
        const counts = keep(Tensor.from(Int32Array.of(T), [1], { dtype: "int32", device: c.device }));
        sharedRun = clock.timed("shared", async () => {
          const s = await ffnForward(x, counts, this.sharedWeights(), c.activation);
          for (const t of [s.y, s.saved.pre, s.saved.h]) keep(t);
          sharedOut = s;
        });
      }

      // The host synchronisation of the pass: counts size the all-to-all.
      const rowsPerExpert = p.rowsPerExpert.toInt32();
      const [plan, expertRows] = await clock.timed("dispatch", async () => {
        const pl = await planDispatch(rowsPerExpert, p.rowsPerExpert, groups.ep, this.numLocalExperts);
        for (const t of [pl.fromSource, pl.toSource, pl.localCounts]) if (t) keep(t);
        return [pl, keep(await dispatch(p.rows, pl, groups.ep))] as const;
      });

      const ex = await clock.timed("experts", () =>
        ffnForward(expertRows, plan.localCounts, this.expertWeights(), c.activation),
      );
      keep(ex.saved.pre);
      keep(ex.saved.h);
      const expertOut = keep(ex.y);

      const rowsBack = keep(await clock.timed("combine", () => combine(expertOut, plan, groups.ep)));

      let output = keep(await clock.timed("unpermute", () => unpermute(rowsBack, p.pairToRow, r.weights)));

      let shared: FFNSaved | undefined;
      if (sharedRun) {
        await sharedRun;
        sharedRun = undefined;
        const sum = keep(await clock.timed("shared", () => add(output, sharedOut!.y)));
        own.delete(output);
        output.dispose();
        output = sum;
        shared = sharedOut!.saved;
      }

      const stats = await this.statistics(
        r.tokensPerExpert.toInt32(),
        p.dropped,
        p.capacity,
        r.auxLoss.item(),
        r.zLoss.item(),
        training,
      );
      stats.rowsReceived = plan.localCountsHost.reduce((a, b) => a + b, 0);
      tick("reduce");
      if (this.profile) this.timings.calls++;

      own.delete(output);
      const result: MoEForwardResult = {
        output,
        auxLoss: c.auxLossCoef * stats.auxLossUnscaled,
        zLoss: c.zLossCoef * stats.zLossUnscaled,
        stats,
      };
      if (training) {
        ctx = {
          x,
          gateInput,
          jitterSlice,
          logits,
          indices: r.indices,
          weights: r.weights,
          tokensPerExpert: r.tokensPerExpert,
          pairToRow: p.pairToRow,
          plan,
          rowsPerExpert: p.rowsPerExpert,
          experts: ex.saved,
          expertOut,
          rowsBack,
          shared,
          own,
        };
        this.contexts.push(ctx);
        this.contextOf.set(result, ctx);
      }
      return result;
    } finally {
      // On failure, the shared experts' work finishes before its tensors are freed.
      if (sharedRun) await sharedRun.catch(() => undefined);
      if (!ctx) for (const t of own) t.dispose();
    }
  }

  private jitterKey(): number {
    return hashName(prefixed(this.config.name, `router.jitter/${this.worldRank}`));
  }

  /** Global counts (one all-reduce over the world), the imbalance, and the load for the expert bias. */
  private async statistics(
    local: Int32Array,
    dropped: number,
    capacity: number,
    aux: number,
    z: number,
    training: boolean,
  ): Promise<MoEStats> {
    const E = this.config.numExperts;
    let global = Array.from(local);
    let globalDropped = dropped;
    if (this.groups!.world.size > 1) {
      const buf = new Float32Array(E + 1);
      buf.set(local);
      buf[E] = dropped;
      const t = Tensor.from(buf, [E + 1], { device: this.config.device });
      try {
        await this.groups!.world.allReduce(t, "sum");
        const v = t.toFloat32();
        global = Array.from(v.subarray(0, E));
        globalDropped = v[E];
      } finally {
        t.dispose();
      }
    }
    if (training && this.expertBias) for (let e = 0; e < E; e++) this.loadSinceUpdate[e] += global[e];
    const mean = global.reduce((a, b) => a + b, 0) / E;
    return {
      tokensPerExpert: global,
      localTokensPerExpert: Array.from(local),
      dropped: globalDropped,
      localDropped: dropped,
      imbalance: mean > 0 ? Math.max(...global) / mean : 1,
      capacity,
      rowsReceived: 0,
      auxLossUnscaled: aux,
      zLossUnscaled: z,
    };
  }

  /**
   * Backpropagates gradOutput [tokens, dModel] through a training forward (the latest one by default):
   * accumulates every parameter's gradient (with the aux and z losses' gradients) and returns dL/dx.
   */
  async backward(gradOutput: Tensor, options: MoEBackwardOptions = {}): Promise<Tensor> {
    this.check();
    await this.ready;
    if (options === null || typeof options !== "object")
      throw invalid("an options object", "backward options", options);
    if (!(gradOutput instanceof Tensor)) throw invalid("a Tensor", "gradOutput", gradOutput);
    if (gradOutput.disposed)
      throw new MoEError("Expected gradOutput to be a live tensor but it was disposed", "ERR_MOE_DISPOSED");
    const ctx = options.result ? this.contextOf.get(options.result) : this.contexts[this.contexts.length - 1];
    if (!ctx || !this.contexts.includes(ctx)) {
      throw new MoEError(
        "MoELayer.backward: expected a training-mode forward not yet differentiated but found none",
        "ERR_MOE_VALUE",
      );
    }
    if ([...ctx.own].some((t) => t.disposed)) {
      // Freed from outside (a scope() around forward disposes what it made): unusable, so dropped.
      this.contexts.splice(this.contexts.indexOf(ctx), 1);
      this.release(ctx);
      throw new MoEError(
        "MoELayer.backward: expected the saved forward's tensors to be live but they were disposed (a scope() ending after forward frees them)",
        "ERR_MOE_DISPOSED",
      );
    }
    if (
      gradOutput.shape.length !== 2 ||
      gradOutput.shape[0] !== ctx.x.shape[0] ||
      gradOutput.shape[1] !== this.config.dModel
    ) {
      throw new MoEError(
        `MoELayer.backward: expected gradOutput of shape [${ctx.x.shape.join(", ")}] (the forward's output) but received [${gradOutput.shape.join(", ")}]`,
        "ERR_MOE_SHAPE",
      );
    }
    const scale = options.lossScale === undefined ? 1 : options.lossScale;
    if (typeof scale !== "number" || !Number.isFinite(scale)) throw invalid("a finite number", "lossScale", scale);
    this.contexts.splice(this.contexts.indexOf(ctx), 1);
    const c = this.config;
    const groups = this.groups!;
    const clock = this.clock(this.timings.backward);
    const temps = new Set<Tensor>();
    const tmp = <T extends Tensor | undefined>(t: T): T => {
      if (t) temps.add(t);
      return t;
    };
    const grads: Array<[string, Tensor | undefined]> = [];
    let dx: Tensor | undefined;
    try {
      const u = await clock.timed("unpermute", () =>
        unpermuteBackward(gradOutput, ctx.rowsBack, ctx.pairToRow, ctx.weights),
      );
      tmp(u.dRows);
      const dWeights = tmp(u.dWeights);

      // The combine's gradient travels the dispatch's way; meanwhile the CPU stream runs the
      // router's and the shared experts' backward, which need nothing from the experts.
      const [dExpertOut, dGate, dShared] = await settled([
        clock.timed("combine", async () => tmp(await dispatch(u.dRows, ctx.plan, groups.ep))),
        clock.timed("route", async () => {
          const dLogits = tmp(
            await routeBackward(ctx.logits, ctx.indices, ctx.tokensPerExpert, dWeights, {
              scoreFunction: c.scoreFunction,
              renormalize: c.renormalize,
              auxLossGrad: c.auxLossCoef * scale,
              zLossGrad: c.zLossCoef * scale,
            }),
          );
          const g = await gateBackward(ctx.gateInput, this.p("router.weight"), dLogits);
          tmp(g.dx);
          grads.push(["router.weight", tmp(g.dwg)]);
          if (ctx.gateInput === ctx.x) return g.dx;
          return tmp(
            await jitter(g.dx, {
              eps: c.jitter,
              seed: c.seed,
              key: this.jitterKey(),
              slice: ctx.jitterSlice % 2 ** 32,
            }),
          );
        }),
        clock.timed("shared", async () => {
          if (!ctx.shared) return undefined;
          const gs = await ffnBackward(gradOutput, ctx.shared, this.sharedWeights(), c.activation);
          for (const t of [gs.dx, gs.dw1, gs.dw2, gs.db1, gs.db2]) tmp(t);
          grads.push(
            ["shared_experts.w1", gs.dw1],
            ["shared_experts.w2", gs.dw2],
            ["shared_experts.b1", gs.db1],
            ["shared_experts.b2", gs.db2],
          );
          return gs.dx;
        }),
      ] as const);

      const ge = await clock.timed("experts", () =>
        ffnBackward(dExpertOut, ctx.experts, this.expertWeights(), c.activation),
      );
      for (const t of [ge.dx, ge.dw1, ge.dw2, ge.db1, ge.db2]) tmp(t);
      grads.push(["experts.w1", ge.dw1], ["experts.w2", ge.dw2], ["experts.b1", ge.db1], ["experts.b2", ge.db2]);

      const dRows = tmp(await clock.timed("dispatch", () => combine(ge.dx, ctx.plan, groups.ep)));

      dx = await clock.timed("permute", async () => {
        const d = await permuteBackward(dRows, ctx.pairToRow);
        await addInPlace(d, dGate);
        if (dShared) await addInPlace(d, dShared);
        return d;
      });

      // Sum each gradient over the ranks that share the parameter, then accumulate; in the
      // parameters' order, so that every rank issues the same collectives in the same order.
      const byName = new Map(grads);
      for (const [name, p] of this.params) {
        const local = byName.get(name);
        if (!local) continue;
        const group = p.reduceOver === "world" ? groups.world : groups.expertDataParallel;
        if (group.size > 1) await group.allReduce(local, "sum");
        // Shared experts' gradients come as [1, ...]: viewed in the parameter's shape.
        const g = p.view ? reshape(local, p.entry.param.shape) : local;
        if (p.entry.zero) {
          temps.delete(g);
          p.entry.replaceGrad(g);
        } else {
          try {
            await addInPlace(p.entry.grad, g);
          } finally {
            if (g !== local) g.dispose();
          }
        }
      }
      clock.tick("reduce");
      const out = dx;
      dx = undefined;
      return out;
    } finally {
      dx?.dispose();
      for (const t of temps) t.dispose();
      this.release(ctx);
    }
  }

  private release(ctx: Context): void {
    for (const t of ctx.own) t.dispose();
  }

  /**
   * The expert bias step of aux-loss-free balancing (DeepSeek-V3; docs/math.md#expert-bias):
   * b_e += rate · sign(mean − load_e) with the global loads of the training forwards since the last
   * update. Call it once per optimizer step.
   */
  async updateExpertBias(): Promise<void> {
    this.check();
    await this.ready;
    if (!this.expertBias) return;
    const load = Tensor.from(Float32Array.from(this.loadSinceUpdate), [this.config.numExperts], {
      device: this.config.device,
    });
    try {
      await expertBiasUpdate(this.expertBias, load, this.config.expertBiasUpdateRate);
    } finally {
      load.dispose();
      this.loadSinceUpdate.fill(0);
    }
  }

  /** Frees the parameters, gradients, buffers and any saved forward. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const ctx of this.contexts.splice(0)) this.release(ctx);
    for (const p of this.params.values()) {
      p.view?.dispose();
      p.entry.param.dispose();
      p.entry.grad.dispose();
    }
    this.expertBias?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
