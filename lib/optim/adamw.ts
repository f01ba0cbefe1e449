/**
 * AdamW over named parameters (the native adamw op, PyTorch's torch.optim.AdamW
 * semantics): state is created at the first step, float32, one pair of moments
 * per parameter; parameters marked weightDecay: false (biases) are not decayed.
 */
import { MoEError, checkInteger, checkNumber, invalid, orDefault } from "../errors";
import { adamw } from "../ops/adamw";
import { zeroInPlace } from "../ops/elementwise";
import { Tensor } from "../tensor";
import { adamwOptionsFromConfig } from "./adamw-config";

/** What the optimizer needs of a parameter (MoELayer.parameters() gives these). */
export interface OptimizerParam {
  readonly name?: string;
  readonly param: Tensor;
  readonly grad: Tensor;
  /** Default true. */
  readonly weightDecay?: boolean;
}

export interface AdamWOptions {
  lr: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay (default 0.01). */
  weightDecay?: number;
}

export interface AdamWState {
  expAvg: Tensor;
  expAvgSq: Tensor;
}

const beta = (v: number) => v >= 0 && v < 1;
const nonNegative = (v: number) => v >= 0;

export class AdamW {
  readonly params: readonly OptimizerParam[];
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Steps taken so far. */
  stepCount = 0;
  private readonly states = new Map<OptimizerParam, AdamWState>();
  private disposed = false;

  constructor(params: Iterable<OptimizerParam>, options: AdamWOptions) {
    if (params === null || typeof (params as Iterable<OptimizerParam>)?.[Symbol.iterator] !== "function") {
      throw invalid("an iterable of { param, grad } (e.g. moe.parameters())", "params", params);
    }
    this.params = [...params];
    this.params.forEach((p, i) => {
      if (p === null || typeof p !== "object" || !(p.param instanceof Tensor) || !(p.grad instanceof Tensor)) {
        throw invalid("{ param: Tensor, grad: Tensor }", `params[${i}]`, p);
      }
    });
    if (options === null || typeof options !== "object")
      throw invalid("an options object with lr", "AdamW options", options);
    this.lr = checkNumber("lr", options.lr, nonNegative, "a finite number >= 0");
    this.beta1 = checkNumber("beta1", orDefault(options.beta1, 0.9), beta, "a number in [0, 1)");
    this.beta2 = checkNumber("beta2", orDefault(options.beta2, 0.999), beta, "a number in [0, 1)");
    this.eps = checkNumber("eps", orDefault(options.eps, 1e-8), nonNegative, "a finite number >= 0");
    this.weightDecay = checkNumber(
      "weightDecay",
      orDefault(options.weightDecay, 0.01),
      nonNegative,
      "a finite number >= 0",
    );
  }

  /**
   * An AdamW from the `optimizer` section of a DeepSpeed shaped config ({ type: "AdamW", params:
   * { lr, betas, eps, weight_decay } }, DeepSpeed's defaults: lr 1e-3, weight_decay 0); other
   * optimizer types and unknown params are an ERR_MOE_VALUE naming them (docs/config.md).
   */
  static fromConfig(params: Iterable<OptimizerParam>, config: Readonly<Record<string, unknown>>): AdamW {
    return new AdamW(params, adamwOptionsFromConfig(config));
  }

  /** The moments of a parameter (created zero on first use). */
  state(p: OptimizerParam): AdamWState {
    this.check();
    let s = this.states.get(p);
    if (!s) {
      live(p, this.params.indexOf(p));
      const opts = { device: p.param.device as "cpu" };
      s = { expAvg: Tensor.zeros(p.param.shape, opts), expAvgSq: Tensor.zeros(p.param.shape, opts) };
      this.states.set(p, s);
    }
    return s;
  }

  /** Whether a parameter has state yet. */
  hasState(p: OptimizerParam): boolean {
    return this.states.has(p);
  }

  /** Restores the step count (after loading the moments into state(p)). */
  setStepCount(n: number): void {
    this.check();
    this.stepCount = checkInteger("stepCount", n, 0);
  }

  /** One AdamW step over every parameter from its gradient. */
  async step(): Promise<void> {
    this.check();
    this.params.forEach(live);
    const step = this.stepCount + 1;
    await Promise.all(
      this.params.map((p) => {
        const s = this.state(p);
        return adamw(p.param, p.grad, s.expAvg, s.expAvgSq, {
          lr: this.lr,
          beta1: this.beta1,
          beta2: this.beta2,
          eps: this.eps,
          weightDecay: p.weightDecay === false ? 0 : this.weightDecay,
          step,
        });
      }),
    );
    this.stepCount = step;
  }

  /** Sets every parameter's gradient to zero. */
  async zeroGrad(): Promise<void> {
    this.check();
    this.params.forEach(live);
    // A layer's parameter zeroes its own gradient (lazily: its next backward overwrites it).
    await Promise.all(
      this.params.map((p) => {
        const own = p as { zeroGrad?: () => Promise<void> };
        return typeof own.zeroGrad === "function" ? own.zeroGrad() : zeroInPlace(p.grad);
      }),
    );
  }

  /** Frees the moments; later calls reject with ERR_MOE_DISPOSED. */
  dispose(): void {
    this.disposed = true;
    for (const s of this.states.values()) {
      s.expAvg.dispose();
      s.expAvgSq.dispose();
    }
    this.states.clear();
  }

  private check(): void {
    if (this.disposed) throw new MoEError("Expected a live AdamW but it was disposed", "ERR_MOE_DISPOSED");
  }
}

/** A parameter whose tensors were freed (its layer disposed) is refused before any step begins. */
function live(p: OptimizerParam, i: number): void {
  for (const [key, t] of [
    ["param", p.param],
    ["grad", p.grad],
  ] as const) {
    if (t.disposed) {
      const name = p.name ? `${p.name} (params[${i}])` : `params[${i}]`;
      throw new MoEError(`Expected the ${key} of ${name} to be a live tensor but it was disposed`, "ERR_MOE_DISPOSED");
    }
  }
}
