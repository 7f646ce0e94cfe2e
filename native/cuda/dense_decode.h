// Host entry points of the decode-size dense GEMM (dense_decode.cu): C = A · Wᵀ
// for fp16/bf16 weights W [N][K] at M <= 4 rows, the unquantized models' decode
// steps and the lm head's logits at one row. Nothing here throws; the engine routes the shapes it applies to and
// runs cuBLAS (or simt_linear) elsewhere.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/rms_norm_input.h"

namespace vlm {

constexpr int kDenseDecodeMaxRows = 4;

// True where the kernel runs this shape on the current GPU: 1 <= M <= 4, K a multiple of 8, A's M
// rows fit in one block's shared memory, and VLM_DENSE_DECODE is not 0.
bool dense_decode_applies(int M, int N, int K);

// C[M][N] = A[M][K] · W[N][K]ᵀ, fp32 sums rounded once to the act dtype. With a_is_gate_up, A's rows
// are [gate (K) | up (K)] and the GEMM reads silu(gate) * up (as cuda::silu_mul would write it).
// a and w 16-byte aligned. cudaErrorInvalidValue where the kernel does not apply.
cudaError_t dense_decode_gemm(const void* a, const void* w, void* c, int M, int N, int K, bool bf16,
                              bool a_is_gate_up, cudaStream_t stream);

// The greedy token taken in the lm head's own tail (one row): the index and value of the largest logit by
// argmax_best.cuh's rule, the same as argmax_rows() gives. Scratch: `counter`, one int, zero before and
// left at zero; `partial`, dense_decode_argmax_partials() (value bits, index) pairs.
struct LogitArgmax {
  int32_t* index;
  float* value;
  int* counter;
  void* partial;
};
int dense_decode_argmax_partials();

// C[M][N] = A[M][K] · W[N][K]ᵀ in fp32 (no rounding to the act dtype): the lm head's logits at decode
// sizes. With l2_evict_first, W's loads carry an L2 evict_first policy (a step's largest stream, read
// once; at batch 1 on the H100 it measured the same as plain loads); the same bits either way. With
// `argmax` (M = 1 only) the kernel also writes the greedy token. With `norm`, A is the final norm of the
// residual stream (as dense_decode_gemm_rms_norm takes it; `a` is not read), the same bits as A written by
// cuda::add_rms_norm(). a (or norm's pointers, as below) and w 16-byte aligned.
cudaError_t dense_decode_logits(const void* a, const void* w, float* c, int M, int N, int K, bool bf16,
                                bool l2_evict_first, const LogitArgmax* argmax, cudaStream_t stream,
                                const RmsNormInput* norm = nullptr);

// The same with A from the fp32 residual stream (RmsNormInput), bit for bit what cuda::add_rms_norm()
// writes for rows of up to 8192 elements. h, h_out and norm.weight 16-byte aligned, delta 8.
cudaError_t dense_decode_gemm_rms_norm(const RmsNormInput& norm, const void* w, void* c, int M, int N, int K,
                                       bool bf16, cudaStream_t stream);

}  // namespace vlm
