/**
 * The MoE layer's glue ops and the layer itself on CUDA (in CI on the CPU
 * emulator of cuda/emu/): each op on cuda:0 against
 * the float64 references (bf16 tolerance; the random numbers bit for bit
 * against the CPU op), and a bf16 MoELayer on
 * cuda:0 forward + backward against the float64 reference layer, with no
 * group and with an NCCL group of world size 1. Where CUDA is unavailable
 * each case is listed as skipped with the reason. The construction-time
 * refusals of unsupported CUDA configurations run everywhere.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MoELayer, Tensor, type MoELayerGroup } from "../lib";
import { initProcessGroup, ncclStatus } from "../lib/comm";
import type { MoELayerOptions } from "../lib/layer/config";
import { add, axpby, sumSquares } from "../lib/ops/elementwise";
import { chunkTranspose } from "../lib/ops/chunks";
import { expertBiasUpdate } from "../lib/ops/expert-bias";
import { fillRandom, jitter } from "../lib/ops/random";
import { reshape } from "../lib/ops/view";
import { refConfig, readParams, shortName } from "./layer-helpers";
import { chunkTransposeRef } from "./reference/chunks";
import { expertBiasUpdateRef } from "./reference/expert-bias";
import { moeLayerRef, type MoERefParams, type MoERefRank } from "./reference/moe-layer";
import { fillRandomRef, jitterNoiseRef } from "./reference/random";
import { cudaTest, f32, normal, onDevice, relErr, sameBits, tensor, values, TOL } from "./util";

const close = (got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string) => {
  const e = relErr(got, want);
  if (!(e < tol)) throw new Error(`${what}: relative error ${e} >= ${tol}`);
};
const on = async (
  device: string,
  data: ArrayLike<number>,
  shape: number[],
  dtype: "float32" | "bfloat16" | "float16" = "float32",
) => onDevice(device as "cuda:0", tensor(data, shape, dtype));

describe("layer ops on CUDA", () => {
  for (const dtype of ["float32", "bfloat16", "float16"] as const) {
    const tol = dtype === "float32" ? TOL.float32 : TOL.bfloat16;
    cudaTest(`add and axpby (${dtype}) match float64`, async (dev) => {
      for (const n of [1, 1000, 70001]) {
        const a = f32(normal(n, 1)),
          b = f32(normal(n, 2));
        using ta = await on(dev, a, [n], dtype);
        using tb = await on(dev, b, [n], dtype);
        using s = await add(ta, tb);
        expect(s.device).toBe(dev);
        close(
          values(s),
          a.map((v, i) => v + b[i]),
          tol,
          `add n=${n}`,
        );
        await axpby(ta, tb, { alpha: 0.5, beta: -2 });
        close(
          values(ta),
          a.map((v, i) => 0.5 * v - 2 * b[i]),
          tol,
          `axpby n=${n}`,
        );
        await axpby(ta, null, { alpha: 0 });
        expect(values(ta).every((v) => v === 0)).toBe(true);
      }
    });
  }

  cudaTest("sumSquares over mixed dtypes matches float64 and repeats bit for bit", async (dev) => {
    const sizes = [3, 16384, 16385, 100000];
    const data = sizes.map((n, i) => f32(normal(n, 10 + i)));
    const ts = await Promise.all(data.map((d, i) => on(dev, d, [d.length], i % 2 ? "bfloat16" : "float32")));
    try {
      const want = ts.reduce((s, t) => s + values(t).reduce((a, v) => a + v * v, 0), 0);
      using s1 = await sumSquares(ts);
      using s2 = await sumSquares(ts);
      expect(s1.device).toBe(dev);
      expect(Math.abs(s1.item() - want) / want).toBeLessThan(1e-6);
      expect(sameBits(s1, s2)).toBe(true);
    } finally {
      ts.forEach((t) => t.dispose());
    }
  });

  cudaTest(
    "fillRandom and jitter write exactly what the CPU op writes (uniform, jitter) or within 1 float32 ulp (normal)",
    async (dev) => {
      for (const dtype of ["float32", "bfloat16"] as const) {
        for (const [dist, a, b] of [
          ["uniform", -1, 3],
          ["normal", 0.5, 2],
        ] as const) {
          const o = { seed: 99, key: 1234567, distribution: dist, sliceSize: 1000, firstSlice: 3 } as const;
          const opts = dist === "normal" ? { ...o, mean: a, std: b } : { ...o, low: a, high: b };
          using c = Tensor.zeros([5000], { dtype });
          using g = Tensor.zeros([5000], { dtype, device: dev as "cuda:0" });
          await fillRandom(c, opts as never);
          await fillRandom(g, opts as never);
          const cv = values(c),
            gv = values(g);
          if (dist === "uniform") expect(sameBits(c, await g.to("cpu"))).toBe(true);
          else
            for (let i = 0; i < cv.length; i++)
              expect(Math.abs(cv[i] - gv[i])).toBeLessThanOrEqual(
                Math.abs(cv[i]) * 2 ** -23 * (dtype === "float32" ? 1 : 2 ** 16),
              );
          close(
            gv,
            fillRandomRef(5000, { seed: 99, key: 1234567, distribution: dist, a, b, sliceSize: 1000, firstSlice: 3 }),
            dtype === "float32" ? 1e-6 : TOL.bfloat16,
            `${dist} ${dtype}`,
          );
        }
      }
      const x = f32(normal(4096, 5));
      using xc = tensor(x, [64, 64]);
      using xg = await on(dev, x, [64, 64]);
      using jc = await jitter(xc, { eps: 0.1, seed: 7, key: 42, slice: 5 });
      using jg = await jitter(xg, { eps: 0.1, seed: 7, key: 42, slice: 5 });
      using jgHost = await jg.to("cpu");
      expect(sameBits(jc, jgHost)).toBe(true);
      const u = jitterNoiseRef(4096, 0.1, 7, 42, 5);
      close(
        values(jg),
        x.map((v, i) => v * u[i]),
        1e-6,
        "jitter",
      );
    },
  );

  cudaTest("chunkTranspose matches the reference (bf16, empty chunks included) and rejects bad counts", async (dev) => {
    for (const counts of [
      [
        [2, 0, 3],
        [1, 4, 0],
      ],
      [
        [0, 0],
        [0, 5],
      ],
      [[7]],
    ]) {
      const R = counts.flat().reduce((a, b) => a + b, 0),
        W = 24;
      const x = f32(normal(R * W, R));
      using tx = await on(dev, x, [R, W], "bfloat16");
      using c = await onDevice(
        dev,
        Tensor.from(Int32Array.from(counts.flat()), [counts.length, counts[0].length], { dtype: "int32" }),
      );
      using y = await chunkTranspose(tx, c);
      close(values(y), chunkTransposeRef(values(tx), W, counts), 1e-12, `chunkTranspose ${JSON.stringify(counts)}`);
    }
    using tx = await on(dev, new Float64Array(8), [4, 2]);
    using bad = await onDevice(dev, Tensor.from(Int32Array.from([1, 2]), [1, 2], { dtype: "int32" }));
    await expect((async () => (await chunkTranspose(tx, bad)).toFloat32())()).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
  });

  cudaTest("expertBiasUpdate matches the reference for int32 and float32 loads", async (dev) => {
    const bias = f32(normal(8, 3, 0.1));
    for (const load of [Int32Array.from([5, 0, 3, 9, 4, 4, 1, 6]), Float32Array.from([2, 2, 2, 2, 2, 2, 2, 2])]) {
      using b = await on(dev, bias, [8]);
      using l = await onDevice(
        dev,
        Tensor.from(load, [8], { dtype: load instanceof Int32Array ? "int32" : "float32" }),
      );
      await expertBiasUpdate(b, l, 0.01);
      close(values(b), expertBiasUpdateRef(bias, load, 0.01), 1e-6, "expert bias");
    }
  });

  cudaTest("reshape of a device tensor is a view on the device", async (dev) => {
    using t = await on(dev, [1, 2, 3, 4, 5, 6], [2, 3]);
    using v = reshape(t, [3, 2]);
    expect(v.device).toBe(dev);
    expect(Array.from(values(v))).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

// ---- the layer ------------------------------------------------------------------

const layerOptions: MoELayerOptions = {
  dModel: 16,
  dFF: 16,
  numExperts: 8,
  topK: 2,
  seed: 5,
  initStd: 0.3,
  auxLossCoef: 0.01,
  zLossCoef: 0.001,
  activation: "swiglu",
  dtype: "bfloat16",
  device: "cuda:0",
};

async function layerParity(group?: MoELayerGroup): Promise<void> {
  const layer = await MoELayer.create(layerOptions, group);
  try {
    const params: MoERefParams = readParams(layer);
    const cfg = refConfig(layer);
    const T = 64,
      D = 16;
    let ranks: MoERefRank[] = [];
    let ref = moeLayerRef(cfg, params, ranks);
    for (let s = 1; ; s += 1000) {
      ranks = [{ x: f32(normal(T * D, s)), dy: f32(normal(T * D, s + 1)) }];
      ref = moeLayerRef(cfg, params, ranks);
      if (ref.margin > 1e-3) break;
    }
    using x = await on("cuda:0", ranks[0].x, [T, D], "bfloat16");
    const res = await layer.forward(x);
    using out = res.output;
    expect(out.device).toBe("cuda:0");
    close(values(out), ref.outputs[0], TOL.bfloat16, "output");
    expect(res.stats.tokensPerExpert).toEqual(ref.tokensPerExpert);
    using dy = await on("cuda:0", ranks[0].dy, [T, D], "bfloat16");
    using dx = await layer.backward(dy);
    close(values(dx), ref.dx[0], TOL.bfloat16, "dx");
    for (const p of layer.parameters())
      close(values(p.grad), ref.grads[shortName(layer, p.name)], TOL.bfloat16, `grad of ${p.name}`);
  } finally {
    layer.dispose();
  }
}

describe("MoELayer on CUDA", () => {
  cudaTest(
    "bf16 swiglu, epSize 1, no group: forward and backward match the float64 reference",
    () => layerParity(),
    60000,
  );

  const nccl = ncclStatus();
  if (!nccl.available)
    test.skip(`with an NCCL group of world size 1 (skipped: NCCL unavailable: ${nccl.reason})`, () => undefined);
  else
    cudaTest(
      "bf16 swiglu with an NCCL group of world size 1: forward and backward match the float64 reference",
      async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-layer-cuda-"));
        const pg = await initProcessGroup({
          backend: "nccl",
          rank: 0,
          worldSize: 1,
          store: `file://${dir}`,
          runId: "layer-cuda",
          device: "cuda:0",
          timeoutMs: 30000,
        });
        try {
          await layerParity(pg);
        } finally {
          await pg.destroy();
        }
      },
      60000,
    );

  test("unsupported CUDA configurations fail at construction with ERR_MOE_UNSUPPORTED naming them", () => {
    const bad: Array<[Partial<MoELayerOptions>, RegExp]> = [
      [{ dtype: "float32" }, /dtype "float32".*expected bfloat16 or float16/],
      [{ bias: true }, /bias: true\).*no bias gradient/],
      [{ dModel: 12 }, /K = dModel = 12.*multiples of 8/],
      [{ dFF: 20 }, /K = dFF = 20.*multiples of 8/],
      [{ sharedExpertFF: 4 }, /K = sharedExpertFF = 4.*multiples of 8/],
    ];
    for (const [extra, message] of bad) {
      expect(() => new MoELayer({ ...layerOptions, ...extra })).toThrow(
        expect.objectContaining({ code: "ERR_MOE_UNSUPPORTED", message: expect.stringMatching(message) }),
      );
    }
    const gloo = {
      rank: 0,
      size: 1,
      backend: "gloo",
      allToAllV: async () => undefined,
      allReduce: async () => undefined,
    };
    expect(() => new MoELayer(layerOptions, gloo as unknown as MoELayerGroup)).toThrow(
      expect.objectContaining({ code: "ERR_MOE_UNSUPPORTED", message: expect.stringMatching(/"nccl" process group/) }),
    );
    const ncclLike = { ...gloo, backend: "nccl" };
    expect(() => new MoELayer({ ...layerOptions, device: "cpu" }, ncclLike as unknown as MoELayerGroup)).toThrow(
      expect.objectContaining({ code: "ERR_MOE_UNSUPPORTED" }),
    );
  });
});
