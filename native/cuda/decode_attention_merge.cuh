// The end of a decode-attention block (decode_attention.cu, decode_attention_mma.cu): the block's
// SLOTS partial softmaxes (each over the keys one part of the block read) meet, and with several
// key slices per (row, KV head) the last slice to finish merges them all.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention_splits.cuh"
#include "cuda/device_math.cuh"

namespace vlm {
namespace cuda {

// The block's G query heads (heads kvh * G ..) of row r after every slot has written its running
// maximum s_m, sum s_l and unnormalised output s_acc (no __syncthreads() needed before the call).
// With one slice the normalised output goes to `out`; otherwise the slice's (max, sum, output) go to
// `partial` and the last slice of (r, kvh) to finish (a counter in `arrivals`, left at 0) merges all
// slices in slice order, so the result does not depend on which finished last.
template <class T, int HD, int G, int SLOTS>
__device__ __forceinline__ void merge_decode_slots(const float (&s_m)[SLOTS][G], const float (&s_l)[SLOTS][G],
                                                   const float (&s_acc)[SLOTS][G][HD], T* __restrict__ out,
                                                   float* __restrict__ partial, int* __restrict__ arrivals, int r,
                                                   int kvh, int split, int num_heads, int kv_heads, const Split& sp) {
  __shared__ bool s_last;
  __syncthreads();
  float* part = partial + ((int64_t)r * num_heads + kvh * G) * sp.splits * (HD + 2);  // this row's G heads
  for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
    const int g = idx / HD, d = idx % HD;
    float mx = -INFINITY;
#pragma unroll 4
    for (int k = 0; k < SLOTS; ++k) mx = fmaxf(mx, s_m[k][g]);
    float o = 0.f, sum = 0.f;
    if (mx != -INFINITY)
#pragma unroll 4
      for (int k = 0; k < SLOTS; ++k) {
        const float f = __expf(s_m[k][g] - mx);  // 0 for a slot that read no key
        o += s_acc[k][g][d] * f;
        sum += s_l[k][g] * f;
      }
    if (sp.splits == 1) {
      out[((int64_t)r * num_heads + kvh * G + g) * HD + d] = from_float<T>(o / sum);
    } else {
      float* p = part + ((int64_t)g * sp.splits + split) * (HD + 2);
      if (d == 0) p[0] = mx, p[1] = sum;
      p[2 + d] = o;
    }
  }
  if (sp.splits == 1) return;

  __threadfence();
  __syncthreads();
  int* counter = arrivals + (int64_t)r * kv_heads + kvh;
  if (threadIdx.x == 0) s_last = atomicAdd(counter, 1) == sp.splits - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // Every slice's (max, sum) at once, then each slice's weight; loads straight from L2 (__ldcg),
  // where the other blocks' writes are.
  __shared__ float s_wk[G][kMaxSplits], s_lk[G][kMaxSplits], s_total[G];
  for (int i = threadIdx.x; i < G * sp.splits; i += blockDim.x) {
    const float* p = part + (int64_t)i * (HD + 2);  // i = g * splits + k
    s_wk[i / sp.splits][i % sp.splits] = __ldcg(p);
    s_lk[i / sp.splits][i % sp.splits] = __ldcg(p + 1);
  }
  __syncthreads();
  if (threadIdx.x < G) {
    const int g = threadIdx.x;
    float mx = -INFINITY;
    for (int k = 0; k < sp.splits; ++k) mx = fmaxf(mx, s_wk[g][k]);
    float sum = 0.f;
    for (int k = 0; k < sp.splits; ++k) {
      const float f = s_wk[g][k] == -INFINITY ? 0.f : __expf(s_wk[g][k] - mx);  // 0: a slice with no key
      s_wk[g][k] = f;
      sum += s_lk[g][k] * f;
    }
    s_total[g] = sum;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
    const int g = idx / HD, d = idx % HD;
    const float* p = part + (int64_t)g * sp.splits * (HD + 2) + 2 + d;
    float o = 0.f;
#pragma unroll 8
    for (int k = 0; k < sp.splits; ++k) o += s_wk[g][k] * __ldcg(p + k * (HD + 2));
    out[((int64_t)r * num_heads + kvh * G + g) * HD + d] = from_float<T>(o / s_total[g]);
  }
  if (threadIdx.x == 0) *counter = 0;
}

}  // namespace cuda
}  // namespace vlm
