// Host entry points of the w4a16 tensor-core GEMM (w4a16_gemm.cu). Nothing
// here throws; shapes are validated by the caller (check_w4a16_shape).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {

// Bytes of workspace for this shape (arrival counters, then fp32 split-K
// partials), zero-filled before first use; -1: the shape cannot be planned
// (K too large).
int64_t w4a16_workspace_bytes(int M, int N, int K, int group);
// C = A · dequant(W)ᵀ (+ residual). See vlmcore_kernels.h. With a_is_gate_up, A's
// rows are [gate (K) | up (K)] and the GEMM reads A = silu(gate) * up (the MLP's down
// projection straight from the stacked gate/up output, without a separate pass).
cudaError_t w4a16_gemm(const void* a, const void* w, const void* scale_zero, const void* residual, void* c, int M,
                       int N, int K, int group, bool bf16, void* workspace, cudaStream_t stream,
                       bool a_is_gate_up = false);
// W [N][K] row-major in fp16/bf16, exactly the values the GEMM multiplies (for a dense GEMM at large M).
cudaError_t w4a16_dequantize(const void* w, const void* scale_zero, void* out, int N, int K, int group, bool bf16,
                             cudaStream_t stream);

}  // namespace vlm
