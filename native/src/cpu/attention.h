// Causal attention of new tokens over a paged (possibly quantized) KV cache.
// The cache already holds the new tokens' K/V, so a token attends to the
// cache only: results do not depend on how a prompt was chunked.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/kv_cache.h"

namespace vlm {

struct AttentionSegment {
  const int32_t* block_table;  // physical block of each logical block
  int start;                   // position of the first new token
  int count;                   // new tokens
  int row;                     // index of its first token in the step's flattened rows
};

struct AttentionShape {
  int num_heads, num_kv_heads, head_dim, sliding_window;
};

// q: [rows][num_heads*head_dim] (RoPE applied); out: same shape.
void paged_attention(const KvCache& cache, int layer, const AttentionShape& shape,
                     const std::vector<AttentionSegment>& segments, const float* q, float* out);

}  // namespace vlm
