/**
 * One rank of `benchAlltoall` (lib/bench/alltoall.ts), started by `moe-ep
 * launch`: for each size, an equal-split allToAllV (counts exchanged, then the
 * rows) timed over a number of iterations, then the received data checked
 * against the rank-encoded values every sender put in (nccl-tests' way: the
 * receiver knows exactly what must arrive). Rank 0 writes the rows to the
 * JSON file named by --out.
 *
 * Arguments: --out FILE --min BYTES --max BYTES [--timeout MS]
 */
import * as fs from "fs";
import { initProcessGroup } from "../comm/process-group";
import { Tensor } from "../tensor";
import { memcpyBandwidth, type MemcpyBandwidthResult } from "./peak";

export interface AlltoallRow {
  /** Bytes each rank sends (and receives), all peers together. */
  bytes: number;
  /** float32 elements each rank sends. */
  count: number;
  /** Iterations timed. */
  iterations: number;
  /** Microseconds per allToAllV, the slowest rank's average. */
  timeUs: number;
  /** bytes / time, GB/s (1e9 bytes). */
  algbw: number;
  /** algbw · (n − 1) / n: the bytes that cross between ranks. */
  busbw: number;
  /** Elements that arrived wrong, summed over every rank. */
  wrong: number;
}

export interface AlltoallWorkerReport {
  worldSize: number;
  /** Ranks per host (LOCAL_WORLD_SIZE). */
  localWorldSize: number;
  /** Rank 0's Gloo address. */
  hostname: string;
  memcpy: MemcpyBandwidthResult;
  rows: AlltoallRow[];
}

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) throw new Error(`alltoall-worker: ${name} is required`);
  return v;
}

/** Iterations for a size: more for small messages, at least 5. */
function iterationsFor(bytes: number): number {
  return Math.max(5, Math.min(200, Math.round(2 ** 26 / bytes)));
}

async function main(): Promise<void> {
  const out = arg("--out");
  const minBytes = Number(arg("--min"));
  const maxBytes = Number(arg("--max"));
  const timeoutMs = Number(arg("--timeout", "120000"));
  const pg = await initProcessGroup({ timeoutMs });
  const W = pg.size;
  const me = pg.rank;
  // Values (s·W + d)·M + k mod M stay exact in float32 (below 2^24).
  const M = 2 ** Math.floor(24 - Math.log2(W * W));

  // The machine's limit, measured in the same run while the other ranks wait.
  let memcpy: MemcpyBandwidthResult | undefined;
  if (me === 0) memcpy = await memcpyBandwidth({ bytes: Math.max(2 ** 20, Math.min(maxBytes, 2 ** 26)) });
  await pg.barrier();

  const rows: AlltoallRow[] = [];
  for (let bytes = minBytes; bytes <= maxBytes; bytes *= 2) {
    const per = Math.floor(bytes / 4 / W);
    const count = per * W;
    const data = new Float32Array(count);
    for (let d = 0; d < W; d++) {
      const base = (me * W + d) * M;
      for (let k = 0; k < per; k++) data[d * per + k] = base + (k % M);
    }
    const x = Tensor.from(data, [count]);
    const counts = new Array<number>(W).fill(per);
    const iterations = iterationsFor(bytes);
    for (let i = 0; i < 2; i++) (await pg.allToAllV(x, counts)).output.dispose();
    await pg.barrier();
    const t0 = process.hrtime.bigint();
    let last: Tensor | undefined;
    for (let i = 0; i < iterations; i++) {
      last?.dispose();
      last = (await pg.allToAllV(x, counts)).output;
    }
    const us = Number(process.hrtime.bigint() - t0) / 1e3 / iterations;
    // The check: block s of the output holds what rank s encoded for this rank.
    const got = last!.toArray() as Float32Array;
    let wrong = got.length === count ? 0 : count;
    for (let s = 0; s < W && wrong === 0; s++) {
      const base = (s * W + me) * M;
      for (let k = 0; k < per; k++) if (got[s * per + k] !== base + (k % M)) wrong++;
    }
    last!.dispose();
    x.dispose();
    const time = Tensor.from([us], [1]);
    await pg.allReduce(time, "max");
    const wrongs = Tensor.from(new Int32Array([wrong]), [1], { dtype: "int32" });
    await pg.allReduce(wrongs, "sum");
    const timeUs = time.item();
    const algbw = (count * 4) / (timeUs * 1e-6) / 1e9;
    rows.push({
      bytes: count * 4,
      count,
      iterations,
      timeUs,
      algbw,
      busbw: (algbw * (W - 1)) / W,
      wrong: wrongs.item(),
    });
    time.dispose();
    wrongs.dispose();
  }
  if (me === 0) {
    const report: AlltoallWorkerReport = {
      worldSize: W,
      localWorldSize: Number(process.env.LOCAL_WORLD_SIZE ?? W),
      hostname: pg.hostname,
      memcpy: memcpy!,
      rows,
    };
    fs.writeFileSync(out, JSON.stringify(report));
  }
  await pg.barrier();
  pg.destroy();
}

main().catch((e: { code?: string; message?: string }) => {
  process.stderr.write(`alltoall-worker: ${e.code ?? ""} ${e.message ?? String(e)}\n`);
  process.exit(1);
});
