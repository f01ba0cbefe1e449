// The "cuda-emulated" jest project (jest.config.js): its test files load the
// emulated build, whose cuda:0 runs the kernels of cuda/ on the CPU emulator.
const path = require("path");
process.env.MOE_EP_ADDON = path.resolve(__dirname, "..", "..", "build-emu", "Release", "moe_ep.node");
