// The split-K sum of the w4a16 GEMMs (w4a16_gemm.cu, w4a16_wgmma.cu): each K slice wrote fp32 partials
// [slice][M][N]; C = Σ slices in slice order (deterministic) + residual, in T.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dependent_launch.cuh"
#include "cuda/w4a16_fragments.cuh"

namespace vlm {

// The first of `units` units of K that slice `slice` of `slices` takes (slices differ by at most one unit). In
// unsigned 32 bits: a 64-bit division is a ~76-instruction call, and the plans never ask more slices than units
// (nor more than the GPU's resident blocks), so slice x units stays far below 2^32.
__device__ __forceinline__ int splitk_slice_start(unsigned slice, int units, unsigned slices) {
  return (int)(slice * (unsigned)units / slices);
}

template <class T>
__global__ void splitk_reduce_kernel(const float* __restrict__ partial, const T* __restrict__ residual,
                                     T* __restrict__ c, int64_t mn, int splits) {
  cuda::pdl_wait();
  cuda::pdl_allow_next();
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= mn) return;
  float s = 0.f;
  for (int k = 0; k < splits; ++k) s += partial[(int64_t)k * mn + i];
  if (residual) s += w4a16::Act<T>::to_float(residual[i]);
  c[i] = w4a16::Act<T>::from_float(s);
}

template <class T>
inline cudaError_t w4a16_splitk_reduce(const float* partial, const T* residual, T* c, int64_t mn, int splits,
                                       cudaStream_t stream) {
  return cuda::launch_dependent(splitk_reduce_kernel<T>, dim3((unsigned)((mn + 255) / 256)), dim3(256), 0, stream,
                                partial, residual, c, mn, splits);
}

}  // namespace vlm
