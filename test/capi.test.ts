/** The C ABI, from C: the test program built with the addon (test/c/abi_test.c) must pass. */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";

const exe = path.resolve(__dirname, "..", "build", "moe_ep_abi_test");

test("a C program routes tokens and runs a grouped GEMM through cpp/include/moe_ep.h", () => {
  expect(fs.existsSync(exe)).toBe(true);
  const out = execFileSync(exe, { encoding: "utf8" });
  expect(out).toMatch(/^ok: 0 failure\(s\)$/m);
});
