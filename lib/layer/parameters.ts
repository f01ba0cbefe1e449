/** The layer's trainable parameters and buffers, as the optimizer, clipping and checkpoints see them. */
import type { Tensor } from "../tensor";
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

export class Parameter implements ParameterEntry {
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

export interface Param {
  entry: Parameter;
  /** The grouped-GEMM view [1, ...] of a shared expert weight. */
  view?: Tensor;
  reduceOver: "world" | "expertDataParallel";
}

/** A tensor's full name: the layer's name, a dot, the tensor's own name (or the latter alone). */
export function prefixed(prefix: string, name: string): string {
  return prefix ? `${prefix}.${name}` : name;
}
