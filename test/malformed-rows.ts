/**
 * The rows of test/malformed.test.ts: malformed calls of every public
 * function, each with the MoEError code it must raise. Most rows are
 * generated: for each op, each tensor argument is replaced in turn by a
 * non-tensor, null, undefined, a disposed tensor, one of the wrong dtype and
 * one of the wrong rank, and each option by a value of the wrong type, null,
 * NaN, ±Infinity, a negative, a fraction and 2^53, everything else staying
 * valid; the rest are written out, one per way a call can be wrong.
 *
 * Calls refer to the fixtures through `fx`, which the test fills in before
 * any row runs.
 */
import { Tensor } from "../lib";
import type { AdamW, MoEErrorCode, MoELayer, ProcessGroup, Store } from "../lib";

export interface Row {
  name: string;
  call: () => unknown;
  code: MoEErrorCode;
  /** A fragment the message must hold. */
  message?: RegExp;
}

/** What the rows call on: valid tensors of known shapes, and live and disposed objects. */
export interface Fixtures {
  t: Record<string, Tensor>;
  /** A float32 [4, 8] tensor, disposed. */
  gone: Tensor;
  layer: MoELayer;
  layerGone: MoELayer;
  opt: AdamW;
  optGone: AdamW;
  /** AdamW over the parameters of layerGone (disposed with it). */
  optOfGone: AdamW;
  store: Store;
  storeClosed: Store;
  group: ProcessGroup;
  groupGone: ProcessGroup;
  /** A saved checkpoint of `layer`, an empty directory, and a file that is not safetensors. */
  ckpt: string;
  emptyDir: string;
  junkFile: string;
  /** A directory for stores and checkpoints the rows may create. */
  work: string;
  /** Whether a CUDA device is usable, and whether NCCL is. */
  cuda: boolean;
  nccl: boolean;
}

export const fx = {} as Fixtures;

// ---- generation ---------------------------------------------------------------------

type Bad = [label: string, value: () => unknown, code: MoEErrorCode, message?: RegExp];

/** A tensor argument: its valid value, the dtype that is wrong for it and whether its rank is fixed. */
export interface TensorArg {
  kind: "tensor";
  name: string;
  valid: () => Tensor;
  /** A tensor of the valid one's shape but this dtype is refused with ERR_MOE_DTYPE. */
  wrongDtype?: "int32" | "float32" | "int64";
  /** The rank is fixed: one more dimension is refused with ERR_MOE_SHAPE. */
  fixedRank?: boolean;
  /** null / undefined mean "none" (a valid call). */
  optional?: boolean;
}

type FieldKind =
  | { type: "int"; min: number; max?: number }
  | { type: "number"; negative?: boolean; extra?: Array<[string, unknown]> }
  | { type: "bool" }
  | { type: "oneOf" }
  | { type: "tensor"; arg: Omit<TensorArg, "kind" | "name"> };

export interface OptionsArg {
  kind: "options";
  name: string;
  valid: () => Record<string, unknown>;
  fields: Array<{ key: string; required?: boolean; nullAllowed?: boolean } & FieldKind>;
  /** The whole argument may be left out. */
  optional?: boolean;
}

export interface ValueArg {
  kind: "value";
  name: string;
  valid: () => unknown;
  bad: Bad[];
}

export type Arg = TensorArg | OptionsArg | ValueArg;

const TWO_53 = 2 ** 53;

/** The same shape in another dtype, or one more dimension. */
function variant(t: Tensor, how: { dtype?: "int32" | "float32" | "int64"; extraDim?: boolean }): Tensor {
  const shape = how.extraDim ? [...t.shape, 1] : t.shape;
  return Tensor.zeros(shape, { dtype: how.dtype ?? t.dtype });
}

function tensorBads(a: Omit<TensorArg, "kind">): Bad[] {
  const out: Bad[] = [
    ["a number", () => 1, "ERR_MOE_VALUE", /Tensor/],
    ["a plain object", () => ({ shape: [4, 8] }), "ERR_MOE_VALUE"],
    ["a disposed tensor", () => fx.gone, "ERR_MOE_DISPOSED", /disposed/],
  ];
  if (!a.optional) {
    out.push(["null", () => null, "ERR_MOE_VALUE"], ["undefined", () => undefined, "ERR_MOE_VALUE"]);
  }
  if (a.wrongDtype) {
    const dtype = a.wrongDtype;
    out.push([`an ${dtype} tensor`, () => variant(a.valid(), { dtype }), "ERR_MOE_DTYPE"]);
  }
  if (a.fixedRank) out.push(["one more dimension", () => variant(a.valid(), { extraDim: true }), "ERR_MOE_SHAPE"]);
  return out;
}

function fieldBads(f: OptionsArg["fields"][number]): Bad[] {
  const v = (x: unknown) => () => x;
  const out: Bad[] = [];
  if (!f.nullAllowed) out.push(["null", v(null), "ERR_MOE_VALUE"]);
  if (f.required) out.push(["absent", v(undefined), "ERR_MOE_VALUE"]);
  switch (f.type) {
    case "int":
      out.push(
        ["a string", v("2"), "ERR_MOE_VALUE"],
        ["NaN", v(NaN), "ERR_MOE_VALUE"],
        ["Infinity", v(Infinity), "ERR_MOE_VALUE"],
        ["a fraction", v(1.5), "ERR_MOE_VALUE"],
        ["2^53", v(TWO_53), "ERR_MOE_VALUE", /an integer in \[[^\]]+\] for/],
      );
      if (f.min >= 0) out.push(["-1", v(-1), "ERR_MOE_VALUE"]);
      if (f.max !== undefined && f.max < TWO_53 - 1) out.push(["max + 1", v(f.max + 1), "ERR_MOE_VALUE"]);
      break;
    case "number":
      out.push(
        ["a string", v("0.5"), "ERR_MOE_VALUE"],
        ["NaN", v(NaN), "ERR_MOE_VALUE"],
        ["Infinity", v(Infinity), "ERR_MOE_VALUE"],
        ["-Infinity", v(-Infinity), "ERR_MOE_VALUE"],
      );
      if (f.negative === false) out.push(["-1", v(-1), "ERR_MOE_VALUE"]);
      for (const [label, x] of f.extra ?? []) out.push([label, v(x), "ERR_MOE_VALUE"]);
      break;
    case "bool":
      out.push(["a string", v("true"), "ERR_MOE_VALUE"], ["a number", v(1), "ERR_MOE_VALUE"]);
      break;
    case "oneOf":
      out.push(["an unknown name", v("bogus"), "ERR_MOE_VALUE"], ["a number", v(1), "ERR_MOE_VALUE"]);
      break;
    case "tensor":
      return tensorBads({ ...f.arg, name: f.key, optional: true });
  }
  return out;
}

/** Each generated function's call with every argument valid: it must succeed, or its rows prove nothing. */
export const baselines: Array<{ name: string; call: () => unknown }> = [];

/**
 * Rows for one function: for each argument and each way it can be wrong, the call with that
 * argument wrong and the others valid. `call` receives the arguments in order.
 */
export function generate(fn: string, args: Arg[], call: (...a: unknown[]) => unknown): Row[] {
  const rows: Row[] = [];
  const valid = () => args.map((a) => a.valid());
  baselines.push({ name: fn, call: () => call(...valid()) });
  args.forEach((arg, i) => {
    const withArg = (value: () => unknown) => () => {
      const a = valid();
      a[i] = value();
      return call(...a);
    };
    if (arg.kind === "tensor") {
      for (const [label, value, code, message] of tensorBads(arg))
        rows.push({ name: `${fn}: ${arg.name} ${label}`, call: withArg(value), code, message });
    } else if (arg.kind === "value") {
      for (const [label, value, code, message] of arg.bad)
        rows.push({ name: `${fn}: ${arg.name} ${label}`, call: withArg(value), code, message });
    } else {
      const whole: Bad[] = [
        ["a number", () => 5, "ERR_MOE_VALUE"],
        ["a string", () => "options", "ERR_MOE_VALUE"],
        ["null", () => null, "ERR_MOE_VALUE"],
      ];
      if (!arg.optional) whole.push(["undefined", () => undefined, "ERR_MOE_VALUE"]);
      for (const [label, value, code] of whole)
        rows.push({ name: `${fn}: ${arg.name} ${label}`, call: withArg(value), code });
      for (const f of arg.fields) {
        for (const [label, value, code, message] of fieldBads(f)) {
          rows.push({
            name: `${fn}: ${arg.name}.${f.key} ${label}`,
            call: withArg(() => ({ ...arg.valid(), [f.key]: value() })),
            code,
            message,
          });
        }
      }
    }
  });
  return rows;
}

/** A tensor argument taken from the fixtures by key. */
export function tensorArg(name: string, key: string, more: Omit<TensorArg, "kind" | "name" | "valid"> = {}): TensorArg {
  return { kind: "tensor", name, valid: () => fx.t[key], ...more };
}
