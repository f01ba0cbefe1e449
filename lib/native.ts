/**
 * Finds and loads the native addon. Candidates, in order: the file named by
 * MOE_EP_ADDON, the local build (build/Release), the CUDA prebuild of the
 * optional package @moe-ep/<platform>-<arch>-cuda when it is installed, then
 * the CPU prebuild in prebuilds/<platform>-<arch>/. A file that lacks any of
 * the exports lib/addon.ts declares is passed over. When none loads, the
 * error lists every candidate and why it failed.
 */
import * as fs from "fs";
import * as path from "path";
import { MoEError } from "./errors";
import { REQUIRED_ADDON_KEYS } from "./addon";
import type { Addon } from "./addon";

export const packageRoot = path.resolve(__dirname, "..");

/** Where a candidate comes from, as `moe-ep info` reports it. */
export type AddonSource = "MOE_EP_ADDON" | "local build" | "CUDA prebuild" | "CPU prebuild";

interface Candidate {
  file: string;
  source: AddonSource;
}

/** The optional package that carries the CUDA prebuild for this platform. */
export const cudaPackage = `@moe-ep/${process.platform}-${process.arch}-cuda`;

/** The CUDA package's moe_ep.node when the package resolves from here, else undefined. */
function cudaPrebuild(): string | undefined {
  try {
    const manifest = require.resolve(`${cudaPackage}/package.json`, { paths: [packageRoot] });
    return path.join(path.dirname(manifest), "moe_ep.node");
  } catch {
    return undefined;
  }
}

function candidates(): Candidate[] {
  const list: Candidate[] = [];
  if (process.env.MOE_EP_ADDON) list.push({ file: path.resolve(process.env.MOE_EP_ADDON), source: "MOE_EP_ADDON" });
  list.push({ file: path.join(packageRoot, "build", "Release", "moe_ep.node"), source: "local build" });
  const cuda = cudaPrebuild();
  if (cuda) list.push({ file: cuda, source: "CUDA prebuild" });
  const dir = path.join(packageRoot, "prebuilds", `${process.platform}-${process.arch}`);
  list.push({ file: path.join(dir, "moe_ep.node"), source: "CPU prebuild" });
  return list;
}

/** The declared exports (lib/addon.ts) that a loaded module lacks. */
export function missingExports(mod: object): string[] {
  return REQUIRED_ADDON_KEYS.filter((k) => !(k in mod));
}

let loaded: { module: Addon; file: string; source: AddonSource } | undefined;

export function loadNative(): Addon {
  if (loaded) return loaded.module;
  const failures: string[] = [];
  for (const { file, source } of candidates()) {
    if (!fs.existsSync(file)) {
      failures.push(`  ${file}: not found`);
      continue;
    }
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const mod = require(file) as Addon;
      const missing = missingExports(mod);
      if (missing.length > 0) {
        failures.push(`  ${file}: lacks the exports ${missing.join(", ")} (built from other sources: rebuild it)`);
        continue;
      }
      mod.setErrorClass(MoEError);
      loaded = { module: mod, file, source };
      return mod;
    } catch (e) {
      failures.push(`  ${file}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  throw new MoEError(
    "Could not load the native addon of moe-ep. Tried:\n" +
      failures.join("\n") +
      "\nReinstall moe-ep (its prebuilt addon needs x86-64 Linux with glibc >= 2.28), build it from source with " +
      "`MOE_EP_BUILD_FROM_SOURCE=1 npm rebuild moe-ep` (needs cmake, a C++17 compiler and, on Debian, " +
      "libopenblas-dev and libgloo-dev), or set MOE_EP_ADDON to a built moe_ep.node.",
    "ERR_MOE_LOAD",
  );
}

/** The file the addon was loaded from. */
export function nativeFile(): string {
  loadNative();
  return loaded!.file;
}

/** Which candidate the addon was loaded from. */
export function nativeSource(): AddonSource {
  loadNative();
  return loaded!.source;
}
