// The cause of a failed source build, from cmake-js's output: CMake's error
// blocks, the compiler's and the linker's error lines, and the Debian packages
// that provide what was missing.
const APT = "sudo apt-get install -y";

// [pattern in the output, what it means and how to get it]
const HINTS = [
  [
    /No CMAKE_CXX_COMPILER could be found|CMAKE_CXX_COMPILER:[\s\S]*?is not a full path/,
    `a C++17 compiler: ${APT} g++`,
  ],
  [/No CMAKE_C_COMPILER could be found|CMAKE_C_COMPILER:[\s\S]*?is not a full path/, `a C compiler: ${APT} gcc`],
  [
    /CMake 3\.2[4-9] or higher is required/,
    "CMake >= 3.24 (Debian 12 and Ubuntu 24.04 have it: apt-get install cmake)",
  ],
  [/gloo\/[a-z_/]+\.h: No such file/, `Gloo's headers: ${APT} libgloo-dev`],
  [/cblas\.h: No such file|openblas/i, `OpenBLAS: ${APT} libopenblas-dev`],
  [/MOE_EP_CUDA=ON but no nvcc/, "nvcc (the CUDA toolkit), or MOE_EP_CUDA=OFF for a CPU-only build"],
  [/cuda_runtime(_api)?\.h: No such file/, "the CUDA toolkit's headers (set CUDA_HOME), or MOE_EP_CUDA=OFF"],
  [
    /node_api\.h: No such file|napi\.h: No such file/,
    "node-addon-api / node-api-headers: run the install from the package folder",
  ],
];

function cmakeErrors(lines) {
  const out = [];
  for (let i = 0; i < lines.length; i++) {
    if (!/^CMake Error/.test(lines[i])) continue;
    const block = [lines[i]];
    for (let j = i + 1; j < lines.length && block.length < 16; j++) {
      if (/^(--|CMake |\S)/.test(lines[j]) && lines[j].trim()) break;
      if (lines[j].trim()) block.push(lines[j]);
      i = j;
    }
    out.push(block.join("\n"));
  }
  return out;
}

function compilerErrors(lines) {
  const out = [];
  for (let i = 0; i < lines.length && out.length < 20; i++) {
    const l = lines[i];
    if (
      /(^|: )(fatal )?error( [A-Z0-9]+)?:|undefined reference to|^nvcc fatal|ld returned|^ninja: build stopped|^make.*Error/.test(
        l,
      )
    ) {
      out.push(l);
      // the source line the compiler quotes under its message
      if (/: (fatal )?error:/.test(l) && lines[i + 1] && /^\s+\d+ \|/.test(lines[i + 1])) out.push(lines[i + 1]);
    }
  }
  return out;
}

/** The report printed when the build fails. */
function explainFailure(output) {
  const lines = output.split("\n");
  const parts = ["moe-ep: the source build of the addon failed."];
  const cmake = cmakeErrors(lines);
  const compiler = compilerErrors(lines);
  if (cmake.length) parts.push(...cmake);
  if (compiler.length) parts.push(compiler.join("\n"));
  if (!cmake.length && !compiler.length) {
    parts.push(
      "The last lines of the build:",
      lines
        .filter((l) => l.trim())
        .slice(-20)
        .join("\n"),
    );
  }
  const needs = HINTS.filter(([re]) => re.test([...cmake, ...compiler].join("\n"))).map(([, what]) => `  ${what}`);
  if (needs.length) parts.push("Needed:", ...needs);
  parts.push(
    `The source build needs cmake, g++ and, for the CPU backends, OpenBLAS and Gloo (Debian/Ubuntu: ${APT} cmake g++ libopenblas-dev libgloo-dev).`,
  );
  return parts.join("\n");
}

module.exports = { explainFailure };
