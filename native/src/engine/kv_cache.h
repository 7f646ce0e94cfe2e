// Paged KV cache storage. Memory is one arena per layer of `num_blocks`
// blocks; a block holds `block_size` token slots for every KV head, laid out
// [block][kv_head][slot][head_dim] so one head's slots are contiguous for the
// attention loop. Quantized dtypes (I8, I4) keep, per token and KV head, an
// fp16 (scale, zero) pair: x ≈ q * scale + zero with q in [0, 2^bits - 1],
// scale = (max - min) / (2^bits - 1), zero = min, both rounded to fp16 first.
// Who owns which block is the BlockManager's business, not this class's.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "vlmcore.h"

namespace vlm {

class KvCache {
 public:
  KvCache(int num_layers, int64_t num_blocks, int block_size, int kv_heads, int head_dim, int dtype);

  // Bytes of one head's row of `head_dim` values stored as `dtype` (without its scale pair).
  static int64_t row_bytes(int dtype, int head_dim);
  // Bytes one block costs across all layers (K and V, data and scales).
  static int64_t bytes_per_block(int num_layers, int block_size, int kv_heads, int head_dim, int dtype);
  // Refuses (VLM_ERR_OUT_OF_MEMORY) a cache of `need` bytes where `free_bytes` of `memory` ("device", "host") are
  // less, saying both, before any of it is allocated; free_bytes 0 (not known) lets it through.
  static void check_fits(int64_t num_blocks, int block_size, int64_t need, int64_t free_bytes, const char* memory);

  // Stores K and V rows ([kv_heads][head_dim] each) of one token.
  void write(int layer, int64_t block, int slot, const float* k, const float* v);
  // Reads back one head's K or V row of a slot as fp32 (dequantizing).
  void read_k(int layer, int64_t block, int head, int slot, float* out) const;
  void read_v(int layer, int64_t block, int head, int slot, float* out) const;

  int dtype() const { return dtype_; }
  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t total_bytes() const;

 private:
  // calloc'd so untouched blocks cost no physical memory until first written.
  struct FreeDeleter { void operator()(void* p) const { std::free(p); } };
  using Buffer = std::unique_ptr<uint8_t, FreeDeleter>;
  static Buffer zeroed(int64_t bytes);

  void write_row(uint8_t* data, uint16_t* sz, int64_t row, const float* x);
  void read_row(const uint8_t* data, const uint16_t* sz, int64_t row, float* out) const;
  int64_t row_index(int64_t block, int head, int slot) const {
    return (block * kv_heads_ + head) * block_size_ + slot;
  }

  int num_layers_, block_size_, kv_heads_, head_dim_, dtype_;
  int64_t num_blocks_;
  int64_t row_bytes_;
  std::vector<Buffer> k_, v_;        // per layer
  std::vector<Buffer> k_sz_, v_sz_;  // per layer (scale, zero) fp16 pairs
};

// The quantizer, exposed for tests: writes bits-wide codes of x[n] and the
// fp16 (scale, zero) pair; dequantize inverts it.
void kv_quantize(const float* x, int n, int bits, uint8_t* codes, uint16_t* scale_f16, uint16_t* zero_f16);

}  // namespace vlm
