#include "engine/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/numeric.h"

namespace vlm {

int64_t KvCache::row_bytes(int dtype, int head_dim) {
  switch (dtype) {
    case VLM_DTYPE_F32: return 4LL * head_dim;
    case VLM_DTYPE_F16:
    case VLM_DTYPE_BF16: return 2LL * head_dim;
    case VLM_DTYPE_I8: return head_dim;
    case VLM_DTYPE_I4: return (head_dim + 1) / 2;
  }
  VLM_CHECK_ARG(false, "unsupported KV cache dtype " << dtype);
}

namespace {

bool quantized(int dtype) { return dtype == VLM_DTYPE_I8 || dtype == VLM_DTYPE_I4; }

}  // namespace

void kv_quantize(const float* x, int n, int bits, uint8_t* codes, uint16_t* scale_f16, uint16_t* zero_f16) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  float mn = x[0], mx = x[0];
  for (int i = 1; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  float scale = std::min((mx - mn) / qmax, 65504.f);
  uint16_t sh = f32_to_f16(scale);
  if (f16_to_f32(sh) == 0.f) sh = f32_to_f16(1.f);  // constant row: any scale reproduces it via zero
  const uint16_t zh = f32_to_f16(mn);
  const float s = f16_to_f32(sh), z = f16_to_f32(zh);
  const float inv = 1.0f / s;
  if (bits == 8) {
    for (int i = 0; i < n; ++i)
      codes[i] = static_cast<uint8_t>(std::clamp(std::nearbyint((x[i] - z) * inv), 0.f, qmax));
  } else {
    std::memset(codes, 0, (n + 1) / 2);
    for (int i = 0; i < n; ++i) {
      const uint8_t q = static_cast<uint8_t>(std::clamp(std::nearbyint((x[i] - z) * inv), 0.f, qmax));
      codes[i / 2] |= (i % 2) ? static_cast<uint8_t>(q << 4) : q;
    }
  }
  *scale_f16 = sh;
  *zero_f16 = zh;
}

KvCache::KvCache(int num_layers, int64_t num_blocks, int block_size, int kv_heads, int head_dim, int dtype)
    : num_layers_(num_layers), block_size_(block_size), kv_heads_(kv_heads), head_dim_(head_dim),
      dtype_(dtype), num_blocks_(num_blocks), row_bytes_(row_bytes(dtype, head_dim)) {
  const int64_t rows = num_blocks * kv_heads * block_size;
  for (int l = 0; l < num_layers; ++l) {
    k_.push_back(zeroed(rows * row_bytes_));
    v_.push_back(zeroed(rows * row_bytes_));
    k_sz_.push_back(zeroed(quantized(dtype) ? rows * 4 : 0));
    v_sz_.push_back(zeroed(quantized(dtype) ? rows * 4 : 0));
  }
}

KvCache::Buffer KvCache::zeroed(int64_t bytes) {
  if (bytes == 0) return Buffer();
  void* p = std::calloc(static_cast<size_t>(bytes), 1);
  VLM_CHECK(p != nullptr, VLM_ERR_OUT_OF_MEMORY, "cannot allocate " << bytes << " bytes of KV cache");
  return Buffer(static_cast<uint8_t*>(p));
}

int64_t KvCache::bytes_per_block(int num_layers, int block_size, int kv_heads, int head_dim, int dtype) {
  const int64_t rows = (int64_t)block_size * kv_heads;
  const int64_t per_row = row_bytes(dtype, head_dim) + (quantized(dtype) ? 4 : 0);
  return 2 * num_layers * rows * per_row;
}

void KvCache::check_fits(int64_t num_blocks, int block_size, int64_t need, int64_t free_bytes, const char* memory) {
  VLM_CHECK(free_bytes == 0 || need <= free_bytes, VLM_ERR_OUT_OF_MEMORY,
            "a KV cache of " << num_blocks << " blocks of " << block_size << " tokens needs " << (need >> 20)
                             << " MiB of " << memory << " memory and " << (free_bytes >> 20) << " MiB are free: "
                             << "ask for fewer blocks (num_kv_blocks) or sequences, or a smaller KV type");
}

int64_t KvCache::total_bytes() const {
  return bytes_per_block(num_layers_, block_size_, kv_heads_, head_dim_, dtype_) * num_blocks_;
}

void KvCache::write_row(uint8_t* data, uint16_t* sz, int64_t row, const float* x) {
  uint8_t* dst = data + row * row_bytes_;
  switch (dtype_) {
    case VLM_DTYPE_F32: std::memcpy(dst, x, row_bytes_); break;
    case VLM_DTYPE_F16: {
      uint16_t* d = reinterpret_cast<uint16_t*>(dst);
      for (int i = 0; i < head_dim_; ++i) d[i] = f32_to_f16(x[i]);
      break;
    }
    case VLM_DTYPE_BF16: {
      uint16_t* d = reinterpret_cast<uint16_t*>(dst);
      for (int i = 0; i < head_dim_; ++i) d[i] = f32_to_bf16(x[i]);
      break;
    }
    default:
      kv_quantize(x, head_dim_, dtype_ == VLM_DTYPE_I8 ? 8 : 4, dst, &sz[row * 2], &sz[row * 2 + 1]);
  }
}

void KvCache::read_row(const uint8_t* data, const uint16_t* sz, int64_t row, float* out) const {
  const uint8_t* src = data + row * row_bytes_;
  switch (dtype_) {
    case VLM_DTYPE_F32: std::memcpy(out, src, row_bytes_); break;
    case VLM_DTYPE_F16: {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
      for (int i = 0; i < head_dim_; ++i) out[i] = f16_to_f32(s[i]);
      break;
    }
    case VLM_DTYPE_BF16: {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
      for (int i = 0; i < head_dim_; ++i) out[i] = bf16_to_f32(s[i]);
      break;
    }
    case VLM_DTYPE_I8: {
      const float scale = f16_to_f32(sz[row * 2]), zero = f16_to_f32(sz[row * 2 + 1]);
      for (int i = 0; i < head_dim_; ++i) out[i] = static_cast<float>(src[i]) * scale + zero;
      break;
    }
    case VLM_DTYPE_I4: {
      const float scale = f16_to_f32(sz[row * 2]), zero = f16_to_f32(sz[row * 2 + 1]);
      for (int i = 0; i < head_dim_; ++i) {
        const uint8_t b = src[i / 2];
        out[i] = static_cast<float>((i % 2) ? (b >> 4) : (b & 15)) * scale + zero;
      }
      break;
    }
  }
}

void KvCache::write(int layer, int64_t block, int slot, const float* k, const float* v) {
  for (int h = 0; h < kv_heads_; ++h) {
    const int64_t row = row_index(block, h, slot);
    write_row(k_[layer].get(), reinterpret_cast<uint16_t*>(k_sz_[layer].get()), row, k + (int64_t)h * head_dim_);
    write_row(v_[layer].get(), reinterpret_cast<uint16_t*>(v_sz_[layer].get()), row, v + (int64_t)h * head_dim_);
  }
}

void KvCache::read_k(int layer, int64_t block, int head, int slot, float* out) const {
  read_row(k_[layer].get(), reinterpret_cast<const uint16_t*>(k_sz_[layer].get()), row_index(block, head, slot), out);
}

void KvCache::read_v(int layer, int64_t block, int head, int slot, float* out) const {
  read_row(v_[layer].get(), reinterpret_cast<const uint16_t*>(v_sz_[layer].get()), row_index(block, head, slot), out);
}

}  // namespace vlm
