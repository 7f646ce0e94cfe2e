// Host entry points of the decoder's CUDA kernels other than the GEMMs:
// embedding lookup and image-embedding splice, RMSNorm fused with the
// residual add, SiLU·up, bias, RoPE fused with the KV-cache write (and its
// quantization) in decoder_kernels.cu, and paged attention over the
// (quantized) cache in paged_attention.cu.
//
// Conventions: activations are row-major in the compute type `act` (fp16 or
// bf16); the residual stream h stays in fp32 so that a long stack of layers
// does not accumulate half-precision rounding. Nothing here throws: every
// function returns the launch's cudaError_t. Shapes are validated by the
// caller (cuda_runner.cpp).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {
namespace cuda {

enum class ActType { F16, BF16 };

// The paged KV cache of one layer, as the CPU's KvCache lays it out:
// rows [block][kv_head][slot] of `row_bytes` each; for I8/I4 a (scale, zero)
// fp16 pair per row, x ≈ q * scale + zero.
struct KvView {
  int dtype;        // VLM_DTYPE_F32 / F16 / BF16 / I8 / I4
  int block_size;
  int kv_heads;
  int head_dim;
  int row_bytes;
  void* k;
  void* v;
  void* k_sz;       // __half2 per row, I8/I4 only
  void* v_sz;
};

// Per-step metadata, all device pointers (int32):
//   positions[rows]   absolute position of each row's token
//   slots[rows]       block * block_size + slot where the row's K/V are written
//   row_segment[rows] which request (segment) the row belongs to
//   table_offset[s]   where segment s's block table starts in block_tables
struct StepMeta {
  const int32_t* positions;
  const int32_t* slots;
  const int32_t* row_segment;
  const int32_t* table_offset;
  const int32_t* block_tables;
};

// A decode step's q/k/v GEMM output for an attention that applies RoPE and writes the step's K/V rows
// itself (decode_attention_writes_kv()): qkv rows as rope_and_cache_write() takes them, and RoPE's
// head_dim / 2 inverse frequencies.
struct RopeSource {
  const void* qkv;
  const float* inv_freq;
};

// h[r][:] = float(table[tokens[r]][:]); a token -1 - i stands for earlier[i] (a token a previous step chose on
// the device and the host has not seen yet).
cudaError_t embed_rows(ActType act, const void* table, const int32_t* tokens, const int32_t* earlier, int rows,
                       int hidden, float* h, cudaStream_t stream);
// h[rows[i]][:] = src[i][:] (fp32 image-embedding rows over the placeholders).
cudaError_t scatter_rows(const float* src, const int32_t* rows, int n, int hidden, float* h, cudaStream_t stream);
// For r < rows, i = select ? select[r] : r: h[i] += delta[i] (if delta), then
// out[r] = weight * h[i] / rms(h[i]) in act.
cudaError_t add_rms_norm(ActType act, float* h, const void* delta, const float* weight, const int32_t* select,
                         int rows, int hidden, float eps, void* out, cudaStream_t stream);
// y[r][n] += bias[n].
cudaError_t add_bias(ActType act, void* y, const float* bias, int rows, int n, cudaStream_t stream);
// out[r][i] = silu(gate_up[r][i]) * gate_up[r][n + i] for r < rows, i < n (gate and up
// stacked in one row of 2n, as the stacked gate/up GEMM writes them).
cudaError_t silu_mul(ActType act, const void* gate_up, void* out, int rows, int n, cudaStream_t stream);
// Per row of fp32 logits [rows][vocab]: the first index of the largest value (as
// std::max_element), and that value; NaNs never win. Greedy requests take their
// token from here instead of copying the whole row to the host (argmax_rows.cu).
// counters: one int per row, zero-filled before the first use (every call leaves
// them so); partial: argmax_partial_bytes(rows, vocab).
int64_t argmax_partial_bytes(int rows, int vocab);
cudaError_t argmax_rows(const float* logits, int rows, int vocab, int32_t* index, float* value, int* counters,
                        void* partial, cudaStream_t stream);
// qkv rows are [q (num_heads heads) | k (kv heads) | v (kv heads)], as the stacked
// q/k/v GEMM writes them. Rotates q into q_out ([rows][num_heads * head_dim]) and
// k by each row's position, then writes k and v into the cache at the row's slot
// (quantizing for I8/I4).
cudaError_t rope_and_cache_write(ActType act, const void* qkv, void* q_out, const StepMeta& meta,
                                 const float* inv_freq, int rows, int num_heads, const KvView& cache,
                                 cudaStream_t stream);
// Causal (optionally sliding-window) attention of each row over the cache
// positions [0, position] of its request; q/out [rows][num_heads*head_dim].
// max_context: the largest position + 1 of the step's rows. Steps with few
// rows split the keys over more blocks and need the workspace below, and
// `arrivals`: rows * kv_heads ints, zero before the first call (every call
// leaves them at zero again) (paged_attention.cu).
int64_t paged_attention_workspace_bytes(int rows, int num_heads, int head_dim, int kv_heads, int max_context,
                                        int num_sms);
// With `rope` (where decode_attention_writes_kv() holds), q is not read: the kernel rotates q from
// rope->qkv and writes the step's K/V rows as rope_and_cache_write() would, which is then not called.
cudaError_t paged_attention(ActType act, const void* q, void* out, const StepMeta& meta, int rows, int num_heads,
                            int sliding_window, int max_context, int num_sms, const KvView& cache, void* workspace,
                            int* arrivals, cudaStream_t stream, const RopeSource* rope = nullptr);

// The vectorised decode attention (decode_attention.cu) for the common shapes:
// head_dim 32/64/128/256, fp16/bf16/int8/int4 caches, up to 8 query heads per KV
// head; paged_attention() sends those here. Same workspace and results.
bool decode_attention_supports(int num_heads, const KvView& cache);
// Whether decode steps of this shape can take the attention with RoPE and the K/V write inside (the
// tensor-core form: fp16 activations, an int8, int4 or fp16 cache, 128-dim heads), and VLM_ROPE_IN_ATTENTION is
// not 0.
bool decode_attention_writes_kv(ActType act, int num_heads, const KvView& cache);
// Which kernel decode_attention() runs for this shape here: 2 the tensor-core form, 1 the CUDA-core kernel,
// 0 neither (an unsupported shape: paged_attention() takes it another way).
int decode_attention_form(ActType act, int num_heads, const KvView& cache);
cudaError_t decode_attention(ActType act, const void* q, void* out, const StepMeta& meta, int rows, int num_heads,
                             int sliding_window, int max_context, int num_sms, const KvView& cache, void* workspace,
                             int* arrivals, cudaStream_t stream, const RopeSource* rope = nullptr);

// Prefill steps: the same attention with the rows of a request in tiles that share
// every K/V read (prefill_attention.cu). tiles[i] = (first row, row count), rows of
// one request with consecutive positions, at most prefill_tile_rows() each (it depends on
// which form of the kernel takes the cache: see prefill_attention.cu).
int prefill_tile_rows(int num_heads, const KvView& cache);
cudaError_t prefill_attention(ActType act, const void* q, void* out, const StepMeta& meta, const int2* tiles,
                              int num_tiles, int num_heads, int sliding_window, const KvView& cache,
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace vlm
