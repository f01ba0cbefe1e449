// Moving tensors between devices (docs/architecture.md#execution-model): copies
// are explicit, and run in order on the stream like every op.
#pragma once
#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// The tensor on `target`. Same device: a new handle on the same storage (no
// copy). cpu -> cuda: enqueued on the device's compute stream, the host
// storage kept until the copy has read it. cuda -> cpu: waits for the device
// (reporting what its kernels found), then copies. cuda:i -> cuda:j: a peer
// copy ordered after the work queued on cuda:i. A target CUDA cannot use is
// refused at once (ERR_MOE_CUDA_UNAVAILABLE with the reason, ERR_MOE_DEVICE).
Task<Tensor> to_device(const Tensor& t, Device target);

// A copy on the same device (a device-to-device copy on the GPU).
Task<Tensor> clone(const Tensor& t);

}  // namespace moe::ops
