#!/usr/bin/env node
// Checks that prebuilt libraries load on any x86-64 Linux with glibc >= 2.28
// and nothing else installed, from `objdump -T` and `objdump -p`:
// - no GLIBC_ symbol version newer than 2.28;
// - no GLIBCXX_ or CXXABI_ version (libstdc++ is linked in), and no GCC_
//   version above 4.x (libgcc_s.so.1's unwinder, present wherever node runs);
// - only the system's libc, libm, libpthread, libdl, librt, libgcc_s and the
//   loader as needed libraries (the Gloo plugin also needs libgloo.so.0);
// - only the entry points exported (the addon's napi_register_module_v1,
//   libmoe_ep.so's C ABI moe_*, the Gloo plugin's moe_ep_gloo_entry).
// Usage: node scripts/check-portable.js FILE... [--json]
const { execFileSync } = require("child_process");
const path = require("path");

const MAX_GLIBC = [2, 28];
const SYSTEM = [
  "libc.so.6",
  "libm.so.6",
  "libpthread.so.0",
  "libdl.so.2",
  "librt.so.1",
  "libgcc_s.so.1",
  "ld-linux-x86-64.so.2",
];

// What each library may export and need beyond the system's, by file name.
function rules(file) {
  const name = path.basename(file);
  if (name.endsWith(".node"))
    return {
      exports: /^(napi_register_module_v1|node_api_module_get_api_version_v1)$/,
      entry: "napi_register_module_v1",
      needs: [],
    };
  if (name === "libmoe_ep.so") return { exports: /^moe_[a-z0-9_]+$/, entry: "moe_abi_version", needs: [] };
  if (name === "moe_ep_gloo.so")
    return { exports: /^moe_ep_gloo_entry$/, entry: "moe_ep_gloo_entry", needs: ["libgloo.so.0"] };
  return { exports: /^$/, entry: "", needs: [] };
}

function newer(version, max) {
  const v = version.split(".").map(Number);
  for (let i = 0; i < Math.max(v.length, max.length); i++) {
    if ((v[i] || 0) !== (max[i] || 0)) return (v[i] || 0) > (max[i] || 0);
  }
  return false;
}

/** The facts about one library and what breaks the rules. */
function check(file) {
  const dynsym = execFileSync("objdump", ["-T", file], { encoding: "utf8" });
  const headers = execFileSync("objdump", ["-p", file], { encoding: "utf8" });
  const versions = new Map(); // version -> symbols needing it
  const exported = [];
  for (const line of dynsym.split("\n")) {
    // 0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.2.5) free
    const m = /^[0-9a-f]+\s.{7}\s(\S+)\s+[0-9a-f]+\s+(?:\(([^)]+)\)|(\S+))?\s*(\S+)$/.exec(line);
    if (!m) continue;
    const [, section, hidden, version, symbol] = m;
    const ver = hidden || version || "";
    if (section === "*UND*") {
      if (ver) versions.set(ver, [...(versions.get(ver) || []), symbol]);
    } else if (!/^(GLIBC|GCC|GLIBCXX|CXXABI)_/.test(symbol) && symbol !== ver) {
      exported.push(symbol);
    }
  }
  const needed = [...headers.matchAll(/^\s*NEEDED\s+(\S+)/gm)].map((m) => m[1]);
  const rule = rules(file);
  const problems = [];
  let maxGlibc = "0";
  for (const [ver, symbols] of versions) {
    const g = /^GLIBC_([\d.]+)$/.exec(ver);
    if (g) {
      if (newer(g[1], maxGlibc.split(".").map(Number))) maxGlibc = g[1];
      if (newer(g[1], MAX_GLIBC)) problems.push(`needs ${ver} for ${symbols.join(", ")}`);
    } else if (/^(GLIBCXX|CXXABI)_/.test(ver) || (/^GCC_/.test(ver) && !/^GCC_[1-4]\./.test(ver))) {
      problems.push(`needs ${ver} (libstdc++ / libgcc) for ${symbols.join(", ")}`);
    }
  }
  for (const lib of needed) {
    if (!SYSTEM.includes(lib) && !rule.needs.includes(lib)) problems.push(`needs the library ${lib}`);
  }
  if (rule.entry && !exported.includes(rule.entry)) problems.push(`does not export its entry point ${rule.entry}`);
  const extra = exported.filter((s) => !rule.exports.test(s));
  if (extra.length) {
    problems.push(`exports ${extra.length} symbols beyond its entry points: ${extra.slice(0, 10).join(", ")}`);
  }
  return { file, maxGlibc, needed, exported, problems };
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const json = args.includes("--json");
  const files = args.filter((a) => a !== "--json");
  if (!files.length) {
    console.error("usage: node scripts/check-portable.js FILE... [--json]");
    process.exit(2);
  }
  const results = files.map(check);
  if (json) {
    console.log(JSON.stringify(results, null, 2));
  } else {
    for (const r of results) {
      const head = `${r.file}: glibc >= ${r.maxGlibc}, ${r.exported.length} exports, needs ${r.needed.join(" ")}`;
      console.log(r.problems.length ? `${head}\n  FAILS: ${r.problems.join("\n  ")}` : `${head}: portable`);
    }
  }
  process.exit(results.some((r) => r.problems.length) ? 1 : 0);
}

module.exports = { check, MAX_GLIBC };
