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
 *
 * With expert tensor parallelism (etpSize > 1) each expert's FFN is split along dFF over an ETP group:
 * after the dispatch the group all-gathers its members' rows, each member computes its slice for all
 * of them, and a reduce-scatter sums the partial outputs back to the member owning the rows
 * (lib/layer/expert-tp.ts).
 */
import { MoEError, invalid } from "../errors";
import { addInPlace, add } from "../ops/elementwise";
import { renormalizeKept, renormalizeKeptBackward } from "../ops/kept-weights";
import { permute, permuteBackward, unpermute, unpermuteBackward } from "../ops/permute";
import { reshape } from "../ops/view";
import { Tensor } from "../tensor";
import { resolveConfig, type MoELayerOptions, type ResolvedMoEConfig } from "./config";
import { parseForeignConfig, type ForeignConfig, type IgnoredConfigKey } from "./foreign-config";
import { deepSpeedOptions, type DeepSpeedMoEKwargs } from "./deepspeed";
import { checkDeviceSupport } from "./device-support";
import { combine, dispatch, planDispatch, type DispatchPlan } from "./dispatcher";
import { ffnBackward, ffnForward, type FFNSaved } from "./experts";
import {
  layoutOf,
  resolveGroups,
  worldOf,
  type CollectiveGroup,
  type MoELayerGroup,
  type ResolvedGroups,
} from "./group";
import { gatherRows, planGather, scatterRows, type EtpPlan } from "./expert-tp";
import {
  ffnBackwardIntoGrads,
  ffnGradients,
  ffnWeights,
  LayerParameters,
  type BufferEntry,
  type Parameter,
  type ParameterEntry,
} from "./parameters";
import { residualBackward, residualForward, type ResidualSaved } from "./residual";
import { Router, type MoEStats } from "./router";
import { stageClock, zeroTimes, type Stage, type StageTimes } from "./stage-clock";
import { clipGradNorm } from "../optim/clip";
import {
  loadCheckpoint,
  saveCheckpoint,
  type CheckpointLoadReport,
  type CheckpointOptions,
} from "../checkpoint/checkpoint";
import { loadStateDict, stateDict, type ExpertGather, type LoadReport, type LoadStateDictOptions } from "./state-dict";
import { etpExpertGather } from "./expert-slices";

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

/** What one training forward keeps for its backward. */
interface Context {
  x: Tensor;
  gateInput: Tensor;
  jitterSlice: number;
  logits: Tensor;
  indices: Tensor;
  /** The weights unpermute takes, and route's own (the same tensor unless renormalizeKept). */
  weights: Tensor;
  routeWeights: Tensor;
  tokensPerExpert: Tensor;
  pairToRow: Tensor;
  plan: DispatchPlan;
  etpPlan?: EtpPlan;
  rowsPerExpert: Tensor;
  experts: FFNSaved;
  expertOut: Tensor;
  rowsBack: Tensor;
  shared?: FFNSaved;
  residual?: ResidualSaved;
  own: Set<Tensor>;
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

export class MoELayer {
  /** The validated configuration, defaults filled in. */
  readonly config: ResolvedMoEConfig;
  /** Position in the layout: world rank and size, EP rank, experts held here. */
  readonly worldRank: number;
  readonly worldSize: number;
  readonly epRank: number;
  readonly epSize: number;
  /** Expert tensor parallelism: this rank's place in its ETP group, and the group's size. */
  readonly etpRank: number;
  readonly etpSize: number;
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

  private groups?: ResolvedGroups;
  private readonly params: LayerParameters;
  private readonly router: Router;
  private readonly contexts: Context[] = [];
  private readonly contextOf = new WeakMap<MoEForwardResult, Context>();
  private disposed = false;

  /** What MoELayer.fromForeignConfig reported and did not apply (empty for native options). */
  private ignoredKeys: readonly IgnoredConfigKey[] = [];

  /**
   * options: the native options (a Megatron-Core / DeepSpeed shaped config goes through
   * MoELayer.fromForeignConfig). group: the world ProcessGroup (split into EP and
   * expert-data-parallel groups for epSize), or { world, ep, expertDataParallel }, or nothing for
   * one process.
   */
  constructor(options: MoELayerOptions, group?: MoELayerGroup) {
    const c = resolveConfig(options);
    this.config = c;
    checkDeviceSupport(c, group);
    const world = worldOf(group);
    const layout = layoutOf(world.rank, world.size, c.epSize, c.etpSize);
    this.worldRank = world.rank;
    this.worldSize = world.size;
    this.epRank = layout.epRank;
    this.epSize = c.epSize;
    this.etpRank = layout.etpRank;
    this.etpSize = c.etpSize;
    this.numLocalExperts = c.numExperts / c.epSize;
    this.firstExpert = this.epRank * this.numLocalExperts;

    this.params = new LayerParameters(c, this.firstExpert, this.numLocalExperts, this.etpRank);
    this.router = new Router(c, this.worldRank);
    this.ready = this.setUp(group);
    // Surfaced by every method that awaits `ready`; not an unhandled rejection meanwhile.
    this.ready.catch(() => undefined);
  }

  /** The same as `new MoELayer(options, group)`: the native camelCase options. */
  static fromConfig(options: MoELayerOptions, group?: MoELayerGroup): MoELayer {
    return new MoELayer(options, group);
  }

  /**
   * A layer from a Megatron-Core / DeepSpeed shaped config, read completely (parseForeignConfig,
   * docs/config.md): the parallel sizes are checked against the group's world size, keys owned
   * by something else are listed in `ignoredConfigKeys`, anything else not supported is an
   * ERR_MOE_VALUE naming it. Await `ready` (or use the layer's methods, which do).
   */
  static fromForeignConfig(config: ForeignConfig, group?: MoELayerGroup): MoELayer {
    const parsed = parseForeignConfig(config, { worldSize: worldOf(group).size });
    const layer = new MoELayer(parsed.options, group);
    layer.ignoredKeys = Object.freeze(parsed.ignored.map((k) => Object.freeze({ ...k })));
    return layer;
  }

  /** Builds a layer and waits until it is ready. */
  static async create(options: MoELayerOptions, group?: MoELayerGroup): Promise<MoELayer> {
    const layer = new MoELayer(options, group);
    await layer.ready;
    return layer;
  }

  /**
   * A layer from DeepSpeed's MoE(...) keywords, with DeepSpeed's defaults and semantics (see
   * deepSpeedOptions and docs/deepspeed.md); group as for the constructor.
   */
  static fromDeepSpeed(kwargs: DeepSpeedMoEKwargs, group?: MoELayerGroup): MoELayer {
    return new MoELayer(deepSpeedOptions(kwargs), group);
  }

  /** The keys of the foreign config this layer was built from that it reported and did not apply, with why. */
  get ignoredConfigKeys(): readonly IgnoredConfigKey[] {
    return this.ignoredKeys;
  }

  private async setUp(group: MoELayerGroup | undefined): Promise<void> {
    // The split starts now, in construction order (see resolveGroups), beside the initialisation.
    const [, groups] = await Promise.all([
      this.params.initialised,
      resolveGroups(group, this.config.epSize, this.config.etpSize),
    ]);
    this.groups = groups;
    this.params.setNormGroup(groups.ep, groups.etp);
  }

  /**
   * With expert tensor parallelism, how state dicts, checkpoints and exports see the sliced expert
   * tensors whole (lib/layer/expert-slices.ts); absent when etpSize is 1.
   */
  get expertGather(): ExpertGather | undefined {
    if (this.etpSize === 1) return undefined;
    return etpExpertGather(() => this.groups!.etp!, this.etpSize, this.etpRank, this.config.activation);
  }

  /** The expert-tensor-parallel group (a group of one when etpSize is 1), once ready. */
  get etpGroup(): CollectiveGroup | undefined {
    return this.groups?.etp;
  }

  /** The experts' weights as this rank computes with them: ETP ranks other than 0 leave b2 out (added once). */
  private expertWeights() {
    const w = ffnWeights(this.params.experts);
    return this.etpRank === 0 ? w : { ...w, b2: undefined };
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
  async load(dir: string, options: CheckpointOptions = {}): Promise<CheckpointLoadReport> {
    this.check();
    return loadCheckpoint(dir, [this], options);
  }

  /**
   * Every parameter and buffer by name (docs/architecture.md#state-dicts), this rank's experts under
   * their global index (experts.<e>.w1): new tensors that the caller disposes.
   */
  async stateDict(): Promise<Map<string, Tensor>> {
    this.check();
    return stateDict(this);
  }

  /** Copies a state dict (Map or object of name -> Tensor) into the layer, checked first (see loadStateDict). */
  async loadStateDict(
    dict: Map<string, Tensor> | Record<string, Tensor>,
    options: LoadStateDictOptions = {},
  ): Promise<LoadReport> {
    this.check();
    return loadStateDict(this, dict, options);
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
    return [...this.params.all];
  }

  /** State that is not trained by the optimizer: router.expert_bias when aux-loss-free balancing is on. */
  buffers(): BufferEntry[] {
    this.check();
    return this.router.buffers();
  }

  /** Sets every gradient to zero. */
  async zeroGrad(): Promise<void> {
    this.check();
    await this.ready;
    // Every zeroing is queued (in order, on the stream) before anything else runs, so a
    // zeroGrad() that is not awaited still comes before the next backward's accumulation.
    await this.params.zeroGrad();
  }

  private check(): void {
    if (this.disposed) throw new MoEError("Expected a live MoELayer but it was disposed", "ERR_MOE_DISPOSED");
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
    const clock = stageClock(this.timings.forward, this.profile);
    const tick = (stage: Stage) => clock.tick(stage);
    let ctx: Context | undefined;
    let sharedRun: Promise<unknown> | undefined;
    try {
      // A handle of our own on x's storage: the caller may dispose theirs before backward.
      if (training) x = keep(reshape(x, x.shape));
      const {
        gateInput,
        jitterSlice,
        logits,
        route: r,
      } = await this.router.forward(x, this.params.router.operand, training, keep);
      tick("route");

      const p = await permute(x, r.indices, r.weights, {
        numExperts: c.numExperts,
        capacityFactor: training ? c.capacityFactor : c.evalCapacityFactor,
        minCapacity: c.minCapacity,
        dropPolicy: c.dropPolicy,
        padToCapacity: c.padToCapacity,
      });
      for (const t of [p.rows, p.rowsPerExpert, p.pairToRow, p.rowToPair]) keep(t);
      const weights = c.renormalizeKept ? keep(await renormalizeKept(r.weights, p.pairToRow)) : r.weights;
      tick("permute");

      // The shared experts need only x: they run on the CPU stream while the rows travel.
      let sharedOut: { y: Tensor; saved: FFNSaved } | undefined;
      if (c.sharedExpertFF > 0) {
        const counts = keep(Tensor.from(Int32Array.of(T), [1], { dtype: "int32", device: c.device }));
        sharedRun = clock.timed("shared", async () => {
          const s = await ffnForward(x, counts, ffnWeights(this.params.shared!), c.activation);
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

      // Expert tensor parallelism: every member's rows, for this rank's slice of each expert.
      let etpPlan: EtpPlan | undefined;
      let ffnRows = expertRows;
      if (this.etpSize > 1) {
        [etpPlan, ffnRows] = await clock.timed("etpGather", async () => {
          const ep = await planGather(plan.localCounts, groups.etp);
          for (const t of [ep.byMember, ep.byExpert, ep.localCounts]) keep(t);
          return [ep, keep(await gatherRows(expertRows, ep, groups.etp))] as const;
        });
      }
      const ex = await clock.timed("experts", () =>
        ffnForward(ffnRows, etpPlan ? etpPlan.localCounts : plan.localCounts, this.expertWeights(), c.activation),
      );
      keep(ex.saved.pre);
      keep(ex.saved.h);
      keep(ex.y);
      const expertOut = etpPlan
        ? keep(await clock.timed("etpScatter", () => scatterRows(ex.y, etpPlan!, groups.etp)))
        : ex.y;

      const rowsBack = keep(await clock.timed("combine", () => combine(expertOut, plan, groups.ep)));

      let output = keep(await clock.timed("unpermute", () => unpermute(rowsBack, p.pairToRow, weights)));

      let shared: FFNSaved | undefined;
      let residual: ResidualSaved | undefined;
      if (sharedRun) {
        await sharedRun;
        sharedRun = undefined;
        if (this.params.coefficient) {
          // Residual MoE: a learned mix instead of the sum; both outputs stay for the backward.
          const moeOut = output;
          const mix = await clock.timed("shared", () =>
            residualForward(x, moeOut, sharedOut!.y, this.params.coefficient!, keep),
          );
          output = mix.y;
          residual = mix.saved;
        } else {
          const sum = keep(await clock.timed("shared", () => add(output, sharedOut!.y)));
          own.delete(output);
          output.dispose();
          output = sum;
        }
        shared = sharedOut!.saved;
      }

      const stats = await this.router.statistics(
        groups.world,
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
          weights,
          routeWeights: r.weights,
          tokensPerExpert: r.tokensPerExpert,
          pairToRow: p.pairToRow,
          plan,
          etpPlan,
          rowsPerExpert: p.rowsPerExpert,
          experts: ex.saved,
          expertOut,
          rowsBack,
          shared,
          residual,
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
    const clock = stageClock(this.timings.backward, this.profile);
    const temps = new Set<Tensor>();
    const tmp = <T extends Tensor | undefined>(t: T): T => {
      if (t) temps.add(t);
      return t;
    };
    const grads: Array<[Parameter, Tensor | undefined]> = [];
    let dx: Tensor | undefined;
    try {
      // Residual MoE: the mix's backward splits dy between the routed path and the MLP.
      const mix = ctx.residual
        ? await clock.timed("shared", () =>
            residualBackward(gradOutput, ctx.x, ctx.residual!, this.params.coefficient!, tmp),
          )
        : undefined;
      if (mix) grads.push(...mix.grads);
      const dyRouted = mix ? mix.dMoe : gradOutput;
      const u = await clock.timed("unpermute", () =>
        unpermuteBackward(dyRouted, ctx.rowsBack, ctx.pairToRow, ctx.weights),
      );
      tmp(u.dRows);
      tmp(u.dWeights);
      const dWeights =
        ctx.weights === ctx.routeWeights
          ? u.dWeights
          : tmp(await renormalizeKeptBackward(ctx.routeWeights, ctx.pairToRow, u.dWeights));

      // The combine's gradient travels the dispatch's way; meanwhile the CPU stream runs the
      // router's and the shared experts' backward, which need nothing from the experts.
      const [dExpertOut, dGate, dShared] = await settled([
        clock.timed("combine", async () => tmp(await dispatch(u.dRows, ctx.plan, groups.ep))),
        clock.timed("route", async () => {
          const g = await this.router.backward(ctx, this.params.router.operand, dWeights, scale, tmp);
          grads.push([this.params.router, g.dwg]);
          return g.dx;
        }),
        clock.timed("shared", async () => {
          if (!ctx.shared) return undefined;
          const gs = await ffnBackward(
            mix ? mix.dMlp : gradOutput,
            ctx.shared,
            ffnWeights(this.params.shared!),
            c.activation,
          );
          for (const t of [gs.dx, gs.dw1, gs.dw2, gs.db1, gs.db2]) tmp(t);
          grads.push(...ffnGradients(this.params.shared!, gs));
          return gs.dx;
        }),
      ] as const);

      const etpPlan = ctx.etpPlan;
      const dFfnOut = etpPlan
        ? tmp(await clock.timed("etpGather", () => gatherRows(dExpertOut, etpPlan, groups.etp)))
        : dExpertOut;
      // Expert weight gradients land in their buffers straight from the GEMMs where no sum over ranks
      // comes first. (The backward reads no b2, so ETP ranks other than 0 need no weights of their own.)
      const edpSize = this.params.experts.w1.reduceGroup(groups).size;
      const ge = await clock.timed("experts", () =>
        ffnBackwardIntoGrads(this.params.experts, edpSize, dFfnOut, ctx.experts, c.activation),
      );
      for (const t of [ge.dx, ge.dw1, ge.dw2, ge.db1, ge.db2]) tmp(t);
      grads.push(...ffnGradients(this.params.experts, ge));
      const dExpertRows = etpPlan
        ? tmp(await clock.timed("etpScatter", () => scatterRows(ge.dx, etpPlan, groups.etp)))
        : ge.dx;

      const dRows = tmp(await clock.timed("dispatch", () => combine(dExpertRows, ctx.plan, groups.ep)));

      dx = await clock.timed("permute", async () => {
        const d = await permuteBackward(dRows, ctx.pairToRow);
        await addInPlace(d, dGate);
        if (dShared) await addInPlace(d, dShared);
        if (mix) await addInPlace(d, mix.dx);
        return d;
      });

      // Sum each gradient over the ranks that share the parameter, then accumulate; in the
      // parameters' order, so that every rank issues the same collectives in the same order.
      const byParam = new Map(grads);
      for (const p of this.params.all) {
        const local = byParam.get(p);
        if (!local) continue;
        const group = p.reduceGroup(groups);
        if (group.size > 1) await group.allReduce(local, "sum");
        temps.delete(local);
        await p.accumulate(local);
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
    await this.router.updateExpertBias();
  }

  /** Frees the parameters, gradients, buffers and any saved forward. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const ctx of this.contexts.splice(0)) this.release(ctx);
    this.params.dispose();
    this.router.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
