/**
 * groupedGemm: every local expert multiplies its own contiguous block of rows by
 * its own weights, Y_e = X_e · W_e (+ b_e) (docs/math.md#grouped-gemm).
 */
import { checkInteger, checkOneOf, invalid } from "../errors";
import { DTYPES, type DType, type Tensor } from "../tensor";
import { handle, native, optionalHandle, wrap } from "./common";

export interface GroupedGemmOptions {
  /** [L, N], any float dtype: b_e is added to every row of expert e. */
  bias?: Tensor;
}

function options(value: unknown, name: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw invalid("an options object", name, value);
  return value as Record<string, unknown>;
}

function flag(o: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const v = o[key];
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw invalid("a boolean", key, v);
  return v;
}

/**
 * x [R, K] (any float dtype), w [L, K, N] (any float dtype), rowsPerExpert int32 [L] whose
 * prefix sums split the rows of x into each expert's contiguous block (zero rows allowed;
 * a negative count, or counts that do not sum to R, reject with ERR_MOE_VALUE).
 * Returns y [R, N] in x's dtype.
 */
export async function groupedGemm(
  x: Tensor,
  w: Tensor,
  rowsPerExpert: Tensor,
  opts: GroupedGemmOptions = {},
): Promise<Tensor> {
  const o = options(opts, "groupedGemm options");
  return wrap(
    await native().groupedGemm(
      handle(x, "x"),
      handle(w, "w"),
      handle(rowsPerExpert, "rowsPerExpert"),
      optionalHandle(o.bias, "bias"),
    ),
  );
}

export interface GroupedGemmBackwardOptions {
  /** Compute dx (default true). */
  needDx?: boolean;
  /** Compute dw (default true). */
  needDw?: boolean;
  /** Compute dbias (default false). */
  needDbias?: boolean;
  /**
   * float32 [L, K, N] (w's shape): dW is written there instead of into a new tensor (the GEMM's
   * own output, beta = 0), and returned as `dw`.
   */
  dwInto?: Tensor;
  /** With dwInto: add dW to what it holds, inside the GEMM (beta = 1; docs/math.md#grouped-gemm). Default false. */
  accumulate?: boolean;
}

export interface GroupedGemmGrads {
  /** [R, K], x's dtype: dX_e = dY_e · W_eᵀ. */
  dx?: Tensor;
  /** [L, K, N], float32: dW_e = X_eᵀ · dY_e (zero for an expert with no rows). */
  dw?: Tensor;
  /** [L, N], float32: the column sums of dY_e. */
  dbias?: Tensor;
}

/** The gradients of groupedGemm for dy [R, N] (any float dtype); only those asked for are computed. */
export async function groupedGemmBackward(
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  rowsPerExpert: Tensor,
  opts: GroupedGemmBackwardOptions = {},
): Promise<GroupedGemmGrads> {
  const o = options(opts, "groupedGemmBackward options");
  const needs = {
    needDx: flag(o, "needDx", true),
    needDw: flag(o, "needDw", true),
    needDbias: flag(o, "needDbias", false),
    dwInto: optionalHandle(o.dwInto, "dwInto"),
    accumulate: flag(o, "accumulate", false),
  };
  const g = await native().groupedGemmBackward(
    handle(dy, "dy"),
    handle(x, "x"),
    handle(w, "w"),
    handle(rowsPerExpert, "rowsPerExpert"),
    needs,
  );
  const out: GroupedGemmGrads = {};
  if (g.dx) out.dx = wrap(g.dx);
  if (g.dw) out.dw = wrap(g.dw);
  if (g.dbias) out.dbias = wrap(g.dbias);
  return out;
}

export interface GroupedGemmShape {
  /** The operands' dtype (x and w alike). */
  dtype: DType;
  /** x [R, K] and w [L, K, N]: the widths K and N. */
  k: number;
  n: number;
  /** Whether the backward will be asked for the bias gradient (default false). */
  needDbias?: boolean;
}

/**
 * Whether groupedGemm and groupedGemmBackward run on CUDA tensors of this dtype and these widths
 * (whatever the rows and experts), and when not, why: the CUDA kernels' own rules. The CPU op
 * takes every float dtype and width.
 */
export function groupedGemmCudaSupport(shape: GroupedGemmShape): { supported: boolean; reason: string } {
  const o = options(shape, "groupedGemmCudaSupport shape");
  return native().groupedGemmCudaSupport({
    dtype: checkOneOf("dtype", o.dtype, DTYPES),
    k: checkInteger("k", o.k, 1),
    n: checkInteger("n", o.n, 1),
    needDbias: flag(o, "needDbias", false),
  });
}
