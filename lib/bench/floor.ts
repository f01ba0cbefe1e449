/**
 * The per-op floor: the time of one awaited op whose math is next to nothing,
 * so that what is measured is the hand-off between JavaScript and the core
 * (argument checks, the CPU stream, the Promise, the output handles): add on
 * 1-element tensors and route on 64 tokens × 8 experts, top-2. Each figure is
 * set against the floor of JavaScript itself, an await of a resolved Promise.
 */
import { checkInteger, invalid } from "../errors";
import { add } from "../ops/elementwise";
import { route } from "../ops/route";
import { Tensor, checkDevice, type DeviceName } from "../tensor";

export interface BenchFloorOptions {
  /** Timed calls of each op (after calls / 10 untimed ones). */
  calls?: number;
  log?: ((line: string) => void) | null;
  /**
   * Where the tensors live (default "cpu"). On a CUDA device an awaited op resolves once its
   * kernels are enqueued: the figure is the hand-off and the launch, not the kernel.
   */
  device?: DeviceName;
}

export interface FloorFigure {
  op: string;
  medianUs: number;
  p90Us: number;
}

export interface BenchFloorResult {
  calls: number;
  device: DeviceName;
  /** await of an already resolved Promise: the limit of any async op. */
  awaitResolved: FloorFigure;
  ops: FloorFigure[];
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function dispose(v: unknown): void {
  if (v instanceof Tensor) v.dispose();
  else if (v && typeof v === "object") for (const x of Object.values(v)) dispose(x);
}

/** Median and p90, in µs, of `calls` awaited calls of fn; outputs are disposed outside the timing. */
async function floorOf(op: string, calls: number, fn: () => Promise<unknown>): Promise<FloorFigure> {
  for (let i = 0; i < Math.max(10, calls / 10); i++) dispose(await fn());
  const us: number[] = [];
  for (let i = 0; i < calls; i++) {
    const t0 = process.hrtime.bigint();
    const out = await fn();
    us.push(Number(process.hrtime.bigint() - t0) / 1e3);
    dispose(out);
  }
  us.sort((p, q) => p - q);
  return { op, medianUs: quantile(us, 0.5), p90Us: quantile(us, 0.9) };
}

export async function benchFloor(options: BenchFloorOptions = {}): Promise<BenchFloorResult> {
  if (options === null || typeof options !== "object")
    throw invalid("an options object", "benchFloor options", options);
  const calls = checkInteger("calls", options.calls ?? 5000, 1, 1e7);
  const log = options.log === undefined ? console.log : options.log;
  const device = options.device === undefined ? "cpu" : checkDevice(options.device);

  const a = Tensor.from([1], [1], { device });
  const b = Tensor.from([2], [1], { device });
  const logits = Tensor.from(
    Float32Array.from({ length: 64 * 8 }, (_, i) => Math.sin(i)),
    [64, 8],
    { device },
  );
  let awaitResolved: FloorFigure;
  let ops: FloorFigure[];
  try {
    awaitResolved = await floorOf("await of a resolved Promise", calls, () => Promise.resolve(null));
    ops = [
      await floorOf("add, 1 element", calls, () => add(a, b)),
      await floorOf("route, 64 tokens x 8 experts, top-2", calls, () => route(logits, { topK: 2 })),
    ];
  } finally {
    for (const t of [a, b, logits]) t.dispose();
  }
  if (log) {
    log(`\nper-op floor on ${device}: ${calls} awaited calls each, µs (limit: an await of a resolved Promise)`);
    log(`${"op".padEnd(40)}${"median".padStart(9)}${"p90".padStart(9)}`);
    for (const f of [awaitResolved, ...ops])
      log(`${f.op.padEnd(40)}${f.medianUs.toFixed(1).padStart(9)}${f.p90Us.toFixed(1).padStart(9)}`);
  }
  return { calls, device, awaitResolved, ops };
}
