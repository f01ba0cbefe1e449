// What the emulator's scheduler needs from its CUDA runtime (runtime.cpp).
#pragma once
#include <cuda_runtime.h>

#include <stddef.h>

namespace emu {
// Records a launch's configuration error as the calling thread's last error.
void set_last_error(cudaError_t err);
// The dynamic shared memory the kernel was allowed (cudaFuncSetAttribute), or 0.
size_t shared_limit(const void* kernel);
// A live stream: null, the legacy or per-thread stream, or one created and not destroyed.
bool stream_valid(cudaStream_t stream);
}  // namespace emu
