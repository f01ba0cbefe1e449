/** Small helpers every op wrapper uses to cross into the native core. */
import { MoEError, invalid } from "../errors";
import { loadNative } from "../native";
import type { Addon, NativeTensorHandle } from "../addon";
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

/** The addon (lib/addon.ts declares its exports). */
export function native(): Addon {
  return loadNative();
}
