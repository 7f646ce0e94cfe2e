// The RMSNorm of a residual row, shared by the norm kernel (decoder_kernels.cu)
// and the prologue of the w4a16 decode kernel (w4a16_decode.cu), which folds the
// norm into the GEMM that consumes it: one definition, so both produce the same
// bits. The order is part of the definition: 256 threads, thread t adds the
// squares of float4 elements t, t + 256, ... in turn, the warps' sums are then
// added in warp order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/device_math.cuh"

namespace vlm {
namespace cuda {

constexpr int kRmsNormThreads = 256;

// Float4 element k4 of the fp32 residual row h plus, where delta is set, the update delta (act dtype).
template <class T>
__device__ __forceinline__ float4 residual4(const float* h, const T* delta, int k4) {
  float4 x = reinterpret_cast<const float4*>(h)[k4];
  if (delta) {
    const uint2 d = reinterpret_cast<const uint2*>(delta)[k4];
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

}  // namespace cuda
}  // namespace vlm
