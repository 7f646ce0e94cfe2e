// The greedy token's rule, shared by the argmax kernel (argmax_rows.cu) and the lm head's GEMV, which
// may take the argmax in its own tail (dense_decode.cu): the largest value, the first index among equal
// ones, NaN never winning, an all -inf row its first index, an all-NaN row token 0 (as the host's
// std::max_element). A thread scans its entries in increasing index order with scan_best(); slices
// (blocks) are then reduced in a fixed order, so the result never depends on which block finished last.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

namespace vlm {
namespace cuda {

// Entry (v, i) of a scan in increasing i: larger, or the first -inf (the initial best is (-inf, INT_MAX)).
__device__ __forceinline__ void scan_best(float v, int i, float& best, int& bi) {
  if (v > best || (bi == INT_MAX && v == best)) best = v, bi = i;
}

// a beats b: larger, or equal and earlier. An index of INT_MAX (a slice of NaNs only) loses to any.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

__device__ __forceinline__ void warp_best(float& v, int& i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_down_sync(0xffffffffu, v, off);
    const int oi = __shfl_down_sync(0xffffffffu, i, off);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
}

// Every thread of a kThreads-thread block brings its (best, bi); slice `slice` of `slices` blocks of one
// row. The block's best goes to partial[slice]; the last of the row's blocks to arrive (counter, zero
// before, left at zero) reduces the partials in slice order and writes index / value. One slice: no
// counter, no partial. Every thread of the block must call it.
template <int kThreads>
__device__ __forceinline__ void slices_best(float best, int bi, int slice, int slices, int2* __restrict__ partial,
                                            int* __restrict__ counter, int32_t* __restrict__ index,
                                            float* __restrict__ value) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float s_v[kWarps];
  __shared__ int s_i[kWarps];
  __shared__ bool s_last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  warp_best(best, bi);
  if (lane == 0) s_v[warp] = best, s_i[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    best = lane < kWarps ? s_v[lane] : -INFINITY;
    bi = lane < kWarps ? s_i[lane] : INT_MAX;
    warp_best(best, bi);
    if (lane == 0) {
      if (slices == 1) {
        *index = bi == INT_MAX ? 0 : bi;
        *value = best;
      } else {
        partial[slice] = make_int2(__float_as_int(best), bi);
        __threadfence();
        s_last = atomicAdd(counter, 1) == slices - 1;
      }
    }
  }
  if (slices == 1) return;
  __syncthreads();
  if (!s_last || warp != 0) return;
  __threadfence();
  best = -INFINITY;
  bi = INT_MAX;
  for (int s = lane; s < slices; s += 32) {  // in slice order within a lane; ties go to the lower index anyway
    const int2 e = __ldcg(partial + s);
    const float v = __int_as_float(e.x);
    if (better(v, e.y, best, bi)) best = v, bi = e.y;
  }
  warp_best(best, bi);
  if (lane == 0) {
    *index = bi == INT_MAX ? 0 : bi;
    *value = best;
    *counter = 0;
  }
}

}  // namespace cuda
}  // namespace vlm
