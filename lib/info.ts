/** The capability report: what the core found and why anything is missing. */
import { invalid } from "./errors";
import { loadNative, nativeFile, nativeSource } from "./native";
import type { AddonSource } from "./native";
import type { NativeInfo } from "./addon";
import { ncclStatus } from "./comm/nccl";
import type { NcclStatus } from "./comm/nccl";

export interface Info extends NativeInfo {
  version: string;
  addon: string;
  /** Which candidate of lib/native.ts the addon came from. */
  addonSource: AddonSource;
  nccl: NcclStatus;
}

export function info(): Info {
  const n = loadNative().info();
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const version = (require("../package.json") as { version: string }).version;
  return { version, addon: nativeFile(), addonSource: nativeSource(), ...n, nccl: ncclStatus() };
}

/** The report as text, one backend a line. */
export function formatInfo(i: Info = info()): string {
  if (i === null || typeof i !== "object" || typeof i.cuda !== "object" || typeof i.blas !== "object")
    throw invalid("the object info() returns", "info", i);
  const lines = [
    `moe-ep ${i.version}`,
    `addon: ${i.addon}${i.addonSource ? ` (${i.addonSource})` : ""}`,
    `cpu: ${i.threads} threads`,
  ];
  if (i.blas.loaded) {
    const how = i.blas.coretypeSetByMoeEp
      ? `OPENBLAS_CORETYPE=${i.blas.coretype} set by moe-ep from the CPU's features`
      : i.blas.coretype
        ? `OPENBLAS_CORETYPE=${i.blas.coretype} from the environment`
        : "core detected by OpenBLAS";
    lines.push(`blas: OpenBLAS, core ${i.blas.core} (${how}), ${i.blas.threads} threads, ${i.blas.library}`);
  } else {
    lines.push(`blas: unavailable: ${i.blas.reason}`);
  }
  if (i.cuda.emulated) {
    lines.push(`cuda: ${i.cuda.deviceCount} device, EMULATED on the CPU (a build for tests, not for speed)`);
  } else if (i.cuda.available) {
    lines.push(
      `cuda: ${i.cuda.deviceCount} device(s), runtime ${i.cuda.runtimeVersion}, driver ${i.cuda.driverVersion}, built for ${i.cuda.archs}`,
    );
  } else {
    lines.push(`cuda: unavailable: ${i.cuda.reason}${i.cuda.built ? ` (built for ${i.cuda.archs})` : ""}`);
  }
  lines.push(
    `gloo: ${
      !i.gloo.built
        ? "not built (install libgloo-dev and rebuild)"
        : i.gloo.plugin
          ? "a plugin loaded with the first CPU process group (moe_ep_gloo.so; needs libgloo.so.0)"
          : "built in (CPU process groups)"
    }`,
  );
  const n = i.nccl;
  lines.push(
    n.available
      ? `nccl: ${n.version} from ${n.library}${n.supportsBf16 ? "" : " (no bfloat16: needs >= 2.10.3)"}`
      : `nccl: unavailable: ${n.reason}`,
  );
  return lines.join("\n");
}
