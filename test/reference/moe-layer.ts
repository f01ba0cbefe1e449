/**
 * float64 reference of one MoE layer over a world of ranks
 * (docs/math.md#layer-forward, docs/math.md#layer-backward), in one process:
 * each rank routes, drops and permutes its own tokens; every (token, choice)
 * pair is processed by the global expert it chose, wherever that expert lives;
 * gradients are summed over all ranks. It is composed of the float64 references
 * of the ops, never of the native code.
 */
import { activationBackwardRef, activationRef, isGatedKind, type Kind } from "./activation";
import { gateBackwardRef, gateRef } from "./gate";
import { groupedGemmBackwardRef, groupedGemmRef } from "./grouped-gemm";
import { renormalizeKeptBackwardRef, renormalizeKeptRef } from "./kept-weights";
import { permuteBackwardRef, permuteRef, unpermuteBackwardRef, unpermuteRef } from "./permute";
import { residualCoefBackwardRef, residualCoefRef, residualMixBackwardRef, residualMixRef } from "./residual";
import { routeBackwardRef, routeRef, type ScoreFunction } from "./route";

export interface MoERefConfig {
  dModel: number;
  dFF: number;
  numExperts: number;
  topK: number;
  scoreFunction: ScoreFunction;
  renormalize: boolean;
  /** Renormalise the weights over the kept choices, after capacity. */
  renormalizeKept?: boolean;
  expertBias?: ArrayLike<number>;
  numGroups?: number;
  topkGroups?: number;
  capacityFactor?: number;
  /** C = max(ceil(…), minCapacity) (default 0). */
  minCapacity?: number;
  dropPolicy: "probs" | "position" | "choice";
  padToCapacity: boolean;
  auxLossCoef: number;
  zLossCoef: number;
  activation: Kind;
  bias: boolean;
  sharedExpertFF: number;
  /** Residual MoE: the shared experts' output mixed in by softmax(x · coefficient.weight + coefficient.bias). */
  residual?: boolean;
}

/** Full (unsharded) parameters, row-major, as the layer names them without their prefix. */
export type MoERefParams = Record<string, Float64Array>;

export interface MoERefRank {
  x: Float64Array; // [T, D]
  dy: Float64Array; // [T, D]
  /** Jitter factors multiplying the gate's input, [T, D]; absent: none. */
  noise?: Float64Array;
  /** Noise added to the logits for the choice only, [T, E] (rsample); absent: none. */
  selectionNoise?: Float64Array;
  /** The first noiseFrom choices take the noiseless keys (top-2 second-expert sampling: 1). */
  noiseFrom?: number;
}

export interface MoERefResult {
  outputs: Float64Array[];
  /** coef · aux and coef · z per rank. */
  aux: number[];
  z: number[];
  auxUnscaled: number[];
  zUnscaled: number[];
  dx: Float64Array[];
  /** Gradients of Σ_r (⟨dy_r, y_r⟩ + lossScale·(aux_r + z_r)), full shapes. */
  grads: MoERefParams;
  tokensPerExpert: number[];
  localTokensPerExpert: number[][];
  dropped: number[];
  /** The smallest relative gap that decided a routing choice or a capacity drop (see routeRef). */
  margin: number;
}

function addInto(a: Float64Array, b: ArrayLike<number>): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

/** The smallest relative gap between the last kept and first dropped weight of an over-full expert. */
function dropMargin(
  indices: ArrayLike<number>,
  weights: ArrayLike<number>,
  E: number,
  capacity: number,
  policy: string,
): number {
  if (capacity < 0 || policy !== "probs") return Infinity;
  let m = Infinity;
  for (let e = 0; e < E; e++) {
    const ws: number[] = [];
    for (let i = 0; i < indices.length; i++) if (indices[i] === e) ws.push(weights[i]);
    if (ws.length <= capacity) continue;
    ws.sort((a, b) => b - a);
    const [hi, lo] = [ws[capacity - 1], ws[capacity]];
    if (hi !== lo) m = Math.min(m, (hi - lo) / Math.max(Math.abs(hi), 1e-30));
  }
  return m;
}

export function moeLayerRef(c: MoERefConfig, params: MoERefParams, ranks: MoERefRank[], lossScale = 1): MoERefResult {
  const { dModel: D, dFF: F, numExperts: E, topK: k, sharedExpertFF: S } = c;
  const F1 = isGatedKind(c.activation) ? 2 * F : F;
  const S1 = isGatedKind(c.activation) ? 2 * S : S;
  const grads: MoERefParams = {};
  for (const [name, v] of Object.entries(params)) grads[name] = new Float64Array(v.length);
  const out: MoERefResult = {
    outputs: [],
    aux: [],
    z: [],
    auxUnscaled: [],
    zUnscaled: [],
    dx: [],
    grads,
    tokensPerExpert: new Array(E).fill(0),
    localTokensPerExpert: [],
    dropped: [],
    margin: Infinity,
  };
  for (const rank of ranks) {
    const T = rank.x.length / D;
    const xr = rank.noise ? rank.x.map((v, i) => v * rank.noise![i]) : rank.x;
    const logits = gateRef(xr, params["router.weight"], T, D, E);
    const rt = routeRef(logits, T, E, {
      topK: k,
      scoreFunction: c.scoreFunction,
      renormalize: c.renormalize,
      expertBias: c.expertBias,
      numGroups: c.numGroups,
      topkGroups: c.topkGroups,
      selectionNoise: rank.selectionNoise,
      noiseFrom: rank.noiseFrom,
    });
    const pm = permuteRef(rank.x, rt.indices, rt.weights, T, D, k, {
      numExperts: E,
      capacityFactor: c.capacityFactor,
      minCapacity: c.minCapacity,
      dropPolicy: c.dropPolicy,
      padToCapacity: c.padToCapacity,
    });
    out.margin = Math.min(out.margin, rt.margin, dropMargin(rt.indices, rt.weights, E, pm.capacity, c.dropPolicy));
    const R = pm.numRows;
    const counts = pm.rowsPerExpert;
    const pre = groupedGemmRef(
      pm.rows,
      params["experts.w1"],
      counts,
      { R, K: D, N: F1, L: E },
      c.bias ? params["experts.b1"] : undefined,
    );
    const h = activationRef(pre, F1, c.activation);
    const ye = groupedGemmRef(
      h,
      params["experts.w2"],
      counts,
      { R, K: F, N: D, L: E },
      c.bias ? params["experts.b2"] : undefined,
    );
    const weights = c.renormalizeKept ? renormalizeKeptRef(rt.weights, pm.pairToRow, T, k) : rt.weights;
    let y = unpermuteRef(ye, pm.pairToRow, weights, T, k, D);

    let shared: { pre: Float64Array; h: Float64Array } | undefined;
    let mix: { moe: Float64Array; mlp: Float64Array; coef: Float64Array } | undefined;
    if (S > 0) {
      const spre = groupedGemmRef(
        rank.x,
        params["shared_experts.w1"],
        [T],
        { R: T, K: D, N: S1, L: 1 },
        c.bias ? params["shared_experts.b1"] : undefined,
      );
      const sh = activationRef(spre, S1, c.activation);
      const sy = groupedGemmRef(
        sh,
        params["shared_experts.w2"],
        [T],
        { R: T, K: S, N: D, L: 1 },
        c.bias ? params["shared_experts.b2"] : undefined,
      );
      if (c.residual) {
        const coef = residualCoefRef(rank.x, params["coefficient.weight"], params["coefficient.bias"], T, D);
        mix = { moe: y, mlp: sy, coef };
        y = residualMixRef(y, sy, coef, T, D);
      } else {
        addInto(y, sy);
      }
      shared = { pre: spre, h: sh };
    }
    out.outputs.push(y);
    out.auxUnscaled.push(rt.aux);
    out.zUnscaled.push(rt.z);
    out.aux.push(c.auxLossCoef * rt.aux);
    out.z.push(c.zLossCoef * rt.z);
    out.localTokensPerExpert.push(Array.from(rt.tokensPerExpert));
    rt.tokensPerExpert.forEach((n, e) => (out.tokensPerExpert[e] += n));
    out.dropped.push(pm.dropped);

    // Backward.
    const mb = mix ? residualMixBackwardRef(rank.dy, mix.moe, mix.mlp, mix.coef, T, D) : undefined;
    const cb = mb ? residualCoefBackwardRef(mb.dl, rank.x, params["coefficient.weight"], T, D) : undefined;
    if (mb && cb) {
      addInto(grads["coefficient.weight"], cb.dwc);
      addInto(grads["coefficient.bias"], mb.dbc);
    }
    const ub = unpermuteBackwardRef(mb ? mb.dMoe : rank.dy, ye, pm.pairToRow, weights, T, k, D, R);
    const dWeights = c.renormalizeKept
      ? renormalizeKeptBackwardRef(rt.weights, pm.pairToRow, ub.dWeights, T, k)
      : ub.dWeights;
    const g2 = groupedGemmBackwardRef(ub.dRows, h, params["experts.w2"], counts, { R, K: F, N: D, L: E });
    const dpre = activationBackwardRef(g2.dx, pre, F1, c.activation);
    const g1 = groupedGemmBackwardRef(dpre, pm.rows, params["experts.w1"], counts, { R, K: D, N: F1, L: E });
    addInto(grads["experts.w1"], g1.dw);
    addInto(grads["experts.w2"], g2.dw);
    if (c.bias) {
      addInto(grads["experts.b1"], g1.dbias);
      addInto(grads["experts.b2"], g2.dbias);
    }
    const dx = permuteBackwardRef(g1.dx, pm.pairToRow, T, k, D);
    const dl = routeBackwardRef(logits, T, E, rt.indices, rt.tokensPerExpert, dWeights, {
      scoreFunction: c.scoreFunction,
      renormalize: c.renormalize,
      auxLossGrad: c.auxLossCoef * lossScale,
      zLossGrad: c.zLossCoef * lossScale,
    });
    const gg = gateBackwardRef(xr, params["router.weight"], dl, T, D, E);
    addInto(grads["router.weight"], gg.dwg);
    addInto(dx, rank.noise ? gg.dx.map((v, i) => v * rank.noise![i]) : gg.dx);
    if (shared) {
      const s2 = groupedGemmBackwardRef(mb ? mb.dMlp : rank.dy, shared.h, params["shared_experts.w2"], [T], {
        R: T,
        K: S,
        N: D,
        L: 1,
      });
      const sdpre = activationBackwardRef(s2.dx, shared.pre, S1, c.activation);
      const s1 = groupedGemmBackwardRef(sdpre, rank.x, params["shared_experts.w1"], [T], { R: T, K: D, N: S1, L: 1 });
      addInto(dx, s1.dx);
      addInto(grads["shared_experts.w1"], s1.dw);
      addInto(grads["shared_experts.w2"], s2.dw);
      if (c.bias) {
        addInto(grads["shared_experts.b1"], s1.dbias);
        addInto(grads["shared_experts.b2"], s2.dbias);
      }
    }
    if (cb) addInto(dx, cb.dx);
    out.dx.push(dx);
  }
  return out;
}

/** The scalar whose gradients moeLayerRef returns, for finite differences. */
export function moeLossRef(c: MoERefConfig, params: MoERefParams, ranks: MoERefRank[], lossScale = 1): number {
  const r = moeLayerRef(c, params, ranks, lossScale);
  let L = 0;
  ranks.forEach((rank, i) => {
    for (let j = 0; j < rank.dy.length; j++) L += rank.dy[j] * r.outputs[i][j];
    L += lossScale * (r.aux[i] + r.z[i]);
  });
  return L;
}
