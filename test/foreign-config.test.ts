/**
 * Megatron-Core / DeepSpeed shaped configs: read completely (parallel sizes
 * checked against the world, dtype from bf16 / fp16), owned-elsewhere keys
 * reported, unknown keys refused with the nearest known one; native options
 * refuse snake_case keys; AdamW from the optimizer section.
 */
import * as fs from "fs";
import * as path from "path";
import { AdamW, MoELayer, parseForeignConfig, resolveConfig, scope } from "../lib";
import type { ForeignConfig, MoELayerOptions } from "../lib";
import { IGNORED, PRECISION_IGNORED, PRECISION_UNSUPPORTED, READ, UNSUPPORTED } from "../lib/layer/foreign-keys";
import { editDistance, nearest } from "../lib/suggest";
import { fakeWorld } from "./fake-group";
import { adamwRef } from "./reference/adamw";
import { normal, tensor, values } from "./util";

/** The training config of the package's brief, with the layer's widths added. */
const EXAMPLE = {
  hidden_size: 64,
  ffn_hidden_size: 128,
  bf16: { enabled: true },
  optimizer: { type: "adamw", params: { lr: 2e-4 } },
  zero_optimization: { stage: 2 },
  parallelism: {
    data_parallel_size: 4,
    tensor_parallel_size: 2,
    pipeline_parallel_size: 1,
    expert_parallel_size: 4,
  },
  moe: {
    enabled: true,
    num_experts: 64,
    top_k: 2,
    capacity_factor: 1.25,
    load_balancing_loss_coef: 1e-2,
    router: "softmax",
    token_drop_policy: "capacity",
  },
};

const SMALL = { hidden_size: 8, ffn_hidden_size: 16, num_experts: 4 };

const valueError = (message: RegExp) =>
  expect.objectContaining({ code: "ERR_MOE_VALUE", message: expect.stringMatching(message) });

describe("foreign configs", () => {
  test("the example config reads as epSize 4, etpSize 2 (the tensor-parallel size), bfloat16 in a world of 8", () => {
    const { options, ignored } = parseForeignConfig(EXAMPLE, { worldSize: 8 });
    expect(options).toEqual({
      dModel: 64,
      dFF: 128,
      numExperts: 64,
      topK: 2,
      epSize: 4,
      etpSize: 2,
      capacityFactor: 1.25,
      auxLossCoef: 1e-2,
      scoreFunction: "softmax",
      dtype: "bfloat16",
    });
    expect(resolveConfig(options)).toMatchObject({ epSize: 4, etpSize: 2, dtype: "bfloat16", dropPolicy: "probs" });
    expect(ignored.map((k) => k.key)).toEqual(["optimizer", "zero_optimization", "moe.enabled"]);
    for (const k of ignored) expect(k.reason.length).toBeGreaterThan(10);
    expect(ignored[0].reason).toMatch(/AdamW\.fromConfig/);
  });

  test("the example config builds layers with expert tensor parallelism (etpSize 2 × epSize 4) in a world of 8", () => {
    // The layout is known at construction; the groups are split when the layer gets ready.
    const layers = fakeWorld(8).map((g) => MoELayer.fromForeignConfig(EXAMPLE, g));
    try {
      for (const [r, l] of layers.entries()) {
        expect([l.etpSize, l.etpRank, l.epSize, l.epRank]).toEqual([2, r % 2, 4, Math.floor(r / 2) % 4]);
        expect(l.config.dtype).toBe("bfloat16");
      }
    } finally {
      for (const l of layers) l.dispose();
    }
    expect(() => resolveConfig({ dModel: 8, dFF: 8, numExperts: 4, etpSize: 0 })).toThrow(valueError(/etpSize/));
    expect(() => resolveConfig({ dModel: 8, dFF: 8, numExperts: 4, etpSize: 3 })).toThrow(valueError(/divide dFF/));
  });

  test("with tensor_parallel_size 1 the example builds a layer per rank of a world of 4, each reporting what it ignored", async () => {
    const config = { ...EXAMPLE, parallelism: { ...EXAMPLE.parallelism, tensor_parallel_size: 1 } };
    const layers = fakeWorld(4).map((g) => MoELayer.fromForeignConfig(config, g));
    try {
      await Promise.all(layers.map((l) => l.ready));
      for (const [r, l] of layers.entries()) {
        expect([l.epSize, l.epRank, l.numLocalExperts, l.firstExpert]).toEqual([4, r, 16, 16 * r]);
        expect(l.config).toMatchObject({ dtype: "bfloat16", etpSize: 1, capacityFactor: 1.25, topK: 2 });
        expect(l.ignoredConfigKeys.map((k) => k.key)).toEqual(["optimizer", "zero_optimization", "moe.enabled"]);
      }
      const native = new MoELayer({ dModel: 8, dFF: 8, numExperts: 4 });
      expect(native.ignoredConfigKeys).toEqual([]);
      native.dispose();
    } finally {
      for (const l of layers) l.dispose();
    }
  });

  test("DeepSpeed's min_capacity, eval_capacity_factor and use_residual are read (the residual MLP of the experts' width)", () => {
    const { options } = parseForeignConfig({
      hidden_size: 8,
      ffn_hidden_size: 16,
      moe: { num_experts: 4, capacity_factor: 1, min_capacity: 3, eval_capacity_factor: 2, use_residual: true },
    });
    expect(options).toMatchObject({ minCapacity: 3, evalCapacityFactor: 2, residual: true, sharedExpertFF: 16 });
    expect(resolveConfig(options)).toMatchObject({ minCapacity: 3, evalCapacityFactor: 2, residual: true });
    expect(parseForeignConfig({ ...SMALL, use_residual: false }).options.residual).toBeUndefined();
  });

  test("data, tensor and pipeline parallel sizes that do not make up the world are refused, naming each number", () => {
    expect(() => parseForeignConfig(EXAMPLE, { worldSize: 6 })).toThrow(
      valueError(
        /parallelism\.data_parallel_size \(4\) × parallelism\.tensor_parallel_size \(2\) × parallelism\.pipeline_parallel_size \(1\) to equal the world size \(6\) but their product is 8/,
      ),
    );
    expect(() => MoELayer.fromForeignConfig(EXAMPLE, fakeWorld(4)[0])).toThrow(valueError(/world size \(4\)/));
    const megatron = { ...SMALL, tensor_model_parallel_size: 3 };
    expect(() => parseForeignConfig(megatron, { worldSize: 8 })).toThrow(
      valueError(
        /tensor_model_parallel_size \(3\) × pipeline_parallel_size \(not given: 1\) to divide the world size \(8\)/,
      ),
    );
    expect(() =>
      parseForeignConfig({ ...SMALL, data_parallel_size: 2, pipeline_model_parallel_size: 2 }, { worldSize: 4 }),
    ).toThrow(valueError(/pipeline_model_parallel_size 1 but received 2: pipeline parallelism is not supported/));
    expect(() => parseForeignConfig({ ...SMALL, data_parallel_size: 0 })).toThrow(valueError(/data_parallel_size/));
    // Without a world size nothing is compared.
    expect(parseForeignConfig({ ...SMALL, data_parallel_size: 3 }).options).toEqual({
      dModel: 8,
      dFF: 16,
      numExperts: 4,
    });
  });

  test("Megatron-Core's top-level names: expert_tensor_parallel_size (or moe_tp_size) wins over the tensor-parallel size", () => {
    const megatron = {
      hidden_size: 16,
      ffn_hidden_size: 64,
      moe_ffn_hidden_size: 32,
      num_moe_experts: 8,
      moe_router_topk: 2,
      expert_model_parallel_size: 2,
      tensor_model_parallel_size: 2,
      data_parallel_size: 2,
      bf16: true,
      params_dtype: "torch.bfloat16",
    };
    expect(parseForeignConfig(megatron, { worldSize: 4 }).options).toEqual({
      dModel: 16,
      dFF: 32,
      numExperts: 8,
      topK: 2,
      epSize: 2,
      etpSize: 2,
      dtype: "bfloat16",
    });
    expect(parseForeignConfig({ ...megatron, expert_tensor_parallel_size: 1 }).options.etpSize).toBe(1);
    expect(parseForeignConfig({ ...megatron, moe_tp_size: 1 }).options.etpSize).toBe(1);
    const { moe_ffn_hidden_size: _, ...dense } = megatron;
    expect(parseForeignConfig(dense).options.dFF).toBe(64);
  });

  test("dtype: DeepSpeed's bf16 / fp16 { enabled }, Megatron's booleans and params_dtype must agree", () => {
    expect(parseForeignConfig({ ...SMALL, fp16: { enabled: true, loss_scale: 0 } }).options.dtype).toBe("float16");
    expect(parseForeignConfig({ ...SMALL, bf16: { enabled: false } }).options.dtype).toBeUndefined();
    expect(parseForeignConfig({ ...SMALL, fp16: true }).options.dtype).toBe("float16");
    expect(() => parseForeignConfig({ ...SMALL, bf16: { enabled: true }, fp16: { enabled: true } })).toThrow(
      valueError(/bf16\.enabled gives bfloat16 and fp16\.enabled gives float16/),
    );
    expect(() => parseForeignConfig({ ...SMALL, bf16: true, params_dtype: "fp32" })).toThrow(
      valueError(/bf16 gives bfloat16 and params_dtype gives float32/),
    );
    expect(() => parseForeignConfig({ ...SMALL, bf16: { enabled: "auto" } })).toThrow(valueError(/bf16\.enabled/));
    expect(() => parseForeignConfig({ ...SMALL, fp16: { enabled: true, auto_cast: true } })).toThrow(
      valueError(/fp16\.auto_cast = true is not supported/),
    );
  });

  test("unknown keys are refused by name with the nearest known key; Megatron's router_top_k does not fall back to the default", () => {
    expect(() => parseForeignConfig({ ...SMALL, router_top_k: 4 })).toThrow(
      valueError(/router_top_k is not a key this layer knows \(did you mean "router_topk", or "moe_router_topk"\?\)/),
    );
    expect(() => parseForeignConfig({ ...SMALL, moe: { capacity_facter: 1.5 } })).toThrow(
      valueError(/moe\.capacity_facter is not a key.*did you mean "capacity_factor"/),
    );
    expect(() => parseForeignConfig({ ...SMALL, parallelism: { expert_paralel_size: 2 } })).toThrow(
      valueError(/parallelism\.expert_paralel_size .*did you mean "expert_parallel_size"/),
    );
    expect(() => parseForeignConfig({ ...SMALL, optimiser: {} })).toThrow(valueError(/did you mean "optimizer"/));
    // Every problem at once; no suggestion when nothing is near.
    let message = "";
    try {
      parseForeignConfig({ ...SMALL, wibble: 1, fp16: { enabeld: true } });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/wibble is not a key this layer knows;/);
    expect(message).not.toMatch(/wibble[^;]*did you mean/);
    expect(message).toMatch(/fp16\.enabeld is not a key this layer knows \(did you mean "enabled"\?\)/);
  });

  test("keys that would change the math are accepted only at the value this layer computes with", () => {
    expect(parseForeignConfig({ ...SMALL, moe_router_pre_softmax: false, moe_router_dtype: "fp32" }).ignored).toEqual(
      [],
    );
    expect(() => parseForeignConfig({ ...SMALL, moe_router_pre_softmax: true })).toThrow(
      valueError(/moe_router_pre_softmax = true is not supported/),
    );
    expect(() => parseForeignConfig({ ...SMALL, moe: { router_dtype: "fp64" } })).toThrow(
      valueError(/moe\.router_dtype = "fp64" is not supported \(the router computes in float32\)/),
    );
    expect(() => parseForeignConfig({ ...SMALL, moe_router_load_balancing_type: "sinkhorn" })).toThrow(
      valueError(/moe_router_load_balancing_type/),
    );
    expect(parseForeignConfig({ ...SMALL, moe_router_load_balancing_type: "none" }).options.auxLossCoef).toBe(0);
    expect(() =>
      parseForeignConfig({ ...SMALL, moe_router_load_balancing_type: "none", moe_aux_loss_coeff: 1e-2 }),
    ).toThrow(valueError(/moe_aux_loss_coeff = 0\.01/));
    expect(() => parseForeignConfig({ ...SMALL, moe: { enabled: false } })).toThrow(valueError(/moe\.enabled/));
    expect(() => parseForeignConfig({ ...SMALL, capacity_factor: 1, token_drop_policy: "dropless" })).toThrow(
      valueError(/no capacity factor with token_drop_policy "dropless"/),
    );
  });

  test("two spellings of one setting must agree", () => {
    expect(() => parseForeignConfig({ ...SMALL, moe: { top_k: 2 }, moe_router_topk: 4 })).toThrow(
      valueError(/one value for moe\.top_k and moe_router_topk .* 2 and 4/),
    );
    expect(parseForeignConfig({ ...SMALL, moe: { top_k: 2 }, moe_router_topk: 2 }).options.topK).toBe(2);
  });

  test("ignored keys are reported in the config's order and change nothing", () => {
    const training = {
      train_batch_size: 256,
      optimizer: { type: "AdamW", params: { lr: 1e-3 } },
      gradient_clipping: 1.0,
      fp16: { enabled: true, loss_scale: 0, initial_scale_power: 16 },
      zero_optimization: { stage: 3 },
      num_attention_heads: 8,
      moe: { grouped_gemm: true },
    };
    const { options, ignored } = parseForeignConfig({ ...SMALL, ...training });
    expect(ignored.map((k) => k.key)).toEqual([
      "train_batch_size",
      "optimizer",
      "gradient_clipping",
      "fp16.loss_scale",
      "fp16.initial_scale_power",
      "zero_optimization",
      "num_attention_heads",
      "moe.grouped_gemm",
    ]);
    expect(ignored[2].reason).toMatch(/clipGradNorm/);
    expect(ignored[3].reason).toMatch(/loss scaling/);
    expect(options).toEqual({ ...parseForeignConfig({ ...SMALL, fp16: true }).options });
  });

  test("native options refuse snake_case and misspelt keys, naming the option meant; fromConfig is the constructor", () => {
    const base = { dModel: 8, dFF: 8, numExperts: 4 };
    const refuse = (extra: Record<string, unknown>, message: RegExp) =>
      expect(() => new MoELayer({ ...base, ...extra } as MoELayerOptions)).toThrow(valueError(message));
    refuse({ top_k: 2 }, /unknown option "top_k" \(did you mean "topK"\?\); .*MoELayer\.fromForeignConfig/);
    refuse({ hidden_size: 8 }, /unknown option "hidden_size" \(did you mean "dModel"\?\)/);
    refuse({ expert_parallel_size: 1 }, /did you mean "epSize"/);
    refuse({ pad_to_capacity: true }, /did you mean "padToCapacity"/);
    refuse({ numExpert: 8 }, /unknown option "numExpert" \(did you mean "numExperts"\?\)$/);
    const layer = MoELayer.fromConfig({ ...base, seed: 7 });
    expect(layer.config).toEqual(resolveConfig({ ...base, seed: 7 }));
    layer.dispose();
  });

  test("docs/config.md lists every key of the tables", () => {
    const doc = fs.readFileSync(path.join(__dirname, "..", "docs", "config.md"), "utf8");
    const names = [
      ...Object.values(READ).flatMap((k) => k.names),
      ...Object.keys(IGNORED),
      ...Object.keys(UNSUPPORTED),
      ...Object.keys(PRECISION_IGNORED),
      ...Object.keys(PRECISION_UNSUPPORTED),
    ];
    expect(names.filter((n) => !doc.includes(`\`${n}\``))).toEqual([]);
  });

  test("edit distance and the nearest name", () => {
    expect(editDistance("kitten", "sitting")).toBe(3);
    expect(editDistance("", "abc")).toBe(3);
    expect(editDistance("router_top_k", "router_topk")).toBe(1);
    expect(nearest("numExpert", ["dModel", "numExperts", "topK"])).toBe("numExperts");
    expect(nearest("wibble", ["dModel", "numExperts"])).toBeUndefined();
  });
});

describe("AdamW.fromConfig", () => {
  const params = () => [{ name: "w", param: tensor(normal(6, 1), [6]), grad: tensor(normal(6, 2), [6]) }];

  test("the optimizer section sets lr, betas, eps and weight_decay; a step matches the float64 reference", () =>
    scope(async () => {
      const config: ForeignConfig = {
        optimizer: { type: "AdamW", params: { lr: 2e-2, betas: [0.8, 0.95], eps: 1e-6, weight_decay: 0.1 } },
        bf16: { enabled: true },
      };
      const ps = params();
      const opt = AdamW.fromConfig(ps, config);
      expect([opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weightDecay]).toEqual([2e-2, 0.8, 0.95, 1e-6, 0.1]);
      const before = {
        param: Float64Array.from(values(ps[0].param)),
        expAvg: new Float64Array(6),
        expAvgSq: new Float64Array(6),
      };
      const grad = values(ps[0].grad);
      await opt.step();
      const want = adamwRef(before, grad, { lr: 2e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1, step: 1 });
      values(ps[0].param).forEach((v, i) => expect(Math.abs(v - want.param[i])).toBeLessThan(1e-6));
      opt.dispose();
    }));

  test("DeepSpeed's defaults (lr 1e-3, weight_decay 0), any case of the type; implementation-only params accepted", () =>
    scope(async () => {
      const opt = AdamW.fromConfig(params(), { optimizer: { type: "adamW", params: { torch_adam: true } } });
      expect([opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weightDecay]).toEqual([1e-3, 0.9, 0.999, 1e-8, 0]);
      opt.dispose();
    }));

  test.each([
    [{ optimizer: { type: "Adam", params: { lr: 1e-3 } } }, /optimizer\.type "AdamW" but received "Adam"/],
    [{ optimizer: { type: "SGD" } }, /received "SGD"/],
    [{ optimizer: { type: "AdamW", params: { weight_decy: 0.1 } } }, /"weight_decy" \(did you mean "weight_decay"\?\)/],
    [{ optimizer: { type: "AdamW", params: { amsgrad: true } } }, /optimizer\.params\.amsgrad/],
    [{ optimizer: { type: "AdamW", params: { adam_w_mode: false } } }, /L2 regularisation/],
    [{ optimizer: { type: "AdamW", params: { betas: [0.9] } } }, /optimizer\.params\.betas/],
    [{ optimizer: { type: "AdamW", params: { lr: "1e-3" } } }, /optimizer\.params\.lr/],
    [{ optimizer: { type: "AdamW", param: {} } }, /unknown key "param" \(did you mean "params"\?\)/],
    [{ zero_optimization: {} }, /optimizer/],
  ] as Array<[ForeignConfig, RegExp]>)("%j is an ERR_MOE_VALUE naming it", (config, message) =>
    scope(() => {
      expect(() => AdamW.fromConfig(params(), config)).toThrow(valueError(message));
    }),
  );
});
