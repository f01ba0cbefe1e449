/** The C ABI, from C: the test programs built with the addon (test/c/*.c) must pass. */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";

const build = path.resolve(__dirname, "..", "build");

test.each([
  ["moe_ep_abi_test", "routes tokens and runs a grouped GEMM, checked in double precision"],
  ["moe_ep_layer_test", "runs the layer's forward and backward, equal to the layer composed of the ops"],
])("a C program through cpp/include/moe_ep.h: %s %s", (name) => {
  const exe = path.join(build, name);
  expect(fs.existsSync(exe)).toBe(true);
  const out = execFileSync(exe, { encoding: "utf8" });
  expect(out).toMatch(/^ok: 0 failure\(s\)$/m);
});
