/**
 * The layer's trainable parameters (router, experts, shared experts) and
 * buffers, as the layer, the optimizer, clipping and checkpoints see them.
 */
import { isGated, type ActivationKind } from "../ops/activation";
import { addInPlace, copyInto } from "../ops/elementwise";
import { fillRandom, hashName } from "../ops/random";
import { reshape } from "../ops/view";
import { Tensor, type TensorOptions } from "../tensor";
import type { ResolvedMoEConfig } from "./config";
import { ffnBackward, type FFNGrads, type FFNSaved, type FFNWeights, type GradTarget } from "./experts";
import type { CollectiveGroup } from "./group";
import { ExpertModelParallelGroup } from "./expert-tp";
import { sliceOf, sliceShape, type SliceKind } from "./expert-slices";

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

/** A tensor's full name: the layer's name, a dot, the tensor's own name (or the latter alone). */
export function prefixed(prefix: string, name: string): string {
  return prefix ? `${prefix}.${name}` : name;
}

/** One parameter of the layer: what parameters() hands out, and what the layer computes with. */
export class Parameter implements ParameterEntry {
  normGroup?: CollectiveGroup;
  /** Whether the gradient is known to be zero (accumulate may then take a gradient rather than add). */
  private zero = true;
  /**
   * zeroGrad() asked for zeros that are not written yet: the next backward overwrites the buffer
   * (beta = 0) instead, and reading `grad` first makes them.
   */
  private zeroPending = false;

  /**
   * operand: the tensor the layer's ops take, the parameter itself or, for the shared experts (a
   * grouped GEMM of one group), a [1, ...] view of it; gradients come in its shape.
   */
  private constructor(
    readonly name: string,
    readonly param: Tensor,
    readonly operand: Tensor,
    private current: Tensor,
    readonly expert: boolean,
    readonly weightDecay: boolean,
  ) {}

  /** param, and its gradient (float32, zero); groupView: the operand is a [1, ...] view of param. */
  static create(
    name: string,
    param: Tensor,
    grad: Tensor,
    options: { expert: boolean; weightDecay: boolean; groupView: boolean },
  ): Parameter {
    const operand = options.groupView ? reshape(param, [1, ...param.shape]) : param;
    return new Parameter(name, param, operand, grad, options.expert, options.weightDecay);
  }

  get grad(): Tensor {
    if (this.zeroPending) {
      // A zero tensor made now (the buffer may still be written by work in flight, and a read
      // does not wait for queued ops): what zeroGrad() promised, when someone looks.
      this.zeroPending = false;
      const zero = Tensor.zeros(this.current.shape, { device: this.current.device as TensorOptions["device"] });
      this.current.dispose();
      this.current = zero;
    }
    return this.current;
  }

  /**
   * Where backward may have a GEMM write this gradient itself (the buffer, and whether to add to
   * what it holds), or undefined: for a view operand, when ranks must sum the gradient first, or
   * off the CPU.
   */
  gradTarget(reduceGroupSize: number): GradTarget | undefined {
    if (reduceGroupSize > 1 || this.operand !== this.param) return undefined;
    // The CUDA kernels write a fresh dW (landing it in a buffer is one more pass): taking it is cheaper.
    if (this.current.device !== "cpu") return undefined;
    // Should the backward fail halfway, a zero gradient still reads as zero.
    if (this.zero) this.zeroPending = true;
    return { into: this.current, accumulate: !this.zero };
  }

  /** Backward wrote the gradient through gradTarget(). */
  wroteGrad(): void {
    this.zero = false;
    this.zeroPending = false;
  }

  /** The group over which ranks add up this parameter's gradient (the world for replicated ones). */
  reduceGroup(groups: { world: CollectiveGroup; expertDataParallel: CollectiveGroup }): CollectiveGroup {
    return this.expert ? groups.expertDataParallel : groups.world;
  }

  /**
   * Takes g, a float32 gradient in the operand's shape: while the gradient is zero g becomes it,
   * otherwise g is added into it and disposed.
   */
  async accumulate(g: Tensor): Promise<void> {
    let held: Tensor | undefined = g;
    try {
      if (this.operand !== this.param) {
        held = reshape(g, this.param.shape);
        g.dispose();
      }
      if (this.zero) {
        this.current.dispose();
        this.current = held;
        this.zero = false;
        this.zeroPending = false;
        held = undefined;
      } else {
        await addInPlace(this.current, held);
      }
    } finally {
      held?.dispose();
    }
  }

  /**
   * Sets the gradient to zero: lazily, as the next backward overwrites it anyway (no sweep of zeros
   * the GEMM then writes over); reading `grad` before that writes the zeros.
   */
  zeroGrad(): Promise<void> {
    this.zero = true;
    this.zeroPending = true;
    return Promise.resolve();
  }

  dispose(): void {
    if (this.operand !== this.param) this.operand.dispose();
    this.param.dispose();
    this.current.dispose();
  }
}

/** The FFN parameters of the experts ([L, ...] each) or the shared experts; biases when the config has them. */
export interface FFNParameters {
  w1: Parameter;
  w2: Parameter;
  b1?: Parameter;
  b2?: Parameter;
}

/** The tensors the FFN ops take. */
export function ffnWeights(p: FFNParameters): FFNWeights {
  return { w1: p.w1.operand, w2: p.w2.operand, b1: p.b1?.operand, b2: p.b2?.operand };
}

/**
 * The FFN's backward with the weight gradients written by their GEMMs into the parameters' own
 * gradient buffers (beta = 0 after zeroGrad, beta = 1 to accumulate) where no sum over ranks
 * comes first (reduceGroupSize 1); the other gradients come back as usual.
 */
export async function ffnBackwardIntoGrads(
  p: FFNParameters,
  reduceGroupSize: number,
  dy: Tensor,
  saved: FFNSaved,
  kind: ActivationKind,
): Promise<FFNGrads> {
  const targets = { dw1: p.w1.gradTarget(reduceGroupSize), dw2: p.w2.gradTarget(reduceGroupSize) };
  const g = await ffnBackward(dy, saved, ffnWeights(p), kind, targets);
  if (targets.dw1) p.w1.wroteGrad();
  if (targets.dw2) p.w2.wroteGrad();
  return g;
}

/** The FFN's weight gradients, each beside its parameter. */
export function ffnGradients(p: FFNParameters, g: FFNGrads): Array<[Parameter, Tensor | undefined]> {
  const out: Array<[Parameter, Tensor | undefined]> = [
    [p.w1, g.dw1],
    [p.w2, g.dw2],
  ];
  if (p.b1) out.push([p.b1, g.db1]);
  if (p.b2) out.push([p.b2, g.db2]);
  return out;
}

/**
 * Every parameter of one layer on one rank: created in the config's dtype (the router in float32),
 * initialised from the seed and each parameter's name (so that a rank's experts get the values they
 * would have on a single rank), gradients zero.
 */
export class LayerParameters {
  readonly router: Parameter;
  readonly experts: FFNParameters;
  readonly shared?: FFNParameters;
  /** The residual MoE's mixing coefficient (x · weight + bias, weight [D, 2] float32), with residual. */
  readonly coefficient?: { weight: Parameter; bias: Parameter };
  /** In the order parameters() lists them: router, experts, shared experts (w1, w2, b1, b2 each), coefficient. */
  readonly all: readonly Parameter[];
  /** Resolves once every initial value is written. */
  readonly initialised: Promise<void>;

  /** etpRank: this rank's place in its ETP group (expert w1, b1, w2 hold its slice of dFF). */
  constructor(c: ResolvedMoEConfig, firstExpert: number, numLocalExperts: number, etpRank = 0) {
    const { dModel: D, dFF: F, numExperts: E, sharedExpertFF: S } = c;
    const L = numLocalExperts;
    const F1 = isGated(c.activation) ? 2 * F : F;
    const S1 = isGated(c.activation) ? 2 * S : S;
    const all: Parameter[] = [];
    const inits: Array<Promise<void>> = [];
    const make = (
      name: string,
      shape: number[],
      dtype: "float32" | ResolvedMoEConfig["dtype"],
      how: { std?: number; slices?: number; groupView?: boolean; etp?: SliceKind },
      expert: boolean,
      weightDecay: boolean,
    ): Parameter => {
      const full = prefixed(c.name, name);
      // With expert tensor parallelism, a slice of the whole expert tensor (sliceOf).
      const sliced = how.etp && c.etpSize > 1 ? sliceShape(how.etp, shape, c.etpSize) : shape;
      const param = Tensor.zeros(sliced, { dtype, device: c.device });
      const grad = Tensor.zeros(sliced, { device: c.device });
      if (how.std !== undefined) {
        const numel = shape.reduce((a, b) => a * b, 1);
        const fill = (t: Tensor) =>
          fillRandom(t, {
            seed: c.seed,
            key: hashName(full),
            std: how.std,
            sliceSize: how.slices ? numel / how.slices : 0,
            firstSlice: how.slices ? firstExpert : 0,
          });
        if (sliced === shape) inits.push(fill(param));
        else {
          // The values the whole tensor has on one rank, then this rank's slice of them.
          const kind = how.etp!;
          inits.push(
            (async () => {
              using whole = Tensor.zeros(shape, { dtype, device: c.device });
              await fill(whole);
              using cut = await sliceOf(whole, kind, c.etpSize, etpRank, c.activation);
              await copyInto(param, cut);
            })(),
          );
        }
      }
      const p = Parameter.create(full, param, grad, { expert, weightDecay, groupView: how.groupView ?? false });
      all.push(p);
      return p;
    };
    this.router = make("router.weight", [D, E], "float32", { std: c.initStd }, false, true);
    this.experts = {
      w1: make("experts.w1", [L, D, F1], c.dtype, { std: c.initStd, slices: L, etp: "w1" }, true, true),
      w2: make("experts.w2", [L, F, D], c.dtype, { std: c.outputInitStd, slices: L, etp: "w2" }, true, true),
    };
    if (c.bias) {
      this.experts.b1 = make("experts.b1", [L, F1], c.dtype, { etp: "b1" }, true, false);
      this.experts.b2 = make("experts.b2", [L, D], c.dtype, {}, true, false);
    }
    if (S > 0) {
      // The shared FFN runs as a grouped GEMM of one group: on [1, ...] views of its weights.
      const shared = (name: string, shape: number[], std?: number, weightDecay = true) =>
        make(`shared_experts.${name}`, shape, c.dtype, { std, groupView: true }, false, weightDecay);
      this.shared = { w1: shared("w1", [D, S1], c.initStd), w2: shared("w2", [S, D], c.outputInitStd) };
      if (c.bias) {
        this.shared.b1 = shared("b1", [S1], undefined, false);
        this.shared.b2 = shared("b2", [D], undefined, false);
      }
    }
    if (c.residual) {
      this.coefficient = {
        weight: make("coefficient.weight", [D, 2], "float32", { std: c.initStd }, false, true),
        bias: make("coefficient.bias", [2], "float32", {}, false, false),
      };
    }
    this.all = all;
    this.initialised = Promise.all(inits).then(() => undefined);
  }

  /**
   * Expert weights' global norms add up over the EP group; those sliced by expert tensor parallelism
   * (w1, b1, w2) over the EP and ETP groups both.
   */
  setNormGroup(ep: CollectiveGroup, etp?: CollectiveGroup): void {
    const both = etp && etp.size > 1 ? new ExpertModelParallelGroup(ep, etp) : ep;
    const e = this.experts;
    for (const p of this.all) if (p.expert) p.normGroup = p === e.b2 ? ep : both;
  }

  /** Every gradient is marked zero before this returns a promise (Parameter.zeroGrad: no sweep of zeros). */
  zeroGrad(): Promise<void> {
    return Promise.all(this.all.map((p) => p.zeroGrad())).then(() => undefined);
  }

  dispose(): void {
    for (const p of this.all) p.dispose();
  }
}
