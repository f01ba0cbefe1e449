/**
 * docs/: the device-runs page is what scripts/device-runs-page.js makes of
 * device-results/ and its facts are the raw files' own (counted here again,
 * line by line); the docs check finds nothing wrong in the repository and
 * does catch each kind of broken reference; the package ships docs/ and
 * LICENSE.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";

const root = path.resolve(__dirname, "..");
const results = path.join(root, "device-results");

/* eslint-disable @typescript-eslint/no-require-imports */
const page = require(path.join(root, "scripts", "device-runs-page.js")) as {
  render(dir?: string): string;
  PAGE: string;
};
const docs = require(path.join(root, "scripts", "check-docs.js")) as { checkDocs(root: string): string[] };
/* eslint-enable @typescript-eslint/no-require-imports */

interface Run {
  device: string;
  commit: string;
  report: string;
  cases: string;
}
const runs = (JSON.parse(fs.readFileSync(path.join(results, "runs.json"), "utf8")) as { runs: Run[] }).runs;

/** The part of the page under "## Run n", up to the next "## ". */
function section(text: string, n: number): string {
  const start = text.indexOf(`\n## Run ${n}\n`);
  expect(start).toBeGreaterThan(0);
  const end = text.indexOf("\n## ", start + 1);
  return text.slice(start, end < 0 ? undefined : end);
}

describe("device-runs page", () => {
  test("docs/device-runs.md is what device-results/ gives", () => {
    expect(fs.readFileSync(page.PAGE, "utf8")).toBe(page.render());
  });

  test("each run's counts are the raw files' own", () => {
    const text = fs.readFileSync(page.PAGE, "utf8");
    expect(runs.length).toBeGreaterThan(0);
    runs.forEach((run, i) => {
      const lines = fs
        .readFileSync(path.join(results, run.cases), "utf8")
        .split("\n")
        .filter((l) => l.length > 0);
      const ok = lines.filter((l) => l.startsWith("ok\t")).length;
      const s = section(text, i + 1);
      expect(s).toContain(`- result: ${ok} of ${lines.length} cases agree`);
      expect(s).toContain(`- device: ${run.device}`);
      expect(s).toContain(`- commit: ${run.commit} `);
      // The run's own summary says the same.
      const report = fs.readFileSync(path.join(results, run.report), "utf8");
      const m = /^cases agreeing with the CPU op: (\d+)(?: of (\d+))?$/m.exec(report);
      expect(m).not.toBeNull();
      expect(Number(m![1])).toBe(ok);
      if (m![2] !== undefined) expect(Number(m![2])).toBe(lines.length);
      for (const l of lines.filter((x) => x.startsWith("FAIL\t"))) expect(s).toContain(l.split("\t")[4]);
      // A report that names its commits names the manifest's.
      const title = report.slice(0, report.indexOf("moe-ep device check, "));
      if (title.trim()) expect(title).toContain(run.commit);
    });
  });

  test("every file in device-results/ belongs to a run", () => {
    const named = new Set(runs.flatMap((r) => [r.report, r.cases]));
    const files = fs.readdirSync(results).filter((f) => f !== "runs.json");
    expect(files.sort()).toEqual([...named].sort());
  });

  test("a malformed case line is refused, not skipped", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-runs-"));
    try {
      for (const f of ["runs.json", runs[0].report]) fs.copyFileSync(path.join(results, f), path.join(dir, f));
      fs.writeFileSync(path.join(dir, "runs.json"), JSON.stringify({ runs: [runs[0]] }));
      fs.writeFileSync(path.join(dir, runs[0].cases), "ok\tgate\tT=1\t0\trel 0\nok\tgate only three columns\n");
      expect(() => page.render(dir)).toThrow(`${runs[0].cases}:2`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("docs check", () => {
  test("finds nothing wrong in the repository", () => {
    expect(docs.checkDocs(root)).toEqual([]);
  });

  test("catches each kind of broken reference", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-docs-"));
    try {
      fs.mkdirSync(path.join(dir, "docs"));
      fs.mkdirSync(path.join(dir, "lib"));
      fs.writeFileSync(path.join(dir, "docs", "math.md"), "# Math\n\n## Route\n\n```\n# not a heading\n```\n");
      // Assembled, so that this file does not itself cite the old names.
      const spec = ["../shared/", "MATH", ".md"].join("");
      const design = ["DESIGN", ".md"].join("");
      const d = "docs/"; // likewise for the references that are broken on purpose
      fs.writeFileSync(
        path.join(dir, "README.md"),
        [
          `[spec](${spec})`,
          `[ok](docs/math.md#route) [gone](${d}gone.md) [anchor](${d}math.md#not-a-heading)`,
          "[self](#nowhere)",
          "",
        ].join("\n"),
      );
      fs.writeFileSync(
        path.join(dir, "lib", "a.ts"),
        `// see docs/math.md#route and docs/math.md#gate, and ${design}\n`,
      );
      fs.writeFileSync(path.join(dir, "docs", "arch.md"), "# Arch\n\n`lib/a.ts` and `lib/missing.ts`\n");
      const problems = docs.checkDocs(dir).sort();
      expect(problems).toEqual(
        [
          `README.md:1: cites "${spec}"; the spec is in docs/ (math.md, architecture.md)`,
          `README.md:1: the link ${spec} points to a missing file`,
          `README.md:2: ${d}gone.md does not exist`,
          `README.md:2: the link ${d}gone.md points to a missing file`,
          `README.md:2: ${d}math.md has no heading for #not-a-heading`,
          `README.md:2: the link ${d}math.md#not-a-heading names a missing heading`,
          "README.md:3: the link #nowhere names a missing heading",
          "lib/a.ts:1: docs/math.md has no heading for #gate",
          `lib/a.ts:1: cites "${design}"; the spec is in docs/ (math.md, architecture.md)`,
          `${d}arch.md:3: lib/missing.ts does not exist in the repository`,
        ].sort(),
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("the package ships docs/ and LICENSE", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8" });
  const files = (JSON.parse(out) as Array<{ files: Array<{ path: string }> }>)[0].files.map((f) => f.path);
  for (const f of ["LICENSE", "docs/README.md", "docs/math.md", "docs/architecture.md", "docs/device-runs.md"])
    expect(files).toContain(f);
});
