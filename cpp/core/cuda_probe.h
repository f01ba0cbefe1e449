// Whether CUDA is built into this core and usable on this machine, and why not.
#pragma once
#include <string>

namespace moe {

struct CudaStatus {
  bool built = false;      // compiled with nvcc
  bool available = false;  // a driver and at least one device answered
  bool emulated = false;   // the kernels run on the CPU emulator of emu/cuda/ (MOE_EP_CUDA=EMULATE)
  int device_count = 0;
  int runtime_version = 0;  // e.g. 13000
  int driver_version = 0;
  std::string reason;  // why unavailable; empty when available
  std::string archs;   // the SASS/PTX targets compiled in
};

const CudaStatus& cuda_status();

}  // namespace moe
