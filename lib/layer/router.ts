/**
 * The layer's router (docs/math.md#route and #load-balancing-loss): training-only jitter on
 * the gate's input, the gate, route (scores, top-k choice, weights, counts,
 * losses), their backward, the routing statistics over the world, and the
 * expert bias of aux-loss-free balancing with the loads it is updated from.
 */
import { expertBiasUpdate } from "../ops/expert-bias";
import { gate, gateBackward } from "../ops/gate";
import { fillRandom, hashName, jitter } from "../ops/random";
import { route, routeBackward, type RouteResult } from "../ops/route";
import { Tensor } from "../tensor";
import type { ResolvedMoEConfig } from "./config";
import type { CollectiveGroup } from "./group";
import { prefixed, type BufferEntry } from "./parameters";

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

/** What the router's backward needs of its forward. */
export interface RouterSaved {
  /** The router's input (x), and the gate's input (x itself, or x with jitter). */
  x: Tensor;
  gateInput: Tensor;
  jitterSlice: number;
  logits: Tensor;
  indices: Tensor;
  tokensPerExpert: Tensor;
}

export interface RouterForward {
  gateInput: Tensor;
  jitterSlice: number;
  logits: Tensor;
  route: RouteResult;
}

/** Registers a tensor with the caller, who disposes of it. */
type Keep = <T extends Tensor>(t: T) => T;

export class Router {
  /** The expert bias (aux-loss-free balancing), when the config asks for it. */
  readonly expertBias?: Tensor;
  private jitterCalls = 0;
  private rsampleCalls = 0;
  private sampleCalls = 0;
  private readonly loadSinceUpdate: Float64Array;

  constructor(
    private readonly config: ResolvedMoEConfig,
    private readonly worldRank: number,
  ) {
    this.loadSinceUpdate = new Float64Array(config.numExperts);
    if (config.expertBias) this.expertBias = Tensor.zeros([config.numExperts], { device: config.device });
  }

  /** Jitter (training only), gate and route of x with the router weight wg; every tensor made goes to keep. */
  async forward(x: Tensor, wg: Tensor, training: boolean, keep: Keep): Promise<RouterForward> {
    const c = this.config;
    const jitterSlice = this.jitterCalls;
    let gateInput = x;
    if (training && c.jitter > 0) {
      gateInput = keep(
        await jitter(x, { eps: c.jitter, seed: c.seed, key: this.jitterKey(), slice: jitterSlice % 2 ** 32 }),
      );
      this.jitterCalls++;
    }
    const logits = keep(await gate(gateInput, wg));
    let selectionNoise: Tensor | undefined;
    if (training && c.rsample) {
      // Gumbel noise on the logits for the choice (docs/math.md#rsample), a new draw per forward.
      selectionNoise = keep(Tensor.zeros([x.shape[0], c.numExperts], { device: c.device }));
      await fillRandom(selectionNoise, {
        seed: c.seed,
        key: hashName(prefixed(c.name, `router.rsample/${this.worldRank}`)),
        distribution: "gumbel",
        firstSlice: this.rsampleCalls % 2 ** 32,
      });
      this.rsampleCalls++;
    } else if (c.secondExpertSampling) {
      // Gumbel noise for the choices after the first (docs/math.md#rsample), every forward.
      selectionNoise = keep(Tensor.zeros([x.shape[0], c.numExperts], { device: c.device }));
      await fillRandom(selectionNoise, {
        seed: c.seed,
        key: hashName(prefixed(c.name, `router.sample2/${this.worldRank}`)),
        distribution: "gumbel",
        firstSlice: this.sampleCalls % 2 ** 32,
      });
      this.sampleCalls++;
    }
    const r = await route(logits, {
      topK: c.topK,
      scoreFunction: c.scoreFunction,
      renormalize: c.renormalize,
      expertBias: this.expertBias,
      numGroups: c.numGroups,
      topkGroups: c.topkGroups,
      selectionNoise,
      noiseFrom: selectionNoise && c.secondExpertSampling ? 1 : 0,
    });
    for (const t of [r.indices, r.weights, r.scores, r.tokensPerExpert, r.auxLoss, r.zLoss]) keep(t);
    return { gateInput, jitterSlice, logits, route: r };
  }

  /**
   * From dWeights (and the losses' gradients times scale): the gradient of the router's input and of
   * wg; every tensor made goes to keep.
   */
  async backward(
    saved: RouterSaved,
    wg: Tensor,
    dWeights: Tensor,
    scale: number,
    keep: Keep,
  ): Promise<{ dx: Tensor; dwg: Tensor }> {
    const c = this.config;
    const dLogits = keep(
      await routeBackward(saved.logits, saved.indices, saved.tokensPerExpert, dWeights, {
        scoreFunction: c.scoreFunction,
        renormalize: c.renormalize,
        auxLossGrad: c.auxLossCoef * scale,
        zLossGrad: c.zLossCoef * scale,
      }),
    );
    const g = await gateBackward(saved.gateInput, wg, dLogits);
    keep(g.dx);
    const dwg = keep(g.dwg);
    if (saved.gateInput === saved.x) return { dx: g.dx, dwg };
    const dx = keep(
      await jitter(g.dx, {
        eps: c.jitter,
        seed: c.seed,
        key: this.jitterKey(),
        slice: saved.jitterSlice % 2 ** 32,
      }),
    );
    return { dx, dwg };
  }

  private jitterKey(): number {
    return hashName(prefixed(this.config.name, `router.jitter/${this.worldRank}`));
  }

  /** Global counts (one all-reduce over the world), the imbalance, and the load for the expert bias. */
  async statistics(
    world: CollectiveGroup,
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
    if (world.size > 1) {
      const buf = new Float32Array(E + 1);
      buf.set(local);
      buf[E] = dropped;
      const t = Tensor.from(buf, [E + 1], { device: this.config.device });
      try {
        await world.allReduce(t, "sum");
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

  /** The expert bias step from the loads counted since the last one (see MoELayer.updateExpertBias). */
  async updateExpertBias(): Promise<void> {
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

  /** router.expert_bias when aux-loss-free balancing is on. */
  buffers(): BufferEntry[] {
    return this.expertBias ? [{ name: prefixed(this.config.name, "router.expert_bias"), tensor: this.expertBias }] : [];
  }

  dispose(): void {
    this.expertBias?.dispose();
  }
}
