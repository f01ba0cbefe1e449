/**
 * route: the router after the gate (docs/math.md#route). Scores by
 * softmax or sigmoid, top-k choice (optionally biased and group-limited),
 * gate weights, tokens per expert, and the load-balancing and z losses.
 */
import { checkInteger, checkNumber, checkOneOf, checkSafeInteger, invalid } from "../errors";
import type { NativeChoiceOptions } from "../addon";
import type { Tensor } from "../tensor";
import { handle, native, optionalHandle, wrap } from "./common";

export type ScoreFunction = "softmax" | "sigmoid";
export const SCORE_FUNCTIONS: readonly ScoreFunction[] = ["softmax", "sigmoid"];

export interface RouteOptions {
  /** Experts chosen per token, 1 <= topK <= numExperts (the core checks the ranges, see checkRouteOptions). */
  topK: number;
  /** How logits become scores; default "softmax". */
  scoreFunction?: ScoreFunction;
  /** Divide each token's weights by their sum (plus 1e-20 for sigmoid); default false. */
  renormalize?: boolean;
  /** float32 [numExperts], added to the scores for the choice only, never to the weights. */
  expertBias?: Tensor;
  /** Group-limited choice: experts split into numGroups equal groups (with topkGroups). */
  numGroups?: number;
  /** Only experts in the topkGroups best groups may be chosen (with numGroups). */
  topkGroups?: number;
  /**
   * float32 [tokens, numExperts]: the choice takes the keys logits + noise (+ expertBias) instead of the
   * scores; weights and losses keep the scores (DeepSpeed's RSample with Gumbel noise). CPU only.
   */
  selectionNoise?: Tensor;
  /** With selectionNoise: the first noiseFrom choices take the noiseless keys (default 0; 1: DeepSpeed's top-2 sampling). */
  noiseFrom?: number;
}

export interface RouteResult {
  /** int32 [tokens, topK]: chosen experts, best first (ties: lower expert index). */
  indices: Tensor;
  /** float32 [tokens, topK]: the scores of the chosen experts (renormalised if asked). */
  weights: Tensor;
  /** float32 [tokens, numExperts]: softmax or sigmoid of the logits. */
  scores: Tensor;
  /** int32 [numExperts]: how many (token, choice) pairs chose each expert. */
  tokensPerExpert: Tensor;
  /** float32 []: E · Σ_e f_e · P_e, without its coefficient. */
  auxLoss: Tensor;
  /** float32 []: mean over tokens of logsumexp(logits)², without its coefficient. */
  zLoss: Tensor;
}

export interface RouteBackwardOptions {
  /** The scoreFunction of the forward; default "softmax". */
  scoreFunction?: ScoreFunction;
  /** The renormalize of the forward; default false. */
  renormalize?: boolean;
  /** d total / d auxLoss (the aux-loss coefficient times the upstream gradient); default 0. */
  auxLossGrad?: number;
  /** d total / d zLoss; default 0. */
  zLossGrad?: number;
}

function optionsObject(options: unknown, name: string): Record<string, unknown> {
  if (typeof options !== "object" || options === null || Array.isArray(options))
    throw invalid("an object", name, options);
  return options as Record<string, unknown>;
}

function optionalBoolean(name: string, value: unknown): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") throw invalid("a boolean", name, value);
  return value;
}

function scoreFunctionOf(value: unknown): ScoreFunction {
  return value === undefined ? "softmax" : checkOneOf("scoreFunction", value, SCORE_FUNCTIONS);
}

function optionalInteger(name: string, value: unknown): number | undefined {
  return value === undefined ? undefined : checkSafeInteger(name, value);
}

/** The choice options, type-checked; their ranges are the core's (cpp/ops/route.h). */
function choiceOptions(o: Record<string, unknown>): NativeChoiceOptions {
  return {
    topK: checkSafeInteger("topK", o.topK),
    numGroups: optionalInteger("numGroups", o.numGroups),
    topkGroups: optionalInteger("topkGroups", o.topkGroups),
  };
}

export type ChoiceOptions = Pick<RouteOptions, "topK" | "numGroups" | "topkGroups">;

/**
 * Throws the ERR_MOE_VALUE that route would throw for these options on logits of numExperts
 * columns (topK within numExperts, the group limit consistent), naming `op`; for checking a
 * configuration before there are logits.
 */
export function checkRouteOptions(op: string, numExperts: number, options: ChoiceOptions): void {
  const o = choiceOptions(optionsObject(options, `${op} options`));
  native().checkRouteOptions(op, { numExperts: checkSafeInteger("numExperts", numExperts), ...o });
}

/** Scores, top-k choice, weights, counts and losses of the router for logits float32 [tokens, numExperts]. */
export async function route(logits: Tensor, options: RouteOptions): Promise<RouteResult> {
  const o = optionsObject(options, "route options");
  const opts = {
    ...choiceOptions(o),
    scoreFunction: scoreFunctionOf(o.scoreFunction),
    renormalize: optionalBoolean("renormalize", o.renormalize),
    selectionNoise: optionalHandle(o.selectionNoise, "selectionNoise"),
    noiseFrom: o.noiseFrom === undefined ? 0 : checkInteger("noiseFrom", o.noiseFrom, 0, 2147483647),
  };
  const r = await native().route(handle(logits, "logits"), optionalHandle(o.expertBias, "expertBias"), opts);
  return {
    indices: wrap(r.indices),
    weights: wrap(r.weights),
    scores: wrap(r.scores),
    tokensPerExpert: wrap(r.tokensPerExpert),
    auxLoss: wrap(r.auxLoss),
    zLoss: wrap(r.zLoss),
  };
}

/**
 * d logits float32 [tokens, numExperts] of route: through the weights (dWeights float32 [tokens, topK],
 * or null when only the losses have gradients), through renormalisation and the score function, plus
 * auxLossGrad · d auxLoss / d logits and zLossGrad · d zLoss / d logits. The counts f_e, the expert
 * bias and the group choice carry no gradient. indices and tokensPerExpert are route's outputs.
 */
export async function routeBackward(
  logits: Tensor,
  indices: Tensor,
  tokensPerExpert: Tensor,
  dWeights: Tensor | null,
  options: RouteBackwardOptions = {},
): Promise<Tensor> {
  const o = optionsObject(options, "routeBackward options");
  const finite = (v: number) => Number.isFinite(v);
  const opts = {
    scoreFunction: scoreFunctionOf(o.scoreFunction),
    renormalize: optionalBoolean("renormalize", o.renormalize),
    auxLossGrad: o.auxLossGrad === undefined ? 0 : checkNumber("auxLossGrad", o.auxLossGrad, finite, "a finite number"),
    zLossGrad: o.zLossGrad === undefined ? 0 : checkNumber("zLossGrad", o.zLossGrad, finite, "a finite number"),
  };
  return wrap(
    await native().routeBackward(
      handle(logits, "logits"),
      handle(indices, "indices"),
      handle(tokensPerExpert, "tokensPerExpert"),
      optionalHandle(dWeights, "dWeights"),
      opts,
    ),
  );
}
