// The end of a decode-attention block (decode_attention.cu, decode_attention_mma.cu): the block's
// SLOTS partial softmaxes (each over the keys one part of the block read) meet, and with several
// key slices per (row, KV head) the last slice to finish merges them all.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention_splits.cuh"
#include "cuda/device_math.cuh"
#include "cuda/env_int.h"
#include "cuda/grid_counter.cuh"

namespace vlm {
namespace cuda {

// VLM_ATTENTION_RELEASE_MERGE=1: the slices meet through one release-acquire addition by one thread
// (arrive_acq_rel) instead of a fence in every thread before and after a plain one, and the last slice loads the
// (max, sum)s and its threads' first outputs of every slice in one trip to L2 instead of one trip for the former
// and then one or more for the latter. The same sums in the same order, so the same bits. Off by default until
// measured on a GPU; read once per process.
inline bool release_merge_enabled() {
  static const bool on = env_int("VLM_ATTENTION_RELEASE_MERGE", 0) != 0;
  return on;
}

// Each of the G heads' slice weights exp(max_k - max) (0 for a slice that read no key) into s_wk and their sums
// with the slices' sums into s_total: every slice's (max, sum) loaded at once, straight from L2 (__ldcg), where the
// other blocks' writes are. part: the G heads' slices (max, sum, output[HD]) head by head in slice order. Called by
// the whole block (two barriers); loads issued before it are in flight during its own.
template <int HD, int G, int THREADS>
__device__ __forceinline__ void load_slice_weights(const float* __restrict__ part, int splits,
                                                   float (&s_wk)[G][kMaxSplits], float (&s_total)[G]) {
  __shared__ float s_lk[G][kMaxSplits];
  for (int i = threadIdx.x; i < G * splits; i += THREADS) {
    const float* p = part + (int64_t)i * (HD + 2);  // i = g * splits + k
    s_wk[i / splits][i % splits] = __ldcg(p);
    s_lk[i / splits][i % splits] = __ldcg(p + 1);
  }
  __syncthreads();
  if (threadIdx.x < G) {
    const int g = threadIdx.x;
    float mx = -INFINITY;
    for (int k = 0; k < splits; ++k) mx = fmaxf(mx, s_wk[g][k]);
    float sum = 0.f;
    for (int k = 0; k < splits; ++k) {
      const float f = s_wk[g][k] == -INFINITY ? 0.f : __expf(s_wk[g][k] - mx);  // 0: a slice with no key
      s_wk[g][k] = f;
      sum += s_lk[g][k] * f;
    }
    s_total[g] = sum;
  }
  __syncthreads();
}

// o plus slices [k, splits) of one output element weighted by w, in slice order (p: the element in slice 0's
// partial; the slices' partials HD + 2 floats apart, loaded from L2, 8 in flight).
template <int HD>
__device__ __forceinline__ float add_slices(float o, const float* __restrict__ p, const float* w, int k, int splits) {
#pragma unroll 8
  for (; k < splits; ++k) o += w[k] * __ldcg(p + k * (HD + 2));
  return o;
}

// The release merge's last slice (see release_merge_enabled()): each thread's first two output elements' first AHEAD
// slices load into registers before the (max, sum)s, so both are one trip to L2; the rest (more slices, or more
// elements: groups of 4 and 8 heads) as the fenced form loads them. The same sums in the same order. part as for
// load_slice_weights(), every slice arrived and acquired; out: the G heads' output rows; s_wk, s_total: its
// shared arrays.
template <class T, int HD, int G, int THREADS, int AHEAD>
__device__ __forceinline__ void merge_slices_in_one_trip(const float* __restrict__ part, T* __restrict__ out,
                                                         int splits, float (&s_wk)[G][kMaxSplits],
                                                         float (&s_total)[G]) {
  constexpr int kPerThread = (G * HD + THREADS - 1) / THREADS;  // output elements a thread
  constexpr int kAheadElems = kPerThread < 2 ? kPerThread : 2;
  float ahead[kAheadElems][AHEAD];
#pragma unroll
  for (int e = 0; e < kAheadElems; ++e) {
    const int idx = threadIdx.x + e * THREADS;
    const float* p = part + (int64_t)(idx / HD) * splits * (HD + 2) + 2 + idx % HD;
#pragma unroll
    for (int k = 0; k < AHEAD; ++k) ahead[e][k] = idx < G * HD && k < splits ? __ldcg(p + k * (HD + 2)) : 0.f;
  }
  load_slice_weights<HD, G, THREADS>(part, splits, s_wk, s_total);
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    const int idx = threadIdx.x + e * THREADS, g = idx / HD;
    if (idx < G * HD) {
      float o = 0.f;
      int k = 0;  // the slices added so far
      if (e < kAheadElems) {
        // ahead's index is e wherever this runs; the ternary keeps it in bounds in the unrolled copies where it
        // does not
#pragma unroll
        for (int j = 0; j < AHEAD; ++j)
          if (j < splits) o += s_wk[g][j] * ahead[e < kAheadElems ? e : 0][j];
        k = AHEAD;
      }
      o = add_slices<HD>(o, part + (int64_t)g * splits * (HD + 2) + 2 + idx % HD, s_wk[g], k, splits);
      out[idx] = from_float<T>(o / s_total[g]);
    }
  }
}

// The block's G query heads (heads kvh * G ..) of row r after every slot has written its running
// maximum s_m, sum s_l and unnormalised output s_acc (no __syncthreads() needed before the call).
// With one slice the normalised output goes to `out`; otherwise the slice's (max, sum, output) go to
// `partial` and the last slice of (r, kvh) to finish (a counter in `arrivals`, left at 0) merges all
// slices in slice order, so the result does not depend on which finished last. `release`:
// release_merge_enabled(). THREADS: the block's threads; AHEAD: slices the release merge's last slice loads ahead
// (registers: as many as the default plans' slices where the kernel has them to spare).
template <class T, int HD, int G, int SLOTS, int THREADS, int AHEAD>
__device__ __forceinline__ void merge_decode_slots(const float (&s_m)[SLOTS][G], const float (&s_l)[SLOTS][G],
                                                   const float (&s_acc)[SLOTS][G][HD], T* __restrict__ out,
                                                   float* __restrict__ partial, int* __restrict__ arrivals, int r,
                                                   int kvh, int split, int num_heads, int kv_heads, const Split& sp,
                                                   bool release) {
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

  int* counter = arrivals + (int64_t)r * kv_heads + kvh;
  __shared__ float s_wk[G][kMaxSplits], s_total[G];  // the last slice's: each slice's weight, their sum
  if (release) {
    __syncthreads();  // the block's partial writes, before thread 0's release
    if (threadIdx.x == 0) s_last = arrive_acq_rel(counter) == sp.splits - 1;
    __syncthreads();  // thread 0's acquire, before the block's loads of the other slices
    if (!s_last) return;
    T* heads_out = out + ((int64_t)r * num_heads + kvh * G) * HD;
    merge_slices_in_one_trip<T, HD, G, THREADS, AHEAD>(part, heads_out, sp.splits, s_wk, s_total);
    if (threadIdx.x == 0) *counter = 0;
    return;
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(counter, 1) == sp.splits - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  load_slice_weights<HD, G, THREADS>(part, sp.splits, s_wk, s_total);
  for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
    const int g = idx / HD, d = idx % HD;
    const float o = add_slices<HD>(0.f, part + (int64_t)g * sp.splits * (HD + 2) + 2 + d, s_wk[g], 0, sp.splits);
    out[((int64_t)r * num_heads + kvh * G + g) * HD + d] = from_float<T>(o / s_total[g]);
  }
  if (threadIdx.x == 0) *counter = 0;
}

}  // namespace cuda
}  // namespace vlm
