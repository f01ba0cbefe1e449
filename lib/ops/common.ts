/** Small helpers every op wrapper uses to cross into the native core. */
import { MoEError, invalid } from "../errors";
import { loadNative } from "../native";
import type { NativeModule, NativeTensorHandle } from "../native-types";
import { Tensor } from "../tensor";

/** The native handle of a tensor argument, with a typed error for anything else. */
export function handle(t: unknown, name: string): NativeTensorHandle {
  if (!(t instanceof Tensor)) throw invalid("a Tensor", name, t);
  if (t.disposed) throw new MoEError(`Expected ${name} to be a live tensor but it was disposed`, "ERR_MOE_DISPOSED");
  return t.handle;
}

export function optionalHandle(t: unknown, name: string): NativeTensorHandle | undefined {
  return t === undefined || t === null ? undefined : handle(t, name);
}

export function wrap(h: NativeTensorHandle): Tensor {
  return new Tensor(h);
}

/** The addon, typed with the extra exports an op file declares. */
export function native<T>(): NativeModule & T {
  return loadNative() as NativeModule & T;
}
