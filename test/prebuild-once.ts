/**
 * Runs `npm run prebuild` (scripts/prebuild.js: the portable CPU build in
 * build-prebuild/, checked and copied to prebuilds/<platform>-<arch>/) once at a
 * time across jest's workers: the first test file to ask builds, the others
 * wait for its lock. An up-to-date build folder makes it a few seconds.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";

export const root = path.resolve(__dirname, "..");
export const prebuildDir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function ensurePrebuild(): void {
  const lock = path.join(root, "build-prebuild.lock");
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch {
      // a lock older than half an hour was left by a killed run
      const stat = fs.statSync(lock, { throwIfNoEntry: false });
      if (stat && Date.now() - stat.mtimeMs > 30 * 60_000) fs.rmSync(lock, { recursive: true, force: true });
      sleep(1000);
    }
  }
  try {
    execFileSync(process.execPath, [path.join(root, "scripts", "prebuild.js")], { cwd: root, stdio: "pipe" });
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}
