// Every CUDA entry point of moe-ep: plain C functions that take raw pointers,
// sizes and a stream, so cpp/ (and through it the C ABI) can call them without
// CUDA headers. Streams travel as void* (a cudaStream_t).
#pragma once
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Number of usable devices (0 when none), the runtime and driver versions, and
// when 0 the reason in `reason`.
int moe_cuda_probe(int* runtime_version, int* driver_version, char* reason, size_t reason_len);

#ifdef __cplusplus
}
#endif
