// Split-KV for decode attention: a step with few rows splits each row's keys
// into slices so the grid fills the GPU; every slice writes (max, sum,
// unnormalised output) and merge_splits_kernel combines them. Shared by the
// general kernel (paged_attention.cu) and the vectorised one
// (decode_attention.cu), which use the same plan and partial layout.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>

#include "cuda/device_math.cuh"

namespace vlm {
namespace cuda {

struct Split {
  int splits, chunk;  // key slices per (row, kv head) and keys per slice
};

constexpr int kMaxSplits = 32;
constexpr int kMinKeysPerSplit = 32;
// VLM_ATTENTION_SPLIT_BLOCKS_PER_SM, for tuning (at batch 1 every slice adds to the merge that
// follows), or 0 where it is not set.
inline int split_blocks_per_sm_override() {
  static const int v = [] {
    const char* e = std::getenv("VLM_ATTENTION_SPLIT_BLOCKS_PER_SM");
    const int x = e ? std::atoi(e) : 0;
    return x > 0 ? x : 0;
  }();
  return v;
}
// Split the keys until the grid has about this many blocks per SM (8, or the override above).
inline int split_blocks_per_sm() { return split_blocks_per_sm_override() ? split_blocks_per_sm_override() : 8; }

// Slices of the keys of max_context (each at least min_keys of them, whole multiples of `align`) until
// the grid has blocks_per_sm blocks per SM: at least that many, or with within_target at most that many (where
// blocks_per_sm is what an SM holds resident, so that no block waits for another to end). More blocks per SM or
// fewer keys per slice never give fewer splits, so a workspace sized for the default plan holds any plan with at
// most as many blocks per SM and at least as many keys per slice.
inline Split plan_split_for(int rows, int kv_heads, int max_context, int num_sms, int align, int blocks_per_sm,
                            int min_keys = kMinKeysPerSplit, bool within_target = false) {
  const int blocks = rows * kv_heads, target = blocks_per_sm * num_sms;
  int splits = 1;
  if (blocks < target) {
    const int per_block = within_target ? target / blocks : (target + blocks - 1) / blocks;
    splits = std::min({kMaxSplits, per_block, std::max(1, max_context / min_keys)});
  }
  const int chunk = (max_context + splits - 1) / splits;
  return {splits, (chunk + align - 1) / align * align};
}
inline Split plan_split(int rows, int kv_heads, int max_context, int num_sms, int align) {
  return plan_split_for(rows, kv_heads, max_context, num_sms, align, split_blocks_per_sm());
}

// Partial of (row, head, slice): [max, sum, out[head_dim]] floats.
inline int64_t split_partial_floats(int rows, int num_heads, int head_dim, const Split& sp) {
  return (int64_t)rows * num_heads * sp.splits * (head_dim + 2);
}

// grid (rows, num_heads): merges the key slices of one row and head.
template <class T>
__global__ void merge_splits_kernel(const float* partial, T* out, int num_heads, int head_dim, int splits) {
  const int r = blockIdx.x, head = blockIdx.y;
  const float* p = partial + ((int64_t)r * num_heads + head) * splits * (head_dim + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, p[s * (head_dim + 2)]);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.f, o = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float* ps = p + s * (head_dim + 2);
      if (ps[0] == -INFINITY) continue;  // a slice with no key (past the row's position)
      const float f = __expf(ps[0] - mx);
      sum += ps[1] * f;
      o += ps[2 + d] * f;
    }
    out[((int64_t)r * num_heads + head) * head_dim + d] = from_float<T>(o / sum);
  }
}

}  // namespace cuda
}  // namespace vlm
