// Every launcher of cuda/launchers.h for a build without CUDA: each refuses
// with MOE_CUDA_ERR_NOT_BUILT, so cpp/ calls launchers without #ifdefs and the
// CPU-only build still compiles (and links) the whole CUDA dispatch path.
// Including launchers.h makes a stub whose signature drifts from its
// declaration a compile error. A new launcher needs its stub here.
#ifndef MOE_EP_WITH_CUDA
#include "../../cuda/launchers.h"

extern "C" {

int moe_cuda_probe(int*, int*, char*, size_t) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_set_device(int) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_get_device(int*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_event_create(void**) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_event_record(void*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_event_query(void*, int*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_event_destroy(void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_event_synchronize(void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_host_alloc_mapped(size_t, void**, void**) { return MOE_CUDA_ERR_NOT_BUILT; }
const char* moe_cuda_error_string(int) { return "this build has no CUDA code"; }
int moe_cuda_stream_create(int, void**) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_stream_synchronize(void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_stream_wait_stream(void*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_launch_host_func(void*, void (*)(void*), void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_pool_configure(int) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_pool_usage(int, uint64_t*, uint64_t*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_pool_trim(int) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_malloc_async(void**, size_t, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_free_async(void*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_malloc(void**, size_t) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_memcpy_async(void*, const void*, size_t, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_memcpy_peer_async(void*, int, const void*, int, size_t, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_memset_async(void*, int, size_t, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_timing_event_create(void**) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_event_elapsed_ms(void*, void*, float*) { return MOE_CUDA_ERR_NOT_BUILT; }
size_t moe_cuda_status_bytes(void) { return 0; }
int moe_cuda_status_reset(void*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_status_read(const void*, uint32_t*, int64_t*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_check_finite(const void*, int, int64_t, void*, uint32_t, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_check_range_i32(const int32_t*, int64_t, int32_t, int32_t, void*, uint32_t, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_flag_if_positive(const int32_t*, void*, uint32_t, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_gate_forward(const void*, int, const float*, int64_t, int64_t, int64_t, float*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_gate_backward(const void*, int, const float*, const float*, int64_t, int64_t, int64_t, void*, float*,
                           void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
size_t moe_cuda_route_workspace_bytes(int64_t, int) { return 0; }
int moe_cuda_route_forward(const float*, const float*, int64_t, int, int, int, int, int, int, int32_t*, float*, float*,
                           int32_t*, float*, float*, float*, int32_t*, void*, size_t, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_route_backward(const float*, const int32_t*, const float*, const float*, const int32_t*, int64_t, int, int,
                            int, int, float, float, float*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_route_scores(const float*, int64_t, int, int, float*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_permute_workspace_bytes(int64_t, int, int, int64_t, size_t*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_permute_plan(const int32_t*, const float*, int64_t, int, int64_t, int, int, int32_t*, int64_t*, void*,
                          uint32_t, void*, size_t, int64_t*, void*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_permute_rows(const void*, int, int64_t, int, const int32_t*, const float*, int64_t, int, int64_t, int, int,
                          const void*, size_t, int64_t, int32_t*, int32_t*, void*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_permute_backward(const void*, int, int64_t, int64_t, const int32_t*, int64_t, int, void*, void*, uint32_t,
                              void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_unpermute_forward(const void*, int, int64_t, int64_t, const int32_t*, const float*, int64_t, int, void*,
                               void*, uint32_t, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_unpermute_backward_workspace_bytes(int64_t, int64_t, size_t*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_unpermute_backward(const void*, int, const void*, int, int64_t, int64_t, const int32_t*, const float*,
                                int64_t, int, void*, float*, void*, size_t, void*, uint32_t, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_activation_forward(const void*, int, int64_t, int64_t, int, void*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_activation_backward(const void*, int, const void*, int, int64_t, int64_t, int, void*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_adamw(void*, int, const void*, int, float*, float*, int64_t, float, float, float, float, float, float,
                   float, float, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}

int moe_cuda_add(const void*, int, const void*, int, int64_t, void*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_axpby(void*, int, const void*, int, int64_t, float, float, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int64_t moe_cuda_sum_squares_partials_count(int64_t) { return 0; }
int moe_cuda_sum_squares_partials(const void*, int, int64_t, double*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_sum_squares_finish(const double*, int64_t, float*, void*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_expert_bias_update(float*, const void*, int, int64_t, double, void*, uint32_t, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_fill_random(void*, int, int64_t, uint64_t, uint32_t, int, double, double, int64_t, int64_t, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_jitter(const void*, int, int64_t, double, uint64_t, uint32_t, int64_t, void*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
size_t moe_cuda_chunk_transpose_workspace_bytes(int64_t) { return 0; }
int moe_cuda_chunk_transpose(const void*, int64_t, size_t, const int32_t*, int64_t, int64_t, void*, void*, uint32_t,
                             uint32_t, void*, size_t, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}

size_t moe_cuda_grouped_gemm_workspace_bytes(int) { return 0; }
int moe_cuda_grouped_gemm_uses_sm90(int, int*) { return MOE_CUDA_ERR_NOT_BUILT; }
int moe_cuda_grouped_gemm(const void*, const void*, const void*, const int32_t*, void*, int64_t, int, int64_t, int64_t,
                          int, int, void*, size_t, int32_t*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_grouped_gemm_dx(const void*, const void*, const int32_t*, void*, int64_t, int, int64_t, int64_t, int, int,
                             void*, size_t, int32_t*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}
int moe_cuda_grouped_gemm_dw(const void*, const void*, const int32_t*, void*, int64_t, int, int64_t, int64_t, int, int,
                             void*, size_t, int32_t*, void*) {
  return MOE_CUDA_ERR_NOT_BUILT;
}

}  // extern "C"

#endif  // MOE_EP_WITH_CUDA
