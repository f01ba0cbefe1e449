/**
 * The GPU check scripts, as far as a machine without a GPU can run them: they
 * parse (bash -n, node --check), and on a machine without CUDA both the node
 * part and the one-call shell script stop at once with exit status 2 and say
 * why, instead of failing half-way. On a GPU machine the full run is
 * scripts/device-check.sh itself (minutes), not this test.
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { info } from "../lib";

const ROOT = path.join(__dirname, "..");
const cuda = info().cuda;

describe("scripts/device-check.* and scripts/device-pack.sh", () => {
  test("the shell scripts parse (bash -n) and the node scripts compile (node --check)", () => {
    for (const script of ["scripts/device-check.sh", "scripts/device-pack.sh"]) {
      const r = spawnSync("bash", ["-n", script], { cwd: ROOT, encoding: "utf8" });
      expect({ script, status: r.status, stderr: r.stderr }).toEqual({ script, status: 0, stderr: "" });
    }
    const modes = fs.readdirSync(path.join(ROOT, "scripts", "device-check")).map((f) => `scripts/device-check/${f}`);
    expect(modes).toEqual(
      expect.arrayContaining(["check", "sanitize", "bench"].map((m) => `scripts/device-check/${m}.js`)),
    );
    for (const script of ["scripts/device-check.js", ...modes]) {
      const r = spawnSync(process.execPath, ["--check", script], { cwd: ROOT, encoding: "utf8" });
      expect({ script, status: r.status, stderr: r.stderr }).toEqual({ script, status: 0, stderr: "" });
    }
  });

  test("device-check.js refuses an unknown mode with a usage error", () => {
    const r = spawnSync(process.execPath, ["scripts/device-check.js", "--mode", "fast"], {
      cwd: ROOT,
      encoding: "utf8",
    });
    expect(r.status).toBe(64);
    expect(r.stderr).toContain('expected --mode check, sanitize or bench but received "fast"');
  });

  (cuda.available ? test.skip : test)(
    `without CUDA, device-check.js and device-check.sh exit 2 and say why${cuda.available ? " (skipped: CUDA is available here)" : ""}`,
    () => {
      for (const mode of ["check", "sanitize", "bench"]) {
        const r = spawnSync(process.execPath, ["scripts/device-check.js", "--mode", mode], {
          cwd: ROOT,
          encoding: "utf8",
        });
        expect({ mode, status: r.status }).toEqual({ mode, status: 2 });
        expect(r.stderr).toContain(`device-check: CUDA unavailable: ${cuda.reason}`);
      }
      const out = fs.mkdtempSync(path.join(os.tmpdir(), "moe-device-check-"));
      try {
        const r = spawnSync("bash", ["scripts/device-check.sh"], {
          cwd: ROOT,
          encoding: "utf8",
          env: { ...process.env, OUT: out },
          timeout: 60000,
        });
        expect(r.status).toBe(2);
        expect(r.stdout).toContain("cuda: unavailable"); // the capability report came first
        expect(r.stdout + r.stderr).toContain(`CUDA unavailable: ${cuda.reason}`);
        expect(fs.readFileSync(path.join(out, "info.txt"), "utf8")).toContain("cuda: unavailable");
      } finally {
        fs.rmSync(out, { recursive: true, force: true });
      }
    },
    60000,
  );
});
