// Greedy decoding's argmax over fp32 logit rows, split across blocks.
//
// Why split: one block per row read a 92,544-entry row in ~90 dependent rounds of loads, a 33 us kernel in
// every batch-1 decode step on the H200 (bench/decode_trace.py, 2026-12-03) for 0.37 MB. Here each
// row is cut into slices of a few thousand entries, one block each, with several loads in flight
// per thread; each slice leaves (value, index) in the scratch, and the last block of a row to
// finish (an arrival counter per row) reduces the slices in slice order and resets the counter, so
// the result does not depend on which finished last and the same scratch serves the next step.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda/decoder_kernels.h"
#include "cuda/dependent_launch.cuh"

namespace vlm {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxSlices = 64;
constexpr int kSliceEntries = 4096;  // about 16 loads per thread

int slices_for(int vocab) { return std::min(kMaxSlices, std::max(1, (vocab + kSliceEntries - 1) / kSliceEntries)); }

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

// grid (rows, slices), kThreads threads. counters: one per row, zero; partial: rows * slices
// (value bits, index) pairs.
__global__ void __launch_bounds__(kThreads) argmax_rows_kernel(const float* __restrict__ logits, int vocab,
                                                                int32_t* __restrict__ index,
                                                                float* __restrict__ value, int* __restrict__ counters,
                                                                int2* __restrict__ partial) {
  pdl_wait();  // the logits come from the kernel before
  pdl_allow_next();
  const int row = blockIdx.x, slice = blockIdx.y, slices = gridDim.y;
  const int chunk = (vocab + slices - 1) / slices;
  const int lo = slice * chunk, hi = min(vocab, lo + chunk);
  const float* p = logits + (int64_t)row * vocab;
  float best = -INFINITY;
  int bi = INT_MAX;
  // NaN never compares greater; an all -inf slice still yields its first index (as std::max_element).
#pragma unroll 8
  for (int i = lo + threadIdx.x; i < hi; i += kThreads) {
    const float v = p[i];
    if (v > best || (bi == INT_MAX && v == best)) best = v, bi = i;
  }
  __shared__ float s_v[kThreads / 32];
  __shared__ int s_i[kThreads / 32];
  __shared__ bool s_last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  warp_best(best, bi);
  if (lane == 0) s_v[warp] = best, s_i[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    best = lane < kThreads / 32 ? s_v[lane] : -INFINITY;
    bi = lane < kThreads / 32 ? s_i[lane] : INT_MAX;
    warp_best(best, bi);
    if (lane == 0) {
      if (slices == 1) {
        index[row] = bi == INT_MAX ? 0 : bi;  // an all-NaN row: token 0, as the host's max_element gives
        value[row] = best;
      } else {
        partial[(int64_t)row * slices + slice] = make_int2(__float_as_int(best), bi);
        __threadfence();
        s_last = atomicAdd(counters + row, 1) == slices - 1;
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
    const int2 e = __ldcg(partial + (int64_t)row * slices + s);
    const float v = __int_as_float(e.x);
    if (better(v, e.y, best, bi)) best = v, bi = e.y;
  }
  warp_best(best, bi);
  if (lane == 0) {
    index[row] = bi == INT_MAX ? 0 : bi;
    value[row] = best;
    counters[row] = 0;
  }
}

}  // namespace

int64_t argmax_partial_bytes(int rows, int vocab) { return (int64_t)rows * slices_for(vocab) * 8; }

cudaError_t argmax_rows(const float* logits, int rows, int vocab, int32_t* index, float* value, int* counters,
                        void* partial, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int slices = slices_for(vocab);
  if (slices > 1 && (counters == nullptr || partial == nullptr)) return cudaErrorInvalidValue;
  return launch_dependent(argmax_rows_kernel, dim3(rows, slices), dim3(kThreads), 0, stream, logits, vocab, index,
                          value, counters, static_cast<int2*>(partial));
}

}  // namespace cuda
}  // namespace vlm
