#!/usr/bin/env node
// Turns a .cu file into C++ that the CPU emulator (emu/cuda/cuda_emu.h) runs.
// Two constructs of CUDA C++ are not C++ and are rewritten here; everything
// else is left to the macros and functions of cuda_emu.h:
//   callee<<<grid, block, smem, stream>>>(args)  ->  ::emu::launch(callee, grid, block, smem, stream)(args)
//   extern __shared__ T name[];                   ->  T* name = ::emu::dynamic_shared<T>();
// A #line directive keeps compiler messages pointing at the .cu file.
//
// usage: node translate.js input.cu output.cpp
"use strict";
const fs = require("fs");
const path = require("path");

/** The start of the callee expression that ends just before index `end`. */
function calleeStart(src, end) {
  let i = end;
  while (i > 0 && /\s/.test(src[i - 1])) i--;
  if (src[i - 1] === ">") {
    // template arguments: walk back to the matching '<'
    let depth = 0;
    for (i = i - 1; i >= 0; i--) {
      if (src[i] === ">") depth++;
      else if (src[i] === "<" && --depth === 0) break;
    }
    if (i < 0) throw new Error("unbalanced template arguments before <<<");
    while (i > 0 && /\s/.test(src[i - 1])) i--;
  }
  while (i > 0 && /[A-Za-z0-9_:]/.test(src[i - 1])) i--;
  return i;
}

function translate(src) {
  let out = "";
  let pos = 0;
  for (;;) {
    const open = src.indexOf("<<<", pos);
    if (open < 0) break;
    const close = src.indexOf(">>>", open);
    if (close < 0) throw new Error(`unterminated <<< at offset ${open}`);
    const start = calleeStart(src, open);
    if (start < pos) throw new Error(`cannot find the kernel before <<< at offset ${open}`);
    const callee = src.slice(start, open).trim();
    if (!callee) throw new Error(`no kernel before <<< at offset ${open}`);
    const config = src.slice(open + 3, close);
    out += src.slice(pos, start) + `::emu::launch(${callee}, ${config})`;
    pos = close + 3;
  }
  out += src.slice(pos);
  return out.replace(
    /extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w:<>, ]*?)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*;/g,
    (_, type, name) => `${type}* ${name} = ::emu::dynamic_shared<${type}>();`,
  );
}

if (require.main === module) {
  const [input, output] = process.argv.slice(2);
  if (!input || !output) {
    console.error("usage: node translate.js input.cu output.cpp");
    process.exit(2);
  }
  const src = fs.readFileSync(input, "utf8");
  let text;
  try {
    text = translate(src);
  } catch (e) {
    console.error(`${input}: ${e.message}`);
    process.exit(1);
  }
  fs.mkdirSync(path.dirname(output), { recursive: true });
  fs.writeFileSync(output, `#line 1 "${path.resolve(input)}"\n${text}`);
}

module.exports = { translate };
