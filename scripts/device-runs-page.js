#!/usr/bin/env node
// Writes docs/device-runs.md from device-results/: which op ran on which GPU
// at which commit, with what result. The page is generated so that run status
// lives in one place, the raw results; test/device-runs-page.test.ts checks
// that the committed page is what this script makes of the files.
//
// device-results/runs.json lists the runs: the device, the commit(s) the run
// built, the commit that recorded the results, and the run's two files as
// scripts/device-check.sh writes them: the summary (device-check.txt: the
// capability report, the timing table, the sanitizers' summaries) and the
// cases (check.tsv: status, op, case, wrong elements, detail; tab-separated).
//
//   node scripts/device-runs-page.js          write docs/device-runs.md
//   node scripts/device-runs-page.js --check  exit 1 when the page differs
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const PAGE = path.join(root, "docs", "device-runs.md");

/** The cases of a run: one object per line of the TSV; a malformed line throws. */
function parseCases(text, file) {
  return text
    .split("\n")
    .filter((line) => line !== "")
    .map((line, i) => {
      const cols = line.split("\t");
      if (cols.length !== 5 || (cols[0] !== "ok" && cols[0] !== "FAIL") || !/^\d+$/.test(cols[3]))
        throw new Error(`${file}:${i + 1}: expected status (ok|FAIL), op, case, wrong count, detail`);
      return { ok: cols[0] === "ok", op: cols[1], shape: cols[2], wrong: Number(cols[3]), detail: cols[4] };
    });
}

/** The timing table: columns cut where the dashes line has its gaps. */
function parseTable(lines, at) {
  const header = lines[at];
  const dashes = lines[at + 1];
  const spans = [];
  for (const m of dashes.matchAll(/-+/g)) spans.push([m.index, m.index + m[0].length]);
  const cut = (line) => spans.map(([a], i) => line.slice(a, i + 1 < spans.length ? spans[i + 1][0] : undefined).trim());
  const rows = [];
  for (let i = at + 2; i < lines.length && lines[i].trim() !== ""; i++) rows.push(cut(lines[i]));
  return { columns: cut(header), rows };
}

/** The summary a device check writes (scripts/device-check.sh), field by field. */
function parseReport(text, file) {
  const lines = text.split("\n");
  const start = lines.findIndex((l) => l.startsWith("moe-ep device check, "));
  if (start < 0) throw new Error(`${file}: expected a line "moe-ep device check, <date>"`);
  const r = {
    title: lines.slice(0, start).join(" ").trim(),
    date: lines[start].slice("moe-ep device check, ".length).trim(),
    info: {},
    table: undefined,
    agreeing: undefined,
    sanitizers: [],
    stages: undefined,
    took: undefined,
  };
  let i = start + 1;
  for (; i < lines.length && lines[i].trim() !== ""; i++) {
    const m = /^([a-z][\w-]*):? (.*)$/.exec(lines[i]);
    if (m) r.info[m[1]] = m[2];
  }
  for (; i < lines.length; i++) {
    const line = lines[i];
    if (/^op\s/.test(line) && /^-+\s/.test(lines[i + 1] ?? "")) {
      r.table = parseTable(lines, i);
      i += r.table.rows.length + 1;
      continue;
    }
    let m;
    if ((m = /^cases agreeing with the CPU op: (\d+)(?: of (\d+))?$/.exec(line)))
      r.agreeing = { ok: Number(m[1]), total: m[2] === undefined ? undefined : Number(m[2]) };
    else if ((m = /^(memcheck|racecheck): (.*)$/.exec(line)))
      r.sanitizers.push({ tool: m[1], summary: m[2].replace(/^=+\s*/, "") });
    else if (line === "every stage passed" || line.startsWith("FAILED: ")) r.stages = line;
    else if ((m = /^took (\d+) s$/.exec(line))) r.took = Number(m[1]);
  }
  return r;
}

function readRuns(dir) {
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, "runs.json"), "utf8"));
  return manifest.runs.map((run, i) => {
    for (const key of ["device", "commit", "recordedIn", "report", "cases"])
      if (typeof run[key] !== "string" || run[key] === "") throw new Error(`runs.json: run ${i + 1} lacks "${key}"`);
    const report = parseReport(fs.readFileSync(path.join(dir, run.report), "utf8"), run.report);
    const cases = parseCases(fs.readFileSync(path.join(dir, run.cases), "utf8"), run.cases);
    return { ...run, notes: run.notes ?? [], number: i + 1, parsed: report, caseList: cases };
  });
}

const cell = (s) => String(s).replace(/\|/g, "\\|");
const row = (cols) => `| ${cols.map(cell).join(" | ")} |`;
const rule = (n) => `|${" --- |".repeat(n)}`;

/** Per op: [cases, agreeing], ops in first-seen order. */
function byOp(cases) {
  const m = new Map();
  for (const c of cases) {
    const [n, ok] = m.get(c.op) ?? [0, 0];
    m.set(c.op, [n + 1, ok + (c.ok ? 1 : 0)]);
  }
  return m;
}

function agreeText(cases) {
  return `${cases.filter((c) => c.ok).length} of ${cases.length} cases agree`;
}

/** The page, from the files in dir (device-results/). */
function render(dir = path.join(root, "device-results")) {
  const runs = readRuns(dir);
  const rel = (f) => `../device-results/${f}`;
  const out = [];
  out.push("# Device runs", "");
  out.push(
    "Generated by `npm run docs:device-runs` (`scripts/device-runs-page.js`) from the",
    "files in `device-results/`; edit those, not this page.",
    "",
    "Each run is `scripts/device-check.sh` on a GPU machine: every CUDA op against",
    "the CPU op on fresh random inputs (a case agrees when no element differs",
    "beyond the tolerance), compute-sanitizer memcheck and racecheck on a small",
    "case of each kernel, the NCCL process group at world size 1, and CUDA-event",
    "timings. An op that appears in no run below has not run on a GPU; CI runs",
    "the CUDA kernels on the CPU emulator instead",
    "([architecture.md](architecture.md#the-cuda-emulator)).",
    "",
  );

  out.push("## Runs", "");
  out.push(row(["run", "date", "device", "commit", "cases", "sanitizers", "stages"]), rule(7));
  for (const r of runs) {
    const san = r.parsed.sanitizers.map((s) => `${s.tool}: ${s.summary}`).join("; ") || "not recorded";
    out.push(
      row([r.number, r.parsed.date, r.device, r.commit, agreeText(r.caseList), san, r.parsed.stages ?? "not recorded"]),
    );
  }
  out.push("");

  out.push("## Ops by run", "");
  out.push("Cases agreeing with the CPU op, of the cases run.", "");
  const ops = [];
  for (const r of runs) for (const op of byOp(r.caseList).keys()) if (!ops.includes(op)) ops.push(op);
  out.push(row(["op", ...runs.map((r) => `run ${r.number}`)]), rule(runs.length + 1));
  for (const op of ops) {
    out.push(
      row([
        op,
        ...runs.map((r) => {
          const c = byOp(r.caseList).get(op);
          return c ? `${c[1]} of ${c[0]}` : "—";
        }),
      ]),
    );
  }
  out.push("");

  for (const r of runs) {
    const p = r.parsed;
    out.push(`## Run ${r.number}`, "");
    out.push(`- date: ${p.date}`);
    out.push(`- device: ${r.device}`);
    out.push(`- commit: ${r.commit} (results recorded in ${r.recordedIn})`);
    for (const key of ["cuda", "nccl", "blas", "cpu"]) if (p.info[key]) out.push(`- ${key}: ${p.info[key]}`);
    out.push(`- files: [${r.report}](${rel(r.report)}), [${r.cases}](${rel(r.cases)})`);
    out.push(`- result: ${agreeText(r.caseList)}`);
    for (const s of p.sanitizers) out.push(`- ${s.tool}: ${s.summary}`);
    if (p.stages) out.push(`- stages: ${p.stages}`);
    if (p.took !== undefined) out.push(`- took: ${p.took} s`);
    for (const n of r.notes) out.push(`- note: ${n}`);
    out.push("");
    const failed = r.caseList.filter((c) => !c.ok);
    if (failed.length) {
      out.push("Failures:", "");
      for (const c of failed) out.push(`- ${c.op}${c.shape ? ` (${c.shape})` : ""}: ${c.detail}`);
      out.push("");
    }
    if (p.table) {
      out.push(
        "Timings (medians of CUDA-event timings; the limit beside each figure is the device-to-device copy",
        "bandwidth or the dense bf16 GEMM rate measured with PyTorch in the same run):",
        "",
      );
      out.push(row(p.table.columns), rule(p.table.columns.length));
      for (const t of p.table.rows) out.push(row(t));
      out.push("");
    }
    out.push("Cases:", "");
    out.push(row(["op", "case", "result", "detail"]), rule(4));
    for (const c of r.caseList) out.push(row([c.op, c.shape, c.ok ? "ok" : `FAIL (${c.wrong})`, c.detail]));
    out.push("");
  }
  return out.join("\n");
}

module.exports = { render, parseCases, parseReport, PAGE };

if (require.main === module) {
  const page = render();
  if (process.argv.includes("--check")) {
    const current = fs.existsSync(PAGE) ? fs.readFileSync(PAGE, "utf8") : "";
    if (current !== page) {
      console.error("docs/device-runs.md is not what device-results/ gives: run npm run docs:device-runs");
      process.exit(1);
    }
  } else {
    fs.writeFileSync(PAGE, page);
    console.log(`wrote ${path.relative(root, PAGE)}`);
  }
}
