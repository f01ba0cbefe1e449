// The emulator's ptx_sm80.cuh: it stands in for cuda/ptx_sm80.cuh (this
// folder comes first on the emulated build's include path, as for cub/), with
// the same functions and the semantics the PTX ISA gives their instructions:
//   cp.async     a copy queued by the issuing thread and made when that thread
//                waits for its group (cp.async.wait_group N leaves the N newest
//                committed groups in flight), so data read before the wait and
//                the barrier after it is stale, as it may be on the GPU;
//                src-size 0 writes zeros.
//   ldmatrix     four 8x8 b16 matrices whose row addresses come from lanes
//                8i..8i+7; lane l gets row l/4, columns 2(l%4) and 2(l%4)+1
//                of each (with .trans: column l/4, rows 2(l%4) and 2(l%4)+1).
//   mma.m16n8k16 row.col, float32 accumulators, fragments as the PTX ISA
//                lays them out (groupID = lane/4, threadID_in_group = lane%4).
// Shared addresses are offsets into the block's dynamic shared memory.
#pragma once
#include <stdint.h>
#include <string.h>

#include "common.cuh"

namespace moe_cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return ::emu::shared_offset(p); }

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  ::emu::cp_async(dst, src, 16, valid ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { ::emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  ::emu::cp_async_wait(N);
}

__device__ __forceinline__ uint32_t emu_b16_pair(uint32_t lo_addr, uint32_t hi_addr) {
  uint16_t lo, hi;
  memcpy(&lo, ::emu::shared_at(lo_addr), 2);
  memcpy(&hi, ::emu::shared_at(hi_addr), 2);
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  uint64_t rows[32];
  ::emu::gather_warp(addr, rows);
  const int lane = ::emu::lane_id();
  for (int i = 0; i < 4; ++i) {
    const uint32_t row = static_cast<uint32_t>(rows[8 * i + lane / 4]);
    const uint32_t at = row + 4u * static_cast<uint32_t>(lane % 4);
    r[i] = emu_b16_pair(at, at + 2);
  }
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  uint64_t rows[32];
  ::emu::gather_warp(addr, rows);
  const int lane = ::emu::lane_id();
  const uint32_t col = 2u * static_cast<uint32_t>(lane / 4);
  for (int i = 0; i < 4; ++i) {
    const uint32_t r0 = static_cast<uint32_t>(rows[8 * i + 2 * (lane % 4)]);
    const uint32_t r1 = static_cast<uint32_t>(rows[8 * i + 2 * (lane % 4) + 1]);
    r[i] = emu_b16_pair(r0 + col, r1 + col);
  }
}

template <typename T>
__device__ __forceinline__ float emu_b16_value(uint32_t pair, int half) {
  const uint16_t bits = static_cast<uint16_t>(half ? pair >> 16 : pair & 0xffffu);
  T v;
  memcpy(&v, &bits, 2);
  return to_f32(v);
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint64_t a01[32], a23[32], bb[32];
  ::emu::gather_warp(a[0] | (static_cast<uint64_t>(a[1]) << 32), a01);
  ::emu::gather_warp(a[2] | (static_cast<uint64_t>(a[3]) << 32), a23);
  ::emu::gather_warp(b[0] | (static_cast<uint64_t>(b[1]) << 32), bb);
  const int lane = ::emu::lane_id();
  const int g = lane / 4;
  const int t = lane % 4;
  // Rows g and g + 8 of A, columns 2t and 2t + 1 of B, from the lanes that hold them.
  float A[2][16];
  float B[16][2];
  for (int q = 0; q < 4; ++q) {   // the threadID_in_group of the holder
    const int owner = 4 * g + q;  // holds A row g (a0..a3: cols 2q, 2q+1, 2q+8, 2q+9)
    const uint64_t lo = a01[owner], hi = a23[owner];
    A[0][2 * q] = emu_b16_value<T>(static_cast<uint32_t>(lo), 0);
    A[0][2 * q + 1] = emu_b16_value<T>(static_cast<uint32_t>(lo), 1);
    A[1][2 * q] = emu_b16_value<T>(static_cast<uint32_t>(lo >> 32), 0);
    A[1][2 * q + 1] = emu_b16_value<T>(static_cast<uint32_t>(lo >> 32), 1);
    A[0][2 * q + 8] = emu_b16_value<T>(static_cast<uint32_t>(hi), 0);
    A[0][2 * q + 9] = emu_b16_value<T>(static_cast<uint32_t>(hi), 1);
    A[1][2 * q + 8] = emu_b16_value<T>(static_cast<uint32_t>(hi >> 32), 0);
    A[1][2 * q + 9] = emu_b16_value<T>(static_cast<uint32_t>(hi >> 32), 1);
  }
  for (int c = 0; c < 2; ++c)
    for (int q = 0; q < 4; ++q) {
      const uint64_t v = bb[4 * (2 * t + c) + q];  // B column 2t + c is held by groupID 2t + c
      B[2 * q][c] = emu_b16_value<T>(static_cast<uint32_t>(v), 0);
      B[2 * q + 1][c] = emu_b16_value<T>(static_cast<uint32_t>(v), 1);
      B[2 * q + 8][c] = emu_b16_value<T>(static_cast<uint32_t>(v >> 32), 0);
      B[2 * q + 9][c] = emu_b16_value<T>(static_cast<uint32_t>(v >> 32), 1);
    }
  for (int h = 0; h < 2; ++h)
    for (int c = 0; c < 2; ++c) {
      float s = d[2 * h + c];
      for (int k = 0; k < 16; ++k) s += A[h][k] * B[k][c];
      d[2 * h + c] = s;
    }
}

}  // namespace moe_cuda
