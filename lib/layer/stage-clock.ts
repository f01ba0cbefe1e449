/**
 * Per-stage wall time of the layer's forward and backward (MoELayer.profile):
 * each pass charges its stages to a StageTimes record.
 */
import { performance } from "perf_hooks";

export type Stage =
  | "route"
  | "permute"
  | "dispatch"
  | "etpGather"
  | "experts"
  | "etpScatter"
  | "combine"
  | "unpermute"
  | "shared"
  | "reduce";
/** etpGather / etpScatter: expert tensor parallelism's all-gather and reduce-scatter (zero without it). */
export const STAGES: readonly Stage[] = [
  "route",
  "permute",
  "dispatch",
  "etpGather",
  "experts",
  "etpScatter",
  "combine",
  "unpermute",
  "shared",
  "reduce",
];
export type StageTimes = Record<Stage, number>;

export const zeroTimes = (): StageTimes => Object.fromEntries(STAGES.map((s) => [s, 0])) as StageTimes;

export interface StageClock {
  /** Charges the time since the last tick to a stage. */
  tick(stage: Stage): void;
  /** Charges fn's own duration (for work that overlaps other stages), and restarts the ticks. */
  timed<R>(stage: Stage, fn: () => Promise<R>): Promise<R>;
}

/** A clock that adds into `into` when `profile` is on, and only keeps time otherwise. */
export function stageClock(into: StageTimes, profile: boolean): StageClock {
  let t = performance.now();
  return {
    tick(stage: Stage): void {
      if (!profile) return;
      const now = performance.now();
      into[stage] += now - t;
      t = now;
    },
    async timed<R>(stage: Stage, fn: () => Promise<R>): Promise<R> {
      const start = performance.now();
      try {
        return await fn();
      } finally {
        const end = performance.now();
        if (profile) into[stage] += end - start;
        t = Math.max(t, end);
      }
    },
  };
}
