// Host entry points of the decode-size w4a16 GEMM (w4a16_decode.cu): M <= 4 on
// sm_90 and later, split-K inside a thread-block cluster, no workspace. Nothing
// here throws; w4a16_gemm() routes the shapes it applies to.
#pragma once
#include <cuda_runtime.h>

#include "cuda/rms_norm_input.h"

namespace vlm {

// Measured on the H200 (docs/benchmarks/gemm.md): faster than the general kernel at M = 1, 2 and 4 on
// every layer tried, slower at M = 8 and 16.
constexpr int kMaxDecodeRows = 4;

// True when this GPU and build run the decode kernel for this shape (sm_90 code present,
// VLM_W4A16_DECODE not 0, a plan that fits shared memory).
bool w4a16_decode_applies(int M, int N, int K, int group);
// The plan this shape runs with: strips of 64 columns a block, K slices (the blocks of a cluster), k16 steps a
// scaling unit and ring stages a warp; all 0 where the kernel does not apply. VLM_W4A16_DECODE_S / _C pin the
// first two, VLM_W4A16_DECODE_RING the last.
void w4a16_decode_plan(int M, int N, int K, int group, int* strips_per_block, int* k_slices, int* unit_steps,
                       int* ring_stages);
// C = A · dequant(W)ᵀ (+ residual), as w4a16_gemm(); cudaErrorInvalidValue where it does not apply.
cudaError_t w4a16_decode_gemm(const void* a, const void* w, const void* scale_zero, const void* residual, void* c,
                              int M, int N, int K, int group, bool bf16, cudaStream_t stream, bool a_is_gate_up);

// The GEMM's A from the fp32 residual stream (rms_norm_input.h), bit for bit what
// cuda::add_rms_norm() writes for rows of up to 8192 elements (its vectorised kernel,
// rms_norm_row.cuh; longer rows it sums in another order). One launch instead of the norm kernel
// and the GEMM.
cudaError_t w4a16_decode_gemm_rms_norm(const RmsNormInput& norm, const void* w, const void* scale_zero, void* c,
                                       int M, int N, int K, int group, bool bf16, cudaStream_t stream);

}  // namespace vlm
