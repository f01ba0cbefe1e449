/**
 * State dicts: every parameter and buffer under the documented names and
 * shapes, experts by global index; values equal to the layer's (read here
 * from the stacked parameters independently); loadStateDict round-trips bit
 * for bit, reshards between EP sizes, converts floats, and refuses bad dicts
 * with typed errors before changing anything. Names follow parameters(), and
 * an expertGather hook is what the dict sees of sliced experts.
 */
import { MoELayer, Tensor, loadStateDict, ops, stateDict, type ExpertGather, type StateDictLayer } from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { fakeWorld } from "./fake-group";
import { randomizeBiases } from "./layer-helpers";
import { bf16, normal, sameBits, tensor, values } from "./util";

const options: MoELayerOptions = {
  dModel: 6,
  dFF: 5,
  numExperts: 4,
  topK: 2,
  seed: 3,
  initStd: 0.3,
  bias: true,
  sharedExpertFF: 3,
  expertBias: true,
  activation: "swiglu",
};

function dispose(dict: Map<string, Tensor>): void {
  for (const t of dict.values()) t.dispose();
}

/** Every tensor's bytes of a layer: parameters in order, then buffers. */
function snapshot(layer: MoELayer): string[] {
  return [...layer.parameters().map((p) => p.param), ...layer.buffers().map((b) => b.tensor)].map((t) =>
    Buffer.from(t.handle.read(t.dtype)).toString("hex"),
  );
}

describe("stateDict", () => {
  test("names and shapes as documented: experts by global index on each EP rank, values those of the stacked parameters", async () => {
    const world = fakeWorld(2);
    const layers = await Promise.all(world.map((g) => MoELayer.create({ ...options, epSize: 2, name: "moe" }, g)));
    await Promise.all(layers.map((l, r) => randomizeBiases(l, 10 + r)));
    const [D, F, E, S] = [6, 5, 4, 3];
    for (const [r, layer] of layers.entries()) {
      const dict = await layer.stateDict();
      const want: Record<string, number[]> = {
        "moe.router.weight": [D, E],
        "moe.shared_experts.w1": [D, 2 * S],
        "moe.shared_experts.w2": [S, D],
        "moe.shared_experts.b1": [2 * S],
        "moe.shared_experts.b2": [D],
        "moe.router.expert_bias": [E],
      };
      for (const e of [2 * r, 2 * r + 1]) {
        want[`moe.experts.${e}.w1`] = [D, 2 * F];
        want[`moe.experts.${e}.w2`] = [F, D];
        want[`moe.experts.${e}.b1`] = [2 * F];
        want[`moe.experts.${e}.b2`] = [D];
      }
      expect(Object.fromEntries([...dict].map(([k, t]) => [k, t.shape]))).toEqual(want);
      // Expert e's tensor is slice e - firstExpert of the stacked parameter, element for element.
      for (const name of ["w1", "w2", "b1", "b2"]) {
        const stacked = values(layer.parameters().find((p) => p.name === `moe.experts.${name}`)!.param);
        const per = stacked.length / 2;
        for (const l of [0, 1])
          expect(values(dict.get(`moe.experts.${2 * r + l}.${name}`)!)).toEqual(stacked.slice(l * per, (l + 1) * per));
      }
      expect(sameBits(dict.get("moe.router.weight")!, layer.parameters()[0].param)).toBe(true);
      expect(sameBits(dict.get("moe.router.expert_bias")!, layer.buffers()[0].tensor)).toBe(true);
      // The dict's tensors are copies: changing one leaves the layer as it was.
      const before = snapshot(layer);
      using zero = Tensor.zeros([D, 2 * F]);
      await ops.copyInto(dict.get(`moe.experts.${2 * r}.w1`)!, zero);
      expect(snapshot(layer)).toEqual(before);
      dispose(dict);
    }
    layers.forEach((l) => l.dispose());
  });

  test("loadStateDict round-trips bit for bit: the loaded layer computes what the saved one does", async () => {
    const a = await MoELayer.create({ ...options, dtype: "bfloat16" });
    await randomizeBiases(a, 4);
    const b = await MoELayer.create({ ...options, dtype: "bfloat16", seed: 99 });
    expect(snapshot(b)).not.toEqual(snapshot(a));
    const dict = await a.stateDict();
    const report = await b.loadStateDict(dict);
    expect(report).toEqual({ missing: [], unexpected: [] });
    expect(snapshot(b)).toEqual(snapshot(a));
    using x = tensor(normal(7 * 6, 5), [7, 6], "bfloat16");
    const [ya, yb] = [await a.eval().forward(x), await b.eval().forward(x)];
    expect(sameBits(ya.output, yb.output)).toBe(true);
    ya.output.dispose();
    yb.output.dispose();
    // A plain object works as well as a Map.
    const c = await MoELayer.create({ ...options, dtype: "bfloat16", seed: 98 });
    await loadStateDict(c, Object.fromEntries(dict));
    expect(snapshot(c)).toEqual(snapshot(a));
    dispose(dict);
    for (const l of [a, b, c]) l.dispose();
  });

  test.each([
    [2, 1],
    [1, 4],
    [4, 2],
  ])("the dicts of epSize %i, merged, load into every rank of epSize %i", async (from, to) => {
    const src = await Promise.all(
      fakeWorld(from).map((g) => MoELayer.create({ ...options, epSize: from, name: "m" }, g)),
    );
    const dicts = await Promise.all(src.map((l) => stateDict(l)));
    const merged = new Map(dicts.flatMap((d) => [...d]));
    const dst = await Promise.all(
      fakeWorld(to).map((g) => MoELayer.create({ ...options, epSize: to, name: "m", seed: 50 }, g)),
    );
    const reports = await Promise.all(dst.map((l) => l.loadStateDict(merged)));
    reports.forEach((r) => expect(r).toEqual({ missing: [], unexpected: [] }));
    for (const l of dst) {
      const mine = await l.stateDict();
      for (const [k, t] of mine) expect([k, sameBits(t, merged.get(k)!)]).toEqual([k, true]);
      dispose(mine);
    }
    dicts.forEach(dispose);
    [...src, ...dst].forEach((l) => l.dispose());
  });

  test("floats convert to the layer's dtype; bad dicts get typed errors naming the key and change nothing", async () => {
    const layer = await MoELayer.create(options);
    const dict = await layer.stateDict();
    // A bfloat16 dict loads into the float32 layer as the bfloat16 values.
    const half = new Map<string, Tensor>();
    for (const [k, t] of dict) half.set(k, tensor(values(t), t.shape, "bfloat16"));
    await layer.loadStateDict(half);
    const w1 = layer.parameters().find((p) => p.name === "experts.w1")!.param;
    const stacked = Float64Array.from([0, 1, 2, 3].flatMap((e) => [...bf16(values(dict.get(`experts.${e}.w1`)!))]));
    expect(values(w1)).toEqual(stacked);
    const before = snapshot(layer);
    const cases: Array<[string, (d: Map<string, Tensor>) => void, string, RegExp]> = [
      [
        "a wrong shape",
        (d) => d.set("experts.2.w2", Tensor.zeros([5, 7])),
        "ERR_MOE_SHAPE",
        /experts\.2\.w2 of shape \[5, 6\] in the state dict but received \[5, 7\]/,
      ],
      [
        "an integer tensor",
        (d) => d.set("router.expert_bias", Tensor.zeros([4], { dtype: "int32" })),
        "ERR_MOE_DTYPE",
        /router\.expert_bias as float32 in the state dict but received int32/,
      ],
      ["a missing key", (d) => d.delete("shared_experts.b2"), "ERR_MOE_VALUE", /lacks shared_experts\.b2/],
      [
        "an unknown key",
        (d) => d.set("experts.4.w1", Tensor.zeros([6, 10])),
        "ERR_MOE_VALUE",
        /keys the layer has not: experts\.4\.w1/,
      ],
    ];
    for (const [what, breakIt, code, message] of cases) {
      const bad = new Map(half);
      breakIt(bad);
      await expect([what, await layer.loadStateDict(bad).catch((e) => e)]).toEqual([
        what,
        expect.objectContaining({ code, message: expect.stringMatching(message) }),
      ]);
      expect(snapshot(layer)).toEqual(before);
    }
    await expect(layer.loadStateDict(null as never)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(stateDict(null as never)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(loadStateDict({} as never, half)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(layer.loadStateDict(half, { strict: "yes" as never })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
    await expect(layer.loadStateDict({ "router.weight": 5 } as never)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    // Not strict: what matches loads, and the report names the rest.
    const partial = new Map([
      ["router.weight", Tensor.zeros([6, 4])],
      ["experts.1.b1", Tensor.zeros([10])],
      ["extra", Tensor.zeros([1])],
    ]);
    const report = await layer.loadStateDict(partial, { strict: false });
    expect(report.unexpected).toEqual(["extra"]);
    expect(report.missing).toHaveLength(dict.size - 2);
    expect(values(layer.parameters()[0].param).every((v) => v === 0)).toBe(true);
    const b1 = values(layer.parameters().find((p) => p.name === "experts.b1")!.param);
    expect(b1.slice(10, 20).every((v) => v === 0)).toBe(true);
    expect(b1.slice(0, 10)).toEqual(values(dict.get("experts.0.b1")!));
    for (const d of [dict, half, partial]) dispose(d);
    layer.dispose();
  });
});

describe("names come from the parameter list, and sliced experts from expertGather", () => {
  /** A layer-like object with one replicated parameter of a new kind and one expert parameter. */
  function fakeLayer(gather?: ExpertGather): StateDictLayer & { w: Tensor; extra: Tensor } {
    const w = Tensor.from(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]);
    const extra = Tensor.from(Float32Array.from([7, 8]), [2]);
    return {
      ready: Promise.resolve(),
      config: { name: "blk", numExperts: 4 },
      firstExpert: 2,
      numLocalExperts: 2,
      w,
      extra,
      parameters: () => [
        { name: "blk.residual_mlp.w", param: extra, expert: false },
        { name: "blk.experts.w", param: w, expert: true },
      ],
      buffers: () => [],
      expertGather: gather,
    };
  }

  test("a parameter the layer gains appears in the dict by itself; experts of rank 1 are 2 and 3", async () => {
    const l = fakeLayer();
    const d = await stateDict(l);
    expect([...d.keys()]).toEqual(["blk.residual_mlp.w", "blk.experts.2.w", "blk.experts.3.w"]);
    expect(values(d.get("blk.experts.3.w")!)).toEqual(Float64Array.from([4, 5, 6]));
    dispose(d);
  });

  test("gather gives whole tensors (here: each local row twice) and scatter receives whole ones back", async () => {
    const scattered: number[][] = [];
    const gather: ExpertGather = {
      wholeShape: (_p, t) => [t.shape[0], 2 * t.shape[1]],
      gather: async (_p, t) => {
        const v = values(t);
        const rows = [0, 1].flatMap((l) => {
          const row = [...v.slice(3 * l, 3 * l + 3)];
          return [...row, ...row];
        });
        return Tensor.from(Float32Array.from(rows), [2, 6]);
      },
      scatter: async (_p, _t, whole) => {
        scattered.push([...values(whole)]);
      },
    };
    const l = fakeLayer(gather);
    const d = await stateDict(l);
    expect(d.get("blk.experts.2.w")!.shape).toEqual([6]);
    expect(values(d.get("blk.experts.2.w")!)).toEqual(Float64Array.from([1, 2, 3, 1, 2, 3]));
    await loadStateDict(l, d);
    expect(scattered).toEqual([[1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]]);
    dispose(d);
  });
});
