// Host entry points of the prefill-size w4a16 GEMM through CUTLASS's mixed-input kernel (w4a16_cutlass.cu).
// Nothing here throws. Built only where CMake found CUTLASS's headers (VLM_HAVE_CUTLASS) and for sm_90a;
// elsewhere w4a16_cutlass_built() is false and the calls return cudaErrorNotSupported.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {

bool w4a16_cutlass_built();
// Built, and the current device runs its sm_90a code (compute capability 9.0). Asked once per process.
bool w4a16_cutlass_runs();
// Shapes the kernel takes (N a multiple of 128, K of 64 and of the group, groups of 64 or 128).
bool w4a16_cutlass_applies(int M, int N, int K, int group);
// The tiles a call of this shape runs (weight rows, tokens and K a tile; the stream-K scheduler or the
// data-parallel one), as chosen by the layer and the measuring settings: on this GPU where sms is 0 (false where
// the kernel does not run here), else on a compute capability 9.0 GPU of that many SMs, with or without one here
// (false in builds without the kernel). False where the kernel does not take the shape.
bool w4a16_cutlass_tiles(int M, int N, int K, int group, int sms, int* tile_m, int* tile_n, int* tile_k,
                         bool* stream_k);
// Bytes of a layer's prepared copy (codes reordered for the kernel, scales, offsets); -1 without the kernel.
int64_t w4a16_cutlass_prepared_bytes(int N, int K, int group);
// The prepared copy from a layer packed as cpu/w4a16_pack.h (w, scale_zero) on `stream`; scratch holds N*K/2
// bytes (the codes row by row before their reordering).
cudaError_t w4a16_cutlass_prepare(const void* w, const void* scale_zero, void* prepared, void* scratch, int N, int K,
                                  int group, bool bf16, cudaStream_t stream);
// Bytes of workspace a call of this shape needs (the stream-K scheduler's partial tiles; 0 where it splits no
// tile), -1 where the kernel does not apply.
int64_t w4a16_cutlass_workspace_bytes(int M, int N, int K, int group, bool bf16);
// C [M][N] = A [M][K] · dequant(W)ᵀ from the prepared copy; workspace of at least
// w4a16_cutlass_workspace_bytes() bytes (cudaErrorInvalidValue if shorter).
cudaError_t w4a16_cutlass_gemm(const void* a, const void* prepared, void* c, int M, int N, int K, int group, bool bf16,
                               void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace vlm
