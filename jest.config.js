// Two projects. "cpu": every test against the addon in build/ (CUDA cases run
// where a GPU is present and are listed as skipped elsewhere). "cuda-emulated":
// when `npm run build:emu` has built build-emu/, the CUDA and NCCL test files
// again against that addon, whose cuda:0 runs the real kernels of cuda/ on the
// CPU emulator of emu/cuda/ (and NCCL at world size 1 on its one-rank NCCL),
// and the emulator's own tests (which say they were skipped when the build is
// absent).
const fs = require("fs");
const path = require("path");

const base = {
  preset: "ts-jest",
  testEnvironment: "node",
  transform: {
    "^.+\\.ts$": ["ts-jest", { tsconfig: "tsconfig.json", diagnostics: { warnOnly: false } }],
  },
};
const emulated = fs.existsSync(path.join(__dirname, "build-emu", "Release", "moe_ep.node"));
const cudaFiles = ["cuda-ops", "layer-cuda", "device", "nccl-group", "bench-floor"].map(
  (f) => `<rootDir>/test/${f}.test.ts`,
);

module.exports = {
  testTimeout: 60000,
  globalSetup: "<rootDir>/test/global-setup.js",
  projects: [
    {
      ...base,
      displayName: "cpu",
      testMatch: ["<rootDir>/test/**/*.test.ts"],
      testPathIgnorePatterns: ["/node_modules/", "<rootDir>/test/emulated/"],
    },
    {
      ...base,
      displayName: "cuda-emulated",
      testMatch: ["<rootDir>/test/emulated/**/*.test.ts", ...(emulated ? cudaFiles : [])],
      testEnvironment: emulated ? "<rootDir>/test/emulated/environment.js" : "node",
    },
  ],
};
