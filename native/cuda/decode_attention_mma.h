// The tensor-core decode attention (decode_attention_mma.cu), which decode_attention() hands the int8,
// int4 and fp16 caches with fp16 activations and 128-dim heads to.
#pragma once
#include <cuda_runtime.h>

#include "cuda/decoder_kernels.h"

namespace vlm {
namespace cuda {

// fp16 activations, an int8, int4 or fp16 cache of 128-dim heads in blocks of at least 16 slots, query
// groups of 1, 2, 4 or 8 heads, and VLM_DECODE_ATTENTION_MMA not 0 (int4: VLM_DECODE_ATTENTION_MMA_INT4 not
// 0; fp16: VLM_DECODE_ATTENTION_MMA_FP16 not 0).
bool decode_attention_mma_applies(ActType act, int num_heads, const KvView& cache);
// Blocks of the kernel for query groups of `group` heads over this cache's rows that one SM holds at
// once (at least 1).
int decode_attention_mma_blocks_per_sm(int group, const KvView& cache);
// decode_attention()'s contract, with the number of key slices per (row, KV head) already chosen
// (each row's own keys are cut into that many runs of whole 16-key tiles); with `rope`, RoPE and the
// step's K/V write inside (decoder_kernels.h, RopeSource).
cudaError_t decode_attention_mma(const void* q, void* out, const StepMeta& meta, int rows, int num_heads,
                                 int sliding_window, const KvView& cache, int splits, float* partial, int* arrivals,
                                 const RopeSource* rope, cudaStream_t stream);

}  // namespace cuda
}  // namespace vlm
