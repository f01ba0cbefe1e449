/**
 * Every malformed call of the public API raises a MoEError with the code that
 * says what was wrong (test/malformed-rows.ts generates most rows), in this
 * process: none crashes it, none is a TypeError, none reports a disposed
 * object as anything but ERR_MOE_DISPOSED, and no message repeats its own
 * prefix or quotes another library's internals.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import {
  AdamW,
  DeviceEvent,
  MoEError,
  MoELayer,
  Tensor,
  clipGradNorm,
  encodeSafetensors,
  expertParallelLayout,
  expertTensorName,
  formatInfo,
  info,
  initProcessGroup,
  launch,
  loadCheckpoint,
  memoryStats,
  ncclStatus,
  openStore,
  openStoreFromEnv,
  ops,
  readCheckpointIndex,
  readSafetensors,
  readSafetensorsHeader,
  rendezvousFromEnv,
  requireNccl,
  resolveConfig,
  saveCheckpoint,
  scope,
  shardFileName,
  parseForeignConfig,
  type MoELayerGroup,
  type MoELayerOptions,
} from "../lib";
import { parse as parseLaunchArgs } from "../lib/launch/args";
import { baselines, fx, generate, tensorArg as T, type Arg, type OptionsArg, type Row } from "./malformed-rows";
import { intTensor, normal, tensor } from "./util";

type Tn = Tensor;
const asT = (v: unknown) => v as Tn;
const TWO_53 = 2 ** 53;

const opts = (
  name: string,
  valid: () => Record<string, unknown>,
  fields: OptionsArg["fields"],
  optional = false,
): OptionsArg => ({ kind: "options", name, valid, fields, optional });

const value = (name: string, valid: () => unknown, bad: Array<[string, unknown, Row["code"], RegExp?]>): Arg => ({
  kind: "value",
  name,
  valid,
  bad: bad.map(([label, v, code, message]) => [label, () => v, code, message]),
});

const badKind: Array<[string, unknown, Row["code"]]> = [
  ["an unknown kind", "tanh", "ERR_MOE_VALUE"],
  ["null", null, "ERR_MOE_VALUE"],
  ["a number", 1, "ERR_MOE_VALUE"],
];
const LAYER: MoELayerOptions = { dModel: 8, dFF: 4, numExperts: 4, topK: 2 };

// ---- the ops, generated ------------------------------------------------------------------

const opRows: Row[] = [
  ...generate(
    "ops.gate",
    [T("x", "x", { wrongDtype: "int32", fixedRank: true }), T("wg", "wg", { wrongDtype: "int32", fixedRank: true })],
    (x, wg) => ops.gate(asT(x), asT(wg)),
  ),
  ...generate(
    "ops.gateBackward",
    [
      T("x", "x", { wrongDtype: "int32", fixedRank: true }),
      T("wg", "wg", { wrongDtype: "int32", fixedRank: true }),
      T("dlogits", "logits", { wrongDtype: "int32", fixedRank: true }),
    ],
    (x, wg, d) => ops.gateBackward(asT(x), asT(wg), asT(d)),
  ),
  ...generate(
    "ops.route",
    [
      T("logits", "logits", { wrongDtype: "int32", fixedRank: true }),
      opts("options", () => ({ topK: 2 }), [
        { key: "topK", type: "int", min: 1, required: true },
        { key: "scoreFunction", type: "oneOf" },
        { key: "renormalize", type: "bool" },
        { key: "expertBias", type: "tensor", arg: { valid: () => fx.t.bias, wrongDtype: "int32", fixedRank: true } },
        { key: "numGroups", type: "int", min: 1 },
        { key: "topkGroups", type: "int", min: 1 },
      ]),
    ],
    (l, o) => ops.route(asT(l), o as ops.RouteOptions),
  ),
  ...generate(
    "ops.routeBackward",
    [
      T("logits", "logits", { wrongDtype: "int32", fixedRank: true }),
      T("indices", "indices", { wrongDtype: "float32", fixedRank: true }),
      T("tokensPerExpert", "tokensPerExpert", { wrongDtype: "float32", fixedRank: true }),
      T("dWeights", "weights", { wrongDtype: "int32", fixedRank: true, optional: true }),
      opts(
        "options",
        () => ({}),
        [
          { key: "scoreFunction", type: "oneOf" },
          { key: "renormalize", type: "bool" },
          { key: "auxLossGrad", type: "number" },
          { key: "zLossGrad", type: "number" },
        ],
        true,
      ),
    ],
    (l, i, c, d, o) => ops.routeBackward(asT(l), asT(i), asT(c), d as Tn | null, o as ops.RouteBackwardOptions),
  ),
  ...generate(
    "ops.checkRouteOptions",
    [
      value("op", () => "test", [
        ["a number", 5, "ERR_MOE_VALUE"],
        ["null", null, "ERR_MOE_VALUE"],
      ]),
      value("numExperts", () => 4, [
        ["a string", "4", "ERR_MOE_VALUE"],
        ["null", null, "ERR_MOE_VALUE"],
        ["0", 0, "ERR_MOE_VALUE"],
        ["2^60", 2 ** 60, "ERR_MOE_VALUE", /2\^53 - 1/],
      ]),
      opts("options", () => ({ topK: 2 }), [
        { key: "topK", type: "int", min: 1, required: true },
        { key: "numGroups", type: "int", min: 1 },
        { key: "topkGroups", type: "int", min: 1 },
      ]),
    ],
    (op, n, o) => ops.checkRouteOptions(op as string, n as number, o as ops.ChoiceOptions),
  ),
  ...generate(
    "ops.permute",
    [
      T("x", "x", { wrongDtype: "int32", fixedRank: true }),
      T("indices", "indices", { wrongDtype: "float32", fixedRank: true }),
      T("weights", "weights", { wrongDtype: "int32", fixedRank: true }),
      opts("options", () => ({ numExperts: 4 }), [
        { key: "numExperts", type: "int", min: 1, max: 2 ** 31 - 1, required: true },
        { key: "capacityFactor", type: "number", negative: false, extra: [["0", 0]] },
        { key: "dropPolicy", type: "oneOf" },
        { key: "padToCapacity", type: "bool" },
      ]),
    ],
    (x, i, w, o) => ops.permute(asT(x), asT(i), asT(w), o as ops.PermuteOptions),
  ),
  ...generate(
    "ops.permuteBackward",
    [
      T("dRows", "rows", { wrongDtype: "int32", fixedRank: true }),
      T("pairToRow", "pairToRow", { wrongDtype: "float32", fixedRank: true }),
    ],
    (d, p) => ops.permuteBackward(asT(d), asT(p)),
  ),
  ...generate(
    "ops.unpermute",
    [
      T("rows", "rows", { wrongDtype: "int32", fixedRank: true }),
      T("pairToRow", "pairToRow", { wrongDtype: "float32", fixedRank: true }),
      T("weights", "weights", { wrongDtype: "int32", fixedRank: true }),
    ],
    (r, p, w) => ops.unpermute(asT(r), asT(p), asT(w)),
  ),
  ...generate(
    "ops.unpermuteBackward",
    [
      T("dy", "x", { wrongDtype: "int32", fixedRank: true }),
      T("rows", "rows", { wrongDtype: "int32", fixedRank: true }),
      T("pairToRow", "pairToRow", { wrongDtype: "float32", fixedRank: true }),
      T("weights", "weights", { wrongDtype: "int32", fixedRank: true }),
    ],
    (d, r, p, w) => ops.unpermuteBackward(asT(d), asT(r), asT(p), asT(w)),
  ),
  ...generate(
    "ops.residualMix",
    [
      T("moe", "x", { wrongDtype: "int32", fixedRank: true }),
      T("mlp", "mlp", { wrongDtype: "int32", fixedRank: true }),
      T("logits", "clogits", { wrongDtype: "int32", fixedRank: true }),
      T("bias", "cbias", { wrongDtype: "int32", fixedRank: true }),
    ],
    (m, p, l, b) => ops.residualMix(asT(m), asT(p), asT(l), asT(b)),
  ),
  ...generate(
    "ops.residualMixBackward",
    [
      T("dy", "x", { wrongDtype: "int32", fixedRank: true }),
      T("moe", "x", { wrongDtype: "int32", fixedRank: true }),
      T("mlp", "mlp", { wrongDtype: "int32", fixedRank: true }),
      T("logits", "clogits", { wrongDtype: "int32", fixedRank: true }),
      T("bias", "cbias", { wrongDtype: "int32", fixedRank: true }),
    ],
    (d, m, p, l, b) => ops.residualMixBackward(asT(d), asT(m), asT(p), asT(l), asT(b)),
  ),
  ...generate(
    "ops.renormalizeKept",
    [
      T("weights", "weights", { wrongDtype: "int32", fixedRank: true }),
      T("pairToRow", "pairToRow", { wrongDtype: "float32", fixedRank: true }),
    ],
    (w, p) => ops.renormalizeKept(asT(w), asT(p)),
  ),
  ...generate(
    "ops.renormalizeKeptBackward",
    [
      T("weights", "weights", { wrongDtype: "int32", fixedRank: true }),
      T("pairToRow", "pairToRow", { wrongDtype: "float32", fixedRank: true }),
      T("dKept", "weights", { wrongDtype: "int32", fixedRank: true }),
    ],
    (w, p, d) => ops.renormalizeKeptBackward(asT(w), asT(p), asT(d)),
  ),
  ...generate(
    "ops.groupedGemm",
    [
      T("x", "gx", { wrongDtype: "int32", fixedRank: true }),
      T("w", "gw", { wrongDtype: "int32", fixedRank: true }),
      T("rowsPerExpert", "gcounts", { wrongDtype: "float32", fixedRank: true }),
      opts(
        "options",
        () => ({}),
        [{ key: "bias", type: "tensor", arg: { valid: () => fx.t.gbias, wrongDtype: "int32", fixedRank: true } }],
        true,
      ),
    ],
    (x, w, c, o) => ops.groupedGemm(asT(x), asT(w), asT(c), o as ops.GroupedGemmOptions),
  ),
  ...generate(
    "ops.groupedGemmBackward",
    [
      T("dy", "gdy", { wrongDtype: "int32", fixedRank: true }),
      T("x", "gx", { wrongDtype: "int32", fixedRank: true }),
      T("w", "gw", { wrongDtype: "int32", fixedRank: true }),
      T("rowsPerExpert", "gcounts", { wrongDtype: "float32", fixedRank: true }),
      opts(
        "options",
        () => ({}),
        [
          { key: "needDx", type: "bool" },
          { key: "needDw", type: "bool" },
          { key: "needDbias", type: "bool" },
        ],
        true,
      ),
    ],
    (d, x, w, c, o) => ops.groupedGemmBackward(asT(d), asT(x), asT(w), asT(c), o as ops.GroupedGemmBackwardOptions),
  ),
  ...generate(
    "ops.activation",
    [T("x", "ax", { wrongDtype: "int32" }), value("kind", () => "swiglu", badKind)],
    (x, k) => ops.activation(asT(x), k as ops.ActivationKind),
  ),
  ...generate(
    "ops.activationBackward",
    [
      T("dh", "adh", { wrongDtype: "int32" }),
      T("x", "ax", { wrongDtype: "int32" }),
      value("kind", () => "swiglu", badKind),
    ],
    (d, x, k) => ops.activationBackward(asT(d), asT(x), k as ops.ActivationKind),
  ),
  ...generate(
    "ops.adamw",
    [
      T("param", "p3", { wrongDtype: "int32" }),
      T("grad", "g3", { wrongDtype: "int32" }),
      T("expAvg", "m3", { wrongDtype: "int32" }),
      T("expAvgSq", "v3", { wrongDtype: "int32" }),
      opts("options", () => ({ lr: 0.1, step: 1 }), [
        { key: "lr", type: "number", negative: false, required: true },
        { key: "beta1", type: "number", extra: [["1", 1]] },
        { key: "beta2", type: "number", extra: [["1", 1]] },
        { key: "eps", type: "number", negative: false },
        { key: "weightDecay", type: "number", negative: false },
        { key: "step", type: "int", min: 1, required: true },
      ]),
    ],
    (p, g, m, v, o) => ops.adamw(asT(p), asT(g), asT(m), asT(v), o as ops.AdamWStepOptions),
  ),
  ...generate("ops.add", [T("a", "a23", { wrongDtype: "int32" }), T("b", "b23", { wrongDtype: "int32" })], (a, b) =>
    ops.add(asT(a), asT(b)),
  ),
  ...generate(
    "ops.axpby",
    [
      T("y", "a23", { wrongDtype: "int32" }),
      T("x", "b23", { wrongDtype: "int32", optional: true }),
      opts(
        "options",
        () => ({}),
        [
          { key: "alpha", type: "number" },
          { key: "beta", type: "number" },
        ],
        true,
      ),
    ],
    (y, x, o) => ops.axpby(asT(y), x as Tn | null, o as ops.AxpbyOptions),
  ),
  ...generate(
    "ops.scaleInPlace",
    [
      T("y", "a23", { wrongDtype: "int32" }),
      value("s", () => 2, [
        ["NaN", NaN, "ERR_MOE_VALUE"],
        ["a string", "2", "ERR_MOE_VALUE"],
        ["null", null, "ERR_MOE_VALUE"],
        ["Infinity", Infinity, "ERR_MOE_VALUE"],
      ]),
    ],
    (y, s) => ops.scaleInPlace(asT(y), s as number),
  ),
  ...generate(
    "ops.copyInto",
    [T("y", "a23", { wrongDtype: "int32" }), T("x", "b23", { wrongDtype: "int32" })],
    (y, x) => ops.copyInto(asT(y), asT(x)),
  ),
  ...generate("ops.zeroInPlace", [T("y", "a23", { wrongDtype: "int32" })], (y) => ops.zeroInPlace(asT(y))),
  ...generate(
    "ops.sumSquares",
    [
      value("tensors", () => [fx.t.a23, fx.t.b23], [
        ["null", null, "ERR_MOE_VALUE"],
        ["a tensor, not an array", "tensor", "ERR_MOE_VALUE"],
        ["an array holding a number", [1], "ERR_MOE_VALUE"],
        ["an array holding null", [null], "ERR_MOE_VALUE"],
      ]),
    ],
    (t) => ops.sumSquares(t as Tn[]),
  ),
  ...generate(
    "ops.fillRandom",
    [
      T("t", "r10", { wrongDtype: "int32" }),
      opts("options", () => ({ seed: 1 }), [
        { key: "seed", type: "int", min: 0, required: true },
        { key: "key", type: "int", min: 0, max: 2 ** 32 - 1 },
        { key: "distribution", type: "oneOf" },
        { key: "mean", type: "number" },
        { key: "std", type: "number", negative: false },
        { key: "sliceSize", type: "int", min: 0 },
        { key: "firstSlice", type: "int", min: 0, max: 2 ** 32 - 1 },
      ]),
    ],
    (t, o) => ops.fillRandom(asT(t), o as ops.FillRandomOptions),
  ),
  ...generate(
    "ops.jitter",
    [
      T("x", "x", { wrongDtype: "int32" }),
      opts("options", () => ({ eps: 0.1, seed: 1 }), [
        {
          key: "eps",
          type: "number",
          required: true,
          extra: [
            ["1", 1],
            ["-0.1", -0.1],
          ],
        },
        { key: "seed", type: "int", min: 0, required: true },
        { key: "key", type: "int", min: 0, max: 2 ** 32 - 1 },
        { key: "slice", type: "int", min: 0, max: 2 ** 32 - 1 },
      ]),
    ],
    (x, o) => ops.jitter(asT(x), o as ops.JitterOptions),
  ),
  ...generate(
    "ops.chunkTranspose",
    [T("x", "cx"), T("counts", "ccounts", { wrongDtype: "float32", fixedRank: true })],
    (x, c) => ops.chunkTranspose(asT(x), asT(c)),
  ),
  ...generate(
    "ops.expertBiasUpdate",
    [
      T("bias", "bias", { wrongDtype: "int32", fixedRank: true }),
      T("load", "load", { wrongDtype: "int64", fixedRank: true }),
      value("rate", () => 0.01, [
        ["-1", -1, "ERR_MOE_VALUE"],
        ["NaN", NaN, "ERR_MOE_VALUE"],
        ["a string", "0.1", "ERR_MOE_VALUE"],
        ["null", null, "ERR_MOE_VALUE"],
      ]),
    ],
    (b, l, r) => ops.expertBiasUpdate(asT(b), asT(l), r as number),
  ),
  ...generate(
    "ops.reshape",
    [
      T("t", "a23"),
      value("shape", () => [3, 2], [
        ["null", null, "ERR_MOE_SHAPE"],
        ["another element count", [5], "ERR_MOE_SHAPE", /6|5/],
        ["a negative dimension", [-3, -2], "ERR_MOE_SHAPE"],
        ["a fraction", [1.5, 4], "ERR_MOE_SHAPE"],
        ["a string", "32", "ERR_MOE_SHAPE"],
        ["2^53", [TWO_53], "ERR_MOE_SHAPE"],
      ]),
    ],
    (t, s) => ops.reshape(asT(t), s as number[]),
  ),
];

// Calls that no single argument makes wrong: the arguments disagree with each other.
const mismatchRows: Row[] = [
  { name: "ops.add: shapes differ", call: () => ops.add(fx.t.a23, fx.t.x), code: "ERR_MOE_SHAPE" },
  { name: "ops.gate: dModel differs", call: () => ops.gate(fx.t.x, fx.t.logits), code: "ERR_MOE_SHAPE" },
  {
    name: "ops.route: topK above numExperts",
    call: () => ops.route(fx.t.logits, { topK: 5 }),
    code: "ERR_MOE_VALUE",
    message: /topK <= numExperts \(4\)/,
  },
  {
    name: "ops.route: topK 2^40 (an integer past int32) is refused, not truncated",
    call: () => ops.route(fx.t.logits, { topK: 2 ** 40 }),
    code: "ERR_MOE_VALUE",
    message: /1099511627776/,
  },
  {
    name: "ops.permute: padToCapacity without capacityFactor",
    call: () => ops.permute(fx.t.x, fx.t.indices, fx.t.weights, { numExperts: 4, padToCapacity: true }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ops.permute: an index beyond numExperts",
    call: () => ops.permute(fx.t.x, fx.t.indices, fx.t.weights, { numExperts: 1 }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ops.fillRandom: sliceSize not dividing the element count",
    call: () => ops.fillRandom(fx.t.r10, { seed: 1, sliceSize: 3 }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ops.fillRandom: uniform high below low",
    call: () => ops.fillRandom(fx.t.r10, { seed: 1, distribution: "uniform", low: 1, high: 0 }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ops.groupedGemm: counts not summing to the rows",
    call: () => ops.groupedGemm(fx.t.gx, fx.t.gw, intTensor([1, 1], [2])),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ops.groupedGemm: a negative count",
    call: () => ops.groupedGemm(fx.t.gx, fx.t.gw, intTensor([-1, 7], [2])),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ops.activation: swiglu on an odd last dim",
    call: () => ops.activation(tensor([1, 2, 3], [1, 3]), "swiglu"),
    code: "ERR_MOE_SHAPE",
  },
  {
    name: "ops.chunkTranspose: counts not summing to the rows",
    call: () => ops.chunkTranspose(fx.t.cx, intTensor([1, 1, 1, 1], [2, 2])),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ops.sumSquares: a disposed tensor in the list",
    call: () => ops.sumSquares([fx.t.a23, fx.gone]),
    code: "ERR_MOE_DISPOSED",
    message: /tensors\[1\]/,
  },
];

// ---- tensors ------------------------------------------------------------------------------

const shapeBads: Array<[string, unknown]> = [
  ["null", null],
  ["undefined", undefined],
  ["a negative dimension", [2, -1]],
  ["a fraction", [1.5]],
  ["NaN", [NaN]],
  ["a string dimension", ["2"]],
  ["a string", "22"],
  ["2^53", [TWO_53]],
  ["Infinity", [Infinity]],
];
const optionBads: Array<[string, unknown, Row["code"], RegExp?]> = [
  ["null options", null, "ERR_MOE_VALUE"],
  ["a number for options", 5, "ERR_MOE_VALUE"],
  ["dtype null", { dtype: null }, "ERR_MOE_DTYPE", /dtype/],
  ["dtype float64", { dtype: "float64" }, "ERR_MOE_DTYPE"],
  ["dtype a number", { dtype: 1 }, "ERR_MOE_DTYPE"],
  ["device null", { device: null }, "ERR_MOE_DEVICE"],
  ["device gpu", { device: "gpu" }, "ERR_MOE_DEVICE"],
  ["device cuda:x", { device: "cuda:x" }, "ERR_MOE_DEVICE"],
  ["device cuda:-1", { device: "cuda:-1" }, "ERR_MOE_DEVICE"],
];

const factories: Array<[string, (shape: unknown, o?: unknown) => Tensor]> = [
  ["Tensor.zeros", (s, o) => Tensor.zeros(s as number[], o as object)],
  ["Tensor.empty", (s, o) => Tensor.empty(s as number[], o as object)],
  ["Tensor.from", (s, o) => Tensor.from([1, 2], s as number[], o as object)],
];

const INT32_RANGE = /\[-2147483648, 2147483647\]/;
const tensorRows: Row[] = [
  ...factories.flatMap(([fn, make]): Row[] => [
    ...shapeBads.map(([label, s]): Row => ({
      name: `${fn}: shape ${label}`,
      call: () => make(s),
      code: "ERR_MOE_SHAPE",
    })),
    ...optionBads.map(([label, o, code, message]): Row => ({
      name: `${fn}: ${label}`,
      call: () => make([2], o),
      code,
      message,
    })),
  ]),
  ...(
    [
      ["an array of strings", ["a", "b"], undefined, "ERR_MOE_VALUE", /data\[0\]/],
      ["a string among numbers", [1, "2"], undefined, "ERR_MOE_VALUE", /data\[1\]/],
      ["an object among numbers", [1, {}], undefined, "ERR_MOE_VALUE"],
      ["a boolean among numbers", [1, true], undefined, "ERR_MOE_VALUE"],
      ["a BigInt in a plain array", [1, 2n], undefined, "ERR_MOE_VALUE"],
      ["null among numbers", [1, null], undefined, "ERR_MOE_VALUE"],
      // eslint-disable-next-line no-sparse-arrays -- a hole is what this row passes
      ["a hole in the array", [1, , 3], undefined, "ERR_MOE_VALUE"],
      ["strings for int32", ["1", "2"], "int32", "ERR_MOE_VALUE"],
      ["2^31 for int32", [1, 2 ** 31], "int32", "ERR_MOE_VALUE", INT32_RANGE],
      ["-2^31 - 1 for int32", [-(2 ** 31) - 1, 0], "int32", "ERR_MOE_VALUE", INT32_RANGE],
      ["a fraction for int32", [1.5, 0], "int32", "ERR_MOE_VALUE"],
      ["NaN for int32", [NaN, 0], "int32", "ERR_MOE_VALUE"],
      ["Infinity for int64", [Infinity, 0], "int64", "ERR_MOE_VALUE"],
      ["2^53 for int64", [TWO_53, 0], "int64", "ERR_MOE_VALUE", /2\^53 - 1/],
      ["a fraction for int64", [0.5, 0], "int64", "ERR_MOE_VALUE"],
      [
        "a BigInt64Array beyond int32 for int32",
        BigInt64Array.of(1n, 2n ** 40n),
        "int32",
        "ERR_MOE_VALUE",
        /1099511627776/,
      ],
      ["a BigInt64Array below int32 for int32", BigInt64Array.of(-(2n ** 31n) - 1n, 0n), "int32", "ERR_MOE_VALUE"],
      ["a BigInt64Array for float32", BigInt64Array.of(1n, 2n), "float32", "ERR_MOE_DTYPE"],
      ["a BigInt64Array for bfloat16", BigInt64Array.of(1n, 2n), "bfloat16", "ERR_MOE_DTYPE"],
      ["an Int32Array for float32", Int32Array.of(1, 2), "float32", "ERR_MOE_DTYPE"],
      ["a Float32Array for int32", Float32Array.of(1, 2), "int32", "ERR_MOE_DTYPE"],
      ["a Float64Array for int64", Float64Array.of(1, 2), "int64", "ERR_MOE_DTYPE"],
      ["a Uint16Array for float32", Uint16Array.of(1, 2), "float32", "ERR_MOE_DTYPE"],
      ["a Uint8Array", Uint8Array.of(1, 2), undefined, "ERR_MOE_VALUE"],
      ["null data", null, undefined, "ERR_MOE_VALUE"],
      ["a string", "12", undefined, "ERR_MOE_VALUE"],
      ["an object", { 0: 1, 1: 2, length: 2 }, undefined, "ERR_MOE_VALUE"],
      ["fewer elements than the shape", [1], undefined, "ERR_MOE_SHAPE"],
      ["more elements than the shape", [1, 2, 3], undefined, "ERR_MOE_SHAPE"],
    ] as Array<[string, unknown, string | undefined, Row["code"], RegExp?]>
  ).map(([label, data, dtype, code, message]): Row => ({
    name: `Tensor.from: ${label}`,
    call: () => Tensor.from(data as number[], [2], dtype ? { dtype: dtype as "int32" } : {}),
    code,
    message,
  })),
  ...(["toArray", "toFloat32", "toInt32", "toBits", "item", "to", "clone"] as const).map((m): Row => ({
    name: `Tensor.prototype.${m} on a disposed tensor`,
    call: () => (fx.gone[m] as (d?: string) => unknown).call(fx.gone, "cpu"),
    code: "ERR_MOE_DISPOSED",
  })),
  { name: "Tensor.prototype.toInt32 on a float tensor", call: () => fx.t.x.toInt32(), code: "ERR_MOE_DTYPE" },
  { name: "Tensor.prototype.toBits on a float32 tensor", call: () => fx.t.x.toBits(), code: "ERR_MOE_DTYPE" },
  { name: "Tensor.prototype.item on two elements", call: () => fx.t.bias.item(), code: "ERR_MOE_SHAPE" },
  { name: "Tensor.prototype.to an unknown device", call: () => fx.t.x.to("gpu" as "cpu"), code: "ERR_MOE_DEVICE" },
  { name: "Tensor.prototype.to null", call: () => fx.t.x.to(null as unknown as "cpu"), code: "ERR_MOE_DEVICE" },
  { name: "scope: a number for fn", call: () => scope(5 as unknown as () => void), code: "ERR_MOE_VALUE" },
  { name: "scope: null for fn", call: () => scope(null as unknown as () => void), code: "ERR_MOE_VALUE" },
  { name: "memoryStats: an unknown device", call: () => memoryStats("gpu" as "cpu"), code: "ERR_MOE_DEVICE" },
  { name: "memoryStats: null", call: () => memoryStats(null as unknown as "cpu"), code: "ERR_MOE_DEVICE" },
  { name: "DeviceEvent.record: cpu", call: () => DeviceEvent.record("cpu"), code: "ERR_MOE_DEVICE" },
  {
    name: "DeviceEvent.record: null",
    call: () => DeviceEvent.record(null as unknown as "cpu"),
    code: "ERR_MOE_DEVICE",
  },
  { name: "ops.hashName: null", call: () => ops.hashName(null as unknown as string), code: "ERR_MOE_VALUE" },
  { name: "ops.hashName: a number", call: () => ops.hashName(5 as unknown as string), code: "ERR_MOE_VALUE" },
];

// ---- the layer, the optimizer, clipping ---------------------------------------------------------

const layerRows: Row[] = [
  ...generate(
    "new MoELayer",
    [
      opts("config", () => ({ ...LAYER }), [
        { key: "dModel", type: "int", min: 1, required: true },
        { key: "dFF", type: "int", min: 1, required: true },
        { key: "numExperts", type: "int", min: 1, required: true },
        { key: "topK", type: "int", min: 1 },
        { key: "epSize", type: "int", min: 1 },
        { key: "etpSize", type: "int", min: 1 },
        { key: "scoreFunction", type: "oneOf" },
        { key: "renormalize", type: "bool" },
        { key: "expertBias", type: "bool" },
        { key: "expertBiasUpdateRate", type: "number", negative: false },
        { key: "numGroups", type: "int", min: 1 },
        { key: "topkGroups", type: "int", min: 1 },
        { key: "capacityFactor", type: "number", negative: false, nullAllowed: true, extra: [["0", 0]] },
        { key: "dropPolicy", type: "oneOf" },
        { key: "padToCapacity", type: "bool" },
        { key: "auxLossCoef", type: "number", negative: false },
        { key: "zLossCoef", type: "number", negative: false },
        { key: "jitter", type: "number", negative: false, extra: [["1", 1]] },
        { key: "activation", type: "oneOf" },
        { key: "bias", type: "bool" },
        { key: "sharedExpertFF", type: "int", min: 0 },
        { key: "dtype", type: "oneOf" },
        { key: "seed", type: "int", min: 0 },
        { key: "initStd", type: "number", negative: false },
        { key: "outputInitStd", type: "number", negative: false },
      ]),
    ],
    (c) => new MoELayer(c as MoELayerOptions).dispose(),
  ),
  {
    name: "new MoELayer: device gpu",
    call: () => new MoELayer({ ...LAYER, device: "gpu" as "cpu" }),
    code: "ERR_MOE_DEVICE",
  },
  {
    name: "new MoELayer: device null",
    call: () => new MoELayer({ ...LAYER, device: null as unknown as "cpu" }),
    code: "ERR_MOE_DEVICE",
  },
  {
    name: "new MoELayer: an unknown option",
    call: () => new MoELayer({ ...LAYER, topk: 2 } as MoELayerOptions),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "new MoELayer: epSize not dividing numExperts",
    call: () => new MoELayer({ ...LAYER, epSize: 3 }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "new MoELayer: a name with a space",
    call: () => new MoELayer({ ...LAYER, name: "a b" }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "new MoELayer: a group that is a number",
    call: () => new MoELayer(LAYER, 5 as unknown as MoELayerGroup),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "new MoELayer: a group without collectives",
    call: () => new MoELayer(LAYER, { rank: 0, size: 1 } as unknown as MoELayerGroup),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "new MoELayer: padToCapacity without capacityFactor",
    call: () => new MoELayer({ ...LAYER, padToCapacity: true }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "new MoELayer: dModel 2^60 states the real limit",
    call: () => new MoELayer({ ...LAYER, dModel: 2 ** 60 }),
    code: "ERR_MOE_VALUE",
    message: /\[1, 2\^53 - 1\]/,
  },
  ...generate(
    "MoELayer.forward",
    [
      T("x", "x", { wrongDtype: "int32", fixedRank: true }),
      opts("options", () => ({}), [{ key: "training", type: "bool" }], true),
    ],
    (x, o) => fx.layer.forward(asT(x), o as object),
  ),
  {
    name: "MoELayer.create: on a destroyed process group",
    call: () => MoELayer.create({ ...LAYER, epSize: 1 }, fx.groupGone),
    code: "ERR_MOE_DISPOSED",
  },
  {
    name: "MoELayer.create: config null",
    call: () => MoELayer.create(null as unknown as MoELayerOptions),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "formatInfo: null",
    call: () => formatInfo(null as unknown as ReturnType<typeof info>),
    code: "ERR_MOE_VALUE",
  },
  { name: "formatInfo: an empty object", call: () => formatInfo({} as ReturnType<typeof info>), code: "ERR_MOE_VALUE" },
  { name: "MoELayer.forward: x of another width", call: () => fx.layer.forward(fx.t.a23), code: "ERR_MOE_SHAPE" },
  ...generate(
    "MoELayer.backward",
    [
      T("gradOutput", "x", { fixedRank: true }),
      opts("options", () => ({}), [{ key: "lossScale", type: "number" }], true),
    ],
    (g, o) => fx.layer.backward(asT(g), o as object),
  ),
  {
    name: "MoELayer.backward: gradOutput of another shape",
    call: () => fx.layer.backward(fx.t.a23),
    code: "ERR_MOE_SHAPE",
  },
  {
    name: "MoELayer.backward of a forward whose saved tensors a scope freed",
    call: async () => {
      await scope(async () => {
        (await fx.layer.forward(fx.t.x)).output.dispose();
      });
      return fx.layer.backward(fx.t.x);
    },
    code: "ERR_MOE_DISPOSED",
    message: /saved forward/,
  },
  ...(
    [
      ["forward", (l: MoELayer) => l.forward(fx.t.x)],
      ["backward", (l: MoELayer) => l.backward(fx.t.x)],
      ["parameters", (l: MoELayer) => l.parameters()],
      ["buffers", (l: MoELayer) => l.buffers()],
      ["zeroGrad", (l: MoELayer) => l.zeroGrad()],
      ["clipGradNorm", (l: MoELayer) => l.clipGradNorm(1)],
      ["updateExpertBias", (l: MoELayer) => l.updateExpertBias()],
      ["save", (l: MoELayer) => l.save(path.join(fx.work, "never-saved"))],
      ["load", (l: MoELayer) => l.load(fx.ckpt)],
    ] as Array<[string, (l: MoELayer) => unknown]>
  ).map(([m, f]): Row => ({
    name: `MoELayer.prototype.${m} on a disposed layer`,
    call: () => f(fx.layerGone),
    code: "ERR_MOE_DISPOSED",
    message: /MoELayer/,
  })),
  {
    name: "MoELayer.clipGradNorm: maxNorm 0",
    call: () => fx.layer.clipGradNorm(0),
    code: "ERR_MOE_VALUE",
  },
  ...generate(
    "new AdamW",
    [
      value("params", () => fx.layer.parameters(), [
        ["null", null, "ERR_MOE_VALUE"],
        ["a number", 5, "ERR_MOE_VALUE"],
        ["an array holding null", [null], "ERR_MOE_VALUE"],
        ["an entry without tensors", [{ param: 1, grad: 2 }], "ERR_MOE_VALUE"],
      ]),
      opts("options", () => ({ lr: 0.01 }), [
        { key: "lr", type: "number", negative: false, required: true },
        {
          key: "beta1",
          type: "number",
          extra: [
            ["1", 1],
            ["-0.1", -0.1],
          ],
        },
        { key: "beta2", type: "number", extra: [["1", 1]] },
        { key: "eps", type: "number", negative: false },
        { key: "weightDecay", type: "number", negative: false },
      ]),
    ],
    (p, o) => new AdamW(p as [], o as { lr: number }),
  ),
  {
    name: "AdamW.step on a disposed optimizer",
    call: () => fx.optGone.step(),
    code: "ERR_MOE_DISPOSED",
    message: /AdamW/,
  },
  { name: "AdamW.zeroGrad on a disposed optimizer", call: () => fx.optGone.zeroGrad(), code: "ERR_MOE_DISPOSED" },
  {
    name: "AdamW.setStepCount on a disposed optimizer",
    call: () => fx.optGone.setStepCount(1),
    code: "ERR_MOE_DISPOSED",
  },
  {
    name: "AdamW.state on a disposed optimizer",
    call: () => fx.optGone.state(fx.optGone.params[0]),
    code: "ERR_MOE_DISPOSED",
  },
  {
    name: "AdamW.step over a disposed layer's parameters",
    call: () => fx.optOfGone.step(),
    code: "ERR_MOE_DISPOSED",
    message: /router\.weight/,
  },
  {
    name: "AdamW.zeroGrad over a disposed layer's parameters",
    call: () => fx.optOfGone.zeroGrad(),
    code: "ERR_MOE_DISPOSED",
  },
  ...(
    [
      ["-1", -1],
      ["a fraction", 1.5],
      ["a string", "1"],
      ["null", null],
      ["2^53", TWO_53],
    ] as Array<[string, unknown]>
  ).map(([label, v]): Row => ({
    name: `AdamW.setStepCount: ${label}`,
    call: () => fx.opt.setStepCount(v as number),
    code: "ERR_MOE_VALUE",
  })),
  ...generate(
    "clipGradNorm",
    [
      value("params", () => fx.layer.parameters(), [
        ["null", null, "ERR_MOE_VALUE"],
        ["a number", 5, "ERR_MOE_VALUE"],
        ["an array holding null", [null], "ERR_MOE_VALUE"],
        ["an entry without a tensor", [{ grad: 1 }], "ERR_MOE_VALUE"],
        ["an entry whose grad is undefined", [{ grad: undefined }], "ERR_MOE_VALUE"],
      ]),
      value("maxNorm", () => 1, [
        ["0", 0, "ERR_MOE_VALUE"],
        ["-1", -1, "ERR_MOE_VALUE"],
        ["NaN", NaN, "ERR_MOE_VALUE"],
        ["Infinity", Infinity, "ERR_MOE_VALUE"],
        ["a string", "1", "ERR_MOE_VALUE"],
      ]),
    ],
    (p, m) => clipGradNorm(p as [], m as number),
  ),
  {
    name: "clipGradNorm: a disposed gradient",
    call: () => clipGradNorm([{ grad: fx.gone }], 1),
    code: "ERR_MOE_DISPOSED",
  },
  { name: "resolveConfig: null", call: () => resolveConfig(null as unknown as MoELayerOptions), code: "ERR_MOE_VALUE" },
  {
    name: "parseForeignConfig: null",
    call: () => parseForeignConfig(null as unknown as object as Record<string, unknown>),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "parseForeignConfig: a number",
    call: () => parseForeignConfig(5 as unknown as Record<string, unknown>),
    code: "ERR_MOE_VALUE",
  },
  { name: "parseForeignConfig: moe not an object", call: () => parseForeignConfig({ moe: 5 }), code: "ERR_MOE_VALUE" },
  {
    name: "parseForeignConfig: hidden_size a string",
    call: () => parseForeignConfig({ hidden_size: "8" }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "parseForeignConfig: no num_experts",
    call: () => parseForeignConfig({ hidden_size: 8 }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "parseForeignConfig: an unknown params_dtype",
    call: () => parseForeignConfig({ hidden_size: 8, num_experts: 4, params_dtype: "fp64" }),
    code: "ERR_MOE_VALUE",
  },
];

// ---- checkpoints -----------------------------------------------------------------------------------

const checkpointRows: Row[] = [
  ...(
    [
      [
        "saveCheckpoint",
        (d: unknown, l: unknown, o?: unknown) => saveCheckpoint(d as string, l as MoELayer[], o as object),
      ],
      [
        "loadCheckpoint",
        (d: unknown, l: unknown, o?: unknown) => loadCheckpoint(d as string, l as MoELayer[], o as object),
      ],
    ] as Array<[string, (d: unknown, l: unknown, o?: unknown) => unknown]>
  ).flatMap(([fn, f]): Row[] => {
    const dir = () => (fn === "saveCheckpoint" ? path.join(fx.work, "never-written") : fx.ckpt);
    const rows: Array<[string, () => unknown, Row["code"]]> = [
      ["dir null", () => f(null, [fx.layer]), "ERR_MOE_VALUE"],
      ["dir empty", () => f("", [fx.layer]), "ERR_MOE_VALUE"],
      ["dir a number", () => f(5, [fx.layer]), "ERR_MOE_VALUE"],
      ["layers null", () => f(dir(), null), "ERR_MOE_VALUE"],
      ["layers empty", () => f(dir(), []), "ERR_MOE_VALUE"],
      ["layers holding null", () => f(dir(), [null]), "ERR_MOE_VALUE"],
      ["layers holding a number", () => f(dir(), [5]), "ERR_MOE_VALUE"],
      ["a layer, not an array", () => f(dir(), fx.layer), "ERR_MOE_VALUE"],
      ["a disposed layer", () => f(dir(), [fx.layerGone]), "ERR_MOE_DISPOSED"],
      ["options null", () => f(dir(), [fx.layer], null), "ERR_MOE_VALUE"],
      ["options a number", () => f(dir(), [fx.layer], 5), "ERR_MOE_VALUE"],
      ["optimizer a number", () => f(dir(), [fx.layer], { optimizer: 5 }), "ERR_MOE_VALUE"],
      ["optimizer null", () => f(dir(), [fx.layer], { optimizer: null }), "ERR_MOE_VALUE"],
      ["a disposed optimizer", () => f(dir(), [fx.layer], { optimizer: fx.optGone }), "ERR_MOE_DISPOSED"],
    ];
    if (fn === "loadCheckpoint") {
      rows.push(
        ["a directory that does not exist", () => f(path.join(fx.work, "nope"), [fx.layer]), "ERR_MOE_VALUE"],
        ["a directory without an index", () => f(fx.emptyDir, [fx.layer]), "ERR_MOE_VALUE"],
        ["a file for the directory", () => f(fx.junkFile, [fx.layer]), "ERR_MOE_VALUE"],
      );
    }
    return rows.map(([label, call, code]) => ({ name: `${fn}: ${label}`, call, code }));
  }),
  {
    name: "readCheckpointIndex: null",
    call: () => readCheckpointIndex(null as unknown as string),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "readCheckpointIndex: a missing directory",
    call: () => readCheckpointIndex(path.join(fx.work, "nope")),
    code: "ERR_MOE_VALUE",
  },
  ...(
    [
      ["epRank -1", -1, 2],
      ["epRank = epSize", 2, 2],
      ["epSize 0", 0, 0],
      ["a fractional epRank", 0.5, 2],
      ["a string epRank", "0", 2],
      ["epSize 2^53", 0, TWO_53],
    ] as Array<[string, unknown, unknown]>
  ).map(([label, r, s]): Row => ({
    name: `shardFileName: ${label}`,
    call: () => shardFileName(r as number, s as number),
    code: "ERR_MOE_VALUE",
  })),
  { name: "expertTensorName: null", call: () => expertTensorName(null as unknown as string, 0), code: "ERR_MOE_VALUE" },
  { name: "expertTensorName: not an expert", call: () => expertTensorName("router.weight", 0), code: "ERR_MOE_VALUE" },
  { name: "expertTensorName: expert -1", call: () => expertTensorName("experts.w1", -1), code: "ERR_MOE_VALUE" },
  { name: "encodeSafetensors: null", call: () => encodeSafetensors(null as unknown as []), code: "ERR_MOE_VALUE" },
  {
    name: "encodeSafetensors: a null entry",
    call: () => encodeSafetensors([null as unknown as never]),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "encodeSafetensors: an unknown dtype",
    call: () => encodeSafetensors([{ name: "a", dtype: "float64" as "float32", shape: [1], data: new Uint8Array(8) }]),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "encodeSafetensors: data not matching the shape",
    call: () => encodeSafetensors([{ name: "a", dtype: "float32", shape: [2], data: new Uint8Array(4) }]),
    code: "ERR_MOE_SHAPE",
  },
  {
    name: "encodeSafetensors: metadata not strings",
    call: () => encodeSafetensors([], { a: 1 as unknown as string }),
    code: "ERR_MOE_VALUE",
  },
  { name: "readSafetensors: null", call: () => readSafetensors(null as unknown as string), code: "ERR_MOE_VALUE" },
  {
    name: "readSafetensors: a missing file",
    call: () => readSafetensors(path.join(fx.work, "nope.safetensors")),
    code: "ERR_MOE_VALUE",
    message: /does not exist/,
  },
  { name: "readSafetensors: a directory", call: () => readSafetensors(fx.emptyDir), code: "ERR_MOE_VALUE" },
  {
    name: "readSafetensors: a file that is not safetensors",
    call: () => readSafetensors(fx.junkFile),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "readSafetensors: names holding a number",
    call: () => readSafetensors(path.join(fx.ckpt, shardFileName(0, 1)), [5 as unknown as string]),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "readSafetensors: a name the file lacks",
    call: () => readSafetensors(path.join(fx.ckpt, shardFileName(0, 1)), ["nope"]),
    code: "ERR_MOE_VALUE",
  },
  { name: "readSafetensorsHeader: a junk file", call: () => readSafetensorsHeader(fx.junkFile), code: "ERR_MOE_VALUE" },
];

// ---- stores, process groups, launch ---------------------------------------------------------------

const keyBads: Array<[string, unknown]> = [
  ["null", null],
  ["a number", 5],
  ["empty", ""],
];
const commRows: Row[] = [
  ...generate(
    "openStore",
    [
      value("url", () => `file://${fx.work}/store-valid`, [
        ["null", null, "ERR_MOE_VALUE"],
        ["a number", 5, "ERR_MOE_VALUE"],
        ["an unknown scheme", "http://127.0.0.1:1", "ERR_MOE_VALUE"],
        ["a relative file url", "file://relative/dir", "ERR_MOE_VALUE"],
        ["a tcp url without a port", "tcp://127.0.0.1", "ERR_MOE_VALUE"],
        ["a tcp port above 65535", "tcp://127.0.0.1:70000", "ERR_MOE_VALUE"],
      ]),
      opts("options", () => ({ runId: "r" }), [
        { key: "rank", type: "int", min: 0 },
        { key: "worldSize", type: "int", min: 1 },
        { key: "timeoutMs", type: "int", min: 0 },
      ]),
    ],
    (u, o) => openStore(u as string, o as object).close(),
  ),
  {
    name: "openStore: runId a number",
    call: () => openStore(`file://${fx.work}/s`, { runId: 5 as unknown as string }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "openStore: runId null",
    call: () => openStore(`file://${fx.work}/s`, { runId: null as unknown as string }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "openStore: runId escaping",
    call: () => openStore(`file://${fx.work}/s`, { runId: "../x" }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "openStore: rank 2 of 2",
    call: () => openStore(`file://${fx.work}/s`, { runId: "r", rank: 2, worldSize: 2 }),
    code: "ERR_MOE_VALUE",
  },
  ...keyBads.flatMap(([label, k]): Row[] => [
    { name: `Store.set: key ${label}`, call: () => fx.store.set(k as string, "v"), code: "ERR_MOE_VALUE" },
    { name: `Store.get: key ${label}`, call: () => fx.store.get(k as string), code: "ERR_MOE_VALUE" },
    { name: `Store.add: key ${label}`, call: () => fx.store.add(k as string, 1), code: "ERR_MOE_VALUE" },
    { name: `Store.wait: keys holding ${label}`, call: () => fx.store.wait([k as string]), code: "ERR_MOE_VALUE" },
    { name: `Store.check: keys holding ${label}`, call: () => fx.store.check([k as string]), code: "ERR_MOE_VALUE" },
  ]),
  { name: "Store.set: value a number", call: () => fx.store.set("k", 5 as unknown as string), code: "ERR_MOE_VALUE" },
  { name: "Store.set: value null", call: () => fx.store.set("k", null as unknown as string), code: "ERR_MOE_VALUE" },
  { name: "Store.set: a key of 4097 bytes", call: () => fx.store.set("k".repeat(4097), "v"), code: "ERR_MOE_VALUE" },
  { name: "Store.get: timeout -1", call: () => fx.store.get("k", -1), code: "ERR_MOE_VALUE" },
  { name: "Store.get: timeout a fraction", call: () => fx.store.get("k", 1.5), code: "ERR_MOE_VALUE" },
  {
    name: "Store.get: timeout a string",
    call: () => fx.store.get("k", "1" as unknown as number),
    code: "ERR_MOE_VALUE",
  },
  { name: "Store.wait: keys a string", call: () => fx.store.wait("k" as unknown as string[]), code: "ERR_MOE_VALUE" },
  { name: "Store.check: keys null", call: () => fx.store.check(null as unknown as string[]), code: "ERR_MOE_VALUE" },
  { name: "Store.add: delta a fraction", call: () => fx.store.add("n", 1.5), code: "ERR_MOE_VALUE" },
  { name: "Store.add: delta a string", call: () => fx.store.add("n", "1" as unknown as number), code: "ERR_MOE_VALUE" },
  { name: "Store.add: delta 2^53", call: () => fx.store.add("n", TWO_53), code: "ERR_MOE_VALUE" },
  ...(
    [
      ["set", (s: typeof fx.store) => s.set("k", "v")],
      ["get", (s: typeof fx.store) => s.get("k")],
      ["getString", (s: typeof fx.store) => s.getString("k")],
      ["wait", (s: typeof fx.store) => s.wait(["k"])],
      ["check", (s: typeof fx.store) => s.check(["k"])],
      ["add", (s: typeof fx.store) => s.add("k", 1)],
      ["set with a bad key", (s: typeof fx.store) => s.set(5 as unknown as string, "v")],
    ] as Array<[string, (s: typeof fx.store) => unknown]>
  ).map(([m, f]): Row => ({
    name: `Store.${m} on a closed store`,
    call: () => f(fx.storeClosed),
    code: "ERR_MOE_DISPOSED",
  })),
  ...generate(
    "initProcessGroup",
    [
      opts(
        "options",
        () => ({ rank: 0, worldSize: 1, store: `file://${fx.work}/pg-valid`, runId: "valid", timeoutMs: 10000 }),
        [
          { key: "backend", type: "oneOf" },
          { key: "rank", type: "int", min: 0 },
          { key: "worldSize", type: "int", min: 1 },
          { key: "timeoutMs", type: "int", min: 1 },
        ],
        true,
      ),
    ],
    async (o) => (await initProcessGroup(o as object)).destroy(),
  ),
  ...(
    [
      ["hostname a number", { hostname: 5 }, "ERR_MOE_VALUE"],
      ["hostname null", { hostname: null }, "ERR_MOE_VALUE"],
      ["hostname with a space", { hostname: "a b" }, "ERR_MOE_VALUE"],
      ["hostname empty", { hostname: "" }, "ERR_MOE_VALUE"],
      ["store a number", { store: 5 }, "ERR_MOE_VALUE"],
      ["store null", { store: null }, "ERR_MOE_VALUE"],
      ["rank 1 of 1", { rank: 1 }, "ERR_MOE_VALUE"],
      ["backend nccl on the cpu device", { backend: "nccl", device: "cpu" }, "ERR_MOE_DEVICE"],
      ["backend nccl on device null", { backend: "nccl", device: null }, "ERR_MOE_DEVICE"],
    ] as Array<[string, object, Row["code"]]>
  ).map(([label, o, code]): Row => ({
    name: `initProcessGroup: ${label}`,
    call: () => initProcessGroup({ rank: 0, worldSize: 1, store: `file://${fx.work}/pg-bad`, runId: "bad", ...o }),
    code,
  })),
  {
    name: "initProcessGroup: an address this host does not have, in the project's own words",
    call: () =>
      initProcessGroup({
        rank: 0,
        worldSize: 1,
        store: `file://${fx.work}/pg-addr`,
        runId: "addr",
        hostname: "192.0.2.1",
      }),
    code: "ERR_MOE_VALUE",
    message: /^process group world \(rank 0 of 1\): could not use the address "192\.0\.2\.1"/,
  },
  {
    name: "initProcessGroup: a closed Store",
    call: () => initProcessGroup({ rank: 0, worldSize: 1, store: fx.storeClosed }),
    code: "ERR_MOE_DISPOSED",
  },
  ...generate(
    "ProcessGroup.allToAllV",
    [
      T("x", "x"),
      value("sendCounts", () => [4], [
        ["null", null, "ERR_MOE_VALUE"],
        ["a number", 4, "ERR_MOE_VALUE"],
        ["a fraction", [4.5], "ERR_MOE_VALUE"],
        ["a string", ["4"], "ERR_MOE_VALUE"],
        ["not summing to the rows", [3], "ERR_MOE_VALUE"],
        ["one per rank too many", [4, 0], "ERR_MOE_VALUE"],
      ]),
      opts("options", () => ({}), [], true),
    ],
    (x, c, o) => fx.group.allToAllV(asT(x), c as number[], o as object),
  ),
  {
    name: "ProcessGroup.allToAllV: recvCounts a string",
    call: () => fx.group.allToAllV(fx.t.x, [4], { recvCounts: "4" as unknown as number[] }),
    code: "ERR_MOE_VALUE",
  },
  {
    name: "ProcessGroup.allToAllV: a float counts tensor",
    call: () => fx.group.allToAllV(fx.t.x, fx.t.bias),
    code: "ERR_MOE_DTYPE",
  },
  ...generate("ProcessGroup.allToAll", [T("x", "block")], (x) => fx.group.allToAll(asT(x))),
  ...generate(
    "ProcessGroup.allReduce",
    [
      T("t", "bias"),
      value("op", () => "sum", [
        ["an unknown op", "prod", "ERR_MOE_VALUE"],
        ["null", null, "ERR_MOE_VALUE"],
        ["a number", 1, "ERR_MOE_VALUE"],
      ]),
    ],
    (t, op) => fx.group.allReduce(asT(t), op as "sum"),
  ),
  ...generate(
    "ProcessGroup.broadcast",
    [
      T("t", "bias"),
      value("root", () => 0, [
        ["1 of 1", 1, "ERR_MOE_VALUE"],
        ["-1", -1, "ERR_MOE_VALUE"],
        ["a fraction", 0.5, "ERR_MOE_VALUE"],
        ["a string", "0", "ERR_MOE_VALUE"],
        ["null", null, "ERR_MOE_VALUE"],
      ]),
    ],
    (t, r) => fx.group.broadcast(asT(t), r as number),
  ),
  ...generate(
    "ProcessGroup.newGroup",
    [
      value("ranks", () => [0], [
        ["null", null, "ERR_MOE_VALUE"],
        ["a rank beyond the group", [5], "ERR_MOE_VALUE"],
        ["-1", [-1], "ERR_MOE_VALUE"],
        ["a fraction", [0.5], "ERR_MOE_VALUE"],
        ["empty", [], "ERR_MOE_VALUE"],
      ]),
      opts("options", () => ({}), [{ key: "timeoutMs", type: "int", min: 1 }], true),
    ],
    async (r, o) => (await fx.group.newGroup(r as number[], o as object)).destroy(),
  ),
  ...generate(
    "ProcessGroup.split",
    [opts("options", () => ({ epSize: 1 }), [{ key: "epSize", type: "int", min: 1, max: 1, required: true }])],
    async (o) => {
      const s = await fx.group.split(o as { epSize: number });
      s.ep.destroy();
      s.expertDataParallel.destroy();
    },
  ),
  ...(
    [
      ["allToAllV", (g: typeof fx.group) => g.allToAllV(fx.t.x, [4])],
      ["allToAllV with bad counts", (g: typeof fx.group) => g.allToAllV(fx.t.x, null as unknown as number[])],
      ["allToAll", (g: typeof fx.group) => g.allToAll(fx.t.x)],
      ["allReduce", (g: typeof fx.group) => g.allReduce(fx.t.bias)],
      ["broadcast", (g: typeof fx.group) => g.broadcast(fx.t.bias)],
      ["barrier", (g: typeof fx.group) => g.barrier()],
      ["newGroup", (g: typeof fx.group) => g.newGroup([0])],
      ["split", (g: typeof fx.group) => g.split({ epSize: 1 })],
    ] as Array<[string, (g: typeof fx.group) => unknown]>
  ).map(([m, f]): Row => ({
    name: `ProcessGroup.${m} on a destroyed group`,
    call: () => f(fx.groupGone),
    code: "ERR_MOE_DISPOSED",
    message: /destroyed/,
  })),
  ...(
    [
      ["null", null],
      ["a number", 5],
      ["no variables", {}],
      ["WORLD_SIZE 0", { WORLD_SIZE: "0", RANK: "0", LOCAL_RANK: "0", MASTER_ADDR: "h", MASTER_PORT: "1" }],
      ["RANK = WORLD_SIZE", { WORLD_SIZE: "2", RANK: "2", LOCAL_RANK: "0", MASTER_ADDR: "h", MASTER_PORT: "1" }],
      ["RANK not a number", { WORLD_SIZE: "2", RANK: "one", LOCAL_RANK: "0", MASTER_ADDR: "h", MASTER_PORT: "1" }],
      ["MASTER_PORT 70000", { WORLD_SIZE: "1", RANK: "0", LOCAL_RANK: "0", MASTER_ADDR: "h", MASTER_PORT: "70000" }],
      [
        "MASTER_ADDR with a space",
        { WORLD_SIZE: "1", RANK: "0", LOCAL_RANK: "0", MASTER_ADDR: "a b", MASTER_PORT: "1" },
      ],
      ["MOE_EP_STORE an http url", { WORLD_SIZE: "1", RANK: "0", LOCAL_RANK: "0", MOE_EP_STORE: "http://x" }],
      [
        "MOE_EP_RUN_ID escaping",
        { WORLD_SIZE: "1", RANK: "0", LOCAL_RANK: "0", MOE_EP_STORE: "file:///tmp", MOE_EP_RUN_ID: "../x" },
      ],
    ] as Array<[string, unknown]>
  ).map(([label, env]): Row => ({
    name: `rendezvousFromEnv: ${label}`,
    call: () => rendezvousFromEnv(env as NodeJS.ProcessEnv),
    code: "ERR_MOE_VALUE",
  })),
  {
    name: "rendezvousFromEnv: WORLD_SIZE past 2^53 - 1 states the real limit",
    call: () =>
      rendezvousFromEnv({ WORLD_SIZE: "9007199254740993", RANK: "0", LOCAL_RANK: "0", MOE_EP_STORE: "tcp://h:1" }),
    code: "ERR_MOE_VALUE",
    message: /\[1, 2\^53 - 1\]/,
  },
  { name: "openStoreFromEnv: null", call: () => openStoreFromEnv(null as unknown as object), code: "ERR_MOE_VALUE" },
  { name: "openStoreFromEnv: an empty env", call: () => openStoreFromEnv({ env: {} }), code: "ERR_MOE_VALUE" },
  { name: "launch: null", call: () => launch(null as unknown as string[]), code: "ERR_MOE_VALUE" },
  { name: "launch: a string", call: () => launch("-n 2 x.js" as unknown as string[]), code: "ERR_MOE_VALUE" },
  {
    name: "launch: a number among the arguments",
    call: () => launch(["-n", 2 as unknown as string, "x.js"]),
    code: "ERR_MOE_VALUE",
  },
  ...(
    [
      ["-n 0", ["-n", "0", "x.js"]],
      ["-n not a number", ["-n", "two", "x.js"]],
      ["-n 2^53", ["-n", "9007199254740992", "x.js"]],
      ["-n without a value", ["-n"]],
      ["no -n", ["x.js"]],
      ["no script", ["-n", "2"]],
      ["an unknown option", ["--bogus", "-n", "2", "x.js"]],
      ["--nnodes 2 without --master-addr", ["--nnodes", "2", "-n", "1", "x.js"]],
      ["--node-rank = --nnodes", ["--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "-n", "1", "x.js"]],
      ["--master-port 0", ["--master-port", "0", "-n", "1", "x.js"]],
      ["--master-addr with a slash", ["--master-addr", "a/b", "-n", "1", "x.js"]],
      ["--store s3", ["--store", "s3://bucket", "-n", "1", "x.js"]],
      ["--store file:// without a directory", ["--store", "file://", "-n", "1", "x.js"]],
      ["env NPROC_PER_NODE x", ["x.js"], { NPROC_PER_NODE: "x" }],
      ["env null", ["-n", "1", "x.js"], null],
    ] as Array<[string, string[], object | null | undefined]>
  ).map(([label, args, env]): Row => ({
    name: `launch arguments: ${label}`,
    call: () => parseLaunchArgs(args, (env === undefined ? {} : env) as NodeJS.ProcessEnv),
    code: "ERR_MOE_VALUE",
  })),
  ...(
    [
      ["worldSize 0", 0, 1],
      ["epSize 0", 4, 0],
      ["epSize not dividing", 4, 3],
      ["a string", "4", 2],
      ["2^53", TWO_53, 1],
    ] as Array<[string, unknown, unknown]>
  ).map(([label, w, e]): Row => ({
    name: `expertParallelLayout: ${label}`,
    call: () => expertParallelLayout(w as number, e as number),
    code: "ERR_MOE_VALUE",
  })),
];

// ---- where CUDA or NCCL is absent, and where CUDA is present ---------------------------------------------

const hasCuda = info().cuda.available;
const hasNccl = ncclStatus().available;
const deviceRows: Row[] = hasCuda
  ? [
      {
        name: "ops.gate: x on cuda:0, wg on the cpu",
        call: async () => ops.gate(await fx.t.x.to("cuda:0"), fx.t.wg),
        code: "ERR_MOE_DEVICE",
      },
      {
        name: "DeviceEvent.elapsedMs: start not an event",
        call: async () => (await DeviceEvent.record("cuda:0")).elapsedMs(5 as unknown as DeviceEvent),
        code: "ERR_MOE_VALUE",
      },
    ]
  : [
      {
        name: "Tensor.zeros: on cuda:0 without CUDA",
        call: () => Tensor.zeros([2], { device: "cuda:0" }),
        code: "ERR_MOE_CUDA_UNAVAILABLE",
      },
      {
        name: "Tensor.prototype.to: cuda:0 without CUDA",
        call: () => fx.t.x.to("cuda:0"),
        code: "ERR_MOE_CUDA_UNAVAILABLE",
      },
      {
        name: "DeviceEvent.record: cuda:0 without CUDA",
        call: () => DeviceEvent.record("cuda:0"),
        code: "ERR_MOE_CUDA_UNAVAILABLE",
      },
    ];
if (!hasNccl) {
  deviceRows.push(
    { name: "requireNccl without NCCL", call: () => requireNccl(), code: "ERR_MOE_NCCL_UNAVAILABLE" },
    {
      name: "initProcessGroup: backend nccl without NCCL",
      call: () =>
        initProcessGroup({ backend: "nccl", device: "cuda:0", rank: 0, worldSize: 1, store: "file:///tmp/x" }),
      code: "ERR_MOE_NCCL_UNAVAILABLE",
    },
  );
}

const ROWS: Row[] = [
  ...opRows,
  ...mismatchRows,
  ...tensorRows,
  ...layerRows,
  ...checkpointRows,
  ...commRows,
  ...deviceRows,
];

// ---- fixtures and the run -------------------------------------------------------------------------

function float(shape: number[], seed: number): Tensor {
  return tensor(
    normal(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
    shape,
  );
}

beforeAll(async () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moe-malformed-"));
  fx.work = work;
  fx.cuda = hasCuda;
  fx.nccl = hasNccl;
  const t: Record<string, Tensor> = {
    x: float([4, 8], 1),
    block: float([1, 8], 15),
    wg: float([8, 4], 2),
    logits: float([4, 4], 3),
    bias: Tensor.zeros([4]),
    load: intTensor([3, 1, 2, 2], [4]),
    gx: float([6, 8], 4),
    gw: float([2, 8, 5], 5),
    gcounts: intTensor([2, 4], [2]),
    gbias: float([2, 5], 6),
    gdy: float([6, 5], 7),
    ax: float([4, 6], 8),
    adh: float([4, 3], 9),
    p3: float([3], 10),
    g3: float([3], 11),
    m3: Tensor.zeros([3]),
    v3: Tensor.zeros([3]),
    a23: float([2, 3], 12),
    b23: float([2, 3], 13),
    r10: Tensor.zeros([10]),
    cx: float([6, 2], 14),
    ccounts: intTensor([1, 2, 0, 3], [2, 2]),
    mlp: float([4, 8], 16),
    clogits: float([4, 2], 17),
    cbias: float([2], 18),
  };
  const r = await ops.route(t.logits, { topK: 2 });
  Object.assign(t, { indices: r.indices, weights: r.weights, tokensPerExpert: r.tokensPerExpert });
  const p = await ops.permute(t.x, r.indices, r.weights, { numExperts: 4 });
  Object.assign(t, { rows: p.rows, pairToRow: p.pairToRow });
  fx.t = t;
  fx.gone = Tensor.zeros([4, 8]);
  fx.gone.dispose();

  fx.layer = await MoELayer.create(LAYER);
  // A training forward stays saved, so backward's shape checks have something to check against.
  (await fx.layer.forward(t.x)).output.dispose();
  fx.opt = new AdamW(fx.layer.parameters(), { lr: 0.01 });
  fx.optGone = new AdamW(fx.layer.parameters(), { lr: 0.01 });
  fx.optGone.dispose();
  fx.layerGone = await MoELayer.create(LAYER);
  fx.optOfGone = new AdamW(fx.layerGone.parameters(), { lr: 0.01 });
  fx.layerGone.dispose();
  fx.ckpt = path.join(work, "ckpt");
  await saveCheckpoint(fx.ckpt, [fx.layer]);
  fx.emptyDir = path.join(work, "empty");
  fs.mkdirSync(fx.emptyDir);
  fx.junkFile = path.join(work, "junk.safetensors");
  fs.writeFileSync(fx.junkFile, "this is not a safetensors file");

  fx.store = openStore(`file://${work}/store`, { runId: "rows" });
  fx.storeClosed = openStore(`file://${work}/store-closed`, { runId: "rows" });
  fx.storeClosed.close();
  fx.group = await initProcessGroup({ rank: 0, worldSize: 1, store: `file://${work}/pg`, runId: "rows" });
  fx.groupGone = await initProcessGroup({ rank: 0, worldSize: 1, store: `file://${work}/pg-gone`, runId: "rows" });
  fx.groupGone.destroy();
});

afterAll(() => {
  fx.group?.destroy();
  fx.store?.close();
  fx.opt?.dispose();
  fx.optOfGone?.dispose();
  fx.layer?.dispose();
  for (const v of Object.values(fx.t ?? {})) v.dispose();
  if (fx.work) fs.rmSync(fx.work, { recursive: true, force: true });
});

/**
 * What the call threw or rejected with (undefined when it succeeded). In a scope, unless the call
 * must keep what it makes (a forward's saved tensors, for the backward after it).
 */
async function outcome(call: () => unknown, scoped = true): Promise<unknown> {
  try {
    if (scoped)
      await scope(async () => {
        await call();
      });
    else await call();
  } catch (e) {
    return e;
  }
  return undefined;
}

// A message that names its own prefix twice ("x: x: ..."), or quotes a source location or
// another library's assertion, says more about the code than about the call.
const REPEATED_PREFIX = /(^|: )([^:]{3,80}): \2: /;
const INTERNALS = /enforce fail|\.(cc|cpp|h|hpp):\d+|TypeError|Cannot read propert|is not a function|is not iterable/;

/** Why an outcome is not what the row expects ("" when it is). */
function judge(row: Row, e: unknown): string {
  if (!(e instanceof MoEError)) return e === undefined ? "succeeded" : `threw a non-MoEError: ${String(e)}`;
  const got = `${e.code} "${e.message}"`;
  if (e.code !== row.code) return `expected ${row.code} but got ${got}`;
  if (row.message && !row.message.test(e.message)) return `expected a message matching ${row.message} but got ${got}`;
  if (REPEATED_PREFIX.test(e.message)) return `the message repeats its prefix: ${got}`;
  if (INTERNALS.test(e.message)) return `the message quotes internals: ${got}`;
  return "";
}

describe("every malformed call raises a MoEError with the code that says what was wrong", () => {
  test("the table covers at least 200 distinct calls", () => {
    expect(ROWS.length).toBeGreaterThanOrEqual(200);
    expect(new Set(ROWS.map((r) => r.name)).size).toBe(ROWS.length);
  });

  // One test per function (the row names' prefix), each checking all of that function's rows and
  // listing every row that did not give its code, so a failure names the calls and what they gave.
  const byFunction = new Map<string, Row[]>();
  for (const r of ROWS) {
    const fn = r.name.includes(":") ? r.name.slice(0, r.name.indexOf(":")) : r.name.split(" ")[0];
    byFunction.set(fn, [...(byFunction.get(fn) ?? []), r]);
  }
  test.each([...byFunction].map(([fn, rows]) => [fn, rows.length, rows] as const))(
    "%s: %i malformed calls",
    async (_, _n, rows) => {
      const wrong: string[] = [];
      for (const row of rows) {
        const why = judge(row, await outcome(row.call));
        if (why) wrong.push(`${row.name}: ${why}`);
      }
      expect(wrong).toEqual([]);
    },
  );

  test("the fixtures the rows used are intact: nothing a refused call touched was changed", async () => {
    expect(fx.t.x.disposed).toBe(false);
    expect(Array.from(fx.t.m3.toFloat32())).toEqual([0, 0, 0]);
    expect(Array.from(fx.t.bias.toFloat32())).toEqual([0, 0, 0, 0]);
    expect(fx.opt.stepCount).toBe(0);
    expect(fx.group.destroyed).toBe(false);
    // The saved forward is still there for a valid backward.
    const dx = await fx.layer.backward(fx.t.x);
    expect(dx.shape).toEqual([4, 8]);
    dx.dispose();
  });

  // Last: these change the fixtures (in-place ops, backward's saved forward).
  test.each(baselines.map((b) => [b.name, b] as const))(
    "%s: the call with every argument valid succeeds",
    async (_, b) => {
      expect(await outcome(b.call, false)).toBeUndefined();
    },
  );
});
