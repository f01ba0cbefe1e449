import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { ADDON_KEYS, OPTIONAL_ADDON_KEYS, REQUIRED_ADDON_KEYS } from "../lib/addon";
import { loadNative, missingExports } from "../lib/native";

describe("the addon's exports", () => {
  test("are exactly the ones lib/addon.ts declares", () => {
    const addon = loadNative();
    const exported = Object.keys(addon).sort();
    const declared = [...ADDON_KEYS].sort();
    expect(new Set(declared).size).toBe(declared.length);
    // Every export is declared; every declared export is there unless the declaration says a build may lack it.
    expect(exported.filter((k) => !declared.includes(k as never))).toEqual([]);
    expect(REQUIRED_ADDON_KEYS.filter((k) => !exported.includes(k))).toEqual([]);
    expect([...REQUIRED_ADDON_KEYS, ...OPTIONAL_ADDON_KEYS].sort()).toEqual(declared);
    // Functions, and the tensor class (a constructor) among them.
    for (const k of exported)
      expect([k, typeof (addon as unknown as Record<string, unknown>)[k]]).toEqual([k, "function"]);
  });

  test("missingExports names what a module lacks", () => {
    const partial = { setErrorClass() {}, info() {} };
    expect(missingExports(partial)).toEqual(REQUIRED_ADDON_KEYS.filter((k) => k !== "setErrorClass" && k !== "info"));
    expect(missingExports(loadNative())).toEqual([]);
  });

  test("a file that lacks a declared export is passed over, naming what it lacks", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-addon-"));
    const stale = path.join(dir, "stale.js");
    fs.writeFileSync(stale, "exports.setErrorClass = () => {};\nexports.info = () => ({});\n");
    const saved = process.env.MOE_EP_ADDON;
    process.env.MOE_EP_ADDON = stale;
    try {
      jest.isolateModules(() => {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const fresh = require("../lib/native") as typeof import("../lib/native");
        // A later candidate (the local build) is the one that loads.
        expect(fresh.nativeFile()).not.toBe(stale);
        expect(missingExports(fresh.loadNative())).toEqual([]);
      });
    } finally {
      if (saved === undefined) delete process.env.MOE_EP_ADDON;
      else process.env.MOE_EP_ADDON = saved;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
