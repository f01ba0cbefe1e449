// A typed training loop: one MoE layer (8 experts, top-2) learns to map random
// tokens to a fixed random target with AdamW, in one process or, started by
// `moe-ep launch -n 2`, with its experts sharded over the ranks.
import { AdamW, initProcessGroup, MoELayer, ops, Tensor, type MoELayerOptions, type ProcessGroup } from "moe-ep";

const tokens = 256;
const config: MoELayerOptions = {
  dModel: 32,
  dFF: 64,
  numExperts: 8,
  topK: 2,
  activation: "gelu",
  auxLossCoef: 1e-2,
  seed: 1,
};

async function normal(shape: number[], seed: number, std = 1): Promise<Tensor> {
  const t = Tensor.zeros(shape);
  await ops.fillRandom(t, { seed, std });
  return t;
}

async function main(): Promise<void> {
  const group: ProcessGroup | undefined = process.env.WORLD_SIZE ? await initProcessGroup() : undefined;
  const rank = group?.rank ?? 0;
  const moe = await MoELayer.create({ ...config, epSize: group?.size ?? 1 }, group);
  const opt = new AdamW(moe.parameters(), { lr: 1e-2 });
  const x = await normal([tokens, config.dModel], 100 + rank);
  const target = (await normal([tokens, config.dModel], 200 + rank, 0.5)).toFloat32();
  for (let step = 1; step <= 20; step++) {
    const { output, auxLoss } = await moe.forward(x);
    // Mean squared error and its gradient, on the host.
    const y = output.toFloat32();
    const grad = new Float32Array(y.length);
    let loss = 0;
    for (let i = 0; i < y.length; i++) {
      const d = y[i] - target[i];
      loss += (d * d) / y.length;
      grad[i] = (2 * d) / y.length;
    }
    const dy = Tensor.from(grad, output.shape);
    (await moe.backward(dy)).dispose();
    await opt.step();
    await moe.zeroGrad();
    if (rank === 0 && (step === 1 || step % 5 === 0))
      console.log(`step ${step} loss ${loss.toFixed(5)} aux ${auxLoss.toFixed(4)}`);
    for (const t of [output, dy]) t.dispose();
  }
  x.dispose();
  group?.destroy();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
