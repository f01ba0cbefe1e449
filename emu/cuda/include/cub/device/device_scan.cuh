// cub::DeviceScan for the CUDA emulator (emu/cuda/cuda_emu.h): the same calls
// and temporary-storage protocol, computed in index order on the host, which
// is the result CUB's scans give for integer sums.
#pragma once
#include <cuda_runtime.h>

#include <stddef.h>

#include <type_traits>

namespace cub {

struct DeviceScan {
  template <class In, class Out, class NumItems, class = typename std::enable_if<!std::is_integral<Out>::value>::type>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, In in, Out out, NumItems n,
                                  cudaStream_t stream = nullptr) {
    (void)stream;
    if (temp == nullptr) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    using Value = typename std::remove_cv<typename std::remove_reference<decltype(in[0])>::type>::type;
    Value sum = Value();
    for (NumItems i = 0; i < n; ++i) {
      const Value v = in[i];
      out[i] = sum;
      sum = sum + v;
    }
    return cudaSuccess;
  }

  // In place.
  template <class Data, class NumItems>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, Data data, NumItems n,
                                  cudaStream_t stream = nullptr) {
    return ExclusiveSum(temp, temp_bytes, data, data, n, stream);
  }
};

}  // namespace cub
