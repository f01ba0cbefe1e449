/**
 * The layer's trainable parameters (router, experts, shared experts) and
 * buffers, as the layer, the optimizer, clipping and checkpoints see them.
 */
import { isGated } from "../ops/activation";
import { addInPlace, zeroInPlace } from "../ops/elementwise";
import { fillRandom, hashName } from "../ops/random";
import { reshape } from "../ops/view";
import { Tensor } from "../tensor";
import type { ResolvedMoEConfig } from "./config";
import type { FFNGrads, FFNWeights } from "./experts";
import type { CollectiveGroup } from "./group";

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
    return this.current;
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
        held = undefined;
      } else {
        await addInPlace(this.current, held);
      }
    } finally {
      held?.dispose();
    }
  }

  /** Queues the zeroing of the gradient. */
  zeroGrad(): Promise<void> {
    this.zero = true;
    return zeroInPlace(this.current);
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

  constructor(c: ResolvedMoEConfig, firstExpert: number, numLocalExperts: number) {
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
      how: { std?: number; slices?: number; groupView?: boolean },
      expert: boolean,
      weightDecay: boolean,
    ): Parameter => {
      const full = prefixed(c.name, name);
      const param = Tensor.zeros(shape, { dtype, device: c.device });
      const grad = Tensor.zeros(shape, { device: c.device });
      if (how.std !== undefined) {
        const numel = shape.reduce((a, b) => a * b, 1);
        inits.push(
          fillRandom(param, {
            seed: c.seed,
            key: hashName(full),
            std: how.std,
            sliceSize: how.slices ? numel / how.slices : 0,
            firstSlice: how.slices ? firstExpert : 0,
          }),
        );
      }
      const p = Parameter.create(full, param, grad, { expert, weightDecay, groupView: how.groupView ?? false });
      all.push(p);
      return p;
    };
    this.router = make("router.weight", [D, E], "float32", { std: c.initStd }, false, true);
    this.experts = {
      w1: make("experts.w1", [L, D, F1], c.dtype, { std: c.initStd, slices: L }, true, true),
      w2: make("experts.w2", [L, F, D], c.dtype, { std: c.outputInitStd, slices: L }, true, true),
    };
    if (c.bias) {
      this.experts.b1 = make("experts.b1", [L, F1], c.dtype, {}, true, false);
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

  /** Expert weights' global norms add up over the EP group. */
  setNormGroup(ep: CollectiveGroup): void {
    for (const p of this.all) if (p.expert) p.normGroup = ep;
  }

  /** Every zeroing is queued (in order, on the stream) before this returns a promise. */
  zeroGrad(): Promise<void> {
    return Promise.all(this.all.map((p) => p.zeroGrad())).then(() => undefined);
  }

  dispose(): void {
    for (const p of this.all) p.dispose();
  }
}
