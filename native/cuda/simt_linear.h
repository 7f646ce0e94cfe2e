// y = x · Wᵀ (+ bias) on CUDA cores, for any shape with K % 8 == 0: dense
// fp16/bf16 weights [N][K], or 4-bit weights in a plain row layout (codes
// uint32 [N][K/8], nibble i = input k0 + i; fp32 scale and -zero*scale per
// [N][K/group], so a weight is one fused multiply-add: q * s + nzs).
// The fallback for shapes the tensor-core kernels do not take, and the
// lm_head (fp32 logits). A warp owns an output column and a tile of 4 rows;
// lanes stride K by 8 with 16-byte loads. Never throws.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/decoder_kernels.h"

namespace vlm {
namespace cuda {

struct SimtWeights {
  const void* w = nullptr;       // dense [N][K] in the activation type, or uint32 codes [N][K/8]
  const float* scale = nullptr;  // 4-bit only: [N][K/group]
  const float* nzs = nullptr;    // 4-bit only: [N][K/group]
  int group = 0;                 // 0: dense
};

// y: [M][N] in the activation type, or fp32 when y_f32.
cudaError_t simt_linear(ActType act, const void* x, int M, int K, int N, const SimtWeights& w, const float* bias,
                        void* y, bool y_f32, cudaStream_t stream);

}  // namespace cuda
}  // namespace vlm
