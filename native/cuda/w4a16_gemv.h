// The column-tile w4a16 GEMM at decode sizes (w4a16_gemv.cu): each block owns whole output columns over
// all of K, so no K slice is summed across blocks.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/rms_norm_input.h"

namespace vlm {

constexpr int kGemvMaxRows = 4;  // activation rows the kernel takes (the mma's 8-column operand holds up to 8)

// The ring of weight chunks in flight a launch takes (the `ring` arguments below): kGemvRingSetting the process's
// (registers unless VLM_W4A16_GEMV_SHARED_RING says otherwise), kGemvRingShared 8 chunks a warp in shared memory
// (64 registers at 1-2 rows against the register ring's 128, so blocks of the next kernel fit beside its grid).
constexpr int kGemvRingSetting = 0;
constexpr int kGemvRingShared = 8;

// Whether the kernel runs an M x [N, K] layer of this group size on this GPU (sm_90 code present; N a multiple of
// 64, K of 64; the staged rows within shared memory).
bool w4a16_gemv_applies(int M, int N, int K, int group, int ring = kGemvRingSetting);

// Whether it is faster than the strip kernel (w4a16_decode.cu) at this shape: where a tile's 8 warps fill the GPU
// in one wave, or each warp streams at most 16 chunks (bench/gemm at one row, H200, 2026-12-07: faster on the 2B
// q/k/v, o and gate_up and the 7B o and down layers, level on 2B down; slower where 1 or 2 warps a tile stream 32 or
// more chunks each: 7B q/k/v 13.8 against 12.7 us, 7B gate_up 25.6 against 18.5).
bool w4a16_gemv_pays(int M, int N, int K, int group, int ring = kGemvRingSetting);

// The kernel's K parts a tile (warps that share a tile's columns, 1, 2, 4 or 8) for this shape; 0 where it does not
// apply.
int w4a16_gemv_k_parts(int M, int N, int K, int group, int ring = kGemvRingSetting);

// Whether `parts` may be asked of the GEMMs below at this K: 0 (the kernel's own choice, w4a16_gemv_k_parts), or 1,
// 2, 4 or 8 where a part keeps at least one chunk of 64 inputs.
bool w4a16_gemv_parts_valid(int K, int parts);

// The kernel's weight layout from the packed layout of cpu/w4a16_pack.h (same size: a permutation of its 32-bit
// words; the scales and zeros are read in their packed layout as they are). Device pointers; asynchronous.
cudaError_t w4a16_gemv_repack(const void* packed, void* out, int N, int K, cudaStream_t stream);

// C [M][N] = A [M][K] · dequant(W)ᵀ (+ residual), W in the layout of w4a16_gemv_repack and the packed scales and
// zeros; a_is_gate_up: A is [M][2K] and the GEMM reads silu(gate) * up; parts: warps a tile (0: the kernel's
// choice; 1, 2, 4, 8 pinned for tests and measurements, whose grid may then take more than one wave); ring as
// above. cudaErrorInvalidValue where it does not apply.
cudaError_t w4a16_gemv(const void* a, const void* w, const void* sz, const void* residual, void* c, int M, int N,
                       int K, int group, bool bf16, bool a_is_gate_up, cudaStream_t stream, int parts = 0,
                       int ring = kGemvRingSetting);

// The same with A = rms_norm(h + delta) * weight from the fp32 residual stream (rms_norm_row.cuh), h + delta
// written to norm.h_out where set (not norm.h).
cudaError_t w4a16_gemv_rms_norm(const RmsNormInput& norm, const void* w, const void* sz, void* c, int M, int N,
                                int K, int group, bool bf16, cudaStream_t stream, int parts = 0,
                                int ring = kGemvRingSetting);

}  // namespace vlm
