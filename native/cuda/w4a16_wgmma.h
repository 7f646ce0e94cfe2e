// Host entry points of the Hopper wgmma w4a16 GEMM (w4a16_wgmma.cu), for 17 rows and up. Opt-in
// (VLM_W4A16_WGMMA=1: block form, 2: strip form) and sm_90a only; w4a16_gemm() routes to it when w4a16_wgmma_applies().
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {

bool w4a16_wgmma_applies(int M, int N, int K, int group);
// fp32 split-K partials for this shape; 0 when it runs as one slice.
int64_t w4a16_wgmma_workspace_bytes(int M, int N, int K, int group);
cudaError_t w4a16_wgmma_gemm(const void* a, const void* w, const void* scale_zero, const void* residual, void* c,
                             int M, int N, int K, int group, bool bf16, void* workspace, cudaStream_t stream);

}  // namespace vlm
