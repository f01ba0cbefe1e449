/**
 * Finds and loads the native addon. Candidates, in order: the file named by
 * MOE_EP_ADDON, the local build (build/Release), then prebuilds/<platform>-<arch>/.
 * A file that lacks any of the exports lib/addon.ts declares is passed over.
 * When none loads, the error lists every candidate and why it failed.
 */
import * as fs from "fs";
import * as path from "path";
import { MoEError } from "./errors";
import { REQUIRED_ADDON_KEYS } from "./addon";
import type { Addon } from "./addon";

export const packageRoot = path.resolve(__dirname, "..");

function candidates(): string[] {
  const list: string[] = [];
  if (process.env.MOE_EP_ADDON) list.push(path.resolve(process.env.MOE_EP_ADDON));
  list.push(path.join(packageRoot, "build", "Release", "moe_ep.node"));
  const dir = path.join(packageRoot, "prebuilds", `${process.platform}-${process.arch}`);
  if (fs.existsSync(dir)) {
    for (const f of fs.readdirSync(dir).sort()) if (f.endsWith(".node")) list.push(path.join(dir, f));
  } else {
    list.push(dir + path.sep + "*.node");
  }
  return list;
}

/** The declared exports (lib/addon.ts) that a loaded module lacks. */
export function missingExports(mod: object): string[] {
  return REQUIRED_ADDON_KEYS.filter((k) => !(k in mod));
}

let loaded: { module: Addon; file: string } | undefined;

export function loadNative(): Addon {
  if (loaded) return loaded.module;
  const failures: string[] = [];
  for (const file of candidates()) {
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
      loaded = { module: mod, file };
      return mod;
    } catch (e) {
      failures.push(`  ${file}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  throw new MoEError(
    "Could not load the native addon of moe-ep. Tried:\n" +
      failures.join("\n") +
      "\nBuild it with `npm rebuild moe-ep` (needs cmake, a C++17 compiler and, on Debian, " +
      "libopenblas-dev and libgloo-dev), or set MOE_EP_ADDON to a built moe_ep.node.",
    "ERR_MOE_LOAD",
  );
}

/** The file the addon was loaded from. */
export function nativeFile(): string {
  loadNative();
  return loaded!.file;
}
