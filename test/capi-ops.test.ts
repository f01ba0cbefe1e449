/**
 * The C ABI from Python: test/python/capi_driver.py calls every op (forward and backward) and the layer's
 * forward and backward through ctypes on libmoe_ep.so, and the results are compared here with the float64
 * references of test/reference. Runs on the CPU library (build/Release) and, when the CUDA emulator's
 * build exists (build-emu/Release), on its cuda:0 as well.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { activationBackwardRef, activationRef, isGatedKind, type Kind } from "./reference/activation";
import { adamwRef } from "./reference/adamw";
import { chunkTransposeRef } from "./reference/chunks";
import { expertBiasUpdateRef } from "./reference/expert-bias";
import { gateBackwardRef, gateRef } from "./reference/gate";
import { groupedGemmBackwardRef, groupedGemmRef } from "./reference/grouped-gemm";
import { moeLayerRef, type MoERefConfig, type MoERefParams } from "./reference/moe-layer";
import { permuteBackwardRef, permuteRef, unpermuteBackwardRef, unpermuteRef, capacityRef } from "./reference/permute";
import { fillRandomRef, jitterNoiseRef } from "./reference/random";
import { routeBackwardRef, routeRef } from "./reference/route";
import { bf16, f32, relErr, TOL } from "./util";
import { normal, pickExperts, uniform } from "./shared/rng";

const root = path.resolve(__dirname, "..");
const driver = path.join(__dirname, "python", "capi_driver.py");

interface Spec {
  dtype?: string;
  shape: number[];
  data?: number[];
}
interface Read {
  dtype: string;
  shape: number[];
  device: string;
  data: number[];
}
type Out = Record<string, unknown>;
interface Result {
  ok: boolean;
  out?: Out;
  status?: string;
  message?: string;
}
interface Call {
  fn: string;
  args: Record<string, unknown>;
  check: (out: Out) => void;
  /** The status a failing call must return (then check is not called). */
  fails?: string;
}

const targets = [
  { lib: path.join(root, "build", "Release", "libmoe_ep.so"), device: "cpu" },
  { lib: path.join(root, "build-emu", "Release", "libmoe_ep.so"), device: "cuda:0" },
];

function python(): string | undefined {
  for (const p of ["python3", "python"]) {
    try {
      execFileSync(p, ["-c", "import ctypes, json"], { stdio: "ignore" });
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

function run(lib: string, device: string, calls: Call[]): Result[] {
  const py = python();
  if (!py) throw new Error("python3 (with ctypes) is needed for the C ABI's Python test");
  const input = JSON.stringify(calls.map((c) => ({ fn: c.fn, args: c.args })));
  const out = execFileSync(py, [driver, lib, device], { input, encoding: "utf8", maxBuffer: 1 << 28 });
  return JSON.parse(out) as Result[];
}

const t = (shape: number[], data: ArrayLike<number>, dtype = "float32"): Spec => ({
  dtype,
  shape,
  data: Array.from(data),
});
const vals = (o: Out, k: string): number[] => (o[k] as Read).data;
const near = (got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string) => {
  const e = relErr(got, want);
  if (!(e < tol)) throw new Error(`${what}: relative error ${e} >= ${tol}`);
};
const same = (got: ArrayLike<number>, want: ArrayLike<number>, what: string) =>
  expect({ what, v: Array.from(got) }).toEqual({ what, v: Array.from(want) });

/** Every op once, forward and backward, each checked against its reference. */
function opCalls(device: string): Call[] {
  const cuda = device !== "cpu";
  // The CUDA GEMMs take bfloat16 or float16 operands only, at widths that are multiples of 8.
  const gdt = cuda ? "bfloat16" : "float32";
  const round = cuda ? bf16 : f32;
  const tol = cuda ? TOL.bfloat16 : TOL.float32;
  const T = 24,
    D = 16,
    E = 8,
    K = 2,
    F = 24;
  const x = round(normal(T * D, 1));
  const wg = round(normal(D * E, 2, 0.3));
  const logits = f32(normal(T * E, 3));
  const calls: Call[] = [];

  calls.push({
    fn: "to_device",
    args: { x: t([T, D], x) },
    check: (o) => {
      expect((o.y as Read).device).toBe(device);
      same(vals(o, "y"), f32(x), "to_device");
      same(vals(o, "clone"), f32(x), "clone");
    },
  });
  calls.push({
    fn: "gate",
    args: { x: t([T, D], x, gdt), wg: t([D, E], wg) },
    check: (o) => near(vals(o, "logits"), gateRef(x, wg, T, D, E), tol, "gate"),
  });
  const dl = round(normal(T * E, 4));
  calls.push({
    fn: "gate_backward",
    args: { x: t([T, D], x, gdt), wg: t([D, E], wg), dlogits: t([T, E], dl) },
    check: (o) => {
      const r = gateBackwardRef(x, wg, dl, T, D, E);
      near(vals(o, "dx"), r.dx, tol, "gate dx");
      near(vals(o, "dwg"), r.dwg, tol, "gate dwg");
    },
  });
  for (const score of ["softmax", "sigmoid"] as const) {
    const renormalize = score === "sigmoid";
    const bias = f32(uniform(E, 5, -0.1, 0.1));
    const ref = routeRef(logits, T, E, {
      topK: K,
      scoreFunction: score,
      renormalize,
      expertBias: score === "sigmoid" ? bias : undefined,
    });
    const args = {
      logits: t([T, E], logits),
      top_k: K,
      score,
      renormalize,
      expert_bias: score === "sigmoid" ? t([E], bias) : undefined,
    };
    calls.push({
      fn: "route",
      args,
      check: (o) => {
        same(vals(o, "indices"), ref.indices, `route ${score} indices`);
        same(vals(o, "tokens_per_expert"), ref.tokensPerExpert, `route ${score} counts`);
        near(vals(o, "weights"), ref.weights, 1e-5, `route ${score} weights`);
        near([o.aux as number, o.z as number], [ref.aux, ref.z], 1e-5, `route ${score} losses`);
      },
    });
    calls.push({
      fn: "route_scores",
      args,
      check: (o) => near(vals(o, "scores"), ref.scores, 1e-5, `route ${score} scores`),
    });
    const dw = f32(normal(T * K, 6));
    calls.push({
      fn: "route_backward",
      args: {
        logits: t([T, E], logits),
        indices: t([T, K], ref.indices, "int32"),
        tokens_per_expert: t([E], ref.tokensPerExpert, "int32"),
        dweights: t([T, K], dw),
        score,
        renormalize,
        aux_loss_grad: 0.01,
        z_loss_grad: 0.001,
      },
      check: (o) =>
        near(
          vals(o, "dlogits"),
          routeBackwardRef(logits, T, E, ref.indices, ref.tokensPerExpert, dw, {
            scoreFunction: score,
            renormalize,
            auxLossGrad: 0.01,
            zLossGrad: 0.001,
          }),
          1e-5,
          `route ${score} backward`,
        ),
    });
  }

  const indices = pickExperts(T, K, [...Array(E).keys()], 7);
  const weights = f32(uniform(T * K, 8, 0.1, 1));
  for (const opts of [
    { numExperts: E },
    { numExperts: E, capacityFactor: 0.75, dropPolicy: "probs" as const },
    { numExperts: E, capacityFactor: 1.5, dropPolicy: "position" as const, padToCapacity: true },
  ]) {
    const ref = permuteRef(x, indices, weights, T, D, K, opts);
    const what = `permute ${JSON.stringify(opts)}`;
    calls.push({
      fn: "permute",
      args: {
        x: t([T, D], x),
        indices: t([T, K], indices, "int32"),
        weights: t([T, K], weights),
        num_experts: E,
        capacity_factor: opts.capacityFactor ?? 0,
        drop_policy: opts.dropPolicy ?? "probs",
        pad_to_capacity: opts.padToCapacity ?? false,
      },
      check: (o) => {
        same(vals(o, "rows"), ref.rows, `${what} rows`);
        same(vals(o, "rows_per_expert"), ref.rowsPerExpert, `${what} counts`);
        same(vals(o, "pair_to_row"), ref.pairToRow, `${what} pair_to_row`);
        same(vals(o, "row_to_pair"), ref.rowToPair, `${what} row_to_pair`);
        expect([o.dropped, o.capacity]).toEqual([ref.dropped, ref.capacity]);
      },
    });
    const R = ref.numRows;
    const rows = f32(normal(R * D, 9));
    const dy = f32(normal(T * D, 10));
    calls.push({
      fn: "permute_backward",
      args: { d_rows: t([R, D], rows), pair_to_row: t([T, K], ref.pairToRow, "int32") },
      check: (o) => near(vals(o, "dx"), permuteBackwardRef(rows, ref.pairToRow, T, K, D), 1e-6, `${what} backward`),
    });
    calls.push({
      fn: "unpermute",
      args: { rows: t([R, D], rows), pair_to_row: t([T, K], ref.pairToRow, "int32"), weights: t([T, K], weights) },
      check: (o) => near(vals(o, "y"), unpermuteRef(rows, ref.pairToRow, weights, T, K, D), 1e-6, `un${what}`),
    });
    calls.push({
      fn: "unpermute_backward",
      args: {
        dy: t([T, D], dy),
        rows: t([R, D], rows),
        pair_to_row: t([T, K], ref.pairToRow, "int32"),
        weights: t([T, K], weights),
      },
      check: (o) => {
        const r = unpermuteBackwardRef(dy, rows, ref.pairToRow, weights, T, K, D, R);
        near(vals(o, "d_rows"), r.dRows, 1e-6, `un${what} backward rows`);
        near(vals(o, "d_weights"), r.dWeights, 1e-5, `un${what} backward weights`);
      },
    });
  }
  calls.push({
    fn: "expert_capacity",
    args: { tokens: T, top_k: K, num_experts: E, capacity_factor: 1.25 },
    check: (o) => expect(o.capacity).toBe(capacityRef(T, K, E, 1.25)),
  });
  {
    const counts = [
      [2, 0, 3],
      [1, 4, 0],
    ];
    const R = 10;
    const cx = f32(normal(R * D, 11));
    calls.push({
      fn: "chunk_transpose",
      args: { x: t([R, D], cx), counts: t([2, 3], counts.flat(), "int32") },
      check: (o) => same(vals(o, "y"), chunkTransposeRef(cx, D, counts), "chunk_transpose"),
    });
  }

  // Grouped GEMM: 3 experts, one with no rows.
  {
    const L = 3,
      counts = [7, 0, 5],
      R = 12,
      N = 24;
    const gx = round(normal(R * D, 12));
    const gw = round(normal(L * D * N, 13, 0.3));
    const gb = round(normal(L * N, 14));
    const gdy = round(normal(R * N, 15));
    const dims = { R, K: D, N, L };
    calls.push({
      fn: "grouped_gemm",
      args: {
        x: t([R, D], gx, gdt),
        w: t([L, D, N], gw, gdt),
        counts: t([L], counts, "int32"),
        bias: t([L, N], gb, gdt),
      },
      check: (o) => near(vals(o, "y"), groupedGemmRef(gx, gw, counts, dims, gb), tol, "grouped_gemm"),
    });
    calls.push({
      fn: "grouped_gemm_backward",
      args: {
        dy: t([R, N], gdy, gdt),
        x: t([R, D], gx, gdt),
        w: t([L, D, N], gw, gdt),
        counts: t([L], counts, "int32"),
        need: cuda ? ["dx", "dw"] : ["dx", "dw", "dbias"],
      },
      check: (o) => {
        const r = groupedGemmBackwardRef(gdy, gx, gw, counts, dims);
        near(vals(o, "dx"), r.dx, tol, "grouped_gemm dx");
        near(vals(o, "dw"), r.dw, tol, "grouped_gemm dw");
        if (cuda) expect(o.dbias).toBeNull();
        else near(vals(o, "dbias"), r.dbias, tol, "grouped_gemm dbias");
      },
    });
  }

  for (const kind of ["relu", "gelu", "silu", "swiglu", "geglu"] as Kind[]) {
    const W = isGatedKind(kind) ? 2 * F : F;
    const ax = f32(normal(T * W, 16));
    const dh = f32(normal(T * (isGatedKind(kind) ? F : W), 17));
    calls.push({
      fn: "activation",
      args: { x: t([T, W], ax), kind },
      check: (o) => near(vals(o, "h"), activationRef(ax, W, kind), 1e-5, `${kind}`),
    });
    calls.push({
      fn: "activation_backward",
      args: { dh: t([T, dh.length / T], dh), x: t([T, W], ax), kind },
      check: (o) => near(vals(o, "dx"), activationBackwardRef(dh, ax, W, kind), 1e-5, `${kind} backward`),
    });
  }

  const a = f32(normal(40, 18));
  const b = f32(normal(40, 19));
  calls.push({
    fn: "add",
    args: { a: t([5, 8], a), b: t([5, 8], b) },
    check: (o) => same(vals(o, "y"), f32(a.map((v, i) => v + b[i])), "add"),
  });
  calls.push({
    fn: "axpby",
    args: { y: t([5, 8], a), x: t([5, 8], b), alpha: 0.5, beta: -2 },
    check: (o) =>
      near(
        vals(o, "y"),
        a.map((v, i) => 0.5 * v - 2 * b[i]),
        1e-6,
        "axpby",
      ),
  });
  calls.push({
    fn: "sum_squares",
    args: { tensors: [t([5, 8], a), t([40], b)] },
    check: (o) => near(vals(o, "y"), [[...a, ...b].reduce((s, v) => s + v * v, 0)], 1e-6, "sum_squares"),
  });
  for (const distribution of ["normal", "uniform"] as const) {
    const fr = { seed: 42, key: 7, distribution, a: 0.5, b: 2, sliceSize: 16, firstSlice: 3 };
    calls.push({
      fn: "fill_random",
      args: {
        t: { dtype: "float32", shape: [4, 16] },
        seed: 42,
        key: 7,
        distribution,
        a: 0.5,
        b: 2,
        slice_size: 16,
        first_slice: 3,
      },
      check: (o) => near(vals(o, "t"), fillRandomRef(64, fr), 1e-6, `fill_random ${distribution}`),
    });
  }
  calls.push({
    fn: "jitter",
    args: { x: t([T, D], x), eps: 0.01, seed: 5, key: 9, slice: 2 },
    check: (o) => {
      const u = jitterNoiseRef(T * D, 0.01, 5, 9, 2);
      near(
        vals(o, "y"),
        x.map((v, i) => v * u[i]),
        1e-6,
        "jitter",
      );
    },
  });
  {
    const p = f32(normal(32, 20));
    const g = f32(normal(32, 21));
    const m = f32(normal(32, 22, 0.1));
    const v = f32(uniform(32, 23, 0, 0.1));
    const o = { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, step: 3 };
    calls.push({
      fn: "adamw",
      args: {
        param: t([32], p),
        grad: t([32], g),
        exp_avg: t([32], m),
        exp_avg_sq: t([32], v),
        lr: o.lr,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weightDecay,
        step: o.step,
      },
      check: (out) => {
        const r = adamwRef({ param: p, expAvg: m, expAvgSq: v }, g, o);
        near(vals(out, "param"), r.param, 1e-5, "adamw param");
        near(vals(out, "exp_avg"), r.expAvg, 1e-5, "adamw exp_avg");
        near(vals(out, "exp_avg_sq"), r.expAvgSq, 1e-5, "adamw exp_avg_sq");
      },
    });
  }
  {
    const bias = f32(uniform(E, 24, -0.1, 0.1));
    const load = [5, 9, 2, 7, 7, 1, 0, 9];
    calls.push({
      fn: "expert_bias_update",
      args: { bias: t([E], bias), load: t([E], load, "int32"), rate: 1e-3 },
      check: (o) => near(vals(o, "bias"), expertBiasUpdateRef(bias, load, 1e-3), 1e-6, "expert_bias_update"),
    });
  }

  // Bad input: a status and a message naming what was expected and received, never a crash.
  calls.push({
    fn: "grouped_gemm",
    args: { x: t([T, D], x), w: t([2, D + 1, 8], new Array(2 * (D + 1) * 8).fill(0)), counts: t([2], [T, 0], "int32") },
    fails: "ERR_MOE_SHAPE",
    check: () => undefined,
  });
  calls.push({
    fn: "activation",
    args: { x: t([2, 3], [1, 2, 3, 4, 5, 6]), kind: "swiglu" },
    fails: "ERR_MOE_SHAPE",
    check: () => undefined,
  });
  return calls;
}

function layerCase(device: string, c: Partial<MoERefConfig> & { activation: Kind }, seed: number): Call {
  const cuda = device !== "cpu";
  const dt = cuda ? "bfloat16" : "float32";
  const round = cuda ? bf16 : f32;
  const tol = cuda ? TOL.bfloat16 : 1e-4;
  const cfg: MoERefConfig = {
    dModel: 16,
    dFF: 24,
    numExperts: 4,
    topK: 2,
    scoreFunction: "softmax",
    renormalize: false,
    dropPolicy: "probs",
    padToCapacity: false,
    auxLossCoef: 0.01,
    zLossCoef: 0.001,
    bias: false,
    sharedExpertFF: 0,
    ...c,
  };
  const { dModel: D, dFF: F, numExperts: E, sharedExpertFF: S } = cfg;
  const F1 = isGatedKind(cfg.activation) ? 2 * F : F;
  const S1 = isGatedKind(cfg.activation) ? 2 * S : S;
  const T = 20;
  const params: MoERefParams = {
    "router.weight": round(normal(D * E, seed, 0.5)),
    "experts.w1": round(normal(E * D * F1, seed + 1, 0.3)),
    "experts.w2": round(normal(E * F * D, seed + 2, 0.3)),
  };
  if (cfg.bias) {
    params["experts.b1"] = round(normal(E * F1, seed + 3, 0.1));
    params["experts.b2"] = round(normal(E * D, seed + 4, 0.1));
  }
  if (S > 0) {
    params["shared_experts.w1"] = round(normal(D * S1, seed + 5, 0.3));
    params["shared_experts.w2"] = round(normal(S * D, seed + 6, 0.3));
    if (cfg.bias) {
      params["shared_experts.b1"] = round(normal(S1, seed + 7, 0.1));
      params["shared_experts.b2"] = round(normal(D, seed + 8, 0.1));
    }
  }
  const x = round(normal(T * D, seed + 9));
  const dy = round(normal(T * D, seed + 10));
  const w = (name: string, shape: number[], dtype = dt) => (params[name] ? t(shape, params[name], dtype) : undefined);
  const ref = moeLayerRef(cfg, params, [{ x, dy }], 2);
  const what = `layer ${JSON.stringify(c)}`;
  return {
    fn: "layer",
    args: {
      config: {
        num_experts: E,
        top_k: cfg.topK,
        activation: cfg.activation,
        score: cfg.scoreFunction,
        renormalize: cfg.renormalize,
        num_groups: cfg.numGroups ?? 0,
        topk_groups: cfg.topkGroups ?? 0,
        capacity_factor: cfg.capacityFactor ?? 0,
        drop_policy: cfg.dropPolicy,
        pad_to_capacity: cfg.padToCapacity,
        aux_loss_coef: cfg.auxLossCoef,
        z_loss_coef: cfg.zLossCoef,
      },
      weights: {
        router_weight: w("router.weight", [D, E], "float32"),
        w1: w("experts.w1", [E, D, F1]),
        b1: w("experts.b1", [E, F1]),
        w2: w("experts.w2", [E, F, D]),
        b2: w("experts.b2", [E, D]),
        shared_w1: w("shared_experts.w1", [1, D, S1]),
        shared_b1: w("shared_experts.b1", [1, S1]),
        shared_w2: w("shared_experts.w2", [1, S, D]),
        shared_b2: w("shared_experts.b2", [1, D]),
      },
      x: t([T, D], x, dt),
      dy: t([T, D], dy, dt),
      loss_scale: 2,
    },
    check: (o) => {
      // The routing choices and drops are decided well above float32 rounding (the gate computes in float32).
      expect(ref.margin).toBeGreaterThan(1e-4);
      near(vals(o, "y"), ref.outputs[0], tol, `${what} output`);
      near([o.aux as number, o.z as number], [ref.aux[0], ref.z[0]], 1e-4, `${what} losses`);
      near(vals(o, "dx"), ref.dx[0], tol, `${what} dx`);
      const grads = o.grads as Record<string, Read | null>;
      const names: Record<string, string> = {
        router_weight: "router.weight",
        w1: "experts.w1",
        b1: "experts.b1",
        w2: "experts.w2",
        b2: "experts.b2",
        shared_w1: "shared_experts.w1",
        shared_b1: "shared_experts.b1",
        shared_w2: "shared_experts.w2",
        shared_b2: "shared_experts.b2",
      };
      for (const [abi, name] of Object.entries(names)) {
        if (!ref.grads[name]) {
          expect({ abi, grad: grads[abi] }).toEqual({ abi, grad: null });
          continue;
        }
        near(grads[abi]!.data, ref.grads[name], tol, `${what} d${name}`);
      }
    },
  };
}

function layerCalls(device: string): Call[] {
  const cuda = device !== "cpu";
  const cases: Array<Partial<MoERefConfig> & { activation: Kind }> = [
    { activation: "relu" },
    { activation: "swiglu", capacityFactor: 1.0 },
    { activation: "gelu", sharedExpertFF: 16, scoreFunction: "sigmoid", renormalize: true },
    { activation: "geglu", capacityFactor: 1.25, dropPolicy: "position", padToCapacity: true, sharedExpertFF: 8 },
  ];
  // The CUDA grouped GEMM computes no bias gradient: bias terms are a CPU case.
  if (!cuda) cases.push({ activation: "silu", bias: true, sharedExpertFF: 8, capacityFactor: 1.0 });
  return cases.map((c, i) => layerCase(device, c, 100 + 20 * i));
}

function check(calls: Call[], results: Result[]): void {
  expect(results).toHaveLength(calls.length);
  calls.forEach((c, i) => {
    const r = results[i];
    if (c.fails) {
      expect({ fn: c.fn, status: r.status }).toEqual({ fn: c.fn, status: c.fails });
      expect(r.message).toMatch(/expected .* but /);
      return;
    }
    if (!r.ok) throw new Error(`${c.fn}: ${r.status}: ${r.message}`);
    c.check(r.out!);
  });
}

describe.each(targets)("the C ABI from Python ($device)", ({ lib, device }) => {
  const present = fs.existsSync(lib);
  const maybe = present ? test : test.skip;
  if (!present && device === "cpu") throw new Error(`${lib} is missing: build the addon first`);

  maybe(
    "every op, forward and backward, against the float64 references",
    () => {
      const calls = opCalls(device);
      check(calls, run(lib, device, calls));
    },
    120000,
  );

  maybe(
    "the layer's forward and backward against the float64 reference layer",
    () => {
      const calls = layerCalls(device);
      check(calls, run(lib, device, calls));
    },
    120000,
  );
});
