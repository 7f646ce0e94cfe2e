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
// Shapes the kernel takes (N a multiple of 64, K of 64 and of the group, groups of 64 or 128).
bool w4a16_cutlass_applies(int M, int N, int K, int group);
// Bytes of a layer's prepared copy (codes reordered for the kernel, scales, offsets); -1 without the kernel.
int64_t w4a16_cutlass_prepared_bytes(int N, int K, int group);
// The prepared copy from a layer packed as cpu/w4a16_pack.h (w, scale_zero) on `stream`; scratch holds N*K/2
// bytes (the codes row by row before their reordering).
cudaError_t w4a16_cutlass_prepare(const void* w, const void* scale_zero, void* prepared, void* scratch, int N, int K,
                                  int group, bool bf16, cudaStream_t stream);
// Makes the stream-K workspace of this host thread at least `bytes` long (outside graph capture: a call inside
// one that needs more fails with cudaErrorStreamCaptureUnsupported).
cudaError_t w4a16_cutlass_reserve_workspace(size_t bytes, cudaStream_t stream);
// C [M][N] = A [M][K] · dequant(W)ᵀ from the prepared copy.
cudaError_t w4a16_cutlass_gemm(const void* a, const void* prepared, void* c, int M, int N, int K, int group, bool bf16,
                               cudaStream_t stream);

}  // namespace vlm
