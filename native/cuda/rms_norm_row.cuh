// The RMSNorm of a residual row, shared by the norm kernel (decoder_kernels.cu)
// and the prologues of the decode-size GEMMs (w4a16_decode.cu, dense_decode.cu),
// which fold the norm into the GEMM that consumes it: one definition, so all
// produce the same bits. The order is part of the definition: 256 threads,
// thread t adds the squares of float4 elements t, t + 256, ... in turn, the
// warps' sums are then added in warp order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/device_math.cuh"
#include "cuda/rms_norm_input.h"

namespace vlm {
namespace cuda {

constexpr int kRmsNormThreads = 256;

// Float4 element k4 of the fp32 residual row h plus, where delta is set, the update delta (act dtype).
// kFromL2: loads that bypass the SM's caches (for rows written by other blocks of the same launch).
template <class T, bool kFromL2 = false>
__device__ __forceinline__ float4 residual4(const float* h, const T* delta, int k4) {
  float4 x;
  uint2 d;
  if constexpr (kFromL2) {
    x = __ldcg(reinterpret_cast<const float4*>(h) + k4);
    if (delta) d = __ldcg(reinterpret_cast<const uint2*>(delta) + k4);
  } else {
    x = reinterpret_cast<const float4*>(h)[k4];
    if (delta) d = reinterpret_cast<const uint2*>(delta)[k4];
  }
  if (delta) {
    const T* dv = reinterpret_cast<const T*>(&d);
    x.x += to_float(dv[0]), x.y += to_float(dv[1]), x.z += to_float(dv[2]), x.w += to_float(dv[3]);
  }
  return x;
}

// Written as explicit fused multiply-adds: left to the compiler, a * a + b * b may contract into
// fma(a, a, b * b) in one kernel and fma(b, b, a * a) in the other (one bit apart; seen on the H200).
__device__ __forceinline__ float sum_sq4(const float4& x) {
  return fmaf(x.w, x.w, fmaf(x.z, x.z, fmaf(x.y, x.y, __fmul_rn(x.x, x.x))));
}

// 1 / rms from the sum of squares of a row of `hidden` elements (no product here to contract).
__device__ __forceinline__ float rms_inverse(float sum_sq, int hidden, float eps) {
  return 1.0f / sqrtf(sum_sq / hidden + eps);
}

// Four normalized elements, scaled by the norm's weights, in the act dtype (8 bytes).
template <class T>
__device__ __forceinline__ uint2 rms_scaled4(const float4& x, const float4& w, float inv) {
  T o[4] = {from_float<T>(w.x * (x.x * inv)), from_float<T>(w.y * (x.y * inv)), from_float<T>(w.z * (x.z * inv)),
            from_float<T>(w.w * (x.w * inv))};
  return *reinterpret_cast<const uint2*>(o);
}

// Brings into this SM's L1 the norm's weights of the vectors of 8 that this thread stages first (vector
// threadIdx.x of row 0) in stage_rms_norm_rows(). The weights depend on no kernel, so a GEMM may ask for them
// before it waits for the residual row's writer, and the staging after the row's sum then finds them near
// instead of going to memory (by the next step the weights have left the caches: a layer streams tens of MB
// of GEMM weights). A prefetch holds no register, so the GEMM's occupancy is unchanged.
__device__ __forceinline__ void prefetch_norm_weights(const RmsNormInput& norm, int k0, int vec_per_row) {
  if ((int)threadIdx.x < vec_per_row)  // 8 floats, 32-byte aligned: within one 128-byte line
    asm volatile("prefetch.global.L1 [%0];" ::"l"(norm.weight + k0 + threadIdx.x * 8));
}

// Stages A[0 : rows][k0 : k0 + 8 vec_per_row) (vec_per_row vectors of 8 per row, rows <= MaxRows)
// into sa (row stride lda) as rms_norm(h + delta) * weight (RmsNormInput), writing h + delta of
// those columns to h_out where `write_h`. Every thread of a kRmsNormThreads-thread block takes
// part (the row sums are shared); each block sums whole rows, whichever columns it stages. kFromL2:
// residual4's.
template <class T, int MaxRows, bool kFromL2 = false>
__device__ __forceinline__ void stage_rms_norm_rows(const RmsNormInput& norm, int rows, int K, int k0,
                                                    int vec_per_row, T* sa, int lda, bool write_h) {
  constexpr int kWarps = kRmsNormThreads / 32;
  __shared__ float s_sum[MaxRows][kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n4 = K / 4;
  const T* delta = static_cast<const T*>(norm.delta);
  for (int r = 0; r < rows; ++r) {
    const float* hr = norm.h + (int64_t)r * K;
    const T* dr = delta ? delta + (int64_t)r * K : nullptr;
    float ss = 0.f;
    for (int k4 = threadIdx.x; k4 < n4; k4 += kRmsNormThreads) ss += sum_sq4(residual4<T, kFromL2>(hr, dr, k4));
    ss = warp_sum(ss);
    if (lane == 0) s_sum[r][warp] = ss;
  }
  __syncthreads();
  const float4* w4 = reinterpret_cast<const float4*>(norm.weight);
  for (int i = threadIdx.x; i < rows * vec_per_row; i += kRmsNormThreads) {
    const int r = i / vec_per_row, v = i % vec_per_row;
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < kWarps; ++j) total += s_sum[r][j];
    const float inv = rms_inverse(total, K, norm.eps);
    const float* hr = norm.h + (int64_t)r * K;
    const T* dr = delta ? delta + (int64_t)r * K : nullptr;
    const int k4 = (k0 + v * 8) / 4;
    const float4 x0 = residual4<T, kFromL2>(hr, dr, k4), x1 = residual4<T, kFromL2>(hr, dr, k4 + 1);
    const uint2 y0 = rms_scaled4<T>(x0, w4[k4], inv), y1 = rms_scaled4<T>(x1, w4[k4 + 1], inv);
    *reinterpret_cast<uint4*>(sa + r * lda + v * 8) = make_uint4(y0.x, y0.y, y1.x, y1.y);
    if (write_h) {
      float4* ho = reinterpret_cast<float4*>(norm.h_out + (int64_t)r * K);
      ho[k4] = x0;
      ho[k4 + 1] = x1;
    }
  }
}

}  // namespace cuda
}  // namespace vlm
