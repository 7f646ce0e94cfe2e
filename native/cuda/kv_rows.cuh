// Reading the paged KV cache on the device: where a (slot, kv head) row
// lives, and one lane's elements of a row dequantized to fp32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decoder_kernels.h"
#include "vlmcore.h"

namespace vlm {
namespace cuda {

// Row index of (slot_index = block * block_size + slot, kv_head) in [block][kv_head][slot] order.
__device__ inline int64_t cache_row(const KvView& c, int slot_index, int kv_head) {
  const int block = slot_index / c.block_size, slot = slot_index % c.block_size;
  return ((int64_t)block * c.kv_heads + kv_head) * c.block_size + slot;
}

// Elements lane + 32 e (e < E) of a cache row as fp32, 0 past head_dim.
template <int E>
__device__ inline void load_kv_row(const KvView& c, const void* data, const void* sz, int64_t row, int lane,
                                   float (&out)[E]) {
  const uint8_t* base = static_cast<const uint8_t*>(data) + row * c.row_bytes;
  const int hd = c.head_dim;
  float scale = 1.f, zero = 0.f;
  if (c.dtype == VLM_DTYPE_I8 || c.dtype == VLM_DTYPE_I4) {
    const __half2 p = static_cast<const __half2*>(sz)[row];
    scale = __low2float(p);
    zero = __high2float(p);
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = lane + 32 * e;
    float x = 0.f;
    if (d < hd) {
      switch (c.dtype) {
        case VLM_DTYPE_F32: x = reinterpret_cast<const float*>(base)[d]; break;
        case VLM_DTYPE_F16: x = __half2float(reinterpret_cast<const __half*>(base)[d]); break;
        case VLM_DTYPE_BF16: x = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[d]); break;
        case VLM_DTYPE_I8: x = (float)base[d] * scale + zero; break;
        default: x = (float)(d & 1 ? base[d >> 1] >> 4 : base[d >> 1] & 15) * scale + zero;
      }
    }
    out[e] = x;
  }
}

}  // namespace cuda
}  // namespace vlm
