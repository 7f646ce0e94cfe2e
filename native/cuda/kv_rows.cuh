// Reading the paged KV cache on the device: where a (slot, kv head) row
// lives, and one lane's elements of a row dequantized to fp32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decoder_kernels.h"
#include "vlmcore.h"

namespace vlm {
namespace cuda {

// Blocks hold a power of two of slots (the engine and the C ABI refuse other sizes), so a
// slot's block and place in it are a shift and a mask, not two integer divisions per key.
__device__ __forceinline__ int block_shift(const KvView& c) { return __ffs(c.block_size) - 1; }

// Row index of (slot_index = block * block_size + slot, kv_head) in [block][kv_head][slot] order.
__device__ inline int64_t cache_row(const KvView& c, int slot_index, int kv_head) {
  const int block = slot_index >> block_shift(c), slot = slot_index & (c.block_size - 1);
  return ((int64_t)block * c.kv_heads + kv_head) * c.block_size + slot;
}

// Row index of key `key` (a position) of a request, in its cache block `block`.
__device__ __forceinline__ int64_t block_row(const KvView& c, int32_t block, int key, int kv_head) {
  return ((int64_t)block * c.kv_heads + kv_head) * c.block_size + (key & (c.block_size - 1));
}
// The same through the request's block table.
__device__ __forceinline__ int64_t key_row(const KvView& c, const int32_t* table, int key, int kv_head) {
  return block_row(c, table[key >> block_shift(c)], key, kv_head);
}

// A quantized code as fp32, exactly, without an integer-to-float conversion (a quarter-rate
// instruction; the decode attention converts two per element): the code goes into the low
// mantissa bits of 2^23, and 2^23 is subtracted. `byte` selects one of the word's four bytes.
__device__ __forceinline__ float byte_code(uint32_t word, int byte) {
  return __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7540u | byte)) - 8388608.f;
}
__device__ __forceinline__ float nibble_code(uint32_t word, int nibble) {
  return __uint_as_float(((word >> (4 * nibble)) & 15u) | 0x4B000000u) - 8388608.f;
}

// Cache element types of the vectorised readers below (a template argument: one kernel per type).
enum CacheType { kF16, kBF16, kI8, kI4 };

__device__ __forceinline__ void halves_to_float(uint32_t w, float& a, float& b) {
  const __half2 h = *reinterpret_cast<const __half2*>(&w);
  a = __low2float(h);
  b = __high2float(h);
}
__device__ __forceinline__ void bhalves_to_float(uint32_t w, float& a, float& b) {
  a = __uint_as_float(w << 16);
  b = __uint_as_float(w & 0xffff0000u);
}

// Elements [e0, e0 + 8) of a cache row as loaded (a 16-byte, 8-byte or 4-byte load), before any
// conversion. The decode attention keeps the next keys' rows in this form while it computes with the
// current ones (a quarter to a half of the registers their fp32 values take, so twice as many bytes
// can be in flight). CT (a CacheType) is the cache's element type.
template <int CT>
struct RawRow8 {
  // fp16/bf16: 8 halves; int8: 8 codes; int4: 8 nibbles (in .x); sz: the row's (scale, zero) halves.
  uint4 v;
  uint32_t sz;
};

template <int CT>
__device__ __forceinline__ RawRow8<CT> load_raw8(const KvView& c, const void* data, const void* sz, int64_t row,
                                                 int e0) {
  const uint8_t* base = static_cast<const uint8_t*>(data) + row * c.row_bytes;
  RawRow8<CT> r;
  if constexpr (CT == kF16 || CT == kBF16) {
    r.v = *reinterpret_cast<const uint4*>(base + e0 * 2);
    r.sz = 0;
  } else {
    r.sz = static_cast<const uint32_t*>(sz)[row];
    if constexpr (CT == kI8) {
      const uint2 u = *reinterpret_cast<const uint2*>(base + e0);
      r.v = make_uint4(u.x, u.y, 0, 0);
    } else {  // element d in byte d / 2, low nibble first
      r.v = make_uint4(*reinterpret_cast<const uint32_t*>(base + e0 / 2), 0, 0, 0);
    }
  }
  return r;
}

// A raw row as stored: the values of an fp16/bf16 row (scale 1, zero 0), the codes of an int8/int4
// row (exact in fp32, and in fp16 or bf16 too) with the row's scale and zero (value = code * scale + zero).
template <int CT>
__device__ __forceinline__ void raw_codes8(const RawRow8<CT>& r, float (&x)[8], float& scale, float& zero) {
  if constexpr (CT == kF16 || CT == kBF16) {
    const uint32_t w[4] = {r.v.x, r.v.y, r.v.z, r.v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (CT == kF16) halves_to_float(w[i], x[2 * i], x[2 * i + 1]);
      else bhalves_to_float(w[i], x[2 * i], x[2 * i + 1]);
    }
    scale = 1.f, zero = 0.f;
  } else {
    const __half2 p = *reinterpret_cast<const __half2*>(&r.sz);
    scale = __low2float(p), zero = __high2float(p);
    if constexpr (CT == kI8) {
#pragma unroll
      for (int i = 0; i < 4; ++i) x[i] = byte_code(r.v.x, i), x[4 + i] = byte_code(r.v.y, i);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) x[i] = nibble_code(r.v.x, i);
    }
  }
}

// Elements [e0, e0 + 8) of cache row `row` as stored, with the row's scale and zero (raw_codes8).
template <int CT>
__device__ __forceinline__ void load_codes8(const KvView& c, const void* data, const void* sz, int64_t row, int e0,
                                            float (&x)[8], float& scale, float& zero) {
  raw_codes8<CT>(load_raw8<CT>(c, data, sz, row, e0), x, scale, zero);
}

// A raw row's elements dequantized to fp32.
template <int CT>
__device__ __forceinline__ void decode_raw8(const RawRow8<CT>& r, float (&x)[8]) {
  float scale, zero;
  raw_codes8<CT>(r, x, scale, zero);
  if constexpr (CT == kI8 || CT == kI4) {
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = x[i] * scale + zero;
  }
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
        case VLM_DTYPE_I8: x = byte_code(base[d], 0) * scale + zero; break;
        default: x = nibble_code(base[d >> 1], d & 1) * scale + zero;
      }
    }
    out[e] = x;
  }
}

}  // namespace cuda
}  // namespace vlm
