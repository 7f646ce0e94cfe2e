#include "cuda/simt_linear.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/device_math.cuh"

namespace vlm {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 4;

template <class T>
__device__ __forceinline__ void widen8(const uint4& raw, float (&out)[8]) {
  const T* p = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_float(p[i]);
}

template <class T, bool kW4, class OutT>
__global__ void __launch_bounds__(kWarps * 32)
    simt_linear_kernel(const T* x, int M, int K, int N, SimtWeights w, const float* bias, OutT* y) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kWarps + threadIdx.x / 32;
  const int m0 = blockIdx.y * kRows;
  if (n >= N) return;
  float acc[kRows] = {};
  for (int k0 = lane * 8; k0 < K; k0 += 256) {
    float wf[8];
    if constexpr (kW4) {
      const uint32_t codes = static_cast<const uint32_t*>(w.w)[(int64_t)n * (K / 8) + k0 / 8];
      const int64_t g = (int64_t)n * (K / w.group) + k0 / w.group;
      const float s = w.scale[g], z = w.nzs[g];
#pragma unroll
      for (int i = 0; i < 8; ++i) wf[i] = (float)((codes >> (4 * i)) & 15u) * s + z;
    } else {
      widen8<T>(*reinterpret_cast<const uint4*>(static_cast<const T*>(w.w) + (int64_t)n * K + k0), wf);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (m0 + r >= M) break;
      float xf[8];
      widen8<T>(*reinterpret_cast<const uint4*>(x + (int64_t)(m0 + r) * K + k0), xf);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[r] += xf[i] * wf[i];
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0 && m0 + r < M) y[(int64_t)(m0 + r) * N + n] = from_float<OutT>(v + (bias ? bias[n] : 0.f));
  }
}

template <class T, class OutT>
cudaError_t launch(const void* x, int M, int K, int N, const SimtWeights& w, const float* bias, void* y,
                   cudaStream_t stream) {
  const dim3 grid((N + kWarps - 1) / kWarps, (M + kRows - 1) / kRows), block(kWarps * 32);
  if (w.group)
    simt_linear_kernel<T, true, OutT><<<grid, block, 0, stream>>>(static_cast<const T*>(x), M, K, N, w, bias,
                                                                  static_cast<OutT*>(y));
  else
    simt_linear_kernel<T, false, OutT><<<grid, block, 0, stream>>>(static_cast<const T*>(x), M, K, N, w, bias,
                                                                   static_cast<OutT*>(y));
  return cudaGetLastError();
}

}  // namespace

cudaError_t simt_linear(ActType act, const void* x, int M, int K, int N, const SimtWeights& w, const float* bias,
                        void* y, bool y_f32, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (K % 8 || (w.group && w.group % 8) || (M + kRows - 1) / kRows > 65535) return cudaErrorInvalidValue;
  if (act == ActType::F16)
    return y_f32 ? launch<__half, float>(x, M, K, N, w, bias, y, stream)
                 : launch<__half, __half>(x, M, K, N, w, bias, y, stream);
  return y_f32 ? launch<__nv_bfloat16, float>(x, M, K, N, w, bias, y, stream)
               : launch<__nv_bfloat16, __nv_bfloat16>(x, M, K, N, w, bias, y, stream);
}

}  // namespace cuda
}  // namespace vlm
