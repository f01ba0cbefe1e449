#!/usr/bin/env node
// The spec lives in docs/, inside the repository and the package. This check
// (run by `npm run lint`) fails when a file:
//   - cites a spec page outside the repository (../shared/*.md), or the
//     spec's former upper-case page names;
//   - cites docs/<page>.md or docs/<page>.md#anchor (in a comment, say) where
//     the page or the heading does not exist;
//   - in a Markdown file, links to a relative path or #anchor that does not
//     exist;
//   - in docs/, names in backticks a repository path that does not exist.
// Anchors are GitHub's: the heading lowercased, punctuation dropped, spaces
// turned into hyphens, "-1", "-2" ... appended to repeats.
"use strict";
const fs = require("fs");
const path = require("path");

const SKIP_DIRS = new Set([
  ".git",
  "node_modules",
  "build",
  "build-emu",
  "build-asan",
  "build-fuzz",
  "build-prebuild",
  "build-prebuild-cuda",
  "dist",
  "prebuilds",
  ".device",
  "coverage",
]);
// Generated: the API reference of `npm run docs:api`.
const SKIP_PATHS = new Set([path.join("docs", "api")]);
const TEXT = /\.(md|ts|js|cjs|mjs|cc|cpp|c|h|cu|cuh|sh|json|txt|cmake)$|^CMakeLists\.txt$/;
const SKIP_FILES = new Set(["package-lock.json"]);
const OLD_SPEC = new RegExp(["\\.\\./shared/[\\w./-]*\\.md", "\\b(?:MATH|DESIGN)\\.md\\b"].join("|"), "g");
const DOCS_REF = /(?<![\w./-])docs\/([\w.-]+\.md)(#[\w-]+)?/g;
const MD_LINK = /\[[^\]]*\]\(([^)\s]+)\)/g;
const REPO_PATH = /`((?:lib|cpp|cuda|binding|test|scripts|docs|examples|device-results)\/[\w./-]*)`/g;

function walk(root, dir = root, out = []) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) {
      const rel = path.relative(root, path.join(dir, e.name));
      if (!SKIP_DIRS.has(e.name) && !SKIP_PATHS.has(rel)) walk(root, path.join(dir, e.name), out);
    } else if (e.isFile() && TEXT.test(e.name) && !SKIP_FILES.has(e.name)) {
      out.push(path.relative(root, path.join(dir, e.name)));
    }
  }
  return out;
}

function slug(heading) {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}

/** The anchors of a Markdown text's headings (outside fenced code). */
function anchorsOf(markdown) {
  const seen = new Map();
  const anchors = new Set();
  let fenced = false;
  for (const line of markdown.split("\n")) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    const m = !fenced && /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** Problems in the tree at root, as "file:line: message" strings. */
function checkDocs(root) {
  const problems = [];
  const anchorCache = new Map();
  const anchors = (file) => {
    if (!anchorCache.has(file)) anchorCache.set(file, anchorsOf(fs.readFileSync(file, "utf8")));
    return anchorCache.get(file);
  };
  const exists = (p) => fs.existsSync(p);
  for (const rel of walk(root)) {
    const file = path.join(root, rel);
    const text = fs.readFileSync(file, "utf8");
    const lines = text.split("\n");
    const isMd = rel.endsWith(".md");
    const inDocs = rel.startsWith(`docs${path.sep}`);
    lines.forEach((line, i) => {
      const at = `${rel}:${i + 1}`;
      for (const m of line.matchAll(OLD_SPEC))
        problems.push(`${at}: cites "${m[0]}"; the spec is in docs/ (math.md, architecture.md)`);
      for (const m of line.matchAll(DOCS_REF)) {
        const page = path.join(root, "docs", m[1]);
        if (!exists(page)) problems.push(`${at}: docs/${m[1]} does not exist`);
        else if (m[2] && !anchors(page).has(m[2].slice(1)))
          problems.push(`${at}: docs/${m[1]} has no heading for ${m[2]}`);
      }
      if (isMd) {
        for (const m of line.matchAll(MD_LINK)) {
          const target = m[1];
          if (/^[a-z]+:/i.test(target)) continue;
          const [p, anchor] = target.split("#");
          const dest = p === "" ? file : path.resolve(path.dirname(file), p);
          if (!exists(dest)) problems.push(`${at}: the link ${target} points to a missing file`);
          else if (anchor !== undefined && dest.endsWith(".md") && !anchors(dest).has(anchor))
            problems.push(`${at}: the link ${target} names a missing heading`);
        }
      }
      if (inDocs) {
        for (const m of line.matchAll(REPO_PATH))
          if (!exists(path.join(root, m[1]))) problems.push(`${at}: ${m[1]} does not exist in the repository`);
      }
    });
  }
  return problems;
}

module.exports = { checkDocs, anchorsOf, slug };

if (require.main === module) {
  const problems = checkDocs(path.resolve(__dirname, ".."));
  for (const p of problems) console.error(p);
  if (problems.length) {
    console.error(`check-docs: ${problems.length} problem(s)`);
    process.exit(1);
  }
}
