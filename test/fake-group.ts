/**
 * An in-process world of N ranks for tests: each rank is a group object whose
 * collectives meet the other ranks' calls through shared memory (host copies),
 * with the Megatron layout for split({ epSize }). Lets one jest process run N
 * MoE layers side by side; the multi-process tests use the real Gloo group.
 */
import { Tensor, type DType } from "../lib";
import { copyInto } from "../lib/ops/elementwise";
import type { CollectiveGroup, ReduceOp } from "../lib/layer/group";

type Raw = { data: Float32Array | Int32Array; shape: number[]; dtype: DType };

function raw(t: Tensor): Raw {
  const data = t.dtype === "int32" || t.dtype === "int64" ? t.toInt32() : t.toFloat32();
  return { data, shape: [...t.shape], dtype: t.dtype };
}

/** One collective call in progress: every rank's argument, and the ranks waiting. */
class Meeting<A, R> {
  private args: A[] = [];
  private waiting: Array<(r: R) => void> = [];
  private fails: Array<(e: Error) => void> = [];
  constructor(
    private readonly size: number,
    private readonly combine: (args: A[]) => R[],
  ) {}
  join(rank: number, arg: A): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.args[rank] = arg;
      this.waiting[rank] = resolve;
      this.fails[rank] = reject;
      if (Object.keys(this.args).length === this.size) {
        let results: R[];
        try {
          results = this.combine(this.args);
        } catch (e) {
          this.fails.forEach((f) => f(e as Error));
          return;
        }
        this.waiting.forEach((w, i) => w(results[i]));
      }
    });
  }
}

class Hub {
  private meetings = new Map<string, Meeting<unknown, unknown>>();
  private seq: number[];
  calls = { allToAllV: 0, allReduce: 0 };
  constructor(readonly size: number) {
    this.seq = new Array(size).fill(0);
  }
  meet<A, R>(rank: number, kind: string, arg: A, combine: (args: A[]) => R[]): Promise<R> {
    const key = `${kind}#${this.seq[rank]++}`;
    let m = this.meetings.get(key) as Meeting<A, R> | undefined;
    if (!m) {
      m = new Meeting<A, R>(this.size, (args) => {
        this.meetings.delete(key);
        return combine(args);
      });
      this.meetings.set(key, m as Meeting<unknown, unknown>);
    }
    return m.join(rank, arg);
  }
}

export class FakeGroup implements CollectiveGroup {
  constructor(
    private readonly hub: Hub,
    readonly rank: number,
    /** World ranks of this group's members. */
    readonly members: number[],
    private readonly world: FakeGroup[] | null,
  ) {}

  get size(): number {
    return this.hub.size;
  }

  get calls(): { allToAllV: number; allReduce: number } {
    return this.hub.calls;
  }

  async allToAllV(
    x: Tensor,
    sendCounts: readonly number[] | Int32Array,
    options: { recvCounts?: readonly number[] | Int32Array } = {},
  ) {
    const recvCounts = options.recvCounts;
    this.hub.calls.allToAllV++;
    const mine = { x: raw(x), send: Array.from(sendCounts), expect: recvCounts ? Array.from(recvCounts) : undefined };
    const out = await this.hub.meet(this.rank, "a2a", mine, (all) => {
      const width = all[0].x.shape.slice(1).reduce((a, b) => a * b, 1);
      return all.map((me, dst) => {
        const parts: number[] = [];
        const counts: number[] = [];
        all.forEach((src) => {
          let off = 0;
          for (let p = 0; p < dst; p++) off += src.send[p];
          const n = src.send[dst];
          counts.push(n);
          for (let i = off * width; i < (off + n) * width; i++) parts.push(src.x.data[i]);
        });
        if (me.expect && me.expect.join() !== counts.join())
          throw new Error(`count mismatch at ${dst}: ${me.expect} vs ${counts}`);
        return {
          data: parts,
          counts,
          shape: [counts.reduce((a, b) => a + b, 0), ...all[dst].x.shape.slice(1)],
          dtype: all[dst].x.dtype,
        };
      });
    });
    const arr = out.dtype === "int32" ? Int32Array.from(out.data) : Float32Array.from(out.data);
    return { output: Tensor.from(arr, out.shape, { dtype: out.dtype }), recvCounts: out.counts };
  }

  async allReduce(t: Tensor, op: ReduceOp = "sum"): Promise<void> {
    this.hub.calls.allReduce++;
    const v = raw(t);
    if (v.dtype === "int32") throw new Error("int32 allReduce is not needed by the layer");
    const res = await this.hub.meet(this.rank, "allreduce", v.data, (all) => {
      const acc = new Float64Array(all[0].length).fill(op === "max" ? -Infinity : 0);
      for (const a of all)
        for (let i = 0; i < acc.length; i++) acc[i] = op === "max" ? Math.max(acc[i], a[i]) : acc[i] + a[i];
      if (op === "avg") for (let i = 0; i < acc.length; i++) acc[i] /= all.length;
      // Every rank gets the same values, as Gloo's allreduce gives.
      return all.map(() => acc);
    });
    using src = Tensor.from(Float32Array.from(res), t.shape);
    await copyInto(t, src);
  }

  async barrier(): Promise<void> {
    await this.hub.meet(this.rank, "barrier", 0, (all) => all);
  }

  /** The Megatron layout: EP groups of consecutive ranks, expert-data-parallel groups strided by epSize. */
  split({ epSize }: { epSize: number }): { ep: FakeGroup; expertDataParallel: FakeGroup } {
    if (!this.world) throw new Error("split only on the world group");
    const key = `split${epSize}`;
    const reg = (this.world as unknown as { _splits?: Map<string, Map<string, FakeGroup[]>> })._splits!;
    const W = this.world.length;
    if (!reg.has(key)) {
      const groups = new Map<string, FakeGroup[]>();
      for (let g = 0; g < W / epSize; g++) {
        const members = Array.from({ length: epSize }, (_, i) => g * epSize + i);
        const hub = new Hub(epSize);
        groups.set(
          `ep${g}`,
          members.map((w, i) => new FakeGroup(hub, i, members, null)),
        );
      }
      for (let e = 0; e < epSize; e++) {
        const members = Array.from({ length: W / epSize }, (_, i) => i * epSize + e);
        const hub = new Hub(W / epSize);
        groups.set(
          `edp${e}`,
          members.map((w, i) => new FakeGroup(hub, i, members, null)),
        );
      }
      reg.set(key, groups);
    }
    const groups = reg.get(key)!;
    const r = this.rank;
    return {
      ep: groups.get(`ep${Math.floor(r / epSize)}`)![r % epSize],
      expertDataParallel: groups.get(`edp${r % epSize}`)![Math.floor(r / epSize)],
    };
  }
}

/** N world-group objects, one per rank. */
export function fakeWorld(n: number): FakeGroup[] {
  const hub = new Hub(n);
  const world: FakeGroup[] = [];
  (world as unknown as { _splits: Map<string, unknown> })._splits = new Map();
  for (let r = 0; r < n; r++)
    world.push(
      new FakeGroup(
        hub,
        r,
        Array.from({ length: n }, (_, i) => i),
        world,
      ),
    );
  return world;
}
