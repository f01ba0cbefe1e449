// The test environment of the "cuda-emulated" jest project (jest.config.js):
// its test files load the emulated build (build-emu/), whose cuda:0 runs the
// kernels of cuda/ on the CPU emulator, and its one-rank NCCL
// (emu/nccl/nccl_emu.cpp). MOE_EP_NCCL_LIBRARY is read by the native core
// with getenv, so it is set in this worker's real environment for the file's
// duration and restored after it (the same worker may run a "cpu" file next).
const path = require("path");
const { TestEnvironment } = require("jest-environment-node");

const build = path.resolve(__dirname, "..", "..", "build-emu", "Release");
const settings = {
  MOE_EP_ADDON: path.join(build, "moe_ep.node"),
  MOE_EP_NCCL_LIBRARY: path.join(build, "libnccl_emu.so"),
};

class EmulatedCudaEnvironment extends TestEnvironment {
  async setup() {
    await super.setup();
    this.saved = {};
    for (const [name, value] of Object.entries(settings)) {
      this.saved[name] = process.env[name];
      process.env[name] = value;
      this.global.process.env[name] = value;
    }
  }

  async teardown() {
    for (const [name, value] of Object.entries(this.saved || {})) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    await super.teardown();
  }
}

module.exports = EmulatedCudaEnvironment;
